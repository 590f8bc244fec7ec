//! Point-in-time recovery planning: an instance's base backups, which one serves a recovery target, whether
//! the archived WAL reaches from it to the target without a gap, the WAL chain's gaps (`check`), the WAL
//! older than every kept base backup (`prune`), and the recovery window (`stats`, `health`).
//!
//! A base backup is a snapshot of the instance holding a [`STREAM`] stream and [`BaseBackupFacts`]
//! (format-spec/README.md, "Base backups"). Segments are compared by timeline and segment number, with the
//! segment size the base backup recorded; `.partial`, `.history` and `.backup` files are no part of the
//! chain.
//!
//! Invariants: a restore is planned only if every segment from the base backup's first one up to the one
//! holding the target (for `latest`: the newest archived one) is archived; otherwise the plan fails naming
//! the first missing segment, before anything is written.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::postgres::basebackup::{
    parse_segment_file_name, segment_file_name, BaseBackupFacts, STREAM,
};
use crate::repo::Repository;
use crate::snapshot::Snapshot;
use crate::wal::{self, WalObject};

/// The segment size assumed when no base backup recorded one (PostgreSQL's default).
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 << 20;

/// Where recovery stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Replay every archived segment.
    Latest,
    /// Stop at the first commit after this time.
    Time(DateTime<Utc>),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Latest => f.write_str("latest"),
            Target::Time(t) => write!(f, "{}", t.format("%Y-%m-%d %H:%M:%S%.f UTC")),
        }
    }
}

/// One base backup of an instance.
#[derive(Debug, Clone)]
pub struct BaseBackup {
    pub id: Id,
    pub snapshot: Snapshot,
    pub facts: BaseBackupFacts,
}

/// The instance's base backups, oldest first.
pub fn base_backups(repo: &Repository, instance: &str) -> Result<Vec<BaseBackup>> {
    let mut out: Vec<BaseBackup> = repo
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| s.instance.as_deref() == Some(instance))
        .filter_map(|(id, snapshot)| {
            BaseBackupFacts::of(&snapshot).map(|facts| BaseBackup {
                id,
                snapshot,
                facts,
            })
        })
        .collect();
    out.sort_by_key(|b| b.facts.stop_time);
    Ok(out)
}

/// The newest base backup finished at or before the target (recovery cannot stop before a backup is
/// consistent); for `latest`, the newest.
pub fn pick_base_backup<'a>(
    backups: &'a [BaseBackup],
    instance: &str,
    target: Target,
) -> Result<&'a BaseBackup> {
    let found = match target {
        Target::Latest => backups.last(),
        Target::Time(t) => backups.iter().rev().find(|b| b.facts.stop_time <= t),
    };
    found.ok_or_else(|| match (target, backups.first()) {
        (_, None) => Error::NotFound(format!(
            "instance {instance} has no base backup (take one with `cairn instance base-backup {instance}`)"
        )),
        (_, Some(oldest)) => Error::NotFound(format!(
            "instance {instance} has no base backup finished at or before {target}: the oldest finished at {}",
            oldest.facts.stop_time.format("%Y-%m-%d %H:%M:%S UTC")
        )),
    })
}

/// The archived segments of an instance by (timeline, segment number).
#[derive(Debug, Default)]
pub struct Segments {
    pub seg_size: u64,
    pub by_pos: BTreeMap<(u32, u64), WalObject>,
}

impl Segments {
    /// Every archived segment of `instance` (the segment size: the newest base backup's, else the default).
    pub fn load(repo: &Repository, instance: &str, seg_size: u64) -> Result<Segments> {
        Ok(Segments::from_objects(
            wal::list(repo, Some(instance))?,
            seg_size,
        ))
    }

    pub fn from_objects(objects: Vec<WalObject>, seg_size: u64) -> Segments {
        let by_pos = objects
            .into_iter()
            .filter_map(|o| parse_segment_file_name(&o.file, seg_size).map(|p| (p, o)))
            .collect();
        Segments { seg_size, by_pos }
    }

    /// The newest archived segment (by archive time).
    pub fn newest(&self) -> Option<&WalObject> {
        self.by_pos.values().max_by_key(|o| o.time)
    }

    fn name(&self, tli: u32, segno: u64) -> String {
        segment_file_name(tli, segno, self.seg_size)
    }

    /// The first segment of timeline `tli` missing between `from` and `to` (inclusive).
    pub fn first_missing(&self, tli: u32, from: u64, to: u64) -> Option<String> {
        (from..=to)
            .find(|s| !self.by_pos.contains_key(&(tli, *s)))
            .map(|s| self.name(tli, s))
    }

    /// Every missing segment of timeline `tli` between `from` and `to`, as ranges of names (first, last).
    pub fn missing_ranges(&self, tli: u32, from: u64, to: u64) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut run: Option<(u64, u64)> = None;
        for s in from..=to {
            if self.by_pos.contains_key(&(tli, s)) {
                if let Some((a, b)) = run.take() {
                    out.push((self.name(tli, a), self.name(tli, b)));
                }
            } else {
                run = Some(run.map_or((s, s), |(a, _)| (a, s)));
            }
        }
        if let Some((a, b)) = run {
            out.push((self.name(tli, a), self.name(tli, b)));
        }
        out
    }

    /// The highest archived segment number of timeline `tli`.
    pub fn last_of(&self, tli: u32) -> Option<u64> {
        self.by_pos
            .range((tli, 0)..=(tli, u64::MAX))
            .next_back()
            .map(|((_, s), _)| *s)
    }
}

/// What a restore will replay: from the base backup's first segment to `last` (inclusive).
#[derive(Debug, Clone, Serialize)]
pub struct Replay {
    pub first_segment: String,
    pub last_segment: String,
    pub segments: u64,
}

/// Checks that the archive holds every segment a restore of `bb` to `target` replays, and says which.
///
/// For a time, the chain must reach the first segment archived at or after the target (it holds the
/// target or what follows it); for `latest`, the newest segment of the backup's timeline.
pub fn plan_replay(
    segs: &Segments,
    instance: &str,
    bb: &BaseBackup,
    target: Target,
) -> Result<Replay> {
    let tli = bb.facts.timeline;
    let (Some(first), Some(stop)) = (bb.facts.start_segno(), bb.facts.stop_segno()) else {
        return Err(Error::corrupt(
            format!("base backup {}", bb.id.short()),
            "its LSNs do not parse",
        ));
    };
    let newest = segs.last_of(tli).unwrap_or(0);
    let last = match target {
        Target::Latest => newest.max(stop),
        Target::Time(t) => segs
            .by_pos
            .range((tli, stop)..=(tli, u64::MAX))
            .find(|(_, o)| o.time >= t)
            .map(|((_, s), _)| *s)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "the WAL archive of instance {instance} ends before {target}: its newest segment {} was \
                     archived at {}; restore with --at latest for everything archived",
                    segs.name(tli, newest),
                    segs.by_pos
                        .get(&(tli, newest))
                        .map(|o| o.time.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                        .unwrap_or_else(|| "(never)".into())
                ))
            })?,
    };
    if let Some(missing) = segs.first_missing(tli, first, last) {
        return Err(Error::NotFound(format!(
            "WAL segment {missing} of instance {instance} is missing from the archive: recovery from base \
             backup {} to {target} would stop there (run `cairn check`)",
            bb.id.short()
        )));
    }
    Ok(Replay {
        first_segment: segs.name(tli, first),
        last_segment: segs.name(tli, last),
        segments: last - first + 1,
    })
}

/// A gap in an instance's WAL chain.
#[derive(Debug, Clone, Serialize)]
pub struct Gap {
    pub instance: String,
    pub first: String,
    pub last: String,
}

/// The gaps of an instance's WAL chain between each base backup's first segment and the newest archived
/// segment of its timeline (nothing without a base backup: there is no chain to check).
pub fn gaps(repo: &Repository, instance: &str) -> Result<Vec<Gap>> {
    let backups = base_backups(repo, instance)?;
    let Some(newest_bb) = backups.last() else {
        return Ok(Vec::new());
    };
    let segs = Segments::load(repo, instance, newest_bb.facts.wal_segment_size)?;
    // Per timeline, from the oldest base backup's first segment: that covers every later one.
    let mut from: BTreeMap<u32, u64> = BTreeMap::new();
    for b in &backups {
        if let Some(s) = b.facts.start_segno() {
            let e = from.entry(b.facts.timeline).or_insert(s);
            *e = (*e).min(s);
        }
    }
    let mut out = Vec::new();
    for (tli, first) in from {
        let to = segs.last_of(tli).unwrap_or(first);
        for (a, b) in segs.missing_ranges(tli, first, to) {
            out.push(Gap {
                instance: instance.to_string(),
                first: a,
                last: b,
            });
        }
    }
    Ok(out)
}

/// WAL objects of `instance` that no kept base backup needs: segments (and `.partial` and `.backup` files)
/// before the oldest base backup's first segment. None without a base backup: then nothing can tell what
/// is unneeded.
pub fn unneeded_wal(repo: &Repository, instance: &str) -> Result<Vec<WalObject>> {
    let backups = base_backups(repo, instance)?;
    let Some(oldest) = backups
        .iter()
        .min_by_key(|b| (b.facts.timeline, b.facts.start_segno()))
    else {
        return Ok(Vec::new());
    };
    let (tli, Some(first)) = (oldest.facts.timeline, oldest.facts.start_segno()) else {
        return Ok(Vec::new());
    };
    let seg_size = oldest.facts.wal_segment_size;
    Ok(wal::list(repo, Some(instance))?
        .into_iter()
        .filter(|o| {
            let segment = o.file.get(..24).unwrap_or("");
            match parse_segment_file_name(segment, seg_size) {
                // Timeline history files are tiny and recovery needs them to follow timelines: kept.
                Some((t, s)) => (t, s) < (tli, first),
                None => false,
            }
        })
        .collect())
}

/// Removes (with `dry_run`: counts) the WAL files of every instance that no kept base backup needs; the
/// caller holds the exclusive lock. Returns how many.
pub fn prune_wal(repo: &Repository, dry_run: bool) -> Result<u64> {
    let mut n = 0;
    for instance in instances_with_base_backups(repo)? {
        for o in unneeded_wal(repo, &instance)? {
            if !dry_run {
                wal::remove(repo, &o)?;
            }
            n += 1;
        }
    }
    Ok(n)
}

/// `check`'s errors about WAL chains: one per gap, naming the instance and the missing segments.
pub fn chain_errors(repo: &Repository) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for instance in instances_with_base_backups(repo)? {
        for g in gaps(repo, &instance)? {
            let what = if g.first == g.last {
                format!("WAL segment {} is", g.first)
            } else {
                format!("WAL segments {} to {} are", g.first, g.last)
            };
            out.push(format!(
                "instance {instance}: {what} missing from the archive; point-in-time recovery cannot pass it \
                 (take a new base backup: `cairn instance base-backup {instance}`)"
            ));
        }
    }
    Ok(out)
}

/// The instances some snapshot holds a base backup of.
fn instances_with_base_backups(repo: &Repository) -> Result<Vec<String>> {
    let mut names: Vec<String> = repo
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| holds_base_backup(s))
        .filter_map(|(_, s)| s.instance)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// From the oldest base backup's start to the newest archived segment.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryWindow {
    pub instance: String,
    pub base_backups: usize,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub newest_segment: Option<String>,
}

/// The recovery window of an instance (`None` without a base backup).
pub fn recovery_window(repo: &Repository, instance: &str) -> Result<Option<RecoveryWindow>> {
    let backups = base_backups(repo, instance)?;
    let Some(oldest) = backups.first() else {
        return Ok(None);
    };
    let seg_size = backups
        .last()
        .map_or(DEFAULT_SEGMENT_SIZE, |b| b.facts.wal_segment_size);
    let segs = Segments::load(repo, instance, seg_size)?;
    let newest = segs.newest();
    let to = newest
        .map(|o| o.time)
        .unwrap_or(oldest.facts.stop_time)
        .max(
            backups
                .last()
                .map_or(oldest.facts.stop_time, |b| b.facts.stop_time),
        );
    Ok(Some(RecoveryWindow {
        instance: instance.to_string(),
        base_backups: backups.len(),
        from: oldest.facts.stop_time,
        to,
        newest_segment: newest.map(|o| o.file.clone()),
    }))
}

/// Whether `snap` holds a base backup stream (for callers that only need to know).
pub fn holds_base_backup(snap: &Snapshot) -> bool {
    snap.streams.iter().any(|s| s.name == STREAM) && BaseBackupFacts::of(snap).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(file: &str, secs: i64) -> WalObject {
        WalObject {
            version: 1,
            instance: "db".into(),
            file: file.into(),
            size: 1,
            blake3: Id([0; 32]),
            tree: Id([0; 32]),
            time: DateTime::from_timestamp(secs, 0).unwrap(),
        }
    }

    #[test]
    fn missing_segments_are_named_as_ranges() {
        let seg = DEFAULT_SEGMENT_SIZE;
        let names: Vec<String> = [2u64, 3, 6, 8]
            .iter()
            .map(|s| segment_file_name(1, *s, seg))
            .collect();
        let segs = Segments::from_objects(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| obj(n, i as i64))
                .collect(),
            seg,
        );
        assert_eq!(segs.first_missing(1, 2, 3), None);
        assert_eq!(
            segs.first_missing(1, 2, 8),
            Some("000000010000000000000004".into())
        );
        let r = segs.missing_ranges(1, 2, 8);
        assert_eq!(
            r,
            vec![
                (
                    "000000010000000000000004".to_string(),
                    "000000010000000000000005".to_string()
                ),
                (
                    "000000010000000000000007".to_string(),
                    "000000010000000000000007".to_string()
                )
            ]
        );
        assert_eq!(segs.last_of(1), Some(8));
        assert_eq!(segs.last_of(2), None);
    }
}
