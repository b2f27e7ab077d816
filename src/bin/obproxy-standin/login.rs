//! Who a new connection is. With a backend, its greeting is relayed and the client's login read: `root@proxysys` is checked against that same greeting's salt and served here, the backend dropped; anyone else goes on to the backend unchanged. Without one, the stand-in greets the client itself, as obproxy does: a `root@proxysys` login is served, anything else is echoed.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::admin::Reply;
use crate::mysql::auth::{self, Account, Response};
use crate::mysql::codec::{packet, read_packet};
use crate::mysql::{self, CLIENT_PROTOCOL_41};
use crate::proxy::Proxy;

/// A login packet is small; a longer one is not a login.
const MAX_LOGIN: usize = 64 * 1024;
/// A server greeting longer than this is not one.
const MAX_GREETING: usize = 1024;

/// A `root@proxysys` login that passed, ready for its OK packet.
pub struct AdminLogin {
    pub stream: TcpStream,
    /// What both sides speak (the response's capabilities within the greeting's, MariaDB's
    /// extended ones above bit 31).
    pub caps: u64,
    /// The sequence id of the OK that ends the login.
    pub seq: u8,
    pub peer: SocketAddr,
}

pub enum Login {
    Admin(AdminLogin),
    /// Through the backend, the tracker having seen what was exchanged so far.
    Relay {
        client: TcpStream,
        server: TcpStream,
        session: mysql::Session,
    },
    /// Echo mode: echo on, starting with the bytes already read.
    Echo {
        client: TcpStream,
        pending: Vec<u8>,
    },
    /// Refused (the error sent) or gone.
    Done,
}

/// Echo mode: the stand-in's own greeting, with `mysql_version` and a scramble of its own
/// (v4.3.1:src/obproxy/proxy/mysql/ob_mysql_sm.cpp:8121-8160).
pub async fn own(mut client: TcpStream, proxy: &Proxy, peer: SocketAddr) -> Login {
    static CONNECTION_ID: AtomicU32 = AtomicU32::new(1);
    let salt = random_salt();
    let version = proxy.config().get("mysql_version").to_owned();
    let id = CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
    let greeting = packet(0, &auth::own_greeting(id, &version, &salt));
    if client.write_all(&greeting).await.is_err() {
        return Login::Done;
    }
    let (pending, response) = first_packet(&mut client).await;
    match response {
        Some(r) if Account::parse(&r.1.user).is_proxysys_root() => {
            let own = u64::from(auth::OWN_CAPABILITIES);
            authenticate(client, proxy, peer, r, &salt, own).await
        }
        _ => Login::Echo { client, pending },
    }
}

/// Backend mode: waits for the backend's greeting (or the client speaking first, when the
/// backend is not MySQL), relays it, then reads the client's answer before deciding.
pub async fn through(
    mut client: TcpStream,
    mut server: TcpStream,
    proxy: &Proxy,
    peer: SocketAddr,
) -> Login {
    let mut session = mysql::Session::default();
    let mut greeting = Vec::new();
    let mut early = Vec::new();
    let complete = loop {
        tokio::select! {
            read = server.read_buf(&mut greeting) => {
                if !matches!(read, Ok(n) if n > 0) {
                    break None;
                }
                match greeting_length(&greeting) {
                    Some(Some(len)) if greeting.len() >= len => break Some(len),
                    Some(_) => {}
                    None => break None,
                }
            }
            // A client that speaks first is not waiting for a MySQL greeting.
            _ = client.read_buf(&mut early) => break None,
        }
    };
    session.server_sent(&greeting);
    if client.write_all(&greeting).await.is_err() {
        return Login::Done;
    }
    let greeting = complete.and_then(|len| auth::parse_greeting(&greeting[4..len]));
    let Some(greeting) = greeting.filter(|_| early.is_empty()) else {
        session.client_sent(&early);
        if server.write_all(&early).await.is_err() {
            return Login::Done;
        }
        return Login::Relay {
            client,
            server,
            session,
        };
    };
    let (pending, response) = first_packet(&mut client).await;
    match response {
        Some(r) if Account::parse(&r.1.user).is_proxysys_root() => {
            drop(server);
            authenticate(client, proxy, peer, r, &greeting.salt, greeting.caps).await
        }
        _ => {
            session.client_sent(&pending);
            if server.write_all(&pending).await.is_err() {
                return Login::Done;
            }
            Login::Relay {
                client,
                server,
                session,
            }
        }
    }
}

/// The length of the greeting packet in `bytes` once known (`Some(None)`: not yet), or
/// `None` when the bytes cannot be a v10 greeting.
fn greeting_length(bytes: &[u8]) -> Option<Option<usize>> {
    if bytes.len() < 5 {
        return Some(None);
    }
    let len = usize::from(bytes[0]) | usize::from(bytes[1]) << 8 | usize::from(bytes[2]) << 16;
    (bytes[3] == 0 && bytes[4] == 10 && len <= MAX_GREETING).then_some(Some(4 + len))
}

/// Reads the client's first bytes: all of them, and the handshake response they hold when
/// they are one (with its sequence id). Decides as early as the bytes allow, so an echo
/// client is never kept waiting: a response is at least 32 bytes, under 64 KiB, sequence 1,
/// with CLIENT_PROTOCOL_41.
async fn first_packet(client: &mut TcpStream) -> (Vec<u8>, Option<(u8, Response)>) {
    let mut bytes = Vec::new();
    loop {
        match login_shape(&bytes) {
            Shape::NotLogin => return (bytes, None),
            Shape::Complete(len) => {
                let response = auth::parse_response(&bytes[4..len])
                    .filter(|_| !auth::is_ssl_request(&bytes[4..len]))
                    .map(|r| (bytes[3], r));
                return (bytes, response);
            }
            Shape::More => {}
        }
        match client.read_buf(&mut bytes).await {
            Ok(n) if n > 0 => {}
            _ => return (bytes, None),
        }
    }
}

enum Shape {
    More,
    NotLogin,
    Complete(usize),
}

fn login_shape(b: &[u8]) -> Shape {
    // A login is under 64 KiB: the length's top byte is 0.
    if b.len() >= 3 && b[2] != 0 {
        return Shape::NotLogin;
    }
    if b.len() < 4 {
        return Shape::More;
    }
    let len = usize::from(b[0]) | usize::from(b[1]) << 8;
    if b[3] != 1 || len < 32 {
        return Shape::NotLogin;
    }
    if b.len() >= 6 && u32::from(u16::from_le_bytes([b[4], b[5]])) & CLIENT_PROTOCOL_41 == 0 {
        return Shape::NotLogin;
    }
    if b.len() >= 4 + len {
        Shape::Complete(4 + len)
    } else {
        Shape::More
    }
}

/// obproxy's `is_authorised_proxysys` (v4.3.1:src/obproxy/proxy/mysql/ob_mysql_client_session.cpp:1636-1691):
/// the source must be loopback or private unless `skip_proxy_sys_private_check`, and the
/// scramble must match `obproxy_sys_password`. A refusal is error 1045 and the end of the
/// connection (v4.3.1:src/obproxy/proxy/mysql/ob_mysql_sm.cpp:2767-2774).
async fn authenticate(
    mut client: TcpStream,
    proxy: &Proxy,
    peer: SocketAddr,
    (resp_seq, response): (u8, Response),
    salt: &[u8],
    server_caps: u64,
) -> Login {
    let (stored, skip_check) = {
        let config = proxy.config();
        (
            config.get("obproxy_sys_password").to_owned(),
            config.flag("skip_proxy_sys_private_check"),
        )
    };
    let mut seq = resp_seq.wrapping_add(1);
    let mut answer = response.auth.clone();
    let plugin = response.plugin.as_deref().unwrap_or(auth::NATIVE_PASSWORD);
    if plugin != auth::NATIVE_PASSWORD && !answer.is_empty() {
        // Another plugin's answer cannot be checked: ask for mysql_native_password.
        if client
            .write_all(&packet(seq, &auth::auth_switch(salt)))
            .await
            .is_err()
        {
            return Login::Done;
        }
        match read_packet(&mut client, MAX_LOGIN).await {
            Ok((s, payload)) => {
                answer = payload;
                seq = s.wrapping_add(1);
            }
            Err(_) => return Login::Done,
        }
    }
    let source_ok = skip_check || is_loopback(peer.ip()) || is_private(peer.ip());
    if source_ok && auth::native_password_ok(&stored, salt, &answer) {
        return Login::Admin(AdminLogin {
            stream: client,
            caps: response.caps & server_caps,
            seq,
            peer,
        });
    }
    let account = Account::parse(&response.user);
    let name = match &account.cluster {
        Some(cluster) => format!("{}@{}#{cluster}", account.user, account.tenant),
        None => format!("{}@{}", account.user, account.tenant),
    };
    event!(
        "admin login refused",
        "user={name} peer={peer} reason={}",
        if source_ok {
            "password"
        } else {
            "source-address"
        }
    );
    let mut reply = Reply::new(seq, response.caps & server_caps);
    reply.access_denied(&name, &peer.ip().to_string(), !answer.is_empty());
    let _ = client.write_all(&reply.into_bytes()).await;
    Login::Done
}

/// `ops_is_ip_loopback`: 127.0.0.1 or ::1 exactly (v4.3.1:src/obproxy/iocore/net/ob_inet.h:495-508).
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets() == [127, 0, 0, 1],
        IpAddr::V6(v6) => v6.segments() == [0, 0, 0, 0, 0, 0, 0, 1],
    }
}

/// `ops_is_ip_private`: 192.168.0.0/16 or fc00::/7, nothing else (ob_inet.h:530-541).
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[..2] == [192, 168],
        IpAddr::V6(v6) => v6.octets()[0] & 0xFE == 0xFC,
    }
}

/// A 20-byte scramble of printable characters (a NUL would end it early on the wire).
fn random_salt() -> [u8; 20] {
    let mut raw = [0u8; 20];
    use std::io::Read;
    if let Ok(mut urandom) = std::fs::File::open("/dev/urandom") {
        let _ = urandom.read_exact(&mut raw);
    }
    raw.map(|b| b'!' + b % 94)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_payloads_are_told_from_a_login_at_once() {
        assert!(matches!(login_shape(b"ping"), Shape::NotLogin));
        assert!(matches!(login_shape(b"still here"), Shape::NotLogin));
        assert!(matches!(login_shape(b"\x50\x00"), Shape::More));
        let mut login = vec![0x40, 0, 0, 1, 0x0D, 0xA6];
        assert!(matches!(login_shape(&login), Shape::More));
        login.resize(4 + 0x40, 0);
        assert!(matches!(login_shape(&login), Shape::Complete(68)));
    }

    #[test]
    fn only_obproxys_loopback_and_private_ranges_pass() {
        assert!(is_loopback("127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("127.0.0.2".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_private("192.168.3.4".parse().unwrap()));
        assert!(!is_private("10.0.0.1".parse().unwrap()));
        assert!(is_private("fd00::1".parse().unwrap()));
    }
}
