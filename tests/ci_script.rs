//! What `.ci/run` refuses before it does anything: the variables that would build tests as
//! ignored. Run with every program it could call first (cargo, apt-get, pip, rustup) replaced
//! by one that records the call and fails, so a refusal that stopped working shows as a
//! recorded call and a different exit, never as a CI run started from inside a test.
use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

fn ci_run_with(var: &str) -> (std::process::Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("calls");
    for program in ["cargo", "apt-get", "python3", "rustup"] {
        let path = dir.path().join(program);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho {program} \"$@\" >>'{}'\nexit 97\n",
                calls.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/run");
    let out = Command::new("bash")
        .arg(&script)
        .env("PATH", path)
        .env_remove("ODP_TEST_SKIP_MARIADB")
        .env_remove("ODP_TEST_SKIP_ROOT")
        .env(var, "1")
        .output()
        .unwrap();
    let called = std::fs::read_to_string(&calls).unwrap_or_default();
    (out, called)
}

#[test]
fn ci_refuses_the_variables_that_would_skip_tests() {
    for var in ["ODP_TEST_SKIP_MARIADB", "ODP_TEST_SKIP_ROOT"] {
        let (out, called) = ci_run_with(var);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{var}: {stderr}\ncalled: {called}"
        );
        assert!(
            stderr.contains(var) && stderr.contains("unset it"),
            "{var}: {stderr}"
        );
        assert_eq!(called, "", "{var}: .ci/run went on past the refusal");
    }
}
