//! Issue 15 "Correct, scriptable output": every command's `--json` is exactly one JSON document on stdout,
//! and `--quiet` silences every command that reports an action.

mod harness;

use std::fs;
use std::path::Path;
use std::process::Command;

use harness::*;

/// Runs `cairn --json ARGS` and parses the whole of stdout as one JSON document.
fn one_doc(repo: &Path, args: &[&str], expect: i32) -> serde_json::Value {
    let (code, out, err) = run(cairn(repo).arg("--json").args(args));
    assert_eq!(
        code, expect,
        "cairn --json {args:?}\nstdout: {out}\nstderr: {err}"
    );
    serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!("cairn --json {args:?}: stdout is not exactly one JSON document ({e}):\n{out}")
    })
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    build_rich_tree(&src, 20);
    (dir, repo, src)
}

#[test]
fn every_command_prints_exactly_one_json_document_with_json() {
    let (dir, _, src) = setup();
    let repo = dir.path().join("repo2");
    let r = repo.as_path();
    let s = src.to_str().unwrap();
    let tmp = dir.path();
    one_doc(r, &["init"], 0);
    let b = one_doc(r, &["backup", s, "--time", "2026-01-01 10:00"], 0);
    let id = b["snapshot_id"].as_str().unwrap().to_string();
    one_doc(r, &["backup", s], 0);
    // Schedule entries of an encrypted repository name a password file (never the password).
    let pw = tmp.join("password");
    std::fs::write(&pw, harness::PASSWORD).unwrap();
    let pw = pw.to_str().unwrap();
    for args in [
        vec!["snapshots"],
        vec!["show", "latest"],
        vec!["show", &id[..8]],
        vec!["ls", "latest"],
        vec!["check"],
        vec!["check", "--read-data"],
        vec!["diff", &id[..8], "latest"],
        vec!["find", "*"],
        vec!["stats"],
        vec!["log"],
        vec!["health"],
        vec!["schedule", "crontab", "--password-file", pw],
        vec!["schedule", "systemd", "--password-file", pw],
        vec!["unlock"],
        vec!["prune", "--dry-run"],
        vec!["forget", "--keep-last", "5", "--dry-run"],
        vec!["repair", "index"],
        vec!["repair", "snapshots"],
        vec!["key", "list"],
        vec!["wal-list"],
        vec!["token", "add", "panel", "--role", "viewer"],
        vec!["token", "list"],
        vec!["token", "remove", "panel"],
    ] {
        one_doc(r, &args, 0);
    }
    // A copy into a repository sharing this one's keys, and a second one that finds nothing to copy.
    let r3 = tmp.join("repo3");
    one_doc(&r3, &["init", "--from-repo", r.to_str().unwrap()], 0);
    let copied = one_doc(&r3, &["copy", "--from-repo", r.to_str().unwrap()], 0);
    assert!(copied.is_object());
    one_doc(&r3, &["copy", "--from-repo", r.to_str().unwrap()], 0);
    let target = tmp.join("restored");
    one_doc(
        r,
        &["restore", "latest", "--target", target.to_str().unwrap()],
        0,
    );
    assert_same_tree(&src, &target.join("src"));

    // Instances: every action, including the ones that used to print text or nothing.
    let inst = tmp.join("inst");
    fs::create_dir_all(&inst).unwrap();
    fs::write(inst.join("a.txt"), b"instance file").unwrap();
    let ip = inst.to_str().unwrap();
    let added = one_doc(
        r,
        &["instance", "add", "web", "--path", ip, "--priority", "low"],
        0,
    );
    assert_eq!(added["instance"], "web");
    one_doc(r, &["instance", "list"], 0);
    let shown = one_doc(r, &["instance", "show", "web"], 0);
    assert_eq!(shown["name"], "web");
    one_doc(r, &["instance", "set", "web", "--keep-last", "3"], 0);
    let paused = one_doc(r, &["instance", "pause", "web"], 0);
    assert_eq!(paused["paused"], true);
    let resumed = one_doc(r, &["instance", "resume", "web"], 0);
    assert_eq!(resumed["paused"], false);
    one_doc(r, &["instance", "backup", "web"], 0);
    let it = tmp.join("inst-restored");
    one_doc(
        r,
        &[
            "instance",
            "restore",
            "web",
            "--target",
            it.to_str().unwrap(),
        ],
        0,
    );
    one_doc(r, &["run-due"], 0);

    // Archives: import one, export one (to a file: stdout is the archive's bytes).
    let tarball = tmp.join("a.tar.gz");
    {
        let f = fs::File::create(&tarball).unwrap();
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        let mut t = tar::Builder::new(gz);
        t.append_dir_all("filestore", &inst).unwrap();
        let sql = b"-- plain SQL dump\n";
        let mut h = tar::Header::new_gnu();
        h.set_size(sql.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, "dump.sql", &sql[..]).unwrap();
        t.into_inner().unwrap().finish().unwrap();
    }
    one_doc(
        r,
        &[
            "import-archive",
            "--time",
            "2025-06-01 12:00",
            tarball.to_str().unwrap(),
        ],
        0,
    );

    // forget --prune used to print two documents: the forget decisions, then the prune report.
    let fp = one_doc(r, &["forget", "--keep-last", "1", "--prune"], 0);
    assert!(
        fp["prune"].is_object(),
        "prune report inside the one document: {fp}"
    );
    let removed = one_doc(r, &["instance", "remove", "web", "--purge"], 0);
    assert_eq!(removed["instance"], "web");

    // dump and export write data on stdout: --json is refused as a usage error before anything is written.
    for args in [
        vec!["dump", "latest", "x"],
        vec!["export", "latest", "--format", "tar"],
    ] {
        let (code, out, err) = run(cairn(r).arg("--json").args(&args));
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} printed on stdout: {out}");
        assert!(err.contains("--json"), "{err}");
    }
}

#[test]
fn show_prints_text_without_json() {
    let (_dir, repo, src) = setup();
    ok(cairn(&repo).args(["backup", src.to_str().unwrap()]));
    let out = ok(cairn(&repo).args(["show", "latest"]));
    assert!(
        serde_json::from_str::<serde_json::Value>(&out).is_err(),
        "{out}"
    );
    assert!(out.contains("snapshot "), "{out}");
    assert!(out.contains(src.to_str().unwrap()), "{out}");
}

#[test]
fn quiet_silences_every_command_that_reports_an_action() {
    let (dir, repo, src) = setup();
    let r = repo.as_path();
    let s = src.to_str().unwrap();
    let quiet = |args: &[&str]| {
        let (code, out, err) = run(cairn(r).arg("--quiet").args(args));
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.is_empty(), "cairn --quiet {args:?} printed: {out}");
    };
    let fresh = dir.path().join("fresh");
    let (code, out, _) = run(cairn(&fresh).args(["--quiet", "init"]));
    assert_eq!((code, out.as_str()), (0, ""));
    quiet(&["backup", s]);
    quiet(&["backup", s]);
    let t = dir.path().join("t");
    quiet(&["restore", "latest", "--target", t.to_str().unwrap()]);
    quiet(&["check"]);
    quiet(&["forget", "--keep-last", "1"]);
    quiet(&["prune"]);
    quiet(&["forget", "--keep-last", "1", "--prune"]);
    quiet(&["repair", "index"]);
    quiet(&["repair", "snapshots"]);
    quiet(&["unlock"]);
    let inst = dir.path().join("inst");
    fs::create_dir_all(&inst).unwrap();
    fs::write(inst.join("f"), b"x").unwrap();
    quiet(&[
        "instance",
        "add",
        "w",
        "--path",
        inst.to_str().unwrap(),
        "--schedule",
        "* * * * *",
    ]);
    quiet(&["instance", "set", "w", "--keep-last", "2"]);
    quiet(&["instance", "pause", "w"]);
    quiet(&["instance", "resume", "w"]);
    quiet(&["instance", "backup", "w"]);
    let it = dir.path().join("it");
    quiet(&["instance", "restore", "w", "--target", it.to_str().unwrap()]);
    quiet(&["run-due"]);
    quiet(&["health"]);
    quiet(&["instance", "remove", "w"]);
    let _ = Command::new("true");
}

/// A `cairn backup --stdin` fed slowly by the test, so that it runs (holding its lock) until told otherwise.
fn slow_stdin_backup(repo: &Path) -> (std::process::Child, std::thread::JoinHandle<()>) {
    use std::io::Write;
    let mut child = cairn(repo)
        .args(["backup", "--stdin", "--stdin-name", "slow.bin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        // Stops when the backup is gone (EPIPE) or after ~60 s.
        for i in 0..1200u64 {
            if stdin.write_all(&pseudo_random(1 << 20, i)).is_err() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    });
    // Wait until the backup holds its lock.
    let locks = repo.join("locks");
    for _ in 0..200 {
        if fs::read_dir(&locks).map(|d| d.count() > 0).unwrap_or(false) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (child, feeder)
}

#[test]
fn exit_codes_0_1_2_3_10_11_130_are_produced() {
    let (dir, repo, src) = setup();
    let r = repo.as_path();
    let s = src.to_str().unwrap();
    // 0
    ok(cairn(r).args(["backup", s]));
    // 1: an error that is none of the others.
    fails(cairn(r).args(["show", "ffffffff"]), 1);
    // 2: usage, both from the argument parser and from cairn's own checks.
    let (code, _, err) = run(cairn(r).args(["backup", "--no-such-flag"]));
    assert_eq!(code, 2, "{err}");
    fails(cairn(r).args(["--json", "dump", "latest", "x"]), 2);
    // 3: a partial result (an export that leaves out what its format cannot hold).
    let fifo_tree = dir.path().join("fifo");
    fs::create_dir_all(&fifo_tree).unwrap();
    fs::write(fifo_tree.join("f"), b"file").unwrap();
    let st = Command::new("mkfifo")
        .arg(fifo_tree.join("p"))
        .status()
        .unwrap();
    assert!(st.success());
    let fifo_snap = one_doc(r, &["backup", fifo_tree.to_str().unwrap()], 0);
    let fifo_snap = fifo_snap["snapshot_id"].as_str().unwrap();
    let (code, _, err) = run(cairn(r).args(["export", fifo_snap, "--format", "zip"]));
    assert_eq!(code, 3, "{err}");
    // 10: the repository does not exist, or the directory is not a repository.
    let missing = dir.path().join("missing");
    for args in [
        &["snapshots"][..],
        &["check"],
        &["restore", "latest", "--target", "/tmp/x"],
    ] {
        fails(cairn(&missing).args(args), 10);
        fails(cairn(&src).args(args), 10);
    }
    assert!(!missing.exists(), "a missing named repository was created");
    // 11: locked, by a backup that is running.
    let (child, feeder) = slow_stdin_backup(r);
    let err = fails(cairn(r).args(["prune"]), 11);
    assert!(err.contains("locked"), "{err}");
    fails(cairn(r).args(["repair", "index"]), 11);
    // 130: SIGINT stops the running backup: no snapshot, its lock released.
    let before = ok(cairn(r).args(["--json", "snapshots"]));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("cairn: error: interrupted"), "{stderr}");
    assert_eq!(ok(cairn(r).args(["--json", "snapshots"])), before);
    assert_eq!(
        fs::read_dir(r.join("locks")).unwrap().count(),
        0,
        "lock left behind"
    );
    ok(cairn(r).args(["prune"]));
}

#[test]
fn sigint_to_the_process_group_of_a_command_stream_backup_exits_130() {
    // A command that streams (the backup notices between batches) and one that has written nothing yet
    // (the backup first notices the command's death by the same Ctrl-C).
    for script in [
        "while true; do head -c 1048576 /dev/urandom; sleep 0.05; done",
        "exec sleep 30",
    ] {
        sigint_during(script);
    }
}

fn sigint_during(script: &str) {
    use std::os::unix::process::CommandExt;
    let (_dir, repo) = new_repo();
    let child = stdin_backup(&repo, "gen.bin", &["sh", "-c", script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let locks = repo.join("locks");
    for _ in 0..200 {
        if fs::read_dir(&locks).map(|d| d.count() > 0).unwrap_or(false) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    // What a terminal's Ctrl-C does: SIGINT to the whole foreground process group.
    // SAFETY: kill(2) on the process group of our own child.
    assert_eq!(unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{script}: {stderr}");
    let v: serde_json::Value =
        serde_json::from_str(&ok(cairn(&repo).args(["--json", "snapshots"]))).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 0, "a snapshot was written");
    assert_eq!(fs::read_dir(&locks).unwrap().count(), 0, "lock left behind");
}
