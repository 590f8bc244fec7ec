//! Opening sealed envelopes and encrypted packs on arbitrary bytes: errors, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the cipher, so both decoders are driven.
    let Some((&pick, data)) = data.split_first() else {
        return;
    };
    let cipher = match pick & 1 {
        0 => cairn::crypto::Cipher::Xaes256Gcm,
        _ => cairn::crypto::Cipher::XChaCha20Poly1305,
    };
    let Ok(c) = cairn::crypto::Crypto::from_master(&[7u8; 32], cipher) else {
        return;
    };
    let _ = c.open("fuzz", cairn::crypto::AAD_BLOB, data);
    let _ = c.open_in_place("fuzz", cairn::crypto::AAD_BLOB, &mut data.to_vec());
    if let Ok(entries) = cairn::pack::parse_pack(data, &c) {
        for e in entries {
            let end = (e.offset + e.stored_len as u64) as usize;
            let _ = cairn::pack::decode_blob(&e, &data[e.offset as usize..end], &c);
            let mut stored = data[e.offset as usize..end].to_vec();
            let _ = cairn::pack::decode_blob_in_place(&e, &mut stored, &c);
        }
    }
});
