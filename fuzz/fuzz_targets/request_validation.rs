//! Arbitrary bytes decoded (prost) as each request message of the agent and
//! the coordinator and run through the services' own validation, and as the
//! `authorization` header: accepted, or refused naming the field; never a
//! panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use odp_agent::{agent::config::ObproxyConfig, testkit::hostile_input};

/// An obproxy home with the traps a hostile `binary` reaches for.
fn obproxy() -> &'static ObproxyConfig {
    static HOME: OnceLock<ObproxyConfig> = OnceLock::new();
    HOME.get_or_init(|| {
        // One fixed place, reused: libFuzzer exits without running destructors.
        let dir = std::env::temp_dir().join("odp-agent-fuzz");
        hostile_input::fixture(&dir).expect("cannot make the fuzz fixture")
    })
}

fuzz_target!(|data: &[u8]| {
    hostile_input::agent_request(data, obproxy());
    hostile_input::coordinator_request(data);
    hostile_input::authorization(data);
});
