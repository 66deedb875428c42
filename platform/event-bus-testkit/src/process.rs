//! The process harness under both test servers (`nats-server`, `postgres`):
//! spawn a child with its output appended to a log file, probe readiness
//! with backoff within a deadline, stop it with a signal (SIGKILL when it
//! does not exit in time), kill it, and keep a tail of its log for error
//! messages. Each server module adds only what is its own (config, ports,
//! `initdb`, the readiness probe, JetStream/cluster options).

use std::fs;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Lines of log included in error messages.
pub(crate) const LOG_TAIL_LINES: usize = 40;

/// Pauses between probes: 10 ms doubling to 250 ms, never past the deadline.
pub(crate) struct Backoff {
    pause: Duration,
    deadline: Instant,
}

impl Backoff {
    /// Backoff until `deadline`.
    pub(crate) fn until(deadline: Instant) -> Self {
        Backoff {
            pause: Duration::from_millis(10),
            deadline,
        }
    }

    /// Sleeps before the next probe; false (without sleeping) once the
    /// deadline has passed.
    pub(crate) async fn wait(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        tokio::time::sleep(self.pause.min(self.deadline - now)).await;
        self.pause = (self.pause * 2).min(Duration::from_millis(250));
        true
    }
}

/// Why a spawned process did not become ready.
#[derive(Debug)]
pub(crate) enum NotReady {
    /// It exited first.
    Exited(ExitStatus),
    /// The deadline passed; `last_probe` is what the last probe saw.
    Timeout {
        waited: Duration,
        last_probe: String,
    },
    /// Polling the process failed.
    Io(io::Error),
}

/// A server process the harness spawns, and spawns again on restart.
#[derive(Debug)]
pub(crate) struct Process {
    /// The command, spawned anew by each [`Process::spawn`].
    cmd: Command,
    /// File the process's stdout and stderr are appended to.
    output: PathBuf,
    /// A path on the server's command line, recorded for orphan reaping.
    marker: PathBuf,
    /// The child is a wrapper (`runuser`, `su`) whose only child is the server.
    wrapped: bool,
    child: Option<Child>,
    /// The server pid recorded for orphan reaping (see `orphans.rs`).
    recorded: Option<u32>,
}

impl Process {
    /// A process running `cmd` (not spawned yet). `output` receives its
    /// stdout and stderr; `marker` is a path on the server's command line;
    /// `wrapped` says that `cmd` starts a wrapper whose only child is the server.
    pub(crate) fn new(cmd: Command, output: PathBuf, marker: PathBuf, wrapped: bool) -> Self {
        Process {
            cmd,
            output,
            marker,
            wrapped,
            child: None,
            recorded: None,
        }
    }

    /// The file receiving stdout and stderr.
    pub(crate) fn output_path(&self) -> &Path {
        &self.output
    }

    /// Spawns the command, its output appended to the output file.
    pub(crate) fn spawn(&mut self) -> io::Result<()> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.output)?;
        let err = out.try_clone()?;
        let child = self
            .cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()?;
        self.child = Some(child);
        self.record();
        Ok(())
    }

    /// Polls `probe` with [`Backoff`] until it returns `Ok`, the process
    /// exits (it is then forgotten), or `deadline` passes. `probe`'s error
    /// says what it saw, for the timeout message.
    pub(crate) async fn wait_ready<F, Fut>(
        &mut self,
        deadline: Instant,
        mut probe: F,
    ) -> Result<(), NotReady>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let started = Instant::now();
        let mut backoff = Backoff::until(deadline);
        loop {
            if let Some(status) = self.try_exit().map_err(NotReady::Io)? {
                self.reaped();
                return Err(NotReady::Exited(status));
            }
            match probe().await {
                Ok(()) => {
                    self.record();
                    return Ok(());
                }
                Err(last_probe) => {
                    if !backoff.wait().await {
                        return Err(NotReady::Timeout {
                            waited: started.elapsed(),
                            last_probe,
                        });
                    }
                }
            }
        }
    }

    /// Exit status if the process has exited; `None` while it runs or when
    /// it is not started.
    pub(crate) fn try_exit(&mut self) -> io::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child.try_wait(),
            None => Ok(None),
        }
    }

    /// True if the process was spawned and not stopped or killed through
    /// the harness (it may have exited on its own since).
    pub(crate) fn is_started(&self) -> bool {
        self.child.is_some()
    }

    /// True if the process is started and has not exited.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child.is_some() && matches!(self.try_exit(), Ok(None))
    }

    /// Pid of the server: the child, or the wrapper's child.
    pub(crate) fn pid(&self) -> Option<u32> {
        let child = self.child.as_ref()?;
        if self.wrapped {
            children_of(child.id()).into_iter().next()
        } else {
            Some(child.id())
        }
    }

    /// Records the server pid for orphan reaping once it is known.
    fn record(&mut self) {
        if self.recorded.is_none() {
            if let Some(pid) = self.pid() {
                crate::orphans::record(pid, &self.marker);
                self.recorded = Some(pid);
            }
        }
    }

    /// Forgets an exited child.
    fn reaped(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        if let Some(pid) = self.recorded.take() {
            crate::orphans::forget(pid);
        }
    }

    /// One step of a stop: true once the process has exited (or was not
    /// running). Sends `signal` to the server the first time it is found.
    fn stop_step(&mut self, signal: &str, signalled: &mut bool) -> bool {
        if self.child.is_none() {
            return true;
        }
        if !matches!(self.try_exit(), Ok(None)) {
            self.reaped();
            return true;
        }
        if !*signalled {
            if let Some(pid) = self.pid() {
                *signalled = send_signal(pid, signal);
            }
        }
        false
    }

    /// Sends `signal` (`TERM`, `INT`, `QUIT`, ...) and waits until the
    /// process exits; [`kill`](Process::kill)s it after `timeout`. Returns
    /// false if it had to be killed. No-op (true) when not running.
    pub(crate) async fn stop(&mut self, signal: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut signalled = false;
        let mut backoff = Backoff::until(deadline);
        while !self.stop_step(signal, &mut signalled) {
            if !backoff.wait().await {
                self.kill();
                return false;
            }
        }
        true
    }

    /// Like [`Process::stop`], blocking (for `Drop` and error paths).
    pub(crate) fn stop_blocking(&mut self, signal: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut signalled = false;
        while !self.stop_step(signal, &mut signalled) {
            if Instant::now() >= deadline {
                self.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// SIGKILLs the server, its children (PostgreSQL backends) and the
    /// wrapper, and reaps it (`kill -9`). No-op if not running.
    pub(crate) fn kill(&mut self) {
        let Some(server) = self.pid() else {
            self.reaped();
            return;
        };
        let children = children_of(server);
        if self.wrapped {
            send_signal(server, "KILL");
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
        }
        for pid in children {
            send_signal(pid, "KILL");
        }
        self.reaped();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Contents of the file at `path` from byte `from` on (empty if unreadable).
pub(crate) fn read_from(path: &Path, from: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Length of the file at `path` (0 if it does not exist).
pub(crate) fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The last `n` lines of `text`.
pub(crate) fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Sends `signal` (`TERM`, `QUIT`, `KILL`, ...) to `pid` with the shell's
/// `kill` builtin (present where `/bin/kill` is not).
pub(crate) fn send_signal(pid: u32, signal: &str) -> bool {
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

/// Parent pid of `pid` from `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// Pids whose parent is `parent` (Linux; empty elsewhere).
pub(crate) fn children_of(parent: u32) -> Vec<u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| parent_of(pid) == Some(parent))
        .collect()
}

/// Runs a short-lived command (a version probe, `psql` in `Drop`) to its
/// end, blocking, and kills it after `timeout`; returns its output.
pub(crate) fn run_blocking(mut cmd: Command, timeout: Duration) -> io::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut attempts = 0;
    let mut child = loop {
        match cmd.spawn() {
            Ok(child) => break child,
            // ETXTBSY: the file was just written by another thread; retry briefly.
            Err(e) if e.raw_os_error() == Some(26) && attempts < 20 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    };
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return child.wait_with_output();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no exit within {timeout:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs a short-lived command (`initdb`, `psql`, `pg_isready`) to its end
/// without blocking the runtime; `Ok(None)` if it did not finish within
/// `timeout` (it is then killed).
pub(crate) async fn run_captured(cmd: Command, timeout: Duration) -> io::Result<Option<Output>> {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn()?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => out.map(Some),
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, dir: &Path) -> Process {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script]);
        Process::new(cmd, dir.join("out.log"), dir.join("marker"), false)
    }

    /// A process that exits before it is ready is reported as exited, with
    /// its output in the log file; one that never gets ready times out with
    /// the last probe's words.
    #[tokio::test]
    async fn readiness_reports_exit_and_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let mut early = sh("echo bad config; exit 3", dir.path());
        let deadline = Instant::now() + Duration::from_secs(30);
        early.spawn().unwrap();
        let err = early
            .wait_ready(deadline, || async { Err("not yet".to_string()) })
            .await
            .unwrap_err();
        assert!(
            matches!(err, NotReady::Exited(s) if s.code() == Some(3)),
            "{err:?}"
        );
        assert!(!early.is_started());
        assert_eq!(read_from(early.output_path(), 0).trim(), "bad config");

        let mut slow = sh("exec sleep 30", dir.path());
        let deadline = Instant::now() + Duration::from_millis(200);
        slow.spawn().unwrap();
        let err = slow
            .wait_ready(deadline, || async { Err("port closed".to_string()) })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, NotReady::Timeout { last_probe, .. } if last_probe == "port closed"),
            "{err:?}"
        );
        assert!(slow.is_running());
        assert!(
            slow.stop("TERM", Duration::from_secs(30)).await,
            "exits on SIGTERM"
        );
        assert!(!slow.is_started());
    }

    /// A process that ignores the stop signal is SIGKILLed after the
    /// timeout, and the stop says so; it can be spawned again.
    #[tokio::test]
    async fn stop_kills_a_process_that_ignores_the_signal() {
        let dir = tempfile::tempdir().unwrap();
        let mut stubborn = sh("trap '' TERM; echo up; exec sleep 30", dir.path());
        stubborn.spawn().unwrap();
        crate::wait::until(Duration::from_secs(30), "the shell to set its trap", || {
            read_from(&dir.path().join("out.log"), 0).contains("up")
        })
        .await;
        let pid = stubborn.pid().unwrap();
        assert!(!stubborn.stop("TERM", Duration::from_millis(300)).await);
        assert!(!stubborn.is_running());
        assert!(!Path::new(&format!("/proc/{pid}")).exists() || cfg!(not(target_os = "linux")));

        stubborn.spawn().unwrap();
        assert!(stubborn.is_running());
        stubborn.kill();
        assert!(!stubborn.is_started());
        assert_eq!(tail_lines("a\nb\nc", 2), "b\nc");
    }
}
