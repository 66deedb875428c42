//! The registry on both stores (memory, and a JetStream key-value bucket on
//! a real nats-server shared by two connections), the contracts directory,
//! validation on publish on both backends, and the runner dead-lettering an
//! event that does not match its schema.

use event_bus::config::StreamSpec;
use event_bus::runner::{Event, Handler, Outcome, Runner};
use event_bus::{Envelope, ErrorKind, EventBus, InMemoryBus, StartPosition};
use event_bus_schema::cloudevents;
use event_bus_schema::compat::Mode;
use event_bus_schema::registry::{Registry, TypeSettings, Validation, MAX_SCHEMA_BYTES};
use event_bus_schema::{SchemaCheck, UnknownTypes, ValidatingBus};
use event_bus_testkit::nats_server::NatsServer;
use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn user_v1() -> Value {
    json!({
        "type": "object",
        "properties": {
            "user_id": {"type": "string"},
            "email": {"type": "string", "format": "email"}
        },
        "required": ["user_id", "email"]
    })
}

fn user_v2() -> Value {
    // An optional property added: compatible both ways.
    let mut v = user_v1();
    v["properties"]["locale"] = json!({"type": "string"});
    v
}

fn user_breaking() -> Value {
    // `user_id` becomes an integer and a required property is added.
    let mut v = user_v1();
    v["properties"]["user_id"] = json!({"type": "integer"});
    v["properties"]["tenant"] = json!({"type": "string"});
    v["required"] = json!(["user_id", "email", "tenant"]);
    v
}

#[tokio::test]
async fn versions_are_checked_at_registration_in_memory() {
    let r = Registry::memory();
    r.define(
        "auth.user.created",
        TypeSettings::new("auth.events.user.created"),
    )
    .await
    .unwrap();
    assert_eq!(r.register("auth.user.created", user_v1()).await.unwrap(), 1);
    assert_eq!(
        r.register("auth.user.created", user_v1()).await.unwrap(),
        1,
        "same schema, same version"
    );
    assert_eq!(r.register("auth.user.created", user_v2()).await.unwrap(), 2);
    let err = r
        .register("auth.user.created", user_breaking())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let text = err.to_string();
    assert!(text.contains("FULL_TRANSITIVE"), "{text}");
    assert!(text.contains("/properties/user_id/type"), "{text}");
    assert!(
        text.contains("required_added at /properties/tenant"),
        "{text}"
    );
    let changes = r.check("auth.user.created", &user_breaking()).unwrap_err();
    assert!(changes.len() >= 2, "{changes:?}");
    assert_eq!(r.latest("auth.user.created").unwrap().version, 2);

    // NONE lets anything through.
    r.define(
        "auth.user.created",
        TypeSettings::new("auth.events.user.created").compatibility(Mode::None),
    )
    .await
    .unwrap();
    assert_eq!(
        r.register("auth.user.created", user_breaking())
            .await
            .unwrap(),
        3
    );
}

#[tokio::test]
async fn bad_schemas_are_errors_naming_the_problem() {
    let r = Registry::memory();
    let err = r.register("t.x", json!({"type": 5})).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("/type"), "{err}");

    let huge = json!({"description": "x".repeat(10 * 1024 * 1024)});
    let err = r.register("t.x", huge).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
    assert!(
        err.to_string().contains(&MAX_SCHEMA_BYTES.to_string()),
        "{err}"
    );

    let err = r.register("Bad Name", user_v1()).await.unwrap_err();
    assert!(err.to_string().contains("Bad Name"), "{err}");

    // A reference cycle: refused or validated, within a bound, never a hang.
    let cycle = json!({
        "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
        "$ref": "#/$defs/a"
    });
    let r2 = r.clone();
    let outcome = tokio::time::timeout(Duration::from_secs(10), async move {
        match r2.register("t.cycle", cycle).await {
            Ok(_) => r2
                .validate("t.cycle", None, b"{}")
                .map(|_| ())
                .map_err(|f| f.describe("t")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .expect("a $ref cycle is decided within 10 s");
    let err = outcome.expect_err("a $ref cycle is refused");
    assert!(err.contains("t.cycle"), "{err}");

    // A remote reference is not fetched.
    let err = r
        .register(
            "t.remote",
            json!({"$ref": "https://example.com/schema.json"}),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("example.com"), "{err}");
}

#[tokio::test]
async fn a_contracts_directory_loads_and_versions_stay_immutable() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("auth.user.created");
    std::fs::create_dir(&t).unwrap();
    std::fs::write(
        t.join("type.json"),
        r#"{"subject": "auth.events.user.created", "compatibility": "BACKWARD", "validation": "enforce"}"#,
    )
    .unwrap();
    std::fs::write(t.join("v1.json"), user_v1().to_string()).unwrap();
    std::fs::write(t.join("v2.json"), user_v2().to_string()).unwrap();
    let r = Registry::memory();
    let report = r.load_dir(dir.path()).await.unwrap();
    assert_eq!(report.types, 1);
    assert_eq!(
        report.registered,
        vec![
            ("auth.user.created".to_string(), 1),
            ("auth.user.created".to_string(), 2)
        ]
    );
    assert_eq!(
        r.get("auth.user.created").unwrap().settings.compatibility,
        Mode::Backward
    );
    let again = r.load_dir(dir.path()).await.unwrap();
    assert_eq!((again.registered.len(), again.unchanged), (0, 2));

    // Editing a registered version is refused, naming the file.
    std::fs::write(t.join("v1.json"), user_v2().to_string()).unwrap();
    let err = r.load_dir(dir.path()).await.unwrap_err();
    assert!(
        err.to_string().contains("v1.json") && err.to_string().contains("immutable"),
        "{err}"
    );
    std::fs::write(t.join("v1.json"), user_v1().to_string()).unwrap();

    // A malformed schema names the file and the JSON Pointer.
    std::fs::write(
        t.join("v3.json"),
        r#"{"type": "object", "properties": {"a": {"minLength": "two"}}}"#,
    )
    .unwrap();
    let err = r.load_dir(dir.path()).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("v3.json") && text.contains("/properties/a/minLength"),
        "{text}"
    );
    // Not JSON at all: the file, line and column.
    std::fs::write(t.join("v3.json"), "{\"type\": ").unwrap();
    let err = r.load_dir(dir.path()).await.unwrap_err();
    assert!(
        err.to_string().contains("v3.json") && err.to_string().contains("line 1"),
        "{err}"
    );
    // A gap in the numbering.
    std::fs::remove_file(t.join("v3.json")).unwrap();
    std::fs::write(t.join("v4.json"), user_v2().to_string()).unwrap();
    let err = r.load_dir(dir.path()).await.unwrap_err();
    assert!(err.to_string().contains("without gaps"), "{err}");
}

/// How long a change may take to reach another registry through the KV
/// watch: far above the usual milliseconds, so that a loaded machine does
/// not fail the test (the figure itself is printed).
const PROPAGATION_BOUND: Duration = Duration::from_secs(10);

async fn nats_registry(server: &NatsServer) -> Registry {
    let client = async_nats::connect(server.url()).await.unwrap();
    Registry::nats(client, "CONTRACTS").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_share_the_registry_through_jetstream_kv() {
    let mut server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let a = nats_registry(&server).await;
    let b = nats_registry(&server).await;
    a.define(
        "auth.user.created",
        TypeSettings::new("auth.events.user.created"),
    )
    .await
    .unwrap();
    a.register("auth.user.created", user_v1()).await.unwrap();

    // B sees it (usually within milliseconds; the figure is printed, the
    // bound is generous for a loaded machine).
    let registered = Instant::now();
    assert_eq!(a.register("auth.user.created", user_v2()).await.unwrap(), 2);
    while b.version("auth.user.created", 2).is_none() {
        assert!(
            registered.elapsed() < PROPAGATION_BOUND,
            "not seen within {PROPAGATION_BOUND:?}"
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), b.changed()).await;
    }
    println!("a registration reached B in {:?}", registered.elapsed());
    assert_eq!(
        b.get("auth.user.created").unwrap().settings.subject,
        "auth.events.user.created"
    );
    // B's subject look-up (remembered per subject) follows A's changes.
    assert_eq!(
        b.type_for_subject("auth.events.user.created").unwrap().0,
        "auth.user.created"
    );
    assert!(b.type_for_subject("auth.events.user.deleted").is_none());
    a.define("auth.user.any", TypeSettings::new("auth.events.user.*"))
        .await
        .unwrap();
    let defined = Instant::now();
    while b.type_for_subject("auth.events.user.deleted").is_none() {
        assert!(
            defined.elapsed() < PROPAGATION_BOUND,
            "not seen within {PROPAGATION_BOUND:?}"
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), b.changed()).await;
    }
    println!("a definition reached B in {:?}", defined.elapsed());
    assert_eq!(
        b.type_for_subject("auth.events.user.deleted").unwrap().0,
        "auth.user.any"
    );
    assert_eq!(
        b.type_for_subject("auth.events.user.created").unwrap().0,
        "auth.user.created",
        "the exact pattern is more specific"
    );
    // B checks against what A registered.
    let err = b
        .register("auth.user.created", user_breaking())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");

    // Both register a new version at once: both get distinct numbers.
    let mut v3a = user_v2();
    v3a["properties"]["nickname"] = json!({"type": "string"});
    let mut v3b = user_v2();
    v3b["properties"]["avatar"] = json!({"type": "string"});
    let (ra, rb) = tokio::join!(
        a.register("auth.user.created", v3a),
        b.register("auth.user.created", v3b)
    );
    let mut got = [ra.unwrap(), rb.unwrap()];
    got.sort();
    assert_eq!(got, [3, 4]);

    // A restart of nats-server keeps every version.
    drop((a, b));
    server.restart().await.unwrap();
    let c = nats_registry(&server).await;
    let t = c.get("auth.user.created").unwrap();
    assert_eq!(
        t.versions.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(t.versions[&1].schema, user_v1());
}

async fn validating(inner: Arc<dyn EventBus>) -> (ValidatingBus, Registry) {
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
async fn next_message(sub: &mut event_bus::Subscription) -> event_bus::BusMessage {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a message within 10 s")
        .expect("the subscription is open")
}

async fn publish_validates_on(inner: Arc<dyn EventBus>) {
    let (bus, registry) = validating(inner.clone()).await;
    let mut sub = inner.subscribe("auth.events.>").await.unwrap();
    let err = bus
        .publish("auth.events.user.created", br#"{"user_id": 7}"#.to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaViolation);
    let text = err.to_string();
    assert!(
        text.contains("auth.events.user.created") && text.contains("auth.user.created v1"),
        "{text}"
    );
    assert!(text.contains("/user_id"), "the violation's pointer: {text}");
    assert!(text.contains("email"), "the missing property: {text}");

    let ack = bus
        .publish_envelope(Envelope::new(
            "auth.events.user.created",
            br#"{"user_id": "u1", "email": "a@example.com"}"#.to_vec(),
        ))
        .await
        .unwrap();
    assert!(!ack.duplicate);
    // The first message the subscriber gets is the valid one: the invalid
    // one was never published.
    let m = next_message(&mut sub).await;
    assert_eq!(
        m.payload.as_ref(),
        br#"{"user_id": "u1", "email": "a@example.com"}"#
    );
    let h = |n: &str| cloudevents::header(&m.headers, n).map(str::to_string);
    assert_eq!(h("ce-specversion").as_deref(), Some("1.0"));
    assert_eq!(h("ce-type").as_deref(), Some("auth.user.created"));
    assert_eq!(h("ce-source").as_deref(), Some("/auth"));
    assert_eq!(
        h("ce-id").as_deref(),
        m.id.given(),
        "ce-id is the message id"
    );
    assert_eq!(
        h("ce-dataschema").as_deref(),
        Some("urn:event-bus:schema:auth.user.created:v1")
    );
    assert!(h("ce-time").is_some_and(|t| t.ends_with('Z')));

    // Without the CloudEvents headers: validated all the same, sent bare.
    let bare = ValidatingBus::new(inner.clone(), registry.clone()).cloudevents_headers(false);
    let err = bare
        .publish("auth.events.user.created", br#"{"user_id": 7}"#.to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaViolation);
    assert!(err.to_string().contains("/user_id"), "{err}");
    bare.publish(
        "auth.events.user.created",
        br#"{"user_id": "u2", "email": "b@example.com"}"#.to_vec(),
    )
    .await
    .unwrap();
    let m = next_message(&mut sub).await;
    assert_eq!(
        m.payload.as_ref(),
        br#"{"user_id": "u2", "email": "b@example.com"}"#,
        "the invalid one was never published"
    );
    assert!(m.headers.iter().all(|(n, _)| !n.starts_with("ce-")));

    // Unknown subjects: allowed by default, refused when configured.
    bus.publish("other.thing", b"not json".to_vec())
        .await
        .unwrap();
    let strict = ValidatingBus::new(inner.clone(), registry).unknown_types(UnknownTypes::Refuse);
    let err = strict
        .publish("other.thing", b"{}".to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaViolation);
    assert!(err.to_string().contains("other.thing"), "{err}");
}

#[tokio::test]
async fn publish_validates_in_memory() {
    publish_validates_on(Arc::new(InMemoryBus::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_validates_on_nats() {
    let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let nats = server
        .bus(&[
            StreamSpec::new("AUTH", ["auth.events.>"]),
            StreamSpec::new("OTHER", ["other.>"]),
        ])
        .await
        .unwrap();
    publish_validates_on(Arc::new(nats)).await;
}

async fn runner_dead_letters_on(inner: Arc<dyn EventBus>) {
    let (_bus, registry) = validating(inner.clone()).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let runner = Runner::builder(inner.clone(), "mailer")
        .check(SchemaCheck::new(registry.clone()))
        .handler(Handler::sync(
            "welcome",
            "auth.events.>",
            move |e: Event<'_, Value>, _tx| {
                let _ = tx.send(e.data["user_id"].to_string());
                Outcome::Ack
            },
        ))
        .start(StartPosition::All)
        .build()
        .spawn()
        .await
        .unwrap();
    // Published around the validation (an old producer): one invalid, one valid.
    inner
        .publish(
            "auth.events.user.created",
            br#"{"user_id": 1, "email": "x@example.com"}"#.to_vec(),
        )
        .await
        .unwrap();
    inner
        .publish(
            "auth.events.user.created",
            br#"{"user_id": "ok", "email": "x@example.com"}"#.to_vec(),
        )
        .await
        .unwrap();
    let handled = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        handled, "\"ok\"",
        "only the valid event reaches the handler"
    );
    let mut dlq = runner.dead_letters().await.unwrap();
    let dead = dlq
        .next(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("a dead letter");
    let reason = dead.reason().unwrap_or_default().to_string();
    assert!(
        reason.contains("auth.user.created v1") && reason.contains("/user_id"),
        "{reason}"
    );
    assert!(
        rx.try_recv().is_err(),
        "the invalid event never reached the handler"
    );
    runner.shutdown().await;
}

#[tokio::test]
async fn the_runner_dead_letters_invalid_events_in_memory() {
    runner_dead_letters_on(Arc::new(InMemoryBus::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_dead_letters_invalid_events_on_nats() {
    let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let nats = server
        .bus(&[
            StreamSpec::new("AUTH", ["auth.events.>"]),
            StreamSpec::new("DLQ", ["dlq.>"]),
        ])
        .await
        .unwrap();
    runner_dead_letters_on(Arc::new(nats)).await;
}

#[tokio::test]
async fn validation_can_warn_or_be_off() {
    let inner: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let (bus, registry) = validating(inner).await;
    registry
        .define(
            "auth.user.created",
            TypeSettings::new("auth.events.user.created").validation(Validation::Warn),
        )
        .await
        .unwrap();
    bus.publish("auth.events.user.created", b"{}".to_vec())
        .await
        .unwrap();
    registry
        .define(
            "auth.user.created",
            TypeSettings::new("auth.events.user.created").validation(Validation::Off),
        )
        .await
        .unwrap();
    bus.publish("auth.events.user.created", b"not even json".to_vec())
        .await
        .unwrap();
    let check = SchemaCheck::new(registry);
    let m = event_bus::BusMessage::new(
        event_bus::Subject::new("auth.events.user.created").unwrap(),
        b"{}".to_vec(),
        event_bus::Headers::new(),
        event_bus::MessageId::new("1"),
        1,
    );
    use event_bus::runner::EventCheck;
    assert!(check.check(&m).is_ok(), "validation off");
}

#[tokio::test]
async fn subject_look_ups_follow_definitions() {
    let registry = Registry::memory();
    registry
        .define("shop.any", TypeSettings::new("shop.>"))
        .await
        .unwrap();
    assert_eq!(
        registry.type_for_subject("shop.order.placed").unwrap().0,
        "shop.any"
    );
    assert!(registry.type_for_subject("bank.paid").is_none());
    registry
        .define("shop.order.placed", TypeSettings::new("shop.order.placed"))
        .await
        .unwrap();
    registry
        .define("bank.paid", TypeSettings::new("bank.paid"))
        .await
        .unwrap();
    assert_eq!(
        registry.type_for_subject("shop.order.placed").unwrap().0,
        "shop.order.placed"
    );
    assert_eq!(
        registry.type_for_subject("bank.paid").unwrap().0,
        "bank.paid"
    );
    // Many distinct subjects: each answered right, the memory bounded.
    for i in 0..10_000 {
        let subject = format!("shop.order.{i}");
        assert_eq!(registry.type_for_subject(&subject).unwrap().0, "shop.any");
    }
    registry
        .define("shop.any", TypeSettings::new("shop.*.*.*"))
        .await
        .unwrap();
    assert!(registry.type_for_subject("shop.order.7").is_none());
}

#[tokio::test]
async fn a_new_version_is_validated_against_at_once() {
    let (bus, registry) = validating(Arc::new(InMemoryBus::new())).await;
    let event = br#"{"user_id": "u", "email": "u@example.com", "locale": 5}"#;
    bus.publish("auth.events.user.created", event.to_vec())
        .await
        .expect("v1 says nothing of `locale`");
    // v2 makes `locale` a string: the same event is refused from now on.
    assert_eq!(
        registry
            .register("auth.user.created", user_v2())
            .await
            .unwrap(),
        2
    );
    let err = bus
        .publish("auth.events.user.created", event.to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaViolation);
    assert!(
        err.to_string().contains("auth.user.created v2") && err.to_string().contains("/locale"),
        "{err}"
    );
}

#[tokio::test]
async fn consumed_events_are_checked_in_either_content_mode() {
    use event_bus::runner::EventCheck;
    use event_bus::{BusMessage, Headers, MessageId, Subject};
    let (_bus, registry) = validating(Arc::new(InMemoryBus::new())).await;
    let check = SchemaCheck::new(registry);
    let message = |headers: Headers, body: &[u8]| {
        BusMessage::new(
            Subject::new("auth.events.user.created").unwrap(),
            body.to_vec(),
            headers,
            MessageId::new("m-1"),
            1,
        )
    };
    let mut binary = Headers::new();
    binary.insert("ce-type", "auth.user.created");
    assert!(check
        .check(&message(
            binary.clone(),
            br#"{"user_id": "u", "email": "u@example.com"}"#
        ))
        .is_ok());
    let e = check
        .check(&message(
            binary.clone(),
            br#"{"user_id": 7, "email": "u@example.com"}"#,
        ))
        .unwrap_err();
    assert!(e.contains("/user_id"), "{e}");
    // Escaped text (a string the parser cannot borrow) and a repeated name
    // (the last one counts, as for any JSON reader of this crate).
    assert!(check
        .check(&message(
            binary.clone(),
            br#"{"user_id": "\u00e9", "em\u0061il": "u@example.com"}"#
        ))
        .is_ok());
    let e = check
        .check(&message(
            binary.clone(),
            br#"{"user_id": "u", "user_id": 1, "email": "u@example.com"}"#,
        ))
        .unwrap_err();
    assert!(e.contains("/user_id"), "{e}");
    let e = check
        .check(&message(binary, br#"{"user_id": "u", "email": "#))
        .unwrap_err();
    assert!(e.contains("not JSON"), "{e}");

    let mut structured = Headers::new();
    structured.insert("content-type", "application/cloudevents+json");
    let event = |data: Value| {
        serde_json::to_vec(&json!({
            "specversion": "1.0", "id": "1", "source": "/auth",
            "type": "auth.user.created",
            "dataschema": "urn:event-bus:schema:auth.user.created:v1",
            "data": data
        }))
        .unwrap()
    };
    assert!(check
        .check(&message(
            structured.clone(),
            &event(json!({"user_id": "u", "email": "u@example.com"}))
        ))
        .is_ok());
    let e = check
        .check(&message(structured, &event(json!({"user_id": "u"}))))
        .unwrap_err();
    assert!(
        e.contains("email") && e.contains("auth.user.created v1"),
        "{e}"
    );
}
