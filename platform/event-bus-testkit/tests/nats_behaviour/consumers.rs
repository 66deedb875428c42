//! Durable consumers on NATS: hand-back on drop (awaited by `flush` on its own connection only), acks confirmed by the server, answers during an outage, dead letters that cannot be published, consumer lookup.

use super::*;

/// An instance that stops consuming hands back what it fetched and did not
/// take: another instance gets those messages at once, not after their ack
/// wait (60 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_consumer_hands_back_what_it_fetched() {
    use event_bus::{ConsumerConfig, StartPosition};
    let server = NatsServer::start().await.expect("start nats-server");
    let client = async_nats::connect(server.url()).await.unwrap();
    let bus: Arc<dyn EventBus> = Arc::new(NatsBus::new(client.clone()));
    let n = 50;
    for i in 0..n {
        bus.publish("handback.job", i.to_string().into_bytes())
            .await
            .unwrap();
    }
    let config = ConsumerConfig::new("hb", "handback.>")
        .start(StartPosition::All)
        .ack_wait(Duration::from_secs(60))
        .max_ack_pending(100);
    let mut a = bus.consume(config.clone()).await.unwrap();
    let first = a.next().await.unwrap().unwrap();
    first.ack().await.unwrap();
    // Every message has been sent to this instance (fetched ahead of it).
    let js = jetstream::new(client.clone());
    wait::until_async(Duration::from_secs(10), "all messages fetched", || {
        let js = js.clone();
        async move {
            let stream = js.get_stream("BUS_HANDBACK").await.unwrap();
            let mut consumer: jetstream::consumer::PullConsumer =
                stream.get_consumer("hb").await.unwrap();
            let info = consumer.info().await.unwrap();
            info.num_pending == 0 && info.num_ack_pending == n - 1
        }
    })
    .await;
    drop(a);
    let mut b = bus.consume(config).await.unwrap();
    let started = Instant::now();
    let mut got = std::collections::HashSet::new();
    while got.len() < n - 1 {
        let d = tokio::time::timeout(Duration::from_secs(10), b.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "handed back at once, not after the 60 s ack wait: {} of {} came back",
                    got.len(),
                    n - 1
                )
            })
            .unwrap()
            .unwrap();
        got.insert(d.message().payload.to_vec());
        d.ack().await.unwrap();
    }
    assert!(
        !got.contains(b"0".as_slice()),
        "the acked message stays acked"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// `flush` waits for its own connection's hand-backs only: connection B's
/// consumer is dropped while messages keep arriving, so its pump goes on
/// handing back what reaches it (until a handed-back message comes round
/// again, after `HAND_BACK_DELAY`), and `flush` on connection A, to the same
/// server, returns meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_does_not_wait_for_another_connections_hand_backs() {
    use event_bus::{ConsumerConfig, StartPosition};
    let server = NatsServer::start().await.expect("start nats-server");
    let a = server.bus(&[]).await.expect("connection A");
    let b = server.bus(&[]).await.expect("connection B");
    b.publish("busy.job", b"first".to_vec()).await.unwrap();
    let mut consumer = b
        .consume(
            ConsumerConfig::new("busy", "busy.>")
                .start(StartPosition::All)
                .ack_wait(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .unwrap()
        .unwrap();
    first.ack().await.unwrap();
    // A third connection keeps messages coming (core publishes, stored by
    // the stream), every one of them to B's pull.
    let feeder = async_nats::connect(server.url()).await.unwrap();
    let feeding = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(2));
        loop {
            every.tick().await;
            feeder.publish("busy.job", "more".into()).await.unwrap();
        }
    });
    wait::until_async(Duration::from_secs(10), "B's pull receiving", || {
        let js = jetstream::new(a.client().clone());
        async move {
            let mut c: jetstream::consumer::PullConsumer = js
                .get_stream("BUS_BUSY")
                .await
                .unwrap()
                .get_consumer("busy")
                .await
                .unwrap();
            c.info().await.unwrap().num_ack_pending > 10
        }
    })
    .await;

    drop(consumer); // B's hand-back starts
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), a.flush())
        .await
        .expect("A's flush within 10 s")
        .expect("A's flush");
    let a_took = started.elapsed();
    tokio::time::timeout(Duration::from_secs(10), b.flush())
        .await
        .expect("B's flush within 10 s")
        .expect("B's flush");
    let b_took = started.elapsed();
    feeding.abort();
    assert!(
        b_took >= Duration::from_millis(500),
        "B's hand-back runs until a handed-back message comes round again (1 s): B's flush took {b_took:?}"
    );
    assert!(
        a_took * 2 < b_took,
        "A's flush does not wait for B's hand-back: it took {a_took:?} (B's: {b_took:?})"
    );
}

/// How a consumer in [`ack_and_exit`] answers.
#[derive(Clone, Copy, Debug)]
enum AckMode {
    /// `Delivery::ack().await` each, then exit.
    Confirmed,
    /// `Delivery::ack_nowait().await` each, then `NatsBus::flush`, then exit.
    NowaitThenFlush,
}

/// Consumes and acks `n` deliveries in a runtime of its own on its own
/// thread, then drops that runtime at once (like a process that exits after
/// its last ack returned): nothing left in the client is sent afterwards.
async fn ack_and_exit(
    url: String,
    name: &'static str,
    filter: &'static str,
    n: usize,
    mode: AckMode,
) {
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use event_bus::{ConsumerConfig, StartPosition};
            let client = async_nats::connect(url).await.unwrap();
            // Through the trait, as a service holds it: `flush` included.
            let bus: Arc<dyn EventBus> = Arc::new(NatsBus::new(client));
            let mut consumer = bus
                .consume(
                    ConsumerConfig::new(name, filter)
                        .start(StartPosition::All)
                        .ack_wait(Duration::from_secs(60)),
                )
                .await
                .unwrap();
            for _ in 0..n {
                let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                    .await
                    .expect("a delivery within 10 s")
                    .unwrap()
                    .unwrap();
                match mode {
                    AckMode::Confirmed => d.ack().await.expect("ack"),
                    AckMode::NowaitThenFlush => d.ack_nowait().await.expect("ack_nowait"),
                }
            }
            if let AckMode::NowaitThenFlush = mode {
                drop(consumer);
                bus.flush().await.expect("flush");
            }
        });
        drop(rt); // the "process" exits
    })
    .await
    .unwrap();
}

/// The server-side state of durable consumer `name` on `stream`.
async fn consumer_info(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
) -> jetstream::consumer::Info {
    let stream = js.get_stream(stream).await.unwrap();
    let mut consumer: jetstream::consumer::PullConsumer = stream.get_consumer(name).await.unwrap();
    consumer.info().await.unwrap().clone()
}

/// `Delivery::ack` returns `Ok` only once the server has the ack: a consumer
/// that acks and exits at once leaves nothing unacknowledged on the server
/// (with fire-and-forget acks, those still queued in the client were lost
/// and the events came back after a restart). The same holds for
/// `ack_nowait` followed by `NatsBus::flush`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_are_on_the_server_when_they_return() {
    let server = NatsServer::start().await.expect("start nats-server");
    let client = async_nats::connect(server.url()).await.unwrap();
    let bus = NatsBus::new(client.clone());
    let js = jetstream::new(client);
    let n = 300;
    for i in 0..n {
        bus.publish("ackexit.job", i.to_string().into_bytes())
            .await
            .unwrap();
    }
    for (name, mode) in [
        ("confirmed", AckMode::Confirmed),
        ("nowait-flush", AckMode::NowaitThenFlush),
    ] {
        ack_and_exit(server.url(), name, "ackexit.>", n, mode).await;
        if let AckMode::NowaitThenFlush = mode {
            // A flush means the server received the acks; it processes
            // them right after.
            wait::until_async(Duration::from_secs(5), "the flushed acks processed", || {
                let js = js.clone();
                async move {
                    consumer_info(&js, "BUS_ACKEXIT", name)
                        .await
                        .num_ack_pending
                        == 0
                }
            })
            .await;
        }
        // A confirmed ack has been processed by the server: checked at once.
        let info = consumer_info(&js, "BUS_ACKEXIT", name).await;
        assert_eq!(
            (info.num_ack_pending, info.ack_floor.stream_sequence),
            (0, n as u64),
            "{mode:?}: every ack returned Ok, so the server must have all {n} ({info:?})"
        );
    }
}

/// Every answer is bounded in time: with the server gone, `ack`, `nack`,
/// `in_progress` and `term` fail within the publish timeout (never `Ok` for
/// an answer the server did not get, never a hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_during_an_outage_fail_within_the_publish_timeout() {
    use event_bus::{ConsumerConfig, StartPosition};
    let mut server = NatsServer::start().await.expect("start nats-server");
    let client = async_nats::connect(server.url()).await.unwrap();
    let bus = NatsBus::builder(client)
        .publish_timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    for i in 0..4 {
        bus.publish("ackdown.job", i.to_string().into_bytes())
            .await
            .unwrap();
    }
    let mut consumer = bus
        .consume(ConsumerConfig::new("down", "ackdown.>").start(StartPosition::All))
        .await
        .unwrap();
    let mut ds = Vec::new();
    for _ in 0..4 {
        ds.push(consumer.next().await.unwrap().unwrap());
    }
    server.kill();
    let bounded = |took: Duration, what: &str| {
        assert!(
            took < Duration::from_secs(3),
            "{what} took {took:?} with an 800 ms bound"
        )
    };
    let d = ds.pop().unwrap();
    let started = Instant::now();
    let err = d
        .in_progress()
        .await
        .expect_err("in_progress with the server down");
    bounded(started.elapsed(), "in_progress");
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Unavailable),
        "{err}"
    );
    let started = Instant::now();
    let err = d
        .ack()
        .await
        .expect_err("ack with the server down must not be Ok");
    bounded(started.elapsed(), "ack");
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Unavailable),
        "{err}"
    );
    assert!(err.to_string().contains("ack"), "{err}");
    let started = Instant::now();
    let err = ds.pop().unwrap().nack(None).await.expect_err("nack");
    bounded(started.elapsed(), "nack");
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Unavailable),
        "{err}"
    );
    let started = Instant::now();
    let err = ds.pop().unwrap().term(None).await.expect_err("term");
    bounded(started.elapsed(), "term");
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Unavailable),
        "{err}"
    );
    let started = Instant::now();
    let err = bus.flush().await.expect_err("flush with the server down");
    bounded(started.elapsed(), "flush");
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Unavailable),
        "{err}"
    );
}

/// A dead letter that cannot be published (no stream stores the dead-letter
/// subject and the bus may not create one) never loses the message: the
/// failure is an error item each time, the message stays pending (the server
/// keeps delivering it: with `max_deliver + 3` it stopped after the 4th
/// delivery and stranded it), and once a stream stores the subject the
/// message is dead-lettered and terminated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_dead_letter_publish_keeps_the_message_until_it_succeeds() {
    use event_bus::dlq;
    use event_bus::ConsumerConfig;
    let server = NatsServer::start().await.expect("start nats-server");
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let bus = NatsBus::builder(client)
        .auto_create_streams(false)
        .build()
        .unwrap();
    NatsBus::new(js.client())
        .ensure_streams(&[StreamSpec::new("JOBS", ["jobs.>"])])
        .await
        .unwrap();
    let mut consumer = bus
        .consume(
            ConsumerConfig::new("stuck", "jobs.>")
                .max_deliver(1)
                .ack_wait(Duration::from_secs(30))
                .dead_letter_subject(Some("nodlq.stuck".into())),
        )
        .await
        .unwrap();
    bus.publish("jobs.a", b"poison".to_vec()).await.unwrap();
    let d = consumer.next().await.unwrap().unwrap();
    let err = d
        .nack_with_reason(None, "cannot decode")
        .await
        .expect_err("no stream stores the dead-letter subject");
    assert!(err.to_string().contains("nodlq.stuck"), "{err}");
    // Four more failed attempts: beyond the old server-side limit of
    // max_deliver + 3 deliveries.
    for attempt in 2..=5 {
        let item = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .unwrap_or_else(|_| {
                panic!("dead-lettering attempt {attempt}: the message is still delivered")
            })
            .expect("the consumer stream stays open");
        let err = item
            .expect_err("the failed dead-lettering is an error item, the handler never sees it");
        assert!(err.to_string().contains("nodlq.stuck"), "{err}");
    }
    // Now a stream stores dead letters: the next attempt succeeds.
    NatsBus::new(js.client())
        .ensure_streams(&[StreamSpec::new("NODLQ", ["nodlq.>"])])
        .await
        .unwrap();
    let poll = async {
        loop {
            match consumer.next().await {
                Some(Ok(d)) => panic!("the handler must not see the message again: {d:?}"),
                Some(Err(_)) => continue,
                None => panic!("the consumer stream ended"),
            }
        }
    };
    let stored = wait::until_async(Duration::from_secs(30), "the dead letter stored", || {
        let js = js.clone();
        async move {
            let mut stream = js.get_stream("NODLQ").await.unwrap();
            stream.info().await.unwrap().state.messages == 1
        }
    });
    tokio::select! {
        _ = poll => unreachable!(),
        _ = stored => {}
    }
    let dead = js
        .get_stream("NODLQ")
        .await
        .unwrap()
        .get_last_raw_message_by_subject("nodlq.stuck")
        .await
        .unwrap();
    let headers = dead.headers;
    assert_eq!(
        headers.get(dlq::LAST_ERROR).map(|v| v.as_str()),
        Some("cannot decode")
    );
    assert_eq!(&dead.payload[..], b"poison");
    // Terminated after the dead letter: nothing left for the consumer.
    let info = consumer_info(&js, "JOBS", "stuck").await;
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0), "{info:?}");
}

const NO_CONSUMER_INFO: &str = r#"
authorization {
  users: [
    { user: admin, password: pw }
    { user: noinfo, password: pw, permissions: { publish: { allow: [">"], deny: ["$JS.API.CONSUMER.INFO.>"] } } }
  ]
}
"#;

/// When looking up an existing durable consumer fails for another reason
/// than "it does not exist" (here: the lookup is not permitted, so it times
/// out), `consume` is an error; it used to create the consumer anyway,
/// which silently re-pointed the existing one to the new filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_lookup_failure_never_repoints_an_existing_consumer() {
    use event_bus::ConsumerConfig;
    let server =
        NatsServer::start_with(NatsServerOptions::default().extra_config(NO_CONSUMER_INFO))
            .await
            .unwrap();
    let mut config = nats_config(&server.url(), Some(("admin", "pw")));
    config.publish_timeout = Duration::from_secs(1);
    let admin = NatsBus::connect(&config).await.unwrap();
    admin.publish("lookup.a", b"x".to_vec()).await.unwrap();
    drop(
        admin
            .consume(ConsumerConfig::new("shared", "lookup.a"))
            .await
            .unwrap(),
    );
    config.user = Some("noinfo".into());
    let limited = NatsBus::connect(&config).await.unwrap();
    let err = limited
        // The denied lookup times out, which is retried as transient: bound it.
        .consume(ConsumerConfig::new("shared", "lookup.b").open_timeout(Duration::from_secs(2)))
        .await
        .err()
        .expect("the lookup failed: no consumer is created or changed");
    assert!(err.to_string().contains("shared"), "{err}");
    let stream = admin
        .jetstream()
        .get_stream(admin.default_stream_name("lookup"))
        .await
        .unwrap();
    let info = stream.consumer_info("shared").await.unwrap();
    assert_eq!(
        info.config.filter_subject, "lookup.a",
        "re-pointed: {info:?}"
    );
}
