//! `check --read-data`: the selected packs read front to back, in pieces (memory does not grow with a
//! pack's size), every blob decompressed and re-hashed, in parallel; the pack's own hash compared with its
//! name on the way.

use std::collections::HashSet;

use rayon::prelude::*;

use super::{CheckReport, Damage, ReadData};
use crate::backend::ObjectKind;
use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::pack;
use crate::progress::Progress;
use crate::repo::Repository;

fn selected(id: &Id, read_data: ReadData) -> bool {
    match read_data {
        ReadData::None => false,
        ReadData::All => true,
        ReadData::Slice { n, m } => {
            let v = u32::from_le_bytes([id.0[0], id.0[1], id.0[2], id.0[3]]);
            v % m == n - 1
        }
        ReadData::Percent(p) => {
            let roll = Id::of(crate::config::random_hex(8).as_bytes());
            let v = u32::from_le_bytes([roll.0[0], roll.0[1], roll.0[2], roll.0[3]]) as f64;
            v / (u32::MAX as f64 + 1.0) * 100.0 < p
        }
    }
}

/// What reading one pack found.
enum PackVerdict {
    /// The pack was read: how many blobs were verified, the ones that failed with why, and whether the pack's
    /// bytes no longer match its id.
    Read {
        blobs: u64,
        bad: Vec<(Id, String)>,
        mismatch: bool,
    },
    /// The pack could not be read for a reason that is not damage.
    Unreadable(Error),
}

/// Reads the selected packs and verifies every blob; returns the packs read.
pub(super) fn read_packs(
    repo: &Repository,
    read_data: ReadData,
    progress: &Progress,
    r: &mut CheckReport,
    damaged: &mut Damage,
) -> Result<HashSet<Id>> {
    let packs: Vec<_> = repo
        .index()
        .packs()?
        .into_iter()
        .filter(|p| selected(&p.id, read_data))
        .collect();
    progress.set_total(packs.iter().map(|p| p.size).sum());
    let results: Vec<(Id, PackVerdict)> = packs
        .par_iter()
        .map(|p| {
            let mut expected = repo.index().blobs_in_pack(&p.id)?;
            expected.sort_by_key(|e| e.offset);
            // A pack found damaged is read a second time, and the second reading is the verdict: one
            // transfer can bring bytes that differ from what the server holds (see
            // `crate::backend::read_again_if_damaged`). Not counted in the progress twice.
            let verdict = match read_pack(repo, p, &expected, progress) {
                PackVerdict::Read { bad, mismatch, .. } if mismatch || !bad.is_empty() => {
                    read_pack(repo, p, &expected, &Progress::hidden())
                }
                verdict => verdict,
            };
            Ok((p.id, verdict))
        })
        .collect::<Result<_>>()?;
    let superseded = repo.index().packs_with_superseded_damage()?;
    let mut read = HashSet::new();
    for (pack, verdict) in results {
        let (blobs, bad, mismatch) = match verdict {
            PackVerdict::Unreadable(e) => {
                r.read_errors
                    .push(format!("pack {pack} cannot be read: {e}"));
                continue;
            }
            PackVerdict::Read {
                blobs,
                bad,
                mismatch,
            } => (blobs, bad, mismatch),
        };
        read.insert(pack);
        r.packs_read += 1;
        r.blobs_read += blobs;
        if mismatch && bad.is_empty() && superseded.contains(&pack) {
            // Every blob the index still takes from it verifies: the changed bytes are the damaged copies
            // that good ones replaced.
            r.warnings.push(format!(
                "pack {pack} content does not match its id: it still holds damaged copies that good copies replaced (`cairn prune` removes it)"
            ));
        } else if mismatch {
            r.errors
                .push(format!("pack {pack} content does not match its id"));
        }
        for (blob, err) in bad {
            damaged.insert(blob, (pack, err));
        }
    }
    Ok(read)
}

/// Reads the pack `p` front to back and verifies its blobs `expected` (sorted by offset).
fn read_pack(
    repo: &Repository,
    p: &crate::index::PackRow,
    expected: &[pack::BlobEntry],
    progress: &Progress,
) -> PackVerdict {
    let reader = match repo.backend().open_reader(ObjectKind::Pack, &p.id.to_hex()) {
        Ok(r) => r,
        Err(e) if !e.is_damage() => return PackVerdict::Unreadable(e),
        Err(e) => return PackVerdict::lost(expected, &e),
    };
    let mut bad = Vec::new();
    let scanned = scan_pack(&*reader, p.size, expected, progress, &mut |e, stored| {
        let loc = crate::index::Location {
            pack: p.id,
            entry: *e,
        };
        if let Err(err) = stored.and_then(|stored| repo.decode_stored(&loc, stored)) {
            bad.push((e.id, err.to_string()));
        }
    });
    match scanned {
        // The pack's content no longer matching its name says some bytes changed; the blobs say which.
        Ok(hash) => PackVerdict::Read {
            blobs: expected.len() as u64,
            bad,
            mismatch: hash != p.id,
        },
        Err(e) if !e.is_damage() => PackVerdict::Unreadable(e),
        // Shorter than indexed: the blobs past the end were handed the error; the pack is not what its
        // name says.
        Err(_) => PackVerdict::Read {
            blobs: expected.len() as u64,
            bad,
            mismatch: true,
        },
    }
}

/// Bytes of a pack read at once by [`scan_pack`]: a default pack (16 MiB and its last blob) in one read.
const SCAN_PIECE: u64 = 24 << 20;

/// Reads the pack of `size` bytes from `reader` front to back in pieces, hashing all of it, and hands each
/// of `blobs` (sorted by offset) its stored bytes, or the error that it lies past the end; returns the
/// pack's hash. When a read fails, the blobs not handed yet get the error if it is damage (the pack ends
/// early), and the error is returned. Holds one piece and the blob being cut out of it, never the whole pack: the size of a pack
/// is whatever its writer made it (a sparse file of many GiB costs a hostile one nothing), and the
/// largest blob a trailer may declare is bounded ([`pack::MAX_STORED_LEN`]).
fn scan_pack(
    reader: &dyn crate::backend::RangeReader,
    size: u64,
    blobs: &[pack::BlobEntry],
    progress: &Progress,
    on_blob: &mut dyn FnMut(&pack::BlobEntry, Result<&[u8]>),
) -> Result<Id> {
    let mut hasher = blake3::Hasher::new();
    // The bytes of the pack from `start` to `read`.
    let mut buf: Vec<u8> = Vec::new();
    let (mut start, mut read) = (0u64, 0u64);
    let mut next = 0;
    loop {
        while let Some(e) = blobs.get(next) {
            let end = e.offset.saturating_add(e.stored_len as u64);
            if end > size || e.offset < start {
                on_blob(e, Err(Error::corrupt("pack", "blob beyond end of file")));
            } else if end <= read {
                let at = (e.offset - start) as usize;
                on_blob(e, Ok(&buf[at..at + e.stored_len as usize]));
            } else {
                break;
            }
            next += 1;
        }
        if read >= size {
            return Ok(Id(*hasher.finalize().as_bytes()));
        }
        // Keep only what the next blob needs.
        let keep = blobs.get(next).map_or(read, |e| e.offset.min(read));
        buf.drain(..(keep - start) as usize);
        start = keep;
        let piece = match reader.read_at(read, SCAN_PIECE.min(size - read)) {
            Ok(piece) => piece,
            Err(err) => {
                if err.is_damage() {
                    for e in &blobs[next..] {
                        on_blob(
                            e,
                            Err(Error::corrupt("pack", format!("cannot be read: {err}"))),
                        );
                    }
                }
                return Err(err);
            }
        };
        progress.bytes(piece.len() as u64);
        hasher.update(&piece);
        buf.extend_from_slice(&piece);
        read += piece.len() as u64;
    }
}

impl PackVerdict {
    /// The pack (or the part of it the blobs need) is gone: every blob is damaged, with why.
    fn lost(expected: &[pack::BlobEntry], e: &Error) -> PackVerdict {
        PackVerdict::Read {
            blobs: 0,
            bad: expected.iter().map(|b| (b.id, e.to_string())).collect(),
            mismatch: false,
        }
    }
}
