//! Reading many blobs at once (restore, dump): never a request per blob.
//!
//! The blobs asked for are grouped by pack, sorted by offset and merged into *runs*: one ranged read covers
//! several blobs and the gaps between them, as long as a gap is smaller than the backend's
//! [`ReadPlan::gap`] and the run stays within [`ReadPlan::max_run`]. Runs are read in parallel (at most
//! [`ReadPlan::parallel`] at once); each blob is sliced out of its run, decompressed and verified against
//! its id.
//!
//! Each pack is opened once per call ([`crate::backend::Backend::open_reader`]) and all its runs are read
//! through that reader.
//!
//! The bases of the delta blobs asked for (format-spec section 5.1) are read first, the same way, in one
//! batch ([`Fetcher::read_bases`]): a stream's deltas have their bases in the parent's packs, in the
//! parent's order, so a window of deltas has its bases in a few merged runs instead of a ranged read (and an
//! open of another pack) per delta. A base that cannot be read ahead is resolved by the delta on its own
//! ([`crate::delta::decode`]), which reports the error as the single read path does.
//!
//! Invariants: every blob asked for is reported exactly once, with its verified bytes or its error. A run
//! that cannot be read whole (a truncated or missing pack, an outage) is read again blob by blob, so an error
//! concerns exactly the blob it is reported for and a blob readable on its own is never reported damaged.
//! The caller decides what an error means (restore records damage, names the file).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use rayon::prelude::*;

use crate::backend::{ObjectKind, RangeReader, ReadPlan};
use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::index::Location;
use crate::pack::BlobKind;
use crate::repo::Repository;

/// One ranged read of a pack: `start..end` covers the blobs `blobs` (indices into the caller's list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub pack: Id,
    pub start: u64,
    pub end: u64,
    pub blobs: Vec<usize>,
}

/// Groups `locs` into runs under `plan`. Each index of `locs` lands in exactly one run; `locs` should not
/// hold the same blob twice (it would be read twice).
pub fn plan_runs(locs: &[Location], plan: ReadPlan) -> Vec<Run> {
    let mut order: Vec<usize> = (0..locs.len()).collect();
    order.sort_by_key(|&i| (locs[i].pack, locs[i].entry.offset));
    let mut runs: Vec<Run> = Vec::new();
    for i in order {
        let loc = &locs[i];
        let (start, end) = (
            loc.entry.offset,
            loc.entry.offset + u64::from(loc.entry.stored_len),
        );
        match runs.last_mut() {
            Some(r)
                if r.pack == loc.pack
                    && start >= r.end
                    && start - r.end <= plan.gap
                    && end - r.start <= plan.max_run =>
            {
                r.end = end;
                r.blobs.push(i);
            }
            _ => runs.push(Run {
                pack: loc.pack,
                start,
                end,
                blobs: vec![i],
            }),
        }
    }
    runs
}

/// Raw bytes of the bases of a batch of delta blobs, by id (checked against their ids or not: see
/// [`Fetcher::read_bases`]).
pub type Bases = HashMap<Id, Vec<u8>>;

/// Reads blobs with merged, parallel ranged reads (see the module docs).
pub struct Fetcher<'r> {
    repo: &'r Repository,
    plan: ReadPlan,
    /// A pool of `plan.parallel` threads when that differs from the global pool (an object store wants more
    /// requests in flight than there are cores).
    pool: Option<rayon::ThreadPool>,
}

impl<'r> Fetcher<'r> {
    pub fn new(repo: &'r Repository) -> Result<Fetcher<'r>> {
        let plan = repo.backend().read_plan();
        let parallel = plan.parallel.max(1);
        let pool = if parallel == rayon::current_num_threads() {
            None
        } else {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(parallel)
                .thread_name(|i| format!("cairn-fetch-{i}"))
                .build()
                .map_err(|e| Error::Invalid(format!("cannot start reader threads: {e}")))?;
            Some(pool)
        };
        Ok(Fetcher { repo, plan, pool })
    }

    /// Reads every blob of `locs` and hands each to `on_blob(index, bytes or error)`, from any thread, in
    /// no particular order, exactly once.
    pub fn fetch(&self, locs: &[Location], on_blob: &(dyn Fn(usize, Result<Vec<u8>>) + Sync)) {
        let bases = self.read_bases(
            locs.iter().filter_map(|l| match l.entry.kind {
                BlobKind::DeltaData => l.entry.base,
                _ => None,
            }),
            false,
        );
        self.fetch_with(locs, &bases, true, on_blob);
    }

    /// The raw bytes of every blob of `ids` that can be read (duplicates read once), in merged runs. Those
    /// that cannot are left out: whoever needs one reads it alone and reports the error.
    ///
    /// With `verified` false a plain blob's bytes are not checked against its id (only its length): for
    /// bases of deltas being read, whose own decoded bytes are checked against their ids, so a wrong base
    /// can only make a delta fail, never pass, and the failing delta is then read again on its own
    /// ([`crate::delta::decode_with_base`]). A writer's bases must be `verified`: a delta made against
    /// wrong bytes would verify against them and be stored undecodable.
    pub fn read_bases(&self, ids: impl Iterator<Item = Id>, verified: bool) -> Bases {
        let ids: Vec<Id> = ids.collect::<HashSet<Id>>().into_iter().collect();
        if ids.is_empty() {
            return Bases::new();
        }
        let locs: Vec<Location> = ids
            .par_iter()
            .filter_map(|id| self.repo.with_reader(|r| r.lookup(id)).ok().flatten())
            .collect();
        let got = Mutex::new(Bases::with_capacity(locs.len()));
        // Bases are plain chunks (cairn writes chains of depth 1); one that is a delta itself is resolved
        // through the single read path by `decode_stored`.
        self.fetch_with(&locs, &Bases::new(), verified, &|i, r| {
            if let Ok(raw) = r {
                got.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(locs[i].entry.id, raw);
            }
        });
        got.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    /// [`fetch`](Self::fetch) with the bases of the deltas among `locs` already read (those in `bases`);
    /// plain blobs checked against their ids unless `verify` is false (see [`read_bases`](Self::read_bases)).
    fn fetch_with(
        &self,
        locs: &[Location],
        bases: &Bases,
        verify: bool,
        on_blob: &(dyn Fn(usize, Result<Vec<u8>>) + Sync),
    ) {
        let runs = plan_runs(locs, self.plan);
        // `plan_runs` keeps a pack's runs together: each pack is opened once, however many runs it has.
        let packs: Vec<&[Run]> = runs.chunk_by(|a, b| a.pack == b.pack).collect();
        let work = || {
            packs
                .par_iter()
                .for_each(|runs| self.read_pack(locs, bases, verify, runs, on_blob))
        };
        match &self.pool {
            Some(pool) => pool.install(work),
            None => work(),
        }
    }

    /// Reads the runs of one pack through one reader (one open file for a local repository).
    fn read_pack(
        &self,
        locs: &[Location],
        bases: &Bases,
        verify: bool,
        runs: &[Run],
        on_blob: &(dyn Fn(usize, Result<Vec<u8>>) + Sync),
    ) {
        let Some(pack) = runs.first().map(|r| r.pack) else {
            return;
        };
        match self
            .repo
            .backend()
            .open_reader(ObjectKind::Pack, &pack.to_hex())
        {
            Ok(reader) => runs
                .par_iter()
                .for_each(|run| self.read_run(&*reader, locs, bases, verify, run, on_blob)),
            // Say precisely which blobs cannot be read (a missing pack, a permission): each on its own.
            Err(_) => runs
                .par_iter()
                .flat_map(|run| run.blobs.par_iter())
                .for_each(|&i| on_blob(i, self.repo.read_located(&locs[i]))),
        }
    }

    fn read_run(
        &self,
        reader: &dyn RangeReader,
        locs: &[Location],
        bases: &Bases,
        verify: bool,
        run: &Run,
        on_blob: &(dyn Fn(usize, Result<Vec<u8>>) + Sync),
    ) {
        let got = reader.read_at(run.start, run.end - run.start);
        match got {
            Ok(bytes) => run.blobs.par_iter().for_each(|&i| {
                let loc = &locs[i];
                let at = (loc.entry.offset - run.start) as usize;
                let stored = bytes.get(at..at + loc.entry.stored_len as usize);
                on_blob(
                    i,
                    match stored {
                        Some(s) => self.decode(loc, s, bases, verify),
                        None => Err(Error::corrupt(
                            format!("pack {}", run.pack.short()),
                            "short ranged read",
                        )),
                    },
                );
            }),
            Err(e) if run.blobs.len() == 1 => on_blob(run.blobs[0], Err(e)),
            // Say precisely which blobs cannot be read: each on its own.
            Err(_) => run
                .blobs
                .par_iter()
                .for_each(|&i| on_blob(i, self.repo.read_located(&locs[i]))),
        }
    }

    /// Decodes one blob's stored bytes, a delta with its base from `bases` when that holds it.
    fn decode(
        &self,
        loc: &Location,
        stored: &[u8],
        bases: &Bases,
        verify: bool,
    ) -> Result<Vec<u8>> {
        if !verify && loc.entry.kind != BlobKind::DeltaData {
            return crate::delta::decode_unverified(self.repo, loc, stored);
        }
        match loc.entry.base.and_then(|b| bases.get(&b)) {
            Some(base) if loc.entry.kind == BlobKind::DeltaData => {
                crate::delta::decode_with_base(self.repo, loc, stored, base)
            }
            _ => self.repo.decode_stored(loc, stored),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::{BlobEntry, BlobKind, Compression};

    fn loc(pack: u8, offset: u64, len: u32) -> Location {
        Location {
            pack: Id::of(&[pack]),
            entry: BlobEntry {
                id: Id::of(&offset.to_le_bytes()),
                kind: BlobKind::Data,
                compression: Compression::None,
                offset,
                stored_len: len,
                raw_len: len,
                base: None,
            },
        }
    }

    #[test]
    fn runs_merge_small_gaps_within_a_pack_and_respect_the_size_bound() {
        let plan = ReadPlan {
            gap: 100,
            max_run: 1000,
            parallel: 1,
            batch_files: 1,
            batch_chunks: 1,
        };
        let locs = vec![
            loc(1, 400, 100), // gap 100 after 100..300: merged
            loc(1, 0, 100),
            loc(2, 0, 10),
            loc(1, 100, 200),
            loc(1, 600, 200),  // gap 100 after 400..500: merged, run 0..800
            loc(1, 901, 200),  // gap 101: new run
            loc(1, 1101, 950), // adjacent but the run would exceed 1000: new run
        ];
        let runs = plan_runs(&locs, plan);
        let spans: Vec<(u64, u64, Vec<usize>)> = runs
            .iter()
            .map(|r| (r.start, r.end, r.blobs.clone()))
            .collect();
        let p1 = Id::of(&[1]);
        let mut want = vec![
            (0, 800, vec![1, 3, 0, 4]),
            (901, 1101, vec![5]),
            (1101, 2051, vec![6]),
        ];
        let mut got_p1: Vec<_> = runs
            .iter()
            .zip(&spans)
            .filter(|(r, _)| r.pack == p1)
            .map(|(_, s)| s.clone())
            .collect();
        got_p1.sort();
        want.sort();
        assert_eq!(got_p1, want);
        let p2: Vec<_> = runs.iter().filter(|r| r.pack != p1).collect();
        assert_eq!(p2.len(), 1);
        assert_eq!(
            (p2[0].start, p2[0].end, p2[0].blobs.clone()),
            (0, 10, vec![2])
        );
        let mut all: Vec<usize> = runs.iter().flat_map(|r| r.blobs.clone()).collect();
        all.sort();
        assert_eq!(all, (0..locs.len()).collect::<Vec<_>>());
    }
}
