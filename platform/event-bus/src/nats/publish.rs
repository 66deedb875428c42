//! How a message reaches JetStream, one path for plain, envelope and batch
//! publishes: [`prepare`](NatsBus::prepare) (validate and build it, with the
//! publish span's trace context), [`send`](NatsBus::send) it, await its
//! acknowledgement, then [`settle`](NatsBus::settle): when the server says
//! nothing stores the subject, create the default stream and publish once
//! more. Batches send windows of [`BATCH_WINDOW`] before awaiting their
//! acknowledgements.

use super::{convert, NatsBus, BATCH_WINDOW};
use crate::error::{BusError, ErrorKind};
use crate::message::{Envelope, Headers, MessageId, PublishAck};
use crate::subject::{first_token, validate_bus_subject};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use futures::future::{ready, BoxFuture, Either, Ready};
use futures::FutureExt;
use std::future::Future;
use tracing::Instrument;

/// What a publish keeps for its one retry (see [`NatsBus::settle`]): what
/// [`NatsBus::prepare`] takes again.
pub(super) struct Retry<'a> {
    pub(super) payload: Bytes,
    pub(super) headers: &'a Headers,
    pub(super) id: Option<&'a MessageId>,
}

/// A publish's outcome, or the future of its one retry (see [`NatsBus::settle`]).
pub(super) type Settled<'a> = Either<Ready<Published>, BoxFuture<'a, Published>>;
type Published = Result<PublishAck, BusError>;

/// The headers of a plain publish.
pub(super) static NO_HEADERS: Headers = Headers::new();

/// One envelope of a batch's window, sent and awaiting its acknowledgement.
struct Sent {
    subject: String,
    /// The payload kept for a retry, when no stream may store the subject yet.
    kept: Option<Bytes>,
    headers: Headers,
    id: Option<MessageId>,
    sent: Result<PublishAckFuture, BusError>,
    /// The publish span, kept (not entered) until the acknowledgement.
    span: crate::trace::PublishSpan,
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

    /// Validates and builds the wire message, with `span`'s trace context
    /// (feature `otel`).
    pub(super) fn prepare(
        &self,
        subject: &str,
        payload: Bytes,
        headers: &Headers,
        id: Option<&MessageId>,
        span: &crate::trace::PublishSpan,
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

    /// Sends one message (not waiting for its acknowledgement).
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

    /// Waits for a sent message's acknowledgement (a plain future, no state
    /// of its own: the publish future stays small).
    pub(super) fn await_ack<'a>(
        &self,
        subject: &'a str,
        fut: PublishAckFuture,
    ) -> impl Future<Output = Result<PublishAck, BusError>> + Send + 'a {
        std::future::IntoFuture::into_future(fut).map(move |acked| match acked {
            Ok(ack) => Ok(PublishAck::new(
                Some(ack.stream),
                ack.sequence,
                ack.duplicate,
            )),
            Err(e) => Err(convert::publish_error(subject, e)),
        })
    }

    /// The publish path, for plain, envelope and batch publishes: sends the
    /// prepared message, awaits its acknowledgement, then [`settle`](Self::settle)s it.
    pub(super) async fn publish_prepared(
        &self,
        subject: &str,
        (wire, msg): (String, PublishMessage),
        retry: Option<Retry<'_>>,
        span: &crate::trace::PublishSpan,
    ) -> Result<PublishAck, BusError> {
        let started = self.violations_clock();
        // async-nats' send future (~840 bytes) is boxed apart: both boxes
        // then fit glibc's per-thread cache (up to 1032 bytes), which one
        // box holding both did not.
        let result = match Box::pin(self.send(subject, wire, msg)).await {
            Ok(fut) => self.await_ack(subject, fut).await,
            Err(e) => Err(e),
        };
        self.settle(subject, result, retry, span, started).await
    }

    /// What follows a sent publish: when the server says that no stream
    /// stores the subject and a `retry` is kept (the bus creates default
    /// streams), makes the default stream and publishes once more; any other
    /// failure is explained (`started`: see [`violations_clock`](Self::violations_clock)).
    /// A plain function returning the (boxed, rare) retry's future or the
    /// outcome: the publish future stays small.
    pub(super) fn settle<'a>(
        &'a self,
        subject: &'a str,
        result: Result<PublishAck, BusError>,
        retry: Option<Retry<'a>>,
        span: &'a crate::trace::PublishSpan,
        started: Option<std::time::Instant>,
    ) -> Settled<'a> {
        match (result, retry) {
            (Ok(ack), _) => Either::Left(ready(Ok(ack))),
            (Err(e), Some(retry)) if e.kind() == ErrorKind::NotFound => {
                Either::Right(Box::pin(self.republish(subject, retry, span)))
            }
            (Err(e), _) => Either::Left(ready(Err(self.explained(e, subject, started)))),
        }
    }

    /// After a publish found no stream: creates the default stream for the
    /// subject's first token and publishes once more (no further retry).
    #[cold]
    async fn republish(
        &self,
        subject: &str,
        retry: Retry<'_>,
        span: &crate::trace::PublishSpan,
    ) -> Result<PublishAck, BusError> {
        // The server said that no stream stores the subject: what the bus
        // remembers about its default stream is stale (deleted since).
        if self.inner.known_streams.lock().remove(first_token(subject)) {
            tracing::warn!(
                subject,
                "no stream stores the subject any more (deleted?); creating its default stream again"
            );
        }
        async {
            self.ensure_default_stream(subject).await?;
            let started = self.violations_clock();
            let (wire, msg) =
                self.prepare(subject, retry.payload, retry.headers, retry.id, span)?;
            let result = match self.send(subject, wire, msg).await {
                Ok(fut) => self.await_ack(subject, fut).await,
                Err(e) => Err(e),
            };
            result.map_err(|e| self.explained(e, subject, started))
        }
        .instrument(tracing::Span::clone(span))
        .await
    }

    /// When the connection reports permission violations (made by
    /// [`connect`](NatsBus::connect)): the time a publish started, to find
    /// the violations reported since.
    fn violations_clock(&self) -> Option<std::time::Instant> {
        self.inner
            .violations
            .as_ref()
            .map(|_| std::time::Instant::now())
    }

    /// `e`, with the permission violation reported since `started` that
    /// explains it, if any.
    #[cold]
    fn explained(
        &self,
        e: BusError,
        subject: &str,
        started: Option<std::time::Instant>,
    ) -> BusError {
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
        while envelopes.peek().is_some() {
            // Send a window, then await its acknowledgements (in order). The
            // payload (a handle, no copy), headers and id are kept for one
            // retry, should no stream store the subject (not created yet, or
            // deleted since).
            let mut window: Vec<Sent> = Vec::with_capacity(BATCH_WINDOW);
            for env in envelopes.by_ref().take(BATCH_WINDOW) {
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
                window.push(Sent {
                    subject,
                    kept,
                    headers,
                    id,
                    sent,
                    span,
                });
            }
            for Sent {
                subject,
                kept,
                headers,
                id,
                sent,
                span,
            } in window
            {
                let result = match sent {
                    Ok(fut) => self.await_ack(&subject, fut).await,
                    Err(e) => Err(e),
                };
                // No stream (yet, or deleted since): the rest of the window
                // may also have missed it, and is retried the same way, in
                // order.
                let retry = kept.map(|payload| Retry {
                    payload,
                    headers: &headers,
                    id: id.as_ref(),
                });
                let result = self.settle(&subject, result, retry, &span, None).await;
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

    /// Every publish boxes its future: keep it small (the rarely taken
    /// stream-creation path is boxed separately).
    #[tokio::test]
    async fn publish_future_stays_small() {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("127.0.0.1:9")
            .await
            .expect("a client that connects in the background");
        let bus = NatsBus::new(client);
        let span = crate::trace::PublishSpan::none();
        let retry = Retry {
            payload: Bytes::new(),
            headers: &NO_HEADERS,
            id: None,
        };
        let fut = bus.publish_prepared(
            "a.b",
            ("a.b".to_string(), PublishMessage::build()),
            Some(retry),
            &span,
        );
        let size = std::mem::size_of_val(&fut);
        println!("publish future: {size} bytes");
        // async-nats' send future (~840 bytes) is boxed on its own; both
        // stay within glibc's per-thread cache (1032 bytes).
        assert!(size <= 512, "the publish future is {size} bytes");
    }
}
