//! Legacy archives: `import-archive` stores an existing backup archive (a `.tar.gz` with `dump.sql` or
//! `*.dump` and `filestore/`, or an Odoo backup `.zip` with `dump.sql`, `filestore/` and `manifest.json`) as a
//! snapshot with its original time; `export` writes a snapshot back out in that layout.
//!
//! Import extracts into a private temporary directory, then backs up every top-level entry as a file tree,
//! except the dump, which becomes a stream so it deduplicates with the stream chunker and restores into
//! PostgreSQL like a `--pg` dump. `export` ([`crate::export`]) writes the root entries plus the streams back
//! out, so import then export yields the same files.
//!
//! An archive is untrusted input. Invariants of the extraction ([`extract`]):
//! - Nothing outside the extraction directory is ever read or written. Member names are split into
//!   components; an absolute name or one holding `..` is skipped. Every directory on the way to a member is
//!   looked at without following symlinks and must be a real directory made by this extraction: a member
//!   "through" a symlink member (`dir -> /etc`, then `dir/x`) is skipped. Files are created with
//!   `O_NOFOLLOW`, anything already at a member's place is removed first (the later member wins, as in tar).
//! - Symlink members are kept as symlinks, their target as text, never followed; a hard link member must
//!   name an earlier member of the archive, reached the same way. The top-level entries are backed up as
//!   named (`keep_root_symlinks`), so a top-level symlink is stored as a symlink too.
//! - An extraction may be given a budget ([`import_archive_within`], the server's uploads): once the
//!   members' data would pass it, the whole extraction fails (a decompression bomb, a sparse tar member
//!   declaring terabytes) and its directory is deleted, before the disk under it fills.
//! - Whatever is not kept (skipped members, a dump whose name is not UTF-8 and so cannot be a stream) is
//!   returned as one line each; the CLI prints them and exits 3. The list is also recorded in the snapshot
//!   metadata (`skipped_members`). Names are kept byte for byte (zip names are taken raw).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, FixedOffset};

use crate::backup::{self, BackupOptions, BackupResult, ParentChoice, StreamSource};
use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;
use crate::repo::Repository;

/// What an import wrote, and what of the archive it could not keep (one line each; empty when it kept all).
#[derive(Debug)]
pub struct ImportReport {
    pub backup: BackupResult,
    pub skipped: Vec<String>,
}

fn is_dump_name(name: &str) -> bool {
    name == "dump.sql" || name.ends_with(".dump")
}

/// A member name for messages: lossy UTF-8, control characters escaped.
fn shown(name: &[u8]) -> String {
    String::from_utf8_lossy(name).escape_debug().to_string()
}

// ---------------------------------------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------------------------------------

/// One member of an archive, as its format describes it.
enum Member<'a> {
    Dir,
    File(&'a mut dyn Read),
    Symlink(Vec<u8>),
    /// A hard link to an earlier member, by its name in the archive.
    HardLink(Vec<u8>),
    Fifo,
    /// A kind this extraction does not create (devices, unknown tar types): skipped.
    Unsupported(&'static str),
}

/// Longest symlink target accepted from a zip (where the target is the entry's data): PATH_MAX.
const MAX_LINK_TARGET: u64 = 4096;

/// Places members under `root`, a directory private to this process, never leaving it (module docs).
struct Extractor {
    root: PathBuf,
    skipped: Vec<String>,
    /// Directories made by members, with the mode and time to give them once their contents are in place.
    dirs: Vec<(Vec<Vec<u8>>, u32, Option<SystemTime>)>,
    /// Bytes of member data still allowed (`None`: no budget).
    budget: Option<u64>,
    /// Set when the budget was passed: the extraction failed as a whole.
    over_budget: bool,
}

/// Why a member is not kept.
type Skip = String;

impl Extractor {
    fn new(root: &Path, budget: Option<u64>) -> Extractor {
        Extractor {
            root: root.to_path_buf(),
            skipped: Vec::new(),
            dirs: Vec::new(),
            budget,
            over_budget: false,
        }
    }

    fn skip(&mut self, name: &[u8], why: impl std::fmt::Display) {
        self.skipped
            .push(format!("skipped member {:?}: {why}", shown(name)));
    }

    /// Places one member. `Err` only for failures of the extraction directory itself (a full disk); a
    /// member that cannot be placed is skipped and recorded.
    fn add(
        &mut self,
        name: &[u8],
        member: Member,
        mode: u32,
        mtime: Option<SystemTime>,
    ) -> Result<()> {
        let comps = match components(name) {
            Ok(c) => c,
            Err(why) => {
                self.skip(name, why);
                return Ok(());
            }
        };
        // The root itself (`./`): nothing to create.
        if comps.is_empty() {
            return Ok(());
        }
        match self.place(&comps, member, mode, mtime) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => {
                self.skip(name, why);
                Ok(())
            }
            Err(e) if e.get_ref().is_some_and(|e| e.is::<OverBudget>()) => {
                self.over_budget = true;
                Err(Error::Invalid(format!(
                    "the archive expands to more than {} bytes, the most this extraction may write \
                     (stopped at member {:?}); refused as a decompression bomb",
                    e.get_ref().and_then(|e| e.downcast_ref::<OverBudget>()).map_or(0, |b| b.0),
                    shown(name)
                )))
            }
            Err(e) if is_member_error(&e) => {
                self.skip(name, e);
                Ok(())
            }
            Err(e) => Err(Error::io(self.root.join(OsStr::from_bytes(name)), e)),
        }
    }

    fn place(
        &mut self,
        comps: &[Vec<u8>],
        member: Member,
        mode: u32,
        mtime: Option<SystemTime>,
    ) -> std::io::Result<std::result::Result<(), Skip>> {
        let (leaf, parents) = match comps.split_last() {
            Some(x) => x,
            None => return Ok(Ok(())),
        };
        let dir = match self.make_parents(parents)? {
            Ok(d) => d,
            Err(why) => return Ok(Err(why)),
        };
        let path = dir.join(OsStr::from_bytes(leaf));
        let existing = match fs::symlink_metadata(&path) {
            Ok(md) => Some(md),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if let (Member::Dir, Some(md)) = (&member, &existing) {
            if md.is_dir() {
                self.dirs.push((comps.to_vec(), mode, mtime));
                return Ok(Ok(()));
            }
        }
        if let Member::HardLink(target) = &member {
            // Resolved before anything at this place is removed: a link to itself must not find nothing.
            let src = match self.existing_member(target)? {
                Ok(p) => p,
                Err(why) => return Ok(Err(why)),
            };
            if src == path {
                return Ok(Ok(()));
            }
            clear(&path, existing.as_ref())?;
            // linkat without AT_SYMLINK_FOLLOW: a link to a symlink member is a second symlink.
            fs::hard_link(&src, &path)?;
            return Ok(Ok(()));
        }
        clear(&path, existing.as_ref())?;
        match member {
            Member::Dir => {
                fs::create_dir(&path)?;
                self.dirs.push((comps.to_vec(), mode, mtime));
            }
            Member::File(reader) => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)?;
                copy_member(reader, &mut f, &mut self.budget)?;
                f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
                if let Some(t) = mtime {
                    // Best effort: a time the filesystem cannot hold keeps the extraction time.
                    let _ = f.set_modified(t);
                }
            }
            Member::Symlink(target) => {
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)?;
            }
            Member::Fifo => {
                let mode =
                    nix::sys::stat::Mode::from_bits_truncate((mode & 0o7777) as libc::mode_t);
                nix::unistd::mkfifo(&path, mode)?;
            }
            Member::Unsupported(what) => return Ok(Err(format!("{what} not extracted"))),
            Member::HardLink(_) => {}
        }
        Ok(Ok(()))
    }

    /// The directory holding a member: each of `parents` is created when missing and must otherwise be a
    /// real directory; a symlink on the way is never followed.
    fn make_parents(
        &self,
        parents: &[Vec<u8>],
    ) -> std::io::Result<std::result::Result<PathBuf, Skip>> {
        let mut dir = self.root.clone();
        for c in parents {
            dir.push(OsStr::from_bytes(c));
            match fs::symlink_metadata(&dir) {
                Ok(md) if md.is_dir() => {}
                Ok(md) if md.file_type().is_symlink() => {
                    return Ok(Err(format!(
                        "{:?} is a symlink member, never followed",
                        shown(c)
                    )))
                }
                Ok(_) => return Ok(Err(format!("{:?} is not a directory", shown(c)))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::create_dir(&dir)?,
                Err(e) => return Err(e),
            }
        }
        Ok(Ok(dir))
    }

    /// The path of an earlier member named `name` (a hard link's target), reached without following any
    /// symlink on the way.
    fn existing_member(&self, name: &[u8]) -> std::io::Result<std::result::Result<PathBuf, Skip>> {
        let comps = match components(name) {
            Ok(c) if !c.is_empty() => c,
            Ok(_) => return Ok(Err("hard link to the archive root".into())),
            Err(why) => return Ok(Err(format!("hard link target: {why}"))),
        };
        let mut p = self.root.clone();
        for (i, c) in comps.iter().enumerate() {
            p.push(OsStr::from_bytes(c));
            let md = match fs::symlink_metadata(&p) {
                Ok(md) => md,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(Err(format!(
                        "hard link to {:?}, which is not an earlier member",
                        shown(name)
                    )))
                }
                Err(e) => return Err(e),
            };
            let last = i + 1 == comps.len();
            if !last && !md.is_dir() {
                return Ok(Err(format!(
                    "hard link through {:?}, which is not a directory (a symlink member is never followed)",
                    shown(c)
                )));
            }
            if last && md.is_dir() {
                return Ok(Err("hard link to a directory".into()));
            }
        }
        Ok(Ok(p))
    }

    /// Gives directories their modes and times, deepest first, each reached again without following a
    /// symlink (a later member may have replaced a directory on the way). Returns what was skipped.
    fn finish(mut self) -> Result<Vec<String>> {
        let dirs = std::mem::take(&mut self.dirs);
        for (comps, mode, mtime) in dirs.into_iter().rev() {
            let (leaf, parents) = match comps.split_last() {
                Some(x) => x,
                None => continue,
            };
            let Ok(Ok(parent)) = self.reach(parents) else {
                continue;
            };
            let path = parent.join(OsStr::from_bytes(leaf));
            let dir = match OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
                .open(&path)
            {
                Ok(d) => d,
                // Replaced by a later member that is not a directory: nothing to set.
                Err(_) => continue,
            };
            dir.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
                .at(&path)?;
            if let Some(t) = mtime {
                let _ = dir.set_modified(t);
            }
        }
        Ok(self.skipped)
    }

    /// Like [`Extractor::make_parents`], but creates nothing.
    fn reach(&self, parents: &[Vec<u8>]) -> std::io::Result<std::result::Result<PathBuf, ()>> {
        let mut dir = self.root.clone();
        for c in parents {
            dir.push(OsStr::from_bytes(c));
            if !fs::symlink_metadata(&dir)?.is_dir() {
                return Ok(Err(()));
            }
        }
        Ok(Ok(dir))
    }
}

/// A member name's components; an error for names that would leave the extraction directory or that no
/// path can hold. Empty and `.` components are dropped (`./a//b` is `a/b`).
fn components(name: &[u8]) -> std::result::Result<Vec<Vec<u8>>, Skip> {
    if name.first() == Some(&b'/') {
        return Err("absolute path".into());
    }
    if name.contains(&0) {
        return Err("NUL byte in name".into());
    }
    let comps: Vec<Vec<u8>> = name
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
        .collect();
    if comps.iter().any(|c| c == b"..") {
        return Err("`..` in path (would leave the archive)".into());
    }
    Ok(comps)
}

/// Removes what is at `path` (never following a symlink), so a later member takes its place.
fn clear(path: &Path, existing: Option<&fs::Metadata>) -> std::io::Result<()> {
    match existing {
        None => Ok(()),
        Some(md) if md.is_dir() => fs::remove_dir_all(path),
        Some(_) => fs::remove_file(path),
    }
}

/// I/O errors that concern one member (a name too long, a link count exhausted) rather than the extraction
/// directory: the member is skipped. Any other (no space, EIO, read-only) fails the import.
fn is_member_error(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENAMETOOLONG
                | libc::EINVAL
                | libc::EILSEQ
                | libc::EEXIST
                | libc::ENOTDIR
                | libc::EISDIR
                | libc::ENOENT
                | libc::EMLINK
                | libc::ELOOP
                | libc::EPERM
        )
    ) || e.kind() == std::io::ErrorKind::InvalidInput
}

/// A member's data failed to read: the archive is damaged (not a member error).
#[derive(Debug)]
struct ReadFailed(std::io::Error);

impl std::fmt::Display for ReadFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ReadFailed {}

/// The extraction passed its budget of this many bytes (not a member error: the import fails).
#[derive(Debug)]
struct OverBudget(u64);

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the extraction passed its budget of {} bytes", self.0)
    }
}

impl std::error::Error for OverBudget {}

/// Copies a member's data, telling a damaged archive (wrapped in [`ReadFailed`]) from a failed write, and
/// taking what it writes from `budget` ([`OverBudget`] before writing past it).
fn copy_member(
    reader: &mut dyn Read,
    out: &mut File,
    budget: &mut Option<u64>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let limit = *budget;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(std::io::Error::other(ReadFailed(e))),
        };
        if let (Some(left), Some(limit)) = (budget.as_mut(), limit) {
            *left = left
                .checked_sub(n as u64)
                .ok_or_else(|| std::io::Error::other(OverBudget(limit)))?;
        }
        out.write_all(&buf[..n])?;
    }
}

/// Extracts a `.tar.gz`, `.tgz`, `.tar` or `.zip` (by content) into `dest`, which must be an empty directory
/// private to this process. Returns the members it did not keep, one line each (see the module docs).
pub fn extract(archive: &Path, dest: &Path) -> Result<Vec<String>> {
    extract_within(archive, dest, None)
}

/// [`extract`], failing once the members' data would pass `budget` bytes.
pub fn extract_within(archive: &Path, dest: &Path, budget: Option<u64>) -> Result<Vec<String>> {
    let mut f = File::open(archive).at(archive)?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).at(archive)?;
    f.rewind().at(archive)?;
    let bad = |e: &dyn std::fmt::Display| {
        Error::Invalid(format!(
            "{}: not a readable archive: {e}",
            archive.display()
        ))
    };
    let mut x = Extractor::new(dest, budget);
    let placed = match &magic[..n] {
        [0x50, 0x4b, 3, 4] => extract_zip(BufReader::new(f), &mut x),
        [0x1f, 0x8b, ..] => extract_tar(flate2::read::GzDecoder::new(BufReader::new(f)), &mut x),
        _ => extract_tar(BufReader::new(f), &mut x),
    };
    match placed {
        Ok(()) => x.finish(),
        Err(e) if x.over_budget => Err(e),
        Err(Error::Io { source, .. })
            if source
                .get_ref()
                .is_some_and(|e| e.downcast_ref::<ReadFailed>().is_some()) =>
        {
            Err(bad(&source))
        }
        Err(Error::Invalid(m)) => Err(bad(&m)),
        Err(e) => Err(e),
    }
}

fn extract_tar(reader: impl Read, x: &mut Extractor) -> Result<()> {
    let bad = |e: std::io::Error| Error::Invalid(e.to_string());
    let mut ar = tar::Archive::new(reader);
    for entry in ar.entries().map_err(bad)? {
        let mut e = entry.map_err(bad)?;
        let name = e.path_bytes().into_owned();
        let h = e.header();
        let mode = h.mode().unwrap_or(0o644);
        let mtime = h
            .mtime()
            .ok()
            .and_then(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(s)));
        let link = e.link_name_bytes().map(|l| l.into_owned());
        let kind = h.entry_type();
        use tar::EntryType as T;
        let member = match kind {
            // Old tars mark directories by a trailing slash only.
            T::Regular if name.ends_with(b"/") => Member::Dir,
            T::Regular | T::Continuous | T::GNUSparse => Member::File(&mut e),
            T::Directory => Member::Dir,
            T::Symlink => Member::Symlink(link.unwrap_or_default()),
            T::Link => Member::HardLink(link.unwrap_or_default()),
            T::Fifo => Member::Fifo,
            // Metadata for the entries that follow (already applied by the tar crate) or for the archive.
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => continue,
            T::Char | T::Block => Member::Unsupported("device"),
            _ => Member::Unsupported("unknown tar entry type"),
        };
        x.add(&name, member, mode, mtime)?;
    }
    Ok(())
}

const S_IFMT: u32 = 0o170000;
const S_IFLNK: u32 = 0o120000;
const S_IFIFO: u32 = 0o010000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

fn extract_zip(reader: impl Read + Seek, x: &mut Extractor) -> Result<()> {
    let bad = |e: zip::result::ZipError| Error::Invalid(e.to_string());
    let mut zip = zip::ZipArchive::new(reader).map_err(bad)?;
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).map_err(bad)?;
        // The raw name: what the archive holds, byte for byte (the crate would decode a name without the
        // UTF-8 flag as CP437).
        let name = f.name_raw().to_vec();
        let mode = f.unix_mode();
        let kind = mode.map(|m| m & S_IFMT).unwrap_or(0);
        let perm = mode.map(|m| m & 0o7777);
        if f.is_dir() || name.ends_with(b"/") || kind == S_IFDIR {
            x.add(&name, Member::Dir, perm.unwrap_or(0o755), None)?;
        } else if kind == S_IFLNK {
            let mut target = Vec::new();
            (&mut f)
                .take(MAX_LINK_TARGET + 1)
                .read_to_end(&mut target)
                .map_err(|e| Error::Invalid(e.to_string()))?;
            if target.len() as u64 > MAX_LINK_TARGET {
                x.skip(&name, "symlink target longer than PATH_MAX");
            } else {
                x.add(&name, Member::Symlink(target), 0o777, None)?;
            }
        } else if kind == S_IFIFO {
            x.add(&name, Member::Fifo, perm.unwrap_or(0o644), None)?;
        } else if kind == 0 || kind == S_IFREG {
            x.add(&name, Member::File(&mut f), perm.unwrap_or(0o644), None)?;
        } else {
            x.add(&name, Member::Unsupported("special file"), 0, None)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Import
// ---------------------------------------------------------------------------------------------------------

/// Stores `archive` as a snapshot of `instance` taken at `time`.
pub fn import_archive(
    repo: &Repository,
    archive: &Path,
    instance: Option<String>,
    time: DateTime<FixedOffset>,
) -> Result<ImportReport> {
    import_archive_within(repo, archive, instance, time, None)
}

/// [`import_archive`] of an archive whose extraction may write at most `budget` bytes of member data.
pub fn import_archive_within(
    repo: &Repository,
    archive: &Path,
    instance: Option<String>,
    time: DateTime<FixedOffset>,
    budget: Option<u64>,
) -> Result<ImportReport> {
    let tmp = tempfile::Builder::new()
        .prefix("cairn-import-")
        .tempdir()
        .at(std::env::temp_dir())?;
    let root = tmp.path().join("archive");
    fs::create_dir(&root).at(&root)?;
    let mut skipped = extract_within(archive, &root, budget)?;
    let mut paths = Vec::new();
    let mut streams = Vec::new();
    let mut names: Vec<_> = fs::read_dir(&root)
        .at(&root)?
        .collect::<std::io::Result<Vec<_>>>()
        .at(&root)?;
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let raw = e.file_name();
        let is_file = e.file_type().at(e.path())?.is_file();
        match raw.to_str() {
            Some(name) if is_dump_name(name) && is_file => {
                let file = File::open(e.path()).at(e.path())?;
                streams.push(StreamSource {
                    name: name.to_string(),
                    reader: Box::new(BufReader::new(file)),
                    finish: Box::new(|| Ok(())),
                });
                continue;
            }
            None if is_file
                && (raw.as_bytes().ends_with(b".dump") || raw.as_bytes().ends_with(b".sql")) =>
            {
                skipped.push(format!(
                    "{:?}: a dump whose name is not UTF-8 cannot be a database stream; kept as a file of the tree",
                    shown(raw.as_bytes())
                ));
            }
            _ => {}
        }
        paths.push(e.path());
    }
    if streams.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no dump.sql or *.dump at the archive root",
            archive.display()
        )));
    }
    let mut metadata = serde_json::json!({
        "imported_from": archive.file_name().map(|n| n.to_string_lossy().into_owned()),
    });
    if !skipped.is_empty() {
        metadata["skipped_members"] = serde_json::json!(skipped);
    }
    let backup = backup::backup(
        repo,
        BackupOptions {
            paths,
            streams,
            instance,
            tags: vec!["imported".into()],
            parent: ParentChoice::None,
            time: Some(time),
            metadata: Some(metadata),
            progress: Progress::hidden(),
            keep_root_symlinks: true,
            ..BackupOptions::default()
        },
    );
    // Directories keep the archive's modes in the snapshot; a non-root user needs owner rwx to delete them.
    make_removable(&root);
    Ok(ImportReport {
        backup: backup?,
        skipped,
    })
}

/// Gives every directory under `dir` owner rwx (never following a symlink), so the temporary extraction can
/// be deleted whatever modes the archive gave its directories. Best effort: what is left is only a leak.
fn make_removable(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            make_removable(&e.path());
        }
    }
}
