//! A sans-IO host for many Raft groups on one node: the per-worker engine that issue 15 asks
//! for (models: TiKV's batch-system poller with hibernating regions, CockroachDB's coalesced
//! heartbeats and `Replica.maybeQuiesce`, Dragonboat's execution engine with one
//! `MessageBatch` per host).
//!
//! A [`Host`] owns any number of [`Raft`] cores (added and removed at runtime) and gives them
//! **one timer structure**: an ordered set of `(deadline, group)` holding only groups that are
//! not quiesced, plus one node-wide heartbeat *beat*. The shell arms a single timer at
//! [`Host::next_deadline`] and calls [`Host::tick`]; only due groups are ticked.
//!
//! **Coalesced heartbeats.** Cores run with [`RaftConfig::host_heartbeats`]: they never
//! heartbeat on their own. At each beat (every `heartbeat_interval_ms`) the host starts a
//! heartbeat round on every leader it drives, and [`Host::drain`] turns the heartbeats and
//! their answers into compact [`CoalescedHeartbeat`] / [`CoalescedResponse`] items. Every
//! drain emits at most **one [`Frame`] per peer**, carrying every group's messages to it, so
//! between two nodes one frame per beat carries all groups' heartbeats, whatever their number.
//!
//! **Quiescence.** A leader whose group is idle ([`Raft::quiescent`]: nothing in flight, every
//! peer caught up) and whose peers are all up marks its next beat's heartbeats `quiesce`. A
//! follower that holds exactly the leader's commit and is idle itself quiesces on such a
//! heartbeat and says so in its answer; once every peer answered `quiesced` for that round and
//! the group is still idle, the leader quiesces at the following beat. A quiesced group is not
//! ticked and sends no heartbeats. It wakes ([`Raft::unquiesce`]) on a command
//! ([`Host::with_group`]), on any message other than a quiesce heartbeat or a heartbeat answer,
//! on a [`Frame::wake`] request from a follower, and on news of a failed leader: gossip's
//! [`Host::peer_down`] and the transport's [`Host::peer_unreachable`] (the connection to the
//! node closed) wake the quiesced groups whose leader is that node (a follower with its
//! election timer off must still notice a dead leader), [`Host::peer_up`] wakes the quiesced
//! groups this node leads that count the returning node as a member. A follower woken by
//! anything but its leader asks the leader to wake too, so a false alarm costs one heartbeat,
//! not an election: a follower woken by activity takes its vote lease up again
//! ([`Raft::unquiesce`], [`Wake`]), so the peer that raised the alarm cannot win the votes of
//! quiesced followers while the leader lives. See `docs/consensus.md`, "Many groups per node",
//! for why this keeps Raft safe.

use super::config::RaftConfig;
use super::core::Raft;
use super::types::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One group's heartbeat inside a [`Frame`] (the fields of [`MessageBody::Heartbeat`] plus
/// the group and term a [`Message`] would carry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoalescedHeartbeat {
    /// The group.
    pub group: GroupId,
    /// The leader's term.
    pub term: Term,
    /// The commit index the follower may adopt (capped at its match index).
    pub commit: LogIndex,
    /// The heartbeat round (ReadIndex context).
    pub read_ctx: u64,
    /// The leader proposes to quiesce the group: a follower that holds exactly `commit` and
    /// is idle stops ticking it and answers `quiesced`.
    pub quiesce: bool,
}

/// One group's heartbeat answer inside a [`Frame`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoalescedResponse {
    /// The group.
    pub group: GroupId,
    /// The follower's term.
    pub term: Term,
    /// The round being answered.
    pub read_ctx: u64,
    /// The follower quiesced the group on this node.
    pub quiesced: bool,
}

/// Everything one drain of a host sends to one peer: every group's messages, heartbeats and
/// heartbeat answers, and wake-up requests. The shell sends it as one transport frame.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// The sending node.
    pub from: NodeId,
    /// The receiving node.
    pub to: NodeId,
    /// Messages other than heartbeats and their answers, in the order the cores emitted them.
    pub messages: Vec<Message>,
    /// Heartbeats, one per group at most per round.
    pub heartbeats: Vec<CoalescedHeartbeat>,
    /// Heartbeat answers.
    pub responses: Vec<CoalescedResponse>,
    /// Groups the sender woke from quiescence for a reason other than its leader: the
    /// receiver (their leader) wakes them too and heartbeats again.
    pub wake: Vec<GroupId>,
}

impl Frame {
    /// Whether the frame carries nothing.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.heartbeats.is_empty()
            && self.responses.is_empty()
            && self.wake.is_empty()
    }
}

/// What a host asks its shell to do, drained with [`Host::drain`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostAction {
    /// Send this frame to `frame.to` (best effort).
    Send(Frame),
    /// Carry out a core's action for `group`, as documented on [`Action`] (`Send` and
    /// `SetTimer` never appear here: the host batches the first and owns the second).
    Group {
        /// The group whose core emitted it.
        group: GroupId,
        /// The action.
        action: Action,
    },
}

/// The host's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostConfig {
    /// This node.
    pub id: NodeId,
    /// The node-wide beat: how often every active leader heartbeats (normally the cores'
    /// `heartbeat_interval_ms`).
    pub heartbeat_interval_ms: Millis,
    /// Whether idle groups quiesce.
    pub quiesce: bool,
}

/// Why the host refused a group.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// A group with this id is already hosted.
    #[error("group {0} is already hosted")]
    GroupExists(GroupId),
    /// The core belongs to another node.
    #[error("group {group} is a core of node {core}, not of this node {host}")]
    WrongNode {
        /// The group.
        group: GroupId,
        /// The core's node id.
        core: NodeId,
        /// The host's node id.
        host: NodeId,
    },
    /// The core heartbeats on its own ([`RaftConfig::host_heartbeats`] is off): its
    /// heartbeats could not be coalesced.
    #[error("group {0} does not leave heartbeats to the host")]
    OwnHeartbeats(GroupId),
}

/// Counters for tests, benchmarks and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Core `tick` calls (timer firings of individual groups).
    pub ticks: u64,
    /// Node-wide beats.
    pub beats: u64,
    /// Frames emitted.
    pub frames: u64,
    /// Coalesced heartbeats sent.
    pub heartbeats: u64,
    /// Messages (other than heartbeats and answers) sent.
    pub messages: u64,
    /// Times a group quiesced.
    pub quiesced: u64,
    /// Times a group woke from quiescence.
    pub woken: u64,
}

/// One hosted group.
#[derive(Debug)]
struct Slot {
    raft: Raft,
    /// The deadline the core asked for last (kept while quiesced, re-armed on wake).
    timer_at: Option<Millis>,
    quiesced: bool,
    /// The next drain's heartbeats of this group carry `quiesce`.
    tag_quiesce: bool,
    /// The round of the last quiesce proposal and the peers that answered `quiesced`.
    attempt: Option<(u64, BTreeSet<NodeId>)>,
}

/// Many Raft cores of one node, one timer structure, one frame per peer per drain. See the
/// module docs.
#[derive(Debug)]
pub struct Host {
    config: HostConfig,
    now: Millis,
    groups: BTreeMap<GroupId, Slot>,
    /// Deadlines of groups that are not quiesced.
    timers: BTreeSet<(Millis, GroupId)>,
    /// Groups that lead here and are not quiesced: the beat visits only these.
    leaders: BTreeSet<GroupId>,
    /// The next node-wide beat, while some group leads here.
    beat_at: Option<Millis>,
    /// Groups to poll at the next drain.
    ready: BTreeSet<GroupId>,
    /// Nodes gossip reports down.
    down: BTreeSet<NodeId>,
    /// Wake requests to send, per leader.
    wakes: BTreeMap<NodeId, Vec<GroupId>>,
    stats: HostStats,
    scratch: Vec<Action>,
    /// The groups the last drain polled.
    polled: Vec<GroupId>,
}

impl Host {
    /// An empty host.
    pub fn new(config: HostConfig, now: Millis) -> Host {
        Host {
            config,
            now,
            groups: BTreeMap::new(),
            timers: BTreeSet::new(),
            leaders: BTreeSet::new(),
            beat_at: None,
            ready: BTreeSet::new(),
            down: BTreeSet::new(),
            wakes: BTreeMap::new(),
            stats: HostStats::default(),
            scratch: Vec::new(),
            polled: Vec::new(),
        }
    }

    /// The core config a hosted group needs: `template` with host-driven heartbeats.
    pub fn group_config(template: &RaftConfig, id: NodeId, group: GroupId) -> RaftConfig {
        RaftConfig {
            id,
            group,
            host_heartbeats: true,
            ..template.clone()
        }
    }

    /// This node.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// Starts hosting `raft` (built with [`Host::group_config`]). Its first actions (its
    /// timer) come out of the next [`Host::drain`].
    pub fn add_group(&mut self, raft: Raft) -> Result<(), HostError> {
        let group = raft.group();
        if raft.id() != self.config.id {
            return Err(HostError::WrongNode {
                group,
                core: raft.id(),
                host: self.config.id,
            });
        }
        if !raft.config().host_heartbeats {
            return Err(HostError::OwnHeartbeats(group));
        }
        if self.groups.contains_key(&group) {
            return Err(HostError::GroupExists(group));
        }
        self.groups.insert(
            group,
            Slot {
                raft,
                timer_at: None,
                quiesced: false,
                tag_quiesce: false,
                attempt: None,
            },
        );
        self.ready.insert(group);
        Ok(())
    }

    /// Stops hosting `group` and hands its core back (its pending actions are dropped with
    /// the timer entry; the caller may still poll the core).
    pub fn remove_group(&mut self, group: GroupId) -> Option<Raft> {
        let slot = self.groups.remove(&group)?;
        if let Some(at) = slot.timer_at {
            self.timers.remove(&(at, group));
        }
        self.leaders.remove(&group);
        self.ready.remove(&group);
        Some(slot.raft)
    }

    /// The hosted groups, in id order.
    pub fn groups(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.groups.keys().copied()
    }

    /// Number of hosted groups.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether no group is hosted.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Read access to a group's core (checkers, status pages).
    pub fn raft(&self, group: GroupId) -> Option<&Raft> {
        self.groups.get(&group).map(|s| &s.raft)
    }

    /// Whether `group` is quiesced on this node.
    pub fn is_quiesced(&self, group: GroupId) -> bool {
        self.groups.get(&group).is_some_and(|s| s.quiesced)
    }

    /// Number of quiesced groups.
    pub fn quiesced_count(&self) -> usize {
        self.groups.values().filter(|s| s.quiesced).count()
    }

    /// The groups the last [`Host::drain`] polled (for checkers that inspect only what
    /// changed).
    pub fn polled(&self) -> &[GroupId] {
        &self.polled
    }

    /// The counters.
    pub fn stats(&self) -> HostStats {
        self.stats
    }

    /// Runs a command on `group`'s core (propose, read, persisted, snapshot calls, membership
    /// changes, …): a command is activity, so a quiesced group wakes first (and asks its
    /// leader to wake). `None` if the group is not hosted.
    pub fn with_group<R>(
        &mut self,
        now: Millis,
        group: GroupId,
        f: impl FnOnce(&mut Raft) -> R,
    ) -> Option<R> {
        self.advance(now);
        let now = self.now;
        if !self.groups.contains_key(&group) {
            return None;
        }
        self.wake(now, group, None, Wake::Activity);
        let slot = self.groups.get_mut(&group)?;
        let r = f(&mut slot.raft);
        self.ready.insert(group);
        Some(r)
    }

    /// [`Host::with_group`] for a shell that holds the core across several calls: wakes the
    /// group (a command is activity), marks it for the next drain and lends its core. `None`
    /// if the group is not hosted.
    pub fn group_mut(&mut self, now: Millis, group: GroupId) -> Option<&mut Raft> {
        self.advance(now);
        let now = self.now;
        if !self.groups.contains_key(&group) {
            return None;
        }
        self.wake(now, group, None, Wake::Activity);
        self.ready.insert(group);
        self.groups.get_mut(&group).map(|s| &mut s.raft)
    }

    /// A frame from a peer. Items for groups not hosted here are ignored.
    pub fn handle_frame(&mut self, now: Millis, frame: Frame) {
        self.advance(now);
        let now = self.now;
        if frame.to != self.config.id || frame.from == self.config.id {
            return;
        }
        let from = frame.from;
        for group in frame.wake {
            self.wake(now, group, Some(from), Wake::Activity);
        }
        for m in frame.messages {
            if m.from != from {
                continue;
            }
            let group = m.group;
            self.wake(now, group, Some(from), Wake::Activity);
            if let Some(slot) = self.groups.get_mut(&group) {
                slot.raft.handle_message(now, m);
                self.ready.insert(group);
            }
        }
        for hb in frame.heartbeats {
            if !self.groups.contains_key(&hb.group) {
                continue;
            }
            if !hb.quiesce {
                self.wake(now, hb.group, Some(from), Wake::Activity);
            }
            let me = self.config.id;
            // A follower that gossip says cannot reach its leader stays awake: once quiesced,
            // it would learn of the leader's death only from a `peer_down` it already had.
            let quiesce_enabled = self.config.quiesce && !self.down.contains(&from);
            let Some(slot) = self.groups.get_mut(&hb.group) else {
                continue;
            };
            slot.raft.handle_message(
                now,
                Message {
                    group: hb.group,
                    from,
                    to: me,
                    term: hb.term,
                    body: MessageBody::Heartbeat {
                        commit: hb.commit,
                        read_ctx: hb.read_ctx,
                    },
                },
            );
            self.ready.insert(hb.group);
            if hb.quiesce {
                let r = &slot.raft;
                let eligible = quiesce_enabled
                    && r.role() != Role::Leader
                    && r.leader() == Some(from)
                    && r.term() == hb.term
                    && hb.commit == r.last_index()
                    && r.quiescent();
                let quiesced = slot.quiesced;
                if eligible && !quiesced {
                    self.quiesce(hb.group);
                } else if !eligible && quiesced {
                    self.wake(now, hb.group, Some(from), Wake::Activity);
                }
            }
        }
        for resp in frame.responses {
            // Answers never wake a group: they carry nothing new, and a late one must not
            // undo a quiescence.
            let Some(slot) = self.groups.get_mut(&resp.group) else {
                continue;
            };
            if resp.quiesced && resp.term == slot.raft.term() {
                if let Some((ctx, acked)) = &mut slot.attempt {
                    if *ctx == resp.read_ctx {
                        acked.insert(from);
                    }
                }
            }
            slot.raft.handle_message(
                now,
                Message {
                    group: resp.group,
                    from,
                    to: self.config.id,
                    term: resp.term,
                    body: MessageBody::HeartbeatResponse {
                        read_ctx: resp.read_ctx,
                    },
                },
            );
            self.ready.insert(resp.group);
        }
    }

    /// Gossip reports `node` down: every quiesced group whose leader is `node` wakes, so its
    /// election timer runs again (pre-vote and check-quorum apply as usual). Leaders do not
    /// quiesce while a member is reported down, nor do followers of a leader reported down.
    pub fn peer_down(&mut self, now: Millis, node: NodeId) {
        self.advance(now);
        self.down.insert(node);
        self.leader_failed(node);
    }

    /// The transport's connection to `node` closed (the peer's process ended — a crash closes
    /// its sockets at once — or the connection broke or was reset): the quiesced groups whose
    /// leader is `node` wake as for [`Host::peer_down`], long before gossip's failure detector
    /// could say so. Nothing is remembered: a connection normally comes back within the
    /// transport's reconnect backoff, and a follower can only quiesce again on a heartbeat
    /// from its leader, i.e. over a working connection (whose loss is reported again).
    ///
    /// A false alarm (the leader lives; only this connection reset) costs no election: the
    /// woken followers ask the leader to wake (the request waits in the link's queue until
    /// the transport reconnects, normally within one backoff of at most 100 ms, below the
    /// election timeout), and a follower that times out first is refused by the leader and by
    /// every other follower, whose vote leases hold (see [`Raft::unquiesce`]).
    pub fn peer_unreachable(&mut self, now: Millis, node: NodeId) {
        self.advance(now);
        self.leader_failed(node);
    }

    /// Gossip reports `node` up again: every quiesced group this node leads that counts
    /// `node` as a member wakes and heartbeats, so the returning node hears its leader before
    /// its own election timer fires.
    pub fn peer_up(&mut self, now: Millis, node: NodeId) {
        self.advance(now);
        let now = self.now;
        self.down.remove(&node);
        let woken: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, s)| {
                s.quiesced && s.raft.role() == Role::Leader && s.raft.membership().contains(node)
            })
            .map(|(g, _)| *g)
            .collect();
        for g in woken {
            self.wake(now, g, None, Wake::Activity);
        }
    }

    /// The earliest time [`Host::tick`] has something to do, if any.
    pub fn next_deadline(&self) -> Option<Millis> {
        let timer = self.timers.first().map(|(at, _)| *at);
        match (timer, self.beat_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time passed: ticks every group whose deadline is due (and only those) and, at the
    /// beat, starts a heartbeat round on every active leader (proposing or completing
    /// quiescence for idle ones).
    pub fn tick(&mut self, now: Millis) {
        self.advance(now);
        let now = self.now;
        while let Some(&(at, group)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, group));
            if let Some(slot) = self.groups.get_mut(&group) {
                slot.timer_at = None;
                slot.raft.tick(now);
                self.stats.ticks += 1;
                self.ready.insert(group);
            }
        }
        if self.beat_at.is_some_and(|at| now >= at) {
            self.beat(now);
        }
    }

    /// Polls every group with new activity and hands out their actions, every message to a
    /// peer in one [`Frame`] per peer.
    pub fn drain(&mut self, out: &mut Vec<HostAction>) {
        let mut frames: BTreeMap<NodeId, Frame> = BTreeMap::new();
        let me = self.config.id;
        let frame = |to: NodeId| -> Frame {
            Frame {
                from: me,
                to,
                ..Frame::default()
            }
        };
        for (to, groups) in std::mem::take(&mut self.wakes) {
            frames
                .entry(to)
                .or_insert_with(|| frame(to))
                .wake
                .extend(groups);
        }
        self.polled.clear();
        while let Some(group) = self.ready.pop_first() {
            self.polled.push(group);
            let Some(slot) = self.groups.get_mut(&group) else {
                continue;
            };
            let mut actions = std::mem::take(&mut self.scratch);
            slot.raft.poll_actions(&mut actions);
            let tag = std::mem::take(&mut slot.tag_quiesce);
            for action in actions.drain(..) {
                match action {
                    Action::Send(m) => {
                        let f = frames.entry(m.to).or_insert_with(|| frame(m.to));
                        match m.body {
                            MessageBody::Heartbeat { commit, read_ctx } => {
                                if tag {
                                    match &mut slot.attempt {
                                        Some((ctx, _)) if *ctx == read_ctx => {}
                                        a => *a = Some((read_ctx, BTreeSet::new())),
                                    }
                                }
                                self.stats.heartbeats += 1;
                                f.heartbeats.push(CoalescedHeartbeat {
                                    group,
                                    term: m.term,
                                    commit,
                                    read_ctx,
                                    quiesce: tag,
                                });
                            }
                            MessageBody::HeartbeatResponse { read_ctx } => {
                                f.responses.push(CoalescedResponse {
                                    group,
                                    term: m.term,
                                    read_ctx,
                                    quiesced: slot.quiesced,
                                })
                            }
                            _ => {
                                self.stats.messages += 1;
                                f.messages.push(m);
                            }
                        }
                    }
                    Action::SetTimer { at } => {
                        if let Some(old) = slot.timer_at.take() {
                            self.timers.remove(&(old, group));
                        }
                        if at != Millis::MAX {
                            slot.timer_at = Some(at);
                            if !slot.quiesced {
                                self.timers.insert((at, group));
                            }
                        }
                    }
                    Action::RoleChanged { role, .. } => {
                        if role == Role::Leader {
                            if !slot.quiesced {
                                self.leaders.insert(group);
                            }
                        } else {
                            self.leaders.remove(&group);
                            slot.attempt = None;
                        }
                        out.push(HostAction::Group { group, action });
                    }
                    action => out.push(HostAction::Group { group, action }),
                }
            }
            self.scratch = actions;
        }
        if self.leaders.is_empty() {
            self.beat_at = None;
        } else if self.beat_at.is_none() {
            self.beat_at = Some(self.now + self.config.heartbeat_interval_ms);
        }
        for (_, f) in frames {
            if !f.is_empty() {
                self.stats.frames += 1;
                out.push(HostAction::Send(f));
            }
        }
    }

    // ------------------------------------------------------------------------------------

    fn advance(&mut self, now: Millis) {
        self.now = self.now.max(now);
    }

    fn beat(&mut self, now: Millis) {
        self.stats.beats += 1;
        self.beat_at = Some(now + self.config.heartbeat_interval_ms);
        let leaders: Vec<GroupId> = self.leaders.iter().copied().collect();
        for group in leaders {
            let Some(slot) = self.groups.get_mut(&group) else {
                self.leaders.remove(&group);
                continue;
            };
            let idle = self.config.quiesce
                && slot.raft.quiescent()
                && !slot.raft.membership().all().any(|n| self.down.contains(&n));
            if !idle {
                slot.attempt = None;
            } else if let Some((_, acked)) = &slot.attempt {
                let all = slot
                    .raft
                    .membership()
                    .all()
                    .filter(|n| *n != self.config.id)
                    .all(|n| acked.contains(&n));
                if all {
                    // Every peer quiesced on the last round and nothing happened since.
                    self.quiesce(group);
                    continue;
                }
            }
            let Some(slot) = self.groups.get_mut(&group) else {
                continue;
            };
            slot.tag_quiesce = idle;
            slot.raft.heartbeat(now);
            self.ready.insert(group);
        }
    }

    fn quiesce(&mut self, group: GroupId) {
        let Some(slot) = self.groups.get_mut(&group) else {
            return;
        };
        slot.quiesced = true;
        slot.attempt = None;
        slot.tag_quiesce = false;
        if let Some(at) = slot.timer_at {
            self.timers.remove(&(at, group));
        }
        self.leaders.remove(&group);
        self.stats.quiesced += 1;
    }

    /// `node` is reported failed: every quiesced follower whose leader it is wakes with its
    /// vote lease lapsed ([`Wake::LeaderSuspected`]) and asks the leader to wake. If the
    /// leader is dead the request is lost; if the report was wrong the leader heartbeats and
    /// the followers never campaign.
    fn leader_failed(&mut self, node: NodeId) {
        let now = self.now;
        let woken: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, s)| {
                s.quiesced
                    && s.raft.role() != Role::Leader
                    && s.raft.leader() == Some(node)
                    && !Self::bug_ignores_peer_down(&s.raft)
            })
            .map(|(g, _)| *g)
            .collect();
        for g in woken {
            self.wake(now, g, None, Wake::LeaderSuspected);
        }
    }

    /// Activity on `group`: voids a quiesce round in progress and wakes the group if
    /// quiesced. `cause`: the node whose message woke it, if any; `why`: see
    /// [`Raft::unquiesce`]. A follower woken by anything but a message from its leader asks
    /// the leader to wake too.
    fn wake(&mut self, now: Millis, group: GroupId, cause: Option<NodeId>, why: Wake) {
        let Some(slot) = self.groups.get_mut(&group) else {
            return;
        };
        // Any activity voids a quiesce round in progress: `quiesced` answers collected
        // before it may come from followers this very activity (an append) woke again, and a
        // leader that quiesced on them would leave those followers' election timers running
        // with no heartbeat to reset them.
        slot.attempt = None;
        if !slot.quiesced {
            return;
        }
        slot.quiesced = false;
        slot.raft.unquiesce(now, why);
        self.stats.woken += 1;
        if let Some(at) = slot.timer_at {
            self.timers.insert((at, group));
        }
        match (slot.raft.role(), slot.raft.leader()) {
            (Role::Leader, _) => {
                self.leaders.insert(group);
                if self.beat_at.is_none() {
                    self.beat_at = Some(now + self.config.heartbeat_interval_ms);
                }
            }
            (_, Some(leader)) if Some(leader) != cause => {
                self.wakes.entry(leader).or_default().push(group);
            }
            _ => {}
        }
        self.ready.insert(group);
    }

    fn bug_ignores_peer_down(raft: &Raft) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            raft.config()
                .planted_bugs
                .quiesced_follower_ignores_peer_down
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            let _ = raft;
            false
        }
    }
}
