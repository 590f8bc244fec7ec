//! Legacy archives: `import-archive` stores an existing backup archive (a `.tar.gz` with `dump.sql` or
//! `*.dump` and `filestore/`, or an Odoo backup `.zip` with `dump.sql`, `filestore/` and `manifest.json`) as a
//! snapshot with its original time; `export` writes a snapshot back out in that layout.
//!
//! Import extracts into a private temporary directory (entry names are checked by the archive crates: nothing
//! lands outside it), then backs up every top-level entry as a file tree, except the dump, which becomes a
//! stream so it deduplicates with the stream chunker and restores into PostgreSQL like a `--pg` dump.
//! Export restores into a temporary directory and archives the root entries plus the streams, so import then
//! export yields the same files.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, FixedOffset};

use crate::backup::{self, BackupOptions, BackupResult, ParentChoice, StreamSource};
use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::restore::{self, RestoreOptions};
use crate::snapshot::Snapshot;

/// Archive layouts `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// An Odoo backup zip: the dump and `filestore/` (and any other root entry) at the archive root.
    OdooZip,
    /// A plain (uncompressed) tar with the same layout.
    Tar,
}

impl std::str::FromStr for ExportFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<ExportFormat> {
        match s {
            "odoo-zip" | "zip" => Ok(ExportFormat::OdooZip),
            "tar" => Ok(ExportFormat::Tar),
            _ => Err(Error::Invalid(format!(
                "export format {s:?}: want odoo-zip or tar"
            ))),
        }
    }
}

fn is_dump_name(name: &str) -> bool {
    name == "dump.sql" || name.ends_with(".dump")
}

/// Extracts a `.tar.gz`, `.tgz`, `.tar` or `.zip` (by content) into `dest`.
fn extract(archive: &Path, dest: &Path) -> Result<()> {
    let mut f = File::open(archive).at(archive)?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).at(archive)?;
    f.rewind().at(archive)?;
    let bad = |e: &dyn std::fmt::Display| {
        Error::Invalid(format!(
            "{}: not a readable archive: {e}",
            archive.display()
        ))
    };
    match &magic[..n] {
        [0x50, 0x4b, 3, 4] => {
            let mut zip = zip::ZipArchive::new(BufReader::new(f)).map_err(|e| bad(&e))?;
            zip.extract(dest).map_err(|e| bad(&e))
        }
        [0x1f, 0x8b, ..] => tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(f)))
            .unpack(dest)
            .map_err(|e| bad(&e)),
        _ => tar::Archive::new(BufReader::new(f))
            .unpack(dest)
            .map_err(|e| bad(&e)),
    }
}

/// Stores `archive` as a snapshot of `instance` taken at `time`.
pub fn import_archive(
    repo: &Repository,
    archive: &Path,
    instance: Option<String>,
    time: DateTime<FixedOffset>,
) -> Result<BackupResult> {
    let tmp = tempfile::Builder::new()
        .prefix("cairn-import-")
        .tempdir()
        .at(std::env::temp_dir())?;
    let root = tmp.path().join("archive");
    fs::create_dir(&root).at(&root)?;
    extract(archive, &root)?;
    let mut paths = Vec::new();
    let mut streams = Vec::new();
    let mut names: Vec<_> = fs::read_dir(&root)
        .at(&root)?
        .collect::<std::io::Result<Vec<_>>>()
        .at(&root)?;
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let name = e.file_name().to_string_lossy().into_owned();
        if is_dump_name(&name) && e.file_type().at(e.path())?.is_file() {
            let file = File::open(e.path()).at(e.path())?;
            streams.push(StreamSource {
                name,
                reader: Box::new(BufReader::new(file)),
                finish: Box::new(|| Ok(())),
            });
        } else {
            paths.push(e.path());
        }
    }
    if streams.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no dump.sql or *.dump at the archive root",
            archive.display()
        )));
    }
    backup::backup(
        repo,
        BackupOptions {
            paths,
            streams,
            instance,
            tags: vec!["imported".into()],
            parent: ParentChoice::None,
            time: Some(time),
            metadata: Some(
                serde_json::json!({ "imported_from": archive.file_name().map(|n| n.to_string_lossy().into_owned()) }),
            ),
            progress: Progress::hidden(),
            ..BackupOptions::default()
        },
    )
}

/// Writes the snapshot as an archive to `out`.
pub fn export(
    repo: &Repository,
    snap: &Snapshot,
    format: ExportFormat,
    out: &mut dyn Write,
) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("cairn-export-")
        .tempdir()
        .at(std::env::temp_dir())?;
    let root = tmp.path().join("root");
    fs::create_dir(&root).at(&root)?;
    if snap.tree.is_some() {
        restore::restore(
            repo,
            snap,
            &RestoreOptions {
                target: root.clone(),
                ..RestoreOptions::default()
            },
        )?;
    }
    for s in &snap.streams {
        let path = root.join(&s.name);
        let mut f = BufWriter::new(File::create(&path).at(&path)?);
        restore::dump(repo, snap, &s.name, &mut f)?;
        f.into_inner()
            .map_err(|e| Error::io(&path, e.into_error()))?;
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(&root)
        .at(&root)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .at(&root)?;
    entries.sort();
    match format {
        ExportFormat::Tar => write_tar(&root, &entries, out),
        ExportFormat::OdooZip => write_zip(&root, &entries, out),
    }
}

fn write_tar(root: &Path, entries: &[PathBuf], out: &mut dyn Write) -> Result<()> {
    let mut t = tar::Builder::new(out);
    t.follow_symlinks(false);
    for p in entries {
        let name = p.strip_prefix(root).unwrap_or(p);
        if p.is_dir() {
            t.append_dir_all(name, p).at(p)?;
        } else {
            t.append_path_with_name(p, name).at(p)?;
        }
    }
    t.finish().map_err(|e| Error::io("archive", e))
}

fn write_zip(root: &Path, entries: &[PathBuf], out: &mut dyn Write) -> Result<()> {
    // The zip writer needs to seek; build it in a temporary file, then copy it out.
    let mut buf = tempfile::tempfile().at(std::env::temp_dir())?;
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default();
        let mut stack: Vec<PathBuf> = entries.iter().rev().cloned().collect();
        while let Some(p) = stack.pop() {
            let name = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            let md = fs::symlink_metadata(&p).at(&p)?;
            if md.is_dir() {
                z.add_directory(format!("{name}/"), opts)
                    .map_err(|e| Error::Invalid(e.to_string()))?;
                let mut children: Vec<PathBuf> = fs::read_dir(&p)
                    .at(&p)?
                    .map(|e| e.map(|e| e.path()))
                    .collect::<std::io::Result<_>>()
                    .at(&p)?;
                children.sort();
                stack.extend(children.into_iter().rev());
            } else if md.is_file() {
                z.start_file(name, opts)
                    .map_err(|e| Error::Invalid(e.to_string()))?;
                std::io::copy(&mut File::open(&p).at(&p)?, &mut z).at(&p)?;
            }
        }
        z.finish().map_err(|e| Error::Invalid(e.to_string()))?;
    }
    buf.rewind().map_err(|e| Error::io("archive", e))?;
    std::io::copy(&mut buf, out).map_err(|e| Error::io("archive", e))?;
    Ok(())
}
