//! The little of HTTP/2 (RFC 9113) that one server-streaming gRPC call needs, client side:
//! the preface and settings, the request on stream 1, then frames read one at a time
//! (settings and pings answered, flow-control windows given back, the stream's headers,
//! data and trailers handed up). A general client (h2) allocates 28 KiB of buffers per
//! connection whatever it carries (16 KiB to write, 8 KiB to read, 4 KiB for header
//! strings) plus its stream and frame slabs; a connection here holds nothing between
//! frames but its header table (empty: the coordinator asks for none), and a frame's
//! payload only while it is handled. What one status stream carries (a status of a few
//! hundred bytes at every change and every heartbeat) needs no more.
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::hpack::{self, Decoder, Field, HpackError};

#[derive(Debug, thiserror::Error)]
pub enum Http2Error {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("bad header block")]
    Header(#[from] HpackError),
    #[error("the agent reset the stream (HTTP/2 error code {0})")]
    Reset(u32),
    #[error("the agent closed the connection (HTTP/2 GOAWAY, error code {0})")]
    GoAway(u32),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The stream of the one call.
const STREAM: u32 = 1;
/// The largest frame the coordinator accepts: the protocol's default and minimum.
pub const MAX_FRAME: usize = 16_384;
/// The most header bytes a response may send (advertised; longer is an error).
const MAX_HEADER_LIST: usize = 16_384;
/// The most frames the agent may send between two events of the call (pings, settings,
/// window updates, frames of other streams or types, continuations). A real agent sends a
/// handful between statuses; a flood of them (RFC 9113 10.5) would otherwise keep the
/// coordinator answering until the stream's silence deadline.
const MAX_FRAMES_BETWEEN_EVENTS: u32 = 1024;
/// Received bytes given back to the agent's windows once this many have been consumed.
const WINDOW_REFILL: u32 = 16_384;

/// What the call's stream brought.
#[derive(Debug)]
pub enum Event {
    Headers { fields: Vec<Field>, end: bool },
    Data { payload: Vec<u8>, end: bool },
}

/// Writes the preface, the settings and the whole request: `POST path` with `body`.
pub async fn request<S: AsyncWrite + Unpin>(
    io: &mut S,
    scheme_https: bool,
    authority: &str,
    path: &str,
    body: &[u8],
) -> Result<(), Http2Error> {
    let mut out = PREFACE.to_vec();
    // SETTINGS: no header table (the agent's encoder then indexes nothing and the
    // decoder stores nothing), no push, a bound on response headers.
    let mut settings = Vec::new();
    for (id, value) in [(0x1u16, 0u32), (0x2, 0), (0x6, MAX_HEADER_LIST as u32)] {
        settings.extend_from_slice(&id.to_be_bytes());
        settings.extend_from_slice(&value.to_be_bytes());
    }
    frame(&mut out, SETTINGS, 0, 0, &settings);
    let mut block = Vec::new();
    hpack::indexed(&mut block, 3); // :method POST
    hpack::indexed(&mut block, if scheme_https { 7 } else { 6 });
    hpack::literal(&mut block, 4, "", path);
    hpack::literal(&mut block, 1, "", authority);
    hpack::literal(&mut block, 31, "", "application/grpc");
    hpack::literal(&mut block, 0, "te", "trailers");
    if block.len() > MAX_FRAME {
        return Err(Http2Error::Protocol("request headers too long"));
    }
    frame(&mut out, HEADERS, END_HEADERS, STREAM, &block);
    if body.len() > MAX_FRAME {
        return Err(Http2Error::Protocol("request body too long"));
    }
    frame(&mut out, DATA, END_STREAM, STREAM, body);
    io.write_all(&out).await?;
    io.flush().await?;
    Ok(())
}

/// Appends one frame: header and payload.
pub fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// The reading side of the connection: the header table and the unreturned window.
#[derive(Debug, Default)]
pub struct Reader {
    hpack: Decoder,
    consumed: u32,
}

/// Counts the frames read for one event, failing past [`MAX_FRAMES_BETWEEN_EVENTS`].
struct Budget(u32);

impl Budget {
    fn spend(&mut self) -> Result<(), Http2Error> {
        self.0 += 1;
        if self.0 > MAX_FRAMES_BETWEEN_EVENTS {
            return Err(Http2Error::Protocol(
                "too many frames without a header or data",
            ));
        }
        Ok(())
    }
}

impl Reader {
    /// The call's next event, answering the connection's own frames on the way.
    pub async fn next<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
    ) -> Result<Event, Http2Error> {
        let mut budget = Budget(0);
        loop {
            budget.spend()?;
            let (kind, flags, stream, payload) = read_frame(io).await?;
            match kind {
                DATA if stream == STREAM => {
                    let data = unpad(flags, &payload)?;
                    let end = flags & END_STREAM != 0;
                    self.refill(io, payload.len() as u32, end).await?;
                    return Ok(Event::Data {
                        payload: data.to_vec(),
                        end,
                    });
                }
                DATA => self.refill(io, payload.len() as u32, true).await?,
                HEADERS if stream == STREAM => {
                    let end = flags & END_STREAM != 0;
                    let mut block = headers_fragment(flags, &payload)?.to_vec();
                    let mut done = flags & END_HEADERS != 0;
                    while !done {
                        budget.spend()?;
                        let (kind, flags, s, more) = read_frame(io).await?;
                        if kind != CONTINUATION || s != STREAM {
                            return Err(Http2Error::Protocol("headers without continuation"));
                        }
                        if block.len() + more.len() > MAX_HEADER_LIST {
                            return Err(Http2Error::Protocol("response headers too long"));
                        }
                        block.extend_from_slice(&more);
                        done = flags & END_HEADERS != 0;
                    }
                    let fields = self.hpack.decode(&block, MAX_HEADER_LIST)?;
                    return Ok(Event::Headers { fields, end });
                }
                HEADERS | PUSH_PROMISE | CONTINUATION => {
                    return Err(Http2Error::Protocol("headers on a stream never opened"));
                }
                RST_STREAM if stream == STREAM => {
                    return Err(Http2Error::Reset(code(&payload)?));
                }
                SETTINGS if stream == 0 && flags & ACK == 0 => {
                    if payload.len() % 6 != 0 {
                        return Err(Http2Error::Protocol("settings of a bad length"));
                    }
                    send(io, SETTINGS, ACK, 0, &[]).await?;
                }
                PING if stream == 0 && flags & ACK == 0 => {
                    if payload.len() != 8 {
                        return Err(Http2Error::Protocol("a ping of a bad length"));
                    }
                    send(io, PING, ACK, 0, &payload).await?;
                }
                GOAWAY => return Err(Http2Error::GoAway(code(payload.get(4..).unwrap_or(&[]))?)),
                // Window updates (the request was sent whole), priorities, acks, others.
                _ => {}
            }
        }
    }

    /// Gives received bytes back to the agent's connection and stream windows, in lumps.
    async fn refill<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        n: u32,
        stream_ended: bool,
    ) -> Result<(), Http2Error> {
        self.consumed += n;
        if self.consumed < WINDOW_REFILL {
            return Ok(());
        }
        let increment = std::mem::take(&mut self.consumed).to_be_bytes();
        let mut out = Vec::with_capacity(26);
        frame(&mut out, 0x8, 0, 0, &increment);
        if !stream_ended {
            frame(&mut out, 0x8, 0, STREAM, &increment);
        }
        io.write_all(&out).await?;
        io.flush().await?;
        Ok(())
    }
}

async fn send<S: AsyncWrite + Unpin>(
    io: &mut S,
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) -> Result<(), Http2Error> {
    let mut out = Vec::with_capacity(9 + payload.len());
    frame(&mut out, kind, flags, stream, payload);
    io.write_all(&out).await?;
    io.flush().await?;
    Ok(())
}

/// One frame: type, flags, stream and payload (allocated for this frame only).
async fn read_frame<S: AsyncRead + Unpin>(
    io: &mut S,
) -> Result<(u8, u8, u32, Vec<u8>), Http2Error> {
    let mut head = [0u8; 9];
    io.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    if len > MAX_FRAME {
        return Err(Http2Error::Protocol("a frame over the size allowed"));
    }
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; len];
    io.read_exact(&mut payload).await?;
    Ok((head[3], head[4], stream, payload))
}

fn unpad(flags: u8, payload: &[u8]) -> Result<&[u8], Http2Error> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload
        .split_first()
        .ok_or(Http2Error::Protocol("padded frame without padding length"))?;
    rest.len()
        .checked_sub(pad as usize)
        .map(|end| &rest[..end])
        .ok_or(Http2Error::Protocol("padding longer than the frame"))
}

fn headers_fragment(flags: u8, payload: &[u8]) -> Result<&[u8], Http2Error> {
    let rest = unpad(flags, payload)?;
    if flags & PRIORITY == 0 {
        return Ok(rest);
    }
    rest.get(5..)
        .ok_or(Http2Error::Protocol("priority field missing"))
}

fn code(payload: &[u8]) -> Result<u32, Http2Error> {
    payload
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(Http2Error::Protocol("error code missing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn control_frames_are_answered_and_the_stream_comes_through() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let mut input = Vec::new();
        frame(&mut input, SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]);
        frame(&mut input, PING, 0, 0, b"12345678");
        let mut block = Vec::new();
        hpack::indexed(&mut block, 8); // :status 200
        frame(&mut input, HEADERS, END_HEADERS, STREAM, &block);
        frame(&mut input, DATA, PADDED, STREAM, &[2, b'h', b'i', 0, 0]);
        server.write_all(&input).await.unwrap();
        let mut reader = Reader::default();
        match reader.next(&mut client).await.unwrap() {
            Event::Headers { fields, end } => {
                assert!(!end);
                assert_eq!(fields, [(b":status".to_vec(), b"200".to_vec())]);
            }
            e => panic!("{e:?}"),
        }
        match reader.next(&mut client).await.unwrap() {
            Event::Data { payload, end } => assert_eq!((payload, end), (b"hi".to_vec(), false)),
            e => panic!("{e:?}"),
        }
        // The settings acknowledged, then the ping echoed.
        let mut answers = [0u8; 9 + 17];
        server.read_exact(&mut answers).await.unwrap();
        assert_eq!(answers[..9], [0, 0, 0, SETTINGS, ACK, 0, 0, 0, 0]);
        assert_eq!(answers[9..18], [0, 0, 8, PING, ACK, 0, 0, 0, 0]);
        assert_eq!(&answers[18..], b"12345678");
    }

    #[tokio::test]
    async fn a_reset_or_an_oversized_frame_ends_the_call() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let mut input = Vec::new();
        frame(&mut input, RST_STREAM, 0, STREAM, &8u32.to_be_bytes());
        server.write_all(&input).await.unwrap();
        let e = Reader::default().next(&mut client).await.unwrap_err();
        assert!(matches!(e, Http2Error::Reset(8)), "{e}");
        server
            .write_all(&[0x01, 0, 0, DATA, 0, 0, 0, 0, 1])
            .await
            .unwrap();
        let e = Reader::default().next(&mut client).await.unwrap_err();
        assert!(matches!(e, Http2Error::Protocol(_)), "{e}");
    }
}
