//! The fuzz targets' properties (see `odp_agent::testkit::hostile_input`) on stable
//! Rust without cargo-fuzz: seeded random mutations of valid inputs, bounded
//! in time, through the same functions. Ignored by default (it runs for a
//! while); run it with
//!
//! ```sh
//! ODP_FUZZ_SECS=60 cargo test --test fuzz_stable -- --ignored --nocapture
//! ```
//!
//! A broken property panics with the input; the seed (`ODP_FUZZ_SEED`,
//! printed at the start) replays the same run.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use odp_agent::testkit::hostile_input::{self, Outcome};
use prost::Message;

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

/// Tokens a mutation may splice in: the grammar's keywords and the values
/// most likely to hurt (huge numbers, escapes, NUL, traversal).
const TOKENS: &[&[u8]] = &[
    b"[server]",
    b"[obproxy]",
    b"[state]",
    b"[tls]",
    b"[[auth.tokens]]",
    b"[[auth.certificates]]",
    b"[audit]",
    b"[agents.tls]",
    b"[[clusters]]",
    b"max_message_bytes = ",
    b"upgrade_dir = ",
    b"role = \"OBPROXY_MANAGER\"",
    b"listen = \"0.0.0.0:0\"",
    b"\"../../etc\"",
    b"18446744073709551616",
    b"-1",
    b"1e400",
    b"\"\\u0000\"",
    b"\0",
    b"\n",
    b"=",
    b"\"",
    b"'",
    b"{",
    b"]]",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    b"\x2a\x0a../outside",
    b"\x12\x0a\x08\xff\xff\xff\xff\xff\xff\xff\xff\x7f",
    b"Bearer ",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 => {
                let at = rng.below(len + 1);
                let token = TOKENS[rng.below(TOKENS.len())];
                input.splice(at..at, token.iter().copied());
            }
            3 if len > 0 => {
                let from = rng.below(len);
                let to = (from + 1 + rng.below(16)).min(len);
                input.drain(from..to);
            }
            4 if len > 0 => {
                let from = rng.below(len);
                let to = (from + 1 + rng.below(64)).min(len);
                let copy = input[from..to].to_vec();
                let at = rng.below(input.len() + 1);
                input.splice(at..at, copy);
            }
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(other.len() + 1);
                input.truncate(rng.below(len + 1));
                input.extend_from_slice(&other[cut..]);
            }
            _ => {
                let n = rng.below(32);
                input.extend((0..n).map(|_| rng.next() as u8));
            }
        }
    }
    // Large, but far below what the fuzzers allow: keeps the run brisk.
    input.truncate(64 * 1024);
}

fn config_seeds() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/config_parse");
    seeds_in(dir)
}

fn request_seeds() -> Vec<Vec<u8>> {
    use odp_agent::proto::{agent as apb, coordinator as cpb};
    let with = |which: u8, message: Vec<u8>| [vec![which], message].concat();
    let mut seeds = seeds_in(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fuzz/seeds/request_validation"
    ));
    seeds.push(with(
        2,
        apb::RestartRequest {
            mode: 1,
            exit_timeout: Some(prost_types::Duration {
                seconds: 5,
                nanos: 0,
            }),
            request_id: "deploy-42".into(),
            wait: true,
            binary: "bin/obproxy-new".into(),
        }
        .encode_to_vec(),
    ));
    // Hot upgrades the properties must judge: a symlink out of bin/ (refused), and a
    // roundabout name for a binary inside it (accepted, resolved).
    for binary in ["bin/escape", "bin/../bin/./obproxy-new"] {
        seeds.push(with(
            2,
            apb::RestartRequest {
                mode: 1,
                binary: binary.into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ));
    }
    seeds.push(with(
        0,
        cpb::StopAllRequest {
            cluster: "prod".into(),
            request_id: "r1".into(),
            batch_size: 0,
            batch_percent: 25,
            max_failures: 1,
            pause: Some(prost_types::Duration {
                seconds: 30,
                nanos: 0,
            }),
        }
        .encode_to_vec(),
    ));
    seeds.push(with(
        4,
        apb::InspectBinaryRequest {
            binary: "bin/obproxy-new".into(),
        }
        .encode_to_vec(),
    ));
    seeds.push(with(
        8,
        cpb::UpgradeAllRequest {
            cluster: "prod".into(),
            binary: "bin/obproxy-4.3.1".into(),
            binary_sha256: "ab".repeat(32),
            canary_size: 1,
            canary_wait: Some(prost_types::Duration {
                seconds: 300,
                nanos: 0,
            }),
            batch_size: 2,
            ..Default::default()
        }
        .encode_to_vec(),
    ));
    seeds.push(with(
        3,
        apb::GetOperationRequest {
            id: "op-0b8e7c1e-3f0e-4d5c-9d4e-2b1f0c9a8e7d".into(),
        }
        .encode_to_vec(),
    ));
    seeds
}

fn seeds_in(dir: &str) -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    seeds
}

/// Below this the run is too thin to mean anything (a debug build on a loaded machine does
/// several thousand).
const MIN_INPUTS_PER_SECOND: f64 = 500.0;

#[test]
#[ignore = "runs for ODP_FUZZ_SECS (default 20 s): cargo test --test fuzz_stable -- --ignored"]
fn hostile_input_never_panics_and_every_refusal_names_its_field() {
    let secs: u64 = std::env::var("ODP_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    // A new seed each run explores; the printed one replays it.
    let seed: u64 = std::env::var("ODP_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("seed {seed} (ODP_FUZZ_SEED), {secs} s (ODP_FUZZ_SECS)");
    let dir = tempfile::tempdir().unwrap();
    let obproxy = hostile_input::fixture(dir.path()).unwrap();
    let config_seeds = config_seeds();
    let request_seeds = request_seeds();
    let mut rng = Rng(seed | 1);
    let mut stats: BTreeMap<(&str, Outcome), u64> = BTreeMap::new();
    let mut run = |text: &[u8], bytes: &[u8]| {
        let text = String::from_utf8_lossy(text);
        for outcome in hostile_input::config_text(&text) {
            *stats.entry(("config", outcome)).or_default() += 1;
        }
        let agent = hostile_input::agent_request(bytes, &obproxy);
        *stats.entry(("agent request", agent)).or_default() += 1;
        let coordinator = hostile_input::coordinator_request(bytes);
        *stats
            .entry(("coordinator request", coordinator))
            .or_default() += 1;
        let header = hostile_input::authorization(bytes);
        *stats.entry(("authorization", header)).or_default() += 1;
    };
    // The seeds as they are first, as a fuzzer runs its corpus.
    for (text, bytes) in config_seeds.iter().zip(request_seeds.iter().cycle()) {
        run(text, bytes);
    }
    for bytes in &request_seeds {
        run(b"", bytes);
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut runs = 0u64;
    while Instant::now() < deadline {
        for _ in 0..256 {
            runs += 1;
            let mut text = config_seeds[rng.below(config_seeds.len())].clone();
            mutate(&mut rng, &config_seeds, &mut text);
            let mut bytes = request_seeds[rng.below(request_seeds.len())].clone();
            mutate(&mut rng, &request_seeds, &mut bytes);
            run(&text, &bytes);
        }
    }
    let rate = runs as f64 / started.elapsed().as_secs_f64();
    println!("{runs} inputs for each target ({rate:.0} a second), no property broken");
    // A run that proves something: enough inputs, and for every target inputs that got
    // past decoding to both answers, acceptance and a refusal.
    assert!(
        rate >= MIN_INPUTS_PER_SECOND,
        "{rate:.0} inputs a second, fewer than {MIN_INPUTS_PER_SECOND}"
    );
    for target in [
        "config",
        "agent request",
        "coordinator request",
        "authorization",
    ] {
        let accepted = stats
            .get(&(target, Outcome::Accepted))
            .copied()
            .unwrap_or(0);
        let refused: u64 = stats
            .iter()
            .filter(|((t, o), _)| *t == target && matches!(o, Outcome::Refused(_)))
            .map(|(_, n)| n)
            .sum();
        assert!(
            accepted > 0 && refused > 0,
            "{target}: {accepted} accepted, {refused} refused"
        );
    }
    // The most frequent answers; arbitrary key names make a long tail.
    let mut rows: Vec<_> = stats.into_iter().collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    println!("{:<20} {:<40} {:>10}", "TARGET", "OUTCOME", "COUNT");
    let shown = rows.len().min(40);
    for ((target, outcome), count) in &rows[..shown] {
        let outcome = match outcome {
            Outcome::Undecodable => "undecodable".to_string(),
            Outcome::Accepted => "accepted".to_string(),
            Outcome::Refused(key) => format!("refused: {key}"),
        };
        println!("{target:<20} {outcome:<40} {count:>10}");
    }
    println!("({} distinct outcomes, {shown} shown)", rows.len());
}
