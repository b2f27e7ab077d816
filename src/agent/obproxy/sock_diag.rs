//! Client sessions on the SQL port, asked of the kernel with sock_diag
//! netlink: only established (and close-wait) TCP sockets on the listener's
//! port are returned, so the thousands of TIME_WAIT sockets and other
//! connections of a busy host are never formatted or parsed, where reading
//! `/proc/net/tcp` would do both for every one of them. The kernel still
//! walks its whole established hash for each dump (every bucket, about a
//! millisecond on a large host), so dumps are taken off every request path
//! (see `crate::agent::sampling`), and only for the address families listened on.
use std::{collections::HashSet, io, mem::size_of};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_ESTABLISHED: u32 = 1;
const TCP_CLOSE_WAIT: u32 = 8;
/// `struct nlmsghdr`.
const NLMSG_HDR: usize = 16;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg` up to and including `idiag_inode`.
const MSG_LEN: usize = 72;

/// Inodes of the established TCP sockets whose local port is in `ports`,
/// IPv4 sockets if `v4`, IPv6 sockets if `v6`.
pub fn sessions_on(ports: &[u16], v4: bool, v6: bool) -> io::Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    let families = [(libc::AF_INET, v4), (libc::AF_INET6, v6)];
    for (family, _) in families.iter().filter(|(_, wanted)| *wanted) {
        dump(*family as u8, ports, &mut inodes)?;
    }
    Ok(inodes)
}

struct Fd(i32);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own this fd.
        unsafe { libc::close(self.0) };
    }
}

fn dump(family: u8, ports: &[u16], out: &mut HashSet<u64>) -> io::Result<()> {
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = Fd(fd);
    let mut req = [0u8; NLMSG_HDR + REQ_LEN];
    req[0..4].copy_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes()); // seq
    req[NLMSG_HDR] = family;
    req[NLMSG_HDR + 1] = libc::IPPROTO_TCP as u8;
    let states = (1u32 << TCP_ESTABLISHED) | (1u32 << TCP_CLOSE_WAIT);
    req[NLMSG_HDR + 4..NLMSG_HDR + 8].copy_from_slice(&states.to_ne_bytes());
    // With a single port the kernel filters on it (`id.idiag_sport`, network
    // order) and sends nothing else; with several we filter below.
    if let [port] = ports {
        req[NLMSG_HDR + 8..NLMSG_HDR + 10].copy_from_slice(&port.to_be_bytes());
    }
    // SAFETY: a zeroed sockaddr_nl addressed to the kernel (pid 0).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: valid buffer and address of the stated lengths.
    let sent = unsafe {
        libc::sendto(
            fd.0,
            req.as_ptr().cast(),
            req.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: reading into our own buffer.
        let n = unsafe { libc::recv(fd.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= NLMSG_HDR {
            let len = u32::from_ne_bytes(msgs[0..4].try_into().unwrap_or_default()) as usize;
            let kind = u16::from_ne_bytes(msgs[4..6].try_into().unwrap_or_default());
            if len < NLMSG_HDR || len > msgs.len() {
                return Err(io::Error::other("malformed sock_diag reply"));
            }
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes(
                        msgs[NLMSG_HDR..NLMSG_HDR + 4]
                            .try_into()
                            .unwrap_or_default(),
                    );
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                SOCK_DIAG_BY_FAMILY if len >= NLMSG_HDR + MSG_LEN => {
                    let m = &msgs[NLMSG_HDR..];
                    // idiag_sport is in network byte order, at offset 4.
                    let sport = u16::from_be_bytes([m[4], m[5]]);
                    if ports.contains(&sport) {
                        out.insert(
                            u32::from_ne_bytes(m[68..72].try_into().unwrap_or_default()) as u64
                        );
                    }
                }
                _ => {}
            }
            // Messages are 4-byte aligned.
            let step = (len + 3) & !3;
            msgs = &msgs[step.min(msgs.len())..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accepted_connection_is_a_session_on_its_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server, _) = listener.accept().unwrap();
        let inode = nix::sys::stat::fstat(&server).unwrap().st_ino;
        let sessions = sessions_on(&[port], true, false).unwrap();
        assert!(sessions.contains(&inode), "{sessions:?} lacks {inode}");
        // Without IPv6 listeners no IPv6 dump is made, and IPv4 sockets are
        // not in one.
        assert!(sessions_on(&[port], false, true).unwrap().is_empty());
        // Several ports: the same answer, filtered here instead of in the kernel.
        let both = sessions_on(&[port, port.wrapping_add(1)], true, false).unwrap();
        assert_eq!(both, sessions);
        // The listener itself is not a session.
        let listening = nix::sys::stat::fstat(&listener).unwrap().st_ino;
        assert!(!sessions.contains(&listening));
    }
}
