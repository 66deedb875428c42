//! A runner running in the background: its report, its dead letters and a
//! bounded graceful shutdown.

use super::*;

/// A runner running in the background ([`Runner::spawn`]).
pub struct RunnerHandle {
    pub(super) stop: Option<oneshot::Sender<()>>,
    pub(super) task: tokio::task::JoinHandle<RunReport>,
    pub(super) counters: Arc<Counters>,
    /// The bound of [`RunnerHandle::shutdown`].
    pub(super) stop_within: Duration,
    pub(super) dead_letters: DeadLetterPlace,
    pub(super) name: String,
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
        self.stop = None;
        self.task.abort();
    }
}
