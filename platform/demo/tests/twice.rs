//! The demo, run twice in a row against one nats-server (within the bus's
//! duplicate window): the second run's events must not be dropped as
//! duplicates of the first's (message ids come from the rows the
//! transaction created, not from a client's key), and the second run must
//! count only its own dead letter.

use event_bus_testkit::nats_server::NatsServer;
use std::process::Command;

fn run_demo(nats_url: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_platform-demo"))
        .arg("--once")
        .env("EVENT_BUS_TYPE", "nats")
        .env("EVENT_BUS_NATS_URL", nats_url)
        .env_remove("EVENT_BUS_CONFIG")
        .env_remove("DEMO_PORT")
        .output()
        .expect("the demo binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_runs_twice_against_one_nats_server() {
    let server = NatsServer::start().await.expect("nats-server");
    let url = server.url();
    for run in 1..=2 {
        let u = url.clone();
        let (ok, text) = tokio::task::spawn_blocking(move || run_demo(&u))
            .await
            .unwrap();
        println!("--- run {run}\n{text}");
        assert!(ok, "run {run} of the demo failed:\n{text}");
        assert!(
            text.contains("handled by notifications       3"),
            "run {run}: the runner did not handle this run's three users:\n{text}"
        );
        assert!(
            text.contains("outbox rows sent by the relay  4 (duplicates dropped by the bus: 0)"),
            "run {run}: the relay's events were dropped as duplicates:\n{text}"
        );
        // Listing dead letters reads them in place: every run sees the
        // earlier runs' letters, once each, and its own.
        let dead = format!(
            "dead letters                   1 (and {} from earlier runs)",
            run - 1
        );
        assert!(
            text.contains(&dead),
            "run {run}: expected {dead:?}:\n{text}"
        );
    }
}
