//! Validation on publish ([`ValidatingBus`], a decorator of any
//! `Arc<dyn EventBus>`) and on consume ([`SchemaCheck`], the runner's
//! [`EventCheck`]).

use crate::cloudevents::{self, Data};
use crate::registry::{Registry, TypeSettings, Validation, ValidationFailure};
use async_trait::async_trait;
use event_bus::consumer::ConsumerState;
use event_bus::runner::EventCheck;
use event_bus::{
    BusError, BusMessage, ConsumerConfig, ConsumerStream, Envelope, ErrorKind, EventBus,
    HealthReport, MessageId, PublishAck, PublishFuture, Subscription,
};
use std::sync::Arc;

/// What to do with an event on a subject no registered type covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnknownTypes {
    /// Let it through unchecked, without CloudEvents headers.
    #[default]
    Allow,
    /// Refuse it: a [`SchemaViolation`](ErrorKind::SchemaViolation) on
    /// publish, a dead letter on consume.
    Refuse,
}

/// The type an event is of: its `ce-type` if given, else the registered
/// type whose subject matches.
fn type_of(
    registry: &Registry,
    subject: &str,
    claimed: Option<&str>,
) -> Option<(String, TypeSettings)> {
    match claimed {
        Some(t) => registry.settings(t).map(|s| (t.to_string(), s)),
        None => registry.type_for_subject(subject),
    }
}

/// A bus that validates what it publishes against the registry and sets
/// the CloudEvents headers; everything else goes to the bus it wraps.
///
/// The event's type is its `ce-type` header if the publisher set one, else
/// the type whose subject pattern matches; its version is the one its
/// `ce-dataschema` names, else the type's latest. A payload that does not
/// match is a [`SchemaViolation`](ErrorKind::SchemaViolation) error naming
/// the subject, type, version and each violation's JSON Pointer, and
/// nothing is published (with [`Validation::Warn`] it is logged and
/// published).
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
    /// README's figures).
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
        let claimed = cloudevents::header(&env.headers, cloudevents::TYPE).map(str::to_string);
        let Some((type_name, settings)) = type_of(&self.registry, &env.subject, claimed.as_deref())
        else {
            return match (self.unknown, claimed) {
                (UnknownTypes::Allow, _) => Ok(env),
                (UnknownTypes::Refuse, Some(t)) => Err(BusError::new(
                    ErrorKind::SchemaViolation,
                    format!(
                        "event on {:?} claims type {t:?}, which is not registered",
                        env.subject
                    ),
                )),
                (UnknownTypes::Refuse, None) => Err(BusError::new(
                    ErrorKind::SchemaViolation,
                    format!("no event type is registered for subject {:?}", env.subject),
                )),
            };
        };
        let version = cloudevents::header(&env.headers, cloudevents::DATASCHEMA)
            .and_then(cloudevents::parse_dataschema)
            .map(|(_, v)| v);
        let checked = match settings.validation {
            Validation::Off => match version {
                Some(v) => self.registry.version(&type_name, v),
                None => self.registry.latest(&type_name),
            },
            Validation::Warn | Validation::Enforce => {
                match self.registry.validate(&type_name, version, &env.payload) {
                    Ok(v) => Some(v),
                    Err(failure) if settings.validation == Validation::Warn => {
                        tracing::warn!(
                            subject = %env.subject,
                            problem = %failure.describe(&env.subject),
                            "publishing an event that does not match its schema (validation: warn)"
                        );
                        match failure {
                            ValidationFailure::Invalid { version, .. } => Some(version),
                            ValidationFailure::UnknownVersion { .. } => None,
                        }
                    }
                    Err(failure) => {
                        return Err(BusError::new(
                            ErrorKind::SchemaViolation,
                            failure.describe(&env.subject),
                        ))
                    }
                }
            }
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
        cloudevents::set_binary(&mut env.headers, &id, &type_name, &self.source, &dataschema);
        if dataschema.is_empty() {
            env.headers.remove(cloudevents::DATASCHEMA);
        }
        Ok(env)
    }
}

#[async_trait]
impl EventBus for ValidatingBus {
    fn publish<'a>(&'a self, subject: &'a str, payload: Vec<u8>) -> PublishFuture<'a> {
        if !self.headers {
            // Validate here, then the wrapped bus's own publish.
            let env = match self.prepare(Envelope::new(subject, payload)) {
                Ok(env) => env,
                Err(e) => return PublishFuture::ready(Err(e)),
            };
            let payload = Vec::from(env.payload);
            return self.inner.publish(subject, payload);
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

    async fn consume(&self, config: ConsumerConfig) -> Result<ConsumerStream, BusError> {
        self.inner.consume(config).await
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
        let Some((type_name, settings)) =
            type_of(&self.registry, subject, incoming.type_name.as_deref())
        else {
            return match self.unknown {
                UnknownTypes::Allow => Ok(()),
                UnknownTypes::Refuse => Err(format!(
                    "event on {subject:?} is of no registered type ({})",
                    incoming.type_name.as_deref().unwrap_or("no ce-type")
                )),
            };
        };
        if settings.validation == Validation::Off {
            return Ok(());
        }
        let result = match &incoming.data {
            Data::Payload => self
                .registry
                .validate(&type_name, incoming.version, &message.payload),
            Data::Structured(data) => {
                let bytes = serde_json::to_vec(data).expect("a Value serialises");
                self.registry.validate(&type_name, incoming.version, &bytes)
            }
            Data::Unreadable(why) => return Err(format!("event on {subject:?}: {why}")),
        };
        match result {
            Ok(_) => Ok(()),
            Err(failure) if settings.validation == Validation::Warn => {
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
