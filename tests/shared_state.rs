//! Instance configurations and run-log entries are repository objects (format-spec "Instance
//! configurations", "Run log"): a second host (another process with another cache directory) sees the same
//! instances and history, deleting the cache loses neither, and a repository whose run log lived only in
//! the old SQLite cache gets it written out on the first write.

mod harness;
mod s3env;

use std::fs;
use std::path::Path;
use std::process::Command;

use harness::{fails, ok, run};
use s3env::Place;
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// A host: the repository seen through its own cache directory.
struct Host<'a> {
    place: &'a Place,
    cache: std::path::PathBuf,
}

impl Host<'_> {
    fn cmd(&self) -> Command {
        self.place.cairn(&self.cache)
    }
    fn ok(&self, args: &[&str]) -> String {
        ok(self.cmd().args(args))
    }
    fn json(&self, args: &[&str]) -> Value {
        json(&self.ok(&[&["--json"], args].concat()))
    }
    fn instances(&self) -> Vec<Value> {
        self.json(&["instance", "list"])
            .as_array()
            .unwrap()
            .to_vec()
    }
    fn log(&self) -> Vec<Value> {
        self.json(&["log"]).as_array().unwrap().to_vec()
    }
    /// Deletes this host's cache of the repository (for a local repository: its `index.sqlite`).
    fn drop_cache(&self) {
        match self.place {
            Place::Local(p) => {
                for f in ["index.sqlite", "index.sqlite-wal", "index.sqlite-shm"] {
                    let _ = fs::remove_file(p.join(f));
                }
            }
            Place::S3(_) => fs::remove_dir_all(&self.cache).unwrap(),
        }
    }
}

fn hosts_see_one_set_of_instances_and_one_run_log(place: &Place, dir: &Path) {
    let a = Host {
        place,
        cache: dir.join("cache-a"),
    };
    let b = Host {
        place,
        cache: dir.join("cache-b"),
    };
    let src = dir.join("files");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), b"hello").unwrap();
    a.ok(&["init"]);

    // Added on A: B sees it, field for field.
    a.ok(&["instance", "add", "shop", "--path", src.to_str().unwrap()]);
    let on_b = b.instances();
    assert_eq!(on_b.len(), 1, "{on_b:?}");
    assert_eq!(on_b[0]["name"], "shop");
    assert_eq!(on_b[0]["paths"][0], src.to_str().unwrap());

    // Changed and paused on A: B sees each change.
    a.ok(&[
        "instance",
        "set",
        "shop",
        "--keep-daily",
        "3",
        "--schedule",
        "0 4 * * *",
    ]);
    let shown = b.json(&["instance", "show", "shop"]);
    assert_eq!(shown["retention"]["daily"], 3, "{shown}");
    assert_eq!(shown["schedule"], "0 4 * * *");
    a.ok(&["instance", "pause", "shop"]);
    assert_eq!(b.json(&["instance", "show", "shop"])["paused"], true);

    // A's runs appear in B's log.
    let snap = a.json(&["instance", "backup", "shop"])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    a.ok(&["check"]);
    let log = b.log();
    let kinds: Vec<&str> = log.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["backup", "check"], "{log:?}");
    assert_eq!(log[0]["snapshot_id"], snap.as_str());
    assert_eq!(log[0]["instance"], "shop");
    assert_eq!(log[0]["status"], "ok");

    // Deleting B's cache loses neither the instance nor the history.
    let before = (b.instances(), b.log());
    b.drop_cache();
    assert_eq!((b.instances(), b.log()), before);
    // B's own runs reach A.
    b.ok(&["check"]);
    assert_eq!(a.log().len(), 3);

    // Resumed and removed on A: B sees it gone; removal is not undone by anything older.
    a.ok(&["instance", "resume", "shop"]);
    assert_eq!(b.json(&["instance", "show", "shop"])["paused"], false);
    a.ok(&["instance", "remove", "shop"]);
    assert!(b.instances().is_empty());
    assert!(fails(b.cmd().args(["instance", "show", "shop"]), 1).contains("no instance"));
    b.drop_cache();
    assert!(
        b.instances().is_empty(),
        "the removal survives a rebuilt cache"
    );
    // Added again on B after the removal: the newer revision wins on A.
    b.ok(&[
        "instance",
        "add",
        "shop",
        "--path",
        src.to_str().unwrap(),
        "--priority",
        "low",
    ]);
    assert_eq!(a.json(&["instance", "show", "shop"])["priority"], "low");
    if let Place::Local(repo) = place {
        // Every change left exactly one object of the instance: older revisions are deleted.
        let objects: Vec<_> = fs::read_dir(repo.join("instances")).unwrap().collect();
        assert_eq!(objects.len(), 1, "{objects:?}");
    }
    assert_eq!(
        a.log().len(),
        3,
        "history kept across the instance's removal"
    );
}

#[test]
fn instances_and_run_log_are_shared_between_hosts_local() {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::local(dir.path(), "repo");
    hosts_see_one_set_of_instances_and_one_run_log(&place, dir.path());
}

#[test]
fn instances_and_run_log_are_shared_between_hosts_s3() {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::s3("shared");
    hosts_see_one_set_of_instances_and_one_run_log(&place, dir.path());
}

/// Two hosts changing one instance at the same moment, several times: every host ends with the same
/// configuration, one of the two written (never a mix, never lost on one host only).
#[test]
fn concurrent_changes_of_one_instance_on_two_hosts_converge_s3() {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::s3("race");
    let (ca, cb) = (dir.path().join("a"), dir.path().join("b"));
    ok(place.cairn(&ca).arg("init"));
    ok(place
        .cairn(&ca)
        .args(["instance", "add", "shop", "--path", "/srv"]));
    for round in 0..4 {
        let (da, db) = (format!("{}", 10 + round), format!("{}", 20 + round));
        let mut ka = place.cairn(&ca);
        ka.args(["instance", "set", "shop", "--keep-daily", &da]);
        let mut kb = place.cairn(&cb);
        kb.args(["instance", "set", "shop", "--keep-daily", &db]);
        let quiet = |c: &mut Command| c.stdout(std::process::Stdio::null()).spawn().unwrap();
        let (ha, hb) = (quiet(&mut ka), quiet(&mut kb));
        assert!(ha.wait_with_output().unwrap().status.success());
        assert!(hb.wait_with_output().unwrap().status.success());
        let show = |c: &Path| {
            json(&ok(place
                .cairn(c)
                .args(["--json", "instance", "show", "shop"])))["retention"]["daily"]
                .clone()
        };
        let (va, vb) = (show(&ca), show(&cb));
        assert_eq!(va, vb, "round {round}: hosts disagree");
        assert!(
            va == da.parse::<u64>().unwrap() || va == db.parse::<u64>().unwrap(),
            "{va}"
        );
        // A fresh cache agrees too.
        assert_eq!(show(&dir.path().join(format!("fresh{round}"))), va);
    }
}

/// A repository written by the old cairn: the run log only in the SQLite index, the configuration as
/// `instances/<name>.json`. The new cairn reads both; the first write writes the log out as objects, and the
/// first change of the instance replaces the old object; after that, deleting the index loses nothing.
#[test]
fn run_log_rows_of_an_old_index_are_written_out_on_the_first_write_local() {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::local(dir.path(), "repo");
    let Place::Local(repo) = &place else {
        unreachable!()
    };
    let host = Host {
        place: &place,
        cache: dir.path().join("cache"),
    };
    let src = dir.path().join("files");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a.txt"), b"hello").unwrap();
    host.ok(&["init", "--insecure-no-encryption"]); // what the old cairn made: plaintext
    host.ok(&["instance", "add", "shop", "--path", src.to_str().unwrap()]);
    host.ok(&["instance", "backup", "shop"]);
    // Make it what the old cairn left: no run objects, no record of them, the config under its old name.
    fs::remove_dir_all(repo.join("runs")).unwrap();
    let inst = fs::read_dir(repo.join("instances"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    fs::rename(&inst, repo.join("instances/shop.json")).unwrap();
    {
        let db = rusqlite::Connection::open(repo.join("index.sqlite")).unwrap();
        db.execute_batch(
            "DROP TABLE run_objects; DROP TABLE instance_objects;
             INSERT INTO runs(instance, kind, start, end, status) VALUES
               ('shop', 'backup', '2020-01-02T03:04:05+00:00', '2020-01-02T03:05:00+00:00', 'failed');",
        )
        .unwrap();
    }
    let old_log = host.log();
    assert_eq!(old_log.len(), 2, "{old_log:?}");
    assert_eq!(
        host.instances()[0]["name"],
        "shop",
        "old config object read"
    );
    assert!(!repo.join("runs").exists(), "a read writes nothing");

    // The first write (a logged command) writes the old rows out, then its own.
    host.ok(&["check"]);
    assert_eq!(fs::read_dir(repo.join("runs")).unwrap().count(), 3);
    host.ok(&["instance", "set", "shop", "--keep-daily", "4"]);
    let names: Vec<String> = fs::read_dir(repo.join("instances"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert_ne!(names[0], "shop.json", "the old object is replaced");

    host.drop_cache();
    let log = host.log();
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(&log[..2], &old_log[..], "the old rows, unchanged");
    assert_eq!(log[2]["kind"], "check");
    assert_eq!(
        host.json(&["instance", "show", "shop"])["retention"]["daily"],
        4
    );
    // Running the migration again (another write) duplicates nothing.
    host.ok(&["check"]);
    assert_eq!(host.log().len(), 4);
    let (code, _, _) = run(host.cmd().args(["check", "--read-data"]));
    assert_eq!(code, 0);
}
