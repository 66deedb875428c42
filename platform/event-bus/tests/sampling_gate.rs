//! The sampling gate (`event_bus::trace::set_sampling`), against a real
//! nats-server: with a parent-based gate, an unsampled trace costs no span
//! of the bus (publish, receive, process, settle), and still travels as an
//! unsampled `traceparent` to the handler and on to what the handler
//! publishes; a sampled trace keeps its spans; with the gate off (the
//! default) every span is built, as before the gate existed.
//!
//! The gate, the subscriber and the tracer provider are process-wide: the
//! tests of this file take turns (one lock).

use event_bus::nats::StreamSpec;
use event_bus::runner::{boxed, Event, Handler, Outcome, Runner, RunnerHandle};
use event_bus::trace::Sampling;
use event_bus::{Envelope, EventBus, NatsBus, StartPosition};
use event_bus_testkit::nats_server::NatsServer;
use futures::StreamExt;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TracerProvider as _,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// Counts the bus's spans as they are created, by name (`publish`,
/// `receive`, `process`, `settle`).
struct Counting;

static COUNTS: Mutex<Option<HashMap<&'static str, usize>>> = Mutex::new(None);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Counting {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _cx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let meta = attrs.metadata();
        if meta.target().starts_with("event_bus::") {
            *COUNTS
                .lock()
                .unwrap()
                .get_or_insert_with(HashMap::new)
                .entry(meta.name())
                .or_default() += 1;
        }
    }
}

fn counts() -> HashMap<&'static str, usize> {
    COUNTS.lock().unwrap().clone().unwrap_or_default()
}

/// Installs, once: a global subscriber with the counting layer and the
/// OpenTelemetry layer, over an SDK whose sampler is `HeadSampler(0.0)`
/// (parents followed, unmarked roots dropped). Returns the lock the tests
/// take turns with.
fn install() -> &'static tokio::sync::Mutex<()> {
    static ONCE: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    ONCE.get_or_init(|| {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_sampler(event_bus::trace::HeadSampler::new(0.0))
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(Counting)
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::set_global_default(subscriber).unwrap();
        tokio::sync::Mutex::new(())
    })
}

/// A remote parent, as an HTTP request's `traceparent` would give it.
fn remote_parent(trace: u128, sampled: bool) -> opentelemetry::Context {
    opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(trace),
        SpanId::from(0x00f0_67aa_0ba9_02b7),
        if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        true,
        Default::default(),
    ))
}

/// What the handler saw: the message's `traceparent`, and the trace id and
/// sampled flag of the context it ran in (the current span's, else
/// OpenTelemetry's current context).
#[derive(Debug)]
struct Seen {
    traceparent: Option<String>,
    trace: TraceId,
    sampled: bool,
}

fn current_context() -> (TraceId, bool) {
    let span = tracing::Span::current();
    let cx = if span.is_disabled() {
        opentelemetry::Context::current()
    } else {
        span.context()
    };
    let sc = cx.span().span_context().clone();
    (sc.trace_id(), sc.is_sampled())
}

/// A NATS server with stream `G` (`g.>`), a bus, a runner on `g.in` whose
/// handler reports what it saw and publishes `g.out` (from its own
/// context), and a subscription on `g.out`.
async fn setup() -> (
    NatsServer,
    NatsBus,
    RunnerHandle,
    tokio::sync::mpsc::UnboundedReceiver<Seen>,
    event_bus::Subscription,
) {
    let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let bus = server.bus(&[StreamSpec::new("G", ["g.>"])]).await.unwrap();
    let out = bus.subscribe("g.out").await.unwrap();
    let consumer: Arc<dyn EventBus> = Arc::new(bus.clone());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let publisher = consumer.clone();
    let runner = Runner::builder(consumer, "gate")
        .handler(Handler::new(
            "h",
            "g.in",
            boxed(move |e: Event<'_, serde_json::Value>, _tx: &mut ()| {
                let traceparent = e.message.headers.get("traceparent").map(str::to_string);
                let (tx, publisher) = (tx.clone(), publisher.clone());
                Box::pin(async move {
                    // After a real suspension: the future is polled in the
                    // handler's context too.
                    tokio::task::yield_now().await;
                    let (trace, sampled) = current_context();
                    publisher.publish("g.out", b"{}".to_vec()).await.unwrap();
                    let _ = tx.send(Seen {
                        traceparent,
                        trace,
                        sampled,
                    });
                    Outcome::Ack
                })
            }),
        ))
        .start(StartPosition::All)
        .build()
        .spawn()
        .await
        .expect("start the runner");
    (server, bus, runner, rx, out)
}

/// Publishes `g.in` in a request span whose remote parent is `parent`,
/// then waits for the handler and for its `g.out`: what the handler saw,
/// and the `traceparent` of `g.out`.
async fn run_once(parent: opentelemetry::Context) -> (Seen, Option<String>) {
    run_once_with(Some(parent)).await
}

/// [`run_once`]; with no parent, `g.in` is published by a raw async-nats
/// client, with no `traceparent` at all (a producer that does not trace).
async fn run_once_with(parent: Option<opentelemetry::Context>) -> (Seen, Option<String>) {
    let (server, bus, runner, mut seen, mut out) = setup().await;
    match parent {
        Some(parent) => {
            let request = tracing::info_span!("POST /things");
            let _ = request.set_parent(parent);
            use tracing::Instrument;
            async {
                bus.publish_envelope(Envelope::new("g.in", b"{}".to_vec()))
                    .await
            }
            .instrument(request)
            .await
            .unwrap();
        }
        None => {
            let client = async_nats::connect(server.url()).await.unwrap();
            async_nats::jetstream::new(client)
                .publish("g.in", b"{}".to_vec().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }
    let seen = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("the handler ran within 10 s")
        .unwrap();
    let followed = tokio::time::timeout(Duration::from_secs(10), out.next())
        .await
        .expect("the handler's publish arrived within 10 s")
        .unwrap();
    runner.shutdown().await;
    let tp = followed.headers.get("traceparent").map(str::to_string);
    (seen, tp)
}

fn flags_and_trace(traceparent: &str) -> (&str, &str) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent:?}");
    (parts[3], parts[1])
}

const TRACE: u128 = 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736;

/// Gate on, unsampled parent: the bus opens no span for the publish, nor
/// for the receive, process and ack of that message; the handler still
/// sees the unsampled `traceparent` (same trace id, flags `00`), runs in
/// that unsampled context, and what it publishes carries it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_gate_an_unsampled_trace_costs_no_span_and_stays_unsampled() {
    let _turn = install().lock().await;
    event_bus::trace::set_sampling(Sampling::ParentBased);
    *COUNTS.lock().unwrap() = None;
    let (seen, followed) = run_once(remote_parent(TRACE, false)).await;
    let counts = counts();
    event_bus::trace::set_sampling(Sampling::Sdk);

    let tp = seen.traceparent.expect("the message carries a traceparent");
    assert_eq!(flags_and_trace(&tp), ("00", &*format!("{TRACE:032x}")));
    assert_eq!(seen.trace, TraceId::from(TRACE), "the handler's context");
    assert!(!seen.sampled);
    let followed = followed.expect("the handler's publish carries a traceparent");
    assert_eq!(
        flags_and_trace(&followed),
        ("00", &*format!("{TRACE:032x}"))
    );
    for name in ["publish", "receive", "process", "settle"] {
        assert_eq!(counts.get(name), None, "{name} spans: {counts:?}");
    }
}

/// Gate on, sampled parent: publish → process keep their spans, in one
/// trace (the handler runs in the request's trace; its message carries the
/// publish span's context, flags `01`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_gate_a_sampled_trace_keeps_its_spans() {
    let _turn = install().lock().await;
    event_bus::trace::set_sampling(Sampling::ParentBased);
    *COUNTS.lock().unwrap() = None;
    let (seen, followed) = run_once(remote_parent(TRACE, true)).await;
    let counts = counts();
    event_bus::trace::set_sampling(Sampling::Sdk);

    let tp = seen.traceparent.expect("the message carries a traceparent");
    assert_eq!(flags_and_trace(&tp), ("01", &*format!("{TRACE:032x}")));
    assert_eq!(seen.trace, TraceId::from(TRACE));
    assert!(seen.sampled, "the handler runs in a sampled process span");
    let followed = followed.expect("the handler's publish carries a traceparent");
    assert_eq!(
        flags_and_trace(&followed),
        ("01", &*format!("{TRACE:032x}"))
    );
    // g.in and g.out published, g.in processed (and received, acked).
    assert_eq!(counts.get("publish"), Some(&2), "{counts:?}");
    assert_eq!(counts.get("process"), Some(&1), "{counts:?}");
    assert!(counts.contains_key("settle"), "{counts:?}");
}

/// Gate off (the default): an unsampled trace still builds every span (the
/// SDK drops them), and carries `00` on: what the bus did before the gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_gate_every_span_is_built() {
    let _turn = install().lock().await;
    assert_eq!(event_bus::trace::sampling(), Sampling::Sdk);
    *COUNTS.lock().unwrap() = None;
    let (seen, followed) = run_once(remote_parent(TRACE, false)).await;
    let counts = counts();

    let tp = seen.traceparent.expect("the message carries a traceparent");
    assert_eq!(flags_and_trace(&tp), ("00", &*format!("{TRACE:032x}")));
    assert_eq!(seen.trace, TraceId::from(TRACE));
    assert!(!seen.sampled);
    let followed = followed.expect("the handler's publish carries a traceparent");
    assert_eq!(
        flags_and_trace(&followed),
        ("00", &*format!("{TRACE:032x}"))
    );
    assert_eq!(counts.get("publish"), Some(&2), "{counts:?}");
    assert_eq!(counts.get("process"), Some(&1), "{counts:?}");
    assert!(counts.contains_key("receive"), "{counts:?}");
    assert!(counts.contains_key("settle"), "{counts:?}");
}

/// Root publishes (no context at all) under `ParentBasedRatio`: at ratio
/// 0 no span is built and the message carries a new unsampled trace
/// (random id, flags `00`); at ratio 1 the span is built and the SDK keeps
/// it although its own root ratio (`HeadSampler(0.0)`) would not: the bus
/// marks the roots it sampled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_publishes_are_decided_by_the_bus_ratio() {
    let _turn = install().lock().await;
    let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let bus = server.bus(&[StreamSpec::new("R", ["r.>"])]).await.unwrap();
    let mut sub = bus.subscribe("r.>").await.unwrap();
    let mut traceparents = Vec::new();
    for ratio in [0.0, 1.0] {
        event_bus::trace::set_sampling(Sampling::ParentBasedRatio(ratio));
        *COUNTS.lock().unwrap() = None;
        for _ in 0..2 {
            bus.publish("r.x", b"{}".to_vec()).await.unwrap();
            let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .unwrap()
                .unwrap();
            traceparents.push(m.headers.get("traceparent").map(str::to_string));
        }
        let publishes = counts().get("publish").copied();
        assert_eq!(
            publishes,
            if ratio == 0.0 { None } else { Some(2) },
            "ratio {ratio}"
        );
    }
    event_bus::trace::set_sampling(Sampling::Sdk);
    let tps: Vec<String> = traceparents.into_iter().map(Option::unwrap).collect();
    let parsed: Vec<(&str, &str)> = tps.iter().map(|t| flags_and_trace(t)).collect();
    assert_eq!(parsed[0].0, "00");
    assert_eq!(parsed[1].0, "00");
    assert_ne!(parsed[0].1, parsed[1].1, "a new trace per root publish");
    assert_ne!(parsed[0].1, "0".repeat(32));
    assert_eq!(
        parsed[2].0, "01",
        "the bus's sampled root is kept by the SDK"
    );
    assert_eq!(parsed[3].0, "01");
}

/// A message with no `traceparent` (its producer does not trace) under
/// `ParentBasedRatio`: at ratio 0 the runner builds no process span and
/// runs the handler in a new unsampled context, which the handler's
/// publish carries on (flags `00`, that trace id); at ratio 1 the process
/// span is built and the SDK keeps it (the bus's mark), although its own
/// root ratio (`HeadSampler(0.0)`) would not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_a_traceparent_is_a_root_the_bus_decides() {
    let _turn = install().lock().await;
    event_bus::trace::set_sampling(Sampling::ParentBasedRatio(0.0));
    *COUNTS.lock().unwrap() = None;
    let (seen, followed) = run_once_with(None).await;
    let spans = counts();
    event_bus::trace::set_sampling(Sampling::Sdk);
    assert_eq!(seen.traceparent, None);
    assert_ne!(seen.trace, TraceId::INVALID, "a new (unsampled) trace");
    assert!(!seen.sampled);
    let followed = followed.expect("the handler's publish carries a traceparent");
    assert_eq!(flags_and_trace(&followed), ("00", &*seen.trace.to_string()));
    assert_eq!(spans.get("process"), None, "{spans:?}");
    assert_eq!(spans.get("publish"), None, "{spans:?}");

    event_bus::trace::set_sampling(Sampling::ParentBasedRatio(1.0));
    *COUNTS.lock().unwrap() = None;
    let (seen, followed) = run_once_with(None).await;
    let spans = counts();
    event_bus::trace::set_sampling(Sampling::Sdk);
    assert!(seen.sampled, "the bus's sampled root process span is kept");
    let followed = followed.expect("the handler's publish carries a traceparent");
    assert_eq!(flags_and_trace(&followed), ("01", &*seen.trace.to_string()));
    assert_eq!(spans.get("process"), Some(&1), "{spans:?}");
}
