//! A contracts directory: the JSON Schema files of each event type, kept
//! in git and reviewed like code, loaded into the registry at start-up:
//!
//! ```text
//! contracts/events/
//!   auth.user.created/
//!     type.json        {"subject": "auth.events.user.created", "compatibility": "FULL_TRANSITIVE", "validation": "enforce"}
//!     v1.json          the JSON Schema of version 1
//!     v2.json
//! ```
//!
//! `type.json` is optional (defaults: the type's name as its subject,
//! `FULL_TRANSITIVE`, `enforce`). Versions are numbered from 1 without
//! gaps. Loading registers the versions the registry does not have yet, in
//! order, each checked against the earlier ones; a file that differs from
//! the version registered under its number is an error (versions are
//! immutable: add a new one), and so is a new file repeating an earlier
//! version's schema (registering it would return that version).

use crate::registry::{parse_schema, validate_type_name, Registry, TypeSettings};
use event_bus::{BusError, ErrorKind};
use std::path::Path;

/// What [`Registry::load_dir`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Types found.
    pub types: usize,
    /// Versions registered now: (type, version).
    pub registered: Vec<(String, u32)>,
    /// Versions already registered with the same schema.
    pub unchanged: usize,
}

fn io_error(path: &Path, e: std::io::Error) -> BusError {
    BusError::with_source(
        ErrorKind::Config,
        format!("contracts: reading {}: {e}", path.display()),
        e,
    )
}

impl Registry {
    /// Loads a contracts directory (see the [module docs](crate::dir)).
    /// Errors name the file and, for a schema, the JSON Pointer at fault.
    pub async fn load_dir(&self, dir: impl AsRef<Path>) -> Result<LoadReport, BusError> {
        let dir = dir.as_ref();
        let mut report = LoadReport::default();
        let mut types: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| io_error(dir, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| io_error(dir, e))?
            .into_iter()
            .filter(|e| e.path().is_dir())
            .collect();
        types.sort_by_key(|e| e.file_name());
        for entry in types {
            let path = entry.path();
            let type_name = entry.file_name().to_string_lossy().into_owned();
            validate_type_name(&type_name).map_err(|e| {
                BusError::new(
                    ErrorKind::Config,
                    format!("contracts: {}: {e}", path.display()),
                )
            })?;
            report.types += 1;
            let settings_file = path.join("type.json");
            let settings = if settings_file.exists() {
                let bytes =
                    std::fs::read(&settings_file).map_err(|e| io_error(&settings_file, e))?;
                serde_json::from_slice::<TypeSettings>(&bytes).map_err(|e| {
                    BusError::with_source(
                        ErrorKind::Config,
                        format!("contracts: {}: {e}", settings_file.display()),
                        e,
                    )
                })?
            } else {
                self.settings(&type_name)
                    .unwrap_or_else(|| TypeSettings::new(type_name.as_str()))
            };
            if self.settings(&type_name).as_ref() != Some(&settings) {
                self.define(&type_name, settings).await?;
            }
            // v<N>.json, in numeric order, from 1 without gaps.
            let mut versions: Vec<(u32, std::path::PathBuf)> = Vec::new();
            for file in std::fs::read_dir(&path).map_err(|e| io_error(&path, e))? {
                let file = file.map_err(|e| io_error(&path, e))?.path();
                let name = file
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                if name == "type.json" {
                    continue;
                }
                let number = name
                    .strip_suffix(".json")
                    .and_then(|n| n.strip_prefix('v'))
                    .and_then(|n| n.parse::<u32>().ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        BusError::new(
                            ErrorKind::Config,
                            format!(
                                "contracts: {}: expected type.json or v<N>.json (N from 1)",
                                file.display()
                            ),
                        )
                    })?;
                versions.push((number, file));
            }
            versions.sort();
            for (i, (number, file)) in versions.iter().enumerate() {
                if *number != i as u32 + 1 {
                    return Err(BusError::new(
                        ErrorKind::Config,
                        format!(
                            "contracts: {}: versions of {type_name} must be numbered 1, 2, ... without gaps (expected v{}.json)",
                            file.display(),
                            i + 1
                        ),
                    ));
                }
                let bytes = std::fs::read(file).map_err(|e| io_error(file, e))?;
                let schema = parse_schema(&file.display().to_string(), &bytes)?;
                match self.version(&type_name, *number) {
                    Some(existing) if existing.schema == schema => report.unchanged += 1,
                    Some(_) => {
                        return Err(BusError::new(
                            ErrorKind::Conflict,
                            format!(
                                "contracts: {} differs from the registered {type_name} v{number}; versions are immutable: add v{}.json instead",
                                file.display(),
                                versions.len() + 1
                            ),
                        ))
                    }
                    None => {
                        let got = self.register(&type_name, schema).await.map_err(|e| {
                            BusError::new(e.kind(), format!("contracts: {}: {e}", file.display()))
                        })?;
                        if got < *number {
                            return Err(BusError::new(
                                ErrorKind::Conflict,
                                format!(
                                    "contracts: {} is the same schema as {type_name} v{got}; a version must differ from the earlier ones",
                                    file.display()
                                ),
                            ));
                        }
                        if got != *number {
                            return Err(BusError::new(
                                ErrorKind::Conflict,
                                format!(
                                    "contracts: {} was registered as {type_name} v{got}, not v{number} (the registry holds other versions)",
                                    file.display()
                                ),
                            ));
                        }
                        report.registered.push((type_name.clone(), got));
                    }
                }
            }
        }
        Ok(report)
    }
}
