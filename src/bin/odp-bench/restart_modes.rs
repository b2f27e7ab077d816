//! `odp-bench restart-modes`: the same client load through one ODP while it is restarted in
//! each of three ways (HOT, FORCE, and Stop-then-Start as deployment tools do today), and
//! what each cost the clients and how long it took until the new process served. The load
//! runs in a process of its own; every figure is min / median / max over the runs.
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use odp_agent::proto::agent as pb;

use crate::{
    load_process::{self, LoadProcess, Summary},
    proc_stat,
    stats::{Spread, median, print_table},
    testbed::{LogLine, Options, Testbed},
};

/// Successful requests before the first round and after every round: proof that the ODP is
/// serving again before the next restart, and that the last one's losses are all counted.
const SETTLE_OK: u64 = 500;
/// Beyond this without those successes the ODP is not serving: the benchmark fails.
const STALL: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct Args {
    /// Client workers, each opening a fresh connection per request.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Long-lived sessions, each reconnecting every --session-requests requests.
    #[arg(long, default_value_t = 4)]
    sessions: usize,
    /// Runs, each on a fresh agent (the figures are min / median / max over them).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Restarts per mode and run (after one uncounted HOT restart per run).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// The obproxy start-up time the stand-in simulates.
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    start_delay: Duration,
    /// Requests a session makes on one connection before it reconnects (its "transaction").
    #[arg(long, default_value_t = 20)]
    session_requests: u64,
    /// Think time between two requests of one worker.
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    pause: Duration,
    /// The HOT restart's drain window.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    exit_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Hot,
    Force,
    StopStart,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Hot => "HOT",
            Mode::Force => "FORCE",
            Mode::StopStart => "stop+start",
        }
    }
}

/// One restart, timed.
#[derive(Debug, Clone, Copy)]
struct Round {
    /// Client clock: the first RPC sent → the operation reports the new process serving.
    to_serving: Duration,
    /// Agent clock: "spawning obproxy" → the new process's readiness signal arrived.
    startup: Duration,
    /// RPC sent → "spawning obproxy" (everything the agent does first).
    before_spawn: Duration,
}

struct ModeResult {
    mode: Mode,
    rounds: Vec<Round>,
    load: Summary,
    /// CPU time of the load generator's process during this mode.
    load_cpu: Duration,
}

/// One run: a fresh agent through the three modes.
struct RunResult {
    modes: Vec<ModeResult>,
    wall: Duration,
    /// CPU time of the agent and every obproxy it ran (reaped children included).
    agent_cpu: Duration,
    /// CPU time of this process (the echo backend and the orchestration).
    bench_cpu: Duration,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    println!(
        "load (its own process): {} fresh-connection clients + {} sessions (reconnecting every \
         {} requests), {} think time; stand-in start-up delay {}; {} rounds per mode; HOT drain \
         window {}; {} runs, figures min / median / max over them",
        args.clients,
        args.sessions,
        args.session_requests,
        humantime::format_duration(args.pause),
        humantime::format_duration(args.start_delay),
        args.rounds,
        humantime::format_duration(args.exit_timeout),
        args.runs,
    );
    let mut runs = Vec::new();
    for n in 1..=args.runs {
        eprintln!("run {n}/{}", args.runs);
        runs.push(one_run(&args).await?);
    }
    print_results(&runs, &args);
    Ok(())
}

async fn one_run(args: &Args) -> anyhow::Result<RunResult> {
    let mut testbed = Testbed::start(&Options {
        start_delay: args.start_delay,
        exit_timeout: args.exit_timeout,
    })
    .await?;
    let started = Instant::now();
    let bench_cpu = proc_stat::own_cpu();
    let result = run_modes(&testbed, args).await;
    if let Err(e) = &result {
        eprintln!(
            "odp-bench: {e:#}\nthe agent's last lines:\n{}\nfiles kept in {}",
            testbed.log_tail(30),
            testbed.keep_files().display()
        );
    }
    let agent_cpu = testbed.cpu();
    let wall = started.elapsed();
    let bench_cpu = proc_stat::own_cpu().saturating_sub(bench_cpu);
    testbed.shutdown().await?;
    Ok(RunResult {
        modes: result?,
        wall,
        agent_cpu,
        bench_cpu,
    })
}

async fn run_modes(testbed: &Testbed, args: &Args) -> anyhow::Result<Vec<ModeResult>> {
    let target = testbed.start_odp().await?;
    // The agent's first restart reads the binary's version; later ones know it.
    restart(testbed, Mode::Hot, args).await.context("warm-up")?;
    let load = load_process::Args {
        target,
        clients: args.clients,
        sessions: args.sessions,
        session_requests: args.session_requests,
        pause: args.pause,
        request_timeout: Duration::from_secs(10),
    };

    let mut results = Vec::new();
    for mode in [Mode::Hot, Mode::Force, Mode::StopStart] {
        let mut run = LoadProcess::start(&load)?;
        run.wait_ok(SETTLE_OK, STALL).await?;
        let mut rounds = Vec::new();
        for round in 1..=args.rounds {
            let timed = restart(testbed, mode, args)
                .await
                .with_context(|| format!("{} round {round}", mode.name()))?;
            rounds.push(timed);
            let before = run.progress().await?;
            let after = run.wait_ok(before.ok + SETTLE_OK, STALL).await?;
            eprintln!("{} round {round}/{}: {after:?}", mode.name(), args.rounds);
            if after.ok < before.ok + SETTLE_OK {
                let (summary, _) = run.stop().await?;
                bail!(
                    "{} round {round}: the load made no progress for {}; {summary:?}",
                    mode.name(),
                    humantime::format_duration(STALL)
                );
            }
        }
        let (load, load_cpu) = run.stop().await?;
        results.push(ModeResult {
            mode,
            rounds,
            load,
            load_cpu,
        });
    }
    Ok(results)
}

/// One restart in `mode`, timed from the first RPC to the new process serving.
async fn restart(testbed: &Testbed, mode: Mode, args: &Args) -> anyhow::Result<Round> {
    let mut client = testbed.client();
    let sent_at = SystemTime::now();
    let sent = Instant::now();
    let (op, to_serving) = match mode {
        Mode::Hot => {
            // Not `wait`: that answers only once the old process has drained. The watch
            // follows the same operation to its end and notes when the new one took over.
            let op = client
                .restart(pb::RestartRequest {
                    mode: pb::RestartMode::Hot as i32,
                    exit_timeout: Some(prost_types::Duration {
                        seconds: args.exit_timeout.as_secs() as i64,
                        nanos: args.exit_timeout.subsec_nanos() as i32,
                    }),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let mut updates = client
                .watch_operation(pb::WatchOperationRequest { id: op.id })
                .await?
                .into_inner();
            let mut serving = None;
            let mut last = None;
            while let Some(op) = updates.message().await? {
                // Draining begins right after the new process is promoted to serving.
                let took_over = op.phase() == pb::OperationPhase::Draining
                    || op.phase() == pb::OperationPhase::Done
                    || op.state() != pb::OperationState::Running;
                if took_over && serving.is_none() {
                    serving = Some(sent.elapsed());
                }
                last = Some(op);
            }
            let op = last.context("the operation's watch ended without an update")?;
            (op, serving.unwrap_or_else(|| sent.elapsed()))
        }
        Mode::Force => {
            let op = client
                .restart(pb::RestartRequest {
                    mode: pb::RestartMode::Force as i32,
                    wait: true,
                    ..Default::default()
                })
                .await?
                .into_inner();
            (op, sent.elapsed())
        }
        Mode::StopStart => {
            let stop = client
                .stop(pb::StopRequest {
                    request_id: String::new(),
                    wait: true,
                })
                .await?
                .into_inner();
            if stop.state() != pb::OperationState::Succeeded {
                bail!("Stop failed: {}", stop.error);
            }
            let op = client
                .start(pb::StartRequest {
                    request_id: String::new(),
                    wait: true,
                })
                .await?
                .into_inner();
            (op, sent.elapsed())
        }
    };
    if op.state() != pb::OperationState::Succeeded {
        bail!("{} failed: {}", mode.name(), op.error);
    }
    let log = testbed
        .log_since(sent_at, |lines| startup_marks(lines, op.pid).is_some())
        .await;
    let (spawning, ready) = startup_marks(&log, op.pid).with_context(|| {
        format!(
            "no spawn and readiness lines for pid {} in the agent's log",
            op.pid
        )
    })?;
    Ok(Round {
        to_serving,
        startup: ready.duration_since(spawning).unwrap_or_default(),
        before_spawn: spawning.duration_since(sent_at).unwrap_or_default(),
    })
}

/// When the agent began spawning `pid` and when its readiness signal arrived, from the
/// agent's own log timestamps. A readiness signal that overtakes the spawner's report is
/// logged at debug level only; the "pid N is ready" note (after the agent's own checks) then
/// stands in for it.
pub fn startup_marks(log: &[LogLine], pid: u32) -> Option<(SystemTime, SystemTime)> {
    let pid_field = format!("pid={pid}");
    let has_pid = |l: &&LogLine| l.text.split_whitespace().any(|w| w == pid_field);
    let checked = format!("pid {pid} is ready");
    let ready = log
        .iter()
        .filter(has_pid)
        .find(|l| l.text.contains("signalled readiness") || l.text.contains("readiness signal"))
        .or_else(|| log.iter().find(|l| l.text.contains(&checked)))?;
    // The last spawn before that readiness: earlier lines may be a Stop's.
    let spawning = log
        .iter()
        .rfind(|l| l.at <= ready.at && l.text.contains("spawning obproxy"))?;
    Some((spawning.at, ready.at))
}

fn print_results(runs: &[RunResult], args: &Args) {
    let header = [
        "mode",
        "ok requests",
        "failed requests",
        "refused conns",
        "cut sessions",
        "RPC→serving",
        "start-up",
        "agent overhead",
        "p99 fresh req",
    ];
    let modes = [Mode::Hot, Mode::Force, Mode::StopStart];
    let of = |mode: Mode| {
        runs.iter()
            .flat_map(move |r| r.modes.iter().filter(move |m| m.mode == mode))
    };
    let count =
        |mode, f: fn(&ModeResult) -> u64| Spread::of(of(mode).map(|m| f(m) as f64)).show(0, "");
    let times = |mode, f: fn(&Round) -> Duration| {
        Spread::ms(of(mode).map(|m| median(m.rounds.iter().map(f)))).show(1, "ms")
    };
    let rows: Vec<Vec<String>> = modes
        .iter()
        .map(|&mode| {
            vec![
                mode.name().to_string(),
                count(mode, |m| m.load.counts.ok),
                count(mode, |m| m.load.counts.reset + m.load.counts.failed),
                count(mode, |m| m.load.counts.refused),
                count(mode, |m| m.load.counts.cut),
                times(mode, |r| r.to_serving),
                times(mode, |r| r.startup),
                times(mode, |r| r.to_serving.saturating_sub(r.startup)),
                Spread::ms(of(mode).map(|m| m.load.fresh_p99)).show(1, "ms"),
            ]
        })
        .collect();
    println!();
    print_table(&header, &rows);
    println!();
    println!(
        "Each cell: min / median / max over {} runs; a run's count is its total over {} rounds, \
         its time the median over them.",
        runs.len(),
        args.rounds
    );
    println!(
        "- failed requests: fresh-connection requests reset (ECONNRESET, EPIPE, EOF mid-reply), \
         timed out or answered wrongly. A SIGKILL (FORCE) resets the requests the killed \
         process had accepted and not yet answered."
    );
    println!(
        "- refused conns: connects refused (ECONNREFUSED); a worker pauses 10 ms after a failure, \
         so this is about (clients + sessions) per 10 ms of closed port."
    );
    println!(
        "- cut sessions: long-lived sessions whose connection the proxy closed under them \
         (they reconnect and go on)."
    );
    println!(
        "- RPC→serving: from sending the first RPC (Restart; for stop+start, Stop) to the \
         operation reporting the new process serving (HOT: its Draining phase; others: done)."
    );
    for mode in modes {
        let before = Spread::ms(of(mode).map(|m| median(m.rounds.iter().map(|x| x.before_spawn))));
        println!(
            "    {}: {} of it before the agent began spawning the new process",
            mode.name(),
            before.show(1, "ms")
        );
    }
    println!(
        "- start-up: the agent's log, \"spawning obproxy\" → the new process's readiness \
         signal: fork, exec and the stand-in's own start ({} of it its simulated delay).",
        humantime::format_duration(args.start_delay)
    );
    println!(
        "- agent overhead: RPC→serving minus start-up, i.e. what the agent adds to the \
         process's own start: gRPC, stopping the old process (FORCE, stop+start), the \
         readiness checks, the state file and reporting back."
    );
    println!("- p99 fresh req: connect + request + reply of fresh-connection requests.");
    println!(
        "CPU per run: load generator {}, agent + obproxy {}, this process (echo backend) {}, \
         over {} of wall time (2 cores give at most twice the wall time).",
        Spread::of(
            runs.iter()
                .map(|r| r.modes.iter().map(|m| m.load_cpu.as_secs_f64()).sum())
        )
        .show(1, "s"),
        Spread::of(runs.iter().map(|r| r.agent_cpu.as_secs_f64())).show(1, "s"),
        Spread::of(runs.iter().map(|r| r.bench_cpu.as_secs_f64())).show(1, "s"),
        Spread::of(runs.iter().map(|r| r.wall.as_secs_f64())).show(1, "s"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ms: u64, text: &str) -> LogLine {
        LogLine {
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
            text: text.into(),
        }
    }

    #[test]
    fn start_up_runs_from_the_last_spawn_before_the_readiness_of_that_pid() {
        let log = [
            line(
                0,
                "INFO odp_agent::agent::supervisor: spawning obproxy binary=/x",
            ),
            line(
                5,
                "INFO odp_agent::agent::supervisor: obproxy spawned pid=7",
            ),
            line(
                9,
                "INFO odp_agent::agent::supervisor: obproxy signalled readiness pid=7",
            ),
            line(
                20,
                "INFO odp_agent::agent::supervisor: spawning obproxy binary=/x",
            ),
            line(
                22,
                "INFO odp_agent::agent::supervisor: obproxy spawned pid=8",
            ),
            line(
                320,
                "INFO odp_agent::agent::supervisor: obproxy signalled readiness pid=8",
            ),
        ];
        let (spawning, ready) = startup_marks(&log, 8).unwrap();
        assert_eq!(
            ready.duration_since(spawning).unwrap(),
            Duration::from_millis(300)
        );
        assert!(startup_marks(&log, 9).is_none());
    }

    #[test]
    fn without_the_signal_line_the_ready_note_marks_readiness() {
        let log = [
            line(
                0,
                "INFO odp_agent::agent::supervisor: spawning obproxy binary=/x",
            ),
            line(
                4,
                "INFO odp_agent::agent::supervisor: obproxy spawned pid=8",
            ),
            line(
                6,
                "INFO odp_agent::agent::supervisor: pid 8 is ready op_id=op-1",
            ),
        ];
        let (spawning, ready) = startup_marks(&log, 8).unwrap();
        assert_eq!(
            ready.duration_since(spawning).unwrap(),
            Duration::from_millis(6)
        );
    }
}
