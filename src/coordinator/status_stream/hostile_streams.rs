//! What a hostile or broken agent can send the coordinator's status stream: structured
//! attacks (floods, absurd lengths, header bombs, a trickle) and seeded random mutations
//! of a valid response, each fed through the same reading code as a real connection. The
//! properties: no panic, no hang or spin (every input ends within its deadline), the
//! stream's buffer within its stated bound (asserted in `watch` on every frame), garbage
//! ends in an error.
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{MessageError, StreamError, frame as grpc_frame, hpack, http2, pb, watch};

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;

/// How long a replay may take before it counts as a hang: the stream's own deadline
/// (`SILENCE`) plus room for a slow, shared machine.
const SILENCE: Duration = Duration::from_secs(2);
const HANG: Duration = Duration::from_secs(20);

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    http2::frame(&mut out, kind, flags, stream, payload);
    out
}

fn response_headers() -> Vec<u8> {
    let mut block = Vec::new();
    hpack::indexed(&mut block, 8); // :status 200
    hpack::literal(&mut block, 31, "", "application/grpc");
    frame(HEADERS, END_HEADERS, 1, &block)
}

/// A whole, valid response: settings, headers, one status, trailers.
fn valid_response() -> Vec<u8> {
    let status = pb::ProxyStatus {
        pid: 4242,
        version: "4.3.1.0".into(),
        restart_count: 3,
        notices: vec!["listening on 2883".into()],
        ..Default::default()
    };
    let mut out = frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]);
    out.extend(response_headers());
    out.extend(frame(DATA, 0, 1, &grpc_frame(&status)));
    let mut trailers = Vec::new();
    hpack::literal(&mut trailers, 0, "grpc-status", "0");
    out.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &trailers));
    out
}

/// Plays `input` as the agent's side of a connection (then closes it), draining what the
/// coordinator writes back so that answers to a flood cannot block it; returns how the
/// stream ended and how many statuses came through.
async fn replay(input: Vec<u8>) -> (Result<(), StreamError>, usize) {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let (mut from_client, mut to_client) = tokio::io::split(server);
    let writer = tokio::spawn(async move {
        let _ = to_client.write_all(&input).await;
        let _ = to_client.shutdown().await;
    });
    let drain = tokio::spawn(async move {
        let mut sink = vec![0u8; 1 << 14];
        while matches!(from_client.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let mut statuses = 0;
    let ended = tokio::time::timeout(
        HANG,
        watch(&mut client, "agent:1", SILENCE, |_| statuses += 1),
    )
    .await
    .expect("the stream neither ended nor failed: a hang or a spin");
    drop(client);
    writer.abort();
    drain.abort();
    (ended, statuses)
}

/// What a case's error must match.
type Expected = fn(&StreamError) -> bool;

fn protocol(e: &StreamError) -> bool {
    matches!(
        e,
        StreamError::Http2 {
            source: http2::Http2Error::Protocol(_),
            ..
        }
    )
}

#[tokio::test]
async fn a_valid_response_comes_through() {
    let (ended, statuses) = replay(valid_response()).await;
    assert!(ended.is_ok(), "{ended:?}");
    assert_eq!(statuses, 1);
}

#[tokio::test]
async fn each_attack_ends_the_stream_with_an_error() {
    let headers = response_headers();
    let mut cases: Vec<(&str, Vec<u8>, Expected)> = Vec::new();
    cases.push((
        "an HTTP/1 answer",
        b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
        protocol,
    ));
    let mut flood = frame(HEADERS, 0, 1, &[0x88]);
    for _ in 0..10_000 {
        flood.extend(frame(CONTINUATION, 0, 1, &[0x88; 100]));
    }
    cases.push(("a CONTINUATION flood", flood, protocol));
    let mut bomb = vec![0x40, 0x01, b'x', 0x7f, 0xa1, 0x1e]; // value of 4,000 bytes
    bomb.extend(std::iter::repeat_n(b'v', 4000));
    bomb.extend(std::iter::repeat_n(0xbe, 12_000));
    let bomb = frame(HEADERS, END_HEADERS, 1, &bomb);
    cases.push(("an HPACK bomb", bomb, |e| {
        matches!(
            e,
            StreamError::Http2 {
                source: http2::Http2Error::Header(hpack::HpackError::ListTooLong(_)),
                ..
            }
        )
    }));
    let mut huge = headers.clone();
    huge.extend(frame(DATA, 0, 1, &[0, 0xff, 0xff, 0xff, 0xff]));
    huge.extend(std::iter::repeat_n(frame(DATA, 0, 1, &[7; 16_384]), 64).flatten());
    cases.push(("a 4 GiB gRPC message", huge, |e| {
        matches!(
            e,
            StreamError::Message {
                source: MessageError::TooLarge(_),
                ..
            }
        )
    }));
    let mut early = frame(DATA, 0, 1, &[0, 0, 0, 0, 0]);
    early.extend(&headers);
    cases.push(("data before headers", early, |e| {
        matches!(
            e,
            StreamError::Message {
                source: MessageError::BeforeHeaders,
                ..
            }
        )
    }));
    let mut big = vec![0x01, 0x00, 0x00, DATA, 0, 0, 0, 0, 1]; // 65,536 bytes announced
    big.extend([0; 64]);
    cases.push(("a frame over 16 KiB", big, protocol));
    let mut padded = headers.clone();
    padded.extend(frame(DATA, PADDED, 1, &[200, 1, 2, 3]));
    cases.push(("padding past the frame", padded, protocol));
    let pings = std::iter::repeat_n(frame(PING, 0, 0, b"flooding"), 100_000).flatten();
    cases.push(("a PING flood", pings.collect(), protocol));
    let settings = std::iter::repeat_n(frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 1]), 100_000);
    cases.push(("a SETTINGS flood", settings.flatten().collect(), protocol));
    let empty = std::iter::repeat_n(frame(CONTINUATION, 0, 1, &[]), 100_000).flatten();
    let mut empties = frame(HEADERS, 0, 1, &[]);
    empties.extend(empty);
    cases.push(("empty CONTINUATIONs", empties, protocol));
    let mut other = headers.clone();
    other.extend(std::iter::repeat_n(frame(DATA, 0, 3, &[1; 1024]), 2048).flatten());
    cases.push(("2 MiB on a stream never opened", other, protocol));
    cases.push((
        "GOAWAY",
        frame(GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 11]),
        |e| {
            matches!(
                e,
                StreamError::Http2 {
                    source: http2::Http2Error::GoAway(11),
                    ..
                }
            )
        },
    ));
    for (name, input, expected) in cases {
        let (ended, statuses) = replay(input).await;
        assert_eq!(statuses, 0, "{name}");
        match ended {
            Err(e) => assert!(expected(&e), "{name}: {e:?}"),
            Ok(()) => panic!("{name}: accepted"),
        }
    }
}

/// Frames that carry no status (here empty DATA, the cheapest) do not keep a stream alive:
/// only a status restarts its silence clock.
#[tokio::test]
async fn a_stream_that_never_brings_a_status_is_dropped_after_its_silence() {
    let (mut client, mut server) = tokio::io::duplex(1 << 16);
    let agent = tokio::spawn(async move {
        server.write_all(&response_headers()).await?;
        let mut tick = tokio::time::interval(SILENCE / 8);
        loop {
            tick.tick().await;
            server.write_all(&frame(DATA, 0, 1, &[])).await?;
        }
        #[allow(unreachable_code)]
        Ok::<_, std::io::Error>(())
    });
    let ended = tokio::time::timeout(HANG, watch(&mut client, "agent:1", SILENCE, |_| {}))
        .await
        .expect("empty frames kept the stream alive");
    agent.abort();
    assert!(
        matches!(ended, Err(StreamError::Timeout { .. })),
        "{ended:?}"
    );
}

/// xorshift64*: tiny, seeded, and good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of `input`: flipped bytes, spliced frames of any type with any length
/// field, cut or repeated runs.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    let at = rng.below(input.len() + 1);
    match rng.below(6) {
        0 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] ^= 1 << rng.below(8);
        }
        1 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] = [0x00, 0x7f, 0x80, 0xff][rng.below(4)];
        }
        2 => {
            let len = rng.below(64);
            let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let mut f = frame(
                rng.below(11) as u8,
                rng.next() as u8,
                rng.below(4) as u32,
                &payload,
            );
            if rng.below(4) == 0 {
                f[..3].copy_from_slice(&(rng.next() as u32).to_be_bytes()[1..]);
            }
            input.splice(at..at, f);
        }
        3 => input.truncate(at),
        4 if at < input.len() => {
            let end = (at + rng.below(64)).min(input.len());
            let run = input[at..end].to_vec();
            for _ in 0..rng.below(32) {
                input.splice(at..at, run.iter().copied());
            }
        }
        _ => input
            .splice(at..at, (0..rng.below(16)).map(|_| rng.next() as u8))
            .for_each(drop),
    }
}

/// Seeded random inputs: mutations of a valid response, and plain noise. Runs for
/// `ODP_FUZZ_SECS` (default one second) from `ODP_FUZZ_SEED` (printed, to replay).
#[tokio::test]
async fn mutated_and_random_streams_never_panic_hang_or_grow() {
    let seed = std::env::var("ODP_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::process::id() as u64 | 1);
    let secs = std::env::var("ODP_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    println!("ODP_FUZZ_SEED={seed}");
    let mut rng = Rng(seed);
    let valid = valid_response();
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    let mut runs = 0;
    while runs < 200 || std::time::Instant::now() < until {
        let noise = rng.below(8) == 0;
        let input = if noise {
            (0..rng.below(4096)).map(|_| rng.next() as u8).collect()
        } else {
            let mut input = valid.clone();
            for _ in 0..1 + rng.below(8) {
                mutate(&mut rng, &mut input);
            }
            input
        };
        let (ended, _) = replay(input.clone()).await;
        // Noise never makes a response that ends cleanly (that needs HEADERS on stream 1
        // with `:status 200` and END_STREAM).
        assert!(
            !noise || ended.is_err(),
            "seed {seed}: noise accepted: {input:?}"
        );
        runs += 1;
    }
    println!("{runs} streams replayed");
}
