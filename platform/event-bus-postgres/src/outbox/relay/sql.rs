//! The relay's SQL, in one place: the lease, reading pending rows, removing
//! (or marking) published ones, counting refusals, and moving a row to the
//! failure table.

use crate::error::db_error;
use crate::outbox::Tables;
use event_bus::BusError;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::Row as _;
use std::time::Duration;

/// A pending row read for publishing (its payload and headers move into
/// the envelope).
pub(super) struct PendingRow {
    pub(super) seq: i64,
    pub(super) message_id: String,
    pub(super) subject: String,
    pub(super) order_key: String,
    pub(super) names: Vec<String>,
    pub(super) values: Vec<String>,
    pub(super) payload: Vec<u8>,
    pub(super) attempts: i32,
}

impl sqlx::FromRow<'_, PgRow> for PendingRow {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(PendingRow {
            seq: row.try_get("seq")?,
            message_id: row.try_get("message_id")?,
            subject: row.try_get("subject")?,
            order_key: row.try_get("order_key")?,
            names: row.try_get("header_names")?,
            values: row.try_get("header_values")?,
            payload: row.try_get("payload")?,
            attempts: row.try_get("attempts")?,
        })
    }
}

/// Takes or renews the lease for `holder` (if free, expired, or already
/// its own); true when `holder` holds it now.
pub(super) async fn take_lease(
    pool: &PgPool,
    tables: &Tables,
    holder: &str,
    lease: Duration,
) -> Result<bool, BusError> {
    let got: Option<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {lease_table} AS l (name, holder, expires_at)
         VALUES ('relay', $1, now() + make_interval(secs => $2))
         ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
         WHERE l.holder = EXCLUDED.holder OR l.expires_at < now()
         RETURNING holder",
        lease_table = tables.lease
    )))
    .bind(holder)
    .bind(lease.as_secs_f64())
    .fetch_optional(pool)
    .await
    .map_err(|e| db_error("outbox relay: taking the lease", e))?;
    Ok(got.is_some())
}

/// Gives the lease up, if `holder` holds it.
pub(super) async fn release_lease(
    pool: &PgPool,
    tables: &Tables,
    holder: &str,
) -> Result<(), BusError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM {} WHERE name = 'relay' AND holder = $1",
        tables.lease
    )))
    .bind(holder)
    .execute(pool)
    .await
    .map_err(|e| db_error("outbox relay: releasing the lease", e))?;
    Ok(())
}

/// Removes published rows kept longer than `keep`.
pub(super) async fn remove_old_published(
    pool: &PgPool,
    tables: &Tables,
    keep: Duration,
) -> Result<(), BusError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM {} WHERE published_at < now() - make_interval(secs => $1)",
        tables.rows
    )))
    .bind(keep.as_secs_f64())
    .execute(pool)
    .await
    .map_err(|e| db_error("outbox relay: removing old published rows", e))?;
    Ok(())
}

/// At most `limit` rows to publish: of finished transactions only (below
/// the oldest running transaction id), in (transaction id, enqueue) order,
/// skipping the keys in `held` and the rows in `skip` (being removed), and
/// every key with a row in the failure table.
///
/// The cost of a read is that of the rows it returns, whatever the backlog:
/// an index scan in `(xid, seq)` order, stopped by the limit. The planner
/// is not left to choose: with the table's statistics missing or stale (a
/// new table, a backlog grown since the last `ANALYZE`) it takes the pending
/// rows for a handful and plans a bitmap scan of all of them plus a sort,
/// which reads and sorts the whole backlog for every batch (20,000 pending
/// rows: ~30 ms per read instead of ~1 ms). So the read runs in a
/// transaction of its own with sorting disabled (`SET LOCAL`, sent with the
/// `BEGIN` in one round trip), where the index is the only way to the order;
/// and each bound of the visibility rule is the index scan's own condition,
/// the snapshot taken once (not a filter evaluated for every row). The held
/// keys and the rows being removed are looked up in hash tables.
pub(super) async fn read_pending(
    pool: &PgPool,
    tables: &Tables,
    held: &[&str],
    limit: usize,
    skip: &[i64],
) -> Result<Vec<PendingRow>, BusError> {
    let err = |e| db_error("outbox relay: reading pending rows", e);
    let mut tx = crate::transaction::begin(pool, Some(READ_TRANSACTION))
        .await
        .map_err(err)?;
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(read_sql(tables)))
        .bind(held)
        .bind(limit as i64)
        .bind(skip)
        .fetch_all(&mut *tx)
        .await
        .map_err(err)?;
    tx.commit().await.map_err(err)?;
    Ok(rows)
}

/// The transaction [`read_pending`] reads in: the planner cannot sort, so
/// it reads the pending rows through their index, in order.
const READ_TRANSACTION: &str = "BEGIN READ ONLY; SET LOCAL enable_sort = off";

/// [`read_pending`]'s query: `$1` the held keys, `$2` the limit, `$3` the
/// rows being removed.
fn read_sql(tables: &Tables) -> String {
    let pending = |bound: &str| {
        format!(
            "(SELECT seq, xid, message_id, subject, order_key, header_names, header_values, payload, attempts
              FROM {rows} AS r
              WHERE published_at IS NULL AND {bound}
                -- a key with a row in the failure table waits for it (until
                -- it is retried or discarded): never published ahead of it
                AND NOT EXISTS (SELECT 1 FROM {failed} AS f WHERE f.order_key = r.order_key)
                -- (hashed lists: `<> ALL` over a parameter compares each
                -- row with every element, 500 × 1000 times per read)
                AND order_key NOT IN (SELECT unnest($1::text[]))
                AND seq NOT IN (SELECT unnest($3::bigint[]))
              ORDER BY xid, seq
              LIMIT $2)",
            rows = tables.rows,
            failed = tables.failed,
        )
    };
    format!(
        "WITH snap AS MATERIALIZED (SELECT pg_current_snapshot() AS s)
         SELECT seq, message_id, subject, order_key, header_names, header_values, payload, attempts
         FROM ({finished}
               UNION ALL
               -- a committed row whose xid this cluster has not handed
               -- out yet was copied from another cluster (restore):
               {restored}) AS p
         ORDER BY xid, seq
         LIMIT $2",
        finished = pending("xid < (SELECT pg_snapshot_xmin(s) FROM snap)"),
        restored = pending("xid >= (SELECT pg_snapshot_xmax(s) FROM snap)"),
    )
}

/// Removes the published rows `seqs`, or, with `keep`, marks them
/// published with where the bus stored them (`streams`, `stream_seqs`, in
/// the order of `seqs`).
///
/// The rows are also bounded by the lowest and highest of `seqs` (a batch's
/// rows are mostly consecutive): the primary key's range scan is then the
/// plan whatever the statistics say (without them, a list of 500 ids alone
/// is planned as a scan of the whole table).
pub(super) async fn settle_published(
    pool: &PgPool,
    rows_table: &str,
    keep: bool,
    seqs: Vec<i64>,
    streams: Vec<Option<String>>,
    stream_seqs: Vec<i64>,
) -> Result<(), BusError> {
    let lowest = seqs.iter().copied().min().unwrap_or(0);
    let highest = seqs.iter().copied().max().unwrap_or(-1);
    let q = if keep {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {rows_table} AS t SET published_at = now(), stream = u.stream, stream_seq = u.stream_seq
             FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS u(seq, stream, stream_seq)
             WHERE t.seq = u.seq AND t.seq BETWEEN $4 AND $5"
        )))
        .bind(seqs)
        .bind(streams)
        .bind(stream_seqs)
        .bind(lowest)
        .bind(highest)
    } else {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {rows_table} WHERE seq = ANY($1) AND seq BETWEEN $2 AND $3"
        )))
        .bind(seqs)
        .bind(lowest)
        .bind(highest)
    };
    q.execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| db_error("outbox relay: removing published rows", e))
}

/// Counts a refused publish of row `seq`, keeping its error.
pub(super) async fn count_refusal(
    pool: &PgPool,
    tables: &Tables,
    seq: i64,
    error: &str,
) -> Result<(), BusError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {} SET attempts = attempts + 1, last_error = $2 WHERE seq = $1",
        tables.rows
    )))
    .bind(seq)
    .bind(error)
    .execute(pool)
    .await
    .map_err(|e| db_error("outbox relay: counting a refused publish", e))?;
    Ok(())
}

/// Moves row `seq` to the failure table with its last `error`, keeping its
/// place in line (its xid) for a retry.
pub(super) async fn move_to_failed(
    pool: &PgPool,
    tables: &Tables,
    seq: i64,
    error: &str,
) -> Result<(), BusError> {
    let Tables { rows, failed, .. } = tables;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH moved AS (DELETE FROM {rows} WHERE seq = $1
             RETURNING seq, xid, message_id, subject, order_key, header_names, header_values, payload, enqueued_at, attempts)
         INSERT INTO {failed} (seq, xid, message_id, subject, order_key, header_names, header_values, payload, enqueued_at, attempts, error)
         SELECT seq, xid, message_id, subject, order_key, header_names, header_values, payload, enqueued_at, attempts + 1, $2 FROM moved"
    )))
    .bind(seq)
    .bind(error)
    .execute(pool)
    .await
    .map_err(|e| db_error("outbox relay: moving a refused row to the failure table", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outbox;
    use event_bus_testkit::postgres::TestPostgres;

    /// Rows of the outbox table that `plan` (`EXPLAIN ANALYZE` text) read:
    /// the actual rows of every scan node on it.
    fn rows_scanned(plan: &[String], table: &str) -> u64 {
        plan.iter()
            .filter(|line| line.contains(&format!(" on {table} ")))
            .filter_map(|line| {
                let after = line.split("actual").nth(1)?;
                let n = after.split("rows=").nth(1)?;
                n.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }

    /// A read visits about the rows it returns, not the backlog, even on a
    /// table PostgreSQL has no statistics for (a new outbox with a backlog,
    /// never analyzed: left to itself the planner takes the pending rows
    /// for a few dozen and plans a scan of all of them plus a sort).
    #[tokio::test]
    async fn a_read_visits_its_batch_not_the_backlog() {
        let pg = TestPostgres::start()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let pool = PgPool::connect(&pg.url()).await.unwrap();
        let outbox = Outbox::new(pool.clone());
        outbox.migrate().await.unwrap();
        let tables = outbox.tables();
        // 5,000 pending rows in 50 transactions, as producers commit them;
        // no ANALYZE (autovacuum's first one comes a minute later at best).
        for t in 0..50 {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {} (message_id, subject, order_key, header_names, header_values, payload)
                 SELECT 'id-' || $1 || '-' || i, 'orders.placed', 'k' || (i % 7), '{{}}', '{{}}', '\\x7b7d'
                 FROM generate_series(1, 100) AS i",
                tables.rows
            )))
            .bind(t)
            .execute(&pool)
            .await
            .unwrap();
        }
        let limit = 100i64;
        // The batch before, still being removed: left out of the read.
        let removing: Vec<i64> = (1..=100).collect();
        let held = vec!["k3".to_string()];
        let mut tx = pool.begin_with(READ_TRANSACTION).await.unwrap();
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {}",
            read_sql(tables)
        )))
        .bind(&held)
        .bind(limit)
        .bind(&removing)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        let rows: Vec<PendingRow> = sqlx::query_as(sqlx::AssertSqlSafe(read_sql(tables)))
            .bind(&held)
            .bind(limit)
            .bind(&removing)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        // The batch itself: the first 100 rows past the removed ones, key k3 left out.
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let expected: Vec<i64> = (101..)
            .filter(|s| (s - 1) % 100 % 7 != 2)
            .take(100)
            .collect();
        assert_eq!(seqs, expected);
        // The removed rows, the held key's and the batch: a few hundred at
        // most, never the 5,000 of the backlog.
        let scanned = rows_scanned(&plan, &tables.rows);
        assert!(
            scanned <= 400,
            "the read scanned {scanned} rows for a batch of {limit}:\n{}",
            plan.join("\n")
        );
    }
}
