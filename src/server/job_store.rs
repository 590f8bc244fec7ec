//! Job records that outlive the server: each job of `cairn serve` is written, as JSON, to this host's cache
//! directory of the repository (`<cache>/serve-jobs/<id>.json`, see [`crate::repo::repo_cache_dir`]), when it
//! starts and when it ends. They are not repository objects: a job is one server's, on one host, and the
//! run log (format-spec section 8.3) remains the history that every host shares.
//!
//! Ownership: the server that holds the exclusive `flock` on `<dir>/server.lock` owns the records. The
//! kernel drops that lock with the process however it dies (even `kill -9`), so a server that gets it knows
//! that no other server is running with these records: every record still `queued` or `running` belongs to a
//! server that died under it, and becomes `interrupted` (its work was cut short; a backup wrote no snapshot,
//! since a snapshot is the last thing a backup writes). A second server on the same repository and host
//! does not get the lock and keeps its jobs in memory only, touching no record.
//!
//! Invariants: records are written whole (temporary file and rename, [`fsutil::write_durable`]); all writes
//! of one job happen on that job's own blocking thread, in order; ids are `job-<n>` and the owner continues
//! after the highest recorded `n` (a record whose `n` is not plain digits up to [`MAX_NUMBER`] is ignored),
//! so an id is never reused. At most [`KEEP`] records are kept, newest first.
//! A record that does not parse is skipped with a warning (it is this host's cache, not data).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::repo::Repository;

/// Records kept (older ones are deleted when the server starts).
pub const KEEP: usize = 500;

/// Name of the store's directory inside the cache directory.
const DIR: &str = "serve-jobs";
const LOCK: &str = "server.lock";

/// The records of the server that owns them.
pub struct JobStore {
    dir: PathBuf,
    /// Holds the exclusive flock for the life of the server.
    _lock: File,
}

/// Whether the flock was taken.
enum Locked {
    Yes(File),
    /// Another live process holds it.
    Busy,
}

/// Takes the exclusive flock on `path` without waiting.
fn try_flock(path: &Path) -> Result<Locked> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .at(path)?;
    fsutil::make_private(path);
    // SAFETY: flock only acts on the descriptor, which stays open (owned by `file`) for the call.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(Locked::Yes(file));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(Locked::Busy)
    } else {
        Err(Error::io(path, e))
    }
}

/// Highest job number: far beyond what any server numbers, far below where counting on would overflow. A
/// record claiming more (a tampered cache) is not a job record.
pub const MAX_NUMBER: u64 = 1 << 48;

/// The number of a `job-<n>` id: `n` in plain decimal digits (no sign), at most [`MAX_NUMBER`].
pub fn number_of(id: &str) -> Option<u64> {
    let digits = id.strip_prefix("job-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|n| *n <= MAX_NUMBER)
}

impl JobStore {
    /// Opens the store of `repo`'s jobs on this host. `Ok(None)`: another server owns it.
    pub fn open(repo: &Repository) -> Result<Option<JobStore>> {
        JobStore::open_in(&repo.cache_dir()?.join(DIR))
    }

    fn open_in(dir: &Path) -> Result<Option<JobStore>> {
        fsutil::ensure_dir(dir)?;
        match try_flock(&dir.join(LOCK))? {
            Locked::Yes(file) => Ok(Some(JobStore {
                dir: dir.to_path_buf(),
                _lock: file,
            })),
            Locked::Busy => Ok(None),
        }
    }

    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Every record, oldest first (by id number); unreadable ones are reported on stderr and skipped.
    pub fn load(&self) -> Result<Vec<serde_json::Value>> {
        let mut records = Vec::new();
        for entry in std::fs::read_dir(&self.dir).at(&self.dir)? {
            let entry = entry.at(&self.dir)?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let Some(n) = number_of(id) else { continue };
            let path = entry.path();
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    serde_json::from_slice::<serde_json::Value>(&b).map_err(|e| e.to_string())
                })
                .and_then(|v| match v["id"].as_str() {
                    Some(i) if i == id => Ok(v),
                    _ => Err("its id is not its name".to_string()),
                });
            match parsed {
                Ok(v) => records.push((n, v)),
                Err(e) => eprintln!(
                    "cairn serve: warning: job record {} skipped: {e}",
                    path.display()
                ),
            }
        }
        records.sort_by_key(|(n, _)| *n);
        Ok(records.into_iter().map(|(_, v)| v).collect())
    }

    /// Writes (or replaces) the record of a job.
    pub fn save(&self, record: &serde_json::Value) -> Result<()> {
        let id = record["id"].as_str().unwrap_or_default();
        if number_of(id).is_none() {
            return Err(Error::Invalid(format!("job id {id:?}")));
        }
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| Error::Invalid(e.to_string()))?;
        fsutil::write_durable(&self.path_of(id), &bytes)
    }

    /// Deletes the record of a job (one beyond [`KEEP`]).
    pub fn remove(&self, id: &str) -> Result<()> {
        let path = self.path_of(id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_second_owner_is_refused_while_the_first_lives_and_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open_in(dir.path()).unwrap().unwrap();
        assert!(JobStore::open_in(dir.path()).unwrap().is_none());
        store
            .save(&json!({"id": "job-10", "status": "running"}))
            .unwrap();
        store
            .save(&json!({"id": "job-9", "status": "completed"}))
            .unwrap();
        std::fs::write(dir.path().join("job-11.json"), b"{torn").unwrap();
        std::fs::write(dir.path().join("job-12.json"), br#"{"id": "job-1"}"#).unwrap();
        let ids: Vec<_> = store
            .load()
            .unwrap()
            .iter()
            .map(|v| v["id"].clone())
            .collect();
        assert_eq!(ids, vec![json!("job-9"), json!("job-10")]);
        assert!(store.save(&json!({"id": "../x"})).is_err());
        store.remove("job-9").unwrap();
        store.remove("job-9").unwrap();
        drop(store);
        // The owner gone, the next one gets the records.
        let again = JobStore::open_in(dir.path()).unwrap().unwrap();
        assert_eq!(again.load().unwrap().len(), 1);
    }
}
