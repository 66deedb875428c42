//! With a global OpenTelemetry propagator set by the application, the bus
//! injects and extracts through it (here W3C trace context and baggage: the
//! baggage travels with the message), instead of its own W3C reader and
//! writer. A process of its own: the propagator is global.
#![cfg(feature = "otel")]

use event_bus::{Envelope, EventBus, InMemoryBus};
use futures::StreamExt;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test]
async fn the_applications_propagator_carries_baggage_across_the_bus() {
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    // TRACE: the in-memory bus traces envelopes at that level.
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::TRACE)
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);

    let bus = InMemoryBus::new();
    let mut sub = bus.subscribe("orders.>").await.unwrap();
    let request =
        opentelemetry::Context::current_with_baggage(vec![KeyValue::new("tenant", "acme")]);
    let trace = {
        let _attached = request.attach();
        let span = tracing::info_span!("request");
        let _entered = span.enter();
        bus.publish_envelope(Envelope::new("orders.created", b"{}".to_vec()))
            .await
            .unwrap();
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        span.context().span().span_context().trace_id()
    };
    let message = tokio::time::timeout(std::time::Duration::from_secs(5), sub.next())
        .await
        .expect("the message within 5 s")
        .expect("the subscription is open");
    assert_eq!(
        message.headers.get("baggage"),
        Some("tenant=acme"),
        "the composite propagator wrote the baggage: {:?}",
        message.headers
    );
    let cx = event_bus::trace::extract(&message.headers).expect("a context");
    assert_eq!(cx.span().span_context().trace_id(), trace);
    assert_eq!(
        cx.baggage().get("tenant").map(|v| v.to_string()),
        Some("acme".to_string()),
        "and read it back"
    );
}
