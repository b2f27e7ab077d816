//! Ports for an ODP's listeners that no client connection can take while the ODP is stopped.
//!
//! An agent given port 0 keeps the port its obproxy first bound, as it would keep 2883. Once a
//! Stop closes that listener, the number is free again, and when it lies in the kernel's
//! ephemeral range (`net.ipv4.ip_local_port_range`) the next outgoing connection of a load
//! generator can be given it as its source port: the Start that follows then fails with
//! `Address already in use`. Real deployments use fixed ports below that range (2883, 2885);
//! the benchmarks and the demo do the same.
use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    sync::atomic::{AtomicU16, Ordering},
};

/// Where the search starts below the ephemeral range: above the well-known and registered
/// ports most services use.
const FLOOR: u16 = 10_000;

/// The lowest port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32_768)
}

/// Spreads concurrent processes over the range, so two benchmarks rarely try the same port.
static NEXT: AtomicU16 = AtomicU16::new(0);

/// A port on `ip`, below the ephemeral range, that nothing listens on or is bound to now.
pub fn below_ephemeral(ip: IpAddr) -> std::io::Result<u16> {
    let low = ephemeral_low().max(FLOOR + 1);
    let span = low - FLOOR;
    let start = (std::process::id() as u16).wrapping_mul(97) % span;
    for i in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed) + i) % span;
        let port = FLOOR + offset;
        if TcpListener::bind(SocketAddr::new(ip, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free port on {ip} between {FLOOR} and {low}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_and_below_the_ephemeral_range() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = below_ephemeral(ip).unwrap();
        let b = below_ephemeral(ip).unwrap();
        assert_ne!(a, b);
        for p in [a, b] {
            assert!((FLOOR..ephemeral_low()).contains(&p), "{p}");
            TcpListener::bind((ip, p)).unwrap();
        }
    }
}
