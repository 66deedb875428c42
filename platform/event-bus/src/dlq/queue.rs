//! Listing, inspecting and replaying dead letters.
//!
//! The dead letters are read where they are stored (the JetStream stream
//! holding the dead-letter subject, the in-memory bus's log) without
//! creating anything: no stream, no consumer. Replaying or discarding one
//! removes it from its stream, so that every reader sees it gone.

use crate::bus::EventBus;
use crate::dlq;
use crate::error::{BusError, ErrorKind};
use crate::message::{BusMessage, Envelope, Headers, PublishAck};
use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Letters kept ([`DeadLetter::keep`]) and when to list them again.
type Kept = Arc<Mutex<VecDeque<(tokio::time::Instant, String, BusMessage)>>>;

/// The dead letters on one subject (pattern), read from the stream that
/// stores them, oldest first. Reading changes nothing: several readers
/// each see every dead letter until one replays or discards it.
pub struct DeadLetterQueue {
    bus: Arc<dyn EventBus>,
    subject: String,
    /// Per stream, the next sequence to read.
    next_seq: BTreeMap<String, u64>,
    kept: Kept,
}

/// How often [`DeadLetterQueue::next`] looks for new dead letters while it waits.
const POLL: Duration = Duration::from_millis(100);

impl DeadLetterQueue {
    /// A reader of the dead letters on `subject` (a pattern such as
    /// `dlq.>` is allowed), from the oldest kept. `reader` only names it in
    /// logs: nothing is created on the bus. On the in-memory bus the dead
    /// letters are those in its log, which records from the first durable
    /// consumer's creation (the runner's own consumer;
    /// `MemoryConfig::log_from_start` records from the bus's start) within
    /// `log_max_messages`/`log_max_bytes`.
    pub async fn open(
        bus: Arc<dyn EventBus>,
        subject: &str,
        reader: &str,
    ) -> Result<Self, BusError> {
        crate::subject::validate_bus_pattern(subject)?;
        tracing::debug!(reader, subject, "reading dead letters");
        Ok(DeadLetterQueue {
            bus,
            subject: subject.to_string(),
            next_seq: BTreeMap::new(),
            kept: Arc::default(),
        })
    }

    /// The next dead letter, waiting up to `wait` for one (it looks at
    /// least once, also with a zero `wait`). A wait too long to be a
    /// deadline (`Duration::MAX`) waits without one.
    pub async fn next(&mut self, wait: Duration) -> Result<Option<DeadLetter>, BusError> {
        let deadline = tokio::time::Instant::now().checked_add(wait);
        loop {
            if let Some(d) = self.poll().await? {
                return Ok(Some(d));
            }
            let now = tokio::time::Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            let pause = deadline.map_or(POLL, |d| POLL.min(d - now));
            tokio::time::sleep(pause).await;
        }
    }

    /// A kept letter due again, else the next stored one, without waiting.
    async fn poll(&mut self) -> Result<Option<DeadLetter>, BusError> {
        let due = {
            let mut kept = self.kept.lock();
            let now = tokio::time::Instant::now();
            match kept.iter().position(|(at, _, _)| *at <= now) {
                Some(i) => kept.remove(i),
                None => None,
            }
        };
        if let Some((_, stream, message)) = due {
            return Ok(Some(self.letter(stream, message)));
        }
        for stream in self.bus.stored_streams(&self.subject).await? {
            let from = self.next_seq.get(&stream).copied().unwrap_or(1);
            let found = self
                .bus
                .read_stored(&stream, &self.subject, from, 1)
                .await?;
            if let Some(message) = found.into_iter().next() {
                self.next_seq.insert(stream.clone(), message.sequence + 1);
                return Ok(Some(self.letter(stream, message)));
            }
        }
        Ok(None)
    }

    fn letter(&self, stream: String, message: BusMessage) -> DeadLetter {
        DeadLetter {
            message,
            stream,
            bus: self.bus.clone(),
            kept: self.kept.clone(),
        }
    }

    /// Up to `max` dead letters, waiting at most `idle` for each.
    pub async fn list(&mut self, max: usize, idle: Duration) -> Result<Vec<DeadLetter>, BusError> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.next(idle).await? {
                Some(d) => out.push(d),
                None => break,
            }
        }
        Ok(out)
    }
}

/// One dead letter: inspect it, then [`replay`](Self::replay),
/// [`discard`](Self::discard) or [`keep`](Self::keep) it. Dropping it
/// leaves it stored (as `keep`, but this reader does not list it again).
pub struct DeadLetter {
    message: BusMessage,
    stream: String,
    bus: Arc<dyn EventBus>,
    kept: Kept,
}

impl DeadLetter {
    /// The dead-letter message (payload and headers as dead-lettered).
    pub fn message(&self) -> &BusMessage {
        &self.message
    }

    /// The stream that stores it (`"memory"`: the in-memory bus's log);
    /// its position there is `message().sequence`.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.message.headers.get(name)
    }

    /// The subject the event was originally published to.
    pub fn original_subject(&self) -> Option<&str> {
        self.header(dlq::ORIGINAL_SUBJECT)
    }

    /// The original message id.
    pub fn original_id(&self) -> Option<&str> {
        self.header(dlq::ORIGINAL_ID)
    }

    /// Why it was dead-lettered.
    pub fn reason(&self) -> Option<&str> {
        self.header(dlq::LAST_ERROR)
    }

    /// The handler that gave up (runner dead letters).
    pub fn handler(&self) -> Option<&str> {
        self.header(dlq::HANDLER)
    }

    /// The consumer that gave up.
    pub fn consumer(&self) -> Option<&str> {
        self.header(dlq::CONSUMER)
    }

    /// When it was dead-lettered (`None` for dead letters written before
    /// the `Bus-Dlq-Time` header existed).
    pub fn dead_lettered_at(&self) -> Option<std::time::SystemTime> {
        humantime::parse_rfc3339(self.header(dlq::TIME)?).ok()
    }

    /// How many times it had been delivered.
    pub fn delivery_count(&self) -> Option<u32> {
        self.header(dlq::DELIVERY_COUNT)
            .and_then(|v| v.parse().ok())
    }

    /// Publishes the original event again on its original subject (original
    /// headers, a message id derived from the dead letter, so that the bus
    /// drops a second replay of it within its duplicate window), then removes
    /// the dead letter from its stream. A dead letter removed already (by
    /// another reader's replay or discard) is refused as `NotFound`.
    pub async fn replay(self) -> Result<PublishAck, BusError> {
        // Refused before publishing when it is gone already (a copy listed
        // before another reader removed it, perhaps past the duplicate
        // window); a race with another replay past this check is
        // de-duplicated by the derived id.
        let stored = self
            .bus
            .read_stored(
                &self.stream,
                self.message.subject.as_str(),
                self.message.sequence,
                1,
            )
            .await?;
        if stored
            .first()
            .is_none_or(|m| m.sequence != self.message.sequence)
        {
            return Err(self.gone("replayed"));
        }
        let msg = &self.message;
        let subject = self
            .original_subject()
            .ok_or_else(|| {
                BusError::new(
                    ErrorKind::InvalidHeader,
                    format!(
                        "dead letter {} has no {} header",
                        msg.id,
                        dlq::ORIGINAL_SUBJECT
                    ),
                )
            })?
            .to_string();
        let headers: Headers = msg
            .headers
            .iter()
            .filter(|(n, _)| !n.starts_with(dlq::PREFIX))
            .collect();
        // A bus-assigned original id (`$js:...`, `$mem:...`) cannot be given
        // back to the bus: `$` is reserved for the ids it assigns.
        let original = self.original_id().unwrap_or("event");
        let id = format!(
            "{}-replay-{}",
            original.trim_start_matches('$'),
            msg.sequence
        );
        let ack = self
            .bus
            .publish_envelope(
                Envelope::new(subject, msg.payload.clone())
                    .headers(headers)
                    .id(id),
            )
            .await?;
        self.remove("replayed").await?;
        Ok(ack)
    }

    /// Removes the dead letter from its stream without replaying it (every
    /// reader sees it gone). One removed already is refused as `NotFound`.
    pub async fn discard(self) -> Result<(), BusError> {
        self.remove("discarded").await
    }

    async fn remove(&self, what: &str) -> Result<(), BusError> {
        self.bus
            .delete_stored(&self.stream, self.message.sequence)
            .await
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound => self.gone(what),
                _ => e,
            })
    }

    fn gone(&self, what: &str) -> BusError {
        BusError::new(
            ErrorKind::NotFound,
            format!(
                "dead letter {} (stream {}, sequence {}) was already replayed or discarded (or expired); not {what} again",
                self.message.id, self.stream, self.message.sequence
            ),
        )
    }

    /// Leaves the dead letter stored; this reader lists it again in a second.
    pub async fn keep(self) -> Result<(), BusError> {
        self.keep_for(Some(Duration::from_secs(1))).await
    }

    /// Leaves the dead letter stored; this reader lists it again after
    /// `delay` (`None`: at once). Other readers see it all along.
    pub async fn keep_for(self, delay: Option<Duration>) -> Result<(), BusError> {
        let at = tokio::time::Instant::now() + delay.unwrap_or(Duration::ZERO);
        self.kept.lock().push_back((at, self.stream, self.message));
        Ok(())
    }
}

impl std::fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetter")
            .field("original_subject", &self.original_subject())
            .field("reason", &self.reason())
            .field("handler", &self.handler())
            .field("delivery_count", &self.delivery_count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    /// `next(Duration::MAX)` waits without a deadline (`Instant + wait`
    /// panicked): here it returns the dead letter published meanwhile.
    #[tokio::test]
    async fn next_with_the_longest_wait() {
        let bus: Arc<dyn EventBus> =
            Arc::new(crate::InMemoryBus::with_config(crate::MemoryConfig {
                log_from_start: true,
                ..Default::default()
            }));
        let mut dlq = DeadLetterQueue::open(bus.clone(), "dlq.t", "reader")
            .await
            .unwrap();
        let publisher = bus.clone();
        tokio::spawn(async move { publisher.publish("dlq.t", b"x".to_vec()).await.unwrap() });
        let d = tokio::time::timeout(Duration::from_secs(10), dlq.next(Duration::MAX))
            .await
            .expect("a dead letter within 10 s")
            .unwrap()
            .expect("a dead letter");
        assert_eq!(&d.message().payload[..], b"x");
    }

    /// On the in-memory bus as on NATS: reading changes nothing (two
    /// readers see the letter), a replay removes it from the log for every
    /// reader, and a replay of a stale copy is refused (before publishing:
    /// the duplicate window here is too short to drop it).
    #[tokio::test]
    async fn replay_removes_the_letter_for_every_reader() {
        let bus: Arc<dyn EventBus> =
            Arc::new(crate::InMemoryBus::with_config(crate::MemoryConfig {
                log_from_start: true,
                dedup_window: Duration::from_nanos(1),
                ..Default::default()
            }));
        let mut replayed = bus.subscribe("orders.>").await.unwrap();
        bus.publish_envelope(
            Envelope::new("dlq.t", b"x".to_vec())
                .header(dlq::ORIGINAL_SUBJECT, "orders.created")
                .header(dlq::ORIGINAL_ID, "o-1"),
        )
        .await
        .unwrap();
        let open = |pattern: &'static str| DeadLetterQueue::open(bus.clone(), pattern, "r");
        let first = open("dlq.t")
            .await
            .unwrap()
            .list(10, Duration::ZERO)
            .await
            .unwrap();
        let second = open("dlq.>")
            .await
            .unwrap()
            .list(10, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!((first.len(), second.len()), (1, 1));
        let mut first = first.into_iter();
        first.next().unwrap().replay().await.unwrap();
        let m = replayed.next().await.unwrap();
        assert_eq!(m.subject, "orders.created");
        let stale = second.into_iter().next().unwrap();
        let e = stale.replay().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        // Refused before publishing: the next message on the subscription
        // is a marker published after.
        bus.publish("orders.marker", b"m".to_vec()).await.unwrap();
        assert_eq!(replayed.next().await.unwrap().subject, "orders.marker");
        assert!(open("dlq.>")
            .await
            .unwrap()
            .next(Duration::ZERO)
            .await
            .unwrap()
            .is_none());
    }
}
