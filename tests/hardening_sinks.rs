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
    if local_only("damages a pack file in place") {
        return;
    }
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

// ---------------------------------------------------------------------------------------------------------
// Full file systems on the read side (root only: a small tmpfs; CI runs as root).

/// Unmounts on drop.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn tmpfs(at: &Path, size: &str) -> Option<Mounted> {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: cannot mount a tmpfs here (needs root; CI has it)");
        return None;
    }
    fs::create_dir_all(at).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .status()
        .ok()?;
    st.success().then(|| Mounted(at.to_path_buf()))
}

fn free_bytes(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

/// Writes `filler` so that about `leave` bytes stay free on the file system of `mnt`.
fn fill_leaving(mnt: &Path, filler: &Path, leave: u64) {
    use std::io::Write;
    let _ = fs::remove_file(filler);
    let mut left = free_bytes(mnt).saturating_sub(leave);
    let mut f = fs::File::create(filler).unwrap();
    let chunk = vec![0x5au8; 4096];
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        if f.write_all(&chunk[..n]).is_err() {
            break;
        }
        left -= n as u64;
    }
}

fn no_space(err: &str) -> bool {
    err.contains("No space left on device") || err.contains("disk is full")
}

#[test]
fn a_restore_onto_a_full_target_fails_naming_it_and_a_rerun_restores_everything() {
    if local_only("a full local target file system") {
        return;
    }
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..6 {
        fs::write(src.join(format!("f{i}")), pseudo_random(700_000, i)).unwrap();
    }
    fs::write(src.join("d/small"), b"small").unwrap();
    let mut zeros = pseudo_random(100_000, 9);
    zeros.resize(600_000, 0);
    fs::write(src.join("d/zeros"), &zeros).unwrap();
    let id = backup_json(&repo, &[src.to_str().unwrap()])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mnt = dir.path().join("small");
    let Some(_m) = tmpfs(&mnt, "3m") else { return };
    for sparse in [false, true] {
        let t = mnt.join(format!("t{sparse}"));
        let mut args = vec!["restore", &id, "--target", t.to_str().unwrap()];
        if sparse {
            args.push("--sparse");
        }
        let (code, out, err) = run(cairn(&repo).args(&args));
        no_panic("restore", Some(code), &err);
        assert_eq!(code, 1, "sparse {sparse}: {out}\n{err}");
        assert!(
            no_space(&err),
            "sparse {sparse}: the cause is not named: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(!out.contains("restored"), "sparse {sparse}: {out}");
        // Room again: the same restore over what the failed one left restores everything.
        assert!(Command::new("mount")
            .args(["-o", "remount,size=24m"])
            .arg(&mnt)
            .status()
            .unwrap()
            .success());
        args.push("--overwrite");
        ok(cairn(&repo).args(&args));
        assert_same_tree(&src, &t.join("src"));
        fs::remove_dir_all(&t).unwrap();
        assert!(Command::new("mount")
            .args(["-o", "remount,size=3m"])
            .arg(&mnt)
            .status()
            .unwrap()
            .success());
    }
}

#[test]
fn wal_push_to_a_full_repository_fails_and_the_same_push_succeeds_once_there_is_room() {
    if local_only("a full local repository file system") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    let Some(_m) = tmpfs(&mnt, "32m") else { return };
    let repo = mnt.join("repo");
    ok(cairn(&repo).arg("init"));
    ok(cairn(&repo).args(["instance", "add", "db", "--path", "/tmp", "--wal"]));
    let filler = mnt.join("filler");
    // Free space from nothing to about one segment: the push fails at the pack, its index row, its index
    // object or its WAL object, in turn.
    let leaves = [
        0u64, 200, 900, 940, 960, 980, 990, 1000, 1010, 1020, 1040, 1080,
    ];
    for (n, leave_kib) in leaves.into_iter().enumerate() {
        let name = format!("0000000100000000000000{:02X}", n + 1);
        let seg = dir.path().join(&name);
        let content = wal_segment(&name, 1_000_000, 100 + n as u64, TEST_SYSID);
        fs::write(&seg, &content).unwrap();
        fill_leaving(&mnt, &filler, leave_kib * 1024);
        let push = || {
            cairn(&repo)
                .args(["wal-push", "--instance", "db"])
                .arg(&seg)
                .output()
                .unwrap()
        };
        let first = push();
        let err = String::from_utf8_lossy(&first.stderr).into_owned();
        no_panic("wal-push", first.status.code(), &err);
        fs::remove_file(&filler).unwrap();
        if !first.status.success() {
            assert_eq!(first.status.code(), Some(1), "{leave_kib} KiB: {err}");
            assert!(
                no_space(&err),
                "{leave_kib} KiB: the cause is not named: {err}"
            );
            let listed = ok(cairn(&repo).args(["wal-list"]));
            assert!(
                !listed.contains(&name),
                "{leave_kib} KiB: a failed push is listed: {listed}"
            );
            let (code, out, err) = run(cairn(&repo).arg("check"));
            assert_eq!(
                code, 0,
                "{leave_kib} KiB: check after a failed push:\n{out}\n{err}"
            );
            let again = push();
            assert!(
                again.status.success(),
                "{leave_kib} KiB: the same push after freeing space: {}",
                String::from_utf8_lossy(&again.stderr)
            );
        }
        let back = dir.path().join("back");
        ok(cairn(&repo)
            .args(["wal-fetch", "--instance", "db", &name])
            .arg(&back));
        assert!(
            fs::read(&back).unwrap() == content,
            "{leave_kib} KiB: fetched other bytes"
        );
    }
}

#[test]
fn an_in_place_restore_filling_the_file_store_names_its_safety_snapshot_which_restores_the_files() {
    if local_only("a full local file store") {
        return;
    }
    let (dir, repo) = new_repo();
    let mnt = dir.path().join("store");
    let Some(_m) = tmpfs(&mnt, "8m") else { return };
    let live = mnt.join("filestore");
    fs::create_dir_all(&live).unwrap();
    for i in 0..5 {
        fs::write(live.join(format!("big{i}")), pseudo_random(1_000_000, i)).unwrap();
    }
    ok(cairn(&repo)
        .args(["instance", "add", "app", "--priority", "manual", "--path"])
        .arg(&live));
    let v: serde_json::Value = serde_json::from_str(&ok(
        cairn(&repo).args(["--json", "instance", "backup", "app"])
    ))
    .unwrap();
    let id = v["snapshot_id"].as_str().unwrap().to_string();
    // The live files now: small, different, and one the snapshot does not hold.
    for i in 0..5 {
        fs::write(live.join(format!("big{i}")), format!("live {i}")).unwrap();
    }
    fs::write(live.join("extra"), b"extra").unwrap();
    let before = dir.path().join("before");
    ok(Command::new("cp").arg("-a").arg(&live).arg(&before));
    let filler = mnt.join("filler");
    fill_leaving(&mnt, &filler, 2 << 20);
    let (code, out, err) =
        run(cairn(&repo).args(["instance", "restore", "app", &id, "--in-place"]));
    no_panic("instance restore", Some(code), &err);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(no_space(&err), "the cause is not named: {err}");
    let hint = "to return to the state before this restore run: cairn instance restore app ";
    let at = err
        .find(hint)
        .unwrap_or_else(|| panic!("the safety snapshot is not named: {err}"));
    let safety = err[at + hint.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(err.contains(&format!("{safety} --in-place")), "{err}");
    fs::remove_file(&filler).unwrap();
    ok(cairn(&repo).args(["instance", "restore", "app", &safety, "--in-place"]));
    assert_same_tree(&before, &live);
}
