//! Durable consumers on consumer groups.
//!
//! One consumer group per consumer name (`<tenant>.<name>` with a tenant);
//! instances opening the same name share the topic's partitions. Kafka
//! keeps one offset per partition, not an answer per message, so the
//! answers live in the instance:
//!
//! * **ack / term**: the message is settled. Offsets are committed only up
//!   to the lowest unsettled offset of each partition: an ack above a gap is
//!   held until the gap closes. Commits are asynchronous; `Ok` means the
//!   instance recorded the answer. An instance that dies before a commit
//!   lands has its settled messages delivered again (at least once; the
//!   inbox drops repeats).
//! * **nack (with delay)**: the message stays unsettled (the partition's
//!   committed offset stays below it) and the instance delivers it again
//!   after the delay. The partition keeps flowing meanwhile, so a nacked
//!   event is redelivered *after* later events of its partition: per-key
//!   order does not hold across a nack (as on NATS).
//! * **ack wait / in progress**: a timer per delivery in the instance;
//!   unanswered within `ack_wait`, the message is delivered again.
//! * **delivery count**: kept by the instance (Kafka records are
//!   immutable). After a rebalance or a restart the next owner counts
//!   from 1 again, so `max_deliver` bounds deliveries per owner.
//! * **rebalance**: before partitions are revoked, the settled floor of
//!   each is committed and everything unsettled on them is forgotten (the
//!   new owner gets it from the committed offset); a late answer for one is
//!   an `Unavailable` error, never a commit.
//! * **start**: `New` commits each partition's end offset for a group that
//!   has no offsets yet (before joining); `All` reads from the earliest
//!   offset; `Sequence(n)` is offset `n - 1` on a one-partition topic and
//!   `Unsupported` otherwise (sequences are per partition).
//! * **ready**: opening returns once the group has given the instance its
//!   first assignment (within `open_timeout`, else a `Timeout` error), so
//!   instances opened one after the other all share what is published next.
//! * **max_ack_pending**: the instance stops fetching while that many
//!   deliveries are unanswered. (librdkafka's `max.poll.interval.ms`, 5
//!   minutes, then applies: a window held unanswered longer than that makes
//!   the instance leave the group, and its partitions go to the others.)

use super::subscription::{consumer_base, from_record};
use super::topic::{group_for, topic_for_pattern};
use super::{backend_err, KafkaBus};
use crate::consumer::MAX_WAIT;
use crate::consumer::{AckKind, Acker, ConsumerConfig, ConsumerStream, Delivery, StartPosition};
use crate::error::{BusError, ErrorKind};
use crate::message::BusMessage;
use async_trait::async_trait;
use parking_lot::Mutex;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

/// One fetched record of a partition.
struct Entry {
    /// The message while unsettled; `None` once settled.
    msg: Option<BusMessage>,
    count: u32,
    /// When to deliver it again (while unsettled; its key in
    /// [`State::deadlines`]).
    due: Instant,
    /// Which delivery the current acker belongs to.
    gen: u64,
}

/// What the driver and the ackers share, behind one lock: an answer is
/// applied by the acker itself, without a round trip to the driver.
#[derive(Default)]
struct State {
    /// partition → offset → entry.
    parts: HashMap<i32, BTreeMap<i64, Entry>>,
    /// Entries with a message (not yet settled).
    unsettled: usize,
    /// When each unsettled entry is due again, earliest first.
    deadlines: BTreeSet<(Instant, i32, i64)>,
    /// Set when the consumer closed: later answers are refused.
    closed: bool,
}

impl State {
    /// Pops the settled prefix of `partition`; the offset to commit, if it moved.
    fn advance(&mut self, partition: i32) -> Option<i64> {
        let part = self.parts.get_mut(&partition)?;
        let mut last = None;
        while let Some(entry) = part.first_entry() {
            if entry.get().msg.is_some() {
                break;
            }
            last = Some(*entry.key());
            entry.remove();
        }
        last.map(|o| o + 1)
    }

    /// Settles an unsettled entry.
    fn settle(&mut self, partition: i32, offset: i64) {
        let Some(entry) = self
            .parts
            .get_mut(&partition)
            .and_then(|p| p.get_mut(&offset))
        else {
            return;
        };
        if entry.msg.take().is_some() {
            self.deadlines.remove(&(entry.due, partition, offset));
            self.unsettled -= 1;
        }
    }

    /// Moves an unsettled entry's deadline; true if it is now the earliest.
    fn reschedule(&mut self, partition: i32, offset: i64, due: Instant) -> bool {
        let Some(entry) = self
            .parts
            .get_mut(&partition)
            .and_then(|p| p.get_mut(&offset))
        else {
            return false;
        };
        if entry.msg.is_none() {
            return false;
        }
        self.deadlines.remove(&(entry.due, partition, offset));
        entry.due = due;
        self.deadlines.insert((due, partition, offset));
        self.deadlines.first() == Some(&(due, partition, offset))
    }

    /// Forgets a partition (revoked): its unsettled entries go to the next
    /// owner.
    fn forget(&mut self, partition: i32) {
        let Some(part) = self.parts.remove(&partition) else {
            return;
        };
        for (offset, entry) in part {
            if entry.msg.is_some() {
                self.deadlines.remove(&(entry.due, partition, offset));
                self.unsettled -= 1;
            }
        }
    }
}

struct Ctx {
    topic: String,
    state: Arc<Mutex<State>>,
    /// Set once the group has given this instance its first assignment.
    assigned: tokio::sync::watch::Sender<bool>,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(_) = rebalance {
            self.assigned.send_replace(true);
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let mut state = self.state.lock();
        let mut commit = TopicPartitionList::new();
        for el in tpl.elements_for_topic(&self.topic) {
            let p = el.partition();
            if let Some(next) = state.advance(p) {
                let _ = commit.add_partition_offset(&self.topic, p, Offset::Offset(next));
            }
            // Unsettled messages go to the partition's next owner.
            state.forget(p);
        }
        drop(state);
        if commit.count() > 0 {
            if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                tracing::warn!(error = %e, "kafka consumer: commit before a rebalance failed");
            }
        }
    }
}

/// One consumer instance, as its driver task and its ackers see it.
struct Shared {
    state: Arc<Mutex<State>>,
    /// The driver owns the consumer (and closes it off the async threads);
    /// an acker commits through it while the state says it is open.
    consumer: Weak<StreamConsumer<Ctx>>,
    topic: String,
    name: String,
    ack_wait: Duration,
    /// `max_ack_pending`: the driver stops fetching at this many unsettled.
    window: usize,
    /// Wakes the driver: a deadline became the earliest, or the window has
    /// room again.
    wake: Notify,
}

impl Shared {
    /// Applies an answer (under the state's lock, so commits go out in
    /// offset order).
    fn answer(&self, partition: i32, offset: i64, gen: u64, kind: AckKind) -> Result<(), BusError> {
        let mut s = self.state.lock();
        if s.closed {
            return Err(BusError::closed(format!(
                "kafka consumer {:?} closed; the message is delivered again to the group",
                self.name
            )));
        }
        let Some(entry) = s.parts.get(&partition).and_then(|p| p.get(&offset)) else {
            return Err(BusError::new(
                ErrorKind::Unavailable,
                format!(
                    "kafka consumer {:?}: partition {partition} of {} was reassigned (or the message settled); the answer is not applied and the new owner delivers the message again",
                    self.name, self.topic
                ),
            ));
        };
        if entry.msg.is_none() {
            return Ok(());
        }
        let current = entry.gen == gen;
        let now = Instant::now();
        match kind {
            AckKind::Ack | AckKind::Term { .. } | AckKind::DeadLetter { .. } => {
                let was_full = s.unsettled >= self.window;
                s.settle(partition, offset);
                if let Some(next) = s.advance(partition) {
                    self.commit(partition, next);
                }
                if was_full && s.unsettled < self.window {
                    self.wake.notify_one();
                }
            }
            AckKind::Nack { delay, .. } => {
                let due = now + delay.unwrap_or_default().min(MAX_WAIT);
                if current && s.reschedule(partition, offset, due) {
                    self.wake.notify_one();
                }
            }
            AckKind::InProgress => {
                if current {
                    s.reschedule(partition, offset, now + self.ack_wait);
                }
            }
        }
        Ok(())
    }

    /// Commits `next` as the partition's offset, asynchronously (called
    /// under the state's lock).
    fn commit(&self, partition: i32, next: i64) {
        let Some(consumer) = self.consumer.upgrade() else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(&self.topic, partition, Offset::Offset(next))
            .is_ok()
        {
            if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                tracing::warn!(error = %e, partition, "kafka consumer: commit failed");
            }
        }
    }
}

struct KafkaAcker {
    shared: Arc<Shared>,
    partition: i32,
    offset: i64,
    gen: u64,
}

#[async_trait]
impl Acker for KafkaAcker {
    async fn answer(&self, kind: AckKind) -> Result<(), BusError> {
        self.shared
            .answer(self.partition, self.offset, self.gen, kind)
    }
}

pub(super) async fn open(
    bus: &KafkaBus,
    config: ConsumerConfig,
) -> Result<ConsumerStream, BusError> {
    crate::consumer::validate_config(&config)?;
    let topic = topic_for_pattern(bus.tenant_opt(), &config.filter)?;
    bus.ensure_topic(&topic).await?;
    let partitions = bus.partitions(&topic).await?;
    let group = group_for(bus.tenant_opt(), &config.name);
    let start_offset = match config.start {
        StartPosition::Sequence(n) if partitions.len() == 1 => Some(n.saturating_sub(1) as i64),
        StartPosition::Sequence(n) => {
            return Err(BusError::new(
                ErrorKind::Unsupported,
                format!(
                    "consumer {:?} starting at sequence {n} on kafka: sequences are per partition and topic {topic} has {} partitions",
                    config.name,
                    partitions.len()
                ),
            ))
        }
        _ => None,
    };
    let state = Arc::new(Mutex::new(State::default()));
    let (assigned, mut assigned_rx) = tokio::sync::watch::channel(false);
    let mut cfg = consumer_base(bus);
    cfg.set("group.id", &group)
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set(
            "auto.offset.reset",
            if config.start == StartPosition::All {
                "earliest"
            } else {
                "latest"
            },
        );
    let consumer: StreamConsumer<Ctx> = cfg
        .create_with_context(Ctx {
            topic: topic.clone(),
            state: state.clone(),
            assigned,
        })
        .map_err(|e| backend_err("creating a consumer", e))?;
    let consumer = Arc::new(consumer);

    // A new group starting `New` (or at a sequence): commit its start
    // offsets before joining, so that nothing published from now on is
    // skipped by `auto.offset.reset=latest` racing the first assignment.
    if config.start != StartPosition::All {
        let timeout = bus.inner.config.publish_timeout;
        let (c, t) = (consumer.clone(), topic.clone());
        tokio::task::spawn_blocking(move || -> Result<(), rdkafka::error::KafkaError> {
            let mut tpl = TopicPartitionList::new();
            for p in &partitions {
                tpl.add_partition(&t, *p);
            }
            let committed = c.committed_offsets(tpl, timeout)?;
            let mut commit = TopicPartitionList::new();
            for el in committed.elements_for_topic(&t) {
                if matches!(el.offset(), Offset::Invalid) {
                    let at = match start_offset {
                        Some(o) => o,
                        None => c.fetch_watermarks(&t, el.partition(), timeout)?.1,
                    };
                    commit.add_partition_offset(&t, el.partition(), Offset::Offset(at))?;
                }
            }
            if commit.count() > 0 {
                c.commit(&commit, CommitMode::Sync)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| backend_err("start-offset task", e))?
        .map_err(|e| backend_err(&format!("committing the start offsets of group {group}"), e))?;
    }
    consumer
        .subscribe(&[&topic])
        .map_err(|e| backend_err(&format!("subscribing group {group} to {topic}"), e))?;

    let config_open_timeout = config.open_timeout;
    let name = config.name.clone();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Result<Delivery, BusError>>();
    let shared = Arc::new(Shared {
        state,
        consumer: Arc::downgrade(&consumer),
        topic,
        name: config.name.clone(),
        ack_wait: config.ack_wait,
        window: config.max_ack_pending,
        wake: Notify::new(),
    });
    let driver = Driver {
        consumer,
        filter: config.filter,
        shared,
        out: out_tx,
    };
    tokio::spawn(driver.run());
    // Ready means a member with an assignment (possibly empty, with more
    // instances than partitions): events published after `consume`
    // returns are then shared by the instances opened so far.
    let wait = config_open_timeout.max(Duration::from_secs(1));
    if tokio::time::timeout(wait, assigned_rx.wait_for(|a| *a))
        .await
        .is_err()
    {
        return Err(BusError::new(
            ErrorKind::Timeout,
            format!(
                "kafka consumer {name:?}: the group {group} gave this instance no partition assignment within {wait:?}"
            ),
        ));
    }
    Ok(Box::pin(futures::stream::poll_fn(move |cx| {
        out_rx.poll_recv(cx)
    })))
}

struct Driver {
    consumer: Arc<StreamConsumer<Ctx>>,
    filter: String,
    shared: Arc<Shared>,
    out: mpsc::UnboundedSender<Result<Delivery, BusError>>,
}

impl Driver {
    async fn run(self) {
        let far = || Instant::now() + Duration::from_secs(3600);
        let timer = tokio::time::sleep_until(far());
        tokio::pin!(timer);
        let mut armed = None;
        loop {
            let (next_due, can_fetch) = {
                let s = self.shared.state.lock();
                let due = s.deadlines.first().map(|d| d.0);
                (due, s.unsettled < self.shared.window)
            };
            // Re-arm the timer only when the earliest deadline moved.
            if next_due != armed {
                timer.as_mut().reset(next_due.unwrap_or_else(far));
                armed = next_due;
            }
            tokio::select! {
                biased;
                _ = self.out.closed() => break,
                _ = self.shared.wake.notified() => {}
                _ = timer.as_mut(), if armed.is_some() => {
                    armed = None;
                    self.redeliver_due();
                }
                r = self.consumer.recv(), if can_fetch => match r {
                    Ok(m) => {
                        let (p, o) = (rdkafka::Message::partition(&m), rdkafka::Message::offset(&m));
                        let msg = from_record(&m)
                            .filter(|msg| crate::subject::matches(&self.filter, msg.subject.as_str()));
                        drop(m);
                        self.fetched(p, o, msg);
                    }
                    Err(e) => {
                        let _ = self.out.send(Err(BusError::new(
                            ErrorKind::Unavailable,
                            format!("kafka consumer {:?}: {e}", self.shared.name),
                        )));
                    }
                },
            }
        }
        // Closing: commit what is settled; the rest goes to the next owner.
        // Answers from now on are refused, so this commit is the last.
        let topic = &self.shared.topic;
        let mut commit = TopicPartitionList::new();
        {
            let mut s = self.shared.state.lock();
            s.closed = true;
            let parts: Vec<i32> = s.parts.keys().copied().collect();
            for p in parts {
                if let Some(next) = s.advance(p) {
                    let _ = commit.add_partition_offset(topic, p, Offset::Offset(next));
                }
            }
        }
        let consumer = self.consumer;
        let _ = tokio::task::spawn_blocking(move || {
            if commit.count() > 0 {
                if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                    tracing::warn!(error = %e, "kafka consumer: final commit failed");
                }
            }
            consumer.unsubscribe();
            drop(consumer);
        })
        .await;
    }

    fn deliver(&self, partition: i32, offset: i64, msg: BusMessage, count: u32, gen: u64) {
        let acker = KafkaAcker {
            shared: self.shared.clone(),
            partition,
            offset,
            gen,
        };
        let _ = self
            .out
            .send(Ok(Delivery::new(msg, count, Box::new(acker))));
    }

    fn fetched(&self, partition: i32, offset: i64, msg: Option<BusMessage>) {
        let mut s = self.shared.state.lock();
        let part = s.parts.entry(partition).or_default();
        if part.contains_key(&offset) {
            return; // fetched again (after a seek); already tracked
        }
        let due = Instant::now() + self.shared.ack_wait;
        let Some(msg) = msg else {
            // Not ours (another subject of the topic): settled at once.
            part.insert(
                offset,
                Entry {
                    msg: None,
                    count: 0,
                    due,
                    gen: 0,
                },
            );
            if let Some(next) = s.advance(partition) {
                self.shared.commit(partition, next);
            }
            return;
        };
        part.insert(
            offset,
            Entry {
                msg: Some(msg.clone()),
                count: 1,
                due,
                gen: 1,
            },
        );
        s.unsettled += 1;
        s.deadlines.insert((due, partition, offset));
        drop(s);
        self.deliver(partition, offset, msg, 1, 1);
    }

    fn redeliver_due(&self) {
        let now = Instant::now();
        let mut again = Vec::new();
        {
            let mut s = self.shared.state.lock();
            while let Some(&(due, p, o)) = s.deadlines.first() {
                if due > now {
                    break;
                }
                s.deadlines.pop_first();
                let next_due = now + self.shared.ack_wait;
                let Some(e) = s.parts.get_mut(&p).and_then(|part| part.get_mut(&o)) else {
                    continue;
                };
                let Some(msg) = e.msg.clone() else { continue };
                e.count = e.count.saturating_add(1);
                e.gen += 1;
                e.due = next_due;
                again.push((p, o, msg, e.count, e.gen));
                s.deadlines.insert((next_due, p, o));
            }
        }
        for (p, o, m, c, g) in again {
            self.deliver(p, o, m, c, g);
        }
    }
}
