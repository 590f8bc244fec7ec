//! Key file decoding on arbitrary bytes: errors, never panics; no key derivation is attempted on what it
//! refuses (a hostile file must not make Argon2 allocate without bound).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cairn::crypto::keyfile::KeyFile::decode(data);
});
