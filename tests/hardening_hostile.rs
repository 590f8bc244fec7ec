//! Hostile repository content and hostile servers: someone who can write the repository (a bucket shared with
//! a compromised host) or a broken S3 endpoint tries to make cairn crash, exhaust memory or disk, or loop.
//! Every test runs the real binary against objects crafted byte by byte here, and asserts a bounded peak RSS
//! (`/usr/bin/time -f %M`) and a clean outcome (success, or one `cairn: error:` line and a non-zero exit).

mod harness;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn::backend::local::LocalBackend;
use cairn::backend::{Backend, ObjectKind};
use cairn::index_object::{IndexObject, PackListing};
use cairn::pack::{encode_blob, BlobKind, PackBuilder};
use cairn::snapshot::{Snapshot, Summary, SNAPSHOT_VERSION};
use cairn::tree::{Meta, Node, NodeKind, Tree};
use cairn::Id;
use harness::proxy::{OnResponse, Proxy, Request, Response};
use harness::*;

/// Runs `cmd` under `/usr/bin/time`; returns (exit code, stdout, stderr, peak RSS in MiB).
fn run_measured(cmd: &Command) -> (i32, String, String, u64) {
    let dir = tempfile::tempdir().unwrap();
    let rss_file = dir.path().join("rss");
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss_file)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(std::process::Stdio::null());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    let (code, out, err) = run(&mut timed);
    let rss_kib: u64 = fs::read_to_string(&rss_file)
        .unwrap()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(u64::MAX);
    (code, out, err, rss_kib / 1024)
}

/// Asserts that `cmd` ends cleanly (success, or one clear error line without a panic or a signal) within
/// `max_mib` of peak RSS; returns (exit code, stdout, stderr).
fn bounded(cmd: &Command, max_mib: u64) -> (i32, String, String) {
    let (code, out, err, rss) = run_measured(cmd);
    eprintln!("{cmd:?}: exit {code}, peak RSS {rss} MiB\nstdout: {out}\nstderr: {err}");
    assert!(
        rss <= max_mib,
        "{cmd:?} peaked at {rss} MiB (limit {max_mib})\nstderr: {err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("memory allocation"),
        "{cmd:?} crashed: {err}"
    );
    // A failure says why: one error line, or (check) its report.
    assert!(
        code == 0 || (code > 0 && (err.contains("cairn: error:") || !out.trim().is_empty())),
        "{cmd:?}: exit {code} without a clear error\nstderr: {err}"
    );
    (code, out, err)
}

fn backend(repo: &Path) -> LocalBackend {
    LocalBackend::new(repo.to_path_buf())
}

/// Writes a pack holding `blobs` (kind, raw bytes) and an index object listing it, as a writer of the
/// repository could; returns the blobs' ids.
fn put_blobs(repo: &Path, blobs: &[(BlobKind, Vec<u8>)]) -> Vec<Id> {
    let (ids, bytes, pack_id, entries) = build_pack(blobs);
    backend(repo)
        .put(ObjectKind::Pack, &pack_id.to_hex(), &bytes)
        .unwrap();
    list_pack(repo, pack_id, bytes.len() as u64, entries);
    ids
}

/// A sealed pack of `blobs` (kind, raw bytes): their ids, its bytes, id and trailer entries.
fn build_pack(
    blobs: &[(BlobKind, Vec<u8>)],
) -> (Vec<Id>, Vec<u8>, Id, Vec<cairn::pack::BlobEntry>) {
    let mut b = PackBuilder::new();
    let mut ids = Vec::new();
    for (kind, raw) in blobs {
        let id = Id::of(raw);
        let (c, stored) = encode_blob(raw, 3).unwrap();
        b.add(*kind, id, raw.len() as u32, c, &stored).unwrap();
        ids.push(id);
    }
    let (bytes, pack_id, entries) = b.seal().unwrap();
    (ids, bytes, pack_id, entries)
}

/// Writes an index object listing the pack `id` of `size` bytes holding `entries`.
fn list_pack(repo: &Path, id: Id, size: u64, entries: Vec<cairn::pack::BlobEntry>) {
    let obj = IndexObject {
        packs: vec![PackListing { id, size, entries }],
        supersedes: Vec::new(),
    };
    obj.save(&backend(repo)).unwrap();
}

/// Writes a snapshot of `tree`; returns its id.
fn put_snapshot(repo: &Path, tree: Id) -> String {
    let snap = Snapshot {
        version: SNAPSHOT_VERSION,
        time: chrono::DateTime::parse_from_rfc3339("2026-12-01T00:00:00+00:00").unwrap(),
        host: "hostile".into(),
        instance: None,
        tags: Vec::new(),
        paths: vec!["/src".into()],
        tree: Some(tree),
        streams: Vec::new(),
        stream_tree: None,
        parent: None,
        partial: false,
        summary: Summary::default(),
        metadata: None,
    };
    let (bytes, id) = snap.encode().unwrap();
    backend(repo)
        .put(ObjectKind::Snapshot, &id.to_hex(), &bytes)
        .unwrap();
    id.to_hex()
}

fn dir_meta() -> Meta {
    Meta {
        mode: 0o040755,
        nlink: 2,
        ..Meta::default()
    }
}

fn dir_node(name: &[u8], subtree: Id) -> Node {
    Node {
        name: name.to_vec(),
        kind: NodeKind::Dir { subtree },
        meta: dir_meta(),
    }
}

fn encoded(tree: &Tree) -> Vec<u8> {
    tree.encode().unwrap().0
}

// ---------------------------------------------------------------------------------------------------------
// Deeply nested trees
// ---------------------------------------------------------------------------------------------------------

/// A chain of `depth` trees, each holding one directory named `name` whose subtree is the next; returns the
/// root tree's id (the root holds `src`, the top of the chain).
fn put_deep_chain(repo: &Path, depth: usize, name: &[u8]) -> Id {
    let mut blobs = Vec::with_capacity(depth + 1);
    let leaf = Tree::new(Vec::new()).unwrap();
    let mut below = Id::of(&encoded(&leaf));
    blobs.push((BlobKind::Tree, encoded(&leaf)));
    for _ in 0..depth {
        let t = Tree::new(vec![dir_node(name, below)]).unwrap();
        let bytes = encoded(&t);
        below = Id::of(&bytes);
        blobs.push((BlobKind::Tree, bytes));
    }
    let root = Tree::new(vec![dir_node(b"src", below)]).unwrap();
    let bytes = encoded(&root);
    let root_id = Id::of(&bytes);
    blobs.push((BlobKind::Tree, bytes));
    put_blobs(repo, &blobs);
    root_id
}

#[test]
fn a_deeply_nested_tree_is_walked_in_memory_linear_in_its_depth() {
    let (_dir, repo) = new_plaintext_repo();
    // 6,000 levels of 100-byte names: a path of 600 kB at the bottom, 1.8 GB if every level of the walk kept
    // its own copy of its path.
    let root = put_deep_chain(&repo, 6_000, &[b'n'; 100]);
    put_snapshot(&repo, root);
    ok(cairn(&repo).args(["repair", "index"]));
    for args in [&["check"][..], &["check", "--read-data"], &["prune"]] {
        let mut cmd = cairn(&repo);
        cmd.args(args);
        let (code, _, err) = bounded(&cmd, 300);
        assert_eq!(code, 0, "{args:?}: {err}");
    }
}

#[test]
fn a_restore_of_files_with_long_chunk_lists_holds_a_round_of_them_not_the_whole_snapshot() {
    let (dir, repo) = new_plaintext_repo();
    // 16 directories of 125 files, each file 2,000 references to one 1-byte chunk: 4 million chunk ids
    // (128 MB) in 8 MB trees. A restore that gathered every entry, or every tree, before writing held
    // them all (over 250 MiB peak); it now holds a round of entries and a budget of trees.
    let chunk = put_blobs(&repo, &[(BlobKind::Data, b"x".to_vec())])[0];
    let file = |i: usize| Node {
        name: format!("f{i:03}").into_bytes(),
        kind: NodeKind::File {
            size: 2_000,
            chunks: vec![chunk; 2_000],
        },
        meta: Meta {
            mode: 0o100644,
            nlink: 1,
            ..Meta::default()
        },
    };
    let mut blobs = Vec::new();
    let mut dirs = Vec::new();
    for d in 0..16u8 {
        // Each directory's tree differs (its own first file name), so every one is read.
        let mut nodes: Vec<Node> = (0..125).map(file).collect();
        nodes[0].name = format!("first{d:02}").into_bytes();
        let bytes = encoded(&Tree::new(nodes).unwrap());
        dirs.push(dir_node(format!("d{d:02}").as_bytes(), Id::of(&bytes)));
        blobs.push((BlobKind::Tree, bytes));
    }
    let src = encoded(&Tree::new(dirs).unwrap());
    let root = encoded(&Tree::new(vec![dir_node(b"src", Id::of(&src))]).unwrap());
    let root_id = Id::of(&root);
    blobs.push((BlobKind::Tree, src));
    blobs.push((BlobKind::Tree, root));
    put_blobs(&repo, &blobs);
    let snap = put_snapshot(&repo, root_id);
    ok(cairn(&repo).args(["repair", "index"]));
    let target = dir.path().join("target");
    let mut cmd = cairn(&repo);
    cmd.args(["restore", &snap, "--target"]).arg(&target);
    let (code, _, err) = bounded(&cmd, 150);
    assert_eq!(code, 0, "{err}");
    let one = target.join("src/d15/f124");
    assert_eq!(fs::read(&one).unwrap(), vec![b'x'; 2_000]);
    assert_eq!(fs::read_dir(target.join("src")).unwrap().count(), 16);
}

// ---------------------------------------------------------------------------------------------------------
// Huge objects
// ---------------------------------------------------------------------------------------------------------

/// A sparse file of `len` bytes (no disk used) starting with `head`: what a writer of the repository can make
/// for free, and what a reader that reads it whole holds in memory.
fn sparse(path: &Path, len: u64, head: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = fs::File::create(path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, head, 0).unwrap();
    f.set_len(len).unwrap();
}

const HUGE: u64 = 3 << 30;

fn hex_name(seed: &str) -> String {
    Id::of(seed.as_bytes()).to_hex()
}

#[test]
fn huge_lock_run_instance_and_snapshot_objects_are_refused_without_reading_them() {
    let (dir, repo) = new_plaintext_repo();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"hello").unwrap();
    ok(cairn(&repo).arg("backup").arg(&src));
    // A lock, a run-log entry and an instance revision of 3 GiB: junk JSON that must not be read whole.
    sparse(&repo.join("locks/huge"), HUGE, b"{\"pid\": 1");
    sparse(&repo.join("runs").join(hex_name("run")), HUGE, b"{");
    sparse(&repo.join("instances/huge.json"), HUGE, b"{");
    for args in [&["check"][..], &["snapshots"]] {
        let mut cmd = cairn(&repo);
        cmd.args(args);
        let (code, _, err) = bounded(&cmd, 200);
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    // An instance whose newest revision cannot be read is reported as corrupt (nothing may run as if it
    // did not exist), by name.
    let mut list = cairn(&repo);
    list.args(["instance", "list"]);
    let (code, _, err) = bounded(&list, 200);
    assert_ne!(code, 0);
    assert!(err.contains("instances/huge.json"), "{err}");
    // A snapshot object of 3 GiB cannot be decoded: prune refuses (it cannot know what the snapshot
    // needs), cleanly and without reading it.
    sparse(&repo.join("snapshots").join(hex_name("snap")), HUGE, b"{");
    let mut prune = cairn(&repo);
    prune.arg("prune");
    let (code, _, err) = bounded(&prune, 200);
    assert_ne!(
        code, 0,
        "prune went on past a snapshot it cannot read: {err}"
    );
    let mut check = cairn(&repo);
    check.arg("check");
    let (code, _, err) = bounded(&check, 200);
    assert_ne!(
        code, 0,
        "check did not report the undecodable snapshot: {err}"
    );
}

#[test]
fn a_huge_key_file_or_config_is_refused_without_reading_it() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"hello").unwrap();
    ok(cairn(&repo).arg("backup").arg(&src));
    // Named to sort first, so a reader trying key files in order meets it before the real one.
    sparse(&repo.join("keys").join("0".repeat(64)), HUGE, b"{");
    let mut ls = cairn(&repo);
    ls.arg("snapshots");
    let (code, _, err) = bounded(&ls, 200);
    assert_eq!(code, 0, "{err}");
    // A config of 3 GiB: nothing can be opened, and the error says so without reading it.
    let (_dir2, plain) = new_plaintext_repo();
    sparse(&plain.join("config"), HUGE, b"{");
    let mut ls = cairn(&plain);
    ls.arg("snapshots");
    let (code, _, err) = bounded(&ls, 200);
    assert_ne!(code, 0, "{err}");
}

#[test]
fn a_huge_index_object_is_read_in_pieces_and_refused_at_its_first_bad_entry() {
    let (dir, repo) = new_plaintext_repo();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"hello").unwrap();
    ok(cairn(&repo).arg("backup").arg(&src));
    // One pack declaring 30 million entries, all zeros (sparse): 2.6 GB that decode to nothing.
    let mut head = b"CAIRNIX\x01".to_vec();
    head.extend_from_slice(&1u32.to_le_bytes());
    head.extend_from_slice(&0u32.to_le_bytes());
    head.extend_from_slice(&[9; 32]);
    head.extend_from_slice(&(HUGE * 2).to_le_bytes());
    head.extend_from_slice(&30_000_000u32.to_le_bytes());
    head.extend_from_slice(&0u32.to_le_bytes());
    let name = hex_name("index");
    sparse(
        &repo.join("index").join(&name),
        16 + 48 + 30_000_000 * 88,
        &head,
    );
    each_bounded_then_restores(dir.path(), &repo, &[&["snapshots"], &["check"], &["prune"]]);
}

/// A pack file of `len` bytes, sparse but for its magic and a footer declaring as many entries as fit.
fn sparse_pack(repo: &Path, len: u64, name: &str) -> PathBuf {
    let path = repo.join("packs").join(&name[..2]).join(name);
    sparse(&path, len, b"CAIRNPK\x01");
    let count = ((len - 56) / 88).min(u32::MAX as u64) as u32;
    let mut footer = Vec::new();
    footer.extend_from_slice(&count.to_le_bytes());
    footer.extend_from_slice(&[0; 4]);
    footer.extend_from_slice(&[7; 32]);
    footer.extend_from_slice(b"CAIRNEND");
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &footer, len - 48).unwrap();
    path
}

#[test]
fn a_pack_trailer_declaring_billions_of_entries_is_refused_without_reading_them() {
    let (dir, repo) = new_plaintext_repo();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"hello").unwrap();
    ok(cairn(&repo).arg("backup").arg(&src));
    sparse_pack(&repo, HUGE, &hex_name("pack"));
    each_bounded_then_restores(
        dir.path(),
        &repo,
        &[&["check"], &["repair", "index"], &["prune"]],
    );
}

/// Runs each of `commands` within 200 MiB (see [`bounded`]), then checks that the repository's own data, a
/// backup of `src/f` holding `hello`, still restores.
fn each_bounded_then_restores(dir: &Path, repo: &Path, commands: &[&[&str]]) {
    for args in commands {
        let mut cmd = cairn(repo);
        cmd.args(*args);
        bounded(&cmd, 200);
    }
    let target = dir.join("target");
    ok(cairn(repo)
        .args(["restore", "latest", "--target"])
        .arg(&target));
    assert_eq!(fs::read(target.join("src/f")).unwrap(), b"hello");
}

/// Writes a valid pack of `len` bytes holding `blobs` (kind, raw bytes) at its start, then a sparse hole up
/// to its trailer, and an index object listing it: an honest-looking pack of many GiB that costs its writer
/// no disk. Returns the blobs' ids.
fn put_huge_pack(repo: &Path, len: u64, blobs: &[(BlobKind, Vec<u8>)]) -> Vec<Id> {
    let (ids, bytes, _, entries) = build_pack(blobs);
    let trailer_len = entries.len() * 88 + 48;
    let data = &bytes[..bytes.len() - trailer_len];
    let trailer = &bytes[bytes.len() - trailer_len..];
    // The name cannot be the hash of the whole file (nobody hashes 3 GiB of zeros here): that is damage
    // check reports, not a reason to read the file whole.
    let name = hex_name(&format!("huge pack {len}"));
    let path = repo.join("packs").join(&name[..2]).join(&name);
    sparse(&path, len, data);
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, trailer, len - trailer_len as u64).unwrap();
    list_pack(repo, Id::from_hex(&name).unwrap(), len, entries);
    ids
}

#[test]
fn a_pack_of_many_gib_is_read_in_pieces_by_check_and_prune() {
    let (dir, repo) = new_plaintext_repo();
    let content = b"kept by a snapshot".to_vec();
    let file = Node {
        name: b"f".to_vec(),
        kind: NodeKind::File {
            size: content.len() as u64,
            chunks: vec![Id::of(&content)],
        },
        meta: Meta {
            mode: 0o100644,
            nlink: 1,
            ..Meta::default()
        },
    };
    let tree = Tree::new(vec![file]).unwrap();
    let root = Tree::new(vec![dir_node(b"src", Id::of(&encoded(&tree)))]).unwrap();
    put_huge_pack(
        &repo,
        HUGE,
        &[
            (BlobKind::Data, content.clone()),
            (BlobKind::Data, b"garbage nobody needs".to_vec()),
            (BlobKind::Tree, encoded(&tree)),
            (BlobKind::Tree, encoded(&root)),
        ],
    );
    put_snapshot(&repo, Id::of(&encoded(&root)));
    ok(cairn(&repo).args(["repair", "index"]));
    let mut check = cairn(&repo);
    check.args(["check", "--read-data"]);
    let (code, out, err) = bounded(&check, 300);
    assert_ne!(
        code, 0,
        "the pack's name does not match its content: {out}{err}"
    );
    assert!(
        format!("{out}{err}").contains("does not match its id"),
        "{out}{err}"
    );
    // Prune repacks the blobs the snapshot needs (the pack is mostly unused) by ranged reads.
    let mut prune = cairn(&repo);
    prune.arg("prune");
    let (code, _, err) = bounded(&prune, 300);
    assert_eq!(code, 0, "{err}");
    let target = dir.path().join("target");
    ok(cairn(&repo)
        .args(["restore", "latest", "--target"])
        .arg(&target));
    assert_eq!(fs::read(target.join("src/f")).unwrap(), content);
}

// ---------------------------------------------------------------------------------------------------------
// Hostile S3 servers
// ---------------------------------------------------------------------------------------------------------

/// What a hostile proxy does to each answer of the server.
type Mutate = dyn Fn(&Request, Response) -> Response + Send + Sync;

/// A proxy (tests/harness/proxy.rs) that forwards every request to the S3 test server and hands the answer
/// to `mutate` before sending it back: a broken or hostile endpoint in front of a real repository.
fn hostile_proxy(
    mutate: impl Fn(&Request, Response) -> Response + Send + Sync + 'static,
) -> Proxy<OnResponse<Box<Mutate>>> {
    Proxy::http(OnResponse(Box::new(mutate)))
}

/// A plaintext repository on the S3 test server with one snapshot of `src/f`; returns (temp dir, URL).
fn s3_repo_with_a_snapshot() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let repo = s3_repo_in(dir.path());
    ok(cairn(&repo).args(["init", "--insecure-no-encryption"]));
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"hello").unwrap();
    ok(cairn(&repo).arg("backup").arg(&src));
    (dir, repo)
}

/// `cairn ARGS` on `repo` through the server at `endpoint`, killed after `secs` (a loop is a failure, not a
/// hang); returns what [`bounded`] checked.
fn through(repo: &Path, endpoint: &str, args: &[&str], secs: u64) -> (i32, String, String) {
    // A fresh cache makes every command list and read again.
    let cache = tempfile::tempdir().unwrap();
    through_with(repo, endpoint, cache.path(), args, secs)
}

/// [`through`] with the index cache in `cache`.
fn through_with(
    repo: &Path,
    endpoint: &str,
    cache: &Path,
    args: &[&str],
    secs: u64,
) -> (i32, String, String) {
    let mut cmd = cairn(repo);
    cmd.args(args)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("XDG_CACHE_HOME", cache);
    let mut timed = Command::new("timeout");
    timed
        .arg(secs.to_string())
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    let (code, out, err, rss) = run_measured(&timed);
    assert_ne!(
        code, 124,
        "{args:?} was still running after {secs} s: {err}"
    );
    eprintln!("{args:?} through {endpoint}: exit {code}, peak RSS {rss} MiB\nstderr: {err}");
    assert!(rss <= 300, "{args:?} peaked at {rss} MiB\nstderr: {err}");
    assert!(!err.contains("panicked"), "{args:?} crashed: {err}");
    assert!(
        code == 0 || err.contains("cairn: error:"),
        "{args:?}: exit {code} without a clear error\nstderr: {err}"
    );
    (code, out, err)
}

fn is_listing(req: &Request) -> bool {
    req.method == "GET" && req.target.contains("list-type=2")
}

/// The listing `body` with its end replaced: truncated, continued by `token`.
fn continued(body: &[u8], token: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(body).replace(
        "<IsTruncated>false</IsTruncated>",
        "<IsTruncated>true</IsTruncated>",
    );
    let text = match text.find("<NextContinuationToken>") {
        Some(_) => text,
        None => text.replace(
            "</ListBucketResult>",
            &format!("<NextContinuationToken>{token}</NextContinuationToken></ListBucketResult>"),
        ),
    };
    text.into_bytes()
}

/// A proxy's answer to listings of the packs: the first page the server gave, again and again, each time
/// saying that more follow, with `token(n)` for the n-th page.
fn replaying(
    token: impl Fn(u64) -> String + Send + Sync + 'static,
) -> impl Fn(&Request, Response) -> Response + Send + Sync + 'static {
    let first: std::sync::Mutex<Option<Vec<u8>>> = std::sync::Mutex::new(None);
    let pages = std::sync::atomic::AtomicU64::new(0);
    move |req, mut resp| {
        if is_listing(req) && req.target.contains("packs") {
            let mut first = first.lock().unwrap();
            let page = first.get_or_insert_with(|| resp.body.clone()).clone();
            let n = pages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            resp.status = 200;
            resp.body = continued(&page, &token(n));
        }
        resp
    }
}

#[test]
fn an_s3_listing_that_never_ends_is_an_error_not_a_loop() {
    let (_dir, repo) = s3_repo_with_a_snapshot();
    // The same page and continuation token forever (of the packs, which hold keys).
    let same = hostile_proxy(replaying(|_| "again".to_string()));
    let (code, _, err) = through(&repo, &same.endpoint(), &["check"], 60);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("listing is broken"), "{err}");
    // A new token on every page, every page repeating the keys.
    let fresh = hostile_proxy(replaying(|n| format!("t{n}")));
    let (code, _, err) = through(&repo, &fresh.endpoint(), &["check"], 60);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("comes again or out of order"), "{err}");
    // Empty pages with a new token forever.
    let counter = std::sync::atomic::AtomicU64::new(0);
    let empty = hostile_proxy(move |req, mut resp| {
        if is_listing(req) {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>b</Name><Prefix></Prefix><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated><NextContinuationToken>e{n}</NextContinuationToken></ListBucketResult>"
            );
            resp.body = body.into_bytes();
        }
        resp
    });
    let (code, _, err) = through(&repo, &empty.endpoint(), &["check"], 120);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("listing is broken"), "{err}");
    // The repository is fine through an honest endpoint.
    ok(cairn(&repo).arg("check"));
}

fn is_pack_range(req: &Request) -> bool {
    req.method == "GET" && req.target.contains("/packs/") && req.header("range").is_some()
}

#[test]
fn a_ranged_read_answered_with_the_wrong_length_is_a_read_error_not_damage() {
    let (dir, repo) = s3_repo_with_a_snapshot();
    let cache = dir.path().join("hostile-cache");
    // Half the bytes asked for (the Content-Range header still says all of them), or twice as many.
    let short = hostile_proxy(|req, mut resp| {
        if is_pack_range(req) && resp.status == 206 {
            let half = resp.body.len() / 2;
            resp.body.truncate(half);
        }
        resp
    });
    let long = hostile_proxy(|req, mut resp| {
        if is_pack_range(req) && resp.status == 206 {
            let again = resp.body.clone();
            resp.body.extend_from_slice(&again);
        }
        resp
    });
    // Ignoring the range: 200 with the whole object.
    let whole = hostile_proxy(|req, mut resp| {
        if is_pack_range(req) && resp.status == 206 {
            resp.status = 200;
            resp.headers
                .retain(|(k, _)| !k.eq_ignore_ascii_case("content-range"));
        }
        resp
    });
    for proxy in [&short, &long, &whole] {
        let target = dir.path().join(format!("target-{}", unique()));
        let args = ["restore", "latest", "--target", target.to_str().unwrap()];
        let (code, _, err) = through_with(&repo, &proxy.endpoint(), &cache, &args, 120);
        assert_ne!(code, 0, "restore through a broken server succeeded: {err}");
        assert!(
            !err.contains("damaged"),
            "a broken server's answer was taken for damage: {err}"
        );
    }
    // Nothing was recorded as damaged (the next backup would store those blobs again, `repair snapshots`
    // would drop them), and through an honest endpoint, with the same cache, the repository is intact.
    let cfg: serde_json::Value = serde_json::from_slice(&obj_read(&repo.join("config"))).unwrap();
    let index = cache
        .join("cairn")
        .join(cfg["repository_id"].as_str().unwrap())
        .join("index.sqlite");
    let db = rusqlite::Connection::open(&index).unwrap();
    let damaged: i64 = db
        .query_row("SELECT count(*) FROM damaged_blobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        damaged, 0,
        "a broken server's answers were recorded as damage"
    );
    let (code, out, err) =
        through_with(&repo, s3_endpoint(), &cache, &["check", "--read-data"], 120);
    assert_eq!(code, 0, "{out}{err}");
    let target = dir.path().join("target");
    let (code, _, err) = through_with(
        &repo,
        s3_endpoint(),
        &cache,
        &["restore", "latest", "--target", target.to_str().unwrap()],
        120,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(fs::read(target.join("src/f")).unwrap(), b"hello");
}

#[test]
fn run_log_entries_with_short_or_multibyte_snapshot_ids_are_printed_not_panicked_on() {
    let (_dir, repo) = new_plaintext_repo();
    for (i, id) in ["ab", "aéééééééé", "0123456789abcdef"].iter().enumerate() {
        let obj = serde_json::json!({
            "version": 1, "host": "elsewhere", "instance": null, "kind": "backup",
            "start": format!("2026-12-0{}T03:00:00Z", i + 1), "end": null, "status": "ok",
            "bytes": null, "snapshot_id": id, "error": null,
        });
        let bytes = serde_json::to_vec_pretty(&obj).unwrap();
        backend(&repo)
            .put(ObjectKind::Run, &Id::of(&bytes).to_hex(), &bytes)
            .unwrap();
    }
    let (code, out, err) = run(cairn(&repo).arg("log"));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    for shown in [" ab ", " aééééééé ", " 01234567 "] {
        assert!(out.contains(shown), "{shown:?} in {out}");
    }
}
