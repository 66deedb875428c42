//! [`KafkaBus`]: the trait on Kafka, through librdkafka (`rdkafka`).
//!
//! * **Subjects on topics** ([`topic`]): a subject's first token names its
//!   topic (`orders.eu.created` → topic `orders`; with tenant `acme`,
//!   `acme.orders`), created on demand with [`KafkaConfig::partitions`]
//!   partitions; the full subject travels in a header and is the record's
//!   default key, so events of one subject keep their order (one partition).
//!   Patterns are matched client-side with the crate's subject matcher; a
//!   pattern's first token must be literal.
//! * **`publish`** (`publish.rs`): an idempotent producer with `acks=all`:
//!   `Ok` once every in-sync replica stored the record. Headers are Kafka
//!   headers; a given message id travels in the `bus-id` header. Kafka does
//!   **not** de-duplicate by id: a repeated id is stored and delivered again
//!   (`PublishAck::duplicate` is always false); the runner's idempotency
//!   inbox drops the repeat.
//! * **`subscribe`** (`subscription.rs`): a live view with no consumer group:
//!   the topic's partitions assigned at their end offsets before the call
//!   returns, so every event published after it is delivered.
//! * **Durable consumers** (`consumer.rs`): one consumer group per consumer
//!   name; per-message answers are kept client-side and offsets committed
//!   only up to the lowest unsettled offset of each partition.
//!
//! * **Stored messages** (`stored.rs`): the dead-letter queue reads a
//!   topic's partitions as streams (`<topic>/<partition>`); removing a
//!   message appends a marker record that readers skip it by.
//!
//! Sequences ([`BusMessage::sequence`](crate::BusMessage), `PublishAck`) are
//! per partition: the record's offset + 1; `PublishAck::stream` is
//! `<topic>/<partition>`.

mod config;
mod consumer;
mod publish;
mod stored;
mod subscription;
pub mod topic;

pub use config::*;

use crate::bus::{EventBus, HealthReport, HealthStatus, PublishFuture, Subscription};
use crate::consumer::{ConsumerConfig, ConsumerStream};
use crate::error::{BusError, ErrorKind};
use crate::message::{Envelope, PublishAck};
use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest message `KafkaBus` publishes: payload, headers and message
/// id together at most 1 MiB (as NATS's default `max_payload`; Apache
/// Kafka's default `message.max.bytes` is 1 MiB plus record overhead, which
/// the bus's own subject header fits in). Larger ones are a
/// `PayloadTooLarge` error naming the subject and the sizes.
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// What Kafka guarantees of the trait's contract, and what it does not
/// (see the README's semantics table).
pub const SEMANTICS: &str = "kafka: no server-side de-duplication by message id; \
per-partition order (per subject by default); nack with delay and ack wait are applied \
client-side by the consumer instance; delivery counts are kept by the instance and restart \
at 1 after a rebalance or restart";

/// The Kafka backend. Cheap to clone (one producer, one admin client).
#[derive(Clone)]
pub struct KafkaBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: KafkaConfig,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// Topics known to exist (created or seen).
    topics: parking_lot::Mutex<HashSet<String>>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn backend_err(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::new(ErrorKind::Backend, format!("kafka: {what}: {e}"))
}

impl KafkaBus {
    /// Connects to the brokers `config` names: checks the settings, creates
    /// the producer and admin client, and fetches the cluster's metadata
    /// (an `Unavailable` error naming the brokers when none answers within
    /// `publish_timeout`).
    pub async fn connect(config: KafkaConfig) -> Result<Self, BusError> {
        config.validate()?;
        let mut producer_cfg = client_config(&config);
        producer_cfg
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set(
                "message.timeout.ms",
                config.publish_timeout.as_millis().to_string(),
            )
            .set("message.max.bytes", (MAX_PAYLOAD + 64 * 1024).to_string());
        let producer: FutureProducer = producer_cfg
            .create()
            .map_err(|e| BusError::new(ErrorKind::Config, format!("kafka producer: {e}")))?;
        let admin: AdminClient<DefaultClientContext> = client_config(&config)
            .create()
            .map_err(|e| BusError::new(ErrorKind::Config, format!("kafka admin client: {e}")))?;
        let bus = KafkaBus {
            inner: Arc::new(Inner {
                config,
                producer,
                admin,
                topics: parking_lot::Mutex::new(HashSet::new()),
            }),
        };
        bus.brokers().await?;
        Ok(bus)
    }

    /// The settings this bus was made with.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    fn tenant_opt(&self) -> Option<&str> {
        self.inner.config.tenant.as_deref()
    }

    /// The brokers in the cluster's metadata.
    async fn brokers(&self) -> Result<usize, BusError> {
        let producer = self.inner.producer.clone();
        let timeout = self.inner.config.publish_timeout;
        let bootstrap = self.inner.config.bootstrap();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, timeout)
                .map(|m| m.brokers().len())
        })
        .await
        .map_err(|e| backend_err("metadata task", e))?
        .map_err(|e| {
            BusError::new(
                ErrorKind::Unavailable,
                format!("kafka: no broker of {bootstrap} answered within {timeout:?}: {e}"),
            )
        })
    }

    /// Partitions of `topic` (after [`ensure_topic`](Self::ensure_topic)),
    /// waiting until the metadata shows them.
    pub(crate) async fn partitions(&self, topic: &str) -> Result<Vec<i32>, BusError> {
        let timeout = self.inner.config.publish_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            let parts = self.existing_partitions(topic).await?;
            if !parts.is_empty() {
                return Ok(parts);
            }
            if Instant::now() >= deadline {
                return Err(BusError::new(
                    ErrorKind::Timeout,
                    format!(
                        "kafka: topic {topic} has no partitions in the metadata after {timeout:?}"
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates `topic` unless it is known to exist.
    pub(crate) async fn ensure_topic(&self, topic: &str) -> Result<(), BusError> {
        if self.inner.topics.lock().contains(topic) {
            return Ok(());
        }
        let cfg = &self.inner.config;
        let new = NewTopic::new(
            topic,
            cfg.partitions,
            TopicReplication::Fixed(cfg.replication_factor.into()),
        );
        let opts = AdminOptions::new().operation_timeout(Some(cfg.publish_timeout));
        let results = self
            .inner
            .admin
            .create_topics([&new], &opts)
            .await
            .map_err(|e| backend_err(&format!("creating topic {topic}"), e))?;
        for r in results {
            match r {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(backend_err(&format!("creating topic {name}"), code));
                }
            }
        }
        // Wait until the metadata shows it, so that a consumer assigned
        // right after sees its partitions.
        self.partitions(topic).await?;
        self.inner.topics.lock().insert(topic.to_string());
        Ok(())
    }
}

/// The settings every client of the bus shares: brokers, id, security.
pub(crate) fn client_config(c: &KafkaConfig) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", c.bootstrap())
        .set("client.id", &c.client_id)
        .set("security.protocol", c.security_protocol.as_str())
        .set("log_level", "3");
    if let Some(m) = &c.sasl_mechanism {
        cfg.set("sasl.mechanism", m);
    }
    if let Some(u) = &c.sasl_username {
        cfg.set("sasl.username", u);
    }
    if let Some(p) = &c.sasl_password {
        cfg.set("sasl.password", p.expose());
    }
    if let Some(p) = &c.tls_ca_file {
        cfg.set("ssl.ca.location", p.display().to_string());
    }
    if let Some(p) = &c.tls_cert_file {
        cfg.set("ssl.certificate.location", p.display().to_string());
    }
    if let Some(p) = &c.tls_key_file {
        cfg.set("ssl.key.location", p.display().to_string());
    }
    if let Some(p) = &c.tls_key_password {
        cfg.set("ssl.key.password", p.expose());
    }
    cfg
}

#[async_trait]
impl EventBus for KafkaBus {
    fn publish<'a>(&'a self, subject: &'a str, payload: Vec<u8>) -> PublishFuture<'a> {
        PublishFuture::new(async move {
            self.publish_one(Envelope::new(subject, payload))
                .await
                .map(|_| ())
        })
    }

    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BusError> {
        self.subscribe_live(pattern).await
    }

    async fn publish_envelope(&self, envelope: Envelope) -> Result<PublishAck, BusError> {
        self.publish_one(envelope).await
    }

    async fn publish_batch(&self, envelopes: Vec<Envelope>) -> Vec<Result<PublishAck, BusError>> {
        self.publish_many(envelopes).await
    }

    async fn open_consumer(&self, config: ConsumerConfig) -> Result<ConsumerStream, BusError> {
        consumer::open(self, config).await
    }

    async fn health(&self) -> HealthReport {
        match self.brokers().await {
            Ok(n) => HealthReport::healthy("kafka", format!("{n} broker(s) in the metadata")),
            Err(e) => HealthReport::new("kafka", HealthStatus::Unhealthy, e.to_string()),
        }
    }

    fn backend_name(&self) -> &'static str {
        "kafka"
    }

    async fn flush(&self) -> Result<(), BusError> {
        let producer = self.inner.producer.clone();
        let timeout = self.inner.config.publish_timeout;
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| backend_err("flush task", e))?
            .map_err(|e| backend_err("flush", e))
    }

    fn tenant(&self) -> Option<&str> {
        self.tenant_opt()
    }

    /// One stream per partition of the pattern's topic, `<topic>/<partition>`.
    async fn stored_streams(&self, pattern: &str) -> Result<Vec<String>, BusError> {
        self.stored_partitions(pattern).await
    }

    async fn read_stored(
        &self,
        stream: &str,
        pattern: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<crate::BusMessage>, BusError> {
        self.read_partition(stream, pattern, from, max).await
    }

    /// Appends a marker to the partition that readers skip the message by
    /// (a Kafka log cannot drop one record; see `stored.rs`).
    async fn delete_stored(&self, stream: &str, sequence: u64) -> Result<(), BusError> {
        self.remove_from_partition(stream, sequence).await
    }

    fn capabilities(&self) -> crate::BusCapabilities {
        let mut c = crate::BusCapabilities::FULL;
        c.dedup_by_id = false;
        c.start_at_sequence = false;
        c.consumer_state = false;
        c.order_across_subjects = false;
        c.shares_within_a_subject = false;
        c
    }
}
