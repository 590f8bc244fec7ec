//! Instances: named units of a database and file trees with their own schedule, retention and hooks, and
//! the log of every run.
//!
//! Storage: configurations and run-log entries are repository objects, so every host sharing the repository
//! sees the same instances and history, and deleting the cache loses neither. A configuration is a series
//! of immutable revisions of which the newest wins (removal is a tombstone), see [`crate::instance_store`];
//! each run is an immutable object, see [`crate::run_log`]. The `instances` and `runs` rows of the index are
//! their cache, brought up to date whenever the repository is opened ([`sync_from_objects`]); everything
//! here reads the cache and writes objects first.
//! Configs are validated on write: names `[a-z0-9_-]`, absolute paths, cron expressions that parse and fire
//! within [`crate::schedule::FIRE_HORIZON_YEARS`], and no password in a connection string (passwords belong
//! in ~/.pgpass or PGPASSWORD, never in the repository). A config edited by hand to hold a password is
//! refused on load ([`load`]) and never printed ([`InstanceConfig::printable`]).

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::exclude::ExcludeOptions;
use crate::repo::Repository;
use crate::schedule::{Priority, Retention, Schedule};

/// One instance's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceConfig {
    pub name: String,
    #[serde(default)]
    pub pg: Option<String>,
    #[serde(default)]
    pub pg_conn: Option<String>,
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    pub priority: Priority,
    /// Cron expression; `None` means manual runs only.
    #[serde(default)]
    pub schedule: Option<String>,
    pub retention: Retention,
    #[serde(default)]
    pub pre_hook: Option<String>,
    #[serde(default)]
    pub post_hook: Option<String>,
    #[serde(default)]
    pub notify: Option<String>,
    /// Dead man's switch URL pinged at the start and end of every backup (see [`crate::ping`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_url: Option<String>,
    #[serde(default)]
    pub paused: bool,
    pub created: DateTime<Utc>,
    /// What its backups leave out (see [`crate::exclude`]).
    #[serde(default, skip_serializing_if = "ExcludeOptions::is_empty")]
    pub excludes: ExcludeOptions,
    /// Point-in-time recovery: the cluster archives its WAL here (`--wal`; see [`crate::wal`]). Absent
    /// (false) in configurations that predate it, so they keep their bytes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wal: bool,
}

/// What moving an instance to another priority did to its schedule and retention
/// ([`InstanceConfig::set_priority`]): each of `"schedule"` and `"retention"` is in `changed` (it was the old
/// priority's preset and is now the new one's) or in `kept` (a custom setting, left as it was), or in
/// neither (nothing to change: the same value either way).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct PriorityChange {
    pub changed: Vec<&'static str>,
    pub kept: Vec<&'static str>,
}

impl InstanceConfig {
    /// Moves the instance to priority `p`. Its schedule and retention take the new priority's presets only
    /// where they still equal the old priority's: a custom setting (`--keep-daily 90`, a cron expression of
    /// one's own) is kept. Replacing it would silently shrink retention, and the next scheduled run would
    /// forget the snapshots the operator had chosen to keep.
    pub fn set_priority(&mut self, p: Priority) -> PriorityChange {
        let old = self.priority;
        let mut change = PriorityChange::default();
        let new_schedule = p.default_schedule().map(str::to_string);
        if self.schedule != new_schedule {
            if self.schedule == old.default_schedule().map(str::to_string) {
                self.schedule = new_schedule;
                change.changed.push("schedule");
            } else {
                change.kept.push("schedule");
            }
        }
        let new_retention = p.default_retention();
        if self.retention != new_retention {
            if self.retention == old.default_retention() {
                self.retention = new_retention;
                change.changed.push("retention");
            } else {
                change.kept.push("retention");
            }
        }
        self.priority = p;
        change
    }

    /// A config with the priority's preset schedule and retention.
    pub fn new(name: &str, priority: Priority) -> InstanceConfig {
        InstanceConfig {
            name: name.to_string(),
            pg: None,
            pg_conn: None,
            paths: Vec::new(),
            priority,
            schedule: priority.default_schedule().map(str::to_string),
            retention: priority.default_retention(),
            pre_hook: None,
            post_hook: None,
            notify: None,
            ping_url: None,
            paused: false,
            created: Utc::now(),
            excludes: ExcludeOptions::default(),
            wal: false,
        }
    }

    /// Checks every field a user controls.
    pub fn validate(&self) -> Result<()> {
        validate_name(&self.name)?;
        if let Some(s) = &self.schedule {
            Schedule::parse(s)?.check_fires(Utc::now())?;
        }
        self.retention.validate()?;
        for p in &self.paths {
            if !p.is_absolute() {
                return Err(Error::Invalid(format!(
                    "path {}: must be absolute",
                    p.display()
                )));
            }
        }
        if self.pg.is_none() && self.paths.is_empty() {
            return Err(Error::Invalid(format!(
                "instance {}: give --pg DB and/or --path DIR",
                self.name
            )));
        }
        if let Some(c) = &self.pg_conn {
            crate::postgres::parse_conninfo(c)?;
        }
        if let Some(u) = &self.ping_url {
            crate::ping::validate_url(u)?;
        }
        self.excludes.validate()
    }

    /// Refuses a stored connection string that holds a password (a config edited by hand): it is neither
    /// used nor printed. The message does not quote it.
    pub fn check_stored_conn(&self) -> Result<()> {
        match &self.pg_conn {
            Some(c) if crate::postgres::parse_conninfo(c).is_err() => Err(Error::Invalid(format!(
                "instance {}: its stored connection string holds a password or does not parse (edited by \
                 hand?); cairn neither uses nor prints it: set a new one with `cairn instance set {} --pg-conn \
                 ...` and keep the password in ~/.pgpass or PGPASSWORD",
                self.name, self.name
            ))),
            _ => Ok(()),
        }
    }

    /// The config as it may be shown: a stored connection string that fails [`Self::check_stored_conn`]
    /// is replaced by a note.
    pub fn printable(&self) -> InstanceConfig {
        let mut c = self.clone();
        if c.check_stored_conn().is_err() {
            c.pg_conn = Some(REFUSED_CONN.into());
        }
        c
    }

    /// The parsed schedule, if any.
    pub fn parsed_schedule(&self) -> Result<Option<Schedule>> {
        self.schedule.as_deref().map(Schedule::parse).transpose()
    }
}

/// Shown instead of a stored connection string that holds a password.
pub const REFUSED_CONN: &str =
    "(refused: holds a password; set a new one with `cairn instance set`)";

/// Instance names: 1 to 64 of `[a-z0-9_-]`.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "instance name {name:?}: use 1-64 of a-z, 0-9, _ and -"
        )))
    }
}

/// Validates and stores a config: a new revision object, then the cache row (see
/// [`crate::instance_store::write`]).
pub fn save(repo: &Repository, cfg: &InstanceConfig) -> Result<()> {
    cfg.validate()?;
    crate::instance_store::write(repo, &cfg.name, Some(cfg))
}

/// Loads one instance's config to use or show it: one whose stored connection string holds a password is
/// refused (see [`InstanceConfig::check_stored_conn`]).
pub fn load(repo: &Repository, name: &str) -> Result<InstanceConfig> {
    let cfg = load_for_update(repo, name).map_err(|e| match e {
        Error::NotFound(_) => damaged_object(repo, name).unwrap_or(e),
        other => other,
    })?;
    cfg.check_stored_conn()?;
    Ok(cfg)
}

/// Loads one instance's config to change it (`instance set`, `pause`, `remove`): a refused connection
/// string can then be replaced; [`save`] validates the result.
pub fn load_for_update(repo: &Repository, name: &str) -> Result<InstanceConfig> {
    validate_name(name)?;
    let json: Option<String> = repo
        .index()
        .raw()
        .query_row(
            "SELECT json FROM instances WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )
        .ok();
    let json = json.ok_or_else(|| {
        Error::NotFound(format!(
            "no instance named {name:?} (see `cairn instance list`)"
        ))
    })?;
    serde_json::from_str(&json).map_err(|e| Error::corrupt(format!("instance {name}"), e))
}

/// Every instance, by name.
pub fn list(repo: &Repository) -> Result<Vec<InstanceConfig>> {
    let listed = list_rows(repo)?;
    // An object that has no row failed to load: damaged, or (in an encrypted repository) written without
    // the key. Reported like any corruption, so nothing runs as if the instance did not exist.
    for revs in crate::instance_store::revisions(repo)?.values() {
        if let Some(newest) = revs.last() {
            if let Some(e) = damaged_object(repo, &newest.object) {
                return Err(e);
            }
        }
    }
    Ok(listed)
}

/// The corruption of the instance revision `object`, if reading it fails that way (a revision deleted
/// since the listing is not corruption).
fn damaged_object(repo: &Repository, object: &str) -> Option<Error> {
    match crate::object_io::get(
        repo.backend().as_ref(),
        crate::backend::ObjectKind::Instance,
        object,
    ) {
        Err(e @ Error::Corrupt { .. }) => Some(e),
        _ => None,
    }
}

fn list_rows(repo: &Repository) -> Result<Vec<InstanceConfig>> {
    let index = repo.index();
    let mut st = index
        .raw()
        .prepare("SELECT name, json FROM instances ORDER BY name")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    rows.map(|r| {
        let (name, json) = r?;
        serde_json::from_str(&json).map_err(|e| Error::corrupt(format!("instance {name}"), e))
    })
    .collect()
}

/// Removes an instance's config (a tombstone revision; its snapshots stay unless the caller forgets them).
pub fn remove(repo: &Repository, name: &str) -> Result<()> {
    load_for_update(repo, name)?;
    crate::instance_store::write(repo, name, None)
}

/// Reloads every instance row and the run log from their objects (after `repair index`); returns how many
/// instances were read.
pub fn reload_from_files(repo: &Repository) -> Result<usize> {
    let n = crate::instance_store::sync(repo, true)?;
    crate::run_log::sync(repo)?;
    Ok(n)
}

/// Brings the cached instance rows and run log up to date with their objects, reading only what changed.
/// A cache that cannot be written here (a full disk) is left as it is: readers of the repository must still
/// work, and every command that changes an instance or records a run writes the repository first anyway.
pub fn sync_from_objects(repo: &Repository) -> Result<()> {
    let synced = crate::instance_store::sync(repo, false).and_then(|_| crate::run_log::sync(repo));
    match synced {
        Err(e) if crate::repo::cannot_write(&e) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// Runs `f` in one cache transaction that takes the write lock at its start (`BEGIN IMMEDIATE`), waiting
/// for other processes' writers as long as the busy timeout allows. A transaction that reads before it
/// writes must start so: a deferred one that another process writes under fails at once ("database is
/// locked") when it tries to write.
pub(crate) fn write_transaction<T>(
    repo: &Repository,
    f: impl FnOnce(&rusqlite::Transaction) -> Result<T>,
) -> Result<T> {
    let idx = repo.index();
    let tx =
        rusqlite::Transaction::new_unchecked(idx.raw(), rusqlite::TransactionBehavior::Immediate)?;
    let out = f(&tx)?;
    tx.commit()?;
    Ok(out)
}

/// Creates a cache table unless it exists; a cache that has it is not written (a full disk can still be
/// read).
pub(crate) fn ensure_table(repo: &Repository, name: &str, create: &str) -> Result<()> {
    let idx = repo.index();
    let exists = idx
        .raw()
        .prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
        .exists(params![name])?;
    if !exists {
        idx.raw().execute(create, [])?;
    }
    Ok(())
}

/// One recorded run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub instance: Option<String>,
    pub kind: String,
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
    /// `ok`, `partial`, `failed` or `running`.
    pub status: String,
    pub bytes: Option<u64>,
    pub snapshot_id: Option<String>,
    pub error: Option<String>,
}

/// Appends a run to the log (an object, then its cache row; see [`crate::run_log::record`]).
pub fn record_run(repo: &Repository, r: &RunRecord) -> Result<()> {
    crate::run_log::record(repo, r)
}

/// The run log, oldest first, optionally for one instance.
pub fn runs(repo: &Repository, instance: Option<&str>) -> Result<Vec<RunRecord>> {
    let rows = match instance {
        Some(name) => runs_where_with(repo, "instance = ?1", Some(name))?,
        None => runs_where_with(repo, "1", None)?,
    };
    Ok(rows.into_iter().map(|(_, r)| r).collect())
}

/// The cached runs matching the SQL condition `cond` (over the `runs` table), oldest first, with their
/// row numbers.
pub(crate) fn runs_where(repo: &Repository, cond: &str) -> Result<Vec<(i64, RunRecord)>> {
    runs_where_with(repo, cond, None)
}

fn runs_where_with(
    repo: &Repository,
    cond: &str,
    arg: Option<&str>,
) -> Result<Vec<(i64, RunRecord)>> {
    let index = repo.index();
    let sql = format!(
        "SELECT run_no, instance, kind, start, end, status, bytes, snapshot_id, error FROM runs
         WHERE {cond} ORDER BY start, run_no"
    );
    let mut st = index.raw().prepare(&sql)?;
    let map = |r: &rusqlite::Row| {
        Ok((
            r.get::<_, i64>(0)?,
            (
                r.get::<_, Option<String>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, Option<i64>>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, Option<String>>(8)?,
            ),
        ))
    };
    let rows: Vec<_> = match arg {
        Some(a) => st
            .query_map(params![a], map)?
            .collect::<rusqlite::Result<_>>()?,
        None => st.query_map([], map)?.collect::<rusqlite::Result<_>>()?,
    };
    let time = crate::run_log::parse_time;
    rows.into_iter()
        .map(
            |(no, (instance, kind, start, end, status, bytes, snapshot_id, error))| {
                Ok((
                    no,
                    RunRecord {
                        instance,
                        kind,
                        start: time(&start)?,
                        end: end.as_deref().map(time).transpose()?,
                        status,
                        bytes: bytes.map(|b| b as u64),
                        snapshot_id,
                        error,
                    },
                ))
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn configs_are_validated_stored_and_survive_an_index_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path().join("r"), Config::new_default()).unwrap();
        let mut cfg = InstanceConfig::new("odoo-prod", Priority::High);
        assert!(save(&repo, &cfg).is_err(), "no source");
        cfg.paths = vec!["relative".into()];
        assert!(save(&repo, &cfg).is_err(), "relative path");
        cfg.paths = vec!["/srv/filestore".into()];
        cfg.pg_conn = Some("host=db password=hunter2".into());
        assert!(save(&repo, &cfg).is_err(), "password in conn string");
        cfg.pg_conn = Some("postgresql://u:hunter2@db/x".into());
        assert!(save(&repo, &cfg).is_err(), "password in a URI");
        cfg.pg_conn = Some("host=db".into());
        cfg.schedule = Some("not cron".into());
        assert!(save(&repo, &cfg).is_err());
        cfg.schedule = Some("0 0 31 2 *".into());
        assert!(save(&repo, &cfg).is_err(), "never fires");
        cfg.schedule = Some("0 3 * * *".into());
        save(&repo, &cfg).unwrap();
        assert!(validate_name("Bad Name").is_err());
        assert_eq!(load(&repo, "odoo-prod").unwrap(), cfg);
        repo.index()
            .raw()
            .execute("DELETE FROM instances", [])
            .unwrap();
        assert_eq!(reload_from_files(&repo).unwrap(), 1);
        assert_eq!(list(&repo).unwrap(), vec![cfg]);
        remove(&repo, "odoo-prod").unwrap();
        assert!(load(&repo, "odoo-prod").is_err());
    }

    #[test]
    fn runs_are_logged_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path().join("r"), Config::new_default()).unwrap();
        for (i, status) in ["ok", "failed"].iter().enumerate() {
            record_run(
                &repo,
                &RunRecord {
                    instance: Some("a".into()),
                    kind: "backup".into(),
                    start: DateTime::from_timestamp(1_700_000_000 + i as i64, 0).unwrap(),
                    end: None,
                    status: status.to_string(),
                    bytes: Some(5),
                    snapshot_id: None,
                    error: None,
                },
            )
            .unwrap();
        }
        let log = runs(&repo, Some("a")).unwrap();
        assert_eq!(
            log.iter().map(|r| r.status.as_str()).collect::<Vec<_>>(),
            ["ok", "failed"]
        );
        assert!(runs(&repo, Some("b")).unwrap().is_empty());
        assert_eq!(runs(&repo, None).unwrap().len(), 2);
    }

    #[test]
    fn a_new_priority_replaces_only_the_old_priority_presets() {
        let mut cfg = InstanceConfig::new("shop", Priority::Medium);
        cfg.retention = Retention {
            daily: Some(90),
            ..Retention::default()
        };
        let change = cfg.set_priority(Priority::Low);
        assert_eq!(cfg.priority, Priority::Low);
        assert_eq!(cfg.retention.daily, Some(90));
        assert_eq!(cfg.schedule.as_deref(), Priority::Low.default_schedule());
        assert_eq!(
            (change.changed, change.kept),
            (vec!["schedule"], vec!["retention"])
        );
        // Presets all along: both follow; back to the same priority: nothing to change.
        let mut cfg = InstanceConfig::new("blog", Priority::High);
        let change = cfg.set_priority(Priority::Manual);
        assert_eq!(cfg.schedule, None);
        assert_eq!(cfg.retention, Priority::Manual.default_retention());
        assert_eq!(change.changed, vec!["schedule", "retention"]);
        assert_eq!(
            cfg.set_priority(Priority::Manual),
            PriorityChange::default()
        );
    }
}
