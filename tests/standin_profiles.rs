//! The stand-in's per-line process contract, proved against the binary itself (no agent): listeners handed over as obproxy inherits them, a shell parent that reports the signals it gets, and the files under `etc/`.
//!
//! Each behaviour traces to obproxy's source (see the stand-in's modules for file:line).

use crate::common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use common::standin::{
    Builder, closed_by_peer, echo_on, echo_once, free_port, holds, listener, skip_greeting,
    socket_inode,
};

const FD: &str = "OBPROXY_INHERITED_FD";
const FD6: &str = "OBPROXY_INHERITED_IPV6_FD";
const RPC_FD: &str = "OBPROXY_INHERITED_RPC_FD";
const V32: &str = "3.2.3";
const V42: &str = "4.2.3.0";
const V43: &str = "4.3.1.0";

fn home() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// An inherited start of `version` on `sql`, its exporter on a free port and, on 4.3, its
/// RPC service off unless the test says otherwise in `optstr`.
fn inherited(dir: &std::path::Path, version: &str, sql: &TcpListener, optstr: &str) -> Builder {
    let optstr = if optstr.is_empty() {
        "enable_obproxy_rpc_service=false".to_owned()
    } else {
        optstr.to_owned()
    };
    Builder::new(dir)
        .env("ODP_STANDIN_VERSION", version)
        .inherit(FD, sql)
        .args(&["-l", &free_port().to_string(), "-o", &optstr])
}

/// What a non-inherited start of obproxy up to 4.2 leaves behind, for inherited ones.
fn seed_bin(dir: &std::path::Path) {
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("etc/obproxy_config.bin"), "").unwrap();
}

fn addr(listener: &TcpListener) -> SocketAddr {
    listener.local_addr().unwrap()
}

#[test]
fn readiness_goes_to_the_parent_only_after_an_inherited_start() {
    let dir = home();
    let sql = listener(false);
    let mut standin = inherited(dir.path(), V43, &sql, "").spawn();
    let ready = standin.wait_event("ready", 1);
    assert!(ready.contains("notified=true reason=sent"), "{ready}");
    standin.log.wait_for(|l| l == "parent-got SIGUSR1");
    echo_once(addr(&sql)).unwrap();
    standin.signal(libc::SIGTERM);
    let end = standin.wait_end();
    assert_eq!(end.status, 1, "obproxy's graceful exit code");
    assert_eq!(end.received, ["SIGUSR1"], "no SIGUSR2 after SIGTERM");

    // A fresh start binds its own port and tells nobody.
    let dir = home();
    let port = free_port();
    let mut fresh = Builder::new(dir.path())
        .args(&[
            "-N",
            "-p",
            &port.to_string(),
            "-s",
            &free_port().to_string(),
        ])
        .args(&["-l", &free_port().to_string()])
        .spawn();
    let ready = fresh.wait_event("ready", 1);
    assert!(
        ready.contains("notified=false reason=not-inherited"),
        "{ready}"
    );
    echo_once(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
    fresh.signal(libc::SIGTERM);
    let end = fresh.wait_end();
    assert_eq!((end.status, end.received.len()), (1, 0), "{end:?}");
}

#[test]
fn no_readiness_when_the_parent_is_pid_1() {
    let dir = home();
    let sql = listener(false);
    let mut standin = inherited(dir.path(), V43, &sql, "")
        .parent_is_pid1()
        .spawn();
    let ready = standin.wait_event("ready", 1);
    assert!(
        ready.contains("parent=1 notified=false reason=parent-is-init"),
        "{ready}"
    );
    echo_once(addr(&sql)).unwrap();
    standin.signal(libc::SIGTERM);
    let end = standin.wait_end();
    assert_eq!(end.received, Vec::<String>::new(), "pid 1 got nothing");
    assert_eq!(end.status, 1);
}

#[test]
fn on_4_3_an_rpc_bind_failure_is_fatal_after_the_sql_acceptor_started() {
    let dir = home();
    let taken = TcpListener::bind("0.0.0.0:0").unwrap();
    let sql = listener(false);
    // Queued before the start: the SQL acceptor takes it, then the RPC bind fails.
    let mut early = TcpStream::connect(addr(&sql)).unwrap();
    let optstr = format!("rpc_listen_port={}", addr(&taken).port());
    let mut standin = inherited(dir.path(), V43, &sql, &optstr).spawn();
    let failed = standin.wait_event("start failed", 1);
    assert!(
        failed.contains("fail to start rpc accept server"),
        "{failed}"
    );
    let end = standin.wait_end();
    assert_eq!(end.status, 0, "obproxy's main exits 0 whatever failed");
    assert!(end.received.is_empty(), "no readiness: {end:?}");
    assert!(
        closed_by_peer(&mut early),
        "the accepted client was dropped"
    );
    sql.set_nonblocking(true).unwrap();
    assert!(
        sql.accept().is_err(),
        "the stand-in had taken the queued connection off the shared socket"
    );
}

#[test]
fn on_4_3_an_inherited_rpc_listener_is_used_and_the_port_not_bound() {
    let dir = home();
    let sql = listener(false);
    let rpc = listener(false);
    let taken = TcpListener::bind("0.0.0.0:0").unwrap();
    // rpc_listen_port names a port that is taken: only not binding it lets the start succeed.
    let optstr = format!("rpc_listen_port={}", addr(&taken).port());
    let mut standin = inherited(dir.path(), V43, &sql, &optstr)
        .inherit(RPC_FD, &rpc)
        .spawn();
    let started = standin.wait_event("started", 1);
    assert!(
        started.contains(&format!("rpc={}", addr(&rpc))),
        "{started}"
    );
    standin.log.wait_for(|l| l == "parent-got SIGUSR1");
    assert!(holds(standin.pid, &socket_inode(rpc.as_raw_fd())));
    standin.signal(libc::SIGTERM);
    assert_eq!(standin.wait_end().status, 1);
}

#[test]
fn the_rpc_service_is_on_by_default_on_4_3_and_absent_before() {
    let dir = home();
    let rpc_port = free_port();
    let mut fresh = Builder::new(dir.path())
        .args(&[
            "-N",
            "-p",
            &free_port().to_string(),
            "-l",
            &free_port().to_string(),
        ])
        .args(&["-s", &rpc_port.to_string()])
        .spawn();
    let started = fresh.wait_event("started", 1);
    assert!(
        started.contains(&format!("rpc=0.0.0.0:{rpc_port}")),
        "{started}"
    );
    TcpStream::connect(("127.0.0.1", rpc_port)).expect("4.3 listens on its RPC port");
    fresh.signal(libc::SIGTERM);
    fresh.wait_end();

    // 4.2 has neither the flag nor the items: -s is refused, the items are ignored.
    let dir = home();
    let mut refused = Builder::new(dir.path())
        .env("ODP_STANDIN_VERSION", V42)
        .args(&["-N", "-s", &free_port().to_string()])
        .spawn();
    let failed = refused.wait_event("start failed", 1);
    assert!(failed.contains("invalid option -- 's'"), "{failed}");
    assert_eq!(refused.wait_end().status, 0);
    let taken = TcpListener::bind("0.0.0.0:0").unwrap();
    let sql = listener(false);
    seed_bin(dir.path());
    let optstr = format!(
        "enable_obproxy_rpc_service=true,rpc_listen_port={}",
        addr(&taken).port()
    );
    let mut old = inherited(dir.path(), V42, &sql, &optstr).spawn();
    let started = old.wait_event("started", 1);
    assert!(started.contains("rpc=none"), "{started}");
    old.signal(libc::SIGTERM);
    assert_eq!(old.wait_end().status, 1);
}

#[test]
fn up_to_4_2_an_inherited_start_needs_the_local_config_a_fresh_start_writes() {
    for version in [V32, V42] {
        let dir = home();
        let sql = listener(false);
        let mut refused = inherited(dir.path(), version, &sql, "").spawn();
        let failed = refused.wait_event("start failed", 1);
        assert!(
            failed.contains("fail to load config from file during hot upgrade, terminate startup"),
            "{version}: {failed}"
        );
        let end = refused.wait_end();
        assert_eq!(
            (end.status, end.received.len()),
            (0, 0),
            "{version}: {end:?}"
        );

        let port = free_port();
        let mut fresh = Builder::new(dir.path())
            .env("ODP_STANDIN_VERSION", version)
            .args(&[
                "-N",
                "-p",
                &port.to_string(),
                "-l",
                &free_port().to_string(),
            ])
            .args(&["-o", "hot_upgrade_exit_timeout=7000000"])
            .spawn();
        fresh.wait_event("ready", 1);
        let written = std::fs::read_to_string(dir.path().join("etc/obproxy_config.bin")).unwrap();
        assert!(
            written.contains("hot_upgrade_exit_timeout=7000000\n"),
            "{written}"
        );
        assert!(
            written.contains(&format!("listen_port={port}\n")),
            "{written}"
        );
        assert!(
            !written.contains("proxy_local_cmd"),
            "memory items stay out"
        );
        fresh.signal(libc::SIGTERM);
        fresh.wait_end();

        // No arguments at all: the config comes from etc/.
        let mut inherited = Builder::new(dir.path())
            .env("ODP_STANDIN_VERSION", version)
            .inherit(FD, &sql)
            .spawn();
        inherited.log.wait_for(|l| l == "parent-got SIGUSR1");
        inherited.signal(libc::SIGUSR1);
        let drain = inherited.wait_event("drain begun", 1);
        assert!(drain.contains("window=7s"), "{version}: {drain}");
        inherited.wait_end();
    }

    // 4.3 creates its sqlite config on the fly and writes every item into it, -o included.
    let dir = home();
    let sql = listener(false);
    let optstr = "enable_obproxy_rpc_service=false,hot_upgrade_exit_timeout=7000000";
    let mut standin = inherited(dir.path(), V43, &sql, optstr).spawn();
    standin.log.wait_for(|l| l == "parent-got SIGUSR1");
    let db = rusqlite::Connection::open(dir.path().join("etc/proxyconfig_v1.db")).unwrap();
    let value = |name: &str| -> String {
        db.query_row(
            "select value from proxy_config where name = ?1 and config_level = 'LEVEL_GLOBAL'",
            [name],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(value("hot_upgrade_exit_timeout"), "7000000");
    assert_eq!(value("enable_obproxy_rpc_service"), "False");
    assert_eq!(value("listen_port"), "6688", "obproxy's built-in default");
    assert_eq!(value("rpc_listen_port"), "2885");
    assert!(!dir.path().join("etc/obproxy_config.bin").exists());
    standin.signal(libc::SIGTERM);
    standin.wait_end();
}

#[test]
fn ip_listen_mode_decides_which_inherited_listeners_are_served() {
    // Mode 1, the default: the IPv6 listener is held but never accepted on.
    let dir = home();
    seed_bin(dir.path());
    let (v4, v6) = (listener(false), listener(true));
    let _waiting = TcpStream::connect(addr(&v6)).unwrap();
    let mut standin = inherited(dir.path(), V42, &v4, "")
        .inherit(FD6, &v6)
        .spawn();
    let started = standin.wait_event("started", 1);
    assert!(
        started.contains(&format!("sql={} ", addr(&v4))),
        "{started}"
    );
    echo_once(addr(&v4)).unwrap();
    assert!(
        holds(standin.pid, &socket_inode(v6.as_raw_fd())),
        "kept open"
    );
    standin.signal(libc::SIGTERM);
    standin.wait_end();
    v6.set_nonblocking(true).unwrap();
    assert!(
        v6.accept().is_ok(),
        "the IPv6 client is still queued: nobody accepted it"
    );

    // Mode 3 serves both.
    let (v4, v6) = (listener(false), listener(true));
    let mut queued = TcpStream::connect(addr(&v6)).unwrap();
    let mut both = inherited(dir.path(), V42, &v4, "ip_listen_mode=3")
        .inherit(FD6, &v6)
        .spawn();
    both.wait_event("started", 1);
    skip_greeting(&mut queued).unwrap();
    echo_on(&mut queued, b"over IPv6").unwrap();
    echo_once(addr(&v4)).unwrap();
    both.signal(libc::SIGTERM);
    both.wait_end();

    // Mode 3 without an IPv6 listener fails the start.
    let v4 = listener(false);
    let mut broken = inherited(dir.path(), V42, &v4, "ip_listen_mode=3")
        .env(FD6, "-1")
        .spawn();
    let failed = broken.wait_event("start failed", 1);
    assert!(failed.contains("ipv6"), "{failed}");
    assert_eq!(broken.wait_end().status, 0);

    // 3.x reads no IPv6 variable and closes what it does not use.
    let (v4, v6) = (listener(false), listener(true));
    let mut old = inherited(dir.path(), V32, &v4, "")
        .inherit(FD6, &v6)
        .spawn();
    old.wait_event("ready", 1);
    assert!(holds(old.pid, &socket_inode(v4.as_raw_fd())));
    assert!(!holds(old.pid, &socket_inode(v6.as_raw_fd())));
    old.signal(libc::SIGTERM);
    old.wait_end();
}

#[test]
fn sigusr2_follows_a_drain_from_4_1_on_and_kills_3_x() {
    for (version, told) in [(V32, false), (V42, true), (V43, true)] {
        let dir = home();
        seed_bin(dir.path());
        let sql = listener(false);
        let mut standin = inherited(dir.path(), version, &sql, "").spawn();
        standin.log.wait_for(|l| l == "parent-got SIGUSR1");
        standin.signal(libc::SIGUSR1);
        let end = standin.wait_end();
        assert_eq!(end.status, 1, "{version}");
        let expected: &[&str] = if told {
            &["SIGUSR1", "SIGUSR2"]
        } else {
            &["SIGUSR1"]
        };
        assert_eq!(end.received, expected, "{version}");
    }

    // 3.x has no SIGUSR2 handler: its default action kills the process.
    let dir = home();
    seed_bin(dir.path());
    let sql = listener(false);
    let mut old = inherited(dir.path(), V32, &sql, "").spawn();
    old.wait_event("ready", 1);
    old.signal(libc::SIGUSR2);
    assert_eq!(old.wait_end().status, 128 + libc::SIGUSR2);

    // 4.1+ handles it and goes on serving.
    let sql = listener(false);
    let mut newer = inherited(dir.path(), V42, &sql, "").spawn();
    newer.wait_event("ready", 1);
    newer.signal(libc::SIGUSR2);
    newer.wait_event("signal received", 1);
    echo_once(addr(&sql)).unwrap();
    newer.signal(libc::SIGTERM);
    let end = newer.wait_end();
    assert_eq!(
        (end.status, end.received.as_slice()),
        (1, &["SIGUSR1".to_owned()][..])
    );
}
