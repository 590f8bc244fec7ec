//! XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha-03) as the format uses it: HChaCha20 of the key and the
//! nonce's first 16 bytes gives a subkey, and ChaCha20-Poly1305 (RFC 8439) under that subkey, with the nonce
//! `0000 || nonce[16..24]`, seals. The bulk work is aws-lc-rs's (assembly for the machine it runs on);
//! HChaCha20 is RustCrypto's. The output is the same as `chacha20poly1305::XChaCha20Poly1305`'s, which
//! the unit tests check, so the choice of implementation is no part of the format.

use aws_lc_rs::aead::{LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use chacha20::cipher::consts::U10;
use chacha20::cipher::generic_array::GenericArray;
use zeroize::Zeroizing;

use super::{AeadError, ExtendedNonceAead, NONCE_LEN};

/// An XChaCha20-Poly1305 key.
pub struct XChaCha {
    key: Zeroizing<[u8; 32]>,
}

impl XChaCha {
    pub fn new(key: &[u8; 32]) -> XChaCha {
        XChaCha {
            key: Zeroizing::new(*key),
        }
    }
}

impl ExtendedNonceAead for XChaCha {
    /// The ChaCha20-Poly1305 key (HChaCha20 of the key and the nonce's first 16 bytes) and nonce
    /// (`0000 || nonce[16..24]`) that `nonce` selects.
    fn message_key(&self, nonce: &[u8; NONCE_LEN]) -> Result<(LessSafeKey, Nonce), AeadError> {
        let mut subkey = Zeroizing::new([0u8; 32]);
        subkey.copy_from_slice(&chacha20::hchacha::<U10>(
            GenericArray::from_slice(&self.key[..]),
            GenericArray::from_slice(&nonce[..16]),
        ));
        let key = UnboundKey::new(&CHACHA20_POLY1305, &subkey[..]).map_err(|_| AeadError)?;
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&nonce[16..]);
        Ok((LessSafeKey::new(key), Nonce::assume_unique_for_key(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::reference_check::assert_seals_like;
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    use chacha20poly1305::{XChaCha20Poly1305, XNonce};

    #[test]
    fn seals_exactly_like_the_reference_implementation_and_opens_its_output() {
        let key = [0x42u8; 32];
        let reference = XChaCha20Poly1305::new((&key).into());
        assert_seals_like(
            &XChaCha::new(&key),
            |nonce, plain| {
                reference
                    .encrypt(
                        XNonce::from_slice(nonce),
                        Payload {
                            msg: plain,
                            aad: b"aad",
                        },
                    )
                    .unwrap()
            },
            1,
            "XChaCha20-Poly1305",
        );
    }
}
