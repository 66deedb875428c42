//! Test kit for `event-bus`.
//!
//! * [`conformance`]: the behavioural suite every [`EventBus`](event_bus::EventBus)
//!   backend must pass, runnable against any factory of `Arc<dyn EventBus>`.
//! * [`nats_server`]: real `nats-server` processes (single node and clusters)
//!   on random loopback ports with temporary store directories.
//! * [`postgres`]: a real PostgreSQL (throwaway server, or a fresh database in
//!   `DATABASE_URL`) for integration tests.
//! * [`wait`]: waiting for a condition with a deadline.

#![warn(missing_docs)]

pub mod conformance;
pub mod nats_server;
mod orphans;
pub mod postgres;
pub mod wait;
