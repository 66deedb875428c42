//! Durable consumers of the in-memory bus: the same semantics as on NATS
//! (named, shared by instances, explicit ack, nack with delay, term, in
//! progress, ack wait, bounded deliveries), in process and not durable across
//! restarts.
//!
//! A named consumer is created by the first `consume` with its name and
//! lives as long as the bus (or until [`InMemoryBus::delete_consumer`]): it
//! keeps collecting matching messages while no instance is open, so dropping
//! and re-opening resumes where it was. Its backlog is bounded
//! ([`DURABLE_CAPACITY`]); beyond it, publishers of matching subjects wait, as
//! for any lossless subscriber.

use super::{InMemoryBus, MemorySubscription, Overflow, SubscribeOptions};
use crate::consumer::{
    AckKind, Acker, ConsumerConfig, ConsumerStream, Delivery, StartPosition, DLQ_SPARE_DELIVERIES,
};
use crate::error::{BusError, ErrorKind};
use crate::message::BusMessage;
use async_trait::async_trait;
use futures::task::{ArcWake, AtomicWaker};
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
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
}

struct Settings {
    ack_wait: Duration,
    /// Deliveries after which a message is no longer delivered (max_deliver + spares).
    limit: u32,
    max_ack_pending: usize,
}

struct Entry {
    msg: BusMessage,
    deliveries: u32,
    not_before: Option<Instant>,
}

struct InFlight {
    entry: Entry,
    deadline: Instant,
}

/// What a consumer holds. Each delivery and each answer costs O(log n) on
/// small keys at most: whole messages are never shifted around in ordered
/// maps, and nothing is scanned per poll.
struct State {
    feed: MemorySubscription,
    feed_closed: bool,
    settings: Settings,
    /// Never delivered yet, in sequence order.
    fresh: VecDeque<Entry>,
    /// To be delivered again (nacked, or its ack wait ran out), by sequence.
    again: BTreeMap<u64, Entry>,
    /// Delivered, not yet answered, by sequence.
    in_flight: FxHashMap<u64, InFlight>,
    /// The in-flight deliveries by ack deadline.
    deadlines: BTreeSet<(Instant, u64)>,
}

impl State {
    /// Messages held (queued, to deliver again, or in flight).
    fn held(&self) -> usize {
        self.fresh.len() + self.again.len() + self.in_flight.len()
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

    /// Deliveries whose ack wait ran out go back to be delivered again.
    fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, seq)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            if let Some(f) = self.settle(seq) {
                self.again.insert(seq, f.entry);
            }
        }
    }

    /// The next message to deliver now, the lowest sequence first; else
    /// when one becomes deliverable (a nack's delay), if ever.
    fn next(&mut self, now: Instant) -> Result<(u64, Entry), Option<Instant>> {
        let mut not_before: Option<Instant> = None;
        let mut again = None;
        for (seq, e) in &self.again {
            match e.not_before {
                Some(t) if t > now => not_before = Some(not_before.map_or(t, |w| w.min(t))),
                _ => {
                    again = Some(*seq);
                    break;
                }
            }
        }
        let fresh = self.fresh.front().map(|e| e.msg.sequence);
        match (again, fresh) {
            (Some(a), Some(f)) if f < a => Ok(self.take_fresh()),
            (Some(a), _) => Ok((a, self.again.remove(&a).expect("chosen from again"))),
            (None, Some(_)) => Ok(self.take_fresh()),
            (None, None) => Err(not_before),
        }
    }

    fn take_fresh(&mut self) -> (u64, Entry) {
        let e = self.fresh.pop_front().expect("a fresh message");
        (e.msg.sequence, e)
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
        limit: config.max_deliver + DLQ_SPARE_DELIVERIES,
        max_ack_pending: config.max_ack_pending,
    }
}

impl InMemoryBus {
    pub(crate) async fn consume_inner(
        &self,
        config: ConsumerConfig,
    ) -> Result<ConsumerStream, BusError> {
        crate::consumer::validate_config(&config)?;
        if let StartPosition::Sequence(_) = config.start {
            return Err(BusError::unsupported(
                "starting a durable consumer at a sequence (the in-memory bus keeps no log)",
                "memory",
            ));
        }
        self.ensure_open()?;
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
                    d.state.lock().settings = settings(&config);
                    d.clone()
                }
                None => {
                    let feed = self.subscribe_with(
                        &config.filter,
                        SubscribeOptions {
                            capacity: DURABLE_CAPACITY,
                            overflow: Overflow::Block,
                        },
                    )?;
                    let d = Arc::new(Durable {
                        name: config.name.clone(),
                        filter: config.filter.clone(),
                        state: Mutex::new(State {
                            feed,
                            feed_closed: false,
                            settings: settings(&config),
                            fresh: VecDeque::new(),
                            again: BTreeMap::new(),
                            in_flight: FxHashMap::default(),
                            deadlines: BTreeSet::new(),
                        }),
                        wake_all: Arc::new(WakeAll::default()),
                    });
                    durables.insert(config.name.clone(), d.clone());
                    d
                }
            }
        };
        let raw: ConsumerStream = Box::pin(Instance {
            waker: durable.wake_all.add(),
            durable,
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
        });
        Ok(crate::consumer::with_dead_letters(
            raw,
            Arc::new(self.clone()),
            &config,
        ))
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
                Poll::Ready(Some(msg)) => st.fresh.push_back(Entry {
                    msg,
                    deliveries: 0,
                    not_before: None,
                }),
                Poll::Ready(None) => st.feed_closed = true,
                Poll::Pending => break,
            }
        }
        st.expire(now);
        if st.feed_closed && st.held() == 0 {
            return Poll::Ready(None);
        }
        // The first message that may be delivered now.
        let mut next_wake: Option<Instant> = st.deadlines.first().map(|(t, _)| *t);
        if st.in_flight.len() < st.settings.max_ack_pending {
            match st.next(now) {
                Ok((seq, mut entry)) => {
                    entry.deliveries += 1;
                    entry.not_before = None;
                    let deliveries = entry.deliveries;
                    let msg = entry.msg.clone();
                    if deliveries <= st.settings.limit {
                        let deadline = now + st.settings.ack_wait;
                        st.send(seq, entry, deadline);
                    }
                    drop(st);
                    let acker = MemoryAcker {
                        durable,
                        seq,
                        deliveries,
                    };
                    return Poll::Ready(Some(Ok(Delivery::new(msg, deliveries, Box::new(acker)))));
                }
                Err(Some(t)) => next_wake = Some(next_wake.map_or(t, |w| w.min(t))),
                Err(None) => {}
            }
        }
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
                let again = st.again.remove(&self.seq).is_some();
                (in_flight || again) && full
            }
            AckKind::Nack { delay, .. } if current => {
                if let Some(mut f) = st.settle(self.seq) {
                    f.entry.not_before = delay.map(|d| Instant::now() + d);
                    st.again.insert(self.seq, f.entry);
                }
                true
            }
            AckKind::InProgress if current => {
                let deadline = Instant::now() + st.settings.ack_wait;
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
    use crate::bus::EventBus;

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
}
