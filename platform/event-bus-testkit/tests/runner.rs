//! The event runner on both backends (in-memory and a real nats-server),
//! with the in-memory inbox. PostgreSQL scenarios are in event-bus-postgres.

use event_bus::consumer::dlq;
use event_bus::runner::{Event, Handler, MemoryInbox, Outcome, RetryPolicy, Runner, RunnerHandle};
use event_bus::{Envelope, EventBus, InMemoryBus, NatsBus};
use event_bus_testkit::nats_server::NatsServer;
use event_bus_testkit::wait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Job {
    id: u64,
    key: String,
}

fn job(id: u64, key: &str) -> Vec<u8> {
    serde_json::to_vec(&Job {
        id,
        key: key.to_string(),
    })
    .unwrap()
}

/// A bus for one test; keeps the NATS server alive.
struct Backend {
    bus: Arc<dyn EventBus>,
    _server: Option<NatsServer>,
}

async fn memory() -> Backend {
    Backend {
        bus: Arc::new(InMemoryBus::new()),
        _server: None,
    }
}

async fn nats() -> Backend {
    let server = NatsServer::start().await.expect("start nats-server");
    let client = async_nats::connect(server.url()).await.unwrap();
    Backend {
        bus: Arc::new(NatsBus::new(client)),
        _server: Some(server),
    }
}

fn fast_retries(n: u32) -> RetryPolicy {
    RetryPolicy::new(n, Duration::from_millis(5)).max_backoff(Duration::from_millis(50))
}

async fn start<I: event_bus::runner::Inbox>(runner: Runner<I>) -> RunnerHandle {
    runner.spawn().await.expect("start the runner")
}

async fn fails_twice_then_succeeds(b: Backend) {
    let attempts = Arc::new(AtomicU32::new(0));
    let effects = Arc::new(AtomicU32::new(0));
    let (a, e) = (attempts.clone(), effects.clone());
    let runner = Runner::builder(b.bus.clone(), "flaky")
        .inbox(MemoryInbox::default())
        .handler(
            Handler::new("h", "flaky.jobs", move |ev: Event<'_, Job>, _tx| {
                let (a, e) = (a.clone(), e.clone());
                Box::pin(async move {
                    let n = a.fetch_add(1, Ordering::SeqCst) + 1;
                    assert_eq!(ev.attempt, n);
                    if n <= 2 {
                        return Outcome::retry(format!("transient failure {n}"));
                    }
                    e.fetch_add(1, Ordering::SeqCst);
                    Outcome::Ack
                })
            })
            .retry(fast_retries(5)),
        )
        .build();
    let handle = start(runner).await;
    b.bus.publish("flaky.jobs", job(1, "k")).await.unwrap();
    wait::until(Duration::from_secs(10), "processing", || {
        effects.load(Ordering::SeqCst) == 1
    })
    .await;
    let report = handle.shutdown().await;
    assert_eq!(attempts.load(Ordering::SeqCst), 3, "three attempts");
    assert_eq!(effects.load(Ordering::SeqCst), 1, "processed once");
    assert_eq!(report.processed, 1);
    assert_eq!(report.retries, 2);
    assert_eq!(report.dead_lettered, 0);
}

async fn a_panic_is_caught_and_retried(b: Backend) {
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    let runner = Runner::builder(b.bus.clone(), "panicky")
        .handler(
            Handler::new("h", "panic.x", move |_ev: Event<'_, Job>, _tx| {
                let a = a.clone();
                Box::pin(async move {
                    if a.fetch_add(1, Ordering::SeqCst) == 0 {
                        panic!("handler bug on the first attempt");
                    }
                    Outcome::Ack
                })
            })
            .retry(fast_retries(3)),
        )
        .build();
    let handle = start(runner).await;
    b.bus.publish("panic.x", job(1, "k")).await.unwrap();
    wait::until(Duration::from_secs(10), "the retry after the panic", || {
        handle.report().processed == 1
    })
    .await;
    let report = handle.shutdown().await;
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        2,
        "the panic counted as one failed attempt"
    );
    assert_eq!(report.retries, 1);
    assert_eq!(report.dead_lettered, 0);
}

async fn always_fails_is_dead_lettered_and_replayable(b: Backend) {
    let attempts = Arc::new(AtomicU32::new(0));
    let healed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (a, h) = (attempts.clone(), healed.clone());
    let runner = Runner::builder(b.bus.clone(), "broken")
        .handler(
            Handler::new("charge", "pay.*", move |_ev: Event<'_, Job>, _tx| {
                let (a, h) = (a.clone(), h.clone());
                Box::pin(async move {
                    a.fetch_add(1, Ordering::SeqCst);
                    if h.load(Ordering::SeqCst) {
                        Outcome::Ack
                    } else {
                        Err::<(), _>("card declined").into()
                    }
                })
            })
            .retry(fast_retries(3)),
        )
        .build();
    let mut dead = runner
        .dead_letters()
        .await
        .expect("open the dead-letter queue");
    let handle = start(runner).await;
    b.bus
        .publish_envelope(Envelope::new("pay.card", job(7, "k")).id("pay-7"))
        .await
        .unwrap();
    let d = dead
        .next(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("exactly one dead letter");
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        3,
        "the configured attempts"
    );
    assert_eq!(d.original_subject(), Some("pay.card"));
    assert_eq!(d.handler(), Some("charge"));
    assert_eq!(d.delivery_count(), Some(1));
    assert!(d.reason().unwrap().contains("card declined"), "{d:?}");
    assert!(d.message().headers.get(dlq::CONSUMER).is_some());
    assert!(
        dead.next(Duration::from_millis(300))
            .await
            .unwrap()
            .is_none(),
        "only one dead letter"
    );

    healed.store(true, Ordering::SeqCst);
    d.replay().await.expect("replay");
    wait::until(
        Duration::from_secs(10),
        "the replayed event to be processed",
        || attempts.load(Ordering::SeqCst) == 4,
    )
    .await;
    let report = handle.shutdown().await;
    assert_eq!(report.dead_lettered, 1);
    assert_eq!(report.processed, 1, "the replay succeeded");
}

async fn undecodable_is_dead_lettered_at_once(b: Backend) {
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    let runner = Runner::builder(b.bus.clone(), "decode")
        .handler(Handler::new(
            "h",
            "dec.x",
            move |_ev: Event<'_, Job>, _tx| {
                let a = a.clone();
                Box::pin(async move {
                    a.fetch_add(1, Ordering::SeqCst);
                    Outcome::Ack
                })
            },
        ))
        .build();
    let mut dead = runner.dead_letters().await.unwrap();
    let handle = start(runner).await;
    b.bus.publish("dec.x", b"{not json".to_vec()).await.unwrap();
    let d = dead
        .next(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("a dead letter for the undecodable payload");
    assert!(d.reason().unwrap().contains("cannot decode"), "{d:?}");
    assert_eq!(
        d.delivery_count(),
        Some(1),
        "dead-lettered on the first delivery"
    );
    d.discard().await.unwrap();
    let report = handle.shutdown().await;
    assert_eq!(report.dead_lettered, 1);
    assert_eq!(attempts.load(Ordering::SeqCst), 0, "the handler never ran");
}

async fn per_key_order_with_concurrency_8(b: Backend) {
    let seen: Arc<Mutex<HashMap<String, Vec<u64>>>> = Arc::default();
    let done = Arc::new(AtomicUsize::new(0));
    let (s, d) = (seen.clone(), done.clone());
    let runner = Runner::builder(b.bus.clone(), "ordered")
        .concurrency(8)
        .handler(
            Handler::new("h", "ord.>", move |ev: Event<'_, Job>, _tx| {
                let (s, d) = (s.clone(), d.clone());
                Box::pin(async move {
                    // Uneven work so that out-of-order completion would show.
                    tokio::time::sleep(Duration::from_micros((ev.data.id * 7919) % 3000)).await;
                    s.lock()
                        .entry(ev.data.key.clone())
                        .or_default()
                        .push(ev.data.id);
                    d.fetch_add(1, Ordering::SeqCst);
                    Outcome::Ack
                })
            })
            .key(|j: &Job| j.key.clone()),
        )
        .build();
    let handle = start(runner).await;
    let (keys, per_key) = (10u64, 40u64);
    let mut id = 1;
    for _ in 0..per_key {
        for k in 0..keys {
            b.bus
                .publish("ord.e", job(id, &format!("k{k}")))
                .await
                .unwrap();
            id += 1;
        }
    }
    wait::until(Duration::from_secs(30), "all keyed events", || {
        done.load(Ordering::SeqCst) >= (keys * per_key) as usize
    })
    .await;
    handle.shutdown().await;
    let seen = seen.lock();
    for k in 0..keys {
        let ids = &seen[&format!("k{k}")];
        assert_eq!(ids.len() as u64, per_key);
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "key k{k} out of order: {ids:?}"
        );
    }
}

async fn graceful_shutdown_loses_nothing(b: Backend) {
    let effects: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let make = |effects: Arc<Mutex<HashMap<u64, u32>>>, inbox: Arc<MemoryInbox>| {
        let _ = inbox;
        Runner::builder(b.bus.clone(), "graceful")
            .concurrency(4)
            .shutdown_timeout(Duration::from_millis(50))
            .ack_wait(Duration::from_secs(1))
            .handler(Handler::new("h", "gs.*", move |ev: Event<'_, Job>, _tx| {
                let effects = effects.clone();
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(if ev.data.id.is_multiple_of(10) {
                        200
                    } else {
                        1
                    }))
                    .await;
                    *effects.lock().entry(ev.data.id).or_default() += 1;
                    Outcome::Ack
                })
            }))
            .build()
    };
    let inbox = Arc::new(MemoryInbox::default());
    let handle = start(make(effects.clone(), inbox.clone())).await;
    let n = 300u64;
    for i in 1..=n {
        b.bus.publish("gs.e", job(i, "k")).await.unwrap();
    }
    wait::until(Duration::from_secs(10), "some progress", || {
        effects.lock().len() > 50
    })
    .await;
    let first = handle.shutdown().await;
    // Handed-back and untaken events go to the next instance.
    let handle = start(make(effects.clone(), inbox)).await;
    wait::until(
        Duration::from_secs(30),
        "every event after the restart",
        || (1..=n).all(|i| effects.lock().contains_key(&i)),
    )
    .await;
    let second = handle.shutdown().await;
    println!("graceful shutdown: first run {first:?}, second run {second:?}");
    // Without an inbox, an event cut short at the shutdown deadline may run
    // again; it must never be lost. (With PgInbox, see event-bus-postgres.)
    assert!((1..=n).all(|i| effects.lock().contains_key(&i)));
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct User {
    name: String,
}

/// Two handlers with different event types in one runner: each gets exactly
/// its own events. One of them waits (so events queue behind it as tasks);
/// both carry state with `Handler::with_state`.
async fn several_handlers_each_get_their_events(b: Backend) {
    type Seen = Mutex<HashMap<String, u32>>;
    let jobs: Arc<Seen> = Arc::default();
    let users: Arc<Seen> = Arc::default();
    let runner = Runner::builder(b.bus.clone(), "multi")
        .concurrency(4)
        .handler(Handler::with_state(
            "jobs",
            "multi.jobs",
            jobs.clone(),
            |seen: &Arc<Seen>, ev: Event<'_, Job>, _tx| {
                Box::pin(async move {
                    // Waits, so that this handler's events run as tasks.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    *seen.lock().entry(ev.data.id.to_string()).or_default() += 1;
                    Outcome::Ack
                })
            },
        ))
        .handler(Handler::with_state(
            "users",
            "multi.users.*",
            users.clone(),
            |seen: &Arc<Seen>, ev: Event<'_, User>, _tx| {
                Box::pin(async move {
                    *seen.lock().entry(ev.data.name.clone()).or_default() += 1;
                    Outcome::Ack
                })
            },
        ))
        .build();
    let handle = start(runner).await;
    let n = 20u64;
    for i in 0..n {
        b.bus.publish("multi.jobs", job(i, "k")).await.unwrap();
        let user = serde_json::to_vec(&User {
            name: format!("u{i}"),
        })
        .unwrap();
        b.bus.publish("multi.users.created", user).await.unwrap();
    }
    wait::until(Duration::from_secs(20), "both handlers done", || {
        jobs.lock().len() == n as usize && users.lock().len() == n as usize
    })
    .await;
    let report = handle.shutdown().await;
    assert_eq!(report.processed, 2 * n);
    assert_eq!(
        report.dead_lettered, 0,
        "no event reached the wrong handler"
    );
    for (what, seen) in [("jobs", &jobs), ("users", &users)] {
        let seen = seen.lock();
        assert!(
            seen.values().all(|&c| c == 1),
            "{what} handled once each: {seen:?}"
        );
    }
    assert!((0..n).all(|i| users.lock().contains_key(&format!("u{i}"))));
}

/// `Handler::sync` handlers, without a key (the runner's fast path) and
/// with one (the general path): every outcome (ack, retry, a panic, drop,
/// dead letter) is handled as for an async handler, and per-key order holds.
async fn sync_handlers_have_every_outcome(b: Backend) {
    // Attempts per event id, and the order in which keyed events were acked.
    let attempts: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let outcome_of = {
        let attempts = attempts.clone();
        move |ev: &Event<'_, Job>| -> Outcome {
            let n = {
                let mut a = attempts.lock();
                let n = a.entry(ev.data.id).or_default();
                *n += 1;
                *n
            };
            assert_eq!(ev.attempt, n, "attempt number of event {}", ev.data.id);
            match (ev.data.id % 5, n) {
                (1, 1) => panic!("sync handler bug on the first attempt"),
                (2, 1 | 2) => Outcome::retry("not yet"),
                (3, _) => Outcome::Drop,
                (4, _) => Outcome::DeadLetter(format!("refused {}", ev.data.id)),
                _ => Outcome::Ack,
            }
        }
    };
    let (o1, o2, acked2) = (outcome_of.clone(), outcome_of, acked.clone());
    let runner = Runner::builder(b.bus.clone(), "syncs")
        .concurrency(8)
        .handler(
            Handler::sync("plain", "sync.plain", move |ev: Event<'_, Job>, _tx| {
                o1(&ev)
            })
            .retry(fast_retries(3)),
        )
        .handler(
            Handler::sync("keyed", "sync.keyed", move |ev: Event<'_, Job>, _tx| {
                let o = o2(&ev);
                if o == Outcome::Ack {
                    acked2.lock().push((ev.data.key.clone(), ev.data.id));
                }
                o
            })
            .key(|j: &Job| j.key.clone())
            .retry(fast_retries(3)),
        )
        .build();
    let mut dead = runner.dead_letters().await.expect("open the dead letters");
    let handle = start(runner).await;
    let n = 50u64;
    for i in 0..n {
        b.bus.publish("sync.plain", job(i, "p")).await.unwrap();
        // Keyed events get ids from 1000 so they count apart.
        let key = ["a", "b", "c"][i as usize % 3];
        b.bus
            .publish("sync.keyed", job(1000 + i, key))
            .await
            .unwrap();
    }
    let per_handler = |outcome: u64| (0..n).filter(|i| i % 5 == outcome).count() as u64;
    // Acked: ids ending 0, 1 (after the panic), 2 (third attempt); per handler.
    let expect_processed = 2 * (per_handler(0) + per_handler(1) + per_handler(2));
    let expect_dead = 2 * per_handler(4);
    wait::until(Duration::from_secs(20), "all events settled", || {
        let r = handle.report();
        r.processed + r.dropped + r.dead_lettered == 2 * n
    })
    .await;
    let report = handle.shutdown().await;
    assert_eq!(report.processed, expect_processed, "{report:?}");
    assert_eq!(report.dropped, 2 * per_handler(3), "{report:?}");
    assert_eq!(report.dead_lettered, expect_dead, "{report:?}");
    // One retry after each panic, two for each "not yet".
    assert_eq!(
        report.retries,
        2 * (per_handler(1) + 2 * per_handler(2)),
        "{report:?}"
    );
    let mut reasons = Vec::new();
    while let Some(d) = dead.next(Duration::from_secs(5)).await.unwrap() {
        reasons.push(d.reason().unwrap_or_default().to_string());
        if reasons.len() as u64 == expect_dead {
            break;
        }
    }
    assert_eq!(reasons.len() as u64, expect_dead, "{reasons:?}");
    assert!(
        reasons.iter().all(|r| r.starts_with("refused ")),
        "{reasons:?}"
    );
    // Per key, acked in publication order (ids grow with it).
    let acked = acked.lock();
    for key in ["a", "b", "c"] {
        let ids: Vec<u64> = acked
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, i)| *i)
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "key {key}: {ids:?}");
        assert!(!ids.is_empty());
    }
}

/// State of the `async fn` handlers below.
#[derive(Default)]
struct Ledger {
    attempts: Mutex<HashMap<u64, u32>>,
    acked: Mutex<Vec<(String, u64)>>,
}

/// Fails the first attempt of every third event, waits on every fourth.
async fn ledger_entry(ledger: &Ledger, ev: Event<'_, Job>, _tx: &mut ()) -> Outcome {
    let n = {
        let mut a = ledger.attempts.lock();
        let n = a.entry(ev.data.id).or_default();
        *n += 1;
        *n
    };
    if ev.data.id.is_multiple_of(4) {
        // A future that is pending at first: the event waits in the slot
        // (or its task), with the keep-alive running.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    if ev.data.id.is_multiple_of(3) && n == 1 {
        return Outcome::retry("first attempt fails");
    }
    ledger.acked.lock().push((ev.data.key.clone(), ev.data.id));
    Outcome::Ack
}

/// [`ledger_entry`] on a ledger the test keeps a handle to.
async fn shared_entry(ledger: &Arc<Ledger>, ev: Event<'_, Job>, tx: &mut ()) -> Outcome {
    ledger_entry(ledger, ev, tx).await
}

/// A plain `async fn` handler.
async fn count_job(ev: Event<'_, Job>, _tx: &mut ()) -> Outcome {
    if ev.data.id == u64::MAX {
        return Outcome::DeadLetter("impossible id".into());
    }
    Outcome::Ack
}

/// `async fn` handlers (`Handler::from_fn`, `from_fn_with_state`), whose
/// futures the runner keeps without a box: waiting, retried, keyed and
/// dead-lettered events all take the same stages as boxed handlers.
async fn async_fn_handlers_are_run_in_place(b: Backend) {
    let runner = Runner::builder(b.bus.clone(), "fns")
        .concurrency(8)
        .handler(
            Handler::from_fn_with_state("ledger", "fns.ledger", Ledger::default(), ledger_entry)
                .key(|j: &Job| j.key.clone())
                .retry(fast_retries(3)),
        )
        .handler(Handler::from_fn("count", "fns.count", count_job));
    // The ledger is owned by the handler: reach it through a second,
    // shared one for the assertions.
    let shared = Arc::new(Ledger::default());
    let s2 = shared.clone();
    let runner = runner
        .handler(
            Handler::from_fn_with_state("shared", "fns.shared", s2, shared_entry)
                .retry(fast_retries(3)),
        )
        .build();
    let mut dead = runner.dead_letters().await.expect("open the dead letters");
    let handle = start(runner).await;
    let n = 40u64;
    for i in 0..n {
        let key = ["a", "b"][i as usize % 2];
        b.bus.publish("fns.ledger", job(i, key)).await.unwrap();
        b.bus.publish("fns.shared", job(i, key)).await.unwrap();
        b.bus.publish("fns.count", job(i, key)).await.unwrap();
    }
    b.bus
        .publish("fns.count", job(u64::MAX, "z"))
        .await
        .unwrap();
    wait::until(Duration::from_secs(20), "all events settled", || {
        let r = handle.report();
        r.processed + r.dead_lettered == 3 * n + 1
    })
    .await;
    let report = handle.shutdown().await;
    assert_eq!(report.processed, 3 * n, "{report:?}");
    assert_eq!(report.dead_lettered, 1, "{report:?}");
    let first_failures = (0..n).filter(|i| i % 3 == 0).count() as u64;
    assert_eq!(report.retries, 2 * first_failures, "{report:?}");
    let d = dead
        .next(Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the dead letter");
    assert_eq!(d.handler(), Some("count"));
    assert!(d.reason().unwrap().contains("impossible id"), "{d:?}");
    let acked = shared.acked.lock();
    assert_eq!(acked.len() as u64, n);
    let attempts = shared.attempts.lock();
    for i in 0..n {
        let expect = if i % 3 == 0 { 2 } else { 1 };
        assert_eq!(attempts.get(&i), Some(&expect), "attempts of event {i}");
    }
}

event_bus_testkit::on_both_backends!(
    memory,
    nats;
    fails_twice_then_succeeds,
    a_panic_is_caught_and_retried,
    always_fails_is_dead_lettered_and_replayable,
    undecodable_is_dead_lettered_at_once,
    per_key_order_with_concurrency_8,
    graceful_shutdown_loses_nothing,
    several_handlers_each_get_their_events,
    sync_handlers_have_every_outcome,
    async_fn_handlers_are_run_in_place
);
