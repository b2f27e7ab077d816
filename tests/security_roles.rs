//! Who a caller is when its certificate is known by a SAN, when no rule names it, and when it
//! brings a token too: `san =` rules match DNS and URI SANs (and a SAN never stands in for a
//! subject CN), a valid certificate no rule names is refused, and a bearer token, when one is
//! sent, decides alone over any certificate. Real agents over mutual TLS, certificates from
//! rcgen (`tests/common/pki.rs`).
use crate::common;

use common::{Agent, Options, pki::Pki};
use odp_agent::proto::agent::{self as pb, agent_client::AgentClient};
use sha2::{Digest, Sha256};
use tonic::{Code, Request, transport::Channel};

fn sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The harness's TLS agent (operator and viewer by CN) with `san =` rules and two tokens.
async fn agent(pki: &Pki) -> Agent {
    Agent::start_with(Options {
        more: format!(
            r#"{}
[[auth.certificates]]
san = "ops.example.com"
role = "OBPROXY_MANAGER"

[[auth.certificates]]
san = "spiffe://odp/viewer"
role = "READ_ONLY"

[[auth.tokens]]
name = "oncall"
sha256 = "{}"
role = "OBPROXY_MANAGER"

[[auth.tokens]]
name = "dashboard"
sha256 = "{}"
role = "READ_ONLY"
"#,
            pki.agent_toml(),
            sha256("act-now"),
            sha256("just-look"),
        ),
        ..Default::default()
    })
    .await
}

async fn client_as(agent: &Agent, pki: &Pki, who: &str) -> AgentClient<Channel> {
    agent.tls_client(pki.client(Some(who))).await.unwrap()
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn start(request_id: &str) -> pb::StartRequest {
    pb::StartRequest {
        request_id: request_id.into(),
        wait: true,
    }
}

#[tokio::test]
async fn san_rules_match_dns_and_uri_sans_and_only_sans() {
    let pki = Pki::new();
    let agent = agent(&pki).await;

    // DNS SAN ops.example.com: OBPROXY_MANAGER.
    let op = client_as(&agent, &pki, "san-dns")
        .await
        .start(start("by-dns-san"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(op.state(), pb::OperationState::Succeeded, "{}", op.error);

    // URI SAN spiffe://odp/viewer: READ_ONLY.
    let mut uri = client_as(&agent, &pki, "san-uri").await;
    let status = uri
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap();
    assert_eq!(status.into_inner().state(), pb::ProxyState::Running);
    let denied = uri
        .stop(pb::StopRequest {
            request_id: "by-uri-san".into(),
            wait: true,
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(
        denied.message(),
        "Stop needs role OBPROXY_MANAGER; cert:spiffe://odp/viewer has READ_ONLY"
    );

    // The operator's CN as a DNS SAN is no subject CN; a certificate no rule names is
    // valid, and still has no role.
    for (who, cn) in [("san-as-cn", "impostor"), ("stranger", "stranger")] {
        let refused = client_as(&agent, &pki, who)
            .await
            .get_status(pb::GetStatusRequest::default())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{who}: {refused:?}");
        assert_eq!(
            refused.message(),
            format!("certificate {cn} is valid but has no role here"),
            "{who}"
        );
    }

    let audit = agent.audit();
    let by = |rid: &str| {
        audit
            .iter()
            .find(|l| l["request_id"] == rid)
            .unwrap_or_else(|| panic!("{rid}: {audit:#?}"))
            .clone()
    };
    // Audited by the name that earned the role.
    assert_eq!(by("by-dns-san")["caller"], "cert:ops.example.com");
    assert_eq!(by("by-dns-san")["outcome"], "ok");
    assert_eq!(by("by-uri-san")["role"], "READ_ONLY");
    assert_eq!(serving_pid(&agent, &pki).await, op.pid);
}

#[tokio::test]
async fn a_bearer_token_decides_alone_even_with_a_good_certificate() {
    let pki = Pki::new();
    let agent = agent(&pki).await;
    // Alone, the operator's certificate (CN odp-coordinator) is OBPROXY_MANAGER.
    let mut operator = client_as(&agent, &pki, "operator").await;

    // A wrong token is not rescued by the operator's certificate.
    let wrong = operator
        .start(with_token(start("cert-and-wrong-token"), "guess"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    assert_eq!(wrong.message(), "authorization: unknown bearer token");
    // A read-only token makes the operator read-only.
    let viewer = operator
        .start(with_token(start("cert-and-viewer-token"), "just-look"))
        .await
        .unwrap_err();
    assert_eq!(viewer.code(), Code::PermissionDenied, "{viewer:?}");
    assert_eq!(
        viewer.message(),
        "Start needs role OBPROXY_MANAGER; token:dashboard has READ_ONLY"
    );
    assert_eq!(serving_pid(&agent, &pki).await, 0, "nothing was started");

    // And a manager's token makes a viewer's certificate a manager.
    let op = client_as(&agent, &pki, "viewer")
        .await
        .start(with_token(start("viewer-cert-manager-token"), "act-now"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(op.state(), pb::OperationState::Succeeded, "{}", op.error);

    let audit = agent.audit();
    for (rid, caller, outcome) in [
        (
            "cert-and-wrong-token",
            "unknown",
            "denied: authorization: unknown bearer token",
        ),
        (
            "cert-and-viewer-token",
            "token:dashboard",
            "denied: Start needs role OBPROXY_MANAGER",
        ),
        ("viewer-cert-manager-token", "token:oncall", "ok"),
    ] {
        let line = audit
            .iter()
            .find(|l| l["request_id"] == rid)
            .unwrap_or_else(|| panic!("{rid}: {audit:#?}"));
        assert_eq!(line["caller"], caller, "{line}");
        assert!(
            line["outcome"].as_str().unwrap().starts_with(outcome),
            "{line}"
        );
    }
}

/// The serving pid, asked over TLS as the viewer.
async fn serving_pid(agent: &Agent, pki: &Pki) -> u32 {
    client_as(agent, pki, "viewer")
        .await
        .get_status(pb::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pid
}
