//! Building a [`Runner`]: its settings ([`RunnerOptions`]), the inbox
//! chosen before the handlers ([`NoHandlers`] → [`WithHandlers`]), the
//! handlers and an optional [`EventCheck`].

use super::handler::HandlerFn;
use super::slot::{Erased, Registered};
use super::{
    inbox_consumer, Counters, EventCheck, Handler, Inbox, Layer, NoInbox, Runner,
    DEFAULT_ANSWER_TIMEOUT,
};
use crate::bus::EventBus;
use crate::consumer::StartPosition;
use crate::error::BusError;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

/// Settings of a [`Runner`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RunnerOptions {
    /// Events in flight at once (across handlers).
    pub concurrency: usize,
    /// How long shutdown waits for events in flight before cancelling them.
    pub shutdown_timeout: Duration,
    /// The consumers' ack wait (the runner keeps long handlers alive).
    pub ack_wait: Duration,
    /// Backend deliveries of one event before it is dead-lettered (the
    /// backstop for crashes; retries run in process).
    pub max_deliver: u32,
    /// Where dead letters go (default `dlq.<runner name>`).
    pub dead_letter_subject: String,
    /// Where new consumers start.
    pub start: StartPosition,
    /// Deliveries each consumer may have awaiting their ack: the events in
    /// flight plus those fetched ahead of them (`None`: see
    /// [`RunnerBuilder::max_ack_pending`]).
    pub max_ack_pending: Option<usize>,
    /// How long the runner waits for the backend to take one answer (ack,
    /// nack, term, in-progress, a dead letter, a hand-back) before it gives
    /// up on it (the backend redelivers the event after its ack wait).
    pub answer_timeout: Duration,
}

/// The longest [`RunnerOptions::ack_wait`]. The runner keeps the events it
/// handles alive, so a longer ack wait would only delay the redelivery of
/// what a crashed instance was handling.
pub const MAX_ACK_WAIT: Duration = Duration::from_secs(24 * 3600);

impl RunnerOptions {
    /// Checks the values that a backend cannot take: a [`Config`](crate::ErrorKind::Config)
    /// error naming the field. ([`Runner::run`] and [`Runner::spawn`] call it.)
    pub fn validate(&self) -> Result<(), BusError> {
        if self.ack_wait > MAX_ACK_WAIT {
            return Err(BusError::config(
                "ack_wait",
                &format!("{:?}", self.ack_wait),
                format_args!("at most {MAX_ACK_WAIT:?} (the runner keeps long handlers alive)"),
            ));
        }
        Ok(())
    }
}

/// Builds a [`Runner`]: [`Runner::builder`], then optionally
/// [`inbox`](RunnerBuilder::inbox), then [`handler`](RunnerBuilder::handler)s
/// and options, then [`build`](RunnerBuilder::build).
///
/// `S` records whether handlers were added ([`NoHandlers`], then
/// [`WithHandlers`]): a handler's unit of work is its inbox's, so the inbox is
/// chosen first, and `.inbox(..)` after `.handler(..)` does not compile:
///
/// ```compile_fail
/// use event_bus::runner::{Event, Handler, MemoryInbox, Outcome, Runner};
/// # let bus: std::sync::Arc<dyn event_bus::EventBus> = std::sync::Arc::new(event_bus::InMemoryBus::new());
/// let runner = Runner::builder(bus, "r")
///     .handler(Handler::new("h", "x.y", |_e: Event<'_, u64>, _tx: &mut ()| Outcome::Ack))
///     .inbox(MemoryInbox::default()); // error: no method `inbox` once a handler is added
/// ```
pub struct RunnerBuilder<I: Inbox = NoInbox, S = NoHandlers> {
    bus: Arc<dyn EventBus>,
    name: String,
    inbox: Arc<I>,
    handlers: Vec<Arc<dyn Erased<I>>>,
    options: RunnerOptions,
    check: Option<Arc<dyn EventCheck>>,
    layers: Vec<Arc<dyn Layer>>,
    _state: std::marker::PhantomData<S>,
}

/// [`RunnerBuilder`] state: no handler yet; the inbox can still be chosen.
#[derive(Debug)]
pub struct NoHandlers;

/// [`RunnerBuilder`] state: handlers added; the inbox is fixed.
#[derive(Debug)]
pub struct WithHandlers;

impl Runner<NoInbox> {
    /// A runner named `name` on `bus`, without de-duplication until
    /// [`RunnerBuilder::inbox`].
    ///
    /// Instances with the same name share the work. Each handler reads a
    /// durable consumer named `<runner name>-<handler name>` (see
    /// [`Runner::consumer_name`]); its inbox claims are kept under that name
    /// too. Renaming the runner or a handler therefore starts a new consumer
    /// (from [`RunnerBuilder::start`]) and a new de-duplication scope.
    pub fn builder(bus: Arc<dyn EventBus>, name: impl Into<String>) -> RunnerBuilder {
        let name = name.into();
        RunnerBuilder {
            bus,
            options: RunnerOptions {
                concurrency: 16,
                shutdown_timeout: Duration::from_secs(10),
                ack_wait: Duration::from_secs(30),
                max_deliver: 10,
                max_ack_pending: None,
                answer_timeout: DEFAULT_ANSWER_TIMEOUT,
                dead_letter_subject: format!("dlq.{name}"),
                start: StartPosition::New,
            },
            name,
            inbox: Arc::new(NoInbox),
            handlers: Vec::new(),
            check: None,
            layers: Vec::new(),
            _state: std::marker::PhantomData,
        }
    }
}

impl<I: Inbox> RunnerBuilder<I, NoHandlers> {
    /// Uses `inbox` for de-duplication. Only before handlers are added
    /// (their unit-of-work type is the inbox's); after, it does not compile.
    pub fn inbox<J: Inbox>(self, inbox: J) -> RunnerBuilder<J, NoHandlers> {
        RunnerBuilder {
            bus: self.bus,
            name: self.name,
            inbox: Arc::new(inbox),
            handlers: Vec::new(),
            options: self.options,
            check: self.check,
            layers: self.layers,
            _state: std::marker::PhantomData,
        }
    }
}

impl<I: Inbox, S> RunnerBuilder<I, S> {
    /// Adds a handler. Its durable consumer is named `<runner>-<handler
    /// name>`.
    pub fn handler<T, C>(self, h: Handler<T, I::Tx, C>) -> RunnerBuilder<I, WithHandlers>
    where
        T: DeserializeOwned + Send + Sync + 'static,
        C: HandlerFn<T, I::Tx>,
    {
        let consumer = format!("{}-{}", self.name, h.name);
        let mut handlers = self.handlers;
        handlers.push(Arc::new(Registered::<T, I, C> {
            inbox_consumer: inbox_consumer(self.bus.tenant(), &consumer),
            system: self.bus.backend_name(),
            process_duration: metrics::histogram!(
                crate::metrics::PROCESS_DURATION,
                &crate::metrics::with_tenant(
                    vec![
                        ("messaging.system", self.bus.backend_name().to_string()),
                        ("messaging.consumer.group.name", consumer.clone()),
                    ],
                    self.bus.tenant(),
                )
            ),
            consumer,
            handler: h,
        }));
        RunnerBuilder {
            bus: self.bus,
            name: self.name,
            inbox: self.inbox,
            handlers,
            options: self.options,
            check: self.check,
            layers: self.layers,
            _state: std::marker::PhantomData,
        }
    }

    /// Events in flight at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.options.concurrency = n.max(1);
        self
    }

    /// Shutdown deadline for events in flight.
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.options.shutdown_timeout = d;
        self
    }

    /// The consumers' ack wait (at most [`MAX_ACK_WAIT`]: more is refused
    /// by [`Runner::run`] and [`Runner::spawn`] with a `Config` error).
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.options.ack_wait = d;
        self
    }

    /// Backend deliveries before an event is dead-lettered.
    pub fn max_deliver(mut self, n: u32) -> Self {
        self.options.max_deliver = n.max(1);
        self
    }

    /// Deliveries each consumer may have awaiting their ack: the events in
    /// flight plus those fetched ahead of them. Default: [`DEFAULT_PREFETCH`](super::DEFAULT_PREFETCH)
    /// or twice the concurrency, whichever is larger.
    ///
    /// A wider window keeps NATS busy while fast handlers run (with 32,
    /// a consumer of fast handlers reached half the throughput of one with
    /// 10,000). A narrower one suits slow handlers: an event fetched ahead
    /// waits for a free place without being kept alive, and is delivered
    /// again (a duplicate, which an inbox absorbs) if its ack wait runs
    /// out first; keep `window / concurrency × handling time` well under
    /// the ack wait.
    pub fn max_ack_pending(mut self, n: usize) -> Self {
        self.options.max_ack_pending = Some(n.max(1));
        self
    }

    /// How long one answer to the backend (ack, nack, term, in-progress, a
    /// dead letter, a hand-back) may take before the runner gives up on it
    /// (default 5 s). It bounds shutdown during a backend outage:
    /// [`RunnerHandle::shutdown`](super::RunnerHandle::shutdown) returns within the shutdown timeout plus
    /// a few of these.
    pub fn answer_timeout(mut self, d: Duration) -> Self {
        self.options.answer_timeout = d.max(Duration::from_millis(1));
        self
    }

    /// Where dead letters go.
    pub fn dead_letter_subject(mut self, subject: impl Into<String>) -> Self {
        self.options.dead_letter_subject = subject.into();
        self
    }

    /// Where new consumers start.
    pub fn start(mut self, start: StartPosition) -> Self {
        self.options.start = start;
        self
    }

    /// Checks every event before it is decoded for its handler (e.g.
    /// against its schema, see `event-bus-schema`): an event the check
    /// refuses goes to the dead letters with the check's reason, without
    /// reaching the handler.
    pub fn check(mut self, check: impl EventCheck) -> Self {
        self.check = Some(Arc::new(check));
        self
    }

    /// Adds a [`Layer`] around every handler's attempts (below the retries,
    /// above the inbox; see [`layer`](super::layer)). Layers run in the order
    /// added, the first outermost, and before a handler's own
    /// ([`Handler::layer`]).
    pub fn layer(mut self, layer: impl Layer) -> Self {
        self.layers.push(Arc::new(layer));
        self
    }

    /// The runner.
    pub fn build(self) -> Runner<I> {
        let handlers = self.handlers.len();
        Runner {
            bus: self.bus,
            name: self.name,
            inbox: self.inbox,
            handlers: self.handlers,
            options: self.options,
            check: self.check,
            layers: self.layers,
            counters: Arc::new(Counters::new(handlers)),
        }
    }
}
