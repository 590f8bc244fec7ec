//! `cairn serve` under abuse: killed with SIGKILL in the middle of a backup job (no snapshot, a consistent
//! repository, and the job listed as interrupted by the next server), and clients that hang up in the middle
//! of a download (nothing left behind, the server keeps serving).

mod harness;
mod serve_support;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::*;
use serde_json::{json, Value};
use serve_support::{token, Server};

/// A tree with `mib` MiB that does not compress (so a throttled backup or a download takes a while).
fn tree(dir: &Path, mib: usize) -> PathBuf {
    let src = dir.join("files");
    build_rich_tree(&src, 10);
    for i in 0..mib.div_ceil(4) {
        fs::write(
            src.join(format!("blob{i}.bin")),
            pseudo_random(4 << 20, i as u64 + 1),
        )
        .unwrap();
    }
    src
}

fn snapshots(repo: &Path) -> Value {
    serde_json::from_str(&ok(cairn(repo).args(["snapshots", "--json"]))).unwrap()
}

fn entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The job `id` as the list of `GET /jobs` shows it.
fn listed(s: &Server, tok: &str, query: &str, id: &str) -> Option<Value> {
    let (code, list) = s.get(&format!("/api/v1/jobs{query}"), Some(tok));
    assert_eq!(code, 200, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == id)
        .cloned()
}

#[test]
fn serve_killed_during_a_backup_job_writes_no_snapshot_and_the_next_server_lists_it_interrupted() {
    let (dir, repo) = new_repo();
    let (ops, view) = (
        token(&repo, "ops", "operator"),
        token(&repo, "view", "viewer"),
    );
    let src = tree(dir.path(), 12);
    ok(cairn(&repo)
        .args(["instance", "add", "app", "--priority", "manual", "--path"])
        .arg(&src));
    // 1 MiB/s to the repository: the backup takes about 12 s, so the kill lands while packs are written.
    let mut s = Server::start(&repo, &["--limit-upload", "1024"]);
    let (code, job) = s.post("/api/v1/instances/app/backup", &ops, &json!({}));
    assert_eq!(code, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, j) = s.get(&format!("/api/v1/jobs/{id}"), Some(&view));
        assert_eq!(j["status"], "running", "the backup must still run: {j}");
        if j["bytes_done"].as_u64().unwrap_or(0) > (2 << 20) {
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {j}");
        std::thread::sleep(Duration::from_millis(20));
    }
    s.kill9();

    // No snapshot, and a repository that checks clean (the dead server's lock is recognised as stale).
    assert_eq!(snapshots(&repo), json!([]));
    ok(cairn(&repo).arg("check"));

    // The next server lists the job as interrupted, by id, in the list and under its status.
    let s = Server::start(&repo, &[]);
    let (code, j) = s.get(&format!("/api/v1/jobs/{id}"), Some(&view));
    assert_eq!(code, 200, "{j}");
    assert_eq!(j["status"], "interrupted", "{j}");
    assert_eq!(
        (&j["kind"], &j["instance"]),
        (&json!("backup"), &json!("app"))
    );
    assert!(
        j["snapshot_id"].is_null() && j["started_at"].is_string(),
        "{j}"
    );
    assert!(j["finished_at"].is_string(), "{j}");
    assert!(j["error"].as_str().unwrap().contains("interrupted"), "{j}");
    assert_eq!(listed(&s, &view, "", &id).unwrap()["status"], "interrupted");
    assert!(listed(&s, &view, "?status=interrupted", &id).is_some());
    assert!(listed(&s, &view, "?status=running", &id).is_none());

    // The instance backs up again through the API; the new job has a new id.
    let (code, again) = s.post("/api/v1/instances/app/backup", &ops, &json!({}));
    assert_eq!(code, 202, "{again}");
    let again_id = again["id"].as_str().unwrap().to_string();
    assert_ne!(again_id, id);
    let done = s.wait_job(&again_id, &view);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(snapshots(&repo)[0]["id"], done["snapshot_id"]);
    ok(cairn(&repo).arg("check"));
    drop(s);

    // Once more: both records stay as they were (a finished job is never marked interrupted).
    let s = Server::start(&repo, &[]);
    assert_eq!(listed(&s, &view, "", &id).unwrap()["status"], "interrupted");
    let kept = listed(&s, &view, "", &again_id).unwrap();
    assert_eq!(kept["status"], "completed");
    assert_eq!(kept["snapshot_id"], done["snapshot_id"]);
}

#[test]
fn serve_a_second_server_on_the_repository_leaves_the_first_servers_running_job_alone() {
    let (dir, repo) = new_repo();
    let (ops, view) = (
        token(&repo, "ops", "operator"),
        token(&repo, "view", "viewer"),
    );
    let src = tree(dir.path(), 1);
    ok(cairn(&repo)
        .args([
            "instance",
            "add",
            "app",
            "--priority",
            "manual",
            "--pre-hook",
            "sleep 3",
            "--path",
        ])
        .arg(&src));
    let first = Server::start(&repo, &[]);
    let (code, job) = first.post("/api/v1/instances/app/backup", &ops, &json!({}));
    assert_eq!(code, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    // A second server while the first one runs its job: it does not take the job for interrupted.
    let second = Server::start(&repo, &[]);
    assert!(listed(&second, &view, "", &id).is_none());
    assert!(second.stderr.lock().unwrap().contains("in memory only"));
    let done = first.wait_job(&id, &view);
    assert_eq!(done["status"], "completed", "{done}");
    drop(second);
    drop(first);
    let third = Server::start(&repo, &[]);
    assert_eq!(
        listed(&third, &view, "", &id).unwrap()["status"],
        "completed"
    );
}

/// Asks for `path` over a raw connection, reads `keep` bytes of the answer, and hangs up.
fn hang_up_after(base: &str, path: &str, token: &str, keep: usize) {
    let addr = base.trim_start_matches("http://");
    let mut c = TcpStream::connect(addr).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut got = vec![0u8; keep];
    c.read_exact(&mut got).unwrap();
    assert!(got.starts_with(b"HTTP/1.1 200"), "{:?}", &got[..40]);
    // Closed with unread data pending: the kernel answers further writes with a reset.
}

/// Open file descriptors of a process.
fn fds(pid: u32) -> usize {
    entries(Path::new(&format!("/proc/{pid}/fd"))).len()
}

#[test]
fn serve_client_hanging_up_mid_download_leaves_nothing_behind() {
    let (dir, repo) = new_repo();
    let ops = token(&repo, "ops", "operator");
    let src = tree(dir.path(), 24);
    ok(cairn(&repo)
        .args(["instance", "add", "app", "--priority", "manual", "--path"])
        .arg(&src));
    ok(cairn(&repo).args(["instance", "backup", "app"]));
    let id = snapshots(&repo)[0]["id"].as_str().unwrap().to_string();
    let tmp = dir.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let s = Server::start_with(&repo, &[], None, &[("TMPDIR", &tmp)]);
    let locks = repo.join("locks");

    // A whole download first: its size, and the server's descriptors at rest.
    let full = |format: &str| {
        let mut r = s
            .agent
            .get(s.url(&format!("/api/v1/snapshots/{id}/download?format={format}")))
            .header("Authorization", format!("Bearer {ops}"))
            .call()
            .unwrap();
        assert_eq!(r.status(), 200);
        r.body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .unwrap()
            .len()
    };
    let whole = full("tar");
    assert!(whole > 24 << 20, "{whole}");
    let at_rest = fds(s.child.id());

    for format in ["tar", "zip", "tar", "zip"] {
        hang_up_after(
            &s.base,
            &format!("/api/v1/snapshots/{id}/download?format={format}"),
            &ops,
            64 << 10,
        );
        // The export stops: its read lock goes, no descriptor leaks.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(entries(&locks).is_empty() && fds(s.child.id()) <= at_rest) {
            assert!(
                Instant::now() < deadline,
                "{format}: left behind: locks {:?}, {} descriptors (at rest {at_rest})",
                entries(&locks),
                fds(s.child.id())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // No temporary file stays.
    assert_eq!(entries(&tmp), Vec::<String>::new());
    // The server keeps serving, whole downloads included; the repository is intact.
    assert_eq!(s.get("/api/v1/instances", Some(&ops)).0, 200);
    assert_eq!(full("tar"), whole);
    assert!(!s.stderr.lock().unwrap().contains("panicked"));
    ok(cairn(&repo).arg("check"));
}
