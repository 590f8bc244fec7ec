//! Failing sinks on the read side, through the real binary: command output to a full device (`/dev/full`)
//! and to a pipe whose reader is gone (`cairn ls | head -1`).
//!
//! - A full or failing stdout is an error: one line naming it, exit 1, never a panic (exit 101 with a
//!   backtrace, as `println!` gives).
//! - A closed pipe ends the command quietly the way coreutils and restic end: killed by SIGPIPE (a shell
//!   reports 141), nothing on stderr.
//! - An archive export that fails mid-way appends nothing after the failure (no zip central directory, no
//!   tar end blocks, no "ZipWriter drop failed" line from the zip crate).

mod harness;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

use harness::*;

/// A repository with one snapshot (a few files, one of 3 MB) and an instance; returns its id.
fn repo_with_snapshot() -> (tempfile::TempDir, std::path::PathBuf, String) {
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("big"), pseudo_random(3 << 20, 1)).unwrap();
    for i in 0..40 {
        fs::write(src.join("sub").join(format!("file{i}")), format!("{i}")).unwrap();
    }
    ok(cairn(&repo)
        .args(["instance", "add", "app", "--priority", "manual", "--path"])
        .arg(&src));
    let v: serde_json::Value = serde_json::from_str(&ok(
        cairn(&repo).args(["--json", "instance", "backup", "app"])
    ))
    .unwrap();
    let id = v["snapshot_id"].as_str().unwrap().to_string();
    (dir, repo, id)
}

/// The read-side commands that write to stdout, as text and as JSON.
fn commands(id: &str) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        s(&["snapshots"]),
        s(&["--json", "snapshots"]),
        s(&["ls", id]),
        s(&["--json", "ls", id]),
        s(&["find", "file"]),
        s(&["--json", "find", "file"]),
        s(&["dump", id, "src/big"]),
        s(&["export", "--format", "tar", id]),
        s(&["export", "--format", "zip", id]),
        s(&["check"]),
        s(&["stats"]),
        s(&["diff", id, id]),
        s(&["instance", "list"]),
    ]
}

fn no_panic(what: &str, code: Option<i32>, err: &str) {
    assert!(
        !err.contains("panicked") && !err.contains("stack backtrace") && code != Some(101),
        "{what}: panicked:\n{err}"
    );
}

#[test]
fn output_to_a_full_device_is_one_clear_error_and_exit_1() {
    let (_dir, repo, id) = repo_with_snapshot();
    for args in commands(&id) {
        let what = args.join(" ");
        let full = fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = cairn(&repo)
            .args(&args)
            .stdout(Stdio::from(full))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        no_panic(&what, out.status.code(), &err);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains("No space left on device"),
            "{what}: the cause is not named: {err}"
        );
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{what}: not one line:\n{err}"
        );
    }
}

#[test]
fn output_to_a_closed_pipe_ends_quietly_by_sigpipe() {
    let (_dir, repo, id) = repo_with_snapshot();
    for args in commands(&id) {
        let what = args.join(" ");
        let mut child = cairn(&repo)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader is gone before the first write: every write meets EPIPE.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        no_panic(&what, out.status.code(), &err);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{what}: not ended by SIGPIPE ({:?}): {err}",
            out.status
        );
        assert!(err.trim().is_empty(), "{what}: printed on stderr: {err}");
    }
}

/// Runs `cairn export` into a pipe read by `head -c limit` (which then exits): a closed pipe mid-archive.
fn export_through_head(
    repo: &Path,
    id: &str,
    format: &str,
    limit: usize,
) -> (Option<i32>, Option<i32>, String, Vec<u8>) {
    let mut child = cairn(repo)
        .args(["export", "--format", format, id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let head = Command::new("head")
        .arg(format!("-c{limit}"))
        .stdin(Stdio::from(child.stdout.take().unwrap()))
        .output()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        out.status.signal(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        head.stdout,
    )
}

#[test]
fn an_export_whose_reader_goes_away_mid_archive_says_nothing_and_adds_nothing() {
    let (_dir, repo, id) = repo_with_snapshot();
    for format in ["zip", "tar"] {
        let (code, signal, err, got) = export_through_head(&repo, &id, format, 100_000);
        no_panic(format, code, &err);
        assert_eq!(got.len(), 100_000, "{format}");
        assert_eq!(signal, Some(libc::SIGPIPE), "{format}: {code:?} {err}");
        assert!(err.trim().is_empty(), "{format}: printed on stderr: {err}");
    }
}

#[test]
fn an_export_failing_on_damage_mid_archive_appends_no_archive_end() {
    let (_dir, repo, id) = repo_with_snapshot();
    // Damage the data of the big file: the export fails in the middle of its entry.
    let pack = packs(&repo)
        .into_iter()
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = fs::read(&pack).unwrap();
    let at = bytes.len() / 2;
    for b in &mut bytes[at..at + 64] {
        *b ^= 0xff;
    }
    fs::write(&pack, &bytes).unwrap();
    for format in ["zip", "tar"] {
        let out = cairn(&repo)
            .args(["export", "--format", format, &id])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{format}: {err}");
        assert!(err.contains("corrupt"), "{format}: {err}");
        assert!(!err.contains("ZipWriter"), "{format}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{format}: not one line:\n{err}"
        );
        let data = &out.stdout;
        match format {
            // A zip's end: the end-of-central-directory record ("PK\x05\x06").
            "zip" => assert!(
                !data.windows(4).any(|w| w == b"PK\x05\x06"),
                "zip: a central directory was written after the failure"
            ),
            // A tar's end: two zero blocks; a truncated entry must not be padded into one.
            _ => assert!(
                !(data.len() >= 1024 && data[data.len() - 1024..].iter().all(|&b| b == 0)),
                "tar: end-of-archive blocks were written after the failure"
            ),
        }
    }
}
