//! Stable-Rust fuzzing of every decoder of on-disk data: random inputs and random mutations of valid ones
//! (deterministic xorshift, so a failure reproduces). Decoders must return errors, never panic, and never
//! allocate without bound (a huge declared length must fail fast). The archive importer's extraction gets
//! generated hostile archives and mutations of them, checked by the fuzz target's own property
//! (fuzz/archive_check.rs: nothing outside the extraction directory written or linked in).

#[path = "../fuzz/archive_check.rs"]
mod archive_check;

use cairn::config::Config;
use cairn::crypto::{Cipher, Crypto};
use cairn::hashing::Id;
use cairn::pack::{
    decode_blob, decode_blob_in_place, encode_blob, parse_pack, BlobKind, PackBuilder,
};
use cairn::snapshot::Snapshot;
use cairn::tree::{Meta, Node, NodeKind, Tree};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// Up to `max` random bytes.
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Flips, inserts, deletes or overwrites a few bytes.
    fn mutate(&mut self, v: &[u8]) -> Vec<u8> {
        let mut v = v.to_vec();
        for _ in 0..1 + self.below(4) {
            let i = self.below(v.len() + 1);
            match self.below(4) {
                0 if i < v.len() => v[i] ^= 1 << self.below(8),
                1 => v.insert(i, self.next() as u8),
                2 if i < v.len() => {
                    v.remove(i);
                }
                _ if i < v.len() => v[i] = [0, 0xff, 0x7f, 0x80][self.below(4)],
                _ => {}
            }
        }
        v
    }
}

fn valid_pack() -> Vec<u8> {
    let mut b = PackBuilder::new();
    for p in [&b"alpha alpha alpha alpha"[..], b"b", &[9u8; 300]] {
        let id = Id::of(p);
        let (c, s) = encode_blob(p, 3).unwrap();
        b.add(BlobKind::Data, id, p.len() as u32, c, &s).unwrap();
    }
    b.seal().unwrap().0
}

fn valid_tree() -> Vec<u8> {
    let node = |n: &[u8], kind| Node {
        name: n.to_vec(),
        kind,
        meta: Meta {
            mode: 0o100644,
            ..Meta::default()
        },
    };
    Tree::new(vec![
        node(
            b"f",
            NodeKind::File {
                size: 3,
                chunks: vec![Id::of(b"x"), Id::of(b"y")],
            },
        ),
        node(
            b"d",
            NodeKind::Dir {
                subtree: Id::of(b"t"),
            },
        ),
        node(
            b"l",
            NodeKind::Symlink {
                target: b"../x".to_vec(),
            },
        ),
    ])
    .unwrap()
    .encode()
    .unwrap()
    .0
}

const ROUNDS: usize = 20_000;

#[test]
fn pack_parser_never_panics() {
    let mut rng = Rng(0x5eed);
    let valid = valid_pack();
    for i in 0..ROUNDS {
        let input = if i % 4 == 0 {
            rng.bytes(300)
        } else {
            rng.mutate(&valid)
        };
        if let Ok(entries) = parse_pack(&input, &Crypto::plaintext()) {
            for e in entries {
                let end = (e.offset + e.stored_len as u64) as usize;
                let _ = decode_blob(&e, &input[e.offset as usize..end], &Crypto::plaintext());
            }
        }
    }
}

#[test]
fn tree_decoder_never_panics_nor_overallocates() {
    let mut rng = Rng(0x7ee);
    let valid = valid_tree();
    for i in 0..ROUNDS {
        let input = if i % 4 == 0 {
            rng.bytes(200)
        } else {
            rng.mutate(&valid)
        };
        let _ = Tree::decode(&input);
    }
    // Version 1, then a node count of 2^63: must fail at once, not try to reserve memory for it.
    let huge = [1u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
    assert!(Tree::decode(&huge).is_err());
}

#[test]
fn snapshot_and_config_decoders_never_panic() {
    let mut rng = Rng(0xc0ffee);
    let snap = br#"{"version":1,"time":"2026-11-24T03:00:00+01:00","host":"h","instance":null,"tags":[],"paths":["/x"],"tree":null,"streams":[{"name":"db.dump","size":3}],"partial":false}"#;
    let config = serde_json::to_vec(&Config::new_default()).unwrap();
    for i in 0..ROUNDS / 4 {
        let s = if i % 4 == 0 {
            rng.bytes(100)
        } else {
            rng.mutate(snap)
        };
        let _ = Snapshot::decode(&s, &Id::of(&s));
        let c = if i % 4 == 0 {
            rng.bytes(100)
        } else {
            rng.mutate(&config)
        };
        let _ = Config::decode(&c);
    }
    assert!(Snapshot::decode(snap, &Id::of(snap)).is_ok());
}

fn valid_sealed_pack(c: &Crypto) -> Vec<u8> {
    let mut b = PackBuilder::start_with(Vec::new(), c.clone()).unwrap();
    for p in [&b"alpha alpha alpha alpha"[..], b"b", &[9u8; 300]] {
        let (comp, s) = encode_blob(p, 3).unwrap();
        let sealed = c.seal(cairn::crypto::AAD_BLOB, &s).unwrap();
        b.add(BlobKind::Data, c.blob_id(p), p.len() as u32, comp, &sealed)
            .unwrap();
    }
    b.seal().unwrap().0
}

#[test]
fn envelope_and_encrypted_pack_decoders_never_panic() {
    for cipher in [Cipher::Xaes256Gcm, Cipher::XChaCha20Poly1305] {
        envelope_decoders_never_panic(&Crypto::from_master(&[7u8; 32], cipher).unwrap());
    }
}

fn envelope_decoders_never_panic(c: &Crypto) {
    let mut rng = Rng(0xe2e);
    let valid = valid_sealed_pack(c);
    // The valid pack parses and its blobs open; nothing mutated ever opens.
    let entries = parse_pack(&valid, c).unwrap();
    assert_eq!(entries.len(), 3);
    let sealed = c.seal(b"aad", b"hello").unwrap().into_owned();
    for i in 0..ROUNDS {
        let input = if i % 4 == 0 {
            rng.bytes(300)
        } else {
            rng.mutate(&valid)
        };
        if let Ok(entries) = parse_pack(&input, c) {
            for e in entries {
                let end = (e.offset + e.stored_len as u64) as usize;
                let stored = &input[e.offset as usize..end];
                // Opened where it lies (as a restore does) or from a copy: the same verdict, the same bytes.
                let copied = decode_blob(&e, stored, c);
                let in_place = decode_blob_in_place(&e, &mut stored.to_vec(), c);
                assert_eq!(copied.ok(), in_place.ok());
            }
        }
        let m = rng.mutate(&sealed);
        if m != sealed {
            assert!(c.open("x", b"aad", &m).is_err());
            assert!(c.open_in_place("x", b"aad", &mut m.clone()).is_err());
        }
    }
}

#[test]
fn key_file_decoder_never_panics() {
    use cairn::crypto::keyfile::{Kdf, KeyFile};
    let mut rng = Rng(0x6e7);
    let kdf = Kdf {
        algorithm: "argon2id".into(),
        version: 19,
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
        salt: "000102030405060708090a0b0c0d0e0f".into(),
    };
    let valid = KeyFile::create(&[3u8; 32], b"pw", kdf)
        .unwrap()
        .encode()
        .unwrap()
        .0;
    assert!(KeyFile::decode(&valid).is_ok());
    for i in 0..ROUNDS / 4 {
        let input = if i % 4 == 0 {
            rng.bytes(200)
        } else {
            rng.mutate(&valid)
        };
        // Only decoding: a mutated file that still decodes has parameters within the bounds.
        if let Ok(kf) = KeyFile::decode(&input) {
            assert!(kf.kdf.memory_kib <= 1024 * 1024 && kf.kdf.iterations <= 64);
        }
    }
}

/// Member names and link targets an attacker would try, relative escapes aimed at the check's sentinel.
const NAMES: &[&[u8]] = &[
    b"dump.sql",
    b"a",
    b"a/b",
    b"a/b/c",
    b"d",
    b"d/x",
    b"d/secret",
    b"./d/../e",
    b"../x",
    b"../../../outside/planted",
    b"/tmp/planted-by-fuzz-smoke",
    b"",
    b".",
    b"./",
    b"a//b/./c",
    b"caf\xe9",
    b"l",
    b"l/y",
];
const TARGETS: &[&[u8]] = &[
    b"../../../outside",
    archive_check::ESCAPE.as_bytes(),
    b"../../../outside/secret",
    b"/",
    b"/etc",
    b"..",
    b".",
    b"a",
    b"d",
    b"l",
    b"a/b",
    b"",
];

/// A random tar of hostile members, written header by header (raw names, nothing sanitised).
fn hostile_tar(rng: &mut Rng) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for _ in 0..1 + rng.below(8) {
        let name = NAMES[rng.below(NAMES.len())];
        let target = TARGETS[rng.below(TARGETS.len())];
        let kind = [
            tar::EntryType::Regular,
            tar::EntryType::Directory,
            tar::EntryType::Symlink,
            tar::EntryType::Symlink,
            tar::EntryType::Link,
            tar::EntryType::Link,
            tar::EntryType::Fifo,
            tar::EntryType::Char,
        ][rng.below(8)];
        let data = if kind == tar::EntryType::Regular {
            rng.bytes(64)
        } else {
            Vec::new()
        };
        let mut h = tar::Header::new_gnu();
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..target.len()].copy_from_slice(target);
        h.set_entry_type(kind);
        h.set_mode([0o644, 0o755, 0o000, 0o4777][rng.below(4)]);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// A random zip of hostile members (symlinks as unix mode bits; the zip writer takes UTF-8 names only).
fn hostile_zip(rng: &mut Rng) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    for _ in 0..1 + rng.below(8) {
        let name = String::from_utf8_lossy(NAMES[rng.below(NAMES.len())]).into_owned();
        let target = String::from_utf8_lossy(TARGETS[rng.below(TARGETS.len())]).into_owned();
        // Duplicate names are refused by the writer: that member is simply left out.
        let _ = match rng.below(3) {
            0 => z.start_file(name, opts).and_then(|()| {
                std::io::Write::write_all(&mut z, &rng.bytes(64)).map_err(Into::into)
            }),
            1 => z.add_directory(name, opts),
            _ => z.add_symlink(name, target, opts),
        };
    }
    z.finish().unwrap().into_inner()
}

#[test]
fn archive_extraction_never_escapes_its_directory() {
    let started = std::time::Instant::now();
    let mut rng = Rng(0xa5c1);
    let mut runs = 0;
    // Thousands of extractions: on a tmpfs when there is one (unlinking on a disk mounted with `discard`
    // costs a millisecond or more per file).
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    // Bounded by count and by time (a few seconds), whichever comes first; at least 1000 runs.
    while runs < 4000 && (runs < 1000 || started.elapsed().as_secs() < 8) {
        let (prefix, valid) = if rng.below(2) == 0 {
            (0u8, hostile_tar(&mut rng))
        } else {
            (1u8, hostile_zip(&mut rng))
        };
        for i in 0..4 {
            let body = if i == 0 {
                valid.clone()
            } else {
                rng.mutate(&valid)
            };
            let mut input = vec![prefix];
            input.extend_from_slice(&body);
            archive_check::check_in(&base, &input);
            runs += 1;
        }
    }
    // The libFuzzer seed corpus, and mutations of it.
    let corpus =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/archive_extract");
    for e in std::fs::read_dir(&corpus).unwrap() {
        let seed = std::fs::read(e.unwrap().path()).unwrap();
        archive_check::check_in(&base, &seed);
        for _ in 0..50 {
            let mut m = rng.mutate(&seed[1..]);
            m.insert(0, seed[0]);
            archive_check::check_in(&base, &m);
        }
    }
    // Raw bytes too: random input as a gzipped tar and as itself.
    for _ in 0..200 {
        archive_check::check_in(&base, &rng.bytes(600));
    }
    eprintln!("{runs} archive runs in {:?}", started.elapsed());
    assert!(runs >= 1000, "{runs} runs");
}

/// A tar.gz or zip with `dump.sql` and random members whose link targets include absolute paths into the
/// host directory `outside`.
fn hostile_import(seed: u64, outside: &std::path::Path) -> Vec<u8> {
    let mut rng = Rng(seed);
    let secret = outside.join("secret");
    let abs: [&[u8]; 3] = [
        outside.as_os_str().as_encoded_bytes(),
        secret.as_os_str().as_encoded_bytes(),
        b"../../../outside/secret",
    ];
    let names: [&[u8]; 6] = [b"notes", b"fs", b"fs/x", b"a", b"a/b", b"fs/secret"];
    if seed % 2 == 0 {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_path("dump.sql").unwrap();
        h.set_size(3);
        h.set_cksum();
        b.append(&h, &b"x;\n"[..]).unwrap();
        for _ in 0..1 + rng.below(6) {
            let (name, target) = (names[rng.below(6)], abs[rng.below(3)]);
            let kind = [
                tar::EntryType::Symlink,
                tar::EntryType::Link,
                tar::EntryType::Directory,
                tar::EntryType::Regular,
            ][rng.below(4)];
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.as_old_mut().linkname[..target.len()].copy_from_slice(target);
            h.set_entry_type(kind);
            h.set_mode(0o755);
            h.set_size(0);
            h.set_cksum();
            b.append(&h, &[][..]).unwrap();
        }
        archive_check::gzip(&b.into_inner().unwrap())
    } else {
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default();
        z.start_file("dump.sql", opts).unwrap();
        std::io::Write::write_all(&mut z, b"x;\n").unwrap();
        for _ in 0..1 + rng.below(6) {
            let name = String::from_utf8_lossy(names[rng.below(6)]).into_owned();
            let target = String::from_utf8_lossy(abs[rng.below(3)]).into_owned();
            let _ = if rng.below(3) == 0 {
                z.add_directory(name, opts)
            } else {
                z.add_symlink(name, target, opts)
            };
        }
        z.finish().unwrap().into_inner()
    }
}

#[test]
fn archive_import_never_stores_a_host_file() {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    for seed in 1..=120u64 {
        archive_check::check_import_in(&base, &|outside| hostile_import(seed, outside));
    }
}

#[test]
fn delta_decoder_never_panics_nor_overallocates() {
    use cairn::pack::{BlobEntry, Compression};
    let mut rng = Rng(0xde17a);
    let base: Vec<u8> = (0..3000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
    let mut raw = base.clone();
    raw[5000..5012].copy_from_slice(b"hello, cairn");
    let valid = cairn::delta::compress(&raw, &base, 1).unwrap();
    for i in 0..ROUNDS {
        let stored = if i % 4 == 0 {
            rng.bytes(300)
        } else {
            rng.mutate(&valid)
        };
        let b = if i % 3 == 0 {
            rng.mutate(&base)
        } else {
            base.clone()
        };
        // Declared lengths from tiny to the largest accepted (and one beyond): only the output is bounded.
        let raw_len = [raw.len() as u32, 1, 0, cairn::pack::MAX_BLOB_LEN, u32::MAX][rng.below(5)];
        let entry = BlobEntry {
            kind: BlobKind::DeltaData,
            compression: Compression::Zstd,
            stored_len: stored.len() as u32,
            raw_len,
            offset: 8,
            id: Id::of(&raw),
            base: Some(Id::of(&b)),
        };
        if let Ok(out) = cairn::delta::decode_blob(&entry, &stored, &Crypto::plaintext(), &b) {
            assert_eq!(
                out, raw,
                "a decoded delta is always the exact content of its id"
            );
        }
    }
}
