//! What the daemons' gRPC servers bound, and what they must not cost: a TLS handshake that
//! stalls is dropped after 10 s, request headers over 16 KiB are refused, and a call is
//! answered without waiting for the client's delayed ACK (TCP_NODELAY on accepted
//! connections).
use crate::common;

use std::time::{Duration, Instant};

use common::{Agent, Options, PATIENCE, pki::Pki};
use odp_agent::proto::agent as pb;
use tokio::{io::AsyncReadExt, net::TcpStream};

#[tokio::test]
async fn a_tls_handshake_that_stalls_is_dropped_after_ten_seconds() {
    let pki = Pki::new();
    let agent = Agent::start_with(Options {
        more: pki.agent_toml(),
        ..Default::default()
    })
    .await;
    // Connected, and then nothing: no ClientHello ever comes.
    let mut stalled = TcpStream::connect(agent.grpc).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(PATIENCE, stalled.read(&mut buf))
        .await
        .expect("the agent kept a stalled handshake open");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(9_500) && took < Duration::from_secs(12),
        "dropped after {took:?}, not at the 10 s handshake limit"
    );
    // Meanwhile, and after, the agent serves whoever completes theirs.
    let mut viewer = agent.tls_client(pki.client(Some("viewer"))).await.unwrap();
    viewer
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap();
}

/// GetStatus with one extra header of `bytes` bytes.
async fn status_with_header(agent: &Agent, bytes: usize) -> Result<pb::ProxyStatus, tonic::Status> {
    let mut request = tonic::Request::new(pb::GetStatusRequest::default());
    request
        .metadata_mut()
        .insert("x-padding", "a".repeat(bytes).parse().unwrap());
    agent
        .client()
        .await
        .get_status(request)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn request_headers_over_16_kib_are_refused() {
    let agent = Agent::start().await;
    status_with_header(&agent, 12 * 1024)
        .await
        .expect("12 KiB of headers are within the cap");
    let refused = status_with_header(&agent, 20 * 1024).await;
    assert!(refused.is_err(), "20 KiB of headers were let in");
    // The refusal costs the agent nothing.
    agent.status().await;
}

#[tokio::test]
async fn a_call_does_not_wait_for_a_delayed_ack() {
    let agent = Agent::start().await;
    agent.start_proxy().await;
    // An operation with its events: an answer the agent writes in more than one piece.
    let op = agent.restart(pb::RestartMode::Force, true).await.unwrap();
    let mut client = agent.client().await;
    let get = pb::GetOperationRequest { id: op.id };
    for _ in 0..5 {
        client.get_operation(get.clone()).await.unwrap();
    }
    let mut took: Vec<Duration> = Vec::new();
    for _ in 0..40 {
        let started = Instant::now();
        client.get_operation(get.clone()).await.unwrap();
        took.push(started.elapsed());
    }
    took.sort();
    // With Nagle's algorithm on the agent's side, the rest of each answer waits for the
    // client's delayed ACK, 40 ms on Linux: every call took 44 ms when it was off (about
    // 1 ms with it). A loaded machine slows some calls, not the fastest tenth.
    let p10 = took[took.len() / 10];
    assert!(
        p10 < Duration::from_millis(20),
        "the fastest tenth of GetOperation round trips took {p10:?} or more: {took:?}"
    );
}
