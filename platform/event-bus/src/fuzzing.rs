//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`).
//!
//! These are internal conversions of the NATS backend, exposed only so that
//! the fuzzer can call them with arbitrary server messages. Not a public API:
//! no semver guarantee, hidden from the docs.

use crate::message::{BusMessage, Headers};
use async_nats::HeaderMap;

/// A NATS message as the bus's message: what a subscriber or a durable
/// consumer receives for a message the server delivered from `stream` at
/// `stream_seq`, stored at `stored_ns` (nanoseconds since the Unix epoch),
/// with the tenant prefix `strip` removed from the subject.
pub fn to_bus_message(
    message: &async_nats::Message,
    stream: &str,
    stream_seq: u64,
    stored_ns: u64,
    strip: Option<&str>,
) -> BusMessage {
    crate::nats::convert::to_bus_message(message, stream, stream_seq, stored_ns, strip)
}

/// The bus's (validated) headers as the NATS header map a publish sends.
pub fn to_header_map(headers: &Headers) -> HeaderMap {
    crate::nats::convert::to_header_map(headers)
}
