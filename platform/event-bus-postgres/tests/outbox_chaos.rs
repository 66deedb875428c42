//! The whole chain under faults: business transactions → outbox → relay →
//! JetStream → runner → `PgInbox`. Eight writers enqueue 20,000 events in
//! transactions of 1 to 10 events, a fifth of them rolled back; the relay is
//! killed three times at random points and nats-server is killed (-9) and
//! restarted once; the relay's bus fails part of its publishes: some are
//! cut (not sent, as by a connection lost mid-batch, while later rows of
//! their key in the same batch go through) and some lose their
//! acknowledgement (stored, reported as a timeout). Every committed event
//! has exactly one effect, no rolled-back event has any, the stream holds
//! each committed event once, every lost acknowledgement comes back as a
//! duplicate when its row is sent again; with strict order the stream is in
//! order per key, and pipelined (the control) it is not.
//!
//! The random choices come from a seed, printed, and taken from
//! `OUTBOX_CHAOS_SEED` when set (the timing of the run is not reproduced).

use event_bus::nats::StreamSpec;
use event_bus::runner::{boxed, Event, Handler, RetryPolicy, Runner};
use event_bus::{
    BusError, ConsumerConfig, Envelope, ErrorKind, EventBus, EventBusExt, PublishAck,
    PublishFuture, StartPosition, Subscription,
};
use event_bus_postgres::{sqlx, Outbox, OutboxRelay, PgInbox, RelayHandle};
use event_bus_testkit::nats_server::NatsServer;
use event_bus_testkit::wait;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
mod common;

const WRITERS: u64 = 8;
const EVENTS: u64 = 20_000;

#[derive(Serialize, Deserialize)]
struct Ev {
    writer: i64,
    n: i64,
}

/// A small seeded generator (splitmix64): each user of randomness has its
/// own, derived from the run's seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Self {
        Rng(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

/// The run's seed: `OUTBOX_CHAOS_SEED`, else a random one; printed.
fn seed() -> u64 {
    let seed = match std::env::var("OUTBOX_CHAOS_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("OUTBOX_CHAOS_SEED={s:?} is not a u64: {e}")),
        Err(_) => {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        }
    };
    println!("outbox chaos seed: {seed} (rerun with OUTBOX_CHAOS_SEED={seed})");
    seed
}

/// One in `CUT` eligible publishes is cut; one in `ACK_LOST` loses its
/// acknowledgement.
const CUT: u64 = 150;
const ACK_LOST: u64 = 400;

/// The relay's bus: NATS, failing part of the publishes of a batch. A cut
/// publish fails only after it was started (as when the connection breaks
/// while it is on its way), so that pipelined, the later rows of its key in
/// the batch are sent already and go through first; strict, they wait.
/// Records the ids whose acknowledgement it dropped and the ids the server
/// reported as duplicates.
struct FaultyBus {
    inner: Arc<dyn EventBus>,
    rng: Mutex<Rng>,
    cuts: AtomicU64,
    ack_lost: Mutex<HashSet<String>>,
    duplicates: Mutex<HashSet<String>>,
}

enum Fault {
    None,
    Cut,
    AckLost,
}

impl FaultyBus {
    fn fault(&self, may_cut: bool) -> Fault {
        let mut rng = self.rng.lock().unwrap();
        if may_cut && rng.below(CUT) == 0 {
            Fault::Cut
        } else if rng.below(ACK_LOST) == 0 {
            Fault::AckLost
        } else {
            Fault::None
        }
    }

    fn cut(&self, e: &Envelope) -> BusError {
        self.cuts.fetch_add(1, Ordering::SeqCst);
        BusError::new(
            ErrorKind::Unavailable,
            format!("chaos: the publish to {} was cut", e.subject),
        )
    }

    /// What the relay is told of a publish the server answered.
    fn answered(
        &self,
        id: String,
        fault: &Fault,
        result: Result<PublishAck, BusError>,
    ) -> Result<PublishAck, BusError> {
        if let Ok(ack) = &result {
            if ack.duplicate {
                self.duplicates.lock().unwrap().insert(id.clone());
            }
            if let Fault::AckLost = fault {
                self.ack_lost.lock().unwrap().insert(id);
                return Err(BusError::new(
                    ErrorKind::Timeout,
                    "chaos: the acknowledgement was lost",
                ));
            }
        }
        result
    }
}

fn id_of(e: &Envelope) -> String {
    e.id.as_ref().expect("outbox rows have ids").to_string()
}

#[async_trait::async_trait]
impl EventBus for FaultyBus {
    fn publish<'a>(&'a self, subject: &'a str, payload: Vec<u8>) -> PublishFuture<'a> {
        self.inner.publish(subject, payload)
    }

    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BusError> {
        self.inner.subscribe(pattern).await
    }

    async fn publish_envelope(&self, envelope: Envelope) -> Result<PublishAck, BusError> {
        let fault = self.fault(true);
        if let Fault::Cut = fault {
            // Known after the relay started the next publishes, not at once
            // (a publish failing at once holds its key's later rows back).
            tokio::task::yield_now().await;
            return Err(self.cut(&envelope));
        }
        let id = id_of(&envelope);
        let result = self.inner.publish_envelope(envelope).await;
        self.answered(id, &fault, result)
    }
}

/// Strict per-key order: the stream holds each writer's events in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_order_holds_under_relay_and_server_crashes() {
    chaos(true).await
}

/// Pipelined batches (the default): exactly one effect per committed event
/// just the same; a batch cut in the middle is stored out of order (see
/// `OutboxRelayBuilder::strict_order`): the control, showing that the
/// faults can break order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_have_one_effect_under_relay_and_server_crashes() {
    chaos(false).await
}

async fn chaos(strict: bool) {
    let seed = seed();
    let (_pg, pool) = common::postgres(20).await;
    sqlx::raw_sql("CREATE TABLE effects (writer BIGINT NOT NULL, n BIGINT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let outbox = Outbox::new(pool.clone());
    outbox.migrate().await.unwrap();
    let mut server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let nats = server
        .bus(&[StreamSpec::new("CHAOS", ["chaos.>"])])
        .await
        .unwrap();
    let bus: Arc<dyn EventBus> = Arc::new(nats);
    let faulty = Arc::new(FaultyBus {
        inner: bus.clone(),
        rng: Mutex::new(Rng::new(seed, 100)),
        cuts: AtomicU64::new(0),
        ack_lost: Mutex::default(),
        duplicates: Mutex::default(),
    });
    let relay_bus: Arc<dyn EventBus> = faulty.clone();

    // The consumer: one effect per event, claimed in the inbox.
    let inbox = PgInbox::new(pool.clone());
    inbox.migrate().await.unwrap();
    let runner = Runner::builder(bus.clone(), "chaos")
        .inbox(inbox)
        .concurrency(8)
        .handler(
            Handler::new(
                "record",
                "chaos.>",
                boxed(
                    |e: Event<'_, Ev>, tx: &mut sqlx::Transaction<'static, sqlx::Postgres>| {
                        Box::pin(async move {
                            sqlx::query("INSERT INTO effects (writer, n) VALUES ($1, $2)")
                                .bind(e.data.writer)
                                .bind(e.data.n)
                                .execute(&mut **tx)
                                .await
                                .map(|_| ())
                                .into()
                        })
                    },
                ),
            )
            .retry(
                RetryPolicy::new(50, Duration::from_millis(5))
                    .max_backoff(Duration::from_millis(200)),
            ),
        )
        .build()
        .spawn()
        .await
        .unwrap();

    // The writers: each numbers its events; its key is its own subject, so
    // its commit order is its numbering.
    let committed = Arc::new(Mutex::new(BTreeSet::<(i64, i64)>::new()));
    let rolled_back = Arc::new(Mutex::new(BTreeSet::<(i64, i64)>::new()));
    let enqueued = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS as i64 {
        let (outbox, pool) = (outbox.clone(), pool.clone());
        let (committed, rolled_back, enqueued) =
            (committed.clone(), rolled_back.clone(), enqueued.clone());
        let mut rng = Rng::new(seed, w as u64);
        writers.push(tokio::spawn(async move {
            let mut n = 0i64;
            while (n as u64) < EVENTS / WRITERS {
                let size = (1 + rng.below(10) as i64).min(EVENTS as i64 / WRITERS as i64 - n);
                let mut tx = pool.begin().await.unwrap();
                let mut batch = Vec::new();
                for _ in 0..size {
                    let payload = serde_json::to_vec(&Ev { writer: w, n }).unwrap();
                    outbox
                        .enqueue(&mut tx, Envelope::new(format!("chaos.w{w}"), payload))
                        .await
                        .unwrap();
                    batch.push((w, n));
                    n += 1;
                }
                enqueued.fetch_add(size as u64, Ordering::SeqCst);
                if rng.below(5) == 0 {
                    tx.rollback().await.unwrap();
                    rolled_back.lock().unwrap().extend(batch);
                } else {
                    outbox.commit(tx).await.unwrap();
                    committed.lock().unwrap().extend(batch);
                }
            }
        }));
    }

    // The relay, killed three times at random points (after a random number
    // of further publishes), and the server killed once in between.
    let spawn_relay = || {
        OutboxRelay::builder(outbox.clone(), relay_bus.clone())
            .lease(Duration::from_secs(1))
            .publish_timeout(Duration::from_millis(300))
            .backoff(Duration::from_millis(20), Duration::from_millis(500))
            .batch_size(200)
            .strict_order(strict)
            .build()
            .unwrap()
            .spawn()
    };
    let published_before = Arc::new(AtomicU64::new(0));
    let mut relay: RelayHandle = spawn_relay();
    let mut rng = Rng::new(seed, 200);
    for round in 0..3 {
        let target = 500 + rng.below(2000);
        wait::until(
            Duration::from_secs(60),
            "the relay to publish some more",
            || relay.report().published >= target,
        )
        .await;
        if round == 1 {
            server.kill();
            wait::until(
                Duration::from_secs(20),
                "the relay to meet the dead server",
                || relay.report().bus_errors > 0,
            )
            .await;
            server.restart().await.expect("restart nats-server");
        }
        let report = relay.report();
        println!("relay {round}: {report:?}");
        published_before.fetch_add(report.published, Ordering::SeqCst);
        relay.abort();
        relay = spawn_relay();
    }
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(enqueued.load(Ordering::SeqCst), EVENTS);
    wait::until_async(Duration::from_secs(120), "the outbox drained", || async {
        outbox.status().await.unwrap().pending == 0
    })
    .await;
    let committed = committed.lock().unwrap().clone();
    let rolled_back = rolled_back.lock().unwrap().clone();
    let want = committed.len();
    wait::until_async(
        Duration::from_secs(120),
        "an effect per committed event",
        || async {
            let (n,): (i64,) = sqlx::query_as("SELECT count(DISTINCT (writer, n)) FROM effects")
                .fetch_one(&pool)
                .await
                .unwrap();
            n as usize >= want
        },
    )
    .await;
    let relay_report = relay.shutdown().await;
    let runner_report = runner.shutdown().await;
    println!(
        "chaos (strict order: {strict}): {} committed, {} rolled back; relay (last) {relay_report:?}; earlier relays published {}; runner {runner_report:?}",
        committed.len(),
        rolled_back.len(),
        published_before.load(Ordering::SeqCst)
    );

    // Exactly one effect per committed event, none for rolled-back ones.
    let effects: Vec<(i64, i64, i64)> =
        sqlx::query_as("SELECT writer, n, count(*) FROM effects GROUP BY writer, n")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut seen = BTreeSet::new();
    for (w, n, count) in effects {
        assert_eq!(count, 1, "event ({w}, {n}) had {count} effects");
        assert!(
            !rolled_back.contains(&(w, n)),
            "rolled-back event ({w}, {n}) had an effect"
        );
        seen.insert((w, n));
    }
    assert_eq!(seen, committed, "effects differ from the committed events");
    assert!(!committed.is_empty() && !rolled_back.is_empty());

    // The stream holds each committed event once, in order per key.
    let mut check = bus
        .consume(
            ConsumerConfig::new("order-check", "chaos.>")
                .start(StartPosition::All)
                .max_ack_pending(20_000),
        )
        .await
        .unwrap();
    let mut per_key: HashMap<i64, Vec<i64>> = HashMap::new();
    for _ in 0..want {
        let d = tokio::time::timeout(Duration::from_secs(20), check.next())
            .await
            .expect("every committed event is in the stream")
            .expect("consumer open")
            .unwrap();
        let ev: Ev = d.message().json().unwrap();
        per_key.entry(ev.writer).or_default().push(ev.n);
        d.ack_nowait().await.unwrap();
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), check.next())
            .await
            .is_err(),
        "the stream holds more events than were committed (a duplicate got through)"
    );
    let inversions: usize = per_key
        .values()
        .map(|ns| ns.windows(2).filter(|p| p[0] >= p[1]).count())
        .sum();
    let ack_lost = faulty.ack_lost.lock().unwrap().clone();
    let duplicates = faulty.duplicates.lock().unwrap().clone();
    println!(
        "seed {seed}: order inversions in the stream: {inversions}; publishes cut: {}; acknowledgements lost: {}; duplicates reported by the server: {}",
        faulty.cuts.load(Ordering::SeqCst),
        ack_lost.len(),
        duplicates.len()
    );
    // Each row whose acknowledgement was lost was stored, sent again, and
    // recognised by the server as a duplicate (the stream check above saw
    // it once).
    assert!(
        !ack_lost.is_empty(),
        "seed {seed}: no acknowledgement was lost"
    );
    let missing: Vec<&String> = ack_lost.difference(&duplicates).collect();
    assert!(
        missing.is_empty(),
        "seed {seed}: rows whose acknowledgement was lost were not reported as duplicates when sent again: {missing:?}"
    );
    assert!(
        faulty.cuts.load(Ordering::SeqCst) > 0,
        "seed {seed}: no publish was cut"
    );
    if !strict {
        // The control: the same faults do break order when rows of a key
        // are pipelined.
        assert!(
            inversions > 0,
            "seed {seed}: pipelined, publishes cut in the middle of a batch left no inversion: the faults cannot tell strict order from pipelined"
        );
        return;
    }
    for (w, ns) in per_key {
        assert!(
            ns.windows(2).all(|p| p[0] < p[1]),
            "seed {seed}: writer {w}'s events are out of order in the stream: {:?}",
            ns.windows(2).filter(|p| p[0] >= p[1]).collect::<Vec<_>>()
        );
    }
}
