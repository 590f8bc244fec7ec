//! Repository locks (format-spec/README.md, "Locks"): a JSON file per holder under `locks/`, recording pid,
//! host, time and mode. Backups and readers (check, restore, dump, ls, export) take shared locks and may run
//! together; prune and repair take an exclusive lock, so they never delete or move data under a reader. A lock
//! is stale when its process is dead on this host or it was not refreshed for [`STALE_AFTER`]; stale locks are
//! ignored and removed by `cairn unlock`.
//!
//! Acquisition: write our lock file first, then look at the others; on a conflict, remove ours and fail. Two
//! racing processes may both fail, but never both succeed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::fsutil;

/// A lock not refreshed for this long is stale, whatever its pid.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// Holders rewrite their lock file this often.
const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

/// Contents of a lock file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub pid: u32,
    pub host: String,
    pub time: DateTime<Utc>,
    pub exclusive: bool,
    pub command: String,
}

impl LockInfo {
    /// True if the holder is certainly gone.
    pub fn is_stale(&self, now: DateTime<Utc>) -> bool {
        let age = now
            .signed_duration_since(self.time)
            .to_std()
            .unwrap_or(Duration::ZERO);
        if age > STALE_AFTER {
            return true;
        }
        self.host == hostname() && !process_alive(self.pid)
    }

    fn describe(&self) -> String {
        let mode = if self.exclusive {
            "exclusive"
        } else {
            "shared"
        };
        format!(
            "{mode} lock by `{}` (pid {} on {}, since {})",
            self.command,
            self.pid,
            self.host,
            self.time.to_rfc3339()
        )
    }
}

/// A held lock; released (its file removed) on drop.
pub struct LockGuard {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Takes a shared or exclusive lock on the repository at `root`.
pub fn acquire(root: &Path, exclusive: bool, command: &str) -> Result<LockGuard> {
    let dir = root.join("locks");
    fsutil::ensure_dir(&dir)?;
    let info = LockInfo {
        pid: std::process::id(),
        host: hostname(),
        time: Utc::now(),
        exclusive,
        command: command.to_string(),
    };
    let path = dir.join(crate::config::random_hex(16));
    write_lock(&path, &info)?;
    let guard = LockGuard {
        path: path.clone(),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let now = Utc::now();
    for (other_path, other) in read_locks(&dir)? {
        if other_path == path || other.is_stale(now) {
            continue;
        }
        if exclusive || other.exclusive {
            return Err(Error::Locked(other.describe()));
        }
    }
    spawn_refresher(path, info, guard.stop.clone());
    Ok(guard)
}

/// Takes a reader's shared lock, which keeps prune and repair (exclusive) from deleting or moving packs while
/// it reads. Where no lock file can be written (a read-only mount or directory, a full disk) the reader goes on
/// without one, after making sure no exclusive lock is held: a repository that cannot be written from here
/// cannot be pruned from here either, and refusing to read it would leave a read-only copy unrestorable.
/// (A writer elsewhere, e.g. the owner of a directory we may only read, could still prune; its own lock
/// check cannot see us, which is the price of reading what we cannot write.)
pub fn acquire_reader(root: &Path, command: &str) -> Result<Option<LockGuard>> {
    match acquire(root, false, command) {
        Ok(guard) => Ok(Some(guard)),
        Err(Error::Io { source, .. }) if fsutil::is_unwritable(&source) => {
            let now = Utc::now();
            let held = read_locks(&root.join("locks"))?
                .into_iter()
                .find(|(_, other)| other.exclusive && !other.is_stale(now));
            match held {
                Some((_, other)) => Err(Error::Locked(other.describe())),
                None => Ok(None),
            }
        }
        Err(e) => Err(e),
    }
}

fn write_lock(path: &Path, info: &LockInfo) -> Result<()> {
    let bytes = serde_json::to_vec(info).map_err(|e| Error::corrupt("lock", e))?;
    fsutil::write_durable(path, &bytes)
}

/// Keeps a long operation's lock fresh so other hosts do not take it for stale.
fn spawn_refresher(path: PathBuf, mut info: LockInfo, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let tick = Duration::from_secs(1);
        let mut waited = Duration::ZERO;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(tick);
            waited += tick;
            if waited >= REFRESH_EVERY && !stop.load(Ordering::Relaxed) {
                waited = Duration::ZERO;
                info.time = Utc::now();
                let _ = write_lock(&path, &info);
            }
        }
    });
}

/// Every readable lock file in `dir`; unreadable or undecodable ones are reported as stale placeholders so
/// that `unlock` can clear them.
pub fn read_locks(dir: &Path) -> Result<Vec<(PathBuf, LockInfo)>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for e in entries {
        let e = e.at(dir)?;
        let name = e.file_name();
        if name.to_string_lossy().starts_with(".tmp-") {
            continue;
        }
        let info = std::fs::read(e.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<LockInfo>(&b).ok())
            .unwrap_or(LockInfo {
                pid: 0,
                host: "?".into(),
                time: DateTime::<Utc>::MIN_UTC,
                exclusive: false,
                command: "unreadable lock file".into(),
            });
        out.push((e.path(), info));
    }
    Ok(out)
}

/// Removes stale locks (or every lock with `all`); returns the descriptions of those removed.
pub fn unlock(root: &Path, all: bool) -> Result<Vec<String>> {
    let now = Utc::now();
    let mut removed = Vec::new();
    for (path, info) in read_locks(&root.join("locks"))? {
        if all || info.is_stale(now) {
            fsutil::remove_durable(&path)?;
            removed.push(info.describe());
        }
    }
    Ok(removed)
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission; it sends nothing.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_locks_coexist_exclusive_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let a = acquire(dir.path(), false, "backup").unwrap();
        let _b = acquire(dir.path(), false, "backup").unwrap();
        assert!(matches!(
            acquire(dir.path(), true, "prune"),
            Err(Error::Locked(_))
        ));
        drop(a);
        drop(_b);
        let x = acquire(dir.path(), true, "prune").unwrap();
        assert!(matches!(
            acquire(dir.path(), false, "backup"),
            Err(Error::Locked(_))
        ));
        drop(x);
        assert!(read_locks(&dir.path().join("locks")).unwrap().is_empty());
    }

    #[test]
    fn a_reader_shares_with_backups_and_excludes_prune() {
        let dir = tempfile::tempdir().unwrap();
        let _backup = acquire(dir.path(), false, "backup").unwrap();
        let reader = acquire_reader(dir.path(), "check").unwrap();
        assert!(reader.is_some());
        assert!(matches!(
            acquire(dir.path(), true, "prune"),
            Err(Error::Locked(_))
        ));
    }

    #[test]
    fn dead_pid_lock_is_stale_and_unlock_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        std::fs::create_dir_all(&locks).unwrap();
        let dead = LockInfo {
            pid: 999_999_999,
            host: hostname(),
            time: Utc::now(),
            exclusive: true,
            command: "prune".into(),
        };
        write_lock(&locks.join("dead"), &dead).unwrap();
        let _shared = acquire(dir.path(), false, "backup").expect("a dead holder does not block");
        assert_eq!(unlock(dir.path(), false).unwrap().len(), 1);
    }
}
