//! One accepted gRPC connection: who is at the other end ([`Peer`], what the
//! handlers see in the request's extensions), and the clocks that close it
//! when it is not used: the HTTP/2 preface must come within the handshake
//! timeout (plaintext; TLS has its own handshake timeout), and a connection
//! with no call in flight for the idle timeout is closed.
use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::OwnedSemaphorePermit,
    time::Sleep,
};
use tonic::transport::server::Connected;

/// Who called, as the kernel says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerKind {
    Tcp {
        remote: Option<SocketAddr>,
    },
    /// On the local socket: the caller's credentials (SO_PEERCRED and
    /// SO_PEERGROUPS), taken when it connected.
    Unix {
        uid: u32,
        gid: u32,
        groups: Arc<[u32]>,
        pid: Option<i32>,
        /// The user's name, for the audit log, when the host knows it.
        user: Option<String>,
    },
}

/// The connection a request came on; tonic puts it in every request's
/// extensions (plain, and inside `TlsConnectInfo` over TLS).
#[derive(Debug, Clone)]
pub struct Peer {
    pub kind: PeerKind,
    pub(super) activity: Arc<Activity>,
}

/// Calls in flight on one connection, and since when it has had none.
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since [`EPOCH`] when the last call ended (or the
    /// connection was accepted).
    idle_since: AtomicU64,
}

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now_ms()),
        }
    }

    /// A call starts; the returned guard ends it when dropped.
    pub fn begin(self: &Arc<Self>) -> CallGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        CallGuard(self.clone())
    }

    /// When the connection becomes idle-closable, if it has no call now.
    fn idle_deadline(&self, idle: Duration) -> Option<u64> {
        (self.in_flight.load(Ordering::SeqCst) == 0)
            .then(|| self.idle_since.load(Ordering::SeqCst) + idle.as_millis() as u64)
    }
}

impl Peer {
    /// A call starts on this connection (the console's requests, served
    /// outside tonic); it keeps the connection busy until dropped.
    pub fn begin_call(&self) -> CallGuard {
        self.activity.begin()
    }
}

/// One call in flight on a connection.
#[derive(Debug)]
pub struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.idle_since.store(now_ms(), Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The HTTP/2 client preface: `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const PREFACE_LEN: usize = 24;

/// An accepted connection with its peer, its clocks and its slot under the
/// connection cap (given back when it is dropped).
pub struct Conn<IO> {
    io: IO,
    peer: Peer,
    /// Preface bytes still expected (0 once seen, or under TLS).
    preface_left: usize,
    handshake_deadline: Instant,
    idle_timeout: Duration,
    timer: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl<IO> Conn<IO> {
    pub fn new(
        io: IO,
        kind: PeerKind,
        slot: OwnedSemaphorePermit,
        tls: bool,
        handshake_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        let handshake_deadline = Instant::now() + handshake_timeout;
        Self {
            io,
            peer: Peer {
                kind,
                activity: Arc::new(Activity::new()),
            },
            preface_left: if tls { 0 } else { PREFACE_LEN },
            handshake_deadline,
            idle_timeout,
            timer: Box::pin(tokio::time::sleep_until(handshake_deadline.into())),
            _slot: slot,
        }
    }

    /// Whether a clock has run out; arms the timer for the next check.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        loop {
            let now = Instant::now();
            let due = if self.preface_left > 0 {
                if now >= self.handshake_deadline {
                    return Some("no HTTP/2 preface within the handshake timeout");
                }
                self.handshake_deadline
            } else {
                match self.peer.activity.idle_deadline(self.idle_timeout) {
                    Some(ms) if ms <= now_ms() => return Some("idle"),
                    Some(ms) => *EPOCH + Duration::from_millis(ms),
                    // Busy: look again one idle period from now.
                    None => now + self.idle_timeout,
                }
            };
            if self.timer.deadline() != due.into() {
                self.timer.as_mut().reset(due.into());
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                this.preface_left = this.preface_left.saturating_sub(read);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.expired(cx) {
                Some(why) => {
                    tracing::debug!(peer = ?this.peer.kind, why, "closing a gRPC connection");
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
                }
                None => Poll::Pending,
            },
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO> Connected for Conn<IO> {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}
