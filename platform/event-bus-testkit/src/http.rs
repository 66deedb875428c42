//! A plain HTTP GET (HTTP/1.0 on a fresh connection, so that no server
//! chunks the body or keeps the connection), without an HTTP client
//! library: for the monitoring endpoints in tests, and nats-server's
//! monitoring port in the harness.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` on `addr` within `timeout`: (status code, body), or the
/// error (connection, timeout, or not an HTTP response).
pub async fn try_get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "bad HTTP response: {:?}",
                        text.chars().take(80).collect::<String>()
                    ),
                )
            })?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            ))
        })
}

/// `GET path` on `addr` within 5 s: (status code, body). Panics, naming
/// the address, the path and the error, when there is no answer.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_get(addr, path, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}
