//! PEM files read and checked when the settings are parsed: CA certificates, a client
//! certificate and its key, and whether the two belong together. No contents of a key
//! ever reach an error message.

use std::path::PathBuf;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A PEM file, read and checked when the settings were parsed.
#[derive(Clone, PartialEq, Eq)]
pub struct PemFile {
    pub path: PathBuf,
    pub pem: String,
}

impl std::fmt::Debug for PemFile {
    /// The path only: a key file's contents never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PemFile({})", self.path.display())
    }
}

fn read_pem(path: &str) -> Result<PemFile, String> {
    let pem = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    Ok(PemFile {
        path: PathBuf::from(path),
        pem,
    })
}

pub(crate) fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

pub(crate) fn parse_ca_file(path: &str) -> Result<PemFile, String> {
    let file = read_pem(path)?;
    certificates(&file.pem)?;
    Ok(file)
}

pub(crate) fn parse_cert_file(path: &str) -> Result<PemFile, String> {
    parse_ca_file(path)
}

pub(crate) fn parse_key_file(path: &str) -> Result<PemFile, String> {
    let file = read_pem(path)?;
    // The key itself is never quoted: only whether it parses.
    PrivateKeyDer::from_pem_slice(file.pem.as_bytes())
        .map_err(|_| "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned())?;
    Ok(file)
}

/// Whether the key in `key_pem` is the private key of the first certificate of
/// `cert_pem`.
pub fn check_pair(cert_pem: &str, key_pem: &str) -> Result<(), String> {
    let certs = certificates(cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned())?;
    rustls::sign::CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider())
        .map(|_| ())
        .map_err(|e| format!("not the key of the client certificate: {e}"))
}

/// Reads `path` and checks it holds PEM certificates (for a URL's `sslrootcert`).
pub fn check_certificate_file(path: &str) -> Result<(), String> {
    certificates(&read_pem(path)?.pem).map(|_| ())
}
