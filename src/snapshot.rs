//! Snapshot files (format-spec/README.md, "Snapshots"): one small JSON file per snapshot under `snapshots/`,
//! named by the BLAKE3 of its bytes, plus a row in the index. The file is the source of truth; the row is a
//! cache that `repair index` rebuilds. A snapshot file is written last, after every blob it references is in a
//! durable, indexed pack, inside the transaction that inserts its row (see `Repository::save_snapshot`): a
//! row never names a file that is not durable, and a failed save leaves no file. Because the file is the truth,
//! prune takes its roots from the files, so a file whose row is missing keeps its data.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hashing::Id;

/// Encoding version of snapshot files.
pub const SNAPSHOT_VERSION: u32 = 1;

/// A stream (e.g. a database dump) stored in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    pub name: String,
    pub size: u64,
}

/// Counters of one backup run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Summary {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub dirs: u64,
    /// Bytes read from sources.
    pub bytes_read: u64,
    /// Logical size of everything the snapshot holds.
    pub bytes_total: u64,
    /// Stored (compressed) bytes of the blobs this snapshot added.
    pub bytes_added: u64,
    pub chunks_new: u64,
    pub duration_s: f64,
}

/// Contents of a snapshot file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub time: DateTime<FixedOffset>,
    pub host: String,
    #[serde(default)]
    pub instance: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Absolute source paths, in the order given (lossy UTF-8 for display; the tree holds the exact names).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Root tree: one entry per source path, named by the path's last component.
    #[serde(default)]
    pub tree: Option<Id>,
    /// Streams, described; their content is in `stream_tree` as file nodes named by stream name.
    #[serde(default)]
    pub streams: Vec<StreamInfo>,
    #[serde(default)]
    pub stream_tree: Option<Id>,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub partial: bool,
    #[serde(default)]
    pub summary: Summary,
    /// Source-specific facts (e.g. PostgreSQL server version, LSN, row counts).
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

impl Snapshot {
    /// The names of the streams holding a database dump (`*.dump`, `*.sql`), in stored order.
    pub fn dump_stream_names(&self) -> Vec<&str> {
        self.streams
            .iter()
            .map(|s| s.name.as_str())
            .filter(|n| n.ends_with(".dump") || n.ends_with(".sql"))
            .collect()
    }

    /// The snapshot as `snapshots --json` and the HTTP API show it, with its id.
    pub fn to_json(&self, id: &crate::Id) -> serde_json::Value {
        serde_json::json!({
            "id": id.to_hex(),
            "time": self.time.to_rfc3339(),
            "host": self.host,
            "instance": self.instance,
            "tags": self.tags,
            "paths": self.paths,
            "stream_names": self.stream_names(),
            "streams": self.streams,
            "partial": self.partial,
            "parent": self.parent,
            "tree": self.tree.map(|t| t.to_hex()),
            "summary": self.summary,
            "metadata": self.metadata,
        })
    }

    /// Names of the streams.
    pub fn stream_names(&self) -> Vec<String> {
        self.streams.iter().map(|s| s.name.clone()).collect()
    }

    /// Encodes the snapshot and computes its id.
    pub fn encode(&self) -> Result<(Vec<u8>, Id)> {
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|e| Error::corrupt("snapshot encoding", e))?;
        let id = Id::of(&bytes);
        Ok((bytes, id))
    }

    /// Decodes an untrusted snapshot file and checks it matches the id it is stored under.
    pub fn decode(bytes: &[u8], id: &Id) -> Result<Snapshot> {
        if Id::of(bytes) != *id {
            return Err(Error::corrupt(
                format!("snapshot {id}"),
                "content does not match its id",
            ));
        }
        let snap: Snapshot = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(format!("snapshot {id}"), e))?;
        if snap.version != SNAPSHOT_VERSION {
            return Err(Error::corrupt(
                format!("snapshot {id}"),
                format!("unsupported version {}", snap.version),
            ));
        }
        Ok(snap)
    }

    /// Reads and verifies the snapshot object `id` (twice if it does not verify: `repair index` leaves out
    /// what it finds damaged; see [`crate::backend::read_again_if_damaged`]).
    pub fn load(backend: &dyn crate::backend::Backend, id: &Id) -> Result<Snapshot> {
        crate::backend::read_again_if_damaged(|| {
            let bytes = backend.get(crate::backend::ObjectKind::Snapshot, &id.to_hex())?;
            Snapshot::decode(&bytes, id)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_round_trips_and_detects_tampering() {
        let snap = Snapshot {
            version: SNAPSHOT_VERSION,
            time: DateTime::parse_from_rfc3339("2026-11-24T03:00:00+01:00").unwrap(),
            host: "h".into(),
            instance: Some("odoo".into()),
            tags: vec!["t".into()],
            paths: vec!["/srv/filestore".into()],
            tree: Some(Id::of(b"t")),
            streams: vec![StreamInfo {
                name: "db.dump".into(),
                size: 3,
            }],
            stream_tree: Some(Id::of(b"s")),
            parent: None,
            partial: false,
            summary: Summary::default(),
            metadata: None,
        };
        let (bytes, id) = snap.encode().unwrap();
        assert_eq!(Snapshot::decode(&bytes, &id).unwrap(), snap);
        let mut bad = bytes.clone();
        bad[10] ^= 1;
        assert!(Snapshot::decode(&bad, &id).is_err());
        assert!(Snapshot::decode(b"{}", &Id::of(b"{}")).is_err());
    }
}
