//! Choosing what to back up (issue 15): exclude patterns with restic's semantics, tag files, instance excludes
//! and `--one-file-system`, through the real binary.

mod harness;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use harness::*;

/// Makes every directory of `copy` carry the mtime of the same directory in `source` (deleting entries from
/// the copy changed them).
fn copy_dir_mtimes(source: &Path, copy: &Path) {
    for e in fs::read_dir(copy).unwrap() {
        let p = e.unwrap().path();
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            copy_dir_mtimes(&source.join(p.file_name().unwrap()), &p);
        }
    }
    let md = fs::symlink_metadata(source).unwrap();
    set_mtime(copy, md.mtime(), md.mtime_nsec());
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn ls_paths(repo: &Path, snap: &str) -> Vec<String> {
    let out = ok(cairn(repo).args(["ls", "--json", snap]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn excluded_tree_round_trips_without_its_excluded_parts() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    build_rich_tree(&src, 50);
    write(&src, "a.tmp", b"tmp at the top");
    write(&src, "docs/nested/b.tmp", b"tmp deep down");
    write(&src, "docs/b.tmpx", b"not a tmp file");
    write(&src, "deep/x/cache/junk", b"a cache dir at depth");
    write(&src, "logs/app.log", b"log");
    write(&src, "logs/keep.log", b"re-included");
    write(&src, "top-only", b"anchored: excluded");
    write(&src, "docs/top-only", b"anchored elsewhere: kept");
    write(&src, "Photo.JPG", b"case-insensitive");
    write(&src, "tagged/.nobackup", b"");
    write(&src, "tagged/big", b"left out by the tag");
    write(&src, "tagged/sub/more", b"left out by the tag");
    let sig = b"Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n";
    write(&src, "thumbs/CACHEDIR.TAG", sig);
    write(&src, "thumbs/t1", b"cached");
    write(
        &src,
        "fake-cache/CACHEDIR.TAG",
        b"Signature: not the standard one",
    );
    write(&src, "fake-cache/data", b"kept: the tag is not valid");
    let exclude_file = dir.path().join("excludes.txt");
    fs::write(&exclude_file, "# comment\n\n/top-only\n  cache  \n").unwrap();

    let v = backup_json(
        &repo,
        &[
            "--exclude",
            "*.tmp",
            "--exclude",
            "logs",
            "--exclude",
            "!logs/keep.log",
            "--iexclude",
            "*.jpg",
            "--exclude-file",
            exclude_file.to_str().unwrap(),
            "--exclude-if-present",
            ".nobackup",
            "--exclude-caches",
            src.to_str().unwrap(),
        ],
    );
    let reported: Vec<&str> = v["excluded"]["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let mut want = vec![
        "src/Photo.JPG",
        "src/a.tmp",
        "src/deep/x/cache",
        "src/docs/nested/b.tmp",
        "src/logs",
        "src/tagged/big",
        "src/tagged/sub",
        "src/thumbs/t1",
        "src/top-only",
    ];
    let mut got = reported.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{v}");
    assert_eq!(v["excluded"]["count"], want.len(), "{v}");

    let snap = v["snapshot_id"].as_str().unwrap();
    let show: serde_json::Value =
        serde_json::from_str(&ok(cairn(&repo).args(["show", "--json", snap]))).unwrap();
    assert_eq!(
        show["metadata"]["excludes"]["exclude"],
        serde_json::json!(["*.tmp", "logs", "!logs/keep.log"]),
        "the snapshot records what it leaves out"
    );

    // The expected tree: the source without the excluded parts, everything else identical.
    let expected = dir.path().join("expected");
    assert!(Command::new("cp")
        .args(["-a", src.to_str().unwrap(), expected.to_str().unwrap()])
        .status()
        .unwrap()
        .success());
    for rel in [
        "Photo.JPG",
        "a.tmp",
        "docs/nested/b.tmp",
        "deep/x/cache",
        "logs/app.log",
        "tagged/big",
        "tagged/sub",
        "thumbs/t1",
        "top-only",
    ] {
        let p = expected.join(rel);
        if p.is_dir() {
            fs::remove_dir_all(p).unwrap();
        } else {
            fs::remove_file(p).unwrap();
        }
    }
    copy_dir_mtimes(&src, &expected);

    let target = dir.path().join("restored");
    ok(cairn(&repo).args(["restore", snap, "--target", target.to_str().unwrap()]));
    assert_same_tree(&expected, &target.join("src"));
    assert!(target.join("src/logs/keep.log").is_file(), "re-included");
    assert!(
        target.join("src/tagged/.nobackup").is_file(),
        "the tag is kept"
    );
}

#[test]
fn exclude_patterns_anchor_at_the_backup_path_the_snapshot_path_or_the_absolute_path() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("app");
    for rel in ["a/x", "b/x", "c/x", "d/x", "sub/a/x"] {
        write(&src, rel, rel.as_bytes());
    }
    let abs_c = src.join("c");
    let v = backup_json(
        &repo,
        &[
            "--exclude",
            "/a",
            "--exclude",
            "/app/b",
            "--exclude",
            abs_c.to_str().unwrap(),
            "--exclude",
            "d/**",
            src.to_str().unwrap(),
        ],
    );
    let paths = ls_paths(&repo, v["snapshot_id"].as_str().unwrap());
    assert_eq!(
        paths,
        ["app", "app/d", "app/sub", "app/sub/a", "app/sub/a/x"],
        "{v}"
    );
}

#[test]
fn bad_exclude_options_fail_before_anything_is_written() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    write(&src, "f", b"x");
    for args in [
        vec!["--exclude", "a[b"],
        vec!["--exclude", "!"],
        vec!["--exclude-if-present", "a/b"],
        vec!["--exclude-file", "/nonexistent/excludes"],
    ] {
        let err = fails(
            cairn(&repo)
                .arg("backup")
                .args(&args)
                .arg(src.to_str().unwrap()),
            1,
        );
        assert!(
            err.contains("exclude") || err.contains("/nonexistent/excludes"),
            "{args:?}: {err}"
        );
    }
    let out = ok(cairn(&repo).args(["snapshots", "--json"]));
    assert_eq!(out.trim(), "[]");
}

#[test]
fn instance_excludes_are_stored_shown_and_applied() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("fs");
    write(&src, "keep/a", b"a");
    write(&src, "sessions/s1", b"session");
    write(&src, "b.tmp", b"tmp");
    write(&src, "CACHE.txt", b"case");
    ok(cairn(&repo).args([
        "instance",
        "add",
        "odoo",
        "--priority",
        "manual",
        "--path",
        src.to_str().unwrap(),
        "--exclude",
        "sessions",
        "--exclude",
        "*.tmp",
        "--iexclude",
        "cache.*",
    ]));
    let show: serde_json::Value = serde_json::from_str(&ok(
        cairn(&repo).args(["instance", "show", "odoo", "--json"])
    ))
    .unwrap();
    assert_eq!(
        show["excludes"],
        serde_json::json!({"exclude": ["sessions", "*.tmp"], "iexclude": ["cache.*"]})
    );
    let v: serde_json::Value = serde_json::from_str(&ok(
        cairn(&repo).args(["instance", "backup", "odoo", "--json"])
    ))
    .unwrap();
    let paths = ls_paths(&repo, v["snapshot_id"].as_str().unwrap());
    assert_eq!(paths, ["fs", "fs/keep", "fs/keep/a"]);

    // `set` with exclude flags replaces them; --clear-excludes removes them.
    ok(cairn(&repo).args(["instance", "set", "odoo", "--exclude", "keep"]));
    let show: serde_json::Value = serde_json::from_str(&ok(
        cairn(&repo).args(["instance", "show", "odoo", "--json"])
    ))
    .unwrap();
    assert_eq!(show["excludes"], serde_json::json!({"exclude": ["keep"]}));
    ok(cairn(&repo).args(["instance", "set", "odoo", "--clear-excludes"]));
    let show: serde_json::Value = serde_json::from_str(&ok(
        cairn(&repo).args(["instance", "show", "odoo", "--json"])
    ))
    .unwrap();
    assert!(show.get("excludes").is_none(), "{show}");
    fails(
        cairn(&repo).args(["instance", "set", "odoo", "--exclude", "a[b"]),
        1,
    );
    fails(
        cairn(&repo).args(["instance", "set", "odoo", "--exclude-file", "rel.txt"]),
        1,
    );
}

#[test]
fn one_file_system_keeps_mount_points_as_empty_directories() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    write(&src, "here", b"same file system");
    let mnt = src.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "cairn-test", mnt.to_str().unwrap()])
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (needs root and mount rights)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&mnt);
    write(&mnt, "other/file", b"another file system");

    let v = backup_json(&repo, &["-x", src.to_str().unwrap()]);
    assert_eq!(
        ls_paths(&repo, v["snapshot_id"].as_str().unwrap()),
        ["src", "src/here", "src/mnt"]
    );
    assert_eq!(
        v["excluded"]["paths"],
        serde_json::json!(["src/mnt (other file system)"])
    );
    let v = backup_json(&repo, &[src.to_str().unwrap()]);
    assert_eq!(
        ls_paths(&repo, v["snapshot_id"].as_str().unwrap()),
        [
            "src",
            "src/here",
            "src/mnt",
            "src/mnt/other",
            "src/mnt/other/file"
        ]
    );
}
