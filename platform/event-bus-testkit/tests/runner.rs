//! The event runner's handler shapes on both backends (in-memory and a
//! real nats-server), with the in-memory inbox: several handlers with their
//! own event types and state, sync closures with every outcome, `async fn`
//! handlers run in place. Failures: `runner_failures.rs`; order, keep-alive
//! and shutdown: `runner_order.rs`; layers: `runner_layers.rs`. PostgreSQL
//! scenarios are in event-bus-postgres.

use event_bus::runner::{Event, Handler, Outcome, Runner, State};
use event_bus_testkit::wait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::{fast_retries, job, memory, nats, start, Backend, Job};

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

event_bus_testkit::on_both_backends!(
    memory,
    nats;
    several_handlers_each_get_their_events,
    sync_handlers_have_every_outcome,
    async_fn_handlers_are_run_in_place
);
