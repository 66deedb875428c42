//! InMemoryBus beside a peer's in-memory broker, 1:1, in one run.
//!
//! `cargo run --release --manifest-path bench-peers/Cargo.toml`
//!
//! One publisher, one subscriber of one exact name, 128-byte payloads
//! (`PEER_BENCH_MESSAGES`, default 1,000,000), median of 9 alternated runs,
//! on a current-thread runtime ("same thread": publisher and reader tasks
//! interleave) and on two worker threads ("cross-thread"):
//!
//! * InMemoryBus through `Arc<dyn EventBus>` (`publish` then `next` on a
//!   `subscribe` stream: bounded queues, 1,024 per subscriber);
//! * RustStream 0.7's `MemoryBroker` (its `publisher().publish` and a
//!   subscriber's `stream()`, each delivery dropped, which settles it;
//!   unbounded queues);
//! * raw tokio channels as the floor: `mpsc::unbounded_channel` (what the
//!   peer's queues are) and `mpsc::channel(1024)`.

use event_bus::{EventBus, InMemoryBus};
use futures::StreamExt;
use ruststream::memory::MemoryBroker;
use ruststream::{Broker, BytesMut, OutgoingMessage, Publisher, Subscribe, Subscriber};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PAYLOAD: usize = 128;
/// The peer's publish takes a `BytesMut`: made from these bytes (one
/// allocation and a copy, as `payload()` is one allocation and a fill).
static BYTES: [u8; PAYLOAD] = [0xAB; PAYLOAD];

fn payload() -> Vec<u8> {
    vec![0xAB; PAYLOAD]
}

async fn event_bus(n: usize) -> Duration {
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let mut sub = bus.subscribe("perf.data").await.unwrap();
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        for _ in 0..n {
            let m = sub.next().await.unwrap();
            assert_eq!(m.payload.len(), PAYLOAD);
            black_box(m);
        }
    });
    for _ in 0..n {
        bus.publish("perf.data", payload()).await.unwrap();
    }
    reader.await.unwrap();
    start.elapsed()
}

async fn ruststream(n: usize) -> Duration {
    let broker = MemoryBroker::new().connect().await.unwrap();
    let mut sub = broker.subscribe("perf.data").await.unwrap();
    let publisher = broker.publisher();
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut stream = std::pin::pin!(sub.stream());
        for _ in 0..n {
            let m = stream.next().await.unwrap().unwrap();
            assert_eq!(ruststream::IncomingMessage::payload(&m).len(), PAYLOAD);
            black_box(m);
        }
    });
    for _ in 0..n {
        publisher
            .publish(
                OutgoingMessage::with_payload("perf.data", BytesMut::from(&BYTES[..])),
                None,
            )
            .await
            .unwrap();
    }
    reader.await.unwrap();
    start.elapsed()
}

async fn unbounded(n: usize) -> Duration {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        for _ in 0..n {
            black_box(rx.recv().await.unwrap());
        }
    });
    for _ in 0..n {
        tx.send(payload()).unwrap();
    }
    reader.await.unwrap();
    start.elapsed()
}

async fn bounded(n: usize) -> Duration {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1024);
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        for _ in 0..n {
            black_box(rx.recv().await.unwrap());
        }
    });
    for _ in 0..n {
        tx.send(payload()).await.unwrap();
    }
    reader.await.unwrap();
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::var("PEER_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let reps = 9;
    println!("1:1, one exact name, {PAYLOAD}-byte payloads, {n} messages, median of {reps} alternated runs (msg/s)");
    println!(
        "{:<14} {:>14} {:>14} {:>14} {:>14} {:>16}",
        "runtime", "InMemoryBus", "RustStream", "mpsc unbnd", "mpsc 1024", "bus / RustStream"
    );
    for (label, threads) in [("same thread", 1), ("cross-thread", 2)] {
        let rt = if threads == 1 {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .build()
                .unwrap()
        };
        let mut times: [Vec<Duration>; 4] = Default::default();
        for rep in 0..reps {
            let mut order = [0, 1, 2, 3];
            if rep % 2 == 1 {
                order.reverse();
            }
            for side in order {
                let d = match side {
                    0 => rt.block_on(event_bus(n)),
                    1 => rt.block_on(ruststream(n)),
                    2 => rt.block_on(unbounded(n)),
                    _ => rt.block_on(bounded(n)),
                };
                times[side].push(d);
            }
        }
        let rates: Vec<f64> = times
            .into_iter()
            .map(|t| n as f64 / median(t).as_secs_f64())
            .collect();
        println!(
            "{label:<14} {:>14.0} {:>14.0} {:>14.0} {:>14.0} {:>15.2}x",
            rates[0],
            rates[1],
            rates[2],
            rates[3],
            rates[0] / rates[1]
        );
    }
}
