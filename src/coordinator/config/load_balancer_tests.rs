//! `[clusters.load_balancer]` as a whole coordinator file parses it: every
//! refusal names the file's key.
use std::path::Path;

use crate::{
    common::config_file::ConfigError,
    coordinator::{
        config::CoordinatorConfig,
        load_balancer::config::{Kind, Socket},
    },
};

const CLUSTER: &str = r#"
[server]
listen = "127.0.0.1:2890"
[store]
path = "/var/lib/odp-coordinator/tasks.db"
[[clusters]]
name = "prod"
agents = ["10.0.0.1:2889", "10.0.0.2:2889"]
"#;

const HAPROXY: &str = r#"[clusters.load_balancer]
kind = "haproxy"
socket = "/run/haproxy/admin.sock"
backend = "odp"
servers = { "10.0.0.1:2889" = "odp1", "10.0.0.2:2889" = "odp2" }
drain_timeout = "60s"
"#;

const COMMAND: &str = r#"[clusters.load_balancer]
kind = "command"
drain = ["/usr/local/bin/slb", "drain", "{server}", "--agent={agent}"]
enable = ["slb", "enable", "{server}"]
sessions = ["bin/slb", "sessions", "{server}"]
servers = { "10.0.0.1:2889" = "odp1", "10.0.0.2:2889" = "odp2" }
"#;

fn parse(lb: &str) -> Result<CoordinatorConfig, ConfigError> {
    CoordinatorConfig::parse(
        Path::new("/etc/odp-coordinator/coordinator.toml"),
        &format!("{CLUSTER}{lb}"),
    )
}

fn refused(lb: &str) -> ConfigError {
    parse(lb).expect_err("refused")
}

#[test]
fn the_haproxy_example_parses_with_a_unix_or_tcp_socket() {
    let c = parse(HAPROXY).unwrap();
    let lb = c.clusters[0].load_balancer.as_ref().unwrap();
    let Kind::HaProxy(h) = &lb.kind else {
        panic!("{lb:?}")
    };
    assert_eq!(h.socket, Socket::Unix("/run/haproxy/admin.sock".into()));
    assert_eq!(lb.servers["10.0.0.2:2889"], "odp2");
    assert_eq!(lb.drain_timeout.as_secs(), 60);
    let c = parse(&HAPROXY.replace("/run/haproxy/admin.sock", "127.0.0.1:9999")).unwrap();
    let Kind::HaProxy(h) = &c.clusters[0].load_balancer.as_ref().unwrap().kind else {
        panic!()
    };
    assert_eq!(h.socket, Socket::Tcp("127.0.0.1:9999".into()));
    assert!(!c.clusters[0].lb_drain);
}

#[test]
fn servers_must_name_exactly_the_clusters_agents() {
    let e = refused(&HAPROXY.replace("10.0.0.2:2889\" = ", "10.0.0.9:2889\" = "));
    assert_eq!(e.key, "clusters[0].load_balancer.servers");
    assert!(e.reason.contains("10.0.0.9:2889"), "{e}");
    assert!(e.reason.contains("not an agent"), "{e}");
    let e = refused(&HAPROXY.replace(", \"10.0.0.2:2889\" = \"odp2\"", ""));
    assert_eq!(e.key, "clusters[0].load_balancer.servers");
    assert!(
        e.reason.contains("10.0.0.2:2889") && e.reason.contains("no server"),
        "{e}"
    );
    let e = refused(&HAPROXY.replace("\"odp2\"", "\"odp1\""));
    assert!(e.reason.contains("two agents"), "{e}");
    // A name that would split the runtime API's command line.
    let e = refused(&HAPROXY.replace("\"odp2\"", "\"odp2; shutdown\""));
    assert_eq!(e.key, "clusters[0].load_balancer.servers");
}

#[test]
fn each_kind_needs_its_keys_and_refuses_the_others() {
    let e = refused(&HAPROXY.replace("backend = \"odp\"\n", ""));
    assert_eq!(e.key, "clusters[0].load_balancer.backend");
    assert!(e.reason.contains("needed"), "{e}");
    let e = refused(&HAPROXY.replace("backend = \"odp\"", "backend = \"odp x\""));
    assert_eq!(e.key, "clusters[0].load_balancer.backend");
    let e = refused(&format!("{HAPROXY}drain = [\"x\"]\n"));
    assert_eq!(e.key, "clusters[0].load_balancer.drain");
    assert!(e.reason.contains("not a key of kind = \"haproxy\""), "{e}");
    let e = refused(&COMMAND.replace("sessions = [\"bin/slb\", \"sessions\", \"{server}\"]\n", ""));
    assert_eq!(e.key, "clusters[0].load_balancer.sessions");
    let e = refused(&format!("{COMMAND}socket = \"/x/y\"\n"));
    assert_eq!(e.key, "clusters[0].load_balancer.socket");
    let e = refused(&HAPROXY.replace("\"haproxy\"", "\"nginx\""));
    assert_eq!(e.key, "clusters[0].load_balancer.kind");
    let e = refused(&HAPROXY.replace("socket = \"/run/haproxy/admin.sock\"", "socket = \"admin\""));
    assert_eq!(e.key, "clusters[0].load_balancer.socket");
    let e = refused(&HAPROXY.replace("\"60s\"", "\"0s\""));
    assert_eq!(e.key, "clusters[0].load_balancer.drain_timeout");
}

#[test]
fn command_templates_are_checked_and_resolved() {
    let c = parse(COMMAND).unwrap();
    let Kind::Command(cmd) = &c.clusters[0].load_balancer.as_ref().unwrap().kind else {
        panic!()
    };
    assert_eq!(cmd.drain.program, Path::new("/usr/local/bin/slb"));
    assert_eq!(
        cmd.enable.program,
        Path::new("slb"),
        "a bare name is looked up on PATH"
    );
    assert_eq!(
        cmd.sessions.program,
        Path::new("/etc/odp-coordinator/bin/slb"),
        "a relative path is taken from the config's directory"
    );
    // Each argument stays one argument, whatever the values hold.
    assert_eq!(
        cmd.drain.args("10.0.0.1:2889", "a b;c"),
        ["drain", "a b;c", "--agent=10.0.0.1:2889"]
    );
    let e = refused(&COMMAND.replace("{agent}", "{agnet}"));
    assert_eq!(e.key, "clusters[0].load_balancer.drain");
    assert!(e.reason.contains("unknown placeholder {agnet}"), "{e}");
    let e = refused(&COMMAND.replace("[\"slb\", \"enable\", \"{server}\"]", "[]"));
    assert_eq!(e.key, "clusters[0].load_balancer.enable");
    let e = refused(&COMMAND.replace("\"/usr/local/bin/slb\"", "\"{server}\""));
    assert_eq!(e.key, "clusters[0].load_balancer.drain");
    // {server} needs servers; {agent} alone does not.
    let no_servers = COMMAND.replace(
        "servers = { \"10.0.0.1:2889\" = \"odp1\", \"10.0.0.2:2889\" = \"odp2\" }\n",
        "",
    );
    let e = refused(&no_servers);
    assert!(e.reason.contains("uses {server}"), "{e}");
    assert!(parse(&no_servers.replace("{server}", "{agent}")).is_ok());
}

#[test]
fn lb_drain_needs_a_balancer() {
    let e = CoordinatorConfig::parse(
        Path::new("/etc/c.toml"),
        &CLUSTER.replace("name = \"prod\"", "name = \"prod\"\nlb_drain = true"),
    )
    .unwrap_err();
    assert_eq!(e.key, "clusters[0].lb_drain");
    let c = CoordinatorConfig::parse(
        Path::new("/etc/c.toml"),
        &format!(
            "{}{HAPROXY}",
            CLUSTER.replace("name = \"prod\"", "name = \"prod\"\nlb_drain = true")
        ),
    )
    .unwrap();
    assert!(c.clusters[0].lb_drain);
}
