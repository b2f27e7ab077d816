//! The accept loop of a gRPC listener (TCP or the local socket). It admits
//! at most `cap` connections at once and refuses the rest at once (closed,
//! logged); when the process is out of file descriptors it refuses one
//! waiting connection with a spare descriptor and backs off, instead of
//! retrying accept(2) in a tight loop; and it wraps each connection in a
//! [`Conn`] with its peer and clocks.
use std::{
    fs::File,
    future::Future,
    io,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::Stream;
use tokio::{
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::Semaphore,
};

use super::{
    conn::{Conn, PeerKind},
    settings::Limits,
};

/// A listener the loop can accept from.
pub trait Listen: Send + 'static {
    type Io: Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, PeerKind)>> + Send;
    /// What the logs call it.
    fn name(&self) -> String;
}

impl Listen for TcpListener {
    type Io = TcpStream;

    async fn accept(&self) -> io::Result<(TcpStream, PeerKind)> {
        let (stream, remote) = TcpListener::accept(self).await?;
        // A small gRPC response must not wait for the client's delayed ACK
        // (about 40 ms a call otherwise).
        let _ = stream.set_nodelay(true);
        Ok((
            stream,
            PeerKind::Tcp {
                remote: Some(remote),
            },
        ))
    }

    fn name(&self) -> String {
        self.local_addr()
            .map_or_else(|_| "tcp".into(), |a| a.to_string())
    }
}

impl Listen for UnixListener {
    type Io = UnixStream;

    async fn accept(&self) -> io::Result<(UnixStream, PeerKind)> {
        let (stream, _) = UnixListener::accept(self).await?;
        let kind = super::unix_socket::peer(&stream)?;
        Ok((stream, kind))
    }

    fn name(&self) -> String {
        self.local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            .unwrap_or_else(|| "unix".into())
    }
}

/// The first back-off after running out of descriptors; it doubles up to
/// [`MAX_BACKOFF`] while the shortage lasts.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Refusals are logged once, then summed up at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

struct Loop<L> {
    listener: L,
    name: String,
    slots: Arc<Semaphore>,
    cap: usize,
    tls: bool,
    limits: Limits,
    /// Closed to make room for one accept when the process is out of
    /// descriptors, so that connection can be refused rather than left
    /// waiting in the backlog.
    spare: Option<File>,
    backoff: Duration,
    refused: u64,
    last_log: Option<Instant>,
}

/// Connections from `listener`, at most `cap` open at once.
pub fn incoming<L: Listen>(
    listener: L,
    cap: usize,
    tls: bool,
    limits: Limits,
) -> impl Stream<Item = io::Result<Conn<L::Io>>> + Send {
    let state = Loop {
        name: listener.name(),
        listener,
        slots: Arc::new(Semaphore::new(cap)),
        cap,
        tls,
        limits,
        spare: File::open("/dev/null").ok(),
        backoff: FIRST_BACKOFF,
        refused: 0,
        last_log: None,
    };
    futures::stream::unfold(state, |mut state| async move {
        let conn = state.next().await;
        Some((Ok(conn), state))
    })
}

impl<L: Listen> Loop<L> {
    async fn next(&mut self) -> Conn<L::Io> {
        loop {
            match self.listener.accept().await {
                Ok((io, kind)) => {
                    self.backoff = FIRST_BACKOFF;
                    match self.slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            return Conn::new(
                                io,
                                kind,
                                slot,
                                self.tls,
                                self.limits.handshake_timeout,
                                self.limits.idle_timeout,
                            );
                        }
                        Err(_) => {
                            drop(io);
                            self.refused(&kind, "the connection cap is reached");
                        }
                    }
                }
                Err(e) if out_of_descriptors(&e) => {
                    self.refuse_one_waiting().await;
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
                // The client went away between connect and accept.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    // Anything else: never retry in a tight loop.
                    tracing::warn!(listener = %self.name, error = %e, "cannot accept a gRPC connection");
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Out of descriptors: close the spare, accept one waiting connection
    /// and close it (the client sees a refusal, not a hang), reopen the
    /// spare.
    async fn refuse_one_waiting(&mut self) {
        let had_spare = self.spare.take().is_some();
        if had_spare {
            let accepted =
                tokio::time::timeout(Duration::from_millis(10), self.listener.accept()).await;
            if let Ok(Ok((io, kind))) = accepted {
                drop(io);
                self.refused(&kind, "the process is out of file descriptors");
            }
            self.spare = File::open("/dev/null").ok();
        }
        if !had_spare || self.spare.is_none() {
            self.refused(
                &PeerKind::Tcp { remote: None },
                "the process is out of file descriptors",
            );
        }
    }

    fn refused(&mut self, kind: &PeerKind, why: &str) {
        self.refused += 1;
        let due = self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY);
        if due {
            tracing::warn!(
                listener = %self.name,
                peer = ?kind,
                cap = self.cap,
                open = self.cap - self.slots.available_permits(),
                refused_so_far = self.refused,
                "refusing a gRPC connection: {why}"
            );
            self.last_log = Some(Instant::now());
        }
    }
}

fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Descriptors the daemon keeps for its own work (state and audit files,
/// pidfds, pipes to spawn and probe obproxy, the task store, sockets to the
/// agents), whatever its callers hold.
pub const RESERVED_FDS: u64 = 64;

/// How many connections fit in the descriptor limit next to `reserved`
/// descriptors for the daemon's own work: `wanted`, or fewer (logged) when
/// RLIMIT_NOFILE is low, at least 1.
pub fn fit_to_fd_limit(wanted: usize, reserved: u64, what: &str) -> usize {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let room = limit.saturating_sub(reserved).max(1);
    if (wanted as u64) > room {
        tracing::warn!(
            what,
            wanted,
            allowed = room,
            nofile = limit,
            "lowering the connection cap to fit RLIMIT_NOFILE (raise LimitNOFILE=)"
        );
        room as usize
    } else {
        wanted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut conns = Box::pin(incoming(listener, 1, false, Limits::default()));
        let _first = TcpStream::connect(addr).await.unwrap();
        let held = conns.next().await.unwrap().unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        let third = TcpStream::connect(addr).await.unwrap();
        // The loop refuses the second and waits for a slot; the third stays
        // in the backlog until then.
        let next = tokio::spawn(async move { conns.next().await.map(|c| c.is_ok()) });
        let mut buf = [0u8; 1];
        use tokio::io::AsyncReadExt;
        let n = second.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "the second connection was closed");
        drop(held);
        drop(third);
        next.abort();
    }

    /// A listener in a process out of descriptors: every accept fails.
    struct Exhausted(Arc<std::sync::atomic::AtomicUsize>);

    impl Listen for Exhausted {
        type Io = TcpStream;

        async fn accept(&self) -> io::Result<(TcpStream, PeerKind)> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(io::Error::from_raw_os_error(libc::EMFILE))
        }

        fn name(&self) -> String {
            "exhausted".into()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn out_of_descriptors_the_loop_backs_off_instead_of_spinning() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut conns = Box::pin(incoming(
            Exhausted(calls.clone()),
            8,
            false,
            Limits::default(),
        ));
        // Ten seconds of a shortage (paused time runs as fast as it can).
        let waited = tokio::time::timeout(Duration::from_secs(10), conns.next()).await;
        assert!(waited.is_err(), "no connection can come out of it");
        let calls = calls.load(std::sync::atomic::Ordering::SeqCst);
        // 50 ms doubling to 1 s: about a dozen rounds of two accepts each,
        // where a tight loop would have made millions.
        assert!((4..=40).contains(&calls), "{calls} accept calls in 10 s");
    }

    #[test]
    fn the_cap_fits_the_descriptor_limit() {
        let (soft, _) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(fit_to_fd_limit(1, 0, "t"), 1);
        assert_eq!(
            fit_to_fd_limit(usize::MAX / 2, 10, "t") as u64,
            soft.saturating_sub(10).max(1)
        );
    }
}
