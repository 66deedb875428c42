//! Rows kept after publishing (`keep_published`): their stream position, and their removal after the retention.

use super::*;

/// `keep_published`: rows stay, marked with the time and the stream
/// position, and no longer count as pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_rows_record_their_stream_position() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    let (_server, bus) = nats().await;
    let relay = relay(&outbox, &bus)
        .keep_published(Duration::from_secs(3600))
        .build()
        .unwrap()
        .spawn();
    let id = enqueue_one(&outbox, &pool, "out.kept", "k").await;
    wait::until_async(Duration::from_secs(10), "published and marked", || async {
        outbox.status().await.unwrap().pending == 0
    })
    .await;
    let (stream, seq): (Option<String>, Option<i64>) = sqlx::query_as(
        "SELECT stream, stream_seq FROM event_bus_outbox WHERE message_id = $1 AND published_at IS NOT NULL",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((stream.as_deref(), seq), (Some("OUT"), Some(1)));
    assert_eq!(outbox.status().await.unwrap().pending, 0);
    relay.shutdown().await;
}

/// `keep_published` retention: a published row is kept while younger than
/// the retention and removed once older.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_rows_are_removed_after_the_retention() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let relay = relay(&outbox, &bus)
        .keep_published(Duration::from_secs(2))
        .build()
        .unwrap()
        .spawn();
    let old = enqueue_one(&outbox, &pool, "out.old", "o").await;
    let young = enqueue_one(&outbox, &pool, "out.young", "y").await;
    wait::until_async(Duration::from_secs(10), "both published", || async {
        outbox.status().await.unwrap().pending == 0
    })
    .await;
    // Published an hour ago, and (its clock moved so that it stays young
    // however slow this machine is) just now.
    for (id, at) in [
        (&old, "now() - interval '1 hour'"),
        (&young, "now() + interval '1 hour'"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE event_bus_outbox SET published_at = {at} WHERE message_id = $1"
        )))
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    }
    let kept = |id: String| {
        let pool = pool.clone();
        async move {
            let (n,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM event_bus_outbox WHERE message_id = $1")
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            n == 1
        }
    };
    wait::until_async(Duration::from_secs(30), "the old row removed", || {
        let k = kept(old.clone());
        async move { !k.await }
    })
    .await;
    assert!(
        kept(young.clone()).await,
        "a row younger than the retention was removed"
    );
    relay.shutdown().await;
}
