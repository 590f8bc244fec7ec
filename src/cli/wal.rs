//! `wal-push`, `wal-fetch`, `wal-list` and `instance wal-setup`: the command-line side of [`cairn::wal`].
//!
//! `wal-push` and `wal-fetch` are run by PostgreSQL (archive_command, restore_command); their exit codes are
//! its contract: 0 only once the file is durably archived (or written in place), 1 otherwise, and for a
//! file that is not archived (which recovery probes for) `wal-fetch` exits 1 too, never above 125 (which
//! recovery takes as fatal).

use std::path::Path;

use serde_json::json;

use cairn::instance::{self, InstanceConfig};
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
    let repo = ctx.open()?;
    wal_instance(&repo, name)?;
    cairn::interrupt::install()?;
    let outcome = wal::push(&repo, name, path)?;
    let stored = outcome == PushOutcome::Stored;
    if ctx.json {
        ctx.print_json(&json!({"instance": name, "file": path.file_name().map(|f| f.to_string_lossy()), "stored": stored}))?;
    } else if !ctx.quiet {
        let verb = if stored {
            "archived"
        } else {
            "already archived with the same content:"
        };
        println!("{verb} {}", path.display());
    }
    Ok(EXIT_OK)
}

pub fn wal_fetch(ctx: &Ctx, name: &str, file: &str, dest: &Path) -> Result<i32> {
    let repo = ctx.open()?;
    let size = wal::fetch(&repo, name, file, dest)?;
    if ctx.json {
        ctx.print_json(&json!({"instance": name, "file": file, "size": size}))?;
    } else if !ctx.quiet {
        println!("restored {file} ({})", human_bytes(size));
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
                       "blake3": o.blake3.to_hex(), "tree": o.tree.to_hex(), "time": o.time})
            })
            .collect();
        return ctx.print_json(&json!(rows)).map(|_| EXIT_OK);
    }
    for o in &files {
        println!(
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
        "the repository is encrypted and PostgreSQL's archiver has no password: give wal-setup \
               --password-file FILE (readable by the server's OS user) so archive_command names it";
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
    command += &password_option(encrypted, apply)?;
    Ok(vec![
        ("archive_mode", "on".to_string()),
        (
            "archive_command",
            format!("{command} --quiet wal-push --instance {name} %p"),
        ),
        ("archive_timeout", format!("{archive_timeout}s")),
    ])
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
    let restart = if apply {
        let conn = cairn::postgres::PgConn::new(cfg.pg_conn.as_deref())?;
        let db = cfg.pg.as_deref().unwrap_or("postgres");
        Some(cairn::postgres::alter_system(&conn, db, &settings)?)
    } else {
        None
    };
    if ctx.json {
        let map: serde_json::Map<String, serde_json::Value> = settings
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        return ctx
            .print_json(&json!({"instance": name, "settings": map, "applied": apply,
                                "restart_needed": restart}))
            .map(|_| EXIT_OK);
    }
    if !apply {
        println!("# postgresql.conf (or ALTER SYSTEM; `cairn instance wal-setup {name} --apply` does it)");
    }
    for (k, v) in &settings {
        println!("{k} = '{}'", v.replace('\'', "''"));
    }
    match restart {
        Some(r) if !r.is_empty() => println!(
            "applied; {} takes effect at the next server restart: restart PostgreSQL now",
            r.join(", ")
        ),
        Some(_) => println!("applied and reloaded"),
        None => println!(
            "# changing archive_mode needs a server restart; the other settings a reload (pg_reload_conf())"
        ),
    }
    Ok(EXIT_OK)
}
