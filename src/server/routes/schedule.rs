//! The instance schedules, run inside the server (as `daemon` runs them).

use super::*;

/// A failed scheduled instance is retried after this long, not at every tick (as `daemon`).
const RETRY_AFTER: Duration = Duration::from_secs(300);

/// The instance schedules of `daemon`, as jobs: every tick, each due instance without a running job gets a
/// backup job (then retention and prune). The job re-checks under the instance's run lock that no other
/// run of it ended since the tick ([`runner::enter_scheduled_run`]): the due list comes from this server's
/// cache, which another host's runs reach only when it is refreshed.
pub async fn schedule_loop(st: Arc<AppState>, tick: Duration) {
    let mut failed_at: HashMap<String, Instant> = HashMap::new();
    let mut started: HashMap<String, Arc<Job>> = HashMap::new();
    loop {
        for (name, job) in std::mem::take(&mut started) {
            match job.status() {
                crate::server::jobs::Status::Failed => {
                    failed_at.insert(name, Instant::now());
                }
                crate::server::jobs::Status::Completed | crate::server::jobs::Status::Cancelled => {
                }
                _ => {
                    started.insert(name, job);
                }
            }
        }
        let repo = st.repo.clone();
        let decided = Utc::now();
        let due = blocking(move || {
            let states = runner::schedule_states_at(&repo, decided)?;
            Ok(crate::schedule::due_in_order(&states, decided))
        })
        .await;
        match due {
            Ok(names) => {
                for name in names {
                    let recent = failed_at
                        .get(&name)
                        .is_some_and(|t| t.elapsed() < RETRY_AFTER);
                    if recent || started.contains_key(&name) {
                        continue;
                    }
                    let work = backup_work(st.repo.clone(), name.clone(), Some(decided));
                    if let Ok(job) = st.jobs.submit("backup", Some(&name), work) {
                        eprintln!("cairn serve: {name}: scheduled backup started ({})", job.id);
                        started.insert(name, job);
                    }
                }
            }
            Err(e) => eprintln!("cairn serve: schedule: {}", e.message),
        }
        tokio::time::sleep(tick).await;
    }
}
