//! `cairn find` (issue 15): which snapshots hold a matching path, newest first, searching shared subtrees once.

mod harness;

use std::fs;
use std::path::Path;

use harness::*;
use serde_json::{json, Value};

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn find(repo: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&ok(cairn(repo).args(["find", "--json"]).args(args))).unwrap()
}

fn ids_and_paths(v: &Value) -> Vec<(String, Vec<String>)> {
    v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["snapshot_id"].as_str().unwrap()[..8].to_string(),
                s["matches"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["path"].as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn find_lists_snapshots_holding_a_match_newest_first_and_searches_shared_subtrees_once() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    write(&src, "docs/a.pdf", b"pdf one");
    write(&src, "docs/b.txt", b"text");
    for i in 0..10 {
        write(&src, &format!("store/{i:02}/f"), &pseudo_random(50, i));
    }
    write(&src, "store/03/deep.PDF.pdf", b"deep pdf");
    set_mtime(&src.join("docs/a.pdf"), 1_600_000_000, 5);
    let s1 = backup_json(
        &repo,
        &["--time", "2024-01-01T00:00:00Z", src.to_str().unwrap()],
    );
    write(&src, "new.pdf", b"the newest pdf");
    let s2 = backup_json(
        &repo,
        &["--time", "2024-01-02T00:00:00Z", src.to_str().unwrap()],
    );
    let other = dir.path().join("other");
    write(&other, "x.pdf", b"elsewhere");
    let s3 = backup_json(
        &repo,
        &[
            "--time",
            "2023-12-31T00:00:00Z",
            "--instance",
            "shop",
            other.to_str().unwrap(),
        ],
    );
    let id = |s: &Value| s["snapshot_id"].as_str().unwrap()[..8].to_string();
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let v = find(&repo, &["*.pdf"]);
    assert_eq!(
        ids_and_paths(&v),
        [
            (
                id(&s2),
                owned(&["src/docs/a.pdf", "src/new.pdf", "src/store/03/deep.PDF.pdf"])
            ),
            (
                id(&s1),
                owned(&["src/docs/a.pdf", "src/store/03/deep.PDF.pdf"])
            ),
            (id(&s3), owned(&["other/x.pdf"])),
        ],
        "{v:#}"
    );
    let a = &v["snapshots"][1]["matches"][0];
    assert_eq!(
        (a["type"].clone(), a["size"].clone(), a["mtime"].clone()),
        (json!("file"), json!(7), json!("2020-09-13T12:26:40+00:00"))
    );
    // Trees: s1 has root, src, docs, store and 10 store dirs (14); s2 reads only its new root and src,
    // and takes docs and store from the cache; s3 reads its 2.
    assert_eq!(v["trees_read"], 14 + 2 + 2, "{v:#}");
    assert_eq!(v["trees_cached"], 2, "{v:#}");

    // Path patterns (with a `/`) match the path as `ls` prints it; --instance narrows.
    let v = find(&repo, &["src/docs/*"]);
    assert_eq!(
        ids_and_paths(&v),
        [
            (id(&s2), owned(&["src/docs/a.pdf", "src/docs/b.txt"])),
            (id(&s1), owned(&["src/docs/a.pdf", "src/docs/b.txt"])),
        ]
    );
    let v = find(&repo, &["**/03/*.pdf"]);
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 2);
    let v = find(&repo, &["--instance", "shop", "*.pdf"]);
    assert_eq!(ids_and_paths(&v), [(id(&s3), owned(&["other/x.pdf"]))]);
    let v = find(&repo, &["nothing-*"]);
    assert_eq!(v["snapshots"], json!([]));
    assert_eq!(v["snapshots_searched"], 3);

    let text = ok(cairn(&repo).args(["find", "new.pdf"]));
    assert!(
        text.contains(&id(&s2)) && text.contains("src/new.pdf") && !text.contains(&id(&s1)),
        "{text}"
    );
    assert!(text.contains("1 of 3 snapshots hold a match"), "{text}");
    fails(cairn(&repo).args(["find", "a[b"]), 1);
}

#[test]
fn find_matches_stream_names_too() {
    let (_dir, repo) = new_repo();
    ok(&mut stdin_backup(&repo, "shop.dump", &["printf", "dump"]));
    let v = find(&repo, &["*.dump"]);
    assert_eq!(v["snapshots"][0]["matches"][0]["path"], "[shop.dump]");
    assert_eq!(v["snapshots"][0]["matches"][0]["type"], "stream");
    assert_eq!(v["snapshots"][0]["matches"][0]["size"], 4);
}
