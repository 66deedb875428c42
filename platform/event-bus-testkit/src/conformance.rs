//! The behavioural contract of an [`EventBus`] backend, as runnable scenarios.
//!
//! Every scenario takes a [`BusFactory`] (anything that makes a fresh
//! `Arc<dyn EventBus>`), runs against it and panics with a message naming
//! what broke. Scenarios put their subjects under a unique first token, so
//! they can share one server and run in parallel.
//!
//! Run the whole suite as one `#[tokio::test]` per scenario with
//! [`conformance_tests!`](crate::conformance_tests):
//!
//! ```
//! use event_bus::{EventBus, InMemoryBus};
//! use std::sync::Arc;
//!
//! fn factory() -> impl event_bus_testkit::conformance::BusFactory {
//!     || async { Arc::new(InMemoryBus::new()) as Arc<dyn EventBus> }
//! }
//!
//! event_bus_testkit::conformance_tests!(factory());
//! # fn main() {}
//! ```
//!
//! or all at once with [`run_all`], which reports every failure instead of
//! stopping at the first.

use event_bus::consumer::dlq;
use event_bus::{
    BusMessage, ConsumerConfig, ConsumerStream, Delivery, Envelope, ErrorKind, EventBus, Headers,
    Subscription,
};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a scenario waits for an expected message before failing.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes a fresh bus for a scenario.
pub trait BusFactory: Send + Sync {
    /// A new bus (a new connection, for networked backends).
    fn make(&self) -> BoxFuture<'_, Arc<dyn EventBus>>;
}

impl<F, Fut> BusFactory for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Arc<dyn EventBus>> + Send + 'static,
{
    fn make(&self) -> BoxFuture<'_, Arc<dyn EventBus>> {
        Box::pin(self())
    }
}

/// One scenario's context: a bus and a unique subject prefix.
pub struct Ctx {
    /// The bus under test.
    pub bus: Arc<dyn EventBus>,
    prefix: String,
}

impl Ctx {
    /// A context with a fresh bus and a prefix unique to this process and scenario.
    pub async fn new(factory: &dyn BusFactory, scenario: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let scenario: String = scenario
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
        Ctx {
            bus: factory.make().await,
            prefix: format!("ct{}{}{:x}{}", std::process::id(), n, nanos, scenario),
        }
    }

    /// `suffix` under this scenario's prefix.
    pub fn subject(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.prefix)
    }

    /// The scenario's first subject token.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Subscribes to `suffix` (a pattern) under the prefix; panics on error.
    pub async fn sub(&self, suffix: &str) -> Subscription {
        let pattern = self.subject(suffix);
        self.bus
            .subscribe(&pattern)
            .await
            .unwrap_or_else(|e| panic!("subscribe({pattern:?}) failed: {e}"))
    }

    /// Publishes `payload` on `suffix` under the prefix; panics on error.
    pub async fn publish(&self, suffix: &str, payload: impl Into<Vec<u8>>) {
        let subject = self.subject(suffix);
        self.bus
            .publish(&subject, payload.into())
            .await
            .unwrap_or_else(|e| panic!("publish({subject:?}) failed: {e}"));
    }
}

/// The next message, or a panic naming what was awaited.
pub async fn recv(sub: &mut Subscription, what: &str) -> BusMessage {
    match tokio::time::timeout(RECV_TIMEOUT, sub.next()).await {
        Ok(Some(m)) => m,
        Ok(None) => panic!(
            "subscription {:?} ended while waiting for {what}",
            sub.pattern()
        ),
        Err(_) => panic!(
            "no message on {:?} within {RECV_TIMEOUT:?} while waiting for {what}",
            sub.pattern()
        ),
    }
}

/// Receives `n` messages.
pub async fn recv_n(sub: &mut Subscription, n: usize, what: &str) -> Vec<BusMessage> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(recv(sub, &format!("{what} (message {} of {n})", i + 1)).await);
    }
    out
}

fn text(m: &BusMessage) -> String {
    String::from_utf8_lossy(&m.payload).into_owned()
}

/// Publish then subscribe basics: subject, payload and an id arrive.
pub async fn publish_subscribe(f: &dyn BusFactory) {
    let c = Ctx::new(f, "pubsub").await;
    let mut sub = c.sub("auth.events.user.created").await;
    c.publish(
        "auth.events.user.created",
        br#"{"user_id":"usr_123"}"#.to_vec(),
    )
    .await;
    let m = recv(&mut sub, "the published event").await;
    assert_eq!(m.subject, c.subject("auth.events.user.created"));
    assert_eq!(&m.payload[..], br#"{"user_id":"usr_123"}"#);
    let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("payload is JSON");
    assert_eq!(v["user_id"], "usr_123");
    assert!(!m.id.to_string().is_empty(), "every message carries an id");
}

/// A subscription sees only what is published after it was made.
pub async fn live_view_starts_at_subscribe(f: &dyn BusFactory) {
    let c = Ctx::new(f, "live").await;
    c.publish("x", "before").await;
    let mut sub = c.sub("x").await;
    c.publish("x", "after").await;
    assert_eq!(
        text(&recv(&mut sub, "the message published after subscribe").await),
        "after"
    );
}

/// `*` matches exactly one token, anywhere.
pub async fn wildcard_single_token(f: &dyn BusFactory) {
    let c = Ctx::new(f, "star").await;
    let mut mid = c.sub("auth.*.created").await;
    let mut end = c.sub("auth.user.*").await;
    let mut two = c.sub("*.*.deleted").await;
    c.publish("auth.user.profile.created", "no: two tokens for *")
        .await;
    c.publish("auth.created", "no: zero tokens for *").await;
    c.publish("auth.user", "no: end needs a token").await;
    c.publish("auth.user.created", "yes").await;
    c.publish("auth.user.deleted", "deleted").await;
    let m = recv(&mut mid, "auth.*.created").await;
    assert_eq!(
        (m.subject.as_str(), text(&m).as_str()),
        (c.subject("auth.user.created").as_str(), "yes")
    );
    let m = recv(&mut end, "auth.user.*").await;
    assert_eq!(
        text(&m),
        "yes",
        "auth.user.* must not match auth.user.profile.created or auth.user"
    );
    assert_eq!(text(&recv(&mut end, "auth.user.*").await), "deleted");
    let m = recv(&mut two, "*.*.deleted").await;
    assert_eq!(text(&m), "deleted");
}

/// `>` matches one or more trailing tokens and never the bare prefix.
pub async fn wildcard_tail(f: &dyn BusFactory) {
    let c = Ctx::new(f, "tail").await;
    let mut events = c.sub("auth.events.>").await;
    let mut all = c.sub(">").await;
    let mut star_tail = c.sub("*.events.>").await;
    c.publish("auth.events", "no: > needs at least one token")
        .await;
    c.publish("auth.events.user.created", "one").await;
    c.publish("auth.events.user.profile.updated", "two").await;
    c.publish("auth.other.x", "no").await;
    c.publish("auth.events.x", "three").await;
    let got: Vec<String> = recv_n(&mut events, 3, "auth.events.>")
        .await
        .iter()
        .map(text)
        .collect();
    assert_eq!(got, ["one", "two", "three"]);
    let got: Vec<String> = recv_n(&mut star_tail, 3, "*.events.>")
        .await
        .iter()
        .map(text)
        .collect();
    assert_eq!(got, ["one", "two", "three"]);
    let got: Vec<String> = recv_n(&mut all, 5, "<prefix>.>")
        .await
        .iter()
        .map(text)
        .collect();
    assert_eq!(
        got,
        [
            "no: > needs at least one token",
            "one",
            "two",
            "no",
            "three"
        ],
        "<prefix>.> sees everything under the prefix"
    );
}

/// Wildcard characters inside a token are literal.
pub async fn wildcards_only_as_whole_tokens(f: &dyn BusFactory) {
    let c = Ctx::new(f, "literal").await;
    let mut sub = c.sub("foo*.bar").await;
    c.publish("foox.bar", "no").await;
    c.publish("foo*.bar", "yes").await;
    let m = recv(&mut sub, "foo*.bar").await;
    assert_eq!(
        text(&m),
        "yes",
        "foo* is a literal token, not a prefix wildcard"
    );
}

/// One publisher's messages arrive in publish order.
pub async fn ordering_per_publisher(f: &dyn BusFactory) {
    let c = Ctx::new(f, "order").await;
    let mut sub = c.sub("seq").await;
    let n = 2000;
    // Publish from one task while reading in another: a lossless bus may make
    // the publisher wait for the reader.
    let publish = async {
        for i in 0..n {
            c.publish("seq", i.to_string()).await;
        }
    };
    let read = async {
        for i in 0..n {
            let m = recv(&mut sub, "ordered messages").await;
            assert_eq!(text(&m), i.to_string(), "message {i} out of order");
        }
    };
    futures::future::join(publish, read).await;
}

/// Every subscriber gets every message, in order.
pub async fn fan_out(f: &dyn BusFactory) {
    let c = Ctx::new(f, "fanout").await;
    let mut subs = Vec::new();
    for i in 0..10 {
        subs.push(if i % 2 == 0 {
            c.sub("fan.out").await
        } else {
            c.sub("fan.*").await
        });
    }
    for i in 0..200 {
        c.publish("fan.out", i.to_string()).await;
    }
    for (s, sub) in subs.iter_mut().enumerate() {
        for i in 0..200 {
            let m = recv(sub, &format!("fan-out message {i} for subscriber {s}")).await;
            assert_eq!(text(&m), i.to_string(), "subscriber {s}");
        }
    }
}

/// Many publishers at once: nothing lost, each publisher's order kept.
pub async fn concurrent_publishers(f: &dyn BusFactory) {
    let c = Arc::new(Ctx::new(f, "concurrent").await);
    let mut sub = c.sub("many.*").await;
    let (publishers, each) = (8usize, 250usize);
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..each {
                c.publish(&format!("many.p{p}"), format!("{p}:{i}")).await;
            }
        }));
    }
    let mut next = vec![0usize; publishers];
    for _ in 0..publishers * each {
        let m = recv(&mut sub, "concurrent publishes").await;
        let t = text(&m);
        let (p, i) = t.split_once(':').expect("p:i payload");
        let (p, i): (usize, usize) = (p.parse().unwrap(), i.parse().unwrap());
        assert_eq!(i, next[p], "publisher {p}'s messages out of order");
        next[p] += 1;
    }
    for t in tasks {
        t.await.expect("publisher task");
    }
    assert!(next.iter().all(|&n| n == each));
}

/// A subscriber that reads slowly loses nothing; a fast one beside it is unaffected.
pub async fn slow_subscriber_loses_nothing(f: &dyn BusFactory) {
    let c = Arc::new(Ctx::new(f, "slow").await);
    let mut slow = c.sub("slow.s").await;
    let mut fast = c.sub("slow.s").await;
    let n = 5000usize;
    let publisher = {
        let c = c.clone();
        tokio::spawn(async move {
            for i in 0..n {
                c.publish("slow.s", i.to_string()).await;
            }
        })
    };
    let fast_reader = tokio::spawn(async move {
        for i in 0..n {
            assert_eq!(text(&recv(&mut fast, "fast reader").await), i.to_string());
        }
    });
    for i in 0..n {
        let m = recv(&mut slow, "slow reader").await;
        assert_eq!(
            text(&m),
            i.to_string(),
            "slow subscriber lost or reordered message {i}"
        );
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }
    tokio::time::timeout(RECV_TIMEOUT, publisher)
        .await
        .expect("publisher finished")
        .expect("publisher task");
    fast_reader.await.expect("fast reader");
}

/// Dropping a subscription unsubscribes it and never blocks publishers.
pub async fn dropped_subscriber(f: &dyn BusFactory) {
    let c = Ctx::new(f, "dropped").await;
    let dropped = c.sub("d.x").await;
    let mut kept = c.sub("d.x").await;
    drop(dropped);
    let n = 5000;
    let publish_all = async {
        for i in 0..n {
            c.publish("d.x", i.to_string()).await;
        }
    };
    let read_all = async {
        for i in 0..n {
            assert_eq!(
                text(&recv(&mut kept, "kept subscriber").await),
                i.to_string()
            );
        }
    };
    tokio::time::timeout(
        Duration::from_secs(60),
        futures::future::join(publish_all, read_all),
    )
    .await
    .expect("publishing must not block on a dropped subscription");
}

/// A subscription dropped before anything was read does not block a later publish.
pub async fn dropped_unread_subscriber_releases_publishers(f: &dyn BusFactory) {
    let c = Ctx::new(f, "dropunread").await;
    let unread = c.sub("u.x").await;
    let mut sentinel = c.sub("u.x").await;
    c.publish("u.x", "first").await;
    drop(unread);
    for i in 0..3000 {
        tokio::time::timeout(RECV_TIMEOUT, c.publish("u.x", i.to_string()))
            .await
            .expect("publish blocked by a dropped subscription");
        let _ = recv(&mut sentinel, "sentinel").await;
    }
}

/// Bad subjects and patterns are errors naming the input, never a panic or a silent `Ok`.
pub async fn invalid_subjects_and_patterns(f: &dyn BusFactory) {
    let c = Ctx::new(f, "invalid").await;
    let p = c.prefix().to_string();
    for bad in [
        String::new(),
        format!("{p}."),
        format!(".{p}"),
        format!("{p}..x"),
        format!("{p}.a b"),
        format!("{p}.a\tb"),
        format!("{p}.*"),
        format!("{p}.>"),
        format!("{p}.x.*.y"),
        "*".to_string(),
        ">".to_string(),
    ] {
        let err = c
            .bus
            .publish(&bad, b"x".to_vec())
            .await
            .expect_err(&format!("publish to {bad:?} must fail"));
        assert_eq!(
            err.kind(),
            ErrorKind::InvalidSubject,
            "publish({bad:?}): {err}"
        );
        assert!(
            err.to_string().contains(&format!("{bad:?}")),
            "error must name {bad:?}: {err}"
        );
        let err = c
            .bus
            .publish_envelope(Envelope::new(bad.clone(), &b"x"[..]).id("i"))
            .await
            .expect_err(&format!("publish_envelope to {bad:?} must fail"));
        assert_eq!(
            err.kind(),
            ErrorKind::InvalidSubject,
            "publish_envelope({bad:?}): {err}"
        );
    }
    for bad in [
        String::new(),
        format!("{p}.>.x"),
        format!("{p}..x"),
        format!("{p}."),
        format!("{p}.a b"),
    ] {
        let err = c
            .bus
            .subscribe(&bad)
            .await
            .expect_err(&format!("subscribe to {bad:?} must fail"));
        assert_eq!(
            err.kind(),
            ErrorKind::InvalidPattern,
            "subscribe({bad:?}): {err}"
        );
        assert!(
            err.to_string().contains(&format!("{bad:?}")),
            "error must name {bad:?}: {err}"
        );
    }
}

/// Headers and a message id travel unchanged; a repeated id is a duplicate.
pub async fn headers_and_id_round_trip(f: &dyn BusFactory) {
    let c = Ctx::new(f, "headers").await;
    let mut sub = c.sub("h.>").await;
    let subject = c.subject("h.created");
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let env = Envelope::new(subject.clone(), &b"payload"[..])
        .id(format!("{}-evt-1", c.prefix()))
        .header("traceparent", tp)
        .header("Schema-Version", "3")
        .header("X-Unicode", "välue ✓");
    let ack = c
        .bus
        .publish_envelope(env.clone())
        .await
        .expect("publish_envelope");
    assert!(!ack.duplicate, "first publish of an id is not a duplicate");
    let m = recv(&mut sub, "the envelope").await;
    assert_eq!(m.id.to_string(), format!("{}-evt-1", c.prefix()));
    assert_eq!(m.headers.get("traceparent"), Some(tp));
    assert_eq!(m.headers.get("Schema-Version"), Some("3"));
    assert_eq!(m.headers.get("X-Unicode"), Some("välue ✓"));
    assert_eq!(&m.payload[..], b"payload");

    let again = c.bus.publish_envelope(env).await.expect("republish");
    assert!(
        again.duplicate,
        "the same message id again is reported as a duplicate"
    );
    c.bus
        .publish_envelope(
            Envelope::new(subject.clone(), &b"next"[..]).id(format!("{}-evt-2", c.prefix())),
        )
        .await
        .expect("publish next");
    let m = recv(&mut sub, "the message after the duplicate").await;
    assert_eq!(text(&m), "next", "a duplicate must not be delivered again");

    let mut h = Headers::new();
    h.insert("bad name", "x");
    let err = c
        .bus
        .publish_envelope(Envelope::new(subject, &b"x"[..]).headers(h))
        .await
        .expect_err("a header name with a space must fail");
    assert_eq!(err.kind(), ErrorKind::InvalidHeader, "{err}");
    assert!(err.to_string().contains("bad name"), "{err}");
}

/// Batches publish in order with one result per envelope.
pub async fn batch_publish(f: &dyn BusFactory) {
    let c = Ctx::new(f, "batch").await;
    let mut sub = c.sub("b").await;
    let envs: Vec<Envelope> = (0..300)
        .map(|i| Envelope::new(c.subject("b"), i.to_string().into_bytes()))
        .chain(std::iter::once(Envelope::new(
            format!("{}.bad..subject", c.prefix()),
            &b""[..],
        )))
        .collect();
    let results = c.bus.publish_batch(envs).await;
    assert_eq!(results.len(), 301);
    assert!(
        results[..300].iter().all(|r| r.is_ok()),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    assert_eq!(
        results[300].as_ref().unwrap_err().kind(),
        ErrorKind::InvalidSubject
    );
    for i in 0..300 {
        assert_eq!(text(&recv(&mut sub, "batch message").await), i.to_string());
    }
}

/// An empty payload is a valid message.
pub async fn empty_payload(f: &dyn BusFactory) {
    let c = Ctx::new(f, "empty").await;
    let mut sub = c.sub("e").await;
    c.publish("e", Vec::new()).await;
    c.publish("e", "sentinel").await;
    let m = recv(&mut sub, "the empty message").await;
    assert!(m.payload.is_empty());
    assert_eq!(text(&recv(&mut sub, "sentinel").await), "sentinel");
}

/// A 1 MiB payload arrives intact; an oversized one is refused with the sizes named.
pub async fn large_payload(f: &dyn BusFactory) {
    let c = Ctx::new(f, "large").await;
    let mut sub = c.sub("big").await;
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    c.publish("big", payload.clone()).await;
    let m = recv(&mut sub, "the 1 MiB message").await;
    assert_eq!(m.payload.len(), payload.len());
    assert!(m.payload[..] == payload[..], "1 MiB payload corrupted");

    let huge = vec![7u8; 65 * 1024 * 1024];
    let err = c
        .bus
        .publish(&c.subject("big"), huge)
        .await
        .expect_err("a 65 MiB payload must be refused");
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge, "{err}");
    assert!(
        err.to_string().contains(&c.subject("big")),
        "error names the subject: {err}"
    );
}

/// Subjects may hold any UTF-8 except whitespace; matching is by whole token.
pub async fn unicode_subjects(f: &dyn BusFactory) {
    let c = Ctx::new(f, "unicode").await;
    let mut sub = c.sub("Ωmega.*.日本").await;
    c.publish("Ωmega.ünïcode.日本", "ok").await;
    let m = recv(&mut sub, "unicode subject").await;
    assert_eq!(m.subject, c.subject("Ωmega.ünïcode.日本"));
    let mut case = c.sub("Case").await;
    c.publish("case", "no: subjects are case-sensitive").await;
    c.publish("Case", "yes").await;
    assert_eq!(text(&recv(&mut case, "case-sensitive").await), "yes");
}

/// A fresh bus reports itself healthy.
pub async fn health(f: &dyn BusFactory) {
    let c = Ctx::new(f, "health").await;
    let report = c.bus.health().await;
    assert!(report.is_healthy(), "{report:?}");
    assert_eq!(report.backend, c.bus.backend_name());
}

// ---------------------------------------------------------------- durable consumers

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
    for i in 0..n {
        c.publish("s.x", i.to_string()).await;
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
    let d = next_delivery(&mut a, "orphan for A (or B)").await;
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

/// Message ids are validated like header values on every backend: a line
/// break, a control character, an empty or over-long id, or one in the
/// namespace of bus-assigned ids (`$...`) is an `InvalidHeader` error naming
/// the id, never a panic; in a batch only that envelope fails.
pub async fn invalid_message_ids(f: &dyn BusFactory) {
    let c = Ctx::new(f, "badids").await;
    let mut sub = c.sub("i").await;
    let subject = c.subject("i");
    let long = "x".repeat(event_bus::message::MAX_ID_LEN + 1);
    let bad_ids = [
        "abc\r\nX",
        "abc\nX",
        "a\rb",
        "a\u{0}b",
        "",
        "$js:S:1@2",
        long.as_str(),
    ];
    for id in bad_ids {
        let err = c
            .bus
            .publish_envelope(Envelope::new(subject.clone(), &b"x"[..]).id(id))
            .await
            .expect_err(&format!("publish with id {id:?} must fail"));
        assert_eq!(err.kind(), ErrorKind::InvalidHeader, "id {id:?}: {err}");
        assert!(err.to_string().contains("message id"), "{err}");
    }
    let mut batch: Vec<Envelope> = Vec::new();
    for (i, id) in bad_ids.iter().enumerate() {
        batch.push(Envelope::new(
            subject.clone(),
            format!("ok-{i}").into_bytes(),
        ));
        batch.push(Envelope::new(subject.clone(), &b"bad"[..]).id(*id));
    }
    batch.push(Envelope::new(subject.clone(), &b"last"[..]).id(format!("{}-good", c.prefix())));
    let results = c.bus.publish_batch(batch).await;
    assert_eq!(results.len(), 2 * bad_ids.len() + 1);
    for (i, r) in results.iter().enumerate() {
        if i % 2 == 1 && i < 2 * bad_ids.len() {
            let e = r.as_ref().expect_err("the envelope with a bad id fails");
            assert_eq!(e.kind(), ErrorKind::InvalidHeader, "{e}");
        } else {
            assert!(r.is_ok(), "envelope {i} of the batch must succeed: {r:?}");
        }
    }
    for i in 0..bad_ids.len() {
        let m = recv(&mut sub, "the good envelopes of the batch").await;
        assert_eq!(text(&m), format!("ok-{i}"));
    }
    let m = recv(&mut sub, "the last envelope").await;
    assert_eq!(text(&m), "last");
    assert_eq!(m.id.to_string(), format!("{}-good", c.prefix()));
}

/// Bus-assigned ids are in their own namespace (`$...`) and differ for
/// every message; a given id never equals an assigned one.
pub async fn assigned_ids_are_unique(f: &dyn BusFactory) {
    let c = Ctx::new(f, "assigned").await;
    let mut sub = c.sub("a").await;
    for i in 0..20 {
        c.publish("a", format!("{i}")).await;
    }
    let msgs = recv_n(&mut sub, 20, "id-less messages").await;
    let ids: std::collections::HashSet<String> = msgs.iter().map(|m| m.id.to_string()).collect();
    assert_eq!(ids.len(), 20, "every message gets its own id: {ids:?}");
    for m in &msgs {
        assert!(!m.id.is_given(), "{}", m.id);
        assert!(
            m.id.to_string().starts_with('$'),
            "assigned ids start with `$`: {}",
            m.id
        );
        assert_ne!(
            event_bus::MessageId::new(m.id.to_string()),
            m.id,
            "a given id spelling an assigned one is another id"
        );
    }
}

/// Subjects and patterns in the server's namespaces (`$JS.API.>`,
/// `$KV.>`, `$SYS.>`, `_INBOX.>`, ...) are refused on every backend with an
/// error naming them, and nothing reaches the server: a stream-delete
/// request sent as a "publish" leaves the stream in place.
pub async fn reserved_subjects_refused(f: &dyn BusFactory) {
    let c = Ctx::new(f, "reserved").await;
    let mut sub = c.sub("r").await;
    c.publish("r", "before").await;
    let stream = format!("BUS_{}", c.prefix().to_uppercase());
    for bad in [
        format!("$JS.API.STREAM.DELETE.{stream}"),
        format!("$JS.API.STREAM.PURGE.{stream}"),
        "$KV.sessions.admin".to_string(),
        "$O.store.x".to_string(),
        "$SYS.REQ.SERVER.PING".to_string(),
        "_INBOX.abc".to_string(),
    ] {
        let err = c
            .bus
            .publish(&bad, b"{}".to_vec())
            .await
            .expect_err(&format!("publish to {bad:?} must be refused"));
        assert_eq!(err.kind(), ErrorKind::InvalidSubject, "{bad:?}: {err}");
        assert!(
            err.to_string().contains(&bad) && err.to_string().contains("reserved"),
            "{err}"
        );
        let err = c
            .bus
            .publish_envelope(
                Envelope::new(bad.clone(), &b"{}"[..]).id(format!("{}-r", c.prefix())),
            )
            .await
            .expect_err(&format!("publish_envelope to {bad:?} must be refused"));
        assert_eq!(err.kind(), ErrorKind::InvalidSubject, "{bad:?}: {err}");
        let results = c
            .bus
            .publish_batch(vec![Envelope::new(bad.clone(), &b"{}"[..])])
            .await;
        assert_eq!(
            results[0].as_ref().map_err(|e| e.kind()).unwrap_err(),
            ErrorKind::InvalidSubject
        );
    }
    for bad in ["$JS.API.>", "$KV.sessions.*", "_INBOX.>", "$SYS.>"] {
        let err = c
            .bus
            .subscribe(bad)
            .await
            .expect_err(&format!("subscribe to {bad:?} must be refused"));
        assert_eq!(err.kind(), ErrorKind::InvalidPattern, "{bad:?}: {err}");
        assert!(err.to_string().contains(bad), "{err}");
        let err = c
            .bus
            .consume(ConsumerConfig::new(format!("{}-res", c.prefix()), bad))
            .await
            .err()
            .unwrap_or_else(|| panic!("consume of {bad:?} must be refused"));
        assert_eq!(err.kind(), ErrorKind::InvalidPattern, "{bad:?}: {err}");
    }
    c.publish("r", "after").await;
    assert_eq!(text(&recv(&mut sub, "the message before").await), "before");
    assert_eq!(
        text(&recv(&mut sub, "the message after: the stream is still there").await),
        "after"
    );
}

type Scenario = for<'a> fn(&'a dyn BusFactory) -> BoxFuture<'a, ()>;

macro_rules! scenario_table {
    ($($name:ident),* $(,)?) => {
        /// Every scenario, by name.
        pub const SCENARIOS: &[(&str, Scenario)] = &[
            $((stringify!($name), |f| Box::pin($name(f)))),*
        ];
        /// Generates one `#[tokio::test]` per scenario; the argument is an
        /// expression giving a [`BusFactory`], evaluated once per test.
        #[macro_export]
        macro_rules! conformance_tests {
            ($factory:expr) => {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let factory = $factory;
                        $crate::conformance::$name(&factory).await;
                    }
                )*
            };
        }
    };
}

scenario_table!(
    publish_subscribe,
    live_view_starts_at_subscribe,
    wildcard_single_token,
    wildcard_tail,
    wildcards_only_as_whole_tokens,
    ordering_per_publisher,
    fan_out,
    concurrent_publishers,
    slow_subscriber_loses_nothing,
    dropped_subscriber,
    dropped_unread_subscriber_releases_publishers,
    invalid_subjects_and_patterns,
    headers_and_id_round_trip,
    batch_publish,
    empty_payload,
    large_payload,
    unicode_subjects,
    health,
    consumer_ack,
    consumer_nack,
    consumer_ack_wait,
    consumer_term,
    consumer_max_deliver_dead_letters,
    consumer_unanswered_last_delivery_dead_letters,
    consumer_work_sharing,
    consumer_resumes_mid_stream,
    consumer_invalid_config,
    invalid_message_ids,
    assigned_ids_are_unique,
    reserved_subjects_refused,
    consumer_dead_letter_too_large_is_truncated,
    consumer_limits_are_errors_not_overflows,
    consumer_start_all,
    consumer_start_sequence,
);

/// Runs every scenario in turn; returns the names of those that failed, with
/// their panic messages.
pub async fn run_all(factory: &dyn BusFactory) -> Vec<(&'static str, String)> {
    let mut failures = Vec::new();
    for (name, scenario) in SCENARIOS {
        let outcome = std::panic::AssertUnwindSafe(scenario(factory))
            .catch_unwind()
            .await;
        if let Err(panic) = outcome {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked".into());
            failures.push((*name, msg));
        }
    }
    failures
}

/// Counts messages by payload; used by load scenarios to spot losses and duplicates.
pub fn count_payloads(msgs: &[BusMessage]) -> HashMap<Vec<u8>, usize> {
    let mut counts = HashMap::new();
    for m in msgs {
        *counts.entry(m.payload.to_vec()).or_insert(0) += 1;
    }
    counts
}
