//! `--check`: a daemon's configuration examined the way the daemon would use
//! it, without running it. The file is parsed and validated as at start, the
//! certificates are loaded as the server loads them, the paths the daemon
//! needs are looked at (and, for the agent, the obproxy binary asked for its
//! `-V`), and what would run is reported. Nothing is created, bound or
//! contacted, so it is safe beside a running daemon and as the units'
//! `ExecStartPre`. Exit 0, or 78 (EX_CONFIG) with one line per problem
//! naming the file, the key and the reason.
pub(crate) mod certificates;
pub(crate) mod paths;

use std::{
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::ExitCode,
};

use crate::common::config_file::{ConfigError, EX_CONFIG};

/// What a check found.
#[derive(Debug)]
pub struct Report {
    pub file: PathBuf,
    /// What would run, one line each: what, and how.
    pub plan: Vec<(&'static str, String)>,
    /// Worth knowing; none of them refuses the configuration.
    pub notes: Vec<String>,
    /// Each of them refuses the configuration.
    pub problems: Vec<ConfigError>,
}

impl Report {
    pub(crate) fn new(file: &Path) -> Self {
        Self {
            file: file.to_path_buf(),
            plan: Vec::new(),
            notes: Vec::new(),
            problems: Vec::new(),
        }
    }

    pub(crate) fn plan(&mut self, what: &'static str, how: impl Into<String>) {
        self.plan.push((what, how.into()));
    }

    pub(crate) fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub(crate) fn problem(&mut self, key: &str, reason: impl Into<String>) {
        self.problems
            .push(ConfigError::new(&self.file, key, reason));
    }

    /// The configuration is private to the daemon's user: others may hold
    /// no copy of what it says about callers, roles and key paths.
    pub(crate) fn note_file_mode(&mut self) {
        if let Ok(meta) = std::fs::metadata(&self.file)
            && meta.permissions().mode() & 0o004 != 0
        {
            self.note(format!(
                "{} is readable by every user (mode {:o}); the packages install it 0640",
                self.file.display(),
                meta.permissions().mode() & 0o7777
            ));
        }
    }

    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// What goes to stdout: the plan, the notes and the verdict.
    pub fn summary(&self, program: &str) -> String {
        let mut out = format!("{program} --check {}\n", self.file.display());
        let width = self.plan.iter().map(|(w, _)| w.len()).max().unwrap_or(0);
        for (what, how) in &self.plan {
            out.push_str(&format!("  {what:<width$}  {how}\n"));
        }
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        match self.problems.len() {
            0 => out.push_str(&format!(
                "OK: {program} would run with this configuration\n"
            )),
            n => out.push_str(&format!(
                "refused: {n} problem{} (on stderr); {program} would exit {EX_CONFIG}\n",
                if n == 1 { "" } else { "s" }
            )),
        }
        out
    }

    /// Prints the summary (stdout) and every problem (stderr, as the daemon
    /// words a bad configuration); the exit code is 0 or 78.
    pub fn finish(&self, program: &str) -> ExitCode {
        // Never a panic when stdout is gone (`--check | head`): the exit
        // code is the answer.
        let _ = std::io::stdout().write_all(self.summary(program).as_bytes());
        for problem in &self.problems {
            crate::say!("{program}: bad configuration: {problem}");
        }
        if self.passed() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EX_CONFIG as u8)
        }
    }
}

/// A listener as the plan shows it.
pub(crate) fn listen_line(addr: &std::net::SocketAddr, tls: bool) -> String {
    let how = if tls {
        "TLS"
    } else if addr.ip().is_loopback() {
        "plaintext, loopback callers only"
    } else {
        "plaintext"
    };
    format!("{addr} ({how})")
}

/// Who may call, as the plan shows it.
pub(crate) fn callers(security: &crate::security::config::Security) -> String {
    let auth = &security.auth;
    let tcp = if security.requires_credentials() {
        format!(
            "TCP with credentials: {} certificate rule(s), {} token(s)",
            auth.certificates.len(),
            auth.tokens.len()
        )
    } else {
        format!("loopback TCP as {}", security.loopback_role)
    };
    format!(
        "{tcp}; local socket: root, the daemon's user and {} [[auth.local]] rule(s)",
        security.local.len()
    )
}

/// The local gRPC socket as the plan shows it.
pub(crate) fn socket_line(socket: &crate::common::grpc_server::settings::UnixSocket) -> String {
    match &socket.group {
        Some((group, _)) => format!("{} (group {group})", socket.path.display()),
        None => socket.path.display().to_string(),
    }
}
