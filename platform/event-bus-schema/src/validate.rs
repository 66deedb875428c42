//! Validation on publish ([`ValidatingBus`], a decorator of any
//! `Arc<dyn EventBus>`) and on consume ([`SchemaCheck`], the runner's
//! [`EventCheck`]).

use crate::cloudevents::{self, Data};
use crate::registry::{Payload, Registry, SubjectType, Validation, ValidationFailure, Version};
use async_trait::async_trait;
use event_bus::consumer::ConsumerState;
use event_bus::runner::EventCheck;
use event_bus::{
    BusError, BusMessage, ConsumerConfig, ConsumerStream, Envelope, ErrorKind, EventBus, Headers,
    HealthReport, MessageId, PublishAck, PublishFuture, Subscription,
};
use std::sync::Arc;

/// What to do with an event on a subject no registered type covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnknownTypes {
    /// Let it through unchecked, without CloudEvents headers.
    #[default]
    Allow,
    /// Refuse it: a schema violation ([`ErrorKind::Rejected`]) on publish, a
    /// dead letter on consume.
    Refuse,
}

/// The error refusing an event that breaks its contract: a
/// [`Rejected`](ErrorKind::Rejected) error (core's kind for "refused by a
/// check") whose message says it is a schema violation and why.
fn violation(why: String) -> BusError {
    BusError::new(ErrorKind::Rejected, format!("schema violation: {why}"))
}

/// The type an event is of: its `ce-type` if given, else the registered
/// type whose subject matches.
fn type_of(registry: &Registry, subject: &str, claimed: Option<&str>) -> Option<Arc<SubjectType>> {
    let by_subject = registry.subject_type(subject);
    match claimed {
        // The common case (what a `ValidatingBus` sends): the claimed type
        // is the subject's, remembered per subject.
        Some(t) if by_subject.as_ref().is_some_and(|s| s.name == t) => by_subject,
        Some(t) => registry.settings(t).map(|settings| {
            Arc::new(SubjectType {
                name: t.to_string(),
                settings,
                latest: registry.latest(t),
            })
        }),
        None => by_subject,
    }
}

/// What [`ValidatingBus::check`] found: the event's type and the version
/// it was checked against, or `None` for a subject of no type (allowed).
type Checked = Option<(Arc<SubjectType>, Option<Arc<Version>>)>;

/// Validates `payload` as an event of type `found`, version `version`
/// (its latest if `None`): [`Registry::validate`], without looking the
/// latest version up again when the subject's look-up found it.
fn validate(
    registry: &Registry,
    found: &SubjectType,
    version: Option<u32>,
    payload: Payload<'_>,
) -> Result<Arc<Version>, ValidationFailure> {
    match (version, &found.latest) {
        (None, Some(latest)) => latest.validate(payload),
        _ => registry.validate(&found.name, version, payload),
    }
}

/// A bus that validates what it publishes against the registry and sets
/// the CloudEvents headers; everything else goes to the bus it wraps.
///
/// The event's type is its `ce-type` header if the publisher set one, else
/// the type whose subject pattern matches; its version is the one its
/// `ce-dataschema` names, else the type's latest. A payload that does not
/// match is a schema violation ([`ErrorKind::Rejected`], the message
/// starting `schema violation:`) naming the subject, type, version and each
/// violation's JSON Pointer, and
/// nothing is published (with [`Validation::Warn`] it is logged and
/// published). In a [`publish_batch`](EventBus::publish_batch) each event is
/// validated: an invalid one gets that error in its place and is not
/// published, the valid ones are, in order (one failure does not stop the
/// others, as for any batch).
#[derive(Clone)]
pub struct ValidatingBus {
    inner: Arc<dyn EventBus>,
    registry: Registry,
    source: String,
    unknown: UnknownTypes,
    headers: bool,
}

impl std::fmt::Debug for ValidatingBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidatingBus")
            .field("backend", &self.inner.backend_name())
            .field("source", &self.source)
            .field("unknown", &self.unknown)
            .finish()
    }
}

impl ValidatingBus {
    /// Wraps `inner`; `ce-source` is `/event-bus` until [`source`](Self::source).
    pub fn new(inner: Arc<dyn EventBus>, registry: Registry) -> Self {
        ValidatingBus {
            inner,
            registry,
            source: "/event-bus".to_string(),
            unknown: UnknownTypes::default(),
            headers: true,
        }
    }

    /// Whether to set the CloudEvents headers and a message id (default:
    /// yes). Without them a plain `publish` takes the wrapped bus's own
    /// fast path after validation: on NATS the headers and the id (which
    /// JetStream de-duplicates on) cost more than the validation (see the
    /// docs/performance.md).
    pub fn cloudevents_headers(mut self, on: bool) -> Self {
        self.headers = on;
        self
    }

    /// The `ce-source` of what this service publishes (e.g. `/auth`).
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// What to do with subjects no type covers (default: allow).
    pub fn unknown_types(mut self, unknown: UnknownTypes) -> Self {
        self.unknown = unknown;
        self
    }

    /// The registry it validates against.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Validates `env` and sets its CloudEvents headers and id.
    pub fn prepare(&self, mut env: Envelope) -> Result<Envelope, BusError> {
        let Some((found, checked)) = self.check(&env.subject, &env.headers, &env.payload)? else {
            return Ok(env);
        };
        if !self.headers {
            return Ok(env);
        }
        let id = match env.id.as_ref().and_then(MessageId::given) {
            Some(id) => id.to_string(),
            None => {
                let id = uuid::Uuid::now_v7().to_string();
                env.id = Some(MessageId::new(id.as_str()));
                id
            }
        };
        let dataschema = checked.map(|v| v.uri()).unwrap_or_default();
        cloudevents::set_binary(
            &mut env.headers,
            &id,
            &found.name,
            &self.source,
            &dataschema,
        );
        if dataschema.is_empty() {
            env.headers.remove(cloudevents::DATASCHEMA);
        }
        Ok(env)
    }

    /// Validates an event: its type and the version it was checked against
    /// (`None` for a subject of no type, allowed), or why it is refused.
    fn check(&self, subject: &str, headers: &Headers, payload: &[u8]) -> Result<Checked, BusError> {
        let claimed = cloudevents::header(headers, cloudevents::TYPE);
        let Some(found) = type_of(&self.registry, subject, claimed) else {
            return match (self.unknown, claimed) {
                (UnknownTypes::Allow, _) => Ok(None),
                (UnknownTypes::Refuse, Some(t)) => Err(violation(format!(
                    "event on {subject:?} claims type {t:?}, which is not registered"
                ))),
                (UnknownTypes::Refuse, None) => Err(violation(format!(
                    "no event type is registered for subject {subject:?}"
                ))),
            };
        };
        let version = cloudevents::header(headers, cloudevents::DATASCHEMA)
            .and_then(cloudevents::parse_dataschema)
            .map(|(_, v)| v);
        let checked = match found.settings.validation {
            Validation::Off => match version {
                Some(v) => self.registry.version(&found.name, v),
                None => found.latest.clone(),
            },
            Validation::Warn | Validation::Enforce => {
                match validate(&self.registry, &found, version, Payload::Json(payload)) {
                    Ok(v) => Some(v),
                    Err(failure) if found.settings.validation == Validation::Warn => {
                        tracing::warn!(
                            subject = %subject,
                            problem = %failure.describe(subject),
                            "publishing an event that does not match its schema (validation: warn)"
                        );
                        match failure {
                            ValidationFailure::Invalid { version, .. } => Some(version),
                            ValidationFailure::UnknownVersion { .. } => None,
                        }
                    }
                    Err(failure) => return Err(violation(failure.describe(subject))),
                }
            }
        };
        Ok(Some((found, checked)))
    }
}

#[async_trait]
impl EventBus for ValidatingBus {
    fn publish<'a>(&'a self, subject: &'a str, payload: Vec<u8>) -> PublishFuture<'a> {
        if !self.headers {
            // Validate here, then the wrapped bus's own publish.
            return match self.check(subject, &Headers::new(), &payload) {
                Ok(_) => self.inner.publish(subject, payload),
                Err(e) => PublishFuture::ready(Err(e)),
            };
        }
        PublishFuture::new(async move {
            self.publish_envelope(Envelope::new(subject, payload))
                .await
                .map(|_| ())
        })
    }

    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BusError> {
        self.inner.subscribe(pattern).await
    }

    async fn publish_envelope(&self, envelope: Envelope) -> Result<PublishAck, BusError> {
        let envelope = self.prepare(envelope)?;
        self.inner.publish_envelope(envelope).await
    }

    async fn publish_batch(&self, envelopes: Vec<Envelope>) -> Vec<Result<PublishAck, BusError>> {
        // Valid envelopes go out in one batch, in order; refused ones keep
        // their place in the results.
        let prepared: Vec<Result<Envelope, BusError>> =
            envelopes.into_iter().map(|e| self.prepare(e)).collect();
        let valid: Vec<Envelope> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok().cloned())
            .collect();
        let mut sent = self.inner.publish_batch(valid).await.into_iter();
        prepared
            .into_iter()
            .map(|p| match p {
                Ok(_) => sent.next().unwrap_or_else(|| {
                    Err(BusError::new(
                        ErrorKind::Backend,
                        "the bus returned fewer results than sent",
                    ))
                }),
                Err(e) => Err(e),
            })
            .collect()
    }

    async fn open_consumer(&self, config: ConsumerConfig) -> Result<ConsumerStream, BusError> {
        self.inner.open_consumer(config).await
    }

    /// Unchecked: a dead letter is the record of an event already on the
    /// bus, often the one a check refused (see
    /// [`EventBus::publish_dead_letter`]).
    async fn publish_dead_letter(&self, envelope: Envelope) -> Result<PublishAck, BusError> {
        self.inner.publish_dead_letter(envelope).await
    }

    async fn consumer_state(&self, name: &str, filter: &str) -> Result<ConsumerState, BusError> {
        self.inner.consumer_state(name, filter).await
    }

    async fn health(&self) -> HealthReport {
        self.inner.health().await
    }

    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }

    async fn flush(&self) -> Result<(), BusError> {
        self.inner.flush().await
    }

    fn tenant(&self) -> Option<&str> {
        self.inner.tenant()
    }

    fn capabilities(&self) -> event_bus::BusCapabilities {
        self.inner.capabilities()
    }

    async fn stored_streams(&self, pattern: &str) -> Result<Vec<String>, BusError> {
        self.inner.stored_streams(pattern).await
    }

    async fn read_stored(
        &self,
        stream: &str,
        pattern: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<BusMessage>, BusError> {
        self.inner.read_stored(stream, pattern, from, max).await
    }

    async fn delete_stored(&self, stream: &str, sequence: u64) -> Result<(), BusError> {
        self.inner.delete_stored(stream, sequence).await
    }
}

/// The runner's check of consumed events against the registry
/// ([`RunnerBuilder::check`](event_bus::runner::RunnerBuilder::check)): an
/// event that does not match the version it claims (`ce-dataschema`, else
/// its type's latest) goes to the dead letters with the violations.
#[derive(Clone, Debug)]
pub struct SchemaCheck {
    registry: Registry,
    unknown: UnknownTypes,
}

impl SchemaCheck {
    /// Checks against `registry`; events of no registered type pass.
    pub fn new(registry: Registry) -> Self {
        SchemaCheck {
            registry,
            unknown: UnknownTypes::default(),
        }
    }

    /// What to do with events of no registered type.
    pub fn unknown_types(mut self, unknown: UnknownTypes) -> Self {
        self.unknown = unknown;
        self
    }
}

impl EventCheck for SchemaCheck {
    fn check(&self, message: &BusMessage) -> Result<(), String> {
        let incoming = cloudevents::incoming(message);
        let subject = message.subject.as_str();
        let Some(found) = type_of(&self.registry, subject, incoming.type_name.as_deref()) else {
            return match self.unknown {
                UnknownTypes::Allow => Ok(()),
                UnknownTypes::Refuse => Err(format!(
                    "event on {subject:?} is of no registered type ({})",
                    incoming.type_name.as_deref().unwrap_or("no ce-type")
                )),
            };
        };
        if found.settings.validation == Validation::Off {
            return Ok(());
        }
        let result = match &incoming.data {
            Data::Payload => validate(
                &self.registry,
                &found,
                incoming.version,
                Payload::Json(&message.payload),
            ),
            Data::Structured(data) => validate(
                &self.registry,
                &found,
                incoming.version,
                Payload::Value(data),
            ),
            Data::Unreadable(why) => return Err(format!("event on {subject:?}: {why}")),
        };
        match result {
            Ok(_) => Ok(()),
            Err(failure) if found.settings.validation == Validation::Warn => {
                tracing::warn!(
                    subject,
                    problem = %failure.describe(subject),
                    "consuming an event that does not match its schema (validation: warn)"
                );
                Ok(())
            }
            Err(failure) => Err(failure.describe(subject)),
        }
    }
}
