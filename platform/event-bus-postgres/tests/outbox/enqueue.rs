//! Rows in and out: a commit publishes, a rollback never does, a row that commits late is not skipped, bad input is refused in the caller's transaction, rows restored from another cluster are published.

use super::*;

/// Commit publishes (with the id and headers enqueued), rollback publishes
/// nothing; the returned id is the message id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_rows_are_published_rolled_back_rows_never() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let mut events = bus.subscribe("out.>").await.unwrap();
    let relay = relay(&outbox, &bus).build().unwrap().spawn();

    let mut tx = pool.begin().await.unwrap();
    outbox
        .enqueue(&mut tx, Envelope::new("out.rolled-back", b"no".to_vec()))
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    let id = outbox
        .enqueue(
            &mut tx,
            Envelope::new("out.kept", b"yes".to_vec()).headers({
                let mut h = event_bus::Headers::new();
                h.append("Trace-Id", "t-1").append("Trace-Id", "t-2");
                h
            }),
        )
        .await
        .unwrap();
    let given = outbox
        .enqueue(
            &mut tx,
            Envelope::new("out.kept", b"given".to_vec()).id("order-7"),
        )
        .await
        .unwrap();
    outbox.commit(tx).await.unwrap();
    assert_eq!(given.to_string(), "order-7");
    assert!(uuid::Uuid::parse_str(&id.to_string()).is_ok(), "{id}");

    let first = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("published")
        .unwrap();
    assert_eq!(first.subject.as_str(), "out.kept");
    assert_eq!(first.payload.as_ref(), b"yes");
    assert_eq!(first.id.to_string(), id.to_string());
    assert_eq!(
        first.headers.get_all("Trace-Id").collect::<Vec<_>>(),
        ["t-1", "t-2"]
    );
    let second = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("published")
        .unwrap();
    assert_eq!(second.id.to_string(), "order-7");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.next())
            .await
            .is_err(),
        "the rolled-back row was published"
    );
    let report = relay.shutdown().await;
    assert_eq!(report.published, 2, "{report:?}");
    let status = outbox.status().await.unwrap();
    assert_eq!((status.pending, status.failed), (0, 0), "{status:?}");
}

/// The race that loses events with serial offsets: T1 inserts first, T2
/// inserts and commits, the relay reads, T1 commits. Both are published, in
/// T1, T2 order; while T1 runs, the status names its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_commits_late_is_not_skipped() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let mut events = bus.subscribe("out.>").await.unwrap();
    let relay = relay(&outbox, &bus)
        .poll_interval(Duration::from_millis(10))
        .build()
        .unwrap()
        .spawn();

    let mut t1 = pool.begin().await.unwrap();
    let (t1_pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
        .fetch_one(&mut *t1)
        .await
        .unwrap();
    outbox
        .enqueue(&mut t1, Envelope::new("out.race", b"t1".to_vec()))
        .await
        .unwrap();
    let mut t2 = pool.begin().await.unwrap();
    outbox
        .enqueue(&mut t2, Envelope::new("out.race", b"t2".to_vec()))
        .await
        .unwrap();
    outbox.commit(t2).await.unwrap();

    // The relay reads (several times) while T1 is open: T2's row is
    // committed but held back behind T1.
    let reads = relay.report().reads;
    wait::until(
        Duration::from_secs(10),
        "the relay to read twice after T2 committed",
        || relay.report().reads >= reads + 2,
    )
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(100), events.next())
            .await
            .is_err(),
        "T2's row was published while T1's earlier row was not committed"
    );
    let status = outbox.status().await.unwrap();
    assert_eq!((status.pending, status.held_back), (1, 1), "{status:?}");
    let holder = status
        .held_by
        .expect("the status names the session holding delivery back");
    assert_eq!(holder.pid, t1_pid, "{holder:?}");
    assert_eq!(holder.state.as_deref(), Some("idle in transaction"));

    outbox.commit(t1).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("both published once T1 commits")
            .unwrap();
        got.push(String::from_utf8(m.payload.to_vec()).unwrap());
    }
    assert_eq!(got, ["t1", "t2"]);
    assert_eq!(relay.shutdown().await.published, 2);
}

/// Bad input fails in the caller's transaction, before anything is
/// written, with an error naming it; the transaction stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_commit() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await.max_payload(1000);
    let mut tx = pool.begin().await.unwrap();
    let cases: Vec<(Envelope, ErrorKind, &str)> = vec![
        (
            Envelope::new("out..bad", b"x".to_vec()),
            ErrorKind::InvalidSubject,
            "out..bad",
        ),
        (
            Envelope::new("out.*", b"x".to_vec()),
            ErrorKind::InvalidSubject,
            "out.*",
        ),
        (
            Envelope::new("$JS.API.STREAM.DELETE.OUT", b"x".to_vec()),
            ErrorKind::InvalidSubject,
            "$JS.API",
        ),
        (
            Envelope::new("out.big", vec![0u8; 1001]),
            ErrorKind::PayloadTooLarge,
            "1000 bytes",
        ),
        (
            Envelope::new("out.id", b"x".to_vec()).id("bad\r\nid"),
            ErrorKind::InvalidHeader,
            "id",
        ),
        (
            Envelope::new("out.h", b"x".to_vec()).header("Bad Name", "v"),
            ErrorKind::InvalidHeader,
            "Bad Name",
        ),
    ];
    for (envelope, kind, named) in cases {
        let subject = envelope.subject.clone();
        let e = outbox.enqueue(&mut tx, envelope).await.unwrap_err();
        assert_eq!(e.kind(), kind, "{subject}: {e}");
        assert!(
            e.to_string().contains(named),
            "{subject}: {e} does not name {named:?}"
        );
    }
    for (key, envelope) in [
        ("k\0", Envelope::new("out.nul", b"x".to_vec())),
        (
            "k",
            Envelope::new("out.nul", b"x".to_vec()).header("H", "a\0b"),
        ),
    ] {
        let e = outbox
            .enqueue_with_key(&mut tx, key, envelope)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("NUL"), "{e}");
    }
    let e = outbox
        .enqueue_with_key(&mut tx, "", Envelope::new("out.key", b"x".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("ordering key"), "{e}");
    // The transaction is still usable, and nothing was written.
    outbox
        .enqueue(&mut tx, Envelope::new("out.ok", b"x".to_vec()))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(outbox.status().await.unwrap().pending, 1);
    // Table names are checked.
    for bad in ["", "a;drop table x", "a.b.c", &"t".repeat(49)] {
        let e = Outbox::with_table(pool.clone(), bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{bad:?}: {e}");
    }
    // Relay settings are checked, the lease against the duplicate window;
    // the defaults pass.
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    OutboxRelay::builder(outbox.clone(), bus.clone())
        .build()
        .expect("the default settings are valid");
    let e = OutboxRelay::builder(outbox.clone(), bus.clone())
        .lease(Duration::from_secs(120))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("duplicate window"), "{e}");
    let e = OutboxRelay::builder(outbox.clone(), bus)
        .batch_size(0)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("batch_size"), "{e}");
}

/// Rows copied from another cluster (a dump restored, a logical-replication
/// upgrade) keep that cluster's transaction ids, above anything this
/// cluster has handed out: they are published, not held back forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_restored_from_another_cluster_are_published() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    sqlx::query(
        "INSERT INTO event_bus_outbox (xid, message_id, subject, order_key, header_names, header_values, payload)
         OVERRIDING SYSTEM VALUE
         VALUES ((pg_current_xact_id()::text::bigint + 1000000000)::text::xid8, 'restored-1', 'out.restored', 'out.restored', '{}', '{}', 'r')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let mut events = bus.subscribe("out.>").await.unwrap();
    let relay = relay(&outbox, &bus).build().unwrap().spawn();
    let m = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the restored row published")
        .unwrap();
    assert_eq!(m.id.to_string(), "restored-1");
    relay.shutdown().await;
}
