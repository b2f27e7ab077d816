//! The console for tests: a coordinator with `[web] listen` and two bearer
//! tokens (an operator and a viewer) over real agents, and a plain HTTP/1.1
//! client that keeps to what a browser sends (cookies, forms).
use std::{net::SocketAddr, path::PathBuf};

use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{Agent, PATIENCE, cluster::Cluster, log_field};

pub const OPERATOR_TOKEN: &str = "console-operator-token";
pub const VIEWER_TOKEN: &str = "console-viewer-token";

fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The coordinator's `[web]` section and the tokens it signs in with.
pub fn web_toml() -> String {
    format!(
        r#"
[web]
listen = "127.0.0.1:0"

[[auth.tokens]]
name = "oncall"
sha256 = "{}"
role = "OBPROXY_MANAGER"

[[auth.tokens]]
name = "dashboard"
sha256 = "{}"
role = "READ_ONLY"
"#,
        sha256(OPERATOR_TOKEN),
        sha256(VIEWER_TOKEN)
    )
}

pub struct Console {
    pub cluster: Cluster,
    /// Where the console listens, from the coordinator's startup log.
    pub addr: SocketAddr,
}

impl Console {
    pub fn start(agents: Vec<Agent>) -> Self {
        let cluster = Cluster::with_config(agents, &[], &web_toml());
        let addr = {
            let log = cluster.log.lock().unwrap();
            let addr = log.iter().find_map(|l| log_field(l, "console_addr"));
            addr.unwrap_or_else(|| panic!("no console_addr in the log:\n{}", log.join("\n")))
                .parse()
                .unwrap()
        };
        Self { cluster, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The audit log (beside the task store), one JSON value a line.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        let path: PathBuf = self.cluster.dir.path().join("audit.log");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Signs in with `token`: the session cookie (`name=value`).
    pub async fn sign_in(&self, token: &str) -> String {
        let reply = self
            .send("POST", "/signin", None, Some(&format!("token={token}")))
            .await;
        assert_eq!(reply.status, 303, "{}", reply.body);
        let cookie = reply.header("set-cookie").expect("a session cookie");
        cookie.split(';').next().unwrap().to_string()
    }

    /// The session's CSRF token, as its pages carry it.
    pub async fn csrf(&self, cookie: &str) -> String {
        let page = self.send("GET", "/clusters", Some(cookie), None).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let rest = page
            .body
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .expect("a form with the CSRF token");
        rest.split('"').next().unwrap().to_string()
    }

    /// One request, `Connection: close`, the whole answer read.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        cookie: Option<&str>,
        form: Option<&str>,
    ) -> Reply {
        self.send_from(None, method, path, cookie, form).await
    }

    /// [`Console::send`] from the loopback address `source` (any of 127.0.0.0/8) when given:
    /// another client, as far as the console can tell.
    pub async fn send_from(
        &self,
        source: Option<std::net::Ipv4Addr>,
        method: &str,
        path: &str,
        cookie: Option<&str>,
        form: Option<&str>,
    ) -> Reply {
        let addr = self.addr;
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        if let Some(c) = cookie {
            request.push_str(&format!("Cookie: {c}\r\n"));
        }
        let body = form.unwrap_or("");
        if form.is_some() {
            request.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(body);
        let exchange = async {
            let mut stream = match source {
                None => TcpStream::connect(addr).await?,
                Some(ip) => {
                    let socket = tokio::net::TcpSocket::new_v4()?;
                    socket.bind((ip, 0).into())?;
                    socket.connect(addr).await?
                }
            };
            stream.write_all(request.as_bytes()).await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            std::io::Result::Ok(response)
        };
        let raw = tokio::time::timeout(PATIENCE, exchange)
            .await
            .expect("no HTTP answer in time")
            .expect("HTTP exchange failed");
        Reply::parse(&String::from_utf8(raw).expect("a text answer"))
    }

    /// A task's live feed, read until its `end` event: the event names in
    /// order, and the data of the last `task` event.
    pub async fn events(&self, cookie: &str, id: &str) -> (Vec<String>, String) {
        let addr = self.addr;
        let request = format!(
            "GET /tasks/{id}/events HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nAccept: text/event-stream\r\n\r\n"
        );
        let read = async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut text = String::new();
            let mut buf = [0u8; 8192];
            while !text.contains("event: end") {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "the feed ended without an end event:\n{text}");
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            text
        };
        let text = tokio::time::timeout(PATIENCE, read)
            .await
            .expect("the feed did not end in time");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("content-type: text/event-stream")
        );
        let mut names = Vec::new();
        let mut last = String::new();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix("event: ") {
                names.push(name.to_string());
            }
            if let Some(data) = line.strip_prefix("data: ")
                && names.last().is_some_and(|n| n == "task")
            {
                last = data.to_string();
            }
        }
        (names, last)
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    fn parse(raw: &str) -> Self {
        let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .expect("a status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        let body = if chunked {
            super::unchunk(body)
        } else {
            body.to_string()
        };
        Self {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}
