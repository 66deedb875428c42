//! Listing, inspecting and replaying dead letters.

use crate::bus::EventBus;
use crate::consumer::{dlq, ConsumerConfig, ConsumerStream, Delivery, StartPosition};
use crate::error::BusError;
use crate::message::{BusMessage, Envelope, Headers, PublishAck};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// The dead letters on one subject, read through a durable consumer (so
/// that several operators see each dead letter once, and nothing is lost
/// while nobody looks).
pub struct DeadLetterQueue {
    bus: Arc<dyn EventBus>,
    consumer: ConsumerStream,
}

impl DeadLetterQueue {
    /// Opens (or creates) the reader `reader` on `subject`, reading from the
    /// oldest dead letter kept. On the in-memory bus that is the oldest in
    /// its log, which records from the first durable consumer's creation
    /// (the runner's own consumer; `MemoryConfig::log_from_start` records
    /// from the bus's start) within `log_max_messages`/`log_max_bytes`.
    pub async fn open(
        bus: Arc<dyn EventBus>,
        subject: &str,
        reader: &str,
    ) -> Result<Self, BusError> {
        let config = ConsumerConfig::new(reader, subject)
            .dead_letter_subject(None)
            .max_deliver(1_000_000)
            .ack_wait(Duration::from_secs(300))
            .start(StartPosition::All);
        let consumer = bus.consume(config).await?;
        Ok(DeadLetterQueue { bus, consumer })
    }

    /// The next dead letter, waiting up to `wait`.
    /// A wait too long to be a deadline (`Duration::MAX`) waits without one.
    pub async fn next(&mut self, wait: Duration) -> Result<Option<DeadLetter>, BusError> {
        let deadline = tokio::time::Instant::now().checked_add(wait);
        loop {
            let next = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, self.consumer.next()).await,
                None => Ok(self.consumer.next().await),
            };
            match next {
                Err(_) | Ok(None) => return Ok(None),
                Ok(Some(Ok(d))) => {
                    return Ok(Some(DeadLetter {
                        delivery: d,
                        bus: self.bus.clone(),
                    }))
                }
                Ok(Some(Err(e))) if e.kind().is_transient() => continue,
                Ok(Some(Err(e))) => return Err(e),
            }
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
/// [`discard`](Self::discard) or [`keep`](Self::keep) it.
pub struct DeadLetter {
    delivery: Delivery,
    bus: Arc<dyn EventBus>,
}

impl DeadLetter {
    /// The dead-letter message (payload and headers as dead-lettered).
    pub fn message(&self) -> &BusMessage {
        self.delivery.message()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.delivery.message().headers.get(name)
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
    /// headers, a new message id derived from the original), then removes the
    /// dead letter.
    pub async fn replay(self) -> Result<PublishAck, BusError> {
        let msg = self.delivery.message();
        let subject = self
            .original_subject()
            .ok_or_else(|| {
                BusError::new(
                    crate::ErrorKind::InvalidHeader,
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
        self.delivery.ack().await?;
        Ok(ack)
    }

    /// Removes the dead letter without replaying it.
    pub async fn discard(self) -> Result<(), BusError> {
        self.delivery.ack().await
    }

    /// Leaves the dead letter in the queue (it is listed again later).
    pub async fn keep(self) -> Result<(), BusError> {
        self.delivery.nack(Some(Duration::from_secs(1))).await
    }

    /// Leaves the dead letter in the queue, readable again after `delay`
    /// (`None`: at once, for a reader that is done reading, such as a
    /// command-line listing).
    pub async fn keep_for(self, delay: Option<Duration>) -> Result<(), BusError> {
        // An explicit zero: no delay means the consumer's backoff otherwise.
        self.delivery
            .nack(Some(delay.unwrap_or(Duration::ZERO)))
            .await
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

    /// `next(Duration::MAX)` waits without a deadline (`Instant + wait`
    /// panicked): here it returns the dead letter published meanwhile.
    #[tokio::test]
    async fn next_with_the_longest_wait() {
        let bus: Arc<dyn EventBus> = Arc::new(crate::InMemoryBus::new());
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
}
