//! Durable consumption: the types of
//! [`EventBusExt::consume`](crate::EventBusExt::consume) and of a backend's
//! [`EventBus::open_consumer`](crate::EventBus::open_consumer).
//!
//! `subscribe` is a live view: what is published while nobody listens is not
//! delivered to that subscription. Services that must not miss or
//! half-process an event open a named durable consumer instead and
//! acknowledge each [`Delivery`] explicitly:
//!
//! * [`Delivery::ack`]: done; never delivered again.
//! * [`Delivery::nack`]: failed; deliver again (after an optional delay).
//! * [`Delivery::term`]: never deliver again, without processing it.
//! * [`Delivery::in_progress`]: still working; restart the ack timer.
//! * no answer within [`ConsumerConfig::ack_wait`]: delivered again.
//!
//! # What an `Ok` answer guarantees
//!
//! Every answer (`ack`, `nack`, `term`, `in_progress`, `dead_letter`)
//! returns `Ok` only once the backend has applied it:
//!
//! * `NatsBus`: the server has confirmed it (a JetStream "double ack": the
//!   answer is sent with a reply subject and the server replies once it has
//!   processed it; on a replicated consumer, once it is replicated). An
//!   acked message is then never delivered again, also after this process
//!   exits or the connection drops.
//! * `InMemoryBus`: the answer is applied to the consumer synchronously.
//!
//! An `Err` means the backend may or may not have applied the answer: an
//! acked message may still be delivered again (delivery is at least once).
//! Every answer is bounded in time: on NATS by the bus's publish timeout
//! (an [`ErrorKind::Timeout`] error, never a hang during an outage).
//!
//! [`Delivery::ack_nowait`] is the fire-and-forget form: `Ok` once the ack
//! is handed to the client, before the server has it. Use it only where a
//! redelivery is harmless, and close such a consumer with a flush
//! (`NatsBus::flush`) so that what was acked reaches the server before the
//! process exits.
//!
//! Each delivery carries its delivery count. After
//! [`ConsumerConfig::max_deliver`] deliveries a message that is still not
//! acknowledged goes to [`ConsumerConfig::dead_letter_subject`] with headers
//! naming its origin (see [`dlq`](crate::dlq)), and is terminated. A message whose dead
//! letter cannot be published is never dropped: it stays pending, the
//! failure is logged and yielded as an error item, and the dead-lettering is
//! retried on later deliveries.

pub mod lag;

use crate::error::{BusError, ErrorKind};
use crate::message::BusMessage;
use async_trait::async_trait;
use futures::Stream;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::time::Duration;

/// The largest [`ConsumerConfig::max_deliver`] accepted (a million
/// deliveries is "unlimited" in practice; larger values are refused so that
/// no count arithmetic can overflow).
pub const MAX_DELIVER: u32 = 1_000_000;

/// How long a message handed back at shutdown (by a consumer stream or the
/// runner) waits before it is delivered again: long enough for the
/// handing-back instance's pull to be gone, so that the message goes to
/// another instance rather than back to the pull that is closing (where,
/// on NATS, it would wait out its ack wait).
pub const HAND_BACK_DELAY: Duration = Duration::from_secs(1);

/// The longest wait a consumer takes: [`ConsumerConfig::ack_wait`] and each
/// [`ConsumerConfig::backoff`] step above it are refused, and nack delays
/// above it are shortened to it (one week).
pub const MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Where a new durable consumer starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartPosition {
    /// With messages published after the consumer is first created.
    #[default]
    New,
    /// With the oldest message the backend still holds.
    All,
    /// With the message at this sequence.
    Sequence(u64),
}

/// A durable consumer's state, as [`EventBus::consumer_state`] samples it
/// for lag monitoring ([`lag`]).
///
/// [`EventBus::consumer_state`]: crate::EventBus::consumer_state
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerState {
    /// The durable name.
    pub name: String,
    /// Its filter.
    pub filter: String,
    /// Its position, a number that grows as it finishes messages: the
    /// acknowledged floor's stream sequence on NATS, the count of
    /// finished (acked, terminated, dead-lettered) messages in memory.
    pub position: u64,
    /// Messages not delivered yet.
    pub pending: u64,
    /// Messages delivered and not answered yet.
    pub ack_pending: u64,
    /// Deliveries that were redeliveries.
    pub redelivered: u64,
    /// Whether an instance is consuming now (an open consumer stream; on
    /// NATS, a pull request waiting).
    pub alive: bool,
    /// How long since the consumer last showed activity (a delivery, an
    /// acknowledgement; zero while alive), if ever.
    pub idle_for: Option<Duration>,
}

impl ConsumerState {
    /// What it has not finished: pending plus awaiting an answer.
    pub fn lag(&self) -> u64 {
        self.pending.saturating_add(self.ack_pending)
    }
}

/// Checks a consumer configuration; the error names the field and the value.
pub(crate) fn validate_config(config: &ConsumerConfig) -> Result<(), BusError> {
    let bad = |field: &str, value: String, why: &str| {
        BusError::new(
            ErrorKind::Config,
            format!(
                "invalid consumer configuration `{field}` = {value:?} for consumer {:?}: {why}",
                config.name
            ),
        )
    };
    if config.name.is_empty()
        || config.name.chars().any(|c| {
            matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace() || c.is_control()
        })
    {
        return Err(bad(
            "name",
            config.name.clone(),
            "a consumer name is non-empty without `.`, `*`, `>`, slashes or whitespace",
        ));
    }
    crate::subject::validate_bus_pattern(&config.filter)?;
    if config.max_deliver == 0 {
        return Err(bad("max_deliver", "0".into(), "must be at least 1"));
    }
    if config.max_deliver > MAX_DELIVER {
        return Err(bad(
            "max_deliver",
            config.max_deliver.to_string(),
            &format!("must be at most {MAX_DELIVER} (MAX_DELIVER)"),
        ));
    }
    if config.ack_wait < std::time::Duration::from_millis(10) || config.ack_wait > MAX_WAIT {
        return Err(bad(
            "ack_wait",
            format!("{:?}", config.ack_wait),
            &format!("must be at least 10ms and at most {MAX_WAIT:?} (MAX_WAIT)"),
        ));
    }
    if let Some(step) = config.backoff.iter().find(|d| **d > MAX_WAIT) {
        return Err(bad(
            "backoff",
            format!("{step:?}"),
            &format!("each step must be at most {MAX_WAIT:?} (MAX_WAIT)"),
        ));
    }
    if config.max_ack_pending == 0 {
        return Err(bad("max_ack_pending", "0".into(), "must be at least 1"));
    }
    if let Some(dlq) = &config.dead_letter_subject {
        crate::subject::validate_bus_subject(dlq)?;
        if crate::subject::matches(&config.filter, dlq) {
            return Err(bad(
                "dead_letter_subject",
                dlq.clone(),
                "must not match the consumer's own filter (dead letters would be consumed again)",
            ));
        }
    }
    Ok(())
}

/// Configuration of a named durable consumer.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// The durable name; instances sharing it share the work.
    pub name: String,
    /// The subject pattern to consume (wildcards allowed).
    pub filter: String,
    /// How long a delivery may stay unanswered before it is delivered again.
    pub ack_wait: Duration,
    /// Deliveries after which an unacknowledged message is dead-lettered (at least 1).
    pub max_deliver: u32,
    /// Redelivery delays applied to a [`Delivery::nack`] without a delay,
    /// after the 1st, 2nd, ... delivery; the last one repeats. Empty: a nack
    /// without a delay is redelivered at once. (A delivery that is not
    /// answered is redelivered after `ack_wait`.)
    pub backoff: Vec<Duration>,
    /// Where dead letters go; `None` terminates them without a copy.
    pub dead_letter_subject: Option<String>,
    /// Most deliveries in flight (unacknowledged) at once, across instances.
    pub max_ack_pending: usize,
    /// Where a newly created consumer starts.
    pub start: StartPosition,
    /// How long opening the consumer ([`EventBusExt::consume`](crate::EventBusExt::consume))
    /// retries transient failures, with backoff, before giving up with an
    /// error saying what it waited for: on NATS, timeouts and a cluster
    /// without a JetStream leader yet (e.g. a busy or re-electing meta
    /// leader). Zero: one attempt. Default [`DEFAULT_OPEN_TIMEOUT`].
    pub open_timeout: Duration,
}

/// The default [`ConsumerConfig::open_timeout`]: generous, as a service
/// that cannot open its consumers does nothing else useful.
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_secs(30);

impl ConsumerConfig {
    /// A consumer named `name` on `filter`, with defaults: 30 s ack wait,
    /// 5 deliveries, no backoff, dead letters to `dlq.<name>`, 1,000 in flight,
    /// starting with new messages.
    pub fn new(name: impl Into<String>, filter: impl Into<String>) -> Self {
        let name = name.into();
        ConsumerConfig {
            dead_letter_subject: Some(format!("dlq.{name}")),
            name,
            filter: filter.into(),
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            backoff: Vec::new(),
            max_ack_pending: 1000,
            start: StartPosition::New,
            open_timeout: DEFAULT_OPEN_TIMEOUT,
        }
    }

    /// Sets [`ack_wait`](Self::ack_wait).
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.ack_wait = d;
        self
    }

    /// Sets [`max_deliver`](Self::max_deliver).
    pub fn max_deliver(mut self, n: u32) -> Self {
        self.max_deliver = n;
        self
    }

    /// Sets [`backoff`](Self::backoff).
    pub fn backoff(mut self, delays: Vec<Duration>) -> Self {
        self.backoff = delays;
        self
    }

    /// Sets [`dead_letter_subject`](Self::dead_letter_subject).
    pub fn dead_letter_subject(mut self, subject: Option<String>) -> Self {
        self.dead_letter_subject = subject;
        self
    }

    /// Sets [`max_ack_pending`](Self::max_ack_pending).
    pub fn max_ack_pending(mut self, n: usize) -> Self {
        self.max_ack_pending = n;
        self
    }

    /// Sets [`start`](Self::start).
    pub fn start(mut self, start: StartPosition) -> Self {
        self.start = start;
        self
    }

    /// Sets [`open_timeout`](Self::open_timeout).
    pub fn open_timeout(mut self, d: Duration) -> Self {
        self.open_timeout = d;
        self
    }
}

/// An answer to a delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AckKind {
    /// Processed; never deliver again.
    Ack,
    /// Not processed; deliver again, after the delay if one is given.
    Nack {
        /// Earliest redelivery.
        delay: Option<Duration>,
        /// Why, recorded as the last error if the message is dead-lettered.
        reason: Option<String>,
    },
    /// Never deliver again, unprocessed.
    Term {
        /// Why.
        reason: Option<String>,
    },
    /// Still working; restart the ack timer.
    InProgress,
    /// Send to the dead-letter subject now, then terminate.
    DeadLetter {
        /// Why (recorded as the last error).
        reason: String,
        /// Extra headers for the dead letter (e.g. the handler's name).
        headers: crate::message::Headers,
    },
}

/// The backend side of a [`Delivery`]: carries an answer back to the backend.
#[async_trait]
pub trait Acker: Send + Sync {
    /// Sends `kind` for the delivery this acker belongs to and returns `Ok`
    /// once the backend has applied it (see the [module docs](self)).
    async fn answer(&self, kind: AckKind) -> Result<(), BusError>;

    /// Sends `kind` without waiting for the backend to confirm it: `Ok` once
    /// it is on its way. The default waits for the confirmation (for
    /// backends that apply answers synchronously the two are the same).
    async fn answer_nowait(&self, kind: AckKind) -> Result<(), BusError> {
        self.answer(kind).await
    }
}

/// One delivery of a message to a durable consumer.
///
/// Dereferences to the [`BusMessage`]. Dropping it without an answer is like
/// not answering: the message is delivered again after the ack wait.
pub struct Delivery {
    message: BusMessage,
    delivery_count: u32,
    acker: Box<dyn Acker>,
}

impl Delivery {
    /// A delivery, for backends.
    pub fn new(message: BusMessage, delivery_count: u32, acker: Box<dyn Acker>) -> Self {
        Delivery {
            message,
            delivery_count,
            acker,
        }
    }

    /// The message.
    pub fn message(&self) -> &BusMessage {
        &self.message
    }

    /// How many times this message has been delivered to this consumer, this time included (1 = first).
    pub fn delivery_count(&self) -> u32 {
        self.delivery_count
    }

    /// Acknowledges: the message is processed and never delivered again.
    ///
    /// `Ok` means the backend has the ack: on NATS the server confirmed it
    /// (double ack), in memory it was applied. After an `Err` the message
    /// may be delivered again. Bounded in time (on NATS by the bus's publish
    /// timeout). Acks of several deliveries may be awaited concurrently: they
    /// are pipelined on one connection.
    pub fn ack(self) -> impl Future<Output = Result<(), BusError>> + Send + 'static {
        self.answer(AckKind::Ack)
    }

    /// Acknowledges without waiting for the backend's confirmation
    /// (fire-and-forget): `Ok` once the ack is handed to the client.
    ///
    /// On NATS the ack may still be lost (the connection drops before it is
    /// written, or the process exits first), and the message is then
    /// delivered again after the ack wait. Before exiting, close the consumer
    /// with a flush (`NatsBus::flush`), which returns once the server has
    /// received everything sent so far. In memory this is [`ack`](Self::ack).
    pub fn ack_nowait(self) -> impl Future<Output = Result<(), BusError>> + Send + 'static {
        let acker = self.acker;
        async move { acker.answer_nowait(AckKind::Ack).await }
    }

    /// Negative acknowledgement: deliver again, not before `delay` if given.
    pub fn nack(
        self,
        delay: Option<Duration>,
    ) -> impl Future<Output = Result<(), BusError>> + Send + 'static {
        self.answer(AckKind::Nack {
            delay,
            reason: None,
        })
    }

    /// Like [`nack`](Self::nack), recording `reason` as the last error.
    pub fn nack_with_reason(
        self,
        delay: Option<Duration>,
        reason: impl Into<String>,
    ) -> impl Future<Output = Result<(), BusError>> + Send + 'static {
        self.answer(AckKind::Nack {
            delay,
            reason: Some(reason.into()),
        })
    }

    /// Terminates: never delivered again.
    pub fn term(
        self,
        reason: Option<String>,
    ) -> impl Future<Output = Result<(), BusError>> + Send + 'static {
        self.answer(AckKind::Term { reason })
    }

    /// Sends the message to the consumer's dead-letter subject with `reason`
    /// as its last error, then terminates it.
    pub fn dead_letter(
        self,
        reason: impl Into<String>,
    ) -> impl Future<Output = Result<(), BusError>> + Send + 'static {
        self.dead_letter_with(reason, crate::message::Headers::new())
    }

    /// Like [`dead_letter`](Self::dead_letter), adding `headers` to the dead letter.
    pub fn dead_letter_with(
        self,
        reason: impl Into<String>,
        headers: crate::message::Headers,
    ) -> impl Future<Output = Result<(), BusError>> + Send + 'static {
        self.answer(AckKind::DeadLetter {
            reason: reason.into(),
            headers,
        })
    }

    /// Sends `kind`, consuming the delivery. The future holds only the acker
    /// (it is small, and `'static`: it can be spawned).
    pub(crate) fn answer(
        self,
        kind: AckKind,
    ) -> impl Future<Output = Result<(), BusError>> + Send + 'static {
        let acker = self.acker;
        async move { acker.answer(kind).await }
    }

    /// Signals work in progress: restarts the ack timer. `Ok` once the
    /// backend has applied it (see [`ack`](Self::ack)).
    pub async fn in_progress(&self) -> Result<(), BusError> {
        self.acker.answer(AckKind::InProgress).await
    }

    /// Splits the delivery into its message and its acker.
    pub fn into_parts(self) -> (BusMessage, u32, Box<dyn Acker>) {
        (self.message, self.delivery_count, self.acker)
    }
}

impl Deref for Delivery {
    type Target = BusMessage;
    fn deref(&self) -> &BusMessage {
        &self.message
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("delivery_count", &self.delivery_count)
            .finish_non_exhaustive()
    }
}

/// The stream of deliveries of a durable consumer.
///
/// An `Err` item reports a problem the consumer recovers from (e.g. a lost
/// connection); the stream ends when the consumer is closed.
pub type ConsumerStream = Pin<Box<dyn Stream<Item = Result<Delivery, BusError>> + Send + 'static>>;
