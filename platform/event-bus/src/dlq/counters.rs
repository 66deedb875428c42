//! The counters of a durable consumer stream (registered once per
//! stream; names in [`crate::metrics`]).

use crate::consumer::AckKind;
use crate::error::ErrorKind;
use crate::metrics::{with_tenant, ANSWERS, CONSUMED_MESSAGES, DEAD_LETTERS, REDELIVERIES};
use metrics::Counter;

/// A durable consumer's handles (registered once per consumer stream).
pub(crate) struct ConsumerMetrics {
    pub(crate) consumed: Counter,
    pub(crate) redelivered: Counter,
    pub(crate) dead_letters: Counter,
    system: &'static str,
    consumer: String,
    tenant: Option<String>,
    answers: [Counter; 5],
}

/// The answer kinds, in the order of `ConsumerMetrics::answers`.
const ANSWER_KINDS: [&str; 5] = ["ack", "nack", "term", "in_progress", "dead_letter"];

impl ConsumerMetrics {
    pub(crate) fn new(system: &'static str, consumer: &str, tenant: Option<&str>) -> Self {
        let labels = |extra: Option<&'static str>| {
            let mut l = with_tenant(
                vec![
                    ("messaging.system", system.to_string()),
                    ("messaging.consumer.group.name", consumer.to_string()),
                ],
                tenant,
            );
            if let Some(a) = extra {
                l.push(("event_bus.answer", a.to_string()));
            }
            l
        };
        ConsumerMetrics {
            consumed: metrics::counter!(CONSUMED_MESSAGES, &labels(None)),
            redelivered: metrics::counter!(REDELIVERIES, &labels(None)),
            dead_letters: metrics::counter!(DEAD_LETTERS, &labels(None)),
            answers: ANSWER_KINDS.map(|k| metrics::counter!(ANSWERS, &labels(Some(k)))),
            system,
            consumer: consumer.to_string(),
            tenant: tenant.map(str::to_string),
        }
    }

    /// The slot of an answer kind, taken before the answer moves it.
    pub(crate) fn slot(kind: &AckKind) -> usize {
        match kind {
            AckKind::Ack => 0,
            AckKind::Nack { .. } => 1,
            AckKind::Term { .. } => 2,
            AckKind::InProgress => 3,
            AckKind::DeadLetter { .. } => 4,
        }
    }

    /// Counts an answer (by [`slot`](Self::slot)); failures are counted
    /// under their error kind (registered then: they are rare).
    #[inline]
    pub(crate) fn answered(&self, slot: usize, error: Option<ErrorKind>) {
        match error {
            None => self.answers[slot].increment(1),
            Some(e) => self.answer_failed(slot, e),
        }
    }

    #[cold]
    fn answer_failed(&self, slot: usize, e: ErrorKind) {
        let labels = with_tenant(
            vec![
                ("messaging.system", self.system.to_string()),
                ("messaging.consumer.group.name", self.consumer.clone()),
                ("event_bus.answer", ANSWER_KINDS[slot].to_string()),
                ("error.type", e.as_str().to_string()),
            ],
            self.tenant.as_deref(),
        );
        metrics::counter!(ANSWERS, &labels).increment(1)
    }
}
