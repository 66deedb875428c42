//! Stream set-up: the default one-stream-per-first-token convention, and
//! declared streams ([`StreamSpec`]) applied idempotently.
//!
//! [`ensure`] compares a declared stream with what the server has (after
//! normalising the server's defaults) and:
//!
//! * creates it when missing ([`StreamAction::Created`]);
//! * leaves it alone when it matches ([`StreamAction::Unchanged`]);
//! * updates it when it drifted, and reports every field that differed
//!   ([`StreamAction::Updated`], also logged as a warning);
//! * fails with [`ErrorKind::Conflict`] naming the stream, the drifted
//!   fields and the server's reason when the server refuses the update (for
//!   example a storage change, which JetStream does not allow in place), or
//!   when the subjects overlap another stream's.
//!
//! (async-nats' `get_or_create_stream` never compares configuration;
//! this does.)

use super::convert::api_error;
use super::{StreamDiscard, StreamRetention, StreamSpec, StreamStorage};
use crate::error::{BusError, ErrorKind};
use async_nats::jetstream::context::CreateStreamErrorKind;
use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use std::time::Duration;

/// What [`ensure`] did to one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamAction {
    /// The stream did not exist and was created.
    Created,
    /// The stream existed with the declared configuration.
    Unchanged,
    /// The stream existed with another configuration and was updated; one
    /// line per drifted field (`field: server had X, declared Y`).
    Updated(Vec<String>),
}

/// The outcome of applying one declared stream.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamReport {
    /// The stream's name (tenant prefix included).
    pub name: String,
    /// What was done.
    pub action: StreamAction,
}

/// A stream name made from `token`: upper-cased, with every character a
/// stream name cannot hold replaced by `_`.
pub fn sanitize(token: &str) -> String {
    token
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// `token` as a stream-name part: upper-cased when that loses nothing
/// (lower-case ASCII letters, digits, `-`, `_`), else sanitised with a stable
/// hash of the original appended, so that distinct tokens (subjects are
/// case-sensitive) never share a stream name.
pub(crate) fn name_part(token: &str) -> String {
    let lossless = token
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if lossless {
        return token.to_ascii_uppercase();
    }
    // FNV-1a, 64 bit: stable across processes and versions.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in token.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{}_{:08x}", sanitize(token), h as u32)
}

/// `part` in a form that never contains `_`: lower-case ASCII letters
/// upper-cased, digits kept, every other byte (upper-case letters, `-`, `_`,
/// UTF-8) written as `-` and two hex digits. Distinct parts give distinct
/// forms, and `_` can separate them unambiguously.
pub(crate) fn escaped_part(part: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(part.len());
    for b in part.bytes() {
        match b {
            b'a'..=b'z' => out.push(b.to_ascii_uppercase() as char),
            b'0'..=b'9' => out.push(b as char),
            _ => {
                let _ = write!(out, "-{b:02X}");
            }
        }
    }
    out
}

/// The default stream's name for a first token (and tenant).
///
/// * Without a tenant: `BUS_<TOKEN>` (see `name_part`).
/// * With a tenant: `BUS-<TENANT>_<TOKEN>`, each part escaped so that it
///   never holds `_` (see `escaped_part`): different (tenant, token) pairs
///   never share a name (`acme` + `eu_orders` is `BUS-ACME_EU-5FORDERS`,
///   `acme_eu` + `orders` is `BUS-ACME-5FEU_ORDERS`), and no tenant's name
///   equals an untenanted one (`BUS-` vs `BUS_`).
pub fn default_stream_name(tenant: Option<&str>, first_token: &str) -> String {
    match tenant {
        None => format!("BUS_{}", name_part(first_token)),
        Some(t) => format!("BUS-{}_{}", escaped_part(t), escaped_part(first_token)),
    }
}

/// The name of a declared stream `name` scoped to `tenant`:
/// `T-<TENANT>_<name>` (the tenant escaped, see `escaped_part`), distinct
/// across tenants and from every default stream.
pub fn tenant_stream_name(tenant: &str, name: &str) -> String {
    format!("T-{}_{}", escaped_part(tenant), name)
}

/// The JetStream configuration of a spec.
pub fn to_config(spec: &StreamSpec) -> Config {
    Config {
        name: spec.name.clone(),
        subjects: spec.subjects.clone(),
        storage: match spec.storage {
            StreamStorage::File => StorageType::File,
            StreamStorage::Memory => StorageType::Memory,
        },
        num_replicas: spec.replicas,
        retention: match spec.retention {
            StreamRetention::Limits => RetentionPolicy::Limits,
            StreamRetention::Interest => RetentionPolicy::Interest,
            StreamRetention::WorkQueue => RetentionPolicy::WorkQueue,
        },
        max_age: spec.max_age,
        max_bytes: spec.max_bytes,
        max_messages: spec.max_messages,
        duplicate_window: spec.duplicate_window,
        discard: match spec.discard {
            StreamDiscard::Old => DiscardPolicy::Old,
            StreamDiscard::New => DiscardPolicy::New,
        },
        ..Default::default()
    }
}

fn norm_limit(v: i64) -> i64 {
    if v <= 0 {
        -1
    } else {
        v
    }
}

fn norm_window(d: Duration) -> Duration {
    if d.is_zero() {
        Duration::from_secs(120)
    } else {
        d
    }
}

/// The fields in which the server's `current` differs from `desired`.
pub fn drift(desired: &Config, current: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut d_subjects = desired.subjects.clone();
    let mut c_subjects = current.subjects.clone();
    d_subjects.sort();
    c_subjects.sort();
    macro_rules! field {
        ($name:literal, $cur:expr, $want:expr) => {
            if $cur != $want {
                out.push(format!(
                    "{}: server had {:?}, declared {:?}",
                    $name, $cur, $want
                ));
            }
        };
    }
    field!("subjects", c_subjects, d_subjects);
    field!("storage", current.storage, desired.storage);
    field!(
        "replicas",
        current.num_replicas.max(1),
        desired.num_replicas.max(1)
    );
    field!("retention", current.retention, desired.retention);
    field!("max_age", current.max_age, desired.max_age);
    field!(
        "max_bytes",
        norm_limit(current.max_bytes),
        norm_limit(desired.max_bytes)
    );
    field!(
        "max_messages",
        norm_limit(current.max_messages),
        norm_limit(desired.max_messages)
    );
    field!(
        "duplicate_window",
        norm_window(current.duplicate_window),
        norm_window(desired.duplicate_window)
    );
    field!("discard", current.discard, desired.discard);
    out
}

/// Creates `spec`'s stream or reconciles it with the server's.
pub async fn ensure(js: &jetstream::Context, spec: &StreamSpec) -> Result<StreamReport, BusError> {
    spec.validate()?;
    let desired = to_config(spec);
    let name = spec.name.clone();
    match js.get_stream(&name).await {
        Ok(mut stream) => {
            let current = stream
                .info()
                .await
                .map_err(|e| api_error(&format!("reading stream {name}"), e))?
                .config
                .clone();
            let drifted = drift(&desired, &current);
            if drifted.is_empty() {
                return Ok(StreamReport {
                    name,
                    action: StreamAction::Unchanged,
                });
            }
            tracing::warn!(stream = %name, drift = ?drifted, "declared stream differs from the server's; updating it");
            match js.update_stream(&desired).await {
                Ok(_) => Ok(StreamReport {
                    name,
                    action: StreamAction::Updated(drifted),
                }),
                Err(e) => Err(BusError::with_source(
                    ErrorKind::Conflict,
                    format!(
                        "stream {name} on the server differs from its declaration ({}) and the server refused the update",
                        drifted.join("; ")
                    ),
                    e,
                )),
            }
        }
        Err(e) if e.to_string().contains("stream not found") || is_not_found(&e) => {
            create(js, desired).await?;
            Ok(StreamReport {
                name,
                action: StreamAction::Created,
            })
        }
        Err(e) => Err(api_error(&format!("looking up stream {name}"), e)),
    }
}

fn is_not_found(e: &async_nats::jetstream::context::GetStreamError) -> bool {
    use async_nats::jetstream::context::GetStreamErrorKind;
    matches!(e.kind(), GetStreamErrorKind::JetStream(je) if je.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// How long a newly created clustered stream may take to elect its leader.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// Creates a stream and returns once it can take publishes: in a cluster the
/// create call answers before the stream has elected a leader, and a publish
/// in between finds no responder (it would look like a missing stream).
async fn create(js: &jetstream::Context, config: Config) -> Result<(), BusError> {
    let name = config.name.clone();
    let subjects = config.subjects.join(", ");
    let wanted = config.subjects.clone();
    match js.create_stream(config).await {
        Ok(stream) => {
            let has_leader = |info: &async_nats::jetstream::stream::Info| {
                info.cluster
                    .as_ref()
                    .is_none_or(|c| c.leader.as_deref().is_some_and(|l| !l.is_empty()))
            };
            if has_leader(stream.cached_info()) {
                return Ok(());
            }
            let deadline = tokio::time::Instant::now() + LEADER_WAIT;
            let mut pause = Duration::from_millis(10);
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
                if let Ok(mut s) = js.get_stream(&name).await {
                    if s.info().await.is_ok_and(&has_leader) {
                        return Ok(());
                    }
                }
            }
            Err(BusError::new(
                ErrorKind::Timeout,
                format!("stream {name} was created but elected no leader within {LEADER_WAIT:?}"),
            ))
        }
        Err(e) => {
            let (kind, why) = match e.kind() {
                CreateStreamErrorKind::JetStream(je) if je.error_code() == ErrorCode::STREAM_SUBJECT_OVERLAP => (
                    ErrorKind::Conflict,
                    format!(
                        "its subjects [{subjects}] overlap those of {}",
                        overlapping(js, &wanted).await
                    ),
                ),
                CreateStreamErrorKind::JetStream(je) if je.error_code() == ErrorCode::STREAM_NAME_EXIST => (
                    ErrorKind::Conflict,
                    "a stream with that name and another configuration exists".to_string(),
                ),
                CreateStreamErrorKind::JetStreamUnavailable => (
                    ErrorKind::Unavailable,
                    "JetStream is not available (is the server started with -js, and JetStream enabled for this account?)".to_string(),
                ),
                CreateStreamErrorKind::TimedOut => (ErrorKind::Timeout, "the request timed out".to_string()),
                _ => {
                    let text = e.to_string();
                    let kind = if text.contains("ermission") {
                        ErrorKind::PermissionDenied
                    } else {
                        ErrorKind::Backend
                    };
                    (kind, "the server refused".to_string())
                }
            };
            Err(BusError::with_source(
                kind,
                format!("cannot create stream {name}: {why}"),
                e,
            ))
        }
    }
}

/// Names the streams whose subjects overlap `subjects`, for an error
/// message ("another stream" when they cannot be listed).
async fn overlapping(js: &jetstream::Context, subjects: &[String]) -> String {
    let mut names: Vec<String> = Vec::new();
    for subject in subjects {
        if let Ok(found) = streams_for(js, subject).await {
            names.extend(found);
        }
    }
    names.sort();
    names.dedup();
    match names.as_slice() {
        [] => "another stream".to_string(),
        [one] => format!("stream {one}"),
        many => format!("streams {}", many.join(", ")),
    }
}

/// Creates the default stream for `first_token` (`wire_first` is the token
/// with the tenant prefix, as it appears on the wire) unless it exists.
pub(crate) async fn ensure_default(
    js: &jetstream::Context,
    tenant: Option<&str>,
    first_token: &str,
    wire_first: &str,
) -> Result<(), BusError> {
    let name = default_stream_name(tenant, first_token);
    let config = Config {
        name: name.clone(),
        subjects: vec![wire_first.to_string(), format!("{wire_first}.>")],
        storage: StorageType::File,
        num_replicas: 1,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    let ours = format!("{wire_first}.>");
    match js.get_stream(&name).await {
        Ok(stream) => {
            // A stream of this name that stores other subjects is not ours:
            // never adopt it (names are unique by construction, so only an
            // operator's stream can be in the way).
            let subjects = &stream.cached_info().config.subjects;
            if subjects.iter().any(|s| s == &ours) {
                Ok(())
            } else {
                Err(BusError::new(
                    ErrorKind::Conflict,
                    format!(
                        "stream {name} exists but stores {subjects:?}, not {ours:?}; the bus will not adopt it (rename or delete that stream, or declare one that covers {ours:?})"
                    ),
                ))
            }
        }
        Err(e) if is_not_found(&e) => match create(js, config).await {
            Ok(()) => {
                tracing::info!(stream = %name, subjects = %format!("{wire_first}, {wire_first}.>"), "created default stream");
                Ok(())
            }
            Err(err) if err.kind() == ErrorKind::Conflict => {
                // Either another bus created it concurrently (fine) or a
                // declared stream already stores part of these subjects.
                if js.get_stream(&name).await.is_ok() {
                    return Ok(());
                }
                Err(BusError::new(
                    ErrorKind::Conflict,
                    format!(
                        "no stream stores subjects under {wire_first:?}, and the default stream {name} cannot be created: {}; declare a stream that covers them (NatsConfig::streams)",
                        err.message()
                    ),
                ))
            }
            Err(err) => Err(err),
        },
        Err(e) => Err(api_error(&format!("looking up stream {name}"), e)),
    }
}

/// Names of the streams whose subjects overlap `pattern` (on the wire),
/// from every page of the server's answer (it sends at most 1024 a page).
pub(crate) async fn streams_for(
    js: &jetstream::Context,
    pattern: &str,
) -> Result<Vec<String>, BusError> {
    let mut names: Vec<String> = Vec::new();
    loop {
        let response: serde_json::Value = js
            .request(
                "STREAM.NAMES",
                &serde_json::json!({ "subject": pattern, "offset": names.len() }),
            )
            .await
            .map_err(|e| api_error(&format!("listing streams for {pattern:?}"), e))?;
        if let Some(err) = response.get("error") {
            return Err(BusError::new(
                ErrorKind::Backend,
                format!("listing streams for {pattern:?}: {err}"),
            ));
        }
        let page: Vec<String> = response
            .get("streams")
            .and_then(|s| s.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let total = response.get("total").and_then(|t| t.as_u64()).unwrap_or(0);
        let last_page = page.is_empty();
        names.extend(page);
        if last_page || names.len() as u64 >= total {
            return Ok(names);
        }
    }
}

/// Up to `max` messages of `stream` on subjects matching `wire_pattern`,
/// from sequence `from` on, read with the stream's message-get API (no
/// consumer); `strip` is the tenant prefix removed from their subjects.
pub(crate) async fn read_messages(
    js: &jetstream::Context,
    stream: &str,
    wire_pattern: &str,
    from: u64,
    max: usize,
    strip: Option<&str>,
) -> Result<Vec<crate::message::BusMessage>, BusError> {
    use async_nats::jetstream::stream::RawMessageErrorKind;
    let handle = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| api_error(&format!("stream {stream}"), e))?;
    let mut out = Vec::new();
    let mut seq = from.max(1);
    while out.len() < max {
        let got = handle
            .raw_message_builder()
            .sequence(seq)
            .next_by_subject(wire_pattern)
            .send()
            .await;
        let m = match got {
            Ok(m) => m,
            Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => break,
            Err(e) => {
                return Err(api_error(
                    &format!("reading {wire_pattern:?} from stream {stream} at sequence {seq}"),
                    e,
                ))
            }
        };
        seq = m.sequence + 1;
        let subject = match strip {
            Some(prefix) => m
                .subject
                .as_str()
                .strip_prefix(prefix)
                .unwrap_or(&m.subject),
            None => m.subject.as_str(),
        };
        let (headers, id) = super::convert::from_header_map(Some(&m.headers));
        let id = match id {
            Some(id) => crate::message::MessageId::new(id),
            None => crate::message::MessageId::stream_position(
                stream,
                m.sequence,
                u64::try_from(m.time.unix_timestamp_nanos()).unwrap_or(0),
            ),
        };
        out.push(crate::message::BusMessage::new(
            crate::subject::Subject::from_trusted(subject),
            m.payload.clone(),
            headers,
            id,
            m.sequence,
        ));
    }
    Ok(out)
}

/// Removes message `sequence` from `stream`: `NotFound` when it is not
/// there (any more).
pub(crate) async fn delete_message(
    js: &jetstream::Context,
    stream: &str,
    sequence: u64,
) -> Result<(), BusError> {
    use async_nats::jetstream::stream::DeleteMessageErrorKind;
    let gone = || {
        BusError::new(
            ErrorKind::NotFound,
            format!("stream {stream} holds no message {sequence} (removed already, or expired)"),
        )
    };
    let handle = js.get_stream_no_info(stream).await.map_err(|e| {
        if is_not_found(&e) {
            BusError::new(ErrorKind::NotFound, format!("no stream {stream}"))
        } else {
            api_error(&format!("stream {stream}"), e)
        }
    })?;
    match handle.delete_message(sequence).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(gone()),
        Err(e) => match e.kind() {
            DeleteMessageErrorKind::JetStream(je)
                if je.error_code() == ErrorCode::NO_MESSAGE_FOUND
                    || je.error_code() == ErrorCode::SEQUENCE_NOT_FOUND
                    || (je.error_code() == ErrorCode::STREAM_MESSAGE_DELETE_FAILED
                        && (je.to_string().contains("not found")
                            || je.to_string().contains("no message"))) =>
            {
                Err(gone())
            }
            _ => Err(api_error(
                &format!("removing message {sequence} from stream {stream}"),
                e,
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names() {
        assert_eq!(default_stream_name(None, "auth"), "BUS_AUTH");
        assert_eq!(
            default_stream_name(Some("acme"), "orders"),
            "BUS-ACME_ORDERS"
        );
        let omega = default_stream_name(None, "Ωmega");
        assert!(omega.starts_with("BUS__MEGA_"), "{omega}");
        assert_ne!(omega, default_stream_name(None, "Σmega"));
        assert_ne!(
            default_stream_name(None, "Orders"),
            default_stream_name(None, "orders")
        );
        assert_eq!(
            default_stream_name(None, "Orders"),
            default_stream_name(None, "Orders")
        );
        assert_eq!(sanitize("a-b_c$d"), "A-B_C_D");
    }

    /// Tenant stream names are injective in (tenant, token) and never equal
    /// an untenanted name; declared tenant streams never equal a default one.
    #[test]
    fn tenant_names_never_collide() {
        let tokens = [
            "orders",
            "eu_orders",
            "acme_eu",
            "eu",
            "acme",
            "a-b",
            "a_b",
            "A",
            "a",
            "-41",
            "Ωmega",
            "acme_eu_orders",
            "x_",
            "_x",
            "",
        ];
        let mut seen = std::collections::HashMap::new();
        for t in tokens {
            let untenanted = default_stream_name(None, t);
            assert!(seen.insert(untenanted.clone(), (None, t)).is_none() || t.is_empty());
            for tenant in tokens.iter().filter(|x| !x.is_empty()) {
                let name = default_stream_name(Some(tenant), t);
                let declared = tenant_stream_name(tenant, &format!("S{t}"));
                for n in [name, declared] {
                    if let Some(other) = seen.insert(n.clone(), (Some(*tenant), t)) {
                        panic!("{n} for ({tenant}, {t}) and {other:?}");
                    }
                }
            }
        }
        assert_eq!(escaped_part("eu_orders"), "EU-5FORDERS");
        assert_eq!(escaped_part("Ωa"), "-CE-A9A");
    }

    #[test]
    fn drift_ignores_server_defaults_and_names_changes() {
        let spec = StreamSpec::new("ORDERS", ["orders.>"]);
        let desired = to_config(&spec);
        let mut server = desired.clone();
        server.max_bytes = -1;
        server.max_messages = -1;
        assert!(drift(&desired, &server).is_empty());
        server.max_age = Duration::from_secs(3600);
        server.subjects = vec!["orders.>".into(), "legacy.>".into()];
        let d = drift(&desired, &server);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d.iter().any(|l| l.starts_with("max_age")));
        assert!(d.iter().any(|l| l.starts_with("subjects")));
    }
}
