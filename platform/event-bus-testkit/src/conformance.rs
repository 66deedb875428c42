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

use event_bus::{BusMessage, Envelope, ErrorKind, EventBus, Headers, Subscription};
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
