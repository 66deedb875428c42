//! Criterion benchmarks of the in-memory bus, each beside its raw
//! `tokio::sync::mpsc` baseline. For a one-screen side-by-side table run
//! `cargo bench -p event-bus --bench inmemory_compare`.

mod common;

use common::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;

fn throughput(c: &mut Criterion) {
    let rt = runtime(2);
    let n = 100_000;
    let mut g = c.benchmark_group("1to1_exact");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("tokio_mpsc", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(mpsc_one_to_one(n))).sum())
    });
    g.bench_function("bus_dyn", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| rt.block_on(bus_one_to_one(dyn_bus(), "perf.data", "perf.data", n)))
                .sum()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("1to1_wildcard_1000_unrelated");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("bus_dyn", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    rt.block_on(async {
                        let bus = dyn_bus();
                        let _noise = unrelated_subscriptions(&bus, 1000).await;
                        bus_one_to_one(bus.clone(), "perf.>", "perf.data", n).await
                    })
                })
                .sum()
        })
    });
    g.finish();

    let fan_n = 20_000;
    let mut g = c.benchmark_group("fan_out_10");
    g.throughput(Throughput::Elements((fan_n * 10) as u64));
    g.bench_function("tokio_mpsc", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| rt.block_on(mpsc_fan_out(10, fan_n)))
                .sum()
        })
    });
    g.bench_function("bus_dyn", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| rt.block_on(bus_fan_out(10, fan_n)))
                .sum()
        })
    });
    g.finish();

    let rt1 = runtime(1);
    let mut g = c.benchmark_group("publish_no_subscriber");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("bus_dyn", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rt1.block_on(bus_no_subscriber(n))).sum())
    });
    g.finish();
}

fn latency(c: &mut Criterion) {
    let rt = runtime(1);
    let mut g = c.benchmark_group("same_thread_roundtrip");
    g.bench_function("tokio_mpsc", |b| {
        b.iter_custom(|iters| {
            rt.block_on(mpsc_latency_same_thread(iters as usize))
                .into_iter()
                .sum()
        })
    });
    g.bench_function("bus_dyn", |b| {
        b.iter_custom(|iters| {
            rt.block_on(bus_latency_same_thread(iters as usize))
                .into_iter()
                .sum()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(10);
    targets = throughput, latency
}
criterion_main!(benches);
