//! CloudEvents 1.0 attributes in message headers (binary content mode):
//! `ce-specversion`, `ce-id` (the message id), `ce-type` (the event type),
//! `ce-source`, `ce-time`, `ce-datacontenttype` and `ce-dataschema` (the
//! registry version the payload was checked against). Written lower-case,
//! read case-insensitively; a structured-mode event
//! (`content-type: application/cloudevents+json`, the attributes and `data`
//! in one JSON object) is accepted on input.

use event_bus::{BusMessage, Headers};
use serde_json::Value;

/// `ce-specversion`.
pub const SPECVERSION: &str = "ce-specversion";
/// `ce-id`.
pub const ID: &str = "ce-id";
/// `ce-type`.
pub const TYPE: &str = "ce-type";
/// `ce-source`.
pub const SOURCE: &str = "ce-source";
/// `ce-time`.
pub const TIME: &str = "ce-time";
/// `ce-datacontenttype`.
pub const DATACONTENTTYPE: &str = "ce-datacontenttype";
/// `ce-dataschema`.
pub const DATASCHEMA: &str = "ce-dataschema";
/// The structured mode's content type.
pub const STRUCTURED: &str = "application/cloudevents+json";

/// A header's value, the name compared case-insensitively.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// The registry version a `ce-dataschema` URI names
/// (`urn:event-bus:schema:<type>:v<N>`): (type, version).
pub fn parse_dataschema(uri: &str) -> Option<(&str, u32)> {
    let rest = uri.strip_prefix("urn:event-bus:schema:")?;
    let (type_name, version) = rest.rsplit_once(':')?;
    let version = version.strip_prefix('v')?.parse().ok()?;
    Some((type_name, version))
}

/// What a consumer needs from an event's CloudEvents attributes.
#[derive(Debug)]
pub struct Incoming {
    /// `type`, if given.
    pub type_name: Option<String>,
    /// The registry version `dataschema` names, if it names one.
    pub version: Option<u32>,
    /// The data: the payload (binary mode) or the `data` member (structured
    /// mode; `None` if the structured event is not JSON or has no data).
    pub data: Data,
}

/// An event's data.
#[derive(Debug)]
pub enum Data {
    /// The message payload, as sent.
    Payload,
    /// The `data` member of a structured-mode event.
    Structured(Value),
    /// A structured-mode event that could not be read.
    Unreadable(String),
}

/// Reads the CloudEvents attributes of `message`, in either content mode.
pub fn incoming(message: &BusMessage) -> Incoming {
    let structured = header(&message.headers, "content-type")
        .is_some_and(|ct| ct.trim().to_ascii_lowercase().starts_with(STRUCTURED));
    if structured {
        return match serde_json::from_slice::<Value>(&message.payload) {
            Ok(Value::Object(mut event)) => {
                let type_name = event
                    .get("type")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let version = event
                    .get("dataschema")
                    .and_then(Value::as_str)
                    .and_then(parse_dataschema)
                    .map(|(_, v)| v);
                let data = match event.remove("data") {
                    Some(d) => Data::Structured(d),
                    None => Data::Unreadable("a structured CloudEvent without `data`".into()),
                };
                Incoming {
                    type_name,
                    version,
                    data,
                }
            }
            Ok(_) => Incoming {
                type_name: None,
                version: None,
                data: Data::Unreadable("a structured CloudEvent that is not a JSON object".into()),
            },
            Err(e) => Incoming {
                type_name: None,
                version: None,
                data: Data::Unreadable(format!("a structured CloudEvent that is not JSON: {e}")),
            },
        };
    }
    Incoming {
        type_name: header(&message.headers, TYPE).map(str::to_string),
        version: header(&message.headers, DATASCHEMA)
            .and_then(parse_dataschema)
            .map(|(_, v)| v),
        data: Data::Payload,
    }
}

/// Sets the binary-mode attributes that are not set yet (any case):
/// `ce-id` is `id`, `ce-time` now.
pub fn set_binary(
    headers: &mut Headers,
    id: &str,
    type_name: &str,
    source: &str,
    dataschema: &str,
) {
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    for (name, value) in [
        (SPECVERSION, "1.0"),
        (ID, id),
        (TYPE, type_name),
        (SOURCE, source),
        (TIME, now.as_str()),
        (DATACONTENTTYPE, "application/json"),
        (DATASCHEMA, dataschema),
    ] {
        if header(headers, name).is_none() {
            headers.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(s: &str) -> event_bus::Subject {
        event_bus::Subject::new(s).unwrap()
    }

    #[test]
    fn dataschema_uris() {
        assert_eq!(
            parse_dataschema("urn:event-bus:schema:auth.user.created:v3"),
            Some(("auth.user.created", 3))
        );
        assert_eq!(parse_dataschema("https://example.com/s.json"), None);
        assert_eq!(parse_dataschema("urn:event-bus:schema:x:3"), None);
    }

    #[test]
    fn headers_are_read_in_any_case_and_structured_events_accepted() {
        let mut h = Headers::new();
        h.insert("CE-Type", "auth.user.created");
        h.insert("Ce-DataSchema", "urn:event-bus:schema:auth.user.created:v2");
        let m = BusMessage::new(
            subject("auth.user"),
            b"{}".to_vec(),
            h,
            event_bus::MessageId::new("1"),
            1,
        );
        let i = incoming(&m);
        assert_eq!(i.type_name.as_deref(), Some("auth.user.created"));
        assert_eq!(i.version, Some(2));
        assert!(matches!(i.data, Data::Payload));

        let mut h = Headers::new();
        h.insert(
            "Content-Type",
            "application/cloudevents+json; charset=utf-8",
        );
        let body = br#"{"specversion":"1.0","type":"t.x","id":"1","source":"/s","dataschema":"urn:event-bus:schema:t.x:v1","data":{"a":1}}"#;
        let m = BusMessage::new(
            subject("t"),
            body.to_vec(),
            h,
            event_bus::MessageId::new("1"),
            1,
        );
        let i = incoming(&m);
        assert_eq!(i.type_name.as_deref(), Some("t.x"));
        assert_eq!(i.version, Some(1));
        assert!(matches!(i.data, Data::Structured(ref v) if v["a"] == 1));
    }
}
