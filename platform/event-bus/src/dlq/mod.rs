//! Dead letters, above the backends: bounded redelivery on consume, and
//! reading, replaying and discarding what was given up on.
//!
//! # For a backend author
//!
//! A backend implements one method for durable consumption,
//! [`EventBus::open_consumer`]: its *raw* named durable consumer, with
//! explicit acknowledgement ([`AckKind`](crate::AckKind): ack, nack with a
//! delay, term, in progress), a delivery count on each
//! [`Delivery`](crate::Delivery) and
//! redelivery of what is not answered within
//! [`ConsumerConfig::ack_wait`]. It neither counts deliveries against
//! [`ConsumerConfig::max_deliver`] nor publishes dead letters: it keeps
//! delivering a message until it is acked or terminated, and treats
//! [`AckKind::DeadLetter`](crate::AckKind::DeadLetter) like a term (this
//! layer never passes one down).
//!
//! Callers open consumers with [`EventBusExt::consume`], which validates the
//! configuration, calls `open_consumer` and wraps the raw stream with
//! [`with_dead_letters`]. So every backend, inside this crate or not, gets
//! the same, once:
//!
//! * at most `max_deliver` deliveries shown to the handler; a nack on the
//!   last one, a [`Delivery::dead_letter`](crate::Delivery::dead_letter),
//!   or a delivery beyond the limit (the last one went unanswered)
//!   publishes a dead letter to
//!   [`ConsumerConfig::dead_letter_subject`] with the headers below, then
//!   terminates the message; a dead letter that cannot be published keeps
//!   the message pending (retried with a growing delay, reported as an
//!   error item), it is never dropped;
//! * nack delays from [`ConsumerConfig::backoff`] (the raw consumer is
//!   handed a nack with the delay to apply);
//! * the consumer metrics (`event_bus.consumer.*`, see [`crate::metrics`])
//!   and the received/settle spans (see [`crate::trace`]).
//!
//! Dead letters are published through the bus `consume` was called on,
//! with [`EventBus::publish_envelope`] (headers and a message id).
//!
//! For reading them back a backend implements
//! [`stored_streams`](EventBus::stored_streams),
//! [`read_stored`](EventBus::read_stored) and
//! [`delete_stored`](EventBus::delete_stored); [`DeadLetterQueue`] then
//! lists, replays and discards the dead letters in place.
//!
//! ```
//! use event_bus::{dlq::DeadLetterQueue, ConsumerConfig, EventBus, EventBusExt, InMemoryBus};
//! use futures::StreamExt;
//! use std::{sync::Arc, time::Duration};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), event_bus::BusError> {
//! let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
//! let mut orders = bus
//!     .consume(ConsumerConfig::new("billing", "orders.>").max_deliver(1))
//!     .await?;
//! bus.publish("orders.created", b"{}".to_vec()).await?;
//! let delivery = orders.next().await.expect("a delivery")?;
//! delivery.nack(None).await?; // the last allowed delivery: dead-lettered
//!
//! let mut dead = DeadLetterQueue::open(bus.clone(), "dlq.billing", "doc").await?;
//! let letter = dead.next(Duration::from_secs(5)).await?.expect("a dead letter");
//! assert_eq!(letter.original_subject(), Some("orders.created"));
//! letter.replay().await?; // back on orders.created, gone from the dead letters
//! # Ok(()) }
//! ```

mod counters;
mod layer;
mod queue;

pub use layer::with_dead_letters;
pub use queue::{DeadLetter, DeadLetterQueue};

use crate::bus::EventBus;
use crate::consumer::{ConsumerConfig, ConsumerStream};
use crate::error::BusError;
use async_trait::async_trait;
use std::sync::Arc;

/// The subject the message was originally published to.
pub const ORIGINAL_SUBJECT: &str = "Bus-Dlq-Original-Subject";
/// Its sequence in the original stream or bus.
pub const ORIGINAL_SEQUENCE: &str = "Bus-Dlq-Original-Sequence";
/// Its message id.
pub const ORIGINAL_ID: &str = "Bus-Dlq-Original-Id";
/// The consumer that gave up on it.
pub const CONSUMER: &str = "Bus-Dlq-Consumer";
/// How many times it was delivered.
pub const DELIVERY_COUNT: &str = "Bus-Dlq-Delivery-Count";
/// The last error (the reason given to the last nack or term).
pub const LAST_ERROR: &str = "Bus-Dlq-Last-Error";
/// The handler that gave up on it (set by the event runner).
pub const HANDLER: &str = "Bus-Dlq-Handler";
/// When it was dead-lettered (RFC 3339, UTC, milliseconds).
pub const TIME: &str = "Bus-Dlq-Time";
/// Set when the dead letter with the original payload would exceed the
/// size limit (`max_payload`): the dead letter then carries no payload
/// and none of the original headers (only the `Bus-Dlq-*` ones), and this
/// header gives the original payload's size in bytes. The original is
/// found by its subject, sequence and id (on NATS it stays in its stream).
pub const TRUNCATED: &str = "Bus-Dlq-Truncated";
/// Prefix shared by every dead-letter header.
pub const PREFIX: &str = "Bus-Dlq-";

/// Durable consumption with dead letters, for every [`EventBus`]
/// (re-exported as `event_bus::EventBusExt`).
///
/// Implemented for `Arc<dyn EventBus>`, for `Arc<B>` of any backend type
/// `B`, and for any backend that is `Clone` (a handle such as
/// [`InMemoryBus`](crate::InMemoryBus) or `NatsBus`, cloned once into an
/// `Arc` per consumer opened).
#[async_trait]
pub trait EventBusExt {
    /// Opens (or joins) the named durable consumer described by `config`:
    /// explicit ack, nack with delay, term, delivery counts, bounded
    /// redelivery and a dead-letter subject. Instances sharing a name share
    /// the work.
    ///
    /// The configuration is checked first (a [`Config`](crate::ErrorKind::Config)
    /// error naming the field and value); then the backend's raw consumer
    /// ([`EventBus::open_consumer`]; `Unsupported` if it has none) is
    /// wrapped with [`with_dead_letters`], which publishes dead letters
    /// through this bus (see the [module docs](self)).
    async fn consume(&self, config: ConsumerConfig) -> Result<ConsumerStream, BusError>;
}

/// [`EventBusExt::consume`] on `bus`.
async fn consume(
    bus: Arc<dyn EventBus>,
    config: ConsumerConfig,
) -> Result<ConsumerStream, BusError> {
    crate::consumer::validate_config(&config)?;
    let raw = bus.open_consumer(config.clone()).await?;
    Ok(with_dead_letters(raw, bus, &config))
}

#[async_trait]
impl EventBusExt for Arc<dyn EventBus> {
    async fn consume(&self, config: ConsumerConfig) -> Result<ConsumerStream, BusError> {
        consume(self.clone(), config).await
    }
}

#[async_trait]
impl<B: EventBus + 'static> EventBusExt for Arc<B> {
    async fn consume(&self, config: ConsumerConfig) -> Result<ConsumerStream, BusError> {
        consume(self.clone(), config).await
    }
}

#[async_trait]
impl<B: EventBus + Clone + 'static> EventBusExt for B {
    async fn consume(&self, config: ConsumerConfig) -> Result<ConsumerStream, BusError> {
        consume(Arc::new(self.clone()), config).await
    }
}
