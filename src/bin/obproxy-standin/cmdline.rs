//! The command line: obproxy's getopt flags (src/obproxy/ob_proxy_main.cpp:88-135 at each tag) and what it echoes of them to stderr as it reads them.

use anyhow::{Context, bail};

use crate::profile::Line;

/// What the command line asks for. `-V`, `-R` and `-h` act as soon as getopt meets them, like
/// obproxy's (v4.3.1:src/obproxy/ob_proxy_main.cpp:276-291), so options after them are never
/// read.
#[derive(Debug)]
pub enum Action {
    Run(Box<CommandLine>),
    /// `-V`: carries the `-o` seen so far, where the version knob may be.
    PrintVersion(Option<String>),
    PrintReleaseId,
    PrintUsage,
}

/// The flags as given; they are applied over the config after `-o`, in the order
/// `init_user_specified_config` does (v4.3.1:src/obproxy/ob_proxy.cpp:500-540).
#[derive(Debug, Default)]
pub struct CommandLine {
    pub listen_port: Option<u16>,
    pub prometheus_port: Option<u16>,
    pub rpc_port: Option<u16>,
    /// Stored, not merged: a second `-o` replaces the first (`opts.optstr_ = value`, :256-259).
    pub optstr: Option<String>,
    pub app_name: Option<String>,
    pub rs_list: Option<String>,
    pub cluster_name: Option<String>,
    /// `-N`: a fresh start stays in the foreground instead of daemonizing.
    pub nodaemon: bool,
    /// What obproxy prints to stderr while it reads the flags (`MPRINT`, :214-298), the
    /// `-o` string and so any password in it included.
    pub echo: Vec<String>,
}

/// obproxy's getopt table at v4.3.1 (src/obproxy/ob_proxy_main.cpp:94-112), complete so
/// that long-option prefixes are ambiguous exactly where obproxy's are. `-s` exists from
/// 4.3 on only (v4.2.3:src/obproxy/ob_proxy_main.cpp:94-110 has no `rpc_listen_port`).
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
];

pub const USAGE: &str = "\
----------------------------------------------------------------------------------
obproxy [OPTIONS]   (obproxy stand-in for tests)
  -h,--help                              print this help
  -p,--listen_port         LPORT         obproxy listen port
  -l,--promethues_listen_port  PLPORT    obproxy prometheus listen port
  -s,--rpc_listen_port     PLPORT        obproxy rpc service listen port (4.3 and later)
  -o,--optstr              OPTSTR        extra options string
  -n,--appname             APPNAME       application name
  -r,--rs_list             RS_LIST       root server list(format ip:sql_port)
  -c,--cluster_name        CLUSTER_NAME  root server cluster name
  -N,--nodaemon                          don't run in daemon
  -V,--version             VERSION       current obproxy version
  -R,--releaseid           RELEASEID     current obproxy kernel release id
stand-in knobs (-o item, or environment variable):
  standin_version          ODP_STANDIN_VERSION         version reported; picks the 3.2/4.2/4.3 line
  standin_start_delay      ODP_STANDIN_START_DELAY     wait before listening (e.g. 2s)
  standin_fail_start       ODP_STANDIN_FAIL_START      fail after the delay, no readiness
  standin_no_ready         ODP_STANDIN_NO_READY        serve, never signal readiness
  standin_ignore_signals   ODP_STANDIN_IGNORE_SIGNALS  ignore SIGTERM/SIGINT/SIGUSR1
  standin_backend          ODP_STANDIN_BACKEND         HOST:PORT to forward to (else echo)
----------------------------------------------------------------------------------";

/// `RELEASEID`: the RPM release (deps/3rd/obproxy.spec:36); the stand-in has build 1.
pub const RELEASE_ID: &str = "1";

/// Parses `args` (without argv[0]) the way obproxy's getopt_long loop does. An `Err` is the
/// message getopt or obproxy would print before the usage text.
pub fn parse(args: &[String]) -> anyhow::Result<Action> {
    let mut cmd = CommandLine::default();
    let mut rpc_flag = None;
    let mut getopt = Getopt::new(args);
    while let Some((flag, value, spelled)) = getopt.next_flag()? {
        let v = value.clone().unwrap_or_default();
        match flag {
            'p' => {
                cmd.echo.push(format!("listen port: {v}"));
                cmd.listen_port = Some(parse_port(&v)?);
            }
            'l' => {
                cmd.echo.push(format!("prometheus listen port: {v}"));
                cmd.prometheus_port = Some(parse_port(&v)?);
            }
            's' => {
                rpc_flag = Some(spelled);
                cmd.echo.push(format!("rpc service listen port: {v}"));
                cmd.rpc_port = Some(parse_port(&v)?);
            }
            'o' => {
                cmd.echo.push(format!("optstr: {v}"));
                cmd.optstr = value;
            }
            'n' => {
                cmd.echo.push(format!("appname: {v}"));
                cmd.app_name = value;
            }
            'r' => {
                cmd.echo.push(format!("rs list: {v}"));
                cmd.rs_list = value;
            }
            'c' => {
                cmd.echo.push(format!("cluster_name: {v}"));
                cmd.cluster_name = value;
            }
            'N' => {
                cmd.echo.push("N: nodaemon".to_owned());
                cmd.nodaemon = true;
            }
            'V' => return Ok(Action::PrintVersion(cmd.optstr)),
            'R' => return Ok(Action::PrintReleaseId),
            'h' => return Ok(Action::PrintUsage),
            // -u, -d, -e, -t and obproxy's test-only flags are accepted and have no effect.
            _ => {}
        }
    }
    // The table depends on the version, which `-o` may carry: checked once it is known.
    if let Some(spelled) = rpc_flag
        && !Line::of(&crate::config::version(cmd.optstr.as_deref())).has_rpc()
    {
        match spelled {
            Some(long) => bail!("unrecognized option '--{long}'"),
            None => bail!("invalid option -- 's'"),
        }
    }
    Ok(Action::Run(Box::new(cmd)))
}

/// obproxy's `str_to_port`: a whole number above 1024 and below 65536 (:187-200).
fn parse_port(value: &str) -> anyhow::Result<u16> {
    let port: i64 = value
        .parse()
        .with_context(|| format!("need port number: {value}"))?;
    if !(1025..=65535).contains(&port) {
        bail!("port number should greater than 1024 and less than 65536: {port}");
    }
    Ok(port as u16)
}

/// One flag: its short letter, its value, and the long name as typed (for messages).
type Flag = (char, Option<String>, Option<String>);

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

    fn next_flag(&mut self) -> anyhow::Result<Option<Flag>> {
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

    fn short(&mut self, cluster: &'a str) -> anyhow::Result<Flag> {
        let mut chars = cluster.chars();
        let c = chars.next().expect("a cluster is never empty");
        let rest = chars.as_str();
        let Some(&(_, _, takes_value)) = FLAGS.iter().find(|(_, s, _)| *s == c) else {
            bail!("invalid option -- '{c}'");
        };
        if !takes_value {
            self.cluster = (!rest.is_empty()).then_some(rest);
            return Ok((c, None, None));
        }
        if !rest.is_empty() {
            return Ok((c, Some(rest.to_owned()), None));
        }
        let value = self
            .take_next()
            .with_context(|| format!("option requires an argument -- '{c}'"))?;
        Ok((c, Some(value), None))
    }

    fn long(&mut self, body: &str) -> anyhow::Result<Flag> {
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
            (false, None) => Ok((short, None, Some(name.to_owned()))),
            (true, Some(v)) => Ok((short, Some(v), Some(name.to_owned()))),
            (true, None) => {
                let value = self
                    .take_next()
                    .with_context(|| format!("option '--{long}' requires an argument"))?;
                Ok((short, Some(value), Some(name.to_owned())))
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

    fn run(line: &str) -> CommandLine {
        match parse(&args(line)).expect("parses") {
            Action::Run(cmd) => *cmd,
            other => panic!("expected a run, got {other:?}"),
        }
    }

    #[test]
    fn short_long_and_attached_forms_set_the_port() {
        assert_eq!(run("-p 2883").listen_port, Some(2883));
        assert_eq!(run("-p2883").listen_port, Some(2883));
        assert_eq!(run("--listen_port=2883").listen_port, Some(2883));
        assert_eq!(run("--listen_port 2883").listen_port, Some(2883));
        assert_eq!(run("--listen 2883").listen_port, Some(2883));
        assert_eq!(run("-Np2883").listen_port, Some(2883));
        assert!(run("-Np2883").nodaemon);
        assert_eq!(run("").listen_port, None);
    }

    #[test]
    fn a_second_optstr_replaces_the_first_and_each_is_echoed() {
        let cmd = run("-o a=1 -o b=2");
        assert_eq!(cmd.optstr.as_deref(), Some("b=2"));
        assert_eq!(cmd.echo, ["optstr: a=1", "optstr: b=2"]);
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
    fn the_rpc_flag_exists_from_4_3_on() {
        assert_eq!(run("-s 3885").rpc_port, Some(3885));
        assert!(parse(&args("-s 3885 -o standin_version=4.2.3.0")).is_err());
        assert!(parse(&args("--rpc_listen_port=3885 -o standin_version=3.2.3")).is_err());
    }

    #[test]
    fn version_acts_when_met_with_the_optstr_seen_so_far() {
        match parse(&args("-o standin_version=3.1.0.0 -V")).unwrap() {
            Action::PrintVersion(o) => assert_eq!(o.as_deref(), Some("standin_version=3.1.0.0")),
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
