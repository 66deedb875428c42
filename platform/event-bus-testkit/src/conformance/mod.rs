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

use event_bus::dlq;
use event_bus::EventBusExt;
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

/// Says, in the test's output, that `scenario` meets a capability the
/// backend declares it lacks, and which documented behaviour it asserts
/// instead: never a silent skip.
/// Written to the process's stderr directly, past the test harness's
/// capture, so that it shows in every run.
pub fn capability_note(c: &Ctx, scenario: &str, capability: &str, instead: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "conformance: {scenario} on {}: capability `{capability}` is false; asserting instead: {instead}",
        c.bus.backend_name()
    );
}

/// Asserts that `got` are the `want`ed payloads in order, or, on a backend
/// without [`order_across_subjects`](event_bus::BusCapabilities), the same
/// payloads in any order (callers use one message per subject, so per-subject
/// order is all there is to check).
pub fn assert_in_order_across_subjects(
    c: &Ctx,
    scenario: &str,
    got: &[String],
    want: &[&str],
    what: &str,
) {
    if c.bus.capabilities().order_across_subjects {
        assert_eq!(got, want, "{what}");
        return;
    }
    capability_note(
        c,
        scenario,
        "order_across_subjects",
        "every message once, in any order across subjects (one message per subject)",
    );
    let mut got = got.to_vec();
    got.sort();
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "{what}");
}

fn text(m: &BusMessage) -> String {
    String::from_utf8_lossy(&m.payload).into_owned()
}

mod consumer;
mod dead_letters;
mod ids;
mod pubsub;

pub use consumer::*;
pub use dead_letters::*;
pub use ids::*;
pub use pubsub::*;

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
    consumer_lag_status,
    dead_letter_queue_replay_and_discard,
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
