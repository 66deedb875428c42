//! Database errors as bus errors, and the table-name check.

use event_bus::{BusError, ErrorKind};

/// The kind of a database error. The runner tries again, without counting
/// a failed attempt, on `Timeout`, `Unavailable` and `Conflict`: errors that
/// pass by themselves (a lost connection, a server restarting during a
/// failover, a serialization failure), as opposed to errors about the
/// statement or the data (`Backend`).
pub(crate) fn error_kind(e: &sqlx::Error) -> ErrorKind {
    match e {
        sqlx::Error::PoolTimedOut => ErrorKind::Timeout,
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => ErrorKind::Unavailable,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // Statement timeout, lock timeout.
            Some("57014" | "55P03") => ErrorKind::Timeout,
            // Connection exceptions (class 08), the server shutting down or
            // starting (57P01..57P05), too many connections.
            Some(c) if c.starts_with("08") || c.starts_with("57P") || c == "53300" => {
                ErrorKind::Unavailable
            }
            // Serialization failure, deadlock: try again.
            Some("40001" | "40P01") => ErrorKind::Conflict,
            _ => ErrorKind::Backend,
        },
        _ => ErrorKind::Backend,
    }
}

pub(crate) fn db_error(what: &str, e: sqlx::Error) -> BusError {
    BusError::with_source(error_kind(&e), what.to_string(), e)
}

/// Checks a table name before it is put into SQL: letters, digits and `_`
/// only, optionally `schema.table`, at most `max_len` bytes (PostgreSQL
/// identifiers are cut at 63 bytes, and derived names add suffixes).
pub(crate) fn validate_table(field: &str, table: &str, max_len: usize) -> Result<(), BusError> {
    let ok = !table.is_empty()
        && table.len() <= max_len
        && table.split('.').count() <= 2
        && table
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    if ok {
        Ok(())
    } else {
        Err(BusError::config(
            field,
            table,
            format!(
                "letters, digits and `_` only, optionally `schema.table`, at most {max_len} bytes"
            ),
        ))
    }
}
