//! The SWIM state machine: probes, indirect probes, suspicion, refutation, dissemination,
//! joins, leaves and pruning, with Lifeguard's refinements.
//!
//! References: Das, Gupta & Motivala, "SWIM: Scalable Weakly-consistent Infection-style Process
//! Group Membership Protocol" (2002), cited as "SWIM §n"; Dadgar, Phillips & Currey, "Lifeguard:
//! Local Health Awareness for More Accurate Failure Detection" (2018), cited as "Lifeguard §n".

use super::config::{ConfigError, SwimConfig};
use super::types::{
    Action, Body, Event, Identity, Incarnation, Member, MemberState, Message, Metadata,
    MetadataError, Millis, NodeId, ProbeId, SwimStats, Timer, Update,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

/// The highest incarnation a node ever takes (its own, refutations and restarts included).
pub const MAX_INCARNATION: Incarnation = u64::MAX / 4;

/// Rumors with an incarnation at or above this are refused as garbage (issue 12, finding 4): no
/// member bumps its incarnation that often, and a rumor right under [`MAX_INCARNATION`] could
/// not be refuted (the refutation must be above it). The one exception is a member's own
/// "alive" (its refutations and restarts), accepted up to `MAX_INCARNATION`: half of it leaves
/// room for every refutation (one above the rumor it answers) and 2^61 restarts above it.
pub const MAX_RUMOR_INCARNATION: Incarnation = MAX_INCARNATION / 2;

/// Why a [`Swim`] could not be created.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SwimError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The node's own identity is unusable (id 0, empty or overlong address).
    #[error("invalid identity: {0}")]
    Identity(&'static str),
}

/// What a node knows about another member.
#[derive(Clone, Debug)]
struct Record {
    addr: String,
    http: String,
    incarnation: Incarnation,
    state: MemberState,
    metadata: Metadata,
    /// Who asserted the current state.
    by: NodeId,
}

/// A rumor waiting to be piggybacked, and how many times it was sent.
#[derive(Clone, Debug)]
struct Rumor {
    update: Update,
    sent: u32,
    /// Queueing order: among rumors sent equally often, the newest goes first, so fresh news
    /// (a refutation is always newer than the suspicion it answers) spreads fastest.
    seq: u64,
}

/// A probe this node started.
#[derive(Clone, Debug)]
struct Probe {
    target: NodeId,
    started: Millis,
    acked: bool,
    /// A second direct ping was sent: the round trip is no longer measurable.
    retried: bool,
    nacks_expected: usize,
    nacks: usize,
}

/// A ping this node sends on behalf of a ping-req.
#[derive(Clone, Debug)]
struct Relay {
    origin: NodeId,
    origin_addr: String,
    origin_probe: ProbeId,
    target: NodeId,
    acked: bool,
}

/// A running suspicion (Lifeguard §IV-B).
#[derive(Clone, Debug)]
struct Suspicion {
    incarnation: Incarnation,
    started: Millis,
    deadline: Millis,
    /// Distinct members that suspected this incarnation, the first suspecter included.
    suspecters: BTreeSet<NodeId>,
    /// Independent confirmations expected (Lifeguard's K).
    expected: usize,
}

/// A sans-IO SWIM member: one per node.
///
/// Inputs: [`Swim::handle_message`], [`Swim::handle_timer`] and the commands [`Swim::start`],
/// [`Swim::set_metadata`] and [`Swim::leave`], each with `now` on the caller's monotonic clock.
/// Outputs: [`Action`]s drained with [`Swim::poll_actions`]. Randomness comes only from the seed
/// given to [`Swim::new`], so a run is reproducible.
#[derive(Debug)]
pub struct Swim {
    config: SwimConfig,
    me: Identity,
    incarnation: Incarnation,
    metadata: Metadata,
    left: bool,
    joined: bool,
    started: bool,
    rng: ChaCha8Rng,
    now: Millis,
    members: BTreeMap<NodeId, Record>,
    /// Number of members in each state, indexed by `MemberState::rank`.
    counts: [usize; 4],
    /// Round-robin probe order (SWIM §4.3), reshuffled at each pass.
    probe_order: Vec<NodeId>,
    probe_cursor: usize,
    rumors: BTreeMap<NodeId, Rumor>,
    rumor_seq: u64,
    probes: BTreeMap<ProbeId, Probe>,
    relays: BTreeMap<ProbeId, Relay>,
    suspicions: BTreeMap<NodeId, Suspicion>,
    /// Dead or departed members and since when, for pruning.
    down: BTreeMap<NodeId, Millis>,
    next_probe: ProbeId,
    generation: u64,
    local_health: u32,
    actions: Vec<Action>,
    stats: SwimStats,
    /// The ids allowed in the member table and as senders (`None`: any). Frames from others and
    /// rumors about others are refused (issue 12, finding 6).
    allowed: Option<BTreeSet<NodeId>>,
}

impl Swim {
    /// A member that knows nobody yet. Call [`Swim::start`] to begin probing and joining.
    pub fn new(config: SwimConfig, me: Identity, seed: u64) -> Result<Self, SwimError> {
        config.validate()?;
        if me.id == NodeId::NONE {
            return Err(SwimError::Identity("node id 0"));
        }
        if me.addr.is_empty() || me.addr.len() > config.max_address_len {
            return Err(SwimError::Identity("transport address empty or too long"));
        }
        if me.http.len() > config.max_address_len {
            return Err(SwimError::Identity("HTTP address too long"));
        }
        Ok(Swim {
            config,
            me,
            incarnation: 0,
            metadata: Metadata::default(),
            left: false,
            joined: false,
            started: false,
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: 0,
            members: BTreeMap::new(),
            counts: [0; 4],
            probe_order: Vec::new(),
            probe_cursor: 0,
            rumors: BTreeMap::new(),
            rumor_seq: 0,
            probes: BTreeMap::new(),
            relays: BTreeMap::new(),
            suspicions: BTreeMap::new(),
            down: BTreeMap::new(),
            next_probe: 1,
            generation: 0,
            local_health: 0,
            allowed: None,
            actions: Vec::new(),
            stats: SwimStats::default(),
        })
    }

    /// Restricts the member table and the senders heard to `allowed` (the cluster's configured
    /// members; `None` admits anyone). Frames from other ids are dropped, rumors about other ids
    /// refused, and members already known outside the set are kept until they are pruned.
    pub fn set_allowed_members(&mut self, allowed: Option<BTreeSet<NodeId>>) {
        self.allowed = allowed;
    }

    fn is_allowed(&self, id: NodeId) -> bool {
        self.allowed.as_ref().is_none_or(|a| a.contains(&id))
    }

    /// Starts with a known incarnation, e.g. one persisted by a previous run plus one, so a
    /// restarted node wins over its previous life without waiting to hear about it.
    pub fn with_incarnation(mut self, incarnation: Incarnation) -> Self {
        self.incarnation = incarnation.min(MAX_INCARNATION);
        self.metadata.incarnation = self.incarnation;
        self
    }

    /// Adds members known out of band (a Raft configuration, a simulation's initial cluster)
    /// without disseminating them or publishing events. Invalid entries and this node itself
    /// are skipped.
    pub fn preload(&mut self, members: impl IntoIterator<Item = Member>) {
        // `insert_member` announces a `Joined` event; preloaded members are not news.
        let mark = self.actions.len();
        for m in members {
            let update = Update {
                id: m.id,
                addr: m.addr,
                http: m.http,
                incarnation: m.incarnation,
                state: m.state,
                metadata: m.metadata,
                by: m.id,
            };
            if m.id == self.me.id || self.members.contains_key(&m.id) {
                continue;
            }
            if self.validate_update(&update).is_err() || !update.state.is_active() {
                continue;
            }
            self.insert_member(&update);
        }
        let tail = self.actions.split_off(mark);
        self.actions
            .extend(tail.into_iter().filter(|a| !matches!(a, Action::Notify(_))));
    }

    /// Begins the protocol (once; later calls do nothing): arms the first cycle (at a random offset within one period so
    /// nodes started together do not probe in lockstep) and, if seeds other than this node
    /// are configured, sends joins to them and retries every `seed_retry_ms`.
    pub fn start(&mut self, now: Millis) {
        self.advance(now);
        if self.left || self.started {
            // A second start would arm a second cycle and probe twice as often.
            return;
        }
        self.started = true;
        let offset = self.rng.random_range(0..self.config.cycle_interval_ms);
        self.set_timer(
            now + offset,
            Timer::Cycle {
                generation: self.generation,
            },
        );
        let has_seeds = self.config.seeds.iter().any(|s| *s != self.me.addr);
        if !has_seeds {
            // The first node of a cluster (or a node given its members by `preload`).
            self.joined = true;
        } else if !self.joined {
            self.send_joins(Vec::new());
        }
        self.set_timer(
            now + self.config.seed_retry_ms,
            Timer::Announce {
                generation: self.generation,
            },
        );
    }

    /// Publishes new metadata (bumping its version) to the cluster.
    pub fn set_metadata(
        &mut self,
        now: Millis,
        entries: BTreeMap<String, String>,
    ) -> Result<(), MetadataError> {
        self.advance(now);
        if self.left {
            return Err(MetadataError::Left);
        }
        let candidate = Metadata {
            incarnation: self.incarnation,
            version: self.metadata.version + 1,
            entries,
        };
        self.check_metadata(&candidate)?;
        self.metadata = candidate;
        self.queue_self();
        Ok(())
    }

    /// Leaves gracefully: tells a few active members (who spread it further) and stops
    /// probing. The value answers nothing afterwards; a node that comes back creates a new
    /// `Swim` (its incarnation will be bumped above the `Left` rumor when it hears it).
    pub fn leave(&mut self, now: Millis) {
        self.advance(now);
        if self.left {
            return;
        }
        self.left = true;
        self.generation += 1;
        let update = self.self_update(MemberState::Left);
        let mut targets = self.active_ids();
        targets.shuffle(&mut self.rng);
        targets.truncate(self.config.indirect_probes.max(1) + 1);
        for id in targets {
            if let Some(rec) = self.members.get(&id) {
                let msg = Message {
                    from: self.me.id,
                    from_addr: self.me.addr.clone(),
                    from_incarnation: self.incarnation,
                    to: id,
                    body: Body::Gossip,
                    updates: vec![update.clone()],
                };
                self.actions.push(Action::Send {
                    to: id,
                    addr: rec.addr.clone(),
                    msg,
                });
            }
        }
        self.probes.clear();
        self.relays.clear();
        self.rumors.clear();
    }

    /// Marks member `id` as `left` on this node's own authority, without spreading a rumor:
    /// for a node removed from a membership every member applies (a replicated Raft
    /// configuration), so each member reaches the same verdict itself. Call it after taking
    /// `id` off the allowlist ([`Swim::set_allowed_members`]), so that its own refutations
    /// cannot bring it back. Unknown ids and members already `left` are left alone.
    pub fn mark_left(&mut self, now: Millis, id: NodeId) {
        self.advance(now);
        let Some(rec) = self.members.get_mut(&id) else {
            return;
        };
        if rec.state == MemberState::Left {
            return;
        }
        let old = rec.state;
        rec.state = MemberState::Left;
        rec.by = self.me.id;
        self.rumors.remove(&id);
        self.transition(id, old, MemberState::Left, self.me.id);
    }

    /// Handles a frame from a peer. Malformed frames and rumors are counted and dropped; they
    /// never change this node's view of itself except through a refutation.
    pub fn handle_message(&mut self, now: Millis, msg: Message) {
        self.advance(now);
        if self.left {
            return;
        }
        if msg.from == NodeId::NONE
            || msg.from == self.me.id
            || (msg.to != NodeId::NONE && msg.to != self.me.id)
            || msg.from_addr.is_empty()
            || msg.from_addr.len() > self.config.max_address_len
            || !self.is_allowed(msg.from)
        {
            self.stats.rejected_messages += 1;
            return;
        }
        // Piggybacked rumors first: an ack may carry the refutation that makes it meaningful.
        for update in msg
            .updates
            .into_iter()
            .take(self.config.rumor_limit_per_frame + 1)
        {
            self.apply_update(&update, true, false);
        }
        let from = msg.from;
        let from_addr = msg.from_addr;
        match msg.body {
            Body::Ping { probe } => self.send(from, &from_addr, Body::Ack { probe }),
            Body::Ack { probe } => self.on_ack(from, probe),
            Body::PingReq {
                probe,
                target,
                target_addr,
            } => self.on_ping_req(from, from_addr, probe, target, target_addr),
            Body::IndirectAck { probe, target } => {
                if let Some(p) = self.probes.get_mut(&probe) {
                    if p.target == target {
                        p.acked = true;
                    }
                }
            }
            Body::Nack { probe, target } => {
                if let Some(p) = self.probes.get_mut(&probe) {
                    if p.target == target {
                        p.nacks += 1;
                    }
                }
            }
            Body::Join { member } => self.on_join(from, &from_addr, member),
            Body::JoinAck { members } => {
                for update in &members {
                    self.apply_update(update, false, true);
                }
                if !self.joined {
                    self.joined = true;
                    self.actions.push(Action::Notify(Event::JoinedCluster));
                }
            }
            Body::Gossip => {}
        }
    }

    /// Handles a timer set by an earlier [`Action::SetTimer`].
    pub fn handle_timer(&mut self, now: Millis, timer: Timer) {
        self.advance(now);
        if self.left {
            return;
        }
        match timer {
            Timer::Cycle { generation } if generation == self.generation => self.cycle(),
            Timer::Announce { generation } if generation == self.generation => self.announce(),
            // From before a leave: the protocol they belonged to has stopped.
            Timer::Cycle { .. } | Timer::Announce { .. } => {}
            Timer::ProbeTimeout { probe } => self.probe_timeout(probe),
            Timer::ProbeEnd { probe } => self.probe_end(probe),
            Timer::RelayNack { probe } => {
                if let Some(relay) = self.relays.get(&probe) {
                    if !relay.acked {
                        let (origin, addr) = (relay.origin, relay.origin_addr.clone());
                        let body = Body::Nack {
                            probe: relay.origin_probe,
                            target: relay.target,
                        };
                        self.send(origin, &addr, body);
                    }
                }
            }
            Timer::RelayExpire { probe } => {
                self.relays.remove(&probe);
            }
            Timer::Suspicion {
                member,
                incarnation,
            } => self.suspicion_timeout(member, incarnation),
        }
    }

    /// Moves the queued actions into `out`, in the order they must be carried out.
    pub fn poll_actions(&mut self, out: &mut Vec<Action>) {
        out.append(&mut self.actions);
    }

    /// This node's identity.
    pub fn identity(&self) -> &Identity {
        &self.me
    }

    /// This node's current incarnation.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// This node's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Lifeguard's local health multiplier score (0 = healthy).
    pub fn local_health(&self) -> u32 {
        self.local_health
    }

    /// Whether a seed answered (always true for a node without seeds).
    pub fn is_joined(&self) -> bool {
        self.joined
    }

    /// Whether [`Swim::leave`] was called.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// Counters for metrics and tests.
    pub fn stats(&self) -> SwimStats {
        self.stats
    }

    /// Rumors waiting to be piggybacked.
    pub fn pending_rumors(&self) -> usize {
        self.rumors.len()
    }

    /// Number of other members in `state`.
    pub fn count(&self, state: MemberState) -> usize {
        self.counts[usize::from(state.rank())]
    }

    /// This node's view of another member.
    pub fn member(&self, id: NodeId) -> Option<Member> {
        self.members.get(&id).map(|r| view(id, r))
    }

    /// This node's view of every member it knows, itself first, then by id.
    pub fn members(&self) -> Vec<Member> {
        let mut out = Vec::with_capacity(self.members.len() + 1);
        out.push(self.self_update(self.own_state()).to_member());
        out.extend(self.members.iter().map(|(id, r)| view(*id, r)));
        out
    }

    // ----- inputs -----

    fn advance(&mut self, now: Millis) {
        self.now = self.now.max(now);
    }

    fn on_ack(&mut self, from: NodeId, probe: ProbeId) {
        if let Some(relay) = self.relays.get_mut(&probe) {
            if relay.target == from && !relay.acked {
                relay.acked = true;
                let (origin, addr) = (relay.origin, relay.origin_addr.clone());
                let body = Body::IndirectAck {
                    probe: relay.origin_probe,
                    target: from,
                };
                self.send(origin, &addr, body);
            }
            return;
        }
        if let Some(p) = self.probes.get_mut(&probe) {
            if p.target == from && !p.acked {
                p.acked = true;
                if !p.retried {
                    let rtt_ms = self.now.saturating_sub(p.started);
                    self.actions.push(Action::RoundTrip { peer: from, rtt_ms });
                }
            }
        }
    }

    fn on_ping_req(
        &mut self,
        from: NodeId,
        from_addr: String,
        probe: ProbeId,
        target: NodeId,
        target_addr: String,
    ) {
        if target == NodeId::NONE
            || target == self.me.id
            || target_addr.is_empty()
            || target_addr.len() > self.config.max_address_len
        {
            self.stats.rejected_messages += 1;
            return;
        }
        let id = self.next_probe_id();
        self.relays.insert(
            id,
            Relay {
                origin: from,
                origin_addr: from_addr,
                origin_probe: probe,
                target,
                acked: false,
            },
        );
        self.send(target, &target_addr, Body::Ping { probe: id });
        if self.config.lifeguard {
            // Lifeguard §IV-A: nack before the requester's period ends so it can tell that
            // the intermediaries, hence its own links, are working.
            let at = self.now + self.config.probe_timeout_ms;
            self.set_timer(at, Timer::RelayNack { probe: id });
        }
        let at = self.now + self.config.cycle_interval_ms;
        self.set_timer(at, Timer::RelayExpire { probe: id });
    }

    fn on_join(&mut self, from: NodeId, from_addr: &str, member: Update) {
        if member.id != from || member.state != MemberState::Alive {
            self.stats.rejected_messages += 1;
            return;
        }
        self.apply_update(&member, true, false);
        // Our whole active view, in chunks, so the joiner can probe and route at once.
        let mut list: Vec<Update> = Vec::with_capacity(self.members.len() + 1);
        list.push(self.self_update(MemberState::Alive));
        for (id, rec) in &self.members {
            if *id != from && rec.state.is_active() {
                list.push(record_update(*id, rec));
            }
        }
        for chunk in list.chunks(self.config.join_ack_chunk) {
            let body = Body::JoinAck {
                members: chunk.to_vec(),
            };
            self.send(from, from_addr, body);
        }
    }

    // ----- rumors -----

    fn validate_update(&self, u: &Update) -> Result<(), ()> {
        let max = self.config.max_address_len;
        let ok = u.id != NodeId::NONE
            && u.by != NodeId::NONE
            && !u.addr.is_empty()
            && u.addr.len() <= max
            && u.http.len() <= max
            // A member's own "alive" (a refutation, or a restart) may go above the rumor bound,
            // up to MAX_INCARNATION; anything else must stay below it (see MAX_RUMOR_INCARNATION).
            && (u.incarnation < MAX_RUMOR_INCARNATION
                || (u.state == MemberState::Alive
                    && u.by == u.id
                    && u.incarnation <= MAX_INCARNATION))
            && u.metadata.incarnation <= u.incarnation
            && (u.id == self.me.id || self.is_allowed(u.id))
            && self.check_metadata(&u.metadata).is_ok();
        if ok {
            Ok(())
        } else {
            Err(())
        }
    }

    fn check_metadata(&self, m: &Metadata) -> Result<(), MetadataError> {
        if m.entries.len() > self.config.max_metadata_entries {
            return Err(MetadataError::TooManyEntries {
                count: m.entries.len(),
                limit: self.config.max_metadata_entries,
            });
        }
        if m.entries.keys().any(String::is_empty) {
            return Err(MetadataError::EmptyKey);
        }
        let bytes: usize = m.entries.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > self.config.max_metadata_bytes {
            return Err(MetadataError::TooLarge {
                bytes,
                limit: self.config.max_metadata_bytes,
            });
        }
        Ok(())
    }

    /// Merges one rumor into the view (SWIM §4.2 precedence, metadata last-writer-wins).
    /// `disseminate_new`: whether a member we did not know is news worth gossiping (not for
    /// join answers, which only copy the seed's view). `anti_entropy`: the rumor comes from a
    /// seed's full view (a `JoinAck`).
    fn apply_update(&mut self, u: &Update, disseminate_new: bool, anti_entropy: bool) {
        if self.validate_update(u).is_err() {
            self.stats.rejected_updates += 1;
            return;
        }
        if u.id == self.me.id {
            self.self_rumor(u);
            return;
        }
        let Some(rec) = self.members.get_mut(&u.id) else {
            // Suspect/dead/left rumors about strangers cannot be checked and are not needed.
            // The table is bounded: a peer cannot make it grow without end.
            if u.state.is_active() && self.members.len() >= self.config.max_members {
                self.stats.rejected_updates += 1;
                return;
            }
            if u.state.is_active() {
                self.insert_member(u);
                if disseminate_new {
                    self.queue_rumor(u.clone());
                }
            }
            return;
        };
        let state_newer = u.incarnation > rec.incarnation
            || (u.incarnation == rec.incarnation && u.state.rank() > rec.state.rank());
        let meta_newer = u.metadata.lww_key() > rec.metadata.lww_key();
        if meta_newer {
            rec.metadata = u.metadata.clone();
        }
        if state_newer {
            let old = rec.state;
            rec.incarnation = u.incarnation;
            rec.state = u.state;
            rec.by = u.by;
            if u.state == MemberState::Alive {
                // A restarted member may listen elsewhere now.
                rec.addr = u.addr.clone();
                rec.http = u.http.clone();
            }
            let merged = record_update(u.id, rec);
            // Queued before the transition, which may drop it (see `transition`).
            self.queue_rumor(merged);
            self.transition(u.id, old, u.state, u.by);
        } else if meta_newer {
            let merged = record_update(u.id, rec);
            let member = view(u.id, rec);
            self.actions
                .push(Action::Notify(Event::MetadataChanged(member)));
            self.queue_rumor(merged);
        } else if u.state == MemberState::Suspect
            && rec.state == MemberState::Suspect
            && u.incarnation == rec.incarnation
        {
            self.confirm_suspicion(u.id, u.by);
        } else if anti_entropy
            && u.state == MemberState::Alive
            && rec.state != MemberState::Alive
            && u.incarnation <= rec.incarnation
        {
            // A full view holds alive a member we hold suspect, dead or gone: most likely our
            // verdict dates from while we were cut off. Tell that member directly (the buddy
            // update goes first) so it refutes, and do not broadcast the verdict, which would
            // make members that see it alive declare it dead.
            let addr = rec.addr.clone();
            if self
                .rumors
                .get(&u.id)
                .is_some_and(|r| r.update.state != MemberState::Alive)
            {
                self.rumors.remove(&u.id);
            }
            self.send(u.id, &addr, Body::Gossip);
        }
    }

    /// A rumor about this node. We never adopt one: we are the authority on ourselves. If it
    /// could make others believe something false (suspect, dead, left, or an incarnation or
    /// metadata we never had), we refute it with an incarnation above it (SWIM §4.2).
    fn self_rumor(&mut self, u: &Update) {
        let refute = match u.state {
            MemberState::Alive => {
                u.incarnation > self.incarnation
                    || (u.incarnation == self.incarnation
                        && u.metadata.lww_key() >= self.metadata.lww_key()
                        && u.metadata != self.metadata)
            }
            MemberState::Suspect | MemberState::Dead | MemberState::Left => {
                u.incarnation >= self.incarnation
            }
        };
        if !refute {
            if u.state != MemberState::Alive && !self.rumors.contains_key(&self.me.id) {
                // An old verdict against us is still going around, so some members may hold
                // it and our refutation may already have stopped spreading: spread it again.
                self.queue_self();
            }
            return;
        }
        // validate_update keeps u.incarnation below MAX_RUMOR_INCARNATION; our own may be near
        // MAX_INCARNATION only after 2^61 restarts. Never refute into an invalid incarnation:
        // an incarnation every peer would refuse would leave us unable to refute for good.
        let next = self.incarnation.max(u.incarnation).saturating_add(1);
        if next > MAX_INCARNATION {
            self.stats.rejected_updates += 1;
            return;
        }
        self.incarnation = next;
        self.metadata.incarnation = self.incarnation;
        self.stats.refutations += 1;
        if self.config.lifeguard && u.state != MemberState::Alive {
            // Lifeguard §IV-A: being suspected hints that we are the slow one.
            self.bump_health(1);
        }
        self.queue_self();
        self.actions.push(Action::Notify(Event::Refuted {
            incarnation: self.incarnation,
        }));
    }

    fn insert_member(&mut self, u: &Update) {
        let rec = Record {
            addr: u.addr.clone(),
            http: u.http.clone(),
            incarnation: u.incarnation,
            state: u.state,
            metadata: u.metadata.clone(),
            by: u.by,
        };
        self.members.insert(u.id, rec);
        self.counts[usize::from(u.state.rank())] += 1;
        // SWIM §4.3: new members go to a random position of the round-robin list.
        let pos = self.rng.random_range(0..=self.probe_order.len());
        self.probe_order.insert(pos, u.id);
        if pos < self.probe_cursor {
            self.probe_cursor += 1;
        }
        if let Some(rec) = self.members.get(&u.id) {
            self.actions
                .push(Action::Notify(Event::Joined(view(u.id, rec))));
        }
        if u.state == MemberState::Suspect {
            self.start_suspicion(u.id, u.incarnation, u.by);
        }
    }

    /// Bookkeeping and events of a state change already written to the record.
    fn transition(&mut self, id: NodeId, old: MemberState, new: MemberState, by: NodeId) {
        self.counts[usize::from(old.rank())] -= 1;
        self.counts[usize::from(new.rank())] += 1;
        if old == MemberState::Suspect || new != MemberState::Suspect {
            self.suspicions.remove(&id);
        }
        if !new.is_active() {
            self.down.insert(id, self.now);
            self.probes.retain(|_, p| p.target != id);
            if self.active_count() == 0 {
                // We lost contact with everyone. Our pending verdicts reach nobody now, and
                // once contact is back they are most likely wrong (we were the one cut off):
                // spreading them then would make the others declare live members dead.
                self.rumors
                    .retain(|_, r| r.update.state == MemberState::Alive);
            }
        } else {
            self.down.remove(&id);
        }
        let Some(rec) = self.members.get(&id) else {
            return;
        };
        let member = view(id, rec);
        let incarnation = rec.incarnation;
        let event = match (old, new) {
            (MemberState::Dead | MemberState::Left, MemberState::Alive) => Event::Joined(member),
            (_, MemberState::Alive) => Event::Alive(member),
            (_, MemberState::Suspect) => Event::Suspect(member),
            (_, MemberState::Dead) => Event::Dead(member),
            (_, MemberState::Left) => Event::Left(member),
        };
        self.actions.push(Action::Notify(event));
        if new == MemberState::Suspect {
            self.start_suspicion(id, incarnation, by);
        }
    }

    fn queue_rumor(&mut self, update: Update) {
        self.rumor_seq += 1;
        let seq = self.rumor_seq;
        self.rumors.insert(
            update.id,
            Rumor {
                update,
                sent: 0,
                seq,
            },
        );
    }

    fn queue_self(&mut self) {
        let update = self.self_update(MemberState::Alive);
        self.queue_rumor(update);
    }

    fn own_state(&self) -> MemberState {
        if self.left {
            MemberState::Left
        } else {
            MemberState::Alive
        }
    }

    fn self_update(&self, state: MemberState) -> Update {
        Update {
            id: self.me.id,
            addr: self.me.addr.clone(),
            http: self.me.http.clone(),
            incarnation: self.incarnation,
            state,
            metadata: self.metadata.clone(),
            by: self.me.id,
        }
    }

    /// How many times each rumor is sent: λ·log2(n+1), n = active cluster size (SWIM §4.1).
    fn retransmit_limit(&self) -> u32 {
        let n = self.active_count() + 1;
        let log = f64::from(u32::try_from(n + 1).unwrap_or(u32::MAX)).log2();
        (f64::from(self.config.retransmit_multiplier) * log)
            .ceil()
            .max(1.0) as u32
    }

    /// Up to `rumor_limit_per_frame` rumors for a frame to `to`, least-sent first. With the
    /// buddy system (Lifeguard §IV-C) a member we suspect hears about it first, so it can
    /// refute at once; a member we hold dead or gone always does, so it can rejoin.
    fn select_rumors(&mut self, to: NodeId) -> Vec<Update> {
        let limit = self.config.rumor_limit_per_frame;
        let mut out = Vec::with_capacity(limit);
        if let Some(rec) = self.members.get(&to) {
            let buddy = match rec.state {
                MemberState::Suspect => self.config.lifeguard,
                MemberState::Dead | MemberState::Left => true,
                MemberState::Alive => false,
            };
            if buddy {
                out.push(record_update(to, rec));
            }
        }
        if self.rumors.is_empty() || out.len() >= limit {
            return out;
        }
        // Partial selection of the least-sent rumors, newest first among equals.
        let mut best: Vec<(u32, Reverse<u64>, NodeId)> = Vec::with_capacity(limit);
        let room = limit - out.len();
        for (id, r) in &self.rumors {
            if !out.is_empty() && *id == to {
                continue;
            }
            let key = (r.sent, Reverse(r.seq), *id);
            if best.len() < room {
                best.push(key);
                best.sort_unstable();
            } else if best.last().is_some_and(|worst| key < *worst) {
                best.pop();
                best.push(key);
                best.sort_unstable();
            }
        }
        let max_sends = self.retransmit_limit();
        for (_, _, id) in best {
            let exhausted = match self.rumors.get_mut(&id) {
                Some(r) => {
                    out.push(r.update.clone());
                    r.sent += 1;
                    r.sent >= max_sends
                }
                None => false,
            };
            if exhausted {
                self.rumors.remove(&id);
            }
        }
        out
    }

    fn send(&mut self, to: NodeId, addr: &str, body: Body) {
        let updates = self.select_rumors(to);
        let msg = Message {
            from: self.me.id,
            from_addr: self.me.addr.clone(),
            from_incarnation: self.incarnation,
            to,
            body,
            updates,
        };
        self.actions.push(Action::Send {
            to,
            addr: addr.to_owned(),
            msg,
        });
    }

    fn set_timer(&mut self, at: Millis, timer: Timer) {
        self.actions.push(Action::SetTimer { at, timer });
    }

    // ----- failure detection -----

    fn active_count(&self) -> usize {
        self.counts[0] + self.counts[1]
    }

    fn active_ids(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|(_, r)| r.state.is_active())
            .map(|(id, _)| *id)
            .collect()
    }

    fn health_factor(&self) -> u64 {
        u64::from(self.local_health) + 1
    }

    fn bump_health(&mut self, delta: i32) {
        if !self.config.lifeguard {
            return;
        }
        self.local_health = if delta >= 0 {
            (self.local_health + delta.unsigned_abs()).min(self.config.max_local_health)
        } else {
            self.local_health.saturating_sub(delta.unsigned_abs())
        };
    }

    fn next_probe_id(&mut self) -> ProbeId {
        let id = self.next_probe;
        self.next_probe += 1;
        id
    }

    /// One protocol period (SWIM §3.1, §4.3, and the hybrid rule for small clusters).
    fn cycle(&mut self) {
        self.prune();
        let targets: Vec<NodeId> = if self.active_count() <= self.config.hybrid_threshold {
            self.active_ids()
        } else {
            self.next_round_robin(self.config.probes_per_cycle)
        };
        for target in targets {
            self.start_probe(target);
        }
        let period = self.config.cycle_interval_ms * self.health_factor();
        let at = self.now + period;
        self.set_timer(
            at,
            Timer::Cycle {
                generation: self.generation,
            },
        );
    }

    fn next_round_robin(&mut self, wanted: usize) -> Vec<NodeId> {
        let mut out = Vec::with_capacity(wanted);
        let mut steps = 0;
        let budget = 2 * self.probe_order.len() + 1;
        while out.len() < wanted && steps < budget && !self.probe_order.is_empty() {
            steps += 1;
            if self.probe_cursor >= self.probe_order.len() {
                self.probe_order.shuffle(&mut self.rng);
                self.probe_cursor = 0;
            }
            let id = self.probe_order[self.probe_cursor];
            self.probe_cursor += 1;
            let active = self.members.get(&id).is_some_and(|r| r.state.is_active());
            if active && !out.contains(&id) {
                out.push(id);
            }
        }
        out
    }

    fn start_probe(&mut self, target: NodeId) {
        if self.probes.values().any(|p| p.target == target) {
            return;
        }
        let Some(addr) = self.members.get(&target).map(|r| r.addr.clone()) else {
            return;
        };
        let id = self.next_probe_id();
        self.probes.insert(
            id,
            Probe {
                target,
                started: self.now,
                acked: false,
                retried: false,
                nacks_expected: 0,
                nacks: 0,
            },
        );
        self.send(target, &addr, Body::Ping { probe: id });
        let factor = self.health_factor();
        let now = self.now;
        self.set_timer(
            now + self.config.probe_timeout_ms * factor,
            Timer::ProbeTimeout { probe: id },
        );
        self.set_timer(
            now + self.config.cycle_interval_ms * factor,
            Timer::ProbeEnd { probe: id },
        );
    }

    /// The direct ping went unanswered: ask `indirect_probes` others (SWIM §3.1).
    fn probe_timeout(&mut self, probe: ProbeId) {
        let Some(p) = self.probes.get(&probe) else {
            return;
        };
        if p.acked {
            return;
        }
        let target = p.target;
        let Some(target_addr) = self.members.get(&target).map(|r| r.addr.clone()) else {
            return;
        };
        // A second direct ping along with the indirect ones (memberlist's fallback probe):
        // with independent loss it divides the false suspicion rate by the loss rate again.
        if let Some(p) = self.probes.get_mut(&probe) {
            p.retried = true;
        }
        self.send(target, &target_addr, Body::Ping { probe });
        let helpers = self.random_active(self.config.indirect_probes, &[target]);
        for helper in &helpers {
            let Some(addr) = self.members.get(helper).map(|r| r.addr.clone()) else {
                continue;
            };
            let body = Body::PingReq {
                probe,
                target,
                target_addr: target_addr.clone(),
            };
            self.send(*helper, &addr, body);
        }
        if self.config.lifeguard {
            if let Some(p) = self.probes.get_mut(&probe) {
                p.nacks_expected = helpers.len();
            }
        }
    }

    /// Up to `n` distinct random active members, excluding `except`.
    fn random_active(&mut self, n: usize, except: &[NodeId]) -> Vec<NodeId> {
        let candidates = self.active_count().saturating_sub(except.len());
        if candidates <= n.saturating_mul(4) {
            // Small clusters: shuffle the full list.
            let mut all: Vec<NodeId> = self
                .active_ids()
                .into_iter()
                .filter(|id| !except.contains(id))
                .collect();
            all.shuffle(&mut self.rng);
            all.truncate(n);
            return all;
        }
        // Large clusters: rejection-sample the probe list, which holds every member.
        let mut out = Vec::with_capacity(n);
        let mut tries = 0;
        while out.len() < n && tries < 64 * n {
            tries += 1;
            let idx = self.rng.random_range(0..self.probe_order.len());
            let id = self.probe_order[idx];
            let active = self.members.get(&id).is_some_and(|r| r.state.is_active());
            if active && !except.contains(&id) && !out.contains(&id) {
                out.push(id);
            }
        }
        out
    }

    /// End of a probe's period: no ack, direct or indirect, means suspect (SWIM §4.2).
    fn probe_end(&mut self, probe: ProbeId) {
        let Some(p) = self.probes.remove(&probe) else {
            return;
        };
        if p.acked {
            self.bump_health(-1);
            return;
        }
        self.bump_health(1);
        if p.nacks < p.nacks_expected {
            // Lifeguard §IV-A: intermediaries that did not even nack mean our own links or
            // our own processing are the problem.
            self.bump_health(1);
        }
        let target = p.target;
        let Some(rec) = self.members.get_mut(&target) else {
            return;
        };
        match rec.state {
            MemberState::Alive => {
                let old = rec.state;
                rec.state = MemberState::Suspect;
                rec.by = self.me.id;
                let update = record_update(target, rec);
                self.stats.suspicions_started += 1;
                self.queue_rumor(update);
                self.transition(target, old, MemberState::Suspect, self.me.id);
            }
            MemberState::Suspect => self.confirm_suspicion(target, self.me.id),
            MemberState::Dead | MemberState::Left => {}
        }
    }

    fn suspicion_timeout_ms(&self, confirmations: usize, expected: usize) -> Millis {
        let min = self.config.suspect_timeout_ms();
        if !self.config.lifeguard || expected == 0 {
            return min;
        }
        // Lifeguard §IV-B: max - (max - min) * log(C + 1) / log(K + 1), floored at min.
        let max = self.config.dead_timeout_ms();
        let c = confirmations.min(expected) as f64;
        let k = expected as f64;
        let frac = (c + 1.0).ln() / (k + 1.0).ln();
        let timeout = max as f64 - (max - min) as f64 * frac;
        (timeout.max(min as f64)) as Millis
    }

    fn start_suspicion(&mut self, id: NodeId, incarnation: Incarnation, by: NodeId) {
        // K: members other than us and the suspect that could confirm independently.
        let expected = self
            .config
            .indirect_probes
            .min(self.active_count().saturating_sub(1));
        let deadline = self.now + self.suspicion_timeout_ms(0, expected);
        let mut suspecters = BTreeSet::new();
        suspecters.insert(by);
        self.suspicions.insert(
            id,
            Suspicion {
                incarnation,
                started: self.now,
                deadline,
                suspecters,
                expected,
            },
        );
        self.set_timer(
            deadline,
            Timer::Suspicion {
                member: id,
                incarnation,
            },
        );
    }

    fn confirm_suspicion(&mut self, id: NodeId, by: NodeId) {
        let Some(s) = self.suspicions.get_mut(&id) else {
            return;
        };
        if !s.suspecters.insert(by) {
            return;
        }
        let (confirmations, expected, started, incarnation, deadline) = (
            s.suspecters.len() - 1,
            s.expected,
            s.started,
            s.incarnation,
            s.deadline,
        );
        if self.config.lifeguard && by == self.me.id && confirmations <= expected {
            // Lifeguard §IV-B: gossip our own independent suspicion so that others can count
            // it. (Relaying every confirmation we hear would multiply the rumor load.)
            if let Some(rec) = self.members.get(&id) {
                let mut update = record_update(id, rec);
                update.by = by;
                self.queue_rumor(update);
            }
        }
        let new_deadline = started + self.suspicion_timeout_ms(confirmations, expected);
        if new_deadline < deadline {
            if let Some(s) = self.suspicions.get_mut(&id) {
                s.deadline = new_deadline;
            }
            let at = new_deadline.max(self.now);
            self.set_timer(
                at,
                Timer::Suspicion {
                    member: id,
                    incarnation,
                },
            );
        }
    }

    fn suspicion_timeout(&mut self, id: NodeId, incarnation: Incarnation) {
        let due = self
            .suspicions
            .get(&id)
            .is_some_and(|s| s.incarnation == incarnation && self.now >= s.deadline);
        if !due {
            return;
        }
        let Some(rec) = self.members.get_mut(&id) else {
            return;
        };
        if rec.state != MemberState::Suspect || rec.incarnation != incarnation {
            return;
        }
        rec.state = MemberState::Dead;
        rec.by = self.me.id;
        let update = record_update(id, rec);
        self.stats.deaths_declared += 1;
        self.queue_rumor(update);
        self.transition(id, MemberState::Suspect, MemberState::Dead, self.me.id);
    }

    /// Forget members dead or gone for `prune_timeout_s`.
    fn prune(&mut self) {
        let horizon = self.config.prune_timeout_ms();
        let now = self.now;
        let expired: Vec<NodeId> = self
            .down
            .iter()
            .filter(|(_, since)| now.saturating_sub(**since) >= horizon)
            .map(|(id, _)| *id)
            .collect();
        if expired.is_empty() {
            return;
        }
        for id in &expired {
            self.down.remove(id);
            if let Some(rec) = self.members.remove(id) {
                self.counts[usize::from(rec.state.rank())] -= 1;
            }
            self.rumors.remove(id);
            self.actions.push(Action::Notify(Event::Removed(*id)));
        }
        self.probe_order.retain(|id| !expired.contains(id));
        self.probe_cursor = self.probe_cursor.min(self.probe_order.len());
    }

    /// Join retries and, once joined, re-announcement when no other member is active.
    fn announce(&mut self) {
        if !self.joined {
            self.send_joins(Vec::new());
        } else if self.active_count() == 0
            && (!self.config.seeds.is_empty() || !self.members.is_empty())
        {
            // Lost contact with everyone: knock on the seeds and on a few members we last knew,
            // who will tell us if they declared us dead so we can refute and heal.
            let mut known: Vec<(NodeId, String)> = self
                .members
                .iter()
                .map(|(id, r)| (*id, r.addr.clone()))
                .collect();
            known.shuffle(&mut self.rng);
            known.truncate(self.config.indirect_probes.max(1));
            self.send_joins(known);
        }
        let at = self.now + self.config.seed_retry_ms;
        self.set_timer(
            at,
            Timer::Announce {
                generation: self.generation,
            },
        );
    }

    fn send_joins(&mut self, extra: Vec<(NodeId, String)>) {
        let member = self.self_update(MemberState::Alive);
        let seeds: Vec<String> = self
            .config
            .seeds
            .iter()
            .filter(|s| **s != self.me.addr)
            .cloned()
            .collect();
        let targets = seeds
            .into_iter()
            .map(|addr| (NodeId::NONE, addr))
            .chain(extra)
            .collect::<Vec<_>>();
        for (to, addr) in targets {
            let body = Body::Join {
                member: member.clone(),
            };
            self.send(to, &addr, body);
        }
    }
}

fn view(id: NodeId, r: &Record) -> Member {
    Member {
        id,
        addr: r.addr.clone(),
        http: r.http.clone(),
        incarnation: r.incarnation,
        state: r.state,
        metadata: r.metadata.clone(),
    }
}

fn record_update(id: NodeId, r: &Record) -> Update {
    Update {
        id,
        addr: r.addr.clone(),
        http: r.http.clone(),
        incarnation: r.incarnation,
        state: r.state,
        metadata: r.metadata.clone(),
        by: r.by,
    }
}
