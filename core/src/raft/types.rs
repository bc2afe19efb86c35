//! The vocabulary of the sans-IO Raft core: identifiers, log entries, membership, hard state,
//! wire messages, the actions the core emits and the errors its commands return.
//!
//! Everything here is plain data (serde-serialisable where it crosses the wire or the disk), so
//! the same types serve the deterministic simulator, the actix shell and the transport.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

pub use crate::ids::{GroupId, NodeId};
/// A Raft term (Raft §5.1).
pub type Term = u64;
/// A position in the replicated log; the first entry has index 1, index 0 means "none".
pub type LogIndex = u64;
/// Milliseconds on the caller's *monotonic* clock. The core never reads a clock: every input
/// carries `now`, and every deadline the core asks for is expressed on the same clock.
pub type Millis = u64;
/// An identifier chosen by the caller for a read request, echoed in the read's outcome.
pub type ReadId = u64;

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryPayload {
    /// Appended by every new leader at the start of its term (Raft §8, thesis §6.4): it lets the
    /// leader commit entries of earlier terms and serve reads.
    Noop,
    /// A user command, opaque to the core, applied to the state machine once committed.
    Command(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A new membership configuration (thesis §4.1 for single-server changes, Raft §6 for a
    /// joint C_old,new and the C_new that ends it). It takes effect on every node as soon as
    /// it is *appended* to that node's log, not when committed.
    Membership(Membership),
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: LogIndex,
    /// What the entry carries.
    pub payload: EntryPayload,
}

/// How to reach a member: its Raft transport address and its HTTP address. Carried in the
/// replicated [`Membership`] so that every node learns how to reach a new member from the log
/// (or a snapshot), not from local configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberAddr {
    /// The member's Raft/transport listen address.
    pub raft: SocketAddr,
    /// The member's HTTP listen address.
    pub http: SocketAddr,
}

/// A group's membership: the voters (who elect leaders and form quorums), the learners (who
/// receive the log but never vote and never count toward a quorum) and, during a joint
/// configuration (Raft §6, C_old,new), the outgoing voters.
///
/// While `outgoing` is non-empty the configuration is *joint*: `voters` is C_new, `outgoing`
/// is C_old, and elections and commitment need a majority of **each** (see
/// [`Membership::is_quorum`]). A node is a voter if it is in either set; learners are in
/// neither. Outside a joint configuration `outgoing` is empty.
///
/// The fields added after `learners` are `#[serde(default)]` so that write-ahead logs and
/// snapshots written before they existed still decode (MessagePack encodes a struct as an
/// array; a missing trailing element takes its default).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Membership {
    /// Nodes that vote and count toward quorums (C_new while joint).
    pub voters: BTreeSet<NodeId>,
    /// Nodes that replicate the log without voting.
    pub learners: BTreeSet<NodeId>,
    /// C_old while the configuration is joint (Raft §6); empty otherwise.
    #[serde(default)]
    pub outgoing: BTreeSet<NodeId>,
    /// How to reach each member (voters, outgoing voters, learners). A member may lack an
    /// entry (the simulator and tests have no addresses; a bootstrap membership may be built
    /// without them): the shell then falls back to its own configuration.
    #[serde(default)]
    pub addrs: BTreeMap<NodeId, MemberAddr>,
    /// The configuration id: the index of the log entry that carries this membership (set by
    /// the leader when it appends it), 0 for a bootstrap membership. Changes may name the id
    /// they expect ([`Raft::change_membership_if`](super::Raft::change_membership_if)).
    #[serde(default)]
    pub config_id: LogIndex,
}

impl Membership {
    /// A membership of the given voters and no learners.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Membership {
            voters: voters.into_iter().collect(),
            ..Membership::default()
        }
    }

    /// Whether `id` is a voter, an outgoing voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Whether `id` votes: it is in C_new (`voters`) or, while joint, in C_old (`outgoing`).
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.outgoing.contains(&id)
    }

    /// Whether this is a joint configuration (C_old,new).
    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Whether the membership names no node at all (a joining node that has not yet learned
    /// its cluster's configuration).
    pub fn is_empty(&self) -> bool {
        self.voters.is_empty() && self.learners.is_empty() && self.outgoing.is_empty()
    }

    /// The number of votes that make a majority of `voters` (C_new). While joint, a quorum
    /// also needs a majority of `outgoing`: use [`Membership::is_quorum`].
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Whether the nodes for which `yes` holds form a quorum: a majority of `voters` and,
    /// while joint, also a majority of `outgoing` (Raft §6).
    pub fn is_quorum(&self, yes: impl Fn(NodeId) -> bool) -> bool {
        let majority = |set: &BTreeSet<NodeId>| {
            set.is_empty() || set.iter().filter(|id| yes(**id)).count() > set.len() / 2
        };
        !self.voters.is_empty() && majority(&self.voters) && majority(&self.outgoing)
    }

    /// The highest index held by a quorum, given each voter's matched index: the
    /// quorum-th highest of `voters`, and while joint the smaller of that and the same for
    /// `outgoing` (Raft §6: an entry commits only with both majorities). 0 without voters.
    pub fn quorum_index(&self, matched: impl Fn(NodeId) -> LogIndex) -> LogIndex {
        let of = |set: &BTreeSet<NodeId>| {
            let mut m: Vec<LogIndex> = set.iter().map(|id| matched(*id)).collect();
            m.sort_unstable_by(|a, b| b.cmp(a));
            m.get(set.len() / 2).copied().unwrap_or(0)
        };
        if self.voters.is_empty() {
            return 0;
        }
        let new = of(&self.voters);
        if self.outgoing.is_empty() {
            new
        } else {
            new.min(of(&self.outgoing))
        }
    }

    /// Every voter (C_new and, while joint, C_old), in id order, without duplicates.
    pub fn all_voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters
            .iter()
            .chain(self.outgoing.iter().filter(|id| !self.voters.contains(id)))
            .copied()
    }

    /// Voters (of both halves while joint) and learners.
    pub fn all(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.all_voters().chain(self.learners.iter().copied())
    }

    /// The configuration that ends a joint one (C_new): the incoming voters and the learners,
    /// with the addresses of nodes that are no longer members dropped.
    pub fn leave_joint(&self) -> Membership {
        let mut next = Membership {
            voters: self.voters.clone(),
            learners: self.learners.clone(),
            outgoing: BTreeSet::new(),
            addrs: self.addrs.clone(),
            config_id: 0,
        };
        next.retain_member_addrs();
        next
    }

    /// Drops the addresses of nodes that are not members.
    pub(crate) fn retain_member_addrs(&mut self) {
        let keep: BTreeSet<NodeId> = self.all().collect();
        self.addrs.retain(|id, _| keep.contains(id));
    }
}

/// A membership change, proposed on the leader with
/// [`Raft::change_membership`](super::Raft::change_membership). At most one change is in
/// flight at a time: the next one is refused until the previous one (for a joint change,
/// both of its entries) committed.
///
/// `AddLearner`, `Promote` and `Remove` are single-server changes (thesis §4.1): one entry, in
/// force as soon as appended. `Replace` and `Change` go through a joint configuration
/// (Raft §6): the leader appends C_old,new, and once it commits, C_new; elections and
/// commitment need both majorities in between.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a node that receives the log but does not vote, and how to reach it.
    AddLearner {
        /// The new node (not 0, not a member).
        id: NodeId,
        /// Its addresses, replicated to every node with the membership.
        addr: Option<MemberAddr>,
    },
    /// Turn a caught-up learner into a voter (single-server change).
    Promote(NodeId),
    /// Remove a voter or a learner (single-server change).
    Remove(NodeId),
    /// Swap voter `remove` for the caught-up learner `add`, through a joint configuration.
    Replace {
        /// A learner to promote.
        add: NodeId,
        /// A voter to remove.
        remove: NodeId,
    },
    /// Promote several learners and remove several members at once. If the set of voters
    /// changes it goes through a joint configuration; a change of learners only is one entry.
    Change {
        /// Learners to turn into voters (each must be caught up).
        promote: BTreeSet<NodeId>,
        /// Voters or learners to remove.
        remove: BTreeSet<NodeId>,
    },
}

/// Why a membership change is invalid for the membership in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum InvalidChange {
    /// Node id 0 is never valid.
    #[error("node id 0 is not valid")]
    ZeroId,
    /// The node to add is already a member.
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    /// Only learners can be promoted.
    #[error("node {0} is not a learner")]
    NotALearner(NodeId),
    /// The node to remove is not a member.
    #[error("node {0} is not a member")]
    NotAMember(NodeId),
    /// The change would leave the group without a voter.
    #[error("the change would leave no voter")]
    NoVoters,
    /// The change changes nothing.
    #[error("the change changes nothing")]
    Empty,
    /// The node is named both to promote and to remove.
    #[error("node {0} is named both to promote and to remove")]
    Conflict(NodeId),
}

/// The state that must be durable before the core may act on it (Raft figure 2, "persistent
/// state on all servers"). The log entries themselves are persisted through
/// [`PersistRequest::entries`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// The candidate this node voted for in `term`, if any.
    pub vote: Option<NodeId>,
}

/// Why a quiesced core resumes ([`crate::raft::Raft::unquiesce`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Wake {
    /// Activity: a message, a command or a wake-up request. Nothing says the leader failed.
    Activity,
    /// Its leader was reported failed: gossip suspects it, or the connection to it closed.
    LeaderSuspected,
}

/// A node's role in one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Runs a pre-vote round (Raft thesis §9.6): it has not incremented its term.
    PreCandidate,
    /// Runs an election in a new term.
    Candidate,
    /// Leads the group in its term.
    Leader,
    /// Replicates the log without voting (not a voter of the current membership).
    Learner,
}

/// What the caller restores a core from after a (re)start: exactly what was reported persisted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreState {
    /// The last persisted hard state.
    pub hard_state: HardState,
    /// The persisted log, in index order, starting right after the snapshot (or at index 1).
    pub entries: Vec<Entry>,
    /// The index up to which the caller's state machine has already applied entries (they were
    /// committed, so the core starts with `commit_index = applied`).
    pub applied: LogIndex,
    /// The membership in force at the start of `entries` (the bootstrap membership of a new
    /// group, or the membership stored with a snapshot). Membership entries in `entries`
    /// override it.
    pub base_membership: Membership,
    /// The snapshot the caller's state machine was restored from (the one its log store names
    /// as the base: the newest snapshot it took itself, or the newest install whose persist
    /// completed), `None` without one. Entries of `entries` at or below its index are ignored;
    /// its membership replaces `base_membership`.
    pub snapshot: Option<SnapshotMeta>,
}

/// What identifies a snapshot of the state machine (Raft §7): the last entry it covers and the
/// membership in force at that entry, which must travel with it because the entries that
/// carried the membership are compacted away.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Index of the last entry the snapshot covers.
    pub index: LogIndex,
    /// Term of that entry.
    pub term: Term,
    /// The membership in force at `index` (the latest membership entry at or below it).
    pub membership: Membership,
}

/// How strongly a read must be ordered with respect to writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReadConsistency {
    /// ReadIndex (thesis §6.4): the leader confirms it is still leader with a quorum round
    /// (batched with other reads) and serves at its commit index. Linearizable.
    Linearizable,
    /// Lease read (thesis §6.4.1): served at the commit index without a round while the
    /// leader's lease, refreshed by quorum acks under check-quorum, has not expired on the
    /// monotonic clock. Linearizable as long as clock drift stays within the configured bound.
    Lease,
    /// Served from the local state machine as it is. May be stale.
    Stale,
}

/// A message between two members of the same group. One connection per peer pair carries the
/// messages of every group, so each message names its group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The group the message belongs to.
    pub group: GroupId,
    /// The sender.
    pub from: NodeId,
    /// The recipient.
    pub to: NodeId,
    /// The sender's current term (or, for a pre-vote request, the term it would campaign in).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// The protocol messages (Raft figure 2, plus pre-vote, heartbeats and TimeoutNow).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// RequestVote (Raft §5.2) or a pre-vote (thesis §9.6) when `pre_vote` is set.
    RequestVote {
        /// A pre-vote changes no state on the recipient.
        pre_vote: bool,
        /// Index of the candidate's last log entry (Raft §5.4.1).
        last_log_index: LogIndex,
        /// Term of the candidate's last log entry (Raft §5.4.1).
        last_log_term: Term,
        /// Set when the election follows a TimeoutNow (thesis §3.10): recipients then ignore
        /// their "I heard from a leader recently" rule.
        leadership_transfer: bool,
    },
    /// The answer to [`MessageBody::RequestVote`].
    RequestVoteResponse {
        /// Whether this answers a pre-vote.
        pre_vote: bool,
        /// Whether the vote was granted.
        granted: bool,
    },
    /// AppendEntries (Raft §5.3): replicate `entries` after `prev_log_index`.
    AppendEntries {
        /// Index of the entry preceding `entries`.
        prev_log_index: LogIndex,
        /// Term of the entry at `prev_log_index`.
        prev_log_term: Term,
        /// Entries to append (may be empty).
        entries: Vec<Entry>,
        /// The leader's commit index.
        leader_commit: LogIndex,
    },
    /// The answer to [`MessageBody::AppendEntries`].
    AppendEntriesResponse {
        /// Whether the follower's log matched at `prev_log_index` and it appended the entries.
        success: bool,
        /// On success, the index of the last entry the follower now durably holds that
        /// matches the leader's log; on failure, the `prev_log_index` that was rejected.
        index: LogIndex,
        /// On failure, a hint for fast backtracking (thesis §5.3 optimisation): the term of the
        /// conflicting entry and the first index the follower holds with that term, or the
        /// follower's last index + 1 when its log is too short (`conflict_term` = `None`).
        conflict_term: Option<Term>,
        /// See `conflict_term`.
        conflict_index: LogIndex,
    },
    /// A heartbeat: asserts leadership, carries the commit index (capped at what the
    /// follower is known to hold) and a read context for batched ReadIndex rounds.
    Heartbeat {
        /// The commit index the follower may adopt.
        commit: LogIndex,
        /// The ReadIndex round this heartbeat belongs to.
        read_ctx: u64,
    },
    /// The answer to [`MessageBody::Heartbeat`], echoing its read context.
    HeartbeatResponse {
        /// The read context of the heartbeat being answered.
        read_ctx: u64,
    },
    /// Leader transfer (thesis §3.10): start an election now, skipping the pre-vote.
    TimeoutNow,
    /// The answer to a snapshot install (Raft §7, the InstallSnapshot RPC's reply). The
    /// snapshot itself never travels in a [`Message`]: the leader's shell streams it out of
    /// band ([`Action::SendSnapshot`]) and the follower's shell hands the core its meta with
    /// [`Raft::install_snapshot`](super::Raft::install_snapshot) once it holds all of it.
    InstallSnapshotResponse {
        /// Whether the snapshot was installed and is durable.
        installed: bool,
        /// If installed, the snapshot's index: the follower's log durably matches the
        /// leader's up to it. If refused as stale, the follower's commit index: the leader
        /// probes with AppendEntries from just after it.
        index: LogIndex,
    },
}

/// Something durable the caller must write before it reports completion with
/// [`PersistRequest::seq`]. Requests complete in `seq` order; the caller may batch several into
/// one `fdatasync` (group commit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistRequest {
    /// Sequence number, increasing by one per request; report completion with it.
    pub seq: u64,
    /// A new hard state to write, if it changed.
    pub hard_state: Option<HardState>,
    /// Remove every persisted entry with an index at or above this one before appending.
    pub truncate_from: Option<LogIndex>,
    /// Entries to append after the truncation, in index order.
    pub entries: Vec<Entry>,
    /// Set when the core installed a snapshot received from the leader (Raft §7). Carried
    /// out *first*, before `truncate_from` and `entries`: the snapshot named here (which the
    /// shell already holds, complete and verified, since it handed its meta to
    /// [`Raft::install_snapshot`](super::Raft::install_snapshot)) becomes the one a restart
    /// restores from, and every persisted entry at or below its index is obsolete (it may be
    /// purged at once or later). Entries after its index stay unless `truncate_from` drops them.
    pub snapshot: Option<SnapshotMeta>,
}

/// What the core asks its caller to do. Actions are drained in order and must be carried out
/// in that order (a `Send` may depend on an earlier `Persist` having been *issued*; the core
/// itself withholds every message that depends on a persist until that persist is reported
/// complete).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a message to a peer (best effort: the network may lose it).
    Send(Message),
    /// Make state durable, then call `persisted(now, seq)`.
    Persist(PersistRequest),
    /// Apply these committed entries, in order, to the state machine.
    Apply(Vec<Entry>),
    /// Call `tick(now)` at or after this time (replaces any earlier request of this group).
    SetTimer {
        /// When to tick.
        at: Millis,
    },
    /// A read may be served once the state machine has applied `index` (0: serve now).
    ReadReady {
        /// The caller's read id.
        id: ReadId,
        /// The index the state machine must have applied first.
        index: LogIndex,
    },
    /// A read cannot be served by this node (it stopped being leader, or lost its quorum).
    ReadFailed {
        /// The caller's read id.
        id: ReadId,
        /// Why.
        error: ReadError,
    },
    /// Leader: stream the snapshot `meta` names (the latest one reported with
    /// [`Raft::snapshot_taken`](super::Raft::snapshot_taken) or installed) to `to`, whose log
    /// is too far behind for AppendEntries (its next index is at or below the leader's
    /// compaction point). Appends to `to` pause until the transfer is answered, reported
    /// failed with [`Raft::snapshot_send_failed`](super::Raft::snapshot_send_failed), or
    /// `RaftConfig::snapshot_timeout_ms` passes. The receiving shell calls
    /// `install_snapshot(now, from, term, meta)` with the `term` given here once it holds the
    /// whole snapshot durably.
    SendSnapshot {
        /// The peer to send to.
        to: NodeId,
        /// The leader's term, to be handed to the receiver's `install_snapshot`.
        term: Term,
        /// Which snapshot.
        meta: SnapshotMeta,
    },
    /// Replace the state machine with the snapshot `meta` names. Emitted once the install's
    /// `Persist` completed (so a crash never leaves the state machine ahead of the log); every
    /// later `Apply` continues from `meta.index + 1`.
    RestoreSnapshot(SnapshotMeta),
    /// The in-memory log now starts at `first_index` (a snapshot reported with
    /// [`Raft::snapshot_taken`](super::Raft::snapshot_taken) covers everything before it, up
    /// to `RaftConfig::keep_entries` fewer): persisted entries below `first_index` may be
    /// purged from the log store.
    Compacted {
        /// The first index still held in memory.
        first_index: LogIndex,
    },
    /// The node's role, term or known leader changed (for logs, metrics and routing).
    RoleChanged {
        /// The new role.
        role: Role,
        /// The current term.
        term: Term,
        /// The known leader of the current term, if any.
        leader: Option<NodeId>,
    },
}

/// Why a proposal (a write or a membership change) was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader accepts proposals; `leader` is the one this node knows, if any.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// A leader transfer is under way; proposals are refused until it ends.
    #[error("a leader transfer is in progress")]
    TransferInProgress,
    /// The leader has not committed an entry of its own term yet, so it may not know every
    /// committed membership change (the single-server change bug Ongaro reported in 2015);
    /// membership changes wait for that. Retry shortly.
    #[error("the leader has not committed an entry in its term yet")]
    LeaderNotReady,
    /// Another membership change is in flight (not committed, or a joint configuration not
    /// yet left): one at a time.
    #[error("another membership change is in progress")]
    ChangeInProgress,
    /// The learner to promote is `lag` entries behind the leader's last index, more than
    /// `RaftConfig::promote_max_lag`, or does not hold the configuration in force yet.
    #[error("node {id} is not caught up ({lag} entries behind)")]
    NotCaughtUp {
        /// The learner.
        id: NodeId,
        /// How far behind the leader's last index its match index is.
        lag: u64,
    },
    /// The change named a configuration id that is not the one in force: another change
    /// came first.
    #[error("the configuration changed (expected id {expected}, current {current})")]
    ConfigChanged {
        /// The id the caller expected.
        expected: LogIndex,
        /// The id in force.
        current: LogIndex,
    },
    /// The change makes no sense for the current membership.
    #[error("invalid membership change: {0}")]
    InvalidMembershipChange(#[from] InvalidChange),
}

/// Why [`Raft::snapshot_taken`](super::Raft::snapshot_taken) or
/// [`Raft::snapshot_meta`](super::Raft::snapshot_meta) refused a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The snapshot claims entries the core has not handed out for applying yet: compacting
    /// them would lose committed entries the state machine never saw.
    #[error("snapshot index {index} is beyond the applied index {applied}")]
    NotApplied {
        /// The snapshot's index.
        index: LogIndex,
        /// The core's applied index.
        applied: LogIndex,
    },
    /// A snapshot at or beyond this index already exists (or the log is compacted past it).
    #[error(
        "snapshot index {index} is not beyond the current snapshot or compaction point {current}"
    )]
    Stale {
        /// The snapshot's index.
        index: LogIndex,
        /// The current snapshot index or compaction point, whichever is higher.
        current: LogIndex,
    },
    /// The membership in force at `index` is unknown to this node: it joined with an empty
    /// membership and `index` precedes the first membership entry it received (the cluster's
    /// bootstrap configuration is not a log entry). It can snapshot once it applied one.
    #[error("the membership at index {index} is unknown to this node (it joined later)")]
    UnknownMembership {
        /// The snapshot's index.
        index: LogIndex,
    },
    /// The snapshot's term or membership is not the log's at its index: it was not taken from
    /// this group's committed state.
    #[error("snapshot meta {given:?} does not match the log, which says {expected:?}")]
    Mismatch {
        /// What the caller reported.
        given: Box<SnapshotMeta>,
        /// What the log holds at that index.
        expected: Box<SnapshotMeta>,
    },
}

/// Why a read could not be served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ReadError {
    /// Only the leader serves linearizable and lease reads.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// The leader has not yet committed an entry of its own term, so its commit index may be
    /// behind (thesis §6.4 step 1); retry shortly.
    #[error("the leader has not committed an entry in its term yet")]
    NotReady,
    /// Leadership was lost before the read was confirmed.
    #[error("leadership was lost before the read was confirmed")]
    LeadershipLost,
}

/// Why a leader transfer was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// Only the leader can transfer leadership.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// The target is not a voter of the current membership.
    #[error("node {0} is not a voter")]
    NotAVoter(NodeId),
}

/// Why [`Raft::set_drained`](crate::raft::Raft::set_drained) refused to drain this node.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DrainError {
    /// This node leads and no other voter exists: nobody could take leadership over.
    #[error("this node leads and no other voter could take leadership over")]
    NoOtherVoter,
}

/// The outcome of an accepted proposal: the entry's position. The write succeeded iff the
/// entry applied at `index` has this `term`; an entry of another term there means it was lost
/// to a leader change and the client may retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Where the entry was appended.
    pub index: LogIndex,
    /// The leader's term when it was appended.
    pub term: Term,
}
