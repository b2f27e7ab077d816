//! Client connections: the accept loops, forwarding each connection to the backend (or echoing it), and the census of open connections a drain shrinks and waits on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::drain::Allowance;
use crate::drain::Window;
use crate::listener::ListenSocket;
use crate::login::{self, Login};
use crate::proxy::{Accepting, Proxy};
use crate::{admin, session};

/// The open client connections, what a drain allows of them, and the switch that cuts
/// them all when a window ends.
#[derive(Clone)]
pub struct Connections(Arc<Inner>);

struct Inner {
    census: watch::Sender<Census>,
    drain: watch::Sender<DrainState>,
    cut: watch::Sender<bool>,
    /// Sessions cut at the window end while not at a transaction boundary.
    cut_mid_transaction: AtomicUsize,
    /// Sessions the window end found at a boundary after all.
    cut_at_boundary: AtomicUsize,
}

#[derive(Debug, Default, Clone, Copy)]
struct Census {
    open: usize,
    /// Of `open`, those that have decided to leave at a boundary and are closing: they no
    /// longer count against the allowance, so two sessions never leave for one place.
    leaving: usize,
}

impl Census {
    fn staying(&self) -> usize {
        self.open - self.leaving
    }
}

/// What sessions look at when they complete a response: the allowance, once a drain began.
#[derive(Debug, Default, Clone, Copy)]
pub struct DrainState {
    allowance: Option<Allowance>,
}

/// A session's leave at a boundary, for its log line.
#[derive(Debug, Clone, Copy)]
pub struct Leave {
    /// Sessions staying open after this one.
    pub open: usize,
    pub allowed: usize,
}

impl Connections {
    pub fn new() -> Self {
        Connections(Arc::new(Inner {
            census: watch::channel(Census::default()).0,
            drain: watch::channel(DrainState::default()).0,
            cut: watch::channel(false).0,
            cut_mid_transaction: AtomicUsize::new(0),
            cut_at_boundary: AtomicUsize::new(0),
        }))
    }

    /// Starts (or, for a shortened drain, restarts) the shrinking allowance from the
    /// sessions open now. Returns that count.
    pub fn begin_drain(&self, window: Window) -> usize {
        let initial = self.0.census.borrow().staying();
        let allowance = Allowance::new(Instant::now(), initial, window);
        self.0.drain.send_modify(|d| d.allowance = Some(allowance));
        initial
    }

    /// Resolves once no client connection is left.
    pub async fn all_closed(&self) {
        let mut census = self.0.census.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = census.wait_for(|c| c.open == 0).await;
    }

    /// Closes every open connection; each one's task drops its sockets at once.
    pub fn cut_all(&self) {
        self.0.cut.send_replace(true);
    }

    /// (cut mid-transaction, found at a boundary) at the window end.
    pub fn cut_report(&self) -> (usize, usize) {
        (
            self.0.cut_mid_transaction.load(Ordering::Relaxed),
            self.0.cut_at_boundary.load(Ordering::Relaxed),
        )
    }

    pub fn track(&self) -> Tracked {
        self.0.census.send_modify(|c| c.open += 1);
        Tracked {
            connections: self.clone(),
            leaving: false,
        }
    }
}

/// One open connection in the census, from accept until both its sockets are dropped.
pub struct Tracked {
    connections: Connections,
    leaving: bool,
}

impl Tracked {
    pub fn draining(&self) -> bool {
        self.connections.0.drain.borrow().allowance.is_some()
    }

    pub fn cut_switch(&self) -> watch::Receiver<bool> {
        self.connections.0.cut.subscribe()
    }

    /// Claims a leave for a session at a boundary if the drain allows fewer sessions than
    /// are staying now. Checked and counted under one lock, so that of several sessions
    /// asking at once only as many leave as the allowance says.
    pub fn try_leave(&mut self) -> Option<Leave> {
        let allowance = self.connections.0.drain.borrow().allowance?;
        let allowed = allowance.allowed_at(Instant::now());
        let mut leave = None;
        self.connections.0.census.send_if_modified(|c| {
            if self.leaving || c.staying() <= allowed {
                return false;
            }
            c.leaving += 1;
            leave = Some(Leave {
                open: c.staying(),
                allowed,
            });
            true
        });
        self.leaving |= leave.is_some();
        leave
    }

    /// Counts a session the window end cut.
    pub fn record_cut(&self, at_boundary: bool) {
        let counter = if at_boundary {
            &self.connections.0.cut_at_boundary
        } else {
            &self.connections.0.cut_mid_transaction
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let leaving = usize::from(self.leaving);
        self.connections.0.census.send_modify(|c| {
            c.open -= 1;
            c.leaving -= leaving;
        });
    }
}

/// The running accept loops. They accept while the process's switch says so (see
/// [`Accepting`]); the listening sockets stay open throughout, so connections arriving while
/// they do not queue for whichever process accepts next.
pub struct Acceptors {
    loops: Vec<JoinHandle<()>>,
}

impl Acceptors {
    pub fn none() -> Self {
        Acceptors { loops: Vec::new() }
    }

    /// Starts one loop per socket. Each first takes every connection already queued, as
    /// obproxy's accept threads do the moment they start (v4.3.1:src/obproxy/iocore/net/ob_unix_net_processor.cpp:161-211),
    /// so that what happens next (4.3's RPC bind, v4.3.1:src/obproxy/ob_proxy.cpp:428-431)
    /// happens to clients already accepted.
    pub fn start(
        sockets: &[ListenSocket],
        proxy: &Arc<Proxy>,
        connections: &Connections,
    ) -> anyhow::Result<Self> {
        let mut acceptors = Self::none();
        for socket in sockets {
            let listener = socket.accept_handle()?;
            loop {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(true)?;
                        let client = TcpStream::from_std(client)?;
                        tokio::spawn(serve(client, proxy.clone(), connections.track()));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        event!("accept failed", "error={e}");
                        break;
                    }
                }
            }
            let listener = TcpListener::from_std(listener)?;
            acceptors.loops.push(tokio::spawn(accept_loop(
                listener,
                proxy.clone(),
                connections.clone(),
            )));
        }
        Ok(acceptors)
    }

    /// Stops accepting for good (a drain); returns once no loop will call `accept()` again.
    pub async fn stop(self, proxy: &Proxy) {
        proxy.set_accepting(Accepting::Stopped);
        for accept_loop in self.loops {
            let _ = accept_loop.await;
        }
    }
}

async fn accept_loop(listener: TcpListener, proxy: Arc<Proxy>, connections: Connections) {
    let mut switch = proxy.accepting();
    loop {
        let state = *switch.borrow_and_update();
        match state {
            Accepting::Stopped => break,
            Accepting::Paused => {
                if switch.changed().await.is_err() {
                    break;
                }
                continue;
            }
            Accepting::Yes => {}
        }
        tokio::select! {
            // Checked first so that nothing is accepted once a pause or stop is asked for.
            biased;
            changed = switch.changed() => if changed.is_err() { break },
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    let tracked = connections.track();
                    tokio::spawn(serve(client, proxy.clone(), tracked));
                }
                Err(e) => {
                    // Typically EMFILE: back off briefly rather than spin on the same error.
                    event!("accept failed", "error={e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    // `listener` wraps a duplicate descriptor: dropping it here leaves the shared socket open.
}

/// Serves one client until it closes, its backend closes, it leaves at a boundary during a
/// drain, or every connection is cut: first its login (see `login`), then the admin session,
/// the relay to the backend, or the echo.
async fn serve(client: TcpStream, proxy: Arc<Proxy>, tracked: Tracked) {
    let mut cut = tracked.cut_switch();
    let Ok(peer) = client.peer_addr() else {
        return;
    };
    let login = match proxy.backend.clone() {
        None => tokio::select! {
            login = login::own(client, &proxy, peer) => login,
            _ = raised(&mut cut) => return tracked.record_cut(false),
        },
        Some(backend) => {
            let server = tokio::select! {
                server = TcpStream::connect(&backend.addrs[..]) => server,
                _ = raised(&mut cut) => return tracked.record_cut(false),
            };
            let server = match server {
                Ok(server) => server,
                // The client is closed by dropping it: nothing else could serve it.
                Err(e) => {
                    return event!(
                        "backend connect failed",
                        "backend={} error={e}",
                        backend.name
                    );
                }
            };
            tokio::select! {
                login = login::through(client, server, &proxy, peer) => login,
                _ = raised(&mut cut) => return tracked.record_cut(false),
            }
        }
    };
    match login {
        Login::Admin(admin) => admin::serve(admin, proxy, tracked).await,
        Login::Relay {
            client,
            server,
            session,
        } => session::relay_from(client, server, tracked, session).await,
        Login::Echo { client, pending } => tokio::select! {
            _ = echo(client, pending) => {}
            // An echo knows nothing of transactions: it counts as cut mid-way.
            _ = raised(&mut cut) => tracked.record_cut(false),
        },
        Login::Done => {}
    }
}

/// Echoes what was already read, then everything else.
async fn echo(mut client: TcpStream, pending: Vec<u8>) {
    if client.write_all(&pending).await.is_err() {
        return;
    }
    let (mut from, mut to) = client.split();
    if tokio::io::copy(&mut from, &mut to).await.is_ok() {
        // Pass the client's half-close back, as a forwarded backend would.
        let _ = to.shutdown().await;
    }
}

/// Resolves once the switch is on (or its sender is gone, which only happens at exit).
pub async fn raised(switch: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across an await.
    let _ = switch.wait_for(|on| *on).await.map(|_| ());
}
