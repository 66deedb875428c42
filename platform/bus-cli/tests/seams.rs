//! The seam suite: the features of the platform run *together* against real
//! servers (nats-server, PostgreSQL), as a service and its operator use them.
//!
//! outbox → `ValidatingBus` (contracts in the registry, on NATS KV) → NATS →
//! runner with `SchemaCheck` and `PgInbox` → dead letters → `bus dlq
//! replay` → handled once; the relay and the runner restarted in the middle;
//! `/metrics` and `/readyz` through it all. Each step asserts what would
//! break if one of the seams below broke:
//!
//! * outbox × contracts: a row its contract refuses goes to the failure
//!   table (it does not block its key forever, nor let a later row of its
//!   key go out ahead of it);
//! * dead letters × CLI: `bus dlq replay` removes the letter for every
//!   reader; a second replay finds nothing;
//! * metrics × restarts: the runner's counters add up across instances of
//!   one name;
//! * shutdown × health: `/readyz` is 503 once shutdown begins.

use event_bus::nats::StreamSpec;
use event_bus::runner::{Event, Handler, Outcome, Runner, RunnerHandle, State};
use event_bus::status::BusCheck;
use event_bus::{Envelope, EventBus};
use event_bus_http::{install_prometheus, Monitoring};
use event_bus_postgres::{sqlx, Outbox, OutboxRelay, PgInbox, RelayHandle};
use event_bus_schema::{Registry, SchemaCheck, TypeSettings, ValidatingBus};
use event_bus_testkit::nats_server::NatsServer;
use event_bus_testkit::postgres::TestPostgres;
use event_bus_testkit::wait;
use serde_json::{json, Value};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SUBJECT: &str = "auth.events.user.created";
const RUNNER: &str = "mailer";
const DLQ: &str = "dlq.mailer";
/// A bound for anything to happen on a loaded machine.
const BOUND: Duration = Duration::from_secs(60);

mod common;

#[derive(serde::Deserialize)]
struct UserCreated {
    user_id: i64,
    email: String,
}

/// Runs `bus` with `args` against `url`, off the test's runtime.
async fn bus_cli(url: &str, args: &[&str]) -> Output {
    let url = url.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::bus_on_nats(&url, &args)
    })
    .await
    .expect("the bus run's thread")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The dead letters `bus dlq ls` lists (a fresh process: a reader of its own).
async fn dlq_ls(url: &str) -> Vec<Value> {
    let out = bus_cli(url, &["dlq", "ls", DLQ, "--json"]).await;
    assert!(out.status.success(), "bus dlq ls: {}", text(&out));
    match serde_json::from_slice::<Value>(&out.stdout) {
        Ok(Value::Array(rows)) => rows,
        other => panic!("bus dlq ls --json: not an array: {other:?}\n{}", text(&out)),
    }
}

/// The runner's handler: a mail row in the inbox's transaction; addresses
/// at `@bounce.invalid` go to the dead letters until `fixed`.
async fn welcome_mail(
    fixed: State<'_, Arc<AtomicBool>>,
    e: Event<'_, UserCreated>,
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
) -> Outcome {
    if e.data.email.ends_with("@bounce.invalid") && !fixed.load(Ordering::SeqCst) {
        return Outcome::DeadLetter(format!("{} bounced", e.data.email));
    }
    sqlx::query("INSERT INTO mails (user_id, email) VALUES ($1, $2)")
        .bind(e.data.user_id)
        .bind(&e.data.email)
        .execute(&mut **tx)
        .await
        .map(|_| Outcome::Ack)
        .unwrap_or_else(Outcome::retry)
}

/// The mailer: records one mail per user in the handler's transaction
/// (the inbox claim commits with it); refuses `@bounce.invalid` addresses
/// to the dead letters until `fixed`.
async fn start_runner(
    bus: Arc<dyn EventBus>,
    pool: sqlx::PgPool,
    registry: Registry,
    fixed: Arc<AtomicBool>,
) -> RunnerHandle {
    Runner::builder(bus, RUNNER)
        .inbox(PgInbox::new(pool))
        .check(SchemaCheck::new(registry))
        .handler(Handler::new("welcome-mail", SUBJECT, welcome_mail).with_state(fixed))
        .build()
        .spawn()
        .await
        .expect("the runner starts")
}

fn start_relay(outbox: &Outbox, bus: Arc<dyn EventBus>) -> RelayHandle {
    OutboxRelay::builder(outbox.clone(), bus)
        .build()
        .expect("relay settings")
        .spawn()
}

async fn enqueue(outbox: &Outbox, pool: &sqlx::PgPool, key: &str, user_id: i64, email: &str) {
    let mut tx = pool.begin().await.unwrap();
    outbox
        .enqueue_with_key(
            &mut tx,
            key,
            Envelope::new(
                SUBJECT,
                serde_json::to_vec(&json!({"user_id": user_id, "email": email})).unwrap(),
            )
            .id(format!("auth.user.created:seam-{user_id}")),
        )
        .await
        .unwrap();
    outbox.commit(tx).await.unwrap();
}

/// (user_id, email) of every recorded mail, by user id.
async fn mails(pool: &sqlx::PgPool) -> Vec<(i64, String)> {
    sqlx::query_as("SELECT user_id, email FROM mails ORDER BY user_id, email")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// The value of `event_bus_runner_events_total` for `result` on a scrape.
fn runner_counter(scrape: &str, result: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let rest = line.strip_prefix("event_bus_runner_events_total{")?;
        let (labels, value) = rest.split_once("} ")?;
        (labels.contains(&format!("event_bus_runner=\"{RUNNER}\""))
            && labels.contains(&format!("event_bus_result=\"{result}\"")))
        .then(|| value.trim().parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_contracts_runner_inbox_dlq_cli_metrics_and_health_together() {
    let metrics = install_prometheus().expect("the only recorder of this test binary");
    let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let url = server.url();
    let nats = server
        .bus(&[
            StreamSpec::new("AUTH", ["auth.events.>"]),
            StreamSpec::new("DLQ", ["dlq.>"]),
        ])
        .await
        .expect("the streams");
    let bus: Arc<dyn EventBus> = Arc::new(nats);
    let pg = TestPostgres::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&pg.url())
        .await
        .expect("PostgreSQL");
    sqlx::raw_sql("CREATE TABLE mails (user_id BIGINT NOT NULL, email TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    PgInbox::new(pool.clone()).migrate().await.unwrap();

    // The contract, shared through the bus (a KV bucket).
    let client = event_bus::async_nats::connect(&url).await.unwrap();
    let registry = Registry::nats(client, "CONTRACTS").await.unwrap();
    registry
        .define("auth.user.created", TypeSettings::new(SUBJECT))
        .await
        .unwrap();
    registry
        .register(
            "auth.user.created",
            json!({
                "type": "object",
                "properties": {
                    "user_id": {"type": "integer"},
                    "email": {"type": "string", "minLength": 3}
                },
                "required": ["user_id", "email"]
            }),
        )
        .await
        .unwrap();

    // The service: outbox relay through the contract check, the runner, the
    // monitoring endpoints.
    let outbox = Outbox::new(pool.clone());
    outbox.migrate().await.unwrap();
    let validated: Arc<dyn EventBus> =
        Arc::new(ValidatingBus::new(bus.clone(), registry.clone()).source("/seams"));
    let fixed = Arc::new(AtomicBool::new(false));
    let monitoring = Monitoring::new()
        .check(BusCheck::new(bus.clone()))
        .check(outbox.status_check(Duration::from_secs(30)))
        .metrics(metrics);
    let shutting_down = monitoring.shutdown_handle();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    let app = monitoring.router();
    tokio::spawn(async move { axum::serve(listener, app).await });

    // 1: ada (key k1) valid; a row its contract refuses (k2), then a valid
    // row of the same key; a bouncing address (k3).
    enqueue(&outbox, &pool, "k1", 1, "ada@example.com").await;
    enqueue(&outbox, &pool, "k2", 2, "").await;
    enqueue(&outbox, &pool, "k2", 3, "grace@example.com").await;
    enqueue(&outbox, &pool, "k3", 4, "nobody@bounce.invalid").await;
    // The runner first: its consumer starts with what is published after
    // it is created (a relay started first could publish before that).
    let runner = start_runner(bus.clone(), pool.clone(), registry.clone(), fixed.clone()).await;
    let relay = start_relay(&outbox, validated.clone());

    wait::until_async(BOUND, "ada mailed, the bounce dead-lettered", || async {
        mails(&pool).await.len() == 1 && runner.report().dead_lettered == 1
    })
    .await;
    wait::until_async(BOUND, "the refused row in the failure table", || async {
        outbox.failed(10).await.unwrap().len() == 1
    })
    .await;
    let failed = outbox.failed(10).await.unwrap();
    assert_eq!(failed[0].order_key, "k2", "{:?}", failed[0]);
    assert!(
        failed[0].error.contains("minLength") || failed[0].error.contains("shorter"),
        "the failure names the contract's complaint: {}",
        failed[0].error
    );
    // grace (k2) waits behind the refused row of her key: not published.
    let status = outbox.status().await.unwrap();
    assert_eq!(status.failed, 1, "{status:?}");
    assert_eq!(
        status.blocked, 1,
        "grace's row waits for its key: {status:?}"
    );
    assert_eq!(mails(&pool).await, vec![(1, "ada@example.com".into())]);
    // A refused row does not make the service unready (the failure table
    // and its gauge are what operators act on).
    let (code, body) = event_bus_testkit::http::get(http, "/readyz").await;
    assert_eq!(code, 200, "/readyz with a failed row: {body}");

    // 2: the relay and the runner restart (a deploy); the operator discards
    // the refused row, so its key goes on.
    let first = runner.shutdown().await;
    relay.shutdown().await;
    let relay = start_relay(&outbox, validated.clone());
    let runner = start_runner(bus.clone(), pool.clone(), registry.clone(), fixed.clone()).await;
    assert_eq!(outbox.discard_failed(&[failed[0].seq]).await.unwrap(), 1);
    outbox.wake();
    wait::until_async(BOUND, "grace mailed after the discard", || async {
        mails(&pool).await.len() == 2
    })
    .await;

    // 3: the dead letter, through the CLI: listed, replayed once the mailer
    // is fixed, then gone for every reader; a second replay finds nothing.
    let dead = dlq_ls(&url).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    fixed.store(true, Ordering::SeqCst);
    let out = bus_cli(&url, &["dlq", "replay", DLQ]).await;
    assert!(out.status.success(), "bus dlq replay: {}", text(&out));
    wait::until_async(BOUND, "the replayed bounce mailed", || async {
        mails(&pool).await.len() == 3
    })
    .await;
    assert!(dlq_ls(&url).await.is_empty(), "the replayed letter is gone");
    let again = bus_cli(&url, &["dlq", "replay", DLQ]).await;
    assert!(
        !again.status.success(),
        "a replay with nothing to replay fails and says why: {}",
        text(&again)
    );
    assert_eq!(
        mails(&pool).await,
        vec![
            (1, "ada@example.com".into()),
            (3, "grace@example.com".into()),
            (4, "nobody@bounce.invalid".into()),
        ],
        "each user mailed exactly once"
    );

    // 4: metrics add up across the two runner instances of one name.
    let second = runner.shutdown().await;
    let processed = first.processed + second.processed;
    assert_eq!(processed, 3, "first {first:?}, second {second:?}");
    assert!(first.processed >= 1 && second.processed >= 1);
    let (code, scrape) = event_bus_testkit::http::get(http, "/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(
        runner_counter(&scrape, "processed"),
        Some(processed as f64),
        "event_bus_runner_events_total is the sum of both instances:\n{scrape}"
    );
    assert_eq!(runner_counter(&scrape, "dead_lettered"), Some(1.0));

    // 5: readiness turns false when shutdown begins.
    shutting_down.begin("the seam test is stopping");
    let (code, body) = event_bus_testkit::http::get(http, "/readyz").await;
    assert_eq!(code, 503, "/readyz after shutdown began: {body}");
    relay.shutdown().await;
}
