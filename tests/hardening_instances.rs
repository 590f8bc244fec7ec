//! Hardening of instances (issue 11): in-place restores through symlinked paths (item 4), connection strings
//! holding passwords (7), snapshots dated in the future (8), the post-hook after a failed pre-hook (11), and
//! the lesser items (13: never-firing schedules, instance names everywhere, error prefixes, human times).
//! Everything runs through the real binary.

mod harness;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{Duration, SecondsFormat, Utc};
use harness::*;

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `cp -a`, which keeps nanosecond times, modes and hard links: the expected state of a tree.
fn copy_tree(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// The names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn snapshot_count(repo: &Path) -> usize {
    json(&ok(cairn(repo).args(["snapshots", "--json"])))
        .as_array()
        .unwrap()
        .len()
}

/// Damages a live filestore the way a bad deploy would: changed content, a deleted file, changed modes.
fn damage(live: &Path) {
    fs::write(live.join("docs/readme.txt"), b"overwritten by mistake").unwrap();
    fs::remove_file(live.join("store/00/file-00000")).unwrap();
    fs::remove_file(live.join("compressible.txt")).unwrap();
    fs::set_permissions(live.join("script.sh"), fs::Permissions::from_mode(0o777)).unwrap();
}

/// One symlink shape: sets up `<root>/app/<...>/filestore` (the path the instance names) and returns it with
/// the real directory holding the files.
fn shape(root: &Path, kind: &str) -> (PathBuf, PathBuf) {
    let real = root.join("data/fs-prod");
    fs::create_dir_all(&real).unwrap();
    fs::create_dir_all(root.join("app")).unwrap();
    let named = root.join("app/filestore");
    match kind {
        "relative" => symlink("../data/fs-prod", &named).unwrap(),
        "absolute" => symlink(&real, &named).unwrap(),
        "chain" => {
            symlink(&real, root.join("data/current")).unwrap();
            symlink("../data/current", &named).unwrap();
        }
        "parent-component" => {
            // The parent is a link too: app-live -> app, app/filestore -> ../data/fs-prod.
            symlink("../data/fs-prod", &named).unwrap();
            symlink("app", root.join("app-live")).unwrap();
            return (root.join("app-live/filestore"), real);
        }
        other => panic!("unknown shape {other}"),
    }
    (named, real)
}

#[test]
fn instance_restore_in_place_writes_through_symlinked_paths() {
    for kind in ["relative", "absolute", "chain", "parent-component"] {
        let (dir, repo) = new_repo();
        let root = dir.path().join("site");
        let (named, real) = shape(&root, kind);
        build_rich_tree(&real, 40);
        let expected = dir.path().join("expected");
        copy_tree(&real, &expected);
        ok(cairn(&repo).args(["instance", "add", "shop", "--path", s(&named)]));
        ok(cairn(&repo).args(["instance", "backup", "shop"]));
        let snap = json(&ok(cairn(&repo).args(["show", "latest", "--json"])));
        assert_eq!(
            snap["paths"],
            serde_json::json!([s(&named)]),
            "{kind}: backed up under the path the instance names"
        );
        let app_before = names(&root.join("app"));
        damage(&real);
        ok(cairn(&repo).args(["instance", "restore", "shop", "--in-place"]));
        assert_same_tree(&expected, &real);
        assert_eq!(
            names(&root.join("app")),
            app_before,
            "{kind}: nothing written beside the link"
        );
        assert!(
            fs::symlink_metadata(root.join("app/filestore"))
                .unwrap()
                .file_type()
                .is_symlink(),
            "{kind}: the link itself is kept"
        );
    }
}

#[test]
fn instance_restore_in_place_refuses_a_path_that_no_longer_resolves_to_what_was_backed_up() {
    for case in [
        "repointed",
        "dangling",
        "replaced-by-a-directory",
        "other-path",
    ] {
        let (dir, repo) = new_repo();
        let root = dir.path().join("site");
        let (named, real) = shape(&root, "relative");
        build_rich_tree(&real, 10);
        ok(cairn(&repo).args(["instance", "add", "shop", "--path", s(&named)]));
        ok(cairn(&repo).args(["instance", "backup", "shop"]));
        let staging = root.join("data/fs-staging");
        fs::create_dir_all(&staging).unwrap();
        fs::write(staging.join("staging-only"), b"staging").unwrap();
        match case {
            "repointed" => {
                fs::remove_file(&named).unwrap();
                symlink("../data/fs-staging", &named).unwrap();
            }
            "dangling" => {
                fs::remove_file(&named).unwrap();
                symlink("../data/gone", &named).unwrap();
            }
            "replaced-by-a-directory" => {
                fs::remove_file(&named).unwrap();
                fs::create_dir(&named).unwrap();
            }
            "other-path" => {
                ok(cairn(&repo).args(["instance", "set", "shop", "--path", s(&staging)]));
            }
            _ => unreachable!(),
        }
        let before: Vec<_> = [&real, &staging].iter().map(|d| snapshot_tree(d)).collect();
        let listings = (names(&root.join("app")), names(&root.join("data")));
        let snaps = snapshot_count(&repo);
        let err = fails(
            cairn(&repo).args(["instance", "restore", "shop", "--in-place"]),
            1,
        );
        assert!(
            err.contains("nothing was changed") && err.contains(s(&named))
                || case == "other-path" && err.contains("nothing was changed"),
            "{case}: {err}"
        );
        let after: Vec<_> = [&real, &staging].iter().map(|d| snapshot_tree(d)).collect();
        assert!(before == after, "{case}: files changed");
        assert_eq!(
            (names(&root.join("app")), names(&root.join("data"))),
            listings,
            "{case}"
        );
        assert_eq!(snapshot_count(&repo), snaps, "{case}: no safety snapshot");
    }
}

#[test]
fn instance_restore_in_place_still_restores_snapshots_that_recorded_the_resolved_path() {
    // Before the fix backups recorded the resolved path (`data/fs-prod`); a plain backup of the real
    // directory records exactly that, and must stay restorable in place through the instance's link.
    let (dir, repo) = new_repo();
    let root = dir.path().join("site");
    let (named, real) = shape(&root, "absolute");
    build_rich_tree(&real, 20);
    let expected = dir.path().join("expected");
    copy_tree(&real, &expected);
    ok(cairn(&repo).args(["backup", "--instance", "shop", s(&real)]));
    ok(cairn(&repo).args(["instance", "add", "shop", "--path", s(&named)]));
    damage(&real);
    let snap = json(&ok(cairn(&repo).args(["snapshots", "--json"])))[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    ok(cairn(&repo).args(["instance", "restore", "shop", &snap, "--in-place"]));
    assert_same_tree(&expected, &real);
    assert_eq!(names(&root.join("app")), ["filestore"]);
}

/// Every spelling of a password libpq accepts in a connection string (the value is always `hunter2`).
const PASSWORD_SPELLINGS: &[&str] = &[
    "host=127.0.0.1 port=1 password=hunter2",
    "host=127.0.0.1 port=1 password = hunter2",
    "host=127.0.0.1 port=1 password='hunter2'",
    "host=127.0.0.1 port=1 password='hun ter2 hunter2'",
    "host=127.0.0.1 port=1 PASSWORD=hunter2",
    "host=127.0.0.1 port=1 Password =hunter2",
    "password=hunter2",
    "postgresql://app:hunter2@127.0.0.1:1/db",
    "postgres://app:hunter2@127.0.0.1:1/db",
    "postgresql://app:hunter2@127.0.0.1:1,127.0.0.2:1/db",
    "postgresql://app:hunter2@127.0.0.1:1",
    "postgresql://app:hunter2@/db?host=/var/run/postgresql",
    "postgresql://app@127.0.0.1:1/db?password=hunter2",
    "postgresql://127.0.0.1:1/db?sslmode=disable&password=hunter2",
    "postgresql://127.0.0.1:1/db?pass%77ord=hunter2",
    "postgresql://127.0.0.1:1/db?%70assword=hunter2",
    "postgresql://app:hunter2%40x@127.0.0.1:1/db",
    "POSTGRESQL://app:hunter2@127.0.0.1:1/db",
];

fn assert_refused(err: &str, what: &str, conn: &str) {
    assert!(
        !err.contains("hunter2"),
        "{what} {conn:?}: the password is echoed: {err}"
    );
    assert!(
        err.contains("password") || err.contains("connection string"),
        "{what} {conn:?}: unclear refusal: {err}"
    );
}

#[test]
fn connection_strings_holding_a_password_are_refused_everywhere_and_never_echoed() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("files");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    ok(cairn(&repo).args(["backup", s(&src)]));
    ok(cairn(&repo).args([
        "instance",
        "add",
        "shop",
        "--pg",
        "shopdb",
        "--pg-conn",
        "host=127.0.0.1 port=1",
    ]));
    for conn in PASSWORD_SPELLINGS {
        let err = fails(
            cairn(&repo).args(["instance", "add", "x", "--pg", "db", "--pg-conn", conn]),
            1,
        );
        assert_refused(&err, "instance add", conn);
        let err = fails(
            cairn(&repo).args(["instance", "set", "shop", "--pg-conn", conn]),
            1,
        );
        assert_refused(&err, "instance set", conn);
        let err = fails(
            cairn(&repo).args(["backup", "--pg", "db", "--pg-conn", conn]),
            1,
        );
        assert_refused(&err, "backup --pg-conn", conn);
        assert!(err.contains("password"), "backup {conn:?}: {err}");
        let err = fails(
            cairn(&repo).args([
                "restore",
                "latest",
                "--pg-target",
                "newdb",
                "--pg-conn",
                conn,
            ]),
            1,
        );
        assert_refused(&err, "restore --pg-conn", conn);
        assert!(err.contains("password"), "restore {conn:?}: {err}");
    }
    assert_eq!(
        json(&ok(
            cairn(&repo).args(["instance", "show", "shop", "--json"])
        ))["pg_conn"],
        "host=127.0.0.1 port=1"
    );
    assert!(fails(cairn(&repo).args(["instance", "show", "x"]), 1).contains("no instance"));
    // Connection strings without a password stay accepted, whatever they look like.
    for conn in [
        "host=db.example port=5433 user=odoo",
        "postgresql://odoo@db.example:5433/odoo",
        "postgresql://db.example/odoo?application_name=cairn&connect_timeout=5",
        "host=localhost dbname=password_archive",
    ] {
        ok(cairn(&repo).args(["instance", "set", "shop", "--pg-conn", conn]));
    }
    for (object, _) in obj_list(&repo.join("instances")) {
        let everything = String::from_utf8_lossy(&obj_read(&object)).into_owned();
        assert!(!everything.contains("hunter2"));
    }
}

#[test]
fn an_instance_file_edited_to_hold_a_password_is_refused_and_never_printed() {
    // Plaintext: the file is edited by hand (an encrypted one refuses any edit: tests/encryption.rs).
    let (dir, repo) = new_plaintext_repo();
    let src = dir.path().join("files");
    fs::create_dir_all(&src).unwrap();
    ok(cairn(&repo).args([
        "instance",
        "add",
        "shop",
        "--pg",
        "shopdb",
        "--pg-conn",
        "host=127.0.0.1 port=1",
        "--path",
        s(&src),
    ]));
    for conn in [
        "postgresql://app:hunter2@127.0.0.1:1/shopdb",
        "host=127.0.0.1 port=1 password=hunter2",
    ] {
        // The instance's one stored revision (format-spec "Instance configurations").
        let (file, _) = obj_list(&repo.join("instances")).remove(0);
        let mut cfg = json(&String::from_utf8(obj_read(&file)).unwrap());
        cfg["pg_conn"] = serde_json::json!(conn);
        obj_write(&file, &serde_json::to_vec_pretty(&cfg).unwrap());
        // The file is the durable copy: `repair index` loads it into the index.
        let (_, out, err) = run(cairn(&repo).args(["repair", "index"]));
        assert!(!out.contains("hunter2") && !err.contains("hunter2"));
        for args in [
            &["instance", "show", "shop"][..],
            &["instance", "backup", "shop"],
            &["instance", "restore", "shop", "--target", "/tmp/never"],
        ] {
            let err = fails(cairn(&repo).args(args), 1);
            assert!(
                err.contains("password") && !err.contains("hunter2"),
                "{args:?}: {err}"
            );
        }
        for args in [
            &["instance", "list", "--json"][..],
            &["instance", "list"],
            &["log", "--json"],
            &["stats", "--json"],
            &["health", "--json"],
        ] {
            let (_, out, err) = run(cairn(&repo).args(args));
            assert!(
                !out.contains("hunter2") && !err.contains("hunter2"),
                "{args:?} printed the password: {out} {err}"
            );
        }
        // run-due refuses that instance (it is due: created long ago is not needed, it has never run),
        // and the run log does not hold the password either.
        let (_, out, err) = run(cairn(&repo).args(["run-due", "--json"]));
        assert!(!out.contains("hunter2") && !err.contains("hunter2"));
        // It can be repaired from the command line.
        ok(cairn(&repo).args([
            "instance",
            "set",
            "shop",
            "--pg-conn",
            "host=127.0.0.1 port=1",
        ]));
        ok(cairn(&repo).args(["instance", "show", "shop"]));
    }
}

fn rfc3339(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[test]
fn backup_times_in_the_future_are_refused_unless_forced() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("files");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    fs::write(src.join("dump.sql"), b"select 1;\n").unwrap();
    let archive = dir.path().join("old.tar.gz");
    let st = std::process::Command::new("tar")
        .arg("czf")
        .arg(&archive)
        .arg("-C")
        .arg(&src)
        .args(["dump.sql", "a"])
        .status()
        .unwrap();
    assert!(st.success());
    ok(cairn(&repo).args(["instance", "add", "shop", "--path", s(&src)]));
    for ahead in [
        "2262-04-12T00:00:00Z".to_string(),
        rfc3339(Utc::now() + Duration::hours(1)),
        rfc3339(Utc::now() + Duration::minutes(10)),
    ] {
        for args in [
            vec!["backup", "--time", &ahead, s(&src)],
            vec!["instance", "backup", "shop", "--time", &ahead],
            vec!["import-archive", "--time", &ahead, s(&archive)],
        ] {
            let err = fails(cairn(&repo).args(&args), 1);
            assert!(
                err.contains("future") && err.contains("--force-time"),
                "{args:?}: {err}"
            );
        }
    }
    assert_eq!(snapshot_count(&repo), 0, "nothing was written");
    // A little ahead (clock skew between hosts) is fine; anything with --force-time too.
    let near = rfc3339(Utc::now() + Duration::minutes(2));
    ok(cairn(&repo).args(["backup", "--time", &near, s(&src)]));
    ok(cairn(&repo).args(["instance", "backup", "shop", "--time", &near]));
    let far = "2262-04-12T00:00:00Z";
    ok(cairn(&repo).args(["backup", "--force-time", "--time", far, s(&src)]));
    ok(cairn(&repo).args(["instance", "backup", "shop", "--force-time", "--time", far]));
    ok(cairn(&repo)
        .args(["import-archive", "--force-time", "--time", far])
        .arg(&archive));
    assert_eq!(snapshot_count(&repo), 5);
}

#[test]
fn future_dated_snapshots_neither_freeze_the_schedule_nor_satisfy_health_nor_become_latest() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("files");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    ok(cairn(&repo).args([
        "instance",
        "add",
        "shop",
        "--path",
        s(&src),
        "--schedule",
        "0 * * * *",
    ]));
    let past = rfc3339(Utc::now() - Duration::days(2));
    ok(cairn(&repo).args(["instance", "backup", "shop", "--time", &past]));
    let far = "2262-04-12T00:00:00Z";
    ok(cairn(&repo).args(["instance", "backup", "shop", "--force-time", "--time", far]));

    // health: the newest trustworthy snapshot is two days old, an hourly schedule is overdue.
    let (code, out, err) = run(cairn(&repo).args(["health"]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("overdue"), "{out}");
    assert!(
        (out.clone() + &err).contains("future"),
        "a warning names the future snapshot: {out}{err}"
    );
    let (code, out, _) = run(cairn(&repo).args(["health", "--json"]));
    assert_eq!(code, 1);
    let h = json(&out);
    assert_eq!(h["healthy"], false);
    assert_eq!(h["instances"][0]["future_snapshots"], 1, "{h}");
    assert!(!h["instances"][0]["last_snapshot"]
        .as_str()
        .unwrap()
        .starts_with("2262"));

    // NEXT DUE does not hide behind the future snapshot.
    let list = ok(cairn(&repo).args(["instance", "list"]));
    assert!(!list.contains("2262"), "{list}");

    // `latest` is the newest snapshot that is not dated in the future.
    let latest = json(&ok(cairn(&repo).args(["show", "latest", "--json"])));
    assert!(
        !latest["time"].as_str().unwrap().starts_with("2262"),
        "{latest}"
    );

    // run-due runs the instance once, and then it is healthy.
    let due = json(&ok(cairn(&repo).args(["run-due", "--json"])));
    assert_eq!(due.as_array().unwrap().len(), 1, "{due}");
    assert_eq!(due[0]["instance"], "shop");
    let due = json(&ok(cairn(&repo).args(["run-due", "--json"])));
    assert!(due.as_array().unwrap().is_empty(), "{due}");
    let (code, out, err) = run(cairn(&repo).args(["health"]));
    assert_eq!(code, 0, "{out}{err}");
    // The future snapshot is still there, still named in a warning; it can be chosen by id.
    assert!((out + &err).contains("future"));
    assert_eq!(snapshot_count(&repo), 3);
}

#[test]
fn the_post_hook_runs_whenever_the_pre_hook_ran_and_the_run_is_recorded_failed_and_notified() {
    let (dir, repo) = new_repo();
    let d = dir.path();
    let src = d.join("files");
    fs::create_dir_all(&src).unwrap();
    let (pre, post, note) = (d.join("pre-ran"), d.join("post-ran"), d.join("note.json"));
    let add = |name: &str, pre_hook: &str, post_hook: &str, path: &Path| {
        ok(cairn(&repo).args([
            "instance",
            "add",
            name,
            "--path",
            s(path),
            "--pre-hook",
            pre_hook,
            "--post-hook",
            post_hook,
            "--notify",
            &format!("cat > {}", note.display()),
        ]));
    };
    let reset = || {
        for f in [&pre, &post, &note] {
            let _ = fs::remove_file(f);
        }
    };
    let touch_pre = format!("touch {}", pre.display());
    let touch_post = format!("touch {}", post.display());
    // 1. The pre-hook fails (it stopped the service, then failed): the post-hook restarts it.
    add(
        "pre-fails",
        &format!("{touch_pre}; exit 3"),
        &touch_post,
        &src,
    );
    // 2. The backup fails (its source is gone) after a successful pre-hook.
    let gone = d.join("gone");
    fs::create_dir_all(&gone).unwrap();
    add("backup-fails", &touch_pre, &touch_post, &gone);
    fs::remove_dir(&gone).unwrap();
    // 3. Both hooks fail: both failures are reported.
    add(
        "both-fail",
        &format!("{touch_pre}; exit 3"),
        &format!("{touch_post}; exit 5"),
        &src,
    );
    for (name, expect) in [
        ("pre-fails", vec!["pre hook"]),
        ("backup-fails", vec![s(&gone)]),
        ("both-fail", vec!["pre hook", "post hook"]),
    ] {
        reset();
        let err = fails(cairn(&repo).args(["instance", "backup", name]), 1);
        for e in expect {
            assert!(err.contains(e), "{name}: {err}");
        }
        assert!(pre.exists(), "{name}: the pre-hook ran");
        assert!(post.exists(), "{name}: the post-hook ran too");
        let notified = json(&fs::read_to_string(&note).unwrap());
        assert_eq!(notified["status"], "failed", "{name}");
        assert_eq!(notified["instance"], name);
        let log = json(&ok(cairn(&repo).args([
            "log",
            "--instance",
            name,
            "--json",
        ])));
        assert_eq!(log[0]["status"], "failed", "{name}");
    }
    assert_eq!(snapshot_count(&repo), 0);
}

#[test]
fn schedules_that_never_fire_are_refused() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("files");
    fs::create_dir_all(&src).unwrap();
    ok(cairn(&repo).args(["instance", "add", "shop", "--path", s(&src)]));
    for never in [
        "0 0 31 2 *",
        "0 0 30 2 *",
        "0 0 31 4 *",
        "0 0 31 6,9,11 *",
        "0 0 0 30 2 *",
    ] {
        let err = fails(
            cairn(&repo).args([
                "instance",
                "add",
                "x",
                "--path",
                s(&src),
                "--schedule",
                never,
            ]),
            1,
        );
        assert!(err.contains("never"), "{never}: {err}");
        let err = fails(
            cairn(&repo).args(["instance", "set", "shop", "--schedule", never]),
            1,
        );
        assert!(err.contains("never"), "{never}: {err}");
    }
    // Rare but real: Feb 29 fires every four years (eight across 2100).
    for rare in ["0 0 29 2 *", "0 0 31 1,2 *", "30 2 * * 0"] {
        ok(cairn(&repo).args(["instance", "set", "shop", "--schedule", rare]));
    }
    assert_eq!(
        json(&ok(cairn(&repo).args(["instance", "list", "--json"])))
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn instance_names_are_checked_wherever_one_is_given() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("files");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("dump.sql"), b"select 1;\n").unwrap();
    let archive = dir.path().join("old.tar.gz");
    let st = std::process::Command::new("tar")
        .arg("czf")
        .arg(&archive)
        .arg("-C")
        .arg(&src)
        .arg("dump.sql")
        .status()
        .unwrap();
    assert!(st.success());
    ok(cairn(&repo).args(["backup", s(&src)]));
    for bad in ["../../etc/x", "Upper", "a/b", "", "a b", &"x".repeat(65)] {
        let t = "2025-01-01T00:00:00Z";
        let commands: Vec<Vec<&str>> = vec![
            vec!["backup", "--instance", bad, s(&src)],
            vec![
                "import-archive",
                "--instance",
                bad,
                "--time",
                t,
                s(&archive),
            ],
            vec!["snapshots", "--instance", bad],
            vec!["ls", "latest", "--instance", bad],
            vec!["dump", "latest", "dump.sql", "--instance", bad],
            vec![
                "restore",
                "latest",
                "--target",
                "/tmp/never",
                "--instance",
                bad,
            ],
            vec!["forget", "--instance", bad, "--keep-last", "1"],
            vec!["log", "--instance", bad],
            vec!["stats", "--instance", bad],
            vec!["instance", "add", bad, "--path", s(&src)],
            vec!["instance", "backup", bad],
            vec!["instance", "restore", bad, "--target", "/tmp/never"],
            vec!["instance", "show", bad],
            vec!["instance", "set", bad, "--keep-last", "3"],
            vec!["instance", "pause", bad],
            vec!["instance", "resume", bad],
            vec!["instance", "remove", bad],
        ];
        for args in commands {
            let err = fails(cairn(&repo).args(&args), 1);
            assert!(err.contains("instance name"), "{args:?}: {err}");
        }
    }
    assert_eq!(snapshot_count(&repo), 1, "nothing was written");
}

#[test]
fn error_messages_name_a_path_once_and_prefixes_once() {
    if local_only("a repository directory made read-only by chmod") {
        return;
    }
    // A repository directory the user cannot write: the temporary file's path must not follow the
    // directory's in the message.
    let (dir, repo) = new_repo();
    let src = dir.path().join("files");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    let chown = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(chown.success());
    fs::set_permissions(repo.join("snapshots"), fs::Permissions::from_mode(0o555)).unwrap();
    let mut cmd = cairn_as_nobody_in(dir.path(), &repo, &["backup", s(&src)]);
    let (code, _, err) = run(&mut cmd);
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped the unprivileged half: not running as root, cannot switch user");
    } else {
        assert_eq!(code, 1, "{err}");
        let line = err.lines().find(|l| l.contains("error")).unwrap();
        assert_eq!(line.matches("snapshots").count(), 1, "{line}");
        assert!(!line.contains("at path"), "{line}");
        assert!(line.contains("Permission denied"), "{line}");
    }
}

#[test]
fn next_due_and_other_human_times_print_to_the_second() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("files");
    fs::create_dir_all(&src).unwrap();
    ok(cairn(&repo).args([
        "instance",
        "add",
        "shop",
        "--path",
        s(&src),
        "--schedule",
        "*/10 * * * *",
    ]));
    ok(cairn(&repo).args(["instance", "backup", "shop"]));
    let fraction = |s: &str| {
        s.as_bytes().windows(5).any(|w| {
            w[0] == b':'
                && w[1..3].iter().all(u8::is_ascii_digit)
                && w[3] == b'.'
                && w[4].is_ascii_digit()
        })
    };
    let list = json(&ok(cairn(&repo).args(["instance", "list", "--json"])));
    for field in ["next_due", "last_snapshot"] {
        let t = list[0][field].as_str().unwrap();
        assert!(!fraction(t), "{field}: {t}");
    }
    for args in [&["instance", "list"][..], &["log"], &["stats"], &["health"]] {
        let out = ok(cairn(&repo).args(args));
        // A fraction of a second would show as `:SS.` followed by digits.
        assert!(!fraction(&out), "{args:?}: {out}");
    }
}

#[test]
fn a_failed_database_restore_says_postgres_once() {
    // A `.dump` stream that pg_restore cannot read: the restore fails, drops the database it created, and
    // says so in one message whose kind prefix appears once.
    let (dir, repo) = new_repo();
    let garbage = dir.path().join("x.dump");
    fs::write(&garbage, b"this is not a pg_dump archive\n").unwrap();
    let out = ok(cairn(&repo)
        .args(["backup", "--json", "--stdin", "--stdin-name", "x.dump"])
        .stdin(fs::File::open(&garbage).unwrap()));
    let id = json(&out)["snapshot_id"].as_str().unwrap().to_string();
    let target = harness::pg::TempDb::reserve("cairn_prefix");
    let err = fails(
        harness::pg::with_pg(cairn(&repo)).args(["restore", &id, "--pg-target", target.name()]),
        1,
    );
    assert!(err.contains("pg_restore"), "{err}");
    assert!(err.contains("dropped again"), "{err}");
    assert_eq!(err.matches("postgres:").count(), 1, "{err}");
    assert!(!target.exists());
}

#[test]
fn restore_delete_from_a_partial_snapshot_is_refused_and_removes_nothing() {
    if local_only("about unreadable source files; the repository's kind plays no part")
        || unsafe { libc::geteuid() } != 0
    {
        return; // needs root to make a file that the restoring user may not read but may unlink
    }
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let live = dir.path().join("live");
    fs::create_dir_all(&live).unwrap();
    // `nobody` may write the directory (so it may unlink anything in it) but not read `secret`.
    fs::set_permissions(&live, fs::Permissions::from_mode(0o777)).unwrap();
    fs::write(live.join("readable"), b"fine").unwrap();
    fs::write(live.join("secret"), b"exists, but no snapshot can hold it").unwrap();
    fs::set_permissions(live.join("secret"), fs::Permissions::from_mode(0o000)).unwrap();
    let repo = dir.path().join("repo");
    ok(&mut cairn_as_nobody_in(dir.path(), &repo, &["init"]));
    ok(&mut cairn_as_nobody_in(
        dir.path(),
        &repo,
        &[
            "instance",
            "add",
            "web",
            "--path",
            s(&live),
            "--priority",
            "manual",
        ],
    ));
    let (code, _, err) = run(&mut cairn_as_nobody_in(
        dir.path(),
        &repo,
        &["instance", "backup", "web"],
    ));
    assert_eq!(code, 3, "a partial snapshot: {err}");
    fs::write(live.join("readable"), b"changed since").unwrap();

    // Into a target holding the same unreadable file, and in place.
    let target = dir.path().join("target");
    fs::create_dir_all(&target).unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o777)).unwrap();
    fs::copy(live.join("secret"), target.join("secret")).unwrap();
    for how in [
        vec!["--target", s(&target), "--overwrite"],
        vec!["--in-place"],
    ] {
        let mut args = vec!["instance", "restore", "web", "--delete"];
        args.extend(&how);
        let (code, out, err) = run(&mut cairn_as_nobody_in(dir.path(), &repo, &args));
        assert_eq!(code, 1, "{how:?} --delete is refused\n{out}\n{err}");
        assert!(
            err.contains("partial") && !err.contains("panicked"),
            "{err}"
        );
        assert!(live.join("secret").exists() && target.join("secret").exists());
        assert_eq!(
            fs::read(live.join("readable")).unwrap(),
            b"changed since",
            "nothing changed"
        );
    }
    // Without --delete the readable files are restored exactly; the unreadable one is left alone.
    ok(&mut cairn_as_nobody_in(
        dir.path(),
        &repo,
        &["instance", "restore", "web", "--in-place"],
    ));
    assert_eq!(fs::read(live.join("readable")).unwrap(), b"fine");
    assert_eq!(
        fs::read(live.join("secret")).unwrap(),
        b"exists, but no snapshot can hold it"
    );

    // A complete snapshot, then a file that `nobody` may not read appears: the safety snapshot of an
    // in-place --delete cannot hold it, so the restore stops before removing it.
    fs::set_permissions(live.join("secret"), fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out, err) = run(&mut cairn_as_nobody_in(
        dir.path(),
        &repo,
        &["instance", "backup", "web", "--json"],
    ));
    assert_eq!(code, 0, "{out}\n{err}");
    let complete = json(&out)["snapshot_id"].as_str().unwrap().to_string();
    fs::write(live.join("later"), b"new, unreadable to nobody").unwrap();
    fs::set_permissions(live.join("later"), fs::Permissions::from_mode(0o000)).unwrap();
    let (code, out, err) = run(&mut cairn_as_nobody_in(
        dir.path(),
        &repo,
        &[
            "instance",
            "restore",
            "web",
            &complete,
            "--in-place",
            "--delete",
        ],
    ));
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("safety snapshot") && err.contains("partial"),
        "{err}"
    );
    assert_eq!(
        fs::read(live.join("later")).unwrap(),
        b"new, unreadable to nobody"
    );
}
