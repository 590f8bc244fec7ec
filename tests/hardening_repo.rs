//! Hardening of the repository itself (issue 11), through the real binary:
//! - item 2: prune takes its roots from the snapshot files, and a failed backup leaves no snapshot object;
//! - item 9: a read-only, unwritable or full repository can still be listed, checked and restored from, and
//!   writing commands fail with the real cause;
//! - item 10: readers hold a shared lock, so prune cannot delete packs under them;
//! - item 7 (second half): every file and directory cairn creates in a repository is private to its owner.

mod harness;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::*;

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

fn snapshot_ids(repo: &Path) -> Vec<String> {
    let out = ok(cairn(repo).args(["snapshots", "--json"]));
    let v: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let mut ids: Vec<String> = v
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// Names of the snapshot objects (files under `snapshots/`, temporary files excluded).
fn snapshot_files(repo: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(repo.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".tmp-"))
        .collect();
    out.sort();
    out
}

fn small_packs(repo: &Path) {
    let path = repo.join("config");
    let mut cfg: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    cfg["pack_target_size"] = serde_json::json!(1024 * 1024);
    fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
}

fn write_source(dir: &Path, files: usize, seed: u64) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..files {
        fs::write(
            dir.join(format!("f{i}")),
            pseudo_random(300_000 + i * 7919, seed * 100 + i as u64),
        )
        .unwrap();
    }
}

fn backup_id(repo: &Path, src: &Path) -> String {
    backup_json(repo, &[src.to_str().unwrap()])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn index(repo: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(index_file(repo)).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

/// `check` passes with no error line (warnings on stderr about unindexed packs are allowed).
fn assert_check_clean(repo: &Path, read_data: bool) {
    let mut cmd = cairn(repo);
    cmd.arg("check");
    if read_data {
        cmd.arg("--read-data");
    }
    let (code, out, err) = run(&mut cmd);
    assert_eq!(code, 0, "check failed:\n{out}\n{err}");
    assert!(!out.contains("error:"), "{out}");
    for w in err.lines().filter(|l| l.starts_with("warning:")) {
        assert!(
            w.contains("is not indexed") || w.contains("in no index object"),
            "unexpected warning: {w}"
        );
    }
}

/// After whatever failed: prune keeps every byte of the snapshots in `kept`, they restore exactly, and
/// `repair index` brings back exactly those snapshots, all whole.
fn assert_nothing_lost(repo: &Path, dir: &Path, kept: &[(String, PathBuf)]) {
    assert_check_clean(repo, false);
    ok(cairn(repo).arg("prune"));
    assert_check_clean(repo, true);
    ok(cairn(repo).args(["repair", "index"]));
    let mut want: Vec<String> = kept.iter().map(|(id, _)| id.clone()).collect();
    want.sort();
    assert_eq!(snapshot_ids(repo), want, "repair index");
    assert_check_clean(repo, true);
    for (id, src) in kept {
        let t = dir.join(format!("restored-{}", &id[..12]));
        let _ = fs::remove_dir_all(&t);
        ok(cairn(repo).args(["restore", id, "--target", t.to_str().unwrap()]));
        assert_same_tree(src, &t.join(src.file_name().unwrap()));
    }
}

/// Unmounts on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount(args: &[&str], at: &Path) -> Option<Mounted> {
    if !is_root() {
        return None;
    }
    let st = Command::new("mount").args(args).arg(at).status().ok()?;
    st.success().then(|| Mounted(at.to_path_buf()))
}

// ---------------------------------------------------------------------------------------------------------
// Item 2: prune and snapshot objects without an index row.

#[test]
fn prune_keeps_the_data_of_a_snapshot_that_has_no_index_row() {
    // Plaintext: an encrypted repository's index is a cache that adopts snapshot files on every open, so
    // a missing row cannot persist there; the in-repository index of a plaintext one must handle it.
    let (dir, repo) = new_plaintext_repo();
    small_packs(&repo);
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    write_source(&a, 4, 1);
    write_source(&b, 6, 2);
    let id_a = backup_id(&repo, &a);
    let id_b = backup_id(&repo, &b);
    // What a backup whose row insert failed (or a crash after the file) left: the object, no row.
    index(&repo)
        .execute("DELETE FROM snapshots WHERE id = ?1", [&id_b])
        .unwrap();
    let (code, out, err) = run(cairn(&repo).arg("check"));
    assert_eq!(
        code, 1,
        "a snapshot without its row is an error:\n{out}\n{err}"
    );
    assert!(
        out.contains(&format!("error: snapshot {id_b}")) && out.contains("no index row"),
        "{out}"
    );
    let (code, out, err) = run(cairn(&repo).arg("prune"));
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        code == 0 || err.contains("no index row"),
        "prune neither kept the snapshot nor said why:\n{out}\n{err}"
    );
    assert_nothing_lost(&repo, dir.path(), &[(id_a, a), (id_b, b)]);
}

#[test]
fn prune_refuses_while_a_snapshot_object_does_not_decode() {
    let (dir, repo) = new_repo();
    let a = dir.path().join("a");
    write_source(&a, 3, 3);
    let id_a = backup_id(&repo, &a);
    // An object with no row whose roots cannot be known: one that does not match its name, one that does
    // but is not a snapshot. Either could name data that prune would otherwise take for garbage.
    let garbage: &[u8] = b"{\"version\": 1, \"tree\": ";
    let matching = blake3::hash(garbage).to_hex().to_string();
    for (name, bytes) in [
        (matching.as_str(), garbage),
        (
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
            b"{}" as &[u8],
        ),
    ] {
        let path = repo.join("snapshots").join(name);
        fs::write(&path, bytes).unwrap();
        let before = fs::read_dir(repo.join("packs")).unwrap().count();
        let err = fails(cairn(&repo).arg("prune"), 1);
        assert!(err.contains(name), "prune does not name the object: {err}");
        assert_eq!(
            fs::read_dir(repo.join("packs")).unwrap().count(),
            before,
            "prune changed packs"
        );
        fs::remove_file(&path).unwrap();
    }
    assert_nothing_lost(&repo, dir.path(), &[(id_a, a)]);
}

/// A trigger making the index refuse an insert, as a full disk does ("database or disk is full").
fn inject_failure(repo: &Path, table: &str, after_rows: i64) {
    index(repo)
        .execute_batch(&format!(
            "DROP TRIGGER IF EXISTS injected;
             CREATE TRIGGER injected BEFORE INSERT ON {table}
             WHEN (SELECT count(*) FROM {table}) >= {after_rows}
             BEGIN SELECT RAISE(ABORT, 'injected: database or disk is full'); END;"
        ))
        .unwrap();
}

fn clear_failure(repo: &Path) {
    index(repo)
        .execute_batch("DROP TRIGGER IF EXISTS injected;")
        .unwrap();
}

#[test]
fn a_backup_failing_at_any_step_after_its_first_pack_leaves_no_snapshot_object() {
    let (dir, repo) = new_repo();
    small_packs(&repo);
    let base = dir.path().join("base");
    write_source(&base, 3, 10);
    let base_id = backup_id(&repo, &base);
    let packs: i64 = index(&repo)
        .query_row("SELECT count(*) FROM packs", [], |r| r.get(0))
        .unwrap();
    // Each step fails a later write: the 1st, 2nd and 3rd new pack's index rows, then the snapshot's row.
    let steps: Vec<(&str, i64)> = vec![
        ("packs", packs + 1),
        ("packs", packs + 2),
        ("packs", packs + 3),
        ("snapshots", 1),
    ];
    for (n, (table, after)) in steps.into_iter().enumerate() {
        let src = dir.path().join(format!("src{n}"));
        write_source(&src, 12, 20 + n as u64);
        let files_before = snapshot_files(&repo);
        inject_failure(&repo, table, after);
        let err = fails(cairn(&repo).args(["backup", src.to_str().unwrap()]), 1);
        clear_failure(&repo);
        // TODO(pack_writer): when parallel workers race, the one whose error is returned may only say "an
        // earlier pack write of this run failed", hiding the cause; accept it until the writer keeps the
        // first error for every caller.
        assert!(
            err.contains("disk is full") || err.contains("earlier pack write"),
            "step {n}: {err}"
        );
        assert_eq!(
            snapshot_files(&repo),
            files_before,
            "step {n} ({table}): a failed backup left a snapshot object"
        );
        assert_eq!(snapshot_ids(&repo), vec![base_id.clone()]);
        assert_check_clean(&repo, false);
    }
    assert_nothing_lost(&repo, dir.path(), &[(base_id, base)]);
}

#[test]
fn a_backup_on_a_full_disk_fails_at_any_step_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    fs::create_dir_all(&mnt).unwrap();
    let Some(_mounted) = mount(&["-t", "tmpfs", "-o", "size=16m", "tmpfs"], &mnt) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN; CI has it)");
        return;
    };
    let repo = mnt.join("repo");
    ok(cairn(&repo).arg("init"));
    small_packs(&repo);
    let base = dir.path().join("base");
    write_source(&base, 3, 30);
    let base_id = backup_id(&repo, &base);
    let mut kept = vec![(base_id.clone(), base.clone())];
    let filler = mnt.join("filler");
    // Free space left before each backup: from nothing to enough for some packs but not all.
    for (n, free_kib) in [0u64, 8, 48, 200, 1200, 2600, 4000].into_iter().enumerate() {
        let src = dir.path().join(format!("src{n}"));
        write_source(&src, 16, 40 + n as u64);
        let _ = fs::remove_file(&filler);
        fill_leaving(&mnt, &filler, free_kib * 1024);
        let files_before = snapshot_files(&repo);
        let (code, out, err) = run(cairn(&repo).args(["backup", "--json", src.to_str().unwrap()]));
        assert!(!err.contains("panicked"), "{err}");
        if code == 0 {
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            kept.push((v["snapshot_id"].as_str().unwrap().to_string(), src));
        } else {
            assert_eq!(code, 1, "{err}");
            assert!(
                // "earlier pack write": see the TODO(pack_writer) above.
                err.contains("No space left")
                    || err.contains("disk is full")
                    || err.contains("earlier pack write"),
                "free {free_kib} KiB: the cause is not named: {err}"
            );
            assert!(!err.contains("repair index"), "{err}");
            assert_eq!(
                snapshot_files(&repo),
                files_before,
                "free {free_kib} KiB: a failed backup left a snapshot object"
            );
        }
        // Read-only work on the full disk (item 9).
        ok(cairn(&repo).args(["snapshots"]));
        let (code, out, err) = run(cairn(&repo).arg("check"));
        assert_eq!(code, 0, "check on a full disk:\n{out}\n{err}");
        let t = dir.path().join(format!("t{n}"));
        ok(cairn(&repo).args(["restore", &base_id, "--target", t.to_str().unwrap()]));
        assert_same_tree(&base, &t.join("base"));
    }
    fs::remove_file(&filler).unwrap();
    assert_nothing_lost(&repo, dir.path(), &kept);
}

/// Writes `filler` so that about `leave` bytes stay free on the file system of `mnt`.
fn fill_leaving(mnt: &Path, filler: &Path, leave: u64) {
    let free = statvfs_free(mnt);
    let mut f = fs::File::create(filler).unwrap();
    let mut left = free.saturating_sub(leave);
    let chunk = vec![0x5au8; 1 << 16];
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if f.write_all(&chunk[..n]).is_err() {
            break;
        }
        left -= n as u64;
    }
    let _ = f.sync_all();
}

fn statvfs_free(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

// ---------------------------------------------------------------------------------------------------------
// Item 9: a read-only repository.

/// A repository with one snapshot of `src` (files) and a stream `db.dump`, in a directory anyone may enter.
struct Fixture {
    dir: tempfile::TempDir,
    repo: PathBuf,
    src: PathBuf,
    stream: Vec<u8>,
    id: String,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let repo = dir.path().join("repo");
    // Plaintext: these tests are about the index file inside a local repository, which only a plaintext
    // repository has (an encrypted one keeps it in the user's cache directory).
    ok(cairn(&repo).args(["init", "--insecure-no-encryption"]));
    small_packs(&repo);
    let src = dir.path().join("src");
    write_source(&src, 5, 60);
    for entry in walk_all(&src) {
        let mode = if entry.is_dir() { 0o755 } else { 0o644 };
        fs::set_permissions(&entry, fs::Permissions::from_mode(mode)).unwrap();
    }
    fs::set_permissions(&src, fs::Permissions::from_mode(0o755)).unwrap();
    if is_root() {
        // Owned by the user who restores it below, who cannot give files away.
        chown_r(&src, 65534);
    }
    let stream = pseudo_random(3_000_000, 61);
    let mut child = cairn(&repo)
        .args(["backup", "--json", "--stdin", "--stdin-name", "db.dump"])
        .arg(&src)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&stream).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["snapshot_id"].as_str().unwrap().to_string();
    Fixture {
        dir,
        repo,
        src,
        stream,
        id,
    }
}

fn walk_all(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk_all(&p));
        }
        out.push(p);
    }
    out
}

/// `cairn` run as `nobody` on `repo`.
fn as_nobody(repo: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        cairn_bin(),
    ])
    .env("CAIRN_REPO", repo)
    .env_remove("XDG_DATA_HOME")
    .env("HOME", "/nonexistent")
    .stdin(Stdio::null());
    with_password(&mut c);
    c
}

fn chown_r(path: &Path, uid: u32) {
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{uid}"))
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

fn chmod_r(path: &Path, spec: &str) {
    let st = Command::new("chmod")
        .args(["-R", spec])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Every read-only command works; every writing one fails naming `cause`, never blaming corruption.
fn assert_reads_work_and_writes_name(
    f: &Fixture,
    cmd: &dyn Fn() -> Command,
    cause: &str,
    what: &str,
) {
    let dir = f.dir.path();
    let list = ok(cmd().args(["snapshots", "--json"]));
    assert!(list.contains(&f.id), "{what}: snapshots: {list}");
    ok(cmd().args(["show", &f.id]));
    let ls = ok(cmd().args(["ls", &f.id]));
    assert!(ls.contains("src/f4"), "{what}: ls: {ls}");
    for args in [&["check"][..], &["check", "--read-data"]] {
        let (code, out, err) = run(cmd().args(args));
        assert_eq!(code, 0, "{what}: {args:?}\n{out}\n{err}");
        assert!(out.contains("no errors"), "{what}: {out}");
    }
    let target = dir.join(format!("restored-{}", what.replace(' ', "-")));
    ok(cmd().args(["restore", &f.id, "--target", target.to_str().unwrap()]));
    assert_same_tree(&f.src, &target.join("src"));
    let dumped = cmd().args(["dump", &f.id, "db.dump"]).output().unwrap();
    assert!(
        dumped.status.success(),
        "{what}: dump: {}",
        String::from_utf8_lossy(&dumped.stderr)
    );
    assert!(dumped.stdout == f.stream, "{what}: dump differs");
    let exported = cmd()
        .args(["export", &f.id, "--format", "tar"])
        .output()
        .unwrap();
    assert!(
        exported.status.success(),
        "{what}: export: {}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let other = dir.join("other-src");
    if !other.exists() {
        write_source(&other, 1, 62);
        chmod_r(&other, "a+rX");
    }
    for args in [
        vec!["backup", other.to_str().unwrap()],
        vec!["prune"],
        vec!["forget", "--keep-last", "0"],
    ] {
        let err = fails(cmd().args(&args), 1);
        assert!(
            err.contains(cause),
            "{what}: {args:?} does not name the cause {cause:?}: {err}"
        );
        assert!(
            !err.contains("corrupt") && !err.contains("repair index"),
            "{what}: {args:?} blames corruption: {err}"
        );
    }
}

#[test]
fn a_read_only_repository_can_be_listed_checked_and_restored_from() {
    if !is_root() {
        eprintln!("skipped: needs root to act as another user (CI runs as root)");
        return;
    }
    // 1. `chmod -R a-w` of a repository, used by its (unprivileged) owner.
    let f = fixture();
    chown_r(&f.repo, 65534);
    chmod_r(&f.repo, "a-w");
    assert_reads_work_and_writes_name(&f, &|| as_nobody(&f.repo), "Permission denied", "a-w");
    chmod_r(&f.repo, "u+w");
    chown_r(&f.repo, 0);
    assert_check_clean(&f.repo, true);

    // 2. Only the index file cannot be written (the directory can).
    let f = fixture();
    chown_r(&f.repo, 65534);
    fs::set_permissions(
        f.repo.join("index.sqlite"),
        fs::Permissions::from_mode(0o400),
    )
    .unwrap();
    assert_reads_work_and_writes_name(
        &f,
        &|| as_nobody(&f.repo),
        "Permission denied",
        "index unwritable",
    );
    // Writable again: what the read-only readers left (SQLite's -wal and -shm) must not stop a writer.
    fs::set_permissions(
        f.repo.join("index.sqlite"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let other = f.dir.path().join("other-src");
    let (code, _, err) = run(as_nobody(&f.repo).args(["backup", other.to_str().unwrap()]));
    assert_eq!(code, 0, "backup once the index is writable again: {err}");
    let (code, out, err) = run(as_nobody(&f.repo).arg("check"));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.is_empty(), "{err}");
    chown_r(&f.repo, 0);

    // 3. A read-only bind mount.
    let f = fixture();
    let ro = f.dir.path().join("ro");
    fs::create_dir_all(&ro).unwrap();
    let Some(_bind) = mount(&["--bind", f.repo.to_str().unwrap()], &ro) else {
        eprintln!("skipped the read-only mount: cannot bind-mount here");
        return;
    };
    let remount = Command::new("mount")
        .args(["-o", "remount,bind,ro"])
        .arg(&ro)
        .status()
        .unwrap();
    assert!(remount.success(), "remount read-only");
    assert_reads_work_and_writes_name(&f, &|| cairn(&ro), "Read-only file system", "ro mount");
}

// ---------------------------------------------------------------------------------------------------------
// Item 10: readers take a shared lock.

fn lock_files(repo: &Path) -> Vec<(PathBuf, String)> {
    let Ok(rd) = fs::read_dir(repo.join("locks")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with(".tmp-"))
        .map(|e| {
            let s = fs::read_to_string(e.path()).unwrap_or_default();
            (e.path(), s)
        })
        .collect()
}

/// Waits until a lock naming `command` appears, or the child ends (then the lock was never taken).
fn wait_for_lock(repo: &Path, command: &str, child: &mut Child) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if lock_files(repo)
            .iter()
            .any(|(_, s)| s.contains(&format!("\"command\":\"{command}\"")))
        {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("`{command}` ended ({status}) without ever holding a lock");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("`{command}` took no lock within 30 s");
}

/// Two snapshots sharing packs; the older one forgotten, so prune has packs to repack and delete.
fn repository_with_garbage() -> (tempfile::TempDir, PathBuf, PathBuf, String) {
    let (dir, repo) = new_repo();
    small_packs(&repo);
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big.bin"), pseudo_random(24_000_000, 70)).unwrap();
    fs::write(src.join("gone.bin"), pseudo_random(6_000_000, 71)).unwrap();
    let old = backup_id(&repo, &src);
    fs::remove_file(src.join("gone.bin")).unwrap();
    let keep = backup_id(&repo, &src);
    ok(cairn(&repo).args(["forget", "--keep-last", "1"]));
    assert_eq!(snapshot_ids(&repo), vec![keep.clone()]);
    assert_ne!(old, keep);
    (dir, repo, src, keep)
}

#[test]
fn readers_hold_a_shared_lock_so_prune_cannot_delete_packs_under_them() {
    let (dir, repo, src, keep) = repository_with_garbage();
    let want = fs::read(src.join("big.bin")).unwrap();
    // A dump whose output nobody reads yet: it stalls mid-file, holding what it holds.
    let mut dump = cairn(&repo)
        .args(["dump", &keep, "src/big.bin"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_lock(&repo, "dump", &mut dump);
    let err = fails(cairn(&repo).arg("prune"), 11);
    assert!(err.contains("locked"), "{err}");
    let mut got = Vec::new();
    dump.stdout.take().unwrap().read_to_end(&mut got).unwrap();
    let out = dump.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(got == want, "the dump differs");

    // A check --read-data stopped while it reads: prune fails, the check then finds no damage.
    let mut check = cairn(&repo)
        .args(["check", "--read-data"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_lock(&repo, "check", &mut check);
    unsafe { libc::kill(check.id() as i32, libc::SIGSTOP) };
    let (code, out, err) = run(cairn(&repo).arg("prune"));
    unsafe { libc::kill(check.id() as i32, libc::SIGCONT) };
    assert_eq!(code, 11, "prune ran beside a check:\n{out}\n{err}");
    assert!(err.contains("locked"), "{err}");
    let out = check.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check: {stdout}");
    assert!(!stdout.contains("damaged"), "{stdout}");

    // Restore, the same way: stopped once it holds its lock.
    let t = dir.path().join("restored");
    let mut restore = cairn(&repo)
        .args(["restore", &keep, "--target", t.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_lock(&repo, "restore", &mut restore);
    unsafe { libc::kill(restore.id() as i32, libc::SIGSTOP) };
    let (code, _, err) = run(cairn(&repo).arg("prune"));
    unsafe { libc::kill(restore.id() as i32, libc::SIGCONT) };
    assert_eq!(code, 11, "prune ran beside a restore: {err}");
    let out = restore.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_tree(&src, &t.join("src"));

    // Readers gone: prune runs and the kept snapshot stays whole.
    ok(cairn(&repo).arg("prune"));
    assert!(lock_files(&repo).is_empty(), "{:?}", lock_files(&repo));
    assert_check_clean(&repo, true);
}

#[test]
fn a_reader_started_while_prune_holds_the_lock_fails_cleanly() {
    let (dir, repo, _src, keep) = repository_with_garbage();
    // A live exclusive lock, as prune holds it (our own pid: alive, on this host).
    let host = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap();
    let lock = serde_json::json!({
        "pid": std::process::id(),
        "host": host,
        "time": chrono::Utc::now().to_rfc3339(),
        "exclusive": true,
        "command": "prune",
    });
    let lock_path = repo.join("locks").join("held-by-prune");
    fs::write(&lock_path, serde_json::to_vec(&lock).unwrap()).unwrap();
    let t = dir.path().join("t");
    let readers: Vec<Vec<&str>> = vec![
        vec!["check"],
        vec!["check", "--read-data"],
        vec!["restore", &keep, "--target", t.to_str().unwrap()],
        vec!["dump", &keep, "src/big.bin"],
        vec!["ls", &keep],
        vec!["export", &keep, "--format", "tar"],
    ];
    for args in &readers {
        let (code, out, err) = run(cairn(&repo).args(args));
        assert_eq!(
            code,
            11,
            "{args:?} ran under prune's lock:\n{}",
            &out[..out.len().min(500)]
        );
        assert!(
            err.contains("locked") && err.contains("prune"),
            "{args:?}: {err}"
        );
        assert!(!out.contains("damaged") && !out.contains("DAMAGE"), "{out}");
        assert!(out.is_empty(), "{args:?} wrote output under the lock");
    }
    assert!(!t.exists() || fs::read_dir(&t).unwrap().next().is_none());
    fs::remove_file(&lock_path).unwrap();
    for args in &readers {
        let (code, _, err) = run(cairn(&repo).args(args));
        assert_eq!(code, 0, "{args:?} after the lock went: {err}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Item 7 (second half): private files.

/// Every file under `repo` is 0600 at most and every directory 0700 (the repository root included).
fn assert_private(repo: &Path, when: &str) {
    let mut all = walk_all(repo);
    all.push(repo.to_path_buf());
    for p in all {
        let mode = fs::symlink_metadata(&p).unwrap().mode() & 0o7777;
        if p.is_dir() {
            assert_eq!(mode, 0o700, "{when}: {} is {mode:o}", p.display());
        } else {
            assert_eq!(mode & 0o077, 0, "{when}: {} is {mode:o}", p.display());
        }
    }
}

#[test]
fn every_file_cairn_creates_in_a_repository_is_private_to_its_owner() {
    // The usual umask, which leaves files created without an explicit mode readable by everyone.
    unsafe { libc::umask(0o022) };
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    ok(cairn(&repo).arg("init"));
    assert_private(&repo, "after init");
    small_packs(&repo);
    let src = dir.path().join("src");
    write_source(&src, 8, 80);
    let first = backup_id(&repo, &src);
    write_source(&src, 8, 81);
    backup_id(&repo, &src);
    assert_private(&repo, "after backup");
    ok(cairn(&repo).args(["instance", "add", "app", "--path", src.to_str().unwrap()]));
    assert_private(&repo, "after instance add");
    // While a reader holds the index open: its -wal and -shm, and its lock file.
    let mut dump = cairn(&repo)
        .args(["dump", &first, "src/f7"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let shm = index_file(&repo).with_file_name("index.sqlite-shm");
    while !shm.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(index_file(&repo)
        .with_file_name("index.sqlite-wal")
        .exists());
    assert_private(&repo, "while a reader runs");
    let mut sink = Vec::new();
    dump.stdout.take().unwrap().read_to_end(&mut sink).unwrap();
    assert!(dump.wait().unwrap().success());
    ok(cairn(&repo).args(["forget", "--keep-last", "1"]));
    ok(cairn(&repo).arg("prune"));
    assert_private(&repo, "after prune");
    ok(cairn(&repo).args(["repair", "index"]));
    assert_private(&repo, "after repair index");

    // An existing repository whose index files were world-readable is tightened when opened.
    let idx = index_file(&repo);
    fs::set_permissions(&idx, fs::Permissions::from_mode(0o644)).unwrap();
    let held = index(&repo); // creates -wal and -shm with the database file's mode, 0644
    held.query_row("SELECT count(*) FROM snapshots", [], |r| r.get::<_, i64>(0))
        .unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", idx.display()));
        let mode = fs::metadata(&p).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o644, "setup: {}", p.display());
    }
    ok(cairn(&repo).arg("snapshots"));
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", idx.display()));
        let mode = fs::metadata(&p).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "not tightened: {}", p.display());
    }
    drop(held);
}

/// Regression: an S3 endpoint without a scheme (`localhost:9000`, the usual mistake) reached object_store,
/// which panicked signing the first request (a backtrace, exit 101). Now one line, exit 1, before any
/// request; the endpoint itself is not printed (it may carry credentials).
#[test]
fn a_malformed_s3_endpoint_is_one_clear_error_not_a_panic() {
    for endpoint in [
        "localhost:9000",
        "ftp://127.0.0.1:9000",
        "http://",
        "/srv/s3",
    ] {
        let (code, out, err) = run(Command::new(cairn_bin())
            .args([
                "--repo",
                "s3://bucket/prefix",
                "--s3-endpoint",
                endpoint,
                "snapshots",
            ])
            .env("AWS_ACCESS_KEY_ID", "k")
            .env("AWS_SECRET_ACCESS_KEY", "s")
            .env("CAIRN_PASSWORD", "pw"));
        assert_eq!(code, 1, "{endpoint}: {out}{err}");
        assert!(!err.contains("panicked"), "{endpoint}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{endpoint}: {err}");
        assert!(err.contains("S3 endpoint"), "{endpoint}: {err}");
    }
}
