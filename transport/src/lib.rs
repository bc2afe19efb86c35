//! `conclave-transport`: typed messages between nodes as length-prefixed MessagePack frames
//! over TCP (optionally mutual TLS), with one bounded outbound queue per peer and backpressure.
//! Generic over the message type; knows nothing of Raft.
//!
//! - [`codec`]: `u32` big-endian length prefix + MessagePack body, `max_frame_size` enforced on
//!   both sides; a zero-length frame is a keep-alive.
//! - [`handshake`]: magic, protocol version, cluster id and node id, both ways, with a timeout;
//!   peers are authenticated ([`auth`]): an allowlist of member ids, a cluster-secret
//!   challenge-response, and with TLS a certificate that must name the claimed node id.
//! - [`Transport`]: the TCP/TLS implementation. One [`PeerLink`] per remote node: a bounded
//!   queue that senders encode into, drained by a driver task that writes everything queued as
//!   one batch and reconnects with capped, fully jittered exponential backoff. Inbound frames go
//!   to a bounded [`Inbound`] sink, the messages of each socket read as one batch
//!   ([`inbound()`]); when it is full the connection's reader stops reading the
//!   socket, so TCP flow control pushes back on the sender (writes on the same connection go
//!   on: they run in another task).
//! - [`mem`]: an in-memory network with the same [`Endpoint`] interface and seeded fault
//!   injection (drop, delay, duplicate, partition) for tests without sockets.
//! - [`metrics`]: counter names (recorded through the `metrics` facade).
//! - [`shared_bytes`]: `bytes::Bytes` message fields decoded as views into the read buffer
//!   (no allocation or copy per payload).
//!
//! Connection topology: **one TCP connection per pair of nodes, carrying both directions**, and
//! every message type (all Raft groups, gossip) shares it. A node dials a peer when it holds a
//! link to it and the pair has no connection; a node without a link only accepts, and answers
//! over the accepted connection once it asks for a link. When both dial at once, the handshake
//! settles it before any frame is written: the connection dialled by the lower node id is kept
//! on both sides and the other is refused (status `Simultaneous`); a dial that meets an
//! established connection asks the dialer whether that one is stale (status `Alive`) and
//! replaces it only if so. [`Transport::connection_count`] shows the result. Rules and delivery
//! guarantees: `docs/transport.md`.

pub mod auth;
pub mod codec;
pub mod config;
pub mod handshake;
pub mod inbound;
mod link;
pub mod mem;
pub mod metrics;
pub mod shared_bytes;
mod tcp;
mod tls;

use std::net::SocketAddr;

pub use auth::ClusterSecret;
pub use codec::{CodecError, Frame, FrameDecoder};
pub use config::{ConfigError, TlsConfig, TransportConfig};
pub use handshake::{HandshakeError, Refusal};
pub use inbound::{inbound, Inbound, InboundBatch, InboundReceiver};
pub use link::{PeerLink, SendError, Sending, TrySendError};
pub use mem::{Faults, MemEndpoint, MemNetwork, MemStats};
pub use tcp::{ConnectionLost, Transport, TransportError};
pub use tls::TlsError;

/// Identifies a node of the cluster: the workspace's one definition, in `conclave-core`.
pub use conclave_core::ids::NodeId;

/// The interface shared by the TCP [`Transport`] and the in-memory [`MemEndpoint`], so actors
/// can be written once and tested without sockets.
pub trait Endpoint<M>: Send + Sync {
    /// This node's id.
    fn node_id(&self) -> NodeId;
    /// The link to `node` at `addr`, created on first use and cached afterwards (the in-memory
    /// network ignores `addr`). If `addr` differs from the one given before, the cached link
    /// (and its queue) is kept and the new address is used for the next dial; a live
    /// connection to `node` is kept as it is (the handshake proved it is `node`).
    fn peer(&self, node: NodeId, addr: SocketAddr) -> PeerLink<M>;
    /// Forgets the link to `node`; its writer stops once every clone of the link is dropped.
    fn remove_peer(&self, node: NodeId);
    /// A link to `node` over a connection it opened to this node, for answering a peer whose
    /// address this node does not know (see [`Transport::connected_link`]). `None` when there
    /// is no such connection, and always on endpoints that cannot answer without an address.
    fn connected_link(&self, node: NodeId) -> Option<PeerLink<M>> {
        let _ = node;
        None
    }
}
