//! Encryption at rest (format-spec/README.md, "Encryption"): the repository's master key and the keys derived
//! from it, and the one seal/open pair every stored object goes through.
//!
//! What this module owns:
//! - [`Crypto`]: the keys of one open repository (or none, for a plaintext repository). It names blobs
//!   ([`Crypto::blob_id`]: keyed BLAKE3 when encrypted), seeds the chunker ([`Crypto::chunker_seed`]) and
//!   seals and opens byte strings ([`Crypto::seal`], [`Crypto::open`]) with the repository's [`Cipher`]
//!   (XAES-256-GCM or XChaCha20-Poly1305) under a fresh random 192-bit nonce each time. For a plaintext
//!   repository sealing and opening return the bytes as they are, so callers have one code path.
//! - [`xaes`], [`xchacha`]: the two ciphers, each the reference construction over aws-lc-rs primitives.
//! - [`keyfile`]: key files (`keys/<id>`), each wrapping the master key under a password (Argon2id).
//! - [`keycache`]: the host's key cache of the commands PostgreSQL runs per WAL file (no Argon2id per file).
//! - [`password`]: where a password comes from (file, command, environment, terminal prompt).
//! - [`sealed`]: the backend wrapper that seals every whole repository object (snapshots, index objects,
//!   instance configurations and any kind added later) on the way out and opens it on the way in. Packs are
//!   sealed blob by blob by [`crate::pack`], because they are read in ranges.
//!
//! Invariants: a nonce is never chosen twice on purpose (random 24 bytes, safe for any number of messages);
//! every sealed string is bound to what it is by its associated data (`aad`), so a sealed snapshot cannot be
//! passed off as an instance configuration or a blob as a pack trailer; nothing opened is used before its tag
//! verified. The master key never leaves memory unwrapped and is zeroed when dropped.

pub mod keycache;
pub mod keyfile;
pub mod password;
pub mod sealed;
pub mod xaes;
pub mod xchacha;

use std::borrow::Cow;
use std::sync::Arc;

use aws_lc_rs::aead::{Aad, LessSafeKey};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::hashing::Id;
use xaes::XAes;
use xchacha::XChaCha;

/// Length of a nonce (both ciphers take 192 bits).
pub const NONCE_LEN: usize = 24;
/// Length of an authentication tag (Poly1305's and GCM's).
pub const TAG_LEN: usize = 16;
/// Bytes a sealed string has beyond its plaintext: nonce before, tag after.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Length of the master key.
pub const KEY_LEN: usize = 32;

/// BLAKE3 `derive_key` contexts of the keys derived from the master key (format-spec, "Keys").
const CONTEXT_ID: &str = "cairn 2026-12-01 blob id key";
const CONTEXT_AEAD: &str = "cairn 2026-12-01 object encryption key";
/// XAES-256-GCM gets a key of its own, so that one key never serves two algorithms (a config whose cipher
/// was changed opens nothing instead of sealing new objects under the same key with another cipher).
const CONTEXT_AEAD_XAES: &str = "cairn 2026-12-04 object encryption key xaes256gcm";
const CONTEXT_CHUNKER: &str = "cairn 2026-12-01 chunker seed";

/// Associated data of a blob's stored bytes (a blob keeps it when prune copies it to another pack).
pub const AAD_BLOB: &[u8] = b"cairn blob";
/// Associated data of a pack trailer's entries.
pub const AAD_TRAILER: &[u8] = b"cairn pack trailer";

/// Associated data of a whole repository object: its kind and name, so an object cannot be moved to
/// another name or kind unnoticed.
pub fn object_aad(key: &str) -> Vec<u8> {
    let mut aad = b"cairn object ".to_vec();
    aad.extend_from_slice(key.as_bytes());
    aad
}

/// Sealing failed (a message too long for the cipher's counter) or opening did not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AeadError;

/// An AEAD with 192-bit nonces made of an aws-lc-rs AEAD with 96-bit ones: each nonce selects a message key
/// and a 96-bit nonce ([`ExtendedNonceAead::message_key`]) that seal and open that one message. Random
/// 192-bit nonces are safe for any number of messages; the bulk work is aws-lc-rs's.
pub trait ExtendedNonceAead {
    /// The message key and 96-bit nonce that `nonce` selects.
    fn message_key(
        &self,
        nonce: &[u8; NONCE_LEN],
    ) -> std::result::Result<(LessSafeKey, aws_lc_rs::aead::Nonce), AeadError>;

    /// Encrypts `buf` in place and returns the tag.
    fn seal_in_place_detached(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> std::result::Result<[u8; TAG_LEN], AeadError> {
        let (key, n) = self.message_key(nonce)?;
        let tag = key
            .seal_in_place_separate_tag(n, Aad::from(aad), buf)
            .map_err(|_| AeadError)?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Checks and decrypts `buf` (ciphertext followed by the tag) where it lies; the plaintext is the
    /// start of `buf`, returned. After a failure `buf` holds nothing meaningful.
    fn open_in_place<'a>(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &'a mut [u8],
    ) -> std::result::Result<&'a mut [u8], AeadError> {
        let (key, n) = self.message_key(nonce)?;
        key.open_in_place(n, Aad::from(aad), buf)
            .map_err(|_| AeadError)
    }
}

/// The AEAD that seals a repository's objects: the config's `encryption.aead`, chosen by `init` and never
/// changed. Both take a random 192-bit nonce per message and a 128-bit tag, so a sealed string has the same
/// layout under either (format-spec, "Encryption").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    /// XAES-256-GCM: the default where the processor has AES instructions (4-5x faster than
    /// XChaCha20-Poly1305 there; BENCHMARKS.md "Encryption primitives").
    Xaes256Gcm,
    /// XChaCha20-Poly1305: the default elsewhere (constant-time and fast in software), and every repository
    /// made before XAES-256-GCM was added.
    XChaCha20Poly1305,
}

impl Cipher {
    /// Its name in the config.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::Xaes256Gcm => "xaes256gcm",
            Cipher::XChaCha20Poly1305 => "xchacha20poly1305",
        }
    }

    /// The cipher a config names, if this build knows it.
    pub fn from_name(name: &str) -> Option<Cipher> {
        [Cipher::Xaes256Gcm, Cipher::XChaCha20Poly1305]
            .into_iter()
            .find(|c| c.name() == name)
    }

    /// What `init` picks when not told: XAES-256-GCM if this processor has AES and carry-less multiply
    /// instructions (without them AES-GCM in software is several times slower than ChaCha20).
    pub fn for_this_machine() -> Cipher {
        if aes_instructions() {
            Cipher::Xaes256Gcm
        } else {
            Cipher::XChaCha20Poly1305
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn aes_instructions() -> bool {
    std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
}

#[cfg(target_arch = "aarch64")]
fn aes_instructions() -> bool {
    std::arch::is_aarch64_feature_detected!("aes")
        && std::arch::is_aarch64_feature_detected!("pmull")
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn aes_instructions() -> bool {
    false
}

/// The object encryption key of `cipher` derived from `master`: each cipher from a context of its own.
fn new_aead(
    cipher: Cipher,
    master: &[u8; KEY_LEN],
) -> Result<Box<dyn ExtendedNonceAead + Send + Sync>> {
    let derived = |context| Zeroizing::new(blake3::derive_key(context, master));
    Ok(match cipher {
        Cipher::Xaes256Gcm => Box::new(
            XAes::new(&derived(CONTEXT_AEAD_XAES))
                .map_err(|_| Error::Invalid("the AES-256 key schedule could not be made".into()))?,
        ),
        Cipher::XChaCha20Poly1305 => Box::new(XChaCha::new(&derived(CONTEXT_AEAD))),
    })
}

/// The keys of one repository, derived from its master key.
struct Keys {
    master: Zeroizing<[u8; KEY_LEN]>,
    id_key: Zeroizing<[u8; KEY_LEN]>,
    cipher: Cipher,
    aead: Box<dyn ExtendedNonceAead + Send + Sync>,
    chunker_seed: u64,
}

/// The keys of an open repository, or none for a plaintext one. Cheap to clone.
#[derive(Clone, Default)]
pub struct Crypto {
    keys: Option<Arc<Keys>>,
    /// The key file the password opened (for `key list` and `key remove`).
    key_id: Option<String>,
}

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crypto")
            .field("encrypted", &self.is_encrypted())
            .field("key_id", &self.key_id)
            .finish()
    }
}

impl Crypto {
    /// A plaintext repository: ids are plain BLAKE3, nothing is sealed.
    pub fn plaintext() -> Crypto {
        Crypto::default()
    }

    /// The keys derived from `master`, sealing with `cipher`.
    pub fn from_master(master: &[u8; KEY_LEN], cipher: Cipher) -> Result<Crypto> {
        let id_key = Zeroizing::new(blake3::derive_key(CONTEXT_ID, master));
        let seed_bytes = blake3::derive_key(CONTEXT_CHUNKER, master);
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&seed_bytes[..8]);
        Ok(Crypto {
            keys: Some(Arc::new(Keys {
                master: Zeroizing::new(*master),
                id_key,
                cipher,
                aead: new_aead(cipher, master)?,
                chunker_seed: u64::from_le_bytes(seed),
            })),
            key_id: None,
        })
    }

    /// The cipher that seals this repository's objects; `None` for a plaintext repository.
    pub fn cipher(&self) -> Option<Cipher> {
        self.keys.as_ref().map(|k| k.cipher)
    }

    /// The same keys, recording which key file opened them.
    pub fn with_key_id(mut self, id: impl Into<String>) -> Crypto {
        self.key_id = Some(id.into());
        self
    }

    /// The key file the password opened, if this repository is encrypted.
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    /// A fresh random master key.
    pub fn random_master() -> Result<Zeroizing<[u8; KEY_LEN]>> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        random_bytes(&mut key[..])?;
        Ok(key)
    }

    pub fn is_encrypted(&self) -> bool {
        self.keys.is_some()
    }

    /// The master key (to wrap it in a new key file).
    pub(crate) fn master(&self) -> Option<&[u8; KEY_LEN]> {
        self.keys.as_ref().map(|k| &*k.master)
    }

    /// A blob's id: BLAKE3 keyed with the id key when encrypted (nobody without the key can tell whether a
    /// known content is stored), plain BLAKE3 otherwise.
    pub fn blob_id(&self, data: &[u8]) -> Id {
        match &self.keys {
            Some(k) => Id(*blake3::keyed_hash(&k.id_key, data).as_bytes()),
            None => Id::of(data),
        }
    }

    /// The FastCDC gear table seed: 0 (the crate's table) for a plaintext repository.
    pub fn chunker_seed(&self) -> u64 {
        self.keys.as_ref().map_or(0, |k| k.chunker_seed)
    }

    /// `nonce | ciphertext | tag` of `plain` under a fresh random nonce; the bytes unchanged when plaintext.
    pub fn seal<'a>(&self, aad: &[u8], plain: &'a [u8]) -> Result<Cow<'a, [u8]>> {
        if self.keys.is_none() {
            return Ok(Cow::Borrowed(plain));
        }
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        self.seal_with_nonce(aad, plain, &nonce).map(Cow::Owned)
    }

    /// [`Self::seal`] with a given nonce: only for test vectors (a nonce must never be reused).
    #[doc(hidden)]
    pub fn seal_with_nonce(
        &self,
        aad: &[u8],
        plain: &[u8],
        nonce: &[u8; NONCE_LEN],
    ) -> Result<Vec<u8>> {
        let Some(keys) = &self.keys else {
            return Ok(plain.to_vec());
        };
        seal_with(&*keys.aead, aad, plain, nonce)
    }

    /// The plaintext of a sealed string, if it authenticates under `aad`; the bytes unchanged when
    /// plaintext. A failure is corruption (`what` names the object): the bytes were changed, or were not
    /// written with this repository's key.
    pub fn open<'a>(&self, what: &str, aad: &[u8], sealed: &'a [u8]) -> Result<Cow<'a, [u8]>> {
        let Some(keys) = &self.keys else {
            return Ok(Cow::Borrowed(sealed));
        };
        open_copy(&*keys.aead, what, aad, sealed).map(Cow::Owned)
    }

    /// [`Self::open`] where the sealed string lies: the plaintext is returned within `sealed` (no copy),
    /// whose other bytes are then meaningless; `sealed` itself when plaintext.
    pub fn open_in_place<'a>(
        &self,
        what: &str,
        aad: &[u8],
        sealed: &'a mut [u8],
    ) -> Result<&'a mut [u8]> {
        match &self.keys {
            None => Ok(sealed),
            Some(keys) => {
                let (nonce, ciphertext) = sealed.split_at_mut(NONCE_LEN.min(sealed.len()));
                open_with(&*keys.aead, what, aad, nonce, ciphertext)
            }
        }
    }

    /// Length of the sealed form of `n` plaintext bytes.
    pub fn sealed_len(&self, n: usize) -> usize {
        if self.is_encrypted() {
            n + OVERHEAD
        } else {
            n
        }
    }
}

/// `nonce | ciphertext | tag` of `plain` under `aead`.
fn seal_with(
    aead: &dyn ExtendedNonceAead,
    aad: &[u8],
    plain: &[u8],
    nonce: &[u8; NONCE_LEN],
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
    out.extend_from_slice(nonce);
    out.extend_from_slice(plain);
    let tag = aead
        .seal_in_place_detached(nonce, aad, &mut out[NONCE_LEN..])
        .map_err(|_| Error::Invalid("encryption failed (message too long)".into()))?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Opens `nonce | ciphertext | tag` into a buffer of its own, copying the ciphertext (not the nonce) once.
fn open_copy(
    aead: &dyn ExtendedNonceAead,
    what: &str,
    aad: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>> {
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN.min(sealed.len()));
    let mut buf = ciphertext.to_vec();
    let len = open_with(aead, what, aad, nonce, &mut buf)?.len();
    buf.truncate(len);
    Ok(buf)
}

/// Opens `ciphertext | tag` in place (the plaintext is returned within it) under `nonce`, which sealing put
/// before it.
fn open_with<'a>(
    aead: &dyn ExtendedNonceAead,
    what: &str,
    aad: &[u8],
    nonce: &[u8],
    ciphertext: &'a mut [u8],
) -> Result<&'a mut [u8]> {
    let nonce: &[u8; NONCE_LEN] = match nonce.try_into() {
        Ok(n) if ciphertext.len() >= TAG_LEN => n,
        _ => return Err(Error::corrupt(what, "encrypted object too short")),
    };
    aead.open_in_place(nonce, aad, ciphertext).map_err(|_| {
        Error::corrupt(
            what,
            "does not authenticate (damaged, or not written with this repository's key)",
        )
    })
}

/// Keys opened in this process, by repository id: a command that opens its repository twice (the run log
/// after a restore) does not derive the key again.
static OPENED: std::sync::Mutex<Vec<(String, Crypto)>> = std::sync::Mutex::new(Vec::new());

fn remember(repository_id: &str, crypto: &Crypto) {
    let mut opened = OPENED.lock().unwrap_or_else(|p| p.into_inner());
    opened.retain(|(id, _)| id != repository_id);
    opened.push((repository_id.to_string(), crypto.clone()));
}

/// The keys of the repository at `backend` whose config is `config`: none for a plaintext repository; else
/// the master key unwrapped by the password from [`password::password`]. Reads only key files, so a wrong
/// or missing password ([`Error::Password`]) leaves nothing written.
pub fn open_keys(
    backend: &dyn crate::backend::Backend,
    config: &crate::config::Config,
) -> Result<Crypto> {
    if !config.is_encrypted() {
        return Ok(Crypto::plaintext());
    }
    let known = OPENED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|(id, _)| *id == config.repository_id)
        .map(|(_, c)| c.clone());
    if let Some(c) = known {
        return Ok(c);
    }
    let password = password::password()?;
    let crypto = keycache::unlock(backend, config, password.as_bytes())?;
    remember(&config.repository_id, &crypto);
    Ok(crypto)
}

/// The cipher of an encrypted repository's config.
fn cipher_of(config: &crate::config::Config) -> Result<Cipher> {
    config
        .cipher()
        .ok_or_else(|| Error::Invalid("keys asked for a plaintext repository".into()))
}

/// The password for a new encrypted repository, asked for before anything is written.
pub fn new_repository_password() -> Result<Zeroizing<String>> {
    password::password_for_new_repository()
}

/// Creates the master key of a new repository and its first key file, wrapped under `password`.
pub fn create_keys(
    backend: &dyn crate::backend::Backend,
    config: &crate::config::Config,
    password: &str,
) -> Result<Crypto> {
    let master = Crypto::random_master()?;
    let crypto = Crypto::from_master(&master, cipher_of(config)?)?;
    let id = keyfile::add_first(backend, &crypto, password.as_bytes())?;
    let crypto = crypto.with_key_id(id);
    remember(&config.repository_id, &crypto);
    Ok(crypto)
}

/// The first key file of a new repository that shares the keys of `from` (`cairn init --from-repo`): the same
/// master key, so the same keyed blob ids and chunker seed, which `cairn copy` needs to deduplicate and keep
/// snapshot ids (borg's `--other-repo` does the same). The new key file is wrapped under the new `password`.
pub fn share_keys(
    backend: &dyn crate::backend::Backend,
    config: &crate::config::Config,
    password: &str,
    from: &Crypto,
) -> Result<Crypto> {
    let id = keyfile::add_first(backend, from, password.as_bytes())?;
    let crypto = from.clone().with_key_id(id);
    remember(&config.repository_id, &crypto);
    Ok(crypto)
}

/// Whether two repositories' keys name, chunk and seal content alike (both plaintext, or one master key
/// and one cipher), so sealed blobs can move between them as they are.
pub fn same_keys(a: &Crypto, b: &Crypto) -> bool {
    const PROBE: &[u8] = b"cairn: do these repositories share their keys?";
    a.cipher() == b.cipher()
        && a.blob_id(PROBE) == b.blob_id(PROBE)
        && a.chunker_seed() == b.chunker_seed()
}

/// Fills `buf` from the operating system's random source.
pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
    getrandom::getrandom(buf).map_err(|e| {
        Error::io(
            "random source",
            std::io::Error::other(format!("no random bytes: {e}")),
        )
    })
}

/// Seals with a key given directly (key files wrap the master key this way).
fn seal_under(key: &[u8; KEY_LEN], aad: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    random_bytes(&mut nonce)?;
    seal_under_with_nonce(key, aad, plain, &nonce)
}

fn seal_under_with_nonce(
    key: &[u8; KEY_LEN],
    aad: &[u8],
    plain: &[u8],
    nonce: &[u8; NONCE_LEN],
) -> Result<Vec<u8>> {
    seal_with(&XChaCha::new(key), aad, plain, nonce)
}

fn open_under(key: &[u8; KEY_LEN], what: &str, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
    open_copy(&XChaCha::new(key), what, aad, sealed)
}

/// What the ciphers' unit tests check against a reference implementation of the same cipher.
#[cfg(test)]
pub(crate) mod reference_check {
    use super::{AeadError, ExtendedNonceAead, NONCE_LEN};

    /// `ciphertext | tag` of `plain`, as the reference implementations return it.
    pub fn sealed(
        aead: &dyn ExtendedNonceAead,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plain: &[u8],
    ) -> Vec<u8> {
        let mut out = plain.to_vec();
        let tag = aead.seal_in_place_detached(nonce, aad, &mut out).unwrap();
        out.extend_from_slice(&tag);
        out
    }

    /// For inputs from 0 bytes to 1 MiB (around the AES and ChaCha20 block sizes): `ours` seals exactly
    /// what `reference(nonce, plain)` does (aad `aad`), opens it where it lies after a 3-byte prefix (as
    /// blobs are read within their run), and refuses it with a flipped byte, another nonce or another
    /// aad. Nonces are made of `nonce_salt`, so callers looping over keys vary them too.
    pub fn assert_seals_like(
        ours: &dyn ExtendedNonceAead,
        reference: impl Fn(&[u8; NONCE_LEN], &[u8]) -> Vec<u8>,
        nonce_salt: u8,
        what: &str,
    ) {
        let lengths = [0usize, 1, 15, 16, 17, 63, 64, 65, 8 << 10, 1 << 20];
        for (len, seed) in lengths.into_iter().zip(1u8..) {
            let plain: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(31) ^ seed)
                .collect();
            let nonce = [seed.wrapping_mul(nonce_salt); NONCE_LEN];
            let mine = sealed(ours, &nonce, b"aad", &plain);
            let expected = reference(&nonce, &plain);
            assert_eq!(mine, expected, "{what}, {len} bytes");
            let mut opened = [&[9u8, 9, 9][..], &expected].concat();
            assert_eq!(
                ours.open_in_place(&nonce, b"aad", &mut opened[3..])
                    .unwrap(),
                &plain[..]
            );
            for bad in [0, mine.len() / 2, mine.len() - 1] {
                let mut flipped = mine.clone();
                flipped[bad] ^= 1;
                assert_eq!(
                    ours.open_in_place(&nonce, b"aad", &mut flipped),
                    Err(AeadError)
                );
            }
            let mut other_nonce = nonce;
            other_nonce[0] ^= 1;
            assert_eq!(
                ours.open_in_place(&other_nonce, b"aad", &mut mine.clone()),
                Err(AeadError),
                "the nonce's first half is bound"
            );
            assert_eq!(
                ours.open_in_place(&nonce, b"aae", &mut mine.clone()),
                Err(AeadError)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_every_flipped_bit_is_refused() {
        let c = Crypto::from_master(&[7u8; 32], Cipher::Xaes256Gcm).unwrap();
        let sealed = c.seal(b"aad", b"hello").unwrap().into_owned();
        assert_eq!(sealed.len(), 5 + OVERHEAD);
        assert_eq!(&c.open("x", b"aad", &sealed).unwrap()[..], b"hello");
        assert!(c.open("x", b"other", &sealed).is_err());
        for i in 0..sealed.len() * 8 {
            let mut b = sealed.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(c.open("x", b"aad", &b).is_err(), "bit {i}");
        }
        for n in 0..OVERHEAD {
            assert!(c.open("x", b"aad", &sealed[..n]).is_err());
        }
        let other = Crypto::from_master(&[8u8; 32], Cipher::Xaes256Gcm).unwrap();
        assert!(other.open("x", b"aad", &sealed).is_err());
    }

    #[test]
    fn plaintext_passes_through_and_ids_are_keyed_only_when_encrypted() {
        let p = Crypto::plaintext();
        assert_eq!(&p.seal(b"a", b"xyz").unwrap()[..], b"xyz");
        assert_eq!(p.blob_id(b"xyz"), Id::of(b"xyz"));
        assert_eq!(p.chunker_seed(), 0);
        let c = Crypto::from_master(&[1u8; 32], Cipher::Xaes256Gcm).unwrap();
        assert_ne!(c.blob_id(b"xyz"), Id::of(b"xyz"));
        assert_ne!(c.chunker_seed(), 0);
        assert_ne!(
            c.blob_id(b"xyz"),
            Crypto::from_master(&[2u8; 32], Cipher::Xaes256Gcm)
                .unwrap()
                .blob_id(b"xyz")
        );
    }
}
