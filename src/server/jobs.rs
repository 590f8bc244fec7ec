//! Jobs: the server's long operations (backups, restores, imports, checks), run on tokio's blocking pool
//! and observed through their [`Progress`](crate::progress::Progress).
//!
//! A job is queued, then running, then completed, failed or cancelled; a job whose server died under it
//! (killed, crashed, power lost) is listed by the next server as interrupted. Its counters are atomics written by
//! the operation's worker threads (through [`Observer`]) and read by `GET /jobs/{id}`. Cancelling sets a
//! flag that the operation checks between units of work; a cancelled operation unwinds like a failed one
//! (no snapshot written). At most one restore or import per instance runs at a time, and no backup of an
//! instance runs beside its restore: [`JobTable::submit`] refuses the second (409).
//!
//! Jobs live in memory and, when this server owns the host's job records ([`super::job_store`]), are
//! recorded when they start and when they end, so a restarted server lists the jobs of the ones before it,
//! and those that were queued or running when it died as interrupted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::json;

use super::job_store::{self, JobStore};
use crate::progress::{Observer, Progress};
use crate::{Error, Result};

/// A job's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
    /// The server stopped (killed, crashed) while the job was queued or running.
    Interrupted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Interrupted => "interrupted",
        }
    }
    fn finished(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Failed | Status::Cancelled | Status::Interrupted
        )
    }

    fn parse(s: &str) -> Option<Status> {
        [
            Status::Queued,
            Status::Running,
            Status::Completed,
            Status::Failed,
            Status::Cancelled,
            Status::Interrupted,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// What a job's operation reports when it ends well.
#[derive(Debug, Default)]
pub struct Outcome {
    pub snapshot_id: Option<String>,
    pub safety_snapshot_id: Option<String>,
    /// Anything else worth showing (the operation's own JSON report).
    pub detail: Option<serde_json::Value>,
}

/// The mutable, rarely written part of a job.
#[derive(Debug)]
struct Fields {
    status: Status,
    current_step: String,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    snapshot_id: Option<String>,
    safety_snapshot_id: Option<String>,
    error: Option<String>,
    detail: Option<serde_json::Value>,
}

/// One job.
#[derive(Debug)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub instance: Option<String>,
    pub created_at: DateTime<Utc>,
    bytes_done: AtomicU64,
    bytes_total: AtomicU64,
    files_done: AtomicU64,
    rows_verified: AtomicU64,
    cancel: AtomicBool,
    fields: Mutex<Fields>,
}

impl Job {
    fn fields(&self) -> MutexGuard<'_, Fields> {
        // A poisoned lock only means a panic elsewhere while it was held; the fields stay usable.
        self.fields.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> Status {
        self.fields().status
    }

    /// The job as the API shows it.
    pub fn to_json(&self) -> serde_json::Value {
        let f = self.fields();
        let done = self.bytes_done.load(Ordering::Relaxed);
        let total = self.bytes_total.load(Ordering::Relaxed);
        let percent = match f.status {
            Status::Completed => Some(100.0),
            _ if total > 0 => Some((done as f64 * 100.0 / total as f64).min(99.0)),
            _ => None,
        };
        let time =
            |t: &Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true));
        json!({
            "id": self.id,
            "status": f.status,
            "kind": self.kind,
            "instance": self.instance,
            "progress_percent": percent,
            "current_step": f.current_step,
            "bytes_done": done,
            "bytes_total": if total > 0 { Some(total) } else { None },
            "files_done": self.files_done.load(Ordering::Relaxed),
            "rows_verified": self.rows_verified.load(Ordering::Relaxed),
            "snapshot_id": f.snapshot_id,
            "safety_snapshot_id": f.safety_snapshot_id,
            "created_at": time(&Some(self.created_at)),
            "started_at": time(&f.started_at),
            "finished_at": time(&f.finished_at),
            "error": f.error,
            "detail": f.detail,
        })
    }

    /// A job as [`Job::to_json`] recorded it, `None` if the record lacks what every job has.
    fn from_record(v: &serde_json::Value) -> Option<Job> {
        let time = |k: &str| {
            v[k].as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        let text = |k: &str| v[k].as_str().map(str::to_string);
        let count = |k: &str| AtomicU64::new(v[k].as_u64().unwrap_or(0));
        Some(Job {
            id: text("id")?,
            kind: text("kind")?,
            instance: text("instance"),
            created_at: time("created_at")?,
            bytes_done: count("bytes_done"),
            bytes_total: count("bytes_total"),
            files_done: count("files_done"),
            rows_verified: count("rows_verified"),
            cancel: AtomicBool::new(false),
            fields: Mutex::new(Fields {
                status: Status::parse(v["status"].as_str()?)?,
                current_step: text("current_step").unwrap_or_default(),
                started_at: time("started_at"),
                finished_at: time("finished_at"),
                snapshot_id: text("snapshot_id"),
                safety_snapshot_id: text("safety_snapshot_id"),
                error: text("error"),
                detail: Some(v["detail"].clone()).filter(|d| !d.is_null()),
            }),
        })
    }

    /// Marks a recorded job that never finished as interrupted (its server died under it).
    fn interrupt(&self) {
        let mut f = self.fields();
        f.status = Status::Interrupted;
        f.finished_at = Some(Utc::now());
        f.error = Some(format!(
            "interrupted: the server stopped (killed or crashed) during `{}`, before the job finished",
            f.current_step
        ));
    }

    /// Sets the bytes the job is expected to process (an estimate until the operation knows better).
    pub fn expect_bytes(&self, n: u64) {
        self.bytes_total.store(n, Ordering::Relaxed);
    }

    fn start(&self) -> bool {
        let mut f = self.fields();
        if f.status != Status::Queued {
            return false; // cancelled while queued
        }
        f.status = Status::Running;
        f.started_at = Some(Utc::now());
        true
    }

    fn finish(&self, result: std::result::Result<Outcome, Error>) {
        let cancelled = self.cancel.load(Ordering::Relaxed);
        let mut f = self.fields();
        f.finished_at = Some(Utc::now());
        match result {
            Ok(o) => {
                f.status = Status::Completed;
                f.current_step = "done".into();
                f.snapshot_id = o.snapshot_id;
                f.safety_snapshot_id = o.safety_snapshot_id.or(f.safety_snapshot_id.take());
                f.detail = o.detail;
            }
            Err(e) => {
                f.status = if cancelled && matches!(e, Error::Interrupted) {
                    Status::Cancelled
                } else {
                    Status::Failed
                };
                f.error = Some(if f.status == Status::Cancelled {
                    "cancelled".into()
                } else {
                    e.to_string()
                });
            }
        }
    }
}

impl Observer for Job {
    fn step(&self, step: &str) {
        self.fields().current_step = step.to_string();
    }
    fn total(&self, bytes: u64) {
        self.bytes_total.store(bytes, Ordering::Relaxed);
    }
    fn bytes(&self, n: u64) {
        self.bytes_done.fetch_add(n, Ordering::Relaxed);
    }
    fn file_done(&self, n: u64) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
        self.bytes_done.fetch_add(n, Ordering::Relaxed);
    }
    fn rows_verified(&self, n: u64) {
        self.rows_verified.fetch_add(n, Ordering::Relaxed);
    }
    fn line(&self, line: &str) {
        // The safety snapshot's line names it: keep its id for the job's `safety_snapshot_id`.
        if let Some(rest) = line.strip_prefix("cairn: safety snapshot ") {
            if let Some(id) = rest.split_whitespace().next() {
                self.fields().safety_snapshot_id = Some(id.to_string());
            }
        }
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// Kinds that replace an instance's data: never two at once for one instance, nor beside its backup.
const EXCLUSIVE_KINDS: [&str; 2] = ["restore", "import"];

/// Every job of this server (and, from the records, of the servers before it), oldest first.
#[derive(Default)]
pub struct JobTable {
    jobs: Mutex<Vec<Arc<Job>>>,
    next: AtomicU64,
    /// Set at shutdown: no new job starts.
    closed: AtomicBool,
    /// Where jobs are recorded (none: this server keeps them in memory only).
    store: Option<Arc<JobStore>>,
    /// Bumped when a job ends (what it changed is shown anew; see [`super::overview_cache`]).
    changes: Arc<AtomicU64>,
}

/// Why a job was not started.
pub enum Refusal {
    /// A conflicting job of the same instance is queued or running.
    Busy(String),
    /// The server is shutting down.
    Closed,
}

/// Writes a job's record; a failure is printed, not fatal to the job (the record is this host's cache).
fn persist(store: &Option<Arc<JobStore>>, job: &Job) {
    if let Some(store) = store {
        if let Err(e) = store.save(&job.to_json()) {
            eprintln!("cairn serve: warning: job {} not recorded: {e}", job.id);
        }
    }
}

impl JobTable {
    /// The table of a server that owns `store`: the recorded jobs, those left unfinished by a server that
    /// died marked interrupted (and so recorded), at most [`job_store::KEEP`] of them; new ids continue
    /// after the highest recorded one. Blocking (file I/O): called before the server runs.
    pub fn with_store(store: JobStore) -> Result<JobTable> {
        let mut jobs = Vec::new();
        let mut highest = 0;
        let records = store.load()?;
        let surplus = records.len().saturating_sub(job_store::KEEP);
        for (i, record) in records.iter().enumerate() {
            let id = record["id"].as_str().unwrap_or_default();
            highest = highest.max(job_store::number_of(id).unwrap_or(0));
            if i < surplus {
                store.remove(id)?;
                continue;
            }
            let Some(job) = Job::from_record(record) else {
                eprintln!("cairn serve: warning: job record {id} skipped: fields missing");
                continue;
            };
            if !job.status().finished() {
                job.interrupt();
                store.save(&job.to_json())?;
            }
            jobs.push(Arc::new(job));
        }
        Ok(JobTable {
            jobs: Mutex::new(jobs),
            next: AtomicU64::new(highest),
            closed: AtomicBool::new(false),
            store: Some(Arc::new(store)),
            changes: Arc::default(),
        })
    }

    /// Bumps `changes` whenever a job ends.
    pub fn notifying(mut self, changes: Arc<AtomicU64>) -> JobTable {
        self.changes = changes;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Job>>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `work` as a job of `kind` for `instance` on the blocking pool and returns the job at once.
    pub fn submit<F>(
        self: &Arc<Self>,
        kind: &str,
        instance: Option<&str>,
        work: F,
    ) -> std::result::Result<Arc<Job>, Refusal>
    where
        F: FnOnce(&Arc<Job>, Progress) -> crate::Result<Outcome> + Send + 'static,
    {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Refusal::Closed);
        }
        let job = {
            let mut jobs = self.lock();
            if let Some(other) = instance.and_then(|i| conflicting(&jobs, kind, i)) {
                return Err(Refusal::Busy(format!(
                    "instance {} has a {} job running ({}); try again when it has finished",
                    instance.unwrap_or_default(),
                    other.kind,
                    other.id
                )));
            }
            let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
            let job = Arc::new(Job {
                id: format!("job-{n}"),
                kind: kind.to_string(),
                instance: instance.map(str::to_string),
                created_at: Utc::now(),
                bytes_done: AtomicU64::new(0),
                bytes_total: AtomicU64::new(0),
                files_done: AtomicU64::new(0),
                rows_verified: AtomicU64::new(0),
                cancel: AtomicBool::new(false),
                fields: Mutex::new(Fields {
                    status: Status::Queued,
                    current_step: "queued".into(),
                    started_at: None,
                    finished_at: None,
                    snapshot_id: None,
                    safety_snapshot_id: None,
                    error: None,
                    detail: None,
                }),
            });
            jobs.push(job.clone());
            job
        };
        let running = job.clone();
        let store = self.store.clone();
        let changes = self.changes.clone();
        tokio::task::spawn_blocking(move || {
            // Recorded as running before any work: if the server dies from here on, the next one says so.
            let started = running.start();
            persist(&store, &running);
            if !started {
                return; // cancelled while queued
            }
            let progress = Progress::observed(running.clone());
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&running, progress)))
                    .unwrap_or_else(|_| Err(Error::Command("the job panicked".into())));
            // Before the job reads as ended: whoever sees it ended and asks for the overview gets a new one.
            changes.fetch_add(1, Ordering::SeqCst);
            running.finish(result);
            persist(&store, &running);
        });
        Ok(job)
    }

    /// One job by id.
    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.lock().iter().find(|j| j.id == id).cloned()
    }

    /// Jobs, newest first, filtered by status and instance, at most `limit`.
    pub fn list(
        &self,
        status: Option<&str>,
        instance: Option<&str>,
        limit: usize,
    ) -> Vec<Arc<Job>> {
        self.lock()
            .iter()
            .rev()
            .filter(|j| status.is_none_or(|s| j.status().as_str() == s))
            .filter(|j| instance.is_none_or(|i| j.instance.as_deref() == Some(i)))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Asks a job to stop: a queued one never starts, a running one stops at its next check. Returns false
    /// for a job that had already finished.
    pub fn cancel(&self, job: &Job) -> bool {
        let mut f = job.fields();
        if f.status.finished() {
            return false;
        }
        job.cancel.store(true, Ordering::SeqCst);
        if f.status == Status::Queued {
            f.status = Status::Cancelled;
            f.error = Some("cancelled".into());
            f.finished_at = Some(Utc::now());
        }
        true
    }

    /// Jobs not finished yet.
    pub fn unfinished(&self) -> usize {
        self.lock()
            .iter()
            .filter(|j| !j.status().finished())
            .count()
    }

    /// Refuses new jobs from now on (shutdown).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }
}

/// A queued or running job of `instance` that a new job of `kind` must not run beside: two jobs that
/// replace its data, or one that replaces it and a backup (which would read it half replaced).
fn conflicting<'a>(jobs: &'a [Arc<Job>], kind: &str, instance: &str) -> Option<&'a Arc<Job>> {
    let exclusive = |k: &str| EXCLUSIVE_KINDS.contains(&k);
    jobs.iter().find(|j| {
        j.instance.as_deref() == Some(instance)
            && !j.status().finished()
            && (exclusive(kind) || exclusive(&j.kind) || j.kind == kind)
    })
}
