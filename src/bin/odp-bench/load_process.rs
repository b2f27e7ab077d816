//! The client load in a process of its own (`odp-bench load`), so that what it costs is
//! counted apart from what it measures: the benchmark drives it over its stdin and stdout,
//! one command and one JSON answer per line, and reads its CPU time from `/proc`.
use std::{net::SocketAddr, process::Stdio, time::Duration};

use anyhow::{Context, bail};
use odp_agent::testkit::loadgen::{Load, LoadConfig, Progress, Report};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, ChildStdout, Command},
};
use tokio_util::sync::CancellationToken;

/// `odp-bench load`: the load generator's own command line.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[arg(long)]
    pub target: SocketAddr,
    /// Workers opening a fresh connection per request.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Long-lived sessions.
    #[arg(long, default_value_t = 0)]
    pub sessions: usize,
    /// Requests a session makes before it reconnects (0: never).
    #[arg(long, default_value_t = 20)]
    pub session_requests: u64,
    /// Think time between two requests of one worker.
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    pub pause: Duration,
    /// Bound on one request, connect included.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
}

/// The counters so far.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    pub ok: u64,
    pub refused: u64,
    pub reset: u64,
    pub failed: u64,
    pub cut: u64,
}

impl Counts {
    /// Anything but success, cut sessions included.
    pub fn lost(&self) -> u64 {
        self.refused + self.reset + self.failed + self.cut
    }
}

impl From<Progress> for Counts {
    fn from(p: Progress) -> Self {
        Self {
            ok: p.ok,
            refused: p.refused,
            reset: p.reset,
            failed: p.failed,
            cut: p.cut_sessions,
        }
    }
}

/// What the load saw from start to stop.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub counts: Counts,
    pub elapsed: Duration,
    pub fresh_count: u64,
    pub fresh_p50: Duration,
    pub fresh_p99: Duration,
    pub fresh_max: Duration,
    /// The first failures, for a look at what went wrong.
    pub samples: Vec<String>,
}

impl From<&Report> for Summary {
    fn from(r: &Report) -> Self {
        Self {
            counts: Counts {
                ok: r.ok,
                refused: r.refused,
                reset: r.reset,
                failed: r.failed,
                cut: r.cut_sessions,
            },
            elapsed: r.elapsed,
            fresh_count: r.fresh.count,
            fresh_p50: r.fresh.p50,
            fresh_p99: r.fresh.p99,
            fresh_max: r.fresh.max,
            samples: r
                .samples
                .iter()
                .take(5)
                .map(|s| format!("{:.3}s {:?}: {}", s.at.as_secs_f64(), s.outcome, s.detail))
                .collect(),
        }
    }
}

/// Runs the load (the child's side) until told to stop or its stdin closes.
pub async fn serve(args: Args) -> anyhow::Result<()> {
    let config = LoadConfig {
        clients: args.clients,
        sessions: args.sessions,
        session_requests: (args.session_requests > 0).then_some(args.session_requests),
        pause: args.pause,
        request_timeout: args.request_timeout,
        // Bounded whatever the parent does.
        duration: Some(Duration::from_secs(1800)),
        ..LoadConfig::new(args.target)
    };
    let load = Load::start(config, CancellationToken::new())?;
    let mut out = tokio::io::stdout();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["progress"] => serde_json::to_string(&Counts::from(load.progress()))?,
            ["wait-ok", n, ms] => {
                let wait = Duration::from_millis(ms.parse()?);
                let _ = tokio::time::timeout(wait, load.wait_for_ok(n.parse()?)).await;
                serde_json::to_string(&Counts::from(load.progress()))?
            }
            ["stop"] => break,
            _ => bail!("unknown command {line:?}"),
        };
        out.write_all(format!("{answer}\n").as_bytes()).await?;
        out.flush().await?;
    }
    let report = load.stop().await;
    let summary = serde_json::to_string(&Summary::from(&report))?;
    out.write_all(format!("{summary}\n").as_bytes()).await?;
    out.flush().await?;
    Ok(())
}

/// The parent's side: a running `odp-bench load`.
pub struct LoadProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl LoadProcess {
    pub fn start(args: &Args) -> anyhow::Result<Self> {
        let me = std::env::current_exe().context("where is odp-bench")?;
        let mut child = Command::new(me)
            .arg("load")
            .arg("--target")
            .arg(args.target.to_string())
            .arg("--clients")
            .arg(args.clients.to_string())
            .arg("--sessions")
            .arg(args.sessions.to_string())
            .arg("--session-requests")
            .arg(args.session_requests.to_string())
            .arg("--pause")
            .arg(humantime::format_duration(args.pause).to_string())
            .arg("--request-timeout")
            .arg(humantime::format_duration(args.request_timeout).to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start the load generator")?;
        let stdin = child.stdin.take().context("load stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("load stdout")?).lines();
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    async fn ask(&mut self, command: &str) -> anyhow::Result<String> {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        self.stdout
            .next_line()
            .await?
            .context("the load generator ended")
    }

    pub async fn progress(&mut self) -> anyhow::Result<Counts> {
        Ok(serde_json::from_str(&self.ask("progress").await?)?)
    }

    /// Waits until `n` requests in all succeeded, or `timeout`; the counters then.
    pub async fn wait_ok(&mut self, n: u64, timeout: Duration) -> anyhow::Result<Counts> {
        let answer = self
            .ask(&format!("wait-ok {n} {}", timeout.as_millis()))
            .await?;
        Ok(serde_json::from_str(&answer)?)
    }

    /// Stops the load; what it saw, and the CPU time it used.
    pub async fn stop(mut self) -> anyhow::Result<(Summary, Duration)> {
        // Read before it exits and is reaped.
        let answer = self.ask("stop").await?;
        let cpu = super::proc_stat::cpu(self.pid());
        let _ = self.child.wait().await;
        Ok((serde_json::from_str(&answer)?, cpu))
    }
}
