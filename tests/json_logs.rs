//! With `--log-format json` every line is a JSON object, and every line
//! logged while an operation runs carries its operation id, as a field or in
//! its spans, so a collector can pull one operation's story out of the log.
use crate::common;

use common::{Agent, Options, agent_command};
use serde_json::Value;

/// The operation id a JSON log line is about: its own `op_id` field, or
/// that of any span it was logged in.
fn op_ids(line: &Value) -> Vec<&str> {
    let field = line.pointer("/fields/op_id");
    let spans = line["spans"].as_array().into_iter().flatten();
    field
        .into_iter()
        .chain(spans.map(|s| &s["op_id"]))
        .chain(std::iter::once(&line["span"]["op_id"]))
        .filter_map(Value::as_str)
        .collect()
}

#[tokio::test]
async fn every_line_of_an_operation_carries_its_id() {
    let agent = Agent::start_customized(Options::default(), |config| {
        let mut command = agent_command(config);
        command.args(["--log-format", "json"]);
        command
    })
    .await;
    let op = agent.start_proxy().await;
    let done = agent
        .log
        .wait_for(|l| l.contains("operation succeeded") && l.contains(&op.id));

    let lines: Vec<Value> = agent
        .log
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let done: Value = serde_json::from_str(&done).unwrap();
    let first = lines
        .iter()
        .position(|l| op_ids(l).contains(&op.id.as_str()))
        .expect("no line names the operation");
    let last = lines.iter().position(|l| *l == done).unwrap();
    let during = &lines[first..=last];
    assert!(during.len() >= 4, "too few lines for a start: {during:#?}");
    for line in during {
        assert!(
            op_ids(line).contains(&op.id.as_str()),
            "a line during {} without its id: {line}",
            op.id
        );
    }
    // The supervisor's own lines (spawn, readiness) are among them.
    assert!(
        during
            .iter()
            .any(|l| l.pointer("/fields/message") == Some(&Value::from("obproxy spawned"))),
        "{during:#?}"
    );
}
