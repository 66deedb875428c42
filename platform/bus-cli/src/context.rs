//! Named contexts, like `nats context`: a saved URL, tenant and
//! configuration file under a name, chosen with `--context NAME` (or
//! `BUS_CONTEXT`, or `bus context select NAME`). Stored as JSON files in
//! `$XDG_CONFIG_HOME/event-bus/contexts/` (else `~/.config/...`).

use crate::{Cli, ContextCommand};
use event_bus::{BusError, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

/// What a context holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// NATS URL(s), comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// A bus configuration file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<PathBuf>,
}

fn dir() -> Result<PathBuf, BusError> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .ok_or_else(|| BusError::config("HOME", "", "neither XDG_CONFIG_HOME nor HOME is set"))?;
    Ok(base.join("event-bus").join("contexts"))
}

fn check_name(name: &str) -> Result<(), BusError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(BusError::config(
            "context name",
            name,
            "1 to 64 characters of A-Z, a-z, 0-9, - and _",
        ));
    }
    Ok(())
}

fn io(what: &str, e: std::io::Error) -> BusError {
    BusError::with_source(ErrorKind::Config, format!("{what}: {e}"), e)
}

/// The context named `name`.
pub fn load(name: &str) -> Result<Context, BusError> {
    check_name(name)?;
    let path = dir()?.join(format!("{name}.json"));
    let bytes = std::fs::read(&path).map_err(|e| {
        io(
            &format!(
                "context {name:?} ({}); `bus context ls` lists them",
                path.display()
            ),
            e,
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        BusError::with_source(
            ErrorKind::Config,
            format!("context file {}: {e}", path.display()),
            e,
        )
    })
}

/// The context to use: `--context`, else `BUS_CONTEXT`, else the selected one.
pub fn chosen(cli_context: Option<&str>) -> Result<Option<Context>, BusError> {
    let name = match cli_context {
        Some(n) => Some(n.to_string()),
        None => match std::env::var("BUS_CONTEXT") {
            Ok(n) if !n.is_empty() => Some(n),
            _ => std::fs::read_to_string(dir()?.join("selected"))
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        },
    };
    name.map(|n| load(&n)).transpose()
}

/// `bus context ...`.
pub fn run(cli: &Cli, cmd: &ContextCommand) -> Result<ExitCode, BusError> {
    let dir = dir()?;
    match cmd {
        ContextCommand::Save {
            name,
            url,
            tenant,
            config,
        } => {
            check_name(name)?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| io(&format!("creating {}", dir.display()), e))?;
            let ctx = Context {
                url: url.clone(),
                tenant: tenant.clone(),
                config: config.clone(),
            };
            let path = dir.join(format!("{name}.json"));
            let text = serde_json::to_string_pretty(&ctx).expect("serialises");
            std::fs::write(&path, text)
                .map_err(|e| io(&format!("writing {}", path.display()), e))?;
            if cli.json {
                println!("{}", json!({"saved": name, "path": path}));
            } else {
                println!("saved context {name} ({})", path.display());
            }
        }
        ContextCommand::Ls => {
            let selected = std::fs::read_to_string(dir.join("selected")).unwrap_or_default();
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok())
                        .filter_map(|e| {
                            e.file_name()
                                .to_str()?
                                .strip_suffix(".json")
                                .map(str::to_string)
                        })
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            if cli.json {
                println!(
                    "{}",
                    json!({"contexts": names, "selected": selected.trim()})
                );
            } else {
                for n in names {
                    println!("{}{n}", if n == selected.trim() { "* " } else { "  " });
                }
            }
        }
        ContextCommand::Show { name } => {
            let ctx = load(name)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&ctx).expect("serialises")
            );
        }
        ContextCommand::Select { name } => {
            load(name)?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| io(&format!("creating {}", dir.display()), e))?;
            std::fs::write(dir.join("selected"), name).map_err(|e| io("selecting", e))?;
            if !cli.json {
                println!("selected context {name}");
            }
        }
        ContextCommand::Rm { name } => {
            check_name(name)?;
            let path = dir.join(format!("{name}.json"));
            std::fs::remove_file(&path)
                .map_err(|e| io(&format!("removing {}", path.display()), e))?;
            if std::fs::read_to_string(dir.join("selected")).is_ok_and(|s| s.trim() == name) {
                let _ = std::fs::remove_file(dir.join("selected"));
            }
            if !cli.json {
                println!("removed context {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
