//! Durable consumers on JetStream: one durable pull consumer per name,
//! shared by every instance that opens it (work sharing).
//!
//! The server-side consumer has explicit acks, the configured ack wait and
//! `max_deliver + DLQ_SPARE_DELIVERIES` deliveries (the spares let the
//! dead-letter layer move a message whose last delivery went unanswered; see
//! `consumer::dead_letter`). `backoff` is applied by the bus to nacks, not
//! given to the server (whose backoff would replace the ack wait), so both
//! backends behave alike.

use super::convert::{api_error, stored_ns, to_bus_message};
use super::NatsBus;
use crate::consumer::{
    AckKind, Acker, ConsumerConfig, ConsumerStream, Delivery, StartPosition, DLQ_SPARE_DELIVERIES,
};
use crate::error::{BusError, ErrorKind};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::message::{AckKind as NatsAck, Acker as NatsAcker};
use async_trait::async_trait;
use futures::StreamExt;
use std::time::Duration;
use tokio::sync::mpsc;

/// Messages requested per pull.
const MAX_BATCH: usize = 256;
const HEARTBEAT: Duration = Duration::from_secs(5);
const EXPIRES: Duration = Duration::from_secs(30);

type Consumer = async_nats::jetstream::consumer::Consumer<pull::Config>;

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
    let mut desired = pull::Config {
        durable_name: Some(config.name.clone()),
        filter_subject: wire_filter.clone(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        max_deliver: i64::from(config.max_deliver + DLQ_SPARE_DELIVERIES),
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
    let consumer: Consumer = match stream.get_consumer::<pull::Config>(&config.name).await {
        Ok(existing) => {
            let current = existing.cached_info().config.clone();
            if current.filter_subject != wire_filter {
                return Err(BusError::new(
                    ErrorKind::Conflict,
                    format!(
                        "consumer {:?} on stream {stream_name} already exists with filter {:?}, not {:?}; use another name or delete it",
                        config.name, current.filter_subject, wire_filter
                    ),
                ));
            }
            // The start position of an existing consumer cannot change; keep it.
            desired.deliver_policy = current.deliver_policy;
            if current.ack_wait != desired.ack_wait
                || current.max_deliver != desired.max_deliver
                || current.max_ack_pending != desired.max_ack_pending
            {
                stream.create_consumer(desired).await.map_err(|e| {
                    api_error(
                        &format!("updating consumer {:?} on {stream_name}", config.name),
                        e,
                    )
                })?
            } else {
                existing
            }
        }
        Err(_) => stream.create_consumer(desired).await.map_err(|e| {
            api_error(
                &format!("creating consumer {:?} on {stream_name}", config.name),
                e,
            )
        })?,
    };
    let batch = config.max_ack_pending.clamp(1, MAX_BATCH);
    let (tx, rx) = mpsc::channel(batch);
    tokio::spawn(pump(
        consumer,
        batch,
        tx,
        stream_name,
        bus.tenant().map(|t| format!("{t}.")),
    ));
    Ok(Box::pin(Fetched { rx }))
}

/// The receiving end of a consumer's pump. Dropped (the user stopped
/// consuming), it hands back what was fetched and not taken, so that
/// another instance gets it at once rather than after the ack wait.
struct Fetched {
    rx: mpsc::Receiver<Result<Delivery, BusError>>,
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
        // they are not sent, and the deliveries come back after their ack wait.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for delivery in ahead {
                    let _ = delivery.nack(None).await;
                }
            });
        }
    }
}

/// Hands back the messages the pull had received and not passed on (the
/// receiver is gone), without waiting for more.
async fn hand_back_received(messages: &mut pull::Stream) {
    use futures::FutureExt;
    while let Some(Some(item)) = messages.next().now_or_never() {
        if let Ok(m) = item {
            let _ = m.ack_with(NatsAck::Nak(None)).await;
        }
    }
}

/// Pulls deliveries into `tx` until the receiver is dropped, re-opening the
/// pull after errors (the durable consumer keeps its position on the server).
async fn pump(
    consumer: Consumer,
    batch: usize,
    tx: mpsc::Sender<Result<Delivery, BusError>>,
    stream_name: String,
    strip: Option<String>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
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
                continue;
            }
        };
        loop {
            let item = tokio::select! {
                _ = tx.closed() => {
                    hand_back_received(&mut messages).await;
                    return;
                }
                item = messages.next() => item,
            };
            let delivery = match item {
                None => break,
                Some(Err(e)) => {
                    use async_nats::jetstream::consumer::pull::MessagesErrorKind as K;
                    let fatal = matches!(
                        e.kind(),
                        K::ConsumerDeleted | K::PushBasedConsumer | K::RequestLimitExceeded
                    );
                    let kind = if fatal {
                        ErrorKind::NotFound
                    } else {
                        ErrorKind::Unavailable
                    };
                    let err =
                        BusError::with_source(kind, "durable consumer: pulling messages failed", e);
                    if tx.send(Err(err)).await.is_err() {
                        return;
                    }
                    if fatal {
                        break;
                    }
                    continue;
                }
                Some(Ok(m)) => to_delivery(m, &stream_name, strip.as_deref()),
            };
            if let Err(mpsc::error::SendError(unsent)) = tx.send(delivery).await {
                if let Ok(d) = unsent {
                    let _ = d.nack(None).await;
                }
                hand_back_received(&mut messages).await;
                return;
            }
        }
    }
}

fn to_delivery(
    m: async_nats::jetstream::Message,
    stream_name: &str,
    strip: Option<&str>,
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
    let (message, acker) = m.split();
    let msg = to_bus_message(&message, stream_name, seq, stored, strip);
    Ok(Delivery::new(
        msg,
        delivered.clamp(1, i64::from(u32::MAX)) as u32,
        Box::new(JsAcker(acker)),
    ))
}

struct JsAcker(NatsAcker);

#[async_trait]
impl Acker for JsAcker {
    async fn answer(&self, kind: AckKind) -> Result<(), BusError> {
        let kind = match kind {
            AckKind::Ack => NatsAck::Ack,
            AckKind::Nack { delay, .. } => NatsAck::Nak(delay),
            AckKind::Term { .. } | AckKind::DeadLetter { .. } => NatsAck::Term,
            AckKind::InProgress => NatsAck::Progress,
        };
        self.0.ack_with(kind).await.map_err(|e| {
            BusError::with_source(
                ErrorKind::Unavailable,
                "sending an acknowledgement failed",
                e,
            )
        })
    }
}
