//! The instance overview (`GET /instances`, `GET /instances/{name}`, `GET /health`) computed once and
//! shared by every request for a short while.
//!
//! Why: [`Overview::read`] lists the instance objects, reads the newest revision of each, and queries the
//! index's snapshots and run log through the repository's one index connection, which a running backup
//! uses for every blob it adds. Two hundred dashboards polling it each made that many reads, queued on that
//! connection behind the backup and slowing it down. Now at most one read runs at a time (the others wait
//! for its answer on an async lock, holding no thread), and its answer serves every request for
//! [`FRESH_FOR`], or until something this server did changed what it shows (a mutating call, a job ending:
//! [`OverviewCache::invalidate`]); changes made by another process show within [`FRESH_FOR`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;

use super::blocking;
use super::errors::ApiResult;
use crate::overview::Overview;
use crate::repo::Repository;

/// How long an overview is served without being read again.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// What the overview routes read: every instance as `instance list --json` shows it, and health.
#[derive(Debug)]
pub struct Snapshot {
    pub instances: Vec<Value>,
    pub healthy: bool,
}

struct Entry {
    read_at: Instant,
    generation: u64,
    value: Arc<Snapshot>,
}

/// The shared overview.
pub struct OverviewCache {
    /// Bumped by every change this server makes; an entry of an older generation is not served.
    generation: Arc<AtomicU64>,
    slot: tokio::sync::Mutex<Option<Entry>>,
}

impl OverviewCache {
    pub fn new(generation: Arc<AtomicU64>) -> OverviewCache {
        OverviewCache {
            generation,
            slot: tokio::sync::Mutex::new(None),
        }
    }

    /// Something the overview shows may have changed.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The current overview: the shared one while fresh, else read again (once, for all who ask meanwhile).
    pub async fn get(&self, repo: &Arc<Repository>) -> ApiResult<Arc<Snapshot>> {
        let mut slot = self.slot.lock().await;
        // Read before the overview: a change made while it is read leaves the entry already stale.
        let generation = self.generation.load(Ordering::SeqCst);
        if let Some(e) = &*slot {
            if e.generation == generation && e.read_at.elapsed() < FRESH_FOR {
                return Ok(e.value.clone());
            }
        }
        let repo = repo.clone();
        let value = Arc::new(
            blocking(move || {
                let o = Overview::read(&repo)?;
                let now = Utc::now();
                Ok(Snapshot {
                    instances: o.instances(now),
                    healthy: o.healthy(now),
                })
            })
            .await?,
        );
        *slot = Some(Entry {
            read_at: Instant::now(),
            generation,
            value: value.clone(),
        });
        Ok(value)
    }
}
