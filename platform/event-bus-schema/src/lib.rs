//! Event contracts: versioned JSON Schemas per event type and the
//! compatibility rules checked when a new version is registered.
//!
//! * [`compat`]: does a new schema version break producers or consumers of
//!   the earlier ones? (Confluent Schema Registry's modes, with a closed
//!   producer and an open consumer content model.)
//! * [`registry`]: the versions per type, in a JetStream key-value bucket
//!   (or in memory), watched by every service.
//!   [`Registry::validate`] is the one way to validate a payload.
//! * [`version`]: one version of a type's schema: checking a schema,
//!   its compiled validator, what a failed validation says.
//! * [`validate`]: validation on publish (a decorator of any bus) and on
//!   consume (the runner's check), with [`cloudevents`] headers.
//!
//! Where contracts come from, two ways:
//! * [`dir`]: a contracts directory of JSON Schema files, kept in git and
//!   loaded at start-up ([`Registry::load_dir`]).
//! * [`typed`]: Rust types as contracts (schemas generated with
//!   `schemars`), and the contract test that fails `cargo test` on drift.

pub mod cloudevents;
pub mod compat;
pub mod dir;
mod instance;
pub mod registry;
pub mod typed;
pub mod validate;
pub mod version;

pub use compat::Mode;
pub use dir::LoadReport;
pub use registry::{Registry, TypeSettings, Validation};
pub use typed::Contract;
pub use validate::{SchemaCheck, UnknownTypes, ValidatingBus};
pub use version::{Payload, ValidationFailure};
