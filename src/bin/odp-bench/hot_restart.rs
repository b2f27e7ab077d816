//! `odp-bench hot-restart`: what the agent adds to a HOT restart on an idle machine. The
//! restart is timed from the client's RPC to the agent reporting the new process serving,
//! and set against the process's own start, measured here: this program forks the stand-in
//! on a listener of its own, exactly as the agent does (inherited fd, `-N`), and waits for
//! its readiness signal. The two are interleaved, so both see the same machine.
use std::{
    net::TcpListener,
    os::{fd::AsRawFd, unix::process::CommandExt},
    process::{Command, Stdio},
    sync::{Mutex, OnceLock, mpsc},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, bail};
use odp_agent::proto::agent as pb;
use signal_hook::{
    consts::{SIGUSR1, SIGUSR2},
    iterator::{SignalsInfo, exfiltrator::WithOrigin},
};

use crate::{
    stats::{Spread, median, print_table},
    testbed::{self, Options, Testbed},
};

#[derive(clap::Args)]
pub struct Args {
    /// Runs, each on a fresh agent (the figures are min / median / max over them).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// HOT restarts (and bare starts) per run, after one uncounted restart.
    #[arg(long, default_value_t = 20)]
    restarts: usize,
}

/// One run's medians.
struct RunResult {
    to_serving: Duration,
    bare_start: Duration,
    agent_log_start: Duration,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    println!(
        "HOT restart on an idle machine, stand-in without simulated start-up delay; {} restarts \
         and {} bare starts per run, interleaved; {} runs, figures min / median / max over them",
        args.restarts, args.restarts, args.runs
    );
    let mut runs = Vec::new();
    for n in 1..=args.runs {
        eprintln!("run {n}/{}", args.runs);
        runs.push(one_run(&args).await?);
    }
    let to_serving = Spread::ms(runs.iter().map(|r| r.to_serving));
    let bare = Spread::ms(runs.iter().map(|r| r.bare_start));
    let overhead = Spread::ms(
        runs.iter()
            .map(|r| r.to_serving.saturating_sub(r.bare_start)),
    );
    let log_start = Spread::ms(runs.iter().map(|r| r.agent_log_start));
    println!();
    print_table(
        &[
            "figure (a run's median of its restarts)",
            "min / median / max",
        ],
        &[
            vec![
                "RPC → new process serving (client clock)".into(),
                to_serving.show(2, "ms"),
            ],
            vec![
                "the process's own start (fork → readiness signal, here)".into(),
                bare.show(2, "ms"),
            ],
            vec![
                "agent overhead (the first minus the second)".into(),
                overhead.show(2, "ms"),
            ],
            vec![
                "spawn → readiness in the agent's log".into(),
                log_start.show(2, "ms"),
            ],
        ],
    );
    println!();
    println!(
        "- RPC → new process serving: Restart (mode HOT) sent → its WatchOperation shows the \
         DRAINING phase: the new process signalled readiness, holds the listener, is recorded \
         as serving and the old one was told to drain."
    );
    println!(
        "- the process's own start: this program forks and execs the stand-in with an \
         inherited listener and -N, as the agent does, and waits for its SIGUSR1."
    );
    Ok(())
}

async fn one_run(args: &Args) -> anyhow::Result<RunResult> {
    let testbed = Testbed::start(&Options {
        start_delay: Duration::ZERO,
        exit_timeout: Duration::from_secs(10),
    })
    .await?;
    testbed.start_odp().await?;
    let standin = testbed::sibling(&testbed::bin_dir()?, "obproxy-standin")?;
    // The first restart reads the binary's version; later ones know it.
    hot_restart(&testbed).await?;
    let (mut serving, mut bare, mut logged) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.restarts {
        let (took, log_start) = hot_restart(&testbed).await?;
        serving.push(took);
        logged.push(log_start);
        bare.push(bare_start(&standin)?);
    }
    testbed.shutdown().await?;
    Ok(RunResult {
        to_serving: median(serving),
        bare_start: median(bare),
        agent_log_start: median(logged),
    })
}

/// One HOT restart: RPC → Draining seen, and the agent's own spawn → readiness.
async fn hot_restart(testbed: &Testbed) -> anyhow::Result<(Duration, Duration)> {
    let mut client = testbed.client();
    let sent_at = SystemTime::now();
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
        let took_over =
            op.phase() == pb::OperationPhase::Draining || op.state() != pb::OperationState::Running;
        if took_over && serving.is_none() {
            serving = Some(sent.elapsed());
        }
        last = Some(op);
    }
    let op = last.context("the operation's watch ended without an update")?;
    if op.state() != pb::OperationState::Succeeded {
        bail!("HOT restart failed: {}", op.error);
    }
    let log = testbed
        .log_since(sent_at, |l| {
            crate::restart_modes::startup_marks(l, op.pid).is_some()
        })
        .await;
    let (spawning, ready) = crate::restart_modes::startup_marks(&log, op.pid)
        .context("no spawn and readiness lines in the agent's log")?;
    Ok((
        serving.unwrap_or_else(|| sent.elapsed()),
        ready.duration_since(spawning).unwrap_or_default(),
    ))
}

/// Readiness signals sent to this process, by sender pid.
fn readiness() -> &'static Mutex<mpsc::Receiver<u32>> {
    static READY: OnceLock<Mutex<mpsc::Receiver<u32>>> = OnceLock::new();
    READY.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        // SIGUSR1 (ready) and SIGUSR2 (clean exit) would kill us by default.
        let mut signals =
            SignalsInfo::<WithOrigin>::new([SIGUSR1, SIGUSR2]).expect("signal handlers");
        std::thread::spawn(move || {
            for info in signals.forever() {
                if info.signal == SIGUSR1
                    && let Some(p) = info.process
                {
                    let _ = tx.send(p.pid as u32);
                }
            }
        });
        Mutex::new(rx)
    })
}

/// Forks the stand-in on an inherited listener as the agent would and times it to its
/// readiness signal; then kills it.
fn bare_start(standin: &std::path::Path) -> anyhow::Result<Duration> {
    let ready = readiness().lock().unwrap_or_else(|e| e.into_inner());
    while ready.try_recv().is_ok() {}
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new(standin);
    cmd.args(["-n", "bench", "-c", "bench", "-N"])
        .env("OBPROXY_INHERITED_FD", fd.to_string())
        .env("OBPROXY_INHERITED_IPV6_FD", "-1")
        .env("ODP_STANDIN_START_DELAY", "0s")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only fcntl between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = cmd.spawn().context("start the stand-in")?;
    let pid = child.id();
    let took = loop {
        match ready.recv_timeout(Duration::from_secs(10)) {
            Ok(from) if from == pid => break started.elapsed(),
            Ok(_) => continue,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the stand-in never signalled readiness");
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    Ok(took)
}
