//! Ports for a process that binds them itself (an obproxy started by hand):
//! reserved without a race, and waited on until they serve.

use std::{net::SocketAddr, time::Duration};

use super::{PATIENCE, round_trip};

/// A free port on `ip`, reserved for a process that binds it itself (an
/// obproxy started by hand): the socket is bound with SO_REUSEADDR and never
/// listens, so a process that binds with SO_REUSEADDR too (obproxy does) can
/// still listen on the port, and nothing else can take it meanwhile. Keep
/// the socket until that process listens.
pub fn reserve_port(ip: std::net::IpAddr) -> (socket2::Socket, u16) {
    let addr = SocketAddr::new(ip, 0);
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    socket.set_reuse_address(true).unwrap();
    socket.bind(&addr.into()).unwrap();
    let port = socket.local_addr().unwrap().as_socket().unwrap().port();
    (socket, port)
}

/// Waits (up to [`PATIENCE`]) until `addr` accepts a connection that is
/// served, asking at short intervals.
pub async fn wait_serving(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        if round_trip(addr).await.is_ok() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} never served"
        );
    }
}
