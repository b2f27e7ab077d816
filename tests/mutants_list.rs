//! The break-restore list (`tests/mutants/mutants.toml`, run by `.ci/mutants`) cannot rot
//! unseen: every text it replaces is in its file exactly once and every test it names exists,
//! in a file some test binary compiles; checked on every `cargo test` (the runner itself is
//! slow and run on demand). And the runner refuses a list with an entry that does not match,
//! before it builds anything.
use std::{path::Path, process::Command};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[derive(serde::Deserialize)]
struct List {
    mutant: Vec<Mutant>,
}

#[derive(serde::Deserialize)]
struct Mutant {
    claim: String,
    tests: Vec<String>,
    edit: Vec<Edit>,
}

#[derive(serde::Deserialize)]
struct Edit {
    file: String,
    from: String,
    to: String,
}

/// The source file a unit test's path (`common::systemd::tests::NAME`) lives in.
fn unit_test_file(path: &str) -> Option<std::path::PathBuf> {
    let modules: Vec<&str> = path.split("::").collect();
    let module = modules.iter().position(|m| *m == "tests")?;
    let base = Path::new(ROOT)
        .join("src")
        .join(modules[..module].join("/"));
    [base.with_extension("rs"), base.join("mod.rs")]
        .into_iter()
        .find(|p| p.is_file())
}

#[test]
fn every_entry_replaces_a_text_found_once_and_names_tests_that_exist() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("tests/mutants/mutants.toml")).unwrap();
    let list: List = toml::from_str(&text).unwrap();
    assert!(list.mutant.len() >= 20, "{} entries", list.mutant.len());
    let binaries = crate::test_layout::binaries();
    for m in &list.mutant {
        assert!(!m.edit.is_empty() && !m.tests.is_empty(), "{}", m.claim);
        for e in &m.edit {
            let source = std::fs::read_to_string(Path::new(ROOT).join(&e.file))
                .unwrap_or_else(|err| panic!("{}: {}: {err}", m.claim, e.file));
            assert_eq!(
                source.matches(e.from.as_str()).count(),
                1,
                "{}: the text to replace in {} is not there exactly once",
                m.claim,
                e.file
            );
            assert_ne!(e.from, e.to, "{}: an edit that changes nothing", m.claim);
        }
        for t in &m.tests {
            let (target, name) = t.split_once("::").expect("FILE::NAME or lib::PATH");
            let (file, function) = if target == "lib" {
                let file = unit_test_file(name).unwrap_or_else(|| panic!("{t}: no source file"));
                (file, name.rsplit("::").next().unwrap())
            } else {
                assert!(
                    binaries.contains_key(target),
                    "{t}: tests/{target}.rs is in no test binary"
                );
                (Path::new(ROOT).join(format!("tests/{target}.rs")), name)
            };
            let source = std::fs::read_to_string(&file)
                .unwrap_or_else(|err| panic!("{t}: {}: {err}", file.display()));
            assert!(
                source.contains(&format!("fn {function}(")),
                "{t}: no fn {function} in {}",
                file.display()
            );
        }
    }
}

#[test]
fn the_runner_refuses_an_entry_that_does_not_match_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    for (text, times) in [("this text is nowhere in the file", 0), ("\n", 2)] {
        let list = dir.path().join("list.toml");
        std::fs::write(
            &list,
            format!(
                "[[mutant]]\nclaim = \"rotten\"\ntests = [\"ci_script::x\"]\n\
                 [[mutant.edit]]\nfile = \"Cargo.toml\"\nfrom = {text:?}\nto = \"x\"\n"
            ),
        )
        .unwrap();
        let out = Command::new("python3")
            .arg(Path::new(ROOT).join(".ci/mutants"))
            .args(["--check", "--list"])
            .arg(&list)
            .output()
            .expect("python3 runs .ci/mutants");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        let said = if times == 0 {
            "occurs 0 times"
        } else {
            "occurs"
        };
        assert!(
            stderr.contains("rotten") && stderr.contains(said) && stderr.contains("not once"),
            "{stderr}"
        );
    }
}
