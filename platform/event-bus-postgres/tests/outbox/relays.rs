//! The relay as a process: backing off while the bus is down, a restart, two relays handing over, wake-ups, a dropped relay releasing its lease.

use super::*;

/// The bus down for a while: rows wait, the relay backs off (a handful of
/// attempts, not a busy loop), and the backlog drains once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_drains_when_the_bus_comes_back() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    let (mut server, _) = nats().await;
    // Publishes fail fast (100 ms) while the server is down, so that only
    // the relay's backoff spaces its attempts.
    let bus: Arc<dyn EventBus> = Arc::new(
        event_bus::NatsBus::builder(server.bus(&[]).await.unwrap().client().clone())
            .publish_timeout(Duration::from_millis(100))
            .build()
            .unwrap(),
    );
    let relay = relay(&outbox, &bus)
        .publish_timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .spawn();
    enqueue_one(&outbox, &pool, "out.before", "0").await;
    wait::until(Duration::from_secs(10), "the first row published", || {
        relay.report().published == 1
    })
    .await;
    server.stop().await.unwrap();
    for i in 0..200 {
        enqueue_one(&outbox, &pool, &format!("out.k{}", i % 5), &i.to_string()).await;
    }
    wait::until(
        Duration::from_secs(20),
        "the relay to meet the outage",
        || relay.report().bus_errors > 0,
    )
    .await;
    // An observation window (not a wait for a condition): how often does
    // the relay try while the bus stays down? Without backoff, a failed
    // attempt every 100-300 ms: 10 to 30 in three seconds.
    let before = relay.report().reads;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = relay.report();
    let attempts = during.reads - before;
    assert!(
        attempts <= 9,
        "{attempts} attempts in 3 s of outage: no backoff ({during:?})"
    );
    assert_eq!(during.published, 1, "{during:?}");
    assert_eq!(outbox.status().await.unwrap().pending, 200);
    server.restart().await.unwrap();
    wait::until(Duration::from_secs(60), "the backlog published", || {
        relay.report().published == 201
    })
    .await;
    let report = relay.shutdown().await;
    assert_eq!(report.failed, 0, "{report:?}");
    let got = stream_contents(&bus, "out.>", 201).await;
    assert_in_order_per_subject(&got[1..]);
}

/// A relay restarted (gracefully) resumes without republishing what it
/// removed. (A crashed relay's republished rows, dropped by JetStream as
/// duplicates, are covered by the chaos test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_relay_does_not_republish() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    let (_server, bus) = nats().await;
    let first = relay(&outbox, &bus).build().unwrap().spawn();
    for i in 0..100 {
        enqueue_one(&outbox, &pool, "out.r", &i.to_string()).await;
    }
    wait::until(Duration::from_secs(20), "100 published", || {
        first.report().published == 100
    })
    .await;
    assert_eq!(first.shutdown().await.duplicates, 0);
    let second = relay(&outbox, &bus).build().unwrap().spawn();
    for i in 100..150 {
        enqueue_one(&outbox, &pool, "out.r", &i.to_string()).await;
    }
    wait::until(Duration::from_secs(20), "50 more published", || {
        second.report().published == 50
    })
    .await;
    let report = second.shutdown().await;
    assert_eq!(report.duplicates, 0, "{report:?}");
    let got = stream_contents(&bus, "out.>", 150).await;
    let ns: Vec<u32> = got
        .iter()
        .map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap())
        .collect();
    assert_eq!(ns, (0..150).collect::<Vec<_>>());
}

/// Two relays at once: one holds the lease and publishes, the other
/// stands by; when the leader dies (aborted mid-stream, lease not
/// released) the other takes over; every row is in the stream once, in
/// order per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_hand_over_without_double_publishing() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    let (_server, bus) = nats().await;
    let build = || {
        relay(&outbox, &bus)
            .lease(Duration::from_secs(1))
            .publish_timeout(Duration::from_millis(300))
            .batch_size(50)
            .build()
            .unwrap()
            .spawn()
    };
    let a = build();
    let b = build();
    wait::until(Duration::from_secs(10), "a leader", || {
        a.is_leader() || b.is_leader()
    })
    .await;
    let (leader, standby) = if a.is_leader() { (a, b) } else { (b, a) };
    assert!(!standby.is_leader());
    let writer = {
        let (outbox, pool) = (outbox.clone(), pool.clone());
        tokio::spawn(async move {
            for i in 0..1000 {
                enqueue_one(&outbox, &pool, &format!("out.k{}", i % 4), &i.to_string()).await;
            }
        })
    };
    wait::until(
        Duration::from_secs(20),
        "the leader to publish some",
        || leader.report().published >= 200,
    )
    .await;
    assert_eq!(
        standby.report().published,
        0,
        "the standby published while the leader held the lease"
    );
    leader.abort();
    writer.await.unwrap();
    wait::until(Duration::from_secs(20), "the standby to take over", || {
        standby.is_leader()
    })
    .await;
    wait::until_async(Duration::from_secs(20), "every row published", || async {
        outbox.status().await.unwrap().pending == 0
    })
    .await;
    let report = standby.shutdown().await;
    assert!(report.published > 0, "{report:?}");
    let got = stream_contents(&bus, "out.>", 1000).await;
    assert_in_order_per_subject(&got);
}

/// Wake-ups: with polling practically off, a commit through
/// `Outbox::commit` wakes a relay of the same process, and a notification
/// wakes a listening relay of "another process" (an outbox of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_wake_the_relay_in_process_and_by_notification() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let mut events = bus.subscribe("out.>").await.unwrap();
    let relay = relay(&outbox, &bus)
        .poll_interval(Duration::from_secs(3600))
        .listen(true)
        .build()
        .unwrap()
        .spawn();
    wait::until(Duration::from_secs(10), "the lease", || relay.is_leader()).await;
    wait::until(Duration::from_secs(10), "a first read", || {
        relay.report().reads > 0
    })
    .await;
    // In process.
    enqueue_one(&outbox, &pool, "out.local", "1").await;
    let m = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("woken by Outbox::commit")
        .unwrap();
    assert_eq!(m.subject.as_str(), "out.local");
    // Another process: its own Outbox (no shared wake-up), with NOTIFY.
    let other = Outbox::new(pool.clone()).notify(true);
    let mut tx = pool.begin().await.unwrap();
    other
        .enqueue(&mut tx, Envelope::new("out.remote", b"2".to_vec()))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("woken by the notification")
        .unwrap();
    assert_eq!(m.subject.as_str(), "out.remote");
    // A rolled-back notifying enqueue wakes nobody and publishes nothing.
    let mut tx = pool.begin().await.unwrap();
    other
        .enqueue(&mut tx, Envelope::new("out.never", b"3".to_vec()))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.next())
            .await
            .is_err()
    );
    relay.shutdown().await;
}

/// Dropping the relay's handle stops it and releases its lease: a relay
/// started next (a restarted service) publishes at once, not after the
/// lease (20 s here) runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_relay_releases_its_lease() {
    let (_pg, pool) = pg().await;
    let outbox = outbox(&pool).await;
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let mut events = bus.subscribe("out.>").await.unwrap();
    let build = || {
        relay(&outbox, &bus)
            .lease(Duration::from_secs(20))
            .build()
            .unwrap()
    };
    let first = build().spawn();
    enqueue_one(&outbox, &pool, "out.first", "1").await;
    tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the first relay publishes")
        .unwrap();
    assert!(first.is_leader());
    let first_name = first.holder().to_string();
    drop(first);
    let started = std::time::Instant::now();
    wait::until_async(Duration::from_secs(10), "the lease released", || async {
        outbox.status().await.unwrap().relay.is_none()
    })
    .await;
    let second = build().spawn();
    assert_ne!(second.holder(), first_name);
    let id = enqueue_one(&outbox, &pool, "out.second", "2").await;
    let m = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the next relay publishes well within the dropped one's lease")
        .unwrap();
    assert_eq!(m.id.to_string(), id);
    println!(
        "published by the next relay {:?} after the drop",
        started.elapsed()
    );
    assert_eq!(second.shutdown().await.published, 1);
}
