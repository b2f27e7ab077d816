//! Every file of `tests/` is compiled and run. With `autotests = false` (Cargo.toml) a file
//! is a test binary only if `[[test]]` lists it, or a module of one if its root says
//! `mod FILE;`: a new file that is neither would never build, and its tests would pass by
//! not existing. `.ci/mutants` finds a file's binary the same way.
use std::{collections::BTreeMap, path::Path};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[derive(serde::Deserialize)]
struct Manifest {
    package: Package,
    test: Vec<Target>,
}

#[derive(serde::Deserialize)]
struct Package {
    autotests: bool,
}

#[derive(serde::Deserialize)]
struct Target {
    name: String,
    path: String,
}

/// File stem -> the test binary it is compiled into.
pub fn binaries() -> BTreeMap<String, String> {
    let manifest: Manifest =
        toml::from_str(&std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).unwrap())
            .unwrap();
    assert!(
        !manifest.package.autotests,
        "Cargo.toml: the test binaries are listed"
    );
    let mut binaries = BTreeMap::new();
    for target in manifest.test {
        let root = std::fs::read_to_string(Path::new(ROOT).join(&target.path))
            .unwrap_or_else(|e| panic!("{}: {e}", target.path));
        for line in root.lines() {
            if let Some(module) = line.strip_prefix("mod ").and_then(|l| l.strip_suffix(';')) {
                if module != "common" {
                    let before = binaries.insert(module.to_string(), target.name.clone());
                    assert!(before.is_none(), "tests/{module}.rs is in two binaries");
                }
            }
        }
        let stem = Path::new(&target.path)
            .file_stem()
            .unwrap()
            .to_string_lossy();
        assert_eq!(
            stem, target.name,
            "{}: a binary named after its root",
            target.path
        );
        binaries.insert(target.name.clone(), target.name);
    }
    binaries
}

#[test]
fn every_file_of_tests_is_in_a_test_binary() {
    let binaries = binaries();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(Path::new(ROOT).join("tests")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            files.push(path.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    assert!(files.len() >= 50, "{files:?}");
    let missing: Vec<_> = files
        .iter()
        .filter(|f| !binaries.contains_key(*f))
        .collect();
    assert!(
        missing.is_empty(),
        "in no test binary (list them in Cargo.toml or `mod` them in tests/agent.rs, \
         cluster.rs or repo.rs): {missing:?}"
    );
    for (file, binary) in &binaries {
        assert!(
            Path::new(ROOT).join(format!("tests/{file}.rs")).is_file(),
            "{binary} names tests/{file}.rs, which is not there"
        );
    }
}
