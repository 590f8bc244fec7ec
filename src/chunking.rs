//! Content-defined chunking with FastCDC (the `fastcdc` crate's 2020 variant, normalisation level 1). The gear
//! table's seed is 0 for a plaintext repository and secret (derived from the master key) for an encrypted
//! one, so that chunk lengths do not fingerprint known files (format-spec/README.md, "Chunking").
//!
//! Invariant: the chunks of an input concatenate back to it, and every chunk but the last is within
//! `[min_size, max_size]` (the last may be shorter). Boundaries depend only on the content and the parameters,
//! which the repository config fixes at `init` (format-spec/README.md, "Chunking").

use std::io::Read;

use fastcdc::v2020::{FastCDC, Normalization, StreamCDC};

use crate::config::ChunkerParams;

/// Cut points of an in-memory (or memory-mapped) buffer, as `(offset, length)` pairs.
pub fn cut_points(data: &[u8], p: ChunkerParams) -> impl Iterator<Item = (usize, usize)> + '_ {
    FastCDC::with_level_and_seed(
        data,
        p.min_size as usize,
        p.avg_size as usize,
        p.max_size as usize,
        Normalization::Level1,
        p.seed,
    )
    .map(|c| (c.offset, c.length))
}

/// Chunks a byte stream one chunk at a time (the crate's streaming chunker; used to cross-check
/// [`ChunkReader`]).
pub fn stream_chunks<R: Read>(
    source: R,
    p: ChunkerParams,
) -> impl Iterator<Item = std::io::Result<Vec<u8>>> {
    StreamCDC::with_level_and_seed(
        source,
        p.min_size as usize,
        p.avg_size as usize,
        p.max_size as usize,
        Normalization::Level1,
        p.seed,
    )
    .map(|r| r.map(|c| c.data).map_err(std::io::Error::from))
}

/// A window of input and the chunks cut from it.
pub struct Batch {
    pub data: Vec<u8>,
    /// `(offset, length)` of each chunk within `data`, in order, covering a prefix of `data`.
    pub cuts: Vec<(usize, usize)>,
}

/// Chunks a reader a large window at a time, so the chunks of one window can be hashed and compressed in
/// parallel and the per-chunk buffer shuffling of a one-chunk-at-a-time chunker is avoided.
///
/// Files are read with plain reads, not memory-mapped: a file truncated by another process while mapped raises
/// SIGBUS, which would kill the backup instead of reporting one unreadable file.
///
/// Boundaries equal those of [`cut_points`] over the whole input: FastCDC decides each cut from the bytes after
/// the previous cut only, so every chunk of a window but the last is final; the last is carried over.
pub struct ChunkReader<R> {
    source: R,
    params: ChunkerParams,
    window: usize,
    carry: Vec<u8>,
    eof: bool,
}

impl<R: Read> ChunkReader<R> {
    pub fn new(source: R, params: ChunkerParams) -> ChunkReader<R> {
        Self::with_size_hint(source, params, u64::MAX)
    }

    /// A reader for an input of about `size_hint` bytes: a small file gets a buffer of its own size, not a
    /// full window.
    pub fn with_size_hint(source: R, params: ChunkerParams, size_hint: u64) -> ChunkReader<R> {
        let full = (8 * 1024 * 1024).max(2 * params.max_size as usize + 2);
        let window = usize::try_from(size_hint.saturating_add(1)).map_or(full, |h| h.min(full));
        ChunkReader {
            source,
            params,
            window,
            carry: Vec::new(),
            eof: false,
        }
    }

    /// The next window's chunks, or `None` at the end of the input.
    pub fn next_batch(&mut self) -> std::io::Result<Option<Batch>> {
        let mut data = std::mem::take(&mut self.carry);
        // Room for at least one maximal chunk beyond the carried bytes, so every window but the last yields
        // a final chunk even when the size hint was too small.
        let target = self
            .window
            .max(data.len() + self.params.max_size as usize + 1);
        if !self.eof {
            // Only the window is reserved, not the target: a small file costs a buffer of its own size, and
            // read_to_end grows it only if the file turns out larger than its hint. Nothing is zero-filled
            // first (a 4 MiB memset per file used to cost more than reading a small file).
            data.reserve(self.window.saturating_sub(data.len()));
            let want = (target - data.len()) as u64;
            let got = (&mut self.source).take(want).read_to_end(&mut data)?;
            self.eof = (got as u64) < want;
        }
        if data.is_empty() {
            return Ok(None);
        }
        let mut cuts: Vec<(usize, usize)> = cut_points(&data, self.params).collect();
        if !self.eof {
            if let Some((off, _)) = cuts.pop() {
                self.carry = data[off..].to_vec();
                data.truncate(off);
            }
        }
        Ok(Some(Batch { data, cuts }))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Small chunks, so that tests cut many of them (also used by `backup::holes`).
    pub(crate) const SMALL: ChunkerParams = ChunkerParams {
        min_size: 256,
        avg_size: 1024,
        max_size: 4096,
        seed: 0,
    };

    pub(crate) fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    proptest! {
        #[test]
        fn chunks_concatenate_and_respect_bounds(len in 0usize..50_000, seed in any::<u64>()) {
            let data = pseudo_random(len, seed);
            let cuts: Vec<_> = cut_points(&data, SMALL).collect();
            let mut joined = Vec::new();
            for (i, (off, n)) in cuts.iter().enumerate() {
                prop_assert_eq!(*off, joined.len());
                prop_assert!(*n <= SMALL.max_size as usize);
                if i + 1 < cuts.len() {
                    prop_assert!(*n >= SMALL.min_size as usize);
                }
                joined.extend_from_slice(&data[*off..off + n]);
            }
            prop_assert_eq!(&joined, &data);
        }

        #[test]
        fn chunk_reader_matches_whole_input_chunking(len in 0usize..200_000, seed in any::<u64>(), step in 1usize..5000) {
            let data = pseudo_random(len, seed);
            let whole: Vec<Vec<u8>> = cut_points(&data, SMALL).map(|(o, n)| data[o..o + n].to_vec()).collect();
            // A reader returning short reads of `step` bytes exercises every window boundary.
            struct Trickle<'a>(&'a [u8], usize);
            impl Read for Trickle<'_> {
                fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                    let n = self.1.min(buf.len()).min(self.0.len());
                    buf[..n].copy_from_slice(&self.0[..n]);
                    self.0 = &self.0[n..];
                    Ok(n)
                }
            }
            let mut reader = ChunkReader::new(Trickle(&data, step), SMALL);
            reader.window = 2 * SMALL.max_size as usize + 2 + step;
            let mut got = Vec::new();
            while let Some(b) = reader.next_batch().unwrap() {
                got.extend(b.cuts.iter().map(|(o, n)| b.data[*o..o + n].to_vec()));
            }
            prop_assert_eq!(got, whole);
        }

        #[test]
        fn a_wrong_size_hint_does_not_change_the_chunks(len in 0usize..100_000, seed in any::<u64>(), hint in 0u64..120_000) {
            // A file that grew or shrank between stat and read: its buffer is sized by the stale hint.
            let data = pseudo_random(len, seed);
            let whole: Vec<Vec<u8>> = cut_points(&data, SMALL).map(|(o, n)| data[o..o + n].to_vec()).collect();
            let mut reader = ChunkReader::with_size_hint(&data[..], SMALL, hint);
            let mut got = Vec::new();
            while let Some(b) = reader.next_batch().unwrap() {
                got.extend(b.cuts.iter().map(|(o, n)| b.data[*o..o + n].to_vec()));
            }
            prop_assert_eq!(got, whole);
        }

        #[test]
        fn stream_and_slice_chunkers_agree(len in 0usize..30_000, seed in any::<u64>()) {
            let data = pseudo_random(len, seed);
            let from_slice: Vec<Vec<u8>> = cut_points(&data, SMALL).map(|(o, n)| data[o..o + n].to_vec()).collect();
            let from_stream: Vec<Vec<u8>> = stream_chunks(&data[..], SMALL).map(|c| c.unwrap()).collect();
            prop_assert_eq!(from_slice, from_stream);
        }
    }

    #[test]
    fn an_insertion_only_disturbs_nearby_chunks() {
        let data = pseudo_random(200_000, 7);
        let mut edited = data.clone();
        edited.splice(100_000..100_000, b"inserted bytes".iter().copied());
        let ids = |d: &[u8]| -> std::collections::HashSet<Vec<u8>> {
            cut_points(d, SMALL)
                .map(|(o, n)| d[o..o + n].to_vec())
                .collect()
        };
        let (a, b) = (ids(&data), ids(&edited));
        let shared = a.intersection(&b).count();
        assert!(
            shared * 10 >= a.len() * 9,
            "only {shared} of {} chunks survived",
            a.len()
        );
    }
}
