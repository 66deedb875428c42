//! Enqueueing events in the caller's transaction: the checks, the insert,
//! and the commit that wakes the relays.

use super::{Outbox, MAX_KEY_LEN};
use crate::error::db_error;
use event_bus::subject::validate_bus_subject;
use event_bus::{BusError, Envelope, ErrorKind, MessageId};
use sqlx::{Postgres, Transaction};
use tracing::Instrument;

impl Outbox {
    /// Enqueues `envelope` in the caller's transaction `tx`, ordered under
    /// its subject; returns its message id (the envelope's, or a new
    /// UUIDv7). Nothing is published unless `tx` commits.
    ///
    /// An invalid or reserved subject, an invalid header or id, or a payload
    /// plus headers above [`max_payload`](Self::max_payload) is an error
    /// naming it, returned before anything is written (the transaction is
    /// still usable).
    pub async fn enqueue(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        envelope: Envelope,
    ) -> Result<MessageId, BusError> {
        let key = envelope.subject.clone();
        self.enqueue_with_key(tx, &key, envelope).await
    }

    /// [`enqueue`](Self::enqueue) with another ordering key than the subject
    /// (e.g. an aggregate id): rows of one key are published in order, rows
    /// of different keys independently. At most [`MAX_KEY_LEN`] bytes.
    pub async fn enqueue_with_key(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        order_key: &str,
        envelope: Envelope,
    ) -> Result<MessageId, BusError> {
        let span = tracing::info_span!(
            target: "event_bus::create",
            "create",
            otel.name = %format_args!("create {}", envelope.subject),
            otel.kind = "producer",
            messaging.system = "outbox",
            messaging.operation.name = "create",
            messaging.operation.type = "create",
            messaging.destination.name = envelope.subject.as_str(),
            messaging.message.body.size = envelope.payload.len() as i64,
            messaging.message.id = tracing::field::Empty,
        );
        // The row keeps the context it was written in (feature `otel`): the
        // published message continues this trace, the relay's send span
        // links to it.
        #[cfg(feature = "otel")]
        let envelope = {
            let mut envelope = envelope;
            if !span.is_disabled()
                && envelope
                    .headers
                    .get(event_bus::trace::TRACEPARENT)
                    .is_none()
            {
                span.in_scope(|| event_bus::trace::inject_current(&mut envelope.headers));
            }
            envelope
        };
        let id = self.check(order_key, &envelope)?;
        span.record("messaging.message.id", id.as_str());
        self.insert(tx, order_key, &id, &envelope)
            .instrument(span)
            .await?;
        Ok(MessageId::new(id))
    }

    async fn insert(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        order_key: &str,
        id: &str,
        envelope: &Envelope,
    ) -> Result<(), BusError> {
        let (names, values): (Vec<String>, Vec<String>) = envelope
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .unzip();
        let rows = &self.tables.rows;
        let insert = format!(
            "INSERT INTO {rows} (message_id, subject, order_key, header_names, header_values, payload) VALUES ($1, $2, $3, $4, $5, $6)"
        );
        let sql = if self.notify {
            format!("WITH row AS ({insert} RETURNING 1) SELECT pg_notify($7, '') FROM row")
        } else {
            insert
        };
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(&envelope.subject)
            .bind(order_key)
            .bind(names)
            .bind(values)
            .bind(envelope.payload.as_ref())
            .bind(&self.tables.channel)
            .execute(&mut **tx)
            .await
            .map_err(|e| {
                db_error(
                    &format!("outbox: enqueueing an event on {:?}", envelope.subject),
                    e,
                )
            })?;
        Ok(())
    }

    /// Enqueues `value` as JSON on `subject` (see [`enqueue`](Self::enqueue)).
    pub async fn enqueue_json<T: serde::Serialize + ?Sized>(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        subject: &str,
        value: &T,
    ) -> Result<MessageId, BusError> {
        let payload = serde_json::to_vec(value).map_err(|e| {
            BusError::with_source(
                ErrorKind::Codec,
                format!("outbox: encoding the event for {subject:?} as JSON"),
                e,
            )
        })?;
        self.enqueue(tx, Envelope::new(subject, payload)).await
    }

    /// The checks of [`enqueue`](Self::enqueue), before any SQL; returns the id.
    fn check(&self, order_key: &str, envelope: &Envelope) -> Result<String, BusError> {
        validate_bus_subject(&envelope.subject)?;
        envelope.validate()?;
        // PostgreSQL text cannot hold NUL: refuse it here, naming the field,
        // rather than fail the caller's transaction in the insert.
        let nul = |field: &str, value: &str| {
            BusError::new(
                ErrorKind::InvalidHeader,
                format!(
                    "outbox: the {field} {:?} contains a NUL character, which PostgreSQL text cannot store",
                    &value[..value.floor_char_boundary(64)]
                ),
            )
        };
        if envelope.subject.contains('\0') {
            return Err(nul("subject", &envelope.subject));
        }
        if order_key.contains('\0') {
            return Err(nul("ordering key", order_key));
        }
        for (name, value) in envelope.headers.iter() {
            if value.contains('\0') {
                return Err(nul(&format!("value of header {name:?}"), value));
            }
        }
        if order_key.is_empty() || order_key.len() > MAX_KEY_LEN {
            return Err(BusError::config(
                "outbox ordering key",
                &order_key[..order_key.floor_char_boundary(64)],
                format!("must be 1 to {MAX_KEY_LEN} bytes"),
            ));
        }
        let size = envelope.payload.len() + envelope.headers.wire_len();
        if size > self.max_payload {
            return Err(BusError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "outbox: the event for {:?} is {size} bytes with its headers, above the limit of {} bytes (Outbox::max_payload)",
                    envelope.subject, self.max_payload
                ),
            ));
        }
        Ok(match envelope.id.as_ref().and_then(MessageId::given) {
            Some(given) => given.to_string(),
            None => uuid::Uuid::now_v7().to_string(),
        })
    }

    /// Commits `tx` and wakes at once the relays built from this `Outbox`
    /// or its clones (use it in place of `tx.commit()` after an enqueue;
    /// otherwise a relay finds the rows at its next poll or notification).
    pub async fn commit(&self, tx: Transaction<'_, Postgres>) -> Result<(), BusError> {
        tx.commit()
            .await
            .map_err(|e| db_error("outbox: committing", e))?;
        self.wake();
        Ok(())
    }
}
