//! Copying a snapshot into a repository whose keys differ from the source's (another master key, or one side
//! plaintext): the target names content by other ids and, its chunker seed being another, cuts it at other
//! boundaries, so nothing of the source can be stored as it is.
//!
//! Each file's (and stream's) content is read through the source's read path (blob by blob, decrypted and
//! verified) as one byte stream, cut by the target's chunker with the target's parameters, named by the
//! target's keys and saved through the target's pack writer, which deduplicates against everything the
//! target holds. Trees are then rebuilt bottom-up with the new chunk lists and subtree ids, and the snapshot
//! is saved anew, recording the id it was copied from (metadata key `original`, format-spec section 7), by
//! which a later copy knows it is there.
//!
//! Within one run, a tree or a file content (a chunk list) is rewritten once: unchanged subtrees of later
//! snapshots map to the trees already written, and hard links or identical files to the same chunks. The
//! write ordering is the plain copy's (format-spec section 10): data before the trees naming it, subtrees
//! before parents, the writer flushed before the snapshot object.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

use crate::chunking::ChunkReader;
use crate::config::ChunkerParams;
use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::pack::BlobKind;
use crate::pack_writer::PackWriter;
use crate::repo::Repository;
use crate::snapshot::Snapshot;
use crate::tree::{Node, NodeKind, Tree};
use crate::walk;

/// Which of a snapshot's two trees content comes from: they are chunked and compressed differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Content {
    Files,
    Streams,
}

/// What this run has rewritten so far (durable in the target once the snapshot that wrote it is saved;
/// a failure ends the whole copy, so nothing here outlives a failed write).
#[derive(Default)]
pub struct Rewritten {
    /// Source tree id → target tree id.
    trees: HashMap<Id, Id>,
    /// Source chunk list → target chunk list, per kind of content.
    files: HashMap<(Content, Vec<Id>), Vec<Id>>,
}

/// What one root's walk found to rewrite: trees after their children, and file contents not yet rewritten.
#[derive(Default)]
struct Plan {
    trees: Vec<(Id, Tree)>,
    files: Vec<(Vec<Id>, u64)>,
}

/// Gathers a [`Plan`] through the one tree walk.
struct Gather<'a> {
    content: Content,
    done: &'a Rewritten,
    plan: &'a mut Plan,
    seen_trees: HashSet<Id>,
    seen_files: HashSet<Vec<Id>>,
    /// Trees read but not yet done.
    open: HashMap<Id, Tree>,
}

impl walk::Visitor for Gather<'_> {
    fn before_tree(&mut self, id: &Id, _at: walk::Place) -> Result<walk::Step> {
        let new = !self.done.trees.contains_key(id) && self.seen_trees.insert(*id);
        Ok(if new {
            walk::Step::Descend
        } else {
            walk::Step::Skip
        })
    }
    fn tree(&mut self, id: &Id, _at: walk::Place, tree: &Tree) -> Result<()> {
        self.open.insert(*id, tree.clone());
        Ok(())
    }
    fn entry(&mut self, _at: walk::Place, node: &Node) -> Result<walk::Step> {
        if let NodeKind::File { size, chunks } = &node.kind {
            let key = (self.content, chunks.clone());
            if !self.done.files.contains_key(&key) && self.seen_files.insert(key.1) {
                self.plan.files.push((chunks.clone(), *size));
            }
        }
        Ok(walk::Step::Descend)
    }
    fn tree_done(&mut self, id: &Id, _at: walk::Place) -> Result<()> {
        let tree = self
            .open
            .remove(id)
            .ok_or_else(|| Error::Invalid(format!("copy: tree {id} was not read")))?;
        self.plan.trees.push((*id, tree));
        Ok(())
    }
}

/// What rewriting one snapshot did.
pub struct Outcome {
    /// The snapshot's id in the target.
    pub id: Id,
    pub blobs_copied: u64,
    pub blobs_present: u64,
    pub bytes_stored: u64,
}

/// Rewrites snapshot `id` of `src` into `dst`; `parent` is the target's id of the snapshot's parent, if the
/// target holds it.
pub fn snapshot(
    src: &Repository,
    dst: &Repository,
    id: &Id,
    snap: &Snapshot,
    parent: Option<Id>,
    done: &mut Rewritten,
    pool: &rayon::ThreadPool,
) -> Result<Outcome> {
    let roots = [
        (snap.tree, Content::Files),
        (snap.stream_tree, Content::Streams),
    ];
    let mut plans = Vec::new();
    for (root, content) in roots {
        if let Some(root) = root {
            plans.push((root, content, gather(src, root, content, done)?));
        }
    }
    let saves = AtomicU64::new(0);
    let (copied, stored) = PackWriter::scope(dst, |w| {
        let rw = Writer {
            src,
            dst,
            w,
            saves: &saves,
        };
        for (_, content, plan) in &plans {
            let files = Mutex::new(HashMap::new());
            pool.install(|| {
                plan.files.par_iter().try_for_each(|(chunks, size)| {
                    let new = rw.content(chunks, *size, *content)?;
                    files
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert((*content, chunks.clone()), new);
                    Ok::<(), Error>(())
                })
            })?;
            done.files
                .extend(files.into_inner().unwrap_or_else(|p| p.into_inner()));
            // Children before parents: a tree is saved only after everything it names (section 10, rule 3).
            for (old, tree) in &plan.trees {
                let new = rw.tree(tree, *content, done)?;
                done.trees.insert(*old, new);
            }
        }
        w.flush()?;
        Ok((
            w.stats.blobs_new.load(Ordering::Relaxed),
            w.stats.bytes_stored.load(Ordering::Relaxed),
        ))
    })?;
    let mut new = snap.clone();
    new.tree = mapped(snap.tree, done)?;
    new.stream_tree = mapped(snap.stream_tree, done)?;
    new.parent = parent.map(|p| p.to_hex());
    set_original(&mut new.metadata, &super::origin(id, snap));
    let new_id = dst.save_snapshot(&new)?;
    Ok(Outcome {
        id: new_id,
        blobs_copied: copied,
        blobs_present: saves.load(Ordering::Relaxed).saturating_sub(copied),
        bytes_stored: stored,
    })
}

/// The target's id of a rewritten root.
fn mapped(root: Option<Id>, done: &Rewritten) -> Result<Option<Id>> {
    root.map(|r| {
        done.trees
            .get(&r)
            .copied()
            .ok_or_else(|| Error::Invalid(format!("copy: tree {r} was not rewritten")))
    })
    .transpose()
}

/// Records in the metadata the id the snapshot was first taken under (a non-object value is kept under
/// `previous`, as backups do).
fn set_original(metadata: &mut Option<serde_json::Value>, original: &Id) {
    crate::backup::set_metadata(
        metadata,
        "original",
        serde_json::Value::String(original.to_hex()),
    );
}

/// Walks the source tree `root`, reading and verifying every tree not rewritten yet.
fn gather(src: &Repository, root: Id, content: Content, done: &Rewritten) -> Result<Plan> {
    let mut plan = Plan::default();
    let source = walk::FnSource(|id: &Id| src.read_tree(id));
    let mut visitor = Gather {
        content,
        done,
        plan: &mut plan,
        seen_trees: HashSet::new(),
        seen_files: HashSet::new(),
        open: HashMap::new(),
    };
    walk::walk(&source, &root, &mut visitor)?;
    Ok(plan)
}

/// The target side of a rewrite.
struct Writer<'a, 'r> {
    src: &'a Repository,
    dst: &'a Repository,
    w: &'a PackWriter<'r>,
    /// Blobs handed to the writer (new or not).
    saves: &'a AtomicU64,
}

impl Writer<'_, '_> {
    /// The target's chunker parameters and zstd level for `content`.
    fn settings(&self, content: Content) -> (ChunkerParams, i32) {
        let c = self.dst.config();
        match content {
            Content::Files => (c.chunker_files, c.compression_level),
            Content::Streams => (c.chunker_streams, c.stream_level()),
        }
    }

    /// Re-chunks the content made of the source's `chunks` (`size` bytes in all) into the target; returns the
    /// target's chunk list.
    fn content(&self, chunks: &[Id], size: u64, content: Content) -> Result<Vec<Id>> {
        let (params, level) = self.settings(content);
        let failure = RefCell::new(None);
        let mut reader = ChunkReader::with_size_hint(
            Blobs {
                src: self.src,
                chunks,
                next: 0,
                buf: Vec::new(),
                pos: 0,
                failure: &failure,
            },
            params,
            size,
        );
        let mut out = Vec::new();
        let mut total = 0u64;
        loop {
            crate::interrupt::check()?;
            let batch = match reader.next_batch() {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(e) => {
                    return Err(failure
                        .borrow_mut()
                        .take()
                        .unwrap_or_else(|| Error::io("copy source", e)))
                }
            };
            total += batch.cuts.iter().map(|c| c.1 as u64).sum::<u64>();
            let ids: Vec<Id> = batch
                .cuts
                .par_iter()
                .map(|&(off, len)| {
                    let data = &batch.data[off..off + len];
                    let id = self.dst.crypto().blob_id(data);
                    self.saves.fetch_add(1, Ordering::Relaxed);
                    self.w.save_at_level(BlobKind::Data, id, data, level)?;
                    Ok(id)
                })
                .collect::<Result<_>>()?;
            out.extend(ids);
        }
        if total != size {
            return Err(Error::corrupt(
                "copy source",
                format!("a file's chunks hold {total} bytes where its tree says {size}"),
            ));
        }
        Ok(out)
    }

    /// Saves `tree` with the target's chunk lists and subtree ids; returns its id in the target.
    fn tree(&self, tree: &Tree, content: Content, done: &Rewritten) -> Result<Id> {
        let nodes = tree
            .nodes
            .iter()
            .map(|n| {
                let kind = match &n.kind {
                    NodeKind::File { size, chunks } => NodeKind::File {
                        size: *size,
                        chunks: done
                            .files
                            .get(&(content, chunks.clone()))
                            .cloned()
                            .ok_or_else(|| {
                                Error::Invalid("copy: a file's content was not rewritten".into())
                            })?,
                    },
                    NodeKind::Dir { subtree } => NodeKind::Dir {
                        subtree: done.trees.get(subtree).copied().ok_or_else(|| {
                            Error::Invalid(format!("copy: tree {subtree} was not rewritten"))
                        })?,
                    },
                    other => other.clone(),
                };
                Ok(Node {
                    name: n.name.clone(),
                    kind,
                    meta: n.meta.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (bytes, _) = Tree::new(nodes)?.encode()?;
        let id = self.dst.crypto().blob_id(&bytes);
        self.saves.fetch_add(1, Ordering::Relaxed);
        self.w.save_at_level(
            BlobKind::Tree,
            id,
            &bytes,
            self.dst.config().compression_level,
        )?;
        Ok(id)
    }
}

/// The content of a source file as one byte stream, read blob by blob (each decrypted and verified by the
/// source's read path). A repository error is kept in `failure` (the chunker sees only an I/O error).
struct Blobs<'a> {
    src: &'a Repository,
    chunks: &'a [Id],
    next: usize,
    buf: Vec<u8>,
    pos: usize,
    failure: &'a RefCell<Option<Error>>,
}

impl Read for Blobs<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some(id) = self.chunks.get(self.next) else {
                return Ok(0);
            };
            self.next += 1;
            self.pos = 0;
            self.buf = match self.src.read_blob(id) {
                Ok(b) => b,
                Err(e) => {
                    let msg = e.to_string();
                    *self.failure.borrow_mut() = Some(e);
                    return Err(std::io::Error::other(msg));
                }
            };
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
