//! The shard router's decisions, as plain functions (sans-IO): where a request for a shard's
//! group goes next, whether a forwarded request's shard map version lets a node serve it, and
//! which refusals of a forwarded request may be retried elsewhere. One implementation for the
//! runtime (`conclave::node::shards` carries the decisions out over its node-to-node
//! connections) and the deterministic simulator (`conclave_sim::raft::MultiWorld` in sharded
//! mode carries them out over its simulated network).
//!
//! A request for key `k` goes to shard `map.route(k)`, served by its group. The node that
//! receives it from a client serves it if it can (it hosts the group and, unless the read is
//! stale, leads it); else it forwards it over the node-to-node connection to the node it
//! believes leads the group — its own group's view when it hosts the group, else its leader
//! cache, else the shard's replicas in placement order (first = the ring's preferred leader) —
//! and tries another candidate when the answer says so, at most `node.max_hops` times.

use crate::{NodeId, ShardMap};
use conclave_core::ids::GroupId;
use serde::{Deserialize, Serialize};

/// Candidates a node that received a forwarded request tries itself (it serves, or forwards
/// once to the leader it knows); the node the client reached tries up to its hop limit
/// (`node.max_hops`).
pub const RELAY_ATTEMPTS: usize = 2;

/// What this node knows about one shard's group when routing a request for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupView<'a> {
    /// This node.
    pub me: NodeId,
    /// The shard's replicas, preferred leader first.
    pub replicas: &'a [NodeId],
    /// Whether this node hosts the group.
    pub hosted: bool,
    /// The leader as this node's replica of the group knows it (hosted groups only).
    pub local_leader: Option<NodeId>,
    /// The leader as the leader cache remembers it (any group).
    pub cached_leader: Option<NodeId>,
    /// Whether the request must be served by the leader (writes, linearizable and lease
    /// reads); a stale read can be served by any replica.
    pub needs_leader: bool,
}

/// Where a request goes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Serve it here, on this node's replica of the group.
    Local,
    /// Forward it to this node.
    Forward(NodeId),
    /// Nowhere left to try: every candidate was tried (answer "no leader", retryable).
    Exhausted,
}

/// The next step for a request, given the nodes already `tried` (this node counts as tried
/// once it served the request and was not the leader).
pub fn next_step(view: &GroupView<'_>, tried: &[NodeId]) -> Step {
    let me = view.me;
    let fresh = |n: &NodeId| *n != me && !tried.contains(n);
    if view.hosted && !tried.contains(&me) && (!view.needs_leader || view.local_leader == Some(me))
    {
        return Step::Local;
    }
    // The hosted group's own view is fresher than the cache (it follows elections); when it
    // names a node already tried (this one, refused), the cache may know better.
    let local = if view.hosted { view.local_leader } else { None };
    for l in [local, view.cached_leader].into_iter().flatten() {
        // A leader hint names a replica; anything else (a stale cache entry after a map
        // change) is not followed.
        if fresh(&l) && view.replicas.contains(&l) {
            return Step::Forward(l);
        }
    }
    if let Some(&r) = view.replicas.iter().find(|r| fresh(r)) {
        return Step::Forward(r);
    }
    Step::Exhausted
}

/// How a forwarded request's map version compares with this node's map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapCheck {
    /// Same map: serve it.
    Same,
    /// The sender's map is older: answer with this node's map, the sender retries with it.
    SenderStale,
    /// The sender's map is newer: this node is behind and cannot know where the shard is now
    /// (retryable elsewhere).
    ReceiverStale,
    /// Same version, different content: the two nodes were started with different `[ring]`
    /// configurations. Refused (not retryable: an operator must fix the configuration).
    Mismatch,
}

/// Compares a forwarded request's `(version, digest)` with `map`.
pub fn check_map(map: &ShardMap, version: u64, digest: u64) -> MapCheck {
    use std::cmp::Ordering;
    match version.cmp(&map.version()) {
        Ordering::Less => MapCheck::SenderStale,
        Ordering::Greater => MapCheck::ReceiverStale,
        Ordering::Equal if digest == map.digest() => MapCheck::Same,
        Ordering::Equal => MapCheck::Mismatch,
    }
}

/// Whether a map a peer answered with may replace `current`: newer, valid, the same shard
/// count (a change of shard count is a split, not built), and naming only `known` nodes as
/// replicas.
pub fn may_adopt(current: &ShardMap, offered: &ShardMap, known: impl Fn(NodeId) -> bool) -> bool {
    offered.version() > current.version()
        && offered.validate().is_ok()
        && offered.shard_count() == current.shard_count()
        && offered
            .entries()
            .iter()
            .all(|e| e.replicas.iter().all(|&r| known(r)))
}

/// Why a forwarded request was not served, as the serving node answers it on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardFailure {
    /// This node hosts the group but does not lead it; `leader` is who it believes does.
    #[error("not the leader of the group (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// No leader is known for the group here.
    #[error("no leader is known for the group")]
    NoLeader,
    /// This node does not host the group.
    #[error("the group is not hosted here")]
    NotHosted,
    /// The sender's map is older; here is the newer one (retry with it).
    #[error("the sender's shard map is older than version {}", map.version())]
    StaleMap {
        /// This node's map.
        map: Box<ShardMap>,
    },
    /// This node's map is older than the sender's (version `version` here).
    #[error("this node's shard map (version {version}) is older than the sender's")]
    MapBehind {
        /// This node's version.
        version: u64,
    },
    /// Same version, different content: the nodes disagree on the map.
    #[error("shard map version {version} differs between the two nodes")]
    MapMismatch {
        /// The version both claim.
        version: u64,
    },
    /// The request was forwarded more than `node.max_hops` times.
    #[error("forwarded more than the allowed number of hops")]
    HopLimit,
    /// The group's shard is not the one its key routes to (a malformed request).
    #[error("the request names group {group}, but its key belongs to group {expected}")]
    WrongGroup {
        /// The group named.
        group: GroupId,
        /// The group the key routes to.
        expected: u64,
    },
    /// The request's command or query does not decode.
    #[error("the forwarded request does not decode")]
    Undecodable,
    /// A bounded queue on the serving node is full.
    #[error("the serving node is overloaded")]
    Overloaded,
    /// The request did not complete in time (a write may still apply).
    #[error("the request timed out on the serving node")]
    Timeout,
    /// A write lost to a leader change before it committed.
    #[error("the write was lost to a leader change")]
    Dropped,
    /// The serving node refused it before it started (shutting down, storage stalled or
    /// failed).
    #[error("the serving node cannot serve requests now")]
    Unavailable,
    /// The payload is larger than the serving node accepts.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The payload size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The serving node failed inside (state machine, encoding).
    #[error("the serving node failed to serve the request")]
    Internal,
}

impl ForwardFailure {
    /// Whether the request certainly did not take effect and another candidate may be tried.
    pub fn try_elsewhere(&self) -> bool {
        matches!(
            self,
            ForwardFailure::NotLeader { .. }
                | ForwardFailure::NoLeader
                | ForwardFailure::NotHosted
                | ForwardFailure::MapBehind { .. }
                | ForwardFailure::Unavailable
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{Ring, RingConfig, DEFAULT_WEIGHT};

    fn view(replicas: &[NodeId]) -> GroupView<'_> {
        GroupView {
            me: NodeId::new(1),
            replicas,
            hosted: false,
            local_leader: None,
            cached_leader: None,
            needs_leader: true,
        }
    }

    #[test]
    fn a_leader_or_a_stale_read_is_served_here() {
        let r = [1, 2, 3].map(NodeId::new);
        let leader = GroupView {
            hosted: true,
            local_leader: Some(NodeId::new(1)),
            ..view(&r)
        };
        assert_eq!(next_step(&leader, &[]), Step::Local);
        let follower_stale = GroupView {
            hosted: true,
            local_leader: Some(NodeId::new(2)),
            needs_leader: false,
            ..view(&r)
        };
        assert_eq!(next_step(&follower_stale, &[]), Step::Local);
        // A follower forwards to the leader its group knows, over the cache's older belief.
        let follower = GroupView {
            hosted: true,
            local_leader: Some(NodeId::new(3)),
            cached_leader: Some(NodeId::new(2)),
            ..view(&r)
        };
        assert_eq!(next_step(&follower, &[]), Step::Forward(NodeId::new(3)));
    }

    #[test]
    fn a_node_without_the_group_asks_the_cache_then_the_replicas_in_order() {
        let r = [4, 2, 3].map(NodeId::new);
        assert_eq!(next_step(&view(&r), &[]), Step::Forward(NodeId::new(4)));
        let cached = GroupView {
            cached_leader: Some(NodeId::new(3)),
            ..view(&r)
        };
        assert_eq!(next_step(&cached, &[]), Step::Forward(NodeId::new(3)));
        assert_eq!(
            next_step(&cached, &[NodeId::new(3)]),
            Step::Forward(NodeId::new(4))
        );
        assert_eq!(
            next_step(&cached, &[NodeId::new(3), NodeId::new(4)]),
            Step::Forward(NodeId::new(2))
        );
        assert_eq!(
            next_step(&cached, &[NodeId::new(3), NodeId::new(4), NodeId::new(2)]),
            Step::Exhausted
        );
        // A cached leader that is no replica (a map changed under it) is not followed.
        let foreign = GroupView {
            cached_leader: Some(NodeId::new(9)),
            ..view(&r)
        };
        assert_eq!(next_step(&foreign, &[]), Step::Forward(NodeId::new(4)));
    }

    #[test]
    fn a_hosted_group_without_a_known_leader_asks_the_other_replicas() {
        let r = [1, 2, 3].map(NodeId::new);
        let v = GroupView {
            hosted: true,
            ..view(&r)
        };
        assert_eq!(next_step(&v, &[]), Step::Forward(NodeId::new(2)));
        assert_eq!(
            next_step(&v, &[NodeId::new(2), NodeId::new(3)]),
            Step::Exhausted
        );
        // Tried locally and refused: never served here twice, never forwarded to itself.
        let me_leader = GroupView {
            hosted: true,
            local_leader: Some(NodeId::new(1)),
            ..view(&r)
        };
        assert_eq!(
            next_step(&me_leader, &[NodeId::new(1)]),
            Step::Forward(NodeId::new(2))
        );
        // ... and when its own view is that stale, the leader cache is asked first.
        let cached = GroupView {
            cached_leader: Some(NodeId::new(3)),
            ..me_leader
        };
        assert_eq!(
            next_step(&cached, &[NodeId::new(1)]),
            Step::Forward(NodeId::new(3))
        );
    }

    fn map(nodes: u64, shards: u64) -> ShardMap {
        let config = RingConfig {
            shards,
            ..RingConfig::default()
        };
        let ring = Ring::with_nodes(
            config,
            (1..=nodes).map(NodeId::new).map(|n| (n, DEFAULT_WEIGHT)),
        )
        .unwrap();
        ShardMap::bootstrap(ring.placement()).unwrap()
    }

    #[test]
    fn map_versions_and_digests_decide_who_is_stale() {
        let m = map(3, 8);
        assert_eq!(check_map(&m, 1, m.digest()), MapCheck::Same);
        assert_eq!(check_map(&m, 0, 0), MapCheck::SenderStale);
        assert_eq!(check_map(&m, 2, 0), MapCheck::ReceiverStale);
        assert_eq!(check_map(&m, 1, m.digest() ^ 1), MapCheck::Mismatch);
        assert_eq!(check_map(&m, 1, map(4, 8).digest()), MapCheck::Mismatch);
    }

    #[test]
    fn only_newer_valid_maps_of_known_nodes_are_adopted() {
        let m = map(3, 8);
        let newer: ShardMap = {
            let json =
                serde_json::to_string(&m)
                    .unwrap()
                    .replacen("\"version\":1", "\"version\":2", 1);
            serde_json::from_str(&json).unwrap()
        };
        let known = |n: NodeId| (1..=3).contains(&n.get());
        assert!(may_adopt(&m, &newer, known));
        assert!(!may_adopt(&newer, &m, known), "older");
        assert!(!may_adopt(&m, &m, known), "same version");
        assert!(
            !may_adopt(&m, &newer, |n| n != NodeId::new(2)),
            "unknown replica"
        );
        let other_count: ShardMap = {
            let json = serde_json::to_string(&map(3, 4)).unwrap().replacen(
                "\"version\":1",
                "\"version\":2",
                1,
            );
            serde_json::from_str(&json).unwrap()
        };
        assert!(!may_adopt(&m, &other_count, known), "shard count");
    }

    #[test]
    fn only_failures_that_certainly_did_not_apply_are_tried_elsewhere() {
        assert!(ForwardFailure::NotLeader { leader: None }.try_elsewhere());
        assert!(ForwardFailure::NotHosted.try_elsewhere());
        assert!(!ForwardFailure::Timeout.try_elsewhere());
        assert!(!ForwardFailure::MapMismatch { version: 1 }.try_elsewhere());
        assert!(!ForwardFailure::HopLimit.try_elsewhere());
    }
}
