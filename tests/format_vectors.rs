//! The test vectors printed in format-spec/README.md, recomputed: if the format changes, this test fails
//! until the spec (and its version) changes with it.

use cairn::chunking::cut_points;
use cairn::config::ChunkerParams;
use cairn::hashing::Id;
use cairn::pack::{encode_blob, BlobKind, PackBuilder};
use cairn::tree::{Meta, Node, NodeKind, Tree};

/// xorshift64 as written in the spec: state starts at `seed`; each step `x ^= x << 13; x ^= x >> 7;
/// x ^= x << 17` and emits the low byte.
fn xorshift_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

const PARAMS: ChunkerParams = ChunkerParams {
    min_size: 64,
    avg_size: 256,
    max_size: 1024,
    seed: 0,
};

fn spec() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/format-spec/README.md"
    ))
    .unwrap()
}

#[test]
fn chunk_boundaries_and_ids_match_the_spec() {
    let data = xorshift_bytes(4096, 1);
    let cuts: Vec<String> = cut_points(&data, PARAMS)
        .map(|(o, n)| format!("({o},{n})"))
        .collect();
    let line = format!("boundaries: {}", cuts.join(" "));
    println!("{line}");
    let spec = spec();
    assert!(spec.contains(&line), "spec lacks `{line}`");
    let lines: Vec<String> = cut_points(&data, PARAMS)
        .take(3)
        .map(|(o, n)| format!("chunk ({o},{n}) id {}", Id::of(&data[o..o + n])))
        .collect();
    lines.iter().for_each(|l| println!("{l}"));
    for l in lines {
        assert!(spec.contains(&l), "spec lacks `{l}`");
    }
}

#[test]
fn tiny_pack_and_tree_match_the_spec() {
    let mut b = PackBuilder::new();
    for payload in [&b"hello, cairn"[..], &[b'a'; 100][..]] {
        let id = Id::of(payload);
        let (c, stored) = encode_blob(payload, 3).unwrap();
        b.add(BlobKind::Data, id, payload.len() as u32, c, &stored)
            .unwrap();
    }
    let (bytes, id, _) = b.seal().unwrap();
    let tree = Tree::new(vec![Node {
        name: b"a.txt".to_vec(),
        kind: NodeKind::File {
            size: 12,
            chunks: vec![Id::of(b"hello, cairn")],
        },
        meta: Meta {
            mode: 0o100644,
            mtime: 1_700_000_000,
            mtime_nsec: 5,
            nlink: 1,
            ..Meta::default()
        },
    }])
    .unwrap();
    let (tbytes, tid) = tree.encode().unwrap();
    let lines = [
        format!("pack id {id}"),
        format!("pack bytes {}", hex::encode(&bytes)),
        format!("tree id {tid}"),
        format!("tree bytes {}", hex::encode(&tbytes)),
    ];
    let spec = spec();
    lines.iter().for_each(|l| println!("{l}"));
    for l in lines {
        assert!(spec.contains(&l), "spec lacks `{l}`");
    }
}

/// The index object listing the tiny pack above (section "Index objects"), superseding the object named by
/// BLAKE3("old index").
#[test]
fn index_object_matches_the_spec() {
    use cairn::index_object::{IndexObject, PackListing};
    let mut b = PackBuilder::new();
    for payload in [&b"hello, cairn"[..], &[b'a'; 100][..]] {
        let (c, stored) = encode_blob(payload, 3).unwrap();
        b.add(
            BlobKind::Data,
            Id::of(payload),
            payload.len() as u32,
            c,
            &stored,
        )
        .unwrap();
    }
    let (bytes, id, entries) = b.seal().unwrap();
    let obj = IndexObject {
        packs: vec![PackListing {
            id,
            size: bytes.len() as u64,
            entries,
        }],
        supersedes: vec![Id::of(b"old index")],
    };
    let (obytes, oid) = obj.encode().unwrap();
    assert_eq!(IndexObject::decode(&obytes).unwrap(), obj);
    let lines = [
        format!("index object bytes {}", hex::encode(&obytes)),
        format!("index object id {oid}"),
    ];
    let spec = spec();
    lines.iter().for_each(|l| println!("{l}"));
    for l in lines {
        assert!(spec.contains(&l), "spec lacks `{l}`");
    }
}

#[test]
fn encryption_vectors_match_the_spec() {
    use cairn::crypto::keyfile::{Kdf, KeyFile};
    use cairn::crypto::{Cipher, Crypto, AAD_BLOB};
    let master: [u8; 32] = std::array::from_fn(|i| 0x20 + i as u8);
    let kdf = Kdf {
        algorithm: "argon2id".into(),
        version: 19,
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
        salt: "000102030405060708090a0b0c0d0e0f".into(),
    };
    let kf = KeyFile::create_fixed(
        &master,
        b"cairn test password",
        kdf,
        &[0x11; 24],
        "2026-12-01T00:00:00Z",
        "vectors",
    )
    .unwrap();
    let (bytes, id) = kf.encode().unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let spec = spec();
    println!("{text}\nkey file id {id}");
    // The key file from the spec opens with the password to the master key, and with no other password.
    let decoded = KeyFile::decode(&bytes).unwrap();
    assert_eq!(
        *decoded.unwrap_key(b"cairn test password").unwrap().unwrap(),
        master
    );
    assert!(decoded
        .unwrap_key(b"cairn test passworD")
        .unwrap()
        .is_none());

    let c = Crypto::from_master(&master, Cipher::Xaes256Gcm).unwrap();
    let chacha = Crypto::from_master(&master, Cipher::XChaCha20Poly1305).unwrap();
    let raw = b"hello, cairn";
    let lines = [
        format!("chunker seed {:#018x}", c.chunker_seed()),
        format!("blob `hello, cairn` id {}", c.blob_id(raw)),
        format!(
            "blob `hello, cairn` stored with xaes256gcm (nonce 24 bytes of 0x22) {}",
            hex::encode(c.seal_with_nonce(AAD_BLOB, raw, &[0x22; 24]).unwrap())
        ),
        format!(
            "blob `hello, cairn` stored with xchacha20poly1305 (nonce 24 bytes of 0x22) {}",
            hex::encode(chacha.seal_with_nonce(AAD_BLOB, raw, &[0x22; 24]).unwrap())
        ),
        {
            let data = xorshift_bytes(4096, 1);
            let seeded = ChunkerParams {
                seed: c.chunker_seed(),
                ..PARAMS
            };
            let cuts: Vec<String> = cut_points(&data, seeded)
                .map(|(o, n)| format!("({o},{n})"))
                .collect();
            format!("seeded boundaries: {}", cuts.join(" "))
        },
    ];
    lines.iter().for_each(|l| println!("{l}"));
    assert!(spec.contains(&text), "spec lacks the key file");
    assert!(spec.contains(&format!("key file id {id}")));
    for l in &lines {
        assert!(spec.contains(l.as_str()), "spec lacks `{l}`");
    }
    // The stored blob opens back to the raw bytes, under its own cipher only.
    for (c, other) in [(&c, &chacha), (&chacha, &c)] {
        let sealed = c.seal_with_nonce(AAD_BLOB, raw, &[0x22; 24]).unwrap();
        assert_eq!(&c.open("blob", AAD_BLOB, &sealed).unwrap()[..], raw);
        assert!(other.open("blob", AAD_BLOB, &sealed).is_err());
    }
}

#[test]
fn delta_blob_vector_matches_the_spec() {
    use cairn::crypto::Crypto;
    use cairn::pack::{BlobEntry, Compression};
    let base = xorshift_bytes(4096, 1);
    let raw: Vec<u8> = [&base[..2048], b"hello, cairn", &base[2048..]].concat();
    let stored = cairn::delta::compress(&raw, &base, 1).unwrap();
    let spec = spec();
    let missing: Vec<String> = [
        format!("base id  {}", Id::of(&base)),
        format!("raw id   {}", Id::of(&raw)),
        format!("stored   {}", hex::encode(&stored)),
    ]
    .into_iter()
    .filter(|line| !spec.contains(line))
    .collect();
    assert!(missing.is_empty(), "spec lacks:\n{}", missing.join("\n"));
    let entry = BlobEntry {
        kind: BlobKind::DeltaData,
        compression: Compression::Zstd,
        stored_len: stored.len() as u32,
        raw_len: raw.len() as u32,
        offset: 8,
        id: Id::of(&raw),
        base: Some(Id::of(&base)),
    };
    let back = cairn::delta::decode_blob(&entry, &stored, &Crypto::plaintext(), &base).unwrap();
    assert_eq!(back, raw);
    // A pack entry carries the base in bytes 52..84 and reads back as kind 2 with it.
    let mut b = PackBuilder::new();
    b.add_with_base(
        BlobKind::DeltaData,
        entry.id,
        entry.raw_len,
        Compression::Zstd,
        entry.base,
        &stored,
    )
    .unwrap();
    let (bytes, _, _) = b.seal().unwrap();
    let parsed = cairn::pack::parse_pack(&bytes, &Crypto::plaintext()).unwrap();
    assert_eq!(parsed[0].kind, BlobKind::DeltaData);
    assert_eq!(parsed[0].base, entry.base);
}
