//! The PostgreSQL chain on `KafkaBus` (a real tansu broker the test starts):
//! Kafka does not de-duplicate by message id, so the inbox must.
//!
//! * outbox → relay → Kafka → runner → `PgInbox`: events stored twice in
//!   the topic (a lost acknowledgement, a relay aborted between publish and
//!   marking its rows sent, an id published again by hand) have exactly one
//!   effect each;
//! * a consumer group of two runners, one aborted mid-stream: every event
//!   handled, exactly one effect, each key's events handled in order.
//!
//! `cargo test -p event-bus-postgres --features kafka --test kafka_chain`.

use event_bus::runner::{boxed, Event, Handler, RetryPolicy, Runner};
use event_bus::{
    BusError, ConsumerConfig, Envelope, ErrorKind, EventBus, EventBusExt, PublishAck,
    PublishFuture, StartPosition, Subscription,
};
use event_bus_postgres::{sqlx, Outbox, OutboxRelay, PgInbox, RelayHandle};
use event_bus_testkit::kafka_server::KafkaServer;
use event_bus_testkit::wait;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
mod common;

#[derive(Serialize, Deserialize)]
struct Ev {
    key: i64,
    n: i64,
}

async fn kafka() -> KafkaServer {
    KafkaServer::start()
        .await
        .unwrap_or_else(|e| panic!("start the Kafka broker: {e}"))
}

/// The relay's bus: every `LOSE_EVERY`th publish is stored by the broker
/// but reported to the relay as a timeout (the acknowledgement lost), so
/// the relay sends the row again and Kafka stores it twice.
struct AckLosingBus {
    inner: Arc<dyn EventBus>,
    n: AtomicU64,
    lost: Mutex<HashSet<String>>,
}

const LOSE_EVERY: u64 = 9;

#[async_trait::async_trait]
impl EventBus for AckLosingBus {
    fn publish<'a>(&'a self, subject: &'a str, payload: Vec<u8>) -> PublishFuture<'a> {
        self.inner.publish(subject, payload)
    }

    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BusError> {
        self.inner.subscribe(pattern).await
    }

    async fn publish_envelope(&self, envelope: Envelope) -> Result<PublishAck, BusError> {
        let id = envelope
            .id
            .as_ref()
            .map(|i| i.to_string())
            .unwrap_or_default();
        let result = self.inner.publish_envelope(envelope).await?;
        if self.n.fetch_add(1, Ordering::SeqCst) % LOSE_EVERY == LOSE_EVERY - 1 {
            self.lost.lock().unwrap().insert(id);
            return Err(BusError::new(
                ErrorKind::Timeout,
                "test: the acknowledgement was lost",
            ));
        }
        Ok(result)
    }
}

async fn count(pool: &sqlx::PgPool, sql: &'static str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(pool).await.unwrap();
    n
}

/// Every record of `subject`'s topic from the start, by message id (a
/// consumer group of its own).
async fn stored_ids(bus: &Arc<dyn EventBus>, filter: &str, at_least: usize) -> Vec<String> {
    let mut audit = bus
        .consume(
            ConsumerConfig::new("audit", filter)
                .start(StartPosition::All)
                .max_ack_pending(100_000),
        )
        .await
        .unwrap();
    let mut ids = Vec::new();
    loop {
        let wait = if ids.len() < at_least { 30 } else { 2 };
        match tokio::time::timeout(Duration::from_secs(wait), audit.next()).await {
            Ok(Some(d)) => {
                let d = d.unwrap();
                ids.push(d.message().id.to_string());
                d.ack_nowait().await.unwrap();
            }
            Ok(None) => panic!("the audit consumer closed"),
            Err(_) if ids.len() >= at_least => return ids,
            Err(_) => panic!(
                "the topic holds {} records, fewer than the {at_least} expected",
                ids.len()
            ),
        }
    }
}

/// outbox → relay → Kafka → runner → `PgInbox`, exactly once in effect:
/// the topic holds some events twice (acknowledgements lost, a relay
/// aborted mid-stream and replaced, ids published again by hand), and
/// each event still has one effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_to_kafka_to_inbox_is_exactly_once_in_effect() {
    const N: i64 = 300;
    const KEYS: i64 = 6;
    const REPUBLISHED: usize = 10;
    let (_pg, pool) = common::postgres(10).await;
    sqlx::raw_sql(
        "CREATE TABLE effects (id TEXT NOT NULL, key BIGINT NOT NULL, n BIGINT NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let outbox = Outbox::new(pool.clone());
    outbox.migrate().await.unwrap();
    let inbox = PgInbox::new(pool.clone());
    inbox.migrate().await.unwrap();
    let server = kafka().await;
    let bus: Arc<dyn EventBus> = Arc::new(server.bus().await);

    let runner = Runner::builder(bus.clone(), "kchain")
        .inbox(inbox)
        .concurrency(8)
        .handler(
            Handler::new(
                "record",
                "kchain.>",
                boxed(
                    |e: Event<'_, Ev>, tx: &mut sqlx::Transaction<'static, sqlx::Postgres>| {
                        let id = e.message.id.to_string();
                        Box::pin(async move {
                            sqlx::query("INSERT INTO effects (id, key, n) VALUES ($1, $2, $3)")
                                .bind(id)
                                .bind(e.data.key)
                                .bind(e.data.n)
                                .execute(&mut **tx)
                                .await
                                .map(|_| ())
                                .into()
                        })
                    },
                ),
            )
            .retry(RetryPolicy::new(20, Duration::from_millis(10))),
        )
        .build()
        .spawn()
        .await
        .unwrap();

    let mut ids = Vec::new();
    for n in 0..N {
        let mut tx = pool.begin().await.unwrap();
        let key = n % KEYS;
        let payload = serde_json::to_vec(&Ev { key, n }).unwrap();
        let id = outbox
            .enqueue(&mut tx, Envelope::new(format!("kchain.k{key}"), payload))
            .await
            .unwrap();
        ids.push(id);
        outbox.commit(tx).await.unwrap();
    }

    let lossy = Arc::new(AckLosingBus {
        inner: bus.clone(),
        n: AtomicU64::new(0),
        lost: Mutex::default(),
    });
    let relay_bus: Arc<dyn EventBus> = lossy.clone();
    let spawn_relay = || -> RelayHandle {
        OutboxRelay::builder(outbox.clone(), relay_bus.clone())
            .lease(Duration::from_secs(1))
            .publish_timeout(Duration::from_millis(300))
            .backoff(Duration::from_millis(10), Duration::from_millis(100))
            .batch_size(25)
            .build()
            .unwrap()
            .spawn()
    };
    // The first relay is aborted (no shutdown) mid-stream; its successor
    // takes over once the lease has run out and sends what was not marked.
    let first = spawn_relay();
    wait::until(
        Duration::from_secs(60),
        "the relay to publish a third",
        || lossy.n.load(Ordering::SeqCst) >= (N / 3) as u64,
    )
    .await;
    first.abort();
    let relay = spawn_relay();
    wait::until_async(Duration::from_secs(120), "the outbox drained", || async {
        outbox.status().await.unwrap().pending == 0
    })
    .await;
    let relay_report = relay.shutdown().await;

    // The same ids published again, as by hand (or a second relay).
    let rows: Vec<(String, Vec<u8>, i64)> = {
        let mut out = Vec::new();
        for n in 0..REPUBLISHED as i64 {
            let key = n % KEYS;
            out.push((
                format!("kchain.k{key}"),
                serde_json::to_vec(&Ev { key, n }).unwrap(),
                n,
            ));
        }
        out
    };
    for (subject, payload, n) in rows {
        bus.publish_envelope(Envelope::new(subject, payload).id(ids[n as usize].clone()))
            .await
            .unwrap();
    }

    let lost = lossy.lost.lock().unwrap().len();
    let stored = lossy.n.load(Ordering::SeqCst) as usize + REPUBLISHED;
    assert!(lost > 0, "no acknowledgement was lost");
    // Kafka kept every copy: no de-duplication by id.
    let in_topic = stored_ids(&bus, "kchain.>", stored).await;
    let distinct: HashSet<&String> = in_topic.iter().collect();
    assert_eq!(distinct.len(), N as usize, "every event is in the topic");
    let copies = in_topic.len() - distinct.len();
    assert!(
        copies >= lost + REPUBLISHED,
        "the topic holds {copies} repeated records, fewer than the {lost} lost acknowledgements + {REPUBLISHED} republished ids"
    );

    // The runner sees every copy; the inbox lets one through per id.
    wait::until_async(
        Duration::from_secs(120),
        "the runner to take every record",
        || async { count(&pool, "SELECT count(DISTINCT id) FROM effects").await >= N },
    )
    .await;
    // Until every repeat has reached the runner (and been dropped or, the
    // bug, applied): processed + duplicates covers each record.
    wait::until(
        Duration::from_secs(120),
        "the runner to answer every record in the topic",
        || {
            let r = runner.report();
            (r.processed + r.duplicates) as usize >= in_topic.len()
        },
    )
    .await;
    let runner_report = runner.shutdown().await;
    println!(
        "kafka chain: {N} events, {lost} acknowledgements lost, {REPUBLISHED} ids republished, {} records in the topic ({copies} repeats); relay (second) {relay_report:?}; runner {runner_report:?}",
        in_topic.len()
    );
    let per_id: Vec<(String, i64)> =
        sqlx::query_as("SELECT id, count(*) FROM effects GROUP BY id HAVING count(*) <> 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        per_id.is_empty(),
        "events with other than one effect: {per_id:?}"
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM effects").await, N);
    assert!(
        runner_report.duplicates as usize >= copies,
        "the inbox dropped {} repeats of {copies}",
        runner_report.duplicates
    );
}

/// Two runners of one consumer group, one aborted mid-stream (its task
/// aborted without shutdown: in-flight events unanswered; its consumer
/// leaves the group and its partitions go to the other runner): every
/// event has exactly one effect and each key's events are handled in order
/// (the handler checks each key's sequence and records any gap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_survives_an_aborted_runner() {
    const N: i64 = 600;
    const KEYS: i64 = 12;
    let (_pg, pool) = common::postgres(20).await;
    sqlx::raw_sql(
        "CREATE TABLE effects (key BIGINT NOT NULL, n BIGINT NOT NULL, runner TEXT NOT NULL);
         CREATE TABLE out_of_order (key BIGINT NOT NULL, n BIGINT NOT NULL, last BIGINT NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    PgInbox::new(pool.clone()).migrate().await.unwrap();
    let server = kafka().await;
    let publisher: Arc<dyn EventBus> = Arc::new(server.bus().await);

    let spawn_runner = |label: &'static str, bus: Arc<dyn EventBus>| {
        let pool = pool.clone();
        async move {
            Runner::builder(bus, "kgroup")
                .inbox(PgInbox::new(pool.clone()))
                .concurrency(8)
                .handler(Handler::new(
                    "seq",
                    "kgroup.>",
                    boxed(
                        move |e: Event<'_, Ev>,
                              tx: &mut sqlx::Transaction<'static, sqlx::Postgres>| {
                            Box::pin(async move {
                                let r: Result<(), sqlx::Error> = async {
                                    // Lock the key's row of effects: the
                                    // check sees the last committed one.
                                    sqlx::query("SELECT pg_advisory_xact_lock($1)")
                                        .bind(e.data.key)
                                        .execute(&mut **tx)
                                        .await?;
                                    let (last,): (i64,) = sqlx::query_as(
                                        "SELECT coalesce(max(n), -1) FROM effects WHERE key = $1",
                                    )
                                    .bind(e.data.key)
                                    .fetch_one(&mut **tx)
                                    .await?;
                                    let want = if last < 0 { e.data.key } else { last + KEYS };
                                    if e.data.n != want {
                                        sqlx::query("INSERT INTO out_of_order VALUES ($1, $2, $3)")
                                            .bind(e.data.key)
                                            .bind(e.data.n)
                                            .bind(last)
                                            .execute(&mut **tx)
                                            .await?;
                                    }
                                    sqlx::query("INSERT INTO effects VALUES ($1, $2, $3)")
                                        .bind(e.data.key)
                                        .bind(e.data.n)
                                        .bind(label)
                                        .execute(&mut **tx)
                                        .await?;
                                    Ok(())
                                }
                                .await;
                                r.into()
                            })
                        },
                    ),
                )
                // One event of a key at a time, in arrival order.
                .key(|e: &Ev| e.key.to_string()))
                .build()
                .spawn()
                .await
                .unwrap()
        }
    };
    // Each runner on a KafkaBus of its own, as two processes would be.
    let a = spawn_runner("a", Arc::new(server.bus().await)).await;
    let b = spawn_runner("b", Arc::new(server.bus().await)).await;

    // A steady stream, so that the abort lands mid-stream. One event per
    // publish (one record per producer batch): tansu 0.6.0 serves a fetch
    // from an offset inside a batch from the next batch on, skipping the
    // rest of it (Apache Kafka returns the batch holding the offset), which
    // a group resuming at a mid-batch committed offset would meet (see the
    // README's "On Kafka").
    let publishing = {
        let bus = publisher.clone();
        tokio::spawn(async move {
            for n in 0..N {
                let key = n % KEYS;
                let ev = Ev { key, n };
                // Ids the inbox keys on: one per event.
                bus.publish_envelope(
                    Envelope::new(format!("kgroup.k{key}"), serde_json::to_vec(&ev).unwrap())
                        .id(format!("ev-{n}")),
                )
                .await
                .unwrap();
            }
        })
    };
    wait::until_async(
        Duration::from_secs(60),
        "both runners to handle events",
        || async {
            count(&pool, "SELECT count(DISTINCT runner) FROM effects").await == 2
                && count(&pool, "SELECT count(*) FROM effects").await >= N / 4
        },
    )
    .await;
    let before = count(&pool, "SELECT count(*) FROM effects").await;
    a.abort();
    publishing.await.unwrap();
    wait::until_async(
        Duration::from_secs(120),
        "every event handled after the abort",
        || async { count(&pool, "SELECT count(DISTINCT (key, n)) FROM effects").await >= N },
    )
    .await;
    let b_report = b.shutdown().await;
    println!("consumer group: {before} effects when runner a was aborted; runner b {b_report:?}");
    assert!(before < N, "the abort came after the stream ended");
    let repeated: Vec<(i64, i64, i64)> =
        sqlx::query_as("SELECT key, n, count(*) FROM effects GROUP BY key, n HAVING count(*) <> 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        repeated.is_empty(),
        "events with more than one effect: {repeated:?}"
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM effects").await, N);
    let gaps: Vec<(i64, i64, i64)> = sqlx::query_as("SELECT key, n, last FROM out_of_order")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(
        gaps.is_empty(),
        "events handled out of their key's order (key, n, last handled): {gaps:?}"
    );
    assert!(
        count(
            &pool,
            "SELECT count(*) FROM effects WHERE runner = 'b' AND n > 0"
        )
        .await
            > 0,
        "runner b took nothing over"
    );
}
