//! Transport configuration, with the defaults of DESIGN.md §9 (`[node]` and `[tls]` sections).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::{ClusterSecret, MIN_SECRET_LEN};
use crate::codec::DEFAULT_MAX_FRAME_SIZE;
use crate::handshake::MAX_CLUSTER_ID_LEN;
use crate::NodeId;

/// Everything a [`Transport`](crate::Transport) needs to know.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// This node's id, sent in every handshake.
    pub node_id: NodeId,
    /// The cluster id; peers with another one are refused.
    pub cluster_id: String,
    /// Address to listen on (port 0 picks a free port, see [`Transport::bind`](crate::Transport::bind)).
    pub listen: SocketAddr,
    /// Largest accepted frame body, in bytes, both directions.
    pub max_frame_size: usize,
    /// Capacity of each peer's outbound queue, in messages.
    pub max_queue_size: usize,
    /// Capacity of each peer's outbound queue, in encoded bytes (at least one largest frame).
    pub max_queue_bytes: usize,
    /// A write to a peer that makes no progress for this long closes the connection (counted
    /// in `conclave_transport_write_timeouts_total`); the driver reconnects.
    pub write_timeout: Duration,
    /// An inbound connection that delivers nothing (not even a keep-alive) for this long is closed.
    pub read_timeout: Duration,
    /// An idle outbound connection sends a keep-alive frame this often; keep it well under the
    /// peer's `read_timeout`.
    pub keepalive_interval: Duration,
    /// Time allowed for TLS plus the hello exchange on a new connection.
    pub handshake_timeout: Duration,
    /// Time allowed for a TCP connect.
    pub connect_timeout: Duration,
    /// First reconnect delay bound; doubles per failed attempt (full jitter: a uniform draw in
    /// `[0, bound]`).
    pub backoff_base: Duration,
    /// Upper bound of the reconnect delay.
    pub backoff_cap: Duration,
    /// Authenticated accepted connections beyond this many are closed at once. Only members
    /// that completed the handshake hold one (one per pair of nodes).
    pub max_connections: usize,
    /// Sockets accepted but not yet authenticated (TLS and hello under way) beyond this many are
    /// closed at once; each has `handshake_timeout` to finish.
    pub max_pending_handshakes: usize,
    /// Node ids allowed to connect (the members of the cluster's configuration, plus a node
    /// being added); `None` admits any id. Updated at runtime with
    /// [`Transport::set_allowed_peers`](crate::Transport::set_allowed_peers).
    pub allowed_peers: Option<BTreeSet<NodeId>>,
    /// The cluster secret peers prove they know (HMAC challenge-response in the handshake);
    /// `None` skips it. Both sides of a connection must agree on having one.
    pub secret: Option<ClusterSecret>,
    /// Largest single write call: a batch (everything queued when the driver took it) is
    /// written in calls of at most this many bytes.
    pub max_batch_bytes: usize,
    /// Mutual TLS; `None` means plain TCP.
    pub tls: Option<TlsConfig>,
}

/// `[tls]`: PEM files for mutual TLS. Every node presents `cert` (signed by `ca`) and accepts
/// only peers whose certificate chains to `ca`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// This node's certificate chain (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM, PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The cluster CA certificate(s) (PEM).
    pub ca: PathBuf,
    /// The DNS name every peer certificate must carry when dialled (TLS server name check).
    /// `None` checks `node-{id}.conclave` of the node dialled. Either way, the certificate of
    /// every peer, dialled or accepted, must name the node id it claims as the DNS subject
    /// alternative name `node-{id}.conclave`.
    pub server_name: Option<String>,
}

/// Errors of configuration validation; each names the offending key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A key has a value outside its valid range.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The configuration key.
        key: &'static str,
        /// The rule the value breaks (a fixed sentence per key).
        reason: &'static str,
    },
}

impl TransportConfig {
    /// A configuration with every default: 64 KiB frames, 5000-message and 64 MiB queues, 10 s
    /// read and write timeouts, 3 s keep-alive, 2 s handshake and 5 s connect timeouts, 16
    /// pending handshakes, backoff 100 ms doubling to 10 s, no allowlist and no secret.
    pub fn new(node_id: NodeId, cluster_id: impl Into<String>, listen: SocketAddr) -> Self {
        Self {
            node_id,
            cluster_id: cluster_id.into(),
            listen,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_queue_size: 5000,
            max_queue_bytes: 64 << 20,
            write_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(10),
            max_connections: 1024,
            max_pending_handshakes: 16,
            allowed_peers: None,
            secret: None,
            max_batch_bytes: 256 * 1024,
            tls: None,
        }
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, reason| Err(ConfigError::Invalid { key, reason });
        if self.cluster_id.is_empty() || self.cluster_id.len() > MAX_CLUSTER_ID_LEN {
            return bad("cluster_id", "must be 1..=255 bytes");
        }
        if self.max_frame_size == 0 || u32::try_from(self.max_frame_size).is_err() {
            return bad("max_frame_size", "must be in 1..=4294967295");
        }
        if self.max_queue_size == 0 {
            return bad("max_queue_size", "must be at least 1");
        }
        if self.max_queue_bytes < self.max_frame_size.saturating_add(4) {
            return bad(
                "max_queue_bytes",
                "must hold at least one largest frame (max_frame_size + 4)",
            );
        }
        if self.write_timeout.is_zero() {
            return bad("write_timeout", "must be positive");
        }
        if self.max_pending_handshakes == 0 {
            return bad("max_pending_handshakes", "must be at least 1");
        }
        if self
            .secret
            .as_ref()
            .is_some_and(|s| s.len() < MIN_SECRET_LEN)
        {
            return bad("secret", "must be at least 16 bytes");
        }
        if self.read_timeout.is_zero() {
            return bad("read_timeout", "must be positive");
        }
        if self.keepalive_interval.is_zero() || self.keepalive_interval >= self.read_timeout {
            return bad(
                "keepalive_interval",
                "must be positive and below read_timeout",
            );
        }
        if self.handshake_timeout.is_zero() {
            return bad("handshake_timeout", "must be positive");
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout", "must be positive");
        }
        if self.backoff_base.is_zero() || self.backoff_cap < self.backoff_base {
            return bad("backoff_base", "must be positive and at most backoff_cap");
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1");
        }
        if self.max_batch_bytes == 0 {
            return bad("max_batch_bytes", "must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        let cfg = TransportConfig::new(NodeId::new(1), "c", "127.0.0.1:0".parse().unwrap());
        assert_eq!(cfg.validate(), Ok(()));
        assert_eq!(cfg.max_queue_size, 5000);
        let mut bad = cfg.clone();
        bad.keepalive_interval = bad.read_timeout;
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::Invalid {
                key: "keepalive_interval",
                ..
            })
        ));
        let mut bad = cfg.clone();
        bad.cluster_id = String::new();
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::Invalid {
                key: "cluster_id",
                ..
            })
        ));
        let mut bad = cfg;
        bad.max_queue_size = 0;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_queue_size"));
    }
}
