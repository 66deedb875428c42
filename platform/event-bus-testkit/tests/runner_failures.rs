//! The event runner's failures on both backends (in-memory and a real
//! nats-server), with the in-memory inbox: retries, caught panics, dead
//! letters (listed, kept, replayed), undecodable events.

use event_bus::dlq;
use event_bus::runner::{boxed, Event, Handler, MemoryInbox, Outcome, Runner};
use event_bus::Envelope;
use event_bus_testkit::wait;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::{fast_retries, job, memory, nats, start, Backend, Job};

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

event_bus_testkit::on_both_backends!(
    memory,
    nats;
    fails_twice_then_succeeds,
    a_panic_is_caught_and_retried,
    always_fails_is_dead_lettered_and_replayable,
    undecodable_is_dead_lettered_at_once,
    dead_letters_list_and_keep,
    a_panicking_key_is_dead_lettered
);
