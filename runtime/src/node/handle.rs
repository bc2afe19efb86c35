//! The node's request interface: what the HTTP API, the CLI's in-process uses and embedding
//! applications call. Every call is asynchronous and bounded: a full mailbox is reported as
//! [`RequestError::Overloaded`] (HTTP 503 + Retry-After), never queued without bound.

use crate::config::ReadLevel;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// A Raft group's id.
pub type GroupId = u64;
/// A node's id.
pub type NodeId = u64;

/// Where the leader is, so a follower can forward a request to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderHint {
    /// The leader's node id.
    pub id: NodeId,
    /// The leader's HTTP address.
    pub http: SocketAddr,
}

/// How a request failed. Each variant maps to one HTTP status (DESIGN.md §7).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// This node is not the leader; forward to `leader` if known (else 503).
    #[error("not the leader")]
    NotLeader {
        /// The leader, when this node knows it.
        leader: Option<LeaderHint>,
    },
    /// No leader is known right now (election in progress, no quorum): 503 + Retry-After.
    #[error("no leader is known for group {group}")]
    NoLeader {
        /// The group.
        group: GroupId,
    },
    /// A bounded queue on the request path is full: 503 + Retry-After.
    #[error("the node is overloaded, retry later")]
    Overloaded,
    /// The request was accepted but did not complete in time: 504. A write may still apply.
    #[error("the request timed out")]
    Timeout,
    /// A write was lost to a leader change before it committed: safe to retry (503).
    #[error("the write was lost to a leader change; retry")]
    Dropped,
    /// The value or command is larger than the node accepts: 413.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The payload size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The node is shutting down: 503.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// This node's storage failed (a write could not be made durable; see `/healthz`): it
    /// refuses requests until it is restarted. 503 `storage_failed`; another node may serve.
    #[error("this node cannot persist: storage of {component} failed: {error}")]
    StorageFailed {
        /// The component that failed.
        component: String,
        /// Its error.
        error: String,
    },
    /// A storage call of this node has not returned within `[storage] stall_timeout_ms`:
    /// requests are refused before they start rather than left hanging. 503
    /// `storage_stalled`; another node may serve.
    #[error("storage of {component} has not answered for {for_ms} ms")]
    StorageStalled {
        /// The stalled component.
        component: String,
        /// How long its call has been running.
        for_ms: u64,
    },
    /// A snapshot of the group is already being taken on this node: 409
    /// `snapshot_in_progress` (retry once it finished).
    #[error("a snapshot of group {group} is already being taken on this node")]
    SnapshotInProgress {
        /// The group.
        group: GroupId,
    },
    /// A leadership transfer named a node that is not a voter of the current membership:
    /// 409 `not_a_voter`.
    #[error("node {0} is not a voter, so it cannot take leadership")]
    NotAVoter(NodeId),
    /// Something failed inside the node (storage): 500.
    #[error("internal error: {0}")]
    Internal(String),
}

impl RequestError {
    /// Whether the request certainly did not take effect, so a client may simply retry it
    /// (after finding the leader). A [`RequestError::Timeout`] is not: that write may still
    /// apply, and retrying it needs an idempotency key.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RequestError::NotLeader { .. }
                | RequestError::NoLeader { .. }
                | RequestError::Dropped
                | RequestError::Overloaded
                | RequestError::ShuttingDown
                | RequestError::StorageFailed { .. }
                | RequestError::StorageStalled { .. }
        )
    }
}

/// The outcome of a committed and applied write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult<O> {
    /// The log index the write was applied at.
    pub index: u64,
    /// The term of the leader that appended it.
    pub term: u64,
    /// What the state machine returned.
    pub output: O,
}

/// A read's consistency, as the node understands it.
pub type Consistency = ReadLevel;

/// One member as `GET /v1/cluster` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Node id.
    pub id: NodeId,
    /// Transport address.
    pub addr: SocketAddr,
    /// HTTP address.
    pub http: SocketAddr,
    /// `alive`, `suspect`, `dead` or `left`.
    pub state: String,
}

/// One replica of a group, seen from its leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// The replica's node id.
    pub id: NodeId,
    /// Highest index known replicated there.
    pub match_index: u64,
    /// Entries it is behind the leader's last index.
    pub lag: u64,
}

/// One group, as `GET /v1/cluster` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// Group id.
    pub id: GroupId,
    /// This node's role in it: `leader`, `follower`, `candidate` or `learner`.
    pub role: String,
    /// The known leader.
    pub leader_id: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// Index of this node's latest state-machine snapshot of the group (0: none); the log
    /// before it is compacted (but for `[snapshot] keep_entries`).
    #[serde(default)]
    pub snapshot_index: u64,
    /// Voters.
    pub voters: Vec<NodeId>,
    /// Learners.
    pub learners: Vec<NodeId>,
    /// Replication progress (non-empty on the leader only).
    pub replicas: Vec<ReplicaStatus>,
    /// `member`, `not_a_member` (waits to be added) or `removed`.
    #[serde(default)]
    pub membership: super::peers::MembershipState,
}

/// The body of `GET /v1/cluster` (DESIGN.md §7): top-level fields describe this node in group 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This node.
    pub node_id: NodeId,
    /// Role in group 0.
    pub role: String,
    /// Term in group 0.
    pub term: u64,
    /// Leader of group 0, `null` while unknown.
    pub leader_id: Option<NodeId>,
    /// Commit index in group 0.
    pub commit_index: u64,
    /// Applied index in group 0.
    pub applied_index: u64,
    /// Known members.
    pub members: Vec<MemberStatus>,
    /// Hosted groups.
    pub groups: Vec<GroupStatus>,
    /// The node's storage condition: `{"state":"healthy"}`, `stalled` (component, for_ms) or
    /// `failed` (component, error).
    #[serde(default)]
    pub storage: crate::storage::health::StorageCondition,
    /// This node's place in group 0's membership: `member`, `not_a_member` (a node started
    /// with `cluster.join` that waits to be added) or `removed`.
    #[serde(default)]
    pub membership: super::peers::MembershipState,
}

/// Is the node ready for traffic (`GET /readyz`)?
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// True when every hosted group knows its leader and has applied close to its commit index.
    pub ready: bool,
    /// Why not, when not ready.
    pub reasons: Vec<String>,
    /// The node's storage condition; not `healthy` makes the node not ready, and `/readyz`
    /// answers with its code (`storage_stalled`, `storage_failed`).
    #[serde(default)]
    pub storage: crate::storage::health::StorageCondition,
    /// The error code `/readyz` answers with when not ready for a reason other than storage:
    /// `not_a_member` (waits to be added to the cluster) or `removed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// What the HTTP API needs from a node running the built-in key-value machine. The node's
/// handle implements it; the HTTP layer is written against it so it can be tested on its own.
///
/// Futures need not be `Send`: actix-web runs each worker on one thread.
pub trait KvService: Clone + 'static {
    /// This node's id.
    fn node_id(&self) -> NodeId;

    /// The largest value a write may carry, in bytes (larger: 413).
    fn max_value_bytes(&self) -> usize;

    /// Proposes a write and waits until it is committed and applied here. `NotLeader` asks the
    /// caller to forward it.
    fn write(
        &self,
        command: crate::state_machine::KvCommand,
        idempotency_key: Option<String>,
    ) -> impl std::future::Future<
        Output = Result<WriteResult<crate::state_machine::KvOutput>, RequestError>,
    >;

    /// Reads a key at the given consistency. `NotLeader` asks the caller to forward it
    /// (linearizable and lease reads only; stale reads are served by any node).
    fn read(
        &self,
        key: Vec<u8>,
        consistency: Consistency,
    ) -> impl std::future::Future<Output = Result<Option<Vec<u8>>, RequestError>>;

    /// The consistency of reads that do not name one (`[raft.read] default`).
    fn default_consistency(&self) -> Consistency;

    /// The cluster as this node sees it.
    fn status(&self) -> impl std::future::Future<Output = ClusterStatus>;

    /// This node's gossip (SWIM) view of every member: `GET /v1/cluster/members`.
    fn members(&self) -> impl std::future::Future<Output = super::gossip::GossipMembers>;

    /// Readiness for `/readyz`.
    fn readiness(&self) -> impl std::future::Future<Output = Readiness>;

    /// The node's storage condition (`/healthz` fails on `failed`). Services without durable
    /// storage are always healthy.
    fn storage(&self) -> crate::storage::health::StorageCondition {
        crate::storage::health::StorageCondition::Healthy
    }

    /// The leader of group 0 as this node knows it (for forwarding).
    fn leader_hint(&self) -> Option<LeaderHint>;

    /// The ring route of a key: `(shard, replicas, leader)`.
    fn route(&self, key: &[u8]) -> (u64, Vec<NodeId>, Option<NodeId>);

    /// Prometheus text exposition of the node's metrics.
    fn render_metrics(&self) -> String;

    /// Asks this node, if it leads group 0, to hand leadership to voter `to` (thesis §3.10);
    /// `NotLeader` asks the caller to forward it. Returns once the transfer has started, not
    /// when it completes. Services that cannot transfer leadership refuse with `Internal`.
    fn transfer_leader(
        &self,
        to: NodeId,
    ) -> impl std::future::Future<Output = Result<(), RequestError>> {
        async move {
            Err(RequestError::Internal(format!(
                "this service cannot transfer leadership (to node {to})"
            )))
        }
    }

    /// Takes a snapshot of `group`'s state machine on this node now (`POST
    /// /v1/cluster/snapshot`). Services without snapshots refuse with `Internal`.
    fn take_snapshot(
        &self,
        group: u64,
    ) -> impl std::future::Future<Output = Result<super::SnapshotInfo, RequestError>> {
        async move {
            Err(RequestError::Internal(format!(
                "this service cannot take snapshots (group {group})"
            )))
        }
    }

    /// Whether this node hosts `group` (a snapshot request naming another one is a 404).
    fn has_group(&self, group: u64) -> bool {
        group == 0
    }

    /// Whether `id` is a member of the cluster (requests naming another node are refused with
    /// 400 before they reach the consensus core).
    fn is_member(&self, id: NodeId) -> bool {
        id == self.node_id()
    }
}

#[cfg(test)]
mod tests {
    use super::RequestError;

    #[test]
    fn only_requests_that_certainly_did_not_apply_are_retryable() {
        assert!(RequestError::NotLeader { leader: None }.is_retryable());
        assert!(RequestError::NoLeader { group: 0 }.is_retryable());
        assert!(RequestError::Dropped.is_retryable());
        assert!(RequestError::Overloaded.is_retryable());
        assert!(RequestError::ShuttingDown.is_retryable());
        // A timed-out write may still apply; an internal or size error will fail again.
        assert!(!RequestError::Timeout.is_retryable());
        assert!(!RequestError::Internal("disk".into()).is_retryable());
        assert!(!RequestError::TooLarge { size: 2, limit: 1 }.is_retryable());
    }
}
