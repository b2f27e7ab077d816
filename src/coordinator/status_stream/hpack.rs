//! HPACK (RFC 7541) for one gRPC call: the request's few headers encoded as plain literals
//! (no Huffman, no table), and a decoder for the server's header blocks with the static
//! table, Huffman strings and a dynamic table. The coordinator advertises a header table
//! size of 0, so an agent's encoder never indexes and the dynamic table stays empty: it is
//! here for a server that starts indexing before it has seen that setting.
use std::{collections::VecDeque, sync::OnceLock};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HpackError {
    #[error("a header block ends inside a field")]
    Truncated,
    #[error("an integer in a header block is too large")]
    Overflow,
    #[error("header index {0} is in neither table")]
    BadIndex(usize),
    #[error("a Huffman string does not decode")]
    Huffman,
    #[error("a table size update to {0} exceeds the limit")]
    TableSize(usize),
    #[error("a table size update after a field (RFC 7541 4.2 allows it only first)")]
    LateTableSize,
    #[error("the header list decodes to more than {0} bytes")]
    ListTooLong(usize),
}

/// The protocol's default header table size: the most a server may use before it has
/// acknowledged the coordinator's settings.
const DEFAULT_TABLE_SIZE: usize = 4096;

/// RFC 7541 Appendix A: (name, value) by index - 1.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// One header field, decoded.
pub type Field = (Vec<u8>, Vec<u8>);

/// A connection's header decoder (its dynamic table lives as long as the connection).
#[derive(Debug, Default)]
pub struct Decoder {
    table: VecDeque<Field>,
    size: usize,
    max: Option<usize>,
}

impl Decoder {
    fn max(&self) -> usize {
        self.max.unwrap_or(DEFAULT_TABLE_SIZE)
    }

    /// Every field of one whole header block, in order, as long as the list (names,
    /// values and 32 bytes a field, RFC 9113 6.5.2) stays within `max_list`: a block
    /// of one-byte references to a 4 KiB table entry would otherwise decode 16 KiB into
    /// 64 MiB.
    pub fn decode(&mut self, mut block: &[u8], max_list: usize) -> Result<Vec<Field>, HpackError> {
        let mut fields = Vec::new();
        let mut list = 0usize;
        let mut add = |fields: &mut Vec<Field>, field: Field| {
            list += field.0.len() + field.1.len() + 32;
            if list > max_list {
                return Err(HpackError::ListTooLong(max_list));
            }
            fields.push(field);
            Ok(())
        };
        while let Some(&first) = block.first() {
            if first & 0x80 != 0 {
                let index = integer(&mut block, 7)?;
                add(&mut fields, self.entry(index)?)?;
            } else if first & 0xe0 == 0x20 {
                if !fields.is_empty() {
                    return Err(HpackError::LateTableSize);
                }
                let size = integer(&mut block, 5)?;
                if size > DEFAULT_TABLE_SIZE {
                    return Err(HpackError::TableSize(size));
                }
                self.max = Some(size);
                self.evict(0);
            } else {
                // 01: add to the table; 0000 and 0001: do not.
                let indexed = first & 0xc0 == 0x40;
                let index = integer(&mut block, if indexed { 6 } else { 4 })?;
                let name = match index {
                    0 => string(&mut block)?,
                    i => self.entry(i)?.0,
                };
                let value = string(&mut block)?;
                if indexed {
                    self.insert((name.clone(), value.clone()));
                }
                add(&mut fields, (name, value))?;
            }
        }
        Ok(fields)
    }

    fn entry(&self, index: usize) -> Result<Field, HpackError> {
        match index {
            1..=61 => {
                let (n, v) = STATIC[index - 1];
                Ok((n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            }
            _ => index
                .checked_sub(62)
                .and_then(|i| self.table.get(i))
                .cloned()
                .ok_or(HpackError::BadIndex(index)),
        }
    }

    fn insert(&mut self, field: Field) {
        let size = field.0.len() + field.1.len() + 32;
        if size > self.max() {
            // RFC 7541 4.4: an entry larger than the table empties it.
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front(field);
    }

    /// Drops the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max() {
            let Some((n, v)) = self.table.pop_back() else {
                break;
            };
            self.size -= n.len() + v.len() + 32;
        }
    }
}

/// An integer with an `n`-bit prefix (RFC 7541 5.1).
fn integer(block: &mut &[u8], n: u32) -> Result<usize, HpackError> {
    let (&first, rest) = block.split_first().ok_or(HpackError::Truncated)?;
    *block = rest;
    let max = (1usize << n) - 1;
    let mut value = first as usize & max;
    if value < max {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let (&b, rest) = block.split_first().ok_or(HpackError::Truncated)?;
        *block = rest;
        if shift > 21 {
            return Err(HpackError::Overflow);
        }
        value += ((b & 0x7f) as usize) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
}

/// A string literal, plain or Huffman-coded (RFC 7541 5.2).
fn string(block: &mut &[u8]) -> Result<Vec<u8>, HpackError> {
    let huffman = block.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(block, 7)?;
    if block.len() < len {
        return Err(HpackError::Truncated);
    }
    let (raw, rest) = block.split_at(len);
    *block = rest;
    if huffman {
        huffman_decode(raw)
    } else {
        Ok(raw.to_vec())
    }
}

/// Code lengths of RFC 7541 Appendix B, by symbol. The code is canonical (codes of one
/// length are consecutive, in symbol order, after the shorter ones), so the lengths are
/// all a decoder needs; EOS is the 30 bits after the last symbol's code.
const CODE_LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

/// Canonical decoding tables: per code length, its first code, how many symbols have it,
/// and where they start in `symbols` (sorted by length, then value).
struct Canonical {
    first: [u32; 31],
    count: [u32; 31],
    start: [usize; 31],
    symbols: Vec<u8>,
}

fn canonical() -> &'static Canonical {
    static TABLE: OnceLock<Canonical> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut symbols: Vec<u8> = (0..=255).collect();
        symbols.sort_by_key(|&s| (CODE_LENGTHS[s as usize], s));
        let mut t = Canonical {
            first: [0; 31],
            count: [0; 31],
            start: [0; 31],
            symbols,
        };
        for &l in &CODE_LENGTHS {
            t.count[l as usize] += 1;
        }
        let (mut code, mut start) = (0u32, 0usize);
        for len in 1..31 {
            t.first[len] = code;
            t.start[len] = start;
            code = (code + t.count[len]) << 1;
            start += t.count[len] as usize;
        }
        t
    })
}

fn huffman_decode(raw: &[u8]) -> Result<Vec<u8>, HpackError> {
    let t = canonical();
    let mut out = Vec::with_capacity(raw.len() * 8 / 5);
    let (mut code, mut len) = (0u32, 0usize);
    for byte in raw {
        for bit in (0..8).rev() {
            code = (code << 1) | u32::from(byte >> bit & 1);
            len += 1;
            if len > 30 {
                return Err(HpackError::Huffman);
            }
            let offset = code.wrapping_sub(t.first[len]);
            if code >= t.first[len] && offset < t.count[len] {
                out.push(t.symbols[t.start[len] + offset as usize]);
                code = 0;
                len = 0;
            }
        }
    }
    // Padding: fewer than 8 bits, all ones (a prefix of EOS).
    if len > 7 || code != (1 << len) - 1 {
        return Err(HpackError::Huffman);
    }
    Ok(out)
}

/// Appends a literal field that is not indexed, its name by static `index` (or a literal
/// name when `index` is 0), plain strings.
pub fn literal(out: &mut Vec<u8>, index: usize, name: &str, value: &str) {
    push_integer(out, 0x00, 4, index);
    if index == 0 {
        push_integer(out, 0x00, 7, name.len());
        out.extend_from_slice(name.as_bytes());
    }
    push_integer(out, 0x00, 7, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// Appends a field wholly from the static table.
pub fn indexed(out: &mut Vec<u8>, index: usize) {
    push_integer(out, 0x80, 7, index);
}

fn push_integer(out: &mut Vec<u8>, flags: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: usize = 16_384;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn text(fields: &[Field]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8(n.clone()).unwrap(),
                    String::from_utf8(v.clone()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn the_rfc_examples_with_huffman_and_the_table_decode() {
        // RFC 7541 C.4.1 and C.4.2: the second request refers to the first one's entry.
        let mut d = Decoder::default();
        let first = d
            .decode(&hex("828684418cf1e3c2e5f23a6ba0ab90f4ff"), LIST)
            .unwrap();
        assert_eq!(
            text(&first)[3],
            (":authority".into(), "www.example.com".into())
        );
        let second = d.decode(&hex("828684be5886a8eb10649cbf"), LIST).unwrap();
        assert_eq!(
            text(&second)[3..],
            [
                (":authority".into(), "www.example.com".into()),
                ("cache-control".into(), "no-cache".into())
            ]
        );
        // A size update to 0 (what the coordinator asks for) empties the table.
        d.decode(&hex("20"), LIST).unwrap();
        assert_eq!(d.decode(&hex("be"), LIST), Err(HpackError::BadIndex(62)));
    }

    #[test]
    fn the_request_encoding_decodes_back() {
        let mut block = Vec::new();
        indexed(&mut block, 3);
        literal(&mut block, 4, "", "/odp.agent.v1.Agent/WatchStatus");
        literal(&mut block, 31, "", "application/grpc");
        literal(&mut block, 0, "te", "trailers");
        let fields = Decoder::default().decode(&block, LIST).unwrap();
        assert_eq!(
            text(&fields),
            [
                (":method".into(), "POST".into()),
                (":path".into(), "/odp.agent.v1.Agent/WatchStatus".into()),
                ("content-type".into(), "application/grpc".into()),
                ("te".into(), "trailers".into()),
            ]
        );
    }

    #[test]
    fn bad_blocks_are_errors_not_panics() {
        let mut d = Decoder::default();
        assert_eq!(d.decode(&[0x80], LIST), Err(HpackError::BadIndex(0)));
        assert_eq!(
            d.decode(&[0x04, 0x05, b'a'], LIST),
            Err(HpackError::Truncated)
        );
        assert_eq!(
            d.decode(&[0x04, 0x81, 0x00], LIST),
            Err(HpackError::Huffman)
        );
        assert_eq!(
            d.decode(&hex("3fe21f"), LIST),
            Err(HpackError::TableSize(4097))
        );
        assert!(
            d.decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], LIST)
                .is_err()
        );
    }

    #[test]
    fn references_to_a_big_entry_cannot_decode_past_the_list_bound() {
        // One 4,000-byte entry indexed, then 16,000 one-byte references to it: 64 MB
        // of fields from a 16 KiB block unless the list size is bounded.
        let mut block = vec![0x40, 0x01, b'x'];
        push_integer(&mut block, 0x00, 7, 4000);
        block.extend(std::iter::repeat_n(b'v', 4000));
        block.extend(std::iter::repeat_n(0xbe, 16_000));
        let mut d = Decoder::default();
        assert_eq!(d.decode(&block, LIST), Err(HpackError::ListTooLong(LIST)));
        // Static references count too: 16,000 of `accept-encoding: gzip, deflate`.
        let block = vec![0x90; 16_000];
        assert_eq!(d.decode(&block, LIST), Err(HpackError::ListTooLong(LIST)));
        // Within the bound, a list decodes.
        assert_eq!(d.decode(&[0x88; 100], LIST).unwrap().len(), 100);
    }

    #[test]
    fn a_table_size_update_after_a_field_is_an_error() {
        let mut d = Decoder::default();
        assert_eq!(d.decode(&hex("8820"), LIST), Err(HpackError::LateTableSize));
        assert!(d.decode(&hex("2088"), LIST).is_ok());
    }

    #[test]
    fn integers_and_huffman_padding_follow_the_rfc_bounds() {
        // A prefix integer with endless continuation bytes stops at 4 of them.
        let mut long = vec![0x7f];
        long.extend(std::iter::repeat_n(0x80, 1000));
        long.push(0x01);
        assert_eq!(d_string(&long), Err(HpackError::Overflow));
        // A string longer than the block is truncated, not read past.
        assert_eq!(
            d_string(&[0x7f, 0xff, 0xff, 0x03, b'a']),
            Err(HpackError::Truncated)
        );
        // EOS (30 ones) inside a string is an error; so is padding of 8 bits or more
        // and padding that is not all ones.
        assert_eq!(
            d_string(&[0x84, 0xff, 0xff, 0xff, 0xfc]),
            Err(HpackError::Huffman)
        );
        assert_eq!(d_string(&[0x82, 0x1f, 0xff]), Err(HpackError::Huffman));
        assert_eq!(d_string(&[0x81, 0x1e]), Err(HpackError::Huffman));
        // '0' is 00000 and padded with three ones.
        assert_eq!(d_string(&[0x81, 0x07]), Ok(b"0".to_vec()));
    }

    fn d_string(mut raw: &[u8]) -> Result<Vec<u8>, HpackError> {
        string(&mut raw)
    }
}
