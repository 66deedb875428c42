//! Set-up shared by the runner test files (`runner.rs`, `runner_failures.rs`,
//! `runner_order.rs`, `runner_layers.rs`):
//! a bus per test on each backend, fast retries, starting a runner, the
//! `Job` event.
#![allow(dead_code)] // each test file uses its own part

use event_bus::runner::{Inbox, RetryPolicy, Runner, RunnerHandle};
use event_bus::{EventBus, InMemoryBus, NatsBus};
use event_bus_testkit::nats_server::NatsServer;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The event most runner tests publish: a job with a key.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Job {
    pub id: u64,
    pub key: String,
}

/// A job's JSON payload.
pub fn job(id: u64, key: &str) -> Vec<u8> {
    serde_json::to_vec(&Job {
        id,
        key: key.to_string(),
    })
    .unwrap()
}

/// `n` attempts, 5 ms apart at first, growing up to 50 ms.
pub fn fast_retries(n: u32) -> RetryPolicy {
    fast_retries_up_to(n, Duration::from_millis(50))
}

/// A bus for one test; keeps the NATS server alive.
pub struct Backend {
    pub bus: Arc<dyn EventBus>,
    pub _server: Option<NatsServer>,
}

pub async fn memory() -> Backend {
    Backend {
        bus: Arc::new(InMemoryBus::new()),
        _server: None,
    }
}

pub async fn nats() -> Backend {
    let server = NatsServer::start().await.expect("start nats-server");
    let client = async_nats::connect(server.url()).await.unwrap();
    Backend {
        bus: Arc::new(NatsBus::new(client)),
        _server: Some(server),
    }
}

/// `n` attempts, 5 ms apart at first, growing up to `max_backoff`.
pub fn fast_retries_up_to(n: u32, max_backoff: Duration) -> RetryPolicy {
    RetryPolicy::new(n, Duration::from_millis(5)).max_backoff(max_backoff)
}

pub async fn start<I: Inbox>(runner: Runner<I>) -> RunnerHandle {
    runner.spawn().await.expect("start the runner")
}
