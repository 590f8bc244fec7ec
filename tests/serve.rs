//! `cairn serve` driven over real HTTP: the binary is started on a free loopback port, the tests talk to it
//! with an HTTP client and check what the repository and the file system hold afterwards.

mod harness;
mod serve_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::*;
use serde_json::{json, Value};
use serve_support::{token, Server};

struct Tokens {
    viewer: String,
    operator: String,
    admin: String,
}

fn tokens(repo: &Path) -> Tokens {
    Tokens {
        viewer: token(repo, "view", "viewer"),
        operator: token(repo, "ops", "operator"),
        admin: token(repo, "boss", "admin"),
    }
}

fn tree(dir: &Path) -> PathBuf {
    let src = dir.join("files");
    build_rich_tree(&src, 20);
    fs::write(src.join("big.bin"), pseudo_random(3 << 20, 7)).unwrap();
    src
}

#[test]
fn serve_api_flow_backup_download_restore_forget() {
    let (dir, repo) = new_repo();
    let t = tokens(&repo);
    let src = tree(dir.path());
    let s = Server::start(&repo, &[]);

    // Create the instance over the API (admin), with the CLI's field names.
    let (code, inst) = s.post(
        "/api/v1/instances",
        &t.admin,
        &json!({"name": "app", "priority": "manual", "paths": [src]}),
    );
    assert_eq!(code, 201, "{inst}");
    assert_eq!(inst["instance"], "app");
    assert_eq!(inst["paths"], json!([src]));
    let (code, list) = s.get("/api/v1/instances", Some(&t.viewer));
    assert_eq!(code, 200);
    assert_eq!(list[0]["instance"], "app");
    assert_eq!(list[0]["paused"], false);
    // Same document as the CLI's.
    let cli: Value =
        serde_json::from_str(&ok(cairn(&repo).args(["instance", "show", "app", "--json"])))
            .unwrap();
    let (_, shown) = s.get("/api/v1/instances/app", Some(&t.viewer));
    for k in [
        "instance",
        "paths",
        "priority",
        "schedule",
        "retention",
        "paused",
    ] {
        assert_eq!(shown[k], cli[k], "field {k}");
    }

    // Back up by hand: 202 + a job followed to completion.
    let (code, job) = s.post("/api/v1/instances/app/backup", &t.operator, &json!({}));
    assert_eq!(code, 202, "{job}");
    assert!(["queued", "running"].contains(&job["status"].as_str().unwrap()));
    let (done, _) = s.follow_job(job["id"].as_str().unwrap(), &t.viewer);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["kind"], "backup");
    assert_eq!(done["instance"], "app");
    assert_eq!(done["progress_percent"], 100.0);
    assert!(done["files_done"].as_u64().unwrap() >= 20, "{done}");
    assert!(done["finished_at"].is_string() && done["started_at"].is_string());
    let snap_id = done["snapshot_id"].as_str().unwrap().to_string();

    // Snapshots listed as `snapshots --json` lists them.
    let (code, snaps) = s.get("/api/v1/instances/app/snapshots", Some(&t.viewer));
    assert_eq!(code, 200);
    let cli: Value = serde_json::from_str(&ok(cairn(&repo).args(["snapshots", "--json"]))).unwrap();
    assert_eq!(snaps, cli);
    assert_eq!(snaps[0]["id"], snap_id.as_str());
    let (code, one) = s.get(&format!("/api/v1/snapshots/{snap_id}"), Some(&t.viewer));
    assert_eq!((code, &one["id"]), (200, &json!(snap_id)));

    // Download as tar: the bytes `cairn export --format tar` writes.
    let (code, tar) = s.bytes(
        &format!("/api/v1/snapshots/{snap_id}/download?format=tar"),
        &t.operator,
    );
    assert_eq!(code, 200);
    let export = harness::with_password(&mut std::process::Command::new(cairn_bin()))
        .env("CAIRN_REPO", &repo)
        .args(["export", &snap_id, "--format", "tar"])
        .output()
        .unwrap();
    assert!(export.status.success());
    assert!(tar.len() > 3 << 20);
    assert!(
        tar == export.stdout,
        "downloaded tar differs from the CLI export"
    );
    let unpacked = dir.path().join("unpacked");
    tar::Archive::new(&tar[..]).unpack(&unpacked).unwrap();
    assert_eq!(
        fs::read(unpacked.join("files/big.bin")).unwrap(),
        fs::read(src.join("big.bin")).unwrap()
    );

    // Restore: refused without confirm (nothing written), done with it.
    let target = dir.path().join("restored");
    let (code, err) = s.post(
        "/api/v1/instances/app/restore",
        &t.admin,
        &json!({"snapshot": snap_id, "target": target}),
    );
    assert_eq!(code, 400, "{err}");
    assert!(err["error"].as_str().unwrap().contains("confirm"));
    assert!(!target.exists());
    let (code, job) = s.post(
        "/api/v1/instances/app/restore",
        &t.admin,
        &json!({"snapshot": snap_id, "target": target, "confirm": true}),
    );
    assert_eq!(code, 202, "{job}");
    let (done, _) = s.follow_job(job["id"].as_str().unwrap(), &t.viewer);
    assert_eq!(done["status"], "completed", "{done}");
    assert_same_tree(&src, &target.join("files"));

    // In place: a safety snapshot first, then the live tree is the snapshot's again.
    fs::write(src.join("big.bin"), b"changed after the backup").unwrap();
    let (code, job) = s.post(
        "/api/v1/instances/app/restore",
        &t.admin,
        &json!({"snapshot": snap_id, "in_place": true, "confirm": true}),
    );
    assert_eq!(code, 202, "{job}");
    let (done, _) = s.follow_job(job["id"].as_str().unwrap(), &t.viewer);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        fs::read(src.join("big.bin")).unwrap(),
        pseudo_random(3 << 20, 7)
    );
    let safety = done["safety_snapshot_id"]
        .as_str()
        .expect("safety snapshot id");
    let (_, safety_snap) = s.get(&format!("/api/v1/snapshots/{safety}"), Some(&t.viewer));
    assert_eq!(safety_snap["tags"], json!(["safety"]), "{safety_snap}");

    // Forget a snapshot.
    let (code, v) = s.delete(&format!("/api/v1/snapshots/{safety}"), Some(&t.admin));
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        s.get(&format!("/api/v1/snapshots/{safety}"), Some(&t.viewer))
            .0,
        404
    );
    let (_, snaps) = s.get("/api/v1/instances/app/snapshots", Some(&t.viewer));
    assert_eq!(snaps.as_array().unwrap().len(), 1);

    // Jobs are listed and filtered.
    let (_, jobs) = s.get(
        "/api/v1/jobs?instance=app&status=completed&limit=2",
        Some(&t.viewer),
    );
    assert_eq!(jobs.as_array().unwrap().len(), 2);
    let (_, jobs) = s.get("/api/v1/jobs?kind=x&instance=nothing", Some(&t.viewer));
    assert_eq!(jobs, json!([]));

    // Every mutating call is in the run log, with the token's name.
    let (_, log) = s.get("/api/v1/instances/app/log", Some(&t.viewer));
    let kinds: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["kind"].as_str())
        .collect();
    for k in [
        "api:instance-add:boss",
        "api:backup:ops",
        "api:restore:boss",
    ] {
        assert!(kinds.contains(&k), "{k} not in {kinds:?}");
    }
    let (code, metrics) = s.get("/metrics", Some(&t.viewer));
    assert_eq!(code, 200);
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("cairn_last_success_timestamp_seconds{instance=\"app\"}"),
        "{metrics}"
    );
    let (code, stats) = s.get("/api/v1/stats", Some(&t.viewer));
    assert_eq!(code, 200);
    assert_eq!(stats["instances"][0]["instance"], "app");
}

#[test]
fn serve_every_role_boundary_answers_401_or_403() {
    let (dir, repo) = new_repo();
    let t = tokens(&repo);
    let src = tree(dir.path());
    ok(cairn(&repo)
        .args(["instance", "add", "app", "--priority", "manual", "--path"])
        .arg(&src));
    ok(cairn(&repo).args(["instance", "backup", "app"]));
    let id = serde_json::from_str::<Value>(&ok(cairn(&repo).args(["snapshots", "--json"])))
        .unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let s = Server::start(&repo, &[]);
    let restore = json!({"confirm": false});
    let snap = format!("/api/v1/snapshots/{id}");
    let download = format!("/api/v1/snapshots/{id}/download?format=tar");
    // (method, path, body, least role)
    let routes: Vec<(&str, String, Value, &str)> = vec![
        ("GET", "/api/v1/instances".into(), json!(null), "viewer"),
        ("GET", "/api/v1/instances/app".into(), json!(null), "viewer"),
        (
            "GET",
            "/api/v1/instances/app/snapshots".into(),
            json!(null),
            "viewer",
        ),
        (
            "GET",
            "/api/v1/instances/app/log".into(),
            json!(null),
            "viewer",
        ),
        (
            "GET",
            "/api/v1/instances/app/stats".into(),
            json!(null),
            "viewer",
        ),
        ("GET", snap.clone(), json!(null), "viewer"),
        ("GET", "/api/v1/jobs".into(), json!(null), "viewer"),
        ("GET", "/api/v1/stats".into(), json!(null), "viewer"),
        ("GET", "/api/v1/metrics".into(), json!(null), "viewer"),
        ("GET", "/api/v1/openapi.json".into(), json!(null), "viewer"),
        ("GET", download, json!(null), "operator"),
        (
            "POST",
            "/api/v1/instances/app/pause".into(),
            json!({}),
            "operator",
        ),
        (
            "POST",
            "/api/v1/instances/app/resume".into(),
            json!({}),
            "operator",
        ),
        ("POST", "/api/v1/check".into(), json!({}), "operator"),
        (
            "POST",
            "/api/v1/instances".into(),
            json!({"name": "x", "paths": ["/nonexistent-x"]}),
            "admin",
        ),
        (
            "PUT",
            "/api/v1/instances/app".into(),
            json!({"paused": false}),
            "admin",
        ),
        (
            "POST",
            "/api/v1/instances/app/restore".into(),
            restore,
            "admin",
        ),
        ("DELETE", "/api/v1/instances/x".into(), json!(null), "admin"),
    ];
    let rank = |r: &str| {
        ["viewer", "operator", "admin"]
            .iter()
            .position(|x| *x == r)
            .unwrap()
    };
    let bad = "cairn_".to_string() + &"0".repeat(64);
    for (method, path, body, least) in &routes {
        let call = |tok: Option<&str>| match *method {
            "GET" => s.get(path, tok),
            "DELETE" => s.delete(path, tok),
            m => s.send(m, path, tok, body),
        };
        assert_eq!(call(None).0, 401, "{method} {path} without a token");
        assert_eq!(
            call(Some(&bad)).0,
            401,
            "{method} {path} with a wrong token"
        );
        for (role, tok) in [
            ("viewer", &t.viewer),
            ("operator", &t.operator),
            ("admin", &t.admin),
        ] {
            let (code, v) = call(Some(tok));
            if rank(role) < rank(least) {
                assert_eq!(code, 403, "{method} {path} as {role}: {v}");
            } else {
                assert!(
                    code != 401 && code != 403,
                    "{method} {path} as {role}: {code} {v}"
                );
            }
        }
    }
    // Health answers without a token, and says only ok or failing.
    let (code, h) = s.get("/api/v1/health", None);
    assert!(code == 200 || code == 503);
    assert_eq!(h.as_object().unwrap().len(), 1, "{h}");
    // A denied mutating call is recorded.
    let runs = ok(cairn(&repo).args(["log", "--json"]));
    assert!(
        runs.contains("api:restore:view") && runs.contains("denied"),
        "{runs}"
    );
    // A removed token stops working within seconds.
    ok(cairn(&repo).args(["token", "remove", "view"]));
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(s.get("/api/v1/instances", Some(&t.viewer)).0, 401);
}

/// An instance whose backups take a few seconds (a sleeping pre-hook): time to cancel or collide.
fn slow_instance(repo: &Path, src: &Path) {
    ok(cairn(repo)
        .args([
            "instance",
            "add",
            "app",
            "--priority",
            "manual",
            "--pre-hook",
            "sleep 3",
            "--path",
        ])
        .arg(src));
}

#[test]
fn serve_cancel_a_running_backup_writes_no_snapshot() {
    let (dir, repo) = new_repo();
    let t = tokens(&repo);
    let src = tree(dir.path());
    slow_instance(&repo, &src);
    let s = Server::start(&repo, &[]);
    let (code, job) = s.post("/api/v1/instances/app/backup", &t.operator, &json!({}));
    assert_eq!(code, 202, "{job}");
    let id = job["id"].as_str().unwrap();
    // A second backup of the same instance while one runs: 409.
    assert_eq!(
        s.post("/api/v1/instances/app/backup", &t.operator, &json!({}))
            .0,
        409
    );
    std::thread::sleep(Duration::from_millis(500));
    let (code, v) = s.delete(&format!("/api/v1/jobs/{id}"), Some(&t.operator));
    assert_eq!(code, 202, "{v}");
    let (done, _) = s.follow_job(id, &t.viewer);
    assert_eq!(done["status"], "cancelled", "{done}");
    assert!(done["snapshot_id"].is_null());
    let (_, snaps) = s.get("/api/v1/instances/app/snapshots", Some(&t.viewer));
    assert_eq!(snaps, json!([]));
    // A finished job cannot be cancelled again.
    assert_eq!(
        s.delete(&format!("/api/v1/jobs/{id}"), Some(&t.operator)).0,
        409
    );
    ok(cairn(&repo).arg("check"));
}

#[test]
fn serve_second_restore_of_an_instance_while_one_runs_gets_409() {
    let (dir, repo) = new_repo();
    let t = tokens(&repo);
    let src = tree(dir.path());
    slow_instance(&repo, &src);
    ok(cairn(&repo).args(["instance", "backup", "app"]));
    let s = Server::start(&repo, &[]);
    let body = json!({"in_place": true, "confirm": true});
    let (code, first) = s.post("/api/v1/instances/app/restore", &t.admin, &body);
    assert_eq!(code, 202, "{first}");
    let (code, second) = s.post("/api/v1/instances/app/restore", &t.admin, &body);
    assert_eq!(code, 409, "{second}");
    // The first one is not disturbed, and reports its steps on the way.
    let (done, seen) = s.follow_job(first["id"].as_str().unwrap(), &t.viewer);
    assert_eq!(done["status"], "completed", "{done}");
    assert!(
        seen.iter().any(|j| j["current_step"] == "safety snapshot"),
        "{seen:?}"
    );
    assert!(done["safety_snapshot_id"].is_string());
}

fn tar_gz(members: &[(&str, &[u8], tar::EntryType, &str)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, data, kind, link) in members {
        let mut h = tar::Header::new_old();
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn upload(s: &Server, token: &str, bytes: Vec<u8>, time: &str) -> (u16, Value) {
    use ureq::unversioned::multipart::{Form, Part};
    let form = Form::new()
        .text("time", time)
        .part("archive", Part::bytes(&bytes).file_name("backup.tar.gz"));
    Server::answer(
        s.agent
            .post(s.url("/api/v1/instances/app/import"))
            .header("Authorization", format!("Bearer {token}"))
            .send(form),
    )
}

fn leftovers(tmp: &Path) -> Vec<String> {
    fs::read_dir(tmp)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn serve_upload_oversize_413_hostile_rejected_legacy_imported_with_its_time() {
    let (dir, repo) = new_repo();
    let t = tokens(&repo);
    let src = tree(dir.path());
    ok(cairn(&repo)
        .args(["instance", "add", "app", "--priority", "manual", "--path"])
        .arg(&src));
    let tmp = dir.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let s = Server::start_with(&repo, &["--max-upload-mib", "1"], None, &[("TMPDIR", &tmp)]);

    // Over the limit: 413, and the partial upload is gone.
    let big = pseudo_random(2 << 20, 3);
    let (code, v) = upload(&s, &t.admin, big, "2020-01-02T03:04:05Z");
    assert_eq!(code, 413, "{v}");
    assert_eq!(leftovers(&tmp), Vec::<String>::new());
    // An operator may not upload.
    assert_eq!(
        upload(&s, &t.operator, vec![1], "2020-01-02T03:04:05Z").0,
        403
    );

    // Hostile members: `../`, absolute, through an escaping symlink. Rejected, nothing written outside.
    let outside = dir.path().join("outside");
    let abs = dir.path().join("abs-target");
    let depth = tmp.components().count() + 4;
    let up = "../".repeat(depth);
    let escape = format!(
        "{up}{}",
        outside.display().to_string().trim_start_matches('/')
    );
    for members in [
        vec![
            ("dump.sql", &b"select 1;"[..], tar::EntryType::Regular, ""),
            (escape.as_str(), b"x", tar::EntryType::Regular, ""),
        ],
        vec![
            ("dump.sql", &b"select 1;"[..], tar::EntryType::Regular, ""),
            (abs.to_str().unwrap(), b"x", tar::EntryType::Regular, ""),
        ],
        vec![
            ("dump.sql", &b"select 1;"[..], tar::EntryType::Regular, ""),
            (
                "link",
                b"",
                tar::EntryType::Symlink,
                dir.path().to_str().unwrap(),
            ),
            ("link/outside", b"x", tar::EntryType::Regular, ""),
        ],
    ] {
        let (code, job) = upload(&s, &t.admin, tar_gz(&members), "2020-01-02T03:04:05Z");
        assert_eq!(code, 202, "{job}");
        let (done, _) = s.follow_job(job["id"].as_str().unwrap(), &t.viewer);
        assert_eq!(done["status"], "failed", "{done}");
        assert!(
            done["error"].as_str().unwrap().contains("archive rejected"),
            "{done}"
        );
        assert!(!outside.exists() && !abs.exists());
        assert_eq!(
            s.get("/api/v1/instances/app/snapshots", Some(&t.viewer)).1,
            json!([])
        );
    }
    assert_eq!(
        leftovers(&tmp),
        Vec::<String>::new(),
        "uploads and extractions are cleaned up"
    );

    // A good legacy archive: imported, listed with its original time.
    let good = tar_gz(&[
        ("dump.sql", b"select 1;", tar::EntryType::Regular, ""),
        ("filestore/a.txt", b"legacy", tar::EntryType::Regular, ""),
    ]);
    let (code, job) = upload(&s, &t.admin, good, "2020-01-02T03:04:05Z");
    assert_eq!(code, 202, "{job}");
    let (done, _) = s.follow_job(job["id"].as_str().unwrap(), &t.viewer);
    assert_eq!(done["status"], "completed", "{done}");
    let (_, snaps) = s.get("/api/v1/instances/app/snapshots", Some(&t.viewer));
    assert_eq!(snaps[0]["id"], done["snapshot_id"]);
    let when = chrono::DateTime::parse_from_rfc3339(snaps[0]["time"].as_str().unwrap()).unwrap();
    assert_eq!(when.timestamp(), 1_577_934_245);
}

#[test]
fn serve_refuses_plain_http_on_a_non_loopback_address() {
    let (_dir, repo) = new_repo();
    let err = fails(
        cairn(&repo).args(["serve", "--listen", "0.0.0.0:0", "--no-schedule"]),
        2,
    );
    assert!(err.contains("--insecure-http"), "{err}");
}

#[test]
fn serve_dashboard_is_served_without_a_token_and_holds_no_data() {
    let (_dir, repo) = new_repo();
    let s = Server::start(&repo, &[]);
    let (code, page) = s.get("/", None);
    assert_eq!(code, 200);
    let page = page.as_str().unwrap().to_string();
    assert!(page.contains("<html") && page.contains("app.js"), "{page}");
    assert_eq!(s.get("/app.js", None).0, 200);
    assert_eq!(s.get("/style.css", None).0, 200);
}
