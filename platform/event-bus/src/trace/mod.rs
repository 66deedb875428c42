//! Traces: `tracing` spans for publish, receive, process and settle, and
//! W3C trace context carried in message headers.
//!
//! Every operation of the bus opens a span named after OpenTelemetry's
//! messaging conventions, `"{operation} {destination}"` (the `otel.name`
//! field), with the conventions' attributes: `messaging.system`,
//! `messaging.destination.name` (or `.template` for a pattern),
//! `messaging.operation.name` and `.type`, `messaging.message.id`,
//! `messaging.consumer.group.name`, `messaging.message.body.size` and, on a
//! durable consumer, the delivery count.
//!
//! | operation | span | level on NATS | in memory | with a parent-based `Sampling` gate, in an unsampled trace |
//! |---|---|---|---|---|
//! | publish (each message) | `publish {subject}`, producer | `INFO` | `TRACE`, envelopes only | none; the message carries the unsampled context (flags `00`) |
//! | a subscription hands a message over | `receive {pattern}` | `DEBUG` | none | none |
//! | a durable consumer hands a message over | `receive {filter}` | `DEBUG` | `TRACE` | none |
//! | the runner runs a handler (each attempt) | `process {pattern}`, consumer | `INFO` | `TRACE` | none; the handler runs in the message's unsampled context |
//! | ack, nack, term, dead letter | `ack {consumer}`, … | `DEBUG` | `TRACE` | none |
//!
//! The in-memory bus traces at `TRACE`, and its plain
//! [`publish`](crate::EventBus::publish) and subscriptions not at all: a
//! message there costs a few hundred nanoseconds, a span more than that.
//! The outbox (`event-bus-postgres`) adds `create {subject}` when a row is
//! enqueued and `send {table}` per relay batch, linked to each row's
//! context.
//!
//! Each span's target is `event_bus::{operation}` (`event_bus::publish`,
//! `event_bus::receive`, `event_bus::process`, `event_bus::settle`), so a
//! filter can keep some and drop others: `event_bus::publish=warn` keeps
//! the consumers' spans while a publish writes the *current* span's context
//! (e.g. the HTTP request's) into the message instead of a span of its own.
//!
//! With no `tracing` subscriber, or one whose filter leaves these levels
//! out, a span costs a check of a static (a nanosecond or two). With an
//! OpenTelemetry layer, each span that is built costs a few microseconds
//! of CPU (`tracing-opentelemetry` builds it, attributes and all, before
//! the SDK's sampler decides on it), sampled or not: with the default
//! `Sampling::Sdk` every span is built. With a parent-based sampler, tell
//! the bus (`set_sampling`, or `sample_parent_based` which also gives
//! the SDK its sampler): the bus then reads the sampling decision first
//! (the message's `traceparent`, the current context) and builds no span
//! for an unsampled trace, whose message costs about what it costs with
//! tracing off plus its `traceparent` header; only the sampled traces pay
//! for spans. See docs/performance.md's figures (`cargo bench -p
//! event-bus-http --bench observability_overhead`, sides `on-1pct` and
//! `on-1pct-sdk`).
//!
//! # Sampling before the span (feature `otel`)
//!
//! `Sampling::ParentBased`: a message whose `traceparent` says "not
//! sampled" gets no receive, process or settle span, and the runner runs
//! its handler in that unsampled remote context (made OpenTelemetry's
//! current context while the handler's future is polled), so that the
//! spans the handler opens follow it (`tracing-opentelemetry` takes the
//! current context as a new span's parent) and its publishes carry it. A
//! publish in an unsampled context (the current span's, e.g. an unsampled
//! HTTP request's, or a handler's) gets no span and writes that context's
//! `traceparent` (same trace id, flags `00`): the consumers know the trace
//! is not sampled rather than starting a new root. Roots are built as
//! before and the SDK decides. `Sampling::ParentBasedRatio` also decides
//! the bus's own roots (a publish with no context at all) before building
//! them, with OpenTelemetry's trace-id-ratio rule on a random trace id: a
//! publish it does not keep carries a new unsampled `traceparent`; one it
//! keeps gets its span through the usual path, marked so that the SDK
//! sampler `HeadSampler` keeps it (the SDK cannot be handed a trace id for
//! a root, so it would otherwise sample the root again). The same goes for
//! the runner's process span of a message that carries no `traceparent`
//! (a producer that does not trace). The gate is
//! process-wide, read with one relaxed atomic load per span it guards, and
//! does nothing until it is set. [`process_span`], a public function for
//! consumers that run their handling themselves, always builds its span.
//!
//! # Across the bus (feature `otel`)
//!
//! With the `otel` feature and a `tracing-opentelemetry` layer installed, a
//! publish writes its span's context into the message as `traceparent` and
//! `tracestate` headers (unless the message already carries a
//! `traceparent`: an outbox row keeps the context it was written in), and
//! the receive, process and settle spans take the producer's context as
//! their parent. A handler's span therefore continues the trace of the HTTP
//! request that published its event, across NATS. The propagator is
//! OpenTelemetry's global one if the application set one, W3C trace context
//! otherwise. A malformed `traceparent` is ignored (logged at `DEBUG`).
//!
//! ```
//! # #[cfg(feature = "otel")]
//! # fn main() {
//! use event_bus::message::Headers;
//!
//! let mut headers = Headers::new();
//! headers.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
//! let cx = event_bus::trace::extract(&headers).expect("a valid traceparent");
//! use opentelemetry::trace::TraceContextExt;
//! assert_eq!(cx.span().span_context().trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
//!
//! headers.insert("traceparent", "not a trace parent");
//! assert!(event_bus::trace::extract(&headers).is_none());
//! # }
//! # #[cfg(not(feature = "otel"))]
//! # fn main() {}
//! ```

#[cfg(feature = "otel")]
mod sampling;
#[cfg(feature = "otel")]
pub use sampling::{sample_parent_based, sampling, set_sampling, HeadSampler, Sampling};

use tracing::Span;

use crate::message::{BusMessage, Headers};

/// The header that carries the W3C trace parent.
pub const TRACEPARENT: &str = "traceparent";
/// The header that carries the W3C trace state.
pub const TRACESTATE: &str = "tracestate";

/// Opens a span at `$level` (`Level::INFO` or `Level::DEBUG`) on the
/// network backends (NATS, Kafka) and `TRACE` otherwise (in memory); the fields are evaluated only if the span is enabled.
/// Without any `tracing` subscriber it is `Span::none()` at once:
/// `tracing`'s fallback to the `log` crate (feature `log`, which
/// dependencies often enable) would otherwise build each span's fields for
/// a logger, per message.
macro_rules! messaging_span {
    ($level:expr, $system:expr, $name:literal, $($fields:tt)*) => {
        if !tracing::dispatcher::has_been_set() {
            tracing::Span::none()
        } else if $system == "nats" || $system == "kafka" {
            tracing::span!(target: concat!("event_bus::", $name), $level, $name, messaging.system = $system, $($fields)*)
        } else {
            tracing::trace_span!(target: concat!("event_bus::", $name), $name, messaging.system = $system, $($fields)*)
        }
    };
}

/// A span's name, `"{operation} {destination}"` (concatenated: a span's
/// fields are recorded per message, and the formatting machinery costs
/// several times a concatenation).
fn span_name(operation: &str, destination: &str) -> String {
    let mut name = String::with_capacity(operation.len() + 1 + destination.len());
    name.push_str(operation);
    name.push(' ');
    name.push_str(destination);
    name
}

/// The span of one publish: `publish {subject}`, a producer span. Its
/// context is written into the message ([`outgoing`]); it is not entered.
///
/// With [`Sampling`] set to a parent-based mode (feature `otel`), a publish
/// whose trace is not sampled builds no span: the result then carries the
/// unsampled context that [`outgoing`] writes into the message instead.
pub(crate) fn publish_span(system: &'static str, subject: &str, body_size: usize) -> PublishSpan {
    if !tracing::dispatcher::has_been_set() {
        return PublishSpan::none();
    }
    #[cfg(feature = "otel")]
    let mut head_sampled = false;
    #[cfg(feature = "otel")]
    if sampling_gate_on() && level_on(system, tracing::Level::INFO) {
        match sampling::publish_decision() {
            sampling::Decision::Build { root_sampled } => head_sampled = root_sampled,
            sampling::Decision::Skip(cx) => {
                return PublishSpan {
                    span: Span::none(),
                    carried: Some(cx),
                }
            }
        }
    }
    let span = messaging_span!(
        tracing::Level::INFO,
        system,
        "publish",
        otel.name = &*span_name("publish", subject),
        otel.kind = "producer",
        messaging.operation.name = "publish",
        messaging.operation.type = "send",
        messaging.destination.name = subject,
        messaging.message.body.size = body_size as i64,
        messaging.message.id = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    #[cfg(feature = "otel")]
    if head_sampled {
        sampling::mark_head_sampled(&span);
    }
    PublishSpan {
        span,
        #[cfg(feature = "otel")]
        carried: None,
    }
}

/// A publish's span, or, when the [`Sampling`] gate skipped it (an
/// unsampled trace), the unsampled context its message carries instead.
/// Dereferences to the span (disabled when skipped).
#[derive(Debug)]
pub(crate) struct PublishSpan {
    span: Span,
    /// The unsampled context written into the message in place of the
    /// span's (feature `otel`, gate on).
    #[cfg(feature = "otel")]
    carried: Option<opentelemetry::Context>,
}

impl PublishSpan {
    /// No span and no context (no `tracing` dispatcher).
    pub(crate) fn none() -> Self {
        PublishSpan {
            span: Span::none(),
            #[cfg(feature = "otel")]
            carried: None,
        }
    }

    /// Whether [`outgoing`] may have trace headers to add: a span, or an
    /// unsampled context in its place.
    pub(crate) fn carries(&self) -> bool {
        #[cfg(feature = "otel")]
        if self.carried.is_some() {
            return true;
        }
        !self.span.is_disabled()
    }

    /// The span alone (disabled when the gate skipped it).
    #[cfg(feature = "kafka")]
    pub(crate) fn into_span(self) -> Span {
        self.span
    }
}

impl std::ops::Deref for PublishSpan {
    type Target = Span;
    fn deref(&self) -> &Span {
        &self.span
    }
}

/// Records the outcome of a publish (or an answer) on its span: the stored
/// message's position (`stream:sequence`) as its id, or the error kind.
pub(crate) fn record_publish<T>(
    span: &Span,
    result: &Result<T, crate::BusError>,
    ack: Option<&crate::PublishAck>,
) {
    if span.is_disabled() {
        return;
    }
    if let Some(ack) = ack {
        let stream = ack.stream.as_deref().unwrap_or("");
        let mut digits = itoa::Buffer::new();
        let sequence = digits.format(ack.sequence);
        let mut id = String::with_capacity(stream.len() + 1 + sequence.len());
        id.push_str(stream);
        id.push(':');
        id.push_str(sequence);
        span.record("messaging.message.id", id.as_str());
    }
    if let Err(e) = result {
        span.record("error.type", e.kind().as_str());
    }
}

/// The span in which a handler processes `message`: `process {pattern}`, a
/// consumer span whose parent is the producer's context when the message
/// carries one (feature `otel`).
///
/// The runner opens it around each attempt. A service that consumes a
/// [`Subscription`](crate::Subscription) or a
/// [`ConsumerStream`](crate::ConsumerStream) itself can run its handling in
/// it (`.instrument(span)`) to continue the producer's trace.
pub fn process_span(
    system: &'static str,
    pattern: &str,
    consumer: Option<&str>,
    message: &BusMessage,
    delivery_count: u32,
) -> Span {
    let span = messaging_span!(
        tracing::Level::INFO,
        system,
        "process",
        otel.name = &*span_name("process", pattern),
        otel.kind = "consumer",
        messaging.operation.name = "process",
        messaging.operation.type = "process",
        messaging.destination.template = pattern,
        messaging.destination.name = message.subject.as_str(),
        messaging.consumer.group.name = consumer,
        messaging.message.id = &*message.id.display_str(),
        messaging.message.body.size = message.payload.len() as i64,
        messaging.nats.delivery_count = i64::from(delivery_count),
        error.type = tracing::field::Empty,
    );
    continue_trace(&span, &message.headers);
    span
}

/// What the runner runs a handler attempt in: its process span, or, when
/// the [`Sampling`] gate skipped the span (the message's trace is not
/// sampled), the unsampled remote context, made current while the handler
/// runs so that its own spans and publishes stay in that unsampled trace.
pub(crate) enum ProcessTrace {
    /// The process span ([`process_span`]); disabled when filtered out.
    Span(Span),
    /// The message's unsampled context (feature `otel`, gate on).
    #[cfg(feature = "otel")]
    Unsampled(opentelemetry::Context),
}

/// [`process_span`], unless the [`Sampling`] gate is on and the message's
/// `traceparent` says its trace is not sampled: then no span is built.
pub(crate) fn process_trace(
    system: &'static str,
    pattern: &str,
    consumer: Option<&str>,
    message: &BusMessage,
    delivery_count: u32,
) -> ProcessTrace {
    // A root the bus sampled itself is marked for the SDK's `HeadSampler`.
    #[cfg(feature = "otel")]
    let mut root_sampled = false;
    #[cfg(feature = "otel")]
    if sampling_gate_on() && level_on(system, tracing::Level::INFO) {
        match sampling::process_decision(&message.headers) {
            sampling::Decision::Skip(cx) => return ProcessTrace::Unsampled(cx),
            sampling::Decision::Build { root_sampled: r } => root_sampled = r,
        }
    }
    let span = process_span(system, pattern, consumer, message, delivery_count);
    #[cfg(feature = "otel")]
    if root_sampled {
        sampling::mark_head_sampled(&span);
    }
    ProcessTrace::Span(span)
}

/// Whether spans of `level` on `system` may be enabled at all (the global
/// maximum level; a static read): the gate's work is skipped otherwise.
#[cfg(feature = "otel")]
#[inline]
fn level_on(system: &'static str, level: tracing::Level) -> bool {
    if system == "nats" || system == "kafka" {
        tracing::level_filters::LevelFilter::current() >= level
    } else {
        tracing::level_filters::LevelFilter::current() >= tracing::Level::TRACE
    }
}

/// Whether the [`Sampling`] gate is on (a relaxed atomic read).
#[cfg(feature = "otel")]
#[inline]
fn sampling_gate_on() -> bool {
    sampling::mode() != sampling::OFF
}

/// Whether the gate skips a span whose parent is the context carried in
/// `headers` (an unsampled `traceparent`), at `level`.
#[inline]
fn skipped_by_gate(system: &'static str, level: tracing::Level, headers: &Headers) -> bool {
    #[cfg(feature = "otel")]
    if sampling_gate_on() && level_on(system, level) {
        return sampling::unsampled_parent(headers).is_some();
    }
    let _ = (system, level, headers);
    false
}

/// Records a handler's failure (`error.type`) on its process span.
pub(crate) fn record_failure(span: &Span, kind: &'static str) {
    if !span.is_disabled() {
        span.record("error.type", kind);
    }
}

/// Records, in a span that closes at once, that a subscription or consumer
/// handed `message` over: `receive {pattern}`, child of the producer's
/// context. Without a `tracing` dispatcher, nothing (not even a disabled
/// span, whose drop is not free with `tracing`'s `log` feature on).
#[inline]
pub(crate) fn received(system: &'static str, pattern: &str, message: &BusMessage) {
    if tracing::dispatcher::has_been_set()
        && !skipped_by_gate(system, tracing::Level::DEBUG, &message.headers)
    {
        received_span(system, pattern, message);
    }
}

#[inline(never)]
fn received_span(system: &'static str, pattern: &str, message: &BusMessage) {
    let span = messaging_span!(
        tracing::Level::DEBUG,
        system,
        "receive",
        otel.name = &*span_name("receive", pattern),
        otel.kind = "client",
        messaging.operation.name = "receive",
        messaging.operation.type = "receive",
        messaging.destination.template = pattern,
        messaging.destination.name = message.subject.as_str(),
        messaging.message.id = &*message.id.display_str(),
        messaging.message.body.size = message.payload.len() as i64,
    );
    continue_trace(&span, &message.headers);
}

/// The span of an answer to a delivery (`ack`, `nack`, `term`,
/// `dead_letter`), child of the producer's context.
pub(crate) fn settle_span(
    system: &'static str,
    operation: &'static str,
    consumer: &str,
    message: &BusMessage,
) -> Span {
    if skipped_by_gate(system, tracing::Level::DEBUG, &message.headers) {
        return Span::none();
    }
    let span = messaging_span!(
        tracing::Level::DEBUG,
        system,
        "settle",
        otel.name = &*span_name(operation, consumer),
        otel.kind = "client",
        messaging.operation.name = operation,
        messaging.operation.type = "settle",
        messaging.consumer.group.name = consumer,
        messaging.destination.name = message.subject.as_str(),
        messaging.message.id = &*message.id.display_str(),
        error.type = tracing::field::Empty,
    );
    continue_trace(&span, &message.headers);
    span
}

/// Makes the context carried in `headers` the parent of `span`.
fn continue_trace(span: &Span, headers: &Headers) {
    #[cfg(feature = "otel")]
    if !span.is_disabled() {
        if let Some(cx) = extract(headers) {
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            // Fails only without an OpenTelemetry layer: nothing to continue.
            let _ = span.set_parent(cx);
        }
    }
    #[cfg(not(feature = "otel"))]
    let _ = (span, headers);
}

/// The trace headers to add to a message being published: the context of
/// its publish `span` (the current span's when that one is disabled, e.g.
/// filtered out; the unsampled context the [`Sampling`] gate chose when it
/// skipped the span), unless `headers` already carry a `traceparent` or
/// there is no valid context (always none without the `otel` feature). The
/// span is not entered for this.
pub(crate) fn outgoing(span: &PublishSpan, headers: &Headers) -> Option<Vec<(String, String)>> {
    #[cfg(feature = "otel")]
    {
        if !tracing::dispatcher::has_been_set() || headers.get(TRACEPARENT).is_some() {
            return None;
        }
        if let Some(cx) = &span.carried {
            let mut out = Vec::with_capacity(1);
            inject_into(cx, &mut out);
            return (!out.is_empty()).then_some(out);
        }
        let span = &span.span;
        let cx = if span.is_disabled() {
            context_of(&Span::current())
        } else {
            context_of(span)
        }?;
        let mut out = Vec::new();
        inject_into(&cx, &mut out);
        (!out.is_empty()).then_some(out)
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = (span, headers);
        None
    }
}

#[cfg(feature = "otel")]
fn context_of(span: &Span) -> Option<opentelemetry::Context> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = span.context();
    cx.span().span_context().is_valid().then_some(cx)
}

/// Writes the current span's trace context into `headers` (`traceparent`,
/// `tracestate`): what a publish does, for code that stores a message to
/// publish later (the outbox). `false` if there is no valid context.
#[cfg(feature = "otel")]
pub fn inject_current(headers: &mut Headers) -> bool {
    let Some(cx) = context_of(&Span::current()) else {
        return false;
    };
    let mut out = Vec::new();
    inject_into(&cx, &mut out);
    for (name, value) in &out {
        headers.insert(name.as_str(), value.as_str());
    }
    !out.is_empty()
}

/// The trace context carried in `headers`, if there is a valid one. A
/// malformed `traceparent` gives `None` (and a `DEBUG` log), never an error.
#[cfg(feature = "otel")]
pub fn extract(headers: &Headers) -> Option<opentelemetry::Context> {
    use opentelemetry::trace::TraceContextExt;
    let raw = headers.get(TRACEPARENT)?;
    let cx = with_custom_propagator(|p| p.extract(&Carrier(headers)))
        .unwrap_or_else(|| w3c_extract(raw, headers));
    if cx.span().span_context().is_valid() {
        Some(cx)
    } else {
        tracing::debug!(target: "event_bus::receive", traceparent = raw, "ignoring a malformed traceparent header");
        None
    }
}

/// What OpenTelemetry's `TraceContextPropagator` extracts from `headers`
/// (whose `traceparent` is `raw`): a `traceparent` in its canonical form
/// (version `00`, lowercase hex of the W3C lengths) is read directly, any
/// other through the propagator itself (which accepts some variations). The
/// propagator parses through `split`, a `Vec` and `from_str_radix`, several
/// times the cost, on every message consumed. A test checks both agree.
#[cfg(feature = "otel")]
fn w3c_extract(raw: &str, headers: &Headers) -> opentelemetry::Context {
    use opentelemetry::propagation::{Extractor, TextMapPropagator};
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId};
    fn hex(digits: &[u8]) -> Option<u128> {
        digits.iter().try_fold(0u128, |n, &d| {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                _ => return None,
            };
            Some(n << 4 | u128::from(v))
        })
    }
    let b = raw.as_bytes();
    let canonical = (b.len() == 55 && b.starts_with(b"00-") && b[35] == b'-' && b[52] == b'-')
        .then(|| Some((hex(&b[3..35])?, hex(&b[36..52])?, hex(&b[53..55])?)))
        .flatten();
    let Some((trace, span, flags)) = canonical else {
        return opentelemetry_sdk::propagation::TraceContextPropagator::new()
            .extract(&Carrier(headers));
    };
    let state = Carrier(headers)
        .get(TRACESTATE)
        .map(|s| std::str::FromStr::from_str(s).unwrap_or_default())
        .unwrap_or_default();
    let sc = SpanContext::new(
        TraceId::from(trace),
        SpanId::from(span as u64),
        TraceFlags::new(flags as u8) & TraceFlags::SAMPLED,
        true,
        state,
    );
    let cx = opentelemetry::Context::current();
    if sc.is_valid() {
        cx.with_remote_span_context(sc)
    } else {
        cx
    }
}

/// The span context carried in `headers`, for a link.
#[cfg(feature = "otel")]
pub fn extract_span_context(headers: &Headers) -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::TraceContextExt;
    extract(headers).map(|cx| cx.span().span_context().clone())
}

/// Writes `cx` into `out` with the application's global propagator, or as
/// W3C trace context ([`w3c_inject`]) when it set none.
#[cfg(feature = "otel")]
fn inject_into(cx: &opentelemetry::Context, out: &mut Vec<(String, String)>) {
    struct Out<'a>(&'a mut Vec<(String, String)>);
    impl opentelemetry::propagation::Injector for Out<'_> {
        fn set(&mut self, key: &str, value: String) {
            // W3C's propagator sets `tracestate` even when it is empty.
            if !value.is_empty() {
                self.0.push((key.to_string(), value));
            }
        }
    }
    if with_custom_propagator(|p| p.inject_context(cx, &mut Out(out))).is_none() {
        w3c_inject(cx, out);
    }
}

/// Runs `f` with OpenTelemetry's global propagator if the application set
/// one (the default no-op propagator has no fields); `None` otherwise,
/// where the bus reads and writes W3C trace context itself.
#[cfg(feature = "otel")]
fn with_custom_propagator<R>(
    mut f: impl FnMut(&dyn opentelemetry::propagation::TextMapPropagator) -> R,
) -> Option<R> {
    opentelemetry::global::get_text_map_propagator(|p| p.fields().next().is_some().then(|| f(p)))
}

/// What OpenTelemetry's `TraceContextPropagator` injects (a `traceparent`,
/// and a `tracestate` unless it is empty), written directly: the
/// propagator formats the ids through `format!`, several times the cost,
/// on every publish. A test checks both agree.
#[cfg(feature = "otel")]
fn w3c_inject(cx: &opentelemetry::Context, out: &mut Vec<(String, String)>) {
    use opentelemetry::trace::{TraceContextExt, TraceFlags};
    fn hex(bytes: &[u8], to: &mut String) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for b in bytes {
            to.push(DIGITS[usize::from(b >> 4)] as char);
            to.push(DIGITS[usize::from(b & 0xf)] as char);
        }
    }
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return;
    }
    // "00-" + 32 + "-" + 16 + "-" + 2
    let mut parent = String::with_capacity(55);
    parent.push_str("00-");
    hex(&sc.trace_id().to_bytes(), &mut parent);
    parent.push('-');
    hex(&sc.span_id().to_bytes(), &mut parent);
    parent.push('-');
    hex(
        &[(sc.trace_flags() & TraceFlags::SAMPLED).to_u8()],
        &mut parent,
    );
    out.push((TRACEPARENT.to_string(), parent));
    let state = sc.trace_state().header();
    if !state.is_empty() {
        out.push((TRACESTATE.to_string(), state));
    }
}

#[cfg(feature = "otel")]
struct Carrier<'a>(&'a Headers);

#[cfg(feature = "otel")]
impl opentelemetry::propagation::Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k).collect()
    }
}

#[cfg(all(test, feature = "otel"))]
mod tests {
    use super::*;

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00",
            "garbage",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "zz-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        ] {
            let mut h = Headers::new();
            h.insert(TRACEPARENT, bad);
            assert!(extract(&h).is_none(), "{bad:?} was accepted");
        }
        let mut h = Headers::new();
        h.insert(
            TRACEPARENT,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        h.insert(TRACESTATE, "vendor=value");
        let cx = extract(&h).expect("valid");
        use opentelemetry::trace::TraceContextExt;
        let sc = cx.span().span_context().clone();
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
        assert!(sc.is_sampled());
        assert_eq!(sc.trace_state().get("vendor"), Some("value"));
    }

    /// The direct W3C writer gives what OpenTelemetry's propagator gives,
    /// for ids of every length of leading zeros, every flag byte and with
    /// and without a trace state.
    #[test]
    fn w3c_injection_agrees_with_the_propagator() {
        use opentelemetry::propagation::TextMapPropagator;
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
        };
        use std::str::FromStr;
        let propagator = opentelemetry_sdk::propagation::TraceContextPropagator::new();
        let mut x: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834;
        let mut checked = 0;
        for i in 0..400u32 {
            x = x
                .wrapping_mul(0x2360_ed05_1fc6_5da4_4385_df64_9fcc_f645)
                .wrapping_add(1);
            // Shift some ids down so that leading zeros are written too.
            let trace = x >> (i % 128);
            let span = (x as u64) >> (i % 64);
            let state = if i % 3 == 0 {
                TraceState::from_str("vendor=value,other=1").unwrap()
            } else {
                TraceState::default()
            };
            let sc = SpanContext::new(
                TraceId::from(trace),
                SpanId::from(span),
                TraceFlags::new((i % 4) as u8),
                false,
                state,
            );
            let cx = opentelemetry::Context::new().with_remote_span_context(sc.clone());
            let mut ours = Vec::new();
            w3c_inject(&cx, &mut ours);
            let mut theirs = std::collections::HashMap::new();
            propagator.inject_context(&cx, &mut theirs);
            theirs.retain(|_, v: &mut String| !v.is_empty());
            let ours: std::collections::HashMap<String, String> = ours.into_iter().collect();
            assert_eq!(ours, theirs, "{sc:?}");
            if sc.is_valid() {
                checked += 1;
            }
        }
        assert!(checked > 300, "{checked} valid contexts checked");
    }

    /// The direct W3C reader gives what OpenTelemetry's propagator gives:
    /// canonical parents, and 3,000 mutations of them (a byte changed,
    /// cut short, lengthened, upper case, other versions, zero ids), with
    /// and without a trace state.
    #[test]
    fn w3c_extraction_agrees_with_the_propagator() {
        use opentelemetry::propagation::TextMapPropagator;
        use opentelemetry::trace::TraceContextExt;
        let propagator = opentelemetry_sdk::propagation::TraceContextPropagator::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            x >> 33
        };
        let alphabet = b"0123456789abcdefABCDEF-+ xz0";
        let (mut canonical, mut valid) = (0, 0);
        for i in 0..3000 {
            let mut tp = format!(
                "00-{:016x}{:016x}-{:016x}-{:02x}",
                next(),
                next(),
                next(),
                next() % 4
            )
            .into_bytes();
            match i % 6 {
                0 => {}
                1 => {
                    let at = next() as usize % tp.len();
                    tp[at] = alphabet[next() as usize % alphabet.len()];
                }
                2 => tp.truncate(next() as usize % tp.len()),
                3 => tp.extend_from_slice(b"-00"),
                4 => tp[..2].copy_from_slice(if i % 12 == 4 { b"01" } else { b"ff" }),
                _ => tp[3..35].copy_from_slice(&[b'0'; 32]),
            }
            let tp = String::from_utf8(tp).unwrap();
            let mut h = Headers::new();
            h.insert(TRACEPARENT, tp.as_str());
            if i % 5 == 0 {
                h.insert(TRACESTATE, "vendor=value,other=1");
            }
            let ours = w3c_extract(&tp, &h);
            let theirs = propagator.extract(&Carrier(&h));
            assert_eq!(
                ours.span().span_context(),
                theirs.span().span_context(),
                "{tp:?}"
            );
            canonical += usize::from(i % 6 == 0);
            valid += usize::from(ours.span().span_context().is_valid());
        }
        assert!(
            canonical == 500 && valid > 1000,
            "{canonical} canonical, {valid} valid"
        );
    }

    /// A publish writes its own span's context into the message; with
    /// publish spans filtered out, the current span's (the request's)
    /// instead.
    #[test]
    fn a_publish_carries_its_span_or_else_the_current_one() {
        use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        use tracing_subscriber::layer::SubscriberExt;
        let ids = |span: &Span| {
            let sc = span.context().span().span_context().clone();
            (sc.trace_id().to_string(), sc.span_id().to_string())
        };
        for publish_level in [tracing::Level::INFO, tracing::Level::WARN] {
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
            let subscriber = tracing_subscriber::registry()
                .with(
                    tracing_subscriber::filter::Targets::new()
                        .with_default(tracing::Level::INFO)
                        .with_target("event_bus::publish", publish_level),
                )
                .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
            tracing::subscriber::with_default(subscriber, || {
                let request = tracing::info_span!("request");
                let _in_request = request.enter();
                let span = publish_span("nats", "orders.created", 8);
                assert_eq!(span.is_disabled(), publish_level == tracing::Level::WARN);
                let out = outgoing(&span, &Headers::new()).expect("a context to carry");
                let parent = &out.iter().find(|(n, _)| n == TRACEPARENT).unwrap().1;
                let (trace, span_id) = if span.is_disabled() {
                    ids(&request)
                } else {
                    ids(&span)
                };
                assert_eq!(
                    parent,
                    &format!("00-{trace}-{span_id}-01"),
                    "{publish_level}"
                );
                assert_eq!(ids(&request).0, trace, "one trace");
            });
        }
    }

    #[test]
    fn nothing_is_injected_without_a_span() {
        assert!(outgoing(&PublishSpan::none(), &Headers::new()).is_none());
        let mut h = Headers::new();
        assert!(!inject_current(&mut h));
        assert!(h.is_empty());
    }
}
