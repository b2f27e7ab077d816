//! The command line: obproxy's getopt flags, its single `-o` config string, and the stand-in's test knobs.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};

/// obproxy's built-in SQL port when neither `-p` nor a config file names one.
const DEFAULT_LISTEN_PORT: u16 = 6688;
const DEFAULT_VERSION: &str = "4.3.1.0";
const DEFAULT_RELEASE_ID: &str = "1";
/// obproxy's `hot_upgrade_exit_timeout` default: 30 s.
const DEFAULT_DRAIN_WINDOW: Duration = Duration::from_secs(30);
/// obproxy's `delay_exit_time` default and ceiling.
const DEFAULT_QUICK_EXIT_DELAY: Duration = Duration::from_millis(100);
const MAX_QUICK_EXIT_DELAY: Duration = Duration::from_millis(500);

/// What the command line asks for. `-V`, `-R` and `-h` act as soon as getopt meets them, like
/// obproxy's, so options after them are never read.
#[derive(Debug)]
pub enum Action {
    Run(Box<Config>),
    /// `-V`: carries the version to print, from the `-o` seen so far or the environment.
    PrintVersion(String),
    PrintReleaseId,
    PrintUsage,
}

/// Everything the stand-in runs with, parsed once into typed values.
#[derive(Debug)]
pub struct Config {
    /// `-p`: the SQL port bound when no listener is inherited.
    pub listen_port: u16,
    /// `-l`: the exporter port, bound by every process (never inherited).
    pub prometheus_port: Option<u16>,
    /// `-N`: a fresh start stays in the foreground instead of daemonizing.
    pub nodaemon: bool,
    /// `hot_upgrade_exit_timeout`: how long a SIGUSR1 drain may last.
    pub drain_window: Window,
    /// `delay_exit_time`: how long SIGTERM/SIGINT let connections finish.
    pub quick_exit_delay: Duration,
    pub knobs: Knobs,
}

/// The test knobs: each is a `-o` item whose default comes from an environment variable,
/// because the agent runs `binary -V` with no other argument.
#[derive(Debug)]
pub struct Knobs {
    /// `standin_version`: printed by `-V` exactly as given.
    pub version: String,
    /// `standin_start_delay`: wait this long before listening and readiness.
    pub start_delay: Duration,
    /// `standin_fail_start`: give up after the start delay, without readiness.
    pub fail_start: bool,
    /// `standin_no_ready`: serve, but never send the readiness signal.
    pub no_ready: bool,
    /// `standin_ignore_signals`: SIGTERM, SIGINT and SIGUSR1 are ignored; only SIGKILL stops it.
    pub ignore_signals: bool,
    /// `standin_backend`: where connections are forwarded; `None` echoes.
    pub backend: Option<Backend>,
    /// `standin_strict`: follow obproxy's source where it is narrower than the documented
    /// contract (readiness only on inherited listeners, no SIGUSR2 after SIGTERM/SIGINT, a
    /// drain closes a session only as it completes a response, never while it sits idle).
    pub strict: bool,
}

#[derive(Debug, Clone)]
pub struct Backend {
    /// As configured, for the logs.
    pub name: String,
    /// Resolved once at start; a connect tries them in order.
    pub addrs: Vec<SocketAddr>,
}

/// A drain window: `-1` in obproxy's config means no limit, `0` means cut at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Unlimited,
    Within(Duration),
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Window::Unlimited => f.write_str("unlimited"),
            // "1s500ms", not "1s 500ms": log values must not contain spaces.
            Window::Within(d) => {
                let text = humantime::format_duration(*d).to_string();
                f.write_str(&text.replace(' ', ""))
            }
        }
    }
}

/// obproxy's getopt table (src/obproxy/ob_proxy_main.cpp), complete so that long-option
/// prefixes are ambiguous exactly where obproxy's are.
const FLAGS: &[(&str, char, bool)] = &[
    ("help", 'h', false),
    ("listen_port", 'p', true),
    ("prometheus_listen_port", 'l', true),
    ("rpc_listen_port", 's', true),
    ("upgrade_ver", 'u', true),
    ("dump_config_sql", 'd', false),
    ("execute_config_sql", 'e', false),
    ("test_mysql_port", 'P', true),
    ("test_mysql_ip", 'H', true),
    ("optstr", 'o', true),
    ("appname", 'n', true),
    ("rs_list", 'r', true),
    ("cluster_name", 'c', true),
    ("nodaemon", 'N', false),
    ("version", 'V', false),
    ("releaseid", 'R', false),
    ("regression_test", 't', true),
    ("config_yaml", 'C', false),
];

pub const USAGE: &str = "\
obproxy [OPTIONS]   (obproxy stand-in for tests)
  -h,--help                              print this help
  -p,--listen_port         LPORT         obproxy listen port
  -l,--prometheus_listen_port  PLPORT    obproxy prometheus listen port
  -s,--rpc_listen_port     PLPORT        obproxy rpc service listen port
  -o,--optstr              OPTSTR        extra options string
  -n,--appname             APPNAME       application name
  -r,--rs_list             RS_LIST       root server list(format ip:sql_port)
  -c,--cluster_name        CLUSTER_NAME  root server cluster name
  -N,--nodaemon                          don't run in daemon
  -V,--version                           current obproxy version
  -R,--releaseid                         current obproxy kernel release id
stand-in knobs (-o item, or environment variable):
  standin_version          ODP_STANDIN_VERSION         version printed by -V
  standin_start_delay      ODP_STANDIN_START_DELAY     wait before listening (e.g. 2s)
  standin_fail_start       ODP_STANDIN_FAIL_START      fail after the delay, no readiness
  standin_no_ready         ODP_STANDIN_NO_READY        serve, never signal readiness
  standin_ignore_signals   ODP_STANDIN_IGNORE_SIGNALS  ignore SIGTERM/SIGINT/SIGUSR1
  standin_backend          ODP_STANDIN_BACKEND         HOST:PORT to forward to (else echo)
  standin_strict           ODP_STANDIN_STRICT          obproxy-source signal and drain rules";

pub fn release_id() -> &'static str {
    DEFAULT_RELEASE_ID
}

/// Parses `args` (without argv[0]) the way obproxy's getopt_long loop does. An `Err` is the
/// message getopt or obproxy would print before the usage text.
pub fn parse(args: &[String]) -> anyhow::Result<Action> {
    let mut listen_port = None;
    let mut prometheus_port = None;
    let mut nodaemon = false;
    // Stored, not merged: a second -o replaces the first, as `opts.optstr_ = value` does.
    let mut optstr: Option<String> = None;

    let mut getopt = Getopt::new(args);
    while let Some((flag, value)) = getopt.next_flag()? {
        match flag {
            'p' => listen_port = Some(parse_port(value.as_deref())?),
            'l' => prometheus_port = Some(parse_port(value.as_deref())?),
            // Validated like obproxy, but the stand-in serves no RPC protocol.
            's' => {
                parse_port(value.as_deref())?;
            }
            'o' => optstr = value,
            'N' => nodaemon = true,
            'V' => return Ok(Action::PrintVersion(version(optstr.as_deref())?)),
            'R' => return Ok(Action::PrintReleaseId),
            'h' => return Ok(Action::PrintUsage),
            // -n, -r, -c and obproxy's test-only flags are accepted and have no effect here.
            _ => {}
        }
    }

    let items = ConfigItems::parse(optstr.as_deref())?;
    Ok(Action::Run(Box::new(Config {
        listen_port: listen_port.unwrap_or(DEFAULT_LISTEN_PORT),
        prometheus_port,
        nodaemon,
        drain_window: match items.get("hot_upgrade_exit_timeout") {
            None => Window::Within(DEFAULT_DRAIN_WINDOW),
            Some(v) => parse_window(v).context("hot_upgrade_exit_timeout")?,
        },
        quick_exit_delay: match items.get("delay_exit_time") {
            None => DEFAULT_QUICK_EXIT_DELAY,
            Some(v) => parse_duration(v)
                .context("delay_exit_time")?
                .min(MAX_QUICK_EXIT_DELAY),
        },
        knobs: Knobs::parse(&items)?,
    })))
}

fn version(optstr: Option<&str>) -> anyhow::Result<String> {
    let items = ConfigItems::parse(optstr)?;
    Ok(knob(&items, "standin_version", "ODP_STANDIN_VERSION")
        .unwrap_or_else(|| DEFAULT_VERSION.to_owned()))
}

impl Knobs {
    fn parse(items: &ConfigItems) -> anyhow::Result<Self> {
        let flag = |item, env| -> anyhow::Result<bool> {
            knob(items, item, env)
                .map(|v| parse_bool(&v).with_context(|| format!("{item}={v}")))
                .transpose()
                .map(|b| b.unwrap_or(false))
        };
        Ok(Knobs {
            version: knob(items, "standin_version", "ODP_STANDIN_VERSION")
                .unwrap_or_else(|| DEFAULT_VERSION.to_owned()),
            start_delay: knob(items, "standin_start_delay", "ODP_STANDIN_START_DELAY")
                .map(|v| parse_duration(&v).with_context(|| format!("standin_start_delay={v}")))
                .transpose()?
                .unwrap_or(Duration::ZERO),
            fail_start: flag("standin_fail_start", "ODP_STANDIN_FAIL_START")?,
            no_ready: flag("standin_no_ready", "ODP_STANDIN_NO_READY")?,
            ignore_signals: flag("standin_ignore_signals", "ODP_STANDIN_IGNORE_SIGNALS")?,
            strict: flag("standin_strict", "ODP_STANDIN_STRICT")?,
            backend: knob(items, "standin_backend", "ODP_STANDIN_BACKEND")
                .map(|v| parse_backend(&v).with_context(|| format!("standin_backend={v}")))
                .transpose()?,
        })
    }
}

/// A knob's value: the `-o` item wins over the environment; an empty variable counts as unset.
fn knob(items: &ConfigItems, item: &str, env: &str) -> Option<String> {
    items
        .get(item)
        .map(str::to_owned)
        .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
}

/// The items of one `-o name=value,name=value` string. Unknown names are kept and ignored, as
/// obproxy accepts any config item; the last of a repeated name wins.
struct ConfigItems(Vec<(String, String)>);

impl ConfigItems {
    fn parse(optstr: Option<&str>) -> anyhow::Result<Self> {
        let mut items = Vec::new();
        for item in optstr.unwrap_or("").split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let Some((name, value)) = item.split_once('=') else {
                bail!("invalid config item in -o: {item:?} (expected name=value)");
            };
            items.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        Ok(ConfigItems(items))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// obproxy's `str_to_port`: a whole decimal number above 1024 and below 65536.
fn parse_port(value: Option<&str>) -> anyhow::Result<u16> {
    let value = value.unwrap_or("");
    let port: i64 = value
        .parse()
        .with_context(|| format!("need port number: {value}"))?;
    if !(1025..=65535).contains(&port) {
        bail!("port number should greater than 1024 and less than 65536: {port}");
    }
    Ok(port as u16)
}

/// A plain integer is microseconds (obproxy's unit for these items); anything else is a
/// humantime duration such as `30s` or `500ms`.
fn parse_duration(value: &str) -> anyhow::Result<Duration> {
    if let Ok(us) = value.parse::<i64>() {
        let us = u64::try_from(us).with_context(|| format!("negative duration: {value}"))?;
        return Ok(Duration::from_micros(us));
    }
    humantime::parse_duration(value).with_context(|| format!("invalid duration: {value}"))
}

fn parse_window(value: &str) -> anyhow::Result<Window> {
    if value == "-1" {
        return Ok(Window::Unlimited);
    }
    parse_duration(value).map(Window::Within)
}

fn parse_bool(value: &str) -> anyhow::Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "on" | "yes" => Ok(true),
        "false" | "0" | "off" | "no" => Ok(false),
        _ => bail!("invalid boolean: {value}"),
    }
}

fn parse_backend(value: &str) -> anyhow::Result<Backend> {
    let addrs: Vec<SocketAddr> = value
        .to_socket_addrs()
        .with_context(|| format!("invalid HOST:PORT: {value}"))?
        .collect();
    if addrs.is_empty() {
        bail!("{value} resolves to no address");
    }
    Ok(Backend {
        name: value.to_owned(),
        addrs,
    })
}

/// A small getopt_long: short flags may be clustered (`-Np2883`), a value may be attached or
/// the next argument, long flags take `--name=value` or `--name value` and may be abbreviated
/// to a unique prefix; arguments that are not options are skipped, `--` ends the options.
struct Getopt<'a> {
    args: &'a [String],
    next: usize,
    /// The rest of a short-flag cluster still to read.
    cluster: Option<&'a str>,
}

impl<'a> Getopt<'a> {
    fn new(args: &'a [String]) -> Self {
        Getopt {
            args,
            next: 0,
            cluster: None,
        }
    }

    fn next_flag(&mut self) -> anyhow::Result<Option<(char, Option<String>)>> {
        if let Some(rest) = self.cluster.take() {
            return self.short(rest).map(Some);
        }
        while let Some(arg) = self.args.get(self.next) {
            self.next += 1;
            if arg == "--" {
                return Ok(None);
            }
            if let Some(long) = arg.strip_prefix("--") {
                return self.long(long).map(Some);
            }
            if let Some(short) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
                return self.short(short).map(Some);
            }
        }
        Ok(None)
    }

    fn short(&mut self, cluster: &'a str) -> anyhow::Result<(char, Option<String>)> {
        let mut chars = cluster.chars();
        let c = chars.next().expect("a cluster is never empty");
        let rest = chars.as_str();
        let Some(&(_, _, takes_value)) = FLAGS.iter().find(|(_, s, _)| *s == c) else {
            bail!("invalid option -- '{c}'");
        };
        if !takes_value {
            self.cluster = (!rest.is_empty()).then_some(rest);
            return Ok((c, None));
        }
        if !rest.is_empty() {
            return Ok((c, Some(rest.to_owned())));
        }
        let value = self
            .take_next()
            .with_context(|| format!("option requires an argument -- '{c}'"))?;
        Ok((c, Some(value)))
    }

    fn long(&mut self, body: &str) -> anyhow::Result<(char, Option<String>)> {
        let (name, attached) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (body, None),
        };
        let exact = FLAGS.iter().find(|(long, _, _)| *long == name);
        let matched = match exact {
            Some(flag) => flag,
            None => {
                let candidates: Vec<_> = FLAGS
                    .iter()
                    .filter(|(long, _, _)| long.starts_with(name))
                    .collect();
                match candidates.as_slice() {
                    [only] => *only,
                    [] => bail!("unrecognized option '--{name}'"),
                    _ => bail!("option '--{name}' is ambiguous"),
                }
            }
        };
        let &(long, short, takes_value) = matched;
        match (takes_value, attached) {
            (false, Some(_)) => bail!("option '--{long}' doesn't allow an argument"),
            (false, None) => Ok((short, None)),
            (true, Some(v)) => Ok((short, Some(v))),
            (true, None) => {
                let value = self
                    .take_next()
                    .with_context(|| format!("option '--{long}' requires an argument"))?;
                Ok((short, Some(value)))
            }
        }
    }

    fn take_next(&mut self) -> Option<String> {
        let value = self.args.get(self.next)?.clone();
        self.next += 1;
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    fn run(line: &str) -> Config {
        match parse(&args(line)).expect("parses") {
            Action::Run(config) => *config,
            other => panic!("expected a run, got {other:?}"),
        }
    }

    #[test]
    fn short_long_and_attached_forms_set_the_port() {
        assert_eq!(run("-p 2883").listen_port, 2883);
        assert_eq!(run("-p2883").listen_port, 2883);
        assert_eq!(run("--listen_port=2883").listen_port, 2883);
        assert_eq!(run("--listen_port 2883").listen_port, 2883);
        assert_eq!(run("--listen 2883").listen_port, 2883);
        assert_eq!(run("-Np2883").listen_port, 2883);
        assert!(run("-Np2883").nodaemon);
        assert_eq!(run("").listen_port, DEFAULT_LISTEN_PORT);
    }

    #[test]
    fn a_second_optstr_replaces_the_first() {
        let config = run("-o hot_upgrade_exit_timeout=0 -o delay_exit_time=200ms");
        assert_eq!(config.drain_window, Window::Within(DEFAULT_DRAIN_WINDOW));
        assert_eq!(config.quick_exit_delay, Duration::from_millis(200));
    }

    #[test]
    fn windows_accept_microseconds_humantime_and_minus_one() {
        let window = |v: &str| run(&format!("-o hot_upgrade_exit_timeout={v}")).drain_window;
        assert_eq!(window("30000000"), Window::Within(Duration::from_secs(30)));
        assert_eq!(window("5s"), Window::Within(Duration::from_secs(5)));
        assert_eq!(window("0"), Window::Within(Duration::ZERO));
        assert_eq!(window("-1"), Window::Unlimited);
        assert_eq!(
            run("-o delay_exit_time=3s").quick_exit_delay,
            MAX_QUICK_EXIT_DELAY
        );
    }

    #[test]
    fn unknown_items_are_ignored_but_malformed_knobs_are_errors() {
        assert!(parse(&args("-o enable_cluster_checkout=false,syslog_level=INFO")).is_ok());
        assert!(parse(&args("-o standin_fail_start=maybe")).is_err());
        assert!(parse(&args("-o standin_start_delay=soon")).is_err());
        assert!(parse(&args("-o hot_upgrade_exit_timeout=-5")).is_err());
        assert!(parse(&args("-o noequals")).is_err());
    }

    #[test]
    fn getopt_rejects_what_obproxy_rejects() {
        assert!(parse(&args("-x")).is_err());
        assert!(parse(&args("--bogus")).is_err());
        assert!(parse(&args("--r 1")).is_err(), "ambiguous prefix");
        assert!(parse(&args("-p")).is_err());
        assert!(
            parse(&args("-p 80")).is_err(),
            "obproxy wants a port above 1024"
        );
        assert!(parse(&args("--nodaemon=1")).is_err());
    }

    #[test]
    fn version_acts_when_met_with_the_optstr_seen_so_far() {
        match parse(&args("-o standin_version=3.1.0.0 -V")).unwrap() {
            Action::PrintVersion(v) => assert_eq!(v, "3.1.0.0"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&args("-V -x")).unwrap(),
            Action::PrintVersion(_)
        ));
        assert!(matches!(
            parse(&args("-R")).unwrap(),
            Action::PrintReleaseId
        ));
    }
}
