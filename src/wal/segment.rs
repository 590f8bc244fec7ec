//! Which segment of which database system a WAL file is: the first page header of a segment (its start
//! LSN, timeline, segment size and system identifier) checked against the file's name, and the system
//! identifier checked against the one the instance's archive (or, failing that, its newest base backup)
//! records. Both checks run before `wal-push` writes anything (see the module docs of [`super`]).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::{get, is_segment};
use crate::backend::ObjectKind;
use crate::error::{Error, IoContext, Result};
use crate::repo::Repository;

/// The length of a segment's first page header (XLogLongPageHeaderData, MAXALIGNed).
pub(super) const LONG_HEADER_LEN: usize = 40;
/// `xlp_info`'s flag of a long header, which the first page of every segment has.
pub(super) const XLP_LONG_HEADER: u16 = 0x0002;

/// What the first page header of a segment (PostgreSQL's `XLogLongPageHeaderData`,
/// src/include/access/xlog_internal.h) says about which segment of which cluster the file is. These fields
/// and their offsets are the same in every PostgreSQL release since 9.3 (when `xlp_pageaddr` became one
/// u64); `xlp_magic` changes with every major release and is deliberately not checked, so a newer server's
/// WAL is not refused for it. The server writes them in its own byte order, which is this host's:
/// archive_command runs beside the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub info: u16,
    /// `xlp_tli`: the timeline of the first record on the page.
    pub tli: u32,
    /// `xlp_pageaddr`: the LSN of the page, the segment's start for its first page.
    pub pageaddr: u64,
    /// `xlp_sysid`: the cluster's database system identifier.
    pub sysid: u64,
    /// `xlp_seg_size`: the cluster's WAL segment size.
    pub seg_size: u32,
}

impl SegmentHeader {
    /// The header at the start of `bytes`, or `None` if they are too short to hold one.
    pub fn parse(bytes: &[u8]) -> Option<SegmentHeader> {
        let b = bytes.get(..LONG_HEADER_LEN)?;
        let u16_at = |o: usize| u16::from_ne_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        Some(SegmentHeader {
            info: u16_at(2),
            tli: u32_at(4),
            pageaddr: u64_at(8),
            sysid: u64_at(24),
            seg_size: u32_at(32),
        })
    }

    /// Why this is not the header of the segment named `file` (24 hex digits, perhaps `.partial`) of `size`
    /// bytes, if it is not: the page must be a segment's first (a long header), the segment size one
    /// PostgreSQL allows (a power of two from 1 MiB to 1 GiB) and no smaller than the file, the page's LSN
    /// the start of the segment the name says, and its timeline the name's or an ancestor's (the first
    /// segment of a new timeline is a copy of the old timeline's up to the switch, header included).
    pub fn mismatch(&self, file: &str, size: u64) -> Option<String> {
        let hex = |r: std::ops::Range<usize>| u32::from_str_radix(&file[r], 16).unwrap_or(0);
        let (tli, log, seg) = (hex(0..8), hex(8..16), hex(16..24));
        if self.info & XLP_LONG_HEADER == 0 {
            return Some("its first page has no long header, so it is no WAL segment".into());
        }
        let seg_size = u64::from(self.seg_size);
        if !seg_size.is_power_of_two() || !((1 << 20)..=(1 << 30)).contains(&seg_size) {
            return Some(format!(
                "its header gives a segment size of {seg_size} bytes, which no PostgreSQL uses"
            ));
        }
        if size > seg_size {
            return Some(format!(
                "it is {size} bytes long, longer than its header's segment size ({seg_size} bytes)"
            ));
        }
        let per_id = (1u64 << 32) / seg_size;
        if u64::from(seg) >= per_id {
            return Some(format!(
                "its name's segment number {seg:08X} does not exist with {seg_size}-byte segments"
            ));
        }
        let start = (u64::from(log) << 32) + u64::from(seg) * seg_size;
        if self.pageaddr != start {
            let at = self.pageaddr;
            return Some(format!(
                "its header says it starts at LSN {:X}/{:X}, the segment named {} starts at {:X}/{:X}",
                at >> 32,
                at & 0xFFFF_FFFF,
                &file[..24],
                start >> 32,
                start & 0xFFFF_FFFF
            ));
        }
        if self.tli == 0 || self.tli > tli {
            return Some(format!(
                "its header is of timeline {}, its name of timeline {tli}",
                self.tli
            ));
        }
        None
    }
}

/// Reads and checks the header of the segment `file` at `path` (see [`SegmentHeader::mismatch`]).
pub(super) fn read_segment_header(file: &str, path: &Path) -> Result<SegmentHeader> {
    let mut f = File::open(path).at(path)?;
    let size = f.metadata().at(path)?.len();
    let mut buf = Vec::with_capacity(LONG_HEADER_LEN);
    (&mut f)
        .take(LONG_HEADER_LEN as u64)
        .read_to_end(&mut buf)
        .at(path)?;
    let refused = |why: String| {
        Error::Invalid(format!(
            "{}: not the WAL segment {file}: {why}; nothing was written",
            path.display()
        ))
    };
    let header = SegmentHeader::parse(&buf).ok_or_else(|| {
        refused(format!(
            "{size} bytes are too few to hold a segment's header"
        ))
    })?;
    match header.mismatch(file, size) {
        Some(why) => Err(refused(why)),
        None => Ok(header),
    }
}

/// Refuses the segment `file` when the instance's archive holds WAL of another database system. The
/// system identifier compared with is the one recorded in the WAL object of the previous segment (on the
/// same timeline), or, when that is not archived (the first segment pushed, one after a gap or a timeline
/// switch), of the nearest archived segment before it, else after it; segments archived before
/// identifiers were recorded say nothing. When no segment says, the instance's newest base backup does (if
/// it recorded one), else the first segment that records one decides.
pub(super) fn check_system_identifier(
    repo: &Repository,
    instance: &str,
    file: &str,
    h: &SegmentHeader,
) -> Result<()> {
    let (source, sysid) = match archived_system_identifier(repo, instance, file, h)? {
        Some((other, sysid)) => (format!("archives WAL of database system {sysid} ({other})"), sysid),
        // No archived segment says which cluster the instance archives (none yet, or only ones archived
        // before identifiers were recorded): its newest base backup does, else the first segment decides.
        None => match newest_base_backup_system_identifier(repo, instance)? {
            Some((snapshot, sysid)) => (
                format!("holds base backups of database system {sysid} (the newest: snapshot {snapshot})"),
                sysid,
            ),
            None => return Ok(()),
        },
    };
    if sysid == h.sysid {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "{file} is WAL of database system {}, but instance {instance} {source}; nothing was written \
         (another cluster, or a new one made by initdb or pg_upgrade, archives under an instance of its own)",
        h.sysid
    )))
}

/// The system identifier the instance's newest base backup recorded, with that snapshot's short id; `None`
/// without a base backup or when the newest predates the field.
fn newest_base_backup_system_identifier(
    repo: &Repository,
    instance: &str,
) -> Result<Option<(String, u64)>> {
    let backups = crate::pitr::base_backups(repo, instance)?;
    Ok(backups
        .last()
        .and_then(|b| Some((b.id.short(), b.facts.system_identifier?))))
}

/// The system identifier recorded nearest to the segment `file` (see [`check_system_identifier`]) and the
/// file that records it.
fn archived_system_identifier(
    repo: &Repository,
    instance: &str,
    file: &str,
    h: &SegmentHeader,
) -> Result<Option<(String, u64)>> {
    let seg_size = u64::from(h.seg_size);
    if let Some((tli, segno)) =
        crate::postgres::basebackup::parse_segment_file_name(&file[..24], seg_size)
    {
        if let Some(prev) = segno.checked_sub(1) {
            let name = crate::postgres::basebackup::segment_file_name(tli, prev, seg_size);
            if let Some(o) = get(repo, instance, &name)? {
                if let Some(id) = o.system_identifier {
                    return Ok(Some((name, id)));
                }
            }
        }
    }
    let prefix = format!("{instance}.");
    let mut segments: Vec<String> = repo
        .backend()
        .list(ObjectKind::Wal)?
        .into_iter()
        .filter_map(|(name, _)| Some(name.strip_prefix(&prefix)?.to_string()))
        .filter(|f| is_segment(f) && f != file)
        .collect();
    segments.sort();
    let at = segments.partition_point(|f| f.as_str() < file);
    let below = at.checked_sub(1).map(|i| &segments[i]);
    for name in below.into_iter().chain(segments.get(at)) {
        if let Some(o) = get(repo, instance, name)? {
            if let Some(id) = o.system_identifier {
                return Ok(Some((name.clone(), id)));
            }
        }
    }
    Ok(None)
}
