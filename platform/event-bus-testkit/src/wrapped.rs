//! [`WrappedBus`]: a backend written outside `event-bus`, as a third party
//! would write one.
//!
//! It forwards every [`EventBus`] method to an inner [`InMemoryBus`] and has
//! no dead-letter code of its own: its durable consumers are the inner
//! bus's raw ones ([`EventBus::open_consumer`]), and bounded redelivery,
//! dead letters, consumer metrics and spans come from
//! [`EventBusExt::consume`](event_bus::EventBusExt::consume) above it, as for
//! every backend. The conformance suite runs on it
//! (`tests/conformance_wrapped.rs`) to show that this is enough.
//!
//! ```
//! use event_bus::{ConsumerConfig, EventBus, EventBusExt};
//! use event_bus_testkit::wrapped::WrappedBus;
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), event_bus::BusError> {
//! let bus: Arc<dyn EventBus> = Arc::new(WrappedBus::new());
//! assert_eq!(bus.backend_name(), "wrapped");
//! let _consumer = bus.consume(ConsumerConfig::new("billing", "orders.>")).await?;
//! # Ok(()) }
//! ```

use event_bus::consumer::ConsumerState;
use event_bus::{
    BusError, BusMessage, ConsumerConfig, ConsumerStream, Envelope, EventBus, HealthReport,
    InMemoryBus, MemoryConfig, PublishAck, PublishFuture, Subscription,
};

/// An [`EventBus`] that forwards every method to an inner [`InMemoryBus`],
/// under the backend name `"wrapped"`.
#[derive(Clone, Debug, Default)]
pub struct WrappedBus {
    inner: InMemoryBus,
}

impl WrappedBus {
    /// Around a new in-memory bus with the default configuration.
    pub fn new() -> Self {
        WrappedBus::around(InMemoryBus::new())
    }

    /// Around a new in-memory bus configured by `config`.
    pub fn with_config(config: MemoryConfig) -> Self {
        WrappedBus::around(InMemoryBus::with_config(config))
    }

    /// Around `inner`.
    pub fn around(inner: InMemoryBus) -> Self {
        WrappedBus { inner }
    }

    /// The inner bus.
    pub fn inner(&self) -> &InMemoryBus {
        &self.inner
    }
}

#[async_trait::async_trait]
impl EventBus for WrappedBus {
    fn publish<'a>(&'a self, subject: &'a str, payload: Vec<u8>) -> PublishFuture<'a> {
        EventBus::publish(&self.inner, subject, payload)
    }

    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BusError> {
        EventBus::subscribe(&self.inner, pattern).await
    }

    async fn publish_envelope(&self, envelope: Envelope) -> Result<PublishAck, BusError> {
        EventBus::publish_envelope(&self.inner, envelope).await
    }

    async fn publish_batch(&self, envelopes: Vec<Envelope>) -> Vec<Result<PublishAck, BusError>> {
        EventBus::publish_batch(&self.inner, envelopes).await
    }

    async fn open_consumer(&self, config: ConsumerConfig) -> Result<ConsumerStream, BusError> {
        self.inner.open_consumer(config).await
    }

    async fn consumer_state(&self, name: &str, filter: &str) -> Result<ConsumerState, BusError> {
        self.inner.consumer_state(name, filter).await
    }

    async fn health(&self) -> HealthReport {
        let inner = EventBus::health(&self.inner).await;
        HealthReport::new("wrapped", inner.status, inner.detail)
    }

    fn backend_name(&self) -> &'static str {
        "wrapped"
    }

    async fn flush(&self) -> Result<(), BusError> {
        EventBus::flush(&self.inner).await
    }

    async fn stored_streams(&self, pattern: &str) -> Result<Vec<String>, BusError> {
        self.inner.stored_streams(pattern).await
    }

    async fn read_stored(
        &self,
        stream: &str,
        pattern: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<BusMessage>, BusError> {
        self.inner.read_stored(stream, pattern, from, max).await
    }

    async fn delete_stored(&self, stream: &str, sequence: u64) -> Result<(), BusError> {
        self.inner.delete_stored(stream, sequence).await
    }

    fn tenant(&self) -> Option<&str> {
        EventBus::tenant(&self.inner)
    }

    fn capabilities(&self) -> event_bus::BusCapabilities {
        EventBus::capabilities(&self.inner)
    }
}
