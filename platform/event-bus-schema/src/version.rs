//! One version of an event type's schema: reading and checking a schema
//! (size, meta-schema, `$ref` cycles, compilation), its validator (compiled
//! on first use, validating the borrowed document that `src/instance.rs`
//! parses a payload into), and what a failed validation says.

use crate::instance::{Instance, InstanceJson};
use event_bus::{BusError, ErrorKind};
use serde::Serialize;
use serde_json::Value;
use std::sync::{Arc, OnceLock};

/// The largest schema the registry accepts, in bytes of JSON.
pub const MAX_SCHEMA_BYTES: usize = 256 * 1024;

/// One registered version of a type's schema, with its validator compiled
/// on first use.
pub struct Version {
    /// The type.
    pub type_name: String,
    /// Its number (1, 2, ...).
    pub version: u32,
    /// The schema.
    pub schema: Value,
    validator: OnceLock<Result<jsonschema::Validator<InstanceJson>, String>>,
}

impl Version {
    pub(crate) fn new(type_name: &str, version: u32, schema: Value) -> Self {
        Version {
            type_name: type_name.to_string(),
            version,
            schema,
            validator: OnceLock::new(),
        }
    }

    /// The `ce-dataschema` URI naming this version.
    pub fn uri(&self) -> String {
        format!("urn:event-bus:schema:{}:v{}", self.type_name, self.version)
    }

    /// Validates `payload` against this version: the version, or why not
    /// (the one way in is [`Registry::validate`](crate::Registry::validate),
    /// which looks the version up first).
    pub(crate) fn validate(
        self: &Arc<Self>,
        payload: Payload<'_>,
    ) -> Result<Arc<Version>, ValidationFailure> {
        let invalid = |violations| ValidationFailure::Invalid {
            version: self.clone(),
            violations,
        };
        let instance = match payload {
            Payload::Json(bytes) => Instance::parse(bytes).map_err(|e| {
                invalid(vec![Violation {
                    pointer: String::new(),
                    message: format!("not JSON: {e}"),
                }])
            })?,
            Payload::Value(value) => Instance::from_value(value),
        };
        let validator = self
            .validator
            .get_or_init(|| compile(&self.schema))
            .as_ref()
            .map_err(|e| {
                invalid(vec![Violation {
                    pointer: String::new(),
                    message: format!("the schema does not compile: {e}"),
                }])
            })?;
        if validator.is_valid(&instance) {
            return Ok(self.clone());
        }
        Err(invalid(
            validator
                .iter_errors(&instance)
                .map(|e| Violation {
                    pointer: e.instance_path().to_string(),
                    message: e.to_string(),
                })
                .collect(),
        ))
    }
}

impl std::fmt::Debug for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Version")
            .field("type_name", &self.type_name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Compiles a schema in the draft its `$schema` names (2020-12 without
/// one); references resolve inside the schema only (nothing is fetched).
fn compile(schema: &Value) -> Result<jsonschema::Validator<InstanceJson>, String> {
    jsonschema::options_for::<InstanceJson>()
        .with_draft(draft(schema)?)
        .build(schema)
        .map_err(|e| format!("{e} (at {})", e.schema_path()))
}

/// The draft a schema is written in: the one its `$schema` names (draft 4,
/// 6, 7, 2019-09 or 2020-12), or 2020-12 without `$schema`. Any other
/// `$schema` is an error naming it.
fn draft(schema: &Value) -> Result<jsonschema::Draft, String> {
    use jsonschema::Draft;
    let Some(declared) = schema.as_object().and_then(|s| s.get("$schema")) else {
        return Ok(Draft::Draft202012);
    };
    let uri = declared
        .as_str()
        .ok_or_else(|| format!("`$schema` {declared} is not a string"))?;
    match Draft::from_schema_uri(uri) {
        Draft::Unknown => Err(format!(
            "unknown `$schema` {uri:?}: expected the meta-schema of draft 4, 6, 7, 2019-09 \
             or 2020-12 (e.g. \"https://json-schema.org/draft/2020-12/schema\"), or no `$schema` \
             for 2020-12"
        )),
        known => Ok(known),
    }
}

/// One way an event does not match its schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// JSON Pointer of the offending value in the event ("" for the root).
    pub pointer: String,
    /// What is wrong.
    pub message: String,
}

/// Formats violations for an error message: `"/email: ..., /age: ..."`.
pub fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| {
            let at = if v.pointer.is_empty() {
                "/"
            } else {
                &v.pointer
            };
            format!("{at}: {}", v.message)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Parses and checks a schema: JSON, at most [`MAX_SCHEMA_BYTES`], valid
/// against its meta-schema (the draft its `$schema` names: 4, 6, 7, 2019-09
/// or 2020-12, the default), and compilable (references resolve inside it).
/// `origin` names where it came from (a file, a type and version).
pub fn parse_schema(origin: &str, bytes: &[u8]) -> Result<Value, BusError> {
    check_size(origin, bytes.len())?;
    let schema: Value = serde_json::from_slice(bytes).map_err(|e| {
        BusError::with_source(
            ErrorKind::Codec,
            format!("schema {origin} is not JSON: {e}"),
            e,
        )
    })?;
    check_schema(origin, &schema)?;
    Ok(schema)
}

/// Refuses a schema of more than [`MAX_SCHEMA_BYTES`] bytes of JSON.
pub(crate) fn check_size(origin: &str, bytes: usize) -> Result<(), BusError> {
    if bytes > MAX_SCHEMA_BYTES {
        return Err(BusError::new(
            ErrorKind::PayloadTooLarge,
            format!("schema {origin} is {bytes} bytes, over the limit of {MAX_SCHEMA_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Checks a schema value (see [`parse_schema`]).
pub fn check_schema(origin: &str, schema: &Value) -> Result<(), BusError> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err(BusError::new(
            ErrorKind::Config,
            format!("schema {origin} at /: a schema is an object or a boolean"),
        ));
    }
    if let Some(cycle) = ref_cycle(schema) {
        return Err(BusError::new(
            ErrorKind::Config,
            format!(
                "schema {origin} at {}: a $ref cycle ({}) never reaches a schema",
                cycle[0],
                cycle.join(" -> ")
            ),
        ));
    }
    if let Err(e) = draft(schema) {
        return Err(BusError::new(
            ErrorKind::Config,
            format!("schema {origin} at /$schema: {e}"),
        ));
    }
    if let Err(e) = jsonschema::meta::validate(schema) {
        let at = e.instance_path().to_string();
        return Err(BusError::new(
            ErrorKind::Config,
            format!(
                "schema {origin} at {}: {e}",
                if at.is_empty() { "/" } else { &at }
            ),
        ));
    }
    compile(schema).map_err(|e| {
        BusError::new(
            ErrorKind::Config,
            format!("schema {origin} does not compile: {e}"),
        )
    })?;
    Ok(())
}

/// A chain of local `$ref`s that comes back to where it started without
/// passing through any other keyword (`a` → `b` → `a`): its pointers.
/// (Recursion through `properties` or `items` is legitimate and allowed.)
fn ref_cycle(schema: &Value) -> Option<Vec<String>> {
    fn walk(schema: &Value, at: &mut String, node: &Value, found: &mut Option<Vec<String>>) {
        if found.is_some() {
            return;
        }
        match node {
            Value::Object(map) => {
                if map.contains_key("$ref") {
                    let mut chain = vec![if at.is_empty() {
                        "/".to_string()
                    } else {
                        at.clone()
                    }];
                    let mut current = node;
                    while let Some(target) = current
                        .get("$ref")
                        .and_then(Value::as_str)
                        .and_then(|r| r.strip_prefix('#'))
                    {
                        let shown = if target.is_empty() {
                            "/".to_string()
                        } else {
                            target.to_string()
                        };
                        if chain.contains(&shown) {
                            chain.push(shown);
                            *found = Some(chain);
                            return;
                        }
                        chain.push(shown);
                        match schema.pointer(target) {
                            Some(next) => current = next,
                            None => break,
                        }
                    }
                }
                for (key, value) in map {
                    let len = at.len();
                    at.push('/');
                    at.push_str(&key.replace('~', "~0").replace('/', "~1"));
                    walk(schema, at, value, found);
                    at.truncate(len);
                }
            }
            Value::Array(items) => {
                for (i, value) in items.iter().enumerate() {
                    let len = at.len();
                    at.push('/');
                    at.push_str(&i.to_string());
                    walk(schema, at, value, found);
                    at.truncate(len);
                }
            }
            _ => {}
        }
    }
    let mut found = None;
    walk(schema, &mut String::new(), schema, &mut found);
    found
}

/// An event's payload to validate: JSON text as it travels, or a value
/// already parsed (a structured CloudEvent's `data`). `&[u8]`, `&Vec<u8>`,
/// a byte string literal and `&serde_json::Value` convert into it.
#[derive(Clone, Copy, Debug)]
pub enum Payload<'a> {
    /// Bytes of JSON text (parsed here; text that is not JSON is a
    /// violation at the root).
    Json(&'a [u8]),
    /// A parsed JSON value.
    Value(&'a Value),
}

impl<'a> From<&'a [u8]> for Payload<'a> {
    fn from(bytes: &'a [u8]) -> Self {
        Payload::Json(bytes)
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for Payload<'a> {
    fn from(bytes: &'a [u8; N]) -> Self {
        Payload::Json(bytes)
    }
}

impl<'a> From<&'a Vec<u8>> for Payload<'a> {
    fn from(bytes: &'a Vec<u8>) -> Self {
        Payload::Json(bytes)
    }
}

impl<'a> From<&'a Value> for Payload<'a> {
    fn from(value: &'a Value) -> Self {
        Payload::Value(value)
    }
}

/// Why a payload did not validate.
#[derive(Debug)]
pub enum ValidationFailure {
    /// The type or the version is not registered.
    UnknownVersion {
        /// The type.
        type_name: String,
        /// The version asked for (`None`: the latest, and there is none).
        version: Option<u32>,
    },
    /// It does not match the version.
    Invalid {
        /// The version checked.
        version: Arc<Version>,
        /// What is wrong, by JSON Pointer.
        violations: Vec<Violation>,
    },
}

impl ValidationFailure {
    /// An error message naming the subject, type, version and violations.
    pub fn describe(&self, subject: &str) -> String {
        match self {
            ValidationFailure::UnknownVersion {
                type_name,
                version: Some(v),
            } => {
                format!("event on {subject:?} claims {type_name} v{v}, which is not registered")
            }
            ValidationFailure::UnknownVersion {
                type_name,
                version: None,
            } => {
                format!("event on {subject:?}: type {type_name} has no registered version")
            }
            ValidationFailure::Invalid {
                version,
                violations,
            } => format!(
                "event on {subject:?} does not match {} v{}: {}",
                version.type_name,
                version.version,
                describe(violations)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_cycles_are_found_and_recursion_allowed() {
        let cycle = serde_json::json!({
            "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
            "$ref": "#/$defs/a"
        });
        assert_eq!(
            ref_cycle(&cycle).unwrap(),
            vec!["/", "/$defs/a", "/$defs/b", "/$defs/a"]
        );
        assert!(ref_cycle(&serde_json::json!({"$ref": "#"})).is_some());
        let tree = serde_json::json!({
            "$defs": {"node": {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
            "$ref": "#/$defs/node"
        });
        assert_eq!(ref_cycle(&tree), None);
    }
}
