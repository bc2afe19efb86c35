//! A deterministic, seeded simulation of a SWIM cluster: one `u64` seed reproduces a run.
//!
//! Every member is a [`Swim`] core in one thread, driven from a discrete-event queue of frame
//! deliveries and timers. The network loses each frame independently with probability
//! `loss` and delays it uniformly within `[min_latency_ms, max_latency_ms]` (so frames also
//! reorder). Optional faults: one member joins through a seed at `join_at_cycle`, one member
//! crashes at `crash_at_cycle`, and `slow_members` members process every inbound frame
//! `slow_delay_ms` late (a CPU-starved node, the scenario of Lifeguard §V), and one member can
//! be cut off from everyone for `partition_cycles` (then reconnected, to check healing).
//!
//! The run reports (a) how many cycles it took every live member to learn of the joiner,
//! (b) how long from the crash until every live member marked it dead, and (c) "dead" verdicts
//! about members that were in fact alive. Cost is O(N) frames per cycle; 1,000 members for
//! 1,000 cycles take a few seconds in release mode.

use conclave_core::raft::{Millis, NodeId};
use conclave_core::swim::{
    Action, Event, Identity, Member, MemberState, Message, Metadata, Swim, SwimConfig, SwimError,
    Timer,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap, HashMap};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Cluster size, the joiner included when `join_at_cycle` is set.
    pub members: usize,
    /// Probability that a frame is lost.
    pub loss: f64,
    /// Smallest one-way delay.
    pub min_latency_ms: Millis,
    /// Largest one-way delay.
    pub max_latency_ms: Millis,
    /// Length of the run, in cycles of `swim.cycle_interval_ms`.
    pub cycles: u64,
    /// When set, the last member is not preloaded: it joins through member 1 at this cycle.
    pub join_at_cycle: Option<u64>,
    /// When set, a member (neither the seed nor the joiner) crashes at this cycle.
    pub crash_at_cycle: Option<u64>,
    /// Members (other than the seed, joiner and crash victim) that handle every inbound frame
    /// `slow_delay_ms` late.
    pub slow_members: usize,
    /// Extra inbound delay of a slow member.
    pub slow_delay_ms: Millis,
    /// When set, one ordinary member loses every frame to and from it between these cycles.
    pub partition_cycles: Option<(u64, u64)>,
    /// Every member's SWIM configuration.
    pub swim: SwimConfig,
    /// Seed of the whole run.
    pub seed: u64,
}

impl SimConfig {
    /// `members` members, `loss` frame loss, 1–20 ms latency, seed 000's SWIM defaults, a join
    /// at cycle 5 and a crash at cycle 100, over `cycles` cycles.
    pub fn new(members: usize, loss: f64, cycles: u64, seed: u64) -> Self {
        SimConfig {
            members,
            loss,
            min_latency_ms: 1,
            max_latency_ms: 20,
            cycles,
            join_at_cycle: Some(5),
            crash_at_cycle: Some(100),
            slow_members: 0,
            slow_delay_ms: 0,
            partition_cycles: None,
            swim: SwimConfig::default(),
            seed,
        }
    }
}

/// What a run measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SimReport {
    /// Cycles from the join command until every live member knew the joiner (None: never).
    pub join_cycles: Option<f64>,
    /// Seconds from the crash until every live member marked the victim dead (None: never).
    pub crash_to_dead_s: Option<f64>,
    /// Seconds from the crash until the first live member suspected the victim.
    pub crash_to_first_suspect_s: Option<f64>,
    /// "Dead" verdicts, by any member, about members that were alive and not slow.
    pub false_dead: u64,
    /// "Dead" verdicts about slow (alive but overloaded) members.
    pub false_dead_slow: u64,
    /// "Dead" verdicts about the partitioned member, and by it about everyone else.
    pub dead_across_partition: u64,
    /// The partitioned member's incarnation at the end (it must have refuted to come back).
    pub partitioned_incarnation: Option<u64>,
    /// "Suspect" verdicts about members that were alive and not slow.
    pub false_suspect: u64,
    /// Frames sent (lost ones included).
    pub frames: u64,
    /// Rumors carried by those frames.
    pub rumors: u64,
    /// Events processed.
    pub events: u64,
    /// At the end: pairs (live member, live member) where the first does not hold the second
    /// alive or suspect. 0 means every view converged.
    pub wrong_views: u64,
    /// Refutations performed by all members.
    pub refutations: u64,
}

enum Payload {
    Deliver { to: usize, msg: Message },
    Timer { node: usize, timer: Timer },
    Join,
    Crash,
    Partition(bool),
}

struct Item {
    at: Millis,
    seq: u64,
    payload: Payload,
}

impl PartialEq for Item {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Item {
    // Reversed: BinaryHeap is a max-heap and we want the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct Node {
    swim: Swim,
    crashed: bool,
    started: bool,
    slow: bool,
    cut_off: bool,
}

struct World {
    cfg: SimConfig,
    nodes: Vec<Node>,
    by_addr: HashMap<String, usize>,
    queue: BinaryHeap<Item>,
    seq: u64,
    now: Millis,
    rng: ChaCha8Rng,
    report: SimReport,
    joiner: Option<usize>,
    victim: Option<usize>,
    partitioned: Option<usize>,
    join_started: Option<Millis>,
    crashed_at: Option<Millis>,
    knows_joiner: BTreeSet<usize>,
    marked_dead: BTreeSet<usize>,
    actions: Vec<Action>,
}

fn addr_of(id: NodeId) -> String {
    format!(
        "10.{}.{}.{}:7946",
        id.get() >> 16 & 0xff,
        id.get() >> 8 & 0xff,
        id.get() & 0xff
    )
}

fn identity(id: NodeId) -> Identity {
    Identity {
        id,
        addr: addr_of(id),
        http: format!(
            "10.{}.{}.{}:8080",
            id.get() >> 16 & 0xff,
            id.get() >> 8 & 0xff,
            id.get() & 0xff
        ),
    }
}

/// Runs one simulation and reports what it measured. Fails only if `cfg.swim` is invalid.
pub fn run(cfg: &SimConfig) -> Result<SimReport, SwimError> {
    let mut world = World::new(cfg.clone())?;
    world.run();
    Ok(world.report)
}

impl World {
    fn new(cfg: SimConfig) -> Result<Self, SwimError> {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let n = cfg.members.max(2);
        let joiner = cfg.join_at_cycle.map(|_| n - 1);
        let preloaded: Vec<Member> = (0..n)
            .filter(|i| Some(*i) != joiner)
            .map(|i| {
                let id = identity(NodeId::new(i as u64 + 1));
                Member {
                    id: id.id,
                    addr: id.addr,
                    http: id.http,
                    incarnation: 0,
                    state: MemberState::Alive,
                    metadata: Metadata::default(),
                }
            })
            .collect();
        let mut nodes = Vec::with_capacity(n);
        let mut by_addr = HashMap::with_capacity(n);
        for i in 0..n {
            let id = identity(NodeId::new(i as u64 + 1));
            by_addr.insert(id.addr.clone(), i);
            let mut swim_cfg = cfg.swim.clone();
            if Some(i) == joiner {
                swim_cfg.seeds = vec![addr_of(NodeId::new(1))];
            }
            let node_seed = cfg.seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut swim = Swim::new(swim_cfg, id, node_seed)?;
            if Some(i) != joiner {
                swim.preload(preloaded.iter().cloned());
            }
            nodes.push(Node {
                swim,
                crashed: false,
                started: false,
                slow: false,
                cut_off: false,
            });
        }
        // The crash victim and the slow members are drawn among the ordinary members.
        let mut ordinary: Vec<usize> = (1..n).filter(|i| Some(*i) != joiner).collect();
        let victim = match cfg.crash_at_cycle {
            Some(_) if !ordinary.is_empty() => {
                let k = rng.random_range(0..ordinary.len());
                Some(ordinary.swap_remove(k))
            }
            _ => None,
        };
        let partitioned = match cfg.partition_cycles {
            Some(_) if !ordinary.is_empty() => {
                let k = rng.random_range(0..ordinary.len());
                Some(ordinary.swap_remove(k))
            }
            _ => None,
        };
        for _ in 0..cfg.slow_members.min(ordinary.len()) {
            let k = rng.random_range(0..ordinary.len());
            let i = ordinary.swap_remove(k);
            nodes[i].slow = true;
        }
        Ok(World {
            cfg,
            nodes,
            by_addr,
            queue: BinaryHeap::new(),
            seq: 0,
            now: 0,
            rng,
            report: SimReport::default(),
            joiner,
            victim,
            partitioned,
            join_started: None,
            crashed_at: None,
            knows_joiner: BTreeSet::new(),
            marked_dead: BTreeSet::new(),
            actions: Vec::new(),
        })
    }

    fn push(&mut self, at: Millis, payload: Payload) {
        self.seq += 1;
        self.queue.push(Item {
            at,
            seq: self.seq,
            payload,
        });
    }

    fn run(&mut self) {
        let cycle = self.cfg.swim.cycle_interval_ms;
        let end = self.cfg.cycles * cycle;
        for i in 0..self.nodes.len() {
            if Some(i) != self.joiner {
                self.nodes[i].started = true;
                self.nodes[i].swim.start(0);
                self.drain(i);
            }
        }
        if let Some(c) = self.cfg.join_at_cycle {
            self.push(c * cycle, Payload::Join);
        }
        if let (Some((from, to)), Some(_)) = (self.cfg.partition_cycles, self.partitioned) {
            self.push(from * cycle, Payload::Partition(true));
            self.push(to * cycle, Payload::Partition(false));
        }
        if let (Some(c), Some(_)) = (self.cfg.crash_at_cycle, self.victim) {
            self.push(c * cycle, Payload::Crash);
        }
        while let Some(item) = self.queue.pop() {
            if item.at > end {
                break;
            }
            self.now = item.at;
            self.report.events += 1;
            match item.payload {
                Payload::Deliver { to, msg } => {
                    let node = &mut self.nodes[to];
                    if node.crashed || !node.started {
                        continue;
                    }
                    node.swim.handle_message(self.now, msg);
                    self.drain(to);
                }
                Payload::Timer { node, timer } => {
                    if self.nodes[node].crashed {
                        continue;
                    }
                    self.nodes[node].swim.handle_timer(self.now, timer);
                    self.drain(node);
                }
                Payload::Join => {
                    if let Some(j) = self.joiner {
                        self.join_started = Some(self.now);
                        self.nodes[j].started = true;
                        self.nodes[j].swim.start(self.now);
                        self.drain(j);
                    }
                }
                Payload::Partition(on) => {
                    if let Some(p) = self.partitioned {
                        self.nodes[p].cut_off = on;
                    }
                }
                Payload::Crash => {
                    if let Some(v) = self.victim {
                        self.crashed_at = Some(self.now);
                        self.nodes[v].crashed = true;
                    }
                }
            }
        }
        self.finish();
    }

    fn live(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        n.started && !n.crashed
    }

    fn drain(&mut self, from: usize) {
        let mut actions = std::mem::take(&mut self.actions);
        self.nodes[from].swim.poll_actions(&mut actions);
        for action in actions.drain(..) {
            match action {
                Action::Send { addr, msg, .. } => {
                    self.report.frames += 1;
                    self.report.rumors += msg.updates.len() as u64;
                    if self.cfg.loss > 0.0 && self.rng.random_bool(self.cfg.loss) {
                        continue;
                    }
                    let Some(&to) = self.by_addr.get(&addr) else {
                        continue;
                    };
                    if self.nodes[from].cut_off || self.nodes[to].cut_off {
                        continue;
                    }
                    let mut delay = self
                        .rng
                        .random_range(self.cfg.min_latency_ms..=self.cfg.max_latency_ms);
                    if self.nodes[to].slow {
                        delay += self.cfg.slow_delay_ms;
                    }
                    self.push(self.now + delay, Payload::Deliver { to, msg });
                }
                Action::SetTimer { at, timer } => {
                    self.push(at.max(self.now), Payload::Timer { node: from, timer });
                }
                Action::Notify(event) => self.observe(from, event),
                Action::RoundTrip { .. } => {}
            }
        }
        self.actions = actions;
    }

    fn observe(&mut self, observer: usize, event: Event) {
        let cycle = self.cfg.swim.cycle_interval_ms as f64;
        match event {
            Event::Joined(m) | Event::Alive(m) => {
                let idx = (m.id.get() - 1) as usize;
                if Some(idx) == self.joiner && Some(observer) != self.joiner {
                    self.knows_joiner.insert(observer);
                    let others = (0..self.nodes.len())
                        .filter(|i| Some(*i) != self.joiner && self.live(*i))
                        .count();
                    if self.report.join_cycles.is_none() && self.knows_joiner.len() >= others {
                        let all_live_know = (0..self.nodes.len())
                            .filter(|i| Some(*i) != self.joiner && self.live(*i))
                            .all(|i| self.knows_joiner.contains(&i));
                        if all_live_know {
                            let started = self.join_started.unwrap_or(0);
                            self.report.join_cycles = Some((self.now - started) as f64 / cycle);
                        }
                    }
                }
            }
            Event::Suspect(m) => {
                let idx = (m.id.get() - 1) as usize;
                if Some(idx) == self.victim && self.nodes[idx].crashed {
                    if self.report.crash_to_first_suspect_s.is_none() {
                        let at = self.crashed_at.unwrap_or(0);
                        self.report.crash_to_first_suspect_s =
                            Some((self.now - at) as f64 / 1000.0);
                    }
                } else if !self.nodes[idx].crashed && !self.nodes[idx].slow {
                    self.report.false_suspect += 1;
                }
            }
            Event::Dead(m) => {
                let idx = (m.id.get() - 1) as usize;
                if self.nodes[idx].crashed {
                    if Some(idx) == self.victim {
                        self.marked_dead.insert(observer);
                        let all = (0..self.nodes.len())
                            .filter(|i| self.live(*i))
                            .all(|i| self.marked_dead.contains(&i));
                        if all && self.report.crash_to_dead_s.is_none() {
                            let at = self.crashed_at.unwrap_or(0);
                            self.report.crash_to_dead_s = Some((self.now - at) as f64 / 1000.0);
                        }
                    }
                } else if self.nodes[idx].slow {
                    self.report.false_dead_slow += 1;
                } else if Some(idx) == self.partitioned || Some(observer) == self.partitioned {
                    self.report.dead_across_partition += 1;
                } else {
                    self.report.false_dead += 1;
                }
            }
            Event::Left(_)
            | Event::MetadataChanged(_)
            | Event::Removed(_)
            | Event::Refuted { .. }
            | Event::JoinedCluster => {}
        }
    }

    fn finish(&mut self) {
        let live: Vec<usize> = (0..self.nodes.len()).filter(|i| self.live(*i)).collect();
        let mut wrong = 0;
        for &i in &live {
            let swim = &self.nodes[i].swim;
            self.report.refutations += swim.stats().refutations;
            for &j in &live {
                if i == j {
                    continue;
                }
                let ok = swim
                    .member(NodeId::new(j as u64 + 1))
                    .is_some_and(|m| m.state.is_active());
                if !ok {
                    wrong += 1;
                }
            }
        }
        self.report.wrong_views = wrong;
        self.report.partitioned_incarnation =
            self.partitioned.map(|p| self.nodes[p].swim.incarnation());
    }
}

/// Formats reports as the markdown table of `docs/gossip.md`.
pub fn markdown_table(rows: &[(SimConfig, SimReport)]) -> String {
    let mut out = String::from(
        "| members | loss | Lifeguard | (a) join: cycles to all | 3·log2(N) | (b) crash → first suspect (s) | (b) crash → all dead (s) | (c) false dead (healthy) | false suspect | wrong views at end | frames/member/cycle |\n\
         |---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (cfg, r) in rows {
        let opt = |v: Option<f64>| v.map_or_else(|| "never".to_owned(), |v| format!("{v:.1}"));
        let bound = 3.0 * (cfg.members as f64).log2();
        let per = r.frames as f64 / (cfg.members as f64 * cfg.cycles as f64);
        out.push_str(&format!(
            "| {} | {:.0}% | {} | {} | {:.1} | {} | {} | {} | {} | {} | {:.2} |\n",
            cfg.members,
            cfg.loss * 100.0,
            if cfg.swim.lifeguard { "on" } else { "off" },
            opt(r.join_cycles),
            bound,
            opt(r.crash_to_first_suspect_s),
            opt(r.crash_to_dead_s),
            r.false_dead,
            r.false_suspect,
            r.wrong_views,
            per,
        ));
    }
    out
}
