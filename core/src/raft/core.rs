//! The Raft state machine of one group on one node. Sans-IO: it reads no clock (every input
//! carries `now` on the caller's monotonic clock), does no I/O, and draws randomness only from
//! a ChaCha RNG seeded by its caller. Outputs are [`Action`]s drained by
//! [`Raft::poll_actions`].
//!
//! Section numbers in comments refer to the Raft paper ("Raft §5.x") and to Ongaro's thesis
//! ("thesis §x.y").

use super::config::{ConfigError, RaftConfig};
use super::log::RaftLog;
use super::progress::{Progress, ReplicationState};
use super::types::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The leader's view of one peer's replication, as reported by [`Raft::status`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerProgress {
    /// The peer.
    pub id: NodeId,
    /// Highest index known durably replicated on the peer.
    pub match_index: LogIndex,
    /// Next index the leader will send it.
    pub next_index: LogIndex,
    /// Whether the peer is a learner.
    pub learner: bool,
}

/// A snapshot of one core's state for checkers, status pages and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// This group.
    pub group: GroupId,
    /// Current role.
    pub role: Role,
    /// Current term.
    pub term: Term,
    /// Known leader of the current term.
    pub leader: Option<NodeId>,
    /// Highest index known committed.
    pub commit_index: LogIndex,
    /// Last index of the in-memory log.
    pub last_index: LogIndex,
    /// Last index reported durable and matching the in-memory log.
    pub persisted_index: LogIndex,
    /// Index of the latest snapshot the shell holds as its base (0: none).
    pub snapshot_index: LogIndex,
    /// First index held in the in-memory log (everything before it is compacted).
    pub first_index: LogIndex,
    /// Membership in force (the latest appended).
    pub membership: Membership,
    /// The configuration id in force: the index of the membership entry in force (0 for a
    /// bootstrap membership). See [`Raft::config_id`].
    pub config_id: LogIndex,
    /// Whether a membership change is in flight (see [`Raft::change_pending`]).
    pub change_pending: bool,
    /// Whether this node was a member and the configuration in force no longer names it
    /// (see [`Raft::removed`]).
    pub removed: bool,
    /// Replication progress per peer (leader only; empty otherwise), in id order.
    pub progress: Vec<PeerProgress>,
}

/// What a withheld message waits for (the persistence contract).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dep {
    /// Depends on nothing durable (used only by the `ack_before_persist` planted bug).
    #[cfg(feature = "planted-bugs")]
    Nothing,
    /// Depends on the current term and vote being durable (every message: Raft figure 2,
    /// "respond to RPCs only after updating stable storage").
    HardState,
    /// Depends on everything appended so far being durable (AppendEntries success).
    Everything,
}

/// A persist request issued and not yet reported complete.
#[derive(Clone, Copy, Debug)]
struct InFlightPersist {
    seq: u64,
    /// Last index of the durable log once this request completes (lowered when a later
    /// truncation makes part of what it wrote obsolete).
    log_last: LogIndex,
}

/// A pending ReadIndex read (thesis §6.4).
#[derive(Clone, Copy, Debug)]
struct PendingRead {
    id: ReadId,
    /// The commit index when the read was registered.
    index: LogIndex,
    /// The first heartbeat round whose quorum acknowledgement confirms the read: a round
    /// started after the read was registered.
    round: u64,
}

/// A heartbeat round (a ReadIndex confirmation and a lease refresh).
#[derive(Clone, Debug)]
struct Round {
    ctx: u64,
    sent_at: Millis,
    acks: Vec<NodeId>,
}

/// Leader transfer in progress (thesis §3.10).
#[derive(Clone, Copy, Debug)]
struct Transfer {
    target: NodeId,
    deadline: Millis,
    timeout_now_sent: bool,
}

/// Outstanding heartbeat rounds beyond which the oldest are forgotten (their acks can no longer
/// matter once a later round is confirmed; this only bounds memory under message loss).
const MAX_ROUNDS: usize = 64;

/// The largest term a message may carry (issue 12, finding 3). Terms grow by one per election:
/// an honest cluster holding one election per millisecond needs 146 million years to reach
/// 2^62, so a higher term is forged or corrupt, and adopting it would stop elections for good
/// (nothing can campaign past `u64::MAX`). The margin keeps `term + 1` far from overflow.
pub const MAX_TERM: Term = 1 << 62;

/// One Raft group's consensus state machine on one node. `Send`, no interior mutability, no
/// I/O. See the module docs and `docs/consensus.md`.
#[derive(Debug)]
pub struct Raft {
    config: RaftConfig,
    rng: ChaCha8Rng,
    /// Latest input time seen (inputs may not go back in time; used by `poll_actions`).
    now: Millis,

    // Persistent state (Raft figure 2), in memory; the durable copy may lag.
    term: Term,
    vote: Option<NodeId>,
    log: RaftLog,

    // Volatile state.
    role: Role,
    leader: Option<NodeId>,
    commit_index: LogIndex,
    /// Last index handed to the caller in an `Apply`.
    applied: LogIndex,
    membership: Membership,
    base_membership: Membership,
    /// Membership entries of the log, in index order (the last one is in force).
    membership_entries: Vec<(LogIndex, Membership)>,
    /// Some configuration this core knew during its lifetime named this node (see
    /// [`Raft::removed`]).
    was_member: bool,
    /// Drained by the operator ([`Raft::set_drained`]): never campaigns, hands leadership
    /// off. Not persisted: a restart clears it.
    drained: bool,

    // Snapshots (Raft §7).
    /// The latest snapshot the shell holds as its base (taken, installed or restored);
    /// index 0 without one. The one a leader sends to followers it compacted past.
    snapshot: SnapshotMeta,
    /// An installed snapshot to name in the next persist request.
    pending_snapshot: Option<SnapshotMeta>,
    /// The install persist issued and not yet complete (the latest, if several): on its
    /// completion the shell is told to restore the state machine from it.
    installing: Option<(u64, SnapshotMeta)>,

    // Persistence bookkeeping.
    /// Seq of the next persist request.
    next_seq: u64,
    /// Highest seq reported complete.
    completed_seq: u64,
    /// Term or vote changed since the last persist request.
    hs_dirty: bool,
    /// Seq of the last persist request carrying a hard state.
    hs_seq: u64,
    /// Truncation to carry in the next persist request.
    pending_truncate: Option<LogIndex>,
    /// Last index included in an issued persist request.
    flushed_last: LogIndex,
    /// Last index durable and matching the in-memory log.
    persisted_index: LogIndex,
    in_flight: VecDeque<InFlightPersist>,
    /// Messages waiting for a persist to complete, with the seq they wait for.
    withheld: Vec<(u64, Message)>,

    // Timers.
    election_deadline: Millis,
    heartbeat_deadline: Millis,
    check_quorum_deadline: Millis,
    /// Until then this node ignores (pre-)votes for higher terms under check-quorum: it heard
    /// from a leader less than an election timeout ago (thesis §4.2.3), or it just started.
    vote_lease_until: Millis,
    timer_emitted: Option<Millis>,

    // Elections.
    votes: BTreeMap<NodeId, bool>,

    // Leader state.
    progress: BTreeMap<NodeId, Progress>,
    /// When the progress of peers removed by a committed change may be forgotten (see
    /// `prune_removed_peers`).
    prune_at: Option<Millis>,
    transfer: Option<Transfer>,
    /// Lease reads are served while `now < lease_until` (thesis §6.4.1).
    lease_until: Millis,
    /// Set once a transfer started in this term: a TimeoutNow may still be in flight, and the
    /// target's election bypasses the voters' lease, so no lease is trusted until the term ends.
    lease_disabled: bool,
    next_read_ctx: u64,
    rounds: VecDeque<Round>,
    pending_reads: VecDeque<PendingRead>,
    want_read_round: bool,

    // Reused buffers (no allocation per poll or per acknowledgement).
    scratch_peers: Vec<NodeId>,
    /// Bytes (payload + 24 per entry) this node appended to its log as leader, ever: the
    /// part of a paced learner's credit that keeps it gaining on the log.
    appended_bytes: u64,
    /// When a learner waiting for pacing credit (`RaftConfig::learner_catch_up_bytes_per_s`)
    /// may be sent to again; part of the leader's timer.
    pace_wakeup: Option<Millis>,
    /// Times an append to a paced learner waited for credit, ever (see [`Raft::paced_waits`]).
    paced_waits: u64,
    /// When this node last started a pre-vote round: the rank tie-break (`runs_ahead_of`)
    /// holds only early in a round.
    pre_vote_started_at: Millis,
    scratch_matches: Vec<LogIndex>,

    // Outputs.
    actions: Vec<Action>,
    reported: (Role, Term, Option<NodeId>),
}

impl Raft {
    /// Validates the config and restores from exactly what was reported persisted. Starts as
    /// Follower (or Learner if not a voter of the membership in force), term and vote from
    /// `restore.hard_state`, `commit_index = restore.applied`, and emits a `SetTimer`.
    pub fn new(
        config: RaftConfig,
        restore: RestoreState,
        rng_seed: u64,
        now: Millis,
    ) -> Result<Raft, ConfigError> {
        config.validate()?;
        let snapshot = restore.snapshot.unwrap_or_default();
        let base_membership = if snapshot.index > 0 {
            snapshot.membership.clone()
        } else {
            restore.base_membership
        };
        let log = RaftLog::restore((snapshot.index, snapshot.term), restore.entries)
            .map_err(ConfigError::InvalidRestore)?;
        let mut membership_entries = Vec::new();
        for e in log.entries() {
            if let EntryPayload::Membership(m) = &e.payload {
                membership_entries.push((e.index, m.clone()));
            }
        }
        let membership = membership_entries
            .last()
            .map_or_else(|| base_membership.clone(), |(_, m)| m.clone());
        let was_member = base_membership.contains(config.id)
            || membership_entries
                .iter()
                .any(|(_, m)| m.contains(config.id));
        let role = if membership.is_voter(config.id) {
            Role::Follower
        } else {
            Role::Learner
        };
        let last = log.last_index();
        let applied = restore.applied.max(log.snapshot_index());
        let term = restore.hard_state.term;
        let mut raft = Raft {
            rng: ChaCha8Rng::seed_from_u64(rng_seed),
            now,
            term,
            vote: restore.hard_state.vote,
            log,
            role,
            leader: None,
            commit_index: applied,
            applied,
            membership,
            base_membership,
            membership_entries,
            was_member,
            drained: false,
            snapshot,
            pending_snapshot: None,
            installing: None,
            next_seq: 1,
            completed_seq: 0,
            hs_dirty: false,
            hs_seq: 0,
            pending_truncate: None,
            flushed_last: last,
            persisted_index: last,
            in_flight: VecDeque::new(),
            withheld: Vec::new(),
            election_deadline: now,
            heartbeat_deadline: now,
            check_quorum_deadline: now,
            // A restarted node may have acknowledged a leader's heartbeat just before crashing;
            // it must keep honouring that leader's lease (thesis §6.4.1), so it behaves as if it
            // had just heard from a leader.
            vote_lease_until: now + config.election_timeout_min_ms,
            timer_emitted: None,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            prune_at: None,
            transfer: None,
            lease_until: 0,
            lease_disabled: false,
            next_read_ctx: 1,
            rounds: VecDeque::new(),
            pending_reads: VecDeque::new(),
            want_read_round: false,
            scratch_peers: Vec::new(),
            appended_bytes: 0,
            pace_wakeup: None,
            paced_waits: 0,
            pre_vote_started_at: 0,
            scratch_matches: Vec::new(),
            actions: Vec::new(),
            reported: (role, term, None),
            config,
        };
        if raft.role == Role::Learner && raft.electable() {
            raft.role = Role::Follower;
            raft.reported.0 = Role::Follower;
        }
        raft.reset_election_deadline(now);
        raft.emit_timer();
        Ok(raft)
    }

    // ------------------------------------------------------------------------------------
    // Introspection
    // ------------------------------------------------------------------------------------

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// This core's group.
    pub fn group(&self) -> GroupId {
        self.config.group
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// Known leader of the current term.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// Highest index known committed.
    pub fn commit_index(&self) -> LogIndex {
        self.commit_index
    }

    /// Last index of the in-memory log (persisted or not).
    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }

    /// The membership in force (the latest appended).
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The configuration id in force: the index of the log entry that carries the membership
    /// in force (0 for a bootstrap membership). A change may require it to be unchanged
    /// ([`Raft::change_membership_if`]).
    pub fn config_id(&self) -> LogIndex {
        self.membership_entries
            .last()
            .map_or(self.base_membership.config_id, |(i, _)| *i)
    }

    /// Whether a membership change is in flight: the membership entry in force is not known
    /// committed, or the configuration is joint (its C_new is not appended yet or not
    /// committed). While it is, further changes are refused with `ChangeInProgress`.
    pub fn change_pending(&self) -> bool {
        self.membership.is_joint()
            || self
                .membership_entries
                .last()
                .is_some_and(|(index, _)| *index > self.commit_index)
    }

    /// Whether this node was removed: some configuration it knew named it, and the
    /// configuration in force no longer does. The node then never campaigns and its shell
    /// reports it as `removed`. Not conditioned on the removal being known committed here: the
    /// leader stops replicating to a removed node once the change commits, so the node may
    /// never learn that commit (if the entry is truncated instead, the flag clears with it).
    /// Known only from what this core saw since it started (its restored log and base
    /// included): a node whose log was compacted past every configuration that named it reads
    /// as never having been a member.
    pub fn removed(&self) -> bool {
        self.was_member && !self.membership.is_empty() && !self.membership.contains(self.config.id)
    }

    /// Whether this node is drained ([`Raft::set_drained`]).
    pub fn drained(&self) -> bool {
        self.drained
    }

    /// Drains this node (`drained = true`) or undoes it. A drained node is ineligible for
    /// leadership: when its election deadline passes it neither pre-votes nor campaigns, and it
    /// ignores TimeoutNow, while it still votes, replicates and counts in every quorum (so the
    /// group's fault tolerance is unchanged). A drained leader hands leadership to the other
    /// voter with the highest match index (thesis §3.10: the target is brought up to date, then
    /// sent TimeoutNow), and starts a new hand-off whenever one did not complete within an
    /// election timeout, until another node leads. A drained candidate gives up its campaign.
    ///
    /// Returns the voter leadership is being handed to (`None` unless this node leads).
    /// Refused, changing nothing, when this node leads and no other voter exists.
    pub fn set_drained(
        &mut self,
        now: Millis,
        drained: bool,
    ) -> Result<Option<NodeId>, DrainError> {
        self.advance_clock(now);
        let now = self.now;
        if drained && self.role == Role::Leader && self.hand_off_target().is_none() {
            return Err(DrainError::NoOtherVoter);
        }
        self.drained = drained;
        if !drained {
            return Ok(None);
        }
        let target = match self.role {
            Role::Leader => self.hand_off(now),
            Role::PreCandidate | Role::Candidate => {
                self.become_follower(now, self.term, None);
                None
            }
            Role::Follower | Role::Learner => None,
        };
        self.report_role();
        Ok(target)
    }

    /// The voter a drained leader hands off to: the other voter with the highest match index
    /// (the lowest id among equals).
    fn hand_off_target(&self) -> Option<NodeId> {
        let me = self.config.id;
        self.membership
            .all()
            .filter(|&id| id != me && self.membership.is_voter(id))
            .max_by_key(|&id| {
                let matched = self.progress.get(&id).map_or(0, |p| p.match_index);
                (matched, std::cmp::Reverse(id))
            })
    }

    /// Starts (or keeps) the hand-off of a drained leader; the target, if any.
    fn hand_off(&mut self, now: Millis) -> Option<NodeId> {
        if let Some(t) = self.transfer {
            return Some(t.target);
        }
        let target = self.hand_off_target()?;
        self.transfer_leader(now, target).ok()?;
        Some(target)
    }

    /// Whether this node knows no configuration at all (a joining node started with an empty
    /// membership that has not received its cluster's log or a snapshot yet).
    pub fn joining(&self) -> bool {
        self.membership.is_empty()
            && self.base_membership.is_empty()
            && self.membership_entries.is_empty()
    }

    /// The in-memory log after any compaction point, persisted or not.
    pub fn entries(&self) -> &[Entry] {
        self.log.entries()
    }

    /// The term of the entry at `index`, if known (0 for index 0).
    pub fn entry_term(&self, index: LogIndex) -> Option<Term> {
        self.log.term_at(index)
    }

    /// The latest snapshot this core knows the shell holds as its base (index 0: none).
    pub fn snapshot(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    /// The first index held in the in-memory log (everything before it is compacted).
    pub fn first_index(&self) -> LogIndex {
        self.log.first_index()
    }

    /// The last index handed to the caller to apply (in an `Apply` or a `RestoreSnapshot`).
    pub fn applied_index(&self) -> LogIndex {
        self.applied
    }

    /// The configuration this core runs with.
    pub fn config(&self) -> &RaftConfig {
        &self.config
    }

    /// Each peer's match index, while this node leads (empty otherwise): what
    /// [`Raft::status`]'s `progress` says, without copying the membership and the rest.
    pub fn match_indexes(&self) -> impl Iterator<Item = (NodeId, LogIndex)> + '_ {
        self.progress.iter().map(|(id, p)| (*id, p.match_index))
    }

    /// A snapshot of this core's state.
    pub fn status(&self) -> Status {
        Status {
            id: self.config.id,
            group: self.config.group,
            role: self.role,
            term: self.term,
            leader: self.leader,
            commit_index: self.commit_index,
            last_index: self.log.last_index(),
            persisted_index: self.persisted_index,
            snapshot_index: self.snapshot.index,
            first_index: self.log.first_index(),
            membership: self.membership.clone(),
            config_id: self.config_id(),
            change_pending: self.change_pending(),
            removed: self.removed(),
            progress: self.progress.iter().map(|(id, p)| p.view(*id)).collect(),
        }
    }

    // ------------------------------------------------------------------------------------
    // Inputs
    // ------------------------------------------------------------------------------------

    /// Handles a message from a peer. Messages for another node or group, and messages from
    /// this node itself, are ignored.
    pub fn handle_message(&mut self, now: Millis, msg: Message) {
        self.advance_clock(now);
        if msg.to != self.config.id || msg.group != self.config.group || msg.from == self.config.id
        {
            return;
        }
        // Untrusted input (issue 12, finding 3): a term above MAX_TERM is never adopted, and a
        // sender named by none of the configurations this node knows (the one in force, the
        // bootstrap one, any in its log) is not heard. Checking only the configuration in force
        // is too narrow: a node whose log lags behind (or diverged from) a membership change must
        // still hear a member that configuration removed and a later one re-added, or the
        // cluster can stall (thesis §4.2.3; the simulator's membership profile stalls, seed 10,
        // with the narrower rule).
        //
        // A joining node (started with an empty membership: nothing in its log, no bootstrap
        // set, no snapshot) cannot tell members apart, so it hears any sender. That is
        // acceptable because the transport only delivers messages from peers that
        // authenticated with the cluster's secret or certificate (issue 12): a joining node
        // is exposed to members of its cluster only. It never campaigns (it is no voter of
        // any configuration) and refuses every vote (`on_request_vote`), so the only thing
        // such a sender can do is act as a leader — which is exactly how the real leader
        // brings it its log or a snapshot, from which it adopts the membership and from then
        // on applies the member rule.
        //
        // One exception keeps a lagging node live: a node whose log ends before a membership
        // change cannot know a member added by it, and if that member now leads, the node
        // would never hear of it (the simulator's membership profile stalls, seed 109). So a
        // sender no configuration names is heard as a *leader* only — AppendEntries and
        // Heartbeat, never vote requests, vote answers or TimeoutNow — and a voter hears it
        // only in its own current term (it learns newer terms from members it knows: their
        // answers to its pre-votes), so such a sender can neither move a voter's term nor
        // start, win or disrupt an election. A non-voter (a learner, a removed node) never
        // campaigns, so it may also adopt the sender's newer term — it has no other way to
        // learn it, since only the leader talks to learners.
        if msg.term > MAX_TERM || !(self.knows_member(msg.from) || self.hears_unknown_leader(&msg))
        {
            return;
        }
        self.step(now, msg);
        self.report_role();
    }

    /// Whether this node may campaign (and is a Follower rather than a Learner): it is a voter
    /// of the configuration in force, or it was one in the committed configuration and only
    /// an uncommitted entry removed it. Without the second case a node holding an uncommitted
    /// C_new (or a single-server removal) that drops it could deadlock the group: its log is
    /// the most up to date, so the voters of the older configuration (who need its vote) never
    /// win, and it would never campaign itself (the simulator's membership profile, seed
    /// 1260). Its election is counted in the configuration in force, like everyone's; if it
    /// wins it commits the change and then steps down (thesis §4.2.2).
    fn electable(&self) -> bool {
        let id = self.config.id;
        self.membership.is_voter(id)
            || (self
                .membership_entries
                .last()
                .is_some_and(|(i, _)| *i > self.commit_index)
                && self.membership_at(self.commit_index).is_voter(id))
    }

    /// A follower's commit index advanced: if that committed the change that removed it, it
    /// becomes a learner (it no longer campaigns).
    fn refresh_role(&mut self) {
        if matches!(
            self.role,
            Role::Follower | Role::PreCandidate | Role::Candidate
        ) && !self.electable()
        {
            self.role = Role::Learner;
            self.votes.clear();
        }
    }

    /// Whether a message from a sender no configuration names is heard (see
    /// `handle_message`): leader messages only, in this node's term unless it is no voter.
    ///
    /// In this node's own term it is heard only while this node knows no other leader of that
    /// term: a term has one leader (Raft §5.2), so a second one claiming it is wrong, and a peer
    /// that merely authenticated (the transport admits any, issue 14) cannot take followers
    /// away from the real leader.
    fn hears_unknown_leader(&self, msg: &Message) -> bool {
        matches!(
            msg.body,
            MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. }
        ) && ((msg.term == self.term && self.leader.is_none_or(|l| l == msg.from))
            || (msg.term > self.term && !self.membership.is_voter(self.config.id)))
    }

    /// Whether `id` is in the configuration in force, the bootstrap one or any in the log
    /// (true for everyone while there is none).
    fn knows_member(&self, id: NodeId) -> bool {
        self.joining()
            || self.membership.contains(id)
            || self.base_membership.contains(id)
            || self.membership_entries.iter().any(|(_, m)| m.contains(id))
    }

    /// How many times an append to a learner far behind waited for pacing credit
    /// (`RaftConfig::learner_catch_up_bytes_per_s`) since this core was created: whether
    /// pacing held a catch-up back at all.
    pub fn paced_waits(&self) -> u64 {
        self.paced_waits
    }

    /// Time passed: checks the election, heartbeat, check-quorum and transfer deadlines.
    pub fn tick(&mut self, now: Millis) {
        self.advance_clock(now);
        let now = self.now;
        match self.role {
            Role::Leader => self.tick_leader(now),
            Role::Learner => {
                // Learners never campaign; keep a deadline only so a promotion finds one.
                if now >= self.election_deadline {
                    self.reset_election_deadline(now);
                }
            }
            Role::Follower | Role::PreCandidate | Role::Candidate => {
                if now >= self.election_deadline {
                    if self.drained {
                        // Ineligible for leadership: wait for the leader, vote, replicate.
                        self.reset_election_deadline(now);
                    } else if self.config.pre_vote {
                        self.campaign_pre_vote(now);
                    } else {
                        self.campaign(now, false);
                    }
                }
            }
        }
        self.report_role();
    }

    /// Reports that persist request `seq` (and every one before it) is durable.
    pub fn persisted(&mut self, now: Millis, seq: u64) {
        self.advance_clock(now);
        let now = self.now;
        if seq <= self.completed_seq {
            return;
        }
        // Requests complete in order; a seq beyond what was issued is a caller bug, and
        // only what was actually issued can be durable.
        let seq = seq.min(self.next_seq - 1);
        while let Some(p) = self.in_flight.front().copied() {
            if p.seq > seq {
                break;
            }
            self.in_flight.pop_front();
            self.persisted_index = p.log_last;
        }
        self.completed_seq = seq;
        if let Some((s, meta)) = self.installing.take() {
            if s <= seq {
                // The log store now names the snapshot as its base: the state machine may
                // switch to it. `meta.index > commit >= applied` held at install (stale ones
                // are refused), and nothing was applied since.
                self.applied = if self.bug_install_stale_snapshot() {
                    meta.index
                } else {
                    self.applied.max(meta.index)
                };
                self.snapshot = meta.clone();
                self.actions.push(Action::RestoreSnapshot(meta));
            } else {
                self.installing = Some((s, meta));
            }
        }
        // Release the messages whose dependencies are now durable, in their original order.
        if self.withheld.iter().all(|(s, _)| *s <= seq) {
            // The common case (dependencies are mostly monotonic): release all, keeping the
            // queue's allocation.
            self.actions
                .extend(self.withheld.drain(..).map(|(_, m)| Action::Send(m)));
        } else {
            let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.withheld)
                .into_iter()
                .partition(|(s, _)| *s <= seq);
            self.withheld = waiting;
            self.actions
                .extend(ready.into_iter().map(|(_, m)| Action::Send(m)));
        }
        match self.role {
            // The candidate's own vote counts once its term and vote are durable.
            Role::Candidate => self.check_votes(now),
            Role::Leader => self.maybe_commit(now),
            _ => {}
        }
        self.report_role();
    }

    /// Proposes a command. On the leader it is appended at once and replicated with the next
    /// [`Raft::poll_actions`]; the write succeeded iff the entry applied at the returned index
    /// has the returned term.
    pub fn propose(&mut self, now: Millis, command: Vec<u8>) -> Result<Proposal, ProposeError> {
        self.advance_clock(now);
        self.check_can_propose()?;
        Ok(self.append_local(EntryPayload::Command(command)))
    }

    /// Proposes a membership change: [`Raft::change_membership_if`] without an expected
    /// configuration id.
    pub fn change_membership(
        &mut self,
        now: Millis,
        change: MembershipChange,
    ) -> Result<Proposal, ProposeError> {
        self.change_membership_if(now, change, None)
    }

    /// Proposes a membership change on the leader, refused unless it is safe now:
    /// - the leader must have committed an entry of its own term (`LeaderNotReady`): before
    ///   that it may not know the latest committed configuration, and a change based on a
    ///   stale one can create two disjoint majorities (Ongaro, raft-dev, 2015);
    /// - one change at a time (`ChangeInProgress`, see [`Raft::change_pending`]);
    /// - `expected_config_id`, if given, must be the id in force (`ConfigChanged`);
    /// - a learner is promoted only if caught up within `RaftConfig::promote_max_lag`
    ///   (`NotCaughtUp`);
    /// - the change must make sense (`InvalidMembershipChange`).
    ///
    /// Single-server changes (`AddLearner`, `Promote`, `Remove`) are one entry (thesis
    /// §4.1). `Replace` and a `Change` that alters the voters enter a joint configuration
    /// C_old,new (Raft §6); once it commits, the leader appends C_new by itself (a new leader
    /// does the same if the old one crashed in between). Every new configuration is in force
    /// as soon as it is appended. The returned proposal is the first entry's.
    pub fn change_membership_if(
        &mut self,
        now: Millis,
        change: MembershipChange,
        expected_config_id: Option<LogIndex>,
    ) -> Result<Proposal, ProposeError> {
        self.advance_clock(now);
        let now = self.now;
        self.check_can_propose()?;
        if self.log.term_at(self.commit_index) != Some(self.term) {
            return Err(ProposeError::LeaderNotReady);
        }
        let uncommitted = self
            .membership_entries
            .last()
            .is_some_and(|(index, _)| *index > self.commit_index);
        if self.membership.is_joint() || (uncommitted && !self.bug_second_change_before_commit()) {
            return Err(ProposeError::ChangeInProgress);
        }
        let current = self.config_id();
        if let Some(expected) = expected_config_id {
            if expected != current {
                return Err(ProposeError::ConfigChanged { expected, current });
            }
        }
        let next = self.next_membership(change)?;
        let proposal = self.append_membership(next);
        // A removed leader may now be the only thing between a commit and a step-down.
        self.maybe_commit(now);
        self.report_role();
        Ok(proposal)
    }

    /// The configuration `change` leads to from the one in force, or why it is refused.
    fn next_membership(&self, change: MembershipChange) -> Result<Membership, ProposeError> {
        let cur = &self.membership;
        let mut next = cur.clone();
        next.config_id = 0;
        let (promote, remove, joint) = match change {
            MembershipChange::AddLearner { id, addr } => {
                if id == NodeId::NONE {
                    return Err(InvalidChange::ZeroId.into());
                }
                if cur.contains(id) {
                    return Err(InvalidChange::AlreadyMember(id).into());
                }
                next.learners.insert(id);
                match addr {
                    Some(a) => next.addrs.insert(id, a),
                    None => next.addrs.remove(&id),
                };
                return Ok(next);
            }
            MembershipChange::Promote(id) => ([id].into(), BTreeSet::new(), false),
            MembershipChange::Remove(id) => (BTreeSet::new(), [id].into(), false),
            MembershipChange::Replace { add, remove } => ([add].into(), [remove].into(), true),
            MembershipChange::Change { promote, remove } => (promote, remove, true),
        };
        if promote.is_empty() && remove.is_empty() {
            return Err(InvalidChange::Empty.into());
        }
        for &id in &promote {
            if remove.contains(&id) {
                return Err(InvalidChange::Conflict(id).into());
            }
            if !cur.learners.contains(&id) {
                return Err(InvalidChange::NotALearner(id).into());
            }
            // Caught up: within `promote_max_lag` of the last index, and holding the
            // configuration in force (which names it a learner). The second condition matters
            // for a short log: a joining node that holds nothing would refuse every vote once
            // promoted (it knows no configuration), like the promoted learner of core bug 1.
            let matched = self.progress.get(&id).map_or(0, |p| p.match_index);
            let lag = self.log.last_index().saturating_sub(matched);
            if lag > self.config.promote_max_lag || matched < self.config_id() {
                return Err(ProposeError::NotCaughtUp { id, lag });
            }
        }
        for &id in &remove {
            if !cur.contains(id) {
                return Err(InvalidChange::NotAMember(id).into());
            }
        }
        for id in &promote {
            next.learners.remove(id);
            next.voters.insert(*id);
        }
        for id in &remove {
            next.learners.remove(id);
            next.voters.remove(id);
        }
        if next.voters.is_empty() {
            return Err(InvalidChange::NoVoters.into());
        }
        if joint && next.voters != cur.voters {
            // Raft §6: C_old,new. Removed voters keep their addresses until C_new.
            next.outgoing = cur.voters.clone();
        }
        next.retain_member_addrs();
        Ok(next)
    }

    /// Leader: appends a membership entry, stamping it with its configuration id (its index).
    fn append_membership(&mut self, mut next: Membership) -> Proposal {
        next.config_id = self.log.last_index() + 1;
        self.append_local(EntryPayload::Membership(next))
    }

    /// Starts a read. `Stale` reads are ready at once on any node; `Linearizable` (ReadIndex)
    /// and `Lease` reads need a leader that committed an entry of its term. The outcome of an
    /// accepted read arrives as `ReadReady` or `ReadFailed`.
    pub fn read(
        &mut self,
        now: Millis,
        id: ReadId,
        consistency: ReadConsistency,
    ) -> Result<(), ReadError> {
        self.advance_clock(now);
        let now = self.now;
        if consistency == ReadConsistency::Stale {
            self.actions.push(Action::ReadReady { id, index: 0 });
            return Ok(());
        }
        if self.role != Role::Leader {
            return Err(ReadError::NotLeader {
                leader: self.leader,
            });
        }
        // Thesis §6.4 step 1: until the leader commits an entry of its own term its commit
        // index may lag behind entries committed by earlier leaders.
        if self.log.term_at(self.commit_index) != Some(self.term) {
            return Err(ReadError::NotReady);
        }
        if consistency == ReadConsistency::Lease && self.lease_valid(now) {
            self.actions.push(Action::ReadReady {
                id,
                index: self.commit_index,
            });
            return Ok(());
        }
        // ReadIndex (thesis §6.4): confirmed by a quorum ack of a round started after now.
        self.pending_reads.push_back(PendingRead {
            id,
            index: self.commit_index,
            round: self.next_read_ctx,
        });
        self.want_read_round = true;
        Ok(())
    }

    /// Transfers leadership to `to` (thesis §3.10): proposals are refused meanwhile, `to` is
    /// brought up to date and then sent TimeoutNow. The transfer is abandoned after an
    /// election timeout.
    pub fn transfer_leader(&mut self, now: Millis, to: NodeId) -> Result<(), TransferError> {
        self.advance_clock(now);
        let now = self.now;
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader {
                leader: self.leader,
            });
        }
        if !self.membership.is_voter(to) {
            return Err(TransferError::NotAVoter(to));
        }
        if to == self.config.id {
            return Ok(());
        }
        // The target will campaign with `leadership_transfer`, which voters honour even while
        // they follow this leader: the lease is no longer safe (thesis §6.4.1).
        self.lease_until = 0;
        self.lease_disabled = true;
        self.transfer = Some(Transfer {
            target: to,
            deadline: now + self.config.election_timeout_min_ms,
            timeout_now_sent: false,
        });
        self.maybe_send_timeout_now();
        // Bring the target up to date without waiting for a heartbeat to unblock its probe.
        if let Some(p) = self.progress.get_mut(&to) {
            if p.match_index < self.log.last_index() && p.state == ReplicationState::Probe {
                p.probe_sent = false;
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------------------------
    // Host-driven heartbeats and quiescence (see `docs/consensus.md`, "Many groups per node")
    // ------------------------------------------------------------------------------------

    /// Leader: start a heartbeat round now (with [`RaftConfig::host_heartbeats`], the host's
    /// node-wide beat calls this on every leader it drives). Does nothing on other roles.
    pub fn heartbeat(&mut self, now: Millis) {
        self.advance_clock(now);
        let now = self.now;
        if self.role == Role::Leader {
            self.start_round(now);
            self.heartbeat_deadline = now + self.config.heartbeat_interval_ms;
        }
    }

    /// Whether this group has nothing in flight, so its host may stop ticking it: no persist
    /// issued or pending, no withheld message, no snapshot being installed, and the log holds
    /// exactly what is committed and handed out for applying. A leader additionally needs
    /// its no-op committed, no read, transfer, membership change or peer pruning pending,
    /// and every peer caught up (replicating, nothing in flight); a follower or learner needs
    /// to know its leader. Candidates are never quiescent.
    pub fn quiescent(&self) -> bool {
        let idle = self.in_flight.is_empty()
            && !self.persist_dirty()
            && self.withheld.is_empty()
            && self.installing.is_none()
            && self.commit_index == self.log.last_index()
            && self.persisted_index == self.log.last_index()
            && self.applied == self.commit_index;
        if !idle {
            return false;
        }
        match self.role {
            Role::Leader => {
                self.log.term_at(self.commit_index) == Some(self.term)
                    && self.transfer.is_none()
                    && self.pending_reads.is_empty()
                    && !self.want_read_round
                    && self.prune_at.is_none()
                    && !self.change_pending()
                    && self.progress.values().all(|p| {
                        p.match_index == self.commit_index
                            && p.state == ReplicationState::Replicate
                            && p.inflight.is_empty()
                    })
            }
            Role::Follower | Role::Learner => self.leader.is_some(),
            Role::PreCandidate | Role::Candidate => false,
        }
    }

    /// The host stopped ticking this core for a while (it was quiesced) and resumes now. The
    /// deadlines that passed meanwhile are restarted rather than fired at once: a follower
    /// draws a fresh randomized election timeout (so the followers of a dead leader do not all
    /// campaign in the same millisecond), a leader gets a full check-quorum window in which
    /// its peers must answer again. Nothing here touches terms, votes, the log or leases
    /// (a lease is only ever extended by a quorum-acknowledged round), so it cannot affect
    /// safety.
    ///
    /// `why` decides the follower's vote lease (check-quorum, thesis §4.2.3), which lapsed
    /// while nothing was heard: woken by [`Wake::Activity`], the follower has no news that its
    /// leader failed — the leader quiesced it, and quiescence only lasts while the leader is
    /// idle and reachable — so it takes the lease up again, as if it had just heard the
    /// leader, and refuses (pre-)votes for one minimum election timeout. A peer whose
    /// connection to the leader merely reset cannot then collect the votes of quiesced
    /// followers and depose a live leader. Woken by [`Wake::LeaderSuspected`] the lease stays
    /// lapsed, so the followers of a dead leader elect a new one at their first timeout. A
    /// lease only makes a node refuse votes: it never affects safety.
    pub fn unquiesce(&mut self, now: Millis, why: Wake) {
        self.advance_clock(now);
        let now = self.now;
        match self.role {
            Role::Leader => {
                for p in self.progress.values_mut() {
                    p.recent_active = false;
                }
                self.check_quorum_deadline = now + self.config.election_timeout_min_ms;
                self.heartbeat_deadline = now;
            }
            _ => {
                self.reset_election_deadline(now);
                if why == Wake::Activity && self.leader.is_some() {
                    self.vote_lease_until = self
                        .vote_lease_until
                        .max(now + self.config.election_timeout_min_ms);
                }
            }
        }
    }

    // ------------------------------------------------------------------------------------
    // Snapshots and compaction (Raft §7, thesis ch. 5)
    // ------------------------------------------------------------------------------------

    /// The meta a snapshot of the state machine at `index` must carry: the term of the entry
    /// at `index` and the membership in force there. `index` must be applied (handed out in an
    /// `Apply`) and beyond the current snapshot and compaction point.
    pub fn snapshot_meta(&self, index: LogIndex) -> Result<SnapshotMeta, SnapshotError> {
        if index > self.applied {
            return Err(SnapshotError::NotApplied {
                index,
                applied: self.applied,
            });
        }
        let current = self.snapshot.index.max(self.log.snapshot_index());
        let term = self.log.term_at(index).filter(|_| index > current);
        let Some(term) = term else {
            return Err(SnapshotError::Stale { index, current });
        };
        let membership = self.membership_at(index);
        if membership.is_empty() {
            // A joining node that received the log from index 1 does not know the bootstrap
            // configuration (it is not a log entry): a snapshot of that prefix would carry an
            // empty membership and make whoever installs it a "joining" node again.
            return Err(SnapshotError::UnknownMembership { index });
        }
        Ok(SnapshotMeta {
            index,
            term,
            membership,
        })
    }

    /// The caller durably stored a snapshot of its state machine at `meta.index` (whose meta
    /// came from [`Raft::snapshot_meta`]): it becomes the snapshot sent to lagging followers,
    /// and the in-memory log is compacted up to `meta.index - keep_entries` (on a leader, not
    /// past a snapshot still being streamed to a peer), announced with
    /// [`Action::Compacted`]. Refused (changing nothing) if `meta.index` is not applied yet,
    /// not beyond the current snapshot, or does not match the log.
    pub fn snapshot_taken(&mut self, now: Millis, meta: SnapshotMeta) -> Result<(), SnapshotError> {
        self.advance_clock(now);
        let expected = self.snapshot_meta(meta.index)?;
        if expected != meta {
            return Err(SnapshotError::Mismatch {
                given: Box::new(meta),
                expected: Box::new(expected),
            });
        }
        let mut point = meta
            .index
            .saturating_sub(self.config.keep_entries)
            .min(self.snapshot_send_floor());
        if self.bug_compact_unapplied() {
            point = point.max(self.commit_index);
        }
        self.snapshot = meta;
        self.compact(point);
        Ok(())
    }

    /// Leader: the lowest index a peer catching up by snapshot still needs the log from
    /// (`LogIndex::MAX` when none does): the index of a snapshot being streamed to it, or,
    /// once it installed one, its match index until the transfer's deadline passes.
    /// Compaction stops there, so the peer follows its install with the log's tail. Without
    /// this, a leader under write load takes newer snapshots (and compacts behind them) while
    /// a large one streams and installs: the peer is behind the compaction point again when
    /// its install is answered and needs another snapshot, round after round (seen adding a
    /// node to a cluster holding 512 MiB: two full transfers). What is kept is bounded by
    /// `snapshot_timeout_ms` of writes: a transfer is abandoned after it, and the next one
    /// sends the newest snapshot.
    fn snapshot_send_floor(&self) -> LogIndex {
        if self.role != Role::Leader {
            return LogIndex::MAX;
        }
        let now = self.now;
        self.progress
            .values()
            .filter_map(|p| match p.state {
                ReplicationState::Snapshot => p.snapshot.map(|(index, _)| index),
                _ if p.hold_until.is_some_and(|t| now < t) => Some(p.match_index),
                _ => None,
            })
            .min()
            .unwrap_or(LogIndex::MAX)
    }

    /// The leader's shell could not deliver the snapshot it was asked to send to `to` (the
    /// connection broke, the peer refused it, ...). The leader stops waiting and retries once
    /// the peer answers a heartbeat again.
    pub fn snapshot_send_failed(&mut self, now: Millis, to: NodeId) {
        self.advance_clock(now);
        if self.role != Role::Leader {
            return;
        }
        if let Some(p) = self.progress.get_mut(&to) {
            if p.state == ReplicationState::Snapshot {
                let next = p.match_index + 1;
                p.become_probe(next);
                p.probe_sent = true;
            }
        }
    }

    /// The shell received (complete, verified and durably staged) the snapshot `meta` that the
    /// leader `from` sent in `term` ([`Action::SendSnapshot`]). Raft §7, receiver side: a
    /// snapshot from an older term is answered with the current term; one at or below the
    /// commit index is stale and refused; otherwise log entries following the snapshot are
    /// kept if the log holds its last entry, else the whole log is discarded. The core then
    /// emits a `Persist` naming the snapshot, and once it completes a
    /// [`Action::RestoreSnapshot`] and the acknowledgement.
    pub fn install_snapshot(&mut self, now: Millis, from: NodeId, term: Term, meta: SnapshotMeta) {
        self.advance_clock(now);
        let now = self.now;
        if from == self.config.id || from == NodeId::NONE {
            return;
        }
        if term < self.term {
            // A leader of an older term: tell it the current term so it steps down.
            let body = MessageBody::InstallSnapshotResponse {
                installed: false,
                index: self.commit_index,
            };
            self.send(from, body, Dep::HardState);
            return;
        }
        if term > self.term {
            self.become_follower(now, term, Some(from));
        }
        if self.accept_leader(now, from) {
            self.on_install_snapshot(now, from, term, meta);
        }
        self.report_role();
    }

    fn on_install_snapshot(&mut self, now: Millis, from: NodeId, term: Term, meta: SnapshotMeta) {
        // A snapshot's last entry cannot be newer than the leader that sends it; an index no
        // log can reach (index arithmetic must not overflow) is refused as well.
        if meta.index == 0 || meta.index >= LogIndex::MAX / 2 || meta.term == 0 || meta.term > term
        {
            return;
        }
        // Applied and commit indexes never move backwards: a snapshot at or below what this
        // node already knows committed is stale (a duplicate, or overtaken by appends).
        if meta.index <= self.commit_index && !self.bug_install_stale_snapshot() {
            let body = MessageBody::InstallSnapshotResponse {
                installed: false,
                index: self.commit_index,
            };
            self.send(from, body, Dep::HardState);
            return;
        }
        let old_commit = self.commit_index;
        if meta.index <= self.log.last_index()
            && meta.index >= self.log.snapshot_index()
            && self.log.term_at(meta.index) == Some(meta.term)
        {
            // Raft §7: the log holds the snapshot's last entry, so everything after it is the
            // leader's too; keep it.
            self.log.compact_to(meta.index);
            self.flushed_last = self.flushed_last.max(meta.index);
            self.pending_truncate = self.pending_truncate.map(|t| t.max(meta.index + 1));
        } else {
            // Raft §7: discard the entire log. Whatever the durable log holds beyond the old
            // commit index may conflict with the snapshot: it no longer counts as durable, and
            // acknowledgements of it are void.
            self.log.reset(meta.index, meta.term);
            self.flushed_last = meta.index;
            self.pending_truncate = Some(meta.index + 1);
            for p in self.in_flight.iter_mut() {
                p.log_last = p.log_last.min(old_commit);
            }
            self.persisted_index = self.persisted_index.min(old_commit);
            self.withheld.retain(|(_, m)| {
                !matches!(
                    m.body,
                    MessageBody::AppendEntriesResponse {
                        success: true,
                        index,
                        ..
                    } if index > old_commit
                )
            });
        }
        self.base_membership = meta.membership.clone();
        self.membership_entries.retain(|(i, _)| *i > meta.index);
        self.refresh_membership(now);
        self.commit_index = self.commit_index.max(meta.index);
        self.refresh_role();
        self.pending_snapshot = Some(meta.clone());
        // Acknowledged only once the persist naming the snapshot is durable.
        let body = MessageBody::InstallSnapshotResponse {
            installed: true,
            index: meta.index,
        };
        self.send(from, body, Dep::Everything);
    }

    /// Leader: a replication answer came from `from`. Marks the peer active and returns
    /// whether the answer is for this leader (this node leads and `from` is a tracked peer).
    fn heard_from_peer(&mut self, now: Millis, from: NodeId) -> bool {
        if self.role != Role::Leader {
            return false;
        }
        let Some(p) = self.progress.get_mut(&from) else {
            return false;
        };
        p.recent_active = true;
        p.last_append_response = now;
        true
    }

    /// Leader: `from` holds this log up to `index` (an append succeeded or a snapshot was
    /// installed); commit and a pending leader transfer may advance.
    fn peer_matched(&mut self, now: Millis, from: NodeId, index: LogIndex) {
        // A peer's index is not trusted to be one this log holds.
        if index > self.log.last_index() {
            return;
        }
        if self
            .progress
            .get_mut(&from)
            .is_some_and(|p| p.on_success(index))
        {
            self.maybe_commit(now);
            self.maybe_send_timeout_now();
        }
    }

    /// Leader: the answer to a snapshot this node's shell sent to `from`.
    fn on_install_response(&mut self, now: Millis, from: NodeId, installed: bool, index: LogIndex) {
        if !self.heard_from_peer(now, from) {
            return;
        }
        if installed {
            self.peer_matched(now, from, index);
            return;
        }
        let last = self.log.last_index();
        let Some(p) = self.progress.get_mut(&from) else {
            return;
        };
        if p.state == ReplicationState::Snapshot {
            // Refused as stale: the peer already holds a committed prefix up to `index`;
            // probe with AppendEntries from just after it.
            p.become_probe(index.saturating_add(1).min(last + 1));
        }
    }

    /// The membership in force at `index`, for checkers: the latest membership entry at or
    /// below it, or the base membership (bootstrap or snapshot) for an index at or below the
    /// compaction point.
    pub fn membership_at_index(&self, index: LogIndex) -> Membership {
        self.membership_at(index)
    }

    /// The membership in force at `index` (at or after the compaction point).
    fn membership_at(&self, index: LogIndex) -> Membership {
        self.membership_entries
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map_or_else(|| self.base_membership.clone(), |(_, m)| m.clone())
    }

    /// Drops the in-memory log up to `point` (never past the applied index, except under the
    /// `compact_unapplied` planted bug) and announces it to the shell.
    fn compact(&mut self, point: LogIndex) {
        let point = point.min(self.log.last_index());
        if point <= self.log.snapshot_index() {
            return;
        }
        self.base_membership = self.membership_at(point);
        self.membership_entries.retain(|(i, _)| *i > point);
        self.log.compact_to(point);
        self.actions.push(Action::Compacted {
            first_index: self.log.first_index(),
        });
    }

    /// Leader: `peer` needs entries compacted away; ask the shell to stream the snapshot.
    /// Without a usable snapshot (an install of our own still persisting) it waits.
    fn start_snapshot_send(&mut self, peer: NodeId) {
        let usable = self.snapshot.index > 0
            && self.snapshot.index >= self.log.snapshot_index()
            && self.installing.is_none()
            && self.pending_snapshot.is_none();
        if !usable {
            return;
        }
        let deadline = self.now + self.config.snapshot_timeout_ms;
        let Some(p) = self.progress.get_mut(&peer) else {
            return;
        };
        p.become_snapshot(self.snapshot.index, deadline);
        self.actions.push(Action::SendSnapshot {
            to: peer,
            term: self.term,
            meta: self.snapshot.clone(),
        });
    }

    /// Appends every pending action to `out` (without clearing it), in the order they must be
    /// carried out. Proposals made between two polls are batched: one `Persist` and one
    /// AppendEntries per follower (more only when the batch exceeds the per-append limits and
    /// the in-flight window allows).
    pub fn poll_actions(&mut self, out: &mut Vec<Action>) {
        let now = self.now;
        if self.role == Role::Leader {
            if self.want_read_round {
                self.start_round(now);
                self.heartbeat_deadline = now + self.config.heartbeat_interval_ms;
            }
            self.send_appends();
        }
        self.flush_persist();
        self.emit_apply();
        self.emit_timer();
        self.report_role();
        out.append(&mut self.actions);
    }

    // ------------------------------------------------------------------------------------
    // Message handling
    // ------------------------------------------------------------------------------------

    fn step(&mut self, now: Millis, msg: Message) {
        if msg.term > self.term {
            match &msg.body {
                // A pre-vote changes no state (thesis §9.6), and a granted pre-vote answer
                // carries the term the pre-candidate would campaign in.
                MessageBody::RequestVote { pre_vote: true, .. }
                | MessageBody::RequestVoteResponse {
                    pre_vote: true,
                    granted: true,
                } => {}
                MessageBody::RequestVote {
                    leadership_transfer,
                    ..
                } => {
                    // Check-quorum (thesis §4.2.3): while we believe a leader is alive, a
                    // disruptive candidate does not even make us adopt its term.
                    if !*leadership_transfer && self.in_vote_lease(now) {
                        return;
                    }
                    self.become_follower(now, msg.term, None);
                }
                MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::TimeoutNow => {
                    self.become_follower(now, msg.term, Some(msg.from));
                }
                _ => self.become_follower(now, msg.term, None),
            }
        } else if msg.term < self.term {
            self.answer_stale(msg);
            return;
        }

        let from = msg.from;
        let term = msg.term;
        match msg.body {
            MessageBody::RequestVote {
                pre_vote,
                last_log_index,
                last_log_term,
                leadership_transfer,
            } => self.on_request_vote(
                now,
                from,
                term,
                pre_vote,
                last_log_index,
                last_log_term,
                leadership_transfer,
            ),
            MessageBody::RequestVoteResponse { pre_vote, granted } => {
                self.on_vote_response(now, from, term, pre_vote, granted)
            }
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => {
                if !self.accept_leader(now, from) {
                    return;
                }
                self.on_append_entries(
                    now,
                    from,
                    prev_log_index,
                    prev_log_term,
                    entries,
                    leader_commit,
                );
            }
            MessageBody::AppendEntriesResponse {
                success,
                index,
                conflict_term,
                conflict_index,
            } => self.on_append_response(now, from, success, index, conflict_term, conflict_index),
            MessageBody::Heartbeat { commit, read_ctx } => {
                if !self.accept_leader(now, from) {
                    return;
                }
                // The leader caps `commit` at what it knows we hold (our match index), so
                // every entry up to it matches the leader's log.
                let commit = commit.min(self.log.last_index());
                if commit > self.commit_index {
                    self.commit_index = commit;
                    self.refresh_role();
                }
                self.send(
                    from,
                    MessageBody::HeartbeatResponse { read_ctx },
                    Dep::HardState,
                );
            }
            MessageBody::HeartbeatResponse { read_ctx } => {
                self.on_heartbeat_response(now, from, read_ctx)
            }
            MessageBody::InstallSnapshotResponse { installed, index } => {
                self.on_install_response(now, from, installed, index)
            }
            MessageBody::TimeoutNow => {
                // Thesis §3.10: the leader found us up to date; campaign at once, skipping
                // the pre-vote, with the flag that makes voters ignore their leader lease.
                if self.role != Role::Leader
                    && self.electable()
                    && !self.drained
                    && self.leader == Some(from)
                {
                    self.campaign(now, true);
                }
            }
        }
    }

    /// Answers a message from an older term so a stale leader or candidate learns the current
    /// term and steps down (needed with pre-vote and check-quorum, which otherwise keep a
    /// node that missed an election from ever hearing of it).
    fn answer_stale(&mut self, msg: Message) {
        let body = match msg.body {
            MessageBody::AppendEntries { .. } => MessageBody::AppendEntriesResponse {
                success: false,
                index: 0,
                conflict_term: None,
                conflict_index: 0,
            },
            MessageBody::Heartbeat { read_ctx, .. } => MessageBody::HeartbeatResponse { read_ctx },
            MessageBody::RequestVote { pre_vote, .. } => MessageBody::RequestVoteResponse {
                pre_vote,
                granted: false,
            },
            _ => return,
        };
        self.send(msg.from, body, Dep::HardState);
    }

    /// A message from the leader of the current term: follow it. Returns false if the message
    /// cannot come from a legitimate leader (we lead this term ourselves).
    fn accept_leader(&mut self, now: Millis, from: NodeId) -> bool {
        if self.role == Role::Leader {
            // Election safety (Raft §5.2) makes this impossible among correct nodes.
            return false;
        }
        if self.role != Role::Follower && self.role != Role::Learner || self.leader != Some(from) {
            self.become_follower(now, self.term, Some(from));
        } else {
            self.reset_election_deadline(now);
        }
        self.vote_lease_until = now + self.config.election_timeout_min_ms;
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn on_request_vote(
        &mut self,
        now: Millis,
        from: NodeId,
        term: Term,
        pre_vote: bool,
        last_log_index: LogIndex,
        last_log_term: Term,
        leadership_transfer: bool,
    ) {
        // Raft §5.4.1: grant only to a candidate whose log is at least as up to date.
        let log_ok = self.bug_vote_without_log_check()
            || last_log_term > self.log.last_term()
            || (last_log_term == self.log.last_term() && last_log_index >= self.log.last_index());
        // Thesis §4.1: "servers process incoming RPC requests without consulting their current
        // configurations". A node that believes it is a learner may have been promoted in an
        // entry it has not received yet; refusing would leave a cluster whose remaining voters
        // need its vote without a leader forever. Learners still never count: the candidate
        // tallies only the voters of its own configuration (`check_votes`), and learners never
        // campaign.
        //
        // A joining node (it knows no configuration yet) always refuses: it cannot have been
        // promoted in an entry it has not received before it received any, and a vote from a
        // node that holds none of the log would only help a candidate missing entries.
        let granted = if self.joining() {
            false
        } else if pre_vote {
            // Thesis §9.6: grant a pre-vote iff we would grant the vote in that term, and we
            // have not heard from a leader recently (check-quorum).
            term > self.term
                && log_ok
                && (leadership_transfer || !self.in_vote_lease(now))
                && !self.runs_ahead_of(from, last_log_index, last_log_term)
        } else {
            // Raft §5.2: one vote per term, first come first served.
            term == self.term
                && (self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none()))
                && log_ok
        };
        if granted && !pre_vote {
            if self.vote != Some(from) {
                self.vote = Some(from);
                self.hs_dirty = true;
            }
            self.reset_election_deadline(now);
        }
        // A granted pre-vote answers in the term it was asked for; anything else in ours.
        let reply_term = if pre_vote && granted { term } else { self.term };
        let msg = Message {
            group: self.config.group,
            from: self.config.id,
            to: from,
            term: reply_term,
            body: MessageBody::RequestVoteResponse { pre_vote, granted },
        };
        self.send_msg(msg, Dep::HardState);
    }

    /// Whether this node, a pre-candidate itself, keeps its pre-vote from `from`, another
    /// pre-candidate with an equally up-to-date log, because it ranks `from` below itself
    /// ([`election_rank`]). Without this, two followers whose election timers fire within a
    /// pre-vote round trip of each other — the followers of a dead leader of many quiesced
    /// groups all wake at once — grant each other's pre-votes, both campaign, and split the
    /// vote, one election timeout at a time (the multi-group simulator showed a third of such
    /// pairs colliding). With it, of two such pre-candidates the higher-ranked one gets both
    /// pre-votes. Liveness only: a pre-vote changes no state, and the refuser keeps only its
    /// own support, as a candidate voting for itself would; a requester with a better log
    /// always gets it.
    ///
    /// Only early in this node's own round (one heartbeat interval after it started): the
    /// collisions it settles start within a round trip of each other. A pre-candidate that
    /// cannot win — a voter it needs never answers, e.g. one whose log ends before a change
    /// that re-added this node, so it does not hear it — restarts its round every election
    /// timeout and would otherwise refuse every lower-ranked node forever, even one that can
    /// win and would bring that voter the log (the simulator's membership profile, seed
    /// 3135: C_new = {1, 2}, n1 behind and not hearing n2, n2 refusing n3 and n4 for good).
    fn runs_ahead_of(&self, from: NodeId, last_log_index: LogIndex, last_log_term: Term) -> bool {
        self.role == Role::PreCandidate
            && self.now < self.pre_vote_started_at + self.config.heartbeat_interval_ms
            && last_log_term == self.log.last_term()
            && last_log_index == self.log.last_index()
            && election_rank(self.config.group, self.config.id)
                > election_rank(self.config.group, from)
    }

    fn on_vote_response(
        &mut self,
        now: Millis,
        from: NodeId,
        term: Term,
        pre_vote: bool,
        granted: bool,
    ) {
        if pre_vote {
            if self.role != Role::PreCandidate || (granted && term != self.term.saturating_add(1)) {
                return;
            }
        } else if self.role != Role::Candidate || term != self.term {
            return;
        }
        self.votes.insert(from, granted);
        self.check_votes(now);
    }

    fn check_votes(&mut self, now: Millis) {
        if self.role != Role::PreCandidate && self.role != Role::Candidate {
            return;
        }
        let self_counts = self.role == Role::PreCandidate || self.hs_durable();
        let me = self.config.id;
        let votes = &self.votes;
        let granted = |id: NodeId| votes.get(&id) == Some(&true) && (id != me || self_counts);
        let rejected = |id: NodeId| votes.get(&id) == Some(&false);
        // Raft §6: while joint, a candidate needs a majority of C_new and one of C_old; it
        // has lost once either half has a majority against it.
        let won = if self.bug_joint_elect_old_majority_only() && self.membership.is_joint() {
            let old = Membership::with_voters(self.membership.outgoing.iter().copied());
            old.is_quorum(granted)
        } else {
            self.membership.is_quorum(granted)
        };
        let half_lost = |set: &BTreeSet<NodeId>| {
            !set.is_empty() && set.iter().filter(|id| rejected(**id)).count() > set.len() / 2
        };
        let lost = half_lost(&self.membership.voters) || half_lost(&self.membership.outgoing);
        if won {
            if self.role == Role::PreCandidate {
                self.campaign(now, false);
            } else {
                self.become_leader(now);
            }
        } else if lost {
            self.become_follower(now, self.term, None);
        }
    }

    fn on_append_entries(
        &mut self,
        now: Millis,
        from: NodeId,
        prev_log_index: LogIndex,
        prev_log_term: Term,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
    ) {
        // Raft §5.3: reject unless our log holds an entry at prev_log_index with prev_log_term.
        // Everything at or below the compaction point is committed and therefore matches.
        let matches = prev_log_index <= self.log.snapshot_index()
            || self.log.term_at(prev_log_index) == Some(prev_log_term);
        if !matches {
            // Fast backtracking hints (thesis §5.3).
            let (conflict_term, conflict_index) = if prev_log_index > self.log.last_index() {
                (None, self.log.last_index() + 1)
            } else {
                (
                    self.log.term_at(prev_log_index),
                    self.log.first_index_of_term_run(prev_log_index),
                )
            };
            self.send(
                from,
                MessageBody::AppendEntriesResponse {
                    success: false,
                    index: prev_log_index,
                    conflict_term,
                    conflict_index,
                },
                Dep::HardState,
            );
            return;
        }
        let last_new = prev_log_index + entries.len() as u64;
        // Validate before mutating: entries must be contiguous after prev_log_index.
        if entries
            .iter()
            .enumerate()
            .any(|(i, e)| e.index != prev_log_index + 1 + i as u64)
        {
            return;
        }
        // Find the first entry we do not already hold (Raft §5.3 step 3: delete a conflicting
        // entry and everything after it, then append what is new).
        let mut first_new = entries.len();
        for (i, e) in entries.iter().enumerate() {
            if e.index <= self.log.snapshot_index() {
                continue;
            }
            match self.log.term_at(e.index) {
                Some(t) if t == e.term => continue,
                Some(_) => {
                    if e.index <= self.commit_index {
                        // A committed entry never changes (Raft §5.4.3); a leader that says
                        // otherwise is not one we can follow safely.
                        return;
                    }
                    self.truncate_log(now, e.index);
                    first_new = i;
                    break;
                }
                None => {
                    first_new = i;
                    break;
                }
            }
        }
        let mut membership_changed = false;
        for e in entries.into_iter().skip(first_new) {
            if let EntryPayload::Membership(m) = &e.payload {
                self.membership_entries.push((e.index, m.clone()));
                membership_changed = true;
            }
            self.log.push(e);
        }
        if membership_changed {
            self.refresh_membership(now);
        }
        // Raft figure 2: commitIndex = min(leaderCommit, index of last new entry).
        let commit = leader_commit.min(last_new);
        if commit > self.commit_index {
            self.commit_index = commit;
            self.refresh_role();
        }
        let dep = if self.bug_ack_before_persist() {
            Self::dep_nothing()
        } else {
            Dep::Everything
        };
        self.send(
            from,
            MessageBody::AppendEntriesResponse {
                success: true,
                index: last_new,
                conflict_term: None,
                conflict_index: 0,
            },
            dep,
        );
    }

    fn on_append_response(
        &mut self,
        now: Millis,
        from: NodeId,
        success: bool,
        index: LogIndex,
        conflict_term: Option<Term>,
        conflict_index: LogIndex,
    ) {
        if !self.heard_from_peer(now, from) {
            return;
        }
        if success {
            self.peer_matched(now, from, index);
            return;
        }
        let Some(p) = self.progress.get_mut(&from) else {
            return;
        };
        // A rejection: ignore stale ones (etcd's MaybeDecrTo).
        let stale = match p.state {
            ReplicationState::Replicate => index <= p.match_index,
            // `next_index >= 1` always; a peer's `index` is not trusted not to overflow.
            ReplicationState::Probe => index != p.next_index - 1,
            // A snapshot is on its way; the rejection predates it.
            ReplicationState::Snapshot => true,
        };
        if stale {
            return;
        }
        // Thesis §5.3 optimisation: skip the follower's whole conflicting term at once.
        let hinted = match conflict_term {
            Some(t) => match self.log.last_index_of_term(t) {
                Some(i) => i + 1,
                None => conflict_index,
            },
            None => conflict_index,
        };
        let next = hinted.min(index).max(1);
        if conflict_term.is_none() && conflict_index <= p.match_index {
            // The peer says its log ends below what it acknowledged: it lost its log (a wiped
            // or replaced data directory). Its match is forgotten, so it is caught up again —
            // by snapshot if the log no longer reaches — instead of being probed above its
            // log forever (`become_probe` never goes below the match). The commit index does
            // not move back: entries committed stay committed by the majority that holds them.
            p.match_index = conflict_index.saturating_sub(1);
        }
        p.become_probe(next);
    }

    fn on_heartbeat_response(&mut self, now: Millis, from: NodeId, read_ctx: u64) {
        if self.role != Role::Leader {
            return;
        }
        let last = self.log.last_index();
        let stall = 2 * self.config.heartbeat_interval_ms;
        let Some(p) = self.progress.get_mut(&from) else {
            return;
        };
        p.recent_active = true;
        let learner = p.learner;
        if p.match_index < last {
            match p.state {
                // Let a lost probe be retried.
                ReplicationState::Probe => p.probe_sent = false,
                // The peer answers heartbeats but not appends: an append was lost, so the
                // window would never drain. Probe again from its match index.
                ReplicationState::Replicate => {
                    if !p.inflight.is_empty() && now >= p.last_append_response + stall {
                        let next = p.match_index + 1;
                        p.become_probe(next);
                    }
                }
                // The transfer has its own deadline (`tick_leader`).
                ReplicationState::Snapshot => {}
            }
        }
        if !learner && self.membership.is_voter(from) {
            self.ack_round(read_ctx, from);
        }
    }

    // ------------------------------------------------------------------------------------
    // Elections
    // ------------------------------------------------------------------------------------

    fn tick_leader(&mut self, now: Millis) {
        if !self.config.host_heartbeats && now >= self.heartbeat_deadline {
            self.start_round(now);
            self.heartbeat_deadline = now + self.config.heartbeat_interval_ms;
        }
        for p in self.progress.values_mut() {
            if p.snapshot.is_some_and(|(_, deadline)| now >= deadline) {
                // The snapshot was not answered in time: probe again, which asks the shell
                // for a new transfer (a snapshotter that resumes picks up where it stopped).
                let next = p.match_index + 1;
                p.become_probe(next);
            }
        }
        if let Some(t) = self.transfer {
            if now >= t.deadline {
                // Thesis §3.10: abort a transfer that did not complete within an election
                // timeout and accept proposals again.
                self.transfer = None;
            }
        }
        if self.drained && self.transfer.is_none() {
            // A drained leader keeps handing off until another node leads.
            self.hand_off(now);
        }
        if now >= self.check_quorum_deadline {
            if self.config.check_quorum && !self.quorum_active() {
                // Thesis §6.2: a leader cut off from a quorum steps down, so clients stop
                // waiting on it and its lease is given up.
                self.become_follower(now, self.term, None);
                return;
            }
            for p in self.progress.values_mut() {
                p.recent_active = false;
            }
            if self.prune_at.is_some_and(|at| now >= at) {
                self.prune_at = None;
                self.prune_removed_peers();
            }
            self.check_quorum_deadline = now + self.config.election_timeout_min_ms;
        }
    }

    fn quorum_active(&self) -> bool {
        // Raft §6: while joint, a majority of each half must be active.
        self.membership.is_quorum(|v| {
            v == self.config.id || self.progress.get(&v).is_some_and(|p| p.recent_active)
        })
    }

    fn in_vote_lease(&self, now: Millis) -> bool {
        self.config.check_quorum && (self.role == Role::Leader || now < self.vote_lease_until)
    }

    /// Thesis §9.6: ask for pre-votes in term + 1 without touching our own term, so a node
    /// that cannot win (partitioned, or behind) never disrupts the group.
    fn campaign_pre_vote(&mut self, now: Millis) {
        self.role = Role::PreCandidate;
        self.pre_vote_started_at = now;
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.config.id, true);
        self.reset_election_deadline(now);
        let body = MessageBody::RequestVote {
            pre_vote: true,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            leadership_transfer: false,
        };
        let term = self.term.saturating_add(1);
        for to in self.other_voters() {
            let msg = Message {
                group: self.config.group,
                from: self.config.id,
                to,
                term,
                body: body.clone(),
            };
            self.send_msg(msg, Dep::HardState);
        }
        self.check_votes(now);
    }

    /// Raft §5.2: increment the term, vote for ourselves, ask every voter. The requests (and
    /// our own vote's weight) wait until the new term and vote are durable.
    fn campaign(&mut self, now: Millis, leadership_transfer: bool) {
        self.term = self.term.saturating_add(1);
        self.vote = Some(self.config.id);
        self.hs_dirty = true;
        self.role = Role::Candidate;
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.config.id, true);
        self.reset_election_deadline(now);
        let body = MessageBody::RequestVote {
            pre_vote: false,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            leadership_transfer,
        };
        for to in self.other_voters() {
            self.send(to, body.clone(), Dep::HardState);
        }
        self.check_votes(now);
    }

    fn become_follower(&mut self, now: Millis, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
            self.hs_dirty = true;
        }
        if self.role == Role::Leader {
            self.leader_cleanup();
        }
        self.role = if self.electable() {
            Role::Follower
        } else {
            Role::Learner
        };
        self.leader = leader;
        self.votes.clear();
        self.reset_election_deadline(now);
    }

    fn leader_cleanup(&mut self) {
        for r in self.pending_reads.drain(..) {
            self.actions.push(Action::ReadFailed {
                id: r.id,
                error: ReadError::LeadershipLost,
            });
        }
        self.rounds.clear();
        self.want_read_round = false;
        self.progress.clear();
        self.prune_at = None;
        self.transfer = None;
        self.lease_until = 0;
        self.lease_disabled = false;
    }

    fn become_leader(&mut self, now: Millis) {
        self.role = Role::Leader;
        self.leader = Some(self.config.id);
        self.votes.clear();
        self.progress.clear();
        self.prune_at = None;
        let next = self.log.last_index() + 1;
        for id in self.membership.all() {
            if id != self.config.id {
                let learner = !self.membership.is_voter(id);
                self.progress.insert(id, Progress::new(next, learner, now));
            }
        }
        self.transfer = None;
        self.lease_until = 0;
        self.lease_disabled = false;
        self.rounds.clear();
        self.pending_reads.clear();
        self.want_read_round = false;
        self.heartbeat_deadline = now + self.config.heartbeat_interval_ms;
        self.check_quorum_deadline = now + self.config.election_timeout_min_ms;
        // Raft §8 / thesis §6.4: a no-op of the new term lets the leader commit entries of
        // earlier terms (which it may not count, §5.4.2) and then serve reads.
        self.append_local(EntryPayload::Noop);
        self.maybe_commit(now);
    }

    fn other_voters(&self) -> Vec<NodeId> {
        self.membership
            .all_voters()
            .filter(|v| *v != self.config.id)
            .collect()
    }

    fn reset_election_deadline(&mut self, now: Millis) {
        let timeout = self
            .rng
            .random_range(self.config.election_timeout_min_ms..self.config.election_timeout_max_ms);
        self.election_deadline = now + timeout;
    }

    // ------------------------------------------------------------------------------------
    // Replication and commitment
    // ------------------------------------------------------------------------------------

    fn check_can_propose(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        Ok(())
    }

    /// Appends an entry of the current term to the leader's log; replication and persistence
    /// follow at the next poll, batched with other proposals.
    fn append_local(&mut self, payload: EntryPayload) -> Proposal {
        let index = self.log.last_index() + 1;
        let term = self.term;
        let membership = match &payload {
            EntryPayload::Membership(m) => Some(m.clone()),
            _ => None,
        };
        self.appended_bytes = self
            .appended_bytes
            .saturating_add(append_size(&payload) as u64);
        self.log.push(Entry {
            term,
            index,
            payload,
        });
        if let Some(m) = membership {
            self.membership_entries.push((index, m));
            self.refresh_membership(self.now);
        }
        Proposal { index, term }
    }

    /// Sends as many appends as each peer's state allows (one probe, or up to the in-flight
    /// window when replicating).
    fn send_appends(&mut self) {
        // Every poll offers each peer whatever it can take: new entries, or more after acks
        // opened its window, or a retry after a rejection.
        let mut peers = std::mem::take(&mut self.scratch_peers);
        peers.clear();
        peers.extend(self.progress.keys().copied());
        self.pace_wakeup = None;
        for &peer in &peers {
            while self.send_append(peer) {}
        }
        self.scratch_peers = peers;
    }

    /// Sends one AppendEntries to `peer` if its state allows and there is something to send.
    /// Returns whether another one could follow.
    fn send_append(&mut self, peer: NodeId) -> bool {
        let last = self.log.last_index();
        let window = self.config.max_inflight_appends;
        let Some(p) = self.progress.get(&peer) else {
            return false;
        };
        if !p.can_send(window) {
            return false;
        }
        let next = p.next_index;
        let probing = p.state == ReplicationState::Probe;
        if !probing && next > last {
            return false;
        }
        if probing && next > last + 1 {
            return false;
        }
        let prev = next - 1;
        let Some(prev_term) = self.log.term_at(prev) else {
            // Compacted (Raft §7): the peer needs the snapshot.
            self.start_snapshot_send(peer);
            return false;
        };
        if !self.pace_allows(peer, last) {
            return false;
        }
        let max_last = last.min(next + self.config.max_entries_per_append as u64 - 1);
        let candidates = self.log.range(next, max_last);
        let mut bytes = 0usize;
        let mut count = 0usize;
        for e in candidates {
            let size = append_size(&e.payload);
            if count > 0 && bytes + size > self.config.max_bytes_per_append {
                break;
            }
            bytes += size;
            count += 1;
        }
        let entries = candidates[..count].to_vec();
        let sent_last = prev + count as u64;
        let body = MessageBody::AppendEntries {
            prev_log_index: prev,
            prev_log_term: prev_term,
            entries,
            leader_commit: self.commit_index,
        };
        self.send(peer, body, Dep::HardState);
        let Some(p) = self.progress.get_mut(&peer) else {
            return false;
        };
        if p.pace.active {
            p.pace.credit = p
                .pace
                .credit
                .saturating_sub(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        if probing {
            p.probe_sent = true;
            false
        } else {
            p.next_index = sent_last + 1;
            p.inflight.push_back(sent_last);
            p.next_index <= last
        }
    }

    /// Whether an append may go to `peer` now as far as catch-up pacing is concerned (see
    /// `RaftConfig::learner_catch_up_bytes_per_s`): voters, learners within `promote_max_lag`
    /// of `last` and unpaced configurations always may. A learner out of credit waits; the
    /// leader's timer wakes it when the clock has earned some back.
    fn pace_allows(&mut self, peer: NodeId, last: LogIndex) -> bool {
        let rate = self.config.learner_catch_up_bytes_per_s;
        let now = self.now;
        let appended = self.appended_bytes;
        // Credit never exceeds a full in-flight window: what a learner could not spend (its
        // window was full) is not sent later as one burst.
        let cap = (self.config.max_bytes_per_append as u64)
            .saturating_mul(self.config.max_inflight_appends as u64);
        let max_lag = self.config.promote_max_lag;
        let Some(p) = self.progress.get_mut(&peer) else {
            return false;
        };
        let far_behind = last.saturating_sub(p.match_index) > max_lag;
        if rate == 0 || !p.learner || !far_behind {
            p.pace.active = false;
            return true;
        }
        if p.pace.active {
            p.pace.refill(now, appended, rate, cap);
        } else {
            p.pace.reset(now, appended);
        }
        if p.pace.credit >= 0 {
            return true;
        }
        let at = now.saturating_add(p.pace.wait_ms(rate));
        self.paced_waits += 1;
        self.pace_wakeup = Some(self.pace_wakeup.map_or(at, |w| w.min(at)));
        false
    }

    /// Raft §5.3/§5.4.2: commit the highest index held by a quorum of voters, but only if its
    /// entry is of the current term (figure 8). The leader counts its own log only as far as it
    /// is durable.
    fn maybe_commit(&mut self, now: Millis) {
        if self.role != Role::Leader {
            return;
        }
        let own = if self.bug_ack_before_persist() {
            self.log.last_index()
        } else {
            self.persisted_index
        };
        // Raft §6: while joint, an entry commits only once a majority of C_new *and* one of
        // C_old hold it.
        let mut candidate = self.quorum_match(own, false);
        if self.membership.is_joint() && !self.bug_joint_commit_new_majority_only() {
            candidate = candidate.min(self.quorum_match(own, true));
        }
        if candidate <= self.commit_index {
            return;
        }
        if !self.bug_commit_previous_term_by_counting()
            && self.log.term_at(candidate) != Some(self.term)
        {
            return;
        }
        self.commit_index = candidate;
        self.on_leader_commit(now);
    }

    /// The highest index a majority of the voters (`outgoing`: of C_old instead) holds,
    /// counting this node's own log up to `own`. 0 for an empty set.
    fn quorum_match(&mut self, own: LogIndex, outgoing: bool) -> LogIndex {
        let set = if outgoing {
            &self.membership.outgoing
        } else {
            &self.membership.voters
        };
        let mut matches = std::mem::take(&mut self.scratch_matches);
        matches.clear();
        matches.extend(set.iter().map(|v| {
            if *v == self.config.id {
                own
            } else {
                self.progress.get(v).map_or(0, |p| p.match_index)
            }
        }));
        matches.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = matches.get(set.len() / 2).copied().unwrap_or(0);
        self.scratch_matches = matches;
        candidate
    }

    /// Forgets the progress of peers that are no longer members once the change that removed
    /// them is committed. Called at the first check-quorum boundary at least an election
    /// timeout after that commit (`prune_at`), not at the commit itself: meanwhile the removed
    /// peer keeps receiving heartbeats, whose commit index tells it its removal committed (see
    /// `electable`: a node removed by an entry it does not know committed still campaigns).
    /// An unreachable one is forgotten then anyway.
    fn prune_removed_peers(&mut self) {
        if self
            .membership_entries
            .last()
            .is_some_and(|(i, _)| *i > self.commit_index)
        {
            return;
        }
        let membership = &self.membership;
        self.progress.retain(|id, _| membership.contains(*id));
    }

    fn on_leader_commit(&mut self, now: Millis) {
        // A base membership (bootstrap or snapshot) is committed by definition.
        let config_committed = self
            .membership_entries
            .last()
            .is_none_or(|(i, _)| *i <= self.commit_index);
        if config_committed
            && self.prune_at.is_none()
            && self
                .progress
                .keys()
                .any(|id| !self.membership.contains(*id))
        {
            self.prune_at = Some(now + self.config.election_timeout_min_ms);
        }
        // Thesis §4.2.2: a leader removed from the voters steps down once the change commits.
        if !self.membership.is_voter(self.config.id) && config_committed {
            self.become_follower(now, self.term, None);
            return;
        }
        // Raft §6: once C_old,new is committed the leader appends C_new. A leader elected
        // during the joint phase gets here once its first entry commits (which commits
        // C_old,new with it), so a transition interrupted by a crash is finished.
        if self.membership.is_joint() && config_committed {
            let next = self.membership.leave_joint();
            self.append_membership(next);
        }
        // Reads registered before the first commit of the term could not exist (NotReady),
        // so nothing to do for them here.
        self.maybe_send_timeout_now();
    }

    fn maybe_send_timeout_now(&mut self) {
        let Some(t) = self.transfer else {
            return;
        };
        if t.timeout_now_sent {
            return;
        }
        let up_to_date = self
            .progress
            .get(&t.target)
            .is_some_and(|p| p.match_index >= self.log.last_index());
        if up_to_date {
            self.send(t.target, MessageBody::TimeoutNow, Dep::HardState);
            if let Some(tr) = self.transfer.as_mut() {
                tr.timeout_now_sent = true;
            }
        }
    }

    /// Follower side of Raft §5.3: drop a conflicting suffix. The persistence layer learns of
    /// it through `truncate_from`; anything acknowledged about the dropped entries is void.
    fn truncate_log(&mut self, now: Millis, from: LogIndex) {
        self.log.truncate_from(from);
        if from <= self.flushed_last {
            self.pending_truncate = Some(self.pending_truncate.map_or(from, |t| t.min(from)));
            self.flushed_last = from - 1;
        }
        for p in self.in_flight.iter_mut() {
            p.log_last = p.log_last.min(from - 1);
        }
        self.persisted_index = self.persisted_index.min(from - 1);
        // A withheld success for the dropped entries would claim a replica that will never be
        // durable; dropping the message is always safe (the network may lose it anyway).
        self.withheld.retain(|(_, m)| {
            !matches!(
                m.body,
                MessageBody::AppendEntriesResponse {
                    success: true,
                    index,
                    ..
                } if index >= from
            )
        });
        let before = self.membership_entries.len();
        self.membership_entries.retain(|(i, _)| *i < from);
        if self.membership_entries.len() != before {
            self.refresh_membership(now);
        }
    }

    /// Recomputes the membership in force from the log and adapts role and progress to it.
    fn refresh_membership(&mut self, now: Millis) {
        self.membership = self
            .membership_entries
            .last()
            .map_or_else(|| self.base_membership.clone(), |(_, m)| m.clone());
        let is_voter = self.electable();
        self.was_member |= self.membership.contains(self.config.id);
        match self.role {
            Role::Leader => {
                let next = self.log.last_index();
                let members: Vec<NodeId> = self.membership.all().collect();
                // Removed peers keep receiving the log until the change commits (see
                // `prune_removed_peers`), so they learn of their removal and stay quiet.
                for p in self.progress.values_mut() {
                    p.learner = true;
                }
                for id in members {
                    if id == self.config.id {
                        continue;
                    }
                    let learner = !self.membership.is_voter(id);
                    self.progress
                        .entry(id)
                        .and_modify(|p| p.learner = learner)
                        .or_insert_with(|| Progress::new(next, learner, now));
                }
                if let Some(t) = self.transfer {
                    if !self.membership.is_voter(t.target) {
                        self.transfer = None;
                    }
                }
            }
            Role::Follower | Role::PreCandidate | Role::Candidate if !is_voter => {
                self.role = Role::Learner;
                self.votes.clear();
            }
            Role::Learner if is_voter => {
                self.role = Role::Follower;
                self.reset_election_deadline(now);
            }
            _ => {}
        }
    }

    fn emit_apply(&mut self) {
        if self.installing.is_some() || self.pending_snapshot.is_some() {
            // The entries up to the snapshot are gone; the state machine continues from the
            // snapshot once its install is durable.
            return;
        }
        let durable = if self.bug_ack_before_persist() {
            self.log.last_index()
        } else {
            self.persisted_index
        };
        // Only durable entries are applied, so a restart never finds `applied` beyond its log.
        let upto = self.commit_index.min(durable);
        if upto > self.applied {
            let entries = self.log.range(self.applied + 1, upto).to_vec();
            if !entries.is_empty() {
                self.actions.push(Action::Apply(entries));
            }
            self.applied = upto;
        }
    }

    // ------------------------------------------------------------------------------------
    // Reads (thesis §6.4)
    // ------------------------------------------------------------------------------------

    fn lease_valid(&self, now: Millis) -> bool {
        if self.bug_lease_without_check_quorum() {
            return true;
        }
        if !self.config.check_quorum || self.lease_disabled {
            return false;
        }
        if self.bug_lease_read_after_expiry() {
            return self.lease_until > 0;
        }
        now < self.lease_until
    }

    /// Starts a heartbeat round: asserts leadership, carries each follower's commit index
    /// (capped at its match, so it only commits what it holds) and a read context.
    fn start_round(&mut self, now: Millis) {
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        self.want_read_round = false;
        let mut acks = Vec::new();
        if self.membership.is_voter(self.config.id) {
            acks.push(self.config.id);
        }
        self.rounds.push_back(Round {
            ctx,
            sent_at: now,
            acks,
        });
        while self.rounds.len() > MAX_ROUNDS {
            self.rounds.pop_front();
        }
        let targets: Vec<(NodeId, LogIndex)> = self
            .progress
            .iter()
            .map(|(id, p)| (*id, p.match_index.min(self.commit_index)))
            .collect();
        for (to, commit) in targets {
            self.send(
                to,
                MessageBody::Heartbeat {
                    commit,
                    read_ctx: ctx,
                },
                Dep::HardState,
            );
        }
        self.check_round(ctx);
    }

    fn ack_round(&mut self, ctx: u64, from: NodeId) {
        if let Some(r) = self.rounds.iter_mut().find(|r| r.ctx == ctx) {
            if !r.acks.contains(&from) {
                r.acks.push(from);
            }
            self.check_round(ctx);
        }
    }

    fn check_round(&mut self, ctx: u64) {
        let Some(r) = self.rounds.iter().find(|r| r.ctx == ctx) else {
            return;
        };
        // Raft §6: while joint, a majority of each half must have acknowledged.
        if !self.membership.is_quorum(|id| r.acks.contains(&id)) {
            return;
        }
        let sent_at = r.sent_at;
        self.rounds.retain(|r| r.ctx > ctx);
        // Thesis §6.4.1: a quorum acknowledged us at or after `sent_at`, and none of them will
        // vote for another leader within an election timeout of that, so we lead until
        // `sent_at + lease` on our clock (lease_ms is bounded for clock drift by validate()).
        if self.config.check_quorum && !self.lease_disabled {
            self.lease_until = self.lease_until.max(sent_at + self.config.lease_ms);
        }
        while let Some(r) = self.pending_reads.front().copied() {
            if r.round > ctx {
                break;
            }
            self.pending_reads.pop_front();
            self.actions.push(Action::ReadReady {
                id: r.id,
                index: r.index,
            });
        }
    }

    // ------------------------------------------------------------------------------------
    // Persistence and outputs
    // ------------------------------------------------------------------------------------

    fn advance_clock(&mut self, now: Millis) {
        self.now = self.now.max(now);
    }

    fn persist_dirty(&self) -> bool {
        self.hs_dirty
            || self.pending_snapshot.is_some()
            || self.pending_truncate.is_some()
            || self.log.last_index() > self.flushed_last
    }

    fn hs_durable(&self) -> bool {
        !self.hs_dirty && self.hs_seq <= self.completed_seq
    }

    /// Issues one persist request for everything changed since the last one.
    fn flush_persist(&mut self) {
        if !self.persist_dirty() {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let hard_state = self.hs_dirty.then_some(HardState {
            term: self.term,
            vote: self.vote,
        });
        if self.hs_dirty {
            self.hs_seq = seq;
            self.hs_dirty = false;
        }
        let last = self.log.last_index();
        let entries = self.log.range(self.flushed_last + 1, last).to_vec();
        self.flushed_last = last;
        self.in_flight.push_back(InFlightPersist {
            seq,
            log_last: last,
        });
        let snapshot = self.pending_snapshot.take();
        if let Some(meta) = &snapshot {
            self.installing = Some((seq, meta.clone()));
        }
        self.actions.push(Action::Persist(PersistRequest {
            seq,
            hard_state,
            truncate_from: self.pending_truncate.take(),
            entries,
            snapshot,
        }));
    }

    fn send(&mut self, to: NodeId, body: MessageBody, dep: Dep) {
        let msg = Message {
            group: self.config.group,
            from: self.config.id,
            to,
            term: self.term,
            body,
        };
        self.send_msg(msg, dep);
    }

    /// Sends `msg` now, or withholds it until the persist it depends on completes (the
    /// persistence contract: Raft figure 2, "before responding to RPCs").
    fn send_msg(&mut self, msg: Message, dep: Dep) {
        let required = match dep {
            #[cfg(feature = "planted-bugs")]
            Dep::Nothing => None,
            Dep::HardState => {
                if self.hs_dirty {
                    Some(self.next_seq)
                } else {
                    Some(self.hs_seq)
                }
            }
            Dep::Everything => {
                if self.persist_dirty() {
                    Some(self.next_seq)
                } else {
                    Some(self.next_seq - 1)
                }
            }
        };
        match required {
            Some(seq) if seq > self.completed_seq => self.withheld.push((seq, msg)),
            _ => self.actions.push(Action::Send(msg)),
        }
    }

    fn emit_timer(&mut self) {
        let at = match self.role {
            Role::Leader => {
                // With host heartbeats the host's beat drives them; without check-quorum or a
                // transfer nothing else is due (`Millis::MAX`: no timer).
                let mut at = if self.config.host_heartbeats {
                    Millis::MAX
                } else {
                    self.heartbeat_deadline
                };
                if self.config.check_quorum {
                    at = at.min(self.check_quorum_deadline);
                }
                if let Some(t) = self.transfer {
                    at = at.min(t.deadline);
                }
                if let Some(w) = self.pace_wakeup {
                    at = at.min(w);
                }
                at
            }
            _ => self.election_deadline,
        };
        if self.timer_emitted != Some(at) {
            self.timer_emitted = Some(at);
            self.actions.push(Action::SetTimer { at });
        }
    }

    fn report_role(&mut self) {
        let now = (self.role, self.term, self.leader);
        if now != self.reported {
            self.reported = now;
            self.actions.push(Action::RoleChanged {
                role: self.role,
                term: self.term,
                leader: self.leader,
            });
        }
    }

    // ------------------------------------------------------------------------------------
    // Planted bugs (test-only feature): each returns false unless its switch is on.
    // ------------------------------------------------------------------------------------

    fn bug_vote_without_log_check(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.config.planted_bugs.vote_without_log_check
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            false
        }
    }

    fn bug_commit_previous_term_by_counting(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.config.planted_bugs.commit_previous_term_by_counting
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            false
        }
    }

    fn bug_lease_without_check_quorum(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.config.planted_bugs.lease_without_check_quorum
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            false
        }
    }

    fn bug_lease_read_after_expiry(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.config.planted_bugs.lease_read_after_expiry
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            false
        }
    }

    fn bug_ack_before_persist(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.config.planted_bugs.ack_before_persist
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            false
        }
    }

    fn bug_compact_unapplied(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.config.planted_bugs.compact_unapplied
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            false
        }
    }

    fn bug_install_stale_snapshot(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.config.planted_bugs.install_stale_snapshot
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            false
        }
    }

    fn bug_joint_commit_new_majority_only(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.config.planted_bugs.joint_commit_new_majority_only
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            false
        }
    }

    fn bug_joint_elect_old_majority_only(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.config.planted_bugs.joint_elect_old_majority_only
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            false
        }
    }

    fn bug_second_change_before_commit(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.config.planted_bugs.second_change_before_commit
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            false
        }
    }

    fn dep_nothing() -> Dep {
        #[cfg(feature = "planted-bugs")]
        {
            Dep::Nothing
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            Dep::Everything
        }
    }
}

/// A node's rank in one group's pre-vote ties ([`Raft`]'s `runs_ahead_of`): a fixed
/// pseudo-random order of the nodes, different for each group, so that the ties a failover
/// settles do not all go to the same node (leaders stay spread over the survivors).
fn election_rank(group: GroupId, node: NodeId) -> u64 {
    // SplitMix64's finalizer over the pair: a bijection of the mixed input, so two nodes of
    // one group never share a rank.
    let mut z = group
        .get()
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(node.get())
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What an entry counts for in the append limits and in learner pacing: its command's bytes
/// plus 24 for the index, term and framing (membership and no-op entries count 24).
fn append_size(payload: &EntryPayload) -> usize {
    let command = match payload {
        EntryPayload::Command(c) => c.len(),
        _ => 0,
    };
    command + 24
}
