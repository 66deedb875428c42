//! `bus`: operate an event bus from the command line.
//!
//! It connects from the same configuration as services (`EVENT_BUS_*`,
//! `EVENT_BUS_CONFIG`), overridable with `--config`, `--url` and `--tenant`;
//! without NATS configured every command fails saying how to configure it
//! (an in-memory bus is reachable from no other process; `bench` alone uses
//! one, when `EVENT_BUS_TYPE=memory` asks for it).
//! Every command prints a table or lines for people, or with `--json` one
//! JSON document (or one JSON object per line for streams of messages).
//! Exit codes: 0 done, 1 failed (or unhealthy), 2 bad usage.

mod admin;
mod bench;
mod commands;
mod context;
mod output;

use clap::{Parser, Subcommand};
use event_bus::{BusConfig, BusType};
use event_bus_cli::dlq::DlqFilter;
use std::path::PathBuf;
use std::process::ExitCode;

/// When `sub` and `consume` stop: after `--count` messages, or `--timeout`
/// without one (neither: when interrupted).
#[derive(clap::Args, Debug, Clone)]
pub struct Until {
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this long without a message (e.g. `5s`).
    #[arg(long)]
    timeout: Option<humantime::Duration>,
}

/// Operate an event bus: publish, subscribe, streams, consumers, dead
/// letters, health.
#[derive(Parser, Debug)]
#[command(name = "bus", version)]
pub struct Cli {
    /// A TOML or JSON configuration file (default: `EVENT_BUS_CONFIG`, then
    /// the `EVENT_BUS_*` variables).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Server URL(s), comma-separated: `nats://HOST:4222` uses NATS at
    /// these, `kafka://HOST:9092` Kafka (a `bus` built with the `kafka`
    /// feature). All of one scheme; no scheme is NATS.
    #[arg(long, global = true)]
    url: Option<String>,
    /// The tenant to act as.
    #[arg(long, global = true)]
    tenant: Option<String>,
    /// A saved context (`bus context save`): its URL, tenant and
    /// configuration file, unless given here. Default: `BUS_CONTEXT`, else
    /// the selected one.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Publish a message (PAYLOAD, or stdin with `-`; `{{counter}}` and
    /// `{{timestamp}}` in it are replaced per message).
    Pub {
        /// The subject.
        subject: String,
        /// The payload; `-` reads stdin. Empty if absent.
        payload: Option<String>,
        /// A header, `name:value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// The message id (de-duplication); with `--count`, `-<n>` is appended.
        #[arg(long)]
        id: Option<String>,
        /// How many messages to publish.
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// Print the messages on a pattern (new ones).
    Sub {
        /// The subject pattern (`*`, `>` wildcards).
        pattern: String,
        /// When to stop.
        #[command(flatten)]
        until: Until,
        /// Print headers too.
        #[arg(long)]
        headers: bool,
        /// Print only the payloads, as they are.
        #[arg(long)]
        raw: bool,
    },
    /// Read a durable consumer (created if new), acknowledging what it prints.
    Consume {
        /// The consumer's durable name.
        name: String,
        /// Its filter pattern.
        pattern: String,
        /// When to stop.
        #[command(flatten)]
        until: Until,
        /// Leave them unacknowledged (they are delivered again after the ack wait).
        #[arg(long)]
        no_ack: bool,
    },
    /// JetStream streams (NATS).
    #[command(subcommand)]
    Streams(StreamsCommand),
    /// Durable consumers (NATS).
    #[command(subcommand)]
    Consumers(ConsumersCommand),
    /// Dead letters on a dead-letter subject (e.g. `dlq.<runner>`).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The transactional outbox (PostgreSQL: `--database-url` or `DATABASE_URL`).
    Outbox {
        /// The PostgreSQL URL.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// The outbox table.
        #[arg(long, default_value = event_bus_postgres::outbox::DEFAULT_TABLE)]
        table: String,
        /// What to do.
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Event contracts in the registry (NATS key-value bucket).
    Schema {
        /// The registry's bucket.
        #[arg(long, default_value = "EVENT_CONTRACTS")]
        bucket: String,
        /// What to do.
        #[command(subcommand)]
        command: SchemaCommand,
    },
    /// Measure the bus (like `nats bench`), optionally against raw async-nats.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Named contexts (a saved URL, tenant, configuration file).
    #[command(subcommand)]
    Context(ContextCommand),
    /// Check the bus: exit code 0 when healthy, 1 otherwise.
    Health,
}

/// `bus context`.
#[derive(Subcommand, Debug)]
pub enum ContextCommand {
    /// Saves (or replaces) a context.
    Save {
        /// Its name.
        name: String,
        /// NATS URL(s), comma-separated.
        #[arg(long = "server")]
        url: Option<String>,
        /// The tenant.
        #[arg(long = "as-tenant")]
        tenant: Option<String>,
        /// A bus configuration file.
        #[arg(long = "config-file")]
        config: Option<PathBuf>,
    },
    /// Lists the contexts (`*` marks the selected one).
    Ls,
    /// Prints a context.
    Show {
        /// Its name.
        name: String,
    },
    /// Makes a context the default.
    Select {
        /// Its name.
        name: String,
    },
    /// Removes a context.
    Rm {
        /// Its name.
        name: String,
    },
}

/// What every benchmark takes.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Concurrent clients (publishers; the runner's concurrency).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Messages in all.
    #[arg(long, default_value_t = 10_000)]
    msgs: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// `raw`: run the same scenario through raw async-nats (or a tokio
    /// channel in memory) and print the ratio.
    #[arg(long)]
    compare: Option<String>,
    /// Print CSV.
    #[arg(long)]
    csv: bool,
}

/// `bus bench`.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Clients publishing, each awaiting every acknowledgement: rates and
    /// latency percentiles.
    Pub {
        /// The subject.
        subject: String,
        /// The benchmark's settings.
        #[command(flatten)]
        args: BenchArgs,
    },
    /// A subscription keeping up with a publisher (`publish_batch`).
    Sub {
        /// The subject.
        subject: String,
        /// The benchmark's settings.
        #[command(flatten)]
        args: BenchArgs,
    },
    /// A durable consumer reading and acknowledging a backlog.
    Consume {
        /// The subject.
        subject: String,
        /// The benchmark's settings.
        #[command(flatten)]
        args: BenchArgs,
    },
    /// A runner with an empty handler (vs a hand-written loop with `--compare raw`).
    Runner {
        /// The subject.
        subject: String,
        /// The benchmark's settings.
        #[command(flatten)]
        args: BenchArgs,
    },
}

/// `bus outbox`.
#[derive(Subcommand, Debug)]
pub enum OutboxCommand {
    /// Pending rows, the oldest's age, failed rows, who holds delivery back.
    Status,
    /// Rows the bus refused (in the failure table).
    Failed {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Moves failed rows back to the outbox (all, or those given).
    Retry {
        /// The failed rows' numbers (`seq`); none: all listed by `failed`.
        seqs: Vec<i64>,
    },
}

/// `bus schema`.
#[derive(Subcommand, Debug)]
pub enum SchemaCommand {
    /// Every type with its subject, rule and versions.
    Ls,
    /// A type's schema (the latest, or `--version`).
    Show {
        /// The event type.
        type_name: String,
        /// The version.
        #[arg(long)]
        version: Option<u32>,
    },
    /// Registers a schema file as the type's next version.
    Register {
        /// The event type.
        type_name: String,
        /// The JSON Schema file.
        file: PathBuf,
    },
    /// Whether a schema file could be registered: exit code 1 and every
    /// breaking change if not.
    Check {
        /// The event type.
        type_name: String,
        /// The JSON Schema file.
        file: PathBuf,
    },
    /// The changes between two versions, both ways.
    Diff {
        /// The event type.
        type_name: String,
        /// The older version.
        from: u32,
        /// The newer version.
        to: u32,
    },
}

/// `bus streams`.
#[derive(Subcommand, Debug)]
pub enum StreamsCommand {
    /// Every stream with its subjects and message count.
    Ls,
    /// One stream's configuration and state.
    Info {
        /// The stream's name.
        name: String,
    },
    /// Creates or reconciles the streams a configuration file declares
    /// (`[[nats.streams]]`), printing what changed.
    Ensure {
        /// A TOML or JSON bus configuration file.
        file: PathBuf,
    },
}

/// `bus consumers`.
#[derive(Subcommand, Debug)]
pub enum ConsumersCommand {
    /// The durable consumers of a stream with pending, ack-pending and
    /// redelivered counts, and their lag status over a short window.
    Ls {
        /// The stream's name.
        stream: String,
        /// How long to sample each consumer for its lag status (Burrow's
        /// rules over 4 samples); `0s` skips it.
        #[arg(long, default_value = "2s")]
        window: humantime::Duration,
    },
    /// One consumer's state and lag status.
    Info {
        /// The stream's name.
        stream: String,
        /// The consumer's name.
        name: String,
        /// How long to sample it for its lag status; `0s` skips it.
        #[arg(long, default_value = "2s")]
        window: humantime::Duration,
    },
}

/// `bus dlq`.
#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// List dead letters (they stay).
    Ls(DlqFilter),
    /// Print one dead letter whole: its headers and payload (it stays).
    Show {
        /// The dead-letter subject.
        subject: String,
        /// The dead letter's id (as `ls` prints it).
        id: String,
    },
    /// Publish dead letters again on their original subject (a new message
    /// id derived from the original), then remove them.
    Replay {
        /// Which dead letters.
        #[command(flatten)]
        filter: DlqFilter,
        /// Show what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// At most this many replays per second.
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Remove dead letters without replaying them.
    Discard {
        /// Which dead letters.
        #[command(flatten)]
        filter: DlqFilter,
        /// Show what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

impl Cli {
    /// Whether the in-memory bus was chosen explicitly (`EVENT_BUS_TYPE`, or
    /// a configuration file or context), rather than left as the default.
    fn memory_chosen(&self) -> bool {
        std::env::var("EVENT_BUS_TYPE").is_ok_and(|t| !t.trim().is_empty())
            || self.config.is_some()
            || std::env::var("EVENT_BUS_CONFIG").is_ok_and(|c| !c.is_empty())
            || context::chosen(self.context.as_deref())
                .ok()
                .flatten()
                .is_some_and(|c| c.config.is_some())
    }

    /// The configuration: the file, else the environment, with the flags
    /// applied on top.
    fn bus_config(&self) -> Result<BusConfig, event_bus::BusError> {
        let ctx = context::chosen(self.context.as_deref())?.unwrap_or_default();
        let file = self.config.as_ref().or(ctx.config.as_ref());
        let mut config = match file {
            Some(path) => {
                let mut c = BusConfig::from_file(path)?;
                c.apply_env(|k| std::env::var(k).ok())?;
                c
            }
            None => BusConfig::load()?,
        };
        if let Some(url) = self.url.as_ref().or(ctx.url.as_ref()) {
            apply_url(&mut config, url)?;
        }
        if let Some(t) = self.tenant.as_ref().or(ctx.tenant.as_ref()) {
            match config.bus_type {
                BusType::Kafka => config.kafka.tenant = Some(t.clone()),
                _ => config.nats.tenant = Some(t.clone()),
            }
        }
        config.validate()?;
        Ok(config)
    }
}

/// `--url`: `kafka://` URLs choose Kafka, any other NATS; a list mixing
/// the two is a `Config` error naming it.
fn apply_url(config: &mut BusConfig, url: &str) -> Result<(), event_bus::BusError> {
    let parts: Vec<&str> = url.split(',').map(str::trim).collect();
    let kafka = parts
        .iter()
        .filter(|u| u.to_ascii_lowercase().starts_with("kafka://"))
        .count();
    if kafka == 0 {
        config.bus_type = BusType::Nats;
        config.nats.urls = parts.iter().map(|u| u.to_string()).collect();
    } else if kafka == parts.len() {
        config.bus_type = BusType::Kafka;
        config.kafka.bootstrap_servers = event_bus::kafka::parse_bootstrap(url);
    } else {
        return Err(event_bus::BusError::config(
            "--url",
            url,
            "mixes kafka:// with other servers: give one backend's URLs",
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bus: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(&cli)) {
        Ok(code) => code,
        Err(e) => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"error": e.to_string(), "kind": e.kind().as_str()})
                );
            }
            eprintln!("bus: {e}");
            ExitCode::FAILURE
        }
    }
}
