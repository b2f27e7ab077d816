//! A TCP echo server: the "database" behind the obproxy stand-in in the load
//! tests, the demo and the benchmarks.
use std::{
    io,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// A TCP echo server on 127.0.0.1 (any free port), the "database" behind the stand-in:
/// `-o standin_backend=ADDR` makes the stand-in forward every client to it.
pub struct EchoBackend {
    addr: SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl EchoBackend {
    pub async fn start() -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(accept_loop(listener, stop.clone(), tasks.clone()));
        Ok(Self { addr, stop, tasks })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes every connection, and waits for its tasks to end.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(listener: TcpListener, stop: CancellationToken, tasks: TaskTracker) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let stop = stop.clone();
                    tasks.spawn(async move {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = echo(stream) => {}
                        }
                    });
                }
                // EMFILE and the like: back off rather than spin on the same error.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

async fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let (mut from, mut to) = stream.split();
    if tokio::io::copy(&mut from, &mut to).await.is_ok() {
        // Pass the half-close on, so the proxy in front sees the end of the stream.
        let _ = to.shutdown().await;
    }
}
