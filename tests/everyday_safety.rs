//! Issue 15: safety snapshots (tag `safety`, taken before a `--replace` or in-place restore) are never
//! removed by `forget` unless named by id or with `--include-safety`; `forget --dry-run` shows them kept.

mod harness;

use std::fs;

use harness::*;

fn ids(repo: &std::path::Path) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&ok(cairn(repo).args(["--json", "snapshots"]))).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn tags_of(repo: &std::path::Path, id: &str) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&ok(cairn(repo).args(["--json", "show", id]))).unwrap();
    serde_json::from_value(v["tags"].clone()).unwrap()
}

#[test]
fn forget_keeps_safety_snapshots_unless_named_or_include_safety() {
    let (dir, repo) = new_repo();
    let data = dir.path().join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), b"v1").unwrap();
    ok(cairn(&repo)
        .args(["instance", "add", "app", "--priority", "manual", "--path"])
        .arg(&data));
    ok(cairn(&repo).args(["instance", "backup", "app", "--time", "2026-01-01 10:00"]));
    fs::write(data.join("f"), b"v2").unwrap();
    ok(cairn(&repo).args(["instance", "backup", "app", "--time", "2026-01-02 10:00"]));
    let before = ids(&repo);
    // An in-place restore of the first snapshot takes a safety snapshot (of v2) first.
    ok(cairn(&repo).args(["instance", "restore", "app", &before[0][..8], "--in-place"]));
    assert_eq!(fs::read(data.join("f")).unwrap(), b"v1");
    let all = ids(&repo);
    assert_eq!(all.len(), 3);
    let safety: Vec<_> = all
        .iter()
        .filter(|i| !before.contains(i))
        .cloned()
        .collect();
    assert_eq!(safety.len(), 1);
    let safety = &safety[0];
    assert_eq!(
        tags_of(&repo, safety),
        ["safety"],
        "in-place safety snapshot is tagged"
    );

    // dry run: shown as kept, with the reason.
    let v: serde_json::Value = serde_json::from_str(&ok(cairn(&repo).args([
        "--json",
        "forget",
        "--keep-last",
        "1",
        "--dry-run",
    ])))
    .unwrap();
    let decisions: Vec<_> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["decisions"].as_array().unwrap().clone())
        .collect();
    let d = decisions
        .iter()
        .find(|d| d["id"] == safety.as_str())
        .unwrap();
    assert_eq!(d["keep"], true, "{v}");
    assert!(d["reasons"].to_string().contains("safety"), "{d}");
    let text = ok(cairn(&repo).args(["forget", "--keep-last", "1", "--dry-run"]));
    let line = text.lines().find(|l| l.contains(&safety[..12])).unwrap();
    assert!(line.contains("keep") && line.contains("safety"), "{text}");

    // A policy, even --keep-last 0, keeps it; the others go by the policy (the safety one does not use a slot).
    ok(cairn(&repo).args(["forget", "--keep-last", "1"]));
    let left = ids(&repo);
    assert!(left.contains(safety), "safety snapshot removed by a policy");
    assert_eq!(left.len(), 2, "{left:?}");
    ok(cairn(&repo).args(["forget", "--keep-last", "0", "--unsafe-allow-remove-all"]));
    assert_eq!(ids(&repo), std::slice::from_ref(safety));
    // By id: removed.
    ok(cairn(&repo).args(["forget", &safety[..8]]));
    assert!(ids(&repo).is_empty());
}

#[test]
fn forget_include_safety_applies_the_policy_to_safety_snapshots_too() {
    let (dir, repo) = new_repo();
    let data = dir.path().join("d");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), b"x").unwrap();
    let d = data.to_str().unwrap();
    backup_json(&repo, &[d, "--time", "2026-01-01 10:00", "--tag", "safety"]);
    backup_json(&repo, &[d, "--time", "2026-01-02 10:00"]);
    ok(cairn(&repo).args(["forget", "--keep-last", "1"]));
    assert_eq!(ids(&repo).len(), 2);
    ok(cairn(&repo).args(["forget", "--keep-last", "1", "--include-safety"]));
    assert_eq!(ids(&repo).len(), 1);
}
