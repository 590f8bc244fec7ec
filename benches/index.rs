//! Index lookups at scale: `Index::contains` for present and absent ids in an index of 1M chunks (and 10M
//! with `CAIRN_BENCH_10M=1`), beside the same query on a raw rusqlite statement, with the process's resident
//! memory before and after (the index lives in SQLite, not in memory, so memory must stay flat).
//!
//! The index files are built once, by a child process (so the build's memory does not count), in one
//! transaction with prepared statements through `Index::insert_pack`, with real BLAKE3 ids inserted in random
//! order as a backup would, into target/tmp/bench-index-<n>.sqlite; later runs reuse them.
//! `cargo bench --bench index`; see BENCHMARKS.md, "Micro-benchmarks".

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cairn::index::Index;
use cairn::pack::{BlobEntry, BlobKind, Compression};
use cairn::Id;
use criterion::{criterion_group, Criterion, Throughput};

mod common;

/// Blobs per pack: 16 MiB packs of ~32 KiB stream chunks compressed about 3x.
const BLOBS_PER_PACK: u64 = 1500;
/// Set in the child process that builds an index file: "<blob count> <path>".
const BUILD_ENV: &str = "CAIRN_BENCH_INDEX_BUILD";

fn blob_id(i: u64) -> Id {
    Id::of(&i.to_le_bytes())
}

/// Ids never inserted into an index of `n` blobs.
fn absent_id(n: u64, i: u64) -> Id {
    blob_id(n + 1 + i)
}

fn index_path(n: u64) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-index-{}M.sqlite", n / 1_000_000))
}

/// Builds the index file of `n` blobs at `path` (in the child process).
fn build(n: u64, path: &Path) {
    let started = Instant::now();
    let tmp = path.with_extension("building");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", tmp.display()));
    }
    let mut idx = Index::open(&tmp).unwrap();
    // A page cache larger than the database keeps the random-order inserts in memory until the one commit.
    idx.raw()
        .pragma_update(None, "cache_size", -4_000_000)
        .unwrap();
    idx.raw().pragma_update(None, "synchronous", "OFF").unwrap();
    idx.transaction(|tx| {
        let mut i = 0;
        let mut pack_no = 0u64;
        while i < n {
            let count = BLOBS_PER_PACK.min(n - i);
            let entries: Vec<BlobEntry> = (0..count)
                .map(|k| BlobEntry {
                    kind: BlobKind::Data,
                    compression: Compression::Zstd,
                    stored_len: 11_000,
                    raw_len: 32_768,
                    offset: 8 + k * 11_000,
                    id: blob_id(i + k),
                    base: None,
                })
                .collect();
            Index::insert_pack(tx, Id::of(&pack_no.to_be_bytes()), count * 11_000, &entries)?;
            i += count;
            pack_no += 1;
        }
        Ok(())
    })
    .unwrap();
    // One self-contained file, like `repair index` leaves it.
    idx.raw()
        .pragma_update(None, "journal_mode", "DELETE")
        .unwrap();
    drop(idx);
    std::fs::rename(&tmp, path).unwrap();
    eprintln!(
        "built {} ({n} blobs, {:.0} MB) in {:.1} s",
        path.display(),
        std::fs::metadata(path).unwrap().len() as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
}

/// The cached index of `n` blobs, built by a child process if missing.
fn cached_index(n: u64) -> PathBuf {
    let path = index_path(n);
    if !path.exists() {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .env(BUILD_ENV, format!("{n} {}", path.display()))
            .status()
            .unwrap();
        assert!(status.success(), "building {} failed", path.display());
    }
    path
}

fn lookups(c: &mut Criterion, n: u64) {
    let path = cached_index(n);
    let (rss0, _) = common::rss_mb();
    let idx = Index::open(&path).unwrap();
    let (rss_open, _) = common::rss_mb();
    // Pseudo-random probe order, so consecutive lookups touch unrelated pages as a backup's would.
    let probes = 4096u64;
    let present: Vec<Id> = (0..probes)
        .map(|k| blob_id(k.wrapping_mul(0x9E37_79B9_7F4A_7C15) % n))
        .collect();
    let absent: Vec<Id> = (0..probes).map(|k| absent_id(n, k)).collect();
    let mut raw = idx
        .raw()
        .prepare("SELECT 1 FROM blobs WHERE id = ?1")
        .unwrap();
    let label = format!("index {}M", n / 1_000_000);
    let mut g = c.benchmark_group(&label);
    g.throughput(Throughput::Elements(1));
    for (name, ids, want) in [("present", &present, true), ("absent", &absent, false)] {
        let mut k = 0;
        g.bench_function(format!("cairn Index::contains {name}"), |b| {
            b.iter(|| {
                k = (k + 1) % ids.len();
                assert_eq!(idx.contains(black_box(&ids[k])).unwrap(), want);
            })
        });
        let mut k = 0;
        g.bench_function(format!("raw rusqlite prepared exists {name}"), |b| {
            b.iter(|| {
                k = (k + 1) % ids.len();
                assert_eq!(raw.exists([&black_box(&ids[k]).0[..]]).unwrap(), want);
            })
        });
    }
    g.finish();
    let (rss_end, hwm) = common::rss_mb();
    println!(
        "{label}: RSS {rss0:.1} MB before opening, {rss_open:.1} MB after, {rss_end:.1} MB after the \
         lookups (peak {hwm:.1} MB); file {:.0} MB",
        std::fs::metadata(&path).unwrap().len() as f64 / 1e6
    );
}

fn index_1m(c: &mut Criterion) {
    lookups(c, 1_000_000);
}

fn index_10m(c: &mut Criterion) {
    if std::env::var_os("CAIRN_BENCH_10M").is_some_and(|v| v == "1") {
        lookups(c, 10_000_000);
    } else {
        println!("index 10M: skipped (set CAIRN_BENCH_10M=1; the first run builds a ~1 GB index)");
    }
}

criterion_group! {
    name = benches;
    config = common::quick();
    targets = index_1m, index_10m
}

fn main() {
    if let Some(spec) = std::env::var_os(BUILD_ENV) {
        let spec = spec.to_string_lossy().into_owned();
        let (n, path) = spec.split_once(' ').expect("<count> <path>");
        build(n.parse().expect("blob count"), Path::new(path));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
