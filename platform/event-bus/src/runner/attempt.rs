//! One event's stages in the runner: the attempt (the handler, in its
//! unit of work, in its process span), retries with backoff, duplicates,
//! drops, dead letters, the acknowledgement, and the hand-back at shutdown.
//! The runner's loop (`mod.rs`) starts [`process`] (or a slot's
//! [`process_ref`]) per event.

use super::handler::{Call, Event, HandlerFn};
use super::inbox::Inbox;
use super::slot::Registered;
use super::{layer, Outcome, RetryPolicy, TaskCtx};
use crate::consumer::{AckKind, Delivery};
use crate::dlq;
use crate::error::{BusError, ErrorKind};
use crate::message::Headers;
use futures::future::BoxFuture;
use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::sync::watch;

pub(super) enum Settled {
    Acked,
    Duplicate,
    Dropped,
    DeadLetter(String),
    Failed {
        after: Option<Duration>,
        reason: String,
    },
    /// The inbox could not begin or commit for a reason that passes (see
    /// [`inbox_unavailable`]): the attempt is made again after a backoff of
    /// its own, without counting it against the handler's retries.
    InboxUnavailable(String),
}

/// Whether an inbox error is one that passes by itself: a timeout, a lost
/// connection or a server restarting (a PostgreSQL failover), or a claim
/// held by another worker for the moment. Such errors say nothing about the
/// event, so they do not use up the handler's attempts.
fn inbox_unavailable(e: &BusError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Timeout | ErrorKind::Unavailable | ErrorKind::Conflict
    )
}

/// The backoff between attempts the inbox could not serve: from 50 ms up
/// to 5 s, with jitter; without limit in number (the event is kept alive
/// meanwhile, and shutdown hands it back).
fn inbox_backoff(waits: u32) -> Duration {
    RetryPolicy {
        max_attempts: u32::MAX,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(5),
        multiplier: 2.0,
        jitter: 0.2,
    }
    .delay(waits)
}

pub(super) async fn cancelled(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn dlq_headers(handler: &str) -> Headers {
    let mut h = Headers::new();
    h.insert(dlq::HANDLER, handler);
    h
}

/// Processes one event; see the module docs for the stages. The common path
/// (the attempt completes at once and is acknowledged) is kept small, since
/// this future is boxed per event: waiting for a slow attempt, retries and
/// dead-lettering are boxed separately.
pub(super) async fn process<T, I, C>(
    ctx: Arc<TaskCtx<I>>,
    h: Arc<Registered<T, I, C>>,
    delivery: Delivery,
    decoded: Result<T, String>,
) where
    T: Send + Sync + 'static,
    I: Inbox,
    C: HandlerFn<T, I::Tx>,
{
    if process_ref(&ctx, &h, delivery, decoded).await {
        ctx.counters.processed.fetch_add(1, Ordering::Relaxed);
    }
}

/// [`process`] on borrowed context and handler (a slot's, which the runner's
/// loop owns). `true` if the first attempt acked, for the caller to count
/// (a slot counts without a locked add); any other end is counted here.
///
/// Written as an `async move` block rather than an `async fn`: an `async
/// fn` stores its arguments twice in its future (as given, and moved into
/// the body), and this future is written per event.
#[allow(clippy::manual_async_fn)] // see `process_ref`: smaller than an `async fn`
pub(super) fn process_ref<'a, T, I, C>(
    ctx: &'a TaskCtx<I>,
    h: &'a Registered<T, I, C>,
    delivery: Delivery,
    decoded: Result<T, String>,
) -> impl Future<Output = bool> + 'a
where
    T: Send + Sync + 'static,
    I: Inbox,
    C: HandlerFn<T, I::Tx>,
{
    async move {
        // The common case, kept in this (small) future: the first attempt
        // acks. Anything else continues in `process_rest`, boxed apart.
        let result = match &decoded {
            Ok(data) => match one_attempt(ctx, h, &delivery, data, 1).await {
                Some(result) => Some(result),
                // Shutdown deadline passed: the unit of work was dropped (rolled back).
                None => {
                    Box::pin(hand_back(ctx, delivery)).await;
                    return false;
                }
            },
            Err(_) => None,
        };
        match result {
            Some(Settled::Acked) => {
                // Polled once here before `bounded`: an answer that completes
                // at once (in memory) skips its future, about 100
                // instructions per event on this path.
                let mut answer = std::pin::pin!(delivery.answer(AckKind::Ack));
                let answered = match futures::poll!(answer.as_mut()) {
                    Poll::Ready(r) => r,
                    Poll::Pending => bounded(ctx.answer_timeout, answer).await,
                };
                if let Err(e) = answered {
                    answer_failed(&h.handler.name, &e);
                }
                true
            }
            first => {
                Box::pin(process_rest(ctx, h, delivery, decoded, first)).await;
                false
            }
        }
    }
}

/// Whether attempts of `h` go through layers ([`super::layer`]): the
/// runner's or the handler's own.
#[inline]
pub(super) fn has_layers<T, I: Inbox, C>(ctx: &TaskCtx<I>, h: &Registered<T, I, C>) -> bool {
    !ctx.layers.is_empty() || !h.handler.layers.is_empty()
}

/// One attempt through the layers of the runner and of the handler, the
/// inbox and the handler below them. The layers' outcome is settled as a
/// handler's; when they pass on what the stack below them gave, that
/// result is kept as it is (a duplicate stays a duplicate, an unavailable
/// inbox is not counted as a failed attempt).
async fn layered_attempt<T, I, C>(
    ctx: &TaskCtx<I>,
    h: &Registered<T, I, C>,
    delivery: &Delivery,
    data: &T,
    attempt: u32,
) -> Settled
where
    T: Send + Sync + 'static,
    I: Inbox,
    C: HandlerFn<T, I::Tx>,
{
    use futures::FutureExt;
    let mut below: Option<Settled> = None;
    let outcome = {
        let bottom = async {
            let settled = match ctx.inbox.trivial_tx() {
                Some(tx) => attempt_without_inbox(h, delivery, data, attempt, tx).await,
                None => run_attempt(ctx, h, delivery, data, attempt).await,
            };
            let outcome = settled.outcome();
            below = Some(settled);
            outcome
        };
        let mut bottom = std::pin::pin!(bottom);
        let info = layer::Attempt {
            message: delivery.message(),
            handler: &h.handler.name,
            consumer: &h.consumer,
            attempt,
            delivery_count: delivery.delivery_count(),
        };
        let next = layer::Next::new([&ctx.layers, &h.handler.layers], &info, bottom.as_mut());
        // Called inside the caught future: a layer's `call` that panics
        // before returning its future is caught too.
        AssertUnwindSafe(async move { next.run().await })
            .catch_unwind()
            .await
    };
    match (outcome, below) {
        (Ok(outcome), Some(settled)) if settled.gives(&outcome) => settled,
        (Ok(outcome), _) => settle(outcome),
        (Err(panic), _) => Settled::Failed {
            after: None,
            reason: format!("a layer panicked: {}", panic_message(&panic)),
        },
    }
}

/// One attempt. Most handlers finish at once: only those that do not set
/// up the cancellation watch and the keep-alive timer. Without an inbox the
/// attempt is the handler alone (a small state, kept inline); with one,
/// its begin/commit state is boxed apart. `None` if the shutdown deadline
/// passed first.
#[allow(clippy::manual_async_fn)] // see `process_ref`: smaller than an `async fn`
fn one_attempt<'a, T, I, C>(
    ctx: &'a TaskCtx<I>,
    h: &'a Registered<T, I, C>,
    delivery: &'a Delivery,
    data: &'a T,
    attempt: u32,
) -> impl Future<Output = Option<Settled>> + 'a
where
    T: Send + Sync + 'static,
    I: Inbox,
    C: HandlerFn<T, I::Tx>,
{
    async move {
        if has_layers(ctx, h) {
            let mut work = Box::pin(layered_attempt(ctx, h, delivery, data, attempt));
            return match futures::poll!(work.as_mut()) {
                Poll::Ready(r) => Some(r),
                Poll::Pending => Box::pin(wait_attempt(ctx, delivery, work.as_mut())).await,
            };
        }
        match ctx.inbox.trivial_tx() {
            Some(tx) => {
                let work = attempt_without_inbox(h, delivery, data, attempt, tx);
                tokio::pin!(work);
                match futures::poll!(work.as_mut()) {
                    Poll::Ready(r) => Some(r),
                    Poll::Pending => Box::pin(wait_attempt(ctx, delivery, work)).await,
                }
            }
            None => {
                let mut work = Box::pin(run_attempt(ctx, h, delivery, data, attempt));
                match futures::poll!(work.as_mut()) {
                    Poll::Ready(r) => Some(r),
                    Poll::Pending => Box::pin(wait_attempt(ctx, delivery, work.as_mut())).await,
                }
            }
        }
    }
}

/// The stages after a first attempt that did not simply ack (or before
/// any, for an undecodable payload): retries, duplicates, drops, dead
/// letters. `first` is the first attempt's result, if it was made.
pub(super) async fn process_rest<T, I, C>(
    ctx: &TaskCtx<I>,
    h: &Registered<T, I, C>,
    delivery: Delivery,
    decoded: Result<T, String>,
    mut first: Option<Settled>,
) where
    T: Send + Sync + 'static,
    I: Inbox,
    C: HandlerFn<T, I::Tx>,
{
    let decoded = match decoded {
        Ok(d) => d,
        Err(reason) => {
            ctx.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            return Box::pin(dead_letter(ctx, &h.handler.name, delivery, reason)).await;
        }
    };
    // Attempts of the handler (1-based), and waits for the inbox, counted apart.
    let mut attempt = 1;
    let mut inbox_waits = 0;
    loop {
        let result = match first.take() {
            Some(done) => done,
            None => match one_attempt(ctx, h, &delivery, &decoded, attempt).await {
                Some(result) => result,
                None => return Box::pin(hand_back(ctx, delivery)).await,
            },
        };
        let answer = match result {
            Settled::Acked => {
                ctx.counters.processed.fetch_add(1, Ordering::Relaxed);
                AckKind::Ack
            }
            Settled::Duplicate => {
                ctx.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                AckKind::Ack
            }
            Settled::Dropped => {
                ctx.counters.dropped.fetch_add(1, Ordering::Relaxed);
                AckKind::Ack
            }
            Settled::DeadLetter(reason) => {
                ctx.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                return Box::pin(dead_letter(ctx, &h.handler.name, delivery, reason)).await;
            }
            Settled::Failed { after, reason } => {
                if attempt >= h.handler.retry.max_attempts {
                    ctx.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    let reason = format!("{reason} (after {attempt} attempts)");
                    return Box::pin(dead_letter(ctx, &h.handler.name, delivery, reason)).await;
                }
                ctx.counters.retries.fetch_add(1, Ordering::Relaxed);
                let wait = after.unwrap_or_else(|| h.handler.retry.delay(attempt));
                tracing::debug!(handler = %h.handler.name, attempt, ?wait, reason, "handler failed; retrying");
                if !Box::pin(retry_wait(ctx, &delivery, wait)).await {
                    return Box::pin(hand_back(ctx, delivery)).await;
                }
                attempt += 1;
                continue;
            }
            Settled::InboxUnavailable(reason) => {
                ctx.counters.inbox_retries.fetch_add(1, Ordering::Relaxed);
                inbox_waits += 1;
                let wait = inbox_backoff(inbox_waits);
                tracing::warn!(handler = %h.handler.name, attempt, inbox_waits, ?wait, reason, "the inbox is unavailable; trying again (not counted as a failed attempt)");
                if !Box::pin(retry_wait(ctx, &delivery, wait)).await {
                    return Box::pin(hand_back(ctx, delivery)).await;
                }
                continue;
            }
        };
        if let Err(e) = bounded(ctx.answer_timeout, delivery.answer(answer)).await {
            answer_failed(&h.handler.name, &e);
        }
        return;
    }
}

/// Waits for an attempt that did not complete at once, keeping the delivery
/// alive; `None` if the shutdown deadline passed first.
async fn wait_attempt<I: Inbox>(
    ctx: &TaskCtx<I>,
    delivery: &Delivery,
    work: std::pin::Pin<&mut impl Future<Output = Settled>>,
) -> Option<Settled> {
    tokio::select! {
        _ = cancelled(ctx.cancel.clone()) => None,
        r = work => Some(r),
        _ = keep_alive(ctx, delivery) => unreachable!("keep_alive never completes"),
    }
}

/// Waits before a retry, keeping the delivery alive; `false` if the shutdown
/// deadline passed first.
async fn retry_wait<I: Inbox>(ctx: &TaskCtx<I>, delivery: &Delivery, wait: Duration) -> bool {
    tokio::select! {
        _ = cancelled(ctx.cancel.clone()) => false,
        _ = tokio::time::sleep(wait) => true,
        _ = keep_alive(ctx, delivery) => unreachable!("keep_alive never completes"),
    }
}

/// Hands an event back to the backend (shutdown deadline passed).
pub(super) async fn hand_back<I: Inbox>(ctx: &TaskCtx<I>, delivery: Delivery) {
    ctx.counters.handed_back.fetch_add(1, Ordering::Relaxed);
    let handed = delivery.nack(Some(crate::consumer::HAND_BACK_DELAY));
    if let Err(e) = bounded(ctx.answer_timeout, handed).await {
        tracing::warn!(error = %e, "handing an event back failed; it will be redelivered after its ack wait");
    }
}

pub(super) async fn dead_letter<I: Inbox>(
    ctx: &TaskCtx<I>,
    handler: &str,
    delivery: Delivery,
    reason: String,
) {
    let dead = delivery.dead_letter_with(reason, dlq_headers(handler));
    if let Err(e) = bounded(ctx.answer_timeout, dead).await {
        tracing::warn!(handler, error = %e, "dead-lettering failed; the event will be redelivered");
    }
}

/// Sends "in progress" periodically so that an event whose handling takes
/// long (a slow handler, a retry's backoff, a wait behind its key) keeps
/// its delivery.
pub(super) async fn keep_alive<I>(ctx: &TaskCtx<I>, delivery: &Delivery) {
    let every = (ctx.ack_wait / 3).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let _ = bounded(ctx.answer_timeout, delivery.in_progress()).await;
    }
}

/// An answer to the backend (ack, nack, term, in-progress, a dead letter),
/// waiting at most `limit` for it: a backend that takes no answers (a NATS
/// outage) must not hold an event, or shutdown, forever. An answer that
/// times out is as if lost: the backend redelivers the event after its ack
/// wait.
async fn bounded(
    limit: Duration,
    answer: impl Future<Output = Result<(), BusError>>,
) -> Result<(), BusError> {
    // Most answers complete at once (in memory, or queued in the NATS
    // client): those need no timer.
    let mut answer = std::pin::pin!(answer);
    if let Poll::Ready(r) = futures::poll!(answer.as_mut()) {
        return r;
    }
    match tokio::time::timeout(limit, answer).await {
        Ok(r) => r,
        Err(_) => Err(BusError::new(
            ErrorKind::Timeout,
            format!("the backend did not take the answer within {limit:?}"),
        )),
    }
}

/// A panic caught while a handler ran.
pub(super) type Panic = Box<dyn Any + Send>;

/// Whether this attempt's handler duration is measured
/// (`messaging.process.duration`): one attempt in
/// [`PROCESS_SAMPLE`](crate::metrics::PROCESS_SAMPLE), from its call until
/// its outcome. The callers time around [`call_handler`] (or [`call_now`]):
/// a clock in their own state, no wrapper around the handler's future.
#[inline]
pub(super) fn timer() -> Option<std::time::Instant> {
    crate::metrics::sample_process().then(std::time::Instant::now)
}

/// Records a timed attempt's duration.
#[inline]
pub(super) fn record_duration(histogram: &metrics::Histogram, started: Option<std::time::Instant>) {
    if let Some(t) = started {
        histogram.record(t.elapsed());
    }
}

/// Calls a sync closure handler with the event:
/// its outcome (or its panic), in its process span when a `tracing`
/// dispatcher is set.
#[inline]
pub(super) fn call_now<'a, T, I: Inbox, C: HandlerFn<T, I::Tx>>(
    h: &'a Registered<T, I, C>,
    delivery: &'a Delivery,
    decoded: &'a T,
    attempt: u32,
    tx: &'a mut I::Tx,
) -> Result<Call<C::Future<'a>>, Panic> {
    if tracing::dispatcher::has_been_set() {
        invoke_traced(h, delivery, decoded, attempt, tx).0
    } else {
        call(h, delivery, decoded, attempt, tx)
    }
}

/// The handler's call with the event; a panic is caught.
#[inline(always)]
fn call<'a, T, I: Inbox, C: HandlerFn<T, I::Tx>>(
    h: &'a Registered<T, I, C>,
    delivery: &'a Delivery,
    decoded: &'a T,
    attempt: u32,
    tx: &'a mut I::Tx,
) -> Result<Call<C::Future<'a>>, Panic> {
    let event = Event {
        data: decoded,
        message: delivery.message(),
        attempt,
        delivery_count: delivery.delivery_count(),
    };
    std::panic::catch_unwind(AssertUnwindSafe(move || h.handler.f.call(event, tx)))
}

/// The handler's [`call`] in the attempt's process span, and the span
/// when it is enabled (the handler's future is then polled in it). When
/// the sampling gate skipped the span (an unsampled trace, feature
/// `otel`), the call runs in the message's unsampled context instead, and
/// that context is returned to poll the future in.
#[inline(never)]
#[allow(clippy::infallible_destructuring_match)] // one variant without `otel`
fn invoke_traced<'a, T, I: Inbox, C: HandlerFn<T, I::Tx>>(
    h: &'a Registered<T, I, C>,
    delivery: &'a Delivery,
    decoded: &'a T,
    attempt: u32,
    tx: &'a mut I::Tx,
) -> (
    Result<Call<C::Future<'a>>, Panic>,
    Option<crate::trace::ProcessTrace>,
) {
    use crate::trace::ProcessTrace;
    let span = match crate::trace::process_trace(
        h.system,
        &h.handler.pattern,
        Some(&h.consumer),
        delivery.message(),
        delivery.delivery_count(),
    ) {
        ProcessTrace::Span(span) => span,
        #[cfg(feature = "otel")]
        ProcessTrace::Unsampled(cx) => {
            let called = {
                let _attached = cx.clone().attach();
                call(h, delivery, decoded, attempt, tx)
            };
            return (called, Some(ProcessTrace::Unsampled(cx)));
        }
    };
    let called = span.in_scope(|| call(h, delivery, decoded, attempt, tx));
    match &called {
        Ok(Call::Now(outcome)) => record_outcome(&span, Ok(outcome)),
        Err(_) => record_outcome(&span, Err(())),
        Ok(Call::Later(_)) => {}
    }
    (
        called,
        (!span.is_disabled()).then_some(ProcessTrace::Span(span)),
    )
}

/// Records a failed attempt's kind (`error.type`) on its process span.
fn record_outcome(span: &tracing::Span, outcome: Result<&Outcome, ()>) {
    let kind = match outcome {
        Ok(Outcome::Ack) | Ok(Outcome::Drop) => return,
        Ok(Outcome::Retry { .. }) => "retry",
        Ok(Outcome::DeadLetter(_)) => "dead_letter",
        Err(()) => "panic",
    };
    crate::trace::record_failure(span, kind);
}

/// The handler's outcome as a future; a panic while the handler runs (or
/// while its future is polled) is caught. A traced attempt's future is
/// boxed apart (with its span), so that the common one stays the handler's
/// own.
pub(super) type HandlerFuture<'a, F> = futures::future::Either<
    futures::future::Ready<Result<Outcome, Panic>>,
    futures::future::Either<
        futures::future::CatchUnwind<AssertUnwindSafe<F>>,
        BoxFuture<'a, Result<Outcome, Panic>>,
    >,
>;

/// Calls the handler with the event: its outcome, as a future. Without a
/// `tracing` dispatcher that is the handler's [`call`] alone; with one it
/// goes through [`call_handler_traced`], kept out of line so that the
/// common path stays small enough to inline.
#[inline]
fn call_handler<'a, T, I: Inbox, C: HandlerFn<T, I::Tx>>(
    h: &'a Registered<T, I, C>,
    delivery: &'a Delivery,
    decoded: &'a T,
    attempt: u32,
    tx: &'a mut I::Tx,
) -> HandlerFuture<'a, C::Future<'a>> {
    if tracing::dispatcher::has_been_set() {
        return call_handler_traced(h, delivery, decoded, attempt, tx);
    }
    untraced(call(h, delivery, decoded, attempt, tx))
}

/// A handler's call as its [`HandlerFuture`], with no span around it.
#[inline(always)]
fn untraced<'a, F: Future>(called: Result<Call<F>, Panic>) -> HandlerFuture<'a, F> {
    use futures::future::{ready, Either};
    use futures::FutureExt;
    match called {
        Ok(Call::Now(outcome)) => Either::Left(ready(Ok(outcome))),
        Ok(Call::Later(fut)) => Either::Right(Either::Left(AssertUnwindSafe(fut).catch_unwind())),
        Err(panic) => Either::Left(ready(Err(panic))),
    }
}

/// [`call_handler`] in the attempt's process span: a future the handler
/// returns is polled in the span (boxed with it), and a failure recorded
/// on it.
#[cold]
#[inline(never)]
fn call_handler_traced<'a, T, I: Inbox, C: HandlerFn<T, I::Tx>>(
    h: &'a Registered<T, I, C>,
    delivery: &'a Delivery,
    decoded: &'a T,
    attempt: u32,
    tx: &'a mut I::Tx,
) -> HandlerFuture<'a, C::Future<'a>> {
    use futures::future::Either;
    use futures::FutureExt;
    match invoke_traced(h, delivery, decoded, attempt, tx) {
        #[cfg(feature = "otel")]
        (Ok(Call::Later(fut)), Some(crate::trace::ProcessTrace::Unsampled(cx))) => {
            // Polled in the message's unsampled context: the handler's own
            // spans and publishes stay in that (unsampled) trace.
            let traced = async move {
                let mut fut = std::pin::pin!(fut);
                AssertUnwindSafe(std::future::poll_fn(|task| {
                    let _attached = cx.clone().attach();
                    fut.as_mut().poll(task)
                }))
                .catch_unwind()
                .await
            };
            Either::Right(Either::Right(Box::pin(traced)))
        }
        (Ok(Call::Later(fut)), Some(crate::trace::ProcessTrace::Span(span))) => {
            let traced = async move {
                // Polled in the span (entered per poll, as `Instrument`
                // does, but without a clone of the span, nor an entry to
                // drop the finished future).
                let mut fut = std::pin::pin!(fut);
                let outcome = AssertUnwindSafe(std::future::poll_fn(|cx| {
                    let _entered = span.enter();
                    fut.as_mut().poll(cx)
                }))
                .catch_unwind()
                .await;
                record_outcome(&span, outcome.as_ref().map_err(|_| ()));
                outcome
            };
            Either::Right(Either::Right(Box::pin(traced)))
        }
        (called, _) => untraced(called),
    }
}

/// Logs a delivery whose answer did not reach the backend.
pub(super) fn answer_failed(handler: &str, e: &BusError) {
    tracing::warn!(handler, error = %e, "answering a delivery failed; it will be redelivered");
}

/// Acknowledges a delivery whose handler acked (a slot's fast path),
/// waiting at most `limit` ([`bounded`]).
pub(super) fn acknowledge(
    delivery: Delivery,
    limit: Duration,
) -> impl Future<Output = Result<(), BusError>> + Send + 'static {
    bounded(limit, delivery.answer(AckKind::Ack))
}

/// One attempt when the inbox does not de-duplicate: the handler alone.
#[allow(clippy::manual_async_fn)] // see `process_ref`: smaller than an `async fn`
fn attempt_without_inbox<'a, T, I: Inbox, C: HandlerFn<T, I::Tx>>(
    h: &'a Registered<T, I, C>,
    delivery: &'a Delivery,
    decoded: &'a T,
    attempt: u32,
    mut tx: I::Tx,
) -> impl Future<Output = Settled> + 'a {
    async move {
        let started = timer();
        let outcome = call_handler(h, delivery, decoded, attempt, &mut tx).await;
        record_duration(&h.process_duration, started);
        match outcome {
            Ok(outcome) => settle(outcome),
            Err(panic) => panicked(panic),
        }
    }
}

impl Settled {
    /// Whether `outcome` is the one this result gives ([`Settled::outcome`]),
    /// compared without building it.
    fn gives(&self, outcome: &Outcome) -> bool {
        match (self, outcome) {
            (Settled::Acked | Settled::Duplicate, Outcome::Ack) => true,
            (Settled::Dropped, Outcome::Drop) => true,
            (Settled::DeadLetter(a), Outcome::DeadLetter(b)) => a == b,
            (
                Settled::Failed { after, reason },
                Outcome::Retry {
                    after: a,
                    reason: r,
                },
            ) => after == a && reason == r,
            (
                Settled::InboxUnavailable(reason),
                Outcome::Retry {
                    after: None,
                    reason: r,
                },
            ) => reason == r,
            _ => false,
        }
    }

    /// The outcome a handler would have given for this result: what the
    /// layers above the inbox see.
    pub(super) fn outcome(&self) -> Outcome {
        match self {
            Settled::Acked | Settled::Duplicate => Outcome::Ack,
            Settled::Dropped => Outcome::Drop,
            Settled::DeadLetter(reason) => Outcome::DeadLetter(reason.clone()),
            Settled::Failed { after, reason } => Outcome::Retry {
                after: *after,
                reason: reason.clone(),
            },
            Settled::InboxUnavailable(reason) => Outcome::retry(reason),
        }
    }
}

/// The attempt's result for a handler's outcome (once the unit of work is
/// settled).
pub(super) fn settle(outcome: Outcome) -> Settled {
    match outcome {
        Outcome::Ack => Settled::Acked,
        Outcome::Retry { after, reason } => Settled::Failed { after, reason },
        Outcome::DeadLetter(reason) => Settled::DeadLetter(reason),
        Outcome::Drop => Settled::Dropped,
    }
}

/// A caught panic as a failed attempt.
#[cold]
pub(super) fn panicked(panic: Panic) -> Settled {
    Settled::Failed {
        after: None,
        reason: format!("handler panicked: {}", panic_message(&panic)),
    }
}

/// The message of a caught panic.
pub(super) fn panic_message(panic: &Panic) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a non-string panic".into())
}

/// One attempt through a de-duplicating inbox: claim, handle, then commit
/// the claim with the handler's writes, or roll both back.
async fn run_attempt<T, I: Inbox, C: HandlerFn<T, I::Tx>>(
    ctx: &TaskCtx<I>,
    h: &Registered<T, I, C>,
    delivery: &Delivery,
    decoded: &T,
    attempt: u32,
) -> Settled {
    let mut tx = match ctx.inbox.begin(&h.inbox_consumer, &delivery.id).await {
        Ok(Some(tx)) => tx,
        Ok(None) => return Settled::Duplicate,
        Err(e) if inbox_unavailable(&e) => return Settled::InboxUnavailable(format!("inbox: {e}")),
        Err(e) => {
            return Settled::Failed {
                after: None,
                reason: format!("inbox: {e}"),
            }
        }
    };
    let started = timer();
    let outcome = call_handler(h, delivery, decoded, attempt, &mut tx).await;
    record_duration(&h.process_duration, started);
    match outcome {
        // A commit whose outcome is unknown (the connection was lost) is
        // attempted again: the claim finds a committed unit of work as a
        // duplicate, and runs the handler again otherwise.
        Ok(Outcome::Ack) => match ctx.inbox.commit(tx).await {
            Ok(()) => Settled::Acked,
            Err(e) if inbox_unavailable(&e) => {
                Settled::InboxUnavailable(format!("committing: {e}"))
            }
            Err(e) => Settled::Failed {
                after: None,
                reason: format!("committing: {e}"),
            },
        },
        Ok(outcome) => {
            rollback(ctx, tx).await;
            settle(outcome)
        }
        Err(panic) => {
            rollback(ctx, tx).await;
            panicked(panic)
        }
    }
}

/// Rolls a unit of work back, waiting at most the answer timeout (a
/// rollback that does not complete is dropped, which ends the transaction
/// with its connection).
async fn rollback<I: Inbox>(ctx: &TaskCtx<I>, tx: I::Tx) {
    if tokio::time::timeout(ctx.answer_timeout, ctx.inbox.rollback(tx))
        .await
        .is_err()
    {
        tracing::warn!("an inbox rollback did not complete in time; dropped");
    }
}
