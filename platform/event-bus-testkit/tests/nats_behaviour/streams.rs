//! Streams: declared streams, default streams followed by wildcard subscriptions, streams deleted and re-created, stream lookup.

use super::*;

/// Declared streams are created, left alone, updated with drift reported, and
/// refused changes are a Conflict naming the stream and the fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_streams_are_reconciled() {
    let server = NatsServer::start().await.unwrap();
    let bus = server.bus(&[]).await.unwrap();
    let spec = StreamSpec::new("ORDERS", ["orders.>"]).max_age(Duration::from_secs(3600));
    let r = bus
        .ensure_streams(std::slice::from_ref(&spec))
        .await
        .unwrap();
    assert_eq!(r[0].action, StreamAction::Created);
    let r = bus
        .ensure_streams(std::slice::from_ref(&spec))
        .await
        .unwrap();
    assert_eq!(
        r[0].action,
        StreamAction::Unchanged,
        "applying the same declaration is a no-op"
    );

    let changed = spec
        .clone()
        .max_age(Duration::from_secs(600))
        .max_messages(1000);
    let r = bus.ensure_streams(&[changed]).await.unwrap();
    match &r[0].action {
        StreamAction::Updated(drift) => {
            assert!(drift.iter().any(|d| d.starts_with("max_age")), "{drift:?}");
            assert!(
                drift.iter().any(|d| d.starts_with("max_messages")),
                "{drift:?}"
            );
        }
        other => panic!("expected Updated, got {other:?}"),
    }
    let info = bus
        .jetstream()
        .get_stream("ORDERS")
        .await
        .unwrap()
        .cached_info()
        .clone();
    assert_eq!(info.config.max_age, Duration::from_secs(600));

    let storage_change = spec.clone().storage(StreamStorage::Memory);
    let err = bus.ensure_streams(&[storage_change]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(
        err.to_string().contains("ORDERS") && err.to_string().contains("storage"),
        "{err}"
    );

    let overlapping = StreamSpec::new("ORDERS_EU", ["orders.eu.>"]);
    let err = bus.ensure_streams(&[overlapping]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("overlap"), "{err}");

    let bad = StreamSpec::new("bad.name", ["x.>"]);
    let err = bus.ensure_streams(&[bad]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("bad.name"), "{err}");

    // A publish into the declared stream's subjects uses it (no default stream).
    let mut sub = bus.subscribe("orders.>").await.unwrap();
    let ack = bus
        .publish_envelope(Envelope::new("orders.created", &b"x"[..]))
        .await
        .unwrap();
    assert_eq!(ack.stream.as_deref(), Some("ORDERS"));
    assert_eq!(next_text(&mut sub).await, "x");
}

/// Declared streams and every NATS setting come from a config file; the same
/// code path as the in-memory bus (`event_bus::connect`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_builds_a_nats_bus_with_declared_streams() {
    let server = NatsServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bus.toml");
    std::fs::write(
        &path,
        format!(
            r#"
type = "nats"
[nats]
urls = ["{}"]
publish_timeout = "3s"
connect_timeout = "2s"
[[nats.streams]]
name = "PAYMENTS"
subjects = ["payments.>"]
storage = "memory"
max_age = "1h"
duplicate_window = "30s"
"#,
            server.url()
        ),
    )
    .unwrap();
    let config = BusConfig::from_file(&path).unwrap();
    let bus: Arc<dyn EventBus> = event_bus::connect(&config).await.unwrap();
    assert_eq!(bus.backend_name(), "nats");
    let health = bus.health().await;
    assert!(health.is_healthy(), "{health:?}");
    assert!(health.detail.contains("2."), "{health:?}");
    let mut sub = bus.subscribe("payments.*").await.unwrap();
    let ack = bus
        .publish_envelope(Envelope::new("payments.settled", &b"ok"[..]).id("pay-1"))
        .await
        .unwrap();
    assert_eq!(ack.stream.as_deref(), Some("PAYMENTS"));
    assert_eq!(next_text(&mut sub).await, "ok");

    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let info = js
        .get_stream("PAYMENTS")
        .await
        .unwrap()
        .cached_info()
        .clone();
    assert_eq!(info.config.duplicate_window, Duration::from_secs(30));
    assert_eq!(info.config.storage, jetstream::stream::StorageType::Memory);
}

/// A subscription whose first token is a wildcard also sees streams created
/// after it was made (each read from its start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_first_token_follows_new_streams() {
    let server = NatsServer::start().await.unwrap();
    let bus = server.bus(&[]).await.unwrap();
    bus.publish("old.events.x", b"before".to_vec())
        .await
        .unwrap();
    let mut all = bus.subscribe(">").await.unwrap();
    let mut events = bus.subscribe("*.events.created").await.unwrap();
    bus.publish("old.events.created", b"on an old stream".to_vec())
        .await
        .unwrap();
    bus.publish("fresh.events.created", b"on a new stream".to_vec())
        .await
        .unwrap();
    let mut got = vec![next_text(&mut events).await, next_text(&mut events).await];
    got.sort();
    assert_eq!(got, ["on a new stream", "on an old stream"]);
    let mut got = vec![next_text(&mut all).await, next_text(&mut all).await];
    got.sort();
    assert_eq!(
        got,
        ["on a new stream", "on an old stream"],
        "`>` never sees what was stored before it"
    );
}

/// A `>` subscription never reads key-value buckets (streams over `$KV.>`),
/// neither those that exist when it subscribes nor those created later:
/// subjects in the server's namespaces reach no subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_subscriptions_never_read_key_value_buckets() {
    use async_nats::jetstream::kv;
    let server = NatsServer::start().await.unwrap();
    let bus = server.bus(&[]).await.unwrap();
    let js = bus.jetstream().clone();
    let before = js
        .create_key_value(kv::Config {
            bucket: "sessions".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    bus.publish("plain.x", b"old".to_vec()).await.unwrap();
    let mut all = bus.subscribe(">").await.unwrap();
    before.put("admin", "secret-1".into()).await.unwrap();
    let after = js
        .create_key_value(kv::Config {
            bucket: "tokens".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    after.put("admin", "secret-2".into()).await.unwrap();
    // A new plain stream, created after the bucket: once `>` sees it, a
    // rescan has passed over the bucket too.
    bus.publish("later.x", b"first sentinel".to_vec())
        .await
        .unwrap();
    assert_eq!(next_text(&mut all).await, "first sentinel");
    before.put("admin", "secret-3".into()).await.unwrap();
    after.put("admin", "secret-4".into()).await.unwrap();
    bus.publish("later.x", b"second sentinel".to_vec())
        .await
        .unwrap();
    assert_eq!(next_text(&mut all).await, "second sentinel");
}

/// Bus-assigned ids are unique across incarnations of a stream: after
/// `BUS_REBORN` is deleted and created again, its sequences start at 1
/// again, but the new messages get new ids, so an idempotency inbox that
/// committed the old ones does not take the new events for duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigned_ids_are_unique_across_stream_incarnations() {
    use event_bus::runner::{Inbox, MemoryInbox};
    let server = NatsServer::start().await.unwrap();
    let inbox = MemoryInbox::default();
    let mut incarnations = Vec::new();
    for round in 0..2 {
        // A fresh bus each round: its cache of known streams is empty.
        let bus = server.bus(&[]).await.unwrap();
        let mut sub = bus.subscribe("reborn.>").await.unwrap();
        for i in 0..5 {
            bus.publish("reborn.x", format!("{round}-{i}").into_bytes())
                .await
                .unwrap();
        }
        let mut ids = Vec::new();
        for i in 0..5 {
            let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(m.sequence, i + 1, "each incarnation starts at sequence 1");
            let tx = inbox
                .begin("handler", &m.id)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("round {round}: {} taken for a duplicate", m.id));
            inbox.commit(tx).await.unwrap();
            ids.push(m.id.to_string());
        }
        incarnations.push(ids);
        bus.jetstream().delete_stream("BUS_REBORN").await.unwrap();
    }
    assert!(
        incarnations[0]
            .iter()
            .all(|id| !incarnations[1].contains(id)),
        "{incarnations:?}"
    );
}

/// A stream deleted under a live subscription and created again by the
/// bus's next publish: the publish succeeds (the bus forgets the stream it
/// knew and creates it again) and the subscription follows the new stream
/// from its start (not from the old sequence, which skipped everything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_follows_a_deleted_and_recreated_stream() {
    let server = NatsServer::start().await.expect("start nats-server");
    let client = async_nats::connect(server.url()).await.unwrap();
    let bus = NatsBus::new(client);
    let mut sub = bus.subscribe("reinc.>").await.unwrap();
    for i in 0..100 {
        bus.publish("reinc.a", format!("old-{i}").into_bytes())
            .await
            .unwrap();
    }
    for i in 0..100 {
        assert_eq!(next_text(&mut sub).await, format!("old-{i}"));
    }
    bus.jetstream()
        .delete_stream(bus.default_stream_name("reinc"))
        .await
        .unwrap();
    for i in 0..50 {
        bus.publish("reinc.a", format!("new-{i}").into_bytes())
            .await
            .unwrap_or_else(|e| panic!("publish {i} after the stream was deleted: {e}"));
    }
    for i in 0..50 {
        assert_eq!(next_text(&mut sub).await, format!("new-{i}"));
    }
    // The same through publish_envelope and publish_batch.
    bus.jetstream()
        .delete_stream(bus.default_stream_name("reinc"))
        .await
        .unwrap();
    bus.publish_envelope(Envelope::new("reinc.b", b"envelope".to_vec()))
        .await
        .unwrap();
    assert_eq!(next_text(&mut sub).await, "envelope");
    bus.jetstream()
        .delete_stream(bus.default_stream_name("reinc"))
        .await
        .unwrap();
    let acks = bus
        .publish_batch(vec![
            Envelope::new("reinc.c", b"batch-0".to_vec()),
            Envelope::new("reinc.c", b"batch-1".to_vec()),
        ])
        .await;
    assert!(acks.iter().all(|a| a.is_ok()), "{acks:?}");
    assert_eq!(next_text(&mut sub).await, "batch-0");
    assert_eq!(next_text(&mut sub).await, "batch-1");
}

/// A durable consumer whose stream is deleted and created again: the bus
/// makes the consumer again (it owns it), reports the reset as an error
/// item, and delivers the new stream's events. Likewise when only the
/// consumer is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_consumer_is_made_again_after_a_delete() {
    use event_bus::{ConsumerConfig, ConsumerStream, StartPosition};
    let server = NatsServer::start().await.expect("start nats-server");
    let client = async_nats::connect(server.url()).await.unwrap();
    let bus = NatsBus::new(client);
    bus.publish("redur.a", b"first".to_vec()).await.unwrap();
    let mut consumer = bus
        .consume(ConsumerConfig::new("survivor", "redur.>").start(StartPosition::All))
        .await
        .unwrap();
    // Reads until every one of `want` arrived; returns the error items seen.
    async fn read(consumer: &mut ConsumerStream, want: &[String]) -> Vec<event_bus::BusError> {
        let mut errors = Vec::new();
        let mut missing: std::collections::HashSet<&String> = want.iter().collect();
        while !missing.is_empty() {
            let item = tokio::time::timeout(Duration::from_secs(30), consumer.next())
                .await
                .unwrap_or_else(|_| panic!("still missing {missing:?}; errors {errors:?}"))
                .expect("the consumer stream stays open");
            match item {
                Ok(d) => {
                    missing.remove(&String::from_utf8(d.payload.to_vec()).unwrap());
                    d.ack().await.unwrap();
                }
                Err(e) => errors.push(e),
            }
        }
        errors
    }
    let errors = read(&mut consumer, &["first".to_string()]).await;
    assert!(errors.is_empty(), "{errors:?}");
    let stream = bus.default_stream_name("redur");
    bus.jetstream().delete_stream(&stream).await.unwrap();
    // While the stream is gone, the consumer says so (once).
    let gone = tokio::time::timeout(Duration::from_secs(15), consumer.next())
        .await
        .expect("the deleted stream is reported")
        .expect("the consumer stream stays open")
        .expect_err("an error item, no delivery");
    assert_eq!(gone.kind(), ErrorKind::NotFound, "{gone}");
    assert!(gone.to_string().contains("does not exist"), "{gone}");
    let new: Vec<String> = (0..20).map(|i| format!("new-{i}")).collect();
    for text in &new {
        bus.publish("redur.a", text.clone().into_bytes())
            .await
            .unwrap();
    }
    let errors = read(&mut consumer, &new).await;
    assert!(
        errors.iter().any(|e| e.kind() == ErrorKind::NotFound
            && e.to_string().contains("survivor")
            && e.to_string().contains("created again")),
        "the reset is reported: {errors:?}"
    );
    // Only the consumer deleted (the stream stays).
    bus.jetstream()
        .get_stream(&stream)
        .await
        .unwrap()
        .delete_consumer("survivor")
        .await
        .unwrap();
    bus.publish("redur.a", b"after".to_vec()).await.unwrap();
    let errors = read(&mut consumer, &["after".to_string()]).await;
    assert!(
        errors
            .iter()
            .any(|e| e.kind() == ErrorKind::NotFound && e.to_string().contains("was deleted")),
        "the reset is reported: {errors:?}"
    );
}

/// The server lists stream names 1024 a page: a pattern that matches more
/// streams finds those on later pages too (it used to read the first page
/// only). Shown by a durable consumer whose filter spans every stream: the
/// error names them all, the one sorted last included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_lookup_reads_every_page_of_names() {
    use event_bus::ConsumerConfig;
    let server = NatsServer::start().await.expect("start nats-server");
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let create = |name: String, subject: String| {
        let js = js.clone();
        async move {
            js.create_stream(jetstream::stream::Config {
                name,
                subjects: vec![subject],
                storage: jetstream::stream::StorageType::Memory,
                ..Default::default()
            })
            .await
            .map(|_| ())
        }
    };
    let n = 1100;
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        futures::future::try_join_all(
            chunk
                .iter()
                .map(|i| create(format!("AAA_{i:05}"), format!("pg{i}.x"))),
        )
        .await
        .unwrap();
    }
    create("ZZZ_LAST".into(), "pgz.x".into()).await.unwrap();
    let bus = NatsBus::new(client);
    let err = bus
        .consume(ConsumerConfig::new("paged", "*.x"))
        .await
        .err()
        .expect("a filter over many streams is refused");
    let text = err.to_string();
    assert!(text.contains("spans several streams"), "{}", &text[..300]);
    assert!(
        text.contains("ZZZ_LAST") && text.contains("AAA_01099"),
        "the names past the first page are found"
    );
    assert_eq!(text.matches("AAA_").count(), n, "every stream, once");
}
