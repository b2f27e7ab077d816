//! Clients of the stand-in's echo mode: one round trip, and a load of them counting failures.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::PATIENCE;

/// A connection to the stand-in in echo mode, past the MySQL greeting it sends first (as
/// obproxy greets every client); what follows is echoed.
pub async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    let greeting = async {
        let mut header = [0u8; 4];
        stream.read_exact(&mut header).await?;
        let len =
            usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
        let mut payload = vec![0; len];
        stream.read_exact(&mut payload).await?;
        if payload.first() != Some(&10) {
            return Err(std::io::Error::other("no MySQL v10 greeting"));
        }
        std::io::Result::Ok(())
    };
    tokio::time::timeout(PATIENCE, greeting)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok(stream)
}

/// One request/response through the proxy (the stand-in echoes without a
/// backend).
pub async fn echo(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    stream.write_all(message).await?;
    let mut buf = vec![0; message.len()];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut buf))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    assert_eq!(buf, message);
    Ok(())
}

/// A client load running beside a test: a fresh connection per request,
/// counting what failed and how.
pub struct Load {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<LoadReport>,
}

#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub ok: u64,
    pub refused: u64,
    pub failed: u64,
    pub errors: Vec<String>,
}

impl Load {
    pub fn start(addr: SocketAddr) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut report = LoadReport::default();
            while !token.is_cancelled() {
                match round_trip(addr).await {
                    Ok(()) => report.ok += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        report.refused += 1
                    }
                    Err(e) => {
                        report.failed += 1;
                        if report.errors.len() < 5 {
                            report.errors.push(e.to_string());
                        }
                    }
                }
            }
            report
        });
        Self { stop, task }
    }

    pub async fn finish(self) -> LoadReport {
        self.stop.cancel();
        self.task.await.unwrap()
    }
}

/// Connects and proves the connection is served.
pub async fn round_trip(addr: SocketAddr) -> std::io::Result<()> {
    let mut stream = connect(addr).await?;
    echo(&mut stream, b"ping").await
}
