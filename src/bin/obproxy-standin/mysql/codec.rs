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

/// One packet on the wire: a 3-byte length, the sequence id, the payload. Everything the
/// stand-in sends is far below the 16 MiB that would need a continuation.
pub fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len().min(MAX_PAYLOAD);
    let mut bytes = Vec::with_capacity(4 + len);
    bytes.extend_from_slice(&(len as u32).to_le_bytes()[..3]);
    bytes.push(seq);
    bytes.extend_from_slice(&payload[..len]);
    bytes
}

/// A length-encoded integer.
pub fn put_lenenc_int(buf: &mut Vec<u8>, v: u64) {
    match v {
        0..=0xFA => buf.push(v as u8),
        0xFB..=0xFFFF => {
            buf.push(0xFC);
            buf.extend_from_slice(&(v as u16).to_le_bytes());
        }
        0x1_0000..=0xFF_FFFF => {
            buf.push(0xFD);
            buf.extend_from_slice(&(v as u32).to_le_bytes()[..3]);
        }
        _ => {
            buf.push(0xFE);
            buf.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// A length-encoded string.
pub fn put_lenenc_str(buf: &mut Vec<u8>, s: &[u8]) {
    put_lenenc_int(buf, s.len() as u64);
    buf.extend_from_slice(s);
}

/// Reads a length-encoded integer off the front of `data`.
pub fn take_lenenc_int(data: &mut &[u8]) -> Option<u64> {
    let (&first, rest) = data.split_first()?;
    let (width, value) = match first {
        0..=0xFA => return Some(u64::from(first)).inspect(|_| *data = rest),
        0xFC => (2, 0),
        0xFD => (3, 0),
        0xFE => (8, 0u64),
        _ => return None,
    };
    let bytes = rest.get(..width)?;
    let mut le = [0u8; 8];
    le[..width].copy_from_slice(bytes);
    *data = &rest[width..];
    Some(value | u64::from_le_bytes(le))
}

/// Reads bytes up to a NUL off the front of `data` (the NUL consumed).
pub fn take_nul_str<'a>(data: &mut &'a [u8]) -> Option<&'a [u8]> {
    let nul = data.iter().position(|b| *b == 0)?;
    let (s, rest) = data.split_at(nul);
    *data = &rest[1..];
    Some(s)
}

/// Reads one logical packet: its first sequence id and its whole payload, continuations
/// joined. A payload past `limit` is an error, so a peer cannot make us buffer without end.
pub async fn read_packet(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    limit: usize,
) -> std::io::Result<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut payload = Vec::new();
    let mut first_seq = None;
    loop {
        let mut header = [0u8; 4];
        stream.read_exact(&mut header).await?;
        let len =
            usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
        first_seq.get_or_insert(header[3]);
        if payload.len() + len > limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a packet over {limit} bytes"),
            ));
        }
        let start = payload.len();
        payload.resize(start + len, 0);
        stream.read_exact(&mut payload[start..]).await?;
        if len < MAX_PAYLOAD {
            return Ok((first_seq.unwrap_or(0), payload));
        }
    }
}
