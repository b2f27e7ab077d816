//! A daemon's stderr kept line by line, with waits for the lines a test expects.

use std::sync::{Condvar, LockResult, Mutex, MutexGuard};
use std::time::Instant;

use super::PATIENCE;

/// A daemon's stderr, line by line, with a way to wait for a line.
#[derive(Default)]
pub struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

impl Log {
    pub fn lock(&self) -> LockResult<MutexGuard<'_, Vec<String>>> {
        self.lines.lock()
    }

    pub(super) fn push(&self, line: String) {
        self.lines.lock().unwrap().push(line);
        self.grew.notify_all();
    }

    /// Waits (up to [`PATIENCE`]) until the lines so far satisfy `done`.
    pub fn wait_until(&self, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if done(&lines) {
                return lines.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the log never got there in time:\n{}",
                lines.join("\n")
            );
            lines = self.grew.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Waits (up to [`PATIENCE`]) for a line that `matches`, and returns it.
    pub fn wait_for(&self, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().find(|l| matches(l)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no such log line in time:\n{}",
                lines.join("\n")
            );
            lines = self.grew.wait_timeout(lines, left).unwrap().0;
        }
    }
}
