//! The conformance suite against [`WrappedBus`]: a backend written outside
//! `event-bus` that implements only the raw [`EventBus`] methods (forwarding
//! to an in-memory bus), with no dead-letter code of its own. Bounded
//! redelivery, dead letters and the dead-letter queue come from above the
//! backend, as for NATS and memory.

use event_bus::EventBus;
use event_bus_testkit::conformance::{self, BusFactory};
use event_bus_testkit::wrapped::WrappedBus;
use std::sync::Arc;

fn wrapped() -> impl BusFactory {
    || async { Arc::new(WrappedBus::new()) as Arc<dyn EventBus> }
}

event_bus_testkit::conformance_tests!(wrapped());

/// The whole suite in one call, as a third-party backend's author would run it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_reports_no_failures() {
    let failures = conformance::run_all(&wrapped()).await;
    assert!(failures.is_empty(), "{failures:#?}");
}
