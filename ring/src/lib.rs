//! `conclave-ring`: virtual-node consistent hashing that maps keys to shards and shards to
//! ordered replica sets of nodes. Pure: no I/O, no async.
//!
//! # Model
//!
//! * A key belongs to one of a fixed number of shards (pre-sharding; default 64):
//!   `shard = (xxh3_64(key) × shards) >> 64`. See [`hash`] for the exact, stable functions.
//! * Each shard (served by Raft group `shard + 1`, see [`ShardMap`]) has an ordered replica set of `replication_factor`
//!   distinct nodes (default 3; every node if there are fewer). The first replica is the
//!   preferred leader.
//! * Nodes sit on a consistent hash ring with virtual nodes (default 150 per node of
//!   weight [`DEFAULT_WEIGHT`]), built with the `consistent_hash_ring` crate. For each
//!   shard the ring yields a preference order over all nodes.
//! * [`PlacementStrategy::ConsistentHash`] takes the first `replication_factor` nodes of
//!   that order. [`PlacementStrategy::BoundedLoad`] (default) caps every node at
//!   `ceil` of its weighted share of replica slots and otherwise follows the same
//!   preference order; with few shards per node this is what keeps replica counts even
//!   (docs/ring.md has the measurements).
//!
//! # Guarantees (checked by property tests)
//!
//! * replicas are distinct and number `min(replication_factor, nodes)`;
//! * removing a node changes only the shards it held, each by exactly that node leaving
//!   and (if enough nodes remain) one node joining;
//! * a shard's first replica changes only if the change concerns that replica (its node
//!   is removed, or the added node takes its place);
//! * adding a node (equal weights, bounded-load strategy) moves only slots onto the new
//!   node, at most `max(floor(1.25 × ideal), ceil(ideal))` of them; with uneven weights a
//!   rare extra move keeps old nodes under their caps (see [`Ring::add_node`]);
//! * bounded-load placements keep every node within `ceil` of its weighted share of
//!   replica slots (after builds, additions, reweights and [`Ring::rebalance`]).
//!
//! Bounded-load placements depend on the order of membership changes, so the shard map
//! is state to replicate (hence serde), not something each node recomputes.
//!
//! # Example
//!
//! ```
//! use conclave_ring::{NodeId, Ring, RingConfig, DEFAULT_WEIGHT};
//!
//! let nodes = (1..=5).map(|n| (NodeId::new(n), DEFAULT_WEIGHT));
//! let mut ring = Ring::with_nodes(RingConfig::default(), nodes)?;
//! let route = ring.route(b"user:42");
//! assert_eq!(route.replicas.len(), 3);
//! let plan = ring.add_node(NodeId::new(6), DEFAULT_WEIGHT)?;
//! assert!(plan.changes.iter().all(|c| c.added == vec![NodeId::new(6)]));
//! # Ok::<(), conclave_ring::RingError>(())
//! ```

pub mod hash;
pub mod leader_balance;
mod placement;
mod ring;
pub mod router;
pub mod shard_map;

pub use placement::{diff, Placement, PlacementDiff, ShardChange};
pub use ring::{
    NodeEntry, PlacementStrategy, Ring, RingConfig, Route, DEFAULT_WEIGHT, MAX_REPLICATION_FACTOR,
    MAX_SHARDS, MAX_VNODES, MAX_VNODES_PER_NODE,
};
pub use shard_map::{
    group_of_shard, shard_of_group, ShardEntry, ShardMap, ShardMapChangeError, ShardMapError,
};

/// A node's and a shard's identity (shard `s` is replicated by Raft group `s + 1`,
/// [`group_of_shard`]): the workspace's one definition, in `conclave-core`.
pub use conclave_core::ids::{NodeId, ShardId};

/// Everything that can go wrong with a ring operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// A [`RingConfig`] field is out of range.
    #[error("invalid ring config: `{field}` must be in 1..={max}")]
    InvalidConfig {
        /// The offending field's name.
        field: &'static str,
        /// The field's largest accepted value (the smallest is 1).
        max: u64,
    },
    /// The node being added is already a member.
    #[error("node {0} is already a member of the ring")]
    NodeExists(NodeId),
    /// The node is not a member.
    #[error("node {0} is not a member of the ring")]
    UnknownNode(NodeId),
    /// A node weight is unusable.
    #[error("invalid weight {weight} for node {node}: {reason}")]
    InvalidWeight {
        /// The node.
        node: NodeId,
        /// The rejected weight.
        weight: u32,
        /// Why.
        reason: &'static str,
    },
    /// A shard id outside `0..shards`.
    #[error("shard {shard} does not exist (the ring has {shards} shards)")]
    UnknownShard {
        /// The requested shard.
        shard: ShardId,
        /// How many shards the ring has.
        shards: u64,
    },
    /// Two placements (or a placement and a config) disagree on the shard count.
    #[error("shard counts differ: {left} vs {right}")]
    ShardCountMismatch {
        /// Shard count of the first operand.
        left: usize,
        /// Shard count of the second operand.
        right: usize,
    },
    /// A deserialised placement is not valid for the ring's membership.
    #[error("invalid placement for shard {shard}: {fault}")]
    InvalidPlacement {
        /// The first bad shard.
        shard: ShardId,
        /// What is wrong with its replica list.
        fault: PlacementFault,
    },
}

/// What is wrong with one shard's replica list in a deserialised placement
/// ([`RingError::InvalidPlacement`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementFault {
    /// The list's length is not the ring's effective replication factor.
    #[error("{got} replicas, expected {expected}")]
    ReplicaCount {
        /// Replicas listed.
        got: usize,
        /// The ring's effective replication factor.
        expected: usize,
    },
    /// A listed replica is not a member of the ring.
    #[error("node {0} is not a member")]
    NotAMember(NodeId),
    /// A replica is listed twice.
    #[error("node {0} appears twice")]
    Duplicate(NodeId),
}
