//! The exactly-once chain end to end: a business transaction writes a user
//! and enqueues `auth.events.user.created` in the outbox; the relay
//! publishes it once committed; a runner with `PgInbox` records one welcome
//! mail per user, exactly once, even when the same request is retried.
//!
//! `cargo run -p event-bus-postgres --example outbox_chain`
//!
//! PostgreSQL: `DATABASE_URL`, else a throwaway server started from the
//! installed binaries. The bus comes from configuration: in-memory by
//! default, `EVENT_BUS_TYPE=nats EVENT_BUS_NATS_URL=nats://127.0.0.1:4222`
//! for NATS.

use event_bus::runner::{boxed, Event, Handler, Outcome, Runner};
use event_bus::{BusConfig, Envelope};
use event_bus_postgres::{sqlx, Outbox, OutboxRelay, PgInbox};
use event_bus_testkit::postgres::TestPostgres;
use std::time::Duration;

#[derive(serde::Serialize, serde::Deserialize)]
struct UserCreated {
    user_id: i64,
    email: String,
}

/// The business transaction: the user row and its event commit together.
/// `request_id` makes a retried request enqueue the same event id.
async fn create_user(
    pool: &sqlx::PgPool,
    outbox: &Outbox,
    email: &str,
    request_id: &str,
    commit: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut tx = pool.begin().await?;
    let (user_id,): (i64,) = sqlx::query_as(
        "INSERT INTO users (email) VALUES ($1)
         ON CONFLICT (email) DO UPDATE SET email = EXCLUDED.email RETURNING id",
    )
    .bind(email)
    .fetch_one(&mut *tx)
    .await?;
    let event = serde_json::to_vec(&UserCreated {
        user_id,
        email: email.to_string(),
    })?;
    outbox
        .enqueue(
            &mut tx,
            Envelope::new("auth.events.user.created", event)
                .id(format!("user-created-{request_id}")),
        )
        .await?;
    if commit {
        outbox.commit(tx).await?;
    } else {
        tx.rollback().await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pg = TestPostgres::start().await?;
    let pool = sqlx::PgPool::connect(&pg.url()).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS users (id BIGSERIAL PRIMARY KEY, email TEXT UNIQUE NOT NULL);
         CREATE TABLE IF NOT EXISTS welcome_mails (user_id BIGINT NOT NULL, email TEXT NOT NULL)",
    )
    .execute(&pool)
    .await?;
    let config = BusConfig::load()?;
    let bus = event_bus::connect(&config).await?;
    println!("bus: {}", bus.backend_name());

    let outbox = Outbox::new(pool.clone());
    outbox.migrate().await?;
    let relay = OutboxRelay::builder(outbox.clone(), bus.clone())
        .build()?
        .spawn();

    let inbox = PgInbox::new(pool.clone());
    inbox.migrate().await?;
    let runner = Runner::builder(bus.clone(), "notifications")
        .inbox(inbox)
        .handler(Handler::new(
            "welcome-mail",
            "auth.events.user.created",
            boxed(
                |e: Event<'_, UserCreated>, tx: &mut sqlx::Transaction<'static, sqlx::Postgres>| {
                    Box::pin(async move {
                        sqlx::query("INSERT INTO welcome_mails (user_id, email) VALUES ($1, $2)")
                            .bind(e.data.user_id)
                            .bind(&e.data.email)
                            .execute(&mut **tx)
                            .await
                            .map(|_| Outcome::Ack)
                            .unwrap_or_else(Outcome::retry)
                    })
                },
            ),
        ))
        .build()
        .spawn()
        .await?;

    create_user(&pool, &outbox, "ada@example.com", "r1", true).await?;
    create_user(&pool, &outbox, "grace@example.com", "r2", true).await?;
    // The client retries request r2 (its answer was lost): same event id.
    create_user(&pool, &outbox, "grace@example.com", "r2", true).await?;
    // A transaction that rolls back publishes nothing.
    create_user(&pool, &outbox, "nobody@example.com", "r3", false).await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (mails,): (i64,) = sqlx::query_as("SELECT count(*) FROM welcome_mails")
            .fetch_one(&pool)
            .await?;
        let pending = outbox.status().await?.pending;
        if mails == 2 && pending == 0 && relay.report().published == 3 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "expected 2 welcome mails, have {mails}; {pending} events pending"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let relay_report = relay.shutdown().await;
    let runner_report = runner.shutdown().await;
    let (mails,): (i64,) = sqlx::query_as("SELECT count(*) FROM welcome_mails")
        .fetch_one(&pool)
        .await?;
    println!(
        "outbox: {} published ({} dropped by the bus as duplicates of the retried request); runner: {} handled, {} duplicates absorbed by the inbox; welcome mails: {mails}",
        relay_report.published,
        relay_report.duplicates,
        runner_report.processed,
        runner_report.duplicates
    );
    if mails != 2 {
        return Err(format!("expected exactly 2 welcome mails, found {mails}").into());
    }
    Ok(())
}
