//! `KafkaBus`'s settings ([`KafkaConfig`]): brokers, client id, security,
//! tenant, topics created on demand. Present without the `kafka` feature so
//! that a configuration naming Kafka still parses (and `connect` can say how
//! to enable the backend).

use crate::error::BusError;
pub use crate::nats::Secret;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// How the client talks to the brokers (librdkafka's `security.protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no SASL (the default).
    #[default]
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// librdkafka's name of it.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }
}

impl std::str::FromStr for SecurityProtocol {
    type Err = BusError;
    fn from_str(s: &str) -> Result<Self, BusError> {
        match s.to_ascii_lowercase().as_str() {
            "plaintext" => Ok(SecurityProtocol::Plaintext),
            "ssl" | "tls" => Ok(SecurityProtocol::Ssl),
            "sasl_plaintext" => Ok(SecurityProtocol::SaslPlaintext),
            "sasl_ssl" => Ok(SecurityProtocol::SaslSsl),
            _ => Err(BusError::config(
                "kafka.security_protocol",
                s,
                "expected plaintext, ssl, sasl_plaintext or sasl_ssl",
            )),
        }
    }
}

/// Settings of `KafkaBus`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// `host:port` of one or more brokers (librdkafka's `bootstrap.servers`).
    pub bootstrap_servers: Vec<String>,
    /// The client id brokers log and quota by.
    pub client_id: String,
    /// `security.protocol`.
    pub security_protocol: SecurityProtocol,
    /// SASL mechanism (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`).
    pub sasl_mechanism: Option<String>,
    /// SASL user name.
    pub sasl_username: Option<String>,
    /// SASL password (redacted in `Debug`, `Display` and serialization).
    pub sasl_password: Option<Secret>,
    /// CA certificates to verify the brokers with (PEM).
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for mutual TLS.
    pub tls_cert_file: Option<PathBuf>,
    /// Client key (PEM), for mutual TLS.
    pub tls_key_file: Option<PathBuf>,
    /// Password of the client key (redacted).
    pub tls_key_password: Option<Secret>,
    /// Confine the bus to this tenant: its topics are named `<tenant>.<topic>`
    /// and its consumer groups `<tenant>.<name>`.
    pub tenant: Option<String>,
    /// Partitions of a topic the bus creates on demand.
    pub partitions: i32,
    /// Replication factor of a topic the bus creates on demand.
    pub replication_factor: i16,
    /// How long a publish may wait for the brokers' acknowledgement
    /// (librdkafka's `message.timeout.ms`), and admin and metadata calls take.
    #[serde(with = "crate::duration_str")]
    pub publish_timeout: Duration,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: vec!["127.0.0.1:9092".into()],
            client_id: "event-bus".into(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_key_password: None,
            tenant: None,
            partitions: 3,
            replication_factor: 1,
            publish_timeout: Duration::from_secs(10),
        }
    }
}

impl KafkaConfig {
    /// Settings for the brokers at `bootstrap` (comma-separated `host:port`s;
    /// a `kafka://` scheme is accepted and dropped).
    pub fn new(bootstrap: &str) -> Self {
        KafkaConfig {
            bootstrap_servers: parse_bootstrap(bootstrap),
            ..KafkaConfig::default()
        }
    }

    /// Checks the settings; the error names the field and the value.
    pub fn validate(&self) -> Result<(), BusError> {
        if self.bootstrap_servers.is_empty() {
            return Err(BusError::config(
                "kafka.bootstrap_servers",
                "",
                "at least one broker `host:port` is needed",
            ));
        }
        for b in &self.bootstrap_servers {
            let ok = b
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(BusError::config(
                    "kafka.bootstrap_servers",
                    b,
                    "each broker is `host:port`",
                ));
            }
        }
        if self.client_id.is_empty() {
            return Err(BusError::config("kafka.client_id", "", "must not be empty"));
        }
        if let Some(t) = &self.tenant {
            crate::nats::validate_tenant("kafka.tenant", t)?;
        }
        if self.partitions < 1 {
            return Err(BusError::config(
                "kafka.partitions",
                &self.partitions.to_string(),
                "must be at least 1",
            ));
        }
        if self.replication_factor < 1 {
            return Err(BusError::config(
                "kafka.replication_factor",
                &self.replication_factor.to_string(),
                "must be at least 1",
            ));
        }
        let sasl = matches!(
            self.security_protocol,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        );
        if sasl && (self.sasl_username.is_none() || self.sasl_password.is_none()) {
            return Err(BusError::config(
                "kafka.security_protocol",
                self.security_protocol.as_str(),
                "SASL needs kafka.sasl_username and kafka.sasl_password",
            ));
        }
        if self.publish_timeout < Duration::from_millis(10) {
            return Err(BusError::config(
                "kafka.publish_timeout",
                &format!("{:?}", self.publish_timeout),
                "must be at least 10ms",
            ));
        }
        Ok(())
    }

    /// The brokers, comma-separated (as librdkafka takes them).
    pub fn bootstrap(&self) -> String {
        self.bootstrap_servers.join(",")
    }
}

/// Splits `kafka://a:9092,b:9092` or `a:9092,b:9092` into `host:port`s.
pub fn parse_bootstrap(s: &str) -> Vec<String> {
    s.split(',')
        .map(|b| b.trim())
        .map(|b| b.strip_prefix("kafka://").unwrap_or(b))
        .map(|b| b.trim_end_matches('/').to_string())
        .filter(|b| !b.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_parsing_and_validation() {
        let c = KafkaConfig::new("kafka://10.0.0.1:9092, 10.0.0.2:9093/");
        assert_eq!(c.bootstrap_servers, ["10.0.0.1:9092", "10.0.0.2:9093"]);
        c.validate().unwrap();
        let bad = KafkaConfig::new("nohost");
        let e = bad.validate().unwrap_err();
        assert!(e.to_string().contains("nohost"), "{e}");
    }

    #[test]
    fn secrets_are_redacted() {
        let c = KafkaConfig {
            sasl_username: Some("svc".into()),
            sasl_password: Some("hunter2".into()),
            security_protocol: SecurityProtocol::SaslSsl,
            ..KafkaConfig::default()
        };
        c.validate().unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&c).unwrap().contains("hunter2"));
    }

    #[test]
    fn sasl_without_credentials_is_an_error() {
        let c = KafkaConfig {
            security_protocol: SecurityProtocol::SaslPlaintext,
            ..KafkaConfig::default()
        };
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("sasl_username"), "{e}");
    }
}
