//! Several hosts on one S3 repository, and the S3 server vanishing, through the real binary against the real
//! S3-protocol test server on loopback (moto; see tests/harness/store.rs). A "host" is a `cairn` process with
//! an index cache directory (`XDG_CACHE_HOME`) of its own, as on another machine.
//!
//! Some tests put the test proxy (tests/harness/proxy.rs), in its TCP mode, between one host and the server:
//! killing and restarting the proxy is the server vanishing and coming back from that host's point of view
//! (moto keeps its buckets in memory, so killing moto itself would lose the repository), and holding a host's
//! lock upload at the proxy stops that host between opening its cache and taking its lock, a window another
//! host's prune can fall in.

mod harness;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::proxy::{Faults, Proxy};
use harness::*;

/// A `cairn` command of the host whose index cache is `cache`.
fn host(repo: &Path, cache: &Path) -> Command {
    let mut c = cairn(repo);
    c.env("XDG_CACHE_HOME", cache);
    c
}

/// The same host, talking to the server through `proxy`.
fn host_via(repo: &Path, cache: &Path, proxy: &HostsProxy) -> Command {
    let mut c = host(repo, cache);
    c.env("AWS_ENDPOINT_URL", proxy.endpoint());
    c
}

fn snapshot_ids(cmd: &mut Command) -> Vec<String> {
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&ok(cmd.args(["snapshots", "--json"]))).unwrap();
    list.iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// The faults of this file's proxy: while set, a request uploading a lock object (`PUT .../locks/...`) is
/// held before it is forwarded.
#[derive(Default)]
struct HoldLockPuts(AtomicBool);

impl Faults for HoldLockPuts {
    fn hold(&self, start: &[u8]) -> bool {
        self.0.load(Ordering::SeqCst)
            && start.starts_with(b"PUT ")
            && start
                .split(|b| *b == b'\n')
                .next()
                .is_some_and(|line| line.windows(7).any(|w| w == b"/locks/"))
    }
}

impl HoldLockPuts {
    fn hold_lock_puts(&self, on: bool) {
        self.0.store(on, Ordering::SeqCst);
    }
}

/// A TCP proxy on loopback in front of the test server (see the module docs).
type HostsProxy = Proxy<HoldLockPuts>;

/// A source's files, `(name, bytes)`.
type Files = Vec<(String, Vec<u8>)>;

/// Host `h`'s source in round `r`: a file shared by both hosts and every round, one shared by both hosts in
/// this round, and one of this host and round; `(path, bytes)` as a restore must give them back.
fn round_files(h: u64, r: u64) -> Vec<(String, Vec<u8>)> {
    vec![
        ("common.bin".into(), pseudo_random(700_000, 1)),
        ("round.bin".into(), pseudo_random(900_000, 100 + r)),
        (
            format!("own-{h}.bin"),
            pseudo_random(1_100_000, 1000 * h + r),
        ),
    ]
}

fn write_round(src: &Path, files: &[(String, Vec<u8>)]) {
    let _ = fs::remove_dir_all(src);
    fs::create_dir_all(src).unwrap();
    for (name, bytes) in files {
        fs::write(src.join(name), bytes).unwrap();
    }
}

/// Restores `id` with a fresh cache and compares every file with `files`.
fn assert_restores(repo: &Path, dir: &Path, id: &str, files: &[(String, Vec<u8>)]) {
    let cache = dir.join(format!("verify-cache-{id}"));
    let t = dir.join(format!("verify-{id}"));
    ok(host(repo, &cache).args(["restore", id, "--target", t.to_str().unwrap()]));
    let root = fs::read_dir(&t).unwrap().next().unwrap().unwrap().path();
    let got: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(got.len(), files.len(), "{id}: {got:?}");
    for (name, bytes) in files {
        assert!(
            fs::read(root.join(name)).unwrap() == *bytes,
            "{id}: {name} differs"
        );
    }
}

/// Exit code 11 is "locked": the other host held a conflicting lock, a clean refusal.
const LOCKED: i32 = 11;

#[test]
fn two_hosts_backing_up_forgetting_and_pruning_at_once_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let repo = s3_repo_in(dir.path());
    set_pack_size_after_init(&repo, dir.path());
    const ROUNDS: u64 = 8;
    let expected: Arc<Mutex<BTreeMap<String, Files>>> = Arc::default();
    let outcomes: Arc<Mutex<Vec<String>>> = Arc::default();
    let hosts: Vec<_> = (1..=2u64)
        .map(|h| {
            let (repo, dir) = (repo.clone(), dir.path().to_path_buf());
            let (expected, outcomes) = (expected.clone(), outcomes.clone());
            std::thread::spawn(move || {
                let cache = dir.join(format!("host{h}"));
                let src = dir.join(format!("src{h}"));
                for r in 0..ROUNDS {
                    let files = round_files(h, r);
                    write_round(&src, &files);
                    let (code, out, err) =
                        run(host(&repo, &cache).args(["backup", "--json", src.to_str().unwrap()]));
                    assert!(code == 0 || code == LOCKED, "host {h} backup: {err}");
                    if code == 0 {
                        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
                        let id = v["snapshot_id"].as_str().unwrap().to_string();
                        expected.lock().unwrap().insert(id, files);
                    }
                    let (fcode, _, err) =
                        run(host(&repo, &cache).args(["forget", "--keep-last", "2"]));
                    assert!(fcode == 0 || fcode == LOCKED, "host {h} forget: {err}");
                    let (pcode, _, err) =
                        run(host(&repo, &cache).args(["prune", "--max-unused", "0"]));
                    assert!(pcode == 0 || pcode == LOCKED, "host {h} prune: {err}");
                    outcomes
                        .lock()
                        .unwrap()
                        .push(format!("host {h} round {r}: {code} {fcode} {pcode}"));
                }
            })
        })
        .collect();
    for h in hosts {
        h.join().unwrap();
    }
    let outcomes = outcomes.lock().unwrap().clone();
    eprintln!("backup forget prune exit codes:\n{}", outcomes.join("\n"));
    let pruned = outcomes.iter().filter(|o| o.ends_with(" 0")).count();
    assert!(pruned >= 2, "too few prunes ran to test anything");
    // Each host's cache, and a fresh one, read every pack clean.
    for cache in ["host1", "host2", "fresh"] {
        let (code, out, err) =
            run(host(&repo, &dir.path().join(cache)).args(["check", "--read-data"]));
        assert_eq!(code, 0, "check from {cache}: {out}{err}");
    }
    let kept = snapshot_ids(&mut host(&repo, &dir.path().join("fresh")));
    assert!(kept.len() >= 2, "{kept:?}");
    let expected = expected.lock().unwrap();
    for id in &kept {
        let files = expected
            .get(id)
            .unwrap_or_else(|| panic!("snapshot {id} was never reported by a backup"));
        assert_restores(&repo, dir.path(), id, files);
    }
}

/// Initialises `repo` with 1 MiB packs (so that prunes delete and repack many packs).
fn set_pack_size_after_init(repo: &Path, dir: &Path) {
    ok(host(repo, &dir.join("init-cache")).arg("init"));
    set_pack_size(repo, 1024 * 1024);
}

/// Host 1 opens its cache, which lists a file's blobs; before it takes its lock, host 2 forgets the only
/// snapshot holding them and prunes them away. Host 1's backup must not deduplicate against (nor reuse a
/// parent snapshot naming) what is no longer stored.
#[test]
fn a_backup_whose_cache_was_read_before_another_hosts_prune_stores_again_what_the_prune_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let repo = s3_repo_in(dir.path());
    let (cache1, cache2) = (dir.path().join("host1"), dir.path().join("host2"));
    let proxy = Proxy::tcp(HoldLockPuts::default());
    ok(host(&repo, &cache2).arg("init"));
    let src = dir.path().join("src");
    let files = round_files(1, 0);
    write_round(&src, &files);
    let first =
        ok(host_via(&repo, &cache1, &proxy).args(["backup", "--json", src.to_str().unwrap()]));
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    let first = first["snapshot_id"].as_str().unwrap().to_string();

    proxy.hold_lock_puts(true);
    let backup = host_via(&repo, &cache1, &proxy)
        .args(["backup", "--json", src.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    proxy.wait_held();
    ok(host(&repo, &cache2).args(["forget", &first]));
    let pruned: serde_json::Value = serde_json::from_str(&ok(host(&repo, &cache2).args([
        "prune",
        "--json",
        "--max-unused",
        "0",
    ])))
    .unwrap();
    assert!(pruned["packs_deleted"].as_u64().unwrap() >= 1, "{pruned}");
    proxy.hold_lock_puts(false);
    let out = backup.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let second: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let second = second["snapshot_id"].as_str().unwrap().to_string();

    let (code, report, err) =
        run(host(&repo, &dir.path().join("fresh")).args(["check", "--read-data"]));
    assert_eq!(code, 0, "{report}{err}");
    assert_restores(&repo, dir.path(), &second, &files);
}

/// Two snapshots in default-sized packs, the first forgotten: a `prune --max-unused 0` deletes the first
/// backup's pack after moving the blobs the second shares with it (`common.bin`) to a new pack. Returns the
/// kept snapshot and its files.
fn repo_with_a_pack_to_repack(
    repo: &Path,
    dir: &Path,
    cache: &Path,
) -> (String, Vec<(String, Vec<u8>)>) {
    ok(host(repo, cache).arg("init"));
    let src = dir.join("src");
    write_round(&src, &round_files(1, 0));
    ok(host(repo, cache).args(["backup", src.to_str().unwrap()]));
    let kept = round_files(1, 1);
    write_round(&src, &kept);
    let v: serde_json::Value = serde_json::from_str(&ok(host(repo, cache).args([
        "backup",
        "--json",
        src.to_str().unwrap(),
    ])))
    .unwrap();
    ok(host(repo, cache).args(["forget", "--keep-last", "1"]));
    (v["snapshot_id"].as_str().unwrap().to_string(), kept)
}

fn assert_restored(t: &Path, files: &[(String, Vec<u8>)]) {
    for (name, bytes) in files {
        assert!(
            fs::read(t.join("src").join(name)).unwrap() == *bytes,
            "{name} differs"
        );
    }
}

/// A restore on host 2 whose cache was read before host 1's prune moved the blobs it needs (its lock upload
/// held at the proxy meanwhile) reads them from where they are now, byte for byte.
#[test]
fn a_restore_whose_cache_was_read_before_another_hosts_prune_reads_the_moved_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let repo = s3_repo_in(dir.path());
    let (cache1, cache2) = (dir.path().join("host1"), dir.path().join("host2"));
    let (kept_id, kept) = repo_with_a_pack_to_repack(&repo, dir.path(), &cache1);
    let proxy = Proxy::tcp(HoldLockPuts::default());
    let t = dir.path().join("t");
    proxy.hold_lock_puts(true);
    let restore = host_via(&repo, &cache2, &proxy)
        .args(["restore", &kept_id, "--target", t.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    proxy.wait_held();
    let pruned: serde_json::Value = serde_json::from_str(&ok(host(&repo, &cache1).args([
        "prune",
        "--json",
        "--max-unused",
        "0",
    ])))
    .unwrap();
    assert!(pruned["packs_repacked"].as_u64().unwrap() >= 1, "{pruned}");
    proxy.hold_lock_puts(false);
    let out = restore.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_restored(&t, &kept);
    ok(host(&repo, &cache2).args(["check", "--read-data"]));
}

/// A restore on host 2 holds its shared lock for its whole run: host 1's prune, tried meanwhile, is refused
/// cleanly naming the restore, and the restore gives back every byte; once it is done the prune runs.
#[test]
fn a_restore_running_while_another_host_prunes_completes_correctly() {
    let dir = tempfile::tempdir().unwrap();
    let repo = s3_repo_in(dir.path());
    let (cache1, cache2) = (dir.path().join("host1"), dir.path().join("host2"));
    let (kept_id, kept) = repo_with_a_pack_to_repack(&repo, dir.path(), &cache1);
    // About 2.8 MB at 400 KiB/s: the restore runs for several seconds.
    let t = dir.path().join("t");
    let restore = host(&repo, &cache2)
        .args([
            "restore",
            &kept_id,
            "--limit-download",
            "400",
            "--target",
            t.to_str().unwrap(),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while obj_list(&repo.join("locks")).is_empty() {
        assert!(Instant::now() < deadline, "the restore took no lock");
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    let mut refused = 0;
    loop {
        let (code, out, err) = run(host(&repo, &cache1).args(["prune", "--max-unused", "0"]));
        if code == 0 {
            eprintln!(
                "prune ran after {:?}, refused {refused} times: {out}",
                started.elapsed()
            );
            break;
        }
        assert_eq!(code, LOCKED, "{err}");
        assert!(err.contains("restore"), "names the lock holder: {err}");
        refused += 1;
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "prune never ran"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = restore.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        refused >= 1,
        "the prune was never refused while the restore ran"
    );
    assert_restored(&t, &kept);
    ok(host(&repo, &cache2).args(["check", "--read-data"]));
    assert_restores(&repo, dir.path(), &kept_id, &kept);
}

/// The server vanishes in the middle of a backup (the proxy in front of it is killed): the backup fails with
/// one clear error after bounded retries and leaves no snapshot; once the server is back the next backup
/// succeeds and `check --read-data` is clean.
#[test]
fn the_s3_server_killed_mid_backup_is_a_clear_error_and_the_next_backup_succeeds_after_it_returns()
{
    let dir = tempfile::tempdir().unwrap();
    let repo = s3_repo_in(dir.path());
    let cache = dir.path().join("host1");
    let mut proxy = Proxy::tcp(HoldLockPuts::default());
    ok(host(&repo, &cache).arg("init"));
    // Incompressible data worth many 16 MiB packs, so that the server goes with most of it still to send.
    let src = dir.path().join("data");
    fs::create_dir_all(&src).unwrap();
    for i in 0..10u64 {
        fs::write(src.join(format!("f{i}")), pseudo_random(8_000_000, i)).unwrap();
    }
    let backup = host_via(&repo, &cache, &proxy)
        .args(["backup", src.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while obj_list(&repo.join("packs")).is_empty() {
        assert!(Instant::now() < deadline, "no pack was uploaded");
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy.kill();
    let killed = Instant::now();
    let out = backup.wait_with_output().unwrap();
    let took = killed.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("the backup gave up {took:?} after the server went");
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.matches("cairn: error:").count(), 1, "{err}");
    assert!(
        err.contains(repo.to_str().unwrap()),
        "names the repository: {err}"
    );
    assert!(!err.contains(S3_SECRET), "{err}");
    // object_store's retries: at most 6, within 60 s, each request bounded by its timeout.
    assert!(
        took < Duration::from_secs(100),
        "retries are bounded: {took:?}"
    );
    // Commands fail cleanly while the server is gone.
    fails(host_via(&repo, &cache, &proxy).arg("snapshots"), 1);
    proxy.restart();
    assert!(
        snapshot_ids(&mut host_via(&repo, &cache, &proxy)).is_empty(),
        "the failed backup left a snapshot"
    );
    let v: serde_json::Value = serde_json::from_str(&ok(host_via(&repo, &cache, &proxy).args([
        "backup",
        "--json",
        src.to_str().unwrap(),
    ])))
    .unwrap();
    let id = v["snapshot_id"].as_str().unwrap().to_string();
    let (code, report, err) = run(host_via(&repo, &cache, &proxy).args(["check", "--read-data"]));
    assert_eq!(code, 0, "{report}{err}");
    ok(host_via(&repo, &cache, &proxy).arg("prune"));
    ok(host(&repo, &dir.path().join("fresh")).args(["check", "--read-data"]));
    let t = dir.path().join("t");
    ok(host(&repo, &dir.path().join("fresh")).args([
        "restore",
        &id,
        "--target",
        t.to_str().unwrap(),
    ]));
    assert_same_tree(&src, &t.join("data"));
}
