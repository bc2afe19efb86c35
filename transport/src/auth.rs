//! Peer authentication: the cluster secret's challenge-response and the binding of a TLS
//! certificate to a node id.
//!
//! - **Cluster secret** (`[cluster] secret`): both hellos carry a fresh 16-byte nonce; each side
//!   proves it knows the secret with `HMAC-SHA256(secret, context)` over a context that names its
//!   role, the cluster, both node ids and both nonces. The secret never crosses the wire, a
//!   proof is only valid for the nonce the other side just chose (no replay), and the role byte
//!   keeps a proof from being reflected back to its author.
//! - **Certificates**: a node's certificate names its id as the DNS subject alternative name
//!   `node-{id}.conclave` ([`node_server_name`]); a TLS peer whose certificate does not name the
//!   id it claims in the hello is refused ([`cert_names_node`]).

use std::fmt;

use ring::hmac;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::NodeId;

/// Length of a handshake nonce.
pub const NONCE_LEN: usize = 16;
/// Length of a proof (HMAC-SHA256).
pub const PROOF_LEN: usize = 32;
/// Shortest secret accepted (bytes): 128 bits, what a random 32-hex-digit string carries.
pub const MIN_SECRET_LEN: usize = 16;

/// The role a proof is made for: the acceptor and the dialer prove different things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that accepted the TCP connection.
    Acceptor,
    /// The side that dialled.
    Dialer,
}

/// A shared cluster secret. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Vec<u8>);

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// A secret from its bytes (the UTF-8 of the configured string).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty (config validation refuses that).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The proof `role` sends in the handshake described by `t`.
    pub fn prove(&self, role: Role, t: &Transcript<'_>) -> [u8; PROOF_LEN] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let tag = hmac::sign(&key, &t.context(role));
        let mut out = [0u8; PROOF_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Whether `proof` is the one `role` must send (constant-time comparison).
    pub fn verify(&self, proof: &[u8; PROOF_LEN], role: Role, t: &Transcript<'_>) -> bool {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        hmac::verify(&key, &t.context(role), proof).is_ok()
    }
}

/// What a proof covers: the cluster, both node ids and both nonces of one handshake.
#[derive(Debug, Clone, Copy)]
pub struct Transcript<'a> {
    /// The cluster id.
    pub cluster_id: &'a str,
    /// The accepting node.
    pub acceptor: NodeId,
    /// The dialling node.
    pub dialer: NodeId,
    /// The acceptor's nonce: the dialer's proof covers it.
    pub acceptor_nonce: &'a [u8; NONCE_LEN],
    /// The dialer's nonce: the acceptor's proof covers it.
    pub dialer_nonce: &'a [u8; NONCE_LEN],
}

impl Transcript<'_> {
    fn context(&self, role: Role) -> Vec<u8> {
        let mut ctx = Vec::with_capacity(96 + self.cluster_id.len());
        ctx.extend_from_slice(b"conclave transport handshake v3\0");
        ctx.push(match role {
            Role::Acceptor => b'A',
            Role::Dialer => b'D',
        });
        ctx.extend_from_slice(&(self.cluster_id.len() as u64).to_be_bytes());
        ctx.extend_from_slice(self.cluster_id.as_bytes());
        ctx.extend_from_slice(&self.acceptor.get().to_be_bytes());
        ctx.extend_from_slice(&self.dialer.get().to_be_bytes());
        ctx.extend_from_slice(self.acceptor_nonce);
        ctx.extend_from_slice(self.dialer_nonce);
        ctx
    }
}

/// The DNS name a node's certificate carries: `node-{id}.conclave`.
pub fn node_dns_name(id: NodeId) -> String {
    format!("node-{id}.conclave")
}

/// [`node_dns_name`] as a rustls server name (always valid: digits, letters, dots and a dash).
pub fn node_server_name(id: NodeId) -> Option<ServerName<'static>> {
    ServerName::try_from(node_dns_name(id)).ok()
}

/// Whether the end-entity certificate `cert` names node `id` (DNS SAN `node-{id}.conclave`).
/// The chain itself is checked by rustls during the TLS handshake; this only binds the name.
pub fn cert_names_node(cert: &CertificateDer<'_>, id: NodeId) -> bool {
    let Some(name) = node_server_name(id) else {
        return false;
    };
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(cert) else {
        return false;
    };
    rustls::client::verify_server_name(&parsed, &name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_role_ids_nonces_and_secret() {
        let s = ClusterSecret::new("0123456789abcdef0123");
        let (na, nd) = ([1u8; NONCE_LEN], [2u8; NONCE_LEN]);
        let t = Transcript {
            cluster_id: "c",
            acceptor: NodeId::new(1),
            dialer: NodeId::new(2),
            acceptor_nonce: &na,
            dialer_nonce: &nd,
        };
        let p = s.prove(Role::Dialer, &t);
        assert!(s.verify(&p, Role::Dialer, &t));
        // Any change of the context invalidates it.
        assert!(!s.verify(&p, Role::Acceptor, &t));
        assert!(!s.verify(
            &p,
            Role::Dialer,
            &Transcript {
                cluster_id: "d",
                ..t
            }
        ));
        assert!(!s.verify(
            &p,
            Role::Dialer,
            &Transcript {
                dialer: NodeId::new(3),
                ..t
            }
        ));
        assert!(!s.verify(
            &p,
            Role::Dialer,
            &Transcript {
                acceptor_nonce: &nd,
                ..t
            }
        ));
        let other = ClusterSecret::new("0123456789abcdef0124");
        assert!(!other.verify(&p, Role::Dialer, &t));
        assert_eq!(format!("{s:?}"), "ClusterSecret(..)");
    }
}
