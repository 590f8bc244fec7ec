//! Issue 15, Odoo compatibility: `export --format odoo-zip|odoo-tar` of a `--pg` snapshot is what Odoo's
//! database manager restores (`dump.sql`, `manifest.json`, `filestore/`), restored here by Odoo's own
//! procedure: the zip extracted by Python's `zipfile` (as Odoo does), `psql` of `dump.sql` into a new
//! database, `filestore/` copied; against a real server (tests/harness/pg.rs).

mod harness;

use std::fs;
use std::path::Path;
use std::process::Command;

use harness::pg::{psql, with_pg, TempDb};
use harness::*;
use serde_json::{json, Value};

/// `cairn` bound to a repository, with the test server's connection settings in its environment.
fn cairn_pg(repo: &Path) -> Command {
    let mut c = with_pg(cairn(repo));
    c.env_remove("CAIRN_TEST_PG");
    c
}

/// An Odoo-like database: `ir_module_module` (installed and other modules, text needing COPY escapes),
/// partners with bytea/jsonb/numeric, attachments naming filestore files, a sequence.
fn create_odoo_db(db: &str) {
    psql(
        db,
        "CREATE TABLE ir_module_module (
            id serial PRIMARY KEY, name varchar NOT NULL UNIQUE, state varchar, latest_version varchar,
            description text, \"order\" int);
         INSERT INTO ir_module_module (name, state, latest_version, description, \"order\") VALUES
            ('base', 'installed', '17.0.1.3', E'The kernel\\tof Odoo\\nline two \\\\ back', 1),
            ('web', 'installed', NULL, 'Web client é ✓', 2),
            ('sale', 'installed', '17.0.1.2', NULL, 3),
            ('crm', 'uninstalled', '17.0.1.9', 'not installed', 4),
            ('stock', 'to upgrade', '17.0.1.1', NULL, 5);
         CREATE TABLE res_partner (
            id serial PRIMARY KEY, name text NOT NULL, credit numeric(14,4), image bytea, props jsonb,
            created timestamptz NOT NULL);
         INSERT INTO res_partner (name, credit, image, props, created)
         SELECT 'partner ' || g, g * 1.2345, decode(md5(g::text), 'hex'),
                jsonb_build_object('tier', g % 3, 'tab', E'a\\tb'), timestamptz '2025-01-01 00:00+00' + g * interval '1 hour'
         FROM generate_series(1, 3000) g;
         CREATE TABLE ir_attachment (id serial PRIMARY KEY, name text, store_fname text);
         INSERT INTO ir_attachment (name, store_fname) VALUES ('a.pdf', '3f/3fa9c0'), ('b.png', 'a1/a1b2c3');
         CREATE SEQUENCE ir_sequence_001 START 42;
         SELECT nextval('ir_sequence_001') FROM generate_series(1, 4);",
    );
}

/// Every table's rows in key order, hashed, and the sequence's state.
fn checksums(db: &str) -> String {
    psql(
        db,
        "SELECT concat_ws(E'\\n',
            (SELECT count(*) || ' ' || md5(string_agg(m::text, ',' ORDER BY id)) FROM ir_module_module m),
            (SELECT count(*) || ' ' || md5(string_agg(p::text, ',' ORDER BY id)) FROM res_partner p),
            (SELECT count(*) || ' ' || md5(string_agg(a::text, ',' ORDER BY id)) FROM ir_attachment a),
            (SELECT last_value || ' ' || is_called FROM ir_sequence_001))",
    )
}

/// An Odoo filestore directory: hashed two-level layout, an empty file, a multi-chunk file.
fn build_filestore(dir: &Path) {
    for (i, (sub, name, len)) in [
        ("3f", "3fa9c0", 200_000),
        ("a1", "a1b2c3", 3_000_000),
        ("a1", "a1ffff", 0),
        ("c0", "c0ffee", 4097),
    ]
    .into_iter()
    .enumerate()
    {
        fs::create_dir_all(dir.join(sub)).unwrap();
        fs::write(dir.join(sub).join(name), pseudo_random(len, i as u64 + 1)).unwrap();
    }
}

/// Odoo's restore: a new database, `psql -f dump.sql` (strict here: any error fails the test).
fn odoo_restore(dump_sql: &Path) -> TempDb {
    let db = TempDb::create("odoo_restored");
    let st = with_pg(Command::new("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db.name(), "-f"])
        .arg(dump_sql)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "psql -f dump.sql failed");
    db
}

#[test]
fn odoo_zip_export_of_a_pg_snapshot_restores_by_odoos_own_procedure() {
    let (dir, repo) = new_repo();
    let src = TempDb::create("odoo_src");
    create_odoo_db(src.name());
    // Odoo keeps a database's files in filestore/<dbname>.
    let filestore = dir.path().join("filestore").join(src.name());
    build_filestore(&filestore);
    let pg_snap: Value = serde_json::from_str(&ok(cairn_pg(&repo)
        .args([
            "--json",
            "backup",
            "--pg",
            src.name(),
            "--time",
            "2026-01-01 10:00",
        ])
        .arg(&filestore)))
    .unwrap();
    let pg_id = pg_snap["snapshot_id"].as_str().unwrap().to_string();
    // A newer snapshot without a dump: `latest` for an Odoo format is the newest one holding a dump.
    let other = dir.path().join("other");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("x"), b"x").unwrap();
    backup_json(
        &repo,
        &[other.to_str().unwrap(), "--time", "2026-01-02 10:00"],
    );

    // The zip, to --output, with no usable temporary directory: nothing is staged on disk.
    let zip_path = dir.path().join("backup.zip");
    ok(cairn(&repo)
        .env("TMPDIR", dir.path().join("no-such-tmp"))
        .args(["export", "latest", "--format", "odoo-zip", "--output"])
        .arg(&zip_path));
    let x = dir.path().join("x");
    let st = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])",
        ])
        .arg(&zip_path)
        .arg(&x)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "Python's zipfile could not extract the export"
    );

    // manifest.json: Odoo's fields, the version and installed modules from ir_module_module.
    let manifest: Value =
        serde_json::from_slice(&fs::read(x.join("manifest.json")).unwrap()).unwrap();
    let num: i64 = psql("postgres", "SHOW server_version_num").parse().unwrap();
    assert_eq!(
        manifest,
        json!({
            "odoo_dump": "1",
            "db_name": src.name(),
            "version": "17.0",
            "version_info": [17, 0, 0, "final", 0, ""],
            "major_version": "17.0",
            "pg_version": format!("{}.{}", num / 10000, (num / 100) % 100),
            "modules": {"base": "17.0.1.3", "sale": "17.0.1.2", "web": null},
        })
    );
    // Odoo's procedure: psql of dump.sql into a new database, filestore/ copied.
    let restored = odoo_restore(&x.join("dump.sql"));
    assert_eq!(checksums(restored.name()), checksums(src.name()));
    assert_eq!(files_under(&x.join("filestore")), files_under(&filestore));

    // The tar form, to stdout: the same manifest and files, and a dump.sql that restores the same.
    let out = cairn(&repo)
        .env("TMPDIR", dir.path().join("no-such-tmp"))
        .args(["export", &pg_id[..10], "--format", "odoo-tar"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = dir.path().join("t");
    tar::Archive::new(&out.stdout[..]).unpack(&t).unwrap();
    let tar_manifest: Value =
        serde_json::from_slice(&fs::read(t.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(tar_manifest, manifest);
    assert_eq!(files_under(&t.join("filestore")), files_under(&filestore));
    let restored = odoo_restore(&t.join("dump.sql"));
    assert_eq!(checksums(restored.name()), checksums(src.name()));

    // An Odoo format of a snapshot without a dump, named by id: a clear error, exit 1, nothing written.
    let tree_only = backup_json(&repo, &[other.to_str().unwrap()]);
    let bad = dir.path().join("bad.zip");
    let err = fails(
        cairn(&repo)
            .args([
                "export",
                tree_only["snapshot_id"].as_str().unwrap(),
                "--format",
                "odoo-zip",
                "--output",
            ])
            .arg(&bad),
        1,
    );
    assert!(err.contains("database dump"), "{err}");
    assert!(!bad.exists(), "a failed export left {}", bad.display());
}

#[test]
fn odoo_export_without_module_table_and_with_several_directories() {
    let (dir, repo) = new_repo();
    let src = TempDb::create("odoo_plain");
    psql(
        src.name(),
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;",
    );
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    build_filestore(&a);
    fs::create_dir_all(&b).unwrap();
    fs::write(b.join("other.txt"), b"not the filestore").unwrap();
    let snap: Value = serde_json::from_str(&ok(cairn_pg(&repo)
        .args(["--json", "backup", "--pg", src.name()])
        .arg(&a)
        .arg(&b)))
    .unwrap();
    let id = snap["snapshot_id"].as_str().unwrap();
    // Two root directories: which one is the filestore must be said (a usage error, exit 2).
    let err = fails(cairn(&repo).args(["export", id, "--format", "odoo-tar"]), 2);
    assert!(err.contains("--filestore"), "{err}");
    // Named: that one is filestore/, the other is named as left out (exit 3).
    let out = cairn(&repo)
        .args(["export", id, "--format", "odoo-zip", "--filestore", "a"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("\"b\"") && err.contains("not the filestore"),
        "{err}"
    );
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(out.stdout)).unwrap();
    let mut manifest = String::new();
    std::io::Read::read_to_string(&mut z.by_name("manifest.json").unwrap(), &mut manifest).unwrap();
    let manifest: Value = serde_json::from_str(&manifest).unwrap();
    // No ir_module_module: no Odoo version, no modules; the database's name and server version.
    assert_eq!(manifest["db_name"], src.name());
    assert!(
        manifest.get("version").is_none() && manifest.get("modules").is_none(),
        "{manifest}"
    );
    assert!(manifest["pg_version"].is_string(), "{manifest}");
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut z.by_name("filestore/a1/a1b2c3").unwrap(), &mut data).unwrap();
    assert_eq!(data, fs::read(a.join("a1/a1b2c3")).unwrap());
    assert!(z.by_name("filestore/other.txt").is_err());
}
