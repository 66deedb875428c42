//! Input format shared by the targets: UTF-8 fields separated by the byte
//! 0xFF, which never occurs in UTF-8, so that a field can hold any string
//! (dots, wildcards, line breaks, NUL...) and the seed files stay readable.

/// The fields of `data`, or `None` when one is not UTF-8 (the APIs under
/// test take `&str`).
pub fn fields(data: &[u8]) -> Option<Vec<&str>> {
    data.split(|&b| b == 0xff)
        .map(|f| std::str::from_utf8(f).ok())
        .collect()
}

/// `map` as a subscriber's client reads it back from the wire: written as
/// `name: value` lines (as async-nats writes headers) and parsed as
/// async-nats parses a received header block (its `connection.rs`): the
/// value trimmed of (Unicode) whitespace at both ends.
#[allow(dead_code)] // not every target uses it
pub fn over_the_wire(map: &async_nats::HeaderMap) -> async_nats::HeaderMap {
    use std::str::FromStr;
    let mut text = String::from("NATS/1.0\r\n");
    for (name, values) in map.iter() {
        for v in values {
            text.push_str(&format!("{name}: {}\r\n", v.as_str()));
        }
    }
    let mut back = async_nats::HeaderMap::new();
    for line in text.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').expect("a header line has a colon");
        let name = async_nats::HeaderName::from_str(name).expect("a name the client wrote");
        back.append(name, value.trim());
    }
    back
}
