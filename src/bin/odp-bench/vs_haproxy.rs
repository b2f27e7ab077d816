//! `odp-bench vs-haproxy`: the agent's HOT restart and HAProxy's seamless reload under the
//! same connect-per-request load, in one run, side by side. Both proxies forward to the same
//! echo backend; the load runs in a process of its own against each in turn.
//!
//! HAProxy runs as Debian ships it, master-worker (`-W`), one thread, with a stats socket
//! that has `expose-fd listeners` (so a reload hands the very listening socket over) and is
//! reloaded with SIGUSR2 to the master. Its new worker serves once it answers `show info`
//! on that socket with its own pid (the socket moves with the listeners, so a query made
//! during the reload waits in the backlog for whichever worker accepts it); the reload is
//! complete when the old worker has exited. The agent's HOT restart serves once the
//! operation reports DRAINING (the new process ready, the old one told to drain) and is
//! complete when the old one has exited.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use odp_agent::{agent::obproxy::pidfd::Pidfd, proto::agent as pb};

use crate::{
    load_process::{self, Counts, LoadProcess, Summary},
    proc_stat,
    stats::{Spread, median, print_table},
    testbed::{Options, Testbed},
};

const SETTLE_OK: u64 = 300;
const PATIENCE: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct Args {
    /// Runs (the figures are min / median / max over them).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Restarts of each proxy per run.
    #[arg(long, default_value_t = 10)]
    restarts: usize,
    /// Load workers, each opening a fresh connection per request.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Think time between two requests of one worker (zero: flat out).
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    pause: Duration,
    /// Time between a restart's completion and the next restart.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    gap: Duration,
    /// The HAProxy binary.
    #[arg(long, default_value = "haproxy")]
    haproxy: String,
}

/// One proxy in one run.
struct Phase {
    load: Summary,
    load_cpu: Duration,
    proxy_cpu: Duration,
    to_serving: Vec<Duration>,
    to_complete: Vec<Duration>,
    /// Restarts during which the load lost anything.
    lossy: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let version = Command::new(&args.haproxy)
        .arg("-v")
        .output()
        .with_context(|| format!("run {} -v (apt-get install haproxy)", args.haproxy))?;
    let version = String::from_utf8_lossy(&version.stdout)
        .lines()
        .next()
        .and_then(|l| l.split(" - ").next())
        .unwrap_or("HAProxy ?")
        .to_string();
    println!(
        "HOT restart (odp-agent + stand-in, no simulated start-up) vs {version} seamless reload \
         (-W, nbthread 1, expose-fd listeners, SIGUSR2); the same load against each: {} \
         fresh-connection clients, {} think time, in its own process; {} restarts each per run, \
         {} apart; {} runs, figures min / median / max over them",
        args.clients,
        humantime::format_duration(args.pause),
        args.restarts,
        humantime::format_duration(args.gap),
        args.runs
    );
    let (mut hot, mut reload) = (Vec::new(), Vec::new());
    for n in 1..=args.runs {
        eprintln!("run {n}/{}", args.runs);
        let testbed = Testbed::start(&Options {
            start_delay: Duration::ZERO,
            exit_timeout: Duration::from_secs(10),
        })
        .await?;
        let backend = testbed.backend_addr().context("no echo backend")?;
        hot.push(hot_phase(&testbed, &args).await?);
        reload.push(haproxy_phase(&args, backend).await?);
        testbed.shutdown().await?;
    }
    print_results(&hot, &reload, &args);
    Ok(())
}

fn load_args(target: SocketAddr, args: &Args) -> load_process::Args {
    load_process::Args {
        target,
        clients: args.clients,
        sessions: 0,
        session_requests: 0,
        pause: args.pause,
        request_timeout: Duration::from_secs(2),
    }
}

async fn hot_phase(testbed: &Testbed, args: &Args) -> anyhow::Result<Phase> {
    let target = testbed.start_odp().await?;
    // The first restart reads the binary's version; later ones know it.
    hot_restart(testbed).await?;
    let cpu_before = testbed.cpu();
    let mut load = LoadProcess::start(&load_args(target, args))?;
    load.wait_ok(SETTLE_OK, PATIENCE).await?;
    let (mut to_serving, mut to_complete, mut lossy) = (Vec::new(), Vec::new(), 0);
    for _ in 0..args.restarts {
        let before = load.progress().await?;
        let (serving, complete) = hot_restart(testbed).await?;
        to_serving.push(serving);
        to_complete.push(complete);
        lossy += usize::from(settle(&mut load, before, args.gap).await?);
    }
    let (summary, load_cpu) = load.stop().await?;
    let stop = testbed
        .client()
        .stop(pb::StopRequest {
            request_id: String::new(),
            wait: true,
        })
        .await?
        .into_inner();
    if stop.state() != pb::OperationState::Succeeded {
        bail!("Stop failed: {}", stop.error);
    }
    Ok(Phase {
        load: summary,
        load_cpu,
        proxy_cpu: testbed.cpu().saturating_sub(cpu_before),
        to_serving,
        to_complete,
        lossy,
    })
}

/// One HOT restart: (→ DRAINING seen, → operation finished).
async fn hot_restart(testbed: &Testbed) -> anyhow::Result<(Duration, Duration)> {
    let mut client = testbed.client();
    let sent = Instant::now();
    let op = client
        .restart(pb::RestartRequest {
            mode: pb::RestartMode::Hot as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut updates = client
        .watch_operation(pb::WatchOperationRequest { id: op.id })
        .await?
        .into_inner();
    let (mut serving, mut last) = (None, None);
    while let Some(op) = updates.message().await? {
        if serving.is_none()
            && (op.phase() == pb::OperationPhase::Draining
                || op.state() != pb::OperationState::Running)
        {
            serving = Some(sent.elapsed());
        }
        last = Some(op);
    }
    let complete = sent.elapsed();
    let op = last.context("the watch ended without an update")?;
    if op.state() != pb::OperationState::Succeeded {
        bail!("HOT restart failed: {}", op.error);
    }
    Ok((serving.unwrap_or(complete), complete))
}

/// Waits for the load to succeed again after a restart and for the gap; whether it lost
/// anything since `before`.
async fn settle(load: &mut LoadProcess, before: Counts, gap: Duration) -> anyhow::Result<bool> {
    let started = Instant::now();
    let after = load.wait_ok(before.ok + SETTLE_OK, PATIENCE).await?;
    if after.ok < before.ok + SETTLE_OK {
        bail!("the load made no progress for {PATIENCE:?} after a restart: {after:?}");
    }
    tokio::time::sleep(gap.saturating_sub(started.elapsed())).await;
    Ok(load.progress().await?.lost() > before.lost())
}

/// A HAProxy master-worker in a temporary directory, killed on drop.
struct Haproxy {
    dir: tempfile::TempDir,
    master: Child,
    frontend: SocketAddr,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.master.kill();
        let _ = self.master.wait();
    }
}

impl Haproxy {
    fn start(binary: &str, backend: SocketAddr) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("odp-bench-haproxy-")
            .tempdir()?;
        let frontend = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  master-worker\n  nbthread 1\n  hard-stop-after 15s\n  \
                 stats socket {stats} mode 600 level admin expose-fd listeners\n\
                 defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  \
                 timeout server 30s\n\
                 frontend fe\n  bind {frontend}\n  default_backend be\n\
                 backend be\n  server echo {backend}\n",
                stats = dir.path().join("stats.sock").display(),
            ),
        )?;
        let master = Command::new(binary)
            .args(["-W", "-db", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {binary}"))?;
        let mut haproxy = Self {
            dir,
            master,
            frontend,
        };
        // Its notices go nowhere; draining the pipe keeps it from blocking.
        if let Some(stderr) = haproxy.master.stderr.take() {
            std::thread::spawn(move || BufReader::new(stderr).lines().for_each(drop));
        }
        let deadline = Instant::now() + PATIENCE;
        while haproxy.worker().is_err() {
            if Instant::now() > deadline {
                bail!("HAProxy did not come up");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(haproxy)
    }

    fn stats(&self) -> std::path::PathBuf {
        self.dir.path().join("stats.sock")
    }

    /// The serving worker's pid.
    fn worker(&self) -> anyhow::Result<u32> {
        worker_at(&self.stats())
    }

    /// CPU time of the master and its workers (the reaped ones included).
    fn cpu(&self, worker: u32) -> Duration {
        proc_stat::cpu(self.master.id()) + proc_stat::cpu(worker)
    }
}

async fn haproxy_phase(args: &Args, backend: SocketAddr) -> anyhow::Result<Phase> {
    let haproxy = Haproxy::start(&args.haproxy, backend)?;
    let mut worker = haproxy.worker()?;
    let cpu_before = haproxy.cpu(worker);
    let mut load = LoadProcess::start(&load_args(haproxy.frontend, args))?;
    load.wait_ok(SETTLE_OK, PATIENCE).await?;
    let (mut to_serving, mut to_complete, mut lossy) = (Vec::new(), Vec::new(), 0);
    for _ in 0..args.restarts {
        let before = load.progress().await?;
        let old = Pidfd::open(worker).context("the worker's pidfd")?;
        let sent = Instant::now();
        // SAFETY: kill(2) to the master we started.
        unsafe { libc::kill(haproxy.master.id() as i32, libc::SIGUSR2) };
        let new = loop {
            let stats = haproxy.stats();
            let pid = tokio::task::spawn_blocking(move || worker_at(&stats)).await??;
            if pid != worker {
                break pid;
            }
            if sent.elapsed() > PATIENCE {
                bail!("HAProxy's reload never brought a new worker");
            }
        };
        to_serving.push(sent.elapsed());
        tokio::time::timeout(PATIENCE, old.exited())
            .await
            .context("the old worker did not exit")??;
        to_complete.push(sent.elapsed());
        worker = new;
        lossy += usize::from(settle(&mut load, before, args.gap).await?);
    }
    let (summary, load_cpu) = load.stop().await?;
    Ok(Phase {
        load: summary,
        load_cpu,
        proxy_cpu: haproxy.cpu(worker).saturating_sub(cpu_before),
        to_serving,
        to_complete,
        lossy,
    })
}

/// The pid of the worker that answers `show info` on the stats socket.
fn worker_at(stats: &Path) -> anyhow::Result<u32> {
    let mut s = UnixStream::connect(stats)?;
    s.set_read_timeout(Some(PATIENCE))?;
    s.write_all(b"show info\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pid: "))
        .and_then(|p| p.trim().parse().ok())
        .context("no Pid in show info")
}

fn counts(p: &[Phase], f: fn(&Counts) -> u64) -> String {
    Spread::of(p.iter().map(|x| f(&x.load.counts) as f64)).show(0, "")
}

fn print_results(hot: &[Phase], reload: &[Phase], args: &Args) {
    type Figure = (&'static str, fn(&[Phase]) -> String);
    let figures: [Figure; 11] = [
        ("ok requests", |p| counts(p, |c| c.ok)),
        ("refused", |p| counts(p, |c| c.refused)),
        ("reset / failed", |p| counts(p, |c| c.reset + c.failed)),
        ("requests/s", |p| {
            Spread::of(
                p.iter()
                    .map(|x| x.load.counts.ok as f64 / x.load.elapsed.as_secs_f64()),
            )
            .show(0, "")
        }),
        ("p99 request (connect+echo)", |p| {
            Spread::ms(p.iter().map(|x| x.load.fresh_p99)).show(2, "ms")
        }),
        ("max request", |p| {
            Spread::ms(p.iter().map(|x| x.load.fresh_max)).show(1, "ms")
        }),
        ("restart → new process serving (median)", |p| {
            Spread::ms(p.iter().map(|x| median(x.to_serving.iter().copied()))).show(1, "ms")
        }),
        ("restart → old process gone (median)", |p| {
            Spread::ms(p.iter().map(|x| median(x.to_complete.iter().copied()))).show(1, "ms")
        }),
        ("worst restart → serving", |p| {
            Spread::ms(
                p.iter()
                    .map(|x| x.to_serving.iter().copied().max().unwrap_or_default()),
            )
            .show(1, "ms")
        }),
        ("restarts that lost a request", |p| {
            Spread::of(p.iter().map(|x| x.lossy as f64)).show(0, "")
        }),
        ("CPU: proxy / load generator", |p| {
            format!(
                "{} / {}",
                Spread::of(p.iter().map(|x| x.proxy_cpu.as_secs_f64())).show(2, "s"),
                Spread::of(p.iter().map(|x| x.load_cpu.as_secs_f64())).show(2, "s")
            )
        }),
    ];
    let rows: Vec<Vec<String>> = figures
        .iter()
        .map(|(name, f)| vec![name.to_string(), f(hot), f(reload)])
        .collect();
    println!();
    print_table(&["per run", "odp-agent HOT", "HAProxy reload"], &rows);
    println!();
    println!(
        "Counts are per run ({} restarts under load); times are each run's median over its \
         restarts. The proxy's CPU is the agent and its obproxy processes, or HAProxy's master \
         and workers, while the load ran.",
        args.restarts
    );
}
