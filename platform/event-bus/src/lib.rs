//! # event-bus
//!
//! Platform-level messaging: one object-safe [`EventBus`] trait that every
//! module publishes and subscribes through, and two backends swapped by
//! configuration with zero code change:
//!
//! * [`InMemoryBus`]: in-process, no external dependencies, deterministic,
//!   sub-microsecond; for development and tests.
//! * `NatsBus` (feature `nats`, on by default): NATS JetStream; durable,
//!   at-least-once, multi-tenant by stream isolation; for production.
//!
//! ## Publishing
//!
//! ```
//! use event_bus::{EventBus, InMemoryBus};
//! use std::sync::Arc;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Development: In-Memory
//!     let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
//!
//!     // Production: NATS
//!     // let nats_client = async_nats::connect("nats://localhost:4222").await?;
//!     // let bus: Arc<dyn EventBus> = Arc::new(NatsBus::new(nats_client));
//!
//!     let payload = serde_json::to_vec(&serde_json::json!({
//!         "event_type": "user.created",
//!         "user_id": "usr_123",
//!         "timestamp": "2026-02-11T23:00:00Z"
//!     }))?;
//!
//!     bus.publish("auth.events.user.created", payload).await?;
//!     Ok(())
//! }
//! ```
//!
//! ## Subscribing
//!
//! `subscribe` takes a pattern with NATS wildcards and returns a `Stream` of
//! [`BusMessage`] (`Send + Unpin + 'static`):
//!
//! ```
//! use event_bus::{EventBus, InMemoryBus};
//! use futures::StreamExt;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let bus = InMemoryBus::new();
//!
//!     // Subscribe to all auth events
//!     let mut stream = bus.subscribe("auth.events.>").await?;
//! #   bus.publish("auth.events.user.created", br#"{"user_id":"usr_123"}"#.to_vec()).await?;
//! #   bus.close(); // so that this example ends
//!
//!     // Process events as they arrive
//!     while let Some(msg) = stream.next().await {
//!         println!("Received event on {}: {} bytes", msg.subject, msg.payload.len());
//!
//!         let event: serde_json::Value = serde_json::from_slice(&msg.payload)?;
//!         println!("Event: {:?}", event);
//!     }
//!     Ok(())
//! }
//! ```
//!
//! ## Subjects
//!
//! Exactly the NATS rules (see [`subject`]): `.`-separated non-empty tokens
//! without whitespace; `*` matches one token, `>` one or more trailing tokens.
//! Publishing needs a literal subject; bad input is an error naming it:
//!
//! ```
//! # use event_bus::{EventBus, InMemoryBus, ErrorKind};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let bus = InMemoryBus::new();
//! let err = bus.publish("auth.*.created", vec![]).await.unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::InvalidSubject);
//! assert!(err.to_string().contains("auth.*.created"));
//! # }
//! ```
//!
//! ## Config-driven swap
//!
//! [`config::connect`] turns a [`BusConfig`] (from a file and/or `EVENT_BUS_*`
//! environment variables) into an `Arc<dyn EventBus>`:
//!
//! ```
//! use event_bus::{BusConfig, EventBus};
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), event_bus::BusError> {
//! let config = BusConfig::load()?; // EVENT_BUS_CONFIG file, then EVENT_BUS_* variables
//! let bus: Arc<dyn EventBus> = event_bus::connect(&config).await?;
//! # Ok(()) }
//! ```
//!
//! ## Semantics per backend
//!
//! What `publish` returning `Ok` means, ordering, delivery, slow
//! subscribers, durability, de-duplication and limits on each backend are
//! in one table: the "Semantics" section of the repository's `README.md`
//! (kept there only, so that it cannot disagree with itself).
//!
//! ## Why the trait looks like this
//!
//! * **Object safety first.** Modules hold an `Arc<dyn EventBus>`
//!   (the spec's "Why Trait Object Instead of Generic?"), so every method is
//!   dyn-compatible: `async` methods via `async_trait`, results are concrete
//!   types ([`Subscription`], [`ConsumerStream`]) rather than associated types.
//! * **The spec's two methods never change.** `publish(&str, Vec<u8>)` and
//!   `subscribe(&str)` are the whole of what a module needs for fire-and-forget
//!   events and live views.
//! * **Extensions are defaulted methods, not new traits.** A backend that
//!   predates a capability keeps compiling and answers `Unsupported` (an
//!   error naming the feature) instead of silently doing less:
//!   * [`EventBus::publish_envelope`]: headers (trace context, schema version,
//!     ...) and a message id; NATS de-duplicates on it (`Nats-Msg-Id`) and the
//!     [`PublishAck`] says whether it was a duplicate.
//!   * [`EventBus::publish_batch`]: lets backends pipeline bulk publishes.
//!   * [`EventBus::open_consumer`]: a backend's raw named durable consumer
//!     with explicit [`Delivery::ack`], [`Delivery::nack`] (with delay),
//!     [`Delivery::term`], [`Delivery::in_progress`] and delivery counts.
//!     Callers use [`EventBusExt::consume`], which adds bounded redelivery
//!     and a dead-letter subject ([`ConsumerConfig`]) on top, the same for
//!     every backend ([`dlq`]).
//!   * [`EventBus::health`]: a [`HealthReport`] for readiness probes.
//! * **What every backend gets is built above the trait, once.** A backend
//!   provides the raw capability (`open_consumer`, `read_stored`, ...);
//!   [`EventBusExt::consume`] adds bounded redelivery, dead letters and the
//!   consumer metrics, and [`dlq::DeadLetterQueue`] reads dead letters back,
//!   for every backend alike, a third party's included ([`dlq`]).
//! * **Metrics and tracing wrap the trait instead of widening it.** Because
//!   every call goes through `dyn EventBus`, an observing decorator
//!   (`Arc<dyn EventBus>` in, `Arc<dyn EventBus>` out) can count and time every
//!   operation for any backend; trace context travels in [`Headers`]
//!   ([`message::header::TRACEPARENT`]), which every backend carries unchanged.
//! * **Messages are cheap to fan out.** [`BusMessage::payload`] is
//!   [`bytes::Bytes`] and the subject a shared [`Subject`], so ten subscribers
//!   share one buffer.
//! * **Errors are values to match on.** [`BusError::kind`] gives an
//!   [`ErrorKind`]; the message names the subject, field or limit at fault.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod bus;
pub mod config;
pub mod consumer;
pub mod dlq;
mod duration_str;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod memory;
pub mod message;
pub mod metrics;
#[cfg(feature = "nats")]
pub mod nats;
/// NATS JetStream: this build has no NATS backend (feature `nats` off), only
/// its settings, so that a configuration naming NATS still parses.
#[cfg(not(feature = "nats"))]
pub mod nats {
    mod config;
    pub use self::config::*;
}
/// Kafka: `KafkaBus` (feature `kafka`).
#[cfg(feature = "kafka")]
pub mod kafka;
/// Kafka: this build has no Kafka backend (feature `kafka` off), only its
/// settings, so that a configuration naming Kafka still parses.
#[cfg(not(feature = "kafka"))]
pub mod kafka {
    mod config;
    pub use self::config::*;
}
pub mod runner;
pub mod status;
pub mod subject;
pub mod trace;

pub use bus::{BusCapabilities, EventBus, HealthReport, HealthStatus, PublishFuture, Subscription};
pub use config::{connect, BusConfig, BusType};
pub use consumer::{AckKind, Acker, ConsumerConfig, ConsumerStream, Delivery, StartPosition};
pub use dlq::EventBusExt;
pub use error::{BusError, ErrorKind};
#[cfg(feature = "kafka")]
pub use kafka::KafkaBus;
pub use memory::{InMemoryBus, MemoryConfig, MemorySubscription, Overflow, SubscribeOptions};
pub use message::{BusMessage, Envelope, Headers, MessageId, PublishAck};
#[cfg(feature = "nats")]
pub use nats::{NatsBus, NatsBusBuilder};
pub use subject::Subject;

/// The async-nats version this crate is built against (for `NatsBus::new(client)`).
#[cfg(feature = "nats")]
pub use async_nats;
/// Re-exported so that payloads can be built without adding `bytes`.
pub use bytes::Bytes;
/// The rdkafka version `KafkaBus` is built against (for code that mixes it
/// with raw Kafka clients, such as the comparison bench).
#[cfg(feature = "kafka")]
pub use rdkafka;
