//! The one error type of the crate: [`BusError`] with a matchable [`ErrorKind`].
//!
//! Modelled on async-nats' `Error<Kind>`: callers `match err.kind()` to decide
//! what to do (retry a [`ErrorKind::Timeout`], fix the input on
//! [`ErrorKind::InvalidSubject`], ...), and the `Display` text names the
//! offending subject, field or limit so that a log line alone is enough to act.

use std::fmt;

/// Boxed source error carried by a [`BusError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, as a value callers can match on.
///
/// The enum is `#[non_exhaustive]`: backends may grow new kinds without a
/// breaking change, so keep a `_ =>` arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A subject given to `publish` is not a valid literal NATS subject.
    InvalidSubject,
    /// A pattern given to `subscribe` (or a consumer filter) is not a valid NATS subject pattern.
    InvalidPattern,
    /// A header name or value cannot be carried (bad characters, reserved name).
    InvalidHeader,
    /// The payload (plus headers) is larger than the backend accepts.
    PayloadTooLarge,
    /// The bus, subscription or consumer has been closed.
    Closed,
    /// An operation did not finish within its deadline.
    Timeout,
    /// The backend cannot be reached (connection refused, server down).
    Unavailable,
    /// The backend refused the operation for lack of permission.
    PermissionDenied,
    /// The requested feature is not supported by this backend or server version.
    Unsupported,
    /// A configuration value is missing or invalid; the message names the field.
    Config,
    /// Declared stream or consumer configuration conflicts with what the server has.
    Conflict,
    /// A named resource (stream, consumer) does not exist.
    NotFound,
    /// A payload could not be encoded or decoded.
    Codec,
    /// A check the operation passes through refused it: a decorator over the
    /// bus (schema validation in `event-bus-schema`, a policy, a user's own
    /// check) said no to a request the backend itself would take. The
    /// message names the check and why (e.g. `schema violation: ...` with
    /// the subject, type, version and each violation's JSON Pointer).
    Rejected,
    /// Any other failure reported by the backend; see the source.
    Backend,
}

impl ErrorKind {
    /// A short, stable, lower-case name (used in metrics labels and logs).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidSubject => "invalid_subject",
            ErrorKind::InvalidPattern => "invalid_pattern",
            ErrorKind::InvalidHeader => "invalid_header",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::Closed => "closed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Config => "config",
            ErrorKind::Conflict => "conflict",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Codec => "codec",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Backend => "backend",
        }
    }

    /// Whether retrying the same operation, unchanged, cannot succeed: the
    /// request itself is refused (its subject, headers, size, payload, a
    /// check such as a schema, the caller's permissions or configuration),
    /// or the handle it went through is closed. Someone has to change something (the
    /// event, a schema, a permission, the configuration) first. The exact
    /// complement of [`is_transient`](Self::is_transient).
    ///
    /// This `match` is the one place where kinds are classified (it has no
    /// catch-all arm, so a new kind must be classified here to compile):
    /// callers that decide between retrying and giving up (the outbox
    /// relay, consumers) ask it instead of keeping their own lists.
    pub fn is_permanent(self) -> bool {
        match self {
            ErrorKind::InvalidSubject
            | ErrorKind::InvalidPattern
            | ErrorKind::InvalidHeader
            | ErrorKind::PayloadTooLarge
            | ErrorKind::Closed
            | ErrorKind::PermissionDenied
            | ErrorKind::Unsupported
            | ErrorKind::Config
            | ErrorKind::Conflict
            | ErrorKind::Codec
            | ErrorKind::Rejected => true,
            // A condition of the backend that may pass by itself: a
            // timeout, a lost connection, a stream not created yet or
            // without a leader for the moment (NATS reports "no responders"
            // during a leader election as a missing stream), any other
            // backend failure.
            ErrorKind::Timeout
            | ErrorKind::Unavailable
            | ErrorKind::NotFound
            | ErrorKind::Backend => false,
        }
    }

    /// Whether retrying the same operation later may succeed (the exact
    /// complement of [`is_permanent`](Self::is_permanent)).
    pub fn is_transient(self) -> bool {
        !self.is_permanent()
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every fallible operation in this crate.
///
/// ```
/// use event_bus::{BusError, ErrorKind, EventBus, InMemoryBus};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let bus = InMemoryBus::new();
/// let err: BusError = bus.publish("orders..created", vec![]).await.unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::InvalidSubject);
/// assert!(err.to_string().contains("orders..created"));
/// # }
/// ```
pub struct BusError(Box<ErrorInner>);

// Boxed so that `Result<(), BusError>` is one pointer wide: publish results
// travel through hot paths.
struct ErrorInner {
    kind: ErrorKind,
    message: String,
    source: Option<BoxError>,
}

impl BusError {
    /// A new error of `kind` with a message that names the problem.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        BusError(Box::new(ErrorInner {
            kind,
            message: message.into(),
            source: None,
        }))
    }

    /// A new error of `kind` caused by `source`.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        BusError(Box::new(ErrorInner {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }))
    }

    /// The kind, to match on.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The human-readable message, without the source chain.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// Shorthand for [`ErrorKind::Closed`].
    pub fn closed(what: impl Into<String>) -> Self {
        BusError::new(ErrorKind::Closed, what)
    }

    /// Shorthand for [`ErrorKind::Unsupported`], naming the feature and the backend.
    pub fn unsupported(feature: &str, backend: &str) -> Self {
        BusError::new(
            ErrorKind::Unsupported,
            format!("{feature} is not supported by the {backend} backend"),
        )
    }

    /// Shorthand for [`ErrorKind::Config`], naming the field and the bad value.
    pub fn config(field: &str, value: &str, why: impl fmt::Display) -> Self {
        BusError::new(
            ErrorKind::Config,
            format!("invalid configuration value for `{field}` = {value:?}: {why}"),
        )
    }
}

impl fmt::Debug for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("BusError");
        d.field("kind", &self.0.kind)
            .field("message", &self.0.message);
        if let Some(source) = &self.0.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.0.kind, self.0.message)?;
        if let Some(source) = &self.0.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for BusError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_send_sync_static_and_names_the_problem() {
        fn assert_bounds<T: std::error::Error + Send + Sync + 'static>() {}
        assert_bounds::<BusError>();
        assert_eq!(
            std::mem::size_of::<Result<(), BusError>>(),
            std::mem::size_of::<usize>()
        );
        let e = BusError::config("EVENT_BUS_TYPE", "kafka", "expected `memory` or `nats`");
        assert_eq!(e.kind(), ErrorKind::Config);
        let text = e.to_string();
        assert!(
            text.contains("EVENT_BUS_TYPE") && text.contains("kafka"),
            "{text}"
        );
    }

    #[test]
    fn source_is_chained() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = BusError::with_source(ErrorKind::Unavailable, "connect to nats://x", io);
        assert!(std::error::Error::source(&e).is_some());
        assert!(e.to_string().ends_with("refused"));
        assert!(e.kind().is_transient());
    }

    #[test]
    fn every_kind_is_either_permanent_or_transient() {
        let permanent = [
            ErrorKind::InvalidSubject,
            ErrorKind::InvalidPattern,
            ErrorKind::InvalidHeader,
            ErrorKind::PayloadTooLarge,
            ErrorKind::Closed,
            ErrorKind::PermissionDenied,
            ErrorKind::Unsupported,
            ErrorKind::Config,
            ErrorKind::Conflict,
            ErrorKind::Codec,
            ErrorKind::Rejected,
        ];
        let transient = [
            ErrorKind::Timeout,
            ErrorKind::Unavailable,
            ErrorKind::NotFound,
            ErrorKind::Backend,
        ];
        for k in permanent {
            assert!(k.is_permanent() && !k.is_transient(), "{k}");
        }
        for k in transient {
            assert!(k.is_transient() && !k.is_permanent(), "{k}");
        }
    }
}
