//! Passive MySQL protocol tracking for one forwarded session: frames the bytes seen in each direction into packets and follows the handshake and the command/response exchange far enough to know when the session sits at a transaction boundary, the only moment obproxy lets a drain close it.
//!
//! Nothing here changes a byte: the tracker only watches. Whatever it cannot follow (a peer
//! that is not MySQL, TLS, compression, a packet it did not expect) makes the session
//! untracked, which reads as "never at a boundary": such a session is only ever cut at the
//! window end, which is the safe side of every mistake.

use std::collections::VecDeque;

/// `SERVER_STATUS_IN_TRANS`: a transaction is open on the server.
const IN_TRANS: u16 = 0x0001;
/// `SERVER_MORE_RESULTS_EXISTS`: another result of the same command follows.
const MORE_RESULTS: u16 = 0x0008;
/// `SERVER_STATUS_CURSOR_EXISTS`: a prepared statement opened a cursor; rows come by COM_STMT_FETCH.
const CURSOR_EXISTS: u16 = 0x0040;

const CLIENT_COMPRESS: u32 = 1 << 5;
const CLIENT_PROTOCOL_41: u32 = 1 << 9;
const CLIENT_SSL: u32 = 1 << 11;
const CLIENT_DEPRECATE_EOF: u32 = 1 << 24;
/// MySQL 8's optional metadata puts a flag byte where a result would otherwise start.
const CLIENT_OPTIONAL_RESULTSET_METADATA: u32 = 1 << 25;

/// A physical packet this long is continued by the next one (one logical packet).
const MAX_PAYLOAD: usize = 0xFF_FFFF;
/// How much of each payload is kept: every field read here lies within it, and rows
/// (which can be huge) are never needed whole.
const KEPT: usize = 256;
/// A server greeting longer than this is not one; it bounds how long the sniffing buffers.
const MAX_GREETING: usize = 1024;
/// Responses a client may have outstanding before we stop believing we follow it.
const MAX_OWED: usize = 1024;

/// One logical packet as the tracker sees it: its sequence id, its whole length, and the
/// first `KEPT` bytes of its payload.
#[derive(Debug)]
struct Packet {
    seq: u8,
    len: usize,
    head: Vec<u8>,
}

impl Packet {
    fn first(&self) -> Option<u8> {
        self.head.first().copied()
    }

    /// An EOF packet, or the OK with a 0xFE header that replaces it under
    /// CLIENT_DEPRECATE_EOF. The length rule is the protocol's own: a text row can also
    /// start with 0xFE, but only when its first value is longer than 16 MiB.
    fn is_eof(&self, deprecate_eof: bool) -> bool {
        let limit = if deprecate_eof { MAX_PAYLOAD } else { 9 };
        self.first() == Some(0xFE) && self.len < limit
    }
}

/// Splits one direction's stream into logical packets, however the reads cut it.
#[derive(Debug, Default)]
struct Framer {
    header: [u8; 4],
    header_len: usize,
    /// Payload bytes of the current physical packet still to come.
    remaining: usize,
    /// The current physical packet is full-size, so the logical packet goes on after it.
    continues: bool,
    /// The logical packet being read; `None` between packets.
    current: Option<Packet>,
}

impl Framer {
    /// The next complete packet from `input`, consuming what it used; `None` once `input`
    /// ends inside a packet (the rest is kept for the next call).
    fn next_packet(&mut self, input: &mut &[u8]) -> Option<Packet> {
        loop {
            if self.header_len < 4 {
                let take = (4 - self.header_len).min(input.len());
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&input[..take]);
                self.header_len += take;
                *input = &input[take..];
                if self.header_len < 4 {
                    return None;
                }
                let [a, b, c, seq] = self.header;
                let len = usize::from(a) | usize::from(b) << 8 | usize::from(c) << 16;
                self.remaining = len;
                self.continues = len == MAX_PAYLOAD;
                let packet = self.current.get_or_insert_with(|| Packet {
                    seq,
                    len: 0,
                    head: Vec::new(),
                });
                packet.len += len;
            }
            let take = self.remaining.min(input.len());
            let packet = self.current.as_mut().expect("a header was read");
            let room = KEPT.saturating_sub(packet.head.len());
            packet.head.extend_from_slice(&input[..take.min(room)]);
            *input = &input[take..];
            self.remaining -= take;
            if self.remaining > 0 {
                return None;
            }
            self.header_len = 0;
            if !self.continues {
                return self.current.take();
            }
        }
    }

    fn between_packets(&self) -> bool {
        self.header_len == 0 && self.current.is_none()
    }
}

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
mod tests {
    use super::*;

    const SERVER_CAPS: u32 = 0xA3FF_F7FF & !CLIENT_SSL & !CLIENT_COMPRESS;
    const AUTOCOMMIT: u16 = 0x0002;

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut bytes = vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, seq];
        bytes.extend_from_slice(payload);
        bytes
    }

    fn greeting() -> Vec<u8> {
        let mut p = vec![0x0A];
        p.extend_from_slice(b"10.11.19-MariaDB\0");
        p.extend_from_slice(&42u32.to_le_bytes());
        p.extend_from_slice(b"12345678\0");
        p.extend_from_slice(&(SERVER_CAPS as u16).to_le_bytes());
        p.push(45);
        p.extend_from_slice(&AUTOCOMMIT.to_le_bytes());
        p.extend_from_slice(&((SERVER_CAPS >> 16) as u16).to_le_bytes());
        p.push(21);
        p.extend_from_slice(&[0; 10]);
        p.extend_from_slice(b"123456789012\0mysql_native_password\0");
        packet(0, &p)
    }

    fn handshake_response(caps: u32) -> Vec<u8> {
        let mut p = caps.to_le_bytes().to_vec();
        p.extend_from_slice(&(16u32 << 20).to_le_bytes());
        p.push(45);
        p.extend_from_slice(&[0; 23]);
        p.extend_from_slice(b"odp\0\x14");
        p.extend_from_slice(&[7; 20]);
        packet(1, &p)
    }

    fn ok(seq: u8, status: u16) -> Vec<u8> {
        let mut p = vec![0x00, 0x01, 0x00];
        p.extend_from_slice(&status.to_le_bytes());
        p.extend_from_slice(&[0, 0]);
        packet(seq, &p)
    }

    /// The OK that ends a result under CLIENT_DEPRECATE_EOF.
    fn ok_fe(seq: u8, status: u16) -> Vec<u8> {
        let mut p = vec![0xFE, 0x00, 0x00];
        p.extend_from_slice(&status.to_le_bytes());
        p.extend_from_slice(&[0, 0]);
        packet(seq, &p)
    }

    fn eof(seq: u8, status: u16) -> Vec<u8> {
        let mut p = vec![0xFE, 0, 0];
        p.extend_from_slice(&status.to_le_bytes());
        packet(seq, &p)
    }

    fn err(seq: u8) -> Vec<u8> {
        packet(
            seq,
            b"\xFF\x28\x04#42000You have an error in your SQL syntax",
        )
    }

    fn query(sql: &str) -> Vec<u8> {
        let mut p = vec![0x03];
        p.extend_from_slice(sql.as_bytes());
        packet(0, &p)
    }

    fn column_def(seq: u8) -> Vec<u8> {
        let mut p = Vec::new();
        for s in ["def", "odp", "t", "t", "k", "k"] {
            p.push(s.len() as u8);
            p.extend_from_slice(s.as_bytes());
        }
        p.extend_from_slice(&[0x0C, 45, 0, 0, 1, 0, 0, 253, 0, 0, 0, 0, 0]);
        packet(seq, &p)
    }

    /// A logged-in session, fed in one piece or byte by byte.
    fn logged_in(deprecate_eof: bool) -> Session {
        let mut caps = CLIENT_PROTOCOL_41 | 0x000F_A28D;
        if deprecate_eof {
            caps |= CLIENT_DEPRECATE_EOF;
        }
        let mut session = Session::default();
        session.server_sent(&greeting());
        session.client_sent(&handshake_response(caps));
        session.server_sent(&ok(2, AUTOCOMMIT));
        assert!(session.at_boundary(), "{session:?}");
        assert!(session.take_completed());
        session
    }

    /// Feeds an exchange (client bytes, server bytes, ...) in the given order.
    fn exchange(session: &mut Session, steps: &[(bool, Vec<u8>)]) {
        for (from_client, bytes) in steps {
            if *from_client {
                session.client_sent(bytes);
            } else {
                session.server_sent(bytes);
            }
        }
    }

    #[test]
    fn handshake_ends_at_a_boundary_with_the_final_ok() {
        let mut session = Session::default();
        session.server_sent(&greeting());
        assert!(!session.at_boundary());
        session.client_sent(&handshake_response(
            CLIENT_PROTOCOL_41 | CLIENT_DEPRECATE_EOF,
        ));
        assert!(!session.at_boundary(), "authentication is in flight");
        // Auth switch request (0xFE ...) and the client's answer are not an EOF and a command.
        session.server_sent(&packet(
            2,
            b"\xFEmysql_native_password\0abcdefghijklmnopqrst\0",
        ));
        session.client_sent(&packet(3, &[9; 20]));
        assert!(!session.at_boundary());
        session.server_sent(&packet(4, b"\x01\x03"));
        assert!(!session.at_boundary(), "more data is not the end");
        session.server_sent(&ok(5, AUTOCOMMIT));
        assert!(session.at_boundary(), "{session:?}");
        assert_eq!(session.state(), "at-boundary");
    }

    #[test]
    fn in_trans_from_ok_packets_decides_the_boundary() {
        let mut s = logged_in(true);
        s.client_sent(&query("BEGIN"));
        assert!(!s.at_boundary(), "a command in flight");
        s.server_sent(&ok(1, AUTOCOMMIT | IN_TRANS));
        assert!(!s.at_boundary(), "inside a transaction");
        assert!(s.take_completed());
        s.client_sent(&query("INSERT INTO t VALUES (1)"));
        s.server_sent(&ok(1, AUTOCOMMIT | IN_TRANS));
        assert!(!s.at_boundary());
        s.client_sent(&query("COMMIT"));
        s.server_sent(&ok(1, AUTOCOMMIT));
        assert!(s.at_boundary());
    }

    #[test]
    fn an_err_keeps_the_last_known_transaction_state() {
        let mut s = logged_in(false);
        exchange(&mut s, &[(true, query("BEGIN")), (false, ok(1, IN_TRANS))]);
        exchange(&mut s, &[(true, query("bogus")), (false, err(1))]);
        assert!(!s.at_boundary(), "still in the transaction after an error");
        exchange(
            &mut s,
            &[(true, query("ROLLBACK")), (false, ok(1, AUTOCOMMIT))],
        );
        assert!(s.at_boundary());
        exchange(&mut s, &[(true, query("bogus")), (false, err(1))]);
        assert!(
            s.at_boundary(),
            "an error outside a transaction is a boundary"
        );
    }

    #[test]
    fn rows_that_look_like_ok_or_eof_do_not_end_a_result_set() {
        for deprecate_eof in [false, true] {
            let mut s = logged_in(deprecate_eof);
            exchange(&mut s, &[(true, query("BEGIN")), (false, ok(1, IN_TRANS))]);
            assert!(s.take_completed());
            s.client_sent(&query("SELECT '', 'x'"));
            let mut seq = 1;
            let mut next = || {
                seq += 1;
                seq - 1
            };
            s.server_sent(&packet(next(), &[0x02]));
            s.server_sent(&column_def(next()));
            s.server_sent(&column_def(next()));
            if !deprecate_eof {
                s.server_sent(&eof(next(), IN_TRANS));
            }
            // A text row whose first value is empty reads like an OK with no status bits.
            s.server_sent(&packet(
                next(),
                &[0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, b'x'],
            ));
            // A row starting with 0xFE but too long for an EOF (in text protocol it
            // announces a value over 16 MiB; only the length rule tells them apart).
            if !deprecate_eof {
                s.server_sent(&packet(next(), &[0xFE, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
            }
            assert!(!s.at_boundary(), "rows are not the end");
            assert!(!s.take_completed());
            let end = if deprecate_eof {
                ok_fe(next(), IN_TRANS)
            } else {
                eof(next(), IN_TRANS)
            };
            s.server_sent(&end);
            assert!(s.take_completed(), "deprecate_eof={deprecate_eof}");
            assert!(!s.at_boundary(), "still in the transaction");
            exchange(&mut s, &[(true, query("COMMIT")), (false, ok(1, 0))]);
            assert!(s.at_boundary(), "deprecate_eof={deprecate_eof}");
        }
    }

    #[test]
    fn a_result_set_ended_by_err_is_complete() {
        let mut s = logged_in(false);
        s.client_sent(&query("SELECT k FROM t"));
        s.server_sent(&packet(1, &[0x01]));
        s.server_sent(&column_def(2));
        s.server_sent(&eof(3, 0));
        s.server_sent(&packet(4, &[0x01, b'a']));
        assert!(!s.at_boundary());
        s.server_sent(&err(5));
        assert!(s.at_boundary());
    }

    #[test]
    fn more_results_keep_the_command_in_flight() {
        let mut s = logged_in(true);
        s.client_sent(&query("CALL p()"));
        s.server_sent(&packet(1, &[0x01]));
        s.server_sent(&column_def(2));
        s.server_sent(&packet(3, &[0x00]));
        s.server_sent(&ok_fe(4, MORE_RESULTS));
        assert!(!s.at_boundary(), "another result follows");
        s.server_sent(&ok(5, MORE_RESULTS));
        assert!(!s.at_boundary());
        s.server_sent(&ok(6, AUTOCOMMIT));
        assert!(s.at_boundary());
    }

    #[test]
    fn binary_rows_start_with_zero_and_are_not_ok_packets() {
        let mut s = logged_in(false);
        exchange(&mut s, &[(true, query("BEGIN")), (false, ok(1, IN_TRANS))]);
        assert!(s.take_completed());
        // COM_STMT_PREPARE: one column, one parameter, each with its EOF.
        s.client_sent(&packet(0, b"\x16SELECT k FROM t WHERE k = ?"));
        s.server_sent(&packet(1, &[0x00, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0]));
        s.server_sent(&column_def(2));
        s.server_sent(&eof(3, IN_TRANS));
        s.server_sent(&column_def(4));
        assert!(!s.at_boundary(), "definitions still to come");
        s.server_sent(&eof(5, IN_TRANS));
        assert!(s.take_completed());
        // COM_STMT_EXECUTE: a binary result set.
        s.client_sent(&packet(
            0,
            &[0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 254, 0, 1, b'a'],
        ));
        s.server_sent(&packet(1, &[0x01]));
        s.server_sent(&column_def(2));
        s.server_sent(&eof(3, IN_TRANS));
        s.server_sent(&packet(4, &[0x00, 0x00, 0x01, b'a']));
        s.server_sent(&packet(5, &[0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]));
        assert!(!s.take_completed());
        s.server_sent(&eof(6, IN_TRANS));
        assert!(s.take_completed());
        assert!(!s.at_boundary(), "the transaction is still open");
        // COM_STMT_CLOSE has no response: nothing is left in flight.
        exchange(&mut s, &[(true, query("COMMIT")), (false, ok(1, 0))]);
        s.client_sent(&packet(0, &[0x19, 1, 0, 0, 0]));
        assert!(s.at_boundary());
    }

    #[test]
    fn local_infile_waits_for_the_file_and_the_final_ok() {
        let mut s = logged_in(true);
        s.client_sent(&query("LOAD DATA LOCAL INFILE 'f' INTO TABLE t"));
        s.server_sent(&packet(1, b"\xFBf"));
        s.client_sent(&packet(2, b"1\n2\n"));
        assert!(!s.at_boundary());
        s.client_sent(&packet(3, b""));
        assert!(!s.at_boundary(), "the server has not answered yet");
        s.server_sent(&ok(4, AUTOCOMMIT));
        assert!(s.at_boundary());
        assert_eq!(s.state(), "at-boundary");
    }

    #[test]
    fn packets_split_anywhere_read_the_same() {
        let mut s = Session::default();
        let steps: Vec<(bool, Vec<u8>)> = vec![
            (false, greeting()),
            (true, handshake_response(CLIENT_PROTOCOL_41)),
            (false, ok(2, AUTOCOMMIT)),
            (true, query("BEGIN")),
            (false, ok(1, IN_TRANS)),
            (true, query("SELECT 1")),
            (
                false,
                [packet(1, &[1]), column_def(2), eof(3, IN_TRANS)].concat(),
            ),
            (false, [packet(4, &[0x00]), eof(5, IN_TRANS)].concat()),
        ];
        for (from_client, step) in &steps {
            for byte in step.chunks(1) {
                if *from_client {
                    s.client_sent(byte);
                } else {
                    s.server_sent(byte);
                }
            }
        }
        assert_eq!(s.state(), "in-transaction");
        assert!(!s.at_boundary());
        s.client_sent(&query("COMMIT")[..3]);
        assert!(!s.at_boundary(), "half a command");
        s.client_sent(&query("COMMIT")[3..]);
        let reply = ok(1, AUTOCOMMIT);
        s.server_sent(&reply[..6]);
        assert!(!s.at_boundary(), "half a response");
        s.server_sent(&reply[6..]);
        assert!(s.at_boundary());
    }

    #[test]
    fn a_row_longer_than_one_packet_is_one_row() {
        let mut s = logged_in(true);
        exchange(
            &mut s,
            &[(true, query("SELECT blob")), (false, packet(1, &[1]))],
        );
        // A first packet of exactly 16 MiB - 1 that starts like an OK-with-0xFE, continued
        // by an empty packet: one row, not the end of the result.
        let mut big = vec![0u8; MAX_PAYLOAD];
        big[0] = 0xFE;
        s.server_sent(&packet(2, &big));
        s.server_sent(&packet(3, &[]));
        assert!(!s.take_completed());
        s.server_sent(&ok_fe(4, AUTOCOMMIT));
        assert!(s.at_boundary());
    }

    #[test]
    fn what_is_not_mysql_is_untracked_and_never_at_a_boundary() {
        let mut plain = Session::default();
        plain.server_sent(b"hello, this is not a greeting");
        assert_eq!(plain.state(), "not-mysql");
        assert!(!plain.at_boundary());

        let mut eager = Session::default();
        eager.client_sent(b"ping");
        eager.server_sent(&greeting());
        assert_eq!(eager.state(), "not-mysql");

        // An echo of the client's own bytes never looks like a greeting.
        let mut echo = Session::default();
        echo.server_sent(b"GET / HTTP/1.1\r\n");
        assert_eq!(echo.state(), "not-mysql");

        let mut short = Session::default();
        short.server_sent(&packet(0, b"\x0A5.7"));
        assert_eq!(
            short.state(),
            "not-mysql",
            "a version with no NUL is no greeting"
        );
    }

    #[test]
    fn tls_compression_and_quit_stop_the_tracking() {
        for (caps, why) in [
            (CLIENT_PROTOCOL_41 | CLIENT_SSL, "tls"),
            (CLIENT_PROTOCOL_41 | CLIENT_COMPRESS, "compression"),
            (0x0000_A28D & !CLIENT_PROTOCOL_41, "pre-4.1-protocol"),
        ] {
            let mut s = Session::default();
            s.server_sent(&greeting());
            // This server offers TLS and compression too.
            if let Phase::HandshakeResponse { server_caps } = &mut s.phase {
                *server_caps |= CLIENT_SSL | CLIENT_COMPRESS;
            }
            s.client_sent(&handshake_response(caps));
            assert_eq!(s.state(), why);
            s.server_sent(&ok(2, 0));
            assert!(!s.at_boundary());
        }
        let mut s = logged_in(true);
        s.client_sent(&packet(0, &[0x01]));
        assert_eq!(s.state(), "quit");
        assert!(!s.at_boundary());
    }

    #[test]
    fn a_refused_connection_is_mysql_but_never_at_a_boundary() {
        let mut s = Session::default();
        s.server_sent(&packet(0, b"\xFF\x10\x04Too many connections"));
        assert_eq!(s.state(), "refused");
    }

    #[test]
    fn simple_commands_and_statistics_complete_in_one_packet() {
        let mut s = logged_in(false);
        exchange(
            &mut s,
            &[(true, packet(0, &[0x0E])), (false, ok(1, AUTOCOMMIT))],
        );
        assert!(s.at_boundary());
        exchange(
            &mut s,
            &[
                (true, packet(0, &[0x09])),
                (false, packet(1, b"Uptime: 5  Threads: 1")),
            ],
        );
        assert!(s.at_boundary());
        // COM_SET_OPTION answers with an EOF.
        exchange(
            &mut s,
            &[(true, packet(0, &[0x1B, 0, 0])), (false, eof(1, IN_TRANS))],
        );
        assert!(!s.at_boundary(), "the EOF's status is read");
    }
}
