//! This host's record of its own kernel boots (format-spec/README.md, "Locks"), so that a lock left by a
//! process of an earlier boot (the machine crashed or rebooted during a backup) is known stale at once
//! rather than after [`super::STALE_AFTER`].
//!
//! What this module owns: the file `<cache dir>/cairn/boot-ids` (the user's cache directory,
//! [`crate::repo::cache_dir`]), one line per boot this user's cairn ran under, oldest first, at most
//! [`MAX_BOOTS`] lines: `<boot id> <machine id>`, the contents of `/proc/sys/kernel/random/boot_id` and of
//! `/etc/machine-id` (`-` where there is none). A process that takes a lock records its boot first
//! ([`record_current`]), so every lock this host's cairn can have written names a recorded boot.
//!
//! Why a record and not the host name alone: two machines or containers can share a host name, and a boot id
//! we never ran under may be another machine's current one. A boot id we did run under, other than the
//! current one, is over: its processes are dead. The machine id guards a cache directory shared by several
//! machines (a home directory on NFS): only the boots recorded with our machine id count.
//!
//! Invariants: best effort: a missing, unreadable or unwritable record never fails a command, it only leaves
//! a lock to be judged by its age (the safe side). Only a regular file of the effective user that nobody else
//! may write is believed (another user must not be able to declare our live locks stale), and it is read
//! with a bound; it is rewritten whole and atomically (temporary file, rename).

use std::io::Read;
use std::path::{Path, PathBuf};

/// Boots kept in the record: enough for years of reboots between two runs of a cairn command on a host that
/// runs one at least once per boot; older boots' locks are stale by age long since.
pub(crate) const MAX_BOOTS: usize = 64;
/// The record is a few KiB at most; a larger file is not one.
const MAX_LEN: u64 = 16 * 1024;

/// Adds the current boot to this host's record unless it is there already (once per process).
pub(crate) fn record_current() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let (Some(boot), Some(path)) = (current_boot(), record_path()) {
            let _ = record(&path, &boot, &machine_id());
        }
    });
}

/// The boot ids of this machine's earlier boots in the record (never `current`).
pub(crate) fn earlier_boots(current: &str) -> Vec<String> {
    let Some(path) = record_path() else {
        return Vec::new();
    };
    let machine = machine_id();
    read(&path)
        .into_iter()
        .filter(|(boot, m)| *m == machine && boot != current)
        .map(|(boot, _)| boot)
        .collect()
}

fn record(path: &Path, boot: &str, machine: &str) -> crate::Result<()> {
    let mut entries = read(path);
    if entries.iter().any(|(b, m)| b == boot && m == machine) {
        return Ok(());
    }
    entries.push((boot.to_string(), machine.to_string()));
    let skip = entries.len().saturating_sub(MAX_BOOTS);
    let text: String = entries
        .iter()
        .skip(skip)
        .map(|(b, m)| format!("{b} {m}\n"))
        .collect();
    crate::fsutil::write_durable(path, text.as_bytes())
}

/// The record's well-formed lines, oldest first; nothing if the file is absent or not to be believed.
fn read(path: &Path) -> Vec<(String, String)> {
    let Some(text) = read_own(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let (boot, machine) = (fields.next()?, fields.next()?);
            (fields.next().is_none() && is_token(boot) && is_token(machine))
                .then(|| (boot.to_string(), machine.to_string()))
        })
        .collect()
}

/// The text of `path` if it is a regular file of the effective user that no one else may write.
fn read_own(path: &Path) -> Option<String> {
    let f = crate::fsutil::open_own(path, 0o022, MAX_LEN)?;
    let mut text = String::new();
    f.take(MAX_LEN).read_to_string(&mut text).ok()?;
    Some(text)
}

/// A boot id or machine id as the kernel and systemd write them: hex digits and dashes (`-` alone: none).
fn is_token(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

fn record_path() -> Option<PathBuf> {
    crate::repo::cache_dir(Path::new("cairn"))
        .ok()
        .map(|d| d.join("boot-ids"))
}

fn current_boot() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(boot.trim().to_string()).filter(|b| is_token(b))
}

/// `/etc/machine-id` (systemd), else D-Bus's copy, else `-`.
fn machine_id() -> String {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| is_token(s))
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_keeps_each_boot_once_and_at_most_max_boots() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boot-ids");
        record(&path, "aaaa-1", "a1").unwrap();
        record(&path, "aaaa-1", "a1").unwrap();
        record(&path, "aaaa-1", "a2").unwrap();
        assert_eq!(read(&path).len(), 2);
        for i in 0..2 * MAX_BOOTS {
            record(&path, &format!("b-{i:x}"), "a1").unwrap();
        }
        let kept = read(&path);
        assert_eq!(kept.len(), MAX_BOOTS);
        assert_eq!(kept.last().unwrap().0, format!("b-{:x}", 2 * MAX_BOOTS - 1));
    }

    #[test]
    fn garbage_lines_and_a_file_others_may_write_are_not_believed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boot-ids");
        std::fs::write(&path, "ab-12 a1\nnot hex!! a1\nab-13\nab-14 a1 extra\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read(&path), vec![("ab-12".to_string(), "a1".to_string())]);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o622)).unwrap();
        assert!(read(&path).is_empty());
    }
}
