//! Reading what a topic stores, and removing a message for every reader:
//! what the dead-letter queue ([`crate::dlq::DeadLetterQueue`]) lists,
//! replays and discards.
//!
//! * **Streams are partitions**: a pattern's topic is stored in one
//!   stream per partition, named `<topic>/<partition>` (as
//!   [`PublishAck::stream`](crate::PublishAck) names them); a message's
//!   sequence is its offset + 1.
//! * **Removal is a marker**: a Kafka log cannot drop one record. Removing
//!   the message at sequence `s` appends a marker record to the same
//!   partition — no `bus-subject` header, a [`DELETES_HEADER`] header
//!   naming `s` — and readers skip `s` from then on. Consumers never
//!   deliver a marker (it carries no subject; a durable consumer settles it
//!   at once). A message also goes when the topic's retention removes it.
//! * Two readers removing the same message at the same moment may both
//!   succeed (each checks, then appends its marker); the second removal
//!   changes nothing, and a replay's id is derived from the dead letter, so
//!   the runner's inbox drops the second copy of a double replay.

use super::subscription::{consumer_base, from_record};
use super::topic::{topic_for_pattern, DELETES_HEADER, SUBJECT_HEADER};
use super::{backend_err, KafkaBus};
use crate::error::{BusError, ErrorKind};
use crate::message::BusMessage;
use crate::subject::{matches, validate_bus_pattern};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers as _, Message, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// What one partition holds from some offset to its end.
struct Read {
    /// Messages of the bus, oldest first (markers and foreign records left out).
    messages: Vec<BusMessage>,
    /// Sequences removed by markers.
    removed: HashSet<u64>,
    /// The partition's first stored offset.
    low: i64,
}

impl KafkaBus {
    /// The streams (`<topic>/<partition>`) of `pattern`'s topic; none when
    /// the topic does not exist (nothing is created).
    pub(super) async fn stored_partitions(&self, pattern: &str) -> Result<Vec<String>, BusError> {
        validate_bus_pattern(pattern)?;
        let topic = topic_for_pattern(self.tenant_opt(), pattern)?;
        let parts = self.existing_partitions(&topic).await?;
        Ok(parts.into_iter().map(|p| format!("{topic}/{p}")).collect())
    }

    /// Up to `max` messages of `stream` on `pattern`, from `from` on,
    /// without the removed ones.
    pub(super) async fn read_partition(
        &self,
        stream: &str,
        pattern: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<BusMessage>, BusError> {
        validate_bus_pattern(pattern)?;
        let (topic, partition) = self.parse_stream(stream)?;
        let read = self.read_to_end(topic, partition, from).await?;
        Ok(read
            .messages
            .into_iter()
            .filter(|m| m.sequence >= from && !read.removed.contains(&m.sequence))
            .filter(|m| matches(pattern, m.subject.as_str()))
            .take(max)
            .collect())
    }

    /// Appends a marker removing `sequence` from `stream`; `NotFound` when
    /// no message of the bus is stored there (never was, removed already,
    /// or past retention).
    pub(super) async fn remove_from_partition(
        &self,
        stream: &str,
        sequence: u64,
    ) -> Result<(), BusError> {
        let (topic, partition) = self.parse_stream(stream)?;
        let read = self.read_to_end(topic, partition, sequence).await?;
        let stored = read.messages.iter().any(|m| m.sequence == sequence);
        if !stored || read.removed.contains(&sequence) {
            let why = if sequence <= read.low as u64 {
                "past the topic's retention"
            } else {
                "removed already, or never a message of the bus"
            };
            return Err(BusError::new(
                ErrorKind::NotFound,
                format!("kafka: stream {stream} holds no message {sequence} ({why})"),
            ));
        }
        let value = sequence.to_string();
        let headers = OwnedHeaders::new().insert(Header {
            key: DELETES_HEADER,
            value: Some(value.as_bytes()),
        });
        let record = FutureRecord::<(), [u8]>::to(topic)
            .partition(partition)
            .payload(&[][..])
            .headers(headers);
        self.inner
            .producer
            .send(record, self.inner.config.publish_timeout)
            .await
            .map(|_| ())
            .map_err(|(e, _)| {
                BusError::new(
                    ErrorKind::Unavailable,
                    format!("kafka: removing message {sequence} of {stream}: {e}"),
                )
            })
    }

    /// `<topic>/<partition>` of this bus's tenant, or `NotFound`.
    fn parse_stream<'s>(&self, stream: &'s str) -> Result<(&'s str, i32), BusError> {
        let parsed = stream
            .rsplit_once('/')
            .and_then(|(t, p)| Some((t, p.parse::<i32>().ok()?)))
            .filter(|(t, p)| *p >= 0 && !t.is_empty());
        let own = |t: &str| match self.tenant_opt() {
            Some(tenant) => t.starts_with(&format!("{}.", super::topic::escape_token(tenant))),
            None => true,
        };
        match parsed {
            Some((t, p)) if own(t) => Ok((t, p)),
            _ => Err(BusError::new(
                ErrorKind::NotFound,
                format!(
                    "kafka has no stream {stream:?}: a stream is <topic>/<partition> of this bus (see stored_streams)"
                ),
            )),
        }
    }

    /// The partitions of `topic` in the metadata now, none when it does not
    /// exist.
    pub(super) async fn existing_partitions(&self, topic: &str) -> Result<Vec<i32>, BusError> {
        let producer = self.inner.producer.clone();
        let timeout = self.inner.config.publish_timeout;
        let t = topic.to_string();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&t), timeout)
                .map(|m| {
                    m.topics()
                        .iter()
                        .filter(|x| x.name() == t && x.error().is_none())
                        .flat_map(|x| x.partitions().iter().map(|p| p.id()))
                        .collect::<Vec<i32>>()
                })
        })
        .await
        .map_err(|e| backend_err("metadata task", e))?
        .map_err(|e| backend_err(&format!("metadata of topic {topic}"), e))
    }

    /// Everything `topic`/`partition` holds from sequence `from` (offset
    /// `from - 1`) to the end it had when the read began. A marker always
    /// comes after the message it removes, so this sees every marker that
    /// concerns what it returns.
    async fn read_to_end(&self, topic: &str, partition: i32, from: u64) -> Result<Read, BusError> {
        let mut cfg = consumer_base(self);
        // A group id librdkafka wants; never joined (assign) nor committed.
        cfg.set("group.id", format!("bus-reader-{}", std::process::id()));
        let consumer: BaseConsumer = cfg
            .create()
            .map_err(|e| backend_err("creating a reader", e))?;
        let timeout = self.inner.config.publish_timeout;
        let t = topic.to_string();
        let what = format!("reading {topic}/{partition}");
        tokio::task::spawn_blocking(move || read_blocking(&consumer, &t, partition, from, timeout))
            .await
            .map_err(|e| backend_err("reader task", e))?
            .map_err(|e| match e {
                ReadError::Kafka(e) => backend_err(&what, e),
                ReadError::Timeout(at, end) => BusError::new(
                    ErrorKind::Timeout,
                    format!("kafka: {what}: reached offset {at} of {end} within {timeout:?}"),
                ),
            })
    }
}

enum ReadError {
    Kafka(rdkafka::error::KafkaError),
    /// The offset reached and the end, when the time ran out.
    Timeout(i64, i64),
}

impl From<rdkafka::error::KafkaError> for ReadError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        ReadError::Kafka(e)
    }
}

fn read_blocking(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    from: u64,
    timeout: Duration,
) -> Result<Read, ReadError> {
    let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
    let mut read = Read {
        messages: Vec::new(),
        removed: HashSet::new(),
        low,
    };
    let start = (from.saturating_sub(1) as i64).max(low);
    if start >= high {
        return Ok(read);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(start))?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    let mut next = start;
    while next < high {
        if Instant::now() >= deadline {
            return Err(ReadError::Timeout(next, high));
        }
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m?;
        next = m.offset() + 1;
        if let Some(removed) = marker(&m) {
            read.removed.insert(removed);
        } else if let Some(msg) = from_record(&m) {
            read.messages.push(msg);
        }
    }
    Ok(read)
}

/// The sequence a marker record removes; `None` for any other record.
fn marker(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<u64> {
    let headers = m.headers()?;
    if headers.iter().any(|h| h.key == SUBJECT_HEADER) {
        return None;
    }
    let h = headers.iter().find(|h| h.key == DELETES_HEADER)?;
    std::str::from_utf8(h.value?).ok()?.parse().ok()
}
