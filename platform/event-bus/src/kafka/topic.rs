//! Subjects on topics: the one documented mapping.
//!
//! A subject's **first token** names its topic: `orders.eu.created` is
//! stored in topic `orders` (with a tenant `acme`: `acme.orders`), the full
//! subject travels in the [`SUBJECT_HEADER`] header and is the record's
//! default key (so per-subject order is Kafka's per-partition order). A
//! pattern is served by the topic of its first token and matched
//! client-side with [`crate::subject::matches`]; a pattern whose first
//! token is a wildcard (`*.created`, `>`) names no topic and is refused as
//! `Unsupported`.
//!
//! Kafka topic names allow `[A-Za-z0-9._-]` and at most 249 characters;
//! subject tokens allow more (any Unicode). A token is escaped into a
//! topic name injectively: ASCII letters, digits and `-` stay, every other
//! byte of its UTF-8 (including `_` and `.`) becomes `_` and two lower-case
//! hex digits. A topic name longer than 249 characters is an
//! `InvalidSubject` error naming the subject.

use crate::error::{BusError, ErrorKind};
use std::fmt::Write;

/// The Kafka header carrying the full subject.
pub const SUBJECT_HEADER: &str = "bus-subject";
/// The Kafka header carrying the publisher's message id.
pub const ID_HEADER: &str = "bus-id";
/// The header of a marker record (one without [`SUBJECT_HEADER`]) that
/// removes a message from its partition for every reader: the sequence
/// (offset + 1) of the message it removes (see `EventBus::delete_stored`).
pub const DELETES_HEADER: &str = "bus-deletes";
/// A header an envelope may set to choose the record key (the partition
/// key) instead of its subject; it is delivered like any other header.
pub const KEY_HEADER: &str = "Bus-Partition-Key";

/// The longest Kafka topic name.
pub const MAX_TOPIC_LEN: usize = 249;

/// Escapes one subject token into topic-name characters.
pub fn escape_token(token: &str) -> String {
    let mut out = String::with_capacity(token.len());
    for b in token.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            let _ = write!(out, "_{b:02x}");
        }
    }
    out
}

/// The topic storing subjects whose first token is `first`, for `tenant`.
pub fn topic_for(tenant: Option<&str>, first: &str) -> Result<String, BusError> {
    let topic = match tenant {
        Some(t) => format!("{}.{}", escape_token(t), escape_token(first)),
        None => escape_token(first),
    };
    if topic.len() > MAX_TOPIC_LEN {
        return Err(BusError::new(
            ErrorKind::InvalidSubject,
            format!(
                "subject token {first:?} makes a Kafka topic name of {} characters; Kafka allows {MAX_TOPIC_LEN}",
                topic.len()
            ),
        ));
    }
    Ok(topic)
}

/// The topic of a (valid) pattern: its first token's, or `Unsupported`
/// when the first token is a wildcard.
pub fn topic_for_pattern(tenant: Option<&str>, pattern: &str) -> Result<String, BusError> {
    let first = crate::subject::first_token(pattern);
    if first == crate::subject::SINGLE_WILDCARD || first == crate::subject::TAIL_WILDCARD {
        return Err(BusError::new(
            ErrorKind::Unsupported,
            format!(
                "pattern {pattern:?} on kafka: a subject's first token names its Kafka topic, so a pattern's first token must be literal (e.g. `orders.*.created`, not `*.created`)"
            ),
        ));
    }
    topic_for(tenant, first)
}

/// The consumer group of durable consumer `name`.
pub fn group_for(tenant: Option<&str>, name: &str) -> String {
    match tenant {
        Some(t) => format!("{t}.{name}"),
        None => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_is_injective_and_kafka_legal() {
        assert_eq!(topic_for(None, "orders").unwrap(), "orders");
        assert_eq!(topic_for(Some("acme"), "orders").unwrap(), "acme.orders");
        assert_eq!(escape_token("a_b"), "a_5fb");
        assert_ne!(escape_token("a_5fb"), escape_token("a_b"));
        assert_eq!(escape_token("é"), "_c3_a9");
        let long = "x".repeat(300);
        let e = topic_for(None, &long).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidSubject);
        assert!(e.to_string().contains("249"), "{e}");
        for t in ["a.b", "ü", "x y", "a-b", "A_1"] {
            assert!(escape_token(t)
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        }
    }

    #[test]
    fn wildcard_first_token_is_unsupported() {
        assert_eq!(
            topic_for_pattern(None, "orders.*.created").unwrap(),
            "orders"
        );
        let e = topic_for_pattern(None, "*.created").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("*.created"), "{e}");
    }
}
