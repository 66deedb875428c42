//! Every Rust code block of the README and of its guides in `docs/`, run as
//! written.
//!
//! Each block is pasted verbatim into a test below, with the set-up it
//! assumes (a bus, a pool, the event types) written around it;
//! `every_documented_block_is_here` fails when the lines of a block are
//! not found here in order (set-up may sit between them), so the docs
//! cannot drift from code that runs. The README's examples are also put
//! together as one service (`the_readme_examples_compose_into_one_service`).

use event_bus::runner::{Event, Handler, Outcome, Runner};
use event_bus::{EventBus, InMemoryBus};
use event_bus_testkit::postgres::TestPostgres;
use event_bus_testkit::wait;
use futures::StreamExt;
use parking_lot::Mutex;
use sqlx::postgres::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
mod common;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The documents whose ```rust blocks must run: the README and the guides
/// (the original design note, `docs/EVENTBUS.md`, is run by
/// `event-bus/tests/spec_examples.rs`).
const DOCUMENTS: &[(&str, &str)] = &[
    ("README.md", include_str!("../../../README.md")),
    ("ARCHITECTURE.md", include_str!("../../../ARCHITECTURE.md")),
    ("docs/runner.md", include_str!("../../../docs/runner.md")),
    ("docs/outbox.md", include_str!("../../../docs/outbox.md")),
    (
        "docs/operations.md",
        include_str!("../../../docs/operations.md"),
    ),
    (
        "docs/contracts.md",
        include_str!("../../../docs/contracts.md"),
    ),
    (
        "docs/configuration.md",
        include_str!("../../../docs/configuration.md"),
    ),
    (
        "docs/performance.md",
        include_str!("../../../docs/performance.md"),
    ),
];
const THIS_FILE: &str = include_str!("readme_examples.rs");

/// The ```rust blocks of `doc`, each as its trimmed non-empty lines.
fn rust_blocks(doc: &'static str) -> Vec<Vec<&'static str>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in doc.lines() {
        let t = line.trim();
        match (&mut current, t) {
            (None, "```rust") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.push(current.take().expect("in a block")),
            (Some(b), t) if !t.is_empty() => b.push(t),
            _ => {}
        }
    }
    blocks
}

#[test]
fn every_documented_block_is_here() {
    let here: Vec<&str> = THIS_FILE
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut count = 0;
    for (name, doc) in DOCUMENTS {
        for block in rust_blocks(doc) {
            count += 1;
            // Every line of the block, in order (set-up may sit between them).
            let mut rest = here.iter();
            let found = block.iter().all(|line| rest.any(|h| h == line));
            assert!(
                found,
                "this block of {name} is not in tests/readme_examples.rs verbatim:\n{}",
                block.join("\n")
            );
        }
    }
    assert!(count >= 8, "found {count} rust blocks");
}

async fn pool() -> (TestPostgres, PgPool) {
    common::postgres(8).await
}

#[rustfmt::skip] // the README's block, verbatim
mod quick_start {
    use event_bus::{EventBus, InMemoryBus};
    use futures::StreamExt;
    use std::sync::Arc;

    #[tokio::main]
    async fn main() -> Result<(), Box<dyn std::error::Error>> {
        let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
        // or, from configuration (EVENT_BUS_TYPE=nats EVENT_BUS_NATS_URL=nats://...):
        // let bus = event_bus::connect(&event_bus::BusConfig::load()?).await?;

        let mut events = bus.subscribe("auth.events.>").await?;
        bus.publish("auth.events.user.created", br#"{"user_id":"usr_123"}"#.to_vec()).await?;

        let msg = events.next().await.expect("delivered");
        println!("{} {} {:?}", msg.subject, msg.id, msg.payload);
        Ok(())
    }

    #[test]
    fn runs() {
        main().unwrap();
    }
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Order {
    id: u64,
    total: u64,
}

#[rustfmt::skip] // the README's block, verbatim
#[tokio::test]
async fn message_ids() -> Result<(), Error> {
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let mut events = bus.subscribe("orders.>").await?;
    let order = Order { id: 7, total: 42 };
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    use event_bus::{Envelope, EventBus};

    let ack = bus
        .publish_envelope(
            Envelope::new("orders.created", serde_json::to_vec(&order)?)
                .id(format!("order-{}-created", order.id))   // de-duplicated within the window
                .header("traceparent", traceparent),
        )
        .await?;
    assert!(!ack.duplicate);

    let msg = events.next().await.expect("delivered");
    let order: Order = msg.json()?;                          // Codec error naming the subject

    assert_eq!(order, Order { id: 7, total: 42 });
    assert_eq!(msg.id.to_string(), "order-7-created");
    Ok(())
}

/// Payloads `process` was called with.
static PROCESSED: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// The README's `process`: fails for payloads that are not JSON objects.
async fn process(payload: &[u8]) -> Result<(), serde_json::Error> {
    PROCESSED.lock().unwrap().push(payload.to_vec());
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(payload).map(|_| ())
}

#[rustfmt::skip] // the README's block, verbatim
async fn durable_consumer_loop(bus: Arc<dyn EventBus>) -> Result<(), Error> {
    use event_bus::{ConsumerConfig, EventBusExt};
    use futures::StreamExt;
    use std::time::Duration;

    let mut jobs = bus
        .consume(ConsumerConfig::new("billing", "orders.>")
            .ack_wait(Duration::from_secs(30))
            .max_deliver(5)                          // then dead-lettered to `dlq.billing`
            .backoff(vec![Duration::from_secs(1), Duration::from_secs(10)]))
        .await?;
    while let Some(delivery) = jobs.next().await {
        let delivery = delivery?;                    // transient errors are reported, the stream goes on
        match process(&delivery.payload).await {
            Ok(()) => delivery.ack().await?,
            Err(e) => delivery.nack_with_reason(None, e.to_string()).await?, // backoff applies
        }
    }
    Ok(())
}

#[tokio::test]
async fn durable_consumers() -> Result<(), Error> {
    let memory = InMemoryBus::new();
    let bus: Arc<dyn EventBus> = Arc::new(memory.clone());
    let looping = tokio::spawn(durable_consumer_loop(bus.clone()));
    wait::until(Duration::from_secs(10), "the consumer subscribed", || {
        memory.subscription_count() > 0
    })
    .await;
    bus.publish("orders.created", br#"{"id":1}"#.to_vec())
        .await?;
    bus.publish("orders.created", b"not json".to_vec()).await?;
    // The good one is acked, the bad one nacked and delivered again after
    // the first backoff step (1 s).
    wait::until(
        Duration::from_secs(10),
        "the bad payload delivered twice",
        || {
            let seen = PROCESSED.lock().unwrap();
            seen.iter().filter(|p| p.as_slice() == b"not json").count() == 2
        },
    )
    .await;
    let seen = PROCESSED.lock().unwrap().clone();
    assert_eq!(
        seen.iter()
            .filter(|p| p.as_slice() == br#"{"id":1}"#)
            .count(),
        1,
        "the acked payload is not delivered again"
    );
    assert!(
        !looping.is_finished(),
        "the loop ended: {:?}",
        looping.await
    );
    looping.abort();
    Ok(())
}

#[derive(serde::Deserialize)]
struct UserCreated {
    user_id: i64,
    email: String,
}

async fn mail_table(pool: &PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS outgoing_mail (user_id BIGINT PRIMARY KEY, email TEXT NOT NULL)",
    )
    .execute(pool)
    .await
    .unwrap();
}

async fn mails(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outgoing_mail")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn publish_users(bus: &Arc<dyn EventBus>, n: usize) {
    for i in 0..n {
        bus.publish(
            "auth.events.user.created",
            format!(r#"{{"user_id":{i},"email":"u{i}@example.com"}}"#).into_bytes(),
        )
        .await
        .unwrap();
    }
}

async fn wait_for_mails(pool: &PgPool, n: i64) {
    wait::until_async(
        Duration::from_secs(20),
        "the welcome mails",
        || async move { mails(pool).await == n },
    )
    .await;
}

/// The README's runner block (its first part, verbatim), as a function the
/// composed service below starts too.
#[rustfmt::skip] // the README's block, verbatim
async fn readme_runner(bus: Arc<dyn EventBus>, pool: PgPool) -> Result<event_bus::runner::RunnerHandle, Error> {
    use event_bus::runner::{boxed, Event, Handler, RetryPolicy, Runner};
    use event_bus_postgres::PgInbox;

    #[derive(serde::Deserialize)]
    struct UserCreated { user_id: i64, email: String }          // as the outbox example below sends it

    let inbox = PgInbox::new(pool.clone());
    inbox.migrate().await?;
    let runner = Runner::builder(bus.clone(), "auth-mailer")        // consumer name; instances share work
        .inbox(inbox)                                                // exactly-once effects
        .concurrency(8)
        .handler(Handler::new("welcome-mail", "auth.events.user.created",
            boxed(|e: Event<'_, UserCreated>, tx: &mut sqlx::Transaction<'static, sqlx::Postgres>| Box::pin(async move {
                sqlx::query("INSERT INTO outgoing_mail (user_id, email) VALUES ($1, $2)")
                    .bind(e.data.user_id).bind(&e.data.email)
                    .execute(&mut **tx).await
                    .map(|_| ()).into()                              // Err => retry
            })))
            .retry(RetryPolicy::new(5, Duration::from_millis(200)))
            .key(|u: &UserCreated| u.user_id.to_string()))          // per-key order
        .build()
        .spawn().await?;
    Ok(runner)
}

#[rustfmt::skip] // the README's block's end, verbatim
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner() -> Result<(), Error> {
    let (_pg, pool) = pool().await;
    mail_table(&pool).await;
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let runner = readme_runner(bus.clone(), pool.clone()).await?;
    publish_users(&bus, 3).await;
    wait_for_mails(&pool, 3).await;
    // ... on shutdown:
    let report = runner.shutdown().await;                            // finishes or hands back in-flight events

    assert_eq!(report.processed, 3, "{report:?}");
    Ok(())
}

#[rustfmt::skip] // the README's block, verbatim
async fn welcome_mail(e: Event<'_, UserCreated>, tx: &mut sqlx::Transaction<'static, sqlx::Postgres>) -> Outcome {
    sqlx::query("INSERT INTO outgoing_mail (user_id, email) VALUES ($1, $2)")
        .bind(e.data.user_id).bind(&e.data.email)
        .execute(&mut **tx).await
        .map(|_| ()).into()
}

#[rustfmt::skip] // the README's block, verbatim
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_from_fn() -> Result<(), Error> {
    let (_pg, pool) = pool().await;
    mail_table(&pool).await;
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let inbox = event_bus_postgres::PgInbox::new(pool.clone());
    inbox.migrate().await?;
    let runner = Runner::builder(bus.clone(), "auth-mailer").inbox(inbox)
    // ...
        .handler(Handler::new("welcome-mail", "auth.events.user.created", welcome_mail))
        .build()
        .spawn()
        .await?;
    publish_users(&bus, 1).await;
    wait_for_mails(&pool, 1).await;
    runner.shutdown().await;
    Ok(())
}

#[rustfmt::skip] // the README's block, verbatim
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_sync() -> Result<(), Error> {
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());

    let projection = Arc::new(Mutex::new(HashMap::new()));
    let p = projection.clone();
    Runner::builder(bus.clone(), "user-directory")
        .handler(Handler::new("project", "auth.events.user.>",
            move |e: Event<'_, UserCreated>, _tx: &mut ()| {
                p.lock().insert(e.data.user_id, e.data.email.clone());
                Outcome::Ack
            }))
        .build()
        .spawn().await?;

    publish_users(&bus, 1).await;
    wait::until(Duration::from_secs(10), "the projection has the user", || {
        projection.lock().get(&0).map(String::as_str) == Some("u0@example.com")
    })
    .await;
    Ok(())
}

/// The handler of the layers block: the spans it ran in, innermost first.
static PROJECTED_IN: Mutex<Vec<String>> = Mutex::new(Vec::new());

async fn project(_e: Event<'_, UserCreated>, _tx: &mut ()) -> Outcome {
    use tracing_subscriber::registry::LookupSpan;
    // Read outside `get_default` (a nested one sees no subscriber).
    let current = tracing::Span::current().id();
    let scope = tracing::dispatcher::get_default(|d| {
        let Some(registry) = d.downcast_ref::<tracing_subscriber::Registry>() else {
            return "no registry".to_string();
        };
        let Some(id) = &current else {
            return "no current span".to_string();
        };
        match registry.span(id) {
            Some(span) => span
                .scope()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(" < "),
            None => "an unknown span".to_string(),
        }
    });
    PROJECTED_IN.lock().push(scope);
    Outcome::Ack
}

/// The guide's layers block, verbatim: the handler runs inside the span
/// the user's layer opens (a subscriber is set for this thread; the
/// current-thread runtime runs the runner here).
#[rustfmt::skip] // the guide's block, verbatim
#[tokio::test(flavor = "current_thread")]
async fn layers() -> Result<(), Error> {
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());

use event_bus::runner::{Attempt, Layer, Next, Outcome, Timeout};
use futures::future::BoxFuture;
use tracing::Instrument;

/// Puts the message's `correlation-id` header on a span around each attempt.
struct Correlation;

impl Layer for Correlation {
    fn call<'a>(&'a self, attempt: &'a Attempt<'a>, next: Next<'a>) -> BoxFuture<'a, Outcome> {
        let id = attempt.message.headers.get("correlation-id").unwrap_or("none").to_owned();
        let span = tracing::info_span!("event", correlation_id = %id, handler = attempt.handler);
        Box::pin(next.run().instrument(span))
    }
}

Runner::builder(bus.clone(), "user-directory")
    .layer(Correlation)                                          // every handler's attempts
    .handler(Handler::new("project", "auth.events.user.>", project)
        .layer(Timeout::new(Duration::from_secs(5))))            // this handler's, inside
    .build()
    .spawn().await?;

    publish_users(&bus, 1).await;
    wait::until_async(Duration::from_secs(10), "the handler ran", || async {
        tokio::task::yield_now().await;
        !PROJECTED_IN.lock().is_empty()
    })
    .await;
    // The runner's process span, inside the layer's.
    assert_eq!(*PROJECTED_IN.lock(), vec!["process < event".to_string()]);
    Ok(())
}

/// The README's outbox block, verbatim, then run: a user and its event
/// commit together and the event is published once; a rolled-back user
/// publishes nothing.
mod outbox_readme {
    use super::Error;
    use futures::StreamExt;
    use std::time::Duration;

    #[rustfmt::skip] // the README's block, verbatim
    pub(super) mod block {
        use super::Error;
use event_bus::EventBus;
use event_bus_postgres::{sqlx, Outbox, OutboxRelay, RelayHandle};
use std::sync::Arc;

pub async fn create_user(pool: &sqlx::PgPool, outbox: &Outbox, email: &str) -> Result<String, Error> {
    let mut tx = pool.begin().await?;
    let (user_id,): (i64,) = sqlx::query_as("INSERT INTO users (email) VALUES ($1) RETURNING id")
        .bind(email)
        .fetch_one(&mut *tx)
        .await?;
    let event_id = outbox
        .enqueue_json(&mut tx, "auth.events.user.created", &serde_json::json!({ "user_id": user_id, "email": email }))
        .await?;
    outbox.commit(tx).await?; // commits, then wakes this process's relay
    Ok(event_id.to_string())
}

pub async fn start(pool: sqlx::PgPool, bus: Arc<dyn EventBus>) -> Result<(Outbox, RelayHandle), Error> {
    let outbox = Outbox::new(pool);
    outbox.migrate().await?; // event_bus_outbox, _failed, _lease (PostgreSQL >= 13)
    let relay = OutboxRelay::builder(outbox.clone(), bus).build()?.spawn();
    Ok((outbox, relay))
}
// ... on shutdown (dropping the handle does the same in the background): finishes
// the batch in flight, releases the lease (a restarted instance publishes at once)
// let report = relay.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_outbox() -> Result<(), Error> {
        use event_bus::{EventBus, InMemoryBus};
        use std::sync::Arc;
        let (_pg, pool) = super::pool().await;
        sqlx::raw_sql("CREATE TABLE users (id BIGSERIAL PRIMARY KEY, email TEXT UNIQUE NOT NULL)")
            .execute(&pool)
            .await?;
        let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
        let mut events = bus.subscribe("auth.events.>").await?;
        let (outbox, relay) = block::start(pool.clone(), bus.clone()).await?;
        let id = block::create_user(&pool, &outbox, "ada@example.com").await?;
        let m = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await?
            .expect("published");
        assert_eq!(m.id.to_string(), id);
        assert_eq!(m.json::<serde_json::Value>()?["email"], "ada@example.com");
        // The same e-mail again: the insert fails, nothing is enqueued.
        assert!(block::create_user(&pool, &outbox, "ada@example.com")
            .await
            .is_err());
        assert!(
            tokio::time::timeout(Duration::from_millis(300), events.next())
                .await
                .is_err()
        );
        assert_eq!(outbox.status().await?.pending, 0);
        relay.shutdown().await;
        Ok(())
    }
}

/// The README's examples put together as one service, as a reader would
/// copy them: the outbox block's `create_user` and `start`, the runner
/// block's handler, and the monitoring block's endpoints. An event the
/// outbox example sends must decode in the runner example (it did not:
/// a number against a `String`, every event dead-lettered), and the
/// monitoring example must serve `/metrics`.
#[rustfmt::skip] // the README's monitoring block, verbatim, around the set-up
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_examples_compose_into_one_service() -> Result<(), Error> {
    use event_bus::status::LagMonitor;
    let (_pg, pool) = pool().await;
    sqlx::raw_sql("CREATE TABLE users (id BIGSERIAL PRIMARY KEY, email TEXT UNIQUE NOT NULL)")
        .execute(&pool)
        .await?;
    mail_table(&pool).await;
    let addr = "127.0.0.1:0";

    use event_bus::status::BusCheck;
    use event_bus_http::{install_prometheus, Monitoring};

    let metrics = install_prometheus()?;                   // first, before buses, runners and relays
    // ... the bus, the outbox, the relay, the runners, the lag monitor ...
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let (outbox, relay) = outbox_readme::block::start(pool.clone(), bus.clone()).await?;
    let runner = readme_runner(bus.clone(), pool.clone()).await?;
    let lag_monitor = Arc::new(LagMonitor::spawn(
        bus.clone(),
        [("auth-mailer".to_string(), "auth.events.user.created".to_string())],
        Duration::from_millis(100),
        10,
    ));
    let monitoring = Monitoring::new()
        .check(BusCheck::new(bus.clone()))
        .shared_check(lag_monitor.clone())
        .check(outbox.status_check(Duration::from_secs(30)))
        .check(runner.status_check())
        .metrics(metrics);                                 // serves /metrics (404 without it)
    let shutdown = monitoring.shutdown_handle();
    let app = monitoring.router();
    let listener = tokio::net::TcpListener::bind(addr).await?;   // e.g. "0.0.0.0:9090"
    let local = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    for email in ["ada@example.com", "grace@example.com"] {
        outbox_readme::block::create_user(&pool, &outbox, email).await?;
    }
    wait_for_mails(&pool, 2).await;
    let (code, body) = event_bus_testkit::http::get(local, "/readyz").await;
    assert_eq!(code, 200, "/readyz while serving: {body}");
    let (code, scrape) = event_bus_testkit::http::get(local, "/metrics").await;
    assert_eq!(code, 200, "/metrics: {scrape}");
    assert!(scrape.contains("event_bus_runner"), "no runner series on /metrics:\n{scrape}");
    let report = runner.report();
    assert_eq!((report.processed, report.dead_lettered), (2, 0), "{report:?}");

    // ... on SIGTERM: not ready first, so that a load balancer drains the instance
    shutdown.begin("SIGTERM");
    let (code, body) = event_bus_testkit::http::get(local, "/readyz").await;
    assert_eq!(code, 503, "/readyz once shutdown began: {body}");
    runner.shutdown().await;
    relay.shutdown().await;
    Ok(())
}

/// docs/operations.md: the sampling gate turned on where the tracer
/// provider is built. The gate is process-wide: set back to the default
/// at the end (other tests of this binary may share the process).
#[test]
fn sampling_gate_with_the_tracer_provider() {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        // sets the bus's gate and returns ParentBased(TraceIdRatioBased(0.01)),
        // keeping the root publishes the bus sampled itself
        .with_sampler(event_bus::trace::sample_parent_based(0.01))
        .build();
    assert_eq!(
        event_bus::trace::sampling(),
        event_bus::trace::Sampling::ParentBasedRatio(0.01)
    );
    drop(provider);
    event_bus::trace::set_sampling(event_bus::trace::Sampling::Sdk);
}
