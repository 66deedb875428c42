//! The whole chain under faults: business transactions → outbox → relay →
//! JetStream → runner → `PgInbox`. Eight writers enqueue 20,000 events in
//! transactions of 1 to 10 events, a fifth of them rolled back; the relay is
//! killed three times at random points and nats-server is killed (-9) and
//! restarted once. Every committed event has exactly one effect, no
//! rolled-back event has any, and the stream holds each committed event
//! once; with strict order, in order per key.

use event_bus::config::StreamSpec;
use event_bus::runner::{Event, Handler, RetryPolicy, Runner};
use event_bus::{ConsumerConfig, Envelope, EventBus, StartPosition};
use event_bus_postgres::{sqlx, Outbox, OutboxRelay, PgInbox, RelayHandle};
use event_bus_testkit::nats_server::NatsServer;
use event_bus_testkit::wait;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
mod common;

const WRITERS: u64 = 8;
const EVENTS: u64 = 20_000;

#[derive(Serialize, Deserialize)]
struct Ev {
    writer: i64,
    n: i64,
}

fn random_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    r % n
}

/// Strict per-key order: the stream holds each writer's events in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_order_holds_under_relay_and_server_crashes() {
    chaos(true).await
}

/// Pipelined batches (the default): exactly one effect per committed event
/// just the same; a batch cut by the server's death may be stored out of
/// order (see `OutboxRelayBuilder::strict_order`), which is counted, not
/// asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_have_one_effect_under_relay_and_server_crashes() {
    chaos(false).await
}

async fn chaos(strict: bool) {
    let (_pg, pool) = common::postgres(20).await;
    sqlx::raw_sql("CREATE TABLE effects (writer BIGINT NOT NULL, n BIGINT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let outbox = Outbox::new(pool.clone());
    outbox.migrate().await.unwrap();
    let mut server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let nats = server
        .bus(&[StreamSpec::new("CHAOS", ["chaos.>"])])
        .await
        .unwrap();
    let bus: Arc<dyn EventBus> = Arc::new(nats);

    // The consumer: one effect per event, claimed in the inbox.
    let inbox = PgInbox::new(pool.clone());
    inbox.migrate().await.unwrap();
    let runner = Runner::builder(bus.clone(), "chaos")
        .inbox(inbox)
        .concurrency(8)
        .handler(
            Handler::new(
                "record",
                "chaos.>",
                |e: Event<'_, Ev>, tx: &mut sqlx::Transaction<'static, sqlx::Postgres>| {
                    Box::pin(async move {
                        sqlx::query("INSERT INTO effects (writer, n) VALUES ($1, $2)")
                            .bind(e.data.writer)
                            .bind(e.data.n)
                            .execute(&mut **tx)
                            .await
                            .map(|_| ())
                            .into()
                    })
                },
            )
            .retry(
                RetryPolicy::new(50, Duration::from_millis(5))
                    .max_backoff(Duration::from_millis(200)),
            ),
        )
        .build()
        .spawn()
        .await
        .unwrap();

    // The writers: each numbers its events; its key is its own subject, so
    // its commit order is its numbering.
    let committed = Arc::new(Mutex::new(BTreeSet::<(i64, i64)>::new()));
    let rolled_back = Arc::new(Mutex::new(BTreeSet::<(i64, i64)>::new()));
    let enqueued = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS as i64 {
        let (outbox, pool) = (outbox.clone(), pool.clone());
        let (committed, rolled_back, enqueued) =
            (committed.clone(), rolled_back.clone(), enqueued.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0i64;
            while (n as u64) < EVENTS / WRITERS {
                let size = (1 + random_below(10) as i64).min(EVENTS as i64 / WRITERS as i64 - n);
                let mut tx = pool.begin().await.unwrap();
                let mut batch = Vec::new();
                for _ in 0..size {
                    let payload = serde_json::to_vec(&Ev { writer: w, n }).unwrap();
                    outbox
                        .enqueue(&mut tx, Envelope::new(format!("chaos.w{w}"), payload))
                        .await
                        .unwrap();
                    batch.push((w, n));
                    n += 1;
                }
                enqueued.fetch_add(size as u64, Ordering::SeqCst);
                if random_below(5) == 0 {
                    tx.rollback().await.unwrap();
                    rolled_back.lock().unwrap().extend(batch);
                } else {
                    outbox.commit(tx).await.unwrap();
                    committed.lock().unwrap().extend(batch);
                }
            }
        }));
    }

    // The relay, killed three times at random points (after a random number
    // of further publishes), and the server killed once in between.
    let spawn_relay = || {
        OutboxRelay::builder(outbox.clone(), bus.clone())
            .lease(Duration::from_secs(1))
            .publish_timeout(Duration::from_millis(300))
            .backoff(Duration::from_millis(20), Duration::from_millis(500))
            .batch_size(200)
            .strict_order(strict)
            .build()
            .unwrap()
            .spawn()
    };
    let published_before = Arc::new(AtomicU64::new(0));
    let mut relay: RelayHandle = spawn_relay();
    for round in 0..3 {
        let target = 500 + random_below(2000);
        wait::until(
            Duration::from_secs(60),
            "the relay to publish some more",
            || relay.report().published >= target,
        )
        .await;
        if round == 1 {
            server.kill();
            wait::until(
                Duration::from_secs(20),
                "the relay to meet the dead server",
                || relay.report().bus_errors > 0,
            )
            .await;
            server.restart().await.expect("restart nats-server");
        }
        let report = relay.report();
        println!("relay {round}: {report:?}");
        published_before.fetch_add(report.published, Ordering::SeqCst);
        relay.abort();
        relay = spawn_relay();
    }
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(enqueued.load(Ordering::SeqCst), EVENTS);
    wait::until_async(Duration::from_secs(120), "the outbox drained", || async {
        outbox.status().await.unwrap().pending == 0
    })
    .await;
    let committed = committed.lock().unwrap().clone();
    let rolled_back = rolled_back.lock().unwrap().clone();
    let want = committed.len();
    wait::until_async(
        Duration::from_secs(120),
        "an effect per committed event",
        || async {
            let (n,): (i64,) = sqlx::query_as("SELECT count(DISTINCT (writer, n)) FROM effects")
                .fetch_one(&pool)
                .await
                .unwrap();
            n as usize >= want
        },
    )
    .await;
    let relay_report = relay.shutdown().await;
    let runner_report = runner.shutdown().await;
    println!(
        "chaos (strict order: {strict}): {} committed, {} rolled back; relay (last) {relay_report:?}; earlier relays published {}; runner {runner_report:?}",
        committed.len(),
        rolled_back.len(),
        published_before.load(Ordering::SeqCst)
    );

    // Exactly one effect per committed event, none for rolled-back ones.
    let effects: Vec<(i64, i64, i64)> =
        sqlx::query_as("SELECT writer, n, count(*) FROM effects GROUP BY writer, n")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut seen = BTreeSet::new();
    for (w, n, count) in effects {
        assert_eq!(count, 1, "event ({w}, {n}) had {count} effects");
        assert!(
            !rolled_back.contains(&(w, n)),
            "rolled-back event ({w}, {n}) had an effect"
        );
        seen.insert((w, n));
    }
    assert_eq!(seen, committed, "effects differ from the committed events");
    assert!(!committed.is_empty() && !rolled_back.is_empty());

    // The stream holds each committed event once, in order per key.
    let mut check = bus
        .consume(
            ConsumerConfig::new("order-check", "chaos.>")
                .start(StartPosition::All)
                .max_ack_pending(20_000),
        )
        .await
        .unwrap();
    let mut per_key: HashMap<i64, Vec<i64>> = HashMap::new();
    for _ in 0..want {
        let d = tokio::time::timeout(Duration::from_secs(20), check.next())
            .await
            .expect("every committed event is in the stream")
            .expect("consumer open")
            .unwrap();
        let ev: Ev = d.message().json().unwrap();
        per_key.entry(ev.writer).or_default().push(ev.n);
        d.ack_nowait().await.unwrap();
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), check.next())
            .await
            .is_err(),
        "the stream holds more events than were committed (a duplicate got through)"
    );
    let inversions: usize = per_key
        .values()
        .map(|ns| ns.windows(2).filter(|p| p[0] >= p[1]).count())
        .sum();
    println!("order inversions in the stream: {inversions}");
    if !strict {
        return;
    }
    for (w, ns) in per_key {
        assert!(
            ns.windows(2).all(|p| p[0] < p[1]),
            "writer {w}'s events are out of order in the stream: {:?}",
            ns.windows(2).filter(|p| p[0] >= p[1]).collect::<Vec<_>>()
        );
    }
}
