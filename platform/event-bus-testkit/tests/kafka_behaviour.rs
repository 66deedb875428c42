//! What is KafkaBus's own (beyond the conformance kit), on a real tansu
//! broker: the commit floor under out-of-order acks, the subject → topic
//! mapping, `connect()` with `type = kafka`, refused first-token wildcards.
//! `cargo test -p event-bus-testkit --features kafka --test kafka_behaviour`.

use event_bus::config::{connect, BusConfig, BusType, KafkaConfig};
use event_bus::{ConsumerConfig, ConsumerStream, Envelope, ErrorKind, EventBus, EventBusExt};
use event_bus_testkit::conformance::{assert_no_delivery, next_delivery};
use event_bus_testkit::kafka_server::KafkaServer;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

async fn server() -> KafkaServer {
    KafkaServer::start()
        .await
        .unwrap_or_else(|e| panic!("start the Kafka broker: {e}"))
}

fn text(d: &event_bus::Delivery) -> String {
    String::from_utf8_lossy(&d.payload).into_owned()
}

async fn open(bus: &Arc<dyn EventBus>, name: &str, filter: &str) -> ConsumerStream {
    let config = ConsumerConfig::new(name, filter)
        .ack_wait(Duration::from_secs(30))
        .start(event_bus::StartPosition::All);
    bus.consume(config)
        .await
        .unwrap_or_else(|e| panic!("consume {name}: {e}"))
}

/// Acks above an unanswered event are held: the group's offset stays at
/// the gap, so after a restart the gap and everything above it come again
/// (at least once), and once the gap is acked too nothing comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_above_a_gap_are_not_committed() {
    let server = server().await;
    let bus: Arc<dyn EventBus> = Arc::new(server.bus().await);
    for e in ["e1", "e2", "e3"] {
        bus.publish("gap.e", e.as_bytes().to_vec()).await.unwrap();
    }
    let mut consumer = open(&bus, "gap", "gap.e").await;
    let first = next_delivery(&mut consumer, "e1").await;
    assert_eq!(text(&first), "e1");
    for want in ["e2", "e3"] {
        let d = next_delivery(&mut consumer, want).await;
        assert_eq!(text(&d), want);
        d.ack().await.unwrap();
    }
    drop(first); // unanswered: the gap
    drop(consumer);

    let mut again = open(&bus, "gap", "gap.e").await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = next_delivery(&mut again, "the gap and what was acked above it").await;
        got.push(text(&d));
        d.ack().await.unwrap();
    }
    assert_eq!(
        got,
        ["e1", "e2", "e3"],
        "the offset stayed below the unanswered e1"
    );
    drop(again);

    let mut third = open(&bus, "gap", "gap.e").await;
    assert_no_delivery(
        &mut third,
        Duration::from_secs(2),
        "everything was acked and committed",
    )
    .await;
}

/// A subject's first token is its topic (with a tenant: `<tenant>.<token>`);
/// the acknowledgement names `<topic>/<partition>`, sequences are offset + 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_map_onto_topics() {
    let server = server().await;
    let bus = server.bus().await;
    let ack = bus
        .publish_envelope(Envelope::new("orders.eu.created", &b"x"[..]))
        .await
        .unwrap();
    let stream = ack.stream.expect("a topic and partition");
    assert!(stream.starts_with("orders/"), "{stream}");
    assert_eq!(ack.sequence, 1, "the first record of its partition");
    let mut tenant = KafkaConfig::new(&server.bootstrap());
    tenant.tenant = Some("acme".into());
    let acme = event_bus::KafkaBus::connect(tenant).await.unwrap();
    let ack = acme
        .publish_envelope(Envelope::new("orders.eu.created", &b"x"[..]))
        .await
        .unwrap();
    assert!(
        ack.stream.as_deref().unwrap().starts_with("acme.orders/"),
        "{ack:?}"
    );
    // An escaped token: `_` and non-ASCII become `_xx`.
    let ack = bus
        .publish_envelope(Envelope::new("a_b.ü", &b"x"[..]))
        .await
        .unwrap();
    assert!(
        ack.stream.as_deref().unwrap().starts_with("a_5fb/"),
        "{ack:?}"
    );
}

/// A pattern whose first token is a wildcard names no topic: `Unsupported`,
/// for a subscription and a durable consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_first_token_is_unsupported() {
    let server = server().await;
    let bus: Arc<dyn EventBus> = Arc::new(server.bus().await);
    let err = bus.subscribe("*.created").await.expect_err("no topic");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("*.created"), "{err}");
    let err = match bus.consume(ConsumerConfig::new("all", "*.created")).await {
        Ok(_) => panic!("a consumer on `*.created` names no topic"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
}

/// `connect()` with `type = kafka` gives the Kafka backend as `Arc<dyn
/// EventBus>`, declaring what it does not guarantee.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_returns_kafka() {
    let server = server().await;
    let mut config = BusConfig::default();
    config
        .apply_env(|var| match var {
            "EVENT_BUS_TYPE" => Some("kafka".into()),
            "EVENT_BUS_KAFKA_BOOTSTRAP_SERVERS" => Some(format!("kafka://{}", server.bootstrap())),
            _ => None,
        })
        .unwrap();
    assert_eq!(config.bus_type, BusType::Kafka);
    let bus = connect(&config).await.unwrap();
    assert_eq!(bus.backend_name(), "kafka");
    assert!(!bus.capabilities().dedup_by_id);
    assert!(bus.health().await.is_healthy());
    let mut sub = bus.subscribe("auth.events.>").await.unwrap();
    bus.publish("auth.events.user.created", b"{}".to_vec())
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("delivered in time")
        .expect("delivered");
    assert_eq!(m.subject.as_str(), "auth.events.user.created");
}

/// An unreachable broker is an `Unavailable` error naming it, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_is_a_clear_error() {
    let mut config = KafkaConfig::new("127.0.0.1:1");
    config.publish_timeout = Duration::from_secs(2);
    let err = event_bus::KafkaBus::connect(config)
        .await
        .expect_err("nothing listens on port 1");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}
