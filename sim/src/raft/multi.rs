//! The multi-group simulator: every node runs one [`Host`] with `groups` Raft groups (every
//! group on every node), and nodes exchange coalesced [`Frame`]s over a lossy network. One
//! `u64` seed replays a run. In sharded mode ([`MultiConfig::sharded`], module `sharded`)
//! the groups are shards placed by the ring at a replication factor, each hosted only on its
//! replicas, and clients reach them from any node through the shard router's forwarding,
//! their history checked for linearizability per key.
//!
//! Faults: frame drops, duplicates and long delays (reordering), symmetric and one-way
//! partitions, crashes that lose every persist not yet reported durable, clock skew, a
//! gossip layer that reports peers down and up (`Host::peer_down` / `peer_up`) after a
//! detection delay — including false suspicions of live peers — and a transport that reports
//! lost connections (`Host::peer_unreachable`): a crashed node's peers hear of it within a
//! frame delay, and connections between live nodes reset now and then (reported to both
//! ends or to one, with the link carrying nothing for up to 400 ms, or nothing lost at all:
//! false alarms).
//!
//! Checked per group after every event, on every group a host polled: election safety,
//! log matching (on every `Persist`), leader completeness, state machine safety (commit and
//! apply agree with the group's committed log), commit index monotonicity, commit durability
//! (the leader's new commit is durable on a quorum), the core contract (persist seqs
//! consecutive, applies in order, once, never beyond commit, no snapshot actions), a state
//! digest per applied index, and stale reads (a ReadIndex or lease read served below the
//! number of entries committed before it started). At the end: every node converged on every group and every
//! acknowledged write is in every node's log.
//!
//! **Liveness** (the standard timeline of [`run_multi`]): after the fault phase every fault
//! heals and the workload stops; the groups go idle (and quiesce, with quiescence on); then the
//! node leading the most groups crashes and stays down. Within `leader_bound_ms` every group
//! must have a leader and a probe write must commit — the check that catches a quiesced
//! follower that never notices its leader died. Then the node restarts and all converge.

mod sharded;
pub use sharded::{RouterBugs, ShardSim};

use super::clock::NodeClock;
use super::{derive_seed, FailureKind, FaultProfile, SimFailure};
use conclave_core::raft::{
    Action, Entry, EntryPayload, Frame, GroupId, HardState, Host, HostAction, HostConfig,
    HostStats, LogIndex, Membership, Millis, NodeId, PersistRequest, Proposal, Raft, RaftConfig,
    ReadConsistency, ReadId, RestoreState, Role, Term,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Ordering;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};

/// The faults of a multi-group run.
#[derive(Clone, Debug, PartialEq)]
pub struct MultiFaults {
    /// Probability that a frame is lost.
    pub drop: f64,
    /// Probability that a frame is delivered twice.
    pub duplicate: f64,
    /// Probability that a frame takes 50–400 ms instead of 1–15 ms.
    pub long_delay: f64,
    /// Probability that a persist takes 10–60 ms instead of 0–3 ms.
    pub slow_disk: f64,
    /// Whether partitions (isolating one node, symmetric or one-way) are injected.
    pub partitions: bool,
    /// Whether nodes crash (a minority at a time) and restart.
    pub crashes: bool,
    /// Whether clocks drift (rate error up to 90% of `max_clock_drift_percent`).
    pub clock_skew: bool,
    /// Whether gossip falsely reports live peers down now and then.
    pub false_suspicions: bool,
    /// Whether connections between live nodes reset now and then (see the module docs).
    pub connection_resets: bool,
}

impl MultiFaults {
    /// No faults at all.
    pub fn none() -> Self {
        MultiFaults {
            drop: 0.0,
            duplicate: 0.0,
            long_delay: 0.0,
            slow_disk: 0.0,
            partitions: false,
            crashes: false,
            clock_skew: false,
            false_suspicions: false,
            connection_resets: false,
        }
    }

    /// A random mix for `seed`.
    pub fn draw(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, 0x3A17));
        let mut pct = |on: f64, lo: f64, hi: f64| {
            if rng.random_bool(on) {
                rng.random_range(lo..hi)
            } else {
                0.0
            }
        };
        let drop = pct(0.5, 0.005, 0.08);
        let duplicate = pct(0.3, 0.005, 0.05);
        let long_delay = pct(0.3, 0.01, 0.05);
        let slow_disk = pct(0.4, 0.05, 0.3);
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, 0x3A18));
        MultiFaults {
            drop,
            duplicate,
            long_delay,
            slow_disk,
            partitions: rng.random_bool(0.6),
            crashes: rng.random_bool(0.6),
            clock_skew: rng.random_bool(0.5),
            false_suspicions: rng.random_bool(0.5),
            // A stream of its own: the draws above stay what they were for every seed.
            connection_resets: ChaCha8Rng::seed_from_u64(derive_seed(seed, 0x3A19))
                .random_bool(0.5),
        }
    }
}

/// Everything that defines a multi-group run.
#[derive(Clone, Debug)]
pub struct MultiConfig {
    /// The seed of every random choice.
    pub seed: u64,
    /// Nodes (every group has every node as a voter, unless `sharding` places it).
    pub nodes: usize,
    /// Groups (without `sharding`: every node hosts each; with it: the shard count).
    pub groups: u64,
    /// Sharded mode (issue 16): the groups are the shards of a ring placement with a
    /// replication factor, each hosted only on its replicas, and clients reach them through
    /// the shard router's forwarding (see [`ShardSim`]). `None`: every group on every node.
    pub sharding: Option<ShardSim>,
    /// The faults of the fault phase.
    pub faults: MultiFaults,
    /// Whether idle groups quiesce.
    pub quiesce: bool,
    /// Length of the fault phase, ms (standard timeline).
    pub fault_ms: Millis,
    /// Quiet time after the fault phase before the busiest leader node crashes, ms.
    pub idle_ms: Millis,
    /// After that crash, every group must have a leader and a committed probe write within
    /// this bound, ms.
    pub leader_bound_ms: Millis,
    /// Time given to converge after the crashed node restarts, ms.
    pub converge_ms: Millis,
    /// Range of the gap between two writes of the workload, ms (each to a random group).
    pub write_gap_ms: (Millis, Millis),
    /// Range of gossip's failure-detection delay, ms.
    pub gossip_delay_ms: (Millis, Millis),
    /// The cores' config template (`id` and `group` are set per core; planted bugs here).
    pub raft: RaftConfig,
    /// Print every trace line as it happens.
    pub verbose: bool,
    /// How many trace lines a failure keeps.
    pub trace_tail: usize,
}

impl MultiConfig {
    /// The standard run for `seed`: `nodes` nodes, `groups` groups, the seed's fault mix,
    /// quiescence on.
    pub fn new(seed: u64, nodes: usize, groups: u64) -> Self {
        MultiConfig {
            seed,
            nodes,
            groups,
            sharding: None,
            faults: MultiFaults::draw(seed),
            quiesce: true,
            fault_ms: 6_000,
            idle_ms: 1_500,
            leader_bound_ms: 3_000,
            converge_ms: 3_000,
            write_gap_ms: (2, 30),
            gossip_delay_ms: (50, 300),
            raft: RaftConfig::default(),
            verbose: false,
            trace_tail: 60,
        }
    }

    /// A fault-free, workload-free world for scenarios driven step by step
    /// ([`MultiWorld::run_until`]).
    pub fn calm(seed: u64, nodes: usize, groups: u64) -> Self {
        MultiConfig {
            faults: MultiFaults::none(),
            ..MultiConfig::new(seed, nodes, groups)
        }
    }
}

impl MultiConfig {
    /// The standard sharded run for `seed`: `nodes` nodes, `shards` shards (groups `1..=shards`)
    /// placed by the ring at replication factor 3, clients routed by the shard router.
    pub fn sharded(seed: u64, nodes: usize, shards: u64) -> Self {
        MultiConfig {
            sharding: Some(ShardSim::new(seed, nodes)),
            ..MultiConfig::new(seed, nodes, shards)
        }
    }
}

/// What a successful multi-group run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MultiReport {
    /// The seed.
    pub seed: u64,
    /// Events processed.
    pub steps: u64,
    /// Simulated time, ms.
    pub sim_ms: Millis,
    /// Frames sent (all nodes).
    pub frames: u64,
    /// Coalesced heartbeats sent.
    pub heartbeats: u64,
    /// Other messages sent.
    pub messages: u64,
    /// Core ticks (all nodes).
    pub ticks: u64,
    /// Writes proposed and accepted by a leader.
    pub writes: u64,
    /// Accepted writes seen committed with their term.
    pub writes_committed: u64,
    /// Crashes injected (the final idle crash included).
    pub crashes: u64,
    /// Partitions injected.
    pub partitions: u64,
    /// False suspicions injected.
    pub false_suspicions: u64,
    /// Connection resets between live nodes injected.
    pub connection_resets: u64,
    /// Follower cores quiesced when the busiest leader node crashed.
    pub quiesced_followers_at_crash: u64,
    /// Groups the crashed node led.
    pub groups_led_by_crashed: u64,
    /// Simulated ms from that crash until every group had a leader on a live node.
    pub elected_after_crash_ms: Option<Millis>,
    /// Times a group quiesced / woke (all nodes).
    pub quiesced: u64,
    /// See `quiesced`.
    pub woken: u64,
    /// Leaders elected (distinct group and term), all groups.
    pub elections: u64,
    /// ReadIndex and lease reads served / refused.
    pub reads_served: u64,
    /// See `reads_served`.
    pub reads_failed: u64,
    /// Sharded mode: client operations (the final reads included) by outcome — answered,
    /// certainly not applied (refused), indeterminate (no answer in time or never).
    pub client_ok: u64,
    /// See `client_ok`.
    pub client_failed: u64,
    /// See `client_ok`.
    pub client_unknown: u64,
    /// Sharded mode: requests forwarded node to node (every hop), and those of them answered
    /// with a refusal and tried elsewhere.
    pub forwards: u64,
    /// See `forwards`.
    pub forwards_refused: u64,
    /// Sharded mode: forwards that got no answer within the forward timeout.
    pub forwards_timed_out: u64,
    /// Sharded mode: client operations answered on the node the client reached, without a
    /// forward.
    pub served_locally: u64,
    /// Sharded mode: operations and keys the linearizability check covered.
    pub ops_checked: u64,
    /// See `ops_checked`.
    pub keys_checked: u64,
}

#[derive(Debug)]
enum Event {
    Deliver {
        to: usize,
        frame: Frame,
    },
    Timer {
        node: usize,
        gen: u64,
    },
    PersistDone {
        node: usize,
        incarnation: u64,
        group: GroupId,
        seq: u64,
    },
    Fault,
    Heal {
        id: u64,
    },
    Restart {
        node: usize,
    },
    Gossip {
        observer: usize,
        peer: usize,
    },
    FalseSuspicion {
        observer: usize,
        peer: usize,
    },
    ConnectionLost {
        observer: usize,
        peer: usize,
    },
    ConnectionReset,
    Write,
    FaultsStop,
    IdleCrash,
    Probe,
    LivenessDeadline,
    RestartAll,
    End,
    /// Sharded mode: a router message (request or answer) arrives.
    Forward {
        to: usize,
        msg: sharded::ForwardMsg,
    },
    /// Sharded mode: a forwarded request's answer is due.
    ForwardTimeout {
        node: usize,
        id: u64,
    },
    /// Sharded mode: a client issues its next operation.
    Client {
        client: usize,
    },
    /// Sharded mode: a client stops waiting for its operation.
    ClientTimeout {
        client: usize,
        seq: u64,
    },
    /// Sharded mode: a final linearizable read of every key, through the router.
    FinalReads,
}

struct Scheduled {
    time: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}

/// What one node's log store holds durably for one group.
#[derive(Clone, Debug, Default)]
struct Durable {
    hard_state: HardState,
    log: Vec<Entry>,
}

/// The checkers' view of one group on one node, per lifetime.
#[derive(Clone, Debug, Default)]
struct Shadow {
    last_seq: u64,
    applied: LogIndex,
    digest: u64,
    commit_seen: LogIndex,
    last_done_at: u64,
}

struct MNode {
    id: NodeId,
    host: Option<Host>,
    incarnation: u64,
    clock: NodeClock,
    durable: BTreeMap<GroupId, Durable>,
    shadow: BTreeMap<GroupId, Shadow>,
    /// What this node's gossip currently reports down.
    view_down: BTreeSet<NodeId>,
    timer_gen: u64,
    timer_at: Option<u64>,
}

/// A multi-group world. [`run_multi`] runs the standard timeline; tests build scenarios with
/// [`MultiWorld::new`], [`MultiWorld::run_until`] and the accessors.
pub struct MultiWorld {
    cfg: MultiConfig,
    /// Every group of the run, and each one's replicas (every node without sharding).
    group_ids: Vec<GroupId>,
    replicas: BTreeMap<GroupId, Vec<NodeId>>,
    /// Sharded mode's routers, clients and history.
    sharded: Option<Box<sharded::Sharded>>,
    faults_on: bool,
    workload_on: bool,
    now: u64,
    step: u64,
    queue: BinaryHeap<Scheduled>,
    next_seq: u64,
    nodes: Vec<MNode>,
    rng_net: ChaCha8Rng,
    rng_fault: ChaCha8Rng,
    rng_work: ChaCha8Rng,
    rng_disk: ChaCha8Rng,
    rng_conn: ChaCha8Rng,
    blocked: BTreeMap<(NodeId, NodeId), u32>,
    partitions: BTreeMap<u64, Vec<(NodeId, NodeId)>>,
    next_partition: u64,
    trace: VecDeque<String>,
    /// Per group: the committed log as (term, payload hash).
    committed: HashMap<GroupId, Vec<(Term, u64)>>,
    /// (group, term) → leader.
    leaders: HashMap<(GroupId, Term), NodeId>,
    /// (group, index, term) → (payload hash, previous entry's term).
    entry_ids: HashMap<(GroupId, LogIndex, Term), (u64, Term)>,
    /// (group, applied index) → digest of the first replica there.
    digests: HashMap<(GroupId, LogIndex), u64>,
    /// Writes accepted by a leader, not yet seen committed: (group, index) → term.
    pending: HashMap<(GroupId, LogIndex), Term>,
    /// Writes seen committed with their term.
    acked: Vec<(GroupId, LogIndex, Term)>,
    /// Probe writes of the liveness phase: group → accepted proposal, and groups done.
    probes: BTreeMap<GroupId, Option<Proposal>>,
    probes_done: BTreeSet<GroupId>,
    crashed_at: Option<u64>,
    /// Frames sent per directed node pair, and their coalesced heartbeats.
    frames: BTreeMap<(NodeId, NodeId), (u64, u64)>,
    next_value: u64,
    /// Reads in flight: (node, read id) → (group, entries known committed when it started).
    reads: HashMap<(usize, ReadId), (GroupId, LogIndex)>,
    next_read: ReadId,
    /// A checker failure raised outside `run_until` (by `propose`), reported by the next one.
    deferred: Option<Box<SimFailure>>,
    /// Persist requests issued and not yet complete: (node, incarnation, group, seq).
    pending_writes: BTreeMap<(usize, u64, GroupId, u64), PersistRequest>,
    report: MultiReport,
}

fn hash_payload(p: &EntryPayload) -> u64 {
    let mut h = DefaultHasher::new();
    p.hash(&mut h);
    h.finish()
}

impl MultiWorld {
    /// Builds the world and boots every node (no event runs yet). With the standard timeline
    /// ([`run_multi`]) faults and workload are scheduled too.
    pub fn new(cfg: MultiConfig) -> Self {
        let mut setup = ChaCha8Rng::seed_from_u64(derive_seed(cfg.seed, 0x5E7));
        let max_ppm = i64::try_from(cfg.raft.max_clock_drift_percent.min(99) * 9_000).unwrap_or(0);
        let nodes = (1..=cfg.nodes as u64)
            .map(NodeId::new)
            .map(|id| MNode {
                id,
                host: None,
                incarnation: 0,
                clock: NodeClock {
                    offset: setup.random_range(0..1_000_000),
                    ppm: if cfg.faults.clock_skew && max_ppm > 0 {
                        setup.random_range(-max_ppm..=max_ppm)
                    } else {
                        0
                    },
                },
                durable: BTreeMap::new(),
                shadow: BTreeMap::new(),
                view_down: BTreeSet::new(),
                timer_gen: 0,
                timer_at: None,
            })
            .collect();
        let seed = cfg.seed;
        let (replicas, sharded) = match &cfg.sharding {
            Some(s) => {
                let (replicas, state) = sharded::Sharded::new(&cfg, s);
                (replicas, Some(Box::new(state)))
            }
            None => (
                (0..cfg.groups)
                    .map(|g| {
                        let all = (1..=cfg.nodes as u64).map(NodeId::new).collect();
                        (GroupId::new(g), all)
                    })
                    .collect(),
                None,
            ),
        };
        let mut world = MultiWorld {
            group_ids: replicas.keys().copied().collect(),
            replicas,
            sharded,
            faults_on: false,
            workload_on: false,
            now: 0,
            step: 0,
            queue: BinaryHeap::new(),
            next_seq: 0,
            nodes,
            rng_net: ChaCha8Rng::seed_from_u64(derive_seed(seed, 0xE71)),
            rng_fault: ChaCha8Rng::seed_from_u64(derive_seed(seed, 0xE72)),
            rng_work: ChaCha8Rng::seed_from_u64(derive_seed(seed, 0xE73)),
            rng_disk: ChaCha8Rng::seed_from_u64(derive_seed(seed, 0xE74)),
            rng_conn: ChaCha8Rng::seed_from_u64(derive_seed(seed, 0xE75)),
            blocked: BTreeMap::new(),
            partitions: BTreeMap::new(),
            next_partition: 0,
            trace: VecDeque::new(),
            committed: HashMap::new(),
            leaders: HashMap::new(),
            entry_ids: HashMap::new(),
            digests: HashMap::new(),
            pending: HashMap::new(),
            acked: Vec::new(),
            probes: BTreeMap::new(),
            probes_done: BTreeSet::new(),
            crashed_at: None,
            frames: BTreeMap::new(),
            next_value: 1,
            pending_writes: BTreeMap::new(),
            deferred: None,
            reads: HashMap::new(),
            next_read: 1,
            report: MultiReport {
                seed,
                ..MultiReport::default()
            },
            cfg,
        };
        for n in 0..world.nodes.len() {
            world.boot(n);
        }
        world
    }

    // ---------------------------------------------------------------------------------------
    // Scenario API
    // ---------------------------------------------------------------------------------------

    /// The global simulated time, ms.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// Processes every event up to global time `t` (inclusive) and moves the clock to `t`.
    pub fn run_until(&mut self, t: u64) -> Result<(), Box<SimFailure>> {
        if let Some(f) = self.deferred.take() {
            return Err(f);
        }
        while self.queue.peek().is_some_and(|s| s.time <= t) {
            let Some(s) = self.queue.pop() else { break };
            self.now = s.time;
            self.step += 1;
            if matches!(s.event, Event::End) {
                continue;
            }
            self.handle(s.event)?;
        }
        self.now = self.now.max(t);
        Ok(())
    }

    /// Frames and coalesced heartbeats sent so far from node `from` to node `to`.
    pub fn frames_between(&self, from: NodeId, to: NodeId) -> (u64, u64) {
        self.frames.get(&(from, to)).copied().unwrap_or((0, 0))
    }

    /// The host counters of node `id` (`None` while it is down).
    pub fn host_stats(&self, id: NodeId) -> Option<HostStats> {
        self.node(id)?.host.as_ref().map(Host::stats)
    }

    /// Quiesced groups on node `id`.
    pub fn quiesced(&self, id: NodeId) -> usize {
        self.node(id)
            .and_then(|n| n.host.as_ref())
            .map_or(0, Host::quiesced_count)
    }

    /// The live node whose core leads `group` in the highest term, if any.
    pub fn leader_of(&self, group: GroupId) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|n| {
                let r = n.host.as_ref()?.raft(group)?;
                (r.role() == Role::Leader).then_some((r.term(), n.id))
            })
            .max()
            .map(|(_, id)| id)
    }

    /// Groups with no leader on a live node that a majority of live nodes follow.
    pub fn groups_without_leader(&self) -> u64 {
        self.group_ids
            .iter()
            .copied()
            .filter(|g| !self.has_stable_leader(*g))
            .count() as u64
    }

    /// The node leading the most groups, and how many.
    pub fn busiest_leader(&self) -> Option<(NodeId, u64)> {
        let mut count: BTreeMap<NodeId, u64> = BTreeMap::new();
        for &g in &self.group_ids {
            if let Some(l) = self.leader_of(g) {
                *count.entry(l).or_default() += 1;
            }
        }
        count.into_iter().max_by_key(|(id, c)| (*c, *id))
    }

    /// Proposes a write to `group` at its leader; returns the leader and the proposal.
    pub fn propose(&mut self, group: GroupId) -> Option<(NodeId, Proposal)> {
        let leader = self.leader_of(group)?;
        let n = (leader.get() - 1) as usize;
        let p = self.propose_at(n, group);
        // Carry out what the proposal set off (the append, the persist) at once, as a shell
        // does after every input. A checker failure here surfaces at the next `run_until`.
        if let Err(f) = self.drive(n) {
            self.deferred = Some(f);
        }
        Some((leader, p?))
    }

    /// Whether `group`'s entry `index` is known committed with `term`.
    pub fn is_committed(&self, group: GroupId, index: LogIndex, term: Term) -> bool {
        self.committed
            .get(&group)
            .and_then(|c| c.get(index as usize - 1))
            .is_some_and(|(t, _)| *t == term)
    }

    /// Crashes node `id` (losing unfinished persists); gossip reports it down to the others.
    pub fn crash(&mut self, id: NodeId) {
        self.crash_node((id.get() - 1) as usize);
    }

    /// Restarts node `id` from its durable state.
    pub fn restart(&mut self, id: NodeId) -> Result<(), Box<SimFailure>> {
        let n = (id.get() - 1) as usize;
        self.boot(n);
        self.drive(n)
    }

    /// The connection between nodes `a` and `b` resets: the transport reports the loss to
    /// `a` (about `b`) and, if `both_ends`, to `b` (about `a`), within a frame delay; for
    /// `outage_ms` every frame between them is lost (0: a false alarm, the link never stops).
    pub fn reset_connection(&mut self, a: NodeId, b: NodeId, outage_ms: Millis, both_ends: bool) {
        let (Some(x), Some(y)) = (
            usize::try_from(a.get()).ok().and_then(|a| a.checked_sub(1)),
            usize::try_from(b.get()).ok().and_then(|b| b.checked_sub(1)),
        ) else {
            return;
        };
        if x >= self.nodes.len() || y >= self.nodes.len() || x == y {
            return;
        }
        self.reset(x, y, outage_ms, both_ends);
    }

    /// Whether node `id` hosts `group` (every node hosts every group unless the run is
    /// sharded).
    pub fn hosts_group(&self, id: NodeId, group: GroupId) -> bool {
        self.hosts(id, group)
    }

    /// The run's counters so far.
    pub fn report(&self) -> MultiReport {
        let mut r = self.report.clone();
        r.steps = self.step;
        r.sim_ms = self.now;
        r
    }

    // ---------------------------------------------------------------------------------------
    // The standard timeline
    // ---------------------------------------------------------------------------------------

    fn run_standard(mut self) -> Result<MultiReport, Box<SimFailure>> {
        let c = &self.cfg;
        let faults_stop = c.fault_ms;
        let crash_at = faults_stop + c.idle_ms;
        let deadline = crash_at + c.leader_bound_ms;
        let c_converge = c.converge_ms;
        let end = deadline + c_converge;
        self.faults_on = true;
        self.workload_on = true;
        let gap = self.fault_gap();
        self.schedule(gap, Event::Fault);
        if self.cfg.faults.connection_resets {
            let gap = self.reset_gap();
            self.schedule(gap, Event::ConnectionReset);
        }
        self.schedule(1, Event::Write);
        if self.sharded.is_some() {
            self.start_clients();
            self.schedule(deadline + 1 + c_converge / 2, Event::FinalReads);
        }
        self.schedule(faults_stop, Event::FaultsStop);
        self.schedule(crash_at, Event::IdleCrash);
        self.schedule(deadline, Event::LivenessDeadline);
        self.schedule(deadline + 1, Event::RestartAll);
        self.schedule(end, Event::End);
        while let Some(s) = self.queue.pop() {
            self.now = s.time;
            self.step += 1;
            if matches!(s.event, Event::End) {
                break;
            }
            self.handle(s.event)?;
            if self.crashed_at.is_some() && self.report.elected_after_crash_ms.is_none() {
                self.check_elected();
            }
        }
        self.final_checks()?;
        Ok(self.report())
    }

    fn handle(&mut self, event: Event) -> Result<(), Box<SimFailure>> {
        match event {
            Event::Deliver { to, frame } => self.deliver(to, frame),
            Event::Timer { node, gen } => {
                if self.nodes[node].timer_gen != gen || self.nodes[node].host.is_none() {
                    return Ok(());
                }
                self.nodes[node].timer_at = None;
                let now = self.local(node);
                if let Some(h) = self.nodes[node].host.as_mut() {
                    h.tick(now);
                }
                self.drive(node)
            }
            Event::PersistDone {
                node,
                incarnation,
                group,
                seq,
            } => self.persist_done(node, incarnation, group, seq),
            Event::Fault => {
                if self.faults_on {
                    self.fault();
                    let gap = self.fault_gap();
                    self.schedule(self.now + gap, Event::Fault);
                }
                Ok(())
            }
            Event::Heal { id } => {
                self.heal(id);
                Ok(())
            }
            Event::Restart { node } => {
                if self.nodes[node].host.is_none() && self.crashed_at.is_none() {
                    self.boot(node);
                    self.drive(node)?;
                }
                Ok(())
            }
            Event::Gossip { observer, peer } => self.gossip(observer, peer, false),
            Event::FalseSuspicion { observer, peer } => self.gossip(observer, peer, true),
            Event::ConnectionLost { observer, peer } => self.connection_lost(observer, peer),
            Event::ConnectionReset => {
                if self.faults_on {
                    let live: Vec<usize> = (0..self.nodes.len())
                        .filter(|n| self.nodes[*n].host.is_some())
                        .collect();
                    if live.len() >= 2 {
                        let a = live[self.rng_conn.random_range(0..live.len())];
                        let b = live[self.rng_conn.random_range(0..live.len())];
                        if a != b {
                            // Mostly short (within the transport's reconnect backoff), at
                            // times beyond an election timeout; a fifth are false alarms.
                            let outage = if self.rng_conn.random_bool(0.2) {
                                0
                            } else {
                                self.rng_conn.random_range(1..=400)
                            };
                            let both = self.rng_conn.random_bool(0.7);
                            self.reset(a, b, outage, both);
                        }
                    }
                    let gap = self.reset_gap();
                    self.schedule(self.now + gap, Event::ConnectionReset);
                }
                Ok(())
            }
            Event::Write => {
                if self.workload_on {
                    self.write()?;
                    let (lo, hi) = self.cfg.write_gap_ms;
                    let gap = self.rng_work.random_range(lo..=hi);
                    self.schedule(self.now + gap, Event::Write);
                }
                Ok(())
            }
            Event::FaultsStop => {
                self.faults_on = false;
                self.workload_on = false;
                self.text("faults stop: heal, restart, idle".into());
                let ids: Vec<u64> = self.partitions.keys().copied().collect();
                for id in ids {
                    self.heal(id);
                }
                for n in 0..self.nodes.len() {
                    if self.nodes[n].host.is_none() {
                        self.boot(n);
                        self.drive(n)?;
                    }
                }
                Ok(())
            }
            Event::IdleCrash => {
                let quiesced: u64 = self
                    .nodes
                    .iter()
                    .filter_map(|n| n.host.as_ref())
                    .map(|h| {
                        h.groups()
                            .filter(|g| {
                                h.is_quiesced(*g)
                                    && h.raft(*g).is_some_and(|r| r.role() != Role::Leader)
                            })
                            .count() as u64
                    })
                    .sum();
                self.report.quiesced_followers_at_crash = quiesced;
                if let Some((id, led)) = self.busiest_leader() {
                    self.report.groups_led_by_crashed = led;
                    self.text(format!(
                        "IDLE CRASH n{id} (leads {led} groups; {quiesced} follower cores quiesced)"
                    ));
                    self.crash_node((id.get() - 1) as usize);
                }
                self.crashed_at = Some(self.now);
                for g in self.group_ids.clone() {
                    self.probes.insert(g, None);
                }
                self.schedule(self.now + 1, Event::Probe);
                Ok(())
            }
            Event::Probe => {
                self.probe()?;
                if self.probes_done.len() < self.probes.len() {
                    self.schedule(self.now + 50, Event::Probe);
                }
                Ok(())
            }
            Event::LivenessDeadline => self.liveness_deadline(),
            Event::RestartAll => {
                self.crashed_at = self.crashed_at.or(Some(self.now));
                for n in 0..self.nodes.len() {
                    if self.nodes[n].host.is_none() {
                        self.boot(n);
                        self.drive(n)?;
                    }
                }
                // Allow the probe loop to end; restarts after the deadline are not measured.
                self.probes.clear();
                Ok(())
            }
            Event::End => Ok(()),
            Event::Forward { to, msg } => self.forward_arrives(to, msg),
            Event::ForwardTimeout { node, id } => self.forward_timeout(node, id),
            Event::Client { client } => self.client_op(client),
            Event::ClientTimeout { client, seq } => {
                self.client_timeout(client, seq);
                Ok(())
            }
            Event::FinalReads => self.final_reads(),
        }
    }

    // ---------------------------------------------------------------------------------------
    // Nodes
    // ---------------------------------------------------------------------------------------

    fn node(&self, id: NodeId) -> Option<&MNode> {
        self.nodes
            .get(usize::try_from(id.get()).ok()?.checked_sub(1)?)
    }

    fn local(&self, n: usize) -> u64 {
        self.nodes[n].clock.local(self.now)
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.next_seq += 1;
        self.queue.push(Scheduled {
            time: at.max(self.now),
            seq: self.next_seq,
            event,
        });
    }

    fn text(&mut self, s: String) {
        let line = format!("[{:>7} {:>6}ms] {s}", self.step, self.now);
        if self.cfg.verbose {
            println!("{line}");
        }
        if self.trace.len() >= self.cfg.trace_tail.max(1) {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    fn fail(&self, kind: FailureKind, message: impl Into<String>) -> Box<SimFailure> {
        let planted = {
            #[cfg(feature = "planted-bugs")]
            {
                (self.cfg.raft.planted_bugs != conclave_core::raft::PlantedBugs::default())
                    .then(|| format!("{:?}", self.cfg.raft.planted_bugs))
            }
            #[cfg(not(feature = "planted-bugs"))]
            {
                None
            }
        };
        Box::new(SimFailure {
            seed: self.cfg.seed,
            nodes: self.cfg.nodes,
            profile: FaultProfile::Mixed,
            kind,
            step: self.step,
            time: self.now,
            message: match &self.cfg.sharding {
                Some(s) => format!(
                    "[{} shards, replication factor {}] {}",
                    self.cfg.groups,
                    s.replication_factor,
                    message.into()
                ),
                None => format!("[{} groups per node] {}", self.cfg.groups, message.into()),
            },
            trace_tail: self.trace.iter().cloned().collect(),
            mix: format!("{:?} quiesce {}", self.cfg.faults, self.cfg.quiesce),
            planted_bugs: planted,
            replay: match &self.cfg.sharding {
                Some(_) => format!(
                    "cargo test -p conclave-sim --test sharded replay -- --nocapture \
                     (CONCLAVE_SHARDED_SEED={} CONCLAVE_SHARDED_NODES={} \
                     CONCLAVE_SHARDED_SHARDS={}; a planted bug: CONCLAVE_SHARDED_BUG=<name>)",
                    self.cfg.seed, self.cfg.nodes, self.cfg.groups
                ),
                None => format!(
                    "cargo test -p conclave-sim --test multi_group replay -- --nocapture \
                     (CONCLAVE_MULTI_SEED={} CONCLAVE_MULTI_NODES={} CONCLAVE_MULTI_GROUPS={})",
                    self.cfg.seed, self.cfg.nodes, self.cfg.groups
                ),
            },
        })
    }

    /// `group`'s replicas (every node without sharding).
    fn replicas_of(&self, group: GroupId) -> &[NodeId] {
        self.replicas.get(&group).map_or(&[], Vec::as_slice)
    }

    /// Whether node `id` hosts `group`.
    fn hosts(&self, id: NodeId, group: GroupId) -> bool {
        self.replicas_of(group).contains(&id)
    }

    fn boot(&mut self, n: usize) {
        let now_local = self.local(n);
        let hosted: Vec<(GroupId, Membership)> = self
            .group_ids
            .iter()
            .filter(|g| self.hosts(self.nodes[n].id, **g))
            .map(|g| {
                (
                    *g,
                    Membership::with_voters(self.replicas_of(*g).iter().copied()),
                )
            })
            .collect();
        let node = &mut self.nodes[n];
        node.incarnation += 1;
        let id = node.id;
        let mut host = Host::new(
            HostConfig {
                id,
                heartbeat_interval_ms: self.cfg.raft.heartbeat_interval_ms,
                quiesce: self.cfg.quiesce,
            },
            now_local,
        );
        node.shadow.clear();
        node.view_down.clear();
        // The router's state is volatile; the key-value state is rebuilt by the applies.
        self.router_lost(n);
        let node = &mut self.nodes[n];
        let mut refused = Vec::new();
        for (g, voters) in hosted {
            let durable = node.durable.entry(g).or_default();
            let restore = RestoreState {
                hard_state: durable.hard_state,
                entries: durable.log.clone(),
                applied: 0,
                base_membership: voters,
                snapshot: None,
            };
            let config = Host::group_config(&self.cfg.raft, id, g);
            let seed = derive_seed(
                self.cfg.seed,
                (node.incarnation << 40) ^ (id.get() << 32) ^ g.get() ^ 0xC0_0000,
            );
            match Raft::new(config, restore, seed, now_local) {
                Ok(raft) => {
                    // The config comes from `group_config`, the id is the host's, and each
                    // group is added once: `add_group` cannot refuse it.
                    let _ = host.add_group(raft);
                }
                Err(e) => refused.push(format!("n{id} group {g}: restore refused: {e}")),
            }
            node.shadow.insert(g, Shadow::default());
        }
        node.host = Some(host);
        node.timer_at = None;
        node.timer_gen += 1;
        let gen = node.timer_gen;
        let inc = node.incarnation;
        for line in refused {
            self.text(line);
        }
        // A first drain hands out the cores' timers.
        self.schedule(self.now, Event::Timer { node: n, gen });
        self.text(format!("n{id} boots (incarnation {inc})"));
        // Gossip on every node re-checks this one, and this one checks every peer.
        let ids: Vec<usize> = (0..self.nodes.len()).filter(|m| *m != n).collect();
        for m in ids {
            let d = self.gossip_delay();
            self.schedule(
                self.now + d,
                Event::Gossip {
                    observer: m,
                    peer: n,
                },
            );
            let d = self.gossip_delay();
            self.schedule(
                self.now + d,
                Event::Gossip {
                    observer: n,
                    peer: m,
                },
            );
        }
    }

    fn crash_node(&mut self, n: usize) {
        if self.nodes[n].host.take().is_none() {
            return;
        }
        self.report.crashes += 1;
        self.reads.retain(|(m, _), _| *m != n);
        self.router_lost(n);
        self.nodes[n].timer_gen += 1;
        self.nodes[n].timer_at = None;
        let id = self.nodes[n].id;
        self.text(format!("CRASH n{id}"));
        for m in 0..self.nodes.len() {
            if m != n {
                let d = self.gossip_delay();
                self.schedule(
                    self.now + d,
                    Event::Gossip {
                        observer: m,
                        peer: n,
                    },
                );
                // The crashed process's sockets close at once: its peers' transports see
                // the connection end within a frame delay.
                let d = self.rng_conn.random_range(1..=15);
                self.schedule(
                    self.now + d,
                    Event::ConnectionLost {
                        observer: m,
                        peer: n,
                    },
                );
            }
        }
    }

    fn reset_gap(&mut self) -> u64 {
        self.rng_conn.random_range(100..=700)
    }

    /// The connection between `a` and `b` resets (see [`MultiWorld::reset_connection`]).
    fn reset(&mut self, a: usize, b: usize, outage_ms: u64, both_ends: bool) {
        let (ia, ib) = (self.nodes[a].id, self.nodes[b].id);
        self.report.connection_resets += 1;
        self.text(format!(
            "RESET connection n{ia}<->n{ib}: {} ms outage, reported to {}",
            outage_ms,
            if both_ends {
                format!("n{ia} and n{ib}")
            } else {
                format!("n{ia} only")
            }
        ));
        if outage_ms > 0 {
            let id = self.next_partition;
            self.next_partition += 1;
            let links = vec![(ia, ib), (ib, ia)];
            for l in &links {
                *self.blocked.entry(*l).or_default() += 1;
            }
            self.partitions.insert(id, links);
            self.schedule(self.now + outage_ms, Event::Heal { id });
        }
        let ends: &[(usize, usize)] = if both_ends {
            &[(a, b), (b, a)]
        } else {
            &[(a, b)]
        };
        for &(observer, peer) in ends {
            let d = self.rng_conn.random_range(1..=15);
            self.schedule(self.now + d, Event::ConnectionLost { observer, peer });
        }
    }

    fn gossip_delay(&mut self) -> u64 {
        let (lo, hi) = self.cfg.gossip_delay_ms;
        self.rng_fault.random_range(lo..=hi.max(lo))
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        let (ia, ib) = (self.nodes[a].id, self.nodes[b].id);
        self.nodes[b].host.is_some()
            && !self.blocked.contains_key(&(ia, ib))
            && !self.blocked.contains_key(&(ib, ia))
    }

    /// Gossip on `observer` re-evaluates `peer` (or, for a false suspicion, reports a live
    /// peer down and re-checks it a little later).
    fn gossip(
        &mut self,
        observer: usize,
        peer: usize,
        false_alarm: bool,
    ) -> Result<(), Box<SimFailure>> {
        if self.nodes[observer].host.is_none() {
            return Ok(());
        }
        let pid = self.nodes[peer].id;
        let oid = self.nodes[observer].id;
        let down_now = false_alarm || !self.reachable(observer, peer);
        let was_down = self.nodes[observer].view_down.contains(&pid);
        if down_now == was_down {
            return Ok(());
        }
        let now = self.local(observer);
        if down_now {
            self.nodes[observer].view_down.insert(pid);
            self.text(format!(
                "gossip: n{oid} reports n{pid} down{}",
                if false_alarm {
                    " (false suspicion)"
                } else {
                    ""
                }
            ));
            if let Some(h) = self.nodes[observer].host.as_mut() {
                h.peer_down(now, pid);
            }
            if false_alarm {
                let d = self.rng_fault.random_range(50..=500);
                self.schedule(self.now + d, Event::Gossip { observer, peer });
            }
        } else {
            self.nodes[observer].view_down.remove(&pid);
            self.text(format!("gossip: n{oid} reports n{pid} up"));
            if let Some(h) = self.nodes[observer].host.as_mut() {
                h.peer_up(now, pid);
            }
        }
        self.drive(observer)
    }

    /// The transport on `observer` lost its connection to `peer`.
    fn connection_lost(&mut self, observer: usize, peer: usize) -> Result<(), Box<SimFailure>> {
        if self.nodes[observer].host.is_none() {
            return Ok(());
        }
        let (oid, pid) = (self.nodes[observer].id, self.nodes[peer].id);
        self.text(format!("transport: n{oid} lost its connection to n{pid}"));
        let now = self.local(observer);
        if let Some(h) = self.nodes[observer].host.as_mut() {
            h.peer_unreachable(now, pid);
        }
        self.drive(observer)
    }

    /// Drains node `n`'s host, carries out its actions and checks the groups it polled.
    fn drive(&mut self, n: usize) -> Result<(), Box<SimFailure>> {
        let mut out = Vec::new();
        let polled: Vec<GroupId> = match self.nodes[n].host.as_mut() {
            Some(h) => {
                h.drain(&mut out);
                h.polled().to_vec()
            }
            None => return Ok(()),
        };
        for g in &polled {
            self.check_commit(n, *g)?;
        }
        for a in out {
            match a {
                HostAction::Send(frame) => self.send(frame),
                HostAction::Group { group, action } => self.group_action(n, group, action)?,
            }
        }
        self.arm_timer(n);
        Ok(())
    }

    fn arm_timer(&mut self, n: usize) {
        let now = self.now;
        let node = &mut self.nodes[n];
        let Some(at_local) = node.host.as_ref().and_then(Host::next_deadline) else {
            node.timer_at = None;
            return;
        };
        let at = node.clock.to_global(at_local, now);
        if node.timer_at == Some(at) {
            return;
        }
        node.timer_at = Some(at);
        node.timer_gen += 1;
        let gen = node.timer_gen;
        self.schedule(at, Event::Timer { node: n, gen });
    }

    // ---------------------------------------------------------------------------------------
    // Network
    // ---------------------------------------------------------------------------------------

    fn send(&mut self, frame: Frame) {
        let (from, to) = (frame.from, frame.to);
        self.report.frames += 1;
        self.report.heartbeats += frame.heartbeats.len() as u64;
        self.report.messages += frame.messages.len() as u64;
        let c = self.frames.entry((from, to)).or_default();
        c.0 += 1;
        c.1 += frame.heartbeats.len() as u64;
        let Some(t) = usize::try_from(to.get())
            .ok()
            .and_then(|t| t.checked_sub(1))
        else {
            return;
        };
        if t >= self.nodes.len() || self.blocked.contains_key(&(from, to)) {
            return;
        }
        if self.faults_on
            && self.cfg.faults.drop > 0.0
            && self.rng_net.random_bool(self.cfg.faults.drop)
        {
            return;
        }
        if self.faults_on
            && self.cfg.faults.duplicate > 0.0
            && self.rng_net.random_bool(self.cfg.faults.duplicate)
        {
            let d = self.delay();
            self.schedule(
                self.now + d,
                Event::Deliver {
                    to: t,
                    frame: frame.clone(),
                },
            );
        }
        let d = self.delay();
        self.schedule(self.now + d, Event::Deliver { to: t, frame });
    }

    fn delay(&mut self) -> u64 {
        if self.faults_on
            && self.cfg.faults.long_delay > 0.0
            && self.rng_net.random_bool(self.cfg.faults.long_delay)
        {
            self.rng_net.random_range(50..=400)
        } else {
            self.rng_net.random_range(1..=15)
        }
    }

    fn deliver(&mut self, to: usize, frame: Frame) -> Result<(), Box<SimFailure>> {
        if self.blocked.contains_key(&(frame.from, frame.to)) || self.nodes[to].host.is_none() {
            return Ok(());
        }
        if self.cfg.verbose {
            self.text(format!(
                "n{}->n{} frame: {} msgs, {} hb{}, {} resp, {} wake",
                frame.from,
                frame.to,
                frame.messages.len(),
                frame.heartbeats.len(),
                if frame.heartbeats.iter().any(|h| h.quiesce) {
                    " (quiesce)"
                } else {
                    ""
                },
                frame.responses.len(),
                frame.wake.len()
            ));
        }
        let now = self.local(to);
        if let Some(h) = self.nodes[to].host.as_mut() {
            h.handle_frame(now, frame);
        }
        self.drive(to)
    }

    // ---------------------------------------------------------------------------------------
    // Faults
    // ---------------------------------------------------------------------------------------

    fn fault_gap(&mut self) -> u64 {
        self.rng_fault.random_range(150..=900)
    }

    fn fault(&mut self) {
        let f = self.cfg.faults.clone();
        let n = self.rng_fault.random_range(0..self.nodes.len());
        let down = self.nodes.iter().filter(|x| x.host.is_none()).count();
        let roll = self.rng_fault.random_range(0..3);
        if roll == 0
            && f.crashes
            && self.nodes[n].host.is_some()
            && down < (self.nodes.len() - 1) / 2
        {
            self.crash_node(n);
            let d = self.rng_fault.random_range(50..=1_500);
            self.schedule(self.now + d, Event::Restart { node: n });
        } else if roll == 1 && f.partitions {
            let id = self.next_partition;
            self.next_partition += 1;
            let x = self.nodes[n].id;
            let one_way = self.rng_fault.random_bool(0.3);
            let mut links = Vec::new();
            for y in (1..=self.nodes.len() as u64).map(NodeId::new) {
                if y != x {
                    links.push((x, y));
                    if !one_way {
                        links.push((y, x));
                    }
                }
            }
            for l in &links {
                *self.blocked.entry(*l).or_default() += 1;
            }
            self.partitions.insert(id, links);
            self.report.partitions += 1;
            let d = self.rng_fault.random_range(200..=2_000);
            self.text(format!(
                "PARTITION #{id} {} n{x} for {d} ms",
                if one_way {
                    "one-way (cannot send)"
                } else {
                    "isolates"
                }
            ));
            self.schedule(self.now + d, Event::Heal { id });
            self.gossip_all();
        } else if roll == 2 && f.false_suspicions {
            let m = self.rng_fault.random_range(0..self.nodes.len());
            if m != n {
                self.report.false_suspicions += 1;
                let d = self.gossip_delay();
                self.schedule(
                    self.now + d,
                    Event::FalseSuspicion {
                        observer: n,
                        peer: m,
                    },
                );
            }
        }
    }

    fn heal(&mut self, id: u64) {
        if let Some(links) = self.partitions.remove(&id) {
            for l in links {
                if let Some(c) = self.blocked.get_mut(&l) {
                    *c -= 1;
                    if *c == 0 {
                        self.blocked.remove(&l);
                    }
                }
            }
            self.text(format!("heal link block #{id}"));
            self.gossip_all();
        }
    }

    /// Every node's gossip re-checks every peer after a detection delay.
    fn gossip_all(&mut self) {
        for a in 0..self.nodes.len() {
            for b in 0..self.nodes.len() {
                if a != b {
                    let d = self.gossip_delay();
                    self.schedule(
                        self.now + d,
                        Event::Gossip {
                            observer: a,
                            peer: b,
                        },
                    );
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Workload and liveness
    // ---------------------------------------------------------------------------------------

    fn propose_at(&mut self, n: usize, group: GroupId) -> Option<Proposal> {
        let value = self.next_value;
        self.next_value += 1;
        let now = self.local(n);
        let result = self.nodes[n]
            .host
            .as_mut()?
            .with_group(now, group, |r| r.propose(now, value.to_le_bytes().to_vec()))?;
        match result {
            Ok(p) => {
                self.report.writes += 1;
                self.pending.insert((group, p.index), p.term);
                Some(p)
            }
            Err(_) => None,
        }
    }

    fn write(&mut self) -> Result<(), Box<SimFailure>> {
        let g = self.group_ids[self.rng_work.random_range(0..self.group_ids.len())];
        // Mostly to the leader; sometimes to a random node (a client with a stale leader
        // hint: a follower refuses, but the proposal wakes the group there).
        let n = if self.rng_work.random_bool(0.85) {
            match self.leader_of(g) {
                Some(l) => (l.get() - 1) as usize,
                None => return Ok(()),
            }
        } else {
            self.rng_work.random_range(0..self.nodes.len())
        };
        if self.nodes[n].host.is_none() {
            return Ok(());
        }
        if self.rng_work.random_bool(0.3) {
            // A linearizable read (ReadIndex or lease): it must reflect every entry committed
            // before it started (a correct leader's read index is at least that).
            let consistency = if self.rng_work.random_bool(0.5) {
                ReadConsistency::Lease
            } else {
                ReadConsistency::Linearizable
            };
            let id = self.next_read;
            self.next_read += 1;
            let floor = self.committed.get(&g).map_or(0, Vec::len) as LogIndex;
            let now = self.local(n);
            let accepted = self.nodes[n]
                .host
                .as_mut()
                .and_then(|h| h.with_group(now, g, |r| r.read(now, id, consistency)))
                .is_some_and(|r| r.is_ok());
            if accepted {
                self.reads.insert((n, id), (g, floor));
            }
        } else {
            self.propose_at(n, g);
        }
        self.drive(n)
    }

    /// A leader on a live node that a majority of live nodes (itself included) follow in its
    /// term.
    fn has_stable_leader(&self, g: GroupId) -> bool {
        let Some(l) = self.leader_of(g) else {
            return false;
        };
        let Some(term) = self
            .node(l)
            .and_then(|n| n.host.as_ref()?.raft(g))
            .map(Raft::term)
        else {
            return false;
        };
        let following = self
            .nodes
            .iter()
            .filter_map(|n| n.host.as_ref()?.raft(g))
            .filter(|r| r.term() == term && r.leader() == Some(l))
            .count();
        following > self.replicas_of(g).len() / 2
    }

    fn check_elected(&mut self) {
        let Some(at) = self.crashed_at else { return };
        if self.groups_without_leader() == 0 {
            self.report.elected_after_crash_ms = Some(self.now - at);
            self.text(format!(
                "every group has a leader, {} ms after the crash",
                self.now - at
            ));
        }
    }

    fn probe(&mut self) -> Result<(), Box<SimFailure>> {
        let groups: Vec<GroupId> = self.probes.keys().copied().collect();
        for g in groups {
            if self.probes_done.contains(&g) {
                continue;
            }
            if let Some(Some(p)) = self.probes.get(&g).copied() {
                if self.is_committed(g, p.index, p.term) {
                    self.probes_done.insert(g);
                    continue;
                }
                let lost = self
                    .committed
                    .get(&g)
                    .and_then(|c| c.get(p.index as usize - 1))
                    .is_some_and(|(t, _)| *t != p.term);
                let leader_term = self
                    .leader_of(g)
                    .and_then(|l| self.node(l)?.host.as_ref()?.raft(g).map(Raft::term));
                if !lost && leader_term == Some(p.term) {
                    continue;
                }
            }
            // Only a node that believes it leads is asked: a proposal to a follower would wake
            // the group there and hide a follower that never noticed its leader died.
            let Some(l) = self.leader_of(g) else {
                self.probes.insert(g, None);
                continue;
            };
            let n = (l.get() - 1) as usize;
            let p = self.propose_at(n, g);
            self.probes.insert(g, p);
            self.drive(n)?;
        }
        Ok(())
    }

    fn liveness_deadline(&mut self) -> Result<(), Box<SimFailure>> {
        let missing: Vec<GroupId> = self
            .probes
            .keys()
            .copied()
            .filter(|g| !self.probes_done.contains(g))
            .collect();
        if missing.is_empty() {
            self.text("liveness: every group elected a leader and committed a probe write".into());
            return Ok(());
        }
        let mut detail = String::new();
        for g in missing.iter().take(3) {
            detail.push_str(&format!("\n  group {g}:"));
            for node in &self.nodes {
                match node.host.as_ref().and_then(|h| Some((h, h.raft(*g)?))) {
                    Some((h, r)) => detail.push_str(&format!(
                        " n{} {:?} t{} leader {:?}{};",
                        node.id,
                        r.role(),
                        r.term(),
                        r.leader(),
                        if h.is_quiesced(*g) { " QUIESCED" } else { "" }
                    )),
                    None => detail.push_str(&format!(" n{} down;", node.id)),
                }
            }
        }
        Err(self.fail(
            FailureKind::Liveness,
            format!(
                "{} of {} groups have no leader with a committed probe write {} ms after the \
                 busiest leader node crashed (idle groups){detail}",
                missing.len(),
                self.probes.len(),
                self.cfg.leader_bound_ms
            ),
        ))
    }

    // ---------------------------------------------------------------------------------------
    // Persistence
    // ---------------------------------------------------------------------------------------

    fn group_action(
        &mut self,
        n: usize,
        g: GroupId,
        action: Action,
    ) -> Result<(), Box<SimFailure>> {
        let id = self.nodes[n].id;
        match action {
            Action::Persist(req) => self.persist(n, g, req),
            Action::Apply(entries) => {
                for e in entries {
                    self.apply(n, g, e)?;
                }
                Ok(())
            }
            Action::RoleChanged { role, term, leader } => {
                self.text(format!(
                    "n{id} g{g} is {role:?} in t{term} (leader {leader:?})"
                ));
                if role == Role::Leader {
                    let first = !self.leaders.contains_key(&(g, term));
                    if first {
                        self.report.elections += 1;
                    }
                    if let Some(other) = self.leaders.insert((g, term), id) {
                        if other != id {
                            return Err(self.fail(
                                FailureKind::ElectionSafety,
                                format!("group {g}: n{other} and n{id} both lead term {term}"),
                            ));
                        }
                    }
                    // Leader completeness (Raft §5.4): it holds every entry known committed.
                    let last = self
                        .committed
                        .get(&g)
                        .and_then(|c| c.last().map(|(t, _)| *t));
                    let len = self.committed.get(&g).map_or(0, Vec::len) as u64;
                    if let Some(t) = last {
                        let held = self.nodes[n]
                            .host
                            .as_ref()
                            .and_then(|h| h.raft(g))
                            .and_then(|r| r.entry_term(len));
                        if held != Some(t) {
                            return Err(self.fail(
                                FailureKind::LeaderCompleteness,
                                format!(
                                    "group {g}: n{id} leads term {term} without committed entry \
                                     {len}/t{t} (holds {held:?})"
                                ),
                            ));
                        }
                    }
                }
                Ok(())
            }
            Action::ReadReady { id: rid, index } => {
                if let Some((rg, floor)) = self.reads.remove(&(n, rid)) {
                    if rg == g && index < floor {
                        return Err(self.fail(
                            FailureKind::Linearizability,
                            format!(
                                "group {g}: n{id} served read {rid} at index {index}, but {floor} \
                                 entries were committed before the read started (stale read)"
                            ),
                        ));
                    }
                    self.report.reads_served += 1;
                    return Ok(());
                }
                self.router_read_ready(n, g, rid, index);
                Ok(())
            }
            Action::ReadFailed { id: rid, .. } => {
                if self.reads.remove(&(n, rid)).is_some() {
                    self.report.reads_failed += 1;
                    return Ok(());
                }
                self.router_read_failed(n, rid);
                Ok(())
            }
            other => Err(self.fail(
                FailureKind::Contract,
                format!("group {g} on n{id}: unexpected action without snapshots: {other:?}"),
            )),
        }
    }

    fn persist(
        &mut self,
        n: usize,
        g: GroupId,
        req: PersistRequest,
    ) -> Result<(), Box<SimFailure>> {
        let id = self.nodes[n].id;
        let last_seq = self.nodes[n].shadow.get(&g).map_or(0, |s| s.last_seq);
        if req.seq != last_seq + 1 {
            return Err(self.fail(
                FailureKind::Contract,
                format!(
                    "group {g} on n{id}: persist seq {} after {last_seq}",
                    req.seq
                ),
            ));
        }
        if req.snapshot.is_some() {
            return Err(self.fail(
                FailureKind::Contract,
                format!("group {g} on n{id}: a persist names a snapshot nobody took"),
            ));
        }
        // Log matching (Raft §5.3): one payload and one predecessor term per (index, term).
        for e in &req.entries {
            let prev = if e.index <= 1 {
                0
            } else {
                self.nodes[n]
                    .host
                    .as_ref()
                    .and_then(|h| h.raft(g))
                    .and_then(|r| r.entry_term(e.index - 1))
                    .unwrap_or(0)
            };
            let h = hash_payload(&e.payload);
            match self.entry_ids.get(&(g, e.index, e.term)) {
                Some(&(h0, p0)) if (h0, p0) != (h, prev) => {
                    return Err(self.fail(
                        FailureKind::LogMatching,
                        format!(
                            "group {g}: entry {}/t{} on n{id} differs from an earlier one with \
                             the same index and term",
                            e.index, e.term
                        ),
                    ))
                }
                Some(_) => {}
                None => {
                    self.entry_ids.insert((g, e.index, e.term), (h, prev));
                }
            }
        }
        let slow = self.cfg.faults.slow_disk > 0.0
            && self.faults_on
            && self.rng_disk.random_bool(self.cfg.faults.slow_disk);
        let d = if slow {
            self.rng_disk.random_range(10..=60)
        } else {
            self.rng_disk.random_range(0..=3)
        };
        let now = self.now;
        let inc = self.nodes[n].incarnation;
        let shadow = self.nodes[n].shadow.entry(g).or_default();
        shadow.last_seq = req.seq;
        let at = (now + d).max(shadow.last_done_at);
        shadow.last_done_at = at;
        // The write itself is kept aside until it completes (a crash before loses it).
        let seq = req.seq;
        self.pending_writes.insert((n, inc, g, seq), req);
        // Completions of one group are FIFO (non-decreasing times, ties in schedule order).
        self.schedule(
            at,
            Event::PersistDone {
                node: n,
                incarnation: inc,
                group: g,
                seq,
            },
        );
        Ok(())
    }

    fn persist_done(
        &mut self,
        n: usize,
        incarnation: u64,
        g: GroupId,
        seq: u64,
    ) -> Result<(), Box<SimFailure>> {
        let Some(req) = self.pending_writes.remove(&(n, incarnation, g, seq)) else {
            return Ok(());
        };
        if self.nodes[n].incarnation != incarnation || self.nodes[n].host.is_none() {
            return Ok(());
        }
        let id = self.nodes[n].id;
        let durable = self.nodes[n].durable.entry(g).or_default();
        if let Some(from) = req.truncate_from {
            durable.log.truncate(from.saturating_sub(1) as usize);
        }
        for e in req.entries {
            if e.index != durable.log.len() as u64 + 1 {
                let msg = format!(
                    "group {g} on n{id}: persisted entry {} does not follow the durable log (last {})",
                    e.index,
                    durable.log.len()
                );
                return Err(self.fail(FailureKind::Contract, msg));
            }
            durable.log.push(e);
        }
        if let Some(hs) = req.hard_state {
            durable.hard_state = hs;
        }
        let now = self.local(n);
        let seq = req.seq;
        if let Some(h) = self.nodes[n].host.as_mut() {
            h.with_group(now, g, |r| r.persisted(now, seq));
        }
        self.drive(n)
    }

    // ---------------------------------------------------------------------------------------
    // Checkers
    // ---------------------------------------------------------------------------------------

    /// Commit monotonicity, state machine safety and commit durability for group `g` on
    /// node `n`, which its host just polled.
    fn check_commit(&mut self, n: usize, g: GroupId) -> Result<(), Box<SimFailure>> {
        let id = self.nodes[n].id;
        let Some(r) = self.nodes[n].host.as_ref().and_then(|h| h.raft(g)) else {
            return Ok(());
        };
        let commit = r.commit_index();
        let role = r.role();
        let seen = self.nodes[n].shadow.get(&g).map_or(0, |s| s.commit_seen);
        if commit < seen {
            return Err(self.fail(
                FailureKind::CommitRegressed,
                format!("group {g} on n{id}: commit {seen} -> {commit}"),
            ));
        }
        if commit == seen {
            return Ok(());
        }
        let mut new: Vec<(LogIndex, Term, u64)> = Vec::new();
        for i in seen + 1..=commit {
            let Some(e) = r.entries().iter().find(|e| e.index == i) else {
                return Err(self.fail(
                    FailureKind::Contract,
                    format!("group {g} on n{id}: commit {commit} beyond its log"),
                ));
            };
            new.push((i, e.term, hash_payload(&e.payload)));
        }
        let committed = self.committed.entry(g).or_default();
        for (i, t, h) in new {
            let k = (i - 1) as usize;
            match committed.get(k) {
                Some(&(t0, h0)) if (t0, h0) != (t, h) => {
                    return Err(self.fail(
                        FailureKind::StateMachineSafety,
                        format!("group {g}: n{id} commits {i}/t{t} where {i}/t{t0} was committed"),
                    ))
                }
                Some(_) => {}
                None if k == committed.len() => {
                    committed.push((t, h));
                    if let Some(term) = self.pending.remove(&(g, i)) {
                        if term == t {
                            self.acked.push((g, i, t));
                            self.report.writes_committed += 1;
                        }
                    }
                }
                None => {
                    return Err(self.fail(
                        FailureKind::Contract,
                        format!("group {g}: n{id} commits {i} with a gap in the committed log"),
                    ))
                }
            }
        }
        if role == Role::Leader {
            // Commit durability: the new commit is durable on a quorum of voters.
            let t = self
                .committed
                .get(&g)
                .and_then(|c| c.get((commit - 1) as usize))
                .map(|x| x.0);
            let holders = self
                .nodes
                .iter()
                .filter(|m| {
                    m.durable
                        .get(&g)
                        .and_then(|d| d.log.get((commit - 1) as usize))
                        .map(|e| e.term)
                        == t
                })
                .count();
            let voters = self.replicas_of(g).len();
            if holders <= voters / 2 {
                return Err(self.fail(
                    FailureKind::CommitNotDurable,
                    format!(
                        "group {g}: leader n{id} commits {commit} held durably by {holders} of \
                         {voters}"
                    ),
                ));
            }
        }
        if let Some(s) = self.nodes[n].shadow.get_mut(&g) {
            s.commit_seen = commit;
        }
        Ok(())
    }

    fn apply(&mut self, n: usize, g: GroupId, e: Entry) -> Result<(), Box<SimFailure>> {
        let id = self.nodes[n].id;
        let commit = self.nodes[n].shadow.get(&g).map_or(0, |s| s.commit_seen);
        let (applied, digest) = self.nodes[n]
            .shadow
            .get(&g)
            .map_or((0, 0), |s| (s.applied, s.digest));
        if e.index != applied + 1 || e.index > commit {
            return Err(self.fail(
                FailureKind::Contract,
                format!(
                    "group {g} on n{id}: applies {} after {applied} (commit {commit})",
                    e.index
                ),
            ));
        }
        let h = hash_payload(&e.payload);
        if self
            .committed
            .get(&g)
            .and_then(|c| c.get((e.index - 1) as usize))
            != Some(&(e.term, h))
        {
            return Err(self.fail(
                FailureKind::StateMachineSafety,
                format!(
                    "group {g}: n{id} applies {}/t{} not the committed entry",
                    e.index, e.term
                ),
            ));
        }
        let mut hasher = DefaultHasher::new();
        (digest, e.term, h).hash(&mut hasher);
        let digest = hasher.finish();
        match self.digests.get(&(g, e.index)) {
            Some(&d) if d != digest => {
                return Err(self.fail(
                    FailureKind::StateDigest,
                    format!(
                        "group {g}: n{id}'s state at applied index {} differs",
                        e.index
                    ),
                ))
            }
            Some(_) => {}
            None => {
                self.digests.insert((g, e.index), digest);
            }
        }
        if let Some(s) = self.nodes[n].shadow.get_mut(&g) {
            s.applied = e.index;
            s.digest = digest;
        }
        self.router_applied(n, g, &e);
        Ok(())
    }

    fn final_checks(&mut self) -> Result<(), Box<SimFailure>> {
        if let Some(node) = self.nodes.iter().find(|n| n.host.is_none()) {
            return Err(self.fail(
                FailureKind::Liveness,
                format!("n{} is down at the end", node.id),
            ));
        }
        for &g in &self.group_ids {
            let mut first: Option<(NodeId, LogIndex, LogIndex, u64)> = None;
            for node in self.nodes.iter().filter(|n| self.hosts(n.id, g)) {
                let Some(r) = node.host.as_ref().and_then(|h| h.raft(g)) else {
                    return Err(self.fail(
                        FailureKind::Liveness,
                        format!("n{} is down (or lost group {g}) at the end", node.id),
                    ));
                };
                let s = node.shadow.get(&g).cloned().unwrap_or_default();
                let mine = (node.id, r.commit_index(), s.applied, s.digest);
                match first {
                    None => first = Some(mine),
                    Some(f) if (f.1, f.2, f.3) != (mine.1, mine.2, mine.3) => {
                        return Err(self.fail(
                            FailureKind::Liveness,
                            format!(
                                "group {g} did not converge: n{} commit {} applied {} vs n{} \
                                 commit {} applied {}",
                                f.0, f.1, f.2, mine.0, mine.1, mine.2
                            ),
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        for &(g, i, t) in &self.acked {
            for node in self.nodes.iter().filter(|n| self.hosts(n.id, g)) {
                let held = node
                    .host
                    .as_ref()
                    .and_then(|h| h.raft(g))
                    .and_then(|r| (r.commit_index() >= i).then(|| r.entry_term(i)).flatten());
                if held != Some(t) {
                    return Err(self.fail(
                        FailureKind::LostWrite,
                        format!(
                            "group {g}: acknowledged write {i}/t{t} missing on n{}",
                            node.id
                        ),
                    ));
                }
            }
        }
        for node in &self.nodes {
            if let Some(h) = node.host.as_ref() {
                let s = h.stats();
                self.report.ticks += s.ticks;
                self.report.quiesced += s.quiesced;
                self.report.woken += s.woken;
            }
        }
        self.check_client_history()
    }
}

/// Runs one seed of the standard multi-group timeline (see the module docs).
pub fn run_multi(cfg: &MultiConfig) -> Result<MultiReport, Box<SimFailure>> {
    MultiWorld::new(cfg.clone()).run_standard()
}
