//! Scenarios shared by the criterion bench and the side-by-side comparison:
//! each runs `n` messages of a 128-byte payload through the bus or through a
//! raw `tokio::sync::mpsc` channel with the same capacity, and returns the
//! elapsed time.

#![allow(dead_code)]

use event_bus::{Bytes, EventBus, EventBusExt, InMemoryBus, Subscription};
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub const PAYLOAD: usize = 128;
pub const CAPACITY: usize = 1024;

pub fn payload() -> Vec<u8> {
    vec![0xAB; PAYLOAD]
}

pub fn runtime(threads: usize) -> tokio::runtime::Runtime {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .unwrap()
    }
}

pub fn dyn_bus() -> Arc<dyn EventBus> {
    Arc::new(InMemoryBus::new())
}

/// Registers `n` live subscriptions that never match `perf.*` subjects:
/// a third exact, a third with `*`, a third with `>`.
pub async fn unrelated_subscriptions(bus: &Arc<dyn EventBus>, n: usize) -> Vec<Subscription> {
    let mut subs = Vec::with_capacity(n);
    for i in 0..n {
        let pattern = match i % 3 {
            0 => format!("other.{i}.exact"),
            1 => format!("other.*.{i}"),
            _ => format!("noise{i}.>"),
        };
        subs.push(bus.subscribe(&pattern).await.unwrap());
    }
    subs
}

/// 1 publisher → 1 subscriber through `Arc<dyn EventBus>`.
pub async fn bus_one_to_one(
    bus: Arc<dyn EventBus>,
    pattern: &str,
    subject: &'static str,
    n: usize,
) -> Duration {
    let mut sub = bus.subscribe(pattern).await.unwrap();
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut got = 0usize;
        while got < n {
            let m = sub.next().await.unwrap();
            got += 1;
            std::hint::black_box(&m);
        }
    });
    for _ in 0..n {
        bus.publish(subject, payload()).await.unwrap();
    }
    reader.await.unwrap();
    start.elapsed()
}

/// The same through the concrete `InMemoryBus` (no trait-object boxing).
pub async fn concrete_one_to_one(n: usize) -> Duration {
    let bus = InMemoryBus::new();
    let mut sub = bus.subscribe("perf.data").await.unwrap();
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        for _ in 0..n {
            std::hint::black_box(sub.next().await.unwrap());
        }
    });
    for _ in 0..n {
        bus.publish("perf.data", payload()).await.unwrap();
    }
    reader.await.unwrap();
    start.elapsed()
}

/// 1 sender → 1 receiver on a raw bounded mpsc channel.
pub async fn mpsc_one_to_one(n: usize) -> Duration {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CAPACITY);
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        for _ in 0..n {
            std::hint::black_box(rx.recv().await.unwrap());
        }
    });
    for _ in 0..n {
        tx.send(payload()).await.unwrap();
    }
    reader.await.unwrap();
    start.elapsed()
}

/// 1 publisher → `k` subscribers of one subject.
pub async fn bus_fan_out(k: usize, n: usize) -> Duration {
    let bus = dyn_bus();
    let mut readers = Vec::new();
    for _ in 0..k {
        let mut sub = bus.subscribe("fan.out").await.unwrap();
        readers.push(tokio::spawn(async move {
            for _ in 0..n {
                std::hint::black_box(sub.next().await.unwrap());
            }
        }));
    }
    let start = Instant::now();
    for _ in 0..n {
        bus.publish("fan.out", payload()).await.unwrap();
    }
    for r in readers {
        r.await.unwrap();
    }
    start.elapsed()
}

/// 1 sender → `k` raw mpsc channels sharing one payload buffer (`Bytes`, as
/// the bus shares one among its subscribers): the same work, no copies.
pub async fn mpsc_fan_out(k: usize, n: usize) -> Duration {
    let mut txs = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..k {
        let (tx, mut rx) = mpsc::channel::<Bytes>(CAPACITY);
        txs.push(tx);
        readers.push(tokio::spawn(async move {
            for _ in 0..n {
                std::hint::black_box(rx.recv().await.unwrap());
            }
        }));
    }
    let start = Instant::now();
    for _ in 0..n {
        // The bus takes the payload as a `Vec<u8>` and shares it as `Bytes`
        // (no copy): the same here.
        let p = Bytes::from(payload());
        for tx in &txs {
            tx.send(p.clone()).await.unwrap();
        }
    }
    for r in readers {
        r.await.unwrap();
    }
    start.elapsed()
}

/// Publishing to a subject nobody subscribes to.
pub async fn bus_no_subscriber(n: usize) -> Duration {
    let bus = dyn_bus();
    let _other = bus.subscribe("somebody.else").await.unwrap();
    let start = Instant::now();
    for _ in 0..n {
        bus.publish("nobody.listens", payload()).await.unwrap();
    }
    start.elapsed()
}

/// Per-message latency samples: publish then receive on the same task.
pub async fn bus_latency_same_thread(n: usize) -> Vec<Duration> {
    let bus = dyn_bus();
    let mut sub = bus.subscribe("lat.x").await.unwrap();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let p = payload();
        let t = Instant::now();
        bus.publish("lat.x", p).await.unwrap();
        std::hint::black_box(sub.next().await.unwrap());
        samples.push(t.elapsed());
    }
    samples
}

/// The same on a raw mpsc channel.
pub async fn mpsc_latency_same_thread(n: usize) -> Vec<Duration> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CAPACITY);
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let p = payload();
        let t = Instant::now();
        tx.send(p).await.unwrap();
        std::hint::black_box(rx.recv().await.unwrap());
        samples.push(t.elapsed());
    }
    samples
}

/// One-way latency across two OS threads (each its own runtime): half a
/// ping-pong round trip, per message.
pub fn bus_latency_cross_thread(n: usize) -> Vec<Duration> {
    let bus = dyn_bus();
    let rt = runtime(1);
    let (mut ping_sub, mut pong_sub) = rt.block_on(async {
        (
            bus.subscribe("lat.ping").await.unwrap(),
            bus.subscribe("lat.pong").await.unwrap(),
        )
    });
    let echo_bus = bus.clone();
    let echo = std::thread::spawn(move || {
        runtime(1).block_on(async move {
            for _ in 0..n {
                let m = ping_sub.next().await.unwrap();
                echo_bus
                    .publish("lat.pong", m.payload.to_vec())
                    .await
                    .unwrap();
            }
        })
    });
    let samples = rt.block_on(async {
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let p = payload();
            let t = Instant::now();
            bus.publish("lat.ping", p).await.unwrap();
            std::hint::black_box(pong_sub.next().await.unwrap());
            samples.push(t.elapsed() / 2);
        }
        samples
    });
    echo.join().unwrap();
    samples
}

/// The same on two raw mpsc channels.
pub fn mpsc_latency_cross_thread(n: usize) -> Vec<Duration> {
    let (ping_tx, mut ping_rx) = mpsc::channel::<Vec<u8>>(CAPACITY);
    let (pong_tx, mut pong_rx) = mpsc::channel::<Vec<u8>>(CAPACITY);
    let echo = std::thread::spawn(move || {
        runtime(1).block_on(async move {
            for _ in 0..n {
                let m = ping_rx.recv().await.unwrap();
                pong_tx.send(m).await.unwrap();
            }
        })
    });
    let samples = runtime(1).block_on(async {
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let p = payload();
            let t = Instant::now();
            ping_tx.send(p).await.unwrap();
            std::hint::black_box(pong_rx.recv().await.unwrap());
            samples.push(t.elapsed() / 2);
        }
        samples
    });
    echo.join().unwrap();
    samples
}

pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let idx = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[idx]
}

/// 1 publisher → 1 subscriber with the two pinned to two OS threads (each its
/// own single-threaded runtime), through `Arc<dyn EventBus>`.
pub fn bus_one_to_one_cross_thread(
    bus: Arc<dyn EventBus>,
    pattern: &str,
    subject: &'static str,
    n: usize,
) -> Duration {
    let rt = runtime(1);
    let mut sub = rt.block_on(bus.subscribe(pattern)).unwrap();
    let start = Instant::now();
    let reader = std::thread::spawn(move || {
        runtime(1).block_on(async move {
            for _ in 0..n {
                std::hint::black_box(sub.next().await.unwrap());
            }
        })
    });
    rt.block_on(async {
        for _ in 0..n {
            bus.publish(subject, payload()).await.unwrap();
        }
    });
    reader.join().unwrap();
    start.elapsed()
}

/// The same on a raw mpsc channel.
pub fn mpsc_one_to_one_cross_thread(n: usize) -> Duration {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CAPACITY);
    let start = Instant::now();
    let reader = std::thread::spawn(move || {
        runtime(1).block_on(async move {
            for _ in 0..n {
                std::hint::black_box(rx.recv().await.unwrap());
            }
        })
    });
    runtime(1).block_on(async {
        for _ in 0..n {
            tx.send(payload()).await.unwrap();
        }
    });
    reader.join().unwrap();
    start.elapsed()
}

/// A durable consumer on `work.>`: the publisher publishes `n` messages while
/// the consumer takes and acknowledges each.
pub async fn bus_consume_ack(n: usize) -> Duration {
    let bus = dyn_bus();
    let config = event_bus::ConsumerConfig::new("bench", "work.>").max_ack_pending(usize::MAX / 2);
    let mut consumer = bus.consume(config).await.unwrap();
    let start = Instant::now();
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for _ in 0..n {
                bus.publish("work.item", payload()).await.unwrap();
            }
        })
    };
    for _ in 0..n {
        let d = consumer.next().await.unwrap().unwrap();
        d.ack().await.unwrap();
    }
    publisher.await.unwrap();
    start.elapsed()
}
