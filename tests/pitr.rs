//! Point-in-time recovery against a real PostgreSQL cluster that each test creates for itself (initdb as the
//! postgres user, its own socket directory and port), so that the shared test server is never reconfigured:
//! `instance wal-setup --apply` turns archiving to cairn on, the server's own archiver runs `cairn wal-push`,
//! and what arrives in the repository is compared byte for byte with the server's segments.

mod harness;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::*;
use serde_json::Value;

/// The newest installed server's binaries.
fn pg_bin(tool: &str) -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<u32> = fs::read_dir(root)
        .expect("PostgreSQL is installed (scripts/pg-setup installs it)")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort();
    let v = versions.last().expect("a PostgreSQL version");
    root.join(v.to_string()).join("bin").join(tool)
}

/// The postgres user's uid and gid (the server refuses to run as root).
fn postgres_ids() -> (String, String) {
    let id = |flag: &str| {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        assert!(out.status.success(), "no postgres user");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    (id("-u"), id("-g"))
}

/// A command run as the postgres user, with the environment kept.
fn as_postgres(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let (uid, gid) = postgres_ids();
    let mut c = Command::new("setpriv");
    c.args([
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        "--clear-groups".into(),
        "--".into(),
    ])
    .arg(program)
    .stdin(Stdio::null());
    c
}

/// `cairn` as the postgres user (the repository is the archiver's: it must stay writable by it).
fn cairn_pg(repo: &Path) -> Command {
    let mut c = as_postgres(cairn_bin());
    // The repository is encrypted: the archiver needs the password from a file it can read, and
    // `wal-setup` names that file in archive_command.
    harness::with_password(&mut c);
    c.env_remove("CAIRN_PASSWORD")
        .env("CAIRN_PASSWORD_FILE", pg_password_file())
        .env("XDG_CACHE_HOME", repo.with_file_name("cache"));
    c.env("CAIRN_REPO", repo).env_remove("XDG_DATA_HOME");
    for k in ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"] {
        c.env_remove(k);
    }
    c
}

/// The suite's password in a file the postgres user can read.
fn pg_password_file() -> PathBuf {
    let f = std::env::temp_dir().join(format!("cairn-pitr-password-{}", std::process::id()));
    if !f.exists() {
        fs::write(&f, harness::PASSWORD).unwrap();
        fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }
    f
}

/// A throwaway cluster owned by postgres, listening only on a socket in its own directory; stopped (fast)
/// when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn create() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        chown_postgres(dir.path());
        let port = free_port();
        let c = Cluster { dir, port };
        let out = as_postgres(pg_bin("initdb"))
            .args(["--auth=trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(c.data())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = format!(
            "port = {port}\nlisten_addresses = ''\nunix_socket_directories = '{}'\n\
             wal_keep_size = '1GB'\nfsync = off\n",
            c.dir.path().display()
        );
        let mut text = fs::read_to_string(c.data().join("postgresql.conf")).unwrap();
        text.push_str(&conf);
        fs::write(c.data().join("postgresql.conf"), text).unwrap();
        c.start();
        c
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl(&self, args: &[&str]) {
        pg_ctl(&self.data(), &self.root().join("server.log"), args);
    }

    fn start(&self) {
        self.pg_ctl(&["start", "-w", "-t", "60"]);
    }

    fn restart(&self) {
        self.pg_ctl(&["restart", "-w", "-t", "60", "-m", "fast"]);
    }

    fn stop(&self) {
        self.pg_ctl(&["stop", "-w", "-t", "60", "-m", "fast"]);
    }

    fn log(&self) -> String {
        fs::read_to_string(self.root().join("server.log")).unwrap_or_default()
    }

    /// The connection string of the instance.
    fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres",
            self.root().display(),
            self.port
        )
    }

    /// Runs one SQL command; unaligned tuples-only output.
    fn sql(&self, sql: &str) -> String {
        pg::psql_on(self.root(), self.port, "postgres", sql)
    }
}

/// A running server the tests send SQL to: the cluster, or one restored from the repository.
trait Server {
    fn sql(&self, sql: &str) -> String;
    fn log(&self) -> String;

    /// Switches to a new segment and waits until the archiver reports the old one archived; returns its
    /// name.
    fn switch_and_wait(&self) -> String {
        let seg = self.sql("SELECT pg_walfile_name(pg_switch_wal())");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let st = self.sql("SELECT coalesce(last_archived_wal, ''), failed_count, coalesce(last_failed_wal, '') FROM pg_stat_archiver");
            let last = st.split('|').next().unwrap_or("").to_string();
            if last.len() >= 24 && last[..24] >= seg[..] {
                return seg;
            }
            assert!(
                Instant::now() < deadline,
                "segment {seg} not archived in 60 s: {st}\nlog: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Server for Cluster {
    fn sql(&self, sql: &str) -> String {
        Cluster::sql(self, sql)
    }
    fn log(&self) -> String {
        Cluster::log(self)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_postgres(pg_bin("pg_ctl"))
            .args(["stop", "-m", "immediate", "-D"])
            .arg(self.data())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `pg_ctl ARGS -D data -l log` as postgres; a failure shows pg_ctl's error and the server's log.
fn pg_ctl(data: &Path, log: &Path, args: &[&str]) {
    let out = as_postgres(pg_bin("pg_ctl"))
        .args(args)
        .arg("-D")
        .arg(data)
        .arg("-l")
        .arg(log)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_ctl {args:?}: {}\nlog: {}",
        String::from_utf8_lossy(&out.stderr),
        fs::read_to_string(log).unwrap_or_default()
    );
}

fn chown_postgres(p: &Path) {
    let status = Command::new("chown")
        .arg("-R")
        .arg("postgres:postgres")
        .arg(p)
        .status()
        .unwrap();
    assert!(status.success());
}

fn free_port() -> u16 {
    // Only a socket file name in the cluster's own directory: any port that no other cluster's socket
    // directory could share; a free TCP port keeps the number unique anyway.
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The archived files of `instance`, as `wal-list --json` reports them.
fn wal_list(repo: &Path, instance: &str) -> Vec<Value> {
    wal_list_by(cairn_pg(repo), instance)
}

/// [`wal_list`] run by `cairn` (a repository and user of the caller's choice).
fn wal_list_by(mut cmd: Command, instance: &str) -> Vec<Value> {
    let out = ok(cmd.args(["wal-list", "--json", "--instance", instance]));
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn listed_files(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|v| v["file"].as_str().unwrap().to_string())
        .collect()
}

/// A cluster archiving to a fresh repository through instance `db` (set up by `wal-setup --apply`).
fn archiving_cluster() -> (Cluster, PathBuf) {
    archiving_cluster_with(&[])
}

/// [`archiving_cluster`] with more `instance add` arguments (a `--path` filestore).
fn archiving_cluster_with(add_args: &[&str]) -> (Cluster, PathBuf) {
    let cluster = Cluster::create();
    let repo = cluster.root().join("repo");
    ok(cairn_pg(&repo).arg("init"));
    ok(cairn_pg(&repo)
        .args([
            "instance",
            "add",
            "db",
            "--pg",
            "postgres",
            "--pg-conn",
            &cluster.conninfo(),
            "--wal",
        ])
        .args(add_args));
    let out = ok(cairn_pg(&repo).args(["instance", "wal-setup", "db", "--apply"]));
    assert!(
        out.contains("archive_mode") && out.contains("restart"),
        "archive_mode needs a restart and wal-setup says so: {out}"
    );
    cluster.restart();
    assert_eq!(cluster.sql("SHOW archive_mode"), "on");
    let cmd = cluster.sql("SHOW archive_command");
    assert!(
        cmd.contains(cairn_bin()) && cmd.contains(&repo.display().to_string()),
        "{cmd}"
    );
    (cluster, repo)
}

#[test]
fn wal_setup_apply_makes_the_server_archive_every_segment_into_the_repository_byte_for_byte() {
    let (cluster, repo) = archiving_cluster();
    cluster.sql("CREATE TABLE t (id int, at timestamptz DEFAULT now(), pad text)");
    let mut switched = Vec::new();
    for batch in 0..3 {
        cluster.sql(&format!(
            "INSERT INTO t (id, pad) SELECT g, repeat(md5(g::text), 8) FROM generate_series({}, {}) g",
            batch * 20_000,
            batch * 20_000 + 19_999
        ));
        switched.push(cluster.switch_and_wait());
    }
    // A backup label (`.backup` history file) goes through the archiver too.
    cluster.sql("SELECT pg_backup_start('cairn test', true); SELECT pg_backup_stop();");
    let label_seg = cluster.switch_and_wait();
    let list = wal_list(&repo, "db");
    let files = listed_files(&list);
    for seg in &switched {
        assert!(files.contains(seg), "{seg} archived: {files:?}");
    }
    assert!(
        files.iter().any(|f| f.ends_with(".backup")),
        "the backup label was archived: {files:?}"
    );
    assert!(files.contains(&label_seg));
    // Every archived segment still in pg_wal (wal_keep_size keeps them) comes back byte for byte.
    let out_dir = cluster.root().join("fetched");
    fs::create_dir(&out_dir).unwrap();
    chown_postgres(&out_dir);
    let mut compared = 0;
    for v in &list {
        let file = v["file"].as_str().unwrap();
        assert_eq!(v["timeline"], 1);
        let dest = out_dir.join(file);
        ok(cairn_pg(&repo)
            .args(["wal-fetch", "--instance", "db", file])
            .arg(&dest));
        let got = fs::read(&dest).unwrap();
        assert_eq!(got.len() as u64, v["size"].as_u64().unwrap());
        let original = cluster.data().join("pg_wal").join(file);
        if let Ok(want) = fs::read(&original) {
            assert!(got == want, "{file}: fetched bytes differ from pg_wal's");
            compared += 1;
        }
    }
    assert!(compared >= 4, "compared {compared} segments");
    // Nothing of a fetch is left behind but the file itself.
    let leftovers: Vec<_> = fs::read_dir(&out_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    ok(cairn_pg(&repo).arg("check"));
}

#[test]
fn wal_push_is_idempotent_refuses_other_content_and_wal_fetch_reports_absent_files_with_exit_1() {
    let (cluster, repo) = archiving_cluster();
    cluster.sql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 50000) g");
    let seg = cluster.switch_and_wait();
    let original = cluster.data().join("pg_wal").join(&seg);
    let want = fs::read(&original).unwrap();
    // PostgreSQL may run archive_command again for a file it already archived (a crash before it
    // recorded success): the same content succeeds and writes nothing.
    let packs_before = fs::read_dir(repo.join("packs")).unwrap().count();
    let out = ok(cairn_pg(&repo)
        .args(["wal-push", "--instance", "db"])
        .arg(&original));
    assert!(out.contains("already archived"), "{out}");
    assert_eq!(
        fs::read_dir(repo.join("packs")).unwrap().count(),
        packs_before
    );
    // Other content under an archived name is refused, and the archived file is kept.
    let other_dir = cluster.root().join("other");
    fs::create_dir(&other_dir).unwrap();
    let mut changed = want.clone();
    changed[want.len() / 2] ^= 0xff;
    fs::write(other_dir.join(&seg), &changed).unwrap();
    chown_postgres(&other_dir);
    let err = fails(
        cairn_pg(&repo)
            .args(["wal-push", "--instance", "db"])
            .arg(other_dir.join(&seg)),
        1,
    );
    assert!(err.contains("different file"), "{err}");
    let dest = other_dir.join("back");
    ok(cairn_pg(&repo)
        .args(["wal-fetch", "--instance", "db", &seg])
        .arg(&dest));
    assert!(
        fs::read(&dest).unwrap() == want,
        "the archived file is unchanged"
    );
    // Recovery probes for files that were never archived: exit 1, nothing written.
    for absent in ["00000002.history", "0000000100000000000000FF"] {
        let missing = other_dir.join("missing");
        let err = fails(
            cairn_pg(&repo)
                .args(["wal-fetch", "--instance", "db", absent])
                .arg(&missing),
            1,
        );
        assert!(err.contains("not archived"), "{err}");
        assert!(!missing.exists());
    }
    // History files and .partial segments are archived and fetched like segments.
    for (name, content) in [
        (
            "00000002.history",
            b"1\t0/3000000\tno recovery target specified\n".to_vec(),
        ),
        (&*format!("{seg}.partial"), want[..want.len() / 3].to_vec()),
    ] {
        let path = other_dir.join(name);
        fs::write(&path, &content).unwrap();
        chown_postgres(&path);
        ok(cairn_pg(&repo)
            .args(["wal-push", "--instance", "db"])
            .arg(&path));
        let back = other_dir.join(format!("{name}.back"));
        ok(cairn_pg(&repo)
            .args(["wal-fetch", "--instance", "db", name])
            .arg(&back));
        assert!(fs::read(&back).unwrap() == content, "{name}");
    }
    let files = listed_files(&wal_list(&repo, "db"));
    assert!(files.contains(&"00000002.history".to_string()), "{files:?}");
    assert!(files.contains(&format!("{seg}.partial")), "{files:?}");
    // Names that are no WAL file are refused before anything is read.
    let bogus = other_dir.join("notes.txt");
    fs::write(&bogus, b"x").unwrap();
    let err = fails(
        cairn_pg(&repo)
            .args(["wal-push", "--instance", "db"])
            .arg(&bogus),
        1,
    );
    assert!(err.contains("not a WAL file name"), "{err}");
    // Prune keeps archived WAL: every file still fetches after it.
    ok(cairn_pg(&repo).arg("prune"));
    let again = other_dir.join("after-prune");
    ok(cairn_pg(&repo)
        .args(["wal-fetch", "--instance", "db", &seg])
        .arg(&again));
    assert!(fs::read(&again).unwrap() == want);
}

/// The cluster's database system identifier.
fn system_identifier(cluster: &Cluster) -> String {
    cluster.sql("SELECT system_identifier FROM pg_control_system()")
}

/// `wal-push` checks a segment's header: another cluster's segments (another system identifier), a segment
/// renamed to another's name and a file that is no segment are refused, with nothing written, while the
/// archiving cluster's own segments go on being archived.
#[test]
fn wal_push_refuses_another_clusters_segments_and_a_segment_under_another_segments_name() {
    let (cluster, repo) = archiving_cluster();
    cluster.sql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 10000) g");
    let seg = cluster.switch_and_wait();
    let ours = system_identifier(&cluster);
    let list = wal_list(&repo, "db");
    // A second cluster, made by initdb of its own, with a segment archived beyond every one of the first
    // (and one the first archived too, under the same name).
    let other = Cluster::create();
    let theirs = system_identifier(&other);
    assert_ne!(ours, theirs);
    other.sql("CREATE TABLE u AS SELECT g AS id FROM generate_series(1, 10000) g");
    let mut their_segs = Vec::new();
    for _ in 0..4 {
        other.sql("INSERT INTO u SELECT g FROM generate_series(1, 1000) g");
        their_segs.push(other.sql("SELECT pg_walfile_name(pg_switch_wal())"));
    }
    let archived = listed_files(&list);
    let beyond = their_segs.last().unwrap().clone();
    assert!(
        beyond > *archived.iter().max().unwrap(),
        "{beyond} {archived:?}"
    );
    let stage = cluster.root().join("stage");
    fs::create_dir(&stage).unwrap();
    let copy = |from: &Path, name: &str| {
        let to = stage.join(name);
        fs::copy(from, &to).unwrap();
        to
    };
    let their_wal = other.data().join("pg_wal");
    let mut refused = vec![
        copy(&their_wal.join(&beyond), &beyond),
        copy(&their_wal.join(&beyond), &format!("{beyond}.partial")),
    ];
    // The first cluster's segment renamed as one further on: its header names its own place.
    let renamed = format!(
        "{}{:08X}",
        &seg[..16],
        u32::from_str_radix(&seg[16..], 16).unwrap() + 9
    );
    refused.push(copy(&cluster.data().join("pg_wal").join(&seg), &renamed));
    // A file that is no segment under a segment's name.
    let garbage = stage.join(format!(
        "{}{:08X}",
        &seg[..16],
        u32::from_str_radix(&seg[16..], 16).unwrap() + 10
    ));
    fs::write(&garbage, pseudo_random(16 << 20, 5)).unwrap();
    refused.push(garbage);
    chown_postgres(&stage);
    let packs = || {
        let mut p = objects_under(&repo.join("packs")).0;
        p.sort();
        p
    };
    let packs_before = packs();
    for path in &refused {
        let err = fails(
            cairn_pg(&repo)
                .args(["wal-push", "--instance", "db"])
                .arg(path),
            1,
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains("nothing was written"), "{err}");
        let name = path.file_name().unwrap().to_str().unwrap();
        if name.starts_with(&beyond) {
            assert!(
                err.contains(&ours) && err.contains(&theirs),
                "{name}: both system identifiers are named: {err}"
            );
        } else {
            assert!(err.contains("not the WAL segment"), "{name}: {err}");
        }
    }
    assert_eq!(wal_list(&repo, "db"), list, "the archive is unchanged");
    assert_eq!(packs(), packs_before);
    // The archive records whose WAL it holds.
    let ours_listed = list.iter().find(|v| v["file"] == seg.as_str()).unwrap();
    assert_eq!(ours_listed["system_identifier"], ours.as_str(), "{list:?}");
    // The first cluster archives on.
    cluster.sql("INSERT INTO t SELECT g FROM generate_series(1, 1000) g");
    let next = cluster.switch_and_wait();
    assert!(listed_files(&wal_list(&repo, "db")).contains(&next));
}

/// A base backup records the system identifier of the cluster it copied (from the `global/pg_control` in
/// its tar), and when no archived segment says whose WAL the instance archives (none left, or only objects
/// written before identifiers were recorded), that base backup decides: before the fix, the first cluster to
/// push won, whichever it was.
#[test]
fn wal_push_holds_segments_to_the_base_backups_cluster_when_no_archived_segment_records_one() {
    let (cluster, repo) = archiving_cluster();
    cluster.sql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 10000) g");
    cluster.switch_and_wait();
    let ours = system_identifier(&cluster);
    let bb = base_backup(&repo);
    // Nothing archived for the instance says whose WAL it is any more.
    cluster.stop();
    for e in fs::read_dir(repo.join("wal")).unwrap() {
        fs::remove_file(e.unwrap().path()).unwrap();
    }
    assert!(wal_list(&repo, "db").is_empty());
    let other = Cluster::create();
    let theirs = system_identifier(&other);
    assert_ne!(ours, theirs);
    other.sql("CREATE TABLE u AS SELECT g AS id FROM generate_series(1, 10000) g");
    let seg = other.sql("SELECT pg_walfile_name(pg_switch_wal())");
    let stage = cluster.root().join("stage");
    fs::create_dir(&stage).unwrap();
    fs::copy(other.data().join("pg_wal").join(&seg), stage.join(&seg)).unwrap();
    chown_postgres(&stage);
    let err = fails(
        cairn_pg(&repo)
            .args(["wal-push", "--instance", "db"])
            .arg(stage.join(&seg)),
        1,
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(&ours)
            && err.contains(&theirs)
            && err.contains("base backup")
            && err.contains("nothing was written"),
        "{err}"
    );
    assert!(wal_list(&repo, "db").is_empty(), "nothing was archived");
    // The backed-up cluster archives on, and its segments record it again.
    cluster.start();
    cluster.sql("INSERT INTO t SELECT g FROM generate_series(1, 1000) g");
    let next = cluster.switch_and_wait();
    let list = wal_list(&repo, "db");
    let archived = list.iter().find(|v| v["file"] == next.as_str());
    assert_eq!(
        archived.map(|v| &v["system_identifier"]),
        Some(&Value::from(ours.as_str())),
        "{list:?}"
    );
    assert_eq!(
        bb["basebackup"]["system_identifier"],
        ours.as_str(),
        "the base backup records its cluster: {bb}"
    );
}

/// The instance's server replaced by another cluster (a new `initdb` or `pg_upgrade`, `instance set
/// --pg-conn` pointed at it) while the archive holds the first one's WAL: a base backup of the new
/// cluster cannot be recovered with the old one's WAL. Before the fix the restore unpacked it, started the
/// server, and PostgreSQL stopped on the first segment ("WAL file is from different database system"),
/// a data directory left behind. Now the plan refuses before anything is written, naming the first such
/// segment; and `wal-fetch`, which the restore_command tells the base backup's identifier, refuses one.
#[test]
fn a_restore_refuses_to_replay_another_clusters_wal_and_wal_fetch_refuses_it_during_recovery() {
    let (cluster, repo) = archiving_cluster();
    let ours = system_identifier(&cluster);
    create_batch_table(&cluster);
    cluster.switch_and_wait();
    let first = base_backup(&repo);
    let between = insert_batch(&cluster, 1);
    // Further along than the other cluster will be, so its base backup's segments have names archived here.
    for k in 2..=7 {
        cluster.sql(&format!("INSERT INTO t (batch, id) VALUES ({k}, 1)"));
        cluster.switch_and_wait();
    }
    let other = Cluster::create();
    let theirs = system_identifier(&other);
    assert_ne!(ours, theirs);
    ok(cairn_pg(&repo).args([
        "instance",
        "add",
        "b",
        "--pg",
        "postgres",
        "--pg-conn",
        &other.conninfo(),
        "--wal",
    ]));
    ok(cairn_pg(&repo).args(["instance", "wal-setup", "b", "--apply"]));
    other.restart();
    ok(cairn_pg(&repo).args(["instance", "set", "db", "--pg-conn", &other.conninfo()]));
    let second = base_backup(&repo);
    let start = second["basebackup"]["start_wal_file"]
        .as_str()
        .unwrap()
        .to_string();
    let stop = second["basebackup"]["stop_wal_file"].as_str().unwrap();
    let segs = archived_segments(&repo);
    assert!(
        segs.contains(&start) && segs.iter().any(|s| s.as_str() > stop),
        "the chain from the second base backup ({start} to {stop}) is archived, of the first cluster: {segs:?}"
    );
    let data = cluster.root().join("mixed");
    let err = fails(
        pitr_restore(&repo, "latest", &data).args(["--start", "--port", &free_port().to_string()]),
        1,
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(&start) && err.contains(&ours) && err.contains(&theirs),
        "the error names the first segment of another cluster and both identifiers: {err}"
    );
    assert!(!data.exists(), "nothing was written for a refused restore");
    // Before the second base backup: the first cluster's, whose WAL it is; its restore_command names it.
    let r = restore_at(&cluster, &repo, &between, "ours");
    assert_eq!(r.batches(), expect(1..=1));
    let auto = fs::read_to_string(r.data.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains(&format!("--system-identifier {ours}")),
        "{auto}"
    );
    // wal-fetch told another cluster's identifier refuses the segment (exit 255: recovery stops) and
    // writes nothing; told the right one, or none, it fetches.
    let dir = cluster.root().join("fetch");
    fs::create_dir(&dir).unwrap();
    chown_postgres(&dir);
    let dest = dir.join("RECOVERYXLOG");
    let (code, _, err) = run(cairn_pg(&repo)
        .args(["wal-fetch", "--instance", "db", &start])
        .arg(&dest)
        .args(["--system-identifier", &theirs]));
    assert_eq!(code, 255, "{err}");
    assert!(
        err.contains(&start) && err.contains(&ours) && err.contains(&theirs),
        "{err}"
    );
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    for id in [Some(ours.as_str()), None] {
        let mut c = cairn_pg(&repo);
        c.args(["wal-fetch", "--instance", "db", &start]).arg(&dest);
        if let Some(id) = id {
            c.args(["--system-identifier", id]);
        }
        ok(&mut c);
    }
    assert_eq!(first["basebackup"]["system_identifier"], ours.as_str());
    assert_eq!(second["basebackup"]["system_identifier"], theirs.as_str());
}

#[test]
fn wal_push_refuses_an_instance_without_wal_and_wal_setup_prints_quoted_settings() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("it's a repo");
    ok(cairn(&repo).arg("init"));
    ok(cairn(&repo).args(["instance", "add", "plain", "--path", "/tmp"]));
    let seg = dir.path().join("000000010000000000000001");
    fs::write(
        &seg,
        wal_segment("000000010000000000000001", 1 << 20, 3, TEST_SYSID),
    )
    .unwrap();
    let err = fails(
        cairn(&repo)
            .args(["wal-push", "--instance", "plain"])
            .arg(&seg),
        1,
    );
    assert!(err.contains("--wal"), "{err}");
    fails(cairn(&repo).args(["instance", "wal-setup", "plain"]), 1);
    ok(cairn(&repo).args(["instance", "set", "plain", "--wal"]));
    let out = ok(cairn(&repo).args(["instance", "wal-setup", "plain", "--json"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    let cmd = v["settings"]["archive_command"].as_str().unwrap();
    // The shell sees the repository path as one word, quote and all.
    let echoed = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "set -- {}; printf '%s\\n' \"$3\"",
            cmd.replace("%p", "P")
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&echoed.stdout).trim(),
        repo.display().to_string(),
        "{cmd}"
    );
    assert_eq!(v["settings"]["archive_mode"], "on");
    assert_eq!(v["settings"]["archive_timeout"], "60s");
    ok(cairn(&repo)
        .args(["wal-push", "--instance", "plain"])
        .arg(&seg));
    ok(cairn(&repo).args(["instance", "set", "plain", "--no-wal"]));
    fails(
        cairn(&repo)
            .args(["wal-push", "--instance", "plain"])
            .arg(&seg),
        1,
    );
}

/// Concurrent `wal-push` of one name (two clusters archiving to one instance, or a retry beside a stuck run):
/// exactly one stores its file; a push of the same content reports it archived already, one of other
/// content fails; what is archived is the stored one's. Runs on S3 too (`CAIRN_TEST_BACKEND=s3`).
#[test]
fn concurrent_wal_pushes_of_one_name_store_exactly_one_file() {
    let (dir, repo) = new_repo();
    ok(cairn(&repo).args(["instance", "add", "db", "--path", "/tmp", "--wal"]));
    let name = "000000010000000000000003";
    for round in 0..3u64 {
        let name = format!("{}{:08X}", &name[..16], 3 + round);
        // Four contents, each pushed by two processes at once.
        let contents: Vec<Vec<u8>> = (0..4)
            .map(|i| wal_segment(&name, 4 << 20, 100 * round + i, TEST_SYSID))
            .collect();
        let paths: Vec<PathBuf> = (0..8)
            .map(|p| {
                let d = dir.path().join(format!("r{round}-p{p}"));
                fs::create_dir(&d).unwrap();
                fs::write(d.join(&name), &contents[p % 4]).unwrap();
                d.join(&name)
            })
            .collect();
        let children: Vec<_> = paths
            .iter()
            .map(|path| {
                cairn(&repo)
                    .args(["--json", "wal-push", "--instance", "db"])
                    .arg(path)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let results: Vec<(i32, String, String)> = children
            .into_iter()
            .map(|c| {
                let out = c.wait_with_output().unwrap();
                (
                    out.status.code().unwrap_or(-1),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            })
            .collect();
        let stored: Vec<usize> = (0..8)
            .filter(|&p| {
                results[p].0 == 0
                    && serde_json::from_str::<Value>(&results[p].1).unwrap()["stored"] == true
            })
            .collect();
        assert_eq!(
            stored.len(),
            1,
            "round {round}: exactly one stores: {results:#?}"
        );
        let winner = stored[0] % 4;
        for (p, (code, out, err)) in results.iter().enumerate() {
            if p % 4 == winner {
                assert_eq!(
                    *code, 0,
                    "round {round}, push {p} of the winner's content: {err}"
                );
            } else {
                assert_eq!(*code, 1, "round {round}, push {p} of other content: {out}");
                assert!(
                    err.contains("different file"),
                    "round {round}, push {p}: {err}"
                );
            }
        }
        let back = dir.path().join(format!("back-{round}"));
        ok(cairn(&repo)
            .args(["wal-fetch", "--instance", "db", &name])
            .arg(&back));
        assert!(
            fs::read(&back).unwrap() == contents[winner],
            "round {round}: the archived file is the stored one's"
        );
    }
}

/// The files under `dir` (recursively): (finished objects with their sizes, names of `.tmp-*` files).
fn objects_under(dir: &Path) -> (Vec<(PathBuf, u64)>, Vec<PathBuf>) {
    let (mut done, mut tmp) = (Vec::new(), Vec::new());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue; // a shard directory may appear or go between the listing and the read
        };
        for e in entries.filter_map(|e| e.ok()) {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                stack.push(e.path());
            } else if e.file_name().to_string_lossy().starts_with(".tmp-") {
                tmp.push(e.path());
            } else {
                done.push((e.path(), md.len()));
            }
        }
    }
    (done, tmp)
}

/// Bytes of finished packs.
fn pack_bytes(repo: &Path) -> u64 {
    objects_under(&repo.join("packs"))
        .0
        .iter()
        .map(|(_, n)| n)
        .sum()
}

/// The points at which the kill lands: the first pack is being written, or two packs are finished (the
/// first indexed, the second perhaps not yet) and the push goes on with the next.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    WritingAPack,
    AfterTwoFinishedPacks,
}

#[test]
fn wal_push_killed_midway_then_run_again_stores_the_segment_once_and_correct() {
    let dir = tempfile::tempdir().unwrap();
    // A large segment (--wal-segsize allows up to 1 GiB) in 4 MiB packs, so that a push writes many packs
    // and the kill, sent as soon as the repository shows it started writing, lands in the middle.
    let seg = dir.path().join("000000010000000000000007");
    let content = wal_segment("000000010000000000000007", 96 << 20, 7, TEST_SYSID);
    fs::write(&seg, &content).unwrap();
    let new_repo = |name: &str| {
        let repo = dir.path().join(name);
        ok(cairn(&repo).arg("init"));
        set_pack_size(&repo, 4 << 20);
        ok(cairn(&repo).args(["instance", "add", "db", "--path", "/tmp", "--wal"]));
        repo
    };
    // What one uninterrupted push stores.
    let reference = new_repo("reference");
    let before = pack_bytes(&reference);
    ok(cairn(&reference)
        .args(["wal-push", "--instance", "db"])
        .arg(&seg));
    let once = pack_bytes(&reference) - before;
    // Packs close once they pass the target size, so one can exceed it by up to a chunk.
    let largest_pack = objects_under(&reference.join("packs"))
        .0
        .iter()
        .map(|(_, size)| *size)
        .max()
        .unwrap();
    for point in [KillPoint::WritingAPack, KillPoint::AfterTwoFinishedPacks] {
        let repo = new_repo(&format!("{point:?}"));
        let packs = repo.join("packs");
        let (packs_before, _) = objects_under(&packs);
        let mut child = cairn(&repo)
            .args(["wal-push", "--instance", "db"])
            .arg(&seg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (done, tmp) = objects_under(&packs);
            let reached = match point {
                KillPoint::WritingAPack => !tmp.is_empty(),
                KillPoint::AfterTwoFinishedPacks => done.len() > packs_before.len() + 1,
            };
            if reached {
                break;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "{point:?}: wal-push ended before the kill"
            );
            assert!(Instant::now() < deadline, "{point:?}: never reached");
            std::thread::sleep(Duration::from_millis(1));
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(!status.success(), "{point:?}: killed, not finished");
        // The kill landed in the middle: nothing was archived yet.
        let list = wal_list_by(cairn(&repo), "db");
        assert_eq!(list.len(), 0, "{point:?}: {list:?}");
        // PostgreSQL runs the command again: it succeeds and stores the segment once.
        let stored_by_the_killed = pack_bytes(&repo);
        let out = ok(cairn(&repo)
            .args(["wal-push", "--instance", "db"])
            .arg(&seg));
        assert!(out.starts_with("archived"), "{point:?}: {out}");
        let list = wal_list_by(cairn(&repo), "db");
        assert_eq!(list.len(), 1, "{point:?}: {list:?}");
        // The packs the killed push finished and indexed are used, not stored again: at most the one pack
        // the kill interrupted between its rename and its indexing is stored twice (prune removes it). The
        // second push cuts its packs elsewhere than the first, so their framing (headers, trailers) may add a
        // little: 1% of the segment's packs is allowed for that (a segment stored twice is 100%).
        let total = pack_bytes(&repo);
        eprintln!(
            "{point:?}: one push stores {once} B; the killed push left {stored_by_the_killed} B, \
             after the second {total} B"
        );
        assert!(
            total <= once + largest_pack + once / 100,
            "{point:?}: {total} B stored for a segment one push stores in {once} B (packs of up to \
             {largest_pack} B)"
        );
        let back = dir.path().join(format!("back-{point:?}"));
        ok(cairn(&repo)
            .args(["wal-fetch", "--instance", "db", "000000010000000000000007"])
            .arg(&back));
        assert!(fs::read(&back).unwrap() == content, "{point:?}");
        // Pushed a third time: the same content, nothing written.
        let out = ok(cairn(&repo)
            .args(["wal-push", "--instance", "db"])
            .arg(&seg));
        assert!(out.contains("already archived"), "{point:?}: {out}");
        ok(cairn(&repo).arg("check"));
        // prune leaves only garbage of the killed push to remove, and the segment still fetches.
        ok(cairn(&repo).arg("prune"));
        ok(cairn(&repo).args(["check", "--read-data"]));
    }
}

/// `cairn` as root with the password in a file (as the restore_command the server runs will name it).
fn cairn_root(repo: &Path) -> Command {
    let mut c = cairn(repo);
    c.env_remove("CAIRN_PASSWORD")
        .env("CAIRN_PASSWORD_FILE", pg_password_file())
        .env("TZ", "UTC");
    for k in ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"] {
        c.env_remove(k);
    }
    c
}

/// `instance base-backup db --json`: the facts recorded, and the snapshot's summary.
fn base_backup(repo: &Path) -> Value {
    let out = ok(cairn_pg(repo).args(["--json", "instance", "base-backup", "db"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    let bb = &v["basebackup"];
    assert_eq!(bb["stream"], "base.tar", "{v}");
    assert_eq!(bb["timeline"], 1, "{v}");
    for k in ["start_lsn", "stop_lsn", "start_wal_file", "stop_wal_file"] {
        assert!(bb[k].as_str().is_some_and(|s| !s.is_empty()), "{k}: {v}");
    }
    v
}

/// A data directory restored (and started) by `instance restore --pg-datadir --start`; stopped when dropped.
struct Restored {
    data: PathBuf,
    socket_dir: PathBuf,
    port: u16,
}

impl Restored {
    fn sql(&self, sql: &str) -> String {
        pg::psql_on(&self.socket_dir, self.port, "postgres", sql)
    }

    /// [`Restored::sql`] on a server that may not accept connections (yet).
    fn try_sql(&self, sql: &str) -> Result<String, String> {
        pg::try_psql_on(&self.socket_dir, self.port, "postgres", sql)
    }

    /// The batches the restored table holds, each with its row count.
    fn batches(&self) -> Vec<(i32, i64)> {
        self.sql("SELECT batch, count(*) FROM t GROUP BY batch ORDER BY batch")
            .lines()
            .map(|l| {
                let (b, n) = l.split_once('|').unwrap();
                (b.parse().unwrap(), n.parse().unwrap())
            })
            .collect()
    }
}

impl Server for Restored {
    fn sql(&self, sql: &str) -> String {
        Restored::sql(self, sql)
    }
    fn log(&self) -> String {
        fs::read_to_string(self.data.join("cairn-recovery.log")).unwrap_or_default()
    }
}

impl Restored {
    /// Restarts the server (as postgres, logging where cairn started it).
    fn restart(&self) {
        pg_ctl(
            &self.data,
            &self.data.join("cairn-recovery.log"),
            &["restart", "-w", "-t", "60", "-m", "fast"],
        );
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        let _ = as_postgres(pg_bin("pg_ctl"))
            .args(["stop", "-m", "immediate", "-D"])
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Restores instance `db` at `at` into a new data directory under the cluster's directory and starts it
/// on a new port (cairn runs as root: it gives the directory to postgres and starts the server as postgres).
fn restore_at(cluster: &Cluster, repo: &Path, at: &str, label: &str) -> Restored {
    let (code, out, err, server) = try_restore_at(cluster, repo, at, label);
    assert_eq!(
        code, 0,
        "restore at {at} failed\nstdout: {out}\nstderr: {err}"
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["started"], true, "{v}");
    server
}

/// `cairn instance restore db --at AT --pg-datadir DATA` as root (point-in-time recovery of instance
/// `db`), for the caller to add options to.
fn pitr_restore(repo: &Path, at: &str, data: &Path) -> Command {
    let mut c = cairn_root(repo);
    c.args(["instance", "restore", "db", "--at", at, "--pg-datadir"])
        .arg(data);
    c
}

/// The server's clock now, to the second, in UTC ("YYYY-MM-DD HH:MM:SS"): cairn reads --at in its local
/// time zone, which the restore commands set to UTC.
fn server_second(cluster: &impl Server) -> String {
    cluster.sql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')")
}

/// Creates the table [`insert_batch`] fills.
fn create_batch_table(cluster: &Cluster) {
    cluster.sql(
        "CREATE TABLE t (batch int, id int, at timestamptz DEFAULT clock_timestamp(), pad text)",
    );
}

/// Inserts batch `k` (its own transaction), archives it, and returns a time strictly between its commit
/// and the next batch's (a pause on either side of a whole second).
fn insert_batch(cluster: &impl Server, k: i32) -> String {
    cluster.sql(&format!(
        "INSERT INTO t (batch, id, pad) SELECT {k}, g, repeat(md5(g::text), 4) FROM generate_series(1, 2000) g"
    ));
    cluster.switch_and_wait();
    std::thread::sleep(Duration::from_millis(1200));
    let between = server_second(cluster);
    std::thread::sleep(Duration::from_millis(1200));
    between
}

fn expect(batches: std::ops::RangeInclusive<i32>) -> Vec<(i32, i64)> {
    batches.map(|b| (b, 2000)).collect()
}

#[test]
fn restore_to_a_time_between_batches_finds_exactly_the_batches_before_it_and_latest_finds_all() {
    let (cluster, repo) = archiving_cluster();
    create_batch_table(&cluster);
    cluster.switch_and_wait();
    let first = base_backup(&repo);
    let mut between = vec![String::new()]; // between[k]: after batch k, before batch k+1
    for k in 1..=3 {
        between.push(insert_batch(&cluster, k));
    }
    {
        let r = restore_at(&cluster, &repo, &between[2], "k2");
        assert_eq!(r.batches(), expect(1..=2), "restored to {}", between[2]);
        // Promoted: it takes writes.
        r.sql("INSERT INTO t (batch, id) VALUES (99, 1)");
    }
    {
        let r = restore_at(&cluster, &repo, "latest", "latest1");
        assert_eq!(r.batches(), expect(1..=3));
    }
    // A second base backup of a mostly unchanged cluster stores little.
    let second = base_backup(&repo);
    let (read1, added1) = (
        first["summary"]["bytes_read"].as_u64().unwrap(),
        first["summary"]["bytes_added"].as_u64().unwrap(),
    );
    let (read2, added2) = (
        second["summary"]["bytes_read"].as_u64().unwrap(),
        second["summary"]["bytes_added"].as_u64().unwrap(),
    );
    eprintln!("base backup 1: read {read1} B, added {added1} B; base backup 2: read {read2} B, added {added2} B");
    assert!(
        added2 * 4 < added1,
        "the second base backup added {added2} B, the first {added1} B"
    );
    for k in 4..=5 {
        between.push(insert_batch(&cluster, k));
    }
    // Prune keeps the WAL both base backups need (and drops what is older than the oldest).
    let before_prune = listed_files(&wal_list(&repo, "db"));
    ok(cairn_pg(&repo).arg("prune"));
    let after_prune = listed_files(&wal_list(&repo, "db"));
    let start1 = first["basebackup"]["start_wal_file"].as_str().unwrap();
    assert!(
        after_prune
            .iter()
            .all(|f| f.as_str() >= start1 || f.ends_with(".history")),
        "WAL older than the oldest base backup ({start1}) is pruned: {after_prune:?}"
    );
    assert!(
        before_prune.iter().any(|f| f.as_str() < start1),
        "there was older WAL to prune: {before_prune:?}"
    );
    ok(cairn_pg(&repo).arg("check"));
    // stats shows the recovery window: from the first base backup to the newest segment.
    let stats: Value = serde_json::from_str(&ok(cairn_pg(&repo).args([
        "--json",
        "stats",
        "--instance",
        "db",
    ])))
    .unwrap();
    let w = &stats["instances"][0]["recovery_window"];
    assert_eq!(w["base_backups"], 2, "{stats}");
    assert_eq!(
        w["from"].as_str().map(|s| s[..19].to_string()),
        first["basebackup"]["stop_time"]
            .as_str()
            .map(|s| s[..19].to_string()),
        "{stats}"
    );
    assert_eq!(
        w["newest_segment"],
        *after_prune.iter().filter(|f| f.len() == 24).max().unwrap(),
        "{stats}"
    );
    {
        // After the second base backup: served by it.
        let r = restore_at(&cluster, &repo, &between[4], "k4");
        assert_eq!(r.batches(), expect(1..=4));
    }
    {
        // Before the second base backup: served by the first, through the WAL prune kept.
        let r = restore_at(&cluster, &repo, &between[1], "k1");
        assert_eq!(r.batches(), expect(1..=1));
    }
    {
        let r = restore_at(&cluster, &repo, "latest", "latest2");
        assert_eq!(r.batches(), expect(1..=5));
    }
}

#[test]
fn a_restored_server_put_in_the_old_ones_place_archives_a_new_timeline_that_later_restores_follow()
{
    let (cluster, repo) = archiving_cluster();
    create_batch_table(&cluster);
    cluster.switch_and_wait();
    base_backup(&repo);
    let mut between = vec![String::new()];
    for k in 1..=2 {
        between.push(insert_batch(&cluster, k));
    }
    // Batch 2 was a mistake: the server restored to before it (promoted on timeline 2) takes the old
    // one's place (its port), and is pointed at the instance's archive again.
    let mut b = restore_at(&cluster, &repo, &between[1], "timeline2");
    assert_eq!(b.batches(), expect(1..=1));
    cluster.stop();
    b.sql(&format!("ALTER SYSTEM SET port = {}", cluster.port));
    b.restart();
    b.port = cluster.port;
    // It was promoted with archiving off, so its timeline history is not archived: restores cannot follow
    // timeline 2 yet, and `wal-setup --apply` archives it.
    let out = ok(cairn_pg(&repo).args(["instance", "wal-setup", "db", "--apply"]));
    assert!(out.contains("00000002.history"), "{out}");
    b.restart();
    assert_eq!(b.sql("SHOW archive_mode"), "on");
    for k in 3..=4 {
        between.push(insert_batch(&b, k));
    }
    assert!(
        listed_files(&wal_list(&repo, "db"))
            .iter()
            .any(|f| f.starts_with("00000002") && f.len() == 24),
        "timeline 2's segments are archived"
    );
    ok(cairn_pg(&repo).arg("check"));
    // Later restores follow timeline 2 from the same base backup: batch 2 (only on timeline 1) is gone.
    {
        let r = restore_at(&cluster, &repo, &between[3], "on-timeline2");
        assert_eq!(r.batches(), vec![(1, 2000), (3, 2000)]);
    }
    {
        let r = restore_at(&cluster, &repo, "latest", "latest-timeline2");
        assert_eq!(r.batches(), vec![(1, 2000), (3, 2000), (4, 2000)]);
    }
    {
        let r = restore_at(&cluster, &repo, &between[1], "before-the-switch");
        assert_eq!(r.batches(), expect(1..=1));
    }
}

#[test]
fn a_missing_wal_segment_makes_check_fail_naming_it_and_a_restore_past_it_stops_with_a_clear_error()
{
    let (cluster, repo) = archiving_cluster();
    create_batch_table(&cluster);
    base_backup(&repo);
    let mut between = vec![String::new()];
    for k in 1..=4 {
        between.push(insert_batch(&cluster, k));
    }
    ok(cairn_pg(&repo).arg("check"));
    // The segment holding batch 3 goes missing (each batch has its own segment).
    let files = listed_files(&wal_list(&repo, "db"));
    let segs: Vec<&String> = files.iter().filter(|f| f.len() == 24).collect();
    let victim = segs[segs.len() - 2].clone();
    fs::remove_file(repo.join("wal").join(format!("db.{victim}"))).unwrap();
    let (code, out, _) = run(cairn_pg(&repo).arg("check"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&victim) && out.contains("missing"),
        "check names the missing segment: {out}"
    );
    // Recovery to a time after batch 3 must read past it (to batch 4's commit): refused, naming it.
    for at in ["latest", between[3].as_str()] {
        let data = cluster.root().join("never");
        let err = fails(pitr_restore(&repo, at, &data).arg("--start"), 1);
        assert!(err.contains(&victim) && err.contains("missing"), "{err}");
        assert!(!data.exists(), "nothing was written for a refused restore");
    }
    // A time before the gap still restores.
    let r = restore_at(&cluster, &repo, &between[1], "before-gap");
    assert_eq!(r.batches(), expect(1..=1));
}

#[test]
fn a_command_run_with_another_users_home_keeps_its_cache_in_its_own_home() {
    // A PostgreSQL started by root keeps root's environment: archive_command runs as postgres with
    // HOME=/root, where postgres may not write. wal-push must still work (its cache goes to postgres's own
    // home from the password database).
    let (cluster, repo) = archiving_cluster();
    let seg = repo.with_file_name("000000010000000000000042");
    // The cluster's own system identifier: the segment joins what its archiver pushes.
    let sysid: u64 = cluster
        .sql("SELECT system_identifier FROM pg_control_system()")
        .parse()
        .unwrap();
    fs::write(
        &seg,
        wal_segment("000000010000000000000042", 1 << 20, 42, sysid),
    )
    .unwrap();
    chown_postgres(&seg);
    let out = ok(cairn_pg(&repo)
        .env_remove("XDG_CACHE_HOME")
        .env("HOME", "/root")
        .args(["wal-push", "--instance", "db"])
        .arg(&seg));
    assert!(out.contains("archived"), "{out}");
    let files = listed_files(&wal_list(&repo, "db"));
    assert!(
        files.contains(&"000000010000000000000042".to_string()),
        "{files:?}"
    );
}

/// `health --json` and its exit code, with the instance's `wal` report.
fn health(repo: &Path, wal_grace: &str) -> (i32, Value, String) {
    let (code, out, err) =
        run(cairn_pg(repo).args(["--json", "health", "--wal-grace-seconds", wal_grace]));
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}\n{err}"));
    let db = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["instance"] == "db")
        .cloned()
        .unwrap();
    (code, db, err)
}

#[test]
fn health_reports_a_failing_archive_command_and_archiving_that_fell_behind() {
    let (cluster, repo) = archiving_cluster();
    let good = cluster.sql("SHOW archive_command");
    cluster.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    cluster.switch_and_wait();
    let (_, db, _) = health(&repo, "300");
    assert_eq!(db["wal"]["status"], "ok", "{db}");
    assert!(db["wal"]["newest_segment"].as_str().is_some(), "{db}");
    // archive_command fails: health fails naming it.
    cluster.sql("ALTER SYSTEM SET archive_command = 'false'");
    cluster.sql("SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(500));
    cluster.sql("INSERT INTO t SELECT 1; SELECT pg_switch_wal()");
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.sql("SELECT failed_count FROM pg_stat_archiver") == "0" {
        assert!(Instant::now() < deadline, "the archiver never failed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, db, err) = health(&repo, "300");
    assert_eq!(code, 1, "{db}");
    assert_eq!(db["status"], "wal-failing", "{db}");
    assert!(err.contains("archive_command is failing"), "{err}");
    // An archive_command that hangs fails nothing, but the finished segments wait: behind.
    cluster.sql("ALTER SYSTEM SET archive_command = 'sleep 8'");
    cluster.sql("ALTER SYSTEM SET archive_timeout = '1s'");
    cluster.sql("SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_secs(3));
    // The failed segment is retried with the slow command: later segments wait behind it.
    cluster.sql("SELECT pg_stat_reset_shared('archiver')");
    cluster.sql("INSERT INTO t SELECT 2; SELECT pg_switch_wal()");
    std::thread::sleep(Duration::from_secs(3));
    let (code, db, err) = health(&repo, "0");
    assert_eq!(code, 1, "{db}");
    assert_eq!(db["status"], "wal-behind", "{db}\n{err}");
    // Archiving again: healthy.
    cluster.sql(&format!(
        "ALTER SYSTEM SET archive_command = '{}'",
        good.replace('\'', "''")
    ));
    cluster.sql("ALTER SYSTEM RESET archive_timeout");
    cluster.sql("SELECT pg_reload_conf()");
    // Once the slow command returned, the archiver archives what waits with the good one.
    cluster.switch_and_wait();
    let (_, db, _) = health(&repo, "0");
    assert_eq!(db["wal"]["status"], "ok", "{db}");
}

/// A filestore version: files (one large enough to be chunked) in a nested tree, owned by postgres (the
/// archiver's user takes the base backups and reads it); `version` changes some files, adds one, removes
/// one.
fn write_filestore(dir: &Path, version: u64) {
    fs::create_dir_all(dir.join("ab/cd")).unwrap();
    fs::write(dir.join("ab/big.bin"), pseudo_random(3 << 20, 1)).unwrap();
    fs::write(
        dir.join("ab/cd/attachment"),
        pseudo_random(200_000, 10 + version),
    )
    .unwrap();
    fs::write(dir.join("version.txt"), format!("filestore v{version}\n")).unwrap();
    fs::write(dir.join(format!("added-in-v{version}")), b"new").unwrap();
    if version > 1 {
        fs::remove_file(dir.join(format!("added-in-v{}", version - 1))).unwrap();
    }
    chown_postgres(dir);
}

/// A copy of `dir` with its metadata (what a restore of it must reproduce).
fn copy_tree(dir: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(dir)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn restore_at_a_time_restores_the_filestore_from_the_snapshot_at_or_before_it_byte_for_byte() {
    let top = tempfile::tempdir().unwrap();
    let filestore = top.path().join("filestore");
    write_filestore(&filestore, 1);
    let (cluster, repo) = archiving_cluster_with(&["--path", &filestore.display().to_string()]);
    create_batch_table(&cluster);
    cluster.switch_and_wait();
    // Snapshot k holds filestore version k and the base backup taken with it.
    let expected = top.path().join("expected");
    fs::create_dir(&expected).unwrap();
    let mut between = vec![String::new()];
    for k in 1..=2u64 {
        if k > 1 {
            write_filestore(&filestore, k);
        }
        copy_tree(&filestore, &expected.join(format!("v{k}")));
        base_backup(&repo);
        between.push(insert_batch(&cluster, k as i32));
    }
    // A third version, backed up after the second restore time: not "at or before" it.
    write_filestore(&filestore, 3);
    base_backup(&repo);
    for (k, at) in between.iter().enumerate().skip(1) {
        let files = cluster.root().join(format!("files-{k}"));
        let data = cluster.root().join(format!("restored-files-{k}"));
        let port = free_port();
        let out = ok(pitr_restore(&repo, at, &data)
            .args(["--json", "--start", "--port", &port.to_string(), "--target"])
            .arg(&files));
        let r = Restored {
            data,
            socket_dir: cluster.root().to_path_buf(),
            port,
        };
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["started"], true, "{v}");
        assert_eq!(
            r.batches(),
            expect(1..=k as i32),
            "restored to {}",
            between[k]
        );
        // Batch 2 is the last transaction ever: PostgreSQL cannot see the target time passed (it learns
        // that from a later commit); cairn recovers to the archive's end, which is the same state.
        assert_eq!(v["replayed_to_end"].is_string(), k == 2, "{v}");
        assert_same_tree(&expected.join(format!("v{k}")), &files.join("filestore"));
        assert_eq!(
            fs::read_to_string(files.join("filestore/version.txt")).unwrap(),
            format!("filestore v{k}\n")
        );
    }
}

/// `cairn --json wal-push`/`wal-fetch` with this password and cache directory: (exit code, key_cache).
fn cached_run(repo: &Path, cache: &Path, password: &str, args: &[&str]) -> (i32, String) {
    let (code, out, err) = run(cairn(repo)
        .env("XDG_CACHE_HOME", cache)
        .env("CAIRN_PASSWORD", password)
        .arg("--json")
        .args(args));
    if code != 0 {
        return (code, err);
    }
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}\n{err}"));
    (code, v["key_cache"].as_str().unwrap_or("").to_string())
}

#[test]
fn wal_push_and_fetch_take_the_key_from_the_hosts_cache_only_with_the_same_password_and_a_kept_key()
{
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let cache = dir.path().join("cache");
    // The key file gets the Argon2id parameters of real keys (64 MiB, 3 passes).
    ok(cairn(&repo)
        .env("CAIRN_KDF_MEMORY_KIB", "65536")
        .env("CAIRN_KDF_ITERATIONS", "3")
        .arg("init"));
    ok(cairn(&repo).args(["instance", "add", "db", "--path", "/tmp", "--wal"]));
    let config: Value = serde_json::from_slice(&fs::read(repo.join("config")).unwrap()).unwrap();
    let cache_file = cache
        .join("cairn/keys")
        .join(config["repository_id"].as_str().unwrap());
    let segs: Vec<PathBuf> = (1..=6)
        .map(|i| {
            let name = format!("00000001000000000000000{i}");
            let p = dir.path().join(&name);
            fs::write(&p, wal_segment(&name, 1 << 20, i, TEST_SYSID)).unwrap();
            p
        })
        .collect();
    let push = |seg: &Path, password: &str| {
        cached_run(
            &repo,
            &cache,
            password,
            &["wal-push", "--instance", "db", seg.to_str().unwrap()],
        )
    };
    // The first push derives the key and caches it, private to its user; the next ones take it from there.
    let t = Instant::now();
    assert_eq!(push(&segs[0], PASSWORD), (0, "miss".into()));
    let derived = t.elapsed();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache_file), 0o600);
    assert_eq!(mode(cache_file.parent().unwrap()), 0o700);
    let t = Instant::now();
    assert_eq!(push(&segs[1], PASSWORD), (0, "hit".into()));
    let cached = t.elapsed();
    eprintln!("wal-push deriving the key: {derived:?}; with the cached key: {cached:?}");
    let back = dir.path().join("back");
    let (code, used) = cached_run(
        &repo,
        &cache,
        PASSWORD,
        &[
            "wal-fetch",
            "--instance",
            "db",
            "000000010000000000000002",
            back.to_str().unwrap(),
        ],
    );
    assert_eq!((code, used.as_str()), (0, "hit"));
    assert!(fs::read(&back).unwrap() == fs::read(&segs[1]).unwrap());
    // The cached key never opens the repository for another password.
    let (code, err) = push(&segs[2], "not the password");
    assert_eq!(code, 12, "{err}");
    assert!(err.contains("wrong password"), "{err}");
    // Turned off: the key files are used and the cache is left alone.
    let (code, out, _) = run(cairn(&repo)
        .env("XDG_CACHE_HOME", &cache)
        .env("CAIRN_KEY_CACHE", "off")
        .args(["--json", "wal-push", "--instance", "db"])
        .arg(&segs[2]));
    assert_eq!(code, 0);
    assert!(
        out.contains("\"key_cache\": \"unused\"") || out.contains("\"key_cache\":\"unused\""),
        "{out}"
    );
    // A cache file others may read is not trusted: ignored, and replaced by a private one.
    fs::set_permissions(&cache_file, fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(push(&segs[3], PASSWORD), (0, "miss".into()));
    assert_eq!(mode(&cache_file), 0o600);
    // Nor one of another user.
    std::os::unix::fs::chown(&cache_file, Some(65534), None).unwrap();
    assert_eq!(push(&segs[4], PASSWORD), (0, "miss".into()));
    // A removed key stops opening the repository though the cache still holds the master key it gave.
    let new_pw = dir.path().join("new-password");
    fs::write(&new_pw, "a new passphrase\n").unwrap();
    let keys = |pw: &str| -> Vec<Value> {
        let out = ok(cairn(&repo)
            .env("CAIRN_PASSWORD", pw)
            .args(["key", "list", "--json"]));
        serde_json::from_str::<Value>(&out).unwrap()["keys"]
            .as_array()
            .unwrap()
            .clone()
    };
    let original = keys(PASSWORD)[0]["id"].as_str().unwrap().to_string();
    ok(cairn(&repo).args([
        "key",
        "add",
        "--new-password-file",
        new_pw.to_str().unwrap(),
    ]));
    ok(cairn(&repo)
        .env("CAIRN_PASSWORD", "a new passphrase")
        .args(["key", "remove", &original]));
    let (code, err) = push(&segs[5], PASSWORD);
    assert_eq!(
        code, 12,
        "the removed key's password still opened the repository: {err}"
    );
    assert_eq!(push(&segs[5], "a new passphrase"), (0, "miss".into()));
    // Pushed again (already archived): the new password's key came from the cache.
    assert_eq!(push(&segs[5], "a new passphrase"), (0, "hit".into()));
}

/// The archived segments of instance `db` (not `.history`, `.partial` or `.backup` files), oldest first.
fn archived_segments(repo: &Path) -> Vec<String> {
    let mut segs: Vec<String> = listed_files(&wal_list(repo, "db"))
        .into_iter()
        .filter(|f| f.len() == 24)
        .collect();
    segs.sort();
    segs
}

/// `instance restore db --at AT --start` into `label` under the cluster's directory: its exit code, stdout
/// and stderr, and the server (stopped when dropped, whether or not it came up).
fn try_restore_at(
    cluster: &Cluster,
    repo: &Path,
    at: &str,
    label: &str,
) -> (i32, String, String, Restored) {
    let data = cluster.root().join(format!("restored-{label}"));
    let port = free_port();
    let (code, out, err) =
        run(pitr_restore(repo, at, &data).args(["--json", "--start", "--port", &port.to_string()]));
    let server = Restored {
        data,
        socket_dir: cluster.root().to_path_buf(),
        port,
    };
    (code, out, err, server)
}

#[test]
fn an_archived_segment_that_cannot_be_read_stops_recovery_instead_of_ending_it_at_an_earlier_point()
{
    let (cluster, repo) = archiving_cluster();
    create_batch_table(&cluster);
    cluster.switch_and_wait();
    base_backup(&repo);
    let mut between = vec![String::new()];
    for k in 1..=3 {
        between.push(insert_batch(&cluster, k));
    }
    // The WAL object of the segment holding batch 2 cannot be read by the server's user (restored from a
    // copy with the wrong owner, say); root, who plans the restore, can read it.
    let segs = archived_segments(&repo);
    let victim = segs[segs.len() - 2].clone();
    let obj = repo.join("wal").join(format!("db.{victim}"));
    fs::set_permissions(&obj, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();

    // wal-fetch fails with an exit code recovery takes as fatal (above 125), not with the 1 that means
    // "not archived", which recovery takes for the archive's end; nothing is left at the destination.
    let dir = cluster.root().join("fetch");
    fs::create_dir(&dir).unwrap();
    chown_postgres(&dir);
    let (code, _, err) = run(cairn_pg(&repo)
        .args(["wal-fetch", "--instance", "db", &victim])
        .arg(dir.join("RECOVERYXLOG")));
    assert_eq!(code, 255, "{err}");
    assert!(
        err.contains(&victim) && err.contains("Permission denied"),
        "{err}"
    );
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    // A destination that cannot be written is such a failure too; a file never archived is still exit 1.
    let (code, _, err) = run(cairn_pg(&repo)
        .args(["wal-fetch", "--instance", "db", &segs[0]])
        .arg(dir.join("no-such-dir/RECOVERYXLOG")));
    assert_eq!(code, 255, "{err}");
    let err = fails(
        cairn_pg(&repo)
            .args(["wal-fetch", "--instance", "db", "0000000100000000000000FF"])
            .arg(dir.join("RECOVERYXLOG")),
        1,
    );
    assert!(err.contains("not archived"), "{err}");

    // Recovery past the damaged segment stops with an error naming it; it never promotes a server that
    // lacks batch 2 (before the fix: `latest` promoted with batch 1 alone, and the time after batch 2 did
    // too, "recovered to the archive's end").
    for (at, label) in [("latest", "latest"), (between[2].as_str(), "k2")] {
        let (code, out, err, server) = try_restore_at(&cluster, &repo, at, label);
        let promoted = code == 0;
        assert!(
            !promoted,
            "restore to {at} promoted a server holding {:?}: {out}",
            server.batches()
        );
        assert!(
            err.contains(&victim),
            "the error names the segment recovery could not restore: {err}"
        );
    }
    // Readable again, the same restore reaches everything.
    fs::set_permissions(&obj, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let r = restore_at(&cluster, &repo, "latest", "readable");
    assert_eq!(r.batches(), expect(1..=3));
}

#[test]
fn a_gap_after_a_time_targets_segments_stops_the_restore_instead_of_promoting_before_the_target() {
    let (cluster, repo) = archiving_cluster();
    create_batch_table(&cluster);
    cluster.switch_and_wait();
    base_backup(&repo);
    insert_batch(&cluster, 1);
    // Archiving fails for a while (a full repository disk): the segments finished meanwhile are archived
    // only once it works again, after the target time, although batch 2 committed before it.
    let command = cluster.sql("SHOW archive_command");
    cluster.sql("ALTER SYSTEM SET archive_command = 'false'");
    cluster.sql("SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(500));
    cluster.sql("CREATE TABLE other (x int)");
    let held = cluster.sql("SELECT pg_walfile_name(pg_switch_wal())");
    cluster.sql(
        "INSERT INTO t (batch, id, pad) SELECT 2, g, repeat(md5(g::text), 4) FROM generate_series(1, 2000) g",
    );
    let batch2 = cluster.sql("SELECT pg_walfile_name(pg_switch_wal())");
    std::thread::sleep(Duration::from_millis(1200));
    let target = server_second(&cluster);
    std::thread::sleep(Duration::from_millis(1200));
    cluster.sql(&format!(
        "ALTER SYSTEM SET archive_command = '{}'",
        command.replace('\'', "''")
    ));
    cluster.sql("SELECT pg_reload_conf()");
    insert_batch(&cluster, 3);
    let segs = archived_segments(&repo);
    assert!(
        segs.contains(&held) && segs.contains(&batch2) && segs.last().unwrap() > &batch2,
        "the held-back segments {held} and {batch2} were archived, and later ones: {segs:?}"
    );
    // Restored to the target, batch 2 is there.
    {
        let r = restore_at(&cluster, &repo, &target, "whole");
        assert_eq!(r.batches(), expect(1..=2));
    }
    // Batch 2's segment is lost (a DBA cleared the backlog with archive_command = 'true', say): a gap.
    // The archive still holds a segment archived after the target before the gap, so the plan passes, and
    // recovery runs out of WAL at the gap; that must fail naming it, not promote without batch 2.
    fs::remove_file(repo.join("wal").join(format!("db.{batch2}"))).unwrap();
    let (code, out, err, server) = try_restore_at(&cluster, &repo, &target, "gap");
    assert!(
        code != 0,
        "restore to {target} promoted a server holding {:?} over the gap at {batch2}: {out}",
        server.batches()
    );
    assert!(
        err.contains(&batch2) && err.contains("missing"),
        "the error names the missing segment: {err}"
    );
}

#[test]
fn wal_fetch_waits_for_another_hosts_exclusive_lock_and_recovery_then_goes_on() {
    let (cluster, repo) = archiving_cluster();
    create_batch_table(&cluster);
    cluster.switch_and_wait();
    base_backup(&repo);
    for k in 1..=2 {
        insert_batch(&cluster, k);
    }
    // Restored without --start; the server is started by hand while a prune of another host holds the
    // repository (before the fix, every wal-fetch failed with exit 11, which recovery takes for "not
    // archived").
    let data = cluster.root().join("restored-locked");
    let port = free_port();
    ok(pitr_restore(&repo, "latest", &data).args(["--port", &port.to_string()]));
    let lock = repo.join("locks").join("another-hosts-prune");
    let info = serde_json::json!({
        "pid": 1, "host": "another-host", "time": chrono::Utc::now().to_rfc3339(),
        "exclusive": true, "command": "prune",
    });
    fs::write(&lock, serde_json::to_vec(&info).unwrap()).unwrap();
    let server = Restored {
        data: data.clone(),
        socket_dir: cluster.root().to_path_buf(),
        port,
    };
    let log = data.join("cairn-recovery.log");
    let out = as_postgres(pg_bin("pg_ctl"))
        .args(["start", "-W", "-D"])
        .arg(&data)
        .arg("-l")
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::thread::sleep(Duration::from_secs(3));
    // Recovery waits for its first segment: no WAL replayed, so the server accepts no connection yet.
    let early = server.try_sql("SELECT 1");
    assert!(early.is_err(), "recovered under the lock: {early:?}");
    fs::remove_file(&lock).unwrap();
    // Promoted means the server answers that it is out of recovery. (Not pg_control's "in production":
    // the base backup's pg_control says so, copied from the running server, until recovery rewrites it once
    // it has its first segment, so a check made before then passed at once, and the rows were counted
    // 0.5 s later, from a hot standby still replaying under load.)
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.try_sql("SELECT pg_is_in_recovery()").as_deref() != Ok("f") {
        assert!(
            Instant::now() < deadline,
            "the restored server did not promote: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(server.batches(), expect(1..=2), "{}", server.log());
}

/// The wait of `wal-fetch` for an exclusive lock is the caller's to choose (a flag or the environment of
/// restore_command), 10 minutes when not given.
#[test]
fn wal_fetch_waits_for_an_exclusive_lock_as_long_as_it_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    ok(cairn(&repo).arg("init"));
    ok(cairn(&repo).args(["instance", "add", "db", "--path", "/tmp", "--wal"]));
    let name = "000000010000000000000005";
    let seg = dir.path().join(name);
    fs::write(&seg, wal_segment(name, 1 << 20, 5, TEST_SYSID)).unwrap();
    ok(cairn(&repo)
        .args(["wal-push", "--instance", "db"])
        .arg(&seg));
    let lock = repo.join("locks").join("another-hosts-prune");
    let info = serde_json::json!({
        "pid": 1, "host": "another-host", "time": chrono::Utc::now().to_rfc3339(),
        "exclusive": true, "command": "prune",
    });
    fs::write(&lock, serde_json::to_vec(&info).unwrap()).unwrap();
    let dest = dir.path().join("back");
    for (how, secs) in [("flag", 2u64), ("env", 0)] {
        let mut c = cairn(&repo);
        c.args(["wal-fetch", "--instance", "db", name]).arg(&dest);
        match how {
            "flag" => c.args(["--lock-wait", &secs.to_string()]),
            _ => c.env("CAIRN_WAL_FETCH_LOCK_WAIT", secs.to_string()),
        };
        let t = Instant::now();
        let (code, _, err) = run(&mut c);
        let took = t.elapsed();
        assert_eq!(code, 255, "{how}: {err}");
        assert!(err.contains(&format!("waited {secs} s")), "{how}: {err}");
        assert!(
            took >= Duration::from_secs(secs) && took < Duration::from_secs(secs + 8),
            "{how}: waited {took:?} for a limit of {secs} s"
        );
        assert!(!dest.exists());
    }
    fs::remove_file(&lock).unwrap();
    ok(cairn(&repo)
        .args(["wal-fetch", "--instance", "db", name, "--lock-wait", "0"])
        .arg(&dest));
    assert!(fs::read(&dest).unwrap() == fs::read(&seg).unwrap());
}

#[test]
fn a_local_time_that_a_clock_change_repeats_or_skips_is_refused_instead_of_guessed() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    ok(cairn_root(&repo).arg("init"));
    ok(cairn_root(&repo).args(["instance", "add", "db", "--path", "/tmp", "--wal"]));
    let restore = |at: &str| {
        let mut c = pitr_restore(&repo, at, &dir.path().join("data"));
        c.env("TZ", "Europe/Berlin");
        c
    };
    // 02:30 on 26 October 2025 happened twice in Berlin (CEST, then CET): before the fix the earlier was
    // taken silently, a restore an hour away from the one meant half the time.
    let err = fails(&mut restore("2025-10-26 02:30"), 1);
    assert!(
        err.contains("ambiguous")
            && err.contains("2025-10-26T02:30:00+02:00")
            && err.contains("2025-10-26T02:30:00+01:00"),
        "{err}"
    );
    // 02:30 on 30 March 2025 never happened there.
    let err = fails(&mut restore("2025-03-30 02:30:00"), 1);
    assert!(err.contains("does not exist"), "{err}");
    // With its offset, or away from a change, the time is taken (and this instance has no base backup).
    for at in ["2025-10-26T02:30:00+01:00", "2025-10-26 04:30"] {
        let err = fails(&mut restore(at), 1);
        assert!(err.contains("no base backup"), "{at}: {err}");
    }
    assert!(!dir.path().join("data").exists());
}
