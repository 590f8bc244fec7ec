//! Backing up a database: `pg_dump --format=custom` streamed into the repository from inside a transaction
//! that exports its snapshot, so the facts recorded (server, LSN, row counts) describe exactly what was dumped.

use super::*;

/// The stream name of a database's dump.
pub fn stream_name(db: &str) -> String {
    format!("{db}.dump")
}

/// Starts dumping `db`: opens the snapshot-exporting transaction, records the facts in it, and spawns
/// `pg_dump --format=custom --compress=0 --snapshot=…` whose stdout is the returned stream. The stream's
/// `finish` fails (cancelling the snapshot) unless pg_dump exited 0 and the transaction is still alive; the
/// hook puts the facts, with pg_dump's stderr, into the snapshot metadata under [`METADATA_KEY`].
///
/// Dropping the stream before it finished kills pg_dump and closes the transaction.
pub fn dump_source(conn: &PgConn, db: &str) -> Result<(StreamSource, MetadataHook)> {
    check_db_name(db)?;
    let name = stream_name(db);
    if !valid_name(name.as_bytes()) {
        return Err(Error::Invalid(format!(
            "database {db:?}: its name cannot name a stream (no `/` allowed)"
        )));
    }
    let pg_dump_version = pg_dump_version()?;
    let s = Session::open(conn, db)?;
    // REPEATABLE READ: every query below and pg_dump see one snapshot. READ ONLY: cairn never writes.
    s.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
    // pg_dump turns row security off (and fails if a policy would hide rows); count under the same rule.
    s.execute("SET LOCAL row_security = off")?;
    let exported: String = col(&s.query_one("SELECT pg_export_snapshot()", &[])?, 0)?;
    let row = s.query_one(
        "SELECT current_setting('server_version'),
                current_setting('server_version_num')::int,
                pg_database_size(current_database()),
                pg_encoding_to_char(d.encoding)::text,
                d.datcollate::text,
                d.datctype::text,
                pg_is_in_recovery(),
                (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                      ELSE pg_current_wal_lsn() END)::text,
                txid_current_if_assigned(),
                txid_current_snapshot()::text
         FROM pg_database d WHERE d.datname = current_database()",
        &[],
    )?;
    let facts = PgFacts {
        database: db.to_string(),
        stream: name.clone(),
        server: conn.server(),
        user: conn.user().to_string(),
        server_version: col(&row, 0)?,
        server_version_num: col(&row, 1)?,
        size_bytes: col(&row, 2)?,
        encoding: col(&row, 3)?,
        lc_collate: col(&row, 4)?,
        lc_ctype: col(&row, 5)?,
        in_recovery: col(&row, 6)?,
        wal_lsn: col(&row, 7)?,
        txid: col(&row, 8)?,
        txid_snapshot: col(&row, 9)?,
        exported_snapshot: exported.clone(),
        pg_dump_version,
        tables: count_rows(&s)?,
        pg_dump_stderr: String::new(),
    };

    let mut child = Command::new("pg_dump")
        .args(["--format=custom", "--compress=0", "--no-password"])
        .arg(format!("--snapshot={exported}"))
        .envs(conn.child_env(db))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error("pg_dump", e))?;
    let (stdout, stderr) = match (child.stdout.take(), child.stderr.take()) {
        (Some(o), Some(e)) => (o, e),
        _ => return Err(Error::Postgres("pg_dump: no output pipes".into())),
    };
    let stderr = capture_stderr(stderr, STDERR_LIMIT);
    let mut guard = ChildGuard(Some(child));
    let shared = Arc::new(Mutex::new(facts));
    let for_finish = Arc::clone(&shared);
    let finish = move || -> Result<()> {
        let mut child = guard
            .0
            .take()
            .ok_or_else(|| Error::Postgres("pg_dump already reaped".into()))?;
        let status = child
            .wait()
            .map_err(|e| Error::Postgres(format!("waiting for pg_dump: {e}")))?;
        let text = stderr.join().unwrap_or_default();
        for_finish
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pg_dump_stderr = text.clone();
        if !status.success() {
            return Err(Error::Postgres(format!(
                "pg_dump of database {:?} failed ({}): {}; no snapshot written",
                s.db,
                describe_status(&status),
                one_line(&text)
            )));
        }
        // Still alive now means alive throughout: the exported snapshot was held for the whole dump.
        s.execute("COMMIT").map_err(|e| {
            Error::Postgres(format!(
                "the transaction holding the dump's snapshot was lost ({e}); no snapshot written"
            ))
        })
    };
    let hook: MetadataHook = Box::new(move |meta: &mut Option<serde_json::Value>| {
        let facts = shared.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let value = serde_json::to_value(&facts).unwrap_or(serde_json::Value::Null);
        crate::backup::set_metadata(meta, METADATA_KEY, value);
    });
    Ok((
        StreamSource {
            name,
            reader: Box::new(stdout),
            finish: Box::new(finish),
        },
        hook,
    ))
}

/// Takes a snapshot holding only a dump of `db` (e.g. the safety snapshot before `--replace`).
pub fn backup_database(
    repo: &Repository,
    conn: &PgConn,
    db: &str,
    instance: Option<String>,
    tags: Vec<String>,
) -> Result<backup::BackupResult> {
    let (stream, hook) = dump_source(conn, db)?;
    backup::backup(
        repo,
        BackupOptions {
            streams: vec![stream],
            instance,
            tags,
            finalize_metadata: vec![hook],
            progress: Progress::hidden(),
            ..BackupOptions::default()
        },
    )
}
