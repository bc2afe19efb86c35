//! Membership changes on the group actor: proposing one, answering once it took effect, and
//! describing the configuration in force for `GET /v1/cluster/config`.
//!
//! The consensus core is the authority on whether a change is safe (its own term committed
//! first, one change at a time, caught-up learners only, the expected configuration id; Raft
//! §4.1 and §6): its typed refusals become the node's [`RequestError`]s one for one.

use super::GroupActor;
use crate::api::{ChangeOutcome, ClusterConfig, ConfigMember, InvalidChange, RequestError};
use crate::state_machine::StateMachine;
use actix::prelude::*;
use conclave_core::raft::{
    self, LogIndex, MembershipChange, NodeId, ProposeError, Raft, Role, Term,
};
use tokio::sync::oneshot;

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

/// Whether a learner whose log matches the leader's up to `matched` would be accepted for
/// promotion: the core's rule (`Raft::change_membership_if`): it holds the configuration in
/// force (which names it a learner — a learner that never answered holds nothing) and is
/// within `max_lag` entries of the leader's `last` index.
fn promotable(matched: LogIndex, config_id: LogIndex, last: LogIndex, max_lag: u64) -> bool {
    matched > 0 && matched >= config_id && last.saturating_sub(matched) <= max_lag
}

/// The core's reason for an invalid change, in the node's terms.
fn invalid(e: raft::InvalidChange) -> InvalidChange {
    match e {
        raft::InvalidChange::ZeroId => InvalidChange::ZeroId,
        raft::InvalidChange::AlreadyMember(id) => InvalidChange::AlreadyMember(id),
        raft::InvalidChange::NotALearner(id) => InvalidChange::NotALearner(id),
        raft::InvalidChange::NotAMember(id) => InvalidChange::NotAMember(id),
        raft::InvalidChange::NoVoters => InvalidChange::NoVoters,
        raft::InvalidChange::Empty => InvalidChange::Empty,
        raft::InvalidChange::Conflict(id) => InvalidChange::Conflict(id),
    }
}

impl<M: StateMachine> GroupActor<M> {
    /// The configuration as this core sees it (lags are known on the leader only).
    fn cluster_config(&self, core: &Raft) -> ClusterConfig {
        let status = core.status();
        let last = status.last_index;
        let max_lag = core.config().promote_max_lag;
        let membership = &status.membership;
        let describe = |id: NodeId, learner: bool| {
            // Addresses travel with the replicated membership; the node's own configuration
            // covers a bootstrap membership built without them.
            let (addr, http) = match membership.addrs.get(&id) {
                Some(a) => (Some(a.raft), Some(a.http)),
                None => match self.deps.peers.member(id) {
                    Some(m) => (Some(m.addr), Some(m.http)),
                    None => (None, None),
                },
            };
            let match_index = if id == status.id {
                None
            } else {
                status
                    .progress
                    .iter()
                    .find(|p| p.id == id)
                    .map(|p| p.match_index)
            };
            let lag = match_index.map(|m| last.saturating_sub(m));
            ConfigMember {
                id,
                addr,
                http,
                match_index,
                lag,
                caught_up: learner
                    .then(|| promotable(match_index.unwrap_or(0), status.config_id, last, max_lag)),
                // Filled in by the node's handle, which knows who is drained.
                drained: false,
            }
        };
        ClusterConfig {
            config_id: status.config_id,
            voters: membership
                .voters
                .iter()
                .map(|&id| describe(id, false))
                .collect(),
            learners: membership
                .learners
                .iter()
                .map(|&id| describe(id, true))
                .collect(),
            outgoing_voters: membership.outgoing.iter().copied().collect(),
            change_pending: status.change_pending,
            leader_id: status.leader,
            term: status.term,
            commit_index: status.commit_index,
            last_index: last,
            promote_max_lag: max_lag,
        }
    }

    /// The core's refusal in the node's terms.
    fn propose_error(&self, e: ProposeError, core: &Raft) -> RequestError {
        match e {
            ProposeError::NotLeader { leader } => self.leader_hint(leader),
            // Leadership is moving: like an election, retry shortly.
            ProposeError::TransferInProgress => RequestError::NoLeader {
                group: self.deps.group,
            },
            ProposeError::LeaderNotReady => RequestError::LeaderNotReady,
            ProposeError::ChangeInProgress => RequestError::ChangeInProgress {
                config_id: core.config_id(),
            },
            ProposeError::NotCaughtUp { id, lag } => RequestError::NotCaughtUp {
                id,
                lag,
                max_lag: core.config().promote_max_lag,
            },
            ProposeError::ConfigChanged { expected, current } => {
                RequestError::ConfigChanged { expected, current }
            }
            ProposeError::InvalidMembershipChange(e) => invalid(e).into(),
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
        let pending = core.change_pending();
        let mut still = Vec::new();
        for w in std::mem::take(&mut self.change_waiters) {
            match core.entry_term(w.index) {
                Some(t) if t != w.term => {
                    let _ = w.reply.send(Err(RequestError::Dropped));
                }
                // Committed; while this node leads, also wait for a joint configuration to be
                // left (the core appends C_new itself once C_old,new commits). A node that
                // stopped leading (a removed leader steps down) reports the committed change;
                // a new leader completes a joint one.
                Some(_) if w.index <= commit && !(leading && pending) => {
                    let outcome = ChangeOutcome {
                        index: w.index,
                        term: w.term,
                        config: self.cluster_config(&core),
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
        let leader = self
            .core
            .as_ref()
            .map(|core| (core.role() == Role::Leader, core.leader()));
        let Some((leading, leader)) = leader else {
            let _ = msg.reply.send(Err(RequestError::NoLeader {
                group: self.deps.group,
            }));
            return;
        };
        if !leading {
            let _ = msg.reply.send(Err(self.leader_hint(leader)));
            return;
        }
        // The core is borrowed for the proposal only (the refusal's explanation reads it again).
        let proposed = self
            .core
            .as_mut()
            .map(|mut core| core.change_membership_if(now, msg.change, msg.expected_config_id));
        match proposed {
            None => {}
            Some(Ok(p)) => {
                self.change_waiters.push(ChangeWaiter {
                    index: p.index,
                    term: p.term,
                    reply: msg.reply,
                });
                // Resolved by the shell's drains: it must see every poll until then.
                self.publisher.every_poll.set(true);
                self.schedule_drain(ctx);
            }
            Some(Err(e)) => {
                let Some(core) = self.core.as_ref() else {
                    return;
                };
                let _ = msg.reply.send(Err(self.propose_error(e, &core)));
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
            Some(core) => Ok(self.cluster_config(&core)),
        };
        let _ = msg.reply.send(result);
    }
}
