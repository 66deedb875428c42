//! Serde helpers for durations written as `"5s"`, `"250ms"`, `"1h 30m"`
//! (`#[serde(with = "crate::duration_str")]`), shared by the settings of
//! every backend.

use serde::{Deserialize, Deserializer, Serializer};
use std::time::Duration;

pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?} ({e}); write e.g. \"250ms\", \"5s\", \"2m\""
        ))
    })
}
