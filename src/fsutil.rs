//! Durable file operations: every file the repository keeps is written to a temporary file in the same
//! directory, fsynced, renamed into place, and its directory fsynced, so a crash leaves either the old state or
//! the complete new file, never a torn one.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Writes `data` to `path` atomically and durably (temp file, fsync, rename, fsync directory).
pub fn write_durable(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .at(dir)?;
    tmp.write_all(data).at(tmp.path())?;
    tmp.as_file().sync_all().at(tmp.path())?;
    tmp.persist(path)
        .map_err(|e| crate::Error::io(path, e.error))?;
    sync_dir(dir)
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
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is open for the call's duration.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// Creates a directory (and parents) if missing.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).at(dir)
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
    fn the_empty_parent_of_a_relative_name_is_the_current_directory() {
        // `cairn --repo repo init` syncs Path::new("repo").parent(), which is "".
        assert_eq!(Path::new("repo").parent(), Some(Path::new("")));
        sync_dir(Path::new("")).unwrap();
    }
}
