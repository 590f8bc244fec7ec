//! Odoo's backup format, from a stored dump: the dump as plain SQL (what Odoo's database manager feeds to
//! `psql`) and the facts of Odoo's `manifest.json`, read from that SQL as it streams by.
//!
//! Invariants:
//! - The dump is converted as a stream: a custom-format dump is piped from the repository through
//!   `pg_restore --no-owner` (Odoo's own `pg_dump --no-owner` dump has no ownership either) and its output
//!   is handed on as it comes; a plain-SQL dump (an imported `dump.sql`) is passed through byte for byte.
//!   Nothing is written to a temporary file and memory stays bounded ([`MAX_LINE`] per scanned line).
//! - The manifest's modules are the `installed` rows of `public.ir_module_module` as the dump's `COPY` data
//!   holds them (what Odoo's `dump_db_manifest` selects); the Odoo version is that of the `base` module.
//!   A dump without that table gives a manifest without Odoo version and modules, never an error.
//! - The conversion fails, and so does the export, when the repository cannot deliver the dump (its own
//!   error is reported) or pg_restore fails (its message is reported): a truncated `dump.sql` is never
//!   handed out as a whole one.

use std::collections::BTreeMap;
use std::io::{BufWriter, Read, Write};
use std::process::{Command, Stdio};

use serde::Serialize;

use super::{capture_stderr, describe_status, one_line, spawn_error, PgFacts, STDERR_LIMIT};
use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::snapshot::Snapshot;

/// The longest line kept for scanning: a `COPY` header or an `ir_module_module` row. Longer lines still pass
/// through untouched; only a module row that long is refused (no real one comes close).
const MAX_LINE: usize = 16 << 20;

/// The manifest Odoo writes into its backups (`odoo.service.db.dump_db_manifest`), same field names.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OdooManifest {
    pub odoo_dump: String,
    pub db_name: String,
    /// Odoo's release (`17.0`), from the `base` module's version; absent without `ir_module_module`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `[17, 0, 0, "final", 0, ""]`: the release level is not in the database, `final` is assumed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_info: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major_version: Option<String>,
    /// `major.minor` as Odoo computes it from `server_version_num` (`16.0` for 16.4, `9.6` for 9.6.24).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pg_version: Option<String>,
    /// Installed module name -> its `latest_version`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modules: Option<BTreeMap<String, Option<String>>>,
}

/// What was learnt from the plain SQL while it streamed by.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DumpScan {
    /// `-- Dumped from database version X` (pg_dump's header).
    pub dumped_from: Option<String>,
    /// Every row of `public.ir_module_module` as (name, state, latest_version), if the dump has the table.
    pub modules: Option<Vec<(String, String, Option<String>)>>,
}

impl DumpScan {
    /// The manifest for the database `db_name`; `facts` (a `--pg` snapshot's) give the exact server version.
    pub fn manifest(&self, db_name: &str, facts: Option<&PgFacts>) -> OdooManifest {
        let pg_version = match facts {
            Some(f) => Some(odoo_pg_version(f.server_version_num)),
            None => self.dumped_from.as_deref().and_then(pg_version_from_text),
        };
        let installed: Option<BTreeMap<String, Option<String>>> = self.modules.as_ref().map(|m| {
            m.iter()
                .filter(|(_, state, _)| state == "installed")
                .map(|(name, _, v)| (name.clone(), v.clone()))
                .collect()
        });
        let base = installed
            .as_ref()
            .and_then(|m| m.get("base").cloned().flatten());
        let (version, version_info) = match base.as_deref().and_then(odoo_release) {
            Some((v, info)) => (Some(v), Some(info)),
            None => (None, None),
        };
        OdooManifest {
            odoo_dump: "1".into(),
            db_name: db_name.to_string(),
            major_version: version.clone(),
            version,
            version_info,
            pg_version,
            modules: installed,
        }
    }
}

/// Odoo's `pg_version`: `"%d.%d" % divmod(server_version / 100, 100)`.
fn odoo_pg_version(num: i32) -> String {
    format!("{}.{}", num / 10000, (num / 100) % 100)
}

/// The same from a version text (`15.18 (Debian 15.18-0+deb12u1)`, `9.6.24`).
fn pg_version_from_text(text: &str) -> Option<String> {
    let version = text.split_whitespace().next()?;
    let mut parts = version.split('.').map(|p| p.parse::<i32>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    Some(if major >= 10 {
        format!("{major}.0")
    } else {
        format!("{major}.{minor}")
    })
}

/// Odoo's release and `version_info` from the `base` module's version (`17.0.1.3` -> `17.0`,
/// `saas~17.1.1.3` -> `saas~17.1`): module versions are the release followed by the module's own.
fn odoo_release(base_version: &str) -> Option<(String, serde_json::Value)> {
    let mut parts = base_version.split('.');
    let (major, minor) = (parts.next()?, parts.next()?);
    let minor_n: i64 = minor.parse().ok()?;
    let major_value = match major.parse::<i64>() {
        Ok(n) => serde_json::json!(n),
        Err(_) if major.starts_with("saas~") => serde_json::json!(major),
        Err(_) => return None,
    };
    Some((
        format!("{major}.{minor}"),
        serde_json::json!([major_value, minor_n, 0, "final", 0, ""]),
    ))
}

/// Writes the snapshot's dump `stream` to `out` as plain SQL (see the module docs); returns the bytes
/// written and what the scan found.
pub fn write_plain_sql(
    repo: &Repository,
    snap: &Snapshot,
    stream: &str,
    out: &mut dyn Write,
) -> Result<(u64, DumpScan)> {
    let mut tap = Tap {
        out,
        bytes: 0,
        scanner: Scanner::default(),
    };
    if stream.ends_with(".sql") {
        crate::restore::dump(repo, snap, stream, &mut tap)?;
    } else {
        pg_restore_to_sql(repo, snap, stream, &mut tap)?;
    }
    let Tap { bytes, scanner, .. } = tap;
    Ok((bytes, scanner.finish()?))
}

/// Streams a custom-format dump through `pg_restore` into `out`.
fn pg_restore_to_sql(
    repo: &Repository,
    snap: &Snapshot,
    stream: &str,
    out: &mut Tap,
) -> Result<()> {
    let tool = "pg_restore";
    // The script to stdout (`-f -`). --no-owner as in Odoo's own `pg_dump --no-owner` dumps.
    let mut child = Command::new(tool)
        .args(["--no-owner", "--file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(tool, e))?;
    let pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let (Some(stdin), Some(mut stdout), Some(stderr)) = pipes else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Error::Postgres("pg_restore: no pipes".into()));
    };
    let stderr = capture_stderr(stderr, STDERR_LIMIT);
    let (fed, copied) = std::thread::scope(|s| {
        let feeder = s.spawn(move || {
            let mut input = BufWriter::with_capacity(1 << 20, stdin);
            let fed = crate::restore::dump(repo, snap, stream, &mut input);
            // Closing stdin (dropping the writer) is pg_restore's end of input.
            let flushed = input.into_inner().map(drop).map_err(|e| e.into_error());
            fed.map(|n| (n, flushed))
        });
        let copied = copy_out(&mut stdout, out);
        if copied.is_err() {
            // Our output failed: stop pg_restore, which unblocks the feeder with a broken pipe.
            let _ = child.kill();
        }
        drop(stdout);
        let fed = feeder
            .join()
            .unwrap_or_else(|_| Err(Error::Postgres("the dump feeder panicked".into())));
        (fed, copied)
    });
    let status = child
        .wait()
        .map_err(|e| Error::Postgres(format!("waiting for {tool}: {e}")))?;
    let text = stderr.join().unwrap_or_default();
    // The repository's own error first: pg_restore's failure would only be a symptom of it.
    if let Err(e @ (Error::Corrupt { .. } | Error::NotFound(_))) = &fed {
        return Err(Error::Postgres(format!(
            "reading the dump from the repository failed: {e}"
        )));
    }
    copied?;
    if !status.success() {
        return Err(Error::Postgres(format!(
            "{tool} converting {stream:?} to plain SQL failed ({}): {}",
            describe_status(&status),
            one_line(&text)
        )));
    }
    // pg_restore succeeded although it did not get all of the dump: that must not pass silently.
    let flushed = fed
        .map_err(|e| Error::Postgres(format!("streaming the dump into pg_restore failed: {e}")))?;
    flushed
        .1
        .map_err(|e| Error::Postgres(format!("streaming the dump into pg_restore failed: {e}")))
}

/// Copies pg_restore's output into the tap.
fn copy_out(from: &mut dyn Read, to: &mut Tap) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Postgres(format!("reading pg_restore's output: {e}"))),
        };
        to.write_all(&buf[..n])
            .map_err(|e| Error::io("archive", e))?;
    }
}

/// Passes bytes on to `out`, counting and scanning them.
struct Tap<'a> {
    out: &'a mut dyn Write,
    bytes: u64,
    scanner: Scanner,
}

impl Write for Tap<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.scanner.feed(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Where the scanner is in the SQL text.
#[derive(Debug, Default)]
enum Place {
    #[default]
    Statements,
    /// Inside the `COPY public.ir_module_module` data; the positions of name, state and latest_version.
    ModuleRows([usize; 3]),
    /// Inside some other `COPY ... FROM stdin` data: no line of it is a statement.
    OtherRows,
}

/// A line-by-line reader of plain SQL, looking only at what the manifest needs.
#[derive(Debug, Default)]
struct Scanner {
    line: Vec<u8>,
    /// The current line is longer than [`MAX_LINE`]; the kept part is its start.
    truncated: bool,
    place: Place,
    scan: DumpScan,
    /// The first problem met (a module row too long or malformed), reported by [`Scanner::finish`].
    problem: Option<String>,
}

impl Scanner {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let (part, rest, end) = match data.iter().position(|&b| b == b'\n') {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            let room = MAX_LINE.saturating_sub(self.line.len());
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            self.truncated |= part.len() > room;
            if end {
                let line = std::mem::take(&mut self.line);
                self.end_of_line(&line);
                self.line = line;
                self.line.clear();
                self.truncated = false;
            }
            data = rest;
        }
    }

    fn end_of_line(&mut self, line: &[u8]) {
        match self.place {
            Place::Statements => self.statement_line(line),
            Place::OtherRows | Place::ModuleRows(_) if line == b"\\." => {
                self.place = Place::Statements
            }
            Place::OtherRows => {}
            Place::ModuleRows(cols) => self.module_row(line, cols),
        }
    }

    fn statement_line(&mut self, line: &[u8]) {
        const DUMPED_FROM: &[u8] = b"-- Dumped from database version ";
        if let Some(v) = line.strip_prefix(DUMPED_FROM) {
            if self.scan.dumped_from.is_none() {
                self.scan.dumped_from = Some(String::from_utf8_lossy(v).trim().to_string());
            }
            return;
        }
        if !(line.starts_with(b"COPY ") && line.ends_with(b" FROM stdin;")) {
            return;
        }
        if self.truncated {
            self.place = Place::OtherRows;
            return;
        }
        let text = String::from_utf8_lossy(line);
        self.place = match text.strip_prefix("COPY public.ir_module_module (") {
            Some(rest) => match module_columns(rest) {
                Some(cols) => {
                    self.scan.modules.get_or_insert_with(Vec::new);
                    Place::ModuleRows(cols)
                }
                None => {
                    self.problem.get_or_insert_with(|| {
                        "ir_module_module lacks a name, state or latest_version column".into()
                    });
                    Place::OtherRows
                }
            },
            None => Place::OtherRows,
        };
    }

    fn module_row(&mut self, line: &[u8], [name, state, version]: [usize; 3]) {
        if self.truncated {
            self.problem
                .get_or_insert_with(|| "an ir_module_module row is longer than 16 MiB".into());
            return;
        }
        let fields: Vec<&[u8]> = line.split(|&b| b == b'\t').collect();
        let get = |i: usize| fields.get(i).map(|f| copy_field(f));
        match (get(name), get(state), get(version)) {
            (Some(Some(n)), Some(Some(s)), Some(v)) => {
                if let Some(m) = self.scan.modules.as_mut() {
                    m.push((n, s, v));
                }
            }
            _ => {
                self.problem.get_or_insert_with(|| {
                    format!(
                        "a malformed ir_module_module row: {:?}",
                        String::from_utf8_lossy(&line[..line.len().min(200)])
                    )
                });
            }
        }
    }

    fn finish(mut self) -> Result<DumpScan> {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.end_of_line(&line);
        }
        match self.problem {
            Some(p) => Err(Error::Invalid(format!(
                "the dump's Odoo module list cannot be read: {p}"
            ))),
            None => Ok(self.scan),
        }
    }
}

/// The positions of `name`, `state` and `latest_version` in a `COPY` column list (`a, "b c", d) FROM stdin;`).
fn module_columns(rest: &str) -> Option<[usize; 3]> {
    let list = rest.strip_suffix(") FROM stdin;")?;
    let cols = split_identifiers(list)?;
    let at = |want: &str| cols.iter().position(|c| c == want);
    Some([at("name")?, at("state")?, at("latest_version")?])
}

/// Splits a comma-separated list of SQL identifiers, unquoting `"quoted ""ones"""`.
fn split_identifiers(list: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = list.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            (_, '"') => quoted = !quoted,
            (false, ',') => out.push(std::mem::take(&mut cur).trim().to_string()),
            _ => cur.push(c),
        }
    }
    if quoted {
        return None;
    }
    out.push(cur.trim().to_string());
    Some(out)
}

/// One field of `COPY ... TO STDOUT` text format: `\N` is NULL, backslash escapes are decoded.
fn copy_field(raw: &[u8]) -> Option<String> {
    if raw == b"\\N" {
        return None;
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        i += 1;
        if b != b'\\' || i == raw.len() {
            out.push(b);
            continue;
        }
        let e = raw[i];
        i += 1;
        match e {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' if raw.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u32;
                for _ in 0..2 {
                    match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &[u8], piece: usize) -> Result<DumpScan> {
        let mut s = Scanner::default();
        for c in text.chunks(piece) {
            s.feed(c);
        }
        s.finish()
    }

    #[test]
    fn module_rows_are_read_from_copy_data_split_anywhere() {
        let sql = b"--\n-- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)\n\
            COPY public.other (name, state, latest_version) FROM stdin;\nx\tinstalled\t1\n\\.\n\
            COPY public.ir_module_module (id, \"name\", description, state, latest_version) FROM stdin;\n\
            1\tbase\tline\\none\\ttab \\\\ back\tinstalled\t17.0.1.3\n\
            2\tsale\t\\N\tuninstalled\t\\N\n\
            3\tweb\\x41\t\\N\tinstalled\t\\N\n\
            \\.\n";
        for piece in [1, 3, 7, 64, 4096] {
            let s = scan(sql, piece).unwrap();
            assert_eq!(
                s.dumped_from.as_deref(),
                Some("15.18 (Debian 15.18-0+deb12u1)")
            );
            let m = s.modules.unwrap();
            assert_eq!(m.len(), 3, "{m:?}");
            assert_eq!(
                m[0],
                ("base".into(), "installed".into(), Some("17.0.1.3".into()))
            );
            assert_eq!(m[2], ("webA".into(), "installed".into(), None));
        }
        let s = scan(sql, 5).unwrap();
        let man = s.manifest("prod", None);
        assert_eq!(man.version.as_deref(), Some("17.0"));
        assert_eq!(man.major_version.as_deref(), Some("17.0"));
        assert_eq!(
            man.version_info,
            Some(serde_json::json!([17, 0, 0, "final", 0, ""]))
        );
        assert_eq!(man.pg_version.as_deref(), Some("15.0"));
        let mods = man.modules.unwrap();
        assert_eq!(mods.len(), 2);
        assert_eq!(mods["webA"], None);
    }

    #[test]
    fn no_module_table_means_no_odoo_fields_and_bad_rows_are_errors() {
        let s = scan(b"CREATE TABLE t (a int);\n", 2).unwrap();
        let man = serde_json::to_value(s.manifest("db", None)).unwrap();
        assert_eq!(
            man,
            serde_json::json!({"odoo_dump": "1", "db_name": "db"}),
            "{man}"
        );
        let bad =
            b"COPY public.ir_module_module (id, name, state, latest_version) FROM stdin;\n1\n\\.\n";
        assert!(scan(bad, 4).is_err());
        let no_cols = b"COPY public.ir_module_module (id, name) FROM stdin;\n\\.\n";
        assert!(scan(no_cols, 4).is_err());
    }

    #[test]
    fn versions_follow_odoo() {
        assert_eq!(odoo_pg_version(160004), "16.0");
        assert_eq!(odoo_pg_version(90624), "9.6");
        assert_eq!(pg_version_from_text("9.6.24").as_deref(), Some("9.6"));
        assert_eq!(pg_version_from_text("nonsense"), None);
        let (v, info) = odoo_release("saas~17.1.1.3").unwrap();
        assert_eq!(v, "saas~17.1");
        assert_eq!(info, serde_json::json!(["saas~17", 1, 0, "final", 0, ""]));
        assert!(odoo_release("garbage").is_none());
        assert_eq!(copy_field(b"a\\101\\x4a\\q"), Some("aAJq".into()));
    }
}
