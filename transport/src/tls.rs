//! Mutual TLS with rustls (ring provider): both sides present a certificate signed by the
//! cluster CA and verify the other's; the certificate must name the node id its holder claims
//! (DNS SAN `node-{id}.conclave`, checked by the transport after the TLS handshake).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::TlsConfig;
use crate::NodeId;

/// Errors of loading the TLS material; each names the file or the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A PEM file holds no item of the expected kind.
    #[error("{path} contains no {what}")]
    Missing {
        /// The file.
        path: PathBuf,
        /// What was expected ("certificate", "private key").
        what: &'static str,
    },
    /// `server_name` is not a valid DNS name; the field is the name as configured (or the
    /// `node-{id}.conclave` name built for the peer), echoed.
    #[error("invalid tls server_name {0:?}")]
    ServerName(String),
    /// rustls refused the material (bad key, unusable CA, ...).
    #[error("tls setup: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built from the CA.
    #[error("tls client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Ready-made rustls acceptor and connector.
#[derive(Clone)]
pub(crate) struct TlsContext {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl TlsContext {
    pub fn load(cfg: &TlsConfig) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = read_certs(&cfg.cert)?;
        let key = read_key(&cfg.key)?;
        let mut roots = RootCertStore::empty();
        for ca in read_certs(&cfg.ca)? {
            roots.add(ca)?;
        }
        let roots = Arc::new(roots);

        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()?;
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)?;

        let server_name = match &cfg.server_name {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|_| TlsError::ServerName(name.clone()))?,
            ),
            None => None,
        };
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            server_name,
        })
    }

    /// The name the dialled peer's certificate is checked against during the TLS handshake:
    /// the configured `server_name`, else `node-{peer}.conclave`. (The binding of the
    /// certificate to the node id is checked separately, in every case: see
    /// [`crate::auth::cert_names_node`].)
    pub fn server_name_for(&self, peer: NodeId) -> Result<ServerName<'static>, TlsError> {
        match &self.server_name {
            Some(name) => Ok(name.clone()),
            None => crate::auth::node_server_name(peer)
                .ok_or_else(|| TlsError::ServerName(crate::auth::node_dns_name(peer))),
        }
    }
}

fn open(path: &Path) -> Result<BufReader<File>, TlsError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Missing {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut open(path)?)
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::Missing {
            path: path.to_owned(),
            what: "private key",
        })
}
