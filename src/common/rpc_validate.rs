//! Request fields both services check the same way (a caller's request id,
//! a duration with its limit) and the limits they share; every refusal is
//! INVALID_ARGUMENT and starts with the field's name.
use std::time::Duration;

use tonic::Status;

pub const MAX_REQUEST_ID: usize = 128;

/// Longest drain window accepted anywhere (config or request): obshell's 24 h
/// waits look like hangs, so a day is already generous.
pub const MAX_EXIT_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A caller's request id: it is logged, audited and compared, so it stays
/// short and plain (a UUID, `deploy-42`, a coordinator's `task-….1.0`).
pub fn request_id(raw: &str) -> Result<Option<String>, Status> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.len() > MAX_REQUEST_ID {
        return Err(Status::invalid_argument(format!(
            "request_id: {} bytes, at most {MAX_REQUEST_ID}",
            raw.len()
        )));
    }
    if !raw
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    {
        return Err(Status::invalid_argument(
            "request_id: only letters, digits and - _ . : (e.g. a UUID or deploy-42)",
        ));
    }
    Ok(Some(raw.to_string()))
}

/// A `google.protobuf.Duration` that must be non-negative, well formed and
/// at most `max`.
pub fn duration(field: &str, d: prost_types::Duration, max: Duration) -> Result<Duration, Status> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(Status::invalid_argument(format!(
            "{field}: {}s {}ns is negative or malformed",
            d.seconds, d.nanos
        )));
    }
    let d = Duration::new(d.seconds as u64, d.nanos as u32);
    if d > max {
        return Err(Status::invalid_argument(format!(
            "{field}: {} is longer than the {} limit",
            humantime::format_duration(d),
            humantime::format_duration(max)
        )));
    }
    Ok(d)
}
