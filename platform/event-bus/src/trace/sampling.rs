//! Sampling before the span is built (feature `otel`): the [`Sampling`]
//! gate, set with [`set_sampling`] or [`sample_parent_based`], and the
//! decisions the spans of [`crate::trace`] read before they are built.

use super::Span;
use crate::message::Headers;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

pub(super) const OFF: u8 = 0;
const PARENT: u8 = 1;
const RATIO: u8 = 2;
static MODE: AtomicU8 = AtomicU8::new(OFF);
/// The ratio, as its `f64` bits.
static RATIO_BITS: AtomicU64 = AtomicU64::new(0);

#[inline]
pub(super) fn mode() -> u8 {
    MODE.load(Ordering::Relaxed)
}

pub(super) fn set(sampling: Sampling) {
    let (mode, ratio) = match sampling {
        Sampling::Sdk => (OFF, 0.0),
        Sampling::ParentBased => (PARENT, 0.0),
        Sampling::ParentBasedRatio(r) => (RATIO, r),
    };
    RATIO_BITS.store(ratio.to_bits(), Ordering::Relaxed);
    MODE.store(mode, Ordering::Relaxed);
}

pub(super) fn get() -> Sampling {
    match mode() {
        OFF => Sampling::Sdk,
        PARENT => Sampling::ParentBased,
        _ => Sampling::ParentBasedRatio(f64::from_bits(RATIO_BITS.load(Ordering::Relaxed))),
    }
}

/// Marks the parent context of a root publish span that the bus sampled
/// (read by [`HeadSampler`](HeadSampler)).
#[derive(Debug)]
pub(super) struct HeadSampled;

/// What a publish does under the gate.
pub(super) enum Decision {
    /// Build the publish span (`root_sampled`: a root the bus sampled).
    Build { root_sampled: bool },
    /// No span: the message carries this unsampled context.
    Skip(opentelemetry::Context),
}

/// The gate's decision for a publish: follows the current context
/// (the current span's, else OpenTelemetry's current one: a handler's
/// unsampled context); with no context, a root, decided by the ratio
/// when one is set.
pub(super) fn publish_decision() -> Decision {
    let current = Span::current();
    if !current.is_disabled() {
        if let Some(cx) = super::context_of(&current) {
            return if cx.span().span_context().is_sampled() {
                Decision::Build {
                    root_sampled: false,
                }
            } else {
                Decision::Skip(cx)
            };
        }
    }
    let otel_current = opentelemetry::Context::map_current(|cx| {
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| (sc.is_sampled(), cx.clone()))
    });
    match otel_current {
        Some((true, _)) => Decision::Build {
            root_sampled: false,
        },
        Some((false, cx)) => Decision::Skip(cx),
        None => root_decision(),
    }
}

/// The gate's decision for a process span: follows the message's
/// `traceparent`; a message with none (or a malformed one) is a root,
/// decided by the ratio when one is set.
pub(super) fn process_decision(headers: &Headers) -> Decision {
    if headers.get(super::TRACEPARENT).is_some() {
        if let Some(cx) = super::extract(headers) {
            return if cx.span().span_context().is_sampled() {
                Decision::Build {
                    root_sampled: false,
                }
            } else {
                Decision::Skip(cx)
            };
        }
    }
    root_decision()
}

/// A root's decision: with a ratio, OpenTelemetry's trace-id-ratio rule
/// on a new random trace id (not kept: a new unsampled context with
/// that id); without one, the SDK decides on the built span.
fn root_decision() -> Decision {
    if mode() != RATIO {
        return Decision::Build {
            root_sampled: false,
        };
    }
    let ratio = f64::from_bits(RATIO_BITS.load(Ordering::Relaxed));
    let (trace, span) = ids();
    if sampled(ratio, trace) {
        Decision::Build { root_sampled: true }
    } else {
        let sc = SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::default(),
            false,
            Default::default(),
        );
        Decision::Skip(opentelemetry::Context::new().with_remote_span_context(sc))
    }
}

/// Makes `span` (a root publish span the bus sampled) kept by
/// [`HeadSampler`](HeadSampler).
pub(super) fn mark_head_sampled(span: &Span) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if !span.is_disabled() {
        let _ = span.set_parent(opentelemetry::Context::new().with_value(HeadSampled));
    }
}

/// The valid, unsampled context carried in `headers`, if that is what
/// they carry.
#[inline]
pub(super) fn unsampled_parent(headers: &Headers) -> Option<opentelemetry::Context> {
    headers.get(super::TRACEPARENT)?;
    let cx = super::extract(headers)?;
    (!cx.span().span_context().is_sampled()).then_some(cx)
}

/// OpenTelemetry's `TraceIdRatioBased` rule: the lower 64 bits of the
/// trace id, halved, below `ratio` × 2⁶³.
pub(super) fn sampled(ratio: f64, trace: u128) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    ((trace as u64) >> 1) < bound
}

/// A random trace id and span id (non-zero), from a per-thread
/// SplitMix64 seeded by the standard library's random hasher keys.
fn ids() -> (u128, u64) {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new().build_hasher().finish() | 1
        });
    }
    STATE.with(|state| {
        let next = || {
            let mut z = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
            state.set(z);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let trace = (u128::from(next()) << 64 | u128::from(next())).max(1);
        (trace, next().max(1))
    })
}

/// How traces are sampled before the bus builds a span (feature `otel`):
/// see [`set_sampling`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Sampling {
    /// Every span is built, and the SDK's sampler decides on each (the
    /// default, and what a sampler that is not parent-based needs).
    #[default]
    Sdk,
    /// Parent-based: a span whose parent is not sampled is not built. A
    /// message whose `traceparent` says "not sampled" (flags `00`) gets no
    /// receive, process or settle span, and its handler runs in that
    /// unsampled context; a publish made in an unsampled context (the
    /// current span's, e.g. an unsampled HTTP request's, or a handler's)
    /// gets no span and carries that context (flags `00`). Roots are built
    /// and the SDK decides. For an SDK sampler that drops the children of
    /// unsampled parents: `Sampler::ParentBased(..)` with its defaults.
    ParentBased,
    /// [`ParentBased`](Sampling::ParentBased), and the bus also decides its
    /// root publishes (a publish with no trace context at all) itself,
    /// keeping this ratio of them: the others build no span and carry a new
    /// unsampled `traceparent` (a random trace id, flags `00`), so their
    /// consumers stay unsampled too. The same for the runner's process span
    /// of a message with no (valid) `traceparent`, e.g. from a producer
    /// that does not trace: kept, or run in a new unsampled context. The
    /// SDK must keep the roots the bus
    /// sampled: give the tracer provider [`HeadSampler`] (what
    /// [`sample_parent_based`] returns), which is
    /// `ParentBased(TraceIdRatioBased(ratio))` for every other span.
    ParentBasedRatio(f64),
}

/// Sets the bus's [`Sampling`] for the whole process (default
/// [`Sampling::Sdk`]: every span is built). Call it where the tracer
/// provider is built, with the mode that its sampler agrees with: the SDK's
/// sampler cannot be read from the `tracing` layer, so the bus is told.
///
/// With a parent-based sampler the bus then skips the spans of unsampled
/// traces before building them (`tracing-opentelemetry` builds a span,
/// attributes and all, before the SDK's sampler runs): a message of an
/// unsampled trace costs about what it costs with tracing off, plus its
/// `traceparent` header.
///
/// ```
/// # #[cfg(feature = "otel")]
/// # fn main() {
/// // One call sets the bus's gate and gives the SDK the sampler that agrees:
/// // 1 % of new traces, parents followed.
/// let sampler = event_bus::trace::sample_parent_based(0.01);
/// let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
///     .with_sampler(sampler)
///     .build();
/// # let _ = provider;
/// assert_eq!(
///     event_bus::trace::sampling(),
///     event_bus::trace::Sampling::ParentBasedRatio(0.01)
/// );
/// # event_bus::trace::set_sampling(event_bus::trace::Sampling::Sdk);
/// # }
/// # #[cfg(not(feature = "otel"))]
/// # fn main() {}
/// ```
pub fn set_sampling(sampling: Sampling) {
    set(sampling);
}

/// The bus's current [`Sampling`] ([`set_sampling`]).
pub fn sampling() -> Sampling {
    get()
}

/// Sets [`Sampling::ParentBasedRatio`]`(ratio)` and returns the sampler to
/// give the SDK's tracer provider, so that both agree.
pub fn sample_parent_based(ratio: f64) -> HeadSampler {
    set_sampling(Sampling::ParentBasedRatio(ratio));
    HeadSampler::new(ratio)
}

/// The SDK sampler for [`Sampling::ParentBasedRatio`]: OpenTelemetry's
/// `ParentBased(TraceIdRatioBased(ratio))`, except that it keeps a root
/// span (a publish, or the process span of a message without a
/// `traceparent`) which the bus has sampled already (the bus marks its
/// parent context). Without it the SDK would sample those roots again, and
/// keep ratio² of them.
#[derive(Clone, Debug)]
pub struct HeadSampler {
    inner: opentelemetry_sdk::trace::Sampler,
}

impl HeadSampler {
    /// `ParentBased(TraceIdRatioBased(ratio))`, keeping the bus's sampled roots.
    pub fn new(ratio: f64) -> Self {
        use opentelemetry_sdk::trace::Sampler;
        HeadSampler {
            inner: Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))),
        }
    }
}

impl opentelemetry_sdk::trace::ShouldSample for HeadSampler {
    fn should_sample(
        &self,
        parent_context: Option<&opentelemetry::Context>,
        trace_id: opentelemetry::trace::TraceId,
        name: &str,
        span_kind: &opentelemetry::trace::SpanKind,
        attributes: &[opentelemetry::KeyValue],
        links: &[opentelemetry::trace::Link],
    ) -> opentelemetry_sdk::trace::SamplingResult {
        use opentelemetry::trace::TraceContextExt;
        if let Some(cx) = parent_context {
            if cx.get::<HeadSampled>().is_some() && !cx.has_active_span() {
                return opentelemetry_sdk::trace::SamplingResult {
                    decision: opentelemetry_sdk::trace::SamplingDecision::RecordAndSample,
                    attributes: Vec::new(),
                    trace_state: Default::default(),
                };
            }
        }
        self.inner
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}
