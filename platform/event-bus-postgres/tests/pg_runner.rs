//! The event runner with the PostgreSQL inbox, on both backends: exactly one
//! effect per event under duplicates, crashes between commit and ack, random
//! failures and restarts. PostgreSQL: `DATABASE_URL`, else a throwaway server
//! started from the installed binaries.

use async_trait::async_trait;
use event_bus::nats::StreamSpec;
use event_bus::runner::{boxed, Event, Handler, Inbox, Outcome, RetryPolicy, Runner};
use event_bus::{BusError, Envelope, ErrorKind, EventBus, InMemoryBus, MemoryConfig};
use event_bus_postgres::PgInbox;
use event_bus_testkit::nats_server::NatsServer;
use event_bus_testkit::postgres::TestPostgres;
use event_bus_testkit::wait;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
mod common;

#[derive(Serialize, Deserialize)]
struct Job {
    id: i64,
    poison: bool,
}

fn job(id: i64, poison: bool) -> Vec<u8> {
    serde_json::to_vec(&Job { id, poison }).unwrap()
}

struct Env {
    bus: Arc<dyn EventBus>,
    pool: PgPool,
    _pg: TestPostgres,
    _nats: Option<NatsServer>,
}

async fn pg() -> (TestPostgres, PgPool) {
    let (pg, pool) = common::postgres(12).await;
    sqlx::raw_sql(
        "CREATE TABLE effects (event_id BIGINT NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    (pg, pool)
}

async fn memory() -> Env {
    let (pg, pool) = pg().await;
    // A tiny de-duplication window, so that a re-published id reaches the consumer.
    let mut config = MemoryConfig::default();
    config.dedup_window = Duration::from_millis(1);
    Env {
        bus: Arc::new(InMemoryBus::with_config(config)),
        pool,
        _pg: pg,
        _nats: None,
    }
}

async fn nats() -> Env {
    let (pg, pool) = pg().await;
    let server = NatsServer::start().await.expect("start nats-server");
    let bus = server
        .bus(&[StreamSpec::new("WORK", ["work.>"]).duplicate_window(Duration::from_millis(100))])
        .await
        .unwrap();
    Env {
        bus: Arc::new(bus),
        pool,
        _pg: pg,
        _nats: Some(server),
    }
}

async fn effect_counts(pool: &PgPool) -> Vec<(i64, i64)> {
    sqlx::query_as("SELECT event_id, count(*) FROM effects GROUP BY event_id ORDER BY event_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

fn handler(fail_rate: f64) -> Handler<Job, sqlx::Transaction<'static, sqlx::Postgres>> {
    Handler::new(
        "record",
        "work.*",
        boxed(
            move |e: Event<'_, Job>, tx: &mut sqlx::Transaction<'static, sqlx::Postgres>| {
                Box::pin(async move {
                    if e.data.poison {
                        return Outcome::retry("poison event");
                    }
                    let written = sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
                        .bind(e.data.id)
                        .execute(&mut **tx)
                        .await;
                    if let Err(err) = written {
                        return Outcome::retry(err);
                    }
                    // Fail after the write: the rollback must undo it.
                    if fail_rate > 0.0 && rand_unit() < fail_rate {
                        return Outcome::retry("random failure");
                    }
                    Outcome::Ack
                })
            },
        ),
    )
    .retry(RetryPolicy::new(20, Duration::from_millis(1)).max_backoff(Duration::from_millis(20)))
}

fn rand_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (r >> 11) as f64 / (1u64 << 53) as f64
}

/// A PgInbox that, once armed, commits and then hangs instead of returning:
/// the process "dies" between the commit and the ack.
struct CrashAfterCommit {
    inner: PgInbox,
    armed: Arc<AtomicBool>,
    committed: Arc<AtomicBool>,
}

#[async_trait]
impl Inbox for CrashAfterCommit {
    type Tx = <PgInbox as Inbox>::Tx;

    async fn begin(
        &self,
        consumer: &str,
        id: &event_bus::MessageId,
    ) -> Result<Option<Self::Tx>, BusError> {
        self.inner.begin(consumer, id).await
    }

    async fn commit(&self, tx: Self::Tx) -> Result<(), BusError> {
        self.inner.commit(tx).await?;
        if self.armed.load(Ordering::SeqCst) {
            self.committed.store(true, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    async fn rollback(&self, tx: Self::Tx) {
        self.inner.rollback(tx).await
    }

    async fn purge_older_than(&self, age: Duration) -> Result<u64, BusError> {
        self.inner.purge_older_than(age).await
    }
}

async fn inbox(pool: &PgPool) -> PgInbox {
    let inbox = PgInbox::new(pool.clone());
    inbox.migrate().await.expect("create the inbox table");
    inbox
}

fn runner<I: Inbox<Tx = sqlx::Transaction<'static, sqlx::Postgres>>>(
    bus: &Arc<dyn EventBus>,
    inbox: I,
    fail_rate: f64,
) -> Runner<I> {
    Runner::builder(bus.clone(), "pg")
        .inbox(inbox)
        .concurrency(8)
        .ack_wait(Duration::from_millis(1500))
        .shutdown_timeout(Duration::from_millis(200))
        .handler(handler(fail_rate))
        .build()
}

/// The same message id published twice, and a redelivery forced after the
/// effect committed (the consumer dies between commit and ack): one effect.
async fn duplicates_have_one_effect(env: Env) {
    let armed = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicBool::new(false));
    let crashy = CrashAfterCommit {
        inner: inbox(&env.pool).await,
        armed: armed.clone(),
        committed: committed.clone(),
    };
    let first = runner(&env.bus, crashy, 0.0).spawn().await.unwrap();

    // 1. The same id twice (after the bus's own de-duplication window).
    env.bus
        .publish_envelope(Envelope::new("work.a", job(1, false)).id("evt-1"))
        .await
        .unwrap();
    wait::until_async(
        Duration::from_secs(10),
        "the first copy's effect",
        || async { effect_counts(&env.pool).await.len() == 1 },
    )
    .await;
    wait::until_async(
        Duration::from_secs(10),
        "a second copy accepted by the bus",
        || async {
            let ack = env
                .bus
                .publish_envelope(Envelope::new("work.a", job(1, false)).id("evt-1"))
                .await
                .unwrap();
            !ack.duplicate
        },
    )
    .await;
    wait::until(
        Duration::from_secs(10),
        "the second copy recognised as a duplicate",
        || first.report().duplicates >= 1,
    )
    .await;

    // 2. Die between commit and ack.
    armed.store(true, Ordering::SeqCst);
    env.bus
        .publish_envelope(Envelope::new("work.a", job(2, false)).id("evt-2"))
        .await
        .unwrap();
    wait::until(
        Duration::from_secs(10),
        "the commit before the crash",
        || committed.load(Ordering::SeqCst),
    )
    .await;
    let before = first.report();
    first.abort();
    let second = runner(&env.bus, inbox(&env.pool).await, 0.0)
        .spawn()
        .await
        .unwrap();
    wait::until(
        Duration::from_secs(20),
        "the redelivery of the committed event to be skipped",
        || second.report().duplicates >= 1,
    )
    .await;
    let report = second.shutdown().await;
    let counts = effect_counts(&env.pool).await;
    println!("duplicates: first run {before:?}, after the crash {report:?}, effects {counts:?}");
    assert_eq!(counts, vec![(1, 1), (2, 1)], "exactly one effect per event");
    assert!(
        before.duplicates >= 1 && report.duplicates >= 1,
        "both duplicates were recognised: the second copy in the first run, the redelivery after the crash"
    );
}

/// 10,000 events, 30 % random failures, two restarts (one a crash, one
/// graceful): every event has exactly one effect; the dead letters hold the
/// poison events and nothing else.
async fn chaos(env: Env) {
    let total = 10_000i64;
    let poison: BTreeSet<i64> = (1..=total).filter(|i| i % 1000 == 0).collect();
    let mut dead = Runner::builder(env.bus.clone(), "pg")
        .build()
        .dead_letters()
        .await
        .unwrap();
    let pg_inbox = inbox(&env.pool).await;
    let mut running = runner(&env.bus, pg_inbox.clone(), 0.3)
        .spawn()
        .await
        .unwrap();
    let envs: Vec<Envelope> = (1..=total)
        .map(|i| Envelope::new("work.chaos", job(i, poison.contains(&i))).id(format!("chaos-{i}")))
        .collect();
    for r in env.bus.publish_batch(envs).await {
        r.expect("publish");
    }
    let processed = || async { effect_counts(&env.pool).await.len() as i64 };
    wait::until_async(Duration::from_secs(60), "a third processed", || async {
        processed().await >= total / 3
    })
    .await;
    running.abort(); // crash
    running = runner(&env.bus, pg_inbox.clone(), 0.3)
        .spawn()
        .await
        .unwrap();
    wait::until_async(Duration::from_secs(60), "two thirds processed", || async {
        processed().await >= 2 * total / 3
    })
    .await;
    let graceful = running.shutdown().await; // graceful restart
    running = runner(&env.bus, pg_inbox, 0.3).spawn().await.unwrap();
    wait::until_async(
        Duration::from_secs(120),
        "every good event processed",
        || async { processed().await == total - poison.len() as i64 },
    )
    .await;
    // Poison event id -> the id of its dead letter. A crash between a dead
    // letter's publish and the term publishes the same dead letter again,
    // with the same id (`dlq-<consumer>-<original id>`): NATS drops the
    // repeat within its duplicate window; this test's in-memory bus has a
    // 1 ms window, so a repeat may arrive, and must be that same letter.
    type Letters = std::collections::BTreeMap<i64, String>;
    fn check(dead_ids: &mut Letters, d: &event_bus::dlq::DeadLetter) {
        let j: Job = serde_json::from_slice(&d.message().payload).unwrap();
        assert!(j.poison, "a good event was dead-lettered: {}", j.id);
        let letter = d.message().id.to_string();
        if let Some(first) = dead_ids.insert(j.id, letter.clone()) {
            assert_eq!(first, letter, "poison event {} dead-lettered twice", j.id);
        }
    }
    let mut dead_ids = Letters::new();
    while dead_ids.len() < poison.len() {
        let d = dead
            .next(Duration::from_secs(30))
            .await
            .unwrap()
            .expect("a dead letter for every poison event");
        check(&mut dead_ids, &d);
        d.discard().await.unwrap();
    }
    let last = running.shutdown().await;
    while let Some(d) = dead.next(Duration::from_millis(500)).await.unwrap() {
        check(&mut dead_ids, &d); // only repeats of letters seen
        d.discard().await.unwrap();
    }
    assert_eq!(
        dead_ids.len(),
        poison.len(),
        "nothing else in the dead letters"
    );
    let counts = effect_counts(&env.pool).await;
    assert_eq!(counts.len() as i64, total - poison.len() as i64);
    assert!(
        counts.iter().all(|(_, n)| *n == 1),
        "an event has more than one effect"
    );
    assert_eq!(dead_ids.keys().copied().collect::<BTreeSet<i64>>(), poison);
    println!(
        "chaos: {total} events, {} effects (each exactly once), {} dead letters (all poison); graceful restart report {graceful:?}; last run {last:?}",
        counts.len(),
        dead_ids.len()
    );
}

/// Old inbox rows are removed.
async fn cleanup(env: Env) {
    let inbox = inbox(&env.pool).await;
    let tx = inbox.begin("c", &"old".into()).await.unwrap().unwrap();
    inbox.commit(tx).await.unwrap();
    assert!(inbox.contains("c", "old").await.unwrap());
    assert_eq!(
        inbox
            .purge_older_than(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(inbox.purge_older_than(Duration::ZERO).await.unwrap(), 1);
    assert!(!inbox.contains("c", "old").await.unwrap());
    assert!(PgInbox::with_table(env.pool.clone(), "bad; drop table x").is_err());
}

/// A PgInbox whose `begin` fails the first `begin_failures` times, and
/// whose commit reports the first `lost_commits` commits as failed after
/// they committed (the connection was lost before the answer): a
/// PostgreSQL failover as the runner sees it.
struct Failover {
    inner: PgInbox,
    begin_failures: AtomicU32,
    lost_commits: AtomicU32,
}

fn take_one(n: &AtomicU32) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

#[async_trait]
impl Inbox for Failover {
    type Tx = <PgInbox as Inbox>::Tx;

    async fn begin(
        &self,
        consumer: &str,
        id: &event_bus::MessageId,
    ) -> Result<Option<Self::Tx>, BusError> {
        if take_one(&self.begin_failures) {
            return Err(BusError::new(
                ErrorKind::Unavailable,
                "inbox: beginning a transaction: connection refused (failover)",
            ));
        }
        self.inner.begin(consumer, id).await
    }

    async fn commit(&self, tx: Self::Tx) -> Result<(), BusError> {
        self.inner.commit(tx).await?;
        if take_one(&self.lost_commits) {
            return Err(BusError::new(
                ErrorKind::Unavailable,
                "inbox: committing: connection reset",
            ));
        }
        Ok(())
    }

    async fn rollback(&self, tx: Self::Tx) {
        self.inner.rollback(tx).await
    }

    async fn purge_older_than(&self, age: Duration) -> Result<u64, BusError> {
        self.inner.purge_older_than(age).await
    }
}

/// Inbox errors that pass (a failover: begin refused ten times, a commit
/// whose answer was lost) are retried apart from the handler's attempts:
/// with two attempts allowed, nothing is dead-lettered, no attempt is
/// counted as failed, and each event has exactly one effect (the commit
/// whose answer was lost is found as a duplicate).
async fn inbox_failover_does_not_use_up_attempts(env: Env) {
    let flaky = Failover {
        inner: inbox(&env.pool).await,
        begin_failures: AtomicU32::new(10),
        lost_commits: AtomicU32::new(1),
    };
    let running = Runner::builder(env.bus.clone(), "failover")
        .inbox(flaky)
        .handler(handler(0.0).retry(RetryPolicy::new(2, Duration::from_millis(1))))
        .build()
        .spawn()
        .await
        .unwrap();
    for i in 1..=3 {
        env.bus.publish("work.f", job(i, false)).await.unwrap();
    }
    wait::until_async(Duration::from_secs(30), "three effects", || async {
        effect_counts(&env.pool).await.len() == 3
    })
    .await;
    wait::until(Duration::from_secs(10), "every event answered", || {
        let r = running.report();
        r.processed + r.duplicates == 3
    })
    .await;
    let report = running.shutdown().await;
    assert_eq!(effect_counts(&env.pool).await, vec![(1, 1), (2, 1), (3, 1)]);
    assert_eq!(report.dead_lettered, 0, "{report:?}");
    assert_eq!(report.retries, 0, "no handler attempt failed: {report:?}");
    assert_eq!(report.duplicates, 1, "the lost commit: {report:?}");
    assert_eq!(report.processed, 2, "{report:?}");
    assert!(report.inbox_retries >= 11, "{report:?}");
}

/// The real thing: PostgreSQL stops for a while (clients disconnected,
/// connections refused) while events arrive, then comes back. With three
/// attempts allowed, nothing is dead-lettered: every event has one effect.
async fn postgres_restart_does_not_dead_letter(mut env: Env) {
    // A pool that gives up quickly on a server that is down.
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_millis(300))
        .connect(&env._pg.url())
        .await
        .unwrap();
    let running = Runner::builder(env.bus.clone(), "restart")
        .inbox(inbox(&pool).await)
        .handler(handler(0.0).retry(RetryPolicy::new(3, Duration::from_millis(1))))
        .build()
        .spawn()
        .await
        .unwrap();
    env.bus.publish("work.r", job(1, false)).await.unwrap();
    wait::until_async(Duration::from_secs(10), "the first effect", || async {
        effect_counts(&env.pool).await.len() == 1
    })
    .await;
    env._pg.stop().await.expect("stop PostgreSQL");
    for i in 2..=5 {
        env.bus.publish("work.r", job(i, false)).await.unwrap();
    }
    wait::until(
        Duration::from_secs(30),
        "the runner to meet the outage",
        || running.report().inbox_retries >= 8,
    )
    .await;
    env._pg.restart().await.expect("restart PostgreSQL");
    wait::until_async(Duration::from_secs(60), "every effect", || async {
        effect_counts(&env.pool).await.len() == 5
    })
    .await;
    let report = running.shutdown().await;
    assert_eq!(report.dead_lettered, 0, "{report:?}");
    assert!(
        effect_counts(&env.pool).await.iter().all(|(_, n)| *n == 1),
        "one effect each"
    );
}

/// A `Timeout` layer over the PostgreSQL inbox: an attempt that writes its
/// effect and then overruns the limit is dropped with its transaction (the
/// write and the inbox claim roll back), the retry writes the effect once
/// and commits: one effect per event, none from the timed-out attempts.
async fn a_timed_out_attempt_rolls_back(env: Env) {
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    let slow_first = Handler::new(
        "record",
        "work.*",
        boxed(
            move |e: Event<'_, Job>, tx: &mut sqlx::Transaction<'static, sqlx::Postgres>| {
                a.fetch_add(1, Ordering::SeqCst);
                let first = e.attempt == 1;
                Box::pin(async move {
                    let written = sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
                        .bind(e.data.id)
                        .execute(&mut **tx)
                        .await;
                    if let Err(err) = written {
                        return Outcome::retry(err);
                    }
                    if first {
                        // Written, not committed: the Timeout layer drops it.
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    Outcome::Ack
                })
            },
        ),
    )
    .layer(event_bus::runner::Timeout::new(Duration::from_millis(300)))
    .retry(RetryPolicy::new(5, Duration::from_millis(1)).max_backoff(Duration::from_millis(20)));
    let handle = Runner::builder(env.bus.clone(), "pg-timeout")
        .inbox(inbox(&env.pool).await)
        .concurrency(8)
        .handler(slow_first)
        .build()
        .spawn()
        .await
        .unwrap();
    for id in 0..3 {
        env.bus
            .publish_envelope(Envelope::new("work.t", job(id, false)).id(format!("timeout-{id}")))
            .await
            .unwrap();
    }
    wait::until(Duration::from_secs(30), "3 events committed", || {
        handle.report().processed == 3
    })
    .await;
    let report = handle.shutdown().await;
    assert_eq!(effect_counts(&env.pool).await, vec![(0, 1), (1, 1), (2, 1)]);
    assert_eq!(report.retries, 3, "each timed-out attempt failed once");
    assert_eq!(
        report.duplicates, 0,
        "a timed-out claim is not taken for a duplicate"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 6, "two attempts per event");
}

event_bus_testkit::on_both_backends!(
    memory,
    nats;
    duplicates_have_one_effect,
    chaos,
    cleanup,
    inbox_failover_does_not_use_up_attempts,
    postgres_restart_does_not_dead_letter,
    a_timed_out_attempt_rolls_back
);

/// Two workers claim the same `(consumer, message id)` at once: the second
/// claim waits for the first transaction; it is a duplicate once the first
/// commits, and a fresh claim once the first rolls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_wait_for_each_other() {
    let (_pg, pool) = pg().await;
    let inbox = Arc::new(inbox(&pool).await);
    for commit_first in [true, false] {
        let id: event_bus::MessageId = format!("claimed-{commit_first}").into();
        let first = inbox
            .begin("c", &id)
            .await
            .unwrap()
            .expect("the first claim");
        let mut second = tokio::spawn({
            let (inbox, id) = (inbox.clone(), id.clone());
            async move { inbox.begin("c", &id).await }
        });
        // The second claim blocks on the first one's row lock.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut second)
                .await
                .is_err(),
            "the second claim did not wait for the first"
        );
        if commit_first {
            inbox.commit(first).await.unwrap();
        } else {
            inbox.rollback(first).await;
        }
        let second = tokio::time::timeout(Duration::from_secs(10), second)
            .await
            .expect("the second claim ends once the first does")
            .unwrap()
            .unwrap();
        match (commit_first, second) {
            (true, None) => {}
            (false, Some(tx)) => inbox.commit(tx).await.unwrap(),
            (c, s) => panic!("first committed: {c}; second claim: {}", s.is_some()),
        }
        assert!(inbox.contains("c", &id.to_string()).await.unwrap());
    }
}
