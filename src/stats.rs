//! `cairn stats`: what snapshots hold and what the repository stores for them, computed exactly from the
//! index and the snapshots' trees (never from the per-backup `bytes_added` counters, which stop adding up
//! once a snapshot is forgotten and its data pruned or kept for later snapshots).
//!
//! Definitions (for a set of snapshots: one instance's, or all):
//! - `logical_bytes`: the sum of the snapshots' sizes (files and streams; what restoring each would write);
//! - `unique_bytes`: the raw (uncompressed) size of the distinct data chunks they reference, each counted
//!   once: the content after deduplication;
//! - `stored_bytes` of a set: the stored (compressed) size of the distinct blobs, chunks and trees, they
//!   reference: what they occupy in packs (a blob shared by two instances counts for each);
//! - `dedup_ratio` = `logical_bytes / unique_bytes`; `compression_ratio` = `unique_bytes` / stored size of
//!   the referenced data chunks (both 0 when there is no data).
//!
//! Repository totals add what the index lists: `pack_bytes` (the sum of the pack sizes, headers included:
//! the repository's footprint), `blob_bytes` (stored size of every indexed blob) and `unreferenced_bytes`
//! (stored size of blobs no snapshot needs, which `prune` can reclaim).
//!
//! The walk (the one walk, [`crate::walk`]) keeps the ids it has seen in a set that moves into a SQLite
//! temporary table as it grows ([`crate::marks`]), so memory does not grow with the repository; the sizes
//! are then summed by one query over that set. A referenced blob the index does not list is counted in
//! `missing_blobs` (run `cairn check`) rather than guessed.

use rusqlite::params;
use serde::Serialize;

use crate::error::Result;
use crate::hashing::Id;
use crate::marks::{MarkAll, Marks};
use crate::pack::BlobKind;
use crate::repo::Repository;
use crate::snapshot::Snapshot;
use crate::walk;

/// What a set of snapshots holds and needs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    pub snapshot_count: u64,
    pub logical_bytes: u64,
    pub unique_bytes: u64,
    pub stored_bytes: u64,
    /// Distinct blobs (chunks and trees) referenced.
    pub blob_count: u64,
    pub dedup_ratio: f64,
    pub compression_ratio: f64,
    /// Referenced blobs the index does not list (damage: see `cairn check`).
    pub missing_blobs: u64,
}

/// The whole repository: every snapshot's usage plus what the index lists.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    #[serde(flatten)]
    pub usage: Usage,
    pub pack_count: u64,
    pub pack_bytes: u64,
    pub indexed_blob_count: u64,
    pub blob_bytes: u64,
    pub unreferenced_bytes: u64,
}

/// Exact usage of `snaps`, walking their trees once each.
pub fn usage<'a>(
    repo: &Repository,
    snaps: impl IntoIterator<Item = &'a Snapshot>,
) -> Result<Usage> {
    let mut u = Usage::default();
    let mut roots = Vec::new();
    for s in snaps {
        u.snapshot_count += 1;
        u.logical_bytes += s.summary.bytes_total;
        roots.extend(s.tree.into_iter().chain(s.stream_tree));
    }
    // Each blob once: trees before they are read, so a shared subtree is walked once.
    let mut seen = MarkAll {
        marks: Marks::new(repo, "stats_seen")?,
        on_tree_error: |_, e| e,
    };
    for root in roots {
        walk::walk(repo, &root, &mut seen)?;
    }
    let data_stored = add_sizes(repo, &mut seen.marks, &mut u)?;
    u.dedup_ratio = ratio(u.logical_bytes, u.unique_bytes);
    u.compression_ratio = ratio(u.unique_bytes, data_stored);
    Ok(u)
}

/// Adds the sizes of the blobs in `seen` to `u` (one query over the set, not a lookup per blob); returns
/// the stored size of the data chunks among them. A blob without an index row naming a pack is missing.
fn add_sizes(repo: &Repository, seen: &mut Marks, u: &mut Usage) -> Result<u64> {
    let table = seen.in_table()?;
    let sums = repo.index().raw().query_row(
        &format!(
            "SELECT count(p.id),
                    coalesce(sum(CASE WHEN p.id IS NOT NULL THEN b.stored_len END), 0),
                    coalesce(sum(CASE WHEN p.id IS NOT NULL AND b.kind != ?1 THEN b.raw_len END), 0),
                    coalesce(sum(CASE WHEN p.id IS NOT NULL AND b.kind != ?1 THEN b.stored_len END), 0),
                    count(*)
             FROM temp.{table} s
             LEFT JOIN blobs b ON b.id = s.id
             LEFT JOIN packs p ON p.pack_no = b.pack_no"
        ),
        params![BlobKind::Tree as u8],
        |r| {
            Ok([
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ])
        },
    )?;
    let [found, stored, unique, data_stored, all] = sums.map(|n| n.max(0) as u64);
    u.blob_count += found;
    u.stored_bytes += stored;
    u.unique_bytes += unique;
    u.missing_blobs += all - found;
    Ok(data_stored)
}

/// Totals over every snapshot, with the index's pack and blob sums.
pub fn totals(repo: &Repository, snaps: &[(Id, Snapshot)]) -> Result<Totals> {
    let usage = usage(repo, snaps.iter().map(|(_, s)| s))?;
    let (pack_count, pack_bytes, indexed_blob_count, blob_bytes) = repo.with_reader(|r| {
        let conn = r.raw();
        let packs: (i64, i64) = conn.query_row(
            "SELECT count(*), coalesce(sum(size), 0) FROM packs",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let blobs: (i64, i64) = conn.query_row(
            "SELECT count(*), coalesce(sum(stored_len), 0) FROM blobs",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        Ok((
            packs.0 as u64,
            packs.1 as u64,
            blobs.0 as u64,
            blobs.1 as u64,
        ))
    })?;
    Ok(Totals {
        unreferenced_bytes: blob_bytes.saturating_sub(usage.stored_bytes),
        usage,
        pack_count,
        pack_bytes,
        indexed_blob_count,
        blob_bytes,
    })
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// One instance's figures for the Prometheus export.
#[derive(Debug, Clone)]
pub struct InstanceMetrics {
    pub instance: String,
    pub usage: Usage,
    /// End of the last backup whose status was ok (partial ones are warnings, not successes).
    pub last_success: Option<chrono::DateTime<chrono::Utc>>,
    pub last_duration_seconds: Option<f64>,
    pub last_bytes_added: Option<u64>,
    /// Status of the last backup run: ok, partial or failed.
    pub last_status: Option<String>,
    /// Failed backup runs in the run log.
    pub failures: u64,
}

/// The metrics in the Prometheus text exposition format (for node_exporter's textfile collector): every
/// family with `# HELP` and `# TYPE`, labelled by `repository` and, per instance, `instance`. An instance
/// without a successful or any backup has no sample in the families that need one.
pub fn prometheus(repository: &str, instances: &[InstanceMetrics], totals: &Totals) -> String {
    let mut out = String::new();
    let repo = format!("repository=\"{}\"", label_value(repository));
    let per_instance =
        |name: &str, kind: &str, help: &str, value: &dyn Fn(&InstanceMetrics) -> Option<f64>| {
            let mut s = format!("# HELP {name} {help}\n# TYPE {name} {kind}\n");
            for m in instances {
                if let Some(v) = value(m) {
                    s.push_str(&format!(
                        "{name}{{{repo},instance=\"{}\"}} {v}\n",
                        label_value(&m.instance)
                    ));
                }
            }
            s
        };
    let families: [Family; 11] = [
        (
            "cairn_last_success_timestamp_seconds",
            "gauge",
            "Unix time the last successful backup of the instance ended.",
            &|m| m.last_success.map(|t| t.timestamp_millis() as f64 / 1000.0),
        ),
        (
            "cairn_last_run_duration_seconds",
            "gauge",
            "Duration of the instance's last backup run.",
            &|m| m.last_duration_seconds,
        ),
        (
            "cairn_last_run_bytes_added",
            "gauge",
            "Stored bytes the instance's last backup run added.",
            &|m| m.last_bytes_added.map(|b| b as f64),
        ),
        (
            "cairn_last_run_partial",
            "gauge",
            "1 if the instance's last backup run was partial (a warning).",
            &|m| {
                m.last_status
                    .as_ref()
                    .map(|s| f64::from(u8::from(s == "partial")))
            },
        ),
        (
            "cairn_last_run_failed",
            "gauge",
            "1 if the instance's last backup run failed.",
            &|m| {
                m.last_status
                    .as_ref()
                    .map(|s| f64::from(u8::from(s == "failed")))
            },
        ),
        (
            "cairn_backup_failures_total",
            "counter",
            "Failed backup runs of the instance in the run log.",
            &|m| Some(m.failures as f64),
        ),
        (
            "cairn_snapshots",
            "gauge",
            "Snapshots of the instance.",
            &|m| Some(m.usage.snapshot_count as f64),
        ),
        (
            "cairn_logical_bytes",
            "gauge",
            "Sum of the sizes of the instance's snapshots.",
            &|m| Some(m.usage.logical_bytes as f64),
        ),
        (
            "cairn_unique_bytes",
            "gauge",
            "Raw size of the distinct data chunks the instance's snapshots reference.",
            &|m| Some(m.usage.unique_bytes as f64),
        ),
        (
            "cairn_stored_bytes",
            "gauge",
            "Stored (compressed) size of the distinct blobs the instance's snapshots reference.",
            &|m| Some(m.usage.stored_bytes as f64),
        ),
        (
            "cairn_dedup_ratio",
            "gauge",
            "Logical bytes over unique bytes of the instance's snapshots.",
            &|m| Some(m.usage.dedup_ratio),
        ),
    ];
    for (name, kind, help, value) in families {
        out.push_str(&per_instance(name, kind, help, value));
    }
    let u = &totals.usage;
    for (name, help, v) in [
        (
            "cairn_repository_pack_bytes",
            "Sum of the sizes of the packs the index lists.",
            totals.pack_bytes as f64,
        ),
        (
            "cairn_repository_stored_bytes",
            "Stored size of the distinct blobs any snapshot references.",
            u.stored_bytes as f64,
        ),
        (
            "cairn_repository_unreferenced_bytes",
            "Stored size of indexed blobs no snapshot references (prune reclaims them).",
            totals.unreferenced_bytes as f64,
        ),
        (
            "cairn_repository_logical_bytes",
            "Sum of the sizes of all snapshots.",
            u.logical_bytes as f64,
        ),
        (
            "cairn_repository_unique_bytes",
            "Raw size of the distinct data chunks all snapshots reference.",
            u.unique_bytes as f64,
        ),
        (
            "cairn_repository_dedup_ratio",
            "Logical bytes over unique bytes of all snapshots.",
            u.dedup_ratio,
        ),
        (
            "cairn_repository_snapshots",
            "Snapshots in the repository.",
            u.snapshot_count as f64,
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{repo}}} {v}\n"
        ));
    }
    out
}

/// A per-instance metric family: name, type, help, and the sample of an instance (none: no sample).
type Family<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a dyn Fn(&InstanceMetrics) -> Option<f64>,
);

/// A label value escaped as the text format wants: `\\`, `\"` and `\n`.
fn label_value(s: &str) -> String {
    s.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}
