//! PostgreSQL for `event-bus`: [`PgInbox`], the idempotency inbox of the
//! event runner whose claim row and the handler's own writes commit in one
//! transaction, so that an event redelivered after a crash between commit
//! and ack has no second effect; and the transactional [`Outbox`], whose
//! rows commit with the business data and are published by an
//! [`OutboxRelay`] once committed.
//!
//! Depend on `event-bus` and `event-bus-postgres`, and use the sqlx this
//! crate re-exports (`event_bus_postgres::sqlx`) for the pool and the
//! handler's transaction: a `PgPool` of another sqlx version is another type.
//!
//! ```no_run
//! use event_bus::runner::{boxed, Event, Handler, Outcome, Runner};
//! use event_bus_postgres::{sqlx, PgInbox};
//! # async fn example(bus: std::sync::Arc<dyn event_bus::EventBus>, pool: sqlx::PgPool) -> Result<(), event_bus::BusError> {
//! #[derive(serde::Deserialize)]
//! struct OrderPlaced { order_id: String, cents: i64 }
//!
//! let inbox = PgInbox::new(pool);
//! inbox.migrate().await?;
//! let runner = Runner::builder(bus, "billing")
//!     .inbox(inbox)
//!     .handler(Handler::new("record-revenue", "orders.placed",
//!         boxed(|e: Event<'_, OrderPlaced>, tx: &mut sqlx::Transaction<'static, sqlx::Postgres>| Box::pin(async move {
//!             sqlx::query("INSERT INTO revenue (order_id, cents) VALUES ($1, $2)")
//!                 .bind(&e.data.order_id)
//!                 .bind(e.data.cents)
//!                 .execute(&mut **tx)
//!                 .await
//!                 .map(|_| ())
//!                 .into()
//!         }))))
//!     .build();
//! # Ok(()) }
//! ```
//!
//! # Modules
//!
//! * [`inbox`]: [`PgInbox`], the runner's idempotency inbox;
//! * [`outbox`]: [`Outbox`] and [`OutboxRelay`], the transactional outbox:
//!   events enqueued in the business transaction, published after it
//!   commits, none lost and none published for a rolled-back transaction.

#![warn(missing_docs)]

/// The sqlx this crate is built with: use it (`event_bus_postgres::sqlx`)
/// for the pool and the handler's `Transaction`, so that the versions match
/// (another sqlx version's `PgPool` is a different type).
pub use sqlx;

mod error;
pub mod inbox;
pub mod outbox;
mod transaction;

pub use inbox::PgInbox;
pub use outbox::{Outbox, OutboxCheck, OutboxRelay, OutboxStatus, RelayHandle, RelayReport};
