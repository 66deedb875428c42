//! Status checks: what a service reports on its monitoring endpoints
//! (`/readyz`, `/status`), gathered here without any networking; the
//! `event-bus-http` crate serves them.
//!
//! A [`StatusCheck`] answers with a [`CheckReport`]: whether the service is
//! ready as far as this part is concerned, a one-line summary, and details
//! as JSON. Checks for the bus ([`BusCheck`]), consumer lag
//! ([`LagMonitor`]) and anything else
//! ([`from_fn`]) live here; `event_bus_postgres` adds the outbox.
//!
//! ```
//! use event_bus::status::{BusCheck, StatusCheck};
//! use event_bus::{EventBus, InMemoryBus};
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
//! let report = BusCheck::new(bus).check().await;
//! assert!(report.ready, "{}", report.summary);
//! # }
//! ```

use crate::bus::{EventBus, HealthStatus};
use crate::consumer::lag::{LagGauges, LagSample, LagStatus, LagWindow};
use crate::consumer::ConsumerState;
use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::json;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one check found.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct CheckReport {
    /// Whether the service is ready as far as this check is concerned.
    pub ready: bool,
    /// One line for people.
    pub summary: String,
    /// Everything else, as JSON (shown on `/status`).
    pub details: serde_json::Value,
}

impl CheckReport {
    /// A report.
    pub fn new(ready: bool, summary: impl Into<String>, details: serde_json::Value) -> Self {
        CheckReport {
            ready,
            summary: summary.into(),
            details,
        }
    }
}

/// A part of the service that reports its status.
#[async_trait]
pub trait StatusCheck: Send + Sync {
    /// A short, stable name (`bus`, `consumers`, `outbox`).
    fn name(&self) -> &str;

    /// Checks now. Should answer within a few seconds (the endpoint bounds
    /// it anyway).
    async fn check(&self) -> CheckReport;
}

/// The bus's health: ready unless [`Unhealthy`](HealthStatus::Unhealthy)
/// (a bus reconnecting briefly is degraded, and still ready).
pub struct BusCheck {
    bus: Arc<dyn EventBus>,
}

impl BusCheck {
    /// A check of `bus`.
    pub fn new(bus: Arc<dyn EventBus>) -> Self {
        BusCheck { bus }
    }
}

#[async_trait]
impl StatusCheck for BusCheck {
    fn name(&self) -> &str {
        "bus"
    }

    async fn check(&self) -> CheckReport {
        let h = self.bus.health().await;
        let status = match h.status {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
        };
        CheckReport::new(
            h.status != HealthStatus::Unhealthy,
            format!("{} {status}: {}", h.backend, h.detail),
            json!({ "backend": h.backend, "status": status, "detail": h.detail, "tenant": self.bus.tenant() }),
        )
    }
}

#[async_trait]
impl StatusCheck for LagMonitor {
    fn name(&self) -> &str {
        "consumers"
    }

    /// Ready unless a consumer is `STALL` or `STOP`.
    async fn check(&self) -> CheckReport {
        let all = self.statuses();
        let failing: Vec<String> = all
            .iter()
            .filter(|c| c.status.is_failing())
            .map(|c| format!("{} {}", c.name, c.status))
            .collect();
        let summary = if failing.is_empty() {
            format!("{} consumer(s), none stalled or stopped", all.len())
        } else {
            failing.join(", ")
        };
        let details = all
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "status": c.status.as_str(),
                    "error": c.error,
                    "state": c.state.as_ref().map(|s| json!({
                        "filter": s.filter,
                        "position": s.position,
                        "pending": s.pending,
                        "ack_pending": s.ack_pending,
                        "lag": s.lag(),
                        "redelivered": s.redelivered,
                        "alive": s.alive,
                        "idle_seconds": s.idle_for.map(|d| d.as_secs_f64()),
                    })),
                })
            })
            .collect();
        CheckReport::new(
            failing.is_empty(),
            summary,
            serde_json::Value::Array(details),
        )
    }
}

/// A check from a name and a function (a runner's report, a dead-letter
/// depth, anything a service wants on its status page).
pub fn from_fn<F>(name: impl Into<String>, f: F) -> impl StatusCheck
where
    F: Fn() -> CheckReport + Send + Sync + 'static,
{
    FnCheck {
        name: name.into(),
        f,
    }
}

struct FnCheck<F> {
    name: String,
    f: F,
}

#[async_trait]
impl<F> StatusCheck for FnCheck<F>
where
    F: Fn() -> CheckReport + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&self) -> CheckReport {
        (self.f)()
    }
}

/// One consumer's lag as a [`LagMonitor`] last saw it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConsumerLag {
    /// The durable name.
    pub name: String,
    /// Its status over the window.
    pub status: LagStatus,
    /// The last state sampled, if any sample succeeded.
    pub state: Option<ConsumerState>,
    /// The last sampling error (the consumer missing, the bus down), if the
    /// last sample failed.
    pub error: Option<String>,
}

struct Watched {
    gauges: LagGauges,
    name: String,
    filter: String,
    window: LagWindow,
    state: Option<ConsumerState>,
    error: Option<String>,
}

/// Samples durable consumers every interval into [`LagWindow`]s, in a task
/// of its own; [`statuses`](LagMonitor::statuses) reads the result. Stops
/// when dropped.
///
/// The window spans `capacity × every`: a consumer is `STALL` or `STOP`
/// once that long without progress (e.g. 10 samples every 30 s: five
/// minutes).
pub struct LagMonitor {
    watched: Arc<Mutex<Vec<Watched>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LagMonitor {
    /// Watches `consumers` (durable name, filter) of `bus`, sampling every
    /// `every` into windows of `capacity` samples.
    pub fn spawn(
        bus: Arc<dyn EventBus>,
        consumers: impl IntoIterator<Item = (String, String)>,
        every: Duration,
        capacity: usize,
    ) -> Self {
        let watched: Vec<Watched> = consumers
            .into_iter()
            .map(|(name, filter)| Watched {
                gauges: LagGauges::new(bus.backend_name(), &name, bus.tenant()),
                name,
                filter,
                window: LagWindow::new(capacity),
                state: None,
                error: None,
            })
            .collect();
        let watched = Arc::new(Mutex::new(watched));
        let shared = watched.clone();
        let every = every.max(Duration::from_millis(10));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let targets: Vec<(String, String)> = shared
                    .lock()
                    .iter()
                    .map(|w| (w.name.clone(), w.filter.clone()))
                    .collect();
                for (i, (name, filter)) in targets.into_iter().enumerate() {
                    let result = bus.consumer_state(&name, &filter).await;
                    let now = Instant::now();
                    let mut all = shared.lock();
                    let w = &mut all[i];
                    match result {
                        Ok(state) => {
                            w.window.push(LagSample {
                                at: now,
                                position: state.position,
                                lag: state.lag(),
                                last_active: state.idle_for.and_then(|d| now.checked_sub(d)),
                            });
                            w.state = Some(state);
                            w.error = None;
                        }
                        Err(e) => w.error = Some(e.to_string()),
                    }
                    w.gauges.set(w.state.as_ref(), w.window.status(now));
                }
            }
        });
        LagMonitor { watched, task }
    }

    /// Every watched consumer's status now.
    pub fn statuses(&self) -> Vec<ConsumerLag> {
        let now = Instant::now();
        self.watched
            .lock()
            .iter()
            .map(|w| ConsumerLag {
                name: w.name.clone(),
                status: w.window.status(now),
                state: w.state.clone(),
                error: w.error.clone(),
            })
            .collect()
    }
}

impl Drop for LagMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Debug for LagMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LagMonitor")
            .field("consumers", &self.watched.lock().len())
            .finish()
    }
}
