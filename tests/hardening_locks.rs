//! Hardening of repository locks and of what a command leaves running, through the real binary: a lock whose
//! holder is certainly gone (dated far in the future by a wrong clock, or written under an earlier boot of
//! this host) must not block prune, and one that may be live must; a password command that is killed must
//! not leave its children behind.
//!
//! Locks are written by hand into a local repository's `locks/` directory, as a crashed process leaves them.

mod harness;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::*;

/// A local encrypted repository in a fresh temp dir (locks are written by hand, so never an S3 one).
fn local_repo() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    ok(cairn(&repo).arg("init"));
    (dir, repo)
}

/// Whether `pid` is gone (or a zombie nobody reaped yet: it runs no more).
fn gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_password_command_that_times_out_is_killed_with_its_children() {
    let (dir, repo) = local_repo();
    let pid_file = dir.path().join("sleep.pid");
    let err_file = dir.path().join("stderr");
    // No controlling terminal (setsid), as under the daemon or a timer: the command gets its own group.
    let mut c = Command::new("setsid");
    c.arg("-w")
        .arg(cairn_bin())
        .env("CAIRN_REPO", &repo)
        .stdin(Stdio::null());
    with_password(&mut c)
        .env(
            "CAIRN_PASSWORD_COMMAND",
            format!("sleep 300 & echo $! > {}; wait", pid_file.display()),
        )
        .env("CAIRN_PASSWORD_TIMEOUT", "1")
        .arg("snapshots")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err_file).unwrap());
    let started = Instant::now();
    let status = c.status().unwrap();
    let err = fs::read_to_string(&err_file).unwrap();
    assert_eq!(status.code(), Some(12), "{err}");
    assert!(err.contains("CAIRN_PASSWORD_TIMEOUT"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));

    let pid: u32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while !gone(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left_running = !gone(pid);
    if left_running {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    assert!(
        !left_running,
        "the password command's child {pid} is still running"
    );
}
