//! How a message reaches JetStream: validate and build it (with the
//! publish span's trace context), send it, await its acknowledgement,
//! count the outcome; create the default stream and publish once more when
//! the server says nothing stores the subject; batches in windows of
//! [`BATCH_WINDOW`] sends before their acknowledgements.

use super::{convert, NatsBus, BATCH_WINDOW};
use crate::error::{BusError, ErrorKind};
use crate::message::{Envelope, Headers, MessageId, PublishAck};
use crate::subject::{first_token, validate_bus_subject};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use tracing::Instrument;

/// What a batch keeps of an envelope for one retry (its subject aside).
struct Retry {
    payload: Bytes,
    headers: Headers,
    id: Option<MessageId>,
}

/// One envelope of a batch's window, sent and awaiting its acknowledgement.
struct Sent {
    subject: String,
    /// What a retry needs, when no stream may store the subject yet.
    retry: Option<Retry>,
    /// Whether the subject's first token had no known stream before.
    newly: bool,
    sent: Result<PublishAckFuture, BusError>,
    /// The publish span, kept (not entered) until the acknowledgement.
    span: tracing::Span,
}

impl NatsBus {
    /// Records a publish's outcome: metrics, and on its span the message's
    /// stream position or the error kind.
    pub(super) fn finish<T>(
        &self,
        span: &tracing::Span,
        result: &Result<T, BusError>,
        ack: Option<&PublishAck>,
        started: Option<std::time::Instant>,
    ) {
        crate::trace::record_publish(span, result, ack);
        self.observe(result, started);
    }

    /// Counts a publish's outcome (and its duration, when timed).
    pub(super) fn observe<T>(
        &self,
        result: &Result<T, BusError>,
        started: Option<std::time::Instant>,
    ) {
        let m = &self.inner.metrics;
        let seconds = started.map(|t| t.elapsed().as_secs_f64());
        match result {
            Ok(_) => {
                m.sent.increment(1);
                if let Some(s) = seconds {
                    m.duration.record(s);
                }
            }
            Err(e) => m.failed(e.kind(), seconds),
        }
    }

    pub(super) async fn publish_one(
        &self,
        subject: &str,
        payload: Bytes,
        headers: &Headers,
        id: Option<&MessageId>,
    ) -> Result<PublishAck, BusError> {
        let (wire, msg) = self.prepare(subject, payload, headers, id, &tracing::Span::current())?;
        let started = self
            .inner
            .violations
            .as_ref()
            .map(|_| std::time::Instant::now());
        let result = match self.send(subject, wire, msg).await {
            Ok(fut) => self.await_ack(subject, fut).await,
            Err(e) => Err(e),
        };
        match (result, started) {
            (Err(e), Some(started)) => Err(convert::explain(
                e,
                self.inner.violations.as_deref(),
                started,
                &self.wire(subject),
                &format!("publish to {subject:?}"),
            )),
            (result, _) => result,
        }
    }

    /// Validates and builds the wire message, with `span`'s trace context
    /// (feature `otel`).
    pub(super) fn prepare(
        &self,
        subject: &str,
        payload: Bytes,
        headers: &Headers,
        id: Option<&MessageId>,
        span: &tracing::Span,
    ) -> Result<(String, PublishMessage), BusError> {
        validate_bus_subject(subject)?;
        crate::message::validate_parts(headers, id)?;
        let wire = self.wire(subject).into_owned();
        let id_text = id.map(|i| i.to_string());
        let trace = crate::trace::outgoing(span, headers);
        let trace_len = trace
            .as_ref()
            .map_or(0, |t| t.iter().map(|(n, v)| n.len() + v.len() + 4).sum());
        let header_len = if headers.is_empty() && id_text.is_none() && trace.is_none() {
            0
        } else {
            // "NATS/1.0\r\n" + each "name: value\r\n" + "\r\n"
            12 + headers.wire_len() + trace_len + id_text.as_ref().map_or(0, |i| i.len() + 15)
        };
        let max = self.inner.client.max_payload();
        if payload.len() + header_len > max {
            return Err(BusError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "message on {subject:?} is {} bytes (payload {} + headers {header_len}), over the server's max_payload of {max} bytes",
                    payload.len() + header_len,
                    payload.len()
                ),
            ));
        }
        let mut msg = PublishMessage::build().payload(payload);
        if !headers.is_empty() || trace.is_some() {
            let mut map = convert::to_header_map(headers);
            for (name, value) in trace.iter().flatten() {
                map.insert(name.as_str(), value.as_str());
            }
            msg = msg.headers(map);
        }
        if let Some(id) = id_text {
            msg = msg.message_id(id);
        }
        Ok((wire, msg))
    }

    /// Sends one message (not waiting for its acknowledgement), creating the
    /// default stream first when the server says nothing stores the subject.
    pub(super) async fn send(
        &self,
        subject: &str,
        wire: String,
        msg: PublishMessage,
    ) -> Result<PublishAckFuture, BusError> {
        // The JetStream context bounds the send (and, in `await_ack`, the
        // acknowledgement) by `publish_timeout`: no timer of our own per publish.
        self.inner
            .js
            .send_publish(wire, msg)
            .await
            .map_err(|e| convert::publish_error(subject, e))
    }

    pub(super) async fn await_ack(
        &self,
        subject: &str,
        fut: PublishAckFuture,
    ) -> Result<PublishAck, BusError> {
        match fut.await {
            Ok(ack) => Ok(PublishAck::new(
                Some(ack.stream),
                ack.sequence,
                ack.duplicate,
            )),
            Err(e) => Err(convert::publish_error(subject, e)),
        }
    }

    /// Publishes with one retry after creating the default stream if the first
    /// attempt found no stream.
    pub(super) async fn publish_with_stream(
        &self,
        subject: &str,
        payload: Bytes,
        headers: &Headers,
        id: Option<&MessageId>,
    ) -> Result<PublishAck, BusError> {
        let first = first_token(subject);
        if !self.inner.auto_create {
            return self.publish_one(subject, payload, headers, id).await;
        }
        if self.inner.published.contains(first) {
            let result = self
                .publish_one(subject, payload.clone(), headers, id)
                .await;
            if matches!(&result, Err(e) if e.kind() == ErrorKind::NotFound) {
                // The stream went away (deleted): make it again, publish once more.
                return Box::pin(self.republish_after_not_found(subject, payload, headers, id))
                    .await;
            }
            return result;
        }
        // The first publish to a token may have to create its stream: that
        // path is boxed on its own so that the steady-state future stays small
        // (it is boxed and moved on every publish).
        Box::pin(self.publish_creating_stream(subject, payload, headers, id, first)).await
    }

    pub(super) async fn publish_creating_stream(
        &self,
        subject: &str,
        payload: Bytes,
        headers: &Headers,
        id: Option<&MessageId>,
        first: &str,
    ) -> Result<PublishAck, BusError> {
        let result = match self
            .publish_one(subject, payload.clone(), headers, id)
            .await
        {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.republish_creating_stream(subject, payload, headers, id)
                    .await
            }
            other => other,
        };
        if result.is_ok() {
            self.mark_published(first);
        }
        result
    }

    /// After a publish found no stream: creates the default stream for the
    /// subject's first token and publishes once more.
    pub(super) async fn republish_creating_stream(
        &self,
        subject: &str,
        payload: Bytes,
        headers: &Headers,
        id: Option<&MessageId>,
    ) -> Result<PublishAck, BusError> {
        // The server said that no stream stores the subject: what the bus
        // remembers about its default stream is stale (deleted since).
        self.forget_default_stream(subject);
        self.ensure_default_stream(subject).await?;
        self.publish_one(subject, payload, headers, id).await
    }

    /// A publish to a token known to have a stream found none (deleted
    /// since): creates the default stream again and publishes once more.
    #[cold]
    pub(super) async fn republish_after_not_found(
        &self,
        subject: &str,
        payload: Bytes,
        headers: &Headers,
        id: Option<&MessageId>,
    ) -> Result<PublishAck, BusError> {
        let first = first_token(subject);
        self.inner.published.remove(first);
        tracing::warn!(
            subject,
            "no stream stores the subject any more (deleted?); creating its default stream again"
        );
        let result = self
            .republish_creating_stream(subject, payload, headers, id)
            .await;
        if result.is_ok() {
            self.mark_published(first);
        }
        result
    }

    /// Forgets that the default stream for `subject`'s first token exists.
    pub(super) fn forget_default_stream(&self, subject: &str) {
        let first = first_token(subject);
        self.inner.known_streams.lock().remove(first);
    }

    /// Records that a stream takes publishes to `first` (a valid first token,
    /// since a publish to it was acknowledged).
    pub(super) fn mark_published(&self, first: &str) {
        if !self.inner.published.contains(first) {
            self.inner.published.insert(first);
        }
    }

    /// Sends a prepared message to a token known to have a stream and waits for
    /// the acknowledgement (the steady-state publish path).
    pub(super) async fn publish_prepared(
        &self,
        subject: &str,
        first: &str,
        wire: String,
        msg: PublishMessage,
        retry: Option<Bytes>,
    ) -> Result<(), BusError> {
        let started = self
            .inner
            .violations
            .as_ref()
            .map(|_| std::time::Instant::now());
        // async-nats' send future (~840 bytes) is boxed apart: both boxes
        // then fit glibc's per-thread cache (up to 1032 bytes), which one
        // box holding both did not.
        let result = match Box::pin(self.inner.js.send_publish(wire, msg)).await {
            Ok(ack) => ack
                .await
                .map(|_| ())
                .map_err(|e| convert::publish_error(subject, e)),
            Err(e) => Err(convert::publish_error(subject, e)),
        };
        match (result, retry) {
            (Ok(()), _) => Ok(()),
            (Err(e), Some(payload)) if e.kind() == ErrorKind::NotFound => {
                // The stream went away (deleted): make it again, publish once more.
                Box::pin(self.republish_after_not_found(subject, payload, &Headers::new(), None))
                    .await
                    .map(|_| ())
            }
            (Err(e), _) => Err(self.publish_failed(e, subject, first, started)),
        }
    }

    #[cold]
    pub(super) fn publish_failed(
        &self,
        e: BusError,
        subject: &str,
        first: &str,
        started: Option<std::time::Instant>,
    ) -> BusError {
        if e.kind() == ErrorKind::NotFound {
            // The stream went away: take the creating path next time.
            self.inner.published.remove(first);
        }
        match started {
            Some(started) => convert::explain(
                e,
                self.inner.violations.as_deref(),
                started,
                &self.wire(subject),
                &format!("publish to {subject:?}"),
            ),
            None => e,
        }
    }

    /// [`EventBus::publish_batch`]: windows of [`BATCH_WINDOW`](super::BATCH_WINDOW)
    /// sends, then their acknowledgements in order.
    pub(super) async fn publish_in_windows(
        &self,
        envelopes: Vec<Envelope>,
    ) -> Vec<Result<PublishAck, BusError>> {
        let mut results: Vec<Result<PublishAck, BusError>> = Vec::with_capacity(envelopes.len());
        let mut envelopes = envelopes.into_iter().peekable();
        // The last first token found published to: its envelopes need no copy
        // kept for a retry.
        let mut known_first: Option<String> = None;
        while envelopes.peek().is_some() {
            // Send a window, then await its acknowledgements (in order). The
            // payload (a handle, no copy), headers and id are kept for one
            // retry, should no stream store the subject (not created yet, or
            // deleted since).
            let mut window: Vec<Sent> = Vec::with_capacity(BATCH_WINDOW);
            for env in envelopes.by_ref().take(BATCH_WINDOW) {
                let first = first_token(&env.subject);
                let known = !self.inner.auto_create
                    || known_first.as_deref() == Some(first)
                    || self.inner.published.contains(first);
                if known && known_first.as_deref() != Some(first) {
                    known_first = Some(first.to_string());
                }
                let Envelope {
                    subject,
                    payload,
                    headers,
                    id,
                    ..
                } = env;
                let kept = self.inner.auto_create.then(|| payload.clone());
                let span = crate::trace::publish_span("nats", &subject, payload.len());
                let prepared = self.prepare(&subject, payload, &headers, id.as_ref(), &span);
                // The span lives until the acknowledgement (it is kept in the
                // window) without being entered: nothing runs in it.
                let sent = match prepared {
                    Ok((wire, msg)) => self.send(&subject, wire, msg).await,
                    Err(e) => Err(e),
                };
                let retry = kept.map(|payload| Retry {
                    payload,
                    headers,
                    id,
                });
                window.push(Sent {
                    subject,
                    retry,
                    newly: !known,
                    sent,
                    span,
                });
            }
            for Sent {
                subject,
                retry,
                newly,
                sent,
                span,
            } in window
            {
                let result = match sent {
                    Ok(fut) => self.await_ack(&subject, fut).await,
                    Err(e) => Err(e),
                };
                let first = first_token(&subject);
                let result = match (result, retry) {
                    (Err(e), Some(r)) if e.kind() == ErrorKind::NotFound => {
                        // No stream (yet, or deleted since): create it and
                        // publish this one again (the rest of the window may
                        // also have missed it, and is retried the same way,
                        // in order).
                        self.inner.published.remove(first);
                        let result = self
                            .republish_creating_stream(
                                &subject,
                                r.payload,
                                &r.headers,
                                r.id.as_ref(),
                            )
                            .instrument(span.clone())
                            .await;
                        if result.is_ok() {
                            self.mark_published(first);
                        }
                        result
                    }
                    (result, _) => {
                        if newly && result.is_ok() {
                            self.mark_published(first);
                        }
                        result
                    }
                };
                crate::trace::record_publish(&span, &result, result.as_ref().ok());
                results.push(result);
            }
        }
        for result in &results {
            self.observe(result, None);
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every publish boxes its future: keep the steady-state path small (the
    /// rarely taken stream-creation path is boxed separately).
    #[tokio::test]
    async fn publish_future_stays_small() {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("127.0.0.1:9")
            .await
            .expect("a client that connects in the background");
        let bus = NatsBus::new(client);
        let headers = Headers::new();
        let fut = bus.publish_with_stream("a.b", Bytes::new(), &headers, None);
        println!(
            "publish_with_stream future: {} bytes",
            std::mem::size_of_val(&fut)
        );
        drop(fut);
        let fut = bus.publish_prepared(
            "a.b",
            "a",
            "a.b".to_string(),
            PublishMessage::build(),
            Some(Bytes::new()),
        );
        let size = std::mem::size_of_val(&fut);
        println!("publish future: {size} bytes");
        // async-nats' send future (~840 bytes) is boxed on its own; both
        // stay within glibc's per-thread cache (1032 bytes).
        assert!(size <= 512, "the publish future is {size} bytes");
    }
}
