//! Snapshot files: decoded with the id of their own bytes so the fuzzer gets past the id check.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cairn::snapshot::Snapshot::decode(data, &cairn::Id::of(data));
});
