//! `/readyz` on a `KafkaBus` (a real tansu broker): ready while the broker
//! answers, 503 naming Kafka once it is killed, ready again after its
//! restart. `cargo test -p event-bus-http --features kafka --test readyz_kafka`.

use event_bus::kafka::KafkaConfig;
use event_bus::status::BusCheck;
use event_bus::EventBus;
use event_bus_http::Monitoring;
use event_bus_testkit::kafka_server::KafkaServer;
use event_bus_testkit::wait;
use std::sync::Arc;
use std::time::Duration;
mod common;
use common::{get, serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_a_killed_and_restarted_kafka_broker() {
    let mut server = KafkaServer::start()
        .await
        .unwrap_or_else(|e| panic!("start the Kafka broker: {e}"));
    let mut config = KafkaConfig::new(&server.bootstrap());
    config.publish_timeout = Duration::from_secs(2);
    let bus: Arc<dyn EventBus> = Arc::new(event_bus::KafkaBus::connect(config).await.unwrap());
    let addr = serve(
        Monitoring::new()
            .check(BusCheck::new(bus.clone()))
            .check_timeout(Duration::from_secs(5)),
    )
    .await;
    let (code, body) = get(addr, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("kafka healthy"), "{body}");

    server.kill();
    wait::until_async(
        Duration::from_secs(30),
        "/readyz 503 once the broker is killed",
        || async { get(addr, "/readyz").await.0 == 503 },
    )
    .await;
    let (_, body) = get(addr, "/readyz").await;
    assert!(body.contains("kafka"), "{body}");

    server
        .restart()
        .await
        .unwrap_or_else(|e| panic!("restart tansu: {e}"));
    wait::until_async(
        Duration::from_secs(30),
        "/readyz 200 after the broker's restart",
        || async { get(addr, "/readyz").await.0 == 200 },
    )
    .await;
}
