//! Test kit for `event-bus`.
//!
//! * [`conformance`]: the behavioural suite every [`EventBus`](event_bus::EventBus)
//!   backend must pass, runnable against any factory of `Arc<dyn EventBus>`.

#![warn(missing_docs)]

pub mod conformance;
