//! Helpers shared by the PostgreSQL tests.

use event_bus_testkit::postgres::TestPostgres;
use sqlx::postgres::{PgPool, PgPoolOptions};

/// A throwaway PostgreSQL (or `DATABASE_URL`'s) and a pool of up to
/// `max_connections` to it. Keep the server: dropping it stops it.
pub async fn postgres(max_connections: u32) -> (TestPostgres, PgPool) {
    let pg = TestPostgres::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .connect(&pg.url())
        .await
        .expect("connect to the test database");
    (pg, pool)
}
