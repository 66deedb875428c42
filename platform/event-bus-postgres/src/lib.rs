//! PostgreSQL for `event-bus`: [`PgInbox`], the idempotency inbox of the
//! event runner whose claim row and the handler's own writes commit in one
//! transaction, so that an event redelivered after a crash between commit
//! and ack has no second effect.
//!
//! Depend on `event-bus` and `event-bus-postgres`, and use the sqlx this
//! crate re-exports (`event_bus_postgres::sqlx`) for the pool and the
//! handler's transaction: a `PgPool` of another sqlx version is another type.
//!
//! ```no_run
//! use event_bus::runner::{Event, Handler, Outcome, Runner};
//! use event_bus_postgres::{sqlx, PgInbox};
//! # async fn example(bus: std::sync::Arc<dyn event_bus::EventBus>, pool: sqlx::PgPool) -> Result<(), event_bus::BusError> {
//! #[derive(serde::Deserialize)]
//! struct OrderPlaced { order_id: String, cents: i64 }
//!
//! let inbox = PgInbox::new(pool);
//! inbox.migrate().await?;
//! let runner = Runner::builder(bus, "billing")
//!     .inbox(inbox)
//!     .handler(Handler::new("record-revenue", "orders.placed",
//!         |e: Event<'_, OrderPlaced>, tx: &mut sqlx::Transaction<'static, sqlx::Postgres>| Box::pin(async move {
//!             sqlx::query("INSERT INTO revenue (order_id, cents) VALUES ($1, $2)")
//!                 .bind(&e.data.order_id)
//!                 .bind(e.data.cents)
//!                 .execute(&mut **tx)
//!                 .await
//!                 .map(|_| ())
//!                 .into()
//!         })))
//!     .build();
//! # Ok(()) }
//! ```
//!
//! # Table
//!
//! `event_bus_inbox (consumer text, message_id text, processed_at timestamptz,
//! primary key (consumer, message_id))`, created by [`PgInbox::migrate`].
//! Rows older than the retention window are removed by
//! [`PgInbox::purge_older_than`] or the task from [`PgInbox::spawn_cleanup`];
//! keep the window longer than the longest possible redelivery delay.

#![warn(missing_docs)]

/// The sqlx this crate is built with: use it (`event_bus_postgres::sqlx`)
/// for the pool and the handler's `Transaction`, so that the versions match
/// (another sqlx version's `PgPool` is a different type).
pub use sqlx;

use async_trait::async_trait;
use event_bus::runner::Inbox;
use event_bus::{BusError, ErrorKind, MessageId};
use sqlx::postgres::PgPool;
use sqlx::{Postgres, Transaction};
use std::time::Duration;

/// The default table name.
pub const DEFAULT_TABLE: &str = "event_bus_inbox";

// Table names are validated (`with_table`) before they are put into SQL,
// hence the `AssertSqlSafe` around the formatted statements.

/// A PostgreSQL idempotency inbox.
#[derive(Clone, Debug)]
pub struct PgInbox {
    pool: PgPool,
    table: String,
}

/// The kind of a database error. The runner tries again, without counting
/// a failed attempt, on `Timeout`, `Unavailable` and `Conflict`: errors that
/// pass by themselves (a lost connection, a server restarting during a
/// failover, a serialization failure), as opposed to errors about the
/// statement or the data (`Backend`).
fn error_kind(e: &sqlx::Error) -> ErrorKind {
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

fn db_error(what: &str, e: sqlx::Error) -> BusError {
    BusError::with_source(error_kind(&e), format!("inbox: {what}"), e)
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
        let ok = !table.is_empty()
            && table.split('.').count() <= 2
            && table
                .split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        if !ok {
            return Err(BusError::config(
                "inbox table",
                table,
                "letters, digits and `_` only, optionally `schema.table`",
            ));
        }
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
        .map_err(|e| db_error(&format!("creating table {t}"), e))?;
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
        .map_err(|e| db_error("lookup", e))?;
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
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| db_error("beginning a transaction", e))?;
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
        .map_err(|e| db_error("claiming the message", e))?
        .rows_affected();
        if inserted == 0 {
            let _ = tx.rollback().await;
            return Ok(None);
        }
        Ok(Some(tx))
    }

    async fn commit(&self, tx: Self::Tx) -> Result<(), BusError> {
        tx.commit().await.map_err(|e| db_error("committing", e))
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
        .map_err(|e| db_error("purging old rows", e))?;
        Ok(r.rows_affected())
    }
}
