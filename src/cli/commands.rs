//! Dispatch: the global options every command sees ([`Ctx`]), the run log, `init`, and helpers shared by
//! several command groups ([`snapshot_time`], [`parse_time`], [`human_bytes`]). Each command's front end
//! lives in the module named for its group: `backup`, `snapshots` (`snapshots`, `show`, `ls`), `restore`
//! (`restore`, `dump`), `maintenance` (`check`, `forget`, `prune`, `repair`, `unlock`), `archive`
//! (`import-archive`, `export`), `copy`, `explore`, `instance`, `keys`, `wal`, ...

use std::path::PathBuf;

use cairn::backend::RepoUrl;
use cairn::config::Config;
use cairn::{Error, Repository, Result};
use chrono::{DateTime, FixedOffset, Local, LocalResult, NaiveDateTime, TimeZone};
use serde_json::json;

use super::args::{Cli, Command, InitArgs, RepairWhat};
use super::instance;
use super::EXIT_OK;
use super::{archive, backup, maintenance, restore, snapshots};

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

    /// Opens the repository for a command that reads it under a shared lock, and takes that lock: an object
    /// store's cache is brought up to date once, under the lock.
    pub fn open_reading(
        &self,
        command: &str,
    ) -> Result<(Repository, Option<cairn::lock::LockGuard>)> {
        let repo = self.configure(Repository::open_unsynced(&self.repo_url()?.0)?);
        let lock = cairn::lock::acquire_reader_on(&repo, command)?;
        Ok((repo, lock))
    }

    /// Applies the global options that tune an open repository (`--connections`).
    pub fn configure(&self, repo: Repository) -> Repository {
        if let Some(n) = self.connections {
            repo.set_connections(usize::from(n));
        }
        repo
    }

    pub fn print_json(&self, v: &serde_json::Value) -> Result<()> {
        // Encoded whole first: an output error is then stdout's, never taken for an encoding error.
        let mut text = serde_json::to_vec_pretty(v).map_err(|e| Error::Invalid(e.to_string()))?;
        text.push(b'\n');
        super::out::bytes(&text)
    }
}

/// A JSON array printed element by element, byte for byte what [`Ctx::print_json`] prints for the whole
/// array (pretty, two-space indent, a newline at the end), for lists too long to hold (`ls`). The `[` is
/// written with the first element (or by [`finish`](Self::finish)): an error before any element leaves
/// stdout empty. An error after some leaves the array unterminated, so a reader cannot take the part for
/// the whole.
pub struct JsonArray<W: std::io::Write> {
    out: W,
    started: bool,
    element: Vec<u8>,
    indented: Vec<u8>,
}

impl<W: std::io::Write> JsonArray<W> {
    pub fn new(out: W) -> Self {
        JsonArray {
            out,
            started: false,
            element: Vec::new(),
            indented: Vec::new(),
        }
    }

    pub fn push(&mut self, v: &serde_json::Value) -> Result<()> {
        // Encoded first, as in `print_json`: an output error is stdout's, never an encoding error.
        self.element.clear();
        serde_json::to_writer_pretty(&mut self.element, v)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        self.indented.clear();
        self.indented.extend_from_slice(match self.started {
            false => b"[\n  ",
            true => b",\n  ",
        });
        // One level deeper: every line of the element indented by two more spaces (a JSON string holds no
        // raw newline, so every newline here is the formatter's).
        for (i, line) in self.element.split(|&b| b == b'\n').enumerate() {
            if i > 0 {
                self.indented.extend_from_slice(b"\n  ");
            }
            self.indented.extend_from_slice(line);
        }
        self.started = true;
        self.out
            .write_all(&self.indented)
            .map_err(super::out::error)
    }

    /// Closes the array and flushes.
    pub fn finish(mut self) -> Result<()> {
        let end: &[u8] = match self.started {
            false => b"[]\n",
            true => b"\n]\n",
        };
        self.out
            .write_all(end)
            .and_then(|()| self.out.flush())
            .map_err(super::out::error)
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
    // Recording writes an object and its cache row: nothing to bring up to date first.
    let Ok(repo) = ctx.repo_url().and_then(|u| Repository::open_unsynced(&u.0)) else {
        return;
    };
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
        Command::Backup(a) => backup::backup_cmd(ctx, a),
        Command::Snapshots { instance } => snapshots::snapshots(ctx, instance.as_deref()),
        Command::Show { snapshot, instance } => {
            snapshots::show(ctx, &snapshot, instance.as_deref())
        }
        Command::Ls {
            snapshot,
            path,
            instance,
        } => snapshots::ls(ctx, &snapshot, path.as_deref(), instance.as_deref()),
        Command::Restore(a) => restore::restore_cmd(ctx, a),
        Command::Dump {
            snapshot,
            name,
            instance,
        } => restore::dump(ctx, &snapshot, &name, instance.as_deref()),
        Command::Check(a) => maintenance::check_cmd(ctx, a),
        Command::Copy(a) => super::copy::copy_cmd(ctx, a),
        Command::Repair {
            what: RepairWhat::Index,
        } => maintenance::repair_index(ctx),
        Command::Repair {
            what: RepairWhat::Snapshots { forget_damaged },
        } => maintenance::repair_snapshots(ctx, forget_damaged),
        Command::Forget(a) => maintenance::forget(ctx, a),
        Command::Prune {
            max_unused,
            dry_run,
        } => maintenance::prune(ctx, max_unused, dry_run).map(|_| EXIT_OK),
        Command::Unlock { remove_all } => maintenance::unlock(ctx, remove_all),
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
        } => archive::import_archive(ctx, i, &time, force_time, &file),
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
            archive::export(ctx, &snapshot, &opts, i.as_deref(), output.as_deref())
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
            lock_wait,
            system_identifier,
        } => super::wal::wal_fetch(
            ctx,
            &i,
            &file,
            &dest,
            std::time::Duration::from_secs(lock_wait),
            system_identifier,
        ),
        Command::WalList { instance: i } => super::wal::wal_list(ctx, i.as_deref()),
    }
}

fn init(ctx: &Ctx, a: InitArgs) -> Result<i32> {
    let (path, _) = ctx.repo_url()?;
    let mut config = Config::new_default();
    if !a.insecure_no_encryption {
        config = match a.cipher {
            Some(c) => config.encrypted_with(c.into()),
            None => config.encrypted(),
        };
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
                    "encrypted": repo.crypto().is_encrypted(),
                    "cipher": repo.config().cipher().map(|c| c.name())}),
        )?;
    } else if !ctx.quiet {
        outln!(
            "created repository {} at {path}",
            repo.config().repository_id,
        );
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

/// Accepts RFC 3339 or a local "YYYY-MM-DD HH:MM[:SS]"; a local time that a clock change repeats or skips
/// is refused (it needs an offset).
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
            // A local time a clock change repeats names two instants an hour apart: a guess would restore
            // (or date) the wrong one, saying nothing. One it skips names none.
            return match Local.from_local_datetime(&n) {
                LocalResult::Single(t) => Ok(t.fixed_offset()),
                LocalResult::Ambiguous(a, b) => Err(Error::Invalid(format!(
                    "time {s:?} is ambiguous in the local time zone (a clock change repeats it): give it \
                     with its offset, {} or {}",
                    a.fixed_offset().to_rfc3339(),
                    b.fixed_offset().to_rfc3339()
                ))),
                LocalResult::None => Err(Error::Invalid(format!(
                    "time {s:?} does not exist in the local time zone (a clock change skips it): give it \
                     with an offset (RFC 3339)"
                ))),
            };
        }
    }
    Err(Error::Invalid(format!(
        "cannot parse time {s:?} (want RFC 3339 or \"YYYY-MM-DD HH:MM\")"
    )))
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
