//! The group actor: one Raft group's *shell*. Its sans-IO core (election, replication, reads)
//! lives in the host of the group's Raft worker (`super::worker`), on the same arbiter thread;
//! the shell borrows it for each command and carries out the actions the worker's drains hand
//! it — persist requests to the node's log store, committed entries to the applier, reads,
//! snapshots. Messages to peers and the timer are the worker's.
//!
//! Everything it hands on is bounded: committed entries go to the applier's mailbox with
//! `try_send`; persist requests (and compactions) go into its worker's outbox, which the worker
//! sends to the log store as one batch for all its groups, and whose answer (one per WAL sync)
//! the worker hands straight to the cores (`super::worker`). Persist requests and committed
//! entries cannot be dropped, so they wait in small local FIFO queues that are pumped as room
//! appears; while those queues are long, new proposals are refused with
//! [`RequestError::Overloaded`] (HTTP 503) — backpressure ends at the edge, never in unbounded
//! memory.
//!
//! Proposals and inbound messages only mark the group dirty; the worker drains its host once
//! its mailbox batch is handled, so a burst of proposals becomes one persist request and one
//! AppendEntries per follower.
//!
//! **Snapshots** (docs/node.md "Snapshots"): the actor counts the entries applied and the
//! bytes handed to the applier since the last snapshot; past `[snapshot] threshold_entries` or
//! `threshold_log_bytes` (or on request) it asks the applier for the machine's state at its
//! applied index ([`TakeSnapshot`]: synced, then an isolated view), has the snapshotter write
//! it ([`WriteSnapshot`]), then reports it to the core (`snapshot_taken`), whose `Compacted`
//! becomes a log-store [`Compact`]. One snapshot at a time. At start, the newest valid
//! snapshot is the core's base; a machine behind it is restored from it first
//! ([`RestoreFrom`]); a log compacted past every valid snapshot is a fatal storage error.

use super::applier::{
    AppliedIndex, ApplierActor, ApplyBatch, ReadAt, ReadReply, RestoreFrom, TakeSnapshot,
    WriteReply,
};
use super::log_store_actor::{LogStoreActor, MarkMember, Recover};
use super::peers::{MembershipTracker, Peers};
use super::snapshotter::{
    NewestSnapshot, SnapshotError, SnapshotSource, SnapshotterActor, WriteSnapshot,
};
use super::transfer_actor::{
    Adopt, PeerAddrs, SendOutcome, SendRequest, SnapshotReceived, SnapshotReceiver, SnapshotSender,
};
use super::wire::WireMessage;
use super::worker::{FromWorker, Publish, WorkerCell};
use crate::api::{LeaderHint, MembershipState, RequestError, SnapshotInfo};
use crate::state_machine::StateMachine;
use crate::storage::health::StorageHealth;
use crate::storage::log_store::RecoveredGroup;
use crate::storage::member_mark::MemberMarks;
use crate::storage::snapshot_store::{SnapshotStore, StoredSnapshot};
use actix::prelude::*;
use conclave_actors::supervisor::{ChildGuard, Slot};
use conclave_core::raft::SnapshotMeta;
use conclave_core::raft::{
    self, Action, Entry, EntryPayload, GroupId, LogIndex, Membership, NodeId, PersistRequest,
    ProposeError, Raft, RaftConfig, ReadConsistency, ReadError, ReadId, RestoreState, Role, Term,
};
use conclave_transport::Endpoint;
use parking_lot::RwLock;
use std::cell::{Cell, Ref, RefCell, RefMut};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

mod membership;
pub use membership::{ChangeMembership, ReadConfig};

/// Local queues longer than this refuse new proposals (503).
const BACKLOG_LIMIT: usize = 50_000;
/// Most entries handed to the applier in one message.
const APPLY_BATCH: usize = 1024;
/// After a snapshot failed, the thresholds do not start another one for this long (a request
/// still does).
const SNAPSHOT_RETRY_AFTER: Duration = Duration::from_secs(10);
/// Fault injection (test builds): a node process with this variable set aborts right after
/// its first snapshot file is durable, before the core and the log store compact (the crash
/// window a restart must survive).
#[cfg(feature = "fault-injection")]
pub const CRASH_AFTER_SNAPSHOT_FILE_ENV: &str = "CONCLAVE_CRASH_AFTER_SNAPSHOT_FILE";

/// A point-in-time view of a group, published after every drain for status pages, routing
/// and readiness (so they never need to message the actor).
#[derive(Clone, Debug, Default)]
pub struct GroupSnapshot {
    /// This node's role.
    pub role: Option<Role>,
    /// Current term.
    pub term: Term,
    /// Known leader.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit_index: LogIndex,
    /// Last log index.
    pub last_index: LogIndex,
    /// Voters and learners.
    pub membership: Membership,
    /// `(peer, match_index)` on the leader.
    pub progress: Vec<(NodeId, LogIndex)>,
    /// Whether this node is a member of the group, waits to be added, or was removed.
    pub membership_state: MembershipState,
}

/// State shared between a group's actors and the node's handle.
#[derive(Default)]
pub struct GroupShared {
    /// The latest snapshot.
    pub snapshot: RwLock<GroupSnapshot>,
    /// The applier's applied index.
    pub applied: Arc<AtomicU64>,
    /// The group's latest state-machine snapshot (its base), if any.
    pub last_snapshot: RwLock<Option<SnapshotInfo>>,
    /// This node is drained (`conclave member drain`): its core never campaigns and hands
    /// leadership off. Kept here so a restarted group actor drains its new core too; a node
    /// restart clears it.
    pub drained: std::sync::atomic::AtomicBool,
}

impl SnapshotInfo {
    fn of(group: GroupId, s: &StoredSnapshot, taken: bool, duration_ms: u64) -> Self {
        SnapshotInfo {
            group,
            index: s.meta.index,
            term: s.meta.term,
            bytes: s.len,
            taken,
            duration_ms,
        }
    }
}

/// When a group takes snapshots (`[snapshot]`; 0 disables a trigger).
#[derive(Clone, Copy, Debug, Default)]
pub struct SnapshotPolicy {
    /// Applied entries since the last snapshot.
    pub threshold_entries: u64,
    /// Bytes of applied entries since the last snapshot.
    pub threshold_log_bytes: u64,
    /// Up to this many percent are added to both thresholds, drawn afresh for each snapshot
    /// (`threshold_jitter_pct`, 0 to 100).
    pub jitter_pct: u64,
    /// No snapshot before the bytes applied since the last one reach this many percent of
    /// its image (`[snapshot] log_image_pct`; 0: no such floor).
    pub log_image_pct: u64,
}

impl SnapshotPolicy {
    /// Whether a snapshot is due: `entries` and `bytes` applied since the last one (of
    /// `image_bytes`, 0 when there is none) against the drawn `thresholds` (see
    /// [`SnapshotPolicy::jittered`]). A threshold of 0 never fires; whatever fires, the
    /// image floor must be passed too, so a large state is not rewritten for a small log
    /// (the write amplification of snapshots is at most `100 / log_image_pct`).
    pub fn due(&self, entries: u64, bytes: u64, image_bytes: u64, thresholds: (u64, u64)) -> bool {
        let (threshold_entries, threshold_log_bytes) = thresholds;
        let by_entries = threshold_entries > 0 && entries >= threshold_entries;
        let by_bytes = threshold_log_bytes > 0 && bytes >= threshold_log_bytes;
        let floor = image_bytes as u128 * self.log_image_pct as u128 / 100;
        let floor = u64::try_from(floor).unwrap_or(u64::MAX);
        (by_entries || by_bytes) && bytes >= floor
    }

    /// The thresholds `(entries, log bytes)` for the next snapshot, for a draw `unit` in
    /// `[0, 1)`: each raised by `unit × jitter_pct` percent (a disabled trigger stays 0).
    /// Replicas apply the same log, so without this they cross a threshold at the same
    /// index — and, sharing a disk or not, write their images at the same moment.
    pub fn jittered(&self, unit: f64) -> (u64, u64) {
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let fraction = self.jitter_pct.min(100) as f64 / 100.0 * unit;
        let raise = |t: u64| t.saturating_add((t as f64 * fraction) as u64);
        (
            raise(self.threshold_entries),
            raise(self.threshold_log_bytes),
        )
    }
}

/// Everything a group actor needs, shared by its successive instances.
pub struct GroupDeps<M: StateMachine> {
    /// The group.
    pub group: GroupId,
    /// Its Raft configuration.
    pub raft: RaftConfig,
    /// Bootstrap membership (used when the log holds none).
    pub base_membership: Membership,
    /// The node's log store.
    pub log_store: Addr<LogStoreActor>,
    /// The group's applier.
    pub applier: Slot<ApplierActor<M>>,
    /// The node's peers: links, allowlist, gossip and member addresses follow the
    /// membership this actor hands them.
    pub peers: Arc<Peers>,
    /// Shared status.
    pub shared: Arc<GroupShared>,
    /// The node's monotonic epoch: the cores' `now` is milliseconds since it.
    pub epoch: Instant,
    /// The group's snapshotter (writes and finds snapshot files, on its own arbiter).
    pub snapshotter: Slot<SnapshotterActor>,
    /// The group's snapshot files.
    pub snapshots: Arc<SnapshotStore>,
    /// When snapshots are taken.
    pub snapshot_policy: SnapshotPolicy,
    /// Bytes per second at which a snapshot received from the leader is restored
    /// (`[snapshot] install_rate_mb_s`; 0: unpaced).
    pub install_bytes_per_s: u64,
    /// Where a fatal storage problem found at start (a log without its snapshot) is reported.
    pub health: Arc<StorageHealth>,
    /// Streaming snapshots to lagging followers and receiving them from the leader.
    pub transfer: GroupTransfer,
    /// The groups this node has been a member of, durable (`data_dir/member-of`): a removed
    /// node reports `removed` after its log is compacted and it restarts.
    pub member_marks: Arc<MemberMarks>,
    /// The labels of the group's metrics (`shard` on a shard's group; none above the cap).
    pub labels: super::group_metrics::GroupLabels,
    /// The key of the node's worker cells, where the shell finds its core
    /// (`worker::WorkerCell::current`).
    pub(crate) worker_cell: u64,
}

/// What a group uses to send and receive snapshots (docs/transport.md, "Snapshot transfer").
pub struct GroupTransfer {
    /// The node's snapshot sender.
    pub sender: SnapshotSender,
    /// The node's snapshot receiver (stages received images; moves them into the store).
    pub receiver: Addr<SnapshotReceiver>,
    /// The group's snapshot directory.
    pub dir: PathBuf,
    /// The transport, for the link to a peer that needs a snapshot.
    pub endpoint: Arc<dyn Endpoint<WireMessage>>,
    /// Where a peer's transport listens.
    pub addrs: PeerAddrs,
}

/// A snapshot transfer this group asked for ended.
#[derive(Message)]
#[rtype(result = "()")]
struct SendDone {
    to: NodeId,
    index: LogIndex,
    outcome: SendOutcome,
}

/// Take a snapshot of the group's state machine now (`POST /v1/cluster/snapshot`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct TakeSnapshotNow {
    /// Told the snapshot taken (or the latest one when nothing was applied since), or why not.
    pub reply: oneshot::Sender<Result<SnapshotInfo, SnapshotError>>,
}

/// Propose an encoded command.
pub struct Propose<M: StateMachine> {
    /// The command, MessagePack-encoded.
    pub command: Vec<u8>,
    /// Where the outcome goes.
    pub reply: WriteReply<M>,
}

impl<M: StateMachine> Message for Propose<M> {
    type Result = ();
}

/// Read at a consistency level.
pub struct Read<M: StateMachine> {
    /// The query.
    pub query: M::Query,
    /// The level.
    pub consistency: ReadConsistency,
    /// Where the outcome goes.
    pub reply: ReadReply<M>,
}

impl<M: StateMachine> Message for Read<M> {
    type Result = ();
}

/// Hand leadership to another voter.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TransferLeader {
    /// The target voter.
    pub to: NodeId,
    /// Told whether the transfer started (`NotLeader` with a hint when this node does not
    /// lead, so the HTTP layer can forward the request).
    pub reply: oneshot::Sender<Result<(), RequestError>>,
}

/// Drains this node in the group, or undoes it ([`Raft::set_drained`]): answered with the
/// voter leadership is being handed to (`None` unless this node leads), or
/// [`RequestError::CannotDrain`] when it leads and no other voter exists.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetDrained {
    /// Drain (`true`) or undo it.
    pub drained: bool,
    /// Told the outcome.
    pub reply: oneshot::Sender<Result<Option<NodeId>, RequestError>>,
}

/// Proposes a membership change straight to the core (tests and the chaos harness; the
/// operator's routes go through the HTTP layer's own message). Answers with the proposal's
/// index once appended, or why it was refused.
#[cfg(any(test, feature = "fault-injection"))]
#[derive(Message)]
#[rtype(result = "()")]
pub struct InjectMembershipChange {
    /// The change.
    pub change: raft::MembershipChange,
    /// The index it was appended at, or the core's refusal.
    pub reply: oneshot::Sender<Result<LogIndex, ProposeError>>,
}

#[cfg(any(test, feature = "fault-injection"))]
impl<M: StateMachine> Handler<InjectMembershipChange> for GroupActor<M> {
    type Result = ();

    fn handle(&mut self, msg: InjectMembershipChange, ctx: &mut Context<Self>) {
        let now = self.now();
        let result = match self.core.as_mut() {
            Some(mut core) => core.change_membership(now, msg.change).map(|p| p.index),
            None => Err(ProposeError::NotLeader { leader: None }),
        };
        let _ = msg.reply.send(result);
        self.schedule_drain(ctx);
    }
}

/// The group's core, hosted by the group's Raft worker (`super::worker`) and lent for each
/// use: the shell holds no core of its own.
struct Hosted {
    /// The worker's cell (`None` off a worker's arbiter: the group cannot start).
    cell: Option<Rc<WorkerCell>>,
    group: GroupId,
    epoch: Instant,
    /// The shell's registration, once its core is in the host.
    instance: Option<u64>,
}

impl Hosted {
    fn as_ref(&self) -> Option<Ref<'_, Raft>> {
        self.instance?;
        self.cell.as_ref()?.core(self.group)
    }

    /// A command: the group wakes if quiesced and is polled at the worker's next drain.
    fn as_mut(&self) -> Option<RefMut<'_, Raft>> {
        self.instance?;
        let now = self.epoch.elapsed().as_millis() as u64;
        self.cell.as_ref()?.core_mut(now, self.group)
    }

    fn install(
        &mut self,
        core: Raft,
        shell: Recipient<FromWorker>,
        publish: Rc<dyn Publish>,
    ) -> Result<(), raft::HostError> {
        let Some(cell) = self.cell.as_ref() else {
            return Err(raft::HostError::GroupExists(self.group));
        };
        cell.add(core)?;
        self.instance = Some(cell.register(self.group, shell, publish));
        cell.request_drain();
        Ok(())
    }

    fn request_drain(&self) {
        if let Some(cell) = self.cell.as_ref() {
            cell.request_drain();
        }
    }

    /// Whether the worker's batch for the log store takes a persist request now (not while it
    /// is full, nor before the core is hosted).
    fn persist_room(&self) -> bool {
        self.instance.is_some() && self.cell.as_ref().is_some_and(|c| c.persist_room())
    }

    /// Hands a persist request to the worker's batch for the log store (after
    /// [`Hosted::persist_room`]).
    fn persist(&self, log_store: &Addr<LogStoreActor>, req: PersistRequest) {
        if let (Some(cell), Some(instance)) = (self.cell.as_ref(), self.instance) {
            cell.persist(log_store, self.group, instance, req);
        }
    }

    /// The shell has moved the persist requests of a drain's actions to the worker's batch
    /// ([`WorkerCell::shell_ran`]).
    fn shell_ran(&self) {
        if let (Some(cell), Some(_)) = (self.cell.as_ref(), self.instance) {
            cell.shell_ran();
        }
    }

    /// Has the log store compact the group's log, in order with its persist requests.
    fn compact(&self, log_store: &Addr<LogStoreActor>, index: LogIndex, term: Term) {
        if let (Some(cell), Some(instance)) = (self.cell.as_ref(), self.instance) {
            cell.compact(log_store, self.group, instance, index, term);
        }
    }
}

impl Drop for Hosted {
    fn drop(&mut self) {
        if let (Some(cell), Some(instance)) = (self.cell.as_ref(), self.instance) {
            cell.unregister(self.group, instance);
        }
    }
}

/// Publishes a group's state after a drain: by the shell after carrying out the drain's
/// actions, by the worker itself for a poll without actions ([`Publish`]).
struct Publisher {
    shared: Arc<GroupShared>,
    labels: super::group_metrics::GroupLabels,
    /// The replication lag per peer, registered once (a recorder lookup per drain of every
    /// group was measurable).
    lag_gauges: RefCell<BTreeMap<NodeId, metrics::Gauge>>,
    /// Where this node stands in the group's membership, as the shell last saw it.
    membership_state: Cell<MembershipState>,
    /// The shell waits on the core's state (membership changes to resolve).
    every_poll: Cell<bool>,
}

impl Publish for Publisher {
    /// The group's gauges and its shared snapshot (status pages, routing, the balancer).
    ///
    /// Runs after every drain of every group, so it avoids the allocations it can: the core's
    /// `status()` clones the membership and collects the progress, and replacing the snapshot
    /// dropped the previous copies (a 64-shard node spent ~11% of its Raft workers' time here,
    /// mostly cloning and dropping memberships). Only a leader has progress, read without
    /// `status()`; the snapshot is updated in place and its membership cloned only when it
    /// changed.
    fn publish(&self, core: &Raft) {
        let role = core.role();
        let last_index = core.last_index();
        let commit_index = core.commit_index();
        self.labels
            .gauge("conclave_raft_commit_index")
            .set(commit_index as f64);
        let applied = self.shared.applied.load(Ordering::Relaxed);
        self.labels
            .gauge("conclave_raft_applied_index")
            .set(applied as f64);
        self.labels
            .gauge("conclave_raft_log_entries")
            .set(core.entries().len() as f64);
        // The core keeps progress only while it leads (cleared when it steps down).
        let progress: Vec<(NodeId, LogIndex)> = core.match_indexes().collect();
        if role == Role::Leader {
            let mut lag_gauges = self.lag_gauges.borrow_mut();
            for &(peer, matched) in &progress {
                let labels = &self.labels;
                lag_gauges
                    .entry(peer)
                    .or_insert_with(|| {
                        labels.gauge_with("conclave_raft_replication_lag", "peer", peer.to_string())
                    })
                    .set(last_index.saturating_sub(matched) as f64);
            }
        }
        // The core knows it was removed as soon as the change is appended (the leader stops
        // replicating to it once the change commits, so it may never learn that).
        let membership_state = if core.removed() {
            MembershipState::Removed
        } else {
            self.membership_state.get()
        };
        let mut snap = self.shared.snapshot.write();
        snap.role = Some(role);
        snap.term = core.term();
        snap.leader = core.leader();
        snap.commit_index = commit_index;
        snap.last_index = last_index;
        if snap.membership != *core.membership() {
            snap.membership = core.membership().clone();
        }
        snap.progress = progress;
        snap.membership_state = membership_state;
    }

    fn every_poll(&self) -> bool {
        self.every_poll.get()
    }
}

/// The actor. See the module docs.
pub struct GroupActor<M: StateMachine> {
    deps: Arc<GroupDeps<M>>,
    core: Hosted,
    persist_queue: VecDeque<PersistRequest>,
    apply_queue: VecDeque<Entry>,
    /// Highest index ever handed to the apply queue (for re-sending after an applier restart).
    enqueued_upto: LogIndex,
    applier_seen: Option<Addr<ApplierActor<M>>>,
    /// Waiting for a restarted applier's applied index (applies are held meanwhile; Raft is
    /// not: the applier may be slow to reopen its machine).
    resyncing: bool,
    pump_scheduled: bool,
    /// Set while a worker's drain's actions are carried out: the next pump reports to the
    /// worker's cell once the persist requests are in its batch.
    drain_turn: bool,
    write_waiters: BTreeMap<LogIndex, (Term, WriteReply<M>)>,
    reads: HashMap<ReadId, (M::Query, ReadReply<M>)>,
    next_read: ReadId,
    was_leader: bool,
    /// A snapshot received from the leader and handed to the core, not yet adopted.
    staged: Option<SnapshotMeta>,
    /// A received snapshot the core is installing (adopted or being adopted, not yet
    /// restored): announcing it again changes nothing.
    installing: Option<SnapshotMeta>,
    /// Persists are held while a received snapshot moves into the store (it must be in place
    /// before the persist that makes it the group's base).
    adopting: bool,
    /// The received snapshot adopted into the store, for the core's `RestoreSnapshot`.
    adopted: Option<StoredSnapshot>,
    /// An installed snapshot the applier must restore before any later entry.
    pending_restore: Option<StoredSnapshot>,
    /// The applier is restoring a snapshot (applies wait).
    restoring: bool,
    /// A snapshot is being taken (one at a time).
    snapshot_running: bool,
    /// Who asked for the running snapshot, if someone did.
    snapshot_reply: Option<oneshot::Sender<Result<SnapshotInfo, SnapshotError>>>,
    /// When the running snapshot started.
    snapshot_started: Option<Instant>,
    /// Bytes of entries handed to the applier since the last snapshot started.
    bytes_since_snapshot: u64,
    /// Thresholds start no snapshot before this (set after a failure).
    snapshot_retry_at: Option<Instant>,
    /// This cycle's `(entries, log bytes)` thresholds ([`SnapshotPolicy::jittered`]).
    snapshot_thresholds: (u64, u64),
    /// The group's base snapshot (the newest this node took or started from).
    base: Option<StoredSnapshot>,
    /// Membership changes waiting to take effect.
    change_waiters: Vec<membership::ChangeWaiter>,
    /// The membership in force last seen.
    in_force: Option<Membership>,
    /// The members last handed to the peer set ([`MembershipTracker::span`]).
    followed: Option<Membership>,
    /// Whether this node is a member, not yet one, or removed.
    tracker: Option<MembershipTracker>,
    /// A `MarkMember` is on its way to the log store.
    marking: bool,
    /// The housekeeping pass is armed (only while someone waits: an idle group sets no timer).
    housekeeping: bool,
    /// Publishes the group's state (shared with the worker).
    publisher: Rc<Publisher>,
    /// The node's queue depths, registered once (a recorder lookup per drain of every group
    /// was measurable).
    depth_gauges: (metrics::Gauge, metrics::Gauge),
    _guard: ChildGuard,
}

/// What a group needs to build its core, gathered off the group's arbiter at start.
struct StartState {
    recovered: RecoveredGroup,
    applied: LogIndex,
    base: Option<StoredSnapshot>,
}

/// Why a group could not start.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("the {0} is not running")]
    Unavailable(&'static str),
    #[error("cannot recover the group's log: {0}")]
    Log(#[source] Arc<crate::storage::log_store::LogStoreError>),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// The size an entry counts for in `threshold_log_bytes`.
fn entry_bytes(e: &Entry) -> u64 {
    match &e.payload {
        EntryPayload::Command(bytes) => bytes.len() as u64 + 16,
        EntryPayload::Noop | EntryPayload::Membership(_) => 16,
    }
}

/// Recovers the group's log, its applier's index and its newest valid snapshot, and restores
/// the machine from that snapshot when the machine is behind it. A log compacted (or a
/// snapshot installed) beyond every valid snapshot is [`SnapshotError::MissingBase`].
async fn prepare_start<M: StateMachine>(deps: Arc<GroupDeps<M>>) -> Result<StartState, StartError> {
    let group = deps.group;
    let recovered = match deps.log_store.send(Recover { group }).await {
        Ok(r) => r.map_err(StartError::Log)?,
        Err(_) => return Err(StartError::Unavailable("log store")),
    };
    let applier = deps
        .applier
        .get()
        .ok_or(StartError::Unavailable("applier"))?;
    let mut applied = applier
        .send(AppliedIndex)
        .await
        .map_err(|_| StartError::Unavailable("applier"))?;
    let snapshotter = deps
        .snapshotter
        .get()
        .ok_or(StartError::Unavailable("snapshotter"))?;
    let base = snapshotter
        .send(NewestSnapshot)
        .await
        .map_err(|_| StartError::Unavailable("snapshotter"))??;
    let needed = recovered.needs_snapshot_at();
    if needed > 0 && base.as_ref().is_none_or(|s| s.meta.index < needed) {
        return Err(SnapshotError::MissingBase {
            group,
            needed,
            newest: base.as_ref().map(|s| s.meta.index),
            dir: deps.snapshots.dir().to_owned(),
        }
        .into());
    }
    if let Some(s) = base.as_ref().filter(|s| s.meta.index > applied) {
        tracing::info!(
            %group,
            applied,
            snapshot = s.meta.index,
            "the state machine is behind the group's snapshot; restoring it"
        );
        applied = applier
            .send(RestoreFrom {
                store: deps.snapshots.clone(),
                snapshot: s.clone(),
                // The group waits for it: as fast as the machine goes.
                pace_bytes_per_s: 0,
            })
            .await
            .map_err(|_| StartError::Unavailable("applier"))??;
    }
    Ok(StartState {
        recovered,
        applied,
        base,
    })
}

fn role_gauge(role: Role) -> f64 {
    match role {
        Role::Follower => 0.0,
        Role::PreCandidate | Role::Candidate => 1.0,
        Role::Leader => 2.0,
        Role::Learner => 3.0,
    }
}

impl<M: StateMachine> GroupActor<M> {
    /// A group actor; it restores its core from the log store and the applier when started.
    pub fn new(deps: Arc<GroupDeps<M>>, guard: ChildGuard) -> Self {
        let snapshot_thresholds = deps.snapshot_policy.jittered(rand::random());
        let (shared_state, labels) = (deps.shared.clone(), deps.labels.clone());
        let core = Hosted {
            cell: WorkerCell::current(deps.worker_cell),
            group: deps.group,
            epoch: deps.epoch,
            instance: None,
        };
        GroupActor {
            deps,
            core,
            persist_queue: VecDeque::new(),
            apply_queue: VecDeque::new(),
            enqueued_upto: 0,
            applier_seen: None,
            resyncing: false,
            pump_scheduled: false,
            drain_turn: false,
            write_waiters: BTreeMap::new(),
            reads: HashMap::new(),
            next_read: 1,
            was_leader: false,
            staged: None,
            installing: None,
            adopting: false,
            adopted: None,
            pending_restore: None,
            restoring: false,
            snapshot_running: false,
            snapshot_reply: None,
            snapshot_started: None,
            bytes_since_snapshot: 0,
            snapshot_retry_at: None,
            snapshot_thresholds,
            base: None,
            change_waiters: Vec::new(),
            in_force: None,
            followed: None,
            tracker: None,
            marking: false,
            housekeeping: false,
            publisher: Rc::new(Publisher {
                shared: shared_state,
                labels,
                lag_gauges: RefCell::new(BTreeMap::new()),
                membership_state: Cell::new(MembershipState::Member),
                every_poll: Cell::new(false),
            }),
            depth_gauges: (
                metrics::gauge!("conclave_mailbox_depth", "actor" => "group_persist_queue"),
                metrics::gauge!("conclave_mailbox_depth", "actor" => "group_apply_queue"),
            ),
            _guard: guard,
        }
    }

    fn now(&self) -> u64 {
        self.deps.epoch.elapsed().as_millis() as u64
    }

    fn leader_hint(&self, leader: Option<NodeId>) -> RequestError {
        match leader.and_then(|id| self.deps.peers.member(id)) {
            Some(m) => RequestError::NotLeader {
                leader: Some(LeaderHint {
                    id: m.id,
                    http: m.http,
                }),
            },
            None => RequestError::NoLeader {
                group: self.deps.group,
            },
        }
    }

    /// Has the worker drain the group's core once the messages already queued are handled
    /// (they batch together).
    fn schedule_drain(&self, _ctx: &mut Context<Self>) {
        self.core.request_drain();
    }

    /// Carries out what the worker's drain produced for this group.
    fn drain(&mut self, mut actions: Vec<Action>, ctx: &mut Context<Self>) {
        if self.core.instance.is_none() {
            return;
        }
        // Peers first: the membership a frame is about to reach is known to the peer set.
        self.follow_membership();
        self.mark_member(ctx);
        for action in actions.drain(..) {
            self.carry_out(action, ctx);
        }
        self.drain_turn = true;
        self.pump(ctx);
        self.publish();
        self.resolve_changes();
        self.maybe_snapshot(ctx);
    }

    /// Starts a snapshot when a threshold is crossed (and none is running).
    fn maybe_snapshot(&mut self, ctx: &mut Context<Self>) {
        if self.snapshot_running || self.resyncing {
            return;
        }
        if self.snapshot_retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let Some(snapshot_index) = self.core.as_ref().map(|c| c.snapshot().index) else {
            return;
        };
        // Counted from what the applier has applied (not what was handed to it), so a
        // snapshot started by the count always has something new to cover.
        let applied = self.deps.shared.applied.load(Ordering::Relaxed);
        let entries = applied.saturating_sub(snapshot_index);
        let image = self.base.as_ref().map_or(0, |b| b.len);
        if self.deps.snapshot_policy.due(
            entries,
            self.bytes_since_snapshot,
            image,
            self.snapshot_thresholds,
        ) {
            self.start_snapshot(ctx, None);
        }
    }

    /// Step 1: the applier syncs the machine and hands over its state at its applied index.
    fn start_snapshot(
        &mut self,
        ctx: &mut Context<Self>,
        reply: Option<oneshot::Sender<Result<SnapshotInfo, SnapshotError>>>,
    ) {
        let group = self.deps.group;
        if self.snapshot_running {
            if let Some(reply) = reply {
                let _ = reply.send(Err(SnapshotError::Busy { group }));
            }
            return;
        }
        let applier = match (self.core.as_ref(), self.deps.applier.get()) {
            (Some(_), Some(applier)) if !self.resyncing => applier,
            _ => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(SnapshotError::NotRunning { group }));
                }
                return;
            }
        };
        self.snapshot_running = true;
        self.snapshot_reply = reply;
        self.snapshot_started = Some(Instant::now());
        self.bytes_since_snapshot = 0;
        let store = self.deps.snapshots.clone();
        ctx.spawn(applier.send(TakeSnapshot { store }).into_actor(self).map(
            move |res, act, ctx| {
                let res = res.unwrap_or(Err(SnapshotError::Stopped {
                    group,
                    actor: "applier",
                }));
                act.snapshot_source_ready(res, ctx);
            },
        ));
    }

    /// Step 2: the core names the snapshot (term, membership); the snapshotter writes it.
    fn snapshot_source_ready(
        &mut self,
        res: Result<SnapshotSource, SnapshotError>,
        ctx: &mut Context<Self>,
    ) {
        let group = self.deps.group;
        let source = match res {
            Ok(source) => source,
            Err(e) => return self.snapshot_done(Err(e)),
        };
        let index = source.index();
        let Some(named) = self
            .core
            .as_ref()
            .map(|core| (index > core.snapshot().index).then(|| core.snapshot_meta(index)))
        else {
            return self.snapshot_done(Err(SnapshotError::NotRunning { group }));
        };
        let Some(named) = named else {
            // Nothing applied since the latest snapshot: that one is the answer.
            let latest = self.deps.shared.last_snapshot.read().clone();
            let info = latest.unwrap_or(SnapshotInfo {
                group,
                index: 0,
                term: 0,
                bytes: 0,
                taken: false,
                duration_ms: 0,
            });
            return self.snapshot_done(Ok(SnapshotInfo {
                taken: false,
                duration_ms: 0,
                ..info
            }));
        };
        let meta = match named {
            Ok(meta) => meta,
            Err(e) => return self.snapshot_done(Err(e.into())),
        };
        let Some(snapshotter) = self.deps.snapshotter.get() else {
            return self.snapshot_done(Err(SnapshotError::NotRunning { group }));
        };
        ctx.spawn(
            snapshotter
                .send(WriteSnapshot { meta, source })
                .into_actor(self)
                .map(move |res, act, ctx| {
                    let res = res.unwrap_or(Err(SnapshotError::Stopped {
                        group,
                        actor: "snapshotter",
                    }));
                    act.snapshot_written(res, ctx);
                }),
        );
    }

    /// Step 3: the snapshot is durable; the core compacts its log (and announces it).
    fn snapshot_written(
        &mut self,
        res: Result<StoredSnapshot, SnapshotError>,
        ctx: &mut Context<Self>,
    ) {
        let group = self.deps.group;
        let stored = match res {
            Ok(s) => s,
            Err(e) => return self.snapshot_done(Err(e)),
        };
        #[cfg(feature = "fault-injection")]
        if std::env::var_os(CRASH_AFTER_SNAPSHOT_FILE_ENV).is_some() {
            tracing::error!(
                %group,
                index = stored.meta.index,
                "fault injection: crashing between the snapshot file and the log compaction"
            );
            std::process::abort();
        }
        let now = self.now();
        let taken = self
            .core
            .as_mut()
            .map(|mut core| core.snapshot_taken(now, stored.meta.clone()));
        match taken {
            None => return self.snapshot_done(Err(SnapshotError::NotRunning { group })),
            Some(Err(e)) => return self.snapshot_done(Err(e.into())),
            Some(Ok(_)) => {}
        }
        let duration = self
            .snapshot_started
            .map_or(Duration::ZERO, |t| t.elapsed());
        let info = SnapshotInfo::of(group, &stored, true, duration.as_millis() as u64);
        self.deps
            .labels
            .counter("conclave_snapshot_taken_total")
            .increment(1);
        self.deps
            .labels
            .gauge("conclave_snapshot_bytes")
            .set(stored.len as f64);
        self.deps
            .labels
            .gauge("conclave_snapshot_index")
            .set(stored.meta.index as f64);
        self.deps
            .labels
            .histogram("conclave_snapshot_duration_seconds")
            .record(duration.as_secs_f64());
        tracing::info!(
            %group,
            index = stored.meta.index,
            term = stored.meta.term,
            bytes = stored.len,
            ms = info.duration_ms,
            "snapshot taken"
        );
        *self.deps.shared.last_snapshot.write() = Some(info.clone());
        self.base = Some(stored);
        self.snapshot_done(Ok(info));
        // Carries out the core's `Compacted`.
        self.schedule_drain(ctx);
    }

    /// Ends the running snapshot: answers whoever asked, and backs off after a failure.
    fn snapshot_done(&mut self, result: Result<SnapshotInfo, SnapshotError>) {
        self.snapshot_running = false;
        self.snapshot_started = None;
        self.snapshot_thresholds = self.deps.snapshot_policy.jittered(rand::random());
        match &result {
            Ok(_) => self.snapshot_retry_at = None,
            Err(e) => {
                tracing::error!(group = %self.deps.group, error = %e, "snapshot failed");
                self.deps
                    .labels
                    .counter("conclave_snapshot_failed_total")
                    .increment(1);
                self.snapshot_retry_at = Some(Instant::now() + SNAPSHOT_RETRY_AFTER);
            }
        }
        if let Some(reply) = self.snapshot_reply.take() {
            let _ = reply.send(result);
        }
    }

    /// The core dropped its entries before `first_index`; the log store may drop them too.
    /// They are covered by a snapshot that is durable (written, fsynced, renamed) and by a
    /// state machine synced at that snapshot's index.
    fn compact_log_store(&mut self, first_index: LogIndex) {
        let index = first_index.saturating_sub(1);
        let Some(core) = self.core.as_ref() else {
            return;
        };
        if index == 0 {
            return;
        }
        // The core keeps the term of its compaction point.
        let term = core.entry_term(index).unwrap_or(0);
        drop(core);
        // With the worker's batch, after the persist requests before it (a failure is the
        // store's: reported failed, later persists fail and stop the group).
        self.core.compact(&self.deps.log_store, index, term);
    }

    fn carry_out(&mut self, action: Action, ctx: &mut Context<Self>) {
        match action {
            // The worker sends messages (one frame per peer) and owns the timer.
            Action::Send(_) | Action::SetTimer { .. } => {}
            Action::Persist(req) if req.snapshot.is_some() => {
                // An install (`install_snapshot` below): the received image moves into the
                // snapshot store first, then the persist makes it the group's base. Persists
                // are held meanwhile so they stay in order.
                let meta = req.snapshot.clone().unwrap_or_default();
                self.persist_queue.push_back(req);
                if self.staged.take().as_ref() == Some(&meta) {
                    self.installing = Some(meta.clone());
                    self.adopt(meta, ctx);
                }
            }
            Action::Persist(req) => self.persist_queue.push_back(req),
            Action::Apply(entries) => {
                if let Some(last) = entries.last() {
                    self.enqueued_upto = self.enqueued_upto.max(last.index);
                }
                self.bytes_since_snapshot += entries.iter().map(entry_bytes).sum::<u64>();
                self.apply_queue.extend(entries);
            }
            Action::ReadReady { id, index } => {
                let Some((query, reply)) = self.reads.remove(&id) else {
                    return;
                };
                let read = ReadAt {
                    index,
                    query,
                    reply,
                };
                match self.deps.applier.get() {
                    Some(applier) => {
                        if let Err(e) = applier.try_send(read) {
                            let read = match e {
                                SendError::Full(r) | SendError::Closed(r) => r,
                            };
                            metrics::counter!("conclave_mailbox_rejected_total", "actor" => "applier")
                                .increment(1);
                            let _ = read.reply.send(Err(RequestError::Overloaded));
                        }
                    }
                    None => {
                        let _ = read.reply.send(Err(RequestError::Overloaded));
                    }
                }
            }
            Action::ReadFailed { id, error } => {
                if let Some((_, reply)) = self.reads.remove(&id) {
                    let _ = reply.send(Err(self.read_error(error)));
                }
            }
            Action::RoleChanged { role, term, leader } => self.role_changed(role, term, leader),
            Action::SendSnapshot { to, term, meta } => self.send_snapshot(to, term, meta, ctx),
            Action::RestoreSnapshot(meta) => {
                // The install is durable: entries it covers are not applied, the machine is
                // switched to the snapshot before anything after it.
                self.apply_queue.retain(|e| e.index > meta.index);
                self.enqueued_upto = self.enqueued_upto.max(meta.index);
                self.installing = None;
                match self.adopted.take() {
                    Some(stored) if stored.meta == meta => {
                        self.deps
                            .labels
                            .counter("conclave_snapshot_installed_total")
                            .increment(1);
                        tracing::info!(
                            group = %self.deps.group,
                            index = meta.index,
                            term = meta.term,
                            "snapshot installed; restoring the state machine"
                        );
                        self.pending_restore = Some(stored);
                    }
                    _ => {
                        tracing::error!(group = %self.deps.group, index = meta.index, "core asked to restore a snapshot this node did not adopt; stopping the group");
                        ctx.stop();
                    }
                }
            }
            Action::Compacted { first_index } => self.compact_log_store(first_index),
        }
    }

    /// Streams the snapshot `meta` to `to` on the node's sender; a transfer that cannot start
    /// or ends without delivering it is reported to the core (which retries after `to` next
    /// answers a heartbeat).
    fn send_snapshot(
        &mut self,
        to: NodeId,
        term: Term,
        meta: SnapshotMeta,
        ctx: &mut Context<Self>,
    ) {
        let t = &self.deps.transfer;
        let Some(link) = (t.addrs)(to).map(|addr| t.endpoint.peer(to, addr)) else {
            tracing::warn!(
                group = %self.deps.group,
                %to,
                "no link to the peer that needs a snapshot"
            );
            self.send_failed(to, ctx);
            return;
        };
        let addr = ctx.address();
        let index = meta.index;
        let req = SendRequest {
            group: self.deps.group,
            to,
            term,
            meta,
            dir: t.dir.clone(),
            link,
            done: Box::new(move |outcome| {
                addr.do_send(SendDone { to, index, outcome });
            }),
        };
        if let Err(e) = t.sender.start(req) {
            tracing::debug!(group = %self.deps.group, %to, index, error = %e, "snapshot transfer not started");
            self.send_failed(to, ctx);
        }
    }

    fn send_failed(&mut self, to: NodeId, ctx: &mut Context<Self>) {
        let now = self.now();
        if let Some(mut core) = self.core.as_mut() {
            core.snapshot_send_failed(now, to);
        }
        self.schedule_drain(ctx);
    }

    /// Moves the received snapshot `meta` into the store (on the receiver's arbiter), holding
    /// persists until it is there. A failure stops the group: the install is never reported
    /// durable, so nothing is acknowledged.
    fn adopt(&mut self, meta: SnapshotMeta, ctx: &mut Context<Self>) {
        self.adopting = true;
        let msg = Adopt {
            group: self.deps.group,
            meta,
        };
        ctx.spawn(
            self.deps
                .transfer
                .receiver
                .send(msg)
                .into_actor(self)
                .map(|res, act, ctx| {
                    act.adopting = false;
                    match res {
                        Ok(Ok(stored)) => {
                            // The group's base from now on (a restarted applier behind the
                            // compacted log is restored from it).
                            act.base = Some(stored.clone());
                            act.adopted = Some(stored);
                            act.pump(ctx);
                        }
                        Ok(Err(e)) => {
                            tracing::error!(group = %act.deps.group, error = %e, "cannot move a received snapshot into the store; stopping the group");
                            ctx.stop();
                        }
                        Err(_) => {
                            tracing::error!(group = %act.deps.group, "snapshot receiver gone; stopping the group");
                            ctx.stop();
                        }
                    }
                }),
        );
    }

    /// Sends the applier the installed snapshot to restore (applies wait until it is done).
    fn restore(
        &mut self,
        stored: StoredSnapshot,
        applier: Addr<ApplierActor<M>>,
        ctx: &mut Context<Self>,
    ) {
        self.restoring = true;
        // Received from the leader. A learner's catch-up is background work (no quorum
        // waits for it): paced, so its import does not starve the voters' WAL fsyncs on a
        // shared disk. A voter restores as fast as it can: until it has, the group has one
        // replica fewer (docs/node.md "Snapshots").
        let learner = self
            .core
            .as_ref()
            .is_some_and(|c| !c.membership().is_voter(self.deps.peers.id()));
        let msg = RestoreFrom {
            store: self.deps.snapshots.clone(),
            snapshot: stored,
            pace_bytes_per_s: if learner {
                self.deps.install_bytes_per_s
            } else {
                0
            },
        };
        ctx.spawn(applier.send(msg).into_actor(self).map(|res, act, ctx| {
            act.restoring = false;
            match res {
                Ok(Ok(index)) => {
                    tracing::info!(group = %act.deps.group, index, "state machine restored from the installed snapshot");
                    act.pump(ctx);
                }
                Ok(Err(e)) => {
                    // The machine refused the image and changed nothing; a restarted group
                    // restores from its base snapshot at start.
                    tracing::error!(group = %act.deps.group, error = %e, "cannot restore the installed snapshot; stopping the group");
                    ctx.stop();
                }
                Err(_) => {
                    tracing::error!(group = %act.deps.group, "applier gone while restoring a snapshot; stopping the group");
                    ctx.stop();
                }
            }
        }));
    }

    fn read_error(&self, error: ReadError) -> RequestError {
        match error {
            ReadError::NotLeader { leader } => self.leader_hint(leader),
            ReadError::NotReady | ReadError::LeadershipLost => RequestError::NoLeader {
                group: self.deps.group,
            },
        }
    }

    fn role_changed(&mut self, role: Role, term: Term, leader: Option<NodeId>) {
        let id = self.deps.raft.id;
        if role == Role::Leader && !self.was_leader {
            tracing::info!(node = %id, group = %self.deps.group, term, "became leader");
            self.deps
                .labels
                .counter("conclave_raft_leader_elections_total")
                .increment(1);
            if self.deps.labels.is_shard() {
                metrics::counter!("conclave_shard_leader_elections_total").increment(1);
            }
        } else if role != Role::Leader && self.was_leader {
            tracing::info!(
                node = %id,
                group = %self.deps.group,
                term,
                ?leader,
                "stepped down"
            );
        } else {
            tracing::debug!(
                node = %id,
                group = %self.deps.group,
                term,
                ?role,
                ?leader,
                "role changed"
            );
        }
        self.was_leader = role == Role::Leader;
        self.deps
            .labels
            .gauge("conclave_raft_role")
            .set(role_gauge(role));
        self.deps
            .labels
            .gauge("conclave_raft_term")
            .set(term as f64);
    }

    /// Moves queued persist requests and committed entries on, as far as mailboxes allow.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let mut blocked = false;
        // While a received snapshot moves into the store, nothing is persisted (the adoption
        // pumps again when done).
        while !self.adopting && !self.persist_queue.is_empty() {
            if !self.core.persist_room() {
                blocked = true;
                break;
            }
            // The worker sends every shell's requests of a drain as one batch and hands each
            // core the answer itself (`FromWorker::PersistFailed` if it failed).
            if let Some(req) = self.persist_queue.pop_front() {
                self.core.persist(&self.deps.log_store, req);
            }
        }
        if std::mem::take(&mut self.drain_turn) {
            // Persist requests leave before committed entries do (see `shell_ran`).
            self.core.shell_ran();
        }
        blocked |= self.pump_applies(ctx);
        self.depth_gauges.0.set(self.persist_queue.len() as f64);
        self.depth_gauges.1.set(self.apply_queue.len() as f64);
        if blocked && !self.pump_scheduled {
            self.pump_scheduled = true;
            ctx.run_later(Duration::from_millis(1), |act, ctx| {
                act.pump_scheduled = false;
                act.pump(ctx);
            });
        }
    }

    /// Returns true when blocked (retry later).
    fn pump_applies(&mut self, ctx: &mut Context<Self>) -> bool {
        if self.restoring || self.resyncing {
            return false;
        }
        if self.apply_queue.is_empty() && self.pending_restore.is_none() {
            return false;
        }
        let Some(applier) = self.deps.applier.get() else {
            return true;
        };
        if let Some(stored) = self.pending_restore.take() {
            // Before anything after the snapshot (the applier handles messages in order, but
            // the answer is awaited so a failed restore applies nothing after it).
            self.restore(stored, applier, ctx);
            return false;
        }
        if self.applier_seen.as_ref() != Some(&applier) {
            let first_instance = self.applier_seen.is_none();
            self.applier_seen = Some(applier.clone());
            if !first_instance {
                // A restarted applier: ask where its machine stands, then re-send from there.
                // Not `ctx.wait`: the answer comes after the machine is reopened on the
                // applier's arbiter, which may take long (or stall); Raft must go on meanwhile.
                self.resyncing = true;
                ctx.spawn(applier.send(AppliedIndex).into_actor(self).map(
                    |res, act, ctx| match res {
                        Ok(applied) => act.resync_from(applied, ctx),
                        Err(_) => {
                            act.resyncing = false;
                            act.pump(ctx);
                        }
                    },
                ));
                return false;
            }
        }
        while !self.apply_queue.is_empty() {
            let n = self.apply_queue.len().min(APPLY_BATCH);
            let entries: Vec<Entry> = self.apply_queue.drain(..n).collect();
            let (first, last) = (entries[0].index, entries[entries.len() - 1].index);
            let later = self.write_waiters.split_off(&(last + 1));
            let waiting = std::mem::replace(&mut self.write_waiters, later);
            let waiters = waiting
                .into_iter()
                .filter(|(i, _)| *i >= first)
                .map(|(i, (t, r))| (i, t, r))
                .collect();
            if let Err(e) = applier.try_send(ApplyBatch { entries, waiters }) {
                let batch = match e {
                    SendError::Full(b) | SendError::Closed(b) => b,
                };
                for (i, t, r) in batch.waiters {
                    self.write_waiters.insert(i, (t, r));
                }
                for entry in batch.entries.into_iter().rev() {
                    self.apply_queue.push_front(entry);
                }
                return true;
            }
        }
        false
    }

    /// A restarted applier stands at `applied`. If the core's log no longer reaches back to
    /// it (compacted behind a snapshot; e.g. an in-memory machine restarts empty), the machine
    /// is restored from the group's base snapshot first; then the entries after it are
    /// re-sent.
    fn resync_from(&mut self, applied: LogIndex, ctx: &mut Context<Self>) {
        let group = self.deps.group;
        let first = self.core.as_ref().map_or(1, |c| c.first_index());
        let base = self.base.clone().filter(|b| b.meta.index > applied);
        match (applied + 1 < first, base, self.deps.applier.get()) {
            (true, Some(base), Some(applier)) => {
                tracing::warn!(
                    %group,
                    applied,
                    snapshot = base.meta.index,
                    "restarted applier is behind the compacted log; restoring it from the snapshot"
                );
                let store = self.deps.snapshots.clone();
                ctx.spawn(
                    applier
                        .send(RestoreFrom {
                            store,
                            snapshot: base,
                            // A restarted applier: the group waits for it.
                            pace_bytes_per_s: 0,
                        })
                        .into_actor(self)
                        .map(move |res, act, ctx| {
                            act.resyncing = false;
                            match res {
                                Ok(Ok(restored)) => act.resync_applies(restored),
                                Ok(Err(e)) => {
                                    // The supervisor restarts the applier and this runs again.
                                    tracing::error!(%group, error = %e, "restoring the restarted applier failed");
                                }
                                Err(_) => {}
                            }
                            act.pump(ctx);
                        }),
                );
            }
            _ => {
                self.resyncing = false;
                self.resync_applies(applied);
                self.pump(ctx);
            }
        }
    }

    fn resync_applies(&mut self, applied: LogIndex) {
        let Some(core) = self.core.as_ref() else {
            return;
        };
        tracing::warn!(
            group = %self.deps.group,
            applied,
            upto = self.enqueued_upto,
            "applier restarted; re-sending committed entries"
        );
        self.apply_queue = core
            .entries()
            .iter()
            .filter(|e| e.index > applied && e.index <= self.enqueued_upto)
            .cloned()
            .collect();
    }

    /// Publishes the core's state after a drain ([`Publisher`]), with this node's place in the
    /// membership as the shell sees it; tells the worker whether the shell must see every
    /// poll (a membership change waits for the core's commit).
    fn publish(&mut self) {
        let Some(core) = self.core.as_ref() else {
            return;
        };
        self.share_membership_state();
        self.publisher
            .every_poll
            .set(!self.change_waiters.is_empty());
        self.publisher.publish(&core);
    }

    /// Hands the publisher this node's place in the membership as the tracker sees it (the
    /// worker publishes polls without actions with it, without asking the shell).
    fn share_membership_state(&self) {
        let state = self
            .tracker
            .as_ref()
            .map_or(MembershipState::Member, MembershipTracker::state);
        self.publisher.membership_state.set(state);
    }

    /// Keeps the membership state as the core's membership in force changes (appended,
    /// committed or not, or reverted by a truncation) and commits, and hands the peer set the
    /// nodes to reach: those of the membership in force and of every one not yet superseded by
    /// a committed one (a node being removed is reached until its removal commits).
    fn follow_membership(&mut self) {
        let Some(core) = self.core.as_ref() else {
            return;
        };
        let m = core.membership();
        let mut changed = false;
        if self.in_force.as_ref() != Some(m) {
            changed = true;
            // The entry in force is the latest membership entry of the log (or the snapshot's
            // or bootstrap one, index of the snapshot or 0): found from the end, rarely.
            let index = core
                .entries()
                .iter()
                .rev()
                .find_map(|e| match &e.payload {
                    EntryPayload::Membership(x) if x == m => Some(e.index),
                    _ => None,
                })
                .unwrap_or(core.snapshot().index);
            if let Some(t) = self.tracker.as_mut() {
                t.appended(index, m.clone());
            }
            self.in_force = Some(m.clone());
        }
        if let Some(t) = self.tracker.as_mut() {
            let before = t.state();
            changed |= t.committed_to(core.commit_index());
            if changed {
                let span = t.span();
                if self.followed.as_ref() != Some(&span) {
                    self.deps.peers.follow(self.deps.group, &span);
                    self.followed = Some(span);
                }
            }
            let now = t.state();
            if now != before {
                tracing::warn!(
                    node = %self.deps.raft.id,
                    group = %self.deps.group,
                    state = now.as_str(),
                    "this node's place in the group's membership changed"
                );
            }
        }
    }

    /// Once a committed membership named this node, marks it durably as a member of the group
    /// (on the log store's arbiter), so a later removal survives compaction and restarts.
    fn mark_member(&mut self, ctx: &mut Context<Self>) {
        let group = self.deps.group;
        if self.marking
            || !self
                .tracker
                .as_ref()
                .is_some_and(MembershipTracker::was_member)
            || self.deps.member_marks.contains(group)
        {
            return;
        }
        self.marking = true;
        let req = self.deps.log_store.send(MarkMember {
            group,
            marks: self.deps.member_marks.clone(),
        });
        ctx.spawn(req.into_actor(self).map(|result, act, ctx| {
            act.marking = false;
            if !matches!(result, Ok(Ok(()))) {
                // Logged by the log store; asked again after a pause (a full disk may clear).
                ctx.run_later(Duration::from_secs(1), |act, ctx| act.mark_member(ctx));
            }
        }));
    }

    /// Forgets, every second while any are waiting, the write and read waiters whose clients
    /// gave up.
    fn arm_housekeeping(&mut self, ctx: &mut Context<Self>) {
        if self.housekeeping || (self.write_waiters.is_empty() && self.reads.is_empty()) {
            return;
        }
        self.housekeeping = true;
        ctx.run_later(Duration::from_secs(1), |act, ctx| {
            act.housekeeping = false;
            act.write_waiters.retain(|_, (_, r)| !r.is_closed());
            act.reads.retain(|_, (_, r)| !r.is_closed());
            act.arm_housekeeping(ctx);
        });
    }

    fn backlog(&self) -> usize {
        self.persist_queue.len() + self.apply_queue.len()
    }
}

impl<M: StateMachine> Actor for GroupActor<M> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(8192);
        if self.core.cell.is_none() {
            tracing::error!(
                group = %self.deps.group,
                "group started off a raft worker's arbiter"
            );
            ctx.stop();
            return;
        }
        let deps = self.deps.clone();
        // Nothing else is handled until the core is restored (ctx.wait). The log, the
        // snapshot files and a restore are read on their own actors' arbiters.
        ctx.wait(prepare_start(deps).into_actor(self).map(|res, act, ctx| {
            let group = act.deps.group;
            let StartState {
                recovered,
                applied,
                base,
            } = match res {
                Ok(state) => state,
                Err(StartError::Snapshot(e)) => {
                    // A log without the snapshot it needs, or a snapshot that cannot be
                    // restored: the replica cannot be rebuilt by restarting.
                    tracing::error!(%group, error = %e, "cannot start the group");
                    act.deps.health.failed(
                        crate::storage::health::StorageComponent::Snapshots(group),
                        crate::storage::health::StorageError::Snapshot(Arc::new(e)),
                    );
                    ctx.stop();
                    return;
                }
                Err(e) => {
                    tracing::error!(%group, error = %e, "cannot start the group");
                    ctx.stop();
                    return;
                }
            };
            let restore = RestoreState {
                hard_state: recovered.hard_state,
                entries: recovered.entries,
                applied,
                base_membership: act.deps.base_membership.clone(),
                // The newest valid snapshot (the machine is at or past it); entries it covers
                // are ignored by the core.
                snapshot: base.as_ref().map(|s| s.meta.clone()),
            };
            let seed = act.deps.raft.id.get() ^ (group.get() << 32) ^ act.now();
            // Heartbeats are the worker's (coalesced, one beat for every group).
            let config = raft::Host::group_config(&act.deps.raft, act.deps.raft.id, group);
            match Raft::new(config, restore, seed, act.now()) {
                Ok(core) => {
                    tracing::info!(
                        node = %act.deps.raft.id,
                        %group,
                        term = core.term(),
                        last_index = core.last_index(),
                        applied,
                        snapshot = base.as_ref().map_or(0, |s| s.meta.index),
                        "group started"
                    );
                    if let Some(s) = &base {
                        *act.deps.shared.last_snapshot.write() =
                            Some(SnapshotInfo::of(group, s, false, 0));
                        act.deps
                            .labels
                            .gauge("conclave_snapshot_index")
                            .set(s.meta.index as f64);
                        act.deps
                            .labels
                            .gauge("conclave_snapshot_bytes")
                            .set(s.len as f64);
                    }
                    let log: Vec<(LogIndex, Membership)> = core
                        .entries()
                        .iter()
                        .filter_map(|e| match &e.payload {
                            EntryPayload::Membership(m) => Some((e.index, m.clone())),
                            _ => None,
                        })
                        .collect();
                    let members = if core.snapshot().index > 0 {
                        core.snapshot().membership.clone()
                    } else {
                        act.deps.base_membership.clone()
                    };
                    let mut tracker = MembershipTracker::new(
                        act.deps.raft.id,
                        &members,
                        &log,
                        core.commit_index(),
                    );
                    if act.deps.member_marks.contains(group) {
                        // The log that named this node may be compacted away.
                        tracker.was_a_member();
                    }
                    act.tracker = Some(tracker);
                    act.share_membership_state();
                    let mut core = core;
                    if act.deps.shared.drained.load(Ordering::Relaxed) {
                        // A restarted group actor of a drained node stays drained.
                        let now = act.now();
                        if core.set_drained(now, true).is_err() {
                            act.deps.shared.drained.store(false, Ordering::Relaxed);
                        }
                    }
                    act.base = base;
                    act.enqueued_upto = applied;
                    act.applier_seen = act.deps.applier.get();
                    let shell = ctx.address().recipient();
                    let publish: Rc<dyn Publish> = act.publisher.clone();
                    if let Err(e) = act.core.install(core, shell, publish) {
                        tracing::error!(%group, error = %e, "cannot host the raft core");
                        ctx.stop();
                    }
                }
                Err(e) => {
                    tracing::error!(%group, error = %e, "cannot restore the raft core");
                    ctx.stop();
                }
            }
        }));
    }
}

impl<M: StateMachine> Handler<FromWorker> for GroupActor<M> {
    type Result = ();

    fn handle(&mut self, msg: FromWorker, ctx: &mut Context<Self>) {
        match msg {
            FromWorker::Actions(actions) => self.drain(actions, ctx),
            FromWorker::PersistFailed { seq, error } => {
                match error {
                    Some(e) => {
                        tracing::error!(group = %self.deps.group, seq, error = %e, "persist failed; stopping the group")
                    }
                    None => {
                        tracing::error!(group = %self.deps.group, seq, "log store gone; stopping the group")
                    }
                }
                ctx.stop();
            }
            FromWorker::Restart => {
                tracing::warn!(
                    group = %self.deps.group,
                    "the group's raft worker restarted; restarting the group from storage"
                );
                ctx.stop();
            }
        }
    }
}

impl<M: StateMachine> Handler<Propose<M>> for GroupActor<M> {
    type Result = ();

    fn handle(&mut self, msg: Propose<M>, ctx: &mut Context<Self>) {
        if self.backlog() > BACKLOG_LIMIT {
            let _ = msg.reply.send(Err(RequestError::Overloaded));
            return;
        }
        let now = self.now();
        let Some(mut core) = self.core.as_mut() else {
            let _ = msg.reply.send(Err(RequestError::NoLeader {
                group: self.deps.group,
            }));
            return;
        };
        let proposed = core.propose(now, msg.command);
        drop(core);
        match proposed {
            Ok(p) => {
                self.deps
                    .labels
                    .counter("conclave_raft_proposals_total")
                    .increment(1);
                if self.deps.labels.is_shard() {
                    metrics::counter!("conclave_shard_proposals_total").increment(1);
                }
                self.write_waiters.insert(p.index, (p.term, msg.reply));
                self.schedule_drain(ctx);
                self.arm_housekeeping(ctx);
            }
            Err(ProposeError::NotLeader { leader }) => {
                let _ = msg.reply.send(Err(self.leader_hint(leader)));
            }
            Err(_) => {
                let _ = msg.reply.send(Err(RequestError::NoLeader {
                    group: self.deps.group,
                }));
            }
        }
    }
}

impl<M: StateMachine> Handler<Read<M>> for GroupActor<M> {
    type Result = ();

    fn handle(&mut self, msg: Read<M>, ctx: &mut Context<Self>) {
        let now = self.now();
        let id = self.next_read;
        self.next_read += 1;
        let Some(mut core) = self.core.as_mut() else {
            let _ = msg.reply.send(Err(RequestError::NoLeader {
                group: self.deps.group,
            }));
            return;
        };
        let read = core.read(now, id, msg.consistency);
        drop(core);
        match read {
            Ok(()) => {
                self.reads.insert(id, (msg.query, msg.reply));
                self.schedule_drain(ctx);
                self.arm_housekeeping(ctx);
            }
            Err(e) => {
                let _ = msg.reply.send(Err(self.read_error(e)));
            }
        }
    }
}

impl<M: StateMachine> Handler<TakeSnapshotNow> for GroupActor<M> {
    type Result = ();

    fn handle(&mut self, msg: TakeSnapshotNow, ctx: &mut Context<Self>) {
        self.start_snapshot(ctx, Some(msg.reply));
    }
}

impl<M: StateMachine> Handler<TransferLeader> for GroupActor<M> {
    type Result = ();

    fn handle(&mut self, msg: TransferLeader, ctx: &mut Context<Self>) {
        let now = self.now();
        let result = match self.core.as_mut() {
            Some(mut core) => match core.transfer_leader(now, msg.to) {
                Ok(()) => Ok(()),
                Err(raft::TransferError::NotLeader { leader }) => Err(self.leader_hint(leader)),
                Err(raft::TransferError::NotAVoter(id)) => Err(RequestError::NotAVoter(id)),
            },
            None => Err(RequestError::NoLeader {
                group: self.deps.group,
            }),
        };
        let _ = msg.reply.send(result);
        self.schedule_drain(ctx);
    }
}

impl<M: StateMachine> Handler<SetDrained> for GroupActor<M> {
    type Result = ();

    fn handle(&mut self, msg: SetDrained, ctx: &mut Context<Self>) {
        let now = self.now();
        let result = match self.core.as_mut() {
            Some(mut core) => match core.set_drained(now, msg.drained) {
                Ok(target) => {
                    self.deps
                        .shared
                        .drained
                        .store(msg.drained, Ordering::Relaxed);
                    tracing::warn!(
                        node = %self.deps.raft.id,
                        group = %self.deps.group,
                        drained = msg.drained,
                        hand_off_to = ?target,
                        "drain state changed"
                    );
                    Ok(target)
                }
                Err(raft::DrainError::NoOtherVoter) => Err(RequestError::CannotDrain {
                    id: self.deps.raft.id,
                    group: self.deps.group,
                }),
            },
            None => Err(RequestError::NoLeader {
                group: self.deps.group,
            }),
        };
        let _ = msg.reply.send(result);
        self.schedule_drain(ctx);
    }
}

impl<M: StateMachine> Handler<SnapshotReceived> for GroupActor<M> {
    type Result = ();

    fn handle(&mut self, msg: SnapshotReceived, ctx: &mut Context<Self>) {
        let now = self.now();
        let Some(mut core) = self.core.as_mut() else {
            return;
        };
        if self.installing.as_ref() == Some(&msg.meta) {
            // The same image announced again (a repeated last chunk) while it is installed.
            return;
        }
        tracing::info!(
            group = %self.deps.group,
            from = %msg.from,
            index = msg.meta.index,
            term = msg.meta.term,
            "installing a snapshot received from the leader"
        );
        // The core decides (stale term, stale snapshot, Raft §7); if it installs, it emits the
        // persist naming the snapshot, which adopts the staged image first.
        self.staged = Some(msg.meta.clone());
        core.install_snapshot(now, msg.from, msg.term, msg.meta);
        self.schedule_drain(ctx);
    }
}

impl<M: StateMachine> Handler<SendDone> for GroupActor<M> {
    type Result = ();

    fn handle(&mut self, msg: SendDone, ctx: &mut Context<Self>) {
        if let Err(e) = msg.outcome {
            tracing::warn!(group = %self.deps.group, peer = %msg.to, index = msg.index, error = %e, "snapshot transfer failed");
            self.send_failed(msg.to, ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SnapshotPolicy;

    #[test]
    fn jittered_thresholds_stay_within_their_percentage() {
        let policy = SnapshotPolicy {
            threshold_entries: 10_000,
            threshold_log_bytes: 64 << 20,
            jitter_pct: 20,
            log_image_pct: 0,
        };
        assert_eq!(policy.jittered(0.0), (10_000, 64 << 20));
        assert_eq!(policy.jittered(0.5), (11_000, (64 << 20) + (64 << 20) / 10));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..10_000 {
            let (entries, bytes) = policy.jittered(rand::random());
            assert!((10_000..=12_000).contains(&entries), "{entries}");
            assert!(
                ((64 << 20)..=(64 << 20) * 6 / 5).contains(&bytes),
                "{bytes}"
            );
            seen.insert(entries / 200);
        }
        // Spread over the whole range (ten bins of 200 entries), not stuck at one end.
        assert_eq!(seen.len(), 10, "{seen:?}");
        // Out-of-range draws are clamped; a draw that is not a number adds nothing.
        assert_eq!(policy.jittered(7.0), (12_000, (64 << 20) * 6 / 5));
        assert_eq!(policy.jittered(f64::NAN), (10_000, 64 << 20));
    }

    #[test]
    fn no_jitter_and_disabled_triggers_stay_as_configured() {
        let off = SnapshotPolicy {
            threshold_entries: 0,
            threshold_log_bytes: 5_000,
            jitter_pct: 0,
            log_image_pct: 0,
        };
        assert_eq!(off.jittered(0.9), (0, 5_000));
        let disabled = SnapshotPolicy {
            threshold_entries: 0,
            threshold_log_bytes: 0,
            jitter_pct: 100,
            log_image_pct: 0,
        };
        assert_eq!(disabled.jittered(0.9), (0, 0));
        let huge = SnapshotPolicy {
            threshold_entries: u64::MAX,
            threshold_log_bytes: 1,
            jitter_pct: 100,
            log_image_pct: 0,
        };
        assert_eq!(huge.jittered(0.99).0, u64::MAX);
    }

    #[test]
    fn a_large_image_holds_the_next_snapshot_back_until_its_share_of_log_is_applied() {
        let policy = SnapshotPolicy {
            threshold_entries: 10_000,
            threshold_log_bytes: 64 << 20,
            jitter_pct: 0,
            log_image_pct: 25,
        };
        let t = policy.jittered(0.0);
        const GIB: u64 = 1 << 30;
        // No image yet, or a small one: the thresholds alone decide.
        assert!(policy.due(10_000, 10 << 20, 0, t));
        assert!(policy.due(10_000, 10 << 20, 8 << 20, t));
        assert!(!policy.due(9_999, 10 << 20, 0, t));
        assert!(policy.due(1, 64 << 20, 0, t));
        // 1 GiB of state: 10,000 entries of 1 KiB are not enough, a quarter of it is.
        assert!(!policy.due(10_000, 10 << 20, GIB, t));
        assert!(!policy.due(200_000, GIB / 4 - 1, GIB, t));
        assert!(policy.due(200_000, GIB / 4, GIB, t));
        // The floor never fires on its own: a threshold must be crossed too.
        let counts_off = SnapshotPolicy {
            threshold_entries: 0,
            threshold_log_bytes: 0,
            ..policy
        };
        assert!(!counts_off.due(u64::MAX, u64::MAX, GIB, (0, 0)));
        // 0 turns the floor off; a huge image does not overflow.
        let no_floor = SnapshotPolicy {
            log_image_pct: 0,
            ..policy
        };
        assert!(no_floor.due(10_000, 0, GIB, t));
        let max = SnapshotPolicy {
            log_image_pct: crate::config::MAX_LOG_IMAGE_PCT,
            ..policy
        };
        assert!(!max.due(10_000, u64::MAX - 1, u64::MAX, t));
        assert!(max.due(10_000, u64::MAX, u64::MAX / 100, t));
    }
}
