//! Restoring an instance's cluster to a point in time (`cairn instance restore NAME --at T --pg-datadir DIR`):
//! the data directory of the chosen base backup, recovery settings that replay the WAL archive through
//! `cairn wal-fetch` up to the target, and (with `start`) the server started, promoted and checked.
//!
//! Order, so that a refusal changes nothing: the base backup and the WAL chain are checked first
//! ([`crate::pitr::plan_replay`]: no segment missing, none of another database system), the data directory
//! must be absent or empty, and only then is the tar unpacked into it. The server is started as the data
//! directory's OS user (PostgreSQL refuses to run as root): when cairn runs as root, the directory is given
//! to `os_user` (default `postgres`) and `pg_ctl` runs as that user, with that user's `HOME` and without the
//! password in its environment (the restore_command names a password file or command instead).
//!
//! A recovery to a time that runs out of WAL is promoted at the last record it replayed only when that is
//! the archive's end; a gap or unreadable WAL with later segments archived fails the restore, the server
//! left unpromoted. (A `wal-fetch` that cannot read an archived file stops recovery itself: exit 255.)
//!
//! The restored server does not archive (`archive_mode = off` is written): it would otherwise push a new
//! timeline into the same instance's archive. Point it at an instance with `wal-setup` once it is kept.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::pitr::{self, Replay, Segments, ShortStop, Target};
use crate::postgres::basebackup::{parse_lsn, BaseBackupFacts, STREAM};
use crate::repo::Repository;

/// What to restore, where, and whether to start it.
#[derive(Debug, Clone)]
pub struct PitrRequest {
    pub target: Target,
    pub datadir: PathBuf,
    /// `restore_command` as the server will run it (`… wal-fetch --instance NAME %f %p`); the restore
    /// appends `--system-identifier` with the base backup's identifier when it recorded one.
    pub restore_command: String,
    pub start: bool,
    pub port: Option<u16>,
    /// Where pg_ctl, pg_controldata and pg_isready are (default: the backed-up server's, see [`bin_dir`]).
    pub pg_bin: Option<PathBuf>,
    /// The OS user owning the data directory and running the server when cairn runs as root.
    pub os_user: Option<String>,
    /// How long to wait for recovery to reach the target and promote.
    pub timeout: Duration,
}

/// What a restore to a point in time did.
#[derive(Debug, Clone, Serialize)]
pub struct PitrOutcome {
    pub snapshot_id: String,
    pub base_backup: BaseBackupFacts,
    pub replay: Replay,
    pub target: String,
    pub datadir: PathBuf,
    pub started: bool,
    pub port: Option<u16>,
    /// Where the server logs its recovery (with `start`).
    pub log: Option<PathBuf>,
    /// Set when the archive holds no transaction that committed after the target: recovery replayed the
    /// archive to its end (this LSN) and promoted there, which is the cluster as it was at the target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed_to_end: Option<String>,
}

/// Restores instance `name`'s cluster as `req` asks (see the module docs).
pub fn restore(repo: &Repository, name: &str, req: &PitrRequest) -> Result<PitrOutcome> {
    let _lock = crate::lock::acquire_reader_on(repo, "restore")?;
    let backups = pitr::base_backups(repo, name)?;
    let bb = pitr::pick_base_backup(&backups, name, req.target)?;
    let segs = Segments::load(repo, name, bb.facts.wal_segment_size)?;
    let replay = pitr::plan_replay(&segs, name, bb, req.target)?;
    let owner = os_owner(req.os_user.as_deref())?;
    prepare_datadir(&req.datadir, owner.is_some())?;
    unpack(repo, &bb.snapshot, &req.datadir)?;
    write_recovery_settings(&req.datadir, name, bb, &replay, req)?;
    if let Some((uid, gid, _)) = &owner {
        crate::restore::at::chown_tree_at(&req.datadir, *uid, *gid)?;
    }
    let mut out = PitrOutcome {
        snapshot_id: bb.id.to_hex(),
        base_backup: bb.facts.clone(),
        replay,
        target: req.target.to_string(),
        datadir: req.datadir.clone(),
        started: false,
        port: req.port,
        log: None,
        replayed_to_end: None,
    };
    if req.start {
        let bin = bin_dir(req.pg_bin.as_deref(), &bb.facts, &req.datadir);
        let log = req.datadir.join("cairn-recovery.log");
        match start_and_promote(&bin, &req.datadir, &log, owner.as_ref(), req.timeout) {
            Err(e) if req.target != Target::Latest && ended_before_target(&log).is_some() => {
                let end = ended_before_target(&log).unwrap_or_default();
                // Only the archive's end may end recovery: WAL missing or unreadable with more archived
                // after it would otherwise be promoted over, at an earlier point than asked.
                let short = parse_lsn(&end)
                    .and_then(|lsn| segs.stopped_short(bb, out.replay.timeline, lsn));
                if let Some(short) = short {
                    return Err(stopped_short(name, req, &end, short, &log));
                }
                stop_at_the_archives_end(&req.datadir, &end).map_err(|_| e)?;
                start_and_promote(&bin, &req.datadir, &log, owner.as_ref(), req.timeout)?;
                out.replayed_to_end = Some(end);
            }
            r => r?,
        }
        out.started = true;
        out.log = Some(log);
    }
    Ok(out)
}

/// The uid, gid and home of the user the data directory goes to: `os_user` (default `postgres`) when cairn
/// runs as root; nobody else when it does not (the files are its own already).
fn os_owner(os_user: Option<&str>) -> Result<Option<(u32, u32, PathBuf)>> {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        if let Some(u) = os_user {
            let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
                .ok()
                .flatten()
                .map(|u| u.name);
            if me.as_deref() != Some(u) {
                return Err(Error::Usage(format!(
                    "--os-user {u}: only root can give the data directory to another user"
                )));
            }
        }
        return Ok(None);
    }
    let name = os_user.unwrap_or("postgres");
    let user = nix::unistd::User::from_name(name)
        .map_err(|e| Error::Invalid(format!("looking up OS user {name}: {e}")))?
        .ok_or_else(|| {
            Error::Invalid(format!(
                "no OS user {name} to own the data directory (PostgreSQL does not run as root): give --os-user"
            ))
        })?;
    if user.uid.is_root() {
        return Err(Error::Usage(
            "--os-user root: PostgreSQL refuses to run as root".into(),
        ));
    }
    Ok(Some((user.uid.as_raw(), user.gid.as_raw(), user.dir)))
}

/// The data directory must be new or empty; it is created (mode 0700, as PostgreSQL requires), and when
/// cairn runs as root it is root's until the restore gives it away ([`crate::restore::at::chown_tree_at`]).
fn prepare_datadir(dir: &Path, as_root: bool) -> Result<()> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(not_empty(dir));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).at(dir)?;
        }
        Err(e) => return Err(Error::io(dir, e)),
    }
    if as_root {
        // Root's until the unpack is done (see `restore::at::chown_tree_at`): an existing directory its
        // future owner could write would let that user plant entries (a symlink) while root unpacks. Taken
        // only once it is known empty (a live data directory named by mistake is left alone), and checked
        // again once nobody else can add to it.
        std::os::unix::fs::lchown(dir, Some(0), Some(0)).at(dir)?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).at(dir)?;
    if as_root && fs::read_dir(dir).at(dir)?.next().is_some() {
        return Err(not_empty(dir));
    }
    Ok(())
}

fn not_empty(dir: &Path) -> Error {
    Error::Invalid(format!(
        "{}: not empty; restore a data directory into a new or empty directory",
        dir.display()
    ))
}

/// Unpacks the base backup's tar into `dir` as it is read from the repository (no copy of the tar).
fn unpack(repo: &Repository, snap: &crate::snapshot::Snapshot, dir: &Path) -> Result<()> {
    let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(16);
    let dest = dir.to_path_buf();
    let extractor = std::thread::spawn(move || -> std::io::Result<()> {
        let mut archive = tar::Archive::new(ChannelReader {
            rx,
            buf: Vec::new(),
            pos: 0,
        });
        archive.set_preserve_permissions(true);
        archive.set_preserve_mtime(true);
        archive.set_overwrite(false);
        archive.unpack(&dest)
    });
    let mut writer = ChannelWriter(Some(tx));
    let written = crate::restore::dump(repo, snap, STREAM, &mut writer);
    writer.0 = None; // end of stream
    let extracted = extractor
        .join()
        .map_err(|_| Error::Invalid("the tar extraction thread panicked".into()))?;
    // The extractor's error explains a broken pipe on the writing side; report it first.
    extracted.map_err(|e| {
        Error::Invalid(format!(
            "unpacking the base backup into {}: {e}",
            dir.display()
        ))
    })?;
    written.map(|_| ())
}

struct ChannelWriter(Option<crossbeam_channel::Sender<Vec<u8>>>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let broken = || std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        self.0
            .as_ref()
            .ok_or_else(broken)?
            .send(buf.to_vec())
            .map_err(|_| broken())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct ChannelReader {
    rx: crossbeam_channel::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(b) => {
                    self.buf = b;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A value quoted for postgresql.conf.
fn conf_quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// Appends the recovery settings to postgresql.auto.conf (read last, so they win), writes a minimal
/// postgresql.conf and pg_hba.conf where the cluster kept them outside its data directory (Debian), and
/// creates recovery.signal.
fn write_recovery_settings(
    dir: &Path,
    name: &str,
    bb: &pitr::BaseBackup,
    replay: &pitr::Replay,
    req: &PitrRequest,
) -> Result<()> {
    for (file, text) in [
        (
            "postgresql.conf",
            "# written by cairn: the backed-up cluster kept its configuration outside its data directory\n",
        ),
        ("pg_hba.conf", "local all all peer\nlocal replication all peer\n"),
        ("pg_ident.conf", ""),
    ] {
        let p = dir.join(file);
        if !p.exists() {
            fs::write(&p, text).at(&p)?;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).at(&p)?;
        }
    }
    let mut conf = format!(
        "\n# cairn: point-in-time recovery of instance {name} from base backup {} to {}\n",
        bb.id.short(),
        req.target
    );
    let mut command = req.restore_command.clone();
    if let Some(id) = bb.facts.system_identifier {
        // wal-fetch then refuses a segment recorded as another cluster's, should one be archived after the
        // plan checked the chain.
        command += &format!(" --system-identifier {id}");
    }
    conf += &format!("restore_command = {}\n", conf_quote(&command));
    if let Target::Time(t) = req.target {
        let pg_time = t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string();
        conf += &format!("recovery_target_time = {}\n", conf_quote(&pg_time));
    }
    // Named rather than 'latest': the timeline the replay was planned (and its chain checked) along.
    conf += &format!("recovery_target_timeline = '{}'\n", replay.timeline);
    conf += "recovery_target_action = 'promote'\n";
    // The restored server must not push a new timeline into the instance's archive.
    conf += "archive_mode = 'off'\n";
    if let Some(p) = req.port {
        conf += &format!("port = {p}\n");
    }
    let auto = dir.join("postgresql.auto.conf");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&auto)
        .at(&auto)?;
    f.write_all(conf.as_bytes()).at(&auto)?;
    f.sync_all().at(&auto)?;
    let signal = dir.join("recovery.signal");
    fs::write(&signal, b"").at(&signal)
}

/// The directory of pg_ctl: `given`, else the backed-up server's own, else the distribution's directory
/// for the data directory's major version (Debian, then the PGDG RPM layout), else `PATH` (empty path).
pub fn bin_dir(given: Option<&Path>, facts: &BaseBackupFacts, datadir: &Path) -> PathBuf {
    if let Some(g) = given {
        return g.to_path_buf();
    }
    let major = fs::read_to_string(datadir.join("PG_VERSION"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let candidates = facts.bin_dir.iter().map(PathBuf::from).chain([
        PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
        PathBuf::from(format!("/usr/pgsql-{major}/bin")),
    ]);
    for c in candidates {
        if c.join("pg_ctl").is_file() {
            return c;
        }
    }
    PathBuf::new()
}

/// A PostgreSQL program from `bin` (or `PATH`), run as `owner` when given.
fn pg_program(bin: &Path, prog: &str, owner: Option<&(u32, u32, PathBuf)>, dir: &Path) -> Command {
    let path = if bin.as_os_str().is_empty() {
        PathBuf::from(prog)
    } else {
        bin.join(prog)
    };
    let mut c = Command::new(path);
    c.current_dir(dir)
        .stdin(Stdio::null())
        .env("LC_ALL", "C")
        // The server inherits this environment: no password in it (restore_command names its source).
        .env_remove("CAIRN_PASSWORD");
    if let Some((uid, gid, home)) = owner {
        c.uid(*uid)
            .gid(*gid)
            .env("HOME", home)
            .env_remove("XDG_CACHE_HOME");
    }
    c
}

/// Runs a program to completion; its stdout, or an error with its stderr.
fn run(mut c: Command, what: &str) -> Result<String> {
    let out = c
        .output()
        .map_err(|e| Error::Postgres(format!("cannot run {what}: {e}")))?;
    if !out.status.success() {
        return Err(Error::Postgres(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last lines of the server log that say why it stopped.
fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(8);
    lines[start..].join(" | ")
}

/// Starts the server, waits until recovery reached its target and the server promoted, and checks that it
/// accepts connections.
fn start_and_promote(
    bin: &Path,
    dir: &Path,
    log: &Path,
    owner: Option<&(u32, u32, PathBuf)>,
    timeout: Duration,
) -> Result<()> {
    let mut ctl = pg_program(bin, "pg_ctl", owner, dir);
    ctl.args(["start", "-w", "-t"])
        .arg(timeout.as_secs().max(1).to_string())
        .arg("-D")
        .arg(dir)
        .arg("-l")
        .arg(log)
        .stdout(Stdio::null());
    run(ctl, "pg_ctl start").map_err(|e| {
        e.with_note(format!(
            "; the server's log {}: {}",
            log.display(),
            log_tail(log)
        ))
    })?;
    let deadline = Instant::now() + timeout;
    loop {
        let mut cd = pg_program(bin, "pg_controldata", owner, dir);
        cd.arg(dir);
        let state = run(cd, "pg_controldata")?;
        if state
            .lines()
            .any(|l| l.starts_with("Database cluster state:") && l.ends_with("in production"))
        {
            break;
        }
        if !postmaster_running(dir) {
            return Err(Error::Postgres(format!(
                "the restored server stopped before it reached the recovery target and promoted; its log {}: {}",
                log.display(),
                log_tail(log)
            )));
        }
        if Instant::now() > deadline {
            return Err(Error::Postgres(format!(
                "recovery did not reach its target within {} s (the server is still running; its log {})",
                timeout.as_secs(),
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    check_accepting(bin, dir, owner)
}

/// The LSN of the last record replayed, if the server stopped because its WAL (the whole archive) ended
/// before a transaction committed after `recovery_target_time`: PostgreSQL learns that it reached a target
/// time only from a later commit, so a target after the archive's last commit ends recovery with a FATAL
/// error although every transaction it must keep was replayed.
fn ended_before_target(log: &Path) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    if !text.contains("recovery ended before configured recovery target was reached") {
        return None;
    }
    let after = text.rsplit("redo done at ").next()?;
    let lsn = after.split_whitespace().next()?;
    let valid = lsn.split_once('/').is_some_and(|(a, b)| {
        [a, b]
            .iter()
            .all(|h| !h.is_empty() && h.bytes().all(|c| c.is_ascii_hexdigit()))
    });
    valid.then(|| lsn.to_string())
}

/// The error for a recovery that ran out of WAL before the archive's end (see
/// [`pitr::Segments::stopped_short`]); the server stopped without promoting.
fn stopped_short(name: &str, req: &PitrRequest, end: &str, short: ShortStop, log: &Path) -> Error {
    let why = match short {
        ShortStop::Missing(seg) => format!(
            "WAL segment {seg} is missing from the archive although later segments are archived (a gap: \
             run `cairn check`)"
        ),
        ShortStop::Unreadable(seg) => format!(
            "PostgreSQL found no WAL it could replay in the archived segment {seg} although later \
             segments are archived"
        ),
    };
    Error::NotFound(format!(
        "recovery of instance {name} stopped at {end}, before {}: {why}; the server in {} was not \
         promoted (its log: {})",
        req.target,
        req.datadir.display(),
        log.display()
    ))
}

/// Replaces the time target by the LSN where the archive ended: the restarted recovery replays the same WAL
/// (not segments archived since, whose commits are all after the target) and promotes.
fn stop_at_the_archives_end(dir: &Path, lsn: &str) -> Result<()> {
    let conf = format!(
        "# cairn: no transaction in the archive committed after the target time: recover to the archive's end\n\
         recovery_target_time = ''\nrecovery_target_lsn = {}\nrecovery_target_inclusive = on\n",
        conf_quote(lsn)
    );
    let auto = dir.join("postgresql.auto.conf");
    let mut f = fs::OpenOptions::new().append(true).open(&auto).at(&auto)?;
    f.write_all(conf.as_bytes()).at(&auto)?;
    f.sync_all().at(&auto)
}

/// Whether the postmaster of `dir` runs (its pid file names a live process).
fn postmaster_running(dir: &Path) -> bool {
    let Ok(text) = fs::read_to_string(dir.join("postmaster.pid")) else {
        return false;
    };
    text.lines()
        .next()
        .and_then(|l| l.trim().parse::<u32>().ok())
        .is_some_and(crate::lock::process_alive)
}

/// `pg_isready` against the socket directory and port the server wrote into its pid file.
fn check_accepting(bin: &Path, dir: &Path, owner: Option<&(u32, u32, PathBuf)>) -> Result<()> {
    let pid = fs::read_to_string(dir.join("postmaster.pid")).unwrap_or_default();
    let lines: Vec<&str> = pid.lines().collect();
    let port = lines.get(3).map(|s| s.trim()).unwrap_or("");
    let socket = lines.get(4).map(|s| s.trim()).unwrap_or("");
    let listen = lines.get(5).map(|s| s.trim()).unwrap_or("");
    let host = match (socket, listen) {
        (s, _) if !s.is_empty() => s.to_string(),
        ("", "*") | ("", "") => "localhost".to_string(),
        (_, l) => l.to_string(),
    };
    let mut ready = pg_program(bin, "pg_isready", owner, dir);
    ready.args(["-h", &host, "-p", port, "-t", "30"]);
    run(ready, "pg_isready").map(|_| ()).map_err(|e| {
        e.with_note(format!(
            "; the restored server promoted but does not accept connections on {host} port {port}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn owner_and_mode(p: &Path) -> (u32, u32) {
        let m = fs::symlink_metadata(p).unwrap();
        (m.uid(), m.mode() & 0o7777)
    }

    #[test]
    fn as_root_an_empty_data_directory_becomes_roots_and_a_full_one_is_left_alone() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let empty = tmp.path().join("empty");
        fs::create_dir(&empty).unwrap();
        std::os::unix::fs::chown(&empty, Some(1234), Some(1234)).unwrap();
        fs::set_permissions(&empty, fs::Permissions::from_mode(0o777)).unwrap();
        prepare_datadir(&empty, true).unwrap();
        assert_eq!(owner_and_mode(&empty), (0, 0o700));

        // A live data directory named by mistake: refused, its owner and mode untouched.
        let live = tmp.path().join("live");
        fs::create_dir(&live).unwrap();
        fs::write(live.join("PG_VERSION"), b"15").unwrap();
        std::os::unix::fs::chown(&live, Some(1234), Some(1234)).unwrap();
        fs::set_permissions(&live, fs::Permissions::from_mode(0o750)).unwrap();
        let err = prepare_datadir(&live, true).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        assert_eq!(owner_and_mode(&live), (1234, 0o750));

        let new = tmp.path().join("new/data");
        prepare_datadir(&new, true).unwrap();
        assert_eq!(owner_and_mode(&new), (0, 0o700));
    }
}
