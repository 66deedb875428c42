//! Locating the PostgreSQL binaries (`initdb`, `postgres`, `psql`,
//! `pg_isready`), with an error that says how to get them.

use super::{PgHarnessError, HOW_TO_GET_POSTGRES};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Root directory of Debian's versioned PostgreSQL installations.
const DEBIAN_PG_ROOT: &str = "/usr/lib/postgresql";

static BIN_DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Locates the PostgreSQL server binary directory (cached for the process).
///
/// Resolution order: env `PG_BIN_DIR`; the highest version under
/// `/usr/lib/postgresql/*/bin`; the first `PATH` entry holding both `initdb`
/// and `postgres`. A directory qualifies if it holds `initdb` and `postgres`.
/// The error says how to get them.
pub fn pg_bin_dir() -> Result<PathBuf, PgHarnessError> {
    BIN_DIR
        .get_or_init(|| {
            resolve_bin_dir(
                std::env::var_os("PG_BIN_DIR")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from),
                &[PathBuf::from(DEBIAN_PG_ROOT)],
                std::env::var_os("PATH"),
            )
        })
        .clone()
        .map_err(PgHarnessError::BinariesNotFound)
}

fn has_server_binaries(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("postgres").is_file()
}

fn resolve_bin_dir(
    explicit: Option<PathBuf>,
    version_roots: &[PathBuf],
    path_var: Option<OsString>,
) -> Result<PathBuf, String> {
    let mut notes = Vec::new();
    if let Some(dir) = explicit {
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
        notes.push(format!(
            "PG_BIN_DIR={} has no initdb/postgres",
            dir.display()
        ));
    }
    for root in version_roots {
        let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(root)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (parse_version_dir(&name), e.path().join("bin"))
            })
            .collect();
        versions.sort_by(|a, b| b.0.cmp(&a.0));
        match versions
            .into_iter()
            .find(|(_, bin)| has_server_binaries(bin))
        {
            Some((_, bin)) => return Ok(bin),
            None => notes.push(format!("nothing in {}/*/bin", root.display())),
        }
    }
    if let Some(path) = path_var {
        if let Some(dir) = std::env::split_paths(&path).find(|d| has_server_binaries(d)) {
            return Ok(dir);
        }
    }
    notes.push("no initdb/postgres on PATH".into());
    Err(format!(
        "no PostgreSQL server binaries (initdb, postgres) found ({}): {HOW_TO_GET_POSTGRES} \
         (or PG_BIN_DIR=/usr/lib/postgresql/<version>/bin)",
        notes.join("; ")
    ))
}

/// `"15"` -> `[15]`, `"9.6"` -> `[9, 6]`; non-numeric names sort lowest.
fn parse_version_dir(name: &str) -> Vec<u32> {
    name.split('.')
        .map(|p| p.parse::<u32>())
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_default()
}

/// A client tool (`psql`, `pg_isready`): the bin dir's copy, else
/// `/usr/bin/<name>`, else `<name>` on `PATH`.
pub(super) fn client_binary(name: &str) -> PathBuf {
    if let Ok(dir) = pg_bin_dir() {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    let p = Path::new("/usr/bin").join(name);
    if p.is_file() {
        p
    } else {
        PathBuf::from(name)
    }
}

/// The `psql` binary the harness uses (bin dir, `/usr/bin/psql`, or `PATH`).
pub fn psql_binary() -> PathBuf {
    client_binary("psql")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    #[test]
    fn picks_highest_version_and_explains_missing_binaries() {
        let root = TempDir::new().unwrap();
        let err = resolve_bin_dir(
            Some(root.path().join("nope")),
            &[root.path().to_path_buf()],
            Some(OsString::new()),
        )
        .unwrap_err();
        assert!(
            err.contains(
                "run ./scripts/install-test-deps.sh (apt-get install postgresql) \
                 or set DATABASE_URL=postgres://..."
            ),
            "{err}"
        );
        assert!(err.contains("PG_BIN_DIR="), "{err}");

        for v in ["9.6", "15", "16", "misc"] {
            let bin = root.path().join(v).join("bin");
            fs::create_dir_all(&bin).unwrap();
            if v != "16" {
                fs::write(bin.join("initdb"), "").unwrap();
                fs::write(bin.join("postgres"), "").unwrap();
            }
        }
        // 16 lacks binaries, so 15 wins over 9.6.
        let found = resolve_bin_dir(None, &[root.path().to_path_buf()], None).unwrap();
        assert_eq!(found, root.path().join("15").join("bin"));
        let explicit = root.path().join("9.6").join("bin");
        let found =
            resolve_bin_dir(Some(explicit.clone()), &[root.path().to_path_buf()], None).unwrap();
        assert_eq!(found, explicit);
        assert!(parse_version_dir("10") > parse_version_dir("9.6"));
    }
}
