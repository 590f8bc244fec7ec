//! The one walk of snapshot trees. Every module that visits the trees of a snapshot (prune's mark, check,
//! repair, restore, `ls`, find, diff, `restore --delete`, mount) does it through [`walk`], so a change to how
//! trees are stored or read (delta blobs, encryption) changes one place.
//!
//! Order: depth-first, pre-order. The entries of a tree are visited in the tree's order (by name, bytes
//! ascending); a directory's entries come right after the directory itself, before its next sibling.
//!
//! Skipping: [`Visitor::before_tree`] is asked before any tree (the root included) is read, so a
//! reachability walk skips a subtree it has already seen by id without reading it again (trees are
//! content-addressed: the same id is the same subtree); [`Visitor::entry`] can decline to enter a directory.
//!
//! Errors: a tree that cannot be read is handed to [`Visitor::tree_error`] with its path; the visitor tells
//! damage from other read errors with [`Error::is_damage`] as everywhere else, and either skips that subtree
//! or stops the walk. The default stops. The walk keeps its own stack, not the thread's: a hostile, deeply
//! nested tree cannot overflow it.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::repo::Repository;
use crate::tree::{Node, NodeKind, Tree};

/// Where the trees come from: the repository, or a wrapper (restore records damage it meets; tests inject
/// faults).
pub trait TreeSource {
    fn read_tree(&self, id: &Id) -> Result<Tree>;
}

impl TreeSource for Repository {
    fn read_tree(&self, id: &Id) -> Result<Tree> {
        Repository::read_tree(self, id)
    }
}

/// A [`TreeSource`] made of a function.
pub struct FnSource<F>(pub F);

impl<F: Fn(&Id) -> Result<Tree>> TreeSource for FnSource<F> {
    fn read_tree(&self, id: &Id) -> Result<Tree> {
        (self.0)(id)
    }
}

/// Where the walk is: the path below the walk's root (names joined by `/`, exactly the stored bytes; empty
/// for the root tree) and the depth (0 for the root tree, 1 for its entries and their subtrees, ...).
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub path: &'a [u8],
    pub depth: usize,
}

impl Place<'_> {
    /// The path for display (names that are not UTF-8 are shown lossily).
    pub fn lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.path)
    }

    /// The path as a relative file-system path, byte for byte.
    pub fn as_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(self.path))
    }

    /// `path` joined below `prefix` the way reports show it: `prefix/path`, or `prefix` + `path` when the
    /// prefix is empty or ends with `:` (as `stream:`).
    pub fn shown_under(&self, prefix: &str) -> String {
        let path = self.lossy();
        if prefix.is_empty() || prefix.ends_with(':') {
            format!("{prefix}{path}")
        } else if path.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}/{path}")
        }
    }
}

/// Whether to go below a directory (or read a tree).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Descend,
    Skip,
}

/// What a walk calls. For a directory entry the calls are: [`entry`](Self::entry), then (if it descends)
/// [`before_tree`](Self::before_tree) of its subtree, then (if that descends) [`tree`](Self::tree) or
/// [`tree_error`](Self::tree_error), the subtree's entries, and [`tree_done`](Self::tree_done). A tree that was
/// skipped or could not be read gets no `tree_done`.
pub trait Visitor {
    /// Tree `id` at `at` is about to be read; `Skip` leaves it (and everything below it) unvisited.
    fn before_tree(&mut self, _id: &Id, _at: Place) -> Result<Step> {
        Ok(Step::Descend)
    }
    /// Tree `id` was read; its entries follow.
    fn tree(&mut self, _id: &Id, _at: Place, _tree: &Tree) -> Result<()> {
        Ok(())
    }
    /// Tree `id` could not be read: `Ok` skips it and the walk goes on, `Err` stops the walk.
    fn tree_error(&mut self, _id: &Id, _at: Place, err: Error) -> Result<()> {
        Err(err)
    }
    /// One entry; for a directory, `Skip` does not enter it.
    fn entry(&mut self, _at: Place, _node: &Node) -> Result<Step> {
        Ok(Step::Descend)
    }
    /// Every entry of tree `id`, and everything below them, was visited.
    fn tree_done(&mut self, _id: &Id, _at: Place) -> Result<()> {
        Ok(())
    }
}

/// One tree being visited. Its path is not kept here but as the first `path_len` bytes of the walk's one
/// path buffer: a copy per level would hold the sum of every level's path, quadratic in the depth (a
/// hostile chain of 6,000 trees with 100-byte names made check hold 1.8 GB), where the buffer holds the
/// deepest path once.
struct Frame {
    id: Id,
    tree: Tree,
    next: usize,
    path_len: usize,
    depth: usize,
}

/// Walks the tree `root` and everything below it (see the module docs).
pub fn walk(source: &dyn TreeSource, root: &Id, visitor: &mut dyn Visitor) -> Result<()> {
    let mut stack = Vec::new();
    let mut path = Vec::new();
    if let Some(f) = open(source, visitor, *root, &path, 0)? {
        stack.push(f);
    }
    while let Some(top) = stack.last_mut() {
        path.truncate(top.path_len);
        let Some(node) = top.tree.nodes.get(top.next) else {
            let f = stack
                .pop()
                .ok_or_else(|| Error::Invalid("walk stack".into()))?;
            visitor.tree_done(&f.id, place(&path, f.depth))?;
            continue;
        };
        top.next += 1;
        let depth = top.depth + 1;
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(&node.name);
        let step = visitor.entry(place(&path, depth), node)?;
        if let (NodeKind::Dir { subtree }, Step::Descend) = (&node.kind, step) {
            let subtree = *subtree;
            if let Some(f) = open(source, visitor, subtree, &path, depth)? {
                stack.push(f);
            }
        }
    }
    Ok(())
}

fn place(path: &[u8], depth: usize) -> Place<'_> {
    Place { path, depth }
}

/// Asks the visitor, reads the tree and hands it over; `None` when skipped or unreadable (and skipped).
fn open(
    source: &dyn TreeSource,
    visitor: &mut dyn Visitor,
    id: Id,
    path: &[u8],
    depth: usize,
) -> Result<Option<Frame>> {
    if visitor.before_tree(&id, place(path, depth))? == Step::Skip {
        return Ok(None);
    }
    match source.read_tree(&id) {
        Ok(tree) => {
            visitor.tree(&id, place(path, depth), &tree)?;
            Ok(Some(Frame {
                id,
                tree,
                next: 0,
                path_len: path.len(),
                depth,
            }))
        }
        Err(e) => visitor
            .tree_error(&id, place(path, depth), e)
            .map(|()| None),
    }
}

/// Every entry below `root` with its path, depth-first (what `ls` lists).
pub fn entries(source: &dyn TreeSource, root: &Id) -> Result<Vec<(Vec<u8>, Node)>> {
    struct Collect(Vec<(Vec<u8>, Node)>);
    impl Visitor for Collect {
        fn entry(&mut self, at: Place, node: &Node) -> Result<Step> {
            self.0.push((at.path.to_vec(), node.clone()));
            Ok(Step::Descend)
        }
    }
    let mut c = Collect(Vec::new());
    walk(source, root, &mut c)?;
    Ok(c.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Meta;
    use std::collections::{HashMap, HashSet};

    /// Trees in memory; ids listed in `damaged` read as corrupt, in `denied` as permission denied.
    #[derive(Default)]
    struct Store {
        trees: HashMap<Id, Tree>,
        damaged: HashSet<Id>,
        denied: HashSet<Id>,
        reads: std::cell::Cell<usize>,
    }

    impl Store {
        fn add(&mut self, nodes: Vec<Node>) -> Id {
            let t = Tree::new(nodes).unwrap();
            let (_, id) = t.encode().unwrap();
            self.trees.insert(id, t);
            id
        }
    }

    impl TreeSource for Store {
        fn read_tree(&self, id: &Id) -> Result<Tree> {
            self.reads.set(self.reads.get() + 1);
            if self.damaged.contains(id) {
                return Err(Error::corrupt(
                    format!("tree {id}"),
                    "content does not match its id",
                ));
            }
            if self.denied.contains(id) {
                return Err(Error::io(
                    "pack",
                    std::io::Error::from_raw_os_error(libc::EACCES),
                ));
            }
            self.trees
                .get(id)
                .cloned()
                .ok_or_else(|| Error::NotFound(format!("tree {id}")))
        }
    }

    fn file(name: &str) -> Node {
        Node {
            name: name.as_bytes().to_vec(),
            kind: NodeKind::File {
                size: 1,
                chunks: vec![Id::of(name.as_bytes())],
            },
            meta: Meta::default(),
        }
    }

    fn dir(name: &str, subtree: Id) -> Node {
        Node {
            name: name.as_bytes().to_vec(),
            kind: NodeKind::Dir { subtree },
            meta: Meta::default(),
        }
    }

    /// root: a/{x, y}, b (file), c/{x, y} (the same subtree as a), d/{z}
    fn sample() -> (Store, Id, Id, Id) {
        let mut s = Store::default();
        let shared = s.add(vec![file("y"), file("x")]);
        let other = s.add(vec![file("z")]);
        let root = s.add(vec![
            dir("d", other),
            dir("c", shared),
            file("b"),
            dir("a", shared),
        ]);
        (s, root, shared, other)
    }

    /// Records every call, as text.
    #[derive(Default)]
    struct Log {
        calls: Vec<String>,
        seen: HashSet<Id>,
        skip_seen: bool,
        skip_dir: Option<&'static str>,
    }

    impl Visitor for Log {
        fn before_tree(&mut self, id: &Id, at: Place) -> Result<Step> {
            if !self.seen.insert(*id) && self.skip_seen {
                self.calls.push(format!("seen {}", at.lossy()));
                return Ok(Step::Skip);
            }
            Ok(Step::Descend)
        }
        fn tree(&mut self, _id: &Id, at: Place, tree: &Tree) -> Result<()> {
            self.calls.push(format!(
                "tree {:?} {} {}",
                at.lossy(),
                at.depth,
                tree.nodes.len()
            ));
            Ok(())
        }
        fn tree_error(&mut self, _id: &Id, at: Place, err: Error) -> Result<()> {
            if err.is_damage() {
                self.calls.push(format!("damaged {}", at.lossy()));
                Ok(())
            } else {
                Err(err)
            }
        }
        fn entry(&mut self, at: Place, _node: &Node) -> Result<Step> {
            self.calls.push(format!("{} {}", at.lossy(), at.depth));
            Ok(if Some(&*at.lossy()) == self.skip_dir {
                Step::Skip
            } else {
                Step::Descend
            })
        }
        fn tree_done(&mut self, _id: &Id, at: Place) -> Result<()> {
            self.calls.push(format!("done {:?}", at.lossy()));
            Ok(())
        }
    }

    #[test]
    fn walk_is_depth_first_in_name_order_with_paths_and_depths() {
        let (s, root, _, _) = sample();
        let mut log = Log::default();
        walk(&s, &root, &mut log).unwrap();
        let want = [
            "tree \"\" 0 4",
            "a 1",
            "tree \"a\" 1 2",
            "a/x 2",
            "a/y 2",
            "done \"a\"",
            "b 1",
            "c 1",
            "tree \"c\" 1 2",
            "c/x 2",
            "c/y 2",
            "done \"c\"",
            "d 1",
            "tree \"d\" 1 1",
            "d/z 2",
            "done \"d\"",
            "done \"\"",
        ];
        assert_eq!(log.calls, want);
        let listed: Vec<String> = entries(&s, &root)
            .unwrap()
            .into_iter()
            .map(|(p, _)| String::from_utf8(p).unwrap())
            .collect();
        assert_eq!(
            listed,
            ["a", "a/x", "a/y", "b", "c", "c/x", "c/y", "d", "d/z"]
        );
    }

    #[test]
    fn walk_skips_seen_subtrees_without_reading_them_and_declined_directories() {
        let (s, root, _, _) = sample();
        let mut log = Log {
            skip_seen: true,
            skip_dir: Some("d"),
            ..Log::default()
        };
        walk(&s, &root, &mut log).unwrap();
        assert!(log.calls.contains(&"seen c".to_string()), "{:?}", log.calls);
        assert!(!log
            .calls
            .iter()
            .any(|c| c.starts_with("c/") || c.starts_with("d/")));
        assert!(log.calls.contains(&"d 1".to_string()));
        // root and a only: c is the same tree as a, d was declined.
        assert_eq!(s.reads.get(), 2);
        // Walking the root again with the same seen set reads nothing.
        walk(&s, &root, &mut log).unwrap();
        assert_eq!(s.reads.get(), 2);
    }

    #[test]
    fn a_damaged_tree_is_reported_with_its_path_and_other_errors_stop_the_walk() {
        let (mut s, root, _, other) = sample();
        s.damaged.insert(other);
        let mut log = Log::default();
        walk(&s, &root, &mut log).unwrap();
        assert!(
            log.calls.contains(&"damaged d".to_string()),
            "{:?}",
            log.calls
        );
        assert!(!log.calls.contains(&"done \"d\"".to_string()));
        assert_eq!(log.calls.last().unwrap(), "done \"\"");
        // By default any unreadable tree stops the walk with its error.
        struct Plain;
        impl Visitor for Plain {}
        let err = walk(&s, &root, &mut Plain).unwrap_err();
        assert!(err.is_damage(), "{err}");
        // A read error that is not damage reaches the caller as it is.
        s.damaged.clear();
        s.denied.insert(other);
        let err = walk(&s, &root, &mut Log::default()).unwrap_err();
        assert!(!err.is_damage(), "{err}");
    }

    #[test]
    fn a_deep_chain_does_not_overflow_the_stack() {
        let mut s = Store::default();
        let mut t = s.add(vec![file("leaf")]);
        for _ in 0..5_000 {
            t = s.add(vec![dir("d", t)]);
        }
        struct Deepest(usize);
        impl Visitor for Deepest {
            fn entry(&mut self, at: Place, _: &Node) -> Result<Step> {
                self.0 = self.0.max(at.depth);
                Ok(Step::Descend)
            }
        }
        let mut d = Deepest(0);
        walk(&s, &t, &mut d).unwrap();
        assert_eq!(d.0, 5_001);
    }
}
