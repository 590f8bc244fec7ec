//! What changed between two snapshots: files added, removed and changed (content and metadata), streams, and
//! the row counts of each table of a recorded database.
//!
//! The two file trees are walked together by name. Trees are content-addressed (a Merkle DAG), so two
//! subtrees with the same id are identical and are skipped without being read; the cost of a diff is the
//! size of what changed, not of the snapshots. Content changed means the chunk lists differ (equal chunk
//! lists are equal bytes). Metadata compared: type, mode, mtime (to the nanosecond), uid, gid, extended
//! attributes (names listed when any differs), symlink target and device numbers; ctime, inode and link count are not (they change on every copy and are not
//! restored). An entry whose type changed is reported as removed and added. The two trees are merged here;
//! what lies below an entry present on one side only is listed by the common walk ([`crate::walk`]).
//!
//! Databases: the row counts recorded at backup time (`metadata.postgres.tables`) are compared, so a diff
//! needs no server and no dump is read.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

use crate::error::Result;
use crate::hashing::Id;
use crate::postgres::PgFacts;
use crate::repo::Repository;
use crate::snapshot::Snapshot;
use crate::tree::{Node, NodeKind, Tree};
use crate::walk;

/// An entry present on one side only.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub size: u64,
}

/// An entry present on both sides that differs.
#[derive(Debug, Clone, Serialize)]
pub struct Changed {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The bytes differ (files and streams).
    pub content: bool,
    pub size_before: u64,
    pub size_after: u64,
    /// Metadata field -> [before, after], for the fields that differ.
    pub metadata: BTreeMap<&'static str, [Value; 2]>,
}

/// A table whose row count differs (or that exists on one side only: `null`).
#[derive(Debug, Clone, Serialize)]
pub struct TableDiff {
    pub schema: String,
    pub table: String,
    pub rows_before: Option<i64>,
    pub rows_after: Option<i64>,
    pub delta: i64,
}

/// The database half of a diff.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseDiff {
    pub database_before: Option<String>,
    pub database_after: Option<String>,
    pub size_before: Option<i64>,
    pub size_after: Option<i64>,
    pub tables_compared: usize,
    pub tables: Vec<TableDiff>,
}

/// Counts, for a one-line summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiffStats {
    pub added: u64,
    pub removed: u64,
    pub changed: u64,
    pub bytes_added: u64,
    pub bytes_removed: u64,
    /// Subtrees with the same id on both sides, skipped without being read.
    pub trees_skipped: u64,
}

/// Everything that differs between two snapshots.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiffReport {
    pub added: Vec<Entry>,
    pub removed: Vec<Entry>,
    pub changed: Vec<Changed>,
    pub streams_added: Vec<Entry>,
    pub streams_removed: Vec<Entry>,
    pub streams_changed: Vec<Changed>,
    pub database: Option<DatabaseDiff>,
    pub stats: DiffStats,
}

/// Compares snapshot `a` (before) with `b` (after).
pub fn diff(repo: &Repository, a: &Snapshot, b: &Snapshot) -> Result<DiffReport> {
    let mut r = DiffReport::default();
    let mut files = Walk {
        repo,
        report: &mut r,
        streams: false,
    };
    files.trees(a.tree.as_ref(), b.tree.as_ref(), "")?;
    let mut streams = Walk {
        repo,
        report: &mut r,
        streams: true,
    };
    streams.trees(a.stream_tree.as_ref(), b.stream_tree.as_ref(), "")?;
    r.database = database_diff(&PgFacts::of(a)?, &PgFacts::of(b)?);
    Ok(r)
}

struct Walk<'a> {
    repo: &'a Repository,
    report: &'a mut DiffReport,
    /// Comparing stream trees: content only (a stream's mtime is its backup time).
    streams: bool,
}

impl Walk<'_> {
    fn read(&self, id: Option<&Id>) -> Result<Tree> {
        match id {
            Some(id) => self.repo.read_tree(id),
            None => Ok(Tree::default()),
        }
    }

    /// Merges two directory listings (both sorted by name).
    fn trees(&mut self, a: Option<&Id>, b: Option<&Id>, prefix: &str) -> Result<()> {
        if a == b {
            if a.is_some() {
                self.report.stats.trees_skipped += 1;
            }
            return Ok(());
        }
        let (ta, tb) = (self.read(a)?, self.read(b)?);
        let (mut i, mut j) = (0, 0);
        while i < ta.nodes.len() || j < tb.nodes.len() {
            let order = match (ta.nodes.get(i), tb.nodes.get(j)) {
                (Some(x), Some(y)) => x.name.cmp(&y.name),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    self.one_side(&ta.nodes[i], prefix, false)?;
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    self.one_side(&tb.nodes[j], prefix, true)?;
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    self.both(&ta.nodes[i], &tb.nodes[j], prefix)?;
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok(())
    }

    /// An entry (and everything below it) present on one side only.
    fn one_side(&mut self, node: &Node, prefix: &str, added: bool) -> Result<()> {
        let path = join(prefix, &node.name);
        self.record(&path, node, added);
        if let NodeKind::Dir { subtree } = &node.kind {
            for (rel, child) in walk::entries(self.repo, subtree)? {
                self.record(&join(&path, &rel), &child, added);
            }
        }
        Ok(())
    }

    /// Reports one entry present on one side only.
    fn record(&mut self, path: &str, node: &Node, added: bool) {
        let size = match &node.kind {
            NodeKind::File { size, .. } => *size,
            _ => 0,
        };
        let entry = Entry {
            path: path.to_string(),
            kind: kind_name(&node.kind),
            size,
        };
        let stats = &mut self.report.stats;
        if self.streams {
            // counted by the stream lists themselves
        } else if added {
            stats.added += 1;
            stats.bytes_added += size;
        } else {
            stats.removed += 1;
            stats.bytes_removed += size;
        }
        let list = match (self.streams, added) {
            (false, true) => &mut self.report.added,
            (false, false) => &mut self.report.removed,
            (true, true) => &mut self.report.streams_added,
            (true, false) => &mut self.report.streams_removed,
        };
        list.push(entry);
    }

    fn both(&mut self, a: &Node, b: &Node, prefix: &str) -> Result<()> {
        if kind_name(&a.kind) != kind_name(&b.kind) {
            self.one_side(a, prefix, false)?;
            return self.one_side(b, prefix, true);
        }
        let path = join(prefix, &a.name);
        let (content, size_before, size_after) = match (&a.kind, &b.kind) {
            (
                NodeKind::File {
                    size: sa,
                    chunks: ca,
                },
                NodeKind::File {
                    size: sb,
                    chunks: cb,
                },
            ) => (ca != cb, *sa, *sb),
            _ => (false, 0, 0),
        };
        let metadata = if self.streams {
            BTreeMap::new()
        } else {
            metadata_changes(a, b)
        };
        if content || !metadata.is_empty() {
            let stats = &mut self.report.stats;
            if !self.streams {
                stats.changed += 1;
                stats.bytes_added += size_after.saturating_sub(size_before);
                stats.bytes_removed += size_before.saturating_sub(size_after);
            }
            let change = Changed {
                path: path.clone(),
                kind: kind_name(&a.kind),
                content,
                size_before,
                size_after,
                metadata,
            };
            if self.streams {
                self.report.streams_changed.push(change);
            } else {
                self.report.changed.push(change);
            }
        }
        if let (NodeKind::Dir { subtree: sa }, NodeKind::Dir { subtree: sb }) = (&a.kind, &b.kind) {
            self.trees(Some(sa), Some(sb), &path)?;
        }
        Ok(())
    }
}

/// The metadata fields that differ, as [before, after].
fn metadata_changes(a: &Node, b: &Node) -> BTreeMap<&'static str, [Value; 2]> {
    let mut m = BTreeMap::new();
    let (ma, mb) = (&a.meta, &b.meta);
    if ma.mode != mb.mode {
        m.insert(
            "mode",
            [
                json!(format!("{:o}", ma.mode & 0o7777)),
                json!(format!("{:o}", mb.mode & 0o7777)),
            ],
        );
    }
    if (ma.mtime, ma.mtime_nsec) != (mb.mtime, mb.mtime_nsec) {
        m.insert("mtime", [json!(mtime(ma)), json!(mtime(mb))]);
    }
    if ma.uid != mb.uid {
        m.insert("uid", [json!(ma.uid), json!(mb.uid)]);
    }
    if ma.gid != mb.gid {
        m.insert("gid", [json!(ma.gid), json!(mb.gid)]);
    }
    if ma.xattrs != mb.xattrs {
        let names = |m: &crate::tree::Meta| -> Vec<String> {
            m.xattrs
                .iter()
                .map(|x| String::from_utf8_lossy(&x.name).into_owned())
                .collect()
        };
        m.insert("xattrs", [json!(names(ma)), json!(names(mb))]);
    }
    match (&a.kind, &b.kind) {
        (NodeKind::Symlink { target: ta }, NodeKind::Symlink { target: tb }) if ta != tb => {
            m.insert(
                "target",
                [
                    json!(String::from_utf8_lossy(ta)),
                    json!(String::from_utf8_lossy(tb)),
                ],
            );
        }
        (NodeKind::CharDevice { rdev: ra }, NodeKind::CharDevice { rdev: rb })
        | (NodeKind::BlockDevice { rdev: ra }, NodeKind::BlockDevice { rdev: rb })
            if ra != rb =>
        {
            m.insert("rdev", [json!(ra), json!(rb)]);
        }
        _ => {}
    }
    m
}

/// An mtime for people and scripts: RFC 3339 with nanoseconds, UTC.
fn mtime(m: &crate::tree::Meta) -> String {
    chrono::DateTime::from_timestamp(m.mtime, m.mtime_nsec)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
        .unwrap_or_else(|| format!("{}.{:09}", m.mtime, m.mtime_nsec))
}

fn database_diff(a: &Option<PgFacts>, b: &Option<PgFacts>) -> Option<DatabaseDiff> {
    if a.is_none() && b.is_none() {
        return None;
    }
    let mut rows: BTreeMap<(String, String), (Option<i64>, Option<i64>)> = BTreeMap::new();
    for t in a.iter().flat_map(|f| &f.tables) {
        rows.entry((t.schema.clone(), t.table.clone()))
            .or_default()
            .0 = Some(t.rows);
    }
    for t in b.iter().flat_map(|f| &f.tables) {
        rows.entry((t.schema.clone(), t.table.clone()))
            .or_default()
            .1 = Some(t.rows);
    }
    let tables_compared = rows.len();
    let tables = rows
        .into_iter()
        .filter(|(_, (x, y))| x != y)
        .map(|((schema, table), (x, y))| TableDiff {
            schema,
            table,
            rows_before: x,
            rows_after: y,
            delta: y.unwrap_or(0) - x.unwrap_or(0),
        })
        .collect();
    Some(DatabaseDiff {
        database_before: a.as_ref().map(|f| f.database.clone()),
        database_after: b.as_ref().map(|f| f.database.clone()),
        size_before: a.as_ref().map(|f| f.size_bytes),
        size_after: b.as_ref().map(|f| f.size_bytes),
        tables_compared,
        tables,
    })
}

fn join(prefix: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if prefix.is_empty() {
        name.into_owned()
    } else {
        format!("{prefix}/{name}")
    }
}

/// The type of a node, as `ls --json` names it.
pub fn kind_name(kind: &NodeKind) -> &'static str {
    match kind {
        NodeKind::File { .. } => "file",
        NodeKind::Dir { .. } => "dir",
        NodeKind::Symlink { .. } => "symlink",
        NodeKind::Fifo => "fifo",
        NodeKind::CharDevice { .. } => "char-device",
        NodeKind::BlockDevice { .. } => "block-device",
    }
}
