//! What validation costs, side by side with its baseline in one run.
//!
//! `cargo bench -p event-bus-schema --bench validation`
//!
//! 1. Per event, for a typical event (15 fields, about 500 bytes of JSON):
//!    parsing the payload (what any consumer pays to decode it), checking a
//!    parsed value (`Registry::validate` of a `serde_json::Value`: look-up
//!    and check against the compiled schema), and the whole
//!    `Registry::validate` (look-up, parse, check). Nanoseconds per event,
//!    best of several rounds of 200,000.
//! 2. NatsBus publish (64 concurrent publishers sharing one bus, each
//!    awaiting every publish, as in `nats_compare`) through a
//!    `ValidatingBus` (validation, CloudEvents headers, a UUIDv7 id) against
//!    the same NatsBus without it, and against the NatsBus sending the same
//!    id and headers without validating (what validation alone costs); raw
//!    async-nats with and without that id and those headers shows what
//!    NATS itself charges for them. On a real nats-server the bench starts;
//!    median of alternating runs (`SCHEMA_BENCH_MESSAGES`, default 50,000;
//!    `SCHEMA_BENCH_REPS`, default 7), with the CPU per message of this
//!    process and of nats-server.

use event_bus::nats::StreamSpec;
use event_bus::EventBus;
use event_bus_schema::{Registry, TypeSettings, ValidatingBus};
use event_bus_testkit::cpu::cpu_time;
use event_bus_testkit::nats_server::NatsServer;
use serde_json::{json, Value};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "order_id": {"type": "string", "minLength": 1},
            "customer_id": {"type": "string"},
            "email": {"type": "string", "format": "email"},
            "status": {"enum": ["placed", "paid", "shipped", "cancelled"]},
            "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
            "total_cents": {"type": "integer", "minimum": 0},
            "items": {"type": "integer", "minimum": 1},
            "placed_at": {"type": "string"},
            "channel": {"type": "string"},
            "coupon": {"type": ["string", "null"]},
            "gift": {"type": "boolean"},
            "notes": {"type": "string", "maxLength": 500},
            "address": {
                "type": "object",
                "properties": {
                    "street": {"type": "string"},
                    "city": {"type": "string"},
                    "zip": {"type": "string"},
                    "country": {"type": "string", "minLength": 2, "maxLength": 2}
                },
                "required": ["street", "city", "zip", "country"]
            },
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 10},
            "version": {"type": "integer"}
        },
        "required": ["order_id", "customer_id", "status", "currency", "total_cents", "items", "placed_at"]
    })
}

fn event() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "order_id": "ord-7f3a9c2e-1b4d-4e8f-9a6b-3c5d7e9f1a2b",
        "customer_id": "cus-4411-2288",
        "email": "jane.doe@example.com",
        "status": "placed",
        "currency": "EUR",
        "total_cents": 129_990,
        "items": 3,
        "placed_at": "2026-11-30T10:15:00Z",
        "channel": "web",
        "coupon": null,
        "gift": false,
        "notes": "Please leave the parcel with the neighbour if nobody is home.",
        "address": {"street": "12 Rue de la Paix", "city": "Paris", "zip": "75002", "country": "FR"},
        "tags": ["priority", "newsletter"],
        "version": 1
    }))
    .unwrap()
}

/// Nanoseconds per call of `f`, best of 5 rounds of `n`.
fn per_call(n: usize, mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let payload = event();
    let registry = Registry::memory();
    registry
        .define("shop.order.placed", TypeSettings::new("shop.orders.placed"))
        .await
        .unwrap();
    registry
        .register("shop.order.placed", schema())
        .await
        .unwrap();
    let parsed: Value = serde_json::from_slice(&payload).unwrap();
    assert!(registry
        .validate("shop.order.placed", None, &parsed)
        .is_ok());
    let n = 200_000;
    let parse = per_call(n, || {
        black_box(serde_json::from_slice::<Value>(black_box(&payload)).unwrap());
    });
    let check = per_call(n, || {
        black_box(
            registry
                .validate("shop.order.placed", None, black_box(&parsed))
                .is_ok(),
        );
    });
    let whole = per_call(n, || {
        black_box(
            registry
                .validate("shop.order.placed", None, black_box(&payload))
                .is_ok(),
        );
    });
    println!("validation per event: {} bytes of JSON, 15 top-level fields (ns/event, best of 5 rounds of {n})", payload.len());
    println!("  parse the payload into a serde_json::Value (baseline)  {parse:>8.0}");
    println!("  Registry::validate on a parsed serde_json::Value        {check:>8.0}");
    println!("  Registry::validate (look-up + parse + check)            {whole:>8.0}");

    let messages = env_usize("SCHEMA_BENCH_MESSAGES", 50_000);
    let reps = env_usize("SCHEMA_BENCH_REPS", 7);
    let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let server_pid = server.pid().map(|p| p.to_string()).unwrap_or_default();
    let nats = server
        .bus(&[StreamSpec::new("SHOP", ["shop.>"])])
        .await
        .unwrap();
    let raw_js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let bus: Arc<dyn EventBus> = Arc::new(nats);
    let sides: Vec<(&str, Arc<dyn EventBus>)> = vec![
        ("NatsBus", bus.clone()),
        (
            "NatsBus, the same id + CloudEvents headers",
            Arc::new(HeadersOnly(bus.clone())),
        ),
        (
            "ValidatingBus over NatsBus",
            Arc::new(ValidatingBus::new(bus.clone(), registry.clone())),
        ),
        (
            "ValidatingBus, cloudevents_headers(false)",
            Arc::new(ValidatingBus::new(bus.clone(), registry.clone()).cloudevents_headers(false)),
        ),
        (
            "raw async-nats",
            Arc::new(RawJetStream {
                js: raw_js.clone(),
                headers: false,
            }),
        ),
        (
            "raw async-nats, the same id + headers",
            Arc::new(RawJetStream {
                js: raw_js,
                headers: true,
            }),
        ),
    ];
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); sides.len()];
    for rep in 0..reps {
        let mut order: Vec<usize> = (0..sides.len()).collect();
        if rep % 2 == 1 {
            order.reverse();
        }
        for i in order {
            runs[i].push(publish_run(&sides[i].1, &payload, messages, &server_pid).await);
        }
    }
    println!(
        "NatsBus publish, 64 publishers each awaiting its ack, {messages} messages of {} bytes, median of {reps} alternated runs",
        payload.len()
    );
    println!(
        "  {:<44} {:>9} {:>8} {:>14}",
        "side", "msg/s", "ratio", "CPU us/msg c/s"
    );
    let medians: Vec<Run> = runs.into_iter().map(Run::median).collect();
    for (i, (name, _)) in sides.iter().enumerate() {
        let m = medians[i];
        println!(
            "  {name:<44} {:>9.0} {:>7.2}x {:>6.1}/{:<6.1}",
            m.rate,
            m.rate / medians[0].rate,
            m.client_us,
            m.server_us
        );
    }
    println!(
        "validation alone (ValidatingBus / the same messages unvalidated): {:.2}x; the headers on raw async-nats: {:.2}x",
        medians[2].rate / medians[1].rate,
        medians[5].rate / medians[4].rate
    );
}

/// Publishes what a `ValidatingBus` sends (a UUIDv7 id and the seven
/// CloudEvents headers) through `publish_envelope`, without validating.
struct HeadersOnly(Arc<dyn EventBus>);

#[async_trait::async_trait]
impl EventBus for HeadersOnly {
    fn publish<'a>(&'a self, subject: &'a str, payload: Vec<u8>) -> event_bus::PublishFuture<'a> {
        event_bus::PublishFuture::new(async move {
            let id = uuid::Uuid::now_v7().to_string();
            let mut env = event_bus::Envelope::new(subject, payload)
                .id(event_bus::MessageId::new(id.as_str()));
            event_bus_schema::cloudevents::set_binary(
                &mut env.headers,
                &id,
                TYPE,
                "/event-bus",
                DATASCHEMA,
            );
            self.0.publish_envelope(env).await.map(|_| ())
        })
    }
    async fn subscribe(
        &self,
        pattern: &str,
    ) -> Result<event_bus::Subscription, event_bus::BusError> {
        self.0.subscribe(pattern).await
    }
}

const TYPE: &str = "shop.order.placed";
const DATASCHEMA: &str = "urn:event-bus:schema:shop.order.placed:v1";

/// Raw async-nats JetStream publishing (awaiting each ack), with or without
/// the id and headers a `ValidatingBus` adds: what NATS charges for them.
struct RawJetStream {
    js: async_nats::jetstream::Context,
    headers: bool,
}

#[async_trait::async_trait]
impl EventBus for RawJetStream {
    fn publish<'a>(&'a self, subject: &'a str, payload: Vec<u8>) -> event_bus::PublishFuture<'a> {
        event_bus::PublishFuture::new(async move {
            let sent = if self.headers {
                let id = uuid::Uuid::now_v7().to_string();
                let now =
                    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
                let mut h = async_nats::HeaderMap::new();
                h.insert("Nats-Msg-Id", id.as_str());
                for (name, value) in [
                    ("ce-specversion", "1.0"),
                    ("ce-id", id.as_str()),
                    ("ce-type", TYPE),
                    ("ce-source", "/event-bus"),
                    ("ce-time", now.as_str()),
                    ("ce-datacontenttype", "application/json"),
                    ("ce-dataschema", DATASCHEMA),
                ] {
                    h.insert(name, value);
                }
                self.js
                    .publish_with_headers(subject.to_string(), h, payload.into())
                    .await
            } else {
                self.js.publish(subject.to_string(), payload.into()).await
            };
            let ack = sent.map_err(|e| {
                event_bus::BusError::new(event_bus::ErrorKind::Backend, e.to_string())
            })?;
            ack.await
                .map(|_| ())
                .map_err(|e| event_bus::BusError::new(event_bus::ErrorKind::Backend, e.to_string()))
        })
    }
    async fn subscribe(
        &self,
        _pattern: &str,
    ) -> Result<event_bus::Subscription, event_bus::BusError> {
        Err(event_bus::BusError::new(
            event_bus::ErrorKind::Unsupported,
            "publish only",
        ))
    }
}

/// One timed run: throughput and CPU per message of this process and of
/// nats-server.
#[derive(Clone, Copy)]
struct Run {
    rate: f64,
    client_us: f64,
    server_us: f64,
}

impl Run {
    /// Each figure's median on its own.
    fn median(runs: Vec<Run>) -> Run {
        let m = |f: fn(&Run) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        Run {
            rate: m(|r| r.rate),
            client_us: m(|r| r.client_us),
            server_us: m(|r| r.server_us),
        }
    }
}

async fn publish_run(bus: &Arc<dyn EventBus>, payload: &[u8], n: usize, server_pid: &str) -> Run {
    let publishers = 64;
    let sent = n / publishers * publishers;
    let (client, server) = (cpu_time("self"), cpu_time(server_pid));
    let started = Instant::now();
    let tasks: Vec<_> = (0..publishers)
        .map(|_| {
            let bus = bus.clone();
            let payload = payload.to_vec();
            tokio::spawn(async move {
                for _ in 0..n / publishers {
                    bus.publish("shop.orders.placed", payload.clone())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let wall = started.elapsed();
    let per_msg = |d: std::time::Duration| d.as_secs_f64() * 1e6 / sent as f64;
    Run {
        rate: sent as f64 / wall.as_secs_f64(),
        client_us: per_msg(cpu_time("self").saturating_sub(client)),
        server_us: per_msg(cpu_time(server_pid).saturating_sub(server)),
    }
}
