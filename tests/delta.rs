//! Delta chunks (format-spec section 5.1, blob kind 2) through the real binary: a stream's next day is stored
//! as deltas against the day before, restores byte for byte once the parent snapshot is forgotten and
//! pruned, keeps chains bounded, and a missing or corrupt base is found by `check`, naming the streams that
//! need it; a prune killed while it repacks bases leaves every kept snapshot restorable.

mod harness;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use cairn::delta::{MAX_DEPTH, WRITE_DEPTH};
use cairn::hashing::Id;
use cairn::pack::BlobKind;
use harness::*;

/// A dump-like stream: one text row per id, `rows` rows, of which every row picked by `changed` on any day
/// up to `day` carries that day's amount. Rows keep their place, so a day changes a few bytes here and there.
fn dump(rows: u32, day: u32, every: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..rows {
        let mut amount = (i.wrapping_mul(2654435761) % 100_000) as u64;
        for d in 2..=day {
            if (i + d * 7) % every == 0 {
                amount += 1000 * d as u64 + 17;
            }
        }
        writeln!(
            out,
            "{i}\tcustomer {}\t{amount}.{:02}\t2026-11-{:02} 10:{:02}:00\tstate {}",
            i % 997,
            i % 100,
            1 + i % 28,
            i % 60,
            ["draft", "sent", "paid", "done"][(i % 4) as usize]
        )
        .unwrap();
    }
    out
}

/// A local repository (encrypted unless `plaintext`): these tests read and damage pack files.
fn local_repo(dir: &Path, plaintext: bool) -> PathBuf {
    let repo = dir.join("repo");
    let mut c = cairn(&repo);
    c.arg("init");
    if plaintext {
        c.arg("--insecure-no-encryption");
    }
    ok(&mut c);
    repo
}

/// Backs `data` up as stream `db.dump` at `time`; returns `backup --json`.
fn backup_stream(repo: &Path, data: &[u8], time: &str) -> serde_json::Value {
    let mut child = cairn(repo)
        .args([
            "backup",
            "--json",
            "--quiet",
            "--time",
            time,
            "--stdin",
            "--stdin-name",
            "db.dump",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn dump_out(repo: &Path, snapshot: &str) -> Vec<u8> {
    let out = cairn(repo)
        .args(["dump", snapshot, "db.dump"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dump {snapshot}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn snapshot_ids(repo: &Path) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&ok(cairn(repo).args(["snapshots", "--json"]))).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// Every delta blob of the index with its base, and the depth of its chain (deltas down to a plain blob).
fn deltas(repo: &Path) -> Vec<(Id, Id, usize)> {
    let r = open_repo(repo);
    let idx = r.index();
    let rows: Vec<(Vec<u8>, Vec<u8>)> = idx
        .raw()
        .prepare("SELECT id, base FROM blobs WHERE kind = 2")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows.into_iter()
        .map(|(id, base)| {
            let (id, base) = (Id::from_slice(&id).unwrap(), Id::from_slice(&base).unwrap());
            let mut depth = 1;
            let mut cur = base;
            loop {
                let loc = idx.lookup(&cur).unwrap().expect("base indexed");
                if loc.entry.kind != BlobKind::DeltaData {
                    break;
                }
                depth += 1;
                cur = loc.entry.base.unwrap();
                assert!(depth <= MAX_DEPTH + 1, "chain runs away");
            }
            (id, base, depth)
        })
        .collect()
}

fn day_time(d: u32) -> String {
    format!("2026-11-{d:02}T03:00:00Z")
}

#[test]
fn a_stream_of_deltas_restores_byte_for_byte_after_its_parent_is_forgotten_and_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path(), false);
    let days: Vec<Vec<u8>> = (1..=7).map(|d| dump(40_000, d, 40)).collect();
    let first = backup_stream(&repo, &days[0], &day_time(1));
    assert!(deltas(&repo).is_empty(), "a first stream has no parent");
    let second = backup_stream(&repo, &days[1], &day_time(2));
    let (a1, a2) = (
        first["bytes_added"].as_u64().unwrap(),
        second["bytes_added"].as_u64().unwrap(),
    );
    let d = deltas(&repo);
    assert!(
        d.len() as u64 * 2 > second["chunks_new"].as_u64().unwrap(),
        "most new chunks of day 2 are deltas: {} of {}",
        d.len(),
        second["chunks_new"]
    );
    assert!(a2 * 4 < a1, "day 2 adds far less than day 1 ({a2} vs {a1})");
    for d in 3..=7 {
        backup_stream(&repo, &days[d as usize - 1], &day_time(d));
    }
    let chains = deltas(&repo);
    let deepest = chains.iter().map(|c| c.2).max().unwrap();
    assert!(
        (1..=WRITE_DEPTH).contains(&deepest),
        "a week of changes to the same rows never chains deltas past {WRITE_DEPTH}: deepest {deepest}"
    );
    let ids = snapshot_ids(&repo);
    for (id, want) in ids.iter().zip(&days) {
        assert!(dump_out(&repo, id) == *want, "snapshot {id} differs");
    }
    // Forget all but the last two, then only the last: each time prune repacks what the bases need.
    for keep in ["2", "1"] {
        ok(cairn(&repo).args(["forget", "--keep-last", keep]));
        ok(cairn(&repo).args(["prune", "--max-unused", "0"]));
        ok(cairn(&repo).args(["check", "--read-data"]));
        let kept = snapshot_ids(&repo);
        assert_eq!(kept.len(), keep.parse::<usize>().unwrap());
        for (id, want) in kept.iter().zip(&days[7 - kept.len()..]) {
            assert!(dump_out(&repo, id) == *want, "snapshot {id} differs");
        }
    }
    assert!(
        !deltas(&repo).is_empty(),
        "the last day's deltas and their bases survive"
    );
    // `copy` writes the chunks the target lacks whole, through the read path that resolves bases.
    let target = dir.path().join("copy");
    ok(cairn(&target).args(["init", "--from-repo", repo.to_str().unwrap()]));
    ok(cairn(&target).args(["copy", "--from-repo", repo.to_str().unwrap()]));
    let copied = snapshot_ids(&target);
    assert!(dump_out(&target, &copied[0]) == days[6]);
    // `repair index` rebuilds the delta rows (kind and base) from the pack trailers.
    let before = deltas(&repo).len();
    ok(cairn(&repo).args(["repair", "index"]));
    assert_eq!(deltas(&repo).len(), before);
    assert!(dump_out(&repo, "latest") == days[6]);
}

/// A repository with day 1 and a day 2 that changes every chunk, so day 2's chunks are all new and mostly
/// deltas against day 1's. Returns the repository, day 2's snapshot id and one delta's base.
fn two_days(dir: &Path) -> (PathBuf, String, Id) {
    let repo = local_repo(dir, true);
    backup_stream(&repo, &dump(20_000, 1, 12), &day_time(1));
    backup_stream(&repo, &dump(20_000, 2, 12), &day_time(2));
    let ids = snapshot_ids(&repo);
    let d = deltas(&repo);
    assert!(!d.is_empty(), "day 2 made deltas");
    (repo, ids[1].clone(), d[0].1)
}

/// The pack file holding `blob` and its offset and length there.
fn place_of(repo: &Path, blob: &Id) -> (PathBuf, u64, u32) {
    let r = open_repo(repo);
    let loc = r.index().lookup(blob).unwrap().unwrap();
    let hex = loc.pack.to_hex();
    (
        repo.join("packs").join(&hex[..2]).join(&hex),
        loc.entry.offset,
        loc.entry.stored_len,
    )
}

fn assert_names_stream(out: &str, snapshot: &str) {
    let want = format!("needed by {}: stream:db.dump", &snapshot[..8]);
    assert!(out.contains(&want), "check does not say `{want}`:\n{out}");
}

#[test]
fn check_names_the_streams_whose_delta_base_is_missing_or_corrupt() {
    // Corrupt: one flipped byte in the base's stored bytes; `check --read-data` finds it and every delta
    // built on it.
    let dir = tempfile::tempdir().unwrap();
    let (repo, day2, base) = two_days(dir.path());
    let (pack, offset, len) = place_of(&repo, &base);
    let mut bytes = fs::read(&pack).unwrap();
    bytes[(offset + u64::from(len) / 2) as usize] ^= 0x10;
    fs::write(&pack, &bytes).unwrap();
    ok(cairn(&repo).arg("check"));
    let (code, out, _) = run(cairn(&repo).args(["check", "--read-data"]));
    assert_eq!(code, 1, "{out}");
    assert_names_stream(&out, &day2);
    assert!(out.contains(&base.to_hex()), "the base is named:\n{out}");
    let (code, _, err) = run(cairn(&repo).args(["dump", &day2, "db.dump"]));
    assert_ne!(code, 0);
    assert!(err.contains("cairn: error:"), "{err}");

    // Missing: the pack holding the base is gone; the structural check finds it (day 2's own chunks are all
    // in its own packs, so only the delta relation names day 2).
    let dir = tempfile::tempdir().unwrap();
    let (repo, day2, base) = two_days(dir.path());
    let (pack, _, _) = place_of(&repo, &base);
    fs::remove_file(&pack).unwrap();
    let (code, out, _) = run(cairn(&repo).arg("check"));
    assert_eq!(code, 1, "{out}");
    assert_names_stream(&out, &day2);
    assert!(out.contains("delta"), "the delta relation is named:\n{out}");
}

#[test]
fn kill_9_during_a_prune_that_repacks_bases_leaves_every_kept_snapshot_restorable() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path(), false);
    set_pack_size(&repo, 1 << 20);
    let days: Vec<Vec<u8>> = (1..=6).map(|d| dump(60_000, d, 30)).collect();
    for (i, data) in days.iter().enumerate() {
        backup_stream(&repo, data, &day_time(i as u32 + 1));
    }
    assert!(!deltas(&repo).is_empty());
    ok(cairn(&repo).args(["forget", "--keep-last", "2"]));
    for delay_ms in [1u64, 5, 10, 20, 40, 60, 90, 130, 200, 300] {
        kill_prune_then_check(&repo, delay_ms);
        for (id, want) in snapshot_ids(&repo).iter().zip(&days[4..]) {
            assert!(
                dump_out(&repo, id) == *want,
                "snapshot {id} differs after a kill at {delay_ms} ms"
            );
        }
    }
    ok(cairn(&repo).args(["prune", "--max-unused", "0"]));
    ok(cairn(&repo).args(["check", "--read-data"]));
    let kept = snapshot_ids(&repo);
    assert_eq!(kept.len(), 2);
    for (id, want) in kept.iter().zip(&days[4..]) {
        assert!(dump_out(&repo, id) == *want, "snapshot {id} differs");
    }
}

#[test]
fn a_damaged_base_read_ahead_fails_the_dump_naming_it_and_never_writes_wrong_bytes() {
    // `dump` reads the bases of a window's deltas ahead without hashing them (each delta's own result is
    // hashed): a base whose stored bytes were changed must still fail the dump, naming the base, whether the
    // change breaks its zstd frame or decompresses to other bytes.
    let dir = tempfile::tempdir().unwrap();
    let (repo, day2, base) = two_days(dir.path());
    let want = dump_out(&repo, &day2);
    assert!(
        want == dump(20_000, 2, 12),
        "day 2 reads back byte for byte"
    );
    let (pack, offset, len) = place_of(&repo, &base);
    let clean = fs::read(&pack).unwrap();
    for at in [
        12,
        u64::from(len) / 3,
        u64::from(len) / 2,
        u64::from(len) - 6,
    ] {
        let mut bytes = clean.clone();
        bytes[(offset + at) as usize] ^= 0x04;
        fs::write(&pack, &bytes).unwrap();
        let out = cairn(&repo)
            .args(["dump", &day2, "db.dump"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "byte {at} of the base flipped: dump succeeded"
        );
        assert!(err.contains("cairn: error:"), "{err}");
        assert!(
            err.contains(&base.to_hex()),
            "byte {at}: the base is not named: {err}"
        );
        assert!(
            out.stdout.len() < want.len() && want.starts_with(&out.stdout),
            "byte {at}: the dump wrote {} bytes, not a strict prefix of the stream",
            out.stdout.len()
        );
    }
    fs::write(&pack, &clean).unwrap();
    assert!(dump_out(&repo, &day2) == want);
}

#[test]
fn a_new_repository_cuts_streams_at_32_kib_and_stores_the_next_day_as_deltas() {
    let dir = tempfile::tempdir().unwrap();
    let repo = local_repo(dir.path(), true);
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(repo.join("config")).unwrap()).unwrap();
    assert_eq!(
        config["chunker_streams"],
        serde_json::json!({"min_size": 8192, "avg_size": 32768, "max_size": 131072}),
        "stream chunk bounds of a new repository"
    );
    let day1 = dump(60_000, 1, 30);
    let first = backup_stream(&repo, &day1, &day_time(1));
    let chunks = first["chunks_new"].as_u64().unwrap();
    let avg = day1.len() as u64 / chunks;
    assert!(
        (16 << 10..64 << 10).contains(&avg),
        "average stream chunk {avg} bytes ({chunks} chunks)"
    );
    let day2 = dump(60_000, 2, 30);
    let second = backup_stream(&repo, &day2, &day_time(2));
    assert!(
        deltas(&repo).len() as u64 * 2 > second["chunks_new"].as_u64().unwrap(),
        "most new chunks of day 2 are deltas"
    );
    assert!(
        second["bytes_added"].as_u64().unwrap() * 10 < first["bytes_added"].as_u64().unwrap(),
        "day 2 adds a tenth of day 1 at most: {} vs {}",
        second["bytes_added"],
        first["bytes_added"]
    );
    assert!(dump_out(&repo, "latest") == day2);
}
