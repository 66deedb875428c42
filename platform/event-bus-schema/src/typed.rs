//! Typed contracts: a Rust type is an event contract when it names its event
//! type and subject; its schema is generated from the type (`schemars`),
//! publishing a value validates it and sets the CloudEvents headers, and a
//! test fails `cargo test` when the type drifts from its registered versions
//! (contract testing before deploy instead of at run time).
//!
//! ```
//! use event_bus_schema::Contract;
//!
//! #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
//! struct UserCreated {
//!     user_id: String,
//!     email: String,
//!     locale: Option<String>,
//! }
//!
//! impl Contract for UserCreated {
//!     const TYPE: &'static str = "auth.user.created";
//!     const SUBJECT: &'static str = "auth.events.user.created";
//! }
//!
//! let schema = UserCreated::schema();
//! assert_eq!(schema["required"], serde_json::json!(["user_id", "email"]));
//! ```
//!
//! In the producing and the consuming crate's tests:
//!
//! ```text
//! #[tokio::test]
//! async fn user_created_keeps_its_contract() {
//!     event_bus_schema::typed::assert_compatible::<UserCreated>("contracts/events").await;
//! }
//! ```

use crate::registry::{Registry, TypeSettings};
use crate::validate::ValidatingBus;
use event_bus::{BusError, Envelope, ErrorKind, EventBus, PublishAck};
use serde_json::Value;
use std::path::Path;

/// A Rust type that is an event contract.
pub trait Contract: serde::Serialize + schemars::JsonSchema {
    /// The event type (`auth.user.created`).
    const TYPE: &'static str;
    /// The subject its events are published on.
    const SUBJECT: &'static str;

    /// Its JSON Schema, generated from the type (draft 2020-12).
    fn schema() -> Value {
        schemars::schema_for!(Self).to_value()
    }
}

impl Registry {
    /// Registers `T`'s generated schema as the next version of its type
    /// (defining the type on `T::SUBJECT` first if it is new).
    pub async fn register_contract<T: Contract>(&self) -> Result<u32, BusError> {
        if self.settings(T::TYPE).is_none() {
            self.define(T::TYPE, TypeSettings::new(T::SUBJECT)).await?;
        }
        self.register(T::TYPE, T::schema()).await
    }
}

impl ValidatingBus {
    /// Publishes `event` as JSON on `T::SUBJECT` with `ce-type` `T::TYPE`,
    /// validated against the type's latest version.
    pub async fn publish_event<T: Contract>(&self, event: &T) -> Result<PublishAck, BusError> {
        let payload = serde_json::to_vec(event).map_err(|e| {
            BusError::with_source(
                ErrorKind::Codec,
                format!("encoding a {} as JSON", T::TYPE),
                e,
            )
        })?;
        self.publish_envelope(
            Envelope::new(T::SUBJECT, payload).header(crate::cloudevents::TYPE, T::TYPE),
        )
        .await
    }
}

/// Whether `T`'s generated schema could be registered after the versions
/// `registry` holds for its type, under the type's rule: `Err` lists every
/// breaking change.
pub fn check<T: Contract>(registry: &Registry) -> Result<(), String> {
    match registry.settings(T::TYPE) {
        None => Err(format!(
            "{} has no registered version: add contracts/events/{}/v1.json",
            T::TYPE,
            T::TYPE
        )),
        Some(t)
            if t.subject != T::SUBJECT && !event_bus::subject::matches(&t.subject, T::SUBJECT) =>
        {
            Err(format!(
                "{} travels on {:?} in the registry, but the type says {:?}",
                T::TYPE,
                t.subject,
                T::SUBJECT
            ))
        }
        Some(_) => registry
            .check(T::TYPE, &T::schema())
            .map(|_| ())
            .map_err(|changes| {
                format!(
                    "{} no longer matches its registered contract:\n  {}",
                    T::TYPE,
                    changes
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join("\n  ")
                )
            }),
    }
}

/// For tests: panics (failing `cargo test`) when `T`'s generated schema is
/// not compatible with the versions in contracts directory `dir`.
pub async fn assert_compatible<T: Contract>(dir: impl AsRef<Path>) {
    let registry = Registry::memory();
    if let Err(e) = registry.load_dir(dir.as_ref()).await {
        panic!("loading the contracts in {}: {e}", dir.as_ref().display());
    }
    if let Err(e) = check::<T>(&registry) {
        panic!("{e}");
    }
}
