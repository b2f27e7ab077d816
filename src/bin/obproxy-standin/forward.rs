//! Client connections: the accept loops, forwarding each connection to the backend (or echoing it), and the count of open connections a drain waits on.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::listener::Listeners;
use crate::options::Backend;

/// The open client connections, and the switch that cuts them all when a window ends.
#[derive(Clone)]
pub struct Connections(Arc<Inner>);

struct Inner {
    open: watch::Sender<usize>,
    cut: watch::Sender<bool>,
}

impl Connections {
    pub fn new() -> Self {
        Connections(Arc::new(Inner {
            open: watch::channel(0).0,
            cut: watch::channel(false).0,
        }))
    }

    pub fn open(&self) -> usize {
        *self.0.open.borrow()
    }

    /// Resolves once no client connection is left.
    pub async fn all_closed(&self) {
        let mut open = self.0.open.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = open.wait_for(|n| *n == 0).await;
    }

    /// Closes every open connection; each one's task drops its sockets at once.
    pub fn cut_all(&self) {
        self.0.cut.send_replace(true);
    }

    fn track(&self) -> Tracked {
        self.0.open.send_modify(|n| *n += 1);
        Tracked(self.clone())
    }
}

/// One open connection in the count, from accept until both its sockets are dropped.
struct Tracked(Connections);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.0.open.send_modify(|n| *n -= 1);
    }
}

/// The running accept loops. Stopping them stops `accept()` only: the listening sockets stay
/// open, so connections still arriving queue for whichever process accepts next.
pub struct Acceptors {
    stop: watch::Sender<bool>,
    loops: Vec<JoinHandle<()>>,
}

impl Acceptors {
    pub fn none() -> Self {
        Acceptors {
            stop: watch::channel(false).0,
            loops: Vec::new(),
        }
    }

    pub fn start(
        listeners: &Listeners,
        backend: Option<Backend>,
        connections: &Connections,
    ) -> anyhow::Result<Self> {
        let mut acceptors = Self::none();
        let backend = backend.map(Arc::new);
        for socket in listeners.serving() {
            let listener = socket.accept_handle()?;
            acceptors.loops.push(tokio::spawn(accept_loop(
                listener,
                acceptors.stop.subscribe(),
                backend.clone(),
                connections.clone(),
            )));
        }
        Ok(acceptors)
    }

    /// Returns once no loop will call `accept()` again.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        for accept_loop in self.loops {
            let _ = accept_loop.await;
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    backend: Option<Arc<Backend>>,
    connections: Connections,
) {
    loop {
        tokio::select! {
            // Checked first so that nothing is accepted once a stop is asked for.
            biased;
            _ = raised(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    let tracked = connections.track();
                    tokio::spawn(serve(client, backend.clone(), tracked));
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

/// Serves one client until it closes, its backend closes, or every connection is cut.
async fn serve(client: TcpStream, backend: Option<Arc<Backend>>, tracked: Tracked) {
    let mut cut = tracked.0.0.cut.subscribe();
    let work = async {
        match backend {
            None => echo(client).await,
            Some(backend) => forward(client, &backend).await,
        }
    };
    tokio::select! {
        _ = work => {}
        _ = raised(&mut cut) => {}
    }
    drop(tracked);
}

async fn echo(mut client: TcpStream) {
    let (mut from, mut to) = client.split();
    if tokio::io::copy(&mut from, &mut to).await.is_ok() {
        // Pass the client's half-close back, as a forwarded backend would.
        let _ = to.shutdown().await;
    }
}

async fn forward(mut client: TcpStream, backend: &Backend) {
    let mut server = match TcpStream::connect(&backend.addrs[..]).await {
        Ok(server) => server,
        Err(e) => {
            // The client is closed by dropping it: nothing else could serve it.
            event!(
                "backend connect failed",
                "backend={} error={e}",
                backend.name
            );
            return;
        }
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

/// Resolves once the switch is on (or its sender is gone, which only happens at exit).
async fn raised(switch: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across an await.
    let _ = switch.wait_for(|on| *on).await.map(|_| ());
}
