//! [`InMemoryBus`]: the in-process backend for development and tests.
//!
//! * **Routing**: a subject trie with a match cache ([`Sublist`]); publishing
//!   to a cached subject is one hash lookup under a read lock, whatever the
//!   number of unrelated subscriptions, and publishing to a subject nobody
//!   listens to stops there.
//! * **Delivery**: every subscription has its own bounded queue (see
//!   [`Overflow`] and the `queue` module docs for why not `tokio::sync::broadcast`).
//!   Every subscriber gets every matching message, in publish order per publisher.
//! * **Lossless by default**: a full queue makes publishers of the subjects it
//!   listens to wait ([`Overflow::Block`]); publishers and subscribers of other
//!   subjects go on. Lossy policies count every dropped message
//!   ([`MemorySubscription::dropped`], [`InMemoryBus::stats`]) and log it.
//! * **De-duplication**: an [`Envelope`] with a message id already published
//!   within the de-duplication window (2 minutes, as JetStream's default, and
//!   at most [`MemoryConfig::dedup_max_ids`] ids) is reported as a duplicate
//!   and not delivered again, as on NATS. An id counts as published once the
//!   message is queued for every subscriber: a publish abandoned while it
//!   waits for room (a timeout) can be retried with the same id. (Subscribers
//!   it had already reached then get it twice, with the same id.)
//! * **A bounded log** (see [`MemoryConfig::log_max_messages`]) lets a durable
//!   consumer start with `StartPosition::All` or `Sequence(n)` as on NATS. It
//!   records from the first durable consumer's creation on (plain
//!   publish/subscribe does not pay for it), or from the start with
//!   [`MemoryConfig::log_from_start`]; a start it cannot honour is `Unsupported`.
//! * **Durable consumers expire** after [`MemoryConfig::durable_inactive_threshold`]
//!   with no open instance.
//! * **No durability**: messages live in memory only.
//!
//! ```
//! use event_bus::{EventBus, InMemoryBus};
//! use futures::StreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), event_bus::BusError> {
//! let bus = InMemoryBus::new();
//! let mut created = bus.subscribe("auth.*.created").await?;
//! bus.publish("auth.user.created", b"hi".to_vec()).await?;
//! bus.publish("auth.user.profile.created", b"not for *".to_vec()).await?;
//! assert_eq!(created.next().await.unwrap().payload, "hi".as_bytes());
//! # Ok(()) }
//! ```

mod durable;
mod log;
mod queue;

pub use durable::DURABLE_CAPACITY;

pub use queue::{MemorySubscription, Overflow};

use crate::bus::{EventBus, HealthReport, HealthStatus, PublishFuture, Subscription};
use crate::consumer::{ConsumerConfig, ConsumerStream};
use crate::error::{BusError, ErrorKind};
use crate::message::{BusMessage, Envelope, Headers, MessageId, PublishAck};
use crate::subject::{validate_bus_pattern, validate_bus_subject, Match, SubId, Subject, Sublist};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock, RwLockWriteGuard};
use queue::{Push, SubQueue, Unregister};
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// Settings of an [`InMemoryBus`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Messages each subscription may queue before its overflow policy applies.
    pub capacity: usize,
    /// What a full subscription does.
    pub overflow: Overflow,
    /// Largest payload plus headers accepted, in bytes (NATS' default: 1 MiB).
    pub max_payload: usize,
    /// Literal subjects whose routes are cached.
    pub cache_size: usize,
    /// How long a message id is remembered for de-duplication.
    #[serde(with = "crate::duration_str")]
    pub dedup_window: Duration,
    /// Most message ids remembered for de-duplication: beyond it the oldest
    /// is forgotten before its window ends (0 remembers none).
    pub dedup_max_ids: usize,
    /// A durable consumer with no open instance for this long is deleted
    /// with what it holds (JetStream's `inactive_threshold`); re-opening it
    /// within the threshold resumes where it was.
    #[serde(with = "crate::duration_str")]
    pub durable_inactive_threshold: Duration,
    /// Most messages kept in the bus's log, which lets a durable consumer
    /// start with `StartPosition::All` or `Sequence(n)` (see below); 0
    /// disables the log (such starts are then `Unsupported`).
    pub log_max_messages: usize,
    /// Most bytes (payloads, headers and subjects) kept in the log; 0
    /// disables it.
    pub log_max_bytes: usize,
    /// Record every message in the log from the bus's creation. By default
    /// the log records from the first durable consumer's creation on, so
    /// that plain publish/subscribe does not pay for it (about a third of
    /// its throughput): `StartPosition::All` then starts with the oldest
    /// message recorded.
    pub log_from_start: bool,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            capacity: 1024,
            overflow: Overflow::Block,
            max_payload: 1024 * 1024,
            cache_size: crate::subject::DEFAULT_CACHE_SIZE,
            dedup_window: Duration::from_secs(120),
            dedup_max_ids: 100_000,
            durable_inactive_threshold: Duration::from_secs(300),
            log_max_messages: 100_000,
            log_max_bytes: 64 * 1024 * 1024,
            log_from_start: false,
        }
    }
}

/// Per-subscription settings for [`InMemoryBus::subscribe_with`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Messages the subscription may queue.
    pub capacity: usize,
    /// What happens when the queue is full.
    pub overflow: Overflow,
}

/// A snapshot of one subscription, from [`InMemoryBus::stats`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct SubscriptionStats {
    /// The pattern.
    pub pattern: String,
    /// Messages waiting in its queue.
    pub queued: usize,
    /// Its capacity.
    pub capacity: usize,
    /// Its overflow policy.
    pub overflow: Overflow,
    /// Messages dropped by its overflow policy.
    pub dropped: u64,
}

/// A snapshot of the bus, from [`InMemoryBus::stats`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct MemoryStats {
    /// Sequence numbers given so far: messages delivered to at least one
    /// subscriber, or recorded in the log.
    pub published: u64,
    /// Messages in the log.
    pub log_messages: usize,
    /// Bytes in the log.
    pub log_bytes: usize,
    /// Messages dropped across all subscriptions.
    pub dropped: u64,
    /// Literal subjects in the route cache.
    pub cached_subjects: usize,
    /// One entry per live subscription.
    pub subscriptions: Vec<SubscriptionStats>,
}

/// The in-process event bus. Cheap to clone: clones share one bus.
///
/// See the [module docs](self) for its semantics.
#[derive(Clone)]
pub struct InMemoryBus {
    inner: Arc<Inner>,
}

struct Inner {
    routes: RwLock<Sublist<Arc<SubQueue>>>,
    subs: Mutex<FxHashMap<SubId, Arc<SubQueue>>>,
    next_sub: AtomicU64,
    seq: AtomicU64,
    origin: u64,
    closed: AtomicBool,
    dedup: Mutex<DedupWindow>,
    durables: Mutex<FxHashMap<String, Arc<durable::Durable>>>,
    /// Whether publishes are recorded in `log`. Only changes (to true) under
    /// the routes' write lock, and publishers read it, number their message
    /// and record it under the read lock, so a consumer that registers its
    /// feed (write lock) and then reads the log misses nothing in between.
    logging: AtomicBool,
    log: Mutex<log::Log>,
    config: MemoryConfig,
    /// Publish metrics (boxed, last: off the hot fields' cache lines).
    metrics: Box<crate::metrics::PublishMetrics>,
}

impl Default for InMemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryBus {
    /// A bus with the default [`MemoryConfig`]. Synchronous and infallible.
    pub fn new() -> Self {
        Self::with_config(MemoryConfig::default())
    }

    /// A bus with `config`. A zero capacity or cache size is raised to 1.
    pub fn with_config(config: MemoryConfig) -> Self {
        let origin = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        InMemoryBus {
            inner: Arc::new(Inner {
                routes: RwLock::new(Sublist::with_cache_size(config.cache_size.max(1))),
                subs: Mutex::new(FxHashMap::default()),
                next_sub: AtomicU64::new(1),
                seq: AtomicU64::new(0),
                origin,
                closed: AtomicBool::new(false),
                dedup: Mutex::new(DedupWindow::default()),
                durables: Mutex::new(FxHashMap::default()),
                logging: AtomicBool::new(config.log_from_start && log::Log::enabled(&config)),
                log: Mutex::new({
                    let mut log = log::Log::new(&config);
                    log.start(1);
                    log
                }),
                config,
                metrics: Box::new(crate::metrics::PublishMetrics::new("memory", None)),
            }),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &MemoryConfig {
        &self.inner.config
    }

    /// Publishes `payload` on `subject`. Completes without allocating unless a
    /// subscriber's queue is full and the publish has to wait for room.
    #[inline]
    pub fn publish<'a>(&'a self, subject: &'a str, payload: Vec<u8>) -> PublishFuture<'a> {
        // Plain publishes are not counted (see `crate::metrics`): the 1:1
        // path stays as fast as a raw channel. Failures are.
        match self.start_publish(subject, payload) {
            Ok(None) => PublishFuture::ready(Ok(())),
            Ok(Some(rest)) => PublishFuture::new(rest.finish()),
            Err(e) => {
                self.inner.metrics.failed(e.kind(), None);
                PublishFuture::ready(Err(e))
            }
        }
    }

    #[inline]
    fn start_publish(
        &self,
        subject: &str,
        payload: Vec<u8>,
    ) -> Result<Option<Remaining>, BusError> {
        self.check_size(subject, payload.len(), 0)?;
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(BusError::closed(format!(
                "publish to {subject:?}: the in-memory bus is closed"
            )));
        }
        {
            // Fast path: a cached route, delivered under the read lock without
            // touching the route's reference count.
            let routes = self.inner.routes.read();
            if let Some(route) = routes.cached(subject) {
                return Ok(self.deliver_cached(route, payload));
            }
        }
        self.with_new_route(subject, |route| self.deliver_cached(route, payload))
    }

    /// Runs `deliver` on the route of `subject` under the routes' read lock
    /// (see `Inner::logging`): from the cache (valid by construction, and
    /// without touching the route's reference count), else validated and
    /// computed.
    #[inline]
    fn with_route<R>(
        &self,
        subject: &str,
        deliver: impl FnOnce(&Arc<Match<Arc<SubQueue>>>) -> R,
    ) -> Result<R, BusError> {
        {
            let routes = self.inner.routes.read();
            if let Some(route) = routes.cached(subject) {
                return Ok(deliver(route));
            }
        }
        self.with_new_route(subject, deliver)
    }

    /// [`with_route`](Self::with_route) for a subject not in the route cache.
    #[cold]
    #[inline(never)]
    fn with_new_route<R>(
        &self,
        subject: &str,
        deliver: impl FnOnce(&Arc<Match<Arc<SubQueue>>>) -> R,
    ) -> Result<R, BusError> {
        validate_bus_subject(subject)?;
        self.ensure_open()?;
        let mut routes = self.inner.routes.write();
        let route = routes.matches(subject);
        let _routes = RwLockWriteGuard::downgrade(routes);
        Ok(deliver(&route))
    }

    #[inline(always)]
    fn deliver_cached(
        &self,
        route: &Arc<Match<Arc<SubQueue>>>,
        payload: Vec<u8>,
    ) -> Option<Remaining> {
        self.deliver(route, Bytes::from(payload), Headers::new(), None)
            .1
    }

    /// Numbers the message (recording it in the log when the log is on) and
    /// queues it for every subscriber without waiting. Returns its sequence
    /// (0 when nothing took it) and the rest of the work if a lossless
    /// queue is full.
    #[inline(always)]
    fn deliver(
        &self,
        route: &Arc<Match<Arc<SubQueue>>>,
        payload: Bytes,
        headers: Headers,
        id: Option<MessageId>,
    ) -> (u64, Option<Remaining>) {
        if self.inner.logging.load(Ordering::Relaxed) {
            return self.deliver_logged(route, payload, headers, id);
        }
        if route.subs.is_empty() {
            return (0, None);
        }
        let msg = self.message(route, payload, headers, id);
        (msg.sequence, deliver_now(route, msg))
    }

    /// Numbers and records the message in the log, then queues it for every
    /// subscriber (if any) without waiting. Returns its sequence.
    #[inline(never)]
    fn deliver_logged(
        &self,
        route: &Arc<Match<Arc<SubQueue>>>,
        payload: Bytes,
        headers: Headers,
        id: Option<MessageId>,
    ) -> (u64, Option<Remaining>) {
        let msg = {
            let mut log = self.inner.log.lock();
            let msg = self.message(route, payload, headers, id);
            log.push(msg.clone());
            msg
        };
        let seq = msg.sequence;
        if route.subs.is_empty() {
            return (seq, None);
        }
        (seq, deliver_now(route, msg))
    }

    /// Starts recording publishes in the log (if the configuration allows
    /// one): called when a durable consumer is created.
    fn start_logging(&self) {
        if !log::Log::enabled(&self.inner.config) || self.inner.logging.load(Ordering::Acquire) {
            return;
        }
        let _routes = self.inner.routes.write();
        let mut log = self.inner.log.lock();
        if !self.inner.logging.load(Ordering::Relaxed) {
            log.start(self.inner.seq.load(Ordering::Relaxed) + 1);
            self.inner.logging.store(true, Ordering::Release);
        }
    }

    /// The next message on `route`: numbered by the bus, with the given id or
    /// one derived from its number.
    #[inline]
    fn message(
        &self,
        route: &Match<Arc<SubQueue>>,
        payload: Bytes,
        headers: Headers,
        id: Option<MessageId>,
    ) -> BusMessage {
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let id = id.unwrap_or_else(|| MessageId::local(self.inner.origin, seq));
        BusMessage::new(
            Subject::from_trusted(route.subject.clone()),
            payload,
            headers,
            id,
            seq,
        )
    }

    /// Subscribes with the bus's default capacity and overflow policy.
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, BusError> {
        let sub = self.subscribe_with(
            pattern,
            SubscribeOptions {
                capacity: self.inner.config.capacity,
                overflow: self.inner.config.overflow,
            },
        )?;
        Ok(Subscription::new(pattern, sub))
    }

    /// Subscribes with its own queue capacity and overflow policy; returns the
    /// concrete subscription, which reports its dropped-message count.
    pub fn subscribe_with(
        &self,
        pattern: &str,
        options: SubscribeOptions,
    ) -> Result<MemorySubscription, BusError> {
        validate_bus_pattern(pattern)?;
        self.ensure_open()?;
        let id = self.inner.next_sub.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(SubQueue::new(
            id,
            pattern,
            options.capacity,
            options.overflow,
        ));
        self.inner.subs.lock().insert(id, queue.clone());
        self.inner.routes.write().insert(pattern, id, queue.clone());
        let weak: Weak<dyn Unregister> = Arc::downgrade(&self.inner) as Weak<dyn Unregister>;
        Ok(MemorySubscription::new(queue, weak))
    }

    /// Closes the bus: later publishes and subscribes fail with
    /// [`ErrorKind::Closed`]; every subscription still yields what was queued
    /// for it, then ends. Dropping the last handle closes it too.
    pub fn close(&self) {
        self.inner.close();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Number of live subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.inner.subs.lock().len()
    }

    /// A snapshot of the bus and its subscriptions, dropped-message counts included.
    pub fn stats(&self) -> MemoryStats {
        let subs: Vec<SubscriptionStats> = {
            let subs = self.inner.subs.lock();
            let mut v: Vec<_> = subs.values().cloned().collect();
            v.sort_by_key(|q| q.id);
            v.iter()
                .map(|q| SubscriptionStats {
                    pattern: q.pattern.to_string(),
                    queued: q.queued(),
                    capacity: q.capacity(),
                    overflow: q.overflow(),
                    dropped: q.dropped(),
                })
                .collect()
        };
        let (log_messages, log_bytes) = {
            let log = self.inner.log.lock();
            (log.len(), log.bytes())
        };
        MemoryStats {
            published: self.inner.seq.load(Ordering::Relaxed),
            log_messages,
            log_bytes,
            dropped: subs.iter().map(|s| s.dropped).sum(),
            cached_subjects: self.inner.routes.read().cache_len(),
            subscriptions: subs,
        }
    }

    fn ensure_open(&self) -> Result<(), BusError> {
        if self.is_closed() {
            return Err(BusError::closed("the in-memory bus is closed"));
        }
        Ok(())
    }

    #[inline]
    fn check_size(&self, subject: &str, payload: usize, headers: usize) -> Result<(), BusError> {
        let max = self.inner.config.max_payload;
        if payload + headers > max {
            return Err(BusError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "message on {subject:?} is {} bytes (payload {payload} + headers {headers}), over the limit of {max} bytes",
                    payload + headers
                ),
            ));
        }
        Ok(())
    }

    /// Counts a publish's outcome.
    fn observe<T>(&self, result: &Result<T, BusError>) {
        match result {
            Ok(_) => self.inner.metrics.sent.increment(1),
            Err(e) => self.inner.metrics.failed(e.kind(), None),
        }
    }

    async fn publish_envelope_inner(&self, env: Envelope) -> Result<PublishAck, BusError> {
        self.ensure_open()?;
        env.validate()?;
        let given = env.id.as_ref().and_then(|i| i.given());
        let id_len = given.map_or(0, |i| i.len() + 4);
        self.check_size(
            &env.subject,
            env.payload.len(),
            env.headers.wire_len() + id_len,
        )?;
        validate_bus_subject(&env.subject)?;
        // The id is claimed now and recorded as seen only once the message is
        // queued for every subscriber: a publish abandoned while it waits
        // (a timeout) releases its claim, so that retrying with the same id
        // delivers it instead of being taken for a duplicate.
        let claim = match given {
            Some(id) => match DedupClaim::new(&self.inner, id) {
                Some(claim) => Some(claim),
                None => return Ok(PublishAck::new(None, 0, true)),
            },
            None => None,
        };
        let Envelope {
            subject,
            payload,
            headers,
            id,
            ..
        } = env;
        // Traced at TRACE level (see `crate::trace`); plain publishes are not.
        let span = crate::trace::publish_span("memory", &subject, payload.len());
        let mut headers = headers;
        if span.carries() {
            for (name, value) in crate::trace::outgoing(&span, &headers)
                .into_iter()
                .flatten()
            {
                headers.insert(name, value);
            }
        }
        let (seq, rest) =
            self.with_route(&subject, |route| self.deliver(route, payload, headers, id))?;
        if let Some(rest) = rest {
            rest.finish().await?;
        }
        if let Some(claim) = claim {
            claim.confirm();
        }
        Ok(PublishAck::new(None, seq, false))
    }
}

/// Queues `msg` for every subscriber without waiting; if a lossless queue is
/// full, returns the rest of the work.
#[inline]
fn deliver_now(route: &Arc<Match<Arc<SubQueue>>>, msg: BusMessage) -> Option<Remaining> {
    let n = route.subs.len();
    for i in 0..n - 1 {
        if let Push::Full(m) = route.subs[i].try_push(msg.clone()) {
            return Some(Remaining {
                route: route.clone(),
                index: i,
                pending: m,
                template: Some(msg),
            });
        }
    }
    match route.subs[n - 1].try_push(msg) {
        Push::Done => None,
        Push::Full(m) => Some(Remaining {
            route: route.clone(),
            index: n - 1,
            pending: m,
            template: None,
        }),
    }
}

/// A publish that found a full subscriber queue: `pending` waits for room in
/// `route.subs[index]`, then the subscribers after it get `template`.
struct Remaining {
    route: Arc<Match<Arc<SubQueue>>>,
    index: usize,
    pending: BusMessage,
    template: Option<BusMessage>,
}

impl Remaining {
    /// Fails with [`ErrorKind::Closed`] if the bus closes before the message
    /// is queued for every subscriber.
    async fn finish(self) -> Result<(), BusError> {
        let Remaining {
            route,
            index,
            pending,
            template,
        } = self;
        let closed = || {
            BusError::closed(format!(
                "publish to {:?}: the in-memory bus closed while the publish waited for room in a subscriber's queue",
                route.subject
            ))
        };
        route.subs[index]
            .push_wait(pending)
            .await
            .map_err(|()| closed())?;
        if let Some(msg) = template {
            for q in &route.subs[index + 1..] {
                if let Push::Full(m) = q.try_push(msg.clone()) {
                    q.push_wait(m).await.map_err(|()| closed())?;
                }
            }
        }
        Ok(())
    }
}

impl Inner {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let subs: Vec<Arc<SubQueue>> = self.subs.lock().drain().map(|(_, q)| q).collect();
        {
            let mut routes = self.routes.write();
            for q in &subs {
                routes.remove(&q.pattern, q.id);
            }
        }
        for q in subs {
            q.close(false);
        }
    }
}

impl Unregister for Inner {
    fn unregister(&self, id: SubId, pattern: &str) {
        if self.subs.lock().remove(&id).is_some() {
            self.routes.write().remove(pattern, id);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

#[async_trait]
impl EventBus for InMemoryBus {
    fn publish<'a>(&'a self, subject: &'a str, payload: Vec<u8>) -> PublishFuture<'a> {
        InMemoryBus::publish(self, subject, payload)
    }

    async fn subscribe(&self, pattern: &str) -> Result<Subscription, BusError> {
        InMemoryBus::subscribe(self, pattern).await
    }

    async fn publish_envelope(&self, envelope: Envelope) -> Result<PublishAck, BusError> {
        let result = self.publish_envelope_inner(envelope).await;
        self.observe(&result);
        result
    }

    async fn open_consumer(&self, config: ConsumerConfig) -> Result<ConsumerStream, BusError> {
        self.open_consumer_inner(&config)
    }

    async fn consumer_state(
        &self,
        name: &str,
        _filter: &str,
    ) -> Result<crate::consumer::ConsumerState, BusError> {
        let durable = self.inner.durables.lock().get(name).cloned();
        match durable {
            Some(d) => Ok(d.state()),
            None => Err(BusError::new(
                ErrorKind::NotFound,
                format!("no durable consumer {name:?} on this in-memory bus"),
            )),
        }
    }

    async fn health(&self) -> HealthReport {
        if self.is_closed() {
            HealthReport::new("memory", HealthStatus::Unhealthy, "the bus is closed")
        } else {
            HealthReport::healthy(
                "memory",
                format!("{} subscriptions", self.subscription_count()),
            )
        }
    }

    fn backend_name(&self) -> &'static str {
        "memory"
    }

    /// The log (`"memory"`), which holds what was published since the
    /// first durable consumer (see [`MemoryConfig::log_from_start`]).
    async fn stored_streams(&self, pattern: &str) -> Result<Vec<String>, BusError> {
        validate_bus_pattern(pattern)?;
        Ok(vec![LOG_STREAM.to_string()])
    }

    async fn read_stored(
        &self,
        stream: &str,
        pattern: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<BusMessage>, BusError> {
        validate_bus_pattern(pattern)?;
        check_log_stream(stream)?;
        Ok(self.inner.log.lock().read(pattern, from, max))
    }

    /// Removes the message from the log: later readers and durable
    /// consumers created later do not see it (consumers that already had
    /// it queued still deliver it).
    async fn delete_stored(&self, stream: &str, sequence: u64) -> Result<(), BusError> {
        check_log_stream(stream)?;
        if self.inner.log.lock().remove(sequence) {
            Ok(())
        } else {
            Err(BusError::new(
                ErrorKind::NotFound,
                format!("no message {sequence} in the in-memory bus's log (removed already, or past its limits)"),
            ))
        }
    }
}

/// The name [`InMemoryBus`] gives its log as a stream.
const LOG_STREAM: &str = "memory";

fn check_log_stream(stream: &str) -> Result<(), BusError> {
    if stream == LOG_STREAM {
        Ok(())
    } else {
        Err(BusError::new(
            ErrorKind::NotFound,
            format!("the in-memory bus has no stream {stream:?} (only its log, {LOG_STREAM:?})"),
        ))
    }
}

impl std::fmt::Debug for InMemoryBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryBus")
            .field("subscriptions", &self.subscription_count())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// Message ids seen within the de-duplication window, at most
/// `dedup_max_ids` of them, plus the ids of publishes under way.
#[derive(Default)]
struct DedupWindow {
    seen: FxHashMap<Arc<str>, Seen>,
    /// The ids recorded as seen, oldest first.
    order: VecDeque<(Instant, Arc<str>)>,
    next_claim: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Published at this instant.
    At(Instant),
    /// Being published by the claim with this number.
    Claimed(u64),
}

impl DedupWindow {
    /// Forgets the ids older than `window`, then the oldest beyond `max`.
    fn evict(&mut self, now: Instant, window: Duration, max: usize) {
        while let Some((at, old)) = self.order.front() {
            if self.order.len() <= max && now.saturating_duration_since(*at) < window {
                break;
            }
            if self.seen.get(old) == Some(&Seen::At(*at)) {
                self.seen.remove(old);
            }
            self.order.pop_front();
        }
    }

    /// Claims `id` for a publish; `None` if it was seen within the window or
    /// is being published.
    fn claim(&mut self, id: &str, window: Duration, max: usize) -> Option<(Arc<str>, u64)> {
        self.evict(Instant::now(), window, max);
        if self.seen.contains_key(id) {
            return None;
        }
        let claim = self.next_claim;
        self.next_claim = self.next_claim.wrapping_add(1);
        let id: Arc<str> = id.into();
        self.seen.insert(id.clone(), Seen::Claimed(claim));
        Some((id, claim))
    }

    /// The publish of `claim` is done: `id` is seen from now on.
    fn confirm(&mut self, id: &str, claim: u64, window: Duration, max: usize) {
        let key = match self.seen.get_key_value(id) {
            Some((key, seen)) if *seen == Seen::Claimed(claim) => key.clone(),
            _ => return,
        };
        let now = Instant::now();
        self.seen.insert(key.clone(), Seen::At(now));
        self.order.push_back((now, key));
        self.evict(now, window, max);
    }

    /// The publish of `claim` was abandoned: `id` may be published again.
    fn release(&mut self, id: &str, claim: u64) {
        if self.seen.get(id) == Some(&Seen::Claimed(claim)) {
            self.seen.remove(id);
        }
    }
}

/// A publish's claim on its message id; released if dropped unconfirmed.
struct DedupClaim<'a> {
    inner: &'a Inner,
    id: Arc<str>,
    claim: u64,
    confirmed: bool,
}

impl<'a> DedupClaim<'a> {
    /// `None` if `id` is a duplicate.
    fn new(inner: &'a Inner, id: &str) -> Option<Self> {
        let config = &inner.config;
        let (id, claim) =
            inner
                .dedup
                .lock()
                .claim(id, config.dedup_window, config.dedup_max_ids)?;
        Some(DedupClaim {
            inner,
            id,
            claim,
            confirmed: false,
        })
    }

    fn confirm(mut self) {
        let config = &self.inner.config;
        self.inner.dedup.lock().confirm(
            &self.id,
            self.claim,
            config.dedup_window,
            config.dedup_max_ids,
        );
        self.confirmed = true;
    }
}

impl Drop for DedupClaim<'_> {
    fn drop(&mut self) {
        if !self.confirmed {
            self.inner.dedup.lock().release(&self.id, self.claim);
        }
    }
}

#[cfg(test)]
mod tests;
