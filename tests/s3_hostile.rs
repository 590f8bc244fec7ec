//! A misbehaving object store, through the real binary against the real S3-protocol test server (moto, see
//! tests/harness/store.rs) behind the test proxy in its HTTP mode (tests/harness/proxy.rs), armed here with
//! rules that alter, cut, refuse or slow chosen requests and responses, the way a flaky network, a middlebox
//! or a buggy S3-compatible server does.
//!
//! What cairn must do about each: retry and succeed when the fault is transient, or fail with one clear
//! line; never store or restore wrong bytes, never take one bad transfer for damage (which `repair` and
//! `prune` act on by dropping files from snapshots and deleting packs), never panic or hang.

mod harness;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use harness::proxy::{Before, Faults, Proxy, Request, Response};
use harness::*;

/// What the proxy does to a request a [`Rule`] picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// One byte in the middle of the response body is changed (a middlebox or a bad NIC or RAM).
    Flip,
    /// The connection is closed after half the response body, which `Content-Length` says is whole.
    Cut,
    /// The request goes to the server without its `Range` header: the whole object comes back, with 200
    /// (old Swift gateways, some caches).
    IgnoreRange,
    /// `503 SlowDown`, not forwarded.
    SlowDown,
    /// The request's body is taken from the client at this many bytes a second (a slow uplink).
    Slow(u64),
}

/// Applies `fault` to the requests whose method is `method` and whose target holds `path_has` (and, for
/// `Flip` and `Cut`, whose response body has at least `min_body` bytes): the first `skip` such requests
/// pass, the next `times` get the fault.
#[derive(Debug, Clone)]
struct Rule {
    method: &'static str,
    path_has: &'static str,
    min_body: usize,
    skip: usize,
    times: usize,
    fault: Fault,
}

impl Rule {
    fn new(method: &'static str, path_has: &'static str, fault: Fault) -> Rule {
        Rule {
            method,
            path_has,
            min_body: 0,
            skip: 0,
            times: 1,
            fault,
        }
    }

    fn min_body(self, min_body: usize) -> Rule {
        Rule { min_body, ..self }
    }

    fn times(self, times: usize) -> Rule {
        Rule { times, ..self }
    }
}

/// The armed rules and the count of faults applied: the proxy's [`Faults`].
#[derive(Default)]
struct Rules {
    rules: Mutex<Vec<Rule>>,
    /// Faults applied so far.
    fired: AtomicUsize,
}

impl Rules {
    /// The fault for this request, if a rule picks it; `body` is the response's body length (`None`
    /// before the response is known: only faults that do not depend on it are decided then).
    fn pick(&self, method: &str, target: &str, body: Option<usize>) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap();
        for r in rules.iter_mut() {
            let needs_body = matches!(r.fault, Fault::Flip | Fault::Cut);
            if r.times == 0
                || r.method != method
                || !target.contains(r.path_has)
                || needs_body != body.is_some()
                || body.is_some_and(|n| n < r.min_body.max(1))
            {
                continue;
            }
            if r.skip > 0 {
                r.skip -= 1;
                continue;
            }
            r.times -= 1;
            self.fired.fetch_add(1, Ordering::SeqCst);
            return Some(r.fault);
        }
        None
    }

    /// Arms `rule` (after those armed before); resets the count of faults applied.
    fn arm(&self, rule: Rule) {
        self.fired.store(0, Ordering::SeqCst);
        self.rules.lock().unwrap().push(rule);
    }

    /// Faults applied since the last [`arm`](Self::arm); disarms every rule.
    fn fired(&self) -> usize {
        self.rules.lock().unwrap().clear();
        self.fired.load(Ordering::SeqCst)
    }
}

impl Faults for Rules {
    fn request(&self, req: &mut Request) -> Before {
        match self.pick(&req.method, &req.target, None) {
            Some(Fault::SlowDown) => Before::Answer(Response::new(
                503,
                &[("Content-Type", "application/xml")],
                b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
            )),
            Some(Fault::IgnoreRange) => {
                req.headers.retain(|(k, _)| !k.eq_ignore_ascii_case("range"));
                Before::Forward
            }
            Some(Fault::Slow(rate)) => Before::Pace(rate),
            _ => Before::Forward,
        }
    }

    fn response(&self, req: &Request, mut resp: Response) -> Response {
        if req.method != "GET" || resp.body.is_empty() {
            return resp;
        }
        let mid = resp.body.len() / 2;
        match self.pick(&req.method, &req.target, Some(resp.body.len())) {
            Some(Fault::Flip) => resp.body[mid] ^= 0x10,
            Some(Fault::Cut) => resp.cut_at = Some(mid),
            _ => {}
        }
        resp
    }
}

/// The proxy of these tests (see the module docs).
type Hostile = Proxy<Rules>;

/// A `cairn` command on `repo` whose index cache is `cache` (a host of its own), through `proxy`.
fn via(repo: &Path, cache: &Path, proxy: &Hostile) -> std::process::Command {
    let mut c = cairn(repo);
    c.env("XDG_CACHE_HOME", cache)
        .env("AWS_ENDPOINT_URL", proxy.endpoint());
    c
}

/// A repository with one snapshot of a small tree (a directory, a file of a few hundred KiB that compresses
/// badly, a small one); returns the repository, the source and the snapshot id.
fn backed_up(dir: &Path) -> (PathBuf, PathBuf, String) {
    let repo = s3_repo_in(dir);
    ok(cairn(&repo).arg("init"));
    let src = dir.join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("big.bin"), pseudo_random(700_000, 7)).unwrap();
    fs::write(src.join("sub/small.txt"), b"a small file\n").unwrap();
    let v = backup_json(&repo, &[src.to_str().unwrap()]);
    let id = v["snapshot_id"].as_str().unwrap().to_string();
    (repo, src, id)
}

fn snapshot_ids(repo: &Path) -> Vec<String> {
    let list: serde_json::Value =
        serde_json::from_str(&ok(cairn(repo).args(["snapshots", "--json"]))).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// One byte changed in one transfer of a pack's bytes (a trailer, a tree, a data blob, a whole-pack read)
/// is read again: `check --read-data` stays clean and records no damage, `repair snapshots` changes
/// nothing, `repair index` indexes every pack, and a restore gives back the exact bytes. Before, each took
/// the transfer for damage: `repair snapshots` dropped the file from the snapshot (for the next prune to
/// delete its data), `repair index` left the pack out of the index and of the index objects, and check
/// recorded the blobs as damaged.
#[test]
fn a_byte_altered_in_one_transfer_is_read_again_and_never_taken_for_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, src, id) = backed_up(dir.path());
    let proxy = Proxy::http(Rules::default());
    let mut host = 0;
    let mut fresh = || {
        host += 1;
        dir.path().join(format!("host{host}"))
    };
    // The first pack read of any size (a trailer's magic, a tree) and the first large one (a data blob, a
    // whole pack): each command on a host of its own, whose cache holds nothing yet.
    for min_body in [0, 64 << 10] {
        let flip = || Rule::new("GET", "/packs/", Fault::Flip).min_body(min_body);
        proxy.arm(flip());
        let (code, out, err) = run(via(&repo, &fresh(), &proxy).args(["check", "--read-data"]));
        assert_eq!(proxy.fired(), 1, "check, min {min_body}");
        assert_eq!(code, 0, "check, min {min_body}: {out}{err}");

        proxy.arm(flip());
        let out = ok(via(&repo, &fresh(), &proxy).args(["--json", "repair", "snapshots"]));
        assert_eq!(proxy.fired(), 1, "repair snapshots, min {min_body}");
        assert_eq!(out.trim(), "[]", "repair snapshots, min {min_body}");
        assert_eq!(snapshot_ids(&repo), std::slice::from_ref(&id));

        proxy.arm(flip());
        let t = fresh().join("restored");
        let (code, out, err) = run(via(&repo, &fresh(), &proxy).args([
            "restore",
            &id,
            "--target",
            t.to_str().unwrap(),
        ]));
        assert_eq!(proxy.fired(), 1, "restore, min {min_body}");
        assert_eq!(code, 0, "restore, min {min_body}: {out}{err}");
        assert_same_tree(&src, &t.join("src"));
    }
    proxy.arm(Rule::new("GET", "/packs/", Fault::Flip));
    let out = ok(via(&repo, &fresh(), &proxy).args(["--json", "repair", "index"]));
    assert_eq!(proxy.fired(), 1, "repair index");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report["skipped"],
        serde_json::json!([]),
        "repair index: {out}"
    );
    // Nothing was recorded or changed: a check that reads everything, straight from the server, is clean.
    let (code, out, err) = run(cairn(&repo).args(["check", "--read-data"]));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(snapshot_ids(&repo), [id]);
}

/// Responses cut off mid-body and `503 SlowDown` answers are transient: retried with bounded backoff (the
/// body of a cut read resumed from where it stopped), and the restore, the backup and the check that
/// follow succeed with the exact bytes.
#[test]
fn cut_responses_and_slow_down_answers_are_retried_and_the_data_comes_back_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, src, id) = backed_up(dir.path());
    let proxy = Proxy::http(Rules::default());
    proxy.arm(Rule::new("GET", "/packs/", Fault::SlowDown).times(3));
    proxy.arm(
        Rule::new("GET", "/packs/", Fault::Cut)
            .min_body(64 << 10)
            .times(2),
    );
    let t = dir.path().join("restored");
    let (code, out, err) = run(via(&repo, &dir.path().join("host1"), &proxy).args([
        "restore",
        &id,
        "--target",
        t.to_str().unwrap(),
    ]));
    assert_eq!(proxy.fired(), 5);
    assert_eq!(code, 0, "{out}{err}");
    assert_same_tree(&src, &t.join("src"));

    fs::write(src.join("new.bin"), pseudo_random(300_000, 8)).unwrap();
    proxy.arm(Rule::new("PUT", "/packs/", Fault::SlowDown).times(2));
    proxy.arm(Rule::new("PUT", "/snapshots/", Fault::SlowDown));
    let (code, out, err) =
        run(via(&repo, &dir.path().join("host1"), &proxy).args(["backup", src.to_str().unwrap()]));
    assert_eq!(proxy.fired(), 3);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(cairn(&repo).args(["check", "--read-data"]));
    assert_eq!(code, 0, "{out}{err}");
}

/// A server that ignores `Range` and answers every ranged read with the whole object (200): the reads
/// fail with one clear line, no file is restored with the object's first bytes taken for its data, and a
/// check reports read errors, not damage (nothing is recorded: a check straight from the server is clean).
#[test]
fn a_server_that_ignores_range_is_a_clear_error_never_wrong_bytes_or_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, src, id) = backed_up(dir.path());
    let proxy = Proxy::http(Rules::default());
    proxy.arm(Rule::new("GET", "/packs/", Fault::IgnoreRange).times(usize::MAX));
    let t = dir.path().join("restored");
    let err = fails(
        via(&repo, &dir.path().join("host1"), &proxy).args([
            "restore",
            &id,
            "--target",
            t.to_str().unwrap(),
        ]),
        1,
    );
    assert!(proxy.fired() >= 1);
    assert_eq!(err.matches("cairn: error:").count(), 1, "{err}");
    for name in ["big.bin", "sub/small.txt"] {
        let got = t.join("src").join(name);
        if let Ok(bytes) = fs::read(&got) {
            assert!(
                bytes == fs::read(src.join(name)).unwrap(),
                "{name} restored wrong"
            );
        }
    }
    proxy.arm(Rule::new("GET", "/packs/", Fault::IgnoreRange).times(usize::MAX));
    let (code, out, err) =
        run(via(&repo, &dir.path().join("host2"), &proxy).args(["check", "--read-data", "--json"]));
    assert!(proxy.fired() >= 1);
    assert_ne!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["damaged"], serde_json::json!([]), "{out}");
    assert_eq!(report["errors"], serde_json::json!([]), "{out}");
    assert!(
        !report["read_errors"].as_array().unwrap().is_empty(),
        "{out}"
    );
    let (code, out, err) = run(cairn(&repo).args(["check", "--read-data"]));
    assert_eq!(code, 0, "{out}{err}");
}

/// A slow uplink: each pack upload takes longer than object_store's default bound on a request (30 s),
/// at 50 kB/s a 2 MB pack (one upload at a time) about 40 s. The backup completes and its data reads back; before, every
/// attempt was cut at 30 s and started over until the retry budget (60 s) was spent, so a backup over a
/// link slower than about 4.5 Mbit/s per upload in flight never finished.
#[test]
fn a_backup_over_a_slow_uplink_completes() {
    let dir = tempfile::tempdir().unwrap();
    let repo = s3_repo_in(dir.path());
    ok(cairn(&repo).arg("init"));
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f.bin"), pseudo_random(2_000_000, 9)).unwrap();
    let proxy = Proxy::http(Rules::default());
    proxy.arm(Rule::new("PUT", "/packs/", Fault::Slow(50_000)));
    let started = std::time::Instant::now();
    let (code, out, err) = run(via(&repo, &dir.path().join("host1"), &proxy)
        .env("CAIRN_CONNECTIONS", "1")
        .args(["backup", src.to_str().unwrap()]));
    let took = started.elapsed();
    assert_eq!(proxy.fired(), 1);
    eprintln!("the backup took {took:?}");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        took > Duration::from_secs(35),
        "the upload was not slow: {took:?}"
    );
    let (code, out, err) = run(cairn(&repo).args(["check", "--read-data"]));
    assert_eq!(code, 0, "{out}{err}");
}
