//! The repository config (format-spec/README.md, "Config"): written once by `init`, never changed afterwards,
//! because chunker parameters and the format version decide every id the repository holds.

use serde::{Deserialize, Serialize};

use crate::crypto::Cipher;
use crate::error::{Error, Result};

/// The on-disk format version of a plaintext repository.
pub const FORMAT_VERSION: u32 = 1;
/// The on-disk format version of an encrypted repository (format-spec, "Encryption"): a version 1 reader
/// refuses it instead of misreading sealed objects.
pub const FORMAT_VERSION_ENCRYPTED: u32 = 2;

/// How an encrypted repository is encrypted (the `encryption` field of the config). Readers refuse values
/// they do not know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// `xaes256gcm` or `xchacha20poly1305` ([`crate::crypto::Cipher`]).
    pub aead: String,
    /// `argon2id` (each key file records its parameters).
    pub kdf: String,
    /// `blake3-keyed`.
    pub ids: String,
}

impl Encryption {
    /// The scheme this build writes, sealing with `cipher`.
    pub fn with_cipher(cipher: Cipher) -> Encryption {
        Encryption {
            aead: cipher.name().into(),
            kdf: "argon2id".into(),
            ids: "blake3-keyed".into(),
        }
    }

    /// The cipher, if this build reads the scheme.
    fn known_cipher(&self) -> Option<Cipher> {
        let cipher = Cipher::from_name(&self.aead)?;
        (*self == Encryption::with_cipher(cipher)).then_some(cipher)
    }
}

/// FastCDC (2020 variant, normalisation level 1, seed 0) size bounds in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
    /// FastCDC gear table seed: 0 for a plaintext repository; for an encrypted one derived from the master key
    /// when the repository is opened (never stored in the config).
    #[serde(skip)]
    pub seed: u64,
}

impl ChunkerParams {
    /// File trees: attachments are mostly whole-file duplicates or untouched; large chunks keep the index small.
    pub const FILES: ChunkerParams = ChunkerParams {
        min_size: 256 * 1024,
        avg_size: 1024 * 1024,
        max_size: 4 * 1024 * 1024,
        seed: 0,
    };
    /// Database dumps. Without delta chunks smaller chunks deduplicated scattered row updates far better
    /// (8 KiB stored 30% less than 32 KiB the next day); with them (format-spec 5.1) a changed chunk costs
    /// about its changed bytes whatever its size, and 32 KiB stores the first dump 4-13% smaller, a week of
    /// daily dumps as small as 8 KiB, and backs up and reads back faster (docs/stream-chunking.md).
    pub const STREAMS: ChunkerParams = ChunkerParams {
        min_size: 8 * 1024,
        avg_size: 32 * 1024,
        max_size: 128 * 1024,
        seed: 0,
    };

    /// Checks the bounds the fastcdc crate requires, so a hand-edited config cannot make it panic.
    pub fn validate(&self) -> Result<()> {
        use fastcdc::v2020::{
            AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
        };
        let (min, avg, max) = (
            self.min_size as usize,
            self.avg_size as usize,
            self.max_size as usize,
        );
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&min)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&avg)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max
            && min % 2 == 0
            && avg % 2 == 0
            && max % 2 == 0;
        if ok {
            Ok(())
        } else {
            Err(Error::corrupt(
                "config",
                format!("chunker parameters out of range: {self:?}"),
            ))
        }
    }
}

/// Contents of `<repo>/config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub version: u32,
    /// Random id naming this repository (hex), so two repositories are never confused.
    pub repository_id: String,
    pub chunker_files: ChunkerParams,
    pub chunker_streams: ChunkerParams,
    /// zstd level for chunk compression (1..=19): file trees and tree objects.
    pub compression_level: i32,
    /// zstd level for stream chunks; absent in configs written before it existed (then `compression_level`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_compression_level: Option<i32>,
    /// A pack is closed once its blobs reach this many bytes.
    pub pack_target_size: u64,
    /// Present (and `version` 2) in an encrypted repository; absent in a plaintext one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
}

impl Config {
    /// A config with the default parameters and a fresh repository id.
    pub fn new_default() -> Config {
        Config {
            version: FORMAT_VERSION,
            repository_id: random_hex(16),
            chunker_files: ChunkerParams::FILES,
            chunker_streams: ChunkerParams::STREAMS,
            // Level 2 stores 0.4% more than 3 on the benchmark file store (2.6% more on text-only data) for
            // 12-25% less CPU time; a first backup is CPU-bound on two cores (format-spec, "Config").
            compression_level: 2,
            // On dump chunks level 1 stores 0-3% more than 3 (less on random text) for 25% less CPU.
            stream_compression_level: Some(1),
            pack_target_size: 16 * 1024 * 1024,
            encryption: None,
        }
    }

    /// The same parameters for an encrypted repository (what `cairn init` creates unless told otherwise),
    /// with the cipher this machine runs fastest ([`Cipher::for_this_machine`]).
    pub fn encrypted(self) -> Config {
        self.encrypted_with(Cipher::for_this_machine())
    }

    /// The same parameters for a repository encrypted with `cipher`.
    pub fn encrypted_with(mut self, cipher: Cipher) -> Config {
        self.version = FORMAT_VERSION_ENCRYPTED;
        self.encryption = Some(Encryption::with_cipher(cipher));
        self
    }

    /// The cipher of an encrypted repository (its config was validated by [`Config::decode`]).
    pub fn cipher(&self) -> Option<Cipher> {
        self.encryption.as_ref().and_then(Encryption::known_cipher)
    }

    /// True if the repository's objects are sealed.
    pub fn is_encrypted(&self) -> bool {
        self.encryption.is_some()
    }

    /// The zstd level for stream chunks.
    pub fn stream_level(&self) -> i32 {
        self.stream_compression_level
            .unwrap_or(self.compression_level)
    }

    /// Decodes and validates config bytes.
    pub fn decode(bytes: &[u8]) -> Result<Config> {
        let cfg: Config = serde_json::from_slice(bytes).map_err(|e| Error::corrupt("config", e))?;
        match (cfg.version, &cfg.encryption) {
            (FORMAT_VERSION, None) => {}
            (FORMAT_VERSION_ENCRYPTED, Some(e)) if e.known_cipher().is_some() => {}
            (FORMAT_VERSION_ENCRYPTED, Some(e)) => {
                return Err(Error::corrupt(
                    "config",
                    format!("unknown encryption scheme {e:?}"),
                ))
            }
            (v @ (FORMAT_VERSION | FORMAT_VERSION_ENCRYPTED), _) => {
                return Err(Error::corrupt(
                    "config",
                    format!("format version {v} does not match the encryption field"),
                ))
            }
            (v, _) => {
                return Err(Error::corrupt(
                    "config",
                    format!(
                        "format version {v} is not supported (this build reads {FORMAT_VERSION} and {FORMAT_VERSION_ENCRYPTED})"
                    ),
                ))
            }
        }
        cfg.chunker_files.validate()?;
        cfg.chunker_streams.validate()?;
        if !(1..=19).contains(&cfg.compression_level) || !(1..=19).contains(&cfg.stream_level()) {
            return Err(Error::corrupt(
                "config",
                "compression levels must be 1..=19",
            ));
        }
        if !(1024 * 1024..=1024 * 1024 * 1024).contains(&cfg.pack_target_size) {
            return Err(Error::corrupt(
                "config",
                "pack_target_size must be 1 MiB..=1 GiB",
            ));
        }
        Ok(cfg)
    }
}

/// `n` random bytes as hex, from the OS's random source mixed through BLAKE3 with time and pid.
pub fn random_hex(n: usize) -> String {
    let mut seed = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut seed);
    }
    let mut h = blake3::Hasher::new();
    h.update(&seed);
    h.update(&std::process::id().to_le_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.update(&now.to_le_bytes());
    let mut out = vec![0u8; n];
    h.finalize_xof().fill(&mut out);
    hex::encode(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_round_trips_and_validates() {
        let cfg = Config::new_default();
        let bytes = serde_json::to_vec(&cfg).unwrap();
        assert_eq!(Config::decode(&bytes).unwrap(), cfg);
    }

    #[test]
    fn a_config_without_a_stream_level_uses_the_file_level() {
        let old = br#"{"version": 1, "repository_id": "00",
            "chunker_files": {"min_size": 262144, "avg_size": 1048576, "max_size": 4194304},
            "chunker_streams": {"min_size": 2048, "avg_size": 8192, "max_size": 32768},
            "compression_level": 5, "pack_target_size": 16777216}"#;
        let cfg = Config::decode(old).unwrap();
        assert_eq!(cfg.stream_level(), 5);
        assert_eq!(Config::new_default().stream_level(), 1);
    }

    #[test]
    fn hostile_configs_are_rejected() {
        let mut cfg = Config::new_default();
        cfg.chunker_files.min_size = 3;
        assert!(Config::decode(&serde_json::to_vec(&cfg).unwrap()).is_err());
        let mut cfg = Config::new_default();
        cfg.stream_compression_level = Some(0);
        assert!(Config::decode(&serde_json::to_vec(&cfg).unwrap()).is_err());
        assert!(Config::decode(b"{").is_err());
        assert!(Config::decode(b"").is_err());
    }

    #[test]
    fn either_cipher_decodes_and_any_other_scheme_is_refused() {
        for cipher in [Cipher::Xaes256Gcm, Cipher::XChaCha20Poly1305] {
            let cfg = Config::new_default().encrypted_with(cipher);
            let back = Config::decode(&serde_json::to_vec(&cfg).unwrap()).unwrap();
            assert_eq!(back.cipher(), Some(cipher));
        }
        assert_eq!(Config::new_default().cipher(), None);
        for change in [
            |e: &mut Encryption| e.aead = "aes256gcm".into(),
            |e: &mut Encryption| e.aead = "XAES256GCM".into(),
            |e: &mut Encryption| e.kdf = "scrypt".into(),
            |e: &mut Encryption| e.ids = "blake3".into(),
        ] {
            let mut cfg = Config::new_default().encrypted();
            change(cfg.encryption.as_mut().unwrap());
            let err = Config::decode(&serde_json::to_vec(&cfg).unwrap()).unwrap_err();
            assert!(
                err.to_string().contains("unknown encryption scheme"),
                "{err}"
            );
        }
    }
}
