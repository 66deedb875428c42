//! A durable consumer with ack through the bus, side by side with a raw
//! async-nats durable pull consumer with ack, on the same real nats-server
//! and the same backlog, in one run.
//!
//! `cargo bench -p event-bus-testkit --bench nats_consumer_compare`
//!
//! Each run fills a fresh stream with N 128-byte messages, then measures the
//! time to receive and acknowledge all N. Both sides check what they
//! receive (each stream sequence 1..=N once, the payload intact) and, after
//! the clock stops, that the server holds no message pending or unacked for
//! their consumer: a run with lost or broken acks fails instead of printing
//! a figure. Figures are medians of runs in which bus and raw alternate. `NATS_BENCH_MESSAGES` (default 50 000),
//! `NATS_BENCH_REPS` (default 5).

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy};
use bytes::Bytes;
use event_bus::{ConsumerConfig, EventBus, EventBusExt, NatsBus, StartPosition};
use event_bus_testkit::nats_server::NatsServer;
use event_bus_testkit::wait;
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

async fn fill(js: &jetstream::Context, token: &str, n: usize) -> Res<()> {
    js.create_stream(jetstream::stream::Config {
        name: format!("BUS_{}", token.to_ascii_uppercase()),
        subjects: vec![token.to_string(), format!("{token}.>")],
        ..Default::default()
    })
    .await?;
    let body = Bytes::from(vec![0xAB; 128]);
    let subject = format!("{token}.job");
    let mut pending = Vec::with_capacity(512);
    for _ in 0..n {
        pending.push(js.publish(subject.clone(), body.clone()).await?);
        if pending.len() == 512 {
            for p in pending.drain(..) {
                p.await?;
            }
        }
    }
    for p in pending {
        p.await?;
    }
    Ok(())
}

/// Checks one received message: a stream sequence in 1..=`seen.len()` not
/// seen before, and the payload `fill` published.
fn check(seen: &mut [bool], seq: u64, payload: &[u8]) -> Res<()> {
    let n = seen.len();
    let slot = usize::try_from(seq)
        .ok()
        .and_then(|s| s.checked_sub(1))
        .and_then(|i| seen.get_mut(i))
        .ok_or_else(|| format!("stream sequence {seq} out of 1..={n}"))?;
    if std::mem::replace(slot, true) {
        return Err(format!("stream sequence {seq} delivered twice").into());
    }
    if payload.len() != 128 || payload.iter().any(|&b| b != 0xAB) {
        return Err(format!("message {seq} has a damaged payload").into());
    }
    Ok(())
}

/// Waits (bounded) until the server has nothing pending or unacknowledged
/// for `consumer`: every ack of the run arrived.
async fn all_acked(js: &jetstream::Context, token: &str, consumer: &str) -> Res<()> {
    let stream = js
        .get_stream(format!("BUS_{}", token.to_ascii_uppercase()))
        .await?;
    let what = format!("consumer {consumer}: no message pending or unacknowledged");
    wait::until_async(Duration::from_secs(30), &what, || {
        let stream = stream.clone();
        async move {
            let info = stream.consumer_info(consumer).await.expect("consumer info");
            info.num_ack_pending == 0 && info.num_pending == 0
        }
    })
    .await;
    Ok(())
}

async fn bus_consume(bus: &Arc<dyn EventBus>, token: &str, n: usize) -> Res<Duration> {
    let start = Instant::now();
    let mut consumer = bus
        .consume(
            ConsumerConfig::new(format!("{token}-bus"), format!("{token}.>"))
                .start(StartPosition::All)
                .max_ack_pending(10_000),
        )
        .await?;
    let mut seen = vec![false; n];
    for _ in 0..n {
        let d = consumer.next().await.ok_or("consumer ended")??;
        check(&mut seen, d.message().sequence, &d.message().payload)?;
        d.ack().await?;
    }
    Ok(start.elapsed())
}

async fn raw_consume(js: &jetstream::Context, token: &str, n: usize) -> Res<Duration> {
    let start = Instant::now();
    let stream = js
        .get_stream(format!("BUS_{}", token.to_ascii_uppercase()))
        .await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(format!("{token}-raw")),
            filter_subject: format!("{token}.>"),
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(256)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await?;
    let mut seen = vec![false; n];
    for _ in 0..n {
        let m = messages.next().await.ok_or("ended")??;
        check(&mut seen, m.info()?.stream_sequence, &m.payload)?;
        // A double ack, as the bus's `Delivery::ack`: sent with a reply
        // subject on the client's shared request inbox, awaited until the
        // server answers (async-nats' `double_ack()` does the same with a
        // subscription per ack, which is slower).
        let reply = m.message.reply.clone().ok_or("no reply subject")?;
        js.client()
            .request(reply, Bytes::from_static(b"+ACK"))
            .await?;
    }
    Ok(start.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Res<()> {
    let n: usize = std::env::var("NATS_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let reps: usize = std::env::var("NATS_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let server = NatsServer::start().await?;
        let client = async_nats::connect(server.url()).await?;
        let js = jetstream::new(client.clone());
        let bus: Arc<dyn EventBus> = Arc::new(NatsBus::new(client.clone()));
        println!(
            "durable consume + ack, NatsBus vs raw async-nats pull consumer, nats-server {}, {n} messages of 128 bytes, median of {reps}",
            client.server_info().version
        );
        let (mut b, mut r) = (Vec::new(), Vec::new());
        for i in 0..reps {
            let tb = format!("cb{i}");
            let tr = format!("cr{i}");
            fill(&js, &tb, n).await?;
            fill(&js, &tr, n).await?;
            if i % 2 == 0 {
                b.push(bus_consume(&bus, &tb, n).await?);
                r.push(raw_consume(&js, &tr, n).await?);
            } else {
                r.push(raw_consume(&js, &tr, n).await?);
                b.push(bus_consume(&bus, &tb, n).await?);
            }
            all_acked(&js, &tb, &format!("{tb}-bus")).await?;
            all_acked(&js, &tr, &format!("{tr}-raw")).await?;
            js.delete_stream(format!("BUS_{}", tb.to_ascii_uppercase())).await?;
            js.delete_stream(format!("BUS_{}", tr.to_ascii_uppercase())).await?;
        }
        let (b, r) = (median(b), median(r));
        let (rb, rr) = (n as f64 / b.as_secs_f64(), n as f64 / r.as_secs_f64());
        println!("{:<44} {:>12} {:>12} {:>7}", "msg/s", "NatsBus", "raw", "ratio");
        println!("{:<44} {rb:>12.0} {rr:>12.0} {:>6.2}x", "durable consume + ack", rb / rr);
        Ok(())
    })
}
