//! Beginning a transaction in a way that survives the caller being
//! cancelled.
//!
//! sqlx 0.9's `begin` is not cancel-safe: dropped after it has sent
//! `BEGIN` and before the answer, it counts no transaction, so the
//! connection goes back to the pool *inside* the transaction the server
//! opened. The pool's next user then runs in it: an `INSERT` fails with
//! "cannot execute INSERT in a read-only transaction" after a cancelled
//! `BEGIN READ ONLY`, and an autocommit statement is not committed. A relay
//! or a runner aborted or shut down at that moment would do this to the
//! pool the application shares with them.

use sqlx::postgres::{PgPool, Postgres};
use sqlx::Transaction;

/// Begins a transaction on a connection of `pool` with `statement` (plain
/// `BEGIN` if `None`). The begin runs in a task of its own: if the caller
/// is dropped meanwhile, the task completes it and drops the transaction,
/// which rolls back before the connection is used again.
pub(crate) async fn begin(
    pool: &PgPool,
    statement: Option<&'static str>,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let pool = pool.clone();
    tokio::spawn(async move {
        match statement {
            Some(s) => pool.begin_with(s).await,
            None => pool.begin().await,
        }
    })
    .await
    .map_err(|e| {
        sqlx::Error::Io(std::io::Error::other(format!(
            "the task beginning a transaction failed: {e}"
        )))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_bus_testkit::postgres::TestPostgres;
    use sqlx::postgres::PgPoolOptions;
    use std::future::Future;

    /// A `BEGIN READ ONLY` dropped while in flight leaves nothing behind:
    /// the pool's one connection then takes an `INSERT`. With sqlx's own
    /// `begin_with` in `begin`, the `INSERT` fails ("read-only
    /// transaction").
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_begin_dropped_in_flight_leaves_no_transaction_behind() {
        let pg = TestPostgres::start()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // One connection, handed out without a test query first: the
        // first poll of a begin sends its `BEGIN`.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect(&pg.url())
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (x int)")
            .execute(&pool)
            .await
            .unwrap();
        for round in 0..20 {
            {
                let fut = begin(&pool, Some("BEGIN READ ONLY"));
                let mut fut = std::pin::pin!(fut);
                let waker = futures::task::noop_waker();
                let mut cx = std::task::Context::from_waker(&waker);
                // Polled until its `BEGIN` is on the wire, then dropped.
                for _ in 0..round {
                    if fut.as_mut().poll(&mut cx).is_ready() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
            let mut tx = begin(&pool, None).await.unwrap();
            sqlx::query("INSERT INTO t VALUES ($1)")
                .bind(round)
                .execute(&mut *tx)
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            tx.commit().await.unwrap();
        }
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 20);
    }
}
