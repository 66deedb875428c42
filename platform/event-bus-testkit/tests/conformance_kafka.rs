//! The conformance suite against `KafkaBus` on a real Kafka-protocol broker
//! (tansu, one per test, on a random loopback port, in-memory storage).
//! `cargo test -p event-bus-testkit --features kafka --test conformance_kafka`;
//! the broker: `./scripts/install-test-deps.sh kafka`.

use event_bus::EventBus;
use event_bus_testkit::conformance::BusFactory;
use event_bus_testkit::kafka_server::KafkaServer;
use futures::future::BoxFuture;
use std::sync::Arc;

struct Kafka {
    server: KafkaServer,
}

impl BusFactory for Kafka {
    fn make(&self) -> BoxFuture<'_, Arc<dyn EventBus>> {
        Box::pin(async move { Arc::new(self.server.bus().await) as Arc<dyn EventBus> })
    }
}

async fn kafka() -> Kafka {
    Kafka {
        server: KafkaServer::start()
            .await
            .unwrap_or_else(|e| panic!("start the Kafka broker: {e}")),
    }
}

event_bus_testkit::conformance_tests!(kafka().await);
