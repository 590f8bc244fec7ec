//! The repository config: hostile values must be rejected before they reach the chunker.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cairn::config::Config::decode(data);
});
