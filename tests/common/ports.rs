//! Ports for a process that binds them itself (an obproxy started by hand, an
//! agent binding its listeners again after a Stop): reserved without a race,
//! and waited on until they serve.

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

/// An agent's `listen` (a TOML array) with `127.0.0.1:0` made a reserved
/// port, and the socket that reserves it (keep it as long as the agent). With
/// `:0` the agent picks the port, lets it go on Stop and binds it again on the
/// next Start or FORCE restart; in between, any socket on the machine (a
/// client's ephemeral port under load, another test's listener) could take it.
/// Any other `listen` is kept as it is.
pub fn hold_loopback_port(listen: &str) -> (String, Option<socket2::Socket>) {
    if listen != r#"["127.0.0.1:0"]"# {
        return (listen.to_string(), None);
    }
    let (socket, port) = reserve_port(std::net::Ipv4Addr::LOCALHOST.into());
    (format!(r#"["127.0.0.1:{port}"]"#), Some(socket))
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
