//! The per-subscriber queue of the in-memory bus.
//!
//! One bounded queue per subscription: a `VecDeque` behind a short
//! uncontended-in-practice mutex, a waker for the subscriber and the wakers of
//! publishers waiting for room. The subscriber takes the **whole** queue in
//! one lock (swapping it with its empty local buffer), so under load each lock
//! hands over a batch and the per-message cost is a push and a pop. This is
//! what lets the bus beat a plain `tokio::sync::mpsc` channel even after
//! routing (see the crate's benchmarks).
//!
//! Why not `tokio::sync::broadcast` (as the first spec draft said): a lagging
//! broadcast receiver silently skips messages (`RecvError::Lagged`), and one
//! broadcast channel per subject cannot serve wildcard subscriptions without
//! fanning out again. Here a full queue instead makes the publisher of a
//! matching subject wait ([`Overflow::Block`], the default), or drops and
//! counts ([`Overflow::DropNewest`], [`Overflow::DropOldest`]).

use crate::message::BusMessage;
use crate::subject::SubId;
use futures::Stream;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};

/// What a subscription does when its queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Lossless: publishers of matching subjects wait until there is room.
    /// Publishers of other subjects are not affected.
    #[default]
    Block,
    /// Drop the message being published (for this subscriber only) and count it.
    DropNewest,
    /// Drop the oldest queued message to make room and count it.
    DropOldest,
}

pub(crate) struct SubQueue {
    pub(crate) id: SubId,
    pub(crate) pattern: Box<str>,
    capacity: usize,
    overflow: Overflow,
    state: Mutex<State>,
    /// Messages in `state.buf`, readable without the lock (a spinning
    /// subscriber checks it instead of contending for the mutex).
    len: AtomicUsize,
    dropped: AtomicU64,
}

struct State {
    buf: VecDeque<BusMessage>,
    rx_waker: Option<Waker>,
    /// Publishers waiting for room: one entry per waiting [`PushWait`] (by
    /// its id), whose waker is replaced, not added, on every poll.
    tx_waiters: Vec<(u64, Waker)>,
    closed: Closed,
}

/// Whether a queue is closed, and why.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Closed {
    Open,
    /// The subscriber went away: a waiting publish has nobody to wait for.
    BySubscriber,
    /// The bus closed: a waiting publish fails.
    ByBus,
}

/// Ids of [`PushWait`]s (taken only by a publish that has to wait).
static NEXT_WAITER: AtomicU64 = AtomicU64::new(0);

pub(crate) enum Push {
    Done,
    Full(BusMessage),
}

impl SubQueue {
    pub(crate) fn new(id: SubId, pattern: &str, capacity: usize, overflow: Overflow) -> Self {
        SubQueue {
            id,
            pattern: pattern.into(),
            capacity: capacity.max(1),
            overflow,
            state: Mutex::new(State {
                buf: VecDeque::new(),
                rx_waker: None,
                tx_waiters: Vec::new(),
                closed: Closed::Open,
            }),
            len: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn queued(&self) -> usize {
        self.state.lock().buf.len()
    }

    pub(crate) fn overflow(&self) -> Overflow {
        self.overflow
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Pushes without waiting; a full `Block` queue hands the message back.
    #[inline]
    pub(crate) fn try_push(&self, msg: BusMessage) -> Push {
        let mut st = self.state.lock();
        if st.closed != Closed::Open {
            return Push::Done;
        }
        if st.buf.len() >= self.capacity {
            match self.overflow {
                Overflow::Block => return Push::Full(msg),
                Overflow::DropNewest => {
                    drop(st);
                    self.count_drop(&msg);
                    return Push::Done;
                }
                Overflow::DropOldest => {
                    let old = st.buf.pop_front();
                    st.buf.push_back(msg);
                    self.len.store(st.buf.len(), Ordering::Release);
                    let waker = st.rx_waker.take();
                    drop(st);
                    if let Some(old) = old {
                        self.count_drop(&old);
                    }
                    if let Some(w) = waker {
                        w.wake();
                    }
                    return Push::Done;
                }
            }
        }
        st.buf.push_back(msg);
        self.len.store(st.buf.len(), Ordering::Release);
        let waker = st.rx_waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        Push::Done
    }

    #[cold]
    #[inline(never)]
    fn count_drop(&self, msg: &BusMessage) {
        metrics::counter!(crate::metrics::MEMORY_DROPPED).increment(1);
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // Log the first drop and then every power of two, so that a flood of
        // drops is visible without flooding the log.
        if n.is_power_of_two() {
            tracing::warn!(
                subscription = %self.pattern,
                subject = %msg.subject,
                dropped_total = n,
                policy = ?self.overflow,
                "in-memory subscriber queue full: message dropped"
            );
        }
    }

    /// Waits for room, then pushes (the slow path of a lossless publish).
    pub(crate) fn push_wait(self: &Arc<Self>, msg: BusMessage) -> PushWait {
        PushWait {
            queue: self.clone(),
            msg: Some(msg),
            waiter: None,
        }
    }

    /// Closes the queue: no more pushes; the subscriber still receives what
    /// is queued, then the end of the stream. With `discard`, what is queued
    /// is dropped too (the subscriber itself is going away: a waiting
    /// publish completes, as if delivered to a subscriber that left);
    /// without it the bus is closing, and a waiting publish fails.
    pub(crate) fn close(&self, discard: bool) {
        let (rx, txs) = {
            let mut st = self.state.lock();
            if discard {
                if st.closed == Closed::Open {
                    st.closed = Closed::BySubscriber;
                }
                st.buf.clear();
                self.len.store(0, Ordering::Release);
            } else {
                st.closed = Closed::ByBus;
            }
            (st.rx_waker.take(), std::mem::take(&mut st.tx_waiters))
        };
        if let Some(w) = rx {
            w.wake();
        }
        for (_, w) in txs {
            w.wake();
        }
    }

    /// Publishers registered as waiting for room.
    #[cfg(test)]
    pub(crate) fn waiting_publishers(&self) -> usize {
        self.state.lock().tx_waiters.len()
    }

    /// Like `poll_drain` but without registering a waker when empty.
    fn poll_take(&self, local: &mut VecDeque<BusMessage>) -> Poll<bool> {
        if self.len.load(Ordering::Acquire) == 0 {
            return Poll::Pending;
        }
        let txs;
        {
            let mut st = self.state.lock();
            if st.buf.is_empty() {
                return if st.closed != Closed::Open {
                    Poll::Ready(false)
                } else {
                    Poll::Pending
                };
            }
            std::mem::swap(local, &mut st.buf);
            self.len.store(0, Ordering::Release);
            txs = std::mem::take(&mut st.tx_waiters);
        }
        for (_, w) in txs {
            w.wake();
        }
        Poll::Ready(true)
    }

    /// Moves every queued message into `local` (which must be empty).
    fn poll_drain(&self, local: &mut VecDeque<BusMessage>, cx: &mut Context<'_>) -> Poll<bool> {
        let txs;
        {
            let mut st = self.state.lock();
            if st.buf.is_empty() {
                if st.closed != Closed::Open {
                    return Poll::Ready(false);
                }
                match &st.rx_waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => st.rx_waker = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            std::mem::swap(local, &mut st.buf);
            self.len.store(0, Ordering::Release);
            txs = std::mem::take(&mut st.tx_waiters);
        }
        for (_, w) in txs {
            w.wake();
        }
        Poll::Ready(true)
    }
}

/// Future of a publisher waiting for room in one subscriber's queue.
///
/// Resolves to `Err(())` if the bus closed before the message was queued.
/// While it waits it keeps exactly one waker in the queue's list (replaced on
/// each poll), and removes it when dropped.
pub(crate) struct PushWait {
    queue: Arc<SubQueue>,
    msg: Option<BusMessage>,
    /// Its id in the queue's `tx_waiters`, once registered.
    waiter: Option<u64>,
}

impl Future for PushWait {
    type Output = Result<(), ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        let this = &mut *self;
        let Some(msg) = this.msg.take() else {
            return Poll::Ready(Ok(()));
        };
        let mut st = this.queue.state.lock();
        match st.closed {
            Closed::Open => {}
            Closed::BySubscriber => return Poll::Ready(Ok(())),
            Closed::ByBus => return Poll::Ready(Err(())),
        }
        if st.buf.len() < this.queue.capacity {
            st.buf.push_back(msg);
            this.queue.len.store(st.buf.len(), Ordering::Release);
            let waker = st.rx_waker.take();
            drop(st);
            if let Some(w) = waker {
                w.wake();
            }
            return Poll::Ready(Ok(()));
        }
        // Still registered (the list was not taken by a wake since)? Then
        // replace the waker in place; else register anew.
        let id = this.waiter;
        match id.and_then(|id| st.tx_waiters.iter_mut().find(|(w, _)| *w == id)) {
            Some((_, w)) => {
                if !w.will_wake(cx.waker()) {
                    *w = cx.waker().clone();
                }
            }
            None => {
                let id = NEXT_WAITER.fetch_add(1, Ordering::Relaxed);
                st.tx_waiters.push((id, cx.waker().clone()));
                this.waiter = Some(id);
            }
        }
        drop(st);
        this.msg = Some(msg);
        Poll::Pending
    }
}

impl Drop for PushWait {
    fn drop(&mut self) {
        // A cancelled wait (e.g. under a timeout) leaves no waker behind.
        if let (Some(id), Some(_)) = (self.waiter, &self.msg) {
            self.queue.state.lock().tx_waiters.retain(|(w, _)| *w != id);
        }
    }
}

/// Unregisters a subscription from its bus.
pub(crate) trait Unregister: Send + Sync {
    fn unregister(&self, id: SubId, pattern: &str);
}

/// A subscription of the in-memory bus: a `Stream` of [`BusMessage`].
///
/// Returned by [`InMemoryBus::subscribe_with`](super::InMemoryBus::subscribe_with);
/// the trait's `subscribe` wraps it in a [`Subscription`](crate::Subscription).
/// Dropping it unregisters it at once and releases any publisher waiting on
/// its queue.
pub struct MemorySubscription {
    queue: Arc<SubQueue>,
    local: VecDeque<BusMessage>,
    bus: Weak<dyn Unregister>,
    /// Re-polls left before parking on an empty queue (see `poll_next`).
    spins: u32,
}

/// How many times an active subscriber re-schedules itself on an empty queue
/// before it registers its waker and parks. While messages keep coming this
/// spares the publisher the cost of waking a parked task on another thread
/// (a futex call); an idle subscriber parks after this many empty polls.
const SPIN_POLLS: u32 = 32;

impl MemorySubscription {
    pub(crate) fn new(queue: Arc<SubQueue>, bus: Weak<dyn Unregister>) -> Self {
        MemorySubscription {
            queue,
            local: VecDeque::new(),
            bus,
            spins: 0,
        }
    }

    /// The pattern subscribed to.
    pub fn pattern(&self) -> &str {
        &self.queue.pattern
    }

    /// Messages dropped for this subscriber by its overflow policy (always 0 with
    /// [`Overflow::Block`]).
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }
}

impl Stream for MemorySubscription {
    type Item = BusMessage;

    #[inline]
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BusMessage>> {
        let this = &mut *self;
        if let Some(msg) = this.local.pop_front() {
            return Poll::Ready(Some(msg));
        }
        if this.spins > 0 {
            this.spins -= 1;
            if let Poll::Ready(more) = this.queue.poll_take(&mut this.local) {
                this.spins = SPIN_POLLS;
                return Poll::Ready(if more { this.local.pop_front() } else { None });
            }
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match this.queue.poll_drain(&mut this.local, cx) {
            Poll::Ready(true) => {
                this.spins = SPIN_POLLS;
                Poll::Ready(this.local.pop_front())
            }
            Poll::Ready(false) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        self.queue.close(true);
        if let Some(bus) = self.bus.upgrade() {
            bus.unregister(self.queue.id, &self.queue.pattern);
        }
    }
}

impl std::fmt::Debug for MemorySubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySubscription")
            .field("pattern", &self.queue.pattern)
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}
