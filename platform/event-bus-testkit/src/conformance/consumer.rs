//! Scenarios of durable consumers: ack, nack, ack wait, term, dead letters,
//! work sharing, resuming, start positions, limits.

use super::*;

/// The next delivery, or a panic naming what was awaited.
pub async fn next_delivery(c: &mut ConsumerStream, what: &str) -> Delivery {
    loop {
        match tokio::time::timeout(RECV_TIMEOUT, c.next()).await {
            Ok(Some(Ok(d))) => return d,
            Ok(Some(Err(e))) if e.kind().is_transient() => continue,
            Ok(Some(Err(e))) => panic!("consumer error while waiting for {what}: {e}"),
            Ok(None) => panic!("consumer ended while waiting for {what}"),
            Err(_) => panic!("no delivery within {RECV_TIMEOUT:?} while waiting for {what}"),
        }
    }
}

/// Asserts that nothing is delivered within `window` (used after the last
/// expected delivery, with `window` longer than the ack wait).
pub async fn assert_no_delivery(c: &mut ConsumerStream, window: Duration, why: &str) {
    let deadline = tokio::time::Instant::now() + window;
    loop {
        match tokio::time::timeout_at(deadline, c.next()).await {
            Err(_) => return,
            Ok(Some(Err(e))) if e.kind().is_transient() => continue,
            Ok(Some(Ok(d))) => panic!(
                "unexpected delivery {:?} (count {}): {why}",
                text(d.message()),
                d.delivery_count()
            ),
            Ok(other) => panic!("consumer failed or ended: {other:?}"),
        }
    }
}

impl Ctx {
    /// A consumer config named after this scenario on `suffix` (a pattern),
    /// dead letters to `<prefix>.dlq.<name>`.
    pub fn consumer_config(&self, name: &str, suffix: &str) -> ConsumerConfig {
        let name = format!("{}-{name}", self.prefix);
        ConsumerConfig::new(name.clone(), self.subject(suffix))
            .dead_letter_subject(Some(self.subject(&format!("dlq.{name}"))))
            .ack_wait(Duration::from_millis(800))
    }

    /// Opens a durable consumer; panics on error.
    pub async fn consume(&self, config: ConsumerConfig) -> ConsumerStream {
        let name = config.name.clone();
        self.bus
            .consume(config)
            .await
            .unwrap_or_else(|e| panic!("consume({name:?}) failed: {e}"))
    }
}

/// An acked event is never delivered again, also after the consumer is re-opened.
pub async fn consumer_ack(f: &dyn BusFactory) {
    let c = Ctx::new(f, "cack").await;
    let config = c.consumer_config("ack", "jobs.*");
    let mut consumer = c.consume(config.clone()).await;
    for i in 0..5 {
        c.publish("jobs.a", i.to_string()).await;
    }
    for i in 0..5 {
        let d = next_delivery(&mut consumer, "a new job").await;
        assert_eq!(text(d.message()), i.to_string());
        assert_eq!(d.delivery_count(), 1);
        d.ack().await.expect("ack");
    }
    drop(consumer);
    let mut consumer = c.consume(config).await;
    c.publish("jobs.a", "after-reopen").await;
    let d = next_delivery(&mut consumer, "the job published after re-opening").await;
    assert_eq!(
        text(d.message()),
        "after-reopen",
        "an acked job was delivered again"
    );
    d.ack().await.unwrap();
    assert_no_delivery(
        &mut consumer,
        Duration::from_millis(1500),
        "everything was acked",
    )
    .await;
}

/// A nack redelivers with the count increased; a delayed nack not before its delay.
pub async fn consumer_nack(f: &dyn BusFactory) {
    let c = Ctx::new(f, "cnack").await;
    let mut consumer = c.consume(c.consumer_config("nack", "n")).await;
    c.publish("n", "job").await;
    let d = next_delivery(&mut consumer, "first delivery").await;
    assert_eq!(d.delivery_count(), 1);
    let id = d.id.clone();
    d.nack(None).await.unwrap();
    let d = next_delivery(&mut consumer, "redelivery after nack").await;
    assert_eq!(d.id, id);
    assert_eq!(d.delivery_count(), 2);
    let delay = Duration::from_millis(600);
    let nacked_at = std::time::Instant::now();
    d.nack(Some(delay)).await.unwrap();
    let d = next_delivery(&mut consumer, "redelivery after a delayed nack").await;
    let waited = nacked_at.elapsed();
    assert!(
        waited >= delay,
        "redelivered after {waited:?}, before the {delay:?} delay"
    );
    assert_eq!(d.delivery_count(), 3);
    d.ack().await.unwrap();
}

/// A delivery not answered within the ack wait is delivered again.
pub async fn consumer_ack_wait(f: &dyn BusFactory) {
    let c = Ctx::new(f, "cwait").await;
    let config = c
        .consumer_config("wait", "w")
        .ack_wait(Duration::from_millis(500));
    let mut consumer = c.consume(config).await;
    c.publish("w", "slow").await;
    let d = next_delivery(&mut consumer, "first delivery").await;
    let at = std::time::Instant::now();
    drop(d); // no answer
    let d = next_delivery(&mut consumer, "redelivery after the ack wait").await;
    assert!(
        at.elapsed() >= Duration::from_millis(400),
        "redelivered after {:?}",
        at.elapsed()
    );
    assert_eq!(d.delivery_count(), 2);
    d.in_progress().await.unwrap();
    d.ack().await.unwrap();
}

/// A terminated event is never delivered again.
pub async fn consumer_term(f: &dyn BusFactory) {
    let c = Ctx::new(f, "cterm").await;
    let config = c
        .consumer_config("term", "t")
        .ack_wait(Duration::from_millis(400));
    let mut consumer = c.consume(config).await;
    c.publish("t", "poison").await;
    let d = next_delivery(&mut consumer, "the poison message").await;
    d.term(Some("unprocessable".into())).await.unwrap();
    assert_no_delivery(
        &mut consumer,
        Duration::from_millis(1200),
        "a terminated message must not come back",
    )
    .await;
}

fn assert_dead_letter(m: &BusMessage, c: &Ctx, consumer: &str, count: u32, error_part: &str) {
    assert_eq!(
        m.headers.get(dlq::ORIGINAL_SUBJECT),
        Some(c.subject("d").as_str()),
        "{m:?}"
    );
    assert_eq!(m.headers.get(dlq::CONSUMER), Some(consumer), "{m:?}");
    assert_eq!(
        m.headers.get(dlq::DELIVERY_COUNT),
        Some(count.to_string().as_str()),
        "{m:?}"
    );
    let seq: u64 = m
        .headers
        .get(dlq::ORIGINAL_SEQUENCE)
        .expect("sequence header")
        .parse()
        .expect("a number");
    assert!(seq >= 1);
    assert!(m.headers.get(dlq::ORIGINAL_ID).is_some());
    let last = m.headers.get(dlq::LAST_ERROR).expect("last error header");
    assert!(
        last.contains(error_part),
        "last error {last:?} should mention {error_part:?}"
    );
    assert_eq!(text(m), "doomed");
}

/// After the last allowed delivery, exactly one dead letter with the origin headers, and no more deliveries.
pub async fn consumer_max_deliver_dead_letters(f: &dyn BusFactory) {
    let c = Ctx::new(f, "cdlq").await;
    let config = c.consumer_config("dlq", "d").max_deliver(3);
    let dlq_subject = config.dead_letter_subject.clone().unwrap();
    let dlq_suffix = dlq_subject
        .strip_prefix(&format!("{}.", c.prefix()))
        .unwrap()
        .to_string();
    let mut dead = c.sub(&dlq_suffix).await;
    let mut consumer = c.consume(config.clone()).await;
    c.publish("d", "doomed").await;
    for attempt in 1..=3 {
        let d = next_delivery(&mut consumer, "a failing delivery").await;
        assert_eq!(d.delivery_count(), attempt);
        d.nack_with_reason(None, format!("boom {attempt}"))
            .await
            .unwrap();
    }
    let m = recv(&mut dead, "the dead letter").await;
    assert_dead_letter(&m, &c, &config.name, 3, "boom 3");
    c.publish(&dlq_suffix, "sentinel").await;
    assert_eq!(
        text(&recv(&mut dead, "sentinel").await),
        "sentinel",
        "exactly one dead letter"
    );
    assert_no_delivery(
        &mut consumer,
        Duration::from_millis(1500),
        "a dead-lettered message is not delivered again",
    )
    .await;
}

/// A last delivery left unanswered (ack wait ran out) is dead-lettered too.
pub async fn consumer_unanswered_last_delivery_dead_letters(f: &dyn BusFactory) {
    let c = Ctx::new(f, "cdlqwait").await;
    let config = c
        .consumer_config("dlqwait", "d")
        .max_deliver(2)
        .ack_wait(Duration::from_millis(400));
    let dlq_subject = config.dead_letter_subject.clone().unwrap();
    let dlq_suffix = dlq_subject
        .strip_prefix(&format!("{}.", c.prefix()))
        .unwrap()
        .to_string();
    let mut dead = c.sub(&dlq_suffix).await;
    let mut consumer = c.consume(config.clone()).await;
    c.publish("d", "doomed").await;
    let d = next_delivery(&mut consumer, "delivery 1").await;
    d.nack_with_reason(None, "first failure").await.unwrap();
    let d = next_delivery(&mut consumer, "delivery 2").await;
    assert_eq!(d.delivery_count(), 2);
    drop(d); // the handler "crashed": no answer
             // The consumer must keep being polled for the spare delivery to be dead-lettered.
    let poll = async {
        assert_no_delivery(
            &mut consumer,
            Duration::from_millis(2500),
            "max_deliver is 2",
        )
        .await;
    };
    let (_, m) = futures::future::join(poll, recv(&mut dead, "the dead letter")).await;
    assert_dead_letter(&m, &c, &config.name, 2, "first failure");
}

/// Instances sharing a name share the work: each event to exactly one of them,
/// both of them taking part; what one leaves unanswered goes to the other.
pub async fn consumer_work_sharing(f: &dyn BusFactory) {
    let c = Ctx::new(f, "cshare").await;
    // A small window and an ack wait far above the time to work through it:
    // no message waits in an instance's buffer past the ack wait, even on a
    // loaded machine, so a second delivery can only be the bus's fault.
    let config = c
        .consumer_config("share", "s.*")
        .ack_wait(SHARED_ACK_WAIT)
        .max_ack_pending(8);
    let mut a = c.consume(config.clone()).await;
    let mut b = c.consume(config.clone()).await;
    let n = 200usize;
    let per_subject = c.bus.capabilities().shares_within_a_subject;
    if !per_subject {
        capability_note(
            &c,
            "consumer_work_sharing",
            "shares_within_a_subject",
            "the instances share events of 200 subjects (one event each) instead of 200 events of one subject",
        );
    }
    for i in 0..n {
        let subject = if per_subject {
            "s.x".to_string()
        } else {
            format!("s.{i}")
        };
        c.publish(&subject, i.to_string()).await;
    }
    let seen = Arc::new(parking_lot_free::Counts::default());
    // Each instance counts what it processed; a handler awaits something
    // (here a yield), which lets the other instance take its turn.
    let worker = |mut cons: ConsumerStream, seen: Arc<parking_lot_free::Counts>| async move {
        let mut mine = 0usize;
        loop {
            match tokio::time::timeout(Duration::from_millis(2500), cons.next()).await {
                Ok(Some(Ok(d))) => {
                    seen.add(text(d.message()));
                    mine += 1;
                    d.ack().await.unwrap();
                    tokio::task::yield_now().await;
                }
                Ok(Some(Err(e))) if e.kind().is_transient() => continue,
                Ok(other) => panic!("consumer failed: {other:?}"),
                Err(_) => return (cons, mine),
            }
        }
    };
    let ((a2, by_a), (b2, by_b)) =
        futures::future::join(worker(a, seen.clone()), worker(b, seen.clone())).await;
    a = a2;
    b = b2;
    let counts = seen.snapshot();
    assert_eq!(counts.len(), n, "every event processed");
    assert!(
        counts.values().all(|&c| c == 1),
        "an acked event was processed twice"
    );
    assert_eq!(by_a + by_b, n);
    assert!(
        by_a > 0 && by_b > 0,
        "both instances must take part: A processed {by_a}, B {by_b}"
    );

    // A takes one and stops without answering: it goes to B after the ack wait.
    c.publish("s.x", "orphan").await;
    let d = if per_subject {
        next_delivery(&mut a, "orphan for A (or B)").await
    } else {
        // One subject's events go to the instance owning its partition:
        // whichever that is plays A.
        tokio::select! {
            d = next_delivery(&mut a, "orphan for A or B") => d,
            d = next_delivery(&mut b, "orphan for A or B") => {
                std::mem::swap(&mut a, &mut b);
                d
            }
        }
    };
    let first_count = d.delivery_count();
    drop(d);
    drop(a);
    // B may first hand out a copy it had buffered before A's delivery (a
    // lower count); the redelivery of A's copy must follow.
    loop {
        let d = next_delivery(&mut b, "the orphan, redelivered to B").await;
        assert_eq!(text(d.message()), "orphan");
        if d.delivery_count() > first_count {
            d.ack().await.unwrap();
            break;
        }
        drop(d); // a stale buffered copy: leave it unanswered
    }
}

/// The ack wait of the work-sharing and resume scenarios: long beside the
/// time a loaded machine takes to process their small windows (8 messages),
/// short enough for their one deliberate redelivery.
const SHARED_ACK_WAIT: Duration = Duration::from_secs(3);

/// A consumer re-opened mid-stream resumes: nothing lost, duplicates only for
/// unacked events, and what was acked never comes back.
pub async fn consumer_resumes_mid_stream(f: &dyn BusFactory) {
    let c = Ctx::new(f, "cresume").await;
    // As in consumer_work_sharing: nothing waits in a buffer past the ack
    // wait, so only the unacked event may come twice.
    let config = c
        .consumer_config("resume", "r")
        .ack_wait(SHARED_ACK_WAIT)
        .max_ack_pending(8);
    let mut consumer = c.consume(config.clone()).await;
    let n = 100usize;
    for i in 0..n {
        c.publish("r", i.to_string()).await;
    }
    let mut processed = std::collections::HashMap::<String, usize>::new();
    for _ in 0..50 {
        let d = next_delivery(&mut consumer, "first half").await;
        *processed.entry(text(d.message())).or_default() += 1;
        d.ack().await.unwrap();
    }
    // One more taken but not acked when the consumer stops.
    let unacked = next_delivery(&mut consumer, "the unacked one").await;
    let unacked_text = text(unacked.message());
    *processed.entry(unacked_text.clone()).or_default() += 1;
    drop(unacked);
    drop(consumer);
    let mut consumer = c.consume(config).await;
    // The rest, and the unacked one again (after its ack wait).
    while processed.len() < n || processed[&unacked_text] < 2 {
        let d = next_delivery(&mut consumer, "the rest after re-opening").await;
        let t = text(d.message());
        let e = processed.entry(t.clone()).or_default();
        *e += 1;
        if *e > 1 {
            assert_eq!(t, unacked_text, "only the unacked event may come twice");
        }
        d.ack().await.unwrap();
    }
    assert_eq!(processed[&unacked_text], 2);
    assert_no_delivery(
        &mut consumer,
        SHARED_ACK_WAIT + Duration::from_secs(1),
        "every event was acked; none may come back after the ack wait",
    )
    .await;
}

/// Publishes `payloads` on `suffix` as envelopes; returns their sequences.
async fn publish_seqs(c: &Ctx, suffix: &str, payloads: &[&str]) -> Vec<u64> {
    let mut seqs = Vec::new();
    for p in payloads {
        let ack = c
            .bus
            .publish_envelope(Envelope::new(c.subject(suffix), p.as_bytes().to_vec()))
            .await
            .unwrap_or_else(|e| panic!("publish {p:?}: {e}"));
        assert!(ack.sequence > 0, "{p:?} was stored: {ack:?}");
        seqs.push(ack.sequence);
    }
    seqs
}

/// Receives `n` deliveries, acks them, returns their payloads.
async fn take_acked(consumer: &mut ConsumerStream, n: usize, what: &str) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        let d = next_delivery(consumer, &format!("{what} ({} of {n})", i + 1)).await;
        assert_eq!(d.delivery_count(), 1, "{what}: a first delivery");
        out.push(text(d.message()));
        d.ack().await.unwrap();
    }
    out
}

/// A durable consumer created after messages were published, with
/// `StartPosition::All`, gets those earlier messages first, in order, then
/// new ones. (The service's own consumer already exists, as when a
/// dead-letter reader is opened later: the in-memory bus records its log from
/// its first durable consumer on.)
pub async fn consumer_start_all(f: &dyn BusFactory) {
    let c = Ctx::new(f, "cstartall").await;
    let _service = c.consume(c.consumer_config("service", "h.>")).await;
    publish_seqs(&c, "h.a", &["e1", "e2", "e3"]).await;
    let config = c
        .consumer_config("replay", "h.>")
        .start(event_bus::StartPosition::All);
    let mut replay = c.consume(config).await;
    assert_eq!(
        take_acked(&mut replay, 3, "the messages published before it").await,
        ["e1", "e2", "e3"]
    );
    publish_seqs(&c, "h.b", &["e4"]).await;
    assert_eq!(
        take_acked(&mut replay, 1, "a message published after it").await,
        ["e4"],
        "nothing twice, nothing skipped"
    );
}

/// A durable consumer created with `StartPosition::Sequence(n)` starts at the
/// message numbered n (the sequence its publish acknowledged), then gets new ones.
pub async fn consumer_start_sequence(f: &dyn BusFactory) {
    let c = Ctx::new(f, "cstartseq").await;
    let _service = c.consume(c.consumer_config("service", "q.>")).await;
    let seqs = publish_seqs(&c, "q.a", &["e1", "e2", "e3", "e4"]).await;
    let config = c
        .consumer_config("from3", "q.>")
        .start(event_bus::StartPosition::Sequence(seqs[2]));
    if !c.bus.capabilities().start_at_sequence {
        capability_note(
            &c,
            "consumer_start_sequence",
            "start_at_sequence",
            "a start sequence on a multi-partition stream is an Unsupported error naming it",
        );
        let err = match c.bus.consume(config).await {
            Ok(_) => panic!("a start sequence must be refused when start_at_sequence is false"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        assert!(err.to_string().contains("sequence"), "{err}");
        return;
    }
    let mut from = c.consume(config).await;
    assert_eq!(
        take_acked(&mut from, 2, "the messages from the start sequence on").await,
        ["e3", "e4"]
    );
    publish_seqs(&c, "q.a", &["e5"]).await;
    assert_eq!(
        take_acked(&mut from, 1, "a message published after it").await,
        ["e5"]
    );
}

/// Bad consumer configuration is an error naming the field.
pub async fn consumer_invalid_config(f: &dyn BusFactory) {
    let c = Ctx::new(f, "cbad").await;
    let bad_name = ConsumerConfig::new("has space", c.subject("x"));
    let err = c
        .bus
        .consume(bad_name)
        .await
        .err()
        .expect("a name with a space must fail");
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("has space"), "{err}");
    let loops = c
        .consumer_config("loop", "x.>")
        .dead_letter_subject(Some(c.subject("x.dlq")));
    let err = c
        .bus
        .consume(loops)
        .await
        .err()
        .expect("a dead-letter subject inside the filter must fail");
    assert!(err.to_string().contains("dead_letter_subject"), "{err}");
    let zero = c.consumer_config("zero", "x").max_deliver(0);
    let err = c
        .bus
        .consume(zero)
        .await
        .err()
        .expect("max_deliver 0 must fail");
    assert!(err.to_string().contains("max_deliver"), "{err}");
    let err = c
        .bus
        .consume(c.consumer_config("pattern", "x..y"))
        .await
        .err()
        .expect("a bad filter must fail");
    assert_eq!(err.kind(), ErrorKind::InvalidPattern);
}

/// The suffix (under the scenario's prefix) of `config`'s dead-letter subject.
fn dlq_suffix(c: &Ctx, config: &ConsumerConfig) -> String {
    let subject = config
        .dead_letter_subject
        .clone()
        .expect("a dead-letter subject");
    subject
        .strip_prefix(&format!("{}.", c.prefix()))
        .expect("the dead-letter subject is under the prefix")
        .to_string()
}

/// A dead letter that no longer fits the size limit once the `Bus-Dlq-*`
/// headers are added (a payload at the limit) is published without its
/// payload, with `Bus-Dlq-Truncated` giving the payload's size and the origin
/// headers pointing at the original: the poison message is never lost.
pub async fn consumer_dead_letter_too_large_is_truncated(f: &dyn BusFactory) {
    let c = Ctx::new(f, "cdlqbig").await;
    let config = c.consumer_config("dlqbig", "d").max_deliver(1);
    let mut dead = c.sub(&dlq_suffix(&c, &config)).await;
    let mut consumer = c.consume(config.clone()).await;
    // 1 MiB is the limit of both backends by default (see `large_payload`).
    let size = 1024 * 1024;
    c.publish("d", vec![b'x'; size]).await;
    let d = next_delivery(&mut consumer, "the poison message").await;
    let (sequence, id) = (d.sequence, d.id.to_string());
    d.nack_with_reason(None, "undecodable")
        .await
        .expect("the last nack dead-letters the message, truncated");
    let m = recv(&mut dead, "the truncated dead letter").await;
    assert!(m.payload.is_empty(), "{} bytes of payload", m.payload.len());
    assert_eq!(
        m.headers.get(dlq::TRUNCATED),
        Some(size.to_string().as_str()),
        "{m:?}"
    );
    assert_eq!(
        m.headers.get(dlq::ORIGINAL_SUBJECT),
        Some(c.subject("d").as_str())
    );
    assert_eq!(
        m.headers.get(dlq::ORIGINAL_SEQUENCE),
        Some(sequence.to_string().as_str())
    );
    assert_eq!(m.headers.get(dlq::ORIGINAL_ID), Some(id.as_str()));
    assert_eq!(m.headers.get(dlq::CONSUMER), Some(config.name.as_str()));
    assert!(
        m.headers
            .get(dlq::LAST_ERROR)
            .is_some_and(|e| e.contains("undecodable")),
        "{m:?}"
    );
    assert_no_delivery(
        &mut consumer,
        Duration::from_millis(1500),
        "the dead-lettered message is terminated",
    )
    .await;
}

/// Limits are errors naming the field, not overflows: `max_deliver`,
/// `ack_wait` and backoff steps beyond their documented maximum are refused;
/// a nack delay beyond any deadline is shortened (no panic, no immediate
/// redelivery).
pub async fn consumer_limits_are_errors_not_overflows(f: &dyn BusFactory) {
    use event_bus::consumer::{MAX_DELIVER, MAX_WAIT};
    let c = Ctx::new(f, "climits").await;
    let refused = |config: ConsumerConfig, field: &'static str| {
        let bus = c.bus.clone();
        async move {
            let err = bus
                .consume(config)
                .await
                .err()
                .unwrap_or_else(|| panic!("an out-of-range {field} must be refused"));
            assert_eq!(err.kind(), ErrorKind::Config, "{err}");
            assert!(err.to_string().contains(field), "{err}");
        }
    };
    refused(
        c.consumer_config("md", "x").max_deliver(u32::MAX),
        "max_deliver",
    )
    .await;
    refused(
        c.consumer_config("md1", "x").max_deliver(MAX_DELIVER + 1),
        "max_deliver",
    )
    .await;
    refused(
        c.consumer_config("aw", "x").ack_wait(Duration::MAX),
        "ack_wait",
    )
    .await;
    refused(
        c.consumer_config("bo", "x").backoff(vec![
            Duration::from_secs(1),
            MAX_WAIT + Duration::from_secs(1),
        ]),
        "backoff",
    )
    .await;
    // At the limits, accepted.
    let mut consumer = c
        .consume(
            c.consumer_config("ok", "x")
                .max_deliver(MAX_DELIVER)
                .backoff(vec![MAX_WAIT]),
        )
        .await;
    c.publish("x", "later").await;
    let d = next_delivery(&mut consumer, "the message").await;
    d.nack(Some(Duration::MAX))
        .await
        .expect("a nack with the longest delay is accepted");
    assert_no_delivery(
        &mut consumer,
        Duration::from_millis(1200),
        "a nack delay of Duration::MAX means a long delay, not none",
    )
    .await;
}

mod parking_lot_free {
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct Counts(Mutex<HashMap<String, usize>>);

    impl Counts {
        pub fn add(&self, k: String) {
            *self.0.lock().unwrap().entry(k).or_default() += 1;
        }
        pub fn snapshot(&self) -> HashMap<String, usize> {
            self.0.lock().unwrap().clone()
        }
    }
}

/// Lag status from sampled consumer state: a consumer that holds its
/// deliveries without answering is `STALL` within the window; once it has
/// answered everything, `OK`. The state names what is pending.
pub async fn consumer_lag_status(f: &dyn BusFactory) {
    use event_bus::consumer::lag::LagStatus;
    use event_bus::status::LagMonitor;
    let c = Ctx::new(f, "clag").await;
    let config = c
        .consumer_config("lag", "l")
        .ack_wait(Duration::from_secs(30));
    let (name, filter) = (config.name.clone(), config.filter.clone());
    if !c.bus.capabilities().consumer_state {
        capability_note(
            &c,
            "consumer_lag_status",
            "consumer_state",
            "consumer_state is an Unsupported error naming it",
        );
        let _consumer = c.consume(config).await;
        let err = c
            .bus
            .consumer_state(&name, &filter)
            .await
            .expect_err("consumer_state must be refused when the capability is false");
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        assert!(err.to_string().contains("consumer state"), "{err}");
        return;
    }
    let mut consumer = c.consume(config).await;
    for i in 0..5 {
        c.publish("l", format!("m{i}")).await;
    }
    // Stuck: the first delivery is held, never answered.
    let held = next_delivery(&mut consumer, "the first message").await;
    let monitor = LagMonitor::spawn(
        c.bus.clone(),
        [(name.clone(), filter)],
        Duration::from_millis(100),
        5,
    );
    let status = || monitor.statuses().remove(0);
    crate::wait::until(
        Duration::from_secs(10),
        "STALL while nothing is answered",
        || status().status == LagStatus::Stall,
    )
    .await;
    let lag = status();
    let state = lag.state.expect("a sampled state");
    assert_eq!(state.name, name);
    assert_eq!(state.lag(), 5, "{state:?}");
    assert!(state.alive, "{state:?}");
    // Answer everything: back to OK.
    held.ack().await.unwrap();
    for i in 1..5 {
        let d = next_delivery(&mut consumer, &format!("message {i}")).await;
        d.ack().await.unwrap();
    }
    crate::wait::until(
        Duration::from_secs(10),
        "OK once everything is answered",
        || {
            let s = status();
            s.status == LagStatus::Ok && s.state.is_some_and(|st| st.lag() == 0)
        },
    )
    .await;
    // A consumer that does not exist is an error in the status, not a panic.
    let missing = LagMonitor::spawn(
        c.bus.clone(),
        [("no-such-consumer".to_string(), c.subject("l"))],
        Duration::from_millis(50),
        3,
    );
    crate::wait::until(
        Duration::from_secs(10),
        "the sampling error reported",
        || missing.statuses()[0].error.is_some(),
    )
    .await;
    assert_eq!(missing.statuses()[0].status, LagStatus::Ok);
}
