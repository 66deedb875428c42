//! Configuration parsing: TOML (`BusConfig::from_toml_str`), JSON
//! (`BusConfig::from_json_str`) and the environment (`BusConfig::apply_env`,
//! which reads variables through a function, so no process environment is
//! touched).
//!
//! Input: UTF-8 text, parsed as TOML, as JSON, and as `NAME=value` lines
//! for the environment. No panic; every error is a `Config` error that
//! names the variable or field; what parses survives a JSON round trip
//! (secrets redacted, everything else unchanged), never shows a secret in
//! its Debug form, and, if it validates, has timeouts a timer can take; what
//! `apply_env` accepts is valid.
#![no_main]

use event_bus::{BusConfig, BusType, ErrorKind};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn check_parsed(text: &str, parsed: Result<BusConfig, event_bus::BusError>, what: &str) {
    let config = match parsed {
        Err(e) => {
            assert_eq!(
                e.kind(),
                ErrorKind::Config,
                "{what} error of another kind: {e}"
            );
            return;
        }
        Ok(config) => config,
    };
    check_config(&config);
    // Written out (secrets redacted) and read back, it is the same
    // configuration apart from the secrets (durations in their text form
    // included), and writing that out gives the same text.
    let json = serde_json::to_string(&config)
        .unwrap_or_else(|e| panic!("{what} {text:?} parsed but cannot be written: {e}"));
    let back = BusConfig::from_json_str(&json)
        .unwrap_or_else(|e| panic!("{what} {text:?} written as {json} does not parse: {e}"));
    assert_eq!(
        serde_json::to_string(&back).unwrap(),
        json,
        "{what} {text:?}"
    );
    let (a, b) = (&config.nats, &back.nats);
    assert_eq!(back.bus_type, config.bus_type);
    assert_eq!(back.memory, config.memory);
    assert_eq!(
        (&b.streams, &b.tls, &b.tenant, &b.user, &b.credentials_file),
        (&a.streams, &a.tls, &a.tenant, &a.user, &a.credentials_file),
        "{what} {text:?} round trip through {json}"
    );
    assert_eq!(
        (
            b.connect_timeout,
            b.publish_timeout,
            b.auto_create_streams,
            b.urls.len()
        ),
        (
            a.connect_timeout,
            a.publish_timeout,
            a.auto_create_streams,
            a.urls.len()
        ),
        "{what} {text:?} round trip through {json}"
    );
}

/// What holds for any configuration that parsed.
fn check_config(config: &BusConfig) {
    // Secrets are never shown: a token or password does not appear in the
    // Debug form (unless it is text that the form shows anyway).
    let shown = format!("{config:?}");
    let mut without = config.clone();
    without.nats.token = None;
    without.nats.password = None;
    let shown_without = format!("{without:?}");
    for secret in [&config.nats.token, &config.nats.password]
        .into_iter()
        .flatten()
    {
        let s = secret.expose();
        if !s.is_empty() && !shown_without.contains(s) && !"Some([redacted])".contains(s) {
            assert!(!shown.contains(s), "the secret {s:?} is shown in {shown}");
        }
    }
    // A NATS configuration that validates can be used: its timeouts (and
    // the margin the connection adds) fit in a timer. (The `nats` section
    // of a memory configuration is not checked, nor used.)
    if config.bus_type == BusType::Nats && config.validate().is_ok() {
        let now = Instant::now();
        for d in [config.nats.connect_timeout, config.nats.publish_timeout] {
            assert!(
                d.checked_add(Duration::from_secs(1))
                    .and_then(|d| now.checked_add(d))
                    .is_some(),
                "a valid configuration has the timeout {d:?}, too large for a timer"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_parsed(text, BusConfig::from_toml_str(text), "TOML");
    check_parsed(text, BusConfig::from_json_str(text), "JSON");

    // The environment: `NAME=value` lines (a later line wins, as a shell would).
    let vars: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let mut config = BusConfig::default();
    match config.apply_env(|k| vars.get(k).map(|v| v.to_string())) {
        Ok(()) => {
            assert!(
                config.validate().is_ok(),
                "apply_env accepted an invalid {config:?}"
            );
            check_config(&config);
        }
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Config, "{e}");
            let text = e.to_string();
            assert!(
                ["EVENT_BUS_", "nats.", "memory.", "streams["]
                    .iter()
                    .any(|f| text.contains(f)),
                "the error names no variable or field: {text}"
            );
        }
    }
});
