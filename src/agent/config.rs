//! The agent's configuration: the TOML file parsed once, at start, into typed
//! values; the rest of the agent never sees strings from the file.
pub mod obproxy_args;
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{
    agent::admin_sql::{AdminSettings, RestartStrategy},
    common::{
        config_file::{self, ConfigError, MetricsSection},
        grpc_server::settings::{ServerSection, Settings},
        rpc_validate::MAX_EXIT_TIMEOUT,
    },
    security::config::{AuditConfig, AuthConfig, Security, TlsConfig},
};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// gRPC: the TCP address, the local socket, the bounds on callers.
    pub server: Settings,
    pub obproxy: ObproxyConfig,
    pub state: StateConfig,
    /// Where `GET /metrics` listens; None: no metrics endpoint.
    pub metrics: Option<SocketAddr>,
    /// TLS, callers' roles and the audit log (`[tls]`, `[auth]`, `[audit]`).
    pub security: Security,
}

#[derive(Debug, Clone)]
pub struct ObproxyConfig {
    /// Working directory of obproxy (its `etc/`, `log/` live there).
    pub home: PathBuf,
    /// Absolute path of the binary (resolved against `home`).
    pub binary: PathBuf,
    /// The user's arguments, without the `-o` string (kept in `optstr`).
    pub args: Vec<String>,
    /// The single `-o k=v,...` string the user configured, if any.
    pub optstr: Option<String>,
    /// SQL listeners the agent binds, holds and hands over.
    pub listen: Vec<SocketAddr>,
    /// RPC listeners (obproxy 4.3+) the agent binds, holds and hands over as
    /// `OBPROXY_INHERITED_RPC_FD` / `_RPC_IPV6_FD`. None: obproxy's default,
    /// port 2885 on the SQL listeners' addresses.
    pub rpc_listen: Option<Vec<SocketAddr>>,
    /// The user's `-o` leaves 4.3's RPC service on (its default).
    pub rpc_service: bool,
    pub hot_upgrade_exit_timeout: Duration,
    pub start_timeout: Duration,
    pub stop_timeout: Duration,
    /// The only directory a hot upgrade may take its binary from (a
    /// `RestartRequest.binary` must resolve inside it), so a caller cannot
    /// make the agent run an arbitrary program.
    pub upgrade_dir: PathBuf,
    /// Admin SQL (`sys_password_file`) and the HOT restart strategy.
    pub admin: AdminSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    pub dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: ServerSection,
    obproxy: RawObproxy,
    state: StateConfig,
    #[serde(default)]
    metrics: Option<MetricsSection>,
    #[serde(default)]
    tls: Option<TlsConfig>,
    #[serde(default)]
    auth: AuthConfig,
    #[serde(default)]
    audit: AuditConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObproxy {
    home: PathBuf,
    #[serde(default = "default_binary")]
    binary: PathBuf,
    #[serde(default)]
    args: Vec<String>,
    listen: Vec<SocketAddr>,
    #[serde(default)]
    rpc_listen: Option<Vec<SocketAddr>>,
    #[serde(
        default = "default_exit_timeout",
        deserialize_with = "config_file::duration"
    )]
    hot_upgrade_exit_timeout: Duration,
    #[serde(
        default = "default_start_timeout",
        deserialize_with = "config_file::duration"
    )]
    start_timeout: Duration,
    #[serde(
        default = "default_stop_timeout",
        deserialize_with = "config_file::duration"
    )]
    stop_timeout: Duration,
    /// Relative to home, or absolute; default: the binary's directory.
    #[serde(default)]
    upgrade_dir: Option<PathBuf>,
    /// Relative to the configuration file, or absolute.
    #[serde(default)]
    sys_password_file: Option<PathBuf>,
    #[serde(default)]
    restart_strategy: RestartStrategy,
}

fn default_binary() -> PathBuf {
    PathBuf::from("bin/obproxy")
}
fn default_exit_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_start_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_stop_timeout() -> Duration {
    Duration::from_secs(10)
}

impl AgentConfig {
    /// The embedded default: the agent on loopback (gRPC 2889, SQL 2883)
    /// with the obproxy stand-in that sits beside the agent's executable.
    pub fn demo(dir: &Path, standin: &Path) -> Result<Self, ConfigError> {
        let text = format!(
            r#"[server]
listen = "127.0.0.1:2889"

[obproxy]
home = {home:?}
binary = {binary:?}
args = ["-n", "demo", "-c", "democluster"]
listen = ["127.0.0.1:2883"]
rpc_listen = ["127.0.0.1:2885"]
hot_upgrade_exit_timeout = "30s"
start_timeout = "60s"
stop_timeout = "10s"

[state]
dir = {state:?}
"#,
            home = dir.join("odp").display().to_string(),
            binary = standin.display().to_string(),
            state = dir.join("state").display().to_string(),
        );
        std::fs::create_dir_all(dir.join("odp"))
            .map_err(|e| ConfigError::new(dir, "obproxy.home", e.to_string()))?;
        Self::parse(&dir.join("demo.toml"), &text)
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = config_file::load(path)?;
        Self::from_raw(path, raw)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = config_file::parse(path, text)?;
        Self::from_raw(path, raw)
    }

    fn from_raw(path: &Path, raw: RawConfig) -> Result<Self, ConfigError> {
        let err = |key: &str, reason: String| ConfigError::new(path, key, reason);
        let base = config_file::base_dir(path);
        let o = raw.obproxy;
        let home = base.join(&o.home);
        let binary = home.join(&o.binary);
        if o.binary.as_os_str().is_empty() {
            return Err(err("obproxy.binary", "must not be empty".into()));
        }
        if o.listen.is_empty() {
            return Err(err(
                "obproxy.listen",
                "needs at least one address, e.g. [\"0.0.0.0:2883\"]".into(),
            ));
        }
        let v4 = o.listen.iter().filter(|a| a.is_ipv4()).count();
        let v6 = o.listen.iter().filter(|a| a.is_ipv6()).count();
        if v4 != 1 || v6 > 1 {
            return Err(err(
                "obproxy.listen",
                format!(
                    "obproxy inherits exactly one IPv4 listener and at most one IPv6 listener \
                     (OBPROXY_INHERITED_FD, OBPROXY_INHERITED_IPV6_FD); got {v4} IPv4 and {v6} IPv6"
                ),
            ));
        }
        if o.hot_upgrade_exit_timeout > MAX_EXIT_TIMEOUT {
            return Err(err(
                "obproxy.hot_upgrade_exit_timeout",
                format!(
                    "{} is longer than the {} limit",
                    humantime::format_duration(o.hot_upgrade_exit_timeout),
                    humantime::format_duration(MAX_EXIT_TIMEOUT)
                ),
            ));
        }
        for (key, value) in [
            ("obproxy.start_timeout", o.start_timeout),
            ("obproxy.stop_timeout", o.stop_timeout),
        ] {
            if value.is_zero() {
                return Err(err(key, "must be longer than zero".into()));
            }
        }
        let (args, optstr) =
            obproxy_args::split(&o.args).map_err(|reason| err("obproxy.args", reason))?;
        let rpc_service = !obproxy_args::rpc_service_off(optstr.as_deref());
        if let Some(rpc) = &o.rpc_listen {
            check_rpc_listen(&o.listen, rpc, rpc_service)
                .map_err(|reason| err("obproxy.rpc_listen", reason))?;
        }
        let upgrade_dir = match &o.upgrade_dir {
            Some(dir) if dir.as_os_str().is_empty() => {
                return Err(err("obproxy.upgrade_dir", "must not be empty".into()));
            }
            Some(dir) => home.join(dir),
            None => binary
                .parent()
                .map_or_else(|| home.clone(), Path::to_path_buf),
        };
        let state_dir = base.join(&raw.state.dir);
        let password_file = o.sys_password_file.as_ref().map(|f| base.join(f));
        let admin = AdminSettings::resolve(password_file.as_deref(), o.restart_strategy)
            .map_err(|(key, reason)| err(key, reason))?;
        let server = raw
            .server
            .resolve(path, &base, state_dir.join("grpc.sock"))?;
        let security = Security::resolve(
            path,
            &base,
            raw.server.exposure(),
            raw.tls,
            raw.auth,
            raw.audit,
            state_dir.join("audit.log"),
        )?;
        Ok(Self {
            server,
            obproxy: ObproxyConfig {
                home,
                binary,
                args,
                optstr,
                listen: o.listen,
                rpc_listen: o.rpc_listen,
                rpc_service,
                hot_upgrade_exit_timeout: o.hot_upgrade_exit_timeout,
                start_timeout: o.start_timeout,
                stop_timeout: o.stop_timeout,
                upgrade_dir,
                admin,
            },
            state: StateConfig { dir: state_dir },
            metrics: raw.metrics.map(|m| m.listen),
            security,
        })
    }
}

/// obproxy's default `rpc_listen_port`.
pub const DEFAULT_RPC_PORT: u16 = 2885;

impl ObproxyConfig {
    /// The RPC listeners to hold for a 4.3+ obproxy with its RPC service on:
    /// as configured, or obproxy's own default (port 2885 on the addresses
    /// of the SQL listeners, as obproxy binds `local_bound_ip`).
    pub fn rpc_addrs(&self) -> Vec<SocketAddr> {
        match &self.rpc_listen {
            Some(addrs) => addrs.clone(),
            None => self
                .listen
                .iter()
                .map(|a| SocketAddr::new(a.ip(), DEFAULT_RPC_PORT))
                .collect(),
        }
    }
}

/// obproxy applies one `ip_listen_mode` to SQL and RPC alike, and with mode
/// 3 an inherited RPC start uses both RPC fds: the families must match.
fn check_rpc_listen(
    sql: &[SocketAddr],
    rpc: &[SocketAddr],
    rpc_service: bool,
) -> Result<(), String> {
    if !rpc_service {
        return Err(
            "-o enable_obproxy_rpc_service=false turns the RPC service off; remove one of them"
                .into(),
        );
    }
    let v4 = rpc.iter().filter(|a| a.is_ipv4()).count();
    let v6 = rpc.iter().filter(|a| a.is_ipv6()).count();
    let sql_v6 = sql.iter().filter(|a| a.is_ipv6()).count();
    if v4 != 1 || v6 != sql_v6.min(1) {
        return Err(format!(
            "obproxy inherits one IPv4 RPC listener, and an IPv6 one exactly when [obproxy] listen \
             has one (ip_listen_mode covers both; OBPROXY_INHERITED_RPC_FD, OBPROXY_INHERITED_RPC_IPV6_FD); \
             got {v4} IPv4 and {v6} IPv6 for {sql_v6} IPv6 SQL listener(s). To turn RPC off, put \
             enable_obproxy_rpc_service=false in -o"
        ));
    }
    for r in rpc {
        if r.port() != 0
            && sql
                .iter()
                .any(|s| s.port() == r.port() && s.is_ipv4() == r.is_ipv4())
        {
            return Err(format!("{r} takes the port of an SQL listener"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:2889"

[obproxy]
home = "/home/admin/obproxy"
binary = "bin/obproxy"
args = ["-n", "myapp", "-o", "enable_metadb=false", "-c", "mycluster"]
listen = ["0.0.0.0:2883", "[::]:2883"]
hot_upgrade_exit_timeout = "30s"
start_timeout = "60s"
stop_timeout = "10s"

[state]
dir = "/var/lib/odp-agent"
"#;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(Path::new("/etc/odp-agent.toml"), text)
    }

    #[test]
    fn the_documented_example_parses_into_typed_values() {
        let c = parse(GOOD).unwrap();
        assert_eq!(
            c.obproxy.binary,
            PathBuf::from("/home/admin/obproxy/bin/obproxy")
        );
        assert_eq!(c.obproxy.optstr.as_deref(), Some("enable_metadb=false"));
        assert_eq!(c.obproxy.args, ["-n", "myapp", "-c", "mycluster"]);
        assert_eq!(c.obproxy.hot_upgrade_exit_timeout, Duration::from_secs(30));
        assert_eq!(c.obproxy.listen.len(), 2);
    }

    #[test]
    fn two_optstrs_are_refused_because_obproxy_keeps_only_the_last() {
        let text = GOOD.replace(r#""-c", "mycluster""#, r#""-o", "a=b""#);
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key, "obproxy.args");
        assert!(e.reason.contains("more than one -o"), "{e}");
    }

    #[test]
    fn the_drain_window_in_optstr_is_refused() {
        let text = GOOD.replace("enable_metadb=false", "hot_upgrade_exit_timeout=1000");
        assert_eq!(parse(&text).unwrap_err().key, "obproxy.args");
    }

    #[test]
    fn rpc_listen_defaults_to_port_2885_on_the_sql_addresses() {
        let c = parse(GOOD).unwrap();
        assert!(c.obproxy.rpc_service);
        assert_eq!(
            c.obproxy.rpc_addrs(),
            [
                "0.0.0.0:2885".parse::<SocketAddr>().unwrap(),
                "[::]:2885".parse().unwrap()
            ]
        );
        let text = GOOD.replace(
            "hot_upgrade_exit_timeout",
            "rpc_listen = [\"0.0.0.0:3885\", \"[::]:3885\"]\nhot_upgrade_exit_timeout",
        );
        assert_eq!(parse(&text).unwrap().obproxy.rpc_addrs()[0].port(), 3885);
    }

    #[test]
    fn rpc_listen_must_match_the_sql_families_and_the_rpc_service() {
        let with = |rpc: &str| {
            GOOD.replace(
                "hot_upgrade_exit_timeout",
                &format!("rpc_listen = {rpc}\nhot_upgrade_exit_timeout"),
            )
        };
        let e = parse(&with(r#"["0.0.0.0:2885"]"#)).unwrap_err();
        assert_eq!(e.key, "obproxy.rpc_listen");
        assert!(e.reason.contains("ip_listen_mode"), "{e}");
        let e = parse(&with(r#"[]"#)).unwrap_err();
        assert!(e.reason.contains("enable_obproxy_rpc_service=false"), "{e}");
        let e = parse(&with(r#"["0.0.0.0:2883", "[::]:2885"]"#)).unwrap_err();
        assert!(e.reason.contains("port of an SQL listener"), "{e}");
        let off = with(r#"["0.0.0.0:2885", "[::]:2885"]"#)
            .replace("enable_metadb=false", "enable_obproxy_rpc_service=false");
        assert_eq!(parse(&off).unwrap_err().key, "obproxy.rpc_listen");
        let off = GOOD.replace("enable_metadb=false", "enable_obproxy_rpc_service=false");
        assert!(!parse(&off).unwrap().obproxy.rpc_service);
    }

    #[test]
    fn a_listen_port_flag_is_refused() {
        let text = GOOD.replace(r#""-n", "myapp""#, r#""-p", "2883""#);
        assert!(
            parse(&text)
                .unwrap_err()
                .reason
                .contains("[obproxy] listen")
        );
    }

    #[test]
    fn two_ipv4_listeners_are_refused() {
        let text = GOOD.replace(r#""[::]:2883""#, r#""127.0.0.1:2884""#);
        assert_eq!(parse(&text).unwrap_err().key, "obproxy.listen");
    }

    #[test]
    fn a_bad_address_names_its_key() {
        let text = GOOD.replace("127.0.0.1:2889", "localhost");
        assert_eq!(parse(&text).unwrap_err().key, "server.listen");
    }

    #[test]
    fn a_zero_start_timeout_is_refused() {
        let text = GOOD.replace(r#"start_timeout = "60s""#, r#"start_timeout = "0s""#);
        assert_eq!(parse(&text).unwrap_err().key, "obproxy.start_timeout");
    }

    #[test]
    fn metrics_are_off_unless_configured() {
        assert_eq!(parse(GOOD).unwrap().metrics, None);
        let text = format!("{GOOD}\n[metrics]\nlisten = \"127.0.0.1:9091\"\n");
        assert_eq!(
            parse(&text).unwrap().metrics,
            Some("127.0.0.1:9091".parse().unwrap())
        );
    }

    #[test]
    fn a_bad_metrics_address_names_its_key() {
        let text = format!("{GOOD}\n[metrics]\nlisten = \"localhost\"\n");
        assert_eq!(parse(&text).unwrap_err().key, "metrics.listen");
        let text = format!("{GOOD}\n[metrics]\nlisten = \"127.0.0.1:9091\"\nport = 9091\n");
        let e = parse(&text).unwrap_err();
        assert!(e.to_string().contains("port"), "{e}");
    }

    #[test]
    fn a_bare_file_name_reads_paths_against_the_current_directory() {
        let text = GOOD.replace("/home/admin/obproxy", "odp");
        let c = AgentConfig::parse(Path::new("agent.toml"), &text).unwrap();
        assert!(c.obproxy.binary.is_absolute(), "{:?}", c.obproxy.binary);
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let text = GOOD
            .replace("/home/admin/obproxy", "odp")
            .replace("/var/lib/odp-agent", "state");
        let c = AgentConfig::parse(Path::new("/srv/x/agent.toml"), &text).unwrap();
        assert_eq!(c.obproxy.binary, PathBuf::from("/srv/x/odp/bin/obproxy"));
        assert_eq!(c.state.dir, PathBuf::from("/srv/x/state"));
    }

    #[test]
    fn security_sections_resolve_paths_against_the_file() {
        let text = format!(
            "{GOOD}
[tls]
cert = \"tls/agent.pem\"
key = \"tls/agent.key\"
client_ca = \"/etc/pki/ca.pem\"

[[auth.certificates]]
subject_cn = \"odp-coordinator\"
role = \"OBPROXY_MANAGER\"

[audit]
path = \"log/audit.log\"
"
        )
        .replace("127.0.0.1:2889", "0.0.0.0:2889");
        let c = AgentConfig::parse(Path::new("/srv/x/agent.toml"), &text).unwrap();
        let tls = c.security.tls.unwrap();
        assert_eq!(tls.cert, PathBuf::from("/srv/x/tls/agent.pem"));
        assert_eq!(tls.client_ca, Some(PathBuf::from("/etc/pki/ca.pem")));
        assert_eq!(c.security.audit_path, PathBuf::from("/srv/x/log/audit.log"));
    }

    #[test]
    fn the_audit_log_defaults_to_the_state_directory() {
        assert_eq!(
            parse(GOOD).unwrap().security.audit_path,
            PathBuf::from("/var/lib/odp-agent/audit.log")
        );
    }

    #[test]
    fn the_network_without_tls_is_refused_naming_the_listen_key() {
        let e = parse(&GOOD.replace("127.0.0.1:2889", "0.0.0.0:2889")).unwrap_err();
        assert_eq!(e.key, "server.listen");
        assert!(e.reason.contains("127.0.0.1"), "{e}");
    }

    #[test]
    fn an_unknown_security_key_is_refused() {
        let e = parse(&format!("{GOOD}\n[auth]\nusers = []\n")).unwrap_err();
        assert!(e.to_string().contains("users"), "{e}");
        let e = parse(&format!(
            "{GOOD}\n[[auth.tokens]]\nname = \"ops\"\nsha256 = \"not-a-hash\"\nrole = \"OBPROXY_MANAGER\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "auth.tokens[0].sha256");
        let e = parse(&format!(
            "{GOOD}\n[[auth.tokens]]\nname = \"ops\"\nsha256 = \"{}\"\nrole = \"ROOT\"\n",
            "a".repeat(64)
        ))
        .unwrap_err();
        assert_eq!(e.key, "auth.tokens[0].role");
    }

    #[test]
    fn the_upgrade_dir_defaults_to_the_binary_directory() {
        let c = parse(GOOD).unwrap();
        assert_eq!(
            c.obproxy.upgrade_dir,
            PathBuf::from("/home/admin/obproxy/bin")
        );
        let text = GOOD.replace(
            "stop_timeout = \"10s\"",
            "stop_timeout = \"10s\"\nupgrade_dir = \"releases\"",
        );
        assert_eq!(
            parse(&text).unwrap().obproxy.upgrade_dir,
            PathBuf::from("/home/admin/obproxy/releases")
        );
    }

    #[test]
    fn max_message_bytes_is_bounded() {
        assert_eq!(
            parse(GOOD).unwrap().server.max_message_bytes,
            config_file::DEFAULT_MAX_MESSAGE_BYTES
        );
        for bad in ["0", "100", "1000000000000"] {
            let text = GOOD.replace(
                "listen = \"127.0.0.1:2889\"",
                &format!("listen = \"127.0.0.1:2889\"\nmax_message_bytes = {bad}"),
            );
            assert_eq!(parse(&text).unwrap_err().key, "server.max_message_bytes");
        }
        let text = GOOD.replace(
            "listen = \"127.0.0.1:2889\"",
            "listen = \"127.0.0.1:2889\"\nmax_message_bytes = -1",
        );
        assert_eq!(parse(&text).unwrap_err().key, "server.max_message_bytes");
    }
}
