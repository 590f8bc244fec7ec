//! Structured logs for `daemon` and `run-due` (issue 15): plain lines by default, one JSON object per
//! stderr line with `--log-format json`, carrying `level`, `message` and the `instance` of instance events.

mod harness;

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use harness::*;

fn json_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect()
}

/// The events that name `instance`, as (level, message).
fn events_of(lines: &[serde_json::Value], instance: &str) -> Vec<(String, String)> {
    lines
        .iter()
        .filter(|l| l["instance"] == instance)
        .map(|l| {
            (
                l["level"].as_str().unwrap().to_string(),
                l["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Two instances due every second: `web` backs up, `bad` fails in its pre-hook.
fn two_instances(dir: &Path, repo: &Path) {
    let src = dir.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    for (name, hook) in [("web", "true"), ("bad", "exit 3")] {
        ok(cairn(repo)
            .args([
                "instance",
                "add",
                name,
                "--schedule",
                "*/2 * * * * *",
                "--keep-last",
                "50",
            ])
            .args(["--pre-hook", hook, "--path"])
            .arg(&src));
    }
}

#[test]
fn run_due_logs_json_lines_with_level_message_and_instance() {
    let (dir, repo) = new_repo();
    two_instances(dir.path(), &repo);
    std::thread::sleep(Duration::from_millis(2100));
    let (code, out, err) = run(cairn(&repo).args(["--log-format", "json", "run-due"]));
    assert_eq!(code, 1, "one instance failed: {out}\n{err}");
    let lines = json_lines(&err);
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(
            l["level"].is_string() && l["message"].is_string() && l["timestamp"].is_string(),
            "{l}"
        );
    }
    let web = events_of(&lines, "web");
    assert!(
        web.contains(&("INFO".into(), "backup started".into())),
        "{web:?}"
    );
    assert!(
        web.contains(&("INFO".into(), "snapshot saved".into())),
        "{web:?}"
    );
    let saved = lines
        .iter()
        .find(|l| l["message"] == "snapshot saved")
        .unwrap();
    assert_eq!(saved["snapshot"].as_str().unwrap().len(), 64);
    let bad = events_of(&lines, "bad");
    assert!(
        bad.contains(&("ERROR".into(), "backup failed".into())),
        "{bad:?}"
    );
    let failed = lines
        .iter()
        .find(|l| l["message"] == "backup failed")
        .unwrap();
    assert!(
        failed["error"].as_str().unwrap().contains("pre hook"),
        "{failed}"
    );

    // Plain lines by default: not JSON, level and instance in each instance line.
    std::thread::sleep(Duration::from_millis(2100));
    let (_, _, err) = run(cairn(&repo).args(["run-due"]));
    assert!(err.lines().all(|l| !l.starts_with('{')), "{err}");
    assert!(
        err.lines().any(|l| l.contains("INFO")
            && l.contains("snapshot saved")
            && l.contains("instance=web")),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("ERROR") && l.contains("instance=bad")),
        "{err}"
    );
}

#[test]
fn daemon_logs_json_lines_from_start_to_stop() {
    let (dir, repo) = new_repo();
    two_instances(dir.path(), &repo);
    let daemon = cairn(&repo)
        .args(["--log-format", "json", "daemon", "--tick-seconds", "1"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let snaps: Vec<serde_json::Value> =
            serde_json::from_str(&ok(cairn(&repo).args(["snapshots", "--json"]))).unwrap();
        if !snaps.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let out = daemon.wait_with_output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines = json_lines(&err);
    let messages: Vec<&str> = lines
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages.first(), Some(&"daemon started"), "{err}");
    assert_eq!(messages.last(), Some(&"daemon stopped"), "{err}");
    for l in &lines {
        assert!(l["level"].is_string() && l["message"].is_string(), "{l}");
    }
    let web = events_of(&lines, "web");
    assert!(
        web.contains(&("INFO".into(), "backup started".into())),
        "{err}"
    );
    assert!(
        web.contains(&("INFO".into(), "snapshot saved".into())),
        "{err}"
    );
    assert!(
        events_of(&lines, "bad").contains(&("ERROR".into(), "backup failed".into())),
        "{err}"
    );
}
