//! XAES-256-GCM (C2SP, <https://c2sp.org/XAES-256-GCM>): AES-256-GCM with a 192-bit nonce. The nonce's first
//! 12 bytes and the key give a per-message key through AES-256 in the NIST SP 800-108 counter mode with
//! CMAC as the PRF; AES-256-GCM under that key, with the nonce's last 12 bytes as its nonce, seals. Like
//! XChaCha20's 192-bit nonces, these can be drawn at random for every message of a repository that many
//! hosts write for years; unlike plain AES-256-GCM's 96-bit ones, which cannot.
//!
//! All AES work is aws-lc-rs's (AES-NI and VAES assembly where the machine has them; constant-time
//! vector-permutation AES where it does not): the two derivation blocks through its ECB mode, the bulk
//! through its AES-256-GCM. The output is the same as RustCrypto's `xaes-256-gcm` crate's and the C2SP test
//! vectors', which the unit tests check, so the choice of implementation is no part of the format.

use aws_lc_rs::aead::{LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::cipher::{EncryptingKey, UnboundCipherKey, AES_256};
use zeroize::Zeroizing;

use super::{AeadError, ExtendedNonceAead, NONCE_LEN};

const BLOCK: usize = 16;

/// An XAES-256-GCM key: the AES-256 key schedule and the CMAC subkey `K1` (spec steps 1 and 2). aws-lc-rs
/// zeroes the schedule when it is dropped; `K1` and each derived key are zeroed here.
pub struct XAes {
    aes: EncryptingKey,
    k1: Zeroizing<[u8; BLOCK]>,
}

impl XAes {
    pub fn new(key: &[u8; 32]) -> Result<XAes, AeadError> {
        let aes = UnboundCipherKey::new(&AES_256, key)
            .and_then(EncryptingKey::ecb)
            .map_err(|_| AeadError)?;
        // L = AES-256_K(0^128); K1 = L << 1, xor 0x87 into the last byte when L's top bit was set.
        let mut l = Zeroizing::new([0u8; BLOCK]);
        aes.encrypt(&mut l[..]).map_err(|_| AeadError)?;
        let mut k1 = Zeroizing::new([0u8; BLOCK]);
        for i in 0..BLOCK {
            let carry = l.get(i + 1).map_or(0, |next| next >> 7);
            k1[i] = (l[i] << 1) | carry;
        }
        k1[BLOCK - 1] ^= (l[0] >> 7) * 0x87;
        Ok(XAes { aes, k1 })
    }
}

impl ExtendedNonceAead for XAes {
    /// The AES-256-GCM key and nonce that `nonce` selects (spec steps 3 to 5).
    fn message_key(&self, nonce: &[u8; NONCE_LEN]) -> Result<(LessSafeKey, Nonce), AeadError> {
        // M_i = [0, i] || "X" || 0x00 || N[:12], each xored with K1, then both enciphered:
        // K_x = AES(M1) || AES(M2).
        let mut kx = Zeroizing::new([0u8; 2 * BLOCK]);
        for (i, block) in kx.chunks_exact_mut(BLOCK).enumerate() {
            block[..4].copy_from_slice(&[0, i as u8 + 1, b'X', 0]);
            block[4..].copy_from_slice(&nonce[..12]);
            for (b, k) in block.iter_mut().zip(self.k1.iter()) {
                *b ^= k;
            }
        }
        self.aes.encrypt(&mut kx[..]).map_err(|_| AeadError)?;
        let key = UnboundKey::new(&AES_256_GCM, &kx[..]).map_err(|_| AeadError)?;
        let mut n = [0u8; 12];
        n.copy_from_slice(&nonce[12..]);
        Ok((LessSafeKey::new(key), Nonce::assume_unique_for_key(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::reference_check::{assert_seals_like, sealed};
    use xaes_256_gcm::aead::{Aead, KeyInit, Payload};
    use xaes_256_gcm::Xaes256Gcm;

    #[test]
    fn c2sp_test_vectors() {
        let nonce = b"ABCDEFGHIJKLMNOPQRSTUVWX";
        let x = XAes::new(&[1; 32]).unwrap();
        assert_eq!(
            hex::encode(sealed(&x, nonce, b"", b"XAES-256-GCM")),
            "ce546ef63c9cc60765923609b33a9a1974e96e52daf2fcf7075e2271"
        );
        let x = XAes::new(&[3; 32]).unwrap();
        assert_eq!(
            hex::encode(sealed(&x, nonce, b"c2sp.org/XAES-256-GCM", b"XAES-256-GCM")),
            "986ec1832593df5443a179437fd083bf3fdb41abd740a21f71eb769d"
        );
    }

    #[test]
    fn seals_exactly_like_the_reference_implementation_and_opens_its_output() {
        // Keys whose L has its top bit set and clear both occur among these (K1's two branches).
        for key_byte in [0x42u8, 0x01, 0x03, 0x80, 0xff] {
            let key = [key_byte; 32];
            let reference = Xaes256Gcm::new((&key).into());
            assert_seals_like(
                &XAes::new(&key).unwrap(),
                |nonce, plain| {
                    reference
                        .encrypt(
                            nonce.into(),
                            Payload {
                                msg: plain,
                                aad: b"aad",
                            },
                        )
                        .unwrap()
                },
                key_byte,
                &format!("XAES-256-GCM, key {key_byte:#x}"),
            );
        }
    }
}
