//! `diff` and `find`: comparing snapshots and searching them, printed as text or `--json`.

use cairn::diff::{self, Changed, DiffReport, Entry};
use cairn::{Error, Result};
use serde_json::json;

use super::commands::{human_bytes, Ctx};
use super::EXIT_OK;

pub fn diff(ctx: &Ctx, spec1: &str, spec2: &str, instance: Option<&str>) -> Result<i32> {
    let (repo, _lock) = ctx.open_reading("diff")?;
    let (id1, a) = repo.resolve_snapshot(spec1, instance)?;
    let (id2, b) = repo.resolve_snapshot(spec2, instance)?;
    let report = diff::diff(&repo, &a, &b)?;
    if ctx.json {
        let mut v = serde_json::to_value(&report).map_err(|e| Error::Invalid(e.to_string()))?;
        v["snapshot1"] = json!(id1.to_hex());
        v["snapshot2"] = json!(id2.to_hex());
        ctx.print_json(&v)?;
        return Ok(EXIT_OK);
    }
    if !ctx.quiet {
        outln!("comparing snapshot {} with {}", id1.short(), id2.short());
    }
    print_report(&report)?;
    Ok(EXIT_OK)
}

fn print_report(r: &DiffReport) -> Result<()> {
    let entry = |sign: char, e: &Entry, stream: bool| {
        let path = if stream {
            format!("[{}]", e.path)
        } else {
            e.path.clone()
        };
        let slash = if e.kind == "dir" { "/" } else { "" };
        super::out::line(format_args!("{sign}    {path}{slash}"))
    };
    for e in &r.removed {
        entry('-', e, false)?;
    }
    for e in &r.added {
        entry('+', e, false)?;
    }
    for c in &r.changed {
        print_change(c, false)?;
    }
    for e in &r.streams_removed {
        entry('-', e, true)?;
    }
    for e in &r.streams_added {
        entry('+', e, true)?;
    }
    for c in &r.streams_changed {
        print_change(c, true)?;
    }
    if let Some(db) = &r.database {
        let name = db
            .database_after
            .as_ref()
            .or(db.database_before.as_ref())
            .cloned()
            .unwrap_or_default();
        outln!(
            "database {name}: {} of {} tables changed row count",
            db.tables.len(),
            db.tables_compared
        );
        for t in &db.tables {
            let n = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
            outln!(
                "  {}.{}: {} -> {} ({:+})",
                t.schema,
                t.table,
                n(t.rows_before),
                n(t.rows_after),
                t.delta
            );
        }
    }
    let s = &r.stats;
    outln!(
        "files: {} added, {} removed, {} changed; +{} -{}; {} identical subtrees skipped",
        s.added,
        s.removed,
        s.changed,
        human_bytes(s.bytes_added),
        human_bytes(s.bytes_removed),
        s.trees_skipped
    );
    Ok(())
}

/// `M` content changed, `U` metadata only (as restic prints them).
fn print_change(c: &Changed, stream: bool) -> Result<()> {
    let path = if stream {
        format!("[{}]", c.path)
    } else {
        c.path.clone()
    };
    let mut what = Vec::new();
    if c.content {
        what.push(format!(
            "{} -> {}",
            human_bytes(c.size_before),
            human_bytes(c.size_after)
        ));
    }
    for (field, [before, after]) in &c.metadata {
        what.push(format!("{field} {before} -> {after}"));
    }
    let sign = if c.content { 'M' } else { 'U' };
    outln!("{sign}    {path}  ({})", what.join("; "));
    Ok(())
}

pub fn find(ctx: &Ctx, pattern: &str, instance: Option<&str>) -> Result<i32> {
    let (repo, _lock) = ctx.open_reading("find")?;
    let report = cairn::find::find(&repo, pattern, instance)?;
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&report).map_err(|e| Error::Invalid(e.to_string()))?)?;
        return Ok(EXIT_OK);
    }
    for s in &report.snapshots {
        outln!(
            "snapshot {} {} {}",
            &s.snapshot_id[..8],
            s.time,
            s.instance.as_deref().unwrap_or("-")
        );
        for f in &s.matches {
            outln!("  {:>10}  {}  {}", human_bytes(f.size), f.mtime, f.path);
        }
    }
    if !ctx.quiet {
        outln!(
            "{} of {} snapshots hold a match",
            report.snapshots.len(),
            report.snapshots_searched
        );
    }
    Ok(EXIT_OK)
}
