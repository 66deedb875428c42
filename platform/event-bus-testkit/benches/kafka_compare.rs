//! `KafkaBus` side by side with raw rdkafka on the same broker, in one run.
//!
//! `cargo bench -p event-bus-testkit --features kafka --bench kafka_compare`
//!
//! The bench starts its own tansu broker (in-memory storage, see
//! [`event_bus_testkit::kafka_server`]) and measures three scenarios, each
//! against its equivalent written directly with rdkafka. The raw side sends
//! the same records the bus sends (key = subject, the `bus-subject` header)
//! with the same producer settings (idempotent, `acks=all`, `linger.ms=1`),
//! so the ratio is what the bus's own code costs:
//!
//! 1. 64 concurrent publishers sharing one `Arc<dyn EventBus>`, each
//!    awaiting every publish, vs 64 tasks awaiting
//!    `FutureProducer::send` on one producer.
//! 2. `publish_batch` of 500 envelopes vs 500 `FutureProducer::send`s
//!    joined, repeatedly.
//! 3. Durable consume + ack of events already stored: a new consumer group
//!    reads them all, answering each (bus: `EventBusExt::consume`, each
//!    delivery's `ack()` awaited; raw: a `StreamConsumer` committing each
//!    message's offset, `CommitMode::Async`), timed from the first message
//!    to the last (the group's join is left out on both sides).
//!
//! Every figure is the median of runs in which bus and raw alternate (and
//! swap who goes first); the ratio is bus ÷ raw throughput, higher is
//! better. Each run uses a fresh topic of 3 partitions, created by one
//! publish before the timing starts.
//!
//! Environment: `KAFKA_BENCH_MESSAGES` (messages per run, default 20 000),
//! `KAFKA_BENCH_REPS` (runs per side, default 5).

use event_bus::rdkafka::config::ClientConfig;
use event_bus::rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use event_bus::rdkafka::message::{Header, OwnedHeaders};
use event_bus::rdkafka::producer::{FutureProducer, FutureRecord};
use event_bus::{ConsumerConfig, Envelope, EventBus, EventBusExt, StartPosition};
use event_bus_testkit::kafka_server::KafkaServer;
use futures::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Payload size of every message.
const PAYLOAD: usize = 128;
/// Concurrent publishers in scenario 1.
const PUBLISHERS: usize = 64;
/// Envelopes per `publish_batch` in scenario 2.
const BATCH: usize = 500;
/// Subjects (record keys) per topic, spread over its partitions.
const KEYS: usize = 16;
/// How long a consumer may wait for one message before the run fails.
const RECV_TIMEOUT: Duration = Duration::from_secs(60);

static TOKENS: AtomicUsize = AtomicUsize::new(0);

/// A fresh first subject token (so a fresh topic) per run.
fn token(kind: &str) -> String {
    format!("{kind}{}", TOKENS.fetch_add(1, Ordering::Relaxed))
}

fn subject(token: &str, i: usize) -> String {
    format!("{token}.k{}", i % KEYS)
}

fn payload(i: usize) -> Vec<u8> {
    let mut v = vec![0xA5u8; PAYLOAD];
    v[..8].copy_from_slice(&(i as u64).to_le_bytes());
    v
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A raw producer with the bus's settings.
fn raw_producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "raw-bench")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("message.timeout.ms", "10000")
        .create()
        .expect("a raw producer")
}

/// The record the bus sends for `subject`, sent raw.
async fn raw_send(p: &FutureProducer, topic: &str, subject: &str, payload: &[u8]) {
    let headers = OwnedHeaders::new().insert(Header {
        key: "bus-subject",
        value: Some(subject.as_bytes()),
    });
    let record = FutureRecord::to(topic)
        .key(subject.as_bytes())
        .payload(payload)
        .headers(headers);
    p.send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("a raw publish");
}

/// Creates the topic of `token` with one publish (untimed).
async fn create(bus: &Arc<dyn EventBus>, token: &str) {
    bus.publish(&subject(token, 0), payload(usize::MAX))
        .await
        .expect("the publish creating the topic");
}

async fn bus_concurrent(bus: &Arc<dyn EventBus>, n: usize) -> f64 {
    let t = token("pubbus");
    create(bus, &t).await;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|_| {
            let (bus, next, t) = (bus.clone(), next.clone(), t.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    bus.publish(&subject(&t, i), payload(i))
                        .await
                        .expect("a bus publish");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn raw_concurrent(bus: &Arc<dyn EventBus>, raw: &FutureProducer, n: usize) -> f64 {
    let t = token("pubraw");
    create(bus, &t).await;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|_| {
            let (raw, next, t) = (raw.clone(), next.clone(), t.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    raw_send(&raw, &t, &subject(&t, i), &payload(i)).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn bus_batches(bus: &Arc<dyn EventBus>, n: usize) -> f64 {
    let t = token("batbus");
    create(bus, &t).await;
    let start = Instant::now();
    for from in (0..n).step_by(BATCH) {
        let envelopes = (from..(from + BATCH).min(n))
            .map(|i| Envelope::new(subject(&t, i), payload(i)))
            .collect();
        for r in bus.publish_batch(envelopes).await {
            r.expect("a batched publish");
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn raw_batches(bus: &Arc<dyn EventBus>, raw: &FutureProducer, n: usize) -> f64 {
    let t = token("batraw");
    create(bus, &t).await;
    let start = Instant::now();
    for from in (0..n).step_by(BATCH) {
        let sends = (from..(from + BATCH).min(n)).map(|i| {
            let t = &t;
            async move { raw_send(raw, t, &subject(t, i), &payload(i)).await }
        });
        futures::future::join_all(sends).await;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// A fresh topic holding `n` events (and the one that created it).
async fn stored(bus: &Arc<dyn EventBus>, kind: &str, n: usize) -> String {
    let t = token(kind);
    create(bus, &t).await;
    for from in (0..n).step_by(BATCH) {
        let envelopes = (from..(from + BATCH).min(n))
            .map(|i| Envelope::new(subject(&t, i), payload(i)))
            .collect();
        for r in bus.publish_batch(envelopes).await {
            r.expect("storing the events to consume");
        }
    }
    t
}

async fn bus_consume(bus: &Arc<dyn EventBus>, n: usize) -> f64 {
    let t = stored(bus, "conbus", n).await;
    let config = ConsumerConfig::new(format!("{t}-group"), format!("{t}.>"))
        .start(StartPosition::All)
        .open_timeout(RECV_TIMEOUT);
    let mut deliveries = bus.consume(config).await.expect("a durable consumer");
    let mut start = None;
    for _ in 0..=n {
        let d = tokio::time::timeout(RECV_TIMEOUT, deliveries.next())
            .await
            .expect("a delivery in time")
            .expect("the consumer keeps going")
            .expect("a delivery");
        start.get_or_insert_with(Instant::now);
        d.ack().await.expect("an ack");
    }
    let elapsed = start.unwrap().elapsed();
    n as f64 / elapsed.as_secs_f64()
}

async fn raw_consume(bus: &Arc<dyn EventBus>, bootstrap: &str, n: usize) -> f64 {
    let t = stored(bus, "conraw", n).await;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{t}-group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a raw consumer");
    consumer.subscribe(&[t.as_str()]).expect("subscribe");
    let mut start = None;
    for _ in 0..=n {
        let m = tokio::time::timeout(RECV_TIMEOUT, consumer.recv())
            .await
            .expect("a message in time")
            .expect("a message");
        start.get_or_insert_with(Instant::now);
        consumer
            .commit_message(&m, CommitMode::Async)
            .expect("a commit");
    }
    let elapsed = start.unwrap().elapsed();
    n as f64 / elapsed.as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn report(name: &str, bus: &mut [f64], raw: &mut [f64]) {
    let pairs: Vec<String> = bus
        .iter()
        .zip(raw.iter())
        .map(|(b, r)| format!("{:.2}", b / r))
        .collect();
    let (b, r) = (median(bus), median(raw));
    println!(
        "{name:<44} {b:>10.0} {r:>10.0}   {:.2}x   (per run: {})",
        b / r,
        pairs.join(" ")
    );
}

#[tokio::main]
async fn main() {
    let n = env_usize("KAFKA_BENCH_MESSAGES", 20_000);
    let reps = env_usize("KAFKA_BENCH_REPS", 5);
    let server = KafkaServer::start()
        .await
        .unwrap_or_else(|e| panic!("start the Kafka broker: {e}"));
    let bootstrap = server.bootstrap();
    let bus: Arc<dyn EventBus> = Arc::new(server.bus().await);
    let raw = raw_producer(&bootstrap);
    println!(
        "kafka bench: {n} events of {PAYLOAD} bytes per run, {reps} runs per side (alternating), \
         topics of 3 partitions, {KEYS} keys, on tansu {} (in-memory storage)",
        bootstrap
    );
    println!(
        "{:<44} {:>10} {:>10}   ratio (bus ÷ raw)",
        "throughput (events/s, medians)", "KafkaBus", "rdkafka"
    );
    let (mut b1, mut r1, mut b2, mut r2, mut b3, mut r3) = Default::default();
    let push = |v: &mut Vec<f64>, x: f64| v.push(x);
    for rep in 0..reps {
        if rep % 2 == 0 {
            push(&mut b1, bus_concurrent(&bus, n).await);
            push(&mut r1, raw_concurrent(&bus, &raw, n).await);
            push(&mut b2, bus_batches(&bus, n).await);
            push(&mut r2, raw_batches(&bus, &raw, n).await);
            push(&mut b3, bus_consume(&bus, n).await);
            push(&mut r3, raw_consume(&bus, &bootstrap, n).await);
        } else {
            push(&mut r1, raw_concurrent(&bus, &raw, n).await);
            push(&mut b1, bus_concurrent(&bus, n).await);
            push(&mut r2, raw_batches(&bus, &raw, n).await);
            push(&mut b2, bus_batches(&bus, n).await);
            push(&mut r3, raw_consume(&bus, &bootstrap, n).await);
            push(&mut b3, bus_consume(&bus, n).await);
        }
    }
    report("publish, 64 concurrent publishers", &mut b1, &mut r1);
    report("publish_batch of 500", &mut b2, &mut r2);
    report("durable consume + ack", &mut b3, &mut r3);
}
