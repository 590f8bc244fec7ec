//! Which snapshots hold a path: a glob over every snapshot's file tree (and stream names), newest first.
//!
//! A pattern without `/` is matched against entry names (`*.pdf`, `invoice-2024-*`); one with `/` against
//! the path as `ls` prints it (`src/docs/*.txt`, `**/filestore/**/*.pdf`; a leading `/` is ignored). Globs
//! are compiled with `globset`: `*` and `?` stop at `/`, `**` crosses directories.
//!
//! Cost: consecutive snapshots share most subtrees (same id, a Merkle DAG), so the matches found below each
//! tree are cached by (tree id, path prefix) and a shared subtree is read and searched once for all
//! snapshots. Name patterns do not depend on the prefix, so their cache key is the id alone.

use std::collections::HashMap;
use std::rc::Rc;

use globset::{GlobBuilder, GlobMatcher};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::repo::Repository;
use crate::tree::NodeKind;

/// One matching entry.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub size: u64,
    /// RFC 3339, UTC, to the second (the stored value has nanoseconds).
    pub mtime: String,
}

/// A snapshot holding at least one match.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotMatches {
    pub snapshot_id: String,
    pub time: String,
    pub instance: Option<String>,
    pub matches: Vec<Found>,
}

/// The result of a search.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FindReport {
    pub snapshots: Vec<SnapshotMatches>,
    pub snapshots_searched: usize,
    /// Tree objects read and searched.
    pub trees_read: u64,
    /// Subtrees whose matches came from the cache (shared with a snapshot already searched).
    pub trees_cached: u64,
}

/// Matches below one tree, with paths relative to it.
type Cached = Rc<Vec<Found>>;

struct Search<'r> {
    repo: &'r Repository,
    matcher: GlobMatcher,
    by_path: bool,
    cache: HashMap<(Id, String), Cached>,
    trees_read: u64,
    trees_cached: u64,
}

/// Searches every snapshot (of `instance`, if given), newest first.
pub fn find(repo: &Repository, pattern: &str, instance: Option<&str>) -> Result<FindReport> {
    let by_path = pattern.contains('/');
    let glob = pattern.trim_start_matches('/');
    if glob.is_empty() {
        return Err(Error::Invalid("find: the pattern is empty".into()));
    }
    let matcher = GlobBuilder::new(glob)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| Error::Invalid(format!("find pattern {pattern:?}: {e}")))?
        .compile_matcher();
    let mut search = Search {
        repo,
        matcher,
        by_path,
        cache: HashMap::new(),
        trees_read: 0,
        trees_cached: 0,
    };
    let mut report = FindReport::default();
    let mut snaps = repo.snapshots()?;
    snaps.retain(|(_, s)| instance.is_none() || s.instance.as_deref() == instance);
    snaps.sort_by_key(|(_, s)| std::cmp::Reverse(s.time));
    report.snapshots_searched = snaps.len();
    for (id, s) in snaps {
        let mut matches = match &s.tree {
            Some(t) => search.tree(t, "")?.as_ref().clone(),
            None => Vec::new(),
        };
        for st in &s.streams {
            if search.matcher.is_match(&st.name) {
                matches.push(Found {
                    path: format!("[{}]", st.name),
                    kind: "stream",
                    size: st.size,
                    mtime: s.time.to_utc().to_rfc3339(),
                });
            }
        }
        if !matches.is_empty() {
            report.snapshots.push(SnapshotMatches {
                snapshot_id: id.to_hex(),
                time: s.time.to_rfc3339(),
                instance: s.instance.clone(),
                matches,
            });
        }
    }
    report.trees_read = search.trees_read;
    report.trees_cached = search.trees_cached;
    Ok(report)
}

impl Search<'_> {
    /// The matches below tree `id`, with paths relative to it; `prefix` is its path in the snapshot (which
    /// path patterns match against).
    fn tree(&mut self, id: &Id, prefix: &str) -> Result<Cached> {
        let key = (*id, if self.by_path { prefix } else { "" }.to_string());
        if let Some(hit) = self.cache.get(&key) {
            self.trees_cached += 1;
            return Ok(hit.clone());
        }
        self.trees_read += 1;
        let mut found = Vec::new();
        for node in self.repo.read_tree(id)?.nodes {
            let name = String::from_utf8_lossy(&node.name).into_owned();
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let hit = if self.by_path {
                self.matcher.is_match(&path)
            } else {
                self.matcher.is_match(&name)
            };
            if hit {
                found.push(Found {
                    path: name.clone(),
                    kind: crate::diff::kind_name(&node.kind),
                    size: match &node.kind {
                        NodeKind::File { size, .. } => *size,
                        _ => 0,
                    },
                    mtime: chrono::DateTime::from_timestamp(node.meta.mtime, 0)
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_default(),
                });
            }
            if let NodeKind::Dir { subtree } = &node.kind {
                for f in self.tree(subtree, &path)?.iter() {
                    found.push(Found {
                        path: format!("{name}/{}", f.path),
                        ..f.clone()
                    });
                }
            }
        }
        let found = Rc::new(found);
        self.cache.insert(key, found.clone());
        Ok(found)
    }
}
