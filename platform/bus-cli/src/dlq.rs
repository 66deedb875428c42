//! `bus dlq`: list, show, replay and discard dead letters, on any
//! [`EventBus`] (through [`event_bus::dlq::DeadLetterQueue`], which reads
//! them where they are stored and creates nothing: no stream, no consumer).
//!
//! Each function returns the rows the command prints: one JSON object per
//! dead letter ([`dead_letter_json`]).

use event_bus::dlq::{DeadLetter, DeadLetterQueue};
use event_bus::{BusError, ErrorKind, EventBus};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Which dead letters a command acts on.
#[derive(clap::Args, Debug, Clone)]
pub struct DlqFilter {
    /// The dead-letter subject (`dlq.<runner>` for a runner's).
    pub subject: String,
    /// Only those of this consumer.
    #[arg(long)]
    pub consumer: Option<String>,
    /// Only those whose last error contains this text.
    #[arg(long)]
    pub error_contains: Option<String>,
    /// Only those dead-lettered within this long (e.g. `1h`).
    #[arg(long)]
    pub since: Option<humantime::Duration>,
    /// At most this many.
    #[arg(long, default_value_t = 1000)]
    pub max: usize,
}

impl DlqFilter {
    /// Every dead letter on `subject` (up to 1,000).
    pub fn on(subject: impl Into<String>) -> Self {
        DlqFilter {
            subject: subject.into(),
            consumer: None,
            error_contains: None,
            since: None,
            max: 1000,
        }
    }
}

/// A dead letter as the commands print it: id, stream, sequence, origin,
/// consumer, handler, delivery count, reason, time and payload (as text).
pub fn dead_letter_json(d: &DeadLetter) -> Value {
    let m = d.message();
    json!({
        "id": m.id.to_string(),
        "stream": d.stream(),
        "sequence": m.sequence,
        "original_subject": d.original_subject(),
        "original_id": d.original_id(),
        "consumer": d.consumer(),
        "handler": d.handler(),
        "delivery_count": d.delivery_count(),
        "reason": d.reason(),
        "dead_lettered_at": d.dead_lettered_at().map(|t| humantime::format_rfc3339_millis(t).to_string()),
        "payload": String::from_utf8_lossy(&m.payload),
    })
}

/// The dead letters stored on `filter.subject` that pass `filter`, read
/// without creating anything on the bus (no stream, no consumer).
pub async fn matching(
    bus: Arc<dyn EventBus>,
    filter: &DlqFilter,
) -> Result<Vec<DeadLetter>, BusError> {
    let mut queue = DeadLetterQueue::open(bus, &filter.subject, "bus-cli").await?;
    let mut out = Vec::new();
    while out.len() < filter.max {
        let Some(d) = queue.next(Duration::ZERO).await? else {
            break;
        };
        let recent = filter.since.is_none_or(|since| {
            d.dead_lettered_at()
                .is_some_and(|at| at.elapsed().unwrap_or_default() <= Duration::from(since))
        });
        let keep = recent
            && filter
                .consumer
                .as_deref()
                .is_none_or(|c| d.consumer() == Some(c))
            && filter
                .error_contains
                .as_deref()
                .is_none_or(|t| d.reason().is_some_and(|r| r.contains(t)));
        if keep {
            out.push(d);
        }
    }
    Ok(out)
}

/// `bus dlq ls`: the dead letters passing `filter` (they stay).
pub async fn list(bus: Arc<dyn EventBus>, filter: &DlqFilter) -> Result<Vec<Value>, BusError> {
    Ok(matching(bus, filter)
        .await?
        .iter()
        .map(dead_letter_json)
        .collect())
}

/// `bus dlq show`: the dead letter `id` on `subject`, whole (with its
/// headers); [`NotFound`](ErrorKind::NotFound) naming both if there is none.
pub async fn show(bus: Arc<dyn EventBus>, subject: &str, id: &str) -> Result<Value, BusError> {
    let filter = DlqFilter {
        max: usize::MAX,
        ..DlqFilter::on(subject)
    };
    let found = matching(bus, &filter)
        .await?
        .into_iter()
        .find(|d| d.message().id == id);
    let d = found.ok_or_else(|| {
        BusError::new(
            ErrorKind::NotFound,
            format!("no dead letter {id:?} on {subject:?}"),
        )
    })?;
    let mut v = dead_letter_json(&d);
    v["headers"] = d
        .message()
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect::<serde_json::Map<_, _>>()
        .into();
    Ok(v)
}

/// `bus dlq replay`: publishes each dead letter passing `filter` again on
/// its original subject, then removes it (`dry_run`: only lists them), at
/// most `rate` per second; `each` is called before each one, with how many
/// are to be replayed (for a progress bar). The rows of
/// those replayed. Nothing to replay is a [`NotFound`](ErrorKind::NotFound)
/// error; a failed replay stops there with its error.
pub async fn replay(
    bus: Arc<dyn EventBus>,
    filter: &DlqFilter,
    dry_run: bool,
    rate: Option<f64>,
    mut each: impl FnMut(usize),
) -> Result<Vec<Value>, BusError> {
    let found = something_to(matching(bus, filter).await?, "replay", filter)?;
    // A rate too small to give a pause (1e-300/s) pauses without end.
    let pause = rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::try_from_secs_f64(1.0 / r).unwrap_or(Duration::MAX));
    let total = found.len();
    let mut done = Vec::new();
    for d in found {
        each(total);
        let row = dead_letter_json(&d);
        if !dry_run {
            d.replay().await?;
            if let Some(p) = pause {
                tokio::time::sleep(p).await;
            }
        }
        done.push(row);
    }
    Ok(done)
}

/// `bus dlq discard`: removes each dead letter passing `filter` without
/// replaying it (`dry_run`: only lists them). The rows of those removed.
/// Nothing to discard is a [`NotFound`](ErrorKind::NotFound) error.
pub async fn discard(
    bus: Arc<dyn EventBus>,
    filter: &DlqFilter,
    dry_run: bool,
) -> Result<Vec<Value>, BusError> {
    let found = something_to(matching(bus, filter).await?, "discard", filter)?;
    let mut done = Vec::new();
    for d in found {
        done.push(dead_letter_json(&d));
        if !dry_run {
            d.discard().await?;
        }
    }
    Ok(done)
}

/// `found`, or an error saying there is nothing to `action` (a command
/// with nothing to act on fails, exit 1, rather than report 0 and succeed).
fn something_to(
    found: Vec<DeadLetter>,
    action: &str,
    filter: &DlqFilter,
) -> Result<Vec<DeadLetter>, BusError> {
    if !found.is_empty() {
        return Ok(found);
    }
    let mut only = Vec::new();
    if let Some(c) = &filter.consumer {
        only.push(format!("consumer {c:?}"));
    }
    if let Some(e) = &filter.error_contains {
        only.push(format!("error containing {e:?}"));
    }
    if filter.since.is_some() {
        only.push("within --since".to_string());
    }
    let only = if only.is_empty() {
        String::new()
    } else {
        format!(" (only {})", only.join(", "))
    };
    Err(BusError::new(
        ErrorKind::NotFound,
        format!(
            "nothing to {action}: no dead letter on {:?}{only}; `bus dlq ls {}` lists what is there",
            filter.subject, filter.subject
        ),
    ))
}
