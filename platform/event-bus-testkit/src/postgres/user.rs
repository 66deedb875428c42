//! Running PostgreSQL as the `postgres` system user when the tests run as
//! root (PostgreSQL refuses to run as root), and a temp dir that user can use.

use super::{PgHarnessError, HOW_TO_GET_POSTGRES};
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use tempfile::TempDir;

/// System user the server runs as when the tests run as root.
const SERVER_USER: &str = "postgres";

pub(super) fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| match fs::metadata("/proc/self") {
        // /proc/<pid> is owned by the process's effective uid.
        Ok(m) => m.uid() == 0,
        Err(_) => Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false),
    })
}

/// How to become the server user when running as root.
#[derive(Debug, Clone)]
enum Wrapper {
    Runuser(PathBuf),
    Su,
}

fn wrapper() -> Wrapper {
    static WRAPPER: OnceLock<Wrapper> = OnceLock::new();
    WRAPPER
        .get_or_init(|| {
            let mut candidates = vec![
                PathBuf::from("/usr/sbin/runuser"),
                PathBuf::from("/sbin/runuser"),
            ];
            if let Some(path) = std::env::var_os("PATH") {
                candidates.extend(std::env::split_paths(&path).map(|d| d.join("runuser")));
            }
            candidates
                .into_iter()
                .find(|p| p.is_file())
                .map(Wrapper::Runuser)
                .unwrap_or(Wrapper::Su)
        })
        .clone()
}

/// `(uid, gid)` of the `postgres` system user.
fn server_user_ids() -> Option<(u32, u32)> {
    let parse = |text: &str| {
        text.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 4 && f[0] == SERVER_USER)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
    };
    if let Some(ids) = fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|t| parse(&t))
    {
        return Some(ids);
    }
    let out = Command::new("getent")
        .args(["passwd", SERVER_USER])
        .output()
        .ok()?;
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// Quotes one word for `/bin/sh`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A command running `program args` as the server user: directly when not
/// root, else through `runuser -u postgres --` (or `su postgres -s /bin/sh -c`).
/// `PG*` environment variables are removed and messages are forced to English
/// (`LC_ALL=C`) so that log checks work.
pub(super) fn server_command(program: &Path, args: &[OsString], cwd: &Path) -> Command {
    let mut cmd = if !running_as_root() {
        let mut c = Command::new(program);
        c.args(args);
        c
    } else {
        match wrapper() {
            Wrapper::Runuser(runuser) => {
                let mut c = Command::new(runuser);
                c.args(["-u", SERVER_USER, "--"]).arg(program).args(args);
                c
            }
            Wrapper::Su => {
                let script = std::iter::once(program.as_os_str())
                    .chain(args.iter().map(OsString::as_os_str))
                    .map(|a| shell_quote(&a.to_string_lossy()))
                    .collect::<Vec<_>>()
                    .join(" ");
                let mut c = Command::new("su");
                c.args([SERVER_USER, "-s", "/bin/sh", "-c"])
                    .arg(format!("exec {script}"));
                c
            }
        }
    };
    scrub_env(&mut cmd);
    cmd.current_dir(cwd);
    cmd
}

/// Removes `PG*` variables (except `PG_BIN_DIR`) and sets `LC_ALL=C`.
pub(super) fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("PG") && k != "PG_BIN_DIR" {
            cmd.env_remove(&key);
        }
    }
    cmd.env("LC_ALL", "C");
}

/// A temp dir the server user can use: under the default temp dir if every
/// ancestor is world-traversable (or we are not root), else under `/tmp`.
pub(super) fn make_temp_dir() -> Result<TempDir, PgHarnessError> {
    let base = std::env::temp_dir();
    let base = if !running_as_root() || traversable_by_others(&base) {
        base
    } else {
        PathBuf::from("/tmp")
    };
    let dir = tempfile::Builder::new()
        .prefix("pg-test-")
        .tempdir_in(&base)
        .map_err(|e| PgHarnessError::io(format!("creating temp dir in {}", base.display()), e))?;
    if running_as_root() {
        let (uid, gid) = server_user_ids().ok_or_else(|| {
            PgHarnessError::Setup(format!(
                "running as root, but there is no `{SERVER_USER}` system user to run the \
                 server as (PostgreSQL refuses to run as root): {HOW_TO_GET_POSTGRES}, \
                 or run the tests as a non-root user"
            ))
        })?;
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(|e| {
            PgHarnessError::io(format!("chown {SERVER_USER} {}", dir.path().display()), e)
        })?;
    }
    Ok(dir)
}

fn traversable_by_others(path: &Path) -> bool {
    path.ancestors().all(|p| {
        fs::metadata(p)
            .map(|m| m.mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(super::shell_quote("a'b"), r"'a'\''b'");
    }
}
