//! Crash and concurrency tests of backup: a real `cairn backup` process killed with SIGKILL at many points, and
//! several backups running at once. Afterwards the repository must pass `check`, hold no partial snapshot,
//! restore every earlier snapshot exactly, and let the next backup reuse what was already stored.

mod harness;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use harness::*;

fn snapshot_ids(repo: &Path) -> Vec<String> {
    let out = ok(cairn(repo).args(["snapshots", "--json"]));
    let v: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    v.iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn build_corpus(root: &Path, files: usize, seed: u64) {
    for i in 0..files {
        let dir = root.join(format!("d{:02}", i % 16));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join(format!("f{i}")),
            pseudo_random(200_000 + (i * 3331) % 600_000, seed + i as u64),
        )
        .unwrap();
    }
}

/// Small packs, so that a backup flushes many packs and a kill lands between (and inside) pack writes.
fn use_small_packs(repo: &Path) {
    set_pack_size(repo, 1024 * 1024);
}

#[test]
fn backup_killed_at_any_point_leaves_a_valid_repository() {
    let (dir, repo) = new_repo();
    use_small_packs(&repo);
    let base = dir.path().join("base");
    build_corpus(&base, 20, 1);
    let base_id = backup_json(&repo, &[base.to_str().unwrap()])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let big = dir.path().join("big");
    build_corpus(&big, 60, 1000);
    // A stream trickling in over about 1.5 s keeps the backup busy, so kills land mid-write. It must outlast
    // the last kill (1.2 s): a snapshot is written only after its stream ends, so a backup killed later could
    // legitimately have written its snapshot before dying, and the count below would be wrong.
    let blob = dir.path().join("stream.bin");
    fs::write(&blob, pseudo_random(24 << 20, 9)).unwrap();
    let producer = format!(
        "for i in $(seq 0 23); do dd if={} bs=1M skip=$i count=1 status=none; sleep 0.06; done",
        blob.display()
    );
    let backup_args = [
        "backup",
        "--quiet",
        "--stdin-from-command",
        "--stdin-name",
        "slow",
        big.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &producer,
    ];
    let mut completed = 0;
    for delay_ms in [5u64, 30, 80, 150, 250, 400, 550, 700, 900, 1200] {
        let mut child = cairn(&repo).args(backup_args).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        if child.wait().unwrap().success() {
            completed += 1;
        }
        let (code, out, err) = run(cairn(&repo).arg("check"));
        assert_eq!(code, 0, "check after kill at {delay_ms} ms:\n{out}\n{err}");
    }
    assert!(
        completed < 5,
        "the kills came too late to test anything ({completed} runs completed)"
    );
    let ids = snapshot_ids(&repo);
    assert_eq!(
        ids.len(),
        1 + completed,
        "a killed backup must not leave a snapshot"
    );
    // The earlier snapshot restores exactly.
    let target = dir.path().join("restored");
    ok(cairn(&repo).args(["restore", &base_id, "--target", target.to_str().unwrap()]));
    assert_same_tree(&base, &target.join("base"));
    // The next backup completes and reuses what the killed runs stored durably.
    let out = ok(cairn(&repo).args(["--json"]).args(backup_args.map(|a| {
        if a == "--quiet" {
            "--force"
        } else {
            a
        }
    })));
    let after: serde_json::Value = serde_json::from_str(&out).unwrap();
    let read = after["bytes_read"].as_u64().unwrap();
    let added = after["bytes_added"].as_u64().unwrap();
    assert!(
        added < read / 2,
        "killed runs' packs were not reused: added {added} of {read}"
    );
    let t2 = dir.path().join("r2");
    ok(cairn(&repo).args(["restore", "latest", "--target", t2.to_str().unwrap()]));
    assert_same_tree(&big, &t2.join("big"));
    let dumped = cairn(&repo)
        .args(["dump", "latest", "slow"])
        .output()
        .unwrap();
    assert!(
        dumped.stdout == fs::read(&blob).unwrap(),
        "stream differs after kills"
    );
    ok(cairn(&repo).args(["check", "--read-data"]));
    // Prune clears what the killed runs left half written (temporary pack files) and the repository stays whole.
    ok(cairn(&repo).arg("prune"));
    let leftovers: Vec<_> = obj_list(&repo)
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tmp-")
        })
        // A temporary lock file is only removed once a minute old: another process may be writing it.
        .filter(|p| !p.starts_with(repo.join("locks")))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files after prune: {leftovers:?}"
    );
    ok(cairn(&repo).args(["check", "--read-data"]));
}

#[test]
fn concurrent_backups_all_succeed_and_restore() {
    let (dir, repo) = new_repo();
    let mut sources = Vec::new();
    for k in 0..4 {
        let src = dir.path().join(format!("src{k}"));
        // Half of each corpus is shared with the others: concurrent writers race to store the same chunks.
        build_corpus(&src.join("shared"), 8, 500);
        build_corpus(&src.join("own"), 8, 900 + k * 100);
        sources.push(src);
    }
    let children: Vec<_> = sources
        .iter()
        .map(|s| {
            cairn(&repo)
                .args(["backup", "--quiet", "--json", s.to_str().unwrap()])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ok(cairn(&repo).args(["check", "--read-data"]));
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&ok(cairn(&repo).args(["snapshots", "--json"]))).unwrap();
    assert_eq!(list.len(), 4);
    for s in &list {
        let path = std::path::PathBuf::from(s["paths"][0].as_str().unwrap());
        let target = dir
            .path()
            .join(format!("r-{}", &s["id"].as_str().unwrap()[..8]));
        ok(cairn(&repo).args([
            "restore",
            s["id"].as_str().unwrap(),
            "--target",
            target.to_str().unwrap(),
        ]));
        assert_same_tree(&path, &target.join(path.file_name().unwrap()));
    }
}

#[test]
fn unreadable_source_files_make_a_partial_snapshot_with_exit_3() {
    if local_only("about unreadable source files; the repository's kind plays no part") {
        return;
    }
    // Root reads everything, so the backup runs as `nobody` over a file it may not read.
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("readable"), b"fine").unwrap();
    fs::write(src.join("secret"), b"no").unwrap();
    fs::set_permissions(src.join("secret"), fs::Permissions::from_mode(0o000)).unwrap();
    let repo = dir.path().join("repo");
    let as_nobody = |args: &[&str]| cairn_as_nobody_in(dir.path(), &repo, args);
    if unsafe { libc::geteuid() } != 0 {
        // Not root: the file is unreadable to us as well.
        ok(cairn(&repo).arg("init"));
        let (code, _, err) = run(cairn(&repo).args(["backup", src.to_str().unwrap()]));
        assert_eq!(code, 3, "{err}");
        assert!(err.contains("secret"));
        return;
    }
    ok(&mut as_nobody(&["init"]));
    let (code, out, err) = run(&mut as_nobody(&["backup", "--json", src.to_str().unwrap()]));
    assert_eq!(code, 3, "stdout {out}\nstderr {err}");
    assert!(
        err.contains("secret"),
        "the unreadable file is not named: {err}"
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["partial"], true);
    let listed = ok(&mut as_nobody(&["snapshots", "--json"]));
    assert!(listed.contains("\"partial\": true"));
    let target = dir.path().join("t");
    ok(&mut as_nobody(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
    ]));
    assert_eq!(fs::read(target.join("src/readable")).unwrap(), b"fine");
    assert!(!target.join("src/secret").exists());
}

#[test]
fn a_file_written_while_it_is_read_is_named_and_makes_the_snapshot_partial() {
    if local_only("about source files changing under a backup; the repository's kind plays no part")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let growing = src.join("growing.log");
    let start: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(&growing, &start).unwrap();
    fs::write(src.join("steady"), b"unchanged").unwrap();
    let repo = dir.path().join("repo");
    ok(cairn(&repo).arg("init"));
    // A log written to all along the backup: what is stored is neither the file at the start nor at the end.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), growing.clone());
        std::thread::spawn(move || {
            let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(&[b'x'; 4096]).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let (code, out, err) = run(cairn(&repo).args(["backup", "--json", src.to_str().unwrap()]));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(code, 3, "stdout {out}\nstderr {err}");
    assert!(
        err.contains("growing.log") && err.contains("changed while it was read"),
        "the changing file is not named: {err}"
    );
    assert!(!err.contains("steady"), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["partial"], true);
    // Once it is left alone the next backup reads it again (its recorded times are those before the
    // writes) and stores it whole.
    let (code, _, err) = run(cairn(&repo).args(["backup", src.to_str().unwrap()]));
    assert_eq!(code, 0, "{err}");
    let target = dir.path().join("t");
    ok(cairn(&repo).args(["restore", "latest", "--target", target.to_str().unwrap()]));
    assert_same_tree(&src, &target.join("src"));
}
