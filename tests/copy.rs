//! `cairn copy`: snapshots (trees and streams) and instance configurations from one repository into another,
//! local to S3 and back, deduplicating against the target, keeping the ids, idempotent, and safe to
//! interrupt.

mod harness;
mod s3env;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{assert_same_tree, build_rich_tree, fails, ok, pseudo_random, run};
use s3env::{s3_env, Place};
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// `cairn` on `to`, as a host with cache `cache`, able to reach the S3 test server for either repository.
fn on(to: &Place, cache: &Path) -> Command {
    let mut c = to.cairn(cache);
    if !to.is_s3() {
        s3_env(&mut c);
    }
    c
}

fn copy_json(to: &Place, from: &Place, cache: &Path, extra: &[&str]) -> Value {
    let from = from.url();
    json(&ok(on(to, cache)
        .args(["--json", "copy", "--from-repo", &from])
        .args(extra)))
}

fn snapshot_ids(p: &Place, cache: &Path) -> Vec<String> {
    let v = json(&ok(p.cairn(cache).args(["--json", "snapshots"])));
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn backup_stdin(p: &Place, cache: &Path, name: &str, data: &[u8]) -> String {
    backup_stdin_by(p.cairn(cache), name, data)
}

/// `backup --stdin` of `data` as stream `name` by `cmd` (a repository and password of the caller's choice);
/// returns the snapshot id.
fn backup_stdin_by(mut cmd: Command, name: &str, data: &[u8]) -> String {
    let mut child = cmd
        .args(["--json", "backup", "--stdin", "--stdin-name", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    json(&String::from_utf8_lossy(&out.stdout))["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn stream_bytes() -> Vec<u8> {
    let mut v = b"-- dump header\n".repeat(2000);
    v.extend(pseudo_random(2_000_000, 7));
    v
}

/// Restores `id` from `p` and compares the tree with `src` and the stream with `stream`.
fn assert_restores(p: &Place, cache: &Path, tree_id: &str, src: &Path, stream: (&str, &[u8])) {
    assert_restores_by(&|| p.cairn(cache), cache, tree_id, src, stream);
}

/// [`assert_restores`] with the commands `cairn()` makes; restores beside `cache`.
fn assert_restores_by(
    cairn: &dyn Fn() -> Command,
    cache: &Path,
    tree_id: &str,
    src: &Path,
    stream: (&str, &[u8]),
) {
    let t = cache
        .parent()
        .unwrap()
        .join(format!("restored-{}", &tree_id[..8]));
    let _ = fs::remove_dir_all(&t);
    ok(cairn().args(["restore", tree_id, "--target", t.to_str().unwrap()]));
    assert_same_tree(src, &t.join(src.file_name().unwrap()));
    let out = cairn().args(["dump", "latest", stream.0]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == stream.1, "stream bytes differ");
}

fn read_data_clean(p: &Place, cache: &Path) {
    let (code, out, err) = run(p.cairn(cache).args(["check", "--read-data"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("no errors"), "{out}{err}");
}

/// Local → S3 → local: every snapshot keeps its id, restores byte for byte (files and a stream), the target
/// reads clean, a second run copies nothing, a later copy transfers only new blobs, and instance
/// configurations follow with `--instances`.
#[test]
fn copy_local_to_s3_and_back_restores_identical_bytes_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let local = Place::local(dir.path(), "local");
    let s3 = Place::s3("copy");
    let back = Place::local(dir.path(), "back");
    ok(local.cairn(&cache).arg("init"));
    // Targets share the source's keys (keyed blob ids must agree for a copy to deduplicate).
    for p in [&s3, &back] {
        ok(on(p, &cache).args(["init", "--from-repo", &local.url()]));
    }
    let src = dir.path().join("data");
    build_rich_tree(&src, 20);
    ok(local.cairn(&cache).args([
        "instance",
        "add",
        "shop",
        "--path",
        src.to_str().unwrap(),
        "--keep-daily",
        "9",
    ]));
    let tree_id = json(&ok(local
        .cairn(&cache)
        .args(["--json", "instance", "backup", "shop"])))["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let stream = stream_bytes();
    let stream_id = backup_stdin(&local, &cache, "shop.dump", &stream);

    let r = copy_json(&s3, &local, &cache, &["--instances"]);
    let copied: Vec<&str> = r["copied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(copied, [tree_id.as_str(), stream_id.as_str()], "{r}");
    assert!(r["blobs_copied"].as_u64().unwrap() > 10, "{r}");
    assert_eq!(r["instances_copied"], serde_json::json!(["shop"]));
    assert_eq!(snapshot_ids(&s3, &cache), snapshot_ids(&local, &cache));
    read_data_clean(&s3, &cache);
    assert_restores(&s3, &cache, &tree_id, &src, ("shop.dump", &stream));
    let shop = json(&ok(s3
        .cairn(&cache)
        .args(["--json", "instance", "show", "shop"])));
    assert_eq!(shop["retention"]["daily"], 9);

    // Idempotent: nothing copied, and it says so.
    let again = ok(on(&s3, &cache).args(["copy", "--from-repo", &local.url(), "--instances"]));
    assert!(again.contains("nothing to copy"), "{again}");
    let r = copy_json(&s3, &local, &cache, &[]);
    assert_eq!(r["copied"], serde_json::json!([]));
    assert_eq!(r["already_present"].as_array().unwrap().len(), 2);

    // A new backup shares most blobs with the copied one: only the new ones travel.
    let docs_mtime = fs::metadata(src.join("docs")).unwrap();
    let docs_mtime = (docs_mtime.mtime(), docs_mtime.mtime_nsec());
    fs::write(src.join("docs/new.txt"), b"a new file").unwrap();
    ok(local.cairn(&cache).args(["instance", "backup", "shop"]));
    let r = copy_json(&s3, &local, &cache, &[]);
    let one = &r["copied"][0];
    assert_eq!(r["copied"].as_array().unwrap().len(), 1, "{r}");
    assert!(one["blobs_copied"].as_u64().unwrap() <= 4, "{r}");
    assert!(one["blobs_present"].as_u64().unwrap() > 10, "{r}");
    read_data_clean(&s3, &cache);

    // Back from S3, only the snapshots named (by prefix), into a fresh local repository.
    let r = copy_json(&back, &s3, &cache, &[&tree_id[..10], &stream_id[..10]]);
    assert_eq!(r["copied"].as_array().unwrap().len(), 2, "{r}");
    let mut want = vec![tree_id.clone(), stream_id.clone()];
    want.sort();
    let mut have = snapshot_ids(&back, &cache);
    have.sort();
    assert_eq!(have, want);
    read_data_clean(&back, &cache);
    fs::remove_file(src.join("docs/new.txt")).unwrap();
    harness::set_mtime(&src.join("docs"), docs_mtime.0, docs_mtime.1);
    assert_restores(&back, &cache, &tree_id, &src, ("shop.dump", &stream));
    assert!(
        json(&ok(back.cairn(&cache).args(["--json", "instance", "list"])))
            .as_array()
            .unwrap()
            .is_empty(),
        "instances are copied only with --instances"
    );
}

/// A local repository `from` and a local `to` sharing its keys (so a copy deduplicates and keeps ids), with
/// the cache directory both use.
fn source_and_target(dir: &Path) -> (PathBuf, Place, Place) {
    let cache = dir.join("cache");
    let from = Place::local(dir, "from");
    let to = Place::local(dir, "to");
    ok(from.cairn(&cache).arg("init"));
    ok(to.cairn(&cache).args(["init", "--from-repo", &from.url()]));
    (cache, from, to)
}

/// Sets a local repository's pack size to 1 MiB (before anything is written), so a copy writes many packs.
fn small_packs(repo: &Path) {
    let cfg_path = repo.join("config");
    let mut cfg = json(&fs::read_to_string(&cfg_path).unwrap());
    cfg["pack_target_size"] = serde_json::json!(1024 * 1024);
    fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
}

fn pack_count(repo: &Path) -> usize {
    let Ok(dirs) = fs::read_dir(repo.join("packs")) else {
        return 0;
    };
    dirs.filter_map(|d| fs::read_dir(d.ok()?.path()).ok())
        .map(|f| f.count())
        .sum()
}

/// kill -9 in the middle of a copy (packs written, snapshot not yet): the target is consistent (no
/// snapshot naming missing data, `check` clean), and running the copy again completes it with the same
/// bytes, reusing what the killed run stored.
#[test]
fn copy_killed_midway_leaves_the_target_consistent_and_a_rerun_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, from, to) = source_and_target(dir.path());
    let Place::Local(to_path) = &to else {
        unreachable!()
    };
    small_packs(to_path);
    let src: PathBuf = dir.path().join("big");
    fs::create_dir_all(&src).unwrap();
    for i in 0..12 {
        fs::write(src.join(format!("f{i}")), pseudo_random(1_000_000, 100 + i)).unwrap();
    }
    ok(from.cairn(&cache).args(["backup", src.to_str().unwrap()]));

    // 12 MB at 2 MiB/s: about six seconds, killed once a few packs are durable.
    let mut child = to
        .cairn(&cache)
        .args(["--limit-upload", "2048", "copy", "--from-repo", &from.url()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while pack_count(to_path) < 3 && started.elapsed() < Duration::from_secs(60) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "copy ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let packs_after_kill = pack_count(to_path);
    assert!(packs_after_kill >= 3);
    assert!(
        snapshot_ids(&to, &cache).is_empty(),
        "no snapshot before its data"
    );
    let (code, out, err) = run(to.cairn(&cache).arg("check"));
    assert_eq!(code, 0, "{out}{err}");

    let r = json(&ok(to.cairn(&cache).args([
        "--json",
        "copy",
        "--from-repo",
        &from.url(),
    ])));
    let one = &r["copied"][0];
    assert!(
        one["blobs_present"].as_u64().unwrap() >= 2,
        "the killed run's durable blobs are reused: {r}"
    );
    assert_eq!(snapshot_ids(&to, &cache), snapshot_ids(&from, &cache));
    read_data_clean(&to, &cache);
    let t = dir.path().join("restored");
    ok(to
        .cairn(&cache)
        .args(["restore", "latest", "--target", t.to_str().unwrap()]));
    assert_same_tree(&src, &t.join("big"));
}

/// 5,000 small distinct files in 50 directories of 100 below `src`: more files, chunks and tree nodes than
/// a copy holds at once.
fn many_files(src: &Path) {
    for d in 0..50u64 {
        let sub = src.join(format!("d{d:02}"));
        fs::create_dir_all(&sub).unwrap();
        for f in 0..100u64 {
            fs::write(
                sub.join(format!("f{f:03}")),
                pseudo_random(200, d * 1000 + f),
            )
            .unwrap();
        }
    }
}

/// Rewrites one file in ten of [`many_files`] with new content.
fn change_one_in_ten(src: &Path) {
    for d in 0..50u64 {
        for f in (0..100u64).step_by(10) {
            let path = src.join(format!("d{d:02}/f{f:03}"));
            fs::write(path, pseudo_random(300, 500_000 + d * 1000 + f)).unwrap();
        }
    }
}

/// A snapshot of more data chunks and trees than the copy holds at once (it saves them in batches as its
/// walk goes, so memory stays bounded): 5,000 small distinct files in 50 directories of 100, then a second
/// snapshot that changes one file in ten. Both copies restore byte for byte from the target, the target
/// reads clean, and the second copy stores only the changed files and the trees above them.
#[test]
fn copy_of_snapshots_larger_than_one_batch_restores_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, from, to) = source_and_target(dir.path());
    let src = dir.path().join("many");
    many_files(&src);
    let first = json(&ok(from.cairn(&cache).args([
        "--json",
        "backup",
        src.to_str().unwrap(),
    ])))["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = copy_json(&to, &from, &cache, &[]);
    // 5,000 chunks and 52 trees (50 directories, `many` and the root), more than one batch of 4,096 chunks.
    assert_eq!(r["blobs_copied"].as_u64().unwrap(), 5052, "{r}");
    let restored = dir.path().join("restored-1");
    ok(to
        .cairn(&cache)
        .args(["restore", &first, "--target", restored.to_str().unwrap()]));
    assert_same_tree(&src, &restored.join("many"));

    change_one_in_ten(&src);
    ok(from.cairn(&cache).args(["backup", src.to_str().unwrap()]));
    let r = copy_json(&to, &from, &cache, &[]);
    // 500 new chunks, 50 changed directories, `many` and the root.
    assert_eq!(r["copied"][0]["blobs_copied"].as_u64().unwrap(), 552, "{r}");
    assert_eq!(snapshot_ids(&to, &cache), snapshot_ids(&from, &cache));
    read_data_clean(&to, &cache);
    let restored = dir.path().join("restored-2");
    ok(to
        .cairn(&cache)
        .args(["restore", "latest", "--target", restored.to_str().unwrap()]));
    assert_same_tree(&src, &restored.join("many"));
}

/// A source that is no repository or not a supported URL, or a snapshot the source lacks: one error line,
/// a non-zero exit, and the target unchanged.
#[test]
fn copy_reports_one_clear_error_for_a_bad_source_or_an_unknown_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (cache, from, to) = source_and_target(dir.path());
    let src = dir.path().join("data");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    ok(from.cairn(&cache).args(["backup", src.to_str().unwrap()]));
    let copy = |args: &[&str]| {
        let mut c = to.cairn(&cache);
        c.arg("copy").args(args);
        c
    };
    let nowhere = dir.path().join("nowhere");
    for (args, code, says) in [
        (vec!["--from-repo", "gs://bucket/x"], 1, "not supported"),
        (
            vec!["--from-repo", nowhere.to_str().unwrap()],
            10,
            "not a cairn repository",
        ),
        (
            vec!["deadbeef", "--from-repo", &from.url()],
            1,
            "no snapshot matches",
        ),
        (
            vec!["zz", "--from-repo", &from.url()],
            1,
            "not a snapshot id",
        ),
    ] {
        let err = fails(&mut copy(&args), code);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(snapshot_ids(&to, &cache).is_empty());
}

/// One repository of the tests below: where it is, and the password options its commands need.
struct Repo {
    place: Place,
    password_file: Option<PathBuf>,
    cache: PathBuf,
}

impl Repo {
    /// A local repository `name` below `dir`, opened with the default password and `cache`.
    fn local(dir: &Path, cache: &Path, name: &str) -> Repo {
        Repo {
            place: Place::local(dir, name),
            password_file: None,
            cache: cache.to_path_buf(),
        }
    }

    fn cairn(&self) -> Command {
        let mut c = self.place.cairn(&self.cache);
        if let Some(f) = &self.password_file {
            c.arg("--password-file").arg(f);
        }
        c
    }

    fn snapshots(&self) -> Vec<Value> {
        json(&ok(self.cairn().args(["--json", "snapshots"])))
            .as_array()
            .unwrap()
            .clone()
    }

    fn backup(&self, src: &Path) -> String {
        json(&ok(self.cairn().args([
            "--json",
            "backup",
            src.to_str().unwrap(),
        ])))["snapshot_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn backup_stream(&self, name: &str, data: &[u8]) -> String {
        backup_stdin_by(self.cairn(), name, data)
    }

    /// `copy --json` from `from` into this repository, with the source's password file if it has one.
    fn copy_from(&self, from: &Repo) -> Value {
        let mut c = self.cairn();
        c.args(["--json", "copy", "--from-repo", &from.place.url()]);
        if let Some(f) = &from.password_file {
            c.arg("--from-password-file").arg(f);
        }
        json(&ok(&mut c))
    }

    /// Restores snapshot `id` and compares it with `src`, and the latest stream with `stream`.
    fn assert_restores(&self, id: &str, src: &Path, stream: &[u8]) {
        assert_restores_by(
            &|| self.cairn(),
            &self.cache,
            id,
            src,
            ("shop.dump", stream),
        );
        let (code, out, err) = run(self.cairn().args(["check", "--read-data"]));
        assert_eq!(code, 0, "{out}{err}");
    }
}

/// A tree snapshot, a second one after a change (sharing most content) and a stream snapshot in `from`;
/// returns the tree's source directory, the stream's bytes and the three snapshot ids, oldest first.
fn three_snapshots(from: &Repo, dir: &Path) -> (PathBuf, Vec<u8>, Vec<String>) {
    let src = dir.join("data");
    build_rich_tree(&src, 30);
    let first = from.backup(&src);
    fs::write(src.join("store/new-file"), pseudo_random(300_000, 99)).unwrap();
    let second = from.backup(&src);
    let stream = stream_bytes();
    let third = from.backup_stream("shop.dump", &stream);
    (src, stream, vec![first, second, third])
}

/// Copies from `from` into `to` (whose keys differ) and checks the outcome: every snapshot copied under a
/// new id that records the source id as `original`, the target reads clean, the latest tree and the stream
/// restore byte for byte from the target, and a second copy adds nothing. Returns the target's ids.
fn copy_rewrites_and_restores(from: &Repo, to: &Repo, dir: &Path) -> Vec<String> {
    let (src, stream, ids) = three_snapshots(from, dir);
    let r = to.copy_from(from);
    let copied = r["copied"].as_array().unwrap();
    let got: Vec<&str> = copied.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(got, ids, "{r}");
    assert!(r["blobs_copied"].as_u64().unwrap() > 20, "{r}");
    let targets: Vec<String> = copied
        .iter()
        .map(|c| c["target_id"].as_str().unwrap().to_string())
        .collect();
    for (t, id) in targets.iter().zip(&ids) {
        assert_ne!(t, id, "a rewritten snapshot gets a new id: {r}");
    }
    // The second tree snapshot shares most of its content with the first: little is stored for it.
    let blobs = |i: usize| copied[i]["blobs_copied"].as_u64().unwrap();
    assert!(blobs(1) < blobs(0) / 4, "{r}");
    let mut originals: Vec<String> = to
        .snapshots()
        .iter()
        .map(|s| s["metadata"]["original"].as_str().unwrap().to_string())
        .collect();
    originals.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(originals, want);
    to.assert_restores(&targets[1], &src, &stream);

    // Idempotent: nothing copied, nothing stored.
    let r = to.copy_from(from);
    assert_eq!(r["copied"], serde_json::json!([]), "{r}");
    assert_eq!(r["already_present"].as_array().unwrap().len(), 3, "{r}");
    assert_eq!(r["bytes_stored"], 0, "{r}");
    assert_eq!(to.snapshots().len(), 3);
    targets
}

/// Two independently initialised encrypted repositories (other master keys, chunker seeds and passwords):
/// copy re-chunks the content through the target's chunker and keys, and the target restores it byte for
/// byte. The source's password comes from `--from-password-file`; a wrong one exits 12 and copies nothing.
#[test]
fn copy_between_independently_keyed_repositories_rechunks_and_restores_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let pw = dir.path().join("source-password");
    fs::write(&pw, "another password for the source\n").unwrap();
    let from = Repo {
        place: Place::local(dir.path(), "from"),
        password_file: Some(pw),
        cache: cache.clone(),
    };
    let to = Repo {
        place: Place::local(dir.path(), "to"),
        password_file: None,
        cache,
    };
    ok(from.cairn().arg("init"));
    ok(to.cairn().arg("init"));

    let wrong = dir.path().join("wrong");
    fs::write(&wrong, "not it").unwrap();
    let mut c = to.cairn();
    c.args([
        "copy",
        "--from-repo",
        &from.place.url(),
        "--from-password-file",
    ])
    .arg(&wrong);
    let err = fails(&mut c, 12);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(to.snapshots().is_empty());

    copy_rewrites_and_restores(&from, &to, dir.path());
}

/// Plaintext → encrypted → a new plaintext repository: each copy rewrites (plain ids against keyed ones),
/// each target restores the same bytes, and a snapshot that came back keeps its origin, so copying the
/// first repository into the last adds nothing.
#[test]
fn copy_from_plaintext_to_encrypted_and_back_restores_the_same_bytes_and_copies_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let repo = |name: &str| Repo::local(dir.path(), &cache, name);
    let (plain, enc, back) = (repo("plain"), repo("enc"), repo("back"));
    ok(plain.cairn().args(["init", "--insecure-no-encryption"]));
    ok(enc.cairn().arg("init"));
    ok(back.cairn().args(["init", "--insecure-no-encryption"]));
    copy_rewrites_and_restores(&plain, &enc, dir.path());

    let r = back.copy_from(&enc);
    assert_eq!(r["copied"].as_array().unwrap().len(), 3, "{r}");
    // Each snapshot that came back names its first repository's id as its origin.
    let mut want: Vec<String> = plain
        .snapshots()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    want.sort();
    let mut originals: Vec<String> = back
        .snapshots()
        .iter()
        .map(|s| s["metadata"]["original"].as_str().unwrap().to_string())
        .collect();
    originals.sort();
    assert_eq!(originals, want);
    let second = back.snapshots()[1]["id"].as_str().unwrap().to_string();
    back.assert_restores(&second, &dir.path().join("data"), &stream_bytes());
    let r = back.copy_from(&plain);
    assert_eq!(r["copied"], serde_json::json!([]), "{r}");
    assert_eq!(r["already_present"].as_array().unwrap().len(), 3, "{r}");
}

/// The rewriting copy (other keys) of snapshots with more files and tree nodes than it holds at once: it
/// rewrites them a batch at a time, and a later snapshot reuses what the run and the earlier one wrote.
/// Both restore byte for byte from the target; the second stores exactly its changed files and trees.
#[test]
fn rewriting_copy_of_snapshots_larger_than_one_batch_restores_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let repo = |name: &str| Repo::local(dir.path(), &cache, name);
    let (plain, enc) = (repo("plain"), repo("enc"));
    ok(plain.cairn().args(["init", "--insecure-no-encryption"]));
    ok(enc.cairn().arg("init"));
    let src = dir.path().join("many");
    many_files(&src);
    plain.backup(&src);
    let r = enc.copy_from(&plain);
    // 5,000 files of one chunk each, and 52 trees (50 directories, `many` and the root).
    assert_eq!(r["blobs_copied"].as_u64().unwrap(), 5052, "{r}");
    let first = r["copied"][0]["target_id"].as_str().unwrap().to_string();
    let restored = dir.path().join("restored-1");
    ok(enc
        .cairn()
        .args(["restore", &first, "--target", restored.to_str().unwrap()]));
    assert_same_tree(&src, &restored.join("many"));

    change_one_in_ten(&src);
    plain.backup(&src);
    let r = enc.copy_from(&plain);
    assert_eq!(r["copied"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["blobs_copied"].as_u64().unwrap(), 552, "{r}");
    let second = r["copied"][0]["target_id"].as_str().unwrap().to_string();
    let restored = dir.path().join("restored-2");
    ok(enc
        .cairn()
        .args(["restore", &second, "--target", restored.to_str().unwrap()]));
    assert_same_tree(&src, &restored.join("many"));
    let (code, out, err) = run(enc.cairn().args(["check", "--read-data"]));
    assert_eq!(code, 0, "{out}{err}");
}
