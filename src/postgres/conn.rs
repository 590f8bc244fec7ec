//! Connection settings and connecting: where, as whom and how cairn reaches the server ([`PgConn`]), with
//! libpq's conventions — a keyword/value string or URI (`--pg-conn`, parsed by `tokio_postgres::Config`),
//! then `PGHOST`/`PGHOSTADDR`/`PGPORT`/`PGUSER`/`PGPASSWORD`/`PGOPTIONS`/`PGAPPNAME`/`PGCONNECT_TIMEOUT`, then
//! `PGPASSFILE` or `~/.pgpass` for the password; TLS settings as [`super::tls`] resolves them. The same
//! settings reach the libpq tools cairn runs (pg_dump, pg_restore, psql) through their environment.
//!
//! Invariants:
//! - A connection string never holds a password: [`parse_conninfo`] refuses every spelling libpq accepts,
//!   and its messages name keywords, never values.
//! - Passwords reach the server over the wire and child processes through `PGPASSWORD` only (never process
//!   arguments); `{:?}` of a [`PgConn`] shows no password.
//! - A password file that others can read is ignored, as libpq does.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::str::FromStr;

use tokio_postgres::config::Host;

use super::pg_err;
use super::tls::{self, TlsMode, TlsSettings};
use crate::error::{Error, Result};

/// Where and as whom to connect, resolved from `--pg-conn`, the environment and the password file. The
/// database is not part of it: each operation names its own.
#[derive(Clone)]
pub struct PgConn {
    config: tokio_postgres::Config,
    /// A password given in `--pg-conn` or `PGPASSWORD`; otherwise the password file is consulted per
    /// database (its lines can name databases).
    password: Option<Vec<u8>>,
    pub(super) passfile: Option<PathBuf>,
    pub(super) tls: TlsSettings,
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
    pub(super) fn config_for(&self, db: &str) -> tokio_postgres::Config {
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
        // libpq takes a list per variable, comma-separated; an empty list is left unset.
        let mut list = |name: &'static str, items: Vec<String>| {
            if !items.is_empty() {
                env.push((name, items.join(",").into()));
            }
        };
        list("PGHOST", self.host_names());
        let addrs = self.config.get_hostaddrs().iter().map(|a| a.to_string());
        list("PGHOSTADDR", addrs.collect());
        list(
            "PGPORT",
            self.config
                .get_ports()
                .iter()
                .map(|p| p.to_string())
                .collect(),
        );
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

/// Connects with `tls` and spawns the connection task on the session's runtime.
pub(super) fn connect<T>(
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

/// A value in a libpq keyword/value string.
pub(super) fn conninfo_value(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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
}
