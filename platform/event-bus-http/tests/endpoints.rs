//! The monitoring endpoints over real HTTP on loopback: `/readyz` follows the
//! bus (a real nats-server killed and restarted) and consumer lag (a stalled
//! consumer), `/status` carries the details, `/` is escaped HTML, a check
//! that hangs is bounded, `/readyz` fails once the service begins shutting
//! down and once its runner has stopped.

use event_bus::runner::{Event, Handler, Outcome, Runner, RunnerHandle};
use event_bus::status::{from_fn, BusCheck, CheckReport, StatusCheck};
use event_bus::{EventBus, NatsBus};
use event_bus_http::Monitoring;
use event_bus_testkit::nats_server::NatsServer;
use event_bus_testkit::wait;
use std::sync::Arc;
use std::time::{Duration, Instant};
mod common;
use common::{get, serve, StalledMailer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_consumer_lag_and_status_has_the_details() {
    let mailer = StalledMailer::start().await;
    let addr = mailer.addr;
    assert_eq!(get(addr, "/livez").await.0, 200);
    wait::until_async(
        Duration::from_secs(10),
        "/readyz 503 while the mailer is stalled",
        || async { get(addr, "/readyz").await.0 == 503 },
    )
    .await;
    let (_, body) = get(addr, "/readyz").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], false);
    let consumers = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "consumers")
        .unwrap()
        .clone();
    assert!(
        consumers["summary"]
            .as_str()
            .unwrap()
            .contains("mailer STALL"),
        "{consumers}"
    );
    let (code, body) = get(addr, "/status").await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let details = &v["checks"][1]["details"][0];
    assert_eq!(details["name"], "mailer");
    assert_eq!(details["status"], "STALL");
    assert_eq!(details["state"]["lag"], 3, "{details}");
    assert_eq!(v["checks"][0]["details"]["backend"], "memory");

    mailer.catch_up().await;
    wait::until_async(
        Duration::from_secs(10),
        "/readyz 200 once it caught up",
        || async { get(addr, "/readyz").await.0 == 200 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_a_declared_stream_is_missing() {
    let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let client = async_nats::connect(server.url()).await.unwrap();
    let nats = NatsBus::new(client.clone());
    nats.ensure_streams(&[
        event_bus::nats::StreamSpec::new("ORDERS", ["orders.>"]),
        event_bus::nats::StreamSpec::new("AUDIT", ["audit.>"]),
    ])
    .await
    .unwrap();
    let bus: Arc<dyn EventBus> = Arc::new(nats.clone());
    let addr = serve(Monitoring::new().check(BusCheck::new(bus))).await;
    let (code, body) = get(addr, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("2 declared stream(s) present"), "{body}");

    // Someone deletes a stream the service declared.
    async_nats::jetstream::new(client)
        .delete_stream("AUDIT")
        .await
        .unwrap();
    let (code, body) = get(addr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("declared stream(s) AUDIT do not exist"),
        "{body}"
    );

    // Declaring it again makes the service ready again.
    nats.ensure_streams(&[event_bus::nats::StreamSpec::new("AUDIT", ["audit.>"])])
        .await
        .unwrap();
    assert_eq!(get(addr, "/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_a_killed_and_restarted_nats_server() {
    let mut server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let bus: Arc<dyn EventBus> = Arc::new(NatsBus::new(
        async_nats::connect(server.url()).await.unwrap(),
    ));
    let addr = serve(Monitoring::new().check(BusCheck::new(bus.clone()))).await;
    assert_eq!(get(addr, "/readyz").await.0, 200);
    server.kill();
    let killed = Instant::now();
    wait::until_async(
        Duration::from_secs(5),
        "/readyz 503 after the kill",
        || async { get(addr, "/readyz").await.0 == 503 },
    )
    .await;
    assert!(killed.elapsed() < Duration::from_secs(5));
    server.restart().await.unwrap();
    let back = Instant::now();
    wait::until_async(
        Duration::from_secs(5),
        "/readyz 200 after the restart",
        || async { get(addr, "/readyz").await.0 == 200 },
    )
    .await;
    assert!(back.elapsed() < Duration::from_secs(5));
}

async fn mailer(bus: &Arc<dyn EventBus>, name: &str) -> RunnerHandle {
    Runner::builder(bus.clone(), name)
        .handler(Handler::new(
            "h",
            "mail.x",
            |_e: Event<'_, u32>, _tx: &mut ()| Outcome::Ack,
        ))
        .build()
        .spawn()
        .await
        .unwrap()
}

/// Shutdown × readiness (real nats-server): `/readyz` answers 503 from the
/// moment the service begins shutting down, before its runner stops (a load
/// balancer drains it first); a runner that has stopped fails its check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_once_shutdown_begins_and_once_the_runner_stopped() {
    let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let bus: Arc<dyn EventBus> = Arc::new(server.bus(&[]).await.unwrap());
    let runner = mailer(&bus, "mailer").await;
    let monitoring = Monitoring::new()
        .check(BusCheck::new(bus.clone()))
        .check(runner.status_check());
    let shutdown = monitoring.shutdown_handle();
    let addr = serve(monitoring).await;
    let (code, body) = get(addr, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("runner mailer") && body.contains("running"),
        "{body}"
    );

    shutdown.begin("SIGTERM received");
    let (code, body) = get(addr, "/readyz").await;
    assert_eq!(code, 503, "not ready once the shutdown began: {body}");
    assert!(body.contains("shutting down: SIGTERM received"), "{body}");
    let (_, page) = get(addr, "/").await;
    assert!(
        page.contains("NOT READY") && page.contains("SIGTERM received"),
        "{page}"
    );
    // The runner still works while the instance drains.
    bus.publish("mail.x", b"1".to_vec()).await.unwrap();
    wait::until(
        Duration::from_secs(30),
        "the draining runner handled it",
        || runner.report().processed == 1,
    )
    .await;
    assert_eq!(runner.shutdown().await.processed, 1);

    // Without the mark, a stopped runner's own check fails /readyz.
    let second = mailer(&bus, "second").await;
    let addr = serve(
        Monitoring::new()
            .check(BusCheck::new(bus.clone()))
            .check(second.status_check()),
    )
    .await;
    assert_eq!(get(addr, "/readyz").await.0, 200);
    second.shutdown().await;
    let (code, body) = get(addr, "/readyz").await;
    assert_eq!(code, 503, "a stopped runner is not ready: {body}");
    assert!(
        body.contains("runner second") && body.contains("stopped"),
        "{body}"
    );

    // An aborted runner (its task gone) likewise.
    let third = mailer(&bus, "third").await;
    let check = third.status_check();
    assert!(check.check().await.ready);
    third.abort();
    wait::until_async(
        Duration::from_secs(30),
        "the aborted runner's check fails",
        || async { !check.check().await.ready },
    )
    .await;
}

struct Hangs;

#[async_trait::async_trait]
impl StatusCheck for Hangs {
    fn name(&self) -> &str {
        "hangs"
    }
    async fn check(&self) -> CheckReport {
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_escaped_html_and_a_hanging_check_is_bounded() {
    let addr = serve(
        Monitoring::new()
            .check(from_fn("runner <billing>", || {
                CheckReport::new(
                    true,
                    "processed 5 & <script>alert(1)</script>",
                    serde_json::json!({"processed": 5}),
                )
            }))
            .check(Hangs)
            .check_timeout(Duration::from_millis(300)),
    )
    .await;
    let started = Instant::now();
    let (code, html) = get(addr, "/").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the hanging check was not bounded"
    );
    assert_eq!(code, 200);
    assert!(html.contains("NOT READY"), "{html}");
    assert!(html.contains("runner &lt;billing&gt;"), "{html}");
    assert!(html.contains("processed 5 &amp; &lt;script&gt;"), "{html}");
    assert!(!html.contains("<script>"), "unescaped: {html}");
    assert!(html.contains("no answer within 300 ms"), "{html}");
    let (code, _) = get(addr, "/readyz").await;
    assert_eq!(code, 503);
}
