//! Operations on a running outbox: what is waiting ([`Outbox::status`]),
//! what the bus refused ([`Outbox::failed`]), and retrying or discarding it.

use super::{headers_from, Outbox, Tables};
use crate::error::db_error;
use event_bus::{BusError, Headers};
use sqlx::postgres::PgRow;
use sqlx::Row as _;
use std::time::Duration;

/// An event the bus refused for good, kept in the failure table
/// ([`Outbox::failed`]) until [retried](Outbox::retry_failed) or
/// [discarded](Outbox::discard_failed).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailedEvent {
    /// The row's number in the failure table (its pending row's number).
    pub seq: i64,
    /// The message id.
    pub message_id: String,
    /// The subject.
    pub subject: String,
    /// The ordering key.
    pub order_key: String,
    /// The headers.
    pub headers: Headers,
    /// The payload.
    pub payload: Vec<u8>,
    /// How many publishes were refused.
    pub attempts: i32,
    /// The last error, as the bus reported it.
    pub error: String,
    /// How long ago it was enqueued.
    pub enqueued_ago: Duration,
    /// How long ago it was moved to the failure table.
    pub failed_ago: Duration,
}

/// What is waiting in the outbox ([`Outbox::status`]).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct OutboxStatus {
    /// Rows not published yet.
    pub pending: u64,
    /// The age of the oldest pending row that is not
    /// [blocked](Self::blocked) behind a failed row.
    pub oldest_pending_age: Option<Duration>,
    /// Pending rows of finished transactions that are held back because an
    /// older transaction is still running (see [`held_by`](Self::held_by)).
    pub held_back: u64,
    /// Rows in the failure table.
    pub failed: u64,
    /// Pending rows whose ordering key has a row in the failure table:
    /// they wait for it (never published ahead of it) until it is
    /// [retried](Outbox::retry_failed) or [discarded](Outbox::discard_failed).
    /// Not counted in [`oldest_pending_age`](Self::oldest_pending_age).
    pub blocked: u64,
    /// When rows are held back: the session whose running transaction
    /// holds the visibility horizon (the oldest one that has written).
    pub held_by: Option<BlockingSession>,
    /// When rows are held back: the oldest prepared (two-phase)
    /// transaction, if any, by its global id: it holds the horizon like a
    /// session does, but belongs to no session (`COMMIT PREPARED` or
    /// `ROLLBACK PREPARED` ends it).
    pub prepared_transaction: Option<String>,
    /// The relay holding the lease, if one does.
    pub relay: Option<String>,
}

/// A PostgreSQL session whose open transaction holds outbox delivery back.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct BlockingSession {
    /// Its process id (`pg_terminate_backend(pid)` ends it).
    pub pid: i32,
    /// Its database.
    pub database: Option<String>,
    /// Its user.
    pub user: Option<String>,
    /// `active`, `idle in transaction`, ...
    pub state: Option<String>,
    /// How long its transaction has been open.
    pub transaction_age: Option<Duration>,
    /// How long ago its current (or last) statement started.
    pub query_age: Option<Duration>,
}

fn secs(v: Option<f64>) -> Option<Duration> {
    v.map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX))
}

/// A row of the failure table, as [`Outbox::failed`] reads it.
struct FailedRow(FailedEvent);

impl sqlx::FromRow<'_, PgRow> for FailedRow {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(FailedRow(FailedEvent {
            seq: row.try_get("seq")?,
            message_id: row.try_get("message_id")?,
            subject: row.try_get("subject")?,
            order_key: row.try_get("order_key")?,
            headers: headers_from(row.try_get("header_names")?, row.try_get("header_values")?),
            payload: row.try_get("payload")?,
            attempts: row.try_get("attempts")?,
            error: row.try_get("error")?,
            enqueued_ago: secs(row.try_get("enqueued_secs")?).unwrap_or_default(),
            failed_ago: secs(row.try_get("failed_secs")?).unwrap_or_default(),
        }))
    }
}

/// A row of `pg_stat_activity`, as [`Outbox::status`] reads it.
struct SessionRow(BlockingSession);

impl sqlx::FromRow<'_, PgRow> for SessionRow {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(SessionRow(BlockingSession {
            pid: row.try_get("pid")?,
            database: row.try_get("database")?,
            user: row.try_get("user_name")?,
            state: row.try_get("state")?,
            transaction_age: secs(row.try_get("transaction_secs")?),
            query_age: secs(row.try_get("query_secs")?),
        }))
    }
}

impl Outbox {
    /// Pending and failed counts, the oldest pending age, and what holds
    /// delivery back.
    pub async fn status(&self) -> Result<OutboxStatus, BusError> {
        let Tables {
            rows,
            failed,
            lease,
            ..
        } = &self.tables;
        let (pending, oldest, held_back, blocked): (i64, Option<f64>, i64, i64) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT count(*),
                        EXTRACT(EPOCH FROM now() - min(enqueued_at) FILTER (WHERE NOT blocked))::float8,
                        count(*) FILTER (WHERE xid >= pg_snapshot_xmin(pg_current_snapshot())),
                        count(*) FILTER (WHERE blocked)
                 FROM (SELECT enqueued_at, xid,
                              EXISTS (SELECT 1 FROM {failed} AS f WHERE f.order_key = r.order_key) AS blocked
                       FROM {rows} AS r WHERE published_at IS NULL) AS p"
            )))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error("outbox: counting pending rows", e))?;
        let (failed_count,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {failed}"
        )))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| db_error("outbox: counting failed rows", e))?;
        let relay: Option<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT holder FROM {lease} WHERE name = 'relay' AND expires_at > now()"
        )))
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("outbox: reading the relay lease", e))?;
        let (held_by, prepared_transaction) = if held_back > 0 {
            let prepared: Option<(String,)> = sqlx::query_as(
                "SELECT gid FROM pg_prepared_xacts ORDER BY age(transaction) DESC LIMIT 1",
            )
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("outbox: reading prepared transactions", e))?;
            (self.blocking_session().await?, prepared.map(|(g,)| g))
        } else {
            (None, None)
        };
        let table = self.tables.rows.clone();
        let label = "event_bus.outbox.table";
        metrics::gauge!(event_bus::metrics::OUTBOX_PENDING, label => table.clone())
            .set(pending as f64);
        metrics::gauge!(event_bus::metrics::OUTBOX_FAILED_ROWS, label => table.clone())
            .set(failed_count as f64);
        metrics::gauge!(event_bus::metrics::OUTBOX_OLDEST_AGE, label => table)
            .set(oldest.unwrap_or(0.0).max(0.0));
        Ok(OutboxStatus {
            pending: pending as u64,
            oldest_pending_age: secs(oldest),
            held_back: held_back as u64,
            failed: failed_count as u64,
            blocked: blocked as u64,
            held_by,
            prepared_transaction,
            relay: relay.map(|(h,)| h),
        })
    }

    /// The session with the oldest running transaction that has written
    /// (it sets the horizon `pg_snapshot_xmin` that the relay reads below).
    async fn blocking_session(&self) -> Result<Option<BlockingSession>, BusError> {
        let row: Option<SessionRow> = sqlx::query_as(
            "SELECT pid, datname::text AS database, usename::text AS user_name, state,
                    EXTRACT(EPOCH FROM now() - xact_start)::float8 AS transaction_secs,
                    EXTRACT(EPOCH FROM now() - query_start)::float8 AS query_secs
             FROM pg_stat_activity
             WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
             ORDER BY age(backend_xid) DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("outbox: finding the session that holds delivery back", e))?;
        Ok(row.map(|SessionRow(session)| session))
    }

    /// The events the bus refused for good, oldest first (at most `limit`).
    pub async fn failed(&self, limit: u32) -> Result<Vec<FailedEvent>, BusError> {
        let rows: Vec<FailedRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT seq, message_id, subject, order_key, header_names, header_values, payload,
                    attempts, error,
                    EXTRACT(EPOCH FROM now() - enqueued_at)::float8 AS enqueued_secs,
                    EXTRACT(EPOCH FROM now() - failed_at)::float8 AS failed_secs
             FROM {} ORDER BY seq LIMIT $1",
            self.tables.failed
        )))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("outbox: reading failed rows", e))?;
        Ok(rows.into_iter().map(|FailedRow(event)| event).collect())
    }

    /// Moves failed events (by [`FailedEvent::seq`]) back to the pending
    /// rows, at their place in line (ahead of the rows of their key that
    /// waited for them), with their ids unchanged and their attempts reset;
    /// returns how many were moved. (Rows failed before their place was
    /// kept, by an older version, go behind everything pending now.)
    pub async fn retry_failed(&self, seqs: &[i64]) -> Result<u64, BusError> {
        let Tables { rows, failed, .. } = &self.tables;
        let r = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH moved AS (DELETE FROM {failed} WHERE seq = ANY($1)
                 RETURNING seq, xid, message_id, subject, order_key, header_names, header_values, payload, enqueued_at)
             INSERT INTO {rows} (seq, xid, message_id, subject, order_key, header_names, header_values, payload, enqueued_at)
             OVERRIDING SYSTEM VALUE
             SELECT seq, COALESCE(xid, pg_current_xact_id()), message_id, subject, order_key, header_names, header_values, payload, enqueued_at
             FROM moved ORDER BY seq"
        )))
        .bind(seqs)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("outbox: retrying failed rows", e))?;
        self.wake();
        Ok(r.rows_affected())
    }

    /// Deletes failed events (by [`FailedEvent::seq`]); returns how many.
    /// The rows of their keys that waited for them go on.
    pub async fn discard_failed(&self, seqs: &[i64]) -> Result<u64, BusError> {
        let r = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {} WHERE seq = ANY($1)",
            self.tables.failed
        )))
        .bind(seqs)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("outbox: discarding failed rows", e))?;
        self.wake();
        Ok(r.rows_affected())
    }
}
