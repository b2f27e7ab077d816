//! The tree itself, no daemon started: the library's module graph, `.ci/run`'s refusals, the
//! break-restore list, the packages' files and scripts, the units, completions and man pages.
//!
//! One test binary for many files (`Cargo.toml`, `autotests = false`): every binary links the
//! library, tokio and tonic again, and one per file was most of CI's build. Each file is a
//! module, so a test is named `FILE::NAME` (`cargo test --test repo packages::`), and
//! libtest runs them in name order, two at a time on two cores: mostly beside a test of the
//! same file, as when each file was a binary of its own.

mod ci_script;
mod module_graph;
mod mutants_list;
mod packages;
mod shell_files;
mod systemd_units;
mod test_layout;
