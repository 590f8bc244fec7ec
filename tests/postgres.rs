//! PostgreSQL end to end, against a real server (see tests/harness/pg.rs): `backup --pg` of an instance
//! (database + file tree), point-in-time restores into new databases compared value by value, next-day
//! deduplication, and every failure mode giving one clear error line, exit 1, no snapshot and a clean check.

mod harness;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use harness::pg::{pg_env, pg_password, psql, unique_name, with_pg, TempDb};
use harness::*;
use serde_json::Value;

/// `cairn` bound to a repository, with the test server's connection settings in its environment.
fn cairn_pg(repo: &Path) -> Command {
    let mut c = with_pg(cairn(repo));
    c.env_remove("CAIRN_TEST_PG");
    c
}

fn snapshots(repo: &Path) -> Vec<Value> {
    serde_json::from_str(&ok(cairn(repo).args(["snapshots", "--json"]))).unwrap()
}

fn assert_check_clean(repo: &Path) {
    let out = ok(cairn(repo).args(["check", "--read-data", "--json"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["clean"], true, "check: {out}");
}

/// Rows in the events table of [`create_app_db`]: about 25 MB of dump.
const EVENTS: i64 = 150_000;

/// An application database: several tables with numeric, text, bytea, json, jsonb and timestamptz columns,
/// indexes (btree, gin), a sequence, foreign keys and a 320 KB large object.
fn create_app_db(db: &str) {
    psql(
        db,
        &format!(
            "CREATE TABLE customers (
                id serial PRIMARY KEY, name text NOT NULL, balance numeric(14,4) NOT NULL,
                created timestamptz NOT NULL, avatar bytea, profile jsonb, raw json);
             CREATE INDEX customers_name ON customers (name);
             CREATE INDEX customers_profile ON customers USING gin (profile);
             INSERT INTO customers (name, balance, created, avatar, profile, raw)
             SELECT 'customer ' || g, g * 12.3456, timestamptz '2025-01-01 00:00+00' + g * interval '1 minute',
                    decode(md5(g::text), 'hex'), jsonb_build_object('tier', g % 5, 'tags', jsonb_build_array('a', g)),
                    json_build_object('g', g, 'note', 'é ü ✓')
             FROM generate_series(1, 2000) g;
             CREATE TABLE events (
                id bigint PRIMARY KEY, customer_id int NOT NULL REFERENCES customers, kind text NOT NULL,
                payload text NOT NULL, at timestamptz NOT NULL);
             INSERT INTO events
             SELECT g, 1 + g % 2000, 'k' || g % 13,
                    md5(g::text) || md5((g * 31)::text) || md5((g * 17)::text) || md5((g * 7)::text),
                    timestamptz '2025-01-01 00:00+00' + g * interval '1 second'
             FROM generate_series(1, {EVENTS}) g;
             CREATE INDEX events_customer ON events (customer_id);
             CREATE SEQUENCE invoice_no START 1000;
             SELECT nextval('invoice_no') FROM generate_series(1, 5);
             CREATE TABLE documents (id serial PRIMARY KEY, title text NOT NULL, content oid NOT NULL);
             INSERT INTO documents (title, content)
             SELECT 'contract', lo_from_bytea(0, string_agg(decode(md5(g::text), 'hex'), ''::bytea ORDER BY g))
             FROM generate_series(1, 20000) g;
             VACUUM ANALYZE;"
        ),
    );
}

/// A next day's ~1% change: the newest events updated (as records in use are), a few old ones corrected,
/// new events and customers, the oldest events purged, customers updated, the sequence advanced and the
/// large object rewritten in place.
fn drift_app_db(db: &str) {
    psql(
        db,
        &format!(
            "UPDATE events SET kind = 'updated', payload = upper(payload) WHERE id > {EVENTS} - {EVENTS} / 100;
             UPDATE events SET kind = 'corrected' WHERE id IN (17, 40000, 99999);
             INSERT INTO customers (name, balance, created, profile)
             SELECT 'new ' || g, 0, now(), '{{}}' FROM generate_series(1, 20) g;
             DELETE FROM customers WHERE name = 'new 20';
             UPDATE customers SET balance = balance + 1, profile = profile || '{{\"vip\": true}}' WHERE id % 100 = 0;
             INSERT INTO events
             SELECT {EVENTS} + g, 1 + g % 2000, 'new', md5((-g)::text), now()
             FROM generate_series(1, {EVENTS} / 200) g;
             DELETE FROM events WHERE id <= {EVENTS} / 1000;
             SELECT nextval('invoice_no') FROM generate_series(1, 3);
             SELECT lo_put(content, 1000, '\\xdeadbeef'::bytea) FROM documents;
             VACUUM ANALYZE;"
        ),
    );
}

/// Everything the restores must reproduce: per-table checksums over every row in key order, sequence
/// states, the large object's bytes, and the indexes.
fn fingerprint(db: &str) -> String {
    psql(
        db,
        "SELECT concat_ws(E'\\n',
            (SELECT count(*) || ' ' || md5(string_agg(c::text, ',' ORDER BY id)) FROM customers c),
            (SELECT count(*) || ' ' || md5(string_agg(e::text, ',' ORDER BY id)) FROM events e),
            (SELECT count(*) || ' ' || md5(string_agg(d::text, ',' ORDER BY id)) FROM documents d),
            (SELECT last_value || ' ' || is_called FROM invoice_no),
            (SELECT last_value || ' ' || is_called FROM customers_id_seq),
            (SELECT string_agg(md5(lo_get(content)) || ' ' || length(lo_get(content)), ',') FROM documents),
            (SELECT string_agg(indexdef, '; ' ORDER BY indexname) FROM pg_indexes WHERE schemaname = 'public'))",
    )
}

fn postgres_meta(snap: &Value) -> &Value {
    &snap["metadata"]["postgres"]
}

fn table_rows(meta: &Value, table: &str) -> i64 {
    meta["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["schema"] == "public" && t["table"] == table)
        .unwrap_or_else(|| panic!("no row count for {table}: {meta}"))["rows"]
        .as_i64()
        .unwrap()
}

#[test]
fn instance_snapshots_restore_each_point_in_time_exactly() {
    let (dir, repo) = new_repo();
    let src = TempDb::create("app");
    let db = src.name();
    create_app_db(db);
    let files = dir.path().join("filestore");
    fs::create_dir_all(files.join("ab")).unwrap();
    fs::write(files.join("ab/attachment.bin"), pseudo_random(300_000, 7)).unwrap();
    fs::write(files.join("readme.txt"), b"instance files\n").unwrap();

    // Day 1: database + file store in one snapshot.
    let day1_fp = fingerprint(db);
    let out = ok(cairn_pg(&repo)
        .args(["backup", "--json", "--instance", "shop", "--pg", db])
        .arg(&files));
    let first: Value = serde_json::from_str(&out).unwrap();
    let id1 = first["snapshot_id"].as_str().unwrap().to_string();
    assert_eq!(first["files_new"], 2);

    let list = snapshots(&repo);
    assert_eq!(list.len(), 1);
    let snap1 = &list[0];
    let stream = format!("{db}.dump");
    assert_eq!(snap1["stream_names"], serde_json::json!([stream]));
    assert_eq!(snap1["instance"], "shop");
    let meta = postgres_meta(snap1);
    assert_eq!(meta["database"], db);
    assert_eq!(meta["stream"], stream.as_str());
    assert!(
        meta["server_version_num"].as_i64().unwrap() >= 100_000,
        "{meta}"
    );
    assert_eq!(meta["encoding"], "UTF8");
    assert!(meta["size_bytes"].as_i64().unwrap() > 20_000_000, "{meta}");
    let lsn = meta["wal_lsn"].as_str().unwrap();
    assert!(
        lsn.split_once('/').is_some_and(
            |(a, b)| u64::from_str_radix(a, 16).is_ok() && u64::from_str_radix(b, 16).is_ok()
        ),
        "LSN {lsn}"
    );
    assert!(!meta["exported_snapshot"].as_str().unwrap().is_empty());
    assert!(meta["txid_snapshot"].as_str().unwrap().contains(':'));
    assert_eq!(meta["in_recovery"], false);
    assert_eq!(table_rows(meta, "events"), EVENTS);
    assert_eq!(table_rows(meta, "customers"), 2000);
    assert_eq!(table_rows(meta, "documents"), 1);
    assert_eq!(meta["tables"].as_array().unwrap().len(), 3);
    // `show` (text and JSON) carries the same facts.
    let shown = ok(cairn(&repo).args(["show", &id1[..12]]));
    assert!(
        shown.contains("\"wal_lsn\"") && shown.contains(lsn),
        "{shown}"
    );
    let shown: Value =
        serde_json::from_str(&ok(cairn(&repo).args(["show", &id1, "--json"]))).unwrap();
    assert_eq!(postgres_meta(&shown), meta);

    // The raw dump is usable by pg_restore by hand.
    let dump_file = dir.path().join("day1.dump");
    let dump = harness::with_password(&mut Command::new(cairn_bin()))
        .env("CAIRN_REPO", &repo)
        .args(["dump", &id1, &stream])
        .output()
        .unwrap();
    assert!(dump.status.success());
    fs::write(&dump_file, &dump.stdout).unwrap();
    let dump_size = dump.stdout.len() as u64;
    assert_eq!(snap1["streams"][0]["size"], dump_size);
    assert!(dump_size > 20_000_000, "dump of {dump_size} bytes");
    let listing = with_pg(Command::new("pg_restore"))
        .arg("--list")
        .arg(&dump_file)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("TABLE DATA public events"), "{listing}");
    assert!(listing.contains("BLOB"), "{listing}");

    // Day 2: ~1% of the data changes; only a fraction of the dump is stored again.
    drift_app_db(db);
    let day2_fp = fingerprint(db);
    assert_ne!(day1_fp, day2_fp);
    let out = ok(cairn_pg(&repo)
        .args(["backup", "--json", "--instance", "shop", "--pg", db])
        .arg(&files));
    let second: Value = serde_json::from_str(&out).unwrap();
    let id2 = second["snapshot_id"].as_str().unwrap().to_string();
    assert_eq!(second["files_unmodified"], 2);
    let added = second["bytes_added"].as_u64().unwrap();
    assert!(
        added * 100 < dump_size * 30,
        "next-day backup stored {added} bytes of a {dump_size}-byte dump"
    );
    let meta2 = postgres_meta(&snapshots(&repo)[1]).clone();
    assert_eq!(
        table_rows(&meta2, "events"),
        EVENTS + EVENTS / 200 - EVENTS / 1000
    );
    assert_eq!(table_rows(&meta2, "customers"), 2019);
    assert_ne!(meta2["wal_lsn"], meta["wal_lsn"]);

    // Each snapshot restores into a new database holding exactly its point in time; day 1 together with its
    // file tree.
    let r1 = TempDb::reserve("r1");
    let r2 = TempDb::reserve("r2");
    let target = dir.path().join("restored");
    let out = ok(cairn_pg(&repo).args([
        "restore",
        &id1[..10],
        "--pg-target",
        r1.name(),
        "--target",
        target.to_str().unwrap(),
    ]));
    assert!(out.contains("row counts of 3 tables"), "{out}");
    assert_same_tree(&files, &target.join("filestore"));
    let out = ok(cairn_pg(&repo).args(["restore", &id2, "--pg-target", r2.name(), "--json"]));
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["verified"], true);
    assert_eq!(report["tables_verified"], 3);
    assert_eq!(fingerprint(r1.name()), day1_fp);
    assert_eq!(fingerprint(r2.name()), day2_fp);
    assert_check_clean(&repo);
}

/// A role of its own with a distinctive password, owning a small database.
struct Role {
    name: String,
    password: String,
    db: TempDb,
}

impl Role {
    fn create() -> Role {
        let name = unique_name("role");
        let password = format!("Pw-{}-x9Q", std::process::id());
        psql(
            "postgres",
            &format!("CREATE ROLE {name} LOGIN PASSWORD '{password}'"),
        );
        let db = TempDb::reserve("owned");
        psql(
            "postgres",
            &format!("CREATE DATABASE {} OWNER {name}", db.name()),
        );
        psql(
            db.name(),
            &format!(
                "SET ROLE {name};
                 CREATE TABLE notes (id serial PRIMARY KEY, body text);
                 INSERT INTO notes (body) SELECT 'note ' || g FROM generate_series(1, 500) g;"
            ),
        );
        Role { name, password, db }
    }

    /// cairn connecting as this role, with no password in the environment.
    fn cairn(&self, repo: &Path) -> Command {
        let mut c = cairn_pg(repo);
        c.env("PGUSER", &self.name).env_remove("PGPASSWORD");
        c
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = with_pg(Command::new("psql"))
            .args(["-X", "-q", "-d", "postgres", "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.db.name()
            ))
            .arg("-c")
            .arg(format!("DROP ROLE IF EXISTS {}", self.name))
            .output();
    }
}

#[test]
fn password_comes_from_pgpass_and_never_reaches_snapshots_or_messages() {
    let (dir, repo) = new_repo();
    let role = Role::create();
    let passfile = dir.path().join("pgpass");
    let host = &pg_env().iter().find(|(k, _)| k == "PGHOST").unwrap().1;
    fs::write(
        &passfile,
        format!(
            "# test\n{host}:*:{}:{}:{}\n",
            role.db.name(),
            role.name,
            role.password
        ),
    )
    .unwrap();
    fs::set_permissions(&passfile, fs::Permissions::from_mode(0o600)).unwrap();

    // Without a password anywhere the connection is refused; with the private password file it works.
    let err = fails(
        role.cairn(&repo)
            .args(["backup", "--pg", role.db.name()])
            .env("HOME", dir.path()),
        1,
    );
    assert!(err.contains("password"), "{err}");
    let out = ok(role
        .cairn(&repo)
        .args(["backup", "--json", "--pg", role.db.name()])
        .env("PGPASSFILE", &passfile));
    let id = serde_json::from_str::<Value>(&out).unwrap()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();

    // A wrong password (PGPASSWORD): one line naming the failure, not the password.
    let err = fails(
        role.cairn(&repo)
            .args(["backup", "--pg", role.db.name()])
            .env("PGPASSWORD", "Wr0ng-Secret-77"),
        1,
    );
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!err.contains("Wr0ng-Secret-77"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // A password in --pg-conn is refused before connecting (it could be stored or seen in a process list).
    let err = fails(
        role.cairn(&repo).args([
            "backup",
            "--pg",
            role.db.name(),
            "--pg-conn",
            "password=Wr0ng-Secret-77",
        ]),
        1,
    );
    assert!(err.contains("must not hold a password"), "{err}");
    assert!(!err.contains("Wr0ng-Secret-77"), "{err}");

    // The password is nowhere in what the repository holds or shows.
    let listing = ok(cairn(&repo).args(["snapshots", "--json"]));
    let shown = ok(cairn(&repo).args(["show", &id]));
    assert_eq!(snapshots(&repo).len(), 1);
    assert_eq!(
        postgres_meta(&snapshots(&repo)[0])["user"],
        role.name.as_str()
    );
    for text in [&listing, &shown, &out] {
        assert!(!text.contains(&role.password), "password leaked: {text}");
    }
    for entry in fs::read_dir(repo.join("snapshots")).unwrap() {
        let bytes = fs::read(entry.unwrap().path()).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains(&role.password));
    }
    assert_check_clean(&repo);
}

#[test]
fn wrong_database_name_fails_cleanly_with_no_snapshot() {
    let (_dir, repo) = new_repo();
    let missing = unique_name("missing");
    let err = fails(cairn_pg(&repo).args(["backup", "--pg", &missing]), 1);
    assert!(
        err.contains(&format!("database \"{missing}\" does not exist")),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(snapshots(&repo).is_empty());
    assert_check_clean(&repo);
}

#[test]
fn killed_pg_dump_leaves_no_snapshot_and_gets_no_password_argument() {
    let (dir, repo) = new_repo();
    let src = TempDb::create("killed");
    psql(
        src.name(),
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 100000) g",
    );
    // A `pg_dump` first on PATH that records its arguments, passes 100 KB of the real dump through, then
    // dies by SIGKILL: a dump killed mid-stream, as cairn sees it.
    let bin = dir.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let args_log = dir.path().join("pg_dump.args");
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v pg_dump"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let wrapper = bin.join("pg_dump");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/bash\n\
             if [ \"$1\" = --version ]; then exec {real} --version; fi\n\
             printf '%s\\n' \"$@\" > {log}\n\
             {real} \"$@\" | head -c 100000\n\
             kill -9 $$\n",
            real = real.trim(),
            log = args_log.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let files = dir.path().join("files");
    fs::create_dir_all(&files).unwrap();
    fs::write(files.join("f"), b"data").unwrap();
    let err = fails(
        cairn_pg(&repo)
            .env("PATH", &path)
            .args(["backup", "--pg", src.name()])
            .arg(&files),
        1,
    );
    assert!(err.contains("pg_dump"), "{err}");
    assert!(err.contains("killed by signal 9"), "{err}");
    assert!(err.contains("no snapshot written"), "{err}");
    assert!(snapshots(&repo).is_empty());
    assert_check_clean(&repo);

    let args = fs::read_to_string(&args_log).unwrap();
    assert!(
        args.contains("--format=custom") && args.contains("--compress=0"),
        "{args}"
    );
    assert!(args.contains("--snapshot="), "{args}");
    assert!(
        !args.contains(&pg_password()),
        "password in pg_dump's arguments: {args}"
    );

    // The real pg_dump then works on the same repository.
    ok(cairn_pg(&repo).args(["backup", "--pg", src.name()]));
    assert_eq!(snapshots(&repo).len(), 1);
}

#[test]
fn failing_pg_restore_is_reported_and_its_half_database_dropped() {
    let (_dir, repo) = new_repo();
    let owner = unique_name("owner");
    let src = TempDb::create("owned_by_gone_role");
    psql("postgres", &format!("CREATE ROLE {owner}"));
    psql(
        src.name(),
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10);
             ALTER TABLE t OWNER TO {owner};"
        ),
    );
    ok(cairn_pg(&repo).args(["backup", "--pg", src.name()]));
    // The table's owner no longer exists: restoring owners (--owner-acl) cannot succeed.
    psql(src.name(), "ALTER TABLE t OWNER TO CURRENT_USER");
    psql("postgres", &format!("DROP ROLE {owner}"));
    let target = TempDb::reserve("restore_fails");
    let err = fails(
        cairn_pg(&repo).args([
            "restore",
            "latest",
            "--pg-target",
            target.name(),
            "--owner-acl",
        ]),
        1,
    );
    assert!(err.contains("pg_restore"), "{err}");
    assert!(
        err.contains(&format!("role \"{owner}\" does not exist")),
        "{err}"
    );
    assert!(err.contains("was dropped again"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!target.exists());
    // Without --owner-acl (the default) the same snapshot restores.
    ok(cairn_pg(&repo).args(["restore", "latest", "--pg-target", target.name()]));
    assert_eq!(psql(target.name(), "SELECT count(*) FROM t"), "10");
    assert_check_clean(&repo);
}

#[test]
fn restore_over_an_existing_database_needs_replace_and_keeps_a_safety_snapshot() {
    let (_dir, repo) = new_repo();
    let src = TempDb::create("replace_src");
    psql(
        src.name(),
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'snapshot');",
    );
    let out = ok(cairn_pg(&repo).args(["backup", "--json", "--pg", src.name()]));
    let id = serde_json::from_str::<Value>(&out).unwrap()["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let target = TempDb::create("replace_target");
    psql(
        target.name(),
        "CREATE TABLE live (x int); INSERT INTO live VALUES (42), (43);",
    );

    let err = fails(
        cairn_pg(&repo).args(["restore", &id, "--pg-target", target.name()]),
        1,
    );
    assert!(
        err.contains("already exists") && err.contains("--replace"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(psql(target.name(), "SELECT count(*) FROM live"), "2");
    assert_eq!(snapshots(&repo).len(), 1);

    // An open session on the target does not stop --replace: it is terminated.
    let mut session = with_pg(Command::new("psql"))
        .args(["-X", "-q", "-d", target.name(), "-c", "SELECT pg_sleep(60)"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        let n = psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}'",
                target.name()
            ),
        );
        if n != "0" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = ok(cairn_pg(&repo).args(["restore", &id, "--pg-target", target.name(), "--replace"]));
    let _ = session.kill();
    let _ = session.wait();
    let safety_line = out
        .lines()
        .find(|l| l.starts_with("safety snapshot "))
        .unwrap_or_else(|| panic!("no safety snapshot id printed: {out}"));
    let safety_id = safety_line.split_whitespace().nth(2).unwrap();
    assert_eq!(psql(target.name(), "SELECT v FROM t"), "snapshot");
    assert_eq!(
        psql(
            target.name(),
            "SELECT count(*) FROM pg_tables WHERE tablename = 'live'"
        ),
        "0"
    );

    // The safety snapshot holds the replaced database, tagged, and restores it.
    let list = snapshots(&repo);
    let safety = list
        .iter()
        .find(|s| s["id"] == safety_id)
        .expect("safety snapshot listed");
    assert_eq!(safety["tags"], serde_json::json!(["safety"]));
    assert_eq!(table_rows(postgres_meta(safety), "live"), 2);
    let back = TempDb::reserve("safety_back");
    ok(cairn_pg(&repo).args(["restore", safety_id, "--pg-target", back.name()]));
    assert_eq!(
        psql(
            back.name(),
            "SELECT string_agg(x::text, ',' ORDER BY x) FROM live"
        ),
        "42,43"
    );
    assert_check_clean(&repo);
}

#[test]
fn row_count_verification_names_every_differing_table() {
    use cairn::postgres::{verify_row_counts, PgConn, TableRows};
    let db = TempDb::create("verify");
    psql(
        db.name(),
        "CREATE TABLE a (id int); INSERT INTO a SELECT generate_series(1, 7);
         CREATE SCHEMA \"Odd \"\"Schema\"\"\"; CREATE TABLE \"Odd \"\"Schema\"\"\".\"B b\" (id int);
         INSERT INTO \"Odd \"\"Schema\"\"\".\"B b\" VALUES (1), (2);",
    );
    let get = |k: &str| pg_env().iter().find(|(n, _)| n == k).unwrap().1.clone();
    let conninfo = format!(
        "host={} port={} user={}",
        get("PGHOST"),
        get("PGPORT"),
        get("PGUSER"),
    );
    let conn = PgConn::new(Some(&conninfo))
        .unwrap()
        .with_password(get("PGPASSWORD").as_bytes());
    let rows = |schema: &str, table: &str, rows| TableRows {
        schema: schema.into(),
        table: table.into(),
        rows,
    };
    let right = vec![rows("Odd \"Schema\"", "B b", 2), rows("public", "a", 7)];
    assert_eq!(verify_row_counts(&conn, db.name(), &right).unwrap(), (2, 9));
    let wrong = vec![
        rows("Odd \"Schema\"", "B b", 3),
        rows("public", "a", 7),
        rows("public", "gone", 1),
    ];
    let err = verify_row_counts(&conn, db.name(), &wrong)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"Odd \"\"Schema\"\"\".\"B b\" has 2 rows, 3 recorded"),
        "{err}"
    );
    assert!(err.contains("\"public\".\"gone\" is missing"), "{err}");
    assert!(!err.contains("\"public\".\"a\""), "{err}");
}

fn sh(cmd: &str) {
    let st = with_pg(Command::new("sh"))
        .args(["-c", cmd])
        .status()
        .unwrap();
    assert!(st.success(), "{cmd}");
}

#[test]
fn imported_plain_sql_archive_restores_through_psql_and_exports_byte_for_byte() {
    let (dir, repo) = new_repo();
    let src = TempDb::create("cairn_legacy_src");
    create_app_db(src.name());
    let legacy = dir.path().join("legacy");
    fs::create_dir_all(legacy.join("filestore/3f")).unwrap();
    fs::write(
        legacy.join("filestore/3f/3fa9c0"),
        pseudo_random(200_000, 9),
    )
    .unwrap();
    sh(&format!(
        "pg_dump --format=plain --no-owner --no-acl -d {} > {}/dump.sql",
        src.name(),
        legacy.display()
    ));
    sh(&format!(
        "cd {} && tar czf ../old.tar.gz dump.sql filestore",
        legacy.display()
    ));
    let imported: Value = serde_json::from_str(&ok(cairn(&repo)
        .args([
            "import-archive",
            "--instance",
            "legacy",
            "--time",
            "2025-06-30 02:00",
            "--json",
        ])
        .arg(dir.path().join("old.tar.gz"))))
    .unwrap();
    let id = imported["snapshot_id"].as_str().unwrap().to_string();
    let target = TempDb::reserve("cairn_legacy_dst");
    ok(cairn_pg(&repo).args(["restore", &id, "--pg-target", target.name()]));
    assert_eq!(fingerprint(target.name()), fingerprint(src.name()));
    // The untrusted dump ran as a role of its own, which owns the database and can no longer log in.
    let owner = psql(
        "postgres",
        &format!(
            "SELECT r.rolname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba
             WHERE d.datname = '{}' AND NOT r.rolcanlogin AND NOT r.rolsuper",
            target.name()
        ),
    );
    assert!(owner.starts_with("cairn_restore_"), "owner {owner:?}");
    drop(target);
    psql("postgres", &format!("DROP ROLE {owner}"));
    let out = cairn(&repo)
        .args(["export", &id, "--format", "tar"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let x = dir.path().join("x");
    fs::create_dir_all(&x).unwrap();
    fs::write(dir.path().join("export.tar"), &out.stdout).unwrap();
    sh(&format!("cd {} && tar xf ../export.tar", x.display()));
    for f in ["dump.sql", "filestore/3f/3fa9c0"] {
        assert!(
            fs::read(x.join(f)).unwrap() == fs::read(legacy.join(f)).unwrap(),
            "{f} differs after import/export"
        );
    }
}

#[test]
fn daemon_backs_up_a_real_database_and_filestore_and_stops_on_sigterm() {
    let (dir, repo) = new_repo();
    let db = TempDb::create("cairn_daemon");
    create_app_db(db.name());
    let files = dir.path().join("filestore");
    fs::create_dir_all(&files).unwrap();
    fs::write(files.join("a"), b"attachment").unwrap();
    ok(cairn(&repo).args([
        "instance",
        "add",
        "shop",
        "--pg",
        db.name(),
        "--path",
        files.to_str().unwrap(),
        "--schedule",
        "*/2 * * * * *",
        "--keep-last",
        "10",
    ]));
    let mut daemon = cairn_pg(&repo)
        .args(["daemon", "--tick-seconds", "1"])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while snapshots(&repo).len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());
    let snaps = snapshots(&repo);
    assert!(snaps.len() >= 2, "{} snapshots", snaps.len());
    for s in &snaps {
        assert_eq!(s["partial"], false);
        assert_eq!(s["stream_names"][0], format!("{}.dump", db.name()));
        assert!(table_rows(postgres_meta(s), "customers") > 0);
    }
    assert_check_clean(&repo);
}
