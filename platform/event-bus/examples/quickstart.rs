//! Quickstart: publish and receive three events through whichever bus the
//! configuration selects.
//!
//! ```text
//! cargo run -p event-bus --example quickstart                      # in-memory (the default)
//! EVENT_BUS_TYPE=nats EVENT_BUS_NATS_URL=nats://127.0.0.1:4222 \
//!     cargo run -p event-bus --example quickstart                  # NATS JetStream, same code
//! ```
//!
//! The bus comes from [`event_bus::BusConfig::load`] (the `EVENT_BUS_CONFIG`
//! file if set, then the `EVENT_BUS_*` environment variables) and
//! [`event_bus::connect`], so switching backends is a configuration change
//! only. The example subscribes to `auth.events.>`, publishes
//! `user.created`, `user.updated` and `user.profile.updated`, prints each event
//! as it arrives and a summary line, and exits 0; on any error (bad
//! configuration, server unreachable, an event missing or different after
//! the timeout) it prints the reason and exits 1.

use event_bus::{BusConfig, EventBus};
use futures::StreamExt;
use serde_json::{json, Value};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long to wait for each event.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(5);

type Error = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Error> {
    let started = Instant::now();
    let config = BusConfig::load().map_err(|e| format!("loading the configuration: {e}"))?;
    let bus: Arc<dyn EventBus> = event_bus::connect(&config).await.map_err(|e| {
        let kind = format!("{:?}", config.bus_type).to_lowercase();
        format!("connecting the {kind} bus: {e}")
    })?;
    println!("event bus: {} backend", bus.backend_name());

    // Subscribe to all auth events.
    let mut events = bus.subscribe("auth.events.>").await?;

    let sent: [(&str, Value); 3] = [
        (
            "auth.events.user.created",
            json!({
                "event_type": "user.created",
                "user_id": "usr_123",
                "email": "ada@example.com",
                "timestamp": "2026-02-11T23:00:00Z"
            }),
        ),
        (
            "auth.events.user.updated",
            json!({
                "event_type": "user.updated",
                "user_id": "usr_123",
                "email": "ada.lovelace@example.com",
                "timestamp": "2026-02-11T23:05:00Z"
            }),
        ),
        (
            "auth.events.user.profile.updated",
            json!({
                "event_type": "user.profile.updated",
                "user_id": "usr_123",
                "display_name": "Ada",
                "timestamp": "2026-02-11T23:06:00Z"
            }),
        ),
    ];
    for (subject, event) in &sent {
        bus.publish(subject, serde_json::to_vec(event)?).await?;
        println!("published {subject}");
    }

    for (i, (subject, event)) in sent.iter().enumerate() {
        let msg = tokio::time::timeout(RECEIVE_TIMEOUT, events.next())
            .await
            .map_err(|_| {
                format!(
                    "received {i} of {} events; no event within {RECEIVE_TIMEOUT:?} (expected {subject})",
                    sent.len()
                )
            })?
            .ok_or_else(|| format!("the subscription ended after {i} events"))?;
        let payload: Value = serde_json::from_slice(&msg.payload)
            .map_err(|e| format!("event on {} is not JSON: {e}", msg.subject))?;
        println!(
            "received subject={} id={} payload={payload}",
            msg.subject, msg.id
        );
        if msg.subject != *subject || payload != *event {
            return Err(format!(
                "event {} differs: expected {subject} {event}, got {} {payload}",
                i + 1,
                msg.subject
            )
            .into());
        }
    }

    println!(
        "ok: published {n} and received {n} events on auth.events.> via the {} bus in {:.1?}",
        bus.backend_name(),
        started.elapsed(),
        n = sent.len(),
    );
    Ok(())
}
