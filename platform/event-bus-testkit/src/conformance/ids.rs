//! Scenarios of message ids and reserved subjects: validation, assigned ids,
//! the server's namespaces.

use super::*;

/// Message ids are validated like header values on every backend: a line
/// break, a control character, an empty or over-long id, or one in the
/// namespace of bus-assigned ids (`$...`) is an `InvalidHeader` error naming
/// the id, never a panic; in a batch only that envelope fails.
pub async fn invalid_message_ids(f: &dyn BusFactory) {
    let c = Ctx::new(f, "badids").await;
    let mut sub = c.sub("i").await;
    let subject = c.subject("i");
    let long = "x".repeat(event_bus::message::MAX_ID_LEN + 1);
    let bad_ids = [
        "abc\r\nX",
        "abc\nX",
        "a\rb",
        "a\u{0}b",
        "",
        "$js:S:1@2",
        long.as_str(),
    ];
    for id in bad_ids {
        let err = c
            .bus
            .publish_envelope(Envelope::new(subject.clone(), &b"x"[..]).id(id))
            .await
            .expect_err(&format!("publish with id {id:?} must fail"));
        assert_eq!(err.kind(), ErrorKind::InvalidHeader, "id {id:?}: {err}");
        assert!(err.to_string().contains("message id"), "{err}");
    }
    let mut batch: Vec<Envelope> = Vec::new();
    for (i, id) in bad_ids.iter().enumerate() {
        batch.push(Envelope::new(
            subject.clone(),
            format!("ok-{i}").into_bytes(),
        ));
        batch.push(Envelope::new(subject.clone(), &b"bad"[..]).id(*id));
    }
    batch.push(Envelope::new(subject.clone(), &b"last"[..]).id(format!("{}-good", c.prefix())));
    let results = c.bus.publish_batch(batch).await;
    assert_eq!(results.len(), 2 * bad_ids.len() + 1);
    for (i, r) in results.iter().enumerate() {
        if i % 2 == 1 && i < 2 * bad_ids.len() {
            let e = r.as_ref().expect_err("the envelope with a bad id fails");
            assert_eq!(e.kind(), ErrorKind::InvalidHeader, "{e}");
        } else {
            assert!(r.is_ok(), "envelope {i} of the batch must succeed: {r:?}");
        }
    }
    for i in 0..bad_ids.len() {
        let m = recv(&mut sub, "the good envelopes of the batch").await;
        assert_eq!(text(&m), format!("ok-{i}"));
    }
    let m = recv(&mut sub, "the last envelope").await;
    assert_eq!(text(&m), "last");
    assert_eq!(m.id.to_string(), format!("{}-good", c.prefix()));
}

/// Bus-assigned ids are in their own namespace (`$...`) and differ for
/// every message; a given id never equals an assigned one.
pub async fn assigned_ids_are_unique(f: &dyn BusFactory) {
    let c = Ctx::new(f, "assigned").await;
    let mut sub = c.sub("a").await;
    for i in 0..20 {
        c.publish("a", format!("{i}")).await;
    }
    let msgs = recv_n(&mut sub, 20, "id-less messages").await;
    let ids: std::collections::HashSet<String> = msgs.iter().map(|m| m.id.to_string()).collect();
    assert_eq!(ids.len(), 20, "every message gets its own id: {ids:?}");
    for m in &msgs {
        assert!(!m.id.is_given(), "{}", m.id);
        assert!(
            m.id.to_string().starts_with('$'),
            "assigned ids start with `$`: {}",
            m.id
        );
        assert_ne!(
            event_bus::MessageId::new(m.id.to_string()),
            m.id,
            "a given id spelling an assigned one is another id"
        );
    }
}

/// Subjects and patterns in the server's namespaces (`$JS.API.>`,
/// `$KV.>`, `$SYS.>`, `_INBOX.>`, ...) are refused on every backend with an
/// error naming them, and nothing reaches the server: a stream-delete
/// request sent as a "publish" leaves the stream in place.
pub async fn reserved_subjects_refused(f: &dyn BusFactory) {
    let c = Ctx::new(f, "reserved").await;
    let mut sub = c.sub("r").await;
    c.publish("r", "before").await;
    let stream = format!("BUS_{}", c.prefix().to_uppercase());
    for bad in [
        format!("$JS.API.STREAM.DELETE.{stream}"),
        format!("$JS.API.STREAM.PURGE.{stream}"),
        "$KV.sessions.admin".to_string(),
        "$O.store.x".to_string(),
        "$SYS.REQ.SERVER.PING".to_string(),
        "_INBOX.abc".to_string(),
    ] {
        let err = c
            .bus
            .publish(&bad, b"{}".to_vec())
            .await
            .expect_err(&format!("publish to {bad:?} must be refused"));
        assert_eq!(err.kind(), ErrorKind::InvalidSubject, "{bad:?}: {err}");
        assert!(
            err.to_string().contains(&bad) && err.to_string().contains("reserved"),
            "{err}"
        );
        let err = c
            .bus
            .publish_envelope(
                Envelope::new(bad.clone(), &b"{}"[..]).id(format!("{}-r", c.prefix())),
            )
            .await
            .expect_err(&format!("publish_envelope to {bad:?} must be refused"));
        assert_eq!(err.kind(), ErrorKind::InvalidSubject, "{bad:?}: {err}");
        let results = c
            .bus
            .publish_batch(vec![Envelope::new(bad.clone(), &b"{}"[..])])
            .await;
        assert_eq!(
            results[0].as_ref().map_err(|e| e.kind()).unwrap_err(),
            ErrorKind::InvalidSubject
        );
    }
    for bad in ["$JS.API.>", "$KV.sessions.*", "_INBOX.>", "$SYS.>"] {
        let err = c
            .bus
            .subscribe(bad)
            .await
            .expect_err(&format!("subscribe to {bad:?} must be refused"));
        assert_eq!(err.kind(), ErrorKind::InvalidPattern, "{bad:?}: {err}");
        assert!(err.to_string().contains(bad), "{err}");
        let err = c
            .bus
            .consume(ConsumerConfig::new(format!("{}-res", c.prefix()), bad))
            .await
            .err()
            .unwrap_or_else(|| panic!("consume of {bad:?} must be refused"));
        assert_eq!(err.kind(), ErrorKind::InvalidPattern, "{bad:?}: {err}");
    }
    c.publish("r", "after").await;
    assert_eq!(text(&recv(&mut sub, "the message before").await), "before");
    assert_eq!(
        text(&recv(&mut sub, "the message after: the stream is still there").await),
        "after"
    );
}
