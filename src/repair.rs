//! `repair index`: rebuilds the SQLite index from the pack trailers and snapshot files alone.
//!
//! The new index is built in a separate file and swapped in with a rename, so a crash during the rebuild
//! leaves the old index (or none) in place and the rebuild can simply run again. Damaged packs and snapshot
//! files are skipped and reported, never deleted: their data may still be salvageable by hand.

use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::fsutil;
use crate::hashing::Id;
use crate::index::Index;
use crate::lock;
use crate::pack;
use crate::repo::{list_pack_files, INDEX_FILE};
use crate::snapshot::Snapshot;

/// What a rebuild found.
#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    pub packs: u64,
    pub blobs: u64,
    pub snapshots: u64,
    /// Packs and snapshot files that could not be read, with the reason.
    pub skipped: Vec<String>,
}

/// Rebuilds `<root>/index.sqlite` under an exclusive lock.
pub fn repair_index(root: &Path) -> Result<RepairReport> {
    if !root.join("config").is_file() {
        return Err(Error::NotARepository(root.to_path_buf()));
    }
    crate::config::Config::load(&root.join("config"))?;
    let _lock = lock::acquire(root, true, "repair index")?;
    let new_path = root.join("index.sqlite.rebuild");
    remove_db_files(&new_path)?;
    let mut report = RepairReport::default();
    {
        let mut index = Index::open(&new_path)?;
        for (id, _) in list_pack_files(&root.join("packs"))? {
            let hex = id.to_hex();
            let path = root.join("packs").join(&hex[..2]).join(&hex);
            let len = std::fs::metadata(&path)
                .map_err(|e| Error::io(&path, e))?
                .len();
            match pack::read_trailer(&path) {
                Ok(entries) => {
                    report.packs += 1;
                    report.blobs += entries.len() as u64;
                    index.add_pack(id, len, &entries)?;
                }
                Err(e) => report.skipped.push(format!("pack {id}: {e}")),
            }
        }
        let snap_dir = root.join("snapshots");
        for e in std::fs::read_dir(&snap_dir).map_err(|e| Error::io(&snap_dir, e))? {
            let e = e.map_err(|e| Error::io(&snap_dir, e))?;
            let Some(id) = e.file_name().to_str().and_then(Id::from_hex) else {
                continue;
            };
            match Snapshot::load(&snap_dir, &id) {
                Ok(s) => {
                    index.add_snapshot(&s, &id.to_hex())?;
                    report.snapshots += 1;
                }
                Err(err) => report.skipped.push(format!("snapshot {id}: {err}")),
            }
        }
        // Fold the write-ahead log into the file so the rename below moves one complete database.
        index.raw().pragma_update(None, "journal_mode", "DELETE")?;
    }
    let live = root.join(INDEX_FILE);
    // The old log must go before the rename: SQLite would otherwise replay it onto the new database.
    remove_db_files_except_main(&live)?;
    std::fs::rename(&new_path, &live).map_err(|e| Error::io(&live, e))?;
    fsutil::sync_dir(root)?;
    Ok(report)
}

fn remove_db_files(main: &Path) -> Result<()> {
    fsutil::remove_durable(main)?;
    remove_db_files_except_main(main)
}

fn remove_db_files_except_main(main: &Path) -> Result<()> {
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut p = main.as_os_str().to_owned();
        p.push(suffix);
        fsutil::remove_durable(Path::new(&p))?;
    }
    Ok(())
}
