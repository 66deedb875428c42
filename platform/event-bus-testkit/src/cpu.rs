//! On-CPU time of a process, for benches that report the CPU a message
//! costs the client and the server beside the throughput.

use std::time::Duration;

/// On-CPU time of every thread of process `pid` (`"self"` for this one),
/// from `/proc/<pid>/task/*/schedstat` (Linux only; zero elsewhere).
pub fn cpu_time(pid: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_used_cpu() {
        let start = super::cpu_time("self");
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(i));
        }
        if cfg!(target_os = "linux") {
            assert!(super::cpu_time("self") > start);
        }
    }
}
