//! Subjects and patterns, with exactly the NATS rules.
//!
//! * A subject is a list of **tokens** separated by `.`. No token is empty (so
//!   no leading, trailing or double dot), no token contains whitespace
//!   (space, tab, CR, LF, form feed) or NUL. Subjects are case-sensitive and
//!   may hold any other UTF-8.
//! * In a **pattern**, the token `*` matches exactly one token and the token
//!   `>` matches one or more trailing tokens; `>` must be the last token.
//!   `foo.>` does not match `foo`; `>` alone matches every subject.
//!   Wildcards are wildcards only as whole tokens: `foo*` is a literal token.
//! * `publish` takes a **literal** subject (no `*` or `>` token);
//!   `subscribe` takes a pattern.
//!
//! These are the rules of nats-server's `server/sublist.go`
//! (`IsValidSubject`, `IsValidLiteralSubject`, `matchLiteral`), so a subject
//! that one backend accepts the other accepts too.
//!
//! **Reserved subjects.** On top of the syntax, every backend refuses
//! subjects and patterns in the server's own namespaces ([`check_reserved`]):
//! a first token that starts with `$` (`$JS.API.>`, `$KV.<bucket>.>`,
//! `$O.>`, `$SYS.>`, ...) or is `_INBOX` (request replies). The bus is an
//! application API: a subject taken from input must never reach JetStream's
//! API or a key-value bucket with the service's credentials. Administrative
//! work goes through `NatsBus::jetstream()`.
//!
//! ```
//! use event_bus::subject::{matches, validate_pattern, validate_subject};
//!
//! assert!(matches("auth.*.created", "auth.user.created"));
//! assert!(!matches("auth.*.created", "auth.user.profile.created"));
//! assert!(matches("auth.events.>", "auth.events.user.profile.updated"));
//! assert!(!matches("auth.>", "auth"));
//! assert!(validate_subject("auth.user.created").is_ok());
//! assert!(validate_subject("auth.*.created").is_err()); // wildcards cannot be published to
//! assert!(validate_pattern("auth.>.created").is_err()); // `>` must be last
//! ```

mod sublist;

pub use sublist::{Match, SubId, Sublist, DEFAULT_CACHE_SIZE};

use crate::error::{BusError, ErrorKind};
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// The longest subject or pattern accepted, in bytes.
///
/// NATS itself bounds the protocol control line (4 KiB by default) that
/// carries the subject; this limit keeps every valid subject well inside it on
/// every backend.
pub const MAX_SUBJECT_LEN: usize = 2048;

/// The single-token wildcard.
pub const SINGLE_WILDCARD: &str = "*";
/// The tail wildcard (one or more trailing tokens).
pub const TAIL_WILDCARD: &str = ">";

fn is_forbidden(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c' | '\0')
}

fn describe(c: char) -> &'static str {
    match c {
        ' ' => "a space",
        '\t' => "a tab",
        '\n' => "a line feed",
        '\r' => "a carriage return",
        '\x0c' => "a form feed",
        _ => "a NUL byte",
    }
}

/// Checks the shape shared by subjects and patterns; `literal` forbids wildcards.
fn check(s: &str, literal: bool) -> Result<(), BusError> {
    let (what, kind) = if literal {
        ("subject", ErrorKind::InvalidSubject)
    } else {
        ("pattern", ErrorKind::InvalidPattern)
    };
    let err = |why: String| BusError::new(kind, format!("invalid {what} {s:?}: {why}"));
    if s.is_empty() {
        return Err(err("it is empty".into()));
    }
    if s.len() > MAX_SUBJECT_LEN {
        return Err(BusError::new(
            kind,
            format!(
                "invalid {what} {:?}...: {} bytes is longer than the limit of {MAX_SUBJECT_LEN} bytes",
                &s[..s.floor_char_boundary_compat(48)],
                s.len()
            ),
        ));
    }
    let mut tokens = s.split('.').enumerate().peekable();
    while let Some((i, token)) = tokens.next() {
        if token.is_empty() {
            return Err(err(format!(
                "token {} is empty (no leading, trailing or double `.`)",
                i + 1
            )));
        }
        if let Some(c) = token.chars().find(|&c| is_forbidden(c)) {
            return Err(err(format!(
                "token {} {token:?} contains {}",
                i + 1,
                describe(c)
            )));
        }
        match token {
            SINGLE_WILDCARD | TAIL_WILDCARD if literal => {
                return Err(err(format!(
                    "wildcard `{token}` (token {}) is not allowed when publishing; publish to a literal subject",
                    i + 1
                )));
            }
            TAIL_WILDCARD if tokens.peek().is_some() => {
                return Err(err(format!("`>` (token {}) must be the last token", i + 1)));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The prefix of the request-reply inboxes of NATS clients.
pub const INBOX_TOKEN: &str = "_INBOX";

/// Whether `subject` (or pattern) lies in a namespace the bus reserves for
/// the server: its first token starts with `$` or is `_INBOX`.
///
/// ```
/// use event_bus::subject::is_reserved;
/// assert!(is_reserved("$JS.API.STREAM.DELETE.BUS_ORDERS"));
/// assert!(is_reserved("$KV.sessions.admin"));
/// assert!(is_reserved("_INBOX.abc"));
/// assert!(!is_reserved("orders.created"));
/// assert!(!is_reserved("orders.$JS")); // only the first token counts
/// assert!(!is_reserved(">"));
/// ```
#[inline]
pub fn is_reserved(subject: &str) -> bool {
    let b = subject.as_bytes();
    b.first() == Some(&b'$')
        || (b.starts_with(INBOX_TOKEN.as_bytes())
            && matches!(b.get(INBOX_TOKEN.len()), None | Some(b'.')))
}

/// Refuses a subject (`literal`) or pattern in a reserved namespace (see
/// [`is_reserved`]) with an [`ErrorKind::InvalidSubject`] /
/// [`ErrorKind::InvalidPattern`] error naming it. Every backend calls it
/// on publish, subscribe and consume.
#[inline]
pub fn check_reserved(subject: &str, literal: bool) -> Result<(), BusError> {
    if !is_reserved(subject) {
        return Ok(());
    }
    let (what, kind) = if literal {
        ("subject", ErrorKind::InvalidSubject)
    } else {
        ("pattern", ErrorKind::InvalidPattern)
    };
    let shown = &subject[..subject.floor_char_boundary_compat(120)];
    Err(BusError::new(
        kind,
        format!(
            "{what} {shown:?} is in a namespace reserved for the NATS server (a first token starting with `$`, or `_INBOX`); the bus does not publish or subscribe there (use NatsBus::jetstream() for administration)"
        ),
    ))
}

/// [`validate_subject`] and [`check_reserved`]: the checks a bus makes on a
/// subject it is asked to publish to.
#[inline]
pub fn validate_bus_subject(subject: &str) -> Result<(), BusError> {
    validate_subject(subject)?;
    check_reserved(subject, true)
}

/// [`validate_pattern`] and [`check_reserved`]: the checks a bus makes on a
/// pattern it is asked to subscribe to or consume.
pub fn validate_bus_pattern(pattern: &str) -> Result<(), BusError> {
    validate_pattern(pattern)?;
    check_reserved(pattern, false)
}

/// Checks that `subject` is a valid literal subject (one that can be published to).
///
/// This is the NATS syntax alone; a bus also refuses reserved subjects
/// ([`validate_bus_subject`]).
pub fn validate_subject(subject: &str) -> Result<(), BusError> {
    if is_valid_literal(subject) {
        Ok(())
    } else {
        check(subject, true)
    }
}

/// The common case of [`validate_subject`] in one pass over the bytes (every
/// forbidden character is ASCII, and no byte of a multi-byte UTF-8 character
/// is); [`check`] explains a failure.
fn is_valid_literal(s: &str) -> bool {
    fn token_ok(t: &[u8]) -> bool {
        !t.is_empty() && t != b"*" && t != b">"
    }
    let b = s.as_bytes();
    if b.is_empty() || b.len() > MAX_SUBJECT_LEN {
        return false;
    }
    let mut token_start = 0;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'.' => {
                if !token_ok(&b[token_start..i]) {
                    return false;
                }
                token_start = i + 1;
            }
            b' ' | b'\t' | b'\n' | b'\r' | 0x0c | 0 => return false,
            _ => {}
        }
    }
    token_ok(&b[token_start..])
}

/// Checks that `pattern` is a valid subscription pattern (wildcards allowed).
pub fn validate_pattern(pattern: &str) -> Result<(), BusError> {
    check(pattern, false)
}

/// The first token of a subject or pattern: `"orders"` for `"orders.eu.created"`,
/// the whole string when it has one token (and `""` for `""`). The NATS backend
/// keys its default streams by it.
#[inline]
pub fn first_token(subject: &str) -> &str {
    subject.split_once('.').map_or(subject, |(first, _)| first)
}

/// Whether `pattern` has a wildcard token.
pub fn is_wildcard(pattern: &str) -> bool {
    pattern
        .split('.')
        .any(|t| t == SINGLE_WILDCARD || t == TAIL_WILDCARD)
}

/// Whether the literal `subject` matches `pattern`.
///
/// Both are assumed valid (see [`validate_subject`] and [`validate_pattern`]).
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(TAIL_WILDCARD), Some(_)) => return true,
            (Some(SINGLE_WILDCARD), Some(_)) => {}
            (Some(pt), Some(st)) if pt == st => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether two patterns can both match some subject (used to detect
/// overlapping stream subjects).
pub fn patterns_overlap(a: &str, b: &str) -> bool {
    let mut a = a.split('.');
    let mut b = b.split('.');
    loop {
        match (a.next(), b.next()) {
            (Some(TAIL_WILDCARD), Some(_)) | (Some(_), Some(TAIL_WILDCARD)) => return true,
            (Some(x), Some(y)) if x == y || x == SINGLE_WILDCARD || y == SINGLE_WILDCARD => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

// `str::floor_char_boundary` is unstable; this is the small stable equivalent.
trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, index: usize) -> usize;
}

impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, index: usize) -> usize {
        let mut i = index.min(self.len());
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// A validated subject, cheap to clone (shared, reference counted).
///
/// It dereferences to `str` and compares with `&str` and `String`, so
/// `msg.subject == "auth.events.user.created"` and `println!("{}", msg.subject)`
/// work as with a `String`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject(Arc<str>);

impl Subject {
    /// Validates `subject` as a literal subject.
    pub fn new(subject: &str) -> Result<Self, BusError> {
        validate_subject(subject)?;
        Ok(Subject(Arc::from(subject)))
    }

    /// Wraps an already validated (or server-provided) subject without checking it.
    pub(crate) fn from_trusted(subject: impl Into<Arc<str>>) -> Self {
        Subject(subject.into())
    }

    /// The subject as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tokens of the subject.
    pub fn tokens(&self) -> std::str::Split<'_, char> {
        self.0.split('.')
    }

    /// The subject's first token (see [`first_token`]).
    pub fn first_token(&self) -> &str {
        first_token(&self.0)
    }
}

impl Deref for Subject {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Subject {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl PartialEq<str> for Subject {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Subject {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Subject {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl From<Subject> for String {
    fn from(s: Subject) -> String {
        s.0.to_string()
    }
}

impl serde::Serialize for Subject {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_token_of_subjects_and_patterns() {
        assert_eq!(first_token("orders.eu.created"), "orders");
        assert_eq!(first_token("orders"), "orders");
        assert_eq!(first_token("orders.>"), "orders");
        assert_eq!(first_token("*.created"), "*");
        assert_eq!(first_token(""), "");
        assert_eq!(Subject::new("a.b").unwrap().first_token(), "a");
    }

    // Cases follow nats-server's server/sublist_test.go
    // (TestSublistValidLiteralSubjects, TestSublistValidSubjects, TestSublistMatchLiterals).
    #[test]
    fn literal_subjects() {
        for ok in [
            "foo",
            "foo.bar",
            "foo*",
            "foo.bar*",
            "*foo",
            "foo.*bar",
            ">foo",
            "foo.>bar",
            "foo>.bar",
            "Ωmega.ünïcode.日本",
            "$JS.API.INFO",
            "a-b_c.d:e/f",
        ] {
            assert!(validate_subject(ok).is_ok(), "{ok:?} should be valid");
        }
        for bad in [
            "",
            ".",
            "foo.",
            ".foo",
            "foo..bar",
            "foo.*",
            "foo.>",
            "*",
            ">",
            "foo.*.bar",
            "foo bar",
            "foo\tbar",
            "foo.\nbar",
            "foo\r",
            "foo\x0cbar",
            "foo\0",
            " ",
        ] {
            let err = validate_subject(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidSubject, "{bad:?}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn patterns() {
        for ok in [
            "foo", "*", ">", "foo.*", "foo.>", "*.bar", "*.*.>", "foo*.>", "a.*.c.>",
        ] {
            assert!(validate_pattern(ok).is_ok(), "{ok:?} should be valid");
        }
        for bad in [
            "",
            "foo.>.bar",
            ">.foo",
            "foo..*",
            "foo.",
            ".>",
            "fo o.*",
            "*.>.>",
        ] {
            assert_eq!(
                validate_pattern(bad).unwrap_err().kind(),
                ErrorKind::InvalidPattern,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn reserved_namespaces() {
        for r in [
            "$JS.API.INFO",
            "$JS.API.STREAM.DELETE.BUS_ORDERS",
            "$KV.sessions.admin",
            "$O.store.x",
            "$SYS.REQ.SERVER.PING",
            "$JSC.x",
            "$",
            "_INBOX",
            "_INBOX.abc.def",
        ] {
            assert!(is_reserved(r), "{r:?}");
            let e = validate_bus_subject(r).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidSubject, "{r:?}");
            assert!(
                e.to_string().contains(r) && e.to_string().contains("reserved"),
                "{e}"
            );
        }
        for r in ["$JS.>", "$KV.*.x", "_INBOX.>", "$SYS.*"] {
            let e = validate_bus_pattern(r).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidPattern, "{r:?}");
        }
        for ok in ["orders.$JS", "_INBOXES.x", "INBOX.x", "a$.b", "_inbox.x"] {
            assert!(!is_reserved(ok), "{ok:?}");
            assert!(validate_bus_subject(ok).is_ok(), "{ok:?}");
        }
        for ok in [">", "*.x", "*.API.>"] {
            assert!(validate_bus_pattern(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn too_long_is_rejected_and_names_the_limit() {
        let long = "a.".repeat(MAX_SUBJECT_LEN) + "b";
        let err = validate_subject(&long).unwrap_err();
        assert!(err.to_string().contains("2048"), "{err}");
        let uni = "日".repeat(MAX_SUBJECT_LEN);
        assert!(validate_pattern(&uni).is_err());
    }

    #[test]
    fn matching() {
        let cases = [
            ("foo", "foo", true),
            ("foo", "bar", false),
            ("foo", "foo.bar", false),
            ("foo.*", "foo.bar", true),
            ("foo.*", "foo", false),
            ("foo.*", "foo.bar.baz", false),
            ("foo.>", "foo.bar", true),
            ("foo.>", "foo.bar.baz", true),
            ("foo.>", "foo", false),
            (">", "foo", true),
            (">", "foo.bar", true),
            ("*", "foo", true),
            ("*", "foo.bar", false),
            ("*.*", "foo.bar", true),
            ("*.bar", "foo.bar", true),
            ("*.>", "foo", false),
            ("*.>", "foo.bar", true),
            ("foo*", "foo*", true),
            ("foo*", "foox", false),
            ("foo.*.baz", "foo.bar.baz", true),
            ("stats.>", "stats.test.22", true),
            ("Foo", "foo", false),
        ];
        for (p, s, want) in cases {
            assert_eq!(matches(p, s), want, "matches({p:?}, {s:?})");
        }
    }

    #[test]
    fn overlap() {
        assert!(patterns_overlap("orders.>", "orders.*"));
        assert!(patterns_overlap("orders.*.x", "orders.a.*"));
        assert!(!patterns_overlap("orders.>", "payments.>"));
        assert!(!patterns_overlap("orders.*", "orders.a.b"));
        assert!(patterns_overlap(">", "x"));
    }

    #[test]
    fn subject_compares_like_a_string() {
        let s = Subject::new("auth.events.user.created").unwrap();
        assert_eq!(s, "auth.events.user.created");
        assert_eq!(s, String::from("auth.events.user.created"));
        assert_eq!(format!("{s}"), "auth.events.user.created");
        assert_eq!(s.tokens().count(), 4);
    }
}
