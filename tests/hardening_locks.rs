//! Hardening of repository locks and of what a command leaves running, through the real binary: a lock whose
//! holder is certainly gone (dated far in the future by a wrong clock, or written under an earlier boot of
//! this host) must not block prune, and one that may be live must; a password command that is killed must
//! not leave its children behind.
//!
//! Locks are written by hand into a local repository's `locks/` directory, as a crashed process leaves them.
//! A holder that loses its lock (stopped past the stale age, or its lock removed) must save nothing: tested
//! with every process given short lock timings (`CAIRN_TEST_LOCK_STALE_SECS`), locally and in the S3 test
//! server.

mod harness;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::*;

/// A local encrypted repository in a fresh temp dir (locks are written by hand, so never an S3 one).
fn local_repo() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    ok(cairn(&repo).arg("init"));
    (dir, repo)
}

/// Writes the lock object `name` as a crashed holder leaves it.
fn put_lock(repo: &Path, name: &str, lock: &serde_json::Value) {
    fs::create_dir_all(repo.join("locks")).unwrap();
    fs::write(repo.join("locks").join(name), lock.to_string()).unwrap();
}

fn lock_names(repo: &Path) -> Vec<String> {
    fs::read_dir(repo.join("locks"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

fn exclusive_lock(
    host: &str,
    time: chrono::DateTime<chrono::Utc>,
    pid_space: Option<&str>,
) -> serde_json::Value {
    let mut lock = serde_json::json!({
        "pid": std::process::id(),
        "host": host,
        "time": time.to_rfc3339(),
        "exclusive": true,
        "command": "prune",
    });
    if let Some(space) = pid_space {
        lock["pid_space"] = space.into();
    }
    lock
}

fn this_host() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

fn current_boot() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_string()
}

/// This machine's id as the boot record names it: `/etc/machine-id`, else D-Bus's copy, else `-`.
fn machine_id() -> String {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into())
}

fn our_pid_namespace() -> String {
    fs::read_link("/proc/self/ns/pid")
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn a_lock_dated_far_in_the_future_is_stale_and_a_slightly_early_one_is_not() {
    let (_dir, repo) = local_repo();
    let now = chrono::Utc::now();
    // A host whose clock runs 10 minutes ahead holds a live lock: it is respected.
    put_lock(
        &repo,
        "skewed",
        &exclusive_lock("other-host", now + chrono::Duration::minutes(10), None),
    );
    fails(cairn(&repo).arg("prune"), 11);
    ok(cairn(&repo).arg("unlock"));
    assert_eq!(lock_names(&repo), ["skewed"]);
    fs::remove_file(repo.join("locks/skewed")).unwrap();

    // One dated two hours (or years) ahead is a wrong clock or garbage: it blocked prune for ever.
    for (name, ahead) in [
        ("hours", chrono::Duration::hours(2)),
        ("years", chrono::Duration::days(3650)),
    ] {
        put_lock(
            &repo,
            name,
            &exclusive_lock("other-host", now + ahead, None),
        );
        ok(cairn(&repo).arg("prune"));
        ok(cairn(&repo).arg("unlock"));
        assert!(
            lock_names(&repo).is_empty(),
            "{name}: {:?}",
            lock_names(&repo)
        );
    }
}

#[test]
fn a_lock_of_an_earlier_boot_of_this_host_is_stale_and_one_of_an_unknown_boot_is_not() {
    let (dir, repo) = local_repo();
    let cache = dir.path().join("cache");
    let with_cache = |args: &[&str]| {
        let mut c = cairn(&repo);
        c.env("XDG_CACHE_HOME", &cache).args(args);
        c
    };
    // An earlier boot of this machine, recorded as that boot's cairn did (format-spec, "Locks").
    let earlier = "0123abcd-0000-4000-8000-000000000001";
    let record = cache.join("cairn/boot-ids");
    fs::create_dir_all(record.parent().unwrap()).unwrap();
    fs::write(&record, format!("{earlier} {}\n", machine_id())).unwrap();
    fs::set_permissions(&record, fs::Permissions::from_mode(0o600)).unwrap();
    let boot = current_boot();

    let ns = our_pid_namespace();
    let now = chrono::Utc::now();
    // Fresh by its time (not stale by age), naming a pid that is alive now: of the earlier boot, it means
    // nothing.
    let from_earlier = format!("{earlier}/{ns}");
    put_lock(
        &repo,
        "crashed",
        &exclusive_lock(&this_host(), now, Some(&from_earlier)),
    );
    ok(&mut with_cache(&["prune"]));
    ok(&mut with_cache(&["unlock"]));
    assert!(lock_names(&repo).is_empty(), "{:?}", lock_names(&repo));
    // The command that locked added the boot it ran under, after the earlier one.
    let text = fs::read_to_string(&record).unwrap();
    assert_eq!(
        text,
        format!("{earlier} {m}\n{boot} {m}\n", m = machine_id()),
        "the record after a locking command"
    );

    // Not stale: a boot this host never recorded (another machine's, perhaps live), the recorded boot under
    // another host name or pid namespace, or a live process of this boot.
    let unknown = format!("0123abcd-0000-4000-8000-000000000002/{ns}");
    let other_ns = format!("{earlier}/pid:[1]");
    let this_boot = format!("{boot}/{ns}");
    for (name, host, space) in [
        ("unknown-boot", this_host(), unknown.as_str()),
        (
            "other-host",
            "other-host".to_string(),
            from_earlier.as_str(),
        ),
        ("other-namespace", this_host(), other_ns.as_str()),
        ("live", this_host(), this_boot.as_str()),
    ] {
        put_lock(&repo, name, &exclusive_lock(&host, now, Some(space)));
        fails(&mut with_cache(&["prune"]), 11);
        ok(&mut with_cache(&["unlock"]));
        assert_eq!(lock_names(&repo), [name]);
        fs::remove_file(repo.join("locks").join(name)).unwrap();
    }
}

/// Whether `pid` is gone (or a zombie nobody reaped yet: it runs no more).
fn gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_password_command_that_times_out_is_killed_with_its_children() {
    // No controlling terminal (setsid), as under the daemon or a timer: the command gets its own group.
    let mut unattended = Command::new("setsid");
    unattended.arg("-w").arg(cairn_bin()).arg("snapshots");
    times_out_leaving_no_child(unattended, "without a terminal");
    // On a terminal (a pty from `script`) the command stays in cairn's group, so that it may ask on
    // /dev/tty: what it started is found below it.
    let mut on_a_terminal = Command::new("script");
    on_a_terminal
        .args(["-q", "-e", "-c"])
        .arg(format!("{} snapshots", cairn_bin()))
        .arg("/dev/null");
    times_out_leaving_no_child(on_a_terminal, "on a terminal");
}

/// Runs `c` (cairn `snapshots`, started some way) with a password command that starts a long sleep
/// and then waits: cairn must fail with exit 12 after its timeout and leave the sleep killed.
fn times_out_leaving_no_child(mut c: Command, how: &str) {
    let (dir, repo) = local_repo();
    let pid_file = dir.path().join("sleep.pid");
    let err_file = dir.path().join("stderr");
    c.env("CAIRN_REPO", &repo).stdin(Stdio::null());
    with_password(&mut c)
        .env(
            "CAIRN_PASSWORD_COMMAND",
            format!("sleep 300 & echo $! > {}; wait", pid_file.display()),
        )
        .env("CAIRN_PASSWORD_TIMEOUT", "1");
    // `script` copies the terminal's output to its own stdout.
    let out_file = dir.path().join("stdout");
    c.stdout(fs::File::create(&out_file).unwrap())
        .stderr(fs::File::create(&err_file).unwrap());
    let started = Instant::now();
    let status = c.status().unwrap();
    let err = fs::read_to_string(&err_file).unwrap() + &fs::read_to_string(&out_file).unwrap();
    assert_eq!(status.code(), Some(12), "{how}: {err}");
    assert!(err.contains("CAIRN_PASSWORD_TIMEOUT"), "{how}: {err}");
    assert!(started.elapsed() < Duration::from_secs(30), "{how}");

    let pid: u32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while !gone(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left_running = !gone(pid);
    if left_running {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    assert!(
        !left_running,
        "{how}: the password command's child {pid} is still running"
    );
}

/// The lock timings every process of the lost-lock tests runs with: stale after 4 s (lost after 2 s,
/// refreshed every 0.67 s) instead of 30 minutes.
const SHORT_STALE_SECS: &str = "4";

fn with_short_locks(mut c: Command) -> Command {
    c.env("CAIRN_TEST_LOCK_STALE_SECS", SHORT_STALE_SECS);
    c
}

/// A backup of `tree` plus a stream read from stdin, started with short lock timings: it holds its
/// shared lock while it waits for the stream, which the test writes when it wants the backup to end.
fn backup_waiting_on_stdin(repo: &Path, tree: &Path) -> std::process::Child {
    let mut c = with_short_locks(cairn(repo));
    c.args(["backup", "--json", "--stdin", "--stdin-name", "late.bin"])
        .arg(tree)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.spawn().unwrap()
}

/// Waits until a thread of `pid` is blocked reading its stdin: the backup has saved its tree (trees are
/// saved before streams) and now waits for the stream. (`/proc/PID/task/*/syscall`: the number of `read`,
/// then its first argument, fd 0.)
fn wait_reading_stdin(pid: u32) {
    let read = if cfg!(target_arch = "aarch64") {
        "63"
    } else {
        "0"
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let blocked = fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| fs::read_to_string(t.unwrap().path().join("syscall")).ok())
            .any(|s| s.starts_with(&format!("{read} 0x0 ")));
        if blocked {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the backup never got to reading its stream"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

/// Ends the stream of a [`backup_waiting_on_stdin`] and returns (exit code, stderr).
fn finish_stream(mut child: std::process::Child) -> (i32, String) {
    use std::io::Write;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&pseudo_random(100_000, 9)).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn snapshot_count(repo: &Path) -> usize {
    let out = ok(cairn(repo).args(["snapshots", "--json"]));
    serde_json::from_str::<Vec<serde_json::Value>>(&out)
        .unwrap()
        .len()
}

fn tree_of_random_files(root: &Path) {
    fs::create_dir_all(root).unwrap();
    for i in 0..8 {
        fs::write(root.join(format!("f{i}")), pseudo_random(300_000, i)).unwrap();
    }
}

/// A backup that was stopped for longer than the stale age (as a paused VM or a sleeping laptop is) had
/// its lock taken for stale by a prune that deleted the packs it had deduplicated against. It used to
/// wake up, refresh its lock and save a snapshot naming the deleted data (`check` then failed, the
/// snapshot could not be restored); it must fail as having lost its lock and save nothing.
#[test]
fn a_backup_whose_lock_went_stale_while_it_was_stopped_saves_no_snapshot_after_a_prune() {
    let (dir, repo) = local_repo();
    stopped_backup_meets_a_prune(dir.path(), &repo, |c| c);
}

/// The same in object storage, with the prune on another host (its own cache directory): there the
/// stopped backup's cache still lists the pruned blobs after it wakes, so it would deduplicate against
/// them whenever it reads its tree.
#[test]
fn in_object_storage_a_backup_stopped_past_the_stale_age_saves_no_snapshot_after_another_hosts_prune(
) {
    let dir = tempfile::tempdir().unwrap();
    let repo = s3_repo_in(dir.path());
    ok(cairn(&repo).arg("init"));
    let other_cache = dir.path().join("other-host-cache");
    stopped_backup_meets_a_prune(dir.path(), &repo, |mut c| {
        c.env("XDG_CACHE_HOME", &other_cache);
        c
    });
}

/// Backs up a tree, starts a second backup of it that waits on its stream, stops it past the stale age,
/// lets `other_host` (a command adapter) forget the first snapshot and prune, then wakes the backup: it
/// must fail with exit 11 and leave the repository clean and usable.
fn stopped_backup_meets_a_prune(dir: &Path, repo: &Path, other_host: impl Fn(Command) -> Command) {
    let tree = dir.join("tree");
    tree_of_random_files(&tree);
    let first = backup_json(repo, &[tree.to_str().unwrap()]);
    let first_id = first["snapshot_id"].as_str().unwrap().to_string();

    let child = backup_waiting_on_stdin(repo, &tree);
    let pid = child.id();
    wait_reading_stdin(pid);
    // Its tree is saved, every blob deduplicated against the first snapshot's packs.
    signal(pid, "-STOP");
    std::thread::sleep(Duration::from_secs(6));
    // The stopped backup's lock is stale by its age, so forget and prune go ahead and delete the first
    // snapshot's packs.
    ok(other_host(with_short_locks(cairn(repo))).args(["forget", &first_id]));
    let pruned = ok(other_host(with_short_locks(cairn(repo))).args(["prune", "--json"]));
    let pruned: serde_json::Value = serde_json::from_str(&pruned).unwrap();
    assert!(pruned["packs_deleted"].as_u64().unwrap() > 0, "{pruned}");
    signal(pid, "-CONT");

    let (code, err) = finish_stream(child);
    assert_eq!(
        code, 11,
        "the backup must fail as having lost its lock: {err}"
    );
    assert!(err.contains("lost its repository lock"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(snapshot_count(repo), 0, "no snapshot may name pruned data");
    ok(cairn(repo).args(["check", "--read-data"]));
    // Nothing was lost for good: the next backup stores the tree again and restores byte for byte.
    ok(cairn(repo).arg("backup").arg(&tree));
    let out = dir.join("out");
    ok(cairn(repo)
        .args(["restore", "latest", "--target"])
        .arg(&out));
    for i in 0..8 {
        let name = format!("f{i}");
        let restored = fs::read(out.join("tree").join(&name)).unwrap();
        assert_eq!(restored, pseudo_random(300_000, i), "{name}");
    }
}

/// A holder whose lock object was removed (`cairn unlock --remove-all` on another host, or a host that took it
/// for stale) notices at its next refresh and saves nothing: it can no longer know that no prune ran.
#[test]
fn a_backup_whose_lock_object_was_removed_saves_no_snapshot() {
    let (dir, repo) = local_repo();
    let tree = dir.path().join("tree");
    tree_of_random_files(&tree);
    let child = backup_waiting_on_stdin(&repo, &tree);
    wait_reading_stdin(child.id());
    ok(cairn(&repo).args(["unlock", "--remove-all"]));
    assert!(lock_names(&repo).is_empty());
    // Past the next refresh (every 0.67 s with these timings).
    std::thread::sleep(Duration::from_secs(2));
    let (code, err) = finish_stream(child);
    assert_eq!(code, 11, "{err}");
    assert!(err.contains("lock object was removed"), "{err}");
    assert_eq!(snapshot_count(&repo), 0);
    ok(cairn(&repo).args(["check"]));
}

/// The mirror image: a prune stopped past the stale age, after it planned what to delete and before it
/// deleted it, while a backup (seeing the prune's lock as stale) deduplicated against a blob of the
/// forgotten snapshot. The prune used to wake and delete that blob's pack, leaving the new snapshot naming
/// data that is gone; it must fail as having lost its lock and delete nothing. The prune is held between
/// its repack and its deletions by an upload limit: the repacked pack's bytes put it in debt, so its next
/// write (an index object) waits.
#[test]
fn a_prune_whose_lock_went_stale_while_it_was_stopped_deletes_nothing_a_backup_deduplicated_against(
) {
    let (dir, repo) = local_repo();
    let (both, only_first, later) = (
        dir.path().join("both"),
        dir.path().join("only-first"),
        dir.path().join("later"),
    );
    for d in [&both, &only_first, &later] {
        fs::create_dir_all(d).unwrap();
    }
    let kept = pseudo_random(300_000, 1);
    let forgotten = pseudo_random(300_000, 2);
    fs::write(both.join("kept"), &kept).unwrap();
    fs::write(only_first.join("kept"), &kept).unwrap();
    fs::write(only_first.join("forgotten"), &forgotten).unwrap();
    let first = backup_json(&repo, &[only_first.to_str().unwrap()]);
    backup_json(&repo, &[both.to_str().unwrap()]);
    ok(cairn(&repo).args(["forget", first["snapshot_id"].as_str().unwrap()]));

    let packs_before = packs(&repo);
    let mut prune = with_short_locks(cairn(&repo));
    prune
        .args(["--limit-upload", "100", "prune", "--max-unused", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let prune = prune.spawn().unwrap();
    let pid = prune.id();
    // The repack's pack is written at once; the index object after it waits about 3 s for the limit.
    let deadline = Instant::now() + Duration::from_secs(60);
    while packs(&repo).iter().all(|p| packs_before.contains(p)) {
        assert!(Instant::now() < deadline, "the prune never repacked");
        std::thread::sleep(Duration::from_millis(5));
    }
    signal(pid, "-STOP");
    std::thread::sleep(Duration::from_secs(6));
    // Another host backs up the forgotten file again: its blobs are still indexed in the old pack.
    fs::write(later.join("forgotten"), &forgotten).unwrap();
    let second = ok(with_short_locks(cairn(&repo))
        .args(["backup", "--json"])
        .arg(&later));
    let second: serde_json::Value = serde_json::from_str(&second).unwrap();
    assert!(
        second["bytes_added"].as_u64().unwrap() < 10_000,
        "the backup must have deduplicated against the old pack: {second}"
    );
    signal(pid, "-CONT");
    let out = prune.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(11), "{err}");
    assert!(err.contains("lost its repository lock"), "{err}");
    ok(cairn(&repo).args(["check", "--read-data"]));
    // The next prune runs on what is there now, and both kept snapshots still restore byte for byte.
    ok(cairn(&repo).args(["prune", "--max-unused", "0"]));
    ok(cairn(&repo).args(["check", "--read-data"]));
    let target = dir.path().join("restored");
    ok(cairn(&repo)
        .args(["restore", "latest", "--target"])
        .arg(&target));
    assert_eq!(fs::read(target.join("later/forgotten")).unwrap(), forgotten);
}
