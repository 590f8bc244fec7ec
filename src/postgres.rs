//! PostgreSQL: consistent `pg_dump` streams into snapshots, and verified restores into a real server.
//!
//! What this module owns:
//! - **Connection settings** ([`PgConn`]): libpq conventions — a keyword/value string (`--pg-conn`, parsed by
//!   `tokio_postgres::Config`), then `PGHOST`/`PGHOSTADDR`/`PGPORT`/`PGUSER`/`PGPASSWORD`/`PGOPTIONS`/
//!   `PGAPPNAME`/`PGCONNECT_TIMEOUT`, then `PGPASSFILE` or `~/.pgpass` for the password; TLS (`sslmode`,
//!   `sslrootcert`, `PGSSLMODE`, `PGSSLROOTCERT`) with libpq's semantics, see [`tls`].
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
use std::ffi::OsString;
use std::io::{BufWriter, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use tokio_postgres::config::Host;
use tokio_postgres::NoTls;

use crate::backup::{self, BackupOptions, ChildGuard, MetadataHook, StreamSource};
use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::snapshot::Snapshot;
use crate::tree::valid_name;

pub mod basebackup;
mod dump;
pub mod odoo;
mod plain_sql;
mod restore;
pub mod tls;

pub use dump::{backup_database, dump_source, stream_name};
use restore::reap_fed_child;
pub use restore::{restore_database, PgRestoreOptions, PgRestoreReport};

use tls::{TlsMode, TlsSettings};

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
// Connection settings
// ---------------------------------------------------------------------------------------------------------

/// Where and as whom to connect, resolved from `--pg-conn`, the environment and the password file. The
/// database is not part of it: each operation names its own.
#[derive(Clone)]
pub struct PgConn {
    config: tokio_postgres::Config,
    /// A password given in `--pg-conn` or `PGPASSWORD`; otherwise the password file is consulted per
    /// database (its lines can name databases).
    password: Option<Vec<u8>>,
    passfile: Option<PathBuf>,
    tls: TlsSettings,
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hand-written so that no password can reach a log through `{:?}`.
        write!(f, "PgConn({} user={})", self.server(), self.user())
    }
}

/// Looks up an environment variable; injectable for tests.
type EnvFn<'a> = &'a dyn Fn(&str) -> Option<String>;

impl PgConn {
    /// Resolves settings from a libpq keyword/value string (or URI) and the process environment.
    pub fn new(conninfo: Option<&str>) -> Result<PgConn> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        PgConn::with_env(conninfo, &env)
    }

    fn with_env(conninfo: Option<&str>, env: EnvFn) -> Result<PgConn> {
        let (mut config, ssl_mode, ssl_root) = match conninfo {
            Some(s) => parse_conninfo_tls(s)?,
            None => (tokio_postgres::Config::new(), None, None),
        };
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            match env("PGHOST") {
                Some(hosts) => {
                    for h in hosts.split(',') {
                        config.host(h);
                    }
                }
                None => match env("PGHOSTADDR") {
                    Some(addrs) => {
                        for a in addrs.split(',') {
                            let ip = a.trim().parse().map_err(|_| {
                                Error::Invalid(format!("PGHOSTADDR: {a:?} is not an IP address"))
                            })?;
                            config.hostaddr(ip);
                        }
                    }
                    // libpq's default: the Unix socket directory (Debian's), else TCP to localhost.
                    None if std::path::Path::new("/var/run/postgresql").is_dir() => {
                        config.host("/var/run/postgresql");
                    }
                    None => {
                        config.host("localhost");
                    }
                },
            }
        }
        if config.get_ports().is_empty() {
            if let Some(ports) = env("PGPORT") {
                for p in ports.split(',') {
                    let port = p.trim().parse().map_err(|_| {
                        Error::Invalid(format!("PGPORT: {p:?} is not a port number"))
                    })?;
                    config.port(port);
                }
            }
        }
        if config.get_user().is_none() {
            let user = env("PGUSER")
                .or_else(os_user_name)
                .ok_or_else(|| Error::Invalid("no PostgreSQL user: set PGUSER".into()))?;
            config.user(&user);
        }
        if config.get_options().is_none() {
            if let Some(o) = env("PGOPTIONS") {
                config.options(&o);
            }
        }
        if config.get_application_name().is_none() {
            config.application_name(env("PGAPPNAME").as_deref().unwrap_or("cairn"));
        }
        if config.get_connect_timeout().is_none() {
            if let Some(t) = env("PGCONNECT_TIMEOUT").and_then(|t| t.parse::<u64>().ok()) {
                if t > 0 {
                    config.connect_timeout(std::time::Duration::from_secs(t));
                }
            }
        }
        let tls = TlsSettings::resolve(ssl_mode, ssl_root, env)?;
        config.ssl_mode(tls.ssl_mode());
        let password = config
            .get_password()
            .map(<[u8]>::to_vec)
            .or_else(|| env("PGPASSWORD").map(String::into_bytes));
        let passfile = env("PGPASSFILE")
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".pgpass")));
        Ok(PgConn {
            config,
            password,
            passfile,
            tls,
        })
    }

    /// The same settings with this password (for library callers holding one; a connection string
    /// never carries one, see [`parse_conninfo`]).
    pub fn with_password(mut self, password: &[u8]) -> PgConn {
        self.password = Some(password.to_vec());
        self
    }

    /// The server(s) as `host:port` (comma-separated), for messages and metadata.
    pub fn server(&self) -> String {
        let ports = self.config.get_ports();
        let port_at = |i: usize| {
            ports
                .get(i)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(5432)
        };
        let mut hosts: Vec<String> = self.host_names();
        if hosts.is_empty() {
            hosts = self
                .config
                .get_hostaddrs()
                .iter()
                .map(|a| a.to_string())
                .collect();
        }
        hosts
            .iter()
            .enumerate()
            .map(|(i, h)| format!("{h}:{}", port_at(i)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The role connected as.
    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or("")
    }

    fn host_names(&self) -> Vec<String> {
        self.config
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(s) => s.clone(),
                Host::Unix(p) => p.display().to_string(),
            })
            .collect()
    }

    /// The password for `db`: given explicitly, else the first matching password-file line.
    fn password_for(&self, db: &str) -> Option<Vec<u8>> {
        if let Some(p) = &self.password {
            return Some(p.clone());
        }
        let path = self.passfile.as_ref()?;
        let md = std::fs::metadata(path).ok()?;
        // libpq ignores a password file that others can read; so does cairn, for the same reason.
        if !md.is_file() || md.permissions().mode() & 0o077 != 0 {
            return None;
        }
        let text = std::fs::read_to_string(path).ok()?;
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            // libpq matches socket connections as "localhost".
            _ => match self.config.get_hostaddrs().first() {
                Some(a) if self.config.get_hosts().is_empty() => a.to_string(),
                _ => "localhost".to_string(),
            },
        };
        let port = self
            .config
            .get_ports()
            .first()
            .copied()
            .unwrap_or(5432)
            .to_string();
        pgpass_lookup(&text, &host, &port, db, self.user()).map(String::into_bytes)
    }

    /// The tokio-postgres config for `db`.
    fn config_for(&self, db: &str) -> tokio_postgres::Config {
        let mut c = self.config.clone();
        c.dbname(db);
        if let Some(p) = self.password_for(db) {
            c.password(p);
        }
        c
    }

    /// The environment of a libpq child process (pg_dump, pg_restore, psql) connecting to `db`: the whole
    /// connection, password included, goes through the environment, never through arguments.
    pub fn child_env(&self, db: &str) -> Vec<(&'static str, OsString)> {
        let mut env: Vec<(&'static str, OsString)> = Vec::new();
        let hosts = self.host_names();
        if !hosts.is_empty() {
            env.push(("PGHOST", hosts.join(",").into()));
        }
        let addrs: Vec<String> = self
            .config
            .get_hostaddrs()
            .iter()
            .map(|a| a.to_string())
            .collect();
        if !addrs.is_empty() {
            env.push(("PGHOSTADDR", addrs.join(",").into()));
        }
        let ports: Vec<String> = self
            .config
            .get_ports()
            .iter()
            .map(|p| p.to_string())
            .collect();
        if !ports.is_empty() {
            env.push(("PGPORT", ports.join(",").into()));
        }
        env.push(("PGUSER", self.user().into()));
        env.push(("PGDATABASE", db.into()));
        if let Some(p) = self.password_for(db) {
            env.push(("PGPASSWORD", std::os::unix::ffi::OsStringExt::from_vec(p)));
        }
        if let Some(o) = self.config.get_options() {
            env.push(("PGOPTIONS", o.into()));
        }
        if let Some(a) = self.config.get_application_name() {
            env.push(("PGAPPNAME", a.into()));
        }
        if let Some(t) = self.config.get_connect_timeout() {
            env.push(("PGCONNECT_TIMEOUT", t.as_secs().to_string().into()));
        }
        self.tls.child_env(&mut env);
        env
    }
}

/// Why a connection string with a password is refused (never quoting the string: it holds the password).
pub const PASSWORD_IN_CONNINFO: &str =
    "--pg-conn must not hold a password (it would be stored in the \
     repository or shown in a process list): keep it in ~/.pgpass (or PGPASSFILE) or PGPASSWORD";

/// Parses a libpq connection string (keyword/value or `postgres[ql]://` URI), refusing one that holds a
/// password in any form libpq accepts: `password=` (any case, spaces around `=`, quoted), URI user info
/// `user:secret@`, `?password=`/`&password=`, percent-encoded keys (`pass%77ord`), several hosts.
///
/// Two independent checks, because a password that slips through is stored in the repository: the parser
/// tokio-postgres uses to connect says whether it set a password, and a textual scan of the percent-decoded
/// string catches spellings that parser rejects or reads differently than libpq (`PASSWORD=`, an upper-case
/// scheme). The textual scan runs first so that such spellings are named as passwords, not as syntax errors.
/// Error messages name keywords, never values.
pub fn parse_conninfo(conninfo: &str) -> Result<tokio_postgres::Config> {
    parse_conninfo_tls(conninfo).map(|(config, _, _)| config)
}

/// [`parse_conninfo`], with the `sslmode` and `sslrootcert` values it holds (taken out before
/// tokio-postgres parses the rest: it knows neither `verify-*` nor `sslrootcert`).
fn parse_conninfo_tls(
    conninfo: &str,
) -> Result<(tokio_postgres::Config, Option<String>, Option<String>)> {
    if textual_password(conninfo) {
        return Err(Error::Invalid(PASSWORD_IN_CONNINFO.into()));
    }
    let (rest, ssl_mode, ssl_root) = tls::take_tls_keys(conninfo)?;
    if let Some(m) = &ssl_mode {
        m.parse::<TlsMode>()?;
    }
    let config = tokio_postgres::Config::from_str(&rest).map_err(|e| {
        // The parser's message names the offending keyword, never a value.
        Error::Invalid(format!(
            "--pg-conn is not a libpq connection string: {}",
            pg_err(&e)
        ))
    })?;
    if config.get_password().is_some() {
        return Err(Error::Invalid(PASSWORD_IN_CONNINFO.into()));
    }
    Ok((config, ssl_mode, ssl_root))
}

/// Whether the percent-decoded, lower-cased string has a `password` keyword followed by `=`, or is a URI
/// whose user info holds a `:`.
fn textual_password(conninfo: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(conninfo)
        .decode_utf8_lossy()
        .to_ascii_lowercase();
    let keyword = decoded
        .match_indices("password")
        .any(|(i, k)| decoded[i + k.len()..].trim_start().starts_with('='));
    let lower = conninfo.to_ascii_lowercase();
    let uri_rest = ["postgresql://", "postgres://"]
        .iter()
        .find_map(|p| lower.trim_start().strip_prefix(p));
    let userinfo_password = uri_rest.is_some_and(|rest| {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        authority
            .rsplit_once('@')
            .is_some_and(|(userinfo, _)| userinfo.contains(':'))
    });
    keyword || userinfo_password
}

/// The effective user's login name, libpq's default user.
fn os_user_name() -> Option<String> {
    user_name(nix::unistd::geteuid().as_raw())
}

/// The login name of `uid`, or `None` when the password database has no such user (or cannot be read).
/// Thread-safe: `getpwuid_r` with a buffer of this call's own (the daemon runs several backups at once, and
/// `getpwuid`'s static buffer would hand one job another lookup's name).
fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// Finds the password in a `.pgpass` text: lines `host:port:database:user:password`, `*` matching anything,
/// `\` escaping `:` and `\`, `#` starting a comment; the first matching line wins.
pub fn pgpass_lookup(text: &str, host: &str, port: &str, db: &str, user: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = Vec::with_capacity(5);
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                }
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                _ => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() != 5 {
            continue;
        }
        let m = |pat: &str, v: &str| pat == "*" || pat == v;
        if m(&fields[0], host) && m(&fields[1], port) && m(&fields[2], db) && m(&fields[3], user) {
            return Some(fields.swap_remove(4));
        }
    }
    None
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

/// Connects with `tls` and spawns the connection task on the session's runtime.
fn connect<T>(
    rt: &tokio::runtime::Runtime,
    cfg: &tokio_postgres::Config,
    tls: T,
) -> std::result::Result<tokio_postgres::Client, tokio_postgres::Error>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> + 'static,
    T::Stream: Send + 'static,
{
    let (client, connection) = rt.block_on(cfg.connect(tls))?;
    rt.spawn(async move {
        // The error, if any, surfaces on the client's next request as "connection closed".
        let _ = connection.await;
    });
    Ok(client)
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

/// A value in a libpq keyword/value string.
fn conninfo_value(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
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

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    #[test]
    fn user_name_lookups_from_many_threads_each_get_their_own_answer() {
        // Pairs of (uid, name) as the password database says; looked up concurrently, each thread alternating
        // between them, so that a lookup sharing one static buffer (getpwuid) hands out another thread's name.
        let expected: Vec<(u32, String)> = [0u32, 65534]
            .into_iter()
            .filter_map(|uid| user_name(uid).map(|n| (uid, n)))
            .collect();
        assert_eq!(
            expected.len(),
            2,
            "root and nobody must exist: {expected:?}"
        );
        assert_ne!(expected[0].1, expected[1].1);
        let wrong = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..16 {
                let (expected, wrong) = (&expected, &wrong);
                s.spawn(move || {
                    for i in 0..20_000 {
                        let (uid, name) = &expected[(t + i) % 2];
                        if user_name(*uid).as_deref() != Some(name.as_str()) {
                            wrong.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(
            wrong.into_inner(),
            0,
            "lookups answered with another uid's name"
        );
        assert_eq!(user_name(u32::MAX - 7), None);
    }

    #[test]
    fn pgpass_matching_follows_libpq() {
        let text = "# comment\n\
                    other:5432:*:u:wrong-host\n\
                    db\\:host:5432:*:u:escaped-colon\n\
                    127.0.0.1:5433:*:u:wrong-port\n\
                    127.0.0.1:5432:onlythis:u:db-specific\n\
                    127.0.0.1:*:*:u:pa\\:ss\\\\word\n\
                    *:*:*:*:fallback\n";
        assert_eq!(
            pgpass_lookup(text, "127.0.0.1", "5432", "onlythis", "u").as_deref(),
            Some("db-specific")
        );
        assert_eq!(
            pgpass_lookup(text, "127.0.0.1", "5432", "x", "u").as_deref(),
            Some("pa:ss\\word")
        );
        assert_eq!(
            pgpass_lookup(text, "db:host", "5432", "x", "u").as_deref(),
            Some("escaped-colon")
        );
        assert_eq!(
            pgpass_lookup(text, "h", "1", "d", "someone").as_deref(),
            Some("fallback")
        );
        assert_eq!(pgpass_lookup("a:b:c:d\n", "a", "b", "c", "d"), None);
    }

    #[test]
    fn conninfo_and_env_resolve_and_password_stays_out_of_debug() {
        let env = env_of(&[
            ("PGHOST", "10.1.2.3"),
            ("PGPORT", "6543"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "envsecret"),
        ]);
        let c = PgConn::with_env(Some("host=db.example port=5444"), &env).unwrap();
        assert_eq!(c.server(), "db.example:5444");
        assert_eq!(c.user(), "envuser");
        assert!(!format!("{c:?}").contains("envsecret"));
        let child: BTreeMap<_, _> = c.child_env("app").into_iter().collect();
        assert_eq!(child["PGHOST"], "db.example");
        assert_eq!(child["PGPORT"], "5444");
        assert_eq!(child["PGUSER"], "envuser");
        assert_eq!(child["PGPASSWORD"], "envsecret");
        assert_eq!(child["PGDATABASE"], "app");

        let c = PgConn::with_env(None, &env).unwrap();
        assert_eq!(c.server(), "10.1.2.3:6543");
        let child: BTreeMap<_, _> = c.child_env("app").into_iter().collect();
        assert_eq!(child["PGPASSWORD"], "envsecret");

        assert!(PgConn::with_env(Some("nonsense_key=1"), &env).is_err());
        assert!(PgConn::with_env(None, &env_of(&[("PGPORT", "x"), ("PGUSER", "u")])).is_err());
    }

    #[test]
    fn every_spelling_of_a_password_in_a_connection_string_is_refused_without_echo() {
        for c in [
            "password=pw1secret",
            "host=h password = pw1secret",
            "host=h password='pw1 secret'",
            "host=h PASSWORD=pw1secret",
            "host=h PassWord\t= pw1secret",
            "postgresql://u:pw1secret@h/db",
            "postgres://u:pw1secret@h1:5432,h2:5433/db",
            "postgresql://u:@h/db",
            "postgresql://h/db?password=pw1secret",
            "postgresql://h/db?sslmode=disable&password=pw1secret",
            "postgresql://h/db?pass%77ord=pw1secret",
            "postgresql://h/db?%50ASSWORD=pw1secret",
            "POSTGRESQL://u:pw1secret@h/db",
            " postgresql://u:pw1secret@h/db",
        ] {
            let e = parse_conninfo(c)
                .err()
                .unwrap_or_else(|| panic!("{c:?} accepted"));
            let msg = e.to_string();
            assert!(
                msg.contains("password") && !msg.contains("pw1"),
                "{c:?}: {msg}"
            );
        }
        for c in [
            "host=h port=5433 user=u",
            "host=h dbname=password_archive",
            "postgresql://u@h:5433/db?application_name=cairn",
            "postgresql://h1,h2/db?connect_timeout=5",
            "postgresql://h/db?options=a%40b",
        ] {
            assert!(parse_conninfo(c).is_ok(), "{c:?} refused");
        }
    }

    #[test]
    fn password_file_is_used_only_when_private() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(&file, "127.0.0.1:5432:appdb:u:frompass\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = file.to_str().unwrap().to_string();
        let env = env_of(&[
            ("PGHOST", "127.0.0.1"),
            ("PGUSER", "u"),
            ("PGPASSFILE", &path),
        ]);
        let c = PgConn::with_env(None, &env).unwrap();
        assert_eq!(c.password_for("appdb").as_deref(), Some(&b"frompass"[..]));
        assert_eq!(c.password_for("other"), None);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(c.password_for("appdb"), None);
    }

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
