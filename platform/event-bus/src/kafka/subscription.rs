//! `subscribe`: a live view of a pattern, with no consumer group. The
//! pattern's topic is assigned at each partition's end offset before
//! `subscribe` returns, so every event published after it is delivered;
//! records are matched client-side against the pattern.

use super::topic::{topic_for_pattern, ID_HEADER, SUBJECT_HEADER};
use super::{backend_err, client_config, KafkaBus};
use crate::bus::Subscription;
use crate::error::BusError;
use crate::message::{BusMessage, Headers, MessageId};
use crate::subject::{matches, validate_bus_pattern, Subject};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers as _, Message};
use rdkafka::{Offset, TopicPartitionList};

/// How many received messages wait for a slow subscriber before the
/// subscription stops fetching (Kafka keeps the rest: nothing is lost).
const BUFFER: usize = 1024;

/// A record the bus published, as a message; `None` for a record without
/// the bus's subject header (written by another producer) or with an
/// invalid subject.
pub(super) fn from_record(m: &BorrowedMessage<'_>) -> Option<BusMessage> {
    let mut subject = None;
    let mut id = None;
    let mut headers = Headers::new();
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            let value = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
            match h.key {
                SUBJECT_HEADER => subject = Some(value),
                ID_HEADER => id = Some(value),
                name => {
                    headers.append(name, value);
                }
            }
        }
    }
    let subject = Subject::new(&subject?).ok()?;
    let sequence = (m.offset() as u64).saturating_add(1);
    let id = match id {
        Some(id) => MessageId::new(id),
        None => {
            let ns = m
                .timestamp()
                .to_millis()
                .map_or(0, |ms| (ms.max(0) as u64).saturating_mul(1_000_000));
            MessageId::stream_position(format!("{}/{}", m.topic(), m.partition()), sequence, ns)
        }
    };
    let payload = bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default());
    Some(BusMessage::new(subject, payload, headers, id, sequence))
}

/// Librdkafka settings of a consumer (live or durable) for low latency.
pub(super) fn consumer_base(bus: &KafkaBus) -> rdkafka::ClientConfig {
    let mut cfg = client_config(&bus.inner.config);
    cfg.set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "100")
        .set("fetch.max.bytes", (4 * super::MAX_PAYLOAD).to_string())
        .set(
            "max.partition.fetch.bytes",
            (2 * super::MAX_PAYLOAD).to_string(),
        );
    cfg
}

impl KafkaBus {
    pub(super) async fn subscribe_live(&self, pattern: &str) -> Result<Subscription, BusError> {
        validate_bus_pattern(pattern)?;
        let topic = topic_for_pattern(self.tenant_opt(), pattern)?;
        self.ensure_topic(&topic).await?;
        let partitions = self.partitions(&topic).await?;
        let mut cfg = consumer_base(self);
        // A group id librdkafka wants; never joined (assign) nor committed.
        cfg.set("group.id", format!("bus-live-{}", std::process::id()));
        let consumer: StreamConsumer = cfg
            .create()
            .map_err(|e| backend_err("creating a consumer", e))?;
        // The end offsets now: the subscription starts there.
        let consumer = std::sync::Arc::new(consumer);
        let timeout = self.inner.config.publish_timeout;
        let (c, t) = (consumer.clone(), topic.clone());
        let tpl = tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for p in partitions {
                let (_, high) = c.fetch_watermarks(&t, p, timeout)?;
                tpl.add_partition_offset(&t, p, Offset::Offset(high))?;
            }
            c.assign(&tpl)?;
            Ok::<_, rdkafka::error::KafkaError>(tpl)
        })
        .await
        .map_err(|e| backend_err("assign task", e))?
        .map_err(|e| backend_err(&format!("assigning topic {topic}"), e))?;
        drop(tpl);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<BusMessage>(BUFFER);
        let pat = pattern.to_string();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tx.closed() => break,
                    r = consumer.recv() => match r {
                        Ok(m) => {
                            let Some(msg) = from_record(&m) else { continue };
                            if !matches(&pat, msg.subject.as_str()) {
                                continue;
                            }
                            drop(m);
                            if tx.send(msg).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, pattern = %pat, "kafka subscription: receive error"),
                    }
                }
            }
        });
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(Subscription::new(pattern, stream))
    }
}
