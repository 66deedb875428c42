//! Bounded redelivery and dead letters, applied above every backend's raw
//! consumer ([`with_dead_letters`]).
//!
//! This layer shows the handler at most `max_deliver` deliveries of a
//! message:
//!
//! * a nack on the last allowed delivery (or [`Delivery::dead_letter`]) sends
//!   the message to the dead-letter subject, then terminates it;
//! * a delivery beyond `max_deliver` (the last one was never answered and its
//!   ack wait ran out, or the consumer crashed) is dead-lettered here without
//!   reaching the handler. It does not rely on the server's max-deliveries
//!   advisory, which only listeners present at that moment receive.
//!
//! A dead letter is the original payload and headers plus the `dlq::*`
//! headers (original subject, sequence, id, consumer, delivery count, last
//! error), published with the message id `dlq-<consumer>-<original id>` so
//! that a retried dead-lettering is stored once. When that does not fit the
//! size limit, the dead letter is published without the payload and the
//! original headers, with [`dlq::TRUNCATED`] giving the payload's size (on
//! NATS the original stays in its stream at the original sequence).
//!
//! A message is never dropped because its dead letter cannot be published
//! (no permission, no stream stores the dead-letter subject, server away):
//! it stays pending. It is nacked with a growing delay (250 ms up to 1 min),
//! the failure is logged at error level and yielded as an error item of the
//! consumer stream, and it is dead-lettered on a later delivery, without
//! reaching the handler again. Backends therefore never stop delivering a
//! message this layer has not terminated (NATS: the server-side consumer has
//! no delivery limit).

use crate::bus::EventBus;
use crate::consumer::{AckKind, Acker, ConsumerConfig, ConsumerStream, Delivery, MAX_WAIT};
use crate::dlq;
use crate::error::{BusError, ErrorKind};
use crate::message::{BusMessage, Envelope, Headers};
use crate::message::{MessageId, MAX_ID_LEN};
use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// The message id of `consumer`'s dead letter for the message `id`:
/// `dlq-<consumer>-<id key>` (see `MessageId::key`), the same for every try, so that a dead letter
/// published again (after a crash) is de-duplicated. When that is longer than
/// a message id may be (a long given id), `dlq-<consumer>-h<hash>` with a
/// stable 128-bit hash of the id's key instead, and the consumer name
/// hashed as well if it alone is too long.
pub(crate) fn dead_letter_id(consumer: &str, id: &MessageId) -> String {
    let plain = format!("dlq-{consumer}-{}", id.key());
    if plain.len() <= MAX_ID_LEN && crate::message::validate_id(&plain).is_ok() {
        return plain;
    }
    let hashed = format!("dlq-{consumer}-h{:032x}", stable_hash(&id.key()));
    if hashed.len() <= MAX_ID_LEN {
        return hashed;
    }
    format!(
        "dlq-h{:032x}-h{:032x}",
        stable_hash(consumer),
        stable_hash(&id.key())
    )
}

/// FNV-1a over `text` twice with different offsets: 128 stable bits (the
/// same in every process and version), enough to tell ids apart.
fn stable_hash(text: &str) -> u128 {
    let fnv = |mut h: u64| {
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    };
    (u128::from(fnv(0xcbf2_9ce4_8422_2325)) << 64) | u128::from(fnv(0x6c62_272e_07bb_0142))
}

/// Delay before the first retry of a failed dead-lettering; it doubles on
/// each further failure, up to [`DLQ_RETRY_MAX`].
const DLQ_RETRY_DELAY: Duration = Duration::from_millis(250);
/// Longest delay between retries of a failed dead-lettering.
const DLQ_RETRY_MAX: Duration = Duration::from_secs(60);

/// Messages remembered (last error, pending dead letter) at most; beyond
/// that the memory is cleared (a last error is then generic, and a pending
/// dead letter goes through the handler once more).
const REMEMBERED: usize = 10_000;

/// What is remembered about a message between its deliveries.
#[derive(Clone)]
struct Memo {
    /// The reason given to the last nack or term.
    reason: String,
    /// Extra headers of a dead-lettering that failed.
    extra: Headers,
    /// A dead-lettering of it failed: dead-letter the next delivery at once.
    dead_letter: bool,
}

struct Shared {
    /// The backend's name (`messaging.system` in spans).
    system: &'static str,
    /// The consumer's filter (the destination template in spans).
    filter: String,
    bus: Arc<dyn EventBus>,
    consumer: String,
    dead_letter_subject: Option<String>,
    max_deliver: u32,
    ack_wait: Duration,
    backoff: Vec<Duration>,
    /// Per message id (bounded by [`REMEMBERED`]).
    memos: Mutex<FxHashMap<String, Memo>>,
    /// Memos with `dead_letter` set: while 0, deliveries are not looked up.
    pending_dead_letters: AtomicUsize,
    metrics: super::counters::ConsumerMetrics,
}

impl Shared {
    fn remember(&self, msg: &BusMessage, memo: Memo) {
        let mut map = self.memos.lock();
        if map.len() >= REMEMBERED {
            map.clear();
            self.pending_dead_letters.store(0, Ordering::Relaxed);
        }
        if memo.dead_letter {
            self.pending_dead_letters.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(old) = map.insert(msg.id.key().into_owned(), memo) {
            if old.dead_letter {
                self.pending_dead_letters.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    fn forget(&self, msg: &BusMessage) -> Option<Memo> {
        let memo = self.memos.lock().remove(msg.id.key().as_ref())?;
        if memo.dead_letter {
            self.pending_dead_letters.fetch_sub(1, Ordering::Relaxed);
        }
        Some(memo)
    }

    /// Whether an earlier dead-lettering of `msg` failed (cheap while none did).
    fn dead_letter_pending(&self, msg: &BusMessage) -> bool {
        self.pending_dead_letters.load(Ordering::Relaxed) > 0
            && self
                .memos
                .lock()
                .get(msg.id.key().as_ref())
                .is_some_and(|m| m.dead_letter)
    }

    fn backoff_for(&self, delivery_count: u32) -> Option<Duration> {
        if self.backoff.is_empty() {
            return None;
        }
        let i = (delivery_count.max(1) as usize - 1).min(self.backoff.len() - 1);
        Some(self.backoff[i])
    }

    /// The delay before delivery `count` retries a failed dead-lettering.
    fn retry_delay(&self, count: u32) -> Duration {
        let failures = count.saturating_sub(self.max_deliver).min(6);
        (DLQ_RETRY_DELAY * (1u32 << failures)).min(DLQ_RETRY_MAX)
    }

    /// Publishes the dead letter (if a subject is configured); too large, it
    /// is published truncated (see the module docs).
    async fn dead_letter(
        &self,
        msg: &BusMessage,
        count: u32,
        reason: &str,
        extra: &Headers,
    ) -> Result<(), BusError> {
        let Some(subject) = &self.dead_letter_subject else {
            return Ok(());
        };
        let origin = |headers: &mut Headers| {
            headers
                .insert(dlq::ORIGINAL_SUBJECT, msg.subject.as_str())
                .insert(dlq::ORIGINAL_SEQUENCE, msg.sequence.to_string())
                .insert(dlq::ORIGINAL_ID, msg.id.to_string())
                .insert(dlq::CONSUMER, self.consumer.as_str())
                .insert(dlq::DELIVERY_COUNT, count.to_string())
                .insert(dlq::LAST_ERROR, sanitize(reason))
                .insert(
                    dlq::TIME,
                    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                );
        };
        let id = dead_letter_id(&self.consumer, &msg.id);
        let mut headers = msg.headers.clone();
        for (n, v) in extra.iter() {
            headers.insert(n, v);
        }
        origin(&mut headers);
        let whole = Envelope::new(subject.clone(), msg.payload.clone())
            .headers(headers)
            .id(id.clone());
        let mut truncated = false;
        let published = match self.bus.publish_dead_letter(whole).await {
            Err(e) if e.kind() == ErrorKind::PayloadTooLarge => {
                // Without the payload and the original headers it fits; the
                // origin headers say where the original is.
                truncated = true;
                let mut headers = extra.clone();
                origin(&mut headers);
                headers.insert(dlq::TRUNCATED, msg.payload.len().to_string());
                let env = Envelope::new(subject.clone(), Vec::new())
                    .headers(headers)
                    .id(id);
                self.bus.publish_dead_letter(env).await
            }
            other => other,
        };
        if let Err(e) = published {
            tracing::error!(
                consumer = %self.consumer,
                subject = %msg.subject,
                id = %msg.id,
                deliveries = count,
                dead_letter_subject = %subject,
                error = %e,
                "dead letter could not be published; the message stays pending and is dead-lettered on a later delivery"
            );
            return Err(BusError::with_source(
                e.kind(),
                format!(
                    "consumer {:?}: the dead letter of {} (subject {:?}) could not be published to {subject:?}; the message stays pending and is retried",
                    self.consumer, msg.id, msg.subject.as_str()
                ),
                e,
            ));
        }
        tracing::warn!(
            consumer = %self.consumer,
            subject = %msg.subject,
            id = %msg.id,
            deliveries = count,
            reason,
            truncated,
            dead_letter_subject = %subject,
            "message dead-lettered"
        );
        Ok(())
    }

    /// Dead-letters `msg` and terminates it; if the dead letter cannot be
    /// published, keeps it pending (remembered, nacked with a delay) and
    /// returns the error.
    async fn dead_letter_or_keep(
        &self,
        msg: &BusMessage,
        count: u32,
        acker: &dyn Acker,
        reason: String,
        extra: Headers,
    ) -> Result<(), BusError> {
        let shown = count.min(self.max_deliver);
        match self.dead_letter(msg, shown, &reason, &extra).await {
            Ok(()) => {
                self.metrics.dead_letters.increment(1);
                self.forget(msg);
                acker
                    .answer(AckKind::Term {
                        reason: Some(reason),
                    })
                    .await
            }
            Err(e) => {
                let delay = self.retry_delay(count);
                self.remember(
                    msg,
                    Memo {
                        reason,
                        extra,
                        dead_letter: true,
                    },
                );
                let _ = acker
                    .answer(AckKind::Nack {
                        delay: Some(delay),
                        reason: None,
                    })
                    .await;
                Err(e)
            }
        }
    }
}

/// Header values cannot hold line breaks.
fn sanitize(reason: &str) -> String {
    let one_line: String = reason
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    one_line.chars().take(1024).collect()
}

/// Wraps a backend's raw durable consumer (what
/// [`EventBus::open_consumer`] returns for `config`) with bounded
/// redelivery, dead letters, the consumer metrics and the received span:
/// what [`EventBusExt::consume`](crate::EventBusExt::consume) does after
/// opening the consumer. `bus` publishes the dead letters (and names the
/// backend and tenant in metrics and spans).
///
/// Call it once per raw stream, with the `config` the stream was opened
/// with (it is not checked again here: `consume` checks it before opening).
/// The raw stream must keep delivering a message until it is acked or
/// terminated: this layer decides when to give up on it. Its deliveries'
/// answers pass through, except a nack on the last allowed delivery and
/// [`AckKind::DeadLetter`], which publish the dead letter and then answer
/// `Term`.
pub fn with_dead_letters(
    raw: ConsumerStream,
    bus: Arc<dyn EventBus>,
    config: &ConsumerConfig,
) -> ConsumerStream {
    let metrics =
        super::counters::ConsumerMetrics::new(bus.backend_name(), &config.name, bus.tenant());
    let shared = Arc::new(Shared {
        system: bus.backend_name(),
        filter: config.filter.clone(),
        bus,
        consumer: config.name.clone(),
        dead_letter_subject: config.dead_letter_subject.clone(),
        max_deliver: config.max_deliver,
        ack_wait: config.ack_wait,
        backoff: config.backoff.clone(),
        memos: Mutex::new(FxHashMap::default()),
        pending_dead_letters: AtomicUsize::new(0),
        metrics,
    });
    Box::pin(futures::stream::unfold(
        (raw, shared),
        |(mut raw, shared)| async move {
            loop {
                let delivery = match raw.next().await? {
                    Ok(d) => d,
                    Err(e) => return Some((Err(e), (raw, shared))),
                };
                let (msg, count, acker) = delivery.into_parts();
                shared.metrics.consumed.increment(1);
                if count > 1 {
                    shared.metrics.redelivered.increment(1);
                }
                if count > shared.max_deliver || shared.dead_letter_pending(&msg) {
                    // The last allowed delivery went unanswered, or an
                    // earlier dead-lettering failed: dead-letter it here.
                    let (reason, extra) = match shared.forget(&msg) {
                        Some(memo) => (memo.reason, memo.extra),
                        None => (
                            format!(
                                "not acknowledged within the ack wait ({:?}) after {} deliveries",
                                shared.ack_wait, shared.max_deliver
                            ),
                            Headers::new(),
                        ),
                    };
                    match shared
                        .dead_letter_or_keep(&msg, count, acker.as_ref(), reason, extra)
                        .await
                    {
                        Ok(()) => continue,
                        Err(e) => return Some((Err(e), (raw, shared))),
                    }
                }
                crate::trace::received(shared.system, &shared.filter, &msg);
                let wrapped = DeadLetterAcker {
                    inner: acker,
                    msg: msg.clone(),
                    count,
                    shared: shared.clone(),
                };
                return Some((
                    Ok(Delivery::new(msg, count, Box::new(wrapped))),
                    (raw, shared),
                ));
            }
        },
    ))
}

struct DeadLetterAcker {
    inner: Box<dyn Acker>,
    msg: BusMessage,
    count: u32,
    shared: Arc<Shared>,
}

#[async_trait]
impl Acker for DeadLetterAcker {
    async fn answer(&self, kind: AckKind) -> Result<(), BusError> {
        let slot = super::counters::ConsumerMetrics::slot(&kind);
        // Traced: boxed apart, so that the common future stays small.
        let result = match self.settle_span(&kind) {
            Some(span) => {
                Box::pin(async {
                    let result = self.answer_counted(kind).instrument(span.clone()).await;
                    crate::trace::record_publish(&span, &result, None);
                    result
                })
                .await
            }
            None => self.answer_counted(kind).await,
        };
        self.shared
            .metrics
            .answered(slot, result.as_ref().err().map(BusError::kind));
        result
    }

    async fn answer_nowait(&self, kind: AckKind) -> Result<(), BusError> {
        match kind {
            AckKind::Ack | AckKind::InProgress => {
                let slot = super::counters::ConsumerMetrics::slot(&kind);
                let span = self.settle_span(&kind);
                let result = self.inner.answer_nowait(kind).await;
                if let Some(span) = &span {
                    crate::trace::record_publish(span, &result, None);
                }
                self.shared
                    .metrics
                    .answered(slot, result.as_ref().err().map(BusError::kind));
                result
            }
            // Answers with dead-letter bookkeeping take the confirmed path.
            other => self.answer(other).await,
        }
    }
}

impl DeadLetterAcker {
    /// The answer's settle span, if it is traced: a `tracing` dispatcher is
    /// set and the span's level enabled (none is built otherwise).
    fn settle_span(&self, kind: &AckKind) -> Option<tracing::Span> {
        if !tracing::dispatcher::has_been_set() {
            return None;
        }
        let operation = match kind {
            AckKind::Ack => "ack",
            AckKind::Nack { .. } => "nack",
            AckKind::Term { .. } => "term",
            AckKind::InProgress => "in_progress",
            AckKind::DeadLetter { .. } => "dead_letter",
        };
        let span = crate::trace::settle_span(
            self.shared.system,
            operation,
            &self.shared.consumer,
            &self.msg,
        );
        (!span.is_disabled()).then_some(span)
    }

    async fn answer_counted(&self, kind: AckKind) -> Result<(), BusError> {
        match kind {
            AckKind::Nack { delay, reason } => {
                let reason_text = reason.clone().unwrap_or_else(|| "nacked".to_string());
                if self.count >= self.shared.max_deliver {
                    return self.dead_letter(reason_text, Headers::new()).await;
                }
                self.shared.remember(
                    &self.msg,
                    Memo {
                        reason: reason_text,
                        extra: Headers::new(),
                        dead_letter: false,
                    },
                );
                // Capped: a delay beyond any deadline is a mistake, not "never".
                let delay = delay
                    .or_else(|| self.shared.backoff_for(self.count))
                    .map(|d| d.min(MAX_WAIT));
                self.inner.answer(AckKind::Nack { delay, reason }).await
            }
            AckKind::DeadLetter { reason, headers } => self.dead_letter(reason, headers).await,
            other => self.inner.answer(other).await,
        }
    }

    async fn dead_letter(&self, reason: String, extra: Headers) -> Result<(), BusError> {
        self.shared.forget(&self.msg);
        self.shared
            .dead_letter_or_keep(&self.msg, self.count, self.inner.as_ref(), reason, extra)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventBus, EventBusExt, InMemoryBus};
    use futures::StreamExt;

    /// Dead-letter ids are valid message ids whatever the original id's
    /// length, the same on every try, and distinct per original.
    #[test]
    fn dead_letter_ids_are_always_valid() {
        let short = MessageId::new("order-1");
        assert_eq!(dead_letter_id("billing", &short), "dlq-billing-order-1");
        let long = MessageId::new("x".repeat(MAX_ID_LEN));
        let other = MessageId::new(format!("{}y", "x".repeat(MAX_ID_LEN - 1)));
        for consumer in ["billing", &"c".repeat(300)] {
            let a = dead_letter_id(consumer, &long);
            crate::message::validate_id(&a).unwrap();
            assert_eq!(a, dead_letter_id(consumer, &long), "stable");
            assert_ne!(a, dead_letter_id(consumer, &other));
        }
        let assigned = MessageId::stream_position("BUS_ORDERS", 7, 1);
        crate::message::validate_id(&dead_letter_id("billing", &assigned)).unwrap();
    }

    /// A message whose given id is as long as ids may be is dead-lettered
    /// (its dead letter's id used to be over the limit, so the dead letter
    /// was refused and the event stranded).
    #[tokio::test]
    async fn a_message_with_the_longest_id_is_dead_lettered() {
        let bus = InMemoryBus::new();
        let mut dead = bus.subscribe("dlq.>").await.unwrap();
        let mut c = bus
            .consume(ConsumerConfig::new("billing", "orders.>").max_deliver(1))
            .await
            .unwrap();
        let id = "x".repeat(MAX_ID_LEN);
        bus.publish_envelope(Envelope::new("orders.created", &b"{}"[..]).id(id.as_str()))
            .await
            .unwrap();
        let d = c.next().await.unwrap().unwrap();
        d.nack(None).await.expect("the dead letter is published");
        let letter = tokio::time::timeout(Duration::from_secs(5), dead.next())
            .await
            .expect("a dead letter")
            .unwrap();
        assert_eq!(letter.headers.get(dlq::ORIGINAL_ID), Some(id.as_str()));
    }
}
