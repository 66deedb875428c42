//! The broker killed (-9) mid-publish and restarted on its durable storage
//! (tansu's PostgreSQL engine, on a throwaway PostgreSQL): nothing
//! `KafkaBus` acknowledged is lost (shown for a new connection after the
//! restart; a connection kept across it meets a tansu bug, see the second
//! test).
//! `cargo test -p event-bus-testkit --features kafka --test kafka_durability`
//! (tansu and its PostgreSQL schema: `./scripts/install-test-deps.sh kafka`).

use event_bus::kafka::KafkaConfig;
use event_bus::{ConsumerConfig, EventBus, EventBusExt, StartPosition};
use event_bus_testkit::kafka_server::KafkaServer;
use event_bus_testkit::postgres::TestPostgres;
use event_bus_testkit::wait;
use futures::StreamExt;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PUBLISHERS: u64 = 4;

/// What publishes after the restart.
#[derive(Clone, Copy, PartialEq)]
enum AfterRestart {
    /// The publishers keep going on the connection they had before the
    /// kill (the idempotent producer carries on with its sequence numbers).
    SameProducer,
    /// The publishers stop at the kill, and a new connection (a new
    /// producer id) publishes after the restart.
    NewConnection,
}

/// Everything acknowledged before the kill is stored after the restart,
/// and so is everything a new connection publishes after it. Passes on
/// tansu 0.6.0: it is the part of the guarantee that tansu lets a test
/// show (see the next test for the part it does not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_a_broker_kill() {
    broker_kill(AfterRestart::NewConnection).await;
}

/// The same with one long-lived connection publishing before, during and
/// after the kill. Fails on tansu 0.6.0 (hence ignored; `-- --ignored`
/// runs it): the records acknowledged before the kill survive on
/// PostgreSQL, but after the restart tansu mishandles the idempotent
/// producer's sequence numbers. Seen both ways: new batches answered with
/// `DUPLICATE_SEQUENCE_NUMBER` without being stored, which a Kafka client
/// (librdkafka, as the Java client) takes as "already written" (those
/// publishes are acknowledged and lost; Apache Kafka answers so only for a
/// batch it holds), and, on 2026-12-07, no publish of that producer
/// acknowledged within 60 s of the restart. See the README's "On Kafka".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "tansu 0.6.0 mishandles an idempotent producer kept across its restart"]
async fn acknowledged_events_survive_a_broker_kill_on_one_connection() {
    broker_kill(AfterRestart::SameProducer).await;
}

async fn broker_kill(after_restart: AfterRestart) {
    let pg = TestPostgres::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut server = KafkaServer::start_on_postgres(&pg)
        .await
        .unwrap_or_else(|e| panic!("start tansu on PostgreSQL: {e}"));
    let mut config = KafkaConfig::new(&server.bootstrap());
    config.publish_timeout = Duration::from_secs(5);
    let bus: Arc<dyn EventBus> =
        Arc::new(event_bus::KafkaBus::connect(config.clone()).await.unwrap());

    // Publishers numbering their events; what the bus acknowledged is kept.
    let acked = Arc::new(Mutex::new(BTreeSet::<(u64, u64)>::new()));
    let (oks, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let (bus, acked, oks, errors, stop) = (
            bus.clone(),
            acked.clone(),
            oks.clone(),
            errors.clone(),
            stop.clone(),
        );
        publishers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                match bus
                    .publish(&format!("durable.p{p}"), format!("{p}:{n}").into_bytes())
                    .await
                {
                    Ok(()) => {
                        acked.lock().unwrap().insert((p, n));
                        oks.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::SeqCst);
                    }
                }
                n += 1;
            }
        }));
    }
    wait::until(
        Duration::from_secs(60),
        "some acknowledged publishes",
        || oks.load(Ordering::SeqCst) >= 200,
    )
    .await;
    server.kill();
    let at_kill = oks.load(Ordering::SeqCst);
    // Publishes in flight at the kill fail (or are retried by the client
    // and acknowledged after the restart: then they must be there too).
    wait::until(
        Duration::from_secs(30),
        "publishes to fail on the dead broker",
        || errors.load(Ordering::SeqCst) > 0,
    )
    .await;
    if after_restart == AfterRestart::NewConnection {
        // Every publish of the old connection ends (acknowledged before
        // the kill, or failed within its publish timeout) before the
        // broker comes back.
        stop.store(true, Ordering::SeqCst);
        for p in publishers.drain(..) {
            p.await.unwrap();
        }
    }
    server
        .restart()
        .await
        .unwrap_or_else(|e| panic!("restart tansu: {e}"));
    let bus = match after_restart {
        AfterRestart::SameProducer => {
            wait::until(
                Duration::from_secs(60),
                "acknowledged publishes after the restart",
                || oks.load(Ordering::SeqCst) >= at_kill + 200,
            )
            .await;
            stop.store(true, Ordering::SeqCst);
            for p in publishers {
                p.await.unwrap();
            }
            bus
        }
        AfterRestart::NewConnection => {
            drop(bus);
            let fresh: Arc<dyn EventBus> =
                Arc::new(event_bus::KafkaBus::connect(config).await.unwrap());
            for n in 0..200u64 {
                let p = PUBLISHERS; // a publisher number of its own
                let published = fresh
                    .publish(&format!("durable.p{p}"), format!("{p}:{n}").into_bytes())
                    .await;
                // The broker is back: every publish is acknowledged.
                published.unwrap_or_else(|e| panic!("publish {n} after the restart: {e}"));
                acked.lock().unwrap().insert((p, n));
            }
            fresh
        }
    };
    let acked = acked.lock().unwrap().clone();

    // Read everything back with a new group, from the start.
    let mut reader = bus
        .consume(
            ConsumerConfig::new("durability-check", "durable.>")
                .start(StartPosition::All)
                .max_ack_pending(100_000),
        )
        .await
        .unwrap();
    let mut stored = BTreeSet::new();
    let mut records = 0usize;
    while !acked.is_subset(&stored) {
        let d = match tokio::time::timeout(Duration::from_secs(20), reader.next()).await {
            Ok(Some(d)) => d.unwrap(),
            Ok(None) => panic!("the reader closed"),
            Err(_) => break,
        };
        let text = String::from_utf8_lossy(&d.payload).into_owned();
        let (p, n) = text.split_once(':').expect("p:n");
        stored.insert((p.parse::<u64>().unwrap(), n.parse::<u64>().unwrap()));
        records += 1;
        d.ack_nowait().await.unwrap();
    }
    let lost: Vec<&(u64, u64)> = acked.difference(&stored).collect();
    println!(
        "broker kill: {} acknowledged ({at_kill} before the kill), {} failed publishes, {records} records read back ({} distinct)",
        acked.len(),
        errors.load(Ordering::SeqCst),
        stored.len()
    );
    let storage = pg
        .psql("SELECT topition, count(*), min(offset_id), max(offset_id) FROM record GROUP BY topition ORDER BY topition")
        .await
        .unwrap_or_else(|e| e.to_string());
    let watermarks = pg
        .psql("SELECT * FROM watermark")
        .await
        .unwrap_or_else(|e| e.to_string());
    println!(
        "tansu's records (topition|count|min|max):\n{storage}\nwatermarks:\n{watermarks}\ntansu's log (tail):\n{}",
        server.log_tail()
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost across the broker kill (publisher, n): {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
}
