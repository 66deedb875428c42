//! A registered handler: its typed side (decoding, the stages of one
//! event), and the slot in the runner's own task that runs its events in
//! place, one at a time, without an allocation for an event that completes
//! at once.

use super::attempt::{
    acknowledge, answer_failed, call_now, cancelled, dead_letter, hand_back, has_layers,
    keep_alive, panic_message, panicked, process, process_ref, process_rest, record_duration,
    settle, timer, Panic,
};
use super::handler::{Call, EventCheck, Handler, HandlerFn};
use super::inbox::Inbox;
use super::{Outcome, TaskCtx};
use crate::consumer::Delivery;
use crate::error::BusError;
use futures::future::{BoxFuture, FutureExt};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::sync::oneshot;

/// A handler as the runner holds it: typed, with its consumer name.
pub(super) struct Registered<T, I: Inbox, C> {
    /// `<runner>-<handler name>`, the durable consumer.
    pub(super) consumer: String,
    /// The consumer as the inbox knows it: scoped by the bus's tenant
    /// (`<tenant>/<consumer>`; `/` is in no consumer name), so that tenants
    /// sharing an inbox table never take each other's ids for duplicates.
    pub(super) inbox_consumer: String,
    /// The bus's backend (`messaging.system` in the process spans).
    pub(super) system: &'static str,
    /// `messaging.process.duration` of this handler's consumer (sampled).
    pub(super) process_duration: metrics::Histogram,
    pub(super) handler: Handler<T, I::Tx, C>,
}

/// A handler with its event type erased: what the runner's loop calls.
pub(super) trait Erased<I: Inbox>: Send + Sync + 'static {
    fn consumer(&self) -> &str;
    fn pattern(&self) -> &str;
    /// Decodes the event and queues it behind its key (both at once, in
    /// arrival order); the returned future does the rest of the stages.
    fn start(self: Arc<Self>, ctx: &Arc<TaskCtx<I>>, delivery: Delivery) -> BoxFuture<'static, ()>;
    /// A reusable slot for events of this handler in the runner's own task,
    /// for handlers without a key (a keyed event may have to wait its turn).
    /// It borrows the handler and the context, which outlive it in the loop.
    /// `index` is the handler's place in the runner.
    fn slot<'a>(&'a self, ctx: &'a TaskCtx<I>, index: usize) -> Option<Box<dyn EventSlot + 'a>>;
}

pub(super) fn decode<T: DeserializeOwned>(
    check: Option<&dyn EventCheck>,
    delivery: &Delivery,
) -> Result<T, String> {
    if let Some(check) = check {
        check.check(delivery.message())?;
    }
    serde_json::from_slice::<T>(&delivery.message().payload).map_err(|e| {
        format!(
            "cannot decode the payload as {}: {e}",
            std::any::type_name::<T>()
        )
    })
}

/// A place in the runner's own task where one event at a time is processed,
/// reused from event to event: an event whose handling completes at once
/// costs no allocation. Events that find it busy get a task of their own.
pub(super) trait EventSlot: Send {
    /// Whether an event is being processed here.
    fn busy(&self) -> bool;
    /// Starts processing `delivery` here (the slot must be idle) and
    /// polls it; `Ready` if it completed at once.
    fn start(&mut self, delivery: Delivery, cx: &mut std::task::Context<'_>) -> Poll<()>;
    /// Drives the event in progress; `Ready` once the slot is idle.
    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()>;
}

/// Writes [`process_ref`]'s future for an event into a slot's place.
pub(super) type ProcessFn<'a, T, I, C, F> = fn(
    std::pin::Pin<&mut Option<F>>,
    &'a TaskCtx<I>,
    &'a Registered<T, I, C>,
    Delivery,
    Result<T, String>,
);

pub(super) struct Slot<'a, T, I: Inbox, C, F, A> {
    ctx: &'a TaskCtx<I>,
    handler: &'a Registered<T, I, C>,
    /// The handler's place in the runner.
    index: usize,
    /// Starts [`process_ref`] for this handler's types in `fut` (it names
    /// the future's type). The future is built in place: one built apart
    /// and moved in would be copied whole (some 600 bytes) per event.
    make: ProcessFn<'a, T, I, C, F>,
    fut: std::pin::Pin<Box<Option<F>>>,
    /// [`acknowledge`] (it names the future's type).
    make_ack: fn(Delivery, Duration) -> A,
    /// The acknowledgement of an event handled on the fast path, while it
    /// has not completed.
    ack: std::pin::Pin<Box<Option<A>>>,
    /// A sync handler's event whose first attempt did not ack, continuing
    /// on the general path (retries, dead letters, drops).
    rest: Option<BoxFuture<'a, ()>>,
}

impl<T, I, C, F, A> Slot<'_, T, I, C, F, A>
where
    T: DeserializeOwned + Send + Sync + 'static,
    I: Inbox,
    C: HandlerFn<T, I::Tx>,
    F: Future<Output = bool> + Send,
    A: Future<Output = Result<(), BusError>> + Send,
{
    /// The first attempt of a sync closure handler without a
    /// de-duplicating inbox, made at once: the handler's outcome.
    fn call_now(&self, delivery: &Delivery, data: &T, mut tx: I::Tx) -> Result<Outcome, Panic> {
        let started = timer();
        let called = call_now(self.handler, delivery, data, 1, &mut tx);
        record_duration(&self.handler.process_duration, started);
        match called? {
            Call::Now(outcome) => Ok(outcome),
            Call::Later(_) => unreachable!("a sync handler returned a future"),
        }
    }

    fn poll_ack(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if let Some(Err(e)) = std::task::ready!(poll_in_place(self.ack.as_mut(), cx)) {
            answer_failed(&self.handler.handler.name, &e);
        }
        Poll::Ready(())
    }

    fn poll_rest(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        poll_in_place(std::pin::Pin::new(&mut self.rest), cx).map(|_| ())
    }

    fn poll_fut(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if let Some(true) = std::task::ready!(poll_in_place(self.fut.as_mut(), cx)) {
            self.ctx.counters.count_fast(self.index);
        }
        Poll::Ready(())
    }
}

/// Polls the future held in `place`, emptying the place once it completes:
/// `Ready(None)` if the place was empty.
pub(super) fn poll_in_place<F: Future>(
    mut place: std::pin::Pin<&mut Option<F>>,
    cx: &mut std::task::Context<'_>,
) -> Poll<Option<F::Output>> {
    let Some(fut) = place.as_mut().as_pin_mut() else {
        return Poll::Ready(None);
    };
    let out = std::task::ready!(fut.poll(cx));
    place.set(None);
    Poll::Ready(Some(out))
}

impl<T, I, C, F, A> EventSlot for Slot<'_, T, I, C, F, A>
where
    T: DeserializeOwned + Send + Sync + 'static,
    I: Inbox,
    C: HandlerFn<T, I::Tx>,
    F: Future<Output = bool> + Send,
    A: Future<Output = Result<(), BusError>> + Send,
{
    fn busy(&self) -> bool {
        self.fut.is_some() || self.ack.is_some() || self.rest.is_some()
    }

    fn start(&mut self, delivery: Delivery, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let decoded = decode::<T>(self.ctx.check.as_deref(), &delivery);
        // The fast path of a sync handler without a de-duplicating inbox:
        // the handler is called right here and, if it acks, the event is
        // acknowledged without a processing future. Otherwise its first
        // attempt's result goes on to the rest of the stages.
        let direct = self.handler.handler.sync && !has_layers(self.ctx, self.handler);
        if let (true, Ok(data)) = (direct, &decoded) {
            if let Some(tx) = self.ctx.inbox.trivial_tx() {
                let first = match self.call_now(&delivery, data, tx) {
                    Ok(Outcome::Ack) => {
                        self.ctx.counters.count_fast(self.index);
                        let ack = (self.make_ack)(delivery, self.ctx.answer_timeout);
                        self.ack.as_mut().set(Some(ack));
                        return self.poll_ack(cx);
                    }
                    Ok(outcome) => settle(outcome),
                    Err(panic) => panicked(panic),
                };
                let rest = process_rest(self.ctx, self.handler, delivery, decoded, Some(first));
                self.rest = Some(Box::pin(rest));
                return self.poll_rest(cx);
            }
        }
        (self.make)(self.fut.as_mut(), self.ctx, self.handler, delivery, decoded);
        self.poll_fut(cx)
    }

    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        match (self.poll_fut(cx), self.poll_ack(cx), self.poll_rest(cx)) {
            (Poll::Ready(()), Poll::Ready(()), Poll::Ready(())) => Poll::Ready(()),
            _ => Poll::Pending,
        }
    }
}

impl<T, I, C> Erased<I> for Registered<T, I, C>
where
    T: DeserializeOwned + Send + Sync + 'static,
    I: Inbox,
    C: HandlerFn<T, I::Tx>,
{
    fn consumer(&self) -> &str {
        &self.consumer
    }

    fn pattern(&self) -> &str {
        &self.handler.pattern
    }

    fn slot<'a>(&'a self, ctx: &'a TaskCtx<I>, index: usize) -> Option<Box<dyn EventSlot + 'a>> {
        if self.handler.key.is_some() {
            return None;
        }
        Some(Box::new(Slot {
            ctx,
            handler: self,
            index,
            make: |mut place, ctx, h, delivery, decoded| {
                place.set(Some(process_ref(ctx, h, delivery, decoded)));
            },
            fut: Box::pin(None),
            make_ack: acknowledge,
            ack: Box::pin(None),
            rest: None,
        }))
    }

    fn start(self: Arc<Self>, ctx: &Arc<TaskCtx<I>>, delivery: Delivery) -> BoxFuture<'static, ()> {
        let decoded = decode::<T>(ctx.check.as_deref(), &delivery);
        let key = match (&decoded, &self.handler.key) {
            // The key function is user code: a panic in it is caught, and
            // the event that caused it goes to the dead letters.
            (Ok(data), Some(key)) => match std::panic::catch_unwind(AssertUnwindSafe(|| key(data)))
            {
                Ok(key) => key,
                Err(panic) => {
                    let reason = format!("the key function panicked: {}", panic_message(&panic));
                    let ctx = ctx.clone();
                    return Box::pin(async move {
                        ctx.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        dead_letter(&ctx, &self.handler.name, delivery, reason).await;
                    });
                }
            },
            _ => return Box::pin(process(ctx.clone(), self, delivery, decoded)),
        };
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let mine = done_rx.shared();
        let prev = ctx.chains.lock().insert(key.clone(), mine.clone());
        let ctx = ctx.clone();
        Box::pin(async move {
            // Waiting behind an earlier event of the key, the delivery is
            // kept alive: were it redelivered meanwhile, its copy would queue
            // behind later events of the key and run out of order.
            let turn = match prev {
                None => true,
                Some(prev) => tokio::select! {
                    _ = prev => true,
                    _ = cancelled(ctx.cancel.clone()) => false,
                    _ = keep_alive(&ctx, &delivery) => unreachable!("keep_alive never completes"),
                },
            };
            // Past the shutdown deadline an event that waited is handed
            // back, not run: the one before it may have been handed back.
            if turn && !*ctx.cancel.borrow() {
                process(ctx.clone(), self, delivery, decoded).await;
            } else {
                hand_back(&ctx, delivery).await;
            }
            let _ = done_tx.send(());
            let mut map = ctx.chains.lock();
            if map.get(&key).is_some_and(|cur| cur.ptr_eq(&mine)) {
                map.remove(&key);
            }
        })
    }
}
