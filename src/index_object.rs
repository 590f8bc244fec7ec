//! Index objects (format-spec/README.md, "Index objects"): the repository's own, immutable record of which
//! blobs each pack holds, so that an index cache can be built from a few objects instead of one trailer read
//! per pack, and brought up to date by reading only the objects it has not seen.
//!
//! Owns the encoding (a binary layout reusing the pack trailer's 88-byte entries), its validation, and the
//! split of many packs into objects of bounded size. An object is named by the BLAKE3 of its bytes, so a
//! reader checks its name against its content before trusting a byte of it. Who writes them and when:
//! [`crate::pack_writer`] (every pack it makes durable, at its flush points), [`crate::gc`] (the packs that
//! remain of index objects it supersedes) and [`crate::repair`] (`repair index`, from the trailers); the
//! index cache reads them in [`crate::repo::Repository::sync_cache`].

use crate::backend::{Backend, ObjectKind};
use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::pack::{self, BlobEntry, ENTRY_LEN};

/// "CAIRNIX" and the index object format version, 1.
pub const INDEX_MAGIC: [u8; 8] = *b"CAIRNIX\x01";

/// Bytes of the header: magic, pack count, superseded count.
const HEADER_LEN: usize = 16;

/// Bytes of a pack's header inside an index object: id, size, entry count, reserved.
const PACK_HEADER_LEN: usize = 48;

/// Writers start a new object once one lists this many blob entries (about 5.8 MB), so that no single object
/// grows with the repository and a reader never holds more than this at once.
pub const MAX_ENTRIES: usize = 65_536;

/// One pack as an index object lists it: its id, size and every entry of its trailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackListing {
    pub id: Id,
    pub size: u64,
    pub entries: Vec<BlobEntry>,
}

/// The decoded content of an index object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexObject {
    pub packs: Vec<PackListing>,
    /// Index objects this one replaces: a reader ignores them even while they still exist (a prune or repair
    /// that stopped before deleting them).
    pub supersedes: Vec<Id>,
}

impl IndexObject {
    /// The object's bytes and its id (BLAKE3 of the bytes).
    pub fn encode(&self) -> Result<(Vec<u8>, Id)> {
        let too_many = || Error::Invalid("index object too large".into());
        let entries: usize = self.packs.iter().map(|p| p.entries.len()).sum();
        let mut out = Vec::with_capacity(
            HEADER_LEN
                + 32 * self.supersedes.len()
                + PACK_HEADER_LEN * self.packs.len()
                + ENTRY_LEN * entries,
        );
        out.extend_from_slice(&INDEX_MAGIC);
        let count = |n: usize| u32::try_from(n).map_err(|_| too_many());
        out.extend_from_slice(&count(self.packs.len())?.to_le_bytes());
        out.extend_from_slice(&count(self.supersedes.len())?.to_le_bytes());
        for s in &self.supersedes {
            out.extend_from_slice(&s.0);
        }
        for p in &self.packs {
            out.extend_from_slice(&p.id.0);
            out.extend_from_slice(&p.size.to_le_bytes());
            out.extend_from_slice(&count(p.entries.len())?.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            for e in &p.entries {
                e.encode(&mut out);
            }
        }
        let id = Id::of(&out);
        Ok((out, id))
    }

    /// Decodes and validates an object's bytes (the caller has checked them against the name).
    pub fn decode(bytes: &[u8]) -> Result<IndexObject> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(8)? != INDEX_MAGIC {
            return Err(bad("unknown magic or version"));
        }
        let packs = r.u32()? as usize;
        let superseded = r.u32()? as usize;
        let mut out = IndexObject::default();
        for _ in 0..superseded {
            out.supersedes.push(r.id()?);
        }
        for _ in 0..packs {
            let id = r.id()?;
            let size = r.u64()?;
            let count = r.u32()? as usize;
            if r.u32()? != 0 {
                return Err(bad("reserved bytes are not zero"));
            }
            let raw = r.take(count.checked_mul(ENTRY_LEN).ok_or_else(|| bad("size"))?)?;
            let min = (pack::PACK_MAGIC.len() + pack::FOOTER_LEN + raw.len()) as u64;
            if size < min {
                return Err(bad("a pack's entries do not fit in its size"));
            }
            // The pack trailer's own checks: kinds, compression, every blob inside the pack's data area.
            let entries = pack::parse_entries(raw, Id::of(raw), size)?;
            out.packs.push(PackListing { id, size, entries });
        }
        if r.at != bytes.len() {
            return Err(bad("trailing bytes"));
        }
        Ok(out)
    }

    /// Reads the object `id` and checks it against its name.
    pub fn load(backend: &dyn Backend, id: &Id) -> Result<IndexObject> {
        let bytes = backend.get(ObjectKind::Index, &id.to_hex())?;
        if Id::of(&bytes) != *id {
            return Err(Error::corrupt(
                format!("index object {}", id.short()),
                "content does not match its name",
            ));
        }
        IndexObject::decode(&bytes).map_err(|e| match e {
            Error::Corrupt { detail, .. } => {
                Error::corrupt(format!("index object {}", id.short()), detail)
            }
            other => other,
        })
    }

    /// Writes the object durably; returns its id.
    pub fn save(&self, backend: &dyn Backend) -> Result<Id> {
        let (bytes, id) = self.encode()?;
        backend.put(ObjectKind::Index, &id.to_hex(), &bytes)?;
        Ok(id)
    }

    /// Number of blob entries listed.
    pub fn entry_count(&self) -> usize {
        self.packs.iter().map(|p| p.entries.len()).sum()
    }
}

/// Groups `packs` into objects of at most [`MAX_ENTRIES`] entries each (a pack is never split); the first
/// object carries `supersedes`. Returns no object when there is nothing to list or supersede.
pub fn split(packs: Vec<PackListing>, supersedes: Vec<Id>) -> Vec<IndexObject> {
    let mut out = Vec::new();
    let mut cur = IndexObject {
        packs: Vec::new(),
        supersedes,
    };
    let mut n = 0;
    for p in packs {
        if n > 0 && n + p.entries.len() > MAX_ENTRIES {
            out.push(std::mem::take(&mut cur));
            n = 0;
        }
        n += p.entries.len();
        cur.packs.push(p);
    }
    if !cur.packs.is_empty() || !cur.supersedes.is_empty() {
        out.push(cur);
    }
    out
}

fn bad(detail: &str) -> Error {
    Error::corrupt("index object", detail)
}

/// Bounds-checked reads of little-endian fields.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| bad("truncated"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn id(&mut self) -> Result<Id> {
        Id::from_slice(self.take(32)?).ok_or_else(|| bad("id"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::{BlobKind, Compression};

    fn entry(n: u8) -> BlobEntry {
        BlobEntry {
            kind: BlobKind::Data,
            compression: Compression::Zstd,
            stored_len: 10,
            raw_len: 20,
            offset: 8 + n as u64 * 10,
            id: Id::of(&[n]),
            base: None,
        }
    }

    fn sample() -> IndexObject {
        IndexObject {
            packs: vec![
                PackListing {
                    id: Id::of(b"p1"),
                    size: 1000,
                    entries: vec![entry(0), entry(1)],
                },
                PackListing {
                    id: Id::of(b"p2"),
                    size: 500,
                    entries: vec![entry(2)],
                },
            ],
            supersedes: vec![Id::of(b"old")],
        }
    }

    #[test]
    fn round_trips() {
        let (bytes, id) = sample().encode().unwrap();
        assert_eq!(id, Id::of(&bytes));
        assert_eq!(IndexObject::decode(&bytes).unwrap(), sample());
    }

    #[test]
    fn every_truncation_and_extension_is_an_error() {
        let (bytes, _) = sample().encode().unwrap();
        for n in 0..bytes.len() {
            assert!(IndexObject::decode(&bytes[..n]).is_err(), "{n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(IndexObject::decode(&longer).is_err());
        // A pack too small for its entries, a blob outside its pack, an unknown kind.
        for (at, v) in [
            (16 + 32 + 33, 0u8),
            (16 + 32 + 48 + 19, 0xff),
            (16 + 32 + 48, 9),
        ] {
            let mut b = bytes.clone();
            b[at] = v;
            assert!(IndexObject::decode(&b).is_err(), "byte {at}");
        }
    }

    #[test]
    fn split_bounds_objects_and_never_splits_a_pack() {
        let big = |n: u8, count: usize| PackListing {
            id: Id::of(&[n]),
            size: u64::MAX / 2,
            entries: vec![entry(n); count],
        };
        let objs = split(
            vec![big(1, MAX_ENTRIES - 1), big(2, 2), big(3, MAX_ENTRIES + 5)],
            vec![Id::of(b"x")],
        );
        let counts: Vec<usize> = objs.iter().map(|o| o.entry_count()).collect();
        assert_eq!(counts, vec![MAX_ENTRIES - 1, 2, MAX_ENTRIES + 5]);
        assert_eq!(objs[0].supersedes, vec![Id::of(b"x")]);
        assert!(objs[1].supersedes.is_empty());
        assert!(split(Vec::new(), Vec::new()).is_empty());
        assert_eq!(split(Vec::new(), vec![Id::of(b"y")]).len(), 1);
    }
}
