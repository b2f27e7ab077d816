//! Failed console sign-ins, counted per client address, so that a caller who can reach the
//! console cannot try tokens at the speed of the network. After `MAX_FAILURES` wrong tokens
//! within `WINDOW` an address is refused without its token being looked at until the window
//! ends; a right token clears its count. IPv6 addresses are counted by their /64, which one
//! host usually holds whole (counting single addresses would let it rotate through them).
//!
//! The table is bounded: when it is full, windows that have ended are dropped first, and then
//! the oldest, so a flood of addresses costs memory once and never grows it.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Wrong tokens an address may send within [`WINDOW`].
pub const MAX_FAILURES: u32 = 5;
/// How long an address's failures count.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once.
const MAX_ADDRESSES: usize = 4096;

#[derive(Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

pub struct SignInLimit {
    windows: Mutex<HashMap<IpAddr, Window>>,
}

impl Default for SignInLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// The key an address is counted under: itself for IPv4, its /64 for IPv6 (an IPv4 address
/// mapped into IPv6 counts as the IPv4 address).
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

impl SignInLimit {
    pub fn new() -> Self {
        Self {
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Window>> {
        self.windows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `ip` may try a token at `now`; if not, how long until it may.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let windows = self.windows();
        match windows.get(&key(ip)) {
            Some(w) if w.failures >= MAX_FAILURES => {
                let ends = w.started + WINDOW;
                if now < ends { Err(ends - now) } else { Ok(()) }
            }
            _ => Ok(()),
        }
    }

    /// `ip` sent a wrong token at `now`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut windows = self.windows();
        let key = key(ip);
        if !windows.contains_key(&key) && windows.len() >= MAX_ADDRESSES {
            windows.retain(|_, w| now.saturating_duration_since(w.started) < WINDOW);
            if windows.len() >= MAX_ADDRESSES
                && let Some(oldest) = windows
                    .iter()
                    .min_by_key(|(_, w)| w.started)
                    .map(|(k, _)| *k)
            {
                windows.remove(&oldest);
            }
        }
        let w = windows.entry(key).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now.saturating_duration_since(w.started) >= WINDOW {
            *w = Window {
                started: now,
                failures: 0,
            };
        }
        w.failures += 1;
    }

    /// `ip` signed in: its earlier failures no longer count.
    pub fn succeeded(&self, ip: IpAddr) {
        self.windows().remove(&key(ip));
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.windows().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_is_refused_after_its_failures_until_the_window_ends() {
        let limit = SignInLimit::new();
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for i in 0..MAX_FAILURES {
            assert!(limit.check(a, t0).is_ok(), "refused after {i} failures");
            limit.failed(a, t0 + Duration::from_secs(u64::from(i)));
        }
        let wait = limit.check(a, t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(wait, WINDOW - Duration::from_secs(10));
        // Another address is not held back by it.
        assert!(limit.check(ip("192.0.2.2"), t0).is_ok());
        // The window ends: the address may try again, and its count starts afresh.
        assert!(limit.check(a, t0 + WINDOW).is_ok());
        limit.failed(a, t0 + WINDOW);
        assert!(limit.check(a, t0 + WINDOW).is_ok());
    }

    #[test]
    fn a_right_token_clears_the_count() {
        let limit = SignInLimit::new();
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..MAX_FAILURES - 1 {
            limit.failed(a, t0);
        }
        limit.succeeded(a);
        limit.failed(a, t0);
        assert!(limit.check(a, t0).is_ok());
    }

    #[test]
    fn ipv6_is_counted_by_its_64_and_mapped_ipv4_as_ipv4() {
        let limit = SignInLimit::new();
        let t0 = Instant::now();
        for i in 0..MAX_FAILURES {
            limit.failed(ip(&format!("2001:db8:1:2::{i:x}")), t0);
        }
        assert!(limit.check(ip("2001:db8:1:2:ffff::1"), t0).is_err());
        assert!(limit.check(ip("2001:db8:1:3::1"), t0).is_ok());
        for _ in 0..MAX_FAILURES {
            limit.failed(ip("::ffff:192.0.2.9"), t0);
        }
        assert!(limit.check(ip("192.0.2.9"), t0).is_err());
    }

    #[test]
    fn the_table_is_bounded() {
        let limit = SignInLimit::new();
        let t0 = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 100) {
            limit.failed(
                IpAddr::V4(i.into()),
                t0 + Duration::from_millis(u64::from(i)),
            );
        }
        assert_eq!(limit.tracked(), MAX_ADDRESSES);
    }
}
