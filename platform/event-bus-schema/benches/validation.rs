//! What validation costs, side by side with its baseline in one run.
//!
//! `cargo bench -p event-bus-schema --bench validation`
//!
//! 1. Per event, for a typical event (15 fields, about 500 bytes of JSON):
//!    parsing the payload (what any consumer pays to decode it), checking a
//!    parsed value against its compiled schema, and the whole
//!    `Registry::validate` (look-up, parse, check). Nanoseconds per event,
//!    best of several rounds of 200,000.
//! 2. NatsBus publish (64 concurrent publishers sharing one bus, each
//!    awaiting every publish, as in `nats_compare`) through a
//!    `ValidatingBus` (validation, CloudEvents headers, a UUIDv7 id) against
//!    the same NatsBus without it, on a real nats-server the bench starts;
//!    median of alternating runs (`SCHEMA_BENCH_MESSAGES`, default 20,000;
//!    `SCHEMA_BENCH_REPS`, default 5).

use event_bus::config::StreamSpec;
use event_bus::{EventBus, NatsBus};
use event_bus_schema::{Registry, TypeSettings, ValidatingBus};
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
    let version = registry.latest("shop.order.placed").unwrap();
    let parsed: Value = serde_json::from_slice(&payload).unwrap();
    assert!(version.validate(&parsed).is_ok());
    let n = 200_000;
    let parse = per_call(n, || {
        black_box(serde_json::from_slice::<Value>(black_box(&payload)).unwrap());
    });
    let check = per_call(n, || {
        black_box(version.validate(black_box(&parsed)).is_ok());
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
    println!("  check the parsed value against the compiled schema      {check:>8.0}");
    println!("  Registry::validate (look-up + parse + check)            {whole:>8.0}");

    let messages = env_usize("SCHEMA_BENCH_MESSAGES", 20_000);
    let reps = env_usize("SCHEMA_BENCH_REPS", 5);
    let server = NatsServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let nats = NatsBus::new(async_nats::connect(server.url()).await.unwrap());
    nats.ensure_streams(&[StreamSpec::new("SHOP", ["shop.>"])])
        .await
        .unwrap();
    let raw: Arc<dyn EventBus> = Arc::new(nats);
    let validating_registry = registry.clone();
    let validating: Arc<dyn EventBus> = Arc::new(ValidatingBus::new(raw.clone(), registry));
    // The same messages as the ValidatingBus sends (an id and the seven
    // CloudEvents headers), published directly: what the headers cost.
    let with_headers: Arc<dyn EventBus> = Arc::new(HeadersOnly(raw.clone()));
    let no_headers: Arc<dyn EventBus> =
        Arc::new(ValidatingBus::new(raw.clone(), validating_registry).cloudevents_headers(false));
    let sides = [
        ("NatsBus", &raw),
        (
            "NatsBus, CloudEvents headers + id, no validation",
            &with_headers,
        ),
        ("ValidatingBus over NatsBus", &validating),
        ("ValidatingBus, cloudevents_headers(false)", &no_headers),
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); sides.len()];
    for rep in 0..reps {
        let mut order: Vec<usize> = (0..sides.len()).collect();
        if rep % 2 == 1 {
            order.reverse();
        }
        for i in order {
            rates[i].push(publish_rate(sides[i].1, &payload, messages).await);
        }
    }
    println!("NatsBus publish, 64 publishers, {messages} messages, median of {reps} (msgs/s, ratio to NatsBus)");
    let base = median(rates[0].clone());
    for (i, (name, _)) in sides.iter().enumerate() {
        let m = median(rates[i].clone());
        println!("  {name:<50} {m:>10.0}   {:.2}x", m / base);
    }
}

/// Publishes through `publish_envelope` with what a `ValidatingBus` adds
/// (a UUIDv7 id and the CloudEvents headers), without validating.
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
                "shop.order.placed",
                "/event-bus",
                "urn:event-bus:schema:shop.order.placed:v1",
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

async fn publish_rate(bus: &Arc<dyn EventBus>, payload: &[u8], n: usize) -> f64 {
    let publishers = 64;
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
    (n / publishers * publishers) as f64 / started.elapsed().as_secs_f64()
}
