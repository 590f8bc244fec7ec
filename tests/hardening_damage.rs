//! Issue 11, items 1 and 3: only verified corruption is damage, and damage that was found is never
//! deduplicated against.
//!
//! - A read error that is not corruption (EACCES, EIO, EMFILE, ...) stops `repair snapshots` with that error and
//!   changes nothing; `check` reports it as an error that is not damage; nothing records it as damage.
//! - A blob found damaged by `check --read-data`, `restore` or `repair snapshots` is stored again by the next
//!   backup, which heals every snapshot that needs it (old ones included, without rewriting them); `prune` then
//!   drops the damaged copy and `check --read-data` is clean.

mod harness;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use harness::*;

/// Every snapshot file with its bytes.
fn snapshot_files(repo: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = fs::read_dir(repo.join("snapshots"))
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let b = fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    out.sort();
    out
}

fn snapshot_ids(repo: &Path) -> Vec<String> {
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&ok(cairn(repo).args(["snapshots", "--json"]))).unwrap();
    list.iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// The uid the permission tests run cairn as.
const NOBODY: u32 = 65534;

/// `cairn` run as an unprivileged user (root ignores `chmod 000`), with its own index cache beside the
/// repository it was given.
fn nobody(repo: &Path) -> Command {
    let mut c = cairn_as_nobody(repo, &repo.with_file_name("nobody-cache"));
    c.env("HOME", "/nonexistent")
        .stdin(std::process::Stdio::null());
    c
}

/// Hands the temp dir and the repository in it (not the source) to the unprivileged user; false (with the
/// reason printed) if that is impossible.
fn give_to_nobody(dir: &Path) -> bool {
    let owner = format!("{NOBODY}:{NOBODY}");
    let chown = |args: &[&str]| {
        Command::new("chown")
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    };
    let repo = dir.join("repo");
    if !chown(&[&owner, dir.to_str().unwrap()]) || !chown(&["-R", &owner, repo.to_str().unwrap()]) {
        eprintln!("SKIPPED: cannot chown the test repository to uid {NOBODY}");
        return false;
    }
    let probe = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
            cairn_bin(),
            "--version",
        ])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: cannot run cairn as uid {NOBODY} (setpriv failed)");
        return false;
    }
    true
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn restore_to(repo: &Path, snapshot: &str, target: &Path) {
    let _ = fs::remove_dir_all(target);
    ok(cairn(repo).args(["restore", snapshot, "--target", target.to_str().unwrap()]));
}

fn chunks_new(v: &serde_json::Value) -> u64 {
    v["chunks_new"].as_u64().unwrap()
}

/// A pack (or the directory holding it) the user cannot read: `repair snapshots` fails naming the permission
/// error, exits 1 and changes nothing; after the permission is given back every snapshot restores byte for
/// byte, and nothing was recorded as damage (a forced backup stores no new chunk).
#[test]
fn repair_snapshots_stops_on_a_permission_error_and_changes_nothing() {
    if local_only(
        "a pack made unreadable by chmod: an S3 server has no such per-object state to test",
    ) {
        return;
    }
    for what in ["pack file", "pack directory"] {
        let (dir, repo, src, victim) = two_pack_repo();
        if !give_to_nobody(dir.path()) {
            return;
        }
        let locked = match what {
            "pack file" => victim.clone(),
            _ => victim.parent().unwrap().to_path_buf(),
        };
        let ids = snapshot_ids(&repo);
        let files = snapshot_files(&repo);
        let pack_list = packs(&repo);
        chmod(&locked, 0o000);
        for forget in [false, true] {
            let mut cmd = nobody(&repo);
            cmd.args(["repair", "snapshots"]);
            if forget {
                cmd.arg("--forget-damaged");
            }
            let err = fails(&mut cmd, 1);
            assert!(err.contains("Permission denied"), "{what}: {err}");
            assert_eq!(snapshot_ids(&repo), ids, "{what}: snapshots changed");
            assert!(
                snapshot_files(&repo) == files,
                "{what}: snapshot files changed"
            );
            chmod(&locked, 0o755);
            assert_eq!(packs(&repo), pack_list, "{what}: packs changed");
            chmod(&locked, 0o000);
        }
        // Readers hit the same error and record nothing.
        let t = dir.path().join("nobody-restore");
        let err = fails(
            nobody(&repo).args(["restore", "latest", "--target", t.to_str().unwrap()]),
            1,
        );
        assert!(err.contains("Permission denied"), "{what}: {err}");
        chmod(&locked, if what == "pack file" { 0o600 } else { 0o755 });
        let old = dir.path().join("old");
        restore_to(&repo, &ids[0], &old);
        assert_eq!(
            fs::read(old.join("src/victim.bin")).unwrap(),
            fs::read(src.join("victim.bin")).unwrap()
        );
        let new = dir.path().join("new");
        restore_to(&repo, &ids[1], &new);
        assert_same_tree(&src, &new.join("src"));
        let again = backup_json(&repo, &["--force", src.to_str().unwrap()]);
        assert_eq!(
            chunks_new(&again),
            0,
            "{what}: a permission error was recorded as damage"
        );
        ok(cairn(&repo).args(["check", "--read-data"]));
    }
}

/// `check` reports an unreadable pack as an error that is not damage: exit 1, the permission error named, no
/// damaged blob listed, and no advice to repair or forget snapshots.
#[test]
fn check_reports_a_permission_error_as_an_error_not_damage() {
    if local_only(
        "a pack made unreadable by chmod: an S3 server has no such per-object state to test",
    ) {
        return;
    }
    let (dir, repo, src, victim) = two_pack_repo();
    if !give_to_nobody(dir.path()) {
        return;
    }
    chmod(&victim, 0o000);
    for args in [&["check"][..], &["check", "--read-data"]] {
        let (code, out, err) = run(nobody(&repo).args(args));
        assert_eq!(code, 1, "{args:?}\n{out}\n{err}");
        assert!(out.contains("Permission denied"), "{args:?}: {out}");
        assert!(!out.contains("DAMAGE"), "{args:?}: {out}");
        assert!(!out.contains("damaged blob"), "{args:?}: {out}");
        assert!(!out.contains("repair snapshots"), "{args:?}: {out}");
        assert!(!out.contains("forget"), "{args:?}: {out}");
        let (code, out, _) = run(nobody(&repo).args(args).arg("--json"));
        assert_eq!(code, 1);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["damaged"].as_array().unwrap().len(), 0, "{out}");
        assert!(
            v["read_errors"].to_string().contains("Permission denied"),
            "{out}"
        );
    }
    chmod(&victim, 0o600);
    let again = backup_json(&repo, &["--force", src.to_str().unwrap()]);
    assert_eq!(
        chunks_new(&again),
        0,
        "a permission error was recorded as damage"
    );
    ok(cairn(&repo).args(["check", "--read-data"]));
}

/// Many files in one 16 MiB pack and a small `victim.bin` (one chunk, stored raw), whose bytes are found in the
/// pack and one of them flipped. The damaged chunk is far below prune's repack threshold.
fn rotten() -> (tempfile::TempDir, PathBuf, PathBuf, String) {
    // Plaintext: the victim's chunk is found in its pack by its bytes.
    let (dir, repo) = new_plaintext_repo();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for n in 0..6u64 {
        fs::write(
            src.join(format!("f{n}.bin")),
            pseudo_random(1_100_000, 10 + n),
        )
        .unwrap();
    }
    let victim = pseudo_random(150_000, 7);
    fs::write(src.join("victim.bin"), &victim).unwrap();
    let v = backup_json(&repo, &[src.to_str().unwrap()]);
    let old = v["snapshot_id"].as_str().unwrap().to_string();
    let needle = &victim[70_000..70_064];
    let mut flipped = 0;
    for p in packs(&repo) {
        let mut bytes = obj_read(&p);
        if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
            bytes[at + 10] ^= 0x04;
            if !is_s3(&p) {
                chmod(&p, 0o600);
            }
            obj_write(&p, &bytes);
            flipped += 1;
        }
    }
    assert_eq!(flipped, 1, "the victim's chunk is stored once, raw");
    (dir, repo, src, old)
}

/// A new backup of the same source stores the damaged chunk again; the old snapshot (not rewritten) and the
/// new one restore byte for byte; prune drops the damaged copy and `check --read-data` is clean.
fn heal_and_verify(dir: &Path, repo: &Path, src: &Path, old: &str, force: bool) {
    let mut args = vec![src.to_str().unwrap()];
    if force {
        args.insert(0, "--force");
    }
    let v = backup_json(repo, &args);
    assert!(
        chunks_new(&v) >= 1,
        "the damaged chunk was deduplicated against: {v}"
    );
    let new = v["snapshot_id"].as_str().unwrap().to_string();
    assert!(
        snapshot_ids(repo).contains(&old.to_string()),
        "old snapshot rewritten"
    );
    for (id, name) in [(old, "old"), (new.as_str(), "new")] {
        let t = dir.join(format!("healed-{name}"));
        restore_to(repo, id, &t);
        assert_same_tree(src, &t.join("src"));
    }
    let out = ok(cairn(repo).arg("prune"));
    assert!(
        out.contains("1 repacked"),
        "the pack holding the damaged copy goes: {out}"
    );
    ok(cairn(repo).args(["check", "--read-data"]));
    for (id, name) in [(old, "old"), (new.as_str(), "new")] {
        let t = dir.join(format!("pruned-{name}"));
        restore_to(repo, id, &t);
        assert_same_tree(src, &t.join("src"));
    }
}

#[test]
fn bit_rot_found_by_check_is_not_deduplicated_and_the_next_backup_heals_it() {
    for force in [true, false] {
        let (dir, repo, src, old) = rotten();
        let (code, out, _) = run(cairn(&repo).args(["check", "--read-data"]));
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("victim.bin"), "{out}");
        assert!(out.contains("back up the source again"), "{out}");
        assert!(out.contains("cairn prune"), "{out}");
        let (code, out, _) = run(cairn(&repo).args(["check", "--json"]));
        assert_eq!(
            code, 1,
            "recorded damage is reported without reading data: {out}"
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["damaged"].as_array().unwrap().len(), 1, "{out}");
        assert!(
            v["hints"].to_string().contains("back up the source again"),
            "{out}"
        );
        heal_and_verify(dir.path(), &repo, &src, &old, force);
    }
}

#[test]
fn bit_rot_found_by_restore_is_not_deduplicated_and_the_next_backup_heals_it() {
    let (dir, repo, src, old) = rotten();
    let t = dir.path().join("first");
    let err = fails(
        cairn(&repo).args(["restore", &old, "--target", t.to_str().unwrap()]),
        1,
    );
    assert!(err.contains("victim.bin"), "{err}");
    assert!(err.contains("back up the source again"), "{err}");
    heal_and_verify(dir.path(), &repo, &src, &old, true);
}

#[test]
fn bit_rot_found_by_dump_is_not_deduplicated_and_the_next_backup_heals_it() {
    let (dir, repo, src, old) = rotten();
    let (code, _, err) = run(cairn(&repo).args(["dump", &old, "src/victim.bin"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("back up the source again"), "{err}");
    heal_and_verify(dir.path(), &repo, &src, &old, true);
}

/// `repair snapshots` (rewriting or forgetting) leaves the damaged blob unusable for dedup: the next backup
/// stores it again and restores byte for byte; prune then leaves a clean repository.
#[test]
fn bit_rot_found_by_repair_is_not_deduplicated_against() {
    for forget in [false, true] {
        let (dir, repo, src, old) = rotten();
        let mut cmd = cairn(&repo);
        cmd.args(["repair", "snapshots"]);
        if forget {
            cmd.arg("--forget-damaged");
        }
        let out = ok(&mut cmd);
        assert!(out.contains("back up the source again"), "{out}");
        assert!(!snapshot_ids(&repo).contains(&old), "damaged snapshot kept");
        let v = backup_json(&repo, &["--force", src.to_str().unwrap()]);
        assert!(
            chunks_new(&v) >= 1,
            "the damaged chunk was deduplicated against: {v}"
        );
        let t = dir.path().join("after-repair");
        restore_to(&repo, v["snapshot_id"].as_str().unwrap(), &t);
        assert_same_tree(&src, &t.join("src"));
        ok(cairn(&repo).arg("prune"));
        ok(cairn(&repo).args(["check", "--read-data"]));
        restore_to(&repo, v["snapshot_id"].as_str().unwrap(), &t);
        assert_same_tree(&src, &t.join("src"));
    }
}

/// `repair index` rebuilds from pack trailers, which know nothing of damage: it carries the records over, so a
/// rebuilt index does not re-trust a blob known bad.
#[test]
fn repair_index_keeps_the_record_of_damage() {
    let (dir, repo, src, old) = rotten();
    let (code, _, _) = run(cairn(&repo).args(["check", "--read-data"]));
    assert_eq!(code, 1);
    ok(cairn(&repo).args(["repair", "index"]));
    heal_and_verify(dir.path(), &repo, &src, &old, true);
}

type MakeError = fn() -> std::io::Error;

/// Fails the `fail_at`-th object read (1-based) with the error `make` returns, like a disk returning EIO once;
/// every other read goes to the repository.
struct FaultyReader<'r> {
    repo: &'r cairn::Repository,
    fail_at: usize,
    make: MakeError,
    reads: std::sync::atomic::AtomicUsize,
}

impl FaultyReader<'_> {
    fn tick(&self, id: &cairn::Id) -> cairn::Result<()> {
        let n = self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if n != self.fail_at {
            return Ok(());
        }
        let pack = self.repo.locate(id)?.pack;
        Err(cairn::Error::io(
            self.repo.pack_location(&pack),
            (self.make)(),
        ))
    }
}

impl cairn::repair::ObjectReader for FaultyReader<'_> {
    fn read_blob(&self, id: &cairn::Id) -> cairn::Result<Vec<u8>> {
        self.tick(id)?;
        self.repo.read_blob(id)
    }
    fn read_tree(&self, id: &cairn::Id) -> cairn::Result<cairn::tree::Tree> {
        self.tick(id)?;
        self.repo.read_tree(id)
    }
}

/// A read error that is not corruption, at any read of `repair snapshots`, in a healthy repository and in one
/// with real damage: repair fails with that error and changes nothing (no snapshot rewritten or removed, no
/// pack written, no damage recorded).
#[test]
fn repair_snapshots_stops_on_an_io_error_and_changes_nothing() {
    if local_only("drives the library's repair with a fault-injecting reader over a `cp -a` copy of the repository") {
        return;
    }
    let faults: [(&str, MakeError); 3] = [
        ("EIO", || std::io::Error::from_raw_os_error(libc::EIO)),
        ("EMFILE", || std::io::Error::from_raw_os_error(libc::EMFILE)),
        ("other", || std::io::Error::other("controller reset")),
    ];
    let healthy = two_pack_repo();
    let damaged = rotten();
    for (label, repo_dir) in [("healthy", &healthy.1), ("damaged", &damaged.1)] {
        let repo = open_repo(repo_dir);
        let counter = FaultyReader {
            repo: &repo,
            fail_at: 0,
            make: faults[0].1,
            reads: Default::default(),
        };
        // Count the reads of a repair that changes nothing: verification only, against a copy of the repository.
        let copy = tempfile::tempdir().unwrap();
        let status = Command::new("cp")
            .args([
                "-a",
                repo_dir.to_str().unwrap(),
                copy.path().to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(status.success());
        let copy_repo = open_repo(&copy.path().join("repo"));
        let counting = FaultyReader {
            repo: &copy_repo,
            ..counter
        };
        cairn::repair::repair_snapshots_with(&copy_repo, &counting, false).unwrap();
        let reads = counting.reads.into_inner();
        assert!(reads >= 4, "{label}: {reads} reads");
        let ids = snapshot_ids(repo_dir);
        let files = snapshot_files(repo_dir);
        let pack_list = packs(repo_dir);
        for (name, make) in faults {
            for fail_at in 1..=reads {
                for forget in [false, true] {
                    let reader = FaultyReader {
                        repo: &repo,
                        fail_at,
                        make,
                        reads: Default::default(),
                    };
                    let r = cairn::repair::repair_snapshots_with(&repo, &reader, forget);
                    let what = format!("{label}, {name} at read {fail_at}, forget {forget}");
                    let err = match r {
                        Ok(done) => panic!("{what}: repair went on: {done:?}"),
                        Err(e) => e,
                    };
                    assert!(!err.is_damage(), "{what}: {err}");
                    assert_eq!(snapshot_ids(repo_dir), ids, "{what}");
                    assert!(
                        snapshot_files(repo_dir) == files,
                        "{what}: snapshot files changed"
                    );
                    assert_eq!(packs(repo_dir), pack_list, "{what}: packs written");
                    assert!(
                        repo.index().damage_records().unwrap().is_empty(),
                        "{what}: damage recorded"
                    );
                }
            }
        }
    }
}

/// A pack that was missing for a while (a mount that came late) is damage while it is gone, and recorded; once
/// it is back, `check --read-data` proves its copies good and drops the record, so it is trusted again (a forced
/// backup stores nothing new).
#[test]
fn a_record_of_damage_that_check_read_data_disproves_is_dropped() {
    let (dir, repo, src, victim) = two_pack_repo();
    let aside = obj_read(&victim);
    obj_delete(&victim);
    let t = dir.path().join("t");
    let err = fails(
        cairn(&repo).args(["restore", "latest", "--target", t.to_str().unwrap()]),
        1,
    );
    assert!(err.contains("back up the source again"), "{err}");
    obj_write(&victim, &aside);
    if !is_s3(&repo) {
        let (code, out, _) = run(cairn(&repo).arg("check"));
        assert_eq!(code, 1, "the record stands until the data is read: {out}");
        assert!(out.contains("recorded damaged"), "{out}");
    }
    // (An object-store cache follows the pack listing at every open: the pack's blobs were dropped while it
    // was gone, so nothing could deduplicate against them, and its return is read from its trailer.)
    ok(cairn(&repo).args(["check", "--read-data"]));
    ok(cairn(&repo).arg("check"));
    let again = backup_json(&repo, &["--force", src.to_str().unwrap()]);
    assert_eq!(chunks_new(&again), 0);
    restore_to(&repo, "latest", &t);
    assert_same_tree(&src, &t.join("src"));
}

/// A repository with two backups of `src/a`, holding `first` then `second`: (dir, repo, older id, newer id).
fn two_snapshots(first: &[u8], second: &[u8]) -> (tempfile::TempDir, PathBuf, String, String) {
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), first).unwrap();
    ok(cairn(&repo).args(["backup", src.to_str().unwrap()]));
    let older = snapshot_ids(&repo);
    fs::write(src.join("a"), second).unwrap();
    ok(cairn(&repo).args(["backup", src.to_str().unwrap()]));
    let newer: Vec<String> = snapshot_ids(&repo)
        .into_iter()
        .filter(|id| !older.contains(id))
        .collect();
    assert_eq!((older.len(), newer.len()), (1, 1));
    (dir, repo, older[0].clone(), newer[0].clone())
}

#[test]
fn a_snapshot_object_that_cannot_be_read_is_named_when_latest_and_listings_leave_it_out() {
    if local_only("truncates a snapshot file and uses a fresh index cache directory") {
        return;
    }
    let (dir, repo, older, newest) = two_snapshots(b"yesterday", b"today");
    let (older, newest) = ([older], [newest]);
    // The newest snapshot object rots; a new host (or a lost cache) opens the repository.
    fs::write(repo.join("snapshots").join(&newest[0]), b"").unwrap();
    let fresh = |c: &mut Command| {
        c.env("XDG_CACHE_HOME", dir.path().join("fresh-cache"));
    };

    let target = dir.path().join("out");
    let mut restore = cairn(&repo);
    restore.args(["restore", "latest", "--target", target.to_str().unwrap()]);
    fresh(&mut restore);
    let (code, out, err) = run(&mut restore);
    assert!(!err.contains("panicked"), "{err}");
    // `latest` can only be the snapshot that is still readable (restored exactly), but never silently so.
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(&older[0][..8]), "{out}");
    assert_eq!(fs::read(target.join("src/a")).unwrap(), b"yesterday");
    assert!(
        err.contains(&newest[0]) && err.contains("cannot be read"),
        "the damaged snapshot is named: {err}"
    );
    let mut list = cairn(&repo);
    list.arg("snapshots");
    fresh(&mut list);
    let (code, _, err) = run(&mut list);
    assert_eq!(code, 0);
    assert!(err.contains(&newest[0]), "listings name it too: {err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("cannot be read")).count(),
        1,
        "once per command: {err}"
    );
}

#[test]
fn a_lost_snapshot_object_blocks_prune_until_forget_names_it() {
    if local_only("truncates a snapshot file and uses a fresh index cache directory") {
        return;
    }
    let (dir, repo, kept, lost) = two_snapshots(b"kept", b"lost");
    let kept = vec![kept];
    fs::write(repo.join("snapshots").join(&lost), b"rot").unwrap();

    // This host's cache still lists it: forget by a prefix removes the row and the object.
    // Another host (a fresh cache) has no row for it, so what it needed is unknown: prune refuses and says
    // how to get past it; check says so too.
    for cache in ["", "fresh-cache"] {
        let on_host = |args: &[&str]| {
            let mut c = cairn(&repo);
            c.args(args);
            if !cache.is_empty() {
                c.env("XDG_CACHE_HOME", dir.path().join(cache));
            }
            c
        };
        if !cache.is_empty() {
            let err = fails(&mut on_host(&["prune"]), 1);
            assert!(err.contains(&format!("cairn forget {lost}")), "{err}");
            let (code, out, _) = run(&mut on_host(&["check"]));
            assert_eq!(code, 1, "{out}");
            assert!(out.contains(&format!("cairn forget {lost}")), "{out}");
            // Forgetting something else does not touch it.
            fails(&mut on_host(&["forget", "abcdef0123"]), 1);
            assert!(repo.join("snapshots").join(&lost).exists());
        }
        let (code, out, err) = run(&mut on_host(&["forget", &lost[..10]]));
        assert_eq!(code, 0, "{out}\n{err}");
        assert!(err.contains(&lost) && err.contains("damaged"), "{err}");
        assert!(!repo.join("snapshots").join(&lost).exists());
        assert!(repo.join("snapshots").join(&kept[0]).exists());
        ok(&mut on_host(&["prune"]));
        ok(&mut on_host(&["check", "--read-data"]));
        let again = dir.path().join(format!("again{cache}"));
        restore_to(&repo, &kept[0], &again);
        assert_eq!(fs::read(again.join("src/a")).unwrap(), b"kept");
        assert_eq!(snapshot_ids(&repo), kept);
        // The second round rots the same snapshot again, for the host without a row.
        if cache.is_empty() {
            fs::write(repo.join("snapshots").join(&lost), b"rot").unwrap();
        }
    }
}
