//! The node's request interface: what the HTTP API, the CLI's in-process uses and embedding
//! applications call. Every call is asynchronous and bounded: a full mailbox is reported as
//! [`RequestError::Overloaded`] (HTTP 503 + Retry-After), never queued without bound.

use crate::config::ReadLevel;
use conclave_core::ids::ShardId;
pub use conclave_core::raft::{GroupId, NodeId};
use conclave_core::raft::{LogIndex, Term};
use conclave_core::swim::Incarnation;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

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
        component: crate::storage::health::StorageComponent,
        /// Its error.
        error: crate::storage::health::StorageError,
    },
    /// A storage call of this node has not returned within `[storage] stall_timeout_ms`:
    /// requests are refused before they start rather than left hanging. 503
    /// `storage_stalled`; another node may serve.
    #[error("storage of {component} has not answered for {for_ms} ms")]
    StorageStalled {
        /// The stalled component.
        component: crate::storage::health::StorageComponent,
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
    /// The leader has not yet committed an entry of its own term, so it may not know the
    /// latest committed configuration (Ongaro, 2015): membership changes wait for that. 503
    /// `leader_not_ready`; retry shortly.
    #[error("the leader has not committed an entry of its term yet; retry shortly")]
    LeaderNotReady,
    /// Another membership change has not finished yet (one at a time, thesis §4.1; a joint
    /// configuration is left before the next change): 409 `change_in_progress`.
    #[error("another membership change is in progress (configuration {config_id}); retry once it completes")]
    ChangeInProgress {
        /// The configuration in force (the pending one).
        config_id: u64,
    },
    /// A promotion (or the swap of a replace) named a learner that is too far behind the
    /// leader: 409 `not_caught_up`. Nothing changed; a learner that is added stays.
    #[error("node {id} is {lag} entries behind the leader (at most {max_lag} allowed); wait until it catches up")]
    NotCaughtUp {
        /// The learner.
        id: NodeId,
        /// Entries it is behind the leader's last index.
        lag: u64,
        /// The most a promotable learner may be behind (`raft.promote_max_lag`).
        max_lag: u64,
    },
    /// The change carried an `expected_config_id` that is not the configuration in force
    /// (another change came first): 409 `config_changed`. Nothing changed.
    #[error(
        "the configuration is {current}, not the expected {expected}; read it again and retry"
    )]
    ConfigChanged {
        /// What the request expected.
        expected: u64,
        /// The configuration in force.
        current: u64,
    },
    /// The change makes no sense for the current configuration (adding a member twice,
    /// promoting a voter, removing the last voter or a stranger): 400 `invalid_change`.
    /// Nothing changed.
    #[error("invalid membership change: {0}")]
    InvalidChange(#[from] InvalidChange),
    /// A drain named a node that leads a group in which it is the only voter: nobody could
    /// take leadership over, so nothing changed. 409 `cannot_drain`; add a voter first.
    #[error("node {id} is the only voter of group {group}: no other node could lead it; add a voter first")]
    CannotDrain {
        /// The node.
        id: NodeId,
        /// The group.
        group: GroupId,
    },
    /// A request for a shard was forwarded between nodes more than `node.max_hops` times
    /// (the nodes' leader hints disagree while leadership moves): 503 `hop_limit`, retry.
    #[error("the request was forwarded more than the allowed number of hops; retry")]
    HopLimit,
    /// Two nodes hold different shard maps under the same version (started with different
    /// `[ring]` configurations): 500 `shard_map_conflict`. Not retryable: the configuration
    /// must be fixed.
    #[error(
        "the nodes disagree on shard map version {version} (different [ring] configurations?)"
    )]
    ShardMapConflict {
        /// The version both claim.
        version: u64,
    },
    /// A shard map change on a node that is not sharded: 400 `not_sharded`.
    #[error("this node is not sharded ([ring] sharded = false)")]
    NotSharded,
    /// A shard map change carried an `expected_version` that is not the committed map's
    /// (another change came first): 409 `shard_map_changed`. Nothing changed.
    #[error("the shard map is at version {current}, not the expected {expected}; read it again and retry")]
    ShardMapChanged {
        /// What the request expected.
        expected: u64,
        /// The committed version.
        current: u64,
    },
    /// The shard map change makes no sense for the committed map (no such shard, a node that
    /// is not the shard's replica): 400 `invalid_shard_change`. Nothing changed.
    #[error("invalid shard map change: {0}")]
    InvalidShardChange(#[from] conclave_ring::ShardMapChangeError),
    /// Something failed inside the node (the state machine, encoding): 500. The cause is
    /// kept as the source.
    #[error("internal error: {0}")]
    Internal(#[source] InternalError),
}

/// What failed inside a node when a request could not be served ([`RequestError::Internal`],
/// HTTP 500 `internal`; the body's message is this error's text).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InternalError {
    /// The state machine, or the encoding of a command or a result, failed. One failure
    /// answers every request of a batch, so the cause is shared.
    #[error(transparent)]
    Failed(SharedError),
    /// The state machine is not open (its applier is restarting after a failure).
    #[error("the state machine is not open")]
    MachineNotOpen,
    /// The service behind the API does not offer this operation (a test double, an embedding
    /// application's own service).
    #[error("this service {0}")]
    Unsupported(Unsupported),
}

impl InternalError {
    /// An internal failure caused by `error` (kept as the source).
    pub fn failed(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        InternalError::Failed(SharedError(std::sync::Arc::new(error)))
    }
}

impl From<InternalError> for RequestError {
    fn from(e: InternalError) -> Self {
        RequestError::Internal(e)
    }
}

/// An error shared by every request it failed (cheap to clone). Two are equal when they are
/// the same error or say the same thing (what a test can compare).
#[derive(Clone, Debug)]
pub struct SharedError(pub std::sync::Arc<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for SharedError {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0) || self.0.to_string() == other.0.to_string()
    }
}

impl Eq for SharedError {}

/// An operation a [`KvService`] does not offer (its default methods answer this).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unsupported {
    /// `transfer_leader(to)`.
    TransferLeader(NodeId),
    /// `take_snapshot(group)`.
    TakeSnapshot(GroupId),
    /// `change_config(change)`.
    ChangeConfig(Box<ConfigChange>),
    /// `cluster_config()`.
    ClusterConfig,
    /// `drain(drained)`.
    Drain(bool),
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsupported::TransferLeader(to) => {
                write!(f, "cannot transfer leadership (to node {to})")
            }
            Unsupported::TakeSnapshot(group) => write!(f, "cannot take snapshots (group {group})"),
            Unsupported::ChangeConfig(change) => {
                write!(f, "cannot change the membership ({change:?})")
            }
            Unsupported::ClusterConfig => write!(f, "has no cluster configuration"),
            Unsupported::Drain(drained) => write!(f, "cannot be drained (drained = {drained})"),
        }
    }
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
                | RequestError::LeaderNotReady
                | RequestError::Dropped
                | RequestError::Overloaded
                | RequestError::ShuttingDown
                | RequestError::StorageFailed { .. }
                | RequestError::StorageStalled { .. }
                | RequestError::HopLimit
        )
    }
}

/// Why a membership change is invalid for the configuration in force (HTTP 400
/// `invalid_change`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidChange {
    /// Node id 0 is never valid.
    #[error("node id 0 is not a valid node id")]
    ZeroId,
    /// The node to add is already a voter or a learner.
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    /// The node to promote is not a learner.
    #[error("node {0} is not a learner")]
    NotALearner(NodeId),
    /// The node to remove (or replace) is not a member.
    #[error("node {0} is not a member")]
    NotAMember(NodeId),
    /// The node to replace is not a voter.
    #[error("node {0} is not a voter")]
    NotAVoter(NodeId),
    /// The change would leave the group without a voter.
    #[error("the change would leave no voter")]
    NoVoters,
    /// The change changes nothing.
    #[error("the change changes nothing")]
    Empty,
    /// A node named both to promote and to remove.
    #[error("node {0} is named both to promote and to remove")]
    Conflict(NodeId),
    /// A replace that names the same node twice.
    #[error("a replace must name two different nodes (got {0} twice)")]
    SameNode(NodeId),
    /// The new member's id is known with other addresses (a learner added earlier with a
    /// different address): remove it first.
    #[error("node {id} is already a learner with other addresses (addr {addr}, http {http}); remove it first")]
    AddressMismatch {
        /// The node.
        id: NodeId,
        /// The transport address the configuration holds for it.
        addr: SocketAddr,
        /// The HTTP address the configuration holds for it.
        http: SocketAddr,
    },
}

/// A node to add: its id and where it listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    /// Its node id (not 0, not a member yet).
    pub id: NodeId,
    /// Its transport address (`node.listen`).
    pub addr: SocketAddr,
    /// Its HTTP address (`node.http`).
    pub http: SocketAddr,
}

/// A membership change an operator asks for (`POST /v1/cluster/learners|promote|remove|replace`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigChange {
    /// Add a node that receives the log without voting.
    AddLearner(NewMember),
    /// Make a caught-up learner a voter.
    Promote(NodeId),
    /// Remove a voter or a learner (a removed leader steps down once the change commits).
    Remove(NodeId),
    /// Swap a voter for a new node: add it as a learner, wait (bounded) until it has caught
    /// up, then replace the old voter by it in one joint change (Raft §6). Retrying after a
    /// 409 `not_caught_up` resumes where it stopped.
    Replace {
        /// The voter to remove.
        remove: NodeId,
        /// The node that takes its place.
        add: NewMember,
    },
}

/// One member of a configuration as `GET /v1/cluster/config` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigMember {
    /// Node id.
    pub id: NodeId,
    /// Transport address, when known.
    #[serde(default)]
    pub addr: Option<SocketAddr>,
    /// HTTP address, when known.
    #[serde(default)]
    pub http: Option<SocketAddr>,
    /// Highest index known replicated there (`null` on the leader itself).
    #[serde(default)]
    pub match_index: Option<u64>,
    /// Entries behind the leader's last index (`null` on the leader itself).
    #[serde(default)]
    pub lag: Option<u64>,
    /// Learners only: within `promote_max_lag` of the leader, so a promotion is accepted.
    #[serde(default)]
    pub caught_up: Option<bool>,
    /// Drained (`conclave member drain`): it does not take leadership. As the answering
    /// node knows it (its own state, gossip for the others); omitted when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drained: bool,
}

/// The configuration in force, as the leader sees it (`GET /v1/cluster/config`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// The configuration's id: the log index of the membership entry in force (0: the
    /// bootstrap configuration). A change may name it as `expected_config_id`.
    pub config_id: u64,
    /// Voters (of the new configuration while a joint one is in force).
    pub voters: Vec<ConfigMember>,
    /// Learners, with how far each is behind.
    pub learners: Vec<ConfigMember>,
    /// While a joint configuration (C_old,new) is in force: the old voters, whose majority is
    /// also needed. Empty otherwise.
    #[serde(default)]
    pub outgoing_voters: Vec<NodeId>,
    /// Whether a change is not complete yet (not committed, or joint not left).
    pub change_pending: bool,
    /// The leader that answered.
    pub leader_id: Option<NodeId>,
    /// Its term.
    pub term: u64,
    /// Its commit index.
    pub commit_index: u64,
    /// Its last log index.
    pub last_index: u64,
    /// The most a learner may be behind to be promoted.
    pub promote_max_lag: u64,
}

/// The answer to `POST /v1/cluster/drain` (`conclave member drain`), from the drained node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainOutcome {
    /// The node drained (or undrained).
    pub id: NodeId,
    /// Whether it is drained now.
    pub drained: bool,
    /// Each group it hosts.
    pub groups: Vec<DrainedGroup>,
}

/// One group of a [`DrainOutcome`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainedGroup {
    /// The group.
    pub group: GroupId,
    /// The voter leadership is being handed to, when the drained node led the group.
    pub hand_off_to: Option<NodeId>,
}

/// A membership change that took effect: committed, and a joint configuration left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeOutcome {
    /// The log index of the (last) membership entry the change appended.
    pub index: u64,
    /// The term it was appended in.
    pub term: u64,
    /// The configuration afterwards.
    pub config: ClusterConfig,
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
    /// Drained (`conclave member drain`): it does not take leadership. As gossip last told
    /// this node; omitted when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drained: bool,
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
    /// Whether it is a learner (replicates without voting).
    #[serde(default)]
    pub learner: bool,
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
    pub membership: MembershipState,
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
    pub membership: MembershipState,
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
    fn members(&self) -> impl std::future::Future<Output = GossipMembers>;

    /// Readiness for `/readyz`.
    fn readiness(&self) -> impl std::future::Future<Output = Readiness>;

    /// The node's storage condition (`/healthz` fails on `failed`). Services without durable
    /// storage are always healthy.
    fn storage(&self) -> crate::storage::health::StorageCondition {
        crate::storage::health::StorageCondition::Healthy
    }

    /// The leader of group 0 as this node knows it (for forwarding).
    fn leader_hint(&self) -> Option<LeaderHint>;

    /// Where a key goes: its shard, the group serving it, the replicas and the leader
    /// (`GET /v1/ring/route/{key}`).
    fn route(&self, key: &[u8]) -> KeyRoute;

    /// Every shard as this node sees it (`GET /v1/shards`). Services that are not sharded
    /// answer an unsharded, empty list.
    fn shards(&self) -> impl std::future::Future<Output = ShardsStatus> {
        async {
            ShardsStatus {
                node_id: self.node_id(),
                sharded: false,
                map_version: 0,
                shards: Vec::new(),
                map_adoptions: MapAdoptions::default(),
            }
        }
    }

    /// Makes `node` the preferred leader of `shard` through group 0 (on group 0's leader;
    /// `NotLeader` otherwise, which the HTTP layer forwards), refused when the committed map
    /// is not at `expected_version`. Services that are not sharded refuse it.
    fn prefer_shard_leader(
        &self,
        shard: ShardId,
        node: NodeId,
        expected_version: Option<u64>,
    ) -> impl std::future::Future<Output = Result<ShardMapChange, RequestError>> {
        let _ = (shard, node, expected_version);
        async { Err(RequestError::NotSharded) }
    }

    /// Prometheus text exposition of the node's metrics.
    fn render_metrics(&self) -> String;

    /// Asks this node, if it leads group 0, to hand leadership to voter `to` (thesis §3.10);
    /// `NotLeader` asks the caller to forward it. Returns once the transfer has started, not
    /// when it completes. Services that cannot transfer leadership refuse with `Internal`.
    fn transfer_leader(
        &self,
        to: NodeId,
    ) -> impl std::future::Future<Output = Result<(), RequestError>> {
        async move { Err(InternalError::Unsupported(Unsupported::TransferLeader(to)).into()) }
    }

    /// Takes a snapshot of `group`'s state machine on this node now (`POST
    /// /v1/cluster/snapshot`). Services without snapshots refuse with `Internal`.
    fn take_snapshot(
        &self,
        group: GroupId,
    ) -> impl std::future::Future<Output = Result<SnapshotInfo, RequestError>> {
        async move { Err(InternalError::Unsupported(Unsupported::TakeSnapshot(group)).into()) }
    }

    /// Asks this node, if it leads group 0, to make a membership change and waits until it
    /// took effect (committed; a joint configuration left). `expected_config_id`, when given,
    /// must be the configuration in force (else `ConfigChanged`). `NotLeader` asks the caller
    /// to forward it. Services without membership changes refuse with `Internal`.
    fn change_config(
        &self,
        change: ConfigChange,
        expected_config_id: Option<u64>,
    ) -> impl std::future::Future<Output = Result<ChangeOutcome, RequestError>> {
        async move {
            let _ = expected_config_id;
            Err(InternalError::Unsupported(Unsupported::ChangeConfig(Box::new(change))).into())
        }
    }

    /// Whether this node hosts `group` (a snapshot request naming another one is a 404).
    fn has_group(&self, group: GroupId) -> bool {
        group == GroupId::FIRST
    }

    /// The configuration in force as the leader of group 0 sees it (`NotLeader` asks the
    /// caller to forward). Services without membership changes refuse with `Internal`.
    fn cluster_config(
        &self,
    ) -> impl std::future::Future<Output = Result<ClusterConfig, RequestError>> {
        async { Err(InternalError::Unsupported(Unsupported::ClusterConfig).into()) }
    }

    /// Whether `id` is a member of the cluster (requests naming another node are refused with
    /// 400 before they reach the consensus core).
    fn is_member(&self, id: NodeId) -> bool {
        id == self.node_id()
    }

    /// Drains this node (`drained = true`) or undoes it (`POST /v1/cluster/drain` naming this
    /// node; see `NodeHandle::drain`). Services without leadership refuse with `Internal`.
    fn drain(
        &self,
        drained: bool,
    ) -> impl std::future::Future<Output = Result<DrainOutcome, RequestError>> {
        async move { Err(InternalError::Unsupported(Unsupported::Drain(drained)).into()) }
    }

    /// The HTTP address of member `id`, if this node knows it (a drain naming another node
    /// is forwarded there).
    fn member_http(&self, id: NodeId) -> Option<SocketAddr> {
        let _ = id;
        None
    }
}

/// Where a key goes (`GET /v1/ring/route/{key}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRoute {
    /// The key's shard (the ring's stable hash).
    pub shard: ShardId,
    /// The Raft group that serves it (0 on a node that is not sharded: group 0 serves every
    /// key).
    pub group: GroupId,
    /// The shard's replicas, preferred leader first.
    pub replicas: Vec<NodeId>,
    /// The group's leader as this node knows it (`null` while unknown).
    pub leader: Option<NodeId>,
    /// The version of the shard map the answer comes from (0: not sharded).
    pub map_version: u64,
}

/// One shard as `GET /v1/shards` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStatus {
    /// The shard.
    pub shard: ShardId,
    /// The group serving it.
    pub group: GroupId,
    /// Its replicas, preferred leader first.
    pub replicas: Vec<NodeId>,
    /// Its leader as this node knows it: its own replica's view when it hosts the shard
    /// (`null` while the group elects), else the leader cache.
    pub leader: Option<NodeId>,
    /// Whether this node hosts the shard (the fields below are this node's replica's; 0 on
    /// a node that does not host it).
    pub hosted: bool,
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Entries this replica has committed but not applied yet.
    pub lag: u64,
}

/// The body of `GET /v1/shards`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardsStatus {
    /// This node.
    pub node_id: NodeId,
    /// Whether keys are served by shard groups (`[ring] sharded`); false: group 0 serves
    /// every key and `shards` is empty.
    pub sharded: bool,
    /// The shard map's version (0 when not sharded).
    pub map_version: u64,
    /// Every shard, in shard order.
    pub shards: Vec<ShardStatus>,
    /// How often this node took a newer map, and from where.
    #[serde(default)]
    pub map_adoptions: MapAdoptions,
}

/// How often a node replaced its shard map with a newer one (`GET /v1/shards`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapAdoptions {
    /// From group 0's applied state (the committed map; this node's own change included).
    pub group0: u64,
    /// From a peer's `StaleMap` answer to a request this node forwarded with an older map.
    pub peers: u64,
}

/// What `POST /v1/shards/preferred-leader` did (`docs/sharding.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMapChange {
    /// The shard.
    pub shard: ShardId,
    /// Its group.
    pub group: GroupId,
    /// Its replicas now, preferred leader first.
    pub replicas: Vec<NodeId>,
    /// The committed map's version now.
    pub map_version: u64,
    /// Whether the map changed (false: the node was already the preferred leader).
    pub changed: bool,
}

// ---------------------------------------------------------------------------------------------
// What the service reports (bodies of GET /v1/cluster/members, POST /v1/cluster/snapshot and
// /readyz); the node fills them in (node::gossip, node::group, node::peers).

/// A state-machine snapshot of a group, as `POST /v1/cluster/snapshot` and `/v1/cluster`
/// show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// The group.
    pub group: GroupId,
    /// The last entry it covers.
    pub index: LogIndex,
    /// That entry's term.
    pub term: Term,
    /// The image's size in bytes.
    pub bytes: u64,
    /// Whether this request took it (false: nothing was applied since the latest one, which
    /// is returned).
    pub taken: bool,
    /// How long taking it took (0 when not taken now).
    pub duration_ms: u64,
}

/// Where this node stands in a group's membership.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MembershipState {
    /// A voter or a learner of the membership in force.
    #[default]
    Member,
    /// Never named by any membership this node has seen: it waits to be added
    /// (`/readyz` 503 `not_a_member`).
    NotAMember,
    /// It was a member, and a committed membership no longer names it (`/readyz` 503
    /// `removed`): it takes no part in the group any more.
    Removed,
}

impl MembershipState {
    /// `member`, `not_a_member` or `removed`.
    pub fn as_str(self) -> &'static str {
        match self {
            MembershipState::Member => "member",
            MembershipState::NotAMember => "not_a_member",
            MembershipState::Removed => "removed",
        }
    }
}

/// Round-trip statistics of one peer, over the latency monitor's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RttStats {
    /// The samples kept, oldest first, in milliseconds (at most `latency.history_size`, at
    /// most one per `latency.interval_s`).
    pub samples_ms: Vec<u64>,
    /// The latest sample.
    pub last_ms: u64,
    /// The smallest sample kept.
    pub min_ms: u64,
    /// The mean of the samples kept.
    pub avg_ms: f64,
    /// The largest sample kept.
    pub max_ms: u64,
}

/// One member as `GET /v1/cluster/members` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GossipMember {
    /// Node id.
    pub id: NodeId,
    /// `alive`, `suspect`, `dead` or `left`.
    pub state: String,
    /// The member's incarnation as known here.
    pub incarnation: Incarnation,
    /// Transport address.
    pub addr: String,
    /// HTTP address.
    pub http: String,
    /// The application map it publishes (the shard router's load and shards).
    pub metadata: BTreeMap<String, String>,
    /// The metadata's version within its incarnation (last-writer-wins key with it).
    pub metadata_version: u64,
    /// Round trips measured by this node's direct probes; `null` for itself and for members
    /// not measured yet (or with `latency.enabled = false`).
    pub rtt: Option<RttStats>,
}

/// The SWIM core's counters (`conclave_core::swim::SwimStats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipCounters {
    /// Rumors refused as malformed (bad address, garbage metadata, impossible incarnation).
    pub rejected_updates: u64,
    /// Frames dropped: addressed to another node, from ourselves, or malformed.
    pub rejected_messages: u64,
    /// Times this node refuted a rumor about itself.
    pub refutations: u64,
    /// Suspicions this node started after a failed probe.
    pub suspicions_started: u64,
    /// Members this node declared dead.
    pub deaths_declared: u64,
}

/// The body of `GET /v1/cluster/members`: this node's SWIM view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GossipMembers {
    /// This node.
    pub node_id: NodeId,
    /// This node's incarnation.
    pub incarnation: Incarnation,
    /// Lifeguard's local health score (0 = healthy; probes are slowed by score + 1).
    pub local_health: u32,
    /// Whether a seed answered this node's join (always true without seeds).
    pub joined: bool,
    /// Members per state, this node included (as `conclave_gossip_members{state}`).
    pub counts: BTreeMap<String, usize>,
    /// What the core refused and did since this actor instance started.
    pub stats: GossipCounters,
    /// Every member known, this node first, then by id.
    pub members: Vec<GossipMember>,
}

#[cfg(test)]
mod tests {
    use super::{InternalError, RequestError};
    use conclave_core::ids::GroupId;

    #[test]
    fn only_requests_that_certainly_did_not_apply_are_retryable() {
        assert!(RequestError::NotLeader { leader: None }.is_retryable());
        assert!(RequestError::NoLeader {
            group: GroupId::FIRST
        }
        .is_retryable());
        assert!(RequestError::Dropped.is_retryable());
        assert!(RequestError::Overloaded.is_retryable());
        assert!(RequestError::ShuttingDown.is_retryable());
        // A timed-out write may still apply; an internal or size error will fail again.
        assert!(!RequestError::Timeout.is_retryable());
        let disk = InternalError::failed(std::io::Error::other("disk"));
        assert!(!RequestError::Internal(disk).is_retryable());
        assert!(!RequestError::TooLarge { size: 2, limit: 1 }.is_retryable());
    }
}
