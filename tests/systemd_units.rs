//! The unit files in `systemd/` pass `systemd-analyze verify` with no
//! warning, and keep the settings the daemons rely on.
//!
//! `verify` insists that `ExecStart=` names an executable, and the units name
//! the installed path (/usr/bin, where the packages put it). So each unit is
//! verified as a copy in a temporary directory with only the binary of
//! `ExecStartPre=` and `ExecStart=` rewritten to the one cargo built: nothing
//! is installed, and every other line is checked as shipped. The man pages
//! `Documentation=` names are not installed here either (`--man=no`);
//! `tests/packages.rs` verifies the installed units with them.
use std::{path::Path, process::Command};

const UNITS: [(&str, &str); 2] = [
    ("odp-agent", env!("CARGO_BIN_EXE_odp-agent")),
    ("odp-coordinator", env!("CARGO_BIN_EXE_odp-coordinator")),
];

fn unit_text(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("systemd/{name}.service"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `Key=value` lines of a unit, comments left out.
fn settings(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .collect()
}

#[test]
fn both_units_pass_systemd_analyze_verify_without_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (name, binary) in UNITS {
        let text = unit_text(name);
        let installed = format!("ExecStart=/usr/bin/{name} ");
        assert!(
            text.contains(&installed),
            "{name}.service: expected {installed:?}...; update this test if the install path changed"
        );
        let path = dir.path().join(format!("{name}.service"));
        std::fs::write(
            &path,
            text.replace(&format!("=/usr/bin/{name} "), &format!("={binary} ")),
        )
        .unwrap();
        paths.push(path);
    }
    let out = match Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "systemd-analyze is missing: install it (`apt-get install -y systemd`; .ci/run does)"
        ),
        Err(e) => panic!("cannot run systemd-analyze: {e}"),
    };
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // verify also loads what the units refer to (network-online.target...);
    // only what it says about ours counts.
    let ours: Vec<&str> = output
        .lines()
        .filter(|l| {
            UNITS
                .iter()
                .any(|(name, _)| l.contains(&format!("{name}.service")))
                || l.contains(&dir.path().display().to_string())
        })
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{output}",
        out.status
    );
}

#[test]
fn both_daemons_notify_systemd_and_feed_its_watchdog() {
    for (name, _) in UNITS {
        let text = unit_text(name);
        let lines = settings(&text);
        for want in [
            "Type=notify",
            "NotifyAccess=main",
            "WatchdogSec=30s",
            "Restart=on-failure",
            "RestartPreventExitStatus=78",
        ] {
            assert!(lines.contains(&want), "{name}.service lacks {want}");
        }
        assert!(
            lines.iter().any(|l| l.starts_with("StateDirectory=")),
            "{name}.service lacks StateDirectory="
        );
    }
}

#[test]
fn restarting_the_agent_leaves_obproxy_alone() {
    let text = unit_text("odp-agent");
    let lines = settings(&text);
    assert!(lines.contains(&"KillMode=process"), "odp-agent.service");
    // Options that would break obproxy, which lives in the agent's sandbox
    // and outlives it.
    for bad in ["PrivateTmp=yes", "ProtectHome=yes", "ProtectHome=read-only"] {
        assert!(!lines.contains(&bad), "odp-agent.service has {bad}");
    }
}

#[test]
fn both_units_check_the_configuration_before_starting() {
    for (name, _) in UNITS {
        let text = unit_text(name);
        let lines = settings(&text);
        let start = lines
            .iter()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{name}.service lacks ExecStart="));
        let config = start
            .strip_prefix(&format!("/usr/bin/{name} --config "))
            .unwrap_or_else(|| panic!("{name}.service: ExecStart={start}"));
        let check = format!("ExecStartPre=/usr/bin/{name} --check --config {config}");
        assert!(
            lines.contains(&check.as_str()),
            "{name}.service lacks {check}"
        );
    }
}

#[test]
fn both_daemons_keep_their_files_private_and_have_descriptors_to_spare() {
    for (name, _) in UNITS {
        let text = unit_text(name);
        let lines = settings(&text);
        for want in ["UMask=0077", "StateDirectoryMode=0700"] {
            assert!(lines.contains(&want), "{name}.service lacks {want}");
        }
        let nofile: u64 = lines
            .iter()
            .find_map(|l| l.strip_prefix("LimitNOFILE="))
            .unwrap_or_else(|| panic!("{name}.service lacks LimitNOFILE="))
            .parse()
            .unwrap();
        assert!(nofile >= 65536, "{name}.service: LimitNOFILE={nofile}");
    }
}
