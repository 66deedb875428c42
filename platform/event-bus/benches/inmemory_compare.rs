//! InMemoryBus side by side with a raw `tokio::sync::mpsc` channel, in one run.
//!
//! `cargo bench -p event-bus --bench inmemory_compare`
//!
//! Every figure is the median of several runs; the ratio column is
//! bus throughput / mpsc throughput (higher is better) or mpsc latency / bus
//! latency.

mod common;

use common::*;
use std::time::Duration;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn measure<F: FnMut() -> Duration>(reps: usize, mut f: F) -> Duration {
    median((0..reps).map(|_| f()).collect())
}

/// Runs `a` and `b` alternately `reps` times each (so that drift in the
/// machine's speed hits both alike); returns their medians.
fn measure_pair<A, B>(reps: usize, mut a: A, mut b: B) -> (Duration, Duration)
where
    A: FnMut() -> Duration,
    B: FnMut() -> Duration,
{
    let (mut da, mut db) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        da.push(a());
        db.push(b());
    }
    (median(da), median(db))
}

fn main() {
    let n: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let reps = 9;
    println!("InMemoryBus vs raw tokio::sync::mpsc (capacity {CAPACITY}), {PAYLOAD}-byte payload, {n} messages, median of {reps} runs");
    println!(
        "machine: {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!();
    println!(
        "{:<58} {:>14} {:>14} {:>7}",
        "throughput (msg/s)", "InMemoryBus", "tokio mpsc", "ratio"
    );

    let row = |name: &str, bus: Duration, raw: Duration, n: usize| {
        let (b, r) = (rate(n, bus), rate(n, raw));
        println!("{name:<58} {b:>14.0} {r:>14.0} {:>6.2}x", b / r);
    };

    {
        let rt = runtime(1);
        let label = "same thread";
        let (bus, raw) = measure_pair(
            reps,
            || rt.block_on(bus_one_to_one(dyn_bus(), "perf.data", "perf.data", n)),
            || rt.block_on(mpsc_one_to_one(n)),
        );
        row(
            &format!("1:1 exact subject, Arc<dyn EventBus>, {label}"),
            bus,
            raw,
            n,
        );
        let (concrete, raw) = measure_pair(
            reps,
            || rt.block_on(concrete_one_to_one(n)),
            || rt.block_on(mpsc_one_to_one(n)),
        );
        row(
            &format!("1:1 exact subject, InMemoryBus (concrete), {label}"),
            concrete,
            raw,
            n,
        );
        let (with_noise, raw) = measure_pair(
            reps,
            || {
                rt.block_on(async {
                    let bus = dyn_bus();
                    let _noise = unrelated_subscriptions(&bus, 1000).await;
                    bus_one_to_one(bus.clone(), "perf.>", "perf.data", n).await
                })
            },
            || rt.block_on(mpsc_one_to_one(n)),
        );
        row(
            &format!("1:1 on perf.> + 1,000 unrelated subs, {label}"),
            with_noise,
            raw,
            n,
        );
    }
    {
        let label = "cross-thread";
        let (bus, raw) = measure_pair(
            reps,
            || bus_one_to_one_cross_thread(dyn_bus(), "perf.data", "perf.data", n),
            || mpsc_one_to_one_cross_thread(n),
        );
        row(
            &format!("1:1 exact subject, Arc<dyn EventBus>, {label}"),
            bus,
            raw,
            n,
        );
        let (with_noise, raw) = measure_pair(
            reps,
            || {
                let bus = dyn_bus();
                let _noise = runtime(1).block_on(unrelated_subscriptions(&bus, 1000));
                bus_one_to_one_cross_thread(bus.clone(), "perf.>", "perf.data", n)
            },
            || mpsc_one_to_one_cross_thread(n),
        );
        row(
            &format!("1:1 on perf.> + 1,000 unrelated subs, {label}"),
            with_noise,
            raw,
            n,
        );
    }
    for (threads, label) in [(1usize, "same thread"), (2, "2 worker threads")] {
        let rt = runtime(threads);
        let fan_n = n / 10;
        let (bus_fan, raw_fan) = measure_pair(
            reps,
            || rt.block_on(bus_fan_out(10, fan_n)),
            || rt.block_on(mpsc_fan_out(10, fan_n)),
        );
        row(
            &format!("fan-out 1 -> 10 (deliveries/s), {label}"),
            bus_fan,
            raw_fan,
            fan_n * 10,
        );
    }
    {
        let rt = runtime(1);
        let cn = n / 5;
        let (consume, subscribe) = measure_pair(
            reps,
            || rt.block_on(bus_consume_ack(cn)),
            || rt.block_on(bus_one_to_one(dyn_bus(), "work.>", "work.item", cn)),
        );
        println!(
            "{:<58} {:>14.0} {:>14.0} {:>6.2}x   (vs plain subscribe on the same bus)",
            "durable consume + ack (same thread)",
            rate(cn, consume),
            rate(cn, subscribe),
            rate(cn, consume) / rate(cn, subscribe)
        );
    }
    {
        let rt = runtime(1);
        let d = measure(reps, || rt.block_on(bus_no_subscriber(n)));
        println!(
            "{:<58} {:>14.0} {:>14} {:>7}",
            "publish to a subject nobody subscribes to",
            rate(n, d),
            "-",
            ""
        );
    }

    println!();
    println!(
        "{:<58} {:>14} {:>14} {:>7}",
        "latency (ns)", "InMemoryBus", "tokio mpsc", "ratio"
    );
    let lat_n = 200_000;
    let rt = runtime(1);
    let mut bus = rt.block_on(bus_latency_same_thread(lat_n));
    let mut raw = rt.block_on(mpsc_latency_same_thread(lat_n));
    for (p, name) in [(0.5, "p50"), (0.99, "p99")] {
        let (b, r) = (percentile(&mut bus, p), percentile(&mut raw, p));
        println!(
            "{:<58} {:>14} {:>14} {:>6.2}x",
            format!("same-thread publish -> receive {name}"),
            b.as_nanos(),
            r.as_nanos(),
            r.as_secs_f64() / b.as_secs_f64()
        );
    }
    let cross_n = 50_000;
    let mut bus = bus_latency_cross_thread(cross_n);
    let mut raw = mpsc_latency_cross_thread(cross_n);
    for (p, name) in [(0.5, "p50"), (0.99, "p99")] {
        let (b, r) = (percentile(&mut bus, p), percentile(&mut raw, p));
        println!(
            "{:<58} {:>14} {:>14} {:>6.2}x",
            format!("cross-thread one-way (ping-pong / 2) {name}"),
            b.as_nanos(),
            r.as_nanos(),
            r.as_secs_f64() / b.as_secs_f64()
        );
    }
}
