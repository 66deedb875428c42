//! Probes of a node's client and HTTP monitoring ports, and the JetStream
//! meta leader read from `/jsz`.

use super::PROBE_TIMEOUT;
use std::io;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// `GET path` against the monitoring port `127.0.0.1:port`.
pub(super) async fn http_get(port: u16, path: &str) -> io::Result<(u16, String)> {
    crate::http::try_get(([127, 0, 0, 1], port).into(), path, PROBE_TIMEOUT).await
}

/// True if the client port accepts a connection and greets with `INFO `.
pub(super) async fn client_port_greets(port: u16) -> bool {
    let fut = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).await?;
        Ok::<bool, io::Error>(&buf == b"INFO ")
    };
    matches!(tokio::time::timeout(PROBE_TIMEOUT, fut).await, Ok(Ok(true)))
}

/// Extracts `meta_cluster.leader` from a `/jsz` JSON body without a JSON crate.
/// Returns `None` if there is no meta cluster or the leader is absent/empty.
pub(super) fn parse_meta_leader(json: &str) -> Option<String> {
    const KEY: &str = "\"meta_cluster\"";
    let start = json.find(KEY)? + KEY.len();
    let obj = json[start..].trim_start().strip_prefix(':')?.trim_start();
    if !obj.starts_with('{') {
        return None;
    }
    let bytes = obj.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return None;
                }
            }
            b'"' => {
                let (s, end) = read_json_string(obj, i)?;
                if depth == 1 && s == "leader" {
                    if let Some(val) = obj[end..].trim_start().strip_prefix(':') {
                        let val = val.trim_start();
                        if val.starts_with('"') {
                            let (leader, _) = read_json_string(val, 0)?;
                            return (!leader.is_empty()).then(|| leader.to_string());
                        }
                        return None;
                    }
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Reads the JSON string starting at the quote at `start`; returns the raw
/// content and the index just past the closing quote.
fn read_json_string(s: &str, start: usize) -> Option<(&str, usize)> {
    let bytes = s.as_bytes();
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some((&s[start + 1..i], i + 1)),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meta_leader() {
        let pretty = r#"{
  "meta_cluster": {
    "name": "tc1",
    "leader": "n3",
    "peer": "BXScrY9i",
    "snapshot": { "pending_entries": 1 }
  },
  "total": 1
}"#;
        assert_eq!(parse_meta_leader(pretty), Some("n3".into()));
        let no_leader = r#"{"meta_cluster":{"name":"tc1","replicas":[{"name":"n2","leader":"x"}],"cluster_size":2},"leader":"zz"}"#;
        assert_eq!(parse_meta_leader(no_leader), None);
        assert_eq!(parse_meta_leader(r#"{"meta_cluster":{"leader":""}}"#), None);
        assert_eq!(parse_meta_leader(r#"{"memory":0}"#), None);
    }
}
