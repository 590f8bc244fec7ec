//! The source paths of a backup: how each is resolved, what name its root-tree entry gets, and what the
//! snapshot's metadata records about them (paths that resolved elsewhere, exclude options). See the module
//! docs of [`crate::backup`], "Source paths".

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::RESOLVED_PATHS_KEY;
use crate::error::{Error, IoContext, Result};
use crate::exclude::ExcludeOptions;

/// A source to read: its resolved path and its root-tree name.
pub(super) type Source = (PathBuf, Vec<u8>);

/// The sources to read (root-tree names must be distinct) and the paths to record (as given; see the
/// module docs).
pub(super) fn resolve_sources(paths: &[PathBuf]) -> Result<(Vec<Source>, Vec<String>)> {
    let mut seen = BTreeSet::new();
    let mut sources = Vec::new();
    let mut recorded = Vec::new();
    for p in paths {
        let resolved = p.canonicalize().at(p)?;
        let named = named_path(p, &resolved);
        let name = named
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_else(|| b"root".to_vec());
        if !seen.insert(name.clone()) {
            return Err(Error::Invalid(format!(
                "two source paths end in the same name {:?}; back them up separately",
                String::from_utf8_lossy(&name)
            )));
        }
        recorded.push(named.to_string_lossy().into_owned());
        sources.push((resolved, name));
    }
    Ok((sources, recorded))
}

/// `p` made absolute without resolving symlinks; the resolved path when `p` has a `..` (which only the
/// file system can interpret) or no last component.
fn named_path(p: &Path, resolved: &Path) -> PathBuf {
    match std::path::absolute(p) {
        Ok(abs)
            if abs.file_name().is_some()
                && !abs
                    .components()
                    .any(|c| c == std::path::Component::ParentDir) =>
        {
            abs
        }
        _ => resolved.to_path_buf(),
    }
}

/// Adds the recorded paths that differ from what they resolved to to the metadata.
pub(super) fn record_resolved(
    metadata: &mut Option<serde_json::Value>,
    sources: &[Source],
    recorded: &[String],
) {
    let differing: serde_json::Map<String, serde_json::Value> = sources
        .iter()
        .zip(recorded)
        .map(|((resolved, _), named)| (named.clone(), resolved.to_string_lossy().into_owned()))
        .filter(|(named, resolved)| named != resolved)
        .map(|(named, resolved)| (named, resolved.into()))
        .collect();
    if !differing.is_empty() {
        set_metadata(metadata, RESOLVED_PATHS_KEY, differing.into());
    }
}

/// Sets `key` in the snapshot metadata, making it an object first (a non-object value is kept under
/// `previous`).
pub(crate) fn set_metadata(
    metadata: &mut Option<serde_json::Value>,
    key: &str,
    value: serde_json::Value,
) {
    let m = metadata.get_or_insert_with(|| serde_json::json!({}));
    if !m.is_object() {
        *m = serde_json::json!({ "previous": m.take() });
    }
    m[key] = value;
}

/// Source paths whose parent directory is resolved but whose last component is kept as is, with their
/// root-tree names; names must be distinct.
pub(super) fn literal_sources(paths: &[PathBuf]) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for p in paths {
        let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
            return Err(Error::Invalid(format!(
                "{}: not a named entry",
                p.display()
            )));
        };
        let abs = parent.canonicalize().at(parent)?.join(name);
        if !seen.insert(name.as_bytes().to_vec()) {
            return Err(Error::Invalid(format!(
                "two source paths end in the same name {:?}",
                name
            )));
        }
        out.push((abs, name.as_bytes().to_vec()));
    }
    Ok(out)
}

/// Records the exclude options in the metadata, so that a snapshot says what it leaves out.
pub(super) fn record_excludes(metadata: &mut Option<serde_json::Value>, excludes: &ExcludeOptions) {
    if !excludes.is_empty() {
        let value = serde_json::to_value(excludes).unwrap_or_default();
        set_metadata(metadata, "excludes", value);
    }
}
