//! Repositories in S3-compatible object storage, through the real binary against a real S3-protocol server on
//! loopback (`moto` in server mode: `scripts/s3-setup` starts it unless `CAIRN_TEST_S3_ENDPOINT` names one).
//! Each test gets a fresh bucket and its own index cache directory. The credentials are given to the child
//! processes only, never set in this process (tests run in parallel threads).

mod harness;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::{
    assert_same_tree, build_rich_tree, cairn_bin, create_bucket, fails, ok, pseudo_random, run,
    s3_endpoint, try_http, unique,
};

/// moto accepts any key pair; this secret must never appear in any output.
const SECRET: &str = "s3cr3t-never-printed-7f3a";

/// A fresh bucket on `endpoint`; returns the repository URL inside it.
fn fresh_repo(endpoint: &str, tag: &str) -> String {
    let bucket = format!("it-{tag}-{}-{}", std::process::id(), unique());
    create_bucket(endpoint, &bucket);
    format!("s3://{bucket}/backups/host1")
}

/// A `cairn` command on the S3 repository `url`, with its index cache under `cache`.
fn s3cairn(endpoint: &str, url: &str, cache: &Path) -> Command {
    let mut c = Command::new(cairn_bin());
    harness::with_password(&mut c);
    c.env("CAIRN_REPO", url)
        .env("XDG_CACHE_HOME", cache)
        .env("AWS_ACCESS_KEY_ID", "cairn-test")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("XDG_DATA_HOME")
        .args(["--s3-endpoint", endpoint, "--s3-path-style"])
        .stdin(Stdio::null());
    c
}

/// Runs `cmd` with `input` on its stdin; asserts success and returns stdout.
fn ok_with_stdin(cmd: &mut Command, input: &[u8]) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?}: {err}");
    assert!(!err.contains(SECRET));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn snapshots(cmd: &mut Command) -> Vec<serde_json::Value> {
    serde_json::from_str(&ok(cmd.args(["snapshots", "--json"]))).unwrap()
}

fn stream_bytes() -> Vec<u8> {
    let mut v = b"-- dump header\n".repeat(1000);
    v.extend(pseudo_random(3_000_000, 42));
    v
}

#[test]
fn an_s3_repository_backs_up_restores_forgets_prunes_and_checks_clean() {
    let ep = s3_endpoint();
    let url = fresh_repo(ep, "life");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let c = || s3cairn(ep, &url, &cache);
    let init: serde_json::Value = serde_json::from_str(&ok(c().args(["init", "--json"]))).unwrap();
    assert_eq!(init["repository"], url.as_str());
    let id = init["repository_id"].as_str().unwrap();
    assert!(
        cache.join("cairn").join(id).join("index.sqlite").is_file(),
        "the index is a local cache"
    );
    let src = dir.path().join("data");
    build_rich_tree(&src, 40);
    ok(c().args([
        "backup",
        "--time",
        "2026-11-01T03:00:00Z",
        src.to_str().unwrap(),
    ]));
    let dump = stream_bytes();
    let stream: serde_json::Value = serde_json::from_str(&ok_with_stdin(
        c().args([
            "backup",
            "--json",
            "--time",
            "2026-10-01T03:00:00Z",
            "--stdin",
            "--stdin-name",
            "db.dump",
        ]),
        &dump,
    ))
    .unwrap();
    let stream_id = stream["snapshot_id"].as_str().unwrap().to_string();
    // The second file snapshot drops a 5 MB file, which forget + prune then reclaim.
    std::fs::remove_file(src.join("docs/nested/deeper/big.bin")).unwrap();
    std::fs::write(src.join("docs/new.bin"), pseudo_random(2_000_000, 7)).unwrap();
    ok(c().args([
        "backup",
        "--time",
        "2026-11-02T03:00:00Z",
        src.to_str().unwrap(),
    ]));
    assert_eq!(snapshots(&mut c()).len(), 3);

    let t = dir.path().join("t1");
    ok(c().args(["restore", "latest", "--target", t.to_str().unwrap()]));
    assert_same_tree(&src, &t.join("data"));
    let out = c()
        .args(["dump", &stream_id[..12], "db.dump"])
        .output()
        .expect("run cairn dump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == dump, "the stream is restored byte for byte");

    let forget: serde_json::Value =
        serde_json::from_str(&ok(c().args(["forget", "--keep-last", "1", "--json"]))).unwrap();
    assert_eq!(forget["removed"], 1, "{forget}");
    let prune: serde_json::Value =
        serde_json::from_str(&ok(c().args(["prune", "--json"]))).unwrap();
    assert!(
        prune["bytes_freed"].as_u64().unwrap() > 0,
        "prune freed nothing: {prune}"
    );
    let (code, out, err) = run(c().args(["check", "--read-data"]));
    assert_eq!(code, 0, "check: {out}{err}");
    assert!(!err.contains(SECRET) && !out.contains(SECRET));
    let t = dir.path().join("t2");
    ok(c().args(["restore", "latest", "--target", t.to_str().unwrap()]));
    assert_same_tree(&src, &t.join("data"));
}

#[test]
fn deleting_the_cache_loses_nothing_snapshots_restore_and_backup_work_from_a_fresh_one() {
    let ep = s3_endpoint();
    let url = fresh_repo(ep, "cache");
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("cache1");
    let src = dir.path().join("data");
    build_rich_tree(&src, 20);
    ok(s3cairn(ep, &url, &first).arg("init"));
    ok(s3cairn(ep, &url, &first).args(["backup", src.to_str().unwrap()]));
    ok(s3cairn(ep, &url, &first).args([
        "instance",
        "add",
        "files",
        "--path",
        src.to_str().unwrap(),
    ]));
    std::fs::remove_dir_all(&first).unwrap();

    // Another cache directory (as another host would have): everything comes back from the repository.
    let second = dir.path().join("cache2");
    let c = || s3cairn(ep, &url, &second);
    assert_eq!(snapshots(&mut c()).len(), 1);
    let list = ok(c().args(["instance", "list"]));
    assert!(
        list.contains("files"),
        "instance configs are repository objects: {list}"
    );
    let t = dir.path().join("t");
    ok(c().args(["restore", "latest", "--target", t.to_str().unwrap()]));
    assert_same_tree(&src, &t.join("data"));
    let again: serde_json::Value = serde_json::from_str(&ok(c().args([
        "backup",
        "--json",
        "--force",
        src.to_str().unwrap(),
    ])))
    .unwrap();
    assert_eq!(
        again["chunks_new"], 0,
        "the rebuilt cache deduplicates against every pack: {again}"
    );
    assert_eq!(snapshots(&mut c()).len(), 2);
    ok(c().args(["check", "--read-data"]));
    // `repair index` rebuilds the cache from the pack trailers.
    ok(c().args(["repair", "index"]));
    assert_eq!(snapshots(&mut c()).len(), 2);
}

/// A second S3 server of this test's own, on a free port.
struct OwnServer {
    child: Child,
    endpoint: String,
}

impl OwnServer {
    fn start() -> OwnServer {
        s3_endpoint(); // makes sure moto is installed
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // `python3 -m`, not the `moto_server` script: a pip install does not always put scripts on PATH.
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto (installed by scripts/s3-setup)");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while try_http(&endpoint, "GET", "/", &[], &[]).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not start on {endpoint}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        OwnServer { child, endpoint }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn a_backup_whose_server_dies_midway_fails_with_a_clear_error_and_leaves_no_snapshot() {
    let mut server = OwnServer::start();
    let ep = server.endpoint.clone();
    let url = fresh_repo(&ep, "kill");
    let bucket = url
        .trim_start_matches("s3://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let init: serde_json::Value =
        serde_json::from_str(&ok(s3cairn(&ep, &url, &cache).args(["init", "--json"]))).unwrap();
    let id = init["repository_id"].as_str().unwrap().to_string();
    // Incompressible data worth many 16 MiB packs, so that the server dies with most of it still to send.
    let src = dir.path().join("data");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..12u64 {
        std::fs::write(src.join(format!("f{i}")), pseudo_random(10_000_000, i)).unwrap();
    }
    let backup = s3cairn(&ep, &url, &cache)
        .args(["backup", src.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the server once the first pack has arrived.
    let list = format!("/{bucket}?list-type=2&prefix=backups/host1/packs/");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let reply = try_http(&ep, "GET", &list, &[], &[])
            .map(|(_, body)| String::from_utf8_lossy(&body).into_owned())
            .unwrap_or_default();
        if reply.contains("<Key>") {
            break;
        }
        assert!(Instant::now() < deadline, "no pack was uploaded: {reply}");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.kill();
    let started = Instant::now();
    let out = backup.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("cairn: error:"), "{err}");
    assert!(
        err.contains(&format!("s3://{bucket}/")),
        "names the location: {err}"
    );
    assert!(!err.contains(SECRET), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "retries are bounded: {:?}",
        started.elapsed()
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("saved"),
        "no snapshot reported"
    );
    // The cached index holds no snapshot (the repository itself died with the server).
    let index_path: PathBuf = cache.join("cairn").join(&id).join("index.sqlite");
    let index = cairn::index::Index::open_read_only(&index_path).unwrap();
    assert!(index.snapshots().unwrap().is_empty());
    // With no server at all, commands fail cleanly too.
    fails(
        s3cairn(&ep, &url, &dir.path().join("other")).arg("snapshots"),
        1,
    );
}

/// The index cache under `cache` (one repository per cache in these tests): (index objects merged and not
/// superseded, index objects read in total, pack trailers read in total).
fn cache_counts(cache: &Path) -> (usize, u64, u64) {
    let dir = cache_index(cache).parent().unwrap().to_path_buf();
    let idx = cairn::index::Index::open_read_only(&dir.join("index.sqlite")).unwrap();
    let live = cairn::index_sync::seen(&idx)
        .unwrap()
        .values()
        .filter(|sup| !**sup)
        .count();
    (
        live,
        cairn::index_sync::counter(&idx, cairn::index_sync::OBJECTS_READ).unwrap(),
        cairn::index_sync::counter(&idx, cairn::index_sync::TRAILERS_READ).unwrap(),
    )
}

#[test]
fn index_objects_let_a_second_host_catch_up_incrementally_and_restore_after_a_prune() {
    let ep = s3_endpoint();
    let url = fresh_repo(ep, "hosts");
    let dir = tempfile::tempdir().unwrap();
    let (cache1, cache2) = (dir.path().join("host1"), dir.path().join("host2"));
    let h1 = || s3cairn(ep, &url, &cache1);
    let h2 = || s3cairn(ep, &url, &cache2);
    let src = dir.path().join("data");
    build_rich_tree(&src, 30);
    ok(h1().arg("init"));
    ok(h1().args(["--connections", "3", "backup", src.to_str().unwrap()]));
    let (written1, _, _) = cache_counts(&cache1);
    assert!(written1 >= 1, "the backup wrote an index object");

    // Host 2 builds its cache from the index objects alone: no pack trailer is read.
    assert_eq!(snapshots(&mut h2()).len(), 1);
    let (live, read, trailers) = cache_counts(&cache2);
    assert_eq!((live, read, trailers), (written1, written1 as u64, 0));

    // A second backup on host 1; host 2 reads only the new index objects.
    std::fs::write(src.join("new.bin"), pseudo_random(3_000_000, 77)).unwrap();
    ok(h1().args(["backup", src.to_str().unwrap()]));
    let (written2, _, _) = cache_counts(&cache1);
    assert!(written2 > written1);
    assert_eq!(snapshots(&mut h2()).len(), 2);
    let (live, read, trailers) = cache_counts(&cache2);
    assert_eq!(live, written2);
    assert_eq!(read, written2 as u64, "only the new objects were read");
    assert_eq!(trailers, 0);
    let t = dir.path().join("t1");
    ok(h2().args(["restore", "latest", "--target", t.to_str().unwrap()]));
    assert_same_tree(&src, &t.join("data"));

    // Host 1 forgets the first snapshot and prunes (repacking packs it partly frees); host 2 catches up and
    // restores what was kept, and its check reads every pack clean.
    ok(h1().args(["forget", "--keep-last", "1"]));
    ok(h1().args(["prune", "--max-unused", "0"]));
    assert_eq!(snapshots(&mut h2()).len(), 1);
    let t = dir.path().join("t2");
    ok(h2().args(["restore", "latest", "--target", t.to_str().unwrap()]));
    assert_same_tree(&src, &t.join("data"));
    let check = ok(h2().args(["check", "--read-data"]));
    assert!(!check.contains("not indexed"), "{check}");

    // A third, empty cache after the prune: still no trailer read, same restore.
    let cache3 = dir.path().join("host3");
    let t = dir.path().join("t3");
    ok(s3cairn(ep, &url, &cache3).args(["restore", "latest", "--target", t.to_str().unwrap()]));
    assert_same_tree(&src, &t.join("data"));
    assert_eq!(cache_counts(&cache3).2, 0, "built from index objects only");
}

#[test]
fn restore_from_s3_of_a_many_file_tree_is_byte_identical() {
    let ep = s3_endpoint();
    let url = fresh_repo(ep, "restore");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let c = || s3cairn(ep, &url, &cache);
    ok(c().arg("init"));
    // Hundreds of small files (many per pack: read in merged runs), large multi-chunk ones, hard links,
    // symlinks, empty files.
    let src = dir.path().join("data");
    build_rich_tree(&src, 800);
    ok(c().args(["backup", src.to_str().unwrap()]));
    let t = dir.path().join("t");
    ok(c().args(["restore", "latest", "--target", t.to_str().unwrap()]));
    assert_same_tree(&src, &t.join("data"));
    // Again over the restored tree, and with a bandwidth limit: the same bytes.
    ok(c().args([
        "restore",
        "latest",
        "--overwrite",
        "--limit-download",
        "100000",
        "--target",
        t.to_str().unwrap(),
    ]));
    assert_same_tree(&src, &t.join("data"));
}

/// The index cache file of the one repository whose cache is under `cache`.
fn cache_index(cache: &Path) -> PathBuf {
    // Directories only: beside them lies the host's record of its boots (`boot-ids`, see src/lock).
    let dirs: Vec<PathBuf> = std::fs::read_dir(cache.join("cairn"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "one repository cache: {dirs:?}");
    dirs[0].join("index.sqlite")
}

fn tree_cache_rows(cache: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let db = rusqlite::Connection::open(cache_index(cache)).unwrap();
    let mut st = db.prepare("SELECT id, stored FROM tree_cache").unwrap();
    let rows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    rows
}

#[test]
fn walks_read_trees_from_the_hosts_tree_cache_check_reads_the_packs_and_a_bad_copy_is_refetched() {
    let ep = s3_endpoint();
    let url = fresh_repo(ep, "trees");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let c = || s3cairn(ep, &url, &cache);
    ok(c().arg("init"));
    let src = dir.path().join("data");
    build_rich_tree(&src, 30);
    ok(c().args(["backup", src.to_str().unwrap()]));
    let listing = ok(c().args(["ls", "latest"]));
    assert!(listing.contains("nested"), "{listing}");
    // The backup kept every tree it wrote, sealed like the repository's copy: no file name in the clear.
    let rows = tree_cache_rows(&cache);
    assert!(
        rows.len() >= 4,
        "trees cached by the backup: {}",
        rows.len()
    );
    assert!(rows
        .iter()
        .all(|(_, stored)| !stored.windows(6).any(|w| w == b"nested")));

    // Every pack in the bucket damaged: walks on this host still list the snapshot from the tree cache...
    let packs = harness::store::obj_list(&PathBuf::from(format!("{url}/packs")));
    assert!(!packs.is_empty());
    let originals: Vec<(PathBuf, Vec<u8>)> = packs
        .iter()
        .map(|(p, _)| (p.clone(), harness::store::obj_read(p)))
        .collect();
    for (p, bytes) in &originals {
        let flipped: Vec<u8> = bytes.iter().map(|b| b ^ 0x5a).collect();
        harness::store::obj_write(p, &flipped);
    }
    assert_eq!(ok(c().args(["ls", "latest"])), listing);
    // ...but `check` judges the repository, not this host's copies,
    let (code, out, err) = run(c().arg("check"));
    assert_ne!(code, 0, "check must read the damaged trees: {out}{err}");
    // and another host (a fresh cache) cannot list it.
    let other = dir.path().join("cache2");
    let (code, _, err) = run(s3cairn(ep, &url, &other).args(["ls", "latest"]));
    assert_ne!(code, 0, "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // The packs back, and every cached copy tampered with: detected, read again from the packs, replaced.
    for (p, bytes) in &originals {
        harness::store::obj_write(p, bytes);
    }
    let db = rusqlite::Connection::open(cache_index(&cache)).unwrap();
    for (id, mut stored) in tree_cache_rows(&cache) {
        *stored.last_mut().unwrap() ^= 1;
        db.execute(
            "UPDATE tree_cache SET stored = ?1 WHERE id = ?2",
            rusqlite::params![stored, id],
        )
        .unwrap();
    }
    drop(db);
    let tampered = tree_cache_rows(&cache);
    assert_eq!(ok(c().args(["ls", "latest"])), listing);
    let t = dir.path().join("t");
    ok(c().args(["restore", "latest", "--target", t.to_str().unwrap()]));
    assert_same_tree(&src, &t.join("data"));
    let healed = tree_cache_rows(&cache);
    assert_eq!(healed.len(), tampered.len());
    assert!(
        healed.iter().all(|row| !tampered.contains(row)),
        "every tampered copy replaced"
    );

    // Prune drops the copies of trees it deletes with their packs.
    std::fs::write(src.join("docs/nested/deeper/changed.txt"), b"new").unwrap();
    ok(c().args(["backup", src.to_str().unwrap()]));
    let before = tree_cache_rows(&cache).len();
    ok(c().args(["forget", "--keep-last", "1"]));
    ok(c().args(["prune", "--max-unused", "0"]));
    let after = tree_cache_rows(&cache).len();
    assert!(
        after < before,
        "prune left the copies of deleted trees: {before} -> {after}"
    );
    ok(c().args(["check", "--read-data"]));
    let t = dir.path().join("t2");
    ok(c().args(["restore", "latest", "--target", t.to_str().unwrap()]));
    assert_same_tree(&src, &t.join("data"));
}

/// Regression: `cairn serve` on an S3 repository panicked after a clean stop (SIGTERM): the repository,
/// whose S3 backend owns a tokio runtime, was dropped inside the server's runtime, which tokio refuses.
#[test]
fn serve_on_an_s3_repository_stops_cleanly_on_sigterm() {
    use std::io::BufRead;
    let endpoint = s3_endpoint();
    let url = fresh_repo(endpoint, "serve");
    let cache = tempfile::tempdir().unwrap();
    ok(s3cairn(endpoint, &url, cache.path()).args(["init", "--insecure-no-encryption"]));
    let mut child = s3cairn(endpoint, &url, cache.path())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--insecure-http",
            "--no-schedule",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("listening on") {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
    }
    assert!(seen.contains("listening on"), "{seen}");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {seen}{rest}");
    assert!(!rest.contains("panicked"), "{rest}");
}
