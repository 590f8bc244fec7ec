//! Where a repository password comes from, in restic's order: `--password-file` / `CAIRN_PASSWORD_FILE`,
//! `--password-command` / `CAIRN_PASSWORD_COMMAND`, `CAIRN_PASSWORD`, else a prompt on the terminal (no echo).
//! Non-interactive runs (`run-due`, `daemon`, systemd units) must use a file or a command; with none and no
//! terminal the password is missing: [`Error::Password`], exit code 12.
//!
//! The CLI sets the sources once ([`set_sources`]); the library asks for the password only when it opens an
//! encrypted repository, so plaintext repositories never prompt. The password is read once per process
//! and kept (zeroed on exit paths that drop it) so that a second open does not prompt again.
//!
//! Invariant: reading a password is bounded in time and size. A file or command gets `CAIRN_PASSWORD_TIMEOUT`
//! seconds (default 60) and at most 64 KiB; a FIFO nobody writes to, a command that never exits or one that
//! prints without end is a missing password (exit 12), never a hang or an exhausted memory. Unattended (no
//! controlling terminal), a command is killed with every process it started (its own process group).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Where the password may come from; `None` fields fall back to the environment.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub file: Option<PathBuf>,
    pub command: Option<String>,
}

/// The longest password a file or command may give (its first line): anything longer is not a password,
/// and reading stops there (`yes` as a password command must not fill the memory).
const MAX_PASSWORD_LEN: usize = 64 * 1024;
/// How long a password file or command may take by default ([`timeout`]).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

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

/// The first line of a file (a trailing newline is not part of the password). The file may be a pipe
/// (`--password-file <(pass show x)`), so it is read in a helper thread and given [`timeout`] to answer: a
/// FIFO nobody writes to must not hang the command. At most [`MAX_PASSWORD_LEN`] bytes are read.
fn from_file(path: &Path) -> Result<Zeroizing<String>> {
    let name = format!("the password file {}", path.display());
    let owned = path.to_path_buf();
    let read = within_timeout(&name, move || {
        use std::io::Read;
        let file = std::fs::File::open(&owned)?;
        let mut bytes = Zeroizing::new(Vec::new());
        file.take(MAX_PASSWORD_LEN as u64 + 1)
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    })?;
    let bytes = read.map_err(|e| Error::Password(format!("cannot read {name}: {e}")))?;
    first_line(&bytes, &name, true)
}

/// The first line a command prints (run by `sh -c`; a failure is a missing password). The command gets
/// [`timeout`] to print and exit and may print at most [`MAX_PASSWORD_LEN`] bytes: one that never ends or
/// prints without end is killed, and the password is missing.
///
/// Unattended (no controlling terminal: the daemon, a timer, PostgreSQL's archive_command) it runs in a
/// process group of its own and the whole group is killed: killing `sh` alone left its children
/// (`sleep 1000; echo pw`, each stage of a pipeline) running for ever, holding our pipe. On a terminal it
/// stays in our group, because a background group reading the terminal (a command asking for a PIN on
/// /dev/tty) is stopped by SIGTTIN; Ctrl-C reaches all of it, and a timeout kills every process below `sh`.
fn from_command(cmd: &str) -> Result<Zeroizing<String>> {
    use std::os::unix::process::CommandExt;
    let name = "the password command";
    let own_group = !has_controlling_terminal();
    let mut command = std::process::Command::new("sh");
    if own_group {
        command.process_group(0);
    }
    let mut child = command
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| Error::Password(format!("cannot run the password command: {e}")))?;
    let deadline = std::time::Instant::now() + timeout();
    let stdout = child.stdout.take();
    let read = within_timeout(name, move || {
        use std::io::Read;
        let mut bytes = Zeroizing::new(Vec::new());
        if let Some(out) = stdout {
            out.take(MAX_PASSWORD_LEN as u64 + 1)
                .read_to_end(&mut bytes)?;
        }
        Ok(bytes)
    });
    let bytes = match read {
        Ok(Ok(bytes)) if bytes.len() <= MAX_PASSWORD_LEN => bytes,
        Ok(Ok(_)) => {
            stop(&mut child, own_group);
            return Err(Error::Password(format!(
                "the password command printed more than {MAX_PASSWORD_LEN} bytes (a password is one line)"
            )));
        }
        Ok(Err(e)) => {
            stop(&mut child, own_group);
            return Err(Error::Password(format!(
                "cannot read the password command's output: {e}"
            )));
        }
        Err(e) => {
            stop(&mut child, own_group);
            return Err(e);
        }
    };
    let status = wait_until(&mut child, deadline, own_group)?;
    if !status.success() {
        return Err(Error::Password(format!(
            "the password command failed ({status})"
        )));
    }
    first_line(&bytes, name, false)
}

/// Waits for `child` to exit until `deadline`, then kills it: a missing password.
fn wait_until(
    child: &mut std::process::Child,
    deadline: std::time::Instant,
    own_group: bool,
) -> Result<std::process::ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Ok(None) => {
                stop(child, own_group);
                return Err(timed_out("the password command"));
            }
            Err(e) => {
                return Err(Error::Password(format!(
                    "cannot wait for the password command: {e}"
                )))
            }
        }
    }
}

/// Kills the password command: its whole process group if it leads one (`own_group`: `sh`'s pid is the
/// group's id), else (on a terminal, in our group) every process below `sh`, then `sh`, and reaps it. Both
/// are signalled before `sh` is reaped: until then its pid, the group's id, cannot be reused, and its
/// children stay its children.
fn stop(child: &mut std::process::Child, own_group: bool) {
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::unistd::Pid;
    if let Ok(pid) = i32::try_from(child.id()) {
        if own_group {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        } else {
            // Stopped first, so that none of them starts another process while the others are found.
            let below = descendants(pid);
            for &p in &below {
                let _ = kill(Pid::from_raw(p), Signal::SIGSTOP);
            }
            for p in below.iter().copied().chain(descendants(pid)) {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The processes below `root` (children, their children, ...), from /proc; empty where /proc is unreadable.
fn descendants(root: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            // The parent is the second field after the command name, which is in parentheses and may hold
            // spaces and parentheses itself: parse from the last ')'.
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|f| f.parse::<i32>().ok());
            if let Some(ppid) = ppid {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        for &(c, _) in parent_of.iter().filter(|&&(_, pp)| pp == p) {
            // A pid read twice (exited and reused while /proc was listed) must not loop.
            if !found.contains(&c) {
                found.push(c);
            }
        }
        i += 1;
    }
    found.remove(0);
    found
}

/// Whether this process has a controlling terminal (opening /dev/tty fails with ENXIO where it has none).
fn has_controlling_terminal() -> bool {
    std::fs::File::open("/dev/tty").is_ok()
}

/// Runs `read` in a helper thread and waits [`timeout`] for it. A read still blocked then (a FIFO without a
/// writer, a command that never closes its output) is left to end with the process, which fails at once.
fn within_timeout<T: Send + 'static>(
    what: &str,
    read: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<std::io::Result<T>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("password-read".into())
        .spawn(move || {
            let _ = tx.send(read());
        })
        .map_err(|e| Error::Password(format!("cannot read {what}: {e}")))?;
    rx.recv_timeout(timeout()).map_err(|_| timed_out(what))
}

fn timed_out(what: &str) -> Error {
    Error::Password(format!(
        "{what} gave no password within {} s (CAIRN_PASSWORD_TIMEOUT): a FIFO nobody writes to, or a command that does not end?",
        timeout().as_secs()
    ))
}

/// How long a password file or command may take: `CAIRN_PASSWORD_TIMEOUT` seconds, else 60 (room for a
/// command that asks a human, e.g. a hardware token's PIN).
fn timeout() -> Duration {
    std::env::var("CAIRN_PASSWORD_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs)
}

/// The first line of `bytes` (a trailing CR/LF is not part of the password), which must be complete within
/// [`MAX_PASSWORD_LEN`]; for a file (`rest_allowed`) anything after the first line is ignored.
fn first_line(bytes: &[u8], from: &str, rest_allowed: bool) -> Result<Zeroizing<String>> {
    let end = bytes.iter().position(|b| *b == b'\n' || *b == b'\r');
    let too_long = match end {
        Some(n) => n > MAX_PASSWORD_LEN || (!rest_allowed && bytes.len() > MAX_PASSWORD_LEN),
        None => bytes.len() > MAX_PASSWORD_LEN,
    };
    if too_long {
        return Err(Error::Password(format!(
            "{from}: its first line is longer than {MAX_PASSWORD_LEN} bytes (a password is one line)"
        )));
    }
    let line = &bytes[..end.unwrap_or(bytes.len())];
    let text = std::str::from_utf8(line)
        .map_err(|_| Error::Password(format!("{from}: the password is not UTF-8")))?;
    non_empty(Zeroizing::new(text.to_string()), from)
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
