//! Client load against an ODP's SQL address, counted by outcome: what a restart costs the clients.
//!
//! Two kinds of worker run at once:
//! - **clients** open a fresh TCP connection per request (connect, send, read the whole echo,
//!   close), like short-lived application connections; they see refused connections when the
//!   port is closed and resets when the process that accepted them dies.
//! - **sessions** keep one connection and do request/response on it in a loop, like a
//!   connection pool; every `session_requests` requests (a "transaction" boundary) they close
//!   and reopen it, which is what lets a draining obproxy finish within its window. A session
//!   whose connection is closed under it counts one *cut*, reconnects and goes on.
//!
//! Each request carries the worker and a sequence number, and the reply must be the same bytes:
//! the target must echo (the obproxy stand-in without a backend, or forwarding to
//! [`super::echo_backend::EchoBackend`]). The load only ever targets loopback addresses and is
//! bounded by a [`CancellationToken`], an optional duration and an optional request cap.
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;

use worker::{Worker, WorkerLog};

mod worker;

/// Error samples kept in a report, enough to see what went wrong without flooding it.
const KEEP_SAMPLES: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "load target {0} is not a loopback address; the load generator only targets this machine"
    )]
    NotLoopback(SocketAddr),
    #[error("payload of {0} bytes is too small for the request header (at least 32)")]
    PayloadTooSmall(usize),
}

/// What load to generate, and when to stop.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The SQL address (loopback only).
    pub target: SocketAddr,
    /// Workers opening a fresh connection per request.
    pub clients: usize,
    /// Long-lived sessions.
    pub sessions: usize,
    /// A session reconnects after this many requests; `None` keeps one connection for ever
    /// (until it is cut).
    pub session_requests: Option<u64>,
    /// Bytes per request (and per reply).
    pub payload: usize,
    /// Think time between two requests of one worker; zero runs flat out.
    pub pause: Duration,
    /// Pause after a failed request, so a closed port is not hammered in a tight loop (which
    /// would measure the loop's speed, not the outage, and starve the processes under test).
    pub failure_pause: Duration,
    /// Bound on one request, connect included; beyond it the request counts as failed.
    pub request_timeout: Duration,
    /// Stop by itself after this long.
    pub duration: Option<Duration>,
    /// Stop once this many requests have been started.
    pub max_requests: Option<u64>,
}

impl LoadConfig {
    /// A modest default load against `target`.
    pub fn new(target: SocketAddr) -> Self {
        Self {
            target,
            clients: 8,
            sessions: 4,
            session_requests: Some(50),
            payload: 64,
            pause: Duration::from_millis(1),
            failure_pause: Duration::from_millis(10),
            request_timeout: Duration::from_secs(10),
            duration: None,
            max_requests: None,
        }
    }
}

/// Latency percentiles of the successful requests of one worker kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    pub count: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Latency {
    fn of(mut micros: Vec<u32>) -> Self {
        if micros.is_empty() {
            return Self::default();
        }
        micros.sort_unstable();
        let at = |q: f64| {
            let i = ((micros.len() as f64 * q).ceil() as usize).clamp(1, micros.len()) - 1;
            Duration::from_micros(micros[i].into())
        };
        Self {
            count: micros.len() as u64,
            p50: at(0.50),
            p99: at(0.99),
            max: Duration::from_micros((*micros.last().unwrap_or(&0)).into()),
        }
    }
}

/// One failure, as seen by the client, for diagnosis.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Since the load started.
    pub at: Duration,
    pub outcome: Outcome,
    pub worker: String,
    pub detail: String,
}

/// How one request (or one session connection) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// ECONNREFUSED on connect: nobody listened.
    Refused,
    /// ECONNRESET, EPIPE, or EOF before the whole reply, on a fresh connection.
    Reset,
    /// A timeout, a wrong reply, anything else.
    Failed,
    /// A session's connection closed under it (reset or EOF) during a request.
    Cut,
}

/// What the load saw, by outcome.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub elapsed: Duration,
    /// Requests answered with the right echo (both kinds).
    pub ok: u64,
    pub refused: u64,
    pub reset: u64,
    pub failed: u64,
    /// Session connections closed by the other side; the request in flight is counted here,
    /// not as a reset, since the session reconnects and carries on.
    pub cut_sessions: u64,
    /// Fresh-connection requests: connect + request + reply.
    pub fresh: Latency,
    /// Session requests: request + reply on an open connection.
    pub session: Latency,
    /// The first few failures.
    pub samples: Vec<Sample>,
}

impl Report {
    /// Requests that did not get their echo, refused connections aside.
    pub fn failed_requests(&self) -> u64 {
        self.reset + self.failed
    }

    /// Nothing refused, reset, failed or cut.
    pub fn is_clean(&self) -> bool {
        self.refused == 0 && self.reset == 0 && self.failed == 0 && self.cut_sessions == 0
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:.1}s: ok={} refused={} reset={} failed={} cut_sessions={}",
            self.elapsed.as_secs_f64(),
            self.ok,
            self.refused,
            self.reset,
            self.failed,
            self.cut_sessions
        )?;
        for (name, l) in [("fresh", self.fresh), ("session", self.session)] {
            writeln!(
                f,
                "  {name:<8} requests={} p50={:?} p99={:?} max={:?}",
                l.count, l.p50, l.p99, l.max
            )?;
        }
        for s in &self.samples {
            writeln!(
                f,
                "  at {:.3}s {} {:?}: {}",
                s.at.as_secs_f64(),
                s.worker,
                s.outcome,
                s.detail
            )?;
        }
        Ok(())
    }
}

/// The running counters, shared by the workers and readable while the load runs.
#[derive(Debug, Default)]
struct Counters {
    ok: AtomicU64,
    refused: AtomicU64,
    reset: AtomicU64,
    failed: AtomicU64,
    cut: AtomicU64,
    started: AtomicU64,
    /// Woken at every successful request, for [`Load::wait_for_ok`].
    progress: Notify,
}

/// A snapshot of the counters while the load runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub ok: u64,
    pub refused: u64,
    pub reset: u64,
    pub failed: u64,
    pub cut_sessions: u64,
}

/// A load in progress; [`Load::stop`] ends it and returns its report.
pub struct Load {
    stop: CancellationToken,
    counters: Arc<Counters>,
    workers: JoinSet<WorkerLog>,
    samples: Arc<Mutex<Vec<Sample>>>,
    started: Instant,
}

impl Load {
    /// Starts the workers. They run until `stop` is cancelled, the duration ends or the
    /// request cap is reached, whichever comes first.
    pub fn start(config: LoadConfig, stop: CancellationToken) -> Result<Self, LoadError> {
        if !config.target.ip().is_loopback() {
            return Err(LoadError::NotLoopback(config.target));
        }
        if config.payload < 32 {
            return Err(LoadError::PayloadTooSmall(config.payload));
        }
        // A child token, so the duration ending does not cancel the caller's token.
        let stop = stop.child_token();
        let counters = Arc::new(Counters::default());
        let samples = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let mut workers = JoinSet::new();
        let config = Arc::new(config);
        if let Some(duration) = config.duration {
            let stop = stop.clone();
            workers.spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(duration) => stop.cancel(),
                }
                WorkerLog::default()
            });
        }
        for i in 0..config.clients {
            let w = Worker::new(
                format!("client-{i}"),
                &config,
                &counters,
                &samples,
                &stop,
                started,
            );
            workers.spawn(w.run_fresh());
        }
        for i in 0..config.sessions {
            let w = Worker::new(
                format!("session-{i}"),
                &config,
                &counters,
                &samples,
                &stop,
                started,
            );
            workers.spawn(w.run_session());
        }
        Ok(Self {
            stop,
            counters,
            workers,
            samples,
            started,
        })
    }

    pub fn progress(&self) -> Progress {
        let c = &self.counters;
        Progress {
            ok: c.ok.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            reset: c.reset.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            cut_sessions: c.cut.load(Ordering::Relaxed),
        }
    }

    /// Resolves once at least `n` requests in all have succeeded, or the load has stopped.
    pub async fn wait_for_ok(&self, n: u64) {
        loop {
            // Registered before the check, so a success in between is not missed.
            let woken = self.counters.progress.notified();
            if self.counters.ok.load(Ordering::Relaxed) >= n || self.stop.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = woken => {}
                _ = self.stop.cancelled() => return,
            }
        }
    }

    /// Whether the load ended by itself (duration or request cap).
    pub fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves once the load has ended by itself (duration or request cap) or was stopped.
    pub async fn stopped(&self) {
        self.stop.cancelled().await
    }

    /// Stops the workers, lets each finish the request in flight (bounded by the request
    /// timeout), and returns what they saw.
    pub async fn stop(mut self) -> Report {
        self.stop.cancel();
        let mut fresh = Vec::new();
        let mut session = Vec::new();
        while let Some(done) = self.workers.join_next().await {
            // A worker only ends by returning its log; a panic is a bug to surface.
            let log = done.expect("load worker panicked");
            fresh.extend(log.fresh);
            session.extend(log.session);
        }
        let p = self.progress();
        let samples = std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()));
        Report {
            elapsed: self.started.elapsed(),
            ok: p.ok,
            refused: p.refused,
            reset: p.reset,
            failed: p.failed,
            cut_sessions: p.cut_sessions,
            fresh: Latency::of(fresh),
            session: Latency::of(session),
            samples,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::{worker::request, *};
    use crate::testkit::echo_backend::EchoBackend;

    fn quick(target: SocketAddr) -> LoadConfig {
        LoadConfig {
            clients: 2,
            sessions: 2,
            session_requests: Some(5),
            pause: Duration::ZERO,
            failure_pause: Duration::ZERO,
            request_timeout: Duration::from_secs(5),
            ..LoadConfig::new(target)
        }
    }

    #[tokio::test]
    async fn an_echo_backend_answers_every_request_and_the_cap_stops_the_load() {
        let backend = EchoBackend::start().await.unwrap();
        let config = LoadConfig {
            max_requests: Some(400),
            ..quick(backend.addr())
        };
        let report = stop_when_capped(Load::start(config, CancellationToken::new()).unwrap()).await;
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.ok, 400, "{report}");
        assert_eq!(report.fresh.count + report.session.count, 400);
        assert!(report.fresh.count > 0 && report.session.count > 0);
        assert!(report.fresh.p50 <= report.fresh.p99 && report.fresh.p99 <= report.fresh.max);
        backend.shutdown().await;
    }

    #[tokio::test]
    async fn a_closed_port_counts_refused_connections_and_nothing_else() {
        // Bound and never listening: every connect is refused, and the port stays ours for
        // the whole test (a port released and reused by another test would answer).
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        let config = LoadConfig {
            max_requests: Some(50),
            ..quick(addr)
        };
        let report = stop_when_capped(Load::start(config, CancellationToken::new()).unwrap()).await;
        assert_eq!(report.ok, 0, "{report}");
        assert_eq!(report.refused, 50, "{report}");
        assert_eq!(report.reset + report.failed + report.cut_sessions, 0);
        assert!(!report.samples.is_empty());
    }

    /// A server that accepts and closes every connection at once, after reading the request.
    async fn slammer() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 8];
                let _ = s.read(&mut buf).await;
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn a_connection_closed_mid_request_is_a_reset_or_for_a_session_a_cut() {
        let (addr, server) = slammer().await;
        let clients_only = LoadConfig {
            sessions: 0,
            max_requests: Some(20),
            ..quick(addr)
        };
        let load = Load::start(clients_only, CancellationToken::new()).unwrap();
        let report = stop_when_capped(load).await;
        assert_eq!(report.reset, 20, "{report}");
        assert_eq!(
            report.ok + report.refused + report.failed + report.cut_sessions,
            0
        );

        let sessions_only = LoadConfig {
            clients: 0,
            max_requests: Some(20),
            ..quick(addr)
        };
        let load = Load::start(sessions_only, CancellationToken::new()).unwrap();
        let report = stop_when_capped(load).await;
        assert_eq!(report.cut_sessions, 20, "{report}");
        assert_eq!(report.ok + report.refused + report.failed + report.reset, 0);
        server.abort();
    }

    async fn stop_when_capped(load: Load) -> Report {
        tokio::time::timeout(Duration::from_secs(30), load.stopped())
            .await
            .expect("the cap did not end the load");
        load.stop().await
    }

    #[tokio::test]
    async fn a_wrong_reply_is_a_failure_and_a_silent_server_a_timeout() {
        // Answers every request with the same wrong bytes.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64];
                    while s.read_exact(&mut buf).await.is_ok() {
                        if s.write_all(&[b'x'; 64]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let config = LoadConfig {
            max_requests: Some(10),
            ..quick(addr)
        };
        let report = stop_when_capped(Load::start(config, CancellationToken::new()).unwrap()).await;
        assert_eq!(report.failed, 10, "{report}");
        assert!(report.samples[0].detail.contains("wrong reply"), "{report}");
        server.abort();

        // Accepts (the kernel does) but never answers.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = LoadConfig {
            clients: 1,
            sessions: 0,
            request_timeout: Duration::from_millis(100),
            max_requests: Some(2),
            ..quick(silent.local_addr().unwrap())
        };
        let report = stop_when_capped(Load::start(config, CancellationToken::new()).unwrap()).await;
        assert_eq!(report.failed, 2, "{report}");
        assert!(report.samples[0].detail.contains("timed out"), "{report}");
    }

    #[test]
    fn only_loopback_is_a_target() {
        let far: SocketAddr = "10.0.0.1:2883".parse().unwrap();
        let err = Load::start(LoadConfig::new(far), CancellationToken::new()).err();
        assert!(matches!(err, Some(LoadError::NotLoopback(_))));
    }

    #[test]
    fn a_request_is_its_size_and_names_worker_and_sequence() {
        let r = request("client-3", 42, 64);
        assert_eq!(r.len(), 64);
        assert!(r.starts_with(b"REQ client-3 42 "));
        assert_eq!(r.last(), Some(&b'\n'));
    }

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let l = Latency::of((1..=100).collect());
        assert_eq!(l.count, 100);
        assert_eq!(l.p50, Duration::from_micros(50));
        assert_eq!(l.p99, Duration::from_micros(99));
        assert_eq!(l.max, Duration::from_micros(100));
        assert_eq!(Latency::of(vec![]), Latency::default());
    }
}
