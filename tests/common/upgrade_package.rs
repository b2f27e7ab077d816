//! The new obproxy of an Upgrade All as a package stages it on every host,
//! for `tests/upgrade_all.rs` and `tests/upgrade_balanced.rs`.
use std::os::unix::fs::PermissionsExt;

use sha2::{Digest, Sha256};

use super::Agent;

pub const V42: &str = "4.2.3.0";
pub const V43: &str = "4.3.1.0";
/// Where the upgrade's binary is staged on every host (home-relative,
/// inside the agents' upgrade_dir, which defaults to `bin`).
pub const TARGET: &str = "bin/obproxy-4.3.1";

/// The new obproxy as a package installs it: the same file, byte for byte,
/// on every host. It runs the stand-in beside the agents' binary as 4.3
/// (obproxy runs in its home, so the path is home-relative), and reads an
/// optional file of its host's own: a host-local condition (a missing
/// library, say) is how one host's start fails while the file is the same.
pub fn package(version: &str) -> String {
    format!(
        "#!/bin/sh\nexport ODP_STANDIN_VERSION='{version}'\n\
         [ -f etc/host.env ] && . etc/host.env\nexec bin/.obproxy-standin \"$@\"\n"
    )
}

pub fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Installs `content` as `TARGET` on `agent`'s host.
pub fn stage(agent: &Agent, content: &str) {
    let path = agent.home().join(TARGET);
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Makes the upgrade's binary fail to start on `agent`'s host (only there).
pub fn break_host(agent: &Agent) {
    let etc = agent.home().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("host.env"), "export ODP_STANDIN_FAIL_START=true\n").unwrap();
}
