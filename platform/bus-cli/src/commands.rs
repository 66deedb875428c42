//! What each subcommand does.

use crate::output::{print_object, print_rows, print_table};
use crate::{Cli, Command, ConsumersCommand, DlqCommand, StreamsCommand, Until};
use event_bus::{
    BusError, BusType, Envelope, ErrorKind, EventBus, EventBusExt, MessageId, NatsBus,
};
use event_bus_cli::dlq as dlq_cmd;
use futures::StreamExt;
use serde_json::{json, Value};
use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Runs the command: the exit code, or the error to report.
pub async fn run(cli: &Cli) -> Result<ExitCode, BusError> {
    match &cli.command {
        Command::Context(cmd) => return crate::context::run(cli, cmd),
        Command::Outbox {
            database_url,
            table,
            command,
        } => return crate::admin::outbox(cli, database_url, table, command).await,
        _ => {}
    }
    let config = cli.bus_config()?;
    // An in-memory bus lives inside one process: no command can reach a
    // service's through it. Only a benchmark, which runs both sides
    // itself, may use one, when asked for explicitly.
    if config.bus_type == BusType::Memory
        && !(matches!(cli.command, Command::Bench(_)) && cli.memory_chosen())
    {
        return Err(no_backend(cli.memory_chosen()));
    }
    match &cli.command {
        Command::Pub {
            subject,
            payload,
            headers,
            id,
            count,
        } => {
            let bus = event_bus::connect(&config).await?;
            publish(
                cli,
                bus.as_ref(),
                subject,
                payload.as_deref(),
                headers,
                id.as_deref(),
                *count,
            )
            .await
        }
        Command::Sub {
            pattern,
            until,
            headers,
            raw,
        } => {
            let bus = event_bus::connect(&config).await?;
            subscribe(cli, bus.as_ref(), pattern, until, *headers, *raw).await
        }
        Command::Context(_) => unreachable!("handled above"),
        Command::Health => {
            // A server that cannot be reached is an unhealthy bus (the
            // health shape, exit code 1), not a failed command.
            let h = match event_bus::connect(&config).await {
                Ok(bus) => bus.health().await,
                Err(e) => event_bus::HealthReport::new(
                    match config.bus_type {
                        BusType::Kafka => "kafka",
                        _ => "nats",
                    },
                    event_bus::HealthStatus::Unhealthy,
                    e.to_string(),
                ),
            };
            let status = format!("{:?}", h.status).to_lowercase();
            if cli.json {
                println!(
                    "{}",
                    json!({"backend": h.backend, "status": status, "detail": h.detail})
                );
            } else {
                println!("{} {status}: {}", h.backend, h.detail);
            }
            Ok(if h.is_healthy() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Consume {
            name,
            pattern,
            until,
            no_ack,
        } => {
            let bus = event_bus::connect(&config).await?;
            consume(cli, bus, name, pattern, until, *no_ack).await
        }
        Command::Outbox { .. } => unreachable!("handled above"),
        Command::Schema { bucket, command } => {
            crate::admin::schema(cli, &config, bucket, command).await
        }
        Command::Bench(cmd) => crate::bench::run(cli, &config, cmd).await,
        Command::Streams(cmd) => streams(cli, &nats(&config).await?, cmd).await,
        Command::Consumers(cmd) => consumers(cli, &nats(&config).await?, cmd).await,
        Command::Dlq(cmd) => {
            let bus = event_bus::connect(&config).await?;
            dlq(cli, bus, cmd).await
        }
    }
}

async fn nats(config: &event_bus::BusConfig) -> Result<NatsBus, BusError> {
    if config.bus_type != BusType::Nats {
        let chosen = match config.bus_type {
            BusType::Kafka => "kafka",
            _ => "memory",
        };
        return Err(BusError::config(
            "type",
            chosen,
            "streams and consumers exist on NATS only: pass --url nats://HOST:4222 or set EVENT_BUS_TYPE=nats",
        ));
    }
    NatsBus::connect(&config.nats).await
}

fn backend(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> BusError {
    // The source is printed after the message: not repeated in it.
    BusError::with_source(ErrorKind::Backend, what, e)
}

/// Why a command refuses the in-memory bus, and how to configure NATS.
fn no_backend(memory_chosen: bool) -> BusError {
    let what = if memory_chosen {
        "the configuration chooses the in-memory bus, which lives inside one process: `bus` cannot reach a service's through it (only `bus bench` can use it)"
    } else {
        "no event bus configured"
    };
    BusError::new(
        ErrorKind::Config,
        format!(
            "{what}; point `bus` at NATS with --url nats://HOST:4222 (or Kafka with --url kafka://HOST:9092), or EVENT_BUS_TYPE=nats and EVENT_BUS_NATS_URL=nats://HOST:4222, or a configuration file with type = \"nats\" (--config FILE or EVENT_BUS_CONFIG), or a saved context (--context NAME; `bus context save NAME --server nats://HOST:4222`)"
        ),
    )
}

/// Replaces `{{counter}}` and `{{timestamp}}` (RFC 3339) in `template`.
fn render(template: &str, n: u64) -> String {
    if !template.contains("{{") {
        return template.to_string();
    }
    template.replace("{{counter}}", &n.to_string()).replace(
        "{{timestamp}}",
        &humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
    )
}

async fn publish(
    cli: &Cli,
    bus: &dyn EventBus,
    subject: &str,
    payload: Option<&str>,
    headers: &[String],
    id: Option<&str>,
    count: u64,
) -> Result<ExitCode, BusError> {
    let template = match payload {
        Some("-") => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).map_err(|e| {
                BusError::with_source(
                    ErrorKind::Config,
                    format!("reading the payload from stdin: {e}"),
                    e,
                )
            })?;
            s
        }
        Some(p) => p.to_string(),
        None => String::new(),
    };
    let mut parsed = Vec::new();
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| BusError::config("--header", h, "expected name:value"))?;
        parsed.push((name.trim().to_string(), value.trim().to_string()));
    }
    for n in 1..=count {
        let mut env = Envelope::new(subject, render(&template, n).into_bytes());
        for (name, value) in &parsed {
            env.headers.insert(name.as_str(), value.as_str());
        }
        if let Some(id) = id {
            let id = if count > 1 {
                format!("{id}-{n}")
            } else {
                id.to_string()
            };
            env = env.id(MessageId::new(id));
        }
        let ack = bus.publish_envelope(env).await?;
        if cli.json {
            println!(
                "{}",
                json!({"subject": subject, "stream": ack.stream, "sequence": ack.sequence, "duplicate": ack.duplicate})
            );
        } else if count == 1 {
            match &ack.stream {
                Some(s) => println!(
                    "published to {subject} (stream {s}, sequence {}{})",
                    ack.sequence,
                    if ack.duplicate { ", duplicate" } else { "" }
                ),
                None => println!("published to {subject}"),
            }
        }
    }
    if count > 1 && !cli.json {
        println!("published {count} messages to {subject}");
    }
    Ok(ExitCode::SUCCESS)
}

fn message_json(m: &event_bus::BusMessage, with_headers: bool) -> Value {
    let payload = match std::str::from_utf8(&m.payload) {
        Ok(text) => {
            serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::String(text.to_string()))
        }
        Err(_) => json!({"base64_len": m.payload.len()}),
    };
    let mut v = json!({"subject": m.subject.as_str(), "id": m.id.to_string(), "sequence": m.sequence, "payload": payload});
    if with_headers {
        let headers: serde_json::Map<String, Value> = m
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        v["headers"] = Value::Object(headers);
    }
    v
}

impl Until {
    /// The next item of `stream`, or `None` once `seen` items reached the
    /// count, the timeout passed without one, or the stream ended.
    async fn next<S: futures::Stream + Unpin>(&self, seen: u64, stream: &mut S) -> Option<S::Item> {
        if self.count.is_some_and(|c| seen >= c) {
            return None;
        }
        match self.timeout {
            Some(t) => tokio::time::timeout(t.into(), stream.next())
                .await
                .ok()
                .flatten(),
            None => stream.next().await,
        }
    }
}

async fn subscribe(
    cli: &Cli,
    bus: &dyn EventBus,
    pattern: &str,
    until: &Until,
    with_headers: bool,
    raw: bool,
) -> Result<ExitCode, BusError> {
    let mut sub = bus.subscribe(pattern).await?;
    if !cli.json && !raw {
        eprintln!("listening on {pattern}");
    }
    let mut seen = 0u64;
    while let Some(m) = until.next(seen, &mut sub).await {
        seen += 1;
        if raw {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&m.payload);
            let _ = out.write_all(b"\n");
        } else if cli.json {
            println!("{}", message_json(&m, with_headers));
        } else {
            println!("[#{seen}] {} id={} seq={}", m.subject, m.id, m.sequence);
            if with_headers {
                for (k, v) in m.headers.iter() {
                    println!("  {k}: {v}");
                }
            }
            println!("{}", String::from_utf8_lossy(&m.payload));
        }
    }
    if let Some(c) = until.count {
        if seen < c {
            return Err(BusError::new(
                ErrorKind::Timeout,
                format!("received {seen} of {c} messages on {pattern:?} before the timeout"),
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn consume(
    cli: &Cli,
    bus: Arc<dyn EventBus>,
    name: &str,
    pattern: &str,
    until: &Until,
    no_ack: bool,
) -> Result<ExitCode, BusError> {
    let mut stream = bus
        .consume(event_bus::ConsumerConfig::new(name, pattern).start(event_bus::StartPosition::All))
        .await?;
    let mut seen = 0u64;
    while let Some(delivery) = until.next(seen, &mut stream).await {
        let delivery = delivery?;
        seen += 1;
        if cli.json {
            let mut v = message_json(delivery.message(), false);
            v["delivery_count"] = json!(delivery.delivery_count());
            println!("{v}");
        } else {
            let m = delivery.message();
            println!(
                "[#{seen}] {} id={} seq={} delivery={}",
                m.subject,
                m.id,
                m.sequence,
                delivery.delivery_count()
            );
            println!("{}", String::from_utf8_lossy(&m.payload));
        }
        if !no_ack {
            delivery.ack().await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn streams(cli: &Cli, bus: &NatsBus, cmd: &StreamsCommand) -> Result<ExitCode, BusError> {
    let js = bus.jetstream();
    match cmd {
        StreamsCommand::Ls => {
            let mut list = js.streams();
            let mut rows = Vec::new();
            while let Some(info) = list.next().await {
                let info = info.map_err(|e| backend("listing streams", e))?;
                rows.push(json!({
                    "name": info.config.name,
                    "subjects": info.config.subjects,
                    "messages": info.state.messages,
                    "bytes": info.state.bytes,
                    "consumers": info.state.consumer_count,
                }));
            }
            rows.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            print_rows(cli, rows, |rows| {
                print_table(
                    &["stream", "subjects", "messages", "bytes", "consumers"],
                    rows.iter().map(|r| {
                        vec![
                            r["name"].as_str().unwrap_or_default().to_string(),
                            r["subjects"]
                                .as_array()
                                .map(|s| {
                                    s.iter()
                                        .filter_map(Value::as_str)
                                        .collect::<Vec<_>>()
                                        .join(",")
                                })
                                .unwrap_or_default(),
                            r["messages"].to_string(),
                            r["bytes"].to_string(),
                            r["consumers"].to_string(),
                        ]
                    }),
                );
            });
        }
        StreamsCommand::Ensure { file } => {
            let declared = event_bus::BusConfig::from_file(file)?;
            let reports = bus.ensure_streams(&declared.nats.streams).await?;
            let rows: Vec<Value> = reports
                .iter()
                .map(|r| {
                    let (action, drift) = match &r.action {
                        event_bus::nats::streams::StreamAction::Created => ("created", vec![]),
                        event_bus::nats::streams::StreamAction::Unchanged => ("unchanged", vec![]),
                        event_bus::nats::streams::StreamAction::Updated(d) => {
                            ("updated", d.clone())
                        }
                        _ => ("other", vec![]),
                    };
                    json!({"stream": r.name, "action": action, "drift": drift})
                })
                .collect();
            print_rows(cli, rows, |rows| {
                for r in rows {
                    println!(
                        "{} {}",
                        r["stream"].as_str().unwrap_or_default(),
                        r["action"].as_str().unwrap_or_default()
                    );
                    for d in r["drift"].as_array().into_iter().flatten() {
                        println!("  {}", d.as_str().unwrap_or_default());
                    }
                }
            });
        }
        StreamsCommand::Info { name } => {
            let mut stream = js.get_stream(name).await.map_err(|e| {
                BusError::with_source(ErrorKind::NotFound, format!("stream {name:?}: {e}"), e)
            })?;
            let info = stream
                .info()
                .await
                .map_err(|e| backend(&format!("stream {name}"), e))?;
            let v = json!({
                "name": info.config.name,
                "subjects": info.config.subjects,
                "storage": format!("{:?}", info.config.storage).to_lowercase(),
                "replicas": info.config.num_replicas,
                "max_age_seconds": info.config.max_age.as_secs(),
                "duplicate_window_seconds": info.config.duplicate_window.as_secs(),
                "messages": info.state.messages,
                "bytes": info.state.bytes,
                "first_sequence": info.state.first_sequence,
                "last_sequence": info.state.last_sequence,
                "consumers": info.state.consumer_count,
            });
            print_object(cli, &v);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn consumer_json(info: &async_nats::jetstream::consumer::Info) -> Value {
    json!({
        "name": info.name,
        "stream": info.stream_name,
        "filter": info.config.filter_subject,
        "pending": info.num_pending,
        "ack_pending": info.num_ack_pending,
        "redelivered": info.num_redelivered,
        "waiting": info.num_waiting,
        "delivered_stream_sequence": info.delivered.stream_sequence,
        "ack_floor_stream_sequence": info.ack_floor.stream_sequence,
    })
}

async fn consumers(cli: &Cli, bus: &NatsBus, cmd: &ConsumersCommand) -> Result<ExitCode, BusError> {
    let js = bus.jetstream();
    let stream_of = |name: &str| {
        let name = name.to_string();
        async move {
            js.get_stream(&name).await.map_err(|e| {
                BusError::with_source(ErrorKind::NotFound, format!("stream {name:?}: {e}"), e)
            })
        }
    };
    match cmd {
        ConsumersCommand::Ls { stream, window } => {
            let s = stream_of(stream).await?;
            let mut list = s.consumers();
            let mut rows = Vec::new();
            while let Some(info) = list.next().await {
                rows.push(consumer_json(
                    &info.map_err(|e| backend("listing consumers", e))?,
                ));
            }
            rows.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            lag_statuses(bus, &mut rows, (*window).into()).await;
            print_rows(cli, rows, |rows| {
                print_table(
                    &[
                        "consumer",
                        "filter",
                        "pending",
                        "ack pending",
                        "redelivered",
                        "lag status",
                    ],
                    rows.iter().map(|r| {
                        vec![
                            r["name"].as_str().unwrap_or_default().to_string(),
                            r["filter"].as_str().unwrap_or_default().to_string(),
                            r["pending"].to_string(),
                            r["ack_pending"].to_string(),
                            r["redelivered"].to_string(),
                            r["lag_status"].as_str().unwrap_or("-").to_string(),
                        ]
                    }),
                );
            });
        }
        ConsumersCommand::Info {
            stream,
            name,
            window,
        } => {
            let s = stream_of(stream).await?;
            let info = s.consumer_info(name).await.map_err(|e| {
                BusError::with_source(
                    ErrorKind::NotFound,
                    format!("consumer {name:?} on {stream}: {e}"),
                    e,
                )
            })?;
            let mut rows = vec![consumer_json(&info)];
            lag_statuses(bus, &mut rows, (*window).into()).await;
            let v = rows.remove(0);
            print_object(cli, &v);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Samples each consumer 4 times over `window` and sets its `lag_status`
/// (Burrow's rules, `event_bus::consumer::lag`); `null` with `0s`, or with
/// the reason in `lag_error` when it cannot be sampled.
async fn lag_statuses(bus: &NatsBus, rows: &mut [Value], window: Duration) {
    use event_bus::consumer::lag::{LagSample, LagWindow};
    if window.is_zero() {
        return;
    }
    let mut windows: Vec<LagWindow> = rows.iter().map(|_| LagWindow::new(4)).collect();
    let mut errors: Vec<Option<String>> = vec![None; rows.len()];
    for i in 0..4 {
        if i > 0 {
            tokio::time::sleep(window / 3).await;
        }
        for (row, (w, err)) in rows.iter().zip(windows.iter_mut().zip(errors.iter_mut())) {
            let (name, filter) = (
                row["name"].as_str().unwrap_or_default(),
                row["filter"].as_str().unwrap_or_default(),
            );
            match bus.consumer_state(name, filter).await {
                Ok(state) => {
                    let now = std::time::Instant::now();
                    w.push(LagSample {
                        at: now,
                        position: state.position,
                        lag: state.lag(),
                        last_active: state.idle_for.and_then(|d| now.checked_sub(d)),
                    });
                }
                Err(e) => *err = Some(e.to_string()),
            }
        }
    }
    let now = std::time::Instant::now();
    for (row, (w, err)) in rows.iter_mut().zip(windows.iter().zip(errors)) {
        match err {
            Some(e) => row["lag_error"] = json!(e),
            None => row["lag_status"] = json!(w.status(now).as_str()),
        }
    }
}

async fn dlq(cli: &Cli, bus: Arc<dyn EventBus>, cmd: &DlqCommand) -> Result<ExitCode, BusError> {
    match cmd {
        DlqCommand::Ls(filter) => {
            let rows = dlq_cmd::list(bus.clone(), filter).await?;
            if rows.is_empty() && !cli.json {
                // Said on stderr: stdout stays the (empty) table.
                if bus.stored_streams(&filter.subject).await?.is_empty() {
                    eprintln!(
                        "no stream stores subjects matching {:?}: no dead letters there",
                        filter.subject
                    );
                } else {
                    eprintln!("no dead letters on {:?}", filter.subject);
                }
            }
            print_rows(cli, rows, |rows| {
                print_table(
                    &[
                        "id",
                        "time",
                        "original subject",
                        "consumer",
                        "deliveries",
                        "reason",
                    ],
                    rows.iter().map(|r| {
                        vec![
                            r["id"].as_str().unwrap_or_default().to_string(),
                            r["dead_lettered_at"].as_str().unwrap_or("-").to_string(),
                            r["original_subject"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                            r["consumer"].as_str().unwrap_or_default().to_string(),
                            r["delivery_count"].to_string(),
                            r["reason"]
                                .as_str()
                                .unwrap_or_default()
                                .chars()
                                .take(80)
                                .collect(),
                        ]
                    }),
                );
            });
        }
        DlqCommand::Show { subject, id } => {
            let v = dlq_cmd::show(bus, subject, id).await?;
            if cli.json {
                println!("{v}");
            } else {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
        }
        DlqCommand::Replay {
            filter,
            dry_run,
            rate,
        } => {
            // The bar's length is known once the letters are listed.
            let bar = crate::bench::progress(cli, false, 0, "replaying");
            let done = dlq_cmd::replay(bus, filter, *dry_run, *rate, |total| {
                bar.set_length(total as u64);
                bar.inc(1);
            })
            .await;
            bar.finish_and_clear();
            report(
                cli,
                if *dry_run { "would replay" } else { "replayed" },
                &done?,
            );
        }
        DlqCommand::Discard { filter, dry_run } => {
            let done = dlq_cmd::discard(bus, filter, *dry_run).await?;
            report(
                cli,
                if *dry_run {
                    "would discard"
                } else {
                    "discarded"
                },
                &done,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn report(cli: &Cli, what: &str, rows: &[Value]) {
    if cli.json {
        println!(
            "{}",
            json!({"action": what, "count": rows.len(), "dead_letters": rows})
        );
    } else {
        println!("{what} {} dead letter(s)", rows.len());
        for r in rows {
            println!(
                "  {} -> {}",
                r["id"].as_str().unwrap_or_default(),
                r["original_subject"].as_str().unwrap_or_default()
            );
        }
    }
}
