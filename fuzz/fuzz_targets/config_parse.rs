//! Arbitrary text as the agent's and the coordinator's configuration file:
//! typed values or an error naming file, key and reason; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        odp_agent::testkit::hostile_input::config_text(text);
    }
});
