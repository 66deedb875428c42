//! Settings of the NATS backend: [`NatsConfig`] (connection, authentication,
//! TLS, timeouts, tenant), the streams declared at start-up ([`StreamSpec`])
//! and the checks they share with the bus ([`validate_tenant`]).
//!
//! They are part of a [`BusConfig`](crate::config::BusConfig) (its `nats`
//! table), which loads them from a file and `EVENT_BUS_NATS_*` variables.
//! Without the `nats` feature the types are still here, so that a
//! configuration naming NATS parses (and `connect` says the backend is not
//! built in).

use crate::error::BusError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

mod secret;

use secret::serialize_urls;
pub use secret::{redact_url, redact_urls, Secret};

/// TLS settings of the NATS connection. Any file set here makes TLS
/// required, whatever `required` says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsConfig {
    /// Refuse to connect without TLS (implied by any of the files below).
    pub required: bool,
    /// PEM file of the CA certificates to trust.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (for mutual TLS).
    pub cert_file: Option<PathBuf>,
    /// PEM client key (for mutual TLS).
    pub key_file: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether TLS must be used: `required`, or any file set.
    pub fn is_required(&self) -> bool {
        self.required
            || self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
    }
}

/// Settings of the NATS backend.
///
/// `Debug` and serialisation redact the token, the password and credentials
/// in URLs.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct NatsConfig {
    /// Server URLs; the client picks one and fails over to the others.
    #[serde(serialize_with = "serialize_urls")]
    pub urls: Vec<String>,
    /// Token authentication.
    pub token: Option<Secret>,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password (with `user`).
    pub password: Option<Secret>,
    /// A `.creds` file (JWT + NKey).
    pub credentials_file: Option<PathBuf>,
    /// TLS settings.
    pub tls: Option<TlsConfig>,
    /// How long connecting may take.
    #[serde(with = "crate::duration_str")]
    pub connect_timeout: Duration,
    /// How long a publish may wait for the server's acknowledgement.
    #[serde(with = "crate::duration_str")]
    pub publish_timeout: Duration,
    /// Confine the bus to this tenant's subjects and streams.
    pub tenant: Option<String>,
    /// Create a stream for a subject's first token when nothing stores it
    /// yet (see the `nats` module docs). Off: publishing to an undeclared
    /// subject is an error.
    pub auto_create_streams: bool,
    /// Streams to create or reconcile at start-up.
    pub streams: Vec<StreamSpec>,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| redact_url(u)).collect();
        f.debug_struct("NatsConfig")
            .field("urls", &urls)
            .field("token", &self.token)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("credentials_file", &self.credentials_file)
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("publish_timeout", &self.publish_timeout)
            .field("tenant", &self.tenant)
            .field("auto_create_streams", &self.auto_create_streams)
            .field("streams", &self.streams)
            .finish()
    }
}

/// Storage of a declared stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamStorage {
    /// On disk (survives restarts).
    #[default]
    File,
    /// In memory.
    Memory,
}

/// Retention policy of a declared stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamRetention {
    /// Keep messages until a limit (age, bytes, count) removes them.
    #[default]
    Limits,
    /// Keep messages while some consumer has not acknowledged them.
    Interest,
    /// Remove each message once a consumer acknowledges it.
    WorkQueue,
}

/// What a full stream discards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamDiscard {
    /// The oldest messages.
    #[default]
    Old,
    /// The new message (the publish fails).
    New,
}

/// A stream declared in configuration and applied idempotently at start-up
/// (created if missing, updated and reported if it drifted).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct StreamSpec {
    /// Stream name (no `.`, `*`, `>`, `/`, `\\` or whitespace).
    pub name: String,
    /// Subjects (patterns) it stores.
    pub subjects: Vec<String>,
    /// File or memory.
    pub storage: StreamStorage,
    /// Replicas (1 on a single server; up to 5 in a cluster).
    pub replicas: usize,
    /// Retention policy.
    pub retention: StreamRetention,
    /// Oldest message kept (`0s` = no limit).
    #[serde(with = "crate::duration_str")]
    pub max_age: Duration,
    /// Most bytes kept (-1 = no limit).
    pub max_bytes: i64,
    /// Most messages kept (-1 = no limit).
    pub max_messages: i64,
    /// Window in which a repeated message id is a duplicate.
    #[serde(with = "crate::duration_str")]
    pub duplicate_window: Duration,
    /// What a full stream discards.
    pub discard: StreamDiscard,
}

impl Default for StreamSpec {
    fn default() -> Self {
        StreamSpec {
            name: String::new(),
            subjects: Vec::new(),
            storage: StreamStorage::File,
            replicas: 1,
            retention: StreamRetention::Limits,
            max_age: Duration::ZERO,
            max_bytes: -1,
            max_messages: -1,
            duplicate_window: Duration::from_secs(120),
            discard: StreamDiscard::Old,
        }
    }
}

impl StreamSpec {
    /// A file-backed, single-replica stream `name` over `subjects`, no limits.
    pub fn new(
        name: impl Into<String>,
        subjects: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        StreamSpec {
            name: name.into(),
            subjects: subjects.into_iter().map(Into::into).collect(),
            ..StreamSpec::default()
        }
    }

    /// Sets the storage.
    pub fn storage(mut self, storage: StreamStorage) -> Self {
        self.storage = storage;
        self
    }

    /// Sets the number of replicas.
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// Sets the retention policy.
    pub fn retention(mut self, r: StreamRetention) -> Self {
        self.retention = r;
        self
    }

    /// Sets the maximum age.
    pub fn max_age(mut self, d: Duration) -> Self {
        self.max_age = d;
        self
    }

    /// Sets the maximum size in bytes.
    pub fn max_bytes(mut self, n: i64) -> Self {
        self.max_bytes = n;
        self
    }

    /// Sets the maximum number of messages.
    pub fn max_messages(mut self, n: i64) -> Self {
        self.max_messages = n;
        self
    }

    /// Sets the de-duplication window.
    pub fn duplicate_window(mut self, d: Duration) -> Self {
        self.duplicate_window = d;
        self
    }

    /// Sets the discard policy.
    pub fn discard(mut self, d: StreamDiscard) -> Self {
        self.discard = d;
        self
    }

    /// Checks the spec; the error names the stream and the field.
    pub fn validate(&self) -> Result<(), BusError> {
        let bad = |field: &str, value: &str, why: &str| {
            BusError::config(&format!("streams[{}].{field}", self.name), value, why)
        };
        if self.name.is_empty()
            || self.name.chars().any(|c| {
                matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace() || c.is_control()
            })
        {
            return Err(bad(
                "name",
                &self.name,
                "a stream name is non-empty without `.`, `*`, `>`, slashes or whitespace",
            ));
        }
        if self.subjects.is_empty() {
            return Err(bad("subjects", "[]", "a stream needs at least one subject"));
        }
        for s in &self.subjects {
            crate::subject::validate_pattern(s).map_err(|e| bad("subjects", s, e.message()))?;
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(bad(
                "replicas",
                &self.replicas.to_string(),
                "must be 1 to 5",
            ));
        }
        if self.max_bytes == 0 || self.max_bytes < -1 {
            return Err(bad(
                "max_bytes",
                &self.max_bytes.to_string(),
                "must be positive or -1 (no limit)",
            ));
        }
        if self.max_messages == 0 || self.max_messages < -1 {
            return Err(bad(
                "max_messages",
                &self.max_messages.to_string(),
                "must be positive or -1 (no limit)",
            ));
        }
        if self.duplicate_window < Duration::from_millis(100) {
            return Err(bad(
                "duplicate_window",
                &humantime::format_duration(self.duplicate_window).to_string(),
                "must be at least 100ms (JetStream's minimum)",
            ));
        }
        if !self.max_age.is_zero() && self.duplicate_window > self.max_age {
            return Err(bad(
                "duplicate_window",
                &humantime::format_duration(self.duplicate_window).to_string(),
                "must not be longer than max_age",
            ));
        }
        Ok(())
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            urls: vec!["nats://127.0.0.1:4222".into()],
            token: None,
            user: None,
            password: None,
            credentials_file: None,
            tls: None,
            connect_timeout: Duration::from_secs(5),
            publish_timeout: Duration::from_secs(5),
            tenant: None,
            auto_create_streams: true,
            streams: Vec::new(),
        }
    }
}

/// The longest connect or publish timeout accepted (a day): longer is
/// certainly a mistake, and sums of durations stay far from overflowing.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The longest tenant name accepted, in bytes.
pub const MAX_TENANT_LEN: usize = 64;

/// Checks a tenant name (`field` names where it came from in the error).
///
/// A tenant is ONE subject token (no `.`, no wildcard, no whitespace, not in
/// a reserved namespace, at most [`MAX_TENANT_LEN`] bytes), so that no
/// tenant's subjects are a subset of another's: with dotted tenants, `acme`
/// publishing `eu.orders.x` would write tenant `acme.eu`'s `orders.x`.
pub fn validate_tenant(field: &str, tenant: &str) -> Result<(), BusError> {
    let bad = |why: &str| Err(BusError::config(field, tenant, why));
    if tenant.len() > MAX_TENANT_LEN {
        return bad(&format!("longer than {MAX_TENANT_LEN} bytes"));
    }
    if tenant.contains('.') {
        return bad("a tenant is one subject token, without `.` (tenants that are prefixes of each other, like `acme` and `acme.eu`, would see each other's subjects)");
    }
    if crate::subject::validate_subject(tenant).is_err() {
        return bad("must be a valid subject token (not empty, no whitespace, not `*` or `>`)");
    }
    if crate::subject::is_reserved(tenant) {
        return bad("must not start with `$` or be `_INBOX` (reserved for the server)");
    }
    Ok(())
}
