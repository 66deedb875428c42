//! The transactional outbox: events written in the business transaction,
//! published once it commits.
//!
//! A module that writes to its database and then calls `publish` loses the
//! event when it crashes in between, and publishes an event for a
//! transaction that rolled back when it publishes first. With the outbox it
//! [enqueues](Outbox::enqueue) the event in its own transaction instead; an
//! [`OutboxRelay`] publishes committed rows through any
//! `Arc<dyn EventBus>` and removes them once the bus acknowledged them.
//!
//! ```no_run
//! use event_bus::{Envelope, EventBus};
//! use event_bus_postgres::{sqlx, Outbox, OutboxRelay};
//! use std::sync::Arc;
//! # async fn example(bus: Arc<dyn EventBus>, pool: sqlx::PgPool) -> Result<(), event_bus::BusError> {
//! let outbox = Outbox::new(pool.clone());
//! outbox.migrate().await?;
//! let relay = OutboxRelay::builder(outbox.clone(), bus).build()?.spawn();
//!
//! let mut tx = pool.begin().await.expect("begin");
//! sqlx::query("INSERT INTO users (id, email) VALUES ($1, $2)")
//!     .bind(42_i64).bind("ada@example.com")
//!     .execute(&mut *tx).await.expect("insert");
//! let id = outbox
//!     .enqueue_json(&mut tx, "auth.events.user.created", &serde_json::json!({"id": 42}))
//!     .await?;
//! outbox.commit(tx).await?; // commits, and wakes the relay at once
//! println!("event {id} will be published once");
//! # let _ = relay.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # What is guaranteed
//!
//! * **Nothing lost, nothing extra.** A row is published after its
//!   transaction committed and never when it rolled back. The relay reads
//!   only rows whose transaction ids are below the oldest transaction still
//!   running (`pg_snapshot_xmin(pg_current_snapshot())`), so a row that
//!   commits late (its transaction started writing before another one that
//!   already committed) is never skipped: it holds the later rows back
//!   until it commits, instead.
//! * **Exactly one id end to end.** The row's id (a UUIDv7 unless the
//!   caller gave one) is the message id (`Nats-Msg-Id` on NATS) and the
//!   consumer's inbox key. A crash between publish and removal republishes
//!   with the same id: JetStream's duplicate window drops the copy (the relay
//!   refuses a lease as long as that window), and the consumer's inbox covers
//!   the rest.
//! * **Order per ordering key** (the subject unless
//!   [`enqueue_with_key`](Outbox::enqueue_with_key) names another, e.g. an
//!   aggregate id): rows are published in the order their transactions took
//!   a transaction id (their first write), and within a transaction in
//!   enqueue order. For transactions that do not overlap in time this is
//!   commit order; two transactions that overlap and enqueue under the same
//!   key are published in the order they first wrote, even if the first
//!   writer commits second. A failing row holds back its own key (with
//!   backoff); other keys go on. A row refused before it is sent (a schema
//!   check) holds back the later rows of its key in the same batch too; a
//!   row moved to the failure table keeps its key's later rows pending until
//!   it is [retried](Outbox::retry_failed) (back at its place) or
//!   [discarded](Outbox::discard_failed).
//! * **Latency.** A transaction that has written anything (any table, any
//!   database of the cluster) holds back every row enqueued after its first
//!   write until it ends: a transaction open for a minute delays delivery by
//!   up to a minute. [`Outbox::status`] names the session that holds the
//!   horizon back.

mod check;
mod enqueue;
mod operations;
mod relay;
mod schema;

pub use check::OutboxCheck;
pub use operations::{BlockingSession, FailedEvent, OutboxStatus};
pub use relay::{OutboxRelay, OutboxRelayBuilder, RelayHandle, RelayReport};

use crate::error::validate_table;
use event_bus::{BusError, Headers};
use sqlx::postgres::PgPool;
use std::sync::Arc;
use tokio::sync::watch;

/// The outbox's default table name.
pub const DEFAULT_TABLE: &str = "event_bus_outbox";

/// The largest payload (plus headers) [`Outbox::enqueue`] accepts by
/// default: NATS's default `max_payload`, 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// The longest ordering key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// The transactional outbox on one PostgreSQL table: enqueue events in the
/// caller's transaction, inspect and retry what the bus refused.
///
/// Cheap to clone; clones share the in-process wake-up of the relays built
/// from them.
#[derive(Clone, Debug)]
pub struct Outbox {
    pool: PgPool,
    tables: Tables,
    max_payload: usize,
    notify: bool,
    wake: Arc<watch::Sender<u64>>,
}

/// The outbox's table names, validated.
#[derive(Clone, Debug)]
pub(crate) struct Tables {
    /// Pending rows.
    pub(crate) rows: String,
    /// Rows the bus refused for good.
    pub(crate) failed: String,
    /// The relays' lease.
    pub(crate) lease: String,
    /// The LISTEN/NOTIFY channel.
    pub(crate) channel: String,
    /// A prefix for index names (no schema).
    index: String,
}

impl Tables {
    fn new(table: &str) -> Result<Self, BusError> {
        // 63-byte identifiers, minus the longest suffix (`_pending_order`).
        validate_table("outbox table", table, 48)?;
        let index = table.replace('.', "_");
        Ok(Tables {
            rows: table.to_string(),
            failed: format!("{table}_failed"),
            lease: format!("{table}_lease"),
            channel: index.clone(),
            index,
        })
    }
}

fn headers_from(names: Vec<String>, values: Vec<String>) -> Headers {
    let mut h = Headers::new();
    for (n, v) in names.into_iter().zip(values) {
        h.append(n, v);
    }
    h
}

impl Outbox {
    /// An outbox in table [`DEFAULT_TABLE`] (and `<table>_failed`,
    /// `<table>_lease`).
    pub fn new(pool: PgPool) -> Self {
        Self::build(
            pool,
            Tables::new(DEFAULT_TABLE).expect("the default table name is valid"),
        )
    }

    /// An outbox in `table`: letters, digits and `_`, optionally
    /// `schema.table`, at most 48 bytes (the derived names add suffixes).
    pub fn with_table(pool: PgPool, table: &str) -> Result<Self, BusError> {
        Ok(Self::build(pool, Tables::new(table)?))
    }

    fn build(pool: PgPool, tables: Tables) -> Self {
        Outbox {
            pool,
            tables,
            max_payload: DEFAULT_MAX_PAYLOAD,
            notify: false,
            wake: Arc::new(watch::channel(0).0),
        }
    }

    /// The largest payload plus headers [`enqueue`](Self::enqueue) accepts
    /// (default [`DEFAULT_MAX_PAYLOAD`]): set it to the bus's limit, so that
    /// an event too large to publish fails in the caller's transaction
    /// instead of in the relay.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Whether [`enqueue`](Self::enqueue) also sends a PostgreSQL
    /// notification (delivered at commit, never for a rollback) that wakes
    /// relays in other processes listening with
    /// [`OutboxRelayBuilder::listen`]. Off by default: relays in the same
    /// process are woken by [`commit`](Self::commit), and a notification
    /// costs the committing transaction a global lock on the notification
    /// queue.
    pub fn notify(mut self, on: bool) -> Self {
        self.notify = on;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The table of pending rows.
    pub fn table(&self) -> &str {
        &self.tables.rows
    }

    /// Wakes the relays built from this `Outbox` or its clones (after
    /// committing an enqueue yourself).
    pub fn wake(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn wake_receiver(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    pub(crate) fn tables(&self) -> &Tables {
        &self.tables
    }
}
