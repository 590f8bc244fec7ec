//! `backup --pg` and `restore --pg-target`: the command-line side of [`cairn::postgres`].

use cairn::backup::{MetadataHook, StreamSource};
use cairn::postgres::{self, PgConn, PgRestoreOptions, PgRestoreReport};
use cairn::snapshot::Snapshot;
use cairn::{Error, Id, Repository, Result};
use serde_json::json;

use super::args::{BackupArgs, RestoreArgs};
use super::commands::{human_bytes, Ctx};

/// The `--pg` database's dump stream and its metadata hook, if `--pg` was given. Connects, records the
/// facts and starts pg_dump: call it once the repository is known to be usable.
pub fn dump_source(a: &BackupArgs) -> Result<Option<(StreamSource, MetadataHook)>> {
    let Some(db) = &a.pg else {
        return Ok(None);
    };
    let conn = PgConn::new(a.pg_conn.as_deref())?;
    postgres::dump_source(&conn, db).map(Some)
}

/// Restores the snapshot's database into `--pg-target`. The safety snapshot's id (with `--replace`) is
/// printed the moment it exists, so it is known even if the restore then fails.
pub fn restore(
    ctx: &Ctx,
    repo: &Repository,
    snap: &Snapshot,
    a: &RestoreArgs,
) -> Result<PgRestoreReport> {
    let database = a
        .pg_target
        .clone()
        .ok_or_else(|| Error::Invalid("--pg-target is missing".into()))?;
    let conn = PgConn::new(a.pg_conn.as_deref())?;
    let opts = PgRestoreOptions {
        database: database.clone(),
        replace: a.replace,
        owner_acl: a.owner_acl,
        instance: snap.instance.clone(),
    };
    let (json, quiet) = (ctx.json, ctx.quiet);
    // Printed the moment it exists; with --quiet on stderr (the id matters if the restore then fails).
    let mut on_safety = |safety: &Id| {
        let line = format!(
            "safety snapshot {safety} holds database {database:?} as it was before this restore"
        );
        if quiet {
            eprintln!("cairn: {line}");
        } else if !json && super::out::line(format_args!("{line}")).is_err() {
            // Stdout failing must not stop the restore; the id must still reach the user.
            eprintln!("cairn: {line}");
        }
    };
    postgres::restore_database(repo, snap, &conn, &opts, &mut on_safety)
}

/// Prints what a database restore did (text, or JSON when only a database was restored).
pub fn print_report(ctx: &Ctx, id: &Id, r: &PgRestoreReport) -> Result<()> {
    for line in r.pg_restore_stderr.lines().filter(|l| !l.trim().is_empty()) {
        eprintln!("pg_restore: {}", line.trim_start_matches("pg_restore: "));
    }
    if ctx.json {
        let mut v = serde_json::to_value(r).map_err(|e| Error::Invalid(e.to_string()))?;
        v["snapshot_id"] = json!(id.to_hex());
        return ctx.print_json(&v);
    }
    if ctx.quiet {
        return Ok(());
    }
    let verified = if r.verified {
        format!(
            "row counts of {} tables ({} rows) verified",
            r.tables_verified, r.rows_verified
        )
    } else {
        "not verified: the snapshot recorded no row counts (not taken with --pg)".to_string()
    };
    outln!(
        "restored database {:?} from snapshot {} ({} {}): {verified}",
        r.database,
        id.short(),
        r.stream,
        human_bytes(r.bytes)
    );
    if let Some(role) = &r.owner_role {
        outln!(
            "database {:?} is owned by {role:?}, the unprivileged role its untrusted SQL ran as (it can no longer log in)",
            r.database
        );
    }
    Ok(())
}
