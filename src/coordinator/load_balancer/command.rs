//! A balancer driven by commands (F5, LVS/keepalived, a cloud SLB): argv
//! templates with `{agent}` and `{server}`, each run without a shell, with no
//! stdin, within the balancer's timeout (killed past it), its output kept for
//! the subtask.
use std::{process::Stdio, time::Duration};

use super::{
    LbError, ServerState, ServerStatus,
    config::{CommandConfig, Template},
};

/// Output kept per run: enough for a message, never a flood in the store.
const MAX_OUTPUT: usize = 2048;

pub struct Commands {
    config: CommandConfig,
    timeout: Duration,
}

impl Commands {
    pub fn new(config: &CommandConfig, timeout: Duration) -> Self {
        Self {
            config: config.clone(),
            timeout,
        }
    }

    /// The sessions command, as errors name the balancer.
    pub fn target(&self) -> String {
        self.config.sessions.program.display().to_string()
    }

    pub fn can_set(&self, state: ServerState) -> bool {
        state != ServerState::Maint || self.config.maint.is_some()
    }

    pub async fn set(
        &self,
        agent: &str,
        server: &str,
        state: ServerState,
    ) -> Result<String, LbError> {
        let (what, template) = match state {
            ServerState::Ready => ("enable", &self.config.enable),
            ServerState::Drain => ("drain", &self.config.drain),
            ServerState::Maint => match &self.config.maint {
                Some(t) => ("maint", t),
                // Stop All without a maint command leaves the server drained.
                None => ("drain", &self.config.drain),
            },
        };
        self.run(what, template, agent, server)
            .await
            .map(|said| said.log)
    }

    /// `sessions` prints the server's current sessions as a number.
    pub async fn sessions(&self, agent: &str, server: &str) -> Result<(u64, String), LbError> {
        let said = self
            .run("sessions", &self.config.sessions, agent, server)
            .await?;
        let n = first_word(&said.stdout)
            .and_then(|w| w.parse::<u64>().ok())
            .ok_or_else(|| self.unparsable("sessions", &self.config.sessions, &said.stdout))?;
        Ok((n, said.log))
    }

    pub async fn status(&self, agent: &str, server: &str) -> Result<ServerStatus, LbError> {
        let (sessions, _) = self.sessions(agent, server).await?;
        let state = match &self.config.state {
            Some(t) => {
                let said = self.run("state", t, agent, server).await?;
                let state = first_word(&said.stdout)
                    .and_then(ServerState::parse)
                    .ok_or_else(|| self.unparsable("state", t, &said.stdout))?;
                Some(state)
            }
            None => None,
        };
        Ok(ServerStatus { state, sessions })
    }

    fn unparsable(&self, what: &'static str, t: &Template, stdout: &str) -> LbError {
        LbError::Unparsable {
            target: t.program.display().to_string(),
            command: what.to_string(),
            answer: clip(stdout),
        }
    }

    async fn run(
        &self,
        what: &'static str,
        template: &Template,
        agent: &str,
        server: &str,
    ) -> Result<Said, LbError> {
        let args = template.args(agent, server);
        let child = tokio::process::Command::new(&template.program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Past the timeout the run is dropped, and the process with it.
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| LbError::Spawn {
                what,
                program: template.program.clone(),
                source,
            })?;
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(source)) => {
                return Err(LbError::Spawn {
                    what,
                    program: template.program.clone(),
                    source,
                });
            }
            Err(_) => {
                return Err(LbError::Failed {
                    what,
                    program: template.program.clone(),
                    status: format!(
                        "was killed after {}",
                        humantime::format_duration(self.timeout)
                    ),
                    output: String::new(),
                });
            }
        };
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let shown = clip(format!("{}{}", stdout, stderr).trim());
        if !output.status.success() {
            return Err(LbError::Failed {
                what,
                program: template.program.clone(),
                status: output.status.to_string(),
                output: shown,
            });
        }
        let mut argv = vec![template.program.display().to_string()];
        argv.extend(args);
        Ok(Said {
            log: format!("{what}: {argv:?} exited 0: {shown}"),
            stdout,
        })
    }
}

/// One run: what it printed on stdout, and its line for the subtask.
struct Said {
    stdout: String,
    log: String,
}

fn first_word(s: &str) -> Option<&str> {
    s.split_whitespace().next()
}

fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_OUTPUT) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_string(),
    }
}
