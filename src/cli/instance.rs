//! `instance …`, `run-due`, `log`, `stats`, `health` and `schedule`: the operator's view of instances.
//!
//! Times meant for people are printed to the second ([`human_time`]). `instance restore --in-place` writes
//! each of the instance's paths into what that path resolves to now, after checking that this is what the
//! snapshot backed up (see [`plan_in_place`]); any mismatch fails before anything is changed.

use std::path::Path;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::json;

use cairn::backup::{MetadataHook, StreamSource};
use cairn::instance::{self, InstanceConfig, PriorityChange};
use cairn::progress::Progress;
use cairn::runner::{self, DbStream};
use cairn::schedule::{Priority, Retention};
use cairn::{Error, Repository, Result};

use super::args::{InstanceAction, InstanceSettings, RestoreTo, ScheduleKind};
use super::commands::{human_bytes, parse_time, snapshot_time, Ctx};
use super::{EXIT_ERROR, EXIT_OK, EXIT_PARTIAL};

/// The database half of an instance backup (see [`cairn::instance_restore::db_stream`]).
fn db_stream(
) -> impl Fn(&InstanceConfig) -> Result<Option<(StreamSource, MetadataHook)>> + Send + Sync {
    cairn::instance_restore::db_stream
}

/// Applies the given settings over `cfg`. A new priority first moves schedule and retention to its presets
/// where they were the old priority's presets, keeping custom ones ([`InstanceConfig::set_priority`]); what
/// it did is returned for the report, less what the same command sets explicitly.
fn apply(cfg: &mut InstanceConfig, s: InstanceSettings) -> Result<Option<PriorityChange>> {
    let mut change = match &s.priority {
        Some(p) => Some(cfg.set_priority(p.parse::<Priority>()?)),
        None => None,
    };
    let mut given_now = |what: &str| {
        if let Some(c) = change.as_mut() {
            c.changed.retain(|w| *w != what);
            c.kept.retain(|w| *w != what);
        }
    };
    // Any --keep-* replaces the whole policy: mixing given rules with preset ones would surprise.
    let given = s.keep.retention();
    if given != Retention::default() {
        cfg.retention = given;
        given_now("retention");
    }
    if s.schedule.is_some() {
        cfg.schedule = s.schedule;
        given_now("schedule");
    }
    if s.pg.is_some() {
        cfg.pg = s.pg;
    }
    if s.pg_conn.is_some() {
        cfg.pg_conn = s.pg_conn;
    }
    if !s.paths.is_empty() {
        cfg.paths = s.paths;
    }
    let excludes = s.excludes.options();
    if s.clear_excludes || !excludes.is_empty() {
        cfg.excludes = excludes;
    }
    if s.wal || s.no_wal {
        cfg.wal = s.wal;
    }
    for (field, value) in [
        (&mut cfg.pre_hook, s.pre_hook),
        (&mut cfg.post_hook, s.post_hook),
        (&mut cfg.notify, s.notify),
        (&mut cfg.ping_url, s.ping_url),
    ] {
        if value.is_some() {
            *field = value;
        }
    }
    if cfg.ping_url.as_deref() == Some("") {
        cfg.ping_url = None;
    }
    Ok(change)
}

pub fn instance(ctx: &Ctx, action: InstanceAction) -> Result<i32> {
    let repo = ctx.open()?;
    match action {
        InstanceAction::Add { name, settings } => {
            instance::validate_name(&name)?;
            if instance::load(&repo, &name).is_ok() {
                return Err(Error::Invalid(format!(
                    "instance {name} exists (use `cairn instance set`)"
                )));
            }
            let mut cfg = InstanceConfig::new(&name, Priority::Medium);
            apply(&mut cfg, settings)?;
            instance::save(&repo, &cfg)?;
            report_change(ctx, &cfg, "added", None)?;
        }
        InstanceAction::Set { name, settings } => {
            // `load_for_update`: a stored connection string that is refused can be replaced here.
            let mut cfg = instance::load_for_update(&repo, &name)?;
            let change = apply(&mut cfg, settings)?;
            instance::save(&repo, &cfg)?;
            report_change(ctx, &cfg, "updated", change.as_ref())?;
        }
        InstanceAction::Pause { name } => {
            let cfg = set_paused(&repo, &name, true)?;
            report_change(ctx, &cfg, "paused", None)?;
        }
        InstanceAction::Resume { name } => {
            let cfg = set_paused(&repo, &name, false)?;
            report_change(ctx, &cfg, "resumed", None)?;
        }
        InstanceAction::Remove { name, purge } => return remove(ctx, &repo, &name, purge),
        InstanceAction::WalSetup {
            name,
            apply,
            archive_timeout,
        } => return super::wal::wal_setup(ctx, &repo, &name, apply, archive_timeout),
        InstanceAction::List => return list(ctx, &repo),
        InstanceAction::BaseBackup { name } => return super::wal::base_backup(ctx, &repo, &name),
        InstanceAction::Show { name } => {
            let cfg = instance::load(&repo, &name)?;
            if ctx.json {
                ctx.print_json(&config_json(&cfg))?;
            } else {
                print_config(&cfg)?;
            }
        }
        InstanceAction::Backup {
            name,
            time,
            force_time,
        } => {
            let time = snapshot_time(time.as_deref(), force_time)?;
            cairn::interrupt::install()?;
            let cfg = instance::load(&repo, &name)?;
            // Not beside a scheduled run of the same instance (or another `instance backup`).
            let _run = cairn::lock::acquire_instance(repo.backend(), &name, "instance backup")?;
            let db = db_stream();
            let r = runner::backup_instance(
                &repo,
                &cfg,
                time,
                &db,
                Progress::new("backup", None, ctx.quiet || ctx.json),
            )?;
            if ctx.json {
                ctx.print_json(&json!({"snapshot_id": r.snapshot_id.to_hex(), "partial": r.snapshot.partial, "summary": r.snapshot.summary}))?;
            } else if !ctx.quiet {
                outln!("instance {name}: snapshot {} saved", r.snapshot_id.short());
            }
            return Ok(if r.snapshot.partial {
                EXIT_PARTIAL
            } else {
                EXIT_OK
            });
        }
        InstanceAction::Restore {
            name,
            snapshot,
            at,
            to,
            pg_datadir,
            start,
            port,
            pg_bin,
            os_user,
            recovery_timeout,
        } => {
            if let Some(datadir) = pg_datadir {
                let req = super::wal::PitrArgs {
                    at: at.unwrap_or_default(),
                    datadir,
                    files_to: to.target,
                    overwrite: to.overwrite,
                    start,
                    port,
                    pg_bin,
                    os_user,
                    timeout: std::time::Duration::from_secs(recovery_timeout),
                };
                return super::wal::restore_pitr(ctx, &repo, &name, req);
            }
            return restore_instance(ctx, &repo, &name, snapshot, at, to);
        }
    }
    Ok(EXIT_OK)
}

fn set_paused(repo: &Repository, name: &str, paused: bool) -> Result<InstanceConfig> {
    let mut cfg = instance::load_for_update(repo, name)?;
    cfg.paused = paused;
    instance::save(repo, &cfg)?;
    Ok(cfg)
}

/// An instance's configuration as JSON (without secrets: `printable`), with its name at the top.
fn config_json(cfg: &InstanceConfig) -> serde_json::Value {
    let mut v = serde_json::to_value(cfg.printable()).unwrap_or_default();
    v["instance"] = json!(cfg.name);
    v
}

/// What `instance add/set/pause/resume` did: the new configuration with `--json`, one line otherwise; after a
/// new priority, also which of schedule and retention followed its presets and which were kept as custom
/// (`priority_change` in JSON).
fn report_change(
    ctx: &Ctx,
    cfg: &InstanceConfig,
    verb: &str,
    change: Option<&PriorityChange>,
) -> Result<()> {
    if ctx.json {
        let mut v = config_json(cfg);
        v["action"] = json!(verb);
        if let Some(c) = change {
            v["priority_change"] = json!(c);
        }
        return ctx.print_json(&v);
    }
    if ctx.quiet {
        return Ok(());
    }
    outln!("{verb} instance {}", cfg.name);
    let Some(change) = change else {
        return Ok(());
    };
    let p = cfg.priority.as_str();
    let describe = |what: &str| match what {
        "schedule" => cfg
            .schedule
            .as_deref()
            .unwrap_or("none (manual runs only)")
            .to_string(),
        _ => retention_text(&cfg.retention),
    };
    for what in &change.changed {
        outln!("{what}: now {p}'s preset, {}", describe(what));
    }
    for what in &change.kept {
        outln!(
            "{what}: kept ({}, not a preset of the old priority); `cairn instance set` changes it",
            describe(what)
        );
    }
    Ok(())
}

/// A retention policy for people: `daily 90, weekly 4`, in the order of the `--keep-*` flags.
fn retention_text(r: &Retention) -> String {
    let counts = [
        ("last", r.last),
        ("hourly", r.hourly),
        ("daily", r.daily),
        ("weekly", r.weekly),
        ("monthly", r.monthly),
        ("yearly", r.yearly),
    ];
    let parts: Vec<String> = counts
        .iter()
        .filter_map(|(k, n)| n.map(|n| format!("{k} {n}")))
        .chain(r.within.iter().map(|w| format!("within {w}")))
        .collect();
    if parts.is_empty() {
        "keep everything".into()
    } else {
        parts.join(", ")
    }
}

/// `instance show` for people.
fn print_config(cfg: &InstanceConfig) -> Result<()> {
    let v = serde_json::to_value(cfg.printable()).unwrap_or_default();
    if let serde_json::Value::Object(fields) = v {
        for (k, v) in fields {
            let text = match v {
                serde_json::Value::Null => "-".to_string(),
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            outln!("{k:<12} {text}");
        }
    }
    Ok(())
}

/// `instance remove [--purge]`: the configuration goes; with `--purge`, its snapshots are forgotten too.
fn remove(ctx: &Ctx, repo: &Repository, name: &str, purge: bool) -> Result<i32> {
    instance::remove(repo, name)?;
    let mut forgotten = Vec::new();
    if purge {
        for (id, s) in repo.snapshots()? {
            if s.instance.as_deref() == Some(name) {
                repo.remove_snapshot(&id)?;
                forgotten.push(id.to_hex());
            }
        }
    }
    if ctx.json {
        ctx.print_json(
            &json!({"instance": name, "action": "removed", "snapshots_forgotten": forgotten}),
        )?;
    } else if !ctx.quiet {
        outln!(
            "removed instance {name} ({} snapshots forgotten)",
            forgotten.len()
        );
    }
    Ok(EXIT_OK)
}

fn list(ctx: &Ctx, repo: &Repository) -> Result<i32> {
    let states = runner::schedule_states(repo)?;
    let cfgs = instance::list(repo)?;
    if ctx.json {
        let v: Vec<_> = cfgs
            .iter()
            .zip(&states)
            .map(|(c, s)| {
                let mut v = serde_json::to_value(c.printable()).unwrap_or_default();
                v["next_due"] = json!(s.next_due().map(human_time));
                v["last_snapshot"] = json!(s.last_snapshot.map(human_time));
                v["future_snapshots"] = json!(s.future_snapshots);
                v
            })
            .collect();
        ctx.print_json(&json!(v))?;
        return Ok(EXIT_OK);
    }
    outln!(
        "{:<20} {:<8} {:<14} {:<8} {:<25} SOURCES",
        "NAME",
        "PRIORITY",
        "SCHEDULE",
        "STATE",
        "NEXT DUE"
    );
    for (c, s) in cfgs.iter().zip(&states) {
        let mut sources: Vec<String> = c.pg.iter().map(|d| format!("pg:{d}")).collect();
        sources.extend(c.paths.iter().map(|p| p.display().to_string()));
        outln!(
            "{:<20} {:<8} {:<14} {:<8} {:<25} {}",
            c.name,
            c.priority.as_str(),
            c.schedule.as_deref().unwrap_or("-"),
            if c.paused { "paused" } else { "enabled" },
            s.next_due().map(human_time).unwrap_or_else(|| "-".into()),
            sources.join(" ")
        );
    }
    Ok(EXIT_OK)
}

fn restore_instance(
    ctx: &Ctx,
    repo: &Repository,
    name: &str,
    snapshot: Option<String>,
    at: Option<String>,
    to: RestoreTo,
) -> Result<i32> {
    let req = cairn::instance_restore::RestoreRequest {
        snapshot,
        at: at.as_deref().map(parse_time).transpose()?,
        target: to.target,
        pg_target: to.pg_target,
        in_place: to.in_place,
        overwrite: to.overwrite,
        delete: to.delete,
        replace: to.replace,
        owner_acl: to.owner_acl,
        pg_conn: to.pg_conn,
    };
    // No bar (as before); the safety-snapshot line still reaches stderr.
    let progress = Progress::new("restore", None, true);
    let out = cairn::instance_restore::restore_instance(repo, name, req.clone(), &progress)?;
    if ctx.json {
        let mut v = json!({"snapshot_id": out.snapshot_id});
        for (k, val) in [
            ("files", out.files),
            ("bytes", out.bytes),
            ("deleted", out.deleted),
        ] {
            if let Some(n) = val {
                v[k] = json!(n);
            }
        }
        if let Some(db) = &out.database {
            v["database"] = json!(db);
        }
        ctx.print_json(&v)?;
        return Ok(EXIT_OK);
    }
    if ctx.quiet {
        return Ok(EXIT_OK);
    }
    let short = &out.snapshot_id[..8];
    for dir in &out.restored_to {
        if req.in_place {
            outln!(
                "restored snapshot {short} of {name} in place into {}",
                dir.display()
            );
        } else {
            outln!(
                "restored the files of snapshot {short} of {name} to {}",
                dir.display()
            );
        }
    }
    if let Some(n) = out.deleted {
        outln!("removed {n} entries absent from the snapshot");
    }
    if let Some(db) = &out.database {
        outln!(
            "restored the database of snapshot {short} of {name} into {} ({} tables verified)",
            db.database,
            db.tables_verified
        );
    }
    Ok(EXIT_OK)
}

/// A time for people: RFC 3339 to the second.
pub fn human_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, false)
}

pub fn run_due(ctx: &Ctx, log_file: Option<&Path>) -> Result<i32> {
    if let Some(f) = log_file {
        cairn::log_file::redirect_output(f)?;
    }
    let repo = ctx.open()?;
    let db = db_stream();
    let db: DbStream = &db;
    let outcomes = runner::run_due(&repo, Utc::now(), db)?;
    if ctx.json {
        ctx.print_json(&json!(outcomes))?;
    } else if !ctx.quiet {
        for o in &outcomes {
            match (
                &o.snapshot_id,
                &o.error,
                &o.skipped,
                &o.already_run,
                &o.withdrawn,
            ) {
                (Some(id), ..) => outln!("{}: snapshot {}", o.instance, &id[..8]),
                (_, Some(e), ..) => outln!("{}: FAILED: {e}", o.instance),
                (_, _, Some(holder), ..) => outln!("{}: skipped: {holder}", o.instance),
                (_, _, _, Some(what), _) => outln!("{}: skipped: already run: {what}", o.instance),
                (.., Some(why)) => outln!("{}: skipped: {why} since found due", o.instance),
                _ => {}
            }
        }
        outln!("{} instances due", outcomes.len());
    }
    Ok(if outcomes.iter().any(|o| o.error.is_some()) {
        EXIT_ERROR
    } else {
        EXIT_OK
    })
}

pub fn daemon(ctx: &Ctx, max_jobs: Option<usize>, tick_seconds: u64) -> Result<i32> {
    let (repo, _) = ctx.repo_url()?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let opts = cairn::daemon::DaemonOptions {
        repo,
        max_jobs: max_jobs.unwrap_or(cores).max(1),
        tick: std::time::Duration::from_secs(tick_seconds.max(1)),
    };
    cairn::daemon::run(opts, std::sync::Arc::new(db_stream()))?;
    Ok(EXIT_OK)
}

pub fn log(ctx: &Ctx, inst: Option<&str>) -> Result<i32> {
    let repo = ctx.open()?;
    let runs = instance::runs(&repo, inst)?;
    if ctx.json {
        ctx.print_json(&json!(runs))?;
        return Ok(EXIT_OK);
    }
    for r in runs {
        outln!(
            "{} {:<12} {:<8} {:<8} {} {}",
            human_time(r.start),
            r.instance.as_deref().unwrap_or("-"),
            r.kind,
            r.status,
            // A run object is repository content: its id may be anything, never sliced blindly.
            r.snapshot_id
                .as_deref()
                .map(|s| s.char_indices().nth(8).map_or(s, |(end, _)| &s[..end]))
                .unwrap_or("-"),
            r.error.unwrap_or_default()
        );
    }
    Ok(EXIT_OK)
}

/// `stats [--instance NAME] [--prometheus]`: exact usage per instance and in total (see `cairn::stats`),
/// with each instance's last runs.
pub fn stats(ctx: &Ctx, inst: Option<&str>, prometheus: bool) -> Result<i32> {
    if prometheus && ctx.json {
        return Err(Error::Usage(
            "--prometheus and --json are two output formats: give one".into(),
        ));
    }
    let repo = ctx.open()?;
    let snaps = repo.snapshots()?;
    let runs = instance::runs(&repo, None)?;
    let states = runner::schedule_states(&repo)?;
    let mut rows = Vec::new();
    let mut metrics = Vec::new();
    for st in states.iter().filter(|s| inst.is_none_or(|i| i == s.name)) {
        let mine = snaps
            .iter()
            .filter(|(_, s)| s.instance.as_deref() == Some(&st.name))
            .map(|(_, s)| s);
        let m = instance_metrics(&st.name, cairn::stats::usage(&repo, mine)?, &runs);
        let last_run = runs
            .iter()
            .rev()
            .find(|r| r.instance.as_deref() == Some(&st.name));
        let mut row = serde_json::to_value(&m.usage).unwrap_or_default();
        row["instance"] = json!(st.name);
        row["last_backup"] = json!(st.last_snapshot.map(human_time));
        row["future_snapshots"] = json!(st.future_snapshots);
        row["last_status"] = json!(last_run.map(|r| r.status.clone()));
        row["next_due"] = json!(st.next_due().map(human_time));
        row["last_success"] = json!(m.last_success.map(human_time));
        row["last_duration_seconds"] = json!(m.last_duration_seconds);
        row["last_bytes_added"] = json!(m.last_bytes_added);
        row["failures"] = json!(m.failures);
        if let Some(w) = cairn::pitr::recovery_window(&repo, &st.name)? {
            row["recovery_window"] = json!(w);
        }
        rows.push(row);
        metrics.push(m);
    }
    let totals = cairn::stats::totals(&repo, &snaps)?;
    if prometheus {
        let (url, _) = ctx.repo_url()?;
        out!(
            "{}",
            cairn::stats::prometheus(&url.to_string(), &metrics, &totals)
        );
        return Ok(EXIT_OK);
    }
    if ctx.json {
        ctx.print_json(&json!({"instances": rows, "totals": totals}))?;
        return Ok(EXIT_OK);
    }
    for r in &rows {
        outln!(
            "{:<20} {:>4} snapshots, last {} ({}), next {}, {} logical, {} unique, {} stored, dedup {:.2}x",
            r["instance"].as_str().unwrap_or(""),
            r["snapshot_count"],
            r["last_backup"].as_str().unwrap_or("never"),
            r["last_status"].as_str().unwrap_or("-"),
            r["next_due"].as_str().unwrap_or("-"),
            human_bytes(r["logical_bytes"].as_u64().unwrap_or(0)),
            human_bytes(r["unique_bytes"].as_u64().unwrap_or(0)),
            human_bytes(r["stored_bytes"].as_u64().unwrap_or(0)),
            r["dedup_ratio"].as_f64().unwrap_or(0.0)
        );
        if let Some(w) = r.get("recovery_window") {
            outln!(
                "{:<20} recovery window {} to {} ({} base backups)",
                "",
                w["from"].as_str().unwrap_or("?"),
                w["to"].as_str().unwrap_or("?"),
                w["base_backups"]
            );
        }
    }
    let u = &totals.usage;
    outln!(
        "total: {} snapshots, {} logical, {} unique (dedup {:.2}x), {} stored in {} packs ({} unreferenced)",
        u.snapshot_count,
        human_bytes(u.logical_bytes),
        human_bytes(u.unique_bytes),
        u.dedup_ratio,
        human_bytes(totals.pack_bytes),
        totals.pack_count,
        human_bytes(totals.unreferenced_bytes)
    );
    Ok(EXIT_OK)
}

/// An instance's usage with the figures of its backup runs in the log.
fn instance_metrics(
    name: &str,
    usage: cairn::stats::Usage,
    runs: &[instance::RunRecord],
) -> cairn::stats::InstanceMetrics {
    let backups: Vec<_> = runs
        .iter()
        .filter(|r| r.instance.as_deref() == Some(name) && r.kind == "backup")
        .collect();
    let last = backups.last();
    cairn::stats::InstanceMetrics {
        instance: name.to_string(),
        usage,
        last_success: backups
            .iter()
            .rev()
            .find(|r| r.status == "ok")
            .map(|r| r.end.unwrap_or(r.start)),
        last_duration_seconds: last.and_then(|r| {
            r.end
                .map(|e| (e - r.start).num_milliseconds() as f64 / 1000.0)
        }),
        // A failed run added nothing a snapshot keeps.
        last_bytes_added: last.map(|r| r.bytes.unwrap_or(0)),
        last_status: last.map(|r| r.status.clone()),
        failures: backups.iter().filter(|r| r.status == "failed").count() as u64,
    }
}

/// `health`: exit 1 when an enabled instance failed its last run or is overdue, 3 when none did but the
/// last backup of one was partial (a warning: its snapshot lacks files), 0 otherwise.
pub fn health(ctx: &Ctx, grace_minutes: i64, wal_grace_seconds: i64) -> Result<i32> {
    let repo = ctx.open()?;
    let now = Utc::now();
    let grace = Duration::minutes(grace_minutes);
    let states = runner::schedule_states(&repo)?;
    let wal_checks = super::wal::archiving_health(&repo, Duration::seconds(wal_grace_seconds))?;
    let runs = instance::runs(&repo, None)?;
    let last_backup_partial = |name: &str| {
        runs.iter()
            .rev()
            .find(|r| r.instance.as_deref() == Some(name) && r.kind == "backup")
            .is_some_and(|r| r.status == "partial")
    };
    let report: Vec<_> = states
        .iter()
        .map(|s| {
            let status = if s.paused {
                "paused"
            } else if s.last_run_failed {
                "failed"
            } else if s.is_overdue(now, grace) {
                "overdue"
            } else if let Some(w) = wal_checks.get(&s.name).filter(|w| w.status != "ok") {
                w.status
            } else if last_backup_partial(&s.name) {
                "partial"
            } else {
                "ok"
            };
            let wal = wal_checks.get(&s.name);
            if let Some(problem) = wal.and_then(|w| w.problem.as_deref()) {
                eprintln!("cairn: warning: instance {}: {problem}", s.name);
            }
            json!({
                "instance": s.name,
                "status": status,
                "wal": wal,
                "last_snapshot": s.last_snapshot.map(human_time),
                "next_due": s.next_due().map(human_time),
                "future_snapshots": s.future_snapshots,
            })
        })
        .collect();
    // Snapshots dated in the future are not trusted (they would hide a stopped schedule): say so.
    for s in states.iter().filter(|s| s.future_snapshots > 0) {
        eprintln!(
            "cairn: warning: instance {} has {} snapshot(s) dated in the future, ignored by health and scheduling \
             (a mistyped --force-time or a skewed clock?)",
            s.name, s.future_snapshots
        );
    }
    let count = |what: &[&str]| {
        report
            .iter()
            .filter(|r| what.iter().any(|w| r["status"] == *w))
            .count()
    };
    let (bad, warnings) = (
        count(&["failed", "overdue", "wal-failing", "wal-behind"]),
        count(&["partial", "wal-unknown"]),
    );
    if ctx.json {
        ctx.print_json(&json!({"healthy": bad == 0, "warnings": warnings, "instances": report}))?;
    } else if !ctx.quiet {
        for r in &report {
            outln!(
                "{:<20} {}",
                r["instance"].as_str().unwrap_or(""),
                r["status"].as_str().unwrap_or("")
            );
        }
        outln!(
            "{}",
            match (bad, warnings) {
                (0, 0) => "healthy".to_string(),
                (0, w) => format!("healthy, with {w} warning(s): last backup partial, or WAL archiving not checked"),
                _ => "UNHEALTHY".to_string(),
            }
        );
    }
    Ok(match (bad, warnings) {
        (0, 0) => EXIT_OK,
        (0, _) => EXIT_PARTIAL,
        _ => EXIT_ERROR,
    })
}

pub fn schedule_cmd(ctx: &Ctx, kind: ScheduleKind) -> Result<i32> {
    use cairn::schedule_entries::{self as entries, EntrySpec, SystemdScope};
    let (repo, _) = ctx.repo_url()?;
    let exe = std::env::current_exe()
        .map_err(|e| Error::Invalid(format!("cannot tell where the cairn binary is: {e}")))?;
    let mut spec = EntrySpec::new(exe, repo)?;
    spec.password =
        entries::password_source(&spec.repo, cairn::crypto::password::configured_sources())?;
    let doc = match kind {
        ScheduleKind::Crontab { log_file } => {
            let log = match log_file {
                Some(p) => std::path::absolute(&p).map_err(|e| Error::io(&p, e))?,
                None => entries::default_log_file()?,
            };
            json!({"kind": "crontab", "text": entries::crontab(&spec, &log)?, "log_file": log})
        }
        ScheduleKind::Systemd { user } => {
            let scope = if user {
                SystemdScope::User
            } else {
                SystemdScope::System {
                    run_as: nix::unistd::geteuid().as_raw(),
                }
            };
            let units = entries::systemd_units(&spec, scope)?;
            json!({"kind": "systemd", "text": entries::units_text(&units), "files": units})
        }
    };
    if ctx.json {
        ctx.print_json(&doc)?;
    } else {
        out!("{}", doc["text"].as_str().unwrap_or_default());
    }
    Ok(EXIT_OK)
}
