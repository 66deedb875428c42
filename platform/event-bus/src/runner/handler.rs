//! Handlers: what the runner calls for each event, and the shapes of
//! function [`Handler::new`] takes (through [`IntoHandlerFn`], implemented
//! for each; the shape is inferred).
//!
//! | the function | per event |
//! |---|---|
//! | an `async fn(Event<'_, T>, &mut Tx) -> Outcome` | no allocation |
//! | an `async fn(State<'_, S>, Event<'_, T>, &mut Tx) -> Outcome`, then [`Handler::with_state`] | no allocation |
//! | a closure `\|e: Event<'_, T>, tx: &mut Tx\| -> Outcome`, returning at once | no allocation |
//! | [`boxed`]`(\|e, tx\| Box::pin(async move { ... }))` | one box |
//!
//! State is passed the way axum passes it: the function's first parameter
//! is a [`State`], and the handler gets the state once, with
//! [`Handler::with_state`]. A closure captures its state instead.
//!
//! Closures that return an async block have to box it, through [`boxed`]:
//! the future borrows the event, and stable Rust cannot tie a closure's
//! returned future to the lifetime of its arguments through a generic
//! bound. A named `async fn` has no such problem and is kept in place,
//! without a box. Such a closure given to [`Handler::new`] directly does
//! not compile: name the function, or wrap the closure in [`boxed`].
//!
//! ```compile_fail
//! use event_bus::runner::{Event, Handler, Outcome};
//! let h = Handler::new("h", "x.y",
//!     |e: Event<'_, u64>, _tx: &mut ()| async move { println!("{}", e.data); Outcome::Ack });
//! ```
//!
//! A function taking [`State`] is not a handler the runner takes until its
//! state is given:
//!
//! ```compile_fail
//! use event_bus::runner::{Event, Handler, Outcome, Runner, State};
//! async fn count(n: State<'_, u64>, _e: Event<'_, u64>, _tx: &mut ()) -> Outcome { Outcome::Ack }
//! let bus: std::sync::Arc<dyn event_bus::EventBus> =
//!     std::sync::Arc::new(event_bus::InMemoryBus::new());
//! let r = Runner::builder(bus, "r").handler(Handler::new("h", "x.y", count)).build();
//! ```
//!
//! Every shape gets the same stages (decode, de-duplication, retries, dead
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

/// What calling a handler function gives: the outcome at once (a sync
/// closure) or a future of it.
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

/// A handler function as the runner calls it. [`Handler::new`] builds the
/// types that implement it; it cannot be implemented elsewhere.
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
/// outcome at once: what a sync closure and [`boxed`] become.
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

/// A closure that returns the outcome at once.
struct Immediate<F>(F);

impl<T, Tx, F> DynCall<T, Tx> for Immediate<F>
where
    F: for<'a> Fn(Event<'a, T>, &'a mut Tx) -> Outcome + Send + Sync,
{
    fn call<'a>(&'a self, e: Event<'a, T>, tx: &'a mut Tx) -> Call<BoxFuture<'a, Outcome>> {
        Call::Now((self.0)(e, tx))
    }
}

/// A closure returning a boxed future ([`boxed`]).
struct Plain<F>(F);

impl<T, Tx, F> DynCall<T, Tx> for Plain<F>
where
    F: for<'a> Fn(Event<'a, T>, &'a mut Tx) -> BoxFuture<'a, Outcome> + Send + Sync,
{
    fn call<'a>(&'a self, e: Event<'a, T>, tx: &'a mut Tx) -> Call<BoxFuture<'a, Outcome>> {
        Call::Later((self.0)(e, tx))
    }
}

/// The state a handler borrows for the whole event, given once with
/// [`Handler::with_state`]: the first parameter of an
/// `async fn(State<'_, S>, Event<'_, T>, &mut Tx) -> Outcome`, as axum's
/// `State` extractor. It dereferences to `S`.
pub struct State<'a, S>(pub &'a S);

impl<S> std::ops::Deref for State<'_, S> {
    type Target = S;

    fn deref(&self) -> &S {
        self.0
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
/// `async fn(State<'_, S>, Event<'_, T>, &mut Tx) -> Outcome` with a `Send` future.
pub trait AsyncStateHandlerFn<'a, S: 'a, T: 'a, Tx: 'a>: Send + Sync + 'static {
    /// The function's future.
    type Future: Future<Output = Outcome> + Send + 'a;
    /// Calls the function.
    fn call(&self, state: State<'a, S>, e: Event<'a, T>, tx: &'a mut Tx) -> Self::Future;
}

impl<'a, S: 'a, T: 'a, Tx: 'a, F, Fut> AsyncStateHandlerFn<'a, S, T, Tx> for F
where
    F: Fn(State<'a, S>, Event<'a, T>, &'a mut Tx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'a,
{
    type Future = Fut;

    fn call(&self, state: State<'a, S>, e: Event<'a, T>, tx: &'a mut Tx) -> Fut {
        self(state, e, tx)
    }
}

/// An `async fn` handler: its future is kept in place, without a box.
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

/// An `async fn` handler taking [`State`], before its state is given:
/// the runner does not take it until [`Handler::with_state`] has been called.
pub struct NeedsState<S, F> {
    f: F,
    _state: std::marker::PhantomData<fn() -> S>,
}

/// An `async fn` handler taking [`State`], with its state.
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
        Call::Later(self.f.call(State(&self.state), e, tx))
    }
}

/// Which shape of function a handler is (the `M` of [`IntoHandlerFn`]):
/// inferred, never written.
#[doc(hidden)]
pub mod shape {
    /// `async fn(Event<'_, T>, &mut Tx) -> Outcome`.
    pub struct Async;
    /// `async fn(State<'_, S>, Event<'_, T>, &mut Tx) -> Outcome`.
    pub struct AsyncWithState<S>(std::marker::PhantomData<fn() -> S>);
    /// `|e: Event<'_, T>, tx: &mut Tx| -> Outcome`.
    pub struct Sync;
    /// A [`boxed`](super::boxed) closure.
    pub struct Boxed;
}

/// What [`Handler::new`] takes: any function of one of the shapes of the
/// [module docs](self). Implemented for every such function; `M` (the
/// shape) is inferred.
pub trait IntoHandlerFn<T, Tx, M>: Sized {
    /// The function as the runner keeps it.
    #[doc(hidden)]
    type Fn;
    /// Whether the function returns its outcome at once, without a future.
    #[doc(hidden)]
    const SYNC: bool = false;
    /// Converts the function.
    #[doc(hidden)]
    fn into_fn(self) -> Self::Fn;
}

impl<T: 'static, Tx: 'static, F> IntoHandlerFn<T, Tx, shape::Async> for F
where
    F: for<'a> AsyncHandlerFn<'a, T, Tx>,
{
    type Fn = FromFn<F>;

    fn into_fn(self) -> FromFn<F> {
        FromFn(self)
    }
}

impl<T: 'static, Tx: 'static, S: 'static, F> IntoHandlerFn<T, Tx, shape::AsyncWithState<S>> for F
where
    F: for<'a> AsyncStateHandlerFn<'a, S, T, Tx>,
{
    type Fn = NeedsState<S, F>;

    fn into_fn(self) -> NeedsState<S, F> {
        NeedsState {
            f: self,
            _state: std::marker::PhantomData,
        }
    }
}

impl<T: 'static, Tx: 'static, F> IntoHandlerFn<T, Tx, shape::Sync> for F
where
    F: for<'a> Fn(Event<'a, T>, &'a mut Tx) -> Outcome + Send + Sync + 'static,
{
    type Fn = Boxed<T, Tx>;
    const SYNC: bool = true;

    fn into_fn(self) -> Boxed<T, Tx> {
        Boxed(Arc::new(Immediate(self)))
    }
}

impl<T, Tx> IntoHandlerFn<T, Tx, shape::Boxed> for Boxed<T, Tx> {
    type Fn = Boxed<T, Tx>;

    fn into_fn(self) -> Boxed<T, Tx> {
        self
    }
}

/// A closure returning `Box::pin(async move { ... })`, for [`Handler::new`].
///
/// Only a closure whose async block uses the event needs it: stable Rust
/// cannot tie a closure's returned future to the lifetime of its arguments
/// through a generic bound, so such a closure given to [`Handler::new`]
/// directly does not compile; `boxed` states the closure's signature for
/// it. A named `async fn` needs no box.
///
/// ```
/// use event_bus::runner::{boxed, Event, Handler, Outcome};
///
/// let h = Handler::new("h", "x.y", boxed(|e: Event<'_, u64>, _tx: &mut ()| Box::pin(async move {
///     println!("{}", e.data);
///     Outcome::Ack
/// })));
/// ```
pub fn boxed<T, Tx, F>(f: F) -> Boxed<T, Tx>
where
    T: 'static,
    Tx: 'static,
    F: for<'a> Fn(Event<'a, T>, &'a mut Tx) -> BoxFuture<'a, Outcome> + Send + Sync + 'static,
{
    Boxed(Arc::new(Plain(f)))
}

/// A typed handler: a name, a subject pattern and a function (see the
/// [module docs](self) for the shapes a function can have).
pub struct Handler<T, Tx, F = Boxed<T, Tx>> {
    pub(crate) name: String,
    pub(crate) pattern: String,
    pub(crate) retry: RetryPolicy,
    pub(crate) f: F,
    /// Whether `f` returns its outcome at once (a sync closure).
    pub(crate) sync: bool,
    pub(crate) key: Option<Arc<KeyFn<T>>>,
    /// [`Handler::layer`].
    pub(crate) layers: Vec<Arc<dyn super::Layer>>,
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
    /// the PostgreSQL inbox) and returns an [`Outcome`]; it is any function
    /// of the shapes in the [module docs](self).
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
    /// let h = Handler::new("send-welcome", "auth.events.user.created", welcome);
    /// ```
    pub fn new<M, F>(
        name: impl Into<String>,
        pattern: impl Into<String>,
        f: F,
    ) -> Handler<T, Tx, F::Fn>
    where
        F: IntoHandlerFn<T, Tx, M>,
    {
        let mut h = Handler::build(name.into(), pattern.into(), f.into_fn());
        h.sync = F::SYNC;
        h
    }
}

impl<T, Tx, S, F> Handler<T, Tx, NeedsState<S, F>>
where
    S: Send + Sync + 'static,
{
    /// Gives a handler whose function takes [`State`] its state (a
    /// connection pool, a client, counters): the function borrows it for
    /// the whole event, so nothing is cloned per event. The runner takes
    /// such a handler only once its state is given.
    ///
    /// ```
    /// use event_bus::runner::{Event, Handler, Outcome, State};
    /// use std::sync::atomic::{AtomicU64, Ordering};
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Paid { cents: u64 }
    ///
    /// async fn revenue(total: State<'_, AtomicU64>, e: Event<'_, Paid>, _tx: &mut ()) -> Outcome {
    ///     total.fetch_add(e.data.cents, Ordering::Relaxed);
    ///     Outcome::Ack
    /// }
    ///
    /// let h = Handler::new("revenue", "billing.paid", revenue).with_state(AtomicU64::new(0));
    /// ```
    pub fn with_state(self, state: S) -> Handler<T, Tx, FromFnWithState<S, F>> {
        Handler {
            name: self.name,
            pattern: self.pattern,
            retry: self.retry,
            f: FromFnWithState { state, f: self.f.f },
            sync: false,
            key: self.key,
            layers: self.layers,
            _tx: std::marker::PhantomData,
        }
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
            layers: Vec::new(),
            _tx: std::marker::PhantomData,
        }
    }

    /// Sets the retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Adds a [`Layer`](super::Layer) around this handler's attempts, below
    /// the runner's layers ([`RunnerBuilder::layer`](super::RunnerBuilder::layer));
    /// in the order added, the first outermost. See [`layer`](super::layer).
    pub fn layer(mut self, layer: impl super::Layer) -> Self {
        self.layers.push(Arc::new(layer));
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
