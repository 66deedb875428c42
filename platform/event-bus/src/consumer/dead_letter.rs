//! Bounded redelivery and dead letters, shared by every backend.
//!
//! Backends deliver with a server-side limit of `max_deliver` +
//! [`DLQ_SPARE_DELIVERIES`]. This layer shows the handler at most
//! `max_deliver` deliveries of a message:
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
//! that a retried dead-lettering is stored once. If publishing it fails, the
//! message is not terminated: it stays in the stream and is dead-lettered on
//! one of the spare deliveries.

use super::{dlq, AckKind, Acker, ConsumerConfig, ConsumerStream, Delivery};
use crate::bus::EventBus;
use crate::error::BusError;
use crate::message::{BusMessage, Envelope, Headers};
use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::time::Duration;

/// Deliveries the server may make beyond `max_deliver`, used only to
/// dead-letter a message whose last delivery went unanswered.
pub(crate) const DLQ_SPARE_DELIVERIES: u32 = 3;

/// Delay before a spare delivery retries a failed dead-lettering.
const DLQ_RETRY_DELAY: Duration = Duration::from_secs(1);

struct Shared {
    bus: Arc<dyn EventBus>,
    consumer: String,
    dead_letter_subject: Option<String>,
    max_deliver: u32,
    ack_wait: Duration,
    backoff: Vec<Duration>,
    /// Last nack reason per message id (bounded), for the dead letter's last error.
    last_errors: Mutex<FxHashMap<String, String>>,
}

impl Shared {
    fn remember(&self, msg: &BusMessage, reason: &str) {
        let mut map = self.last_errors.lock();
        if map.len() >= 10_000 {
            map.clear();
        }
        map.insert(msg.id.to_string(), reason.to_string());
    }

    fn last_error(&self, msg: &BusMessage) -> Option<String> {
        self.last_errors.lock().remove(&msg.id.to_string())
    }

    fn backoff_for(&self, delivery_count: u32) -> Option<Duration> {
        if self.backoff.is_empty() {
            return None;
        }
        let i = (delivery_count.max(1) as usize - 1).min(self.backoff.len() - 1);
        Some(self.backoff[i])
    }

    /// Publishes the dead letter (if a subject is configured).
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
        let mut headers = msg.headers.clone();
        for (n, v) in extra.iter() {
            headers.insert(n, v);
        }
        headers
            .insert(dlq::ORIGINAL_SUBJECT, msg.subject.as_str())
            .insert(dlq::ORIGINAL_SEQUENCE, msg.sequence.to_string())
            .insert(dlq::ORIGINAL_ID, msg.id.to_string())
            .insert(dlq::CONSUMER, self.consumer.as_str())
            .insert(dlq::DELIVERY_COUNT, count.to_string())
            .insert(dlq::LAST_ERROR, sanitize(reason));
        let env = Envelope::new(subject.clone(), msg.payload.clone())
            .headers(headers)
            .id(format!("dlq-{}-{}", self.consumer, msg.id));
        self.bus.publish_envelope(env).await?;
        tracing::warn!(
            consumer = %self.consumer,
            subject = %msg.subject,
            id = %msg.id,
            deliveries = count,
            reason,
            dead_letter_subject = %subject,
            "message dead-lettered"
        );
        Ok(())
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

/// Wraps a backend's raw deliveries with bounded redelivery and dead letters.
/// `bus` publishes the dead letters.
pub(crate) fn with_dead_letters(
    raw: ConsumerStream,
    bus: Arc<dyn EventBus>,
    config: &ConsumerConfig,
) -> ConsumerStream {
    let shared = Arc::new(Shared {
        bus,
        consumer: config.name.clone(),
        dead_letter_subject: config.dead_letter_subject.clone(),
        max_deliver: config.max_deliver,
        ack_wait: config.ack_wait,
        backoff: config.backoff.clone(),
        last_errors: Mutex::new(FxHashMap::default()),
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
                if count > shared.max_deliver {
                    // The last allowed delivery went unanswered: dead-letter it here.
                    let reason = shared.last_error(&msg).unwrap_or_else(|| {
                        format!(
                            "not acknowledged within the ack wait ({:?}) after {} deliveries",
                            shared.ack_wait, shared.max_deliver
                        )
                    });
                    match shared
                        .dead_letter(&msg, shared.max_deliver, &reason, &Headers::new())
                        .await
                    {
                        Ok(()) => {
                            let _ = acker
                                .answer(AckKind::Term {
                                    reason: Some(reason),
                                })
                                .await;
                            continue;
                        }
                        Err(e) => {
                            let _ = acker
                                .answer(AckKind::Nack {
                                    delay: Some(DLQ_RETRY_DELAY),
                                    reason: None,
                                })
                                .await;
                            return Some((Err(e), (raw, shared)));
                        }
                    }
                }
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
        match kind {
            AckKind::Nack { delay, reason } => {
                let reason_text = reason.clone().unwrap_or_else(|| "nacked".to_string());
                if self.count >= self.shared.max_deliver {
                    return self.dead_letter(&reason_text, &Headers::new()).await;
                }
                self.shared.remember(&self.msg, &reason_text);
                let delay = delay.or_else(|| self.shared.backoff_for(self.count));
                self.inner.answer(AckKind::Nack { delay, reason }).await
            }
            AckKind::DeadLetter { reason, headers } => self.dead_letter(&reason, &headers).await,
            other => self.inner.answer(other).await,
        }
    }

    async fn answer_nowait(&self, kind: AckKind) -> Result<(), BusError> {
        match kind {
            AckKind::Ack | AckKind::InProgress => self.inner.answer_nowait(kind).await,
            // Answers with dead-letter bookkeeping take the confirmed path.
            other => self.answer(other).await,
        }
    }
}

impl DeadLetterAcker {
    async fn dead_letter(&self, reason: &str, extra: &Headers) -> Result<(), BusError> {
        self.shared.last_error(&self.msg);
        self.shared
            .dead_letter(&self.msg, self.count, reason, extra)
            .await?;
        self.inner
            .answer(AckKind::Term {
                reason: Some(reason.to_string()),
            })
            .await
    }
}
