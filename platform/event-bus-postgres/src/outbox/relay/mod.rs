//! [`OutboxRelay`]: reads committed outbox rows and publishes them.
//!
//! One plain loop per relay: hold the lease, read a batch of visible rows in
//! order, publish it (pipelined, or in per-key chains with
//! [`strict_order`](OutboxRelayBuilder::strict_order)), remove (or mark) what the bus
//! acknowledged, count what it refused, wait when there is nothing to do.
//! Several relays (instances of a service) may run: the one holding the
//! lease works, the others stand by and take over when its lease expires.

mod sql;
mod worker;

use super::Outbox;
use event_bus::{BusError, EventBus};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use worker::{listen, Worker};

/// What a relay has done so far ([`RelayHandle::report`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayReport {
    /// Rows the bus acknowledged. Their removal (or marking) runs while the
    /// next batch is published: [`RelayHandle::shutdown`] waits for it, and
    /// [`Outbox::status`] counts a row as pending until it is done.
    pub published: u64,
    /// Of those, how many the bus reported as duplicates of an id it had
    /// already stored (republished after a crash between publish and
    /// removal).
    pub duplicates: u64,
    /// Rows moved to the failure table after the bus refused them
    /// `max_attempts` times.
    pub failed: u64,
    /// Refused publishes counted against a row: errors whose kind
    /// [is permanent](event_bus::ErrorKind::is_permanent) (a schema
    /// violation, an invalid subject or header, too large, no permission).
    pub refusals: u64,
    /// Publishes that failed without counting against the row (a
    /// [transient](event_bus::ErrorKind::is_transient) error: bus
    /// unavailable, timeout, no stream yet): retried with backoff.
    pub bus_errors: u64,
    /// Rows acknowledged after an earlier row of the same key failed in the
    /// same batch (published ahead of it: see the module docs).
    pub out_of_order: u64,
    /// Reads of the table while holding the lease.
    pub reads: u64,
    /// Times this relay acquired the lease.
    pub leases_acquired: u64,
    /// Database errors (the relay waits and tries again).
    pub db_errors: u64,
}

/// Builds an [`OutboxRelay`]; see the setters for defaults.
#[derive(Clone)]
pub struct OutboxRelayBuilder {
    outbox: Outbox,
    bus: Arc<dyn EventBus>,
    config: Config,
}

#[derive(Clone, Debug)]
pub(super) struct Config {
    batch_size: usize,
    poll_interval: Duration,
    lease: Duration,
    duplicate_window: Duration,
    publish_timeout: Duration,
    max_attempts: u32,
    backoff_min: Duration,
    backoff_max: Duration,
    listen: bool,
    keep_published: Option<Duration>,
    cleanup_every: Duration,
    strict_order: bool,
}

/// The outbox relay: publishes committed rows through an `EventBus`.
pub struct OutboxRelay {
    outbox: Outbox,
    bus: Arc<dyn EventBus>,
    config: Config,
    holder: String,
}

impl std::fmt::Debug for OutboxRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay")
            .field("table", &self.outbox.table())
            .field("bus", &self.bus.backend_name())
            .field("holder", &self.holder)
            .field("config", &self.config)
            .finish()
    }
}

impl std::fmt::Debug for OutboxRelayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelayBuilder")
            .field("table", &self.outbox.table())
            .field("bus", &self.bus.backend_name())
            .field("config", &self.config)
            .finish()
    }
}

impl OutboxRelay {
    /// A builder for a relay of `outbox` publishing through `bus`.
    pub fn builder(outbox: Outbox, bus: Arc<dyn EventBus>) -> OutboxRelayBuilder {
        OutboxRelayBuilder {
            outbox,
            bus,
            config: Config {
                batch_size: 500,
                poll_interval: Duration::from_millis(100),
                lease: Duration::from_secs(15),
                duplicate_window: Duration::from_secs(120),
                publish_timeout: Duration::from_secs(5),
                max_attempts: 5,
                backoff_min: Duration::from_millis(100),
                backoff_max: Duration::from_secs(30),
                listen: false,
                keep_published: None,
                cleanup_every: Duration::from_secs(60),
                strict_order: false,
            },
        }
    }

    /// This relay's name in the lease table.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Starts the relay on the current Tokio runtime. It runs as long as
    /// the handle is kept: [`RelayHandle::shutdown`] stops it and returns
    /// its report; dropping the handle stops it too (in the background:
    /// the current batch finishes, the lease is released so that another
    /// relay, e.g. a restarted service's, takes over at once).
    pub fn spawn(self) -> RelayHandle {
        let report = Arc::new(Mutex::new(RelayReport::default()));
        let leader = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop_tx, stop_rx) = watch::channel(false);
        let listener = if self.config.listen {
            Some(tokio::spawn(listen(
                self.outbox.clone(),
                self.config.poll_interval,
            )))
        } else {
            None
        };
        let holder = self.holder.clone();
        let task = tokio::spawn(
            Worker::new(
                self.outbox,
                self.bus,
                self.config,
                self.holder,
                report.clone(),
                leader.clone(),
                stop_rx,
            )
            .run(),
        );
        RelayHandle {
            report,
            leader,
            stop: stop_tx,
            task: Some(task),
            listener,
            holder,
            stop_on_drop: true,
        }
    }
}

impl OutboxRelayBuilder {
    /// Rows read and published per batch (default 500, 1 to 10,000).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.config.batch_size = n;
        self
    }

    /// How often an idle relay looks for rows without a wake-up (default
    /// 100 ms): the latency for rows committed without
    /// [`Outbox::commit`] in this process or a notification.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.config.poll_interval = every;
        self
    }

    /// How long the lease lasts without renewal (default 15 s, renewed every
    /// 5 s): a relay
    /// that dies is replaced after at most this long. Must be shorter than
    /// the [`duplicate_window`](Self::duplicate_window).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// The bus's de-duplication window (JetStream's `duplicate_window` of the
    /// streams the events go to; default 2 minutes, JetStream's default).
    /// A relay that dies between publish and removal is replaced within
    /// the lease, so its republished rows are dropped as duplicates.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.config.duplicate_window = window;
        self
    }

    /// How long a batch's publish may take before the relay gives up on it
    /// and tries again (default 5 s; at most a third of the lease).
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.config.publish_timeout = timeout;
        self
    }

    /// How many refusals (errors whose kind
    /// [is permanent](event_bus::ErrorKind::is_permanent): a schema
    /// violation, an invalid subject, too large, no permission) a row gets
    /// before it moves to the failure table (default 5). The later rows of
    /// its key then wait for it there, pending, until it is
    /// [retried](super::Outbox::retry_failed) or
    /// [discarded](super::Outbox::discard_failed).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.config.max_attempts = n;
        self
    }

    /// The backoff after a failed publish (per key for refusals, for the
    /// whole relay when the bus is unavailable), doubling from `min` to
    /// `max` (default 100 ms to 30 s).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.config.backoff_min = min;
        self.config.backoff_max = max;
        self
    }

    /// Also wake on PostgreSQL notifications from [`Outbox::notify`]
    /// producers in other processes (default off). A notification lost
    /// while the listening connection reconnects costs latency, never an
    /// event: polling goes on.
    pub fn listen(mut self, on: bool) -> Self {
        self.config.listen = on;
        self
    }

    /// Keep published rows (marked with the time and the stream position)
    /// for `retention` instead of deleting them at once; the relay removes
    /// them once older (default: delete at once).
    pub fn keep_published(mut self, retention: Duration) -> Self {
        self.config.keep_published = Some(retention);
        self
    }

    /// Publish at most one row per ordering key at a time (default off).
    ///
    /// By default a batch is pipelined: its rows follow each other on the
    /// wire, a key's rows in order, before the first is acknowledged; a row
    /// refused before it is sent (a schema check, too large) holds back its
    /// key's later rows, wherever it stands in the batch. If the connection to
    /// the broker breaks in the middle, a row sent before the break can be
    /// lost while a later row of its key, sent after the reconnect, is
    /// stored; the lost row is published again afterwards, out of order.
    /// With `strict_order` a key's next row is sent only once the previous
    /// one is acknowledged (the keys of a batch concurrently), so per-key
    /// order holds through any failure; throughput then depends on how many
    /// distinct keys are pending (one key: one event per round trip to the
    /// broker).
    pub fn strict_order(mut self, on: bool) -> Self {
        self.config.strict_order = on;
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<OutboxRelay, BusError> {
        let c = &self.config;
        let bad = |field: &str, value: String, why: &str| Err(BusError::config(field, &value, why));
        if !(1..=10_000).contains(&c.batch_size) {
            return bad(
                "relay batch_size",
                c.batch_size.to_string(),
                "must be 1 to 10,000",
            );
        }
        if c.poll_interval.is_zero() || c.poll_interval > Duration::from_secs(3600) {
            return bad(
                "relay poll_interval",
                format!("{:?}", c.poll_interval),
                "must be above zero and at most an hour",
            );
        }
        if c.lease < Duration::from_millis(300) || c.lease > Duration::from_secs(3600) {
            return bad(
                "relay lease",
                format!("{:?}", c.lease),
                "must be 300 ms to an hour",
            );
        }
        if c.lease + c.lease / 4 + c.publish_timeout >= c.duplicate_window {
            return bad(
                "relay lease",
                format!("{:?}", c.lease),
                &format!(
                    "with the standby's polling (a quarter of the lease) and the publish timeout, must be shorter than the bus's duplicate window ({:?}): a relay that dies between publish and removal is replaced within that time, and its successor's republished rows must still be recognised as duplicates",
                    c.duplicate_window
                ),
            );
        }
        if c.publish_timeout.is_zero() || c.publish_timeout * 3 > c.lease {
            return bad(
                "relay publish_timeout",
                format!("{:?}", c.publish_timeout),
                &format!(
                    "must be above zero and at most a third of the lease ({:?})",
                    c.lease
                ),
            );
        }
        if c.max_attempts == 0 || c.max_attempts > 1_000_000 {
            return bad(
                "relay max_attempts",
                c.max_attempts.to_string(),
                "must be 1 to 1,000,000",
            );
        }
        if c.backoff_min.is_zero()
            || c.backoff_min > c.backoff_max
            || c.backoff_max > Duration::from_secs(3600)
        {
            return bad(
                "relay backoff",
                format!("{:?}..{:?}", c.backoff_min, c.backoff_max),
                "needs 0 < min <= max <= 1 hour",
            );
        }
        if let Some(keep) = c.keep_published {
            if keep > Duration::from_secs(366 * 86_400) {
                return bad(
                    "relay keep_published",
                    format!("{keep:?}"),
                    "must be at most a year",
                );
            }
        }
        Ok(OutboxRelay {
            holder: format!("relay-{}-{}", std::process::id(), uuid::Uuid::now_v7()),
            outbox: self.outbox,
            bus: self.bus,
            config: self.config,
        })
    }
}

/// A running relay: its report, graceful shutdown. Dropping it stops the
/// relay as [`shutdown`](Self::shutdown) does, without waiting: the
/// current batch finishes and the lease is released (within the lease's
/// length) on the relay's own task.
#[derive(Debug)]
#[must_use = "dropping the handle stops the relay; keep it as long as the relay should run"]
pub struct RelayHandle {
    report: Arc<Mutex<RelayReport>>,
    leader: Arc<std::sync::atomic::AtomicBool>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    listener: Option<tokio::task::JoinHandle<()>>,
    holder: String,
    /// False after [`abort`](Self::abort).
    stop_on_drop: bool,
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        // The worker sees the stop, finishes its batch, releases the lease
        // and ends, on its own task (nothing to await here).
        if self.stop_on_drop {
            let _ = self.stop.send(true);
        }
        if let Some(l) = self.listener.take() {
            l.abort();
        }
    }
}

impl RelayHandle {
    /// What the relay has done so far.
    pub fn report(&self) -> RelayReport {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether this relay holds the lease (is the one publishing).
    pub fn is_leader(&self) -> bool {
        self.leader.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The relay's name in the lease table.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Lets the current batch finish (its publish and removal), releases
    /// the lease so that a standby takes over at once, and returns the
    /// report.
    pub async fn shutdown(mut self) -> RelayReport {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        if let Some(l) = self.listener.take() {
            l.abort();
        }
        self.report()
    }

    /// Stops the relay where it is, as a crash would (for tests): the
    /// lease is not released and the current batch may be published but
    /// not removed.
    pub fn abort(mut self) {
        self.stop_on_drop = false;
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(l) = self.listener.take() {
            l.abort();
        }
    }
}
