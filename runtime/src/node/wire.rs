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
    /// A client's request for a shard's group, forwarded by a node that does not lead that
    /// group (`node::shards`); heard from members only.
    Forward(ForwardRequest),
    /// The answer to a [`WireMessage::Forward`], to the node that sent it.
    ForwardReply(ForwardReply),
}

/// A request for a shard's group, forwarded between nodes (`node::shards`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardRequest {
    /// The sender's id for matching the reply.
    pub id: u64,
    /// The version of the sender's shard map.
    pub map_version: u64,
    /// Its digest (`ShardMap::digest`): same version, other digest is a conflict.
    pub map_digest: u64,
    /// How many times the request was forwarded, this hop included (at most `node.max_hops`).
    pub hops: u32,
    /// The key the request routes by; the receiver checks it is the command's or query's key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// What to do.
    pub op: ForwardOp,
}

/// What a forwarded request asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardOp {
    /// A write: the state machine's command, MessagePack as the log holds it.
    Write(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A read: the query as the machine's `ShardedMachine::encode_query` wrote it, at a
    /// consistency.
    Read {
        /// The encoded query.
        #[serde(with = "serde_bytes")]
        query: Vec<u8>,
        /// Its consistency.
        consistency: crate::config::ReadLevel,
    },
}

/// The answer to a forwarded request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardReply {
    /// The request's id.
    pub id: u64,
    /// The encoded result (a write's `WriteResult`, a read's encoded output), or why not.
    pub outcome: Result<serde_bytes::ByteBuf, super::router::ForwardFailure>,
}

/// Every member the sender's groups' memberships name, those being added included.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersNotice {
    /// The members' ids.
    pub members: Vec<raft::NodeId>,
}
