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
use crate::tree::{Node, NodeKind, Tree};
use crate::walk::{self, Place, Step};

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
            Some(t) => search.tree(t)?.as_ref().clone(),
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
    /// The matches below tree `id` (a snapshot's root), with paths relative to it.
    fn tree(&mut self, id: &Id) -> Result<Cached> {
        let repo = self.repo;
        let mut w = FindWalk {
            s: self,
            open: Vec::new(),
            result: None,
        };
        walk::walk(repo, id, &mut w)?;
        w.result
            .ok_or_else(|| Error::Invalid(format!("tree {id} was not searched")))
    }

    /// The cache key of the tree `id` at `at`: path patterns depend on where the tree is, name patterns not.
    fn key(&self, id: &Id, at: Place) -> (Id, String) {
        let prefix = if self.by_path {
            at.lossy().into_owned()
        } else {
            String::new()
        };
        (*id, prefix)
    }
}

/// The walk of one snapshot's tree: the matches below each tree are gathered when the tree is done
/// (post-order) and cached; a tree found in the cache is not read.
struct FindWalk<'s, 'r> {
    s: &'s mut Search<'r>,
    /// The matches so far of each tree being searched, relative to it.
    open: Vec<Vec<Found>>,
    result: Option<Cached>,
}

impl FindWalk<'_, '_> {
    /// Hands the matches below the tree at `at` to the tree holding it, or makes them the result.
    fn settle(&mut self, found: Cached, at: Place) {
        let Some(top) = self.open.last_mut() else {
            self.result = Some(found);
            return;
        };
        let path = at.lossy();
        let name = path.rsplit('/').next().unwrap_or(&path);
        top.extend(found.iter().map(|f| Found {
            path: format!("{name}/{}", f.path),
            ..f.clone()
        }));
    }
}

impl walk::Visitor for FindWalk<'_, '_> {
    fn before_tree(&mut self, id: &Id, at: Place) -> Result<Step> {
        if let Some(hit) = self.s.cache.get(&self.s.key(id, at)).cloned() {
            self.s.trees_cached += 1;
            self.settle(hit, at);
            return Ok(Step::Skip);
        }
        self.s.trees_read += 1;
        Ok(Step::Descend)
    }

    fn tree(&mut self, _: &Id, _: Place, _: &Tree) -> Result<()> {
        self.open.push(Vec::new());
        Ok(())
    }

    fn entry(&mut self, at: Place, node: &Node) -> Result<Step> {
        let name = String::from_utf8_lossy(&node.name).into_owned();
        let hit = if self.s.by_path {
            self.s.matcher.is_match(&*at.lossy())
        } else {
            self.s.matcher.is_match(&name)
        };
        if let (true, Some(top)) = (hit, self.open.last_mut()) {
            top.push(Found {
                path: name,
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
        Ok(Step::Descend)
    }

    fn tree_done(&mut self, id: &Id, at: Place) -> Result<()> {
        let found = Rc::new(self.open.pop().unwrap_or_default());
        let key = self.s.key(id, at);
        self.s.cache.insert(key, found.clone());
        self.settle(found, at);
        Ok(())
    }
}
