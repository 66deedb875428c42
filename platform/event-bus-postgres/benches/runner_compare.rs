//! The runner's overhead per event, side by side with a hand-written
//! consume-and-ack loop on the same backend (the in-memory bus, so that the
//! figures measure the runner rather than the network):
//!
//! * hand-written loop: `consume` → decode JSON → handler → `ack`, the handler
//!   written in the same form as the runner's (a call, an `async fn`, an
//!   async block boxed per event);
//! * the runner without an inbox (target: at least 0.8x the loop);
//! * the runner with the in-memory inbox;
//! * the runner with the PostgreSQL inbox (one transaction per event, a
//!   throwaway server or `DATABASE_URL`), beside a loop doing the same
//!   handler write in its own transaction: one at a time against the
//!   runner at concurrency 1, eight at a time (`for_each_concurrent(8)`)
//!   against the runner at concurrency 8;
//! * on NatsBus (a real nats-server the bench starts): loop and runner each
//!   read a stored backlog with a consumer of their own.
//!
//! Each in-memory case is measured two ways: with a backlog published before
//! the clock starts (the consuming side alone, which is what the runner adds
//! to) and with a live publisher task.
//!
//! Every row prints the median rate of each side and the ratio of those two
//! medians (runner / loop), so the ratio can be checked against its row.
//! Runs alternate which side goes first.
//!
//! * the runner with one layer that does nothing against the same runner
//!   without it (what a user layer costs by itself; target < 3 %).
//!
//! `cargo bench -p event-bus-postgres --bench runner_compare`
//! (`RUNNER_BENCH_EVENTS`, default 100 000, and `RUNNER_BENCH_REPS`, default 7;
//! `RUNNER_BENCH_ONLY=<text>` runs only the backlog cases whose names start with
//! it, for a profiler; `layer` runs only the layer rows; `alone-plain`,
//! `alone-layer` and their `-sync` forms run one runner alone, for an
//! instruction count).

use event_bus::runner::{
    boxed, Attempt, Event, Handler, Layer, MemoryInbox, Next, Outcome, Runner, State,
};
use event_bus::{ConsumerConfig, EventBus, EventBusExt, InMemoryBus};
use event_bus_postgres::PgInbox;
use futures::future::BoxFuture;
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

/// Events per chunk in [`backlog_pair`]: small enough to stay in the caches.
const CHUNK: u64 = 1000;

/// Handled events, and a signal after every `step` of them.
type Done = (AtomicU64, tokio::sync::Notify);

/// The handler's work, the same in the loop and in the runner: count the
/// event, and signal after every `step` (the runner's measurement needs
/// the signal; the loop does the same work so that only the machinery
/// around the handler differs).
fn handle_job(done: &Done, job: &Job, step: u64) {
    std::hint::black_box(job.id);
    if (done.0.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(step) {
        done.1.notify_one();
    }
}

/// The loop: consume, decode, call the handler written as `shape` (the
/// runner's handler in the same form: a plain call, an `async fn` awaited,
/// or an async block boxed per event), ack.
async fn handle_by_hand(
    consumer: &mut event_bus::ConsumerStream,
    count: u64,
    done: &Done,
    shape: Shape,
) {
    for _ in 0..count {
        let d = consumer.next().await.unwrap().unwrap();
        let job: Job = serde_json::from_slice(&d.payload).unwrap();
        let outcome = match shape {
            Shape::Sync => {
                handle_job(done, &job, count);
                Outcome::Ack
            }
            Shape::AsyncFn => handle_job_async(done, &job, count).await,
            Shape::Async => {
                let handler: std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>> =
                    Box::pin(async move {
                        handle_job(done, &job, count);
                        Outcome::Ack
                    });
                handler.await
            }
        };
        assert!(matches!(outcome, Outcome::Ack));
        d.ack().await.unwrap();
    }
}

/// [`handle_job`] as the loop's `async fn` handler.
async fn handle_job_async(done: &Done, job: &Job, step: u64) -> Outcome {
    handle_job(done, job, step);
    Outcome::Ack
}

/// How the runner's handler is written.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// A sync closure: returns its outcome, like the loop's `handle_job`.
    Sync,
    /// A `boxed` closure: an async block, boxed per event.
    Async,
    /// An `async fn` taking `State`, kept without a box.
    AsyncFn,
}

/// The bench's handler as an `async fn`.
async fn handle_job_fn<T: Send>(
    State(s): State<'_, (Arc<Done>, u64)>,
    e: Event<'_, Job>,
    _tx: &mut T,
) -> Outcome {
    handle_job(&s.0, e.data, s.1);
    Outcome::Ack
}

/// Adds the bench's handler for `bench.*`, written as `shape`: it runs
/// [`handle_job`] (counting into `done`, signalling every `step` events).
fn with_bench_handler<I: event_bus::runner::Inbox<Tx = T>, T: Send + 'static, S>(
    builder: event_bus::runner::RunnerBuilder<I, S>,
    shape: Shape,
    done: &Arc<Done>,
    step: u64,
) -> event_bus::runner::RunnerBuilder<I, event_bus::runner::WithHandlers> {
    match shape {
        Shape::Sync => {
            let d = done.clone();
            builder.handler(Handler::new(
                "h",
                "bench.*",
                move |e: Event<'_, Job>, _tx: &mut T| {
                    handle_job(&d, e.data, step);
                    Outcome::Ack
                },
            ))
        }
        Shape::Async => {
            // A clone per event: a boxed closure cannot lend its captures to
            // the future (the state shape borrows instead).
            let d = done.clone();
            builder.handler(Handler::new(
                "h",
                "bench.*",
                boxed(move |e: Event<'_, Job>, _tx: &mut T| {
                    let d = d.clone();
                    Box::pin(async move {
                        handle_job(&d, e.data, step);
                        Outcome::Ack
                    })
                }),
            ))
        }
        Shape::AsyncFn => builder.handler(
            Handler::new("h", "bench.*", handle_job_fn::<T>).with_state((done.clone(), step)),
        ),
    }
}

/// A runner with one handler for `bench.*` that counts what it handled and
/// signals after every `step` events.
async fn start_runner<I: event_bus::runner::Inbox<Tx = T>, T: Send + 'static>(
    bus: &Arc<dyn EventBus>,
    inbox: I,
    concurrency: usize,
    step: u64,
    shape: Shape,
    layered: bool,
) -> (
    event_bus::runner::RunnerHandle,
    Arc<(AtomicU64, tokio::sync::Notify)>,
) {
    let done: Arc<Done> = Arc::default();
    let mut builder = Runner::builder(bus.clone(), "bench")
        .inbox(inbox)
        .concurrency(concurrency);
    if layered {
        builder = builder.layer(NoOp);
    }
    let builder = with_bench_handler(builder, shape, &done, step);
    let runner = builder.build().spawn().await.unwrap();
    (runner, done)
}

/// A layer that does nothing but run the rest of the stack: what a layer
/// costs by itself.
struct NoOp;

impl Layer for NoOp {
    fn call<'a>(&'a self, _attempt: &'a Attempt<'a>, next: Next<'a>) -> BoxFuture<'a, Outcome> {
        Box::pin(next.run())
    }
}

/// A runner with one no-op layer against the same runner without, each on
/// a bus of its own, chunk by chunk as in [`backlog_pair`]: a chunk is
/// published (untimed) to one bus, its runner timed until it has handled
/// it, then the same on the other bus (order alternating). Returns
/// (without, with) times.
async fn layer_pair(n: u64, shape: Shape) -> (Duration, Duration) {
    let plain_bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let layered_bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let inbox = || event_bus::runner::NoInbox;
    let (plain, plain_done) = start_runner(&plain_bus, inbox(), 16, CHUNK, shape, false).await;
    let (layered, layered_done) = start_runner(&layered_bus, inbox(), 16, CHUNK, shape, true).await;
    let time = async |bus: &Arc<dyn EventBus>, done: &Arc<Done>| {
        publish_all(bus, CHUNK).await;
        let start = Instant::now();
        done.1.notified().await;
        start.elapsed()
    };
    let (mut without, mut with) = (Duration::ZERO, Duration::ZERO);
    for chunk in 0..n / CHUNK {
        if chunk % 2 == 0 {
            without += time(&plain_bus, &plain_done).await;
            with += time(&layered_bus, &layered_done).await;
        } else {
            with += time(&layered_bus, &layered_done).await;
            without += time(&plain_bus, &plain_done).await;
        }
    }
    assert_eq!(plain_done.0.load(Ordering::Relaxed), n / CHUNK * CHUNK);
    assert_eq!(layered_done.0.load(Ordering::Relaxed), n / CHUNK * CHUNK);
    plain.shutdown().await;
    layered.shutdown().await;
    (without, with)
}

/// For a profiler (`RUNNER_BENCH_ONLY=alone-plain|alone-layer[-sync]`): one
/// runner alone handling a backlog of `n` events, with a no-op layer or
/// without; instruction counts of two event counts give the cost per event.
async fn runner_alone(n: u64, shape: Shape, layered: bool) {
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let (runner, done) =
        start_runner(&bus, event_bus::runner::NoInbox, 16, n, shape, layered).await;
    publish_all(&bus, n).await;
    done.1.notified().await;
    runner.shutdown().await;
}

/// The consuming side alone, runner and loop interleaved chunk by chunk (on
/// a current-thread runtime): each chunk of [`CHUNK`] events is published
/// (untimed) to one bus, where the loop's consumer and the runner's both get
/// it; then the loop handles it, then the runner (or the other way round,
/// alternating), each timed. Interleaving at this scale cancels the machine's
/// drift, which moved whole runs by up to 2x. Returns (loop, runner) times.
async fn backlog_pair<I: event_bus::runner::Inbox<Tx = T>, T: Send + 'static>(
    inbox: I,
    n: u64,
    concurrency: usize,
    shape: Shape,
) -> (Duration, Duration) {
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let mut consumer = hand_consumer(&bus, "hand").await;
    let (runner, done) = start_runner(&bus, inbox, concurrency, CHUNK, shape, false).await;
    let hand_done = Done::default();
    let (mut hand, mut run) = (Duration::ZERO, Duration::ZERO);
    for chunk in 0..n / CHUNK {
        publish_all(&bus, CHUNK).await;
        let time_hand = async |consumer: &mut event_bus::ConsumerStream| {
            // The runner must not run meanwhile (the loop never waits).
            let before = done.0.load(Ordering::Relaxed);
            let start = Instant::now();
            handle_by_hand(consumer, CHUNK, &hand_done, shape).await;
            let took = start.elapsed();
            assert_eq!(
                done.0.load(Ordering::Relaxed),
                before,
                "the runner ran inside the loop's timing"
            );
            took
        };
        let time_runner = async || {
            let start = Instant::now();
            done.1.notified().await;
            start.elapsed()
        };
        if chunk % 2 == 0 {
            hand += time_hand(&mut consumer).await;
            run += time_runner().await;
        } else {
            run += time_runner().await;
            hand += time_hand(&mut consumer).await;
        }
    }
    assert_eq!(done.0.load(Ordering::Relaxed), n / CHUNK * CHUNK);
    assert_eq!(hand_done.0.load(Ordering::Relaxed), n / CHUNK * CHUNK);
    runner.shutdown().await;
    (hand, run)
}

/// The hand-written loop's durable consumer on `bench.*` (no limit on
/// deliveries awaiting their ack).
async fn hand_consumer(bus: &Arc<dyn EventBus>, name: &str) -> event_bus::ConsumerStream {
    bus.consume(ConsumerConfig::new(name, "bench.*").max_ack_pending(1 << 20))
        .await
        .unwrap()
}

/// Publishes `n` events from a task.
fn spawn_publisher(bus: &Arc<dyn EventBus>, n: u64) -> tokio::task::JoinHandle<()> {
    let bus = bus.clone();
    tokio::spawn(async move { publish_all(&bus, n).await })
}

/// With a publisher task running: the loop in a task of its own, as a module
/// would run it (and as the runner runs).
async fn live_hand(n: u64, shape: Shape) -> Duration {
    tokio::spawn(async move {
        let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
        let mut consumer = hand_consumer(&bus, "hand").await;
        let start = Instant::now();
        let publisher = spawn_publisher(&bus, n);
        handle_by_hand(&mut consumer, n, &Done::default(), shape).await;
        let took = start.elapsed();
        publisher.await.unwrap();
        took
    })
    .await
    .unwrap()
}

/// With a publisher task running: the runner.
async fn live_runner<I: event_bus::runner::Inbox<Tx = T>, T: Send + 'static>(
    inbox: I,
    n: u64,
    concurrency: usize,
    shape: Shape,
) -> Duration {
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let (runner, done) = start_runner(&bus, inbox, concurrency, n, shape, false).await;
    let start = Instant::now();
    let publisher = spawn_publisher(&bus, n);
    done.1.notified().await;
    let took = start.elapsed();
    publisher.await.unwrap();
    runner.shutdown().await;
    took
}

/// In a task of its own, like the runner.
async fn pg_loop(pool: &sqlx::PgPool, n: u64, concurrency: usize) -> Duration {
    tokio::spawn(pg_loop_task(pool.clone(), n, concurrency))
        .await
        .unwrap()
}

/// The hand-written loop with PostgreSQL: consume, decode, write the effect
/// row in a transaction, commit, ack; `concurrency` events at a time
/// (`for_each_concurrent`, as one would write it by hand).
async fn pg_loop_task(pool: sqlx::PgPool, n: u64, concurrency: usize) -> Duration {
    let pool = &pool;
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let mut consumer = hand_consumer(&bus, "pghand").await;
    let start = Instant::now();
    let publisher = spawn_publisher(&bus, n);
    consumer
        .by_ref()
        .take(n as usize)
        .for_each_concurrent(concurrency, |d| async move {
            let d = d.unwrap();
            let job: Job = serde_json::from_slice(&d.payload).unwrap();
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("INSERT INTO bench_effects (id) VALUES ($1)")
                .bind(job.id as i64)
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            d.ack().await.unwrap();
        })
        .await;
    let took = start.elapsed();
    publisher.await.unwrap();
    took
}

/// What the PostgreSQL runner's handler counts, and when it signals.
struct PgDone {
    done: AtomicU64,
    all_done: tokio::sync::Notify,
    n: u64,
}

/// The PostgreSQL runner's handler: the effect row, in the inbox's
/// transaction.
async fn insert_effect(
    s: State<'_, Arc<PgDone>>,
    e: Event<'_, Job>,
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
) -> Outcome {
    let r = sqlx::query("INSERT INTO bench_effects (id) VALUES ($1)")
        .bind(e.data.id as i64)
        .execute(&mut **tx)
        .await;
    // Signalled once the last unit of work is about to commit; the clock
    // then waits for the runner's report to count every event acked.
    if r.is_ok() && s.done.fetch_add(1, Ordering::Relaxed) + 1 == s.n {
        s.all_done.notify_one();
    }
    r.map(|_| ()).into()
}

async fn pg_runner(pool: &sqlx::PgPool, n: u64, concurrency: usize, run: usize) -> Duration {
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let state = Arc::new(PgDone {
        done: AtomicU64::new(0),
        all_done: tokio::sync::Notify::new(),
        n,
    });
    let inbox = PgInbox::new(pool.clone());
    inbox.migrate().await.unwrap();
    // A name per run: each run's bus assigns the same message ids again.
    let runner = Runner::builder(bus.clone(), format!("pgbench{concurrency}-{run}"))
        .inbox(inbox)
        .concurrency(concurrency)
        .handler(Handler::new("h", "bench.*", insert_effect).with_state(state.clone()))
        .build()
        .spawn()
        .await
        .unwrap();
    let start = Instant::now();
    let publisher = spawn_publisher(&bus, n);
    state.all_done.notified().await;
    // Like the loop's clock, the runner's includes the last commits and acks.
    while runner.report().processed < n {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let took = start.elapsed();
    publisher.await.unwrap();
    runner.shutdown().await;
    took
}

/// Stores `n` events on `bench.job` (untimed), in batches.
async fn fill_nats(bus: &Arc<dyn EventBus>, n: u64) {
    let mut i = 0;
    while i < n {
        let batch: Vec<event_bus::Envelope> = (i..(i + 500).min(n))
            .map(|j| event_bus::Envelope::new("bench.job", payload(j)))
            .collect();
        i += batch.len() as u64;
        for r in bus.publish_batch(batch).await {
            r.unwrap();
        }
    }
}

/// On NatsBus: the loop and the runner each read the whole stored backlog
/// with a consumer of their own (the loop's with a wide ack window).
async fn nats_pair(
    bus: &Arc<dyn EventBus>,
    run: usize,
    n: u64,
    concurrency: usize,
    window: Option<usize>,
    shape: Shape,
) -> (Duration, Duration) {
    // Alternate which side reads first.
    if run.is_multiple_of(2) {
        let runner = nats_runner(bus, run, n, concurrency, window, shape).await;
        let hand = nats_hand(bus, run, n, shape).await;
        return (hand, runner);
    }
    let hand = nats_hand(bus, run, n, shape).await;
    let runner = nats_runner(bus, run, n, concurrency, window, shape).await;
    (hand, runner)
}

/// The loop's side of [`nats_pair`].
async fn nats_hand(bus: &Arc<dyn EventBus>, run: usize, n: u64, shape: Shape) -> Duration {
    let hand_done = Done::default();
    let start = Instant::now();
    let mut consumer = bus
        .consume(
            ConsumerConfig::new(format!("hand{run}"), "bench.*")
                .start(event_bus::StartPosition::All)
                .max_ack_pending(10_000),
        )
        .await
        .unwrap();
    handle_by_hand(&mut consumer, n, &hand_done, shape).await;
    start.elapsed()
}

/// The runner's side of [`nats_pair`].
async fn nats_runner(
    bus: &Arc<dyn EventBus>,
    run: usize,
    n: u64,
    concurrency: usize,
    window: Option<usize>,
    shape: Shape,
) -> Duration {
    let done: Arc<Done> = Arc::default();
    let start = Instant::now();
    let mut builder = Runner::builder(bus.clone(), format!("runner{run}"))
        .start(event_bus::StartPosition::All)
        .concurrency(concurrency);
    if let Some(w) = window {
        builder = builder.max_ack_pending(w);
    }
    let builder = with_bench_handler(builder, shape, &done, n);
    let runner = builder.build().spawn().await.unwrap();
    done.1.notified().await;
    let took = start.elapsed();
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

/// Prints a row: the median rates of `n` events of each side, and the ratio
/// of those two medians (runner / loop); then the runs it comes from.
fn report_n(name: &str, n: u64, hand: Vec<Duration>, runner: Vec<Duration>) {
    let (runner_rate, hand_rate) = (
        rate(n, median(runner.clone())),
        rate(n, median(hand.clone())),
    );
    println!(
        "{name:<58} {runner_rate:>12.0} {hand_rate:>12.0} {:>6.2}x   ({} runs; runner/loop per run: {})",
        runner_rate / hand_rate,
        runner.len(),
        hand.iter()
            .zip(&runner)
            .map(|(h, r)| format!("{:.2}", h.as_secs_f64() / r.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" ")
    );
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
    let reps: usize = std::env::var("RUNNER_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("event runner vs a hand-written consume+decode+ack loop, InMemoryBus, {n} events per run, {reps} runs");
    println!("backlog: the consuming side alone; chunks of {CHUNK} events published untimed, then handled by the loop and by the runner in turn (current-thread runtime)");
    println!("live: a publisher task runs meanwhile; loop and runner each in a task, runs alternated (multi-threaded runtime, 2 workers; varies more)");
    println!("ratio: runner median rate / loop median rate (the two columns); the runs' own ratios follow");
    println!();
    println!(
        "{:<58} {:>12} {:>12} {:>7}",
        "events/s (medians)", "runner", "hand loop", "ratio"
    );
    let report =
        |name: &str, hand: Vec<Duration>, runner: Vec<Duration>| report_n(name, n, hand, runner);
    type Case = (&'static str, usize, bool, Shape);
    #[rustfmt::skip]
    let cases: [Case; 6] = [
        ("sync handler, no inbox, concurrency 16", 16, false, Shape::Sync),
        ("async fn handler, no inbox, concurrency 16", 16, false, Shape::AsyncFn),
        ("boxed async handler, no inbox, concurrency 16", 16, false, Shape::Async),
        ("boxed async handler, no inbox, concurrency 1", 1, false, Shape::Async),
        ("sync handler, in-memory inbox, conc. 16", 16, true, Shape::Sync),
        ("async fn handler, in-memory inbox, conc. 16", 16, true, Shape::AsyncFn),
    ];
    // For a profiler: the backlog cases whose names start with this, only.
    let only = std::env::var("RUNNER_BENCH_ONLY").ok();
    if let Some(alone) = only.as_deref().and_then(|o| o.strip_prefix("alone-")) {
        let shape = match alone.ends_with("-sync") {
            true => Shape::Sync,
            false => Shape::AsyncFn,
        };
        single.block_on(runner_alone(n, shape, alone.starts_with("layer")));
        return;
    }
    for (name, concurrency, mem, shape) in cases {
        if only.as_ref().is_some_and(|o| !name.starts_with(o.as_str())) {
            continue;
        }
        let (mut hand, mut runner) = (vec![], vec![]);
        for _ in 0..reps {
            let (h, r) = if mem {
                single.block_on(backlog_pair(MemoryInbox::default(), n, concurrency, shape))
            } else {
                single.block_on(backlog_pair(
                    event_bus::runner::NoInbox,
                    n,
                    concurrency,
                    shape,
                ))
            };
            hand.push(h);
            runner.push(r);
        }
        report(&format!("backlog: runner, {name}"), hand, runner);
    }
    if only.as_ref().is_none_or(|o| o.starts_with("layer")) {
        println!();
        println!("a layer that does nothing (Box::pin(next.run())), no inbox, concurrency 16: the runner with it vs without (\"hand loop\" column), backlog chunks alternated (target: < 3 % slower, ratio >= 0.97)");
        for (name, shape) in [
            ("sync handler", Shape::Sync),
            ("async fn handler", Shape::AsyncFn),
        ] {
            let (mut without, mut with) = (vec![], vec![]);
            for _ in 0..reps {
                let (a, b) = single.block_on(layer_pair(n, shape));
                without.push(a);
                with.push(b);
            }
            report(
                &format!("layer: runner + no-op layer, {name}"),
                without,
                with,
            );
        }
    }
    if only.is_some() {
        return;
    }
    println!();
    for (name, concurrency, mem, shape) in cases {
        let (mut hand, mut runner) = (vec![], vec![]);
        for rep in 0..reps {
            let run_runner = || {
                if mem {
                    rt.block_on(live_runner(MemoryInbox::default(), n, concurrency, shape))
                } else {
                    rt.block_on(live_runner(
                        event_bus::runner::NoInbox,
                        n,
                        concurrency,
                        shape,
                    ))
                }
            };
            if rep % 2 == 0 {
                hand.push(rt.block_on(live_hand(n, shape)));
                runner.push(run_runner());
            } else {
                runner.push(run_runner());
                hand.push(rt.block_on(live_hand(n, shape)));
            }
        }
        report(&format!("live: runner, {name}"), hand, runner);
    }

    let nats_n = (n / 5).max(1000);
    let server = rt
        .block_on(event_bus_testkit::nats_server::NatsServer::start())
        .unwrap_or_else(|e| panic!("{e}"));
    let nats_bus: Arc<dyn EventBus> = rt.block_on(async {
        let client = async_nats::connect(server.url()).await.unwrap();
        let bus: Arc<dyn EventBus> = Arc::new(event_bus::NatsBus::new(client));
        fill_nats(&bus, nats_n).await;
        bus
    });
    println!();
    println!("on NatsBus (a real nats-server; {nats_n} stored events, each side reads them all with its own consumer)");
    let mut run = 0;
    #[rustfmt::skip]
    let nats_cases = [
        ("NATS: runner, sync handler, concurrency 16", 16, None, Shape::Sync),
        ("NATS: runner, async fn handler, concurrency 16", 16, None, Shape::AsyncFn),
        ("NATS: same, max_ack_pending 32 (the old default)", 16, Some(32), Shape::AsyncFn),
        ("NATS: same, max_ack_pending 256", 16, Some(256), Shape::AsyncFn),
    ];
    for (name, concurrency, window, shape) in nats_cases {
        let (mut hand, mut runner) = (vec![], vec![]);
        for _ in 0..reps.max(5) {
            run += 1;
            let (h, r) = rt.block_on(nats_pair(
                &nats_bus,
                run,
                nats_n,
                concurrency,
                window,
                shape,
            ));
            hand.push(h);
            runner.push(r);
        }
        report_n(name, nats_n, hand, runner);
    }
    drop(server);

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
    println!();
    println!("with PostgreSQL ({pg_n} events per run, {} runs; the loop writes the same row in its own transaction, without an inbox row; the runner also claims the event in the inbox table)", reps.max(5));
    let mut run = 0;
    for concurrency in [1, 8] {
        let (mut hand, mut runner) = (vec![], vec![]);
        for rep in 0..reps.max(5) {
            run += 1;
            let pair = (
                || rt.block_on(pg_loop(&pool, pg_n, concurrency)),
                || rt.block_on(pg_runner(&pool, pg_n, concurrency, run)),
            );
            if rep % 2 == 0 {
                hand.push(pair.0());
                runner.push(pair.1());
            } else {
                runner.push(pair.1());
                hand.push(pair.0());
            }
        }
        report_n(
            &format!("PostgreSQL inbox, {concurrency} transaction(s) at a time each"),
            pg_n,
            hand,
            runner,
        );
    }
}
