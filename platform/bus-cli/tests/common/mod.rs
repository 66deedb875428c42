//! Running the `bus` binary from the test files (each uses part of this).
#![allow(dead_code)]

use std::process::{Command, Output};

/// `bus` with `args` and no configuration of the caller's environment.
pub fn command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bus"));
    c.args(args).env_remove("EVENT_BUS_CONFIG");
    c
}

/// Runs `bus` with `args` against the nats-server at `url`.
pub fn bus_on_nats(url: &str, args: &[&str]) -> Output {
    command(args)
        .env("EVENT_BUS_TYPE", "nats")
        .env("EVENT_BUS_NATS_URL", url)
        .output()
        .expect("run bus")
}

/// Checks that a `bus` run succeeded (its output shown if not).
pub fn succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "bus failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Three events on `orders.a`, `orders.b`, `orders.c`, each dead-lettered by
/// the durable consumer `billing` (one delivery allowed) with the reason
/// `bad <suffix>`, on any bus.
pub async fn three_dead_letters(bus: &std::sync::Arc<dyn event_bus::EventBus>) {
    use event_bus::{ConsumerConfig, EventBusExt};
    use futures::StreamExt;
    let mut orders = bus
        .consume(ConsumerConfig::new("billing", "orders.*").max_deliver(1))
        .await
        .expect("a durable consumer");
    for suffix in ["a", "b", "c"] {
        bus.publish(&format!("orders.{suffix}"), suffix.as_bytes().to_vec())
            .await
            .unwrap();
    }
    for _ in 0..3 {
        let d = tokio::time::timeout(std::time::Duration::from_secs(30), orders.next())
            .await
            .expect("a delivery within 30 s")
            .expect("the stream goes on")
            .expect("no error");
        let reason = format!("bad {}", String::from_utf8_lossy(&d.payload));
        d.nack_with_reason(None, reason)
            .await
            .expect("the last delivery's nack dead-letters it");
    }
}
