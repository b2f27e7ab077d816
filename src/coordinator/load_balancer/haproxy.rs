//! HAProxy's runtime API over its stats socket (`stats socket ... level
//! admin`): one command per connection, as HAProxy's non-interactive mode
//! answers it and closes. `set server <backend>/<server> state ...` moves a
//! server; `show servers state` (its administrative state) and `show stat`
//! (its current sessions, `scur`) report it.
use std::{collections::HashMap, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, UnixStream},
};

use super::{
    LbError, ServerState, ServerStatus,
    config::{HaProxyConfig, Socket},
};

/// `srv_admin_state` bits (HAProxy's `enum srv_admin`): forced, inherited,
/// configured and resolution maintenance; forced and inherited drain.
const ADMIN_MAINT: u32 = 0x01 | 0x02 | 0x04 | 0x20;
const ADMIN_DRAIN: u32 = 0x08 | 0x10;
/// An answer longer than this is not one HAProxy gives for one backend.
const MAX_ANSWER: u64 = 4 << 20;

pub struct HaProxy {
    socket: Socket,
    backend: String,
    timeout: Duration,
}

impl HaProxy {
    pub fn new(config: &HaProxyConfig, timeout: Duration) -> Self {
        Self {
            socket: config.socket.clone(),
            backend: config.backend.clone(),
            timeout,
        }
    }

    /// The socket, as errors name it.
    pub fn target(&self) -> String {
        match &self.socket {
            Socket::Unix(path) => path.display().to_string(),
            Socket::Tcp(addr) => addr.clone(),
        }
    }

    pub fn unknown(&self, server: &str) -> LbError {
        LbError::UnknownServer {
            target: self.target(),
            backend: self.backend.clone(),
            server: server.to_string(),
        }
    }

    /// Sends one command and reads the answer to its end, all within the
    /// timeout.
    async fn ask(&self, command: &str) -> Result<String, LbError> {
        let io = |source| LbError::Io {
            target: self.target(),
            command: command.to_string(),
            source,
        };
        let exchange = async {
            match &self.socket {
                Socket::Unix(path) => {
                    let stream =
                        UnixStream::connect(path)
                            .await
                            .map_err(|source| LbError::Connect {
                                target: self.target(),
                                source,
                            })?;
                    exchange(stream, command).await.map_err(io)
                }
                Socket::Tcp(addr) => {
                    let stream = TcpStream::connect(addr.as_str()).await.map_err(|source| {
                        LbError::Connect {
                            target: self.target(),
                            source,
                        }
                    })?;
                    exchange(stream, command).await.map_err(io)
                }
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(LbError::Timeout {
                    target: self.target(),
                    command: command.to_string(),
                    timeout: self.timeout,
                })
            })
    }

    /// `set server <backend>/<server> state <state>`: HAProxy answers
    /// nothing when it did it, and says why not otherwise.
    pub async fn set(&self, server: &str, state: ServerState) -> Result<String, LbError> {
        let command = format!(
            "set server {}/{server} state {}",
            self.backend,
            state.name()
        );
        let answer = self.ask(&command).await?;
        let answer = answer.trim();
        if !answer.is_empty() {
            return Err(LbError::Refused {
                target: self.target(),
                command,
                answer: answer.to_string(),
            });
        }
        Ok(format!("{command}: done"))
    }

    /// One server of the backend.
    pub async fn server(&self, server: &str) -> Result<ServerStatus, LbError> {
        let all = self.servers().await?;
        all.get(server).copied().ok_or_else(|| self.unknown(server))
    }

    /// Every server of the backend: its administrative state from `show
    /// servers state`, its sessions from `show stat`.
    pub async fn servers(&self) -> Result<HashMap<String, ServerStatus>, LbError> {
        let states_cmd = format!("show servers state {}", self.backend);
        let states = self.ask(&states_cmd).await?;
        let admin = parse_table(&states, ' ', "srv_name", "srv_admin_state")
            .ok_or_else(|| self.unparsable(&states_cmd, &states))?;
        // Type 4: servers only; -1: every one of them.
        let stat_cmd = format!("show stat {} 4 -1", self.backend);
        let stat = self.ask(&stat_cmd).await?;
        let sessions = parse_table(&stat, ',', "svname", "scur")
            .ok_or_else(|| self.unparsable(&stat_cmd, &stat))?;
        let mut servers = HashMap::new();
        for (name, bits) in admin {
            let bits = bits
                .parse::<u32>()
                .map_err(|_| self.unparsable(&states_cmd, &states))?;
            let state = if bits & ADMIN_MAINT != 0 {
                ServerState::Maint
            } else if bits & ADMIN_DRAIN != 0 {
                ServerState::Drain
            } else {
                ServerState::Ready
            };
            let scur = sessions
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, s)| s.parse::<u64>().ok())
                .ok_or_else(|| self.unparsable(&stat_cmd, &stat))?;
            servers.insert(
                name,
                ServerStatus {
                    state: Some(state),
                    sessions: scur,
                },
            );
        }
        Ok(servers)
    }

    fn unparsable(&self, command: &str, answer: &str) -> LbError {
        // HAProxy's own refusals ("Can't find backend.") are one short line.
        let first = answer.trim().lines().next().unwrap_or("").to_string();
        if !first.starts_with('#') && !first.is_empty() && first.len() < 200 && first != "1" {
            return LbError::Refused {
                target: self.target(),
                command: command.to_string(),
                answer: first,
            };
        }
        LbError::Unparsable {
            target: self.target(),
            command: command.to_string(),
            answer: answer.chars().take(200).collect(),
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    command: &str,
) -> std::io::Result<String> {
    stream.write_all(format!("{command}\n").as_bytes()).await?;
    let mut answer = String::new();
    stream.take(MAX_ANSWER).read_to_string(&mut answer).await?;
    Ok(answer)
}

/// The `(key, value)` columns of every row of a table whose header line starts
/// with `# ` and names its columns, split by `sep`: `show servers state`
/// (spaces, after a version line) and `show stat` (CSV).
fn parse_table(answer: &str, sep: char, key: &str, value: &str) -> Option<Vec<(String, String)>> {
    let mut lines = answer.lines().skip_while(|l| !l.starts_with("# "));
    let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(sep).collect();
    let k = header.iter().position(|c| *c == key)?;
    let v = header.iter().position(|c| *c == value)?;
    let mut rows = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let cells: Vec<&str> = line.split(sep).collect();
        rows.push((cells.get(k)?.to_string(), cells.get(v)?.to_string()));
    }
    Some(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight\n\
        3 odp 1 odp1 127.0.0.1 2 8 1\n3 odp 2 odp2 127.0.0.1 0 1 1\n3 odp 3 odp3 127.0.0.1 2 0 1\n\n";
    const STAT: &str = "# pxname,svname,qcur,qmax,scur,smax,status\n\
        odp,odp1,0,0,2,4,DRAIN\nodp,odp2,0,0,0,1,MAINT\nodp,odp3,0,0,7,9,no check\n\n";

    #[test]
    fn the_tables_are_read_by_their_column_names() {
        let admin = parse_table(STATES, ' ', "srv_name", "srv_admin_state").unwrap();
        assert_eq!(admin[0], ("odp1".into(), "8".into()));
        assert_eq!(admin.len(), 3);
        let scur = parse_table(STAT, ',', "svname", "scur").unwrap();
        assert_eq!(scur[2], ("odp3".into(), "7".into()));
        assert!(parse_table("Can't find backend.\n", ' ', "srv_name", "x").is_none());
    }

    #[tokio::test]
    async fn an_unreachable_socket_is_an_error_naming_it() {
        let h = HaProxy::new(
            &HaProxyConfig {
                socket: Socket::Unix("/nonexistent/admin.sock".into()),
                backend: "odp".into(),
            },
            Duration::from_secs(1),
        );
        let e = h.set("odp1", ServerState::Drain).await.unwrap_err();
        assert!(matches!(e, LbError::Connect { .. }), "{e:?}");
        assert!(e.to_string().contains("/nonexistent/admin.sock"), "{e}");
    }
}
