//! Loopback ports and unique names shared by the server harnesses.

use std::collections::HashSet;
use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Ports handed out by this process to any harness, never reused within it
/// (a killed server's port is not given to another server of the same test
/// binary, and a NATS and a PostgreSQL server never get the same port).
static HANDED_OUT_PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Picks `n` distinct free loopback ports (bind to :0, read, drop).
pub(crate) fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    let mut guard = HANDED_OUT_PORTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let handed_out = guard.get_or_insert_with(HashSet::new);
    let mut listeners = Vec::new();
    let mut ports = Vec::new();
    let mut tries = 0;
    while ports.len() < n {
        tries += 1;
        if tries > n * 50 {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "no free loopback port found",
            ));
        }
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        // Keep every listener open until all ports are chosen so they are distinct.
        listeners.push(listener);
        if handed_out.insert(port) {
            ports.push(port);
        }
    }
    Ok(ports)
}

/// `<pid>-<counter>-<nanos>`: unique across processes and calls (names of
/// clusters and databases).
pub(crate) fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{n}-{nanos:x}", std::process::id())
}
