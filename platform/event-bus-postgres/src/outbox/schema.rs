//! DDL: the outbox's tables and indexes ([`Outbox::migrate`]).

use super::{Outbox, Tables};
use crate::error::db_error;
use event_bus::BusError;

impl Outbox {
    /// Creates the tables and indexes if missing. Needs PostgreSQL 13 or
    /// newer (`xid8`, `pg_current_xact_id`).
    pub async fn migrate(&self) -> Result<(), BusError> {
        let Tables {
            rows,
            failed,
            lease,
            index,
            ..
        } = &self.tables;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {rows} (
                seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                xid XID8 NOT NULL DEFAULT pg_current_xact_id(),
                message_id TEXT NOT NULL,
                subject TEXT NOT NULL,
                order_key TEXT NOT NULL,
                header_names TEXT[] NOT NULL,
                header_values TEXT[] NOT NULL,
                payload BYTEA NOT NULL,
                enqueued_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                attempts INT NOT NULL DEFAULT 0,
                last_error TEXT,
                published_at TIMESTAMPTZ,
                stream TEXT,
                stream_seq BIGINT
            );
            CREATE INDEX IF NOT EXISTS {index}_pending_order ON {rows} (xid, seq) WHERE published_at IS NULL;
            CREATE INDEX IF NOT EXISTS {index}_published ON {rows} (published_at) WHERE published_at IS NOT NULL;
            CREATE TABLE IF NOT EXISTS {failed} (
                seq BIGINT PRIMARY KEY,
                message_id TEXT NOT NULL,
                subject TEXT NOT NULL,
                order_key TEXT NOT NULL,
                header_names TEXT[] NOT NULL,
                header_values TEXT[] NOT NULL,
                payload BYTEA NOT NULL,
                enqueued_at TIMESTAMPTZ NOT NULL,
                attempts INT NOT NULL,
                error TEXT NOT NULL,
                failed_at TIMESTAMPTZ NOT NULL DEFAULT now()
            );
            -- The row's place in line, so that a retried row goes back to it.
            ALTER TABLE {failed} ADD COLUMN IF NOT EXISTS xid XID8;
            CREATE INDEX IF NOT EXISTS {index}_failed_key ON {failed} (order_key);
            CREATE TABLE IF NOT EXISTS {lease} (
                name TEXT PRIMARY KEY,
                holder TEXT NOT NULL,
                expires_at TIMESTAMPTZ NOT NULL
            );"
        )))
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(&format!("outbox: creating table {rows}"), e))?;
        Ok(())
    }
}
