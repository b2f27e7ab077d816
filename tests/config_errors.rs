//! A bad configuration is refused at start with exit code 78 (EX_CONFIG),
//! naming the file, the key and the reason.
use crate::common;

use std::process::Command;

fn run_with(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(common::AGENT)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:0"
[obproxy]
home = "odp"
listen = ["127.0.0.1:0"]
start_timeout = "60s"
[state]
dir = "state"
"#;

#[test]
fn a_bad_duration_exits_78_naming_the_key() {
    let (code, stderr) = run_with(&GOOD.replace("\"60s\"", "\"a minute\""));
    assert_eq!(code, 78);
    assert!(stderr.contains("obproxy.start_timeout"), "{stderr}");
    assert!(stderr.contains("a minute"), "{stderr}");
}

#[test]
fn an_unknown_key_exits_78_naming_it() {
    let (code, stderr) = run_with(&GOOD.replace("[state]", "[state]\ndirectory = \"x\""));
    assert_eq!(code, 78);
    assert!(stderr.contains("directory"), "{stderr}");
}

#[test]
fn a_bad_metrics_address_exits_78_naming_the_key() {
    let (code, stderr) = run_with(&format!("{GOOD}[metrics]\nlisten = \"nowhere\"\n"));
    assert_eq!(code, 78);
    assert!(stderr.contains("metrics.listen"), "{stderr}");
}

#[test]
fn a_missing_section_exits_78() {
    let (code, stderr) = run_with("[server]\nlisten = \"127.0.0.1:0\"\n");
    assert_eq!(code, 78);
    assert!(stderr.contains("missing field `obproxy`"), "{stderr}");
}

#[test]
fn a_missing_file_exits_78() {
    let out = Command::new(common::AGENT)
        .args(["--config", "/nonexistent/agent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/agent.toml"));
}
