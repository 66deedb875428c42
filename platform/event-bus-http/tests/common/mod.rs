//! Helpers shared by the endpoint tests (each test binary uses a part).
#![allow(dead_code)]

use event_bus::status::BusCheck;
use event_bus::status::LagMonitor;
use event_bus::{ConsumerConfig, ConsumerStream, Delivery, EventBus, EventBusExt, InMemoryBus};
use event_bus_http::Monitoring;
use futures::StreamExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use event_bus_testkit::http::get;

/// Serves `m` on a free loopback port; returns the address.
pub async fn serve(m: Monitoring) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, m.router()).await.unwrap() });
    addr
}

/// An in-memory bus whose durable consumer `mailer` (on `mail.>`) holds one
/// of three deliveries unanswered, watched by a `LagMonitor` (50 ms samples,
/// windows of 4) and served with a `BusCheck`: it stalls within a second.
pub struct StalledMailer {
    /// The bus.
    pub bus: Arc<dyn EventBus>,
    /// The monitoring endpoints.
    pub addr: SocketAddr,
    consumer: ConsumerStream,
    held: Delivery,
    _lag: Arc<LagMonitor>,
}

impl StalledMailer {
    /// Sets it up (see the type).
    pub async fn start() -> Self {
        let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
        let mut consumer = bus
            .consume(ConsumerConfig::new("mailer", "mail.>").ack_wait(Duration::from_secs(60)))
            .await
            .unwrap();
        for i in 0..3 {
            bus.publish("mail.send", vec![i]).await.unwrap();
        }
        let held = consumer.next().await.unwrap().unwrap();
        let lag = Arc::new(LagMonitor::spawn(
            bus.clone(),
            [("mailer".to_string(), "mail.>".to_string())],
            Duration::from_millis(50),
            4,
        ));
        let addr = serve(
            Monitoring::new()
                .check(BusCheck::new(bus.clone()))
                .shared_check(lag.clone()),
        )
        .await;
        StalledMailer {
            bus,
            addr,
            consumer,
            held,
            _lag: lag,
        }
    }

    /// Answers everything: the mailer catches up.
    pub async fn catch_up(mut self) -> SocketAddr {
        self.held.ack().await.unwrap();
        for _ in 0..2 {
            self.consumer
                .next()
                .await
                .unwrap()
                .unwrap()
                .ack()
                .await
                .unwrap();
        }
        self.addr
    }
}
