//! Test kit for `event-bus`.
//!
//! * [`conformance`]: the behavioural suite every [`EventBus`](event_bus::EventBus)
//!   backend must pass, runnable against any factory of `Arc<dyn EventBus>`.
//! * [`nats_server`]: real `nats-server` processes (single node and clusters)
//!   on random loopback ports with temporary store directories.
//! * [`postgres`]: a real PostgreSQL (throwaway server, or a fresh database in
//!   `DATABASE_URL`) for integration tests.
//! * [`wait`]: waiting for a condition with a deadline.
//! * [`cpu`]: a process's on-CPU time, for benches.
//! * [`http`]: a plain HTTP GET, for tests of the monitoring endpoints.
//! * [`wrapped`]: [`WrappedBus`](wrapped::WrappedBus), a backend written
//!   outside `event-bus` that forwards to an in-memory bus, with no
//!   dead-letter code of its own.

#![warn(missing_docs)]

pub mod conformance;
pub mod cpu;
pub mod http;
pub mod kafka_server;
mod local;
pub mod nats_server;
mod orphans;
pub mod postgres;
mod process;
pub mod wait;
pub mod wrapped;

/// Runs each named scenario on both backends: `on_both_backends!(memory,
/// nats; scenario_a, scenario_b)` generates `memory_backend::scenario_a`,
/// `nats_backend::scenario_a`, ... as `#[tokio::test]`s (2 worker threads),
/// each calling `scenario_a(memory().await)` or `scenario_a(nats().await)`,
/// where `memory` and `nats` are async functions of the calling module that
/// set a backend up.
#[macro_export]
macro_rules! on_both_backends {
    ($memory:ident, $nats:ident; $($name:ident),* $(,)?) => {
        mod memory_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name(super::$memory().await).await }
            )*
        }
        mod nats_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name(super::$nats().await).await }
            )*
        }
    };
}
