//! Servers left behind by a test process that was killed.
//!
//! A test process that dies by SIGKILL (a CI timeout, an impatient user) runs
//! no destructors, so the servers it spawned keep running. Without `unsafe`
//! a child cannot be tied to its parent's life (`PR_SET_PDEATHSIG` must be
//! set between fork and exec), so the harness keeps a record instead: each
//! spawned server is a file `<server pid>` in a shared directory holding the
//! spawning process's pid and the server's config path. The first harness
//! start in a process kills the servers whose spawning process is gone (the
//! config path, which is on the server's command line, guards against a
//! recycled pid) and deletes their temporary directories. Linux only (it
//! reads `/proc`); elsewhere it does nothing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Once;

fn registry() -> PathBuf {
    std::env::temp_dir().join("event-bus-testkit-servers")
}

/// Records a server spawned by this process; `config` is the config file
/// given on its command line (its directory is the server's temporary one).
pub(crate) fn record(pid: u32, config: &Path) {
    let dir = registry();
    if fs::create_dir_all(&dir).is_ok() {
        let _ = fs::write(
            dir.join(pid.to_string()),
            format!("{}\n{}\n", std::process::id(), config.display()),
        );
    }
}

/// Forgets a server this process has stopped.
pub(crate) fn forget(pid: u32) {
    let _ = fs::remove_file(registry().join(pid.to_string()));
}

/// Once per process: kills recorded servers whose spawning process is gone.
pub(crate) fn reap_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(reap);
}

fn reap() {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(registry()) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let mut lines = text.lines();
        let (Some(owner), Some(config)) = (lines.next(), lines.next()) else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue; // its process is alive: its servers are in use
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains(config) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            eprintln!(
                "event-bus-testkit: killed server {pid} left running by process {owner}, which is gone"
            );
        }
        if let Some(dir) = Path::new(config).parent() {
            // The server's temporary directory (config, store, log).
            if dir.starts_with(std::env::temp_dir()) {
                let _ = fs::remove_dir_all(dir);
            }
        }
        let _ = fs::remove_file(entry.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests share the registry: one at a time.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// A record whose owner is gone and whose pid runs something else (the
    /// config path is not on its command line) is dropped without a kill.
    #[test]
    fn stale_records_are_dropped_and_strangers_spared() {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut stranger = Command::new("sleep").arg("30").spawn().unwrap();
        let dir = registry();
        fs::create_dir_all(&dir).unwrap();
        let record = dir.join(stranger.id().to_string());
        // Owner pid 0 never names a live process in /proc.
        fs::write(&record, "0\n/tmp/no-such-dir/nats-server.conf\n").unwrap();
        reap();
        assert!(!record.exists(), "the stale record is removed");
        assert!(
            stranger.try_wait().unwrap().is_none(),
            "a process that is not the recorded server is not killed"
        );
        stranger.kill().unwrap();
        stranger.wait().unwrap();
    }

    /// A recorded server whose owner is gone is killed.
    #[test]
    fn orphans_are_killed() {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let config = std::env::temp_dir()
            .join(format!("orphan-test-{}", std::process::id()))
            .join("nats-server.conf");
        // Stands in for a server: a process with the config path on its
        // command line, which keeps it (a shell running `sleep` as a child:
        // not `exec`ing it, and not a chain of wrapper scripts such as a
        // pyenv shim, whose command line changes while another test
        // process's reaper may look at it).
        let mut orphan = Command::new("/bin/sh")
            .args(["-c", "sleep 20; exit 0"])
            .arg(&config)
            .spawn()
            .unwrap();
        // Recorded once it runs its own program (as the harness records a
        // server after spawning it).
        let started = std::time::Instant::now();
        while !String::from_utf8_lossy(
            &fs::read(format!("/proc/{}/cmdline", orphan.id())).unwrap_or_default(),
        )
        .contains(&*config.to_string_lossy())
        {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "the shell did not start"
            );
            std::thread::yield_now();
        }
        let record = registry().join(orphan.id().to_string());
        fs::create_dir_all(registry()).unwrap();
        fs::write(&record, format!("0\n{}\n", config.display())).unwrap();
        reap();
        let status = orphan.wait().unwrap();
        assert!(!status.success(), "killed: {status:?}");
        assert!(!record.exists());
    }
}
