//! The `root@proxysys` session the stand-in serves itself, as obproxy serves its internal commands: `ALTER proxyconfig`, `SHOW PROXYCONFIG`, `SHOW PROXYINFO BINARY`, `PING PROXY`, and the few other statements obproxy answers such a session. It counts in the drain like any client session, leaving as a command completes.

mod reply;
mod show;
pub mod sql;

use std::os::fd::AsRawFd;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

pub use reply::Reply;
use reply::{BAD_INTERNAL_CMD, INTERNAL_ERROR, INVALID_CONFIG, NOT_SUPPORTED, SYS_CONFIG_UNKNOWN};
use sql::{Listing, Statement, Value};

use crate::config::SetError;
use crate::forward::{Tracked, raised};
use crate::login::AdminLogin;
use crate::mysql::auth::stage1_hex;
use crate::mysql::codec::read_packet;
use crate::proxy::{AlterError, Proxy};
use crate::session::has_pending_input;

/// Longer commands than this are not what an admin sends.
const MAX_COMMAND: usize = 1 << 20;

/// What one command asks of the session.
enum Outcome {
    Reply(Reply),
    /// `COM_QUIT`, or `PING PROXY` once the process stopped accepting
    /// (v4.3.1:src/obproxy/proxy/mysql/ob_mysql_sm.cpp:8323-8334).
    Close,
}

pub async fn serve(login: AdminLogin, proxy: Arc<Proxy>, mut tracked: Tracked) {
    let AdminLogin {
        mut stream,
        caps,
        seq,
        peer,
    } = login;
    let mut ok = Reply::new(seq, caps);
    ok.ok();
    if stream.write_all(&ok.into_bytes()).await.is_err() {
        return;
    }
    event!("admin login", "user=root@proxysys peer={peer}");
    let fd = stream.as_raw_fd();
    let mut cut = tracked.cut_switch();
    loop {
        // Every command, the login too, completes a transaction: where obproxy lets a
        // drain close the session (v4.3.1:src/obproxy/proxy/mysql/ob_mysql_client_session.cpp:1266).
        if tracked.draining()
            && !has_pending_input(fd)
            && let Some(leave) = tracked.try_leave()
        {
            event!(
                "session closed at boundary",
                "open={} allowed={} user=root@proxysys",
                leave.open,
                leave.allowed
            );
            return;
        }
        let packet = tokio::select! {
            packet = read_packet(&mut stream, MAX_COMMAND) => packet,
            _ = raised(&mut cut) => return tracked.record_cut(true),
        };
        let Ok((seq, payload)) = packet else { return };
        let reply_seq = seq.wrapping_add(1);
        let outcome = match payload.split_first() {
            Some((0x01, _)) => Outcome::Close,
            // COM_PING: an OK (ob_mysql_sm.cpp:8187-8196).
            Some((0x0E, _)) => {
                let mut r = Reply::new(reply_seq, caps);
                r.ok();
                Outcome::Reply(r)
            }
            Some((0x03, text)) => query(&proxy, &String::from_utf8_lossy(text), reply_seq, caps),
            _ => {
                let mut r = Reply::new(reply_seq, caps);
                r.error(BAD_INTERNAL_CMD);
                Outcome::Reply(r)
            }
        };
        match outcome {
            Outcome::Close => return,
            Outcome::Reply(r) => {
                if stream.write_all(&r.into_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn query(proxy: &Proxy, text: &str, seq: u8, caps: u64) -> Outcome {
    let mut r = Reply::new(seq, caps);
    match sql::parse(text) {
        Statement::Alter { name, value } => match alter(proxy, &name, &value) {
            Ok(()) => r.ok(),
            Err(e) => r.error(e),
        },
        Statement::ShowConfig {
            listing: Listing::Levels,
            ..
        } => r.error(NOT_SUPPORTED),
        Statement::ShowConfig { listing, like } => {
            let config = proxy.config();
            let rows = show::config_rows(&config, listing, like.as_deref());
            r.rows(show::config_columns(proxy.line), &rows);
        }
        Statement::ShowInfo(what) if what == "binary" => {
            r.rows(show::BINARY_COLUMNS, &show::binary_info(proxy));
        }
        // `SHOW PROXYINFO UPGRADE|IDC` report state the stand-in does not keep.
        Statement::ShowInfo(_) => r.error(NOT_SUPPORTED),
        Statement::Ping if proxy.is_accepting() => r.ok(),
        Statement::Ping => return Outcome::Close,
        Statement::Select(key) => match show::select(&key) {
            Some((name, value)) => r.rows(&[name], &[vec![Some(value.to_owned())]]),
            None => r.error(NOT_SUPPORTED),
        },
        Statement::RespondOk => r.ok(),
        Statement::ShowVariables => r.rows(show::VARIABLE_COLUMNS, &show::variables()),
        Statement::Unknown => r.error(BAD_INTERNAL_CMD),
    }
    Outcome::Reply(r)
}

/// `ObAlterConfigSetHandler::handle_set_config` (v4.3.1:src/obproxy/cmd/ob_alter_config_handler.cpp:60-200):
/// a password item's plain text is stored as its SHA-1, `app_name` may not change, an
/// unknown name or a value its item rejects is an error, and the new value is in force at
/// once and written to the local config.
fn alter(proxy: &Proxy, name: &str, value: &Value) -> Result<(), reply::ObError> {
    let mut text = value.text();
    let secret = ["obproxy_sys_password", "observer_sys_password"]
        .iter()
        .any(|p| p.eq_ignore_ascii_case(name));
    if secret && !text.is_empty() {
        text = stage1_hex(&text);
    }
    if proxy.config().def(name).is_none() {
        return Err(SYS_CONFIG_UNKNOWN);
    }
    if name.eq_ignore_ascii_case("app_name") {
        return Err(NOT_SUPPORTED);
    }
    proxy.alter(name, &text).map_err(|e| match e {
        AlterError::Refused(SetError::Unknown) => SYS_CONFIG_UNKNOWN,
        AlterError::Refused(SetError::Invalid) => INVALID_CONFIG,
        AlterError::Store(reason) => {
            event!(
                "config not stored",
                "name={name} error={}",
                reason.replace(' ', "_")
            );
            INTERNAL_ERROR
        }
    })?;
    // Passwords are not logged, not even hashed.
    let shown = if secret {
        "<hidden>".to_owned()
    } else {
        text.replace(' ', "_")
    };
    event!("config altered", "name={name} value={shown}");
    Ok(())
}
