//! Typed events: schemas generated from Rust types, publishing a value,
//! and the contract test that fails when a type drifts from the contracts
//! directory.

use event_bus::{EventBus, InMemoryBus};
use event_bus_schema::typed::{self, Contract};
use event_bus_schema::{Registry, ValidatingBus};
use futures::{FutureExt, StreamExt};
use std::sync::Arc;

#[derive(serde::Serialize, schemars::JsonSchema)]
struct UserCreated {
    user_id: String,
    email: String,
}
impl Contract for UserCreated {
    const TYPE: &'static str = "auth.user.created";
    const SUBJECT: &'static str = "auth.events.user.created";
}

/// The next release: an optional field added.
#[derive(serde::Serialize, schemars::JsonSchema)]
struct UserCreatedWithLocale {
    user_id: String,
    email: String,
    locale: Option<String>,
}
impl Contract for UserCreatedWithLocale {
    const TYPE: &'static str = "auth.user.created";
    const SUBJECT: &'static str = "auth.events.user.created";
}

/// A breaking change: the id became a number.
#[derive(serde::Serialize, schemars::JsonSchema)]
struct UserCreatedNumeric {
    user_id: u64,
    email: String,
}
impl Contract for UserCreatedNumeric {
    const TYPE: &'static str = "auth.user.created";
    const SUBJECT: &'static str = "auth.events.user.created";
}

fn contracts_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("auth.user.created");
    std::fs::create_dir(&t).unwrap();
    std::fs::write(
        t.join("type.json"),
        r#"{"subject": "auth.events.user.created"}"#,
    )
    .unwrap();
    std::fs::write(t.join("v1.json"), UserCreated::schema().to_string()).unwrap();
    dir
}

#[tokio::test]
async fn a_compatible_type_passes_and_a_drifted_one_fails_the_contract_test() {
    let dir = contracts_dir();
    typed::assert_compatible::<UserCreated>(dir.path()).await;
    typed::assert_compatible::<UserCreatedWithLocale>(dir.path()).await;
    let failed =
        std::panic::AssertUnwindSafe(typed::assert_compatible::<UserCreatedNumeric>(dir.path()))
            .catch_unwind()
            .await
            .expect_err("the drifted type fails");
    let message = failed.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("auth.user.created") && message.contains("/properties/user_id/type"),
        "{message}"
    );
}

#[tokio::test]
async fn publishing_a_typed_event_validates_and_sets_its_type() {
    let registry = Registry::memory();
    assert_eq!(
        registry.register_contract::<UserCreated>().await.unwrap(),
        1
    );
    assert_eq!(
        registry
            .register_contract::<UserCreatedWithLocale>()
            .await
            .unwrap(),
        2
    );
    assert!(registry
        .register_contract::<UserCreatedNumeric>()
        .await
        .is_err());
    let inner: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let bus = ValidatingBus::new(inner.clone(), registry);
    let mut sub = inner.subscribe("auth.events.>").await.unwrap();
    bus.publish_event(&UserCreatedWithLocale {
        user_id: "u1".into(),
        email: "a@example.com".into(),
        locale: Some("fr".into()),
    })
    .await
    .unwrap();
    let m = sub.next().await.unwrap();
    assert_eq!(m.headers.get("ce-type"), Some("auth.user.created"));
    assert_eq!(
        m.headers.get("ce-dataschema"),
        Some("urn:event-bus:schema:auth.user.created:v2")
    );
}

/// An old service (a rollback, the old half of a rolling deploy) calling
/// `register_contract` at start-up gets its version back; nothing is added.
#[tokio::test]
async fn an_old_service_registering_its_contract_gets_its_version_back() {
    let registry = Registry::memory();
    assert_eq!(
        registry.register_contract::<UserCreated>().await.unwrap(),
        1
    );
    assert_eq!(
        registry
            .register_contract::<UserCreatedWithLocale>()
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        registry.register_contract::<UserCreated>().await.unwrap(),
        1,
        "the version that has this schema"
    );
    let versions = registry.get(UserCreated::TYPE).unwrap().versions;
    assert_eq!(versions.keys().copied().collect::<Vec<_>>(), [1, 2]);
    assert_eq!(
        registry.check(UserCreated::TYPE, &UserCreated::schema()),
        Ok(1)
    );
    typed::check::<UserCreated>(&registry).unwrap();
}
