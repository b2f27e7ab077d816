//! The completions and man pages the packages ship, as `odp-shell-files`
//! writes them: every shell parses its file and completes from it (bash and
//! fish asked for real completions), every man page renders without a groff
//! warning and names what `--help` does, every page a SUBCOMMANDS section
//! refers to exists, and two runs write the same bytes. Needs bash, zsh,
//! fish and groff (`apt-get install -y zsh fish groff-base`; `.ci/run`
//! installs them) and fails, saying so, without them.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

const GENERATOR: &str = env!("CARGO_BIN_EXE_odp-shell-files");
const PROGRAMS: [&str; 3] = ["odp-agent", "odp-coordinator", "odpctl"];

fn generate() -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(GENERATOR)
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let written = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(PathBuf::from)
        .collect();
    (dir, written)
}

fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e}; install it (`apt-get install -y zsh fish groff-base`; .ci/run does)")
        });
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What bash offers after `line` (the cursor at its end), from the
/// completion file loaded as bash-completion loads it.
fn bash_complete(file: &Path, name: &str, line: &str) -> Vec<String> {
    let script = format!(
        r#"source {file:?}
fn=$(complete -p {name} | sed -E 's/.* -F ([^ ]+) .*/\1/')
COMP_LINE={line:?}; COMP_POINT=${{#COMP_LINE}}
read -ra COMP_WORDS <<< "$COMP_LINE"
[[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
"$fn" {name} "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
        file = file.display().to_string()
    );
    let (ok, stdout, stderr) = run("bash", &["-c", &script]);
    assert!(ok && stderr.is_empty(), "{line}: {stderr}");
    stdout.lines().map(str::to_string).collect()
}

#[test]
fn every_program_gets_bash_zsh_fish_completions_and_a_man_page() {
    let (dir, written) = generate();
    let path = |rel: &str| dir.path().join(rel);
    for name in PROGRAMS {
        let section = if name == "odpctl" { "1" } else { "8" };
        for rel in [
            format!("bash/{name}"),
            format!("zsh/_{name}"),
            format!("fish/{name}.fish"),
            format!("man{section}/{name}.{section}"),
        ] {
            let file = path(&rel);
            assert!(written.contains(&file), "{rel} not reported written");
            let len = std::fs::metadata(&file).unwrap().len();
            assert!(len > 200, "{rel}: {len} bytes");
        }
    }
}

#[test]
fn the_completions_parse_and_complete_subcommands_and_options() {
    let (dir, _) = generate();
    let path = |rel: &str| dir.path().join(rel).display().to_string();
    for name in PROGRAMS {
        let (ok, _, err) = run("bash", &["-n", &path(&format!("bash/{name}"))]);
        assert!(ok, "bash -n {name}: {err}");
        let (ok, _, err) = run("zsh", &["-n", &path(&format!("zsh/_{name}"))]);
        assert!(ok, "zsh -n _{name}: {err}");
        let (ok, _, err) = run(
            "fish",
            &["--no-execute", &path(&format!("fish/{name}.fish"))],
        );
        assert!(ok, "fish --no-execute {name}.fish: {err}");
    }
    let zsh = std::fs::read_to_string(path("zsh/_odpctl")).unwrap();
    assert!(zsh.starts_with("#compdef odpctl"), "{}", &zsh[..40]);

    let bash = |name: &str, line: &str| {
        bash_complete(Path::new(&path(&format!("bash/{name}"))), name, line)
    };
    let top = bash("odpctl", "odpctl ");
    for want in ["cluster", "task", "agent", "--coordinator"] {
        assert!(top.contains(&want.to_string()), "{want} in {top:?}");
    }
    assert_eq!(bash("odpctl", "odpctl cluster res"), ["restart"]);
    let restart = bash("odpctl", "odpctl cluster restart --");
    for want in ["--force", "--batch", "--exit-timeout", "--max-failures"] {
        assert!(restart.contains(&want.to_string()), "{want} in {restart:?}");
    }
    assert_eq!(bash("odpctl", "odpctl -o "), ["table", "json"]);
    let agent = bash("odp-agent", "odp-agent --c");
    assert!(
        agent.contains(&"--check".to_string()) && agent.contains(&"--config".to_string()),
        "{agent:?}"
    );
    assert!(bash("odp-coordinator", "odp-coordinator --").contains(&"--check".to_string()));

    // fish answers `complete -C` from the loaded file.
    let fish = |line: &str| {
        let script = format!("source {}; complete -C {line:?}", path("fish/odpctl.fish"));
        let (ok, out, err) = run("fish", &["--no-config", "-c", &script]);
        assert!(ok, "{err}");
        out.lines()
            .map(|l| l.split('\t').next().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    let sub = fish("odpctl cluster ");
    for want in ["list", "status", "stop", "start", "restart"] {
        assert!(sub.contains(&want.to_string()), "{want} in {sub:?}");
    }
}

/// A man page as `man` shows it, with groff's warnings on stderr.
fn render(page: &Path) -> String {
    let (ok, _, warnings) = run(
        "groff",
        &["-man", "-Tutf8", "-ww", "-z", &page.display().to_string()],
    );
    assert!(ok && warnings.is_empty(), "{}: {warnings}", page.display());
    let out = Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "200")
        .output()
        .expect("man");
    assert!(out.status.success(), "man -l {}: {out:?}", page.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_man_pages_render_and_say_what_help_says() {
    let (dir, written) = generate();
    let pages: BTreeMap<String, PathBuf> = written
        .iter()
        .filter(|p| {
            p.parent()
                .is_some_and(|d| d.ends_with("man1") || d.ends_with("man8"))
        })
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                p.clone(),
            )
        })
        .collect();
    let agent = render(&dir.path().join("man8/odp-agent.8"));
    for want in [
        "odp-agent - Controls the local obproxy",
        "--check",
        "--config",
        "EXIT STATUS",
        "78",
        "/etc/odp-agent/agent.toml",
    ] {
        assert!(agent.contains(want), "{want:?} in odp-agent(8):\n{agent}");
    }
    let coordinator = render(&dir.path().join("man8/odp-coordinator.8"));
    for want in [
        "--check",
        "/etc/odp-coordinator/coordinator.toml",
        "odpctl(1)",
    ] {
        assert!(coordinator.contains(want), "{want:?} in odp-coordinator(8)");
    }
    let odpctl = render(&dir.path().join("man1/odpctl.1"));
    for want in ["ODPCTL_TOKEN", "EXIT STATUS", "odpctl-cluster(1)"] {
        assert!(odpctl.contains(want), "{want:?} in odpctl(1):\n{odpctl}");
    }
    // Every page renders, and every page a page refers to exists.
    for (name, page) in &pages {
        let text = render(page);
        for word in text.split(|c: char| c.is_whitespace() || c == ',') {
            if let Some(stem) = word
                .strip_suffix("(1)")
                .filter(|s| s.starts_with("odpctl-"))
            {
                assert!(
                    pages.contains_key(&format!("{stem}.1")),
                    "{name} refers to {word}"
                );
            }
        }
    }
    let restart = render(&pages["odpctl-cluster-restart.1"]);
    assert!(
        restart.contains("--force") && restart.contains("--exit-timeout"),
        "{restart}"
    );
}

#[test]
fn two_runs_write_the_same_bytes() {
    let (a, written) = generate();
    let (b, _) = generate();
    for file in written {
        let rel = file.strip_prefix(a.path()).unwrap();
        assert_eq!(
            std::fs::read(&file).unwrap(),
            std::fs::read(b.path().join(rel)).unwrap(),
            "{}",
            rel.display()
        );
    }
}
