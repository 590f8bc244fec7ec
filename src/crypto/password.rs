//! Where a repository password comes from, in restic's order: `--password-file` / `CAIRN_PASSWORD_FILE`,
//! `--password-command` / `CAIRN_PASSWORD_COMMAND`, `CAIRN_PASSWORD`, else a prompt on the terminal (no echo).
//! Non-interactive runs (`run-due`, `daemon`, systemd units) must use a file or a command; with none and no
//! terminal the password is missing: [`Error::Password`], exit code 12.
//!
//! The CLI sets the sources once ([`set_sources`]); the library asks for the password only when it opens an
//! encrypted repository, so plaintext repositories never prompt. The password is read once per process
//! and kept (zeroed on exit paths that drop it) so that a second open does not prompt again.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Where the password may come from; `None` fields fall back to the environment.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub file: Option<PathBuf>,
    pub command: Option<String>,
}

static SOURCES: Mutex<Option<Sources>> = Mutex::new(None);
static CACHED: Mutex<Option<Zeroizing<String>>> = Mutex::new(None);

/// Sets the password sources of this process (the CLI's `--password-file` and `--password-command`).
pub fn set_sources(s: Sources) {
    *SOURCES.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
    *CACHED.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

/// Runs `f` (which opens another repository, e.g. the source of `cairn copy`) with the password taken from
/// `s` instead, then restores this process's sources and the password it read.
pub fn with_sources<T>(s: Sources, f: impl FnOnce() -> T) -> T {
    let saved_sources = SOURCES.lock().unwrap_or_else(|p| p.into_inner()).take();
    let saved_password = CACHED.lock().unwrap_or_else(|p| p.into_inner()).take();
    set_sources(s);
    let out = f();
    *SOURCES.lock().unwrap_or_else(|p| p.into_inner()) = saved_sources;
    *CACHED.lock().unwrap_or_else(|p| p.into_inner()) = saved_password;
    out
}

/// The file or command this process takes its password from, if any (what a command line that another
/// program runs later, such as PostgreSQL's archive_command, must name too).
pub fn configured_sources() -> Sources {
    sources()
}

fn sources() -> Sources {
    let set = SOURCES.lock().unwrap_or_else(|p| p.into_inner()).clone();
    set.unwrap_or_else(|| Sources {
        file: std::env::var_os("CAIRN_PASSWORD_FILE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
        command: std::env::var("CAIRN_PASSWORD_COMMAND")
            .ok()
            .filter(|v| !v.is_empty()),
    })
}

/// The repository password (asked for once per process).
pub fn password() -> Result<Zeroizing<String>> {
    let mut cached = CACHED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = cached.as_ref() {
        return Ok(p.clone());
    }
    let p = read_password(&sources(), "repository password: ", false)?;
    *cached = Some(p.clone());
    Ok(p)
}

/// The password for a new repository (`init`): the same sources, but a prompt asks twice.
pub fn password_for_new_repository() -> Result<Zeroizing<String>> {
    let p = read_password(&sources(), "password for the new repository: ", true)?;
    *CACHED.lock().unwrap_or_else(|p| p.into_inner()) = Some(p.clone());
    Ok(p)
}

/// A new password for `key add` / `key passwd`: from `file` if given, else a prompt (asked twice).
pub fn new_password(file: Option<&Path>) -> Result<Zeroizing<String>> {
    match file {
        Some(f) => from_file(f),
        None => prompt("new password: ", true),
    }
}

/// True if some non-interactive source is configured, or a terminal can be asked.
pub fn available() -> bool {
    let s = sources();
    s.file.is_some()
        || s.command.is_some()
        || std::env::var_os("CAIRN_PASSWORD").is_some()
        || std::io::stdin().is_terminal()
}

fn read_password(s: &Sources, prompt_text: &str, confirm: bool) -> Result<Zeroizing<String>> {
    if s.file.is_some() && s.command.is_some() {
        return Err(Error::Usage(
            "give the password by a file or by a command, not both".into(),
        ));
    }
    if let Some(f) = &s.file {
        return from_file(f);
    }
    if let Some(c) = &s.command {
        return from_command(c);
    }
    if let Ok(p) = std::env::var("CAIRN_PASSWORD") {
        return non_empty(Zeroizing::new(p), "CAIRN_PASSWORD");
    }
    prompt(prompt_text, confirm)
}

fn non_empty(p: Zeroizing<String>, from: &str) -> Result<Zeroizing<String>> {
    if p.is_empty() {
        return Err(Error::Password(format!(
            "the password from {from} is empty"
        )));
    }
    Ok(p)
}

/// The first line of a file (a trailing newline is not part of the password).
fn from_file(path: &Path) -> Result<Zeroizing<String>> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
        Error::Password(format!(
            "cannot read the password file {}: {e}",
            path.display()
        ))
    })?);
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        Error::Password(format!("the password file {} is not UTF-8", path.display()))
    })?;
    let line = text.split(['\n', '\r']).next().unwrap_or("");
    non_empty(
        Zeroizing::new(line.to_string()),
        &path.display().to_string(),
    )
}

/// The first line a command prints (run by `sh -c`; a failure is a missing password).
fn from_command(cmd: &str) -> Result<Zeroizing<String>> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| Error::Password(format!("cannot run the password command: {e}")))?;
    let stdout = Zeroizing::new(out.stdout);
    if !out.status.success() {
        return Err(Error::Password(format!(
            "the password command failed ({})",
            out.status
        )));
    }
    let text = std::str::from_utf8(&stdout)
        .map_err(|_| Error::Password("the password command printed non-UTF-8".into()))?;
    let line = text.split(['\n', '\r']).next().unwrap_or("");
    non_empty(Zeroizing::new(line.to_string()), "the password command")
}

/// Asks on the terminal without echo; no terminal means no password.
fn prompt(text: &str, confirm: bool) -> Result<Zeroizing<String>> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::Password(
            "no password given: use --password-file, --password-command, CAIRN_PASSWORD_FILE, CAIRN_PASSWORD_COMMAND or CAIRN_PASSWORD (no terminal to ask on)".into(),
        ));
    }
    let read = |t: &str| {
        rpassword::prompt_password(t)
            .map(Zeroizing::new)
            .map_err(|e| Error::Password(format!("cannot read the password: {e}")))
    };
    let p = non_empty(read(text)?, "the terminal")?;
    if confirm && *read("enter it again: ")? != *p {
        return Err(Error::Password("the two passwords differ".into()));
    }
    Ok(p)
}
