//! Callers that try to freeze the agent, each attack run as the test: a
//! GetStatus flood, a storm of long-lived streams, idle and silent
//! connections, more connections than the cap, and a process short of file
//! descriptors. Through all of it an operator on the local socket stops
//! obproxy within 2 s, the agent stays under 100 MiB, and supervision
//! (respawn, signals) goes on.
mod common;

use std::{
    os::unix::process::CommandExt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Agent, Options, PATIENCE, local};
use odp_agent::proto::agent::{self as pb, agent_client::AgentClient};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Notify,
};
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// The attacks measure how long an operator waits under them: one at a time,
/// so one test's attack is not another's.
static ONE_ATTACK_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The bound the issue sets on the agent's memory under attack.
const MAX_RSS_KIB: u64 = 100 * 1024;
/// How long an operator's Stop may take under attack.
const STOP_WITHIN: Duration = Duration::from_secs(2);

/// Loopback TCP as the daemons ship it: anyone local may read, nobody may
/// change anything; operators use the local socket.
fn read_only_loopback() -> Options {
    Options {
        server: "loopback_role = \"READ_ONLY\"".into(),
        ..Default::default()
    }
}

async fn tcp_channel(agent: &Agent) -> Channel {
    Channel::from_shared(format!("http://{}", agent.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// The operator's Stop (wait: true) over the local socket: how long it took.
async fn operator_stop(agent: &Agent) -> Duration {
    let mut op = local::operator(agent).await;
    let started = Instant::now();
    let stopped = op
        .stop(pb::StopRequest {
            request_id: String::new(),
            wait: true,
        })
        .await
        .unwrap()
        .into_inner();
    let took = started.elapsed();
    assert_eq!(
        stopped.state(),
        pb::OperationState::Succeeded,
        "{stopped:?}"
    );
    took
}

async fn operator_start(agent: &Agent) -> pb::Operation {
    let op = local::operator(agent)
        .await
        .start(pb::StartRequest {
            request_id: String::new(),
            wait: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(op.state(), pb::OperationState::Succeeded, "{op:?}");
    op
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_get_status_flood_does_not_keep_an_operator_from_stopping_obproxy() {
    let _one = ONE_ATTACK_AT_A_TIME.lock().await;
    let agent = Agent::start_with(read_only_loopback()).await;
    operator_start(&agent).await;
    let pid = agent.child.id();

    // 1024 callers in a loop on 16 connections, as fast as they can.
    let stop = CancellationToken::new();
    let answered = Arc::new(AtomicU64::new(0));
    let shed = Arc::new(AtomicU64::new(0));
    let cut = Arc::new(AtomicU64::new(0));
    let enough = Arc::new(Notify::new());
    const ENOUGH: u64 = 20_000;
    let mut flood = Vec::new();
    for _ in 0..16 {
        let channel = tcp_channel(&agent).await;
        for _ in 0..64 {
            let mut client = AgentClient::new(channel.clone());
            let (stop, answered, shed, cut, enough) = (
                stop.clone(),
                answered.clone(),
                shed.clone(),
                cut.clone(),
                enough.clone(),
            );
            let addr = agent.grpc;
            flood.push(tokio::spawn(async move {
                while !stop.is_cancelled() {
                    match client.get_status(pb::GetStatusRequest::default()).await {
                        Ok(_) => {}
                        Err(e) if e.code() == Code::ResourceExhausted => {
                            shed.fetch_add(1, Ordering::Relaxed);
                        }
                        // The server cut the connection (HTTP/2 GOAWAY after
                        // too many streams it had to end early): a flooder
                        // comes back on a new one.
                        Err(e) if e.code() == Code::Unknown || e.code() == Code::Unavailable => {
                            cut.fetch_add(1, Ordering::Relaxed);
                            if let Ok(fresh) = AgentClient::connect(format!("http://{addr}")).await
                            {
                                client = fresh;
                            }
                        }
                        Err(e) => panic!("{e:?}"),
                    }
                    if answered.fetch_add(1, Ordering::Relaxed) + 1 == ENOUGH {
                        enough.notify_one();
                    }
                }
            }));
        }
    }
    tokio::time::timeout(PATIENCE * 2, enough.notified())
        .await
        .expect("the flood never got to 20,000 calls");

    let took = operator_stop(&agent).await;
    let rss = local::rss_kib(pid);
    stop.cancel();
    for f in flood {
        f.await.unwrap();
    }
    let (answered, shed, cut) = (
        answered.load(Ordering::Relaxed),
        shed.load(Ordering::Relaxed),
        cut.load(Ordering::Relaxed),
    );
    eprintln!(
        "flood: {answered} calls ({shed} shed with RESOURCE_EXHAUSTED, {cut} on connections the agent closed); operator's Stop took {took:?}; agent RSS {rss} KiB"
    );
    assert!(
        took < STOP_WITHIN,
        "the Stop took {took:?} under the flood\n{}",
        agent.logs()
    );
    assert!(rss < MAX_RSS_KIB, "RSS {rss} KiB under the flood");
    assert!(
        shed > 0,
        "nothing was shed: the budget of reads in flight did not hold"
    );
    assert_eq!(agent.status().await.state(), pb::ProxyState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_storm_is_capped_and_an_operator_still_stops_obproxy() {
    let _one = ONE_ATTACK_AT_A_TIME.lock().await;
    let agent = Agent::start_with(read_only_loopback()).await;
    let started = operator_start(&agent).await;
    let pid = agent.child.id();

    // 16 connections, each opening 64 health Watch streams (they never end,
    // and need no credentials): 1024 streams asked for.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..16 {
        let channel = tcp_channel(&agent).await;
        let opening: Vec<_> = (0..64)
            .map(|_| {
                let mut client = HealthClient::new(channel.clone());
                tokio::spawn(async move { client.watch(HealthCheckRequest::default()).await })
            })
            .collect();
        for o in opening {
            match o.await.unwrap() {
                Ok(stream) => held.push(stream.into_inner()),
                Err(e) if e.code() == Code::ResourceExhausted => refused += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
    }
    let rss = local::rss_kib(pid);
    eprintln!(
        "storm: {} streams held, {refused} refused; agent RSS {rss} KiB",
        held.len()
    );
    assert!(
        held.len() <= 128,
        "{} streams open at once: the cap did not hold",
        held.len()
    );
    assert_eq!(held.len() + refused, 1024);
    assert!(rss < MAX_RSS_KIB, "RSS {rss} KiB under the storm");
    // WatchOperation shares the budget: refused before it reaches a handler.
    let e = AgentClient::new(tcp_channel(&agent).await)
        .watch_operation(pb::WatchOperationRequest { id: started.id })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");

    let took = operator_stop(&agent).await;
    eprintln!("operator's Stop took {took:?} with the storm open");
    assert!(took < STOP_WITHIN, "the Stop took {took:?} under the storm");

    // The slots come back once the streams are gone.
    drop(held);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answer = HealthClient::new(tcp_channel(&agent).await)
            .watch(HealthCheckRequest::default())
            .await;
        match answer {
            Ok(_) => break,
            Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::task::yield_now().await
            }
            Err(e) => panic!("the stream budget never came back: {e:?}"),
        }
    }
}

/// The HTTP/2 client preface and an empty SETTINGS frame.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Reads until the server closes the connection (EOF or reset).
async fn closed_by_server(mut conn: TcpStream) {
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(PATIENCE, read_all)
        .await
        .expect("the server kept the connection open");
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed() {
    let _one = ONE_ATTACK_AT_A_TIME.lock().await;
    let agent = Agent::start_with(Options {
        server: "idle_timeout = \"1s\"\nhandshake_timeout = \"1s\"".into(),
        ..Default::default()
    })
    .await;
    // Nothing sent at all (a slowloris): closed at the handshake timeout.
    let started = Instant::now();
    closed_by_server(TcpStream::connect(agent.grpc).await.unwrap()).await;
    let silent = started.elapsed();
    // Half a preface: the same.
    let mut half = TcpStream::connect(agent.grpc).await.unwrap();
    half.write_all(&PREFACE[..16]).await.unwrap();
    closed_by_server(half).await;
    // A proper HTTP/2 connection that never calls: closed when idle.
    let started = Instant::now();
    let mut idle = TcpStream::connect(agent.grpc).await.unwrap();
    idle.write_all(PREFACE).await.unwrap();
    closed_by_server(idle).await;
    let idled = started.elapsed();
    eprintln!("silent connection closed after {silent:?}, idle one after {idled:?}");
    assert!(silent >= Duration::from_millis(900), "{silent:?}");
    assert!(idled >= Duration::from_millis(900), "{idled:?}");
    // A client that calls is served as ever.
    assert_eq!(agent.status().await.state(), pb::ProxyState::Stopped);
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_at_once_and_logged() {
    let _one = ONE_ATTACK_AT_A_TIME.lock().await;
    let agent = Agent::start_with(Options {
        server: "max_connections = 4".into(),
        ..Default::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut conn = TcpStream::connect(agent.grpc).await.unwrap();
        conn.write_all(PREFACE).await.unwrap();
        // The server's SETTINGS: this one was admitted.
        let mut buf = [0u8; 9];
        conn.read_exact(&mut buf).await.unwrap();
        held.push(conn);
    }
    let started = Instant::now();
    closed_by_server(TcpStream::connect(agent.grpc).await.unwrap()).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not refused at once"
    );
    agent
        .log
        .wait_for(|l| l.contains("refusing a gRPC connection: the connection cap is reached"));
    // The local socket has its own cap: the operator still gets in.
    local::operator(&agent)
        .await
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap();
    // Slots come back when connections close.
    drop(held);
    let deadline = Instant::now() + PATIENCE;
    while AgentClient::connect(format!("http://{}", agent.grpc))
        .await
        .unwrap()
        .get_status(pb::GetStatusRequest::default())
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the cap never gave slots back");
        tokio::task::yield_now().await;
    }
}

/// RLIMIT_NOFILE for the agent: 96 descriptors kept for itself and its
/// local socket leave 64 for TCP callers.
const LOW_NOFILE: u64 = 160;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_of_descriptors_connections_are_refused_while_supervision_goes_on() {
    let _one = ONE_ATTACK_AT_A_TIME.lock().await;
    let agent = Agent::start_customized(Options::default(), |config| {
        let mut command = common::agent_command(config);
        // SAFETY: setrlimit only, between fork and exec.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: LOW_NOFILE,
                    rlim_max: LOW_NOFILE,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
    })
    .await;
    agent
        .log
        .wait_for(|l| l.contains("lowering the connection cap to fit RLIMIT_NOFILE"));
    let first = operator_start(&agent).await.pid;
    let pid = agent.child.id();

    // Twice the limit in connections: the cap admits some, refuses the rest
    // at once, and the agent keeps descriptors for its own work.
    let mut conns = Vec::new();
    let mut refused = 0;
    for _ in 0..(2 * LOW_NOFILE) {
        let Ok(mut conn) = TcpStream::connect(agent.grpc).await else {
            refused += 1;
            continue;
        };
        let _ = conn.write_all(PREFACE).await;
        let mut buf = [0u8; 9];
        match tokio::time::timeout(PATIENCE, conn.read_exact(&mut buf)).await {
            Ok(Ok(_)) => conns.push(conn),
            _ => refused += 1,
        }
    }
    agent
        .log
        .wait_for(|l| l.contains("refusing a gRPC connection"));
    let fds = local::open_fds(pid);
    eprintln!(
        "{} connections held, {refused} refused; the agent has {fds} of {LOW_NOFILE} descriptors open",
        conns.len()
    );
    assert!(refused > 0);
    assert!(fds < LOW_NOFILE as usize - 16, "{fds} descriptors open");

    // obproxy crashes now: the agent respawns it (descriptors for the state
    // file, pidfd, the version probe and the spawn are there), and its CPU
    // is not spent in an accept loop meanwhile.
    let cpu_before = local::cpu_seconds(pid);
    let wall = Instant::now();
    common::signal(first, libc::SIGKILL);
    // Asked over the local socket: the TCP connections are all taken.
    let mut op = local::operator(&agent).await;
    let deadline = Instant::now() + PATIENCE;
    let respawned = loop {
        let s = op
            .get_status(pb::GetStatusRequest::default())
            .await
            .unwrap()
            .into_inner();
        if s.state() == pb::ProxyState::Running && s.pid != first && s.pid != 0 {
            break s;
        }
        assert!(Instant::now() < deadline, "never respawned: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cpu = local::cpu_seconds(pid) - cpu_before;
    let wall = wall.elapsed().as_secs_f64();
    eprintln!(
        "respawned as pid {} in {wall:.1}s; agent CPU {cpu:.2}s",
        respawned.pid
    );
    assert!(
        cpu < 0.5 * wall,
        "the agent burned {cpu:.2}s of CPU in {wall:.1}s"
    );
    assert_eq!(respawned.restart_count, 1);
    // A hot restart (readiness signal, drain) works too.
    let hot = local::operator(&agent)
        .await
        .restart(pb::RestartRequest {
            mode: pb::RestartMode::Hot as i32,
            wait: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hot.state(), pb::OperationState::Succeeded, "{hot:?}");
    drop(conns);
    let mut agent = agent;
    assert!(agent.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_storm_cannot_grow_the_coordinator() {
    let _one = ONE_ATTACK_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"tasks.db\"\n",
    )
    .unwrap();
    let mut command = std::process::Command::new(common::cluster::COORDINATOR);
    command.arg("--config").arg(&config);
    let (mut child, addr, _) = common::spawn_logged(command, "coordinator");
    // 16 connections of 64 health watchers each, none with credentials.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..16 {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let opening: Vec<_> = (0..64)
            .map(|_| {
                let mut client = HealthClient::new(channel.clone());
                tokio::spawn(async move { client.watch(HealthCheckRequest::default()).await })
            })
            .collect();
        for o in opening {
            match o.await.unwrap() {
                Ok(stream) => held.push(stream.into_inner()),
                Err(e) if e.code() == Code::ResourceExhausted => refused += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
    }
    let rss = local::rss_kib(child.id());
    eprintln!(
        "coordinator storm: {} streams held, {refused} refused; RSS {rss} KiB",
        held.len()
    );
    assert!(held.len() <= 128, "{} streams open", held.len());
    assert!(rss < MAX_RSS_KIB, "RSS {rss} KiB under the storm");
    // Its operators still get in, over the local socket.
    let channel = local::unix_channel(&dir.path().join("grpc.sock"))
        .await
        .unwrap();
    odp_agent::proto::coordinator::coordinator_client::CoordinatorClient::new(channel)
        .list_tasks(odp_agent::proto::coordinator::ListTasksRequest::default())
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
}
