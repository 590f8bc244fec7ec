//! Instances end to end through the real binary: configuration, backups over a simulated month (explicit
//! times), point-in-time restore, run log, stats, health, run-due, hooks and notification.

mod harness;

use std::fs;

use harness::*;

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap()
}

#[test]
fn two_instances_over_a_month_restore_by_time_and_report() {
    let (dir, repo) = new_repo();
    let (a, b) = (
        dir.path().join("a/filestore"),
        dir.path().join("b/filestore"),
    );
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    ok(cairn(&repo).args([
        "instance",
        "add",
        "alpha",
        "--path",
        a.to_str().unwrap(),
        "--priority",
        "high",
    ]));
    ok(cairn(&repo).args([
        "instance",
        "add",
        "beta",
        "--path",
        b.to_str().unwrap(),
        "--schedule",
        "0 4 * * *",
        "--keep-daily",
        "7",
    ]));
    fails(
        cairn(&repo).args(["instance", "add", "Bad Name", "--path", "/x"]),
        1,
    );
    fails(
        cairn(&repo).args(["instance", "add", "gamma", "--path", "relative/dir"]),
        1,
    );
    fails(
        cairn(&repo).args([
            "instance",
            "add",
            "delta",
            "--path",
            "/x",
            "--schedule",
            "every day",
        ]),
        1,
    );
    for day in 1..=30 {
        fs::write(a.join("day"), format!("alpha day {day}")).unwrap();
        fs::write(b.join("day"), format!("beta day {day}")).unwrap();
        let t = format!("2026-10-{day:02}T03:00:00+00:00");
        ok(cairn(&repo).args(["instance", "backup", "alpha", "--time", &t]));
        if day % 2 == 0 {
            ok(cairn(&repo).args(["instance", "backup", "beta", "--time", &t]));
        }
    }
    // --at picks the latest snapshot at or before the time, per instance.
    let target = dir.path().join("t");
    ok(cairn(&repo).args([
        "instance",
        "restore",
        "alpha",
        "--at",
        "2026-10-12T12:00:00+00:00",
        "--target",
        target.to_str().unwrap(),
    ]));
    assert_eq!(
        fs::read_to_string(target.join("filestore/day")).unwrap(),
        "alpha day 12"
    );
    let target_b = dir.path().join("tb");
    ok(cairn(&repo).args([
        "instance",
        "restore",
        "beta",
        "--at",
        "2026-10-13T12:00:00+00:00",
        "--target",
        target_b.to_str().unwrap(),
    ]));
    assert_eq!(
        fs::read_to_string(target_b.join("filestore/day")).unwrap(),
        "beta day 12"
    );
    fails(
        cairn(&repo).args([
            "instance",
            "restore",
            "alpha",
            "--at",
            "2026-09-01 00:00",
            "--target",
            "/tmp/x",
        ]),
        1,
    );

    let stats = json(&ok(cairn(&repo).args(["stats", "--json"])));
    let alpha = stats["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance"] == "alpha")
        .unwrap();
    assert_eq!(alpha["snapshot_count"], 30);
    assert_eq!(alpha["last_status"], "ok");
    assert_eq!(stats["totals"]["snapshot_count"], 45);
    let log = json(&ok(cairn(&repo).args([
        "log",
        "--instance",
        "beta",
        "--json",
    ])));
    assert_eq!(log.as_array().unwrap().len(), 15);

    // The last snapshots are from October: both instances are overdue now.
    let (code, out, _) = run(cairn(&repo).args(["health", "--json"]));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("overdue"));
    ok(cairn(&repo).args(["instance", "pause", "beta"]));
    let list = json(&ok(cairn(&repo).args(["instance", "list", "--json"])));
    assert_eq!(list[1]["paused"], true);
    // run-due backs up the due, enabled instance once, and it is then healthy.
    let due = json(&ok(cairn(&repo).args(["run-due", "--json"])));
    assert_eq!(due.as_array().unwrap().len(), 1);
    assert_eq!(due[0]["instance"], "alpha");
    let due = json(&ok(cairn(&repo).args(["run-due", "--json"])));
    assert!(
        due.as_array().unwrap().is_empty(),
        "a missed slot runs once, not again"
    );
    ok(cairn(&repo).args(["health"]));
}

#[test]
fn failing_pre_hook_aborts_is_logged_and_notified() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("files");
    fs::create_dir_all(&src).unwrap();
    let note = dir.path().join("notified.json");
    let post = dir.path().join("post-ran");
    ok(cairn(&repo).args([
        "instance",
        "add",
        "shop",
        "--path",
        src.to_str().unwrap(),
        "--pre-hook",
        "exit 4",
        "--post-hook",
        &format!("touch {}", post.display()),
        "--notify",
        &format!("cat > {}", note.display()),
    ]));
    let err = fails(cairn(&repo).args(["instance", "backup", "shop"]), 1);
    assert!(err.contains("pre hook"), "{err}");
    let notified = json(&fs::read_to_string(&note).unwrap());
    assert_eq!(notified["status"], "failed");
    assert_eq!(notified["instance"], "shop");
    let snaps = json(&ok(cairn(&repo).args(["snapshots", "--json"])));
    assert!(snaps.as_array().unwrap().is_empty());
    let (code, out, _) = run(cairn(&repo).args(["health"]));
    assert_eq!(code, 1, "a failed last run is unhealthy: {out}");
    ok(cairn(&repo).args(["instance", "set", "shop", "--pre-hook", "true"]));
    ok(cairn(&repo).args(["instance", "backup", "shop"]));
    assert!(post.exists(), "post hook ran");
}

#[test]
fn scheduler_entries_are_printed() {
    let (dir, repo) = new_repo();
    // The repository is encrypted: an entry names where its password comes from (never the password).
    let pw = dir.path().join("password");
    fs::write(&pw, harness::PASSWORD).unwrap();
    let pw = pw.to_str().unwrap();
    let crontab = ok(cairn(&repo).args(["schedule", "crontab", "--password-file", pw]));
    assert!(
        crontab.contains("run-due") && crontab.contains(pw),
        "{crontab}"
    );
    assert!(!crontab.contains(harness::PASSWORD), "{crontab}");
    assert!(
        ok(cairn(&repo).args(["schedule", "systemd", "--password-file", pw]))
            .contains("OnCalendar")
    );
}

fn sh(cmd: &str) {
    let st = std::process::Command::new("sh")
        .args(["-c", cmd])
        .status()
        .unwrap();
    assert!(st.success(), "{cmd}");
}

#[test]
fn imported_tar_gz_and_zip_export_back_to_the_same_files() {
    let (dir, repo) = new_repo();
    let d = dir.path();
    let legacy = d.join("legacy");
    fs::create_dir_all(legacy.join("filestore/ab")).unwrap();
    fs::write(
        legacy.join("dump.sql"),
        "-- PostgreSQL database dump\nCREATE TABLE t (id int);\n".repeat(1000),
    )
    .unwrap();
    fs::write(
        legacy.join("filestore/ab/abcdef"),
        pseudo_random(300_000, 3),
    )
    .unwrap();
    fs::write(legacy.join("manifest.json"), br#"{"version": "17.0"}"#).unwrap();
    sh(&format!(
        "cd {} && tar czf {}/old.tar.gz dump.sql filestore manifest.json",
        legacy.display(),
        d.display()
    ));
    let v = json(&ok(cairn(&repo)
        .args([
            "import-archive",
            "--instance",
            "legacy",
            "--time",
            "2025-01-31 02:00",
            "--json",
        ])
        .arg(d.join("old.tar.gz"))));
    let id = v["snapshot_id"].as_str().unwrap().to_string();
    let snap = json(&ok(cairn(&repo).args(["show", &id, "--json"])));
    assert!(snap["time"]
        .as_str()
        .unwrap()
        .starts_with("2025-01-31T02:00:00"));
    assert_eq!(snap["stream_names"], serde_json::json!(["dump.sql"]));
    for (fmt, unpack) in [
        ("tar", "tar xf {f}"),
        ("odoo-zip", "python3 -m zipfile -e {f} ."),
    ] {
        let out = cairn(&repo)
            .args(["export", &id, "--format", fmt])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = d.join(format!("export.{fmt}"));
        fs::write(&file, &out.stdout).unwrap();
        let x = d.join(format!("x-{fmt}"));
        fs::create_dir_all(&x).unwrap();
        sh(&format!(
            "cd {} && {}",
            x.display(),
            unpack.replace("{f}", file.to_str().unwrap())
        ));
        for f in ["dump.sql", "filestore/ab/abcdef", "manifest.json"] {
            assert_eq!(
                fs::read(x.join(f)).unwrap(),
                fs::read(legacy.join(f)).unwrap(),
                "{fmt}: {f}"
            );
        }
    }
    // And the zip we exported imports again as the same content.
    let again = json(&ok(cairn(&repo)
        .args(["import-archive", "--time", "2025-02-01 02:00", "--json"])
        .arg(d.join("export.odoo-zip"))));
    assert!(
        again["summary"]["bytes_added"].as_u64().unwrap() < 2000,
        "re-import deduplicates: {again}"
    );
    fails(
        cairn(&repo)
            .args(["import-archive", "--time", "2025-01-01 00:00"])
            .arg(d.join("legacy/manifest.json")),
        1,
    );
}
