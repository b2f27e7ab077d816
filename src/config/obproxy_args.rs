//! The user's obproxy arguments: the single `-o` string taken out (the agent
//! merges its own items into it) and the flags and items refused because the
//! agent owns what they set.
use crate::redact;

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

/// Splits `args` into the arguments passed as they are and the single `-o`
/// string; an `Err` is the reason, for `obproxy.args`.
pub fn split(args: &[String]) -> Result<(Vec<String>, Option<String>), String> {
    let mut rest = Vec::new();
    let mut optstr: Option<String> = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let value = match arg.as_str() {
            "-o" | "--optstr" => Some(
                iter.next()
                    .ok_or_else(|| format!("{arg} needs a value"))?
                    .clone(),
            ),
            a if a.starts_with("--optstr=") => Some(a["--optstr=".len()..].to_string()),
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
    let flag = arg.split_once('=').map_or(arg, |(f, _)| f);
    let short = |c: char| arg.len() >= 2 && arg.starts_with('-') && arg[1..].starts_with(c);
    let long = |name: &str| flag == format!("--{name}");
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
    if matches!(arg, "-V" | "--version" | "-R" | "--releaseid") {
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
        ] {
            assert!(split_of(args).is_err(), "{args:?}");
        }
        assert!(split_of(&["-n", "app", "-N"]).is_ok());
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
