//! The per-host key cache of the commands PostgreSQL runs once per WAL file (`wal-push` as archive_command,
//! `wal-fetch` as restore_command; format-spec/README.md, "Key cache"): each would otherwise pay the
//! Argon2id key derivation of a key file (~0.2 s, 64 MiB) on every segment, which bounds archiving to a few
//! segments a second and slows recovery as much.
//!
//! What this module owns: the file `<cache dir>/cairn/keys/<repository id>` (directory 0700, file 0600, owned
//! by the effective user) holding the repository's master key sealed (XChaCha20-Poly1305) under a key that
//! BLAKE3 derives from the password, a random salt, the repository id and the key file id. It is used only
//! by processes that asked for it ([`enable`]) and not with `CAIRN_KEY_CACHE=off`.
//!
//! Invariants:
//! - **Never more than the password gives.** The cache opens only with the same password, and only while the
//!   key file it names still exists in the repository: a wrong password, a removed key (`key remove`,
//!   `key passwd`) or a changed repository falls back to the key files, which decide as without a cache.
//! - **Only the user's own, private file is read.** A cache file not owned by the effective user, readable or
//!   writable by group or others, a symbolic link, anything but a regular file (a FIFO is never waited on),
//!   or one that does not decode is ignored (and replaced).
//! - **Best effort.** Nothing about the cache fails a command: an unreadable or unwritable cache only costs
//!   the key derivation.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{keyfile, Cipher, Crypto, KEY_LEN};
use crate::backend::Backend;
use crate::config::Config;
use crate::error::Result;

/// BLAKE3 `derive_key` context of the key that seals a cached master key.
const CONTEXT_CACHE: &str = "cairn 2026-12-01 host key cache";
/// The cache file format version.
const VERSION: u32 = 1;
/// A cache file is a few hundred bytes; anything larger is not one.
const MAX_LEN: u64 = 4096;

static ENABLED: AtomicBool = AtomicBool::new(false);
static LAST_USE: AtomicU8 = AtomicU8::new(CacheUse::Unused as u8);

/// What the key cache did when this process opened its repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// Not used (not enabled, turned off, or a plaintext repository).
    Unused = 0,
    /// The master key came from the cache (no key derivation).
    Hit = 1,
    /// The key files opened the repository; the cache was written for next time.
    Miss = 2,
}

impl CacheUse {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheUse::Unused => "unused",
            CacheUse::Hit => "hit",
            CacheUse::Miss => "miss",
        }
    }
}

/// Lets this process use the key cache (the commands PostgreSQL runs per WAL file), unless the environment
/// turns it off (`CAIRN_KEY_CACHE=off`, `0`, `no` or `false`).
pub fn enable() {
    let off = std::env::var("CAIRN_KEY_CACHE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "off" | "0" | "no" | "false"
        )
    });
    ENABLED.store(!off, Ordering::Relaxed);
}

/// What the cache did for the last repository this process opened.
pub fn last_use() -> CacheUse {
    match LAST_USE.load(Ordering::Relaxed) {
        1 => CacheUse::Hit,
        2 => CacheUse::Miss,
        _ => CacheUse::Unused,
    }
}

/// The cache file's content.
#[derive(Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    repository_id: String,
    /// The key file whose password sealed this entry.
    key_id: String,
    /// 16 random bytes, hex.
    salt: String,
    /// `nonce | master key encrypted | tag`, hex.
    sealed_key: String,
}

/// The repository's keys from `password`: from the cache when enabled and it holds them, else from the key
/// files ([`keyfile::unlock`]), then cached.
pub fn unlock(backend: &dyn Backend, config: &Config, password: &[u8]) -> Result<Crypto> {
    let cipher = super::cipher_of(config)?;
    if !ENABLED.load(Ordering::Relaxed) {
        return keyfile::unlock(backend, password, cipher);
    }
    let path = cache_file(&config.repository_id);
    if let Some(crypto) = path
        .as_deref()
        .and_then(|p| from_cache(backend, p, &config.repository_id, password, cipher))
    {
        LAST_USE.store(CacheUse::Hit as u8, Ordering::Relaxed);
        return Ok(crypto);
    }
    let crypto = keyfile::unlock(backend, password, cipher)?;
    LAST_USE.store(CacheUse::Miss as u8, Ordering::Relaxed);
    if let (Some(p), Some(master), Some(key_id)) = (path, crypto.master(), crypto.key_id()) {
        if let Err(e) = store(&p, &config.repository_id, key_id, master, password) {
            tracing::debug!(error = %e, "key cache not written");
        }
    }
    Ok(crypto)
}

/// The cache file of a repository, its directory created private; `None` without a usable cache directory
/// or with a repository id that is not a plain name.
fn cache_file(repository_id: &str) -> Option<PathBuf> {
    if repository_id.is_empty()
        || !repository_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return None;
    }
    let dir = crate::repo::cache_dir(&Path::new("cairn").join("keys")).ok()?;
    let md = std::fs::symlink_metadata(&dir).ok()?;
    if !md.is_dir() || md.uid() != nix::unistd::geteuid().as_raw() {
        return None;
    }
    if md.mode() & 0o077 != 0 {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).ok()?;
    }
    Some(dir.join(repository_id))
}

/// The key that seals a cache entry: BLAKE3 of the password, salt and names, each length-prefixed.
fn sealing_key(
    password: &[u8],
    salt: &[u8],
    repository_id: &str,
    key_id: &str,
) -> Zeroizing<[u8; KEY_LEN]> {
    let mut material = Zeroizing::new(Vec::new());
    for part in [password, salt, repository_id.as_bytes(), key_id.as_bytes()] {
        material.extend_from_slice(&(part.len() as u64).to_le_bytes());
        material.extend_from_slice(part);
    }
    Zeroizing::new(blake3::derive_key(CONTEXT_CACHE, &material))
}

fn aad(repository_id: &str, key_id: &str) -> Vec<u8> {
    format!("cairn key cache {repository_id} {key_id}").into_bytes()
}

/// The cached keys, if the file is the user's own and private, opens with `password`, and its key file is
/// still in the repository.
fn from_cache(
    backend: &dyn Backend,
    path: &Path,
    repository_id: &str,
    password: &[u8],
    cipher: Cipher,
) -> Option<Crypto> {
    let bytes = read_private(path)?;
    let entry: CacheFile = serde_json::from_slice(&bytes).ok()?;
    if entry.version != VERSION || entry.repository_id != repository_id {
        return None;
    }
    let salt = hex::decode(&entry.salt).ok()?;
    let sealed = hex::decode(&entry.sealed_key).ok()?;
    let key = sealing_key(password, &salt, repository_id, &entry.key_id);
    let plain = Zeroizing::new(
        super::open_under(
            &key,
            "key cache",
            &aad(repository_id, &entry.key_id),
            &sealed,
        )
        .ok()?,
    );
    let master: Zeroizing<[u8; KEY_LEN]> = Zeroizing::new(plain.as_slice().try_into().ok()?);
    // A removed key must stop opening the repository, cache or not.
    if !keyfile::list(backend).ok()?.contains(&entry.key_id) {
        return None;
    }
    Some(
        Crypto::from_master(&master, cipher)
            .ok()?
            .with_key_id(entry.key_id),
    )
}

/// The bytes of `path` if it is a regular file of the effective user that nobody else may read or write.
fn read_private(path: &Path) -> Option<Zeroizing<Vec<u8>>> {
    let f = crate::fsutil::open_own(path, 0o077, MAX_LEN)?;
    let mut bytes = Zeroizing::new(Vec::new());
    f.take(MAX_LEN + 1).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// Writes the cache entry atomically (a 0600 temporary file renamed over the old entry).
fn store(
    path: &Path,
    repository_id: &str,
    key_id: &str,
    master: &[u8; KEY_LEN],
    password: &[u8],
) -> Result<()> {
    let mut salt = [0u8; 16];
    super::random_bytes(&mut salt)?;
    let key = sealing_key(password, &salt, repository_id, key_id);
    let sealed = super::seal_under(&key, &aad(repository_id, key_id), master)?;
    let entry = CacheFile {
        version: VERSION,
        repository_id: repository_id.to_string(),
        key_id: key_id.to_string(),
        salt: hex::encode(salt),
        sealed_key: hex::encode(sealed),
    };
    let bytes = serde_json::to_vec(&entry)
        .map_err(|e| crate::error::Error::Invalid(format!("encoding the key cache: {e}")))?;
    crate::fsutil::write_durable(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sealing_key_depends_on_every_part_and_their_boundaries() {
        let base = sealing_key(b"pw", b"salt", "repo", "key");
        assert_ne!(*base, *sealing_key(b"pw2", b"salt", "repo", "key"));
        assert_ne!(*base, *sealing_key(b"pw", b"salt2", "repo", "key"));
        assert_ne!(*base, *sealing_key(b"pw", b"salt", "repo2", "key"));
        assert_ne!(*base, *sealing_key(b"pw", b"salt", "repo", "key2"));
        // Moving a byte across a boundary changes the key too.
        assert_ne!(*base, *sealing_key(b"pws", b"alt", "repo", "key"));
    }
}
