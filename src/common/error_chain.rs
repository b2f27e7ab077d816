//! Rendering an error with its causes on one line, for operation and task
//! errors, log fields and the daemons' exit messages.

/// `outer: cause: root cause`.
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
