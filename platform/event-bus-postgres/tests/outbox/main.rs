//! The transactional outbox against a real PostgreSQL (`DATABASE_URL`, else a
//! throwaway server) and, where a test says so, a real nats-server: rows
//! commit with the business transaction and are published once, a row that
//! commits late is never skipped, rolled-back rows never leave, refused rows
//! go to the failure table, several relays hand over, the bus going away
//! only delays.

use event_bus::nats::StreamSpec;
use event_bus::{
    BusMessage, ConsumerConfig, Envelope, ErrorKind, EventBus, EventBusExt, InMemoryBus,
    StartPosition,
};
use event_bus_postgres::outbox::FailedEvent;
use event_bus_postgres::{sqlx, Outbox, OutboxRelay};
use event_bus_testkit::nats_server::NatsServer;
use event_bus_testkit::postgres::TestPostgres;
use event_bus_testkit::wait;
use futures::StreamExt;
use sqlx::postgres::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

#[path = "../common/mod.rs"]
mod common;
mod enqueue;
mod failures;
mod relays;
mod retention;

async fn pg() -> (TestPostgres, PgPool) {
    common::postgres(16).await
}

async fn outbox(pool: &PgPool) -> Outbox {
    let outbox = Outbox::new(pool.clone());
    outbox.migrate().await.expect("create the outbox tables");
    outbox
}

/// A NatsBus on a fresh server with one stream over `out.>` (JetStream's
/// default two-minute duplicate window).
async fn nats() -> (NatsServer, Arc<dyn EventBus>) {
    let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let bus = server
        .bus(&[StreamSpec::new("OUT", ["out.>"])])
        .await
        .unwrap();
    (server, Arc::new(bus))
}

fn relay(
    outbox: &Outbox,
    bus: &Arc<dyn EventBus>,
) -> event_bus_postgres::outbox::OutboxRelayBuilder {
    OutboxRelay::builder(outbox.clone(), bus.clone())
        .lease(Duration::from_secs(3))
        .publish_timeout(Duration::from_secs(1))
        .backoff(Duration::from_millis(20), Duration::from_millis(500))
}

async fn enqueue_one(outbox: &Outbox, pool: &PgPool, subject: &str, body: &str) -> String {
    let mut tx = pool.begin().await.unwrap();
    let id = outbox
        .enqueue(&mut tx, Envelope::new(subject, body.as_bytes().to_vec()))
        .await
        .unwrap();
    outbox.commit(tx).await.unwrap();
    id.to_string()
}

/// Reads every message of the stream from its start (a fresh durable
/// consumer), acking each: `(subject, id, payload)` in stream order.
async fn stream_contents(bus: &Arc<dyn EventBus>, pattern: &str, n: usize) -> Vec<BusMessage> {
    let name = format!("check-{}", uuid_like());
    let mut stream = bus
        .consume(
            ConsumerConfig::new(name, pattern)
                .start(StartPosition::All)
                .max_ack_pending(10_000),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(20), stream.next()).await {
            Ok(Some(Ok(d))) => {
                out.push(d.message().clone());
                d.ack_nowait().await.unwrap();
            }
            Ok(other) => panic!(
                "consumer ended after {} of {n}: {:?}",
                out.len(),
                other.map(|r| r.err())
            ),
            Err(_) => panic!("only {} of {n} events in the stream after 20 s", out.len()),
        }
    }
    // Nothing more arrives.
    if let Ok(Some(Ok(d))) = tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
        panic!(
            "more than {n} events in the stream: an extra {:?} ({})",
            d.message().subject,
            d.message().id
        );
    }
    out
}

/// Each subject's payloads (numbers) are increasing in `messages`' order.
fn assert_in_order_per_subject(messages: &[BusMessage]) {
    let mut per_key: HashMap<String, Vec<u32>> = HashMap::new();
    for m in messages {
        let n: u32 = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
        per_key.entry(m.subject.to_string()).or_default().push(n);
    }
    for (key, ns) in per_key {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "{key} out of order: {ns:?}"
        );
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}
