//! Chunking a sparse file without reading its holes.
//!
//! A hole reads as zeros, and FastCDC decides each cut from the bytes after the previous cut only (at most
//! `max_size` of them). So a chunk that starts at least `max_size` bytes before the end of a hole is always
//! the same chunk: [`zero_chunk_len`] zeros. Where such a chunk starts, the hole's chunks are counted, not
//! read, hashed or looked up; everything else is chunked from the bytes read, in windows that reach at most
//! two maximal chunks into the next hole. The cuts are exactly those of reading the whole file (the tests
//! compare them), so a sparse file deduplicates against its dense copy and restores to the same bytes.
//!
//! Without this a 10 TiB file made by `truncate` (free for anyone who can write below a backed-up path) kept
//! a backup reading zeros for hours: 20 GiB of hole took 51 s.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use crate::chunking::{cut_points, Batch};
use crate::config::ChunkerParams;

/// What the next part of a file holds.
pub enum Segment {
    /// Chunks cut from bytes read.
    Data(Batch),
    /// `count` chunks of [`zero_chunk_len`] zeros, inside a hole.
    Zeros { count: u64 },
}

/// Length of the chunk cut from a run of zeros longer than `max_size`.
pub fn zero_chunk_len(p: ChunkerParams) -> usize {
    let zeros = vec![0u8; 2 * p.max_size as usize + 1];
    let first = cut_points(&zeros, p).next();
    first.map_or(zeros.len(), |(_, len)| len)
}

/// Whether the file has fewer blocks than its length needs: only then is it worth looking for holes.
pub fn may_have_holes(md: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    md.blocks().saturating_mul(512) < md.len()
}

/// Cuts a file of `len` bytes into segments, skipping holes (see the module docs).
pub struct HoleChunker<'f> {
    file: &'f File,
    params: ChunkerParams,
    len: u64,
    zero_len: u64,
    /// File offset of the next chunk.
    pos: u64,
}

/// Largest window of bytes read at once.
const WINDOW: u64 = 8 << 20;

impl<'f> HoleChunker<'f> {
    pub fn new(file: &'f File, len: u64, params: ChunkerParams) -> HoleChunker<'f> {
        HoleChunker {
            file,
            params,
            len,
            zero_len: zero_chunk_len(params) as u64,
            pos: 0,
        }
    }

    /// Length of each chunk of a [`Segment::Zeros`].
    pub fn zero_len(&self) -> u64 {
        self.zero_len
    }

    /// The next segment, or `None` at the end. A file that ends early (truncated while read) ends there.
    pub fn next_segment(&mut self) -> std::io::Result<Option<Segment>> {
        if self.pos >= self.len {
            return Ok(None);
        }
        let max = self.params.max_size as u64;
        let data_at = self
            .seek(libc::SEEK_DATA)?
            .unwrap_or(self.len)
            .min(self.len);
        if data_at > self.pos && data_at - self.pos >= max {
            // Every chunk starting at least `max` before the hole's end is the zero chunk.
            let count = (data_at - self.pos - max) / self.zero_len + 1;
            self.pos += count * self.zero_len;
            return Ok(Some(Segment::Zeros { count }));
        }
        let hole_at = self
            .seek(libc::SEEK_HOLE)?
            .unwrap_or(self.len)
            .max(self.pos);
        let end = (self.pos + WINDOW)
            .max(self.pos + 2 * max + 1)
            .min(hole_at.saturating_add(2 * max + 1))
            .min(self.len);
        let want = end - self.pos;
        let mut data = vec![0u8; want as usize];
        let got = read_full_at(self.file, &mut data, self.pos)?;
        if got == 0 {
            self.len = self.pos; // truncated under us: the file ends here
            return Ok(None);
        }
        data.truncate(got);
        let short = (got as u64) < want;
        let mut cuts: Vec<(usize, usize)> = cut_points(&data, self.params).collect();
        if !short && end < self.len {
            // The last cut depends on bytes beyond the window; a window holds at least two maximal chunks
            // (unless the file ends in it), so one cut at least is final.
            cuts.pop();
        }
        let taken: usize = cuts.iter().map(|c| c.1).sum();
        self.pos += taken as u64;
        if short {
            self.len = self.pos;
        }
        data.truncate(taken);
        Ok(Some(Segment::Data(Batch { data, cuts })))
    }

    /// `lseek(pos, whence)`; `None` when there is no data (or hole) at or after `pos` (`ENXIO`).
    fn seek(&self, whence: libc::c_int) -> std::io::Result<Option<u64>> {
        let off = libc::off_t::try_from(self.pos).map_err(std::io::Error::other)?;
        // SAFETY: lseek on a descriptor that `self.file` keeps open; it moves the file offset only, which
        // nothing here uses (every read is positional).
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), off, whence) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENXIO) => Ok(None),
                // A file system without SEEK_DATA/SEEK_HOLE: all data.
                Some(libc::EINVAL) if whence == libc::SEEK_DATA => Ok(Some(self.pos)),
                Some(libc::EINVAL) => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(r as u64))
    }
}

/// Reads until `buf` is full or the file ends; the number of bytes read.
fn read_full_at(file: &File, buf: &mut [u8], mut off: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                off += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::chunking::tests::pseudo_random;

    /// Seeded, as in an encrypted repository.
    const SMALL: ChunkerParams = ChunkerParams {
        seed: 7,
        ..crate::chunking::tests::SMALL
    };

    /// A sparse file of `len` bytes holding `extents` (offset, length) of noise; the rest are holes.
    fn sparse_file(dir: &std::path::Path, len: u64, extents: &[(u64, usize)]) -> File {
        let path = dir.join("f");
        let f = File::create(&path).unwrap();
        for (i, &(off, n)) in extents.iter().enumerate() {
            f.write_all_at(&pseudo_random(n, 2 * i as u64 + 1), off)
                .unwrap();
        }
        f.set_len(len).unwrap();
        File::open(&path).unwrap()
    }

    /// `(length of each chunk)` as the hole chunker cuts the file, holes expanded.
    fn hole_cuts(f: &File, len: u64) -> (Vec<usize>, u64) {
        let mut c = HoleChunker::new(f, len, SMALL);
        let (mut out, mut zero_chunks) = (Vec::new(), 0);
        while let Some(s) = c.next_segment().unwrap() {
            match s {
                Segment::Data(b) => out.extend(b.cuts.iter().map(|c| c.1)),
                Segment::Zeros { count } => {
                    zero_chunks += count;
                    out.extend(std::iter::repeat_n(c.zero_len() as usize, count as usize));
                }
            }
        }
        (out, zero_chunks)
    }

    fn read_cuts(f: &File, len: u64) -> Vec<usize> {
        let mut all = vec![0u8; len as usize];
        f.read_exact_at(&mut all, 0).unwrap();
        cut_points(&all, SMALL).map(|c| c.1).collect()
    }

    #[test]
    fn holes_are_cut_exactly_as_reading_them_would() {
        let dir = tempfile::tempdir().unwrap();
        let layouts: Vec<(u64, Vec<(u64, usize)>)> = vec![
            (1 << 20, vec![]),
            (1 << 20, vec![(0, 10_000)]),
            (1 << 20, vec![(300_000, 5_000), (700_000, 70_000)]),
            (
                3 << 20,
                vec![(4096, 1), (1 << 20, 4096 * 3), ((3 << 20) - 100, 100)],
            ),
            (2 << 20, vec![(0, 1 << 20), ((1 << 20) + 8192, 20_000)]),
            (40_000, vec![(8192, 100)]),
        ];
        for (len, extents) in layouts {
            let f = sparse_file(dir.path(), len, &extents);
            let (cuts, _) = hole_cuts(&f, len);
            assert_eq!(cuts, read_cuts(&f, len), "file of {len} with {extents:?}");
        }
    }

    #[test]
    fn a_large_hole_is_counted_without_being_read() {
        let dir = tempfile::tempdir().unwrap();
        let len = 64 << 30;
        let f = sparse_file(dir.path(), len, &[(1 << 30, 50_000)]);
        let started = std::time::Instant::now();
        let (cuts, zero_chunks) = hole_cuts(&f, len);
        assert_eq!(cuts.iter().map(|&c| c as u64).sum::<u64>(), len);
        // Where the file system keeps holes (ext4, xfs, btrfs, tmpfs), nearly every chunk is counted.
        if may_have_holes(&f.metadata().unwrap()) {
            assert!(
                zero_chunks as usize > cuts.len() - 100,
                "{zero_chunks} of {}",
                cuts.len()
            );
            assert!(started.elapsed().as_secs() < 30, "{:?}", started.elapsed());
        }
    }

    #[test]
    fn a_file_shorter_than_its_length_ends_where_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let f = sparse_file(dir.path(), 100_000, &[(0, 100_000)]);
        // As if truncated to 100,000 bytes after its length was taken as 1 MiB.
        let (cuts, _) = hole_cuts(&f, 1 << 20);
        assert_eq!(cuts, read_cuts(&f, 100_000));
    }
}
