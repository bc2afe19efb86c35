//! rustls for the HTTP API: the HTTPS listener's configuration and the client configuration
//! that trusts the cluster's CA (forwarding between nodes and the CLI).

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a TLS file could not be used. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// What the file should hold, e.g. `certificate`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds no usable PEM item of the expected kind.
    #[error("{path} holds no {what} (expected PEM)")]
    Empty {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the certificates or key.
    #[error("cannot use the TLS files {cert} / {key}: {source}")]
    Rustls {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's error.
        source: rustls::Error,
    },
    /// A CA certificate was refused.
    #[error("cannot use the CA certificate in {path}: {source}")]
    Ca {
        /// The CA file.
        path: PathBuf,
        /// rustls's error.
        source: rustls::Error,
    },
}

fn open(path: &Path, what: &'static str) -> Result<std::io::BufReader<std::fs::File>, TlsError> {
    std::fs::File::open(path)
        .map(std::io::BufReader::new)
        .map_err(|source| TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        })
}

/// The certificates of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let what = "certificate";
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut open(path, what)?)
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = "private key";
    rustls_pemfile::private_key(&mut open(path, what)?)
        .map_err(|source| TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::Empty {
            what,
            path: path.to_owned(),
        })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The HTTPS listener's configuration: `cert`/`key`, HTTP/1.1 only, no client certificates
/// (clients authenticate with bearer tokens).
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let chain = load_certs(cert)?;
    let private = load_key(key)?;
    let rustls_err = |source| TlsError::Rustls {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_err)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(rustls_err)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client configuration that trusts only the CA certificates in `ca` (not the system's
/// roots: a cluster's certificates come from its own CA).
pub fn client_config(ca: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert).map_err(|source| TlsError::Ca {
            path: ca.to_owned(),
            source,
        })?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Ca {
            path: ca.to_owned(),
            source,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
