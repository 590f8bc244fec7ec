//! The file system operations of a restore, relative to directory descriptors: nothing below the target
//! is ever reached through a symlink, however the tree changes while the restore runs.
//!
//! Why: a restore often writes into a tree that someone else can change at the same time (an in-place
//! restore, as root, of a filestore its service user owns). Checking a path and then using it by name
//! leaves a window in which a directory can be swapped for a symlink, and the restore would then create,
//! unlink, chown or chmod whatever the symlink leads to (a root-owned file outside the target, say). So
//! every directory below the target is opened component by component with `O_NOFOLLOW | O_DIRECTORY`
//! from the target's own descriptor ([`TargetDir::dir`]), and every entry is made, replaced or given its
//! metadata through its parent's descriptor (`*at` calls that never follow the last component) or
//! through its own descriptor. A symlink where a directory must be fails the operation (`ENOTDIR`/`ELOOP`).
//!
//! The descriptors of the directories reached last are kept (a bounded number, see [`Walk`]) and the next
//! directory is opened from the deepest of them on its path, never through `..`: a restore is linear in the
//! depth of its tree, not quadratic. A kept descriptor serves one pass of the restore and at most
//! [`REUSE`] directories asked for, the window a batch of files already had: a directory moved away while
//! it is kept still receives that batch (it is the same directory, reached without a symlink); one swapped
//! for a symlink before it is reached, or before the walk starts again from the target, fails.
//!
//! The target directory itself is resolved by path once, when the restore starts: it is the caller's.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use crate::error::{Error, Result};

/// Flags of the directories walked through: never a symlink, no data access needed where the OS allows.
#[cfg(target_os = "linux")]
const WALK_FLAGS: OFlag = OFlag::O_PATH
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);
#[cfg(not(target_os = "linux"))]
const WALK_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// The directory a restore writes into, held open for the whole restore, with the descriptors of the
/// directories below it reached last (see [`Walk`]).
pub(crate) struct TargetDir {
    fd: Arc<OwnedFd>,
    path: PathBuf,
    walk: Mutex<Walk>,
    /// Directories opened on the way to the ones asked for (for tests: the walk must stay linear).
    opens: AtomicU64,
    /// Write-outs started of files restored here (for tests: small files get none, see
    /// [`crate::restore::files::EARLY_WRITEBACK_MIN`]).
    writebacks: AtomicU64,
}

/// Directory descriptors a walk holds at most (besides the target's own and those its callers keep).
const HELD_DIRS: usize = 128;

/// Directories a walk hands out before it starts again from the target: a held descriptor keeps a directory
/// that someone moves elsewhere, so none is reused for longer than a batch of files already kept its
/// directories (see [`crate::restore::files`]).
const REUSE: u32 = 256;

/// The path from the target to the directory reached last, with descriptors held for some of its levels.
///
/// Why: opening every directory from the target one component at a time costs O(depth) opens per entry, and
/// a chain of 2,040 nested directories took 22.7 s to restore. A restore visits its entries in tree order, so
/// the next directory asked for is almost always the last one, a child of it or an ancestor: it is reached
/// from the deepest level held on its path, one `O_NOFOLLOW` open per level below that, never through `..`.
/// At most [`HELD_DIRS`] descriptors are held: past that the shallowest level is dropped, but every
/// `stride`-th level is kept as long as others can go, so that climbing back up a deep chain (directory
/// times, deepest first) reopens at most a stride of levels at a time from a kept one.
#[derive(Default)]
struct Walk {
    levels: Vec<Level>,
    held: usize,
    uses: u32,
}

struct Level {
    name: CString,
    fd: Option<Arc<OwnedFd>>,
}

impl Walk {
    /// Forgets every level from `depth` on.
    fn truncate(&mut self, depth: usize) {
        if depth < self.levels.len() {
            self.held -= self.levels[depth..]
                .iter()
                .filter(|l| l.fd.is_some())
                .count();
            self.levels.truncate(depth);
        }
    }

    /// The deepest level's directory: opened from the deepest level held (or `root`), level by level.
    fn reach(&mut self, root: &Arc<OwnedFd>, opens: &AtomicU64) -> std::io::Result<Arc<OwnedFd>> {
        let held = self.levels.iter().rposition(|l| l.fd.is_some());
        let mut fd = match held.and_then(|i| self.levels[i].fd.clone()) {
            Some(fd) => fd,
            None => root.clone(),
        };
        for i in held.map_or(0, |i| i + 1)..self.levels.len() {
            opens.fetch_add(1, Ordering::Relaxed);
            match open_at(fd.as_fd(), &self.levels[i].name, WALK_FLAGS, 0) {
                Ok(next) => fd = Arc::new(next),
                Err(e) => {
                    self.truncate(i);
                    return Err(e);
                }
            }
            self.levels[i].fd = Some(fd.clone());
            self.held += 1;
            if self.held > HELD_DIRS {
                self.drop_one(i);
            }
        }
        Ok(fd)
    }

    /// Drops the descriptor of the shallowest level above `deepest` that is not a kept stride level (or,
    /// when only those are left, of the shallowest).
    fn drop_one(&mut self, deepest: usize) {
        // Half the descriptors go to stride levels: a power of two that spreads them over the whole path.
        let stride = self
            .levels
            .len()
            .div_ceil(HELD_DIRS / 2)
            .next_power_of_two();
        let held = |l: &Level| l.fd.is_some();
        let pick = (0..deepest)
            .find(|&i| held(&self.levels[i]) && (i + 1) % stride != 0)
            .or_else(|| (0..deepest).find(|&i| held(&self.levels[i])));
        if let Some(i) = pick {
            self.levels[i].fd = None;
            self.held -= 1;
        }
    }
}

fn cstr(name: &OsStr) -> std::io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| std::io::Error::other("name contains NUL"))
}

/// `openat(dir, name, flags, mode)`.
fn open_at(dir: BorrowedFd, name: &CStr, flags: OFlag, mode: u32) -> std::io::Result<OwnedFd> {
    Ok(nix::fcntl::openat(
        dir,
        name,
        flags,
        Mode::from_bits_truncate(mode as libc::mode_t),
    )?)
}

/// What an entry is, without following it; `None` when there is none.
pub(crate) fn lstat_at(dir: BorrowedFd, name: &CStr) -> std::io::Result<Option<libc::stat>> {
    match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

impl TargetDir {
    /// Opens the target directory (following the path as given: it is the caller's choice).
    pub fn open(path: &Path) -> Result<TargetDir> {
        let fd = nix::fcntl::open(
            path,
            WALK_FLAGS.difference(OFlag::O_NOFOLLOW),
            Mode::empty(),
        )
        .map_err(|e| Error::io(path, e.into()))?;
        Ok(TargetDir {
            fd: Arc::new(fd),
            path: path.to_path_buf(),
            walk: Mutex::new(Walk::default()),
            opens: AtomicU64::new(0),
            writebacks: AtomicU64::new(0),
        })
    }

    /// `rel` under the target, for messages.
    pub fn display(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    /// The directory `rel` (relative, plain names) below the target, every component a real directory,
    /// reached from the directories reached last where they are on its path (see [`Walk`]).
    pub fn dir(&self, rel: &Path) -> std::io::Result<Arc<OwnedFd>> {
        let mut names = Vec::new();
        for c in rel.components() {
            let Component::Normal(name) = c else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a plain relative path",
                ));
            };
            names.push(name);
        }
        let mut walk = self.walk.lock().unwrap_or_else(|p| p.into_inner());
        walk.uses += 1;
        if walk.uses > REUSE {
            *walk = Walk {
                uses: 1,
                ..Walk::default()
            };
        }
        let same = walk
            .levels
            .iter()
            .zip(&names)
            .take_while(|(l, n)| l.name.as_bytes() == n.as_bytes())
            .count();
        walk.truncate(same);
        for name in &names[same..] {
            walk.levels.push(Level {
                name: cstr(name)?,
                fd: None,
            });
        }
        walk.reach(&self.fd, &self.opens)
    }

    /// Drops the descriptors held below the target: the next directory is opened from the target again. At
    /// the start of each pass of a restore, so that one pass never writes through a directory reached in
    /// another (a directory moved away in between is then missed, as without the descriptors held).
    pub fn drop_held(&self) {
        *self.walk.lock().unwrap_or_else(|p| p.into_inner()) = Walk::default();
    }

    /// Directories opened so far on the way to those asked for.
    #[cfg(test)]
    pub fn opens(&self) -> u64 {
        self.opens.load(Ordering::Relaxed)
    }

    /// Counts a write-out started of a file restored here.
    pub(crate) fn count_writeback(&self) {
        self.writebacks.fetch_add(1, Ordering::Relaxed);
    }

    /// Write-outs started so far of files restored here.
    #[cfg(test)]
    pub fn writebacks(&self) -> u64 {
        self.writebacks.load(Ordering::Relaxed)
    }

    /// The parent directory of `rel` (see [`dir`](Self::dir)) and the last name of `rel`.
    pub fn parent(&self, rel: &Path) -> std::io::Result<(Arc<OwnedFd>, CString)> {
        let name = rel
            .file_name()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no last name"))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        Ok((self.dir(parent)?, cstr(name)?))
    }

    /// Makes the directory `rel` (an existing real directory is kept; anything else there is replaced
    /// when overwriting, refused otherwise).
    pub fn make_dir(&self, rel: &Path, overwrite: bool) -> Result<()> {
        let path = self.display(rel);
        let (dir, name) = self.parent(rel).map_err(|e| Error::io(&path, e))?;
        match lstat_at(dir.as_fd(), &name).map_err(|e| Error::io(&path, e))? {
            Some(st) if is_dir(&st) => return Ok(()),
            Some(_) if overwrite => unlink_at(dir.as_fd(), &name, false, &path)?,
            Some(_) => return Err(Error::Exists(path)),
            None => {}
        }
        nix::sys::stat::mkdirat(&dir, name.as_c_str(), Mode::from_bits_truncate(0o777))
            .map_err(|e| Error::io(&path, e.into()))
    }

    /// Opens the directory `rel` itself for its metadata (not following it).
    pub fn open_dir(&self, rel: &Path) -> Result<File> {
        let path = self.display(rel);
        let (dir, name) = self.parent(rel).map_err(|e| Error::io(&path, e))?;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = open_at(dir.as_fd(), &name, flags, 0).map_err(|e| Error::io(&path, e))?;
        Ok(File::from(fd))
    }
}

/// Creates a new regular file `name` in `dir` (mode 0600, never through a symlink); an existing entry is
/// replaced only when overwriting (removed first, never written through).
pub(crate) fn create_file_at(
    dir: BorrowedFd,
    name: &CStr,
    overwrite: bool,
    path: &Path,
) -> Result<File> {
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match open_at(dir, name, flags, 0o600) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            replace_existing_at(dir, name, overwrite, path)?;
            open_at(dir, name, flags, 0o600)
        }
        other => other,
    }
    .map(File::from)
    .map_err(|e| Error::io(path, e))
}

/// Removes an existing entry `name` of `dir` (a directory with all it holds) when overwriting; refuses
/// otherwise. Nothing is followed.
pub(crate) fn replace_existing_at(
    dir: BorrowedFd,
    name: &CStr,
    overwrite: bool,
    path: &Path,
) -> Result<()> {
    match lstat_at(dir, name).map_err(|e| Error::io(path, e))? {
        None => Ok(()),
        Some(_) if !overwrite => Err(Error::Exists(path.to_path_buf())),
        Some(st) if is_dir(&st) => remove_tree_at(dir, name).map_err(|e| Error::io(path, e)),
        Some(_) => unlink_at(dir, name, false, path),
    }
}

fn unlink_at(dir: BorrowedFd, name: &CStr, is_dir: bool, path: &Path) -> Result<()> {
    let flags = if is_dir {
        nix::unistd::UnlinkatFlags::RemoveDir
    } else {
        nix::unistd::UnlinkatFlags::NoRemoveDir
    };
    nix::unistd::unlinkat(dir, name, flags).map_err(|e| Error::io(path, e.into()))
}

/// Removes `name` of `dir` if it is still there (a failed file's leftovers); best effort.
pub(crate) fn remove_file_at(dir: BorrowedFd, name: &CStr) {
    let _ = nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir);
}

/// Removes the directory `name` of `dir` and everything in it, never following a symlink.
fn remove_tree_at(dir: BorrowedFd, name: &CStr) -> std::io::Result<()> {
    // The directory is reached through the descriptor (see [`fd_path`]); the standard library's removal
    // opens every level below with `O_NOFOLLOW` relative to its parent.
    std::fs::remove_dir_all(fd_path(dir, name))
}

/// Removes the entry `name` of `dir` whatever it is (a directory with everything in it), never following it.
pub(crate) fn remove_at(dir: BorrowedFd, name: &CStr, path: &Path) -> Result<()> {
    match lstat_at(dir, name).map_err(|e| Error::io(path, e))? {
        None => Ok(()),
        Some(st) if is_dir(&st) => remove_tree_at(dir, name).map_err(|e| Error::io(path, e)),
        Some(_) => unlink_at(dir, name, false, path),
    }
}

/// The names in the directory `dir` (read through its descriptor, see [`fd_path`]), `.` and `..` left out.
pub(crate) fn list_dir(dir: BorrowedFd) -> std::io::Result<Vec<CString>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(fd_dir_path(dir))? {
        out.push(cstr(&e?.file_name())?);
    }
    Ok(out)
}

/// Creates the symlink `name` in `dir` pointing to `target` (bytes, not resolved).
pub(crate) fn symlink_at(dir: BorrowedFd, name: &CStr, target: &[u8]) -> std::io::Result<()> {
    let t =
        CString::new(target).map_err(|_| std::io::Error::other("symlink target contains NUL"))?;
    Ok(nix::unistd::symlinkat(t.as_c_str(), dir, name)?)
}

/// Creates the special file `name` in `dir` (`kind` is `S_IFIFO`, `S_IFCHR` or `S_IFBLK`).
pub(crate) fn mknod_at(
    dir: BorrowedFd,
    name: &CStr,
    kind: libc::mode_t,
    mode: u32,
    rdev: u64,
) -> std::io::Result<()> {
    Ok(nix::sys::stat::mknodat(
        dir,
        name,
        SFlag::from_bits_truncate(kind),
        Mode::from_bits_truncate((mode & 0o7777) as libc::mode_t),
        rdev as libc::dev_t,
    )?)
}

/// Makes `name` in `to_dir` a hard link to `from_name` in `from_dir` (the source is not followed).
pub(crate) fn link_at(
    from_dir: BorrowedFd,
    from_name: &CStr,
    to_dir: BorrowedFd,
    name: &CStr,
) -> std::io::Result<()> {
    // No AT_SYMLINK_FOLLOW: a symlink source is linked itself, not followed.
    Ok(nix::unistd::linkat(
        from_dir,
        from_name,
        to_dir,
        name,
        AtFlags::empty(),
    )?)
}

/// Owner, mode (not for symlinks) and times of the entry `name` of `dir`, never following it: a
/// symlink's own owner and times are set; anything else that turns out to be a symlink fails.
pub(crate) fn set_meta_at(
    dir: BorrowedFd,
    name: &CStr,
    meta: &crate::tree::Meta,
    symlink: bool,
    as_root: bool,
) -> std::io::Result<()> {
    if as_root {
        chown_at(dir, name, meta.uid, meta.gid)?;
    }
    if !symlink {
        // The C library refuses (EOPNOTSUPP) when the entry is a symlink, and otherwise changes the
        // entry itself.
        nix::sys::stat::fchmodat(
            dir,
            name,
            Mode::from_bits_truncate((meta.mode & 0o7777) as libc::mode_t),
            nix::sys::stat::FchmodatFlags::NoFollowSymlink,
        )?;
    }
    Ok(())
}

/// `fchownat` of `name` in `dir`, not following it.
fn chown_at(dir: BorrowedFd, name: &CStr, uid: u32, gid: u32) -> std::io::Result<()> {
    Ok(nix::unistd::fchownat(
        dir,
        name,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?)
}

/// Sets the recorded mtime (as access and modification time) of `name` in `dir`, not following it.
pub(crate) fn set_times_at(dir: BorrowedFd, name: &CStr, time: &TimeSpec) -> std::io::Result<()> {
    Ok(nix::sys::stat::utimensat(
        dir,
        name,
        time,
        time,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )?)
}

/// The path of `name` in `dir` through the descriptor (for calls that take only paths, such as the `l*`
/// attribute calls): the directory is not looked up again by name.
pub(crate) fn fd_path(dir: BorrowedFd, name: &CStr) -> PathBuf {
    fd_dir_path(dir).join(OsStr::from_bytes(name.to_bytes()))
}

/// The directory `dir` as a path that the kernel resolves through the descriptor itself.
fn fd_dir_path(dir: BorrowedFd) -> PathBuf {
    #[cfg(target_os = "linux")]
    let base = format!("/proc/self/fd/{}", dir.as_raw_fd());
    #[cfg(not(target_os = "linux"))]
    let base = format!("/dev/fd/{}", dir.as_raw_fd());
    PathBuf::from(base)
}

/// Gives the directory `path` and everything below it to `uid:gid` without following a symlink, bottom-up
/// through descriptors: every directory keeps its owner (root, while a restore fills it) until everything
/// below it is done and `path` itself goes last, so the new owner never holds a directory whose contents
/// root is still changing (it could swap an entry for a symlink to a file outside).
pub(crate) fn chown_tree_at(path: &Path, uid: u32, gid: u32) -> Result<()> {
    let top = TargetDir::open(path)?;
    chown_below(top.fd.as_fd(), uid, gid).map_err(|e| Error::io(path, e))?;
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| Error::io(path, e))
}

fn chown_below(dir: BorrowedFd, uid: u32, gid: u32) -> std::io::Result<()> {
    for name in list_dir(dir)? {
        let Some(st) = lstat_at(dir, &name)? else {
            continue;
        };
        if is_dir(&st) {
            let sub = open_at(dir, &name, WALK_FLAGS, 0)?;
            chown_below(sub.as_fd(), uid, gid)?;
        }
        chown_at(dir, &name, uid, gid)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_walk_down_and_back_up_a_deep_chain_opens_each_level_a_few_times_with_few_descriptors() {
        const DEPTH: usize = 1500;
        let tmp = tempfile::tempdir().unwrap();
        let chain = |depth: usize| std::iter::repeat_n("d", depth).collect::<PathBuf>();
        std::fs::create_dir_all(tmp.path().join(chain(DEPTH))).unwrap();
        let target = TargetDir::open(tmp.path()).unwrap();
        let most_held = |target: &TargetDir, most: &mut usize| {
            let held = target.walk.lock().unwrap().held;
            *most = (*most).max(held);
        };
        let mut most = 0;
        for depth in (0..=DEPTH).chain((0..DEPTH).rev()) {
            let fd = target.dir(&chain(depth)).unwrap();
            let st = nix::sys::stat::fstat(fd.as_fd()).unwrap();
            assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFDIR);
            most_held(&target, &mut most);
        }
        assert!(most <= HELD_DIRS, "{most} descriptors held at once");
        // Down and up once, plus a walk from the target every REUSE directories; from the target each time
        // it was DEPTH^2 opens (2.25 million).
        let opens = target.opens();
        eprintln!("{opens} opens, at most {most} descriptors held, for a chain {DEPTH} deep");
        assert!(
            opens < 16 * DEPTH as u64,
            "{opens} opens for a chain {DEPTH} deep"
        );
        // A directory replaced by a symlink is never walked through, held descriptors or not.
        target.dir(&chain(10)).unwrap();
        let fifth = tmp.path().join(chain(5));
        std::fs::rename(&fifth, tmp.path().join("aside")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("aside"), &fifth).unwrap();
        target.drop_held();
        let e = target.dir(&chain(10)).unwrap_err();
        assert!(
            matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)),
            "{e}"
        );
    }

    #[test]
    fn a_tree_is_given_away_whole_and_its_symlinks_are_never_followed() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: chown to another user needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, b"root's").unwrap();
        let top = tmp.path().join("data");
        std::fs::create_dir_all(top.join("base/1")).unwrap();
        std::fs::write(top.join("base/1/1259"), b"x").unwrap();
        std::fs::write(top.join("PG_VERSION"), b"15").unwrap();
        std::os::unix::fs::symlink(&outside, top.join("base/link")).unwrap();
        chown_tree_at(&top, 1234, 1235).unwrap();
        for p in [
            "",
            "base",
            "base/1",
            "base/1/1259",
            "PG_VERSION",
            "base/link",
        ] {
            let m = std::fs::symlink_metadata(top.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (1234, 1235), "{p}");
        }
        let m = std::fs::metadata(&outside).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (0, 0),
            "the symlink's target is not touched"
        );
    }
}
