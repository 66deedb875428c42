//! Durable consumers on JetStream: one durable pull consumer per name,
//! shared by every instance that opens it (work sharing).
//!
//! The server-side consumer has explicit acks, the configured ack wait and
//! no delivery limit (`max_deliver` -1): the dead-letter layer enforces
//! `max_deliver` and terminates a message only once its dead letter is
//! published, so the server must never stop delivering it first (see
//! `dlq::layer`). `backoff` is applied by the bus to nacks, not
//! given to the server (whose backoff would replace the ack wait), so both
//! backends behave alike.
//!
//! Answers are JetStream double acks: sent with a reply subject on the
//! client's shared request inbox (so concurrent answers are pipelined on the
//! connection) and `Ok` once the server has replied. Each is bounded by the
//! bus's publish timeout, including the wait for room in the client's send
//! queue during an outage. `answer_nowait` (behind `Delivery::ack_nowait`)
//! only queues the answer; [`NatsBus::flush`] waits until the server has
//! received what was queued.

use super::convert::{api_error, stored_ns, to_bus_message};
use super::NatsBus;
use crate::consumer::{
    AckKind, Acker, ConsumerConfig, ConsumerStream, Delivery, StartPosition, HAND_BACK_DELAY,
    MAX_WAIT,
};
use crate::error::{BusError, ErrorKind};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::message::AckKind as NatsAck;
use async_nats::jetstream::ErrorCode;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Messages requested per pull.
const MAX_BATCH: usize = 256;
const HEARTBEAT: Duration = Duration::from_secs(5);
const EXPIRES: Duration = Duration::from_secs(30);

type Consumer = async_nats::jetstream::consumer::Consumer<pull::Config>;

/// Whether opening a consumer may succeed if tried again: a timeout, no
/// responders, or JetStream saying it has no leader or quorum for now.
fn open_retryable(e: &BusError) -> bool {
    let text = format!("{e:#}").to_ascii_lowercase();
    if text.contains("not enabled") {
        return false; // JetStream off: no retry mends it
    }
    if matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Unavailable) {
        return true;
    }
    [
        "temporarily unavailable",
        "not available",
        "leader",
        "offline",
        "no suitable peers",
        "insufficient resources",
    ]
    .iter()
    .any(|s| text.contains(s))
}

/// Runs `attempt` (which records the stream it found in its argument) until
/// it succeeds, fails for good, or `config.open_timeout` has passed since
/// the first try; transient failures ([`open_retryable`]) are retried with
/// backoff (100 ms doubling to 2 s); an attempt under way when the bound
/// passes finishes first (each is bounded by the bus's request timeout).
/// Giving up, the error names the
/// consumer, its stream (when found), how long and how often it tried, and
/// the last failure.
pub(crate) async fn retry_open<T, F, Fut>(
    config: &ConsumerConfig,
    mut attempt: F,
) -> Result<T, BusError>
where
    F: FnMut(Arc<parking_lot::Mutex<Option<String>>>) -> Fut,
    Fut: std::future::Future<Output = Result<T, BusError>>,
{
    let started = tokio::time::Instant::now();
    let found = Arc::new(parking_lot::Mutex::new(None::<String>));
    let mut delay = Duration::from_millis(100);
    let mut tries = 0u32;
    loop {
        tries += 1;
        let e = match attempt(found.clone()).await {
            Ok(v) => return Ok(v),
            Err(e) if open_retryable(&e) => e,
            Err(e) => return Err(e),
        };
        let waited = started.elapsed();
        let stream = found.lock().clone();
        if waited + delay > config.open_timeout {
            let on = match &stream {
                Some(s) => format!("on stream {s}"),
                None => format!("(the stream of {:?} not found yet)", config.filter),
            };
            return Err(BusError::with_source(
                e.kind(),
                format!(
                    "gave up opening durable consumer {:?} {on} after {} ({tries} attempt(s); open_timeout {}): the server kept answering with transient failures (timeouts, no JetStream leader); the last one",
                    config.name,
                    humantime::format_duration(Duration::from_millis(waited.as_millis() as u64)),
                    humantime::format_duration(config.open_timeout),
                ),
                e,
            ));
        }
        tracing::warn!(
            consumer = %config.name,
            stream = stream.as_deref().unwrap_or("?"),
            attempt = tries,
            retry_in = ?delay,
            error = %e,
            "opening a durable consumer failed transiently; retrying"
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

pub(crate) async fn open(
    bus: &NatsBus,
    stream_name: String,
    wire_filter: String,
    config: &ConsumerConfig,
) -> Result<ConsumerStream, BusError> {
    let js = bus.jetstream().clone();
    let stream = js.get_stream(&stream_name).await.map_err(|e| {
        api_error(
            &format!(
                "opening stream {stream_name} for consumer {:?}",
                config.name
            ),
            e,
        )
    })?;
    let desired = pull::Config {
        durable_name: Some(config.name.clone()),
        filter_subject: wire_filter.clone(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        // Unlimited: the dead-letter layer enforces `config.max_deliver`.
        max_deliver: -1,
        max_ack_pending: config.max_ack_pending.min(i64::MAX as usize) as i64,
        deliver_policy: match config.start {
            StartPosition::New => DeliverPolicy::New,
            StartPosition::All => DeliverPolicy::All,
            StartPosition::Sequence(start_sequence) => {
                DeliverPolicy::ByStartSequence { start_sequence }
            }
        },
        ..Default::default()
    };
    let source = Source {
        js,
        stream_name,
        name: config.name.clone(),
        created: stream.cached_info().created,
        desired,
    };
    let consumer = source.get_or_create(&stream).await?;
    let batch = config.max_ack_pending.clamp(1, MAX_BATCH);
    let (tx, rx) = mpsc::channel(batch);
    let target = Arc::new(AckTarget {
        client: bus.client().clone(),
        timeout: bus.inner.publish_timeout,
    });
    let closing = Arc::new(Closing::new(bus.inner.hand_backs.clone()));
    tokio::spawn(pump(
        source,
        consumer,
        batch,
        tx,
        bus.tenant().map(|t| format!("{t}.")),
        target,
        PumpDone(closing.clone()),
    ));
    Ok(Box::pin(Fetched { rx, closing }))
}

/// Where a pump's durable consumer lives, and how to make it again.
struct Source {
    js: async_nats::jetstream::Context,
    stream_name: String,
    /// The durable name.
    name: String,
    /// When the stream was created (tells a re-created stream from the one
    /// the consumer was made on).
    created: async_nats::datetime::DateTime,
    /// The consumer as `consume` creates it.
    desired: pull::Config,
}

/// async-nats' boxed error as an error type.
#[derive(Debug)]
struct Boxed(async_nats::Error);

impl std::fmt::Display for Boxed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Boxed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Whether `e` (from `get_consumer`) says that the consumer does not exist.
fn consumer_missing(e: &async_nats::Error) -> bool {
    use async_nats::jetstream::context::{ConsumerInfoError, ConsumerInfoErrorKind as K};
    e.downcast_ref::<ConsumerInfoError>()
        .is_some_and(|e| match e.kind() {
            K::NotFound => true,
            K::JetStream(je) => je.error_code() == ErrorCode::CONSUMER_NOT_FOUND,
            _ => false,
        })
}

/// Whether `e` (from `get_stream`) says that the stream does not exist.
fn stream_missing(e: &async_nats::jetstream::context::GetStreamError) -> bool {
    use async_nats::jetstream::context::GetStreamErrorKind as K;
    matches!(e.kind(), K::JetStream(je) if je.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

impl Source {
    /// The durable consumer on `stream`: the existing one (checked against
    /// the configuration, updated where it may change) or, only when the
    /// server says there is none, a new one. Any other failure to look it up
    /// is an error (creating then would silently re-point a consumer of
    /// that name that exists).
    async fn get_or_create(
        &self,
        stream: &async_nats::jetstream::stream::Stream,
    ) -> Result<Consumer, BusError> {
        let (name, stream_name) = (&self.name, &self.stream_name);
        let mut desired = self.desired.clone();
        match stream.get_consumer::<pull::Config>(name).await {
            Ok(existing) => {
                let current = existing.cached_info().config.clone();
                if current.filter_subject != desired.filter_subject {
                    return Err(BusError::new(
                        ErrorKind::Conflict,
                        format!(
                            "consumer {name:?} on stream {stream_name} already exists with filter {:?}, not {:?}; use another name or delete it",
                            current.filter_subject, desired.filter_subject
                        ),
                    ));
                }
                // The start position of an existing consumer cannot change; keep it.
                desired.deliver_policy = current.deliver_policy;
                if current.ack_wait == desired.ack_wait
                    && current.max_deliver == desired.max_deliver
                    && current.max_ack_pending == desired.max_ack_pending
                {
                    return Ok(existing);
                }
                stream.update_consumer(desired).await.map_err(|e| {
                    api_error(&format!("updating consumer {name:?} on {stream_name}"), e)
                })
            }
            Err(e) if consumer_missing(&e) => stream
                .create_consumer(desired)
                .await
                .map_err(|e| api_error(&format!("creating consumer {name:?} on {stream_name}"), e)),
            Err(e) => Err(api_error(
                &format!("looking up consumer {name:?} on {stream_name}"),
                Boxed(e),
            )),
        }
    }

    /// After the pull failed: `Ok(None)` while the consumer exists (re-open
    /// the pull), or the consumer made again after it or its stream was
    /// deleted, with a report of that reset (`Ok(Some(..))`). `Err` when
    /// that cannot be told or done now (retry later).
    async fn recover(&mut self) -> Result<Option<(Consumer, BusError)>, BusError> {
        let (name, stream_name) = (self.name.clone(), self.stream_name.clone());
        let mut stream = match self.js.get_stream(&stream_name).await {
            Ok(s) => s,
            Err(e) if stream_missing(&e) => {
                return Err(BusError::new(
                    ErrorKind::NotFound,
                    format!(
                        "stream {stream_name} of durable consumer {name:?} does not exist (deleted?); waiting for it to be created again"
                    ),
                ))
            }
            Err(e) => return Err(api_error(&format!("looking up stream {stream_name}"), e)),
        };
        let created = stream
            .info()
            .await
            .map_err(|e| api_error(&format!("reading stream {stream_name}"), e))?
            .created;
        let new_stream = created != self.created;
        if !new_stream {
            match stream.get_consumer::<pull::Config>(&name).await {
                Ok(_) => return Ok(None),
                Err(e) if consumer_missing(&e) => {}
                Err(e) => {
                    return Err(api_error(
                        &format!("looking up consumer {name:?} on {stream_name}"),
                        Boxed(e),
                    ))
                }
            }
        }
        // Gone: make it again (another instance may already have). On a new
        // incarnation of the stream, everything in it is new to the consumer.
        let mut again = Source {
            js: self.js.clone(),
            stream_name: stream_name.clone(),
            name: name.clone(),
            created,
            desired: self.desired.clone(),
        };
        if new_stream {
            again.desired.deliver_policy = DeliverPolicy::All;
        }
        let consumer = again.get_or_create(&stream).await?;
        self.created = created;
        let what = if new_stream {
            format!("stream {stream_name} was deleted and created again; durable consumer {name:?} was made again and reads the new stream from its start")
        } else {
            format!("durable consumer {name:?} on stream {stream_name} was deleted; it was made again, starting as configured (its acknowledgement state is lost: messages may be delivered again, or, with StartPosition::New, missed while it was gone)")
        };
        tracing::warn!(consumer = %name, stream = %stream_name, "{what}");
        Ok(Some((consumer, BusError::new(ErrorKind::NotFound, what))))
    }
}

/// The receiving end of a consumer's pump. Dropped (the user stopped
/// consuming), it hands back what was fetched and not taken, so that
/// another instance gets it at once rather than after the ack wait.
struct Fetched {
    rx: mpsc::Receiver<Result<Delivery, BusError>>,
    closing: Arc<Closing>,
}

impl futures::Stream for Fetched {
    type Item = Result<Delivery, BusError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Fetched {
    fn drop(&mut self) {
        self.closing.begin();
        self.rx.close();
        let mut ahead = Vec::new();
        while let Ok(item) = self.rx.try_recv() {
            if let Ok(delivery) = item {
                ahead.push(delivery);
            }
        }
        if ahead.is_empty() {
            return;
        }
        // Nacks are sent from a task: a drop cannot wait. Outside a runtime
        // they are not sent, and the deliveries come back after their ack
        // wait. `NatsBus::flush` waits for this task.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let handing_back = self.closing.hand_backs.start();
            rt.spawn(async move {
                for delivery in ahead {
                    let (_, _, acker) = delivery.into_parts();
                    let _ = acker
                        .answer_nowait(AckKind::Nack {
                            delay: Some(HAND_BACK_DELAY),
                            reason: None,
                        })
                        .await;
                }
                drop(handing_back);
            });
        }
    }
}

/// Hands back the messages the pull had received and not passed on (the
/// receiver is gone): what is buffered and, after a round trip to the
/// server (every message it sent before answering is then received), what
/// was still on the wire, until nothing more arrives for a moment (bounded
/// by the answer timeout). Messages the server sends later (a pull still
/// running) come back after their ack wait.
async fn hand_back_received(messages: &mut pull::Stream, target: &AckTarget) {
    let deadline = tokio::time::Instant::now() + target.timeout.min(Duration::from_secs(2));
    let _ = tokio::time::timeout_at(deadline, target.client.flush()).await;
    // The pull may ask for more meanwhile, and a nacked message can come
    // straight back: stop at the first one seen twice.
    let mut seen = std::collections::HashSet::new();
    loop {
        // The pull stream may need a poll or two (its own pull requests)
        // before it yields what it holds: wait a moment for each message.
        let idle = (tokio::time::Instant::now() + Duration::from_millis(50)).min(deadline);
        let item = match tokio::time::timeout_at(idle, messages.next()).await {
            Ok(Some(item)) => item,
            Ok(None) | Err(_) => return,
        };
        let Ok(m) = item else { continue };
        if let Ok(info) = m.info() {
            if !seen.insert(info.stream_sequence) {
                return;
            }
        }
        if let Some(reply) = m.message.reply.clone() {
            let nak = target
                .client
                .publish(reply, NatsAck::Nak(Some(HAND_BACK_DELAY)).into());
            if tokio::time::timeout_at(deadline, nak).await.is_err() {
                return; // the client is stuck: the rest come back after the ack wait
            }
        }
    }
}

/// The hand-backs (nacks of fetched, unconsumed deliveries) one
/// connection's consumers are still queuing: [`NatsBus::flush`] waits for
/// them, and only for them (not for other connections'). Held in the bus's
/// shared state; buses over the same connection
/// ([`NatsBus::for_tenant`]) share it.
#[derive(Default)]
pub(super) struct HandBacks {
    running: std::sync::atomic::AtomicUsize,
    done: tokio::sync::Notify,
}

impl HandBacks {
    /// Counts one hand-back until the returned guard is dropped.
    fn start(self: &Arc<Self>) -> HandingBack {
        self.running
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        HandingBack(self.clone())
    }

    /// Waits until no hand-back is running.
    async fn settled(&self) {
        loop {
            let done = self.done.notified();
            if self.running.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            done.await;
        }
    }
}

/// One hand-back in progress (counted in its connection's [`HandBacks`]
/// while alive).
struct HandingBack(Arc<HandBacks>);

impl Drop for HandingBack {
    fn drop(&mut self) {
        if self
            .0
            .running
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.done.notify_waiters();
        }
    }
}

/// Shared by a consumer stream and its pump: when the stream is dropped
/// while the pump runs, the pump's hand-back is counted until it ends.
struct Closing {
    /// Where the hand-back is counted (the bus's connection).
    hand_backs: Arc<HandBacks>,
    /// Whether the pump has ended, and the hand-back while it runs.
    state: parking_lot::Mutex<(bool, Option<HandingBack>)>,
}

impl Closing {
    fn new(hand_backs: Arc<HandBacks>) -> Self {
        Closing {
            hand_backs,
            state: parking_lot::Mutex::new((false, None)),
        }
    }

    /// The stream is dropped.
    fn begin(&self) {
        let mut state = self.state.lock();
        if !state.0 {
            state.1 = Some(self.hand_backs.start());
        }
    }

    /// The pump has ended.
    fn end(&self) {
        let mut state = self.state.lock();
        state.0 = true;
        state.1 = None;
    }
}

/// Ends the pump's [`Closing`] however the pump ends.
struct PumpDone(Arc<Closing>);

impl Drop for PumpDone {
    fn drop(&mut self) {
        self.0.end();
    }
}

impl NatsBus {
    /// Waits until the server has received everything this connection has
    /// sent so far: answers sent with
    /// [`Delivery::ack_nowait`](crate::Delivery::ack_nowait), and the
    /// hand-back of what its dropped consumer streams had fetched (not other
    /// connections' hand-backs). Bounded by the publish timeout.
    ///
    /// To close a durable consumer with a flush, drop its stream and then
    /// call this. (Answers awaited with [`Delivery::ack`](crate::Delivery::ack)
    /// and the others need no flush: they are `Ok` once the server has them.)
    pub async fn flush(&self) -> Result<(), BusError> {
        let timeout = self.inner.publish_timeout;
        let flushed = async {
            self.inner.hand_backs.settled().await;
            self.client().flush().await
        };
        match tokio::time::timeout(timeout, flushed).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BusError::with_source(
                ErrorKind::Unavailable,
                "flushing the NATS connection failed",
                e,
            )),
            Err(_) => Err(BusError::new(
                ErrorKind::Timeout,
                format!(
                    "the NATS connection was not flushed within {timeout:?} (server unreachable?)"
                ),
            )),
        }
    }
}

/// Pulls deliveries into `tx` until the receiver is dropped, re-opening the
/// pull after errors (the durable consumer keeps its position on the
/// server), and making the consumer again if it or its stream was deleted
/// (reported as an error item).
async fn pump(
    mut source: Source,
    mut consumer: Consumer,
    batch: usize,
    tx: mpsc::Sender<Result<Delivery, BusError>>,
    strip: Option<String>,
    target: Arc<AckTarget>,
    _done: PumpDone,
) {
    let mut backoff = Duration::from_millis(50);
    // Set after a failure: check that the consumer still exists before
    // pulling again.
    let mut check = false;
    // Whether the current outage (stream gone) has been reported as an item.
    let mut reported = false;
    loop {
        if check {
            let recovered = tokio::select! {
                _ = tx.closed() => return,
                r = source.recover() => r,
            };
            match recovered {
                Ok(None) => (check, reported) = (false, false),
                Ok(Some((again, report))) => {
                    consumer = again;
                    (check, reported) = (false, false);
                    if tx.send(Err(report)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    if e.kind() == ErrorKind::NotFound && !reported {
                        // The stream is gone: say so once, then wait for it.
                        tracing::warn!(error = %e, "durable consumer waiting for its stream");
                        reported = true;
                        if tx.send(Err(e)).await.is_err() {
                            return;
                        }
                    } else {
                        tracing::debug!(error = %e, "durable consumer not available yet; retrying");
                    }
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        }
        let opened = tokio::select! {
            _ = tx.closed() => return,
            m = consumer
                .stream()
                .max_messages_per_batch(batch)
                .heartbeat(HEARTBEAT)
                .expires(EXPIRES)
                .messages() => m,
        };
        let mut messages = match opened {
            Ok(m) => {
                backoff = Duration::from_millis(50);
                m
            }
            Err(e) => {
                tracing::debug!(error = %e, "opening the pull failed; retrying");
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                check = true;
                continue;
            }
        };
        loop {
            let item = tokio::select! {
                _ = tx.closed() => {
                    hand_back_received(&mut messages, &target).await;
                    return;
                }
                item = messages.next() => item,
            };
            let delivery = match item {
                None => break,
                Some(Err(e)) => {
                    use async_nats::jetstream::consumer::pull::MessagesErrorKind as K;
                    // The consumer (or its stream) may be gone: check, and
                    // make it again, before pulling again.
                    let gone = matches!(e.kind(), K::ConsumerDeleted | K::NoResponders);
                    if gone {
                        check = true;
                        break;
                    }
                    let fatal = matches!(e.kind(), K::PushBasedConsumer | K::RequestLimitExceeded);
                    let kind = if fatal {
                        ErrorKind::Conflict
                    } else {
                        ErrorKind::Unavailable
                    };
                    let err =
                        BusError::with_source(kind, "durable consumer: pulling messages failed", e);
                    if tx.send(Err(err)).await.is_err() {
                        return;
                    }
                    if fatal {
                        check = true;
                        break;
                    }
                    continue;
                }
                Some(Ok(m)) => to_delivery(m, &source.stream_name, strip.as_deref(), &target),
            };
            if let Err(mpsc::error::SendError(unsent)) = tx.send(delivery).await {
                if let Ok(d) = unsent {
                    let (_, _, acker) = d.into_parts();
                    let _ = acker
                        .answer_nowait(AckKind::Nack {
                            delay: Some(HAND_BACK_DELAY),
                            reason: None,
                        })
                        .await;
                }
                hand_back_received(&mut messages, &target).await;
                return;
            }
        }
    }
}

fn to_delivery(
    mut m: async_nats::jetstream::Message,
    stream_name: &str,
    strip: Option<&str>,
    target: &Arc<AckTarget>,
) -> Result<Delivery, BusError> {
    let (seq, delivered, stored) = {
        let info = m.info().map_err(|e| {
            BusError::new(
                ErrorKind::Backend,
                format!("unparsable JetStream delivery metadata: {e}"),
            )
        })?;
        (info.stream_sequence, info.delivered, stored_ns(&info))
    };
    let reply = m.message.reply.take().ok_or_else(|| {
        BusError::new(
            ErrorKind::Backend,
            "a JetStream delivery without a reply subject cannot be acknowledged",
        )
    })?;
    let msg = to_bus_message(&m.message, stream_name, seq, stored, strip);
    Ok(Delivery::new(
        msg,
        delivered.clamp(1, i64::from(u32::MAX)) as u32,
        Box::new(JsAcker {
            target: target.clone(),
            reply,
        }),
    ))
}

/// What the answers of one consumer's deliveries go through.
struct AckTarget {
    client: async_nats::Client,
    /// Bound on each answer (the bus's publish timeout).
    timeout: Duration,
}

/// Answers a JetStream delivery on its reply subject (`$JS.ACK...`).
struct JsAcker {
    target: Arc<AckTarget>,
    reply: async_nats::Subject,
}

/// The protocol payload of an answer. A nack delay is capped at
/// [`MAX_WAIT`] (the server takes nanoseconds as an `i64`).
fn ack_payload(kind: &AckKind) -> Bytes {
    let kind = match kind {
        AckKind::Ack => NatsAck::Ack,
        AckKind::Nack { delay, .. } => NatsAck::Nak(delay.map(|d| d.min(MAX_WAIT))),
        AckKind::Term { .. } | AckKind::DeadLetter { .. } => NatsAck::Term,
        AckKind::InProgress => NatsAck::Progress,
    };
    kind.into()
}

fn ack_name(kind: &AckKind) -> &'static str {
    match kind {
        AckKind::Ack => "ack",
        AckKind::Nack { .. } => "nack",
        AckKind::Term { .. } | AckKind::DeadLetter { .. } => "term",
        AckKind::InProgress => "in-progress signal",
    }
}

#[async_trait]
impl Acker for JsAcker {
    /// A double ack: the answer goes out with a reply subject (on the
    /// client's shared request inbox, so concurrent answers are pipelined)
    /// and is `Ok` once the server has replied, i.e. processed it. The whole
    /// exchange, including the wait for room in the client's send queue
    /// during an outage, is bounded by the publish timeout.
    async fn answer(&self, kind: AckKind) -> Result<(), BusError> {
        let request = async_nats::Request::new()
            .payload(ack_payload(&kind))
            .timeout(None); // bounded below, send included
        let t = &self.target;
        let sent = t.client.send_request(self.reply.clone(), request);
        match tokio::time::timeout(t.timeout, sent).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                use async_nats::RequestErrorKind as K;
                let (kind_of, why) = match e.kind() {
                    K::NoResponders => (
                        ErrorKind::NotFound,
                        "the durable consumer no longer exists on the server",
                    ),
                    _ => (ErrorKind::Unavailable, "sending it failed"),
                };
                Err(BusError::with_source(
                    kind_of,
                    format!("{} not applied: {why}", ack_name(&kind)),
                    e,
                ))
            }
            Err(_) => Err(BusError::new(
                ErrorKind::Timeout,
                format!(
                    "the server did not confirm the {} within {:?} (server unreachable or slow); it may or may not be applied, and the message may be delivered again",
                    ack_name(&kind),
                    t.timeout
                ),
            )),
        }
    }

    /// Queues the answer in the client without a reply subject: `Ok` once
    /// queued (bounded by the publish timeout while the queue is full).
    async fn answer_nowait(&self, kind: AckKind) -> Result<(), BusError> {
        let t = &self.target;
        let sent = t.client.publish(self.reply.clone(), ack_payload(&kind));
        match tokio::time::timeout(t.timeout, sent).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BusError::with_source(
                ErrorKind::Unavailable,
                format!("sending the {} failed", ack_name(&kind)),
                e,
            )),
            Err(_) => Err(BusError::new(
                ErrorKind::Timeout,
                format!(
                    "the {} could not be queued within {:?} (the client's send queue is full: server unreachable?)",
                    ack_name(&kind),
                    t.timeout
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_bus_testkit::nats_server::NatsServer;

    async fn bus(server: &NatsServer) -> NatsBus {
        NatsBus::new(async_nats::connect(server.url()).await.expect("connect"))
    }

    /// `flush` waits for the hand-backs of its own connection (and of the
    /// buses `for_tenant` made over it), not for other connections'.
    #[tokio::test]
    async fn flush_waits_for_its_own_connections_hand_backs_only() {
        let server = NatsServer::start().await.expect("start nats-server");
        let (a, b) = (bus(&server).await, bus(&server).await);

        let on_b = b.inner.hand_backs.start();
        tokio::time::timeout(Duration::from_secs(5), a.flush())
            .await
            .expect("a hand-back on another connection does not hold up flush")
            .expect("flush");

        let on_a = a
            .for_tenant("acme")
            .expect("tenant")
            .inner
            .hand_backs
            .start();
        let mut flushing = std::pin::pin!(a.flush());
        assert!(
            tokio::time::timeout(Duration::from_millis(200), flushing.as_mut())
                .await
                .is_err(),
            "flush waits for a hand-back on its own connection"
        );
        drop(on_a);
        tokio::time::timeout(Duration::from_secs(5), flushing)
            .await
            .expect("flush ends once the hand-back has")
            .expect("flush");
        drop(on_b);
    }
}
