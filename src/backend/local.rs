//! A repository in a local directory (format-spec/README.md, "Layout" and "Durability").
//!
//! Objects are files at `<root>/<kind dir>/[<xx>/]<name>`. Every object is written to a `.tmp-*` file in its
//! kind's directory, fsynced, renamed into place and its directory fsynced, so a crash leaves the old state or
//! the complete object, never a torn one; listings skip the `.tmp-*` files an interrupted write leaves (prune
//! removes them). Files are created private to their owner (0600, directories 0700).

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{check_name, short_object, Backend, ObjectKind, ObjectWriter, RangeReader};
use crate::error::{Error, IoContext, Result};
use crate::fsutil;

/// Blobs of a pack closer than this are read with one `pread` (see [`super::ReadPlan`]).
const LOCAL_MERGE_GAP: u64 = 256 << 10;

/// A local directory backend.
pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    /// A backend over the directory `root` (which need not exist yet: the first write creates it).
    pub fn new(root: impl Into<PathBuf>) -> LocalBackend {
        LocalBackend { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of an object.
    pub fn path(&self, kind: ObjectKind, name: &str) -> PathBuf {
        self.root.join(kind.key(name))
    }

    fn kind_dir(&self, kind: ObjectKind) -> PathBuf {
        self.root.join(kind.dir())
    }

    /// Where a whole object of this name is written, its kind's directory made (durably) if missing.
    fn object_path(&self, kind: ObjectKind, name: &str) -> Result<PathBuf> {
        check_name(kind, name)?;
        let path = self.path(kind, name);
        if let Some(dir) = path.parent() {
            if !dir.exists() {
                // A kind's directory missing from an older repository (`index/`): the new directory's own
                // entry must be durable too, or a crash could take a "durable" object with it.
                fsutil::ensure_dir(dir)?;
                fsutil::sync_dir(dir.parent().unwrap_or(Path::new("/")))?;
            }
        }
        Ok(path)
    }

    /// Opens an object's file for reading, `NotFound` (with its path) when missing.
    fn open(&self, kind: ObjectKind, name: &str) -> Result<(File, PathBuf)> {
        check_name(kind, name)?;
        let path = self.path(kind, name);
        let file = File::open(&path).at(&path)?;
        Ok((file, path))
    }
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<()> {
        fsutil::write_durable(&self.object_path(kind, name)?, data)
    }

    fn put_new(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<bool> {
        fsutil::write_durable_new(&self.object_path(kind, name)?, data)
    }

    fn writer(&self, kind: ObjectKind) -> Result<Box<dyn ObjectWriter>> {
        let dir = self.kind_dir(kind);
        fsutil::ensure_dir(&dir)?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&dir)
            .at(&dir)?;
        Ok(Box::new(LocalWriter {
            backend_root: self.root.clone(),
            kind,
            out: BufWriter::with_capacity(64 << 10, tmp),
        }))
    }

    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>> {
        use std::io::Read;
        let (file, path) = self.open(kind, name)?;
        let size = file.metadata().at(&path)?.len();
        super::check_size(kind, &path.display().to_string(), size)?;
        // Never more than the size checked, even if the file grows meanwhile.
        let mut out = Vec::with_capacity(size as usize);
        (&file)
            .take(kind.max_size().unwrap_or(u64::MAX))
            .read_to_end(&mut out)
            .at(&path)?;
        Ok(out)
    }

    fn get_range(&self, kind: ObjectKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let (file, path) = self.open(kind, name)?;
        read_range(&file, &path, offset, len)
    }

    fn open_reader<'a>(
        &'a self,
        kind: ObjectKind,
        name: &str,
    ) -> Result<Box<dyn RangeReader + 'a>> {
        let (file, path) = self.open(kind, name)?;
        Ok(Box::new(FileReader { file, path }))
    }

    fn prepare(&self) -> Result<()> {
        for kind in [
            ObjectKind::Pack,
            ObjectKind::Snapshot,
            ObjectKind::Lock,
            ObjectKind::Index,
        ] {
            fsutil::ensure_dir(&self.kind_dir(kind))?;
        }
        // The new directory itself must survive a crash, not only its contents.
        fsutil::sync_dir(self.root.parent().unwrap_or(Path::new("/")))
    }

    fn remove_stale_temporaries(&self) -> Result<()> {
        use std::time::Duration;
        let mut dirs = vec![
            (self.root.clone(), Duration::ZERO),
            (self.kind_dir(ObjectKind::Snapshot), Duration::ZERO),
            (self.kind_dir(ObjectKind::Pack), Duration::ZERO),
            (self.kind_dir(ObjectKind::Instance), Duration::ZERO),
            (self.kind_dir(ObjectKind::Token), Duration::ZERO),
            (self.kind_dir(ObjectKind::Index), Duration::ZERO),
            (self.kind_dir(ObjectKind::Run), Duration::ZERO),
            (self.kind_dir(ObjectKind::Wal), Duration::ZERO),
            // A process may be writing its lock file right now, before it finds the exclusive lock.
            (self.kind_dir(ObjectKind::Lock), Duration::from_secs(60)),
        ];
        dirs.extend(
            subdirs(&self.kind_dir(ObjectKind::Pack))?
                .into_iter()
                .map(|d| (d, Duration::ZERO)),
        );
        for (d, min_age) in dirs {
            let Ok(entries) = fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let old_enough = || {
                    e.metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age >= min_age)
                };
                if e.file_name().to_string_lossy().starts_with(".tmp-") && old_enough() {
                    fsutil::remove_durable(&e.path())?;
                }
            }
        }
        Ok(())
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    /// A read costs a system call, not a round trip: runs merge only small gaps, and one read per core is
    /// in flight (the decoding is the work).
    fn read_plan(&self) -> super::ReadPlan {
        super::ReadPlan {
            gap: LOCAL_MERGE_GAP,
            max_run: 1 << 20,
            parallel: 2 * rayon::current_num_threads(),
            small_parallel: 2 * rayon::current_num_threads(),
            // A pack read twice costs a second system call, not a round trip: small batches keep few files
            // open.
            batch_files: crate::restore::files::BATCH_FILES,
            batch_chunks: crate::restore::files::BATCH_CHUNKS,
        }
    }

    fn stat(&self, kind: ObjectKind, name: &str) -> Result<Option<u64>> {
        check_name(kind, name)?;
        let path = self.path(kind, name);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<(String, u64)>> {
        let dir = self.kind_dir(kind);
        let mut out = Vec::new();
        if kind == ObjectKind::Config {
            if let Some(n) = self.stat(kind, "config")? {
                out.push(("config".to_string(), n));
            }
            return Ok(out);
        }
        let dirs = if kind.sharded() {
            subdirs(&dir)?
        } else {
            vec![dir]
        };
        for d in dirs {
            list_files(kind, &d, &mut out)?;
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, kind: ObjectKind, name: &str) -> Result<()> {
        check_name(kind, name)?;
        fsutil::remove_durable(&self.path(kind, name))
    }
}

/// Reads `len` bytes at `offset` of an open object file.
fn read_range(file: &File, path: &Path, offset: u64, len: u64) -> Result<Vec<u8>> {
    let want = usize::try_from(len)
        .map_err(|_| Error::Invalid(format!("read of {len} bytes is too large")))?;
    match fsutil::read_exact_at_new(file, offset, want) {
        Ok(buf) => Ok(buf),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            let size = file.metadata().at(path)?.len();
            Err(short_object(path.display().to_string(), size, offset, len))
        }
        Err(e) => Err(Error::io(path, e)),
    }
}

/// An object file kept open for many positional reads.
struct FileReader {
    file: File,
    path: PathBuf,
}

impl RangeReader for FileReader {
    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        read_range(&self.file, &self.path, offset, len)
    }

    fn will_need(&self, ranges: &[(u64, u64)]) {
        for &(offset, len) in ranges {
            fsutil::read_ahead(&self.file, offset, len);
        }
    }
}

/// The sub-directories of `dir` (none when `dir` is missing).
fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.at(dir)?;
        if e.file_type().at(e.path())?.is_dir() {
            out.push(e.path());
        }
    }
    Ok(out)
}

/// Appends the valid object files of `dir` with their sizes.
fn list_files(kind: ObjectKind, dir: &Path, out: &mut Vec<(String, u64)>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for e in entries {
        let e = e.at(dir)?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !kind.valid_name(&name) {
            continue;
        }
        match e.metadata() {
            Ok(m) if m.is_file() => out.push((name, m.len())),
            Ok(_) => {}
            // Deleted between the listing and the stat (a concurrent prune): not an object any more.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(Error::io(e.path(), err)),
        }
    }
    Ok(())
}

/// A streamed object: a temporary file in the kind's directory until [`finish`](ObjectWriter::finish).
struct LocalWriter {
    backend_root: PathBuf,
    kind: ObjectKind,
    out: BufWriter<tempfile::NamedTempFile>,
}

impl Write for LocalWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl ObjectWriter for LocalWriter {
    fn finish(self: Box<Self>, name: &str) -> Result<u64> {
        check_name(self.kind, name)?;
        let path = self.backend_root.join(self.kind.key(name));
        let tmp = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&path, e.into_error()))?;
        let file = tmp.as_file();
        file.sync_all().at(tmp.path())?;
        let size = file.metadata().at(tmp.path())?.len();
        // Durable now: its pages are clean and will not be read back by this process.
        fsutil::drop_cached(file);
        let dir = path.parent().unwrap_or(&self.backend_root).to_path_buf();
        let tmp_dir = tmp.path().parent().map(Path::to_path_buf);
        fsutil::ensure_dir(&dir)?;
        tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
        fsutil::sync_dir(&dir)?;
        // The temporary name's removal too, when it lived in another directory (a pack's shard).
        if let Some(t) = tmp_dir.filter(|t| *t != dir) {
            fsutil::sync_dir(&t)?;
        }
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_backend_contract() {
        let dir = tempfile::tempdir().unwrap();
        super::super::contract::holds_for(&LocalBackend::new(dir.path().join("repo")));
    }

    #[test]
    fn lists_skip_temporary_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        let _open = b.writer(ObjectKind::Pack).unwrap();
        fs::create_dir_all(dir.path().join("packs/ab")).unwrap();
        fs::write(dir.path().join("packs/ab/notes.txt"), b"x").unwrap();
        fs::write(dir.path().join("packs/ab/.tmp-123"), b"x").unwrap();
        assert!(b.list(ObjectKind::Pack).unwrap().is_empty());
    }

    #[test]
    fn a_pack_lands_in_its_shard_directory() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        let name = crate::hashing::Id::of(b"p").to_hex();
        b.put(ObjectKind::Pack, &name, b"p").unwrap();
        assert!(dir
            .path()
            .join("packs")
            .join(&name[..2])
            .join(&name)
            .is_file());
    }
}
