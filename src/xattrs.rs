//! Extended attributes and POSIX ACLs (Linux): read at backup, written back at restore.
//!
//! ACLs are the attributes `system.posix_acl_access` and `system.posix_acl_default` in the kernel's binary
//! form, so they are recorded and restored as any other attribute. Symlinks are never followed (the `l*`
//! calls). A file system without attribute support reads as "no attributes".
//!
//! Restore policy: as root every attribute is written and a failure fails the restore (an ACL silently lost
//! would widen or narrow access). Without root only `user.*` and the ACLs are written: `trusted.*` and
//! `security.*` (capabilities, SELinux labels) need privileges, as ownership does, and are skipped like it.

use std::path::Path;

use crate::error::{Error, Result};
use crate::tree::Xattr;

/// The attributes of `path` (not following a symlink), sorted by name.
pub fn read(path: &Path) -> std::io::Result<Vec<Xattr>> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if unsupported(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        // Gone between list and get (a concurrent change) is not an error.
        if let Some(value) = xattr::get(path, &name)? {
            out.push(Xattr {
                name: std::os::unix::ffi::OsStrExt::as_bytes(name.as_os_str()).to_vec(),
                value,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Writes `attrs` onto `path` (not following a symlink); see the module docs for what is skipped.
pub fn apply(path: &Path, attrs: &[Xattr], as_root: bool) -> Result<()> {
    apply_with(path, attrs, as_root, |name, value| {
        xattr::set(path, name, value)
    })
}

/// Writes `attrs` onto an open file or directory (through its descriptor, no path lookup); `path` names
/// it in errors.
pub fn apply_fd(file: &std::fs::File, path: &Path, attrs: &[Xattr], as_root: bool) -> Result<()> {
    use xattr::FileExt;
    apply_with(path, attrs, as_root, |name, value| {
        file.set_xattr(name, value)
    })
}

fn apply_with(
    path: &Path,
    attrs: &[Xattr],
    as_root: bool,
    set: impl Fn(&std::ffi::OsStr, &[u8]) -> std::io::Result<()>,
) -> Result<()> {
    for x in attrs {
        if !as_root && !unprivileged(&x.name) {
            continue;
        }
        let name = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&x.name);
        set(name, &x.value).map_err(|e| {
            let why = if unsupported(&e) {
                "the target file system does not support extended attributes".to_string()
            } else {
                e.to_string()
            };
            Error::Invalid(format!(
                "{}: cannot restore extended attribute {}: {why}",
                path.display(),
                String::from_utf8_lossy(&x.name)
            ))
        })?;
    }
    Ok(())
}

fn unprivileged(name: &[u8]) -> bool {
    name.starts_with(b"user.") || name.starts_with(b"system.posix_acl_")
}

fn unsupported(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EOPNOTSUPP)
}
