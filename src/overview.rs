//! The operator's view of instances as JSON: each instance's configuration with its schedule state, health
//! and size, and repository-wide statistics. Field names are those of the CLI's `--json` output
//! (`instance list/show`, `stats`, `health`), so the HTTP API and scripts read the same documents.
//!
//! Health of an instance: `paused`, `failed` (its last backup failed), `overdue` (no snapshot within its
//! schedule's interval plus the grace), else `ok`.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::error::Result;
use crate::instance::{self, InstanceConfig, RunRecord};
use crate::repo::Repository;
use crate::runner;
use crate::schedule::ScheduleState;
use crate::snapshot::Snapshot;
use crate::Id;

/// Grace after a due time before an instance counts as overdue (as `health`'s default).
pub const DEFAULT_GRACE_MINUTES: i64 = 60;

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, false)
}

/// An instance's configuration as `instance show --json` prints it: without secrets, its name under
/// `instance` too.
pub fn config_json(cfg: &InstanceConfig) -> Value {
    let mut v = serde_json::to_value(cfg.printable()).unwrap_or_default();
    v["instance"] = json!(cfg.name);
    v
}

/// The health word of one instance at `now`.
pub fn health_status(s: &ScheduleState, now: DateTime<Utc>, grace: Duration) -> &'static str {
    if s.paused {
        "paused"
    } else if s.last_run_failed {
        "failed"
    } else if s.is_overdue(now, grace) {
        "overdue"
    } else {
        "ok"
    }
}

/// Everything the overview of instances shows, read once.
pub struct Overview {
    pub configs: Vec<InstanceConfig>,
    pub states: Vec<ScheduleState>,
    pub snapshots: Vec<(Id, Snapshot)>,
    pub runs: Vec<RunRecord>,
}

impl Overview {
    pub fn read(repo: &Repository) -> Result<Overview> {
        Ok(Overview {
            configs: instance::list(repo)?,
            states: runner::schedule_states(repo)?,
            snapshots: repo.snapshots()?,
            runs: instance::runs(repo, None)?,
        })
    }

    /// Each instance as `instance list --json` shows it, with its health, last run and sizes.
    pub fn instances(&self, now: DateTime<Utc>) -> Vec<Value> {
        let grace = Duration::minutes(DEFAULT_GRACE_MINUTES);
        self.configs
            .iter()
            .filter_map(|c| {
                let s = self.states.iter().find(|s| s.name == c.name)?;
                let mut v = config_json(c);
                v["next_due"] = json!(s.next_due().map(time));
                v["last_snapshot"] = json!(s.last_snapshot.map(time));
                v["future_snapshots"] = json!(s.future_snapshots);
                v["status"] = json!(health_status(s, now, grace));
                let stats = self.stats_of(&c.name);
                for k in [
                    "snapshot_count",
                    "last_status",
                    "logical_bytes",
                    "stored_bytes",
                    "dedup_ratio",
                ] {
                    v[k] = stats[k].clone();
                }
                Some(v)
            })
            .collect()
    }

    /// One instance's row of `stats --json`.
    pub fn stats_of(&self, name: &str) -> Value {
        let mine: Vec<_> = self
            .snapshots
            .iter()
            .filter(|(_, s)| s.instance.as_deref() == Some(name))
            .collect();
        let logical: u64 = mine.iter().map(|(_, s)| s.summary.bytes_total).sum();
        let stored: u64 = mine.iter().map(|(_, s)| s.summary.bytes_added).sum();
        let last_run = self
            .runs
            .iter()
            .rev()
            .find(|r| r.instance.as_deref() == Some(name) && !r.kind.starts_with("api:"));
        let state = self.states.iter().find(|s| s.name == name);
        json!({
            "instance": name,
            "snapshot_count": mine.len(),
            "last_backup": state.and_then(|s| s.last_snapshot).map(time),
            "future_snapshots": state.map(|s| s.future_snapshots),
            "last_status": last_run.map(|r| r.status.clone()),
            "next_due": state.and_then(|s| s.next_due()).map(time),
            "logical_bytes": logical,
            "stored_bytes": stored,
            "dedup_ratio": if stored > 0 { logical as f64 / stored as f64 } else { 0.0 },
        })
    }

    /// The repository's size over time, one point per kept snapshot, oldest first: `stored_bytes` adds up
    /// the stored bytes the kept snapshots so far added (data that a forgotten snapshot added and a kept one
    /// still uses is not counted, so the curve is a lower bound), `logical_bytes` sums the size of each
    /// instance's newest snapshot at that time.
    pub fn size_history(&self) -> Vec<Value> {
        let mut kept: Vec<&(Id, Snapshot)> = self.snapshots.iter().collect();
        kept.sort_by_key(|(_, s)| s.time);
        let mut stored = 0u64;
        let mut newest: std::collections::BTreeMap<Option<&str>, u64> = Default::default();
        kept.iter()
            .map(|(id, s)| {
                stored += s.summary.bytes_added;
                newest.insert(s.instance.as_deref(), s.summary.bytes_total);
                json!({
                    "time": time(s.time.with_timezone(&Utc)),
                    "snapshot_id": id.to_hex(),
                    "instance": s.instance,
                    "stored_bytes": stored,
                    "logical_bytes": newest.values().sum::<u64>(),
                })
            })
            .collect()
    }

    /// Whether every instance is ok or paused.
    pub fn healthy(&self, now: DateTime<Utc>) -> bool {
        let grace = Duration::minutes(DEFAULT_GRACE_MINUTES);
        self.states
            .iter()
            .all(|s| matches!(health_status(s, now, grace), "ok" | "paused"))
    }
}
