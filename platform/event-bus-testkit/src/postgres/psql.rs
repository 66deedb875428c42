//! Running `psql` and other client tools, and the URLs they take.

use super::binary::psql_binary;
use super::user::scrub_env;
use super::PgHarnessError;
use crate::local::unique_suffix;
use std::process::{Command, Output};
use std::time::Duration;

/// How long one `psql` may take.
pub(super) const PSQL_TIMEOUT: Duration = Duration::from_secs(60);

/// `test_<pid>_<counter>_<nanos>`: unique across processes and calls.
pub(super) fn unique_db_name() -> String {
    format!("test_{}", unique_suffix().replace('-', "_"))
}

/// Returns `None` for other forms (keyword/value strings, `dbname=` params).
pub(super) fn with_database(url: &str, db: &str) -> Option<String> {
    let scheme_end = ["postgres://", "postgresql://"]
        .iter()
        .find(|s| url.starts_with(*s))?
        .len();
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let after = &rest[authority_end..];
    let suffix_start = after.find(['?', '#']).unwrap_or(after.len());
    let suffix = &after[suffix_start..];
    if suffix.contains("dbname=") {
        return None;
    }
    Some(format!(
        "{}/{db}{suffix}",
        &url[..scheme_end + authority_end]
    ))
}

/// Hides the password of a URL for error messages.
fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &authority[..colon],
                &url[scheme_end + at..]
            ),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

pub(super) fn output_text(out: &Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(err.trim_end());
    }
    text
}

/// Runs a short-lived client tool (`initdb`, `psql`, `pg_isready`) to its
/// end, killing it after `timeout`.
pub(super) async fn run_tool(
    cmd: Command,
    what: &str,
    timeout: Duration,
) -> Result<Output, PgHarnessError> {
    match crate::process::run_captured(cmd, timeout).await {
        Ok(Some(out)) => Ok(out),
        Ok(None) => Err(PgHarnessError::Timeout {
            what: format!("`{what}` to finish"),
            waited: timeout,
            log_tail: String::new(),
        }),
        Err(e) => Err(PgHarnessError::io(format!("running `{what}`"), e)),
    }
}

/// A `psql` command running `sql` against `url` (no psqlrc, stop on error,
/// unaligned tuples-only output).
pub(super) fn psql_command(url: &str, sql: &str, scrub: bool) -> Command {
    let mut cmd = Command::new(psql_binary());
    if scrub {
        scrub_env(&mut cmd);
    }
    cmd.env("PGCONNECT_TIMEOUT", "10").args([
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        url,
        "-c",
        sql,
    ]);
    cmd
}

/// Runs `sql` with `psql` against `url`; returns trimmed stdout.
pub(super) async fn run_psql(url: &str, sql: &str, scrub: bool) -> Result<String, PgHarnessError> {
    let what = format!("psql {} -c {sql:?}", redact_url(url));
    let out = run_tool(psql_command(url, sql, scrub), &what, PSQL_TIMEOUT).await?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(PgHarnessError::Command {
            command: what,
            status: out.status.to_string(),
            details: output_text(&out),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_database_in_urls() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/db?sslmode=disable", "x").as_deref(),
            Some("postgres://u:p@h:5432/x?sslmode=disable")
        );
        assert_eq!(
            with_database("postgresql://h", "x").as_deref(),
            Some("postgresql://h/x")
        );
        assert_eq!(
            with_database("postgres://h:1/", "x").as_deref(),
            Some("postgres://h:1/x")
        );
        assert_eq!(
            with_database("postgres://[::1]:5/a#f", "x").as_deref(),
            Some("postgres://[::1]:5/x#f")
        );
        assert_eq!(with_database("host=h dbname=d", "x"), None);
        assert_eq!(with_database("postgres://h/?dbname=d", "x"), None);
        assert_eq!(
            redact_url("postgres://u:secret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }
}
