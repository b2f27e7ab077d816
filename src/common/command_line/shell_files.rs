//! Shell completions (bash, zsh, fish) and man pages of `odp-agent`,
//! `odp-coordinator` and `odpctl`, written from their clap definitions so
//! they say what `--help` says. The packages ship them; `odp-shell-files
//! --out DIR` writes them when the packages are built. The output depends on
//! the definitions and the version only (no date), so a rebuild of the same
//! source writes the same bytes.
//!
//! Layout under `DIR`, one directory per place the files are installed:
//! `bash/NAME`, `zsh/_NAME`, `fish/NAME.fish`, `man1/*.1`, `man8/*.8`.
use std::{
    io::Write,
    path::{Path, PathBuf},
};

use clap::{Command, CommandFactory};
use clap_complete::Shell;

use super::{AgentArgs, CoordinatorArgs, odpctl::Cli};

#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}")]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// One program's page: its section and what the page says beyond `--help`.
struct Program {
    cmd: Command,
    /// 8 for the daemons (system administration), 1 for odpctl.
    section: &'static str,
    exit_status: &'static [(&'static str, &'static str)],
    files: &'static [(&'static str, &'static str)],
    environment: &'static [(&'static str, &'static str)],
    see_also: &'static [&'static str],
}

fn programs() -> [Program; 3] {
    [
        Program {
            cmd: AgentArgs::command(),
            section: "8",
            exit_status: &[
                (
                    "0",
                    "stopped by SIGTERM or SIGINT (obproxy keeps serving), or --check passed",
                ),
                (
                    "78",
                    "bad configuration (EX_CONFIG): the message names the file, the key and the reason",
                ),
                ("1", "any other failure to run"),
            ],
            files: &[
                (
                    "/etc/odp-agent/agent.toml",
                    "the configuration (check it with --check)",
                ),
                (
                    "/var/lib/odp-agent",
                    "the state directory: agent-state.json, audit.log, obproxy.out",
                ),
                (
                    "/usr/lib/systemd/system/odp-agent.service",
                    "the unit; runs --check before every start",
                ),
                (
                    "/usr/share/doc/odp-agent/README.md",
                    "every configuration key, the security model, operations",
                ),
            ],
            environment: &[("RUST_LOG", "refines the log level (info by default)")],
            see_also: &["odp-coordinator(8)", "odpctl(1)", "systemctl(1)"],
        },
        Program {
            cmd: CoordinatorArgs::command(),
            section: "8",
            exit_status: &[
                (
                    "0",
                    "stopped by SIGTERM or SIGINT (running tasks resume at the next start), or --check passed",
                ),
                (
                    "78",
                    "bad configuration (EX_CONFIG): the message names the file, the key and the reason",
                ),
                ("1", "any other failure to run"),
            ],
            files: &[
                (
                    "/etc/odp-coordinator/coordinator.toml",
                    "the configuration (check it with --check)",
                ),
                (
                    "/var/lib/odp-coordinator",
                    "the task store (tasks.db) and audit.log",
                ),
                (
                    "/usr/lib/systemd/system/odp-coordinator.service",
                    "the unit; runs --check before every start",
                ),
                (
                    "/usr/share/doc/odp-coordinator/README.md",
                    "every configuration key, the security model, operations",
                ),
            ],
            environment: &[("RUST_LOG", "refines the log level (info by default)")],
            see_also: &["odpctl(1)", "odp-agent(8)", "systemctl(1)"],
        },
        Program {
            cmd: Cli::command(),
            section: "1",
            exit_status: &[
                (
                    "0",
                    "the command succeeded, and so did the task or operation it followed",
                ),
                ("1", "a task or operation failed"),
                ("2", "a usage or connection error"),
            ],
            files: &[],
            environment: &[
                (
                    "ODPCTL_COORDINATOR",
                    "the coordinator's address, as --coordinator",
                ),
                (
                    "ODPCTL_CACERT, ODPCTL_CERT, ODPCTL_KEY",
                    "as --cacert, --cert, --key",
                ),
                (
                    "ODPCTL_TOKEN",
                    "a bearer token sent with every call (never given as a flag, so it stays out of shell history and ps)",
                ),
            ],
            see_also: &["odp-coordinator(8)", "odp-agent(8)"],
        },
    ]
}

/// Writes every completion and man page under `out`; returns the files.
pub fn write_all(out: &Path) -> Result<Vec<PathBuf>, WriteError> {
    let mut written = Vec::new();
    for program in programs() {
        let name = program.cmd.get_name().to_string();
        for (shell, file) in [
            (Shell::Bash, format!("bash/{name}")),
            (Shell::Zsh, format!("zsh/_{name}")),
            (Shell::Fish, format!("fish/{name}.fish")),
        ] {
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut program.cmd.clone(), &name, &mut text);
            written.push(write(&out.join(file), &text)?);
        }
        let dir = out.join(format!("man{}", program.section));
        for (page, text) in man_pages(&program) {
            written.push(write(&dir.join(page), &text)?);
        }
    }
    Ok(written)
}

fn write(path: &Path, bytes: &[u8]) -> Result<PathBuf, WriteError> {
    let err = |source| WriteError {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    std::fs::write(path, bytes).map_err(err)?;
    Ok(path.to_path_buf())
}

/// The program's page, then one per visible subcommand at any depth
/// (`odpctl-cluster-restart.1`), which the parent's SUBCOMMANDS section
/// refers to by that name.
fn man_pages(program: &Program) -> Vec<(String, Vec<u8>)> {
    let mut cmd = program.cmd.clone().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    page(&cmd, program, true, &mut pages);
    pages
}

fn page(cmd: &Command, program: &Program, top: bool, pages: &mut Vec<(String, Vec<u8>)>) {
    let top_name = program.cmd.get_name();
    let version = program.cmd.get_version().unwrap_or_default();
    let man = clap_mangen::Man::new(cmd.clone())
        .section(program.section)
        .source(format!("{top_name} {version}"));
    let mut text = Vec::new();
    // Rendering into a Vec cannot fail.
    let _ = render(&man, cmd, program, top, &mut text);
    pages.push((man.get_filename(), text));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        page(sub, program, false, pages);
    }
}

/// clap_mangen's sections, with EXIT STATUS, FILES and SEE ALSO where its
/// generic EXTRA section would go.
fn render(
    man: &clap_mangen::Man,
    cmd: &Command,
    program: &Program,
    top: bool,
    w: &mut Vec<u8>,
) -> std::io::Result<()> {
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(w)?;
    }
    if cmd.has_subcommands() {
        man.render_subcommands_section(w)?;
    }
    if top {
        section(w, "EXIT STATUS", program.exit_status)?;
        section(w, "FILES", program.files)?;
        section(w, "ENVIRONMENT", program.environment)?;
    }
    let parent = program.cmd.get_name();
    let mut see_also: Vec<String> = program.see_also.iter().map(|s| s.to_string()).collect();
    if !top {
        see_also.insert(0, format!("{parent}({})", program.section));
    }
    writeln!(w, ".SH \"SEE ALSO\"")?;
    writeln!(w, "{}", escape(&see_also.join(", ")))?;
    if cmd.get_version().is_some() {
        man.render_version_section(w)?;
    }
    Ok(())
}

/// A tagged-paragraph section (`.TP`): each term in bold, then its text.
fn section(w: &mut Vec<u8>, title: &str, items: &[(&str, &str)]) -> std::io::Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    writeln!(w, ".SH \"{title}\"")?;
    for (term, text) in items {
        writeln!(w, ".TP\n\\fB{}\\fR\n{}", escape(term), escape(text))?;
    }
    Ok(())
}

/// Plain text as roff: backslashes and hyphens escaped, and a line that
/// would start with a control character guarded.
fn escape(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    if text.starts_with('.') || text.starts_with('\'') {
        format!("\\&{text}")
    } else {
        text
    }
}
