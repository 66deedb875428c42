//! `bus bench`: measure the bus like `nats bench`, and with `--compare raw`
//! the same scenario through raw async-nats (or a raw tokio channel for the
//! in-memory bus) in the same run, with the ratio.

use crate::{BenchArgs, BenchCommand, Cli};
use event_bus::runner::{Event, Handler, Outcome, Runner};
use event_bus::{BusError, ConsumerConfig, ErrorKind, EventBus, EventBusExt, StartPosition};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One side's figures.
struct Figures {
    label: String,
    messages: u64,
    elapsed: Duration,
    /// Each client's rate (messages per second).
    client_rates: Vec<f64>,
    /// Per-message latency (publish: to the acknowledgement), microseconds.
    latency: Option<Histogram<u64>>,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    fn json(&self) -> Value {
        let n = self.client_rates.len().max(1) as f64;
        let avg = self.client_rates.iter().sum::<f64>() / n;
        let min = self
            .client_rates
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let max = self.client_rates.iter().copied().fold(0.0, f64::max);
        let stddev = (self
            .client_rates
            .iter()
            .map(|r| (r - avg).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        let mut v = json!({
            "side": self.label,
            "messages": self.messages,
            "seconds": self.elapsed.as_secs_f64(),
            "msgs_per_sec": self.rate(),
            "client_rate": {"min": min, "avg": avg, "max": max, "stddev": stddev},
        });
        if let Some(h) = &self.latency {
            v["latency_us"] = json!({
                "p50": h.value_at_quantile(0.5), "p90": h.value_at_quantile(0.9),
                "p99": h.value_at_quantile(0.99), "p999": h.value_at_quantile(0.999),
                "max": h.max(),
            });
        }
        v
    }
}

/// A progress bar on stderr when it is a terminal and the output is for
/// people (no `--json`, no `--csv`); hidden otherwise.
pub fn progress(cli: &Cli, csv: bool, total: u64, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if cli.json || csv || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}

/// The NATS URL a `--compare raw` needs (`what`: the bench, `raw`: its
/// baseline); the in-memory bus has no such baseline.
fn raw_url<'a>(nats: &'a Option<String>, what: &str, raw: &str) -> Result<&'a str, BusError> {
    nats.as_deref().ok_or_else(|| {
        BusError::new(
            ErrorKind::Unsupported,
            format!("`bench {what} --compare raw` compares with {raw}; the in-memory bus has none"),
        )
    })
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

fn check(args: &BenchArgs) -> Result<(), BusError> {
    if args.clients == 0 || args.msgs == 0 {
        return Err(BusError::config(
            "--clients/--msgs",
            "0",
            "must be at least 1",
        ));
    }
    if args.size > 8 * 1024 * 1024 {
        return Err(BusError::config(
            "--size",
            &args.size.to_string(),
            "at most 8 MiB",
        ));
    }
    if let Some(c) = &args.compare {
        if c != "raw" {
            return Err(BusError::config(
                "--compare",
                c,
                "the only comparison is `raw`",
            ));
        }
    }
    Ok(())
}

/// Runs `bus bench ...`.
pub async fn run(
    cli: &Cli,
    config: &event_bus::BusConfig,
    cmd: &BenchCommand,
) -> Result<ExitCode, BusError> {
    let bus = event_bus::connect(config).await?;
    let nats = (config.bus_type == event_bus::BusType::Nats).then(|| config.nats.urls.join(","));
    let (args, mut sides) = match cmd {
        BenchCommand::Pub { subject, args } => {
            check(args)?;
            let bar = progress(cli, args.csv, args.msgs, "publishing");
            let mut sides = vec![bench_pub(&bus, subject, args, &bar).await?];
            bar.finish_and_clear();
            if args.compare.is_some() {
                sides.push(match &nats {
                    Some(url) => raw_nats_pub(url, subject, args).await?,
                    None => raw_channel(args).await?,
                });
            }
            (args, sides)
        }
        BenchCommand::Sub { subject, args } => {
            check(args)?;
            let mut sides = vec![bench_sub(&bus, subject, args, None).await?];
            if args.compare.is_some() {
                let url = raw_url(&nats, "sub", "a raw NATS ordered consumer")?;
                sides.push(bench_sub(&bus, subject, args, Some(url)).await?);
            }
            (args, sides)
        }
        BenchCommand::Consume { subject, args } => {
            check(args)?;
            let mut sides = vec![bench_consume(&bus, subject, args, None).await?];
            if args.compare.is_some() {
                let url = raw_url(&nats, "consume", "a raw NATS pull consumer")?;
                sides.push(bench_consume(&bus, subject, args, Some(url)).await?);
            }
            (args, sides)
        }
        BenchCommand::Runner { subject, args } => {
            check(args)?;
            let mut sides = vec![bench_runner(&bus, subject, args).await?];
            if args.compare.is_some() {
                sides.push(bench_consume(&bus, subject, args, None).await?);
                sides.last_mut().expect("pushed").label = "hand-written consume+ack loop".into();
            }
            (args, sides)
        }
    };
    let ratio = (sides.len() == 2).then(|| sides[0].rate() / sides[1].rate());
    let rows: Vec<Value> = sides.iter_mut().map(|s| s.json()).collect();
    if cli.json {
        println!("{}", json!({"sides": rows, "ratio": ratio}));
    } else if args.csv {
        println!("side,messages,seconds,msgs_per_sec,client_min,client_avg,client_max,client_stddev,p50_us,p90_us,p99_us,p999_us");
        for r in &rows {
            let c = &r["client_rate"];
            let l = &r["latency_us"];
            println!(
                "{},{},{:.3},{:.0},{:.0},{:.0},{:.0},{:.0},{},{},{},{}",
                r["side"].as_str().unwrap_or(""),
                r["messages"],
                r["seconds"].as_f64().unwrap_or(0.0),
                r["msgs_per_sec"].as_f64().unwrap_or(0.0),
                c["min"].as_f64().unwrap_or(0.0),
                c["avg"].as_f64().unwrap_or(0.0),
                c["max"].as_f64().unwrap_or(0.0),
                c["stddev"].as_f64().unwrap_or(0.0),
                l["p50"],
                l["p90"],
                l["p99"],
                l["p999"]
            );
        }
    } else {
        for r in &rows {
            let c = &r["client_rate"];
            println!(
                "{}: {} msgs in {:.2} s = {:.0} msgs/s (clients: min {:.0}, avg {:.0}, max {:.0}, stddev {:.0})",
                r["side"].as_str().unwrap_or(""), r["messages"], r["seconds"].as_f64().unwrap_or(0.0),
                r["msgs_per_sec"].as_f64().unwrap_or(0.0), c["min"].as_f64().unwrap_or(0.0),
                c["avg"].as_f64().unwrap_or(0.0), c["max"].as_f64().unwrap_or(0.0), c["stddev"].as_f64().unwrap_or(0.0)
            );
            if let Some(l) = r.get("latency_us") {
                println!(
                    "  latency (µs): P50 {} P90 {} P99 {} P99.9 {} max {}",
                    l["p50"], l["p90"], l["p99"], l["p999"], l["max"]
                );
            }
        }
        if let Some(ratio) = ratio {
            println!("ratio (bus / {}): {ratio:.2}x", sides[1].label);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `args.clients` clients, each sending `msgs / clients` messages
/// with `send(client)` and awaiting each: the rates and latencies of all.
async fn clients<S, F>(
    label: String,
    args: &BenchArgs,
    bar: &indicatif::ProgressBar,
    send: S,
) -> Result<Figures, BusError>
where
    S: Fn() -> F + Clone + Send + 'static,
    F: std::future::Future<Output = Result<(), BusError>> + Send,
{
    let per = (args.msgs / args.clients as u64).max(1);
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|_| {
            let send = send.clone();
            let bar = bar.clone();
            tokio::spawn(async move {
                let mut h = histogram();
                let t0 = Instant::now();
                for i in 0..per {
                    let t = Instant::now();
                    send().await?;
                    let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                    if i % 64 == 63 {
                        bar.inc(64);
                    }
                }
                Ok::<_, BusError>((per as f64 / t0.elapsed().as_secs_f64(), h))
            })
        })
        .collect();
    let mut latency = histogram();
    let mut client_rates = Vec::new();
    for t in tasks {
        let (rate, h) = t
            .await
            .map_err(|e| BusError::new(ErrorKind::Backend, e.to_string()))??;
        client_rates.push(rate);
        latency.add(h).expect("same bounds");
    }
    Ok(Figures {
        label,
        messages: per * args.clients as u64,
        elapsed: started.elapsed(),
        client_rates,
        latency: Some(latency),
    })
}

async fn bench_pub(
    bus: &Arc<dyn EventBus>,
    subject: &str,
    args: &BenchArgs,
    bar: &indicatif::ProgressBar,
) -> Result<Figures, BusError> {
    let (bus, subject) = (bus.clone(), Arc::<str>::from(subject));
    let payload = vec![b'x'; args.size];
    let label = format!("{} publish", bus.backend_name());
    clients(label, args, bar, move || {
        let (bus, subject, payload) = (bus.clone(), subject.clone(), payload.clone());
        async move { bus.publish(&subject, payload).await }
    })
    .await
}

async fn raw_nats_pub(url: &str, subject: &str, args: &BenchArgs) -> Result<Figures, BusError> {
    let client = async_nats::connect(url).await.map_err(|e| {
        BusError::with_source(
            ErrorKind::Unavailable,
            format!("connecting to {url}: {e}"),
            e,
        )
    })?;
    let js = async_nats::jetstream::new(client);
    let subject = subject.to_string();
    let payload = bytes::Bytes::from(vec![b'x'; args.size]);
    let hidden = indicatif::ProgressBar::hidden();
    clients("raw async-nats".into(), args, &hidden, move || {
        let (js, subject, payload) = (js.clone(), subject.clone(), payload.clone());
        async move {
            let ack = js.publish(subject, payload).await;
            match ack {
                Ok(f) => f.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
            .map_err(|e| BusError::new(ErrorKind::Backend, format!("raw publish: {e}")))
        }
    })
    .await
}

/// The in-memory baseline: each client sends into a tokio channel that one
/// task drains.
async fn raw_channel(args: &BenchArgs) -> Result<Figures, BusError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1024);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let payload = vec![b'x'; args.size];
    let hidden = indicatif::ProgressBar::hidden();
    let figures = clients("raw tokio mpsc".into(), args, &hidden, move || {
        let (tx, payload) = (tx.clone(), payload.clone());
        async move {
            tx.send(payload)
                .await
                .map_err(|_| BusError::new(ErrorKind::Closed, "the raw channel closed"))
        }
    })
    .await;
    drain.abort();
    figures
}

/// Publishes the backlog the consuming benches read (untimed).
async fn backlog(bus: &Arc<dyn EventBus>, subject: &str, args: &BenchArgs) -> Result<(), BusError> {
    let payload = format!(
        "{{\"pad\":\"{}\"}}",
        "x".repeat(args.size.saturating_sub(10))
    );
    let envelopes: Vec<_> = (0..args.msgs)
        .map(|_| event_bus::Envelope::new(subject, payload.clone().into_bytes()))
        .collect();
    for r in bus.publish_batch(envelopes).await {
        r?;
    }
    Ok(())
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    )
}

/// A durable consumer reading a backlog published after it was created
/// (untimed), acknowledging each (fire-and-forget acks, as a fast consumer
/// would). `raw`: the same through a raw async-nats pull consumer (NATS);
/// on the in-memory bus there is no raw consumer to compare with.
async fn bench_consume(
    bus: &Arc<dyn EventBus>,
    subject: &str,
    args: &BenchArgs,
    raw: Option<&str>,
) -> Result<Figures, BusError> {
    let name = unique("bus-bench");
    if let Some(url) = raw {
        return raw_nats_consume(bus, url, &name, subject, args).await;
    }
    let mut stream = bus
        .consume(
            ConsumerConfig::new(name.as_str(), subject)
                .start(StartPosition::New)
                .max_ack_pending(10_000),
        )
        .await?;
    backlog(bus, subject, args).await?;
    let started = Instant::now();
    let mut got = 0u64;
    while got < args.msgs {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Ok(Some(Ok(d))) => {
                d.ack_nowait().await?;
                got += 1;
            }
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) | Err(_) => break,
        }
    }
    let elapsed = started.elapsed();
    Ok(Figures {
        label: format!("{} consume+ack", bus.backend_name()),
        messages: got,
        elapsed,
        client_rates: vec![got as f64 / elapsed.as_secs_f64()],
        latency: None,
    })
}

async fn raw_nats_consume(
    bus: &Arc<dyn EventBus>,
    url: &str,
    name: &str,
    subject: &str,
    args: &BenchArgs,
) -> Result<Figures, BusError> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    let raw_err = |what: &str, e: &dyn std::fmt::Display| {
        BusError::new(ErrorKind::Backend, format!("raw {what}: {e}"))
    };
    let client = async_nats::connect(url)
        .await
        .map_err(|e| raw_err("connect", &e))?;
    let js = async_nats::jetstream::new(client);
    let stream_name = js
        .stream_by_subject(subject)
        .await
        .map_err(|e| raw_err("stream look-up (publish to the subject first)", &e))?;
    let stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| raw_err("stream", &e))?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(format!("{name}-raw")),
            filter_subject: subject.to_string(),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::New,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await
        .map_err(|e| raw_err("consumer", &e))?;
    let mut messages = consumer.messages().await.map_err(|e| raw_err("pull", &e))?;
    backlog(bus, subject, args).await?;
    let started = Instant::now();
    let mut got = 0u64;
    while got < args.msgs {
        match tokio::time::timeout(Duration::from_secs(30), messages.next()).await {
            Ok(Some(Ok(m))) => {
                m.ack().await.map_err(|e| raw_err("ack", &e))?;
                got += 1;
            }
            Ok(Some(Err(e))) => return Err(raw_err("message", &e)),
            Ok(None) | Err(_) => break,
        }
    }
    let elapsed = started.elapsed();
    Ok(Figures {
        label: "raw async-nats pull consumer".into(),
        messages: got,
        elapsed,
        client_rates: vec![got as f64 / elapsed.as_secs_f64()],
        latency: None,
    })
}

/// A subscription keeping up with a publisher (`publish_batch` in the
/// background): time from the first publish until all are received.
/// `raw`: a raw async-nats ordered consumer (`DeliverPolicy::New`) instead.
async fn bench_sub(
    bus: &Arc<dyn EventBus>,
    subject: &str,
    args: &BenchArgs,
    raw: Option<&str>,
) -> Result<Figures, BusError> {
    let raw_err = |what: &str, e: &dyn std::fmt::Display| {
        BusError::new(ErrorKind::Backend, format!("raw {what}: {e}"))
    };
    enum Source {
        Bus(event_bus::Subscription),
        Raw(Box<async_nats::jetstream::consumer::pull::Ordered>),
    }
    let mut source = match raw {
        None => Source::Bus(bus.subscribe(subject).await?),
        Some(url) => {
            use async_nats::jetstream::consumer::{pull, DeliverPolicy};
            let client = async_nats::connect(url)
                .await
                .map_err(|e| raw_err("connect", &e))?;
            let js = async_nats::jetstream::new(client);
            let name = js
                .stream_by_subject(subject)
                .await
                .map_err(|e| raw_err("stream look-up (publish to the subject first)", &e))?;
            let stream = js
                .get_stream(&name)
                .await
                .map_err(|e| raw_err("stream", &e))?;
            let consumer = stream
                .create_consumer(pull::OrderedConfig {
                    filter_subject: subject.to_string(),
                    deliver_policy: DeliverPolicy::New,
                    ..Default::default()
                })
                .await
                .map_err(|e| raw_err("consumer", &e))?;
            Source::Raw(Box::new(
                consumer.messages().await.map_err(|e| raw_err("pull", &e))?,
            ))
        }
    };
    let started = Instant::now();
    let publisher = {
        let bus = bus.clone();
        let subject = subject.to_string();
        let payload = vec![b'x'; args.size];
        let n = args.msgs;
        tokio::spawn(async move {
            let envelopes: Vec<_> = (0..n)
                .map(|_| event_bus::Envelope::new(subject.as_str(), payload.clone()))
                .collect();
            bus.publish_batch(envelopes).await
        })
    };
    let mut got = 0u64;
    while got < args.msgs {
        let next = match &mut source {
            Source::Bus(sub) => tokio::time::timeout(Duration::from_secs(30), sub.next())
                .await
                .ok()
                .flatten()
                .map(|_| ()),
            Source::Raw(messages) => {
                match tokio::time::timeout(Duration::from_secs(30), messages.next()).await {
                    Ok(Some(Ok(_))) => Some(()),
                    Ok(Some(Err(_))) => continue,
                    _ => None,
                }
            }
        };
        if next.is_none() {
            break;
        }
        got += 1;
    }
    let elapsed = started.elapsed();
    for r in publisher
        .await
        .map_err(|e| BusError::new(ErrorKind::Backend, e.to_string()))?
    {
        r?;
    }
    Ok(Figures {
        label: match raw {
            None => format!("{} subscribe", bus.backend_name()),
            Some(_) => "raw async-nats ordered consumer".into(),
        },
        messages: got,
        elapsed,
        client_rates: vec![got as f64 / elapsed.as_secs_f64()],
        latency: None,
    })
}

/// A runner with an empty handler draining a backlog, timed from the
/// backlog's first publish until the runner has processed all of it.
async fn bench_runner(
    bus: &Arc<dyn EventBus>,
    subject: &str,
    args: &BenchArgs,
) -> Result<Figures, BusError> {
    let name = unique("bench");
    let runner = Runner::builder(bus.clone(), name)
        .concurrency(args.clients.max(1))
        .handler(Handler::new(
            "h",
            subject,
            |_e: Event<'_, serde_json::Value>, _tx: &mut ()| Outcome::Ack,
        ))
        .start(StartPosition::New)
        .build()
        .spawn()
        .await?;
    let started = Instant::now();
    backlog(bus, subject, args).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while runner.report().processed < args.msgs && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let done = runner.report().processed;
    runner.shutdown().await;
    Ok(Figures {
        label: format!("{} runner", bus.backend_name()),
        messages: done,
        elapsed,
        client_rates: vec![done as f64 / elapsed.as_secs_f64()],
        latency: None,
    })
}
