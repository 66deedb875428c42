//! Scenarios of the dead-letter queue: dead letters read back where they are
//! stored ([`dlq::DeadLetterQueue`]), replayed and discarded.

use super::*;
use dlq::{DeadLetter, DeadLetterQueue};

/// Two events dead-lettered after `max_deliver` (1) are listed, oldest
/// first, with their origin, by every reader (reading changes nothing). A
/// replay publishes the event again on its original subject and removes
/// the letter; a discard removes it without publishing; a stale copy of
/// either (listed by another reader) is refused as `NotFound`, and then no
/// letter is left.
pub async fn dead_letter_queue_replay_and_discard(f: &dyn BusFactory) {
    let c = Ctx::new(f, "dlqq").await;
    let config = c.consumer_config("dlqq", "o.*").max_deliver(1);
    let dead_letters = config.dead_letter_subject.clone().unwrap();
    let mut live = if c.bus.capabilities().stored_messages {
        None
    } else {
        Some(
            c.bus
                .subscribe(&dead_letters)
                .await
                .expect("subscribe to the dead letters"),
        )
    };
    let mut consumer = c.consume(config.clone()).await;
    c.publish("o.replayed", "first").await;
    c.publish("o.discarded", "second").await;
    let ordered = c.bus.capabilities().order_across_subjects;
    let mut got = Vec::new();
    for expected in ["first", "second"] {
        let d = next_delivery(&mut consumer, expected).await;
        assert_eq!(d.delivery_count(), 1);
        let what = text(d.message());
        if ordered {
            assert_eq!(what, expected);
        } else {
            // Two subjects: stored in order per subject only.
            assert!(
                ["first", "second"].contains(&what.as_str()) && !got.contains(&what),
                "{what}"
            );
            got.push(what.clone());
        }
        // The last allowed delivery: the nack dead-letters it.
        d.nack_with_reason(None, format!("broken {what}"))
            .await
            .unwrap_or_else(|e| panic!("nack of the last delivery of {what:?}: {e}"));
    }
    drop(consumer);
    if let Some(live) = live.as_mut() {
        let mut letters = Vec::new();
        for _ in 0..2 {
            let m = recv(live, "a dead letter").await;
            assert_eq!(m.headers.get(dlq::CONSUMER), Some(config.name.as_str()));
            letters.push(text(&m));
        }
        letters.sort();
        assert_eq!(letters, ["first", "second"], "both dead letters, once each");
        capability_note(
            &c,
            "dead_letter_queue_replay_and_discard",
            "stored_messages",
            "the dead letters are published (read live here); listing, replay and discard are Unsupported errors",
        );
        let err = c
            .bus
            .stored_streams(&dead_letters)
            .await
            .expect_err("stored_streams must be refused when stored_messages is false");
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        assert!(err.to_string().contains("stored messages"), "{err}");
        return;
    }

    let open = |reader: &'static str| {
        let bus = c.bus.clone();
        let subject = dead_letters.clone();
        async move {
            DeadLetterQueue::open(bus, &subject, reader)
                .await
                .unwrap_or_else(|e| panic!("DeadLetterQueue::open({subject:?}): {e}"))
        }
    };
    let list = |mut queue: DeadLetterQueue, wait: Duration| async move {
        let letters = queue
            .list(10, wait)
            .await
            .unwrap_or_else(|e| panic!("listing dead letters: {e}"));
        letters
    };
    let mut a = list(open("a").await, Duration::from_millis(500)).await;
    let mut b = list(open("b").await, Duration::from_millis(500)).await;
    let payloads = |letters: &[DeadLetter]| -> Vec<String> {
        letters.iter().map(|l| text(l.message())).collect()
    };
    if !ordered {
        // Dead-lettered in the order delivered, which follows the two
        // subjects' partitions: compare as sets ("first" < "second").
        a.sort_by_key(|l| text(l.message()));
        b.sort_by_key(|l| text(l.message()));
    }
    assert_eq!(payloads(&a), ["first", "second"], "reader a: {a:?}");
    assert_eq!(payloads(&b), ["first", "second"], "reader b: {b:?}");
    for (letter, suffix) in a.iter().zip(["o.replayed", "o.discarded"]) {
        assert_eq!(letter.original_subject(), Some(c.subject(suffix).as_str()));
        assert_eq!(letter.consumer(), Some(config.name.as_str()));
        assert_eq!(letter.delivery_count(), Some(1));
        let reason = letter.reason().unwrap_or_default();
        assert!(reason.contains("broken"), "reason {reason:?}");
        assert_eq!(letter.message().subject.as_str(), dead_letters);
    }

    let mut replayed = c.sub("o.replayed").await;
    let mut a = a.into_iter();
    let mut b = b.into_iter();
    a.next()
        .unwrap()
        .replay()
        .await
        .unwrap_or_else(|e| panic!("replay: {e}"));
    let m = recv(&mut replayed, "the replayed event").await;
    assert_eq!(text(&m), "first");
    assert!(
        m.headers.iter().all(|(n, _)| !n.starts_with(dlq::PREFIX)),
        "the replayed event carries no dead-letter headers: {:?}",
        m.headers
    );
    let e = b
        .next()
        .unwrap()
        .replay()
        .await
        .expect_err("a second replay of the same dead letter");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    a.next()
        .unwrap()
        .discard()
        .await
        .unwrap_or_else(|e| panic!("discard: {e}"));
    let e = b
        .next()
        .unwrap()
        .discard()
        .await
        .expect_err("a second discard of the same dead letter");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    // Nothing else was published on the original subject (no second replay,
    // no publish by the discard): the next message is a marker.
    c.publish("o.replayed", "marker").await;
    assert_eq!(text(&recv(&mut replayed, "the marker").await), "marker");
    let left = list(open("c").await, Duration::ZERO).await;
    assert!(left.is_empty(), "letters left: {left:?}");
}
