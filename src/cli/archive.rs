//! `import-archive` (an existing backup archive stored as a snapshot with its original time) and `export`
//! (a snapshot written out as an archive, to stdout or, complete or not at all, to `--output`).

use std::io::Write;

use cairn::latest;
use cairn::{Error, Repository, Result};
use serde_json::json;

use super::backup::open_for_backup;
use super::commands::{snapshot_time, Ctx};
use super::{EXIT_OK, EXIT_PARTIAL};

pub fn import_archive(
    ctx: &Ctx,
    instance: Option<String>,
    time: &str,
    force_time: bool,
    file: &std::path::Path,
) -> Result<i32> {
    let time = snapshot_time(Some(time), force_time)?
        .ok_or_else(|| Error::Invalid("--time is missing".into()))?;
    let repo = open_for_backup(ctx)?;
    let report = cairn::archive::import_archive(&repo, file, instance, time)?;
    let r = &report.backup;
    for s in &report.skipped {
        eprintln!("cairn: warning: {s}");
    }
    if ctx.json {
        ctx.print_json(&json!({
            "snapshot_id": r.snapshot_id.to_hex(),
            "summary": r.snapshot.summary,
            "skipped": report.skipped,
            "partial": r.snapshot.partial || !report.skipped.is_empty(),
        }))?;
    } else if !ctx.quiet {
        outln!(
            "imported {} as snapshot {}",
            file.display(),
            r.snapshot_id.short()
        );
    }
    if !report.skipped.is_empty() || r.snapshot.partial {
        eprintln!(
            "cairn: snapshot {} is partial: it does not hold everything in {} (see above)",
            r.snapshot_id.short(),
            file.display()
        );
        return Ok(EXIT_PARTIAL);
    }
    Ok(EXIT_OK)
}

pub fn export(
    ctx: &Ctx,
    spec: &str,
    opts: &cairn::export::ExportOptions,
    instance: Option<&str>,
    output: Option<&std::path::Path>,
) -> Result<i32> {
    let (repo, _lock) = ctx.open_reading("export")?;
    let (_, snap) = latest::for_export(&repo, spec, instance, opts.format)?;
    let report = match output {
        None => {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, super::out::Stdout);
            let report = cairn::export::export(&repo, &snap, opts, &mut out)?;
            out.flush().map_err(|e| Error::io("stdout", e))?;
            report
        }
        Some(path) => export_to_file(&repo, &snap, opts, path)?,
    };
    if !report.skipped.is_empty() {
        for s in &report.skipped {
            eprintln!("cairn: warning: {s}");
        }
        eprintln!(
            "cairn: export is partial: {} entries left out (see above)",
            report.skipped.len()
        );
        return Ok(EXIT_PARTIAL);
    }
    Ok(EXIT_OK)
}

/// Exports into a temporary file beside `path`, renamed to `path` once complete: a failed export leaves
/// no truncated archive that looks like a good one.
fn export_to_file(
    repo: &Repository,
    snap: &cairn::snapshot::Snapshot,
    opts: &cairn::export::ExportOptions,
    path: &std::path::Path,
) -> Result<cairn::export::ExportReport> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".cairn-export-")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file());
    let report = cairn::export::export(repo, snap, opts, &mut out)?;
    out.flush().map_err(|e| Error::io(path, e))?;
    drop(out);
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(report)
}
