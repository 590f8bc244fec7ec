//! Repository locks (format-spec/README.md, "Locks"): a JSON object per holder under `locks/`, recording pid,
//! host, time and mode. Backups and readers (check, restore, dump, ls, export) take shared locks and may run
//! together; prune and repair take an exclusive lock, so they never delete or move data under a reader. A lock
//! is stale when its time is more than [`STALE_AFTER`] away from ours (not refreshed for that long, or dated
//! that far in the future by a host with a wrong clock), when its process is dead and was one this process
//! can see (same host name, kernel boot and pid namespace: [`pid_space`]), or when it was written under an
//! earlier boot of this host (same host name and pid namespace, a boot id this host recorded as its own and
//! that is not the current one: `boot_ids`): that boot is over, so a lock left by a crash or a reboot does not
//! block prune for half an hour. Stale locks are ignored and removed by `cairn unlock`.
//!
//! An instance run lock ([`acquire_instance`], a lock with `instance` set) is not a repository lock: it keeps
//! two runs of one instance (backups, housekeeping, in-place restores) apart and conflicts with nothing else.
//! Repository lock acquisition ignores it, so a run's own backup and prune lock under it as usual.
//!
//! Acquisition: write our lock object first, then look at the others; on a conflict, remove ours and fail.
//! Two racing processes may both fail, but never both succeed. Lock objects are ordinary repository objects
//! (written, listed and deleted through the [`Backend`]), so the rule holds wherever the repository lives.
//!
//! A command working on an opened [`Repository`] locks it with [`acquire_on`] / [`acquire_reader_on`], which
//! bring an object-store repository's index cache up to date again once the lock is held: the cache was
//! read when the repository was opened, before the lock (or not at all: [`Repository::open_unsynced`], for
//! commands that lock right after opening), and another host's prune may have deleted or moved
//! packs (or forgotten snapshots) in between. Only under the lock is the cache's view safe to act on: a
//! backup deduplicating against a deleted blob would write a snapshot naming data that is gone, a reader
//! would take a moved pack for damage. (A local repository's cache is the one file every process shares.)
//!
//! A held lock can be lost: a holder that was suspended (a stopped process, a paused VM, a laptop asleep)
//! or could not rewrite its lock for long enough may have been taken for stale by another host, which then
//! pruned (or backed up) as if it were gone. The holder cannot undo that by refreshing again, so a lock whose
//! refresh fell [`LOST_AFTER`] behind, or whose object someone removed, stays lost: every commit point (a
//! snapshot saved, a pack or index object or snapshot deleted: [`Repository::ensure_locks_held`]) fails with
//! [`Error::LockLost`] rather than write a snapshot naming data a prune deleted, or delete data a backup
//! just deduplicated against.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, ObjectKind, SharedBackend};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::repo::Repository;

mod boot_ids;

/// A lock not refreshed for this long is stale, whatever its pid.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// Holders rewrite their lock file this often.
const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);
/// A holder whose last rewrite of its lock is this old takes the lock for lost. Half of [`STALE_AFTER`]: the
/// other half covers clock skew between hosts and the time from a holder's check to the write it guards.
pub const LOST_AFTER: Duration = Duration::from_secs(15 * 60);

/// The lock timings in force. `CAIRN_TEST_LOCK_STALE_SECS` shortens them all in proportion, for the test
/// suite only: every process sharing a repository must use the same timings (format-spec "Locks"), and
/// users never set it.
#[derive(Debug, Clone, Copy)]
struct Timing {
    stale: Duration,
    refresh: Duration,
    lost: Duration,
    /// How often the refresher wakes (to notice the end of the command, or a retry being due).
    tick: Duration,
}

fn timing() -> Timing {
    static T: OnceLock<Timing> = OnceLock::new();
    *T.get_or_init(|| {
        let stale = std::env::var("CAIRN_TEST_LOCK_STALE_SECS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&s| s >= 2)
            .map(Duration::from_secs)
            .unwrap_or(STALE_AFTER);
        let scale = |d: Duration| d.mul_f64(stale.as_secs_f64() / STALE_AFTER.as_secs_f64());
        let refresh = scale(REFRESH_EVERY);
        Timing {
            stale,
            refresh,
            lost: scale(LOST_AFTER),
            tick: (refresh / 4).min(Duration::from_secs(1)),
        }
    })
}

/// Contents of a lock file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub pid: u32,
    pub host: String,
    pub time: DateTime<Utc>,
    pub exclusive: bool,
    pub command: String,
    /// Which processes `pid` is a pid among: the kernel's boot id and the pid namespace of the holder
    /// ([`pid_space`]). Containers often share a host name (or run with the host's), and a pid is only
    /// meaningful within its namespace: without this a container's cairn would take a live lock of another
    /// container for a dead one and prune under its backup. Absent in locks written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_space: Option<String>,
    /// Set on an instance run lock ([`acquire_instance`]): the instance whose run (backup, housekeeping,
    /// in-place restore) the holder is doing. Such a lock conflicts only with another run lock of the same
    /// instance, never with shared or exclusive repository locks. Absent in every other lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

impl LockInfo {
    /// True if the holder is certainly gone.
    ///
    /// The age counts both ways: a lock dated more than [`STALE_AFTER`] in the future comes from a host whose
    /// clock is wrong (or is garbage): clamped at zero it would block prune for ever, and a host whose clock
    /// is as far behind already has its locks taken for stale by the others, so the rule is symmetric.
    pub fn is_stale(&self, now: DateTime<Utc>) -> bool {
        let skew = now
            .signed_duration_since(self.time)
            .num_seconds()
            .unsigned_abs();
        if skew > timing().stale.as_secs() {
            return true;
        }
        self.host == hostname()
            && ((self.pid_is_ours() && !process_alive(self.pid))
                || self.written_in_an_earlier_boot())
    }

    /// Whether `pid` names a process this one can see: same kernel boot and pid namespace. A lock that does
    /// not say (written by an older cairn) is judged by its age alone, the safe side.
    fn pid_is_ours(&self) -> bool {
        matches!((&self.pid_space, pid_space()), (Some(theirs), Some(ours)) if *theirs == ours)
    }

    /// Whether the holder ran under an earlier boot of this host ([`boot_ids`]): same pid namespace, another
    /// boot id that this host recorded as its own. That boot is over (a crash or a reboot), so every process
    /// of it is dead, whatever the lock's age. (The caller has checked the host name.)
    fn written_in_an_earlier_boot(&self) -> bool {
        let (Some(theirs), Some(ours)) = (&self.pid_space, pid_space()) else {
            return false;
        };
        let (Some((their_boot, their_ns)), Some((our_boot, our_ns))) =
            (theirs.split_once('/'), ours.split_once('/'))
        else {
            return false;
        };
        their_ns == our_ns
            && their_boot != our_boot
            && boot_ids::earlier_boots(our_boot)
                .iter()
                .any(|b| b == their_boot)
    }

    fn describe(&self) -> String {
        if let Some(instance) = &self.instance {
            return format!(
                "instance {instance} is being run by `{}` (pid {} on {}, since {})",
                self.command,
                self.pid,
                self.host,
                self.time.to_rfc3339()
            );
        }
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

/// A held lock; released (its object removed) on drop.
pub struct LockGuard {
    backend: SharedBackend,
    name: String,
    stop: Arc<AtomicBool>,
    hold: Arc<Hold>,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.hold.state().released = true;
        let _ = self.backend.delete(ObjectKind::Lock, &self.name);
    }
}

impl LockGuard {
    /// Fails with [`Error::LockLost`] once the lock may have been taken for stale by another process (see
    /// the module docs); a lost lock stays lost.
    pub fn ensure_held(&self) -> Result<()> {
        self.hold.ensure_held()
    }

    /// A handle a [`Repository`] keeps to check the lock at its commit points while the guard lives.
    pub(crate) fn watch(&self) -> Weak<Hold> {
        Arc::downgrade(&self.hold)
    }
}

/// What a holder knows of its own lock: when it last wrote it (by both clocks: the monotonic one stops
/// while the machine sleeps, the wall clock, which other hosts judge by, does not), and whether it is lost.
pub(crate) struct Hold {
    command: String,
    state: Mutex<HoldState>,
}

struct HoldState {
    written: Instant,
    written_at: DateTime<Utc>,
    lost: Option<String>,
    /// The guard was dropped: nothing is done under this lock any more.
    released: bool,
}

impl Hold {
    fn new(command: &str, written_at: DateTime<Utc>) -> Hold {
        Hold {
            command: command.to_string(),
            state: Mutex::new(HoldState {
                written: Instant::now(),
                written_at,
                lost: None,
                released: false,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HoldState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a rewrite of the lock, unless the one before was already too long ago.
    fn written(&self, at: DateTime<Utc>) {
        let mut st = self.state();
        if Self::overdue(&mut st) {
            return;
        }
        st.written = Instant::now();
        st.written_at = at;
    }

    fn lose(&self, why: String) {
        let mut st = self.state();
        st.lost.get_or_insert(why);
    }

    fn is_lost(&self) -> bool {
        let mut st = self.state();
        Self::overdue(&mut st)
    }

    /// Whether the lock is lost, marking it so when its last rewrite is [`LOST_AFTER`] old by either clock.
    fn overdue(st: &mut HoldState) -> bool {
        if st.lost.is_none() {
            let wall = Utc::now()
                .signed_duration_since(st.written_at)
                .to_std()
                .unwrap_or_default();
            let since = st.written.elapsed().max(wall);
            if since >= timing().lost {
                st.lost = Some(format!(
                    "it was last refreshed {} s ago, so another process may have taken it for stale",
                    since.as_secs()
                ));
            }
        }
        st.lost.is_some()
    }

    pub(crate) fn ensure_held(&self) -> Result<()> {
        let mut st = self.state();
        if !st.released && Self::overdue(&mut st) {
            let why = st.lost.clone().unwrap_or_default();
            return Err(Error::LockLost(format!(
                "`{}` lost its repository lock: {why}",
                self.command
            )));
        }
        Ok(())
    }
}

/// Takes a shared or exclusive lock on the repository stored in `backend`. Instance run locks
/// ([`acquire_instance`]) are not repository locks and never conflict with it.
pub fn acquire(backend: &SharedBackend, exclusive: bool, command: &str) -> Result<LockGuard> {
    take(backend, new_info(exclusive, command, None), |other| {
        other.instance.is_none() && (exclusive || other.exclusive)
    })
}

fn new_info(exclusive: bool, command: &str, instance: Option<&str>) -> LockInfo {
    LockInfo {
        pid: std::process::id(),
        host: hostname(),
        time: Utc::now(),
        exclusive,
        command: command.to_string(),
        pid_space: pid_space(),
        instance: instance.map(str::to_string),
    }
}

/// The acquisition protocol (module docs): write `info`, then fail on any other live lock that
/// `conflicts`, removing ours again (the guard's drop).
fn take(
    backend: &SharedBackend,
    info: LockInfo,
    conflicts: impl Fn(&LockInfo) -> bool,
) -> Result<LockGuard> {
    // Before our lock names this boot, so a later boot of this host knows the lock for a dead one.
    boot_ids::record_current();
    let name = crate::config::random_hex(16);
    write_lock(backend.as_ref(), &name, &info)?;
    let guard = LockGuard {
        backend: backend.clone(),
        name: name.clone(),
        stop: Arc::new(AtomicBool::new(false)),
        hold: Arc::new(Hold::new(&info.command, info.time)),
    };
    let now = Utc::now();
    for (other_name, other) in read_locks(backend.as_ref())? {
        if other_name == name || other.is_stale(now) {
            continue;
        }
        if conflicts(&other) {
            return Err(Error::Locked(other.describe()));
        }
    }
    spawn_refresher(
        backend.clone(),
        name,
        info,
        guard.stop.clone(),
        Arc::downgrade(&guard.hold),
    );
    Ok(guard)
}

/// Takes a reader's shared lock, which keeps prune and repair (exclusive) from deleting or moving packs while
/// it reads. Where no lock object can be written (a read-only mount or directory, a full disk) the reader goes
/// on without one, after making sure no exclusive lock is held: a repository that cannot be written from here
/// cannot be pruned from here either, and refusing to read it would leave a read-only copy unrestorable.
/// (A writer elsewhere, e.g. the owner of a directory we may only read, could still prune; its own lock
/// check cannot see us, which is the price of reading what we cannot write.)
pub fn acquire_reader(backend: &SharedBackend, command: &str) -> Result<Option<LockGuard>> {
    match acquire(backend, false, command) {
        Ok(guard) => Ok(Some(guard)),
        Err(Error::Io { source, .. }) if fsutil::is_unwritable(&source) => {
            let now = Utc::now();
            let held = read_locks(backend.as_ref())?
                .into_iter()
                .find(|(_, other)| {
                    other.exclusive && other.instance.is_none() && !other.is_stale(now)
                });
            match held {
                Some((_, other)) => Err(Error::Locked(other.describe())),
                None => Ok(None),
            }
        }
        Err(e) => Err(e),
    }
}

/// [`acquire`] on an opened repository, then its cache brought up to date (see the module docs); the
/// repository checks the lock at its commit points while it is held.
pub fn acquire_on(repo: &Repository, exclusive: bool, command: &str) -> Result<LockGuard> {
    let guard = acquire(repo.backend(), exclusive, command)?;
    repo.watch_lock(&guard);
    refresh_cache(repo)?;
    Ok(guard)
}

/// [`acquire_reader`] on an opened repository, then its cache brought up to date (see the module docs).
pub fn acquire_reader_on(repo: &Repository, command: &str) -> Result<Option<LockGuard>> {
    let guard = acquire_reader(repo.backend(), command)?;
    if let Some(g) = &guard {
        repo.watch_lock(g);
    }
    refresh_cache(repo)?;
    Ok(guard)
}

/// Re-reads what changed in an object-store repository since its cache was synced at open.
fn refresh_cache(repo: &Repository) -> Result<()> {
    if repo.backend().local_root().is_none() {
        repo.sync_cache()?;
    }
    Ok(())
}

fn write_lock(backend: &dyn Backend, name: &str, info: &LockInfo) -> Result<()> {
    let bytes = serde_json::to_vec(info).map_err(|e| Error::corrupt("lock", e))?;
    backend.put(ObjectKind::Lock, name, &bytes)
}

/// Keeps a long operation's lock fresh so other hosts do not take it for stale: rewritten every
/// `refresh`, retried at every tick after a failure, and given up as lost (see [`Hold`]) once a rewrite is
/// too late or the object is gone (removed by `cairn unlock`, or by another host that took it for stale).
fn spawn_refresher(
    backend: SharedBackend,
    name: String,
    mut info: LockInfo,
    stop: Arc<AtomicBool>,
    hold: Weak<Hold>,
) {
    std::thread::spawn(move || {
        let t = timing();
        let mut last = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(t.tick);
            // The guard is the only owner of its hold: once it is dropped, the lock is no one's concern.
            let Some(hold) = hold.upgrade() else { break };
            if stop.load(Ordering::Relaxed) || hold.is_lost() {
                break;
            }
            if last.elapsed() < t.refresh {
                continue;
            }
            match backend.stat(ObjectKind::Lock, &name) {
                Ok(None) => {
                    hold.lose("its lock object was removed by another process".into());
                    break;
                }
                Ok(Some(_)) => {
                    info.time = Utc::now();
                    if write_lock(backend.as_ref(), &name, &info).is_ok() {
                        hold.written(info.time);
                        last = Instant::now();
                    }
                }
                Err(_) => {}
            }
        }
    });
}

/// Every lock object with its contents. One that does not decode (or is too large to be a lock) is reported
/// as a stale placeholder, so that `unlock` can clear it; one deleted since the listing is left out; one this
/// user may not read (another user's, in a repository several users share: PostgreSQL's `wal-fetch` beside
/// root's restore) as a live shared lock of unknown holder, which keeps out exclusive acquisitions only. Any
/// other failure to read one (an outage, a timeout) is an error: a live lock that could not be read must
/// never be taken for stale, or prune would delete under a running backup.
pub fn read_locks(backend: &dyn Backend) -> Result<Vec<(String, LockInfo)>> {
    let mut out = Vec::new();
    for (name, _) in backend.list(ObjectKind::Lock)? {
        let info = match backend.get(ObjectKind::Lock, &name) {
            Ok(b) => serde_json::from_slice::<LockInfo>(&b).unwrap_or_else(|_| placeholder()),
            Err(e) if crate::backend::is_not_found(&e) => continue,
            Err(e) if e.is_damage() => placeholder(),
            Err(e) if crate::repo::is_permission_denied(&e) => LockInfo {
                time: Utc::now(),
                command: "unknown: its lock file is not readable by this user".into(),
                ..placeholder()
            },
            Err(e) => return Err(e.with_context(format!("reading the lock {name}"))),
        };
        out.push((name, info));
    }
    Ok(out)
}

/// What stands for a lock object that does not decode: stale (dated at the beginning of time).
fn placeholder() -> LockInfo {
    LockInfo {
        pid: 0,
        host: "?".into(),
        time: DateTime::<Utc>::MIN_UTC,
        exclusive: false,
        command: "unreadable lock file".into(),
        pid_space: None,
        instance: None,
    }
}

/// Removes stale locks (or every lock with `all`); returns the descriptions of those removed.
pub fn unlock(backend: &dyn Backend, all: bool) -> Result<Vec<String>> {
    let now = Utc::now();
    let mut removed = Vec::new();
    for (name, info) in read_locks(backend)? {
        if all || info.is_stale(now) {
            backend.delete(ObjectKind::Lock, &name)?;
            removed.push(info.describe());
        }
    }
    Ok(removed)
}

/// Takes the run lock of instance `instance` (format-spec/README.md, "Locks"): held for the whole of one run
/// of that instance (a scheduled backup with its housekeeping, `instance backup`, an in-place restore with
/// its safety snapshot), so that no two processes, on this host or on any host sharing the repository, back
/// up or restore one instance at the same time: two pg_dumps against one production database, two
/// snapshots for one schedule slot, two retention passes racing. It conflicts only with a live run lock of
/// the same instance ([`Error::Locked`], naming the holder); the run still takes the repository's shared and
/// exclusive locks for its backup and prune as usual, and those ignore run locks, so the run's own prune is
/// not blocked by the run lock it holds. The same staleness rules as every lock apply.
pub fn acquire_instance(
    backend: &SharedBackend,
    instance: &str,
    command: &str,
) -> Result<LockGuard> {
    take(backend, new_info(false, command, Some(instance)), |other| {
        other.instance.as_deref() == Some(instance)
    })
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

/// This process's pid space: `<boot id>/<pid namespace>` (e.g. `0f6c…/pid:[4026531836]`), `None` where
/// `/proc` does not say. Two processes see each other's pids exactly when both parts are equal.
pub fn pid_space() -> Option<String> {
    static SPACE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    SPACE
        .get_or_init(|| {
            let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
            let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
            Some(format!("{}/{}", boot.trim(), ns.to_string_lossy()))
        })
        .clone()
}

pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // No signal: only whether the process exists (EPERM: it does, and is someone else's).
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalBackend;

    fn local(dir: &tempfile::TempDir) -> SharedBackend {
        Arc::new(LocalBackend::new(dir.path()))
    }

    #[test]
    fn shared_locks_coexist_exclusive_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let b = local(&dir);
        let a = acquire(&b, false, "backup").unwrap();
        let _b = acquire(&b, false, "backup").unwrap();
        assert!(matches!(acquire(&b, true, "prune"), Err(Error::Locked(_))));
        drop(a);
        drop(_b);
        let x = acquire(&b, true, "prune").unwrap();
        assert!(matches!(
            acquire(&b, false, "backup"),
            Err(Error::Locked(_))
        ));
        drop(x);
        assert!(read_locks(b.as_ref()).unwrap().is_empty());
    }

    #[test]
    fn a_reader_shares_with_backups_and_excludes_prune() {
        let dir = tempfile::tempdir().unwrap();
        let b = local(&dir);
        let _backup = acquire(&b, false, "backup").unwrap();
        let reader = acquire_reader(&b, "check").unwrap();
        assert!(reader.is_some());
        assert!(matches!(acquire(&b, true, "prune"), Err(Error::Locked(_))));
    }

    #[test]
    fn dead_pid_lock_is_stale_and_unlock_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let b = local(&dir);
        let dead = LockInfo {
            pid: 999_999_999,
            host: hostname(),
            time: Utc::now(),
            exclusive: true,
            command: "prune".into(),
            pid_space: pid_space(),
            instance: None,
        };
        assert!(
            dead.pid_space.is_some(),
            "/proc tells this host's pid space"
        );
        write_lock(b.as_ref(), "dead", &dead).unwrap();
        let _shared = acquire(&b, false, "backup").expect("a dead holder does not block");
        assert_eq!(unlock(b.as_ref(), false).unwrap().len(), 1);
    }

    #[test]
    fn a_pid_of_another_pid_namespace_or_an_older_lock_is_judged_by_age_alone() {
        let now = Utc::now();
        let holder = |pid_space: Option<String>, age_min: i64| LockInfo {
            pid: 999_999_999,
            host: hostname(),
            time: now - chrono::Duration::minutes(age_min),
            exclusive: true,
            command: "prune".into(),
            pid_space,
            instance: None,
        };
        // Another container with the same host name: its pid means nothing here.
        let other = pid_space().map(|s| format!("{s}-other"));
        assert!(!holder(other.clone(), 1).is_stale(now));
        assert!(!holder(None, 1).is_stale(now));
        assert!(holder(other, 31).is_stale(now));
        assert!(holder(None, 31).is_stale(now));
        assert!(holder(pid_space(), 1).is_stale(now));
        // Written and read back, the field survives; an older lock without it still parses.
        let json = serde_json::to_string(&holder(pid_space(), 1)).unwrap();
        let back: LockInfo = serde_json::from_str(&json).unwrap();
        assert_eq!(back.pid_space, pid_space());
        let old = r#"{"pid":1,"host":"h","time":"2026-12-01T00:00:00Z","exclusive":false,"command":"backup"}"#;
        assert!(serde_json::from_str::<LockInfo>(old)
            .unwrap()
            .pid_space
            .is_none());
    }

    #[test]
    fn an_instance_run_lock_conflicts_only_with_a_run_lock_of_the_same_instance() {
        let dir = tempfile::tempdir().unwrap();
        let b = local(&dir);
        let shop = acquire_instance(&b, "shop", "run-due").unwrap();
        // The run's own backup (shared) and housekeeping prune (exclusive), and a reader, go on beside it.
        drop(acquire(&b, false, "backup").unwrap());
        drop(acquire(&b, true, "prune").unwrap());
        assert!(acquire_reader(&b, "check").unwrap().is_some());
        // Another instance runs; the same one does not, and the message names the holder.
        let _blog = acquire_instance(&b, "blog", "daemon").unwrap();
        match acquire_instance(&b, "shop", "instance backup") {
            Err(Error::Locked(m)) => assert!(
                m.contains("shop")
                    && m.contains("run-due")
                    && m.contains(&std::process::id().to_string()),
                "{m}"
            ),
            other => panic!("not locked: {:?}", other.map(|_| ())),
        }
        // A failed attempt leaves no lock behind; releasing lets the next run in.
        assert_eq!(read_locks(b.as_ref()).unwrap().len(), 2);
        drop(shop);
        drop(acquire_instance(&b, "shop", "instance backup").unwrap());
    }

    #[test]
    fn a_lock_whose_last_rewrite_is_too_old_is_lost_for_good_and_a_fresh_one_is_held() {
        let fresh = Hold::new("backup", Utc::now());
        assert!(fresh.ensure_held().is_ok());
        // Last written before a sleep the monotonic clock did not see: the wall clock says it is too late.
        let late = Utc::now() - chrono::Duration::from_std(LOST_AFTER).unwrap();
        let slept = Hold::new("backup", late);
        match slept.ensure_held() {
            Err(Error::LockLost(m)) => {
                assert!(m.contains("`backup`") && m.contains("stale"), "{m}")
            }
            other => panic!("not lost: {other:?}"),
        }
        // A rewrite after that does not make it held again: a prune may already have run.
        slept.written(Utc::now());
        assert!(matches!(slept.ensure_held(), Err(Error::LockLost(_))));
        let removed = Hold::new("prune", Utc::now());
        removed.lose("its lock object was removed by another process".into());
        assert!(matches!(removed.ensure_held(), Err(Error::LockLost(m)) if m.contains("removed")));
    }

    #[test]
    fn a_repository_refuses_to_save_a_snapshot_or_delete_under_a_lost_lock() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(
            dir.path().join("repo"),
            crate::config::Config::new_default(),
        )
        .unwrap();
        let guard = acquire_on(&repo, true, "prune").unwrap();
        assert!(repo.ensure_locks_held().is_ok());
        guard
            .hold
            .lose("its lock object was removed by another process".into());
        assert!(matches!(
            repo.delete_object(ObjectKind::Pack, &"00".repeat(32)),
            Err(Error::LockLost(_))
        ));
        drop(guard);
        // Released, it is no longer this repository's concern.
        assert!(repo.ensure_locks_held().is_ok());
    }

    #[test]
    fn a_lock_that_cannot_be_read_for_now_is_never_taken_for_stale() {
        use crate::backend::fault::{Fault, FaultyBackend};
        let dir = tempfile::tempdir().unwrap();
        let inner = local(&dir);
        let _backup = acquire(&inner, false, "backup").unwrap();
        let faulty = FaultyBackend::new(inner.clone());
        let b: SharedBackend = Arc::new(faulty.clone());
        // The backup's lock times out when read: prune must fail, not go ahead as if it were stale.
        faulty.fail_read(1, Fault::Fail(std::io::ErrorKind::TimedOut));
        match acquire(&b, true, "prune") {
            Err(e) => assert!(e.to_string().contains("reading the lock"), "{e}"),
            Ok(_) => panic!("prune locked the repository while a backup held it"),
        }
        // Nor may unlock remove it.
        faulty.fail_read(1, Fault::Fail(std::io::ErrorKind::TimedOut));
        assert!(unlock(b.as_ref(), false).is_err());
        assert_eq!(read_locks(inner.as_ref()).unwrap().len(), 1);
        // Another user's lock, which this one may not read: it keeps prune out, not readers.
        // (Both reads of each acquisition fail: its own lock's and the backup's, in either order.)
        let denied = || {
            for nth in [1, 2] {
                faulty.fail_read(nth, Fault::Fail(std::io::ErrorKind::PermissionDenied));
            }
        };
        denied();
        assert!(
            matches!(acquire(&b, true, "prune"), Err(Error::Locked(m)) if m.contains("not readable"))
        );
        denied();
        assert!(acquire(&b, false, "wal-fetch").is_ok());
        faulty.heal();
        // A lock deleted between the listing and its read is gone, not an error.
        faulty.fail_read(1, Fault::Fail(std::io::ErrorKind::NotFound));
        assert!(read_locks(b.as_ref()).unwrap().is_empty());
        // Garbage is still stale (and removable).
        std::fs::write(dir.path().join("locks").join("garbage"), b"{not json").unwrap();
        let locks = read_locks(inner.as_ref()).unwrap();
        assert!(locks
            .iter()
            .any(|(n, i)| n == "garbage" && i.is_stale(Utc::now())));
    }
}
