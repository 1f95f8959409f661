//! Certificates made by the test: a CA, a server certificate it signs for `localhost`
//! and `127.0.0.1`, a client certificate, and another CA that signed nothing here (the
//! wrong CA), written as PEM files to a folder of the test's own.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The files of a test's certificates.
pub struct TestCerts {
    dir: tempfile::TempDir,
}

fn ca(name: &str) -> anyhow::Result<(String, Issuer<'static, KeyPair>)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> anyhow::Result<(String, String)> {
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl TestCerts {
    /// Makes every certificate and writes them.
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("lastseen-certs-")
            .tempdir()?;
        let (ca_pem, issuer) = ca("lastseen test CA")?;
        let (wrong_pem, _) = ca("another CA")?;
        let (server_cert, server_key) =
            leaf(&issuer, "localhost", ExtendedKeyUsagePurpose::ServerAuth)?;
        let (client_cert, client_key) =
            leaf(&issuer, "lastseen", ExtendedKeyUsagePurpose::ClientAuth)?;
        let files = [
            ("ca.pem", ca_pem),
            ("wrong-ca.pem", wrong_pem),
            ("server.pem", server_cert),
            ("server.key", server_key),
            ("client.pem", client_cert),
            ("client.key", client_key),
        ];
        for (name, pem) in files {
            write_private(&dir.path().join(name), &pem)?;
        }
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca(&self) -> PathBuf {
        self.dir().join("ca.pem")
    }

    pub fn wrong_ca(&self) -> PathBuf {
        self.dir().join("wrong-ca.pem")
    }

    /// The server certificate and its key.
    pub fn server(&self) -> (PathBuf, PathBuf) {
        (self.dir().join("server.pem"), self.dir().join("server.key"))
    }

    /// The client certificate and its key.
    pub fn client(&self) -> (PathBuf, PathBuf) {
        (self.dir().join("client.pem"), self.dir().join("client.key"))
    }

    /// A rustls server configuration with the server certificate.
    pub fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let (cert, key) = self.server();
        tester::tls_listener::server_config_from_files(&cert, &key)
    }
}

/// Writes `text` readable by its owner only (PostgreSQL refuses a key others can read).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}
