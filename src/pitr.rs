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
//! holding the target (for `latest`: the newest archived one) is archived, and none of them is recorded as
//! WAL of another database system than the base backup's; otherwise the plan fails naming the first missing
//! or foreign segment, before anything is written. A time target's segments are known only by when
//! they were archived, not by the times of the commits they hold (a backlog archives old WAL late), so the
//! plan cannot foresee every segment recovery will read: recovery that runs out of WAL is taken for having
//! reached the archive's end only when no later segment is archived ([`Segments::stopped_short`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::postgres::basebackup::{
    parse_lsn, parse_segment_file_name, segment_file_name, BaseBackupFacts, STREAM,
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

/// The archived segments of an instance by (timeline, segment number), and its timelines' histories.
#[derive(Debug, Default)]
pub struct Segments {
    pub seg_size: u64,
    pub by_pos: BTreeMap<(u32, u64), WalObject>,
    /// Per timeline with an archived `.history` file: its ancestors, oldest first, each with the LSN where
    /// the next timeline branched off it (PostgreSQL's history file, one `parent<TAB>LSN<TAB>reason` line
    /// per ancestor).
    pub histories: BTreeMap<u32, Vec<(u32, u64)>>,
}

impl Segments {
    /// Every archived segment of `instance` and its timeline histories (the segment size: the newest base
    /// backup's, else the default). The caller holds a lock.
    pub fn load(repo: &Repository, instance: &str, seg_size: u64) -> Result<Segments> {
        let objects = wal::list(repo, Some(instance))?;
        let mut histories = BTreeMap::new();
        for o in objects.iter().filter(|o| o.file.ends_with(".history")) {
            let text = wal::read(repo, o)?;
            let history = parse_history(&String::from_utf8_lossy(&text)).map_err(|why| {
                Error::corrupt(
                    format!("timeline history {} of instance {instance}", o.file),
                    why,
                )
            })?;
            histories.insert(o.timeline(), history);
        }
        let mut segs = Segments::from_objects(objects, seg_size);
        segs.histories = histories;
        Ok(segs)
    }

    pub fn from_objects(objects: Vec<WalObject>, seg_size: u64) -> Segments {
        let by_pos = objects
            .into_iter()
            .filter_map(|o| parse_segment_file_name(&o.file, seg_size).map(|p| (p, o)))
            .collect();
        Segments {
            seg_size,
            by_pos,
            histories: BTreeMap::new(),
        }
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

/// What a restore will replay: from the base backup's first segment to `last` (inclusive), along the
/// timelines from the base backup's to `timeline`.
#[derive(Debug, Clone, Serialize)]
pub struct Replay {
    pub first_segment: String,
    pub last_segment: String,
    pub segments: u64,
    /// The timeline recovery follows (written as `recovery_target_timeline`).
    pub timeline: u32,
}

/// Parses a timeline history file: `parent<TAB>switch LSN<TAB>reason` lines (comments and blank lines
/// skipped), oldest ancestor first.
pub fn parse_history(text: &str) -> std::result::Result<Vec<(u32, u64)>, String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(tli), Some(lsn)) = (fields.next(), fields.next()) else {
            return Err(format!("line {line:?} has no timeline and LSN"));
        };
        let tli: u32 = tli
            .parse()
            .map_err(|_| format!("bad timeline in {line:?}"))?;
        let lsn = parse_lsn(lsn).ok_or_else(|| format!("bad LSN in {line:?}"))?;
        if out
            .last()
            .is_some_and(|(t, l): &(u32, u64)| *t >= tli || *l > lsn)
        {
            return Err(format!("line {line:?} is out of order"));
        }
        out.push((tli, lsn));
    }
    Ok(out)
}

/// One timeline's stretch of a replay: segments `from..=to` of timeline `tli`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stretch {
    tli: u32,
    from: u64,
    to: u64,
}

impl Segments {
    /// The timeline a recovery from `bb` follows: like PostgreSQL's `recovery_target_timeline = 'latest'`,
    /// the newest timeline whose history passes through the base backup's timeline after the backup ended
    /// (a timeline that branched off earlier cannot be reached from it).
    fn target_timeline(&self, bb: &BaseBackup) -> u32 {
        let (tli, stop) = (
            bb.facts.timeline,
            parse_lsn(&bb.facts.stop_lsn).unwrap_or(0),
        );
        self.histories
            .iter()
            .filter(|(t, h)| **t > tli && h.iter().any(|(p, end)| *p == tli && *end >= stop))
            .map(|(t, _)| *t)
            .max()
            .unwrap_or(tli)
    }

    /// A timeline later than `tli` holding archived segments but no archived history file: recovery cannot
    /// know where it branched off.
    fn timeline_without_history(&self, tli: u32) -> Option<u32> {
        self.by_pos
            .keys()
            .map(|(t, _)| *t)
            .find(|t| *t > tli && !self.histories.contains_key(t))
    }

    /// The stretches a recovery from `bb` to timeline `target` reads, the last one ending at `last_to`
    /// (PostgreSQL reads the segment holding a switch point from the newer timeline).
    fn stretches(&self, bb: &BaseBackup, target: u32, first: u64, last_to: u64) -> Vec<Stretch> {
        let history = self.histories.get(&target).map_or(&[][..], Vec::as_slice);
        let mut out = Vec::new();
        let mut from = first;
        for (tli, end) in history.iter().skip_while(|(t, _)| *t != bb.facts.timeline) {
            let switch_seg = end / self.seg_size.max(1);
            if switch_seg > from {
                out.push(Stretch {
                    tli: *tli,
                    from,
                    to: switch_seg - 1,
                });
            }
            from = from.max(switch_seg);
        }
        out.push(Stretch {
            tli: target,
            from,
            to: last_to.max(from.saturating_sub(1)),
        });
        out.retain(|s| s.to >= s.from);
        out
    }

    fn history_missing(&self, instance: &str, tli: u32) -> Error {
        let file = format!("{tli:08X}.history");
        Error::NotFound(format!(
            "timeline {tli} of instance {instance} has archived segments but its history file {file} is not              archived, so recovery cannot tell where it branched off: push it from the server that created              the timeline (`cairn wal-push --instance {instance} DATADIR/pg_wal/{file}`)"
        ))
    }
}

/// Why recovery that ran out of WAL did not stop at the archive's end (see [`Segments::stopped_short`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShortStop {
    /// This segment is missing while later ones of the path are archived: a gap.
    Missing(String),
    /// Every segment after the end is archived: recovery found no valid WAL in this one.
    Unreadable(String),
}

impl Segments {
    /// Recovery from `bb` along timeline `tli` replayed up to `end` (the LSN of its last record) and found
    /// no more WAL: `None` when that is the archive's end, that is when no segment of the path is archived
    /// after the one following `end`'s (which may hold the rest of that record). Otherwise the archive
    /// goes on and recovery stopped short of it: the first segment missing after `end`'s, or (none
    /// missing) the one after `end`'s, where recovery found nothing it could replay.
    pub fn stopped_short(&self, bb: &BaseBackup, tli: u32, end: u64) -> Option<ShortStop> {
        let (first, stop) = (bb.facts.start_segno()?, bb.facts.stop_segno()?);
        let end_seg = end / self.seg_size.max(1);
        let newest = self.last_of(tli).unwrap_or(0);
        let after: Vec<(u32, u64)> = self
            .stretches(bb, tli, first, newest.max(stop))
            .into_iter()
            .flat_map(|st| (st.from.max(end_seg + 1)..=st.to).map(move |s| (st.tli, s)))
            .collect();
        let archived = |p: &(u32, u64)| self.by_pos.contains_key(p);
        if !after.iter().skip(1).any(archived) {
            return None;
        }
        Some(match after.iter().find(|p| !archived(p)) {
            Some((t, s)) => ShortStop::Missing(self.name(*t, *s)),
            None => ShortStop::Unreadable(self.name(after[0].0, after[0].1)),
        })
    }
}

/// Checks that the archive holds every segment a restore of `bb` to `target` replays, and says which.
///
/// Recovery follows the newest timeline reachable from the base backup (see `Segments::target_timeline`).
/// For a time, the chain must reach the first segment along that path archived at or after the target (it
/// holds the target or what follows it); for `latest`, the newest segment of that timeline.
pub fn plan_replay(
    segs: &Segments,
    instance: &str,
    bb: &BaseBackup,
    target: Target,
) -> Result<Replay> {
    let (Some(first), Some(stop)) = (bb.facts.start_segno(), bb.facts.stop_segno()) else {
        return Err(Error::corrupt(
            format!("base backup {}", bb.id.short()),
            "its LSNs do not parse",
        ));
    };
    let tli = segs.target_timeline(bb);
    if let Some(orphan) = segs.timeline_without_history(tli) {
        return Err(segs.history_missing(instance, orphan));
    }
    let newest = segs.last_of(tli).unwrap_or(0);
    let mut path = segs.stretches(bb, tli, first, newest.max(stop));
    if let Target::Time(t) = target {
        let hit = path.iter().enumerate().find_map(|(i, st)| {
            let from = if st.tli == bb.facts.timeline {
                st.from.max(stop)
            } else {
                st.from
            };
            segs.by_pos
                .range((st.tli, from)..=(st.tli, st.to))
                .find(|(_, o)| o.time >= t)
                .map(|((_, s), _)| (i, *s))
        });
        let Some((i, last)) = hit else {
            return Err(Error::NotFound(format!(
                "the WAL archive of instance {instance} ends before {target}: its newest segment {} was \
                 archived at {}; restore with --at latest for everything archived",
                segs.name(tli, newest),
                segs.by_pos
                    .get(&(tli, newest))
                    .map(|o| o.time.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                    .unwrap_or_else(|| "(never)".into())
            )));
        };
        path.truncate(i + 1);
        path[i].to = last;
    }
    for st in &path {
        if let Some(missing) = segs.first_missing(st.tli, st.from, st.to) {
            return Err(Error::NotFound(format!(
                "WAL segment {missing} of instance {instance} is missing from the archive: recovery from base \
                 backup {} to {target} would stop there (run `cairn check`)",
                bb.id.short()
            )));
        }
    }
    if let Some(e) = foreign_segment(segs, instance, bb, &path) {
        return Err(e);
    }
    let (head, tail) = (path.first(), path.last());
    Ok(Replay {
        first_segment: head.map_or_else(|| segs.name(tli, first), |s| segs.name(s.tli, s.from)),
        last_segment: tail.map_or_else(|| segs.name(tli, first), |s| segs.name(s.tli, s.to)),
        segments: path.iter().map(|s| s.to - s.from + 1).sum(),
        timeline: tli,
    })
}

/// The error for the first segment of `path` recorded as WAL of another database system than the base
/// backup's (PostgreSQL would refuse it mid-recovery, after the data directory was written and the server
/// started). Segments archived before identifiers were recorded say nothing; a base backup that predates
/// the field is compared through the first segment of the path that records one.
fn foreign_segment(
    segs: &Segments,
    instance: &str,
    bb: &BaseBackup,
    path: &[Stretch],
) -> Option<Error> {
    let recorded = path.iter().flat_map(|st| {
        segs.by_pos
            .range((st.tli, st.from)..=(st.tli, st.to))
            .filter_map(|(_, o)| Some((o, o.system_identifier?)))
    });
    let mut want = bb.facts.system_identifier.map(|id| (id, None));
    for (o, id) in recorded {
        match want {
            None => want = Some((id, Some(o.file.as_str()))),
            Some((w, _)) if w == id => {}
            Some((w, from)) => {
                let whose = match from {
                    None => format!("base backup {} is of database system {w}", bb.id.short()),
                    Some(f) => format!(
                        "{f}, the first segment of the replay from base backup {} that records one, is of \
                         database system {w}",
                        bb.id.short()
                    ),
                };
                return Some(Error::Invalid(format!(
                    "WAL segment {} of instance {instance} is of database system {id}, but {whose}: recovery \
                     cannot replay one cluster's WAL onto another and would stop there; nothing was written",
                    o.file
                )));
            }
        }
    }
    None
}

/// A gap in an instance's WAL chain.
#[derive(Debug, Clone, Serialize)]
pub struct Gap {
    pub instance: String,
    pub first: String,
    pub last: String,
}

/// The gaps of an instance's WAL chain between each base backup's first segment and the newest archived
/// segment of the timeline its recovery follows (nothing without a base backup: there is no chain to
/// check). A timeline whose history file is missing is a gap named by that file.
pub fn gaps(repo: &Repository, instance: &str) -> Result<Vec<Gap>> {
    let backups = base_backups(repo, instance)?;
    let Some(newest_bb) = backups.last() else {
        return Ok(Vec::new());
    };
    let segs = Segments::load(repo, instance, newest_bb.facts.wal_segment_size)?;
    let mut out: Vec<Gap> = Vec::new();
    let mut push = |first: String, last: String| {
        if !out.iter().any(|g| g.first == first && g.last == last) {
            out.push(Gap {
                instance: instance.to_string(),
                first,
                last,
            });
        }
    };
    for bb in &backups {
        let (Some(first), Some(stop)) = (bb.facts.start_segno(), bb.facts.stop_segno()) else {
            continue;
        };
        let tli = segs.target_timeline(bb);
        if let Some(orphan) = segs.timeline_without_history(tli) {
            let file = format!("{orphan:08X}.history");
            push(file.clone(), file);
        }
        let newest = segs.last_of(tli).unwrap_or(0);
        for st in segs.stretches(bb, tli, first, newest.max(stop)) {
            for (a, b) in segs.missing_ranges(st.tli, st.from, st.to) {
                push(a, b);
            }
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
            if g.first.ends_with(".history") {
                out.push(format!(
                    "instance {instance}: timeline history file {} is missing from the archive; point-in-time \
                     recovery cannot follow that timeline (push it: `cairn wal-push --instance {instance} \
                     DATADIR/pg_wal/{}`)",
                    g.first, g.first
                ));
                continue;
            }
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
            system_identifier: None,
        }
    }

    /// A base backup on timeline 1 of segments 3..=3 (16 MiB segments).
    fn bb_on_timeline_1() -> BaseBackup {
        let snapshot: Snapshot = serde_json::from_value(serde_json::json!(
            {"version": 1, "time": "2026-11-20T10:00:00Z", "host": "h"}
        ))
        .unwrap();
        let t = DateTime::from_timestamp(100, 0).unwrap();
        BaseBackup {
            id: Id([1; 32]),
            snapshot,
            facts: BaseBackupFacts {
                stream: STREAM.into(),
                server: "s".into(),
                server_version: "15".into(),
                server_version_num: 150000,
                bin_dir: None,
                wal_segment_size: DEFAULT_SEGMENT_SIZE,
                timeline: 1,
                start_lsn: "0/3000028".into(),
                stop_lsn: "0/3000100".into(),
                start_wal_file: segment_file_name(1, 3, DEFAULT_SEGMENT_SIZE),
                stop_wal_file: segment_file_name(1, 3, DEFAULT_SEGMENT_SIZE),
                start_time: t,
                stop_time: t,
                pg_basebackup_stderr: String::new(),
                system_identifier: None,
            },
        }
    }

    /// Segments `(timeline, segno, archive time)`, and history files `(timeline, text)`.
    fn archive(segments: &[(u32, u64, i64)], histories: &[(u32, &str)]) -> Segments {
        let seg = DEFAULT_SEGMENT_SIZE;
        let mut segs = Segments::from_objects(
            segments
                .iter()
                .map(|(t, s, at)| obj(&segment_file_name(*t, *s, seg), *at))
                .collect(),
            seg,
        );
        for (t, text) in histories {
            segs.histories.insert(*t, parse_history(text).unwrap());
        }
        segs
    }

    /// Timeline 1: segments 2..=8 archived at 200+s; timeline 2 branched off in segment 5 (segments
    /// 5..=7 at 300+s).
    fn two_timelines() -> Vec<(u32, u64, i64)> {
        let mut v: Vec<(u32, u64, i64)> = (2..=8).map(|s| (1, s, 200 + s as i64)).collect();
        v.extend((5..=7).map(|s| (2, s, 300 + s as i64)));
        v
    }

    const TL2: &str = "1\t0/5000200\tno recovery target specified\n";

    fn at(secs: i64) -> Target {
        Target::Time(DateTime::from_timestamp(secs, 0).unwrap())
    }

    #[test]
    fn latest_follows_the_newest_timeline_branching_after_the_base_backup() {
        let segs = archive(&two_timelines(), &[(2, TL2)]);
        let r = plan_replay(&segs, "db", &bb_on_timeline_1(), Target::Latest).unwrap();
        assert_eq!(r.timeline, 2);
        assert_eq!(r.first_segment, "000000010000000000000003");
        assert_eq!(r.last_segment, "000000020000000000000007");
        // Timeline 1 up to the segment before the switch, then timeline 2 from the switch's segment.
        assert_eq!(r.segments, 2 + 3);
        // A time on timeline 2 ends there; a time before the switch ends on timeline 1.
        let r = plan_replay(&segs, "db", &bb_on_timeline_1(), at(305)).unwrap();
        assert_eq!(
            (r.last_segment.as_str(), r.segments),
            ("000000020000000000000005", 3)
        );
        let r = plan_replay(&segs, "db", &bb_on_timeline_1(), at(203)).unwrap();
        assert_eq!(
            (r.last_segment.as_str(), r.segments),
            ("000000010000000000000003", 1)
        );
    }

    #[test]
    fn a_timeline_that_branched_before_the_base_backup_ended_is_not_followed() {
        let segs = archive(&two_timelines(), &[(2, "1\t0/3000000\tearly\n")]);
        let r = plan_replay(&segs, "db", &bb_on_timeline_1(), Target::Latest).unwrap();
        assert_eq!(
            (r.timeline, r.last_segment.as_str()),
            (1, "000000010000000000000008")
        );
    }

    #[test]
    fn a_gap_on_the_later_timeline_or_a_missing_history_file_stops_the_plan_and_is_named_by_check()
    {
        let mut segments = two_timelines();
        segments.retain(|s| *s != (2, 6, 306));
        let segs = archive(&segments, &[(2, TL2)]);
        let e = plan_replay(&segs, "db", &bb_on_timeline_1(), Target::Latest).unwrap_err();
        assert!(e.to_string().contains("000000020000000000000006"), "{e}");
        let bb = bb_on_timeline_1();
        let path = segs.stretches(&bb, 2, 3, 7);
        assert_eq!(
            path,
            vec![
                Stretch {
                    tli: 1,
                    from: 3,
                    to: 4
                },
                Stretch {
                    tli: 2,
                    from: 5,
                    to: 7
                }
            ]
        );
        // Segments of timeline 2 without its history file: recovery could not follow them.
        let segs = archive(&two_timelines(), &[]);
        let e = plan_replay(&segs, "db", &bb_on_timeline_1(), Target::Latest).unwrap_err();
        assert!(e.to_string().contains("00000002.history"), "{e}");
    }

    #[test]
    fn running_out_of_wal_is_the_archives_end_only_when_nothing_later_is_archived() {
        let bb = bb_on_timeline_1();
        let mut segments: Vec<(u32, u64, i64)> = (2..=8).map(|s| (1, s, 200 + s as i64)).collect();
        let whole = archive(&segments, &[]);
        // At the newest segment, or in the one before it (whose last record may end in the newest).
        assert_eq!(whole.stopped_short(&bb, 1, 0x8000100), None);
        assert_eq!(whole.stopped_short(&bb, 1, 0x7000100), None);
        // Earlier, with every later segment archived: recovery found no WAL it could use in the next one.
        assert_eq!(
            whole.stopped_short(&bb, 1, 0x4000100),
            Some(ShortStop::Unreadable("000000010000000000000005".into()))
        );
        // A gap: named, whichever segment recovery's last record ended in.
        segments.retain(|s| s.1 != 6);
        let gap = archive(&segments, &[]);
        for end in [0x4000100, 0x5000100] {
            assert_eq!(
                gap.stopped_short(&bb, 1, end),
                Some(ShortStop::Missing("000000010000000000000006".into())),
                "{end:X}"
            );
        }
        // Along a timeline switch: the segments after the end are the newer timeline's.
        let two = archive(&two_timelines(), &[(2, TL2)]);
        assert_eq!(
            two.stopped_short(&bb, 2, 0x3000100),
            Some(ShortStop::Unreadable("000000010000000000000004".into()))
        );
        assert_eq!(two.stopped_short(&bb, 2, 0x6000100), None);
    }

    #[test]
    fn a_replay_through_another_database_systems_segment_is_refused_naming_the_first() {
        let (ours, theirs) = (7_000_000_000_000_000_001u64, 7_000_000_000_000_000_002u64);
        let tagged = |ids: &[(u64, Option<u64>)]| {
            let mut segs = archive(
                &ids.iter()
                    .map(|(s, _)| (1, *s, 200 + *s as i64))
                    .collect::<Vec<_>>(),
                &[],
            );
            for (s, id) in ids {
                segs.by_pos.get_mut(&(1, *s)).unwrap().system_identifier = *id;
            }
            segs
        };
        let mut bb = bb_on_timeline_1();
        bb.facts.system_identifier = Some(ours);
        // Segments that record nothing say nothing; the same cluster's pass.
        let ok = tagged(&[(3, None), (4, Some(ours)), (5, None)]);
        assert!(plan_replay(&ok, "db", &bb, Target::Latest).is_ok());
        let mixed = tagged(&[
            (3, None),
            (4, Some(ours)),
            (5, Some(theirs)),
            (6, Some(theirs)),
        ]);
        let e = plan_replay(&mixed, "db", &bb, Target::Latest)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("000000010000000000000005")
                && e.contains(&ours.to_string())
                && e.contains(&theirs.to_string())
                && !e.contains("000000010000000000000006"),
            "{e}"
        );
        // A target before the foreign segment does not replay it.
        assert!(plan_replay(&mixed, "db", &bb, at(204)).is_ok());
        // A base backup that predates the field: its replay's first recorded identifier is the reference.
        bb.facts.system_identifier = None;
        let e = plan_replay(&mixed, "db", &bb, Target::Latest)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("000000010000000000000005") && e.contains("000000010000000000000004"),
            "{e}"
        );
        assert!(plan_replay(&ok, "db", &bb, Target::Latest).is_ok());
    }

    #[test]
    fn history_files_parse_and_garbage_is_refused() {
        let h = parse_history("1\t0/5000200\treason\n\n# comment\n2\t1/0\tmore\n").unwrap();
        assert_eq!(h, vec![(1, 0x5000200), (2, 1 << 32)]);
        for bad in ["x\t0/1\n", "1\tnot-an-lsn\n", "2\t0/5\n1\t0/6\n", "1\n"] {
            assert!(parse_history(bad).is_err(), "{bad:?}");
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
