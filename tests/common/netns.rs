//! Network namespaces for agents on addresses of their own, as in
//! production: each gets a veth pair to the test's namespace and a /30 in
//! 10.231.0.0/16, and its link can be cut (down, or every packet dropped)
//! and healed. Names carry the test
//! process's pid and addresses are taken under a lock, so parallel runs never
//! collide; everything is deleted on drop. Needs root, `ip` and `tc`
//! (iproute2).
use std::{
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::Path,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use super::{AGENT, require_root};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Netns {
    pub name: String,
    /// The veth end in the test's namespace.
    host_if: String,
    /// The veth end inside the namespace.
    ns_if: String,
    /// The address inside the namespace (the agent's).
    pub addr: Ipv4Addr,
}

impl Netns {
    pub fn create() -> Self {
        require_root("creating network namespaces");
        assert!(
            Command::new("ip").arg("-V").output().is_ok(),
            "the network namespace tests need `ip` (apt-get install -y iproute2)"
        );
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("odp-test-{pid}-{n}");
        // Interface names are at most 15 bytes.
        let host_if = format!("ot{pid}h{n}");
        let ns_if = format!("ot{pid}n{n}");
        ip(&["netns", "add", &name]);
        let mut ns = Self {
            name,
            host_if,
            ns_if,
            addr: Ipv4Addr::UNSPECIFIED,
        };
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.ns_if,
            "netns",
            &ns.name,
        ]);
        ns.addr = ns.address();
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ip(&["-n", &ns.name, "link", "set", &ns.ns_if, "up"]);
        ip(&["link", "set", &ns.host_if, "up"]);
        ns
    }

    /// Takes a free /30 (host .1, namespace .2) while holding a lock, and
    /// assigns it before letting go, so another test process never takes it.
    fn address(&self) -> Ipv4Addr {
        let lock = std::fs::File::create(std::env::temp_dir().join("odp-test-netns.lock")).unwrap();
        // SAFETY: flock on a file we hold open; released when it closes.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let used = String::from_utf8(
            Command::new("ip")
                .args(["-o", "-4", "addr", "show"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let start = std::process::id() % 16384;
        let net = (0..16384u32)
            .map(|i| (start + i) % 16384)
            .map(|k| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 231, 0, 0)) + k * 4))
            .find(|net| {
                let o = net.octets();
                !used.contains(&format!("10.231.{}.{}/", o[2], o[3] + 1))
            })
            .expect("a free /30 in 10.231.0.0/16");
        let host = Ipv4Addr::from(u32::from(net) + 1);
        let inside = Ipv4Addr::from(u32::from(net) + 2);
        ip(&["addr", "add", &format!("{host}/30"), "dev", &self.host_if]);
        ip(&[
            "-n",
            &self.name,
            "addr",
            "add",
            &format!("{inside}/30"),
            "dev",
            &self.ns_if,
        ]);
        inside
    }

    /// `odp-agent --config config` inside the namespace.
    pub fn agent_command(&self, config: &Path) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name, AGENT, "--config"])
            .arg(config)
            .env("RUST_LOG", "info");
        command
    }

    /// Cuts the link: the namespace's end goes down, and whatever is sent to
    /// it is dropped without an answer (a far-side cable cut).
    pub fn cut(&self) {
        ip(&["-n", &self.name, "link", "set", &self.ns_if, "down"]);
    }

    /// Drops every packet either way while both ends stay up: a queue of
    /// length 0 on each end (a firewall's DROP, or a cut beyond a switch).
    /// Connects time out instead of failing at once.
    pub fn blackhole(&self) {
        tc(
            None,
            &[
                "qdisc",
                "add",
                "dev",
                &self.host_if,
                "root",
                "pfifo",
                "limit",
                "0",
            ],
        );
        tc(
            Some(&self.name),
            &[
                "qdisc",
                "add",
                "dev",
                &self.ns_if,
                "root",
                "pfifo",
                "limit",
                "0",
            ],
        );
    }

    /// Undoes [`Netns::cut`] and [`Netns::blackhole`].
    pub fn heal(&self) {
        ip(&["-n", &self.name, "link", "set", &self.ns_if, "up"]);
        for (ns, dev) in [(None, &self.host_if), (Some(&self.name), &self.ns_if)] {
            let mut command = Command::new("tc");
            if let Some(ns) = ns {
                command.args(["-n", ns]);
            }
            // Nothing to delete when it was not blackholed.
            let _ = command.args(["qdisc", "del", "dev", dev, "root"]).output();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn tc(ns: Option<&str>, args: &[&str]) {
    let mut command = Command::new("tc");
    if let Some(ns) = ns {
        command.args(["-n", ns]);
    }
    let out = command.args(args).output().unwrap();
    assert!(
        out.status.success(),
        "tc {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
