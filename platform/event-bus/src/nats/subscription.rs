//! Gap-free, resumable live subscriptions on JetStream.
//!
//! For each stream that can hold matching subjects, a follower task reads
//! through an ephemeral ordered pull consumer (no acks, memory storage) that
//! starts at the stream's next sequence when `subscribe` is called. The
//! follower remembers the stream sequence after the last message it
//! delivered; on any error, missed heartbeat, gap in the consumer sequence or
//! server restart it creates a new consumer starting exactly there (retrying
//! with backoff while the server is away). So a subscription sees every
//! message stored after it was made, in stream order, once.
//!
//! async-nats' own ordered consumer is not used because it restarts from the
//! beginning of the stream (`DeliverPolicy::All`) when it must recreate itself
//! before delivering its first message.
//!
//! Back-pressure: the follower hands messages to the subscription through a
//! bounded channel; while the subscriber does not read, the follower stops
//! pulling and the messages wait in the stream (never dropped).

use super::convert::{api_error, stored_ns, to_bus_message};
use crate::bus::Subscription;
use crate::error::BusError;
use crate::message::BusMessage;
use crate::subject::{first_token, matches};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, stream::Stream as JsStream};
use futures::StreamExt;
use std::time::Duration;
use tokio::sync::mpsc;

/// Messages buffered between a follower and its subscription.
const CHANNEL: usize = 1024;
/// Messages requested per pull.
const BATCH: usize = 512;
/// Idle heartbeat asked of the server; two missed ones mean the consumer is gone.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// Lifetime of one pull request.
const EXPIRES: Duration = Duration::from_secs(10);
/// An unread consumer is removed by the server after this long (and re-created
/// at the right position when the subscriber reads again).
const INACTIVE: Duration = Duration::from_secs(120);

/// Whether a stream stores only subjects in the server's namespaces (a
/// key-value bucket's `$KV.<bucket>.>`, an object store's `$O.>`): a
/// wildcard subscription never reads it.
fn server_only(subjects: &[String]) -> bool {
    !subjects.is_empty() && subjects.iter().all(|s| crate::subject::is_reserved(s))
}

/// Subscribes to `wire_pattern` on `streams`; returns once every follower's
/// first consumer exists (so everything published afterwards is seen).
pub(crate) async fn subscribe(
    js: jetstream::Context,
    streams: Vec<String>,
    wire_pattern: String,
    user_pattern: String,
    tenant: Option<String>,
) -> Result<Subscription, BusError> {
    let (tx, mut rx) = mpsc::channel(CHANNEL);
    let strip = tenant.map(|t| format!("{t}."));
    let mut attached = std::collections::HashSet::new();
    for name in streams {
        let mut stream = js
            .get_stream(&name)
            .await
            .map_err(|e| api_error(&format!("opening stream {name} for {user_pattern:?}"), e))?;
        let info = stream
            .info()
            .await
            .map_err(|e| api_error(&format!("reading stream {name}"), e))?;
        let (next, created) = (info.state.last_sequence + 1, info.created);
        attached.insert(name.clone());
        if server_only(&info.config.subjects) {
            continue;
        }
        let mut follower = Follower {
            stream,
            name,
            pattern: wire_pattern.clone(),
            use_filter: true,
            strip: strip.clone(),
            next,
            created,
            tx: tx.clone(),
        };
        let consumer = follower.create().await?;
        tokio::spawn(follower.run(consumer));
    }
    let first = first_token(&user_pattern);
    if first == "*" || first == ">" {
        // The pattern can match streams created later (one per first token):
        // watch for them and read each new one from its start, since all of
        // it was stored after this subscription was made.
        tokio::spawn(watch_new_streams(js, wire_pattern, strip, attached, tx));
    } else {
        drop(tx);
    }
    let pattern = user_pattern.clone();
    let messages = futures::stream::poll_fn(move |cx| {
        let next = rx.poll_recv(cx);
        if let std::task::Poll::Ready(Some(m)) = &next {
            crate::trace::received("nats", &pattern, m);
        }
        next
    });
    Ok(Subscription::new(user_pattern, messages))
}

/// How often a wildcard subscription looks for new streams.
const RESCAN: Duration = Duration::from_secs(1);

async fn watch_new_streams(
    js: jetstream::Context,
    pattern: String,
    strip: Option<String>,
    mut attached: std::collections::HashSet<String>,
    tx: mpsc::Sender<BusMessage>,
) {
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(RESCAN) => {}
        }
        let Ok(names) = super::streams::streams_for(&js, &pattern).await else {
            continue;
        };
        for name in names {
            if attached.contains(&name) {
                continue;
            }
            let Ok(stream) = js.get_stream(&name).await else {
                continue;
            };
            if server_only(&stream.cached_info().config.subjects) {
                attached.insert(name);
                continue;
            }
            let created = stream.cached_info().created;
            let mut follower = Follower {
                stream,
                name: name.clone(),
                pattern: pattern.clone(),
                use_filter: true,
                strip: strip.clone(),
                next: 1,
                created,
                tx: tx.clone(),
            };
            if let Ok(consumer) = follower.create().await {
                tracing::debug!(stream = %name, %pattern, "wildcard subscription attached to a new stream");
                attached.insert(name);
                tokio::spawn(follower.run(consumer));
            }
        }
    }
}

struct Follower {
    stream: JsStream,
    name: String,
    pattern: String,
    /// Whether the server-side filter is used (else only client-side matching).
    use_filter: bool,
    strip: Option<String>,
    /// The stream sequence after the last message delivered (or skipped).
    next: u64,
    /// When the stream was created: a stream deleted and created again under
    /// the same name is a new incarnation, with sequences starting over.
    created: async_nats::datetime::DateTime,
    tx: mpsc::Sender<BusMessage>,
}

type Consumer = jetstream::consumer::Consumer<pull::Config>;

impl Follower {
    async fn create(&mut self) -> Result<Consumer, BusError> {
        let config = |filter: String, next: u64| pull::Config {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: next,
            },
            ack_policy: AckPolicy::None,
            filter_subject: filter,
            inactive_threshold: INACTIVE,
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        };
        let filter = if self.use_filter {
            self.pattern.clone()
        } else {
            String::new()
        };
        match self.stream.create_consumer(config(filter, self.next)).await {
            Ok(c) => Ok(c),
            Err(e) if self.use_filter && e.to_string().to_lowercase().contains("filter") => {
                // The pattern is broader than the stream's subjects: read the
                // whole stream and match on this side.
                self.use_filter = false;
                self.stream
                    .create_consumer(config(String::new(), self.next))
                    .await
                    .map_err(|e| {
                        api_error(
                            &format!(
                                "creating a consumer on {} for {:?}",
                                self.name, self.pattern
                            ),
                            e,
                        )
                    })
            }
            Err(e) => Err(api_error(
                &format!(
                    "creating a consumer on {} for {:?}",
                    self.name, self.pattern
                ),
                e,
            )),
        }
    }

    /// Before re-creating the consumer: when the stream was deleted and
    /// created again (its creation time changed, or it ends before `next`),
    /// resume from the new stream's start: all of it was stored after this
    /// subscription was made. `Err` while the stream cannot be read.
    async fn check_incarnation(&mut self) -> Result<(), BusError> {
        let info = self
            .stream
            .info()
            .await
            .map_err(|e| api_error(&format!("reading stream {}", self.name), e))?;
        let (created, first, last) = (
            info.created,
            info.state.first_sequence,
            info.state.last_sequence,
        );
        if created != self.created || last.saturating_add(1) < self.next {
            tracing::warn!(
                stream = %self.name,
                pattern = %self.pattern,
                old_next = self.next,
                new_start = first.max(1),
                "the stream was deleted and created again; the subscription reads the new stream from its start"
            );
            self.created = created;
            self.next = first.max(1);
        }
        Ok(())
    }

    /// Re-creates the consumer at `next`, retrying until it works or the
    /// subscription is dropped (`None`).
    async fn recreate(&mut self) -> Option<Consumer> {
        let mut backoff = Duration::from_millis(50);
        loop {
            let tx = self.tx.clone();
            let attempt = async {
                self.check_incarnation().await?;
                self.create().await
            };
            tokio::select! {
                _ = tx.closed() => return None,
                created = attempt => match created {
                    Ok(c) => {
                        tracing::debug!(stream = %self.name, next = self.next, "subscription consumer re-created");
                        return Some(c);
                    }
                    Err(e) => {
                        tracing::debug!(stream = %self.name, error = %e, "re-creating subscription consumer failed; retrying");
                    }
                }
            }
            tokio::select! {
                _ = self.tx.closed() => return None,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    async fn run(mut self, mut consumer: Consumer) {
        loop {
            let consumer_name = consumer.cached_info().name.clone();
            self.follow(&consumer).await;
            let _ = self.stream.delete_consumer(&consumer_name).await;
            if self.tx.is_closed() {
                return;
            }
            match self.recreate().await {
                Some(c) => consumer = c,
                None => return,
            }
        }
    }

    /// Delivers from one consumer until it fails or the subscription is dropped.
    async fn follow(&mut self, consumer: &Consumer) {
        let messages = consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .heartbeat(HEARTBEAT)
            .expires(EXPIRES)
            .messages()
            .await;
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(stream = %self.name, error = %e, "pull failed");
                return;
            }
        };
        let mut expected_consumer_seq = 1;
        loop {
            let item = tokio::select! {
                _ = self.tx.closed() => return,
                item = messages.next() => item,
            };
            let msg = match item {
                None => return,
                Some(Err(e)) => {
                    tracing::debug!(stream = %self.name, error = %e, "subscription consumer error; resuming from sequence {}", self.next);
                    return;
                }
                Some(Ok(m)) => m,
            };
            let Ok(info) = msg.info() else {
                return;
            };
            let (stream_seq, consumer_seq) = (info.stream_sequence, info.consumer_sequence);
            let stored = stored_ns(&info);
            if consumer_seq != expected_consumer_seq {
                tracing::debug!(stream = %self.name, expected_consumer_seq, consumer_seq, "gap in the consumer sequence; resuming from sequence {}", self.next);
                return;
            }
            expected_consumer_seq += 1;
            if stream_seq < self.next {
                continue; // already delivered
            }
            self.next = stream_seq + 1;
            // The server filters by the pattern unless it had to be dropped
            // (pattern broader than the stream): only then match here.
            if !self.use_filter && !matches(&self.pattern, msg.subject.as_str()) {
                continue;
            }
            // Subjects in the server's namespaces never reach a subscriber,
            // as on every backend (a stream may mix them with others).
            if crate::subject::is_reserved(msg.subject.as_str()) {
                continue;
            }
            let bus_msg =
                to_bus_message(&msg, &self.name, stream_seq, stored, self.strip.as_deref());
            if self.tx.send(bus_msg).await.is_err() {
                return;
            }
        }
    }
}
