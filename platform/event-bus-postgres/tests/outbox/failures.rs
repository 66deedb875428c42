//! Rows the bus refuses or cannot take yet: the failure table and its retry, a missing stream, a refused row holding back its key only (also when read ahead, and when a contract refuses it), and the status check naming what holds delivery back.

use super::*;

/// A row the bus refuses for good (larger than the server's
/// `max_payload`) moves to the failure table after `max_attempts`, with the
/// error; other rows go on. `retry_failed` puts it back in line with its
/// id (here published through a bus that takes it, as after raising the
/// limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_row_goes_to_the_failure_table_and_can_be_retried() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    let server = NatsServer::start_with(
        event_bus_testkit::nats_server::NatsServerOptions::default().max_payload(4096),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let nats = server
        .bus(&[StreamSpec::new("OUT", ["out.>"])])
        .await
        .unwrap();
    let bus: Arc<dyn EventBus> = Arc::new(nats);
    let first = relay(&outbox, &bus)
        .max_attempts(3)
        .build()
        .unwrap()
        .spawn();
    let poison = enqueue_one(&outbox, &pool, "out.poison", &"p".repeat(8192)).await;
    for i in 0..20 {
        enqueue_one(&outbox, &pool, &format!("out.ok.{}", i % 3), "ok").await;
    }
    wait::until(
        Duration::from_secs(20),
        "the poison row in the failure table",
        || first.report().failed == 1,
    )
    .await;
    wait::until(Duration::from_secs(20), "the other rows published", || {
        first.report().published == 20
    })
    .await;
    let report = first.shutdown().await;
    assert_eq!(report.refusals, 3, "{report:?}");
    let failed: Vec<FailedEvent> = outbox.failed(10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].message_id, poison);
    assert_eq!(failed[0].subject, "out.poison");
    assert_eq!(failed[0].attempts, 3);
    assert_eq!(failed[0].payload.len(), 8192);
    assert!(
        failed[0].error.contains("max_payload"),
        "{}",
        failed[0].error
    );
    let status = outbox.status().await.unwrap();
    assert_eq!((status.pending, status.failed), (0, 1), "{status:?}");

    // Retry: back in line, same id, published by a relay whose bus takes it.
    let roomy: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let mut events = roomy.subscribe("out.poison").await.unwrap();
    assert_eq!(outbox.retry_failed(&[failed[0].seq]).await.unwrap(), 1);
    assert_eq!(outbox.status().await.unwrap().failed, 0);
    let second = relay(&outbox, &roomy).build().unwrap().spawn();
    let m = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the retried row published")
        .unwrap();
    assert_eq!(m.id.to_string(), poison);
    second.shutdown().await;
    // Discarding works on what is there.
    assert_eq!(outbox.discard_failed(&[failed[0].seq]).await.unwrap(), 0);
}

/// No stream for a subject (a bus that does not create streams) is not a
/// refusal: the row waits, with backoff, and is published once a stream
/// exists (NATS also reports a stream without a leader this way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_delays_rows_without_failing_them() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let nats = event_bus::NatsBus::builder(server.bus(&[]).await.unwrap().client().clone())
        .auto_create_streams(false)
        .build()
        .unwrap();
    let bus: Arc<dyn EventBus> = Arc::new(nats.clone());
    let relay = relay(&outbox, &bus)
        .max_attempts(2)
        .build()
        .unwrap()
        .spawn();
    let id = enqueue_one(&outbox, &pool, "later.x", "x").await;
    wait::until(Duration::from_secs(20), "a few failed attempts", || {
        relay.report().bus_errors >= 3
    })
    .await;
    let report = relay.report();
    assert_eq!((report.failed, report.refusals), (0, 0), "{report:?}");
    nats.ensure_streams(&[StreamSpec::new("LATER", ["later.>"])])
        .await
        .unwrap();
    wait::until(
        Duration::from_secs(20),
        "published once the stream exists",
        || relay.report().published == 1,
    )
    .await;
    relay.shutdown().await;
    let got = stream_contents(&bus, "later.>", 1).await;
    assert_eq!(got[0].id.to_string(), id);
}

/// A refused row holds back its key only, never other keys; nothing of its
/// key is sent past it (refused before it was sent, here too large, it
/// holds back its key's later rows in the batch, pipelined as in strict
/// order, though it is not its key's first row), and once it moves to the
/// failure table its key's later rows wait for it there (here: until it is
/// discarded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_row_holds_back_its_key_only() {
    for strict in [false, true] {
        let (_pg, pool) = pg().await;
        let outbox = outbox(&pool).await;
        let mut config = event_bus::MemoryConfig::default();
        config.max_payload = 100;
        let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::with_config(config));
        let mut events = bus.subscribe("out.>").await.unwrap();
        // Key k: a, TOO BIG, b, c (one transaction); key other: x, y.
        let mut tx = pool.begin().await.unwrap();
        for (subject, body) in [
            ("out.k", "a".to_string()),
            ("out.k", "B".repeat(200)),
            ("out.k", "b".to_string()),
            ("out.other", "x".to_string()),
            ("out.k", "c".to_string()),
            ("out.other", "y".to_string()),
        ] {
            outbox
                .enqueue(&mut tx, Envelope::new(subject, body.into_bytes()))
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        let relay = relay(&outbox, &bus)
            .strict_order(strict)
            .max_attempts(3)
            .backoff(Duration::from_millis(100), Duration::from_millis(200))
            .build()
            .unwrap()
            .spawn();
        let mut got = Vec::new();
        let mut failed_when = HashMap::new();
        // a, x, y before the refused row fails (b, c wait).
        for _ in 0..3 {
            let m = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("published")
                .unwrap();
            let body = String::from_utf8(m.payload.to_vec()).unwrap();
            failed_when.insert(body.clone(), relay.report().failed);
            got.push(body);
        }
        wait::until(
            Duration::from_secs(10),
            "the refused row moved aside",
            || relay.report().failed == 1,
        )
        .await;
        let failed = outbox.failed(10).await.unwrap();
        assert_eq!(failed[0].payload.len(), 200);
        // b and c wait for the failed row, pending, until it is
        // discarded (or retried).
        assert!(
            tokio::time::timeout(Duration::from_millis(500), events.next())
                .await
                .is_err(),
            "strict {strict}: a row of key k was published ahead of its failed row"
        );
        let status = outbox.status().await.unwrap();
        assert_eq!((status.pending, status.blocked), (2, 2), "{status:?}");
        assert_eq!(outbox.discard_failed(&[failed[0].seq]).await.unwrap(), 1);
        for _ in 0..2 {
            let m = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("published once the failed row is discarded")
                .unwrap();
            got.push(String::from_utf8(m.payload.to_vec()).unwrap());
        }
        let report = relay.shutdown().await;
        assert_eq!(report.refusals, 3, "strict {strict}: {report:?}");
        let k: Vec<&str> = got
            .iter()
            .map(String::as_str)
            .filter(|b| ["a", "b", "c"].contains(b))
            .collect();
        assert_eq!(k, ["a", "b", "c"], "strict {strict}: {got:?}");
        assert_eq!(report.out_of_order, 0, "strict {strict}: {report:?}");
        assert_eq!(
            failed_when["y"], 0,
            "strict {strict}: key other waited for key k"
        );
    }
}

/// The relay reads the next batch while a full one publishes: rows of a
/// key whose row failed in that batch, read ahead before it failed, are not
/// published ahead of it (batches of 2: `a, TOO BIG` then `b, x` read
/// ahead; `b` waits for the failed row, `x` goes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_read_ahead_wait_for_a_row_of_their_key_that_failed() {
    for strict in [false, true] {
        let (_pg, pool) = pg().await;
        let outbox = outbox(&pool).await;
        let mut config = event_bus::MemoryConfig::default();
        config.max_payload = 100;
        let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::with_config(config));
        let mut events = bus.subscribe("out.>").await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        for (subject, body) in [
            ("out.k", "a".to_string()),
            ("out.k", "B".repeat(200)),
            ("out.k", "b".to_string()),
            ("out.other", "x".to_string()),
            ("out.k", "c".to_string()),
            ("out.other", "y".to_string()),
        ] {
            outbox
                .enqueue(&mut tx, Envelope::new(subject, body.into_bytes()))
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        let relay = relay(&outbox, &bus)
            .strict_order(strict)
            .batch_size(2)
            .max_attempts(1)
            .build()
            .unwrap()
            .spawn();
        let mut got = Vec::new();
        for _ in 0..3 {
            let m = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("published")
                .unwrap();
            got.push(String::from_utf8(m.payload.to_vec()).unwrap());
        }
        assert_eq!(got, ["a", "x", "y"], "strict {strict}");
        wait::until(
            Duration::from_secs(10),
            "the refused row moved aside",
            || relay.report().failed == 1,
        )
        .await;
        assert!(
            tokio::time::timeout(Duration::from_millis(500), events.next())
                .await
                .is_err(),
            "strict {strict}: a row of key k was published ahead of its failed row"
        );
        let failed = outbox.failed(10).await.unwrap();
        assert_eq!(outbox.discard_failed(&[failed[0].seq]).await.unwrap(), 1);
        for _ in 0..2 {
            let m = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("published once the failed row is discarded")
                .unwrap();
            got.push(String::from_utf8(m.payload.to_vec()).unwrap());
        }
        assert_eq!(got, ["a", "x", "y", "b", "c"], "strict {strict}");
        let report = relay.shutdown().await;
        assert_eq!(report.out_of_order, 0, "strict {strict}: {report:?}");
    }
}

/// The outbox as a status check: ready while nothing waits too long; not
/// ready once a row is older than the limit, naming the session that holds
/// it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_check_names_what_holds_delivery_back() {
    use event_bus::status::StatusCheck;
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    let check = outbox.status_check(Duration::from_millis(200));
    assert_eq!(check.name(), "outbox");
    assert!(check.check().await.ready);
    // A transaction that wrote and stays open holds back a committed row.
    let mut open = pool.begin().await.unwrap();
    outbox
        .enqueue(&mut open, Envelope::new("out.open", b"1".to_vec()))
        .await
        .unwrap();
    enqueue_one(&outbox, &pool, "out.later", "2").await;
    wait::until_async(Duration::from_secs(10), "the row to be too old", || async {
        !check.check().await.ready
    })
    .await;
    let report = check.check().await;
    assert!(
        report.summary.contains("held back by session"),
        "{}",
        report.summary
    );
    assert_eq!(report.details["pending"], 1, "{}", report.details);
    assert!(report.details["held_by"]["pid"].as_i64().unwrap() > 0);
    open.rollback().await.unwrap();
}

/// A bus that checks events against a schema before sending them, as
/// `ValidatingBus` does: a payload whose `email` is not a non-empty string
/// is refused with `Rejected` (nothing sent); the rest goes to an
/// in-memory bus. `fixed` stands for a corrected schema: nothing refused.
struct SchemaCheckBus {
    inner: InMemoryBus,
    fixed: std::sync::atomic::AtomicBool,
}

impl SchemaCheckBus {
    fn check(&self, e: &Envelope) -> Result<(), event_bus::BusError> {
        if self.fixed.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let v: serde_json::Value = serde_json::from_slice(&e.payload).unwrap_or_default();
        match v["email"].as_str() {
            Some(s) if !s.is_empty() => Ok(()),
            _ => Err(event_bus::BusError::new(
                ErrorKind::Rejected,
                format!(
                    "schema violation: {} does not match its schema: /email must be a non-empty string",
                    e.subject
                ),
            )),
        }
    }
}

#[async_trait::async_trait]
impl EventBus for SchemaCheckBus {
    fn publish<'a>(&'a self, subject: &'a str, payload: Vec<u8>) -> event_bus::PublishFuture<'a> {
        match self.check(&Envelope::new(subject, payload.clone())) {
            Err(e) => event_bus::PublishFuture::ready(Err(e)),
            Ok(()) => self.inner.publish(subject, payload),
        }
    }

    async fn subscribe(
        &self,
        pattern: &str,
    ) -> Result<event_bus::Subscription, event_bus::BusError> {
        self.inner.subscribe(pattern).await
    }

    async fn publish_envelope(
        &self,
        envelope: Envelope,
    ) -> Result<event_bus::PublishAck, event_bus::BusError> {
        self.check(&envelope)?;
        self.inner.publish_envelope(envelope).await
    }

    async fn publish_batch(
        &self,
        envelopes: Vec<Envelope>,
    ) -> Vec<Result<event_bus::PublishAck, event_bus::BusError>> {
        // As ValidatingBus: the valid ones go out in one batch, in order.
        let checked: Vec<Result<Envelope, event_bus::BusError>> = envelopes
            .into_iter()
            .map(|e| self.check(&e).map(|()| e))
            .collect();
        let valid = checked
            .iter()
            .filter_map(|c| c.as_ref().ok().cloned())
            .collect();
        let mut sent = self.inner.publish_batch(valid).await.into_iter();
        checked
            .into_iter()
            .map(|c| c.and_then(|_| sent.next().expect("one result per envelope")))
            .collect()
    }
}

async fn enqueue_user(
    outbox: &Outbox,
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    key: &str,
    email: &str,
) -> String {
    outbox
        .enqueue_with_key(
            tx,
            key,
            Envelope::new(
                "out.user.created",
                serde_json::to_vec(&serde_json::json!({ "email": email })).unwrap(),
            ),
        )
        .await
        .unwrap()
        .to_string()
}

/// The ids of the next `n` messages (each within 10 s).
async fn next_ids(events: &mut event_bus::Subscription, n: usize, what: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let m = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: {ids:?} so far"))
            .unwrap();
        ids.push(m.id.to_string());
    }
    ids
}

/// Outbox × contracts: a row the bus refuses for its schema
/// (`Rejected`, known before sending) is counted, moved to the
/// failure table with the error, and does not keep `/readyz` failing; the
/// later rows of its key are never published ahead of it, in the default
/// pipelined mode as in strict order, whether it is its key's first row in
/// the batch (key ada) or a later one (key cy: its first row goes out, its
/// third waits): they wait, pending, until it is discarded or retried (back
/// at its place, ahead of them); other keys go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_violation_fails_its_row_and_its_key_waits_for_it() {
    use event_bus::status::StatusCheck;
    for strict in [false, true] {
        let (_pg, pool) = pg().await;
        let outbox = outbox(&pool).await;
        let schema = Arc::new(SchemaCheckBus {
            inner: InMemoryBus::new(),
            fixed: false.into(),
        });
        let bus: Arc<dyn EventBus> = schema.clone();
        let mut events = bus.subscribe("out.>").await.unwrap();
        // One batch. Key ada: INVALID, then two valid rows; key cy: valid,
        // INVALID, valid; key bob: one valid row.
        let mut tx = pool.begin().await.unwrap();
        let bad = enqueue_user(&outbox, &mut tx, "ada", "").await;
        let ada1 = enqueue_user(&outbox, &mut tx, "ada", "ada1@example.com").await;
        let cy1 = enqueue_user(&outbox, &mut tx, "cy", "cy1@example.com").await;
        let bob = enqueue_user(&outbox, &mut tx, "bob", "bob@example.com").await;
        let cy_bad = enqueue_user(&outbox, &mut tx, "cy", "").await;
        let ada2 = enqueue_user(&outbox, &mut tx, "ada", "ada2@example.com").await;
        let cy2 = enqueue_user(&outbox, &mut tx, "cy", "cy2@example.com").await;
        outbox.commit(tx).await.unwrap();
        let relay = relay(&outbox, &bus)
            .strict_order(strict)
            .max_attempts(3)
            .backoff(Duration::from_millis(20), Duration::from_millis(100))
            .build()
            .unwrap()
            .spawn();
        let mut first = next_ids(&mut events, 2, "keys bob and cy (first row) published").await;
        first.sort();
        let mut want = vec![bob.clone(), cy1.clone()];
        want.sort();
        assert_eq!(first, want, "strict {strict}");
        wait::until(
            Duration::from_secs(20),
            "the refused rows in the failure table",
            || relay.report().failed == 2,
        )
        .await;
        let report = relay.report();
        assert_eq!(
            (report.refusals, report.bus_errors, report.out_of_order),
            (6, 0, 0),
            "strict {strict}: {report:?}"
        );
        let mut failed = outbox.failed(10).await.unwrap();
        failed.sort_by_key(|f| f.seq);
        assert_eq!(failed.len(), 2, "strict {strict}: {failed:?}");
        assert_eq!(
            [&failed[0].message_id, &failed[1].message_id],
            [&bad, &cy_bad]
        );
        assert!(
            failed[0].error.contains("rejected: schema violation")
                && failed[0].error.contains("/email"),
            "{}",
            failed[0].error
        );
        // The later rows of keys ada and cy are held, not published ahead
        // of their refused rows.
        assert!(
            tokio::time::timeout(Duration::from_millis(500), events.next())
                .await
                .is_err(),
            "strict {strict}: a row of key ada or cy was published ahead of its refused row"
        );
        let status = outbox.status().await.unwrap();
        assert_eq!(
            (status.pending, status.blocked, status.failed),
            (3, 3, 2),
            "strict {strict}: {status:?}"
        );
        // Readiness: failed and blocked rows are reported, not unready.
        // (A limit of zero: any row counted would make it unready.)
        let check = outbox.status_check(Duration::ZERO);
        let ready = check.check().await;
        assert!(ready.ready, "{}", ready.summary);
        assert!(
            ready.summary.contains("2 failed") && ready.summary.contains("3 pending rows"),
            "{}",
            ready.summary
        );
        assert_eq!(ready.details["blocked"], 3, "{}", ready.details);

        let seqs = [failed[0].seq, failed[1].seq];
        let (ada_after, cy_after) = if strict {
            // Discarded: the keys go on.
            assert_eq!(outbox.discard_failed(&seqs).await.unwrap(), 2);
            (vec![ada1.clone(), ada2.clone()], vec![cy2.clone()])
        } else {
            // The schema corrected, the rows retried: back at their place,
            // ahead of the rows that waited for them.
            schema
                .fixed
                .store(true, std::sync::atomic::Ordering::SeqCst);
            assert_eq!(outbox.retry_failed(&seqs).await.unwrap(), 2);
            (
                vec![bad.clone(), ada1.clone(), ada2.clone()],
                vec![cy_bad.clone(), cy2.clone()],
            )
        };
        let ids = next_ids(
            &mut events,
            ada_after.len() + cy_after.len(),
            "keys ada and cy go on once their failed rows are discarded or retried",
        )
        .await;
        let of = |key: &[String]| -> Vec<String> {
            ids.iter().filter(|i| key.contains(i)).cloned().collect()
        };
        assert_eq!(of(&ada_after), ada_after, "strict {strict}: {ids:?}");
        assert_eq!(of(&cy_after), cy_after, "strict {strict}: {ids:?}");
        let report = relay.shutdown().await;
        assert_eq!(report.out_of_order, 0, "{report:?}");
        assert_eq!(outbox.status().await.unwrap().pending, 0);
    }
}
