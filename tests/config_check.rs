//! `--check` on both daemons, with the real binaries: exit 0 and a plan of
//! what would run on a good configuration; exit 78 with one line per problem
//! naming the file, the key and the reason on a bad one; and nothing
//! created, bound or changed either way.
use crate::common;

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use common::pki::Pki;

const AGENT: &str = env!("CARGO_BIN_EXE_odp-agent");
const COORDINATOR: &str = env!("CARGO_BIN_EXE_odp-coordinator");

struct Checked {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Checked {
    /// Asserts exit 78 and a problem line for `key` (in `file`) whose reason
    /// holds `reason`.
    fn refused(&self, file: &Path, key: &str, reason: &str) {
        assert_eq!(self.code, 78, "{}\n{}", self.stdout, self.stderr);
        let prefix = format!("bad configuration: {}: {key}: ", file.display());
        assert!(
            self.stderr
                .lines()
                .any(|l| l.contains(&prefix) && l.contains(reason)),
            "no line with {prefix:?}...{reason:?}:\n{}",
            self.stderr
        );
        assert!(self.stdout.contains("would exit 78"), "{}", self.stdout);
    }

    fn passed(&self) {
        assert_eq!(self.code, 0, "{}\n{}", self.stdout, self.stderr);
        assert!(self.stderr.is_empty(), "{}", self.stderr);
        assert!(self.stdout.contains("OK: "), "{}", self.stdout);
    }

    fn problems(&self) -> usize {
        self.stderr
            .lines()
            .filter(|l| l.contains("bad configuration:"))
            .count()
    }
}

fn check(program: &str, config: &Path, env: &[(&str, &str)]) -> Checked {
    let out = Command::new(program)
        .arg("--check")
        .arg("--config")
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    Checked {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// An agent's tree: `odp/bin/obproxy` is the stand-in (a copy, so the
/// stand-in's version knobs reach it from the environment), `agent.toml`
/// holds `sections` after a working `[obproxy]`.
struct AgentTree {
    dir: tempfile::TempDir,
}

impl AgentTree {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("odp/bin")).unwrap();
        std::fs::copy(common::STANDIN, dir.path().join("odp/bin/obproxy")).unwrap();
        Self { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes the configuration with `listen` as the SQL listeners and
    /// `more` appended; returns its path.
    fn config(&self, listen: &str, more: &str) -> PathBuf {
        let path = self.path("agent.toml");
        std::fs::write(
            &path,
            format!(
                r#"[server]
listen = "127.0.0.1:2889"

[obproxy]
home = "odp"
args = ["-n", "app", "-o", "obproxy_sys_password=hunter2,enable_metadb=false"]
listen = {listen}

[state]
dir = "state"
{more}"#
            ),
        )
        .unwrap();
        path
    }
}

#[test]
fn a_good_agent_configuration_passes_and_says_what_would_run() {
    let tree = AgentTree::new();
    let config = tree.config(r#"["127.0.0.1:2883", "[::1]:2883"]"#, "");
    let out = check(AGENT, &config, &[]);
    out.passed();
    for want in [
        "127.0.0.1:2889 (plaintext, loopback callers only)",
        "127.0.0.1:2883, [::1]:2883 (held by the agent)",
        // obproxy's version from the binary's own -V (the stand-in's default).
        "odp/bin/obproxy 4.3.1.0",
        // 4.3: the RPC port, by default 2885 on the SQL addresses.
        "127.0.0.1:2885, [::1]:2885 (held by the agent)",
        "state/audit.log",
    ] {
        assert!(out.stdout.contains(want), "{want:?} in:\n{}", out.stdout);
    }
    // Secrets stay masked in the plan, as everywhere the agent writes.
    assert!(!out.stdout.contains("hunter2"), "{}", out.stdout);
    assert!(out.stdout.contains("obproxy_sys_password=<redacted>"));
    // Nothing was created: the state directory is made at start, not here.
    assert!(!tree.path("state").exists());
}

#[test]
fn an_ipv6_listener_for_obproxy_3_2_is_refused_naming_the_version() {
    let tree = AgentTree::new();
    let config = tree.config(r#"["127.0.0.1:2883", "[::1]:2883"]"#, "");
    let out = check(AGENT, &config, &[("ODP_STANDIN_VERSION", "3.2.3")]);
    out.refused(&config, "obproxy.listen", "obproxy 3.2.3");
    // Before 4.3 there is no RPC port, and the fresh home bootstraps.
    assert!(
        out.stdout
            .contains("none: obproxy 3.2.3 has no RPC service")
    );
    assert!(
        out.stdout.contains("the first Start bootstraps"),
        "{}",
        out.stdout
    );
    // Without the IPv6 listener the same binary passes.
    let config = tree.config(r#"["127.0.0.1:2883"]"#, "");
    check(AGENT, &config, &[("ODP_STANDIN_VERSION", "3.2.3")]).passed();
}

#[test]
fn obproxy_paths_and_version_are_refused_naming_their_keys() {
    let tree = AgentTree::new();
    let config = tree.config(r#"["127.0.0.1:2883"]"#, "");
    let binary = tree.path("odp/bin/obproxy");

    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o644)).unwrap();
    check(AGENT, &config, &[]).refused(&config, "obproxy.binary", "not executable");

    // A program that is not obproxy: its -V says no version.
    std::fs::write(&binary, "#!/bin/sh\necho usage >&2\n").unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    check(AGENT, &config, &[]).refused(&config, "obproxy.binary", "printed no");

    std::fs::remove_dir_all(tree.path("odp")).unwrap();
    check(AGENT, &config, &[]).refused(&config, "obproxy.home", "odp");
}

#[test]
fn every_problem_is_reported_at_once() {
    let tree = AgentTree::new();
    // A file where the state directory belongs, and an upgrade directory
    // that is not there.
    std::fs::write(tree.path("state"), "").unwrap();
    let config = tree.config(r#"["127.0.0.1:2883"]"#, "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("listen = [", "upgrade_dir = \"releases\"\nlisten = [");
    std::fs::write(&config, text).unwrap();
    let out = check(AGENT, &config, &[]);
    out.refused(&config, "state.dir", "not a directory");
    out.refused(&config, "obproxy.upgrade_dir", "releases");
    assert_eq!(out.problems(), 3, "{}", out.stderr); // and audit.path under it
}

#[test]
fn a_file_the_parser_refuses_exits_78_naming_the_key() {
    let tree = AgentTree::new();
    let config = tree.config(r#"["127.0.0.1:2883"]"#, "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[state]", "[state]\nstart_timeout = \"1m\"");
    std::fs::write(&config, text).unwrap();
    check(AGENT, &config, &[]).refused(&config, "state.start_timeout", "unknown field");
    let missing = tree.path("nowhere.toml");
    check(AGENT, &missing, &[]).refused(&missing, "-", "cannot read");
}

#[test]
fn agent_certificates_are_loaded_and_each_problem_names_its_key() {
    let pki = Pki::new();
    let tree = AgentTree::new();
    let tls = |cert: &str, key: &str, ca: &str| {
        format!(
            "\n[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n\n[[auth.certificates]]\nsubject_cn = \"odp-coordinator\"\nrole = \"OBPROXY_MANAGER\"\n",
            pki.path(cert),
            pki.path(key),
            pki.path(ca)
        )
    };
    let good = tree.config(
        r#"["127.0.0.1:2883"]"#,
        &tls("server.pem", "server.key", "ca.pem"),
    );
    let out = check(AGENT, &good, &[]);
    out.passed();
    assert!(out.stdout.contains("CN=odp-agent, until"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("clients must present one from CN=odp test CA")
    );

    let config = tree.config(
        r#"["127.0.0.1:2883"]"#,
        &tls("expired.pem", "expired.key", "ca.pem"),
    );
    check(AGENT, &config, &[]).refused(&config, "tls.cert", "expired on 2001-01-01");

    // A key that is not the certificate's: rustls refuses the pair.
    let config = tree.config(
        r#"["127.0.0.1:2883"]"#,
        &tls("server.pem", "operator.key", "ca.pem"),
    );
    check(AGENT, &config, &[]).refused(&config, "tls.key", "server.pem");

    let config = tree.config(
        r#"["127.0.0.1:2883"]"#,
        &tls("server.pem", "server.pem", "ca.pem"),
    );
    check(AGENT, &config, &[]).refused(&config, "tls.key", "no PEM private key");

    let config = tree.config(
        r#"["127.0.0.1:2883"]"#,
        &tls("server.pem", "server.key", "no-ca.pem"),
    );
    check(AGENT, &config, &[]).refused(&config, "tls.client_ca", "no-ca.pem");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_check_beside_a_running_agent_passes_and_changes_nothing() {
    let agent = common::Agent::start().await;
    let op = agent.try_start().await;
    assert!(op.error.is_empty(), "{op:?}");
    let before = agent.status().await;
    let state_file = agent.dir.path().join("state/agent-state.json");
    let state = std::fs::read(&state_file).unwrap();
    // The listeners it names are held by the agent and obproxy: a check
    // that bound them would fail here.
    let out = check(AGENT, &agent.config, &[]);
    out.passed();
    assert_eq!(std::fs::read(&state_file).unwrap(), state);
    let after = agent.status().await;
    assert_eq!((after.state, after.pid), (before.state, before.pid));
}

/// A coordinator's tree with `clusters` and `more` in its configuration.
fn coordinator_config(dir: &Path, more: &str) -> PathBuf {
    let path = dir.join("coordinator.toml");
    std::fs::write(
        &path,
        format!(
            r#"[server]
listen = "127.0.0.1:2890"
[store]
path = "state/tasks.db"
{more}
[[clusters]]
name = "prod"
agents = ["10.0.0.1:2889", "odp-2.example:2889"]
[[clusters]]
name = "test"
agents = ["127.0.0.1:2889"]
"#
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_good_coordinator_configuration_lists_clusters_and_agents() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    // Presenting a certificate to the agents takes credentials of its own
    // callers: [tls] with certificate roles.
    let agents_tls = format!(
        "{}\n[agents.tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        pki.agent_toml(),
        pki.path("ca.pem"),
        pki.path("operator.pem"),
        pki.path("operator.key")
    );
    let config = coordinator_config(dir.path(), &agents_tls);
    let out = check(COORDINATOR, &config, &[]);
    out.passed();
    for want in [
        "127.0.0.1:2890 (TLS)",
        "clients must present one from CN=odp test CA",
        "state/tasks.db (created at start)",
        "prod: 2 agent(s): 10.0.0.1:2889, odp-2.example:2889",
        "test: 1 agent(s): 127.0.0.1:2889",
        "presenting CN=odp-coordinator",
    ] {
        assert!(out.stdout.contains(want), "{want:?} in:\n{}", out.stdout);
    }
    assert!(
        !dir.path().join("state").exists(),
        "the check created the store"
    );

    // Without [agents.tls] the agents on other hosts are out of reach.
    let config = coordinator_config(dir.path(), "");
    let out = check(COORDINATOR, &config, &[]);
    out.passed();
    assert!(
        out.stdout.contains(
            "note: no [agents.tls]: agents on other hosts serve TLS only, so the coordinator \
             could not reach 10.0.0.1:2889, odp-2.example:2889\n"
        ),
        "{}",
        out.stdout
    );
}

#[test]
fn coordinator_problems_name_their_keys() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    // The store's directory is a file.
    std::fs::write(dir.path().join("state"), "").unwrap();
    let agents_tls = format!(
        "{}\n[agents.tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        pki.agent_toml(),
        pki.path("missing-ca.pem"),
        pki.path("expired.pem"),
        pki.path("expired.key")
    );
    let config = coordinator_config(dir.path(), &agents_tls);
    let out = check(COORDINATOR, &config, &[]);
    out.refused(&config, "store.path", "not a directory");
    out.refused(&config, "agents.tls.ca", "missing-ca.pem");
    out.refused(&config, "agents.tls.cert", "expired on 2001-01-01");

    // What the parser refuses comes first and alone.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("name = \"test\"", "name = \"prod\"");
    std::fs::write(&config, text).unwrap();
    let out = check(COORDINATOR, &config, &[]);
    out.refused(&config, "clusters[1].name", "defined twice");
    assert_eq!(out.problems(), 1, "{}", out.stderr);
}

#[test]
fn the_state_directory_must_belong_to_the_user_the_check_runs_as() {
    use std::os::unix::fs::chown;
    let tree = AgentTree::new();
    std::fs::set_permissions(tree.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = tree.config(r#"["127.0.0.1:2883"]"#, "");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::create_dir(tree.path("state")).unwrap();
    std::fs::set_permissions(tree.path("state"), std::fs::Permissions::from_mode(0o700)).unwrap();

    // Root's directory, checked as nobody (as the unit's user would run it):
    // the daemon would refuse it.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            AGENT,
            "--check",
            "--config",
        ])
        .arg(&config)
        .output()
        .expect("setpriv (util-linux), as root");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("state.dir: ")
            && stderr.contains("is owned by uid 0, not by the daemon's user (uid 65534)"),
        "{stderr}"
    );

    // nobody's directory, checked by hand as root: a note, not a refusal.
    chown(tree.path("state"), Some(65534), Some(65534)).unwrap();
    let out = check(AGENT, &config, &[]);
    out.passed();
    assert!(
        out.stdout
            .contains("is owned by uid 65534: the daemon must run as that user"),
        "{}",
        out.stdout
    );
}
