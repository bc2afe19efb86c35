//! The group actor: hosts one Raft group's sans-IO core (election, replication, reads) and
//! carries out its actions — messages to the replicators, persist requests to the node's log
//! store, committed entries to the applier, timers on its own context.
//!
//! Everything it hands on goes through a bounded mailbox with `try_send`. Persist requests and
//! committed entries cannot be dropped, so they wait in small local FIFO queues that are pumped
//! as room appears; while those queues are long, new proposals are refused with
//! [`RequestError::Overloaded`] (HTTP 503) — backpressure ends at the edge, never in unbounded
//! memory. Raft messages to a full replicator are dropped and counted: Raft retransmits.
//!
//! Proposals and inbound messages only mark the group dirty; the actions are drained once the
//! mailbox is empty, so a burst of proposals becomes one persist request and one AppendEntries
//! per follower.

use super::applier::{AppliedIndex, ApplierActor, ApplyBatch, ReadAt, ReadReply, WriteReply};
use super::handle::{LeaderHint, RequestError};
use super::log_store_actor::{LogStoreActor, Persist, Recover};
use super::peers::{MembershipState, MembershipTracker, Peers};
use super::replicator::Outbound;
use crate::state_machine::StateMachine;
use actix::prelude::*;
use conclave_actors::raft::{
    self, Action, Entry, EntryPayload, GroupId, LogIndex, Membership, NodeId, PersistRequest,
    ProposeError, Raft, RaftConfig, ReadConsistency, ReadError, ReadId, RestoreState, Role, Term,
};
use conclave_actors::supervisor::{ChildGuard, Slot};
use parking_lot::RwLock;
use std::collections::{BTreeMap, HashMap, VecDeque};
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
    /// The node's peers: replicators, allowlist, gossip and member addresses follow the
    /// membership this actor hands them.
    pub peers: Arc<Peers>,
    /// Shared status.
    pub shared: Arc<GroupShared>,
    /// The node's monotonic epoch: the cores' `now` is milliseconds since it.
    pub epoch: Instant,
}

/// A Raft message for this group from a peer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RaftInbound(pub raft::Message);

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
            Some(core) => core.change_membership(now, msg.change).map(|p| p.index),
            None => Err(ProposeError::NotLeader { leader: None }),
        };
        let _ = msg.reply.send(result);
        self.schedule_drain(ctx);
    }
}

struct Drain;
impl Message for Drain {
    type Result = ();
}

/// The actor. See the module docs.
pub struct GroupActor<M: StateMachine> {
    deps: Arc<GroupDeps<M>>,
    core: Option<Raft>,
    actions: Vec<Action>,
    drain_scheduled: bool,
    timer: Option<SpawnHandle>,
    persist_queue: VecDeque<PersistRequest>,
    apply_queue: VecDeque<Entry>,
    /// Highest index ever handed to the apply queue (for re-sending after an applier restart).
    enqueued_upto: LogIndex,
    applier_seen: Option<Addr<ApplierActor<M>>>,
    /// Waiting for a restarted applier's applied index (applies are held meanwhile; Raft is
    /// not: the applier may be slow to reopen its machine).
    resyncing: bool,
    pump_scheduled: bool,
    write_waiters: BTreeMap<LogIndex, (Term, WriteReply<M>)>,
    reads: HashMap<ReadId, (M::Query, ReadReply<M>)>,
    next_read: ReadId,
    was_leader: bool,
    /// Membership changes waiting to take effect.
    change_waiters: Vec<membership::ChangeWaiter>,
    /// The membership in force last seen.
    in_force: Option<Membership>,
    /// The members last handed to the peer set ([`MembershipTracker::span`]).
    followed: Option<Membership>,
    /// Whether this node is a member, not yet one, or removed.
    tracker: Option<MembershipTracker>,
    _guard: ChildGuard,
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
        GroupActor {
            deps,
            core: None,
            actions: Vec::new(),
            drain_scheduled: false,
            timer: None,
            persist_queue: VecDeque::new(),
            apply_queue: VecDeque::new(),
            enqueued_upto: 0,
            applier_seen: None,
            resyncing: false,
            pump_scheduled: false,
            write_waiters: BTreeMap::new(),
            reads: HashMap::new(),
            next_read: 1,
            was_leader: false,
            change_waiters: Vec::new(),
            in_force: None,
            followed: None,
            tracker: None,
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

    fn schedule_drain(&mut self, ctx: &mut Context<Self>) {
        if !self.drain_scheduled {
            // Handled after the messages already in the mailbox: they batch together.
            self.drain_scheduled = true;
            ctx.notify(Drain);
        }
    }

    fn drain(&mut self, ctx: &mut Context<Self>) {
        let Some(core) = self.core.as_mut() else {
            return;
        };
        let mut actions = std::mem::take(&mut self.actions);
        core.poll_actions(&mut actions);
        // Peers first: an append to a node just added finds its replicator.
        self.follow_membership();
        for action in actions.drain(..) {
            self.carry_out(action, ctx);
        }
        self.actions = actions;
        self.pump(ctx);
        self.publish();
        self.resolve_changes();
    }

    fn carry_out(&mut self, action: Action, ctx: &mut Context<Self>) {
        match action {
            Action::Send(msg) => {
                let Some(addr) = self.deps.peers.replicator(self.deps.group, msg.to) else {
                    // Restarting, just created, or unknown peer: Raft retransmits.
                    return;
                };
                if addr.try_send(Outbound(msg)).is_err() {
                    metrics::counter!("conclave_mailbox_rejected_total", "actor" => "replicator")
                        .increment(1);
                }
            }
            Action::Persist(req) if req.snapshot.is_some() => {
                // Unreachable today: only `install_snapshot`, which this shell never calls,
                // makes the core name a snapshot in a persist (see the snapshot arms below).
                // The log store cannot record a snapshot base, so the request is never
                // written or reported durable and the group stops: nothing is acknowledged.
                tracing::error!(group = self.deps.group, seq = req.seq, "core asked to persist a snapshot install, which this node cannot do yet; stopping the group");
                ctx.stop();
            }
            Action::Persist(req) => self.persist_queue.push_back(req),
            Action::Apply(entries) => {
                if let Some(last) = entries.last() {
                    self.enqueued_upto = self.enqueued_upto.max(last.index);
                }
                self.apply_queue.extend(entries);
            }
            Action::SetTimer { at } => {
                if let Some(h) = self.timer.take() {
                    ctx.cancel_future(h);
                }
                let delay = Duration::from_millis(at.saturating_sub(self.now()));
                self.timer = Some(ctx.run_later(delay, |act, ctx| {
                    act.timer = None;
                    let now = act.now();
                    if let Some(core) = act.core.as_mut() {
                        core.tick(now);
                    }
                    act.drain(ctx);
                }));
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
            // The three snapshot actions cannot be emitted today: the core sends a snapshot
            // only to a peer whose next index is at or below its compaction point, and it
            // compacts only in `snapshot_taken`, restores a snapshot only after
            // `install_snapshot`, and starts from `RestoreState::snapshot`: this shell calls
            // neither and restores with `snapshot: None`, so the log is never compacted
            // (issue 13: the snapshotter is not built yet). If one ever arrives it is logged
            // and handled in the way that keeps the node safe.
            Action::SendSnapshot { to, term, meta } => {
                tracing::error!(
                    group = self.deps.group,
                    to,
                    term,
                    index = meta.index,
                    "core asked for a snapshot transfer, which this node cannot send yet"
                );
                // Stop waiting for a transfer that will never happen (the core retries after
                // the peer answers a heartbeat).
                let now = self.now();
                if let Some(core) = self.core.as_mut() {
                    core.snapshot_send_failed(now, to);
                }
            }
            Action::RestoreSnapshot(meta) => {
                // The state machine cannot be switched to a snapshot yet; applying on from it
                // would serve a state missing everything the snapshot holds, so the group stops.
                tracing::error!(group = self.deps.group, index = meta.index, term = meta.term, "core asked to restore a snapshot, which this node cannot do yet; stopping the group");
                ctx.stop();
            }
            Action::Compacted { first_index } => {
                // Keeping WAL entries longer than needed is always safe: nothing is purged.
                tracing::error!(group = self.deps.group, first_index, "core compacted its log, which this node never asks for; the WAL keeps every entry");
            }
        }
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
        let group = self.deps.group.to_string();
        let id = self.deps.raft.id;
        if role == Role::Leader && !self.was_leader {
            tracing::info!(node = id, group = self.deps.group, term, "became leader");
            metrics::counter!("conclave_raft_leader_elections_total", "group" => group.clone())
                .increment(1);
        } else if role != Role::Leader && self.was_leader {
            tracing::info!(
                node = id,
                group = self.deps.group,
                term,
                ?leader,
                "stepped down"
            );
        } else {
            tracing::debug!(
                node = id,
                group = self.deps.group,
                term,
                ?role,
                ?leader,
                "role changed"
            );
        }
        self.was_leader = role == Role::Leader;
        metrics::gauge!("conclave_raft_role", "group" => group.clone()).set(role_gauge(role));
        metrics::gauge!("conclave_raft_term", "group" => group).set(term as f64);
    }

    /// Moves queued persist requests and committed entries on, as far as mailboxes allow.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let mut blocked = false;
        while let Some(req) = self.persist_queue.pop_front() {
            let (tx, rx) = oneshot::channel();
            let seq = req.seq;
            let msg = Persist {
                group: self.deps.group,
                req,
                done: tx,
            };
            match self.deps.log_store.try_send(msg) {
                Ok(()) => {
                    ctx.spawn(rx.into_actor(self).map(
                        move |res, act, ctx| match res {
                            Ok(Ok(done)) => {
                                let now = act.now();
                                if let Some(core) = act.core.as_mut() {
                                    core.persisted(now, done);
                                }
                                act.schedule_drain(ctx);
                            }
                            Ok(Err(e)) => {
                                tracing::error!(group = act.deps.group, seq, error = %e, "persist failed; stopping the group");
                                ctx.stop();
                            }
                            Err(_) => {
                                tracing::error!(group = act.deps.group, seq, "log store gone; stopping the group");
                                ctx.stop();
                            }
                        },
                    ));
                }
                Err(SendError::Full(msg)) => {
                    self.persist_queue.push_front(msg.req);
                    blocked = true;
                    break;
                }
                Err(SendError::Closed(_)) => {
                    tracing::error!(
                        group = self.deps.group,
                        "log store stopped; stopping the group"
                    );
                    ctx.stop();
                    return;
                }
            }
        }
        blocked |= self.pump_applies(ctx);
        metrics::gauge!("conclave_mailbox_depth", "actor" => "group_persist_queue")
            .set(self.persist_queue.len() as f64);
        metrics::gauge!("conclave_mailbox_depth", "actor" => "group_apply_queue")
            .set(self.apply_queue.len() as f64);
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
        if self.apply_queue.is_empty() || self.resyncing {
            return false;
        }
        let Some(applier) = self.deps.applier.get() else {
            return true;
        };
        if self.applier_seen.as_ref() != Some(&applier) {
            let first_instance = self.applier_seen.is_none();
            self.applier_seen = Some(applier.clone());
            if !first_instance {
                // A restarted applier: ask where its machine stands, then re-send from there.
                // Not `ctx.wait`: the answer comes after the machine is reopened on the
                // applier's arbiter, which may take long (or stall); Raft must go on meanwhile.
                self.resyncing = true;
                ctx.spawn(
                    applier
                        .send(AppliedIndex)
                        .into_actor(self)
                        .map(|res, act, ctx| {
                            act.resyncing = false;
                            if let Ok(applied) = res {
                                act.resync_applies(applied);
                            }
                            act.pump(ctx);
                        }),
                );
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

    fn resync_applies(&mut self, applied: LogIndex) {
        let Some(core) = self.core.as_ref() else {
            return;
        };
        tracing::warn!(
            group = self.deps.group,
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

    fn publish(&mut self) {
        let Some(core) = self.core.as_ref() else {
            return;
        };
        let status = core.status();
        let group = self.deps.group.to_string();
        metrics::gauge!("conclave_raft_commit_index", "group" => group.clone())
            .set(status.commit_index as f64);
        let applied = self.deps.shared.applied.load(Ordering::Relaxed);
        metrics::gauge!("conclave_raft_applied_index", "group" => group.clone())
            .set(applied as f64);
        let progress: Vec<(NodeId, LogIndex)> = status
            .progress
            .iter()
            .map(|p| (p.id, p.match_index))
            .collect();
        if status.role == Role::Leader {
            for (peer, matched) in &progress {
                metrics::gauge!("conclave_raft_replication_lag", "group" => group.clone(), "peer" => peer.to_string())
                    .set(status.last_index.saturating_sub(*matched) as f64);
            }
        }
        *self.deps.shared.snapshot.write() = GroupSnapshot {
            role: Some(status.role),
            term: status.term,
            leader: status.leader,
            commit_index: status.commit_index,
            last_index: status.last_index,
            membership: status.membership,
            progress,
            membership_state: match self.tracker.as_ref().map(MembershipTracker::state) {
                // The core knows it was removed as soon as the change is appended (the leader
                // stops replicating to it once the change commits, so it may never learn that).
                _ if status.removed => MembershipState::Removed,
                Some(state) => state,
                None => MembershipState::Member,
            },
        };
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
                    node = self.deps.raft.id,
                    group = self.deps.group,
                    state = now.as_str(),
                    "this node's place in the group's membership changed"
                );
            }
        }
    }

    fn backlog(&self) -> usize {
        self.persist_queue.len() + self.apply_queue.len()
    }
}

impl<M: StateMachine> Actor for GroupActor<M> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(8192);
        let group = self.deps.group;
        let log_store = self.deps.log_store.clone();
        let applier = self.deps.applier.get();
        // Nothing else is handled until the core is restored (ctx.wait).
        ctx.wait(
            async move {
                let recovered = log_store.send(Recover { group }).await;
                let applied = match applier {
                    Some(a) => a.send(AppliedIndex).await.ok(),
                    None => None,
                };
                (recovered, applied)
            }
            .into_actor(self)
            .map(|(recovered, applied), act, ctx| {
                let (recovered, applied) = match (recovered, applied) {
                    (Ok(Ok(r)), Some(a)) => (r, a),
                    (Ok(Err(e)), _) => {
                        tracing::error!(group = act.deps.group, error = %e, "cannot recover the group's log");
                        ctx.stop();
                        return;
                    }
                    _ => {
                        tracing::error!(group = act.deps.group, "log store or applier unavailable at start");
                        ctx.stop();
                        return;
                    }
                };
                if recovered.compacted.0 > 0 {
                    tracing::error!(
                        group = act.deps.group,
                        compacted = recovered.compacted.0,
                        "the group's log was compacted, but this node has no snapshot store to restore the state from"
                    );
                    ctx.stop();
                    return;
                }
                let restore = RestoreState {
                    hard_state: recovered.hard_state,
                    entries: recovered.entries,
                    applied,
                    base_membership: act.deps.base_membership.clone(),
                    // The runtime does not take snapshots yet (nothing sends the log store a
                    // `Compact`), so the log always starts at index 1; a compacted log is
                    // refused just above rather than restored without its snapshot.
                    snapshot: None,
                };
                let seed = act.deps.raft.id ^ (act.deps.group << 32) ^ act.now();
                match Raft::new(act.deps.raft.clone(), restore, seed, act.now()) {
                    Ok(core) => {
                        tracing::info!(node = act.deps.raft.id, group = act.deps.group, term = core.term(), last_index = core.last_index(), applied, "group started");
                        let log: Vec<(LogIndex, Membership)> = core
                            .entries()
                            .iter()
                            .filter_map(|e| match &e.payload {
                                EntryPayload::Membership(m) => Some((e.index, m.clone())),
                                _ => None,
                            })
                            .collect();
                        let base = if core.snapshot().index > 0 {
                            core.snapshot().membership.clone()
                        } else {
                            act.deps.base_membership.clone()
                        };
                        act.tracker = Some(MembershipTracker::new(
                            act.deps.raft.id,
                            &base,
                            &log,
                            core.commit_index(),
                        ));
                        act.enqueued_upto = applied;
                        act.applier_seen = act.deps.applier.get();
                        act.core = Some(core);
                        act.drain(ctx);
                    }
                    Err(e) => {
                        tracing::error!(group = act.deps.group, error = %e, "invalid raft configuration");
                        ctx.stop();
                    }
                }
            }),
        );
        // Housekeeping: forget waiters whose clients gave up; bring back a replicator whose
        // supervisor gave up.
        ctx.run_interval(Duration::from_secs(1), |act, _| {
            act.write_waiters.retain(|_, (_, r)| !r.is_closed());
            act.reads.retain(|_, (_, r)| !r.is_closed());
            act.deps.peers.heal(act.deps.group);
        });
    }
}

impl<M: StateMachine> Handler<Drain> for GroupActor<M> {
    type Result = ();

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) {
        self.drain_scheduled = false;
        self.drain(ctx);
    }
}

impl<M: StateMachine> Handler<RaftInbound> for GroupActor<M> {
    type Result = ();

    fn handle(&mut self, msg: RaftInbound, ctx: &mut Context<Self>) {
        let now = self.now();
        if let Some(core) = self.core.as_mut() {
            core.handle_message(now, msg.0);
            self.schedule_drain(ctx);
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
        let Some(core) = self.core.as_mut() else {
            let _ = msg.reply.send(Err(RequestError::NoLeader {
                group: self.deps.group,
            }));
            return;
        };
        match core.propose(now, msg.command) {
            Ok(p) => {
                self.write_waiters.insert(p.index, (p.term, msg.reply));
                self.schedule_drain(ctx);
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
        let Some(core) = self.core.as_mut() else {
            let _ = msg.reply.send(Err(RequestError::NoLeader {
                group: self.deps.group,
            }));
            return;
        };
        match core.read(now, id, msg.consistency) {
            Ok(()) => {
                self.reads.insert(id, (msg.query, msg.reply));
                self.schedule_drain(ctx);
            }
            Err(e) => {
                let _ = msg.reply.send(Err(self.read_error(e)));
            }
        }
    }
}

impl<M: StateMachine> Handler<TransferLeader> for GroupActor<M> {
    type Result = ();

    fn handle(&mut self, msg: TransferLeader, ctx: &mut Context<Self>) {
        let now = self.now();
        let result = match self.core.as_mut() {
            Some(core) => match core.transfer_leader(now, msg.to) {
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
