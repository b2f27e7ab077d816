//! One worker of the load: a client (a fresh connection per request) or a
//! session (one connection, reopened at each transaction boundary), and the
//! exchange it repeats.
use std::{
    io,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;

use super::{Counters, KEEP_SAMPLES, LoadConfig, Outcome, Sample};

/// Latencies (µs) of one worker's successful requests, merged at the end so the hot path
/// shares nothing but counters.
#[derive(Default)]
pub(super) struct WorkerLog {
    pub(super) fresh: Vec<u32>,
    pub(super) session: Vec<u32>,
}

pub(super) struct Worker {
    name: String,
    config: Arc<LoadConfig>,
    counters: Arc<Counters>,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: CancellationToken,
    started: Instant,
    seq: u64,
    log: WorkerLog,
}

/// Why one exchange did not succeed.
#[derive(Debug)]
enum ExchangeError {
    Io(io::Error),
    TimedOut,
    WrongReply { sent: String, got: String },
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::Io(e) => write!(f, "{} ({:?})", e, e.kind()),
            ExchangeError::TimedOut => f.write_str("timed out"),
            ExchangeError::WrongReply { sent, got } => {
                write!(f, "wrong reply: sent {sent:?}, got {got:?}")
            }
        }
    }
}

impl From<io::Error> for ExchangeError {
    fn from(e: io::Error) -> Self {
        ExchangeError::Io(e)
    }
}

impl ExchangeError {
    /// Refused, reset-like (the connection went away) or anything else.
    fn outcome(&self) -> Outcome {
        match self {
            ExchangeError::Io(e) => match e.kind() {
                io::ErrorKind::ConnectionRefused => Outcome::Refused,
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof => Outcome::Reset,
                _ => Outcome::Failed,
            },
            ExchangeError::TimedOut | ExchangeError::WrongReply { .. } => Outcome::Failed,
        }
    }
}

impl Worker {
    pub(super) fn new(
        name: String,
        config: &Arc<LoadConfig>,
        counters: &Arc<Counters>,
        samples: &Arc<Mutex<Vec<Sample>>>,
        stop: &CancellationToken,
        started: Instant,
    ) -> Self {
        Self {
            name,
            config: config.clone(),
            counters: counters.clone(),
            samples: samples.clone(),
            stop: stop.clone(),
            started,
            seq: 0,
            log: WorkerLog::default(),
        }
    }

    /// Takes a request slot, or says the load is over.
    fn next_request(&mut self) -> bool {
        if self.stop.is_cancelled() {
            return false;
        }
        let started = self.counters.started.fetch_add(1, Ordering::Relaxed);
        if self.config.max_requests.is_some_and(|cap| started >= cap) {
            self.stop.cancel();
            return false;
        }
        self.seq += 1;
        true
    }

    /// Sleeps `d` unless the load stops first.
    async fn pause(&self, d: Duration) {
        if d.is_zero() {
            return;
        }
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = tokio::time::sleep(d) => {}
        }
    }

    fn count(&self, outcome: Outcome, detail: impl FnOnce() -> String) {
        let c = &self.counters;
        let counter = match outcome {
            Outcome::Ok => {
                c.ok.fetch_add(1, Ordering::Relaxed);
                c.progress.notify_waiters();
                return;
            }
            Outcome::Refused => &c.refused,
            Outcome::Reset => &c.reset,
            Outcome::Failed => &c.failed,
            Outcome::Cut => &c.cut,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() < KEEP_SAMPLES {
            samples.push(Sample {
                at: self.started.elapsed(),
                outcome,
                worker: self.name.clone(),
                detail: detail(),
            });
        }
    }

    /// Connect, one request, close; again and again.
    pub(super) async fn run_fresh(mut self) -> WorkerLog {
        while self.next_request() {
            let began = Instant::now();
            let result = tokio::time::timeout(self.config.request_timeout, async {
                let mut stream = TcpStream::connect(self.config.target).await?;
                stream.set_nodelay(true)?;
                exchange(&mut stream, &self.name, self.seq, self.config.payload).await
            })
            .await
            .unwrap_or(Err(ExchangeError::TimedOut));
            match result {
                Ok(()) => {
                    self.log.fresh.push(micros(began.elapsed()));
                    self.count(Outcome::Ok, String::new);
                    self.pause(self.config.pause).await;
                }
                Err(e) => {
                    self.count(e.outcome(), || format!("request {}: {e}", self.seq));
                    self.pause(self.config.failure_pause).await;
                }
            }
        }
        self.log
    }

    /// One connection for many requests, reopened every `session_requests` and whenever it is
    /// cut.
    pub(super) async fn run_session(mut self) -> WorkerLog {
        let mut conn: Option<(TcpStream, u64)> = None;
        while self.next_request() {
            if conn.is_none() {
                let connect = tokio::time::timeout(
                    self.config.request_timeout,
                    TcpStream::connect(self.config.target),
                )
                .await
                .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()));
                match connect.and_then(|s| s.set_nodelay(true).map(|()| s)) {
                    Ok(stream) => conn = Some((stream, 0)),
                    Err(e) => {
                        let e = ExchangeError::Io(e);
                        // Resets at connect (rare) count with the other connect failures.
                        let outcome = match e.outcome() {
                            Outcome::Refused => Outcome::Refused,
                            _ => Outcome::Failed,
                        };
                        self.count(outcome, || format!("connect: {e}"));
                        self.pause(self.config.failure_pause).await;
                        continue;
                    }
                }
            }
            let Some((stream, used)) = conn.as_mut() else {
                continue;
            };
            let began = Instant::now();
            let result = tokio::time::timeout(
                self.config.request_timeout,
                exchange(stream, &self.name, self.seq, self.config.payload),
            )
            .await
            .unwrap_or(Err(ExchangeError::TimedOut));
            match result {
                Ok(()) => {
                    self.log.session.push(micros(began.elapsed()));
                    self.count(Outcome::Ok, String::new);
                    *used += 1;
                    if self.config.session_requests.is_some_and(|k| *used >= k) {
                        // The transaction boundary: close and reconnect.
                        conn = None;
                    }
                    self.pause(self.config.pause).await;
                }
                Err(e) => {
                    let outcome = match e.outcome() {
                        Outcome::Reset => Outcome::Cut,
                        other => other,
                    };
                    let n = *used;
                    self.count(outcome, || {
                        format!("request {} after {n} on this connection: {e}", self.seq)
                    });
                    conn = None;
                    self.pause(self.config.failure_pause).await;
                }
            }
        }
        self.log
    }
}

fn micros(d: Duration) -> u32 {
    d.as_micros().try_into().unwrap_or(u32::MAX)
}

/// The request for (`worker`, `seq`): a readable header padded to `size` bytes.
pub(super) fn request(worker: &str, seq: u64, size: usize) -> Vec<u8> {
    let mut body = format!("REQ {worker} {seq} ").into_bytes();
    body.resize(size.max(body.len()), b'.');
    body.truncate(size);
    *body.last_mut().expect("payload is at least 32 bytes") = b'\n';
    body
}

/// Sends one request and reads back exactly as many bytes, which must be the same.
async fn exchange(
    stream: &mut TcpStream,
    worker: &str,
    seq: u64,
    size: usize,
) -> Result<(), ExchangeError> {
    let sent = request(worker, seq, size);
    stream.write_all(&sent).await?;
    let mut got = vec![0; sent.len()];
    // read_exact reports a close before the whole reply as UnexpectedEof.
    stream.read_exact(&mut got).await?;
    if got != sent {
        return Err(ExchangeError::WrongReply {
            sent: String::from_utf8_lossy(&sent).into_owned(),
            got: String::from_utf8_lossy(&got).into_owned(),
        });
    }
    Ok(())
}
