//! The identifiers every layer of conclave shares, defined once here: the Raft core and the
//! SWIM core use them, and `conclave-ring`, `conclave-transport` and the node re-export them,
//! so a node id is the same type from the wire to the HTTP API.
//!
//! They are plain integers today; making them newtypes (so a group id cannot be passed where a
//! node id is expected) changes these three lines and every place that builds one from an
//! integer literal or does arithmetic on one.

/// A node's identity, unique within a cluster. `0` is never a valid node id.
pub type NodeId = u64;
/// A Raft group's identity. Group `0` is the cluster's first group.
pub type GroupId = u64;
/// A shard's identity; also the id of the Raft group that replicates it.
pub type ShardId = u64;
