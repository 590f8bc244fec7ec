//! `cairn mount` (issue 15): the snapshots as a read-only FUSE file system, through the real binary. Skipped,
//! with a printed reason, where FUSE cannot be used (no usable `/dev/fuse` or no `fusermount3`).

mod harness;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::*;

/// Why FUSE cannot be used here, if it cannot.
fn fuse_unusable() -> Option<String> {
    if let Err(e) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        return Some(format!("/dev/fuse cannot be opened: {e}"));
    }
    let found = Command::new("fusermount3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if found.is_err() {
        return Some("fusermount3 is not installed (Debian package fuse3)".into());
    }
    None
}

macro_rules! require_fuse {
    () => {
        if let Some(why) = fuse_unusable() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

fn is_mounted(mp: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mp = fs::canonicalize(mp).unwrap_or_else(|_| mp.to_path_buf());
    mounts
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(mp.to_str().unwrap()))
}

/// Starts `cairn mount` and waits until the view is there.
fn mount(repo: &Path, mp: &Path) -> Child {
    fs::create_dir_all(mp).unwrap();
    let mut child = cairn(repo)
        .arg("mount")
        .arg(mp)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !is_mounted(mp) {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!("cairn mount exited with {status}: {err}");
        }
        assert!(start.elapsed() < Duration::from_secs(30), "not mounted");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Waits for the mount process to end; returns its exit code.
fn wait(child: &mut Child) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "cairn mount did not end"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn backup_stream(repo: &Path, name: &str, data: &[u8], extra: &[&str]) {
    let mut child = cairn(repo)
        .args(["backup", "--stdin", "--stdin-name", name])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    assert!(child.wait().unwrap().success());
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn refused(r: std::io::Result<impl std::fmt::Debug>, what: &str) {
    let e = r.expect_err(what);
    assert!(
        matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES)),
        "{what}: {e}"
    );
}

#[test]
fn mount_shows_every_snapshot_byte_for_byte_with_latest_read_only_and_unmounts_on_sigterm() {
    require_fuse!();
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    build_rich_tree(&src, 40);
    let dump = pseudo_random(3_000_000, 7);
    backup_stream(&repo, "db.dump", &dump, &["--time", "2024-01-01T00:00:00Z"]);
    let first = backup_json(
        &repo,
        &["--time", "2024-01-02T00:00:00Z", src.to_str().unwrap()],
    );
    fs::write(src.join("added-later.bin"), pseudo_random(700_000, 3)).unwrap();
    let second = backup_json(
        &repo,
        &[
            "--instance",
            "app",
            "--time",
            "2024-01-03T00:00:00Z",
            src.to_str().unwrap(),
        ],
    );
    let mp = dir.path().join("mnt");
    let mut child = mount(&repo, &mp);

    // The layout: by time, by instance, by id, and `latest`.
    assert_eq!(names(&mp), ["ids", "instances", "latest", "snapshots"]);
    let by_time = names(&mp.join("snapshots"));
    assert_eq!(by_time.len(), 4, "{by_time:?}");
    assert!(by_time[0].starts_with("2024-01-01T00:00:00"), "{by_time:?}");
    assert_eq!(by_time[3], "latest");
    let newest = by_time[2].clone();
    assert!(newest.starts_with("2024-01-03T00:00:00"), "{newest}");
    assert_eq!(
        fs::read_link(mp.join("latest")).unwrap(),
        PathBuf::from(format!("snapshots/{newest}"))
    );
    assert_eq!(
        fs::read_link(mp.join("snapshots/latest")).unwrap(),
        PathBuf::from(&newest)
    );
    assert_eq!(names(&mp.join("instances")), ["app"]);
    assert_eq!(
        names(&mp.join("instances/app")),
        [newest.as_str(), "latest"]
    );
    let id = second["snapshot_id"].as_str().unwrap();
    assert_eq!(
        fs::read_link(mp.join("ids").join(id)).unwrap(),
        PathBuf::from(format!("../snapshots/{newest}"))
    );

    // Contents and metadata, byte for byte, read lazily through the repository.
    assert_same_tree(&src, &mp.join("latest/src"));
    assert_same_tree(&src, &mp.join("instances/app/latest/src"));
    let older = mp.join("snapshots").join(&by_time[1]).join("src");
    assert!(!older.join("added-later.bin").exists());
    assert!(first["snapshot_id"].is_string());
    assert_eq!(
        fs::read(older.join("docs/nested/deeper/big.bin")).unwrap(),
        fs::read(src.join("docs/nested/deeper/big.bin")).unwrap()
    );
    let streams = mp.join("snapshots").join(&by_time[0]).join("@streams");
    assert_eq!(names(&streams), ["db.dump"]);
    assert!(fs::read(streams.join("db.dump")).unwrap() == dump);

    // Read-only: every kind of write fails, and nothing changes.
    let file = mp.join("latest/src/docs/readme.txt");
    refused(
        fs::OpenOptions::new().write(true).open(&file),
        "open for writing",
    );
    refused(fs::write(mp.join("latest/src/new-file"), b"x"), "create");
    refused(fs::remove_file(&file), "unlink");
    refused(fs::create_dir(mp.join("latest/src/new-dir")), "mkdir");
    refused(fs::rename(&file, mp.join("latest/src/renamed")), "rename");
    assert_same_tree(&src, &mp.join("latest/src"));

    // SIGTERM unmounts and ends the process cleanly.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert_eq!(wait(&mut child), 0);
    assert!(!is_mounted(&mp));
    assert!(names(&mp).is_empty(), "the mount point is empty again");
}

#[test]
fn mount_ends_when_unmounted_from_outside_and_on_sigint() {
    require_fuse!();
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"content").unwrap();
    backup_json(&repo, &[src.to_str().unwrap()]);
    let mp = dir.path().join("mnt");

    let mut child = mount(&repo, &mp);
    assert_eq!(fs::read(mp.join("latest/src/f")).unwrap(), b"content");
    ok(Command::new("fusermount3").arg("-u").arg(&mp));
    assert_eq!(wait(&mut child), 0);
    assert!(!is_mounted(&mp));

    let mut child = mount(&repo, &mp);
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    assert_eq!(wait(&mut child), 0);
    assert!(!is_mounted(&mp));

    // A mount point that does not exist: one clear error line.
    let err = fails(cairn(&repo).arg("mount").arg(dir.path().join("missing")), 1);
    assert!(err.contains("missing"), "{err}");
}
