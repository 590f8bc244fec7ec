//! Streams and single files written out of a snapshot in order (`dump`, `export`, a stream restored into
//! PostgreSQL): windows of chunks looked up, read in merged runs and decoded in parallel while the window
//! before is written. Every chunk is verified against its id on the way ([`crate::fetch`]); damage met is
//! recorded ([`super::damage_found`]). Memory: two windows of at most [`WINDOW_BYTES`] each.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;

use super::files::{is_zeros, Zeros, ZEROS};
use super::{blob_failed, damage_found, find_node};
use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::index::Location;
use crate::repo::Repository;
use crate::snapshot::Snapshot;
use crate::tree::NodeKind;

/// Raw bytes decoded ahead of a stream's output at most (and chunks, for tiny ones): enough that both cores
/// stay busy on 8 KiB dump chunks, small enough that memory stays flat on 4 MiB ones.
const WINDOW_BYTES: u64 = 8 << 20;
const WINDOW_CHUNKS: usize = 2048;

/// Writes chunks in order: a window of them is read (in merged runs, see [`crate::fetch`]) and decoded in
/// parallel while the window before it is written out and the one after it is looked up in the index.
/// A chunk found to be all zeros is read once: its later references are written from zeros (see
/// [`Zeros`]) and take no room in a window, so a long run of them is a few windows, not one per 8 MiB.
pub fn write_chunks(repo: &Repository, chunks: &[Id], out: &mut dyn Write) -> Result<u64> {
    let fetcher = crate::fetch::Fetcher::new(repo)?;
    let mut zeros = Zeros::default();
    let mut written = 0u64;
    let mut window = next_window(repo, chunks, WINDOW_BYTES, &zeros)?;
    let mut rest = &chunks[window.len()..];
    let mut ready: Vec<Piece> = Vec::new();
    while !(window.is_empty() && ready.is_empty()) {
        let (mut decoded, mut wrote, mut next) =
            (Ok((Vec::new(), Vec::new())), Ok(()), Ok(Vec::new()));
        rayon::in_place_scope(|s| {
            s.spawn(|_| decoded = decode_window(repo, &fetcher, &window, &zeros));
            wrote = ready.iter().try_for_each(|p| p.write_to(out));
            next = next_window(repo, rest, WINDOW_BYTES, &zeros);
        });
        wrote.map_err(|e| Error::io("output", e))?;
        written += ready.iter().map(Piece::len).sum::<u64>();
        let (pieces, found) = decoded?;
        zeros.learn(found);
        ready = pieces;
        window = next?;
        rest = &rest[window.len()..];
    }
    Ok(written)
}

/// A chunk of a window: where it is, or that it is a chunk known to be zeros (of this length).
enum Slot {
    Blob(Location),
    Zeros(u32),
}

/// A chunk's bytes, ready to be written.
enum Piece {
    Data(Vec<u8>),
    Zeros(u32),
}

impl Piece {
    fn len(&self) -> u64 {
        match self {
            Piece::Data(d) => d.len() as u64,
            Piece::Zeros(n) => u64::from(*n),
        }
    }

    fn write_to(&self, out: &mut dyn Write) -> std::io::Result<()> {
        match self {
            Piece::Data(d) => out.write_all(d),
            Piece::Zeros(n) => {
                let mut left = *n as usize;
                while left > 0 {
                    let k = left.min(ZEROS.len());
                    out.write_all(&ZEROS[..k])?;
                    left -= k;
                }
                Ok(())
            }
        }
    }
}

/// The next chunks: up to `max_bytes` of raw data to decode or [`WINDOW_CHUNKS`] chunks. Chunks known to be
/// zeros are not looked up and count no bytes: nothing is decoded for them.
fn next_window(
    repo: &Repository,
    chunks: &[Id],
    max_bytes: u64,
    zeros: &Zeros,
) -> Result<Vec<Slot>> {
    let mut window = Vec::new();
    let mut bytes = 0u64;
    for id in chunks {
        if window.len() == WINDOW_CHUNKS || bytes >= max_bytes {
            break;
        }
        if let Some(len) = zeros.len(id) {
            window.push(Slot::Zeros(len));
            continue;
        }
        let loc = repo
            .locate(id)
            .map_err(|e| damage_found(repo, id, None, e))?;
        bytes += u64::from(loc.entry.raw_len);
        window.push(Slot::Blob(loc));
    }
    Ok(window)
}

/// A window's chunks in order, and the blobs among them found to be zeros (with their lengths).
type Decoded = (Vec<Piece>, Vec<(Id, u32)>);

/// Reads and verifies a window's chunks (each distinct blob once, none known to be zeros), in the window's
/// order; also returns the blobs found to be all zeros.
fn decode_window(
    repo: &Repository,
    fetcher: &crate::fetch::Fetcher,
    window: &[Slot],
    zeros: &Zeros,
) -> Result<Decoded> {
    let mut seen: HashMap<Id, usize> = HashMap::new();
    let mut blobs: Vec<Location> = Vec::new();
    // For each chunk: the blob it is read from, or the zeros it is.
    let slots: Vec<std::result::Result<usize, u32>> = window
        .iter()
        .map(|slot| match slot {
            Slot::Zeros(len) => Err(*len),
            // Found to be zeros since the window was looked up.
            Slot::Blob(loc) => match zeros.len(&loc.entry.id) {
                Some(len) => Err(len),
                None => Ok(*seen.entry(loc.entry.id).or_insert_with(|| {
                    blobs.push(*loc);
                    blobs.len() - 1
                })),
            },
        })
        .collect();
    let got: Vec<std::sync::Mutex<Option<Result<Vec<u8>>>>> =
        blobs.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let lost = std::sync::Mutex::new(HashSet::new());
    fetcher.fetch(&blobs, &|i, r| {
        let r = r.map_err(|e| blob_failed(repo, &blobs[i], e, &lost));
        *got[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    });
    let mut got: Vec<Option<Result<Vec<u8>>>> = got
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect();
    let mut found = Vec::new();
    for (loc, data) in blobs.iter().zip(&got) {
        let len = loc.entry.raw_len;
        if let Some(Ok(d)) = data {
            if len > 0 && d.len() == len as usize && is_zeros(d) {
                found.push((loc.entry.id, len));
            }
        }
    }
    let mut uses = vec![0usize; blobs.len()];
    for &s in slots.iter().flatten() {
        uses[s] += 1;
    }
    let mut out = Vec::with_capacity(window.len());
    for slot in slots {
        let s = match slot {
            Ok(s) => s,
            Err(len) => {
                out.push(Piece::Zeros(len));
                continue;
            }
        };
        uses[s] -= 1;
        let data = match &got[s] {
            Some(Ok(d)) if uses[s] > 0 => d.clone(),
            _ => got[s]
                .take()
                .unwrap_or_else(|| Err(Error::corrupt("restore", "a blob was not read")))?,
        };
        out.push(Piece::Data(data));
    }
    Ok((out, found))
}

/// Writes a stream (by name) or a file (by path) of the snapshot to `out`; returns the bytes written.
pub fn dump(
    repo: &Repository,
    snap: &Snapshot,
    name: impl AsRef<Path>,
    out: &mut dyn Write,
) -> Result<u64> {
    let name = name.as_ref();
    let stream = match snap.stream_tree {
        Some(t) if snap.streams.iter().any(|s| Path::new(&s.name) == name) => {
            Some(find_node(repo, &t, name)?)
        }
        _ => None,
    };
    let node = match (stream, snap.tree) {
        (Some(n), _) => n,
        (None, Some(root)) => find_node(repo, &root, name)?,
        (None, None) => {
            return Err(Error::NotFound(format!(
                "{}: no such stream or file in the snapshot",
                name.display()
            )))
        }
    };
    let name = name.display();
    let NodeKind::File { chunks, .. } = &node.kind else {
        return Err(Error::Invalid(format!("{name}: not a file or stream")));
    };
    let n = write_chunks(repo, chunks, out)?;
    out.flush().map_err(|e| Error::io("output", e))?;
    Ok(n)
}

/// Writes a file node's chunks to `out` in order (verified, damage recorded); returns the bytes written.
/// For writers that stream a snapshot elsewhere (`export`).
pub fn write_file(repo: &Repository, chunks: &[Id], out: &mut dyn Write) -> Result<u64> {
    write_chunks(repo, chunks, out)
}
