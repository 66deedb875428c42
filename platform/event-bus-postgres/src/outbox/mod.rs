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

mod relay;

pub use relay::{OutboxRelay, OutboxRelayBuilder, RelayHandle, RelayReport};

use crate::error::{db_error, validate_table};
use event_bus::subject::validate_bus_subject;
use event_bus::{BusError, Envelope, ErrorKind, Headers, MessageId};
use sqlx::postgres::PgPool;
use sqlx::{Postgres, Transaction};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;

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

    /// Enqueues `envelope` in the caller's transaction `tx`, ordered under
    /// its subject; returns its message id (the envelope's, or a new
    /// UUIDv7). Nothing is published unless `tx` commits.
    ///
    /// An invalid or reserved subject, an invalid header or id, or a payload
    /// plus headers above [`max_payload`](Self::max_payload) is an error
    /// naming it, returned before anything is written (the transaction is
    /// still usable).
    pub async fn enqueue(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        envelope: Envelope,
    ) -> Result<MessageId, BusError> {
        let key = envelope.subject.clone();
        self.enqueue_with_key(tx, &key, envelope).await
    }

    /// [`enqueue`](Self::enqueue) with another ordering key than the subject
    /// (e.g. an aggregate id): rows of one key are published in order, rows
    /// of different keys independently. At most [`MAX_KEY_LEN`] bytes.
    pub async fn enqueue_with_key(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        order_key: &str,
        envelope: Envelope,
    ) -> Result<MessageId, BusError> {
        let span = tracing::info_span!(
            target: "event_bus::create",
            "create",
            otel.name = %format_args!("create {}", envelope.subject),
            otel.kind = "producer",
            messaging.system = "outbox",
            messaging.operation.name = "create",
            messaging.operation.type = "create",
            messaging.destination.name = envelope.subject.as_str(),
            messaging.message.body.size = envelope.payload.len() as i64,
            messaging.message.id = tracing::field::Empty,
        );
        // The row keeps the context it was written in (feature `otel`): the
        // published message continues this trace, the relay's send span
        // links to it.
        #[cfg(feature = "otel")]
        let envelope = {
            let mut envelope = envelope;
            if !span.is_disabled()
                && envelope
                    .headers
                    .get(event_bus::trace::TRACEPARENT)
                    .is_none()
            {
                span.in_scope(|| event_bus::trace::inject_current(&mut envelope.headers));
            }
            envelope
        };
        let id = self.check(order_key, &envelope)?;
        span.record("messaging.message.id", id.as_str());
        self.insert(tx, order_key, &id, &envelope)
            .instrument(span)
            .await?;
        Ok(MessageId::new(id))
    }

    async fn insert(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        order_key: &str,
        id: &str,
        envelope: &Envelope,
    ) -> Result<(), BusError> {
        let (names, values): (Vec<String>, Vec<String>) = envelope
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .unzip();
        let rows = &self.tables.rows;
        let insert = format!(
            "INSERT INTO {rows} (message_id, subject, order_key, header_names, header_values, payload) VALUES ($1, $2, $3, $4, $5, $6)"
        );
        let sql = if self.notify {
            format!("WITH row AS ({insert} RETURNING 1) SELECT pg_notify($7, '') FROM row")
        } else {
            insert
        };
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(&envelope.subject)
            .bind(order_key)
            .bind(names)
            .bind(values)
            .bind(envelope.payload.as_ref())
            .bind(&self.tables.channel)
            .execute(&mut **tx)
            .await
            .map_err(|e| {
                db_error(
                    &format!("outbox: enqueueing an event on {:?}", envelope.subject),
                    e,
                )
            })?;
        Ok(())
    }

    /// Enqueues `value` as JSON on `subject` (see [`enqueue`](Self::enqueue)).
    pub async fn enqueue_json<T: serde::Serialize + ?Sized>(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        subject: &str,
        value: &T,
    ) -> Result<MessageId, BusError> {
        let payload = serde_json::to_vec(value).map_err(|e| {
            BusError::with_source(
                ErrorKind::Codec,
                format!("outbox: encoding the event for {subject:?} as JSON"),
                e,
            )
        })?;
        self.enqueue(tx, Envelope::new(subject, payload)).await
    }

    /// The checks of [`enqueue`](Self::enqueue), before any SQL; returns the id.
    fn check(&self, order_key: &str, envelope: &Envelope) -> Result<String, BusError> {
        validate_bus_subject(&envelope.subject)?;
        envelope.validate()?;
        // PostgreSQL text cannot hold NUL: refuse it here, naming the field,
        // rather than fail the caller's transaction in the insert.
        let nul = |field: &str, value: &str| {
            BusError::new(
                ErrorKind::InvalidHeader,
                format!(
                    "outbox: the {field} {:?} contains a NUL character, which PostgreSQL text cannot store",
                    &value[..value.floor_char_boundary(64)]
                ),
            )
        };
        if envelope.subject.contains('\0') {
            return Err(nul("subject", &envelope.subject));
        }
        if order_key.contains('\0') {
            return Err(nul("ordering key", order_key));
        }
        for (name, value) in envelope.headers.iter() {
            if value.contains('\0') {
                return Err(nul(&format!("value of header {name:?}"), value));
            }
        }
        if order_key.is_empty() || order_key.len() > MAX_KEY_LEN {
            return Err(BusError::config(
                "outbox ordering key",
                &order_key[..order_key.floor_char_boundary(64)],
                format!("must be 1 to {MAX_KEY_LEN} bytes"),
            ));
        }
        let size = envelope.payload.len() + envelope.headers.wire_len();
        if size > self.max_payload {
            return Err(BusError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "outbox: the event for {:?} is {size} bytes with its headers, above the limit of {} bytes (Outbox::max_payload)",
                    envelope.subject, self.max_payload
                ),
            ));
        }
        Ok(match envelope.id.as_ref().and_then(MessageId::given) {
            Some(given) => given.to_string(),
            None => uuid::Uuid::now_v7().to_string(),
        })
    }

    /// Commits `tx` and wakes at once the relays built from this `Outbox`
    /// or its clones (use it in place of `tx.commit()` after an enqueue;
    /// otherwise a relay finds the rows at its next poll or notification).
    pub async fn commit(&self, tx: Transaction<'_, Postgres>) -> Result<(), BusError> {
        tx.commit()
            .await
            .map_err(|e| db_error("outbox: committing", e))?;
        self.wake();
        Ok(())
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
        type Row = (
            i32,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<f64>,
            Option<f64>,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT pid, datname::text, usename::text, state,
                    EXTRACT(EPOCH FROM now() - xact_start)::float8,
                    EXTRACT(EPOCH FROM now() - query_start)::float8
             FROM pg_stat_activity
             WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
             ORDER BY age(backend_xid) DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error("outbox: finding the session that holds delivery back", e))?;
        Ok(row.map(
            |(pid, database, user, state, xact, query)| BlockingSession {
                pid,
                database,
                user,
                state,
                transaction_age: secs(xact),
                query_age: secs(query),
            },
        ))
    }

    /// The events the bus refused for good, oldest first (at most `limit`).
    pub async fn failed(&self, limit: u32) -> Result<Vec<FailedEvent>, BusError> {
        type Row = (
            i64,
            String,
            String,
            String,
            Vec<String>,
            Vec<String>,
            Vec<u8>,
            i32,
            String,
            f64,
            f64,
        );
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT seq, message_id, subject, order_key, header_names, header_values, payload,
                    attempts, error,
                    EXTRACT(EPOCH FROM now() - enqueued_at)::float8,
                    EXTRACT(EPOCH FROM now() - failed_at)::float8
             FROM {} ORDER BY seq LIMIT $1",
            self.tables.failed
        )))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error("outbox: reading failed rows", e))?;
        Ok(rows
            .into_iter()
            .map(
                |(
                    seq,
                    message_id,
                    subject,
                    order_key,
                    names,
                    values,
                    payload,
                    attempts,
                    error,
                    enq,
                    fail,
                )| {
                    FailedEvent {
                        seq,
                        message_id,
                        subject,
                        order_key,
                        headers: headers_from(names, values),
                        payload,
                        attempts,
                        error,
                        enqueued_ago: secs(Some(enq)).unwrap_or_default(),
                        failed_ago: secs(Some(fail)).unwrap_or_default(),
                    }
                },
            )
            .collect())
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

/// The outbox as a [`StatusCheck`](event_bus::status::StatusCheck) for the
/// monitoring endpoints: ready while the oldest pending row is younger than
/// `max_age` and the status can be read; the details are the
/// [`OutboxStatus`]. Rows in the failure table, and the rows of their keys
/// that wait for them ([`OutboxStatus::blocked`]), do not make it unready
/// (taking the instance out of a load balancer fixes none of them): they
/// are in its summary and details, and in the `event_bus.outbox.failed_rows`
/// gauge to alert on. Built by [`Outbox::status_check`].
#[derive(Clone, Debug)]
pub struct OutboxCheck {
    outbox: Outbox,
    max_age: Duration,
}

impl Outbox {
    /// This outbox as a status check: not ready once a row has waited
    /// longer than `max_age` (the relay down, the bus unavailable, a long
    /// transaction holding delivery back); rows in the failure table and
    /// the rows blocked behind them are reported, not counted against
    /// readiness (see [`OutboxCheck`]).
    pub fn status_check(&self, max_age: Duration) -> OutboxCheck {
        OutboxCheck {
            outbox: self.clone(),
            max_age,
        }
    }
}

#[async_trait::async_trait]
impl event_bus::status::StatusCheck for OutboxCheck {
    fn name(&self) -> &str {
        "outbox"
    }

    async fn check(&self) -> event_bus::status::CheckReport {
        use event_bus::status::CheckReport;
        use serde_json::json;
        match self.outbox.status().await {
            Err(e) => CheckReport::new(
                false,
                format!("outbox {}: status unavailable: {e}", self.outbox.table()),
                json!({ "table": self.outbox.table(), "error": e.to_string() }),
            ),
            Ok(s) => {
                let age = s.oldest_pending_age.unwrap_or_default();
                let ready = age <= self.max_age;
                let mut summary = format!(
                    "outbox {}: {} pending (oldest {:.1} s, limit {:.1} s), {} failed",
                    self.outbox.table(),
                    s.pending,
                    age.as_secs_f64(),
                    self.max_age.as_secs_f64(),
                    s.failed
                );
                if s.blocked > 0 {
                    summary.push_str(&format!(
                        " ({} pending rows of their keys wait for them to be retried or discarded)",
                        s.blocked
                    ));
                }
                if let Some(b) = &s.held_by {
                    summary.push_str(&format!(
                        "; {} rows held back by session {} ({})",
                        s.held_back,
                        b.pid,
                        b.state.as_deref().unwrap_or("?")
                    ));
                }
                CheckReport::new(
                    ready,
                    summary,
                    json!({
                        "table": self.outbox.table(),
                        "pending": s.pending,
                        "oldest_pending_seconds": s.oldest_pending_age.map(|d| d.as_secs_f64()),
                        "held_back": s.held_back,
                        "failed": s.failed,
                        "blocked": s.blocked,
                        "held_by": s.held_by.as_ref().map(|b| json!({
                            "pid": b.pid,
                            "database": b.database,
                            "user": b.user,
                            "state": b.state,
                            "transaction_seconds": b.transaction_age.map(|d| d.as_secs_f64()),
                            "query_seconds": b.query_age.map(|d| d.as_secs_f64()),
                        })),
                        "prepared_transaction": s.prepared_transaction,
                        "relay": s.relay,
                        "max_age_seconds": self.max_age.as_secs_f64(),
                    }),
                )
            }
        }
    }
}
