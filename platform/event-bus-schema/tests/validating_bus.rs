//! Validation through a `ValidatingBus` on both backends (memory, a real
//! nats-server): publish and `publish_batch` refuse what does not match its
//! contract, dead letters pass through, the runner dead-letters an event
//! that does not match its schema, warn/off modes, consumed events checked.

use event_bus::nats::StreamSpec;
use event_bus::runner::{Event, Handler, Outcome, Runner};
use event_bus::{Envelope, ErrorKind, EventBus, InMemoryBus, StartPosition};
use event_bus_schema::cloudevents;
use event_bus_schema::registry::{TypeSettings, Validation};
use event_bus_schema::{SchemaCheck, UnknownTypes, ValidatingBus};
use event_bus_testkit::nats_server::NatsServer;
use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
mod common;
use common::{next_message, user_v2, validating};

async fn publish_validates_on(inner: Arc<dyn EventBus>) {
    let (bus, registry) = validating(inner.clone()).await;
    let mut sub = inner.subscribe("auth.events.>").await.unwrap();
    let err = bus
        .publish("auth.events.user.created", br#"{"user_id": 7}"#.to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected);
    let text = err.to_string();
    assert!(text.starts_with("rejected: schema violation: "), "{text}");
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
    assert_eq!(err.kind(), ErrorKind::Rejected);
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
    assert_eq!(err.kind(), ErrorKind::Rejected);
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

/// A consumer opened through a `ValidatingBus` publishes its dead letters
/// through it (dead letters are applied above the backend): they pass
/// unchecked, also under `UnknownTypes::Refuse` and for an event that
/// breaks its schema (its dead letter keeps its CloudEvents headers).
#[tokio::test]
async fn dead_letters_pass_through_a_validating_bus() {
    use event_bus::{ConsumerConfig, EventBusExt};
    let inner: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let (validating_bus, _registry) = validating(inner.clone()).await;
    let bus: Arc<dyn EventBus> = Arc::new(validating_bus.unknown_types(UnknownTypes::Refuse));
    let mut dead = inner.subscribe("dlq.>").await.unwrap();
    let mut consumer = bus
        .consume(ConsumerConfig::new("mailer", "auth.events.>").max_deliver(1))
        .await
        .unwrap();
    // Published around the validation, claiming its type: it breaks v1.
    inner
        .publish_envelope(
            Envelope::new(
                "auth.events.user.created",
                br#"{"user_id": 1, "email": "x@example.com"}"#.to_vec(),
            )
            .header(cloudevents::TYPE, "auth.user.created"),
        )
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery")
        .unwrap()
        .unwrap();
    d.nack_with_reason(None, "schema violation")
        .await
        .expect("the dead letter passes the ValidatingBus");
    let letter = next_message(&mut dead).await;
    assert_eq!(letter.subject, "dlq.mailer");
    assert_eq!(
        letter.headers.get(event_bus::dlq::ORIGINAL_SUBJECT),
        Some("auth.events.user.created")
    );
    // Anything else on that subject is still refused.
    let err = bus.publish("dlq.mailer", b"{}".to_vec()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
    // A dead letter's headers are no way around the check: only the
    // dead-letter layer's own path (`publish_dead_letter`) is unchecked.
    let forged = Envelope::new(
        "auth.events.user.created",
        br#"{"user_id": 1, "email": "x@example.com"}"#.to_vec(),
    )
    .header(cloudevents::TYPE, "auth.user.created")
    .header(event_bus::dlq::ORIGINAL_SUBJECT, "auth.events.user.created");
    let err = bus.publish_envelope(forged).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
}

async fn runner_dead_letters_on(inner: Arc<dyn EventBus>) {
    let (validating_bus, registry) = validating(inner.clone()).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let runner = Runner::builder(inner.clone(), "mailer")
        .check(SchemaCheck::new(registry.clone()))
        .handler(Handler::new(
            "welcome",
            "auth.events.>",
            move |e: Event<'_, Value>, _tx: &mut ()| {
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
    // The dead letters are readable through the ValidatingBus as well (it
    // passes reads of stored messages on to the bus it wraps).
    let through: Arc<dyn EventBus> = Arc::new(validating_bus);
    let mut dlq = event_bus::dlq::DeadLetterQueue::open(through, "dlq.mailer", "v")
        .await
        .unwrap();
    let again = dlq
        .next(Duration::ZERO)
        .await
        .unwrap()
        .expect("the dead letter");
    assert_eq!(again.message().id, dead.message().id);
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

/// The `WARN` events logged while it lives on this thread, as
/// `field=value` text.
struct Warnings(Arc<parking_lot::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() != tracing::Level::WARN {
            return;
        }
        let mut text = String::new();
        event.record(
            &mut |field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
                text.push_str(&format!("{}={value:?} ", field.name()));
            },
        );
        self.0.lock().push(text);
    }
}

/// Captures this thread's `WARN` events until the guard is dropped.
fn capture_warnings() -> (
    Arc<parking_lot::Mutex<Vec<String>>>,
    tracing::subscriber::DefaultGuard,
) {
    use tracing_subscriber::layer::SubscriberExt;
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let subscriber = tracing_subscriber::registry().with(Warnings(seen.clone()));
    (seen, tracing::subscriber::set_default(subscriber))
}

/// `warn` publishes and consumes an invalid event and logs a `WARN` naming
/// the subject and the violation; `off` neither checks nor logs; `enforce`
/// refuses. (On a current-thread runtime: the capture is per thread.)
#[tokio::test]
async fn validation_can_warn_or_be_off() {
    use event_bus::runner::EventCheck;
    let (warnings, _guard) = capture_warnings();
    let inner: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let mut sub = inner.subscribe("auth.events.>").await.unwrap();
    let (bus, registry) = validating(inner).await;
    let set = |validation| {
        let registry = registry.clone();
        async move {
            let settings = TypeSettings::new("auth.events.user.created").validation(validation);
            registry
                .define("auth.user.created", settings)
                .await
                .unwrap();
        }
    };
    let check = SchemaCheck::new(registry.clone());
    let message = |payload: &[u8]| {
        event_bus::BusMessage::new(
            event_bus::Subject::new("auth.events.user.created").unwrap(),
            payload.to_vec(),
            event_bus::Headers::new(),
            event_bus::MessageId::new("1"),
            1,
        )
    };

    set(Validation::Warn).await;
    bus.publish("auth.events.user.created", br#"{"user_id": 7}"#.to_vec())
        .await
        .expect("warn publishes");
    assert_eq!(
        next_message(&mut sub).await.payload.as_ref(),
        br#"{"user_id": 7}"#
    );
    let logged = std::mem::take(&mut *warnings.lock());
    assert_eq!(logged.len(), 1, "one warning for the publish: {logged:?}");
    assert!(
        logged[0].contains("auth.events.user.created")
            && logged[0].contains("/user_id")
            && logged[0].contains("validation: warn"),
        "{logged:?}"
    );
    check
        .check(&message(br#"{"user_id": 7}"#))
        .expect("warn lets the event through on consume");
    let logged = std::mem::take(&mut *warnings.lock());
    assert_eq!(logged.len(), 1, "one warning for the consume: {logged:?}");
    assert!(
        logged[0].contains("/user_id") && logged[0].contains("consuming"),
        "{logged:?}"
    );

    set(Validation::Off).await;
    bus.publish("auth.events.user.created", b"not even json".to_vec())
        .await
        .expect("off publishes anything");
    assert_eq!(
        next_message(&mut sub).await.payload.as_ref(),
        b"not even json"
    );
    check
        .check(&message(b"not even json"))
        .expect("validation off");
    assert!(
        warnings.lock().is_empty(),
        "off logs nothing: {:?}",
        warnings.lock()
    );

    set(Validation::Enforce).await;
    let err = bus
        .publish("auth.events.user.created", br#"{"user_id": 7}"#.to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected);
    check
        .check(&message(br#"{"user_id": 7}"#))
        .expect_err("enforce refuses on consume");
    assert!(warnings.lock().is_empty(), "{:?}", warnings.lock());
}

/// A batch through a `ValidatingBus`: each event is validated; an invalid
/// one is refused in its place (`Rejected`, a schema violation) and never published, the
/// valid ones around it are, in order, with their CloudEvents headers (as
/// `EventBus::publish_batch` documents: one failure does not stop the others).
async fn publish_batch_validates_on(inner: Arc<dyn EventBus>) {
    let (bus, _registry) = validating(inner.clone()).await;
    let mut sub = inner.subscribe("auth.events.>").await.unwrap();
    let event =
        |payload: &str| Envelope::new("auth.events.user.created", payload.as_bytes().to_vec());
    let valid_a = r#"{"user_id": "a", "email": "a@example.com"}"#;
    let invalid = r#"{"user_id": 7, "email": "b@example.com"}"#;
    let valid_c = r#"{"user_id": "c", "email": "c@example.com"}"#;
    let results = bus
        .publish_batch(vec![event(valid_a), event(invalid), event(valid_c)])
        .await;
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok(), "{:?}", results[0]);
    let err = results[1]
        .as_ref()
        .expect_err("the invalid event is refused");
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
    assert!(
        err.to_string().contains("/user_id") && err.to_string().contains("auth.user.created v1"),
        "{err}"
    );
    assert!(results[2].is_ok(), "{:?}", results[2]);

    // What arrives: a, c, then a marker published after the batch: the
    // invalid event never went out.
    bus.publish_envelope(event(r#"{"user_id": "marker", "email": "m@example.com"}"#))
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = next_message(&mut sub).await;
        assert_eq!(
            cloudevents::header(&m.headers, "ce-type"),
            Some("auth.user.created")
        );
        let payload: Value = serde_json::from_slice(&m.payload).unwrap();
        got.push(payload["user_id"].as_str().unwrap().to_string());
    }
    assert_eq!(got, ["a", "c", "marker"]);

    // A batch of only invalid events publishes nothing and says why, each.
    let results = bus.publish_batch(vec![event(invalid), event("{}")]).await;
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_err_and(|e| e.kind() == ErrorKind::Rejected)),
        "{results:?}"
    );
}

#[tokio::test]
async fn publish_batch_validates_each_event_in_memory() {
    publish_batch_validates_on(Arc::new(InMemoryBus::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_batch_validates_each_event_on_nats() {
    let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let nats = server
        .bus(&[StreamSpec::new("AUTH", ["auth.events.>"])])
        .await
        .unwrap();
    publish_batch_validates_on(Arc::new(nats)).await;
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
    assert_eq!(err.kind(), ErrorKind::Rejected);
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
