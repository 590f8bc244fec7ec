//! `cairn daemon`: runs instance schedules itself until stopped.
//!
//! Every tick it asks the scheduler which instances are due (highest priority first) and starts backups for
//! them, at most `max_jobs` at a time and never two for the same instance (in this process by its own
//! bookkeeping; across processes and hosts by the instance run lock, see [`runner::scheduled_run`]: an
//! instance being run elsewhere is skipped and due again at the next tick). Its due list comes from the
//! index cache, which another host's runs do not reach until it is refreshed; so each job, holding the run
//! lock, re-reads the instance's snapshots and run log from the repository and skips an instance run
//! elsewhere since the tick found it due ([`runner::enter_scheduled_run`]): one backup per slot. SIGTERM
//! or SIGINT stops new work; running backups are allowed to finish, so a stop never leaves a partial
//! snapshot. A run missed while the daemon was down is due once at start (see `schedule`), not once per
//! missed slot. An instance whose config is refused fails (logged, retried later) without stopping the
//! daemon. Everything it reports goes through `tracing` (the binary picks plain or JSON lines): start, each
//! backup's start and outcome with its `instance`, stop.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;

use crate::backup::{MetadataHook, StreamSource};
use crate::error::{Error, Result};
use crate::instance::{self, InstanceConfig};
use crate::repo::Repository;
use crate::runner;
use crate::schedule;

/// Produces an instance's database stream (see [`runner::DbStream`]), shareable across jobs.
pub type SharedDb =
    Arc<dyn Fn(&InstanceConfig) -> Result<Option<(StreamSource, MetadataHook)>> + Send + Sync>;

/// A failed instance is retried after this long, not at every tick.
const RETRY_AFTER: Duration = Duration::from_secs(300);

/// Jobs in flight, recent failures and recent skips.
#[derive(Default)]
struct State {
    running: HashSet<String>,
    failed_at: HashMap<String, Instant>,
    /// Instances skipped because another run holds their run lock: tried again a tick later, not as soon
    /// as a job ends (a skip ends at once, and the loop evaluates again when a job ends: without this it
    /// would write and list lock objects in a busy loop for as long as the other run lasts).
    skipped_at: HashMap<String, Instant>,
}

/// How a job ended: skipped (another run of the instance holds its run lock, or ran it since this tick
/// found it due), or the backup's snapshot id.
enum Ran {
    Skipped,
    Done(Result<String>),
}

/// Daemon settings.
pub struct DaemonOptions {
    pub repo: crate::backend::RepoUrl,
    /// Concurrent backups (default: one per core).
    pub max_jobs: usize,
    /// How often schedules are evaluated.
    pub tick: Duration,
}

/// Runs until SIGTERM/SIGINT, then waits for running jobs.
pub fn run(opts: DaemonOptions, db: SharedDb) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Command(format!("daemon runtime: {e}")))?;
    rt.block_on(main_loop(opts, db))
}

async fn main_loop(opts: DaemonOptions, db: SharedDb) -> Result<()> {
    let repo = Arc::new(Repository::open(&opts.repo)?);
    let sig = |k| signal(k).map_err(|e| Error::Command(format!("signal handler: {e}")));
    let (mut term, mut int) = (sig(SignalKind::terminate())?, sig(SignalKind::interrupt())?);
    let mut jobs: JoinSet<(String, Ran)> = JoinSet::new();
    let mut state = State::default();
    tracing::info!(max_jobs = opts.max_jobs, "daemon started");
    loop {
        start_due_jobs(&repo, &opts, &db, &mut jobs, &mut state)?;
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(done) = jobs.join_next(), if !jobs.is_empty() => report(done, &mut state),
            _ = tokio::time::sleep(opts.tick) => {}
        }
    }
    tracing::info!(
        running = jobs.len(),
        "daemon stopping; waiting for running jobs"
    );
    while let Some(done) = jobs.join_next().await {
        report(done, &mut state);
    }
    tracing::info!("daemon stopped");
    Ok(())
}

fn start_due_jobs(
    repo: &Arc<Repository>,
    opts: &DaemonOptions,
    db: &SharedDb,
    jobs: &mut JoinSet<(String, Ran)>,
    state: &mut State,
) -> Result<()> {
    let decided = Utc::now();
    let states = runner::schedule_states_at(repo, decided)?;
    for name in schedule::due_in_order(&states, decided) {
        if state.running.len() >= opts.max_jobs {
            break;
        }
        let recently_failed = state
            .failed_at
            .get(&name)
            .is_some_and(|t| t.elapsed() < RETRY_AFTER);
        let recently_skipped = state
            .skipped_at
            .get(&name)
            .is_some_and(|t| t.elapsed() < opts.tick);
        if state.running.contains(&name) || recently_failed || recently_skipped {
            continue;
        }
        // A refused config (e.g. a password in its connection string) fails this instance only. The run
        // reads the config again under the instance's run lock (`runner::enter_scheduled_run`).
        if let Err(e) = instance::load(repo, &name) {
            tracing::error!(instance = %name, error = %e, "backup refused");
            runner::record_refused(repo, &name, &e)?;
            state.failed_at.insert(name, Instant::now());
            continue;
        }
        let (repo, db) = (repo.clone(), db.clone());
        state.running.insert(name.clone());
        jobs.spawn_blocking(move || {
            let done = match runner::scheduled_run(&repo, &name, decided, &*db, "daemon") {
                runner::ScheduledRun::Skipped(_)
                | runner::ScheduledRun::AlreadyRun(_)
                | runner::ScheduledRun::Withdrawn(_) => Ran::Skipped,
                runner::ScheduledRun::Done(r) => Ran::Done(r.map(|r| r.snapshot_id.to_hex())),
            };
            (name, done)
        });
    }
    Ok(())
}

fn report(done: std::result::Result<(String, Ran), tokio::task::JoinError>, state: &mut State) {
    match done {
        // Skipped (its run lock is held elsewhere, or it was run elsewhere since): the next tick decides
        // again, from a cache the skip brought up to date; not held back as failed.
        Ok((name, Ran::Skipped)) => {
            state.running.remove(&name);
            state.skipped_at.insert(name, Instant::now());
        }
        Ok((name, Ran::Done(Ok(_)))) => {
            state.failed_at.remove(&name);
            state.skipped_at.remove(&name);
            state.running.remove(&name);
        }
        Ok((name, Ran::Done(Err(_)))) => {
            state.failed_at.insert(name.clone(), Instant::now());
            state.skipped_at.remove(&name);
            state.running.remove(&name);
        }
        Err(e) => tracing::error!(error = %e, "a backup job panicked"),
    }
}
