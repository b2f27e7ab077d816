//! The SQL listeners: inherited from the previous process (`OBPROXY_INHERITED_*`) or bound here, and kept open for the life of the process because they are shared with a successor.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use anyhow::{Context, bail};
use nix::fcntl::{FcntlArg, fcntl};
use nix::sys::socket::{SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};

const INHERITED_FD: &str = "OBPROXY_INHERITED_FD";
const INHERITED_IPV6_FD: &str = "OBPROXY_INHERITED_IPV6_FD";
const INHERITED_RPC_FD: &str = "OBPROXY_INHERITED_RPC_FD";
const INHERITED_RPC_IPV6_FD: &str = "OBPROXY_INHERITED_RPC_IPV6_FD";
/// obproxy's listen backlog.
const BACKLOG: i32 = 1024;

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
    pub fn accept_handle(&self) -> anyhow::Result<tokio::net::TcpListener> {
        // SAFETY: `fd` stays open for the life of the process (see the type's doc).
        let borrowed = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let dup = fcntl(borrowed, FcntlArg::F_DUPFD_CLOEXEC(3))
            .with_context(|| format!("dup listener fd {}", self.fd))?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
        let dup = unsafe { OwnedFd::from_raw_fd(dup) };
        let std_listener = std::net::TcpListener::from(dup);
        std_listener.set_nonblocking(true)?;
        Ok(tokio::net::TcpListener::from_std(std_listener)?)
    }
}

#[derive(Debug)]
pub struct Listeners {
    pub sql: ListenSocket,
    pub sql6: Option<ListenSocket>,
    /// Inherited RPC listeners: kept open for the next process, never served here.
    rpc: Vec<RawFd>,
    pub inherited: bool,
}

impl Listeners {
    /// The listeners handed over through the environment, as obproxy's
    /// `handle_inherited_sockets()` reads them; `None` when this is a fresh start. The
    /// variables are removed so they do not leak further.
    ///
    /// Must run while the process has a single thread (it edits the environment).
    pub fn inherit_from_env() -> anyhow::Result<Option<Self>> {
        let ipv4 = std::env::var(INHERITED_FD).ok();
        let ipv6 = std::env::var(INHERITED_IPV6_FD).ok();
        let rpc4 = std::env::var(INHERITED_RPC_FD).ok();
        let rpc6 = std::env::var(INHERITED_RPC_IPV6_FD).ok();
        for name in [
            INHERITED_FD,
            INHERITED_IPV6_FD,
            INHERITED_RPC_FD,
            INHERITED_RPC_IPV6_FD,
        ] {
            // SAFETY: called before any other thread exists (see above).
            unsafe { std::env::remove_var(name) };
        }
        let ipv4 = match (ipv4, &ipv6) {
            (None, None) => return Ok(None),
            (None, Some(_)) => bail!("{INHERITED_IPV6_FD} is set without {INHERITED_FD}"),
            (Some(v), _) => parse_fd(INHERITED_FD, &v)?,
        };
        let sql = inspect(ipv4.context("the IPv4 listener fd is required")?)?;
        let sql6 = match ipv6 {
            Some(v) => parse_fd(INHERITED_IPV6_FD, &v)?.map(inspect).transpose()?,
            None => None,
        };
        // obproxy only takes the RPC fds when they are > 0.
        let mut rpc = Vec::new();
        for (name, value) in [(INHERITED_RPC_FD, rpc4), (INHERITED_RPC_IPV6_FD, rpc6)] {
            if let Some(fd) = value.map(|v| parse_fd(name, &v)).transpose()?.flatten() {
                rpc.push(fd);
            }
        }
        Ok(Some(Listeners {
            sql,
            sql6,
            rpc,
            inherited: true,
        }))
    }

    /// A fresh start: bind 0.0.0.0:`port` the way obproxy does (SO_REUSEADDR, close-on-exec).
    pub fn bind(port: u16) -> anyhow::Result<Self> {
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
        // socket2 creates the socket with SOCK_CLOEXEC.
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket
            .bind(&addr.into())
            .with_context(|| format!("bind {addr}"))?;
        socket
            .listen(BACKLOG)
            .with_context(|| format!("listen on {addr}"))?;
        Ok(Listeners {
            sql: ListenSocket {
                fd: socket.into_raw_fd(),
                addr,
            },
            sql6: None,
            rpc: Vec::new(),
            inherited: false,
        })
    }

    pub fn serving(&self) -> impl Iterator<Item = &ListenSocket> {
        std::iter::once(&self.sql).chain(self.sql6.as_ref())
    }

    fn fds(&self) -> Vec<RawFd> {
        self.serving()
            .map(|l| l.fd)
            .chain(self.rpc.iter().copied())
            .collect()
    }

    /// Closes every descriptor but stdin/stdout/stderr and these listeners, as obproxy does
    /// on an inherited start so nothing the parent leaked stays open.
    ///
    /// Must run before any thread or runtime exists, which could own one of them.
    pub fn close_other_fds(&self) -> anyhow::Result<()> {
        let keep = self.fds();
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
}

impl std::fmt::Display for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sql={}", self.sql.addr)?;
        match &self.sql6 {
            Some(l) => write!(f, " sql6={}", l.addr)?,
            None => f.write_str(" sql6=none")?,
        }
        write!(f, " inherited={}", self.inherited)
    }
}

/// A decimal fd number; negative means none (obproxy passes -1 for a missing IPv6 listener).
fn parse_fd(name: &str, value: &str) -> anyhow::Result<Option<RawFd>> {
    let fd: RawFd = value
        .trim()
        .parse()
        .with_context(|| format!("{name}={value:?} is not an fd number"))?;
    Ok((fd >= 0).then_some(fd))
}

/// Reads an inherited listener's address back with getsockname and checks it is listening,
/// so a wrong handover fails the start instead of hanging in accept.
fn inspect(fd: RawFd) -> anyhow::Result<ListenSocket> {
    // SAFETY: only borrowed for these two calls; an fd that is not open yields EBADF.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let listening = getsockopt(&borrowed, sockopt::AcceptConn)
        .with_context(|| format!("inherited fd {fd} is not a socket"))?;
    if !listening {
        bail!("inherited fd {fd} is not a listening socket");
    }
    let name: SockaddrStorage =
        getsockname(fd).with_context(|| format!("getsockname on fd {fd}"))?;
    let addr = if let Some(v4) = name.as_sockaddr_in() {
        SocketAddr::V4((*v4).into())
    } else if let Some(v6) = name.as_sockaddr_in6() {
        SocketAddr::V6((*v6).into())
    } else {
        bail!(
            "inherited fd {fd} is not a TCP/IP socket (family {:?})",
            name.family()
        );
    };
    Ok(ListenSocket { fd, addr })
}
