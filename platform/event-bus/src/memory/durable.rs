//! Durable consumers of the in-memory bus: the same semantics as on NATS
//! (named, shared by instances, explicit ack, nack with delay, term, in
//! progress, ack wait, bounded deliveries), in process and not durable across
//! restarts.
//!
//! A named consumer is created by the first `consume` with its name and
//! lives until [`InMemoryBus::delete_consumer`], or until it has had no open
//! instance for [`MemoryConfig::durable_inactive_threshold`](super::MemoryConfig::durable_inactive_threshold)
//! (5 minutes by default, like JetStream's `inactive_threshold`): it keeps
//! collecting matching messages while no instance is open, so dropping and
//! re-opening within the threshold resumes where it was. A new consumer
//! starts with new messages, or from the bus's log (`StartPosition::All`,
//! `Sequence(n)`; see the `log` module). Its backlog is bounded
//! ([`DURABLE_CAPACITY`]); beyond it, publishers of matching subjects wait, as
//! for any lossless subscriber.

use super::log::Log;
use super::{InMemoryBus, Inner, MemorySubscription, Overflow, SubscribeOptions};
use crate::consumer::{AckKind, Acker, ConsumerConfig, ConsumerStream, Delivery, StartPosition};
use crate::error::{BusError, ErrorKind};
use crate::message::BusMessage;
use async_trait::async_trait;
use futures::task::{ArcWake, AtomicWaker};
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// Messages a durable consumer holds (queued, delayed or in flight) before
/// publishers of matching subjects wait.
pub const DURABLE_CAPACITY: usize = 1 << 20;

pub(crate) struct Durable {
    name: String,
    filter: String,
    state: Mutex<State>,
    wake_all: Arc<WakeAll>,
    /// The bus, to delete the consumer once it has been inactive too long.
    bus: Weak<Inner>,
}

struct Settings {
    ack_wait: Duration,
    max_ack_pending: usize,
}

/// `now + d`, or a far-future instant (about 30 years ahead: never, in
/// practice) when `d` is too large to add: a huge ack wait, nack delay or
/// backoff step must not panic.
pub(crate) fn later(now: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    now.checked_add(d.min(FAR)).unwrap_or(now)
}

struct Entry {
    msg: BusMessage,
    deliveries: u32,
}

struct InFlight {
    entry: Entry,
    deadline: Instant,
}

/// What a consumer holds. Each delivery and each answer costs O(log n) at
/// most, and nothing is scanned per poll.
///
/// A message is held until it is acknowledged, terminated or dead-lettered,
/// however often it is delivered: the shared dead-letter layer decides when
/// to give up on it, and while a dead letter cannot be published the message
/// stays here, delivered again after each failure's delay (never dropped).
struct State {
    feed: MemorySubscription,
    feed_closed: bool,
    /// Feed messages up to this sequence were replayed from the log (or
    /// come before the consumer's start) and are skipped.
    skip_through: u64,
    /// Open instances.
    instances: usize,
    /// Since when no instance is open (the consumer expires after the
    /// bus's `durable_inactive_threshold`).
    idle_since: Option<Instant>,
    settings: Settings,
    /// Never delivered yet, in sequence order.
    fresh: VecDeque<Entry>,
    /// To be delivered again now (nacked, or its ack wait ran out), by sequence.
    again: BTreeMap<u64, Entry>,
    /// Nacked with a delay, by sequence; `delays` orders them by due time.
    delayed: FxHashMap<u64, (Instant, Entry)>,
    delays: BTreeSet<(Instant, u64)>,
    /// Delivered, not yet answered, by sequence.
    in_flight: FxHashMap<u64, InFlight>,
    /// The in-flight deliveries by ack deadline.
    deadlines: BTreeSet<(Instant, u64)>,
    /// Messages finished (acknowledged, terminated or dead-lettered): the
    /// consumer's position, for lag monitoring.
    finished: u64,
    /// Deliveries that were not the message's first.
    redelivered: u64,
    /// When a message was last delivered.
    last_delivery: Option<Instant>,
}

impl State {
    /// Messages held (queued, to deliver again, delayed or in flight).
    fn held(&self) -> usize {
        self.fresh.len() + self.again.len() + self.delayed.len() + self.in_flight.len()
    }

    /// Starts the ack wait of a delivery.
    fn send(&mut self, seq: u64, entry: Entry, deadline: Instant) {
        self.deadlines.insert((deadline, seq));
        self.in_flight.insert(seq, InFlight { entry, deadline });
    }

    /// Ends the ack wait of `seq`: the delivery, if it was in flight.
    fn settle(&mut self, seq: u64) -> Option<InFlight> {
        let f = self.in_flight.remove(&seq)?;
        self.deadlines.remove(&(f.deadline, seq));
        Some(f)
    }

    /// Puts `seq` back to be delivered again, at once or from `at` on.
    fn redeliver(&mut self, seq: u64, entry: Entry, at: Option<Instant>) {
        match at {
            Some(at) => {
                self.delays.insert((at, seq));
                self.delayed.insert(seq, (at, entry));
            }
            None => {
                self.again.insert(seq, entry);
            }
        }
    }

    /// Removes `seq` wherever it waits to be delivered again; whether it did.
    fn forget(&mut self, seq: u64) -> bool {
        if self.again.remove(&seq).is_some() {
            return true;
        }
        match self.delayed.remove(&seq) {
            Some((at, _)) => {
                self.delays.remove(&(at, seq));
                true
            }
            None => false,
        }
    }

    /// Deliveries whose ack wait ran out, and delayed messages now due, go
    /// back to be delivered again.
    fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, seq)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            if let Some(f) = self.settle(seq) {
                self.again.insert(seq, f.entry);
            }
        }
        while let Some(&(at, seq)) = self.delays.first() {
            if at > now {
                break;
            }
            self.delays.pop_first();
            if let Some((_, entry)) = self.delayed.remove(&seq) {
                self.again.insert(seq, entry);
            }
        }
    }

    /// The next message to deliver now, the lowest sequence first (call
    /// [`expire`](Self::expire) first).
    fn next(&mut self) -> Option<(u64, Entry)> {
        let again = self.again.first_key_value().map(|(seq, _)| *seq);
        let fresh = self.fresh.front().map(|e| e.msg.sequence);
        match (again, fresh) {
            (Some(a), Some(f)) if f < a => self.take_fresh(),
            (Some(_), _) => self.again.pop_first(),
            (None, Some(_)) => self.take_fresh(),
            (None, None) => None,
        }
    }

    fn take_fresh(&mut self) -> Option<(u64, Entry)> {
        let e = self.fresh.pop_front()?;
        Some((e.msg.sequence, e))
    }

    /// When the instance must look again on its own: the next ack deadline
    /// or delayed message due.
    fn next_wake(&self) -> Option<Instant> {
        let deadline = self.deadlines.first().map(|(t, _)| *t);
        let delay = self.delays.first().map(|(t, _)| *t);
        match (deadline, delay) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Wakes every instance waiting on the consumer.
///
/// Each open instance has its own [`AtomicWaker`], registered on every poll
/// (which replaces, rather than adds, its waker: a task's waker may not
/// compare equal to its own clone, so a plain list of wakers kept growing
/// between wakes).
#[derive(Default)]
struct WakeAll {
    instances: Mutex<Vec<Arc<AtomicWaker>>>,
}

impl WakeAll {
    fn add(&self) -> Arc<AtomicWaker> {
        let w = Arc::new(AtomicWaker::new());
        self.instances.lock().push(w.clone());
        w
    }

    fn remove(&self, w: &Arc<AtomicWaker>) {
        self.instances.lock().retain(|x| !Arc::ptr_eq(x, w));
    }

    fn wake_waiters(&self) {
        for w in self.instances.lock().iter() {
            w.wake();
        }
    }
}

impl ArcWake for WakeAll {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.wake_waiters();
    }
}

fn settings(config: &ConsumerConfig) -> Settings {
    Settings {
        ack_wait: config.ack_wait,
        max_ack_pending: config.max_ack_pending,
    }
}

impl InMemoryBus {
    /// [`EventBus::open_consumer`](crate::EventBus::open_consumer): the raw
    /// consumer, without dead letters.
    pub(crate) fn open_consumer_inner(
        &self,
        config: &ConsumerConfig,
    ) -> Result<ConsumerStream, BusError> {
        crate::consumer::validate_config(config)?;
        Ok(Box::pin(self.open_instance(config)?))
    }

    /// Opens an instance of the durable consumer `config` names (creating
    /// the consumer if needed): its raw deliveries, without dead letters.
    fn open_instance(&self, config: &ConsumerConfig) -> Result<Instance, BusError> {
        self.ensure_open()?;
        expire_durables(&self.inner, None);
        let durable = {
            let mut durables = self.inner.durables.lock();
            match durables.get(&config.name) {
                Some(d) if d.filter != config.filter => {
                    return Err(BusError::new(
                        ErrorKind::Conflict,
                        format!(
                            "consumer {:?} already exists with filter {:?}, not {:?}; use another name or delete it",
                            config.name, d.filter, config.filter
                        ),
                    ))
                }
                Some(d) => {
                    let mut st = d.state.lock();
                    st.settings = settings(config);
                    st.instances += 1;
                    st.idle_since = None;
                    drop(st);
                    d.clone()
                }
                None => {
                    let from = match config.start {
                        StartPosition::New => None,
                        StartPosition::All => Some(None),
                        StartPosition::Sequence(n) => Some(Some(n)),
                    };
                    if from.is_some() && !Log::enabled(&self.inner.config) {
                        return Err(BusError::new(
                            ErrorKind::Unsupported,
                            format!(
                                "consumer {:?}: {:?} is not supported by the memory backend when its log is disabled \
                                 (memory.log_max_messages = {}, memory.log_max_bytes = {})",
                                config.name,
                                config.start,
                                self.inner.config.log_max_messages,
                                self.inner.config.log_max_bytes
                            ),
                        ));
                    }
                    // Record from now on (if not yet), register the feed,
                    // then read the log: what the feed brings up to the log's
                    // last message is skipped (see `Inner::logging`).
                    self.start_logging();
                    let feed = self.subscribe_with(
                        &config.filter,
                        SubscribeOptions {
                            capacity: DURABLE_CAPACITY,
                            overflow: Overflow::Block,
                        },
                    )?;
                    let (fresh, skip_through) = match from {
                        None => (VecDeque::new(), 0),
                        Some(from) => {
                            let log = self.inner.log.lock();
                            let last_seq = self.inner.seq.load(Ordering::Relaxed);
                            let replay = log.replay(&config.name, &config.filter, from, last_seq)?;
                            let fresh = replay
                                .messages
                                .into_iter()
                                .map(|msg| Entry { msg, deliveries: 0 })
                                .collect();
                            (fresh, replay.skip_through)
                        }
                    };
                    let d = Arc::new(Durable {
                        name: config.name.clone(),
                        filter: config.filter.clone(),
                        state: Mutex::new(State {
                            feed,
                            feed_closed: false,
                            instances: 1,
                            idle_since: None,
                            settings: settings(config),
                            skip_through,
                            fresh,
                            again: BTreeMap::new(),
                            delayed: FxHashMap::default(),
                            delays: BTreeSet::new(),
                            in_flight: FxHashMap::default(),
                            deadlines: BTreeSet::new(),
                            finished: 0,
                            redelivered: 0,
                            last_delivery: None,
                        }),
                        wake_all: Arc::new(WakeAll::default()),
                        bus: Arc::downgrade(&self.inner),
                    });
                    durables.insert(config.name.clone(), d.clone());
                    d
                }
            }
        };
        Ok(Instance {
            waker: durable.wake_all.add(),
            durable,
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
        })
    }

    /// Deletes the named durable consumer and what it holds; open instances end.
    /// Returns whether it existed.
    pub fn delete_consumer(&self, name: &str) -> bool {
        let removed = self.inner.durables.lock().remove(name);
        match removed {
            Some(d) => {
                d.state.lock().feed_closed = true;
                d.wake_all.wake_waiters();
                true
            }
            None => false,
        }
    }
}

/// One open instance of a durable consumer.
struct Instance {
    durable: Arc<Durable>,
    /// Where this instance's task waits (see [`WakeAll`]).
    waker: Arc<AtomicWaker>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Stream for Instance {
    type Item = Result<Delivery, BusError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let durable = self.durable.clone();
        let now = Instant::now();
        // Register first: polling the feed may wake the waiters right away
        // (an active subscription re-polls itself instead of parking).
        self.waker.register(cx.waker());
        let mut st = durable.state.lock();
        // Take new messages from the feed (waking every instance when more come).
        let feed_waker = futures::task::waker(durable.wake_all.clone());
        let mut feed_cx = Context::from_waker(&feed_waker);
        while !st.feed_closed && st.held() < DURABLE_CAPACITY {
            match st.feed.poll_next_unpin(&mut feed_cx) {
                Poll::Ready(Some(msg)) if msg.sequence <= st.skip_through => {}
                Poll::Ready(Some(msg)) => st.fresh.push_back(Entry { msg, deliveries: 0 }),
                Poll::Ready(None) => st.feed_closed = true,
                Poll::Pending => break,
            }
        }
        st.expire(now);
        if st.feed_closed && st.held() == 0 {
            return Poll::Ready(None);
        }
        // The first message that may be delivered now.
        if st.in_flight.len() < st.settings.max_ack_pending {
            if let Some((seq, mut entry)) = st.next() {
                entry.deliveries = entry.deliveries.saturating_add(1);
                let deliveries = entry.deliveries;
                if deliveries > 1 {
                    st.redelivered += 1;
                }
                st.last_delivery = Some(now);
                let msg = entry.msg.clone();
                let deadline = later(now, st.settings.ack_wait);
                st.send(seq, entry, deadline);
                drop(st);
                let acker = MemoryAcker {
                    durable,
                    seq,
                    deliveries,
                };
                return Poll::Ready(Some(Ok(Delivery::new(msg, deliveries, Box::new(acker)))));
            }
        }
        let next_wake = st.next_wake();
        drop(st);
        if let Some(at) = next_wake {
            self.sleep.as_mut().reset(at);
            if self.sleep.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.durable.wake_all.remove(&self.waker);
        let idle_since = {
            let mut st = self.durable.state.lock();
            st.instances = st.instances.saturating_sub(1);
            if st.instances > 0 {
                return;
            }
            let now = Instant::now();
            st.idle_since = Some(now);
            now
        };
        // The last instance closed: expire the consumer unless one opens
        // within the threshold. (Without a runtime to time it, the next
        // `consume` on the bus collects it.)
        let (Some(bus), Ok(runtime)) = (
            self.durable.bus.upgrade(),
            tokio::runtime::Handle::try_current(),
        ) else {
            return;
        };
        let at = later(idle_since, bus.config.durable_inactive_threshold);
        let bus = Arc::downgrade(&bus);
        let durable = Arc::downgrade(&self.durable);
        runtime.spawn(async move {
            tokio::time::sleep_until(at).await;
            if let (Some(bus), Some(durable)) = (bus.upgrade(), durable.upgrade()) {
                expire_durables(&bus, Some(&durable));
            }
        });
    }
}

/// Deletes `only` (or every durable consumer) if it has had no open
/// instance for the bus's `durable_inactive_threshold`, as JetStream does
/// with an `inactive_threshold`: an abandoned consumer would otherwise hold
/// its backlog, and then hold up the publishers of its subjects, forever.
fn expire_durables(bus: &Inner, only: Option<&Arc<Durable>>) {
    let threshold = bus.config.durable_inactive_threshold;
    let now = Instant::now();
    let expired = |d: &Arc<Durable>| {
        let st = d.state.lock();
        st.instances == 0 && st.idle_since.is_some_and(|t| later(t, threshold) <= now)
    };
    let removed: Vec<Arc<Durable>> = {
        let mut durables = bus.durables.lock();
        let names: Vec<String> = durables
            .values()
            .filter(|d| only.is_none_or(|o| Arc::ptr_eq(o, d)) && expired(d))
            .map(|d| d.name.clone())
            .collect();
        names.iter().filter_map(|n| durables.remove(n)).collect()
    };
    for d in removed {
        tracing::info!(
            consumer = %d.name,
            filter = %d.filter,
            inactive_threshold = ?threshold,
            "in-memory durable consumer deleted after having no open instance for its inactive threshold"
        );
        d.state.lock().feed_closed = true;
        // Dropping the last reference drops its feed subscription, which
        // releases any publisher waiting for room in it.
    }
}

use std::future::Future;

struct MemoryAcker {
    durable: Arc<Durable>,
    seq: u64,
    deliveries: u32,
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn answer(&self, kind: AckKind) -> Result<(), BusError> {
        let d = &self.durable;
        let mut st = d.state.lock();
        let current = st
            .in_flight
            .get(&self.seq)
            .is_some_and(|f| f.entry.deliveries == self.deliveries);
        // Whether an instance may be waiting for what this answer frees: a
        // delivery slot (max ack pending reached) or backlog room (capacity
        // reached), or a message to deliver again.
        let full =
            st.in_flight.len() >= st.settings.max_ack_pending || st.held() >= DURABLE_CAPACITY;
        let wake = match kind {
            AckKind::Ack | AckKind::Term { .. } | AckKind::DeadLetter { .. } => {
                let in_flight = st.settle(self.seq).is_some();
                let again = st.forget(self.seq);
                if in_flight || again {
                    st.finished += 1;
                }
                (in_flight || again) && full
            }
            AckKind::Nack { delay, .. } if current => {
                if let Some(f) = st.settle(self.seq) {
                    let at = delay.map(|d| later(Instant::now(), d));
                    st.redeliver(self.seq, f.entry, at);
                }
                true
            }
            AckKind::InProgress if current => {
                let deadline = later(Instant::now(), st.settings.ack_wait);
                if let Some(f) = st.settle(self.seq) {
                    st.send(self.seq, f.entry, deadline);
                }
                // An instance sleeping until the old deadline wakes, finds
                // nothing expired and sleeps until the new one.
                false
            }
            // A stale answer (the message was redelivered since) is ignored, as on NATS.
            _ => false,
        };
        drop(st);
        if wake {
            d.wake_all.wake_waiters();
        }
        Ok(())
    }
}

impl Durable {
    /// The consumer's state now, for lag monitoring.
    pub(crate) fn state(&self) -> crate::consumer::ConsumerState {
        let st = self.state.lock();
        let now = Instant::now();
        let alive = st.instances > 0;
        let last = if alive {
            Some(now)
        } else {
            match (st.last_delivery, st.idle_since) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            }
        };
        crate::consumer::ConsumerState {
            name: self.name.clone(),
            filter: self.filter.clone(),
            position: st.finished,
            pending: (st.fresh.len() + st.again.len() + st.delayed.len()) as u64,
            ack_pending: st.in_flight.len() as u64,
            redelivered: st.redelivered,
            alive,
            idle_for: last.map(|t| now.saturating_duration_since(t)),
        }
    }
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable")
            .field("name", &self.name)
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryConfig;
    use crate::EventBusExt;

    /// Every poll registers the task's waker; the consumer keeps one per
    /// open instance however long it runs without a wake, and forgets it
    /// when the instance is dropped.
    #[tokio::test]
    async fn one_registered_waker_per_instance() {
        let bus = InMemoryBus::new();
        let mut a = bus.consume(ConsumerConfig::new("c", "t.>")).await.unwrap();
        let b = bus.consume(ConsumerConfig::new("c", "t.>")).await.unwrap();
        let durable = bus.inner.durables.lock().get("c").cloned().unwrap();
        for i in 0..100u32 {
            bus.publish("t.x", i.to_be_bytes().to_vec()).await.unwrap();
            let d = a.next().await.unwrap().unwrap();
            d.ack().await.unwrap();
        }
        assert_eq!(durable.wake_all.instances.lock().len(), 2);
        drop(b);
        assert_eq!(durable.wake_all.instances.lock().len(), 1);
        drop(a);
        assert!(durable.wake_all.instances.lock().is_empty());
    }

    /// In progress restarts the ack wait; the delivery is redelivered only
    /// once the restarted wait runs out.
    #[tokio::test(start_paused = true)]
    async fn in_progress_restarts_the_ack_wait() {
        let bus = InMemoryBus::new();
        let config = ConsumerConfig::new("c", "t.>").ack_wait(Duration::from_secs(10));
        let mut c = bus.consume(config).await.unwrap();
        bus.publish("t.x", b"1".to_vec()).await.unwrap();
        let d = c.next().await.unwrap().unwrap();
        tokio::time::advance(Duration::from_secs(8)).await;
        d.in_progress().await.unwrap();
        // 16 s after the delivery, 8 s after "in progress".
        tokio::time::advance(Duration::from_secs(8)).await;
        assert!(
            futures::poll!(c.next()).is_pending(),
            "redelivered too early"
        );
        // 11 s after "in progress".
        tokio::time::advance(Duration::from_secs(3)).await;
        let again = tokio::time::timeout(Duration::from_secs(1), c.next())
            .await
            .expect("redelivered once the restarted wait ran out")
            .unwrap()
            .unwrap();
        assert_eq!(again.delivery_count(), 2);
        // Acknowledged (by either delivery's acker, as on NATS): not delivered again.
        d.ack().await.unwrap();
        again.ack().await.unwrap();
        assert!(futures::poll!(c.next()).is_pending());
    }

    async fn next_within(c: &mut ConsumerStream, wait: Duration) -> Option<Delivery> {
        match tokio::time::timeout(wait, c.next()).await {
            Ok(Some(Ok(d))) => Some(d),
            Ok(other) => panic!("consumer failed or ended: {other:?}"),
            Err(_) => None,
        }
    }

    /// The largest accepted ack wait, backoff step and
    /// `max_deliver` (and a nack delay of `Duration::MAX`, capped) never
    /// panic on `Instant + Duration` or wrap `max_deliver`; larger limits are
    /// `Config` errors naming the field.
    #[tokio::test(start_paused = true)]
    async fn huge_durations_and_counts_saturate() {
        use crate::consumer::{MAX_DELIVER, MAX_WAIT};
        let bus = InMemoryBus::new();
        for (field, config) in [
            (
                "ack_wait",
                ConsumerConfig::new("x", "h.>").ack_wait(Duration::MAX),
            ),
            (
                "max_deliver",
                ConsumerConfig::new("x", "h.>").max_deliver(u32::MAX),
            ),
            (
                "backoff",
                ConsumerConfig::new("x", "h.>").backoff(vec![Duration::MAX]),
            ),
        ] {
            let err = bus.consume(config).await.err().expect(field);
            assert_eq!(err.kind(), ErrorKind::Config, "{err}");
            assert!(err.to_string().contains(field), "{err}");
        }
        let config = ConsumerConfig::new("huge", "h.>")
            .ack_wait(MAX_WAIT)
            .max_deliver(MAX_DELIVER)
            .backoff(vec![MAX_WAIT]);
        let mut c = bus.consume(config).await.unwrap();
        for p in [b"a", b"b", b"c"] {
            bus.publish("h.x", p.to_vec()).await.unwrap();
        }
        let a = c.next().await.unwrap().unwrap();
        a.in_progress().await.unwrap();
        let b = c.next().await.unwrap().unwrap();
        b.nack(Some(Duration::MAX)).await.unwrap();
        let cc = c.next().await.unwrap().unwrap();
        cc.nack(None).await.unwrap(); // the backoff step: MAX_WAIT
        let day = Duration::from_secs(86_400);
        assert!(
            next_within(&mut c, day).await.is_none(),
            "nothing is due within a day"
        );
        a.ack().await.unwrap();
        // Nack without a delay and no backoff: delivered again, and again.
        let mut c = bus
            .consume(ConsumerConfig::new("many", "h.>").max_deliver(MAX_DELIVER))
            .await
            .unwrap();
        bus.publish("h.y", b"again".to_vec()).await.unwrap();
        for n in 1..=10 {
            let d = c.next().await.unwrap().unwrap();
            assert_eq!(d.delivery_count(), n);
            d.nack(None).await.unwrap();
        }
    }

    #[test]
    fn later_saturates() {
        let now = Instant::now();
        assert!(later(now, Duration::MAX) > now + Duration::from_secs(86_400 * 365 * 10));
        assert_eq!(
            later(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
    }

    /// A delivery beyond `max_deliver` is still tracked: its nack (with its
    /// delay) brings it back, its ack ends it (it used to be handed out
    /// untracked, and lost).
    #[tokio::test(start_paused = true)]
    async fn deliveries_beyond_the_limit_stay_tracked() {
        let bus = InMemoryBus::new();
        let config = ConsumerConfig::new("raw", "r.>").max_deliver(1);
        let mut raw = bus.open_instance(&config).unwrap();
        bus.publish("r.x", b"poison".to_vec()).await.unwrap();
        let mut nacked_at: Option<Instant> = None;
        for n in 1..=20u32 {
            let d = tokio::time::timeout(Duration::from_secs(60), raw.next())
                .await
                .unwrap_or_else(|_| panic!("delivery {n} never came: the message was dropped"))
                .unwrap()
                .unwrap();
            assert_eq!(d.delivery_count(), n);
            if let Some(at) = nacked_at {
                assert!(
                    at.elapsed() >= Duration::from_secs(1),
                    "not before its delay"
                );
            }
            nacked_at = Some(Instant::now());
            d.nack(Some(Duration::from_secs(1))).await.unwrap();
        }
        let durable = bus.inner.durables.lock().get("raw").cloned().unwrap();
        assert_eq!(durable.state.lock().held(), 1, "still held");
        let d = raw.next().await.unwrap().unwrap();
        d.ack().await.unwrap();
        assert_eq!(durable.state.lock().held(), 0);
    }

    /// A dead letter that can never be published (even without its payload,
    /// the `Bus-Dlq-*` headers alone are over a tiny `max_payload`) leaves
    /// the message pending, reported as an error on each try, for as many
    /// deliveries as it takes; it is never silently dropped.
    #[tokio::test(start_paused = true)]
    async fn a_failing_dead_letter_never_drops_the_message() {
        let bus = InMemoryBus::with_config(MemoryConfig {
            max_payload: 64,
            ..MemoryConfig::default()
        });
        let mut dead = bus.subscribe("dlq.>").await.unwrap();
        let config = ConsumerConfig::new("poison", "p.>")
            .max_deliver(1)
            .ack_wait(Duration::from_secs(1));
        let mut c = bus.consume(config).await.unwrap();
        bus.publish("p.x", vec![b'x'; 10]).await.unwrap();
        let d = c.next().await.unwrap().unwrap();
        let err = d
            .nack(None)
            .await
            .expect_err("the dead letter does not fit");
        assert_eq!(err.kind(), ErrorKind::PayloadTooLarge, "{err}");
        let mut failures = 0;
        while failures < 20 {
            match tokio::time::timeout(Duration::from_secs(60), c.next()).await {
                Ok(Some(Err(e))) => {
                    assert_eq!(e.kind(), ErrorKind::PayloadTooLarge, "{e}");
                    failures += 1;
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => panic!("after {failures} failed dead letters the message is gone"),
            }
        }
        let durable = bus.inner.durables.lock().get("poison").cloned().unwrap();
        assert_eq!(durable.state.lock().held(), 1, "still held");
        assert!(futures::poll!(dead.next()).is_pending(), "no dead letter");
    }

    /// Delayed nacks are not scanned on each poll. With 20,000
    /// messages nacked for an hour, delivering 20,000 fresh ones takes
    /// O(n log n), not O(n^2) (the old scan took tens of seconds here).
    #[tokio::test]
    async fn delayed_nacks_are_not_scanned_per_poll() {
        let n = 20_000u32;
        let bus = InMemoryBus::new();
        let config = ConsumerConfig::new("delays", "l.>").max_ack_pending(usize::MAX / 2);
        let mut raw = bus.open_instance(&config).unwrap();
        let started = std::time::Instant::now();
        for i in 0..n {
            bus.publish("l.x", i.to_be_bytes().to_vec()).await.unwrap();
        }
        for _ in 0..n {
            let d = raw.next().await.unwrap().unwrap();
            d.nack(Some(Duration::from_secs(3600))).await.unwrap();
        }
        for i in 0..n {
            bus.publish("l.y", i.to_be_bytes().to_vec()).await.unwrap();
            let d = raw.next().await.unwrap().unwrap();
            assert_eq!(d.subject.as_str(), "l.y");
            d.ack().await.unwrap();
        }
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(8),
            "{n} deliveries beside {n} delayed nacks took {took:?}"
        );
        let durable = bus.inner.durables.lock().get("delays").cloned().unwrap();
        assert_eq!(durable.state.lock().held(), n as usize);
    }

    fn durable_names(bus: &InMemoryBus) -> Vec<String> {
        bus.inner.durables.lock().keys().cloned().collect()
    }

    /// A durable consumer with no open instance for the inactive
    /// threshold (5 minutes by default) is deleted, its feed subscription
    /// with it; re-opening within the threshold resumes and restarts the clock.
    #[tokio::test(start_paused = true)]
    async fn inactive_durable_consumers_expire() {
        let bus = InMemoryBus::new();
        assert_eq!(
            bus.config().durable_inactive_threshold,
            Duration::from_secs(300)
        );
        let config = ConsumerConfig::new("gone", "e.>");
        let c = bus.consume(config.clone()).await.unwrap();
        drop(c);
        bus.publish("e.x", b"kept".to_vec()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(240)).await;
        assert_eq!(durable_names(&bus), vec!["gone".to_string()]);
        // Re-opened within the threshold: resumes where it was.
        let mut c = bus.consume(config.clone()).await.unwrap();
        let d = c.next().await.unwrap().unwrap();
        assert_eq!(&d.payload[..], b"kept");
        d.ack().await.unwrap();
        // Open longer than the threshold: kept.
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(durable_names(&bus), vec!["gone".to_string()]);
        drop(c);
        tokio::time::sleep(Duration::from_secs(240)).await;
        assert_eq!(durable_names(&bus), vec!["gone".to_string()]);
        bus.publish("e.x", b"lost with it".to_vec()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(
            durable_names(&bus).is_empty(),
            "expired 5 minutes after its last instance closed"
        );
        assert_eq!(bus.subscription_count(), 0, "its feed subscription is gone");
        // A new consumer of that name starts afresh.
        let mut c = bus.consume(config).await.unwrap();
        bus.publish("e.x", b"new".to_vec()).await.unwrap();
        let d = c.next().await.unwrap().unwrap();
        assert_eq!(&d.payload[..], b"new");
    }

    /// The threshold is configurable; an expired consumer no longer takes
    /// (nor holds up) what is published on its subjects.
    #[tokio::test(start_paused = true)]
    async fn inactive_threshold_is_configurable() {
        let bus = InMemoryBus::with_config(MemoryConfig {
            durable_inactive_threshold: Duration::from_secs(1),
            ..MemoryConfig::default()
        });
        let c = bus
            .consume(ConsumerConfig::new("short", "s.>"))
            .await
            .unwrap();
        drop(c);
        let mut sub = bus.subscribe("s.>").await.unwrap();
        tokio::time::sleep(Duration::from_millis(1001)).await;
        assert!(durable_names(&bus).is_empty());
        bus.publish("s.x", b"1".to_vec()).await.unwrap();
        assert_eq!(&sub.next().await.unwrap().payload[..], b"1");
        // Without a runtime timer (e.g. a threshold passed while nothing
        // ran), the next consume collects expired consumers too.
        let c = bus
            .consume(ConsumerConfig::new("other", "o.>"))
            .await
            .unwrap();
        drop(c);
        let durable = bus.inner.durables.lock().get("other").cloned().unwrap();
        durable.state.lock().idle_since = Some(Instant::now() - Duration::from_secs(2));
        let _keep = bus
            .consume(ConsumerConfig::new("third", "t.>"))
            .await
            .unwrap();
        assert_eq!(durable_names(&bus), vec!["third".to_string()]);
    }
}
