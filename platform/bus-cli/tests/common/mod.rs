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
