//! Crash tests against real nats-server processes: kill -9 of a single node
//! mid-publish, and of the stream leader of a 3-node cluster.
//!
//! Each test prints its counts (acknowledged, failed, stored, delivered,
//! duplicates) so that CI logs record them.

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use event_bus::nats::StreamSpec;
use event_bus::{Envelope, EventBus, EventBusExt, NatsBus, Subscription};
use event_bus_testkit::nats_server::{NatsCluster, NatsServer, NatsServerOptions};
use event_bus_testkit::wait;
use futures::StreamExt;
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Publishes `<prefix>.e` events numbered from 0 until stopped, recording
/// which were acknowledged and how many failed.
struct Publisher {
    acked: Arc<Mutex<Vec<u64>>>,
    failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    fn start(bus: Arc<dyn EventBus>, subject: &'static str) -> Self {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (acked, failed, stop) = (acked.clone(), failed.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let env = Envelope::new(subject, i.to_string().into_bytes())
                        .id(format!("{subject}-{i}"));
                    match bus.publish_envelope(env).await {
                        Ok(_) => acked.lock().push(i),
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    i += 1;
                }
            })
        };
        Publisher {
            acked,
            failed,
            stop,
            task,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().len()
    }

    async fn finish(self) -> (Vec<u64>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("publisher task");
        let acked = self.acked.lock().clone();
        (acked, self.failed.load(Ordering::Relaxed))
    }
}

/// Kills (SIGKILL) the node leading `stream`; returns its name.
async fn kill_stream_leader(
    js: &jetstream::Context,
    cluster: &mut NatsCluster,
    stream: &str,
) -> String {
    let leader = js
        .get_stream(stream)
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .expect("the stream has a leader");
    let idx = cluster
        .node_index_by_name(&leader)
        .expect("leader is a node");
    cluster.kill(idx);
    leader
}

/// Every message in `stream`, as payload numbers (read with a raw ordered consumer).
/// The stream's payload indexes, asserting that every acknowledged publish is
/// among them; returns them with the stored and acknowledged sets.
async fn stored_without_loss(
    js: &jetstream::Context,
    stream: &str,
    acked: &[u64],
    after: &str,
) -> (Vec<u64>, BTreeSet<u64>, BTreeSet<u64>) {
    let stored = stored(js, stream).await;
    let stored_set: BTreeSet<u64> = stored.iter().copied().collect();
    let acked_set: BTreeSet<u64> = acked.iter().copied().collect();
    let lost: Vec<_> = acked_set.difference(&stored_set).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but not stored {after}: {lost:?}"
    );
    (stored, stored_set, acked_set)
}

async fn stored(js: &jetstream::Context, stream: &str) -> Vec<u64> {
    // Right after a node was killed the cluster may still be electing a
    // leader: retry the API calls until they answer (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (total, consumer) = loop {
        let attempt = async {
            let mut s = js
                .get_stream(stream)
                .await
                .map_err(|e| format!("get_stream: {e}"))?;
            let total = s
                .info()
                .await
                .map_err(|e| format!("stream info: {e}"))?
                .state
                .messages as usize;
            let c = s
                .create_consumer(pull::OrderedConfig {
                    deliver_policy: DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("create an ordered consumer: {e}"))?;
            Ok::<_, String>((total, c))
        };
        let last_error = match attempt.await {
            Ok(found) => break found,
            Err(e) => e,
        };
        assert!(
            std::time::Instant::now() < deadline,
            "stream {stream} did not answer within 60 s; last error: {last_error}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut msgs = consumer.messages().await.expect("messages");
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let m = tokio::time::timeout(Duration::from_secs(30), msgs.next())
            .await
            .expect("reading the stream back")
            .expect("stream open");
        if let Ok(m) = m {
            out.push(std::str::from_utf8(&m.payload).unwrap().parse().unwrap());
        }
    }
    out
}

/// What a subscription delivered while the publisher ran through a crash.
#[derive(Debug)]
struct Received {
    /// The payload numbers in delivery order.
    delivered: Vec<u64>,
    /// Deliveries of a number already delivered (a replay after the restart).
    duplicates: usize,
    /// Deliveries of a number lower than one delivered before it.
    out_of_order: usize,
    /// Numbers stored but not acknowledged to the publisher (its publish
    /// failed after the server had stored it).
    extra: usize,
}

impl Received {
    /// The subscription delivered the stream as stored, in its order, each
    /// message once: no replay after the restart, nothing skipped or
    /// reordered (`stored` is the stream read back with a raw consumer).
    fn assert_is_the_stream(&self, stored: &[u64]) {
        assert_eq!(self.duplicates, 0, "the subscription delivered duplicates");
        assert_eq!(
            self.out_of_order, 0,
            "the subscription went back in the stream"
        );
        let n = self.delivered.len();
        assert!(n <= stored.len(), "delivered {n}, stored {}", stored.len());
        if let Some(i) = (0..n).find(|&i| self.delivered[i] != stored[i]) {
            panic!(
                "delivery {i} is {} where the stream holds {} (delivered ...{:?}, stored ...{:?})",
                self.delivered[i],
                stored[i],
                &self.delivered[i.saturating_sub(3)..(i + 3).min(n)],
                &stored[i.saturating_sub(3)..(i + 3).min(stored.len())]
            );
        }
    }
}

/// Receives from `sub` until every number in `want` was seen.
async fn receive_all(sub: &mut Subscription, want: &BTreeSet<u64>) -> Received {
    let mut seen: HashMap<u64, usize> = HashMap::new();
    let mut delivered = Vec::new();
    let mut missing = want.len();
    let mut out_of_order = 0;
    while missing > 0 {
        let m = tokio::time::timeout(Duration::from_secs(60), sub.next())
            .await
            .unwrap_or_else(|_| {
                panic!("subscription stalled with {missing} acknowledged events missing")
            })
            .expect("subscription open");
        let n: u64 = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
        if delivered.last().is_some_and(|&last| n <= last) {
            out_of_order += 1;
        }
        delivered.push(n);
        let c = seen.entry(n).or_insert(0);
        *c += 1;
        if *c == 1 && want.contains(&n) {
            missing -= 1;
        }
    }
    Received {
        delivered,
        duplicates: seen.values().map(|c| c - 1).sum(),
        out_of_order,
        extra: seen.keys().filter(|n| !want.contains(n)).count(),
    }
}

/// Declares a replicated stream once the meta leader has heard from every
/// peer: right after a cluster forms (more so on a loaded machine) it may
/// still count a peer as offline and refuse the placement ("no suitable
/// peers for placement, peer offline"); that answer is retried for up to
/// 30 s, any other error fails at once.
async fn declare_replicated(
    bus: &NatsBus,
    spec: StreamSpec,
) -> Vec<event_bus::nats::streams::StreamReport> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match bus.ensure_streams(std::slice::from_ref(&spec)).await {
            Ok(reports) => return reports,
            Err(e) if format!("{e:?}").contains("peer offline") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await; // a bounded retry, not a wait for a condition
            }
            Err(e) => panic!("declare a 3-replica stream: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_publish_loses_nothing_acknowledged() {
    let mut server = NatsServer::start_with(NatsServerOptions::default())
        .await
        .expect("start nats-server");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let bus = NatsBus::builder(client)
        .publish_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let bus: Arc<dyn EventBus> = Arc::new(bus);
    let mut sub = bus
        .subscribe("dur.>")
        .await
        .expect("subscribe before the kill");

    let publisher = Publisher::start(bus.clone(), "dur.e");
    wait::until(
        Duration::from_secs(30),
        "300 acknowledged publishes",
        || publisher.acked() >= 300,
    )
    .await;
    server.kill();
    let acked_at_kill = publisher.acked();
    wait::until(
        Duration::from_secs(30),
        "a publish to fail while the server is down",
        || publisher.failed.load(Ordering::Relaxed) >= 1,
    )
    .await;
    server.restart().await.expect("restart on the same store");
    wait::until(
        Duration::from_secs(60),
        "300 more acknowledged publishes after the restart",
        || publisher.acked() >= acked_at_kill + 300,
    )
    .await;
    let (acked, failed) = publisher.finish().await;

    let (stored, stored_set, acked_set) =
        stored_without_loss(&js, "BUS_DUR", &acked, "after kill -9").await;
    assert_eq!(
        stored.len(),
        stored_set.len(),
        "the stream holds duplicates"
    );

    let r = receive_all(&mut sub, &acked_set).await;
    println!(
        "kill -9 single node: acknowledged {}, failed {failed}, stored {}, acknowledged lost 0, \
         subscription duplicates {}, out of order {}, delivered-but-unacknowledged {}",
        acked.len(),
        stored.len(),
        r.duplicates,
        r.out_of_order,
        r.extra
    );
    r.assert_is_the_stream(&stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_stream_leader_killed_mid_stream() {
    let mut cluster = NatsCluster::start(3).await.expect("start a 3-node cluster");
    let client = async_nats::ConnectOptions::new()
        .connect(cluster.urls())
        .await
        .expect("connect to the cluster");
    let js = jetstream::new(client.clone());
    let bus = NatsBus::builder(client)
        .publish_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let reports = declare_replicated(&bus, StreamSpec::new("CLU", ["clu.>"]).replicas(3)).await;
    assert_eq!(reports.len(), 1);
    let bus: Arc<dyn EventBus> = Arc::new(bus);
    let mut sub = bus
        .subscribe("clu.>")
        .await
        .expect("subscribe before the kill");

    let publisher = Publisher::start(bus.clone(), "clu.e");
    wait::until(
        Duration::from_secs(30),
        "300 acknowledged publishes",
        || publisher.acked() >= 300,
    )
    .await;
    let leader = kill_stream_leader(&js, &mut cluster, "CLU").await;
    let acked_at_kill = publisher.acked();
    wait::until(
        Duration::from_secs(90),
        "300 more acknowledged publishes after the leader was killed",
        || publisher.acked() >= acked_at_kill + 300,
    )
    .await;
    let (acked, failed) = publisher.finish().await;

    let (stored, stored_set, acked_set) =
        stored_without_loss(&js, "CLU", &acked, "after the leader was killed").await;
    let r = receive_all(&mut sub, &acked_set).await;
    println!(
        "3-node cluster, leader {leader} killed: acknowledged {}, failed {failed}, stored {} \
         (stream duplicates {}), acknowledged lost 0, subscription duplicates {}, \
         out of order {}, delivered-but-unacknowledged {}",
        acked.len(),
        stored.len(),
        stored.len() - stored_set.len(),
        r.duplicates,
        r.out_of_order,
        r.extra
    );
    // The publisher never publishes a number twice and JetStream
    // de-duplicates on the message id: the stream holds each number once.
    assert_eq!(
        stored.len(),
        stored_set.len(),
        "the stream holds duplicates"
    );
    // The subscription resumes where it was after the failover: no replay
    // of what it had delivered, nothing skipped or out of order.
    r.assert_is_the_stream(&stored);
}

/// Processes deliveries (acking each) until `total` distinct payloads were
/// seen or `stop_after` new ones were processed; updates the counts map.
async fn process(
    consumer: &mut event_bus::ConsumerStream,
    seen: &mut HashMap<u64, usize>,
    total: usize,
    stop_after: usize,
) {
    let mut new = 0;
    while seen.len() < total && new < stop_after {
        let item = tokio::time::timeout(Duration::from_secs(60), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("consumer stalled with {} of {total} processed", seen.len()))
            .expect("consumer open");
        let d = match item {
            Ok(d) => d,
            Err(e) => {
                assert!(
                    e.kind().is_transient() || e.kind() == event_bus::ErrorKind::NotFound,
                    "{e}"
                );
                continue;
            }
        };
        let n: u64 = std::str::from_utf8(&d.payload).unwrap().parse().unwrap();
        let c = seen.entry(n).or_insert(0);
        *c += 1;
        if *c == 1 {
            new += 1;
        }
        // An ack lost to the crash is the only source of duplicates.
        let _ = d.ack().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_consumer_resumes_across_kill_9() {
    let mut server = NatsServer::start().await.expect("start nats-server");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let bus = NatsBus::builder(client)
        .publish_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let config = event_bus::ConsumerConfig::new("worker", "job.>").ack_wait(Duration::from_secs(2));
    let mut consumer = bus
        .consume(config.clone())
        .await
        .expect("open the durable consumer");
    let total = 1000usize;
    let envs = (0..total)
        .map(|i| Envelope::new("job.run", i.to_string().into_bytes()))
        .collect();
    for r in bus.publish_batch(envs).await {
        r.expect("publish");
    }
    let mut seen = HashMap::new();
    process(&mut consumer, &mut seen, total, 300).await;
    let before_kill: BTreeSet<u64> = seen.keys().copied().collect();
    server.kill();
    drop(consumer);
    server.restart().await.expect("restart on the same store");
    let mut consumer = bus
        .consume(config)
        .await
        .expect("re-open after the restart");
    process(&mut consumer, &mut seen, total, usize::MAX).await;
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    println!(
        "durable consumer across kill -9: {total} events, all processed, {} handled before the kill, duplicates {duplicates} (acks the server had not persisted)",
        before_kill.len()
    );
    assert_eq!(seen.len(), total, "nothing lost");
    // Only events handled before the crash (whose acks died with the server)
    // may come again; nothing first handled after the restart is repeated.
    let unexpected: Vec<u64> = seen
        .iter()
        .filter(|(n, c)| **c > 1 && !before_kill.contains(n))
        .map(|(n, _)| *n)
        .collect();
    assert!(
        unexpected.is_empty(),
        "duplicates of events first handled after the restart: {unexpected:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_consumer_survives_cluster_leader_kill() {
    let mut cluster = NatsCluster::start(3).await.expect("start a 3-node cluster");
    let client = async_nats::ConnectOptions::new()
        .connect(cluster.urls())
        .await
        .expect("connect to the cluster");
    let js = jetstream::new(client.clone());
    let bus = NatsBus::builder(client)
        .publish_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    declare_replicated(&bus, StreamSpec::new("JOBS", ["jobs.>"]).replicas(3)).await;
    let config =
        event_bus::ConsumerConfig::new("cluster-worker", "jobs.>").ack_wait(Duration::from_secs(3));
    let mut consumer = bus
        .consume(config)
        .await
        .expect("open the durable consumer");
    let total = 1000usize;
    let envs = (0..total)
        .map(|i| Envelope::new("jobs.run", i.to_string().into_bytes()))
        .collect();
    for r in bus.publish_batch(envs).await {
        r.expect("publish");
    }
    let mut seen = HashMap::new();
    process(&mut consumer, &mut seen, total, 300).await;
    let before_kill: BTreeSet<u64> = seen.keys().copied().collect();
    let leader = kill_stream_leader(&js, &mut cluster, "JOBS").await;
    process(&mut consumer, &mut seen, total, usize::MAX).await;
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    println!(
        "durable consumer, 3-node cluster, stream leader {leader} killed: {total} events, all processed, {} handled before the kill, duplicates {duplicates}",
        before_kill.len()
    );
    // Acks sent while the consumer's leader fails over can be lost, so
    // duplicates are reported, not bounded; nothing may be lost.
    assert_eq!(seen.len(), total, "nothing lost");
}

/// Opening a durable consumer retries transient failures within
/// `ConsumerConfig::open_timeout`: with the only server holding its stream
/// (one replica) killed, it gives up after the bound, naming the consumer,
/// the stream and how long it waited; with that server restarted while it
/// retries, it succeeds and the consumer works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_open_retries_while_its_stream_is_offline() {
    let mut cluster = NatsCluster::start(3).await.expect("start a 3-node cluster");
    let client = async_nats::ConnectOptions::new()
        .connect(cluster.urls())
        .await
        .expect("connect to the cluster");
    let js = jetstream::new(client.clone());
    let bus = NatsBus::builder(client)
        .publish_timeout(Duration::from_secs(3))
        .build()
        .expect("no tenant");
    declare_replicated(&bus, StreamSpec::new("OFFLINE", ["offline.>"]).replicas(1)).await;
    bus.publish("offline.job", b"1".to_vec()).await.unwrap();
    let holder = kill_stream_leader(&js, &mut cluster, "OFFLINE").await;
    let holder = cluster.node_index_by_name(&holder).unwrap();
    // The others agree on a meta leader (the killed node may have been it):
    // the stream is known, only its one replica is gone.
    cluster
        .wait_for_meta_leader(Duration::from_secs(60))
        .await
        .expect("a meta leader among the survivors");

    let bound = Duration::from_secs(3);
    let began = Instant::now();
    let err = bus
        .consume(
            event_bus::ConsumerConfig::new("patient", "offline.>")
                .start(event_bus::StartPosition::All)
                .open_timeout(bound),
        )
        .await
        .err()
        .expect("no consumer while its stream is offline");
    let took = began.elapsed();
    println!("gave up after {took:?}: {err}");
    let text = err.to_string();
    assert!(
        text.contains("\"patient\"")
            && text.contains("OFFLINE")
            && text.contains("open_timeout 3s"),
        "the error names the consumer, the stream and the bound: {text}"
    );
    assert!(took >= bound, "gave up before the bound: {took:?}");

    // Opened while the node is down, the consumer comes up once it is back.
    let opening = tokio::spawn({
        let bus = bus.clone();
        async move {
            bus.consume(
                event_bus::ConsumerConfig::new("patient", "offline.>")
                    .start(event_bus::StartPosition::All),
            )
            .await
        }
    });
    cluster
        .restart(holder)
        .await
        .expect("restart the stream's node");
    let mut consumer = tokio::time::timeout(Duration::from_secs(60), opening)
        .await
        .expect("opened within its 30 s bound of the restart")
        .unwrap()
        .expect("the consumer opens once its stream is back");
    let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
        .await
        .expect("a delivery within 30 s")
        .unwrap()
        .unwrap();
    assert_eq!(delivery.message().payload, b"1".to_vec());
    delivery.ack().await.unwrap();
}
