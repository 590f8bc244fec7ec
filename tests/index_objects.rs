//! Index objects (format-spec "Index objects"): a local repository rebuilds its index from them, an older
//! repository is upgraded by prune, and every write of a backup or a prune can fail without leaving a
//! snapshot that names missing data or an index that cannot be rebuilt from the repository.

mod harness;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use cairn::backend::fault::{Fault, FaultyBackend};
use cairn::backend::local::LocalBackend;
use cairn::backup::{backup, BackupOptions};
use cairn::check::{check, ReadData};
use cairn::config::Config;
use cairn::gc::{prune, PruneOptions};
use cairn::index_sync::{counter, OBJECTS_READ, TRAILERS_READ};
use cairn::progress::Progress;
use cairn::Repository;
use harness::*;

fn remove_index(repo: &Path) {
    for f in ["index.sqlite", "index.sqlite-wal", "index.sqlite-shm"] {
        let _ = fs::remove_file(index_file(repo).with_file_name(f));
    }
}

/// (index objects read, pack trailers read) by the index at `repo`.
fn counts(repo: &Path) -> (u64, u64) {
    let idx = cairn::index::Index::open_read_only(&index_file(repo)).unwrap();
    (
        counter(&idx, OBJECTS_READ).unwrap(),
        counter(&idx, TRAILERS_READ).unwrap(),
    )
}

fn index_objects(repo: &Path) -> usize {
    fs::read_dir(repo.join("index"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_local_repository_whose_index_is_deleted_opens_from_its_index_objects_and_restores_byte_identical(
) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let src = dir.path().join("src");
    build_rich_tree(&src, 60);
    fs::write(src.join("big.bin"), pseudo_random(5_000_000, 9)).unwrap();
    ok(cairn(&repo).arg("init"));
    ok(cairn(&repo).args(["--connections", "3", "backup", src.to_str().unwrap()]));
    assert!(
        index_objects(&repo) >= 1,
        "the backup wrote an index object"
    );
    remove_index(&repo);
    let t = dir.path().join("t");
    ok(cairn(&repo).args(["restore", "latest", "--target", t.to_str().unwrap()]));
    assert_same_tree(&src, &t.join("src"));
    let (objects, trailers) = counts(&repo);
    assert_eq!(objects as usize, index_objects(&repo));
    assert_eq!(
        trailers, 0,
        "rebuilt from the index objects, not the pack trailers"
    );
    let again: serde_json::Value = serde_json::from_str(&ok(cairn(&repo).args([
        "backup",
        "--json",
        "--force",
        src.to_str().unwrap(),
    ])))
    .unwrap();
    assert_eq!(again["chunks_new"], 0, "every blob is known again: {again}");
    ok(cairn(&repo).args(["check", "--read-data"]));
}

#[test]
fn a_repository_from_before_index_objects_works_and_prune_upgrades_it() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let src = dir.path().join("src");
    build_rich_tree(&src, 40);
    // Plaintext, as every repository written before index objects is.
    ok(cairn(&repo).args(["init", "--insecure-no-encryption"]));
    ok(cairn(&repo).args(["backup", src.to_str().unwrap()]));
    // As an older cairn left it: packs and an index.sqlite, no index objects.
    fs::remove_dir_all(repo.join("index")).unwrap();
    let t = dir.path().join("t1");
    ok(cairn(&repo).args(["restore", "latest", "--target", t.to_str().unwrap()]));
    assert_same_tree(&src, &t.join("src"));
    fs::write(src.join("new.bin"), pseudo_random(2_000_000, 5)).unwrap();
    ok(cairn(&repo).args(["backup", src.to_str().unwrap()]));
    ok(cairn(&repo).arg("prune"));
    // Every pack still needed is now listed: the index comes back from the objects alone.
    remove_index(&repo);
    let t = dir.path().join("t2");
    ok(cairn(&repo).args(["restore", "latest", "--target", t.to_str().unwrap()]));
    assert_same_tree(&src, &t.join("src"));
    assert_eq!(counts(&repo).1, 0, "no trailer read after the upgrade");
    let out = ok(cairn(&repo).args(["check", "--read-data"]));
    assert!(!out.contains("no index object"), "{out}");
}

/// A repository with one snapshot, `src` backed up, and small packs.
fn small_repo(root: &Path, src: &Path) -> std::path::PathBuf {
    let repo = root.join("repo");
    let mut config = Config::new_default();
    config.pack_target_size = 1 << 20;
    drop(Repository::init(&repo, config).unwrap());
    let r = Repository::open(&repo).unwrap();
    backup(
        &r,
        BackupOptions {
            paths: vec![src.to_path_buf()],
            progress: Progress::hidden(),
            ..BackupOptions::default()
        },
    )
    .unwrap();
    repo
}

fn faulty(repo: &Path) -> (FaultyBackend, Repository) {
    let f = FaultyBackend::new(Arc::new(LocalBackend::new(repo.to_path_buf())));
    let r = Repository::open_with(Arc::new(f.clone())).unwrap();
    (f, r)
}

/// `check --read-data` finds no error and no damage; warnings (unindexed packs) are allowed. Then the same
/// from an index rebuilt from the repository (index objects and pack listing).
fn assert_sound(repo: &Path, snapshots: usize, what: &str) {
    assert_sound_but_torn(repo, snapshots, what, false)
}

/// As [`assert_sound`], except that after a torn write (half an object stored under its name: a store
/// without atomic puts) a half index object is reported as an error — and only that: its packs are read
/// from their trailers, so no data is missing, and the next prune replaces it.
fn assert_sound_but_torn(repo: &Path, snapshots: usize, what: &str, torn: bool) {
    for rebuilt in [false, true] {
        if rebuilt {
            remove_index(repo);
        }
        let r = Repository::open(repo).unwrap();
        assert_eq!(r.snapshots().unwrap().len(), snapshots, "{what}");
        let report = check(&r, ReadData::All, &Progress::hidden()).unwrap();
        let errors_allowed = report
            .errors
            .iter()
            .all(|e| torn && e.starts_with("index object ") && e.contains("`prune`"));
        assert!(
            errors_allowed && report.damaged.is_empty() && report.read_errors.is_empty(),
            "{what} (rebuilt index: {rebuilt}): {report:?}"
        );
    }
}

fn corpus(root: &Path, seed: u64) -> std::path::PathBuf {
    let src = root.join(format!("src{seed}"));
    fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..4 {
        fs::write(
            src.join(format!("f{i}")),
            pseudo_random(900_000, seed * 10 + i),
        )
        .unwrap();
    }
    fs::write(src.join("d/small"), b"small").unwrap();
    src
}

/// The faults each write (a delete counts as one) is put through: an error, a torn write (half the object
/// stored, then an error), and the store going away at that write (it and every later one failing: a crash
/// as far as the repository can tell).
const FAULTS: [(Fault, bool); 3] = [
    (Fault::Os(libc::EIO), false),
    (Fault::Tear, false),
    (Fault::Os(libc::EIO), true),
];

fn arm(f: &FaultyBackend, n: u64, fault: Fault, from_on: bool) {
    if from_on {
        f.fail_writes_from(n, fault);
    } else {
        f.fail_write(n, fault);
    }
}

#[test]
fn every_failed_write_of_a_backup_leaves_no_snapshot_naming_missing_data() {
    let dir = tempfile::tempdir().unwrap();
    let first = corpus(dir.path(), 1);
    let second = corpus(dir.path(), 2);
    let opts = || BackupOptions {
        paths: vec![second.clone()],
        progress: Progress::hidden(),
        ..BackupOptions::default()
    };
    // How many writes a clean run makes.
    let writes = {
        let d = tempfile::tempdir().unwrap();
        let repo = small_repo(d.path(), &first);
        let (f, r) = faulty(&repo);
        backup(&r, opts()).unwrap();
        f.writes()
    };
    assert!(
        writes >= 6,
        "packs, index objects, snapshot, lock: {writes}"
    );
    for n in 1..=writes {
        for (fault, from_on) in FAULTS {
            let d = tempfile::tempdir().unwrap();
            let repo = small_repo(d.path(), &first);
            let (f, r) = faulty(&repo);
            arm(&f, n, fault, from_on);
            let result = backup(&r, opts());
            drop(r);
            let what = format!(
                "write {n} of {writes} failing with {fault:?} (and every later one: {from_on}): {result:?}"
            );
            // The process "exits": a lock it failed to remove would be stale (its pid gone).
            let _ = fs::remove_dir_all(repo.join("locks"));
            let expected = if result.is_ok() { 2 } else { 1 };
            assert_sound_but_torn(&repo, expected, &what, fault == Fault::Tear);
            // The next backup and a prune succeed, and the repository stays sound.
            let r = Repository::open(&repo).unwrap();
            backup(&r, opts()).unwrap();
            prune(&r, PruneOptions::default()).unwrap();
            drop(r);
            assert_sound(&repo, expected + 1, &what);
        }
    }
}

#[test]
fn every_failed_write_of_a_prune_leaves_every_kept_snapshot_whole() {
    let dir = tempfile::tempdir().unwrap();
    let first = corpus(dir.path(), 3);
    let second = corpus(dir.path(), 4);
    let prepare = |root: &Path| {
        let repo = small_repo(root, &first);
        let r = Repository::open(&repo).unwrap();
        backup(
            &r,
            BackupOptions {
                paths: vec![second.clone()],
                progress: Progress::hidden(),
                ..BackupOptions::default()
            },
        )
        .unwrap();
        // Forget the first snapshot: its packs become garbage, shared ones are repacked.
        let (id, _) = r.snapshots().unwrap()[0].clone();
        r.remove_snapshot(&id).unwrap();
        repo
    };
    let opts = PruneOptions {
        max_unused_percent: 0.0,
        dry_run: false,
    };
    let writes = {
        let d = tempfile::tempdir().unwrap();
        let repo = prepare(d.path());
        let (f, r) = faulty(&repo);
        let report = prune(&r, opts).unwrap();
        assert!(report.packs_deleted > 0, "{report:?}");
        f.writes()
    };
    for (n, (fault, from_on)) in (1..=writes).flat_map(|n| FAULTS.map(|f| (n, f))) {
        let d = tempfile::tempdir().unwrap();
        let repo = prepare(d.path());
        let (f, r) = faulty(&repo);
        arm(&f, n, fault, from_on);
        let result = prune(&r, opts);
        drop(r);
        let what = format!(
            "write {n} of {writes} of prune failing with {fault:?} (and every later one: {from_on}): {result:?}"
        );
        let _ = fs::remove_dir_all(repo.join("locks"));
        assert_sound_but_torn(&repo, 1, &what, fault == Fault::Tear);
        let r = Repository::open(&repo).unwrap();
        prune(&r, opts).unwrap();
        let t = d.path().join("t");
        let (_, snap) = r.snapshots().unwrap()[0].clone();
        cairn::restore::restore(
            &r,
            &snap,
            &cairn::restore::RestoreOptions {
                target: t.clone(),
                progress: Progress::hidden(),
                ..Default::default()
            },
        )
        .unwrap();
        drop(r);
        assert_same_tree(&second, &t.join(second.file_name().unwrap()));
        assert_sound(&repo, 1, &what);
    }
}
