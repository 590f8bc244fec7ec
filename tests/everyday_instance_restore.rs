//! Issue 15: `instance restore` takes what `restore` takes (`--overwrite`, `--replace`, `--owner-acl`,
//! `--pg-conn`) and `--delete`, which removes files absent from the snapshot so that an in-place restore
//! returns the file tree to that point in time.

mod harness;

use std::fs;
use std::os::unix::fs::symlink;

use harness::*;

#[test]
fn instance_restore_delete_returns_the_tree_to_the_snapshot() {
    let (dir, repo) = new_repo();
    let data = dir.path().join("filestore");
    build_rich_tree(&data, 15);
    let pristine = dir.path().join("pristine");
    ok(std::process::Command::new("cp")
        .args(["-a"])
        .arg(&data)
        .arg(&pristine));
    ok(cairn(&repo)
        .args(["instance", "add", "app", "--priority", "manual", "--path"])
        .arg(&data));
    let b: serde_json::Value = serde_json::from_str(&ok(
        cairn(&repo).args(["--json", "instance", "backup", "app"])
    ))
    .unwrap();
    let id = b["snapshot_id"].as_str().unwrap().to_string();
    // After the backup: new files, a new directory, a changed file, and a symlink to outside data.
    fs::write(data.join("new.txt"), b"added later").unwrap();
    fs::create_dir_all(data.join("newdir/deeper")).unwrap();
    fs::write(data.join("newdir/deeper/x"), b"x").unwrap();
    let outside = dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("precious"), b"not ours").unwrap();
    symlink(&outside, data.join("link-out")).unwrap();

    // Without --delete the extra files stay.
    ok(cairn(&repo).args(["instance", "restore", "app", &id, "--in-place"]));
    assert!(data.join("new.txt").exists());
    // With --delete: exactly the snapshot's tree again; the symlink is removed, never followed.
    let v: serde_json::Value = serde_json::from_str(&ok(cairn(&repo).args([
        "--json",
        "instance",
        "restore",
        "app",
        &id,
        "--in-place",
        "--delete",
    ])))
    .unwrap();
    // A removed directory counts once.
    assert_eq!(v["deleted"], 3, "{v}");
    assert_eq!(fs::read(outside.join("precious")).unwrap(), b"not ours");
    assert!(!data.join("new.txt").exists());
    assert!(!data.join("newdir").exists());
    assert!(!data.join("link-out").exists());
    assert_same_tree(&pristine, &data);
}

#[test]
fn instance_restore_overwrite_and_delete_into_a_target() {
    let (dir, repo) = new_repo();
    let data = dir.path().join("files");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("a"), b"snapshot a").unwrap();
    ok(cairn(&repo)
        .args(["instance", "add", "app", "--priority", "manual", "--path"])
        .arg(&data));
    ok(cairn(&repo).args(["instance", "backup", "app"]));
    let t = dir.path().join("t");
    fs::create_dir_all(t.join("files")).unwrap();
    fs::write(t.join("files/a"), b"stale").unwrap();
    fs::write(t.join("files/extra"), b"extra").unwrap();
    // Existing files: refused without --overwrite, replaced with it.
    fails(
        cairn(&repo)
            .args(["instance", "restore", "app", "--target"])
            .arg(&t),
        1,
    );
    assert_eq!(fs::read(t.join("files/a")).unwrap(), b"stale");
    ok(cairn(&repo)
        .args(["instance", "restore", "app", "--overwrite", "--target"])
        .arg(&t));
    assert_eq!(fs::read(t.join("files/a")).unwrap(), b"snapshot a");
    assert!(t.join("files/extra").exists());
    ok(cairn(&repo)
        .args([
            "instance",
            "restore",
            "app",
            "--overwrite",
            "--delete",
            "--target",
        ])
        .arg(&t));
    assert!(!t.join("files/extra").exists());
    assert_same_tree(&data, &t.join("files"));
    // The database flags are accepted and need a database target.
    let (code, _, err) = run(cairn(&repo)
        .args(["instance", "restore", "app", "--replace", "--target"])
        .arg(&t));
    assert_eq!(code, 2, "{err}");
}

#[test]
fn instance_restore_takes_replace_and_pg_conn_for_the_database() {
    use harness::pg::{psql, with_pg, TempDb};
    let (_dir, repo) = new_repo();
    let pg = |args: &[&str]| {
        let mut c = with_pg(cairn(&repo));
        c.env_remove("CAIRN_TEST_PG").args(args);
        c
    };
    let src = TempDb::create("ir_src");
    psql(
        src.name(),
        "CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 50);",
    );
    ok(&mut pg(&[
        "instance",
        "add",
        "db",
        "--priority",
        "manual",
        "--pg",
        src.name(),
    ]));
    ok(&mut pg(&["instance", "backup", "db"]));
    let target = TempDb::create("ir_target");
    psql(target.name(), "CREATE TABLE other (y int);");
    // An existing database: refused without --replace, nothing changed.
    let err = fails(
        &mut pg(&["instance", "restore", "db", "--pg-target", target.name()]),
        1,
    );
    assert!(err.contains("already exists"), "{err}");
    // --pg-conn is used: a port nothing listens on fails to connect.
    let err = fails(
        &mut pg(&[
            "instance",
            "restore",
            "db",
            "--pg-target",
            target.name(),
            "--replace",
            "--pg-conn",
            "port=1",
        ]),
        1,
    );
    assert!(err.contains("postgres"), "{err}");
    assert_eq!(psql(target.name(), "SELECT count(*) FROM other"), "0");
    // --replace: a safety snapshot of the target, then the snapshot's database in its place.
    let v: serde_json::Value = serde_json::from_str(&ok(&mut pg(&[
        "--json",
        "instance",
        "restore",
        "db",
        "--pg-target",
        target.name(),
        "--replace",
    ])))
    .unwrap();
    assert!(v["database"]["safety_snapshot"].is_string(), "{v}");
    assert_eq!(
        psql(target.name(), "SELECT count(*), sum(x) FROM t"),
        "50|1275"
    );
    assert_eq!(
        psql(
            target.name(),
            "SELECT count(*) FROM pg_tables WHERE tablename = 'other'"
        ),
        "0"
    );
}
