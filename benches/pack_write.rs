//! Durable pack writes: a `PackWriter` saving 64 MiB of new chunks (half text, half random) into a fresh
//! repository, flushed, every pack fsynced and indexed; beside the same work done with the raw crates
//! (zstd + write + fsync, no verification or index) and the disk alone (write + fsync of the raw bytes).
//!
//! Temporary repositories live under target/tmp, on the same disk as the build. `cargo bench --bench pack_write`.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use cairn::config::{ChunkerParams, Config};
use cairn::pack::BlobKind;
use cairn::pack_writer::PackWriter;
use cairn::{Id, Repository};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rayon::prelude::*;

mod common;

const TOTAL: usize = 64 * 1024 * 1024;
const PACK: usize = 16 * 1024 * 1024;

/// The chunks FastCDC cuts from 64 MiB of file-store-like data, with their ids.
fn chunks() -> Vec<(Id, Vec<u8>)> {
    let data = common::mixed_bytes(TOTAL, 7);
    cairn::chunking::cut_points(&data, ChunkerParams::FILES)
        .map(|(o, n)| {
            let c = data[o..o + n].to_vec();
            (Id::of(&c), c)
        })
        .collect()
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn write_synced(path: &Path, bytes: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

fn pack_write(c: &mut Criterion) {
    let chunks = chunks();
    let mut g = c.benchmark_group("pack write 64MiB");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.bench_function("cairn PackWriter (rayon, like backup)", |b| {
        b.iter_batched(
            || {
                let dir = tmp();
                let repo =
                    Repository::init(dir.path().join("repo"), Config::new_default()).unwrap();
                (dir, repo)
            },
            |(dir, repo)| {
                PackWriter::scope(&repo, |w| {
                    chunks.par_iter().for_each(|(id, c)| {
                        w.save_with_id(BlobKind::Data, *id, c).unwrap();
                    });
                    Ok(())
                })
                .unwrap();
                (dir, repo) // deleted outside the timing
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("raw zstd::bulk::compress + write + fsync (rayon)", |b| {
        b.iter_batched(
            tmp,
            |dir| {
                let stored: Vec<Vec<u8>> = chunks
                    .par_iter()
                    .map(|(_, c)| zstd::bulk::compress(c, 3).unwrap())
                    .collect();
                let mut pack = Vec::with_capacity(PACK + (4 << 20));
                let mut n = 0;
                for s in stored {
                    pack.extend_from_slice(&s);
                    if pack.len() >= PACK {
                        write_synced(&dir.path().join(n.to_string()), &pack);
                        pack.clear();
                        n += 1;
                    }
                }
                write_synced(&dir.path().join(n.to_string()), &pack);
                File::open(dir.path()).unwrap().sync_all().unwrap();
                dir
            },
            BatchSize::PerIteration,
        )
    });
    let raw: Vec<u8> = chunks.iter().flat_map(|(_, c)| c.iter().copied()).collect();
    g.bench_function("disk: write + fsync of the raw 64 MiB", |b| {
        b.iter_batched(
            tmp,
            |dir| {
                for (n, part) in raw.chunks(PACK).enumerate() {
                    write_synced(&dir.path().join(n.to_string()), part);
                }
                File::open(dir.path()).unwrap().sync_all().unwrap();
                dir
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::quick();
    targets = pack_write
}
criterion_main!(benches);
