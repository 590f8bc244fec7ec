//! Hardening of key management and passwords, through the real binary: an encrypted repository whose keys
//! are lost is lost whole, so no interrupted or concurrent key operation may leave it with no key a password
//! opens, no repository may open with a password it does not accept, and no password source may hang a
//! command or make it read without bound.

mod harness;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::*;

/// Runs `cmd`, killing it if it has not ended within `limit`: (exit code, stderr, how long it took).
fn run_within(cmd: &mut Command, limit: Duration) -> (i32, String, Duration) {
    // stderr goes to a file: a killed password command's orphans may hold a pipe open for long.
    let err_file = tempfile::NamedTempFile::new().unwrap();
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(err_file.reopen().unwrap())
        .spawn()
        .unwrap();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let err = fs::read_to_string(err_file.path()).unwrap();
            return (status.code().unwrap_or(-1), err, started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {limit:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The repository's key files as `key list --json` gives them, opened with `password`.
fn listed_keys(repo: &Path, password: &str) -> Vec<serde_json::Value> {
    let out = ok(cairn(repo)
        .env("CAIRN_PASSWORD", password)
        .args(["key", "list", "--json"]));
    let mut v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["keys"].as_array_mut().map(std::mem::take).unwrap()
}

/// The ids of the repository's key files, listed with `password`.
fn key_ids(repo: &Path, password: &str) -> Vec<String> {
    listed_keys(repo, password)
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect()
}

fn opens_with(repo: &Path, password: &str) -> bool {
    run(cairn(repo)
        .env("CAIRN_PASSWORD", password)
        .args(["check", "--read-data"]))
    .0 == 0
}

/// `strace` (to kill a process at its Nth chosen syscall), or `None` with a printed reason.
fn strace() -> Option<&'static str> {
    let usable = Command::new("strace")
        .args(["-f", "-o", "/dev/null", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !usable {
        eprintln!("skipped: strace is missing or cannot trace here");
        return None;
    }
    Some("strace")
}

/// `cairn` on `repo` run under strace, SIGKILLed on entry to its `nth` rename or unlink (the durable steps
/// of a key operation: a key file renamed into place, a key file or lock removed).
fn killed_at(repo: &Path, nth: usize) -> Command {
    let plain = cairn(repo);
    let mut c = Command::new("strace");
    let calls = "rename,renameat,renameat2,unlink,unlinkat";
    c.args(["-f", "-o", "/dev/null", "-e"])
        .arg(format!("trace={calls}"))
        .arg("-e")
        .arg(format!("inject={calls}:signal=KILL:when={nth}"))
        .arg(plain.get_program());
    for (k, v) in plain.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.stdin(Stdio::null());
    c
}

#[test]
fn password_sources_that_hang_flood_or_are_not_files_fail_with_one_line_and_exit_12() {
    let (dir, repo) = new_repo();
    let d = dir.path();
    let fifo = d.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let huge = d.join("huge");
    fs::write(&huge, vec![b'x'; 4 << 20]).unwrap();
    let empty = d.join("empty");
    fs::write(&empty, "").unwrap();
    let a_dir = d.join("a-directory");
    fs::create_dir(&a_dir).unwrap();
    let file = |p: &Path| vec!["--password-file".to_string(), p.display().to_string()];
    let command = |c: &str| vec!["--password-command".to_string(), c.to_string()];
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("a command that never exits", command("sleep 600")),
        ("a command that prints forever", command("yes")),
        (
            "a command printing 4 MiB on one line",
            command("head -c 4194304 /dev/zero | tr '\\0' x"),
        ),
        ("a command that fails", command("echo x; exit 3")),
        ("a command printing nothing", command("true")),
        ("a FIFO nobody writes to", file(&fifo)),
        ("a 4 MiB file of one line", file(&huge)),
        ("an empty file", file(&empty)),
        ("a directory", file(&a_dir)),
    ];
    for (what, args) in &cases {
        let (code, err, took) = run_within(
            cairn(&repo)
                .env("CAIRN_PASSWORD_TIMEOUT", "2")
                .args(args)
                .arg("snapshots"),
            Duration::from_secs(30),
        );
        assert_eq!(code, 12, "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
        assert!(
            err.starts_with("cairn: error:") && err.contains("password"),
            "{what}: {err}"
        );
        assert!(took < Duration::from_secs(20), "{what} took {took:?}");
    }
    // An empty CAIRN_PASSWORD is a missing password, not an empty one tried against the keys.
    let err = fails(cairn(&repo).env("CAIRN_PASSWORD", "").arg("snapshots"), 12);
    assert!(err.contains("empty"), "{err}");
    // A trailing CR/LF is not part of the password; a trailing NUL is, so it is the wrong one.
    ok(cairn(&repo)
        .args(["--password-command", &format!("printf '{PASSWORD}\\r\\n'")])
        .arg("snapshots"));
    let err = fails(
        cairn(&repo)
            .args(["--password-command", &format!("printf '{PASSWORD}\\0'")])
            .arg("snapshots"),
        12,
    );
    assert!(err.contains("wrong password"), "{err}");
    // A password file its reader may not read, for a repository it may: run as nobody.
    if !local_only("runs cairn as nobody on a local repository") {
        let cache = d.join("nobody-cache");
        fs::create_dir(&cache).unwrap();
        let secret = d.join("secret");
        fs::write(&secret, format!("{PASSWORD}\n")).unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        for p in [d.to_path_buf(), repo.clone(), cache.clone()] {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        assert!(Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(&repo)
            .arg(&cache)
            .status()
            .unwrap()
            .success());
        let err = fails(
            cairn_as_nobody(&repo, &cache)
                .arg("--password-file")
                .arg(&secret)
                .arg("snapshots"),
            12,
        );
        assert!(err.contains("Permission denied"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // The right password still opens it.
    ok(cairn(&repo)
        .arg("--password-file")
        .arg(&{
            let p = d.join("right");
            fs::write(&p, format!("{PASSWORD}\n")).unwrap();
            p
        })
        .arg("snapshots"));
}

/// `cairn init` killed at each of its durable steps, then run again with another password: the rerun either
/// makes a repository that exactly its own password opens (one key file), or, when the killed run left a key
/// file behind, refuses with one clear line and changes nothing. Never a repository with two master keys,
/// where the first run's password would "open" it with a key that sealed nothing, and the next process
/// could read none of what the rerun (or the first backup that created it) wrote.
#[test]
fn init_killed_after_its_key_file_is_written_never_yields_a_repository_with_two_master_keys() {
    if local_only("kills a local cairn at its Nth rename") || strace().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    build_rich_tree(&src, 3);
    let mut refused = 0;
    for nth in 1..=4 {
        let repo = dir.path().join(format!("repo-{nth}"));
        let status = killed_at(&repo, nth)
            .env("CAIRN_PASSWORD", "first password")
            .args(["init"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        if status.success() {
            continue; // init made fewer than `nth` such steps
        }
        if repo.join("config").exists() {
            // Killed after its config: a complete repository, which its own password opens.
            assert_eq!(key_ids(&repo, "first password").len(), 1, "kill {nth}");
            continue;
        }
        let left = fs::read_dir(repo.join("keys"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .count()
            })
            .unwrap_or(0);
        // The first backup of a new repository creates it: the same path as `init`, then data.
        let (code, _, err) = run(cairn(&repo)
            .env("CAIRN_PASSWORD", "second password")
            .arg("init"));
        if left > 0 {
            refused += 1;
            assert_eq!(
                code, 1,
                "kill {nth}: init over a killed init's key file: {err}"
            );
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.contains("key file") && err.contains("keys"), "{err}");
            assert!(
                !repo.join("config").exists(),
                "kill {nth}: a repository was made"
            );
            // Once the leftover key files are gone (what the message says to do), init works.
            fs::remove_dir_all(repo.join("keys")).unwrap();
            ok(cairn(&repo)
                .env("CAIRN_PASSWORD", "second password")
                .arg("init"));
        } else {
            assert_eq!(
                code, 0,
                "kill {nth}: nothing was left, init must work: {err}"
            );
        }
        ok(cairn(&repo)
            .env("CAIRN_PASSWORD", "second password")
            .args(["backup", src.to_str().unwrap()]));
        assert_eq!(key_ids(&repo, "second password").len(), 1, "kill {nth}");
        assert!(opens_with(&repo, "second password"), "kill {nth}");
        let err = fails(
            cairn(&repo)
                .env("CAIRN_PASSWORD", "first password")
                .arg("snapshots"),
            12,
        );
        assert!(err.contains("wrong password"), "kill {nth}: {err}");
    }
    assert!(refused > 0, "no kill landed after the key file was written");
}

/// `key passwd`, `key add` and `key remove` SIGKILLed at every rename and unlink they make: afterwards the
/// repository opens with the old or the new password (at least one), every snapshot restores, and no key
/// file is torn.
#[test]
fn key_operations_killed_at_every_step_leave_a_repository_one_of_the_passwords_opens() {
    if local_only("kills a local cairn at its Nth rename or unlink") || strace().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    build_rich_tree(&src, 3);
    let new_pw = dir.path().join("new-password");
    fs::write(&new_pw, "the new password\n").unwrap();
    let third = dir.path().join("third-password");
    fs::write(&third, "the third password\n").unwrap();
    for op in ["passwd", "add", "remove"] {
        for nth in 1..=8 {
            let repo = dir.path().join(format!("repo-{op}-{nth}"));
            ok(cairn(&repo).arg("init"));
            ok(cairn(&repo).args(["backup", src.to_str().unwrap()]));
            let mut c = killed_at(&repo, nth);
            match op {
                "remove" => {
                    ok(cairn(&repo)
                        .args(["key", "add", "--new-password-file"])
                        .arg(&third));
                    let ids = key_ids(&repo, PASSWORD);
                    let other = ids
                        .iter()
                        .find(|id| is_key_of(&repo, id, "the third password"))
                        .unwrap()
                        .clone();
                    c.args(["key", "remove", &other]);
                }
                _ => {
                    c.args(["key", op, "--new-password-file"]).arg(&new_pw);
                }
            }
            let status = c
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            let old = opens_with(&repo, PASSWORD);
            let new =
                opens_with(&repo, "the new password") || opens_with(&repo, "the third password");
            assert!(
                old || new,
                "{op} killed at step {nth} ({status}): no password opens the repository"
            );
            if status.success() {
                break; // the operation made fewer than `nth` such steps
            }
        }
    }
}

/// Two processes with their own caches ("two hosts") removing each other's key of a two-key repository at
/// once, and `key passwd` racing `key remove`: never zero keys, never a repository no password opens, and a
/// loser fails with one clear line (locked, or the last key is never removed).
#[test]
fn concurrent_key_removes_and_passwd_never_leave_a_repository_without_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let other_pw = dir.path().join("other");
    fs::write(&other_pw, "the other password\n").unwrap();
    let new_pw = dir.path().join("new");
    fs::write(&new_pw, "a newer password\n").unwrap();
    for round in 0..4 {
        let repo = repo_in(&dir.path().join(format!("r{round}")));
        ok(cairn(&repo).arg("init"));
        ok(cairn(&repo)
            .args(["key", "add", "--new-password-file"])
            .arg(&other_pw));
        let mine = key_ids(&repo, PASSWORD)
            .into_iter()
            .find(|id| !is_key_of(&repo, id, "the other password"))
            .unwrap();
        let theirs = key_ids(&repo, PASSWORD)
            .into_iter()
            .find(|id| *id != mine)
            .unwrap();
        let host = |n: &str| dir.path().join(format!("cache-{round}-{n}"));
        let mut a = cairn(&repo);
        a.env("XDG_CACHE_HOME", host("a"))
            .args(["key", "remove", &theirs]);
        let mut b = cairn(&repo);
        b.env("XDG_CACHE_HOME", host("b"))
            .env("CAIRN_PASSWORD", "the other password");
        if round % 2 == 0 {
            b.args(["key", "remove", &mine]);
        } else {
            b.args(["key", "passwd", "--new-password-file"])
                .arg(&new_pw);
        }
        let ca = a
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let cb = b
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        for (who, child) in [("a", ca), ("b", cb)] {
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(!err.contains("panicked"), "{who}: {err}");
            if !out.status.success() {
                assert_eq!(err.lines().count(), 1, "{who}: {err}");
                assert!(err.starts_with("cairn: error:"), "{who}: {err}");
                assert!(
                    [1, 11].contains(&out.status.code().unwrap_or(-1)),
                    "{who}: {err}"
                );
            }
        }
        let opening: Vec<&str> = [PASSWORD, "the other password", "a newer password"]
            .into_iter()
            .filter(|pw| opens_with(&repo, pw))
            .collect();
        assert!(
            !opening.is_empty(),
            "round {round}: no password opens the repository"
        );
        assert!(!key_ids(&repo, opening[0]).is_empty());
    }
}

/// Whether key `id` is the one `password` opens.
fn is_key_of(repo: &Path, id: &str, password: &str) -> bool {
    listed_keys(repo, password)
        .iter()
        .any(|k| k["id"] == id && k["current"] == true)
}

/// `key remove` of an id that names no key, names two, is malformed (a path, empty, 1000 characters) or is
/// the key in use or the last key: refused with one line, nothing removed.
#[test]
fn key_remove_of_a_bad_ambiguous_in_use_or_last_id_removes_nothing() {
    let (dir, repo) = new_repo();
    let other = dir.path().join("other");
    fs::write(&other, "the other password\n").unwrap();
    ok(cairn(&repo)
        .args(["key", "add", "--new-password-file"])
        .arg(&other));
    let before = key_ids(&repo, PASSWORD);
    assert_eq!(before.len(), 2);
    let in_use = before
        .iter()
        .find(|id| !is_key_of(&repo, id, "the other password"))
        .unwrap()
        .clone();
    let long = "a".repeat(1000);
    let mut bad: Vec<String> = vec![
        "../x".into(),
        "".into(),
        long,
        "zz".into(),
        "/".into(),
        in_use.clone(),
    ];
    // A prefix both ids share, if they share one.
    let common: String = before[0]
        .chars()
        .zip(before[1].chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    bad.push(common);
    for id in &bad {
        let err = fails(cairn(&repo).args(["key", "remove", id]), 1);
        assert_eq!(err.lines().count(), 1, "{id:?}: {err}");
        assert_eq!(key_ids(&repo, PASSWORD), before, "{id:?} removed a key");
    }
    // The last key: remove the other one first, then the one left is refused.
    let theirs = before.iter().find(|id| **id != in_use).unwrap();
    ok(cairn(&repo).args(["key", "remove", theirs]));
    let err = fails(cairn(&repo).args(["key", "remove", &in_use]), 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(key_ids(&repo, PASSWORD), vec![in_use]);
}

/// The host key cache of wal-push: a cache file replaced by a FIFO (or a symlink, or another user's file)
/// is ignored and replaced, never waited on; after `key passwd` the cached key of the old password no
/// longer opens the repository.
#[test]
fn a_key_cache_file_replaced_by_a_fifo_or_symlink_is_ignored_never_waited_on() {
    if local_only("plants files in a local cache directory") {
        return;
    }
    let (dir, repo) = new_repo();
    let cache = dir.path().join("cache");
    ok(cairn(&repo).args(["instance", "add", "db", "--path", "/tmp", "--wal"]));
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(repo.join("config")).unwrap()).unwrap();
    let cache_file: PathBuf = cache
        .join("cairn/keys")
        .join(config["repository_id"].as_str().unwrap());
    let push = |n: u64, password: &str| -> (i32, String) {
        let name = format!("00000001000000000000000{n}");
        let seg = dir.path().join(&name);
        fs::write(&seg, wal_segment(&name, 64 << 10, n, TEST_SYSID)).unwrap();
        let (code, err, _) = run_within(
            cairn(&repo)
                .env("XDG_CACHE_HOME", &cache)
                .env("CAIRN_PASSWORD", password)
                .args(["wal-push", "--instance", "db"])
                .arg(&seg),
            Duration::from_secs(60),
        );
        (code, err)
    };
    assert_eq!(push(1, PASSWORD).0, 0);
    assert!(cache_file.is_file());
    // A FIFO in its place: ignored (not opened for a blocking read), and replaced by a private file.
    fs::remove_file(&cache_file).unwrap();
    assert!(Command::new("mkfifo")
        .args(["-m", "600"])
        .arg(&cache_file)
        .status()
        .unwrap()
        .success());
    let (code, err) = push(2, PASSWORD);
    assert_eq!(code, 0, "{err}");
    assert!(cache_file.is_file(), "the FIFO was not replaced");
    // A symlink to a file elsewhere: not followed, and that file is left alone.
    let elsewhere = dir.path().join("elsewhere");
    fs::copy(&cache_file, &elsewhere).unwrap();
    fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o600)).unwrap();
    let elsewhere_bytes = fs::read(&elsewhere).unwrap();
    fs::remove_file(&cache_file).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &cache_file).unwrap();
    assert_eq!(push(3, PASSWORD).0, 0);
    assert!(!cache_file.is_symlink(), "the symlink was kept");
    assert_eq!(fs::read(&elsewhere).unwrap(), elsewhere_bytes);
    // After `key passwd`, the cache of the old password opens nothing.
    let new_pw = dir.path().join("new");
    fs::write(&new_pw, "the new password\n").unwrap();
    assert_eq!(push(4, PASSWORD).0, 0);
    ok(cairn(&repo)
        .args(["key", "passwd", "--new-password-file"])
        .arg(&new_pw));
    let (code, err) = push(5, PASSWORD);
    assert_eq!(
        code, 12,
        "the old password still opened the repository: {err}"
    );
    assert_eq!(push(5, "the new password").0, 0);
}
