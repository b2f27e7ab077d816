//! Compiles `proto/` with a Rust-native protobuf compiler (protox), so a
//! build needs no system `protoc`, and keeps the descriptor set for server
//! reflection. Also turns `ODP_TEST_SKIP_ROOT=1` into the `skip_root` cfg,
//! under which the tests that need root (a tmpfs, network namespaces) are
//! ignored (and say why), and `ODP_TEST_SKIP_MARIADB=1` into `skip_mariadb`
//! for the MariaDB tests. The end-to-end tests, whose drain windows are timed,
//! run (the `e2e` cfg) in an optimised build (any `opt-level` but 0: a
//! release), or where `ODP_TEST_E2E=1` says the dependencies are (CI's `ci`
//! profile optimises them, not this package: see Cargo.toml).
use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "odp/agent/v1/agent.proto",
    "odp/coordinator/v1/coordinator.proto",
];

/// Set to 1 where the tests cannot run as root: the tests that mount file
/// systems or make network namespaces are then built as ignored, with that
/// reason, instead of failing.
const SKIP_ROOT: &str = "ODP_TEST_SKIP_ROOT";

/// Set to 1 where MariaDB or sysbench cannot be installed: the tests that need
/// them are then built as ignored, with that reason, instead of failing.
const SKIP_MARIADB: &str = "ODP_TEST_SKIP_MARIADB";

/// Set to 1 where the dependencies are optimised though this package is not
/// (CI's `ci` profile): the end-to-end tests are built to run.
const E2E: &str = "ODP_TEST_E2E";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed=proto/{proto}");
    }
    println!("cargo:rustc-check-cfg=cfg(skip_root)");
    println!("cargo:rerun-if-env-changed={SKIP_ROOT}");
    if env::var(SKIP_ROOT).as_deref() == Ok("1") {
        println!("cargo:rustc-cfg=skip_root");
    }
    println!("cargo:rustc-check-cfg=cfg(skip_mariadb)");
    println!("cargo:rerun-if-env-changed={SKIP_MARIADB}");
    if env::var(SKIP_MARIADB).as_deref() == Ok("1") {
        println!("cargo:rustc-cfg=skip_mariadb");
    }
    println!("cargo:rustc-check-cfg=cfg(e2e)");
    println!("cargo:rerun-if-env-changed={E2E}");
    if env::var("OPT_LEVEL").is_ok_and(|level| level != "0") || env::var(E2E).as_deref() == Ok("1")
    {
        println!("cargo:rustc-cfg=e2e");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("odp_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
