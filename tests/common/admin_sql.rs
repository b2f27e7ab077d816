//! Agents with obproxy's admin SQL: a password file next to the configuration
//! (`[obproxy] sys_password_file`), the stand-in given the password's SHA-1 as
//! `-o obproxy_sys_password=...` (as obd and obshell pass it), and a
//! `root@proxysys` client of the tests' own.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use mysql_async::{Conn, OptsBuilder};
use sha1::{Digest, Sha1};

use super::{Agent, Options, PATIENCE, agent_command};

pub const PASSWORD: &str = "pr0xy-sys";

pub fn sha1_hex(text: &str) -> String {
    hex::encode(Sha1::digest(text.as_bytes()))
}

/// The stand-in's `-o` items for admin SQL with [`PASSWORD`], then `more`.
pub fn args(more: &str) -> Vec<String> {
    let items = format!("obproxy_sys_password={}", sha1_hex(PASSWORD));
    let items = if more.is_empty() {
        items
    } else {
        format!("{items},{more}")
    };
    vec!["-o".into(), items]
}

pub fn write_password(dir: &Path, text: &str, mode: u32) -> PathBuf {
    let path = dir.join("proxysys.pw");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// An agent whose `[obproxy]` section has `keys` too, and, given a
/// `password`, `sys_password_file` naming a file (mode 0600) that holds it.
pub async fn agent_with(
    opts: Options,
    keys: &'static str,
    password: Option<&'static str>,
) -> Agent {
    Agent::start_customized(opts, move |config| {
        let mut keys = keys.to_string();
        if let Some(password) = password {
            write_password(config.parent().unwrap(), password, 0o600);
            keys.push_str("\nsys_password_file = \"proxysys.pw\"");
        }
        let text = std::fs::read_to_string(config).unwrap();
        let text = text.replacen("[obproxy]\n", &format!("[obproxy]\n{keys}\n"), 1);
        std::fs::write(config, text).unwrap();
        agent_command(config)
    })
    .await
}

/// A `root@proxysys` session on the SQL port, as an operator (or obshell) opens it.
pub async fn admin(port: u16) -> Conn {
    let opts = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some("root@proxysys"))
        .pass(Some(PASSWORD))
        .prefer_socket(false)
        .max_allowed_packet(Some(16 * 1024 * 1024))
        .wait_timeout(Some(28_800));
    tokio::time::timeout(PATIENCE, Conn::new(opts))
        .await
        .expect("no login in time")
        .unwrap()
}

/// Waits (up to [`PATIENCE`]) until `done` holds, looking every 50 ms: for
/// what only `/proc` shows (processes the agent did not start).
pub async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
