//! Secrets in the configuration: the redacting [`Secret`] and redaction of
//! credentials in server URLs.

use serde::{Deserialize, Serialize};

/// A secret configuration value (token, password): its `Debug`, `Display`
/// and serialised forms are `[redacted]`; [`expose`](Secret::expose) gives
/// the value.
///
/// ```
/// use event_bus::nats::Secret;
/// let s = Secret::from("hunter2");
/// assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
/// assert_eq!(s.expose(), "hunter2");
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// `url` with the password (or token) of its user-info replaced by
/// `[redacted]`: `nats://app:pw@host:4222` becomes
/// `nats://app:[redacted]@host:4222`, `nats://tok@host` becomes
/// `nats://[redacted]@host`.
///
/// ```
/// use event_bus::nats::redact_url;
/// assert_eq!(redact_url("nats://app:pw@10.0.0.1:4222"), "nats://app:[redacted]@10.0.0.1:4222");
/// assert_eq!(redact_url("tok@host:4222"), "[redacted]@host:4222");
/// assert_eq!(redact_url("nats://host:4222"), "nats://host:4222");
/// ```
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    let shown = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:[redacted]"),
        None => "[redacted]".to_string(),
    };
    format!("{scheme}{shown}{}", &rest[at..])
}

/// The URLs of `urls`, redacted and joined with `,`, for messages.
pub fn redact_urls(urls: &[String]) -> String {
    urls.iter()
        .map(|u| redact_url(u))
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn serialize_urls<S: serde::Serializer>(
    urls: &[String],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(urls.iter().map(|u| redact_url(u)))
}
