//! Physical base backups for point-in-time recovery (format-spec/README.md, "Base backups").
//!
//! `pg_basebackup --format=tar --pgdata=- --wal-method=none` writes the cluster as one tar to its stdout;
//! that stdout is a snapshot stream named [`STREAM`], chunked like a dump stream, so nothing is staged on
//! disk and a second base backup of a mostly unchanged cluster shares almost all of its chunks with the
//! first. No WAL goes into the tar: the WAL the backup needs is the instance's archive (pg_basebackup
//! waits until the server has archived it before it exits, which is why the server must archive).
//!
//! The facts ([`BaseBackupFacts`]: start and stop LSN, timeline, segment size, times, system identifier)
//! are read from the tar as it passes: the `backup_label` member (start LSN, timeline), the tail of
//! `backup_manifest` (its `WAL-Ranges`: the stop LSN) and the head of `global/pg_control` (the cluster's
//! system identifier, so what is recorded is what the stored bytes say). They go into the snapshot metadata
//! under [`METADATA_KEY`].
//!
//! Invariants: pg_basebackup is started only when the stream is first read (a snapshot that backs up the
//! instance's files first does not hold a backup open on the server meanwhile); the snapshot is written only
//! if pg_basebackup exited 0 and the tar held all three members; a stream dropped early kills
//! pg_basebackup.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    capture_stderr, col, describe_status, one_line, spawn_error, PgConn, Session, STDERR_LIMIT,
};
use crate::backup::{ChildGuard, MetadataHook, StreamSource};
use crate::error::{Error, Result};
use crate::snapshot::Snapshot;

/// The stream holding a base backup's tar.
pub const STREAM: &str = "base.tar";

/// The key of the snapshot metadata object holding [`BaseBackupFacts`].
pub const METADATA_KEY: &str = "basebackup";

/// What cairn records about a base backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseBackupFacts {
    /// The stream holding the tar ([`STREAM`]).
    pub stream: String,
    pub server: String,
    pub server_version: String,
    pub server_version_num: i32,
    /// The server's binaries (`pg_config`'s BINDIR), when the connecting role may read it.
    #[serde(default)]
    pub bin_dir: Option<String>,
    pub wal_segment_size: u64,
    /// The timeline the backup ends on.
    pub timeline: u32,
    /// Where replay starts (`START WAL LOCATION` of the backup label), `X/Y` as PostgreSQL prints it.
    pub start_lsn: String,
    /// Where the backup is consistent (the end of the manifest's last WAL range).
    pub stop_lsn: String,
    /// The first and last WAL segment the backup needs.
    pub start_wal_file: String,
    pub stop_wal_file: String,
    pub start_time: DateTime<Utc>,
    /// When pg_basebackup finished (after the server archived the WAL the backup needs).
    pub stop_time: DateTime<Utc>,
    pub pg_basebackup_stderr: String,
    /// The database system identifier of the cluster copied, from the tar's `global/pg_control` (the bytes
    /// stored), as a decimal string like a WAL object's. Absent in base backups taken before it was recorded.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::wal::sysid_text"
    )]
    pub system_identifier: Option<u64>,
}

impl BaseBackupFacts {
    /// The base backup facts of a snapshot, if it holds a base backup (`None` also for facts that do not
    /// decode: such a snapshot is no base backup cairn can restore).
    pub fn of(snap: &Snapshot) -> Option<BaseBackupFacts> {
        let v = snap.metadata.as_ref()?.get(METADATA_KEY)?;
        let facts: BaseBackupFacts = serde_json::from_value(v.clone()).ok()?;
        snap.streams
            .iter()
            .any(|s| s.name == facts.stream)
            .then_some(facts)
    }

    /// The first segment the backup needs, as a segment number.
    pub fn start_segno(&self) -> Option<u64> {
        parse_lsn(&self.start_lsn).map(|l| l / self.wal_segment_size.max(1))
    }

    /// The last segment the backup needs.
    pub fn stop_segno(&self) -> Option<u64> {
        parse_lsn(&self.stop_lsn).map(|l| l.saturating_sub(1) / self.wal_segment_size.max(1))
    }
}

/// An LSN as PostgreSQL prints it (`16/B374D848`).
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

/// The file name of segment `segno` on `timeline` (PostgreSQL's `XLogFileName`).
pub fn segment_file_name(timeline: u32, segno: u64, seg_size: u64) -> String {
    let per_id = segments_per_xlog_id(seg_size);
    format!("{timeline:08X}{:08X}{:08X}", segno / per_id, segno % per_id)
}

/// The timeline and segment number of a segment file name (24 hex digits), for this segment size.
pub fn parse_segment_file_name(name: &str, seg_size: u64) -> Option<(u32, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let tli = u32::from_str_radix(&name[..8], 16).ok()?;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..], 16).ok()?;
    Some((tli, log * segments_per_xlog_id(seg_size) + seg))
}

fn segments_per_xlog_id(seg_size: u64) -> u64 {
    (0x1_0000_0000u64 / seg_size.max(1)).max(1)
}

/// What is known before pg_basebackup runs, read over one connection.
struct ServerFacts {
    server_version: String,
    server_version_num: i32,
    wal_segment_size: u64,
    bin_dir: Option<String>,
}

/// Checks that the server archives its WAL (a base backup without the archive restores nothing) and reads
/// its version, segment size and (if allowed) binary directory.
fn server_facts(conn: &PgConn, db: &str) -> Result<ServerFacts> {
    let s = Session::open(conn, db)?;
    let row = s.query_one(
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int,
                current_setting('archive_mode'),
                (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),
                pg_is_in_recovery()",
        &[],
    )?;
    let archive_mode: String = col(&row, 2)?;
    let in_recovery: bool = col(&row, 4)?;
    if archive_mode == "off" || (in_recovery && archive_mode != "always") {
        return Err(Error::Invalid(format!(
            "the server at {} does not archive its WAL (archive_mode = {archive_mode}{}): a base backup \
             is restorable only with the WAL archived after it; run `cairn instance wal-setup NAME --apply` \
             and restart the server",
            conn.server(),
            if in_recovery { ", and it is a standby" } else { "" }
        )));
    }
    let seg: i64 = col(&row, 3)?;
    // pg_config is readable by superusers only; without it the binaries are looked for elsewhere.
    let bin_dir = s
        .query("SELECT setting FROM pg_config WHERE name = 'BINDIR'", &[])
        .ok()
        .and_then(|rows| rows.first().and_then(|r| r.try_get::<_, String>(0).ok()));
    Ok(ServerFacts {
        server_version: col(&row, 0)?,
        server_version_num: col(&row, 1)?,
        wal_segment_size: u64::try_from(seg).unwrap_or(16 << 20),
        bin_dir,
    })
}

/// The pg_basebackup to run: the server's own when its directory is known, else the one on `PATH`.
fn pg_basebackup_program(bin_dir: Option<&str>) -> PathBuf {
    bin_dir
        .map(|d| Path::new(d).join("pg_basebackup"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("pg_basebackup"))
}

/// The running (or not yet started) pg_basebackup behind the stream.
struct Producer {
    command: Option<Command>,
    child: ChildGuard,
    stdout: Option<ChildStdout>,
    stderr: Option<JoinHandle<String>>,
    watcher: TarWatcher,
    started: Option<DateTime<Utc>>,
}

impl Producer {
    fn start(&mut self) -> std::io::Result<()> {
        let Some(mut cmd) = self.command.take() else {
            return Ok(());
        };
        self.started = Some(Utc::now());
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut child = cmd
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), spawn_error(&program, e).to_string()))?;
        self.stdout = child.stdout.take();
        self.stderr = child.stderr.take().map(|e| capture_stderr(e, STDERR_LIMIT));
        self.child = ChildGuard(Some(child));
        Ok(())
    }
}

/// The stream's reader: starts pg_basebackup at the first read and shows the tar to the watcher.
struct BaseBackupReader(Arc<Mutex<Producer>>);

impl Read for BaseBackupReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        p.start()?;
        let n = match p.stdout.as_mut() {
            Some(out) => out.read(buf)?,
            None => 0,
        };
        p.watcher.feed(&buf[..n]);
        Ok(n)
    }
}

/// Prepares a base backup of the cluster `conn` reaches (through database `db`): the stream of its tar and
/// the hook that records its facts (see the module docs).
pub fn source(conn: &PgConn, db: &str) -> Result<(StreamSource, MetadataHook)> {
    let facts = server_facts(conn, db)?;
    let program = pg_basebackup_program(facts.bin_dir.as_deref());
    let mut cmd = Command::new(&program);
    cmd.args([
        "--pgdata=-",
        "--format=tar",
        "--wal-method=none",
        "--checkpoint=fast",
        "--no-password",
        "--label=cairn base backup",
    ])
    .envs(conn.child_env(db))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let producer = Arc::new(Mutex::new(Producer {
        command: Some(cmd),
        child: ChildGuard(None),
        stdout: None,
        stderr: None,
        watcher: TarWatcher::default(),
        started: None,
    }));
    let recorded: Arc<Mutex<Option<BaseBackupFacts>>> = Arc::new(Mutex::new(None));
    let (for_finish, for_hook) = (Arc::clone(&recorded), Arc::clone(&recorded));
    let shared = Arc::clone(&producer);
    let server = conn.server();
    let program_name = program.display().to_string();
    let finish = move || -> Result<()> {
        let mut p = shared.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = p
            .child
            .0
            .take()
            .ok_or_else(|| Error::Postgres(format!("{program_name} was never started")))?;
        let status = child
            .wait()
            .map_err(|e| Error::Postgres(format!("waiting for {program_name}: {e}")))?;
        let stderr = p
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if !status.success() {
            return Err(Error::Postgres(format!(
                "pg_basebackup of {server} failed ({}): {}; no snapshot written",
                describe_status(&status),
                one_line(&stderr)
            )));
        }
        let facts = p.watcher.facts(&facts, &server, p.started, stderr)?;
        *for_finish.lock().unwrap_or_else(|e| e.into_inner()) = Some(facts);
        Ok(())
    };
    let hook: MetadataHook = Box::new(move |meta: &mut Option<serde_json::Value>| {
        let Some(facts) = for_hook.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return;
        };
        let value = serde_json::to_value(&facts).unwrap_or(serde_json::Value::Null);
        crate::backup::set_metadata(meta, METADATA_KEY, value);
    });
    Ok((
        StreamSource {
            name: STREAM.to_string(),
            reader: Box::new(BaseBackupReader(producer)),
            finish: Box::new(finish),
        },
        hook,
    ))
}

/// The server's archiver as `health` sees it: `pg_stat_archiver`, and the finished segments still waiting
/// to be archived (`.ready` files in `pg_wal/archive_status`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArchiverStatus {
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<DateTime<Utc>>,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<DateTime<Utc>>,
    pub failed_count: i64,
    /// Finished segments not archived yet, and since when the oldest waits.
    pub waiting_segments: i64,
    pub oldest_waiting_since: Option<DateTime<Utc>>,
    pub archive_timeout_s: f64,
    pub now: DateTime<Utc>,
}

/// Reads the archiver's state (`pg_ls_archive_statusdir` needs a superuser or `pg_monitor`).
pub fn archiver_status(conn: &PgConn, db: &str) -> Result<ArchiverStatus> {
    let s = Session::open(conn, db)?;
    let row = s.query_one(
        "SELECT a.last_archived_wal, extract(epoch FROM a.last_archived_time)::float8,
                a.last_failed_wal, extract(epoch FROM a.last_failed_time)::float8, a.failed_count,
                w.n, extract(epoch FROM w.oldest)::float8,
                extract(epoch FROM current_setting('archive_timeout')::interval)::float8,
                extract(epoch FROM now())::float8
         FROM pg_stat_archiver a,
              (SELECT count(*) AS n, min(modification) AS oldest FROM pg_ls_archive_statusdir()
               WHERE name LIKE '%.ready') w",
        &[],
    )?;
    let time = |i: usize| -> Result<Option<DateTime<Utc>>> {
        let secs: Option<f64> = col(&row, i)?;
        Ok(secs.and_then(|s| DateTime::from_timestamp_millis((s * 1000.0) as i64)))
    };
    Ok(ArchiverStatus {
        last_archived_wal: col(&row, 0)?,
        last_archived_time: time(1)?,
        last_failed_wal: col(&row, 2)?,
        last_failed_time: time(3)?,
        failed_count: col(&row, 4)?,
        waiting_segments: col(&row, 5)?,
        oldest_waiting_since: time(6)?,
        archive_timeout_s: col(&row, 7)?,
        now: time(8)?.unwrap_or_else(Utc::now),
    })
}

/// The history file of the server's current timeline (none on the first timeline or a standby): its name
/// and content. A promoted server's history file is archived only when archiving was on at its promotion,
/// and recovery cannot follow the timeline without it. `pg_read_binary_file` needs a superuser or
/// `pg_read_server_files`, like `ALTER SYSTEM` needs a superuser.
pub fn timeline_history(conn: &PgConn, db: &str) -> Result<Option<(String, Vec<u8>)>> {
    let s = Session::open(conn, db)?;
    // From the WAL file being written, not the last checkpoint: a just-promoted server's checkpoint may
    // still name the old timeline. A standby writes no WAL of its own: nothing to archive.
    let row = s.query_one(
        "SELECT CASE WHEN pg_is_in_recovery() THEN NULL
                     ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END",
        &[],
    )?;
    let Some(hex): Option<String> = col(&row, 0)? else {
        return Ok(None);
    };
    let tli = u32::from_str_radix(&hex, 16)
        .map_err(|_| Error::Postgres(format!("the server's WAL file names timeline {hex:?}")))?;
    if tli <= 1 {
        return Ok(None);
    }
    let file = format!("{tli:08X}.history");
    let row = s.query_one(
        "SELECT pg_read_binary_file('pg_wal/' || $1)",
        &[&file.as_str()],
    )?;
    let bytes: Vec<u8> = col(&row, 0)?;
    Ok(Some((file, bytes)))
}

/// What [`archiving_problem`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchivingProblem {
    Failing,
    Behind,
}

/// What is wrong with archiving, if anything: archive_command failing (its last failure is newer than its
/// last success), or archiving stalled (a finished segment has waited longer than `archive_timeout` plus
/// `grace`). An idle server archives nothing and is not stalled.
pub fn archiving_problem(
    st: &ArchiverStatus,
    grace: chrono::Duration,
) -> Option<(ArchivingProblem, String)> {
    if let Some(failed) = st.last_failed_time {
        if st.last_archived_time.is_none_or(|ok| failed > ok) {
            return Some((ArchivingProblem::Failing, format!(
                "archive_command is failing: {} failed at {} ({} failures since the statistics were reset); \
                 the server's log has the command's error",
                st.last_failed_wal.as_deref().unwrap_or("?"),
                failed.format("%Y-%m-%d %H:%M:%S UTC"),
                st.failed_count
            )));
        }
    }
    let limit = chrono::Duration::milliseconds((st.archive_timeout_s * 1000.0) as i64) + grace;
    match st.oldest_waiting_since {
        Some(since) if st.waiting_segments > 0 && st.now - since > limit => Some((ArchivingProblem::Behind, format!(
            "WAL archiving is behind: {} finished segments wait, the oldest since {} (archive_timeout {} s + \
             grace {} s); last archived {} at {}",
            st.waiting_segments,
            since.format("%Y-%m-%d %H:%M:%S UTC"),
            st.archive_timeout_s,
            grace.num_seconds(),
            st.last_archived_wal.as_deref().unwrap_or("nothing"),
            st.last_archived_time
                .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                .unwrap_or_else(|| "-".into())
        ))),
        _ => None,
    }
}

/// How much of `backup_label` is kept (it is a few hundred bytes) and of the end of `backup_manifest`
/// (its WAL ranges and checksum are its last lines).
const LABEL_LIMIT: usize = 64 * 1024;
const MANIFEST_TAIL: usize = 64 * 1024;

/// How much of `global/pg_control` is kept: PostgreSQL's `ControlFileData` (src/include/catalog/
/// pg_control.h) starts with `uint64 system_identifier`, then `uint32 pg_control_version` at byte 8 (which
/// "must be 8 bytes into the file" in every release).
const CONTROL_HEAD: usize = 12;

/// Which member's bytes are being kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
    Label,
    Manifest,
    Control,
}

/// Follows a tar stream as it passes (512-byte headers, each member's data padded to 512 bytes) and keeps
/// `backup_label` and the tail of `backup_manifest`. It never fails the stream: what it could not find is
/// reported by [`TarWatcher::facts`].
#[derive(Debug, Default)]
struct TarWatcher {
    header: Vec<u8>,
    /// Data bytes of the current member still to come, then its padding.
    remaining: u64,
    padding: u64,
    capture: Option<Capture>,
    label: Vec<u8>,
    manifest_tail: Vec<u8>,
    control_head: Vec<u8>,
    ended: bool,
    error: Option<String>,
}

impl TarWatcher {
    fn feed(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() && !self.ended && self.error.is_none() {
            if self.remaining > 0 {
                let n = buf
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.keep(&buf[..n]);
                self.remaining -= n as u64;
                buf = &buf[n..];
            } else if self.padding > 0 {
                let n = buf
                    .len()
                    .min(usize::try_from(self.padding).unwrap_or(usize::MAX));
                self.padding -= n as u64;
                buf = &buf[n..];
            } else {
                let n = buf.len().min(512 - self.header.len());
                self.header.extend_from_slice(&buf[..n]);
                buf = &buf[n..];
                if self.header.len() == 512 {
                    let h = std::mem::take(&mut self.header);
                    self.header_done(&h);
                }
            }
        }
    }

    fn keep(&mut self, data: &[u8]) {
        match self.capture {
            Some(Capture::Label) => {
                let room = LABEL_LIMIT.saturating_sub(self.label.len());
                self.label.extend_from_slice(&data[..data.len().min(room)]);
            }
            Some(Capture::Manifest) => {
                self.manifest_tail.extend_from_slice(data);
                if self.manifest_tail.len() > 2 * MANIFEST_TAIL {
                    let cut = self.manifest_tail.len() - MANIFEST_TAIL;
                    self.manifest_tail.drain(..cut);
                }
            }
            Some(Capture::Control) => {
                let room = CONTROL_HEAD.saturating_sub(self.control_head.len());
                self.control_head
                    .extend_from_slice(&data[..data.len().min(room)]);
            }
            None => {}
        }
    }

    fn header_done(&mut self, h: &[u8]) {
        if h.iter().all(|&b| b == 0) {
            self.ended = true;
            return;
        }
        let Some(size) = tar_size(&h[124..136]) else {
            self.error = Some("a tar header with an unreadable size".into());
            return;
        };
        let name = tar_name(h);
        self.capture = match name.trim_start_matches("./") {
            "backup_label" => Some(Capture::Label),
            "backup_manifest" => Some(Capture::Manifest),
            "global/pg_control" => Some(Capture::Control),
            _ => None,
        };
        self.remaining = size;
        self.padding = (512 - size % 512) % 512;
    }

    /// The facts, from the captured members; an error names what the tar lacked.
    fn facts(
        &self,
        server: &ServerFacts,
        server_name: &str,
        started: Option<DateTime<Utc>>,
        stderr: String,
    ) -> Result<BaseBackupFacts> {
        let bad = |what: String| {
            Error::Postgres(format!("pg_basebackup's tar: {what}; no snapshot written"))
        };
        if let Some(e) = &self.error {
            return Err(bad(e.clone()));
        }
        let label = String::from_utf8_lossy(&self.label);
        let field = |key: &str| {
            label
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
        };
        let start_lsn = field("START WAL LOCATION:")
            .and_then(|v| v.split_whitespace().next().map(str::to_string))
            .filter(|v| parse_lsn(v).is_some())
            .ok_or_else(|| bad("no START WAL LOCATION in its backup_label".into()))?;
        let (timeline, stop_lsn) = last_wal_range(&self.manifest_tail)
            .ok_or_else(|| bad("no WAL-Ranges at the end of its backup_manifest".into()))?;
        let seg = server.wal_segment_size;
        let start = parse_lsn(&start_lsn).unwrap_or(0);
        let stop = parse_lsn(&stop_lsn).unwrap_or(0);
        let start_tli = field("START TIMELINE:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(timeline);
        let system_identifier = control_system_identifier(&self.control_head)
            .ok_or_else(|| bad("no readable global/pg_control".into()))?;
        Ok(BaseBackupFacts {
            stream: STREAM.to_string(),
            server: server_name.to_string(),
            server_version: server.server_version.clone(),
            server_version_num: server.server_version_num,
            bin_dir: server.bin_dir.clone(),
            wal_segment_size: seg,
            timeline,
            start_wal_file: segment_file_name(start_tli, start / seg.max(1), seg),
            stop_wal_file: segment_file_name(timeline, stop.saturating_sub(1) / seg.max(1), seg),
            start_lsn,
            stop_lsn,
            start_time: started.unwrap_or_else(Utc::now),
            stop_time: Utc::now(),
            pg_basebackup_stderr: stderr,
            system_identifier: Some(system_identifier),
        })
    }
}

/// The system identifier at the head of a `pg_control` file (see [`CONTROL_HEAD`]). The server wrote it in
/// its own byte order, which need not be this host's (pg_basebackup may copy a remote server): the order is
/// the one in which `pg_control_version` is a plausible version number (1300 for PostgreSQL 13 to 16; every
/// release's is below 10000), which the other order cannot also be. `None` if neither is.
fn control_system_identifier(head: &[u8]) -> Option<u64> {
    let sysid: [u8; 8] = head.get(..8)?.try_into().ok()?;
    let version: [u8; 4] = head.get(8..12)?.try_into().ok()?;
    let plausible = |v: u32| (1..10_000).contains(&v);
    if plausible(u32::from_le_bytes(version)) {
        Some(u64::from_le_bytes(sysid))
    } else if plausible(u32::from_be_bytes(version)) {
        Some(u64::from_be_bytes(sysid))
    } else {
        None
    }
}

/// A tar header's size field: octal digits (NUL/space padded), or base-256 when its high bit is set.
fn tar_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// A tar header's member name (the ustar prefix joined to it).
fn tar_name(h: &[u8]) -> String {
    let cstr = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let name = cstr(&h[..100]);
    if &h[257..262] == b"ustar" {
        let prefix = cstr(&h[345..500]);
        if !prefix.is_empty() {
            return format!("{prefix}/{name}");
        }
    }
    name
}

/// The timeline and end LSN of the last entry of a manifest's `"WAL-Ranges": [...]`.
fn last_wal_range(tail: &[u8]) -> Option<(u32, String)> {
    #[derive(Deserialize)]
    struct Range {
        #[serde(rename = "Timeline")]
        timeline: u32,
        #[serde(rename = "End-LSN")]
        end_lsn: String,
    }
    let text = String::from_utf8_lossy(tail);
    let at = text.rfind("\"WAL-Ranges\"")?;
    let rest = &text[at..];
    let open = rest.find('[')?;
    let close = rest[open..].find(']')? + open;
    let ranges: Vec<Range> = serde_json::from_str(&rest[open..=close]).ok()?;
    let last = ranges.last()?;
    parse_lsn(&last.end_lsn)?;
    Some((last.timeline, last.end_lsn.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archiving_is_failing_or_behind_only_when_the_archiver_says_so() {
        let t = |s: i64| DateTime::from_timestamp(s, 0);
        let base = ArchiverStatus {
            last_archived_wal: Some("000000010000000000000005".into()),
            last_archived_time: t(1000),
            last_failed_wal: None,
            last_failed_time: None,
            failed_count: 0,
            waiting_segments: 0,
            oldest_waiting_since: None,
            archive_timeout_s: 60.0,
            now: t(100_000).unwrap(),
        };
        let grace = chrono::Duration::seconds(300);
        // Idle for a day: nothing waits, nothing wrong.
        assert_eq!(archiving_problem(&base, grace), None);
        // An old failure followed by successes is healed.
        let healed = ArchiverStatus {
            last_failed_time: t(900),
            failed_count: 3,
            ..base.clone()
        };
        assert_eq!(archiving_problem(&healed, grace), None);
        let failing = ArchiverStatus {
            last_failed_time: t(1100),
            last_failed_wal: Some("000000010000000000000006".into()),
            ..healed
        };
        assert!(archiving_problem(&failing, grace).is_some_and(|(k, p)| k
            == ArchivingProblem::Failing
            && p.contains("000000010000000000000006")));
        // A segment waiting within archive_timeout + grace is fine; beyond it, behind.
        let waiting = |since: i64| ArchiverStatus {
            waiting_segments: 1,
            oldest_waiting_since: t(since),
            ..base.clone()
        };
        assert_eq!(archiving_problem(&waiting(100_000 - 300), grace), None);
        assert!(archiving_problem(&waiting(100_000 - 400), grace)
            .is_some_and(|(k, _)| k == ArchivingProblem::Behind));
    }

    #[test]
    fn segment_names_follow_postgres() {
        let seg = 16u64 << 20;
        assert_eq!(parse_lsn("0/2000028"), Some(0x2000028));
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("x/1"), None);
        let segno = 0x16_B374_D848u64 / seg;
        assert_eq!(segment_file_name(1, segno, seg), "0000000100000016000000B3");
        assert_eq!(
            parse_segment_file_name("0000000100000016000000B3", seg),
            Some((1, segno))
        );
        assert_eq!(parse_segment_file_name("00000001.history", seg), None);
    }

    #[test]
    fn the_watcher_finds_label_and_manifest_in_any_split() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            tar.append_data(&mut h, name, data).unwrap();
        };
        add("PG_VERSION", b"15\n");
        add(
            "backup_label",
            b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTART TIMELINE: 1\n",
        );
        add("base/1/1259", &vec![7u8; 20_000]);
        let sysid = 7_300_000_000_000_000_123u64;
        let mut control = vec![0u8; 8192];
        control[..8].copy_from_slice(&sysid.to_le_bytes());
        control[8..12].copy_from_slice(&1300u32.to_le_bytes());
        add("global/pg_control", &control);
        add(
            "backup_manifest",
            b"{ \"Files\": [],\n\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }\n],\n\"Manifest-Checksum\": \"00\"}\n",
        );
        let bytes = tar.into_inner().unwrap();
        let server = ServerFacts {
            server_version: "15".into(),
            server_version_num: 150000,
            wal_segment_size: 16 << 20,
            bin_dir: None,
        };
        for step in [1, 7, 511, 512, 4096, bytes.len()] {
            let mut w = TarWatcher::default();
            for piece in bytes.chunks(step) {
                w.feed(piece);
            }
            let f = w.facts(&server, "s", None, String::new()).unwrap();
            assert_eq!(f.start_lsn, "0/2000028");
            assert_eq!(f.stop_lsn, "0/2000100");
            assert_eq!(f.timeline, 1);
            assert_eq!(f.start_wal_file, "000000010000000000000002");
            assert_eq!(f.stop_wal_file, "000000010000000000000002");
            assert_eq!(f.system_identifier, Some(sysid));
        }
        let mut w = TarWatcher::default();
        w.feed(&bytes[..1024]);
        assert!(w.facts(&server, "s", None, String::new()).is_err());
    }

    #[test]
    fn the_system_identifier_is_read_from_pg_control_in_the_servers_byte_order() {
        let sysid = 7_715_111_614_543_008_382u64;
        let head = |le: bool| {
            let mut v = Vec::new();
            if le {
                v.extend_from_slice(&sysid.to_le_bytes());
                v.extend_from_slice(&1300u32.to_le_bytes());
            } else {
                v.extend_from_slice(&sysid.to_be_bytes());
                v.extend_from_slice(&1700u32.to_be_bytes());
            }
            v
        };
        assert_eq!(control_system_identifier(&head(true)), Some(sysid));
        assert_eq!(control_system_identifier(&head(false)), Some(sysid));
        assert_eq!(control_system_identifier(&head(true)[..11]), None);
        assert_eq!(control_system_identifier(&[0xff; 12]), None);
        // Base backups taken before the field was recorded still decode (without it).
        let old = serde_json::json!({
            "stream": "base.tar", "server": "s", "server_version": "15", "server_version_num": 150000,
            "bin_dir": null,
            "wal_segment_size": 16777216, "timeline": 1, "start_lsn": "0/2000028", "stop_lsn": "0/2000100",
            "start_wal_file": "000000010000000000000002", "stop_wal_file": "000000010000000000000002",
            "start_time": "2026-11-20T10:00:00Z", "stop_time": "2026-11-20T10:00:01Z",
            "pg_basebackup_stderr": ""
        });
        let facts: BaseBackupFacts = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(facts.system_identifier, None);
        assert_eq!(serde_json::to_value(&facts).unwrap(), old);
        let with = BaseBackupFacts {
            system_identifier: Some(sysid),
            ..facts
        };
        let v = serde_json::to_value(&with).unwrap();
        assert_eq!(v["system_identifier"], sysid.to_string());
        assert_eq!(serde_json::from_value::<BaseBackupFacts>(v).unwrap(), with);
    }
}
