//! Header and message-id validation (`validate_header`, `Headers::validate`,
//! `validate_id`, `Envelope::validate`) against a reference model, and the
//! promise behind it: what the bus accepts, the NATS client accepts too (it
//! panics on a header name or value it refuses, so a header or id the bus
//! let through would take down the publish), and it arrives unchanged.
//!
//! Input: fields separated by 0xFF (see `common.rs`): name, value, name,
//! value, ... (a last lone field is a name with an empty value). Every
//! field is also checked as a message id; the first one is the envelope's.
#![no_main]

mod common;

use event_bus::message::{header, validate_header, validate_id, MAX_HEADER_NAME_LEN, MAX_ID_LEN};
use event_bus::{Envelope, ErrorKind, Headers};
use libfuzzer_sys::fuzz_target;
use std::str::FromStr;

/// The model's verdict, from the `Headers` docs: a name is 1 to 256 bytes of
/// printable ASCII without `:` (so no space), not the message-id header in
/// any case; a value has no CR or LF.
fn model_header_ok(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_HEADER_NAME_LEN
        && name
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b':')
        && !name.eq_ignore_ascii_case("nats-msg-id")
        && !value.contains('\r')
        && !value.contains('\n')
        && value.trim() == value
}

/// The model's verdict on a publisher-given id, from `validate_id`'s docs:
/// 1 to 256 bytes, no control character, not starting with `$` (the
/// namespace of the ids the bus assigns).
fn model_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.chars().any(char::is_control)
        && !id.starts_with('$')
        && id.trim() == id
}

fn check_id(id: &str) {
    let want = model_id_ok(id);
    match validate_id(id) {
        Ok(()) => {
            assert!(want, "accepted id {id:?}; the model refuses it");
            // It travels as the `Nats-Msg-Id` header value: the client's
            // builder asserts on a value it refuses.
            assert!(
                async_nats::HeaderValue::from_str(id).is_ok(),
                "the bus accepts id {id:?}, async-nats does not"
            );
            let _ = async_nats::jetstream::message::PublishMessage::build().message_id(id);
        }
        Err(e) => {
            assert!(!want, "refused id {id:?} ({e}); the model accepts it");
            assert_eq!(e.kind(), ErrorKind::InvalidHeader, "{e}");
            assert!(
                e.to_string().len() < 1024,
                "the error shortens a long id: {e}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(fields) = common::fields(data) else {
        return;
    };
    if fields.len() > 32 {
        return;
    }
    let pairs: Vec<(&str, &str)> = fields
        .chunks(2)
        .map(|c| (c[0], c.get(1).copied().unwrap_or("")))
        .collect();

    for f in &fields {
        check_id(f);
    }
    let id = fields[0];

    let mut all_ok = true;
    for &(name, value) in &pairs {
        let want = model_header_ok(name, value);
        all_ok &= want;
        match validate_header(name, value) {
            Ok(()) => {
                assert!(
                    want,
                    "accepted header {name:?}: {value:?}; the model refuses it"
                );
                // The NATS client must accept it too: `HeaderMap::append`
                // with `&str` asserts on what these refuse.
                assert!(
                    async_nats::HeaderName::from_str(name).is_ok(),
                    "the bus accepts header name {name:?}, async-nats does not"
                );
                assert!(
                    async_nats::HeaderValue::from_str(value).is_ok(),
                    "the bus accepts header value {value:?}, async-nats does not"
                );
            }
            Err(e) => {
                assert!(
                    !want,
                    "refused header {name:?}: {value:?} ({e}); the model accepts it"
                );
                assert_eq!(e.kind(), ErrorKind::InvalidHeader, "{e}");
            }
        }
    }

    // A list of headers, with the operations a publisher uses, against a
    // plain vector of pairs.
    let headers: Headers = pairs.iter().copied().collect();
    assert_eq!(
        headers.validate().is_ok(),
        all_ok,
        "Headers::validate of {pairs:?}"
    );
    assert_eq!(headers.len(), pairs.len());
    assert_eq!(
        headers.wire_len(),
        pairs
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum::<usize>()
    );
    assert!(headers.iter().eq(pairs.iter().copied()));
    if let Some(&(name, _)) = pairs.first() {
        let first = pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        assert_eq!(headers.get(name), first);
        let all: Vec<&str> = pairs
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .collect();
        assert!(headers.get_all(name).eq(all.iter().copied()));
        let mut replaced = headers.clone();
        replaced.insert(name, "x");
        assert!(replaced.get_all(name).eq(["x"]));
        assert!(replaced.remove(name));
        assert_eq!(replaced.get(name), None);
        assert_eq!(replaced.len(), pairs.len() - all.len());
    }

    let envelope = Envelope::new("s", Vec::new())
        .headers(headers.clone())
        .id(id);
    assert_eq!(
        envelope.validate().is_ok(),
        all_ok && model_id_ok(id),
        "Envelope::validate, id {id:?}, headers {pairs:?}"
    );

    if all_ok && model_id_ok(id) {
        // What NatsBus sends for these headers and this id: no panic, every
        // header kept; and what a subscriber gets back for such a message has
        // the same headers (the server's `Nats-*` names aside) and the id.
        let mut map = event_bus::fuzzing::to_header_map(&headers);
        let sent = map.iter().map(|(_, vs)| vs.len()).sum::<usize>();
        assert_eq!(sent, pairs.len(), "{pairs:?} sent as {map:?}");
        map.insert(header::MESSAGE_ID, id);
        let message = async_nats::Message {
            subject: "s".into(),
            reply: None,
            payload: bytes::Bytes::new(),
            headers: Some(common::over_the_wire(&map)),
            status: None,
            description: None,
            length: 0,
        };
        let got = event_bus::fuzzing::to_bus_message(&message, "S", 1, 1, None);
        // The client trims values read from the wire; the bus refuses values
        // and ids with whitespace at an end, so they arrive as sent.
        assert_eq!(got.id.given(), Some(id), "sent id {id:?}, got {:?}", got.id);
        // A NATS header map keeps the order of a name's values, not the
        // order across names; headers named `Nats-*` are the server's and
        // are not passed to subscribers.
        let kept: Vec<(&str, String)> = pairs
            .iter()
            .filter(|(n, _)| !n.starts_with("Nats-"))
            .map(|(n, v)| (*n, v.to_string()))
            .collect();
        assert_eq!(
            got.headers.len(),
            kept.len(),
            "published {pairs:?}, received {:?}",
            got.headers
        );
        for (n, _) in &kept {
            assert!(
                got.headers
                    .get_all(n)
                    .eq(kept.iter().filter(|(m, _)| m == n).map(|(_, v)| v.as_str())),
                "published {pairs:?}, received {:?}",
                got.headers
            );
        }
        assert!(got.headers.validate().is_ok());
    }
});
