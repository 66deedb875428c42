//! The relay's SQL, in one place: the lease, reading pending rows, removing
//! (or marking) published ones, counting refusals, and moving a row to the
//! failure table.

use crate::error::db_error;
use crate::outbox::Tables;
use event_bus::BusError;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::Row as _;
use std::time::Duration;

/// A pending row read for publishing (its payload and headers move into
/// the envelope).
pub(super) struct PendingRow {
    pub(super) seq: i64,
    pub(super) message_id: String,
    pub(super) subject: String,
    pub(super) order_key: String,
    pub(super) names: Vec<String>,
    pub(super) values: Vec<String>,
    pub(super) payload: Vec<u8>,
    pub(super) attempts: i32,
}

impl sqlx::FromRow<'_, PgRow> for PendingRow {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(PendingRow {
            seq: row.try_get("seq")?,
            message_id: row.try_get("message_id")?,
            subject: row.try_get("subject")?,
            order_key: row.try_get("order_key")?,
            names: row.try_get("header_names")?,
            values: row.try_get("header_values")?,
            payload: row.try_get("payload")?,
            attempts: row.try_get("attempts")?,
        })
    }
}

/// Takes or renews the lease for `holder` (if free, expired, or already
/// its own); true when `holder` holds it now.
pub(super) async fn take_lease(
    pool: &PgPool,
    tables: &Tables,
    holder: &str,
    lease: Duration,
) -> Result<bool, BusError> {
    let got: Option<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {lease_table} AS l (name, holder, expires_at)
         VALUES ('relay', $1, now() + make_interval(secs => $2))
         ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
         WHERE l.holder = EXCLUDED.holder OR l.expires_at < now()
         RETURNING holder",
        lease_table = tables.lease
    )))
    .bind(holder)
    .bind(lease.as_secs_f64())
    .fetch_optional(pool)
    .await
    .map_err(|e| db_error("outbox relay: taking the lease", e))?;
    Ok(got.is_some())
}

/// Gives the lease up, if `holder` holds it.
pub(super) async fn release_lease(
    pool: &PgPool,
    tables: &Tables,
    holder: &str,
) -> Result<(), BusError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM {} WHERE name = 'relay' AND holder = $1",
        tables.lease
    )))
    .bind(holder)
    .execute(pool)
    .await
    .map_err(|e| db_error("outbox relay: releasing the lease", e))?;
    Ok(())
}

/// Removes published rows kept longer than `keep`.
pub(super) async fn remove_old_published(
    pool: &PgPool,
    tables: &Tables,
    keep: Duration,
) -> Result<(), BusError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM {} WHERE published_at < now() - make_interval(secs => $1)",
        tables.rows
    )))
    .bind(keep.as_secs_f64())
    .execute(pool)
    .await
    .map_err(|e| db_error("outbox relay: removing old published rows", e))?;
    Ok(())
}

/// At most `limit` rows to publish: of finished transactions only (below
/// the oldest running transaction id), in (transaction id, enqueue) order,
/// skipping the keys in `held` and the rows in `skip` (being removed), and
/// every key with a row in the failure table.
pub(super) async fn read_pending(
    pool: &PgPool,
    tables: &Tables,
    held: &[&str],
    limit: usize,
    skip: &[i64],
) -> Result<Vec<PendingRow>, BusError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT seq, message_id, subject, order_key, header_names, header_values, payload, attempts
         FROM {rows} AS r
         WHERE published_at IS NULL
           -- a key with a row in the failure table waits for it (until
           -- it is retried or discarded): never published ahead of it
           AND NOT EXISTS (SELECT 1 FROM {failed} AS f WHERE f.order_key = r.order_key)
           AND (xid < pg_snapshot_xmin(pg_current_snapshot())
                -- a committed row whose xid this cluster has not handed
                -- out yet was copied from another cluster (restore):
                OR xid >= pg_snapshot_xmax(pg_current_snapshot()))
           AND NOT (order_key = ANY($1))
           AND NOT (seq = ANY($3))
         ORDER BY xid, seq
         LIMIT $2",
        rows = tables.rows,
        failed = tables.failed,
    )))
    .bind(held)
    .bind(limit as i64)
    .bind(skip)
    .fetch_all(pool)
    .await
    .map_err(|e| db_error("outbox relay: reading pending rows", e))
}

/// Removes the published rows `seqs`, or, with `keep`, marks them
/// published with where the bus stored them (`streams`, `stream_seqs`, in
/// the order of `seqs`).
pub(super) async fn settle_published(
    pool: &PgPool,
    rows_table: &str,
    keep: bool,
    seqs: Vec<i64>,
    streams: Vec<Option<String>>,
    stream_seqs: Vec<i64>,
) -> Result<(), BusError> {
    let q = if keep {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {rows_table} AS t SET published_at = now(), stream = u.stream, stream_seq = u.stream_seq
             FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS u(seq, stream, stream_seq)
             WHERE t.seq = u.seq"
        )))
        .bind(seqs)
        .bind(streams)
        .bind(stream_seqs)
    } else {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {rows_table} WHERE seq = ANY($1)"
        )))
        .bind(seqs)
    };
    q.execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| db_error("outbox relay: removing published rows", e))
}

/// Counts a refused publish of row `seq`, keeping its error.
pub(super) async fn count_refusal(
    pool: &PgPool,
    tables: &Tables,
    seq: i64,
    error: &str,
) -> Result<(), BusError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {} SET attempts = attempts + 1, last_error = $2 WHERE seq = $1",
        tables.rows
    )))
    .bind(seq)
    .bind(error)
    .execute(pool)
    .await
    .map_err(|e| db_error("outbox relay: counting a refused publish", e))?;
    Ok(())
}

/// Moves row `seq` to the failure table with its last `error`, keeping its
/// place in line (its xid) for a retry.
pub(super) async fn move_to_failed(
    pool: &PgPool,
    tables: &Tables,
    seq: i64,
    error: &str,
) -> Result<(), BusError> {
    let Tables { rows, failed, .. } = tables;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH moved AS (DELETE FROM {rows} WHERE seq = $1
             RETURNING seq, xid, message_id, subject, order_key, header_names, header_values, payload, enqueued_at, attempts)
         INSERT INTO {failed} (seq, xid, message_id, subject, order_key, header_names, header_values, payload, enqueued_at, attempts, error)
         SELECT seq, xid, message_id, subject, order_key, header_names, header_values, payload, enqueued_at, attempts + 1, $2 FROM moved"
    )))
    .bind(seq)
    .bind(error)
    .execute(pool)
    .await
    .map_err(|e| db_error("outbox relay: moving a refused row to the failure table", e))?;
    Ok(())
}
