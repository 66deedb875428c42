//! A real Kafka-protocol broker for the KafkaBus tests: tansu 0.6.0
//! (Apache-2.0, a Kafka broker in Rust), started on a random loopback port
//! with its own storage (in memory, or a PostgreSQL URL for tests that kill
//! and restart it) and killed when dropped.
//!
//! The binary: env `TANSU_BIN`, else the pinned build that
//! `./scripts/install-test-deps.sh kafka` leaves in
//! `~/.cache/event-bus-test-deps/tansu-0.6.0/bin/tansu`, else `tansu` on
//! `PATH`. A missing binary is an error saying how to get it.

use crate::process::{tail_lines, NotReady, Process, LOG_TAIL_LINES};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The tansu version the tests are written against.
pub const TANSU_VERSION: &str = "0.6.0";

/// How long a broker may take to listen.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

const START_ATTEMPTS: usize = 3;

/// Why a broker could not be started.
#[derive(Debug)]
pub struct KafkaHarnessError(String);

impl fmt::Display for KafkaHarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KafkaHarnessError {}

/// Candidate binaries in resolution order.
fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("TANSU_BIN").filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(p));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    if let Some(cache) = cache {
        out.push(
            cache
                .join("event-bus-test-deps")
                .join(format!("tansu-{TANSU_VERSION}"))
                .join("bin/tansu"),
        );
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            out.push(dir.join("tansu"));
        }
    }
    out
}

/// Locates the tansu binary, or says how to install it.
pub fn tansu_binary() -> Result<PathBuf, KafkaHarnessError> {
    resolve(candidates())
}

fn resolve(tried: Vec<PathBuf>) -> Result<PathBuf, KafkaHarnessError> {
    if let Some(p) = tried.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    Err(KafkaHarnessError(format!(
        "no tansu {TANSU_VERSION} binary (the Kafka-protocol broker the KafkaBus tests start): run `./scripts/install-test-deps.sh kafka` (builds it once into ~/.cache/event-bus-test-deps, 20-40 minutes) or set TANSU_BIN. Looked at: {}",
        tried
            .iter()
            .take(3)
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// tansu's PostgreSQL schema (its storage engine creates no tables): env
/// `TANSU_PG_SCHEMA`, else the copy `./scripts/install-test-deps.sh kafka`
/// fetches (pinned by SHA-256) next to the binary,
/// `~/.cache/event-bus-test-deps/tansu-0.6.0/initdb/010-schema.sql`.
pub fn tansu_pg_schema() -> Result<PathBuf, KafkaHarnessError> {
    let mut tried = Vec::new();
    if let Some(p) = std::env::var_os("TANSU_PG_SCHEMA").filter(|v| !v.is_empty()) {
        tried.push(PathBuf::from(p));
    }
    if let Some(bin) = candidates().into_iter().find(|p| p.is_file()) {
        if let Some(root) = bin.parent().and_then(Path::parent) {
            tried.push(root.join("initdb/010-schema.sql"));
        }
    }
    tried.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        KafkaHarnessError(format!(
            "no PostgreSQL schema for tansu {TANSU_VERSION} (its `postgres://` storage creates no tables): run `./scripts/install-test-deps.sh kafka` (fetches the tag's etc/initdb.d/010-schema.sql) or set TANSU_PG_SCHEMA. Looked at: {}",
            tried
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// A running tansu broker. Killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct KafkaServer {
    process: Process,
    port: u16,
    storage: String,
    _dir: tempfile::TempDir,
}

impl KafkaServer {
    /// A broker with in-memory storage on a random loopback port.
    pub async fn start() -> Result<Self, KafkaHarnessError> {
        Self::start_with_storage("memory://tansu/").await
    }

    /// A broker on `storage` (`memory://tansu/`, or a `postgres://` URL
    /// whose data survives a kill).
    pub async fn start_with_storage(storage: &str) -> Result<Self, KafkaHarnessError> {
        crate::orphans::reap_once();
        let binary = tansu_binary()?;
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = crate::local::free_ports(1)
                .map_err(|e| KafkaHarnessError(format!("picking a free loopback port: {e}")))?[0];
            let dir = tempfile::Builder::new()
                .prefix("tansu-")
                .tempdir()
                .map_err(|e| KafkaHarnessError(format!("creating a temp dir: {e}")))?;
            let mut server = KafkaServer {
                process: Self::command(&binary, dir.path(), port, storage),
                port,
                storage: storage.to_string(),
                _dir: dir,
            };
            match server.spawn_and_wait().await {
                Ok(()) => return Ok(server),
                Err(e) if e.0.contains("in use") => last = e.0,
                Err(e) => return Err(e),
            }
        }
        Err(KafkaHarnessError(last))
    }

    /// A broker storing its topics, records and group offsets in `pg`'s
    /// database (tansu's schema applied to it first): what it acknowledged
    /// survives a [`kill`](Self::kill) and [`restart`](Self::restart).
    pub async fn start_on_postgres(
        pg: &crate::postgres::TestPostgres,
    ) -> Result<Self, KafkaHarnessError> {
        let path = tansu_pg_schema()?;
        let schema = std::fs::read_to_string(&path)
            .map_err(|e| KafkaHarnessError(format!("reading {}: {e}", path.display())))?;
        pg.psql(&schema).await.map_err(|e| {
            KafkaHarnessError(format!(
                "applying tansu's schema ({}) to {}: {e}",
                path.display(),
                pg.database()
            ))
        })?;
        // tansu's PostgreSQL client tries TLS unless told not to.
        let url = pg.url();
        let sep = if url.contains('?') { '&' } else { '?' };
        Self::start_with_storage(&format!("{url}{sep}sslmode=disable")).await
    }

    fn command(binary: &Path, dir: &Path, port: u16, storage: &str) -> Process {
        let url = format!("tcp://127.0.0.1:{port}");
        // The marker (a path on the command line, for orphan reaping) is
        // the cluster id: the temp dir's path.
        let marker = dir.join("cluster");
        let mut cmd = Command::new(binary);
        cmd.arg("broker")
            .arg("--cluster-id")
            .arg(&marker)
            .arg("--listener-url")
            .arg(&url)
            .arg("--advertised-listener-url")
            .arg(&url)
            .arg("--storage-engine")
            .arg(storage)
            .env("RUST_LOG", "warn")
            .current_dir(dir);
        Process::new(cmd, dir.join("tansu.log"), marker, false)
    }

    async fn spawn_and_wait(&mut self) -> Result<(), KafkaHarnessError> {
        self.process
            .spawn()
            .map_err(|e| KafkaHarnessError(format!("spawning tansu: {e}")))?;
        let port = self.port;
        let probe = || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map(drop)
                .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))
        };
        match self
            .process
            .wait_ready(Instant::now() + STARTUP_TIMEOUT, probe)
            .await
        {
            Ok(()) => Ok(()),
            Err(NotReady::Exited(status)) => Err(KafkaHarnessError(format!(
                "tansu on port {port} exited during startup ({status}); log tail:\n{}",
                self.log_tail()
            ))),
            Err(NotReady::Timeout { waited, last_probe }) => Err(KafkaHarnessError(format!(
                "tansu on port {port} not listening after {waited:?} (last probe: {last_probe}); log tail:\n{}",
                self.log_tail()
            ))),
            Err(NotReady::Io(e)) => Err(KafkaHarnessError(format!("polling tansu: {e}"))),
        }
    }

    /// `127.0.0.1:<port>`, for `KafkaConfig::new`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The storage URL it was started with.
    pub fn storage(&self) -> &str {
        &self.storage
    }

    /// The last lines of its output.
    pub fn log_tail(&self) -> String {
        tail_lines(
            &crate::process::read_from(self.process.output_path(), 0),
            LOG_TAIL_LINES,
        )
    }

    /// SIGKILLs it (`kill -9`).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same port and storage.
    pub async fn restart(&mut self) -> Result<(), KafkaHarnessError> {
        self.process.kill();
        self.spawn_and_wait().await
    }

    /// A `KafkaBus` on this broker (a new producer and admin client).
    #[cfg(feature = "kafka")]
    pub async fn bus(&self) -> event_bus::KafkaBus {
        let config = event_bus::kafka::KafkaConfig::new(&self.bootstrap());
        event_bus::KafkaBus::connect(config)
            .await
            .unwrap_or_else(|e| panic!("connect to tansu at {}: {e}", self.bootstrap()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_says_how_to_get_it() {
        let err = resolve(vec![PathBuf::from("/nonexistent/tansu")]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("./scripts/install-test-deps.sh kafka") && text.contains("TANSU_BIN"),
            "{text}"
        );
        assert!(text.contains("/nonexistent/tansu"), "{text}");
    }
}
