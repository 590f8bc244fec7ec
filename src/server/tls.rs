//! HTTPS for `cairn serve --tls-cert FILE --tls-key FILE`: the certificate chain and private key read from
//! PEM files into a rustls server configuration.
//!
//! Invariants: everything is checked before the server listens, so a missing file, a file without a
//! certificate or key, or a key that does not match the certificate is one `cairn: error:` line at start,
//! never a server that fails every handshake. The crypto provider is named (aws-lc-rs, as for cairn's
//! PostgreSQL connections): two providers are compiled in, so rustls has no process default to fall back
//! on. ALPN offers HTTP/2 and HTTP/1.1 (the server speaks both).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::error::{Error, Result};

/// The PEM files of `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate, followed by any intermediates.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

fn bad(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{what} {}: {e}", path.display()))
}

/// The certificate chain of `path`, leaf first.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad("--tls-cert", path, e))?;
    if certs.is_empty() {
        return Err(bad(
            "--tls-cert",
            path,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
        ));
    }
    Ok(certs)
}

/// The first private key of `path`.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            bad("--tls-key", path, "no PEM private key in it")
        }
        e => bad("--tls-key", path, e),
    })
}

impl TlsFiles {
    /// The server configuration, with the key checked against the certificate.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>> {
        let certs = certificates(&self.cert)?;
        let key = private_key(&self.key)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Invalid(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                Error::Invalid(format!(
                    "--tls-cert {} with --tls-key {}: {e}",
                    self.cert.display(),
                    self.key.display()
                ))
            })?;
        // The server speaks HTTP/1.1 only (see `serve` in mod.rs): offering h2 would make browsers choose it.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
