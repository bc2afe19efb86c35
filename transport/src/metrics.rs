//! Counter names, recorded through the `metrics` facade (DESIGN.md §8). Every counter carries a
//! `node` label (this node) and, where known, `peer` (the remote node id, or `unknown` before a
//! handshake names it). Handles are resolved once per link, not per frame.

use metrics::Counter;

use crate::NodeId;

/// Frames sent and received; labels `node`, `peer`, `direction` (`in` / `out`).
pub const FRAMES_TOTAL: &str = "conclave_transport_frames_total";
/// Bytes sent and received, prefixes included; labels `node`, `peer`, `direction`.
pub const BYTES_TOTAL: &str = "conclave_transport_bytes_total";
/// `try_send` calls refused because the peer's queue was full; labels `node`, `peer`.
pub const QUEUE_FULL_TOTAL: &str = "conclave_transport_queue_full_total";
/// Handshakes refused, by either side; labels `node`, `peer`, `reason`.
pub const HANDSHAKE_REFUSED_TOTAL: &str = "conclave_transport_handshake_refused_total";
/// Connections closed for a bad frame after the handshake; labels `node`, `peer`, `reason`
/// (`frame_too_large`, `undecodable_body`, `trailing_bytes`, `truncated`).
pub const DECODE_ERRORS_TOTAL: &str = "conclave_transport_decode_errors_total";
/// Inbound connections closed because the peer went silent; labels `node`, `peer`.
pub const READ_TIMEOUTS_TOTAL: &str = "conclave_transport_read_timeouts_total";
/// Connection attempts after the first one to a peer; labels `node`, `peer`.
pub const RECONNECTS_TOTAL: &str = "conclave_transport_reconnects_total";
/// Frames that were taken off the queue but lost because the connection broke mid-write;
/// labels `node`, `peer`.
pub const FRAMES_LOST_TOTAL: &str = "conclave_transport_frames_lost_total";

/// Connections that completed a handshake and became the pair's connection; labels `node`,
/// `peer`, `side` (`dialed` / `accepted`).
pub const CONNECTIONS_TOTAL: &str = "conclave_transport_connections_total";
/// Dials that met another connection of the same pair and were settled by the handshake;
/// labels `node`, `peer`, `resolution`: `ours_wins` / `peer_wins` (both dialled at once: the
/// lower node id's connection is kept), `kept_existing` (the dialer already used our
/// connection), `replaced_stale` (the dialer had none: ours was stale and is replaced).
pub const DIAL_CONFLICTS_TOTAL: &str = "conclave_transport_dial_conflicts_total";

/// The label value for a peer whose id is not known yet.
pub const UNKNOWN_PEER: &str = "unknown";

pub(crate) fn peer_label(peer: Option<NodeId>) -> String {
    peer.map_or_else(|| UNKNOWN_PEER.to_owned(), |p| p.to_string())
}

/// Writes that made no progress for `write_timeout` (the connection was closed).
pub const WRITE_TIMEOUTS_TOTAL: &str = "conclave_transport_write_timeouts_total";

pub(crate) fn write_timeout(node: NodeId, peer: NodeId) {
    metrics::counter!(WRITE_TIMEOUTS_TOTAL, "node" => node.to_string(), "peer" => peer.to_string())
        .increment(1);
}

/// Counter handles of one direction of one peer, resolved once.
#[derive(Clone)]
pub(crate) struct FlowCounters {
    pub frames: Counter,
    pub bytes: Counter,
}

impl FlowCounters {
    pub fn new(node: NodeId, peer: NodeId, direction: &'static str) -> Self {
        let labels = [
            ("node", node.to_string()),
            ("peer", peer.to_string()),
            ("direction", direction.to_owned()),
        ];
        Self {
            frames: metrics::counter!(FRAMES_TOTAL, &labels),
            bytes: metrics::counter!(BYTES_TOTAL, &labels),
        }
    }
}

pub(crate) fn queue_full(node: NodeId, peer: NodeId) -> Counter {
    metrics::counter!(QUEUE_FULL_TOTAL, "node" => node.to_string(), "peer" => peer.to_string())
}

pub(crate) fn handshake_refused(node: NodeId, peer: Option<NodeId>, reason: &'static str) {
    metrics::counter!(
        HANDSHAKE_REFUSED_TOTAL,
        "node" => node.to_string(),
        "peer" => peer_label(peer),
        "reason" => reason
    )
    .increment(1);
}

pub(crate) fn decode_error(node: NodeId, peer: Option<NodeId>, reason: &'static str) {
    metrics::counter!(
        DECODE_ERRORS_TOTAL,
        "node" => node.to_string(),
        "peer" => peer_label(peer),
        "reason" => reason
    )
    .increment(1);
}

pub(crate) fn read_timeout(node: NodeId, peer: NodeId) {
    metrics::counter!(READ_TIMEOUTS_TOTAL, "node" => node.to_string(), "peer" => peer.to_string())
        .increment(1);
}

pub(crate) fn reconnect(node: NodeId, peer: NodeId) {
    metrics::counter!(RECONNECTS_TOTAL, "node" => node.to_string(), "peer" => peer.to_string())
        .increment(1);
}

pub(crate) fn frames_lost(node: NodeId, peer: NodeId, n: u64) {
    metrics::counter!(FRAMES_LOST_TOTAL, "node" => node.to_string(), "peer" => peer.to_string())
        .increment(n);
}

pub(crate) fn connection_opened(node: NodeId, peer: NodeId, side: &'static str) {
    metrics::counter!(
        CONNECTIONS_TOTAL,
        "node" => node.to_string(),
        "peer" => peer.to_string(),
        "side" => side
    )
    .increment(1);
}

pub(crate) fn dial_conflict(node: NodeId, peer: NodeId, resolution: &'static str) {
    metrics::counter!(
        DIAL_CONFLICTS_TOTAL,
        "node" => node.to_string(),
        "peer" => peer.to_string(),
        "resolution" => resolution
    )
    .increment(1);
}
