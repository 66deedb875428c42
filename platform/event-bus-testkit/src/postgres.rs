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

use crate::local::tail_lines;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;
use tokio::net::TcpStream;

/// Time a throwaway server gets to become ready (start and restart).
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The message part that tells a developer how to get a PostgreSQL.
const HOW_TO_GET_POSTGRES: &str =
    "run ./scripts/install-test-deps.sh (apt-get install postgresql) or set DATABASE_URL=postgres://...";
/// Root directory of Debian's versioned PostgreSQL installations.
const DEBIAN_PG_ROOT: &str = "/usr/lib/postgresql";
/// System user the server runs as when the tests run as root.
const SERVER_USER: &str = "postgres";
/// Attempts made by a fresh start when the randomly chosen port was taken.
const START_ATTEMPTS: usize = 3;
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
const PSQL_TIMEOUT: Duration = Duration::from_secs(60);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an immediate shutdown may take before the server is SIGKILLed.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a fast (graceful) shutdown may take before the server is SIGKILLed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const LOG_TAIL_LINES: usize = 40;
const INITIAL_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(250);

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

// ---------------------------------------------------------------------------
// Locating binaries
// ---------------------------------------------------------------------------

static BIN_DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Locates the PostgreSQL server binary directory (cached for the process).
///
/// Resolution order: env `PG_BIN_DIR`; the highest version under
/// `/usr/lib/postgresql/*/bin`; the first `PATH` entry holding both `initdb`
/// and `postgres`. A directory qualifies if it holds `initdb` and `postgres`.
/// The error says how to get them.
pub fn pg_bin_dir() -> Result<PathBuf, PgHarnessError> {
    BIN_DIR
        .get_or_init(|| {
            resolve_bin_dir(
                std::env::var_os("PG_BIN_DIR")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from),
                &[PathBuf::from(DEBIAN_PG_ROOT)],
                std::env::var_os("PATH"),
            )
        })
        .clone()
        .map_err(PgHarnessError::BinariesNotFound)
}

fn has_server_binaries(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("postgres").is_file()
}

fn resolve_bin_dir(
    explicit: Option<PathBuf>,
    version_roots: &[PathBuf],
    path_var: Option<OsString>,
) -> Result<PathBuf, String> {
    let mut notes = Vec::new();
    if let Some(dir) = explicit {
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
        notes.push(format!(
            "PG_BIN_DIR={} has no initdb/postgres",
            dir.display()
        ));
    }
    for root in version_roots {
        let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(root)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (parse_version_dir(&name), e.path().join("bin"))
            })
            .collect();
        versions.sort_by(|a, b| b.0.cmp(&a.0));
        match versions
            .into_iter()
            .find(|(_, bin)| has_server_binaries(bin))
        {
            Some((_, bin)) => return Ok(bin),
            None => notes.push(format!("nothing in {}/*/bin", root.display())),
        }
    }
    if let Some(path) = path_var {
        if let Some(dir) = std::env::split_paths(&path).find(|d| has_server_binaries(d)) {
            return Ok(dir);
        }
    }
    notes.push("no initdb/postgres on PATH".into());
    Err(format!(
        "no PostgreSQL server binaries (initdb, postgres) found ({}): {HOW_TO_GET_POSTGRES} \
         (or PG_BIN_DIR=/usr/lib/postgresql/<version>/bin)",
        notes.join("; ")
    ))
}

/// `"15"` -> `[15]`, `"9.6"` -> `[9, 6]`; non-numeric names sort lowest.
fn parse_version_dir(name: &str) -> Vec<u32> {
    name.split('.')
        .map(|p| p.parse::<u32>())
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_default()
}

/// A client tool (`psql`, `pg_isready`): the bin dir's copy, else
/// `/usr/bin/<name>`, else `<name>` on `PATH`.
fn client_binary(name: &str) -> PathBuf {
    if let Ok(dir) = pg_bin_dir() {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    let p = Path::new("/usr/bin").join(name);
    if p.is_file() {
        p
    } else {
        PathBuf::from(name)
    }
}

/// The `psql` binary the harness uses (bin dir, `/usr/bin/psql`, or `PATH`).
pub fn psql_binary() -> PathBuf {
    client_binary("psql")
}

// ---------------------------------------------------------------------------
// Running as the server user
// ---------------------------------------------------------------------------

fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| match fs::metadata("/proc/self") {
        // /proc/<pid> is owned by the process's effective uid.
        Ok(m) => m.uid() == 0,
        Err(_) => Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false),
    })
}

/// How to become the server user when running as root.
#[derive(Debug, Clone)]
enum Wrapper {
    Runuser(PathBuf),
    Su,
}

fn wrapper() -> Wrapper {
    static WRAPPER: OnceLock<Wrapper> = OnceLock::new();
    WRAPPER
        .get_or_init(|| {
            let mut candidates = vec![
                PathBuf::from("/usr/sbin/runuser"),
                PathBuf::from("/sbin/runuser"),
            ];
            if let Some(path) = std::env::var_os("PATH") {
                candidates.extend(std::env::split_paths(&path).map(|d| d.join("runuser")));
            }
            candidates
                .into_iter()
                .find(|p| p.is_file())
                .map(Wrapper::Runuser)
                .unwrap_or(Wrapper::Su)
        })
        .clone()
}

/// `(uid, gid)` of the `postgres` system user.
fn server_user_ids() -> Option<(u32, u32)> {
    let parse = |text: &str| {
        text.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 4 && f[0] == SERVER_USER)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
    };
    if let Some(ids) = fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|t| parse(&t))
    {
        return Some(ids);
    }
    let out = Command::new("getent")
        .args(["passwd", SERVER_USER])
        .output()
        .ok()?;
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// Quotes one word for `/bin/sh`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A command running `program args` as the server user: directly when not
/// root, else through `runuser -u postgres --` (or `su postgres -s /bin/sh -c`).
/// `PG*` environment variables are removed and messages are forced to English
/// (`LC_ALL=C`) so that log checks work.
fn server_command(program: &Path, args: &[OsString], cwd: &Path) -> Command {
    let mut cmd = if !running_as_root() {
        let mut c = Command::new(program);
        c.args(args);
        c
    } else {
        match wrapper() {
            Wrapper::Runuser(runuser) => {
                let mut c = Command::new(runuser);
                c.args(["-u", SERVER_USER, "--"]).arg(program).args(args);
                c
            }
            Wrapper::Su => {
                let script = std::iter::once(program.as_os_str())
                    .chain(args.iter().map(OsString::as_os_str))
                    .map(|a| shell_quote(&a.to_string_lossy()))
                    .collect::<Vec<_>>()
                    .join(" ");
                let mut c = Command::new("su");
                c.args([SERVER_USER, "-s", "/bin/sh", "-c"])
                    .arg(format!("exec {script}"));
                c
            }
        }
    };
    scrub_env(&mut cmd);
    cmd.current_dir(cwd);
    cmd
}

/// Removes `PG*` variables (except `PG_BIN_DIR`) and sets `LC_ALL=C`.
fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("PG") && k != "PG_BIN_DIR" {
            cmd.env_remove(&key);
        }
    }
    cmd.env("LC_ALL", "C");
}

/// A temp dir the server user can use: under the default temp dir if every
/// ancestor is world-traversable (or we are not root), else under `/tmp`.
fn make_temp_dir() -> Result<TempDir, PgHarnessError> {
    let base = std::env::temp_dir();
    let base = if !running_as_root() || traversable_by_others(&base) {
        base
    } else {
        PathBuf::from("/tmp")
    };
    let dir = tempfile::Builder::new()
        .prefix("pg-test-")
        .tempdir_in(&base)
        .map_err(|e| PgHarnessError::io(format!("creating temp dir in {}", base.display()), e))?;
    if running_as_root() {
        let (uid, gid) = server_user_ids().ok_or_else(|| {
            PgHarnessError::Setup(format!(
                "running as root, but there is no `{SERVER_USER}` system user to run the \
                 server as (PostgreSQL refuses to run as root): {HOW_TO_GET_POSTGRES}, \
                 or run the tests as a non-root user"
            ))
        })?;
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(|e| {
            PgHarnessError::io(format!("chown {SERVER_USER} {}", dir.path().display()), e)
        })?;
    }
    Ok(dir)
}

fn traversable_by_others(path: &Path) -> bool {
    path.ancestors().all(|p| {
        fs::metadata(p)
            .map(|m| m.mode() & 0o001 != 0)
            .unwrap_or(false)
    })
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

fn free_port() -> Result<u16, PgHarnessError> {
    crate::local::free_ports(1)
        .map(|p| p[0])
        .map_err(|e| PgHarnessError::io("picking a free loopback port", e))
}

/// `test_<pid>_<counter>_<nanos>`: unique across processes and calls.
fn unique_db_name() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("test_{}_{n}_{nanos:x}", std::process::id())
}

/// Replaces the database (path) of a `postgres://`/`postgresql://` URL.
/// Returns `None` for other forms (keyword/value strings, `dbname=` params).
fn with_database(url: &str, db: &str) -> Option<String> {
    let scheme_end = ["postgres://", "postgresql://"]
        .iter()
        .find(|s| url.starts_with(*s))?
        .len();
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let after = &rest[authority_end..];
    let suffix_start = after.find(['?', '#']).unwrap_or(after.len());
    let suffix = &after[suffix_start..];
    if suffix.contains("dbname=") {
        return None;
    }
    Some(format!(
        "{}/{db}{suffix}",
        &url[..scheme_end + authority_end]
    ))
}

/// Hides the password of a URL for error messages.
fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end],
                &authority[..colon],
                &url[scheme_end + at..]
            ),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

fn output_text(out: &Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(err.trim_end());
    }
    text
}

/// Runs a short-lived command with a timeout, capturing its output.
async fn run_captured(
    cmd: Command,
    what: &str,
    timeout: Duration,
) -> Result<Output, PgHarnessError> {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| PgHarnessError::io(format!("spawning `{what}`"), e))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(PgHarnessError::io(format!("waiting for `{what}`"), e)),
        Err(_) => Err(PgHarnessError::Timeout {
            what: format!("`{what}` to finish"),
            waited: timeout,
            log_tail: String::new(),
        }),
    }
}

/// A `psql` command running `sql` against `url` (no psqlrc, stop on error,
/// unaligned tuples-only output).
fn psql_command(url: &str, sql: &str, scrub: bool) -> Command {
    let mut cmd = Command::new(psql_binary());
    if scrub {
        scrub_env(&mut cmd);
    }
    cmd.env("PGCONNECT_TIMEOUT", "10").args([
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        url,
        "-c",
        sql,
    ]);
    cmd
}

/// Runs `sql` with `psql` against `url`; returns trimmed stdout.
async fn run_psql(url: &str, sql: &str, scrub: bool) -> Result<String, PgHarnessError> {
    let what = format!("psql {} -c {sql:?}", redact_url(url));
    let out = run_captured(psql_command(url, sql, scrub), &what, PSQL_TIMEOUT).await?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(PgHarnessError::Command {
            command: what,
            status: out.status.to_string(),
            details: output_text(&out),
        })
    }
}

/// Runs a command synchronously (for `Drop`), killing it after `timeout`.
fn run_blocking_quiet(mut cmd: Command, timeout: Duration) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let Ok(mut child) = cmd.spawn() else {
        return false;
    };
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// Parent PID of `pid` from `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// PIDs whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| parent_of(pid) == Some(parent))
        .collect()
}

/// Sends `signal` (`QUIT`, `INT`, `KILL`, ...) to `pid`.
fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("/bin/sh")
        .args([
            "-c",
            "kill -s \"$1\" \"$2\"",
            "sh",
            signal,
            &pid.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

async fn tcp_accepts(port: u16) -> bool {
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
async fn pg_isready(port: u16) -> bool {
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
        run_captured(cmd, "pg_isready", PROBE_TIMEOUT).await,
        Ok(out) if out.status.success()
    )
}

// ---------------------------------------------------------------------------
// The throwaway server
// ---------------------------------------------------------------------------

/// Signals used to shut the server down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shutdown {
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
struct Server {
    /// The spawned process: `postgres` itself, or the `runuser`/`su` wrapper
    /// whose only child is `postgres` (when running as root).
    child: Option<Child>,
    wrapped: bool,
    /// The postmaster pid recorded for orphan reaping (see `orphans.rs`).
    recorded: Option<u32>,
    bin_dir: PathBuf,
    port: u16,
    root: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    startup_timeout: Duration,
    // Declared last: removed after `Drop::drop` has stopped the process.
    _dir: TempDir,
}

impl Server {
    /// Creates the temp dir and runs `initdb`; does not start the server.
    async fn init(bin_dir: PathBuf) -> Result<Self, PgHarnessError> {
        let dir = make_temp_dir()?;
        let root = dir.path().to_path_buf();
        let server = Server {
            child: None,
            wrapped: running_as_root(),
            recorded: None,
            data_dir: root.join("data"),
            log_path: root.join("postgres.log"),
            root,
            bin_dir,
            port: 0,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            _dir: dir,
        };
        let initdb = server.bin_dir.join("initdb");
        let args: Vec<OsString> = vec![
            "-D".into(),
            server.data_dir.clone().into(),
            "-U".into(),
            "postgres".into(),
            "--auth=trust".into(),
            "-E".into(),
            "UTF8".into(),
            "--locale=C".into(),
            "--no-sync".into(),
        ];
        let what = format!("{} -D {}", initdb.display(), server.data_dir.display());
        let out = run_captured(
            server_command(&initdb, &args, &server.root),
            &what,
            INITDB_TIMEOUT,
        )
        .await?;
        if !out.status.success() {
            return Err(PgHarnessError::Command {
                command: what,
                status: out.status.to_string(),
                details: tail_lines(&output_text(&out), LOG_TAIL_LINES),
            });
        }
        Ok(server)
    }

    fn log_len(&self) -> u64 {
        fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0)
    }

    /// Last lines of the log written after byte `from`.
    fn log_tail_from(&self, from: u64) -> String {
        let bytes = fs::read(&self.log_path).unwrap_or_default();
        let start = (from as usize).min(bytes.len());
        tail_lines(&String::from_utf8_lossy(&bytes[start..]), LOG_TAIL_LINES)
    }

    /// Spawns `postgres` on `self.port`; output is appended to the log.
    fn spawn(&mut self) -> Result<(), PgHarnessError> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| PgHarnessError::io(format!("opening {}", self.log_path.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| PgHarnessError::io("cloning log file handle", e))?;
        let args: Vec<OsString> = vec![
            "-D".into(),
            self.data_dir.clone().into(),
            "-p".into(),
            self.port.to_string().into(),
            "-k".into(),
            self.root.clone().into(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            "fsync=off".into(),
            "-c".into(),
            "max_connections=100".into(),
        ];
        let postgres = self.bin_dir.join("postgres");
        let child = server_command(&postgres, &args, &self.root)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| PgHarnessError::io(format!("spawning {}", postgres.display()), e))?;
        self.child = Some(child);
        Ok(())
    }

    /// Spawns the server and polls until it accepts connections, it exits,
    /// or the startup deadline passes.
    async fn spawn_and_wait(&mut self) -> Result<(), PgHarnessError> {
        let log_start = self.log_len();
        let started = Instant::now();
        let deadline = started + self.startup_timeout;
        self.spawn()?;
        let mut backoff = INITIAL_BACKOFF;
        loop {
            if let Some(child) = self.child.as_mut() {
                let exited = child
                    .try_wait()
                    .map_err(|e| PgHarnessError::io("polling postgres process", e))?;
                if let Some(status) = exited {
                    self.child = None;
                    return Err(PgHarnessError::Exited {
                        status: status.to_string(),
                        log_tail: self.log_tail_from(log_start),
                    });
                }
            }
            if tcp_accepts(self.port).await && pg_isready(self.port).await {
                // The postmaster has the data directory on its command line.
                if let Some(pid) = self.postmaster_pid() {
                    crate::orphans::record(pid, &self.data_dir);
                    self.recorded = Some(pid);
                }
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                let log_tail = self.log_tail_from(log_start);
                self.shutdown_blocking(Shutdown::Immediate);
                return Err(PgHarnessError::Timeout {
                    what: format!("postgres on 127.0.0.1:{} to accept connections", self.port),
                    waited: now - started,
                    log_tail,
                });
            }
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// PID of the postmaster (the wrapper's child when running as root).
    fn postmaster_pid(&self) -> Option<u32> {
        let child = self.child.as_ref()?;
        if self.wrapped {
            children_of(child.id()).into_iter().next()
        } else {
            Some(child.id())
        }
    }

    /// One step of a shutdown: returns true once the process has exited.
    /// Sends `how`'s signal to the postmaster the first time it is found.
    fn shutdown_step(&mut self, how: Shutdown, signalled: &mut bool) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        if !matches!(child.try_wait(), Ok(None)) {
            self.child = None;
            self.forget();
            return true;
        }
        if !*signalled {
            if let Some(pid) = self.postmaster_pid() {
                *signalled = send_signal(pid, how.signal());
            }
        }
        false
    }

    fn forget(&mut self) {
        if let Some(pid) = self.recorded.take() {
            crate::orphans::forget(pid);
        }
    }

    /// SIGKILLs the postmaster, its children and the wrapper, then reaps.
    fn force_kill(&mut self) {
        if let Some(pm) = self.postmaster_pid() {
            let backends = children_of(pm);
            send_signal(pm, "KILL");
            for pid in backends {
                send_signal(pid, "KILL");
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.forget();
    }

    /// Shuts down and waits (async); SIGKILL after the mode's timeout.
    /// Returns false if SIGKILL was needed.
    async fn shutdown(&mut self, how: Shutdown) -> bool {
        let deadline = Instant::now() + how.timeout();
        let mut signalled = false;
        let mut backoff = Duration::from_millis(5);
        while !self.shutdown_step(how, &mut signalled) {
            if Instant::now() >= deadline {
                self.force_kill();
                return false;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
        true
    }

    /// Like [`Server::shutdown`] but blocking (for `Drop` and error paths).
    fn shutdown_blocking(&mut self, how: Shutdown) -> bool {
        let deadline = Instant::now() + how.timeout();
        let mut signalled = false;
        while !self.shutdown_step(how, &mut signalled) {
            if Instant::now() >= deadline {
                self.force_kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown_blocking(Shutdown::Immediate);
    }
}

// ---------------------------------------------------------------------------
// Public handle
// ---------------------------------------------------------------------------

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
        let mut server = Server::init(bin_dir).await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            server.port = free_port()?;
            match server.spawn_and_wait().await {
                Ok(()) => break,
                Err(e) if e.is_address_in_use() && attempt < START_ATTEMPTS => continue,
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
        match self.server.as_mut().and_then(|s| s.child.as_mut()) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The whole server log (empty when using `DATABASE_URL`).
    pub fn log_contents(&self) -> String {
        self.server
            .as_ref()
            .map(|s| {
                String::from_utf8_lossy(&fs::read(&s.log_path).unwrap_or_default()).into_owned()
            })
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
                if run_blocking_quiet(psql_command(&self.admin_url, &sql, false), PSQL_TIMEOUT) {
                    break;
                }
            }
        }
        // `server` (if any) is stopped and its temp dir removed by `Server::drop`.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    const TEST_TIMEOUT: Duration = Duration::from_secs(120);

    async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(TEST_TIMEOUT, fut)
            .await
            .expect("test exceeded its timeout")
    }

    /// Runs the psql binary directly: `psql <url> -c <sql>`.
    async fn raw_psql(url: &str, sql: &str) -> Output {
        let mut cmd = Command::new(psql_binary());
        scrub_env(&mut cmd);
        cmd.args(["-X", "-A", "-t", "-c", sql, url]);
        run_captured(cmd, "psql", PSQL_TIMEOUT).await.unwrap()
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
    fn rewrites_database_in_urls() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/db?sslmode=disable", "x").as_deref(),
            Some("postgres://u:p@h:5432/x?sslmode=disable")
        );
        assert_eq!(
            with_database("postgresql://h", "x").as_deref(),
            Some("postgresql://h/x")
        );
        assert_eq!(
            with_database("postgres://h:1/", "x").as_deref(),
            Some("postgres://h:1/x")
        );
        assert_eq!(
            with_database("postgres://[::1]:5/a#f", "x").as_deref(),
            Some("postgres://[::1]:5/x#f")
        );
        assert_eq!(with_database("host=h dbname=d", "x"), None);
        assert_eq!(with_database("postgres://h/?dbname=d", "x"), None);
        assert_eq!(
            redact_url("postgres://u:secret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn picks_highest_version_and_explains_missing_binaries() {
        let root = TempDir::new().unwrap();
        let err = resolve_bin_dir(
            Some(root.path().join("nope")),
            &[root.path().to_path_buf()],
            Some(OsString::new()),
        )
        .unwrap_err();
        assert!(
            err.contains(
                "run ./scripts/install-test-deps.sh (apt-get install postgresql) \
                 or set DATABASE_URL=postgres://..."
            ),
            "{err}"
        );
        assert!(err.contains("PG_BIN_DIR="), "{err}");

        for v in ["9.6", "15", "16", "misc"] {
            let bin = root.path().join(v).join("bin");
            fs::create_dir_all(&bin).unwrap();
            if v != "16" {
                fs::write(bin.join("initdb"), "").unwrap();
                fs::write(bin.join("postgres"), "").unwrap();
            }
        }
        // 16 lacks binaries, so 15 wins over 9.6.
        let found = resolve_bin_dir(None, &[root.path().to_path_buf()], None).unwrap();
        assert_eq!(found, root.path().join("15").join("bin"));
        let explicit = root.path().join("9.6").join("bin");
        let found =
            resolve_bin_dir(Some(explicit.clone()), &[root.path().to_path_buf()], None).unwrap();
        assert_eq!(found, explicit);
        assert!(parse_version_dir("10") > parse_version_dir("9.6"));
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
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
    async fn port_in_use_is_detected_for_retry() {
        within(async {
            let blocker = TcpListener::bind(("127.0.0.1", 0)).unwrap();
            let mut server = Server::init(pg_bin_dir().unwrap()).await.expect("initdb");
            server.port = blocker.local_addr().unwrap().port();
            let err = server.spawn_and_wait().await.unwrap_err();
            assert!(err.is_address_in_use(), "{err}");
            assert!(server.child.is_none());
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
