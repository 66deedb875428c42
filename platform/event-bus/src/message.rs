//! The types that travel on the bus: [`BusMessage`] (what subscribers get),
//! [`Envelope`] (what publishers send when they need more than a payload),
//! [`Headers`], [`MessageId`] and [`PublishAck`].

use crate::error::{BusError, ErrorKind};
use crate::subject::Subject;
use bytes::Bytes;
use std::fmt;
use std::sync::Arc;

/// Header names the bus itself reads or writes.
pub mod header {
    /// The message id header; NATS JetStream de-duplicates on it. Set it with
    /// [`Envelope::id`](super::Envelope::id), not as a plain header.
    pub const MESSAGE_ID: &str = "Nats-Msg-Id";
    /// W3C trace-context header, propagated unchanged by every backend.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace-context vendor state.
    pub const TRACESTATE: &str = "tracestate";
}

/// The longest header name accepted, in bytes.
pub const MAX_HEADER_NAME_LEN: usize = 256;

/// The longest message id a publisher may give ([`Envelope::id`]), in bytes.
pub const MAX_ID_LEN: usize = 256;

/// The first character of every bus-assigned message id; publisher-given ids
/// may not start with it, so the two never collide.
pub const ASSIGNED_ID_PREFIX: char = '$';

/// Checks a message id given by a publisher ([`Envelope::id`]): not empty, at
/// most [`MAX_ID_LEN`] bytes, no control characters and no whitespace at
/// either end (it travels as a header value, which NATS trims), and not
/// starting with `$` (reserved for ids the bus assigns). The error is
/// [`ErrorKind::InvalidHeader`] and names the id.
///
/// ```
/// use event_bus::message::validate_id;
/// assert!(validate_id("order-1-created").is_ok());
/// assert!(validate_id("abc\r\nX").is_err());
/// assert!(validate_id("$js:BUS_ORDERS:7").is_err());
/// ```
pub fn validate_id(id: &str) -> Result<(), BusError> {
    let bad = |why: String| {
        BusError::new(
            ErrorKind::InvalidHeader,
            format!("invalid message id {:?}: {why}", shorten(id)),
        )
    };
    if id.is_empty() {
        return Err(bad("it is empty".into()));
    }
    if id.len() > MAX_ID_LEN {
        return Err(bad(format!(
            "it is {} bytes, longer than the limit of {MAX_ID_LEN} bytes",
            id.len()
        )));
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Err(bad(format!(
            "it contains the control character {c:?}; ids travel as a header value"
        )));
    }
    if id.trim() != id {
        return Err(bad(
            "it starts or ends with whitespace, which NATS does not carry (it trims header values)"
                .into(),
        ));
    }
    if id.starts_with(ASSIGNED_ID_PREFIX) {
        return Err(bad(format!(
            "ids starting with {ASSIGNED_ID_PREFIX:?} are reserved for the ids the bus assigns"
        )));
    }
    Ok(())
}

/// At most 100 characters of `text`, for error messages about long input.
fn shorten(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(100) {
        None => text.into(),
        Some((i, _)) => format!("{}... ({} bytes)", &text[..i], text.len()).into(),
    }
}

/// Message headers: an ordered list of `name: value` pairs.
///
/// Names are case-sensitive (as in NATS), printable ASCII without `:` or
/// spaces; values are UTF-8 without CR or LF and without whitespace at
/// either end (NATS trims it, so it would not arrive as sent). A name may repeat
/// ([`append`](Headers::append)). An empty `Headers` does not allocate.
#[derive(Clone, Default)]
pub struct Headers {
    /// Boxed so that a message without headers (the common case) carries one
    /// null pointer: messages are moved often, and smaller moves are cheaper.
    #[allow(clippy::box_collection)] // deliberate: 8 bytes in every message instead of 24
    entries: Option<Box<Vec<Header>>>,
}

/// One `name: value` pair, in one allocation (the name, then the value):
/// headers are built per message, and each allocation costs about as much
/// as checking a header.
#[derive(Clone)]
struct Header {
    text: Box<str>,
    name_len: usize,
    /// Whether an earlier header has the same name (only [`Headers::append`]
    /// adds such a header, and only whole names are removed).
    repeat: bool,
}

impl PartialEq for Header {
    fn eq(&self, other: &Self) -> bool {
        self.name_len == other.name_len && self.text == other.text
    }
}

impl Eq for Header {}

impl Header {
    fn new(name: &str, value: &str, repeat: bool) -> Self {
        let mut text = String::with_capacity(name.len() + value.len());
        text.push_str(name);
        text.push_str(value);
        Header {
            text: text.into_boxed_str(),
            name_len: name.len(),
            repeat,
        }
    }

    fn name(&self) -> &str {
        &self.text[..self.name_len]
    }

    /// Whether this header's name is `name` (the lengths compared first).
    fn has_name(&self, name: &str) -> bool {
        self.name_len == name.len() && self.text.as_bytes()[..self.name_len] == *name.as_bytes()
    }

    fn value(&self) -> &str {
        &self.text[self.name_len..]
    }
}

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers { entries: None }
    }

    fn list(&self) -> &[Header] {
        self.entries.as_deref().map_or(&[], Vec::as_slice)
    }

    fn list_mut(&mut self) -> &mut Vec<Header> {
        self.entries.get_or_insert_with(Box::default)
    }

    /// Sets `name` to `value`, replacing earlier values of `name`.
    pub fn insert(&mut self, name: impl AsRef<str>, value: impl AsRef<str>) -> &mut Self {
        let (name, value) = (name.as_ref(), value.as_ref());
        let list = self.list_mut();
        if list.iter().any(|h| h.has_name(name)) {
            list.retain(|h| !h.has_name(name));
        }
        list.push(Header::new(name, value, false));
        self
    }

    /// Adds a value for `name`, keeping earlier ones.
    pub fn append(&mut self, name: impl AsRef<str>, value: impl AsRef<str>) -> &mut Self {
        let (name, value) = (name.as_ref(), value.as_ref());
        let list = self.list_mut();
        let repeat = list.iter().any(|h| h.has_name(name));
        list.push(Header::new(name, value, repeat));
        self
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.list()
            .iter()
            .find(|h| h.has_name(name))
            .map(Header::value)
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.list()
            .iter()
            .filter(move |h| h.has_name(name))
            .map(Header::value)
    }

    /// Removes every value of `name`; returns whether any was present.
    pub fn remove(&mut self, name: &str) -> bool {
        let Some(list) = self.entries.as_mut() else {
            return false;
        };
        let before = list.len();
        list.retain(|h| !h.has_name(name));
        before != list.len()
    }

    /// All `(name, value)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.list().iter().map(|h| (h.name(), h.value()))
    }

    /// Number of `(name, value)` pairs.
    pub fn len(&self) -> usize {
        self.list().len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.list().is_empty()
    }

    /// Size of the headers on the wire (names, values and separators), in bytes.
    pub fn wire_len(&self) -> usize {
        self.list().iter().map(|h| h.text.len() + 4).sum()
    }

    /// All `(name, value, repeat)` triples in order, `repeat` telling
    /// whether an earlier header has the same name.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn iter_marked(&self) -> impl Iterator<Item = (&str, &str, bool)> {
        self.list().iter().map(|h| (h.name(), h.value(), h.repeat))
    }

    /// Checks every name and value; the error names the offending header.
    pub fn validate(&self) -> Result<(), BusError> {
        for h in self.list() {
            validate_header(h.name(), h.value())?;
        }
        Ok(())
    }
}

/// Checks one header; the error names the header and what is wrong with it.
pub fn validate_header(name: &str, value: &str) -> Result<(), BusError> {
    if header_is_valid(name, value) {
        Ok(())
    } else {
        header_error(name, value)
    }
}

/// What [`header_error`] accepts, decided eight bytes at a time: a check
/// per header per publish, which cost about as much as building the header
/// when done a byte at a time.
#[inline]
fn header_is_valid(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_HEADER_NAME_LEN
        && words(name.as_bytes()).all(|w| !bad_name_byte(w))
        && words(value.as_bytes()).all(|w| !line_break(w))
        && !name.eq_ignore_ascii_case(header::MESSAGE_ID)
        && !edge_whitespace(value)
}

/// `bytes` as little-endian words, the last one padded with `a`s (which
/// neither check below flags).
fn words(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    let chunks = bytes.chunks_exact(8);
    let rest = chunks.remainder();
    let last = (!rest.is_empty()).then(|| {
        let mut word = [b'a'; 8];
        word[..rest.len()].copy_from_slice(rest);
        u64::from_le_bytes(word)
    });
    chunks
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .chain(last)
}

const ONES: u64 = u64::from_le_bytes([1; 8]);
const HIGH_BITS: u64 = ONES * 0x80;

/// Whether some byte of `w` is below `n` (exact for `n <= 128`).
const fn has_less(w: u64, n: u8) -> bool {
    w.wrapping_sub(ONES * n as u64) & !w & HIGH_BITS != 0
}

/// Whether some byte of `w` is above `n` (exact for `n < 128`).
const fn has_more(w: u64, n: u8) -> bool {
    (w.wrapping_add(ONES * (127 - n) as u64) | w) & HIGH_BITS != 0
}

/// Whether some byte of `w` is `b`.
const fn has_byte(w: u64, b: u8) -> bool {
    has_less(w ^ (ONES * b as u64), 1)
}

/// Whether some byte of `w` is not allowed in a name: outside printable
/// ASCII (`0x21..=0x7e`, what `is_ascii_graphic` accepts), or `:`.
const fn bad_name_byte(w: u64) -> bool {
    has_less(w, 0x21) || has_more(w, 0x7e) || has_byte(w, b':')
}

/// Whether some byte of `w` is CR or LF.
const fn line_break(w: u64) -> bool {
    has_byte(w, b'\r') || has_byte(w, b'\n')
}

/// Whether `value` starts or ends with whitespace (`char::is_whitespace`,
/// what `str::trim` removes), looking at its first and last byte when they
/// are ASCII.
#[inline]
fn edge_whitespace(value: &str) -> bool {
    match (value.as_bytes().first(), value.as_bytes().last()) {
        (Some(&first), Some(&last)) if first.is_ascii() && last.is_ascii() => {
            char::from(first).is_whitespace() || char::from(last).is_whitespace()
        }
        (None, _) | (_, None) => false,
        _ => value.trim().len() != value.len(),
    }
}

/// The error [`validate_header`] returns for an invalid header (`Ok` if it
/// is valid after all).
#[cold]
#[inline(never)]
fn header_error(name: &str, value: &str) -> Result<(), BusError> {
    let bad = |why: &str| {
        BusError::new(
            ErrorKind::InvalidHeader,
            format!("invalid header {name:?}: {why}"),
        )
    };
    if name.is_empty() {
        return Err(bad("the name is empty"));
    }
    if name.len() > MAX_HEADER_NAME_LEN {
        return Err(bad(&format!(
            "the name is longer than {MAX_HEADER_NAME_LEN} bytes"
        )));
    }
    if let Some(c) = name.chars().find(|c| !c.is_ascii_graphic() || *c == ':') {
        return Err(bad(&format!(
            "the name contains {c:?}; names are printable ASCII without ':' or spaces"
        )));
    }
    if name.eq_ignore_ascii_case(header::MESSAGE_ID) {
        return Err(bad(
            "the message id is set with Envelope::id, not as a header",
        ));
    }
    if value.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(bad(&format!("the value {value:?} contains a line break")));
    }
    if value.trim().len() != value.len() {
        return Err(bad(&format!(
            "the value {value:?} starts or ends with whitespace, which NATS does not carry (it trims values)"
        )));
    }
    Ok(())
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.list() == other.list()
    }
}

impl Eq for Headers {}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut h = Headers::new();
        for (n, v) in iter {
            h.append(n, v);
        }
        h
    }
}

/// The identity of one event, stable across redeliveries.
///
/// Either given by the publisher ([`Envelope::id`]; NATS de-duplicates on it
/// within the stream's duplicate window) or assigned by the bus. Consumers
/// key idempotency on it, so an assigned id is never reused:
///
/// * the in-memory bus numbers its messages: `$mem:<bus>:<number>`, where
///   `<bus>` is random per bus;
/// * NATS uses the stream position and the time the server stored the
///   message: `$js:<stream>:<sequence>@<nanoseconds>`. A stream that is
///   deleted and created again starts its sequences at 1 again; the time
///   tells the new message 1 from the old one.
///
/// Given and assigned ids live in separate namespaces: assigned ids start
/// with `$`, which [`validate_id`] refuses for given ids, and a given id
/// never equals an assigned one.
#[derive(Clone)]
pub struct MessageId(IdRepr);

#[derive(Clone)]
enum IdRepr {
    Given(Arc<str>),
    Local {
        origin: u64,
        seq: u64,
    },
    Stream {
        stream: Arc<str>,
        seq: u64,
        stored_ns: u64,
    },
}

impl MessageId {
    /// An id chosen by the publisher.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        MessageId(IdRepr::Given(id.into()))
    }

    /// An id assigned by an in-process bus: `origin` tells buses apart.
    pub fn local(origin: u64, seq: u64) -> Self {
        MessageId(IdRepr::Local { origin, seq })
    }

    /// An id derived from a stream position and the time the message was
    /// stored there (`$js:<stream>:<sequence>@<stored_ns>`, nanoseconds since
    /// the Unix epoch): unique across incarnations of a stream.
    pub fn stream_position(stream: impl Into<Arc<str>>, seq: u64, stored_ns: u64) -> Self {
        MessageId(IdRepr::Stream {
            stream: stream.into(),
            seq,
            stored_ns,
        })
    }

    /// Whether the publisher chose this id (rather than the bus).
    pub fn is_given(&self) -> bool {
        matches!(self.0, IdRepr::Given(_))
    }

    /// The publisher's id, if it gave one (no allocation).
    pub fn given(&self) -> Option<&str> {
        match &self.0 {
            IdRepr::Given(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            IdRepr::Given(s) => f.write_str(s),
            IdRepr::Local { origin, seq } => write!(f, "$mem:{origin:016x}:{seq}"),
            IdRepr::Stream {
                stream,
                seq,
                stored_ns,
            } => write!(f, "$js:{stream}:{seq}@{stored_ns}"),
        }
    }
}

impl MessageId {
    /// The id as one string that is unique across both namespaces, for
    /// storing it (idempotency inboxes key on it): an assigned id's display
    /// form, or a given id as it is, unless it starts with `$` (only a
    /// publisher outside the bus can send such an id), which is prefixed
    /// with `$given:` so that it can never spell an assigned id.
    pub fn key(&self) -> std::borrow::Cow<'_, str> {
        match &self.0 {
            IdRepr::Given(s) if s.starts_with(ASSIGNED_ID_PREFIX) => format!("$given:{s}").into(),
            IdRepr::Given(s) => std::borrow::Cow::Borrowed(s),
            _ => self.to_string().into(),
        }
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl MessageId {
    /// The display form, borrowed for a given id and built without the
    /// formatting machinery otherwise (a span field per message).
    pub(crate) fn display_str(&self) -> std::borrow::Cow<'_, str> {
        match &self.0 {
            IdRepr::Given(s) => std::borrow::Cow::Borrowed(s),
            _ => self.with_display_bytes(|b| {
                std::borrow::Cow::Owned(String::from_utf8_lossy(b).into_owned())
            }),
        }
    }

    /// Compares the display form with `other` without allocating.
    fn display_eq(&self, other: &str) -> bool {
        self.with_display_bytes(|b| b == other.as_bytes())
    }

    /// Calls `f` with the display form's bytes, rendered on the stack for
    /// the ids a bus assigns (no allocation, no formatting machinery).
    fn with_display_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match &self.0 {
            IdRepr::Given(s) => f(s.as_bytes()),
            IdRepr::Local { origin, seq } => {
                // "$mem:" + 16 hex digits + ":" + up to 20 decimal digits.
                let mut buf = [0u8; 42];
                buf[..5].copy_from_slice(b"$mem:");
                for (i, b) in buf[5..21].iter_mut().enumerate() {
                    *b = b"0123456789abcdef"[((origin >> (60 - 4 * i)) & 0xf) as usize];
                }
                buf[21] = b':';
                let mut digits = itoa::Buffer::new();
                let d = digits.format(*seq).as_bytes();
                buf[22..22 + d.len()].copy_from_slice(d);
                f(&buf[..22 + d.len()])
            }
            IdRepr::Stream {
                stream,
                seq,
                stored_ns,
            } => {
                let mut digits = itoa::Buffer::new();
                let mut bytes = Vec::with_capacity(stream.len() + 48);
                bytes.extend_from_slice(b"$js:");
                bytes.extend_from_slice(stream.as_bytes());
                bytes.push(b':');
                bytes.extend_from_slice(digits.format(*seq).as_bytes());
                bytes.push(b'@');
                bytes.extend_from_slice(digits.format(*stored_ns).as_bytes());
                f(&bytes)
            }
        }
    }
}

impl PartialEq for MessageId {
    fn eq(&self, other: &Self) -> bool {
        // Given and assigned ids are separate namespaces: never equal, even
        // when a given id (from a foreign publisher) spells an assigned one.
        match (&self.0, &other.0) {
            (IdRepr::Given(a), IdRepr::Given(b)) => a == b,
            (IdRepr::Local { origin: a, seq: x }, IdRepr::Local { origin: b, seq: y }) => {
                a == b && x == y
            }
            (
                IdRepr::Stream {
                    stream: a,
                    seq: x,
                    stored_ns: t,
                },
                IdRepr::Stream {
                    stream: b,
                    seq: y,
                    stored_ns: u,
                },
            ) => a == b && x == y && t == u,
            _ => false,
        }
    }
}

impl Eq for MessageId {}

impl std::hash::Hash for MessageId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // The display form, in one write (consistent with `Eq` across
        // representations, whatever the hasher: some, like FxHasher, hash
        // the same bytes written in different pieces differently).
        self.with_display_bytes(|b| state.write(b));
        state.write_u8(0xff);
    }
}

impl PartialEq<&str> for MessageId {
    fn eq(&self, other: &&str) -> bool {
        self.display_eq(other)
    }
}

impl From<&str> for MessageId {
    fn from(s: &str) -> Self {
        MessageId::new(s)
    }
}

impl From<String> for MessageId {
    fn from(s: String) -> Self {
        MessageId::new(s)
    }
}

/// A message as a subscriber receives it.
///
/// `subject` and `payload` are public fields, as in the spec
/// (`msg.subject`, `msg.payload.len()`, `serde_json::from_slice(&msg.payload)`).
/// The payload is [`Bytes`]: fan-out to many subscribers shares one buffer.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BusMessage {
    /// The literal subject it was published to.
    pub subject: Subject,
    /// The payload bytes, exactly as published.
    pub payload: Bytes,
    /// Headers, as published (the message id is in [`BusMessage::id`], not here).
    pub headers: Headers,
    /// The message id (given by the publisher or assigned by the bus).
    pub id: MessageId,
    /// The position in the backend's log: the JetStream stream sequence, or
    /// the in-memory bus's publish counter.
    pub sequence: u64,
}

impl BusMessage {
    /// A message, for backends and tests. `subject` must be a valid literal subject.
    pub fn new(
        subject: Subject,
        payload: impl Into<Bytes>,
        headers: Headers,
        id: MessageId,
        sequence: u64,
    ) -> Self {
        BusMessage {
            subject,
            payload: payload.into(),
            headers,
            id,
            sequence,
        }
    }

    /// Decodes the JSON payload into `T`; the error names the subject and the message id.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, BusError> {
        serde_json::from_slice(&self.payload).map_err(|e| {
            BusError::with_source(
                ErrorKind::Codec,
                format!(
                    "cannot decode the JSON payload of message {} on {:?} as {}",
                    self.id,
                    self.subject.as_str(),
                    std::any::type_name::<T>()
                ),
                e,
            )
        })
    }
}

/// An event to publish with headers and/or a message id.
///
/// ```
/// use event_bus::{Envelope, EventBus, InMemoryBus};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), event_bus::BusError> {
/// let bus = InMemoryBus::new();
/// let ack = bus
///     .publish_envelope(
///         Envelope::new("orders.created", br#"{"id":1}"#.to_vec())
///             .id("order-1-created")
///             .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
///     )
///     .await?;
/// assert!(!ack.duplicate);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Envelope {
    /// The literal subject to publish to.
    pub subject: String,
    /// The payload.
    pub payload: Bytes,
    /// Headers to carry.
    pub headers: Headers,
    /// The message id; backends de-duplicate on it where they can.
    pub id: Option<MessageId>,
}

impl Envelope {
    /// An envelope with no headers and no id.
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Envelope {
            subject: subject.into(),
            payload: payload.into(),
            headers: Headers::new(),
            id: None,
        }
    }

    /// Sets the message id.
    pub fn id(mut self, id: impl Into<MessageId>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Adds a header (replacing an earlier value of the same name).
    #[inline]
    pub fn header(mut self, name: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Replaces all headers.
    pub fn headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Checks the headers and a publisher-given id ([`validate_id`]); every
    /// backend calls it before publishing. The subject is checked by the
    /// backend (it knows its reserved subjects and tenant).
    pub fn validate(&self) -> Result<(), BusError> {
        validate_parts(&self.headers, self.id.as_ref())
    }
}

/// [`Envelope::validate`] on borrowed parts.
pub(crate) fn validate_parts(headers: &Headers, id: Option<&MessageId>) -> Result<(), BusError> {
    if !headers.is_empty() {
        headers.validate()?;
    }
    if let Some(given) = id.and_then(MessageId::given) {
        validate_id(given)?;
    }
    Ok(())
}

/// What a backend reports for a stored (or delivered) publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishAck {
    /// The stream that stored the message (NATS), if any.
    pub stream: Option<String>,
    /// The message's sequence in its stream or bus; 0 when nothing took it
    /// (a duplicate, or an in-memory publish that no subscriber matched).
    pub sequence: u64,
    /// True when the message id was seen before within the de-duplication
    /// window, so the message was not stored (or delivered) again.
    pub duplicate: bool,
}

impl PublishAck {
    /// An acknowledgement, for backends.
    pub fn new(stream: Option<String>, sequence: u64, duplicate: bool) -> Self {
        PublishAck {
            stream,
            sequence,
            duplicate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_replace_append_remove() {
        let mut h = Headers::new();
        h.insert("a", "1").append("a", "2").insert("b", "3");
        assert_eq!(h.get_all("a").collect::<Vec<_>>(), vec!["1", "2"]);
        h.insert("a", "9");
        assert_eq!(h.get("a"), Some("9"));
        assert_eq!(h.len(), 2);
        assert!(h.remove("b"));
        assert!(!h.remove("b"));
        assert!(h.validate().is_ok());
    }

    /// A header is marked as repeating its name exactly when an earlier
    /// one has it, through appends, replacements and removals (NATS'
    /// header map is built from the marks: a wrong one loses values).
    #[test]
    fn repeated_names_are_marked() {
        let mut h = Headers::new();
        h.append("a", "1").append("b", "2").append("a", "3");
        h.insert("b", "4").append("c", "5").append("b", "6");
        let marks = |h: &Headers| {
            h.iter_marked()
                .map(|(n, _, r)| (n.to_string(), r))
                .collect::<Vec<_>>()
        };
        let expected = |h: &Headers| {
            let names: Vec<&str> = h.iter().map(|(n, _)| n).collect();
            (0..names.len())
                .map(|i| (names[i].to_string(), names[..i].contains(&names[i])))
                .collect::<Vec<_>>()
        };
        assert_eq!(marks(&h), expected(&h));
        assert_eq!(marks(&h).iter().filter(|(_, r)| *r).count(), 2);
        h.remove("a");
        h.insert("c", "7");
        assert_eq!(marks(&h), expected(&h));
        let collected: Headers = [("x", "1"), ("y", "2"), ("x", "3")].into_iter().collect();
        assert_eq!(marks(&collected), expected(&collected));
        assert_eq!(collected.get_all("x").collect::<Vec<_>>(), ["1", "3"]);
    }

    #[test]
    fn bad_headers_are_named() {
        for (n, v) in [
            ("", "x"),
            ("a b", "x"),
            ("a:b", "x"),
            ("ok", "x\r\ny"),
            ("nats-msg-id", "1"),
            ("ok", " x"),
            ("ok", "x\t"),
        ] {
            let err = validate_header(n, v).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidHeader);
            assert!(err.to_string().contains(&format!("{n:?}")), "{err}");
        }
    }

    /// The fast header check accepts exactly what the detailed one does
    /// (a header accepted by mistake reaches NATS, which trims values and
    /// splits lines): every char up to U+3000 and every whitespace char,
    /// alone and at either end or inside, in names and values, and names
    /// around the length limit.
    #[test]
    fn the_fast_header_check_agrees_with_the_detailed_one() {
        let agree = |name: &str, value: &str| {
            assert_eq!(
                header_is_valid(name, value),
                header_error(name, value).is_ok(),
                "{name:?}: {value:?}"
            );
        };
        let chars = (0..0x3000u32)
            .chain([
                0x85, 0xa0, 0x1680, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000, 0xfeff,
            ])
            .filter_map(char::from_u32);
        let mut checked = 0;
        for c in chars {
            for text in [
                c.to_string(),
                format!("{c}a"),
                format!("a{c}"),
                format!("a{c}b"),
                format!("{c}{c}"),
                // In the second word, at its edges, and in a word of its own.
                format!("abcdefgh{c}ijk"),
                format!("abcdefg{c}hijklmno"),
                format!("abcdefghijklmno{c}pq"),
                format!("abcdefghijklmnop{c}"),
            ] {
                agree(&text, "v");
                agree("n", &text);
                checked += 2;
            }
        }
        for name in [
            "Nats-Msg-Id",
            "nats-msg-id",
            "NATS-MSG-ID",
            "Nats-Msg-I",
            "Nats-Msg-Idx",
        ] {
            agree(name, "v");
        }
        for len in [
            0,
            1,
            MAX_HEADER_NAME_LEN - 1,
            MAX_HEADER_NAME_LEN,
            MAX_HEADER_NAME_LEN + 1,
        ] {
            agree(&"x".repeat(len), "v");
            agree("n", &"x".repeat(len));
        }
        agree("n", "");
        assert!(checked > 100_000, "{checked}");
        assert!(validate_header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        )
        .is_ok());
    }

    #[test]
    fn ids_display_and_compare() {
        assert_eq!(MessageId::new("abc").to_string(), "abc");
        assert_eq!(
            MessageId::stream_position("ORDERS", 7, 99).to_string(),
            "$js:ORDERS:7@99"
        );
        assert_eq!(MessageId::local(1, 2), MessageId::local(1, 2));
        assert_ne!(MessageId::local(1, 2), MessageId::local(1, 3));
        assert_eq!(MessageId::new("x"), "x");
        assert_eq!(MessageId::local(255, 3), "$mem:00000000000000ff:3");
        assert_ne!(MessageId::stream_position("S", 1, 5), "$js:S:10@5");
    }

    /// A stream deleted and created again restarts its sequences: the same
    /// position of a new incarnation is a different id.
    #[test]
    fn stream_ids_differ_across_incarnations() {
        let old = MessageId::stream_position("BUS_ORDERS", 1, 1_000);
        let new = MessageId::stream_position("BUS_ORDERS", 1, 2_000);
        assert_ne!(old, new);
        assert_ne!(old.key(), new.key());
        assert_eq!(old, MessageId::stream_position("BUS_ORDERS", 1, 1_000));
    }

    /// A given id never equals an assigned one, even when it spells it, and
    /// their storage keys differ.
    #[test]
    fn given_and_assigned_ids_never_collide() {
        use std::collections::HashSet;
        for assigned in [
            MessageId::local(7, 3),
            MessageId::stream_position("S", 1, 5),
        ] {
            let spelled = MessageId::new(assigned.to_string());
            assert_ne!(spelled, assigned);
            assert_ne!(spelled.key(), assigned.key(), "{assigned}");
            let set: HashSet<MessageId> = [spelled, assigned].into();
            assert_eq!(set.len(), 2);
        }
        assert_eq!(MessageId::new("order-1").key(), "order-1");
        assert_eq!(MessageId::new("$x").key(), "$given:$x");
        assert_eq!(MessageId::new("$given:$x").key(), "$given:$given:$x");
    }

    #[test]
    fn given_ids_are_validated() {
        assert!(validate_id("order-1").is_ok());
        assert!(validate_id(&"a".repeat(MAX_ID_LEN)).is_ok());
        for (bad, says) in [
            ("", "empty"),
            ("abc\r\nX", "control character"),
            ("a\tb", "control character"),
            ("a\0b", "control character"),
            ("$js:S:1@2", "reserved"),
            (" order-1", "whitespace"),
            ("order-1\u{a0}", "whitespace"),
        ] {
            let e = validate_id(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidHeader, "{bad:?}");
            assert!(e.to_string().contains(says), "{bad:?}: {e}");
        }
        let long = "x".repeat(MAX_ID_LEN + 1);
        let e = validate_id(&long).unwrap_err();
        assert!(e.to_string().contains("257 bytes"), "{e}");
        assert!(e.to_string().len() < 300, "the error shortens the id: {e}");
    }

    /// Equal ids hash equally, with a hasher that is sensitive to how bytes
    /// are split across writes (FxHasher) and with the standard one.
    #[test]
    fn equal_ids_hash_equally() {
        use std::hash::{BuildHasher, BuildHasherDefault};
        fn hashes(id: &MessageId) -> (u64, u64) {
            type Std = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;
            (
                rustc_hash::FxBuildHasher.hash_one(id),
                Std::default().hash_one(id),
            )
        }
        let long = "S".repeat(300);
        for id in [
            MessageId::local(0, 0),
            MessageId::local(u64::MAX, u64::MAX),
            MessageId::local(0x1234_5678_9abc_def0, 42),
            MessageId::stream_position("ORDERS", 7, 1),
            MessageId::stream_position(long.as_str(), u64::MAX, u64::MAX),
            MessageId::new("order-1"),
        ] {
            let copy = id.clone();
            assert_eq!(copy, id);
            assert_eq!(hashes(&copy), hashes(&id), "{id}");
            assert!(id.display_eq(&id.to_string()));
            assert!(!id.display_eq(&format!("{id}0")));
            assert_eq!(id.display_str(), id.to_string());
        }
    }
}
