//! `ls`: the entries of a snapshot's file tree, handed to the caller one at a time as the walk meets them.
//!
//! Memory: nothing is collected. The walk ([`crate::walk::walk`]) holds the trees on the way down to the
//! current entry, the trees read ahead of it ([`TreesAhead`], within a budget) and one path buffer; each entry is lent to the caller and forgotten, so listing a tree of
//! millions of files takes what its largest directories take, not what the whole tree takes (collected,
//! 200,000 files made `ls` hold 110 MB, 550 MB for a million).
//!
//! Order and paths are those of the walk: depth-first, pre-order, by name; a path is the stored names joined
//! by `/`, exactly the stored bytes (names need not be UTF-8; the caller chooses how to show them).

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::fetch::TreesAhead;
use crate::repo::Repository;
use crate::restore::{components, find_node};
use crate::snapshot::Snapshot;
use crate::tree::{Node, NodeKind};
use crate::walk::{self, Place, Step};

/// Lists the entries under `path` in the snapshot's file tree (the whole tree when `path` is empty or `/`),
/// calling `each` with every entry's path and node as the walk meets it, depth-first. When `path` names an
/// entry, that entry comes first (then, for a directory, everything below it).
///
/// A missing `path` is an error before `each` is called. A tree that cannot be read (damage is recorded,
/// as restore records it) stops the listing with its error, after the entries met before it; an error from
/// `each` stops it too and is returned as it is.
pub fn list(
    repo: &Repository,
    snap: &Snapshot,
    path: impl AsRef<Path>,
    each: &mut dyn FnMut(&[u8], &Node) -> Result<()>,
) -> Result<()> {
    let root = snap
        .tree
        .ok_or_else(|| Error::NotFound("the snapshot holds no file tree".into()))?;
    let path = path.as_ref();
    let comps = components(path.as_os_str().as_bytes());
    // Trees read a level at a time (one round trip per level over an object store), within a budget;
    // one that cannot be read is read again on its own and reported as restore reports it.
    let descend = |_: &[u8], _: &Node| true;
    let fallback = |id: &crate::Id| crate::restore::tree(repo, id);
    let source = TreesAhead::new(repo, &descend, &fallback)?;
    if comps.is_empty() {
        return walk::walk(
            &source,
            &root,
            &mut Each {
                prefix: Vec::new(),
                buf: Vec::new(),
                each,
            },
        );
    }
    let node = find_node(repo, &root, path)?;
    let prefix = comps.join(&b'/');
    each(&prefix, &node)?;
    match node.kind {
        NodeKind::Dir { subtree } => {
            let buf = Vec::with_capacity(prefix.len() + 64);
            walk::walk(&source, &subtree, &mut Each { prefix, buf, each })
        }
        _ => Ok(()),
    }
}

/// Hands each entry to the callback, its path put below `prefix` (in `buf`, reused: no allocation per entry).
struct Each<'a> {
    prefix: Vec<u8>,
    buf: Vec<u8>,
    each: &'a mut dyn FnMut(&[u8], &Node) -> Result<()>,
}

impl walk::Visitor for Each<'_> {
    fn entry(&mut self, at: Place, node: &Node) -> Result<Step> {
        if self.prefix.is_empty() {
            (self.each)(at.path, node)?;
        } else {
            self.buf.clear();
            self.buf.extend_from_slice(&self.prefix);
            self.buf.push(b'/');
            self.buf.extend_from_slice(at.path);
            (self.each)(&self.buf, node)?;
        }
        Ok(Step::Descend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::fs;
    use std::os::unix::ffi::OsStringExt;

    fn listed(repo: &Repository, snap: &Snapshot, path: &str) -> Result<Vec<(Vec<u8>, bool)>> {
        let mut got = Vec::new();
        list(repo, snap, path, &mut |p, n| {
            got.push((p.to_vec(), matches!(n.kind, NodeKind::Dir { .. })));
            Ok(())
        })?;
        Ok(got)
    }

    #[test]
    fn listing_streams_entries_depth_first_under_the_asked_path() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("b/c")).unwrap();
        fs::write(src.join("a"), "a").unwrap();
        fs::write(src.join("b/c/d"), "d").unwrap();
        let odd = std::ffi::OsString::from_vec(b"b/\xffx".to_vec());
        fs::write(src.join(&odd), "odd").unwrap();
        let root = dir.path().join("repo");
        let repo = Repository::init(&root, Config::new_default()).unwrap();
        let snap = crate::restore::tests::back_up(&repo, &src).snapshot;

        let all = listed(&repo, &snap, "").unwrap();
        let want: Vec<(Vec<u8>, bool)> = [
            (&b"src"[..], true),
            (b"src/a", false),
            (b"src/b", true),
            (b"src/b/c", true),
            (b"src/b/c/d", false),
            (b"src/b/\xffx", false),
        ]
        .iter()
        .map(|(p, d)| (p.to_vec(), *d))
        .collect();
        assert_eq!(all, want);
        assert_eq!(listed(&repo, &snap, "/").unwrap(), want);
        // Below a path: the entry first, then what it holds, paths in full.
        assert_eq!(listed(&repo, &snap, "src/b/").unwrap(), want[2..]);
        assert_eq!(listed(&repo, &snap, "./src//a").unwrap(), want[1..2]);
        // A missing path is an error before anything is listed.
        let mut called = false;
        let e = list(&repo, &snap, "src/nope", &mut |_, _| {
            called = true;
            Ok(())
        })
        .unwrap_err();
        assert!(matches!(e, Error::NotFound(_)) && !called, "{e}");
        // The callback's error stops the walk and comes back as it is.
        let mut n = 0;
        let e = list(&repo, &snap, "", &mut |_, _| {
            n += 1;
            match n {
                3 => Err(Error::Invalid("enough".into())),
                _ => Ok(()),
            }
        })
        .unwrap_err();
        assert!(
            matches!(e, Error::Invalid(ref m) if m == "enough") && n == 3,
            "{e}"
        );

        // A damaged directory ends the listing there with the damage: what came before it was listed,
        // nothing after.
        let NodeKind::Dir { subtree } = find_node(&repo, &snap.tree.unwrap(), "src/b/c")
            .unwrap()
            .kind
        else {
            panic!("not a directory")
        };
        let loc = repo.locate(&subtree).unwrap();
        let pack = root.join(crate::backend::ObjectKind::Pack.key(&loc.pack.to_hex()));
        let mut bytes = fs::read(&pack).unwrap();
        let at = (loc.entry.offset + u64::from(loc.entry.stored_len) / 2) as usize;
        bytes[at] ^= 0x40;
        fs::write(&pack, bytes).unwrap();
        let mut got = Vec::new();
        let e = list(&repo, &snap, "", &mut |p, _| {
            got.push(p.to_vec());
            Ok(())
        })
        .unwrap_err();
        assert!(e.is_damage(), "{e}");
        let before: Vec<Vec<u8>> = want[..4].iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(got, before);
    }
}
