//! One function per subcommand: validate arguments, call the library, print the result.

use std::io::Write;
use std::path::PathBuf;

use cairn::backend::RepoUrl;
use cairn::backup::{self, BackupOptions, ParentChoice, StreamSource};
use cairn::check::{self, ReadData};
use cairn::config::Config;
use cairn::progress::Progress;
use cairn::restore::{self, RestoreOptions};
use cairn::snapshot::Snapshot;
use cairn::tree::NodeKind;
use cairn::{Error, Id, Repository, Result};
use chrono::{DateTime, FixedOffset, Local, NaiveDateTime, TimeZone};
use serde_json::json;

use super::args::{
    BackupArgs, CheckArgs, Cli, Command, ForgetArgs, InitArgs, RepairWhat, RestoreArgs,
};
use super::{instance, pg};
use super::{EXIT_ERROR, EXIT_OK, EXIT_PARTIAL};
use cairn::latest;

/// Global options every command sees.
pub struct Ctx {
    repo: Option<PathBuf>,
    s3_endpoint: Option<String>,
    s3_path_style: bool,
    connections: Option<u16>,
    pub json: bool,
    pub quiet: bool,
}

impl Ctx {
    /// The repository's location and whether the user named it (a named repository is never created
    /// implicitly).
    pub fn repo_url(&self) -> Result<(RepoUrl, bool)> {
        let (path, named) = match &self.repo {
            Some(p) => (p.clone(), true),
            None => cairn::repo::default_repo_path()
                .map(|p| (p, false))
                .ok_or_else(|| {
                    Error::Invalid(
                        "no repository: pass --repo or set CAIRN_REPO (HOME is unset)".into(),
                    )
                })?,
        };
        let url =
            RepoUrl::parse(&path)?.with_s3_options(self.s3_endpoint.clone(), self.s3_path_style);
        Ok((url, named))
    }

    /// Another repository named on the command line (`copy --from-repo`), with the same S3 settings.
    pub fn other_repo_url(&self, raw: &std::path::Path) -> Result<RepoUrl> {
        Ok(RepoUrl::parse(raw)?.with_s3_options(self.s3_endpoint.clone(), self.s3_path_style))
    }

    /// `--s3-endpoint`, to pass on to commands cairn has others run (archive_command).
    pub fn s3_endpoint(&self) -> Option<&str> {
        self.s3_endpoint.as_deref()
    }

    /// `--s3-path-style`.
    pub fn s3_path_style(&self) -> bool {
        self.s3_path_style
    }

    pub fn open(&self) -> Result<Repository> {
        Ok(self.configure(Repository::open(&self.repo_url()?.0)?))
    }

    /// Applies the global options that tune an open repository (`--connections`).
    pub fn configure(&self, repo: Repository) -> Repository {
        if let Some(n) = self.connections {
            repo.set_connections(usize::from(n));
        }
        repo
    }

    pub fn print_json(&self, v: &serde_json::Value) -> Result<()> {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, v).map_err(|e| Error::Invalid(e.to_string()))?;
        writeln!(out).map_err(|e| Error::io("stdout", e))
    }
}

pub fn dispatch(cli: Cli) -> Result<i32> {
    cairn::backend::throttle::set_process_limits(cairn::backend::throttle::Limits {
        upload_kib: cli.limit_upload,
        download_kib: cli.limit_download,
    });
    let ctx = Ctx {
        repo: cli.repo,
        s3_endpoint: cli.s3_endpoint,
        s3_path_style: cli.s3_path_style,
        connections: cli.connections,
        json: cli.json,
        quiet: cli.quiet,
    };
    cairn::crypto::password::set_sources(cairn::crypto::password::Sources {
        file: cli.password_file,
        command: cli.password_command,
    });
    refuse_json_for_data(&cli.command, ctx.json)?;
    for name in cli.command.instance_names() {
        cairn::instance::validate_name(name)?;
    }
    // Restore, check, forget and prune go into the run log (backups are logged by the instance runner).
    let logged = match &cli.command {
        Command::Restore(a) => Some(("restore", a.instance.clone())),
        Command::Check(_) => Some(("check", None)),
        Command::Forget(a) => Some(("forget", a.instance.clone())),
        Command::Prune { .. } => Some(("prune", None)),
        _ => None,
    };
    let start = chrono::Utc::now();
    let result = run_command(&ctx, cli.command);
    if let Some((kind, instance)) = logged {
        log_run(&ctx, kind, instance, start, &result);
    }
    result
}

/// `dump` and `export` write data on stdout, which cannot also be one JSON document: `--json` is a usage
/// error there, refused before anything is read or written.
fn refuse_json_for_data(command: &Command, json: bool) -> Result<()> {
    let name = match command {
        Command::Dump { .. } => "dump",
        Command::Export { .. } => "export",
        Command::Completions { .. } => "completions",
        Command::Man { dir: None } => "man",
        _ => return Ok(()),
    };
    if json {
        return Err(Error::Usage(format!(
            "--json does not apply to `{name}`: its standard output is the data itself"
        )));
    }
    Ok(())
}

/// Records a finished command in the run log; a repository that cannot be opened has nothing to log to.
fn log_run(
    ctx: &Ctx,
    kind: &str,
    instance: Option<String>,
    start: chrono::DateTime<chrono::Utc>,
    result: &Result<i32>,
) {
    let Ok(repo) = ctx.open() else { return };
    if repo.is_read_only() {
        return; // nothing can be recorded in a repository that cannot be written from here
    }
    let record = cairn::instance::RunRecord {
        instance,
        kind: kind.into(),
        start,
        end: Some(chrono::Utc::now()),
        status: if matches!(result, Ok(EXIT_OK)) {
            "ok".into()
        } else {
            "failed".into()
        },
        bytes: None,
        snapshot_id: None,
        error: result.as_ref().err().map(|e| e.to_string()),
    };
    if let Err(e) = cairn::instance::record_run(&repo, &record) {
        eprintln!("cairn: warning: could not record the run: {e}");
    }
}

fn run_command(ctx: &Ctx, command: Command) -> Result<i32> {
    match command {
        Command::Init(a) => init(ctx, a),
        Command::Backup(a) => backup_cmd(ctx, a),
        Command::Snapshots { instance } => snapshots(ctx, instance.as_deref()),
        Command::Show { snapshot, instance } => show(ctx, &snapshot, instance.as_deref()),
        Command::Ls {
            snapshot,
            path,
            instance,
        } => ls(ctx, &snapshot, path.as_deref(), instance.as_deref()),
        Command::Restore(a) => restore_cmd(ctx, a),
        Command::Dump {
            snapshot,
            name,
            instance,
        } => dump(ctx, &snapshot, &name, instance.as_deref()),
        Command::Check(a) => check_cmd(ctx, a),
        Command::Copy(a) => super::copy::copy_cmd(ctx, a),
        Command::Repair {
            what: RepairWhat::Index,
        } => repair_index(ctx),
        Command::Repair {
            what: RepairWhat::Snapshots { forget_damaged },
        } => repair_snapshots(ctx, forget_damaged),
        Command::Forget(a) => forget(ctx, a),
        Command::Prune {
            max_unused,
            dry_run,
        } => prune(ctx, max_unused, dry_run).map(|_| EXIT_OK),
        Command::Unlock { remove_all } => unlock(ctx, remove_all),
        Command::Completions { shell } => super::docs::completions(shell),
        Command::Man { dir } => super::docs::man(ctx, dir),
        Command::Key { action } => super::keys::key(ctx, action),
        Command::Instance { action } => instance::instance(ctx, action),
        Command::RunDue { log_file } => instance::run_due(ctx, log_file.as_deref()),
        Command::Daemon {
            max_jobs,
            tick_seconds,
        } => instance::daemon(ctx, max_jobs, tick_seconds),
        Command::Serve(a) => super::serve::serve(ctx, a),
        Command::Token { action } => super::serve::token(ctx, action),
        Command::Log { instance: i } => instance::log(ctx, i.as_deref()),
        Command::Stats {
            instance: i,
            prometheus,
        } => instance::stats(ctx, i.as_deref(), prometheus),
        Command::Health {
            grace_minutes,
            wal_grace_seconds,
        } => instance::health(ctx, grace_minutes, wal_grace_seconds),
        Command::Schedule { kind } => instance::schedule_cmd(ctx, kind),
        Command::ImportArchive {
            instance: i,
            time,
            force_time,
            file,
        } => import_archive(ctx, i, &time, force_time, &file),
        Command::Export {
            snapshot,
            format,
            instance: i,
            output,
            filestore,
        } => {
            let opts = cairn::export::ExportOptions {
                format: format.parse()?,
                filestore,
            };
            export(ctx, &snapshot, &opts, i.as_deref(), output.as_deref())
        }
        Command::Diff {
            snapshot1,
            snapshot2,
            instance: i,
        } => super::explore::diff(ctx, &snapshot1, &snapshot2, i.as_deref()),
        Command::Find {
            pattern,
            instance: i,
        } => super::explore::find(ctx, &pattern, i.as_deref()),
        Command::Mount { mountpoint } => super::mount::mount(ctx, &mountpoint),
        Command::WalPush { instance: i, path } => super::wal::wal_push(ctx, &i, &path),
        Command::WalFetch {
            instance: i,
            file,
            dest,
        } => super::wal::wal_fetch(ctx, &i, &file, &dest),
        Command::WalList { instance: i } => super::wal::wal_list(ctx, i.as_deref()),
    }
}

fn init(ctx: &Ctx, a: InitArgs) -> Result<i32> {
    let (path, _) = ctx.repo_url()?;
    let mut config = Config::new_default();
    if !a.insecure_no_encryption {
        config = config.encrypted();
    }
    if let Some(level) = a.compression_level {
        config.compression_level = level;
    }
    if let Some(level) = a.stream_compression_level {
        config.stream_compression_level = Some(level);
    }
    let from = match &a.from_repo {
        Some(r) => Some(Repository::open(ctx.other_repo_url(r)?)?),
        None => None,
    };
    let repo = Repository::init_sharing(&path, config, from.as_ref())?;
    if ctx.json {
        ctx.print_json(
            &json!({"repository": path.to_string(), "repository_id": repo.config().repository_id,
                    "encrypted": repo.crypto().is_encrypted()}),
        )?;
    } else if !ctx.quiet {
        println!(
            "created repository {} at {path}",
            repo.config().repository_id,
        );
    }
    Ok(EXIT_OK)
}

/// Opens the repository for a backup, creating the default one (only) on first use.
fn open_for_backup(ctx: &Ctx) -> Result<Repository> {
    let (path, named) = ctx.repo_url()?;
    if !named && !Repository::exists(&path)? {
        eprintln!("cairn: creating the default repository at {path}");
        // Encrypted like every repository `init` makes: the password comes from the usual sources (a
        // missing one is exit code 12, before anything is created).
        let config = Config::new_default().encrypted();
        return Ok(ctx.configure(Repository::init(&path, config)?));
    }
    Ok(ctx.configure(Repository::open(&path)?))
}

fn backup_cmd(ctx: &Ctx, a: BackupArgs) -> Result<i32> {
    cairn::interrupt::install()?;
    let mut streams = Vec::new();
    if let Some(name) = &a.stdin_name {
        if a.stdin_from_command {
            streams.push(StreamSource::from_command(name, &a.command)?);
        } else if a.stdin {
            streams.push(StreamSource::from_stdin(name));
        } else {
            return Err(Error::Invalid(
                "--stdin-name needs --stdin or --stdin-from-command".into(),
            ));
        }
    } else if !a.command.is_empty() {
        return Err(Error::Invalid(
            "a command after `--` needs --stdin-from-command".into(),
        ));
    }
    if a.paths.is_empty() && streams.is_empty() && a.pg.is_none() {
        return Err(Error::Invalid(
            "nothing to back up: give paths, --pg, --stdin or --stdin-from-command".into(),
        ));
    }
    let time = snapshot_time(a.time.as_deref(), a.force_time)?;
    let repo = open_for_backup(ctx)?;
    let mut finalize_metadata = Vec::new();
    if !a.excludes.exclude_files.is_empty() && a.paths.is_empty() {
        return Err(Error::Invalid(
            "--exclude-file needs paths to back up".into(),
        ));
    }
    if let Some((stream, hook)) = pg::dump_source(&a)? {
        streams.push(stream);
        finalize_metadata.push(hook);
    }
    let parent = match &a.parent {
        Some(p) => ParentChoice::Id(repo.resolve_snapshot(p, a.instance.as_deref())?.0),
        None => ParentChoice::Auto,
    };
    let result = backup::backup(
        &repo,
        BackupOptions {
            paths: a.paths,
            streams,
            instance: a.instance,
            tags: a.tags,
            parent,
            force: a.force,
            time,
            metadata: None,
            finalize_metadata,
            progress: Progress::new("backup", None, ctx.quiet || ctx.json),
            excludes: a.excludes.options(),
            ..BackupOptions::default()
        },
    )?;
    let s = &result.snapshot;
    if ctx.json {
        let mut v = serde_json::to_value(&s.summary).map_err(|e| Error::Invalid(e.to_string()))?;
        v["snapshot_id"] = json!(result.snapshot_id.to_hex());
        v["partial"] = json!(s.partial);
        v["warnings"] = json!(result.warnings);
        v["excluded"] = json!(result.excluded);
        ctx.print_json(&v)?;
    } else if !ctx.quiet {
        let m = &s.summary;
        println!(
            "snapshot {} saved: {} new, {} changed, {} unmodified files; {} read, {} added in {} new chunks ({:.1}s)",
            result.snapshot_id.short(),
            m.files_new,
            m.files_changed,
            m.files_unmodified,
            human_bytes(m.bytes_read),
            human_bytes(m.bytes_added),
            m.chunks_new,
            m.duration_s
        );
    }
    if s.partial {
        eprintln!(
            "cairn: snapshot {} is partial: some files could not be read (see above)",
            result.snapshot_id.short()
        );
        return Ok(EXIT_PARTIAL);
    }
    Ok(EXIT_OK)
}

/// A `--time` for a new snapshot: parsed, and refused when dated in the future unless `force`.
pub fn snapshot_time(time: Option<&str>, force: bool) -> Result<Option<DateTime<FixedOffset>>> {
    let Some(t) = time.map(parse_time).transpose()? else {
        return Ok(None);
    };
    cairn::schedule::check_snapshot_time(t, chrono::Utc::now(), force)?;
    Ok(Some(t))
}

/// Accepts RFC 3339 or a local "YYYY-MM-DD HH:MM[:SS]".
pub fn parse_time(s: &str) -> Result<DateTime<FixedOffset>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t);
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, fmt) {
            if let Some(t) = Local.from_local_datetime(&n).earliest() {
                return Ok(t.fixed_offset());
            }
        }
    }
    Err(Error::Invalid(format!(
        "cannot parse time {s:?} (want RFC 3339 or \"YYYY-MM-DD HH:MM\")"
    )))
}

fn snapshot_json(id: &Id, s: &Snapshot) -> serde_json::Value {
    s.to_json(id)
}

fn snapshots(ctx: &Ctx, instance: Option<&str>) -> Result<i32> {
    let repo = ctx.open()?;
    let list: Vec<_> = repo
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| instance.is_none() || s.instance.as_deref() == instance)
        .collect();
    if ctx.json {
        ctx.print_json(&serde_json::Value::Array(
            list.iter().map(|(id, s)| snapshot_json(id, s)).collect(),
        ))?;
        return Ok(EXIT_OK);
    }
    println!(
        "{:<10} {:<25} {:<12} {:>10}  PATHS / STREAMS",
        "ID", "TIME", "INSTANCE", "SIZE"
    );
    for (id, s) in &list {
        let mut what: Vec<String> = s.paths.clone();
        what.extend(s.streams.iter().map(|st| format!("[{}]", st.name)));
        println!(
            "{:<10} {:<25} {:<12} {:>10}  {}{}",
            id.short(),
            s.time.format("%Y-%m-%d %H:%M:%S %:z"),
            s.instance.as_deref().unwrap_or("-"),
            human_bytes(s.summary.bytes_total),
            what.join(" "),
            if s.partial { " (partial)" } else { "" }
        );
    }
    println!("{} snapshots", list.len());
    Ok(EXIT_OK)
}

fn show(ctx: &Ctx, spec: &str, instance: Option<&str>) -> Result<i32> {
    let repo = ctx.open()?;
    let (id, s) = repo.resolve_snapshot(spec, instance)?;
    if ctx.json {
        ctx.print_json(&snapshot_json(&id, &s))?;
    } else {
        print_snapshot(&id, &s);
    }
    Ok(EXIT_OK)
}

/// `show` for people: one field a line, then the streams, then the recorded metadata.
fn print_snapshot(id: &Id, s: &Snapshot) {
    let m = &s.summary;
    println!("snapshot {}", id.to_hex());
    println!("time      {}", s.time.format("%Y-%m-%d %H:%M:%S %:z"));
    println!("host      {}", s.host);
    println!("instance  {}", s.instance.as_deref().unwrap_or("-"));
    println!(
        "tags      {}",
        if s.tags.is_empty() {
            "-".into()
        } else {
            s.tags.join(", ")
        }
    );
    println!(
        "paths     {}",
        if s.paths.is_empty() {
            "-".into()
        } else {
            s.paths.join(" ")
        }
    );
    println!("parent    {}", s.parent.as_deref().unwrap_or("-"));
    if s.partial {
        println!("partial   yes: some files could not be read");
    }
    for st in &s.streams {
        println!("stream    {}", st.name);
    }
    println!(
        "summary   {} new, {} changed, {} unmodified files; {} total, {} added",
        m.files_new,
        m.files_changed,
        m.files_unmodified,
        human_bytes(m.bytes_total),
        human_bytes(m.bytes_added)
    );
    if let Some(meta) = &s.metadata {
        println!(
            "metadata  {}",
            serde_json::to_string_pretty(meta).unwrap_or_default()
        );
    }
}

fn ls(ctx: &Ctx, spec: &str, path: Option<&str>, instance: Option<&str>) -> Result<i32> {
    let repo = ctx.open()?;
    let _lock = cairn::lock::acquire_reader_on(&repo, "ls")?;
    let (_, snap) = match path {
        Some(p) if !p.trim_matches('/').is_empty() => latest::for_name(&repo, spec, instance, p)?,
        _ => repo.resolve_snapshot(spec, instance)?,
    };
    // Streams first (all of them, or the one PATH names), then the file tree (none if PATH is a stream).
    let streams: Vec<_> = snap
        .streams
        .iter()
        .filter(|s| path.is_none_or(|p| p == s.name))
        .collect();
    let entries = match (path, snap.tree) {
        (Some(_), _) if !streams.is_empty() => Vec::new(),
        (None, None) => Vec::new(),
        _ => restore::list(&repo, &snap, path.unwrap_or(""))?,
    };
    let mut out = std::io::stdout().lock();
    if ctx.json {
        let streams = streams
            .iter()
            .map(|s| json!({"path": s.name, "type": "stream", "size": s.size}));
        let v: Vec<_> = streams
            .chain(entries.iter()
            .map(|(p, n)| {
                let (kind, size) = match &n.kind {
                    NodeKind::File { size, .. } => ("file", *size),
                    NodeKind::Dir { .. } => ("dir", 0),
                    NodeKind::Symlink { .. } => ("symlink", 0),
                    _ => ("special", 0),
                };
                json!({"path": p, "type": kind, "size": size, "mode": n.meta.mode, "mtime": n.meta.mtime})
            }))
            .collect();
        ctx.print_json(&serde_json::Value::Array(v))?;
        return Ok(EXIT_OK);
    }
    for s in streams {
        writeln!(out, "s {:>4} {:>12} [{}]", "-", s.size, s.name)
            .map_err(|e| Error::io("stdout", e))?;
    }
    for (p, n) in entries {
        let (kind, size) = match &n.kind {
            NodeKind::File { size, .. } => ('-', *size),
            NodeKind::Dir { .. } => ('d', 0),
            NodeKind::Symlink { .. } => ('l', 0),
            NodeKind::Fifo => ('p', 0),
            NodeKind::CharDevice { .. } => ('c', 0),
            NodeKind::BlockDevice { .. } => ('b', 0),
        };
        writeln!(out, "{kind} {:o} {:>12} {p}", n.meta.mode & 0o7777, size)
            .map_err(|e| Error::io("stdout", e))?;
    }
    Ok(EXIT_OK)
}

fn restore_cmd(ctx: &Ctx, a: RestoreArgs) -> Result<i32> {
    // A refused connection string is a usage problem: say so before looking for a snapshot.
    if a.pg_target.is_some() {
        cairn::postgres::PgConn::new(a.pg_conn.as_deref())?;
    }
    let repo = ctx.open()?;
    let _lock = cairn::lock::acquire_reader_on(&repo, "restore")?;
    let (id, snap) = latest::for_restore(
        &repo,
        &a.snapshot,
        a.instance.as_deref(),
        a.target.is_some(),
        &a.paths,
        a.pg_target.is_some(),
    )?;
    let database = match &a.pg_target {
        Some(_) => Some(pg::restore(ctx, &repo, &snap, &a)?),
        None => None,
    };
    let Some(target) = a.target else {
        if let Some(report) = database {
            pg::print_report(ctx, &id, &report)?;
        }
        return Ok(EXIT_OK);
    };
    let total = snap.summary.bytes_total;
    let summary = restore::restore(
        &repo,
        &snap,
        &RestoreOptions {
            target: target.clone(),
            include: a.paths,
            overwrite: a.overwrite,
            progress: Progress::new("restore", Some(total), ctx.quiet || ctx.json),
        },
    )?;
    for w in &summary.warnings {
        eprintln!("cairn: warning: {w}");
    }
    if ctx.json {
        let mut v = serde_json::to_value(&summary).map_err(|e| Error::Invalid(e.to_string()))?;
        v["snapshot_id"] = json!(id.to_hex());
        if let Some(report) = &database {
            v["database"] =
                serde_json::to_value(report).map_err(|e| Error::Invalid(e.to_string()))?;
        }
        ctx.print_json(&v)?;
    } else if !ctx.quiet {
        if let Some(report) = &database {
            pg::print_report(ctx, &id, report)?;
        }
        println!(
            "restored snapshot {} to {}: {} files, {} dirs, {} links, {}",
            id.short(),
            target.display(),
            summary.files,
            summary.dirs,
            summary.links,
            human_bytes(summary.bytes)
        );
    }
    Ok(EXIT_OK)
}

fn dump(ctx: &Ctx, spec: &str, name: &str, instance: Option<&str>) -> Result<i32> {
    let repo = ctx.open()?;
    let _lock = cairn::lock::acquire_reader_on(&repo, "dump")?;
    let (_, snap) = latest::for_name(&repo, spec, instance, name)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    restore::dump(&repo, &snap, name, &mut out)?;
    Ok(EXIT_OK)
}

fn check_cmd(ctx: &Ctx, a: CheckArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let _lock = cairn::lock::acquire_reader_on(&repo, "check")?;
    let read_data = match (a.read_data, a.read_data_subset) {
        (true, _) => ReadData::All,
        (false, Some(s)) => s.parse()?,
        (false, None) => ReadData::None,
    };
    let progress = Progress::new("check", None, ctx.quiet || ctx.json);
    let report = check::check(&repo, read_data, &progress)?;
    if ctx.json {
        let mut v = serde_json::to_value(&report).map_err(|e| Error::Invalid(e.to_string()))?;
        v["clean"] = json!(report.is_clean());
        ctx.print_json(&v)?;
    } else if !(ctx.quiet && report.is_clean()) {
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        for e in &report.errors {
            println!("error: {e}");
        }
        for e in &report.read_errors {
            println!("error (not damage): {e}");
        }
        for d in &report.damaged {
            println!(
                "damaged blob {} in pack {}: {}",
                &d.blob[..16],
                &d.pack[..16],
                d.error
            );
            for a in &d.affected {
                println!("  needed by {a}");
            }
        }
        println!(
            "checked {} packs, {} snapshots, {} trees; read {} packs ({} blobs): {}",
            report.packs,
            report.snapshots,
            report.trees,
            report.packs_read,
            report.blobs_read,
            if report.is_clean() {
                "no errors"
            } else if !report.damaged.is_empty() {
                "DAMAGE FOUND"
            } else if !report.errors.is_empty() {
                "ERRORS FOUND"
            } else {
                "READ ERRORS (not damage)"
            }
        );
        for h in &report.hints {
            println!("hint: {h}");
        }
    }
    Ok(if report.is_clean() {
        EXIT_OK
    } else {
        EXIT_ERROR
    })
}

fn forget(ctx: &Ctx, a: ForgetArgs) -> Result<i32> {
    if !a.snapshots.is_empty() {
        return forget_named(ctx, a);
    }
    let policy = a.keep.retention().policy(a.keep_tags)?;
    let repo = ctx.open()?;
    let opts = cairn::gc::ForgetOptions {
        policy,
        instance: a.instance,
        tags: a.tags,
        dry_run: a.dry_run,
        include_safety: a.include_safety,
    };
    let groups = cairn::gc::forget(&repo, &opts)?;
    let removed: usize = groups
        .iter()
        .map(|g| g.decisions.iter().filter(|d| !d.keep).count())
        .sum();
    // One document with --json: the prune report goes inside it (text shows the decisions before pruning).
    let prune_now = a.prune && !a.dry_run;
    if ctx.json {
        let pruned = prune_now
            .then(|| prune_report(ctx, 5.0, false))
            .transpose()?;
        ctx.print_json(
            &json!({"dry_run": a.dry_run, "removed": removed, "groups": groups, "prune": pruned}),
        )?;
        return Ok(EXIT_OK);
    }
    if !ctx.quiet {
        for g in &groups {
            println!("group {}", g.group);
            for d in &g.decisions {
                let verdict = if d.keep {
                    "keep  "
                } else if a.dry_run {
                    "would remove"
                } else {
                    "remove"
                };
                println!("  {verdict} {} {}", &d.id[..12], d.reasons.join(","));
            }
        }
        println!(
            "{removed} snapshots {}",
            if a.dry_run {
                "would be removed"
            } else {
                "removed"
            }
        );
    }
    if prune_now {
        print_prune(ctx, &prune_report(ctx, 5.0, false)?, false);
    }
    Ok(EXIT_OK)
}

/// `forget ID...`: removes exactly the named snapshots (safety snapshots too).
fn forget_named(ctx: &Ctx, a: ForgetArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let mut ids = Vec::new();
    for spec in &a.snapshots {
        if spec == "latest" {
            return Err(Error::Usage(
                "forget takes snapshot ids, not `latest`".into(),
            ));
        }
        ids.push(repo.resolve_snapshot(spec, a.instance.as_deref())?.0);
    }
    cairn::gc::forget_ids(&repo, &ids, a.dry_run)?;
    let pruned = if a.prune && !a.dry_run {
        Some(prune_report(ctx, 5.0, false)?)
    } else {
        None
    };
    let hex: Vec<String> = ids.iter().map(|i| i.to_hex()).collect();
    if ctx.json {
        ctx.print_json(
            &json!({"dry_run": a.dry_run, "removed": hex.len(), "snapshots": hex, "prune": pruned}),
        )?;
    } else if !ctx.quiet {
        let verb = if a.dry_run { "would remove" } else { "remove" };
        for id in &hex {
            println!("  {verb} {}", &id[..12]);
        }
        println!(
            "{} snapshots {}",
            hex.len(),
            if a.dry_run {
                "would be removed"
            } else {
                "removed"
            }
        );
    }
    if let Some(r) = &pruned {
        print_prune(ctx, r, false);
    }
    Ok(EXIT_OK)
}

fn prune(ctx: &Ctx, max_unused: f64, dry_run: bool) -> Result<()> {
    let r = prune_report(ctx, max_unused, dry_run)?;
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&r).map_err(|e| Error::Invalid(e.to_string()))?)
    } else {
        print_prune(ctx, &r, dry_run);
        Ok(())
    }
}

fn prune_report(ctx: &Ctx, max_unused: f64, dry_run: bool) -> Result<cairn::gc::PruneReport> {
    if !(0.0..=100.0).contains(&max_unused) {
        return Err(Error::Invalid(
            "--max-unused must be a percentage between 0 and 100".into(),
        ));
    }
    let repo = ctx.open()?;
    cairn::gc::prune(
        &repo,
        cairn::gc::PruneOptions {
            max_unused_percent: max_unused,
            dry_run,
        },
    )
}

/// The prune report for people (nothing with `--quiet` or `--json`).
fn print_prune(ctx: &Ctx, r: &cairn::gc::PruneReport, dry_run: bool) {
    if ctx.json || ctx.quiet {
        return;
    }
    {
        if r.snapshots_adopted > 0 {
            println!(
                "{} {} snapshot files that had no index row (left by an interrupted backup); their data is kept",
                if dry_run { "would index" } else { "indexed" },
                r.snapshots_adopted
            );
        }
        if r.wal_files_removed > 0 {
            println!(
                "{} {} archived WAL files older than every kept base backup",
                if dry_run { "would remove" } else { "removed" },
                r.wal_files_removed
            );
        }
        println!(
            "{}{} packs deleted, {} repacked ({} copied), {} stray packs removed: {} freed, {} -> {}",
            if dry_run { "dry run: " } else { "" },
            r.packs_deleted,
            r.packs_repacked,
            human_bytes(r.bytes_repacked),
            r.unindexed_removed,
            human_bytes(r.bytes_freed),
            human_bytes(r.bytes_before),
            human_bytes(r.bytes_after)
        );
    }
}

fn repair_snapshots(ctx: &Ctx, forget_damaged: bool) -> Result<i32> {
    let repo = ctx.open()?;
    repo.require_writable()?;
    let repaired = cairn::repair::repair_snapshots(&repo, forget_damaged)?;
    if ctx.json {
        ctx.print_json(&json!(repaired))?;
    } else if !ctx.quiet {
        for r in &repaired {
            match &r.new_id {
                Some(new) => println!(
                    "snapshot {} rewritten as {} without: {}",
                    &r.old_id[..8],
                    &new[..8],
                    r.dropped.join(", ")
                ),
                None => println!(
                    "snapshot {} forgotten (damaged: {})",
                    &r.old_id[..8],
                    r.dropped.join(", ")
                ),
            }
        }
        println!("{} snapshots repaired", repaired.len());
        if !repaired.is_empty() {
            println!("hint: {}", cairn::restore::HEAL_HINT);
        }
    }
    Ok(EXIT_OK)
}

fn repair_index(ctx: &Ctx) -> Result<i32> {
    let (path, _) = ctx.repo_url()?;
    let report = cairn::repair::repair_index(&path)?;
    // Instance configs live in the index too; their durable copies are files.
    cairn::instance::reload_from_files(&Repository::open(&path)?)?;
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&report).map_err(|e| Error::Invalid(e.to_string()))?)?;
    } else {
        for s in &report.skipped {
            eprintln!("cairn: skipped {s}");
        }
        for w in &report.warnings {
            eprintln!("cairn: warning: {w}");
        }
        if !ctx.quiet {
            println!(
                "index rebuilt: {} packs, {} blobs, {} snapshots",
                report.packs, report.blobs, report.snapshots
            );
        }
    }
    Ok(if report.skipped.is_empty() {
        EXIT_OK
    } else {
        EXIT_ERROR
    })
}

fn import_archive(
    ctx: &Ctx,
    instance: Option<String>,
    time: &str,
    force_time: bool,
    file: &std::path::Path,
) -> Result<i32> {
    let time = snapshot_time(Some(time), force_time)?
        .ok_or_else(|| Error::Invalid("--time is missing".into()))?;
    let repo = open_for_backup(ctx)?;
    let report = cairn::archive::import_archive(&repo, file, instance, time)?;
    let r = &report.backup;
    for s in &report.skipped {
        eprintln!("cairn: warning: {s}");
    }
    if ctx.json {
        ctx.print_json(&json!({
            "snapshot_id": r.snapshot_id.to_hex(),
            "summary": r.snapshot.summary,
            "skipped": report.skipped,
            "partial": r.snapshot.partial || !report.skipped.is_empty(),
        }))?;
    } else if !ctx.quiet {
        println!(
            "imported {} as snapshot {}",
            file.display(),
            r.snapshot_id.short()
        );
    }
    if !report.skipped.is_empty() || r.snapshot.partial {
        eprintln!(
            "cairn: snapshot {} is partial: it does not hold everything in {} (see above)",
            r.snapshot_id.short(),
            file.display()
        );
        return Ok(EXIT_PARTIAL);
    }
    Ok(EXIT_OK)
}

fn export(
    ctx: &Ctx,
    spec: &str,
    opts: &cairn::export::ExportOptions,
    instance: Option<&str>,
    output: Option<&std::path::Path>,
) -> Result<i32> {
    let repo = ctx.open()?;
    let _lock = cairn::lock::acquire_reader_on(&repo, "export")?;
    let (_, snap) = latest::for_export(&repo, spec, instance, opts.format)?;
    let report = match output {
        None => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            let report = cairn::export::export(&repo, &snap, opts, &mut out)?;
            out.flush().map_err(|e| Error::io("stdout", e))?;
            report
        }
        Some(path) => export_to_file(&repo, &snap, opts, path)?,
    };
    if !report.skipped.is_empty() {
        for s in &report.skipped {
            eprintln!("cairn: warning: {s}");
        }
        eprintln!(
            "cairn: export is partial: {} entries left out (see above)",
            report.skipped.len()
        );
        return Ok(EXIT_PARTIAL);
    }
    Ok(EXIT_OK)
}

/// Exports into a temporary file beside `path`, renamed to `path` once complete: a failed export leaves
/// no truncated archive that looks like a good one.
fn export_to_file(
    repo: &Repository,
    snap: &cairn::snapshot::Snapshot,
    opts: &cairn::export::ExportOptions,
    path: &std::path::Path,
) -> Result<cairn::export::ExportReport> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".cairn-export-")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file());
    let report = cairn::export::export(repo, snap, opts, &mut out)?;
    out.flush().map_err(|e| Error::io(path, e))?;
    drop(out);
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(report)
}

fn unlock(ctx: &Ctx, all: bool) -> Result<i32> {
    let (path, _) = ctx.repo_url()?;
    let (backend, _) = cairn::repo::connect(&path)?;
    let removed = cairn::lock::unlock(backend.as_ref(), all)?;
    if ctx.json {
        ctx.print_json(&json!({ "removed": removed }))?;
    } else if !ctx.quiet {
        for r in &removed {
            println!("removed {r}");
        }
        println!("{} locks removed", removed.len());
    }
    Ok(EXIT_OK)
}

/// Bytes in binary units, for people.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
