//! Encryption at rest (issue 13, format-spec section 13), through the real binary: nothing readable in the
//! repository, a wrong or missing password stops everything with exit 12 before anything is written, a flipped
//! bit in any sealed object is corruption, a forged instance configuration never runs its hooks, and key
//! rotation keeps every snapshot restorable with the new password only.

mod harness;

use std::fs;
use std::path::{Path, PathBuf};

use harness::pg::{psql, with_pg, TempDb};
use harness::*;

const MARKERS: [&str; 4] = [
    "ZQXMARKERcontentZQX",
    "ZQXMARKERfilenameZQX",
    "zqxmarkertablezqx",
    "ZQXMARKERdirZQX",
];

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Markers (and the source's file names) that appear in the clear in any file of `repo`.
fn visible(repo: &Path, names: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (path, bytes) in files_under(repo) {
        for m in MARKERS
            .iter()
            .map(|m| m.to_string())
            .chain(names.iter().cloned())
        {
            let rel = path.to_string_lossy().into_owned();
            if contains(&bytes, m.as_bytes()) || rel.contains(&m) {
                found.push(format!("{m} in {rel}"));
            }
        }
    }
    found
}

/// A tree whose file contents, file names and directory names hold the markers; returns its file names.
fn marked_tree(src: &Path) -> Vec<String> {
    let dir = src.join(MARKERS[3]);
    fs::create_dir_all(&dir).unwrap();
    // Random bytes around the marker: zstd does not shrink it, so a plaintext pack would hold it as is.
    let mut content = pseudo_random(100_000, 3);
    content.splice(50_000..50_000, MARKERS[0].bytes());
    fs::write(dir.join(format!("{}.pdf", MARKERS[1])), &content).unwrap();
    fs::write(
        src.join("contract-signed-by-acme.txt"),
        format!("text {}", MARKERS[0]),
    )
    .unwrap();
    vec![
        format!("{}.pdf", MARKERS[1]),
        "contract-signed-by-acme.txt".into(),
    ]
}

#[test]
fn no_marker_of_a_tree_and_a_pg_dump_is_readable_in_the_repository() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    let names = marked_tree(&src);
    ok(cairn(&repo).args(["instance", "add", "shop", "--path", src.to_str().unwrap()]));
    backup_json(&repo, &[src.to_str().unwrap()]);
    let db = TempDb::create("crypt");
    psql(
        db.name(),
        &format!(
            "CREATE TABLE {t} (note text); INSERT INTO {t} SELECT '{c}' || g FROM generate_series(1, 2000) g;",
            t = MARKERS[2],
            c = MARKERS[0]
        ),
    );
    ok(with_pg(cairn(&repo)).args(["backup", "--pg", db.name(), src.to_str().unwrap()]));
    let found = visible(&repo, &names);
    assert!(found.is_empty(), "readable in the repository: {found:?}");
    // And it all comes back.
    let out = dir.path().join("out");
    ok(cairn(&repo).args(["restore", "latest", "--target", out.to_str().unwrap()]));
    assert_same_tree(&src, &out.join("src"));

    // The same tree in a plaintext repository shows the markers: the search above can see them.
    let plain = dir.path().join("plain");
    ok(cairn(&plain).args(["init", "--insecure-no-encryption"]));
    backup_json(&plain, &[src.to_str().unwrap()]);
    assert!(
        !visible(&plain, &names).is_empty(),
        "the search finds nothing even in plaintext"
    );
}

/// Either cipher (format-spec 13.3), chosen by name: nothing readable, a byte-for-byte restore, a verified
/// read of every blob, a flipped bit refused, and `copy` from a repository of one cipher into one of the
/// other (each blob opened under one and sealed under the other) restores the same tree.
#[test]
fn each_cipher_hides_restores_and_copies_into_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let names = marked_tree(&src);
    let mut repos = Vec::new();
    for (cipher, config_name) in [
        ("xaes-256-gcm", "xaes256gcm"),
        ("xchacha20-poly1305", "xchacha20poly1305"),
    ] {
        let repo = dir.path().join(cipher);
        let out = ok(cairn(&repo).args(["init", "--json", "--cipher", cipher]));
        let init: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(init["cipher"], config_name);
        let config = fs::read_to_string(repo.join("config")).unwrap();
        assert!(
            config.contains(&format!("\"aead\": \"{config_name}\"")),
            "{config}"
        );
        backup_json(&repo, &[src.to_str().unwrap()]);
        let found = visible(&repo, &names);
        assert!(found.is_empty(), "{cipher}: readable: {found:?}");
        let out = dir.path().join(format!("out-{cipher}"));
        ok(cairn(&repo).args(["restore", "latest", "--target", out.to_str().unwrap()]));
        assert_same_tree(&src, &out.join("src"));
        ok(cairn(&repo).args(["check", "--read-data"]));
        repos.push(repo);
    }
    let (xaes, xchacha) = (&repos[0], &repos[1]);
    ok(cairn(xchacha).args(["copy", "--from-repo", xaes.to_str().unwrap()]));
    let copied = dir.path().join("copied");
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&ok(cairn(xchacha).args(["snapshots", "--json"]))).unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    for (i, snap) in listed.iter().enumerate() {
        let t = copied.join(i.to_string());
        let id = snap["id"].as_str().unwrap();
        ok(cairn(xchacha).args(["restore", id, "--target", t.to_str().unwrap()]));
        assert_same_tree(&src, &t.join("src"));
    }
    ok(cairn(xchacha).args(["check", "--read-data"]));

    // A config whose cipher someone changed (it is plaintext) opens nothing and lets no data be written:
    // each cipher has a key of its own. (Only the failed runs' run-log records are written, which the
    // honest config then cannot open and the run log passes over, as any damaged record.)
    let config = repos[1].join("config");
    let honest = fs::read_to_string(&config).unwrap();
    fs::write(&config, honest.replace("xchacha20poly1305", "xaes256gcm")).unwrap();
    let before = files_under(xchacha);
    for args in [
        &["check"][..],
        &["backup", src.to_str().unwrap()],
        &[
            "restore",
            "latest",
            "--target",
            dir.path().join("never").to_str().unwrap(),
        ],
    ] {
        let (code, out, err) = run(cairn(xchacha).args(args));
        assert_ne!(code, 0, "{args:?}: {out}{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            format!("{out}{err}").contains("does not authenticate"),
            "{args:?}: {out}{err}"
        );
    }
    let after = files_under(xchacha);
    let new: Vec<_> = after
        .keys()
        .filter(|p| !before.contains_key(*p))
        .filter(|p| !p.starts_with("locks") && !p.starts_with("runs"))
        .collect();
    assert!(
        new.is_empty(),
        "data written under the changed config: {new:?}"
    );
    assert!(!dir.path().join("never").join("src").exists());
    // Back to the honest config, a check that reads every pack disproves what the failed runs recorded as
    // damaged, and the repository is whole.
    fs::write(&config, honest).unwrap();
    ok(cairn(xchacha).args(["check", "--read-data"]));
    ok(cairn(xchacha).args(["check"]));

    flip(&packs(xaes)[0], 100);
    let (code, out, err) = run(cairn(xaes).args(["check", "--read-data"]));
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("does not authenticate"),
        "{out}{err}"
    );
}

#[test]
fn a_wrong_or_missing_password_exits_12_writes_nothing_and_leaves_no_lock() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    build_rich_tree(&src, 5);
    let id = backup_json(&repo, &[src.to_str().unwrap()])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let cache = index_file(&repo).parent().unwrap().to_path_buf();
    let before = (files_under(&repo), files_under(&cache));
    let target = dir.path().join("t");
    let bad_file = dir.path().join("bad-password");
    fs::write(&bad_file, "not the password\n").unwrap();
    let commands: Vec<Vec<&str>> = vec![
        vec!["backup", src.to_str().unwrap()],
        vec!["snapshots"],
        vec!["restore", &id, "--target", target.to_str().unwrap()],
        vec!["check", "--read-data"],
        vec!["forget", "--keep-last", "0"],
        vec!["prune"],
        vec!["repair", "index"],
        vec!["instance", "add", "x", "--path", src.to_str().unwrap()],
        vec![
            "key",
            "add",
            "--new-password-file",
            bad_file.to_str().unwrap(),
        ],
        vec!["key", "list"],
    ];
    for args in &commands {
        // Wrong: by the variable, by a file, by a command; missing: none at all.
        let mut wrong = cairn(&repo);
        wrong.env("CAIRN_PASSWORD", "wrong").args(args);
        let mut by_file = cairn(&repo);
        by_file.arg("--password-file").arg(&bad_file).args(args);
        let mut by_command = cairn(&repo);
        by_command
            .args(["--password-command", "echo nope"])
            .args(args);
        let mut missing = cairn(&repo);
        missing.env_remove("CAIRN_PASSWORD").args(args);
        for (how, cmd) in [
            ("wrong", &mut wrong),
            ("file", &mut by_file),
            ("command", &mut by_command),
            ("missing", &mut missing),
        ] {
            let err = fails(cmd, 12);
            assert_eq!(err.lines().count(), 1, "{how} {args:?}: {err}");
            assert!(err.contains("password"), "{how} {args:?}: {err}");
        }
    }
    assert!(
        !target.exists(),
        "a restore with a wrong password wrote files"
    );
    assert_eq!(
        (files_under(&repo), files_under(&cache)),
        before,
        "something was written"
    );
    assert!(fs::read_dir(repo.join("locks")).unwrap().next().is_none());
    // A failing password command is a missing password too.
    let err = fails(
        cairn(&repo).args(["--password-command", "exit 3", "snapshots"]),
        12,
    );
    assert!(err.contains("password command"), "{err}");
    // `init` without a password creates nothing.
    let none = dir.path().join("none");
    fails(cairn(&none).env_remove("CAIRN_PASSWORD").arg("init"), 12);
    assert!(!none.exists());
    // The right password still works.
    ok(cairn(&repo).args(["check", "--read-data"]));
}

/// Flips one bit in the middle of `path`'s byte range `[from, to)`.
fn flip(path: &Path, at: usize) {
    let mut b = fs::read(path).unwrap();
    b[at] ^= 0x10;
    fs::write(path, b).unwrap();
}

fn only_file(dir: &Path) -> PathBuf {
    let mut all: Vec<PathBuf> = files_under(dir).into_keys().collect();
    assert_eq!(all.len(), 1, "{all:?}");
    dir.join(all.pop().unwrap())
}

#[test]
fn a_flipped_bit_in_any_encrypted_object_is_reported_as_corruption() {
    type Damage = fn(&Path);
    let kinds: [(&str, Damage, &[&str], &str); 5] = [
        (
            "pack blob",
            |repo| {
                let p = packs(repo).into_iter().next().unwrap();
                flip(&p, 100);
            },
            &["check", "--read-data"],
            "does not authenticate",
        ),
        (
            "pack trailer",
            |repo| {
                let p = packs(repo).into_iter().next().unwrap();
                let len = fs::metadata(&p).unwrap().len() as usize;
                flip(&p, len - 48 - 30);
            },
            &["repair", "index"],
            "pack trailer",
        ),
        (
            "snapshot",
            |repo| flip(&only_file(&repo.join("snapshots")), 40),
            &["check"],
            "snapshots/",
        ),
        (
            "index object",
            |repo| {
                let objects: Vec<PathBuf> = files_under(&repo.join("index")).into_keys().collect();
                flip(&repo.join("index").join(&objects[0]), 30);
                // A fresh cache reads the objects again.
                let _ = fs::remove_dir_all(index_file(repo).parent().unwrap());
            },
            &["check"],
            "index/",
        ),
        (
            "instance configuration",
            |repo| flip(&only_file(&repo.join("instances")), 30),
            &["instance", "list"],
            "instances/shop.",
        ),
    ];
    for (what, damage, args, says) in kinds {
        let (dir, repo) = new_repo();
        let src = dir.path().join("src");
        build_rich_tree(&src, 3);
        ok(cairn(&repo).args(["instance", "add", "shop", "--path", src.to_str().unwrap()]));
        backup_json(&repo, &[src.to_str().unwrap()]);
        damage(&repo);
        let (code, out, err) = run(cairn(&repo).args(args));
        assert_ne!(code, 0, "{what}: {args:?} passed\n{out}\n{err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        let all = format!("{out}{err}");
        assert!(
            all.contains("corrupt"),
            "{what}: not reported as corruption: {all}"
        );
        assert!(all.contains(says), "{what}: does not name it: {all}");
    }
}

#[test]
fn an_instance_configuration_written_without_the_key_is_refused_and_its_hooks_never_run() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    build_rich_tree(&src, 2);
    ok(cairn(&repo).args(["instance", "add", "shop", "--path", src.to_str().unwrap()]));
    let shown = ok(cairn(&repo).args(["instance", "show", "shop", "--json"]));
    let mut cfg: serde_json::Value = serde_json::from_str(&shown).unwrap();
    // Someone who can write the bucket but has no key plants a configuration with a hook.
    let planted = dir.path().join("hook-ran");
    cfg["pre_hook"] = serde_json::json!(format!("touch {}", planted.display()));
    cfg["schedule"] = serde_json::json!("* * * * *");
    // Planted as the newest revision (format-spec 8.2: a higher generation wins), in the clear.
    let real = only_file(&repo.join("instances"));
    let name = real.file_name().unwrap().to_str().unwrap().to_string();
    let mut parts: Vec<&str> = name.split('.').collect();
    let newer = format!("{:0width$}", 9, width = parts[1].len());
    parts[1] = &newer;
    let object = repo.join("instances").join(parts.join("."));
    fs::write(&object, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let _ = fs::remove_dir_all(index_file(&repo).parent().unwrap());
    // Reported as corruption, naming it ...
    let (code, out, err) = run(cairn(&repo).args(["instance", "list"]));
    assert_ne!(code, 0, "{out}{err}");
    assert!(format!("{out}{err}").contains("corrupt"), "{out}{err}");
    // ... and never used: backups run with the last configuration written with the key.
    let _ = run(cairn(&repo).args(["instance", "backup", "shop"]));
    let _ = run(cairn(&repo).arg("run-due"));
    assert!(!planted.exists(), "the planted hook ran");
}

#[test]
fn key_rotation_keeps_every_snapshot_restorable_with_the_new_password_only() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    build_rich_tree(&src, 4);
    let first = backup_json(&repo, &[src.to_str().unwrap()])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    fs::write(src.join("later.bin"), pseudo_random(300_000, 9)).unwrap();
    let second = backup_json(&repo, &[src.to_str().unwrap()])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let keys = |pw: &str| -> Vec<serde_json::Value> {
        let out = ok(cairn(&repo)
            .env("CAIRN_PASSWORD", pw)
            .args(["key", "list", "--json"]));
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["keys"]
            .as_array()
            .unwrap()
            .clone()
    };
    let original = keys(PASSWORD)[0]["id"].as_str().unwrap().to_string();
    // Never the last key, never the one in use.
    let err = fails(cairn(&repo).args(["key", "remove", &original]), 1);
    assert!(err.contains("opened the repository"), "{err}");

    let new_pw = dir.path().join("new-password");
    fs::write(&new_pw, "a new passphrase\n").unwrap();
    ok(cairn(&repo).args([
        "key",
        "add",
        "--new-password-file",
        new_pw.to_str().unwrap(),
    ]));
    let listed = keys("a new passphrase");
    assert_eq!(listed.len(), 2);
    let current: Vec<bool> = listed.iter().map(|k| k["current"] == true).collect();
    assert_eq!(current.iter().filter(|c| **c).count(), 1);
    ok(cairn(&repo)
        .env("CAIRN_PASSWORD", "a new passphrase")
        .args(["key", "remove", &original[..10]]));
    assert_eq!(keys("a new passphrase").len(), 1);
    let err = fails(
        cairn(&repo)
            .env("CAIRN_PASSWORD", "a new passphrase")
            .args([
                "key",
                "remove",
                keys("a new passphrase")[0]["id"].as_str().unwrap(),
            ]),
        1,
    );
    assert!(
        err.contains("opened the repository") || err.contains("last key"),
        "{err}"
    );

    for id in [&first, &second] {
        let t = dir.path().join(format!("t-{id}"));
        ok(cairn(&repo).arg("--password-file").arg(&new_pw).args([
            "restore",
            id,
            "--target",
            t.to_str().unwrap(),
        ]));
        let wrong = dir.path().join(format!("w-{id}"));
        fails(
            cairn(&repo).args(["restore", id, "--target", wrong.to_str().unwrap()]),
            12,
        );
        assert!(!wrong.exists());
    }
    assert_same_tree(&src, &dir.path().join(format!("t-{second}")).join("src"));

    // passwd: the new password works, the one it replaced does not.
    let third = dir.path().join("third");
    fs::write(&third, "third passphrase").unwrap();
    ok(cairn(&repo)
        .env("CAIRN_PASSWORD", "a new passphrase")
        .args([
            "key",
            "passwd",
            "--new-password-file",
            third.to_str().unwrap(),
        ]));
    fails(
        cairn(&repo)
            .env("CAIRN_PASSWORD", "a new passphrase")
            .arg("snapshots"),
        12,
    );
    ok(cairn(&repo)
        .env("CAIRN_PASSWORD", "third passphrase")
        .args(["check", "--read-data"]));
}
