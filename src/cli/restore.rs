//! `restore` (files to a target directory, a database with `--pg-target`) and `dump` (one file or stream
//! to stdout).

use std::path::Path;

use cairn::latest;
use cairn::progress::Progress;
use cairn::restore::{self, RestoreOptions};
use cairn::{Error, Result};
use serde_json::json;

use super::args::RestoreArgs;
use super::commands::{human_bytes, Ctx};
use super::pg;
use super::EXIT_OK;

pub fn restore_cmd(ctx: &Ctx, a: RestoreArgs) -> Result<i32> {
    // A refused connection string is a usage problem: say so before looking for a snapshot.
    if a.pg_target.is_some() {
        cairn::postgres::PgConn::new(a.pg_conn.as_deref())?;
    }
    let (repo, _lock) = ctx.open_reading("restore")?;
    let (id, snap) = latest::for_restore(
        &repo,
        &a.snapshot,
        a.instance.as_deref(),
        a.target.is_some(),
        &a.paths,
        a.pg_target.is_some(),
    )?;
    let database = match &a.pg_target {
        Some(_) => Some(pg::restore(ctx, &repo, &snap, &a)?),
        None => None,
    };
    let Some(target) = a.target else {
        if let Some(report) = database {
            pg::print_report(ctx, &id, &report)?;
        }
        return Ok(EXIT_OK);
    };
    let total = snap.summary.bytes_total;
    let summary = restore::restore(
        &repo,
        &snap,
        &RestoreOptions {
            target: target.clone(),
            include: a.paths,
            overwrite: a.overwrite,
            sparse: a.sparse,
            progress: Progress::new("restore", Some(total), ctx.quiet || ctx.json),
        },
    )?;
    for w in &summary.warnings {
        eprintln!("cairn: warning: {w}");
    }
    if ctx.json {
        let mut v = serde_json::to_value(&summary).map_err(|e| Error::Invalid(e.to_string()))?;
        v["snapshot_id"] = json!(id.to_hex());
        if let Some(report) = &database {
            v["database"] =
                serde_json::to_value(report).map_err(|e| Error::Invalid(e.to_string()))?;
        }
        ctx.print_json(&v)?;
    } else if !ctx.quiet {
        if let Some(report) = &database {
            pg::print_report(ctx, &id, report)?;
        }
        outln!(
            "restored snapshot {} to {}: {} files, {} dirs, {} links, {}",
            id.short(),
            target.display(),
            summary.files,
            summary.dirs,
            summary.links,
            human_bytes(summary.bytes)
        );
    }
    Ok(EXIT_OK)
}

pub fn dump(ctx: &Ctx, spec: &str, name: &Path, instance: Option<&str>) -> Result<i32> {
    let (repo, _lock) = ctx.open_reading("dump")?;
    let (_, snap) = latest::for_name(&repo, spec, instance, name)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, super::out::raw()?);
    restore::dump(&repo, &snap, name, &mut out)?;
    Ok(EXIT_OK)
}
