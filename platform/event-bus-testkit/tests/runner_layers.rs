//! The runner's layers ([`event_bus::runner::layer`]) on both backends:
//! their order, the shipped ones (timeout, concurrency and rate limits),
//! a layer that decides alone or panics, and layers with the inbox.

use event_bus::runner::{
    Attempt, ConcurrencyLimit, Event, Handler, Layer, MemoryInbox, Next, Outcome, RateLimit,
    RetryPolicy, Runner, Timeout,
};
use event_bus::Envelope;
use event_bus_testkit::wait;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{memory, nats, start, Backend};

fn fast_retries(n: u32) -> RetryPolicy {
    common::fast_retries_up_to(n, Duration::from_millis(20))
}

/// Writes `<name>>` before the rest of the stack and `<name><` after.
struct Trace {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl Layer for Trace {
    fn call<'a>(&'a self, _attempt: &'a Attempt<'a>, next: Next<'a>) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            self.log.lock().push(format!("{}>", self.name));
            let outcome = next.run().await;
            self.log.lock().push(format!("{}<", self.name));
            outcome
        })
    }
}

/// Runner layers wrap handler layers, each in the order added, around the
/// handler; every attempt goes through them (a retry too).
async fn layers_run_in_order_around_each_attempt(b: Backend) {
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let trace = |name| Trace {
        name,
        log: log.clone(),
    };
    let calls = Arc::new(AtomicU32::new(0));
    let (l, c) = (log.clone(), calls.clone());
    let handler = move |_e: Event<'_, u64>, _tx: &mut ()| {
        l.lock().push("handler".into());
        match c.fetch_add(1, Ordering::SeqCst) {
            0 => Outcome::retry("first attempt fails"),
            _ => Outcome::Ack,
        }
    };
    let runner = Runner::builder(b.bus.clone(), "layered")
        .layer(trace("r1"))
        .layer(trace("r2"))
        .handler(
            Handler::new("h", "layered.x", handler)
                .layer(trace("h1"))
                .layer(trace("h2"))
                .retry(fast_retries(3)),
        )
        .build();
    let handle = start(runner).await;
    b.bus.publish("layered.x", b"1".to_vec()).await.unwrap();
    wait::until(Duration::from_secs(10), "the event acked", || {
        handle.report().processed == 1
    })
    .await;
    let report = handle.shutdown().await;
    assert_eq!(report.retries, 1);
    let once = [
        "r1>", "r2>", "h1>", "h2>", "handler", "h2<", "h1<", "r2<", "r1<",
    ];
    let expected: Vec<String> = once
        .iter()
        .chain(once.iter())
        .map(|s| s.to_string())
        .collect();
    assert_eq!(*log.lock(), expected, "two attempts through the stack");
}

/// A handler slower than the `Timeout` layer's limit: the attempt fails
/// (its unit of work rolled back: the retry is not taken for a duplicate)
/// and is retried; one that is always too slow is dead-lettered with the
/// timeout as its reason.
async fn a_timeout_fails_the_attempt_and_retries(b: Backend) {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    async fn slow_then_fast(
        n: event_bus::runner::State<'_, Arc<AtomicU32>>,
        e: Event<'_, u64>,
        _tx: &mut event_bus::runner::inbox::MemoryClaim,
    ) -> Outcome {
        let call = n.fetch_add(1, Ordering::SeqCst);
        // Event 1: too slow on its first attempt only; event 2: always.
        if *e.data == 2 || call == 0 {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        Outcome::Ack
    }
    let runner = Runner::builder(b.bus.clone(), "timed")
        .inbox(MemoryInbox::default())
        .handler(
            Handler::new("h", "timed.x", slow_then_fast)
                .with_state(c)
                .layer(Timeout::new(Duration::from_millis(200)))
                .retry(fast_retries(2)),
        )
        .build();
    let mut dead = runner.dead_letters().await.expect("dead letters");
    let handle = start(runner).await;
    b.bus
        .publish_envelope(Envelope::new("timed.x", b"1".to_vec()).id("t-1"))
        .await
        .unwrap();
    wait::until(
        Duration::from_secs(20),
        "event 1 acked on its retry",
        || handle.report().processed == 1,
    )
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the handler ran again");
    assert_eq!(
        handle.report().duplicates,
        0,
        "the timed-out claim was released"
    );
    b.bus
        .publish_envelope(Envelope::new("timed.x", b"2".to_vec()).id("t-2"))
        .await
        .unwrap();
    let d = dead
        .next(Duration::from_secs(20))
        .await
        .unwrap()
        .expect("event 2 dead-lettered");
    let reason = d.reason().unwrap_or_default();
    assert!(reason.contains("within 200ms"), "{reason}");
    assert!(reason.contains("after 2 attempts"), "{reason}");
    let report = handle.shutdown().await;
    assert_eq!(report.processed, 1);
    assert_eq!(report.dead_lettered, 1);
    assert_eq!(report.retries, 2);
}

/// `ConcurrencyLimit(2)` under a runner concurrency of 16: never more than
/// two attempts at once, every event handled.
async fn a_concurrency_limit_bounds_attempts(b: Backend) {
    let now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    async fn tracked(
        s: event_bus::runner::State<'_, [Arc<AtomicUsize>; 3]>,
        _e: Event<'_, u64>,
        _tx: &mut (),
    ) -> Outcome {
        let [now, most, done] = &*s;
        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(n, Ordering::SeqCst);
        // Long enough that the next events arrive meanwhile, even on a
        // loaded machine.
        tokio::time::sleep(Duration::from_millis(100)).await;
        now.fetch_sub(1, Ordering::SeqCst);
        done.fetch_add(1, Ordering::SeqCst);
        Outcome::Ack
    }
    let runner = Runner::builder(b.bus.clone(), "limited")
        .concurrency(16)
        .layer(ConcurrencyLimit::new(2))
        .handler(Handler::new("h", "limited.x", tracked).with_state([
            now.clone(),
            most.clone(),
            done.clone(),
        ]))
        .build();
    let handle = start(runner).await;
    for i in 0..20u64 {
        b.bus
            .publish("limited.x", i.to_string().into_bytes())
            .await
            .unwrap();
    }
    wait::until(Duration::from_secs(20), "20 events handled", || {
        done.load(Ordering::SeqCst) == 20
    })
    .await;
    handle.shutdown().await;
    assert_eq!(
        most.load(Ordering::SeqCst),
        2,
        "at most two at once, and two reached"
    );
}

/// `RateLimit(20 per second)`: ten events take at least nine intervals of
/// 50 ms from the first attempt to the last.
async fn a_rate_limit_spaces_attempts(b: Backend) {
    let starts: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let s = starts.clone();
    let runner = Runner::builder(b.bus.clone(), "paced")
        .concurrency(8)
        .handler(
            Handler::new("h", "paced.x", move |_e: Event<'_, u64>, _tx: &mut ()| {
                s.lock().push(Instant::now());
                Outcome::Ack
            })
            .layer(RateLimit::new(20, Duration::from_secs(1))),
        )
        .build();
    let handle = start(runner).await;
    for i in 0..10u64 {
        b.bus
            .publish("paced.x", i.to_string().into_bytes())
            .await
            .unwrap();
    }
    wait::until(Duration::from_secs(20), "10 events handled", || {
        starts.lock().len() == 10
    })
    .await;
    handle.shutdown().await;
    let starts = starts.lock();
    let span = *starts.iter().max().unwrap() - *starts.iter().min().unwrap();
    assert!(
        span >= Duration::from_millis(440),
        "{span:?} for 10 events at 20/s"
    );
}

/// Drops events whose subject ends in `.test` without calling the rest.
struct DropTests;

impl Layer for DropTests {
    fn call<'a>(&'a self, attempt: &'a Attempt<'a>, next: Next<'a>) -> BoxFuture<'a, Outcome> {
        if attempt.message.subject.as_str().ends_with(".test") {
            return Box::pin(async { Outcome::Drop });
        }
        Box::pin(next.run())
    }
}

/// Panics on its first call, then passes through.
struct PanicsOnce(AtomicU32);

impl Layer for PanicsOnce {
    fn call<'a>(&'a self, _attempt: &'a Attempt<'a>, next: Next<'a>) -> BoxFuture<'a, Outcome> {
        if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("layer bug");
        }
        Box::pin(next.run())
    }
}

/// A layer that decides without the rest (a filter): the handler is not
/// called and the event is acknowledged as dropped, not redelivered. A
/// layer's panic is a failed attempt, retried.
async fn a_layer_decides_alone_or_panics(b: Backend) {
    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let h = handled.clone();
    let runner = Runner::builder(b.bus.clone(), "filtered")
        .layer(DropTests)
        .layer(PanicsOnce(AtomicU32::new(0)))
        .handler(
            Handler::new("h", "filtered.>", move |e: Event<'_, u64>, _tx: &mut ()| {
                h.lock().push(e.message.subject.to_string());
                Outcome::Ack
            })
            .retry(fast_retries(3)),
        )
        .build();
    let handle = start(runner).await;
    b.bus.publish("filtered.test", b"1".to_vec()).await.unwrap();
    b.bus.publish("filtered.real", b"2".to_vec()).await.unwrap();
    wait::until(Duration::from_secs(10), "one dropped, one handled", || {
        let r = handle.report();
        r.dropped == 1 && r.processed == 1
    })
    .await;
    let report = handle.shutdown().await;
    assert_eq!(*handled.lock(), vec!["filtered.real".to_string()]);
    assert_eq!(
        report.retries, 1,
        "the layer's panic was one failed attempt"
    );
    assert_eq!(report.dead_lettered, 0);
}

/// Calls the rest, then asks for a retry on the first attempt (after the
/// unit of work has committed).
struct RetryAfterCommit(AtomicU32);

impl Layer for RetryAfterCommit {
    fn call<'a>(&'a self, _attempt: &'a Attempt<'a>, next: Next<'a>) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let outcome = next.run().await;
            match self.0.fetch_add(1, Ordering::SeqCst) {
                0 => Outcome::retry("asked again after the commit"),
                _ => outcome,
            }
        })
    }
}

/// An outcome a layer changes after the commit cannot undo it: the retry
/// finds the event a duplicate (the handler does not run twice), and a
/// layer that passes that on keeps it a duplicate, not a new event.
async fn duplicates_pass_through_layers(b: Backend) {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let runner = Runner::builder(b.bus.clone(), "dedup")
        .inbox(MemoryInbox::default())
        .layer(RetryAfterCommit(AtomicU32::new(0)))
        .handler(
            Handler::new(
                "h",
                "dedup.x",
                move |_e: Event<'_, u64>, _tx: &mut event_bus::runner::inbox::MemoryClaim| {
                    c.fetch_add(1, Ordering::SeqCst);
                    Outcome::Ack
                },
            )
            .retry(fast_retries(3)),
        )
        .build();
    let handle = start(runner).await;
    b.bus.publish("dedup.x", b"1".to_vec()).await.unwrap();
    wait::until(
        Duration::from_secs(10),
        "the retry found a duplicate",
        || handle.report().duplicates == 1,
    )
    .await;
    let report = handle.shutdown().await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the handler ran once");
    assert_eq!(report.retries, 1);
    assert_eq!(report.processed, 0, "a duplicate, not a second event");
}

event_bus_testkit::on_both_backends!(
    memory,
    nats;
    layers_run_in_order_around_each_attempt,
    a_timeout_fails_the_attempt_and_retries,
    a_concurrency_limit_bounds_attempts,
    a_rate_limit_spaces_attempts,
    a_layer_decides_alone_or_panics,
    duplicates_pass_through_layers
);
