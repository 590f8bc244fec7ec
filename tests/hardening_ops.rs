//! Hardening of everyday operations that can destroy data by mistake: retention policies that keep nothing
//! or are misled by a snapshot dated in the future, in-place restores whose safety snapshot could not
//! copy what they would replace, and restores into the repository itself. Everything runs through the real
//! binary.

mod harness;

use std::fs;
use std::path::Path;

use chrono::{Duration, SecondsFormat, Utc};
use harness::*;

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn rfc3339(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Every snapshot id, sorted.
fn ids(repo: &Path) -> Vec<String> {
    let v = json(&ok(cairn(repo).args(["snapshots", "--json"])));
    let mut ids: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// An instance `shop` over one directory, with an hourly schedule and `retention` as its policy.
fn shop(dir: &Path, repo: &Path, retention: &[&str]) {
    let src = dir.join("files");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"a").unwrap();
    let mut args = vec![
        "instance",
        "add",
        "shop",
        "--path",
        s(&src),
        "--schedule",
        "0 * * * *",
    ];
    args.extend(retention);
    ok(cairn(repo).args(&args));
}

fn backup_at(repo: &Path, time: &str, force: bool) -> String {
    let mut args = vec!["instance", "backup", "shop", "--json", "--time", time];
    if force {
        args.push("--force-time");
    }
    json(&ok(cairn(repo).args(&args)))["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn retention_never_forgets_the_newest_real_snapshot_because_one_is_dated_in_the_future() {
    let (dir, repo) = new_repo();
    shop(dir.path(), &repo, &["--keep-last", "1"]);
    let old = backup_at(&repo, &rfc3339(Utc::now() - Duration::days(40)), false);
    let newest = backup_at(&repo, &rfc3339(Utc::now() - Duration::hours(3)), false);
    let future = backup_at(&repo, "2262-04-12T00:00:00Z", true);

    // Every kind of rule, one slot each: the future snapshot takes none and anchors nothing.
    for rule in [
        ["--keep-last", "1"],
        ["--keep-hourly", "1"],
        ["--keep-daily", "1"],
        ["--keep-weekly", "1"],
        ["--keep-monthly", "1"],
        ["--keep-yearly", "1"],
        ["--keep-within", "1d"],
    ] {
        let mut args = vec!["forget", "--dry-run", "--json", "--instance", "shop"];
        args.extend(rule);
        let v = json(&ok(cairn(&repo).args(&args)));
        let decisions = v["groups"][0]["decisions"].as_array().unwrap();
        let verdict = |id: &str| {
            decisions
                .iter()
                .find(|d| d["id"] == id)
                .unwrap_or_else(|| panic!("{id} not judged: {v}"))
                .clone()
        };
        assert_eq!(verdict(&newest)["keep"], true, "{rule:?}: {v}");
        assert_eq!(verdict(&future)["keep"], true, "{rule:?}: {v}");
        assert!(
            verdict(&future)["reasons"][0]
                .as_str()
                .unwrap()
                .contains("future"),
            "{v}"
        );
        assert_eq!(verdict(&old)["keep"], false, "{rule:?}: {v}");
    }

    // For real, by the instance's own retention after a scheduled run: the backup just taken stays.
    let due = json(&ok(cairn(&repo).args(["run-due", "--json"])));
    let taken = due[0]["snapshot_id"].as_str().unwrap().to_string();
    let left = ids(&repo);
    assert!(
        left.contains(&taken),
        "the new backup was forgotten: {left:?}"
    );
    assert!(left.contains(&future), "{left:?}");
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn forget_refuses_a_policy_that_would_remove_every_snapshot_and_changes_nothing() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("data");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    for day in ["2026-01-01 10:00", "2026-01-02 10:00"] {
        backup_json(&repo, &[s(&src), "--time", day]);
    }
    shop(dir.path(), &repo, &[]);
    backup_at(&repo, "2026-01-03T10:00:00Z", false);
    let before = ids(&repo);
    let zero = "0";
    let refused: Vec<Vec<&str>> = vec![
        vec![],
        vec!["--keep-last", zero],
        vec![
            "--keep-last",
            zero,
            "--keep-hourly",
            zero,
            "--keep-daily",
            zero,
            "--keep-weekly",
            zero,
            "--keep-monthly",
            zero,
            "--keep-yearly",
            zero,
        ],
        vec!["--keep-within", "0s"],
        vec!["--keep-within", "forever"],
        vec!["--keep-within", "-1d"],
        vec!["--keep-daily", "-1"],
        vec!["--keep-tag", "no-such-tag"],
        vec!["--keep-tag", "no-such-tag", "--keep-last", zero],
        vec!["--instance", "shop", "--keep-last", zero],
    ];
    for policy in refused {
        for dry in [false, true] {
            let mut args = vec!["forget"];
            args.extend(&policy);
            if dry {
                args.push("--dry-run");
            }
            let (code, out, err) = run(cairn(&repo).args(&args));
            assert_ne!(code, 0, "{args:?} was accepted: {out}");
            assert!(!err.contains("panicked"), "{err}");
            assert_eq!(ids(&repo), before, "{args:?} removed snapshots");
        }
    }
    // Filters that match nothing remove nothing.
    for filter in [
        ["--tag", ""],
        ["--tag", "no-such-tag"],
        ["--instance", "no-such"],
    ] {
        let mut args = vec!["forget", "--keep-last", zero];
        args.extend(filter);
        run(cairn(&repo).args(&args));
        assert_eq!(ids(&repo), before, "{args:?} removed snapshots");
    }
    // A dry run of a real policy changes nothing either.
    ok(cairn(&repo).args(["forget", "--keep-last", "1", "--dry-run"]));
    assert_eq!(ids(&repo), before);
    // Said explicitly, it is done.
    ok(cairn(&repo).args(["forget", "--keep-last", "0", "--unsafe-allow-remove-all"]));
    assert!(ids(&repo).is_empty());
}

#[test]
fn an_instance_retention_that_keeps_nothing_is_refused() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("files");
    fs::create_dir_all(&src).unwrap();
    for keep in [
        vec!["--keep-last", "0"],
        vec!["--keep-daily", "0", "--keep-weekly", "0"],
        vec!["--keep-within", "forever"],
    ] {
        let mut args = vec!["instance", "add", "shop", "--path", s(&src)];
        args.extend(&keep);
        fails(cairn(&repo).args(&args), 1);
    }
    shop(dir.path(), &repo, &["--keep-last", "2"]);
    backup_at(&repo, &rfc3339(Utc::now() - Duration::hours(2)), false);
    fails(
        cairn(&repo).args(["instance", "set", "shop", "--keep-last", "0"]),
        1,
    );
    // The stored policy is unchanged, and a scheduled run keeps the backups.
    let show = json(&ok(
        cairn(&repo).args(["instance", "show", "shop", "--json"])
    ));
    assert_eq!(show["retention"]["last"], 2, "{show}");
    ok(cairn(&repo).args(["run-due"]));
    assert_eq!(ids(&repo).len(), 2);
}

#[test]
fn instance_restore_in_place_never_replaces_a_file_its_safety_snapshot_could_not_read() {
    use std::os::unix::fs::PermissionsExt;
    if local_only("about unreadable live files; the repository's kind plays no part")
        || unsafe { libc::geteuid() } != 0
    {
        return; // needs root to make a file that the restoring user may not read but may replace
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::set_permissions(d, fs::Permissions::from_mode(0o777)).unwrap();
    let live = d.join("live");
    fs::create_dir_all(live.join("sub")).unwrap();
    for p in [&live, &live.join("sub")] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o777)).unwrap();
    }
    for f in ["doc", "sub/deep", "other"] {
        fs::write(live.join(f), format!("v1 of {f}")).unwrap();
        fs::set_permissions(live.join(f), fs::Permissions::from_mode(0o666)).unwrap();
    }
    // The live tree is nobody's own (a restore sets its directories' owner and times); mode 000 still
    // keeps its owner from reading a file.
    for p in ["", "sub", "doc", "sub/deep", "other"] {
        std::os::unix::fs::chown(live.join(p), Some(65534), Some(65534)).unwrap();
    }
    let repo = d.join("repo");
    ok(&mut cairn_as_nobody_in(d, &repo, &["init"]));
    let add = [
        "instance",
        "add",
        "web",
        "--path",
        s(&live),
        "--priority",
        "manual",
    ];
    ok(&mut cairn_as_nobody_in(d, &repo, &add));
    let v1 = json(&ok(&mut cairn_as_nobody_in(
        d,
        &repo,
        &["instance", "backup", "web", "--json"],
    )))["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    fs::write(live.join("other"), b"v2 of other").unwrap();

    // Since then a file (top level or deeper) changed and `nobody` may no longer read it: the safety
    // snapshot cannot hold it, so the restore would replace the only copy of its new content.
    for unreadable in ["doc", "sub/deep"] {
        let path = live.join(unreadable);
        fs::write(&path, b"v2, the only copy").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o000)).unwrap();
        let (code, out, err) = run(&mut cairn_as_nobody_in(
            d,
            &repo,
            &["instance", "restore", "web", &v1, "--in-place"],
        ));
        assert_eq!(code, 1, "{unreadable}: not refused\n{out}\n{err}");
        assert!(
            err.contains("partial") && err.contains(unreadable) && !err.contains("panicked"),
            "{err}"
        );
        assert_eq!(
            fs::read(&path).unwrap(),
            b"v2, the only copy",
            "{unreadable}"
        );
        assert_eq!(
            fs::read(live.join("other")).unwrap(),
            b"v2 of other",
            "nothing was changed"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        fs::write(&path, format!("v1 of {unreadable}")).unwrap();
    }

    // An unreadable file the restore does not replace (absent from the snapshot) does not stop it.
    fs::write(live.join("new"), b"not in the snapshot").unwrap();
    fs::set_permissions(live.join("new"), fs::Permissions::from_mode(0o000)).unwrap();
    ok(&mut cairn_as_nobody_in(
        d,
        &repo,
        &["instance", "restore", "web", &v1, "--in-place"],
    ));
    assert_eq!(fs::read(live.join("other")).unwrap(), b"v1 of other");
    assert_eq!(fs::read(live.join("new")).unwrap(), b"not in the snapshot");
}

#[test]
fn restore_never_writes_into_the_repository_nor_deletes_it() {
    if local_only("about a repository on the restore's own file system") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = d.join("repo");
    ok(cairn(&repo).arg("init"));
    // Root entries named like the repository's own files, and a directory named like the repository.
    let src = d.join("src");
    fs::create_dir_all(src.join("keys")).unwrap();
    fs::create_dir_all(src.join("repo")).unwrap();
    fs::write(src.join("config"), b"my application's config").unwrap();
    fs::write(src.join("keys/x"), b"k").unwrap();
    fs::write(src.join("repo/config"), b"not a repository config").unwrap();
    let id = backup_json(&repo, &[s(&src.join("config")), s(&src.join("keys"))])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let nested = backup_json(&repo, &[s(&src.join("repo"))])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    std::os::unix::fs::symlink(&repo, d.join("link")).unwrap();
    let config = fs::read(repo.join("config")).unwrap();
    for (snap, target) in [
        (&id, repo.clone()),
        (&id, repo.join("snapshots")),
        (&id, repo.join("new-dir/below")),
        (&id, d.join("link")),
        (&nested, d.to_path_buf()),
    ] {
        for overwrite in [true, false] {
            let mut args = vec!["restore", snap.as_str(), "--target", s(&target)];
            if overwrite {
                args.push("--overwrite");
            }
            let err = fails(cairn(&repo).args(&args), 1);
            assert!(err.contains("repository"), "{err}");
            assert_eq!(fs::read(repo.join("config")).unwrap(), config, "{args:?}");
            assert!(!repo.join("keys/x").exists() && !repo.join("new-dir").exists());
        }
    }
    assert_eq!(ids(&repo).len(), 2);
    ok(cairn(&repo).arg("check"));

    // An instance whose directory holds the repository: backups skip the repository, and an in-place
    // restore with --delete leaves it where it is.
    let site = d.join("site");
    fs::create_dir_all(site.join("data")).unwrap();
    fs::write(site.join("data/f"), b"v1").unwrap();
    let inner = site.join("backups");
    ok(cairn(&inner).arg("init"));
    ok(cairn(&inner).args([
        "instance",
        "add",
        "web",
        "--path",
        s(&site),
        "--priority",
        "manual",
    ]));
    ok(cairn(&inner).args(["instance", "backup", "web"]));
    fs::write(site.join("data/f"), b"v2").unwrap();
    fs::write(site.join("added"), b"since").unwrap();
    ok(cairn(&inner).args(["instance", "restore", "web", "--in-place", "--delete"]));
    assert_eq!(fs::read(site.join("data/f")).unwrap(), b"v1");
    assert!(!site.join("added").exists());
    assert_eq!(ids(&inner).len(), 2, "the backup and the safety snapshot");
    ok(cairn(&inner).arg("check"));
}

#[test]
fn retention_never_lets_partial_snapshots_push_out_the_last_complete_one() {
    use std::os::unix::fs::PermissionsExt;
    if local_only("about unreadable source files; the repository's kind plays no part")
        || unsafe { libc::geteuid() } != 0
    {
        return; // needs root to make a file that the backing-up user may not read
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::set_permissions(d, fs::Permissions::from_mode(0o777)).unwrap();
    let live = d.join("live");
    fs::create_dir_all(&live).unwrap();
    fs::write(live.join("doc"), b"v1").unwrap();
    let repo = d.join("repo");
    ok(&mut cairn_as_nobody_in(d, &repo, &["init"]));
    let add = [
        "instance",
        "add",
        "web",
        "--path",
        s(&live),
        "--schedule",
        "0 * * * *",
        "--keep-last",
        "1",
    ];
    ok(&mut cairn_as_nobody_in(d, &repo, &add));
    let complete = json(&ok(&mut cairn_as_nobody_in(
        d,
        &repo,
        &[
            "instance",
            "backup",
            "web",
            "--json",
            "--time",
            &rfc3339(Utc::now() - Duration::hours(5)),
        ],
    )))["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    // From now on the file cannot be read: every backup is partial (exit 3) and lacks it.
    fs::set_permissions(live.join("doc"), fs::Permissions::from_mode(0o000)).unwrap();
    for hours in [4, 2] {
        let t = rfc3339(Utc::now() - Duration::hours(hours));
        let (code, _, err) = run(&mut cairn_as_nobody_in(
            d,
            &repo,
            &["instance", "backup", "web", "--time", &t],
        ));
        assert_eq!(code, 3, "{err}");
    }
    for policy in [
        ["--keep-last", "1"],
        ["--keep-daily", "1"],
        ["--keep-within", "1h"],
    ] {
        let mut args = vec!["forget", "--instance", "web", "--dry-run", "--json"];
        args.extend(policy);
        let v = json(&ok(&mut cairn_as_nobody_in(d, &repo, &args)));
        let kept: Vec<&str> = v["groups"][0]["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["keep"] == true)
            .map(|d| d["id"].as_str().unwrap())
            .collect();
        assert!(kept.contains(&complete.as_str()), "{policy:?}: {v}");
        assert_eq!(
            kept.len(),
            2,
            "the newest (partial) and the newest complete: {v}"
        );
    }
    // The instance's own retention after a scheduled (partial) run keeps the complete snapshot too.
    let (code, out, err) = run(&mut cairn_as_nobody_in(d, &repo, &["run-due", "--json"]));
    assert!(code == 0 || code == 3, "{out}{err}");
    let v = json(&ok(&mut cairn_as_nobody_in(
        d,
        &repo,
        &["snapshots", "--json"],
    )));
    let left: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert!(left.contains(&complete.as_str()), "{v}");
    assert_eq!(left.len(), 2, "{v}");
    fs::set_permissions(live.join("doc"), fs::Permissions::from_mode(0o644)).unwrap();
    let restored = d.join("restored");
    ok(&mut cairn_as_nobody_in(
        d,
        &repo,
        &["restore", &complete, "--target", s(&restored)],
    ));
    assert_eq!(fs::read(restored.join("live/doc")).unwrap(), b"v1");
}

#[test]
fn restore_overwrite_never_deletes_a_directory_tree_in_the_way_of_a_file() {
    let (dir, repo) = new_repo();
    let d = dir.path();
    let src = d.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("x"), b"the snapshot's x").unwrap();
    fs::write(src.join("y"), b"the snapshot's y").unwrap();
    std::os::unix::fs::symlink("x", src.join("link")).unwrap();
    let id = backup_json(&repo, &[s(&src)])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    for in_the_way in ["x", "link"] {
        let target = d.join(format!("t-{in_the_way}"));
        fs::create_dir_all(target.join("src").join(in_the_way).join("deep")).unwrap();
        fs::write(
            target.join("src").join(in_the_way).join("deep/precious"),
            b"mine",
        )
        .unwrap();
        fs::write(target.join("src/y"), b"theirs").unwrap();
        let before = snapshot_tree(&target);
        for overwrite in [true, false] {
            let mut args = vec!["restore", id.as_str(), "--target", s(&target)];
            if overwrite {
                args.push("--overwrite");
            }
            let err = fails(cairn(&repo).args(&args), 1);
            assert!(err.contains(in_the_way) || !overwrite, "{err}");
            let deep = target.join("src").join(in_the_way).join("deep/precious");
            assert_eq!(fs::read(deep).unwrap(), b"mine", "{args:?}");
            assert_eq!(
                fs::read(target.join("src/y")).unwrap(),
                b"theirs",
                "{args:?}"
            );
            if overwrite {
                // Refused before anything is written.
                assert_eq!(
                    snapshot_tree(&target),
                    before,
                    "{args:?} changed the target"
                );
            }
        }
    }
    // An empty directory in the way is replaced, as are files.
    let target = d.join("t-empty");
    fs::create_dir_all(target.join("src/x")).unwrap();
    fs::write(target.join("src/y"), b"theirs").unwrap();
    ok(cairn(&repo).args(["restore", &id, "--target", s(&target), "--overwrite"]));
    assert_same_tree(&src, &target.join("src"));
}

#[test]
fn restore_refuses_a_target_that_is_a_symlink_to_the_root_directory() {
    let (dir, repo) = new_repo();
    let d = dir.path();
    // A root entry of a unique name, so that a restore into / (the defect) is seen and cleaned up.
    let unique = format!("cairn-ops-test-{}", std::process::id());
    let src = d.join(&unique);
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    let id = backup_json(&repo, &[s(&src)])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    std::os::unix::fs::symlink("/", d.join("to-root")).unwrap();
    fs::create_dir_all(d.join("a")).unwrap();
    let dotdot = format!("{}/a/../../../../../../../../../..", s(d));
    for target in [s(&d.join("to-root")).to_string(), dotdot] {
        let (code, out, err) =
            run(cairn(&repo).args(["restore", &id, "--target", &target, "--overwrite"]));
        let leaked = Path::new("/").join(&unique);
        let wrote_to_root = leaked.exists();
        let _ = fs::remove_dir_all(&leaked);
        assert!(!wrote_to_root, "{target}: restored into /: {out}{err}");
        assert_eq!(code, 1, "{target}: {out}{err}");
        assert!(err.contains("resolves to /"), "{err}");
    }
}

/// `cairn` on `repo` run on the host `host` (a UTS namespace of its own, so its host name is `host`).
fn on_host(repo: &Path, host: &str, args: &[&str]) -> std::process::Command {
    let base = cairn(repo);
    let mut c = std::process::Command::new("unshare");
    c.args([
        "--uts",
        "sh",
        "-c",
        "hostname \"$0\" && exec \"$@\"",
        host,
        cairn_bin(),
    ])
    .args(args)
    .stdin(std::process::Stdio::null());
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

#[test]
fn retention_applies_per_host_to_the_same_paths_backed_up_from_two_hosts() {
    let probe = run(&mut on_host(Path::new("/"), "probe", &["--version"])).0;
    if unsafe { libc::geteuid() } != 0 || probe != 0 {
        eprintln!("skipped: needs root to give a command a host name of its own (unshare --uts)");
        return;
    }
    let (dir, repo) = new_repo();
    let src = dir.path().join("etc");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    let mut by_host: Vec<(String, String)> = Vec::new();
    for day in ["2026-01-01", "2026-01-02"] {
        for (host, hour) in [("alpha", "10:00"), ("beta", "11:00")] {
            let t = format!("{day} {hour}");
            let out = ok(&mut on_host(
                &repo,
                host,
                &["backup", "--json", "--time", &t, s(&src)],
            ));
            by_host.push((
                host.into(),
                json(&out)["snapshot_id"].as_str().unwrap().into(),
            ));
        }
    }
    for (policy, kept_per_host) in [(["--keep-daily", "7"], 2), (["--keep-last", "1"], 1)] {
        let mut args = vec!["forget", "--dry-run", "--json"];
        args.extend(policy);
        let v = json(&ok(cairn(&repo).args(&args)));
        let kept: Vec<String> = v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["decisions"].as_array().unwrap().clone())
            .filter(|d| d["keep"] == true)
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect();
        for host in ["alpha", "beta"] {
            let n = by_host
                .iter()
                .filter(|(h, id)| h == host && kept.contains(id))
                .count();
            assert_eq!(n, kept_per_host, "{policy:?} keeps {n} of {host}'s: {v}");
        }
    }
    ok(cairn(&repo).args(["forget", "--keep-daily", "7"]));
    assert_eq!(ids(&repo).len(), 4, "no host's history was forgotten");
}
