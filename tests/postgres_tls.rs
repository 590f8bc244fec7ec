//! Issue 15, TLS to PostgreSQL: a server that accepts only TLS (`hostssl`, a certificate from a test CA; made
//! by scripts/pg-tls-setup) is backed up and restored with `sslmode=verify-full`, by cairn's own connection
//! and by pg_dump/pg_restore/psql (the settings passed through); a plain connection is refused; a wrong CA,
//! and a certificate not naming the host under verify-full, fail with a clear error and no snapshot.

mod harness;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use harness::*;
use serde_json::Value;

/// The TLS server: its port, the CA that signed its certificate, an unrelated CA.
struct TlsServer {
    port: String,
    ca: String,
    wrong_ca: String,
}

fn server() -> &'static TlsServer {
    static S: OnceLock<TlsServer> = OnceLock::new();
    S.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-tls-setup");
        let out = Command::new(&script)
            .output()
            .expect("run scripts/pg-tls-setup");
        assert!(
            out.status.success(),
            "pg-tls-setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("export "));
        let line = line.unwrap_or_else(|| panic!("pg-tls-setup printed no export line: {stdout}"));
        let get = |k: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{k} missing in {line}"))
                .to_string()
        };
        TlsServer {
            port: get("CAIRN_TLS_PORT"),
            ca: get("CAIRN_TLS_CA"),
            wrong_ca: get("CAIRN_TLS_WRONG_CA"),
        }
    })
}

/// A command with the TLS server's user and password, and no other PG* setting (HOME is set by the caller).
fn with_tls_env(mut cmd: Command, home: &Path) -> Command {
    for k in [
        "PGHOST",
        "PGPORT",
        "PGDATABASE",
        "PGPASSFILE",
        "PGSERVICE",
        "PGHOSTADDR",
        "PGSSLMODE",
        "PGSSLROOTCERT",
        "PGOPTIONS",
        "CAIRN_TEST_PG",
    ] {
        cmd.env_remove(k);
    }
    cmd.env("PGUSER", "cairn_test")
        .env("PGPASSWORD", "cairn_test")
        .env("HOME", home);
    cmd
}

/// psql against the TLS server with verify-full, stopping at the first error; unaligned tuples-only output.
fn tls_psql(home: &Path, db: &str, sql: &str) -> String {
    let s = server();
    let out = with_tls_env(Command::new("psql"), home)
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .arg(format!(
            "host=127.0.0.1 port={} dbname={db} sslmode=verify-full sslrootcert={}",
            s.port, s.ca
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn checksum(home: &Path, db: &str) -> String {
    tls_psql(
        home,
        db,
        "SELECT count(*) || ' ' || md5(string_agg(t::text, ',' ORDER BY id)) FROM items t",
    )
}

/// A database on the TLS server, dropped at the end.
struct TlsDb<'a>(String, &'a Path);

impl Drop for TlsDb<'_> {
    fn drop(&mut self) {
        let s = server();
        let _ = with_tls_env(Command::new("psql"), self.1)
            .args(["-X", "-q", "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.0
            ))
            .arg(format!(
                "host=127.0.0.1 port={} dbname=postgres sslmode=verify-full sslrootcert={}",
                s.port, s.ca
            ))
            .output();
    }
}

fn conn(host: &str, mode: &str, root: &str) -> String {
    format!(
        "host={host} port={} sslmode={mode} sslrootcert={root}",
        server().port
    )
}

#[test]
fn tls_only_server_is_backed_up_and_restored_with_verify_full() {
    let s = server();
    let (dir, repo) = new_repo();
    // HOME holds a ~/.postgresql/root.crt of the WRONG CA: a libpq child that did not get cairn's
    // sslrootcert would verify against it and fail, so success proves the settings reached pg_dump and
    // pg_restore.
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".postgresql")).unwrap();
    std::fs::copy(&s.wrong_ca, home.join(".postgresql/root.crt")).unwrap();
    let n = std::process::id();
    let src = TlsDb(format!("cairn_tls_src_{n}"), &home);
    let dst = TlsDb(format!("cairn_tls_dst_{n}"), &home);
    tls_psql(&home, "postgres", &format!("CREATE DATABASE {}", src.0));
    tls_psql(
        &home,
        &src.0,
        "CREATE TABLE items (id int PRIMARY KEY, v text, b bytea);
         INSERT INTO items SELECT g, 'item ' || g, decode(md5(g::text), 'hex') FROM generate_series(1, 5000) g;",
    );
    let cairn_tls = |args: &[&str]| {
        let mut c = with_tls_env(cairn(&repo), &home);
        c.args(args);
        c
    };
    let good = conn("127.0.0.1", "verify-full", &s.ca);
    // A backup of the source database over the connection `conninfo`.
    let backup_over =
        |conninfo: &str| cairn_tls(&["backup", "--pg", &src.0, "--pg-conn", conninfo]);

    // Backup: cairn's connection and pg_dump, both verify-full.
    let out = ok(&mut cairn_tls(&[
        "--json",
        "backup",
        "--pg",
        &src.0,
        "--pg-conn",
        &good,
    ]));
    let v: Value = serde_json::from_str(&out).unwrap();
    let id = v["snapshot_id"].as_str().unwrap().to_string();
    // Restore: a new database through pg_restore, row counts verified over TLS.
    let out = ok(&mut cairn_tls(&[
        "--json",
        "restore",
        &id,
        "--pg-target",
        &dst.0,
        "--pg-conn",
        &good,
    ]));
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["verified"], true, "{out}");
    assert_eq!(checksum(&home, &dst.0), checksum(&home, &src.0));
    // The same through the environment (PGSSLMODE/PGSSLROOTCERT) and a URI.
    let uri = format!(
        "postgresql://127.0.0.1:{}/?sslmode=verify-full&sslrootcert={}",
        s.port, s.ca
    );
    ok(backup_over(&uri).env("PGSSLMODE", "disable"));
    ok(cairn_tls(&["backup", "--pg", &src.0])
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", &s.port)
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", &s.ca));
    let before = ok(cairn(&repo).args(["--json", "snapshots"]));

    // A plain connection is refused by the server, and the message says why.
    let err = fails(
        &mut backup_over(&format!("host=127.0.0.1 port={} sslmode=disable", s.port)),
        1,
    );
    assert!(
        err.contains("no encryption") && err.contains("TLS"),
        "{err}"
    );
    // A wrong CA: a clear error naming the certificate check and the file.
    let err = fails(
        &mut backup_over(&conn("127.0.0.1", "verify-full", &s.wrong_ca)),
        1,
    );
    assert!(
        err.contains("certificate") && err.contains(&s.wrong_ca),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // verify-full checks the name: 127.0.0.2 is not in the certificate; verify-ca does not check it.
    let err = fails(
        &mut backup_over(&conn("127.0.0.2", "verify-full", &s.ca)),
        1,
    );
    assert!(err.contains("certificate"), "{err}");
    // No snapshot came of any failure.
    assert_eq!(ok(cairn(&repo).args(["--json", "snapshots"])), before);
    // verify-ca: the chain is checked, the name is not (libpq's pg_dump agrees).
    ok(&mut backup_over(&conn("127.0.0.2", "verify-ca", &s.ca)));
    // ... and a chain to another CA still fails it.
    let err = fails(
        &mut backup_over(&conn("127.0.0.2", "verify-ca", &s.wrong_ca)),
        1,
    );
    assert!(err.contains("certificate"), "{err}");
    // require with no root certificate (none given, none in HOME): encrypted, the certificate unchecked.
    let bare_home = dir.path().join("bare-home");
    std::fs::create_dir_all(&bare_home).unwrap();
    let require = format!("host=127.0.0.1 port={} sslmode=require", s.port);
    ok(with_tls_env(cairn(&repo), &bare_home).args([
        "backup",
        "--pg",
        &src.0,
        "--pg-conn",
        &require,
    ]));
}
