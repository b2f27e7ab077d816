//! The command line and environment of an obproxy the agent starts.
use std::{os::fd::RawFd, path::PathBuf, time::Duration};

use crate::config::ObproxyConfig;

/// Everything the spawner thread needs to start one obproxy.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub binary: PathBuf,
    pub args: Vec<String>,
    pub home: PathBuf,
    pub env: Vec<(String, String)>,
    /// Listener fds whose close-on-exec flag is cleared in the child only.
    pub inherit_fds: Vec<RawFd>,
    /// Where the child's stdout and stderr go (obproxy logs under its home).
    pub output: PathBuf,
}

/// obproxy's arguments: the user's, `-N` (the agent is the supervisor, so no
/// daemonizing) and one `-o` carrying the user's items plus the drain window
/// in microseconds, because obproxy keeps only the last `-o` it is given.
pub fn args(cfg: &ObproxyConfig, exit_timeout: Duration) -> Vec<String> {
    let mut args = cfg.args.clone();
    if !args.iter().any(|a| a == "-N" || a == "--nodaemon") {
        args.push("-N".into());
    }
    let window = format!("hot_upgrade_exit_timeout={}", exit_timeout.as_micros());
    let optstr = match cfg.optstr.as_deref() {
        Some(user) if !user.trim().is_empty() => format!("{},{window}", user.trim_end_matches(',')),
        _ => window,
    };
    args.push("-o".into());
    args.push(optstr);
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str], optstr: Option<&str>) -> ObproxyConfig {
        ObproxyConfig {
            home: "/h".into(),
            binary: "/h/bin/obproxy".into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            optstr: optstr.map(str::to_string),
            listen: vec!["0.0.0.0:2883".parse().unwrap()],
            hot_upgrade_exit_timeout: Duration::from_secs(30),
            start_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(10),
            upgrade_dir: "/h/bin".into(),
            admin: Default::default(),
        }
    }

    #[test]
    fn the_drain_window_is_merged_into_the_users_single_optstr() {
        let a = args(
            &cfg(&["-n", "app"], Some("a=1,b=2")),
            Duration::from_secs(30),
        );
        assert_eq!(
            a,
            [
                "-n",
                "app",
                "-N",
                "-o",
                "a=1,b=2,hot_upgrade_exit_timeout=30000000"
            ]
        );
    }

    #[test]
    fn without_a_user_optstr_the_agent_adds_one() {
        let a = args(&cfg(&["-N"], None), Duration::ZERO);
        assert_eq!(a, ["-N", "-o", "hot_upgrade_exit_timeout=0"]);
    }
}
