//! Restoring a snapshot's database: into a new database (or in place, after a safety snapshot), through
//! `pg_restore` or a plain-SQL role, and verifying the restored row counts against the recorded ones.

use super::*;

/// How to restore a snapshot's database.
#[derive(Debug, Clone, Default)]
pub struct PgRestoreOptions {
    /// The database to create.
    pub database: String,
    /// Restore over an existing database: safety snapshot, terminate its connections, drop, recreate.
    pub replace: bool,
    /// Restore owners and privileges too (pg_restore without `--no-owner --no-acl`): the roles must exist.
    pub owner_acl: bool,
    /// Instance label of the safety snapshot.
    pub instance: Option<String>,
}

/// What a database restore did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PgRestoreReport {
    pub database: String,
    pub stream: String,
    pub bytes: u64,
    /// The snapshot of the replaced database, taken before it was dropped.
    pub safety_snapshot: Option<String>,
    /// False when the snapshot recorded no row counts (a dump not taken with `--pg`).
    pub verified: bool,
    pub tables_verified: usize,
    pub rows_verified: i64,
    pub pg_restore_stderr: String,
    /// The unprivileged role that owns the database restored from a plain-SQL dump (it ran the dump's SQL,
    /// and can no longer log in); `None` for a custom-format dump, restored as the connecting user.
    pub owner_role: Option<String>,
}

/// The dump stream of a snapshot: the one `--pg` recorded, else the only stream named `*.dump`.
fn dump_stream_of(snap: &Snapshot, facts: Option<&PgFacts>) -> Result<String> {
    if let Some(f) = facts {
        return Ok(f.stream.clone());
    }
    match snap.dump_stream_names().as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(Error::NotFound(
            "the snapshot holds no database dump (no stream named *.dump)".into(),
        )),
        many => Err(Error::Invalid(format!(
            "the snapshot holds several dumps ({}); cannot tell which to restore",
            many.join(", ")
        ))),
    }
}

/// Restores the snapshot's database dump into a new database `opts.database` and verifies its row counts.
/// `on_safety` is told the safety snapshot's id as soon as it is written (before anything is dropped).
pub fn restore_database(
    repo: &Repository,
    snap: &Snapshot,
    conn: &PgConn,
    opts: &PgRestoreOptions,
    on_safety: &mut dyn FnMut(&Id),
) -> Result<PgRestoreReport> {
    let db = opts.database.as_str();
    check_db_name(db)?;
    let facts = PgFacts::of(snap)?;
    let stream = dump_stream_of(snap, facts.as_ref())?;
    let mut report = PgRestoreReport {
        database: db.to_string(),
        stream: stream.clone(),
        ..PgRestoreReport::default()
    };
    // CREATE and DROP DATABASE need a connection to some other database.
    let maint = if db == "postgres" {
        "template1"
    } else {
        "postgres"
    };
    let admin = Session::open(conn, maint)?;
    // Before anything is changed: a plain-SQL dump that this psql could not restore safely is refused here.
    let plain_restrict = plain_sql_mode(repo, snap, &stream)?;
    let exists = !admin
        .query("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])?
        .is_empty();
    let mut safety_note = String::new();
    if exists {
        if !opts.replace {
            return Err(Error::Postgres(format!(
                "database {db:?} already exists on {} (use --replace to restore over it; a safety snapshot of it is taken first)",
                conn.server()
            )));
        }
        let safety = backup_database(
            repo,
            conn,
            db,
            opts.instance.clone(),
            vec![crate::gc::SAFETY_TAG.into()],
        )
        .map_err(|e| {
            e.with_context(format!(
                "safety snapshot of database {db:?} failed, nothing was changed"
            ))
        })?;
        on_safety(&safety.snapshot_id);
        report.safety_snapshot = Some(safety.snapshot_id.to_hex());
        safety_note = format!(
            "; its previous contents are in safety snapshot {}",
            safety.snapshot_id
        );
        drop_database(&admin, db).map_err(|e| e.with_note(&safety_note))?;
    }
    let mut create = format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(db));
    if let Some(f) = &facts {
        // The source's encoding and collation: indexes and query results depend on them.
        create.push_str(&format!(" ENCODING {}", quote_literal(&f.encoding)));
        if !f.lc_collate.is_empty() && !f.lc_ctype.is_empty() {
            create.push_str(&format!(
                " LC_COLLATE {} LC_CTYPE {}",
                quote_literal(&f.lc_collate),
                quote_literal(&f.lc_ctype)
            ));
        }
    }
    // A plain-SQL dump (an imported legacy dump.sql) is untrusted: its SQL runs as a role of its own that
    // owns only this database, and no psql meta-command of it runs (see plain_sql).
    let plain = match plain_restrict
        .map(|r| plain_sql::RestoreRole::create(&admin).map(|role| (role, r)))
        .transpose()
    {
        Ok(p) => p,
        Err(e) => return Err(e.with_note(&safety_note)),
    };
    if let Some((role, _)) = &plain {
        create.push_str(&format!(" OWNER {}", quote_ident(&role.name)));
        report.owner_role = Some(role.name.clone());
    }
    if let Err(e) = admin.execute(&create) {
        let role_note = drop_restore_role(&admin, plain.as_ref().map(|p| &p.0));
        return Err(e.with_note(format!("{role_note}{safety_note}")));
    }

    let restored = match &plain {
        Some((role, restrict)) => {
            plain_sql::run_psql(repo, snap, conn, &stream, db, role, *restrict)
        }
        None => run_pg_restore(repo, snap, conn, &stream, db, opts.owner_acl),
    };
    match restored {
        Ok((bytes, stderr)) => {
            report.bytes = bytes;
            report.pg_restore_stderr = stderr;
            if let Some((role, _)) = &plain {
                role.disable(&admin)
                    .map_err(|e| Error::Postgres(format!("{e}{safety_note}")))?;
            }
        }
        Err(e) => {
            // Half a database is worse than none: drop what this restore created, so a retry starts clean.
            let dropped = match drop_database(&admin, db) {
                Ok(()) => format!("database {db:?} was dropped again"),
                Err(d) => format!(
                    "dropping the half-restored database failed too: {}",
                    d.message()
                ),
            };
            let role_note = drop_restore_role(&admin, plain.as_ref().map(|p| &p.0));
            return Err(e.with_note(format!("; {dropped}{role_note}{safety_note}")));
        }
    }
    if let Some(f) = &facts {
        let (tables, rows) = verify_row_counts(conn, db, &f.tables).map_err(|e| {
            e.with_note(format!(
                " (the restored database is left for inspection){safety_note}"
            ))
        })?;
        report.verified = true;
        report.tables_verified = tables;
        report.rows_verified = rows;
    }
    Ok(report)
}

/// For a plain-SQL dump: whether psql's `\restrict` will keep its meta-commands from running (without it,
/// the whole dump is scanned first and refused if it holds any). `None` for a custom-format dump.
fn plain_sql_mode(repo: &Repository, snap: &Snapshot, stream: &str) -> Result<Option<bool>> {
    if !stream.ends_with(".sql") {
        return Ok(None);
    }
    let restrict = plain_sql::psql_has_restrict()?;
    if !restrict {
        plain_sql::refuse_meta_commands(repo, snap, stream)?;
    }
    Ok(Some(restrict))
}

/// Drops the plain-SQL restore role after a failure; the text to add to the error.
fn drop_restore_role(admin: &Session, role: Option<&plain_sql::RestoreRole>) -> String {
    match role.map(|r| (r, r.drop(admin))) {
        None => String::new(),
        Some((r, Ok(()))) => format!(", and its restore role {:?} too", r.name),
        Some((r, Err(e))) => format!(", but dropping its restore role {:?} failed: {e}", r.name),
    }
}

/// Terminates the database's sessions and drops it.
fn drop_database(admin: &Session, db: &str) -> Result<()> {
    admin.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND pid <> pg_backend_pid()",
        &[&db],
    )?;
    let version: i32 = col(
        &admin.query_one("SELECT current_setting('server_version_num')::int", &[])?,
        0,
    )?;
    // FORCE (13+) also ends sessions that connected after the terminate above.
    let force = if version >= 130000 {
        " WITH (FORCE)"
    } else {
        ""
    };
    admin.execute(&format!("DROP DATABASE {}{force}", quote_ident(db)))
}

/// Waits for a restore tool (pg_restore, psql) that was fed the dump from the repository, and collects what it
/// printed on stderr. When reading the repository failed, the tool is stopped and the repository's error is
/// reported: the tool's own failure would only be a symptom of it.
pub(super) fn reap_fed_child(
    guard: &mut ChildGuard,
    written: &Result<u64>,
    tool: &str,
    stderr: JoinHandle<String>,
) -> Result<(ExitStatus, String)> {
    let mut child = guard
        .0
        .take()
        .ok_or_else(|| Error::Postgres(format!("{tool} already reaped")))?;
    if let Err(e @ (Error::Corrupt { .. } | Error::NotFound(_))) = written {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Error::Postgres(format!(
            "reading the dump from the repository failed: {e}"
        )));
    }
    let status = child
        .wait()
        .map_err(|e| Error::Postgres(format!("waiting for {tool}: {e}")))?;
    Ok((status, stderr.join().unwrap_or_default()))
}

/// Streams the dump out of the repository into `pg_restore`; returns the bytes streamed and its stderr.
fn run_pg_restore(
    repo: &Repository,
    snap: &Snapshot,
    conn: &PgConn,
    stream: &str,
    db: &str,
    owner_acl: bool,
) -> Result<(u64, String)> {
    // A custom-format dump, stopping at the first error (plain SQL goes through plain_sql::run_psql).
    let tool = "pg_restore";
    let mut cmd = Command::new(tool);
    if !owner_acl {
        cmd.args(["--no-owner", "--no-acl"]);
    }
    cmd.args(["--exit-on-error", "--no-password"]);
    // The database as a conninfo string: a bare name containing `=` would be taken for one.
    let mut child = cmd
        .arg("--dbname")
        .arg(format!("dbname={}", conninfo_value(db)))
        .envs(conn.child_env(db))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(tool, e))?;
    let (stdin, stderr) = match (child.stdin.take(), child.stderr.take()) {
        (Some(i), Some(e)) => (i, e),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Postgres("pg_restore: no pipes".into()));
        }
    };
    let stderr = capture_stderr(stderr, STDERR_LIMIT);
    let mut guard = ChildGuard(Some(child));
    let mut input = BufWriter::with_capacity(1 << 20, stdin);
    let written = crate::restore::dump(repo, snap, stream, &mut input);
    // Closing stdin is pg_restore's end of input.
    let flushed = input.into_inner().map(drop);
    let (status, text) = reap_fed_child(&mut guard, &written, "pg_restore", stderr)?;
    if !status.success() {
        return Err(Error::Postgres(format!(
            "{tool} into database {db:?} failed ({}): {}",
            describe_status(&status),
            one_line(&text)
        )));
    }
    // pg_restore succeeded although it did not get all of the dump: that must not pass silently.
    let bytes = written
        .map_err(|e| Error::Postgres(format!("streaming the dump into pg_restore failed: {e}")))?;
    flushed.map_err(|e| {
        Error::Postgres(format!(
            "streaming the dump into pg_restore failed: {}",
            e.error()
        ))
    })?;
    Ok((bytes, text))
}
