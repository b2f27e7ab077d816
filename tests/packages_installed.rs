//! The Debian packages, installed: what `packaging/build-debs` built, checked
//! as files (contents, modes, conffiles, maintainer scripts, lintian) and
//! as packages (install, upgrade with an edited conffile, remove, purge with
//! the real dpkg). Ignored by default: it needs the .debs, lintian and root
//! (`packaging/build-debs && cargo test --test packages_installed --
//! --ignored`; `.ci/run` runs it).
//!
//! dpkg works in a throwaway root: this machine's own root seen through an
//! overlay whose writes go to a temporary directory, in a private mount
//! namespace (unshare, chroot), so nothing on the machine changes. systemctl
//! and deb-systemd-invoke are replaced there by recorders, which is how the
//! test knows what the scripts asked of systemd.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn debian_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo("target"))
        .join("debian")
}

fn arch() -> String {
    let out = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The package built from this source by packaging/build-debs.
fn deb(package: &str) -> PathBuf {
    let path = debian_dir().join(format!(
        "{package}_{}-1_{}.deb",
        env!("CARGO_PKG_VERSION"),
        arch()
    ));
    assert!(
        path.exists(),
        "{} is missing: run packaging/build-debs first",
        path.display()
    );
    path
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn control(deb: &Path, what: &str) -> String {
    let out = run("dpkg-deb", &["--info", &deb.display().to_string(), what]);
    assert!(out.status.success(), "{what}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// `dpkg-deb --contents`: path (without the leading `.`) -> mode string
/// and owner.
fn contents(deb: &Path) -> Vec<(String, String, String)> {
    let out = run("dpkg-deb", &["--contents", &deb.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f[5].trim_start_matches('.').to_string();
            (path, f[0].to_string(), f[1].to_string())
        })
        .collect()
}

fn has(contents: &[(String, String, String)], path: &str, mode: &str) {
    let entry = contents.iter().find(|(p, _, _)| p == path);
    let Some((_, m, owner)) = entry else {
        panic!("{path} is not in the package: {contents:#?}");
    };
    assert_eq!((m.as_str(), owner.as_str()), (mode, "0/0"), "{path}");
}

#[test]
#[ignore = "needs the .debs from packaging/build-debs, lintian and root"]
fn the_packages_hold_what_they_should_and_lintian_finds_no_error() {
    let agent = deb("odp-agent");
    let files = contents(&agent);
    has(&files, "/usr/bin/odp-agent", "-rwxr-xr-x");
    has(&files, "/etc/odp-agent/agent.toml", "-rw-r-----");
    has(
        &files,
        "/usr/lib/systemd/system/odp-agent.service",
        "-rw-r--r--",
    );
    has(&files, "/usr/lib/sysusers.d/odp-agent.conf", "-rw-r--r--");
    has(&files, "/usr/share/man/man8/odp-agent.8.gz", "-rw-r--r--");
    has(
        &files,
        "/usr/share/bash-completion/completions/odp-agent",
        "-rw-r--r--",
    );
    has(
        &files,
        "/usr/share/zsh/vendor-completions/_odp-agent",
        "-rw-r--r--",
    );
    has(
        &files,
        "/usr/share/fish/vendor_completions.d/odp-agent.fish",
        "-rw-r--r--",
    );
    has(&files, "/usr/share/doc/odp-agent/copyright", "-rw-r--r--");
    assert!(
        !files
            .iter()
            .any(|(p, _, _)| p.contains("odpctl") || p.contains("standin"))
    );
    assert_eq!(
        control(&agent, "conffiles").trim(),
        "/etc/odp-agent/agent.toml"
    );

    let coordinator = deb("odp-coordinator");
    let files = contents(&coordinator);
    for bin in ["/usr/bin/odp-coordinator", "/usr/bin/odpctl"] {
        has(&files, bin, "-rwxr-xr-x");
    }
    has(
        &files,
        "/etc/odp-coordinator/coordinator.toml",
        "-rw-r-----",
    );
    has(
        &files,
        "/usr/lib/systemd/system/odp-coordinator.service",
        "-rw-r--r--",
    );
    has(
        &files,
        "/usr/lib/sysusers.d/odp-coordinator.conf",
        "-rw-r--r--",
    );
    has(
        &files,
        "/usr/share/man/man8/odp-coordinator.8.gz",
        "-rw-r--r--",
    );
    has(&files, "/usr/share/man/man1/odpctl.1.gz", "-rw-r--r--");
    has(
        &files,
        "/usr/share/man/man1/odpctl-cluster-restart.1.gz",
        "-rw-r--r--",
    );
    has(
        &files,
        "/usr/share/bash-completion/completions/odpctl",
        "-rw-r--r--",
    );
    assert!(!files.iter().any(|(p, _, _)| p.ends_with("/odp-agent")));
    assert_eq!(
        control(&coordinator, "conffiles").trim(),
        "/etc/odp-coordinator/coordinator.toml"
    );

    for (deb, package) in [(&agent, "odp-agent"), (&coordinator, "odp-coordinator")] {
        let fields = control(deb, "control");
        assert!(
            fields.contains(&format!("Package: {package}\n")),
            "{fields}"
        );
        assert!(
            fields
                .lines()
                .any(|l| l.starts_with("Depends:") && l.contains("systemd"))
        );
        // The user, from sysusers.d, before the scripts' own chown.
        let postinst = control(deb, "postinst");
        let sysusers = postinst.find("systemd-sysusers").expect("sysusers");
        assert!(sysusers < postinst.find("chown").unwrap(), "{postinst}");
        assert!(postinst.contains("systemctl --system daemon-reload"));
        // Never a start or a restart. (Enabling happens only for a unit
        // the administrator had enabled before, debhelper's rule; the
        // install test sees a fresh install enable nothing.)
        for script in ["postinst", "prerm", "postrm"] {
            let body = control(deb, script);
            for never in [
                "deb-systemd-invoke start",
                "deb-systemd-invoke restart",
                "try-restart",
                "$_dh_action",
            ] {
                assert!(
                    !body.contains(never),
                    "{package} {script} has {never}:\n{body}"
                );
            }
        }
        // prerm stops the daemon on removal only (not on upgrade).
        let prerm = control(deb, "prerm");
        assert!(prerm.contains(r#"[ "$1" = remove ]"#), "{prerm}");
    }

    let out = Command::new("lintian")
        .args(["--fail-on", "error"])
        .arg(&agent)
        .arg(&coordinator)
        .output()
        .unwrap_or_else(|e| panic!("cannot run lintian ({e}): apt-get install -y lintian"));
    let report = text(&out);
    println!("lintian:\n{report}");
    assert!(out.status.success(), "lintian: {report}");
    assert!(!report.lines().any(|l| l.starts_with("E: ")), "{report}");
}

/// This machine's root seen through an overlay whose upper layer is a
/// temporary directory: what dpkg writes there is gone with it.
struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["upper", "work", "merged"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let root = Self { dir };
        // systemd "runs" (so the scripts talk to it) through recorders.
        root.ok(r#"
            mkdir -p /run/systemd/system /var/log
            for tool in systemctl deb-systemd-invoke; do
                cat > "/usr/bin/$tool" <<EOF
#!/bin/sh
echo "$tool \$*" >> /var/log/systemd-calls
# Nothing runs here: is-active says inactive.
case " \$* " in *" is-active "*) exit 3 ;; esac
exit 0
EOF
                chmod 755 "/usr/bin/$tool"
            done
            : > /var/log/systemd-calls
            # The host's own obproxy home, if any, is not this test's.
            rm -rf /home/admin
        "#);
        root
    }

    /// Runs `script` with sh as root in the throwaway root.
    fn sh(&self, script: &str) -> Output {
        let d = self.dir.path().display();
        let setup = format!(
            "set -e
            mount -t overlay overlay -o lowerdir=/,upperdir={d}/upper,workdir={d}/work {d}/merged
            for fs in dev proc sys; do mount --rbind /$fs {d}/merged/$fs; done
            exec chroot {d}/merged /bin/sh -ec \"$1\""
        );
        Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &setup,
                "sh",
                script,
            ])
            .output()
            .unwrap_or_else(|e| panic!("unshare: {e} (util-linux; root needed)"))
    }

    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(out.status.success(), "{script}\n{}", text(&out));
        text(&out)
    }

    /// What the scripts asked of systemd since the last call.
    fn systemd_calls(&self) -> String {
        self.ok("cat /var/log/systemd-calls; : > /var/log/systemd-calls")
    }
}

fn stat(root: &Root, path: &str) -> String {
    root.ok(&format!("stat -c '%a %U:%G' {path}"))
        .trim()
        .to_string()
}

/// A later version of `deb` (revision 2), the same files: what an
/// upgrade of an unchanged conffile looks like.
fn next_version(deb: &Path, out: &Path) -> PathBuf {
    let tree = tempfile::tempdir().unwrap();
    let unpacked = tree.path().join("pkg");
    let r = run(
        "dpkg-deb",
        &[
            "--raw-extract",
            &deb.display().to_string(),
            &unpacked.display().to_string(),
        ],
    );
    assert!(r.status.success(), "{}", text(&r));
    let control = unpacked.join("DEBIAN/control");
    let v1 = format!("Version: {}-1", env!("CARGO_PKG_VERSION"));
    let v2 = format!("Version: {}-2", env!("CARGO_PKG_VERSION"));
    let fields = std::fs::read_to_string(&control).unwrap();
    assert!(fields.contains(&v1), "{fields}");
    std::fs::write(&control, fields.replace(&v1, &v2)).unwrap();
    let target = out.join(
        deb.file_name()
            .unwrap()
            .to_string_lossy()
            .replace("-1_", "-2_"),
    );
    let r = run(
        "dpkg-deb",
        &[
            "--root-owner-group",
            "--build",
            &unpacked.display().to_string(),
            &target.display().to_string(),
        ],
    );
    assert!(r.status.success(), "{}", text(&r));
    target
}

#[test]
#[ignore = "needs the .debs from packaging/build-debs, lintian and root"]
fn the_packages_install_upgrade_keeping_an_edited_config_and_purge_in_a_throwaway_root() {
    let (agent, coordinator) = (deb("odp-agent"), deb("odp-coordinator"));
    let later = tempfile::tempdir().unwrap();
    let (agent2, coordinator2) = (
        next_version(&agent, later.path()),
        next_version(&coordinator, later.path()),
    );
    let root = Root::new();

    // Install: users, owners, modes; systemd reloaded, nothing started.
    let out = root.ok(&format!(
        "dpkg -i {} {}",
        agent.display(),
        coordinator.display()
    ));
    assert!(
        out.contains("then 'systemctl enable --now odp-agent'"),
        "{out}"
    );
    let users = root.ok("getent passwd admin odp-coordinator");
    assert!(
        users.contains("admin:x:") && users.contains("odp-coordinator:x:"),
        "{users}"
    );
    assert_eq!(stat(&root, "/etc/odp-agent/agent.toml"), "640 root:admin");
    assert_eq!(stat(&root, "/var/lib/odp-agent"), "700 admin:admin");
    assert_eq!(
        stat(&root, "/etc/odp-coordinator/coordinator.toml"),
        "640 root:odp-coordinator"
    );
    assert_eq!(
        stat(&root, "/var/lib/private/odp-coordinator"),
        "700 odp-coordinator:odp-coordinator"
    );
    assert_eq!(stat(&root, "/var/lib/private"), "700 root:root");
    assert_eq!(
        root.ok("readlink /var/lib/odp-coordinator").trim(),
        "private/odp-coordinator"
    );
    let calls = root.systemd_calls();
    assert_eq!(
        calls.matches("systemctl --system daemon-reload").count(),
        2,
        "{calls}"
    );
    assert!(
        !calls.contains("deb-systemd-invoke") && !calls.contains("start"),
        "{calls}"
    );
    root.ok("test ! -e /etc/systemd/system/multi-user.target.wants/odp-agent.service");
    root.ok("test ! -e /etc/systemd/system/multi-user.target.wants/odp-coordinator.service");

    // The installed units verify, their man pages included.
    let out = root.sh("systemd-analyze verify /usr/lib/systemd/system/odp-agent.service /usr/lib/systemd/system/odp-coordinator.service");
    let report = text(&out);
    assert!(out.status.success() && !report.contains("odp-"), "{report}");
    root.ok("man -w odp-agent odp-coordinator odpctl odpctl-cluster-restart");

    // The configs: theirs to read, nobody else's; --check as the unit runs it.
    let as_user = |user: &str, cmd: &str| {
        root.sh(&format!(
            "setpriv --reuid={user} --regid={user} --init-groups {cmd}"
        ))
    };
    assert!(
        as_user("admin", "cat /etc/odp-agent/agent.toml")
            .status
            .success()
    );
    assert!(
        as_user(
            "odp-coordinator",
            "cat /etc/odp-coordinator/coordinator.toml"
        )
        .status
        .success()
    );
    for config in [
        "/etc/odp-agent/agent.toml",
        "/etc/odp-coordinator/coordinator.toml",
    ] {
        let out = root.sh(&format!(
            "setpriv --reuid=nobody --regid=nogroup --clear-groups cat {config}"
        ));
        assert!(
            !out.status.success() && text(&out).contains("Permission denied"),
            "{}",
            text(&out)
        );
    }
    let out = as_user(
        "admin",
        "odp-agent --check --config /etc/odp-agent/agent.toml",
    );
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        text(&out).contains("/etc/odp-agent/agent.toml: obproxy.home: /home/admin/obproxy"),
        "{}",
        text(&out)
    );
    let out = root.ok("odp-coordinator --check --config /etc/odp-coordinator/coordinator.toml");
    assert!(out.contains("OK: odp-coordinator would run"), "{out}");

    // The operator's edit: obproxy installed, the config pointed at it.
    root.ok(&format!(
        r#"install -D -m 755 {} /home/admin/obproxy/bin/obproxy
           chown -R admin:admin /home/admin
           sed -i 's/^args = .*/args = ["-n", "edited", "-c", "here"]/' /etc/odp-agent/agent.toml
           echo '# edited on this host' >> /etc/odp-agent/agent.toml
           echo '{{}}' > /var/lib/odp-agent/agent-state.json
           echo store > /var/lib/odp-coordinator/tasks.db"#,
        env!("CARGO_BIN_EXE_obproxy-standin")
    ));
    let out = as_user(
        "admin",
        "odp-agent --check --config /etc/odp-agent/agent.toml",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("/home/admin/obproxy/bin/obproxy 4.3.1.0"),
        "{}",
        text(&out)
    );
    let edited = root.ok("cat /etc/odp-agent/agent.toml");

    // Upgrade: the edited conffile, its owner and mode, and the state stay;
    // systemd is reloaded and nothing is restarted.
    root.ok(&format!(
        "dpkg -i {} {}",
        agent2.display(),
        coordinator2.display()
    ));
    assert_eq!(root.ok("cat /etc/odp-agent/agent.toml"), edited);
    assert_eq!(stat(&root, "/etc/odp-agent/agent.toml"), "640 root:admin");
    assert_eq!(
        root.ok("cat /var/lib/odp-agent/agent-state.json").trim(),
        "{}"
    );
    assert_eq!(
        root.ok("cat /var/lib/odp-coordinator/tasks.db").trim(),
        "store"
    );
    let version = root.ok("dpkg-query -W -f '${Version}' odp-agent");
    assert!(version.ends_with("-2"), "{version}");
    let calls = root.systemd_calls();
    assert!(
        calls.contains("systemctl --system daemon-reload"),
        "{calls}"
    );
    assert!(
        !calls.contains("deb-systemd-invoke")
            && !calls.contains("restart")
            && !calls.contains(" start"),
        "{calls}"
    );
    assert!(
        as_user(
            "admin",
            "odp-agent --check --config /etc/odp-agent/agent.toml"
        )
        .status
        .success()
    );

    // Remove keeps the config and the state (the unit is stopped: the
    // binary is gone); purge removes both and leaves the users.
    root.ok("dpkg -r odp-agent odp-coordinator");
    let calls = root.systemd_calls();
    assert!(
        calls.contains("deb-systemd-invoke stop odp-agent.service"),
        "{calls}"
    );
    assert!(!calls.contains("start"), "{calls}");
    root.ok("test ! -e /usr/bin/odp-agent && test -f /etc/odp-agent/agent.toml && test -f /var/lib/odp-agent/agent-state.json");
    root.ok("test -f /etc/odp-coordinator/coordinator.toml && test -f /var/lib/odp-coordinator/tasks.db");
    root.ok("dpkg -P odp-agent odp-coordinator");
    root.ok("test ! -e /etc/odp-agent && test ! -e /var/lib/odp-agent");
    root.ok("test ! -e /etc/odp-coordinator && test ! -e /var/lib/odp-coordinator && test ! -L /var/lib/odp-coordinator && test ! -e /var/lib/private/odp-coordinator");
    root.ok("getent passwd admin odp-coordinator >/dev/null");
}
