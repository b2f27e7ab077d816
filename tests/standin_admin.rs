//! The stand-in's admin SQL as obproxy's `root@proxysys` serves it, with the real `mysql` client (MariaDB's) and mysql_async: the login and its 1045, `ALTER proxyconfig` and `SHOW PROXYCONFIG LIKE` in each line's layout, `SHOW PROXYINFO BINARY`, and the drain window taken at the signal.

use crate::common;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::mariadb::MariaDb;
use common::standin::{Builder, Standin, admin_opts, free_port, listener};
use mysql_async::prelude::*;
use mysql_async::{Conn, OptsBuilder, Row};

const PASSWORD: &str = "s3cret";
/// SHA1("s3cret"): how obd and obshell pass `obproxy_sys_password`.
const STAGE1: &str = "fef341f85d87439e7d91a2d465b9871ef66b5e98";

/// An inherited stand-in of `version` in echo mode with `obproxy_sys_password` set.
fn start(dir: &Path, version: &str, sql: &TcpListener, more: &str) -> Standin {
    let optstr = format!("enable_obproxy_rpc_service=false,obproxy_sys_password={STAGE1}{more}");
    let standin = Builder::new(dir)
        .env("ODP_STANDIN_VERSION", version)
        .inherit("OBPROXY_INHERITED_FD", sql)
        .args(&["-l", &free_port().to_string(), "-o", &optstr])
        .spawn();
    standin.wait_event("ready", 1);
    standin
}

async fn admin(addr: SocketAddr) -> Conn {
    Conn::new(admin_opts(addr, PASSWORD)).await.unwrap()
}

/// The `mysql` command line client: its exit status, stdout and stderr.
fn mysql(
    addr: SocketAddr,
    user: &str,
    password: Option<&str>,
    sql: &str,
) -> (bool, String, String) {
    let mut cmd = Command::new("mysql");
    cmd.args([
        "-h",
        &addr.ip().to_string(),
        "-P",
        &addr.port().to_string(),
        "-u",
        user,
    ])
    .args(["--batch", "--connect-timeout=30", "-e", sql]);
    if let Some(p) = password {
        cmd.arg(format!("-p{p}"));
    }
    let out = cmd
        .output()
        .expect("the mysql client (apt-get install -y mariadb-client)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value column of `SHOW PROXYCONFIG LIKE '<name>'`.
async fn value_of(conn: &mut Conn, name: &str) -> String {
    let row: Option<Row> = conn
        .query_first(format!("SHOW PROXYCONFIG LIKE '{name}'"))
        .await
        .unwrap();
    row.expect("one row").get(1).unwrap()
}

fn addr(l: &TcpListener) -> SocketAddr {
    l.local_addr().unwrap()
}

#[tokio::test]
async fn login_works_with_the_password_and_a_wrong_one_gets_1045() {
    let dir = tempfile::tempdir().unwrap();
    let sql = listener(false);
    let standin = start(dir.path(), "4.3.1.0", &sql, "");
    let (ok, out, err) = mysql(
        addr(&sql),
        "root@proxysys",
        Some(PASSWORD),
        "show proxyinfo binary",
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("name\tinfo\nbinary info\t"), "{out}");

    let (ok, _, err) = mysql(
        addr(&sql),
        "root@proxysys",
        Some("wrong"),
        "show proxyinfo binary",
    );
    assert!(!ok);
    assert!(
        err.contains("ERROR 1045 (42000): Access denied for user 'root@proxysys'@'127.0.0.1' (using password: YES)"),
        "{err}"
    );
    let (ok, _, err) = mysql(addr(&sql), "root@proxysys", None, "show proxyinfo binary");
    assert!(!ok);
    assert!(err.contains("(using password: NO)"), "{err}");
    let refused = standin.wait_event("admin login refused", 2);
    assert!(refused.contains("reason=password"), "{refused}");

    // mysql_async, right and wrong.
    let mut conn = admin(addr(&sql)).await;
    conn.ping().await.unwrap();
    conn.disconnect().await.unwrap();
    let e = Conn::new(admin_opts(addr(&sql), "nope")).await.unwrap_err();
    assert!(
        matches!(&e, mysql_async::Error::Server(s) if s.code == 1045),
        "{e}"
    );

    // Up to 4.2 the item is empty by default: no password at all.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    std::fs::write(dir.path().join("etc/obproxy_config.bin"), "").unwrap();
    let sql = listener(false);
    let _old = Builder::new(dir.path())
        .env("ODP_STANDIN_VERSION", "4.2.3.0")
        .inherit("OBPROXY_INHERITED_FD", &sql)
        .args(&["-l", &free_port().to_string()])
        .spawn();
    _old.wait_event("ready", 1);
    let (ok, _, err) = mysql(addr(&sql), "root@proxysys", None, "ping proxy");
    assert!(ok, "{err}");
}

#[tokio::test]
async fn a_client_that_reads_settings_at_connect_is_refused_them() {
    let dir = tempfile::tempdir().unwrap();
    let sql = listener(false);
    let _standin = start(dir.path(), "4.3.1.0", &sql, "");
    let plain = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(addr(&sql).port())
        .user(Some("root@proxysys"))
        .pass(Some(PASSWORD))
        .prefer_socket(false);
    let e = Conn::new(plain).await.unwrap_err();
    assert!(
        matches!(&e, mysql_async::Error::Server(s) if s.code == 1235),
        "SELECT @@max_allowed_packet,@@wait_timeout is not one obproxy answers: {e}"
    );
    let mut conn = admin(addr(&sql)).await;
    let tx: Option<String> = conn
        .query_first("SELECT @@session.tx_isolation")
        .await
        .unwrap();
    assert_eq!(tx.as_deref(), Some("READ-COMMITTED"));
}

#[tokio::test]
async fn alter_proxyconfig_applies_at_once_and_show_proxyconfig_has_each_lines_layout() {
    for (version, columns) in [
        (
            "4.3.1.0",
            &[
                "name",
                "value",
                "info",
                "need_reboot",
                "visible_level",
                "range",
                "config_level",
            ][..],
        ),
        (
            "4.2.3.0",
            &["name", "value", "info", "need_reboot", "visible_level"][..],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/obproxy_config.bin"), "").unwrap();
        let sql = listener(false);
        let _standin = start(dir.path(), version, &sql, "");
        let mut conn = admin(addr(&sql)).await;
        conn.query_drop("ALTER proxyconfig SET hot_upgrade_exit_timeout = 5000000")
            .await
            .unwrap();
        let rows: Vec<Row> = conn
            .query("SHOW PROXYCONFIG LIKE 'hot_upgrade_exit_timeout'")
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "{version}");
        let names: Vec<String> = rows[0]
            .columns_ref()
            .iter()
            .map(|c| c.name_str().into_owned())
            .collect();
        assert_eq!(names, columns, "{version}");
        let value: String = rows[0].get(1).unwrap();
        assert_eq!(value, "5000000", "{version}");
        let reboot: String = rows[0].get(3).unwrap();
        assert_eq!(reboot, "false");
        if columns.len() == 7 {
            let range: String = rows[0].get(5).unwrap();
            let level: String = rows[0].get(6).unwrap();
            assert_eq!(
                (range.as_str(), level.as_str()),
                ("[-1,86400000000]", "LEVEL_GLOBAL")
            );
        }

        // A time item takes a unit; a bare number is seconds; the range is checked.
        conn.query_drop("ALTER proxyconfig SET proxy_hot_upgrade_check_interval = 2s")
            .await
            .unwrap();
        let code = |e: mysql_async::Error| match e {
            mysql_async::Error::Server(s) => (s.code, s.state, s.message),
            other => panic!("{other}"),
        };
        let invalid = conn
            .query_drop("ALTER proxyconfig SET proxy_hot_upgrade_check_interval = '500ms'")
            .await;
        assert_eq!(
            code(invalid.unwrap_err()),
            (4147, "HY000".into(), "Invalid config".into())
        );
        let invalid = conn
            .query_drop("ALTER proxyconfig SET hot_upgrade_exit_timeout = '5s'")
            .await;
        assert_eq!(
            code(invalid.unwrap_err()).0,
            4147,
            "plain microseconds only"
        );
        let unknown = conn
            .query_drop("ALTER proxyconfig SET no_such_item = 1")
            .await;
        assert_eq!(
            code(unknown.unwrap_err()),
            (5099, "42000".into(), "System config unknown".into())
        );
        let fixed = conn
            .query_drop("ALTER proxyconfig SET app_name = 'other'")
            .await;
        assert_eq!(code(fixed.unwrap_err()).0, 1235);
        let values: Vec<(String, String)> = conn
            .query("SHOW PROXYCONFIG LIKE '%check_interval'")
            .await
            .unwrap()
            .into_iter()
            .map(|r: Row| (r.get(0).unwrap(), r.get(1).unwrap()))
            .collect();
        assert_eq!(
            values,
            [("proxy_hot_upgrade_check_interval".into(), "2s".into())]
        );

        // Kept in the local config, where the next start without arguments finds it.
        let kept = if version.starts_with("4.3") {
            let db = rusqlite::Connection::open(dir.path().join("etc/proxyconfig_v1.db")).unwrap();
            db.query_row(
                "select value from proxy_config where name = 'hot_upgrade_exit_timeout'",
                [],
                |r| r.get::<_, String>(0),
            )
            .unwrap()
        } else {
            let text = std::fs::read_to_string(dir.path().join("etc/obproxy_config.bin")).unwrap();
            text.lines()
                .find_map(|l| {
                    l.strip_prefix("hot_upgrade_exit_timeout=")
                        .map(str::to_owned)
                })
                .unwrap()
        };
        assert_eq!(kept, "5000000", "{version}");

        // A new password is stored as its SHA-1 and is the one from now on.
        conn.query_drop("ALTER proxyconfig SET obproxy_sys_password = 'changed'")
            .await
            .unwrap();
        let stored = value_of(&mut conn, "obproxy_sys_password").await;
        assert_eq!(stored, "37c6c57bedf4305ef41249c1794760b5cb8fad17");
        assert!(Conn::new(admin_opts(addr(&sql), PASSWORD)).await.is_err());
        Conn::new(admin_opts(addr(&sql), "changed")).await.unwrap();
    }
}

#[tokio::test]
async fn show_proxyinfo_binary_has_obproxys_row() {
    let dir = tempfile::tempdir().unwrap();
    let sql = listener(false);
    let _standin = start(dir.path(), "4.3.1.0", &sql, "");
    let mut conn = admin(addr(&sql)).await;
    let rows: Vec<Row> = conn.query("SHOW PROXYINFO BINARY").await.unwrap();
    assert_eq!(rows.len(), 1);
    let names: Vec<String> = rows[0]
        .columns_ref()
        .iter()
        .map(|c| c.name_str().into_owned())
        .collect();
    assert_eq!(names, ["name", "info"]);
    let (name, info): (String, String) = (rows[0].get(0).unwrap(), rows[0].get(1).unwrap());
    assert_eq!(name, "binary info");
    let lines: Vec<&str> = info.lines().collect();
    assert_eq!(lines[0], "ObProxy-OceanBase 4.3.1.0-1");
    assert_eq!(lines[1], "version:RELEASE_UNKNOWN");
    assert_eq!(lines[2], "MD5:");
    assert!(lines[3].starts_with("REVISION:obproxy-standin-"), "{info}");
    assert!(lines[4].starts_with("BUILD_TIME:"), "{info}");
    assert!(lines[5].starts_with("BUILD_FLAGS:"), "{info}");
}

/// obproxy reads `hot_upgrade_exit_timeout` when SIGUSR1 arrives and fixes the drain's end
/// then (v4.3.1:src/obproxy/ob_proxy_main.cpp:887-889): an ALTER before the signal sets
/// the window; one during the drain changes the next drain, not this one.
#[tokio::test]
async fn the_drain_window_is_the_one_set_when_sigusr1_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let sql = listener(false);
    let mut standin = start(dir.path(), "4.3.1.0", &sql, "");
    let mut conn = admin(addr(&sql)).await;
    conn.query_drop("ALTER proxyconfig SET hot_upgrade_exit_timeout = 3000000")
        .await
        .unwrap();
    let began = Instant::now();
    standin.signal(libc::SIGUSR1);
    let begun = standin.wait_event("drain begun", 1);
    assert!(begun.contains("open_connections=1 window=3s"), "{begun}");
    // Alone, this session may stay to the window end, and can still change the config.
    conn.query_drop("ALTER proxyconfig SET hot_upgrade_exit_timeout = 1000000")
        .await
        .unwrap();
    assert_eq!(
        value_of(&mut conn, "hot_upgrade_exit_timeout").await,
        "1000000"
    );
    let finished = standin.wait_event("drain finished", 1);
    let took = began.elapsed();
    assert!(
        took.as_secs_f64() >= 3.0,
        "the drain kept its 3 s window: {took:?}"
    );
    assert!(
        finished.contains("reason=window cut=0 closed_at_boundary=1"),
        "{finished}"
    );
    assert!(conn.ping().await.is_err(), "cut at the window end");
    let end = standin.wait_end();
    assert_eq!(end.received, ["SIGUSR1", "SIGUSR2"]);
}

/// With a backend, the backend's greeting reaches the client; root@proxysys is checked
/// against its salt and served by the stand-in, anyone else logs in to the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    skip_mariadb,
    ignore = "needs MariaDB: built with ODP_TEST_SKIP_MARIADB=1"
)]
async fn with_a_backend_root_at_proxysys_is_served_here_and_others_reach_the_database() {
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let sql = listener(false);
    let backend = format!(",standin_backend=127.0.0.1:{}", db.port);
    let _standin = start(dir.path(), "4.3.1.0", &sql, &backend);
    let mut conn = admin(addr(&sql)).await;
    let info: Option<(String, String)> = conn.query_first("SHOW PROXYINFO BINARY").await.unwrap();
    assert_eq!(info.unwrap().0, "binary info");
    let e = Conn::new(admin_opts(addr(&sql), "wrong"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, mysql_async::Error::Server(s) if s.code == 1045),
        "{e}"
    );

    let mut user = common::mariadb::connect(addr(&sql).port()).await;
    let version: Option<String> = user.query_first("SELECT VERSION()").await.unwrap();
    assert!(version.unwrap().contains("MariaDB"));
    let (ok, out, err) = mysql(
        addr(&sql),
        "root@proxysys",
        Some(PASSWORD),
        "show proxyconfig like 'listen_port'",
    );
    assert!(ok, "{err}");
    assert!(out.contains("listen_port\t6688"), "{out}");
}
