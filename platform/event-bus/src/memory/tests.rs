//! Unit tests of the in-memory bus (the shared behaviour is in the
//! conformance suite of event-bus-testkit).

use super::*;
use futures::{FutureExt, StreamExt};
use std::task::{Context, Poll};

fn options(capacity: usize, overflow: Overflow) -> SubscribeOptions {
    SubscribeOptions { capacity, overflow }
}

fn payloads(msgs: &[BusMessage]) -> Vec<Vec<u8>> {
    msgs.iter().map(|m| m.payload.to_vec()).collect()
}

/// Takes what `sub` has queued right now, without waiting.
fn take_queued(sub: &mut MemorySubscription) -> Vec<BusMessage> {
    let mut out = Vec::new();
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    while let Poll::Ready(Some(m)) = sub.poll_next_unpin(&mut cx) {
        out.push(m);
    }
    out
}

fn queue_of(bus: &InMemoryBus, pattern: &str) -> Arc<SubQueue> {
    bus.inner
        .subs
        .lock()
        .values()
        .find(|q| &*q.pattern == pattern)
        .cloned()
        .expect("a subscription on the pattern")
}

/// A fresh waker each call, which never `will_wake` the previous one.
fn fresh_waker() -> std::task::Waker {
    struct Nop;
    impl futures::task::ArcWake for Nop {
        fn wake_by_ref(_: &Arc<Self>) {}
    }
    futures::task::waker(Arc::new(Nop))
}

/// `DropNewest`: a full queue drops the message being published, counts it
/// for the subscription and the bus, and takes messages again once read.
#[tokio::test]
async fn drop_newest_drops_and_counts_the_new_message() {
    let bus = InMemoryBus::new();
    let mut sub = bus
        .subscribe_with("d.n", options(2, Overflow::DropNewest))
        .unwrap();
    for i in 1..=5u8 {
        // Never waits, whatever the queue holds.
        bus.publish("d.n", vec![i]).await.unwrap();
    }
    assert_eq!(payloads(&take_queued(&mut sub)), vec![vec![1], vec![2]]);
    assert_eq!(sub.dropped(), 3);
    let stats = bus.stats();
    assert_eq!(stats.dropped, 3);
    assert_eq!(stats.subscriptions[0].dropped, 3);
    assert_eq!(stats.subscriptions[0].overflow, Overflow::DropNewest);
    bus.publish("d.n", vec![6]).await.unwrap();
    assert_eq!(payloads(&take_queued(&mut sub)), vec![vec![6]]);
    assert_eq!(sub.dropped(), 3);
}

/// `DropOldest`: a full queue drops its oldest message to make room.
#[tokio::test]
async fn drop_oldest_drops_and_counts_the_oldest_message() {
    let bus = InMemoryBus::new();
    let mut sub = bus
        .subscribe_with("d.o", options(2, Overflow::DropOldest))
        .unwrap();
    // A lossless subscriber beside it gets everything.
    let mut all = bus
        .subscribe_with("d.*", options(16, Overflow::Block))
        .unwrap();
    for i in 1..=5u8 {
        bus.publish("d.o", vec![i]).await.unwrap();
    }
    assert_eq!(payloads(&take_queued(&mut sub)), vec![vec![4], vec![5]]);
    assert_eq!(sub.dropped(), 3);
    assert_eq!(all.dropped(), 0);
    assert_eq!(take_queued(&mut all).len(), 5);
    assert_eq!(bus.stats().dropped, 3);
}

/// A full lossless queue holds up publishers of the subjects it listens to
/// only: a publisher of another subject goes on.
#[tokio::test]
async fn a_full_queue_does_not_block_publishers_of_other_subjects() {
    let bus = InMemoryBus::new();
    let _stalled = bus
        .subscribe_with("a.*", options(1, Overflow::Block))
        .unwrap();
    let mut b = bus
        .subscribe_with("b.*", options(1, Overflow::Block))
        .unwrap();
    bus.publish("a.x", b"1".to_vec()).await.unwrap();
    let mut blocked = bus.publish("a.x", b"2".to_vec());
    assert!(
        futures::poll!(&mut blocked).is_pending(),
        "the publish to the full queue waits"
    );
    tokio::time::timeout(
        Duration::from_secs(5),
        bus.publish("b.x", b"other".to_vec()),
    )
    .await
    .expect("a publisher of another subject is not blocked")
    .unwrap();
    assert_eq!(payloads(&take_queued(&mut b)), vec![b"other".to_vec()]);
    assert!(futures::poll!(&mut blocked).is_pending());
}

/// A publish waiting for room fails with `Closed` when the bus closes: the
/// message was never queued (it used to return `Ok`).
#[tokio::test]
async fn a_blocked_publish_fails_when_the_bus_closes() {
    let bus = InMemoryBus::new();
    let _stalled = bus
        .subscribe_with("c.x", options(1, Overflow::Block))
        .unwrap();
    bus.publish("c.x", b"1".to_vec()).await.unwrap();
    let closer = bus.clone();
    let mut blocked = bus.publish("c.x", b"2".to_vec());
    assert!(futures::poll!(&mut blocked).is_pending());
    closer.close();
    let err = tokio::time::timeout(Duration::from_secs(5), blocked)
        .await
        .expect("released by the close")
        .expect_err("a message that was never queued is not Ok");
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    assert!(err.to_string().contains("c.x"), "{err}");
}

/// A publish waiting for a subscriber that goes away completes (there is
/// nobody left to deliver to), as before.
#[tokio::test]
async fn a_blocked_publish_completes_when_its_subscriber_leaves() {
    let bus = InMemoryBus::new();
    let stalled = bus
        .subscribe_with("c.y", options(1, Overflow::Block))
        .unwrap();
    bus.publish("c.y", b"1".to_vec()).await.unwrap();
    let mut blocked = bus.publish("c.y", b"2".to_vec());
    assert!(futures::poll!(&mut blocked).is_pending());
    drop(stalled);
    blocked.await.unwrap();
}

/// A blocked publish keeps one waker in the queue however often it is
/// polled (with a different waker each time), and none once dropped.
#[tokio::test]
async fn one_waker_per_blocked_publisher() {
    let bus = InMemoryBus::new();
    let mut sub = bus
        .subscribe_with("w.x", options(1, Overflow::Block))
        .unwrap();
    let queue = queue_of(&bus, "w.x");
    bus.publish("w.x", b"1".to_vec()).await.unwrap();
    let mut blocked = bus.publish("w.x", b"2".to_vec());
    for _ in 0..1000 {
        let waker = fresh_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(blocked.poll_unpin(&mut cx).is_pending());
    }
    assert_eq!(queue.waiting_publishers(), 1);
    // A second blocked publisher has its own entry.
    let mut other = bus.publish("w.x", b"3".to_vec());
    for _ in 0..10 {
        assert!(futures::poll!(&mut other).is_pending());
    }
    assert_eq!(queue.waiting_publishers(), 2);
    // Publishes abandoned under a timeout, again and again, leave nothing behind.
    drop(other);
    for _ in 0..100 {
        let _ = tokio::time::timeout(Duration::ZERO, bus.publish("w.x", b"x".to_vec())).await;
    }
    assert_eq!(queue.waiting_publishers(), 1);
    // Reading makes room and releases the publisher.
    assert_eq!(payloads(&take_queued(&mut sub)), vec![b"1".to_vec()]);
    blocked.await.unwrap();
    assert_eq!(queue.waiting_publishers(), 0);
    assert_eq!(payloads(&take_queued(&mut sub)), vec![b"2".to_vec()]);
}

fn envelope(subject: &str, id: &str, payload: &[u8]) -> Envelope {
    Envelope::new(subject, payload.to_vec()).id(id)
}

/// A publish that times out waiting for a slow subscriber and is
/// retried with the same id (the documented recovery) is delivered, not
/// reported as a duplicate; once delivered, the id is a duplicate.
#[tokio::test]
async fn a_timed_out_publish_retried_with_its_id_is_delivered() {
    let bus = InMemoryBus::new();
    let mut slow = bus
        .subscribe_with("m.x", options(1, Overflow::Block))
        .unwrap();
    bus.publish("m.x", b"filler".to_vec()).await.unwrap();
    let timed_out = tokio::time::timeout(
        Duration::from_millis(50),
        bus.publish_envelope(envelope("m.x", "order-1", b"event")),
    )
    .await;
    assert!(timed_out.is_err(), "the queue is full: the publish waits");
    // The slow subscriber catches up; the publisher retries with the same id.
    assert_eq!(payloads(&take_queued(&mut slow)), vec![b"filler".to_vec()]);
    let ack = tokio::time::timeout(
        Duration::from_secs(5),
        bus.publish_envelope(envelope("m.x", "order-1", b"event")),
    )
    .await
    .expect("room in the queue")
    .unwrap();
    assert!(!ack.duplicate, "the first attempt never delivered it");
    let got = take_queued(&mut slow);
    assert_eq!(payloads(&got), vec![b"event".to_vec()]);
    assert_eq!(got[0].id.to_string(), "order-1");
    let again = bus
        .publish_envelope(envelope("m.x", "order-1", b"event"))
        .await
        .unwrap();
    assert!(again.duplicate, "delivered once: now a duplicate");
    assert!(take_queued(&mut slow).is_empty());
}

/// While a publish with an id waits for room, the same id published again
/// is a duplicate (the first will deliver it).
#[tokio::test]
async fn an_id_being_published_is_a_duplicate() {
    let bus = InMemoryBus::new();
    let _slow = bus
        .subscribe_with("m.y", options(1, Overflow::Block))
        .unwrap();
    bus.publish("m.y", b"filler".to_vec()).await.unwrap();
    let mut first = bus.publish_envelope(envelope("m.y", "id-1", b"a"));
    assert!(futures::poll!(&mut first).is_pending());
    let second = bus
        .publish_envelope(envelope("m.y", "id-1", b"a"))
        .await
        .unwrap();
    assert!(second.duplicate);
}

/// The de-duplication window is bounded by count as well as by time.
#[tokio::test]
async fn dedup_window_is_bounded_by_count() {
    let bus = InMemoryBus::with_config(MemoryConfig {
        dedup_max_ids: 3,
        ..MemoryConfig::default()
    });
    let _sub = bus.subscribe("k.>").await.unwrap();
    for i in 0..10 {
        let ack = bus
            .publish_envelope(envelope("k.x", &format!("id-{i}"), b"p"))
            .await
            .unwrap();
        assert!(!ack.duplicate);
    }
    {
        let dedup = bus.inner.dedup.lock();
        assert_eq!(dedup.seen.len(), 3);
        assert_eq!(dedup.order.len(), 3);
    }
    // The 3 newest are remembered, the oldest forgotten.
    for (i, duplicate) in [(9, true), (7, true), (0, false)] {
        let ack = bus
            .publish_envelope(envelope("k.x", &format!("id-{i}"), b"p"))
            .await
            .unwrap();
        assert_eq!(ack.duplicate, duplicate, "id-{i}");
    }
    assert!(bus.inner.dedup.lock().seen.len() <= 3);
}

/// The default count bound, and the time bound, with paused time.
#[tokio::test(start_paused = true)]
async fn dedup_window_is_bounded_by_time() {
    let bus = InMemoryBus::new();
    assert_eq!(bus.config().dedup_max_ids, 100_000);
    let _sub = bus.subscribe("k.>").await.unwrap();
    let first = bus
        .publish_envelope(envelope("k.x", "t", b"p"))
        .await
        .unwrap();
    assert!(!first.duplicate);
    tokio::time::advance(Duration::from_secs(119)).await;
    assert!(
        bus.publish_envelope(envelope("k.x", "t", b"p"))
            .await
            .unwrap()
            .duplicate
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(
        !bus.publish_envelope(envelope("k.x", "t", b"p"))
            .await
            .unwrap()
            .duplicate
    );
}

// ------------------------------------------------------------------ the log

use crate::consumer::{ConsumerConfig, ConsumerStream, StartPosition};
use crate::EventBusExt;

async fn publish_n(bus: &InMemoryBus, subject: &str, range: std::ops::Range<u32>) -> Vec<u64> {
    let mut seqs = Vec::new();
    for i in range {
        let env = Envelope::new(subject, i.to_string().into_bytes());
        seqs.push(bus.publish_envelope(env).await.unwrap().sequence);
    }
    seqs
}

async fn take_texts(c: &mut ConsumerStream, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let d = tokio::time::timeout(Duration::from_secs(5), c.next())
            .await
            .expect("a delivery")
            .unwrap()
            .unwrap();
        out.push(String::from_utf8(d.payload.to_vec()).unwrap());
        d.ack().await.unwrap();
    }
    out
}

fn texts(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| i.to_string()).collect()
}

/// Item 12: once a durable consumer exists, the log records; a consumer
/// created later with `All` gets the earlier messages, with `Sequence(n)`
/// starts at n, and both go on with new ones, without duplicates.
#[tokio::test]
async fn durable_consumers_start_from_the_log() {
    let bus = InMemoryBus::new();
    let _first = bus
        .consume(ConsumerConfig::new("first", "q.>"))
        .await
        .unwrap();
    let seqs = publish_n(&bus, "q.a", 0..5).await;
    publish_n(&bus, "other.a", 0..2).await; // outside the filter, nobody listens
    let mut all = bus
        .consume(ConsumerConfig::new("all", "q.>").start(StartPosition::All))
        .await
        .unwrap();
    let mut from = bus
        .consume(ConsumerConfig::new("from", "q.*").start(StartPosition::Sequence(seqs[2])))
        .await
        .unwrap();
    assert_eq!(take_texts(&mut all, 5).await, texts(0..5));
    assert_eq!(take_texts(&mut from, 3).await, texts(2..5));
    publish_n(&bus, "q.a", 5..7).await;
    assert_eq!(take_texts(&mut all, 2).await, texts(5..7));
    assert_eq!(take_texts(&mut from, 2).await, texts(5..7));
    assert!(futures::poll!(all.next()).is_pending(), "no duplicate");
    // A sequence ahead starts when it comes.
    let next = bus.stats().published + 2;
    let mut ahead = bus
        .consume(ConsumerConfig::new("ahead", "q.>").start(StartPosition::Sequence(next)))
        .await
        .unwrap();
    publish_n(&bus, "q.a", 7..10).await;
    assert_eq!(take_texts(&mut ahead, 2).await, texts(8..10));
    assert_eq!(bus.stats().log_messages, 12);
}

/// With `log_from_start`, messages published before any consumer (even
/// with no subscriber at all) are replayed.
#[tokio::test]
async fn log_from_start_records_before_any_consumer() {
    let bus = InMemoryBus::with_config(MemoryConfig {
        log_from_start: true,
        ..MemoryConfig::default()
    });
    publish_n(&bus, "early.x", 0..3).await;
    let mut all = bus
        .consume(ConsumerConfig::new("late", "early.>").start(StartPosition::All))
        .await
        .unwrap();
    assert_eq!(take_texts(&mut all, 3).await, texts(0..3));
    let mut seq2 = bus
        .consume(ConsumerConfig::new("late2", "early.>").start(StartPosition::Sequence(2)))
        .await
        .unwrap();
    assert_eq!(take_texts(&mut seq2, 2).await, texts(1..3));
}

/// A sequence the log no longer holds, or never recorded, and any replay
/// with the log disabled, is `Unsupported`, naming the setting; never a
/// consumer that silently starts later.
#[tokio::test]
async fn starts_the_log_cannot_honour_are_unsupported() {
    let bus = InMemoryBus::with_config(MemoryConfig {
        log_max_messages: 3,
        ..MemoryConfig::default()
    });
    publish_n(&bus, "u.x", 0..2).await; // before the log records
    let _first = bus
        .consume(ConsumerConfig::new("first", "u.>"))
        .await
        .unwrap();
    let seqs = publish_n(&bus, "u.x", 2..7).await;
    assert_eq!(bus.stats().log_messages, 3);
    for n in [1, seqs[0], seqs[1]] {
        let err = bus
            .consume(
                ConsumerConfig::new(format!("evicted{n}"), "u.>").start(StartPosition::Sequence(n)),
            )
            .await
            .err()
            .expect("not in the log");
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        assert!(err.to_string().contains("log_max_messages"), "{err}");
    }
    let mut kept = bus
        .consume(ConsumerConfig::new("kept", "u.>").start(StartPosition::Sequence(seqs[2])))
        .await
        .unwrap();
    assert_eq!(take_texts(&mut kept, 3).await, texts(4..7));
    // `All` starts with the oldest message held, as on a stream with limits.
    let mut all = bus
        .consume(ConsumerConfig::new("all", "u.>").start(StartPosition::All))
        .await
        .unwrap();
    assert_eq!(take_texts(&mut all, 3).await, texts(4..7));

    let off = InMemoryBus::with_config(MemoryConfig {
        log_max_messages: 0,
        ..MemoryConfig::default()
    });
    let _live = off
        .consume(ConsumerConfig::new("live", "u.>"))
        .await
        .unwrap();
    for start in [StartPosition::All, StartPosition::Sequence(1)] {
        let err = off
            .consume(ConsumerConfig::new("replay", "u.>").start(start))
            .await
            .err()
            .expect("no log");
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        assert!(err.to_string().contains("log_max_messages = 0"), "{err}");
    }
    publish_n(&off, "u.x", 0..3).await;
    assert_eq!(off.stats().log_messages, 0);
}

/// The log is bounded by bytes too.
#[tokio::test]
async fn the_log_is_bounded_by_bytes() {
    let bus = InMemoryBus::with_config(MemoryConfig {
        log_max_bytes: 1000,
        log_from_start: true,
        ..MemoryConfig::default()
    });
    for _ in 0..50 {
        bus.publish("b.x", vec![0; 100]).await.unwrap();
    }
    let stats = bus.stats();
    assert!(stats.log_bytes <= 1000, "{stats:?}");
    assert_eq!(stats.log_messages, 9, "{stats:?}"); // 103 bytes each
}

/// Plain publish/subscribe records nothing (it does not pay for the log)
/// until a durable consumer exists.
#[tokio::test]
async fn plain_publish_subscribe_records_nothing() {
    let bus = InMemoryBus::new();
    let mut sub = bus.subscribe("p.>").await.unwrap();
    for i in 0..10u8 {
        bus.publish("p.x", vec![i]).await.unwrap();
    }
    assert_eq!(recv_all(&mut sub, 10).await.len(), 10);
    assert_eq!(bus.stats().log_messages, 0);
    let _c = bus.consume(ConsumerConfig::new("c", "c.>")).await.unwrap();
    bus.publish("p.x", vec![10]).await.unwrap();
    assert_eq!(bus.stats().log_messages, 1);
}

async fn recv_all(sub: &mut Subscription, n: usize) -> Vec<BusMessage> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(sub.next().await.unwrap());
    }
    out
}

/// Consumers created with `All` while publishers run get every message
/// exactly once, in each publisher's order: nothing falls between the log
/// and their feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_created_under_load_misses_nothing() {
    let bus = InMemoryBus::new();
    let _first = bus
        .consume(ConsumerConfig::new("first", "r.>"))
        .await
        .unwrap();
    let n = 20_000u32;
    let publishers: Vec<_> = (0..2u32)
        .map(|p| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for i in 0..n / 2 {
                    // Half of them through a route not yet cached.
                    let subject = if i % 2 == 0 {
                        "r.x".to_string()
                    } else {
                        format!("r.{p}.{i}")
                    };
                    let payload = [p.to_be_bytes(), i.to_be_bytes()].concat();
                    bus.publish(&subject, payload).await.unwrap();
                }
            })
        })
        .collect();
    let mut replays = Vec::new();
    for k in 0..6 {
        for _ in 0..k * 20 {
            tokio::task::yield_now().await;
        }
        let config = ConsumerConfig::new(format!("all{k}"), "r.>")
            .start(StartPosition::All)
            .max_ack_pending(usize::MAX / 2);
        replays.push(bus.consume(config).await.unwrap());
    }
    for p in publishers {
        p.await.unwrap();
    }
    for mut all in replays {
        let mut next = [0u32; 2];
        for _ in 0..n {
            let d = tokio::time::timeout(Duration::from_secs(10), all.next())
                .await
                .expect("every message")
                .unwrap()
                .unwrap();
            let p = u32::from_be_bytes(d.payload[..4].try_into().unwrap()) as usize;
            let i = u32::from_be_bytes(d.payload[4..].try_into().unwrap());
            assert_eq!(i, next[p], "publisher {p}: each message once, in order");
            next[p] += 1;
            d.ack().await.unwrap();
        }
        assert!(futures::poll!(all.next()).is_pending());
    }
}
