//! PostgreSQL: consistent `pg_dump` streams into snapshots, and verified restores into a real server.
//!
//! What this module owns:
//! - **Connection settings** ([`PgConn`], and connecting: `postgres/conn.rs`): libpq conventions — a
//!   keyword/value string (`--pg-conn`, parsed by `tokio_postgres::Config`), then `PGHOST`/`PGHOSTADDR`/
//!   `PGPORT`/`PGUSER`/`PGPASSWORD`/`PGOPTIONS`/`PGAPPNAME`/`PGCONNECT_TIMEOUT`, then `PGPASSFILE` or
//!   `~/.pgpass` for the password; TLS (`sslmode`, `sslrootcert`, `PGSSLMODE`, `PGSSLROOTCERT`) with libpq's
//!   semantics, see [`tls`].
//! - **Backup** ([`dump_source`]): a REPEATABLE READ, READ ONLY transaction exports its snapshot; the facts
//!   recorded in the snapshot metadata (server version, size, encoding, WAL position, transaction ids and the
//!   exact row count of every user table) are read in that transaction, and `pg_dump --snapshot=…` dumps that
//!   very snapshot, streaming its stdout into the chunker.
//! - **Restore** ([`restore_database`]): creates the database, streams the dump out of the repository into
//!   `pg_restore`, then counts every table's rows again and compares them with the recorded counts.
//!
//! Invariants:
//! - The dump is never written to a temporary file: pg_dump's stdout is the backup's [`StreamSource`].
//! - The exporting transaction stays open until pg_dump has exited, and is checked to still be alive then:
//!   the recorded facts describe exactly what was dumped.
//! - pg_dump failing in any way (non-zero exit, a signal, a lost connection, our transaction lost) fails the
//!   backup with pg_dump's own message, and no snapshot is written.
//! - Passwords reach the server over the wire and child processes through `PGPASSWORD` only: never process
//!   arguments, snapshot metadata, progress output or error messages.
//! - A restore only ever drops a database that it created itself (after a failed `pg_restore`) or that the
//!   user asked to replace (`replace`), and the latter only after a safety snapshot of it was written.
//! - A restore succeeds only when pg_restore exited 0 and every recorded table holds its recorded row count.

use std::collections::BTreeMap;
use std::io::{BufWriter, Read};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use tokio_postgres::NoTls;

use crate::backup::{self, BackupOptions, ChildGuard, MetadataHook, StreamSource};
use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::snapshot::Snapshot;
use crate::tree::valid_name;

pub mod basebackup;
mod conn;
mod dump;
pub mod odoo;
mod plain_sql;
mod restore;
pub mod tls;

use conn::{connect, conninfo_value};
pub use conn::{parse_conninfo, pgpass_lookup, PgConn, PASSWORD_IN_CONNINFO};
pub use dump::{backup_database, dump_source, stream_name};
use restore::reap_fed_child;
pub use restore::{restore_database, PgRestoreOptions, PgRestoreReport};

use tls::TlsMode;

/// The key of the snapshot metadata object holding [`PgFacts`].
pub const METADATA_KEY: &str = "postgres";

/// How much of a child's stderr is kept (head and tail halves): enough for every message pg_dump or
/// pg_restore prints in practice, bounded so a chatty child cannot bloat a snapshot file.
pub const STDERR_LIMIT: usize = 64 * 1024;

/// What cairn records about a dumped database, all read in the transaction whose snapshot pg_dump dumped.
/// Stored in the snapshot metadata under [`METADATA_KEY`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PgFacts {
    /// The database that was dumped.
    pub database: String,
    /// The stream holding the dump (`<database>.dump`).
    pub stream: String,
    /// Where it was dumped from (host(s), port(s) and user; never a password).
    pub server: String,
    pub user: String,
    pub server_version: String,
    pub server_version_num: i32,
    /// `pg_database_size` when the dump started.
    pub size_bytes: i64,
    pub encoding: String,
    #[serde(default)]
    pub lc_collate: String,
    #[serde(default)]
    pub lc_ctype: String,
    /// The server was a standby (then `wal_lsn` is the last replayed position).
    pub in_recovery: bool,
    /// `pg_current_wal_lsn()` (primary) or `pg_last_wal_replay_lsn()` (standby).
    pub wal_lsn: Option<String>,
    /// `txid_current_if_assigned()`: null for the read-only dump transaction, kept for completeness.
    pub txid: Option<i64>,
    /// `txid_current_snapshot()`: xmin:xmax:xip-list of the dumped snapshot.
    pub txid_snapshot: String,
    /// The id `pg_export_snapshot()` returned and pg_dump imported.
    pub exported_snapshot: String,
    /// `pg_dump --version`.
    pub pg_dump_version: String,
    /// Every user table (extension members excluded: their contents are the extension's business) with its
    /// exact row count, sorted by schema and name.
    pub tables: Vec<TableRows>,
    /// What pg_dump printed on stderr (bounded to [`STDERR_LIMIT`]).
    #[serde(default)]
    pub pg_dump_stderr: String,
}

/// The row count of one table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableRows {
    pub schema: String,
    pub table: String,
    pub rows: i64,
}

impl PgFacts {
    /// The facts recorded in a snapshot, if it holds a `--pg` dump.
    pub fn of(snap: &Snapshot) -> Result<Option<PgFacts>> {
        match snap.metadata.as_ref().and_then(|m| m.get(METADATA_KEY)) {
            None => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| Error::corrupt("snapshot metadata (postgres)", e)),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------------------

/// One connection driven by its own current-thread runtime; the connection task runs whenever a query is
/// awaited, which is all it needs (an idle open transaction needs no polling).
struct Session {
    client: tokio_postgres::Client,
    rt: tokio::runtime::Runtime,
    db: String,
}

impl Session {
    fn open(conn: &PgConn, db: &str) -> Result<Session> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Postgres(format!("cannot start the async runtime: {e}")))?;
        let cfg = conn.config_for(db);
        let connected = match conn.tls.mode {
            TlsMode::Disable => connect(&rt, &cfg, NoTls),
            _ => connect(&rt, &cfg, conn.tls.connector()?),
        };
        let client = connected.map_err(|e| {
            let msg = pg_err(&e);
            // The usual causes, named: TLS required by the server, a certificate that does not verify, no
            // password found where one was looked for.
            let hint = if msg.contains("no encryption") {
                format!(
                    " (the server accepts only TLS connections here, and sslmode is {})",
                    conn.tls.mode.as_str()
                )
            } else if msg.contains("not valid for name") {
                format!(
                    " (sslmode={} checks that the server's certificate names the host connected to; \
                     verify-ca checks only that it is signed by the root certificate)",
                    conn.tls.mode.as_str()
                )
            } else if msg.contains("invalid peer certificate") {
                format!(" ({})", conn.tls.describe())
            } else if cfg.get_password().is_none() && msg.contains("password") {
                format!(
                    " (no password was found in --pg-conn, PGPASSWORD or {})",
                    conn.passfile
                        .as_ref()
                        .map_or("~/.pgpass".into(), |p| p.display().to_string())
                )
            } else {
                String::new()
            };
            Error::Postgres(format!(
                "cannot connect to database {db:?} on {} as {}: {msg}{hint}",
                conn.server(),
                conn.user(),
            ))
        })?;
        Ok(Session {
            client,
            rt,
            db: db.to_string(),
        })
    }

    fn fail(&self, what: &str, e: &tokio_postgres::Error) -> Error {
        Error::Postgres(format!("database {:?}: {what}: {}", self.db, pg_err(e)))
    }

    fn execute(&self, sql: &str) -> Result<()> {
        self.rt
            .block_on(self.client.batch_execute(sql))
            .map_err(|e| self.fail(sql, &e))
    }

    fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        self.rt
            .block_on(self.client.query(sql, params))
            .map_err(|e| self.fail(sql, &e))
    }

    fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<tokio_postgres::Row> {
        self.rt
            .block_on(self.client.query_one(sql, params))
            .map_err(|e| self.fail(sql, &e))
    }
}

/// A row's column, with a typed error instead of a panic when the server answers something unexpected.
fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    i: usize,
) -> Result<T> {
    row.try_get(i)
        .map_err(|e| Error::Postgres(format!("unexpected answer from the server: {}", pg_err(&e))))
}

/// An error with its causes (tokio-postgres puts the server's message in the source), on one line.
fn pg_err(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = db.message().to_string();
        if let Some(d) = db.detail() {
            s.push_str(&format!(" (detail: {d})"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!(" (hint: {h})"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s.replace('\n', " ")
}

/// `"name"` with embedded quotes doubled: an identifier that can never be read as SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal valid whatever `standard_conforming_strings` says.
fn quote_literal(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// Rejects names the server would silently truncate or that cannot be a database name at all.
fn check_db_name(db: &str) -> Result<()> {
    if db.is_empty() || db.len() > 63 || db.contains('\0') {
        return Err(Error::Invalid(format!(
            "{db:?} is not a valid database name (1 to 63 bytes)"
        )));
    }
    Ok(())
}

/// User tables of the connected database (see [`PgFacts::tables`]), in schema/name order, without counts.
const USER_TABLES_SQL: &str = "SELECT n.nspname::text, c.relname::text
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p')
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
      AND NOT EXISTS (SELECT 1 FROM pg_depend d
                      WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
    ORDER BY 1, 2";

/// Exact row counts of every user table, as seen by the session's current snapshot.
fn count_rows(s: &Session) -> Result<Vec<TableRows>> {
    let mut out = Vec::new();
    for row in s.query(USER_TABLES_SQL, &[])? {
        let (schema, table): (String, String) = (col(&row, 0)?, col(&row, 1)?);
        let sql = format!(
            "SELECT count(*) FROM {}.{}",
            quote_ident(&schema),
            quote_ident(&table)
        );
        let rows: i64 = col(&s.query_one(&sql, &[])?, 0)?;
        out.push(TableRows {
            schema,
            table,
            rows,
        });
    }
    Ok(out)
}

/// Differences between recorded and actual row counts, one message per table.
pub fn compare_counts(recorded: &[TableRows], actual: &[TableRows]) -> Vec<String> {
    let key = |t: &TableRows| (t.schema.clone(), t.table.clone());
    let want: BTreeMap<_, i64> = recorded.iter().map(|t| (key(t), t.rows)).collect();
    let have: BTreeMap<_, i64> = actual.iter().map(|t| (key(t), t.rows)).collect();
    let mut diffs = Vec::new();
    for ((schema, table), n) in &want {
        let name = format!("{}.{}", quote_ident(schema), quote_ident(table));
        match have.get(&(schema.clone(), table.clone())) {
            None => diffs.push(format!("{name} is missing ({n} rows recorded)")),
            Some(m) if m != n => diffs.push(format!("{name} has {m} rows, {n} recorded")),
            Some(_) => {}
        }
    }
    for ((schema, table), m) in &have {
        if !want.contains_key(&(schema.clone(), table.clone())) {
            diffs.push(format!(
                "{}.{} ({m} rows) is not in the snapshot",
                quote_ident(schema),
                quote_ident(table)
            ));
        }
    }
    diffs
}

/// Counts the rows of every user table of `db` and compares them with `recorded`; returns the number of
/// tables and rows verified, or an error naming every table that differs.
pub fn verify_row_counts(conn: &PgConn, db: &str, recorded: &[TableRows]) -> Result<(usize, i64)> {
    let s = Session::open(conn, db)?;
    // One snapshot for all counts, as at backup time, and no row-security filtering (an error instead).
    s.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
    s.execute("SET LOCAL row_security = off")?;
    let actual = count_rows(&s)?;
    s.execute("COMMIT")?;
    let diffs = compare_counts(recorded, &actual);
    if !diffs.is_empty() {
        return Err(Error::Postgres(format!(
            "database {db:?} does not hold what the snapshot recorded: {}",
            diffs.join("; ")
        )));
    }
    Ok((actual.len(), actual.iter().map(|t| t.rows).sum()))
}

// ---------------------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------------------

/// Reads a child's stderr on a thread (so the child never blocks on a full pipe), keeping the first and
/// last `limit / 2` bytes.
fn capture_stderr(mut r: impl Read + Send + 'static, limit: usize) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let half = limit / 2;
        let (mut head, mut tail) = (Vec::new(), Vec::new());
        let mut omitted = 0u64;
        let mut buf = [0u8; 8192];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut data = &buf[..n];
            if head.len() < half {
                let take = data.len().min(half - head.len());
                head.extend_from_slice(&data[..take]);
                data = &data[take..];
            }
            tail.extend_from_slice(data);
            if tail.len() > half {
                let drop = tail.len() - half;
                omitted += drop as u64;
                tail.drain(..drop);
            }
        }
        let mut text = String::from_utf8_lossy(&head).into_owned();
        if omitted > 0 {
            text.push_str(&format!("\n[... {omitted} bytes omitted ...]\n"));
        }
        text.push_str(&String::from_utf8_lossy(&tail));
        text
    })
}

/// A child's stderr on one line, for an error message.
fn one_line(stderr: &str) -> String {
    let s: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if s.is_empty() {
        return "(it printed nothing)".into();
    }
    let mut joined = s.join(" | ");
    if joined.len() > 2000 {
        let mut cut = 2000;
        while !joined.is_char_boundary(cut) {
            cut -= 1;
        }
        joined.truncate(cut);
        joined.push_str(" …");
    }
    joined
}

/// "exit status 1" or "killed by signal 9 (SIGKILL)".
fn describe_status(s: &ExitStatus) -> String {
    if let Some(code) = s.code() {
        return format!("exit status {code}");
    }
    match s.signal() {
        Some(sig) => {
            let name = match sig {
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGTERM => " (SIGTERM)",
                libc::SIGINT => " (SIGINT)",
                libc::SIGPIPE => " (SIGPIPE)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGABRT => " (SIGABRT)",
                _ => "",
            };
            format!("killed by signal {sig}{name}")
        }
        None => s.to_string(),
    }
}

fn spawn_error(prog: &str, e: std::io::Error) -> Error {
    let hint = if e.kind() == std::io::ErrorKind::NotFound {
        " (install the PostgreSQL client programs, e.g. Debian's postgresql-client)"
    } else {
        ""
    };
    Error::Postgres(format!("cannot run {prog}: {e}{hint}"))
}

/// `pg_dump --version`, recorded with the facts (a dump is readable by pg_restore of that version or newer).
fn pg_dump_version() -> Result<String> {
    let out = Command::new("pg_dump")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error("pg_dump", e))?;
    if !out.status.success() {
        return Err(Error::Postgres(format!(
            "pg_dump --version failed ({}): {}",
            describe_status(&out.status),
            one_line(&String::from_utf8_lossy(&out.stderr))
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

// ---------------------------------------------------------------------------------------------------------
// Server settings (WAL archiving, `instance wal-setup --apply`)
// ---------------------------------------------------------------------------------------------------------

/// Sets server parameters with `ALTER SYSTEM` (each its own statement: it cannot run in a transaction),
/// then `pg_reload_conf()`. Returns the names of those whose new value takes effect only at a restart
/// (a `postmaster` parameter whose running value differs from the one set).
pub fn alter_system(conn: &PgConn, db: &str, settings: &[(&str, String)]) -> Result<Vec<String>> {
    let s = Session::open(conn, db)?;
    let mut restart = Vec::new();
    for (name, value) in settings {
        let row = s.query_one(
            "SELECT context, current_setting(name) FROM pg_settings WHERE name = $1",
            &[name],
        )?;
        let (context, current): (String, String) = (col(&row, 0)?, col(&row, 1)?);
        s.execute(&format!(
            "ALTER SYSTEM SET {} = {}",
            quote_ident(name),
            quote_literal(value)
        ))?;
        if context == "postmaster" && current != *value {
            restart.push(name.to_string());
        }
    }
    s.query_one("SELECT pg_reload_conf()", &[])?;
    Ok(restart)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_count_differences_name_every_table() {
        let t = |s: &str, n: &str, r| TableRows {
            schema: s.into(),
            table: n.into(),
            rows: r,
        };
        let recorded = vec![t("public", "a", 3), t("public", "b", 4), t("x", "c", 0)];
        assert!(compare_counts(&recorded, &recorded).is_empty());
        let actual = vec![t("public", "a", 3), t("public", "b", 5), t("y", "d", 1)];
        let d = compare_counts(&recorded, &actual);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d[0].contains("\"public\".\"b\" has 5 rows, 4 recorded"));
        assert!(d[1].contains("\"x\".\"c\" is missing"));
        assert!(d[2].contains("\"y\".\"d\" (1 rows) is not in the snapshot"));
    }

    #[test]
    fn quoting_cannot_be_escaped() {
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\'b"), "E'a\\\\''b'");
        assert_eq!(conninfo_value("x'y\\z"), "'x\\'y\\\\z'");
        assert!(check_db_name("").is_err());
        assert!(check_db_name(&"d".repeat(64)).is_err());
        assert!(check_db_name("ok-name").is_ok());
    }

    #[test]
    fn stderr_capture_is_bounded_keeping_head_and_tail() {
        let mut data = b"FIRST LINE\n".to_vec();
        data.extend(vec![b'x'; 200_000]);
        data.extend_from_slice(b"\nLAST LINE\n");
        let text = capture_stderr(std::io::Cursor::new(data), 1024)
            .join()
            .unwrap();
        assert!(text.len() < 1200, "{}", text.len());
        assert!(text.starts_with("FIRST LINE"));
        assert!(text.trim_end().ends_with("LAST LINE"));
        assert!(text.contains("bytes omitted"));
        assert_eq!(one_line("a\n\n  b \n"), "a | b");
    }
}
