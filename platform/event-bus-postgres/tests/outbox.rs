//! The transactional outbox against a real PostgreSQL (`DATABASE_URL`, else a
//! throwaway server) and, where a test says so, a real nats-server: rows
//! commit with the business transaction and are published once, a row that
//! commits late is never skipped, rolled-back rows never leave, refused rows
//! go to the failure table, several relays hand over, the bus going away
//! only delays.

use event_bus::nats::StreamSpec;
use event_bus::{
    BusMessage, ConsumerConfig, Envelope, ErrorKind, EventBus, EventBusExt, InMemoryBus,
    StartPosition,
};
use event_bus_postgres::outbox::FailedEvent;
use event_bus_postgres::{sqlx, Outbox, OutboxRelay};
use event_bus_testkit::nats_server::NatsServer;
use event_bus_testkit::postgres::TestPostgres;
use event_bus_testkit::wait;
use futures::StreamExt;
use sqlx::postgres::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
mod common;

async fn pg() -> (TestPostgres, PgPool) {
    common::postgres(16).await
}

async fn outbox(pool: &PgPool) -> Outbox {
    let outbox = Outbox::new(pool.clone());
    outbox.migrate().await.expect("create the outbox tables");
    outbox
}

/// A NatsBus on a fresh server with one stream over `out.>` (JetStream's
/// default two-minute duplicate window).
async fn nats() -> (NatsServer, Arc<dyn EventBus>) {
    let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let bus = server
        .bus(&[StreamSpec::new("OUT", ["out.>"])])
        .await
        .unwrap();
    (server, Arc::new(bus))
}

fn relay(
    outbox: &Outbox,
    bus: &Arc<dyn EventBus>,
) -> event_bus_postgres::outbox::OutboxRelayBuilder {
    OutboxRelay::builder(outbox.clone(), bus.clone())
        .lease(Duration::from_secs(3))
        .publish_timeout(Duration::from_secs(1))
        .backoff(Duration::from_millis(20), Duration::from_millis(500))
}

async fn enqueue_one(outbox: &Outbox, pool: &PgPool, subject: &str, body: &str) -> String {
    let mut tx = pool.begin().await.unwrap();
    let id = outbox
        .enqueue(&mut tx, Envelope::new(subject, body.as_bytes().to_vec()))
        .await
        .unwrap();
    outbox.commit(tx).await.unwrap();
    id.to_string()
}

/// Reads every message of the stream from its start (a fresh durable
/// consumer), acking each: `(subject, id, payload)` in stream order.
async fn stream_contents(bus: &Arc<dyn EventBus>, pattern: &str, n: usize) -> Vec<BusMessage> {
    let name = format!("check-{}", uuid_like());
    let mut stream = bus
        .consume(
            ConsumerConfig::new(name, pattern)
                .start(StartPosition::All)
                .max_ack_pending(10_000),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(20), stream.next()).await {
            Ok(Some(Ok(d))) => {
                out.push(d.message().clone());
                d.ack_nowait().await.unwrap();
            }
            Ok(other) => panic!(
                "consumer ended after {} of {n}: {:?}",
                out.len(),
                other.map(|r| r.err())
            ),
            Err(_) => panic!("only {} of {n} events in the stream after 20 s", out.len()),
        }
    }
    // Nothing more arrives.
    if let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
        panic!(
            "more than {n} events in the stream: an extra {:?} ({})",
            d.message().subject,
            d.message().id
        );
    }
    out
}

/// Each subject's payloads (numbers) are increasing in `messages`' order.
fn assert_in_order_per_subject(messages: &[BusMessage]) {
    let mut per_key: HashMap<String, Vec<u32>> = HashMap::new();
    for m in messages {
        let n: u32 = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
        per_key.entry(m.subject.to_string()).or_default().push(n);
    }
    for (key, ns) in per_key {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "{key} out of order: {ns:?}"
        );
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Commit publishes (with the id and headers enqueued), rollback publishes
/// nothing; the returned id is the message id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_rows_are_published_rolled_back_rows_never() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let mut events = bus.subscribe("out.>").await.unwrap();
    let relay = relay(&outbox, &bus).build().unwrap().spawn();

    let mut tx = pool.begin().await.unwrap();
    outbox
        .enqueue(&mut tx, Envelope::new("out.rolled-back", b"no".to_vec()))
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    let id = outbox
        .enqueue(
            &mut tx,
            Envelope::new("out.kept", b"yes".to_vec()).headers({
                let mut h = event_bus::Headers::new();
                h.append("Trace-Id", "t-1").append("Trace-Id", "t-2");
                h
            }),
        )
        .await
        .unwrap();
    let given = outbox
        .enqueue(
            &mut tx,
            Envelope::new("out.kept", b"given".to_vec()).id("order-7"),
        )
        .await
        .unwrap();
    outbox.commit(tx).await.unwrap();
    assert_eq!(given.to_string(), "order-7");
    assert!(uuid::Uuid::parse_str(&id.to_string()).is_ok(), "{id}");

    let first = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("published")
        .unwrap();
    assert_eq!(first.subject.as_str(), "out.kept");
    assert_eq!(first.payload.as_ref(), b"yes");
    assert_eq!(first.id.to_string(), id.to_string());
    assert_eq!(
        first.headers.get_all("Trace-Id").collect::<Vec<_>>(),
        ["t-1", "t-2"]
    );
    let second = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("published")
        .unwrap();
    assert_eq!(second.id.to_string(), "order-7");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.next())
            .await
            .is_err(),
        "the rolled-back row was published"
    );
    let report = relay.shutdown().await;
    assert_eq!(report.published, 2, "{report:?}");
    let status = outbox.status().await.unwrap();
    assert_eq!((status.pending, status.failed), (0, 0), "{status:?}");
}

/// The race that loses events with serial offsets: T1 inserts first, T2
/// inserts and commits, the relay reads, T1 commits. Both are published, in
/// T1, T2 order; while T1 runs, the status names its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_commits_late_is_not_skipped() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let mut events = bus.subscribe("out.>").await.unwrap();
    let relay = relay(&outbox, &bus)
        .poll_interval(Duration::from_millis(10))
        .build()
        .unwrap()
        .spawn();

    let mut t1 = pool.begin().await.unwrap();
    let (t1_pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
        .fetch_one(&mut *t1)
        .await
        .unwrap();
    outbox
        .enqueue(&mut t1, Envelope::new("out.race", b"t1".to_vec()))
        .await
        .unwrap();
    let mut t2 = pool.begin().await.unwrap();
    outbox
        .enqueue(&mut t2, Envelope::new("out.race", b"t2".to_vec()))
        .await
        .unwrap();
    outbox.commit(t2).await.unwrap();

    // The relay reads (several times) while T1 is open: T2's row is
    // committed but held back behind T1.
    let reads = relay.report().reads;
    wait::until(
        Duration::from_secs(10),
        "the relay to read twice after T2 committed",
        || relay.report().reads >= reads + 2,
    )
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(100), events.next())
            .await
            .is_err(),
        "T2's row was published while T1's earlier row was not committed"
    );
    let status = outbox.status().await.unwrap();
    assert_eq!((status.pending, status.held_back), (1, 1), "{status:?}");
    let holder = status
        .held_by
        .expect("the status names the session holding delivery back");
    assert_eq!(holder.pid, t1_pid, "{holder:?}");
    assert_eq!(holder.state.as_deref(), Some("idle in transaction"));

    outbox.commit(t1).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("both published once T1 commits")
            .unwrap();
        got.push(String::from_utf8(m.payload.to_vec()).unwrap());
    }
    assert_eq!(got, ["t1", "t2"]);
    assert_eq!(relay.shutdown().await.published, 2);
}

/// Bad input fails in the caller's transaction, before anything is
/// written, with an error naming it; the transaction stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_commit() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await.max_payload(1000);
    let mut tx = pool.begin().await.unwrap();
    let cases: Vec<(Envelope, ErrorKind, &str)> = vec![
        (
            Envelope::new("out..bad", b"x".to_vec()),
            ErrorKind::InvalidSubject,
            "out..bad",
        ),
        (
            Envelope::new("out.*", b"x".to_vec()),
            ErrorKind::InvalidSubject,
            "out.*",
        ),
        (
            Envelope::new("$JS.API.STREAM.DELETE.OUT", b"x".to_vec()),
            ErrorKind::InvalidSubject,
            "$JS.API",
        ),
        (
            Envelope::new("out.big", vec![0u8; 1001]),
            ErrorKind::PayloadTooLarge,
            "1000 bytes",
        ),
        (
            Envelope::new("out.id", b"x".to_vec()).id("bad\r\nid"),
            ErrorKind::InvalidHeader,
            "id",
        ),
        (
            Envelope::new("out.h", b"x".to_vec()).header("Bad Name", "v"),
            ErrorKind::InvalidHeader,
            "Bad Name",
        ),
    ];
    for (envelope, kind, named) in cases {
        let subject = envelope.subject.clone();
        let e = outbox.enqueue(&mut tx, envelope).await.unwrap_err();
        assert_eq!(e.kind(), kind, "{subject}: {e}");
        assert!(
            e.to_string().contains(named),
            "{subject}: {e} does not name {named:?}"
        );
    }
    for (key, envelope) in [
        ("k\0", Envelope::new("out.nul", b"x".to_vec())),
        (
            "k",
            Envelope::new("out.nul", b"x".to_vec()).header("H", "a\0b"),
        ),
    ] {
        let e = outbox
            .enqueue_with_key(&mut tx, key, envelope)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("NUL"), "{e}");
    }
    let e = outbox
        .enqueue_with_key(&mut tx, "", Envelope::new("out.key", b"x".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("ordering key"), "{e}");
    // The transaction is still usable, and nothing was written.
    outbox
        .enqueue(&mut tx, Envelope::new("out.ok", b"x".to_vec()))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(outbox.status().await.unwrap().pending, 1);
    // Table names are checked.
    for bad in ["", "a;drop table x", "a.b.c", &"t".repeat(49)] {
        let e = Outbox::with_table(pool.clone(), bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{bad:?}: {e}");
    }
    // Relay settings are checked, the lease against the duplicate window;
    // the defaults pass.
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    OutboxRelay::builder(outbox.clone(), bus.clone())
        .build()
        .expect("the default settings are valid");
    let e = OutboxRelay::builder(outbox.clone(), bus.clone())
        .lease(Duration::from_secs(120))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("duplicate window"), "{e}");
    let e = OutboxRelay::builder(outbox.clone(), bus)
        .batch_size(0)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("batch_size"), "{e}");
}

/// A row the bus refuses for good (larger than the server's
/// `max_payload`) moves to the failure table after `max_attempts`, with the
/// error; other rows go on. `retry_failed` puts it back in line with its
/// id (here published through a bus that takes it, as after raising the
/// limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_row_goes_to_the_failure_table_and_can_be_retried() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    let server = NatsServer::start_with(
        event_bus_testkit::nats_server::NatsServerOptions::default().max_payload(4096),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let nats = server
        .bus(&[StreamSpec::new("OUT", ["out.>"])])
        .await
        .unwrap();
    let bus: Arc<dyn EventBus> = Arc::new(nats);
    let first = relay(&outbox, &bus)
        .max_attempts(3)
        .build()
        .unwrap()
        .spawn();
    let poison = enqueue_one(&outbox, &pool, "out.poison", &"p".repeat(8192)).await;
    for i in 0..20 {
        enqueue_one(&outbox, &pool, &format!("out.ok.{}", i % 3), "ok").await;
    }
    wait::until(
        Duration::from_secs(20),
        "the poison row in the failure table",
        || first.report().failed == 1,
    )
    .await;
    wait::until(Duration::from_secs(20), "the other rows published", || {
        first.report().published == 20
    })
    .await;
    let report = first.shutdown().await;
    assert_eq!(report.refusals, 3, "{report:?}");
    let failed: Vec<FailedEvent> = outbox.failed(10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].message_id, poison);
    assert_eq!(failed[0].subject, "out.poison");
    assert_eq!(failed[0].attempts, 3);
    assert_eq!(failed[0].payload.len(), 8192);
    assert!(
        failed[0].error.contains("max_payload"),
        "{}",
        failed[0].error
    );
    let status = outbox.status().await.unwrap();
    assert_eq!((status.pending, status.failed), (0, 1), "{status:?}");

    // Retry: back in line, same id, published by a relay whose bus takes it.
    let roomy: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let mut events = roomy.subscribe("out.poison").await.unwrap();
    assert_eq!(outbox.retry_failed(&[failed[0].seq]).await.unwrap(), 1);
    assert_eq!(outbox.status().await.unwrap().failed, 0);
    let second = relay(&outbox, &roomy).build().unwrap().spawn();
    let m = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the retried row published")
        .unwrap();
    assert_eq!(m.id.to_string(), poison);
    second.shutdown().await;
    // Discarding works on what is there.
    assert_eq!(outbox.discard_failed(&[failed[0].seq]).await.unwrap(), 0);
}

/// No stream for a subject (a bus that does not create streams) is not a
/// refusal: the row waits, with backoff, and is published once a stream
/// exists (NATS also reports a stream without a leader this way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_delays_rows_without_failing_them() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let nats = event_bus::NatsBus::builder(server.bus(&[]).await.unwrap().client().clone())
        .auto_create_streams(false)
        .build()
        .unwrap();
    let bus: Arc<dyn EventBus> = Arc::new(nats.clone());
    let relay = relay(&outbox, &bus)
        .max_attempts(2)
        .build()
        .unwrap()
        .spawn();
    let id = enqueue_one(&outbox, &pool, "later.x", "x").await;
    wait::until(Duration::from_secs(20), "a few failed attempts", || {
        relay.report().bus_errors >= 3
    })
    .await;
    let report = relay.report();
    assert_eq!((report.failed, report.refusals), (0, 0), "{report:?}");
    nats.ensure_streams(&[StreamSpec::new("LATER", ["later.>"])])
        .await
        .unwrap();
    wait::until(
        Duration::from_secs(20),
        "published once the stream exists",
        || relay.report().published == 1,
    )
    .await;
    relay.shutdown().await;
    let got = stream_contents(&bus, "later.>", 1).await;
    assert_eq!(got[0].id.to_string(), id);
}

/// Rows copied from another cluster (a dump restored, a logical-replication
/// upgrade) keep that cluster's transaction ids, above anything this
/// cluster has handed out: they are published, not held back forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_restored_from_another_cluster_are_published() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    sqlx::query(
        "INSERT INTO event_bus_outbox (xid, message_id, subject, order_key, header_names, header_values, payload)
         OVERRIDING SYSTEM VALUE
         VALUES ((pg_current_xact_id()::text::bigint + 1000000000)::text::xid8, 'restored-1', 'out.restored', 'out.restored', '{}', '{}', 'r')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let mut events = bus.subscribe("out.>").await.unwrap();
    let relay = relay(&outbox, &bus).build().unwrap().spawn();
    let m = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the restored row published")
        .unwrap();
    assert_eq!(m.id.to_string(), "restored-1");
    relay.shutdown().await;
}

/// The bus down for a while: rows wait, the relay backs off (a handful of
/// attempts, not a busy loop), and the backlog drains once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_drains_when_the_bus_comes_back() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    let (mut server, _) = nats().await;
    // Publishes fail fast (100 ms) while the server is down, so that only
    // the relay's backoff spaces its attempts.
    let bus: Arc<dyn EventBus> = Arc::new(
        event_bus::NatsBus::builder(server.bus(&[]).await.unwrap().client().clone())
            .publish_timeout(Duration::from_millis(100))
            .build()
            .unwrap(),
    );
    let relay = relay(&outbox, &bus)
        .publish_timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .spawn();
    enqueue_one(&outbox, &pool, "out.before", "0").await;
    wait::until(Duration::from_secs(10), "the first row published", || {
        relay.report().published == 1
    })
    .await;
    server.stop().await.unwrap();
    for i in 0..200 {
        enqueue_one(&outbox, &pool, &format!("out.k{}", i % 5), &i.to_string()).await;
    }
    wait::until(
        Duration::from_secs(20),
        "the relay to meet the outage",
        || relay.report().bus_errors > 0,
    )
    .await;
    // An observation window (not a wait for a condition): how often does
    // the relay try while the bus stays down? Without backoff, a failed
    // attempt every 100-300 ms: 10 to 30 in three seconds.
    let before = relay.report().reads;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = relay.report();
    let attempts = during.reads - before;
    assert!(
        attempts <= 9,
        "{attempts} attempts in 3 s of outage: no backoff ({during:?})"
    );
    assert_eq!(during.published, 1, "{during:?}");
    assert_eq!(outbox.status().await.unwrap().pending, 200);
    server.restart().await.unwrap();
    wait::until(Duration::from_secs(60), "the backlog published", || {
        relay.report().published == 201
    })
    .await;
    let report = relay.shutdown().await;
    assert_eq!(report.failed, 0, "{report:?}");
    let got = stream_contents(&bus, "out.>", 201).await;
    assert_in_order_per_subject(&got[1..]);
}

/// A relay restarted (gracefully) resumes without republishing what it
/// removed. (A crashed relay's republished rows, dropped by JetStream as
/// duplicates, are covered by the chaos test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_relay_does_not_republish() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    let (_server, bus) = nats().await;
    let first = relay(&outbox, &bus).build().unwrap().spawn();
    for i in 0..100 {
        enqueue_one(&outbox, &pool, "out.r", &i.to_string()).await;
    }
    wait::until(Duration::from_secs(20), "100 published", || {
        first.report().published == 100
    })
    .await;
    assert_eq!(first.shutdown().await.duplicates, 0);
    let second = relay(&outbox, &bus).build().unwrap().spawn();
    for i in 100..150 {
        enqueue_one(&outbox, &pool, "out.r", &i.to_string()).await;
    }
    wait::until(Duration::from_secs(20), "50 more published", || {
        second.report().published == 50
    })
    .await;
    let report = second.shutdown().await;
    assert_eq!(report.duplicates, 0, "{report:?}");
    let got = stream_contents(&bus, "out.>", 150).await;
    let ns: Vec<u32> = got
        .iter()
        .map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap())
        .collect();
    assert_eq!(ns, (0..150).collect::<Vec<_>>());
}

/// Two relays at once: one holds the lease and publishes, the other
/// stands by; when the leader dies (aborted mid-stream, lease not
/// released) the other takes over; every row is in the stream once, in
/// order per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_hand_over_without_double_publishing() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    let (_server, bus) = nats().await;
    let build = || {
        relay(&outbox, &bus)
            .lease(Duration::from_secs(1))
            .publish_timeout(Duration::from_millis(300))
            .batch_size(50)
            .build()
            .unwrap()
            .spawn()
    };
    let a = build();
    let b = build();
    wait::until(Duration::from_secs(10), "a leader", || {
        a.is_leader() || b.is_leader()
    })
    .await;
    let (leader, standby) = if a.is_leader() { (a, b) } else { (b, a) };
    assert!(!standby.is_leader());
    let writer = {
        let (outbox, pool) = (outbox.clone(), pool.clone());
        tokio::spawn(async move {
            for i in 0..1000 {
                enqueue_one(&outbox, &pool, &format!("out.k{}", i % 4), &i.to_string()).await;
            }
        })
    };
    wait::until(
        Duration::from_secs(20),
        "the leader to publish some",
        || leader.report().published >= 200,
    )
    .await;
    assert_eq!(
        standby.report().published,
        0,
        "the standby published while the leader held the lease"
    );
    leader.abort();
    writer.await.unwrap();
    wait::until(Duration::from_secs(20), "the standby to take over", || {
        standby.is_leader()
    })
    .await;
    wait::until_async(Duration::from_secs(20), "every row published", || async {
        outbox.status().await.unwrap().pending == 0
    })
    .await;
    let report = standby.shutdown().await;
    assert!(report.published > 0, "{report:?}");
    let got = stream_contents(&bus, "out.>", 1000).await;
    assert_in_order_per_subject(&got);
}

/// Wake-ups: with polling practically off, a commit through
/// `Outbox::commit` wakes a relay of the same process, and a notification
/// wakes a listening relay of "another process" (an outbox of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_wake_the_relay_in_process_and_by_notification() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let mut events = bus.subscribe("out.>").await.unwrap();
    let relay = relay(&outbox, &bus)
        .poll_interval(Duration::from_secs(3600))
        .listen(true)
        .build()
        .unwrap()
        .spawn();
    wait::until(Duration::from_secs(10), "the lease", || relay.is_leader()).await;
    wait::until(Duration::from_secs(10), "a first read", || {
        relay.report().reads > 0
    })
    .await;
    // In process.
    enqueue_one(&outbox, &pool, "out.local", "1").await;
    let m = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("woken by Outbox::commit")
        .unwrap();
    assert_eq!(m.subject.as_str(), "out.local");
    // Another process: its own Outbox (no shared wake-up), with NOTIFY.
    let other = Outbox::new(pool.clone()).notify(true);
    let mut tx = pool.begin().await.unwrap();
    other
        .enqueue(&mut tx, Envelope::new("out.remote", b"2".to_vec()))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("woken by the notification")
        .unwrap();
    assert_eq!(m.subject.as_str(), "out.remote");
    // A rolled-back notifying enqueue wakes nobody and publishes nothing.
    let mut tx = pool.begin().await.unwrap();
    other
        .enqueue(&mut tx, Envelope::new("out.never", b"3".to_vec()))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.next())
            .await
            .is_err()
    );
    relay.shutdown().await;
}

/// `keep_published`: rows stay, marked with the time and the stream
/// position, and no longer count as pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_rows_record_their_stream_position() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    let (_server, bus) = nats().await;
    let relay = relay(&outbox, &bus)
        .keep_published(Duration::from_secs(3600))
        .build()
        .unwrap()
        .spawn();
    let id = enqueue_one(&outbox, &pool, "out.kept", "k").await;
    wait::until_async(Duration::from_secs(10), "published and marked", || async {
        outbox.status().await.unwrap().pending == 0
    })
    .await;
    let (stream, seq): (Option<String>, Option<i64>) = sqlx::query_as(
        "SELECT stream, stream_seq FROM event_bus_outbox WHERE message_id = $1 AND published_at IS NOT NULL",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((stream.as_deref(), seq), (Some("OUT"), Some(1)));
    assert_eq!(outbox.status().await.unwrap().pending, 0);
    relay.shutdown().await;
}

/// A refused row holds back its key only, never other keys; nothing of its
/// key is sent past it (refused before it was sent, here too large, it
/// holds back its key's later rows in the batch, pipelined as in strict
/// order, though it is not its key's first row), and once it moves to the
/// failure table its key's later rows wait for it there (here: until it is
/// discarded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_row_holds_back_its_key_only() {
    for strict in [false, true] {
        let (_pg, pool) = pg().await;
        let outbox = outbox(&pool).await;
        let mut config = event_bus::MemoryConfig::default();
        config.max_payload = 100;
        let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::with_config(config));
        let mut events = bus.subscribe("out.>").await.unwrap();
        // Key k: a, TOO BIG, b, c (one transaction); key other: x, y.
        let mut tx = pool.begin().await.unwrap();
        for (subject, body) in [
            ("out.k", "a".to_string()),
            ("out.k", "B".repeat(200)),
            ("out.k", "b".to_string()),
            ("out.other", "x".to_string()),
            ("out.k", "c".to_string()),
            ("out.other", "y".to_string()),
        ] {
            outbox
                .enqueue(&mut tx, Envelope::new(subject, body.into_bytes()))
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        let relay = relay(&outbox, &bus)
            .strict_order(strict)
            .max_attempts(3)
            .backoff(Duration::from_millis(100), Duration::from_millis(200))
            .build()
            .unwrap()
            .spawn();
        let mut got = Vec::new();
        let mut failed_when = HashMap::new();
        // a, x, y before the refused row fails (b, c wait).
        for _ in 0..3 {
            let m = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("published")
                .unwrap();
            let body = String::from_utf8(m.payload.to_vec()).unwrap();
            failed_when.insert(body.clone(), relay.report().failed);
            got.push(body);
        }
        wait::until(
            Duration::from_secs(10),
            "the refused row moved aside",
            || relay.report().failed == 1,
        )
        .await;
        let failed = outbox.failed(10).await.unwrap();
        assert_eq!(failed[0].payload.len(), 200);
        // b and c wait for the failed row, pending, until it is
        // discarded (or retried).
        assert!(
            tokio::time::timeout(Duration::from_millis(500), events.next())
                .await
                .is_err(),
            "strict {strict}: a row of key k was published ahead of its failed row"
        );
        let status = outbox.status().await.unwrap();
        assert_eq!((status.pending, status.blocked), (2, 2), "{status:?}");
        assert_eq!(outbox.discard_failed(&[failed[0].seq]).await.unwrap(), 1);
        for _ in 0..2 {
            let m = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("published once the failed row is discarded")
                .unwrap();
            got.push(String::from_utf8(m.payload.to_vec()).unwrap());
        }
        let report = relay.shutdown().await;
        assert_eq!(report.refusals, 3, "strict {strict}: {report:?}");
        let k: Vec<&str> = got
            .iter()
            .map(String::as_str)
            .filter(|b| ["a", "b", "c"].contains(b))
            .collect();
        assert_eq!(k, ["a", "b", "c"], "strict {strict}: {got:?}");
        assert_eq!(report.out_of_order, 0, "strict {strict}: {report:?}");
        assert_eq!(
            failed_when["y"], 0,
            "strict {strict}: key other waited for key k"
        );
    }
}

/// The relay reads the next batch while a full one publishes: rows of a
/// key whose row failed in that batch, read ahead before it failed, are not
/// published ahead of it (batches of 2: `a, TOO BIG` then `b, x` read
/// ahead; `b` waits for the failed row, `x` goes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_read_ahead_wait_for_a_row_of_their_key_that_failed() {
    for strict in [false, true] {
        let (_pg, pool) = pg().await;
        let outbox = outbox(&pool).await;
        let mut config = event_bus::MemoryConfig::default();
        config.max_payload = 100;
        let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::with_config(config));
        let mut events = bus.subscribe("out.>").await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        for (subject, body) in [
            ("out.k", "a".to_string()),
            ("out.k", "B".repeat(200)),
            ("out.k", "b".to_string()),
            ("out.other", "x".to_string()),
            ("out.k", "c".to_string()),
            ("out.other", "y".to_string()),
        ] {
            outbox
                .enqueue(&mut tx, Envelope::new(subject, body.into_bytes()))
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        let relay = relay(&outbox, &bus)
            .strict_order(strict)
            .batch_size(2)
            .max_attempts(1)
            .build()
            .unwrap()
            .spawn();
        let mut got = Vec::new();
        for _ in 0..3 {
            let m = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("published")
                .unwrap();
            got.push(String::from_utf8(m.payload.to_vec()).unwrap());
        }
        assert_eq!(got, ["a", "x", "y"], "strict {strict}");
        wait::until(
            Duration::from_secs(10),
            "the refused row moved aside",
            || relay.report().failed == 1,
        )
        .await;
        assert!(
            tokio::time::timeout(Duration::from_millis(500), events.next())
                .await
                .is_err(),
            "strict {strict}: a row of key k was published ahead of its failed row"
        );
        let failed = outbox.failed(10).await.unwrap();
        assert_eq!(outbox.discard_failed(&[failed[0].seq]).await.unwrap(), 1);
        for _ in 0..2 {
            let m = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("published once the failed row is discarded")
                .unwrap();
            got.push(String::from_utf8(m.payload.to_vec()).unwrap());
        }
        assert_eq!(got, ["a", "x", "y", "b", "c"], "strict {strict}");
        let report = relay.shutdown().await;
        assert_eq!(report.out_of_order, 0, "strict {strict}: {report:?}");
    }
}

/// The outbox as a status check: ready while nothing waits too long; not
/// ready once a row is older than the limit, naming the session that holds
/// it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_check_names_what_holds_delivery_back() {
    use event_bus::status::StatusCheck;
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    let check = outbox.status_check(Duration::from_millis(200));
    assert_eq!(check.name(), "outbox");
    assert!(check.check().await.ready);
    // A transaction that wrote and stays open holds back a committed row.
    let mut open = pool.begin().await.unwrap();
    outbox
        .enqueue(&mut open, Envelope::new("out.open", b"1".to_vec()))
        .await
        .unwrap();
    enqueue_one(&outbox, &pool, "out.later", "2").await;
    wait::until_async(Duration::from_secs(10), "the row to be too old", || async {
        !check.check().await.ready
    })
    .await;
    let report = check.check().await;
    assert!(
        report.summary.contains("held back by session"),
        "{}",
        report.summary
    );
    assert_eq!(report.details["pending"], 1, "{}", report.details);
    assert!(report.details["held_by"]["pid"].as_i64().unwrap() > 0);
    open.rollback().await.unwrap();
}

/// A bus that checks events against a schema before sending them, as
/// `ValidatingBus` does: a payload whose `email` is not a non-empty string
/// is refused with `Rejected` (nothing sent); the rest goes to an
/// in-memory bus. `fixed` stands for a corrected schema: nothing refused.
struct SchemaCheckBus {
    inner: InMemoryBus,
    fixed: std::sync::atomic::AtomicBool,
}

impl SchemaCheckBus {
    fn check(&self, e: &Envelope) -> Result<(), event_bus::BusError> {
        if self.fixed.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let v: serde_json::Value = serde_json::from_slice(&e.payload).unwrap_or_default();
        match v["email"].as_str() {
            Some(s) if !s.is_empty() => Ok(()),
            _ => Err(event_bus::BusError::new(
                ErrorKind::Rejected,
                format!(
                    "schema violation: {} does not match its schema: /email must be a non-empty string",
                    e.subject
                ),
            )),
        }
    }
}

#[async_trait::async_trait]
impl EventBus for SchemaCheckBus {
    fn publish<'a>(&'a self, subject: &'a str, payload: Vec<u8>) -> event_bus::PublishFuture<'a> {
        match self.check(&Envelope::new(subject, payload.clone())) {
            Err(e) => event_bus::PublishFuture::ready(Err(e)),
            Ok(()) => self.inner.publish(subject, payload),
        }
    }

    async fn subscribe(
        &self,
        pattern: &str,
    ) -> Result<event_bus::Subscription, event_bus::BusError> {
        self.inner.subscribe(pattern).await
    }

    async fn publish_envelope(
        &self,
        envelope: Envelope,
    ) -> Result<event_bus::PublishAck, event_bus::BusError> {
        self.check(&envelope)?;
        self.inner.publish_envelope(envelope).await
    }

    async fn publish_batch(
        &self,
        envelopes: Vec<Envelope>,
    ) -> Vec<Result<event_bus::PublishAck, event_bus::BusError>> {
        // As ValidatingBus: the valid ones go out in one batch, in order.
        let checked: Vec<Result<Envelope, event_bus::BusError>> = envelopes
            .into_iter()
            .map(|e| self.check(&e).map(|()| e))
            .collect();
        let valid = checked
            .iter()
            .filter_map(|c| c.as_ref().ok().cloned())
            .collect();
        let mut sent = self.inner.publish_batch(valid).await.into_iter();
        checked
            .into_iter()
            .map(|c| c.and_then(|_| sent.next().expect("one result per envelope")))
            .collect()
    }
}

async fn enqueue_user(
    outbox: &Outbox,
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    key: &str,
    email: &str,
) -> String {
    outbox
        .enqueue_with_key(
            tx,
            key,
            Envelope::new(
                "out.user.created",
                serde_json::to_vec(&serde_json::json!({ "email": email })).unwrap(),
            ),
        )
        .await
        .unwrap()
        .to_string()
}

/// The ids of the next `n` messages (each within 10 s).
async fn next_ids(events: &mut event_bus::Subscription, n: usize, what: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let m = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: {ids:?} so far"))
            .unwrap();
        ids.push(m.id.to_string());
    }
    ids
}

/// Outbox × contracts: a row the bus refuses for its schema
/// (`Rejected`, known before sending) is counted, moved to the
/// failure table with the error, and does not keep `/readyz` failing; the
/// later rows of its key are never published ahead of it, in the default
/// pipelined mode as in strict order, whether it is its key's first row in
/// the batch (key ada) or a later one (key cy: its first row goes out, its
/// third waits): they wait, pending, until it is discarded or retried (back
/// at its place, ahead of them); other keys go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_violation_fails_its_row_and_its_key_waits_for_it() {
    use event_bus::status::StatusCheck;
    for strict in [false, true] {
        let (_pg, pool) = pg().await;
        let outbox = outbox(&pool).await;
        let schema = Arc::new(SchemaCheckBus {
            inner: InMemoryBus::new(),
            fixed: false.into(),
        });
        let bus: Arc<dyn EventBus> = schema.clone();
        let mut events = bus.subscribe("out.>").await.unwrap();
        // One batch. Key ada: INVALID, then two valid rows; key cy: valid,
        // INVALID, valid; key bob: one valid row.
        let mut tx = pool.begin().await.unwrap();
        let bad = enqueue_user(&outbox, &mut tx, "ada", "").await;
        let ada1 = enqueue_user(&outbox, &mut tx, "ada", "ada1@example.com").await;
        let cy1 = enqueue_user(&outbox, &mut tx, "cy", "cy1@example.com").await;
        let bob = enqueue_user(&outbox, &mut tx, "bob", "bob@example.com").await;
        let cy_bad = enqueue_user(&outbox, &mut tx, "cy", "").await;
        let ada2 = enqueue_user(&outbox, &mut tx, "ada", "ada2@example.com").await;
        let cy2 = enqueue_user(&outbox, &mut tx, "cy", "cy2@example.com").await;
        outbox.commit(tx).await.unwrap();
        let relay = relay(&outbox, &bus)
            .strict_order(strict)
            .max_attempts(3)
            .backoff(Duration::from_millis(20), Duration::from_millis(100))
            .build()
            .unwrap()
            .spawn();
        let mut first = next_ids(&mut events, 2, "keys bob and cy (first row) published").await;
        first.sort();
        let mut want = vec![bob.clone(), cy1.clone()];
        want.sort();
        assert_eq!(first, want, "strict {strict}");
        wait::until(
            Duration::from_secs(20),
            "the refused rows in the failure table",
            || relay.report().failed == 2,
        )
        .await;
        let report = relay.report();
        assert_eq!(
            (report.refusals, report.bus_errors, report.out_of_order),
            (6, 0, 0),
            "strict {strict}: {report:?}"
        );
        let mut failed = outbox.failed(10).await.unwrap();
        failed.sort_by_key(|f| f.seq);
        assert_eq!(failed.len(), 2, "strict {strict}: {failed:?}");
        assert_eq!(
            [&failed[0].message_id, &failed[1].message_id],
            [&bad, &cy_bad]
        );
        assert!(
            failed[0].error.contains("rejected: schema violation")
                && failed[0].error.contains("/email"),
            "{}",
            failed[0].error
        );
        // The later rows of keys ada and cy are held, not published ahead
        // of their refused rows.
        assert!(
            tokio::time::timeout(Duration::from_millis(500), events.next())
                .await
                .is_err(),
            "strict {strict}: a row of key ada or cy was published ahead of its refused row"
        );
        let status = outbox.status().await.unwrap();
        assert_eq!(
            (status.pending, status.blocked, status.failed),
            (3, 3, 2),
            "strict {strict}: {status:?}"
        );
        // Readiness: failed and blocked rows are reported, not unready.
        // (A limit of zero: any row counted would make it unready.)
        let check = outbox.status_check(Duration::ZERO);
        let ready = check.check().await;
        assert!(ready.ready, "{}", ready.summary);
        assert!(
            ready.summary.contains("2 failed") && ready.summary.contains("3 pending rows"),
            "{}",
            ready.summary
        );
        assert_eq!(ready.details["blocked"], 3, "{}", ready.details);

        let seqs = [failed[0].seq, failed[1].seq];
        let (ada_after, cy_after) = if strict {
            // Discarded: the keys go on.
            assert_eq!(outbox.discard_failed(&seqs).await.unwrap(), 2);
            (vec![ada1.clone(), ada2.clone()], vec![cy2.clone()])
        } else {
            // The schema corrected, the rows retried: back at their place,
            // ahead of the rows that waited for them.
            schema
                .fixed
                .store(true, std::sync::atomic::Ordering::SeqCst);
            assert_eq!(outbox.retry_failed(&seqs).await.unwrap(), 2);
            (
                vec![bad.clone(), ada1.clone(), ada2.clone()],
                vec![cy_bad.clone(), cy2.clone()],
            )
        };
        let ids = next_ids(
            &mut events,
            ada_after.len() + cy_after.len(),
            "keys ada and cy go on once their failed rows are discarded or retried",
        )
        .await;
        let of = |key: &[String]| -> Vec<String> {
            ids.iter().filter(|i| key.contains(i)).cloned().collect()
        };
        assert_eq!(of(&ada_after), ada_after, "strict {strict}: {ids:?}");
        assert_eq!(of(&cy_after), cy_after, "strict {strict}: {ids:?}");
        let report = relay.shutdown().await;
        assert_eq!(report.out_of_order, 0, "{report:?}");
        assert_eq!(outbox.status().await.unwrap().pending, 0);
    }
}

/// Dropping the relay's handle stops it and releases its lease: a relay
/// started next (a restarted service) publishes at once, not after the
/// lease (20 s here) runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_relay_releases_its_lease() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let mut events = bus.subscribe("out.>").await.unwrap();
    let build = || {
        relay(&outbox, &bus)
            .lease(Duration::from_secs(20))
            .build()
            .unwrap()
    };
    let first = build().spawn();
    enqueue_one(&outbox, &pool, "out.first", "1").await;
    tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the first relay publishes")
        .unwrap();
    assert!(first.is_leader());
    let first_name = first.holder().to_string();
    drop(first);
    let started = std::time::Instant::now();
    wait::until_async(Duration::from_secs(10), "the lease released", || async {
        outbox.status().await.unwrap().relay.is_none()
    })
    .await;
    let second = build().spawn();
    assert_ne!(second.holder(), first_name);
    let id = enqueue_one(&outbox, &pool, "out.second", "2").await;
    let m = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the next relay publishes well within the dropped one's lease")
        .unwrap();
    assert_eq!(m.id.to_string(), id);
    println!(
        "published by the next relay {:?} after the drop",
        started.elapsed()
    );
    assert_eq!(second.shutdown().await.published, 1);
}

/// `keep_published` retention: a published row is kept while younger than
/// the retention and removed once older.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_rows_are_removed_after_the_retention() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let relay = relay(&outbox, &bus)
        .keep_published(Duration::from_secs(2))
        .build()
        .unwrap()
        .spawn();
    let old = enqueue_one(&outbox, &pool, "out.old", "o").await;
    let young = enqueue_one(&outbox, &pool, "out.young", "y").await;
    wait::until_async(Duration::from_secs(10), "both published", || async {
        outbox.status().await.unwrap().pending == 0
    })
    .await;
    // Published an hour ago, and (its clock moved so that it stays young
    // however slow this machine is) just now.
    for (id, at) in [
        (&old, "now() - interval '1 hour'"),
        (&young, "now() + interval '1 hour'"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE event_bus_outbox SET published_at = {at} WHERE message_id = $1"
        )))
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    }
    let kept = |id: String| {
        let pool = pool.clone();
        async move {
            let (n,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM event_bus_outbox WHERE message_id = $1")
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            n == 1
        }
    };
    wait::until_async(Duration::from_secs(30), "the old row removed", || {
        let k = kept(old.clone());
        async move { !k.await }
    })
    .await;
    assert!(
        kept(young.clone()).await,
        "a row younger than the retention was removed"
    );
    relay.shutdown().await;
}
