//! `wal-push`, `wal-fetch`, `wal-list` and `instance wal-setup`: the command-line side of [`cairn::wal`].
//!
//! `wal-push` and `wal-fetch` are run by PostgreSQL (archive_command, restore_command); their exit codes are
//! its contract. `wal-push`: 0 only once the file is durably archived, 1 otherwise (the archiver retries).
//! `wal-fetch`: 0 once the file is written in place, 1 when it is not archived (recovery probes for such
//! files, and takes a missing one for the end of the archive), and 255 for any other failure
//! ([`super::EXIT_WAL_FETCH_FAILED`]): above 125, which recovery takes as fatal, so that a file it cannot
//! read stops recovery instead of ending it early at the wrong point.

use std::path::Path;

use serde_json::json;

use cairn::instance::{self, InstanceConfig};
use cairn::pitr::Target;
use cairn::pitr_restore::PitrRequest;
use cairn::postgres::basebackup::{ArchivingProblem, BaseBackupFacts};
use cairn::wal::{self, PushOutcome};
use cairn::{Error, Repository, Result};

use super::commands::{human_bytes, Ctx};
use super::EXIT_OK;

/// The instance, which must have point-in-time recovery on.
fn wal_instance(repo: &Repository, name: &str) -> Result<InstanceConfig> {
    let cfg = instance::load(repo, name)?;
    if !cfg.wal {
        return Err(Error::Invalid(format!(
            "instance {name} does not archive WAL (turn it on with `cairn instance set {name} --wal`)"
        )));
    }
    Ok(cfg)
}

pub fn wal_push(ctx: &Ctx, name: &str, path: &Path) -> Result<i32> {
    // Run once per segment: the host's key cache spares each run the key derivation.
    cairn::crypto::keycache::enable();
    let repo = ctx.open()?;
    wal_instance(&repo, name)?;
    cairn::interrupt::install()?;
    let outcome = wal::push(&repo, name, path)?;
    let stored = outcome == PushOutcome::Stored;
    if ctx.json {
        ctx.print_json(&json!({"instance": name, "file": path.file_name().map(|f| f.to_string_lossy()), "stored": stored,
                               "key_cache": cairn::crypto::keycache::last_use().as_str()}))?;
    } else if !ctx.quiet {
        let verb = if stored {
            "archived"
        } else {
            "already archived with the same content:"
        };
        outln!("{verb} {}", path.display());
    }
    Ok(EXIT_OK)
}

pub fn wal_fetch(
    ctx: &Ctx,
    name: &str,
    file: &str,
    dest: &Path,
    lock_wait: std::time::Duration,
    system_identifier: Option<u64>,
) -> Result<i32> {
    cairn::crypto::keycache::enable();
    let repo = ctx.open()?;
    let size = wal::fetch_for_cluster(&repo, name, file, dest, lock_wait, system_identifier)?;
    if ctx.json {
        ctx.print_json(&json!({"instance": name, "file": file, "size": size,
                               "key_cache": cairn::crypto::keycache::last_use().as_str()}))?;
    } else if !ctx.quiet {
        outln!("restored {file} ({})", human_bytes(size));
    }
    Ok(EXIT_OK)
}

pub fn wal_list(ctx: &Ctx, name: Option<&str>) -> Result<i32> {
    let repo = ctx.open()?;
    let files = wal::list(&repo, name)?;
    if ctx.json {
        let rows: Vec<_> = files
            .iter()
            .map(|o| {
                json!({"instance": o.instance, "file": o.file, "timeline": o.timeline(), "size": o.size,
                       "blake3": o.blake3.to_hex(), "tree": o.tree.to_hex(), "time": o.time,
                       "system_identifier": o.system_identifier.map(|i| i.to_string())})
            })
            .collect();
        return ctx.print_json(&json!(rows)).map(|_| EXIT_OK);
    }
    for o in &files {
        outln!(
            "{:<16} {:<40} {:>10}  {}",
            o.instance,
            o.file,
            human_bytes(o.size),
            o.time.format("%Y-%m-%d %H:%M:%S")
        );
    }
    Ok(EXIT_OK)
}

/// The password source PostgreSQL's archiver must hand to `wal-push` for an encrypted repository: the
/// file (made absolute) or command this run was given; none (refused with `--apply`) when the password came
/// from `CAIRN_PASSWORD` or a prompt, which the server's environment does not have.
fn password_option(encrypted: bool, apply: bool) -> Result<String> {
    if !encrypted {
        return Ok(String::new());
    }
    let sources = cairn::crypto::password::configured_sources();
    if let Some(f) = sources.file {
        let f = std::path::absolute(&f).map_err(|e| Error::io(&f, e))?;
        return Ok(format!(
            " --password-file {}",
            shell_quote(&f.display().to_string())
        ));
    }
    if let Some(c) = sources.command {
        return Ok(format!(" --password-command {}", shell_quote(&c)));
    }
    let why =
        "the repository is encrypted and PostgreSQL (which runs this command) has no password: give \
               --password-file FILE (readable by the server's OS user) so the command names it";
    if apply {
        return Err(Error::Invalid(why.into()));
    }
    eprintln!("cairn: warning: {why}");
    Ok(String::new())
}

/// `text` quoted for a POSIX shell (PostgreSQL runs archive_command and restore_command with `sh -c`).
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// The settings that archive the instance's WAL with this binary into this repository.
fn settings(
    ctx: &Ctx,
    name: &str,
    archive_timeout: u32,
    encrypted: bool,
    apply: bool,
) -> Result<Vec<(&'static str, String)>> {
    let command = server_command(ctx, encrypted, apply)?;
    Ok(vec![
        ("archive_mode", "on".to_string()),
        (
            "archive_command",
            format!("{command} --quiet wal-push --instance {name} %p"),
        ),
        ("archive_timeout", format!("{archive_timeout}s")),
    ])
}

/// This binary with this repository's options, quoted for the shell PostgreSQL runs archive_command and
/// restore_command with: the server's OS user must be able to run it, read the password file (or run the
/// password command), write the repository (its lock files) and have a cache directory.
fn server_command(ctx: &Ctx, encrypted: bool, strict: bool) -> Result<String> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::Invalid(format!("cannot tell where this cairn binary is: {e}")))?;
    let (url, _) = ctx.repo_url()?;
    let repo = match url.local_path() {
        Some(p) => std::path::absolute(p)
            .map_err(|e| Error::io(p, e))?
            .display()
            .to_string(),
        None => url.to_string(),
    };
    let mut command = format!(
        "{} --repo {}",
        shell_quote(&exe.display().to_string()),
        shell_quote(&repo)
    );
    if let Some(endpoint) = ctx.s3_endpoint() {
        command += &format!(" --s3-endpoint {}", shell_quote(endpoint));
    }
    if ctx.s3_path_style() {
        command += " --s3-path-style";
    }
    command += &password_option(encrypted, strict)?;
    Ok(command)
}

pub fn wal_setup(
    ctx: &Ctx,
    repo: &Repository,
    name: &str,
    apply: bool,
    archive_timeout: u32,
) -> Result<i32> {
    let cfg = wal_instance(repo, name)?;
    let encrypted = repo.crypto().is_encrypted();
    let settings = settings(ctx, name, archive_timeout, encrypted, apply)?;
    let (restart, history) = if apply {
        let conn = cairn::postgres::PgConn::new(cfg.pg_conn.as_deref())?;
        let db = cfg.pg.as_deref().unwrap_or("postgres");
        let restart = cairn::postgres::alter_system(&conn, db, &settings)?;
        (
            Some(restart),
            archive_timeline_history(repo, name, &conn, db)?,
        )
    } else {
        (None, None)
    };
    if ctx.json {
        let map: serde_json::Map<String, serde_json::Value> = settings
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        return ctx
            .print_json(&json!({"instance": name, "settings": map, "applied": apply,
                                "restart_needed": restart, "history_archived": history}))
            .map(|_| EXIT_OK);
    }
    if !apply {
        outln!("# postgresql.conf (or ALTER SYSTEM; `cairn instance wal-setup {name} --apply` does it)");
    }
    for (k, v) in &settings {
        outln!("{k} = '{}'", v.replace('\'', "''"));
    }
    match restart {
        Some(r) if !r.is_empty() => outln!(
            "applied; {} takes effect at the next server restart: restart PostgreSQL now",
            r.join(", ")
        ),
        Some(_) => outln!("applied and reloaded"),
        None => outln!(
            "# changing archive_mode needs a server restart; the other settings a reload (pg_reload_conf())"
        ),
    }
    if let Some(file) = history {
        outln!("archived {file}, the history of the server's timeline, for instance {name}");
    }
    Ok(EXIT_OK)
}

/// Archives the server's timeline history file when the archive lacks it (a server restored and promoted
/// with archiving off, then pointed at the instance): returns its name when it was archived now.
fn archive_timeline_history(
    repo: &Repository,
    name: &str,
    conn: &cairn::postgres::PgConn,
    db: &str,
) -> Result<Option<String>> {
    let Some((file, bytes)) = cairn::postgres::basebackup::timeline_history(conn, db)? else {
        return Ok(None);
    };
    match wal::push_content(repo, name, &file, &bytes)? {
        PushOutcome::Stored => Ok(Some(file)),
        PushOutcome::AlreadyStored => Ok(None),
    }
}

/// `cairn instance base-backup NAME`: a snapshot with the instance's files and a base backup of its
/// cluster.
pub fn base_backup(ctx: &Ctx, repo: &Repository, name: &str) -> Result<i32> {
    let cfg = wal_instance(repo, name)?;
    cairn::interrupt::install()?;
    // A base backup is a run of the instance like any backup: not beside a scheduled one.
    let _run = cairn::lock::acquire_instance(repo.backend(), name, "instance base-backup")?;
    let progress = cairn::progress::Progress::new("base backup", None, ctx.quiet || ctx.json);
    let r = cairn::runner::base_backup_instance(repo, &cfg, progress)?;
    let facts = BaseBackupFacts::of(&r.snapshot);
    if ctx.json {
        return ctx
            .print_json(
                &json!({"snapshot_id": r.snapshot_id.to_hex(), "summary": r.snapshot.summary,
                                "basebackup": facts}),
            )
            .map(|_| EXIT_OK);
    }
    if !ctx.quiet {
        let f = facts.as_ref();
        outln!(
            "instance {name}: base backup {} saved (WAL {} to {}, timeline {}; {} read, {} added)",
            r.snapshot_id.short(),
            f.map_or("?", |f| f.start_lsn.as_str()),
            f.map_or("?", |f| f.stop_lsn.as_str()),
            f.map_or(0, |f| f.timeline),
            human_bytes(r.snapshot.summary.bytes_read),
            human_bytes(r.snapshot.summary.bytes_added)
        );
    }
    Ok(EXIT_OK)
}

/// `instance restore NAME --at T --pg-datadir DIR ...`.
#[derive(Debug)]
pub struct PitrArgs {
    /// A time, or `latest`.
    pub at: String,
    pub datadir: std::path::PathBuf,
    /// Restore the instance's files (from the snapshot at or before the same time) under this directory.
    pub files_to: Option<std::path::PathBuf>,
    pub overwrite: bool,
    pub start: bool,
    pub port: Option<u16>,
    pub pg_bin: Option<std::path::PathBuf>,
    pub os_user: Option<String>,
    pub timeout: std::time::Duration,
}

pub fn restore_pitr(ctx: &Ctx, repo: &Repository, name: &str, a: PitrArgs) -> Result<i32> {
    wal_instance(repo, name)?;
    let (target, at) = match a.at.as_str() {
        "latest" => (Target::Latest, None),
        t => {
            let at = super::commands::parse_time(t)?;
            (Target::Time(at.with_timezone(&chrono::Utc)), Some(at))
        }
    };
    let command = server_command(ctx, repo.crypto().is_encrypted(), true)?;
    let req = PitrRequest {
        target,
        datadir: std::path::absolute(&a.datadir).map_err(|e| Error::io(&a.datadir, e))?,
        restore_command: format!("{command} --quiet wal-fetch --instance {name} %f %p"),
        start: a.start,
        port: a.port,
        pg_bin: a.pg_bin,
        os_user: a.os_user,
        timeout: a.timeout,
    };
    let out = cairn::pitr_restore::restore(repo, name, &req)?;
    let files = match a.files_to {
        Some(dir) => {
            let files_req = cairn::instance_restore::RestoreRequest {
                at,
                target: Some(dir),
                overwrite: a.overwrite,
                ..Default::default()
            };
            let progress = cairn::progress::Progress::new("restore", None, true);
            Some(cairn::instance_restore::restore_instance(
                repo, name, files_req, &progress,
            )?)
        }
        None => None,
    };
    if ctx.json {
        let mut v = json!(out);
        if let Some(f) = &files {
            v["files"] = json!({"snapshot_id": f.snapshot_id, "restored_to": f.restored_to,
                                "files": f.files, "bytes": f.bytes});
        }
        return ctx.print_json(&v).map(|_| EXIT_OK);
    }
    if ctx.quiet {
        return Ok(EXIT_OK);
    }
    outln!(
        "restored base backup {} of {name} into {} (replays WAL {} to {}, recovery target {})",
        &out.snapshot_id[..8],
        out.datadir.display(),
        out.replay.first_segment,
        out.replay.last_segment,
        out.target
    );
    if out.started {
        outln!(
            "the server recovered to {}, promoted and accepts connections{} (log: {})",
            out.target,
            out.port
                .map(|p| format!(" on port {p}"))
                .unwrap_or_default(),
            out.log
                .as_deref()
                .map(|l| l.display().to_string())
                .unwrap_or_default()
        );
    } else {
        outln!(
            "start it with: pg_ctl start -D {} (it recovers to the target, then promotes)",
            out.datadir.display()
        );
    }
    if let Some(lsn) = &out.replayed_to_end {
        outln!(
            "no transaction in the archive committed after {}: recovery replayed the archive to its end ({lsn}), \
             which is the cluster as it was then",
            out.target
        );
    }
    outln!("archive_mode is off in the restored cluster: turn archiving on with `cairn instance wal-setup` once it is kept");
    if let Some(f) = &files {
        for d in &f.restored_to {
            outln!(
                "restored the files of snapshot {} of {name} to {}",
                &f.snapshot_id[..8],
                d.display()
            );
        }
    }
    Ok(EXIT_OK)
}

/// `health`'s view of one instance's WAL archiving.
#[derive(Debug, serde::Serialize)]
pub struct WalHealth {
    /// ok, wal-failing, wal-behind, or wal-unknown (the server could not be asked).
    pub status: &'static str,
    pub problem: Option<String>,
    /// The newest segment in the repository and when it was archived.
    pub newest_segment: Option<String>,
    pub newest_archived_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Asks the server of every instance with `--wal` and a database how its archiver does (see
/// [`cairn::postgres::basebackup::archiving_problem`]).
pub fn archiving_health(
    repo: &Repository,
    grace: chrono::Duration,
) -> Result<std::collections::BTreeMap<String, WalHealth>> {
    let mut out = std::collections::BTreeMap::new();
    for cfg in instance::list(repo)?
        .into_iter()
        .filter(|c| c.wal && !c.paused)
    {
        let Some(db) = cfg.pg.as_deref() else {
            continue;
        };
        let newest = wal::list(repo, Some(&cfg.name))?
            .into_iter()
            .max_by_key(|o| o.time);
        let asked = cairn::postgres::PgConn::new(cfg.pg_conn.as_deref())
            .and_then(|conn| cairn::postgres::basebackup::archiver_status(&conn, db));
        let (status, problem) = match asked {
            Ok(st) => match cairn::postgres::basebackup::archiving_problem(&st, grace) {
                None => ("ok", None),
                Some((ArchivingProblem::Failing, p)) => ("wal-failing", Some(p)),
                Some((ArchivingProblem::Behind, p)) => ("wal-behind", Some(p)),
            },
            Err(e) => (
                "wal-unknown",
                Some(format!(
                    "cannot ask the server how its WAL archiving does: {e}"
                )),
            ),
        };
        out.insert(
            cfg.name.clone(),
            WalHealth {
                status,
                problem,
                newest_segment: newest.as_ref().map(|o| o.file.clone()),
                newest_archived_at: newest.map(|o| o.time),
            },
        );
    }
    Ok(out)
}
