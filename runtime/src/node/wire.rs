//! What travels between nodes on the transport: one envelope for every protocol, so the single
//! connection a pair of nodes shares (both directions) carries every Raft group and gossip.

use super::transfer::{SnapshotAck, SnapshotChunk};
use conclave_core::{raft, swim};
use serde::{Deserialize, Serialize};

/// A message between two nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireMessage {
    /// A Raft message; it names its group. Nodes send [`WireMessage::RaftFrame`]s; a single
    /// message is still heard (as a frame of one).
    Raft(raft::Message),
    /// A SWIM gossip frame (probe, ack, ping-req, join, ... with piggybacked rumors), for the
    /// node's gossip actor.
    Swim(swim::Message),
    /// Everything one drain of a Raft worker sends to this peer: every group's messages,
    /// coalesced heartbeats and their answers, and wake-up requests
    /// ([`conclave_core::raft::Frame`]); for the workers of its groups.
    RaftFrame(raft::Frame),
    /// A piece of a snapshot, from a group's leader to a lagging follower (docs/transport.md,
    /// "Snapshot transfer"); for the node's snapshot receiver.
    SnapshotChunk(SnapshotChunk),
    /// The follower's answer to a chunk; for the node's snapshot sender.
    SnapshotAck(SnapshotAck),
    /// The members the sender's logs name, so that a node lagging behind a membership change
    /// admits a member that change added (`node::peers`); heard from members only.
    Members(MembersNotice),
}

/// Every member the sender's groups' memberships name, those being added included.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersNotice {
    /// The members' ids.
    pub members: Vec<raft::NodeId>,
}
