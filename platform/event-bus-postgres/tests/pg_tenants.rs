//! Tenants that share one PostgreSQL inbox table never take each other's
//! events for duplicates: the runner scopes its inbox keys by the bus's
//! tenant.

use event_bus::runner::{Event, Handler, Outcome, Runner};
use event_bus::{Envelope, EventBus};
use event_bus_postgres::PgInbox;
use event_bus_testkit::nats_server::NatsServer;
use event_bus_testkit::wait;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
mod common;

#[derive(serde::Deserialize)]
struct Order {
    tenant: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_sharing_an_inbox_table_never_collide() {
    let (_pg, pool) = common::postgres(4).await;
    let inbox = PgInbox::new(pool.clone());
    inbox.migrate().await.unwrap();
    let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let root = server.bus(&[]).await.unwrap();

    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut runners = Vec::new();
    for tenant in ["acme", "globex"] {
        let bus: Arc<dyn EventBus> = Arc::new(root.for_tenant(tenant).unwrap());
        let seen = handled.clone();
        // Same runner and handler names, same given id: only the tenant differs.
        let runner = Runner::builder(bus.clone(), "billing")
            .inbox(PgInbox::new(pool.clone()))
            .handler(Handler::new(
                "orders",
                "orders.>",
                move |e: Event<'_, Order>, _tx: &mut sqlx::Transaction<'static, sqlx::Postgres>| {
                    seen.lock().push(e.data.tenant.clone());
                    Outcome::Ack
                },
            ))
            .build()
            .spawn()
            .await
            .unwrap();
        bus.publish_envelope(
            Envelope::new("orders.created", format!(r#"{{"tenant":"{tenant}"}}"#)).id("order-1"),
        )
        .await
        .unwrap();
        runners.push(runner);
    }
    wait::until(
        Duration::from_secs(20),
        "both tenants' order-1 handled",
        || handled.lock().len() == 2,
    )
    .await;
    let mut seen = handled.lock().clone();
    seen.sort();
    assert_eq!(seen, ["acme", "globex"]);
    for r in runners {
        let report = r.shutdown().await;
        assert_eq!(report.duplicates, 0, "{report:?}");
    }
}
