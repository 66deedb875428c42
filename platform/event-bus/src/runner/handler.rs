//! Handlers: what the runner calls for each event, and the ways to write one.
//!
//! | constructor | the function | per event |
//! |---|---|---|
//! | [`Handler::from_fn`] | an `async fn(Event<'_, T>, &mut Tx) -> Outcome` | no allocation |
//! | [`Handler::from_fn_with_state`] | an `async fn(&S, Event<'_, T>, &mut Tx) -> Outcome` | no allocation |
//! | [`Handler::sync`] | a closure returning the [`Outcome`] at once | no allocation |
//! | [`Handler::new`] | a closure returning `Box::pin(async move { ... })` | one box |
//! | [`Handler::with_state`] | the same, borrowing state | one box |
//!
//! Closures that return an async block have to box it: the future borrows
//! the event, and stable Rust cannot tie a closure's returned future to the
//! lifetime of its arguments, nor state that an async closure's future is
//! `Send`. A named `async fn` has no such problem, so [`Handler::from_fn`]
//! keeps its future in place, without a box. A closure given to `from_fn`
//! whose async block uses the event does not compile (rustc 1.9x says
//! "lifetime may not live long enough"): name the function instead.
//!
//! ```compile_fail
//! use event_bus::runner::{Event, Handler, Outcome};
//! let h: Handler<u64, (), _> = Handler::from_fn("h", "x.y",
//!     |e: Event<'_, u64>, _tx: &mut ()| async move { println!("{}", e.data); Outcome::Ack });
//! ```
//!
//! Every kind gets the same stages (decode, de-duplication, retries, dead
//! letters, shutdown); see the [runner](super).

use super::{Outcome, RetryPolicy};
use crate::message::BusMessage;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::Arc;

/// An event as a handler sees it.
pub struct Event<'a, T> {
    /// The decoded payload.
    pub data: &'a T,
    /// The message (subject, id, headers, raw payload).
    pub message: &'a BusMessage,
    /// This attempt's number (1 = first).
    pub attempt: u32,
    /// How often the backend has delivered the event (> 1 after a crash or redelivery).
    pub delivery_count: u32,
}

pub(crate) type KeyFn<T> = dyn Fn(&T) -> String + Send + Sync;

/// What calling a handler function gives: the outcome at once (a
/// [`Handler::sync`] function) or a future of it.
#[doc(hidden)]
pub enum Call<F> {
    /// The outcome, at once.
    Now(Outcome),
    /// The outcome's future.
    Later(F),
}

mod sealed {
    pub trait Sealed {}
}

/// A handler function as the runner calls it. The [`Handler`] constructors
/// build the types that implement it; it cannot be implemented elsewhere.
pub trait HandlerFn<T, Tx>: sealed::Sealed + Send + Sync + 'static {
    /// The future of one call.
    #[doc(hidden)]
    type Future<'a>: Future<Output = Outcome> + Send + 'a
    where
        Self: 'a,
        T: 'a,
        Tx: 'a;

    /// Calls the function with an event and the unit of work.
    #[doc(hidden)]
    fn call<'a>(&'a self, e: Event<'a, T>, tx: &'a mut Tx) -> Call<Self::Future<'a>>;
}

/// A handler function behind a pointer, returning a boxed future or its
/// outcome at once: what [`Handler::new`], [`Handler::with_state`] and
/// [`Handler::sync`] build.
pub struct Boxed<T, Tx>(Arc<dyn DynCall<T, Tx>>);

/// The object-safe form of a [`Boxed`] function.
trait DynCall<T, Tx>: Send + Sync {
    fn call<'a>(&'a self, e: Event<'a, T>, tx: &'a mut Tx) -> Call<BoxFuture<'a, Outcome>>;
}

impl<T, Tx> sealed::Sealed for Boxed<T, Tx> {}

impl<T: 'static, Tx: 'static> HandlerFn<T, Tx> for Boxed<T, Tx> {
    type Future<'a> = BoxFuture<'a, Outcome>;

    fn call<'a>(&'a self, e: Event<'a, T>, tx: &'a mut Tx) -> Call<Self::Future<'a>> {
        self.0.call(e, tx)
    }
}

/// A function that returns the outcome at once ([`Handler::sync`]).
struct Immediate<F>(F);

impl<T, Tx, F> DynCall<T, Tx> for Immediate<F>
where
    F: for<'a> Fn(Event<'a, T>, &'a mut Tx) -> Outcome + Send + Sync,
{
    fn call<'a>(&'a self, e: Event<'a, T>, tx: &'a mut Tx) -> Call<BoxFuture<'a, Outcome>> {
        Call::Now((self.0)(e, tx))
    }
}

/// A function of the event alone ([`Handler::new`]).
struct Plain<F>(F);

impl<T, Tx, F> DynCall<T, Tx> for Plain<F>
where
    F: for<'a> Fn(Event<'a, T>, &'a mut Tx) -> BoxFuture<'a, Outcome> + Send + Sync,
{
    fn call<'a>(&'a self, e: Event<'a, T>, tx: &'a mut Tx) -> Call<BoxFuture<'a, Outcome>> {
        Call::Later((self.0)(e, tx))
    }
}

/// A function that borrows state the handler owns ([`Handler::with_state`]).
struct Stateful<S, F> {
    state: S,
    f: F,
}

impl<T, Tx, S, F> DynCall<T, Tx> for Stateful<S, F>
where
    S: Send + Sync,
    F: for<'a> Fn(&'a S, Event<'a, T>, &'a mut Tx) -> BoxFuture<'a, Outcome> + Send + Sync,
{
    fn call<'a>(&'a self, e: Event<'a, T>, tx: &'a mut Tx) -> Call<BoxFuture<'a, Outcome>> {
        Call::Later((self.f)(&self.state, e, tx))
    }
}

/// An async function of an event: `async fn(Event<'_, T>, &mut Tx) -> Outcome`
/// with a `Send` future. Implemented for every such function; it names the
/// future's type, which a closure's bound cannot.
pub trait AsyncHandlerFn<'a, T: 'a, Tx: 'a>: Send + Sync + 'static {
    /// The function's future.
    type Future: Future<Output = Outcome> + Send + 'a;
    /// Calls the function.
    fn call(&self, e: Event<'a, T>, tx: &'a mut Tx) -> Self::Future;
}

impl<'a, T: 'a, Tx: 'a, F, Fut> AsyncHandlerFn<'a, T, Tx> for F
where
    F: Fn(Event<'a, T>, &'a mut Tx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'a,
{
    type Future = Fut;

    fn call(&self, e: Event<'a, T>, tx: &'a mut Tx) -> Fut {
        self(e, tx)
    }
}

/// An async function of state and an event:
/// `async fn(&S, Event<'_, T>, &mut Tx) -> Outcome` with a `Send` future.
pub trait AsyncStateHandlerFn<'a, S: 'a, T: 'a, Tx: 'a>: Send + Sync + 'static {
    /// The function's future.
    type Future: Future<Output = Outcome> + Send + 'a;
    /// Calls the function.
    fn call(&self, state: &'a S, e: Event<'a, T>, tx: &'a mut Tx) -> Self::Future;
}

impl<'a, S: 'a, T: 'a, Tx: 'a, F, Fut> AsyncStateHandlerFn<'a, S, T, Tx> for F
where
    F: Fn(&'a S, Event<'a, T>, &'a mut Tx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'a,
{
    type Future = Fut;

    fn call(&self, state: &'a S, e: Event<'a, T>, tx: &'a mut Tx) -> Fut {
        self(state, e, tx)
    }
}

/// An `async fn` handler ([`Handler::from_fn`]): its future is kept in
/// place, without a box.
pub struct FromFn<F>(F);

impl<F> sealed::Sealed for FromFn<F> {}

impl<T: 'static, Tx: 'static, F> HandlerFn<T, Tx> for FromFn<F>
where
    F: for<'a> AsyncHandlerFn<'a, T, Tx>,
{
    type Future<'a> = <F as AsyncHandlerFn<'a, T, Tx>>::Future;

    fn call<'a>(&'a self, e: Event<'a, T>, tx: &'a mut Tx) -> Call<Self::Future<'a>> {
        Call::Later(self.0.call(e, tx))
    }
}

/// An `async fn` handler with state ([`Handler::from_fn_with_state`]).
pub struct FromFnWithState<S, F> {
    state: S,
    f: F,
}

impl<S, F> sealed::Sealed for FromFnWithState<S, F> {}

impl<T: 'static, Tx: 'static, S, F> HandlerFn<T, Tx> for FromFnWithState<S, F>
where
    S: Send + Sync + 'static,
    F: for<'a> AsyncStateHandlerFn<'a, S, T, Tx>,
{
    type Future<'a> = <F as AsyncStateHandlerFn<'a, S, T, Tx>>::Future;

    fn call<'a>(&'a self, e: Event<'a, T>, tx: &'a mut Tx) -> Call<Self::Future<'a>> {
        Call::Later(self.f.call(&self.state, e, tx))
    }
}

/// A typed handler: a name, a subject pattern and a function (see the
/// [module docs](self) for the ways to write one).
pub struct Handler<T, Tx, F = Boxed<T, Tx>> {
    pub(crate) name: String,
    pub(crate) pattern: String,
    pub(crate) retry: RetryPolicy,
    pub(crate) f: F,
    /// Whether `f` returns its outcome at once ([`Handler::sync`]).
    pub(crate) sync: bool,
    pub(crate) key: Option<Arc<KeyFn<T>>>,
    _tx: std::marker::PhantomData<fn(&mut Tx)>,
}

impl<T, Tx> Handler<T, Tx>
where
    T: DeserializeOwned + Send + Sync + 'static,
    Tx: Send + 'static,
{
    /// A handler named `name` (it names the durable consumer
    /// `<runner>-<name>` and appears in dead letters) for `pattern`. `f` gets
    /// the decoded event and the inbox's unit of work (`&mut Transaction` with
    /// the PostgreSQL inbox) and returns an [`Outcome`]; write it as
    /// `|e, tx| Box::pin(async move { ... })`. (An `async fn` given to
    /// [`from_fn`](Handler::from_fn) needs no box.)
    pub fn new<F>(name: impl Into<String>, pattern: impl Into<String>, f: F) -> Self
    where
        F: for<'a> Fn(Event<'a, T>, &'a mut Tx) -> BoxFuture<'a, Outcome> + Send + Sync + 'static,
    {
        Handler::build(name.into(), pattern.into(), Boxed(Arc::new(Plain(f))))
    }

    /// Like [`new`](Self::new), for a handler with state (a connection
    /// pool, a client, counters): `f` borrows `state` for the whole event,
    /// so nothing has to be cloned per event.
    ///
    /// ```
    /// use event_bus::runner::{Event, Handler, Outcome};
    /// use std::sync::atomic::{AtomicU64, Ordering};
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Paid { cents: u64 }
    ///
    /// let h: Handler<Paid, ()> = Handler::with_state(
    ///     "revenue",
    ///     "billing.paid",
    ///     AtomicU64::new(0),
    ///     |total: &AtomicU64, e: Event<'_, Paid>, _tx| Box::pin(async move {
    ///         total.fetch_add(e.data.cents, Ordering::Relaxed);
    ///         Outcome::Ack
    ///     }),
    /// );
    /// ```
    pub fn with_state<S, F>(
        name: impl Into<String>,
        pattern: impl Into<String>,
        state: S,
        f: F,
    ) -> Self
    where
        S: Send + Sync + 'static,
        F: for<'a> Fn(&'a S, Event<'a, T>, &'a mut Tx) -> BoxFuture<'a, Outcome>
            + Send
            + Sync
            + 'static,
    {
        Handler::build(
            name.into(),
            pattern.into(),
            Boxed(Arc::new(Stateful { state, f })),
        )
    }

    /// A handler whose function returns its [`Outcome`] at once, without a
    /// future: the shape of the spec's hand-written loop
    /// (`match handle_event(&msg)`), for handlers that do not wait for
    /// anything (update in-process state, count, route). It gets the same
    /// stages as an async handler (decode, de-duplication, retries with
    /// backoff, dead letters, shutdown) and costs less per event: no
    /// future is allocated for it, and without a de-duplicating inbox an
    /// event it acknowledges is handled without any per-event state of the
    /// runner's. It runs on the runner's task, so it must not block. State
    /// is captured by the closure (it is borrowed per call, never cloned).
    ///
    /// ```
    /// use event_bus::runner::{Event, Handler, Outcome};
    /// use std::sync::atomic::{AtomicU64, Ordering};
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Paid { cents: u64 }
    ///
    /// let total = AtomicU64::new(0);
    /// let h: Handler<Paid, ()> = Handler::sync("revenue", "billing.paid",
    ///     move |e: Event<'_, Paid>, _tx| {
    ///         total.fetch_add(e.data.cents, Ordering::Relaxed);
    ///         Outcome::Ack
    ///     });
    /// ```
    pub fn sync<F>(name: impl Into<String>, pattern: impl Into<String>, f: F) -> Self
    where
        F: for<'a> Fn(Event<'a, T>, &'a mut Tx) -> Outcome + Send + Sync + 'static,
    {
        let mut h = Handler::build(name.into(), pattern.into(), Boxed(Arc::new(Immediate(f))));
        h.sync = true;
        h
    }
}

impl<T, Tx, F> Handler<T, Tx, FromFn<F>>
where
    T: DeserializeOwned + Send + Sync + 'static,
    Tx: Send + 'static,
    F: for<'a> AsyncHandlerFn<'a, T, Tx>,
{
    /// A handler whose function is an `async fn(Event<'_, T>, &mut Tx) ->
    /// Outcome`. Its future is kept in place, without a box per event.
    ///
    /// ```
    /// use event_bus::runner::{Event, Handler, Outcome};
    ///
    /// #[derive(serde::Deserialize)]
    /// struct UserCreated { user_id: String }
    ///
    /// async fn welcome(e: Event<'_, UserCreated>, _tx: &mut ()) -> Outcome {
    ///     println!("welcome {}", e.data.user_id);
    ///     Outcome::Ack
    /// }
    ///
    /// let h = Handler::from_fn("send-welcome", "auth.events.user.created", welcome);
    /// ```
    pub fn from_fn(name: impl Into<String>, pattern: impl Into<String>, f: F) -> Self {
        Handler::build(name.into(), pattern.into(), FromFn(f))
    }
}

impl<T, Tx, S, F> Handler<T, Tx, FromFnWithState<S, F>>
where
    T: DeserializeOwned + Send + Sync + 'static,
    Tx: Send + 'static,
    S: Send + Sync + 'static,
    F: for<'a> AsyncStateHandlerFn<'a, S, T, Tx>,
{
    /// Like [`from_fn`](Handler::from_fn), for an `async fn(&S, Event<'_,
    /// T>, &mut Tx) -> Outcome` that borrows `state` for the whole event.
    ///
    /// ```
    /// use event_bus::runner::{Event, Handler, Outcome};
    /// use std::sync::atomic::{AtomicU64, Ordering};
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Paid { cents: u64 }
    ///
    /// async fn revenue(total: &AtomicU64, e: Event<'_, Paid>, _tx: &mut ()) -> Outcome {
    ///     total.fetch_add(e.data.cents, Ordering::Relaxed);
    ///     Outcome::Ack
    /// }
    ///
    /// let h = Handler::from_fn_with_state("revenue", "billing.paid", AtomicU64::new(0), revenue);
    /// ```
    pub fn from_fn_with_state(
        name: impl Into<String>,
        pattern: impl Into<String>,
        state: S,
        f: F,
    ) -> Self {
        Handler::build(name.into(), pattern.into(), FromFnWithState { state, f })
    }
}

impl<T, Tx, F> Handler<T, Tx, F> {
    fn build(name: String, pattern: String, f: F) -> Self {
        Handler {
            name,
            pattern,
            retry: RetryPolicy::default(),
            f,
            sync: false,
            key: None,
            _tx: std::marker::PhantomData,
        }
    }

    /// Sets the retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Handles events with equal keys one at a time, in arrival order.
    pub fn key(mut self, key: impl Fn(&T) -> String + Send + Sync + 'static) -> Self {
        self.key = Some(Arc::new(key));
        self
    }
}

/// A check of every event before its handler sees it
/// ([`RunnerBuilder::check`](super::RunnerBuilder::check)): `Err(reason)`
/// sends the event to the dead letters with `reason` as its last error.
///
/// ```
/// use event_bus::runner::EventCheck;
/// use event_bus::BusMessage;
///
/// struct NotEmpty;
/// impl EventCheck for NotEmpty {
///     fn check(&self, message: &BusMessage) -> Result<(), String> {
///         if message.payload.is_empty() {
///             return Err(format!("empty event on {}", message.subject));
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait EventCheck: Send + Sync + 'static {
    /// `Ok` to hand the event to its handler, `Err(reason)` to dead-letter it.
    fn check(&self, message: &crate::BusMessage) -> Result<(), String>;
}

impl<F> EventCheck for F
where
    F: Fn(&crate::BusMessage) -> Result<(), String> + Send + Sync + 'static,
{
    fn check(&self, message: &crate::BusMessage) -> Result<(), String> {
        self(message)
    }
}
