//! CPU-bound building blocks, each beside the raw speed of the crate it wraps, so cairn's overhead is visible:
//! chunking (FastCDC), ids (BLAKE3) and blob encoding (zstd, with cairn's verify-after-compress).
//!
//! `cargo bench --bench primitives`; see BENCHMARKS.md, "Micro-benchmarks".

use std::hint::black_box;
use std::io::Cursor;

use cairn::chunking::{cut_points, ChunkReader};
use cairn::config::ChunkerParams;
use cairn::pack::encode_blob;
use cairn::Id;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fastcdc::v2020::FastCDC;

mod common;

const MIB: usize = 1024 * 1024;

fn chunking(c: &mut Criterion) {
    let data = common::mixed_bytes(32 * MIB, 1);
    for (name, p) in [
        ("files", ChunkerParams::FILES),
        ("streams", ChunkerParams::STREAMS),
    ] {
        let mut g = c.benchmark_group(format!("chunking/{name}"));
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function("raw fastcdc::v2020::FastCDC", |b| {
            b.iter(|| {
                FastCDC::new(
                    black_box(&data),
                    p.min_size as usize,
                    p.avg_size as usize,
                    p.max_size as usize,
                )
                .count()
            })
        });
        g.bench_function("cairn cut_points", |b| {
            b.iter(|| cut_points(black_box(&data), p).count())
        });
        g.bench_function("cairn ChunkReader", |b| {
            b.iter(|| {
                let mut r = ChunkReader::new(Cursor::new(black_box(&data)), p);
                let mut n = 0;
                while let Some(batch) = r.next_batch().unwrap() {
                    n += batch.cuts.len();
                }
                n
            })
        });
        g.finish();
    }
}

fn hashing(c: &mut Criterion) {
    let mut g = c.benchmark_group("blake3");
    for size in [4 * 1024, 32 * 1024, MIB] {
        let data = common::random_bytes(size, 2);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("raw blake3::hash", size), &data, |b, d| {
            b.iter(|| blake3::hash(black_box(d)))
        });
        g.bench_with_input(BenchmarkId::new("cairn Id::of", size), &data, |b, d| {
            b.iter(|| Id::of(black_box(d)))
        });
    }
    g.finish();
}

fn compression(c: &mut Criterion) {
    let mut g = c.benchmark_group("zstd-3");
    let inputs = [
        ("text 1MiB", common::text_bytes(MIB, 3)),
        ("random 1MiB", common::random_bytes(MIB, 4)),
        ("text 32KiB", common::text_bytes(32 * 1024, 5)),
    ];
    for (name, data) in &inputs {
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("raw zstd::bulk::compress", name),
            data,
            |b, d| b.iter(|| zstd::bulk::compress(black_box(d), 3).unwrap()),
        );
        g.bench_with_input(BenchmarkId::new("cairn encode_blob", name), data, |b, d| {
            b.iter(|| encode_blob(black_box(d), 3).unwrap())
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::quick();
    targets = chunking, hashing, compression
}
criterion_main!(benches);
