//! Layers: code of your own around each attempt of a handler, the way
//! watermill's router middleware and tower's layers wrap a handler.
//!
//! A runner handles each event through a fixed stack of stages, outermost
//! first:
//!
//! | stage | what it does |
//! |---|---|
//! | dead letter | an event the stages below give up on goes to the dead letters ([`dlq`](crate::dlq)) |
//! | per-key order | [`Handler::key`](super::Handler::key): one event of a key at a time, in arrival order |
//! | contract check, decode | [`RunnerBuilder::check`](super::RunnerBuilder::check), then serde: a refusal is dead-lettered at once |
//! | retry with backoff | [`RetryPolicy`](super::RetryPolicy): each attempt below runs again after a failure |
//! | **your layers** | [`RunnerBuilder::layer`](super::RunnerBuilder::layer), then [`Handler::layer`](super::Handler::layer), in the order added |
//! | inbox | claim the id, open the unit of work, commit it on `Ack` (or roll it back) |
//! | handler | your function |
//!
//! A [`Layer`] sees one attempt ([`Attempt`]: the message, the handler,
//! the attempt number) and the rest of the stack ([`Next`]); it returns the
//! attempt's [`Outcome`], usually the one `next.run()` gives. It may act
//! before or after (a span, a timer, a log line), decide without calling
//! the rest (`Outcome::Drop` for an event it filters out,
//! `Outcome::retry(..)` when a breaker is open), wait first (a limit), or
//! stop waiting (a timeout: the rest is dropped, which rolls its unit of
//! work back). The stages above a layer treat its outcome as the handler's:
//! `Retry` is retried with the policy's backoff, `DeadLetter` is
//! dead-lettered, `Drop` is acknowledged. An outcome a layer changes after
//! the unit of work has committed (an `Ack` turned into a `Retry`) cannot
//! undo that commit: the next attempt finds the event a duplicate.
//! What the stack below gives a layer: `Ack` for an event the inbox found
//! already handled (the handler did not run), and `Retry` when the inbox
//! could not be reached; passed on unchanged, these keep their meaning (a
//! duplicate is counted as one, an unreachable inbox does not use up the
//! handler's attempts).
//!
//! Shipped: [`Timeout`] (per attempt), [`ConcurrencyLimit`] and
//! [`RateLimit`]. A layer of your own, putting a correlation id of the
//! message's headers on a tracing span around each attempt:
//!
//! ```
//! use event_bus::runner::{Attempt, Event, Handler, Layer, Next, Outcome, Runner};
//! use futures::future::BoxFuture;
//! use tracing::Instrument;
//!
//! struct Correlation;
//!
//! impl Layer for Correlation {
//!     fn call<'a>(&'a self, attempt: &'a Attempt<'a>, next: Next<'a>) -> BoxFuture<'a, Outcome> {
//!         let id = attempt.message.headers.get("correlation-id").unwrap_or("none").to_owned();
//!         let span = tracing::info_span!("event", correlation_id = %id, handler = attempt.handler);
//!         Box::pin(next.run().instrument(span))
//!     }
//! }
//!
//! async fn welcome(e: Event<'_, String>, _tx: &mut ()) -> Outcome {
//!     tracing::info!(user = %e.data, "welcome"); // logged inside the `event` span
//!     Outcome::Ack
//! }
//!
//! # let bus: std::sync::Arc<dyn event_bus::EventBus> = std::sync::Arc::new(event_bus::InMemoryBus::new());
//! let runner = Runner::builder(bus, "mails")
//!     .layer(Correlation)
//!     .handler(Handler::new("welcome", "auth.user.created", welcome))
//!     .build();
//! ```
//!
//! A runner without layers runs each attempt directly, with no cost of
//! this mechanism; each layer costs about one allocation per attempt (its
//! boxed future). Figures: `docs/performance.md`.

use super::Outcome;
use crate::message::BusMessage;
use futures::future::BoxFuture;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Code around each attempt of a handler; see the [module docs](self).
///
/// Layers are shared by every event in flight (`&self`): keep state behind
/// atomics or locks.
pub trait Layer: Send + Sync + 'static {
    /// Handles one attempt: usually some work, then `next.run().await`.
    fn call<'a>(&'a self, attempt: &'a Attempt<'a>, next: Next<'a>) -> BoxFuture<'a, Outcome>;
}

impl<L: Layer + ?Sized> Layer for Arc<L> {
    fn call<'a>(&'a self, attempt: &'a Attempt<'a>, next: Next<'a>) -> BoxFuture<'a, Outcome> {
        (**self).call(attempt, next)
    }
}

/// One attempt of a handler, as a [`Layer`] sees it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Attempt<'a> {
    /// The message (subject, id, headers, raw payload).
    pub message: &'a BusMessage,
    /// The handler's name.
    pub handler: &'a str,
    /// The handler's durable consumer (`<runner>-<handler>`).
    pub consumer: &'a str,
    /// This attempt's number (1 = first).
    pub attempt: u32,
    /// How often the backend has delivered the event.
    pub delivery_count: u32,
}

/// The rest of the stack below a layer: the next layers, the inbox and the
/// handler. Run it at most once, with [`Next::run`].
pub struct Next<'a> {
    /// The layers still to run: the runner's, then the handler's.
    layers: [&'a [Arc<dyn Layer>]; 2],
    attempt: &'a Attempt<'a>,
    /// The attempt below every layer (inbox and handler), not started
    /// until polled.
    inner: Pin<&'a mut (dyn Future<Output = Outcome> + Send + 'a)>,
}

impl<'a> Next<'a> {
    pub(super) fn new(
        layers: [&'a [Arc<dyn Layer>]; 2],
        attempt: &'a Attempt<'a>,
        inner: Pin<&'a mut (dyn Future<Output = Outcome> + Send + 'a)>,
    ) -> Self {
        Next {
            layers,
            attempt,
            inner,
        }
    }

    /// Runs the rest of the stack: its outcome.
    pub fn run(mut self) -> NextFuture<'a> {
        let layer = match self.layers {
            [[first, rest @ ..], other] => {
                self.layers = [rest, other];
                first
            }
            [[], [first, rest @ ..]] => {
                self.layers = [&[], rest];
                first
            }
            [[], []] => return NextFuture(Inner::Bottom(self.inner)),
        };
        let attempt = self.attempt;
        NextFuture(Inner::Layer(layer.call(attempt, self)))
    }
}

impl std::fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Next")
            .field("layers", &(self.layers[0].len() + self.layers[1].len()))
            .finish_non_exhaustive()
    }
}

/// The future of [`Next::run`]: the outcome of the rest of the stack.
pub struct NextFuture<'a>(Inner<'a>);

enum Inner<'a> {
    Layer(BoxFuture<'a, Outcome>),
    Bottom(Pin<&'a mut (dyn Future<Output = Outcome> + Send + 'a)>),
}

impl Future for NextFuture<'_> {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        match &mut self.0 {
            Inner::Layer(f) => f.as_mut().poll(cx),
            Inner::Bottom(f) => f.as_mut().poll(cx),
        }
    }
}

/// Gives up on an attempt that takes longer than a limit: the rest of the
/// stack is dropped (its unit of work rolls back) and the attempt fails
/// with a retry (so the handler's [`RetryPolicy`](super::RetryPolicy)
/// applies, then the dead letters).
///
/// ```
/// use event_bus::runner::{Event, Handler, Outcome, Timeout};
/// use std::time::Duration;
///
/// async fn charge(_e: Event<'_, u64>, _tx: &mut ()) -> Outcome { Outcome::Ack }
/// let h = Handler::new("charge", "billing.due", charge).layer(Timeout::new(Duration::from_secs(2)));
/// ```
#[derive(Clone, Debug)]
pub struct Timeout {
    limit: Duration,
}

impl Timeout {
    /// Attempts of at most `limit`.
    pub fn new(limit: Duration) -> Self {
        Timeout { limit }
    }
}

impl Layer for Timeout {
    fn call<'a>(&'a self, _attempt: &'a Attempt<'a>, next: Next<'a>) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            match tokio::time::timeout(self.limit, next.run()).await {
                Ok(outcome) => outcome,
                Err(_) => Outcome::retry(format!(
                    "the attempt did not complete within {:?} (Timeout layer)",
                    self.limit
                )),
            }
        })
    }
}

/// At most `n` attempts at once through this layer (all handlers and
/// runners it is given to share it; clones share it too). An attempt
/// waits for a place, kept alive meanwhile; it holds no unit of work
/// while it waits (the layer is above the inbox).
#[derive(Clone, Debug)]
pub struct ConcurrencyLimit {
    places: Arc<tokio::sync::Semaphore>,
}

impl ConcurrencyLimit {
    /// At most `n` (at least 1) attempts at once.
    pub fn new(n: usize) -> Self {
        ConcurrencyLimit {
            places: Arc::new(tokio::sync::Semaphore::new(n.max(1))),
        }
    }
}

impl Layer for ConcurrencyLimit {
    fn call<'a>(&'a self, _attempt: &'a Attempt<'a>, next: Next<'a>) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            // The semaphore is never closed.
            let _place = self.places.acquire().await;
            next.run().await
        })
    }
}

/// At most `n` attempts per `period` through this layer, evenly spaced
/// (one every `period / n`; a burst is not allowed ahead). Attempts wait
/// their turn in arrival order, kept alive meanwhile; clones share the
/// limit. Spacing is a few lines over `tokio::time`, hence no rate-limit
/// crate.
#[derive(Clone, Debug)]
pub struct RateLimit {
    every: Duration,
    next_free: Arc<parking_lot::Mutex<Option<Instant>>>,
}

impl RateLimit {
    /// At most `n` (at least 1) attempts per `period`.
    pub fn new(n: u32, period: Duration) -> Self {
        RateLimit {
            every: period / n.max(1),
            next_free: Arc::default(),
        }
    }

    /// The instant the next attempt may start at, reserved for the caller.
    fn reserve(&self) -> Instant {
        let now = Instant::now();
        let mut next = self.next_free.lock();
        let turn = next.map_or(now, |t| t.max(now));
        *next = Some(turn + self.every);
        turn
    }
}

impl Layer for RateLimit {
    fn call<'a>(&'a self, _attempt: &'a Attempt<'a>, next: Next<'a>) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let turn = self.reserve();
            if turn > Instant::now() {
                tokio::time::sleep_until(turn.into()).await;
            }
            next.run().await
        })
    }
}
