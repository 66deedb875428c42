//! Metrics through the [`metrics`] facade: nothing is recorded (and each
//! instrumented operation costs a branch) until the application installs a
//! recorder, e.g. `metrics-exporter-prometheus`, whose output the
//! `event-bus-http` crate serves on `/metrics`.
//!
//! Install the recorder **before** creating buses, consumers, runners and
//! relays: each registers its handles when it is created.
//!
//! Names follow OpenTelemetry's messaging conventions where they exist;
//! the bus's own are under `event_bus.` (Prometheus shows dots as
//! underscores). Labels are bounded: backend, consumer (durable name),
//! runner, outbox table, answer kind, error kind, tenant; never a subject
//! or a message id.
//!
//! Every series of a bus, consumer or runner on a bus confined to a tenant
//! (`NatsBus::for_tenant`, `nats.tenant`) carries `event_bus.tenant` (the
//! tenant's name); without a tenant the label is absent (Prometheus reads an
//! absent label as the empty value), so that two tenants running the same
//! consumer or runner name have series of their own.
//!
//! Counters are only ever incremented: a runner adds what it did since its
//! last flush, so a runner restarted in the same process, or several
//! instances of one runner name, add up.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `messaging.client.sent.messages` | counter | `messaging.system`, `error.type` (failures only), `event_bus.tenant` (NATS, when set); in memory, `publish` counts failures only (its 1:1 path stays as fast as a raw channel), `publish_envelope` and `publish_batch` count both |
//! | `messaging.client.operation.duration` | histogram, seconds | `messaging.system`, `messaging.operation.name` (`publish`), `error.type` (failures only) |
//! | `messaging.client.consumed.messages` | counter | `messaging.system`, `messaging.consumer.group.name`, `event_bus.tenant` (when set; so every per-consumer and runner series below) |
//! | `event_bus.consumer.redeliveries` | counter | `messaging.system`, `messaging.consumer.group.name` |
//! | `event_bus.consumer.answers` | counter | `messaging.system`, `messaging.consumer.group.name`, `event_bus.answer` (`ack`, `nack`, `term`, `in_progress`, `dead_letter`), `error.type` (failures only) |
//! | `event_bus.consumer.dead_letters` | counter | `messaging.system`, `messaging.consumer.group.name` |
//! | `event_bus.memory.dropped` | counter | (messages an in-memory subscription dropped by its overflow policy) |
//! | `messaging.process.duration` | histogram, seconds | `messaging.system`, `messaging.consumer.group.name` (one handler attempt in 16 timed: quantiles, not counts) |
//! | `event_bus.runner.events` | counter | `event_bus.runner`, `event_bus.tenant` (when set), `event_bus.result` (`processed`, `duplicate`, `retry`, `dead_lettered`, `dropped`, `handed_back`, `inbox_retry`) |
//! | `event_bus.outbox.events` | counter | `event_bus.outbox.table`, `event_bus.result` (`published`, `duplicate`, `refused`, `failed`, `bus_error`) |
//! | `event_bus.outbox.pending`, `event_bus.outbox.failed_rows` | gauge | `event_bus.outbox.table` (set by each `Outbox::status`) |
//! | `event_bus.outbox.oldest_pending_age` | gauge, seconds | `event_bus.outbox.table` |
//! | `event_bus.consumer.pending`, `.ack_pending`, `.redelivered` | gauge | `messaging.system`, `messaging.consumer.group.name` (sampled by a `LagMonitor` each interval) |
//! | `event_bus.consumer.lag_status` | gauge, 1 for the current status | `messaging.system`, `messaging.consumer.group.name`, `event_bus.lag_status` (`OK`, `WARN`, `STALL`, `STOP`, `REWIND`) |

use metrics::{Counter, Histogram};

/// `messaging.client.sent.messages`.
pub const SENT_MESSAGES: &str = "messaging.client.sent.messages";
/// `messaging.client.operation.duration` (seconds).
pub const OPERATION_DURATION: &str = "messaging.client.operation.duration";
/// `messaging.client.consumed.messages`.
pub const CONSUMED_MESSAGES: &str = "messaging.client.consumed.messages";
/// `event_bus.consumer.redeliveries`.
pub const REDELIVERIES: &str = "event_bus.consumer.redeliveries";
/// `event_bus.consumer.answers`.
pub const ANSWERS: &str = "event_bus.consumer.answers";
/// `event_bus.consumer.dead_letters`.
pub const DEAD_LETTERS: &str = "event_bus.consumer.dead_letters";
/// `event_bus.memory.dropped`.
pub const MEMORY_DROPPED: &str = "event_bus.memory.dropped";
/// `event_bus.runner.events`.
pub const RUNNER_EVENTS: &str = "event_bus.runner.events";
/// Histogram, seconds: how long a runner's handler took per attempt,
/// measured on one attempt in [`PROCESS_SAMPLE`] (its quantiles are
/// representative; its count is not: count with [`RUNNER_EVENTS`]).
pub const PROCESS_DURATION: &str = "messaging.process.duration";
/// One handler attempt in this many is timed for [`PROCESS_DURATION`]: two
/// clock reads per event would cost several percent of an in-memory
/// runner's throughput, recorder or not.
pub const PROCESS_SAMPLE: u32 = 16;
/// `event_bus.outbox.events`.
pub const OUTBOX_EVENTS: &str = "event_bus.outbox.events";
/// `event_bus.outbox.pending`.
pub const OUTBOX_PENDING: &str = "event_bus.outbox.pending";
/// `event_bus.outbox.failed_rows`.
pub const OUTBOX_FAILED_ROWS: &str = "event_bus.outbox.failed_rows";
/// `event_bus.outbox.oldest_pending_age` (seconds).
pub const OUTBOX_OLDEST_AGE: &str = "event_bus.outbox.oldest_pending_age";
/// Gauge: a durable consumer's messages not delivered yet (sampled by a
/// [`LagMonitor`](crate::status::LagMonitor)).
pub const CONSUMER_PENDING: &str = "event_bus.consumer.pending";
/// Gauge: a durable consumer's messages delivered and not answered yet (sampled).
pub const CONSUMER_ACK_PENDING: &str = "event_bus.consumer.ack_pending";
/// Gauge: a durable consumer's deliveries that were redeliveries (sampled).
pub const CONSUMER_REDELIVERED: &str = "event_bus.consumer.redelivered";
/// Gauge: 1 for a durable consumer's lag status (label `event_bus.lag_status`:
/// `OK`, `WARN`, `STALL`, `STOP`, `REWIND`), 0 for the others (sampled).
pub const CONSUMER_LAG_STATUS: &str = "event_bus.consumer.lag_status";

/// Histogram buckets (seconds) for [`OPERATION_DURATION`]: 100 µs to 10 s.
/// Give them to the exporter (`set_buckets_for_metric`), or histograms may
/// be exported as summaries, which cannot be aggregated across instances.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Whether this handler attempt is one of the timed ones (a per-thread
/// count: no shared state per event).
#[inline]
pub(crate) fn sample_process() -> bool {
    thread_local!(static TICK: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
    TICK.with(|t| {
        let n = t.get().wrapping_add(1);
        t.set(n);
        n % PROCESS_SAMPLE == 0
    })
}

/// The label `event_bus.tenant`, when the bus has a tenant.
pub(crate) const TENANT: &str = "event_bus.tenant";

/// `labels` with [`TENANT`] added when there is a tenant (absent otherwise).
pub(crate) fn with_tenant(
    mut labels: Vec<(&'static str, String)>,
    tenant: Option<&str>,
) -> Vec<(&'static str, String)> {
    if let Some(t) = tenant {
        labels.push((TENANT, t.to_string()));
    }
    labels
}

/// Registers a description and unit for every metric above (optional; for
/// exporters that show them).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(SENT_MESSAGES, "Messages published (by outcome).");
    describe_histogram!(OPERATION_DURATION, Unit::Seconds, "Duration of a publish.");
    describe_counter!(CONSUMED_MESSAGES, "Deliveries to durable consumers.");
    describe_counter!(
        REDELIVERIES,
        "Deliveries that were not the message's first."
    );
    describe_counter!(
        ANSWERS,
        "Answers to deliveries (ack, nack, term, in progress, dead letter)."
    );
    describe_counter!(DEAD_LETTERS, "Messages sent to the dead letters.");
    describe_counter!(
        MEMORY_DROPPED,
        "Messages an in-memory subscription dropped (overflow policy)."
    );
    describe_counter!(RUNNER_EVENTS, "Events the runner finished, by result.");
    describe_histogram!(
        PROCESS_DURATION,
        Unit::Seconds,
        "Duration of a handler attempt (one in PROCESS_SAMPLE timed)."
    );
    describe_counter!(
        OUTBOX_EVENTS,
        "Outbox rows by what the relay did with them."
    );
    describe_gauge!(OUTBOX_PENDING, "Outbox rows not published yet.");
    describe_gauge!(OUTBOX_FAILED_ROWS, "Outbox rows in the failure table.");
    describe_gauge!(
        OUTBOX_OLDEST_AGE,
        Unit::Seconds,
        "Age of the oldest pending outbox row."
    );
    describe_gauge!(
        CONSUMER_PENDING,
        "Messages a durable consumer has not been delivered yet."
    );
    describe_gauge!(
        CONSUMER_ACK_PENDING,
        "Deliveries a durable consumer has not answered yet."
    );
    describe_gauge!(
        CONSUMER_REDELIVERED,
        "A durable consumer's redelivered messages."
    );
    describe_gauge!(
        CONSUMER_LAG_STATUS,
        "1 for a durable consumer's lag status (Burrow's rules)."
    );
}

/// A bus's publish handles.
pub(crate) struct PublishMetrics {
    pub(crate) sent: Counter,
    #[cfg_attr(not(feature = "nats"), allow(dead_code))] // timed on NATS only
    pub(crate) duration: Histogram,
    system: &'static str,
    tenant: Option<String>,
}

impl PublishMetrics {
    pub(crate) fn new(system: &'static str, tenant: Option<&str>) -> Self {
        let labels = with_tenant(vec![("messaging.system", system.to_string())], tenant);
        let mut timed = labels.clone();
        timed.push(("messaging.operation.name", "publish".to_string()));
        PublishMetrics {
            sent: metrics::counter!(SENT_MESSAGES, &labels),
            duration: metrics::histogram!(OPERATION_DURATION, &timed),
            system,
            tenant: tenant.map(str::to_string),
        }
    }

    /// Counts a failed publish under its error kind.
    #[cold]
    #[inline(never)]
    pub(crate) fn failed(&self, kind: crate::error::ErrorKind, seconds: Option<f64>) {
        let mut labels = with_tenant(
            vec![
                ("messaging.system", self.system.to_string()),
                ("error.type", kind.as_str().to_string()),
            ],
            self.tenant.as_deref(),
        );
        metrics::counter!(SENT_MESSAGES, &labels).increment(1);
        if let Some(s) = seconds {
            labels.push(("messaging.operation.name", "publish".to_string()));
            metrics::histogram!(OPERATION_DURATION, &labels).record(s);
        }
    }
}
