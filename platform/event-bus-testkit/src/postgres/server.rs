//! The throwaway server: `initdb` into a temp dir, then `postgres` on a
//! loopback port, on the shared [`Process`] harness.

use super::binary::client_binary;
use super::psql::{output_text, run_tool};
use super::user::{make_temp_dir, running_as_root, scrub_env, server_command};
use super::{PgHarnessError, DEFAULT_STARTUP_TIMEOUT};
use crate::process::{file_len, read_from, tail_lines, NotReady, Process, LOG_TAIL_LINES};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::net::TcpStream;

const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an immediate shutdown may take before the server is SIGKILLed.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a fast (graceful) shutdown may take before the server is SIGKILLed.
pub(super) const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How to shut the server down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shutdown {
    /// SIGQUIT: immediate shutdown (no checkpoint; crash recovery on restart).
    Immediate,
    /// SIGINT: fast shutdown (disconnect clients, checkpoint).
    Fast,
}

impl Shutdown {
    fn signal(self) -> &'static str {
        match self {
            Shutdown::Immediate => "QUIT",
            Shutdown::Fast => "INT",
        }
    }

    fn timeout(self) -> Duration {
        match self {
            Shutdown::Immediate => KILL_TIMEOUT,
            Shutdown::Fast => STOP_TIMEOUT,
        }
    }
}

/// A `postgres` process with its data directory in a temp dir.
#[derive(Debug)]
pub(super) struct Server {
    /// `postgres` itself, or the `runuser`/`su` wrapper whose only child is
    /// `postgres` (when running as root). Stopped before `_dir` is removed.
    process: Process,
    bin_dir: PathBuf,
    pub(super) port: u16,
    pub(super) root: PathBuf,
    pub(super) data_dir: PathBuf,
    pub(super) log_path: PathBuf,
    startup_timeout: Duration,
    // Declared last: removed after the process is stopped.
    _dir: TempDir,
}

impl Server {
    /// Creates the temp dir and runs `initdb`; the server will listen on
    /// `port` but is not started.
    pub(super) async fn init(bin_dir: PathBuf, port: u16) -> Result<Self, PgHarnessError> {
        let dir = make_temp_dir()?;
        let root = dir.path().to_path_buf();
        let data_dir = root.join("data");
        let log_path = root.join("postgres.log");
        let initdb = bin_dir.join("initdb");
        let args: Vec<OsString> = vec![
            "-D".into(),
            data_dir.clone().into(),
            "-U".into(),
            "postgres".into(),
            "--auth=trust".into(),
            "-E".into(),
            "UTF8".into(),
            "--locale=C".into(),
            "--no-sync".into(),
        ];
        let what = format!("{} -D {}", initdb.display(), data_dir.display());
        let out = run_tool(server_command(&initdb, &args, &root), &what, INITDB_TIMEOUT).await?;
        if !out.status.success() {
            return Err(PgHarnessError::Command {
                command: what,
                status: out.status.to_string(),
                details: tail_lines(&output_text(&out), LOG_TAIL_LINES),
            });
        }
        let process = Self::process(&bin_dir, port, &root, &data_dir, &log_path);
        Ok(Server {
            process,
            bin_dir,
            port,
            root,
            data_dir,
            log_path,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            _dir: dir,
        })
    }

    /// `postgres` on `port`, its output appended to the log; the data
    /// directory (on its command line) marks it for orphan reaping.
    fn process(
        bin_dir: &Path,
        port: u16,
        root: &Path,
        data_dir: &Path,
        log_path: &Path,
    ) -> Process {
        let args: Vec<OsString> = vec![
            "-D".into(),
            data_dir.into(),
            "-p".into(),
            port.to_string().into(),
            "-k".into(),
            root.into(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            "fsync=off".into(),
            "-c".into(),
            "max_connections=100".into(),
        ];
        let cmd = server_command(&bin_dir.join("postgres"), &args, root);
        Process::new(
            cmd,
            log_path.to_path_buf(),
            data_dir.to_path_buf(),
            running_as_root(),
        )
    }

    /// Moves the (stopped) server to another port, for a retry after the
    /// chosen one turned out to be taken.
    pub(super) fn set_port(&mut self, port: u16) {
        self.port = port;
        self.process = Self::process(
            &self.bin_dir,
            port,
            &self.root,
            &self.data_dir,
            &self.log_path,
        );
    }

    /// Last lines of the log written after byte `from`.
    pub(super) fn log_tail_from(&self, from: u64) -> String {
        tail_lines(&read_from(&self.log_path, from), LOG_TAIL_LINES)
    }

    /// Spawns the server and polls until it accepts connections, it exits,
    /// or the startup deadline passes.
    pub(super) async fn spawn_and_wait(&mut self) -> Result<(), PgHarnessError> {
        let log_start = file_len(&self.log_path);
        let deadline = Instant::now() + self.startup_timeout;
        self.process.spawn().map_err(|e| {
            PgHarnessError::io(
                format!("spawning {}", self.bin_dir.join("postgres").display()),
                e,
            )
        })?;
        let port = self.port;
        let probe = || async move {
            if tcp_accepts(port).await && pg_isready(port).await {
                Ok(())
            } else {
                Err(format!("127.0.0.1:{port} does not accept connections yet"))
            }
        };
        match self.process.wait_ready(deadline, probe).await {
            Ok(()) => Ok(()),
            Err(NotReady::Exited(status)) => Err(PgHarnessError::Exited {
                status: status.to_string(),
                log_tail: self.log_tail_from(log_start),
            }),
            Err(NotReady::Timeout { waited, .. }) => {
                let log_tail = self.log_tail_from(log_start);
                self.shutdown_blocking(Shutdown::Immediate);
                Err(PgHarnessError::Timeout {
                    what: format!("postgres on 127.0.0.1:{port} to accept connections"),
                    waited,
                    log_tail,
                })
            }
            Err(NotReady::Io(e)) => Err(PgHarnessError::io("polling postgres process", e)),
        }
    }

    /// PID of the postmaster (the wrapper's child when running as root).
    pub(super) fn postmaster_pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// True if the server was started and has not exited.
    pub(super) fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Shuts down and waits; SIGKILL after the mode's timeout. Returns
    /// false if SIGKILL was needed.
    pub(super) async fn shutdown(&mut self, how: Shutdown) -> bool {
        self.process.stop(how.signal(), how.timeout()).await
    }

    /// Like [`Server::shutdown`] but blocking (for `Drop` and error paths).
    fn shutdown_blocking(&mut self, how: Shutdown) -> bool {
        self.process.stop_blocking(how.signal(), how.timeout())
    }

    /// The whole log.
    pub(super) fn log_contents(&self) -> String {
        read_from(&self.log_path, 0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown_blocking(Shutdown::Immediate);
    }
}

/// A free loopback port.
pub(super) fn free_port() -> Result<u16, PgHarnessError> {
    crate::local::free_ports(1)
        .map(|p| p[0])
        .map_err(|e| PgHarnessError::io("picking a free loopback port", e))
}

/// True if `127.0.0.1:port` accepts a TCP connection within 1 s.
pub(super) async fn tcp_accepts(port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            TcpStream::connect(("127.0.0.1", port))
        )
        .await,
        Ok(Ok(_))
    )
}

/// `pg_isready -h 127.0.0.1 -p <port>` exits 0.
pub(super) async fn pg_isready(port: u16) -> bool {
    let mut cmd = Command::new(client_binary("pg_isready"));
    scrub_env(&mut cmd);
    cmd.args([
        "-q",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-t",
        "2",
        "-p",
    ])
    .arg(port.to_string());
    matches!(
        run_tool(cmd, "pg_isready", PROBE_TIMEOUT).await,
        Ok(out) if out.status.success()
    )
}

#[cfg(test)]
mod tests {
    use super::super::binary::pg_bin_dir;
    use super::*;
    use std::net::TcpListener;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn port_in_use_is_detected_for_retry() {
        tokio::time::timeout(Duration::from_secs(120), async {
            let blocker = TcpListener::bind(("127.0.0.1", 0)).unwrap();
            let taken = blocker.local_addr().unwrap().port();
            let mut server = Server::init(pg_bin_dir().unwrap(), taken)
                .await
                .expect("initdb");
            let err = server.spawn_and_wait().await.unwrap_err();
            assert!(err.is_address_in_use(), "{err}");
            assert!(!server.process.is_started());
        })
        .await
        .expect("test exceeded its timeout");
    }
}
