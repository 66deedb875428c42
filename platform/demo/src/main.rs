//! The platform demo: two modules on one event bus, wired as the spec's
//! Module Integration section describes.
//!
//! * `auth` (`auth.rs`): `POST /users` writes a user to PostgreSQL and
//!   enqueues `auth.events.user.created` in the outbox, in one transaction;
//!   the outbox relay publishes it (validated against its contract,
//!   `contracts/events/`, with CloudEvents headers).
//! * `notifications` (`notifications.rs`): a runner with the PostgreSQL
//!   inbox records one welcome mail per user, exactly once; the mailer
//!   rejects `@bounce.invalid` addresses, whose events go to the dead
//!   letters.
//! * a live projection (`subscribe`) counts users, and the monitoring
//!   endpoints (`/livez`, `/readyz`, `/status`, `/metrics`, `/`) serve on
//!   the same port as the API.
//!
//! `cargo run -p event-bus-demo` runs a scripted scenario (users, one
//! poison, one retried request), prints what happened, and serves until
//! Ctrl-C; `--once` exits after the scenario (exit code 1 if it did not go
//! as expected). The bus comes from configuration (in-memory by default;
//! `EVENT_BUS_TYPE=nats`, with `EVENT_BUS_NATS_URL` or else a throwaway
//! nats-server; `EVENT_BUS_TYPE=kafka` in a build with feature `kafka`,
//! with `EVENT_BUS_KAFKA_BOOTSTRAP_SERVERS` or else a throwaway tansu
//! broker); PostgreSQL is `DATABASE_URL` or a throwaway server.

mod auth;
mod notifications;

use event_bus::dlq::DeadLetterQueue;
use event_bus::nats::StreamSpec;
use event_bus::status::{from_fn, BusCheck, CheckReport};
use event_bus::{BusConfig, BusType, EventBus};
use event_bus_http::{install_prometheus, Monitoring};
use event_bus_postgres::{sqlx, Outbox, OutboxRelay};
use event_bus_schema::{Registry, ValidatingBus};
use event_bus_testkit::nats_server::NatsServer;
use event_bus_testkit::postgres::TestPostgres;
use futures::StreamExt;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let once = std::env::args().any(|a| a == "--once");
    match run(once).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("platform-demo: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(once: bool) -> Result<bool, Error> {
    let metrics = install_prometheus()?;

    // The infrastructure: PostgreSQL, and nats-server when asked for NATS
    // without a URL.
    let pg = TestPostgres::start().await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&pg.url())
        .await?;
    let mut config = BusConfig::load()?;
    let mut _nats_server = None;
    if config.bus_type == BusType::Nats {
        if std::env::var_os("EVENT_BUS_NATS_URL").is_none()
            && std::env::var_os("EVENT_BUS_CONFIG").is_none()
        {
            let server = NatsServer::start().await?;
            config.nats.urls = vec![server.url()];
            _nats_server = Some(server);
        }
        config
            .nats
            .streams
            .push(StreamSpec::new("AUTH_EVENTS", ["auth.events.>"]));
        config.nats.streams.push(StreamSpec::new("DLQ", ["dlq.>"]));
    }
    #[cfg(feature = "kafka")]
    let mut _kafka_server = None;
    #[cfg(feature = "kafka")]
    if config.bus_type == BusType::Kafka
        && std::env::var_os("EVENT_BUS_KAFKA_BOOTSTRAP_SERVERS").is_none()
        && std::env::var_os("EVENT_BUS_CONFIG").is_none()
    {
        let server = event_bus_testkit::kafka_server::KafkaServer::start().await?;
        config.kafka.bootstrap_servers = vec![server.bootstrap()];
        _kafka_server = Some(server);
    }
    let bus = event_bus::connect(&config).await?;

    // Contracts: the registry shared through the bus (a KV bucket on NATS).
    let registry = match config.bus_type {
        BusType::Nats => {
            let client = event_bus::async_nats::connect(config.nats.urls.join(",")).await?;
            Registry::nats(client, "EVENT_CONTRACTS").await?
        }
        _ => Registry::memory(),
    };
    registry
        .load_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/contracts/events"))
        .await?;

    // auth: tables, outbox, relay (publishing through the contract check).
    auth::migrate(&pool).await?;
    notifications::migrate(&pool).await?;
    let outbox = Outbox::new(pool.clone());
    outbox.migrate().await?;
    let validated: Arc<dyn EventBus> =
        Arc::new(ValidatingBus::new(bus.clone(), registry.clone()).source("/auth"));
    let relay = OutboxRelay::builder(outbox.clone(), validated)
        .build()?
        .spawn();

    // notifications: the runner.
    let runner = notifications::spawn(bus.clone(), pool.clone(), registry.clone()).await?;

    // A live projection: users seen on the bus.
    let directory = Arc::new(AtomicU64::new(0));
    let mut sub = bus.subscribe("auth.events.>").await?;
    let seen = directory.clone();
    tokio::spawn(async move {
        while sub.next().await.is_some() {
            seen.fetch_add(1, Ordering::Relaxed);
        }
    });

    // One port: the API and the monitoring endpoints.
    let seen = directory.clone();
    let monitoring = Monitoring::new()
        .check(BusCheck::new(bus.clone()))
        .check(runner.status_check())
        .check(outbox.status_check(Duration::from_secs(30)))
        .check(from_fn("directory", move || {
            let n = seen.load(Ordering::Relaxed);
            CheckReport::new(
                true,
                format!("{n} user event(s) seen live"),
                json!({"users_seen": n}),
            )
        }))
        .metrics(metrics);
    // Marks the service not ready (/readyz 503) when it begins shutting down.
    let shutdown = monitoring.shutdown_handle();
    let app =
        monitoring
            .router()
            .merge(auth::router(pool.clone(), outbox.clone(), registry.clone()));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port())).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!(
        "platform demo on the {} bus; API and status page at http://{addr}/",
        bus.backend_name()
    );

    // The scenario, as clients would drive it.
    for email in [
        "ada@example.com",
        "grace@example.com",
        "linus@example.com",
        "nobody@bounce.invalid",
        // grace's client retries (its answer was lost): the same user back, no new event.
        "grace@example.com",
        // refused by the event's contract (minLength 3): 422, nothing committed.
        "",
    ] {
        let (code, body) = post_user(addr, email).await?;
        let shown = if email.is_empty() { "\"\"" } else { email };
        println!("  POST /users {shown:<24} -> {code} {body}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (r, o) = (runner.report(), relay.report());
        if r.processed >= 3 && r.dead_lettered >= 1 && o.published >= 4 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            println!("the scenario did not finish within 30 s: runner {r:?}, relay {o:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (r, o) = (runner.report(), relay.report());
    let (users,): (i64,) = sqlx::query_as("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await?;
    let (mails,): (i64,) = sqlx::query_as("SELECT count(*) FROM welcome_mails")
        .fetch_one(&pool)
        .await?;
    // This run's poison event: its id comes from the user row (auth.rs).
    let (bounce_uid,): (String,) =
        sqlx::query_as("SELECT uid::text FROM users WHERE email = 'nobody@bounce.invalid'")
            .fetch_one(&pool)
            .await?;
    let bounce_id = format!("auth.user.created:{bounce_uid}");
    let mut dlq =
        DeadLetterQueue::open(bus.clone(), "dlq.notifications", "demo-dlq-reader").await?;
    let all_dead = dlq.list(10_000, Duration::from_millis(500)).await?;
    let earlier = all_dead
        .iter()
        .filter(|d| d.original_id() != Some(bounce_id.as_str()))
        .count();
    let dead: Vec<_> = all_dead
        .into_iter()
        .filter(|d| d.original_id() == Some(bounce_id.as_str()))
        .collect();
    println!("what happened:");
    println!("  users in PostgreSQL            {users}");
    println!(
        "  outbox rows sent by the relay  {} (duplicates dropped by the bus: {})",
        o.published, o.duplicates
    );
    println!(
        "  handled by notifications       {} (duplicates absorbed by the inbox: {})",
        r.processed, r.duplicates
    );
    println!("  welcome mails recorded         {mails}");
    println!(
        "  dead letters                   {} (and {earlier} from earlier runs)",
        dead.len()
    );
    for d in &dead {
        println!(
            "    {} : {}",
            d.original_subject().unwrap_or("?"),
            d.reason().unwrap_or("?")
        );
    }
    println!(
        "  users seen by the projection   {}",
        directory.load(Ordering::Relaxed)
    );
    let ok = users == 4 && mails == 3 && dead.len() == 1 && r.dead_lettered == 1;
    for d in dead {
        d.keep_for(None).await?;
    }
    if !ok {
        println!("unexpected outcome: expected 4 users, 3 welcome mails and 1 dead letter");
    }
    if !once {
        println!("serving http://{addr}/ (status page), /status, /metrics, /users; Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
    }
    shutdown.begin("the demo is stopping");
    runner.shutdown().await;
    relay.shutdown().await;
    Ok(ok)
}

/// `DEMO_PORT`, else a free port.
fn port() -> u16 {
    std::env::var("DEMO_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// `POST /users` over a plain HTTP/1.1 connection: (status, body).
async fn post_user(addr: std::net::SocketAddr, email: &str) -> Result<(u16, String), Error> {
    let body = json!({ "email": email }).to_string();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!(
            "POST /users HTTP/1.1\r\nHost: demo\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}
