//! Durable file operations: every file the repository keeps is written to a temporary file in the same
//! directory, fsynced, renamed into place, and its directory fsynced, so a crash leaves either the old state or
//! the complete new file, never a torn one.
//!
//! Privacy: everything created here is its owner's alone, whatever the umask: files 0600 (the temporary files
//! `tempfile` creates are 0600 and keep that mode when renamed), directories 0700. A repository holds the
//! contents of every file it backs up.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::fcntl::PosixFadviseAdvice;

use crate::error::{IoContext, Result};

/// Writes `data` to `path` atomically and durably (temp file, fsync, rename, fsync directory).
pub fn write_durable(path: &Path, data: &[u8]) -> Result<()> {
    let (dir, tmp) = durable_temp(path, data)?;
    tmp.persist(path)
        .map_err(|e| crate::Error::io(path, e.error))?;
    sync_dir(dir)
}

/// Like [`write_durable`], but never replaces a file: the fsynced temporary file is renamed into place with
/// RENAME_NOREPLACE (or linked, where the file system lacks it), so that of writers racing for one name
/// exactly one succeeds. Returns `false`, leaving the existing file and removing the temporary one, when
/// `path` exists.
pub fn write_durable_new(path: &Path, data: &[u8]) -> Result<bool> {
    let (dir, tmp) = durable_temp(path, data)?;
    match tmp.persist_noclobber(path) {
        Ok(_) => {}
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(crate::Error::io(path, e.error)),
    }
    sync_dir(dir)?;
    Ok(true)
}

/// A temporary file beside `path` holding `data`, fsynced, and the directory it is in.
fn durable_temp<'p>(path: &'p Path, data: &[u8]) -> Result<(&'p Path, tempfile::NamedTempFile)> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .at(dir)?;
    tmp.write_all(data).at(tmp.path())?;
    tmp.as_file().sync_all().at(tmp.path())?;
    Ok((dir, tmp))
}

/// Opens a host-private state file (a cache entry, a record) for reading, or `None` unless it is a regular
/// file of the effective user, of at most `max_len` bytes, with none of the bits of `forbidden_mode` set.
/// Never follows a link and never blocks: a FIFO planted in its place must not hang the caller.
pub fn open_own(path: &Path, forbidden_mode: u32, max_len: u64) -> Option<File> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let md = f.metadata().ok()?;
    let own = md.is_file()
        && md.uid() == nix::unistd::geteuid().as_raw()
        && md.mode() & forbidden_mode == 0
        && md.len() <= max_len;
    own.then_some(f)
}

/// Fsyncs a directory so that a rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    // `Path::parent` of a one-component relative path such as `repo` is the empty path: the current directory.
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir).at(dir)?.sync_all().at(dir)
}

/// Asks the kernel to drop the cached pages of a file whose data is durable (they are clean after an fsync).
/// A backup writes gigabytes it will not read again; left cached, they push out what the machine does use,
/// and each new pack lands in pages never touched before, which on a virtual machine made the copy into
/// the page cache up to ten times slower. Advice only: a failure changes nothing and is ignored.
pub fn drop_cached(file: &File) {
    let _ = nix::fcntl::posix_fadvise(file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
}

/// Asks the kernel to start reading `len` bytes of a file at `offset` into its page cache, without waiting:
/// a reader that knows which ranges it needs next gets them read while it decodes earlier ones. Advice
/// only: a failure (or a range past the end) changes nothing and is ignored; the reads report errors.
pub fn read_ahead(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    let _ = nix::fcntl::posix_fadvise(file, offset, len, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
}

/// Reads exactly `len` bytes of `file` at `offset` into a new buffer, which is not zeroed first: the read
/// fills it (zeroing the hundreds of megabytes of packs a restore reads cost a few percent of its CPU). A
/// file that ends sooner is `UnexpectedEof`.
pub fn read_exact_at_new(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let at = offset
            .checked_add(buf.len() as u64)
            .and_then(|at| libc::off_t::try_from(at).ok())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let spare = buf.spare_capacity_mut();
        // SAFETY: `pread` writes at most `spare.len()` bytes into the buffer's spare capacity, which this
        // borrow owns; the descriptor is open for the call.
        let n =
            unsafe { libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), at) };
        match n {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n if n < 0 => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            // SAFETY: the `n` bytes after the current length were just written by `pread` (n <= spare).
            n => unsafe { buf.set_len(buf.len() + n as usize) },
        }
    }
    Ok(buf)
}

/// Mode of the directories cairn creates in a repository.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of the files cairn creates in a repository.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates a directory (and parents) if missing, private to its owner (existing ones are left as they are).
pub fn ensure_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
        .at(dir)
}

/// Takes the group and other permission bits off a file the current user owns (a repository written by an
/// older cairn, or files SQLite created from a world-readable database). Best effort: a file that is missing,
/// owned by someone else or on a read-only file system is left as it is, since reading it must still work.
pub fn make_private(path: &Path) {
    set_mode_if_owned(path, |mode| mode & !0o077);
}

/// Sets the permission bits of a regular file the current user owns to `f(current bits)`; best effort, like
/// [`make_private`].
pub fn set_mode_if_owned(path: &Path, f: impl FnOnce(u32) -> u32) {
    let Ok(md) = fs::symlink_metadata(path) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    let mode = md.permissions().mode() & 0o7777;
    let want = f(mode);
    if md.uid() == me && md.file_type().is_file() && want != mode {
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(want));
    }
}

/// True for the I/O errors that mean "this cannot be written here" rather than "this is broken": permissions,
/// a read-only file system, a full disk or quota.
pub fn is_unwritable(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{PermissionDenied, QuotaExceeded, ReadOnlyFilesystem, StorageFull};
    // The kind too: `tempfile` wraps the OS error with its path, which hides the raw code.
    matches!(
        e.raw_os_error(),
        Some(libc::EACCES | libc::EPERM | libc::EROFS | libc::ENOSPC | libc::EDQUOT)
    ) || matches!(
        e.kind(),
        PermissionDenied | ReadOnlyFilesystem | StorageFull | QuotaExceeded
    )
}

/// Removes a file and makes the removal durable; a missing file is not an error.
pub fn remove_durable(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(crate::Error::io(path, e)),
    }
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_into_a_new_buffer_gets_exactly_the_range_or_a_short_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(read_exact_at_new(&file, 0, data.len()).unwrap(), data);
        assert_eq!(
            read_exact_at_new(&file, 1000, 5).unwrap(),
            &data[1000..1005]
        );
        assert!(read_exact_at_new(&file, 7, 0).unwrap().is_empty());
        let short = read_exact_at_new(&file, 299_990, 11).unwrap_err();
        assert_eq!(short.kind(), std::io::ErrorKind::UnexpectedEof);
        let past = read_exact_at_new(&file, 400_000, 1).unwrap_err();
        assert_eq!(past.kind(), std::io::ErrorKind::UnexpectedEof);
        let huge = read_exact_at_new(&file, u64::MAX, 1).unwrap_err();
        assert_eq!(huge.kind(), std::io::ErrorKind::InvalidInput);
    }

    #[test]
    fn the_empty_parent_of_a_relative_name_is_the_current_directory() {
        // `cairn --repo repo init` syncs Path::new("repo").parent(), which is "".
        assert_eq!(Path::new("repo").parent(), Some(Path::new("")));
        sync_dir(Path::new("")).unwrap();
    }

    #[test]
    fn created_directories_are_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b");
        ensure_dir(&deep).unwrap();
        for d in [dir.path().join("a"), deep] {
            assert_eq!(fs::metadata(d).unwrap().permissions().mode() & 0o777, 0o700);
        }
        let f = dir.path().join("f");
        write_durable(&f, b"x").unwrap();
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        make_private(&f);
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
