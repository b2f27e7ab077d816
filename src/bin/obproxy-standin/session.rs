//! One forwarded session: relays bytes between the client and the backend through the MySQL tracker, and closes itself at a transaction boundary when a drain allows fewer sessions than are open, the way obproxy lets sessions leave.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;

use nix::sys::socket::{MsgFlags, recv};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::forward::{Leave, Tracked, raised};
use crate::mysql;

/// COM_QUIT, sent to the backend when a session leaves at a boundary so the server sees
/// a clean logout rather than an aborted connection.
const COM_QUIT: [u8; 5] = [1, 0, 0, 0, 1];

/// What the relay knows of the session, shared by its two directions and the leave check.
#[derive(Default)]
struct Watch {
    session: mysql::Session,
    /// Bytes fed to the tracker but not yet written on, per direction (client, server).
    /// A boundary only counts once the response that made it has reached the client.
    in_transit: [bool; 2],
    /// One side has closed its sending half: the session is ending by itself.
    half_closed: bool,
}

impl Watch {
    fn at_boundary(&self) -> bool {
        !self.in_transit.contains(&true) && !self.half_closed && self.session.at_boundary()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client = 0,
    Server = 1,
}

enum End {
    /// A side closed or failed: the session ended by itself.
    Closed,
    Left(Leave),
    Cut,
}

/// Relays until either side closes, the session leaves at a boundary, or the window end
/// cuts it; both sockets are closed on return. `session` has seen the login already.
pub async fn relay_from(
    mut client: TcpStream,
    mut server: TcpStream,
    mut tracked: Tracked,
    session: mysql::Session,
) {
    let watch = Mutex::new(Watch {
        session,
        ..Watch::default()
    });
    let delivered = Notify::new();
    let client_fd = client.as_raw_fd();
    let mut cut = tracked.cut_switch();
    let end = {
        let (mut client_rx, mut client_tx) = client.split();
        let (mut server_rx, mut server_tx) = server.split();
        let up = pump(
            &mut client_rx,
            &mut server_tx,
            Side::Client,
            &watch,
            &delivered,
        );
        let down = pump(
            &mut server_rx,
            &mut client_tx,
            Side::Server,
            &watch,
            &delivered,
        );
        let leave = leave_when_allowed(&mut tracked, &watch, &delivered, client_fd);
        tokio::select! {
            _ = async { tokio::try_join!(up, down) } => End::Closed,
            leave = leave => End::Left(leave),
            _ = raised(&mut cut) => End::Cut,
        }
    };
    match end {
        End::Closed => {}
        End::Left(leave) => {
            // Best effort: nothing is in flight, so the quit is the next packet it reads.
            let _ = server.try_write(&COM_QUIT);
            event!(
                "session closed at boundary",
                "open={} allowed={}",
                leave.open,
                leave.allowed
            );
        }
        End::Cut => {
            let w = lock(&watch);
            let at_boundary = w.at_boundary();
            if !at_boundary {
                event!("session cut", "state={}", w.session.state());
            }
            tracked.record_cut(at_boundary);
        }
    }
    // Sockets first: the census must not report the session gone while they are open.
    drop((client, server));
    drop(tracked);
}

/// Copies one direction, showing every byte to the tracker before passing it on.
async fn pump(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    side: Side,
    watch: &Mutex<Watch>,
    delivered: &Notify,
) -> io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            lock(watch).half_closed = true;
            // Pass the half-close on, as copy_bidirectional would.
            return to.shutdown().await;
        }
        {
            let mut w = lock(watch);
            match side {
                Side::Client => w.session.client_sent(&buf[..n]),
                Side::Server => w.session.server_sent(&buf[..n]),
            }
            w.in_transit[side as usize] = true;
        }
        to.write_all(&buf[..n]).await?;
        lock(watch).in_transit[side as usize] = false;
        if side == Side::Server {
            delivered.notify_one();
        }
    }
}

/// Waits until the session may leave: a drain is on, it allows fewer sessions than are
/// open, and this one has just completed a response that leaves it at a boundary with
/// nothing waiting from its client. obproxy looks only then, in
/// `handle_transaction_complete` (v4.3.1:src/obproxy/proxy/mysql/ob_mysql_client_session.cpp:1248-1270),
/// so a session idle at a boundary stays until the window end.
async fn leave_when_allowed(
    tracked: &mut Tracked,
    watch: &Mutex<Watch>,
    delivered: &Notify,
    client_fd: RawFd,
) -> Leave {
    loop {
        delivered.notified().await;
        let ready = {
            let mut w = lock(watch);
            // Taken on every look, so that only completions since the last one count.
            let completed = w.session.take_completed();
            tracked.draining() && w.at_boundary() && completed
        };
        if ready && !has_pending_input(client_fd) {
            if let Some(leave) = tracked.try_leave() {
                return leave;
            }
        }
    }
}

/// Whether the client has already sent something we have not read: the start of its next
/// command, which must not be dropped by closing now.
pub fn has_pending_input(fd: RawFd) -> bool {
    let mut byte = [0u8; 1];
    // A peek that does not block: nothing is consumed, and an empty socket says EAGAIN.
    matches!(
        recv(fd, &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT),
        Ok(n) if n > 0
    )
}

fn lock(watch: &Mutex<Watch>) -> std::sync::MutexGuard<'_, Watch> {
    // Nothing panics while holding it; a poisoned lock still holds a usable state.
    watch.lock().unwrap_or_else(|e| e.into_inner())
}
