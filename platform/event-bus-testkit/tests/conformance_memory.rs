//! The conformance suite against `InMemoryBus`.

use event_bus::{EventBus, InMemoryBus};
use event_bus_testkit::conformance::{self, BusFactory};
use std::sync::Arc;

fn memory() -> impl BusFactory {
    || async { Arc::new(InMemoryBus::new()) as Arc<dyn EventBus> }
}

event_bus_testkit::conformance_tests!(memory());

/// The whole suite in one call, as a user with their own backend would run it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_reports_no_failures() {
    let failures = conformance::run_all(&memory()).await;
    assert!(failures.is_empty(), "{failures:#?}");
}
