//! The agent answers and supervises whatever its callers do: a flood of
//! GetStatus never holds up an operator's Stop nor swells the agent, status
//! calls share one usage sample instead of each walking the kernel's socket
//! table, and `obproxy -V` runs once per binary file, not once per restart.
//! A HOT restart writes the state durably once before the new process serves
//! (and, as every test's debug agent enforces, walks no process outside the
//! agent's own tree on its way).
use crate::common;

use std::{
    os::unix::fs::PermissionsExt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use common::{Agent, Options, PATIENCE, STANDIN};
use futures::StreamExt;
use odp_agent::{agent::sampling::MAX_AGE, proto::agent as pb};

/// The agent's resident memory, from /proc.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_getstatus_flood_never_holds_up_an_operators_stop() {
    let agent = Agent::start().await;
    agent.start_proxy().await;
    let pid = agent.child.id();

    // One client, one connection, a thousand GetStatus calls in flight at
    // any moment for as long as the test lasts.
    let flooding = Arc::new(AtomicBool::new(true));
    let answered = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let flood = {
        let client = agent.client().await;
        let (flooding, answered, refused) = (flooding.clone(), answered.clone(), refused.clone());
        tokio::spawn(async move {
            let calls = futures::stream::iter(0..)
                .take_while(|_| futures::future::ready(flooding.load(Ordering::Relaxed)))
                .map(|_| {
                    let mut client = client.clone();
                    async move { client.get_status(pb::GetStatusRequest::default()).await }
                })
                .buffer_unordered(1000);
            calls
                .for_each(|r| {
                    match r {
                        Ok(_) => answered.fetch_add(1, Ordering::Relaxed),
                        Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                    };
                    futures::future::ready(())
                })
                .await;
        })
    };
    // The flood is on: thousands answered.
    let deadline = Instant::now() + PATIENCE;
    while answered.load(Ordering::Relaxed) < 5000 {
        assert!(Instant::now() < deadline, "the flood never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut operator = agent.client().await;
    let asked = Instant::now();
    let stop = operator
        .stop(pb::StopRequest {
            request_id: "operator-stop".into(),
            wait: true,
        })
        .await
        .unwrap()
        .into_inner();
    let took = asked.elapsed();
    let rss = rss_mib(pid);
    let during = answered.load(Ordering::Relaxed);
    flooding.store(false, Ordering::Relaxed);
    flood.await.unwrap();

    assert_eq!(
        stop.state(),
        pb::OperationState::Succeeded,
        "{}",
        stop.error
    );
    assert!(
        took < Duration::from_secs(2),
        "Stop took {took:?} under the flood ({during} statuses answered)"
    );
    assert!(
        rss < 100.0,
        "the agent grew to {rss:.1} MiB under the flood"
    );
    // Statuses over the callers' budget are refused at once (RESOURCE_EXHAUSTED): that is
    // the shedding that keeps the Stop above on time, so they are counted, not forbidden.
    eprintln!("statuses refused: {}", refused.load(Ordering::Relaxed));
    assert_eq!(agent.status().await.state(), pb::ProxyState::Stopped);
}

#[tokio::test]
async fn status_calls_share_one_usage_sample() {
    let agent = Agent::start().await;
    agent.start_proxy().await;
    let mut client = agent.client().await;
    // (asked, answered, the sample's age in the answer)
    let mut calls: Vec<(Instant, Instant, Duration)> = Vec::new();
    let started = Instant::now();
    while calls.len() < 300 || started.elapsed() < 2 * MAX_AGE {
        let asked = Instant::now();
        let status = client
            .get_status(pb::GetStatusRequest::default())
            .await
            .unwrap()
            .into_inner();
        let age = status.usage_age.expect("a sampled status says its age");
        let age = Duration::new(age.seconds as u64, age.nanos as u32);
        calls.push((asked, Instant::now(), age));
    }
    // A call got a newer sample than the call before only if that one's had
    // reached the maximum age by then (at most its age plus the time from
    // asking for it to this answer): no call took a sample for itself.
    let mut samples = 1;
    for pair in calls.windows(2) {
        let ((asked_before, _, old_age), (_, answered, new_age)) = (pair[0], pair[1]);
        if new_age < old_age {
            samples += 1;
            let aged = old_age + (answered - asked_before);
            assert!(
                aged >= MAX_AGE,
                "a new sample after at most {aged:?}, under {MAX_AGE:?}"
            );
        }
    }
    let calls_per_sample = calls.len() / samples;
    assert!(
        calls_per_sample >= 10,
        "{} calls, {samples} samples",
        calls.len()
    );
}

#[tokio::test]
async fn a_status_that_skips_the_sample_never_waits_for_one() {
    let agent = Agent::start().await;
    agent.start_proxy().await;
    let mut client = agent.client().await;
    let age = |s: &pb::ProxyStatus| {
        s.usage_age
            .map(|a| Duration::new(a.seconds as u64, a.nanos as u32))
    };
    let status = |skip_sample| {
        let mut client = client.clone();
        async move {
            client
                .get_status(pb::GetStatusRequest { skip_sample })
                .await
                .unwrap()
                .into_inner()
        }
    };
    // A sample to age: taken for a status that waits for one.
    let first = age(&status(false).await).expect("a sampled status says its age");
    assert!(first < MAX_AGE, "{first:?}");
    // Asked without a sample until the one there is has aged past the
    // maximum: every answer still has it (no call took a new one).
    let started = Instant::now();
    let mut calls = 0;
    loop {
        let s = status(true).await;
        assert_eq!(s.state(), pb::ProxyState::Running);
        let seen = age(&s).expect("the last sample, with its age");
        assert!(seen >= first, "a newer sample ({seen:?} < {first:?})");
        calls += 1;
        if seen > MAX_AGE {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "the sample never aged");
    }
    assert!(calls > 1);
    // A status that waits for a sample gets a new one.
    let fresh = age(&client
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner())
    .unwrap();
    assert!(fresh < MAX_AGE, "{fresh:?}");
}

/// `bin/obproxy` as a wrapper that notes every `-V` in `bin/obproxy.versions`.
fn counting_wrapper(agent: &Agent) -> std::path::PathBuf {
    let path = agent.home().join("bin/obproxy");
    std::fs::write(
        &path,
        format!(
            // The agent runs the file through an opened descriptor, so $0 is
            // not the path: the script names its own files.
            "#!/bin/sh\n[ \"$1\" = -V ] && echo v >> \"{p}.versions\"\n\
             [ -f \"{p}.env\" ] && . \"{p}.env\"\nexec {STANDIN} \"$@\"\n",
            p = path.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn versions_read(binary: &std::path::Path) -> usize {
    std::fs::read_to_string(format!("{}.versions", binary.display()))
        .unwrap_or_default()
        .lines()
        .count()
}

#[tokio::test]
async fn obproxy_v_runs_once_per_binary_file() {
    let agent = Agent::start().await;
    let binary = counting_wrapper(&agent);
    agent.start_proxy().await;
    for _ in 0..3 {
        let op = agent.restart(pb::RestartMode::Hot, true).await.unwrap();
        assert_eq!(op.state(), pb::OperationState::Succeeded, "{}", op.error);
    }
    let op = agent.restart(pb::RestartMode::Force, true).await.unwrap();
    assert_eq!(op.state(), pb::OperationState::Succeeded, "{}", op.error);
    assert_eq!(versions_read(&binary), 1, "-V ran again for the same file");
    assert_eq!(agent.status().await.version, "4.3.1.0");

    // The file changes (a new build installed in place): read again, once.
    let file = std::fs::File::options().write(true).open(&binary).unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    drop(file);
    for _ in 0..2 {
        let op = agent.restart(pb::RestartMode::Hot, true).await.unwrap();
        assert_eq!(op.state(), pb::OperationState::Succeeded, "{}", op.error);
    }
    assert_eq!(versions_read(&binary), 2);
}

/// Durable writes of the state so far, from the agent's metrics: of the
/// whole file, and into its journal.
async fn state_writes(agent: &Agent) -> (f64, f64) {
    let (code, body) = common::http_get(agent.metrics_addr(), "/metrics").await;
    assert_eq!(code, 200, "{body}");
    let sample =
        |name: &str| common::sample(&body, name).unwrap_or_else(|| panic!("no {name} in:\n{body}"));
    (
        sample("odp_state_writes_total"),
        sample("odp_state_journal_writes_total"),
    )
}

#[tokio::test]
async fn a_hot_restart_writes_the_state_durably_once_before_the_new_process_serves() {
    let agent = Agent::start_with(Options {
        metrics: true,
        ..Options::default()
    })
    .await;
    // Every process ignores SIGUSR1, so the old one is still draining when
    // the count is read: its exit (and the write that records it) comes
    // only with the SIGKILL at the end of its window.
    agent.set_standin_env(&[("ODP_STANDIN_IGNORE_SIGNALS", "1")]);
    agent.start_proxy().await;
    let old = agent.status().await.pid;
    for _ in 0..2 {
        let before = state_writes(&agent).await;
        // A window shorter than the process's own: the agent's SIGKILL ends
        // the old process at its end (1 s, not the configured 10 s).
        let op = agent
            .restart_with(pb::RestartRequest {
                mode: pb::RestartMode::Hot as i32,
                exit_timeout: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        let serving = agent
            .watch_op_until(&op.id, |o| o.phase() == pb::OperationPhase::Draining)
            .await;
        assert_eq!(
            serving.phase(),
            pb::OperationPhase::Draining,
            "{}",
            serving.error
        );
        // The admission only checks that the disk takes writes (its intent,
        // obproxy running, is on disk already); the promotion is the write,
        // into the journal. The whole file follows a second later (or with
        // the old process's exit, at the 1 s window's end).
        let (files, journal) = state_writes(&agent).await;
        assert_eq!(journal - before.1, 1.0, "{}", agent.logs());
        assert_eq!(files - before.0, 0.0, "{}", agent.logs());
        // What a restarted agent reads has the new process serving.
        let state = odp_agent::agent::state_file::load(&agent.state)
            .unwrap()
            .unwrap();
        let roles: Vec<(u32, _)> = state.processes.iter().map(|p| (p.pid, p.role)).collect();
        assert!(
            roles.contains(&(
                agent.status().await.pid,
                odp_agent::agent::state_file::Role::Serving
            )),
            "{roles:?}"
        );
        let done = agent.wait_op(&op.id).await;
        assert_eq!(
            done.state(),
            pb::OperationState::Succeeded,
            "{}",
            done.error
        );
    }
    assert_ne!(agent.status().await.pid, old);
}
