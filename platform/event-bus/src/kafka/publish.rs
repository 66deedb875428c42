//! The one publish path of `KafkaBus`: validate, map the subject onto its
//! topic, send through the idempotent `acks=all` producer and await the
//! brokers' acknowledgement.

use super::topic::{topic_for, ID_HEADER, KEY_HEADER, SUBJECT_HEADER};
use super::{KafkaBus, MAX_PAYLOAD};
use crate::error::{BusError, ErrorKind};
use crate::message::{Envelope, PublishAck};
use crate::subject::{first_token, validate_bus_subject};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;

/// A validated envelope, ready to send.
pub(super) struct Prepared {
    topic: String,
    key: String,
    envelope: Envelope,
    /// The publish span (not entered), whose context the headers carry.
    span: tracing::Span,
}

impl KafkaBus {
    /// Validates `envelope` exactly as the other backends do, plus the
    /// topic-name and size limits of Kafka, and creates its topic if needed.
    /// The publish span opens here (not entered): its context goes into
    /// the headers, and a refusal is recorded on it.
    pub(super) async fn prepare(&self, mut envelope: Envelope) -> Result<Prepared, BusError> {
        let span = crate::trace::publish_span("kafka", &envelope.subject, envelope.payload.len());
        if span.carries() {
            for (name, value) in crate::trace::outgoing(&span, &envelope.headers)
                .into_iter()
                .flatten()
            {
                envelope.headers.insert(name, value);
            }
        }
        match self.check(&envelope).await {
            Ok((topic, key)) => Ok(Prepared {
                topic,
                key,
                envelope,
                span: span.into_span(),
            }),
            Err(e) => {
                let refused = Err(e);
                crate::trace::record_publish(&span, &refused, None);
                refused
            }
        }
    }

    /// The envelope's topic (created if needed) and record key, or why it
    /// is refused.
    async fn check(&self, envelope: &Envelope) -> Result<(String, String), BusError> {
        let subject = envelope.subject.as_str();
        validate_bus_subject(subject)?;
        crate::message::validate_parts(&envelope.headers, envelope.id.as_ref())?;
        for reserved in [SUBJECT_HEADER, ID_HEADER] {
            if envelope.headers.get(reserved).is_some() {
                return Err(BusError::new(
                    ErrorKind::InvalidHeader,
                    format!("header {reserved:?} on {subject:?} is reserved by KafkaBus"),
                ));
            }
        }
        let header_len = envelope.headers.wire_len()
            + envelope.id.as_ref().map_or(0, |i| i.to_string().len() + 8);
        if envelope.payload.len() + header_len > MAX_PAYLOAD {
            return Err(BusError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "message on {subject:?} is {} bytes (payload {} + headers {header_len}), over KafkaBus's limit of {MAX_PAYLOAD} bytes",
                    envelope.payload.len() + header_len,
                    envelope.payload.len()
                ),
            ));
        }
        let topic = topic_for(self.tenant_opt(), first_token(subject))?;
        self.ensure_topic(&topic).await?;
        let key = envelope
            .headers
            .get(KEY_HEADER)
            .unwrap_or(subject)
            .to_string();
        Ok((topic, key))
    }

    /// Sends a prepared envelope and waits for the acknowledgement.
    pub(super) async fn send(&self, p: Prepared) -> Result<PublishAck, BusError> {
        let mut headers = OwnedHeaders::new_with_capacity(p.envelope.headers.len() + 2);
        headers = headers.insert(Header {
            key: SUBJECT_HEADER,
            value: Some(p.envelope.subject.as_bytes()),
        });
        let id = p.envelope.id.as_ref().map(|i| i.to_string());
        if let Some(id) = &id {
            headers = headers.insert(Header {
                key: ID_HEADER,
                value: Some(id.as_bytes()),
            });
        }
        for (name, value) in p.envelope.headers.iter() {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let record = FutureRecord::to(&p.topic)
            .payload(&p.envelope.payload[..])
            .key(p.key.as_bytes())
            .headers(headers);
        let timeout = self.inner.config.publish_timeout;
        let result = match self.inner.producer.send(record, timeout).await {
            Ok(d) => Ok(PublishAck::new(
                Some(format!("{}/{}", p.topic, d.partition)),
                (d.offset as u64).saturating_add(1),
                false,
            )),
            Err((e, _)) => Err(publish_error(&p.envelope.subject, &p.topic, e)),
        };
        crate::trace::record_publish(&p.span, &result, result.as_ref().ok());
        result
    }

    pub(super) async fn publish_one(&self, envelope: Envelope) -> Result<PublishAck, BusError> {
        let p = self.prepare(envelope).await?;
        self.send(p).await
    }

    /// Validates every envelope first, then sends the valid ones together
    /// (the producer pipelines them; per partition in order) and waits for
    /// every acknowledgement.
    pub(super) async fn publish_many(
        &self,
        envelopes: Vec<Envelope>,
    ) -> Vec<Result<PublishAck, BusError>> {
        let mut prepared = Vec::with_capacity(envelopes.len());
        for e in envelopes {
            prepared.push(self.prepare(e).await);
        }
        let sends = prepared.into_iter().map(|p| async move {
            match p {
                Ok(p) => self.send(p).await,
                Err(e) => Err(e),
            }
        });
        futures::future::join_all(sends).await
    }
}

fn publish_error(subject: &str, topic: &str, e: KafkaError) -> BusError {
    let kind = match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => ErrorKind::PayloadTooLarge,
        Some(RDKafkaErrorCode::MessageTimedOut) | Some(RDKafkaErrorCode::RequestTimedOut) => {
            ErrorKind::Timeout
        }
        Some(RDKafkaErrorCode::TopicAuthorizationFailed)
        | Some(RDKafkaErrorCode::ClusterAuthorizationFailed) => ErrorKind::PermissionDenied,
        _ => ErrorKind::Unavailable,
    };
    BusError::new(
        kind,
        format!("kafka: publishing {subject:?} to topic {topic}: {e}"),
    )
}
