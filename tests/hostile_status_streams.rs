//! Agents that answer the coordinator's status streams with hostile HTTP/2 (a garbage
//! preface, a CONTINUATION flood, a 4 GiB gRPC message, an HPACK bomb, a PING flood),
//! beside one real agent: the coordinator still answers GetClusterStatus within
//! `status_timeout`, shows each hostile address unavailable with a reason and the real
//! agent running, and its memory does not grow with what they send.
use crate::common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    Agent, PATIENCE,
    cluster::{CLUSTER, Cluster},
    local::rss_kib,
};
use odp_agent::proto::{agent as apb, coordinator as pb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The harness's `[agents] status_timeout`.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// `:status 200`, `content-type: application/grpc`, as HPACK.
fn ok_headers() -> Vec<u8> {
    let mut block = vec![0x88, 0x0f, 0x10, 16];
    block.extend(b"application/grpc");
    frame(0x1, 0x4, 1, &block)
}

/// What each hostile address sends: a first burst, then a part repeated until the
/// coordinator hangs up.
fn attacks() -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    let settings = frame(0x4, 0, 0, &[]);
    let mut bomb = vec![0x40, 0x01, b'x', 0x7f, 0xa1, 0x1e]; // a 4,000-byte value, indexed
    bomb.extend(std::iter::repeat_n(b'v', 4000));
    bomb.extend(std::iter::repeat_n(0xbe, 12_000)); // 12,000 references to it
    let mut huge = [settings.clone(), ok_headers()].concat();
    huge.extend(frame(0x0, 0, 1, &[0, 0xff, 0xff, 0xff, 0xff]));
    vec![
        (
            "garbage",
            b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
            vec![],
        ),
        (
            "continuation flood",
            [settings.clone(), frame(0x1, 0, 1, &[0x88])].concat(),
            frame(0x9, 0, 1, &[0x88; 1024]),
        ),
        ("4 GiB message", huge, frame(0x0, 0, 1, &[7; 16_384])),
        (
            "hpack bomb",
            [settings.clone(), frame(0x1, 0x4, 1, &bomb)].concat(),
            vec![],
        ),
        ("ping flood", settings, frame(0x6, 0, 0, b"flooding")),
    ]
}

/// A loopback "agent" that sends `first` then `again` over and over on every connection
/// (until the coordinator closes it), counting connections.
async fn hostile_agent(first: Vec<u8>, again: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let (first, again) = (first.clone(), again.clone());
            tokio::spawn(async move {
                let (mut rx, mut tx) = socket.into_split();
                // Whatever the coordinator writes (preface, acks) is read and dropped.
                tokio::spawn(async move {
                    let mut sink = [0u8; 4096];
                    while matches!(rx.read(&mut sink).await, Ok(n) if n > 0) {}
                });
                if tx.write_all(&first).await.is_err() || again.is_empty() {
                    return;
                }
                while tx.write_all(&again).await.is_ok() {}
            });
        }
    });
    (addr, served)
}

async fn cluster_status(cluster: &Cluster) -> (pb::ClusterStatus, Duration) {
    let asked = Instant::now();
    let status = tokio::time::timeout(
        PATIENCE,
        cluster
            .client()
            .await
            .get_cluster_status(pb::GetClusterStatusRequest {
                cluster: CLUSTER.into(),
            }),
    )
    .await
    .expect("GetClusterStatus hung")
    .unwrap()
    .into_inner();
    (status, asked.elapsed())
}

#[tokio::test]
async fn hostile_agents_cost_their_own_entries_only() {
    let mut hostile = Vec::new();
    for (name, first, again) in attacks() {
        let (addr, served) = hostile_agent(first, again).await;
        hostile.push((name, addr, served));
    }
    let agent = Agent::start().await;
    agent.start_proxy().await;
    let extra: Vec<String> = hostile.iter().map(|(_, a, _)| a.clone()).collect();
    let cluster = Cluster::with_agents(vec![agent], &extra);
    let pid = cluster.coordinator.id();

    // The real agent's status arrives (through its stream or by asking).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, _) = cluster_status(&cluster).await;
        if status.odps[0].state() == apb::ProxyState::Running {
            break;
        }
        assert!(Instant::now() < deadline, "never running: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = rss_kib(pid);

    // Each hostile address has been connected to again after its first stream failed:
    // the attacks have run and been recovered from, more than once.
    let deadline = Instant::now() + PATIENCE;
    while hostile.iter().any(|(_, _, n)| n.load(Ordering::SeqCst) < 4) {
        let counts: Vec<_> = hostile
            .iter()
            .map(|(name, _, n)| (name, n.load(Ordering::SeqCst)))
            .collect();
        assert!(Instant::now() < deadline, "not reconnected: {counts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (status, took) = cluster_status(&cluster).await;
    assert!(
        took < STATUS_TIMEOUT + Duration::from_secs(1),
        "GetClusterStatus took {took:?}"
    );
    let real = &status.odps[0];
    assert_eq!(real.state(), apb::ProxyState::Running, "{real:?}");
    assert!(real.error.is_empty(), "{real:?}");
    for (name, addr, _) in &hostile {
        let odp = status.odps.iter().find(|o| &o.agent == addr).unwrap();
        assert_eq!(odp.state(), apb::ProxyState::Unavailable, "{name}: {odp:?}");
        assert!(!odp.error.is_empty(), "{name}: {odp:?}");
    }
    let after = rss_kib(pid);
    println!("coordinator RSS {before} KiB -> {after} KiB");
    assert!(
        after < before + 16 * 1024,
        "the coordinator grew from {before} KiB to {after} KiB"
    );
    let logs = cluster.logs();
    assert!(!logs.contains("panicked"), "{logs}");
}
