//! The console over plain HTTP, as any client could speak it: who may see
//! and do what (sessions from `[[auth.tokens]]`, CSRF tokens on every form,
//! READ_ONLY refused), every action in the audit log with its caller, the
//! live feed of a task, HTTPS with the daemon's certificate, and `[web]`
//! configuration errors that exit 78 naming the key.
use crate::common;

use std::{process::Command, sync::Arc};

use common::{
    Agent,
    cluster::{CLUSTER, COORDINATOR, Cluster},
    console::{Console, OPERATOR_TOKEN, VIEWER_TOKEN, web_toml},
    pki::Pki,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn console(n: usize) -> Console {
    let mut agents = Vec::new();
    for _ in 0..n {
        let a = Agent::start().await;
        a.start_proxy().await;
        agents.push(a);
    }
    Console::start(agents)
}

#[tokio::test]
async fn pages_need_a_session_opened_by_a_configured_token() {
    let console = console(1).await;
    let page = console.send("GET", "/clusters", None, None).await;
    assert_eq!(page.status, 303);
    assert_eq!(page.header("location"), Some("/signin"));
    // The assets are in the binary.
    let js = console.send("GET", "/assets/console.js", None, None).await;
    assert_eq!(js.status, 200);
    assert!(js.body.contains("EventSource"));

    let wrong = console
        .send("POST", "/signin", None, Some("token=not-a-token"))
        .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());

    let good = console
        .send(
            "POST",
            "/signin",
            None,
            Some(&format!("token={OPERATOR_TOKEN}")),
        )
        .await;
    assert_eq!(good.status, 303, "{}", good.body);
    let cookie = good.header("set-cookie").unwrap();
    for part in [
        "odp_session=",
        "HttpOnly",
        "SameSite=Strict",
        "Max-Age=28800",
    ] {
        assert!(cookie.contains(part), "{cookie}");
    }
    // Plain HTTP on loopback: not marked Secure (the browser would drop it).
    assert!(!cookie.contains("Secure"), "{cookie}");
    let cookie = cookie.split(';').next().unwrap();
    let page = console.send("GET", "/clusters", Some(cookie), None).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains(&format!("data-cluster=\"{CLUSTER}\"")));
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("cache-control"), Some("no-store"));

    // A made-up session id is no session.
    let forged = format!("odp_session={}", "ab".repeat(32));
    let page = console.send("GET", "/clusters", Some(&forged), None).await;
    assert_eq!(page.status, 303);

    // Signing out needs the form's token, and ends the session.
    let csrf = console.csrf(cookie).await;
    let out = console
        .send("POST", "/signout", Some(cookie), Some("csrf=wrong"))
        .await;
    assert_eq!(out.status, 403);
    let out = console
        .send(
            "POST",
            "/signout",
            Some(cookie),
            Some(&format!("csrf={csrf}")),
        )
        .await;
    assert_eq!(out.status, 303);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    let page = console.send("GET", "/clusters", Some(cookie), None).await;
    assert_eq!(page.status, 303, "the session ended");
}

#[tokio::test]
async fn sign_ins_are_audited_and_an_address_that_keeps_guessing_is_held_off() {
    use odp_agent::coordinator::web::sign_in_limit::{MAX_FAILURES, WINDOW};
    let console = console(1).await;
    let guesser = std::net::Ipv4Addr::new(127, 0, 0, 2);
    let sign_in_from = |source, token: String| {
        let console = &console;
        async move {
            console
                .send_from(
                    Some(source),
                    "POST",
                    "/signin",
                    None,
                    Some(&format!("token={token}")),
                )
                .await
        }
    };
    for i in 0..MAX_FAILURES {
        let wrong = sign_in_from(guesser, format!("guess-{i}")).await;
        assert_eq!(wrong.status, 401, "guess {i}: {}", wrong.body);
    }
    // Past the limit even the right token is refused, unread, and says for how long.
    let held = sign_in_from(guesser, OPERATOR_TOKEN.to_string()).await;
    assert_eq!(held.status, 429, "{}", held.body);
    assert!(held.header("set-cookie").is_none());
    let retry: u64 = held.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=WINDOW.as_secs()).contains(&retry),
        "Retry-After {retry}"
    );
    assert!(held.body.contains("Too many wrong tokens"), "{}", held.body);
    // Another address is not held back by it.
    console.sign_in(OPERATOR_TOKEN).await;

    let lines: Vec<_> = console
        .audit()
        .into_iter()
        .filter(|l| l["rpc"] == "ConsoleSignIn")
        .collect();
    let from_guesser: Vec<_> = lines
        .iter()
        .filter(|l| l["target"] == "127.0.0.2")
        .collect();
    assert_eq!(from_guesser.len(), MAX_FAILURES as usize + 1, "{lines:#?}");
    for line in &from_guesser {
        assert_eq!(line["caller"], "unknown", "{line}");
        let outcome = line["outcome"].as_str().unwrap();
        assert!(outcome.starts_with("denied: "), "{line}");
    }
    assert!(
        from_guesser.last().unwrap()["outcome"]
            .as_str()
            .unwrap()
            .contains("too many wrong tokens"),
        "{from_guesser:#?}"
    );
    let ok: Vec<_> = lines.iter().filter(|l| l["outcome"] == "ok").collect();
    assert_eq!(ok.len(), 1, "{lines:#?}");
    assert_eq!(ok[0]["caller"], "token:oncall");
    assert_eq!(ok[0]["target"], "127.0.0.1");
    // No line holds a token that was tried.
    let audit = std::fs::read_to_string(console.cluster.dir.path().join("audit.log")).unwrap();
    assert!(!audit.contains("guess-") && !audit.contains(OPERATOR_TOKEN));
}

#[tokio::test]
async fn every_action_is_csrf_checked_and_audited_with_its_caller() {
    let console = console(2).await;
    let operator = console.sign_in(OPERATOR_TOKEN).await;
    let csrf = console.csrf(&operator).await;
    let path = format!("/clusters/{CLUSTER}/restart-all");
    let audited = |rpc: &str, caller: &str| {
        console
            .audit()
            .into_iter()
            .filter(|l| l["rpc"] == rpc && l["caller"] == caller)
            .collect::<Vec<_>>()
    };

    // No token, a wrong one: refused before the service is called, and
    // written down with who tried.
    for form in ["mode=force", "mode=force&csrf=0000"] {
        let r = console
            .send("POST", &path, Some(&operator), Some(form))
            .await;
        assert_eq!(r.status, 403, "{}", r.body);
        assert!(r.body.contains("csrf"), "{}", r.body);
    }
    let lines = audited("RestartAll", "token:oncall");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|l| {
        let outcome = l["outcome"].as_str().unwrap();
        outcome.contains("PermissionDenied") && outcome.contains("csrf")
    }));
    assert!(lines.iter().all(|l| l["via"] == "console"));

    // Without a session: the guard refuses the credential-less call and
    // audits it, as it does a gRPC caller without one.
    let r = console.send("POST", &path, None, Some("mode=force")).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let unknown = audited("RestartAll", "unknown");
    assert_eq!(unknown.len(), 1);
    assert!(
        unknown[0]["outcome"]
            .as_str()
            .unwrap()
            .starts_with("denied: ")
    );

    // A field that is not a number is named, and audited.
    let r = console
        .send(
            "POST",
            &path,
            Some(&operator),
            Some(&format!("csrf={csrf}&mode=force&batch_size=two")),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("batch_size: "), "{}", r.body);
    assert_eq!(audited("RestartAll", "token:oncall").len(), 3);

    // The real thing: a task, written down with the caller and what was asked.
    let form = format!(
        "csrf={csrf}&request_id=console-test-1&mode=force&batch_size=1&pause=0s&max_failures=0"
    );
    let r = console
        .send("POST", &path, Some(&operator), Some(&form))
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let location = r.header("location").unwrap().to_string();
    let id = location.strip_prefix("/tasks/").unwrap().to_string();
    let ok = audited("RestartAll", "token:oncall")
        .into_iter()
        .find(|l| l["outcome"] == "ok")
        .expect("the admitted call's line");
    assert_eq!(ok["id"], id.as_str());
    assert_eq!(ok["role"], "OBPROXY_MANAGER");
    assert_eq!(ok["mode"], "RESTART_MODE_FORCE");
    assert_eq!(ok["batch_size"], 1);
    assert_eq!(ok["request_id"], "console-test-1");

    // The live feed: each change, then the end.
    let (names, last) = console.events(&operator, &id).await;
    assert_eq!(names.last().map(String::as_str), Some("end"), "{names:?}");
    assert!(
        names.iter().filter(|n| *n == "task").count() >= 2,
        "{names:?}"
    );
    assert!(last.contains("data-state=\"Completed\""), "{last}");
    assert!(!last.contains("retry-task"), "nothing to retry: {last}");

    // The same form sent twice (a reload) is the same task, not a second one.
    let again = console
        .send("POST", &path, Some(&operator), Some(&form))
        .await;
    assert_eq!(again.header("location"), Some(location.as_str()));
    let replay = audited("RestartAll", "token:oncall");
    assert_eq!(replay.last().unwrap()["replay"], true);

    // The task engine's own answer reaches the page: nothing to retry.
    let retry = console
        .send(
            "POST",
            &format!("/tasks/{id}/retry"),
            Some(&operator),
            Some(&format!("csrf={csrf}")),
        )
        .await;
    assert_eq!(retry.status, 409, "{}", retry.body);
    assert_eq!(audited("RetryTask", "token:oncall").len(), 1);

    // READ_ONLY: pages yes, actions no, even with its own valid CSRF token.
    let viewer = console.sign_in(VIEWER_TOKEN).await;
    let viewer_csrf = console.csrf(&viewer).await;
    let task_page = console.send("GET", &location, Some(&viewer), None).await;
    assert_eq!(task_page.status, 200);
    assert!(task_page.body.contains(&id));
    let overview = console
        .send("GET", &format!("/clusters/{CLUSTER}"), Some(&viewer), None)
        .await;
    assert_eq!(overview.status, 200);
    assert!(overview.body.contains("id=\"odps\""));
    for action in ["data-dialog", "<dialog", "restart-all\"", "cancel-task"] {
        assert!(
            !overview.body.contains(action),
            "{action} shown to READ_ONLY"
        );
    }
    for (path, form) in [
        (path.clone(), format!("csrf={viewer_csrf}&mode=force")),
        (format!("/tasks/{id}/retry"), format!("csrf={viewer_csrf}")),
        (format!("/tasks/{id}/cancel"), format!("csrf={viewer_csrf}")),
    ] {
        let r = console
            .send("POST", &path, Some(&viewer), Some(&form))
            .await;
        assert_eq!(r.status, 403, "{path}: {}", r.body);
        assert!(r.body.contains("needs role OBPROXY_MANAGER"), "{}", r.body);
    }
    let denied = console
        .audit()
        .into_iter()
        .filter(|l| l["caller"] == "token:dashboard" && l["rpc"] != "ConsoleSignIn")
        .collect::<Vec<_>>();
    assert_eq!(denied.len(), 3, "{denied:?}");
    assert!(denied.iter().all(
        |l| l["outcome"].as_str().unwrap().starts_with("denied: ") && l["role"] == "READ_ONLY"
    ));
    // An operator's token from another session is no token here.
    let r = console
        .send(
            "POST",
            &path,
            Some(&viewer),
            Some(&format!("csrf={csrf}&mode=force")),
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("csrf"), "{}", r.body);
}

#[tokio::test]
async fn cancel_and_retry_from_the_task_page_reach_the_task_engine() {
    let console = console(2).await;
    let operator = console.sign_in(OPERATOR_TOKEN).await;
    let csrf = console.csrf(&operator).await;
    // One ODP at a time with a long pause: the cancel lands in the pause.
    let r = console
        .send(
            "POST",
            &format!("/clusters/{CLUSTER}/restart-all"),
            Some(&operator),
            Some(&format!("csrf={csrf}&mode=force&batch_size=1&pause=10m")),
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let location = r.header("location").unwrap().to_string();
    let id = location.strip_prefix("/tasks/").unwrap().to_string();
    // While it runs, its page offers Cancel and not Retry.
    let page = console.send("GET", &location, Some(&operator), None).await;
    assert!(page.body.contains("id=\"cancel-task\""), "{}", page.body);
    assert!(
        page.body.contains("data-events="),
        "a running task's page is live"
    );
    let cancel = console
        .send(
            "POST",
            &format!("/tasks/{id}/cancel"),
            Some(&operator),
            Some(&format!("csrf={csrf}")),
        )
        .await;
    assert_eq!(cancel.status, 303, "{}", cancel.body);
    let (_, last) = console.events(&operator, &id).await;
    assert!(last.contains("data-state=\"Cancelled\""), "{last}");
    assert!(
        last.contains("id=\"retry-task\""),
        "a cancelled task offers Retry: {last}"
    );
    assert!(!last.contains("id=\"cancel-task\""), "{last}");

    let retry = console
        .send(
            "POST",
            &format!("/tasks/{id}/retry"),
            Some(&operator),
            Some(&format!("csrf={csrf}")),
        )
        .await;
    assert_eq!(retry.status, 303, "{}", retry.body);
    assert_eq!(retry.header("location"), Some(location.as_str()));
    let (_, last) = console.events(&operator, &id).await;
    assert!(last.contains("data-state=\"Completed\""), "{last}");
    assert_eq!(
        last.matches("data-state=\"Succeeded\"").count(),
        2,
        "{last}"
    );

    let audit = console.audit();
    for rpc in ["CancelTask", "RetryTask"] {
        assert!(
            audit.iter().any(|l| l["rpc"] == rpc
                && l["caller"] == "token:oncall"
                && l["outcome"] == "ok"
                && l["target"] == id.as_str()),
            "no {rpc} line: {audit:?}"
        );
    }
    // The task list, all of them and one cluster's.
    for path in ["/tasks", &format!("/tasks?cluster={CLUSTER}")] {
        let list = console.send("GET", path, Some(&operator), None).await;
        assert_eq!(list.status, 200);
        assert!(
            list.body.contains(&format!("data-task=\"{id}\"")),
            "{path}: {}",
            list.body
        );
        assert!(list.body.contains("Restart All (Force Restart)"));
    }
}

#[tokio::test]
async fn with_tls_the_console_serves_https_with_the_daemons_certificate() {
    let pki = Pki::new();
    let agent = Agent::start().await;
    let more = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n{}",
        pki.path("server.pem"),
        pki.path("server.key"),
        web_toml()
    );
    let cluster = Cluster::with_config(vec![agent], &[], &more);
    let addr: std::net::SocketAddr = {
        let log = cluster.log.lock().unwrap();
        log.iter()
            .find_map(|l| common::log_field(l, "console_addr"))
            .expect("console_addr")
            .parse()
            .unwrap()
    };
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(pki.path("ca.pem")).unwrap();
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    for cert in CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let exchange = |request: String| {
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = connector.connect(name, tcp).await.expect("a TLS handshake");
            tls.write_all(request.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            let _ = tls.read_to_end(&mut answer).await;
            String::from_utf8(answer).unwrap()
        }
    };
    let body = format!("token={OPERATOR_TOKEN}");
    let answer = exchange(format!(
        "POST /signin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ))
    .await;
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    let cookie = answer
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");

    // Plain HTTP gets no page from it.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /signin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(common::PATIENCE, plain.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"));
}

/// Runs the coordinator on `text` (written as coordinator.toml): its exit
/// code and what it said.
fn run_with(text: &str) -> (Option<i32>, String, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coordinator.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(COORDINATOR)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path,
        dir,
    )
}

#[test]
fn web_configuration_errors_exit_78_naming_the_file_and_key() {
    let base = "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"tasks.db\"\n\
                [[clusters]]\nname = \"c\"\nagents = [\"127.0.0.1:1\"]\n";
    let tokens = web_toml().replace("[web]\nlisten = \"127.0.0.1:0\"\n", "");
    for (web, key, reason) in [
        (
            format!("[web]\nlisten = \"0.0.0.0:8080\"\n{tokens}"),
            "web.listen",
            "is not a loopback address and [tls] is not configured",
        ),
        (
            "[web]\nlisten = \"127.0.0.1:8080\"\n".to_string(),
            "web.listen",
            "configure [[auth.tokens]]",
        ),
        (
            format!("[web]\nlisten = \"127.0.0.1:8080\"\nsession_ttl = \"0s\"\n{tokens}"),
            "web.session_ttl",
            "must be longer than zero",
        ),
        (
            format!("[web]\nlisten = \"127.0.0.1:8080\"\nsession_ttl = \"30d\"\n{tokens}"),
            "web.session_ttl",
            "at most 7days",
        ),
        (
            format!("[web]\nlisten = \"nowhere\"\n{tokens}"),
            "web.listen",
            "",
        ),
    ] {
        let (code, stderr, path, _dir) = run_with(&format!("{base}{web}"));
        assert_eq!(code, Some(78), "{stderr}");
        let named = format!("{}: {key}", path.display());
        assert!(
            stderr.contains(&named) && stderr.contains(reason),
            "want {named:?} ... {reason:?}:\n{stderr}"
        );
    }
}
