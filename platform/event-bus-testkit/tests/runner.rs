//! The event runner on both backends (in-memory and a real nats-server),
//! with the in-memory inbox. PostgreSQL scenarios are in event-bus-postgres.

use event_bus::dlq;
use event_bus::runner::{boxed, Event, Handler, MemoryInbox, Outcome, RetryPolicy, Runner, State};
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

mod common;
use common::{memory, nats, start, Backend};

fn fast_retries(n: u32) -> RetryPolicy {
    common::fast_retries_up_to(n, Duration::from_millis(50))
}

async fn fails_twice_then_succeeds(b: Backend) {
    let attempts = Arc::new(AtomicU32::new(0));
    let effects = Arc::new(AtomicU32::new(0));
    let attempt_numbers: Arc<Mutex<Vec<u32>>> = Arc::default();
    let (a, e) = (attempts.clone(), effects.clone());
    let numbers = attempt_numbers.clone();
    let runner = Runner::builder(b.bus.clone(), "flaky")
        .inbox(MemoryInbox::default())
        .handler(
            Handler::new(
                "h",
                "flaky.jobs",
                boxed(move |ev: Event<'_, Job>, _tx| {
                    let (a, e, numbers) = (a.clone(), e.clone(), numbers.clone());
                    Box::pin(async move {
                        let n = a.fetch_add(1, Ordering::SeqCst) + 1;
                        // Checked after the run: a failing assertion in a
                        // handler would only be a caught panic (a retry).
                        numbers.lock().push(ev.attempt);
                        if n <= 2 {
                            return Outcome::retry(format!("transient failure {n}"));
                        }
                        e.fetch_add(1, Ordering::SeqCst);
                        Outcome::Ack
                    })
                }),
            )
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
    assert_eq!(*attempt_numbers.lock(), vec![1, 2, 3], "Event::attempt");
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
            Handler::new(
                "h",
                "panic.x",
                boxed(move |_ev: Event<'_, Job>, _tx| {
                    let a = a.clone();
                    Box::pin(async move {
                        if a.fetch_add(1, Ordering::SeqCst) == 0 {
                            panic!("handler bug on the first attempt");
                        }
                        Outcome::Ack
                    })
                }),
            )
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
            Handler::new(
                "charge",
                "pay.*",
                boxed(move |_ev: Event<'_, Job>, _tx| {
                    let (a, h) = (a.clone(), h.clone());
                    Box::pin(async move {
                        a.fetch_add(1, Ordering::SeqCst);
                        if h.load(Ordering::SeqCst) {
                            Outcome::Ack
                        } else {
                            Err::<(), _>("card declined").into()
                        }
                    })
                }),
            )
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
            boxed(move |_ev: Event<'_, Job>, _tx| {
                let a = a.clone();
                Box::pin(async move {
                    a.fetch_add(1, Ordering::SeqCst);
                    Outcome::Ack
                })
            }),
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
            Handler::new(
                "h",
                "ord.>",
                boxed(move |ev: Event<'_, Job>, _tx| {
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
                }),
            )
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

/// Graceful shutdown hands back what it cuts short. The ack wait is 10 s,
/// so within the 5 s the test waits only a hand-back (a nack) can bring
/// those events to the next instance: a runner that stops as after a crash
/// (`abort`) leaves them to the ack wait and fails here. Then nothing is
/// lost (on NATS, messages of a pull still on the wire at shutdown come
/// back after the ack wait), and the two instances, sharing a MemoryInbox,
/// give every event exactly one effect.
async fn graceful_shutdown_loses_nothing(b: Backend) {
    let effects: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    // Events whose handler has started, and not finished, per run.
    let slow_in_flight: Arc<Mutex<Vec<u64>>> = Arc::default();
    let inbox = Arc::new(MemoryInbox::default());
    // `slow`: every tenth event takes 2 s (the first instance's, cut short).
    let make =
        |effects: Arc<Mutex<HashMap<u64, u32>>>, in_flight: Arc<Mutex<Vec<u64>>>, slow: bool| {
            Runner::builder(b.bus.clone(), "graceful")
                .inbox(inbox.clone())
                .concurrency(4)
                .shutdown_timeout(Duration::from_millis(50))
                .ack_wait(Duration::from_secs(10))
                .handler(Handler::new(
                    "h",
                    "gs.*",
                    boxed(move |ev: Event<'_, Job>, _tx| {
                        let (effects, in_flight) = (effects.clone(), in_flight.clone());
                        Box::pin(async move {
                            if slow && ev.data.id.is_multiple_of(10) {
                                // Far beyond the shutdown deadline: cut short.
                                in_flight.lock().push(ev.data.id);
                                tokio::time::sleep(Duration::from_secs(2)).await;
                                in_flight.lock().retain(|&i| i != ev.data.id);
                            } else {
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                            *effects.lock().entry(ev.data.id).or_default() += 1;
                            Outcome::Ack
                        })
                    }),
                ))
                .build()
        };
    let handle = start(make(effects.clone(), slow_in_flight.clone(), true)).await;
    let n = 300u64;
    for i in 1..=n {
        b.bus.publish("gs.e", job(i, "k")).await.unwrap();
    }
    wait::until(
        Duration::from_secs(10),
        "some progress, a slow event in flight",
        || effects.lock().len() > 50 && !slow_in_flight.lock().is_empty(),
    )
    .await;
    let first = handle.shutdown().await;
    let cut_short = slow_in_flight.lock().clone();
    let after_first = effects.lock().len() as u64;
    assert!(!cut_short.is_empty());
    assert_eq!(
        first.handed_back,
        cut_short.len() as u64,
        "the events cut short ({cut_short:?}) were handed back: {first:?}"
    );
    assert_eq!(first.processed, after_first, "{first:?}");
    // Handed-back events go to the next instance at once.
    let handle = start(make(effects.clone(), Arc::default(), false)).await;
    wait::until(
        Duration::from_secs(5),
        "the events cut short, after the restart (a 10 s ack wait: only a hand-back brings them in time)",
        || cut_short.iter().all(|i| effects.lock().contains_key(i)),
    )
    .await;
    wait::until(Duration::from_secs(30), "every event", || {
        effects.lock().len() as u64 == n
    })
    .await;
    let second = handle.shutdown().await;
    let effects = effects.lock();
    assert!(
        effects.values().all(|&c| c == 1),
        "an event was handled twice: first {first:?}, second {second:?}"
    );
    assert_eq!(
        first.processed + second.processed,
        n,
        "{first:?} {second:?}"
    );
}

/// A handler that runs for three ack waits keeps its delivery:
/// nothing is delivered again meanwhile.
async fn long_handlers_are_kept_alive(b: Backend) {
    let ack_wait = Duration::from_secs(1);
    let seen: Arc<Mutex<Vec<(u64, u32)>>> = Arc::default();
    let s = seen.clone();
    let runner = Runner::builder(b.bus.clone(), "longrun")
        .concurrency(4)
        .ack_wait(ack_wait)
        .handler(Handler::new(
            "h",
            "long.e",
            boxed(move |ev: Event<'_, Job>, _tx| {
                let s = s.clone();
                Box::pin(async move {
                    tokio::time::sleep(ack_wait * 3).await;
                    s.lock().push((ev.data.id, ev.delivery_count));
                    Outcome::Ack
                })
            }),
        ))
        .build();
    let handle = start(runner).await;
    for id in 1..=3 {
        b.bus.publish("long.e", job(id, "k")).await.unwrap();
    }
    wait::until(Duration::from_secs(20), "the three events", || {
        seen.lock().len() >= 3
    })
    .await;
    // A redelivered copy would be in flight now, and handled before the
    // graceful shutdown returns.
    let report = handle.shutdown().await;
    let mut seen = seen.lock().clone();
    seen.sort();
    assert_eq!(
        seen,
        vec![(1, 1), (2, 1), (3, 1)],
        "each once, first delivery"
    );
    assert_eq!(report.processed, 3, "{report:?}");
}

/// `concurrency(4)`: never more than 4 events in the handler at once, and
/// more than one at a time when they wait.
async fn concurrency_bounds_events_in_flight(b: Backend) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let (i, m, d) = (in_flight.clone(), max_seen.clone(), done.clone());
    let runner = Runner::builder(b.bus.clone(), "bounded")
        .concurrency(4)
        .handler(Handler::new(
            "h",
            "bound.e",
            boxed(move |_ev: Event<'_, Job>, _tx| {
                let (i, m, d) = (i.clone(), m.clone(), d.clone());
                Box::pin(async move {
                    let now = i.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    i.fetch_sub(1, Ordering::SeqCst);
                    d.fetch_add(1, Ordering::SeqCst);
                    Outcome::Ack
                })
            }),
        ))
        .build();
    let handle = start(runner).await;
    let n = 40;
    for id in 0..n {
        b.bus.publish("bound.e", job(id, "k")).await.unwrap();
    }
    wait::until(Duration::from_secs(20), "all events", || {
        done.load(Ordering::SeqCst) == n as usize
    })
    .await;
    handle.shutdown().await;
    let max = max_seen.load(Ordering::SeqCst);
    assert!(max <= 4, "{max} events in flight with concurrency 4");
    assert!(max > 1, "events ran one at a time");
}

/// `DeadLetterQueue::list` returns the dead letters; one that is kept
/// (`keep`) is listed again later, the discarded ones are not.
async fn dead_letters_list_and_keep(b: Backend) {
    let runner = Runner::builder(b.bus.clone(), "listed")
        .handler(Handler::new(
            "h",
            "listed.e",
            boxed(|ev: Event<'_, Job>, _tx| {
                let id = ev.data.id;
                Box::pin(async move { Outcome::DeadLetter(format!("refused {id}")) })
            }),
        ))
        .build();
    let handle = start(runner).await;
    let mut dead = handle.dead_letters().await.unwrap();
    for id in 1..=3 {
        b.bus.publish("listed.e", job(id, "k")).await.unwrap();
    }
    let mut all = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while all.len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "three dead letters in 10 s: {all:?}"
        );
        all.extend(dead.list(10, Duration::from_millis(200)).await.unwrap());
    }
    let mut reasons: Vec<String> = all
        .iter()
        .map(|d| d.reason().unwrap().to_string())
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["refused 1", "refused 2", "refused 3"]);
    let mut kept_reason = String::new();
    for d in all {
        if d.reason() == Some("refused 2") {
            kept_reason = d.reason().unwrap().to_string();
            d.keep().await.unwrap();
        } else {
            d.discard().await.unwrap();
        }
    }
    let again = dead
        .next(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the kept dead letter, listed again");
    assert_eq!(again.reason(), Some(kept_reason.as_str()));
    again.discard().await.unwrap();
    assert!(
        dead.list(10, Duration::from_millis(1500))
            .await
            .unwrap()
            .is_empty(),
        "the discarded ones are gone"
    );
    handle.shutdown().await;
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct User {
    name: String,
}

/// How often each job or user was seen.
type Seen = Mutex<HashMap<String, u32>>;

/// Counts a job; waits first, so that its events run as tasks.
async fn seen_job(seen: State<'_, Arc<Seen>>, ev: Event<'_, Job>, _tx: &mut ()) -> Outcome {
    tokio::time::sleep(Duration::from_millis(2)).await;
    *seen.lock().entry(ev.data.id.to_string()).or_default() += 1;
    Outcome::Ack
}

/// Counts a user.
async fn seen_user(seen: State<'_, Arc<Seen>>, ev: Event<'_, User>, _tx: &mut ()) -> Outcome {
    *seen.lock().entry(ev.data.name.clone()).or_default() += 1;
    Outcome::Ack
}

/// Two handlers with different event types in one runner: each gets exactly
/// its own events. One of them waits (so events queue behind it as tasks);
/// both carry state with `Handler::with_state`.
async fn several_handlers_each_get_their_events(b: Backend) {
    let jobs: Arc<Seen> = Arc::default();
    let users: Arc<Seen> = Arc::default();
    let runner = Runner::builder(b.bus.clone(), "multi")
        .concurrency(4)
        .handler(Handler::new("jobs", "multi.jobs", seen_job).with_state(jobs.clone()))
        .handler(Handler::new("users", "multi.users.*", seen_user).with_state(users.clone()))
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
            Handler::new(
                "plain",
                "sync.plain",
                move |ev: Event<'_, Job>, _tx: &mut ()| o1(&ev),
            )
            .retry(fast_retries(3)),
        )
        .handler(
            Handler::new(
                "keyed",
                "sync.keyed",
                move |ev: Event<'_, Job>, _tx: &mut ()| {
                    let o = o2(&ev);
                    if o == Outcome::Ack {
                        acked2.lock().push((ev.data.key.clone(), ev.data.id));
                    }
                    o
                },
            )
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
async fn ledger_entry(ledger: State<'_, Ledger>, ev: Event<'_, Job>, _tx: &mut ()) -> Outcome {
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
async fn shared_entry(ledger: State<'_, Arc<Ledger>>, ev: Event<'_, Job>, tx: &mut ()) -> Outcome {
    ledger_entry(State(&ledger), ev, tx).await
}

/// A plain `async fn` handler.
async fn count_job(ev: Event<'_, Job>, _tx: &mut ()) -> Outcome {
    if ev.data.id == u64::MAX {
        return Outcome::DeadLetter("impossible id".into());
    }
    Outcome::Ack
}

/// `async fn` handlers (plain and taking `State`), whose
/// futures the runner keeps without a box: waiting, retried, keyed and
/// dead-lettered events all take the same stages as boxed handlers.
async fn async_fn_handlers_are_run_in_place(b: Backend) {
    let runner = Runner::builder(b.bus.clone(), "fns")
        .concurrency(8)
        .handler(
            Handler::new("ledger", "fns.ledger", ledger_entry)
                .with_state(Ledger::default())
                .key(|j: &Job| j.key.clone())
                .retry(fast_retries(3)),
        )
        .handler(Handler::new("count", "fns.count", count_job));
    // The ledger is owned by the handler: reach it through a second,
    // shared one for the assertions.
    let shared = Arc::new(Ledger::default());
    let s2 = shared.clone();
    let runner = runner
        .handler(
            Handler::new("shared", "fns.shared", shared_entry)
                .with_state(s2)
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

/// An event waiting behind a slow event of its key is kept alive: with an
/// ack wait far shorter than the first event's handling, nothing is
/// delivered twice, and the key's events run once each, in order.
async fn waiting_behind_a_key_is_kept_alive(b: Backend) {
    let ack_wait = Duration::from_millis(300);
    let seen: Arc<Mutex<Vec<(u64, u32)>>> = Arc::default();
    let s = seen.clone();
    let runner = Runner::builder(b.bus.clone(), "waiting")
        .concurrency(8)
        .ack_wait(ack_wait)
        .handler(
            Handler::new(
                "h",
                "wait.>",
                boxed(move |ev: Event<'_, Job>, _tx| {
                    let s = s.clone();
                    Box::pin(async move {
                        if ev.data.id == 1 {
                            // Five ack waits: the events behind it wait as long.
                            tokio::time::sleep(ack_wait * 5).await;
                        }
                        s.lock().push((ev.data.id, ev.delivery_count));
                        Outcome::Ack
                    })
                }),
            )
            .key(|j: &Job| j.key.clone()),
        )
        .build();
    let handle = start(runner).await;
    for id in 1..=3 {
        b.bus.publish("wait.e", job(id, "k")).await.unwrap();
    }
    wait::until(Duration::from_secs(20), "the key's three events", || {
        seen.lock().len() >= 3
    })
    .await;
    // A redelivered copy would be in flight (queued behind the key) and be
    // handled before the graceful shutdown returns.
    let report = handle.shutdown().await;
    let seen = seen.lock().clone();
    assert_eq!(
        seen,
        vec![(1, 1), (2, 1), (3, 1)],
        "each once, in order, never redelivered"
    );
    assert_eq!(report.processed, 3, "{report:?}");
}

/// A key function that panics on one event: that event is dead-lettered
/// with the panic as its reason; the runner goes on with the others.
async fn a_panicking_key_is_dead_lettered(b: Backend) {
    let handled: Arc<Mutex<Vec<u64>>> = Arc::default();
    let h = handled.clone();
    let runner = Runner::builder(b.bus.clone(), "badkey")
        .handler(
            Handler::new(
                "h",
                "badkey.e",
                boxed(move |ev: Event<'_, Job>, _tx| {
                    let h = h.clone();
                    Box::pin(async move {
                        h.lock().push(ev.data.id);
                        Outcome::Ack
                    })
                }),
            )
            .key(|j: &Job| {
                assert!(j.id != 2, "no key for event 2");
                j.key.clone()
            }),
        )
        .build();
    let mut dead = runner.dead_letters().await.expect("open the dead letters");
    let handle = start(runner).await;
    for id in 1..=3 {
        b.bus.publish("badkey.e", job(id, "k")).await.unwrap();
    }
    let d = dead
        .next(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("a dead letter for the event whose key panicked");
    assert!(
        d.reason().unwrap().contains("key function panicked")
            && d.reason().unwrap().contains("no key for event 2"),
        "{d:?}"
    );
    // The runner still runs: a later event is handled.
    b.bus.publish("badkey.e", job(4, "k")).await.unwrap();
    wait::until(Duration::from_secs(10), "the other events", || {
        handled.lock().len() == 3
    })
    .await;
    let report = handle.shutdown().await;
    assert_eq!(*handled.lock(), vec![1, 3, 4]);
    assert_eq!(report.dead_lettered, 1, "{report:?}");
    assert_eq!(report.processed, 3, "{report:?}");
}

/// A dropped `RunnerHandle` does not stop the runner: it runs detached (like
/// a task from `tokio::spawn`), and the dead letters stay reachable from a
/// handle.
async fn a_dropped_handle_leaves_the_runner_running(b: Backend) {
    let handled = Arc::new(AtomicU32::new(0));
    let h = handled.clone();
    let runner = Runner::builder(b.bus.clone(), "detached")
        .handler(Handler::new(
            "h",
            "det.e",
            boxed(move |ev: Event<'_, Job>, _tx| {
                let h = h.clone();
                Box::pin(async move {
                    if ev.data.id == 0 {
                        return Outcome::DeadLetter("refused".into());
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    Outcome::Ack
                })
            }),
        ))
        .build();
    let handle = start(runner).await;
    let mut dead = handle
        .dead_letters()
        .await
        .expect("dead letters from the handle");
    drop(handle);
    // A runner that stopped on the drop would stop once it has nothing to
    // do: at the latest after this first event.
    b.bus.publish("det.e", job(1, "k")).await.unwrap();
    wait::until(Duration::from_secs(10), "the first event", || {
        handled.load(Ordering::SeqCst) == 1
    })
    .await;
    for id in [0, 2, 3] {
        b.bus.publish("det.e", job(id, "k")).await.unwrap();
    }
    wait::until(
        Duration::from_secs(10),
        "events handled after the drop",
        || handled.load(Ordering::SeqCst) == 3,
    )
    .await;
    let d = dead
        .next(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the dead letter");
    assert_eq!(d.reason(), Some("refused"));
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
    async_fn_handlers_are_run_in_place,
    waiting_behind_a_key_is_kept_alive,
    a_panicking_key_is_dead_lettered,
    a_dropped_handle_leaves_the_runner_running,
    long_handlers_are_kept_alive,
    concurrency_bounds_events_in_flight,
    dead_letters_list_and_keep
);

/// A NATS outage: the server is gone while events are in flight, so the
/// client takes no more acks, nacks or in-progress messages (its command
/// queue, kept small here, fills up). Shutdown still returns, within its
/// deadline plus a few answer timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_during_a_nats_outage() {
    let mut server = NatsServer::start().await.expect("start nats-server");
    let client = async_nats::ConnectOptions::new()
        .client_capacity(2)
        .connect(server.url())
        .await
        .unwrap();
    let bus: Arc<dyn EventBus> = Arc::new(NatsBus::new(client));
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let (shutdown_timeout, answer_timeout) =
        (Duration::from_millis(200), Duration::from_millis(300));
    let runner = Runner::builder(bus.clone(), "outage")
        .concurrency(8)
        .ack_wait(Duration::from_millis(300))
        .shutdown_timeout(shutdown_timeout)
        .answer_timeout(answer_timeout)
        .handler(Handler::new(
            "h",
            "outage.e",
            boxed(move |_ev: Event<'_, Job>, _tx| {
                let s = s.clone();
                Box::pin(async move {
                    s.fetch_add(1, Ordering::SeqCst);
                    // Longer than the test: only cancellation ends it.
                    tokio::time::sleep(Duration::from_secs(600)).await;
                    Outcome::Ack
                })
            }),
        ))
        .build();
    let handle = start(runner).await;
    for id in 1..=8 {
        bus.publish("outage.e", job(id, "k")).await.unwrap();
    }
    wait::until(Duration::from_secs(10), "events in flight", || {
        started.load(Ordering::SeqCst) == 8
    })
    .await;
    // From now on the client cannot reconnect; its queue fills with the
    // first answers (keep-alives, hand-backs).
    server.kill();
    let bound = shutdown_timeout + answer_timeout * 3 + Duration::from_secs(1);
    let at = std::time::Instant::now();
    let report = tokio::time::timeout(bound + Duration::from_secs(5), handle.shutdown())
        .await
        .expect("shutdown returned during the outage");
    assert!(at.elapsed() <= bound, "took {:?}", at.elapsed());
    assert_eq!(report.processed, 0, "{report:?}");
}

/// Two instances share a MemoryInbox and get the same event at once (here
/// from two buses): the second finds the claim held (`Conflict`) and waits
/// for it, apart from its handler's attempts, then finds it committed. It
/// is acknowledged as a duplicate: never dead-lettered, one effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_duplicate_waits_for_the_claim() {
    let inbox = Arc::new(MemoryInbox::default());
    let effects = Arc::new(AtomicU32::new(0));
    let buses: Vec<Arc<dyn EventBus>> =
        vec![Arc::new(InMemoryBus::new()), Arc::new(InMemoryBus::new())];
    let mut handles = Vec::new();
    for bus in &buses {
        let e = effects.clone();
        let runner = Runner::builder(bus.clone(), "dup")
            .inbox(inbox.clone())
            .handler(
                Handler::new(
                    "h",
                    "dup.e",
                    boxed(move |_ev: Event<'_, Job>, _tx| {
                        let e = e.clone();
                        Box::pin(async move {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            e.fetch_add(1, Ordering::SeqCst);
                            Outcome::Ack
                        })
                    }),
                )
                .retry(fast_retries(2)),
            )
            .build();
        handles.push(start(runner).await);
    }
    for bus in &buses {
        bus.publish_envelope(Envelope::new("dup.e", job(1, "k")).id("same-event"))
            .await
            .unwrap();
    }
    wait::until(Duration::from_secs(10), "both copies settled", || {
        handles
            .iter()
            .map(|h| {
                let r = h.report();
                r.processed + r.duplicates + r.dead_lettered
            })
            .sum::<u64>()
            == 2
    })
    .await;
    let mut reports = Vec::new();
    for h in handles {
        reports.push(h.shutdown().await);
    }
    assert_eq!(effects.load(Ordering::SeqCst), 1, "one effect");
    let sum = |f: fn(&event_bus::runner::RunReport) -> u64| reports.iter().map(f).sum::<u64>();
    assert_eq!(sum(|r| r.dead_lettered), 0, "{reports:?}");
    assert_eq!(sum(|r| r.processed), 1, "{reports:?}");
    assert_eq!(sum(|r| r.duplicates), 1, "{reports:?}");
    assert_eq!(sum(|r| r.retries), 0, "no failed attempt: {reports:?}");
}
