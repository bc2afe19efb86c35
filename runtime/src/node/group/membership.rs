//! Membership changes on the group actor: proposing one (after the node-level checks that give
//! the operator a typed answer), answering once it took effect, and describing the
//! configuration in force for `GET /v1/cluster/config`.
//!
//! The consensus core is the authority on whether a change is safe (one at a time, caught-up
//! learners only, Raft §4.1 and §6); the checks here run in the same actor turn as the core's
//! own, so they cannot race it, and they only exist to name the reason precisely (which node,
//! how far behind, which configuration id).

use super::GroupActor;
use crate::node::handle::{
    ChangeOutcome, ClusterConfig, ConfigMember, InvalidChange, RequestError,
};
use crate::state_machine::StateMachine;
use actix::prelude::*;
use conclave_actors::raft::{
    EntryPayload, LogIndex, MembershipChange, NodeId, ProposeError, Raft, Role, Term,
};
use tokio::sync::oneshot;

/// Default for how far behind the leader's last index a learner may be and still be promoted
/// (issue 14: 1,000 entries).
pub const DEFAULT_PROMOTE_MAX_LAG: u64 = 1_000;

/// Propose a membership change; answered once it took effect (committed, and a joint
/// configuration left) or was refused.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ChangeMembership {
    /// The change, in the core's terms.
    pub change: MembershipChange,
    /// Refuse with `ConfigChanged` unless this is the configuration in force.
    pub expected_config_id: Option<u64>,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<ChangeOutcome, RequestError>>,
}

/// Describe the configuration in force (leader only: followers answer `NotLeader`, so the HTTP
/// layer forwards; only the leader knows every replica's progress).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReadConfig {
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<ClusterConfig, RequestError>>,
}

/// A proposed change waiting to take effect.
pub(super) struct ChangeWaiter {
    index: LogIndex,
    term: Term,
    reply: oneshot::Sender<Result<ChangeOutcome, RequestError>>,
}

/// The id of the configuration in force: the log index of the latest membership entry in the
/// core's log, else the snapshot's index when the log was compacted past it, else 0 (the
/// bootstrap configuration from `initial_members`).
fn config_id(core: &Raft) -> u64 {
    core.entries()
        .iter()
        .rev()
        .find(|e| matches!(e.payload, EntryPayload::Membership(_)))
        .map(|e| e.index)
        .unwrap_or_else(|| core.snapshot().index)
}

/// Whether a learner whose log matches the leader's up to `matched` may become a voter: it
/// has answered at all (a learner that never did — not started, unreachable, wrong address —
/// would count toward quorums without being able to vote or store anything, however short
/// the log), and is within `max_lag` entries of the leader's `last` index.
fn promotable(matched: LogIndex, last: LogIndex, max_lag: u64) -> bool {
    matched > 0 && last.saturating_sub(matched) <= max_lag
}

/// Whether a change is not complete: its entry is not committed yet.
fn change_pending(core: &Raft) -> bool {
    config_id(core) > core.commit_index()
}

impl<M: StateMachine> GroupActor<M> {
    /// The configuration as this core sees it (lags are known on the leader only).
    fn cluster_config(&self, core: &Raft) -> ClusterConfig {
        let status = core.status();
        let last = status.last_index;
        let max_lag = DEFAULT_PROMOTE_MAX_LAG;
        let describe = |id: NodeId, learner: bool| {
            let known = self.deps.members.get(&id);
            let progress = status.progress.iter().find(|p| p.id == id);
            let is_self = id == status.id;
            let match_index = if is_self {
                None
            } else {
                progress.map(|p| p.match_index)
            };
            let lag = match_index.map(|m| last.saturating_sub(m));
            ConfigMember {
                id,
                addr: known.map(|m| m.addr),
                http: known.map(|m| m.http),
                match_index,
                lag,
                caught_up: learner.then(|| promotable(match_index.unwrap_or(0), last, max_lag)),
            }
        };
        ClusterConfig {
            config_id: config_id(core),
            voters: status
                .membership
                .voters
                .iter()
                .map(|&id| describe(id, false))
                .collect(),
            learners: status
                .membership
                .learners
                .iter()
                .map(|&id| describe(id, true))
                .collect(),
            outgoing_voters: Vec::new(),
            change_pending: change_pending(core),
            leader_id: status.leader,
            term: status.term,
            commit_index: status.commit_index,
            last_index: last,
            promote_max_lag: max_lag,
        }
    }

    /// The node-level checks of a change against the configuration in force, in the order an
    /// operator can act on them: stale view, change already running, then the change itself.
    fn check_change(
        &self,
        core: &Raft,
        change: &MembershipChange,
        expected: Option<u64>,
    ) -> Result<(), RequestError> {
        if core.role() != Role::Leader {
            return Err(self.leader_hint(core.leader()));
        }
        let current = config_id(core);
        if let Some(expected) = expected {
            if expected != current {
                return Err(RequestError::ConfigChanged { expected, current });
            }
        }
        if change_pending(core) {
            return Err(RequestError::ChangeInProgress { config_id: current });
        }
        let membership = core.membership();
        match *change {
            MembershipChange::AddLearner(id) => {
                if id == 0 {
                    return Err(InvalidChange::ZeroId.into());
                }
                if membership.contains(id) {
                    return Err(InvalidChange::AlreadyMember(id).into());
                }
            }
            MembershipChange::Promote(id) => {
                if !membership.learners.contains(&id) {
                    return Err(InvalidChange::NotALearner(id).into());
                }
                let matched = core
                    .status()
                    .progress
                    .iter()
                    .find(|p| p.id == id)
                    .map_or(0, |p| p.match_index);
                let lag = core.last_index().saturating_sub(matched);
                if !promotable(matched, core.last_index(), DEFAULT_PROMOTE_MAX_LAG) {
                    return Err(RequestError::NotCaughtUp {
                        id,
                        lag,
                        max_lag: DEFAULT_PROMOTE_MAX_LAG,
                    });
                }
            }
            MembershipChange::Remove(id) => {
                if !membership.contains(id) {
                    return Err(InvalidChange::NotAMember(id).into());
                }
                if membership.voters.len() == 1 && membership.voters.contains(&id) {
                    return Err(InvalidChange::LastVoter(id).into());
                }
            }
        }
        Ok(())
    }

    /// The core's refusal in the node's terms.
    fn propose_error(&self, e: ProposeError, core: &Raft) -> RequestError {
        match e {
            ProposeError::NotLeader { leader } => self.leader_hint(leader),
            // Leadership is moving: like an election, retry shortly.
            ProposeError::TransferInProgress => RequestError::NoLeader {
                group: self.deps.group,
            },
            ProposeError::MembershipChangePending => RequestError::ChangeInProgress {
                config_id: config_id(core),
            },
            ProposeError::InvalidMembershipChange(reason) => InvalidChange::Refused(reason).into(),
        }
    }

    /// Answers every waiting change whose entry committed (and whose joint configuration, if
    /// any, was left), or was overwritten by another leader's entry. Called after every drain.
    pub(super) fn resolve_changes(&mut self) {
        if self.change_waiters.is_empty() {
            return;
        }
        let Some(core) = self.core.as_ref() else {
            return;
        };
        let commit = core.commit_index();
        let leading = core.role() == Role::Leader;
        let pending = change_pending(core);
        let mut still = Vec::new();
        for w in std::mem::take(&mut self.change_waiters) {
            match core.entry_term(w.index) {
                Some(t) if t != w.term => {
                    let _ = w.reply.send(Err(RequestError::Dropped));
                }
                // Committed; while this node leads, also wait for a joint configuration to be
                // left (the core appends the final configuration itself). A node that stopped
                // leading reports the committed change; the new leader completes it.
                Some(_) if w.index <= commit && !(leading && pending) => {
                    let outcome = ChangeOutcome {
                        index: w.index,
                        term: w.term,
                        config: self.cluster_config(core),
                    };
                    let _ = w.reply.send(Ok(outcome));
                }
                // Compacted without this node knowing its term: it cannot be confirmed.
                None if w.index <= commit => {
                    let _ = w.reply.send(Err(RequestError::Dropped));
                }
                _ if w.reply.is_closed() => {}
                _ => still.push(w),
            }
        }
        self.change_waiters = still;
    }
}

impl<M: StateMachine> Handler<ChangeMembership> for GroupActor<M> {
    type Result = ();

    fn handle(&mut self, msg: ChangeMembership, ctx: &mut Context<Self>) {
        let now = self.now();
        let Some(core) = self.core.as_ref() else {
            let _ = msg.reply.send(Err(RequestError::NoLeader {
                group: self.deps.group,
            }));
            return;
        };
        if let Err(e) = self.check_change(core, &msg.change, msg.expected_config_id) {
            let _ = msg.reply.send(Err(e));
            return;
        }
        let Some(core) = self.core.as_mut() else {
            return;
        };
        match core.change_membership(now, msg.change) {
            Ok(p) => {
                self.change_waiters.push(ChangeWaiter {
                    index: p.index,
                    term: p.term,
                    reply: msg.reply,
                });
                self.schedule_drain(ctx);
            }
            Err(e) => {
                let Some(core) = self.core.as_ref() else {
                    return;
                };
                let _ = msg.reply.send(Err(self.propose_error(e, core)));
            }
        }
    }
}

impl<M: StateMachine> Handler<ReadConfig> for GroupActor<M> {
    type Result = ();

    fn handle(&mut self, msg: ReadConfig, _: &mut Context<Self>) {
        let result = match self.core.as_ref() {
            None => Err(RequestError::NoLeader {
                group: self.deps.group,
            }),
            Some(core) if core.role() != Role::Leader => Err(self.leader_hint(core.leader())),
            Some(core) => Ok(self.cluster_config(core)),
        };
        let _ = msg.reply.send(result);
    }
}
