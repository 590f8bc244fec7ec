//! The real `cairn daemon`: a schedule every two seconds produces snapshots; SIGTERM stops it cleanly, with
//! no partial snapshot and a repository that passes `check`.

mod harness;

use std::fs;
use std::time::{Duration, Instant};

use harness::*;

#[test]
fn daemon_runs_schedules_and_stops_cleanly_on_sigterm() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("filestore");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), pseudo_random(2_000_000, 1)).unwrap();
    ok(cairn(&repo).args([
        "instance",
        "add",
        "fast",
        "--path",
        src.to_str().unwrap(),
        "--schedule",
        "*/2 * * * * *",
        "--keep-last",
        "10",
    ]));
    ok(cairn(&repo).args([
        "instance",
        "add",
        "idle",
        "--path",
        src.to_str().unwrap(),
        "--priority",
        "manual",
    ]));
    let mut daemon = cairn(&repo)
        .args(["daemon", "--tick-seconds", "1"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let count = |repo: &std::path::Path| -> Vec<serde_json::Value> {
        serde_json::from_str(&ok(cairn(repo).args(["snapshots", "--json"]))).unwrap()
    };
    while count(&repo).len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
    }
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let status = daemon.wait().unwrap();
    assert!(status.success(), "daemon exit: {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "daemon took too long to stop"
    );
    let snaps = count(&repo);
    assert!(
        snaps.len() >= 2,
        "schedule did not run: {} snapshots",
        snaps.len()
    );
    assert!(snaps
        .iter()
        .all(|s| s["instance"] == "fast" && s["partial"] == false));
    ok(cairn(&repo).arg("check"));
    let log: Vec<serde_json::Value> =
        serde_json::from_str(&ok(cairn(&repo).args(["log", "--json"]))).unwrap();
    assert!(log.iter().all(|r| r["status"] == "ok"));
}
