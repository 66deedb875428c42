//! Conversions between async-nats types and the bus's types.

use super::NatsConfig;
use crate::error::{BusError, ErrorKind};
use crate::message::{header, Headers};
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::HeaderMap;
use std::time::Duration;

/// Permission violations the server reported on this connection (it reports
/// them asynchronously, so a denied publish otherwise looks like a timeout).
#[derive(Default)]
pub(crate) struct Violations {
    recent: parking_lot::Mutex<std::collections::VecDeque<(std::time::Instant, String)>>,
}

impl Violations {
    fn record(&self, text: String) {
        let mut recent = self.recent.lock();
        if recent.len() >= 64 {
            recent.pop_front();
        }
        recent.push_back((std::time::Instant::now(), text));
    }

    /// A violation reported since `since` that mentions `subject` (or any, if `subject` is empty).
    pub(crate) fn find(&self, since: std::time::Instant, subject: &str) -> Option<String> {
        let quoted = format!("\"{subject}\"");
        self.recent
            .lock()
            .iter()
            .rev()
            .take_while(|(at, _)| *at >= since)
            .find(|(_, text)| subject.is_empty() || text.contains(&quoted))
            .map(|(_, text)| text.clone())
    }
}

/// Turns a timeout into a permission error when the server reported a
/// violation for `subject` meanwhile.
pub(crate) fn explain(
    err: BusError,
    violations: Option<&Violations>,
    since: std::time::Instant,
    subject: &str,
    what: &str,
) -> BusError {
    if err.kind() != ErrorKind::Timeout && err.kind() != ErrorKind::Backend {
        return err;
    }
    match violations.and_then(|v| v.find(since, subject)) {
        Some(text) => BusError::new(
            ErrorKind::PermissionDenied,
            format!("{what} was denied by the server: {text}"),
        ),
        None => err,
    }
}

/// Connects with every option of `config`; errors name the URL and the cause.
pub(crate) async fn connect(
    config: &NatsConfig,
) -> Result<(async_nats::Client, std::sync::Arc<Violations>), BusError> {
    let violations = std::sync::Arc::new(Violations::default());
    let seen = violations.clone();
    let mut opts = async_nats::ConnectOptions::new()
        .name("event-bus")
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                match event {
                    async_nats::Event::ServerError(async_nats::ServerError::Other(text))
                        if text.to_lowercase().contains("permissions violation") =>
                    {
                        tracing::warn!(error = %text, "NATS permission violation");
                        seen.record(text);
                    }
                    async_nats::Event::Disconnected => {
                        tracing::warn!("NATS connection lost; reconnecting")
                    }
                    async_nats::Event::Connected => tracing::info!("NATS connected"),
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            }
        })
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.publish_timeout.max(Duration::from_secs(1))))
        .max_reconnects(None);
    if let Some(token) = &config.token {
        opts = opts.token(token.expose().to_string());
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        opts = opts.user_and_password(user.clone(), password.expose().to_string());
    }
    if let Some(path) = &config.credentials_file {
        opts = opts.credentials_file(path).await.map_err(|e| {
            BusError::with_source(
                ErrorKind::Config,
                format!("cannot read nats.credentials_file {}", path.display()),
                e,
            )
        })?;
    }
    if let Some(tls) = &config.tls {
        // Any TLS material implies TLS: never send credentials in plaintext
        // to a server (or a man in the middle) that does not ask for TLS.
        if tls.is_required() {
            opts = opts.require_tls(true);
        }
        if let Some(ca) = &tls.ca_file {
            opts = opts.add_root_certificates(ca.clone());
        }
        match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => {
                opts = opts.add_client_certificate(cert.clone(), key.clone());
            }
            (None, None) => {}
            _ => {
                return Err(BusError::config(
                    "nats.tls.cert_file/nats.tls.key_file",
                    "",
                    "a client certificate needs both cert_file and key_file",
                ))
            }
        }
    }
    let urls: Vec<&str> = config.urls.iter().map(String::as_str).collect();
    let what = super::redact_urls(&config.urls);
    if config.urls == NatsConfig::default().urls {
        tracing::warn!(url = %what, "no NATS URL configured (nats.urls / EVENT_BUS_NATS_URL); using the default");
    }
    tracing::info!(url = %what, "connecting to NATS");
    // connection_timeout bounds each attempt; this bounds the whole call.
    let connecting = opts.connect(urls);
    let bound = config
        .connect_timeout
        .saturating_add(Duration::from_secs(1));
    match tokio::time::timeout(bound, connecting).await {
        Err(_) => Err(BusError::new(
            ErrorKind::Timeout,
            format!(
                "could not connect to NATS at {what} within nats.connect_timeout ({:?})",
                config.connect_timeout
            ),
        )),
        Ok(Err(e)) => {
            use async_nats::ConnectErrorKind as K;
            let kind = match e.kind() {
                K::Authentication | K::AuthorizationViolation => ErrorKind::PermissionDenied,
                K::TimedOut => ErrorKind::Timeout,
                K::ServerParse | K::Dns => ErrorKind::Config,
                _ => ErrorKind::Unavailable,
            };
            Err(BusError::with_source(
                kind,
                format!("could not connect to NATS at {what}"),
                e,
            ))
        }
        Ok(Ok(client)) => Ok((client, violations)),
    }
}

/// The bus's headers as a NATS header map (validated beforehand).
pub(crate) fn to_header_map(headers: &Headers) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value, repeat) in headers.iter_marked() {
        // `insert` hashes the name once, `append` twice (a look-up, then
        // the insert): append only a name that came before.
        if repeat {
            map.append(name, value);
        } else {
            map.insert(name, value);
        }
    }
    map
}

/// The user-visible headers of a NATS message (the message id and the
/// server's own `Nats-*` bookkeeping removed) and its message id, if any.
pub(crate) fn from_header_map(map: Option<&HeaderMap>) -> (Headers, Option<String>) {
    let Some(map) = map else {
        return (Headers::new(), None);
    };
    let mut headers = Headers::new();
    let mut id = None;
    for (name, values) in map.iter() {
        let name: &str = name.as_ref();
        if name == header::MESSAGE_ID {
            id = values.first().map(|v| v.as_str().to_string());
            continue;
        }
        if name.starts_with("Nats-") {
            continue;
        }
        for v in values {
            // A header the bus could not publish again (from a publisher
            // outside the bus: an empty or over-long name, `nats-msg-id` in
            // another case) is dropped, so that what a subscriber receives
            // can always be dead-lettered or replayed.
            if crate::message::validate_header(name, v.as_str()).is_err() {
                tracing::debug!(header = %name, "dropped a received header the bus cannot carry");
                continue;
            }
            headers.append(name, v.as_str());
        }
    }
    (headers, id)
}

pub(crate) fn publish_error(subject: &str, e: PublishError) -> BusError {
    let kind = match e.kind() {
        PublishErrorKind::StreamNotFound => {
            return BusError::new(
                ErrorKind::NotFound,
                format!("no JetStream stream stores subject {subject:?}"),
            )
        }
        PublishErrorKind::TimedOut => {
            return BusError::with_source(
                ErrorKind::Timeout,
                format!("publish to {subject:?} was not acknowledged in time (server unreachable or overloaded); it may still be stored: publish again with the same message id to be sure it is stored once"),
                e,
            )
        }
        PublishErrorKind::MaxPayloadExceeded => ErrorKind::PayloadTooLarge,
        PublishErrorKind::BrokenPipe => ErrorKind::Unavailable,
        PublishErrorKind::MaxAckPending => ErrorKind::Backend,
        _ => {
            let text = e.to_string();
            if text.contains("ermission") {
                ErrorKind::PermissionDenied
            } else {
                ErrorKind::Backend
            }
        }
    };
    BusError::with_source(kind, format!("publish to {subject:?} failed"), e)
}

/// Maps a JetStream API failure, naming the operation.
pub(crate) fn api_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> BusError {
    let text = e.to_string();
    let kind = if text.contains("timed out") || text.contains("TimedOut") {
        ErrorKind::Timeout
    } else if text.contains("ermission") || text.contains("authorization") {
        ErrorKind::PermissionDenied
    } else if text.contains("no responders") || text.contains("not enabled") {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Backend
    };
    BusError::with_source(kind, what.to_string(), e)
}

/// When the server stored a message, in nanoseconds since the Unix epoch
/// (0 for a time before it, which no server sends).
pub(crate) fn stored_ns(info: &async_nats::jetstream::message::Info<'_>) -> u64 {
    u64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(0)
}

/// A JetStream message as the bus's message: the tenant prefix removed from
/// the subject, the message id from `Nats-Msg-Id` or else the stream
/// position and the time it was stored (unique across incarnations of the
/// stream; see [`MessageId`](crate::message::MessageId)).
pub(crate) fn to_bus_message(
    message: &async_nats::Message,
    stream: &str,
    stream_seq: u64,
    stored_ns: u64,
    strip: Option<&str>,
) -> crate::message::BusMessage {
    let wire_subject = message.subject.as_str();
    let subject = match strip {
        Some(prefix) => wire_subject.strip_prefix(prefix).unwrap_or(wire_subject),
        None => wire_subject,
    };
    let (headers, id) = from_header_map(message.headers.as_ref());
    let id = match id {
        Some(id) => crate::message::MessageId::new(id),
        None => crate::message::MessageId::stream_position(stream, stream_seq, stored_ns),
    };
    crate::message::BusMessage::new(
        crate::subject::Subject::from_trusted(subject),
        message.payload.clone(),
        headers,
        id,
        stream_seq,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Headers from a publisher outside the bus that the bus could not
    /// publish again are dropped on receipt (found by the `convert` fuzz
    /// target): a received message can always be dead-lettered or replayed.
    #[test]
    fn repeated_header_names_keep_every_value() {
        let headers: Headers = [("a", "1"), ("b", "2"), ("a", "3"), ("c", "4"), ("a", "5")]
            .into_iter()
            .collect();
        let map = to_header_map(&headers);
        let all = |name: &str| {
            map.get_all(name)
                .map(|v| v.as_str().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("a"), ["1", "3", "5"]);
        assert_eq!(all("b"), ["2"]);
        assert_eq!(all("c"), ["4"]);
        let (back, id) = from_header_map(Some(&map));
        assert_eq!(id, None);
        assert_eq!(back.get_all("a").collect::<Vec<_>>(), ["1", "3", "5"]);
        assert_eq!(back.len(), 5);
    }

    #[test]
    fn received_headers_can_be_published_again() {
        let mut map = HeaderMap::new();
        map.insert("Nats-Msg-Id", "id-1");
        map.insert("nats-msg-id", "other");
        map.insert("ok", "kept");
        map.insert("Nats-Sequence", "9");
        map.insert(
            "x".repeat(crate::message::MAX_HEADER_NAME_LEN + 1).as_str(),
            "long",
        );
        let (headers, id) = from_header_map(Some(&map));
        assert_eq!(id.as_deref(), Some("id-1"));
        assert_eq!(headers.iter().collect::<Vec<_>>(), vec![("ok", "kept")]);
        headers.validate().unwrap();
    }
}
