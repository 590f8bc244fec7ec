//! Key files (format-spec/README.md, "Key files"): `keys/<id>`, each wrapping the repository's master key
//! under a key derived from one password with Argon2id, with the parameters recorded in the file itself (so
//! they can be raised for new keys without touching old ones). A repository has one or more; any one opens it.
//!
//! A key file is untrusted input: [`KeyFile::decode`] bounds every parameter before any work is done with it
//! (a hostile file must not make Argon2 allocate gigabytes), and a file whose name is not the BLAKE3 of its
//! bytes is refused.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Cipher, Crypto, KEY_LEN, OVERHEAD};
use crate::backend::{Backend, ObjectKind};
use crate::error::{Error, Result};
use crate::hashing::Id;

/// Associated data of the wrapped master key.
pub const AAD_KEY_FILE: &[u8] = b"cairn key file";
/// The key file format version.
pub const KEY_FILE_VERSION: u32 = 1;
/// Argon2 version 1.3.
const ARGON2_VERSION: u32 = 0x13;

/// Bounds a reader accepts (and a writer may choose).
const MAX_MEMORY_KIB: u32 = 1024 * 1024;
const MIN_MEMORY_KIB: u32 = 8;
const MAX_ITERATIONS: u32 = 64;
const MAX_PARALLELISM: u32 = 16;

/// Argon2id parameters of one key file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kdf {
    /// Always `argon2id`.
    pub algorithm: String,
    /// Argon2 version, 19 (0x13).
    pub version: u32,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Random salt, hex (16 bytes written; 8..=64 accepted).
    pub salt: String,
}

impl Kdf {
    /// Parameters for a new key: 64 MiB, 3 passes, 4 lanes (RFC 9106's second recommended setting; the lanes
    /// are filled on every core, so the derivation's wall time shrinks with the cores a host has, while an
    /// attacker's memory and work per guess stay those of 64 MiB and 3 passes), unless
    /// `CAIRN_KDF_MEMORY_KIB` / `CAIRN_KDF_ITERATIONS` / `CAIRN_KDF_PARALLELISM` ask for others (tests, very
    /// small machines).
    pub fn for_new_key() -> Result<Kdf> {
        let env = |name: &str, default: u32| -> Result<u32> {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| Error::Usage(format!("{name}: not a number: {v:?}"))),
                Err(_) => Ok(default),
            }
        };
        let mut salt = [0u8; 16];
        super::random_bytes(&mut salt)?;
        let kdf = Kdf {
            algorithm: "argon2id".into(),
            version: ARGON2_VERSION,
            memory_kib: env("CAIRN_KDF_MEMORY_KIB", 64 * 1024)?,
            iterations: env("CAIRN_KDF_ITERATIONS", 3)?,
            parallelism: env("CAIRN_KDF_PARALLELISM", 4)?,
            salt: hex::encode(salt),
        };
        kdf.validate().map_err(|e| Error::Usage(e.to_string()))?;
        Ok(kdf)
    }

    fn validate(&self) -> Result<Vec<u8>> {
        let bad = |d: &str| Error::corrupt("key file", d);
        if self.algorithm != "argon2id" || self.version != ARGON2_VERSION {
            return Err(bad("unknown key derivation (want argon2id version 19)"));
        }
        if !(MIN_MEMORY_KIB..=MAX_MEMORY_KIB).contains(&self.memory_kib)
            || !(1..=MAX_ITERATIONS).contains(&self.iterations)
            || !(1..=MAX_PARALLELISM).contains(&self.parallelism)
            || self.memory_kib < 8 * self.parallelism
        {
            return Err(bad("Argon2id parameters out of range"));
        }
        let salt = hex::decode(&self.salt).map_err(|_| bad("salt is not hex"))?;
        if !(8..=64).contains(&salt.len()) {
            return Err(bad("salt length out of range"));
        }
        Ok(salt)
    }

    /// The key `password` derives under these parameters.
    pub fn derive(&self, password: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>> {
        let salt = self.validate()?;
        let params = argon2::Params::new(
            self.memory_kib,
            self.iterations,
            self.parallelism,
            Some(KEY_LEN),
        )
        .map_err(|e| Error::corrupt("key file", format!("Argon2id parameters: {e}")))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        let argon_error = |e| Error::corrupt("key file", format!("Argon2id: {e}"));
        match BlockMemory::new(argon.params().block_count()) {
            Some(mut memory) => argon
                .hash_password_into_with_memory(password, &salt, &mut out[..], memory.blocks())
                .map_err(argon_error)?,
            None => argon
                .hash_password_into(password, &salt, &mut out[..])
                .map_err(argon_error)?,
        }
        Ok(out)
    }
}

/// Argon2's working memory in transparent huge pages where the kernel gives them: the derivation touches
/// every one of its 64 MiB, and faulting them in 4 KiB at a time (16,000 faults) was a third of its cost in
/// a fresh process (0.15 s -> 0.10 s wall per command here). Anonymous memory starts zeroed and goes back to
/// the kernel, which clears it, when dropped.
struct BlockMemory {
    map: memmap2::MmapMut,
    blocks: usize,
}

impl BlockMemory {
    /// `None` when the kernel refuses the mapping: the derivation then allocates its memory itself.
    fn new(blocks: usize) -> Option<BlockMemory> {
        let len = blocks.checked_mul(std::mem::size_of::<argon2::Block>())?;
        let map = memmap2::MmapOptions::new().len(len).map_anon().ok()?;
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage); // only a hint: 4 KiB pages work as well
        Some(BlockMemory { map, blocks })
    }

    fn blocks(&mut self) -> &mut [argon2::Block] {
        let ptr = self.map.as_mut_ptr();
        debug_assert_eq!(ptr.align_offset(std::mem::align_of::<argon2::Block>()), 0);
        // SAFETY: the mapping is page-aligned (more than a Block's 64-byte alignment), exactly `blocks`
        // Blocks long, zero-filled (a valid Block: plain u64 words), and borrowed mutably for the slice's
        // whole life.
        unsafe { std::slice::from_raw_parts_mut(ptr.cast::<argon2::Block>(), self.blocks) }
    }
}

/// The content of a key file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFile {
    pub version: u32,
    /// RFC 3339.
    pub created: String,
    pub host: String,
    pub kdf: Kdf,
    /// Always `xchacha20poly1305`.
    pub aead: String,
    /// Hex of `nonce (24) | master key encrypted (32) | tag (16)`.
    pub wrapped_key: String,
}

impl KeyFile {
    /// A key file wrapping `master` under `password`, with fresh parameters and salt.
    pub fn create(master: &[u8; KEY_LEN], password: &[u8], kdf: Kdf) -> Result<KeyFile> {
        let kek = kdf.derive(password)?;
        let wrapped = super::seal_under(&kek, AAD_KEY_FILE, master)?;
        Ok(KeyFile {
            version: KEY_FILE_VERSION,
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            host: crate::lock::hostname(),
            kdf,
            aead: "xchacha20poly1305".into(),
            wrapped_key: hex::encode(wrapped),
        })
    }

    /// A key file with every random or variable part given: only for test vectors.
    #[doc(hidden)]
    pub fn create_fixed(
        master: &[u8; KEY_LEN],
        password: &[u8],
        kdf: Kdf,
        nonce: &[u8; super::NONCE_LEN],
        created: &str,
        host: &str,
    ) -> Result<KeyFile> {
        let kek = kdf.derive(password)?;
        let wrapped = super::seal_under_with_nonce(&kek, AAD_KEY_FILE, master, nonce)?;
        Ok(KeyFile {
            version: KEY_FILE_VERSION,
            created: created.into(),
            host: host.into(),
            kdf,
            aead: "xchacha20poly1305".into(),
            wrapped_key: hex::encode(wrapped),
        })
    }

    /// The file's bytes and its id (BLAKE3 of the bytes, hex).
    pub fn encode(&self) -> Result<(Vec<u8>, String)> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::corrupt("key file", e))?;
        let id = Id::of(&bytes).to_hex();
        Ok((bytes, id))
    }

    /// Decodes and validates untrusted bytes (no key derivation is done).
    pub fn decode(bytes: &[u8]) -> Result<KeyFile> {
        let kf: KeyFile =
            serde_json::from_slice(bytes).map_err(|e| Error::corrupt("key file", e))?;
        if kf.version != KEY_FILE_VERSION {
            return Err(Error::corrupt(
                "key file",
                format!("version {} is not supported", kf.version),
            ));
        }
        if kf.aead != "xchacha20poly1305" {
            return Err(Error::corrupt("key file", "unknown cipher"));
        }
        kf.kdf.validate()?;
        if kf.wrapped().map(|w| w.len()) != Some(KEY_LEN + OVERHEAD) {
            return Err(Error::corrupt(
                "key file",
                "wrapped key has the wrong length",
            ));
        }
        Ok(kf)
    }

    fn wrapped(&self) -> Option<Vec<u8>> {
        hex::decode(&self.wrapped_key).ok()
    }

    /// The master key, if `password` is this file's password; `None` if it is not.
    pub fn unwrap_key(&self, password: &[u8]) -> Result<Option<Zeroizing<[u8; KEY_LEN]>>> {
        let wrapped = self
            .wrapped()
            .ok_or_else(|| Error::corrupt("key file", "wrapped key is not hex"))?;
        let kek = self.kdf.derive(password)?;
        match super::open_under(&kek, "key file", AAD_KEY_FILE, &wrapped) {
            Ok(plain) => {
                let plain = Zeroizing::new(plain);
                let mut key = Zeroizing::new([0u8; KEY_LEN]);
                if plain.len() != KEY_LEN {
                    return Err(Error::corrupt(
                        "key file",
                        "wrapped key has the wrong length",
                    ));
                }
                key.copy_from_slice(&plain);
                Ok(Some(key))
            }
            Err(_) => Ok(None),
        }
    }
}

/// Reads and validates the key file `id`, checking its name against its bytes.
pub fn load(backend: &dyn Backend, id: &str) -> Result<KeyFile> {
    let bytes = backend.get(ObjectKind::Key, id)?;
    if Id::of(&bytes).to_hex() != id {
        return Err(Error::corrupt(
            format!("key file {}", &id[..id.len().min(8)]),
            "content does not match its name",
        ));
    }
    KeyFile::decode(&bytes)
}

/// The ids of every key file, sorted.
pub fn list(backend: &dyn Backend) -> Result<Vec<String>> {
    Ok(backend
        .list(ObjectKind::Key)?
        .into_iter()
        .map(|(n, _)| n)
        .collect())
}

/// Opens the repository's master key with `password`, trying each key file in turn. A password no key file
/// accepts is [`Error::Password`] (exit code 12).
pub fn unlock(backend: &dyn Backend, password: &[u8], cipher: Cipher) -> Result<Crypto> {
    let ids = list(backend)?;
    if ids.is_empty() {
        return Err(Error::corrupt(
            "repository",
            "it is encrypted but holds no key file (keys/ is empty)",
        ));
    }
    let mut first_damage = None;
    for id in ids {
        let kf = match load(backend, &id) {
            Ok(kf) => kf,
            Err(e) if e.is_damage() => {
                first_damage.get_or_insert(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Some(master) = kf.unwrap_key(password)? {
            return Ok(Crypto::from_master(&master, cipher)?.with_key_id(id));
        }
    }
    match first_damage {
        Some(e) => Err(Error::Password(format!(
            "wrong password, or its key file is damaged ({e})"
        ))),
        None => Err(Error::Password(
            "wrong password: no key of this repository opens with it".into(),
        )),
    }
}

/// Writes the first key file of a new repository (`init`); returns its id. The place must hold no key file:
/// one left by an interrupted `init` (killed after its key file, before its config) wraps another master
/// key, and a repository with two master keys opens with whichever key file a password opens first, so the
/// first password would "open" it with a key that sealed nothing, and data written by this process would be
/// unreadable to a process that picked the other key. Written first, checked after (as locks are): of two
/// `init`s racing on one place both may fail, never both succeed.
pub fn add_first(backend: &dyn Backend, crypto: &Crypto, password: &[u8]) -> Result<String> {
    refuse_other_keys(backend, None)?;
    let id = add(backend, crypto, password)?;
    if let Err(e) = refuse_other_keys(backend, Some(&id)) {
        let _ = backend.delete(ObjectKind::Key, &id);
        return Err(e);
    }
    Ok(id)
}

/// Fails if the place holds a key file other than `ours`.
fn refuse_other_keys(backend: &dyn Backend, ours: Option<&str>) -> Result<()> {
    let others = list(backend)?
        .iter()
        .filter(|id| Some(id.as_str()) != ours)
        .count();
    if others == 0 {
        return Ok(());
    }
    let at = backend.location();
    Err(Error::Invalid(format!(
        "{at} holds {others} key file(s) but no config: left by an interrupted `cairn init` (or the config of a repository was lost); init never adds a second master key. If nothing was ever stored there, remove {at}/keys/ and run init again"
    )))
}

/// Writes a new key file wrapping `crypto`'s master key under `password`; returns its id.
///
/// The file is read back from the repository and opened with `password` before this returns: callers
/// remove the old key (`key passwd`) or report success (`key add`, `init`) on the strength of it, and a key
/// file the store did not keep whole (a torn or altered write) would leave a password that opens nothing,
/// found out only when the old key is gone. A file that does not read back is removed again and the error
/// says so; nothing else has changed.
pub fn add(backend: &dyn Backend, crypto: &Crypto, password: &[u8]) -> Result<String> {
    let master = crypto
        .master()
        .ok_or_else(|| Error::Invalid("the repository is not encrypted: it has no keys".into()))?;
    let kf = KeyFile::create(master, password, Kdf::for_new_key()?)?;
    let (bytes, id) = kf.encode()?;
    backend.put(ObjectKind::Key, &id, &bytes)?;
    if let Err(e) = read_back(backend, &id, master, password) {
        let removed = match backend.delete(ObjectKind::Key, &id) {
            Ok(()) => "it was removed again".to_string(),
            Err(d) => format!("removing it failed too ({d}): remove keys/{id} by hand"),
        };
        return Err(Error::corrupt(
            format!("new key file {}", &id[..12]),
            format!("written, but it does not read back as written ({e}); {removed}, and no other key was changed"),
        ));
    }
    Ok(id)
}

/// Checks that the key file `id` as the repository now holds it opens with `password` to `master`.
fn read_back(
    backend: &dyn Backend,
    id: &str,
    master: &[u8; KEY_LEN],
    password: &[u8],
) -> Result<()> {
    match load(backend, id)?.unwrap_key(password)? {
        Some(key) if *key == *master => Ok(()),
        Some(_) => Err(Error::corrupt("key file", "it wraps another master key")),
        None => Err(Error::corrupt(
            "key file",
            "the new password does not open it",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast_kdf() -> Kdf {
        Kdf {
            algorithm: "argon2id".into(),
            version: 19,
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            salt: "00112233445566778899aabbccddeeff".into(),
        }
    }

    /// New keys fill 4 lanes on every core: the derivation must still be standard Argon2id. Expected values
    /// from the reference C implementation (argon2-cffi's `hash_secret_raw`, Argon2id version 19).
    #[test]
    fn derivation_with_several_lanes_matches_the_reference_implementation() {
        let kdf = |parallelism| Kdf {
            memory_kib: 256,
            iterations: 3,
            parallelism,
            salt: "000102030405060708090a0b0c0d0e0f".into(),
            ..fast_kdf()
        };
        for (lanes, expected) in [
            (
                4,
                "e289579fd3213dd4d5854a628728938f8283570fdf551f65d45a2fd5f2f50377",
            ),
            (
                1,
                "1fcd838f2d1e0098eacd16687438ecff07c1dd57432d00194c77ba835999c5cc",
            ),
        ] {
            let key = kdf(lanes).derive(b"cairn test password").unwrap();
            assert_eq!(hex::encode(*key), expected, "{lanes} lanes");
        }
    }

    #[test]
    fn new_keys_use_four_lanes() {
        if std::env::var_os("CAIRN_KDF_PARALLELISM").is_none() {
            assert_eq!(Kdf::for_new_key().unwrap().parallelism, 4);
        }
    }

    #[test]
    fn a_key_file_opens_with_its_password_only() {
        let master = [9u8; 32];
        let kf = KeyFile::create(&master, b"secret", fast_kdf()).unwrap();
        let (bytes, _) = kf.encode().unwrap();
        let back = KeyFile::decode(&bytes).unwrap();
        assert_eq!(*back.unwrap_key(b"secret").unwrap().unwrap(), master);
        assert!(back.unwrap_key(b"Secret").unwrap().is_none());
    }

    /// `key passwd` removes the old key once `add` returned: a new key file the store did not keep whole
    /// must make `add` fail, and be gone, not leave a password that opens nothing. (Default key derivation
    /// parameters: a few derivations, about a second.)
    #[test]
    fn a_new_key_file_that_does_not_read_back_is_removed_and_add_fails() {
        use crate::backend::fault::{Fault, FaultyBackend};
        use crate::backend::memory::MemoryBackend;
        let faulty = FaultyBackend::new(std::sync::Arc::new(MemoryBackend::new()));
        let crypto = Crypto::from_master(&[7u8; KEY_LEN], Cipher::Xaes256Gcm).unwrap();
        let first = add(&faulty, &crypto, b"old").unwrap();
        assert_eq!(list(&faulty).unwrap(), vec![first.clone()]);
        // The store hands back half of what was written (a torn write on a store that does not say so).
        faulty.fail_read(1, Fault::Tear);
        let err = add(&faulty, &crypto, b"new").unwrap_err();
        assert!(
            err.to_string().contains("does not read back") && err.to_string().contains("removed"),
            "{err}"
        );
        assert_eq!(list(&faulty).unwrap(), vec![first.clone()]);
        let opened = unlock(&faulty, b"old", Cipher::Xaes256Gcm).unwrap();
        assert_eq!(opened.key_id(), Some(first.as_str()));
        // Read back whole, the new key opens the repository.
        let second = add(&faulty, &crypto, b"new").unwrap();
        assert_eq!(
            unlock(&faulty, b"new", Cipher::Xaes256Gcm)
                .unwrap()
                .key_id(),
            Some(second.as_str())
        );
    }

    #[test]
    fn hostile_parameters_are_refused_before_any_work() {
        let kf = KeyFile::create(&[1u8; 32], b"p", fast_kdf()).unwrap();
        for change in [
            |k: &mut KeyFile| k.kdf.memory_kib = u32::MAX,
            |k: &mut KeyFile| k.kdf.iterations = 0,
            |k: &mut KeyFile| k.kdf.parallelism = 1000,
            |k: &mut KeyFile| k.kdf.salt = "zz".into(),
            |k: &mut KeyFile| k.kdf.algorithm = "scrypt".into(),
            |k: &mut KeyFile| k.wrapped_key.truncate(10),
            |k: &mut KeyFile| k.version = 2,
        ] {
            let mut bad = kf.clone();
            change(&mut bad);
            let bytes = serde_json::to_vec(&bad).unwrap();
            assert!(KeyFile::decode(&bytes).is_err(), "{bad:?}");
        }
    }
}
