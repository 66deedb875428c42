//! What observability costs: the same workloads with the Prometheus recorder
//! installed and an OpenTelemetry `tracing` layer on, against the same build
//! with neither, side by side in one run.
//!
//! `cargo bench -p event-bus-http --bench observability_overhead`
//!
//! The bench runs each measurement in a child process of its own (a
//! recorder and a global subscriber cannot be uninstalled), alternating
//! "off" and "on" and which goes first; each row is the median rate of each
//! side and their ratio (on / off, higher is better).
//!
//! * off: no recorder, no `tracing` subscriber (the metrics facade and the
//!   spans are no-ops);
//! * on: `event_bus_http::install_prometheus()` and a registry with a
//!   `LevelFilter::INFO` and `tracing-opentelemetry` layer over an SDK
//!   tracer provider, sampling every trace (`AlwaysOn`), batch span
//!   processor, an exporter that drops the spans (so the figure is the
//!   bus's and the SDK's cost, not a network's). `/metrics` is rendered once
//!   per run, as a scrape would.
//!
//! Workloads (a real nats-server the child starts):
//!
//! 1. `nats publish`: 64 concurrent publishers sharing one `Arc<dyn
//!    EventBus>`, each awaiting every publish (INFO `publish` span per message,
//!    trace context injected into its headers);
//! 2. `nats runner`: a runner with an async handler draining a stored
//!    backlog (INFO `process` span per event, DEBUG `receive`/`ack` filtered
//!    out by the level);
//! 3. `memory 1:1`: one publisher, one subscriber, through `dyn EventBus`
//!    (in-memory spans are TRACE: filtered out).
//!
//! `OBS_BENCH_SIDES=off,on,off-tp,...` picks the sides (the first is the
//! baseline): `metrics` (the recorder alone), `traces` (the layer alone),
//! `on-lean` (the layer without code locations, thread names and busy/idle
//! times), `on-1pct` (a parent-based sampler keeping 1 % of new traces,
//! with the bus's sampling gate: `event_bus::trace::sample_parent_based(0.01)`,
//! spans of unsampled traces not built), `on-1pct-sdk` (the same sampler
//! without the gate: every span built, the SDK decides),
//! `on-nopub` (publish spans filtered out), and `off-tp`: nothing
//! installed, but every message published with a `traceparent` header, as
//! a traced publish sends it: what NATS charges for propagation alone.
//!
//! Environment: `OBS_BENCH_MESSAGES` (NATS messages per run, default
//! 20 000; the in-memory case uses 50x), `OBS_BENCH_REPS` (runs per side,
//! default 5).

use event_bus::nats::StreamSpec;
use event_bus::runner::{boxed, Event, Handler, Outcome, Runner};
use event_bus::{EventBus, InMemoryBus, NatsBus, StartPosition};
use event_bus_testkit::nats_server::NatsServer;
use futures::StreamExt;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORKLOADS: &[&str] = &["nats publish", "nats runner", "memory 1:1"];

/// Side `off-tp`: every message carries this header (as a traced publish's).
static TRACEPARENT: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// `subject`'s message, with a `traceparent` header on side `off-tp`.
fn envelope(subject: &str, payload: Vec<u8>) -> event_bus::Envelope {
    let env = event_bus::Envelope::new(subject, payload);
    match TRACEPARENT.get() {
        Some(tp) => env.header("traceparent", *tp),
        None => env,
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if let (Ok(workload), Ok(side)) = (
        std::env::var("OBS_BENCH_WORKLOAD"),
        std::env::var("OBS_BENCH_SIDE"),
    ) {
        let rate = child(&workload, &side);
        println!("RATE {rate}");
        return;
    }
    let reps = env_usize("OBS_BENCH_REPS", 5);
    let sides: Vec<String> = std::env::var("OBS_BENCH_SIDES")
        .unwrap_or_else(|_| "off,on".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let me = std::env::current_exe().unwrap();
    print!("{:<14}", "workload");
    for side in &sides {
        print!(" {side:>12}");
    }
    for side in &sides[1..] {
        print!(" {:>10}", format!("{side}/{}", sides[0]));
    }
    println!("   (msgs/s, median of {reps}; on = Prometheus recorder + OpenTelemetry layer)");
    for workload in WORKLOADS {
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); sides.len()];
        for rep in 0..reps {
            // Alternate which side goes first.
            let mut order: Vec<usize> = (0..sides.len()).collect();
            if rep % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let side = &sides[i];
                let out = Command::new(&me)
                    .env("OBS_BENCH_WORKLOAD", workload)
                    .env("OBS_BENCH_SIDE", side)
                    .output()
                    .expect("run the bench's child");
                let stdout = String::from_utf8_lossy(&out.stdout);
                let rate: f64 = stdout
                    .lines()
                    .find_map(|l| l.strip_prefix("RATE "))
                    .and_then(|r| r.trim().parse().ok())
                    .unwrap_or_else(|| {
                        panic!(
                            "child {workload}/{side} failed: {stdout}\n{}",
                            String::from_utf8_lossy(&out.stderr)
                        )
                    });
                rates[i].push(rate);
            }
        }
        let medians: Vec<f64> = rates.into_iter().map(median).collect();
        print!("{workload:<14}");
        for m in &medians {
            print!(" {m:>12.0}");
        }
        for m in &medians[1..] {
            print!(" {:>9.2}x", m / medians[0]);
        }
        println!();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// One measurement in this (child) process: messages per second.
fn child(workload: &str, side: &str) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        if side == "off-tp" {
            let _ = TRACEPARENT.set("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        }
        let (prometheus, provider) = install(side);
        let n = env_usize("OBS_BENCH_MESSAGES", 20_000);
        let rate = match workload {
            "nats publish" => nats_publish(n).await,
            "nats runner" => nats_runner(n).await,
            "memory 1:1" => memory_one_to_one(n * 50).await,
            other => panic!("unknown workload {other:?}"),
        };
        if let Some(p) = prometheus {
            assert!(
                p.render().contains("messaging_client"),
                "metrics were recorded"
            );
        }
        if let Some(p) = provider {
            let _ = p.shutdown();
        }
        rate
    })
}

/// Drops every span (the SDK's processing is measured, not an export).
#[derive(Debug)]
struct Discard;

impl opentelemetry_sdk::trace::SpanExporter for Discard {
    async fn export(
        &self,
        _batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

/// Installs what `side` says: `off` nothing, `on` both, `metrics` or
/// `traces` one of them (`OBS_BENCH_SIDES=off,metrics,traces,on` shows each's share).
fn install(
    side: &str,
) -> (
    Option<metrics_exporter_prometheus::PrometheusHandle>,
    Option<opentelemetry_sdk::trace::SdkTracerProvider>,
) {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;
    // `-lean`: the layer without code locations, thread names and busy/idle
    // times; `-1pct`: a parent-based sampler keeping 1 % of new traces.
    // `-nopub`: publish spans filtered out (`event_bus::publish=warn`).
    let lean = side.ends_with("-lean");
    let sdk_only = side.ends_with("-1pct-sdk");
    let one_percent = side.ends_with("-1pct") || sdk_only;
    let no_publish_spans = side.ends_with("-nopub");
    let side = side
        .trim_end_matches("-sdk")
        .trim_end_matches("-lean")
        .trim_end_matches("-1pct")
        .trim_end_matches("-nopub");
    let prometheus =
        matches!(side, "on" | "metrics").then(|| event_bus_http::install_prometheus().unwrap());
    if !matches!(side, "on" | "traces") {
        return (prometheus, None);
    }
    use opentelemetry_sdk::trace::Sampler;
    let builder = opentelemetry_sdk::trace::SdkTracerProvider::builder();
    let builder = if one_percent && !sdk_only {
        // The bus's gate and the SDK's sampler, agreeing (one call).
        builder.with_sampler(event_bus::trace::sample_parent_based(0.01))
    } else if one_percent {
        builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            0.01,
        ))))
    } else {
        builder.with_sampler(Sampler::AlwaysOn)
    };
    let provider = builder.with_batch_exporter(Discard).build();
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target(
            "event_bus::publish",
            if no_publish_spans {
                tracing::Level::WARN
            } else {
                tracing::Level::INFO
            },
        );
    let subscriber = tracing_subscriber::registry().with(filter).with(
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("bench"))
            .with_location(!lean)
            .with_threads(!lean)
            .with_tracked_inactivity(!lean),
    );
    tracing::subscriber::set_global_default(subscriber).unwrap();
    (prometheus, Some(provider))
}

async fn nats(stream: &str, subjects: &str) -> (NatsServer, NatsBus) {
    let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let bus = server
        .bus(&[StreamSpec::new(stream, [subjects])])
        .await
        .unwrap();
    (server, bus)
}

async fn nats_publish(n: usize) -> f64 {
    let (_server, bus) = nats("B", "b.>").await;
    let bus: Arc<dyn EventBus> = Arc::new(bus);
    let publishers = 64;
    let started = Instant::now();
    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for _ in 0..n / publishers {
                    if TRACEPARENT.get().is_some() {
                        bus.publish_envelope(envelope("b.event", vec![7u8; 128]))
                            .await
                            .unwrap();
                    } else {
                        bus.publish("b.event", vec![7u8; 128]).await.unwrap();
                    }
                }
                p
            })
        })
        .collect();
    futures::future::join_all(tasks).await;
    (n / publishers * publishers) as f64 / started.elapsed().as_secs_f64()
}

async fn nats_runner(n: usize) -> f64 {
    let (_server, bus) = nats("R", "r.>").await;
    let bus: Arc<dyn EventBus> = Arc::new(bus);
    let batch: Vec<_> = (0..n)
        .map(|i| envelope("r.event", format!("{{\"id\":{i}}}").into_bytes()))
        .collect();
    for r in bus.publish_batch(batch).await {
        r.unwrap();
    }
    let started = Instant::now();
    let handle = Runner::builder(bus, "bench")
        .concurrency(64)
        .handler(Handler::new(
            "h",
            "r.>",
            boxed(|_e: Event<'_, serde_json::Value>, _tx: &mut ()| {
                Box::pin(async { Outcome::Ack })
            }),
        ))
        .start(StartPosition::All)
        .build()
        .spawn()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while handle.report().processed < n as u64 {
        assert!(
            Instant::now() < deadline,
            "the runner did not finish in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    handle.shutdown().await;
    rate
}

async fn memory_one_to_one(n: usize) -> f64 {
    let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
    let mut sub = bus.subscribe("m.>").await.unwrap();
    let consumer = tokio::spawn(async move {
        for _ in 0..n {
            sub.next().await.unwrap();
        }
    });
    let started = Instant::now();
    for _ in 0..n {
        bus.publish("m.event", vec![1u8; 16]).await.unwrap();
    }
    consumer.await.unwrap();
    n as f64 / started.elapsed().as_secs_f64()
}
