//! The listeners: the SQL and RPC sockets inherited from the previous process (`OBPROXY_INHERITED_*`, read per line) or bound here per `ip_listen_mode`, kept open for the life of the process because they are shared with a successor.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use anyhow::{Context, bail};
use nix::fcntl::{FcntlArg, fcntl};
use nix::sys::socket::{SockaddrLike, SockaddrStorage, getsockname};
use socket2::{Domain, Protocol, Socket, Type};

use crate::profile::Line;

pub const INHERITED_FD: &str = "OBPROXY_INHERITED_FD";
pub const INHERITED_IPV6_FD: &str = "OBPROXY_INHERITED_IPV6_FD";
pub const INHERITED_RPC_FD: &str = "OBPROXY_INHERITED_RPC_FD";
pub const INHERITED_RPC_IPV6_FD: &str = "OBPROXY_INHERITED_RPC_IPV6_FD";
/// obproxy's `LISTEN_BACKLOG` for the sockets it binds.
const BACKLOG: i32 = 1024;

/// The four listener fds as obproxy's `ObHotUpgraderInfo` keeps them, -1 for none: what an
/// inherited start read, plus what this process bound, which a native child gets in turn
/// (v4.3.1:src/obproxy/iocore/net/ob_connection.cpp:589-608).
#[derive(Debug, Clone, Copy)]
pub struct Fds {
    pub sql4: RawFd,
    pub sql6: RawFd,
    pub rpc4: RawFd,
    pub rpc6: RawFd,
}

impl Default for Fds {
    fn default() -> Self {
        Fds {
            sql4: -1,
            sql6: -1,
            rpc4: -1,
            rpc6: -1,
        }
    }
}

impl Fds {
    /// The inherited fds, as `handle_inherited_sockets()` reads them; `None` for a fresh
    /// start. 3.x/4.0 read only the IPv4 variable (v3.2.3:src/obproxy/ob_proxy_main.cpp:503-519);
    /// 4.1+ also the IPv6 one and fail when only it is set; 4.3 reads the RPC ones whenever
    /// present (v4.3.1:src/obproxy/ob_proxy_main.cpp:530-580). Values go through `atoi`.
    /// Read variables are removed.
    ///
    /// Must run while the process has a single thread (it edits the environment).
    pub fn inherit_from_env(line: Line) -> anyhow::Result<Option<Fds>> {
        let take = |name: &str| {
            let value = std::env::var(name).ok();
            // SAFETY: called before any other thread exists (see above).
            unsafe { std::env::remove_var(name) };
            value
        };
        let ipv4 = take(INHERITED_FD);
        let ipv6 = if line.reads_ipv6_fd() {
            take(INHERITED_IPV6_FD)
        } else {
            None
        };
        let mut fds = Fds::default();
        match (ipv4, ipv6) {
            (None, None) => return Ok(None),
            (None, Some(_)) => {
                bail!("ipv4 should not be NULL ({INHERITED_IPV6_FD} without {INHERITED_FD})")
            }
            (Some(v4), v6) => {
                fds.sql4 = atoi(&v4);
                fds.sql6 = v6.map_or(-1, |v| atoi(&v));
            }
        }
        if line.has_rpc() {
            fds.rpc4 = take(INHERITED_RPC_FD).map_or(-1, |v| atoi(&v));
            fds.rpc6 = take(INHERITED_RPC_IPV6_FD).map_or(-1, |v| atoi(&v));
        }
        Ok(Some(fds))
    }

    /// Closes every descriptor but stdin/stdout/stderr and these, as `close_all_fd` does on
    /// an inherited start (v4.3.1:src/obproxy/ob_proxy_main.cpp:1125-1172), refusing when
    /// none of them is above 2, as it does.
    ///
    /// Must run before any thread or runtime exists, which could own one of them.
    pub fn close_others(&self) -> anyhow::Result<()> {
        let keep = [self.sql4, self.sql6, self.rpc4, self.rpc6];
        if keep.iter().all(|fd| *fd < 3) {
            bail!("fail to close all fd: no inherited listener fd above 2 ({keep:?})");
        }
        // Collect first: the directory stream holds a descriptor of its own while it is read.
        let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
            .context("list /proc/self/fd")?
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        for fd in open.into_iter().filter(|fd| *fd > 2 && !keep.contains(fd)) {
            // SAFETY: nothing else in this single-threaded process owns these descriptors
            // yet; EBADF for the directory stream's own, already closed, is harmless.
            unsafe { libc::close(fd) };
        }
        Ok(())
    }
    /// Those to keep open across a native child's exec.
    pub fn handed_over(&self) -> impl Iterator<Item = RawFd> {
        [self.sql4, self.sql6, self.rpc4, self.rpc6]
            .into_iter()
            .filter(|fd| *fd >= 0)
    }
}

/// C `atoi`: decimal digits after optional white space and a sign, 0 when there are none.
fn atoi(value: &str) -> RawFd {
    let trimmed = value.trim_start();
    let (sign, body) = match trimmed.as_bytes().first() {
        Some(b'-') => (-1i64, &trimmed[1..]),
        Some(b'+') => (1, &trimmed[1..]),
        _ => (1, trimmed),
    };
    let digits = body.len() - body.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let magnitude: i64 = body[..digits].parse().unwrap_or(0);
    (sign * magnitude).clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as RawFd
}

/// A listening socket this process accepts on but never closes: closing it would drop the
/// connections queued on it, and it may be the very socket a successor accepts on.
#[derive(Debug)]
pub struct ListenSocket {
    fd: RawFd,
    pub addr: SocketAddr,
}

impl ListenSocket {
    /// A tokio listener on a duplicate of the socket. Dropping it (when accepting stops)
    /// deregisters and closes only the duplicate; the socket itself stays open and listening.
    /// The duplicate shares the open file description, so this makes the socket non-blocking
    /// for every holder, as obproxy's own event loop does.
    pub fn accept_handle(&self) -> anyhow::Result<std::net::TcpListener> {
        // SAFETY: `fd` stays open for the life of the process (see the type's doc).
        let borrowed = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let dup = fcntl(borrowed, FcntlArg::F_DUPFD_CLOEXEC(3))
            .with_context(|| format!("dup listener fd {}", self.fd))?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
        let listener = std::net::TcpListener::from(unsafe { OwnedFd::from_raw_fd(dup) });
        listener.set_nonblocking(true)?;
        Ok(listener)
    }

    /// An inherited socket, used as it is: its address read back with getsockname and no
    /// bind, listen or setsockopt (v4.3.1:src/obproxy/proxy/mysql/ob_mysql_proxy_server_main.cpp:274-291,
    /// v4.3.1:src/obproxy/iocore/net/ob_net_accept.cpp:284-295). `-1` fails here, as
    /// `getsockname(-1)` fails obproxy's start.
    pub fn inherited(fd: RawFd, what: &str) -> anyhow::Result<Self> {
        if fd < 0 {
            bail!("fail to init inherited info for {what}: getsockname(-1): EBADF");
        }
        let name: SockaddrStorage = getsockname(fd).with_context(|| {
            format!("fail to init inherited info for {what}: getsockname({fd})")
        })?;
        let addr = if let Some(v4) = name.as_sockaddr_in() {
            SocketAddr::V4((*v4).into())
        } else if let Some(v6) = name.as_sockaddr_in6() {
            SocketAddr::V6((*v6).into())
        } else {
            bail!(
                "inherited fd {fd} for {what} is not a TCP/IP socket (family {:?})",
                name.family()
            );
        };
        Ok(ListenSocket { fd, addr })
    }

    /// Binds `ip` (`local_bound_ip` or `local_bound_ipv6_ip`: make_net_accept_options sets
    /// the accept address from them, v4.3.1:src/obproxy/proxy/mysql/ob_mysql_proxy_server_main.cpp:63-90,
    /// :319/:325, iocore/net/ob_unix_net_processor.cpp:131-139) on `port` as obproxy does:
    /// SO_REUSEADDR, no SO_REUSEPORT, IPV6_V6ONLY on IPv6
    /// (setup_fd_for_listen_proxy_mode, iocore/net/ob_connection.cpp:455-464; bound in
    /// listen_proxy_mode, :567-590).
    pub fn bind(ip: IpAddr, port: u16) -> anyhow::Result<Self> {
        let addr = SocketAddr::new(ip, port);
        let domain = Domain::for_address(addr);
        // socket2 creates the socket with SOCK_CLOEXEC; a native child gets it all the same
        // (see `native`), and nothing else is ever executed.
        let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_reuse_address(true)?;
        socket
            .bind(&addr.into())
            .with_context(|| format!("fail to bind {addr}"))?;
        socket
            .listen(BACKLOG)
            .with_context(|| format!("fail to listen on {addr}"))?;
        Ok(ListenSocket {
            fd: socket.into_raw_fd(),
            addr,
        })
    }
}

/// The addresses a start that was not inherited binds: `local_bound_ip` and
/// `local_bound_ipv6_ip`.
#[derive(Debug, Clone, Copy)]
pub struct BindIps {
    pub v4: IpAddr,
    pub v6: IpAddr,
}

impl BindIps {
    /// From the config items' text; a value that is no address of its family fails the
    /// start, as obproxy's DEF_IP check does.
    pub fn parse(v4: &str, v6: &str) -> anyhow::Result<Self> {
        let v4: Ipv4Addr = v4
            .parse()
            .with_context(|| format!("invalid local_bound_ip: {v4}"))?;
        let v6: Ipv6Addr = v6
            .parse()
            .with_context(|| format!("invalid local_bound_ipv6_ip: {v6}"))?;
        Ok(BindIps {
            v4: v4.into(),
            v6: v6.into(),
        })
    }
}

/// Which families `ip_listen_mode` serves: 1 IPv4, 2 IPv6, 3 both
/// (v4.3.1:src/obproxy/proxy/mysql/ob_mysql_proxy_server_main.cpp:140-159, :299-301).
/// 3.x/4.0 have no such item and serve IPv4 only.
pub fn families(line: Line, ip_listen_mode: i64) -> (bool, bool) {
    if !line.reads_ipv6_fd() {
        return (true, false);
    }
    (
        matches!(ip_listen_mode, 1 | 3),
        matches!(ip_listen_mode, 2 | 3),
    )
}

/// The SQL listeners a start accepts on, and the fds it records for a native child.
#[derive(Debug)]
pub struct Listeners {
    pub sql: Vec<ListenSocket>,
    pub rpc: Vec<ListenSocket>,
    pub fds: Fds,
    pub inherited: bool,
}

impl Listeners {
    /// The inherited SQL sockets the mode serves (`init_mysql_proxy_port`, ob_mysql_proxy_server_main.cpp:293-330).
    pub fn inherited(fds: Fds, (v4, v6): (bool, bool)) -> anyhow::Result<Self> {
        let mut sql = Vec::new();
        if v4 {
            sql.push(ListenSocket::inherited(fds.sql4, "proxy ipv4 port")?);
        }
        if v6 {
            sql.push(ListenSocket::inherited(fds.sql6, "proxy ipv6 port")?);
        }
        Ok(Listeners {
            sql,
            rpc: Vec::new(),
            fds,
            inherited: true,
        })
    }

    /// A fresh start binds `listen_port` for each family the mode serves, IPv4 first; the
    /// bind happens as accepting starts (ob_net_accept.cpp:296-301), and a failure is fatal.
    pub fn bind(port: u16, (v4, v6): (bool, bool), ips: BindIps) -> anyhow::Result<Self> {
        let mut listeners = Listeners {
            sql: Vec::new(),
            rpc: Vec::new(),
            fds: Fds::default(),
            inherited: false,
        };
        if v4 {
            let socket = ListenSocket::bind(ips.v4, port)?;
            listeners.fds.sql4 = socket.fd;
            listeners.sql.push(socket);
        }
        if v6 {
            let socket = ListenSocket::bind(ips.v6, port)?;
            listeners.fds.sql6 = socket.fd;
            listeners.sql.push(socket);
        }
        Ok(listeners)
    }

    /// 4.3's RPC listeners, after the SQL acceptors started (v4.3.1:src/obproxy/ob_proxy.cpp:428-431):
    /// the inherited ones when any RPC fd was inherited, else `rpc_listen_port` bound per
    /// family (ob_mysql_proxy_server_main.cpp:403-442). With the service off, inherited RPC
    /// fds are closed and forgotten (:477-488).
    pub fn start_rpc(
        &mut self,
        enabled: bool,
        port: u16,
        (v4, v6): (bool, bool),
        ips: BindIps,
    ) -> anyhow::Result<()> {
        let inherited = self.inherited && (self.fds.rpc4 != -1 || self.fds.rpc6 != -1);
        if !enabled {
            for fd in [self.fds.rpc4, self.fds.rpc6] {
                if inherited && fd >= 0 {
                    // SAFETY: an inherited fd nothing else in this process uses.
                    unsafe { libc::close(fd) };
                }
            }
            self.fds.rpc4 = -1;
            self.fds.rpc6 = -1;
            return Ok(());
        }
        for (wanted, ipv6) in [(v4, false), (v6, true)] {
            if !wanted {
                continue;
            }
            let socket = if inherited {
                let fd = if ipv6 { self.fds.rpc6 } else { self.fds.rpc4 };
                ListenSocket::inherited(
                    fd,
                    if ipv6 {
                        "rpc ipv6 port"
                    } else {
                        "rpc ipv4 port"
                    },
                )?
            } else {
                let ip = if ipv6 { ips.v6 } else { ips.v4 };
                let socket =
                    ListenSocket::bind(ip, port).context("fail to start rpc accept server")?;
                if ipv6 {
                    self.fds.rpc6 = socket.fd;
                } else {
                    self.fds.rpc4 = socket.fd;
                }
                socket
            };
            self.rpc.push(socket);
        }
        Ok(())
    }
}

impl fmt::Display for Listeners {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |sockets: &[ListenSocket]| -> String {
            if sockets.is_empty() {
                return "none".to_owned();
            }
            sockets
                .iter()
                .map(|s| s.addr.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(
            f,
            "sql={} rpc={} inherited={}",
            list(&self.sql),
            list(&self.rpc),
            self.inherited
        )
    }
}
