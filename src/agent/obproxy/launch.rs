//! The command line and environment of an obproxy the agent starts: the
//! user's arguments with the agent's items merged into their single `-o`
//! (obproxy keeps only the last `-o`), per version line.
use std::{
    net::{IpAddr, SocketAddr},
    os::fd::RawFd,
    path::PathBuf,
    time::Duration,
};

use super::executable::Executable;
use crate::agent::config::ObproxyConfig;

/// Everything the spawner thread needs to start one obproxy.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The file to exec, opened before its version was read.
    pub binary: Executable,
    /// The umask obproxy gets: the one the agent was started with (the
    /// agent's own is 0077).
    pub umask: u32,
    pub args: Vec<String>,
    pub home: PathBuf,
    pub env: Vec<(String, String)>,
    /// Listener fds whose close-on-exec flag is cleared in the child only.
    pub inherit_fds: Vec<RawFd>,
    /// Where the child's stdout and stderr go (obproxy logs under its home).
    pub output: PathBuf,
}

/// How the new process gets its listening sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// It inherits the agent's SQL listeners, and with `rpc` (4.3+, RPC
    /// service on) the RPC listeners too.
    Inherit { rpc: bool },
    /// It binds the SQL port itself: obproxy before 4.3 on a home without
    /// `etc/obproxy_config.bin`, which only a start that was not inherited
    /// writes. The agent takes the listener from it once it listens.
    Bootstrap,
}

/// What the agent decides for one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The drain window the process will use when it is told to drain.
    pub exit_timeout: Duration,
    pub handover: Handover,
    /// `ip_listen_mode` (4.1+ only: older versions lack the item): 3 when an
    /// IPv6 listener is held (obproxy accepts on the inherited IPv6 fd only
    /// in mode 2 or 3), 1 otherwise (mode 3 without an IPv6 fd fails).
    pub ip_listen_mode: Option<u8>,
}

/// Where a bootstrap start binds: one port for IPv4 and IPv6, as obproxy's
/// `listen_port` is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind {
    pub port: u16,
    pub ipv4: IpAddr,
    pub ipv6: Option<IpAddr>,
}

impl Bind {
    /// The addresses obproxy will listen on, as the agent then holds them.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        std::iter::once(self.ipv4)
            .chain(self.ipv6)
            .map(|ip| SocketAddr::new(ip, self.port))
            .collect()
    }
}

/// What the agent's items depend on beyond the plan: the RPC port it hands
/// over, or where a bootstrap start binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ports {
    pub rpc_listen_port: Option<u16>,
    pub bind: Option<Bind>,
}

/// obproxy's arguments: the user's, `-N` (the agent is the supervisor, so no
/// daemonizing), `-p` for a bootstrap start, and one `-o` carrying the user's
/// items followed by the agent's.
pub fn args(cfg: &ObproxyConfig, plan: &Plan, ports: &Ports) -> Vec<String> {
    let mut args = cfg.args.clone();
    if !args.iter().any(|a| a == "-N" || a == "--nodaemon") {
        args.push("-N".into());
    }
    let mut items = vec![format!(
        "hot_upgrade_exit_timeout={}",
        plan.exit_timeout.as_micros()
    )];
    if let Some(mode) = plan.ip_listen_mode {
        items.push(format!("ip_listen_mode={mode}"));
    }
    if let Some(port) = ports.rpc_listen_port {
        // Informational while the RPC fd is inherited, but 4.3 persists its
        // effective config: a later start of its own finds the right port.
        items.push(format!("rpc_listen_port={port}"));
    }
    if let Some(bind) = ports.bind {
        args.push("-p".into());
        args.push(bind.port.to_string());
        items.push(format!("local_bound_ip={}", bind.ipv4));
        if let Some(v6) = bind.ipv6 {
            items.push(format!("local_bound_ipv6_ip={v6}"));
        }
    }
    let agent = items.join(",");
    let optstr = match cfg.optstr.as_deref() {
        Some(user) if !user.trim().is_empty() => format!("{},{agent}", user.trim_end_matches(',')),
        _ => agent,
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
            rpc_listen: None,
            rpc_service: true,
            hot_upgrade_exit_timeout: Duration::from_secs(30),
            start_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(10),
            upgrade_dir: "/h/bin".into(),
            admin: Default::default(),
        }
    }

    fn plan(exit: Duration, mode: Option<u8>) -> Plan {
        Plan {
            exit_timeout: exit,
            handover: Handover::Inherit { rpc: false },
            ip_listen_mode: mode,
        }
    }

    #[test]
    fn the_drain_window_is_merged_into_the_users_single_optstr() {
        let a = args(
            &cfg(&["-n", "app"], Some("a=1,b=2")),
            &plan(Duration::from_secs(30), None),
            &Ports::default(),
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
        let a = args(
            &cfg(&["-N"], None),
            &plan(Duration::ZERO, None),
            &Ports::default(),
        );
        assert_eq!(a, ["-N", "-o", "hot_upgrade_exit_timeout=0"]);
    }

    #[test]
    fn listen_mode_and_rpc_port_join_the_same_optstr() {
        let a = args(
            &cfg(&[], Some("x=1")),
            &plan(Duration::from_secs(1), Some(3)),
            &Ports {
                rpc_listen_port: Some(2885),
                bind: None,
            },
        );
        assert_eq!(
            a.last().unwrap(),
            "x=1,hot_upgrade_exit_timeout=1000000,ip_listen_mode=3,rpc_listen_port=2885"
        );
        assert_eq!(a.iter().filter(|a| *a == "-o").count(), 1);
    }

    #[test]
    fn a_bootstrap_start_binds_the_listen_address_itself() {
        let bind = Bind {
            port: 2883,
            ipv4: "127.0.0.1".parse().unwrap(),
            ipv6: Some("::1".parse().unwrap()),
        };
        let a = args(
            &cfg(&[], None),
            &plan(Duration::from_secs(1), Some(3)),
            &Ports {
                rpc_listen_port: None,
                bind: Some(bind),
            },
        );
        assert_eq!(
            a,
            [
                "-N",
                "-p",
                "2883",
                "-o",
                "hot_upgrade_exit_timeout=1000000,ip_listen_mode=3,local_bound_ip=127.0.0.1,local_bound_ipv6_ip=::1"
            ]
        );
        assert_eq!(
            bind.addrs(),
            [
                "127.0.0.1:2883".parse::<SocketAddr>().unwrap(),
                "[::1]:2883".parse().unwrap()
            ]
        );
    }
}
