//! `bus outbox` (PostgreSQL) and `bus schema` (the contracts registry).

use crate::output::{print_object, print_rows};
use crate::{Cli, OutboxCommand, SchemaCommand};
use event_bus::{BusConfig, BusError, BusType, ErrorKind};
use event_bus_postgres::{sqlx, Outbox};
use event_bus_schema::compat::{self, Mode};
use event_bus_schema::registry::parse_schema;
use event_bus_schema::Registry;
use serde_json::{json, Value};
use std::process::ExitCode;

fn secs(d: Option<std::time::Duration>) -> Value {
    d.map_or(Value::Null, |d| json!(d.as_secs_f64()))
}

/// A PostgreSQL error said once: the server's message and SQLSTATE (sqlx's
/// own text adds "at line N", the line in the server's C source).
fn pg_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db.message()),
            None => db.message().to_string(),
        },
        other => other.to_string(),
    }
}

/// `bus outbox ...`.
pub async fn outbox(
    cli: &Cli,
    url: &str,
    table: &str,
    cmd: &OutboxCommand,
) -> Result<ExitCode, BusError> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .map_err(|e| {
            BusError::new(
                ErrorKind::Unavailable,
                format!(
                    "cannot connect to PostgreSQL at {}: {}",
                    event_bus::config::redact_url(url),
                    pg_error(&e)
                ),
            )
        })?;
    let outbox = Outbox::with_table(pool, table)?;
    match cmd {
        OutboxCommand::Status => {
            let s = outbox.status().await?;
            let v = json!({
                "table": table,
                "pending": s.pending,
                "oldest_pending_age_seconds": secs(s.oldest_pending_age),
                "held_back": s.held_back,
                "failed": s.failed,
                "held_by_pid": s.held_by.as_ref().map(|h| h.pid),
                "prepared_transaction": s.prepared_transaction,
                "relay": s.relay,
            });
            print_object(cli, &v);
        }
        OutboxCommand::Failed { limit } => {
            let rows: Vec<Value> = outbox
                .failed(*limit)
                .await?
                .into_iter()
                .map(|f| {
                    json!({
                        "seq": f.seq, "message_id": f.message_id, "subject": f.subject,
                        "attempts": f.attempts, "error": f.error,
                        "failed_ago_seconds": f.failed_ago.as_secs_f64(),
                    })
                })
                .collect();
            print_rows(cli, rows, |rows| {
                for r in rows {
                    println!(
                        "{} {} {} : {}",
                        r["seq"],
                        r["subject"].as_str().unwrap_or(""),
                        r["message_id"].as_str().unwrap_or(""),
                        r["error"].as_str().unwrap_or("")
                    );
                }
                println!("{} failed row(s)", rows.len());
            });
        }
        OutboxCommand::Retry { seqs } => {
            let seqs: Vec<i64> = if seqs.is_empty() {
                outbox
                    .failed(u32::MAX)
                    .await?
                    .into_iter()
                    .map(|f| f.seq)
                    .collect()
            } else {
                seqs.clone()
            };
            if seqs.is_empty() {
                return Err(BusError::new(
                    ErrorKind::NotFound,
                    format!(
                        "nothing to retry: the outbox {:?} has no failed rows",
                        outbox.table()
                    ),
                ));
            }
            let moved = outbox.retry_failed(&seqs).await?;
            if moved < seqs.len() as u64 {
                let present: std::collections::HashSet<i64> = outbox
                    .failed(u32::MAX)
                    .await?
                    .into_iter()
                    .map(|f| f.seq)
                    .collect();
                let missing: Vec<String> = seqs
                    .iter()
                    .filter(|s| !present.contains(s))
                    .map(|s| s.to_string())
                    .collect();
                return Err(BusError::new(
                    ErrorKind::NotFound,
                    format!(
                        "moved {moved} row(s) back; no failed row with seq {} (`bus outbox failed` lists them)",
                        missing.join(", ")
                    ),
                ));
            }
            if cli.json {
                println!("{}", json!({"retried": moved}));
            } else {
                println!("moved {moved} row(s) back to the outbox");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `bus schema ...`.
pub async fn schema(
    cli: &Cli,
    config: &BusConfig,
    bucket: &str,
    cmd: &SchemaCommand,
) -> Result<ExitCode, BusError> {
    if config.bus_type != BusType::Nats {
        return Err(BusError::config(
            "type",
            if config.bus_type == BusType::Kafka {
                "kafka"
            } else {
                "memory"
            },
            "the shared registry lives on NATS: pass --url nats://HOST:4222 or set EVENT_BUS_TYPE=nats",
        ));
    }
    let client = event_bus::async_nats::connect(config.nats.urls.join(","))
        .await
        .map_err(|e| {
            BusError::with_source(
                ErrorKind::Unavailable,
                format!("connecting to NATS: {e}"),
                e,
            )
        })?;
    let registry = Registry::nats(client, bucket).await?;
    let read = |file: &std::path::Path| -> Result<Value, BusError> {
        let bytes = std::fs::read(file).map_err(|e| {
            BusError::with_source(
                ErrorKind::Config,
                format!("reading {}: {e}", file.display()),
                e,
            )
        })?;
        parse_schema(&file.display().to_string(), &bytes)
    };
    match cmd {
        SchemaCommand::Ls => {
            let rows: Vec<Value> = registry
                .types()
                .into_iter()
                .filter_map(|t| registry.get(&t).map(|e| (t, e)))
                .map(|(t, e)| {
                    json!({
                        "type": t,
                        "subject": e.settings.subject,
                        "compatibility": e.settings.compatibility.to_string(),
                        "validation": e.settings.validation,
                        "versions": e.versions.keys().collect::<Vec<_>>(),
                    })
                })
                .collect();
            print_rows(cli, rows, |rows| {
                for r in rows {
                    println!(
                        "{}  {}  {}  versions {}",
                        r["type"].as_str().unwrap_or(""),
                        r["subject"].as_str().unwrap_or(""),
                        r["compatibility"].as_str().unwrap_or(""),
                        r["versions"]
                    );
                }
            });
            Ok(ExitCode::SUCCESS)
        }
        SchemaCommand::Show { type_name, version } => {
            let v = match version {
                Some(n) => registry.version(type_name, *n),
                None => registry.latest(type_name),
            }
            .ok_or_else(|| {
                BusError::new(
                    ErrorKind::NotFound,
                    format!("{type_name} has no version {version:?}"),
                )
            })?;
            if cli.json {
                println!(
                    "{}",
                    json!({"type": type_name, "version": v.version, "schema": v.schema})
                );
            } else {
                println!("{type_name} v{}", v.version);
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v.schema).unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SchemaCommand::Register { type_name, file } => {
            let version = registry.register(type_name, read(file)?).await?;
            if cli.json {
                println!("{}", json!({"type": type_name, "version": version}));
            } else {
                println!("{type_name} v{version}");
            }
            Ok(ExitCode::SUCCESS)
        }
        SchemaCommand::Check { type_name, file } => {
            let schema = read(file)?;
            match registry.check(type_name, &schema) {
                Ok(next) => {
                    if cli.json {
                        println!("{}", json!({"compatible": true, "next_version": next}));
                    } else {
                        println!("compatible: would be {type_name} v{next}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(changes) => {
                    print_changes(cli, false, &changes);
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        SchemaCommand::Diff {
            type_name,
            from,
            to,
        } => {
            let get = |n: u32| {
                registry.version(type_name, n).ok_or_else(|| {
                    BusError::new(
                        ErrorKind::NotFound,
                        format!("{type_name} has no version {n}"),
                    )
                })
            };
            let (old, new) = (get(*from)?, get(*to)?);
            let changes = compat::check(Mode::Full, &[(*from, &old.schema)], &new.schema)
                .err()
                .unwrap_or_default();
            print_changes(cli, changes.is_empty(), &changes);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_changes(cli: &Cli, compatible: bool, changes: &[compat::Change]) {
    if cli.json {
        println!("{}", json!({"compatible": compatible, "changes": changes}));
    } else if changes.is_empty() {
        println!("no breaking change either way");
    } else {
        for c in changes {
            println!("{c}");
        }
    }
}
