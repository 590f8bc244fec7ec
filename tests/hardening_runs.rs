//! Scheduled runs of one instance (session 11, task "runlock"): one backup per instance at a time, across
//! processes and hosts sharing a repository (the instance run lock, format-spec/README.md "Locks"), and an
//! `instance set --priority` that keeps custom schedules and retention.

mod harness;
mod serve_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::*;
use serde_json::json;
use serve_support::{token, Server};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// The entry of `run-due --json` output `due` for instance `name`.
fn outcome_of(due: &serde_json::Value, name: &str) -> serde_json::Value {
    due.as_array()
        .unwrap()
        .iter()
        .find(|o| o["instance"] == name)
        .unwrap_or_else(|| panic!("{name} not in {due}"))
        .clone()
}

/// Snapshot ids of instance `name`.
fn snapshots_of(repo: &Path, name: &str) -> Vec<String> {
    let v = json(&ok(cairn(repo).args(["snapshots", "--json"])));
    v.as_array()
        .unwrap()
        .iter()
        .filter(|s| s["instance"] == name)
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// An instance `shop` backing up `dir/data`, whose pre-hook appends a line to `dir/runs`, creates
/// `dir/started` and then waits (at most 30 s) for `dir/release` to exist: a run that can be held open.
fn held_instance(dir: &Path, repo: &Path) -> PathBuf {
    let data = dir.join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), b"the shop's files").unwrap();
    let hook = format!(
        "echo run >> '{d}/runs'; touch '{d}/started'; i=0; \
         while [ ! -e '{d}/release' ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done",
        d = dir.display()
    );
    ok(cairn(repo).args(["instance", "add", "shop", "--path", s(&data)]));
    make_due(repo, "shop");
    ok(cairn(repo).args(["instance", "set", "shop", "--pre-hook", &hook]));
    data
}

/// Gives instance `name` a snapshot of long ago, so that its schedule makes it due now (a new instance is
/// due only at the first slot after its creation).
fn make_due(repo: &Path, name: &str) {
    ok(cairn(repo).args(["instance", "backup", name, "--time", "2026-01-01T02:00:00Z"]));
}

/// Starts `run-due --json` and waits until its pre-hook is running (the instance run lock is then held).
fn start_held_run(dir: &Path, repo: &Path) -> Child {
    start_held(
        cairn(repo).args(["run-due", "--json"]),
        &dir.join("started"),
    )
}

/// Starts `cmd`, its output captured (see [`finish`]), and waits until its pre-hook has created `started`:
/// the run is then held in the hook, its instance's run lock taken.
fn start_held(cmd: &mut Command, started: &Path) -> Child {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_file(started);
    child
}

/// Another host backs `shop` ([`held_instance`]) up by hand, held in its pre-hook: it holds shop's run
/// lock until `dir/release` exists.
fn other_host_holds_shop(repo: &Path, dir: &Path) -> Child {
    start_held(
        other_host(repo, dir).args(["instance", "backup", "shop", "--json"]),
        &dir.join("started"),
    )
}

fn finish(child: Child) -> (i32, String, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn two_concurrent_run_due_back_up_an_instance_once_and_instance_backup_is_refused() {
    let (dir, repo) = new_repo();
    let d = dir.path();
    held_instance(d, &repo);
    let first = start_held_run(d, &repo);
    let pid = first.id().to_string();

    // A second scheduler (cron firing again, or another host) skips the instance: not a failure.
    let (code, out, err) = run(cairn(&repo).args(["run-due", "--json"]));
    assert_eq!(code, 0, "a skipped instance failed the run: {out}\n{err}");
    let due = json(&out);
    assert_eq!(due.as_array().unwrap().len(), 1, "{due}");
    assert_eq!(due[0]["instance"], "shop");
    assert!(due[0]["snapshot_id"].is_null(), "backed up twice: {due}");
    assert!(due[0]["error"].is_null(), "{due}");
    let skipped = due[0]["skipped"].as_str().unwrap_or_default();
    assert!(
        skipped.contains("run-due") && skipped.contains(&pid) && skipped.contains(&lock_host()),
        "the holder is not named: {due}"
    );
    assert!(
        err.contains("backup skipped") && err.contains(&pid),
        "no log line naming the holder: {err}"
    );
    // People see it too.
    let (code, out, _) = run(cairn(&repo).arg("run-due"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("shop: skipped") && out.contains(&pid), "{out}");

    // A backup by hand fails as "locked" (exit 11), naming the holder.
    let err = fails(cairn(&repo).args(["instance", "backup", "shop"]), 11);
    assert!(
        err.contains("locked") && err.contains(&pid) && err.contains("shop"),
        "{err}"
    );

    fs::write(d.join("release"), b"").unwrap();
    let (code, out, err) = finish(first);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(json(&out)[0]["snapshot_id"].is_string(), "{out}");
    assert_eq!(
        fs::read_to_string(d.join("runs")).unwrap().lines().count(),
        1,
        "the pre-hook (a pg_dump's stand-in) ran more than once"
    );
    assert_eq!(snapshots_of(&repo, "shop").len(), 2, "one old, one new");
    assert!(
        obj_list(&repo.join("locks")).is_empty(),
        "a lock was left behind"
    );
    // The lock is gone with its holder: the next backup by hand runs.
    ok(cairn(&repo).args(["instance", "backup", "shop"]));
}

/// This host's name as locks record it.
fn lock_host() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// A lock object as cairn writes it, held by `pid` of this host (and pid namespace).
fn lock_json(pid: u32, instance: Option<&str>, command: &str) -> Vec<u8> {
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let ns = fs::read_link("/proc/self/ns/pid").unwrap();
    let mut v = serde_json::json!({
        "pid": pid,
        "host": lock_host(),
        "time": chrono::Utc::now().to_rfc3339(),
        "exclusive": false,
        "command": command,
        "pid_space": format!("{}/{}", boot.trim(), ns.display()),
    });
    if let Some(i) = instance {
        v["instance"] = serde_json::json!(i);
    }
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn an_instance_run_lock_blocks_only_its_instance_and_a_dead_holders_does_not_block() {
    let (dir, repo) = new_repo();
    let d = dir.path();
    for name in ["shop", "blog"] {
        let data = d.join(name);
        fs::create_dir_all(&data).unwrap();
        fs::write(data.join("f"), name).unwrap();
        ok(cairn(&repo).args(["instance", "add", name, "--path", s(&data)]));
        make_due(&repo, name);
    }
    // A live holder (this test process) of shop's run lock: shop is skipped, blog runs.
    let live = repo.join("locks").join("live-run");
    obj_write(
        &live,
        &lock_json(std::process::id(), Some("shop"), "daemon"),
    );
    let due = json(&ok(cairn(&repo).args(["run-due", "--json"])));
    let by_name = |n: &str| outcome_of(&due, n);
    assert!(by_name("shop")["snapshot_id"].is_null(), "{due}");
    assert!(by_name("shop")["skipped"].is_string(), "{due}");
    assert!(by_name("blog")["snapshot_id"].is_string(), "{due}");
    assert!(by_name("blog")["skipped"].is_null(), "{due}");
    assert_eq!(snapshots_of(&repo, "shop").len(), 1, "only the old one");

    // Repository-wide work does not count an instance's run lock as a conflict: a reader, a forget and
    // a prune (exclusive) all run beside it.
    ok(cairn(&repo).arg("check"));
    ok(cairn(&repo).args(["forget", "--instance", "blog", "--keep-last", "1"]));
    ok(cairn(&repo).arg("prune"));

    // The holder dies (a pid that is not alive, same host and pid space): its lock is stale and shop runs.
    obj_delete(&live);
    obj_write(
        &repo.join("locks").join("dead-run"),
        &lock_json(999_999_999, Some("shop"), "run-due"),
    );
    let due = json(&ok(cairn(&repo).args(["run-due", "--json"])));
    assert_eq!(due.as_array().unwrap().len(), 1, "{due}");
    assert!(due[0]["snapshot_id"].is_string(), "{due}");
    assert_eq!(snapshots_of(&repo, "shop").len(), 2);
    // `unlock` clears it like any stale lock.
    ok(cairn(&repo).arg("unlock"));
    assert!(obj_list(&repo.join("locks")).is_empty());
}

#[test]
fn housekeeping_prune_runs_while_the_instance_run_lock_is_held() {
    let (dir, repo) = new_repo();
    let data = dir.path().join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("big.bin"), pseudo_random(2_000_000, 7)).unwrap();
    ok(cairn(&repo).args([
        "instance",
        "add",
        "shop",
        "--path",
        s(&data),
        "--keep-last",
        "1",
    ]));
    ok(cairn(&repo).args([
        "instance",
        "backup",
        "shop",
        "--time",
        "2026-01-01T02:00:00Z",
    ]));
    // New contents: after the scheduled run, retention forgets the old snapshot and half the pack bytes
    // can be reclaimed, so housekeeping prunes (exclusive lock) while the run still holds shop's run lock.
    fs::write(data.join("big.bin"), pseudo_random(2_000_000, 8)).unwrap();
    let due = json(&ok(cairn(&repo).args(["run-due", "--json"])));
    assert!(due[0]["snapshot_id"].is_string(), "{due}");
    assert_eq!(snapshots_of(&repo, "shop").len(), 1);
    let log = json(&ok(cairn(&repo).args([
        "log",
        "--instance",
        "shop",
        "--json",
    ])));
    let forget = log
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|r| r["kind"] == "forget")
        .unwrap_or_else(|| panic!("no housekeeping record: {log}"))
        .clone();
    assert_eq!(forget["status"], "ok", "{forget}");
    assert!(
        forget["bytes"].as_u64().unwrap_or(0) >= 1_000_000,
        "prune did not run: {forget}"
    );
    assert!(obj_list(&repo.join("locks")).is_empty());
}

#[test]
fn a_live_run_lock_fails_the_servers_backup_now_and_restore_in_place_jobs_as_locked() {
    let (dir, repo) = new_repo();
    let data = dir.path().join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), b"v1").unwrap();
    ok(cairn(&repo).args(["instance", "add", "app", "--path", s(&data)]));
    ok(cairn(&repo).args(["instance", "backup", "app"]));
    let (operator, admin) = (
        token(&repo, "ops", "operator"),
        token(&repo, "boss", "admin"),
    );
    let srv = Server::start(&repo, &[]);
    // Another process (this test, alive) is running the instance.
    let held = repo.join("locks").join("held-run");
    obj_write(
        &held,
        &lock_json(std::process::id(), Some("app"), "run-due"),
    );
    let pid = std::process::id().to_string();
    let before = snapshots_of(&repo, "app");

    let (code, job) = srv.post("/api/v1/instances/app/backup", &operator, &json!({}));
    assert_eq!(code, 202, "{job}");
    let done = srv.wait_job(job["id"].as_str().unwrap(), &operator);
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("locked") && error.contains(&pid) && error.contains("run-due"),
        "{done}"
    );

    fs::write(data.join("f"), b"v2").unwrap();
    let (code, job) = srv.post(
        "/api/v1/instances/app/restore",
        &admin,
        &json!({"confirm": true, "in_place": true}),
    );
    assert_eq!(code, 202, "{job}");
    let done = srv.wait_job(job["id"].as_str().unwrap(), &admin);
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done["error"].as_str().unwrap_or_default().contains(&pid),
        "{done}"
    );
    assert!(done["safety_snapshot_id"].is_null(), "{done}");
    assert_eq!(
        fs::read(data.join("f")).unwrap(),
        b"v2",
        "restored under the lock"
    );
    assert_eq!(snapshots_of(&repo, "app"), before, "a snapshot was taken");

    // The CLI's in-place restore is refused the same way, before its safety snapshot.
    let err = fails(
        cairn(&repo).args(["instance", "restore", "app", "--in-place"]),
        11,
    );
    assert!(err.contains(&pid) && err.contains("app"), "{err}");
    assert_eq!(snapshots_of(&repo, "app"), before);

    // Once the holder is gone, backup-now runs.
    obj_delete(&held);
    let (_, job) = srv.post("/api/v1/instances/app/backup", &operator, &json!({}));
    let done = srv.wait_job(job["id"].as_str().unwrap(), &operator);
    assert_eq!(done["status"], "completed", "{done}");
}

/// `instance show --json` of `name`.
fn show(repo: &Path, name: &str) -> serde_json::Value {
    json(&ok(cairn(repo).args(["instance", "show", name, "--json"])))
}

#[test]
fn a_new_priority_keeps_a_custom_retention_and_schedule_and_says_so() {
    let (dir, repo) = new_repo();
    let data = dir.path().join("data");
    fs::create_dir_all(&data).unwrap();
    // Custom retention, medium's preset schedule.
    ok(cairn(&repo).args([
        "instance",
        "add",
        "shop",
        "--path",
        s(&data),
        "--keep-daily",
        "90",
    ]));
    let out = ok(cairn(&repo).args(["instance", "set", "shop", "--priority", "low"]));
    let v = show(&repo, "shop");
    assert_eq!(v["priority"], "low");
    assert_eq!(
        v["retention"],
        json!({"daily": 90}),
        "the custom retention was replaced by low's preset"
    );
    assert_eq!(
        v["schedule"], "0 3 * * 0",
        "the preset schedule follows the priority"
    );
    assert!(
        out.contains("retention: kept") && out.contains("daily 90"),
        "not told what was kept: {out}"
    );
    assert!(
        out.contains("schedule: now low's preset") && out.contains("0 3 * * 0"),
        "not told what changed: {out}"
    );

    // A custom schedule is kept too; a preset retention follows (JSON says which did what).
    ok(cairn(&repo).args([
        "instance",
        "add",
        "blog",
        "--path",
        s(&data),
        "--schedule",
        "30 4 * * *",
    ]));
    let v = json(&ok(cairn(&repo).args([
        "instance",
        "set",
        "blog",
        "--priority",
        "high",
        "--json",
    ])));
    assert_eq!(v["schedule"], "30 4 * * *", "{v}");
    assert_eq!(
        v["retention"],
        json!({"daily": 30, "weekly": 8, "monthly": 6}),
        "{v}"
    );
    assert_eq!(
        v["priority_change"],
        json!({"changed": ["retention"], "kept": ["schedule"]}),
        "{v}"
    );
    // Settings given with the priority win, and are not reported as kept or changed.
    let v = json(&ok(cairn(&repo).args([
        "instance",
        "set",
        "blog",
        "--priority",
        "low",
        "--keep-last",
        "3",
        "--json",
    ])));
    assert_eq!(v["retention"], json!({"last": 3}), "{v}");
    assert_eq!(
        v["priority_change"],
        json!({"changed": [], "kept": ["schedule"]}),
        "{v}"
    );

    // The server's PUT (the panel) does the same.
    let admin = token(&repo, "boss", "admin");
    let srv = Server::start(&repo, &[]);
    let (code, v) = srv.send(
        "PUT",
        "/api/v1/instances/shop",
        Some(&admin),
        &json!({"priority": "high"}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["retention"], json!({"daily": 90}), "{v}");
    assert_eq!(v["schedule"], "0 2 * * *", "{v}");
    assert_eq!(
        v["priority_change"],
        json!({"changed": ["schedule"], "kept": ["retention"]}),
        "{v}"
    );
    assert_eq!(show(&repo, "shop")["retention"], json!({"daily": 90}));
}

#[test]
fn the_daemon_skips_an_instance_run_elsewhere_and_runs_it_at_the_next_tick_after() {
    let (dir, repo) = new_repo();
    let data = dir.path().join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), b"x").unwrap();
    ok(cairn(&repo).args([
        "instance",
        "add",
        "fast",
        "--path",
        s(&data),
        "--schedule",
        "*/2 * * * * *",
    ]));
    // Another process (this test, alive) is running the instance.
    let held = repo.join("locks").join("held-run");
    obj_write(
        &held,
        &lock_json(std::process::id(), Some("fast"), "run-due"),
    );
    let log = dir.path().join("daemon.log");
    let mut daemon = cairn(&repo)
        .args(["daemon", "--tick-seconds", "1"])
        .stderr(Stdio::from(fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let pid = std::process::id().to_string();
    let text = || fs::read_to_string(&log).unwrap_or_default();
    let wait_for = |what: &str, done: &dyn Fn(&str) -> bool| wait_for_log(what, &text, done);
    wait_for("no skip logged", &|text| {
        text.contains("backup skipped") && text.contains(&pid)
    });
    assert!(
        snapshots_of(&repo, "fast").is_empty(),
        "backed up under another run's lock"
    );
    // The holder finishes: the instance runs within a few ticks (a skip is not a failure held back
    // for minutes).
    obj_delete(&held);
    wait_for("not run after the lock went", &|_| {
        !snapshots_of(&repo, "fast").is_empty()
    });
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());
    let runs = json(&ok(cairn(&repo).args(["log", "--json"])));
    assert!(
        runs.as_array().unwrap().iter().all(|r| r["status"] == "ok"),
        "a skip was recorded as a failed run: {runs}"
    );
}

/// A `cairn` command of another host sharing the repository: an index cache of its own, so what it writes
/// reaches this host's cache only when that is refreshed from the repository.
fn other_host(repo: &Path, dir: &Path) -> Command {
    let mut c = cairn(repo);
    c.env("XDG_CACHE_HOME", dir.join("other-host-cache"));
    c
}

/// Waits (at most 30 s) until `done` holds of the log `log` reads (a server's or a daemon's stderr); failing,
/// says `what` and shows the log.
fn wait_for_log(what: &str, log: &dyn Fn() -> String, done: &dyn Fn(&str) -> bool) {
    let t0 = Instant::now();
    while !done(&log()) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{what}; log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (at most 30 s) until `file` exists.
fn wait_for_file(file: &Path) {
    let t0 = Instant::now();
    while !file.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{} never appeared",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An instance `gate` of high priority (so a `run-due` runs it before `shop`, of medium priority), due now,
/// whose pre-hook creates `dir/gate-started` and then waits (at most 30 s) for `dir/gate-open`: a `run-due`
/// held after it has decided what is due and before it takes `shop`'s run lock.
fn gate_instance(dir: &Path, repo: &Path) {
    let data = dir.join("gate-data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), b"the gate's files").unwrap();
    ok(cairn(repo).args([
        "instance",
        "add",
        "gate",
        "--path",
        s(&data),
        "--priority",
        "high",
    ]));
    make_due(repo, "gate");
    let hook = format!(
        "touch '{d}/gate-started'; i=0; \
         while [ ! -e '{d}/gate-open' ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done",
        d = dir.display()
    );
    ok(cairn(repo).args(["instance", "set", "gate", "--pre-hook", &hook]));
}

#[test]
fn run_due_does_not_back_up_again_an_instance_another_host_ran_after_it_was_found_due() {
    let (dir, repo) = new_repo();
    let d = dir.path();
    held_instance(d, &repo);
    gate_instance(d, &repo);
    // Host A backs shop up by hand, held in its pre-hook: it holds shop's run lock.
    let a = other_host_holds_shop(&repo, d);
    // This host's run-due finds gate and shop due (shop's only snapshot is old, and A's is not written
    // yet), and is held in gate's pre-hook.
    let b = start_held(
        cairn(&repo).args(["run-due", "--json"]),
        &d.join("gate-started"),
    );
    // A finishes shop's run and releases its run lock before run-due comes to shop.
    fs::write(d.join("release"), b"").unwrap();
    let (code, out, err) = finish(a);
    assert_eq!(code, 0, "{out}\n{err}");
    let a_snapshot = json(&out)["snapshot_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no snapshot id: {out}"))
        .to_string();
    fs::write(d.join("gate-open"), b"").unwrap();

    let (code, out, err) = finish(b);
    assert_eq!(code, 0, "{out}\n{err}");
    let due = json(&out);
    let by_name = |n: &str| outcome_of(&due, n);
    assert!(by_name("gate")["snapshot_id"].is_string(), "{due}");
    let shop = by_name("shop");
    assert_eq!(
        fs::read_to_string(d.join("runs")).unwrap().lines().count(),
        1,
        "shop was backed up again for the same slot (its pre-hook, a pg_dump's stand-in, ran twice): {due}"
    );
    assert!(shop["snapshot_id"].is_null(), "backed up twice: {due}");
    assert!(shop["error"].is_null(), "{due}");
    assert!(shop["skipped"].is_null(), "no one held the lock: {due}");
    let already = shop["already_run"].as_str().unwrap_or_default();
    assert!(
        already.contains(&a_snapshot[..8]),
        "not told which run took care of it: {due}"
    );
    assert!(
        err.contains("backup skipped: already run") && err.contains(&a_snapshot[..8]),
        "no log line: {err}"
    );
    assert_eq!(snapshots_of(&repo, "shop").len(), 2, "the old one and A's");
    assert!(obj_list(&repo.join("locks")).is_empty(), "a lock was left");
    // The run log holds A's run only: a skip is not a run.
    let log = json(&ok(cairn(&repo).args([
        "log",
        "--instance",
        "shop",
        "--json",
    ])));
    let backups = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "backup")
        .count();
    assert_eq!(backups, 2, "make_due's run and A's: {log}");
}

/// A user pauses an instance (or changes its pre-hook) on another host while a `run-due` here has already
/// found it due and is busy with another instance: the run reads the configuration again under the run
/// lock, so the pause stops it (reported as `withdrawn`, not a failure) and the new hook is the one run.
#[test]
fn run_due_honours_a_pause_and_a_new_hook_made_after_it_found_the_instances_due() {
    let (dir, repo) = new_repo();
    let d = dir.path();
    held_instance(d, &repo);
    fs::write(d.join("release"), b"").unwrap(); // shop's hook, should it run, does not wait
    gate_instance(d, &repo);
    let late = d.join("late-data");
    fs::create_dir_all(&late).unwrap();
    fs::write(late.join("f"), b"late's files").unwrap();
    ok(cairn(&repo).args([
        "instance",
        "add",
        "late",
        "--path",
        s(&late),
        "--priority",
        "low",
    ]));
    make_due(&repo, "late");
    ok(cairn(&repo).args([
        "instance",
        "set",
        "late",
        "--pre-hook",
        &format!("touch '{}/old-hook'", d.display()),
    ]));

    let b = start_held(
        cairn(&repo).args(["run-due", "--json"]),
        &d.join("gate-started"),
    );
    ok(other_host(&repo, d).args(["instance", "pause", "shop"]));
    let new_hook = format!("touch '{}/new-hook'", d.display());
    ok(other_host(&repo, d).args(["instance", "set", "late", "--pre-hook", &new_hook]));
    fs::write(d.join("gate-open"), b"").unwrap();

    let (code, out, err) = finish(b);
    assert_eq!(code, 0, "{out}\n{err}");
    let due = json(&out);
    let by_name = |n: &str| outcome_of(&due, n);
    let shop = by_name("shop");
    assert!(
        !d.join("runs").exists(),
        "a paused instance was backed up (its pre-hook, a pg_dump's stand-in, ran): {due}"
    );
    assert!(
        shop["snapshot_id"].is_null() && shop["error"].is_null(),
        "{due}"
    );
    assert_eq!(shop["withdrawn"], "paused", "{due}");
    assert!(err.contains("backup skipped: paused"), "no log line: {err}");
    assert_eq!(snapshots_of(&repo, "shop").len(), 1, "make_due's only");
    assert!(by_name("late")["snapshot_id"].is_string(), "{due}");
    assert!(
        d.join("new-hook").exists() && !d.join("old-hook").exists(),
        "the run used the configuration it was found due with, not the one read under its lock"
    );
    assert!(obj_list(&repo.join("locks")).is_empty(), "a lock was left");
}

#[test]
fn serves_schedule_skips_an_instance_run_elsewhere_and_does_not_back_it_up_again_after() {
    let (dir, repo) = new_repo();
    let d = dir.path();
    held_instance(d, &repo);
    let viewer = token(&repo, "watch", "viewer");
    // Another host backs shop up by hand, held in its pre-hook: it holds shop's run lock.
    let a = other_host_holds_shop(&repo, d);
    let a_pid = a.id().to_string();
    let srv = Server::start_scheduled(&repo, &["--tick-seconds", "1"]);
    let log = || srv.stderr.lock().unwrap().clone();
    let wait_for = |what: &str, done: &dyn Fn(&str) -> bool| wait_for_log(what, &log, done);
    let shop_jobs = || srv.get_ok("/api/v1/jobs?instance=shop", &viewer);

    // The schedule finds shop due and skips it while A runs it, naming A: no second backup beside it.
    wait_for("no skip logged", &|l| {
        l.contains("shop: scheduled backup skipped") && l.contains(&a_pid)
    });
    let jobs = shop_jobs();
    let skipped = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["status"] == "completed")
        .unwrap_or_else(|| panic!("no finished scheduled job: {jobs}"));
    assert!(skipped["snapshot_id"].is_null(), "{jobs}");
    assert!(
        skipped["detail"]["skipped"]
            .as_str()
            .unwrap_or_default()
            .contains(&a_pid),
        "the holder is not named: {jobs}"
    );
    assert_eq!(
        fs::read_to_string(d.join("runs")).unwrap().lines().count(),
        1,
        "the server ran shop beside the other host's run"
    );
    assert_eq!(snapshots_of(&repo, "shop").len(), 1, "only the old one");

    // A finishes. The server's cache has not seen A's snapshot, so its next tick finds shop due again; under
    // the run lock it reads the repository, sees A's run and skips: no second backup for the slot.
    fs::write(d.join("release"), b"").unwrap();
    let (code, out, err) = finish(a);
    assert_eq!(code, 0, "{out}\n{err}");
    let a_snapshot = json(&out)["snapshot_id"].as_str().unwrap().to_string();
    wait_for("no already-run skip logged", &|l| {
        l.contains("shop: scheduled backup skipped: already run") && l.contains(&a_snapshot[..8])
    });
    let jobs = shop_jobs();
    assert!(
        jobs.as_array()
            .unwrap()
            .iter()
            .any(|j| j["detail"]["already_run"]
                .as_str()
                .is_some_and(|w| w.contains(&a_snapshot[..8]))),
        "{jobs}"
    );
    // From then on its cache knows: shop is not due, and no job starts for it.
    let count = shop_jobs().as_array().unwrap().len();
    std::thread::sleep(Duration::from_millis(3500));
    let jobs = shop_jobs();
    assert_eq!(
        jobs.as_array().unwrap().len(),
        count,
        "still found due: {jobs}"
    );
    assert_eq!(
        fs::read_to_string(d.join("runs")).unwrap().lines().count(),
        1,
        "the pre-hook (a pg_dump's stand-in) ran again for the same slot"
    );
    assert_eq!(snapshots_of(&repo, "shop").len(), 2, "the old one and A's");
    assert!(
        jobs.as_array()
            .unwrap()
            .iter()
            .all(|j| j["status"] == "completed" && j["snapshot_id"].is_null()),
        "{jobs}"
    );
}

/// A child process killed when the test ends, also when an assertion fails (a daemon left running would
/// hold the test runner's output open).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_daemon_does_not_back_up_again_an_instance_another_host_ran_while_it_waited() {
    let (dir, repo) = new_repo();
    let d = dir.path();
    held_instance(d, &repo);
    // Another host backs shop up by hand, held in its pre-hook: it holds shop's run lock.
    let a = other_host_holds_shop(&repo, d);
    let log = d.join("daemon.log");
    let mut daemon = KillOnDrop(
        cairn(&repo)
            .args(["daemon", "--tick-seconds", "1"])
            .stderr(Stdio::from(fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap(),
    );
    let text = || fs::read_to_string(&log).unwrap_or_default();
    let wait_for = |what: &str, done: &dyn Fn(&str) -> bool| wait_for_log(what, &text, done);
    let a_pid = a.id().to_string();
    wait_for("no skip logged", &|l| {
        l.contains("another run of this instance is under way") && l.contains(&a_pid)
    });
    // While A runs, the daemon tries shop again once a tick, not in a loop (each try writes and lists
    // lock objects, requests to S3).
    std::thread::sleep(Duration::from_millis(2500));
    let tries = text()
        .matches("another run of this instance is under way")
        .count();
    assert!(
        tries <= 5,
        "{tries} tries in 2.5 s at a 1 s tick:\n{}",
        text()
    );
    // A finishes; the daemon's cache has not seen its snapshot, so its next tick finds shop due, and the
    // job, under the run lock, finds A's run in the repository.
    fs::write(d.join("release"), b"").unwrap();
    let (code, out, err) = finish(a);
    assert_eq!(code, 0, "{out}\n{err}");
    let a_snapshot = json(&out)["snapshot_id"].as_str().unwrap().to_string();
    wait_for("no already-run skip logged", &|l| {
        l.contains("backup skipped: already run") && l.contains(&a_snapshot[..8])
    });
    // Later ticks see shop up to date.
    std::thread::sleep(Duration::from_millis(2500));
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    let status = daemon.0.wait().unwrap();
    assert!(status.success(), "{status}; daemon log:\n{}", text());
    assert_eq!(
        text().matches("backup skipped: already run").count(),
        1,
        "still found due after the skip:\n{}",
        text()
    );
    assert!(!text().contains("backup started"), "{}", text());
    assert_eq!(
        fs::read_to_string(d.join("runs")).unwrap().lines().count(),
        1,
        "the daemon ran shop again for the same slot"
    );
    assert_eq!(snapshots_of(&repo, "shop").len(), 2, "the old one and A's");
}
