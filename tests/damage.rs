//! Damage, detected and repaired: a flipped bit, a truncated pack and a deleted pack are each found by
//! `check` (naming the affected files), and `repair index` + `repair snapshots` (+ `prune`) bring the
//! repository back to a clean `check` in which every unaffected file still restores. In a local or an S3
//! repository alike (the harness's object helpers damage either).

mod harness;

use std::fs;
use std::path::Path;

use harness::*;

fn assert_survivor_restores(repo: &Path, dir: &Path, src: &Path) {
    let t = dir.join("restored");
    let _ = fs::remove_dir_all(&t);
    ok(cairn(repo).args(["restore", "latest", "--target", t.to_str().unwrap()]));
    assert_eq!(
        fs::read(t.join("src/survivor.bin")).unwrap(),
        fs::read(src.join("survivor.bin")).unwrap()
    );
    assert!(!t.join("src/victim.bin").exists());
}

#[test]
fn flipped_bit_is_found_repaired_and_pruned() {
    let (dir, repo, src, pack) = two_pack_repo();
    let mut bytes = obj_read(&pack);
    bytes[5000] ^= 0x10;
    obj_write(&pack, &bytes);
    let (code, out, _) = run(cairn(&repo).args(["check", "--read-data"]));
    assert_eq!(code, 1);
    assert!(out.contains("victim.bin"), "{out}");
    let (code, out, _) = run(cairn(&repo).args(["check", "--read-data-subset", "1/1", "--json"]));
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["damaged"][0]["affected"]
        .to_string()
        .contains("victim.bin"));
    let repaired: serde_json::Value =
        serde_json::from_str(&ok(cairn(&repo).args(["repair", "snapshots", "--json"]))).unwrap();
    assert_eq!(
        repaired.as_array().unwrap().len(),
        2,
        "both snapshots held the victim"
    );
    assert_survivor_restores(&repo, dir.path(), &src);
    ok(cairn(&repo).arg("prune"));
    ok(cairn(&repo).args(["check", "--read-data"]));
}

#[test]
fn truncated_pack_is_found_and_repaired() {
    let (dir, repo, src, pack) = two_pack_repo();
    let bytes = obj_read(&pack);
    obj_write(&pack, &bytes[..bytes.len() / 2]);
    let (code, out, _) = run(cairn(&repo).arg("check"));
    assert_eq!(code, 1);
    assert!(out.contains("victim.bin"), "{out}");
    let (code, _, err) = run(cairn(&repo).args(["repair", "index"]));
    assert_eq!(code, 1, "a skipped pack is reported: {err}");
    assert!(err.contains("skipped pack"), "{err}");
    ok(cairn(&repo).args(["repair", "snapshots"]));
    assert_survivor_restores(&repo, dir.path(), &src);
    ok(cairn(&repo).arg("prune"));
    ok(cairn(&repo).args(["check", "--read-data"]));
}

#[test]
fn deleted_pack_is_found_and_damaged_snapshots_can_be_forgotten() {
    let (_dir, repo, _src, pack) = two_pack_repo();
    obj_delete(&pack);
    let (code, out, _) = run(cairn(&repo).arg("check"));
    assert_eq!(code, 1);
    // An object-store cache follows the pack listing at every open, so there the lost pack's blobs are
    // "not indexed" rather than "in a missing pack": damage either way, naming the file.
    let missing = if is_s3(&repo) {
        "not indexed"
    } else {
        "is missing"
    };
    assert!(out.contains(missing) && out.contains("victim.bin"), "{out}");
    ok(cairn(&repo).args(["repair", "index"]));
    ok(cairn(&repo).args(["repair", "snapshots", "--forget-damaged"]));
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&ok(cairn(&repo).args(["snapshots", "--json"]))).unwrap();
    assert!(list.is_empty(), "both snapshots needed the lost pack");
    ok(cairn(&repo).arg("prune"));
    ok(cairn(&repo).args(["check", "--read-data"]));
}
