//! Passive MySQL protocol tracking for one forwarded session: frames the bytes seen in each direction into packets and follows the handshake and the command/response exchange far enough to know when the session sits at a transaction boundary, the only moment obproxy lets a drain close it.
//!
//! Nothing here changes a byte: the tracker only watches. Whatever it cannot follow (a peer
//! that is not MySQL, TLS, compression, a packet it did not expect) makes the session
//! untracked, which reads as "never at a boundary": such a session is only ever cut at the
//! window end, which is the safe side of every mistake.

use std::collections::VecDeque;

use super::codec::{Framer, Packet};
use super::{
    CLIENT_COMPRESS, CLIENT_DEPRECATE_EOF, CLIENT_OPTIONAL_RESULTSET_METADATA, CLIENT_PROTOCOL_41,
    CLIENT_SSL, CURSOR_EXISTS, IN_TRANS, MORE_RESULTS,
};

/// A server greeting longer than this is not one; it bounds how long the sniffing buffers.
const MAX_GREETING: usize = 1024;
/// Responses a client may have outstanding before we stop believing we follow it.
const MAX_OWED: usize = 1024;

/// Where the session is in the protocol.
#[derive(Debug)]
enum Phase {
    /// Nothing from the server yet. MySQL's server speaks first, with a v10 greeting; its
    /// first bytes are kept until they prove it or not.
    Greeting(Vec<u8>),
    /// Greeting seen; the client's handshake response (or TLS request) comes next.
    HandshakeResponse { server_caps: u32 },
    /// Logged in or logging in: commands and their responses.
    Commands,
    /// Not followed (any more), for the reason given (one word, for the log).
    Untracked(&'static str),
}

/// A response the server still owes, in the state it has reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owed {
    /// Authentication (after the handshake or COM_CHANGE_USER): auth switch requests and
    /// "more data" packets go on until OK or ERR.
    Auth,
    /// The start of a result (COM_QUERY, COM_STMT_EXECUTE): OK, ERR, a LOCAL INFILE
    /// request, or the column count of a result set.
    Result,
    /// A LOCAL INFILE transfer: the client sends the file and ends it with an empty packet.
    InfileData,
    /// Column definitions, ended by an EOF (only without CLIENT_DEPRECATE_EOF).
    Columns,
    /// Rows, ended by EOF / OK-with-0xFE or ERR. Rows themselves may start with 0x00
    /// (an empty first text value, or any binary row), so nothing else ends them.
    Rows,
    /// One OK, EOF or ERR.
    Status,
    /// One packet of any kind without a status (COM_STATISTICS' text).
    AnyOne,
    /// COM_STMT_PREPARE: a prepare-OK that announces the definitions to follow, or ERR.
    Prepare,
    /// Parameter and column definitions (and their EOFs) still to come after a prepare-OK.
    Definitions(u32),
    /// COM_FIELD_LIST: column definitions ended by EOF or ERR.
    FieldList,
}

/// What a server packet does to the response it belongs to.
enum Step {
    Stay,
    Next(Owed),
    Done,
}

/// The protocol state of one session, fed with every byte that crosses the stand-in.
#[derive(Debug)]
pub struct Session {
    phase: Phase,
    client: Framer,
    server: Framer,
    /// Capabilities both sides hold, from the handshake.
    caps: u32,
    /// The server's last reported SERVER_STATUS_IN_TRANS. An ERR carries no status, so
    /// after one the last known value stands (a failed statement inside a transaction
    /// leaves it open).
    in_trans: bool,
    /// Responses still owed, oldest first: a client may send the next command early.
    owed: VecDeque<Owed>,
    /// A response completed since this was last taken.
    completed: bool,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            phase: Phase::Greeting(Vec::new()),
            client: Framer::default(),
            server: Framer::default(),
            caps: 0,
            in_trans: false,
            owed: VecDeque::new(),
            completed: false,
        }
    }
}

impl Session {
    /// At a transaction boundary: logged in, the last response complete and outside a
    /// transaction, no command in flight and no packet half-way in either direction.
    pub fn at_boundary(&self) -> bool {
        matches!(self.phase, Phase::Commands)
            && self.owed.is_empty()
            && !self.in_trans
            && self.client.between_packets()
            && self.server.between_packets()
    }

    /// Whether a response (a login, a statement, a commit) completed since the last call:
    /// the moment obproxy's own check runs.
    pub fn take_completed(&mut self) -> bool {
        std::mem::take(&mut self.completed)
    }

    /// The session's state in one word, for the log: where it is, or why it is not
    /// followed.
    pub fn state(&self) -> &'static str {
        match self.phase {
            Phase::Untracked(why) => why,
            Phase::Greeting(_) | Phase::HandshakeResponse { .. } => "handshake",
            Phase::Commands if !self.owed.is_empty() => "command-in-flight",
            Phase::Commands if self.in_trans => "in-transaction",
            Phase::Commands if self.at_boundary() => "at-boundary",
            Phase::Commands => "packet-in-flight",
        }
    }

    /// Bytes the client sent towards the server.
    pub fn client_sent(&mut self, mut bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Phase::Greeting(_) = self.phase {
            // A MySQL client waits for the greeting; one that speaks first is something else.
            return self.stop_tracking("not-mysql");
        }
        while let Some(packet) = self.client.next_packet(&mut bytes) {
            match self.phase {
                Phase::HandshakeResponse { server_caps } => {
                    self.handshake_response(&packet, server_caps)
                }
                Phase::Commands => self.client_packet(&packet),
                Phase::Greeting(_) | Phase::Untracked(_) => return,
            }
        }
    }

    /// Bytes the server sent towards the client.
    pub fn server_sent(&mut self, mut bytes: &[u8]) {
        if let Phase::Greeting(seen) = &mut self.phase {
            // Bounded: the greeting's length is checked as soon as its header is in.
            seen.extend_from_slice(bytes);
            let seen = std::mem::take(seen);
            return self.sniff_greeting(seen);
        }
        while let Some(packet) = self.server.next_packet(&mut bytes) {
            match self.phase {
                Phase::Commands => self.server_packet(&packet),
                Phase::HandshakeResponse { .. } => self.stop_tracking("unexpected-server-packet"),
                Phase::Greeting(_) | Phase::Untracked(_) => return,
            }
        }
    }

    /// Decides from the server's first bytes whether this is MySQL, as early as it can:
    /// a peer that is not must not be waited on for megabytes it will never send.
    fn sniff_greeting(&mut self, seen: Vec<u8>) {
        if seen.len() < 5 {
            self.phase = Phase::Greeting(seen);
            return;
        }
        let len = usize::from(seen[0]) | usize::from(seen[1]) << 8 | usize::from(seen[2]) << 16;
        let (seq, first) = (seen[3], seen[4]);
        if seq != 0 || len > MAX_GREETING || !(first == 0x0A || first == 0xFF) {
            return self.stop_tracking("not-mysql");
        }
        if seen.len() < 4 + len {
            self.phase = Phase::Greeting(seen);
            return;
        }
        if first == 0xFF {
            // A MySQL server refusing the connection (too many connections, host blocked).
            return self.stop_tracking("refused");
        }
        match greeting_capabilities(&seen[4..4 + len]) {
            Some(server_caps) => {
                self.phase = Phase::HandshakeResponse { server_caps };
                // The server says nothing more until the client answers; if it does, the
                // normal path finds it unexpected.
                self.server_sent(&seen[4 + len..]);
            }
            None => self.stop_tracking("not-mysql"),
        }
    }

    fn handshake_response(&mut self, packet: &Packet, server_caps: u32) {
        let Some(client_caps) = packet.head.get(..4) else {
            return self.stop_tracking("malformed-packet");
        };
        let caps = u32::from_le_bytes(client_caps.try_into().unwrap()) & server_caps;
        let unfollowable = if caps & CLIENT_PROTOCOL_41 == 0 {
            Some("pre-4.1-protocol")
        } else if caps & CLIENT_SSL != 0 {
            Some("tls")
        } else if caps & CLIENT_COMPRESS != 0 {
            Some("compression")
        } else if caps & CLIENT_OPTIONAL_RESULTSET_METADATA != 0 {
            Some("optional-metadata")
        } else {
            None
        };
        if let Some(why) = unfollowable {
            return self.stop_tracking(why);
        }
        self.caps = caps;
        self.phase = Phase::Commands;
        self.owed.push_back(Owed::Auth);
    }

    fn client_packet(&mut self, packet: &Packet) {
        match self.owed.front_mut() {
            // Auth data (a scramble, a password for an auth switch): not a command.
            Some(Owed::Auth) => return,
            Some(owed @ Owed::InfileData) => {
                if packet.len == 0 {
                    // The file is complete; the server answers OK or ERR.
                    *owed = Owed::Result;
                }
                return;
            }
            _ => {}
        }
        let (0, Some(command)) = (packet.seq, packet.first()) else {
            return self.stop_tracking("lost-track");
        };
        let owed = match command {
            // COM_QUIT: the session ends by itself; nothing is owed.
            0x01 => return self.stop_tracking("quit"),
            // COM_QUERY, COM_PROCESS_INFO, COM_STMT_EXECUTE, COM_STMT_BULK_EXECUTE.
            0x03 | 0x0A | 0x17 | 0xFA => Owed::Result,
            0x04 => Owed::FieldList,
            0x09 => Owed::AnyOne,
            0x11 => Owed::Auth,
            // Replication streams (COM_BINLOG_DUMP, COM_TABLE_DUMP, COM_BINLOG_DUMP_GTID).
            0x12 | 0x13 | 0x14 | 0x1E => return self.stop_tracking("replication"),
            0x16 => Owed::Prepare,
            // COM_STMT_SEND_LONG_DATA and COM_STMT_CLOSE have no response at all.
            0x18 | 0x19 => return,
            0x1C => Owed::Rows,
            // Everything else, unknown commands included (answered with ERR), is one packet.
            _ => Owed::Status,
        };
        if self.owed.len() >= MAX_OWED {
            return self.stop_tracking("too-many-in-flight");
        }
        self.owed.push_back(owed);
    }

    fn server_packet(&mut self, packet: &Packet) {
        let Some(&owed) = self.owed.front() else {
            // A server may send an ERR before it closes a connection on its own (killed,
            // idle too long); anything else means we misread something earlier.
            if packet.first() != Some(0xFF) {
                self.stop_tracking("unexpected-server-packet");
            }
            return;
        };
        let deprecate_eof = self.caps & CLIENT_DEPRECATE_EOF != 0;
        match respond(owed, packet, deprecate_eof) {
            Ok((step, status)) => {
                if let Some(status) = status {
                    self.in_trans = status & IN_TRANS != 0;
                }
                match step {
                    Step::Stay => {}
                    Step::Next(next) => self.owed[0] = next,
                    Step::Done => {
                        self.owed.pop_front();
                        self.completed = true;
                    }
                }
            }
            Err(why) => self.stop_tracking(why),
        }
    }

    fn stop_tracking(&mut self, why: &'static str) {
        self.phase = Phase::Untracked(why);
        self.owed.clear();
    }
}

/// How one server packet advances the response it belongs to, with the status flags it
/// reports if it reports any.
fn respond(
    owed: Owed,
    packet: &Packet,
    deprecate_eof: bool,
) -> Result<(Step, Option<u16>), &'static str> {
    let Some(first) = packet.first() else {
        return Err("malformed-packet");
    };
    let head = &packet.head;
    Ok(match owed {
        Owed::Auth => match first {
            0x00 => (Step::Done, Some(ok_status(head)?)),
            0xFF => (Step::Done, None),
            // Auth switch request (0xFE) or more data (0x01): the exchange goes on.
            _ => (Step::Stay, None),
        },
        Owed::Result | Owed::InfileData => match first {
            0x00 => result_end(ok_status(head)?),
            0xFF => (Step::Done, None),
            0xFB => (Step::Next(Owed::InfileData), None),
            0xFE => return Err("malformed-packet"),
            // A column count. Column definitions never start with 0xFE or 0xFF (their
            // first field is the catalog, "def"), so under CLIENT_DEPRECATE_EOF, where no
            // EOF separates them from the rows, they can be read as rows.
            _ if deprecate_eof => (Step::Next(Owed::Rows), None),
            _ => (Step::Next(Owed::Columns), None),
        },
        Owed::Columns => match first {
            0xFF => (Step::Done, None),
            _ if packet.is_eof(false) => {
                let status = terminal_status(packet)?;
                if status & CURSOR_EXISTS != 0 {
                    (Step::Done, Some(status))
                } else {
                    (Step::Next(Owed::Rows), Some(status))
                }
            }
            _ => (Step::Stay, None),
        },
        Owed::Rows => match first {
            0xFF => (Step::Done, None),
            _ if packet.is_eof(deprecate_eof) => result_end(terminal_status(packet)?),
            _ => (Step::Stay, None),
        },
        Owed::Status => match first {
            0x00 => (Step::Done, Some(ok_status(head)?)),
            _ if packet.is_eof(deprecate_eof) => (Step::Done, Some(terminal_status(packet)?)),
            _ => (Step::Done, None),
        },
        Owed::AnyOne => (Step::Done, None),
        Owed::Prepare => match first {
            0x00 => {
                let Some(counts) = head.get(5..9) else {
                    return Err("malformed-packet");
                };
                let columns = u32::from(u16::from_le_bytes([counts[0], counts[1]]));
                let params = u32::from(u16::from_le_bytes([counts[2], counts[3]]));
                let eofs = if deprecate_eof {
                    0
                } else {
                    u32::from(columns > 0) + u32::from(params > 0)
                };
                match columns + params + eofs {
                    0 => (Step::Done, None),
                    n => (Step::Next(Owed::Definitions(n)), None),
                }
            }
            0xFF => (Step::Done, None),
            _ => return Err("malformed-packet"),
        },
        Owed::Definitions(1) => (Step::Done, None),
        Owed::Definitions(n) => (Step::Next(Owed::Definitions(n - 1)), None),
        Owed::FieldList => match first {
            0xFF => (Step::Done, None),
            _ if packet.is_eof(deprecate_eof) => (Step::Done, Some(terminal_status(packet)?)),
            _ => (Step::Stay, None),
        },
    })
}

/// The end of one result: the command is answered unless the server announces another.
fn result_end(status: u16) -> (Step, Option<u16>) {
    if status & MORE_RESULTS != 0 {
        (Step::Next(Owed::Result), Some(status))
    } else {
        (Step::Done, Some(status))
    }
}

/// Status flags of an EOF packet (0xFE, warnings, status: 5 bytes) or, for anything
/// longer, of the OK-with-0xFE that replaces it under CLIENT_DEPRECATE_EOF.
fn terminal_status(packet: &Packet) -> Result<u16, &'static str> {
    if packet.len == 5 {
        let h = &packet.head;
        return Ok(u16::from_le_bytes([h[3], h[4]]));
    }
    ok_status(&packet.head)
}

/// Status flags of an OK packet: header, affected rows and last insert id (both
/// length-encoded), then the flags (CLIENT_PROTOCOL_41).
fn ok_status(head: &[u8]) -> Result<u16, &'static str> {
    let mut rest = head.get(1..).ok_or("malformed-packet")?;
    skip_lenenc_int(&mut rest)?;
    skip_lenenc_int(&mut rest)?;
    match rest {
        [lo, hi, ..] => Ok(u16::from_le_bytes([*lo, *hi])),
        _ => Err("malformed-packet"),
    }
}

fn skip_lenenc_int(rest: &mut &[u8]) -> Result<(), &'static str> {
    let width = match rest.first() {
        Some(0..=0xFA) => 1,
        Some(0xFC) => 3,
        Some(0xFD) => 4,
        Some(0xFE) => 9,
        _ => return Err("malformed-packet"),
    };
    *rest = rest.get(width..).ok_or("malformed-packet")?;
    Ok(())
}

/// The server's capability flags from a protocol v10 greeting, or `None` when the payload
/// is not one: version 10, a printable NUL-terminated version string, a connection id, the
/// first scramble part and its zero filler, then the flags (upper half optional).
fn greeting_capabilities(payload: &[u8]) -> Option<u32> {
    let (&version, rest) = payload.split_first()?;
    if version != 0x0A {
        return None;
    }
    let nul = rest.iter().position(|b| *b == 0)?;
    if nul == 0 || !rest[..nul].iter().all(|b| (0x20..0x7F).contains(b)) {
        return None;
    }
    // NUL, connection id (4), scramble (8), filler (1), lower capability flags (2).
    let fixed = rest.get(nul + 1..nul + 16)?;
    if fixed[12] != 0 {
        return None;
    }
    let lower = u32::from(u16::from_le_bytes([fixed[13], fixed[14]]));
    // Character set (1) and status (2) come before the upper flags, when present.
    let upper = rest
        .get(nul + 19..nul + 21)
        .map_or(0, |u| u32::from(u16::from_le_bytes([u[0], u[1]])));
    let caps = lower | upper << 16;
    (caps & CLIENT_PROTOCOL_41 != 0).then_some(caps)
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
