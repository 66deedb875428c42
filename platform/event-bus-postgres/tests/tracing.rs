//! Traces across the bus, as an application exports them: a
//! `tracing-opentelemetry` layer with OpenTelemetry's OTLP exporter
//! (HTTP/protobuf) sending to a receiver inside this test, real nats-server
//! and PostgreSQL. Checks that a handler's process span, in another runner
//! with its own connection, continues the trace of the request span that
//! published its event, directly or through the transactional outbox.

use axum::body::Bytes;
use event_bus::nats::StreamSpec;
use event_bus::runner::{boxed, Event, Handler, Outcome, Runner};
use event_bus::{Envelope, EventBus, NatsBus, StartPosition};
use event_bus_postgres::{Outbox, OutboxRelay};
use event_bus_testkit::nats_server::NatsServer;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use parking_lot::Mutex;
use prost::Message;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
mod common;

/// What the OTLP receiver got, and the provider to flush.
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

/// Installs (once per test binary) the tracing subscriber with the
/// OpenTelemetry layer, exporting over OTLP/HTTP to a receiver on loopback.
fn collector() -> &'static Collector {
    static C: OnceLock<Collector> = OnceLock::new();
    C.get_or_init(|| {
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let sink = spans.clone();
        // The receiver runs on a runtime of its own (tests' runtimes end with them).
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = axum::Router::new().route(
                    "/v1/traces",
                    axum::routing::post(move |body: Bytes| {
                        let sink = sink.clone();
                        async move {
                            let req = ExportTraceServiceRequest::decode(body)
                                .expect("an OTLP/protobuf trace export");
                            let mut sink = sink.lock();
                            for rs in req.resource_spans {
                                for ss in rs.scope_spans {
                                    sink.extend(ss.spans);
                                }
                            }
                            // An empty ExportTraceServiceResponse.
                            (
                                [("content-type", "application/x-protobuf")],
                                Vec::<u8>::new(),
                            )
                        }
                    }),
                );
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        // The blocking HTTP client is built (and exports) off any runtime.
        let provider = std::thread::spawn(move || {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("http://{addr}/v1/traces"))
                .with_timeout(Duration::from_secs(5))
                .with_headers(Default::default())
                .build()
                .expect("an OTLP exporter");
            opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .build()
        })
        .join()
        .unwrap();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("event-bus-tests"));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("no other global subscriber");
        Collector { spans, provider }
    })
}

impl Collector {
    /// Exports every span that has ended, then waits until `find` finds
    /// what it looks for among the spans received.
    async fn wait_for<T>(&self, what: &str, find: impl Fn(&[Span]) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let provider = self.provider.clone();
            tokio::task::spawn_blocking(move || provider.force_flush())
                .await
                .unwrap()
                .expect("the OTLP export succeeds");
            if let Some(found) = find(&self.spans.lock()) {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after 20 s waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// [`wait_for`](Self::wait_for) the spans of `trace` named `names`.
    async fn trace(&self, trace: opentelemetry::trace::TraceId, names: &[&str]) -> Vec<Span> {
        let id = trace.to_bytes();
        self.wait_for(&format!("spans {names:?} of trace {trace}"), |all| {
            let of_trace: Vec<Span> = all.iter().filter(|s| s.trace_id == id).cloned().collect();
            names
                .iter()
                .all(|n| named(&of_trace, n).is_some())
                .then_some(of_trace)
        })
        .await
    }
}

fn named<'a>(spans: &'a [Span], name: &str) -> Option<&'a Span> {
    spans.iter().find(|s| s.name == name)
}

fn attr(span: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

/// An integer attribute (`None` when absent or of another type: numbers
/// must be exported as numbers).
fn int_attr(span: &Span, key: &str) -> Option<i64> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::IntValue(i) => Some(*i),
            _ => None,
        })
}

/// A runner on its own connection whose handler reports the trace id of
/// the span it runs in.
async fn traced_runner(
    server: &NatsServer,
    name: &str,
    pattern: &'static str,
) -> (
    event_bus::runner::RunnerHandle,
    tokio::sync::mpsc::UnboundedReceiver<(String, opentelemetry::trace::TraceId)>,
) {
    let bus: Arc<dyn EventBus> = Arc::new(NatsBus::new(
        async_nats::connect(server.url()).await.unwrap(),
    ));
    traced_runner_on(bus, name, pattern).await
}

/// [`traced_runner`] on any bus.
async fn traced_runner_on(
    bus: Arc<dyn EventBus>,
    name: &str,
    pattern: &'static str,
) -> (
    event_bus::runner::RunnerHandle,
    tokio::sync::mpsc::UnboundedReceiver<(String, opentelemetry::trace::TraceId)>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let handle = Runner::builder(bus, name)
        .handler(Handler::new(
            "record",
            pattern,
            boxed(move |e: Event<'_, serde_json::Value>, _tx: &mut ()| {
                let current = || {
                    tracing::Span::current()
                        .context()
                        .span()
                        .span_context()
                        .trace_id()
                };
                let (subject, tx) = (e.message.subject.to_string(), tx.clone());
                // Reported from the handler's future after a real
                // suspension: it is polled in the process span too.
                Box::pin(async move {
                    tokio::task::yield_now().await;
                    let _ = tx.send((subject, current()));
                    Outcome::Ack
                })
            }),
        ))
        .start(StartPosition::All)
        .build()
        .spawn()
        .await
        .expect("start the runner");
    (handle, rx)
}

async fn nats_with(stream: &str, subjects: &str) -> (NatsServer, NatsBus) {
    let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let bus = server
        .bus(&[StreamSpec::new(stream, [subjects])])
        .await
        .unwrap();
    (server, bus)
}

fn trace_id_of(span: &tracing::Span) -> opentelemetry::trace::TraceId {
    span.context().span().span_context().trace_id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_continues_the_publishers_trace_across_nats() {
    let c = collector();
    let (server, producer) = nats_with("ORDERS", "orders.>").await;
    let (runner, mut seen) = traced_runner(&server, "billing", "orders.>").await;

    let request = tracing::info_span!("POST /orders", otel.kind = "server");
    let trace = trace_id_of(&request);
    async {
        producer
            .publish("orders.created", br#"{"id":1}"#.to_vec())
            .await
            .unwrap();
    }
    .instrument_in(&request)
    .await;
    drop(request);

    let (subject, handler_trace) = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("the handler ran within 10 s")
        .unwrap();
    assert_eq!(subject, "orders.created");
    assert_eq!(
        handler_trace, trace,
        "the handler runs in the request's trace"
    );

    let spans = c
        .trace(
            trace,
            &[
                "POST /orders",
                "publish orders.created",
                "receive orders.>",
                "process orders.>",
                "ack billing-record",
            ],
        )
        .await;
    let request = named(&spans, "POST /orders").unwrap();
    let publish = named(&spans, "publish orders.created").unwrap();
    let process = named(&spans, "process orders.>").unwrap();
    let ack = named(&spans, "ack billing-record").unwrap();
    assert_eq!(
        publish.parent_span_id, request.span_id,
        "publish is a child of the request"
    );
    assert_eq!(publish.kind, SpanKind::Producer as i32);
    assert_eq!(
        process.parent_span_id, publish.span_id,
        "process continues the publish"
    );
    assert_eq!(process.kind, SpanKind::Consumer as i32);
    assert_eq!(ack.parent_span_id, publish.span_id);
    let receive = named(&spans, "receive orders.>").unwrap();
    assert_eq!(
        receive.parent_span_id, publish.span_id,
        "the consumer's receive continues the publish"
    );
    assert_eq!(attr(publish, "messaging.system").as_deref(), Some("nats"));
    assert_eq!(
        attr(publish, "messaging.destination.name").as_deref(),
        Some("orders.created")
    );
    assert_eq!(
        attr(publish, "messaging.message.id").as_deref(),
        Some("ORDERS:1")
    );
    assert_eq!(
        attr(process, "messaging.consumer.group.name").as_deref(),
        Some("billing-record")
    );
    assert_eq!(int_attr(process, "messaging.nats.delivery_count"), Some(1));
    // `{"id":1}`: 8 bytes, as a number on both sides.
    assert_eq!(int_attr(publish, "messaging.message.body.size"), Some(8));
    assert_eq!(int_attr(process, "messaging.message.body.size"), Some(8));
    assert_eq!(
        attr(process, "messaging.operation.type").as_deref(),
        Some("process")
    );
    runner.shutdown().await;
}

/// The same trace across Kafka (feature `kafka`, a tansu broker): the
/// publish span's context travels in the record's headers.
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_continues_the_publishers_trace_across_kafka() {
    let c = collector();
    let server = event_bus_testkit::kafka_server::KafkaServer::start()
        .await
        .unwrap_or_else(|e| panic!("start the Kafka broker: {e}"));
    let producer = server.bus().await;
    let (runner, mut seen) =
        traced_runner_on(Arc::new(server.bus().await), "billing", "orders.>").await;

    let request = tracing::info_span!("POST /orders", otel.kind = "server");
    let trace = trace_id_of(&request);
    async {
        producer
            .publish("orders.created", br#"{"id":1}"#.to_vec())
            .await
            .unwrap();
    }
    .instrument_in(&request)
    .await;
    drop(request);

    let (subject, handler_trace) = tokio::time::timeout(Duration::from_secs(30), seen.recv())
        .await
        .expect("the handler ran within 30 s")
        .unwrap();
    assert_eq!(subject, "orders.created");
    assert_eq!(
        handler_trace, trace,
        "the handler runs in the request's trace"
    );
    let spans = c
        .trace(
            trace,
            &["POST /orders", "publish orders.created", "process orders.>"],
        )
        .await;
    let request = named(&spans, "POST /orders").unwrap();
    let publish = named(&spans, "publish orders.created").unwrap();
    let process = named(&spans, "process orders.>").unwrap();
    assert_eq!(publish.parent_span_id, request.span_id);
    assert_eq!(publish.kind, SpanKind::Producer as i32);
    assert_eq!(process.parent_span_id, publish.span_id);
    assert_eq!(attr(publish, "messaging.system").as_deref(), Some("kafka"));
    assert!(
        attr(publish, "messaging.message.id").is_some_and(|id| id.starts_with("orders/")),
        "the stored position (topic/partition:sequence) is the span's message id"
    );
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_traceparent_starts_a_new_trace() {
    let c = collector();
    let (server, producer) = nats_with("BAD", "bad.>").await;
    let (runner, mut seen) = traced_runner(&server, "tolerant", "bad.>").await;
    // Published outside any span, with a traceparent of its own making.
    producer
        .publish_envelope(
            Envelope::new("bad.one", b"{}".to_vec()).header("traceparent", "00-not-a-trace-01"),
        )
        .await
        .unwrap();
    let (_, trace) = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("the handler ran within 10 s")
        .unwrap();
    assert_ne!(
        trace,
        opentelemetry::trace::TraceId::INVALID,
        "a trace of its own"
    );
    let spans = c.trace(trace, &["process bad.>"]).await;
    assert!(named(&spans, "process bad.>")
        .unwrap()
        .parent_span_id
        .is_empty());
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_request_through_the_outbox_to_the_handler() {
    let c = collector();
    let (_pg, pool) = common::postgres(4).await;
    let outbox = Outbox::new(pool.clone());
    outbox.migrate().await.unwrap();
    let (server, bus) = nats_with("SHOP", "shop.>").await;
    let relay = OutboxRelay::builder(outbox.clone(), Arc::new(bus))
        .build()
        .unwrap()
        .spawn();
    let (runner, mut seen) = traced_runner(&server, "mailer", "shop.>").await;

    let request = tracing::info_span!("POST /checkout", otel.kind = "server");
    let trace = trace_id_of(&request);
    async {
        let mut tx = pool.begin().await.unwrap();
        outbox
            .enqueue(
                &mut tx,
                Envelope::new("shop.order.placed", br#"{"id":7}"#.to_vec()),
            )
            .await
            .unwrap();
        outbox.commit(tx).await.unwrap();
    }
    .instrument_in(&request)
    .await;
    drop(request);

    let (_, handler_trace) = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("the handler ran within 10 s")
        .unwrap();
    assert_eq!(
        handler_trace, trace,
        "the handler runs in the request's trace"
    );
    let spans = c
        .trace(
            trace,
            &[
                "POST /checkout",
                "create shop.order.placed",
                "process shop.>",
            ],
        )
        .await;
    let request = named(&spans, "POST /checkout").unwrap();
    let create = named(&spans, "create shop.order.placed").unwrap();
    let process = named(&spans, "process shop.>").unwrap();
    assert_eq!(create.parent_span_id, request.span_id);
    assert_eq!(create.kind, SpanKind::Producer as i32);
    assert_eq!(
        process.parent_span_id, create.span_id,
        "the message kept its row's context"
    );

    // The relay's send span is a trace of its own, linked to the row's.
    let linked = c
        .wait_for("a send span linked to the row's create span", |all| {
            all.iter()
                .find(|s| {
                    s.name.starts_with("send ")
                        && s.links.iter().any(|l| l.span_id == create.span_id)
                })
                .cloned()
        })
        .await;
    assert_eq!(
        attr(&linked, "messaging.batch.message_count").as_deref(),
        Some("1")
    );
    runner.shutdown().await;
    relay.shutdown().await;
}

/// Runs a future inside a span (entered on each poll).
trait InstrumentIn: std::future::Future + Sized {
    fn instrument_in(self, span: &tracing::Span) -> tracing::instrument::Instrumented<Self> {
        tracing::Instrument::instrument(self, span.clone())
    }
}
impl<F: std::future::Future> InstrumentIn for F {}
