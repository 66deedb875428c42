//! A real PostgreSQL for integration tests.
//!
//! [`TestPostgres::start`] gives every test its own fresh database:
//!
//! * If `DATABASE_URL` is set, nothing is started: a uniquely named database
//!   `test_<random>` is created inside that server (with `psql`) and
//!   [`TestPostgres::url`] points at it; it is dropped again when the handle is
//!   dropped. If it cannot be created, `DATABASE_URL` is used as-is.
//! * Otherwise a throwaway server is started ([`TestPostgres::start_throwaway`]):
//!   `initdb` into a [`tempfile::TempDir`], then `postgres` on a random free
//!   loopback port (`listen_addresses=127.0.0.1`, its Unix socket inside the
//!   temp dir, `fsync=off`), and a fresh `test_<random>` database in it. A
//!   system PostgreSQL on port 5432 is never touched.
//!
//! PostgreSQL refuses to run as root. When the tests run as root, the temp dir
//! is handed to the `postgres` system user (created by Debian's `postgresql`
//! package) and `initdb`/`postgres` run through `runuser -u postgres --`
//! (falling back to `su postgres -s /bin/sh -c`); otherwise they run directly.
//!
//! The server process is spawned directly (not daemonized with `pg_ctl start`)
//! so it stays a descendant of the test process and is reaped when it exits,
//! even where PID 1 does not reap orphans.
//!
//! Readiness is never a fixed sleep: the harness polls a TCP connect plus
//! `pg_isready` with a short backoff until an overall deadline (30 s). Errors
//! include the tail of the server log.
//!
//! Binaries are located by [`pg_bin_dir`]: env `PG_BIN_DIR`, else the highest
//! version under `/usr/lib/postgresql/*/bin`, else `PATH`. Run
//! `./scripts/install-test-deps.sh` (`apt-get install postgresql`) to get them.
//!
//! Dropping a [`TestPostgres`] stops its server (immediate shutdown, SIGKILL as
//! a fallback) and deletes the temp dir. [`TestPostgres::kill`] and
//! [`TestPostgres::restart`] crash and restart the server on the same port with
//! the same data directory.
//!
//! # Example
//!
//! ```no_run
//! use event_bus_testkit::postgres::TestPostgres;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut pg = TestPostgres::start_throwaway().await?;
//! let url = pg.url(); // "postgres://postgres@127.0.0.1:<port>/test_<random>"
//! pg.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)").await?;
//!
//! // Crash (immediate shutdown, WAL recovery on restart) and come back.
//! pg.kill().await;
//! pg.restart().await?;
//! assert_eq!(pg.url(), url);
//! assert_eq!(pg.psql("SELECT count(*) FROM t").await?, "1");
//! # Ok(())
//! # }
//! ```

mod binary;
mod psql;
mod server;
mod user;

pub use binary::{pg_bin_dir, psql_binary};

use psql::{run_psql, unique_db_name, with_database, PSQL_TIMEOUT};
use server::{free_port, Server, Shutdown, STOP_TIMEOUT};
use std::fmt;
use std::io;
use std::path::Path;
use std::time::Duration;

/// Time a throwaway server gets to become ready (start and restart).
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The message part that tells a developer how to get a PostgreSQL.
const HOW_TO_GET_POSTGRES: &str =
    "run ./scripts/install-test-deps.sh (apt-get install postgresql) or set DATABASE_URL=postgres://...";
/// Attempts made by a fresh start when the randomly chosen port was taken.
const START_ATTEMPTS: usize = 3;

/// Errors produced by the PostgreSQL test harness.
///
/// `Debug` prints the same human-readable text as `Display` (log tails with
/// real newlines), so `.unwrap()`/`.expect()` failures in tests stay readable.
pub enum PgHarnessError {
    /// No PostgreSQL server binaries were found; the message says how to get them.
    BinariesNotFound(String),
    /// The environment cannot run a server (for example running as root
    /// without a `postgres` system user); the message says what to do.
    Setup(String),
    /// An I/O operation failed.
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A helper command (`initdb`, `psql`, ...) failed.
    Command {
        /// The command (passwords in URLs redacted).
        command: String,
        /// Exit status as reported by the OS.
        status: String,
        /// The command's output, and the server log tail where relevant.
        details: String,
    },
    /// The server exited while the harness waited for it to become ready.
    Exited {
        /// Exit status as reported by the OS.
        status: String,
        /// Last lines of the server log.
        log_tail: String,
    },
    /// Something did not happen before its deadline.
    Timeout {
        /// What was being waited for.
        what: String,
        /// How long the harness waited.
        waited: Duration,
        /// Last lines of the server log (empty if there is no server).
        log_tail: String,
    },
    /// The operation needs a throwaway server, but this handle uses `DATABASE_URL`.
    Unsupported(String),
}

impl PgHarnessError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        PgHarnessError::Io {
            context: context.into(),
            source,
        }
    }

    /// True if the server failed because its port was already in use.
    fn is_address_in_use(&self) -> bool {
        match self {
            PgHarnessError::Exited { log_tail, .. } => {
                log_tail.contains("could not bind")
                    || log_tail.contains("already in use")
                    || log_tail.contains("could not create any TCP/IP sockets")
            }
            _ => false,
        }
    }
}

impl fmt::Display for PgHarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgHarnessError::BinariesNotFound(msg) | PgHarnessError::Setup(msg) => f.write_str(msg),
            PgHarnessError::Unsupported(msg) => f.write_str(msg),
            PgHarnessError::Io { context, source } => write!(f, "{context}: {source}"),
            PgHarnessError::Command {
                command,
                status,
                details,
            } => write!(f, "`{command}` failed ({status}):\n{details}"),
            PgHarnessError::Exited { status, log_tail } => write!(
                f,
                "postgres exited during startup ({status}); log tail:\n{log_tail}"
            ),
            PgHarnessError::Timeout {
                what,
                waited,
                log_tail,
            } => {
                write!(f, "timed out after {waited:?} waiting for {what}")?;
                if !log_tail.is_empty() {
                    write!(f, "; log tail:\n{log_tail}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for PgHarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for PgHarnessError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PgHarnessError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A fresh PostgreSQL database for one test: in a throwaway server, or in the
/// server named by `DATABASE_URL`.
///
/// Dropping it stops a throwaway server and deletes its temp dir, or drops the
/// database it created inside `DATABASE_URL`'s server.
#[derive(Debug)]
pub struct TestPostgres {
    url: String,
    admin_url: String,
    database: String,
    /// True if `database` was created by the harness and must be dropped
    /// (only tracked for `DATABASE_URL`; a throwaway server goes away whole).
    drop_database: bool,
    server: Option<Server>,
}

impl TestPostgres {
    /// A fresh database: inside `DATABASE_URL`'s server if that variable is set
    /// and non-empty (nothing is started), else in a throwaway server
    /// ([`TestPostgres::start_throwaway`]).
    pub async fn start() -> Result<Self, PgHarnessError> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => Ok(Self::with_database_url(url.trim()).await),
            _ => Self::start_throwaway().await,
        }
    }

    /// Uses an existing server: creates a fresh `test_<random>` database in it
    /// via `psql "<url>" -c 'CREATE DATABASE ...'` and points [`url`](Self::url)
    /// at it. If that is impossible (no `psql`, no privilege, a keyword/value
    /// connection string), `url` is used as-is. Never fails.
    pub async fn with_database_url(url: &str) -> Self {
        let as_is = |url: &str| TestPostgres {
            url: url.to_string(),
            admin_url: url.to_string(),
            database: String::new(),
            drop_database: false,
            server: None,
        };
        let db = unique_db_name();
        let Some(fresh_url) = with_database(url, &db) else {
            return as_is(url);
        };
        match run_psql(url, &format!("CREATE DATABASE \"{db}\""), false).await {
            Ok(_) => TestPostgres {
                url: fresh_url,
                admin_url: url.to_string(),
                database: db,
                drop_database: true,
                server: None,
            },
            Err(e) => {
                eprintln!(
                    "event-bus-testkit: could not create a fresh database in DATABASE_URL, \
                     using it as-is: {e}"
                );
                as_is(url)
            }
        }
    }

    /// Starts a throwaway server (ignoring `DATABASE_URL`) on a random free
    /// loopback port and creates a fresh `test_<random>` database in it.
    ///
    /// If the chosen port turns out to be taken, the start is retried on a new
    /// port (3 attempts in all).
    pub async fn start_throwaway() -> Result<Self, PgHarnessError> {
        crate::orphans::reap_once();
        let bin_dir = pg_bin_dir()?;
        let mut server = Server::init(bin_dir, free_port()?).await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match server.spawn_and_wait().await {
                Ok(()) => break,
                Err(e) if e.is_address_in_use() && attempt < START_ATTEMPTS => {
                    server.set_port(free_port()?)
                }
                Err(e) => return Err(e),
            }
        }
        let admin_url = format!("postgres://postgres@127.0.0.1:{}/postgres", server.port);
        let database = unique_db_name();
        if let Err(e) = run_psql(&admin_url, &format!("CREATE DATABASE \"{database}\""), true).await
        {
            let log = server.log_tail_from(0);
            return Err(match e {
                PgHarnessError::Command {
                    command,
                    status,
                    details,
                } => PgHarnessError::Command {
                    command,
                    status,
                    details: format!("{details}\nserver log tail:\n{log}"),
                },
                other => other,
            });
        }
        Ok(TestPostgres {
            url: with_database(&admin_url, &database).unwrap_or_else(|| admin_url.clone()),
            admin_url,
            database,
            drop_database: false,
            server: Some(server),
        })
    }

    /// Connection URL of the test's database, e.g.
    /// `postgres://postgres@127.0.0.1:PORT/test_<random>` for a throwaway server.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// URL of the maintenance database (`postgres` of a throwaway server, or
    /// `DATABASE_URL` itself), for creating further databases.
    pub fn admin_url(&self) -> String {
        self.admin_url.clone()
    }

    /// Name of the fresh database, or `""` if `DATABASE_URL` is used as-is.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Port of the throwaway server; `None` when using `DATABASE_URL`.
    pub fn port(&self) -> Option<u16> {
        self.server.as_ref().map(|s| s.port)
    }

    /// True when using `DATABASE_URL` rather than a throwaway server.
    pub fn is_external(&self) -> bool {
        self.server.is_none()
    }

    /// Data directory of the throwaway server (inside its temp dir).
    pub fn data_dir(&self) -> Option<&Path> {
        self.server.as_ref().map(|s| s.data_dir.as_path())
    }

    /// The temp dir holding data dir, log and Unix socket (removed on drop).
    pub fn temp_dir(&self) -> Option<&Path> {
        self.server.as_ref().map(|s| s.root.as_path())
    }

    /// PID of the running postmaster, if any.
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref()?.postmaster_pid()
    }

    /// True if the throwaway server process is running.
    pub fn is_running(&mut self) -> bool {
        self.server.as_mut().is_some_and(Server::is_running)
    }

    /// The whole server log (empty when using `DATABASE_URL`).
    pub fn log_contents(&self) -> String {
        self.server
            .as_ref()
            .map(Server::log_contents)
            .unwrap_or_default()
    }

    /// Runs SQL with `psql` against [`url`](Self::url) and returns its
    /// unaligned, tuples-only output (trimmed), e.g. `"1"` for `SELECT 1`.
    pub async fn psql(&self, sql: &str) -> Result<String, PgHarnessError> {
        run_psql(&self.url, sql, self.server.is_some()).await
    }

    /// Crashes the throwaway server: immediate shutdown (SIGQUIT; no
    /// checkpoint, so the next start runs WAL crash recovery), SIGKILL if it
    /// has not exited within 10 s. Waits until it has exited. The data
    /// directory is kept for [`restart`](Self::restart). No-op when using
    /// `DATABASE_URL` or when not running.
    pub async fn kill(&mut self) {
        if let Some(server) = self.server.as_mut() {
            server.shutdown(Shutdown::Immediate).await;
        }
    }

    /// Stops the throwaway server gracefully (fast shutdown: clients are
    /// disconnected, a checkpoint is written) and waits until it has exited.
    /// No-op when not running; an error when using `DATABASE_URL`.
    pub async fn stop(&mut self) -> Result<(), PgHarnessError> {
        let server = self.server_mut("stop()")?;
        if server.shutdown(Shutdown::Fast).await {
            Ok(())
        } else {
            Err(PgHarnessError::Timeout {
                what: "postgres to shut down (it was SIGKILLed)".into(),
                waited: STOP_TIMEOUT,
                log_tail: server.log_tail_from(0),
            })
        }
    }

    /// Restarts the throwaway server on the same port with the same data
    /// directory (stopping it first if it is running) and waits until it
    /// accepts connections. An error when using `DATABASE_URL`.
    pub async fn restart(&mut self) -> Result<(), PgHarnessError> {
        let server = self.server_mut("restart()")?;
        server.shutdown(Shutdown::Fast).await;
        server.spawn_and_wait().await
    }

    fn server_mut(&mut self, op: &str) -> Result<&mut Server, PgHarnessError> {
        self.server.as_mut().ok_or_else(|| {
            PgHarnessError::Unsupported(format!(
                "{op} needs a throwaway server, but this TestPostgres uses DATABASE_URL \
                 (use TestPostgres::start_throwaway())"
            ))
        })
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if self.drop_database {
            for sql in [
                format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.database),
                format!("DROP DATABASE IF EXISTS \"{}\"", self.database),
            ] {
                let cmd = psql::psql_command(&self.admin_url, &sql, false);
                if crate::process::run_blocking(cmd, PSQL_TIMEOUT).is_ok_and(|o| o.status.success())
                {
                    break;
                }
            }
        }
        // `server` (if any) is stopped and its temp dir removed by `Server::drop`.
    }
}

#[cfg(test)]
mod tests {
    use super::psql::{output_text, run_tool};
    use super::server::{pg_isready, tcp_accepts};
    use super::*;
    use std::process::{Command, Output};
    use tokio::net::TcpStream;

    const TEST_TIMEOUT: Duration = Duration::from_secs(120);

    async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(TEST_TIMEOUT, fut)
            .await
            .expect("test exceeded its timeout")
    }

    /// Runs the psql binary directly: `psql <url> -c <sql>`.
    async fn raw_psql(url: &str, sql: &str) -> Output {
        let mut cmd = Command::new(psql_binary());
        user::scrub_env(&mut cmd);
        cmd.args(["-X", "-A", "-t", "-c", sql, url]);
        run_tool(cmd, "psql", PSQL_TIMEOUT).await.unwrap()
    }

    /// Polls (bounded) until `pg_isready` and a TCP connect both fail.
    async fn wait_until_down(port: u16) {
        crate::wait::until_async(
            Duration::from_secs(20),
            "the server to stop accepting connections",
            || async move { !pg_isready(port).await && !tcp_accepts(port).await },
        )
        .await;
    }

    #[test]
    fn error_debug_is_readable() {
        let e = PgHarnessError::Exited {
            status: "exit status: 1".into(),
            log_tail: "line 1\nFATAL: could not bind IPv4 address".into(),
        };
        assert_eq!(format!("{e:?}"), e.to_string());
        assert!(format!("{e:?}").contains("\nFATAL"));
        assert!(e.is_address_in_use());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn throwaway_servers_accept_queries_on_distinct_ports() {
        within(async {
            let pg = TestPostgres::start_throwaway().await.expect("start");
            let port = pg.port().expect("throwaway server has a port");
            assert!(!pg.is_external());
            assert_eq!(
                pg.url(),
                format!("postgres://postgres@127.0.0.1:{port}/{}", pg.database())
            );
            assert!(pg.database().starts_with("test_"));
            assert!(pg.data_dir().unwrap().join("PG_VERSION").is_file());
            assert!(TcpStream::connect(("127.0.0.1", port)).await.is_ok());

            let out = raw_psql(&pg.url(), "select 1").await;
            assert!(out.status.success(), "{}", output_text(&out));
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
            assert_eq!(
                pg.psql("select current_database()").await.unwrap(),
                pg.database()
            );

            let other = TestPostgres::start_throwaway().await.expect("second start");
            assert_ne!(other.port(), pg.port());
            assert_ne!(other.data_dir(), pg.data_dir());
            assert_ne!(other.url(), pg.url());
            assert_eq!(other.psql("select 2").await.unwrap(), "2");
            assert_eq!(pg.psql("select 3").await.unwrap(), "3");
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drop_stops_server_and_removes_temp_dir() {
        within(async {
            let mut pg = TestPostgres::start_throwaway().await.expect("start");
            let port = pg.port().unwrap();
            let dir = pg.temp_dir().unwrap().to_path_buf();
            let pid = pg.pid().expect("postmaster pid");
            assert!(pg.is_running());
            assert!(pg_isready(port).await);
            assert!(dir.is_dir());
            drop(pg);
            wait_until_down(port).await;
            assert!(!dir.exists(), "temp dir {} not removed", dir.display());
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "postmaster {pid} still exists"
            );
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kill_and_restart_keep_port_and_data() {
        within(async {
            let mut pg = TestPostgres::start_throwaway().await.expect("start");
            let (port, url) = (pg.port().unwrap(), pg.url());
            pg.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)")
                .await
                .unwrap();

            pg.kill().await;
            assert!(!pg.is_running());
            wait_until_down(port).await;
            // Killing twice is harmless.
            pg.kill().await;

            pg.restart().await.expect("restart after kill");
            assert_eq!(pg.port(), Some(port));
            assert_eq!(pg.url(), url);
            assert_eq!(pg.psql("SELECT count(*) FROM t").await.unwrap(), "2");
            assert!(pg.log_contents().contains("not properly shut down"));

            // Restarting a running server stops it gracefully first.
            pg.restart().await.expect("restart while running");
            assert_eq!(pg.psql("SELECT sum(x) FROM t").await.unwrap(), "3");
            pg.stop().await.expect("graceful stop");
            wait_until_down(port).await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn database_url_mode_creates_and_drops_a_fresh_database() {
        within(async {
            // Use a throwaway server as the "DATABASE_URL" server.
            let host = TestPostgres::start_throwaway().await.expect("start");
            let mut ext = TestPostgres::with_database_url(&host.admin_url()).await;
            assert!(ext.is_external());
            assert_eq!(ext.port(), None);
            assert!(ext.database().starts_with("test_"));
            assert_ne!(ext.database(), host.database());
            assert_eq!(
                ext.url(),
                format!(
                    "postgres://postgres@127.0.0.1:{}/{}",
                    host.port().unwrap(),
                    ext.database()
                )
            );
            assert_eq!(
                ext.psql("select current_database()").await.unwrap(),
                ext.database()
            );
            assert!(matches!(
                ext.restart().await,
                Err(PgHarnessError::Unsupported(_))
            ));
            ext.kill().await; // no-op

            let count = format!(
                "SELECT count(*) FROM pg_database WHERE datname = '{}'",
                ext.database()
            );
            assert_eq!(host.psql(&count).await.unwrap(), "1");
            drop(ext);
            assert_eq!(host.psql(&count).await.unwrap(), "0");

            // A URL that cannot name a database is used as-is.
            let as_is = TestPostgres::with_database_url("host=127.0.0.1 user=postgres").await;
            assert_eq!(as_is.url(), "host=127.0.0.1 user=postgres");
            assert_eq!(as_is.database(), "");
        })
        .await;
    }
}
