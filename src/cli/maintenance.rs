//! Repository upkeep: `check`, `forget` (by policy or by id, with `--prune`), `prune`, `repair index`,
//! `repair snapshots` and `unlock`.

use cairn::check::{self, ReadData};
use cairn::progress::Progress;
use cairn::{Error, Repository, Result};
use serde_json::json;

use super::args::{CheckArgs, ForgetArgs};
use super::commands::{human_bytes, Ctx};
use super::{EXIT_ERROR, EXIT_OK};

pub fn check_cmd(ctx: &Ctx, a: CheckArgs) -> Result<i32> {
    let (repo, _lock) = ctx.open_reading("check")?;
    let read_data = match (a.read_data, a.read_data_subset) {
        (true, _) => ReadData::All,
        (false, Some(s)) => s.parse()?,
        (false, None) => ReadData::None,
    };
    let progress = Progress::new("check", None, ctx.quiet || ctx.json);
    let report = check::check(&repo, read_data, &progress)?;
    if ctx.json {
        let mut v = serde_json::to_value(&report).map_err(|e| Error::Invalid(e.to_string()))?;
        v["clean"] = json!(report.is_clean());
        ctx.print_json(&v)?;
    } else if !(ctx.quiet && report.is_clean()) {
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        for e in &report.errors {
            outln!("error: {e}");
        }
        for e in &report.read_errors {
            outln!("error (not damage): {e}");
        }
        for d in &report.damaged {
            outln!(
                "damaged blob {} in pack {}: {}",
                &d.blob[..16],
                &d.pack[..16],
                d.error
            );
            for a in &d.affected {
                outln!("  needed by {a}");
            }
        }
        outln!(
            "checked {} packs, {} snapshots, {} trees; read {} packs ({} blobs): {}",
            report.packs,
            report.snapshots,
            report.trees,
            report.packs_read,
            report.blobs_read,
            if report.is_clean() {
                "no errors"
            } else if !report.damaged.is_empty() {
                "DAMAGE FOUND"
            } else if !report.errors.is_empty() {
                "ERRORS FOUND"
            } else {
                "READ ERRORS (not damage)"
            }
        );
        for h in &report.hints {
            outln!("hint: {h}");
        }
    }
    Ok(if report.is_clean() {
        EXIT_OK
    } else {
        EXIT_ERROR
    })
}

pub fn forget(ctx: &Ctx, a: ForgetArgs) -> Result<i32> {
    if !a.snapshots.is_empty() {
        return forget_named(ctx, a);
    }
    let policy = a.keep.retention().policy(a.keep_tags)?;
    let repo = ctx.open()?;
    let opts = cairn::gc::ForgetOptions {
        policy,
        instance: a.instance,
        tags: a.tags,
        dry_run: a.dry_run,
        include_safety: a.include_safety,
        allow_remove_all: a.unsafe_allow_remove_all,
    };
    let groups = cairn::gc::forget(&repo, &opts)?;
    let removed: usize = groups
        .iter()
        .map(|g| g.decisions.iter().filter(|d| !d.keep).count())
        .sum();
    // One document with --json: the prune report goes inside it (text shows the decisions before pruning).
    let prune_now = a.prune && !a.dry_run;
    if ctx.json {
        let pruned = prune_now
            .then(|| prune_report(ctx, 5.0, false))
            .transpose()?;
        ctx.print_json(
            &json!({"dry_run": a.dry_run, "removed": removed, "groups": groups, "prune": pruned}),
        )?;
        return Ok(EXIT_OK);
    }
    if !ctx.quiet {
        for g in &groups {
            outln!("group {}", g.group);
            for d in &g.decisions {
                let verdict = if d.keep {
                    "keep  "
                } else if a.dry_run {
                    "would remove"
                } else {
                    "remove"
                };
                outln!("  {verdict} {} {}", &d.id[..12], d.reasons.join(","));
            }
        }
        outln!(
            "{removed} snapshots {}",
            if a.dry_run {
                "would be removed"
            } else {
                "removed"
            }
        );
    }
    if prune_now {
        print_prune(ctx, &prune_report(ctx, 5.0, false)?, false)?;
    }
    Ok(EXIT_OK)
}

/// The snapshot `forget ID` removes: as every command resolves it, else, when that fails on a missing or
/// damaged snapshot object, the object or row named (the damage is named on stderr: what only that
/// snapshot referenced is freed by the next prune).
fn resolve_forgettable(repo: &Repository, spec: &str, instance: Option<&str>) -> Result<cairn::Id> {
    let unresolved = match repo.resolve_snapshot(spec, instance) {
        Ok((id, _)) => return Ok(id),
        Err(e) if e.is_damage() => e,
        Err(e) => return Err(e),
    };
    match cairn::gc::forgettable_snapshot(repo, spec)? {
        None => Err(unresolved),
        Some((id, None)) => Ok(id),
        Some((id, Some(damage))) => {
            eprintln!(
                "warning: snapshot {id} cannot be read ({damage}); forgetting the damaged snapshot"
            );
            Ok(id)
        }
    }
}

/// `forget ID...`: removes exactly the named snapshots (safety snapshots too).
fn forget_named(ctx: &Ctx, a: ForgetArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let mut ids = Vec::new();
    for spec in &a.snapshots {
        if spec == "latest" {
            return Err(Error::Usage(
                "forget takes snapshot ids, not `latest`".into(),
            ));
        }
        ids.push(resolve_forgettable(&repo, spec, a.instance.as_deref())?);
    }
    cairn::gc::forget_ids(&repo, &ids, a.dry_run)?;
    let pruned = if a.prune && !a.dry_run {
        Some(prune_report(ctx, 5.0, false)?)
    } else {
        None
    };
    let hex: Vec<String> = ids.iter().map(|i| i.to_hex()).collect();
    if ctx.json {
        ctx.print_json(
            &json!({"dry_run": a.dry_run, "removed": hex.len(), "snapshots": hex, "prune": pruned}),
        )?;
    } else if !ctx.quiet {
        let verb = if a.dry_run { "would remove" } else { "remove" };
        for id in &hex {
            outln!("  {verb} {}", &id[..12]);
        }
        outln!(
            "{} snapshots {}",
            hex.len(),
            if a.dry_run {
                "would be removed"
            } else {
                "removed"
            }
        );
    }
    if let Some(r) = &pruned {
        print_prune(ctx, r, false)?;
    }
    Ok(EXIT_OK)
}

pub fn prune(ctx: &Ctx, max_unused: f64, dry_run: bool) -> Result<()> {
    let r = prune_report(ctx, max_unused, dry_run)?;
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&r).map_err(|e| Error::Invalid(e.to_string()))?)
    } else {
        print_prune(ctx, &r, dry_run)?;
        Ok(())
    }
}

fn prune_report(ctx: &Ctx, max_unused: f64, dry_run: bool) -> Result<cairn::gc::PruneReport> {
    if !(0.0..=100.0).contains(&max_unused) {
        return Err(Error::Invalid(
            "--max-unused must be a percentage between 0 and 100".into(),
        ));
    }
    let repo = ctx.open()?;
    cairn::gc::prune(
        &repo,
        cairn::gc::PruneOptions {
            max_unused_percent: max_unused,
            dry_run,
        },
    )
}

/// The prune report for people (nothing with `--quiet` or `--json`).
fn print_prune(ctx: &Ctx, r: &cairn::gc::PruneReport, dry_run: bool) -> Result<()> {
    if ctx.json || ctx.quiet {
        return Ok(());
    }
    {
        if r.snapshots_adopted > 0 {
            outln!(
                "{} {} snapshot files that had no index row (left by an interrupted backup); their data is kept",
                if dry_run { "would index" } else { "indexed" },
                r.snapshots_adopted
            );
        }
        if r.wal_files_removed > 0 {
            outln!(
                "{} {} archived WAL files older than every kept base backup",
                if dry_run { "would remove" } else { "removed" },
                r.wal_files_removed
            );
        }
        outln!(
            "{}{} packs deleted, {} repacked ({} copied), {} stray packs removed: {} freed, {} -> {}",
            if dry_run { "dry run: " } else { "" },
            r.packs_deleted,
            r.packs_repacked,
            human_bytes(r.bytes_repacked),
            r.unindexed_removed,
            human_bytes(r.bytes_freed),
            human_bytes(r.bytes_before),
            human_bytes(r.bytes_after)
        );
    }
    Ok(())
}

pub fn repair_snapshots(ctx: &Ctx, forget_damaged: bool) -> Result<i32> {
    let repo = ctx.open()?;
    repo.require_writable()?;
    let repaired = cairn::repair::repair_snapshots(&repo, forget_damaged)?;
    if ctx.json {
        ctx.print_json(&json!(repaired))?;
    } else if !ctx.quiet {
        for r in &repaired {
            match &r.new_id {
                Some(new) => outln!(
                    "snapshot {} rewritten as {} without: {}",
                    &r.old_id[..8],
                    &new[..8],
                    r.dropped.join(", ")
                ),
                None => outln!(
                    "snapshot {} forgotten (damaged: {})",
                    &r.old_id[..8],
                    r.dropped.join(", ")
                ),
            }
        }
        outln!("{} snapshots repaired", repaired.len());
        if !repaired.is_empty() {
            outln!("hint: {}", cairn::restore::HEAL_HINT);
        }
    }
    Ok(EXIT_OK)
}

pub fn repair_index(ctx: &Ctx) -> Result<i32> {
    let (path, _) = ctx.repo_url()?;
    let report = cairn::repair::repair_index(&path)?;
    // Instance configs live in the index too; their durable copies are files.
    cairn::instance::reload_from_files(&Repository::open(&path)?)?;
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&report).map_err(|e| Error::Invalid(e.to_string()))?)?;
    } else {
        for s in &report.skipped {
            eprintln!("cairn: skipped {s}");
        }
        for w in &report.warnings {
            eprintln!("cairn: warning: {w}");
        }
        if !ctx.quiet {
            outln!(
                "index rebuilt: {} packs, {} blobs, {} snapshots",
                report.packs,
                report.blobs,
                report.snapshots
            );
        }
    }
    Ok(if report.skipped.is_empty() {
        EXIT_OK
    } else {
        EXIT_ERROR
    })
}

pub fn unlock(ctx: &Ctx, all: bool) -> Result<i32> {
    let (path, _) = ctx.repo_url()?;
    let (backend, _) = cairn::repo::connect(&path)?;
    let removed = cairn::lock::unlock(backend.as_ref(), all)?;
    if ctx.json {
        ctx.print_json(&json!({ "removed": removed }))?;
    } else if !ctx.quiet {
        for r in &removed {
            outln!("removed {r}");
        }
        outln!("{} locks removed", removed.len());
    }
    Ok(EXIT_OK)
}
