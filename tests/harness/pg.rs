//! A real PostgreSQL server for the tests. With `CAIRN_TEST_PG` set, the environment already points at one
//! (PGHOST, PGPORT, PGUSER, PGPASSWORD, as `scripts/pg-setup` prints them); otherwise `scripts/pg-setup` is
//! run once per test binary. No server is a test failure, never a skip.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The PG* settings of the test server, for child processes (never set in this process: tests run in
/// parallel threads, and changing the environment under them is unsound).
pub fn pg_env() -> &'static [(String, String)] {
    static ENV: OnceLock<Vec<(String, String)>> = OnceLock::new();
    ENV.get_or_init(|| {
        let keys = ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD"];
        if std::env::var_os("CAIRN_TEST_PG").is_some() {
            return keys
                .iter()
                .map(|k| {
                    let v = std::env::var(k)
                        .unwrap_or_else(|_| panic!("CAIRN_TEST_PG is set but {k} is not"));
                    (k.to_string(), v)
                })
                .collect();
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-setup");
        let out = Command::new(&script)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("export "))
            .unwrap_or_else(|| panic!("pg-setup printed no export line: {stdout}"));
        let vars: Vec<(String, String)> = line
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| keys.contains(k))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(vars.len(), keys.len(), "pg-setup export line: {line}");
        vars
    })
}

/// The test role's password (asserted never to leak into snapshots or messages).
pub fn pg_password() -> String {
    pg_env()
        .iter()
        .find(|(k, _)| k == "PGPASSWORD")
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// A command with the test server's settings in its environment.
pub fn with_pg(mut cmd: Command) -> Command {
    for k in [
        "PGDATABASE",
        "PGPASSFILE",
        "PGSERVICE",
        "PGHOSTADDR",
        "PGSSLMODE",
        "PGOPTIONS",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(pg_env().iter().map(|(k, v)| (k.as_str(), v.as_str())));
    cmd
}

/// psql without ~/.psqlrc, quiet, unaligned tuples only, stopping at the first error.
const PSQL_FLAGS: [&str; 6] = ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"];

/// Runs SQL with psql in `db`, stopping at the first error; returns unaligned, tuples-only output (of every
/// statement, one line per row).
pub fn psql(db: &str, sql: &str) -> String {
    use std::io::Write;
    // On stdin rather than with -c, so that each statement is its own transaction (VACUUM needs that).
    let mut child = with_pg(Command::new("psql"))
        .args(PSQL_FLAGS)
        .args(["-d", db, "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run psql");
    let mut stdin = child.stdin.take().expect("psql stdin");
    stdin.write_all(sql.as_bytes()).expect("write SQL to psql");
    drop(stdin);
    let out = child.wait_with_output().expect("wait for psql");
    assert!(
        out.status.success(),
        "psql failed in {db}: {}\nSQL: {sql}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs one SQL command with psql as `user` on database `postgres` of the server listening in socket
/// directory `host` on `port` (a cluster a test made itself, not the test server: none of its settings
/// apply); returns unaligned, tuples-only output.
pub fn psql_on(host: &std::path::Path, port: u16, user: &str, sql: &str) -> String {
    try_psql_on(host, port, user, sql)
        .unwrap_or_else(|err| panic!("psql on port {port}: {err}\nSQL: {sql}"))
}

/// [`psql_on`] for a server that may not accept connections yet: psql's error instead of a panic.
pub fn try_psql_on(
    host: &std::path::Path,
    port: u16,
    user: &str,
    sql: &str,
) -> Result<String, String> {
    let out = Command::new("psql")
        .args(PSQL_FLAGS)
        .args(["-d", "postgres"])
        .arg("-h")
        .arg(host)
        .args(["-U", user, "-p", &port.to_string(), "-c", sql])
        .env_remove("PGPASSWORD")
        .env_remove("PGDATABASE")
        .env_remove("PGSERVICE")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run psql");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A database name no other test (or engineer sharing the server) uses.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "cairn_t_{prefix}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A database dropped (connections and all) when the guard goes, whether the test passed or not.
pub struct TempDb(pub String);

impl TempDb {
    /// Creates a fresh empty database.
    pub fn create(prefix: &str) -> TempDb {
        let db = TempDb(unique_name(prefix));
        psql("postgres", &format!("CREATE DATABASE \"{}\"", db.0));
        db
    }

    /// A name reserved for a database that cairn itself will create (dropped at the end if it exists).
    pub fn reserve(prefix: &str) -> TempDb {
        TempDb(unique_name(prefix))
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    pub fn exists(&self) -> bool {
        psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_database WHERE datname = '{}'",
                self.0
            ),
        ) == "1"
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = with_pg(Command::new("psql"))
            .args(["-X", "-q", "-d", "postgres", "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.0
            ))
            .output();
    }
}
