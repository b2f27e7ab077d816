//! The user's obproxy arguments: the single `-o` string taken out (the agent
//! merges its own items into it) and the flags and items refused because the
//! agent owns what they set.
use crate::common::redact;

/// `-o` items the agent sets itself, with the key the user sets instead.
const AGENT_ITEMS: &[(&str, &str)] = &[
    (
        "hot_upgrade_exit_timeout",
        "set [obproxy] hot_upgrade_exit_timeout instead, so the agent and obproxy agree on the drain window",
    ),
    (
        "listen_port",
        "the agent holds the SQL listeners; set [obproxy] listen instead",
    ),
    (
        "local_bound_ip",
        "the agent holds the SQL listeners; set their addresses in [obproxy] listen instead",
    ),
    (
        "local_bound_ipv6_ip",
        "the agent holds the SQL listeners; set their addresses in [obproxy] listen instead",
    ),
    (
        "ip_listen_mode",
        "the agent sets it from [obproxy] listen (3 with an IPv6 listener, 1 without)",
    ),
    (
        "rpc_listen_port",
        "the agent holds the RPC listeners; set [obproxy] rpc_listen instead",
    ),
];

/// obproxy's long options (its getopt_long table, src/obproxy/ob_proxy_main.cpp):
/// getopt takes any unique prefix of one, so `--opt` is `--optstr`.
const LONG_OPTIONS: &[&str] = &[
    "help",
    "listen_port",
    "prometheus_listen_port",
    "rpc_listen_port",
    "upgrade_ver",
    "dump_config_sql",
    "execute_config_sql",
    "test_mysql_port",
    "test_mysql_ip",
    "optstr",
    "appname",
    "rs_list",
    "cluster_name",
    "nodaemon",
    "version",
    "releaseid",
    "regression_test",
    "config_yaml",
];

/// The long option `--name[=value]` stands for, as getopt resolves it.
fn long_option(arg: &str) -> Option<&'static str> {
    let name = arg.strip_prefix("--")?;
    let name = name.split_once('=').map_or(name, |(n, _)| n);
    if name.is_empty() {
        return None;
    }
    if let Some(exact) = LONG_OPTIONS.iter().find(|o| **o == name) {
        return Some(exact);
    }
    let mut matches = LONG_OPTIONS.iter().filter(|o| o.starts_with(name));
    match (matches.next(), matches.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    }
}

/// Splits `args` into the arguments passed as they are and the single `-o`
/// string; an `Err` is the reason, for `obproxy.args`.
pub fn split(args: &[String]) -> Result<(Vec<String>, Option<String>), String> {
    let mut rest = Vec::new();
    let mut optstr: Option<String> = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let long = long_option(arg);
        let value = match arg.as_str() {
            a if a == "-o" || (long == Some("optstr") && !a.contains('=')) => Some(
                iter.next()
                    .ok_or_else(|| format!("{arg} needs a value"))?
                    .clone(),
            ),
            a if long == Some("optstr") => a.split_once('=').map(|(_, v)| v.to_string()),
            a if a.starts_with("-o") && a.len() > 2 => Some(a[2..].to_string()),
            a => {
                refuse_flag(a)?;
                rest.push(arg.clone());
                None
            }
        };
        if let Some(value) = value {
            if optstr.is_some() {
                return Err(
                    "more than one -o: obproxy keeps only the last one, so write every item in one -o \"k=v,k=v\""
                        .into(),
                );
            }
            for (name, _) in items(&value) {
                if let Some((_, instead)) = AGENT_ITEMS.iter().find(|(item, _)| *item == name) {
                    return Err(format!("-o {name}: {instead}"));
                }
            }
            optstr = Some(value);
        }
    }
    Ok((rest, optstr))
}

/// Flags that would fight the agent. The message names the flag only (an
/// argument may be a secret).
fn refuse_flag(arg: &str) -> Result<(), String> {
    let resolved = long_option(arg);
    let short = |c: char| arg.len() >= 2 && arg.starts_with('-') && arg[1..].starts_with(c);
    let long = |name: &str| resolved == Some(name);
    if short('p') || long("listen_port") {
        return Err(format!(
            "{}: the agent holds the SQL listeners; set [obproxy] listen instead",
            redact::args(&[arg.to_string()])[0]
        ));
    }
    if short('s') || long("rpc_listen_port") {
        return Err(format!(
            "{}: the agent holds the RPC listeners; set [obproxy] rpc_listen instead",
            redact::args(&[arg.to_string()])[0]
        ));
    }
    if matches!(arg, "-V" | "-R") || long("version") || long("releaseid") {
        return Err(format!("{arg} makes obproxy print and exit; remove it"));
    }
    Ok(())
}

/// `k=v` items of an obproxy `-o` string (obproxy splits on `,` and
/// newlines).
pub fn items(optstr: &str) -> impl Iterator<Item = (&str, &str)> {
    optstr
        .split([',', '\n'])
        .filter(|i| !i.trim().is_empty())
        .map(|i| match i.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => (i.trim(), ""),
        })
}

/// Whether the `-o` string turns obproxy's RPC service off (4.3 has it on by
/// default). obproxy's bool parser: false, off, no, f, 0 in any case.
pub fn rpc_service_off(optstr: Option<&str>) -> bool {
    optstr.is_some_and(|o| {
        items(o)
            .filter(|(k, _)| *k == "enable_obproxy_rpc_service")
            .last()
            .is_some_and(|(_, v)| {
                matches!(
                    v.to_ascii_lowercase().as_str(),
                    "false" | "off" | "no" | "f" | "0"
                )
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_of(args: &[&str]) -> Result<(Vec<String>, Option<String>), String> {
        split(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn items_the_agent_sets_are_refused_naming_the_key_to_use() {
        for (item, key) in [
            ("hot_upgrade_exit_timeout=1000", "hot_upgrade_exit_timeout"),
            ("rpc_listen_port=2885", "rpc_listen"),
            ("ip_listen_mode=3", "[obproxy] listen"),
            ("listen_port=2883", "[obproxy] listen"),
            ("local_bound_ip=10.0.0.1", "[obproxy] listen"),
        ] {
            let e = split_of(&["-o", &format!("a=b,{item}")]).unwrap_err();
            assert!(e.contains(key), "{item}: {e}");
        }
    }

    #[test]
    fn port_flags_are_refused() {
        for args in [
            &["-p", "2883"][..],
            &["-p2883"],
            &["--listen_port=2883"],
            &["-s", "2885"],
            &["--rpc_listen_port", "2885"],
            &["--listen", "2883"],
            &["--rpc=2885"],
            &["--vers"],
        ] {
            assert!(split_of(args).is_err(), "{args:?}");
        }
        assert!(split_of(&["-n", "app", "-N"]).is_ok());
        // `--opt` is getopt's `--optstr`: the one -o the agent merges into.
        let (rest, optstr) = split_of(&["--opt", "a=1", "-n", "x"]).unwrap();
        assert_eq!(
            (rest, optstr.as_deref()),
            (vec!["-n".to_string(), "x".into()], Some("a=1"))
        );
        assert!(split_of(&["--opt=a=1", "-o", "b=2"]).is_err());
    }

    #[test]
    fn the_rpc_service_is_off_only_when_the_optstr_says_so() {
        assert!(!rpc_service_off(None));
        assert!(!rpc_service_off(Some("a=1")));
        assert!(rpc_service_off(Some(
            "a=1,enable_obproxy_rpc_service=False"
        )));
        assert!(rpc_service_off(Some("enable_obproxy_rpc_service=0")));
        assert!(!rpc_service_off(Some(
            "enable_obproxy_rpc_service=0,enable_obproxy_rpc_service=on"
        )));
    }
}
