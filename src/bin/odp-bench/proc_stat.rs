//! What a process has cost so far, from `/proc`: CPU time (its own, and its reaped
//! children's) and resident memory. Every benchmark accounts for the processes it runs
//! (the load generator's included) with these.
use std::time::Duration;

/// CPU time of `pid`: its own, plus that of the children it has reaped (an agent reaps
/// the obproxy processes it started; a HAProxy master its workers). Zero if it is gone.
pub fn cpu(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Duration::ZERO;
    };
    // After the command: state is field 3; utime, stime, cutime, cstime are 14 to 17.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..15)
        .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    // SAFETY: sysconf with a valid name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}

/// CPU time of this process (the benchmark's own orchestration and in-process servers).
pub fn own_cpu() -> Duration {
    cpu(std::process::id())
}

/// Resident memory of `pid`, in MiB (zero if it is gone).
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Raises this process's open-file limit to its hard limit (children inherit it): the
/// scale benchmarks hold thousands of connections.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid resource and struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_spent_some_cpu_and_holds_memory() {
        // Spin until the kernel has charged a tick (10 ms) to this process;
        // on a busy machine that takes longer than the same wall time.
        let spin = std::time::Instant::now();
        while own_cpu() == Duration::ZERO && spin.elapsed() < Duration::from_secs(20) {}
        assert!(own_cpu() > Duration::ZERO);
        assert!(rss_mib(std::process::id()) > 0.0);
        assert_eq!(cpu(u32::MAX), Duration::ZERO);
    }
}
