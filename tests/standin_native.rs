//! obproxy's own restart as the stand-in does it, on each line: `ALTER proxyconfig SET proxy_local_cmd = 2` makes it fork `argv[0]` with no arguments and only the inherited fds in the environment; the child, configured from `etc/`, serves the same socket and its readiness drains the old process, which exits. A child that dies first, or never confirms, makes the old one accept again.

use crate::common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;

use common::STANDIN;
use common::standin::{
    Builder, Standin, accept_queue, admin_opts, cmdline, echo_on, environ, free_port, listener,
    skip_greeting,
};
use mysql_async::prelude::*;
use mysql_async::{Conn, Row};

const PASSWORD: &str = "s3cret";
const STAGE1: &str = "fef341f85d87439e7d91a2d465b9871ef66b5e98";

fn addr(l: &TcpListener) -> SocketAddr {
    l.local_addr().unwrap()
}

/// An inherited stand-in polling `proxy_local_cmd` every 0.5 to 1 s (the item's minimum is 1 s).
fn start(
    dir: &Path,
    version: &str,
    sql: &TcpListener,
    rpc: Option<&TcpListener>,
    more: &str,
) -> Standin {
    if !version.starts_with("4.3") {
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/obproxy_config.bin"), "").unwrap();
    }
    let optstr = format!(
        "proxy_hot_upgrade_check_interval=1s,obproxy_sys_password={STAGE1},hot_upgrade_exit_timeout=3000000{more}"
    );
    let mut builder = Builder::new(dir)
        .env("ODP_STANDIN_VERSION", version)
        .inherit("OBPROXY_INHERITED_FD", sql)
        .args(&["-l", &free_port().to_string(), "-o", &optstr]);
    if let Some(rpc) = rpc {
        builder = builder.inherit("OBPROXY_INHERITED_RPC_FD", rpc);
    }
    let standin = builder.spawn();
    standin.wait_event("ready", 1);
    standin
}

async fn admin(addr: SocketAddr) -> Conn {
    Conn::new(admin_opts(addr, PASSWORD)).await.unwrap()
}

async fn value_of(conn: &mut Conn, name: &str) -> String {
    let row: Option<Row> = conn
        .query_first(format!("SHOW PROXYCONFIG LIKE '{name}'"))
        .await
        .unwrap();
    row.expect("one row").get(1).unwrap()
}

/// The `child=<pid>` of the old process's `native restart forked` line.
fn forked_child(old: &Standin) -> u32 {
    let forked = old.wait_event("native restart forked", 1);
    let field = forked
        .split_whitespace()
        .find_map(|f| f.strip_prefix("child="));
    field.expect("a child pid").parse().unwrap()
}

/// The first line of `event` from process `pid` (a native child logs to the same stderr).
fn event_of(standin: &Standin, event: &str, pid: u32) -> String {
    let prefix = format!("obproxy-standin: {event} pid={pid} ");
    standin.log.wait_for(|l| l.starts_with(&prefix))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_local_cmd_2_hands_the_socket_to_a_child_and_the_old_process_drains_and_exits() {
    for version in ["3.2.3", "4.2.3.0", "4.3.1.0"] {
        let dir = tempfile::tempdir().unwrap();
        let sql = listener(false);
        let rpc = version.starts_with("4.3").then(|| listener(false));
        let more = if rpc.is_some() {
            ""
        } else {
            ",enable_obproxy_rpc_service=false"
        };
        let mut old = start(dir.path(), version, &sql, rpc.as_ref(), more);
        let mut held = TcpStream::connect(addr(&sql)).unwrap();
        skip_greeting(&mut held).unwrap();
        echo_on(&mut held, b"before").unwrap();

        let mut conn = admin(addr(&sql)).await;
        conn.query_drop("ALTER proxyconfig SET proxy_local_cmd = 2")
            .await
            .unwrap();
        let child = forked_child(&old);
        let ready = event_of(&old, "ready", child);
        assert!(
            ready.contains(&format!("parent={} notified=true reason=sent", old.pid)),
            "{version}: the child tells the old process: {ready}"
        );
        let started = event_of(&old, "started", child);
        assert!(
            started.contains(&format!("sql={} ", addr(&sql))),
            "{version}: {started}"
        );
        assert!(
            !started.contains("prometheus=failed"),
            "the old one closed its exporter first: {started}"
        );
        if let Some(rpc) = &rpc {
            assert!(started.contains(&format!("rpc={}", addr(rpc))), "{started}");
        }
        let drain = old.wait_event("drain begun", 1);
        assert!(drain.contains("signal=SIGUSR1"), "{version}: {drain}");
        // The old process drains what it holds; new connections go to the child, which has
        // the config the old one ran with, from etc/ alone.
        echo_on(&mut held, b"during").unwrap();
        let mut new = admin(addr(&sql)).await;
        assert_eq!(
            value_of(&mut new, "hot_upgrade_exit_timeout").await,
            "3000000",
            "{version}"
        );
        assert_eq!(
            value_of(&mut new, "proxy_hot_upgrade_check_interval").await,
            "1s"
        );
        assert_eq!(
            value_of(&mut new, "proxy_local_cmd").await,
            "0",
            "memory-only, not carried"
        );

        let end = old.wait_end();
        assert_eq!(end.status, 1, "{version}");
        let expected: &[&str] = if version.starts_with('3') {
            &["SIGUSR1"]
        } else {
            &["SIGUSR1", "SIGUSR2"]
        };
        assert_eq!(
            end.received, expected,
            "{version}: SIGUSR2 after the drain from 4.1 on"
        );

        // argv[0] alone, and only the inherited fds (and the stand-in's own knobs).
        assert_eq!(cmdline(child), [STANDIN]);
        let mut names: Vec<String> = environ(child)
            .into_iter()
            .map(|kv| kv.split('=').next().unwrap().to_owned())
            .collect();
        names.sort();
        let mut want = vec!["ODP_STANDIN_VERSION", "OBPROXY_INHERITED_FD"];
        if !version.starts_with('3') {
            want.push("OBPROXY_INHERITED_IPV6_FD");
        }
        if rpc.is_some() {
            want.push("OBPROXY_INHERITED_RPC_FD");
        }
        want.sort();
        assert_eq!(names, want, "{version}");
        assert!(
            new.ping().await.is_ok(),
            "the child serves on after the old one left"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_dies_makes_the_old_process_accept_again() {
    let dir = tempfile::tempdir().unwrap();
    let sql = listener(false);
    let mut old = start(
        dir.path(),
        "4.3.1.0",
        &sql,
        None,
        ",enable_obproxy_rpc_service=false",
    );
    let mut conn = admin(addr(&sql)).await;
    // Kept in etc/, so the child starts slowly: time to see that nobody accepts meanwhile.
    conn.query_drop("ALTER proxyconfig SET standin_start_delay = '60s'")
        .await
        .unwrap();
    conn.query_drop("ALTER proxyconfig SET proxy_local_cmd = 2")
        .await
        .unwrap();
    let child = forked_child(&old);

    let mut waiting = TcpStream::connect(addr(&sql)).unwrap();
    assert_eq!(
        accept_queue(&sql),
        1,
        "the old process stopped accepting at once"
    );
    common::signal(child, libc::SIGKILL);
    let exited = old.wait_event("native child exited", 1);
    assert!(
        exited.contains(&format!("child={child} ")) && exited.contains("current=true"),
        "{exited}"
    );
    let rolled = old.wait_event("native restart rolled back", 1);
    assert!(rolled.contains("reason=child-exited"), "{rolled}");
    skip_greeting(&mut waiting).expect("accepted by the old process again");
    echo_on(&mut waiting, b"served").unwrap();
    assert!(conn.ping().await.is_ok());
    old.signal(libc::SIGTERM);
    assert_eq!(old.wait_end().status, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_never_confirms_is_killed_at_the_rollback_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let sql = listener(false);
    let mut old = start(
        dir.path(),
        "4.3.1.0",
        &sql,
        None,
        ",enable_obproxy_rpc_service=false",
    );
    let mut conn = admin(addr(&sql)).await;
    conn.query_drop("ALTER proxyconfig SET hot_upgrade_rollback_timeout = 1s")
        .await
        .unwrap();
    conn.query_drop("ALTER proxyconfig SET standin_no_ready = true")
        .await
        .unwrap();
    conn.query_drop("ALTER proxyconfig SET proxy_local_cmd = 2")
        .await
        .unwrap();
    let child = forked_child(&old);
    let ready = event_of(&old, "ready", child);
    assert!(
        ready.contains("notified=false reason=standin_no_ready"),
        "{ready}"
    );
    let rolled = old.wait_event("native restart rolled back", 1);
    assert!(rolled.contains("reason=timeout"), "{rolled}");
    let exited = old.wait_event("native child exited", 1);
    assert!(exited.contains("SIGKILL"), "killed: {exited}");
    // Reaping the child cleared the flag the timeout set (ob_proxy_main.cpp:798-808): a
    // SIGUSR1 is acted on again.
    let mut client = TcpStream::connect(addr(&sql)).unwrap();
    skip_greeting(&mut client).unwrap();
    old.signal(libc::SIGUSR1);
    old.wait_event("drain begun", 1);
    drop((client, conn));
    assert_eq!(old.wait_end().status, 1);
}
