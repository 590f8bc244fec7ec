//! `cairn diff` (issue 15): files added, removed and changed (content and metadata), streams, and per-table
//! row-count differences of a recorded database, through the real binary.

mod harness;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use harness::pg::{psql, with_pg, TempDb};
use harness::*;
use serde_json::{json, Value};

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

/// Directory mtimes pinned, so that only the changes a test makes show up.
fn pin_dirs(src: &Path) {
    for d in ["", "dir", "gone-dir"] {
        let p = src.join(d);
        if p.is_dir() {
            set_mtime(&p, 1_700_000_000, 0);
        }
    }
    set_mtime(&src.join("link"), 1_700_000_000, 0);
}

fn diff_json(repo: &Path, a: &str, b: &str) -> Value {
    serde_json::from_str(&ok(cairn(repo).args(["diff", "--json", a, b]))).unwrap()
}

fn paths(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect()
}

#[test]
fn diff_reports_added_removed_changed_files_metadata_and_streams() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    write(&src, "edited", b"version one");
    write(&src, "removed", b"bye");
    write(&src, "dir/chmodded", b"same bytes");
    write(&src, "dir/touched", b"same bytes too");
    write(&src, "gone-dir/a", b"a");
    write(&src, "becomes-dir", b"a file first");
    symlink("old-target", src.join("link")).unwrap();
    // A large unchanged subtree: skipped by id, never read.
    for i in 0..200 {
        write(
            &src,
            &format!("store/{:02}/f{i}", i % 20),
            &pseudo_random(100, i),
        );
    }
    set_mtime(&src.join("dir/touched"), 1_600_000_000, 1);
    pin_dirs(&src);
    // A backup of the tree and of a stream db.dump of `dump`.
    let backup_with_dump = |dump: &str| {
        let src = src.to_str().unwrap();
        let args = [
            src,
            "--stdin-from-command",
            "--stdin-name",
            "db.dump",
            "--",
            "printf",
            dump,
        ];
        backup_json(&repo, &args)
    };
    let s1 = backup_with_dump("dump one");

    fs::write(src.join("edited"), b"version two, longer").unwrap();
    fs::remove_file(src.join("removed")).unwrap();
    write(&src, "dir/new", b"new file");
    fs::set_permissions(src.join("dir/chmodded"), fs::Permissions::from_mode(0o600)).unwrap();
    set_mtime(&src.join("dir/touched"), 1_600_000_000, 2);
    fs::remove_dir_all(src.join("gone-dir")).unwrap();
    fs::remove_file(src.join("becomes-dir")).unwrap();
    write(&src, "becomes-dir/inside", b"now a directory");
    fs::remove_file(src.join("link")).unwrap();
    symlink("new-target", src.join("link")).unwrap();
    pin_dirs(&src);
    let s2 = backup_with_dump("dump two!");
    let (id1, id2) = (
        s1["snapshot_id"].as_str().unwrap(),
        s2["snapshot_id"].as_str().unwrap(),
    );
    let d = diff_json(&repo, id1, id2);
    assert_eq!(
        paths(&d["added"]),
        ["src/becomes-dir", "src/becomes-dir/inside", "src/dir/new"],
        "{d:#}"
    );
    assert_eq!(
        paths(&d["removed"]),
        [
            "src/becomes-dir",
            "src/gone-dir",
            "src/gone-dir/a",
            "src/removed"
        ],
        "{d:#}"
    );
    assert_eq!(d["removed"][0]["type"], "file");
    assert_eq!(d["added"][0]["type"], "dir");
    let changed = &d["changed"];
    assert_eq!(
        paths(changed),
        [
            "src/dir/chmodded",
            "src/dir/touched",
            "src/edited",
            "src/link"
        ],
        "{d:#}"
    );
    assert_eq!(changed[0]["content"], false);
    assert_eq!(changed[0]["metadata"], json!({"mode": ["644", "600"]}));
    assert_eq!(changed[1]["content"], false);
    assert_eq!(
        changed[1]["metadata"],
        json!({"mtime": ["2020-09-13T12:26:40.000000001Z", "2020-09-13T12:26:40.000000002Z"]})
    );
    assert_eq!(changed[2]["content"], true);
    assert_eq!(
        (&changed[2]["size_before"], &changed[2]["size_after"]),
        (&json!(11), &json!(19))
    );
    assert_eq!(
        changed[3]["metadata"],
        json!({"target": ["old-target", "new-target"]})
    );
    assert_eq!(paths(&d["streams_changed"]), ["db.dump"]);
    assert_eq!(d["streams_changed"][0]["size_before"], 8);
    assert_eq!(d["streams_changed"][0]["size_after"], 9);
    assert!(d["database"].is_null());
    assert_eq!(d["stats"]["trees_skipped"], 1, "the store subtree: {d:#}");

    // Text: restic's signs.
    let text = ok(cairn(&repo).args(["diff", id1, id2]));
    for line in [
        "+    src/dir/new",
        "-    src/removed",
        "-    src/gone-dir/",
        "M    src/edited",
        "U    src/dir/chmodded  (mode \"644\" -> \"600\")",
        "M    [db.dump]",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }

    // A snapshot against itself: nothing, and nothing read.
    let same = diff_json(&repo, id2, id2);
    for k in ["added", "removed", "changed", "streams_changed"] {
        assert_eq!(same[k], json!([]), "{k}");
    }
    assert_eq!(same["stats"]["trees_skipped"], 2, "{same:#}");

    fails(cairn(&repo).args(["diff", id1, "ffffffff"]), 1);
}

#[test]
fn diff_of_database_snapshots_shows_row_count_differences_per_table() {
    let (_dir, repo) = new_repo();
    let db = TempDb::create("diff");
    psql(
        db.name(),
        "CREATE TABLE orders (id int); INSERT INTO orders SELECT generate_series(1, 100);
         CREATE TABLE stable (id int); INSERT INTO stable VALUES (1), (2);
         CREATE TABLE dropped (id int); INSERT INTO dropped VALUES (1);
         CREATE SCHEMA \"Odd\"; CREATE TABLE \"Odd\".\"T t\" (id int);",
    );
    let backup = |repo: &Path| -> String {
        let out = ok(with_pg(cairn(repo)).env_remove("CAIRN_TEST_PG").args([
            "backup",
            "--json",
            "--pg",
            db.name(),
        ]));
        let v: Value = serde_json::from_str(&out).unwrap();
        v["snapshot_id"].as_str().unwrap().to_string()
    };
    let s1 = backup(&repo);
    psql(
        db.name(),
        "DELETE FROM orders WHERE id <= 10; INSERT INTO orders SELECT generate_series(101, 125);
         DROP TABLE dropped; CREATE TABLE added (id int); INSERT INTO added VALUES (1), (2), (3);
         INSERT INTO \"Odd\".\"T t\" VALUES (7);",
    );
    let s2 = backup(&repo);
    let d = diff_json(&repo, &s1, &s2);
    let database = &d["database"];
    assert_eq!(database["database_after"], db.name());
    assert_eq!(database["tables_compared"], 5, "{d:#}");
    assert_eq!(
        database["tables"],
        json!([
            {"schema": "Odd", "table": "T t", "rows_before": 0, "rows_after": 1, "delta": 1},
            {"schema": "public", "table": "added", "rows_before": null, "rows_after": 3, "delta": 3},
            {"schema": "public", "table": "dropped", "rows_before": 1, "rows_after": null, "delta": -1},
            {"schema": "public", "table": "orders", "rows_before": 100, "rows_after": 115, "delta": 15},
        ]),
        "{d:#}"
    );
    let stream = format!("{}.dump", db.name());
    assert_eq!(paths(&d["streams_changed"]), [stream.as_str()]);
    let text = ok(cairn(&repo).args(["diff", &s1, &s2]));
    assert!(
        text.contains("public.orders: 100 -> 115 (+15)")
            && text.contains("public.dropped: 1 -> - (-1)")
            && text.contains("4 of 5 tables changed row count"),
        "{text}"
    );
}
