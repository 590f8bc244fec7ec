//! Restoring a plain-SQL dump (an imported legacy `dump.sql`) with psql. Such a dump is untrusted input: it
//! was not written by cairn's pg_dump, and psql would run anything in it.
//!
//! Invariants:
//! - No psql meta-command of the dump runs. When psql knows `\restrict` (the 2025-08 minor releases and
//!   later; detected from `psql --help=commands`), the input starts with `\restrict KEY`, KEY random and never
//!   in the dump, so psql refuses every later meta-command and `ON_ERROR_STOP` ends the restore. A psql without
//!   it gets the dump only after a scan of the whole dump found no meta-command ([`Scanner`], a conservative
//!   copy of psql's lexer: quotes, dollar quotes, comments, `COPY ... FROM stdin` data; anything it cannot
//!   tell apart is refused too). pg_dump's own `\restrict`/`\unrestrict` lines are dropped either way.
//! - The dump's SQL runs as a role of its own ([`RestoreRole`]): LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE
//!   NOREPLICATION NOBYPASSRLS, member of no role (INHERIT only so that it gets the rights of
//!   `pg_database_owner`, the owner of the `public` schema), a random password (sent to the server as a SCRAM verifier, given to
//!   psql through `PGPASSWORD`, never in arguments), owner of the new database and of nothing else. So
//!   `COPY ... TO PROGRAM`, `ALTER SYSTEM`, untrusted languages, `CREATE ROLE`, `SET ROLE` fail.
//! - After a successful restore that role keeps owning the database and what the dump created in it, but can
//!   no longer log in (NOLOGIN, no password). Ownership is deliberately not handed to the connecting user,
//!   usually a superuser: the dump's SECURITY DEFINER functions and views would then run with its rights.
//!   After a failed restore the database and the role are dropped.

use std::io::{BufWriter, Read, Write};
use std::process::{Command, Stdio};

use super::{
    capture_stderr, col, conninfo_value, describe_status, one_line, pg_err, quote_ident,
    quote_literal, reap_fed_child, spawn_error, PgConn, Session, STDERR_LIMIT,
};
use crate::backup::ChildGuard;
use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::snapshot::Snapshot;

/// `n` random bytes as lowercase hex, from the kernel.
fn random_hex(n: usize) -> Result<String> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| Error::io("/dev/urandom", e))?;
    Ok(hex::encode(buf))
}

/// The unprivileged role a plain-SQL dump runs as (module docs).
pub(super) struct RestoreRole {
    pub name: String,
    password: String,
}

impl std::fmt::Debug for RestoreRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreRole")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl RestoreRole {
    /// Creates the role. The connecting user must be a superuser or have CREATEROLE; without superuser it is
    /// granted the role, which CREATE DATABASE ... OWNER and the later DROP need.
    pub fn create(admin: &Session) -> Result<RestoreRole> {
        let row = admin.query_one(
            "SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user",
            &[],
        )?;
        let (superuser, createrole): (bool, bool) = (col(&row, 0)?, col(&row, 1)?);
        if !superuser && !createrole {
            return Err(Error::Postgres(
                "restoring a plain-SQL dump needs a connecting role with CREATEROLE (or a superuser): \
                 its SQL is untrusted and runs as an unprivileged role created for the restore"
                    .into(),
            ));
        }
        let role = RestoreRole {
            name: format!("cairn_restore_{}", random_hex(8)?),
            password: random_hex(24)?,
        };
        let verifier = postgres_protocol::password::scram_sha_256(role.password.as_bytes());
        let create = format!(
            "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS \
             CONNECTION LIMIT 1 PASSWORD {}",
            quote_ident(&role.name),
            quote_literal(&verifier)
        );
        // Not `execute`: its errors quote the statement, and this one holds the password's verifier.
        admin
            .rt
            .block_on(admin.client.batch_execute(&create))
            .map_err(|e| {
                Error::Postgres(format!(
                    "creating the restore role {:?}: {}",
                    role.name,
                    pg_err(&e)
                ))
            })?;
        if !superuser {
            admin.execute(&format!(
                "GRANT {} TO CURRENT_USER",
                quote_ident(&role.name)
            ))?;
        }
        Ok(role)
    }

    /// After a successful restore: the role keeps its objects but can no longer log in.
    pub fn disable(&self, admin: &Session) -> Result<()> {
        admin.execute(&format!(
            "ALTER ROLE {} NOLOGIN PASSWORD NULL",
            quote_ident(&self.name)
        ))
    }

    /// After a failed restore (the database already dropped): the role goes too.
    pub fn drop(&self, admin: &Session) -> Result<()> {
        admin.execute(&format!("DROP ROLE IF EXISTS {}", quote_ident(&self.name)))
    }
}

/// Whether this psql knows `\restrict` (listed by `psql --help=commands` since the 2025-08 minor releases).
pub(super) fn psql_has_restrict() -> Result<bool> {
    let out = Command::new("psql")
        .arg("--help=commands")
        .env_remove("PSQL_PAGER")
        .env_remove("PAGER")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| spawn_error("psql", e))?;
    Ok(out.status.success() && out.stdout.windows(10).any(|w| w == b"\\restrict "))
}

/// Reads the whole dump before anything runs (a psql without `\restrict`): an error naming the first
/// meta-command, or a line whose meaning the scanner cannot be sure of.
pub(super) fn refuse_meta_commands(repo: &Repository, snap: &Snapshot, stream: &str) -> Result<()> {
    let mut sink = Lines::new(ScanSink::default());
    let read = crate::restore::dump(repo, snap, stream, &mut sink).and_then(|_| {
        sink.finish()
            .map_err(|e| Error::io(format!("dump {stream}"), e))
    });
    if let Some((line, what)) = sink.inner.found {
        return Err(Error::Postgres(format!(
            "refusing to restore {stream}: line {line} {what}; this psql has no \\restrict, so a dump \
             holding psql meta-commands is refused before anything runs (psql 13.22, 14.19, 15.14, 16.10, \
             17.6 or later restore it with meta-commands disabled)"
        )));
    }
    read.map(drop)
}

#[derive(Default)]
struct ScanSink {
    scanner: Scanner,
    found: Option<(u64, String)>,
}

impl LineSink for ScanSink {
    fn line(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self.scanner.line(line) {
            Verdict::Meta(what) => {
                self.found = Some((self.scanner.lines, what));
                // Stop reading: the answer is known.
                Err(std::io::Error::other("meta-command found"))
            }
            Verdict::Sql | Verdict::Data | Verdict::DumpGuard => Ok(()),
        }
    }
}

/// Streams the dump into psql connected as `role`, after `\restrict KEY` when `restrict` (module docs);
/// returns the bytes streamed and psql's stderr.
pub(super) fn run_psql(
    repo: &Repository,
    snap: &Snapshot,
    conn: &PgConn,
    stream: &str,
    db: &str,
    role: &RestoreRole,
    restrict: bool,
) -> Result<(u64, String)> {
    let env: Vec<_> = conn
        .child_env(db)
        .into_iter()
        .filter(|(k, _)| *k != "PGUSER" && *k != "PGPASSWORD")
        .collect();
    let mut child = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "--no-password"])
        .arg("--dbname")
        .arg(format!("dbname={}", conninfo_value(db)))
        .env_clear_pg()
        .envs(env)
        .env("PGUSER", &role.name)
        .env("PGPASSWORD", &role.password)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error("psql", e))?;
    let (stdin, stderr) = match (child.stdin.take(), child.stderr.take()) {
        (Some(i), Some(e)) => (i, e),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Postgres("psql: no pipes".into()));
        }
    };
    let stderr = capture_stderr(stderr, STDERR_LIMIT);
    let mut guard = ChildGuard(Some(child));
    let mut input = BufWriter::with_capacity(1 << 20, stdin);
    let head = if restrict {
        let key = random_hex(16)?;
        input.write_all(format!("\\restrict {key}\n").as_bytes())
    } else {
        Ok(())
    };
    let mut lines = Lines::new(DropDumpGuards {
        scanner: Scanner::default(),
        out: input,
    });
    let written = head
        .map_err(|e| Error::io("psql", e))
        .and_then(|()| crate::restore::dump(repo, snap, stream, &mut lines));
    let finished = lines.finish();
    // Closing stdin is psql's end of input.
    let flushed = lines.inner.out.into_inner().map(drop);
    let (status, text) = reap_fed_child(&mut guard, &written, "psql", stderr)?;
    if !status.success() {
        return Err(Error::Postgres(format!(
            "psql into database {db:?} as the unprivileged role {:?} failed ({}): {}",
            role.name,
            describe_status(&status),
            one_line(&text)
        )));
    }
    let bytes = written
        .map_err(|e| Error::Postgres(format!("streaming the dump into psql failed: {e}")))?;
    finished
        .and(flushed.map_err(|e| std::io::Error::new(e.error().kind(), e.error().to_string())))
        .map_err(|e| Error::Postgres(format!("streaming the dump into psql failed: {e}")))?;
    Ok((bytes, text))
}

/// Removes the libpq settings of this process's own environment that `PgConn::child_env` does not set, so
/// psql connects exactly as told (a `PGSERVICE` could name another user or database).
trait EnvClearPg {
    fn env_clear_pg(&mut self) -> &mut Self;
}

impl EnvClearPg for Command {
    fn env_clear_pg(&mut self) -> &mut Self {
        for k in [
            "PGSERVICE",
            "PGSERVICEFILE",
            "PGPASSFILE",
            "PGHOSTADDR",
            "PGOPTIONS",
            "PGDATABASE",
            "PSQLRC",
        ] {
            self.env_remove(k);
        }
        self
    }
}

/// Passes the dump through, without pg_dump's own `\restrict`/`\unrestrict` lines (ours is already in
/// force, and psql refuses a second one).
struct DropDumpGuards<W: Write> {
    scanner: Scanner,
    out: W,
}

impl<W: Write> LineSink for DropDumpGuards<W> {
    fn line(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self.scanner.line(line) {
            Verdict::DumpGuard => Ok(()),
            _ => self.out.write_all(line),
        }
    }
}

/// Receives whole lines (with their `\n`; the last one may lack it).
trait LineSink {
    fn line(&mut self, line: &[u8]) -> std::io::Result<()>;
}

/// A writer that cuts what it is given into lines for a [`LineSink`].
struct Lines<S: LineSink> {
    inner: S,
    partial: Vec<u8>,
}

impl<S: LineSink> Lines<S> {
    fn new(inner: S) -> Self {
        Lines {
            inner,
            partial: Vec::new(),
        }
    }

    /// Hands over the last line if it had no newline.
    fn finish(&mut self) -> std::io::Result<()> {
        if self.partial.is_empty() {
            return Ok(());
        }
        let last = std::mem::take(&mut self.partial);
        self.inner.line(&last)
    }
}

impl<S: LineSink> Write for Lines<S> {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len();
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                self.inner.line(&buf[..=i])?;
            } else {
                self.partial.extend_from_slice(&buf[..=i]);
                let line = std::mem::take(&mut self.partial);
                self.inner.line(&line)?;
            }
            buf = &buf[i + 1..];
        }
        self.partial.extend_from_slice(buf);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a line of a plain-SQL dump is to psql.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// SQL (or part of a statement).
    Sql,
    /// `COPY ... FROM stdin` data (or its `\.` end).
    Data,
    /// pg_dump's own `\restrict KEY` / `\unrestrict KEY`, between statements.
    DumpGuard,
    /// A meta-command, or something the scanner cannot be sure is not one; the text says which.
    Meta(String),
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
enum State {
    #[default]
    Normal,
    /// In a '...' string; `escapes` for E'...' (backslash escapes the next character).
    Quote { escapes: bool },
    /// In a "..." identifier.
    Ident,
    /// In a $tag$...$tag$ string.
    Dollar(Vec<u8>),
    /// In a /* */ comment, nested this deep.
    Comment(u32),
    /// Between `COPY ... FROM stdin;` and `\.`.
    CopyData,
}

/// How much of a statement is kept to recognise `COPY ... FROM stdin`.
const STATEMENT_KEEP: usize = 4096;

/// A line-by-line copy of what psql's lexer needs to tell a meta-command (a backslash outside quotes,
/// comments and COPY data) from SQL. Where psql's reading could differ from this one (a plain string
/// holding `\'`, whose end depends on `standard_conforming_strings`), the line counts as a meta-command.
#[derive(Default)]
struct Scanner {
    state: State,
    /// The current statement outside quotes and comments, lowercased, up to [`STATEMENT_KEEP`] bytes.
    statement: Vec<u8>,
    /// Lines seen (1-based number of the last one).
    lines: u64,
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

impl Scanner {
    fn line(&mut self, line: &[u8]) -> Verdict {
        self.lines += 1;
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if self.state == State::CopyData {
            if text == b"\\." {
                self.state = State::Normal;
            }
            return Verdict::Data;
        }
        if self.state == State::Normal
            && self.statement.iter().all(u8::is_ascii_whitespace)
            && is_dump_guard(text)
        {
            return Verdict::DumpGuard;
        }
        let mut copy_follows = false;
        let mut i = 0;
        while i < text.len() {
            let b = text[i];
            let next = text.get(i + 1).copied();
            match self.state.clone() {
                State::Normal => match b {
                    b'-' if next == Some(b'-') => break,
                    b'/' if next == Some(b'*') => {
                        self.state = State::Comment(1);
                        self.push(b" ");
                        i += 1;
                    }
                    b'\'' => {
                        let e = i > 0
                            && matches!(text[i - 1], b'e' | b'E')
                            && (i < 2 || !is_ident_byte(text[i - 2]));
                        self.state = State::Quote { escapes: e };
                        self.push(b"'s'");
                    }
                    b'"' => {
                        self.state = State::Ident;
                        self.push(b"\"i\"");
                    }
                    b'$' if i == 0 || !is_ident_byte(text[i - 1]) => {
                        if let Some(tag) = dollar_tag(&text[i..]) {
                            i += tag.len() + 1;
                            self.state = State::Dollar(tag);
                            self.push(b"'s'");
                        } else {
                            self.push(b"$");
                        }
                    }
                    b'\\' => {
                        return Verdict::Meta(format!(
                            "holds the psql meta-command {:?}",
                            String::from_utf8_lossy(&text[i..text.len().min(i + 40)])
                        ))
                    }
                    b';' => {
                        copy_follows |= is_copy_from_stdin(&self.statement);
                        self.statement.clear();
                    }
                    _ => self.push(&[b.to_ascii_lowercase()]),
                },
                State::Quote { escapes } => match b {
                    b'\'' if next == Some(b'\'') => i += 1,
                    b'\'' => self.state = State::Normal,
                    b'\\' if escapes => i += 1,
                    b'\\' if next == Some(b'\'') => return Verdict::Meta(
                        "holds a string with \\' whose end depends on standard_conforming_strings"
                            .into(),
                    ),
                    _ => {}
                },
                State::Ident => {
                    if b == b'"' {
                        if next == Some(b'"') {
                            i += 1;
                        } else {
                            self.state = State::Normal;
                        }
                    }
                }
                State::Dollar(tag) => {
                    if b == b'$' && dollar_tag(&text[i..]).as_deref() == Some(&tag[..]) {
                        i += tag.len() + 1;
                        self.state = State::Normal;
                    }
                }
                State::Comment(depth) => {
                    if b == b'/' && next == Some(b'*') {
                        self.state = State::Comment(depth + 1);
                        i += 1;
                    } else if b == b'*' && next == Some(b'/') {
                        self.state = if depth == 1 {
                            State::Normal
                        } else {
                            State::Comment(depth - 1)
                        };
                        i += 1;
                    }
                }
                State::CopyData => {}
            }
            i += 1;
        }
        self.push(b" ");
        if copy_follows && self.state == State::Normal {
            // psql reads the data from the next line on.
            self.state = State::CopyData;
        }
        Verdict::Sql
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.statement.len() < STATEMENT_KEEP {
            self.statement.extend_from_slice(bytes);
        }
    }
}

/// `$tag$` at the start of `s`: the tag (empty for `$$`), as psql's lexer reads a dollar-quote delimiter.
fn dollar_tag(s: &[u8]) -> Option<Vec<u8>> {
    let rest = s.strip_prefix(b"$")?;
    let end = rest.iter().position(|&b| b == b'$')?;
    let tag = &rest[..end];
    let ok = match tag.split_first() {
        None => true,
        Some((first, more)) => {
            (first.is_ascii_alphabetic() || *first == b'_' || *first >= 0x80)
                && more.iter().all(|&b| is_ident_byte(b))
        }
    };
    ok.then(|| tag.to_vec())
}

/// A statement (lowercased, quotes replaced) that is `COPY ... FROM stdin`.
fn is_copy_from_stdin(statement: &[u8]) -> bool {
    let text = String::from_utf8_lossy(statement);
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    words.first() == Some(&"copy") && words.windows(2).any(|w| w == ["from", "stdin"])
}

/// pg_dump's `\restrict KEY` or `\unrestrict KEY` line.
fn is_dump_guard(line: &[u8]) -> bool {
    let rest = line
        .strip_prefix(b"\\restrict ")
        .or_else(|| line.strip_prefix(b"\\unrestrict "));
    match rest {
        Some(key) => {
            let key = key.trim_ascii_end();
            !key.is_empty() && key.iter().all(u8::is_ascii_alphanumeric)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(sql: &str) -> Vec<Verdict> {
        let mut s = Scanner::default();
        sql.split_inclusive('\n')
            .map(|l| s.line(l.as_bytes()))
            .collect()
    }

    fn first_meta(sql: &str) -> Option<usize> {
        verdicts(sql)
            .iter()
            .position(|v| matches!(v, Verdict::Meta(_)))
    }

    #[test]
    fn meta_commands_are_found_wherever_psql_would_run_them() {
        for sql in [
            "\\! touch /tmp/x\n",
            "select 1; \\! touch /tmp/x\n",
            "select 1 \\g |touch /tmp/x\n",
            "select 'a''b'; \\connect other\n",
            "select E'\\''; \\! id\n",
            "select $$ a $$; \\o |id\n",
            "select $t$ $$ \\x $t$ \\gexec\n",
            "/* a /* nested */ still */ \\c other\n",
            "select \"we\"\"ird\" \\w /tmp/x\n",
            "  \\copy (select 1) to program 'id'\n",
            "\\restrict k\n\\unrestrict k\nselect 1; \\! id\n",
            "select 'a\\'; \\! id\n",
            "select x$y$ \\! id\n",
        ] {
            assert!(first_meta(sql).is_some(), "not found in {sql:?}");
        }
    }

    #[test]
    fn sql_quotes_comments_and_copy_data_are_not_meta_commands() {
        let dump = "--\n-- \\! in a comment\n--\n\n\\restrict AbC123\n\n\
                    SET standard_conforming_strings = on;\n\
                    CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $_$ select '\\! x' $_$;\n\
                    COMMENT ON TABLE t IS E'back\\\\slash \\' quote';\n\
                    /* multi\n \\! line */ select 1;\n\
                    select 'multi\nline \\! string';\n\
                    COPY public.t (a, \"from\") FROM stdin;\n\
                    1\t\\N\n\\! data\n\\.\n\
                    select \"a\\b\";\n\
                    \\unrestrict AbC123\n";
        let v = verdicts(dump);
        assert_eq!(first_meta(dump), None, "{v:?}");
        assert_eq!(v.iter().filter(|x| **x == Verdict::DumpGuard).count(), 2);
        assert_eq!(v.iter().filter(|x| **x == Verdict::Data).count(), 3);
    }

    #[test]
    fn a_dump_guard_inside_copy_data_or_a_statement_is_not_dropped() {
        let v = verdicts("COPY t FROM stdin;\n\\restrict abc\n\\.\nselect\n\\restrict abc\n");
        assert_eq!(v[1], Verdict::Data);
        assert!(matches!(v[4], Verdict::Meta(_)), "{v:?}");
    }

    #[test]
    fn lines_are_cut_across_writes() {
        #[derive(Default)]
        struct Collect(Vec<Vec<u8>>);
        impl LineSink for Collect {
            fn line(&mut self, l: &[u8]) -> std::io::Result<()> {
                self.0.push(l.to_vec());
                Ok(())
            }
        }
        let mut w = Lines::new(Collect::default());
        for piece in ["ab", "c\nd", "\n\ne", "f"] {
            w.write_all(piece.as_bytes()).unwrap();
        }
        w.finish().unwrap();
        assert_eq!(
            w.inner.0,
            vec![
                b"abc\n".to_vec(),
                b"d\n".to_vec(),
                b"\n".to_vec(),
                b"ef".to_vec()
            ]
        );
    }
}
