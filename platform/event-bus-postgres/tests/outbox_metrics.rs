//! The outbox's gauges on `/metrics`, as Prometheus would scrape them from
//! `event-bus-http`'s router, against a real PostgreSQL and nats-server:
//! rows enqueued with no relay running show on the next scrape (nothing
//! else asks for the outbox's status), their age grows from scrape to
//! scrape, and once a relay has published them (and moved a refused row
//! to the failure table) the next scrape says so. One test: the recorder is
//! process-global.

use event_bus::nats::StreamSpec;
use event_bus::{Envelope, EventBus};
use event_bus_http::{install_prometheus, Monitoring};
use event_bus_postgres::{Outbox, OutboxRelay};
use event_bus_testkit::nats_server::{NatsServer, NatsServerOptions};
use event_bus_testkit::wait;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
mod common;

/// `GET /metrics`: the exposition.
async fn scrape(addr: SocketAddr) -> String {
    let (code, body) = event_bus_testkit::http::get(addr, "/metrics").await;
    assert_eq!(code, 200, "{body}");
    body
}

/// The value of the one sample of `name` for the default table, if any.
fn gauge(exposition: &str, name: &str) -> Option<f64> {
    let prefix = format!("{name}{{event_bus_outbox_table=\"event_bus_outbox\"}} ");
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().expect("a number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_gauges_are_as_fresh_as_the_scrape() {
    let handle = install_prometheus().expect("the first recorder of this process");
    let (_pg, pool) = common::postgres(8).await;
    let outbox = Outbox::new(pool.clone());
    outbox.migrate().await.expect("create the outbox tables");
    // A server whose max_payload refuses the poison row for good.
    let server = NatsServer::start_with(NatsServerOptions::default().max_payload(4096))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let bus: Arc<dyn EventBus> = Arc::new(
        server
            .bus(&[StreamSpec::new("OUT", ["out.>"])])
            .await
            .unwrap(),
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Monitoring::new()
        .check(outbox.status_check(Duration::from_secs(30)))
        .metrics(handle)
        .router();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let exposition = scrape(addr).await;
    assert_eq!(
        gauge(&exposition, "event_bus_outbox_pending"),
        Some(0.0),
        "an empty outbox: {exposition}"
    );

    // Four rows, no relay: nobody calls `Outbox::status` but the scrape.
    let mut tx = pool.begin().await.unwrap();
    for i in 0..3 {
        outbox
            .enqueue(
                &mut tx,
                Envelope::new(format!("out.ok.{i}"), b"ok".to_vec()),
            )
            .await
            .unwrap();
    }
    outbox
        .enqueue(&mut tx, Envelope::new("out.poison", vec![b'p'; 8192]))
        .await
        .unwrap();
    outbox.commit(tx).await.unwrap();
    let exposition = scrape(addr).await;
    assert_eq!(
        gauge(&exposition, "event_bus_outbox_pending"),
        Some(4.0),
        "{exposition}"
    );
    assert_eq!(
        gauge(&exposition, "event_bus_outbox_failed_rows"),
        Some(0.0),
        "{exposition}"
    );
    let first_age = gauge(&exposition, "event_bus_outbox_oldest_pending_age_seconds")
        .expect("the oldest pending age");
    wait::until_async(
        Duration::from_secs(10),
        "the oldest pending age to grow from scrape to scrape",
        || async {
            let age = gauge(
                &scrape(addr).await,
                "event_bus_outbox_oldest_pending_age_seconds",
            );
            age.is_some_and(|a| a >= first_age + 0.2)
        },
    )
    .await;

    // A relay publishes three and fails the poison row at once.
    let relay = OutboxRelay::builder(outbox.clone(), bus.clone())
        .max_attempts(1)
        .build()
        .unwrap()
        .spawn();
    wait::until(Duration::from_secs(20), "the relay to finish", || {
        let r = relay.report();
        r.published == 3 && r.failed == 1
    })
    .await;
    let report = relay.shutdown().await;
    let exposition = scrape(addr).await;
    assert_eq!(
        (
            gauge(&exposition, "event_bus_outbox_pending"),
            gauge(&exposition, "event_bus_outbox_failed_rows"),
            gauge(&exposition, "event_bus_outbox_oldest_pending_age_seconds"),
        ),
        (Some(0.0), Some(1.0), Some(0.0)),
        "after the relay ({report:?}): {exposition}"
    );
    assert!(
        exposition.contains("event_bus_outbox_events_total{"),
        "the relay's results are counted: {exposition}"
    );
}
