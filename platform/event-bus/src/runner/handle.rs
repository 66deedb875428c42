//! A runner running in the background: its report, its dead letters and a
//! bounded graceful shutdown.

use super::{Counters, RunReport};
use crate::bus::EventBus;
use crate::dlq::DeadLetterQueue;
use crate::error::BusError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// A runner running in the background ([`Runner::spawn`]).
pub struct RunnerHandle {
    pub(super) stop: Option<oneshot::Sender<()>>,
    pub(super) task: tokio::task::JoinHandle<RunReport>,
    pub(super) counters: Arc<Counters>,
    /// The bound of [`RunnerHandle::shutdown`].
    pub(super) stop_within: Duration,
    pub(super) dead_letters: DeadLetterPlace,
    pub(super) name: String,
    /// Running, stopping or stopped (read by [`RunnerCheck`]).
    pub(super) state: Arc<RunState>,
}

/// Whether a spawned runner runs: shared by its handle, its task and its
/// [`RunnerCheck`]s.
#[derive(Debug, Default)]
pub(super) struct RunState(std::sync::atomic::AtomicU8);

impl RunState {
    const RUNNING: u8 = 0;
    const STOPPING: u8 = 1;
    const STOPPED: u8 = 2;

    fn get(&self) -> u8 {
        self.0.load(Ordering::Acquire)
    }

    /// Shutdown has begun (unless the runner has already stopped).
    fn stopping(&self) {
        let _ = self.0.compare_exchange(
            Self::RUNNING,
            Self::STOPPING,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}

/// Marks the runner stopped when its task ends, however it ends (returned,
/// aborted, panicked): held by the task.
pub(super) struct StoppedOnDrop(pub(super) Arc<RunState>);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        self.0 .0.store(RunState::STOPPED, Ordering::Release);
    }
}

/// A spawned runner as a [`StatusCheck`](crate::status::StatusCheck)
/// ([`RunnerHandle::status_check`]): ready while the runner runs; not ready
/// once its shutdown has begun, or once it has stopped for any reason (shut
/// down, aborted, its task failed), so that `/readyz` tells a load balancer
/// to stop sending work to a service whose runner is gone.
pub struct RunnerCheck {
    name: String,
    state: Arc<RunState>,
    counters: Arc<Counters>,
}

#[async_trait::async_trait]
impl crate::status::StatusCheck for RunnerCheck {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&self) -> crate::status::CheckReport {
        let report = self.counters.report();
        let (ready, status) = match self.state.get() {
            RunState::RUNNING => (true, "running"),
            RunState::STOPPING => (false, "shutting down"),
            _ => (false, "stopped"),
        };
        crate::status::CheckReport::new(
            ready,
            format!(
                "{status}: {} processed, {} dead-lettered",
                report.processed, report.dead_lettered
            ),
            serde_json::json!({ "status": status, "report": report }),
        )
    }
}

/// Where a runner's dead letters are, to open a [`DeadLetterQueue`] on them.
pub(super) struct DeadLetterPlace {
    pub(super) bus: Arc<dyn EventBus>,
    pub(super) subject: String,
    pub(super) reader: String,
}

impl DeadLetterPlace {
    pub(super) async fn open(&self) -> Result<DeadLetterQueue, BusError> {
        DeadLetterQueue::open(self.bus.clone(), &self.subject, &self.reader).await
    }
}

impl Drop for RunnerHandle {
    fn drop(&mut self) {
        if self.stop.is_some() && !self.task.is_finished() {
            tracing::info!(
                runner = %self.name,
                "runner handle dropped: the runner keeps running, detached, until the runtime shuts down (keep the handle and call shutdown() to stop it gracefully)"
            );
        }
    }
}

impl RunnerHandle {
    /// What the runner has done so far.
    pub fn report(&self) -> RunReport {
        self.counters.report()
    }

    /// A check for the monitoring endpoints (`event_bus_http::Monitoring`),
    /// named `runner <name>`: ready while the runner runs, not ready from
    /// the moment [`shutdown`](Self::shutdown) begins or once the runner has
    /// stopped (see [`RunnerCheck`]).
    pub fn status_check(&self) -> RunnerCheck {
        RunnerCheck {
            name: format!("runner {}", self.name),
            state: self.state.clone(),
            counters: self.counters.clone(),
        }
    }

    /// The dead letters of this runner: list, inspect, replay (the same as
    /// [`Runner::dead_letters`]).
    pub async fn dead_letters(&self) -> Result<DeadLetterQueue, BusError> {
        self.dead_letters.open().await
    }

    /// Graceful shutdown (see the module docs); returns the final report.
    ///
    /// It returns within [`RunnerOptions::shutdown_timeout`] plus three
    /// [answer timeouts](RunnerBuilder::answer_timeout), even when the
    /// backend takes no answers (a NATS outage): past that, the runner is
    /// stopped as by [`abort`](Self::abort), and what was in flight is
    /// redelivered after its ack wait.
    pub async fn shutdown(mut self) -> RunReport {
        self.state.stopping();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(self.stop_within, &mut self.task).await {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "runner task failed");
                self.counters.report()
            }
            Err(_) => {
                tracing::error!(
                    within = ?self.stop_within,
                    "the runner did not stop in time; aborted (events in flight are redelivered after their ack wait)"
                );
                self.task.abort();
                self.counters.report()
            }
        }
    }

    /// Stops the runner at once, as a crash would: events in flight are
    /// neither acknowledged nor handed back (the backend redelivers them after
    /// the ack wait). For tests of crash recovery.
    pub fn abort(mut self) {
        self.state.stopping();
        self.stop = None;
        self.task.abort();
    }
}
