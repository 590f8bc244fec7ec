//! Pack parsing and blob decoding on arbitrary bytes: errors, never panics or unbounded allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let plain = cairn::crypto::Crypto::plaintext();
    if let Ok(entries) = cairn::pack::parse_pack(data, &plain) {
        for e in entries {
            let end = (e.offset + e.stored_len as u64) as usize;
            let _ = cairn::pack::decode_blob(&e, &data[e.offset as usize..end], &plain);
        }
    }
});
