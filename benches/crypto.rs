//! The AEADs the format uses and could use, on this machine (format-spec "Encryption", BENCHMARKS.md):
//! sealing blob-sized inputs with XChaCha20-Poly1305 and XAES-256-GCM (the reference crates and cairn's
//! aws-lc-rs versions) and plain AES-256-GCM (`aes-gcm`, 96-bit nonces: not usable with random nonces),
//! plus the keyed and plain BLAKE3 that name blobs. `cargo bench --bench crypto`.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use cairn::crypto::ExtendedNonceAead;
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use xaes_256_gcm::aead::{AeadInOut, KeyInit as _};

fn inputs() -> Vec<(&'static str, Vec<u8>)> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    // A stream chunk (8 KiB) and a file chunk (1 MiB, the default average).
    vec![("8KiB", bytes(8 << 10)), ("1MiB", bytes(1 << 20))]
}

fn aead(c: &mut Criterion) {
    let key = [7u8; 32];
    let xchacha = XChaCha20Poly1305::new((&key).into());
    let aes = Aes256Gcm::new((&key).into());
    let reference_xaes = xaes_256_gcm::Xaes256Gcm::new((&key).into());
    let mut g = c.benchmark_group("aead seal");
    for (name, data) in inputs() {
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("xchacha20poly1305", name),
            &data,
            |b, d| {
                let mut buf = d.clone();
                b.iter(|| {
                    buf.copy_from_slice(d);
                    xchacha
                        .encrypt_in_place_detached(XNonce::from_slice(&[1; 24]), b"aad", &mut buf)
                        .unwrap()
                })
            },
        );
        let ours = cairn::crypto::xchacha::XChaCha::new(&key);
        g.bench_with_input(
            BenchmarkId::new("xchacha20poly1305 cairn (aws-lc-rs)", name),
            &data,
            |b, d| {
                let mut buf = d.clone();
                b.iter(|| {
                    buf.copy_from_slice(d);
                    ours.seal_in_place_detached(&[1; 24], b"aad", &mut buf)
                        .unwrap()
                })
            },
        );
        let xaes = cairn::crypto::xaes::XAes::new(&key).unwrap();
        g.bench_with_input(
            BenchmarkId::new("xaes256gcm cairn (aws-lc-rs)", name),
            &data,
            |b, d| {
                let mut buf = d.clone();
                b.iter(|| {
                    buf.copy_from_slice(d);
                    xaes.seal_in_place_detached(&[1; 24], b"aad", &mut buf)
                        .unwrap()
                })
            },
        );
        g.bench_with_input(BenchmarkId::new("xaes256gcm", name), &data, |b, d| {
            let mut buf = d.clone();
            b.iter(|| {
                buf.copy_from_slice(d);
                reference_xaes
                    .encrypt_inout_detached(&[1; 24].into(), b"aad", buf.as_mut_slice().into())
                    .unwrap()
            })
        });
        g.bench_with_input(BenchmarkId::new("aes256gcm", name), &data, |b, d| {
            let mut buf = d.clone();
            b.iter(|| {
                buf.copy_from_slice(d);
                aes.encrypt_in_place_detached(Nonce::from_slice(&[1; 12]), b"aad", &mut buf)
                    .unwrap()
            })
        });
        g.bench_with_input(BenchmarkId::new("blake3 keyed", name), &data, |b, d| {
            b.iter(|| blake3::keyed_hash(&key, std::hint::black_box(d)))
        });
        g.bench_with_input(BenchmarkId::new("blake3", name), &data, |b, d| {
            b.iter(|| blake3::hash(std::hint::black_box(d)))
        });
    }
    g.finish();
}

fn argon(c: &mut Criterion) {
    let mut g = c.benchmark_group("argon2id");
    g.sample_size(10);
    let kdf = cairn::crypto::keyfile::Kdf {
        algorithm: "argon2id".into(),
        version: 19,
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 1,
        salt: "000102030405060708090a0b0c0d0e0f".into(),
    };
    g.bench_function("64MiB t=3 p=1 (new keys)", |b| {
        b.iter(|| kdf.derive(b"password").unwrap())
    });
    g.finish();
}

criterion_group!(benches, aead, argon);
criterion_main!(benches);
