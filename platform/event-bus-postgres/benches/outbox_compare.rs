//! The outbox side by side with publishing directly, on NatsBus (a real
//! nats-server the bench starts) and PostgreSQL (`DATABASE_URL`, else a
//! throwaway server):
//!
//! * relay throughput: rows already committed in the outbox, published by
//!   the relay until the table is empty, against `publish_batch` of the
//!   same events (same size, same batch size) straight to the bus
//!   (target: the relay at 0.5x or better);
//! * commit-to-publish latency (commit returned → a live subscriber has
//!   the event), one event at a time, woken by `Outbox::commit` in the same
//!   process, by NOTIFY from another `Outbox`, and by polling alone (the
//!   default 100 ms interval);
//! * what an enqueue adds to a business transaction (an insert and a
//!   commit) at the median.
//!
//! Each throughput run also prints the CPU it cost per event in this
//! process (the relay or the direct publisher), nats-server and PostgreSQL
//! (all its processes): the three share the machine's cores.
//!
//! `cargo bench -p event-bus-postgres --bench outbox_compare`
//! (`OUTBOX_BENCH_EVENTS`, default 20,000; `OUTBOX_BENCH_REPS`, default 3;
//! `OUTBOX_BENCH_LATENCY_SAMPLES`, default 300; `OUTBOX_BENCH_ONLY=throughput`
//! stops after the relay-vs-direct throughput).

use event_bus::nats::StreamSpec;
use event_bus::{Envelope, EventBus};
use event_bus_postgres::{sqlx, Outbox, OutboxRelay};
use event_bus_testkit::cpu::cpu_time;
use event_bus_testkit::nats_server::NatsServer;
use event_bus_testkit::postgres::TestPostgres;
use futures::StreamExt;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BATCH: usize = 500;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn payload(i: usize) -> Vec<u8> {
    format!(r#"{{"id":{i},"name":"user-{i}","email":"user-{i}@example.com","padding":"........................"}}"#).into_bytes()
}

/// The processes whose CPU a run costs: this one (the client: relay or
/// direct publisher), nats-server, and PostgreSQL (the postmaster and its
/// children: backends, autovacuum, checkpointer, ...; not measured, zero,
/// with `DATABASE_URL`).
#[derive(Clone)]
struct Procs {
    nats: String,
    pg: Option<u32>,
}

/// CPU used so far: (client, nats-server, PostgreSQL).
fn cpu_now(p: &Procs) -> [Duration; 3] {
    [
        cpu_time("self"),
        cpu_time(&p.nats),
        p.pg.map_or(Duration::ZERO, pg_cpu),
    ]
}

/// PostgreSQL's CPU: its live processes (postmaster and children, from
/// schedstat) plus what its exited children used (the postmaster's
/// cutime + cstime, in clock ticks).
fn pg_cpu(postmaster: u32) -> Duration {
    let mut total = cpu_time(&postmaster.to_string());
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{postmaster}/stat")) {
        // Fields after the command's closing parenthesis: cutime and cstime
        // are the 14th and 15th of them (fields 16 and 17 of the line).
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks: u64 = f.get(13).and_then(|v| v.parse().ok()).unwrap_or(0)
                + f.get(14).and_then(|v| v.parse().ok()).unwrap_or(0);
            total += Duration::from_millis(ticks * 10);
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok());
            if ppid == Some(postmaster) {
                total += cpu_time(pid);
            }
        }
    }
    total
}

/// CPU µs per event since `before`: client, nats-server, PostgreSQL.
fn cpu_per_event(p: &Procs, before: [Duration; 3], n: usize) -> [f64; 3] {
    let now = cpu_now(p);
    [0, 1, 2].map(|i| now[i].saturating_sub(before[i]).as_secs_f64() * 1e6 / n as f64)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Enqueues `n` events in transactions of 100 (not timed), on `keys`
/// subjects (the ordering key) round robin.
async fn fill(outbox: &Outbox, pool: &PgPool, n: usize, subject: &str, keys: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let mut tx = pool.begin().await.unwrap();
        for &i in chunk {
            outbox
                .enqueue(
                    &mut tx,
                    Envelope::new(format!("{subject}.k{}", i % keys), payload(i)),
                )
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
}

/// The relay publishing `n` committed rows: events per second, and the
/// CPU µs per event (client, nats-server, PostgreSQL).
#[allow(clippy::too_many_arguments)] // the bench's setup, spelled out at each call
async fn relay_rate(
    outbox: &Outbox,
    pool: &PgPool,
    bus: &Arc<dyn EventBus>,
    procs: &Procs,
    n: usize,
    subject: &str,
    keys: usize,
    strict: bool,
) -> (f64, [f64; 3]) {
    fill(outbox, pool, n, subject, keys).await;
    let cpu = cpu_now(procs);
    let start = Instant::now();
    let relay = OutboxRelay::builder(outbox.clone(), bus.clone())
        .batch_size(BATCH)
        .strict_order(strict)
        .poll_interval(Duration::from_millis(1))
        .build()
        .unwrap()
        .spawn();
    while relay.report().published < n as u64 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let took = start.elapsed();
    let cpu = cpu_per_event(procs, cpu, n);
    let report = relay.shutdown().await;
    assert_eq!(report.published, n as u64, "{report:?}");
    (n as f64 / took.as_secs_f64(), cpu)
}

/// `publish_batch` of the same events, `BATCH` at a time, each with an id
/// as the relay's are: events per second, and the CPU µs per event
/// (client, nats-server, PostgreSQL).
async fn direct_rate(
    bus: &Arc<dyn EventBus>,
    procs: &Procs,
    n: usize,
    subject: &str,
) -> (f64, [f64; 3]) {
    let envelopes: Vec<Envelope> = (0..n)
        .map(|i| Envelope::new(subject, payload(i)).id(uuid::Uuid::now_v7().to_string()))
        .collect();
    let cpu = cpu_now(procs);
    let start = Instant::now();
    let mut left = envelopes.into_iter();
    loop {
        let batch: Vec<Envelope> = left.by_ref().take(BATCH).collect();
        if batch.is_empty() {
            break;
        }
        for r in bus.publish_batch(batch).await {
            r.unwrap();
        }
    }
    let took = start.elapsed();
    (n as f64 / took.as_secs_f64(), cpu_per_event(procs, cpu, n))
}

/// Commit-to-publish latencies of `samples` events, one at a time.
async fn latencies(
    producer: &Outbox,
    pool: &PgPool,
    bus: &Arc<dyn EventBus>,
    relay: OutboxRelay,
    samples: usize,
    subject: &str,
    wake_in_process: bool,
) -> Vec<Duration> {
    let mut events = bus.subscribe(subject).await.unwrap();
    let relay = relay.spawn();
    while !relay.is_leader() || relay.report().reads == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let mut tx = pool.begin().await.unwrap();
        producer
            .enqueue(&mut tx, Envelope::new(subject, payload(i)))
            .await
            .unwrap();
        if wake_in_process {
            producer.commit(tx).await.unwrap();
        } else {
            tx.commit().await.unwrap();
        }
        let committed = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("published within 10 s")
            .unwrap();
        out.push(committed.elapsed());
    }
    relay.shutdown().await;
    out.sort();
    out
}

/// Business transaction (insert + commit) with and without an enqueue:
/// medians.
async fn enqueue_overhead(outbox: &Outbox, pool: &PgPool, samples: usize) -> (Duration, Duration) {
    sqlx::raw_sql("CREATE TABLE IF NOT EXISTS users (id BIGINT PRIMARY KEY, email TEXT NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
    let mut plain = Vec::new();
    let mut with = Vec::new();
    for i in 0..samples * 2 {
        let start = Instant::now();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("INSERT INTO users (id, email) VALUES ($1, $2)")
            .bind(i as i64)
            .bind(format!("user-{i}@example.com"))
            .execute(&mut *tx)
            .await
            .unwrap();
        if i % 2 == 1 {
            outbox
                .enqueue(&mut tx, Envelope::new("bench.overhead", payload(i)))
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        if i % 2 == 1 {
            with.push(start.elapsed());
        } else {
            plain.push(start.elapsed());
        }
    }
    plain.sort();
    with.sort();
    (percentile(&plain, 0.5), percentile(&with, 0.5))
}

fn main() {
    let n = env_or("OUTBOX_BENCH_EVENTS", 20_000);
    let reps = env_or("OUTBOX_BENCH_REPS", 3).max(1);
    let samples = env_or("OUTBOX_BENCH_LATENCY_SAMPLES", 300).max(10);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let _server_keep;
        let _pg_keep;
        let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
        let nats = server.bus(&[StreamSpec::new("BENCH", ["bench.>"])]).await.unwrap();
        let bus: Arc<dyn EventBus> = Arc::new(nats);
        let pg = TestPostgres::start().await.unwrap_or_else(|e| panic!("{e}"));
        let procs = Procs {
            nats: server.pid().map_or("0".into(), |p| p.to_string()),
            pg: pg.pid(),
        };
        _server_keep = server;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(&pg.url())
            .await
            .unwrap();
        _pg_keep = pg;
        let outbox = Outbox::new(pool.clone());
        outbox.migrate().await.unwrap();

        println!("outbox bench: {n} events of ~{} bytes, batches of {BATCH}, {reps} runs each side (alternating), NatsBus on a local nats-server, PostgreSQL on this machine", payload(0).len());
        let mut relay_runs = Vec::new();
        let mut direct_runs = Vec::new();
        for rep in 0..reps {
            if rep % 2 == 0 {
                direct_runs.push(direct_rate(&bus, &procs, n, "bench.direct").await);
                relay_runs.push(relay_rate(&outbox, &pool, &bus, &procs, n, "bench.relay", 1, false).await);
            } else {
                relay_runs.push(relay_rate(&outbox, &pool, &bus, &procs, n, "bench.relay", 1, false).await);
                direct_runs.push(direct_rate(&bus, &procs, n, "bench.direct").await);
            }
        }
        let relay_rates: Vec<f64> = relay_runs.iter().map(|r| r.0).collect();
        let direct_rates: Vec<f64> = direct_runs.iter().map(|r| r.0).collect();
        let ratios: Vec<f64> = relay_rates.iter().zip(&direct_rates).map(|(r, d)| r / d).collect();
        let (r, d) = (median(relay_rates.clone()), median(direct_rates.clone()));
        println!("{:<44} {:>12} {:>12} {:>7}", "throughput (events/s, medians)", "relay", "direct", "ratio");
        println!("{:<44} {:>12.0} {:>12.0} {:>6.2}x", "publish_batch on NatsBus", r, d, r / d);
        println!("  runs: relay {relay_rates:.0?}, direct {direct_rates:.0?}");
        let lo = ratios.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().cloned().fold(0.0, f64::max);
        println!("  ratio per pair: {ratios:.2?}: median {:.2}x [{lo:.2}–{hi:.2}]", median(ratios.clone()));
        let cpu = |runs: &[(f64, [f64; 3])], i: usize| median(runs.iter().map(|r| r.1[i]).collect());
        println!("  CPU µs/event (medians)    client   nats-server   PostgreSQL   total");
        for (name, runs) in [("relay", &relay_runs), ("direct", &direct_runs)] {
            let [c, s, p] = [0, 1, 2].map(|i| cpu(runs, i));
            println!("  {name:<24} {c:>8.1} {s:>13.1} {p:>12.1} {:>7.1}", c + s + p);
        }
        if std::env::var("OUTBOX_BENCH_ONLY").is_ok_and(|v| v == "throughput") {
            return;
        }
        let strict_n = (n / 4).max(1000);
        for keys in [1, 100] {
            let (rate, _) = relay_rate(&outbox, &pool, &bus, &procs, strict_n, "bench.strict", keys, true).await;
            println!(
                "{:<44} {:>12.0} {:>12.0} {:>6.2}x",
                format!("strict_order, {keys} key(s), {strict_n} events"),
                rate,
                d,
                rate / d
            );
        }

        let relay_for = |outbox: &Outbox, listen: bool, poll: Duration| {
            OutboxRelay::builder(outbox.clone(), bus.clone())
                .poll_interval(poll)
                .listen(listen)
                .build()
                .unwrap()
        };
        println!("{:<44} {:>10} {:>10} {:>10}", "commit-to-publish latency", "p50", "p99", "max");
        let hour = Duration::from_secs(3600);
        let rows = [
            ("woken in process (Outbox::commit)", outbox.clone(), false, hour, true),
            ("woken by NOTIFY (another Outbox)", Outbox::new(pool.clone()).notify(true), true, hour, false),
            ("polling alone (default 100 ms)", Outbox::new(pool.clone()), false, Duration::from_millis(100), false),
        ];
        for (i, (name, producer, listen, poll, in_process)) in rows.into_iter().enumerate() {
            let relay = relay_for(&outbox, listen, poll);
            let l = latencies(&producer, &pool, &bus, relay, samples, &format!("bench.latency{i}"), in_process).await;
            println!(
                "{name:<44} {:>10.2?} {:>10.2?} {:>10.2?}",
                percentile(&l, 0.5),
                percentile(&l, 0.99),
                l[l.len() - 1]
            );
        }
        let (plain, with) = enqueue_overhead(&outbox, &pool, samples).await;
        println!(
            "business transaction (insert + commit), median: {plain:.2?} alone, {with:.2?} with an enqueue (+{:.2?})",
            with.saturating_sub(plain)
        );
    });
}
