//! The JSON document a payload is validated as: parsed by `serde_json`,
//! its strings borrowed from the payload and each object a list of members,
//! so that parsing an event allocates once per object or array instead of
//! once per key, string and map node as a `serde_json::Value` does (that
//! parse was most of the cost of validating an event). `jsonschema`
//! validates it through its custom-representation traits
//! ([`jsonschema::json`]); the schemas stay `serde_json::Value`s.
//!
//! An object keeps its members in document order; a name given twice is
//! looked up as its last occurrence, like `serde_json::Value`. Looking a
//! member up scans the list: fine for events (tens of members), linear for
//! an object with thousands of members per property the schema names.

use jsonschema::json::{cmp, Array, Json, Node, NodeIdentity, Object};
use jsonschema::JsonType;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::borrow::Cow;
use std::fmt;

/// One JSON value, its strings borrowed where the text had no escapes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Instance<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Instance<'a>>),
    Object(Vec<(Cow<'a, str>, Instance<'a>)>),
}

impl<'a> Instance<'a> {
    /// Parses a JSON payload (`serde_json`'s parser and limits: nesting
    /// deeper than 128 is an error).
    pub(crate) fn parse(payload: &'a [u8]) -> Result<Self, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(payload);
        let instance = InstanceSeed.deserialize(&mut de)?;
        de.end()?;
        Ok(instance)
    }

    /// The same document as a parsed `Value` (borrowing its strings).
    pub(crate) fn from_value(value: &'a Value) -> Self {
        match value {
            Value::Null => Instance::Null,
            Value::Bool(b) => Instance::Bool(*b),
            Value::Number(n) => Instance::Number(n.clone()),
            Value::String(s) => Instance::String(Cow::Borrowed(s)),
            Value::Array(items) => Instance::Array(items.iter().map(Self::from_value).collect()),
            Value::Object(members) => Instance::Object(
                members
                    .iter()
                    .map(|(k, v)| (Cow::Borrowed(k.as_str()), Self::from_value(v)))
                    .collect(),
            ),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Instance::Null => Value::Null,
            Instance::Bool(b) => Value::Bool(*b),
            Instance::Number(n) => Value::Number(n.clone()),
            Instance::String(s) => Value::String(s.to_string()),
            Instance::Array(items) => Value::Array(items.iter().map(Self::to_json).collect()),
            Instance::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_json()))
                    .collect::<Map<_, _>>(),
            ),
        }
    }
}

/// Builds an [`Instance`] from any deserializer, borrowing its strings.
struct InstanceSeed;

impl<'de> DeserializeSeed<'de> for InstanceSeed {
    type Value = Instance<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Instance<'de>, D::Error> {
        d.deserialize_any(InstanceVisitor)
    }
}

struct InstanceVisitor;

impl<'de> Visitor<'de> for InstanceVisitor {
    type Value = Instance<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Instance<'de>, E> {
        Ok(Instance::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Instance<'de>, E> {
        Ok(Instance::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Instance<'de>, E> {
        Ok(Instance::Bool(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Instance<'de>, E> {
        Ok(Instance::Number(v.into()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Instance<'de>, E> {
        Ok(Instance::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Instance<'de>, E> {
        // JSON text has no NaN or infinity; serde_json never produces them.
        Number::from_f64(v)
            .map(Instance::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Instance<'de>, E> {
        Ok(Instance::String(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Instance<'de>, E> {
        Ok(Instance::String(Cow::Owned(v.to_string())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Instance<'de>, E> {
        Ok(Instance::String(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Instance<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element_seed(InstanceSeed)? {
            items.push(item);
        }
        Ok(Instance::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Instance<'de>, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some(name) = map.next_key_seed(NameSeed)? {
            members.push((name, map.next_value_seed(InstanceSeed)?));
        }
        Ok(Instance::Object(members))
    }
}

/// A member name, borrowed where the text had no escapes.
struct NameSeed;

impl<'de> DeserializeSeed<'de> for NameSeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(NameVisitor)
    }
}

struct NameVisitor;

impl<'de> Visitor<'de> for NameVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

/// [`Instance`] as a `jsonschema` representation.
pub(crate) struct InstanceJson;

impl Json for InstanceJson {
    type Node<'a> = &'a Instance<'a>;
    type PreparedKey = Box<str>;
    type StringBuffer = ();

    // A look-up scans the members, so one pass over them is never dearer
    // than the look-ups it replaces (bounded: the validator multiplies it).
    const KEYS_PER_LOOKUP: usize = 64;

    fn prepare_key(key: &str) -> Box<str> {
        key.into()
    }

    fn with_string_node<T>((): &mut (), string: &str, f: impl FnOnce(Self::Node<'_>) -> T) -> T {
        f(&Instance::String(Cow::Borrowed(string)))
    }
}

impl<'a> Node<'a, InstanceJson> for &'a Instance<'a> {
    type Object = &'a [(Cow<'a, str>, Instance<'a>)];
    type Array = &'a [Instance<'a>];
    type Number = &'a Number;

    fn as_object(&self) -> Option<Self::Object> {
        match self {
            Instance::Object(members) => Some(members),
            _ => None,
        }
    }
    fn as_array(&self) -> Option<Self::Array> {
        match self {
            Instance::Array(items) => Some(items),
            _ => None,
        }
    }
    fn as_string(&self) -> Option<Cow<'a, str>> {
        match self {
            Instance::String(s) => Some(Cow::Borrowed(s)),
            _ => None,
        }
    }
    fn as_number(&self) -> Option<&'a Number> {
        match self {
            Instance::Number(n) => Some(n),
            _ => None,
        }
    }
    fn as_boolean(&self) -> Option<bool> {
        match self {
            Instance::Bool(b) => Some(*b),
            _ => None,
        }
    }
    fn is_null(&self) -> bool {
        matches!(self, Instance::Null)
    }
    fn json_type(&self) -> JsonType {
        match self {
            Instance::Null => JsonType::Null,
            Instance::Bool(_) => JsonType::Boolean,
            Instance::Number(_) => JsonType::Number,
            Instance::String(_) => JsonType::String,
            Instance::Array(_) => JsonType::Array,
            Instance::Object(_) => JsonType::Object,
        }
    }
    // `enum` and `const` compare scalars in place (no `Value` built).
    fn equals_value(&self, expected: &Value) -> bool {
        match (*self, expected) {
            (Instance::Null, Value::Null) => true,
            (Instance::Bool(a), Value::Bool(b)) => a == b,
            (Instance::String(a), Value::String(b)) => a == b,
            (Instance::Number(_), Value::Number(_))
            | (Instance::Array(_), Value::Array(_))
            | (Instance::Object(_), Value::Object(_)) => cmp::equal(&self.to_json(), expected),
            _ => false,
        }
    }
    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(self.to_json())
    }
    fn identity(&self) -> Option<NodeIdentity> {
        Some(NodeIdentity::new(
            std::ptr::from_ref::<Instance<'_>>(*self) as usize
        ))
    }
}

impl<'a> Object<'a, InstanceJson> for &'a [(Cow<'a, str>, Instance<'a>)] {
    type Node = &'a Instance<'a>;
    type MemberName = &'a str;
    type MembersIter = Members<'a>;

    fn len(&self) -> usize {
        <[_]>::len(self)
    }
    fn get(&self, key: &Box<str>) -> Option<&'a Instance<'a>> {
        // The last of a repeated name, as `serde_json::Value` keeps it.
        self.iter()
            .rev()
            .find(|(name, _)| **name == **key)
            .map(|(_, value)| value)
    }
    fn members(&self) -> Members<'a> {
        Members(self.iter())
    }
}

/// The members of an [`Instance::Object`], in document order.
pub(crate) struct Members<'a>(std::slice::Iter<'a, (Cow<'a, str>, Instance<'a>)>);

impl<'a> Iterator for Members<'a> {
    type Item = (&'a str, &'a Instance<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(name, value)| (&**name, value))
    }
}

impl<'a> Array<'a, InstanceJson> for &'a [Instance<'a>] {
    type Node = &'a Instance<'a>;
    type ElementsIter = std::slice::Iter<'a, Instance<'a>>;

    fn len(&self) -> usize {
        <[_]>::len(self)
    }
    fn elements(&self) -> Self::ElementsIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_what_serde_json_parses_and_borrows_plain_strings() {
        let text = br#"{"a": "plain", "b\n": "esc\"aped", "n": [1, -2, 2.5, 1e300], "o": {"t": true, "f": false, "z": null}}"#;
        let parsed = Instance::parse(text).unwrap();
        let value: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(parsed.to_json(), value);
        assert_eq!(Instance::from_value(&value).to_json(), value);
        let Instance::Object(members) = &parsed else {
            panic!("an object")
        };
        assert!(matches!(members[0].0, Cow::Borrowed("a")));
        assert!(matches!(
            members[0].1,
            Instance::String(Cow::Borrowed("plain"))
        ));
        assert!(matches!(members[1].0, Cow::Owned(_)));
        assert!(matches!(members[1].1, Instance::String(Cow::Owned(_))));
    }

    #[test]
    fn refuses_what_serde_json_refuses() {
        for bad in [
            &b"{"[..],
            b"{} {}",
            b"[1,]",
            b"\"\\uD800\"",
            b"nul",
            b"\xff",
        ] {
            assert!(serde_json::from_slice::<Value>(bad).is_err());
            assert!(Instance::parse(bad).is_err(), "{bad:?}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        let e = Instance::parse(deep.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("recursion limit"), "{e}");
    }

    #[test]
    fn meets_the_representation_contract_jsonschema_relies_on() {
        let text = serde_json::to_vec(&jsonschema::json::conformance::document()).unwrap();
        let parsed = Instance::parse(&text).unwrap();
        jsonschema::json::conformance::assert_conformance::<InstanceJson>(&&parsed);
    }

    #[test]
    fn repeated_names_are_looked_up_as_the_last() {
        let parsed = Instance::parse(br#"{"a": 1, "a": "two"}"#).unwrap();
        let members = (&parsed).as_object().unwrap();
        assert_eq!(
            Object::get(&members, &"a".into())
                .unwrap()
                .as_string()
                .as_deref(),
            Some("two")
        );
    }

    #[test]
    fn validates_like_the_serde_json_representation() {
        let schema = json!({
            "type": "object",
            "properties": {
                "s": {"enum": ["x", "y"]},
                "n": {"const": 1},
                "a": {"type": "array", "uniqueItems": true, "items": {"type": "integer"}},
                "o": {"const": {"k": [1, 2]}}
            },
            "propertyNames": {"maxLength": 3},
            "required": ["s"]
        });
        let ours = jsonschema::options_for::<InstanceJson>()
            .build(&schema)
            .unwrap();
        let theirs = jsonschema::validator_for(&schema).unwrap();
        for doc in [
            json!({"s": "x"}),
            json!({"s": "z"}),
            json!({"s": "x", "n": 1.0}),
            json!({"s": "x", "n": 2}),
            json!({"s": "x", "a": [1, 2, 3]}),
            json!({"s": "x", "a": [1, 1]}),
            json!({"s": "x", "a": [1, 1.5]}),
            json!({"s": "x", "o": {"k": [1, 2]}}),
            json!({"s": "x", "o": {"k": [2, 1]}}),
            json!({"s": "x", "long": 1}),
            json!({}),
            json!([1]),
        ] {
            let text = serde_json::to_vec(&doc).unwrap();
            let parsed = Instance::parse(&text).unwrap();
            let expected: Vec<(String, String)> = theirs
                .iter_errors(&doc)
                .map(|e| (e.instance_path().to_string(), e.to_string()))
                .collect();
            let got: Vec<(String, String)> = ours
                .iter_errors(&parsed)
                .map(|e| (e.instance_path().to_string(), e.to_string()))
                .collect();
            assert_eq!(got, expected, "{doc}");
            assert_eq!(ours.is_valid(&parsed), theirs.is_valid(&doc), "{doc}");
        }
    }
}
