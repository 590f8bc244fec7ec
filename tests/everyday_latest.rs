//! Issue 15: `latest` means the newest snapshot that holds what the command asks for (restore, dump, export,
//! ls), `show` and `export` take `--instance`, and `ls` lists streams too.

mod harness;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use harness::*;

fn backup_stream(repo: &Path, name: &str, data: &[u8], extra: &[&str]) -> String {
    let mut child = cairn(repo)
        .args(["--json", "backup", "--stdin", "--stdin-name", name])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["snapshot_id"].as_str().unwrap().to_string()
}

#[test]
fn latest_picks_the_newest_snapshot_that_holds_what_is_asked() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    build_rich_tree(&src, 10);
    let s = src.to_str().unwrap();
    let files = backup_json(&repo, &[s, "--time", "2026-01-01 10:00"]);
    let files_id = files["snapshot_id"].as_str().unwrap().to_string();
    let other = dir.path().join("other");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("only-here.txt"), b"second tree").unwrap();
    backup_json(
        &repo,
        &[other.to_str().unwrap(), "--time", "2026-01-01 11:00"],
    );
    // The newest snapshot holds only a stream.
    let data = pseudo_random(100_000, 7);
    let stream_id = backup_stream(&repo, "db.dump", &data, &["--time", "2026-01-01 12:00"]);

    // restore latest --path src: the newest snapshot holding src, two snapshots back.
    let t = dir.path().join("t1");
    let out = ok(cairn(&repo)
        .args(["--json", "restore", "latest", "--path", "src", "--target"])
        .arg(&t));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["snapshot_id"], files_id.as_str());
    assert_same_tree(&src, &t.join("src"));
    // restore latest (the whole tree): the newest snapshot with a file tree.
    let t = dir.path().join("t2");
    ok(cairn(&repo).args(["restore", "latest", "--target"]).arg(&t));
    assert_eq!(
        fs::read(t.join("other/only-here.txt")).unwrap(),
        b"second tree"
    );
    // dump latest NAME: a stream, or a file of the tree, from the newest snapshot holding it.
    let dumped = harness::with_password(&mut std::process::Command::new(cairn_bin()))
        .env("CAIRN_REPO", &repo)
        .args(["dump", "latest", "db.dump"])
        .output()
        .unwrap();
    assert_eq!(dumped.stdout, data);
    let f = "other/only-here.txt";
    let dumped = cairn(&repo).args(["dump", "latest", f]).output().unwrap();
    assert!(
        dumped.status.success(),
        "{}",
        String::from_utf8_lossy(&dumped.stderr)
    );
    assert_eq!(dumped.stdout, b"second tree");
    // Nothing holds it: a clear error naming what was asked.
    let err = fails(cairn(&repo).args(["dump", "latest", "nope"]), 1);
    assert!(err.contains("nope"), "{err}");
    // export --format zip latest: the newest snapshot (the Odoo formats' `latest` needing a dump is in
    // tests/odoo_export.rs, with a real one).
    let z = cairn(&repo)
        .args(["export", "latest", "--format", "zip"])
        .output()
        .unwrap();
    assert!(z.status.success());
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(z.stdout)).unwrap();
    assert!(zip.by_name("db.dump").is_ok());
    // An id is taken as given, even if it lacks what was asked.
    fails(
        cairn(&repo)
            .args(["restore", &stream_id[..8], "--target"])
            .arg(dir.path().join("t3")),
        1,
    );

    // ls lists streams too (the stream-only snapshot, and by name).
    let out = ok(cairn(&repo).args(["ls", "latest"]));
    assert!(out.contains("[db.dump]") && out.contains("100000"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&ok(cairn(&repo).args(["--json", "ls", &stream_id[..8]]))).unwrap();
    assert_eq!(v[0]["type"], "stream");
    assert_eq!(v[0]["path"], "db.dump");
    assert_eq!(v[0]["size"], 100_000);
}

#[test]
fn show_and_export_take_instance() {
    let (dir, repo) = new_repo();
    let a = dir.path().join("a");
    fs::create_dir_all(&a).unwrap();
    fs::write(a.join("f"), b"instance a").unwrap();
    let b = dir.path().join("b");
    fs::create_dir_all(&b).unwrap();
    fs::write(b.join("f"), b"instance b").unwrap();
    let ida = backup_json(
        &repo,
        &[
            "--instance",
            "alpha",
            a.to_str().unwrap(),
            "--time",
            "2026-01-01 10:00",
        ],
    );
    backup_json(
        &repo,
        &[
            "--instance",
            "beta",
            b.to_str().unwrap(),
            "--time",
            "2026-01-01 11:00",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&ok(cairn(&repo).args([
        "--json",
        "show",
        "latest",
        "--instance",
        "alpha",
    ])))
    .unwrap();
    assert_eq!(v["id"], ida["snapshot_id"]);
    let out = cairn(&repo)
        .args(["export", "latest", "--instance", "alpha", "--format", "tar"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut t = tar::Archive::new(std::io::Cursor::new(out.stdout));
    let mut found = Vec::new();
    for e in t.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().ends_with("f") {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            found.push(s);
        }
    }
    assert_eq!(found, ["instance a"]);
}

#[test]
fn instance_restore_latest_picks_the_newest_snapshot_holding_files() {
    let (dir, repo) = new_repo();
    let data = dir.path().join("files");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("a"), b"the files").unwrap();
    ok(cairn(&repo)
        .args(["instance", "add", "app", "--priority", "manual", "--path"])
        .arg(&data));
    ok(cairn(&repo).args(["instance", "backup", "app", "--time", "2026-01-01 10:00"]));
    // A newer snapshot of the instance that holds only a stream (a database, say).
    backup_stream(
        &repo,
        "app.dump",
        b"dump",
        &["--instance", "app", "--time", "2026-01-02 10:00"],
    );
    for extra in [&[][..], &["--at", "2026-01-03 00:00"]] {
        let t = dir.path().join(format!("t{}", extra.len()));
        ok(cairn(&repo)
            .args(["instance", "restore", "app", "--target"])
            .arg(&t)
            .args(extra));
        assert_eq!(
            fs::read(t.join("files/a")).unwrap(),
            b"the files",
            "{extra:?}"
        );
    }
}
