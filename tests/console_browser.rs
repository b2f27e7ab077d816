//! The console in a real browser (headless chromium over WebDriver): an
//! operator signs in, opens a cluster's Overview and runs Restart All
//! (Restart, one ODP at a time) against three agents under client load,
//! watching the task page go live to Completed; a READ_ONLY user sees no
//! action and its forged POSTs are refused; an ODP older than 3.2.1 leaves
//! only Force Restart. The first test also takes the README's screenshots.
mod common;

use common::{
    Agent, Load,
    browser::Browser,
    cluster::CLUSTER,
    console::{Console, OPERATOR_TOKEN, VIEWER_TOKEN},
};
use fantoccini::Locator;
use odp_agent::proto::agent as apb;
use serde_json::json;

async fn sign_in(browser: &Browser, console: &Console, token: &str) {
    let c = &browser.client;
    c.goto(&console.url("/signin")).await.unwrap();
    browser
        .wait_for("#token")
        .await
        .send_keys(token)
        .await
        .unwrap();
    c.find(Locator::Css("#signin"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_for("table#clusters").await;
}

async fn agents(n: usize) -> Vec<Agent> {
    let mut agents = Vec::new();
    for _ in 0..n {
        agents.push(Agent::start().await);
    }
    agents
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_restarts_all_from_the_overview_under_load_and_watches_it_complete() {
    let agents = agents(3).await;
    for a in &agents {
        a.start_proxy().await;
        // A real obproxy takes a moment to come up: the task page has
        // subtasks to show running.
        a.set_standin_env(&[("ODP_STANDIN_START_DELAY", "300ms")]);
    }
    let mut before = Vec::new();
    for a in &agents {
        before.push(a.status().await.pid);
    }
    let console = Console::start(agents);
    let browser = Browser::start().await;
    let c = &browser.client;

    sign_in(&browser, &console, OPERATOR_TOKEN).await;
    assert_eq!(browser.text("#caller").await, "token:oncall");
    let row = format!("#clusters tr[data-cluster='{CLUSTER}']");
    browser.wait_for(&format!("{row} td.running")).await;
    assert_eq!(browser.text(&format!("{row} td.running")).await, "3");
    assert_eq!(browser.text(&format!("{row} td.stopped")).await, "0");
    // The Actions column's More menu, open.
    c.find(Locator::Css(&format!("{row} details.more summary")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_for(&format!(
            "{row} details.more[open] a[href$='dialog=restart-all']"
        ))
        .await;
    browser.screenshot("clusters").await;

    // Client load through every ODP from here to the end of the restart.
    let mut loads = Vec::new();
    for a in &console.cluster.agents {
        loads.push(Load::start(a.sql_addr().await));
    }

    c.find(Locator::Css(&format!("{row} td:first-child a")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_for("table#odps").await;
    assert_eq!(
        browser
            .count("#odps tbody tr .badge[data-state='Running']")
            .await,
        3
    );
    assert_eq!(browser.count("#odps td.pid").await, 3);
    for pid in &before {
        assert!(
            c.source().await.unwrap().contains(&format!(">{pid}<")),
            "pid {pid} on the Overview"
        );
    }
    browser.screenshot("overview").await;

    browser
        .wait_for("#open-restart-all")
        .await
        .click()
        .await
        .unwrap();
    let hot = browser.wait_for("#restart-all #mode-hot").await;
    assert!(
        hot.is_enabled().await.unwrap(),
        "every ODP runs 4.3: Restart is offered"
    );
    assert!(hot.is_selected().await.unwrap());
    assert_eq!(browser.count("#restart-refused").await, 0);
    let batch = c
        .find(Locator::Css("#restart-all #batch_size"))
        .await
        .unwrap();
    batch.clear().await.unwrap();
    batch.send_keys("1").await.unwrap();
    let pause = c.find(Locator::Css("#restart-all #pause")).await.unwrap();
    pause.clear().await.unwrap();
    // Time between batches for the screenshot of a task under way.
    pause.send_keys("1s").await.unwrap();
    browser.screenshot("restart-dialog").await;
    c.find(Locator::Css("#confirm-restart-all"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // The task page, loaded while the task runs, follows it live.
    browser.wait_for("#task[data-live='open']").await;
    let url = c.current_url().await.unwrap();
    assert!(url.path().starts_with("/tasks/task-"), "{url}");
    browser
        .wait_for("#task #subtasks .badge[data-state='Succeeded']")
        .await;
    // One ODP done, the next batch after the pause: the task under way.
    assert_eq!(
        browser
            .count("#task-state .badge[data-state='Running']")
            .await,
        1
    );
    browser.screenshot("task-running").await;
    browser
        .wait_for("#task-state .badge[data-state='Completed']")
        .await;
    // The same page, never reloaded: the feed brought every change.
    assert_eq!(c.current_url().await.unwrap(), url);
    browser.wait_for("#task[data-live='ended']").await;
    assert_eq!(
        browser
            .count("#subtasks .badge[data-state='Succeeded']")
            .await,
        3
    );
    assert_eq!(browser.text("#failed-count").await, "0 failed");
    // A completed task offers neither Cancel nor Retry.
    assert_eq!(browser.count("#cancel-task, #retry-task").await, 0);

    let mut failed = 0;
    for load in loads {
        let r = load.finish().await;
        assert!(r.ok > 0, "the load ran");
        failed += r.failed + r.refused;
        assert_eq!(r.failed + r.refused, 0, "{r:?}");
    }
    assert_eq!(failed, 0);
    for (a, old) in console.cluster.agents.iter().zip(&before) {
        let s = a.status().await;
        assert_eq!(s.state(), apb::ProxyState::Running);
        assert_ne!(s.pid, *old, "every ODP was restarted");
    }

    // Written down with who asked, as the gRPC call is.
    let task_id = url.path().trim_start_matches("/tasks/").to_string();
    let audit = console.audit();
    let line = audit
        .iter()
        .find(|l| l["rpc"] == "RestartAll" && l["id"] == json!(task_id))
        .unwrap_or_else(|| panic!("no RestartAll line for {task_id}: {audit:?}"));
    assert_eq!(line["caller"], "token:oncall");
    assert_eq!(line["outcome"], "ok");
    assert_eq!(line["mode"], "RESTART_MODE_HOT");
    assert_eq!(line["batch_size"], 1);
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_user_sees_no_action_and_its_forged_posts_are_refused() {
    let agents = agents(2).await;
    for a in &agents {
        a.start_proxy().await;
    }
    let console = Console::start(agents);
    let browser = Browser::start().await;
    let c = &browser.client;
    sign_in(&browser, &console, VIEWER_TOKEN).await;
    assert_eq!(browser.text("#role").await, "READ_ONLY");
    // Everything is shown, and no action.
    assert_eq!(browser.count("#clusters details.more").await, 0);
    c.goto(&console.url(&format!("/clusters/{CLUSTER}")))
        .await
        .unwrap();
    browser.wait_for("table#odps").await;
    assert_eq!(browser.count("#odps tbody tr").await, 2);
    assert_eq!(browser.count("main button, main dialog").await, 0);
    // Even with ?dialog= in the address.
    c.goto(&console.url(&format!("/clusters/{CLUSTER}?dialog=restart-all")))
        .await
        .unwrap();
    browser.wait_for("table#odps").await;
    assert_eq!(browser.count("main button, main dialog").await, 0);

    // Forged POSTs from the page itself (same origin, with its cookie):
    // without the CSRF token, with a wrong one, and with the session's real
    // one (the sign-out form carries it): all refused, nothing started.
    let post = r#"
        const [path, csrf] = arguments;
        const body = new URLSearchParams({csrf, mode: "force", batch_size: "1"});
        return fetch(path, {method: "POST", body}).then(r => r.status);
    "#;
    let real = c
        .find(Locator::Css("header input[name='csrf']"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    let path = format!("/clusters/{CLUSTER}/restart-all");
    for csrf in ["", "0123456789abcdef", real.as_str()] {
        let status = c
            .execute(post, vec![json!(path), json!(csrf)])
            .await
            .unwrap();
        assert_eq!(status, json!(403), "csrf {csrf:?}");
    }
    for a in &console.cluster.agents {
        assert_eq!(a.status().await.restart_count, 0, "nothing was restarted");
    }
    let audit = console.audit();
    let refusals: Vec<_> = audit
        .iter()
        .filter(|l| l["rpc"] == "RestartAll" && l["caller"] == "token:dashboard")
        .collect();
    assert_eq!(refusals.len(), 3, "{audit:?}");
    assert!(
        refusals[..2]
            .iter()
            .all(|l| l["outcome"].as_str().unwrap().contains("csrf")),
        "{refusals:?}"
    );
    assert!(
        refusals[2]["outcome"]
            .as_str()
            .unwrap()
            .starts_with("denied: RestartAll needs role OBPROXY_MANAGER"),
        "{refusals:?}"
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_is_offered_only_as_force_restart_for_an_odp_older_than_321() {
    let agents = agents(3).await;
    // A 3.2.0 obproxy (the stand-in's 3.2 line) on the last host.
    agents[2].set_standin_env(&[("ODP_STANDIN_VERSION", "3.2.0")]);
    for a in &agents {
        a.start_proxy().await;
    }
    let old = agents[2].grpc.to_string();
    let console = Console::start(agents);
    let browser = Browser::start().await;
    let c = &browser.client;
    sign_in(&browser, &console, OPERATOR_TOKEN).await;
    c.goto(&console.url(&format!("/clusters/{CLUSTER}?dialog=restart-all")))
        .await
        .unwrap();
    // Opened at once from the More menu's link.
    let hot = browser.wait_for("dialog#restart-all[open] #mode-hot").await;
    assert!(!hot.is_enabled().await.unwrap(), "Restart is not offered");
    let force = c
        .find(Locator::Css("#restart-all #mode-force"))
        .await
        .unwrap();
    assert!(force.is_selected().await.unwrap(), "Force Restart is");
    let reason = browser.text("#restart-refused").await;
    assert!(reason.contains(&format!("{old} runs 3.2.0")), "{reason}");
    // Only the mode that drains takes an exit timeout.
    let exit = c
        .find(Locator::Css("#restart-all #exit_timeout"))
        .await
        .unwrap();
    assert!(!exit.is_enabled().await.unwrap());
    let batch = c
        .find(Locator::Css("#restart-all #batch_size"))
        .await
        .unwrap();
    batch.clear().await.unwrap();
    batch.send_keys("1").await.unwrap();
    c.find(Locator::Css("#confirm-restart-all"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_for("#task-state .badge[data-state='Completed']")
        .await;
    assert!(
        browser
            .text(".sub")
            .await
            .contains("Restart All (Force Restart)")
    );
    for a in &console.cluster.agents {
        assert_eq!(a.status().await.state(), apb::ProxyState::Running);
    }
    let audit = console.audit();
    assert!(
        audit.iter().any(|l| l["rpc"] == "RestartAll"
            && l["mode"] == "RESTART_MODE_FORCE"
            && l["outcome"] == "ok"),
        "{audit:?}"
    );
    browser.close().await;
}
