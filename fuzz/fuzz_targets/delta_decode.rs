//! The delta decoder (format-spec section 5.1) on arbitrary stored bytes, bases and declared lengths: errors,
//! never panics or unbounded allocation (the declared raw length bounds the output buffer).
#![no_main]
use libfuzzer_sys::fuzz_target;

use cairn::hashing::Id;
use cairn::pack::{BlobEntry, BlobKind, Compression};

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let raw_len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) % (4 << 20);
    let rest = &data[5..];
    let (base, stored) = rest.split_at(data[4] as usize * rest.len() / 256);
    let entry = BlobEntry {
        kind: BlobKind::DeltaData,
        compression: Compression::Zstd,
        stored_len: stored.len() as u32,
        raw_len,
        offset: 8,
        id: Id::of(stored),
        base: Some(Id::of(base)),
    };
    let _ = cairn::delta::decode_blob(&entry, stored, &cairn::crypto::Crypto::plaintext(), base);
});
