//! Header validation (`validate_header`, `Headers::validate`) against a
//! reference model, and the promise behind it: what the bus accepts, the
//! NATS client accepts too (it panics on a header name or value it refuses,
//! so a header the bus let through would take down the publish).
//!
//! Input: fields separated by 0xFF (see `common.rs`): name, value, name,
//! value, ... (a last lone field is a name with an empty value).
#![no_main]

mod common;

use event_bus::message::{validate_header, MAX_HEADER_NAME_LEN};
use event_bus::{ErrorKind, Headers};
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

    if all_ok {
        // What NatsBus sends for these headers: no panic, every header kept
        // in order; and what a subscriber gets back for such a message has
        // the same headers (the bus's own `Nats-*` names aside).
        let map = event_bus::fuzzing::to_header_map(&headers);
        let sent: Vec<(String, String)> = map
            .iter()
            .flat_map(|(n, vs)| {
                vs.iter()
                    .map(move |v| (n.to_string(), v.as_str().to_string()))
            })
            .collect();
        assert_eq!(sent.len(), pairs.len(), "{pairs:?} sent as {sent:?}");
        let message = async_nats::Message {
            subject: "s".into(),
            reply: None,
            payload: bytes::Bytes::new(),
            headers: Some(map),
            status: None,
            description: None,
            length: 0,
        };
        let got = event_bus::fuzzing::to_bus_message(&message, "S", 1, None);
        // A NATS header map keeps the order of a name's values, not the
        // order across names; headers named `Nats-*` are the server's and
        // are not passed to subscribers.
        let kept: Vec<(&str, &str)> = pairs
            .iter()
            .copied()
            .filter(|(n, _)| !n.starts_with("Nats-"))
            .collect();
        assert_eq!(
            got.headers.len(),
            kept.len(),
            "published {pairs:?}, received {:?}",
            got.headers
        );
        for &(n, _) in &kept {
            assert!(
                got.headers
                    .get_all(n)
                    .eq(kept.iter().filter(|(m, _)| *m == n).map(|(_, v)| *v)),
                "published {pairs:?}, received {:?}",
                got.headers
            );
        }
        assert!(got.headers.validate().is_ok());
    }
});
