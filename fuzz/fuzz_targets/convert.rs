//! The conversion of server messages into `BusMessage` (what NATS
//! subscribers and durable consumers receive): subject (tenant prefix
//! removed), headers, message id and stream sequence.
//!
//! Input: fields separated by 0xFF (see `common.rs`): wire subject, tenant
//! prefix to strip (empty: none), stream name, stream sequence (decimal,
//! optionally `@` and the stored time in nanoseconds), payload, then header
//! name, value, name, value, ... Headers are built as
//! the NATS client builds them from the wire (names and values it refuses
//! are left out, as the client would refuse the message); no header fields:
//! a message without headers.
#![no_main]

mod common;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use event_bus::message::header::MESSAGE_ID;
use event_bus::message::MAX_HEADER_NAME_LEN;
use event_bus::subject::validate_subject;
use libfuzzer_sys::fuzz_target;
use std::str::FromStr;

fuzz_target!(|data: &[u8]| {
    let Some(fields) = common::fields(data) else {
        return;
    };
    if fields.len() < 5 || fields.len() > 40 {
        return;
    }
    let (wire, strip, stream, payload) = (fields[0], fields[1], fields[2], fields[4]);
    // "<sequence>" or "<sequence>@<stored nanoseconds>"
    let (seq, stored) = fields[3].split_once('@').unwrap_or((fields[3], "0"));
    let seq: u64 = seq.parse().unwrap_or(seq.len() as u64);
    let stored_ns: u64 = stored.parse().unwrap_or(stored.len() as u64);
    let strip = (!strip.is_empty()).then_some(strip);

    let mut sent: Vec<(String, String)> = Vec::new();
    let headers = (fields.len() > 5).then(|| {
        let mut map = HeaderMap::new();
        for pair in fields[5..].chunks(2) {
            // The client trims a value read from the wire.
            let value = pair.get(1).copied().unwrap_or("").trim();
            if let (Ok(n), Ok(v)) = (HeaderName::from_str(pair[0]), HeaderValue::from_str(value)) {
                map.append(n, v);
                sent.push((pair[0].to_string(), value.to_string()));
            }
        }
        map
    });
    let message = async_nats::Message {
        subject: wire.into(),
        reply: None,
        payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
        headers,
        status: None,
        description: None,
        length: data.len(),
    };

    let got = event_bus::fuzzing::to_bus_message(&message, stream, seq, stored_ns, strip);

    assert_eq!(got.sequence, seq);
    assert_eq!(&got.payload[..], payload.as_bytes());
    let want_subject = strip.and_then(|p| wire.strip_prefix(p)).unwrap_or(wire);
    assert_eq!(got.subject.as_str(), want_subject);
    // A valid subject with a whole-token prefix removed is a valid subject.
    if validate_subject(wire).is_ok() && strip.is_none_or(|p| p.ends_with('.')) {
        assert!(
            validate_subject(got.subject.as_str()).is_ok(),
            "{wire:?} without {strip:?} gave the invalid subject {:?}",
            got.subject
        );
    }

    // Headers: the server's own (`Nats-*`, the message id among them) are
    // removed, and so are those the bus could not publish again (an empty or
    // over-long name, `nats-msg-id` in another case); every other value is
    // kept, in order per name. (Values from the wire are trimmed and have no
    // line break; names are printable ASCII without `:`, or empty.)
    let carried = |n: &str| {
        !n.is_empty()
            && n.len() <= MAX_HEADER_NAME_LEN
            && !n.starts_with("Nats-")
            && !n.eq_ignore_ascii_case(MESSAGE_ID)
    };
    let kept: Vec<&(String, String)> = sent.iter().filter(|(n, _)| carried(n)).collect();
    assert_eq!(
        got.headers.len(),
        kept.len(),
        "sent {sent:?}, got {:?}",
        got.headers
    );
    for (n, _) in &kept {
        assert!(
            got.headers
                .get_all(n)
                .eq(kept.iter().filter(|(m, _)| m == n).map(|(_, v)| v.as_str())),
            "sent {sent:?}, got {:?}",
            got.headers
        );
    }
    assert!(got.headers.iter().all(|(n, _)| !n.starts_with("Nats-")));

    // The id: the publisher's (the first `Nats-Msg-Id`) or one the bus
    // derives from the stream position.
    match sent.iter().find(|(n, _)| n == MESSAGE_ID) {
        Some((_, id)) => assert_eq!(got.id.given(), Some(id.as_str()), "{:?}", got.id),
        None => {
            assert!(!got.id.is_given(), "{:?}", got.id);
            let text = got.id.to_string();
            assert!(
                text.contains(stream) && text.contains(&seq.to_string()),
                "{text}"
            );
            // The same position in another incarnation of the stream (stored
            // at another time) is another id.
            let again = event_bus::fuzzing::to_bus_message(
                &message,
                stream,
                seq,
                stored_ns.wrapping_add(1),
                strip,
            );
            assert_ne!(again.id, got.id, "{:?}", got.id);
            assert_ne!(again.id.key(), got.id.key(), "{:?}", got.id);
        }
    }

    // What a subscriber or consumer received can be published again (a
    // dead letter, a replay) with its headers: they pass the bus's checks.
    if let Err(e) = got.headers.validate() {
        panic!("received headers that cannot be published again: {e}");
    }
});
