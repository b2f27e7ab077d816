//! The Prometheus exporter port (`prometheus_listen_port`, 2884 by default, or `-l`): bound anew by every process at init, never inherited, and optional: a start goes on without it when the port is taken. A native restart closes it before forking and opens it again on rollback.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const BODY: &str = "odp_standin_up 1\n";

/// The exporter, running or not.
pub struct Exporter {
    port: u16,
    running: Option<(SocketAddr, JoinHandle<()>)>,
}

impl Exporter {
    /// `init_prometheus` binds at init whether or not `enable_prometheus` is on
    /// (v4.3.1:src/obproxy/prometheus/ob_prometheus_processor.cpp:481-495); like obproxy
    /// ("if fail to init prometheus, do not stop the startup", v4.3.1:src/obproxy/ob_proxy.cpp:218-223)
    /// a failed bind is logged and the start goes on without an exporter.
    pub fn start(port: u16) -> Self {
        let mut exporter = Exporter {
            port,
            running: None,
        };
        exporter.create();
        exporter
    }

    /// `create_exposer`: what a rollback of a native restart does
    /// (v4.3.1:src/obproxy/obutils/ob_hot_upgrade_processor.cpp:1774).
    pub fn create(&mut self) {
        if self.running.is_some() {
            return;
        }
        match bind(self.port) {
            Ok(listener) => {
                let addr = listener.local_addr().unwrap_or_else(|_| {
                    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, self.port))
                });
                self.running = Some((addr, tokio::spawn(serve(listener))));
            }
            Err(e) => event!(
                "fail to init prometheus processor",
                "port={} error={e}",
                self.port
            ),
        }
    }

    /// `destroy_exposer`, before a native restart forks, so the child can bind the port
    /// (ob_hot_upgrade_processor.cpp:1720). Returns once the port is closed.
    pub async fn destroy(&mut self) {
        if let Some((_, task)) = self.running.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// For the logs: the address served, or `failed`.
    pub fn describe(&self) -> String {
        self.running
            .as_ref()
            .map_or_else(|| "failed".to_owned(), |(addr, _)| addr.to_string())
    }
}

fn bind(port: u16) -> std::io::Result<TcpListener> {
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    TcpListener::from_std(socket.into())
}

async fn serve(listener: TcpListener) {
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let response: &'static str = response.leak();
    while let Ok((mut client, _)) = listener.accept().await {
        tokio::spawn(async move {
            // Every path gets the same page, but the request is read first: closing with it
            // unread would reset the connection before the client sees the answer.
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = client.write_all(response.as_bytes()).await;
            let _ = client.shutdown().await;
        });
    }
}
