//! [`PgInbox`]: the runner's idempotency inbox in PostgreSQL.
//!
//! `event_bus_inbox (consumer text, message_id text, processed_at timestamptz,
//! primary key (consumer, message_id))`, created by [`PgInbox::migrate`].
//! Rows older than the retention window are removed by
//! [`PgInbox::purge_older_than`](event_bus::runner::Inbox::purge_older_than) or the task from [`PgInbox::spawn_cleanup`];
//! keep the window longer than the longest possible redelivery delay.

use crate::error::{db_error, validate_table};
use async_trait::async_trait;
use event_bus::runner::Inbox;
use event_bus::{BusError, MessageId};
use sqlx::postgres::PgPool;
use sqlx::{Postgres, Transaction};
use std::time::Duration;

/// The inbox's default table name.
pub const DEFAULT_TABLE: &str = "event_bus_inbox";

// Table names are validated (`with_table`) before they are put into SQL,
// hence the `AssertSqlSafe` around the formatted statements.

/// A PostgreSQL idempotency inbox.
#[derive(Clone, Debug)]
pub struct PgInbox {
    pool: PgPool,
    table: String,
}

impl PgInbox {
    /// An inbox in table [`DEFAULT_TABLE`].
    pub fn new(pool: PgPool) -> Self {
        PgInbox {
            pool,
            table: DEFAULT_TABLE.to_string(),
        }
    }

    /// An inbox in `table` (letters, digits and `_` only, optionally `schema.table`).
    pub fn with_table(pool: PgPool, table: &str) -> Result<Self, BusError> {
        validate_table("inbox table", table, 63)?;
        Ok(PgInbox {
            pool,
            table: table.to_string(),
        })
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the table and its index if missing.
    pub async fn migrate(&self) -> Result<(), BusError> {
        let t = &self.table;
        let index = t.replace('.', "_");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {t} (
                consumer TEXT NOT NULL,
                message_id TEXT NOT NULL,
                processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                PRIMARY KEY (consumer, message_id)
            );
            CREATE INDEX IF NOT EXISTS {index}_processed_at ON {t} (processed_at);"
        )))
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(&format!("inbox: creating table {t}"), e))?;
        Ok(())
    }

    /// Whether `(consumer, message_id)` has committed effects.
    pub async fn contains(&self, consumer: &str, message_id: &str) -> Result<bool, BusError> {
        let row: Option<(i32,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT 1 FROM {} WHERE consumer = $1 AND message_id = $2",
            self.table
        )))
        .bind(consumer)
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("inbox: lookup", e))?;
        Ok(row.is_some())
    }

    /// Runs [`purge_older_than`](Inbox::purge_older_than) every `every`,
    /// until the returned handle is aborted or dropped with the runtime.
    pub fn spawn_cleanup(
        &self,
        every: Duration,
        older_than: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let inbox = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match inbox.purge_older_than(older_than).await {
                    Ok(n) if n > 0 => tracing::debug!(removed = n, "inbox cleanup"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "inbox cleanup failed"),
                }
            }
        })
    }
}

#[async_trait]
impl Inbox for PgInbox {
    type Tx = Transaction<'static, Postgres>;

    async fn begin(
        &self,
        consumer: &str,
        message_id: &MessageId,
    ) -> Result<Option<Self::Tx>, BusError> {
        // The id's storage key: given and bus-assigned ids never collide.
        let message_id = message_id.key().into_owned();
        let mut tx = crate::transaction::begin(&self.pool, None)
            .await
            .map_err(|e| db_error("inbox: beginning a transaction", e))?;
        // A concurrent claim of the same pair waits on the primary key until
        // the other transaction ends: then it either conflicts (committed:
        // a duplicate) or inserts (rolled back).
        let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {} (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            self.table
        )))
        .bind(consumer)
        .bind(&message_id)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("inbox: claiming the message", e))?
        .rows_affected();
        if inserted == 0 {
            let _ = tx.rollback().await;
            return Ok(None);
        }
        Ok(Some(tx))
    }

    async fn commit(&self, tx: Self::Tx) -> Result<(), BusError> {
        tx.commit()
            .await
            .map_err(|e| db_error("inbox: committing", e))
    }

    async fn rollback(&self, tx: Self::Tx) {
        if let Err(e) = tx.rollback().await {
            tracing::warn!(error = %e, "inbox rollback failed (the connection drops the transaction)");
        }
    }

    async fn purge_older_than(&self, age: Duration) -> Result<u64, BusError> {
        let r = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {} WHERE processed_at < now() - make_interval(secs => $1)",
            self.table
        )))
        .bind(age.as_secs_f64())
        .execute(&self.pool)
        .await
        .map_err(|e| db_error("inbox: purging old rows", e))?;
        Ok(r.rows_affected())
    }
}
