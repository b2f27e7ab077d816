//! The Prometheus exporter port (`-l`): bound anew by every process, never inherited, and optional: a start goes on without it when the port is taken.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const BODY: &str = "odp_standin_up 1\n";

/// Binds 0.0.0.0:`port` and serves a one-metric page until the process exits. Like obproxy
/// ("if fail to init prometheus, do not stop the startup"), a failed bind is logged and the
/// start goes on without an exporter; the result says which.
pub fn start(port: u16) -> Option<SocketAddr> {
    match bind(port) {
        Ok(listener) => {
            let addr = listener.local_addr().ok();
            tokio::spawn(serve(listener));
            addr
        }
        Err(e) => {
            event!("fail to init prometheus processor", "port={port} error={e}");
            None
        }
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
