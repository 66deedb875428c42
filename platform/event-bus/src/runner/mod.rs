//! The event runner: typed handlers on durable consumers, with retries, dead
//! letters, idempotent exactly-once effects and graceful shutdown.
//!
//! It replaces the hand-written loop of the spec's *Module Integration*
//! (`while let Some(msg) = stream.next().await { match handle_event(&msg) ... }`),
//! which loses events on errors and processes duplicates twice.
//!
//! ```
//! use event_bus::runner::{Event, Handler, Outcome, Runner};
//! use event_bus::{EventBus, InMemoryBus};
//! use std::sync::Arc;
//!
//! #[derive(serde::Deserialize)]
//! struct UserCreated { user_id: String }
//!
//! async fn welcome(e: Event<'_, UserCreated>, _tx: &mut ()) -> Outcome {
//!     println!("welcome {}", e.data.user_id);
//!     Outcome::Ack
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), event_bus::BusError> {
//! let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
//! let runner = Runner::builder(bus.clone(), "welcome-mails")
//!     .handler(Handler::new("send-welcome", "auth.events.user.created", welcome))
//!     .build();
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let running = tokio::spawn(runner.run(async { let _ = stopped.await; }));
//! # let _ = stop.send(());
//! # let _report = running.await.unwrap()?;
//! # Ok(()) }
//! ```
//!
//! [`Handler::new`] takes any shape of handler function: a named `async fn`
//! (kept without a box), one taking [`State`] (given with
//! [`Handler::with_state`]), a closure that returns its outcome at once,
//! or a [`boxed`] closure; see [`handler`].
//!
//! # Stages, in this fixed order
//!
//! 1. **Decode** the payload (serde JSON) into the handler's type. A payload
//!    that cannot be decoded goes straight to the dead letters with the
//!    decode error; it never enters a retry loop.
//! 2. **Layers** of your own around each attempt (each retry too), above
//!    the inbox
//!    ([`layer`]: a [`Timeout`], a [`ConcurrencyLimit`], a [`RateLimit`],
//!    a correlation span): added with [`RunnerBuilder::layer`] and
//!    [`Handler::layer`].
//! 3. **De-duplicate** through the [`Inbox`]: claim `(consumer, message id)`;
//!    an event whose effects were already committed is acknowledged without
//!    running the handler.
//! 4. **Handle**, with retries: the handler returns an [`Outcome`]. `Ack`
//!    commits the inbox unit of work (with the handler's own writes) and then
//!    acknowledges; `Retry` (and any error, and a caught panic) rolls back and
//!    tries again in process after an exponential backoff with jitter
//!    ([`RetryPolicy`]), keeping the delivery alive meanwhile; `Drop`
//!    acknowledges without effects; `DeadLetter` gives up at once.
//! 5. **Dead-letter** when attempts run out (or on `DeadLetter`): the event
//!    goes to the dead-letter subject with headers for the reason, the
//!    handler, the original subject and the delivery count
//!    ([`dlq`](crate::dlq)); [`DeadLetterQueue`] lists, inspects
//!    and replays them.
//!
//! Retries run in process (not by redelivery) so that per-key order holds
//! under retries; redelivery by the backend (after a crash) is the backstop,
//! bounded by [`RunnerOptions::max_deliver`].
//!
//! An inbox that cannot begin or commit for a reason that passes (a
//! timeout, a lost connection, a database failover, a claim that another
//! instance holds at the moment: kinds `Timeout`, `Unavailable`, `Conflict`)
//! does not use up the handler's attempts: the attempt is made again after
//! a backoff of its own (50 ms growing to 5 s), for as long as it takes,
//! the event kept alive meanwhile ([`RunReport::inbox_retries`] counts
//! these). A commit whose answer was lost is found as a duplicate then.
//!
//! Every event in flight is kept alive (in-progress every third of the ack
//! wait) while its handler runs, while it waits for a retry, and while it
//! waits behind an earlier event of its key. Only events fetched ahead and
//! not yet taken (see [`RunnerBuilder::max_ack_pending`]) are not.
//!
//! # Concurrency and order
//!
//! Up to [`RunnerOptions::concurrency`] events are in flight per runner. With
//! [`Handler::key`], events with the same key are handled one at a time in
//! arrival order, others in parallel.
//!
//! # Shutdown
//!
//! [`Runner::run`] takes a shutdown future. When it completes, the runner
//! stops taking events, lets those in flight finish within
//! [`RunnerOptions::shutdown_timeout`], then cancels the rest (their unit of
//! work rolls back) and hands them back with a nack, and returns a
//! [`RunReport`]. Every answer to the backend (ack, nack, term, in-progress,
//! a dead letter, a hand-back) is bounded by
//! [`RunnerBuilder::answer_timeout`], so shutdown ends even while the
//! backend is unreachable (what was not answered is redelivered after its
//! ack wait).
//!
//! A panic in a handler is caught and counts as a failed attempt; a panic
//! in a [`Handler::key`] function is caught and sends that event to the
//! dead letters.

mod attempt;
mod builder;
mod handle;
pub mod handler;
pub mod inbox;
pub mod layer;
mod slot;

pub use builder::{NoHandlers, RunnerBuilder, RunnerOptions, WithHandlers, MAX_ACK_WAIT};
use handle::DeadLetterPlace;
pub use handle::{RunnerCheck, RunnerHandle};
pub use handler::{boxed, Event, EventCheck, Handler, IntoHandlerFn, State};
pub use inbox::{Inbox, MemoryInbox, NoInbox};
pub use layer::{Attempt, ConcurrencyLimit, Layer, Next, RateLimit, Timeout};
use slot::{Erased, EventSlot};

use crate::bus::EventBus;
use crate::consumer::{ConsumerConfig, ConsumerStream, Delivery};
use crate::dlq::{DeadLetterQueue, EventBusExt};
use crate::error::BusError;
use futures::future::Shared;
use futures::StreamExt;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// What a handler decided about an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done: commit the effects and acknowledge.
    Ack,
    /// Failed: roll back and try again (after `after`, or the policy's backoff).
    Retry {
        /// Wait at least this long before the next attempt.
        after: Option<Duration>,
        /// Why (the dead letter's last error if attempts run out).
        reason: String,
    },
    /// Give up now: roll back and send to the dead letters.
    DeadLetter(String),
    /// Ignore the event: roll back and acknowledge.
    Drop,
}

impl Outcome {
    /// A retry after the handler's [`RetryPolicy`] backoff, with `reason` as
    /// the error (it becomes the dead letter's `Bus-Dlq-Last-Error` if the
    /// attempts run out). The same as `Outcome::Retry { after: None, reason }`;
    /// an `Err(e)` converted with `.into()` gives `Outcome::retry(e)`.
    ///
    /// ```
    /// use event_bus::runner::Outcome;
    /// let o = Outcome::retry("payment service unavailable");
    /// assert_eq!(o, Outcome::Retry { after: None, reason: "payment service unavailable".into() });
    /// let o: Outcome = Err::<(), _>("timeout").into();
    /// assert_eq!(o, Outcome::retry("timeout"));
    /// ```
    pub fn retry(reason: impl fmt::Display) -> Self {
        Outcome::Retry {
            after: None,
            reason: reason.to_string(),
        }
    }
}

impl<E: fmt::Display> From<Result<(), E>> for Outcome {
    fn from(r: Result<(), E>) -> Self {
        match r {
            Ok(()) => Outcome::Ack,
            Err(e) => Outcome::retry(e),
        }
    }
}

/// Bounded retries with exponential backoff and jitter.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all (the first included); at least 1.
    pub max_attempts: u32,
    /// Delay after the first failed attempt.
    pub initial_backoff: Duration,
    /// Upper bound of a delay.
    pub max_backoff: Duration,
    /// Growth factor per attempt.
    pub multiplier: f64,
    /// Random spread, as a fraction of the delay (0.2 = ±20 %).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// `max_attempts` attempts with backoff starting at `initial`.
    pub fn new(max_attempts: u32, initial: Duration) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            initial_backoff: initial,
            ..RetryPolicy::default()
        }
    }

    /// Sets the upper bound of a delay.
    pub fn max_backoff(mut self, d: Duration) -> Self {
        self.max_backoff = d;
        self
    }

    /// Sets the jitter fraction (0 to 1).
    pub fn jitter(mut self, j: f64) -> Self {
        self.jitter = j.clamp(0.0, 1.0);
        self
    }

    /// The delay after failed attempt number `attempt` (1-based), at most
    /// `max_backoff`. Any field values give a delay (never a panic): huge
    /// ones saturate at `max_backoff`, a NaN multiplier counts as 1, a NaN
    /// jitter as 0, and a jitter beyond 0..=1 as its nearest bound.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let base = (self.initial_backoff.as_secs_f64() * exp).min(self.max_backoff.as_secs_f64());
        let r = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let unit = (r >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
        let jitter = if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        };
        let spread = 1.0 + jitter * (2.0 * unit - 1.0);
        // `max` turns a NaN into 0; a value beyond `Duration` saturates.
        Duration::try_from_secs_f64((base * spread).max(0.0))
            .unwrap_or(Duration::MAX)
            .min(self.max_backoff)
    }
}

/// Counts of what a run did, returned by [`Runner::run`] (serialisable, for
/// status pages).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RunReport {
    /// Events whose handler returned `Ack` (effects committed).
    pub processed: u64,
    /// Deliveries skipped because their effects were already committed.
    pub duplicates: u64,
    /// Failed attempts that were retried.
    pub retries: u64,
    /// Events sent to the dead letters.
    pub dead_lettered: u64,
    /// Events the handler chose to drop.
    pub dropped: u64,
    /// Events in flight at shutdown that were handed back (nacked).
    pub handed_back: u64,
    /// Attempts that could not run because the inbox was unavailable (a
    /// timeout, a lost connection, a claim held by another worker): tried
    /// again after a backoff of their own, not counted as failed attempts.
    pub inbox_retries: u64,
}

#[derive(Default)]
struct Counters {
    processed: AtomicU64,
    /// Events acked in a slot (first attempt), per handler: each is written by
    /// the runner's own task alone, so it is counted without a locked
    /// read-modify-write ([`Counters::count_fast`]).
    processed_fast: Box<[AtomicU64]>,
    duplicates: AtomicU64,
    retries: AtomicU64,
    dead_lettered: AtomicU64,
    dropped: AtomicU64,
    handed_back: AtomicU64,
    inbox_retries: AtomicU64,
}

impl Counters {
    fn new(handlers: usize) -> Self {
        Counters {
            processed_fast: (0..handlers).map(|_| AtomicU64::new(0)).collect(),
            ..Counters::default()
        }
    }

    /// Counts an event acked on handler `i`'s slot (only the runner's task
    /// writes this counter).
    fn count_fast(&self, i: usize) {
        let c = &self.processed_fast[i];
        c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    fn report(&self) -> RunReport {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RunReport {
            processed: g(&self.processed) + self.processed_fast.iter().map(g).sum::<u64>(),
            duplicates: g(&self.duplicates),
            retries: g(&self.retries),
            dead_lettered: g(&self.dead_lettered),
            dropped: g(&self.dropped),
            handed_back: g(&self.handed_back),
            inbox_retries: g(&self.inbox_retries),
        }
    }
}

/// Typed handlers on durable consumers; see the [module docs](self).
pub struct Runner<I: Inbox = NoInbox> {
    bus: Arc<dyn EventBus>,
    name: String,
    inbox: Arc<I>,
    handlers: Vec<Arc<dyn Erased<I>>>,
    options: RunnerOptions,
    check: Option<Arc<dyn EventCheck>>,
    /// [`RunnerBuilder::layer`]: around every handler's attempts.
    layers: Vec<Arc<dyn Layer>>,
    counters: Arc<Counters>,
}

/// Per-key chains: the completion of the last event queued for each key.
type Chains = Mutex<FxHashMap<String, Shared<oneshot::Receiver<()>>>>;

impl<I: Inbox> Runner<I> {
    /// The durable consumer name of handler `handler`: `<runner>-<handler>`.
    pub fn consumer_name(&self, handler: &str) -> String {
        format!("{}-{handler}", self.name)
    }

    /// The dead letters of this runner (also reachable after
    /// [`spawn`](Self::spawn), from [`RunnerHandle::dead_letters`]).
    pub async fn dead_letters(&self) -> Result<DeadLetterQueue, BusError> {
        self.dead_letter_place().open().await
    }

    fn dead_letter_place(&self) -> DeadLetterPlace {
        DeadLetterPlace {
            bus: self.bus.clone(),
            subject: self.options.dead_letter_subject.clone(),
            reader: format!("{}-dlq-reader", self.name),
        }
    }

    fn consumer_config(&self, h: &dyn Erased<I>) -> ConsumerConfig {
        ConsumerConfig::new(h.consumer(), h.pattern())
            .ack_wait(self.options.ack_wait)
            .max_deliver(self.options.max_deliver)
            .dead_letter_subject(Some(self.options.dead_letter_subject.clone()))
            .max_ack_pending(
                self.options
                    .max_ack_pending
                    .unwrap_or_else(|| (self.options.concurrency.max(1) * 2).max(DEFAULT_PREFETCH)),
            )
            .start(self.options.start)
    }

    async fn open(&self) -> Result<Source, BusError> {
        self.options.validate()?;
        let mut streams = Vec::with_capacity(self.handlers.len());
        for h in &self.handlers {
            streams.push(self.bus.consume(self.consumer_config(h.as_ref())).await?);
        }
        Ok(Source::new(streams))
    }

    /// Opens the consumers (so that events published from now on are
    /// handled) and runs until `shutdown` completes; see the module docs.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<RunReport, BusError> {
        let streams = self.open().await?;
        Ok(self.drive(streams, shutdown).await)
    }

    /// Opens the consumers, then runs in a background task; events published
    /// after this returns are handled. Stop it with [`RunnerHandle::shutdown`].
    ///
    /// Like a task from `tokio::spawn`, the runner keeps running when its
    /// handle is dropped (detached, with a log line saying so) until the
    /// runtime shuts down; events in flight then are redelivered after
    /// their ack wait, as after a crash. Keep the handle to shut it down
    /// gracefully.
    pub async fn spawn(self) -> Result<RunnerHandle, BusError> {
        let streams = self.open().await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let counters = self.counters.clone();
        let dead_letters = self.dead_letter_place();
        let name = self.name.clone();
        // Shutdown takes the deadline for events in flight, then at most
        // one answer timeout for the hand-backs and another for a handler
        // that ignores cancellation; a margin on top.
        let stop_within = self
            .options
            .shutdown_timeout
            .saturating_add(self.options.answer_timeout.saturating_mul(3));
        let state = Arc::new(handle::RunState::default());
        let running = handle::StoppedOnDrop(state.clone());
        let drive = self.drive(streams, async move {
            // A dropped handle (the sender gone without a message) detaches
            // the runner: it does not stop.
            if stopped.await.is_err() {
                std::future::pending::<()>().await;
            }
        });
        let task = tokio::spawn(async move {
            let _running = running;
            drive.await
        });
        Ok(RunnerHandle {
            stop: Some(stop),
            task,
            counters,
            stop_within,
            dead_letters,
            name,
            state,
        })
    }

    async fn drive(
        self,
        mut source: Source,
        shutdown: impl Future<Output = ()> + Send,
    ) -> RunReport {
        let concurrency = self.options.concurrency.max(1);
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        // Metrics from the runner's counters, copied once a second: nothing
        // per event.
        let metrics = RunnerMetrics::new(&self.name, self.bus.tenant());
        let exporter = tokio::spawn({
            let counters = Arc::downgrade(&self.counters);
            let metrics = metrics.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    match counters.upgrade() {
                        Some(c) => metrics.flush(&c.report()),
                        None => return,
                    }
                }
            }
        });
        let ctx = Arc::new(TaskCtx {
            inbox: self.inbox.clone(),
            counters: self.counters.clone(),
            ack_wait: self.options.ack_wait,
            answer_timeout: self.options.answer_timeout,
            cancel: cancel_rx,
            chains: Chains::default(),
            check: self.check.clone(),
            layers: self.layers.clone(),
        });
        tokio::pin!(shutdown);
        let name = self.name.as_str();
        let mut slots: Vec<Option<Box<dyn EventSlot + '_>>> = self
            .handlers
            .iter()
            .enumerate()
            .map(|(i, h)| h.slot(&ctx, i))
            .collect();
        let mut polls = 0u32;
        loop {
            // Drive the events in flight in this task and reap finished
            // tasks; then, while fewer than `concurrency` are in flight, take
            // events: one that an idle slot handles at once is done right
            // here (the common case, kept tight), any other is returned to
            // the loop below. The shutdown signal is polled whenever no event
            // is ready, and every 32 events while they keep coming; after
            // `YIELD_EVERY` events in one go the task yields to others.
            let next = std::future::poll_fn(|cx| {
                let mut in_flight = drive_in_flight(&mut slots, &mut tasks, name, cx);
                for _ in 0..YIELD_EVERY {
                    polls = polls.wrapping_add(1);
                    if polls.is_multiple_of(32) && shutdown.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    if in_flight >= concurrency {
                        return shutdown.as_mut().poll(cx).map(|()| None);
                    }
                    let (i, delivery) = match source.poll_next(cx) {
                        Poll::Ready(Some((i, Ok(delivery)))) => (i, delivery),
                        Poll::Ready(Some((_, Err(e)))) => {
                            tracing::warn!(runner = %name, error = %e, "consumer error; continuing");
                            continue;
                        }
                        Poll::Ready(None) => return Poll::Ready(None),
                        Poll::Pending => return shutdown.as_mut().poll(cx).map(|()| None),
                    };
                    match &mut slots[i] {
                        Some(slot) if !slot.busy() => {
                            if slot.start(delivery, cx).is_pending() {
                                in_flight += 1;
                            }
                        }
                        _ => return Poll::Ready(Some((i, delivery))),
                    }
                }
                cx.waker().wake_by_ref();
                Poll::Pending
            })
            .await;
            let Some((i, delivery)) = next else { break };
            // The first poll runs here, in arrival order (a keyed event
            // queues behind its key before the next is taken); only an event
            // that has to wait becomes a task.
            let mut work = self.handlers[i].clone().start(&ctx, delivery);
            if futures::poll!(work.as_mut()).is_pending() {
                tasks.spawn(work);
            }
        }
        // Stop taking events. Deliveries fetched ahead and not taken are
        // handed back by the consumers as they are dropped (NatsBus nacks
        // them, so other instances get them at once).
        drop(source);
        let finished = tokio::time::timeout(
            self.options.shutdown_timeout,
            drain(&mut slots, &mut tasks, name),
        )
        .await;
        if finished.is_err() {
            // Cancelled events roll back and are handed back; each answer is
            // bounded, so this ends within about one answer timeout. The
            // extra bound covers a handler that ignores cancellation.
            let _ = cancel_tx.send(true);
            let bound = self.options.answer_timeout.saturating_mul(2);
            if tokio::time::timeout(bound, drain(&mut slots, &mut tasks, name))
                .await
                .is_err()
            {
                tracing::error!(
                    runner = %name,
                    in_flight = tasks.len(),
                    "events still in flight after the shutdown deadline; abandoned (the backend redelivers them after their ack wait)"
                );
            }
        }
        exporter.abort();
        let report = self.counters.report();
        metrics.flush(&report);
        report
    }
}

/// A runner's counters as `event_bus.runner.events` (see [`crate::metrics`]).
///
/// Counters only increase, and one series may be shared by several runner
/// instances (restarts in one process, instances of one name): each flush
/// adds what this instance did since its previous flush, never its total
/// (an absolute value would keep the largest instance's total, not the sum).
#[derive(Clone)]
struct RunnerMetrics {
    by_result: [metrics::Counter; 7],
    /// What this instance has already added, in the order of `RESULTS`.
    flushed: Arc<Mutex<[u64; 7]>>,
}

impl RunnerMetrics {
    const RESULTS: [&'static str; 7] = [
        "processed",
        "duplicate",
        "retry",
        "dead_lettered",
        "dropped",
        "handed_back",
        "inbox_retry",
    ];

    fn new(runner: &str, tenant: Option<&str>) -> Self {
        RunnerMetrics {
            by_result: Self::RESULTS.map(|r| {
                let labels = crate::metrics::with_tenant(
                    vec![
                        ("event_bus.runner", runner.to_string()),
                        ("event_bus.result", r.to_string()),
                    ],
                    tenant,
                );
                metrics::counter!(crate::metrics::RUNNER_EVENTS, &labels)
            }),
            flushed: Arc::default(),
        }
    }

    /// Adds what `r` counts beyond the previous flush (once a second and at
    /// the end of a run: nothing per event).
    fn flush(&self, r: &RunReport) {
        let values = [
            r.processed,
            r.duplicates,
            r.retries,
            r.dead_lettered,
            r.dropped,
            r.handed_back,
            r.inbox_retries,
        ];
        let mut flushed = self.flushed.lock();
        for ((c, v), done) in self.by_result.iter().zip(values).zip(flushed.iter_mut()) {
            if v > *done {
                c.increment(v - *done);
                *done = v;
            }
        }
    }
}

/// The least [`RunnerBuilder::max_ack_pending`] by default.
pub const DEFAULT_PREFETCH: usize = 128;

/// The default [`RunnerBuilder::answer_timeout`].
pub const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Events the runner takes in one go before it yields to other tasks.
const YIELD_EVERY: usize = 256;

/// Polls the events in progress in `slots` and reaps finished tasks; returns
/// how many events are still in flight.
fn drive_in_flight(
    slots: &mut [Option<Box<dyn EventSlot + '_>>],
    tasks: &mut tokio::task::JoinSet<()>,
    runner: &str,
    cx: &mut std::task::Context<'_>,
) -> usize {
    let mut in_flight = 0;
    for slot in slots.iter_mut().flatten() {
        if slot.busy() && slot.poll(cx).is_pending() {
            in_flight += 1;
        }
    }
    if !tasks.is_empty() {
        while let Poll::Ready(Some(done)) = tasks.poll_join_next(cx) {
            log_task_failure(runner, done);
        }
        in_flight += tasks.len();
    }
    in_flight
}

/// Waits until nothing is in flight.
async fn drain(
    slots: &mut [Option<Box<dyn EventSlot + '_>>],
    tasks: &mut tokio::task::JoinSet<()>,
    runner: &str,
) {
    std::future::poll_fn(|cx| match drive_in_flight(slots, tasks, runner, cx) {
        0 => Poll::Ready(()),
        _ => Poll::Pending,
    })
    .await
}

type Tagged =
    std::pin::Pin<Box<dyn futures::Stream<Item = (usize, Result<Delivery, BusError>)> + Send>>;

/// The runner's consumers: one handler's stream read directly (the common
/// case), or several merged and tagged with the handler's index.
enum Source {
    One(ConsumerStream),
    Many(futures::stream::SelectAll<Tagged>),
}

impl Source {
    fn new(mut streams: Vec<ConsumerStream>) -> Self {
        if streams.len() == 1 {
            return Source::One(streams.pop().expect("one stream"));
        }
        Source::Many(futures::stream::select_all(
            streams
                .into_iter()
                .enumerate()
                .map(|(i, s)| Box::pin(s.map(move |item| (i, item))) as Tagged),
        ))
    }

    #[inline]
    fn poll_next(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<(usize, Result<Delivery, BusError>)>> {
        match self {
            Source::One(s) => s.poll_next_unpin(cx).map(|o| o.map(|item| (0, item))),
            Source::Many(s) => s.poll_next_unpin(cx),
        }
    }
}

struct TaskCtx<I> {
    inbox: Arc<I>,
    counters: Arc<Counters>,
    ack_wait: Duration,
    /// The bound of each answer to the backend ([`bounded`]).
    answer_timeout: Duration,
    /// Becomes `true` when the shutdown deadline has passed.
    cancel: watch::Receiver<bool>,
    chains: Chains,
    /// [`RunnerBuilder::check`].
    check: Option<Arc<dyn EventCheck>>,
    /// [`RunnerBuilder::layer`].
    layers: Vec<Arc<dyn Layer>>,
}

fn log_task_failure(runner: &str, done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        tracing::error!(runner, error = %e, "an event task failed");
    }
}

/// The name under which `consumer` claims ids in the inbox: scoped by the
/// tenant, if the bus has one.
fn inbox_consumer(tenant: Option<&str>, consumer: &str) -> String {
    match tenant {
        Some(t) => format!("{t}/{consumer}"),
        None => consumer.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::attempt::process_ref;
    use super::*;
    use crate::consumer::{AckKind, Acker};
    use crate::error::ErrorKind;
    use crate::message::{BusMessage, Headers, MessageId};
    use crate::subject::Subject;
    use slot::Registered;

    struct NoAck;

    #[async_trait::async_trait]
    impl Acker for NoAck {
        async fn answer(&self, _kind: AckKind) -> Result<(), BusError> {
            Ok(())
        }
    }

    /// The consumers' window of deliveries awaiting their ack: wide enough
    /// by default for fast handlers on NATS, as set when set.
    #[test]
    fn max_ack_pending_default_and_set() {
        let bus: Arc<dyn EventBus> = Arc::new(crate::InMemoryBus::new());
        let handler = || Handler::new("h", "x.>", |_e: Event<'_, u64>, _tx: &mut ()| Outcome::Ack);
        let window = |r: &Runner| r.consumer_config(r.handlers[0].as_ref()).max_ack_pending;
        let r = Runner::builder(bus.clone(), "r").handler(handler()).build();
        assert_eq!(
            window(&r),
            128,
            "the documented default, max(128, 2 x concurrency)"
        );
        let r = Runner::builder(bus.clone(), "r")
            .concurrency(500)
            .handler(handler())
            .build();
        assert_eq!(window(&r), 1000, "twice the concurrency when that is more");
        let r = Runner::builder(bus, "r")
            .max_ack_pending(7)
            .handler(handler())
            .build();
        assert_eq!(window(&r), 7);
    }

    #[test]
    fn inbox_keys_are_scoped_by_tenant() {
        assert_eq!(inbox_consumer(None, "r-h"), "r-h");
        assert_eq!(inbox_consumer(Some("acme"), "r-h"), "acme/r-h");
        assert_ne!(
            inbox_consumer(Some("acme"), "r-h"),
            inbox_consumer(Some("globex"), "r-h")
        );
    }

    /// Extreme retry policies give delays, never a panic (`from_secs_f64`
    /// panicked beyond `u64::MAX` seconds).
    #[test]
    fn retry_delays_saturate() {
        // Without jitter: `Duration::MAX` in seconds rounds up to 2^64 as an
        // f64, beyond what `from_secs_f64` takes.
        let exact = RetryPolicy::new(100, Duration::MAX)
            .max_backoff(Duration::MAX)
            .jitter(0.0);
        assert_eq!(exact.delay(1), Duration::MAX);
        let huge = RetryPolicy::new(100, Duration::MAX).max_backoff(Duration::MAX);
        for attempt in [1, 2, 50, u32::MAX] {
            let d = huge.delay(attempt);
            assert!(d >= Duration::from_secs(u64::MAX / 2), "{d:?}");
        }
        let mut p = RetryPolicy::new(100, Duration::from_secs(1)).max_backoff(Duration::MAX);
        p.multiplier = 1e300;
        assert!(p.delay(u32::MAX) >= Duration::from_secs(u64::MAX / 2));
        p.multiplier = f64::NAN;
        p.jitter = f64::NAN;
        assert_eq!(p.delay(3), Duration::from_secs(1), "no growth, no jitter");
        let mut p =
            RetryPolicy::new(3, Duration::from_secs(10)).max_backoff(Duration::from_secs(1));
        p.jitter = 50.0;
        for attempt in 1..20 {
            assert!(
                p.delay(attempt) <= Duration::from_secs(1),
                "max_backoff bounds every delay"
            );
        }
    }

    /// An ack wait the backends cannot take is a `Config` error naming
    /// `ack_wait`, from `spawn`/`run` (it panicked on the first delivery).
    #[tokio::test]
    async fn ack_wait_beyond_the_limit_is_refused() {
        let bus: Arc<dyn EventBus> = Arc::new(crate::InMemoryBus::new());
        let handler = || Handler::new("h", "x.>", |_e: Event<'_, u64>, _tx: &mut ()| Outcome::Ack);
        let err = Runner::builder(bus.clone(), "r")
            .ack_wait(Duration::MAX)
            .handler(handler())
            .build()
            .spawn()
            .await
            .err()
            .expect("refused");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("ack_wait"), "{err}");
        let ok = Runner::builder(bus, "r")
            .ack_wait(MAX_ACK_WAIT)
            .handler(handler())
            .build()
            .spawn()
            .await
            .expect("the limit itself is fine");
        ok.shutdown().await;
    }

    /// Each event's processing future is written into a slot (or boxed, for
    /// events that wait): keep it small.
    #[test]
    fn process_future_size() {
        let ctx = Arc::new(TaskCtx {
            inbox: Arc::new(NoInbox),
            counters: Arc::new(Counters::default()),
            ack_wait: Duration::from_secs(30),
            answer_timeout: DEFAULT_ANSWER_TIMEOUT,
            cancel: watch::channel(false).1,
            chains: Chains::default(),
            check: None,
            layers: Vec::new(),
        });
        let h = Arc::new(Registered::<u64, NoInbox, _> {
            consumer: "r-h".into(),
            inbox_consumer: "r-h".into(),
            system: "memory",
            process_duration: metrics::Histogram::noop(),
            handler: Handler::new(
                "h",
                "x",
                boxed(|_e: Event<'_, u64>, _tx| Box::pin(async { Outcome::Ack })),
            ),
        });
        let msg = BusMessage::new(
            Subject::new("x").unwrap(),
            &b"1"[..],
            Headers::new(),
            MessageId::new("m"),
            1,
        );
        let delivery = Delivery::new(msg, 1, Box::new(NoAck));
        // The future a slot holds (written per event).
        let fut = process_ref(&ctx, &h, delivery, Ok(1u64));
        let size = std::mem::size_of_val(&fut);
        println!("process future: {size} bytes");
        // glibc serves allocations up to 1032 bytes from its per-thread cache.
        assert!(size <= 1032, "{size} bytes");
    }
}
