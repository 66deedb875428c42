//! Event contracts: versioned JSON Schemas per event type and the
//! compatibility rules checked when a new version is registered.
//!
//! * [`compat`]: does a new schema version break producers or consumers of
//!   the earlier ones? (Confluent Schema Registry's modes, with a closed
//!   producer and an open consumer content model.)
//! * [`registry`]: the versions per type, in a JetStream key-value bucket
//!   (or in memory), watched by every service; a contracts directory
//!   loaded at start-up ([`contracts`]).
//! * [`version`]: one version of a type's schema: checking a schema,
//!   its compiled validator, what a failed validation says.
//! * [`validate`]: validation on publish (a decorator of any bus) and on
//!   consume (the runner's check), with [`cloudevents`] headers.
//! * [`contract`]: Rust types as contracts (schemas generated with
//!   `schemars`), and the contract test that fails `cargo test` on drift.

pub mod cloudevents;
pub mod compat;
pub mod contract;
pub mod contracts;
mod instance;
pub mod registry;
pub mod validate;
pub mod version;

pub use compat::Mode;
pub use registry::{Registry, TypeSettings, Validation};
pub use validate::{SchemaCheck, UnknownTypes, ValidatingBus};
