//! The [`EventBus`] trait: the contract every module is written against.
//!
//! Two methods are the spec's and never change:
//! [`publish`](EventBus::publish) and [`subscribe`](EventBus::subscribe).
//! Everything else is an extension point with a default implementation, so a
//! backend written against this version keeps compiling when later versions
//! add capabilities, and a caller asking a backend for something it cannot do
//! gets an [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) error
//! naming the feature, never a silent `Ok`.

use crate::consumer::{ConsumerConfig, ConsumerState, ConsumerStream};
use crate::error::BusError;
use crate::message::{BusMessage, Envelope, PublishAck};
use async_trait::async_trait;
use futures::Stream;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// An object-safe, thread-safe event bus. Use it as `Arc<dyn EventBus>`.
///
/// ```
/// use event_bus::{EventBus, InMemoryBus};
/// use futures::StreamExt;
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), event_bus::BusError> {
/// let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
/// let mut events = bus.subscribe("auth.events.>").await?;
/// bus.publish("auth.events.user.created", b"{}".to_vec()).await?;
/// let msg = events.next().await.expect("delivered");
/// assert_eq!(msg.subject, "auth.events.user.created");
/// # Ok(()) }
/// ```
#[async_trait]
pub trait EventBus: Send + Sync {
    /// Publishes `payload` on the literal `subject`.
    ///
    /// `Ok` means the backend has taken the message: the in-memory bus has
    /// queued it for every current matching subscriber, NATS has stored it in
    /// a stream and acknowledged it. An invalid subject is an
    /// [`InvalidSubject`](crate::ErrorKind::InvalidSubject) error naming it.
    ///
    /// Called as `bus.publish(subject, payload).await?`. The method returns a
    /// [`PublishFuture`] rather than being an `async fn` so that a backend that
    /// finishes at once (the in-memory bus, when no subscriber queue is full)
    /// answers without allocating a boxed future per call; implement it with
    /// [`PublishFuture::new`]`(async move { ... })` otherwise.
    fn publish<'a>(&'a self, subject: &'a str, payload: Vec<u8>) -> PublishFuture<'a>;

    /// Subscribes to every message published after this call on a subject
    /// matching `pattern` (NATS wildcards `*` and `>` allowed).
    ///
    /// The subscription is a `Stream` of [`BusMessage`]; dropping it
    /// unsubscribes. It ends (`None`) when the bus is closed.
    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BusError>;

    /// Publishes an [`Envelope`]: payload plus headers and an optional message
    /// id, and reports what the backend did with it.
    ///
    /// The default publishes envelopes without headers or id through
    /// [`publish`](EventBus::publish) and refuses the others as
    /// `Unsupported`: a backend that cannot carry headers must not drop them
    /// silently.
    async fn publish_envelope(&self, envelope: Envelope) -> Result<PublishAck, BusError> {
        if !envelope.headers.is_empty() || envelope.id.is_some() {
            return Err(BusError::unsupported(
                "publishing headers or a message id",
                self.backend_name(),
            ));
        }
        self.publish(&envelope.subject, envelope.payload.to_vec())
            .await?;
        Ok(PublishAck::default())
    }

    /// Publishes a dead letter ([`crate::dlq`]): the record of an event a
    /// consumer gave up on, with the event's payload and headers. The
    /// dead-letter layer publishes through this, never through
    /// [`publish_envelope`](EventBus::publish_envelope). The default is
    /// `publish_envelope`; a decorator that checks the events it publishes
    /// (`ValidatingBus`) hands a dead letter to its inner bus unchecked: a
    /// dead letter is often the very event its check refused, and refusing
    /// its record would keep it pending forever.
    async fn publish_dead_letter(&self, envelope: Envelope) -> Result<PublishAck, BusError> {
        self.publish_envelope(envelope).await
    }

    /// Publishes many envelopes, letting the backend pipeline them; returns
    /// one result per envelope, in order. Envelopes are published in order;
    /// one failure does not stop the others.
    async fn publish_batch(&self, envelopes: Vec<Envelope>) -> Vec<Result<PublishAck, BusError>> {
        let mut out = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            out.push(self.publish_envelope(envelope).await);
        }
        out
    }

    /// The backend's raw durable consumer: opens (or joins) the named
    /// durable consumer `config` describes. Callers use
    /// [`EventBusExt::consume`](crate::EventBusExt::consume), which checks
    /// `config`, calls this and adds dead letters on top; this method is
    /// what a backend implements.
    ///
    /// What a backend provides: one consumer per [`ConsumerConfig::name`]
    /// (instances opening the same name share its messages; a name already
    /// used with another filter is a [`Conflict`](crate::ErrorKind::Conflict)),
    /// reading [`ConsumerConfig::filter`] from
    /// [`ConsumerConfig::start`], at most
    /// [`ConsumerConfig::max_ack_pending`] unanswered deliveries at once, and
    /// for each [`Delivery`](crate::Delivery) its delivery count (1 on the
    /// first) and an [`Acker`](crate::Acker) applying
    /// [`AckKind`](crate::AckKind)s: ack, nack (redelivered after the delay,
    /// if any), term, in progress (restarts the ack timer), and redelivery of
    /// what is not answered within [`ConsumerConfig::ack_wait`].
    ///
    /// What it leaves out: `max_deliver`, `backoff` and
    /// `dead_letter_subject`. The raw consumer keeps delivering a message
    /// until it is acked or terminated; the dead-letter layer
    /// ([`dlq::with_dead_letters`](crate::dlq::with_dead_letters)) counts the
    /// deliveries, publishes the dead letters and terminates the message (see
    /// [`dlq`](crate::dlq)). An [`AckKind::DeadLetter`](crate::AckKind::DeadLetter)
    /// never reaches it from that layer; treat one as a term.
    ///
    /// The default: [`Unsupported`](crate::ErrorKind::Unsupported) naming
    /// durable consumers.
    async fn open_consumer(&self, config: ConsumerConfig) -> Result<ConsumerStream, BusError> {
        let _ = config;
        Err(BusError::unsupported(
            "durable consumers",
            self.backend_name(),
        ))
    }

    /// The state of the durable consumer `name` reading `filter` (as
    /// opened with [`open_consumer`](EventBus::open_consumer)): its position, pending
    /// and unanswered messages, whether an instance is consuming. Sampled
    /// by [`LagMonitor`](crate::status::LagMonitor). A consumer that
    /// does not exist is [`NotFound`](crate::ErrorKind::NotFound).
    async fn consumer_state(&self, name: &str, filter: &str) -> Result<ConsumerState, BusError> {
        let _ = (name, filter);
        Err(BusError::unsupported("consumer state", self.backend_name()))
    }

    /// Reports whether the backend can currently do its job.
    async fn health(&self) -> HealthReport {
        HealthReport::healthy(self.backend_name(), "no health check implemented")
    }

    /// A short, stable name of the backend (`"memory"`, `"nats"`, ...), used in
    /// errors, logs and metrics labels.
    fn backend_name(&self) -> &'static str {
        "custom"
    }

    /// Waits until the backend has every answer and message this process only
    /// queued (`Delivery::ack_nowait`, the hand-back of dropped consumer
    /// streams): call it before exiting to close consumers cleanly. Answers
    /// awaited with `Delivery::ack` and the like need no flush. The default
    /// has nothing to wait for.
    async fn flush(&self) -> Result<(), BusError> {
        Ok(())
    }

    /// The streams (the in-memory bus: its log, `"memory"`) that store
    /// subjects matching `pattern`, read with
    /// [`read_stored`](EventBus::read_stored). Creates nothing: a pattern
    /// no stream stores has none.
    async fn stored_streams(&self, pattern: &str) -> Result<Vec<String>, BusError> {
        let _ = pattern;
        Err(BusError::unsupported(
            "reading stored messages",
            self.backend_name(),
        ))
    }

    /// Up to `max` messages stored in `stream` on subjects matching
    /// `pattern`, from sequence `from` on, oldest first (each message's
    /// `sequence` is its position in `stream`). A read: it creates no
    /// consumer and changes nothing.
    async fn read_stored(
        &self,
        stream: &str,
        pattern: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<BusMessage>, BusError> {
        let _ = (stream, pattern, from, max);
        Err(BusError::unsupported(
            "reading stored messages",
            self.backend_name(),
        ))
    }

    /// Removes the message at `sequence` from `stream`, for every reader.
    /// [`NotFound`](crate::ErrorKind::NotFound) when it is no longer
    /// stored (removed already, or expired).
    async fn delete_stored(&self, stream: &str, sequence: u64) -> Result<(), BusError> {
        let _ = (stream, sequence);
        Err(BusError::unsupported(
            "deleting stored messages",
            self.backend_name(),
        ))
    }

    /// The tenant this bus is confined to, if any (`NatsBus::for_tenant`).
    /// What is stored outside the bus under its names (the runner's
    /// idempotency-inbox keys) is scoped by it, so that tenants sharing one
    /// inbox table never collide.
    fn tenant(&self) -> Option<&str> {
        None
    }

    /// What this backend guarantees where backends differ (see
    /// [`BusCapabilities`]). The default is everything the trait's
    /// documentation describes, as the in-memory bus and NATS give it; a
    /// backend that cannot give one says so here, and a decorator forwards
    /// its inner bus's answer.
    fn capabilities(&self) -> BusCapabilities {
        BusCapabilities::FULL
    }
}

/// Where backends differ: what [`EventBus::capabilities`] declares. A module
/// that relies on one reads it instead of assuming NATS; the conformance
/// kit asserts, for each `false`, the documented fallback behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BusCapabilities {
    /// The backend drops a repeated message id within its de-duplication
    /// window ([`PublishAck::duplicate`]). When `false` (Kafka), a repeated
    /// id is stored and delivered again, always with `duplicate: false`;
    /// the runner's idempotency inbox drops the repeat.
    pub dedup_by_id: bool,
    /// A durable consumer can start at any stored sequence
    /// ([`StartPosition::Sequence`](crate::StartPosition::Sequence)). When
    /// `false` (Kafka, whose positions are per partition), it can on a
    /// one-partition topic and is `Unsupported` otherwise.
    pub start_at_sequence: bool,
    /// [`EventBus::stored_streams`], [`EventBus::read_stored`] and
    /// [`EventBus::delete_stored`] work, so the dead-letter queue can be
    /// listed, replayed and discarded. When `false` they are `Unsupported`.
    pub stored_messages: bool,
    /// [`EventBus::consumer_state`] works (lag monitoring). When `false`
    /// it is `Unsupported`.
    pub consumer_state: bool,
    /// A subscriber sees messages of different subjects in the order they
    /// were stored (one stream per first token). When `false` (Kafka:
    /// partitions keyed by subject), order holds per subject (per key) only.
    pub order_across_subjects: bool,
    /// Instances of one durable consumer share the messages of a single
    /// subject. When `false` (Kafka: one partition per key, one owner per
    /// partition), they share the work across subjects (keys), and one
    /// subject's messages go to one instance at a time.
    pub shares_within_a_subject: bool,
}

impl BusCapabilities {
    /// Everything the trait documents.
    pub const FULL: BusCapabilities = BusCapabilities {
        dedup_by_id: true,
        start_at_sequence: true,
        stored_messages: true,
        consumer_state: true,
        order_across_subjects: true,
        shares_within_a_subject: true,
    };
}

/// The future returned by [`EventBus::publish`]: either already complete or a
/// boxed future. `Send`, resolves to `Result<(), BusError>`.
#[must_use = "a publish does nothing unless awaited"]
pub struct PublishFuture<'a>(PublishState<'a>);

enum PublishState<'a> {
    Ready(Option<Result<(), BusError>>),
    Boxed(Pin<Box<dyn Future<Output = Result<(), BusError>> + Send + 'a>>),
}

impl<'a> PublishFuture<'a> {
    /// A publish that has already finished with `result`.
    #[inline]
    pub fn ready(result: Result<(), BusError>) -> Self {
        PublishFuture(PublishState::Ready(Some(result)))
    }

    /// A publish that finishes when `future` does.
    pub fn new(future: impl Future<Output = Result<(), BusError>> + Send + 'a) -> Self {
        PublishFuture(PublishState::Boxed(Box::pin(future)))
    }
}

impl Future for PublishFuture<'_> {
    type Output = Result<(), BusError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            PublishState::Ready(r) => {
                Poll::Ready(r.take().expect("PublishFuture polled after completion"))
            }
            PublishState::Boxed(f) => f.as_mut().poll(cx),
        }
    }
}

impl fmt::Debug for PublishFuture<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            PublishState::Ready(_) => "PublishFuture(ready)",
            PublishState::Boxed(_) => "PublishFuture(pending)",
        })
    }
}

/// A live subscription: a `Stream` of [`BusMessage`] that is `Send + Unpin + 'static`.
///
/// Dropping it unsubscribes promptly. Backends build one from any stream with
/// [`Subscription::new`].
pub struct Subscription {
    pattern: String,
    inner: Pin<Box<dyn Stream<Item = BusMessage> + Send + 'static>>,
}

impl Subscription {
    /// Wraps a backend's message stream.
    pub fn new(
        pattern: impl Into<String>,
        stream: impl Stream<Item = BusMessage> + Send + 'static,
    ) -> Self {
        Subscription {
            pattern: pattern.into(),
            inner: Box::pin(stream),
        }
    }

    /// The pattern this subscription was made with.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
}

impl Stream for Subscription {
    type Item = BusMessage;

    #[inline]
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BusMessage>> {
        self.inner.as_mut().poll_next(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("pattern", &self.pattern)
            .finish_non_exhaustive()
    }
}

/// Health of a backend, for readiness probes and monitoring endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Fully working.
    Healthy,
    /// Working with reduced guarantees or capacity (e.g. reconnecting).
    Degraded,
    /// Not able to publish or deliver.
    Unhealthy,
}

/// The result of [`EventBus::health`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// The backend's name.
    pub backend: &'static str,
    /// Overall status.
    pub status: HealthStatus,
    /// A human-readable explanation (server version, connection state, ...).
    pub detail: String,
}

impl HealthReport {
    /// A report with any status.
    pub fn new(backend: &'static str, status: HealthStatus, detail: impl Into<String>) -> Self {
        HealthReport {
            backend,
            status,
            detail: detail.into(),
        }
    }

    /// A healthy report.
    pub fn healthy(backend: &'static str, detail: impl Into<String>) -> Self {
        Self::new(backend, HealthStatus::Healthy, detail)
    }

    /// Whether the status is [`HealthStatus::Healthy`].
    pub fn is_healthy(&self) -> bool {
        self.status == HealthStatus::Healthy
    }
}
