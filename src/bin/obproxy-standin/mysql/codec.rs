//! MySQL packet framing: splitting a byte stream into logical packets (however reads cut it), and building the packets the stand-in itself sends.

/// A physical packet this long is continued by the next one (one logical packet).
pub const MAX_PAYLOAD: usize = 0xFF_FFFF;
/// How much of each payload the tracker keeps: every field it reads lies within it, and
/// rows (which can be huge) are never needed whole.
const KEPT: usize = 256;

/// One logical packet as the tracker sees it: its sequence id, its whole length, and the
/// first `KEPT` bytes of its payload.
#[derive(Debug)]
pub struct Packet {
    pub seq: u8,
    pub len: usize,
    pub head: Vec<u8>,
}

impl Packet {
    pub fn first(&self) -> Option<u8> {
        self.head.first().copied()
    }

    /// An EOF packet, or the OK with a 0xFE header that replaces it under
    /// CLIENT_DEPRECATE_EOF. The length rule is the protocol's own: a text row can also
    /// start with 0xFE, but only when its first value is longer than 16 MiB.
    pub fn is_eof(&self, deprecate_eof: bool) -> bool {
        let limit = if deprecate_eof { MAX_PAYLOAD } else { 9 };
        self.first() == Some(0xFE) && self.len < limit
    }
}

/// Splits one direction's stream into logical packets, however the reads cut it.
#[derive(Debug, Default)]
pub struct Framer {
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
    pub fn next_packet(&mut self, input: &mut &[u8]) -> Option<Packet> {
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

    pub fn between_packets(&self) -> bool {
        self.header_len == 0 && self.current.is_none()
    }
}
