//! Stable-Rust fuzzing of every decoder of on-disk data: random inputs and random mutations of valid ones
//! (deterministic xorshift, so a failure reproduces). Decoders must return errors, never panic, and never
//! allocate without bound (a huge declared length must fail fast).

use cairn::config::Config;
use cairn::hashing::Id;
use cairn::pack::{decode_blob, encode_blob, parse_pack, BlobKind, PackBuilder};
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
        if let Ok(entries) = parse_pack(&input) {
            for e in entries {
                let end = (e.offset + e.stored_len as u64) as usize;
                let _ = decode_blob(&e, &input[e.offset as usize..end]);
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
