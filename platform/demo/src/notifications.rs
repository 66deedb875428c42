//! The `notifications` module: a runner whose handler records one welcome
//! mail per user, exactly once (the `PgInbox` claim commits with the mail
//! row). The mailer rejects addresses at `bounce.invalid`: those events go
//! to the dead letters.

use crate::auth::{UserCreated, USER_CREATED};
use event_bus::runner::{boxed, Event, Handler, Outcome, Runner, RunnerHandle};
use event_bus::{BusError, EventBus};
use event_bus_postgres::{sqlx, PgInbox};
use event_bus_schema::{Registry, SchemaCheck};
use std::sync::Arc;

/// The runner's name (its dead letters go to `dlq.notifications`).
pub const RUNNER: &str = "notifications";

/// Creates the module's table.
pub async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS welcome_mails (user_id BIGINT NOT NULL, email TEXT NOT NULL)",
    )
    .execute(pool)
    .await
    .map(|_| ())
}

/// Starts the runner: events checked against their contract first.
pub async fn spawn(
    bus: Arc<dyn EventBus>,
    pool: sqlx::PgPool,
    registry: Registry,
) -> Result<RunnerHandle, BusError> {
    let inbox = PgInbox::new(pool);
    inbox.migrate().await?;
    Runner::builder(bus, RUNNER)
        .inbox(inbox)
        .check(SchemaCheck::new(registry))
        .handler(Handler::new(
            "welcome-mail",
            USER_CREATED,
            boxed(
                |e: Event<'_, UserCreated>, tx: &mut sqlx::Transaction<'static, sqlx::Postgres>| {
                    Box::pin(async move {
                        if e.data.email.ends_with("@bounce.invalid") {
                            return Outcome::DeadLetter(format!(
                                "the mailer rejected {} (domain does not exist)",
                                e.data.email
                            ));
                        }
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
        .await
}
