//! The library side of `bus`, the event-bus command-line tool: the bodies of
//! commands that work on any backend, taking an `Arc<dyn EventBus>` instead
//! of a URL, so that they can run (and be tested) on any [`EventBus`]
//! implementation, in process.
//!
//! * [`dlq`]: `bus dlq ls | show | replay | discard`.
//!
//! [`EventBus`]: event_bus::EventBus

pub mod dlq;
