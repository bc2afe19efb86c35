//! The node's membership calls (issue 14): what `POST /v1/cluster/learners|promote|remove|
//! replace` and `GET /v1/cluster/config` run on the leader.
//!
//! Single changes go to group 0's actor as one message each and are answered once they took
//! effect. `replace` is a short orchestration on the leader: add the new node as a learner
//! (unless it already is one, with the same addresses), wait a bounded time until it has
//! caught up, then swap it for the old voter in one joint change (Raft §6). Each step names the configuration it expects, so
//! a change by someone else in between is a 409 `config_changed`, never a surprise; and a
//! retried `replace` resumes where the previous attempt stopped (a learner that was added stays
//! and is not added twice).

use super::group::{ChangeMembership, ReadConfig, SetDrained};
use super::NodeHandle;
use crate::api::{
    ChangeOutcome, ClusterConfig, ConfigChange, DrainOutcome, DrainedGroup, InvalidChange,
    NewMember, RequestError,
};
use crate::state_machine::StateMachine;
use conclave_core::ids::GroupId;
use conclave_core::ids::NodeId;
use conclave_core::raft::{MemberAddr, MembershipChange};
use std::time::{Duration, Instant};

/// How long `replace` waits for its new learner to catch up before it answers 409
/// `not_caught_up` (the learner stays; retrying resumes). Shorter than the HTTP layer's
/// forwarding timeout (10 s), so a replace sent to a follower gets this answer, not a 504.
pub const REPLACE_CATCH_UP_WAIT: Duration = Duration::from_secs(5);
/// How often `replace` looks at the learner's progress while it waits.
const CATCH_UP_POLL: Duration = Duration::from_millis(50);

/// The core's change that adds `member` as a learner, its addresses replicated with the
/// membership so every node (the new one included) learns how to reach it from the log.
fn add_learner(member: &NewMember) -> MembershipChange {
    MembershipChange::AddLearner {
        id: member.id,
        addr: Some(MemberAddr {
            raft: member.addr,
            http: member.http,
        }),
    }
}

impl<M: StateMachine> NodeHandle<M> {
    /// Makes a membership change on group 0 if this node leads it, and waits until it took
    /// effect (see [`ConfigChange`]). `NotLeader` carries the leader for forwarding.
    pub async fn change_config(
        &self,
        change: ConfigChange,
        expected_config_id: Option<u64>,
    ) -> Result<ChangeOutcome, RequestError> {
        self.admit()?;
        match change {
            ConfigChange::AddLearner(member) => {
                self.single_change(add_learner(&member), expected_config_id)
                    .await
            }
            ConfigChange::Promote(id) => {
                self.single_change(MembershipChange::Promote(id), expected_config_id)
                    .await
            }
            ConfigChange::Remove(id) => {
                self.single_change(MembershipChange::Remove(id), expected_config_id)
                    .await
            }
            ConfigChange::Replace { remove, add } => {
                self.replace(remove, add, expected_config_id).await
            }
        }
    }

    /// Drains this node (`drained = true`) or undoes it, in every group it hosts (`conclave
    /// member drain`, docs/operations.md): a group it leads hands leadership to its most
    /// caught-up other voter, and it takes no leadership (never campaigns, ignores a transfer
    /// to it) until undone or restarted; it still votes and replicates. Published through
    /// gossip ([`super::gossip::DRAINED_KEY`]) so every node's status shows it. Refused with
    /// [`RequestError::CannotDrain`] (nothing changes in that group) where it leads as the
    /// only voter.
    pub async fn drain(&self, drained: bool) -> Result<DrainOutcome, RequestError> {
        let mut groups = Vec::new();
        for (group, g) in self.inner.registry.entries() {
            let addr = g.actor.get().ok_or(RequestError::NoLeader { group })?;
            let (reply, rx) = tokio::sync::oneshot::channel();
            addr.try_send(SetDrained { drained, reply })
                .map_err(|_| RequestError::Overloaded)?;
            let hand_off_to = rx.await.map_err(|_| RequestError::NoLeader { group })??;
            groups.push(DrainedGroup { group, hand_off_to });
        }
        if let Err(e) = self.publish_drained(drained).await {
            // Status elsewhere lags until the next attempt; the drain itself holds.
            tracing::warn!(error = %e, drained, "cannot publish the drain state through gossip");
        }
        Ok(DrainOutcome {
            id: self.inner.id,
            drained,
            groups,
        })
    }

    /// Whether this node is drained (in group 0).
    pub fn drained(&self) -> bool {
        self.inner
            .registry
            .get(GroupId::FIRST)
            .is_some_and(|g| g.shared.drained.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The nodes known drained: this one from its own state, the others from gossip.
    pub(super) fn drained_members(&self) -> std::collections::BTreeSet<NodeId> {
        let mut out: std::collections::BTreeSet<NodeId> = self
            .member_states()
            .into_iter()
            .filter(|m| m.drained && m.id != self.inner.id)
            .map(|m| m.id)
            .collect();
        if self.drained() {
            out.insert(self.inner.id);
        }
        out
    }

    /// The configuration in force as group 0's leader (this node) sees it.
    pub async fn cluster_config(&self) -> Result<ClusterConfig, RequestError> {
        let mut config: ClusterConfig = self.ask(|reply| ReadConfig { reply }).await?;
        let drained = self.drained_members();
        for m in config.voters.iter_mut().chain(config.learners.iter_mut()) {
            m.drained = drained.contains(&m.id);
        }
        Ok(config)
    }

    async fn single_change(
        &self,
        change: MembershipChange,
        expected_config_id: Option<u64>,
    ) -> Result<ChangeOutcome, RequestError> {
        self.ask(|reply| ChangeMembership {
            change,
            expected_config_id,
            reply,
        })
        .await
    }

    /// `replace`: see the module docs.
    async fn replace(
        &self,
        remove: NodeId,
        add: NewMember,
        expected_config_id: Option<u64>,
    ) -> Result<ChangeOutcome, RequestError> {
        if remove == add.id {
            return Err(InvalidChange::SameNode(remove).into());
        }
        let config = self.cluster_config().await?;
        if let Some(expected) = expected_config_id {
            if expected != config.config_id {
                return Err(RequestError::ConfigChanged {
                    expected,
                    current: config.config_id,
                });
            }
        }
        let is_voter = |c: &ClusterConfig, id| c.voters.iter().any(|m| m.id == id);
        let learner = |c: &ClusterConfig, id| c.learners.iter().find(|m| m.id == id).cloned();
        let member = |c: &ClusterConfig, id| is_voter(c, id) || learner(c, id).is_some();
        // Already done (a retry after an answer that was lost): report the configuration.
        if is_voter(&config, add.id) && !member(&config, remove) && !config.change_pending {
            return Ok(ChangeOutcome {
                index: config.config_id,
                term: config.term,
                config,
            });
        }
        if !is_voter(&config, remove) {
            return Err(InvalidChange::NotAVoter(remove).into());
        }
        let mut expected = config.config_id;
        match learner(&config, add.id) {
            Some(known) => {
                // Resuming: the learner must be the node the operator names now.
                let same = known.addr.is_none_or(|a| a == add.addr)
                    && known.http.is_none_or(|h| h == add.http);
                if let (false, Some(addr), Some(http)) = (same, known.addr, known.http) {
                    return Err(InvalidChange::AddressMismatch {
                        id: add.id,
                        addr,
                        http,
                    }
                    .into());
                }
            }
            None if is_voter(&config, add.id) => {}
            None => {
                let added = self
                    .single_change(add_learner(&add), Some(expected))
                    .await?;
                expected = added.config.config_id;
            }
        }
        // Wait (bounded) until the learner is close enough to the leader to be promoted.
        let deadline = Instant::now() + REPLACE_CATCH_UP_WAIT;
        if !is_voter(&config, add.id) {
            loop {
                let now = self.cluster_config().await?;
                if now.config_id != expected {
                    return Err(RequestError::ConfigChanged {
                        expected,
                        current: now.config_id,
                    });
                }
                let Some(l) = learner(&now, add.id) else {
                    return Err(RequestError::ConfigChanged {
                        expected,
                        current: now.config_id,
                    });
                };
                if l.caught_up == Some(true) {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(RequestError::NotCaughtUp {
                        id: add.id,
                        lag: l.lag.unwrap_or(now.last_index),
                        max_lag: now.promote_max_lag,
                    });
                }
                actix::clock::sleep(CATCH_UP_POLL).await;
            }
        }
        if is_voter(&config, add.id) {
            // A voter already (an earlier attempt, or the operator promoted it): what is left
            // is removing the old voter, a single-server change.
            return self
                .single_change(MembershipChange::Remove(remove), Some(expected))
                .await;
        }
        // The swap: one joint change (Raft §6). The leader enters C_old,new, where every
        // election and commit needs a majority of the old voters and of the new ones, and
        // leaves it once that entry commits; the answer comes after C_new committed.
        self.single_change(
            MembershipChange::Replace {
                add: add.id,
                remove,
            },
            Some(expected),
        )
        .await
    }
}
