//! TLS to the server with libpq's `sslmode` semantics, for cairn's own connections (rustls, through
//! `tokio-postgres-rustls`) and, passed through unchanged, for the libpq tools it runs (pg_dump, pg_restore,
//! psql).
//!
//! Settings: `sslmode` and `sslrootcert` in `--pg-conn` (keyword/value or URI query), else `PGSSLMODE` and
//! `PGSSLROOTCERT`. The modes, as libpq defines them:
//! - `disable`: never TLS. `allow`, `prefer` (the default): TLS when the server offers it, unverified.
//! - `require`: TLS or no connection; the certificate is not checked, unless a root certificate is given
//!   (or `~/.postgresql/root.crt` exists), then as `verify-ca` (libpq's compatibility rule).
//! - `verify-ca`: the certificate chain must lead to a root in `sslrootcert` (default
//!   `~/.postgresql/root.crt`, which must then exist). `verify-full`: that, and the certificate must name
//!   the host connected to. `sslrootcert=system` uses the system's trusted roots (and, as in libpq, implies
//!   `verify-full`).
//!
//! Invariants: a verifying mode never connects without a readable root certificate; an unverified mode
//! still checks the handshake's signatures; the children get exactly the mode and file cairn used.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;

use crate::error::{Error, Result};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl std::str::FromStr for TlsMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<TlsMode> {
        Ok(match s {
            "disable" => TlsMode::Disable,
            "allow" => TlsMode::Allow,
            "prefer" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            other => {
                return Err(Error::Invalid(format!(
                "sslmode {other:?}: want disable, allow, prefer, require, verify-ca or verify-full"
            )))
            }
        })
    }
}

impl TlsMode {
    /// The mode as libpq spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Allow => "allow",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }
}

/// The TLS settings of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: TlsMode,
    /// `sslrootcert` as given (a file, or `system`).
    pub root_cert: Option<String>,
    /// libpq's default root certificate file, `~/.postgresql/root.crt`, if `HOME` is known.
    default_root: Option<PathBuf>,
}

impl TlsSettings {
    /// The settings from the connection string's values, else the environment's.
    pub fn resolve(
        mode: Option<String>,
        root_cert: Option<String>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<TlsSettings> {
        let mode = match mode.or_else(|| env("PGSSLMODE")) {
            Some(m) => m.parse()?,
            None => TlsMode::Prefer,
        };
        let root_cert = root_cert.or_else(|| env("PGSSLROOTCERT"));
        let default_root = env("HOME").map(|h| PathBuf::from(h).join(".postgresql/root.crt"));
        // libpq: sslrootcert=system is only allowed with verify-full, and makes it the default.
        let mode = match (root_cert.as_deref(), mode) {
            (Some("system"), TlsMode::Prefer) => TlsMode::VerifyFull,
            (Some("system"), TlsMode::VerifyFull) => TlsMode::VerifyFull,
            (Some("system"), other) => {
                return Err(Error::Invalid(format!(
                    "sslrootcert=system requires sslmode=verify-full, not {}",
                    other.as_str()
                )))
            }
            (_, m) => m,
        };
        Ok(TlsSettings {
            mode,
            root_cert,
            default_root,
        })
    }

    /// The mode and what the server's certificate is checked against, for messages.
    pub fn describe(&self) -> String {
        match self.root_file() {
            Ok(Some(f)) => format!(
                "sslmode={}: the server's certificate does not verify against the root certificate(s) in {}",
                self.mode.as_str(),
                f.display()
            ),
            _ => format!("sslmode={}", self.mode.as_str()),
        }
    }

    /// What tokio-postgres is told: whether TLS is tried and whether it is required.
    pub fn ssl_mode(&self) -> SslMode {
        match self.mode {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Allow | TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
        }
    }

    /// The environment of a libpq child: the same mode and root certificate.
    pub fn child_env(&self, env: &mut Vec<(&'static str, OsString)>) {
        env.push(("PGSSLMODE", self.mode.as_str().into()));
        if let Some(r) = &self.root_cert {
            env.push(("PGSSLROOTCERT", r.into()));
        }
    }

    /// The root certificate file to verify against, if any: the one given, else libpq's default when it
    /// exists. `Err` when a verifying mode has none.
    fn root_file(&self) -> Result<Option<PathBuf>> {
        if let Some(r) = &self.root_cert {
            return Ok(Some(PathBuf::from(r)));
        }
        match &self.default_root {
            Some(d) if d.exists() => Ok(Some(d.clone())),
            _ if matches!(self.mode, TlsMode::VerifyCa | TlsMode::VerifyFull) => {
                Err(Error::Invalid(format!(
                    "sslmode={} needs a root certificate: set sslrootcert (or PGSSLROOTCERT), put one in {}, \
                     or use sslrootcert=system for the system's trusted roots",
                    self.mode.as_str(),
                    self.default_root
                        .as_ref()
                        .map_or("~/.postgresql/root.crt".into(), |d| d.display().to_string())
                )))
            }
            _ => Ok(None),
        }
    }

    /// The connector for tokio-postgres.
    pub fn connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let lenient = |chain| {
            Arc::new(Lenient {
                chain,
                provider: provider.clone(),
            })
        };
        let verifier: Arc<dyn ServerCertVerifier> = match self.mode {
            // TLS is not used: any verifier will do, it never runs.
            TlsMode::Disable => lenient(None),
            _ => match (self.root_file()?, self.mode) {
                (None, _) => lenient(None),
                (Some(file), mode) => {
                    let roots = self.roots(&file)?;
                    let webpki = WebPkiServerVerifier::builder_with_provider(
                        Arc::new(roots),
                        provider.clone(),
                    )
                    .build()
                    .map_err(|e| Error::Invalid(format!("sslrootcert: {e}")))?;
                    if mode == TlsMode::VerifyFull {
                        webpki
                    } else {
                        lenient(Some(webpki))
                    }
                }
            },
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Invalid(format!("TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }

    /// The trusted roots: the certificates of a PEM file, or the system's.
    fn roots(&self, file: &std::path::Path) -> Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        let certs: Vec<CertificateDer<'static>> = if file.as_os_str() == "system" {
            rustls_native_certs::load_native_certs().certs
        } else {
            let bad = |e: rustls::pki_types::pem::Error| {
                Error::Invalid(format!("sslrootcert {}: {e}", file.display()))
            };
            CertificateDer::pem_file_iter(file)
                .map_err(bad)?
                .collect::<std::result::Result<_, _>>()
                .map_err(bad)?
        };
        for c in certs {
            roots
                .add(c)
                .map_err(|e| Error::Invalid(format!("sslrootcert {}: {e}", file.display())))?;
        }
        if roots.is_empty() {
            return Err(Error::Invalid(format!(
                "sslrootcert {}: no certificate in it",
                file.display()
            )));
        }
        Ok(roots)
    }
}

/// The verifier of the modes that do not check the server's name: `verify-ca` (the chain is verified, the
/// name is not: a certificate valid for another name passes) and, with no chain to verify, `prefer`/`require`
/// without a root certificate (encryption without authentication of the server, as in libpq). Either way
/// the handshake signatures are verified, with the provider's algorithms (as [`WebPkiServerVerifier`] does).
#[derive(Debug)]
struct Lenient {
    /// The roots' verifier, for `verify-ca`; none when the certificate is not checked.
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // The name is checked only after the chain verified: a name error means the chain is good.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Takes `sslmode` and `sslrootcert` out of a connection string (keyword/value or URI), returning the rest
/// (for tokio-postgres, which knows neither `verify-*` nor `sslrootcert`) and their values.
pub fn take_tls_keys(conninfo: &str) -> Result<(String, Option<String>, Option<String>)> {
    let trimmed = conninfo.trim_start();
    let lower = trimmed.to_ascii_lowercase();
    if lower.starts_with("postgresql://") || lower.starts_with("postgres://") {
        return Ok(take_from_uri(trimmed));
    }
    take_from_keywords(conninfo)
}

fn take_from_uri(uri: &str) -> (String, Option<String>, Option<String>) {
    let Some((base, query)) = uri.split_once('?') else {
        return (uri.to_string(), None, None);
    };
    let (mut mode, mut root) = (None, None);
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_encoding::percent_decode_str(k).decode_utf8_lossy();
        let value = || {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        };
        match key.as_ref() {
            "sslmode" => mode = Some(value()),
            "sslrootcert" => root = Some(value()),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, mode, root)
}

/// libpq keyword/value syntax: `key = value` pairs separated by whitespace; a value is single-quoted
/// (`\'` and `\\` escapes) or runs to the next whitespace (`\` escaping the next character).
fn take_from_keywords(conninfo: &str) -> Result<(String, Option<String>, Option<String>)> {
    let bytes = conninfo.as_bytes();
    let (mut mode, mut root) = (None, None);
    let mut rest = String::new();
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        i = skip_ws(i);
        if i == bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &conninfo[start..i];
        i = skip_ws(i);
        if i == bytes.len() || bytes[i] != b'=' {
            return Err(Error::Invalid(format!(
                "--pg-conn is not a libpq connection string: missing \"=\" after {key:?}"
            )));
        }
        i = skip_ws(i + 1);
        let mut value = String::new();
        if i < bytes.len() && bytes[i] == b'\'' {
            i += 1;
            loop {
                match bytes.get(i) {
                    None => {
                        return Err(Error::Invalid(
                            "--pg-conn is not a libpq connection string: unterminated quoted value"
                                .into(),
                        ))
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < bytes.len() => {
                        value.push(bytes[i + 1] as char);
                        i += 2;
                    }
                    Some(_) => {
                        let c = conninfo[i..].chars().next().unwrap_or('\u{fffd}');
                        value.push(c);
                        i += c.len_utf8();
                    }
                }
            }
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                let c = conninfo[i..].chars().next().unwrap_or('\u{fffd}');
                value.push(c);
                i += c.len_utf8();
            }
        }
        match key {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(value),
            _ => {
                rest.push_str(&conninfo[start..i]);
                rest.push(' ');
            }
        }
    }
    Ok((rest.trim_end().to_string(), mode, root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_keys_are_taken_from_both_syntaxes_and_the_rest_kept() {
        let (rest, m, r) = take_tls_keys(
            "host=db port=5433 sslmode=verify-full sslrootcert = '/etc/my ca.pem' user=u",
        )
        .unwrap();
        assert_eq!(rest, "host=db port=5433 user=u");
        assert_eq!(m.as_deref(), Some("verify-full"));
        assert_eq!(r.as_deref(), Some("/etc/my ca.pem"));
        let (rest, m, r) = take_tls_keys(
            "postgresql://u@h:5433/db?sslmode=verify-ca&application_name=x&sslrootcert=%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgresql://u@h:5433/db?application_name=x");
        assert_eq!(m.as_deref(), Some("verify-ca"));
        assert_eq!(r.as_deref(), Some("/ca.pem"));
        let (rest, m, _) = take_tls_keys("host=h dbname='a b\\'c'").unwrap();
        assert_eq!(rest, "host=h dbname='a b\\'c'");
        assert_eq!(m, None);
        assert!(take_tls_keys("host=h sslmode='x").is_err());
    }

    #[test]
    fn modes_follow_libpq() {
        let none = |_: &str| None;
        let s = TlsSettings::resolve(None, None, &none).unwrap();
        assert_eq!((s.mode, s.ssl_mode()), (TlsMode::Prefer, SslMode::Prefer));
        let s = TlsSettings::resolve(Some("verify-ca".into()), None, &none).unwrap();
        assert_eq!(s.ssl_mode(), SslMode::Require);
        // A verifying mode without any root certificate fails before connecting.
        assert!(s.connector().is_err());
        let env = |k: &str| (k == "PGSSLMODE").then(|| "require".to_string());
        assert_eq!(
            TlsSettings::resolve(None, None, &env).unwrap().mode,
            TlsMode::Require
        );
        let s = TlsSettings::resolve(None, Some("system".into()), &none).unwrap();
        assert_eq!(s.mode, TlsMode::VerifyFull);
        assert!(
            TlsSettings::resolve(Some("require".into()), Some("system".into()), &none).is_err()
        );
        assert!(TlsSettings::resolve(Some("bogus".into()), None, &none).is_err());
        let mut env = Vec::new();
        TlsSettings::resolve(Some("verify-full".into()), Some("/ca.pem".into()), &none)
            .unwrap()
            .child_env(&mut env);
        assert_eq!(
            env,
            vec![
                ("PGSSLMODE", "verify-full".into()),
                ("PGSSLROOTCERT", "/ca.pem".into())
            ]
        );
    }
}
