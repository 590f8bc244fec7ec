//! `cairn backup`: paths, `--stdin`, `--stdin-from-command` and `--pg` streams into one snapshot, and the
//! default repository created on first use ([`open_for_backup`], also used by `import-archive`).

use cairn::backup::{self, BackupOptions, ParentChoice, StreamSource};
use cairn::config::Config;
use cairn::progress::Progress;
use cairn::{Error, Repository, Result};
use serde_json::json;

use super::args::BackupArgs;
use super::commands::{human_bytes, snapshot_time, Ctx};
use super::pg;
use super::{EXIT_OK, EXIT_PARTIAL};

/// Opens the repository for a backup, creating the default one (only) on first use.
pub fn open_for_backup(ctx: &Ctx) -> Result<Repository> {
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

pub fn backup_cmd(ctx: &Ctx, a: BackupArgs) -> Result<i32> {
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
        outln!(
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
