//! Set-up shared by the registry and validation test files (`registry.rs`,
//! `validating_bus.rs`): the `auth.user.created` schemas and a
//! `ValidatingBus` over any bus.
#![allow(dead_code)] // each test file uses its own part

use event_bus::EventBus;
use event_bus_schema::registry::{Registry, TypeSettings};
use event_bus_schema::ValidatingBus;
use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub fn user_v1() -> Value {
    json!({
        "type": "object",
        "properties": {
            "user_id": {"type": "string"},
            "email": {"type": "string", "format": "email"}
        },
        "required": ["user_id", "email"]
    })
}

pub fn user_v2() -> Value {
    // An optional property added: compatible both ways.
    let mut v = user_v1();
    v["properties"]["locale"] = json!({"type": "string"});
    v
}

pub fn user_breaking() -> Value {
    // `user_id` becomes an integer and a required property is added.
    let mut v = user_v1();
    v["properties"]["user_id"] = json!({"type": "integer"});
    v["properties"]["tenant"] = json!({"type": "string"});
    v["required"] = json!(["user_id", "email", "tenant"]);
    v
}

pub async fn validating(inner: Arc<dyn EventBus>) -> (ValidatingBus, Registry) {
    let registry = Registry::memory();
    registry
        .define(
            "auth.user.created",
            TypeSettings::new("auth.events.user.created"),
        )
        .await
        .unwrap();
    registry
        .register("auth.user.created", user_v1())
        .await
        .unwrap();
    (
        ValidatingBus::new(inner, registry.clone()).source("/auth"),
        registry,
    )
}

/// The subscription's next message, within 10 s.
pub async fn next_message(sub: &mut event_bus::Subscription) -> event_bus::BusMessage {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a message within 10 s")
        .expect("the subscription is open")
}
