//! The event runner's order and lifetime on both backends (in-memory and a
//! real nats-server), with the in-memory inbox: per-key order, concurrency
//! bounds, keep-alive of long and waiting events, graceful shutdown (also
//! during a NATS outage), a dropped handle, concurrent duplicates.

use event_bus::runner::{boxed, Event, Handler, MemoryInbox, Outcome, Runner};
use event_bus::{Envelope, EventBus, InMemoryBus, NatsBus};
use event_bus_testkit::nats_server::NatsServer;
use event_bus_testkit::wait;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::{fast_retries, job, memory, nats, start, Backend, Job};

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
    per_key_order_with_concurrency_8,
    graceful_shutdown_loses_nothing,
    long_handlers_are_kept_alive,
    concurrency_bounds_events_in_flight,
    waiting_behind_a_key_is_kept_alive,
    a_dropped_handle_leaves_the_runner_running
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
