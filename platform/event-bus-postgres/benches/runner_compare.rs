//! The runner's overhead per event, side by side with a hand-written
//! consume-and-ack loop on the same backend (the in-memory bus, so that the
//! figures measure the runner rather than the network):
//!
//! * hand-written loop: `consume` → decode JSON → handler → `ack`;
//! * the runner without an inbox (target: at least 0.9x the loop);
//! * the runner with the in-memory inbox;
//! * the runner with the PostgreSQL inbox (one transaction per event, a
//!   throwaway server or `DATABASE_URL`), beside the loop doing the same
//!   handler write in its own transaction.
//!
//! Each in-memory case is measured two ways: with a backlog published before
//! the clock starts (the consuming side alone, which is what the runner adds
//! to) and with a live publisher task.
//!
//! `cargo bench -p event-bus-postgres --bench runner_compare`
//! (`RUNNER_BENCH_ONLY=hand|runner` runs one backlog case once, for a profiler).

use event_bus::runner::{Event, Handler, MemoryInbox, Outcome, Runner};
use event_bus::{ConsumerConfig, EventBus, InMemoryBus};
use event_bus_postgres::PgInbox;
use futures::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(serde::Deserialize)]
struct Job {
    id: u64,
}

fn payload(i: u64) -> Vec<u8> {
    format!(r#"{{"id":{i},"name":"event-{i}","padding":"................................................................"}}"#).into_bytes()
}

async fn publish_all(bus: &Arc<dyn EventBus>, n: u64) {
    for i in 0..n {
        bus.publish("bench.job", payload(i)).await.unwrap();
    }
}

/// How the events arrive during the measurement.
#[derive(Clone, Copy, PartialEq)]
enum Feed {
    /// All `n` events are published before the clock starts: the figure is
    /// the consuming side alone (the runner's overhead per event).
    Backlog,
    /// A publisher task runs while the clock runs: the figure includes how
    /// the two tasks interleave on the 2 worker threads.
    Live,
}

/// Publishes `n` events now (`Backlog`) or from a task (`Live`, returned).
async fn feed(bus: &Arc<dyn EventBus>, n: u64, mode: Feed) -> Option<tokio::task::JoinHandle<()>> {
    match mode {
        Feed::Backlog => {
            publish_all(bus, n).await;
            None
        }
        Feed::Live => {
            let bus = bus.clone();
            Some(tokio::spawn(async move { publish_all(&bus, n).await }))
        }
    }
}

/// The hand-written loop runs in a task of its own, as a module would run it
/// (and as the runner runs).
async fn hand_loop(n: u64, mode: Feed) -> Duration {
    tokio::spawn(hand_loop_task(n, mode)).await.unwrap()
}

async fn hand_loop_task(n: u64, mode: Feed) -> Duration {
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let mut consumer = bus
        .consume(ConsumerConfig::new("hand", "bench.*").max_ack_pending(1 << 20))
        .await
        .unwrap();
    let backlog = mode == Feed::Backlog;
    if backlog {
        feed(&bus, n, mode).await;
    }
    let start = Instant::now();
    let publisher = if backlog {
        None
    } else {
        feed(&bus, n, mode).await
    };
    let mut sum = 0u64;
    for _ in 0..n {
        let d = consumer.next().await.unwrap().unwrap();
        let job: Job = serde_json::from_slice(&d.payload).unwrap();
        sum = sum.wrapping_add(job.id);
        d.ack().await.unwrap();
    }
    let took = start.elapsed();
    if let Some(p) = publisher {
        p.await.unwrap();
    }
    std::hint::black_box(sum);
    took
}

async fn with_runner<I: event_bus::runner::Inbox<Tx = T>, T: Send + 'static>(
    inbox: I,
    n: u64,
    concurrency: usize,
    mode: Feed,
) -> Duration {
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    // The runner's durable consumer (`<runner>-<handler>`) exists before the
    // backlog is published, and the runner attaches to it.
    drop(
        bus.consume(ConsumerConfig::new("bench-h", "bench.*"))
            .await
            .unwrap(),
    );
    let backlog = mode == Feed::Backlog;
    if backlog {
        feed(&bus, n, mode).await;
    }
    // Handled events, and a signal when all are.
    let done = Arc::new((AtomicU64::new(0), tokio::sync::Notify::new()));
    let d = done.clone();
    let start = Instant::now();
    let runner = Runner::builder(bus.clone(), "bench")
        .inbox(inbox)
        .concurrency(concurrency)
        .handler(Handler::new(
            "h",
            "bench.*",
            move |e: Event<'_, Job>, _tx: &mut T| {
                let d = d.clone();
                Box::pin(async move {
                    std::hint::black_box(e.data.id);
                    if d.0.fetch_add(1, Ordering::Relaxed) + 1 == n {
                        d.1.notify_one();
                    }
                    Outcome::Ack
                })
            },
        ))
        .build()
        .spawn()
        .await
        .unwrap();
    let publisher = if backlog {
        None
    } else {
        feed(&bus, n, mode).await
    };
    done.1.notified().await;
    let took = start.elapsed();
    if let Some(p) = publisher {
        p.await.unwrap();
    }
    runner.shutdown().await;
    took
}

/// In a task of its own, like the runner.
async fn pg_loop(pool: &sqlx::PgPool, n: u64) -> Duration {
    tokio::spawn(pg_loop_task(pool.clone(), n)).await.unwrap()
}

async fn pg_loop_task(pool: sqlx::PgPool, n: u64) -> Duration {
    let pool = &pool;
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let mut consumer = bus
        .consume(ConsumerConfig::new("pghand", "bench.*").max_ack_pending(1 << 20))
        .await
        .unwrap();
    let start = Instant::now();
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move { publish_all(&bus, n).await })
    };
    for _ in 0..n {
        let d = consumer.next().await.unwrap().unwrap();
        let job: Job = serde_json::from_slice(&d.payload).unwrap();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("INSERT INTO bench_effects (id) VALUES ($1)")
            .bind(job.id as i64)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        d.ack().await.unwrap();
    }
    publisher.await.unwrap();
    start.elapsed()
}

async fn pg_runner(pool: &sqlx::PgPool, n: u64, concurrency: usize) -> Duration {
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let done = Arc::new(AtomicU64::new(0));
    let all_done = Arc::new(tokio::sync::Notify::new());
    let (d, ad) = (done.clone(), all_done.clone());
    let inbox = PgInbox::new(pool.clone());
    inbox.migrate().await.unwrap();
    let runner = Runner::builder(bus.clone(), format!("pgbench{concurrency}"))
        .inbox(inbox)
        .concurrency(concurrency)
        .handler(Handler::new(
            "h",
            "bench.*",
            move |e: Event<'_, Job>, tx: &mut sqlx::Transaction<'static, sqlx::Postgres>| {
                let (d, ad) = (d.clone(), ad.clone());
                Box::pin(async move {
                    let r = sqlx::query("INSERT INTO bench_effects (id) VALUES ($1)")
                        .bind(e.data.id as i64)
                        .execute(&mut **tx)
                        .await;
                    // Counted once the unit of work is about to commit (the
                    // commit itself is a few microseconds past the clock).
                    if r.is_ok() && d.fetch_add(1, Ordering::Relaxed) + 1 == n {
                        ad.notify_one();
                    }
                    r.map(|_| ()).into()
                })
            },
        ))
        .build()
        .spawn()
        .await
        .unwrap();
    let start = Instant::now();
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move { publish_all(&bus, n).await })
    };
    all_done.notified().await;
    let took = start.elapsed();
    publisher.await.unwrap();
    runner.shutdown().await;
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let n: u64 = std::env::var("RUNNER_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    // For profiling (e.g. under callgrind): one backlog run of one case.
    if let Ok(only) = std::env::var("RUNNER_BENCH_ONLY") {
        let d = match only.as_str() {
            "hand" => rt.block_on(hand_loop(n, Feed::Backlog)),
            "runner" => rt.block_on(with_runner(
                event_bus::runner::NoInbox,
                n,
                16,
                Feed::Backlog,
            )),
            other => panic!("RUNNER_BENCH_ONLY={other:?}: expected \"hand\" or \"runner\""),
        };
        println!("{only}: {n} events in {d:?} ({:.0}/s)", rate(n, d));
        return;
    }
    let reps = 5;
    println!("event runner vs a hand-written consume+decode+ack loop, InMemoryBus, {n} events, median of {reps} alternated runs, 2 worker threads");
    println!(
        "backlog: the events are published before the clock starts (the consuming side alone);"
    );
    println!(
        "live: a publisher task runs meanwhile (includes how the two tasks share the 2 threads)"
    );
    println!();
    println!(
        "{:<52} {:>12} {:>12} {:>7}",
        "events/s", "runner", "hand loop", "ratio"
    );
    for mode in [Feed::Backlog, Feed::Live] {
        let label = if mode == Feed::Backlog {
            "backlog"
        } else {
            "live"
        };
        let (mut hand, mut plain, mut mem, mut plain1) = (vec![], vec![], vec![], vec![]);
        for _ in 0..reps {
            hand.push(rt.block_on(hand_loop(n, mode)));
            plain.push(rt.block_on(with_runner(event_bus::runner::NoInbox, n, 16, mode)));
            plain1.push(rt.block_on(with_runner(event_bus::runner::NoInbox, n, 1, mode)));
            mem.push(rt.block_on(with_runner(MemoryInbox::default(), n, 16, mode)));
        }
        let hand = median(hand);
        for (name, d) in [
            ("no inbox, concurrency 16", median(plain)),
            ("no inbox, concurrency 1", median(plain1)),
            ("in-memory inbox, concurrency 16", median(mem)),
        ] {
            let name = format!("{label}: runner, {name}");
            println!(
                "{name:<52} {:>12.0} {:>12.0} {:>6.2}x",
                rate(n, d),
                rate(n, hand),
                rate(n, d) / rate(n, hand)
            );
        }
    }

    let pg_n = (n / 20).max(1000);
    let pg = rt
        .block_on(event_bus_testkit::postgres::TestPostgres::start())
        .unwrap_or_else(|e| panic!("{e}"));
    let pool = rt.block_on(async {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(16)
            .connect(&pg.url())
            .await
            .unwrap();
        sqlx::raw_sql("CREATE TABLE bench_effects (id BIGINT NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        pool
    });
    let hand_pg = rt.block_on(pg_loop(&pool, pg_n));
    let run_pg1 = rt.block_on(pg_runner(&pool, pg_n, 1));
    let run_pg8 = rt.block_on(pg_runner(&pool, pg_n, 8));
    println!();
    println!("with PostgreSQL ({pg_n} events; the loop writes the same row in its own transaction, without an inbox)");
    for (name, d) in [
        ("runner, PostgreSQL inbox, concurrency 1", run_pg1),
        ("runner, PostgreSQL inbox, concurrency 8", run_pg8),
    ] {
        println!(
            "{name:<52} {:>12.0} {:>12.0} {:>6.2}x",
            rate(pg_n, d),
            rate(pg_n, hand_pg),
            rate(pg_n, d) / rate(pg_n, hand_pg)
        );
    }
}
