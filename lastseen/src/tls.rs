//! TLS to the dependencies, one way for all: rustls with the ring provider, the system's
//! roots, plus the CA certificates of `TLS_CA_FILE`, and a client certificate
//! (`TLS_CLIENT_CERT`, `TLS_CLIENT_KEY`) for the peers that ask for one. The status
//! service (hyper) and the webhook (reqwest) through [`TlsArgs::client_config`],
//! RabbitMQ (`amqps://`, lapin) and PostgreSQL (`sslmode`, sqlx) take them from here. A
//! file that is missing or holds no PEM certificate (or key) is refused when the settings
//! are read, naming the setting.

use std::path::Path;
use std::sync::Once;

use clap::Args;

use crate::config::Misconfigured;
use crate::pem::{
    PemFile, certificates, check_pair, parse_ca_file, parse_cert_file, parse_key_file,
};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// The TLS settings every process shares.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// PEM file of CA certificates trusted besides the system's, for every TLS
    /// connection: the status service, the webhook, RabbitMQ (`amqps://`) and PostgreSQL
    /// (unless `DATABASE_URL` names its own `sslrootcert`).
    #[arg(long, env = "TLS_CA_FILE", value_parser = parse_ca_file)]
    pub tls_ca_file: Option<PemFile>,

    /// PEM file of the client certificate (chain) shown to a peer that asks for one
    /// (with `TLS_CLIENT_KEY`).
    #[arg(long, env = "TLS_CLIENT_CERT", requires = "tls_client_key", value_parser = parse_cert_file)]
    pub tls_client_cert: Option<PemFile>,

    /// PEM file of the client certificate's private key (with `TLS_CLIENT_CERT`).
    #[arg(long, env = "TLS_CLIENT_KEY", requires = "tls_client_cert", value_parser = parse_key_file)]
    pub tls_client_key: Option<PemFile>,
}

/// Makes ring the process's rustls provider, once, before any TLS client is built.
fn install_provider() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        // Another caller (a test) may have installed the same provider first.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A builder of HTTP clients trusting the system's roots only: for tools and tests.
pub fn http_client() -> reqwest::ClientBuilder {
    TlsArgs::default()
        .http_client()
        .expect("without files there is nothing to refuse")
}

/// GET `url` with a [`http_client`], as `reqwest::get` would (which cannot be used: it
/// builds a client before any provider is installed).
pub async fn get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    http_client().build()?.get(url).send().await
}

impl TlsArgs {
    /// Checks what parsing each file alone cannot: that the client certificate and key
    /// belong together. Call at start: a mismatch is refused, naming `TLS_CLIENT_KEY`.
    pub fn check(&self) -> Result<(), Misconfigured> {
        let (Some(cert), Some(key)) = (&self.tls_client_cert, &self.tls_client_key) else {
            return Ok(());
        };
        check_pair(&cert.pem, &key.pem).map_err(|reason| misconfigured("TLS_CLIENT_KEY", reason))
    }

    /// The rustls client settings of every HTTPS client: the system's roots (through
    /// rustls-platform-verifier, as reqwest does by default) and `TLS_CA_FILE` besides,
    /// and the client certificate when one is set (ALPN is the client's to set).
    /// Certificates that cannot be used, or a certificate and key that do not belong
    /// together, are refused here, naming the setting.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, Misconfigured> {
        install_provider();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let extra = match &self.tls_ca_file {
            Some(ca) => {
                certificates(&ca.pem).map_err(|reason| misconfigured("TLS_CA_FILE", reason))?
            }
            None => Vec::new(),
        };
        let verifier = if extra.is_empty() {
            rustls_platform_verifier::Verifier::new(provider.clone())
        } else {
            rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
        }
        .map_err(|e| misconfigured("TLS_CA_FILE", e.to_string()))?;
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| misconfigured("TLS_CA_FILE", e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(verifier));
        Ok(match (&self.tls_client_cert, &self.tls_client_key) {
            (Some(cert), Some(key)) => {
                let chain = certificates(&cert.pem)
                    .map_err(|reason| misconfigured("TLS_CLIENT_CERT", reason))?;
                let key = PrivateKeyDer::from_pem_slice(key.pem.as_bytes()).map_err(|_| {
                    misconfigured("TLS_CLIENT_KEY", "holds no PEM private key".into())
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|_| {
                    misconfigured(
                        "TLS_CLIENT_CERT",
                        "the certificate and TLS_CLIENT_KEY do not make a client identity".into(),
                    )
                })?
            }
            _ => builder.with_no_client_auth(),
        })
    }

    /// A builder of HTTP clients with [`TlsArgs::client_config`]: the one way this code
    /// base makes a reqwest client (the consumer's status client, which holds thousands
    /// of connections, is hyper's with the same settings).
    pub fn http_client(&self) -> Result<reqwest::ClientBuilder, Misconfigured> {
        Ok(reqwest::Client::builder().tls_backend_preconfigured(self.client_config()?))
    }

    /// The TLS settings for an `amqps://` connection (unused by `amqp://`).
    pub fn amqp(&self) -> lapin::tcp::OwnedTLSConfig {
        lapin::tcp::OwnedTLSConfig {
            identity: match (&self.tls_client_cert, &self.tls_client_key) {
                (Some(cert), Some(key)) => Some(lapin::tcp::OwnedIdentity::PKCS8 {
                    pem: cert.pem.clone().into_bytes(),
                    key: key.pem.clone().into_bytes(),
                }),
                _ => None,
            },
            cert_chain: self.tls_ca_file.as_ref().map(|ca| ca.pem.clone()),
        }
    }

    /// `url` (a PostgreSQL URL) with `sslrootcert` set to `TLS_CA_FILE`, and `sslcert`
    /// and `sslkey` to the client certificate, where the URL does not name its own.
    pub fn postgres_url(&self, url: &str) -> String {
        let mut extra = Vec::new();
        let names = |key: &str| url_has_param(url, key);
        if let Some(ca) = &self.tls_ca_file
            && !names("sslrootcert")
        {
            extra.push(("sslrootcert", &ca.path));
        }
        if let (Some(cert), Some(key)) = (&self.tls_client_cert, &self.tls_client_key)
            && !names("sslcert")
        {
            extra.push(("sslcert", &cert.path));
            extra.push(("sslkey", &key.path));
        }
        let mut out = url.to_owned();
        for (key, path) in extra {
            out.push(if out.contains('?') { '&' } else { '?' });
            out.push_str(key);
            out.push('=');
            out.push_str(&encode_path(path));
        }
        out
    }
}

fn url_has_param(url: &str, key: &str) -> bool {
    url.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some(key))
    })
}

fn encode_path(path: &Path) -> String {
    url::form_urlencoded::byte_serialize(path.to_string_lossy().as_bytes()).collect()
}

fn misconfigured(setting: &'static str, reason: String) -> Misconfigured {
    Misconfigured { setting, reason }
}

/// What to check for a certificate error `reason` of [`is_certificate_error`]: the peer
/// refusing this side (an alert) points at the client certificate, anything else at the
/// trusted CAs.
pub fn hint(reason: &str) -> &'static str {
    if reason.contains("alert") {
        "the server refused this side: check TLS_CLIENT_CERT and TLS_CLIENT_KEY"
    } else {
        "check TLS_CA_FILE, and that the host in the URL is one the certificate names"
    }
}

/// Whether `err` (or one of its causes) is a TLS certificate the peer showed that was
/// not trusted, or one this side could not use: no retry fixes that, a setting does.
pub fn is_certificate_error(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return match tls {
                rustls::Error::InvalidCertificate(_)
                | rustls::Error::InconsistentKeys(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::InvalidCertRevocationList(_)
                | rustls::Error::AlertReceived(_) => Some(tls.to_string()),
                _ => None,
            };
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(found) = is_certificate_error(inner)
        {
            return Some(found);
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn with_ca(path: &str) -> TlsArgs {
        TlsArgs {
            tls_ca_file: Some(PemFile {
                path: PathBuf::from(path),
                pem: String::new(),
            }),
            ..TlsArgs::default()
        }
    }

    #[test]
    fn postgres_url_adds_the_ca_unless_the_url_names_one() {
        let tls = with_ca("/etc/ca dir/ca.pem");
        assert_eq!(
            tls.postgres_url("postgres://u@h/db?sslmode=verify-full"),
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca+dir%2Fca.pem"
        );
        assert_eq!(
            tls.postgres_url("postgres://u@h/db"),
            "postgres://u@h/db?sslrootcert=%2Fetc%2Fca+dir%2Fca.pem"
        );
        let own = "postgres://u@h/db?sslrootcert=/own.pem&sslmode=verify-ca";
        assert_eq!(tls.postgres_url(own), own);
        assert_eq!(TlsArgs::default().postgres_url(own), own);
    }

    #[test]
    fn a_file_without_a_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = parse_ca_file(path.to_str().unwrap()).unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
        let err = parse_key_file(path.to_str().unwrap()).unwrap_err();
        assert!(err.contains("no PEM private key"), "{err}");
        let err = parse_ca_file("/nonexistent/ca.pem").unwrap_err();
        assert!(err.contains("cannot read /nonexistent/ca.pem"), "{err}");
    }
}
