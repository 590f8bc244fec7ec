//! Running an instance's jobs: hooks around a backup, the run log, failure notification, and `run-due`.
//!
//! A failing pre-hook aborts the run (nothing is backed up) and is logged; the post-hook runs whenever the
//! pre-hook ran, whether the pre-hook, the database dump or the backup failed (it typically restarts a
//! service the pre-hook stopped). Every run, successful or not, leaves a record; on failure the instance's
//! `notify` command receives the record as JSON on stdin. An instance whose stored config is refused (a
//! password in its connection string) fails its run without stopping the others.
//!
//! Scheduling trusts only snapshots not dated in the future (see `schedule`).

use std::io::Write;
use std::process::{Command, Stdio};

use chrono::{DateTime, FixedOffset, Utc};

use crate::backup::{self, BackupOptions, BackupResult, MetadataHook, StreamSource};
use crate::error::{Error, Result};
use crate::instance::{self, InstanceConfig, RunRecord};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::schedule::{self, ScheduleState};

/// Builds the stream for an instance's database; supplied by the caller so this module does not depend on
/// how dumps are taken.
pub type DbStream<'a> = &'a dyn Fn(&InstanceConfig) -> Result<Option<(StreamSource, MetadataHook)>>;

/// Runs `sh -c cmd` with the instance name in `CAIRN_INSTANCE`; a non-zero exit is an error.
fn run_hook(what: &str, cmd: &str, cfg: &InstanceConfig) -> Result<()> {
    let status = Command::new("sh")
        .args(["-c", cmd])
        .env("CAIRN_INSTANCE", &cfg.name)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| Error::Command(format!("{what} hook: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Command(format!(
            "{what} hook `{cmd}` failed ({status})"
        )))
    }
}

/// One snapshot of an instance (database stream + file trees), with hooks, logging and notification.
pub fn backup_instance(
    repo: &Repository,
    cfg: &InstanceConfig,
    time: Option<DateTime<FixedOffset>>,
    db: DbStream,
    progress: Progress,
) -> Result<BackupResult> {
    backup_instance_tagged(repo, cfg, time, db, progress, Vec::new())
}

/// [`backup_instance`] with tags on the snapshot (`safety` for the one taken before an in-place restore).
pub fn backup_instance_tagged(
    repo: &Repository,
    cfg: &InstanceConfig,
    time: Option<DateTime<FixedOffset>>,
    db: DbStream,
    progress: Progress,
    tags: Vec<String>,
) -> Result<BackupResult> {
    let start = Utc::now();
    let result = with_hooks(cfg, || take_snapshot(repo, cfg, time, db, progress, tags));
    let record = RunRecord {
        instance: Some(cfg.name.clone()),
        kind: "backup".into(),
        start,
        end: Some(Utc::now()),
        status: match &result {
            Ok(r) if r.snapshot.partial => "partial".into(),
            Ok(_) => "ok".into(),
            Err(_) => "failed".into(),
        },
        bytes: result.as_ref().ok().map(|r| r.snapshot.summary.bytes_added),
        snapshot_id: result.as_ref().ok().map(|r| r.snapshot_id.to_hex()),
        error: result.as_ref().err().map(|e| e.to_string()),
    };
    instance::record_run(repo, &record)?;
    if result.is_err() {
        notify(cfg, &record);
    }
    result
}

/// Runs `job` between the instance's hooks. A failed pre-hook skips the job; the post-hook runs in every case
/// (the pre-hook may have stopped a service before failing). Both failures are reported when both fail.
fn with_hooks<T>(cfg: &InstanceConfig, job: impl FnOnce() -> Result<T>) -> Result<T> {
    let hook =
        |what: &str, cmd: &Option<String>| cmd.as_ref().map_or(Ok(()), |c| run_hook(what, c, cfg));
    let out = hook("pre", &cfg.pre_hook).and_then(|()| job());
    let post = hook("post", &cfg.post_hook);
    match (out, post) {
        (Ok(r), Ok(())) => Ok(r),
        (Err(e), Ok(())) | (Ok(_), Err(e)) => Err(e),
        (Err(e), Err(p)) => Err(e.with_note(format!("; the post hook failed too: {p}"))),
    }
}

/// The snapshot itself: the database stream (if any) and the instance's paths.
fn take_snapshot(
    repo: &Repository,
    cfg: &InstanceConfig,
    time: Option<DateTime<FixedOffset>>,
    db: DbStream,
    progress: Progress,
    tags: Vec<String>,
) -> Result<BackupResult> {
    let (streams, finalize_metadata) = match db(cfg)? {
        Some((s, hook)) => (vec![s], vec![hook]),
        None => (Vec::new(), Vec::new()),
    };
    backup::backup(
        repo,
        BackupOptions {
            paths: cfg.paths.clone(),
            streams,
            instance: Some(cfg.name.clone()),
            time,
            finalize_metadata,
            progress,
            excludes: cfg.excludes.clone(),
            tags,
            ..BackupOptions::default()
        },
    )
}

/// Records a run that could not start because the instance's stored config was refused.
pub fn record_refused(repo: &Repository, name: &str, e: &Error) -> Result<()> {
    let now = Utc::now();
    instance::record_run(
        repo,
        &RunRecord {
            instance: Some(name.to_string()),
            kind: "backup".into(),
            start: now,
            end: Some(now),
            status: "failed".into(),
            bytes: None,
            snapshot_id: None,
            error: Some(e.to_string()),
        },
    )
}

/// Sends a failed run to the instance's notify command; a failing notifier is reported, not fatal.
fn notify(cfg: &InstanceConfig, record: &RunRecord) {
    let Some(cmd) = &cfg.notify else { return };
    let json = serde_json::to_vec(record).unwrap_or_default();
    let child = Command::new("sh")
        .args(["-c", cmd])
        .stdin(Stdio::piped())
        .spawn();
    match child {
        Ok(mut c) => {
            if let Some(mut stdin) = c.stdin.take() {
                let _ = stdin.write_all(&json);
            }
            let _ = c.wait();
        }
        Err(e) => eprintln!("cairn: warning: notify command for {}: {e}", cfg.name),
    }
}

/// The scheduler's view of every instance, read from the repository, now.
pub fn schedule_states(repo: &Repository) -> Result<Vec<ScheduleState>> {
    schedule_states_at(repo, Utc::now())
}

/// The scheduler's view at `now`: snapshots dated after `now` (beyond the tolerance) are counted, not trusted.
pub fn schedule_states_at(repo: &Repository, now: DateTime<Utc>) -> Result<Vec<ScheduleState>> {
    let snaps = repo.snapshots()?;
    let runs = instance::runs(repo, None)?;
    instance::list(repo)?
        .into_iter()
        .map(|cfg| {
            let (future, valid): (Vec<_>, Vec<_>) = snaps
                .iter()
                .filter(|(_, s)| s.instance.as_deref() == Some(&cfg.name))
                .map(|(_, s)| s.time)
                .partition(|t| schedule::is_future(*t, now));
            let last_snapshot = valid.iter().map(|t| t.with_timezone(&Utc)).max();
            let last_run_failed = runs
                .iter()
                .rev()
                .find(|r| r.instance.as_deref() == Some(&cfg.name) && r.kind == "backup")
                .is_some_and(|r| r.status == "failed");
            Ok(ScheduleState {
                schedule: cfg.parsed_schedule()?,
                name: cfg.name,
                priority: cfg.priority,
                paused: cfg.paused,
                created: cfg.created,
                last_snapshot,
                future_snapshots: future.len(),
                last_run_failed,
            })
        })
        .collect()
}

/// A scheduled run's housekeeping: share of pack bytes a prune would free above which it runs.
pub const PRUNE_THRESHOLD_PERCENT: f64 = 10.0;

/// After a scheduled backup: apply the instance's retention, then prune when enough space is reclaimable.
/// Prune takes the exclusive lock, so it never runs beside another prune or a backup; if the repository is
/// busy it is skipped and tried after the next run.
pub fn housekeeping(
    repo: &Repository,
    cfg: &InstanceConfig,
) -> Result<Option<crate::gc::PruneReport>> {
    use crate::gc;
    let start = Utc::now();
    // Safety snapshots taken before in-place restores are never expired by a schedule.
    let opts = gc::ForgetOptions {
        policy: cfg.retention.policy(vec![gc::SAFETY_TAG.into()])?,
        instance: Some(cfg.name.clone()),
        ..Default::default()
    };
    let forgot = gc::forget(repo, &opts);
    let removed = forgot
        .as_ref()
        .map(|g| {
            g.iter()
                .flat_map(|g| &g.decisions)
                .filter(|d| !d.keep)
                .count()
        })
        .unwrap_or(0);
    let pruned = forgot.and_then(|_| {
        let preview = gc::prune(
            repo,
            gc::PruneOptions {
                dry_run: true,
                ..Default::default()
            },
        )?;
        let share = preview.bytes_freed as f64 * 100.0 / preview.bytes_before.max(1) as f64;
        if share < PRUNE_THRESHOLD_PERCENT {
            return Ok(None);
        }
        gc::prune(repo, gc::PruneOptions::default()).map(Some)
    });
    instance::record_run(
        repo,
        &RunRecord {
            instance: Some(cfg.name.clone()),
            kind: "forget".into(),
            start,
            end: Some(Utc::now()),
            status: if pruned.is_ok() {
                "ok".into()
            } else {
                "failed".into()
            },
            bytes: pruned
                .as_ref()
                .ok()
                .and_then(|p| p.as_ref().map(|p| p.bytes_freed)),
            snapshot_id: None,
            error: pruned
                .as_ref()
                .err()
                .map(|e| format!("{e} ({removed} snapshots forgotten)")),
        },
    )?;
    pruned
}

/// Outcome of one instance in a `run-due` pass.
#[derive(Debug, serde::Serialize)]
pub struct DueOutcome {
    pub instance: String,
    pub snapshot_id: Option<String>,
    pub error: Option<String>,
}

/// Backs up every due instance once, highest priority first, one after the other.
pub fn run_due(repo: &Repository, now: DateTime<Utc>, db: DbStream) -> Result<Vec<DueOutcome>> {
    let states = schedule_states_at(repo, now)?;
    let mut out = Vec::new();
    for name in schedule::due_in_order(&states, now) {
        let cfg = match instance::load(repo, &name) {
            Ok(cfg) => cfg,
            Err(e) => {
                record_refused(repo, &name, &e)?;
                out.push(DueOutcome {
                    instance: name,
                    snapshot_id: None,
                    error: Some(e.to_string()),
                });
                continue;
            }
        };
        let r = backup_instance(repo, &cfg, None, db, Progress::hidden());
        if r.is_ok() {
            if let Err(e) = housekeeping(repo, &cfg) {
                eprintln!("cairn: {name}: retention/prune skipped: {e}");
            }
        }
        out.push(DueOutcome {
            instance: name,
            snapshot_id: r.as_ref().ok().map(|r| r.snapshot_id.to_hex()),
            error: r.err().map(|e| e.to_string()),
        });
    }
    Ok(out)
}
