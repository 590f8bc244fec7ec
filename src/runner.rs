//! Running an instance's jobs: hooks around a backup, the run log, failure notification, and `run-due`.
//!
//! A failing pre-hook aborts the run (nothing is backed up) and is logged; the post-hook runs whenever the
//! pre-hook ran, whether the pre-hook, the database dump or the backup failed (it typically restarts a
//! service the pre-hook stopped). Every run, successful or not, leaves a record. On every outcome the
//! instance's `notify` command receives the run as JSON on stdin ([`RunReport`], `status` success, partial
//! or failed) and its `ping_url` is pinged (`/start` before the hooks, then success or `/fail`; a partial
//! run pings `/fail`, see [`crate::ping`]). A notifier or ping that fails is a warning on stderr, never a
//! failed backup (warnings and `run-due`'s events go through `tracing`). An instance whose stored config
//! is refused (a password in its connection string) fails its run without stopping the others.
//!
//! A scheduled run ([`scheduled_run`]) holds the instance's run lock ([`crate::lock::acquire_instance`])
//! for its backup and housekeeping: an instance whose run lock is held elsewhere (another `run-due`, a
//! daemon, a server, `instance backup`, on this host or another sharing the repository) is skipped, not
//! failed. Callers that back up or restore an instance outside a schedule take the same lock themselves.
//! Schedulers decide what is due before they take the lock, from a cache another host's runs do not reach
//! at once, so a scheduled run asks again under the lock, from the repository ([`enter_scheduled_run`]): an
//! instance run elsewhere since it was found due is skipped ("already run"), one backup per slot.
//!
//! Scheduling trusts only snapshots not dated in the future (see `schedule`).

use std::io::Write;
use std::process::{Command, Stdio};

use chrono::{DateTime, FixedOffset, Utc};

use crate::backup::{self, BackupOptions, BackupResult, MetadataHook, StreamSource};
use crate::error::{Error, Result};
use crate::instance::{self, InstanceConfig, RunRecord};
use crate::lock;
use crate::ping;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::schedule::{self, Priority, ScheduleState};

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
    ping(cfg, ping::Signal::Start, b"");
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
    let recorded = instance::record_run(repo, &record);
    let report = RunReport::new(
        &record,
        result.as_ref().map(|r| &r.warnings[..]).unwrap_or(&[]),
    );
    let json = serde_json::to_vec(&report).unwrap_or_default();
    notify(cfg, &json);
    let signal = match report.status {
        RunStatus::Success => ping::Signal::Success,
        RunStatus::Partial | RunStatus::Failed => ping::Signal::Fail,
    };
    ping(cfg, signal, &json);
    recorded?;
    result
}

/// How a run ended, as notifications and pings report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Success,
    /// A snapshot was written without some source files (a warning, not a success).
    Partial,
    Failed,
}

/// A finished run as `notify` commands and pings receive it.
#[derive(Debug, serde::Serialize)]
pub struct RunReport<'a> {
    pub instance: Option<&'a str>,
    pub kind: &'a str,
    pub status: RunStatus,
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
    pub duration_seconds: f64,
    pub bytes_added: Option<u64>,
    pub snapshot_id: Option<&'a str>,
    pub error: Option<&'a str>,
    /// What made a run partial (files that could not be read).
    pub warnings: &'a [String],
}

impl<'a> RunReport<'a> {
    pub fn new(r: &'a RunRecord, warnings: &'a [String]) -> RunReport<'a> {
        RunReport {
            instance: r.instance.as_deref(),
            kind: &r.kind,
            status: match r.status.as_str() {
                "ok" => RunStatus::Success,
                "partial" => RunStatus::Partial,
                _ => RunStatus::Failed,
            },
            start: r.start,
            end: r.end,
            duration_seconds: r
                .end
                .map(|e| (e - r.start).num_milliseconds() as f64 / 1000.0)
                .unwrap_or(0.0),
            bytes_added: r.bytes,
            snapshot_id: r.snapshot_id.as_deref(),
            error: r.error.as_deref(),
            warnings,
        }
    }
}

/// Pings the instance's dead man's switch, if it has one; a failure is a warning.
fn ping(cfg: &InstanceConfig, signal: ping::Signal, body: &[u8]) {
    if let Some(url) = &cfg.ping_url {
        if let Err(e) = ping::send(url, signal, body) {
            tracing::warn!(instance = %cfg.name, error = %e, "ping failed (the backup is not affected)");
        }
    }
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
    let (mut streams, mut finalize_metadata) = match db(cfg)? {
        Some((s, hook)) => (vec![s], vec![hook]),
        None => (Vec::new(), Vec::new()),
    };
    if let Some((s, hook)) = base_backup_stream(cfg)? {
        streams.push(s);
        finalize_metadata.push(hook);
    }
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

/// The base backup half of a snapshot of an instance with point-in-time recovery on (`--wal`) and a
/// database: its cluster's physical base backup ([`crate::postgres::basebackup`]).
pub fn base_backup_stream(cfg: &InstanceConfig) -> Result<Option<(StreamSource, MetadataHook)>> {
    match (&cfg.pg, cfg.wal) {
        (Some(db), true) => {
            let conn = crate::postgres::PgConn::new(cfg.pg_conn.as_deref())?;
            crate::postgres::basebackup::source(&conn, db).map(Some)
        }
        _ => Ok(None),
    }
}

/// A snapshot of the instance holding its files and a base backup of its cluster, without a dump
/// (`cairn instance base-backup`); a run like any backup (hooks, run log, notify, ping).
pub fn base_backup_instance(
    repo: &Repository,
    cfg: &InstanceConfig,
    progress: Progress,
) -> Result<BackupResult> {
    if !cfg.wal || cfg.pg.is_none() {
        return Err(Error::Invalid(format!(
            "instance {} takes no base backups: it needs a database (--pg) and point-in-time recovery on \
             (--wal)",
            cfg.name
        )));
    }
    backup_instance_tagged(repo, cfg, None, &|_| Ok(None), progress, Vec::new())
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

/// Sends a finished run (JSON) to the instance's notify command, with the instance in `CAIRN_INSTANCE`;
/// a notifier that cannot start or exits non-zero is a warning, never a failed backup.
fn notify(cfg: &InstanceConfig, json: &[u8]) {
    let Some(cmd) = &cfg.notify else { return };
    let child = Command::new("sh")
        .args(["-c", cmd])
        .env("CAIRN_INSTANCE", &cfg.name)
        .stdin(Stdio::piped())
        .spawn();
    let status = child.and_then(|mut c| {
        if let Some(mut stdin) = c.stdin.take() {
            // A notifier that does not read its input is not an error of ours.
            let _ = stdin.write_all(json);
        }
        c.wait()
    });
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => tracing::warn!(instance = %cfg.name, status = %s, "notify command failed"),
        Err(e) => tracing::warn!(instance = %cfg.name, error = %e, "notify command could not run"),
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
            let (future, valid): (Vec<_>, Vec<_>) = instance_snapshots(&snaps, &cfg.name)
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

/// The snapshots of instance `name` among `snaps`.
fn instance_snapshots<'a>(
    snaps: &'a [(crate::hashing::Id, crate::snapshot::Snapshot)],
    name: &'a str,
) -> impl Iterator<Item = &'a (crate::hashing::Id, crate::snapshot::Snapshot)> + 'a {
    snaps
        .iter()
        .filter(move |(_, s)| s.instance.as_deref() == Some(name))
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

/// Logs how a scheduled backup ended (`run-due`, the daemon): the snapshot, each file a partial one lacks,
/// or the error.
pub fn log_outcome(name: &str, r: &Result<BackupResult>) {
    match r {
        Ok(b) if b.snapshot.partial => {
            for w in &b.warnings {
                tracing::warn!(instance = %name, warning = %w, "not in the snapshot");
            }
            tracing::warn!(instance = %name, snapshot = %b.snapshot_id.to_hex(), "snapshot saved, partial");
        }
        Ok(b) => {
            tracing::info!(instance = %name, snapshot = %b.snapshot_id.to_hex(), "snapshot saved")
        }
        Err(e) => tracing::error!(instance = %name, error = %e, "backup failed"),
    }
}

/// How one instance's scheduled run ([`scheduled_run`]) ended.
#[allow(clippy::large_enum_variant)] // one value per run, moved once: its size does not matter
pub enum ScheduledRun {
    /// Another process (here or on another host) holds the instance's run lock: nothing was done, and the
    /// instance is due again at the next tick. Holds the holder's description (pid, host, command, since).
    Skipped(String),
    /// Another run of the instance (another process or host) ended after this scheduler found it due, so
    /// its slot is taken care of: nothing was done. Holds what that run left (see [`RunGate::AlreadyRun`]).
    AlreadyRun(String),
    /// The instance was paused, made manual or removed after this scheduler found it due: nothing was
    /// done. Holds which (see [`RunGate::Withdrawn`]).
    Withdrawn(String),
    /// The backup's result (housekeeping's failure is a warning, logged).
    Done(Result<BackupResult>),
}

/// Whether a scheduled run may go ahead ([`enter_scheduled_run`]).
pub enum RunGate {
    /// Go: the instance's run lock, held until this guard is dropped (after the run's housekeeping), and
    /// the instance's configuration as read under it: the run uses that one, not the one it was found due
    /// with, so hooks, paths or connection changed meanwhile take effect.
    Go(lock::LockGuard, Box<InstanceConfig>),
    /// Another process holds the run lock: its description (pid, host, command, since).
    Held(String),
    /// Not due any more: another run of the instance ended between the moment this scheduler found it due
    /// and the moment it took the run lock. What that run left: its snapshot (id, time, host) or, for a
    /// failed run, its status and end.
    AlreadyRun(String),
    /// Not due any more by its own configuration, read again under the lock: it was paused, made manual or
    /// removed since this scheduler found it due (a user's `instance pause` must stop the run it was meant
    /// to stop, even one already decided). Says which.
    Withdrawn(String),
}

/// The start of every scheduled run of `cfg` (`run-due`, the daemon, `serve`'s schedule), found due at
/// `decided`: takes the instance's run lock, then, holding it, asks again whether the instance is due.
/// The due list was computed before the lock from a cache that may be stale: another `run-due`, a daemon or
/// a server, here or on another host sharing the repository, may have run the instance and released its
/// lock in between; backing it up again would be a second pg_dump against production and a second snapshot
/// for one slot. So the snapshots and the run log are re-read from the repository
/// ([`Repository::sync_objects`]), and the run does not go ahead when
/// - the instance has a snapshot (not dated in the future) after which its schedule's next slot lies after
///   `decided`: its slot was backed up meanwhile; or
/// - a backup run of it is recorded as ended at or after `decided` (a failed one included: it made this
///   slot's attempt, is recorded, notified and makes the instance overdue; the next tick or `run-due`
///   tries again, rather than a second dump right after the first failed); or
/// - its configuration, read again, says it is paused, manual or gone ([`RunGate::Withdrawn`]).
///
/// The lock is released again in both cases. The run lock, once held, keeps any other run out until the
/// guard is dropped, so nothing can slip in between this check and the backup.
pub fn enter_scheduled_run(
    repo: &Repository,
    name: &str,
    decided: DateTime<Utc>,
    command: &str,
) -> Result<RunGate> {
    let guard = match lock::acquire_instance(repo.backend(), name, command) {
        Ok(guard) => guard,
        Err(Error::Locked(holder)) => return Ok(RunGate::Held(holder)),
        Err(e) => return Err(e),
    };
    repo.sync_objects()?;
    let cfg = match instance::load(repo, name) {
        Ok(cfg) => cfg,
        Err(Error::NotFound(_)) => return Ok(RunGate::Withdrawn("removed".into())),
        Err(e) => return Err(e),
    };
    if cfg.paused {
        return Ok(RunGate::Withdrawn("paused".into()));
    }
    if cfg.priority == Priority::Manual {
        return Ok(RunGate::Withdrawn("made manual".into()));
    }
    match ran_since(repo, &cfg, decided)? {
        Some(what) => Ok(RunGate::AlreadyRun(what)),
        None => Ok(RunGate::Go(guard, Box::new(cfg))),
    }
}

/// What another run of `cfg` left since `decided` that makes a run for the slot due at `decided` needless
/// (see [`enter_scheduled_run`], which has brought the cache up to date); `None` when the instance is still
/// due.
fn ran_since(
    repo: &Repository,
    cfg: &InstanceConfig,
    decided: DateTime<Utc>,
) -> Result<Option<String>> {
    // Future-dated means after the real clock, not after `decided`: a run that ended long after the
    // decision (a slow dump) dated its snapshot then, and it is genuine.
    let now = Utc::now();
    let snaps = repo.snapshots()?;
    let newest = instance_snapshots(&snaps, &cfg.name)
        .filter(|(_, s)| !schedule::is_future(s.time, now))
        .max_by_key(|(_, s)| s.time);
    if let (Some(schedule), Some((id, snap))) = (cfg.parsed_schedule()?, newest) {
        let next = schedule.next_after(snap.time.with_timezone(&Utc));
        if next.is_none_or(|slot| slot > decided) {
            return Ok(Some(format!(
                "snapshot {} of {} (host {})",
                &id.to_hex()[..8],
                snap.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                snap.host
            )));
        }
    }
    let ended = instance::runs(repo, Some(&cfg.name))?
        .into_iter()
        .rev()
        .find(|r| r.kind == "backup" && r.end.is_some_and(|end| end >= decided));
    Ok(ended.map(|r| {
        format!(
            "a run that ended {} at {}",
            r.status,
            r.end
                .unwrap_or(r.start)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }))
}

/// One scheduled run of an instance (`run-due`, the daemon), found due at `decided`: under the instance's
/// run lock, once [`enter_scheduled_run`] found it still due, its backup and then its housekeeping, so that
/// no other scheduler or `instance backup` runs the same instance meanwhile. A run lock held elsewhere, or a
/// run that ended elsewhere since `decided`, skips the instance with a log line ("backup skipped"); that is
/// not a failed run.
pub fn scheduled_run(
    repo: &Repository,
    name: &str,
    decided: DateTime<Utc>,
    db: DbStream,
    command: &str,
) -> ScheduledRun {
    let (_run, cfg) = match enter_scheduled_run(repo, name, decided, command) {
        Ok(RunGate::Go(guard, cfg)) => (guard, cfg),
        Ok(RunGate::Held(holder)) => {
            tracing::warn!(instance = %name, holder = %holder, "backup skipped: another run of this instance is under way");
            return ScheduledRun::Skipped(holder);
        }
        Ok(RunGate::AlreadyRun(what)) => {
            tracing::info!(instance = %name, by = %what, "backup skipped: already run since it was found due");
            return ScheduledRun::AlreadyRun(what);
        }
        Ok(RunGate::Withdrawn(why)) => {
            tracing::info!(instance = %name, "backup skipped: {why} since it was found due");
            return ScheduledRun::Withdrawn(why);
        }
        Err(e) => {
            let r = Err(e);
            log_outcome(name, &r);
            return ScheduledRun::Done(r);
        }
    };
    tracing::info!(instance = %name, "backup started");
    let r = backup_instance(repo, &cfg, None, db, Progress::hidden());
    log_outcome(name, &r);
    if r.is_ok() {
        if let Err(e) = housekeeping(repo, &cfg) {
            tracing::warn!(instance = %name, error = %e, "retention/prune skipped");
        }
    }
    ScheduledRun::Done(r)
}

/// Outcome of one instance in a `run-due` pass.
#[derive(Debug, Default, serde::Serialize)]
pub struct DueOutcome {
    pub instance: String,
    pub snapshot_id: Option<String>,
    pub error: Option<String>,
    /// Set when the instance was skipped because another run of it holds its run lock: who holds it. Not
    /// a failure; the instance is tried again at the next run.
    pub skipped: Option<String>,
    /// Set when the instance was skipped because another run of it (another process or host) ended after
    /// this pass found it due: what that run left (its snapshot, or that it failed). Not a failure.
    pub already_run: Option<String>,
    /// Set when the instance was skipped because it was paused, made manual or removed after this pass
    /// found it due: which. Not a failure.
    pub withdrawn: Option<String>,
}

/// Backs up every instance due at `now` once, highest priority first, one after the other; each is
/// checked again under its run lock ([`enter_scheduled_run`]), since the ones before it may take long.
pub fn run_due(repo: &Repository, now: DateTime<Utc>, db: DbStream) -> Result<Vec<DueOutcome>> {
    let states = schedule_states_at(repo, now)?;
    let mut out = Vec::new();
    for name in schedule::due_in_order(&states, now) {
        // A refused config (e.g. a password in its connection string) is recorded as this instance's run.
        if let Err(e) = instance::load(repo, &name) {
            tracing::error!(instance = %name, error = %e, "backup refused");
            record_refused(repo, &name, &e)?;
            out.push(DueOutcome {
                instance: name,
                error: Some(e.to_string()),
                ..DueOutcome::default()
            });
            continue;
        }
        let mut o = DueOutcome::default();
        match scheduled_run(repo, &name, now, db, "run-due") {
            ScheduledRun::Skipped(holder) => o.skipped = Some(holder),
            ScheduledRun::AlreadyRun(what) => o.already_run = Some(what),
            ScheduledRun::Withdrawn(why) => o.withdrawn = Some(why),
            ScheduledRun::Done(Ok(r)) => o.snapshot_id = Some(r.snapshot_id.to_hex()),
            ScheduledRun::Done(Err(e)) => o.error = Some(e.to_string()),
        }
        out.push(DueOutcome {
            instance: name,
            ..o
        });
    }
    Ok(out)
}
