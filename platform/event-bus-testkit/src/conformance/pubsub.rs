//! Scenarios of publish and subscribe: delivery, wildcards, ordering, fan-out,
//! slow and dropped subscribers, invalid input, headers, batches, payloads.

use super::*;

/// Publish then subscribe basics: subject, payload and an id arrive.
pub async fn publish_subscribe(f: &dyn BusFactory) {
    let c = Ctx::new(f, "pubsub").await;
    let mut sub = c.sub("auth.events.user.created").await;
    c.publish(
        "auth.events.user.created",
        br#"{"user_id":"usr_123"}"#.to_vec(),
    )
    .await;
    let m = recv(&mut sub, "the published event").await;
    assert_eq!(m.subject, c.subject("auth.events.user.created"));
    assert_eq!(&m.payload[..], br#"{"user_id":"usr_123"}"#);
    let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("payload is JSON");
    assert_eq!(v["user_id"], "usr_123");
    assert!(!m.id.to_string().is_empty(), "every message carries an id");
}

/// A subscription sees only what is published after it was made.
pub async fn live_view_starts_at_subscribe(f: &dyn BusFactory) {
    let c = Ctx::new(f, "live").await;
    c.publish("x", "before").await;
    let mut sub = c.sub("x").await;
    c.publish("x", "after").await;
    assert_eq!(
        text(&recv(&mut sub, "the message published after subscribe").await),
        "after"
    );
}

/// `*` matches exactly one token, anywhere.
pub async fn wildcard_single_token(f: &dyn BusFactory) {
    let c = Ctx::new(f, "star").await;
    let mut mid = c.sub("auth.*.created").await;
    let mut end = c.sub("auth.user.*").await;
    let mut two = c.sub("*.*.deleted").await;
    c.publish("auth.user.profile.created", "no: two tokens for *")
        .await;
    c.publish("auth.created", "no: zero tokens for *").await;
    c.publish("auth.user", "no: end needs a token").await;
    c.publish("auth.user.created", "yes").await;
    c.publish("auth.user.deleted", "deleted").await;
    let m = recv(&mut mid, "auth.*.created").await;
    assert_eq!(
        (m.subject.as_str(), text(&m).as_str()),
        (c.subject("auth.user.created").as_str(), "yes")
    );
    let got: Vec<String> = recv_n(&mut end, 2, "auth.user.*")
        .await
        .iter()
        .map(text)
        .collect();
    assert_in_order_across_subjects(
        &c,
        "wildcard_single_token",
        &got,
        &["yes", "deleted"],
        "auth.user.* must not match auth.user.profile.created or auth.user",
    );
    let m = recv(&mut two, "*.*.deleted").await;
    assert_eq!(text(&m), "deleted");
}

/// `>` matches one or more trailing tokens and never the bare prefix.
pub async fn wildcard_tail(f: &dyn BusFactory) {
    let c = Ctx::new(f, "tail").await;
    let mut events = c.sub("auth.events.>").await;
    let mut all = c.sub(">").await;
    let mut star_tail = c.sub("*.events.>").await;
    c.publish("auth.events", "no: > needs at least one token")
        .await;
    c.publish("auth.events.user.created", "one").await;
    c.publish("auth.events.user.profile.updated", "two").await;
    c.publish("auth.other.x", "no").await;
    c.publish("auth.events.x", "three").await;
    let got: Vec<String> = recv_n(&mut events, 3, "auth.events.>")
        .await
        .iter()
        .map(text)
        .collect();
    assert_in_order_across_subjects(
        &c,
        "wildcard_tail",
        &got,
        &["one", "two", "three"],
        "auth.events.>",
    );
    let got: Vec<String> = recv_n(&mut star_tail, 3, "*.events.>")
        .await
        .iter()
        .map(text)
        .collect();
    assert_in_order_across_subjects(
        &c,
        "wildcard_tail",
        &got,
        &["one", "two", "three"],
        "*.events.>",
    );
    let got: Vec<String> = recv_n(&mut all, 5, "<prefix>.>")
        .await
        .iter()
        .map(text)
        .collect();
    assert_in_order_across_subjects(
        &c,
        "wildcard_tail",
        &got,
        &[
            "no: > needs at least one token",
            "one",
            "two",
            "no",
            "three",
        ],
        "<prefix>.> sees everything under the prefix",
    );
}

/// Wildcard characters inside a token are literal.
pub async fn wildcards_only_as_whole_tokens(f: &dyn BusFactory) {
    let c = Ctx::new(f, "literal").await;
    let mut sub = c.sub("foo*.bar").await;
    c.publish("foox.bar", "no").await;
    c.publish("foo*.bar", "yes").await;
    let m = recv(&mut sub, "foo*.bar").await;
    assert_eq!(
        text(&m),
        "yes",
        "foo* is a literal token, not a prefix wildcard"
    );
}

/// One publisher's messages arrive in publish order.
pub async fn ordering_per_publisher(f: &dyn BusFactory) {
    let c = Ctx::new(f, "order").await;
    let mut sub = c.sub("seq").await;
    let n = 2000;
    // Publish from one task while reading in another: a lossless bus may make
    // the publisher wait for the reader.
    let publish = async {
        for i in 0..n {
            c.publish("seq", i.to_string()).await;
        }
    };
    let read = async {
        for i in 0..n {
            let m = recv(&mut sub, "ordered messages").await;
            assert_eq!(text(&m), i.to_string(), "message {i} out of order");
        }
    };
    futures::future::join(publish, read).await;
}

/// Every subscriber gets every message, in order.
pub async fn fan_out(f: &dyn BusFactory) {
    let c = Ctx::new(f, "fanout").await;
    let mut subs = Vec::new();
    for i in 0..10 {
        subs.push(if i % 2 == 0 {
            c.sub("fan.out").await
        } else {
            c.sub("fan.*").await
        });
    }
    for i in 0..200 {
        c.publish("fan.out", i.to_string()).await;
    }
    for (s, sub) in subs.iter_mut().enumerate() {
        for i in 0..200 {
            let m = recv(sub, &format!("fan-out message {i} for subscriber {s}")).await;
            assert_eq!(text(&m), i.to_string(), "subscriber {s}");
        }
    }
}

/// Many publishers at once: nothing lost, each publisher's order kept.
pub async fn concurrent_publishers(f: &dyn BusFactory) {
    let c = Arc::new(Ctx::new(f, "concurrent").await);
    let mut sub = c.sub("many.*").await;
    let (publishers, each) = (8usize, 250usize);
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..each {
                c.publish(&format!("many.p{p}"), format!("{p}:{i}")).await;
            }
        }));
    }
    let mut next = vec![0usize; publishers];
    for _ in 0..publishers * each {
        let m = recv(&mut sub, "concurrent publishes").await;
        let t = text(&m);
        let (p, i) = t.split_once(':').expect("p:i payload");
        let (p, i): (usize, usize) = (p.parse().unwrap(), i.parse().unwrap());
        assert_eq!(i, next[p], "publisher {p}'s messages out of order");
        next[p] += 1;
    }
    for t in tasks {
        t.await.expect("publisher task");
    }
    assert!(next.iter().all(|&n| n == each));
}

/// A subscriber that reads slowly loses nothing; a fast one beside it is unaffected.
pub async fn slow_subscriber_loses_nothing(f: &dyn BusFactory) {
    let c = Arc::new(Ctx::new(f, "slow").await);
    let mut slow = c.sub("slow.s").await;
    let mut fast = c.sub("slow.s").await;
    let n = 5000usize;
    let publisher = {
        let c = c.clone();
        tokio::spawn(async move {
            for i in 0..n {
                c.publish("slow.s", i.to_string()).await;
            }
        })
    };
    let fast_reader = tokio::spawn(async move {
        for i in 0..n {
            assert_eq!(text(&recv(&mut fast, "fast reader").await), i.to_string());
        }
    });
    for i in 0..n {
        let m = recv(&mut slow, "slow reader").await;
        assert_eq!(
            text(&m),
            i.to_string(),
            "slow subscriber lost or reordered message {i}"
        );
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }
    tokio::time::timeout(RECV_TIMEOUT, publisher)
        .await
        .expect("publisher finished")
        .expect("publisher task");
    fast_reader.await.expect("fast reader");
}

/// Dropping a subscription unsubscribes it and never blocks publishers.
pub async fn dropped_subscriber(f: &dyn BusFactory) {
    let c = Ctx::new(f, "dropped").await;
    let dropped = c.sub("d.x").await;
    let mut kept = c.sub("d.x").await;
    drop(dropped);
    let n = 5000;
    let publish_all = async {
        for i in 0..n {
            c.publish("d.x", i.to_string()).await;
        }
    };
    let read_all = async {
        for i in 0..n {
            assert_eq!(
                text(&recv(&mut kept, "kept subscriber").await),
                i.to_string()
            );
        }
    };
    tokio::time::timeout(
        Duration::from_secs(60),
        futures::future::join(publish_all, read_all),
    )
    .await
    .expect("publishing must not block on a dropped subscription");
}

/// A subscription dropped before anything was read does not block a later publish.
pub async fn dropped_unread_subscriber_releases_publishers(f: &dyn BusFactory) {
    let c = Ctx::new(f, "dropunread").await;
    let unread = c.sub("u.x").await;
    let mut sentinel = c.sub("u.x").await;
    c.publish("u.x", "first").await;
    drop(unread);
    for i in 0..3000 {
        tokio::time::timeout(RECV_TIMEOUT, c.publish("u.x", i.to_string()))
            .await
            .expect("publish blocked by a dropped subscription");
        let _ = recv(&mut sentinel, "sentinel").await;
    }
}

/// Bad subjects and patterns are errors naming the input, never a panic or a silent `Ok`.
pub async fn invalid_subjects_and_patterns(f: &dyn BusFactory) {
    let c = Ctx::new(f, "invalid").await;
    let p = c.prefix().to_string();
    for bad in [
        String::new(),
        format!("{p}."),
        format!(".{p}"),
        format!("{p}..x"),
        format!("{p}.a b"),
        format!("{p}.a\tb"),
        format!("{p}.*"),
        format!("{p}.>"),
        format!("{p}.x.*.y"),
        "*".to_string(),
        ">".to_string(),
    ] {
        let err = c
            .bus
            .publish(&bad, b"x".to_vec())
            .await
            .expect_err(&format!("publish to {bad:?} must fail"));
        assert_eq!(
            err.kind(),
            ErrorKind::InvalidSubject,
            "publish({bad:?}): {err}"
        );
        assert!(
            err.to_string().contains(&format!("{bad:?}")),
            "error must name {bad:?}: {err}"
        );
        let err = c
            .bus
            .publish_envelope(Envelope::new(bad.clone(), &b"x"[..]).id("i"))
            .await
            .expect_err(&format!("publish_envelope to {bad:?} must fail"));
        assert_eq!(
            err.kind(),
            ErrorKind::InvalidSubject,
            "publish_envelope({bad:?}): {err}"
        );
    }
    for bad in [
        String::new(),
        format!("{p}.>.x"),
        format!("{p}..x"),
        format!("{p}."),
        format!("{p}.a b"),
    ] {
        let err = c
            .bus
            .subscribe(&bad)
            .await
            .expect_err(&format!("subscribe to {bad:?} must fail"));
        assert_eq!(
            err.kind(),
            ErrorKind::InvalidPattern,
            "subscribe({bad:?}): {err}"
        );
        assert!(
            err.to_string().contains(&format!("{bad:?}")),
            "error must name {bad:?}: {err}"
        );
    }
}

/// Headers and a message id travel unchanged; a repeated id is a duplicate.
pub async fn headers_and_id_round_trip(f: &dyn BusFactory) {
    let c = Ctx::new(f, "headers").await;
    let mut sub = c.sub("h.>").await;
    let subject = c.subject("h.created");
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let env = Envelope::new(subject.clone(), &b"payload"[..])
        .id(format!("{}-evt-1", c.prefix()))
        .header("traceparent", tp)
        .header("Schema-Version", "3")
        .header("X-Unicode", "välue ✓");
    let ack = c
        .bus
        .publish_envelope(env.clone())
        .await
        .expect("publish_envelope");
    assert!(!ack.duplicate, "first publish of an id is not a duplicate");
    let m = recv(&mut sub, "the envelope").await;
    assert_eq!(m.id.to_string(), format!("{}-evt-1", c.prefix()));
    assert_eq!(m.headers.get("traceparent"), Some(tp));
    assert_eq!(m.headers.get("Schema-Version"), Some("3"));
    assert_eq!(m.headers.get("X-Unicode"), Some("välue ✓"));
    assert_eq!(&m.payload[..], b"payload");

    let again = c.bus.publish_envelope(env).await.expect("republish");
    if c.bus.capabilities().dedup_by_id {
        assert!(
            again.duplicate,
            "the same message id again is reported as a duplicate"
        );
    } else {
        capability_note(
            &c,
            "headers_and_id_round_trip",
            "dedup_by_id",
            "a repeated id is stored and delivered again, with duplicate: false",
        );
        assert!(!again.duplicate, "no de-dup: never reported a duplicate");
        let m = recv(&mut sub, "the repeated id, delivered again").await;
        assert_eq!(m.id.to_string(), format!("{}-evt-1", c.prefix()));
        assert_eq!(&m.payload[..], b"payload");
    }
    c.bus
        .publish_envelope(
            Envelope::new(subject.clone(), &b"next"[..]).id(format!("{}-evt-2", c.prefix())),
        )
        .await
        .expect("publish next");
    let m = recv(&mut sub, "the message after the duplicate").await;
    assert_eq!(text(&m), "next", "a duplicate must not be delivered again");

    let mut h = Headers::new();
    h.insert("bad name", "x");
    let err = c
        .bus
        .publish_envelope(Envelope::new(subject, &b"x"[..]).headers(h))
        .await
        .expect_err("a header name with a space must fail");
    assert_eq!(err.kind(), ErrorKind::InvalidHeader, "{err}");
    assert!(err.to_string().contains("bad name"), "{err}");
}

/// Batches publish in order with one result per envelope.
pub async fn batch_publish(f: &dyn BusFactory) {
    let c = Ctx::new(f, "batch").await;
    let mut sub = c.sub("b").await;
    let envs: Vec<Envelope> = (0..300)
        .map(|i| Envelope::new(c.subject("b"), i.to_string().into_bytes()))
        .chain(std::iter::once(Envelope::new(
            format!("{}.bad..subject", c.prefix()),
            &b""[..],
        )))
        .collect();
    let results = c.bus.publish_batch(envs).await;
    assert_eq!(results.len(), 301);
    assert!(
        results[..300].iter().all(|r| r.is_ok()),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    assert_eq!(
        results[300].as_ref().unwrap_err().kind(),
        ErrorKind::InvalidSubject
    );
    for i in 0..300 {
        assert_eq!(text(&recv(&mut sub, "batch message").await), i.to_string());
    }
}

/// An empty payload is a valid message.
pub async fn empty_payload(f: &dyn BusFactory) {
    let c = Ctx::new(f, "empty").await;
    let mut sub = c.sub("e").await;
    c.publish("e", Vec::new()).await;
    c.publish("e", "sentinel").await;
    let m = recv(&mut sub, "the empty message").await;
    assert!(m.payload.is_empty());
    assert_eq!(text(&recv(&mut sub, "sentinel").await), "sentinel");
}

/// A 1 MiB payload arrives intact; an oversized one is refused with the sizes named.
pub async fn large_payload(f: &dyn BusFactory) {
    let c = Ctx::new(f, "large").await;
    let mut sub = c.sub("big").await;
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    c.publish("big", payload.clone()).await;
    let m = recv(&mut sub, "the 1 MiB message").await;
    assert_eq!(m.payload.len(), payload.len());
    assert!(m.payload[..] == payload[..], "1 MiB payload corrupted");

    let huge = vec![7u8; 65 * 1024 * 1024];
    let err = c
        .bus
        .publish(&c.subject("big"), huge)
        .await
        .expect_err("a 65 MiB payload must be refused");
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge, "{err}");
    assert!(
        err.to_string().contains(&c.subject("big")),
        "error names the subject: {err}"
    );
}

/// Subjects may hold any UTF-8 except whitespace; matching is by whole token.
pub async fn unicode_subjects(f: &dyn BusFactory) {
    let c = Ctx::new(f, "unicode").await;
    let mut sub = c.sub("Ωmega.*.日本").await;
    c.publish("Ωmega.ünïcode.日本", "ok").await;
    let m = recv(&mut sub, "unicode subject").await;
    assert_eq!(m.subject, c.subject("Ωmega.ünïcode.日本"));
    let mut case = c.sub("Case").await;
    c.publish("case", "no: subjects are case-sensitive").await;
    c.publish("Case", "yes").await;
    assert_eq!(text(&recv(&mut case, "case-sensitive").await), "yes");
}

/// A fresh bus reports itself healthy.
pub async fn health(f: &dyn BusFactory) {
    let c = Ctx::new(f, "health").await;
    let report = c.bus.health().await;
    assert!(report.is_healthy(), "{report:?}");
    assert_eq!(report.backend, c.bus.backend_name());
}
