//! The Debian packages, odp-agent and odp-coordinator (README, "Install").
//!
//! Always run: the maintainer scripts parse, the shipped configurations are
//! ones the daemons accept and point where the scripts make the state, and
//! every file the packages name is in the tree or written by
//! `odp-shell-files`.
//!
//! The built packages themselves, installed, upgraded and purged:
//! `tests/packages_installed.rs` (ignored by default).
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn repo(rel: &str) -> PathBuf {
    Path::new(MANIFEST_DIR).join(rel)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_maintainer_scripts_parse_and_take_the_generated_snippets() {
    for package in ["odp-agent", "odp-coordinator"] {
        for script in ["postinst", "postrm"] {
            let path = repo(&format!("packaging/{package}/{script}"));
            let body = std::fs::read_to_string(&path).unwrap();
            let out = Command::new("sh").arg("-n").arg(&path).output().unwrap();
            assert!(out.status.success(), "{}: {}", path.display(), text(&out));
            // cargo-deb puts the systemd and sysusers snippets there.
            assert_eq!(body.matches("#DEBHELPER#").count(), 1, "{}", path.display());
            assert!(body.starts_with("#!/bin/sh\n") && body.contains("\nset -e\n"));
        }
    }
}

#[test]
fn the_shipped_configurations_are_valid_and_use_the_packaged_state() {
    let agent =
        odp_agent::agent::config::AgentConfig::load(&repo("packaging/odp-agent/agent.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(agent.state.dir, Path::new("/var/lib/odp-agent"));
    assert!(agent.server.listen.ip().is_loopback());
    let coordinator = odp_agent::coordinator::config::CoordinatorConfig::load(&repo(
        "packaging/odp-coordinator/coordinator.toml",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let odp_agent::coordinator::config::StoreConfig::Sqlite(store) = &coordinator.store else {
        panic!("the packaged coordinator keeps its tasks in SQLite");
    };
    assert_eq!(store, Path::new("/var/lib/odp-coordinator/tasks.db"));
    assert!(coordinator.server.listen.ip().is_loopback());
}

/// An asset of cargo-deb: source, destination, mode.
type Asset = (String, String, String);

/// `[package.metadata.deb]` and its variants: (package, assets).
fn packages() -> Vec<(String, Vec<Asset>)> {
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo("Cargo.toml")).unwrap()).unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets = |table: &toml::Value| -> Vec<Asset> {
        table["assets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let a = a.as_array().unwrap();
                let s = |i: usize| a[i].as_str().unwrap().to_string();
                (s(0), s(1), s(2))
            })
            .collect()
    };
    let mut out = vec![(deb["name"].as_str().unwrap().to_string(), assets(deb))];
    for variant in deb["variants"].as_table().unwrap().values() {
        out.push((
            variant["name"].as_str().unwrap().to_string(),
            assets(variant),
        ));
    }
    out
}

#[test]
fn every_packaged_file_is_in_the_tree_or_generated() {
    let generated = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_odp-shell-files"))
        .arg("--out")
        .arg(generated.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut shipped = Vec::new();
    for (package, assets) in packages() {
        let mut conffile = false;
        for (source, dest, mode) in assets {
            if let Some(rel) = source.strip_prefix("target/release/shell-files/") {
                // packaging/build-debs gzips the man pages.
                let pattern = generated
                    .path()
                    .join(rel.strip_suffix(".gz").unwrap_or(rel));
                let found: Vec<_> = glob(&pattern);
                assert!(
                    !found.is_empty(),
                    "{package}: nothing generated for {source}"
                );
                shipped.extend(found);
            } else if let Some(bin) = source.strip_prefix("target/release/") {
                assert!(
                    repo(&format!("src/bin/{bin}.rs")).exists()
                        || repo(&format!("src/bin/{bin}/main.rs")).exists(),
                    "{package}: no binary {bin}"
                );
            } else {
                assert!(repo(&source).exists(), "{package}: {source} is missing");
            }
            if dest.starts_with("etc/") {
                conffile = true;
                assert_eq!(mode, "640", "{package}: {dest} must not be world-readable");
            }
        }
        assert!(conffile, "{package} ships no configuration");
        assert!(repo(&format!("systemd/{package}.service")).exists());
    }
    // And nothing generated is left out of both packages.
    for file in glob(&generated.path().join("*/*")) {
        assert!(
            shipped.contains(&file),
            "{} is in no package",
            file.display()
        );
    }
}

/// The files matching `pattern`, whose last two components may hold a `*`.
fn glob(pattern: &Path) -> Vec<PathBuf> {
    let name = pattern.file_name().unwrap().to_string_lossy().into_owned();
    let dir = pattern.parent().unwrap();
    let dirs: Vec<PathBuf> = if dir.file_name().is_some_and(|d| d == "*") {
        std::fs::read_dir(dir.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    } else {
        vec![dir.to_path_buf()]
    };
    let (prefix, suffix) = name.split_once('*').unwrap_or((&name, ""));
    let exact = !name.contains('*');
    let mut found = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            let matches = if exact {
                file == name
            } else {
                file.starts_with(prefix) && file.ends_with(suffix)
            };
            if matches {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}
