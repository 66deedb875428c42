//! Configuration parsing: TOML (`BusConfig::from_toml_str`), JSON
//! (`BusConfig::from_json_str`) and the environment (`BusConfig::apply_env`,
//! which reads variables through a function, so no process environment is
//! touched).
//!
//! Input: UTF-8 text, parsed as TOML, as JSON, and as `NAME=value` lines
//! for the environment. No panic; every error is a `Config` error; what
//! parses survives a JSON round trip unchanged; `validate` never panics and
//! what `apply_env` accepts is valid.
#![no_main]

use event_bus::{BusConfig, ErrorKind};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;

fn check_parsed(text: &str, parsed: Result<BusConfig, event_bus::BusError>, what: &str) {
    match parsed {
        Err(e) => assert_eq!(
            e.kind(),
            ErrorKind::Config,
            "{what} error of another kind: {e}"
        ),
        Ok(config) => {
            let _ = config.validate();
            // Written out and read back, it is the same configuration
            // (durations in their text form included).
            let json = serde_json::to_string(&config)
                .unwrap_or_else(|e| panic!("{what} {text:?} parsed but cannot be written: {e}"));
            let back = BusConfig::from_json_str(&json).unwrap_or_else(|e| {
                panic!("{what} {text:?} written as {json} does not parse: {e}")
            });
            assert_eq!(back, config, "{what} {text:?} round trip through {json}");
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
        Ok(()) => assert!(
            config.validate().is_ok(),
            "apply_env accepted an invalid {config:?}"
        ),
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
