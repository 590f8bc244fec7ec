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
//! before parents, the writer flushed before the snapshot object. The walk rewrites what it finds in
//! bounded batches, and what the run has rewritten is kept in [`IdMap`]s, so memory grows neither with a
//! snapshot's size nor with the number copied.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::chunking::ChunkReader;
use crate::config::ChunkerParams;
use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::marks::IdMap;
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
/// a failure ends the whole copy, so nothing here outlives a failed write). Both maps live in the target's
/// index connection once they grow ([`IdMap`]): a copy's memory does not grow with what it has copied.
pub struct Rewritten<'r> {
    /// Source tree id → target tree id.
    trees: IdMap<'r>,
    /// [`file_key`] of a source file content → the target's chunk list (ids concatenated).
    files: IdMap<'r>,
}

impl<'r> Rewritten<'r> {
    pub fn new(dst: &'r Repository) -> Result<Rewritten<'r>> {
        Ok(Rewritten {
            trees: IdMap::new(dst, "copy_rewritten_trees")?,
            files: IdMap::new(dst, "copy_rewritten_files")?,
        })
    }

    /// The target's id of source tree `id`.
    fn tree(&self, id: &Id) -> Result<Id> {
        self.trees
            .get(id)?
            .and_then(|b| Id::from_slice(&b))
            .ok_or_else(|| Error::Invalid(format!("copy: tree {id} was not rewritten")))
    }

    /// The target's chunk list of a source file content.
    fn file(&self, content: Content, chunks: &[Id]) -> Result<Vec<Id>> {
        let bytes = self
            .files
            .get(&file_key(content, chunks))?
            .ok_or_else(|| Error::Invalid("copy: a file's content was not rewritten".into()))?;
        bytes
            .chunks(32)
            .map(|c| Id::from_slice(c).ok_or_else(|| Error::Invalid("copy: a chunk list".into())))
            .collect()
    }
}

/// Names a source file content: its kind and chunk list (hashed, so a key is 32 bytes whatever the length).
fn file_key(content: Content, chunks: &[Id]) -> Id {
    let mut h = blake3::Hasher::new();
    h.update(&[content as u8]);
    for c in chunks {
        h.update(&c.0);
    }
    Id(*h.finalize().as_bytes())
}

/// Files and trees a walk holds before rewriting them, at most (file references, chunk references of those
/// files, tree nodes).
const PENDING_FILES: usize = 1024;
const PENDING_CHUNK_REFS: usize = 65_536;
const PENDING_NODES: usize = 65_536;

/// What the walk found to rewrite and has not yet: file contents, and trees after their children.
#[derive(Default)]
struct Plan {
    files: Vec<(Vec<Id>, u64)>,
    file_keys: HashSet<Id>,
    chunk_refs: usize,
    trees: Vec<(Id, Tree)>,
    tree_ids: HashSet<Id>,
    nodes: usize,
}

/// The walk of one root: gathers what is not rewritten yet into a bounded [`Plan`] and rewrites it whenever
/// the plan is full, and at the end.
struct Gather<'a, 'w, 'r> {
    content: Content,
    rw: &'a Writer<'a, 'w>,
    pool: &'a rayon::ThreadPool,
    done: &'a mut Rewritten<'r>,
    plan: Plan,
    /// Trees read but not yet done: those on the path from the root to where the walk is.
    open: HashMap<Id, Tree>,
}

impl Gather<'_, '_, '_> {
    fn is_full(&self) -> bool {
        self.plan.files.len() >= PENDING_FILES
            || self.plan.chunk_refs >= PENDING_CHUNK_REFS
            || self.plan.nodes >= PENDING_NODES
    }

    /// Rewrites the plan's file contents (in parallel), then its trees in their order: every tree after
    /// everything it names (format-spec section 10, rule 3), which the walk found before it.
    fn rewrite(&mut self) -> Result<()> {
        let Plan { files, trees, .. } = std::mem::take(&mut self.plan);
        let (rw, content) = (self.rw, self.content);
        let new: Vec<(Id, Vec<Id>)> = self.pool.install(|| {
            files
                .par_iter()
                .map(|(chunks, size)| {
                    Ok((
                        file_key(content, chunks),
                        rw.content(chunks, *size, content)?,
                    ))
                })
                .collect::<Result<_>>()
        })?;
        for (key, ids) in new {
            self.done
                .files
                .insert(key, ids.iter().flat_map(|i| i.0).collect())?;
        }
        for (old, tree) in &trees {
            let new = rw.tree(tree, content, self.done)?;
            self.done.trees.insert(*old, new.0.to_vec())?;
        }
        Ok(())
    }
}

impl walk::Visitor for Gather<'_, '_, '_> {
    fn before_tree(&mut self, id: &Id, _at: walk::Place) -> Result<walk::Step> {
        let new = !self.done.trees.contains(id)? && self.plan.tree_ids.insert(*id);
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
            let key = file_key(self.content, chunks);
            if !self.done.files.contains(&key)? && self.plan.file_keys.insert(key) {
                self.plan.chunk_refs += chunks.len();
                self.plan.files.push((chunks.clone(), *size));
                if self.is_full() {
                    self.rewrite()?;
                }
            }
        }
        Ok(walk::Step::Descend)
    }
    fn tree_done(&mut self, id: &Id, _at: walk::Place) -> Result<()> {
        let tree = self
            .open
            .remove(id)
            .ok_or_else(|| Error::Invalid(format!("copy: tree {id} was not read")))?;
        self.plan.nodes += tree.nodes.len();
        // Marked again: a batch rewritten inside this tree's walk cleared the mark its `before_tree` made.
        self.plan.tree_ids.insert(*id);
        self.plan.trees.push((*id, tree));
        if self.is_full() {
            self.rewrite()?;
        }
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
    let saves = AtomicU64::new(0);
    let (copied, stored) = PackWriter::scope(dst, |w| {
        let rw = Writer {
            src,
            dst,
            w,
            saves: &saves,
        };
        for (root, content) in roots {
            if let Some(root) = root {
                let mut gather = Gather {
                    content,
                    rw: &rw,
                    pool,
                    done: &mut *done,
                    plan: Plan::default(),
                    open: HashMap::new(),
                };
                walk::walk(
                    &walk::FnSource(|id: &Id| src.read_tree(id)),
                    &root,
                    &mut gather,
                )?;
                gather.rewrite()?;
            }
        }
        w.flush()?;
        Ok((
            w.stats.blobs_new.load(Ordering::Relaxed),
            w.stats.bytes_stored.load(Ordering::Relaxed),
        ))
    })?;
    let mut new = snap.clone();
    new.tree = snap.tree.map(|t| done.tree(&t)).transpose()?;
    new.stream_tree = snap.stream_tree.map(|t| done.tree(&t)).transpose()?;
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

/// Records in the metadata the id the snapshot was first taken under (a non-object value is kept under
/// `previous`, as backups do).
fn set_original(metadata: &mut Option<serde_json::Value>, original: &Id) {
    crate::backup::set_metadata(
        metadata,
        "original",
        serde_json::Value::String(original.to_hex()),
    );
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
                        chunks: done.file(content, chunks)?,
                    },
                    NodeKind::Dir { subtree } => NodeKind::Dir {
                        subtree: done.tree(subtree)?,
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
