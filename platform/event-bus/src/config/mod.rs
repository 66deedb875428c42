//! Config-driven backend selection: [`BusConfig`] and [`connect`].
//!
//! The spec's "config-driven swap": the same code runs on the in-memory bus in
//! development and tests and on NATS JetStream in production; only the
//! configuration changes.
//!
//! ```
//! use event_bus::config::{connect, BusConfig, BusType};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), event_bus::BusError> {
//! let config = BusConfig::from_toml_str(r#"
//!     type = "memory"
//!     [memory]
//!     capacity = 4096
//! "#)?;
//! assert_eq!(config.bus_type, BusType::Memory);
//! let bus = connect(&config).await?; // Arc<dyn EventBus>
//! assert_eq!(bus.backend_name(), "memory");
//! # Ok(()) }
//! ```
//!
//! # Environment variables
//!
//! | variable | field | example |
//! |---|---|---|
//! | `EVENT_BUS_CONFIG` | a TOML or JSON file read first ([`BusConfig::load`]) | `/etc/app/bus.toml` |
//! | `EVENT_BUS_TYPE` | `type` | `memory` or `nats` |
//! | `EVENT_BUS_MEMORY_CAPACITY` | `memory.capacity` | `1024` |
//! | `EVENT_BUS_MEMORY_OVERFLOW` | `memory.overflow` | `block`, `drop_newest`, `drop_oldest` |
//! | `EVENT_BUS_MEMORY_MAX_PAYLOAD` | `memory.max_payload` | `1048576` |
//! | `EVENT_BUS_MEMORY_DEDUP_WINDOW` | `memory.dedup_window` | `2m` |
//! | `EVENT_BUS_MEMORY_DEDUP_MAX_IDS` | `memory.dedup_max_ids` | `100000` |
//! | `EVENT_BUS_MEMORY_DURABLE_INACTIVE_THRESHOLD` | `memory.durable_inactive_threshold` | `5m` |
//! | `EVENT_BUS_MEMORY_LOG_MAX_MESSAGES` | `memory.log_max_messages` | `100000` |
//! | `EVENT_BUS_MEMORY_LOG_MAX_BYTES` | `memory.log_max_bytes` | `67108864` |
//! | `EVENT_BUS_MEMORY_LOG_FROM_START` | `memory.log_from_start` | `false` |
//! | `EVENT_BUS_NATS_URL` | `nats.urls` (comma-separated) | `nats://10.0.0.1:4222,nats://10.0.0.2:4222` |
//! | `EVENT_BUS_NATS_TOKEN` | `nats.token` | |
//! | `EVENT_BUS_NATS_USER`, `EVENT_BUS_NATS_PASSWORD` | `nats.user`, `nats.password` | |
//! | `EVENT_BUS_NATS_CREDENTIALS` | `nats.credentials_file` | `/run/secrets/app.creds` |
//! | `EVENT_BUS_NATS_TLS_REQUIRED` | `nats.tls.required` | `true` |
//! | `EVENT_BUS_NATS_TLS_CA` | `nats.tls.ca_file` | |
//! | `EVENT_BUS_NATS_TLS_CERT`, `EVENT_BUS_NATS_TLS_KEY` | `nats.tls.cert_file`, `nats.tls.key_file` | |
//! | `EVENT_BUS_NATS_CONNECT_TIMEOUT` | `nats.connect_timeout` | `5s` |
//! | `EVENT_BUS_NATS_PUBLISH_TIMEOUT` | `nats.publish_timeout` | `5s` |
//! | `EVENT_BUS_NATS_TENANT` | `nats.tenant` | `acme` |
//! | `EVENT_BUS_KAFKA_BOOTSTRAP_SERVERS` | `kafka.bootstrap_servers` (comma-separated) | `10.0.0.1:9092,10.0.0.2:9092` |
//! | `EVENT_BUS_KAFKA_CLIENT_ID` | `kafka.client_id` | `billing` |
//! | `EVENT_BUS_KAFKA_SECURITY_PROTOCOL` | `kafka.security_protocol` | `plaintext`, `ssl`, `sasl_plaintext`, `sasl_ssl` |
//! | `EVENT_BUS_KAFKA_SASL_MECHANISM`, `EVENT_BUS_KAFKA_SASL_USERNAME`, `EVENT_BUS_KAFKA_SASL_PASSWORD` | `kafka.sasl_mechanism`, `kafka.sasl_username`, `kafka.sasl_password` | `SCRAM-SHA-512` |
//! | `EVENT_BUS_KAFKA_TLS_CA`, `EVENT_BUS_KAFKA_TLS_CERT`, `EVENT_BUS_KAFKA_TLS_KEY`, `EVENT_BUS_KAFKA_TLS_KEY_PASSWORD` | `kafka.tls_ca_file`, `kafka.tls_cert_file`, `kafka.tls_key_file`, `kafka.tls_key_password` | |
//! | `EVENT_BUS_KAFKA_TENANT` | `kafka.tenant` | `acme` |
//! | `EVENT_BUS_KAFKA_PARTITIONS` | `kafka.partitions` | `3` |
//! | `EVENT_BUS_KAFKA_PUBLISH_TIMEOUT` | `kafka.publish_timeout` | `10s` |
//!
//! Durations are written like `250ms`, `5s`, `2m`, `1h 30m`.
//!
//! # Secrets
//!
//! The token and password are [`Secret`]s: `Debug`, `Display` and
//! serialisation print `[redacted]`. Credentials inside server URLs
//! (`nats://user:pass@host`) are redacted in `Debug`, serialisation, errors
//! and logs ([`redact_url`]). Parse errors name the line, column and field,
//! never the offending value. Any TLS setting (`ca_file`, `cert_file`,
//! `key_file`) makes TLS required: credentials never go in plaintext to a
//! server that does not ask for TLS.

use crate::bus::EventBus;
use crate::error::{BusError, ErrorKind};
use crate::memory::{InMemoryBus, MemoryConfig, Overflow};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

// The NATS settings live with the NATS backend (as `MemoryConfig` lives in
// `memory`); re-exported here so that `event_bus::config::NatsConfig` and
// the other paths of earlier versions keep working.
#[doc(no_inline)]
pub use crate::kafka::{KafkaConfig, SecurityProtocol};
#[doc(no_inline)]
pub use crate::nats::{
    redact_url, redact_urls, validate_tenant, NatsConfig, Secret, StreamDiscard, StreamRetention,
    StreamSpec, StreamStorage, TlsConfig, MAX_TENANT_LEN, MAX_TIMEOUT,
};

/// Which backend to build.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusType {
    /// [`InMemoryBus`]: in-process, no dependencies (the default).
    #[default]
    #[serde(alias = "inmemory", alias = "in_memory")]
    Memory,
    /// `NatsBus`: NATS JetStream.
    Nats,
    /// `KafkaBus`: Kafka (feature `kafka` of event-bus).
    Kafka,
}

impl std::str::FromStr for BusType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "memory" | "inmemory" | "in_memory" | "in-memory" => Ok(BusType::Memory),
            "nats" | "jetstream" => Ok(BusType::Nats),
            "kafka" => Ok(BusType::Kafka),
            _ => Err("expected `memory`, `nats` or `kafka`".into()),
        }
    }
}

/// Which backend to use and how to set it up.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BusConfig {
    /// The backend.
    #[serde(rename = "type")]
    pub bus_type: BusType,
    /// In-memory settings (used when `type = "memory"`).
    pub memory: MemoryConfig,
    /// NATS settings (used when `type = "nats"`).
    pub nats: NatsConfig,
    /// Kafka settings (used when `type = "kafka"`).
    pub kafka: KafkaConfig,
}

impl BusConfig {
    /// The in-memory default.
    pub fn memory() -> Self {
        BusConfig::default()
    }

    /// NATS at `url`, other settings default.
    pub fn nats(url: impl Into<String>) -> Self {
        BusConfig {
            bus_type: BusType::Nats,
            nats: NatsConfig {
                urls: vec![url.into()],
                ..NatsConfig::default()
            },
            ..BusConfig::default()
        }
    }

    /// Parses TOML; the error names the line, column and bad field, never
    /// the offending text (it may be a secret).
    pub fn from_toml_str(text: &str) -> Result<Self, BusError> {
        toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                    // The key of that line, when it has one (keys are not secret).
                    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                    let key = text[line_start..]
                        .split(['=', '\n'])
                        .next()
                        .map(str::trim)
                        .filter(|k| {
                            !k.is_empty()
                                && k.len() < 64
                                && k.chars()
                                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
                        })
                        .map(|k| format!(" (key `{k}`)"))
                        .unwrap_or_default();
                    format!(" at line {line}, column {column}{key}")
                })
                .unwrap_or_default();
            BusError::new(
                ErrorKind::Config,
                format!(
                    "invalid event-bus configuration{at}: {}",
                    scrub_values(e.message().trim())
                ),
            )
        })
    }

    /// Parses JSON; the error names the line, column and bad field, never
    /// the offending text.
    pub fn from_json_str(text: &str) -> Result<Self, BusError> {
        serde_json::from_str(text).map_err(|e| {
            BusError::new(
                ErrorKind::Config,
                format!(
                    "invalid event-bus configuration: {}",
                    scrub_values(&e.to_string())
                ),
            )
        })
    }

    /// Reads a `.toml` or `.json` file (by extension; TOML otherwise).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BusError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            BusError::with_source(
                ErrorKind::Config,
                format!(
                    "cannot read event-bus configuration file {}",
                    path.display()
                ),
                e,
            )
        })?;
        let parsed = if path.extension().is_some_and(|e| e == "json") {
            Self::from_json_str(&text)
        } else {
            Self::from_toml_str(&text)
        };
        parsed.map_err(|e| {
            BusError::new(
                ErrorKind::Config,
                format!("{}: {}", path.display(), e.message()),
            )
        })
    }

    /// Defaults overridden by the `EVENT_BUS_*` environment variables.
    pub fn from_env() -> Result<Self, BusError> {
        let mut c = BusConfig::default();
        c.apply_env(|k| std::env::var(k).ok())?;
        Ok(c)
    }

    /// `EVENT_BUS_CONFIG`'s file if set (else defaults), then the other
    /// `EVENT_BUS_*` variables on top. The usual way for a service to load its bus.
    pub fn load() -> Result<Self, BusError> {
        let mut c = match std::env::var("EVENT_BUS_CONFIG") {
            Ok(path) if !path.is_empty() => Self::from_file(path)?,
            _ => BusConfig::default(),
        };
        c.apply_env(|k| std::env::var(k).ok())?;
        Ok(c)
    }

    /// Applies `EVENT_BUS_*` variables read through `get` (testable without
    /// touching the process environment). A bad value is an error naming the
    /// variable and the value, also when it parses but fails validation
    /// (`EVENT_BUS_MEMORY_CAPACITY=0`, `EVENT_BUS_NATS_TENANT=acme.eu`).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), BusError> {
        fn parse<T: std::str::FromStr>(var: &str, v: &str) -> Result<T, BusError>
        where
            T::Err: std::fmt::Display,
        {
            v.trim()
                .parse::<T>()
                .map_err(|e| BusError::config(var, v, e))
        }
        let dur = |var: &str, v: &str| {
            humantime::parse_duration(v.trim()).map_err(|e| BusError::config(var, v, e))
        };
        let path = |v: String| Some(PathBuf::from(v));
        if let Some(v) = get("EVENT_BUS_TYPE") {
            self.bus_type = parse("EVENT_BUS_TYPE", &v)?;
        }
        if let Some(v) = get("EVENT_BUS_MEMORY_CAPACITY") {
            self.memory.capacity = parse("EVENT_BUS_MEMORY_CAPACITY", &v)?;
        }
        if let Some(v) = get("EVENT_BUS_MEMORY_OVERFLOW") {
            self.memory.overflow = match v.trim() {
                "block" => Overflow::Block,
                "drop_newest" => Overflow::DropNewest,
                "drop_oldest" => Overflow::DropOldest,
                _ => {
                    return Err(BusError::config(
                        "EVENT_BUS_MEMORY_OVERFLOW",
                        &v,
                        "expected `block`, `drop_newest` or `drop_oldest`",
                    ))
                }
            };
        }
        if let Some(v) = get("EVENT_BUS_MEMORY_MAX_PAYLOAD") {
            self.memory.max_payload = parse("EVENT_BUS_MEMORY_MAX_PAYLOAD", &v)?;
        }
        if let Some(v) = get("EVENT_BUS_MEMORY_DEDUP_WINDOW") {
            self.memory.dedup_window = dur("EVENT_BUS_MEMORY_DEDUP_WINDOW", &v)?;
        }
        if let Some(v) = get("EVENT_BUS_MEMORY_DEDUP_MAX_IDS") {
            self.memory.dedup_max_ids = parse("EVENT_BUS_MEMORY_DEDUP_MAX_IDS", &v)?;
        }
        if let Some(v) = get("EVENT_BUS_MEMORY_DURABLE_INACTIVE_THRESHOLD") {
            self.memory.durable_inactive_threshold =
                dur("EVENT_BUS_MEMORY_DURABLE_INACTIVE_THRESHOLD", &v)?;
        }
        if let Some(v) = get("EVENT_BUS_MEMORY_LOG_MAX_MESSAGES") {
            self.memory.log_max_messages = parse("EVENT_BUS_MEMORY_LOG_MAX_MESSAGES", &v)?;
        }
        if let Some(v) = get("EVENT_BUS_MEMORY_LOG_MAX_BYTES") {
            self.memory.log_max_bytes = parse("EVENT_BUS_MEMORY_LOG_MAX_BYTES", &v)?;
        }
        if let Some(v) = get("EVENT_BUS_MEMORY_LOG_FROM_START") {
            self.memory.log_from_start = parse("EVENT_BUS_MEMORY_LOG_FROM_START", &v)?;
        }
        let n = &mut self.nats;
        if let Some(v) = get("EVENT_BUS_NATS_URL") {
            n.urls = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
        if let Some(v) = get("EVENT_BUS_NATS_TOKEN") {
            n.token = Some(Secret::from(v));
        }
        if let Some(v) = get("EVENT_BUS_NATS_USER") {
            n.user = Some(v);
        }
        if let Some(v) = get("EVENT_BUS_NATS_PASSWORD") {
            n.password = Some(Secret::from(v));
        }
        if let Some(v) = get("EVENT_BUS_NATS_CREDENTIALS") {
            n.credentials_file = path(v);
        }
        if let Some(v) = get("EVENT_BUS_NATS_TLS_REQUIRED") {
            n.tls.get_or_insert_with(Default::default).required =
                parse("EVENT_BUS_NATS_TLS_REQUIRED", &v)?;
        }
        if let Some(v) = get("EVENT_BUS_NATS_TLS_CA") {
            n.tls.get_or_insert_with(Default::default).ca_file = path(v);
        }
        if let Some(v) = get("EVENT_BUS_NATS_TLS_CERT") {
            n.tls.get_or_insert_with(Default::default).cert_file = path(v);
        }
        if let Some(v) = get("EVENT_BUS_NATS_TLS_KEY") {
            n.tls.get_or_insert_with(Default::default).key_file = path(v);
        }
        if let Some(v) = get("EVENT_BUS_NATS_CONNECT_TIMEOUT") {
            n.connect_timeout = dur("EVENT_BUS_NATS_CONNECT_TIMEOUT", &v)?;
        }
        if let Some(v) = get("EVENT_BUS_NATS_PUBLISH_TIMEOUT") {
            n.publish_timeout = dur("EVENT_BUS_NATS_PUBLISH_TIMEOUT", &v)?;
        }
        if let Some(v) = get("EVENT_BUS_NATS_TENANT") {
            n.tenant = Some(v);
        }
        let k = &mut self.kafka;
        if let Some(v) = get("EVENT_BUS_KAFKA_BOOTSTRAP_SERVERS") {
            k.bootstrap_servers = crate::kafka::parse_bootstrap(&v);
        }
        if let Some(v) = get("EVENT_BUS_KAFKA_CLIENT_ID") {
            k.client_id = v;
        }
        if let Some(v) = get("EVENT_BUS_KAFKA_SECURITY_PROTOCOL") {
            k.security_protocol = v.parse().map_err(|_| {
                BusError::config(
                    "EVENT_BUS_KAFKA_SECURITY_PROTOCOL",
                    &v,
                    "expected plaintext, ssl, sasl_plaintext or sasl_ssl",
                )
            })?;
        }
        if let Some(v) = get("EVENT_BUS_KAFKA_SASL_MECHANISM") {
            k.sasl_mechanism = Some(v);
        }
        if let Some(v) = get("EVENT_BUS_KAFKA_SASL_USERNAME") {
            k.sasl_username = Some(v);
        }
        if let Some(v) = get("EVENT_BUS_KAFKA_SASL_PASSWORD") {
            k.sasl_password = Some(v.into());
        }
        if let Some(v) = get("EVENT_BUS_KAFKA_TLS_CA") {
            k.tls_ca_file = Some(v.into());
        }
        if let Some(v) = get("EVENT_BUS_KAFKA_TLS_CERT") {
            k.tls_cert_file = Some(v.into());
        }
        if let Some(v) = get("EVENT_BUS_KAFKA_TLS_KEY") {
            k.tls_key_file = Some(v.into());
        }
        if let Some(v) = get("EVENT_BUS_KAFKA_TLS_KEY_PASSWORD") {
            k.tls_key_password = Some(v.into());
        }
        if let Some(v) = get("EVENT_BUS_KAFKA_TENANT") {
            k.tenant = Some(v);
        }
        if let Some(v) = get("EVENT_BUS_KAFKA_PARTITIONS") {
            k.partitions = parse("EVENT_BUS_KAFKA_PARTITIONS", &v)?;
        }
        if let Some(v) = get("EVENT_BUS_KAFKA_PUBLISH_TIMEOUT") {
            k.publish_timeout = dur("EVENT_BUS_KAFKA_PUBLISH_TIMEOUT", &v)?;
        }
        // A value that parses but is invalid is reported under the variable
        // that set it, not the file's field name the variable overrides.
        self.validate_as(&|field| {
            let vars: &[&str] = match field {
                "type" => &["EVENT_BUS_TYPE"],
                "memory.capacity" => &["EVENT_BUS_MEMORY_CAPACITY"],
                "memory.max_payload" => &["EVENT_BUS_MEMORY_MAX_PAYLOAD"],
                "nats.urls" => &["EVENT_BUS_NATS_URL"],
                "nats.user/nats.password" => &["EVENT_BUS_NATS_USER", "EVENT_BUS_NATS_PASSWORD"],
                "nats.connect_timeout" => &["EVENT_BUS_NATS_CONNECT_TIMEOUT"],
                "nats.publish_timeout" => &["EVENT_BUS_NATS_PUBLISH_TIMEOUT"],
                "nats.tenant" => &["EVENT_BUS_NATS_TENANT"],
                "kafka.bootstrap_servers" => &["EVENT_BUS_KAFKA_BOOTSTRAP_SERVERS"],
                "kafka.client_id" => &["EVENT_BUS_KAFKA_CLIENT_ID"],
                "kafka.tenant" => &["EVENT_BUS_KAFKA_TENANT"],
                "kafka.partitions" => &["EVENT_BUS_KAFKA_PARTITIONS"],
                "kafka.publish_timeout" => &["EVENT_BUS_KAFKA_PUBLISH_TIMEOUT"],
                _ => &[],
            };
            let set: Vec<&str> = vars.iter().copied().filter(|v| get(v).is_some()).collect();
            if set.is_empty() {
                field.to_string()
            } else {
                set.join("/")
            }
        })
    }

    /// Checks values that parse but make no sense; the error names the field.
    pub fn validate(&self) -> Result<(), BusError> {
        self.validate_as(&|field| field.to_string())
    }

    /// [`validate`](Self::validate), the error naming each field as
    /// `name(field)` says (the environment variable that set it, after
    /// [`apply_env`](Self::apply_env)).
    fn validate_as(&self, name: &dyn Fn(&str) -> String) -> Result<(), BusError> {
        let config =
            |field: &str, value: &str, why: &str| BusError::config(&name(field), value, why);
        if self.bus_type == BusType::Memory {
            if let Some(t) = &self.nats.tenant {
                return Err(config(
                    "nats.tenant",
                    t,
                    "a tenant is supported on NATS only (`type = nats`); with `type = memory` it would be ignored. Remove it, or give each tenant its own InMemoryBus (separate buses share nothing)",
                ));
            }
        }
        if self.bus_type == BusType::Kafka {
            if let Err(e) = self.kafka.validate() {
                // Name the variable that set the field, when one did.
                let mut msg = e.message().to_string();
                for field in [
                    "kafka.bootstrap_servers",
                    "kafka.client_id",
                    "kafka.tenant",
                    "kafka.partitions",
                    "kafka.publish_timeout",
                ] {
                    msg = msg.replace(&format!("`{field}`"), &format!("`{}`", name(field)));
                }
                return Err(BusError::new(ErrorKind::Config, msg));
            }
        }
        if self.memory.capacity == 0 {
            return Err(config("memory.capacity", "0", "must be at least 1"));
        }
        if self.memory.max_payload == 0 {
            return Err(config("memory.max_payload", "0", "must be at least 1"));
        }
        if self.bus_type == BusType::Nats {
            let n = &self.nats;
            if n.urls.is_empty() {
                return Err(config("nats.urls", "", "at least one server URL is needed"));
            }
            for url in &n.urls {
                let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
                    .iter()
                    .any(|s| url.starts_with(s))
                    || !url.contains("://");
                if !scheme_ok || url.trim().is_empty() {
                    return Err(config(
                        "nats.urls",
                        &redact_url(url),
                        "expected nats://host:port (or tls://, ws://, wss://, or host:port)",
                    ));
                }
            }
            if n.user.is_some() != n.password.is_some() {
                return Err(config(
                    "nats.user/nats.password",
                    n.user.as_deref().unwrap_or(""),
                    "user and password must be given together",
                ));
            }
            if n.connect_timeout.is_zero() {
                return Err(config("nats.connect_timeout", "0s", "must be positive"));
            }
            if n.publish_timeout.is_zero() {
                return Err(config("nats.publish_timeout", "0s", "must be positive"));
            }
            for (field, value) in [
                ("nats.connect_timeout", n.connect_timeout),
                ("nats.publish_timeout", n.publish_timeout),
            ] {
                if value > MAX_TIMEOUT {
                    return Err(config(
                        field,
                        &humantime::format_duration(value).to_string(),
                        &format!(
                            "must be at most {}",
                            humantime::format_duration(MAX_TIMEOUT)
                        ),
                    ));
                }
            }
            for spec in &n.streams {
                spec.validate()?;
            }
            if let Some(t) = &n.tenant {
                validate_tenant(&name("nats.tenant"), t)?;
            }
        }
        Ok(())
    }
}

/// Removes the values that serde quotes in its messages (``integer `5` ``,
/// `string "x"`, ...) so that a mistyped secret never reaches an error.
fn scrub_values(message: &str) -> String {
    const QUOTED: [(&str, char); 6] = [
        ("integer `", '`'),
        ("floating point `", '`'),
        ("boolean `", '`'),
        ("character `", '`'),
        ("string \"", '"'),
        ("invalid value: \"", '"'),
    ];
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    'scan: while !rest.is_empty() {
        for (prefix, close) in QUOTED {
            if let Some(after) = rest.strip_prefix(prefix) {
                let kind = prefix.trim_end_matches(['`', '"']).trim_end();
                out.push_str(kind);
                // Skip to the closing quote (a `"` may be escaped inside a string).
                let mut escaped = false;
                let mut end = after.len();
                for (i, c) in after.char_indices() {
                    if c == close && !escaped {
                        end = i + c.len_utf8();
                        break;
                    }
                    escaped = c == '\\' && !escaped;
                }
                rest = &after[end..];
                continue 'scan;
            }
        }
        let c = rest.chars().next().expect("not empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Builds the configured backend as an `Arc<dyn EventBus>`.
///
/// For NATS this connects (bounded by `nats.connect_timeout`).
pub async fn connect(config: &BusConfig) -> Result<Arc<dyn EventBus>, BusError> {
    config.validate()?;
    match config.bus_type {
        BusType::Memory => Ok(Arc::new(InMemoryBus::with_config(config.memory.clone()))),
        BusType::Nats => connect_nats(&config.nats).await,
        BusType::Kafka => connect_kafka(&config.kafka).await,
    }
}

#[cfg(feature = "kafka")]
async fn connect_kafka(config: &KafkaConfig) -> Result<Arc<dyn EventBus>, BusError> {
    Ok(Arc::new(
        crate::kafka::KafkaBus::connect(config.clone()).await?,
    ))
}

#[cfg(not(feature = "kafka"))]
async fn connect_kafka(_config: &KafkaConfig) -> Result<Arc<dyn EventBus>, BusError> {
    Err(BusError::config(
        "type",
        "kafka",
        "this build of event-bus has no Kafka backend: enable the `kafka` feature (`event-bus = { features = [\"kafka\"] }`, or `cargo build --features event-bus/kafka`)",
    ))
}

#[cfg(feature = "nats")]
async fn connect_nats(config: &NatsConfig) -> Result<Arc<dyn EventBus>, BusError> {
    Ok(Arc::new(crate::nats::NatsBus::connect(config).await?))
}

#[cfg(not(feature = "nats"))]
async fn connect_nats(_config: &NatsConfig) -> Result<Arc<dyn EventBus>, BusError> {
    Err(BusError::config(
        "type",
        "nats",
        "this build of event-bus has no NATS backend (enable the `nats` feature)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    #[cfg(not(feature = "kafka"))]
    #[tokio::test]
    async fn kafka_without_the_feature_says_how_to_enable_it() {
        let c = BusConfig {
            bus_type: BusType::Kafka,
            ..BusConfig::default()
        };
        let err = match connect(&c).await {
            Ok(_) => panic!("no Kafka backend in this build"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("`kafka` feature"), "{err}");
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn env_overrides_and_names_bad_values() {
        let mut c = BusConfig::default();
        c.apply_env(env(&[
            ("EVENT_BUS_TYPE", "nats"),
            ("EVENT_BUS_NATS_URL", "nats://a:4222, nats://b:4222"),
            ("EVENT_BUS_NATS_CONNECT_TIMEOUT", "250ms"),
            ("EVENT_BUS_NATS_TENANT", "acme"),
        ]))
        .unwrap();
        assert_eq!(c.bus_type, BusType::Nats);
        assert_eq!(c.nats.urls, vec!["nats://a:4222", "nats://b:4222"]);
        assert_eq!(c.nats.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.nats.tenant.as_deref(), Some("acme"));

        let mut m = BusConfig::default();
        m.apply_env(env(&[
            ("EVENT_BUS_MEMORY_DEDUP_WINDOW", "30s"),
            ("EVENT_BUS_MEMORY_DEDUP_MAX_IDS", "10"),
            ("EVENT_BUS_MEMORY_DURABLE_INACTIVE_THRESHOLD", "1m"),
            ("EVENT_BUS_MEMORY_LOG_MAX_MESSAGES", "5"),
            ("EVENT_BUS_MEMORY_LOG_MAX_BYTES", "4096"),
            ("EVENT_BUS_MEMORY_LOG_FROM_START", "true"),
        ]))
        .unwrap();
        assert_eq!(m.memory.dedup_window, Duration::from_secs(30));
        assert_eq!(m.memory.dedup_max_ids, 10);
        assert_eq!(m.memory.durable_inactive_threshold, Duration::from_secs(60));
        assert_eq!(m.memory.log_max_messages, 5);
        assert_eq!(m.memory.log_max_bytes, 4096);
        assert!(m.memory.log_from_start);

        let mut kc = BusConfig::default();
        kc.apply_env(env(&[
            ("EVENT_BUS_TYPE", "kafka"),
            (
                "EVENT_BUS_KAFKA_BOOTSTRAP_SERVERS",
                "10.0.0.1:9092,10.0.0.2:9092",
            ),
            ("EVENT_BUS_KAFKA_SASL_PASSWORD", "hunter2"),
        ]))
        .unwrap();
        assert_eq!(kc.bus_type, BusType::Kafka);
        assert_eq!(
            kc.kafka.bootstrap_servers,
            ["10.0.0.1:9092", "10.0.0.2:9092"]
        );
        assert!(!format!("{kc:?}").contains("hunter2"));
        let bad = BusConfig::default()
            .apply_env(env(&[
                ("EVENT_BUS_TYPE", "kafka"),
                ("EVENT_BUS_KAFKA_BOOTSTRAP_SERVERS", "nohost"),
            ]))
            .unwrap_err();
        assert!(
            bad.to_string()
                .contains("EVENT_BUS_KAFKA_BOOTSTRAP_SERVERS")
                && bad.to_string().contains("nohost"),
            "{bad}"
        );

        for (var, val) in [
            ("EVENT_BUS_TYPE", "rabbitmq"),
            ("EVENT_BUS_KAFKA_PARTITIONS", "many"),
            ("EVENT_BUS_KAFKA_SECURITY_PROTOCOL", "carrier-pigeon"),
            ("EVENT_BUS_MEMORY_CAPACITY", "lots"),
            ("EVENT_BUS_MEMORY_OVERFLOW", "explode"),
            ("EVENT_BUS_NATS_CONNECT_TIMEOUT", "soon"),
        ] {
            let err = BusConfig::default()
                .apply_env(env(&[(var, val)]))
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            let text = err.to_string();
            assert!(text.contains(var) && text.contains(val), "{text}");
        }
    }

    /// A value that parses but fails validation is reported under the
    /// variable that set it (the documented promise), not the file's field.
    #[test]
    fn env_values_failing_validation_name_the_variable() {
        // The variables set, the one the error names, the field it must not name.
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case<'_>] = &[
            (
                &[
                    ("EVENT_BUS_TYPE", "nats"),
                    ("EVENT_BUS_NATS_URL", "http://x"),
                ],
                "EVENT_BUS_NATS_URL",
                "nats.urls",
            ),
            (
                &[("EVENT_BUS_MEMORY_CAPACITY", "0")],
                "EVENT_BUS_MEMORY_CAPACITY",
                "memory.capacity",
            ),
            (
                &[("EVENT_BUS_MEMORY_MAX_PAYLOAD", "0")],
                "EVENT_BUS_MEMORY_MAX_PAYLOAD",
                "memory.max_payload",
            ),
            (
                &[
                    ("EVENT_BUS_TYPE", "nats"),
                    ("EVENT_BUS_NATS_PUBLISH_TIMEOUT", "0s"),
                ],
                "EVENT_BUS_NATS_PUBLISH_TIMEOUT",
                "nats.publish_timeout",
            ),
            (
                &[("EVENT_BUS_TYPE", "nats"), ("EVENT_BUS_NATS_USER", "u")],
                "EVENT_BUS_NATS_USER",
                "nats.user",
            ),
            (
                &[
                    ("EVENT_BUS_TYPE", "nats"),
                    ("EVENT_BUS_NATS_TENANT", "acme.eu"),
                ],
                "EVENT_BUS_NATS_TENANT",
                "nats.tenant",
            ),
            (
                &[
                    ("EVENT_BUS_TYPE", "nats"),
                    ("EVENT_BUS_NATS_TENANT", "$SYS"),
                ],
                "EVENT_BUS_NATS_TENANT",
                "nats.tenant",
            ),
            (
                &[("EVENT_BUS_TYPE", "nats"), ("EVENT_BUS_NATS_TENANT", "a b")],
                "EVENT_BUS_NATS_TENANT",
                "nats.tenant",
            ),
        ];
        for (vars, var, field) in cases {
            let err = BusConfig::default().apply_env(env(vars)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            let text = err.to_string();
            assert!(text.contains(&format!("`{var}`")), "{vars:?}: {text}");
            assert!(
                !text.contains(field),
                "{vars:?} names the file's field: {text}"
            );
        }
        // Set by the file, the same value is reported under the field.
        let file = BusConfig::from_toml_str("[memory]\ncapacity = 0\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(file.to_string().contains("memory.capacity"), "{file}");
    }

    /// A tenant with the in-memory backend is refused, never ignored.
    #[test]
    fn a_tenant_with_the_memory_backend_is_refused() {
        let mut c = BusConfig::memory();
        c.nats.tenant = Some("acme".into());
        let err = c.validate().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(
            err.to_string().contains("nats.tenant") && err.to_string().contains("NATS only"),
            "{err}"
        );
        let err = BusConfig::default()
            .apply_env(env(&[("EVENT_BUS_NATS_TENANT", "acme")]))
            .unwrap_err();
        assert!(err.to_string().contains("`EVENT_BUS_NATS_TENANT`"), "{err}");
        let err = BusConfig::from_toml_str("type = \"memory\"\n[nats]\ntenant = \"acme\"\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("nats.tenant"), "{err}");
    }

    /// Timeouts far beyond any sensible value are refused, naming the field
    /// (the largest value humantime accepts used to overflow a sum).
    #[test]
    fn huge_timeouts_are_refused() {
        for var in [
            "EVENT_BUS_NATS_CONNECT_TIMEOUT",
            "EVENT_BUS_NATS_PUBLISH_TIMEOUT",
        ] {
            let err = BusConfig::default()
                .apply_env(env(&[
                    ("EVENT_BUS_TYPE", "nats"),
                    (var, "18446744073709551615s"),
                ]))
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(err.to_string().contains("at most 1day"), "{err}");
        }
    }

    const SECRET: &str = "hunter2-very-secret";

    /// Token, password and credentials in URLs never show in Debug,
    /// serialisation or errors.
    #[test]
    fn secrets_are_redacted() {
        let mut c = BusConfig::default();
        c.apply_env(env(&[
            ("EVENT_BUS_TYPE", "nats"),
            (
                "EVENT_BUS_NATS_URL",
                &format!("nats://app:{SECRET}@10.0.0.1:4222"),
            ),
            ("EVENT_BUS_NATS_TOKEN", SECRET),
            ("EVENT_BUS_NATS_USER", "app"),
            ("EVENT_BUS_NATS_PASSWORD", SECRET),
        ]))
        .unwrap();
        assert_eq!(c.nats.password.as_ref().unwrap().expose(), SECRET);
        for shown in [
            format!("{c:?}"),
            format!("{:?}", c.nats),
            serde_json::to_string(&c).unwrap(),
            toml::to_string(&c).unwrap(),
        ] {
            assert!(!shown.contains(SECRET), "{shown}");
            assert!(shown.contains("[redacted]"), "{shown}");
        }
        // A bad URL with credentials is named without them.
        let err = BusConfig::default()
            .apply_env(env(&[
                ("EVENT_BUS_TYPE", "nats"),
                ("EVENT_BUS_NATS_URL", &format!("http://app:{SECRET}@x")),
            ]))
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains(SECRET) && err.contains("http://app:[redacted]@x"),
            "{err}"
        );
    }

    /// A mistyped secret in a file is reported by line, column and field,
    /// never by its text (toml's own message prints the offending line).
    #[test]
    fn parse_errors_do_not_echo_values() {
        let toml_text = format!("type = \"nats\"\n[nats]\npassword = {}\n", "1234567890987");
        let err = BusConfig::from_toml_str(&toml_text)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("1234567890987"), "{err}");
        assert!(
            err.contains("line 3") && err.contains("key `password`"),
            "{err}"
        );
        let toml_text = "[nats]\ntoken = [\"hunter2-very-secret\"]\n";
        let err = BusConfig::from_toml_str(toml_text).unwrap_err().to_string();
        assert!(!err.contains(SECRET), "{err}");
        let json = r#"{"nats":{"password":1234567890987}}"#;
        let err = BusConfig::from_json_str(json).unwrap_err().to_string();
        assert!(
            !err.contains("1234567890987") && err.contains("column"),
            "{err}"
        );
        let json = format!(r#"{{"nats":{{"tenant":"{SECRET}","urls":"{SECRET}"}}}}"#);
        let err = BusConfig::from_json_str(&json).unwrap_err().to_string();
        assert!(!err.contains(SECRET), "{err}");
    }

    #[test]
    fn tls_files_imply_tls() {
        let mut tls = TlsConfig::default();
        assert!(!tls.is_required());
        tls.ca_file = Some("/etc/ca.pem".into());
        assert!(tls.is_required());
        let tls = TlsConfig {
            cert_file: Some("c".into()),
            ..TlsConfig::default()
        };
        assert!(tls.is_required());
    }

    #[test]
    fn files_in_toml_and_json() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("bus.toml");
        std::fs::write(
            &toml_path,
            "type = \"nats\"\n[nats]\nurls = [\"nats://x:1\"]\npublish_timeout = \"2s\"\n",
        )
        .unwrap();
        let c = BusConfig::from_file(&toml_path).unwrap();
        assert_eq!(c.nats.publish_timeout, Duration::from_secs(2));
        let json_path = dir.path().join("bus.json");
        std::fs::write(&json_path, r#"{"type":"memory","memory":{"capacity":7}}"#).unwrap();
        assert_eq!(BusConfig::from_file(&json_path).unwrap().memory.capacity, 7);

        std::fs::write(&toml_path, "type = \"memory\"\n[memory]\ncapasity = 3\n").unwrap();
        let err = BusConfig::from_file(&toml_path).unwrap_err().to_string();
        assert!(
            err.contains("capasity") && err.contains("bus.toml"),
            "{err}"
        );
        std::fs::write(&toml_path, "[nats]\nconnect_timeout = \"forever\"\n").unwrap();
        let err = BusConfig::from_file(&toml_path).unwrap_err().to_string();
        assert!(err.contains("forever"), "{err}");
        let err = BusConfig::from_file(dir.path().join("missing.toml")).unwrap_err();
        assert!(err.to_string().contains("missing.toml"));
    }

    #[tokio::test]
    async fn connect_builds_memory() {
        let bus = connect(&BusConfig::memory()).await.unwrap();
        assert_eq!(bus.backend_name(), "memory");
        assert!(bus.health().await.is_healthy());
    }
}
