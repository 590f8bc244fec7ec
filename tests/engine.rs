//! End-to-end tests of the core engine through the real `cairn` binary: round trips with every kind of entry,
//! deduplication, streams, hostile input, corruption and index repair.

mod harness;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use harness::*;

fn snapshot_count(repo: &Path) -> usize {
    let out = ok(cairn(repo).args(["snapshots", "--json"]));
    serde_json::from_str::<Vec<serde_json::Value>>(&out)
        .unwrap()
        .len()
}

#[test]
fn rich_tree_round_trips_byte_for_byte_with_metadata() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    build_rich_tree(&src, 2500);
    let first = backup_json(&repo, &[src.to_str().unwrap()]);
    assert_eq!(first["partial"], false);
    assert!(first["files_new"].as_u64().unwrap() >= 2500);
    for key in [
        "snapshot_id",
        "files_new",
        "files_changed",
        "files_unmodified",
        "bytes_read",
        "bytes_added",
        "chunks_new",
        "duration_s",
    ] {
        assert!(first.get(key).is_some(), "backup --json lacks {key}");
    }
    let target = dir.path().join("restored");
    ok(cairn(&repo).args(["restore", "latest", "--target", target.to_str().unwrap()]));
    assert_same_tree(&src, &target.join("src"));

    // Unchanged: nothing is read again and (almost) nothing is stored.
    let second = backup_json(&repo, &[src.to_str().unwrap()]);
    assert_eq!(second["files_new"], 0);
    assert_eq!(second["files_changed"], 0);
    assert_eq!(second["bytes_read"], 0);
    assert!(
        second["bytes_added"].as_u64().unwrap() < 1024,
        "unchanged backup added {}",
        second["bytes_added"]
    );

    // --force re-reads every file but stores nothing new.
    let forced = backup_json(&repo, &["--force", src.to_str().unwrap()]);
    assert!(forced["bytes_read"].as_u64().unwrap() > 5_000_000);
    assert_eq!(forced["chunks_new"], 0);
    ok(cairn(&repo).arg("check"));
}

/// Regression: the walk recursed on rayon threads with 2 MiB stacks, and a tree 500 levels deep with a file
/// in each directory aborted the backup (stack overflow, exit 134, no snapshot): anyone able to write below
/// a backed-up path could stop every backup of it. 1,500 levels, three times that, must back up whole.
#[test]
fn a_tree_nested_1500_directories_deep_backs_up_and_restores() {
    let (dir, repo) = new_plaintext_repo();
    let src = dir.path().join("src");
    let mut level = src.clone();
    for i in 0..1500 {
        level.push("d");
        fs::create_dir_all(&level).unwrap();
        fs::write(level.join("f"), i.to_string()).unwrap();
    }
    let out = backup_json(&repo, &[src.to_str().unwrap()]);
    assert_eq!(out["partial"], false, "{out}");
    assert_eq!(out["files_new"], 1500);
    let target = dir.path().join("restored");
    ok(cairn(&repo).args(["restore", "latest", "--target", target.to_str().unwrap()]));
    assert_same_tree(&src, &target.join("src"));
}

#[test]
fn changed_file_is_detected_and_only_its_chunks_are_new() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    build_rich_tree(&src, 50);
    backup_json(&repo, &[src.to_str().unwrap()]);
    fs::write(src.join("docs/readme.txt"), b"changed content").unwrap();
    fs::write(src.join("new-file"), b"brand new").unwrap();
    let second = backup_json(&repo, &[src.to_str().unwrap()]);
    assert_eq!(second["files_new"], 1);
    assert_eq!(second["files_changed"], 2, "readme and its hard link");
    let id = second["snapshot_id"].as_str().unwrap();
    let target = dir.path().join("r");
    ok(cairn(&repo).args(["restore", &id[..8], "--target", target.to_str().unwrap()]));
    assert_same_tree(&src, &target.join("src"));
}

#[test]
fn stdin_stream_round_trips_and_dump_matches() {
    let (_dir, repo) = new_repo();
    let data = pseudo_random(3_000_000, 42);
    let mut child = cairn(&repo)
        .args(["backup", "--stdin", "--stdin-name", "db.dump", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["bytes_read"], 3_000_000);
    let dumped = cairn(&repo)
        .args(["dump", "latest", "db.dump"])
        .output()
        .unwrap();
    assert!(dumped.status.success());
    assert!(dumped.stdout == data, "dumped stream differs");
    let listed = ok(cairn(&repo).args(["snapshots", "--json"]));
    let list: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(list[0]["stream_names"], serde_json::json!(["db.dump"]));
    for key in ["id", "time", "instance", "tags", "paths", "stream_names"] {
        assert!(list[0].get(key).is_some(), "snapshots --json lacks {key}");
    }
}

#[test]
fn a_stream_read_twice_is_read_in_full_each_time() {
    // A stream has no mtime: the second backup must store the new content, never assume "unmodified".
    let (_dir, repo) = new_repo();
    for content in ["day one\n", "day two\n"] {
        ok(&mut stdin_backup(&repo, "s", &["printf", content]));
        let out = cairn(&repo).args(["dump", "latest", "s"]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), content);
    }
}

#[test]
fn failing_stdin_command_writes_no_snapshot() {
    let (_dir, repo) = new_repo();
    let err = fails(
        &mut stdin_backup(&repo, "x", &["sh", "-c", "echo partial output; exit 7"]),
        1,
    );
    assert!(err.contains("no snapshot"), "{err}");
    fails(&mut stdin_backup(&repo, "x", &["/nonexistent/cmd"]), 1);
    assert_eq!(snapshot_count(&repo), 0);
    ok(cairn(&repo).arg("check"));
}

#[test]
fn hostile_ids_and_paths_get_clear_errors() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    for _ in 0..2 {
        backup_json(&repo, &[src.to_str().unwrap()]);
    }
    let t = dir.path().join("t");
    let t = t.to_str().unwrap();
    assert!(
        fails(cairn(&repo).args(["restore", "ffffffff", "--target", t]), 1).contains("no snapshot")
    );
    assert!(
        fails(cairn(&repo).args(["restore", "../etc", "--target", t]), 1)
            .contains("not a snapshot id")
    );
    fails(cairn(&repo).args(["restore", "ab", "--target", t]), 1);
    fails(cairn(&repo).args(["ls", "latest", "no/such/path"]), 1);
    fails(cairn(&repo).args(["dump", "latest", "nothing"]), 1);
    let missing = dir.path().join("typo-repo");
    let err = fails(cairn(&missing).args(["backup", src.to_str().unwrap()]), 10);
    assert!(err.contains("cairn init"), "{err}");
    assert!(!missing.exists(), "a typo must not create a repository");
    fails(cairn(&repo).args(["backup", "/nonexistent/source"]), 1);
    assert_eq!(
        run(cairn(&repo).args(["restore", "latest"])).0,
        2,
        "usage errors exit 2"
    );
}

#[test]
fn ambiguous_prefix_is_an_error() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let mut ids = Vec::new();
    // Enough snapshots that two share a 4-digit prefix is unlikely; instead take the common prefix of two.
    for i in 0..40 {
        fs::write(src.join("f"), format!("{i}")).unwrap();
        ids.push(
            backup_json(&repo, &[src.to_str().unwrap()])["snapshot_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    ids.sort();
    let pair = ids
        .windows(2)
        .max_by_key(|w| {
            w[0].chars()
                .zip(w[1].chars())
                .take_while(|(a, b)| a == b)
                .count()
        })
        .unwrap();
    let common: String = pair[0]
        .chars()
        .zip(pair[1].chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    if common.len() >= 4 {
        assert!(fails(cairn(&repo).args(["ls", &common]), 1).contains("ambiguous"));
    }
    // A one-character prefix of 40 snapshots is either too short or ambiguous; never a silent pick.
    let short = &ids[0][..4];
    let (code, _, _) = run(cairn(&repo).args(["ls", short]));
    assert!(code == 0 || code == 1);
}

#[test]
fn restore_refuses_to_overwrite_unless_asked() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"original").unwrap();
    backup_json(&repo, &[src.to_str().unwrap()]);
    let target = dir.path().join("t");
    fs::create_dir_all(target.join("src")).unwrap();
    fs::write(target.join("src/f"), b"precious").unwrap();
    fails(
        cairn(&repo).args(["restore", "latest", "--target", target.to_str().unwrap()]),
        1,
    );
    assert_eq!(fs::read(target.join("src/f")).unwrap(), b"precious");
    ok(cairn(&repo).args([
        "restore",
        "latest",
        "--overwrite",
        "--target",
        target.to_str().unwrap(),
    ]));
    assert_eq!(fs::read(target.join("src/f")).unwrap(), b"original");
}

#[test]
fn restore_of_selected_paths_only() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    build_rich_tree(&src, 20);
    backup_json(&repo, &[src.to_str().unwrap()]);
    let target = dir.path().join("t");
    ok(cairn(&repo).args([
        "restore",
        "latest",
        "--path",
        "src/docs/nested",
        "--target",
        target.to_str().unwrap(),
    ]));
    assert!(target.join("src/docs/nested/deeper/big.bin").is_file());
    assert!(!target.join("src/docs/readme.txt").exists());
    assert!(!target.join("src/store").exists());
}

/// A name that is not UTF-8 (an old Latin-1 share, a file from another system) is selected by `--path`
/// and `dump` byte for byte, as the file system gives it, like any other.
#[test]
fn a_file_whose_name_is_not_utf8_is_restored_by_path_and_dumped() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    let latin1 = OsStr::from_bytes(b"caf\xe9");
    fs::create_dir_all(src.join(latin1)).unwrap();
    fs::write(
        src.join(latin1)
            .join(OsStr::from_bytes(b"r\xe9sum\xe9.txt")),
        b"the contents",
    )
    .unwrap();
    fs::write(src.join("other.txt"), b"not selected").unwrap();
    backup_json(&repo, &[src.to_str().unwrap()]);
    let target = dir.path().join("t");
    let selected = Path::new("src").join(latin1);
    ok(cairn(&repo)
        .args(["restore", "latest", "--path"])
        .arg(&selected)
        .arg("--target")
        .arg(&target));
    let restored = target
        .join(&selected)
        .join(OsStr::from_bytes(b"r\xe9sum\xe9.txt"));
    assert_eq!(fs::read(&restored).unwrap(), b"the contents");
    assert!(!target.join("src/other.txt").exists());
    let out = cairn(&repo)
        .args(["dump", "latest"])
        .arg(selected.join(OsStr::from_bytes(b"r\xe9sum\xe9.txt")))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"the contents");
}

/// `ls` prints every kind of entry as it always has, text and JSON alike (the listing is streamed now, not
/// collected); in JSON a name that is not UTF-8 keeps its lossy `path` and gains `path_bytes`, the path's
/// bytes in hex, which lead back to the real file.
#[test]
fn ls_prints_every_kind_of_entry_exactly_and_json_gives_the_bytes_of_a_non_utf8_name() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    let latin1 = OsStr::from_bytes(b"caf\xe9");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("a.txt"), b"hello\n").unwrap();
    fs::write(src.join(latin1), b"x").unwrap();
    std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();
    let fifo = std::ffi::CString::new(src.join("sub/fifo").as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    fs::write(src.join("sub/z.bin"), b"\0\x01").unwrap();
    for (p, mode) in [
        (src.clone(), 0o755),
        (src.join("a.txt"), 0o644),
        (src.join(latin1), 0o600),
        (src.join("sub"), 0o750),
        (src.join("sub/fifo"), 0o640),
        (src.join("sub/z.bin"), 0o444),
    ] {
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }
    let order = [
        "a.txt",
        "caf\u{e9}",
        "link",
        "sub/fifo",
        "sub/z.bin",
        "sub",
        "",
    ];
    for (i, rel) in order.iter().enumerate() {
        let p = match *rel {
            "caf\u{e9}" => src.join(latin1),
            _ => src.join(rel),
        };
        set_mtime(&p, 1_600_000_000 + i as i64, 0);
    }
    let made = backup_json(&repo, &[src.to_str().unwrap()]);
    let files = made["snapshot_id"].as_str().unwrap().to_string();

    let text = "\
d 755            0 src
- 644            6 src/a.txt
- 600            1 src/caf\u{fffd}
l 777            0 src/link
d 750            0 src/sub
p 640            0 src/sub/fifo
- 444            2 src/sub/z.bin
";
    assert_eq!(ok(cairn(&repo).args(["ls", "latest"])), text);
    let below: String = text.lines().skip(4).map(|l| format!("{l}\n")).collect();
    assert_eq!(ok(cairn(&repo).args(["ls", "latest", "src/sub/"])), below);

    let entry = |mode: u32, mtime: u32, path: &str, size: u32, kind: &str| {
        format!(
            "  {{\n    \"mode\": {mode},\n    \"mtime\": 16000000{mtime:02},\n    \"path\": \"{path}\",\n{}    \"size\": {size},\n    \"type\": \"{kind}\"\n  }}",
            match path {
                "src/caf\u{fffd}" => "    \"path_bytes\": \"7372632f636166e9\",\n",
                _ => "",
            }
        )
    };
    let entries = [
        entry(0o40755, 6, "src", 0, "dir"),
        entry(0o100644, 0, "src/a.txt", 6, "file"),
        entry(0o100600, 1, "src/caf\u{fffd}", 1, "file"),
        entry(0o120777, 2, "src/link", 0, "symlink"),
        entry(0o40750, 5, "src/sub", 0, "dir"),
        entry(0o10640, 3, "src/sub/fifo", 0, "special"),
        entry(0o100444, 4, "src/sub/z.bin", 2, "file"),
    ];
    let json = format!("[\n{}\n]\n", entries.join(",\n"));
    let listed = ok(cairn(&repo).args(["--json", "ls", "latest"]));
    assert_eq!(listed, json);
    let one = ok(cairn(&repo).args(["--json", "ls", "latest", "src/a.txt"]));
    assert_eq!(one, format!("[\n{}\n]\n", entries[1]));

    // `path_bytes` leads to the real name: the file restored under it, and dumped by it.
    let v: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    let odd: Vec<_> = v.iter().filter(|e| e.get("path_bytes").is_some()).collect();
    assert_eq!(odd.len(), 1, "{listed}");
    let bytes = hex::decode(odd[0]["path_bytes"].as_str().unwrap()).unwrap();
    let name = Path::new(OsStr::from_bytes(&bytes));
    assert_eq!(name, Path::new("src").join(latin1));
    assert_eq!(fs::read(dir.path().join(name)).unwrap(), b"x");
    let dumped = cairn(&repo)
        .args(["dump", "latest"])
        .arg(name)
        .output()
        .unwrap();
    assert!(dumped.status.success() && dumped.stdout == b"x");
    let one = cairn(&repo)
        .args(["ls", &files])
        .arg(name)
        .output()
        .unwrap();
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    assert_eq!(
        one.stdout,
        "- 600            1 src/caf\u{fffd}\n".as_bytes()
    );

    // Streams come first, the same way; a path that is not there prints nothing.
    let mut c = cairn(&repo);
    c.args(["backup", "--stdin", "--stdin-name", "db.dump"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"streamdata\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        ok(cairn(&repo).args(["ls", "latest"])),
        "s    -           11 [db.dump]\n"
    );
    assert_eq!(
        ok(cairn(&repo).args(["--json", "ls", "latest"])),
        "[\n  {\n    \"path\": \"db.dump\",\n    \"size\": 11,\n    \"type\": \"stream\"\n  }\n]\n"
    );
    for json in [false, true] {
        let mut c = cairn(&repo);
        if json {
            c.arg("--json");
        }
        let out = c.args(["ls", &files, "src/nope"]).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

fn first_pack(repo: &Path) -> std::path::PathBuf {
    let mut packs = obj_list(&repo.join("packs"));
    packs.sort_by_key(|(_, len)| std::cmp::Reverse(*len));
    packs.into_iter().next().expect("a pack").0
}

#[test]
fn flipped_byte_in_a_pack_fails_restore_naming_the_file() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("victim.bin"), pseudo_random(2_000_000, 5)).unwrap();
    backup_json(&repo, &[src.to_str().unwrap()]);
    let pack = first_pack(&repo);
    let mut bytes = obj_read(&pack);
    bytes[1000] ^= 0x01;
    obj_write(&pack, &bytes);
    let target = dir.path().join("t");
    let err = fails(
        cairn(&repo).args(["restore", "latest", "--target", target.to_str().unwrap()]),
        1,
    );
    assert!(
        err.contains("victim.bin"),
        "error does not name the file: {err}"
    );
    assert!(
        !target.join("src/victim.bin").exists(),
        "a corrupt file must not be left behind"
    );
    let (code, out, _) = run(cairn(&repo).args(["check", "--read-data"]));
    assert_eq!(code, 1);
    assert!(
        out.contains("victim.bin"),
        "check does not name the affected file: {out}"
    );
}

/// Backs up a rich tree (returned: `dir/src`) and a stream `s` (`seq 1 100000`) into `repo`: two snapshots
/// of the two kinds, for the tests that rebuild an index.
fn tree_and_stream(dir: &Path, repo: &Path) -> PathBuf {
    let src = dir.join("src");
    build_rich_tree(&src, 100);
    backup_json(repo, &[src.to_str().unwrap()]);
    ok(&mut stdin_backup(repo, "s", &["seq", "1", "100000"]));
    src
}

#[test]
fn deleted_index_is_rebuilt_by_repair() {
    let (dir, repo) = new_repo();
    tree_and_stream(dir.path(), &repo);
    let remove_index = || remove_index_cache(&repo);
    // The index objects in the repository rebuild it on the next open.
    remove_index();
    assert_eq!(snapshot_count(&repo), 2);
    // A repository without index objects (written before they existed, so plaintext) needs `repair index`.
    let (dir, repo) = new_plaintext_repo();
    let src = tree_and_stream(dir.path(), &repo);
    let remove_index = || {
        for f in ["index.sqlite", "index.sqlite-wal", "index.sqlite-shm"] {
            let _ = fs::remove_file(repo.join(f));
        }
    };
    remove_index();
    for (p, _) in obj_list(&repo.join("index")) {
        obj_delete(&p);
    }
    if is_s3(&repo) {
        // An object-store cache is always brought up to date from the pack listing too (no S3 repository
        // predates index objects): the packs' trailers rebuild it at once.
        assert_eq!(snapshot_count(&repo), 2);
    } else {
        let err = fails(cairn(&repo).arg("snapshots"), 1);
        assert!(err.contains("repair index"), "{err}");
    }
    ok(cairn(&repo).args(["repair", "index"]));
    assert_eq!(snapshot_count(&repo), 2);
    ok(cairn(&repo).args(["check", "--read-data"]));
    let dumped = cairn(&repo).args(["dump", "latest", "s"]).output().unwrap();
    assert_eq!(
        dumped.stdout.len(),
        (1..=100000)
            .map(|i: u32| i.to_string().len() + 1)
            .sum::<usize>()
    );
    let first = ok(cairn(&repo).args(["snapshots", "--json"]));
    let list: Vec<serde_json::Value> = serde_json::from_str(&first).unwrap();
    let tree_snap = list
        .iter()
        .find(|s| !s["paths"].as_array().unwrap().is_empty())
        .unwrap();
    let t2 = dir.path().join("t2");
    ok(cairn(&repo).args([
        "restore",
        tree_snap["id"].as_str().unwrap(),
        "--target",
        t2.to_str().unwrap(),
    ]));
    assert_same_tree(&src, &t2.join("src"));
}

#[test]
fn corrupted_index_file_is_a_clear_error_and_repairable() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    build_rich_tree(&src, 10);
    backup_json(&repo, &[src.to_str().unwrap()]);
    // Fold the log so the damage below hits the only copy.
    let index = index_file(&repo);
    let _ = fs::remove_file(index.with_extension("sqlite-wal"));
    fs::write(index, b"this is not a database at all, just garbage bytes").unwrap();
    fails(cairn(&repo).arg("snapshots"), 1);
    ok(cairn(&repo).args(["repair", "index"]));
    assert_eq!(snapshot_count(&repo), 1);
    let t = dir.path().join("t");
    ok(cairn(&repo).args(["restore", "latest", "--target", t.to_str().unwrap()]));
    assert_same_tree(&src, &t.join("src"));
}

#[test]
fn not_a_repository_is_a_clear_error() {
    if local_only("about directories given as --repo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for args in [&["snapshots"][..], &["check"], &["ls", "latest"]] {
        let err = fails(cairn(dir.path()).args(args), 10);
        assert!(err.contains("not a cairn repository"), "{err}");
    }
    ok(cairn(&dir.path().join("r")).arg("init"));
    fails(cairn(&dir.path().join("r")).arg("init"), 1);
}

#[test]
fn default_repository_is_created_on_first_backup() {
    if local_only("the default repository is a directory") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    let out = harness::with_password(&mut std::process::Command::new(cairn_bin()))
        .env_remove("CAIRN_REPO")
        .env("XDG_DATA_HOME", dir.path().join("xdg"))
        .args(["backup", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("creating the default repository"));
    assert!(dir.path().join("xdg/cairn/repo/config").is_file());
}

#[test]
fn init_accepts_a_relative_one_component_path() {
    if local_only("about relative directory paths") {
        return;
    }
    // Regression: `cairn --repo q init` created the repository, then failed fsyncing its parent "".
    let dir = tempfile::tempdir().unwrap();
    ok(cairn(Path::new("q")).current_dir(dir.path()).arg("init"));
    assert!(dir.path().join("q/config").is_file());
}

#[test]
fn init_sets_compression_levels_and_rejects_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_in(dir.path());
    ok(cairn(&repo).args([
        "init",
        "--compression-level",
        "6",
        "--stream-compression-level",
        "2",
    ]));
    let config: serde_json::Value =
        serde_json::from_slice(&obj_read(&repo.join("config"))).unwrap();
    assert_eq!(config["compression_level"], 6);
    assert_eq!(config["stream_compression_level"], 2);
    // The levels are used: a compressible stream still round-trips.
    let data = b"row,".repeat(100_000);
    let mut child = cairn(&repo)
        .args(["backup", "--stdin", "--stdin-name", "s"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    assert!(child.wait().unwrap().success());
    let dumped = cairn(&repo).args(["dump", "latest", "s"]).output().unwrap();
    assert!(dumped.stdout == data);

    let other = repo_in(&dir.path().join("other"));
    // A usage error (clap's message, exit 2), and no repository is created.
    let (code, _, err) = run(cairn(&other).args(["init", "--compression-level", "0"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--compression-level"), "{err}");
    assert!(obj_list(&other).is_empty(), "nothing written");
}

#[test]
fn limit_upload_and_limit_download_pace_backup_and_restore() {
    use std::time::{Duration, Instant};
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big"), pseudo_random(2 << 20, 12)).unwrap();
    let t = Instant::now();
    ok(cairn(&repo).args(["--limit-upload", "512", "backup", src.to_str().unwrap()]));
    let up = t.elapsed();
    let target = dir.path().join("t");
    let t = Instant::now();
    ok(cairn(&repo).args([
        "restore",
        "latest",
        "--limit-download",
        "512",
        "--target",
        target.to_str().unwrap(),
    ]));
    let down = t.elapsed();
    assert_same_tree(&src, &target.join("src"));
    // 2 MiB (incompressible) at 512 KiB/s: about 4 s each way.
    for (what, d) in [("backup", up), ("restore", down)] {
        assert!(
            d >= Duration::from_millis(3500) && d <= Duration::from_secs(8),
            "{what} of 2 MiB at 512 KiB/s took {d:?}"
        );
    }
    let (code, _, err) = run(cairn(&repo).args(["--limit-download", "0", "snapshots"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--limit-download"), "{err}");
}
