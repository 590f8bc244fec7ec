//! `cairn stats` (issue 15): stored bytes and the dedup ratio exactly, from the index, also after
//! forget + prune, checked against numbers the test computes itself (pack file sizes on disk, the sizes of
//! the distinct contents it wrote); `--prometheus` in the text exposition format, parsed line by line.

mod harness;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use harness::*;

const MB: usize = 1_000_000;

fn stats(repo: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(cairn(repo).args(["stats", "--json"]))).unwrap()
}

fn row<'a>(s: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    s["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["instance"] == name)
        .unwrap()
}

/// The sum of the sizes of the pack files on disk.
fn pack_bytes_on_disk(repo: &Path) -> u64 {
    packs(repo)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

/// Asserts logical and unique bytes and the ratio of a stats row.
fn assert_usage(r: &serde_json::Value, logical: usize, unique: usize, what: &str) {
    assert_eq!(r["logical_bytes"], logical as u64, "{what}: {r:#}");
    assert_eq!(r["unique_bytes"], unique as u64, "{what}: {r:#}");
    let ratio = r["dedup_ratio"].as_f64().unwrap();
    assert!(
        (ratio - logical as f64 / unique as f64).abs() < 1e-9,
        "{what}: {r:#}"
    );
    assert!(r["stored_bytes"].as_u64().unwrap() > 0);
    assert_eq!(r["missing_blobs"], 0);
}

#[test]
fn stats_stored_bytes_and_dedup_ratio_are_exact_also_after_forget_and_prune() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    ok(cairn(&repo).arg("init"));
    let web = dir.path().join("web");
    fs::create_dir_all(web.join("sub")).unwrap();
    let a = pseudo_random(3 * MB, 11);
    fs::write(web.join("a"), &a).unwrap();
    fs::write(web.join("sub/a-copy"), &a).unwrap(); // deduplicated against a
    fs::write(web.join("c"), pseudo_random(MB, 12)).unwrap();
    let other = dir.path().join("other");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("a"), &a).unwrap(); // shared with web
    let dump = dir.path().join("dump");
    fs::write(&dump, pseudo_random(MB / 2, 13)).unwrap();
    for (name, path) in [("web", &web), ("other", &other)] {
        ok(cairn(&repo)
            .args(["instance", "add", name, "--keep-last", "10", "--path"])
            .arg(path));
    }

    // web: 1. a, a-copy, c; 2. a stream; 3. a, a-copy, e (c removed)
    ok(cairn(&repo).args(["instance", "backup", "web"]));
    let first =
        serde_json::from_str::<serde_json::Value>(&ok(cairn(&repo).args(["snapshots", "--json"])))
            .unwrap()[0]["id"]
            .as_str()
            .unwrap()
            .to_string();
    ok(cairn(&repo)
        .args([
            "backup",
            "--instance",
            "web",
            "--stdin-from-command",
            "--stdin-name",
            "db.dump",
            "--",
            "cat",
        ])
        .arg(&dump));
    fs::remove_file(web.join("c")).unwrap();
    fs::write(web.join("e"), pseudo_random(2 * MB, 14)).unwrap();
    ok(cairn(&repo).args(["instance", "backup", "web"]));
    ok(cairn(&repo).args(["instance", "backup", "other"]));

    let s = stats(&repo);
    assert_usage(
        row(&s, "web"),
        7 * MB + MB / 2 + 8 * MB,
        3 * MB + MB + MB / 2 + 2 * MB,
        "web",
    );
    assert_usage(row(&s, "other"), 3 * MB, 3 * MB, "other");
    assert_usage(&s["totals"], 18 * MB + MB / 2, 6 * MB + MB / 2, "totals");
    assert_eq!(s["totals"]["pack_bytes"], pack_bytes_on_disk(&repo));

    // Forget the first snapshot and prune: c is no longer referenced, a still is.
    ok(cairn(&repo).args(["forget", &first, "--prune"]));
    let s = stats(&repo);
    assert_usage(
        row(&s, "web"),
        MB / 2 + 8 * MB,
        3 * MB + MB / 2 + 2 * MB,
        "web after prune",
    );
    assert_usage(row(&s, "other"), 3 * MB, 3 * MB, "other after prune");
    assert_usage(
        &s["totals"],
        11 * MB + MB / 2,
        5 * MB + MB / 2,
        "totals after prune",
    );
    let t = &s["totals"];
    assert_eq!(t["pack_bytes"], pack_bytes_on_disk(&repo));
    assert_eq!(t["pack_count"], packs(&repo).len() as u64);
    assert_eq!(
        t["unreferenced_bytes"].as_u64().unwrap(),
        t["blob_bytes"].as_u64().unwrap() - t["stored_bytes"].as_u64().unwrap()
    );
    // The same prune with nothing left to repack: every indexed blob is referenced.
    ok(cairn(&repo).args(["prune", "--max-unused", "0"]));
    let t = stats(&repo)["totals"].clone();
    assert_eq!(t["unreferenced_bytes"], 0, "{t:#}");
    assert_eq!(t["blob_bytes"], t["stored_bytes"]);
    assert_eq!(t["pack_bytes"], pack_bytes_on_disk(&repo));
}

/// A parsed sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the text exposition format strictly: every line a `# HELP name text`, a `# TYPE name
/// gauge|counter`, or a sample `name{label="value",...} number` with escaped label values.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let is_name = |s: &str| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut samples = Vec::new();
    let mut typed = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(is_name(name) && !help.is_empty(), "{line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                is_name(name) && ["gauge", "counter"].contains(&kind),
                "{line}"
            );
            typed.push(name.to_string());
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let name = &line[..name_end];
        assert!(is_name(name), "{line}");
        assert!(
            typed.last().is_some_and(|t| t == name),
            "sample before its # TYPE: {line}"
        );
        let (labels, rest) = match line[name_end..].strip_prefix('{') {
            Some(r) => parse_labels(r, line),
            None => (BTreeMap::new(), &line[name_end..]),
        };
        let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("{line}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        samples.push((name.to_string(), labels, v));
    }
    samples
}

/// Parses `key="value",...}` (after the `{`); returns the labels and what follows the `}`.
fn parse_labels<'a>(r: &'a str, line: &str) -> (BTreeMap<String, String>, &'a str) {
    let is_key =
        |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let mut labels = BTreeMap::new();
    let mut j = 0;
    loop {
        let eq = j + r[j..].find('=').unwrap_or_else(|| panic!("{line}"));
        let key = &r[j..eq];
        assert!(is_key(key), "label {key:?} in {line}");
        assert_eq!(&r[eq + 1..eq + 2], "\"", "{line}");
        let (mut value, mut k) = (String::new(), eq + 2);
        loop {
            let c = r[k..].chars().next().unwrap_or_else(|| panic!("{line}"));
            k += c.len_utf8();
            match c {
                '"' => break,
                '\\' => {
                    let e = r[k..].chars().next().unwrap();
                    k += e.len_utf8();
                    value.push(match e {
                        'n' => '\n',
                        '\\' | '"' => e,
                        _ => panic!("bad escape in {line}"),
                    });
                }
                c => value.push(c),
            }
        }
        labels.insert(key.to_string(), value);
        match &r[k..k + 1] {
            "," => j = k + 1,
            "}" => return (labels, &r[k + 1..]),
            _ => panic!("bad label list in {line}"),
        }
    }
}

#[test]
fn stats_prometheus_prints_the_text_format_with_every_metric_per_instance() {
    let dir = tempfile::tempdir().unwrap();
    // A repository path that needs label escaping.
    let repo = dir.path().join(r#"re"po\x"#);
    ok(cairn(&repo).arg("init"));
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let data = pseudo_random(MB, 21);
    fs::write(src.join("a"), &data).unwrap();
    fs::write(src.join("b"), &data).unwrap();
    ok(cairn(&repo)
        .args(["instance", "add", "web", "--keep-last", "5", "--path"])
        .arg(&src));
    ok(cairn(&repo).args(["instance", "backup", "web"]));
    ok(cairn(&repo).args(["instance", "set", "web", "--pre-hook", "exit 1"]));
    fails(cairn(&repo).args(["instance", "backup", "web"]), 1);

    let text = ok(cairn(&repo).args(["stats", "--prometheus"]));
    let samples = parse_prometheus(&text);
    let json = stats(&repo);
    let web = row(&json, "web");
    let get = |name: &str| -> f64 {
        let hits: Vec<&Sample> = samples.iter().filter(|(n, _, _)| n == name).collect();
        assert_eq!(hits.len(), 1, "{name} in:\n{text}");
        let labels = &hits[0].1;
        assert_eq!(labels["repository"], repo.to_str().unwrap());
        if !name.starts_with("cairn_repository_") {
            assert_eq!(labels["instance"], "web");
        }
        hits[0].2
    };
    let log: Vec<serde_json::Value> =
        serde_json::from_str(&ok(cairn(&repo).args(["log", "--json"]))).unwrap();
    let success_end =
        chrono::DateTime::parse_from_rfc3339(log[0]["end"].as_str().unwrap()).unwrap();
    assert!(
        (get("cairn_last_success_timestamp_seconds")
            - success_end.timestamp_millis() as f64 / 1000.0)
            .abs()
            < 1e-6
    );
    assert!(get("cairn_last_run_duration_seconds") >= 0.0);
    assert_eq!(
        get("cairn_last_run_bytes_added"),
        0.0,
        "the failed run added nothing"
    );
    assert_eq!(get("cairn_last_run_failed"), 1.0);
    assert_eq!(get("cairn_last_run_partial"), 0.0);
    assert_eq!(get("cairn_backup_failures_total"), 1.0);
    assert_eq!(get("cairn_snapshots"), 1.0);
    assert_eq!(get("cairn_logical_bytes"), (2 * MB) as f64);
    assert_eq!(get("cairn_unique_bytes"), MB as f64);
    assert_eq!(
        get("cairn_stored_bytes"),
        web["stored_bytes"].as_f64().unwrap()
    );
    assert!((get("cairn_dedup_ratio") - 2.0).abs() < 1e-9);
    assert_eq!(
        get("cairn_repository_pack_bytes"),
        pack_bytes_on_disk(&repo) as f64
    );
    assert!((get("cairn_repository_dedup_ratio") - 2.0).abs() < 1e-9);
    // One format at a time.
    fails(cairn(&repo).args(["stats", "--prometheus", "--json"]), 2);
}
