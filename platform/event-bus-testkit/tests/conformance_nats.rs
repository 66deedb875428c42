//! The conformance suite against `NatsBus` on a real nats-server (one
//! JetStream server per test, on a random loopback port).

use event_bus::{EventBus, NatsBus};
use event_bus_testkit::conformance::BusFactory;
use event_bus_testkit::nats_server::NatsServer;
use futures::future::BoxFuture;
use std::sync::Arc;

struct Nats {
    server: NatsServer,
}

impl BusFactory for Nats {
    fn make(&self) -> BoxFuture<'_, Arc<dyn EventBus>> {
        let url = self.server.url();
        Box::pin(async move {
            let client = async_nats::connect(url.as_str())
                .await
                .unwrap_or_else(|e| panic!("connect to the test server at {url}: {e}"));
            Arc::new(NatsBus::new(client)) as Arc<dyn EventBus>
        })
    }
}

async fn nats() -> Nats {
    Nats {
        server: NatsServer::start().await.expect("start nats-server"),
    }
}

event_bus_testkit::conformance_tests!(nats().await);
