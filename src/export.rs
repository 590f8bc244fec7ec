//! `export`: one snapshot written out as one archive, streamed to any writer (standard output, a file, an
//! HTTP response) straight from the repository.
//!
//! Two layouts, each in a tar or a zip:
//! - **raw** (`tar`, `zip`): the snapshot's root entries and its streams at the archive root, as stored (what
//!   `import-archive` reads back).
//! - **Odoo** (`odoo-zip`, `odoo-tar`): what Odoo's database manager restores: `dump.sql` (the database dump
//!   as plain SQL, see [`crate::postgres::odoo`]), `manifest.json` (Odoo's fields; an imported Odoo backup's
//!   own manifest is handed back as it was) and `filestore/` (the contents of the snapshot's filestore
//!   directory: the one root directory, the one named `filestore`, or the one `--filestore` names).
//!
//! Invariants:
//! - Nothing is restored to a temporary directory or file first: file contents are written from their
//!   chunks into the archive entry by entry, the dump is converted as it streams. Memory stays bounded by
//!   the restore pipeline's window and one tree per directory level.
//! - A zip is written in streaming mode (sizes and checksums in data descriptors), so the writer need not
//!   seek. A tar entry needs its size before its data: the Odoo `dump.sql` of a custom-format dump is
//!   therefore converted twice for a tar (once to count, once to write), and the two must agree.
//! - Every entry's size is what its header says: a content shorter or longer than recorded fails the
//!   export (a damaged repository never yields a well-formed but wrong archive).
//! - What the format cannot hold (zip: FIFOs, devices, non-UTF-8 names; Odoo layout: root entries that are
//!   not the filestore) is left out and named in [`ExportReport::skipped`]; the CLI exits 3.

use std::cell::Cell;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::rc::Rc;

use chrono::{Datelike, Timelike};

use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::postgres::odoo::{self, OdooManifest};
use crate::postgres::PgFacts;
use crate::repo::Repository;
use crate::restore;
use crate::snapshot::Snapshot;
use crate::tree::{Meta, Node, NodeKind};

/// Archive formats `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// The raw layout as a tar.
    Tar,
    /// The raw layout as a zip.
    Zip,
    /// An Odoo backup zip (`dump.sql`, `manifest.json`, `filestore/`).
    OdooZip,
    /// The same as a tar.
    OdooTar,
}

impl std::str::FromStr for ExportFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<ExportFormat> {
        match s {
            "tar" => Ok(ExportFormat::Tar),
            "zip" => Ok(ExportFormat::Zip),
            "odoo-zip" => Ok(ExportFormat::OdooZip),
            "odoo-tar" => Ok(ExportFormat::OdooTar),
            _ => Err(Error::Usage(format!(
                "export format {s:?}: want odoo-zip, odoo-tar, zip or tar"
            ))),
        }
    }
}

impl ExportFormat {
    /// Whether the format is Odoo's layout (which needs a database dump).
    pub fn is_odoo(self) -> bool {
        matches!(self, ExportFormat::OdooZip | ExportFormat::OdooTar)
    }

    fn is_zip(self) -> bool {
        matches!(self, ExportFormat::Zip | ExportFormat::OdooZip)
    }
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub format: ExportFormat,
    /// Odoo layout: the root directory of the snapshot holding the filestore (see the module docs).
    pub filestore: Option<String>,
}

/// What an export could not put in the archive (one line each; empty when it holds the whole snapshot), and
/// for the Odoo layout the manifest it wrote.
#[derive(Debug, Default)]
pub struct ExportReport {
    pub skipped: Vec<String>,
    pub manifest: Option<OdooManifest>,
}

/// Writes the snapshot as an archive to `out` (module docs); returns what the format could not hold.
pub fn export(
    repo: &Repository,
    snap: &Snapshot,
    opts: &ExportOptions,
    out: &mut dyn Write,
) -> Result<ExportReport> {
    let shut = Rc::new(Cell::new(false));
    let gate = Gate {
        out,
        shut: shut.clone(),
    };
    let mut sink: Box<dyn Sink + '_> = if opts.format.is_zip() {
        Box::new(ZipSink::new(gate))
    } else {
        Box::new(TarSink::new(gate))
    };
    let mut report = ExportReport::default();
    let written = if opts.format.is_odoo() {
        write_odoo(repo, snap, opts, sink.as_mut(), &mut report)
    } else {
        write_raw(repo, snap, sink.as_mut(), &mut report)
    };
    if let Err(e) = written {
        // The archive writer ends its archive when dropped unfinished: into the shut gate, not the output.
        shut.set(true);
        drop(sink);
        return Err(e);
    }
    sink.finish()?;
    if shut.get() {
        // A write error that some writer on the way swallowed: the archive is not whole.
        return Err(archive_err(std::io::Error::other(
            "a write to the output failed during the export",
        )));
    }
    Ok(report)
}

/// The archive writer's output. Both `tar::Builder` and `zip::ZipWriter` end their archive in `Drop` when
/// not finished (zip printing "ZipWriter drop failed: ..." on stderr when that fails): after a failed export
/// that would append end blocks or a central directory to a truncated archive, making it look whole up to
/// the failure, and print a second, debug-formatted error. So the gate is shut at the first write error and
/// before a failed export drops its writer, and a shut gate swallows whatever comes after.
struct Gate<'a> {
    out: &'a mut dyn Write,
    shut: Rc<Cell<bool>>,
}

impl Gate<'_> {
    fn note<T>(&self, r: std::io::Result<T>) -> std::io::Result<T> {
        if r.as_ref()
            .is_err_and(|e| e.kind() != std::io::ErrorKind::Interrupted)
        {
            self.shut.set(true);
        }
        r
    }
}

impl Write for Gate<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.shut.get() {
            return Ok(buf.len());
        }
        let r = self.out.write(buf);
        self.note(r)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.shut.get() {
            return Ok(());
        }
        let r = self.out.flush();
        self.note(r)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Layouts
// ---------------------------------------------------------------------------------------------------------

/// The root entries and the streams, sorted by name.
fn write_raw(
    repo: &Repository,
    snap: &Snapshot,
    sink: &mut dyn Sink,
    report: &mut ExportReport,
) -> Result<()> {
    let mut roots = match snap.tree {
        Some(t) => restore::tree(repo, &t)?.nodes,
        None => Vec::new(),
    };
    if let Some(st) = snap.stream_tree {
        let streams = restore::tree(repo, &st)?.nodes;
        roots.extend(
            streams
                .into_iter()
                .filter(|n| snap.streams.iter().any(|s| s.name.as_bytes() == n.name)),
        );
    }
    roots.sort_by(|a, b| a.name.cmp(&b.name));
    for node in &roots {
        write_node(repo, &node.name, node, sink, report)?;
    }
    Ok(())
}

/// `dump.sql`, `manifest.json`, `filestore/`.
fn write_odoo(
    repo: &Repository,
    snap: &Snapshot,
    opts: &ExportOptions,
    sink: &mut dyn Sink,
    report: &mut ExportReport,
) -> Result<()> {
    let stream = dump_stream(snap)?;
    let facts = PgFacts::of(snap)?;
    let roots = match snap.tree {
        Some(t) => restore::tree(repo, &t)?.nodes,
        None => Vec::new(),
    };
    let imported = snap
        .metadata
        .as_ref()
        .is_some_and(|m| m.get("imported_from").is_some());
    // An imported Odoo backup's own manifest is what Odoo wrote: it is handed back, not recomputed.
    let kept_manifest = roots.iter().find(|n| {
        imported && n.name == b"manifest.json" && matches!(n.kind, NodeKind::File { .. })
    });
    let filestore = choose_filestore(&roots, opts.filestore.as_deref(), kept_manifest)?;
    for n in &roots {
        let chosen = filestore.is_some_and(|f| std::ptr::eq(f, n));
        let kept = kept_manifest.is_some_and(|m| std::ptr::eq(m, n));
        if !chosen && !kept {
            report.skipped.push(format!(
                "{:?}: not the filestore; an Odoo backup holds only dump.sql, manifest.json and filestore/ (use --format tar)",
                shown(&n.name)
            ));
        }
    }

    let now = Meta {
        mode: 0o100644,
        mtime: snap.time.timestamp(),
        ..Meta::default()
    };
    let scan = sink.generated(b"dump.sql", &now, &mut |w| {
        odoo::write_plain_sql(repo, snap, &stream, w)
    })?;
    match kept_manifest {
        Some(m) => write_node(repo, b"manifest.json", m, sink, report)?,
        None => {
            let db_name = facts
                .as_ref()
                .map(|f| f.database.clone())
                .or_else(|| snap.instance.clone())
                .unwrap_or_else(|| {
                    stream
                        .rsplit_once('.')
                        .map_or(&*stream, |s| s.0)
                        .to_string()
                });
            let manifest = scan.manifest(&db_name, facts.as_ref());
            let bytes = serde_json::to_vec_pretty(&manifest)
                .map_err(|e| Error::Invalid(format!("manifest.json: {e}")))?;
            sink.file(b"manifest.json", &now, bytes.len() as u64, &mut |w| {
                w.write_all(&bytes).map_err(|e| Error::io("archive", e))?;
                Ok(bytes.len() as u64)
            })?;
            report.manifest = Some(manifest);
        }
    }
    if let Some(fs) = filestore {
        let NodeKind::Dir { subtree } = &fs.kind else {
            return Err(Error::Invalid("the filestore is not a directory".into()));
        };
        write_dir(repo, b"filestore", &fs.meta, subtree, sink, report)?;
    }
    Ok(())
}

/// The snapshot's database dump stream (custom `.dump` or plain `.sql`); exactly one is needed.
fn dump_stream(snap: &Snapshot) -> Result<String> {
    match snap.dump_stream_names().as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(Error::Invalid(
            "an Odoo backup needs a snapshot holding a database dump (taken with --pg, or an imported \
             archive); use --format tar or zip for this one"
                .into(),
        )),
        many => Err(Error::Invalid(format!(
            "the snapshot holds several database dumps ({}); an Odoo backup holds one",
            many.join(", ")
        ))),
    }
}

/// The root directory holding the filestore: `--filestore NAME`, else the one named `filestore`, else the
/// only directory. Several directories and no choice is an error naming them.
fn choose_filestore<'a>(
    roots: &'a [Node],
    named: Option<&str>,
    manifest: Option<&Node>,
) -> Result<Option<&'a Node>> {
    let dirs: Vec<&Node> = roots
        .iter()
        .filter(|n| matches!(n.kind, NodeKind::Dir { .. }))
        .filter(|n| !manifest.is_some_and(|m| std::ptr::eq(*n, m)))
        .collect();
    if let Some(name) = named {
        return dirs
            .iter()
            .find(|n| n.name == name.as_bytes())
            .copied()
            .map(Some)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "--filestore {name:?}: the snapshot has no such directory at its root (it has: {})",
                    names(&dirs)
                ))
            });
    }
    if let Some(f) = dirs.iter().find(|n| n.name == b"filestore") {
        return Ok(Some(f));
    }
    match dirs.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(Error::Usage(format!(
            "the snapshot holds several directories ({}): name the filestore with --filestore NAME",
            names(&dirs)
        ))),
    }
}

fn names(nodes: &[&Node]) -> String {
    nodes
        .iter()
        .map(|n| shown(&n.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A name for messages: lossy UTF-8, control characters escaped.
fn shown(name: &[u8]) -> String {
    String::from_utf8_lossy(name).escape_debug().to_string()
}

// ---------------------------------------------------------------------------------------------------------
// Tree walk
// ---------------------------------------------------------------------------------------------------------

/// Writes one node (and, for a directory, everything below it) under the archive name `name`.
fn write_node(
    repo: &Repository,
    name: &[u8],
    node: &Node,
    sink: &mut dyn Sink,
    report: &mut ExportReport,
) -> Result<()> {
    let left_out = |report: &mut ExportReport, why: String| {
        report.skipped.push(format!(
            "{}: {why}; left out (use --format tar)",
            shown(name)
        ))
    };
    if let Some(why) = sink.refuses_name(name) {
        let what = if matches!(node.kind, NodeKind::Dir { .. }) {
            " with its contents"
        } else {
            ""
        };
        left_out(report, format!("{why}{what}"));
        return Ok(());
    }
    match &node.kind {
        NodeKind::Dir { subtree } => write_dir(repo, name, &node.meta, subtree, sink, report),
        NodeKind::File { size, chunks } => sink.file(name, &node.meta, *size, &mut |w| {
            restore::write_file(repo, chunks, w)
        }),
        NodeKind::Symlink { target } => match sink.symlink(name, &node.meta, target)? {
            None => Ok(()),
            Some(why) => {
                left_out(report, why);
                Ok(())
            }
        },
        special => match sink.special(name, &node.meta, special)? {
            None => Ok(()),
            Some(why) => {
                left_out(report, why);
                Ok(())
            }
        },
    }
}

fn write_dir(
    repo: &Repository,
    name: &[u8],
    meta: &Meta,
    subtree: &Id,
    sink: &mut dyn Sink,
    report: &mut ExportReport,
) -> Result<()> {
    sink.dir(name, meta)?;
    for child in restore::tree(repo, subtree)?.nodes {
        let mut path = name.to_vec();
        path.push(b'/');
        path.extend_from_slice(&child.name);
        write_node(repo, &path, &child, sink, report)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Containers
// ---------------------------------------------------------------------------------------------------------

/// Writes an entry's content; returns the bytes written.
type Content<'a> = dyn FnMut(&mut dyn Write) -> Result<u64> + 'a;

/// Generated content that also yields what was learnt while writing it (the dump's scan).
type Generated<'a> = dyn FnMut(&mut dyn Write) -> Result<(u64, odoo::DumpScan)> + 'a;

/// An archive being written, entry by entry.
trait Sink {
    /// Why the format cannot hold this name, if it cannot.
    fn refuses_name(&self, name: &[u8]) -> Option<String>;
    fn dir(&mut self, name: &[u8], meta: &Meta) -> Result<()>;
    /// A file of known size.
    fn file(&mut self, name: &[u8], meta: &Meta, size: u64, content: &mut Content) -> Result<()>;
    /// A file whose size is known only once written (the converted dump). `content` may be run twice.
    fn generated(
        &mut self,
        name: &[u8],
        meta: &Meta,
        content: &mut Generated,
    ) -> Result<odoo::DumpScan>;
    /// `Some(reason)` when the format cannot hold it.
    fn symlink(&mut self, name: &[u8], meta: &Meta, target: &[u8]) -> Result<Option<String>>;
    fn special(&mut self, name: &[u8], meta: &Meta, kind: &NodeKind) -> Result<Option<String>>;
    fn finish(self: Box<Self>) -> Result<()>;
}

fn archive_err(e: std::io::Error) -> Error {
    Error::io("archive", e)
}

/// A plain tar, GNU long names for long ones.
struct TarSink<'a> {
    t: tar::Builder<Gate<'a>>,
}

impl<'a> TarSink<'a> {
    fn new(out: Gate<'a>) -> TarSink<'a> {
        TarSink {
            t: tar::Builder::new(out),
        }
    }

    fn header(meta: &Meta, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(meta.mode & 0o7777);
        h.set_uid(u64::from(meta.uid));
        h.set_gid(u64::from(meta.gid));
        h.set_mtime(u64::try_from(meta.mtime).unwrap_or(0));
        h.set_size(size);
        h
    }

    fn path(name: &[u8]) -> &std::path::Path {
        std::path::Path::new(std::ffi::OsStr::from_bytes(name))
    }

    /// Appends a header for `size` bytes, then the content straight into the archive, then the padding.
    fn sized(&mut self, name: &[u8], meta: &Meta, size: u64, content: &mut Content) -> Result<()> {
        let mut h = Self::header(meta, tar::EntryType::Regular, size);
        self.t
            .append_data(&mut h, Self::path(name), std::io::empty())
            .map_err(archive_err)?;
        Exact::fill(self.t.get_mut(), name, size, content)?;
        let pad = (512 - size % 512) % 512;
        self.t
            .get_mut()
            .write_all(&[0u8; 512][..pad as usize])
            .map_err(archive_err)
    }
}

impl Sink for TarSink<'_> {
    fn refuses_name(&self, _name: &[u8]) -> Option<String> {
        None
    }

    fn dir(&mut self, name: &[u8], meta: &Meta) -> Result<()> {
        let mut h = Self::header(meta, tar::EntryType::Directory, 0);
        self.t
            .append_data(&mut h, Self::path(name), std::io::empty())
            .map_err(archive_err)
    }

    fn file(&mut self, name: &[u8], meta: &Meta, size: u64, content: &mut Content) -> Result<()> {
        self.sized(name, meta, size, content)
    }

    fn generated(
        &mut self,
        name: &[u8],
        meta: &Meta,
        content: &mut Generated,
    ) -> Result<odoo::DumpScan> {
        // The size first (a tar header precedes its data), then the data.
        let (size, scan) = content(&mut std::io::sink())?;
        self.sized(name, meta, size, &mut |w| content(w).map(|(n, _)| n))?;
        Ok(scan)
    }

    fn symlink(&mut self, name: &[u8], meta: &Meta, target: &[u8]) -> Result<Option<String>> {
        let mut h = Self::header(meta, tar::EntryType::Symlink, 0);
        self.t
            .append_link(&mut h, Self::path(name), Self::path(target))
            .map_err(archive_err)?;
        Ok(None)
    }

    fn special(&mut self, name: &[u8], meta: &Meta, kind: &NodeKind) -> Result<Option<String>> {
        let (entry, rdev) = match kind {
            NodeKind::Fifo => (tar::EntryType::Fifo, None),
            NodeKind::CharDevice { rdev } => (tar::EntryType::Char, Some(*rdev)),
            NodeKind::BlockDevice { rdev } => (tar::EntryType::Block, Some(*rdev)),
            _ => return Ok(Some("an entry of unknown kind".into())),
        };
        let mut h = Self::header(meta, entry, 0);
        if let Some(r) = rdev {
            let (major, minor) = (libc::major(r as libc::dev_t), libc::minor(r as libc::dev_t));
            h.set_device_major(major).map_err(archive_err)?;
            h.set_device_minor(minor).map_err(archive_err)?;
        }
        self.t
            .append_data(&mut h, Self::path(name), std::io::empty())
            .map_err(archive_err)?;
        Ok(None)
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.t.finish().map_err(archive_err)?;
        self.t.get_mut().flush().map_err(archive_err)
    }
}

/// Passes on exactly `left` more bytes; one more is an error.
struct Exact<'a> {
    out: &'a mut dyn Write,
    left: u64,
}

impl Exact<'_> {
    /// Writes `content` into `out`, which must be exactly `size` bytes (a tar header or zip entry announced it).
    fn fill(out: &mut dyn Write, name: &[u8], size: u64, content: &mut Content) -> Result<()> {
        let mut exact = Exact { out, left: size };
        content(&mut exact)?;
        if exact.left != 0 {
            return Err(Error::corrupt(
                "export",
                format!(
                    "{}: {} bytes short of the recorded size {size}",
                    shown(name),
                    exact.left
                ),
            ));
        }
        Ok(())
    }
}

impl Write for Exact<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(std::io::Error::other(
                "the content is longer than its recorded size",
            ));
        }
        let n = self.out.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// A zip in streaming mode (data descriptors): the writer never seeks.
struct ZipSink<'a> {
    z: zip::ZipWriter<zip::write::StreamWriter<Gate<'a>>>,
}

fn zip_err(e: zip::result::ZipError) -> Error {
    match e {
        zip::result::ZipError::Io(e) => archive_err(e),
        other => Error::Invalid(format!("zip: {other}")),
    }
}

impl<'a> ZipSink<'a> {
    fn new(out: Gate<'a>) -> ZipSink<'a> {
        ZipSink {
            z: zip::ZipWriter::new_stream(out),
        }
    }

    fn options(meta: &Meta) -> zip::write::SimpleFileOptions {
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(meta.mode & 0o7777);
        match zip_time(meta.mtime) {
            Some(t) => opts.last_modified_time(t),
            None => opts,
        }
    }

    /// The name as the zip holds it (UTF-8, checked by [`Sink::refuses_name`] before).
    fn name(name: &[u8]) -> String {
        String::from_utf8_lossy(name).into_owned()
    }
}

/// A Unix time as a zip (DOS) time in local time; `None` outside 1980..2107.
fn zip_time(mtime: i64) -> Option<zip::DateTime> {
    let t = chrono::DateTime::from_timestamp(mtime, 0)?.with_timezone(&chrono::Local);
    zip::DateTime::from_date_and_time(
        u16::try_from(t.year()).ok()?,
        t.month() as u8,
        t.day() as u8,
        t.hour() as u8,
        t.minute() as u8,
        t.second() as u8,
    )
    .ok()
}

impl Sink for ZipSink<'_> {
    fn refuses_name(&self, name: &[u8]) -> Option<String> {
        std::str::from_utf8(name)
            .is_err()
            .then(|| "a zip holds only UTF-8 names".to_string())
    }

    fn dir(&mut self, name: &[u8], meta: &Meta) -> Result<()> {
        self.z
            .add_directory(format!("{}/", Self::name(name)), Self::options(meta))
            .map_err(zip_err)
    }

    fn file(&mut self, name: &[u8], meta: &Meta, size: u64, content: &mut Content) -> Result<()> {
        let opts = Self::options(meta).large_file(size >= u64::from(u32::MAX));
        self.z.start_file(Self::name(name), opts).map_err(zip_err)?;
        Exact::fill(&mut self.z, name, size, content)?;
        Ok(())
    }

    fn generated(
        &mut self,
        name: &[u8],
        meta: &Meta,
        content: &mut Generated,
    ) -> Result<odoo::DumpScan> {
        // The size is unknown until written: zip64 sizes, which every reader of Odoo backups (Python's
        // zipfile) understands.
        let opts = Self::options(meta).large_file(true);
        self.z.start_file(Self::name(name), opts).map_err(zip_err)?;
        content(&mut self.z).map(|(_, scan)| scan)
    }

    fn symlink(&mut self, name: &[u8], meta: &Meta, target: &[u8]) -> Result<Option<String>> {
        let Ok(target) = std::str::from_utf8(target) else {
            return Ok(Some("a zip holds only UTF-8 symlink targets".into()));
        };
        self.z
            .add_symlink(Self::name(name), target, Self::options(meta))
            .map_err(zip_err)?;
        Ok(None)
    }

    fn special(&mut self, _name: &[u8], _meta: &Meta, kind: &NodeKind) -> Result<Option<String>> {
        let what = match kind {
            NodeKind::Fifo => "a FIFO",
            _ => "a device",
        };
        Ok(Some(format!("{what} has no zip form")))
    }

    fn finish(self: Box<Self>) -> Result<()> {
        let mut out = self.z.finish().map_err(zip_err)?.into_inner();
        out.flush().map_err(archive_err)
    }
}
