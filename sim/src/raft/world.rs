//! The simulated world: nodes (a core, a durable store, a state machine, a clock), the network,
//! the clients, the fault schedule, and the checkers that run after every event.

use super::clock::NodeClock;
use super::store::{digest, Durable, Shadow, SimSnapshot};
use super::trace::{DropWhy, MsgKind, Note, Trace};
use super::{derive_seed, FailureKind, FaultMix, SimConfig, SimFailure, SimReport};
use crate::linearizability::{check_kv, History, KvInput, KvOutput, OpId, SearchBudget, Verdict};
use conclave_core::ids::GroupId;
use conclave_core::raft::{
    Action, Entry, EntryPayload, LogIndex, MemberAddr, Membership, MembershipChange, Message,
    MessageBody, NodeId, PersistRequest, ProposeError, Raft, RaftConfig, ReadConsistency,
    ReadError, ReadId, RestoreState, Role, SnapshotError, SnapshotMeta, Term,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Ordering;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};

/// Configurations the linearizability search may visit per run. Histories of a few hundred
/// operations over four keys need far fewer; hitting it is reported, never passed.
const LINEARIZABILITY_BUDGET: u64 = 5_000_000;

/// Streams of randomness, one per concern (see [`derive_seed`]).
const STREAM_NET: u64 = 1;
const STREAM_FAULT: u64 = 2;
const STREAM_CLIENT: u64 = 3;
const STREAM_DISK: u64 = 4;
const STREAM_SETUP: u64 = 5;
const STREAM_SNAPSHOT: u64 = 6;
const STREAM_CORE: u64 = 1_000;

#[derive(Debug)]
enum Event {
    Deliver(Message),
    Timer {
        node: usize,
        incarnation: u64,
        gen: u64,
    },
    PersistDone {
        node: usize,
        incarnation: u64,
        seq: u64,
    },
    ClientStart {
        client: usize,
    },
    ClientRetry {
        client: usize,
        token: u64,
        node: usize,
    },
    ClientTimeout {
        client: usize,
        token: u64,
    },
    Fault,
    CrashLeader {
        node: usize,
        term: Term,
    },
    Heal {
        id: u64,
    },
    Restart {
        node: usize,
        incarnation: u64,
    },
    Liveness,
    LeaderDeadline {
        gen: u64,
    },
    /// A snapshot of a node's state machine finished writing (lost if the node crashed).
    SnapshotWritten {
        node: usize,
        incarnation: u64,
        snapshot: SimSnapshot,
    },
    /// A whole snapshot transfer reaches its receiver (the snapshotter's chunks, checksums
    /// and resumption are the runtime's; here a transfer arrives whole or not at all).
    SnapshotArrive {
        from: NodeId,
        to: NodeId,
        term: Term,
        snapshot: SimSnapshot,
    },
    /// The sender's shell learns a transfer failed.
    SnapshotFailed {
        node: usize,
        incarnation: u64,
        to: NodeId,
    },
    WorkloadStop,
    End,
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
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest event; ties go to the
    /// event scheduled first, which keeps persist completions and same-time messages FIFO.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.time, other.seq).cmp(&(self.time, self.seq))
    }
}

struct WaitingWrite {
    term: Term,
    op_no: u64,
    client: usize,
    token: u64,
}

struct Node {
    id: NodeId,
    core: Option<Raft>,
    incarnation: u64,
    clock: NodeClock,
    durable: Durable,
    /// Persist requests issued and not yet complete, oldest first.
    in_flight: VecDeque<PersistRequest>,
    /// Global time the last issued persist completes (completions are in order).
    last_done_at: u64,
    last_seq: Option<u64>,
    /// Terms of the core's in-memory log, rebuilt from its Persist actions: the log matching
    /// checker sees every entry as it is appended.
    shadow: Shadow,
    /// Applied entries after which the next snapshot is taken (drawn per snapshot).
    snapshot_after: u64,
    /// A snapshot write is in flight.
    snapshot_writing: bool,
    /// Snapshots received whole from a leader and handed to the core, by (index, term),
    /// waiting for the install's persist (lost on a crash).
    staged: BTreeMap<(LogIndex, Term), SimSnapshot>,
    kv: BTreeMap<String, String>,
    applied: LogIndex,
    commit_seen: LogIndex,
    /// `commit_seen` before the current input: a truncation below it is a safety violation
    /// (one input may legitimately truncate a conflicting tail and then commit past it).
    commit_floor: LogIndex,
    timer_gen: u64,
    waiting_writes: BTreeMap<LogIndex, Vec<WaitingWrite>>,
    waiting_reads: Vec<(LogIndex, ReadId)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum OpKind {
    Write,
    Read(ReadConsistency),
}

struct ClientOp {
    token: u64,
    op_no: u64,
    /// `None` for stale reads, which are not checked for linearizability.
    hist: Option<OpId>,
    kind: OpKind,
    started: u64,
    proposed: bool,
    /// The node holding the current attempt (a proposal or a read), if any.
    at: Option<usize>,
}

struct Client {
    current: Option<ClientOp>,
    hint: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Faults,
    Liveness,
}

pub(crate) struct World {
    cfg: SimConfig,
    mix: FaultMix,
    now: u64,
    step: u64,
    queue: BinaryHeap<Scheduled>,
    next_seq: u64,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    rng_net: ChaCha8Rng,
    rng_fault: ChaCha8Rng,
    rng_client: ChaCha8Rng,
    rng_disk: ChaCha8Rng,
    rng_snapshot: ChaCha8Rng,
    trace: Trace,
    actions: Vec<Action>,
    phase: Phase,
    workload_on: bool,
    stable_at: Option<u64>,
    /// The leader (node index, term) whose election marked `stable_at`.
    stable_leader: Option<(usize, Term)>,
    /// Only the latest leader deadline counts (a self-removal re-arms it).
    deadline_gen: u64,
    // Network.
    blocked: BTreeMap<(NodeId, NodeId), u32>,
    partitions: BTreeMap<u64, Vec<(NodeId, NodeId)>>,
    next_partition: u64,
    // Client bookkeeping.
    history: History<KvInput, KvOutput>,
    ops: Vec<KvInput>,
    reads: HashMap<ReadId, (usize, u64, usize)>,
    next_read: ReadId,
    next_token: u64,
    acked: Vec<(LogIndex, Term, u64)>,
    // Checkers' global knowledge.
    leaders: BTreeMap<Term, NodeId>,
    /// Votes delivered to each (candidate, term): who granted them.
    votes_granted: BTreeMap<(NodeId, Term), BTreeSet<NodeId>>,
    entry_ids: HashMap<(LogIndex, Term), (u64, Term)>,
    committed: Vec<(Term, u64)>,
    /// The state digest of the first replica that reached each applied index.
    digests: HashMap<LogIndex, (NodeId, u64)>,
    report: SimReport,
}

fn payload_hash(p: &EntryPayload) -> u64 {
    // `DefaultHasher::new()` has fixed keys: hashes are identical across runs and processes.
    let mut h = DefaultHasher::new();
    p.hash(&mut h);
    h.finish()
}

fn entry_at(core: &Raft, index: LogIndex) -> Option<&Entry> {
    let entries = core.entries();
    let first = entries.first()?.index;
    if index < first {
        return None;
    }
    entries.get(usize::try_from(index - first).ok()?)
}

fn command_bytes(op_no: u64) -> Vec<u8> {
    op_no.to_le_bytes().to_vec()
}

fn apply_kv(kv: &mut BTreeMap<String, String>, input: &KvInput) -> KvOutput {
    match input {
        KvInput::Put { key, value } => {
            kv.insert(key.clone(), value.clone());
            KvOutput::Put
        }
        KvInput::Get { key } => KvOutput::Get(kv.get(key).cloned()),
        KvInput::Cas { key, expected, new } => {
            if kv.get(key) != expected.as_ref() {
                return KvOutput::Cas { ok: false };
            }
            match new {
                Some(v) => kv.insert(key.clone(), v.clone()),
                None => kv.remove(key),
            };
            KvOutput::Cas { ok: true }
        }
        KvInput::Delete { key } => KvOutput::Delete {
            existed: kv.remove(key).is_some(),
        },
    }
}

fn key_of(input: &KvInput) -> &str {
    match input {
        KvInput::Put { key, .. }
        | KvInput::Get { key }
        | KvInput::Cas { key, .. }
        | KvInput::Delete { key } => key,
    }
}

impl World {
    pub(crate) fn new(cfg: SimConfig) -> Result<Self, Box<SimFailure>> {
        let mix = cfg
            .mix
            .clone()
            .unwrap_or_else(|| FaultMix::draw(cfg.profile, cfg.seed));
        let mut setup = ChaCha8Rng::seed_from_u64(derive_seed(cfg.seed, STREAM_SETUP));
        // Rate errors stay at 90% of the drift the lease bound tolerates (thesis §6.4.1: the
        // lease is safe only while drift stays within the configured bound).
        let max_ppm = i64::try_from(cfg.raft.max_clock_drift_percent.min(99) * 9_000).unwrap_or(0);
        let nodes = (1..=cfg.nodes as u64)
            .map(NodeId::new)
            .map(|id| Node {
                id,
                core: None,
                incarnation: 0,
                clock: NodeClock {
                    offset: setup.random_range(0..1_000_000),
                    ppm: if mix.clock_skew && max_ppm > 0 {
                        setup.random_range(-max_ppm..=max_ppm)
                    } else {
                        0
                    },
                },
                durable: Durable::new(),
                in_flight: VecDeque::new(),
                last_done_at: 0,
                last_seq: None,
                shadow: Shadow::default(),
                snapshot_after: 0,
                snapshot_writing: false,
                staged: BTreeMap::new(),
                kv: BTreeMap::new(),
                applied: 0,
                commit_seen: 0,
                commit_floor: 0,
                timer_gen: 0,
                waiting_writes: BTreeMap::new(),
                waiting_reads: Vec::new(),
            })
            .collect();
        let clients = (0..cfg.clients)
            .map(|_| Client {
                current: None,
                hint: None,
            })
            .collect();
        let seed = cfg.seed;
        let trace = Trace::new(cfg.trace_tail, cfg.verbose);
        Ok(World {
            mix,
            now: 0,
            step: 0,
            queue: BinaryHeap::new(),
            next_seq: 0,
            nodes,
            clients,
            rng_net: ChaCha8Rng::seed_from_u64(derive_seed(seed, STREAM_NET)),
            rng_fault: ChaCha8Rng::seed_from_u64(derive_seed(seed, STREAM_FAULT)),
            rng_client: ChaCha8Rng::seed_from_u64(derive_seed(seed, STREAM_CLIENT)),
            rng_disk: ChaCha8Rng::seed_from_u64(derive_seed(seed, STREAM_DISK)),
            rng_snapshot: ChaCha8Rng::seed_from_u64(derive_seed(seed, STREAM_SNAPSHOT)),
            trace,
            actions: Vec::new(),
            phase: Phase::Faults,
            workload_on: true,
            stable_at: None,
            stable_leader: None,
            deadline_gen: 0,
            blocked: BTreeMap::new(),
            partitions: BTreeMap::new(),
            next_partition: 0,
            history: History::new(),
            ops: Vec::new(),
            reads: HashMap::new(),
            next_read: 1,
            next_token: 1,
            acked: Vec::new(),
            leaders: BTreeMap::new(),
            votes_granted: BTreeMap::new(),
            entry_ids: HashMap::new(),
            committed: Vec::new(),
            digests: HashMap::new(),
            report: SimReport {
                seed,
                ..SimReport::default()
            },
            cfg,
        })
    }

    fn fail(&self, kind: FailureKind, message: impl Into<String>) -> Box<SimFailure> {
        Box::new(SimFailure {
            seed: self.cfg.seed,
            nodes: self.cfg.nodes,
            profile: self.cfg.profile,
            kind,
            step: self.step,
            time: self.now,
            message: message.into(),
            trace_tail: self.trace.tail(),
            mix: self.mix.to_string(),
            planted_bugs: self.cfg.planted_bugs_note(),
            replay: self.cfg.replay_command(),
        })
    }

    fn note(&mut self, note: Note) {
        self.trace.push(self.step, self.now, note);
    }

    fn text(&mut self, s: String) {
        self.note(Note::Text(s));
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.next_seq += 1;
        self.queue.push(Scheduled {
            time: at.max(self.now),
            seq: self.next_seq,
            event,
        });
    }

    fn local(&self, n: usize) -> u64 {
        self.nodes[n].clock.local(self.now)
    }

    pub(crate) fn run(mut self) -> Result<SimReport, Box<SimFailure>> {
        let fault_end = self.cfg.fault_ms;
        let end = fault_end + self.cfg.liveness_ms;
        for n in 0..self.nodes.len() {
            self.boot(n)?;
        }
        for c in 0..self.clients.len() {
            let at = self.rng_client.random_range(0..100);
            self.schedule(at, Event::ClientStart { client: c });
        }
        let gap = self.fault_gap();
        self.schedule(gap, Event::Fault);
        self.schedule(fault_end, Event::Liveness);
        self.schedule(
            fault_end + self.cfg.leader_bound_ms,
            Event::LeaderDeadline { gen: 0 },
        );
        // Stop new operations early enough that every one of them ends (completes or times
        // out) before the end, and the nodes have time to converge.
        let stop = end
            .saturating_sub(self.cfg.op_timeout_ms + 500)
            .max(fault_end);
        self.schedule(stop, Event::WorkloadStop);
        self.schedule(end, Event::End);
        while let Some(s) = self.queue.pop() {
            self.now = s.time;
            self.step += 1;
            if matches!(s.event, Event::End) {
                break;
            }
            self.handle(s.event)?;
            if self.phase == Phase::Liveness {
                self.check_self_removal();
                if self.stable_at.is_none() {
                    self.check_stable();
                }
            }
        }
        self.final_checks()?;
        self.report.steps = self.step;
        self.report.sim_ms = self.now;
        self.report.leaders = self.leaders.len() as u64;
        self.report.max_term = self.leaders.keys().next_back().copied().unwrap_or(0);
        self.report.committed = self.committed.len() as u64;
        self.report.paced_waits += self
            .nodes
            .iter()
            .filter_map(|n| n.core.as_ref())
            .map(|c| c.paced_waits())
            .sum::<u64>();
        Ok(self.report)
    }

    fn handle(&mut self, event: Event) -> Result<(), Box<SimFailure>> {
        match event {
            Event::Deliver(msg) => self.deliver(msg),
            Event::Timer {
                node,
                incarnation,
                gen,
            } => {
                let now = self.local(node);
                let n = &mut self.nodes[node];
                if n.incarnation != incarnation || n.timer_gen != gen {
                    return Ok(());
                }
                let Some(core) = n.core.as_mut() else {
                    return Ok(());
                };
                core.tick(now);
                let id = n.id;
                self.note(Note::Timer(id));
                self.drive(node)
            }
            Event::PersistDone {
                node,
                incarnation,
                seq,
            } => self.persist_done(node, incarnation, seq),
            Event::ClientStart { client } => self.client_start(client),
            Event::ClientRetry {
                client,
                token,
                node,
            } => {
                if self.client_token(client) == Some(token) {
                    self.attempt(client, node)?;
                }
                Ok(())
            }
            Event::ClientTimeout { client, token } => self.client_timeout(client, token),
            Event::Fault => self.fault(),
            Event::CrashLeader { node, term } => {
                let still = self.nodes[node]
                    .core
                    .as_ref()
                    .is_some_and(|c| c.role() == Role::Leader && c.term() == term);
                if still && self.phase == Phase::Faults {
                    self.crash(node);
                }
                Ok(())
            }
            Event::Heal { id } => {
                self.heal(id);
                Ok(())
            }
            Event::Restart { node, incarnation } => {
                if self.nodes[node].core.is_none() && self.nodes[node].incarnation == incarnation {
                    self.boot(node)?;
                }
                Ok(())
            }
            Event::Liveness => self.start_liveness(),
            Event::LeaderDeadline { gen } => {
                if gen == self.deadline_gen && self.stable_at.is_none() {
                    return Err(self.fail(
                        FailureKind::Liveness,
                        format!(
                            "no leader with a committed entry of its term {} ms after the faults stopped (or the stable leader removed itself)",
                            self.cfg.leader_bound_ms
                        ),
                    ));
                }
                Ok(())
            }
            Event::SnapshotWritten {
                node,
                incarnation,
                snapshot,
            } => self.snapshot_written(node, incarnation, snapshot),
            Event::SnapshotArrive {
                from,
                to,
                term,
                snapshot,
            } => self.snapshot_arrive(from, to, term, snapshot),
            Event::SnapshotFailed {
                node,
                incarnation,
                to,
            } => {
                let now = self.local(node);
                let x = &mut self.nodes[node];
                if x.incarnation != incarnation {
                    return Ok(());
                }
                let Some(core) = x.core.as_mut() else {
                    return Ok(());
                };
                core.snapshot_send_failed(now, to);
                let id = x.id;
                self.text(format!(
                    "n{id} learns its snapshot transfer to n{to} failed"
                ));
                self.drive(node)
            }
            Event::WorkloadStop => {
                self.workload_on = false;
                self.text("workload stops: no new client operations".into());
                Ok(())
            }
            Event::End => Ok(()),
        }
    }

    // ----- nodes -------------------------------------------------------------------------

    fn raft_config(&self, id: NodeId) -> RaftConfig {
        let (pace, lag) = self.mix.catch_up_pace;
        RaftConfig {
            id,
            group: GroupId::FIRST,
            keep_entries: self.mix.keep_entries,
            learner_catch_up_bytes_per_s: pace,
            promote_max_lag: if pace > 0 {
                lag
            } else {
                self.cfg.raft.promote_max_lag
            },
            ..self.cfg.raft.clone()
        }
    }

    /// The bootstrap membership node `id` starts with: the initial voters, or nothing for a
    /// joining node (the last `mix.joiners` ids), which learns it from the log.
    fn bootstrap_membership(&self, id: NodeId) -> Membership {
        // At most a minority of the nodes join later.
        let joiners = self.mix.joiners.min((self.cfg.nodes - 1) / 2);
        let initial = (self.cfg.nodes - joiners) as u64;
        if id.get() > initial {
            Membership::default()
        } else {
            Membership::with_voters((1..=initial).map(NodeId::new))
        }
    }

    /// Starts (or restarts) node `n` from exactly what its durable store holds. The state
    /// machine is volatile: it is rebuilt by re-applying the log from index 1.
    fn boot(&mut self, n: usize) -> Result<(), Box<SimFailure>> {
        let id = self.nodes[n].id;
        let durable = &self.nodes[n].durable;
        let snapshot = durable.snapshot.as_ref().map(|s| s.meta.clone());
        let restore = RestoreState {
            hard_state: durable.hard_state,
            entries: durable.entries(),
            // The state machine is volatile: it restarts from the snapshot, if any.
            applied: durable.snapshot_index(),
            base_membership: self.bootstrap_membership(id),
            snapshot,
        };
        let now = self.local(n);
        let rng_seed = derive_seed(
            self.cfg.seed,
            STREAM_CORE + id.get() * 1_000 + self.nodes[n].incarnation,
        );
        let core = Raft::new(self.raft_config(id), restore, rng_seed, now).map_err(|e| {
            self.fail(
                FailureKind::Contract,
                format!("Raft::new refused n{id}: {e}"),
            )
        })?;
        let threshold = self.snapshot_threshold();
        let node = &mut self.nodes[n];
        node.shadow = Shadow::of(&node.durable);
        node.core = Some(core);
        node.kv = node
            .durable
            .snapshot
            .as_ref()
            .map(|s| s.kv.clone())
            .unwrap_or_default();
        node.applied = node.durable.snapshot_index();
        node.commit_seen = 0;
        node.last_seq = None;
        node.last_done_at = 0;
        node.snapshot_after = threshold;
        node.snapshot_writing = false;
        let (inc, durable_last, hs, snap) = (
            node.incarnation,
            node.durable.next_index() - 1,
            node.durable.hard_state,
            node.durable.snapshot_index(),
        );
        self.text(format!(
            "n{id} boots (incarnation {inc}, snapshot {snap}, durable log up to {durable_last}, {hs:?})"
        ));
        self.check_digest(n)?;
        self.drive(n)
    }

    fn crash(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        let Some(core) = node.core.take() else {
            return;
        };
        self.report.paced_waits += core.paced_waits();
        node.incarnation += 1;
        let lost = node.in_flight.len();
        let mid_install = node.in_flight.iter().any(|r| r.snapshot.is_some());
        node.in_flight.clear();
        node.shadow = Shadow::of(&node.durable);
        node.staged.clear();
        node.snapshot_writing = false;
        node.kv.clear();
        node.applied = 0;
        node.commit_seen = 0;
        node.waiting_writes.clear();
        node.waiting_reads.clear();
        let (id, inc) = (node.id, node.incarnation);
        self.reads.retain(|_, (_, _, at)| *at != n);
        self.report.crashes += 1;
        self.report.crashes_mid_install += u64::from(mid_install);
        self.text(format!("CRASH n{id} ({lost} persists in flight lost)"));
        // Clients waiting on this node: a proposed write's fate is now unknown; a read simply
        // goes elsewhere.
        for c in 0..self.clients.len() {
            let Some(op) = self.clients[c].current.as_mut() else {
                continue;
            };
            if op.at != Some(n) {
                continue;
            }
            op.at = None;
            if op.kind == OpKind::Write && op.proposed {
                self.finish_indeterminate(c);
            } else {
                let token = op.token;
                let other = self.random_node();
                let at = self.now + self.rng_client.random_range(5..20);
                self.schedule(
                    at,
                    Event::ClientRetry {
                        client: c,
                        token,
                        node: other,
                    },
                );
            }
        }
        let down = self
            .rng_fault
            .random_range(self.mix.down_ms.0..=self.mix.down_ms.1);
        self.schedule(
            self.now + down,
            Event::Restart {
                node: n,
                incarnation: inc,
            },
        );
    }

    /// Drains node `n`'s actions, checks its state, and carries the actions out in order.
    fn drive(&mut self, n: usize) -> Result<(), Box<SimFailure>> {
        let mut actions = std::mem::take(&mut self.actions);
        if let Some(core) = self.nodes[n].core.as_mut() {
            core.poll_actions(&mut actions);
        } else {
            self.actions = actions;
            return Ok(());
        }
        let result = self.after_poll(n, &mut actions);
        actions.clear();
        self.actions = actions;
        result
    }

    fn after_poll(&mut self, n: usize, actions: &mut Vec<Action>) -> Result<(), Box<SimFailure>> {
        self.nodes[n].commit_floor = self.nodes[n].commit_seen;
        self.check_node(n)?;
        for action in actions.drain(..) {
            self.carry_out(n, action)?;
        }
        self.check_shadow(n)
    }

    fn carry_out(&mut self, n: usize, action: Action) -> Result<(), Box<SimFailure>> {
        let id = self.nodes[n].id;
        match action {
            Action::Send(msg) => {
                if msg.from != id || msg.group != GroupId::FIRST || msg.to == id {
                    return Err(self.fail(
                        FailureKind::Contract,
                        format!("n{id} emitted a malformed message {msg:?}"),
                    ));
                }
                self.send(msg);
                Ok(())
            }
            Action::Persist(req) => self.persist(n, req),
            Action::Apply(entries) => {
                for e in entries {
                    self.apply(n, e)?;
                }
                self.serve_ready_reads(n);
                self.maybe_snapshot(n)
            }
            Action::SendSnapshot { to, term, meta } => self.send_snapshot(n, to, term, meta),
            Action::RestoreSnapshot(meta) => self.restore_snapshot(n, meta),
            Action::Compacted { first_index } => self.compacted(n, first_index),
            Action::SetTimer { at } => {
                let node = &mut self.nodes[n];
                node.timer_gen += 1;
                let (gen, incarnation) = (node.timer_gen, node.incarnation);
                let global = node.clock.to_global(at, self.now);
                self.schedule(
                    global,
                    Event::Timer {
                        node: n,
                        incarnation,
                        gen,
                    },
                );
                Ok(())
            }
            Action::ReadReady { id: rid, index } => {
                let Some(&(client, token, at)) = self.reads.get(&rid) else {
                    return Ok(());
                };
                if at != n || self.client_token(client) != Some(token) {
                    self.reads.remove(&rid);
                    return Ok(());
                }
                if self.nodes[n].applied >= index {
                    self.serve_read(n, rid);
                } else {
                    self.nodes[n].waiting_reads.push((index, rid));
                }
                Ok(())
            }
            Action::ReadFailed { id: rid, error } => {
                let Some((client, token, at)) = self.reads.remove(&rid) else {
                    return Ok(());
                };
                if at != n || self.client_token(client) != Some(token) {
                    return Ok(());
                }
                let hint = match error {
                    ReadError::NotLeader { leader } => leader,
                    _ => None,
                };
                self.retry_later(client, token, hint.map(|l| (l.get() - 1) as usize), (5, 30));
                Ok(())
            }
            Action::RoleChanged { role, term, leader } => {
                self.note(Note::Role {
                    node: id,
                    role,
                    term,
                    leader,
                });
                Ok(())
            }
        }
    }

    fn persist(&mut self, n: usize, req: PersistRequest) -> Result<(), Box<SimFailure>> {
        let id = self.nodes[n].id;
        if let Some(last) = self.nodes[n].last_seq {
            if req.seq != last + 1 {
                return Err(self.fail(
                    FailureKind::Contract,
                    format!("n{id} persist seq {} after {last}", req.seq),
                ));
            }
        }
        self.nodes[n].last_seq = Some(req.seq);
        if let Some(meta) = &req.snapshot {
            if !self.nodes[n].staged.contains_key(&(meta.index, meta.term)) {
                return Err(self.fail(
                    FailureKind::Contract,
                    format!(
                        "n{id} persists an install of snapshot {}/t{} it was never handed",
                        meta.index, meta.term
                    ),
                ));
            }
            self.nodes[n].shadow.install(meta);
        }
        if let Some(from) = req.truncate_from {
            if from == 0 {
                return Err(self.fail(FailureKind::Contract, format!("n{id} truncates from 0")));
            }
            if from <= self.nodes[n].commit_floor {
                return Err(self.fail(
                    FailureKind::StateMachineSafety,
                    format!(
                        "n{id} truncates its log from {from}, at or below its commit index {}",
                        self.nodes[n].commit_floor
                    ),
                ));
            }
            self.nodes[n].shadow.truncate_from(from);
        }
        for e in &req.entries {
            let expected = self.nodes[n].shadow.last() + 1;
            if e.index != expected {
                return Err(self.fail(
                    FailureKind::Contract,
                    format!("n{id} persists entry {} where {expected} was next", e.index),
                ));
            }
            let Some(prev_term) = self.nodes[n].shadow.term_at(e.index - 1) else {
                return Err(self.fail(
                    FailureKind::Contract,
                    format!("n{id} persists entry {} after a compacted one", e.index),
                ));
            };
            let hash = payload_hash(&e.payload);
            // Log Matching (Raft §5.3): (index, term) identifies an entry's contents and, by
            // induction over the predecessors, the whole prefix before it.
            match self.entry_ids.get(&(e.index, e.term)) {
                Some(&(h, p)) if (h, p) != (hash, prev_term) => {
                    return Err(self.fail(
                        FailureKind::LogMatching,
                        format!(
                            "n{id} appends entry {}/t{} ({:?}, previous term {prev_term}) but another \
                             entry with that index and term exists (payload hash {h:x} vs {hash:x}, previous term {p})",
                            e.index, e.term, e.payload
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    self.entry_ids.insert((e.index, e.term), (hash, prev_term));
                    // The first persist of an entry is its creator's, the leader's.
                    if let EntryPayload::Membership(next) = &e.payload {
                        self.check_membership_change(n, e.index, next)?;
                    }
                }
            }
            self.nodes[n].shadow.push(e.term);
        }
        let slow = self.rng_disk.random_bool(self.mix.slow_disk);
        let latency = if slow {
            self.rng_disk.random_range(10..=60)
        } else {
            self.rng_disk.random_range(0..=3)
        };
        let node = &mut self.nodes[n];
        let done = (self.now + latency).max(node.last_done_at);
        node.last_done_at = done;
        let (incarnation, seq) = (node.incarnation, req.seq);
        node.in_flight.push_back(req);
        self.schedule(
            done,
            Event::PersistDone {
                node: n,
                incarnation,
                seq,
            },
        );
        Ok(())
    }

    /// Membership change safety, checked where a leader creates a membership entry: the
    /// entry carries its own index as its configuration id; the configuration before it is
    /// committed (one change at a time, thesis §4.1 — a second change on top of an
    /// uncommitted one can leave two disjoint majorities); and the step is one the protocol
    /// allows: at most one voter added or removed, or entering a joint configuration whose
    /// C_old is the configuration in force, or leaving one for exactly its C_new (Raft §6).
    fn check_membership_change(
        &self,
        n: usize,
        index: LogIndex,
        next: &Membership,
    ) -> Result<(), Box<SimFailure>> {
        let id = self.nodes[n].id;
        let Some(core) = self.nodes[n].core.as_ref() else {
            return Ok(());
        };
        let prev = core.membership_at_index(index - 1);
        let committed = self.committed.len() as u64;
        let problem = if next.config_id != index {
            Some(format!("carries config id {}", next.config_id))
        } else if prev.config_id > committed {
            Some(format!(
                "follows configuration {} which is not committed (committed up to {committed})",
                prev.config_id
            ))
        } else if prev.is_joint() {
            (next.is_joint() || next.voters != prev.voters)
                .then(|| "does not leave the joint configuration for its C_new".to_string())
        } else if next.is_joint() {
            (next.outgoing != prev.voters)
                .then(|| "enters a joint configuration whose C_old is not in force".to_string())
        } else {
            (prev.voters.symmetric_difference(&next.voters).count() > 1)
                .then(|| "changes more than one voter without a joint configuration".to_string())
        };
        match problem {
            Some(p) => Err(self.fail(
                FailureKind::MembershipChange,
                format!("n{id} appends membership {next:?} at {index}: {p}; before it: {prev:?}"),
            )),
            None => Ok(()),
        }
    }

    fn persist_done(
        &mut self,
        n: usize,
        incarnation: u64,
        seq: u64,
    ) -> Result<(), Box<SimFailure>> {
        let now = self.local(n);
        let node = &mut self.nodes[n];
        if node.incarnation != incarnation || node.core.is_none() {
            return Ok(());
        }
        let id = node.id;
        let Some(req) = node.in_flight.pop_front() else {
            return Err(self.fail(
                FailureKind::Contract,
                format!("simulator: n{id} completion of seq {seq} with nothing in flight"),
            ));
        };
        if req.seq != seq {
            return Err(self.fail(
                FailureKind::Contract,
                format!(
                    "simulator: n{id} completes seq {seq} but {} is first",
                    req.seq
                ),
            ));
        }
        if let Some(hs) = req.hard_state {
            node.durable.hard_state = hs;
        }
        if let Some(meta) = &req.snapshot {
            // The install's "rename": the staged snapshot becomes the one a restart uses.
            let Some(snapshot) = node.staged.get(&(meta.index, meta.term)).cloned() else {
                return Err(self.fail(
                    FailureKind::Contract,
                    format!(
                        "simulator: n{id} lost staged snapshot {}/t{}",
                        meta.index, meta.term
                    ),
                ));
            };
            // Other staged snapshots stay until a crash clears them (a run stages few).
            node.durable.install(snapshot);
            self.report.snapshots_installed += 1;
        }
        if let Some(from) = req.truncate_from {
            node.durable.truncate_from(from);
        }
        for e in req.entries {
            if e.index != node.durable.next_index() {
                let got = e.index;
                let next = node.durable.next_index();
                return Err(self.fail(
                    FailureKind::Contract,
                    format!(
                        "n{id} persist seq {seq} appends index {got} to a durable log expecting {next}"
                    ),
                ));
            }
            node.durable.log.push(e);
        }
        let last = node.durable.next_index() - 1;
        if let Some(core) = node.core.as_mut() {
            core.persisted(now, seq);
        }
        self.note(Note::Persisted {
            node: id,
            seq,
            last,
        });
        self.drive(n)
    }

    fn apply(&mut self, n: usize, e: Entry) -> Result<(), Box<SimFailure>> {
        let id = self.nodes[n].id;
        let node = &self.nodes[n];
        if e.index != node.applied + 1 {
            return Err(self.fail(
                FailureKind::Contract,
                format!("n{id} applies {} after {}", e.index, node.applied),
            ));
        }
        if e.index > node.commit_seen {
            return Err(self.fail(
                FailureKind::Contract,
                format!(
                    "n{id} applies {} beyond its commit index {}",
                    e.index, node.commit_seen
                ),
            ));
        }
        let hash = payload_hash(&e.payload);
        // State Machine Safety (Raft §5.4.3): what is applied at an index is what was
        // committed there, on every node.
        match self.committed.get((e.index - 1) as usize) {
            Some(&(t, h)) if (t, h) == (e.term, hash) => {}
            other => {
                return Err(self.fail(
                    FailureKind::StateMachineSafety,
                    format!(
                        "n{id} applies {}/t{} ({:?}) but the committed entry there is {other:?}",
                        e.index, e.term, e.payload
                    ),
                ));
            }
        }
        let output = match &e.payload {
            EntryPayload::Command(bytes) => {
                let op_no = <[u8; 8]>::try_from(bytes.as_slice())
                    .ok()
                    .map(u64::from_le_bytes)
                    .filter(|&o| (o as usize) < self.ops.len());
                let Some(op_no) = op_no else {
                    return Err(self.fail(
                        FailureKind::Contract,
                        format!("n{id} applies an unknown command {bytes:?} at {}", e.index),
                    ));
                };
                let input = &self.ops[op_no as usize];
                Some((op_no, apply_kv(&mut self.nodes[n].kv, input)))
            }
            EntryPayload::Noop | EntryPayload::Membership(_) => None,
        };
        self.nodes[n].applied = e.index;
        self.check_digest(n)?;
        if let Some(waiting) = self.nodes[n].waiting_writes.remove(&e.index) {
            for w in waiting {
                if self.client_token(w.client) != Some(w.token) {
                    continue;
                }
                match &output {
                    Some((op_no, out)) if e.term == w.term && *op_no == w.op_no => {
                        self.acked.push((e.index, e.term, w.op_no));
                        let out = out.clone();
                        self.finish_ok(w.client, Some(out));
                    }
                    _ if e.term == w.term => {
                        return Err(self.fail(
                            FailureKind::Contract,
                            format!(
                                "n{id} proposal {}/t{} of op {} applied as {:?}",
                                e.index, e.term, w.op_no, e.payload
                            ),
                        ));
                    }
                    _ => {
                        // Another term's entry at the proposal's index: the proposal was lost
                        // to a leader change and can never commit.
                        self.finish_failed(w.client);
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks made after every input to node `n`: election safety, leader completeness, commit
    /// monotonicity, and that every newly committed entry is durable on a quorum.
    fn check_node(&mut self, n: usize) -> Result<(), Box<SimFailure>> {
        let node = &self.nodes[n];
        let Some(core) = node.core.as_ref() else {
            return Ok(());
        };
        let id = node.id;
        let (role, term, commit) = (core.role(), core.term(), core.commit_index());
        if role == Role::Leader {
            match self.leaders.get(&term) {
                Some(&other) if other != id => {
                    return Err(self.fail(
                        FailureKind::ElectionSafety,
                        format!("n{id} and n{other} are both leaders of term {term}"),
                    ));
                }
                Some(_) => {}
                None => {
                    // Election quorum: the votes delivered to the new leader in its term (and
                    // its own) form a quorum of the configuration it counts with — while
                    // joint (Raft §6), a majority of C_new and one of C_old.
                    let m = core.membership();
                    let granted = self.votes_granted.get(&(id, term));
                    let voted = |v: NodeId| v == id || granted.is_some_and(|g| g.contains(&v));
                    if !m.is_quorum(voted) {
                        return Err(self.fail(
                            FailureKind::ElectionQuorum,
                            format!(
                                "n{id} became leader of term {term} with the votes of {granted:?} \
                                 (voters {:?}, outgoing {:?})",
                                m.voters, m.outgoing
                            ),
                        ));
                    }
                    // Leader Completeness (Raft §5.4): the new leader holds every entry
                    // committed so far.
                    // Below its compaction point it holds the prefix through a snapshot: the
                    // term at the point identifies it (Log Matching extends to snapshots).
                    let point = core.first_index() - 1;
                    for (i, &(t, h)) in self.committed.iter().enumerate() {
                        let index = i as u64 + 1;
                        if index < point {
                            continue;
                        }
                        let has = if index == point {
                            core.entry_term(index).map(|term| (term, h))
                        } else {
                            entry_at(core, index).map(|e| (e.term, payload_hash(&e.payload)))
                        };
                        if has != Some((t, h)) {
                            let has_term = has.map(|x| x.0);
                            return Err(self.fail(
                                FailureKind::LeaderCompleteness,
                                format!(
                                    "n{id} became leader of term {term} without committed entry \
                                     {index}/t{t} (it holds term {has_term:?} there, last index {})",
                                    core.last_index()
                                ),
                            ));
                        }
                    }
                    self.leaders.insert(term, id);
                    if self.phase == Phase::Faults
                        && self.mix.new_leader_crash > 0.0
                        && self.rng_fault.random_bool(self.mix.new_leader_crash)
                    {
                        let (lo, hi) = self.mix.leader_life_ms;
                        let at = self.now + self.rng_fault.random_range(lo..=hi.max(lo));
                        // Field-level access: `core` still borrows `self.nodes`.
                        self.next_seq += 1;
                        self.queue.push(Scheduled {
                            time: at,
                            seq: self.next_seq,
                            event: Event::CrashLeader { node: n, term },
                        });
                    }
                }
            }
        }
        if commit < node.commit_seen {
            return Err(self.fail(
                FailureKind::CommitRegressed,
                format!(
                    "n{id} commit index went from {} to {commit}",
                    node.commit_seen
                ),
            ));
        }
        if commit == node.commit_seen {
            return Ok(());
        }
        if commit > core.last_index() {
            return Err(self.fail(
                FailureKind::Contract,
                format!(
                    "n{id} commit index {commit} beyond its last index {}",
                    core.last_index()
                ),
            ));
        }
        let from = node.commit_seen + 1;
        let mut newly = Vec::new();
        let point = core.first_index() - 1;
        for index in from..=commit.min(point) {
            // Held through a snapshot (taken, installed or restored): only committed entries
            // are ever in one, so somebody committed them first, with the same term at the
            // compaction point.
            let known = self.committed.get((index - 1) as usize).copied();
            let ok = match known {
                None => false,
                Some((t, _)) => index != point || core.entry_term(index) == Some(t),
            };
            if !ok {
                return Err(self.fail(
                    FailureKind::StateMachineSafety,
                    format!(
                        "n{id} commits {index} through a snapshot (term {:?} at its compaction point {point}) but the committed entry there is {known:?}",
                        core.entry_term(point)
                    ),
                ));
            }
        }
        for index in from.max(point + 1)..=commit {
            let Some(e) = entry_at(core, index) else {
                return Err(self.fail(
                    FailureKind::Contract,
                    format!("n{id} commits {index} which is not in its log"),
                ));
            };
            newly.push((index, e.term, payload_hash(&e.payload)));
        }
        let membership = core.membership().clone();
        for (index, t, h) in newly {
            match self.committed.get((index - 1) as usize) {
                Some(&c) if c != (t, h) => {
                    return Err(self.fail(
                        FailureKind::StateMachineSafety,
                        format!(
                            "n{id} commits {index}/t{t} but {index}/t{} was committed before",
                            c.0
                        ),
                    ));
                }
                Some(_) => {}
                None => self.committed.push((t, h)),
            }
            if index == commit && role == Role::Leader {
                // Nothing is committed before a quorum stores it durably (Raft §5.3 with the
                // persistence rule of figure 2). Checked where the decision is made, on the
                // leader, against the membership it counts with: a follower that learns the
                // commit index may already hold a newer membership (a single-server change
                // appended after the commit), under which an entry committed by the old
                // majority need not yet be on a new majority — and need not be, since any
                // majority of the new membership overlaps the old one (thesis §4.1). While
                // the membership is joint (Raft §6), a majority of C_new *and* one of C_old.
                let holds = |v: NodeId| {
                    self.nodes
                        .get((v.get() - 1) as usize)
                        .is_some_and(|x| x.durable.holds(index, t))
                };
                if !membership.is_quorum(holds) {
                    let holders: Vec<NodeId> =
                        membership.all_voters().filter(|&v| holds(v)).collect();
                    return Err(self.fail(
                        FailureKind::CommitNotDurable,
                        format!(
                            "n{id} commits {index}/t{t} but only {holders:?} store it durably \
                             (voters {:?}, outgoing {:?})",
                            membership.voters, membership.outgoing
                        ),
                    ));
                }
            }
        }
        self.nodes[n].commit_seen = commit;
        self.note(Note::Commit {
            node: id,
            index: commit,
        });
        Ok(())
    }

    /// The core's in-memory log must be exactly what its Persist actions described.
    fn check_shadow(&self, n: usize) -> Result<(), Box<SimFailure>> {
        let node = &self.nodes[n];
        let Some(core) = node.core.as_ref() else {
            return Ok(());
        };
        let last = core.last_index();
        let shadow_last = node.shadow.last();
        let shadow_term = node.shadow.last_term();
        if last != shadow_last || (last > 0 && core.entry_term(last) != shadow_term) {
            return Err(self.fail(
                FailureKind::Contract,
                format!(
                    "n{} holds last entry {last}/t{:?} in memory but its Persist actions describe {shadow_last}/t{shadow_term:?}",
                    node.id,
                    core.entry_term(last)
                ),
            ));
        }
        Ok(())
    }

    /// A membership change proposed during the fault phase may commit after the group was
    /// declared stable and remove the stable leader itself (it then steps down, thesis
    /// §4.2.2). That is a last disruption, not a liveness failure: stability is re-established
    /// from scratch, with a fresh deadline, and operations invoked before are exempt. Any
    /// other loss of leadership after stability stays a failure.
    fn check_self_removal(&mut self) {
        let Some((l, term)) = self.stable_leader else {
            return;
        };
        let node = &self.nodes[l];
        let Some(core) = node.core.as_ref() else {
            return;
        };
        let still_leading = core.role() == Role::Leader && core.term() == term;
        if still_leading || core.membership().is_voter(node.id) {
            return;
        }
        let id = node.id;
        self.stable_at = None;
        self.stable_leader = None;
        self.text(format!(
            "stable leader n{id} removed itself from the voters: waiting for a new leader"
        ));
        self.deadline_gen += 1;
        let gen = self.deadline_gen;
        self.schedule(
            self.now + self.cfg.leader_bound_ms,
            Event::LeaderDeadline { gen },
        );
    }

    fn check_stable(&mut self) {
        for node in &self.nodes {
            let Some(core) = node.core.as_ref() else {
                continue;
            };
            if core.role() == Role::Leader
                && core.commit_index() > 0
                && core.entry_term(core.commit_index()) == Some(core.term())
            {
                self.stable_at = Some(self.now);
                let (id, term) = (node.id, core.term());
                self.stable_leader = Some(((id.get() - 1) as usize, term));
                self.text(format!(
                    "stable: n{id} leads term {term} with a committed entry of its term"
                ));
                return;
            }
        }
    }

    // ----- snapshots ---------------------------------------------------------------------

    /// How many applied entries the next snapshot waits for (0: this run takes none).
    fn snapshot_threshold(&mut self) -> u64 {
        let (lo, hi) = self.mix.snapshot_every;
        if hi == 0 {
            return 0;
        }
        self.rng_snapshot
            .random_range(lo.max(1)..=hi.max(lo.max(1)))
    }

    /// Starts writing a snapshot of node `n`'s state machine once enough entries were applied
    /// since its last one. The write takes disk time; a crash meanwhile loses it.
    fn maybe_snapshot(&mut self, n: usize) -> Result<(), Box<SimFailure>> {
        let node = &self.nodes[n];
        if node.snapshot_after == 0
            || node.snapshot_writing
            || node.applied < node.durable.snapshot_index() + node.snapshot_after
        {
            return Ok(());
        }
        let Some(core) = node.core.as_ref() else {
            return Ok(());
        };
        let (id, applied) = (node.id, node.applied);
        let meta = match core.snapshot_meta(applied) {
            Ok(meta) => meta,
            // An install or a newer snapshot got there first; or a joining node has not yet
            // received the membership of that prefix.
            Err(SnapshotError::Stale { .. } | SnapshotError::UnknownMembership { .. }) => {
                return Ok(())
            }
            Err(e) => {
                return Err(self.fail(
                    FailureKind::Contract,
                    format!("n{id} cannot describe a snapshot at its applied index {applied}: {e}"),
                ))
            }
        };
        let mut kv = node.kv.clone();
        if self.bug_snapshot_missing_state() {
            // The planted bug: the snapshot leaves out part of the state.
            let first = kv.keys().next().cloned();
            if let Some(k) = first {
                kv.remove(&k);
            }
        }
        let latency = self.rng_snapshot.random_range(1..=40);
        let incarnation = self.nodes[n].incarnation;
        self.nodes[n].snapshot_writing = true;
        self.text(format!("n{id} starts a snapshot at {applied}"));
        self.schedule(
            self.now + latency,
            Event::SnapshotWritten {
                node: n,
                incarnation,
                snapshot: SimSnapshot { meta, kv },
            },
        );
        Ok(())
    }

    fn bug_snapshot_missing_state(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.cfg.raft.planted_bugs.snapshot_missing_state
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            false
        }
    }

    /// A snapshot is durable: it becomes the restart base (if newer) and the core may compact.
    fn snapshot_written(
        &mut self,
        n: usize,
        incarnation: u64,
        snapshot: SimSnapshot,
    ) -> Result<(), Box<SimFailure>> {
        let now = self.local(n);
        let threshold = self.snapshot_threshold();
        let node = &mut self.nodes[n];
        if node.incarnation != incarnation || node.core.is_none() {
            return Ok(());
        }
        node.snapshot_writing = false;
        node.snapshot_after = threshold;
        if snapshot.meta.index <= node.durable.snapshot_index() {
            return Ok(());
        }
        let meta = snapshot.meta.clone();
        node.durable.snapshot = Some(snapshot);
        let id = node.id;
        let result = node
            .core
            .as_mut()
            .map(|c| c.snapshot_taken(now, meta.clone()));
        self.report.snapshots_taken += 1;
        match result {
            Some(Ok(())) | Some(Err(SnapshotError::Stale { .. })) | None => {}
            Some(Err(e)) => {
                return Err(self.fail(
                    FailureKind::Contract,
                    format!("n{id} refused its own snapshot {meta:?}: {e}"),
                ))
            }
        }
        self.text(format!(
            "n{id} snapshot at {} written: {result:?}",
            meta.index
        ));
        self.drive(n)
    }

    /// The core asks the shell to stream its snapshot to `to`: one event that arrives after a
    /// transfer time, or is lost (the sender then usually hears of the failure).
    fn send_snapshot(
        &mut self,
        n: usize,
        to: NodeId,
        term: Term,
        meta: SnapshotMeta,
    ) -> Result<(), Box<SimFailure>> {
        let node = &self.nodes[n];
        let (id, incarnation) = (node.id, node.incarnation);
        let snapshot = node.durable.snapshot.clone().filter(|s| s.meta == meta);
        let Some(snapshot) = snapshot else {
            return Err(self.fail(
                FailureKind::Contract,
                format!(
                    "n{id} asked to send snapshot {}/t{} but its shell holds {:?}",
                    meta.index,
                    meta.term,
                    node.durable
                        .snapshot
                        .as_ref()
                        .map(|s| (s.meta.index, s.meta.term))
                ),
            ));
        };
        self.report.snapshots_sent += 1;
        let kind = MsgKind::Snapshot {
            index: meta.index,
            term: meta.term,
        };
        let lost = if self.blocked.contains_key(&(id, to)) {
            Some(DropWhy::Partition)
        } else if self.mix.drop > 0.0 && self.rng_net.random_bool(self.mix.drop) {
            Some(DropWhy::Random)
        } else {
            None
        };
        if let Some(why) = lost {
            self.note(Note::Dropped {
                from: id,
                to,
                term,
                kind,
                why,
            });
            self.transfer_failed(n, incarnation, to);
            return Ok(());
        }
        // A transfer takes longer than a message; duplicates and long delays make a stale
        // snapshot arrive after a newer one.
        let copies = if self.mix.duplicate > 0.0 && self.rng_net.random_bool(self.mix.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let d = self.delay() + self.rng_net.random_range(5..=60);
            self.schedule(
                self.now + d,
                Event::SnapshotArrive {
                    from: id,
                    to,
                    term,
                    snapshot: snapshot.clone(),
                },
            );
        }
        Ok(())
    }

    /// Most failed transfers are reported to the sender (a broken connection); some are lost
    /// silently and only the core's timeout recovers.
    fn transfer_failed(&mut self, n: usize, incarnation: u64, to: NodeId) {
        if self.rng_net.random_bool(0.7) {
            let at = self.now + self.rng_net.random_range(10..=100);
            self.schedule(
                at,
                Event::SnapshotFailed {
                    node: n,
                    incarnation,
                    to,
                },
            );
        }
    }

    fn snapshot_arrive(
        &mut self,
        from: NodeId,
        to: NodeId,
        term: Term,
        snapshot: SimSnapshot,
    ) -> Result<(), Box<SimFailure>> {
        let r = (to.get() - 1) as usize;
        let s = (from.get() - 1) as usize;
        let kind = MsgKind::Snapshot {
            index: snapshot.meta.index,
            term: snapshot.meta.term,
        };
        let why = if self.blocked.contains_key(&(from, to)) {
            Some(DropWhy::Partition)
        } else if self.nodes.get(r).is_none_or(|x| x.core.is_none()) {
            Some(DropWhy::Crashed)
        } else {
            None
        };
        if let Some(why) = why {
            self.note(Note::Dropped {
                from,
                to,
                term,
                kind,
                why,
            });
            let incarnation = self.nodes[s].incarnation;
            self.transfer_failed(s, incarnation, to);
            return Ok(());
        }
        self.note(Note::Deliver {
            from,
            to,
            term,
            kind,
        });
        let now = self.local(r);
        let meta = snapshot.meta.clone();
        if let Some(core) = self.nodes[r].core.as_ref() {
            if term < core.term() {
                self.report.snapshots_old_term += 1;
            } else if meta.index <= core.commit_index() {
                self.report.snapshots_stale += 1;
            }
        }
        let node = &mut self.nodes[r];
        node.staged.insert((meta.index, meta.term), snapshot);
        if let Some(core) = node.core.as_mut() {
            core.install_snapshot(now, from, term, meta);
        }
        self.drive(r)
    }

    /// The install's persist completed: the state machine switches to the snapshot.
    fn restore_snapshot(&mut self, n: usize, meta: SnapshotMeta) -> Result<(), Box<SimFailure>> {
        let node = &self.nodes[n];
        let id = node.id;
        let Some(snapshot) = node.durable.snapshot.clone().filter(|s| s.meta == meta) else {
            return Err(self.fail(
                FailureKind::Contract,
                format!(
                    "n{id} asked to restore snapshot {}/t{} which is not its durable base",
                    meta.index, meta.term
                ),
            ));
        };
        if meta.index < node.applied {
            return Err(self.fail(
                FailureKind::AppliedRegressed,
                format!(
                    "n{id} restores snapshot {}/t{} after applying up to {}",
                    meta.index, meta.term, node.applied
                ),
            ));
        }
        let node = &mut self.nodes[n];
        node.kv = snapshot.kv;
        node.applied = meta.index;
        // Proposals the snapshot covers: their outcome is not known from a snapshot.
        let covered: Vec<LogIndex> = node
            .waiting_writes
            .range(..=meta.index)
            .map(|(i, _)| *i)
            .collect();
        let mut clients = Vec::new();
        for i in covered {
            if let Some(ws) = self.nodes[n].waiting_writes.remove(&i) {
                clients.extend(ws.into_iter().map(|w| (w.client, w.token)));
            }
        }
        for (client, token) in clients {
            if self.client_token(client) == Some(token) {
                self.finish_indeterminate(client);
            }
        }
        self.text(format!(
            "n{id} restores snapshot {}/t{}",
            meta.index, meta.term
        ));
        self.check_digest(n)?;
        self.serve_ready_reads(n);
        Ok(())
    }

    /// The core compacted its log: only entries a durable snapshot covers may go. The
    /// simulated store purges lazily, up to a random point (whole segments).
    fn compacted(&mut self, n: usize, first_index: LogIndex) -> Result<(), Box<SimFailure>> {
        let node = &self.nodes[n];
        let id = node.id;
        let covered = node.durable.snapshot_index();
        if first_index > covered + 1 || first_index > node.applied + 1 {
            return Err(self.fail(
                FailureKind::Compaction,
                format!(
                    "n{id} compacts its log before {first_index} but its durable snapshot covers up to {covered} and it applied up to {}",
                    node.applied
                ),
            ));
        }
        let lo = node.durable.first;
        let upto = if first_index > lo {
            self.rng_snapshot.random_range(lo..=first_index)
        } else {
            lo
        };
        self.nodes[n].durable.purge_before(upto);
        Ok(())
    }

    /// Replicas at the same applied index hold the same state.
    fn check_digest(&mut self, n: usize) -> Result<(), Box<SimFailure>> {
        let node = &self.nodes[n];
        let (id, applied) = (node.id, node.applied);
        if applied == 0 {
            return Ok(());
        }
        let d = digest(&node.kv);
        match self.digests.get(&applied) {
            Some(&(other, od)) if od != d => Err(self.fail(
                FailureKind::StateDigest,
                format!(
                    "n{id} and n{other} applied up to {applied} but their states differ (digest {d:x} vs {od:x})"
                ),
            )),
            Some(_) => Ok(()),
            None => {
                self.digests.insert(applied, (id, d));
                Ok(())
            }
        }
    }

    // ----- network -----------------------------------------------------------------------

    fn send(&mut self, msg: Message) {
        self.report.messages += 1;
        let (from, to, term) = (msg.from, msg.to, msg.term);
        if self.blocked.contains_key(&(from, to)) {
            if self.trace.verbose() {
                let kind = MsgKind::of(&msg);
                self.note(Note::Dropped {
                    from,
                    to,
                    term,
                    kind,
                    why: DropWhy::Partition,
                });
            }
            return;
        }
        if self.mix.drop > 0.0 && self.rng_net.random_bool(self.mix.drop) {
            let kind = MsgKind::of(&msg);
            self.note(Note::Dropped {
                from,
                to,
                term,
                kind,
                why: DropWhy::Random,
            });
            return;
        }
        if self.mix.duplicate > 0.0 && self.rng_net.random_bool(self.mix.duplicate) {
            let d = self.delay();
            self.schedule(self.now + d, Event::Deliver(msg.clone()));
        }
        let d = self.delay();
        self.schedule(self.now + d, Event::Deliver(msg));
    }

    /// Random per-message delays reorder messages; a few take much longer.
    fn delay(&mut self) -> u64 {
        if self.mix.long_delay > 0.0 && self.rng_net.random_bool(self.mix.long_delay) {
            self.rng_net.random_range(50..=400)
        } else {
            self.rng_net.random_range(1..=15)
        }
    }

    fn deliver(&mut self, msg: Message) -> Result<(), Box<SimFailure>> {
        let (from, to, term) = (msg.from, msg.to, msg.term);
        let n = (to.get() - 1) as usize;
        let why = if self.blocked.contains_key(&(from, to)) {
            Some(DropWhy::Partition)
        } else if self.nodes.get(n).is_none_or(|x| x.core.is_none()) {
            Some(DropWhy::Crashed)
        } else {
            None
        };
        let kind = MsgKind::of(&msg);
        if let Some(why) = why {
            self.note(Note::Dropped {
                from,
                to,
                term,
                kind,
                why,
            });
            return Ok(());
        }
        self.note(Note::Deliver {
            from,
            to,
            term,
            kind,
        });
        if let MessageBody::RequestVoteResponse {
            pre_vote: false,
            granted: true,
        } = msg.body
        {
            self.votes_granted
                .entry((to, term))
                .or_default()
                .insert(from);
        }
        let now = self.local(n);
        if let Some(core) = self.nodes[n].core.as_mut() {
            core.handle_message(now, msg);
        }
        self.drive(n)
    }

    fn heal(&mut self, id: u64) {
        if let Some(links) = self.partitions.remove(&id) {
            for link in links {
                if let Some(count) = self.blocked.get_mut(&link) {
                    *count -= 1;
                    if *count == 0 {
                        self.blocked.remove(&link);
                    }
                }
            }
            self.text(format!("heal partition #{id}"));
        }
    }

    // ----- faults ------------------------------------------------------------------------

    fn fault_gap(&mut self) -> u64 {
        self.rng_fault
            .random_range(self.mix.gap_ms.0..=self.mix.gap_ms.1)
    }

    fn current_leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, x)| x.core.as_ref().map(|c| (i, c)))
            .filter(|(_, c)| c.role() == Role::Leader)
            .max_by_key(|(_, c)| c.term())
            .map(|(i, _)| i)
    }

    fn random_node(&mut self) -> usize {
        self.rng_client.random_range(0..self.nodes.len())
    }

    fn fault(&mut self) -> Result<(), Box<SimFailure>> {
        if self.phase != Phase::Faults {
            return Ok(());
        }
        let mut choices = Vec::new();
        if self.mix.crashes {
            choices.push(0);
        }
        if self.mix.partitions {
            choices.push(1);
        }
        if self.mix.transfers {
            choices.push(2);
        }
        if self.mix.membership {
            choices.push(3);
        }
        if !choices.is_empty() {
            let pick = choices[self.rng_fault.random_range(0..choices.len())];
            let leader = self.current_leader();
            let target_leader =
                leader.is_some() && self.rng_fault.random_bool(self.mix.leader_bias);
            match pick {
                0 => {
                    let alive: Vec<usize> = (0..self.nodes.len())
                        .filter(|&i| self.nodes[i].core.is_some())
                        .collect();
                    let victim = match leader {
                        Some(l) if target_leader => Some(l),
                        _ if alive.is_empty() => None,
                        _ => Some(alive[self.rng_fault.random_range(0..alive.len())]),
                    };
                    if let Some(v) = victim {
                        self.crash(v);
                    }
                }
                1 => self.partition(leader.filter(|_| target_leader)),
                3 => {
                    if let Some(l) = leader {
                        self.change_membership(l)?;
                    }
                }
                _ => {
                    if let Some(l) = leader {
                        let n = self.nodes.len();
                        let to = self.rng_fault.random_range(0..n);
                        if to != l {
                            let now = self.local(l);
                            let to_id = NodeId::new(to as u64 + 1);
                            let from_id = self.nodes[l].id;
                            let result = self.nodes[l]
                                .core
                                .as_mut()
                                .map(|c| c.transfer_leader(now, to_id));
                            self.text(format!(
                                "transfer leader n{from_id} -> n{to_id}: {result:?}"
                            ));
                            self.drive(l)?;
                        }
                    }
                }
            }
        }
        let gap = self.fault_gap();
        if self.now + gap < self.cfg.fault_ms {
            self.schedule(self.now + gap, Event::Fault);
        }
        Ok(())
    }

    /// Proposes a burst of one to three membership changes on leader `l` (all but the first
    /// must be refused while the first is in flight), and with probability
    /// `mix.change_leader_crash` crashes the leader shortly after.
    fn change_membership(&mut self, l: usize) -> Result<(), Box<SimFailure>> {
        let burst = if self.rng_fault.random_bool(0.3) {
            self.rng_fault.random_range(2..=3)
        } else {
            1
        };
        for _ in 0..burst {
            self.propose_change(l)?;
        }
        let term = self.nodes[l].core.as_ref().map(|c| c.term());
        if let Some(term) = term {
            if self.mix.change_leader_crash > 0.0
                && self.rng_fault.random_bool(self.mix.change_leader_crash)
            {
                let at = self.now + self.rng_fault.random_range(1..=30);
                self.schedule(at, Event::CrashLeader { node: l, term });
            }
        }
        Ok(())
    }

    /// An address for node `id` (the core only carries it).
    fn member_addr(id: NodeId) -> MemberAddr {
        let port = 7000u16.saturating_add(u16::try_from(id.get()).unwrap_or(0));
        MemberAddr {
            raft: ([10, 0, 0, 1], port).into(),
            http: ([10, 0, 0, 1], port.saturating_add(1000)).into(),
        }
    }

    /// Proposes one random change valid for the leader's membership: add a non-member as a
    /// learner (with its address); promote a learner (single-server) or swap it for a voter
    /// (`Replace`, joint); promote every learner and remove some voters at once (joint);
    /// remove a voter (single-server) or two (joint) while enough remain.
    fn propose_change(&mut self, l: usize) -> Result<(), Box<SimFailure>> {
        let Some(m) = self.nodes[l].core.as_ref().map(|c| c.membership().clone()) else {
            return Ok(());
        };
        let outsiders: Vec<NodeId> = (1..=self.nodes.len() as u64)
            .map(NodeId::new)
            .filter(|&id| !m.contains(id))
            .collect();
        let voters: Vec<NodeId> = m.voters.iter().copied().collect();
        let learners: Vec<NodeId> = m.learners.iter().copied().collect();
        let pick = |rng: &mut ChaCha8Rng, v: &[NodeId]| v[rng.random_range(0..v.len())];
        let roll = self.rng_fault.random_range(0..100);
        let change = if !learners.is_empty() && roll < 35 {
            MembershipChange::Promote(pick(&mut self.rng_fault, &learners))
        } else if !learners.is_empty() && roll < 65 {
            MembershipChange::Replace {
                add: pick(&mut self.rng_fault, &learners),
                remove: pick(&mut self.rng_fault, &voters),
            }
        } else if !learners.is_empty() && roll < 80 {
            let mut remove = BTreeSet::new();
            for _ in 0..self.rng_fault.random_range(0..=2) {
                remove.insert(pick(&mut self.rng_fault, &voters));
            }
            if remove.len() >= voters.len() {
                remove.pop_first();
            }
            MembershipChange::Change {
                promote: learners.iter().copied().collect(),
                remove,
            }
        } else if !outsiders.is_empty() && roll < 90 {
            let id = pick(&mut self.rng_fault, &outsiders);
            MembershipChange::AddLearner {
                id,
                addr: Some(Self::member_addr(id)),
            }
        } else if voters.len() > 3 && roll < 95 {
            let a = pick(&mut self.rng_fault, &voters);
            let b = pick(&mut self.rng_fault, &voters);
            MembershipChange::Change {
                promote: BTreeSet::new(),
                remove: [a, b].into(),
            }
        } else if voters.len() > 2 {
            MembershipChange::Remove(pick(&mut self.rng_fault, &voters))
        } else if !outsiders.is_empty() {
            let id = pick(&mut self.rng_fault, &outsiders);
            MembershipChange::AddLearner {
                id,
                addr: Some(Self::member_addr(id)),
            }
        } else {
            return Ok(());
        };
        let now = self.local(l);
        let id = self.nodes[l].id;
        let result = self.nodes[l]
            .core
            .as_mut()
            .map(|c| c.change_membership(now, change.clone()));
        match &result {
            Some(Err(e @ ProposeError::InvalidMembershipChange(_))) => {
                return Err(self.fail(
                    FailureKind::Contract,
                    format!("n{id} refused {change:?} for membership {m:?}: {e}"),
                ));
            }
            Some(Err(ProposeError::ChangeInProgress)) => self.report.changes_in_progress += 1,
            Some(Ok(_)) => {
                self.report.changes_accepted += 1;
                let core = self.nodes[l].core.as_ref();
                if core.is_some_and(|c| c.membership().is_joint()) {
                    self.report.joint_changes += 1;
                }
                let joiners = self.mix.joiners.min((self.cfg.nodes - 1) / 2) as u64;
                if let MembershipChange::AddLearner { id: new, .. } = &change {
                    if new.get() > self.cfg.nodes as u64 - joiners {
                        self.report.joiners_added += 1;
                    }
                }
            }
            _ => {}
        }
        self.text(format!(
            "membership change on n{id}: {change:?} -> {result:?}"
        ));
        self.drive(l)
    }

    /// Blocks a set of directed links until a later heal: a symmetric split, or one-way
    /// blocks (only outbound or only inbound links of a node, or random links).
    fn partition(&mut self, around_leader: Option<usize>) {
        let n = self.nodes.len() as u64;
        let ids: Vec<NodeId> = (1..=n).map(NodeId::new).collect();
        let one_way = self.mix.one_way && self.rng_fault.random_bool(0.5);
        let centre = NodeId::new(
            around_leader
                .map(|l| l as u64 + 1)
                .unwrap_or_else(|| self.rng_fault.random_range(1..=n)),
        );
        let mut links = Vec::new();
        let desc;
        if !one_way {
            // Symmetric: one side is the centre plus a few others, at most half the nodes.
            let mut side = vec![centre];
            let extra = self
                .rng_fault
                .random_range(0..=((n as usize - 1) / 2).saturating_sub(1));
            for _ in 0..extra {
                let x = NodeId::new(self.rng_fault.random_range(1..=n));
                if !side.contains(&x) {
                    side.push(x);
                }
            }
            for &a in &side {
                for &b in ids.iter().filter(|b| !side.contains(b)) {
                    links.push((a, b));
                    links.push((b, a));
                }
            }
            desc = format!("symmetric {side:?} | rest");
        } else {
            match self.rng_fault.random_range(0..3) {
                0 => {
                    links.extend(ids.iter().filter(|&&b| b != centre).map(|&b| (centre, b)));
                    desc = format!("one-way: n{centre} cannot send");
                }
                1 => {
                    links.extend(ids.iter().filter(|&&b| b != centre).map(|&b| (b, centre)));
                    desc = format!("one-way: n{centre} cannot receive");
                }
                _ => {
                    for _ in 0..self.rng_fault.random_range(1..=n) {
                        let a = NodeId::new(self.rng_fault.random_range(1..=n));
                        let b = NodeId::new(self.rng_fault.random_range(1..=n));
                        if a != b && !links.contains(&(a, b)) {
                            links.push((a, b));
                        }
                    }
                    desc = format!("one-way links {links:?}");
                }
            }
        }
        self.next_partition += 1;
        let id = self.next_partition;
        for &link in &links {
            *self.blocked.entry(link).or_insert(0) += 1;
        }
        self.partitions.insert(id, links);
        self.report.partitions += 1;
        let len = self
            .rng_fault
            .random_range(self.mix.partition_ms.0..=self.mix.partition_ms.1);
        self.text(format!("PARTITION #{id} {desc} for {len} ms"));
        self.schedule(self.now + len, Event::Heal { id });
    }

    /// The faults stop: partitions heal, crashed nodes restart, the network stops losing and
    /// duplicating messages and the disks are fast. A leader must now emerge and serve.
    fn start_liveness(&mut self) -> Result<(), Box<SimFailure>> {
        self.phase = Phase::Liveness;
        self.text("faults stop: liveness phase".into());
        let ids: Vec<u64> = self.partitions.keys().copied().collect();
        for id in ids {
            self.heal(id);
        }
        self.mix.drop = 0.0;
        self.mix.duplicate = 0.0;
        self.mix.long_delay = 0.0;
        self.mix.slow_disk = 0.0;
        for n in 0..self.nodes.len() {
            if self.nodes[n].core.is_none() {
                self.boot(n)?;
            }
        }
        Ok(())
    }

    // ----- clients -----------------------------------------------------------------------

    fn client_token(&self, client: usize) -> Option<u64> {
        self.clients[client].current.as_ref().map(|op| op.token)
    }

    fn client_start(&mut self, client: usize) -> Result<(), Box<SimFailure>> {
        if !self.workload_on || self.clients[client].current.is_some() {
            return Ok(());
        }
        let rng = &mut self.rng_client;
        let key = format!("k{}", rng.random_range(0..self.cfg.keys.max(1)));
        let op_no = self.ops.len() as u64;
        let value = format!("v{op_no}");
        let w = self.cfg.workload;
        let weights = [
            w.put,
            w.cas,
            w.delete,
            w.get_linearizable,
            w.get_lease,
            w.get_stale,
        ];
        let total: u32 = weights.iter().sum();
        let mut roll = rng.random_range(0..total.max(1));
        let mut pick = 0;
        for (i, &wt) in weights.iter().enumerate() {
            if roll < wt {
                pick = i;
                break;
            }
            roll -= wt;
        }
        let (input, kind) = match pick {
            1 => {
                // Expect a recent value of the key (often right, sometimes stale) or absence.
                let recent: Vec<&KvInput> = self
                    .ops
                    .iter()
                    .rev()
                    .filter(|i| key_of(i) == key && !matches!(i, KvInput::Get { .. }))
                    .take(3)
                    .collect();
                let pick = rng.random_range(0..=recent.len());
                let expected = recent.get(pick).and_then(|i| match i {
                    KvInput::Put { value, .. } => Some(value.clone()),
                    KvInput::Cas { new, .. } => new.clone(),
                    _ => None,
                });
                let new = (!rng.random_bool(0.1)).then_some(value);
                (KvInput::Cas { key, expected, new }, OpKind::Write)
            }
            2 => (KvInput::Delete { key }, OpKind::Write),
            3 => (
                KvInput::Get { key },
                OpKind::Read(ReadConsistency::Linearizable),
            ),
            4 => (KvInput::Get { key }, OpKind::Read(ReadConsistency::Lease)),
            5 => (KvInput::Get { key }, OpKind::Read(ReadConsistency::Stale)),
            _ => (KvInput::Put { key, value }, OpKind::Write),
        };
        let hist = (kind != OpKind::Read(ReadConsistency::Stale))
            .then(|| self.history.invoke(client as u64, input.clone(), self.now));
        self.ops.push(input);
        self.report.ops_invoked += 1;
        self.next_token += 1;
        let token = self.next_token;
        self.clients[client].current = Some(ClientOp {
            token,
            op_no,
            hist,
            kind,
            started: self.now,
            proposed: false,
            at: None,
        });
        self.schedule(
            self.now + self.cfg.op_timeout_ms,
            Event::ClientTimeout { client, token },
        );
        let random = self.rng_client.random_range(0..100) < self.cfg.random_target_percent;
        let target = match self.clients[client].hint {
            Some(h) if !random => h,
            _ => self.random_node(),
        };
        self.attempt(client, target)
    }

    fn retry_later(&mut self, client: usize, token: u64, node: Option<usize>, wait: (u64, u64)) {
        let node = match node {
            Some(n) if n < self.nodes.len() => n,
            _ => self.random_node(),
        };
        self.clients[client].hint = Some(node);
        let at = self.now + self.rng_client.random_range(wait.0..=wait.1);
        self.schedule(
            at,
            Event::ClientRetry {
                client,
                token,
                node,
            },
        );
    }

    fn attempt(&mut self, client: usize, n: usize) -> Result<(), Box<SimFailure>> {
        let Some(op) = self.clients[client].current.as_ref() else {
            return Ok(());
        };
        let (token, op_no, kind) = (op.token, op.op_no, op.kind);
        let now = self.local(n);
        let Some(core) = self.nodes[n].core.as_mut() else {
            // Connection refused: try another node.
            self.retry_later(client, token, None, (5, 20));
            return Ok(());
        };
        match kind {
            OpKind::Write => match core.propose(now, command_bytes(op_no)) {
                Ok(p) => {
                    self.nodes[n]
                        .waiting_writes
                        .entry(p.index)
                        .or_default()
                        .push(WaitingWrite {
                            term: p.term,
                            op_no,
                            client,
                            token,
                        });
                    if let Some(op) = self.clients[client].current.as_mut() {
                        op.proposed = true;
                        op.at = Some(n);
                    }
                    self.clients[client].hint = Some(n);
                    self.drive(n)
                }
                Err(ProposeError::NotLeader { leader }) => {
                    let hint = leader
                        .filter(|&l| l != NodeId::new(n as u64 + 1))
                        .map(|l| (l.get() - 1) as usize);
                    self.retry_later(client, token, hint, (5, 20));
                    Ok(())
                }
                Err(ProposeError::TransferInProgress) => {
                    self.retry_later(client, token, Some(n), (20, 50));
                    Ok(())
                }
                Err(e) => Err(self.fail(
                    FailureKind::Contract,
                    format!("n{} refused a command proposal: {e}", n + 1),
                )),
            },
            OpKind::Read(consistency) => {
                self.next_read += 1;
                let rid = self.next_read;
                match core.read(now, rid, consistency) {
                    Ok(()) => {
                        self.reads.insert(rid, (client, token, n));
                        if let Some(op) = self.clients[client].current.as_mut() {
                            op.at = Some(n);
                        }
                        self.drive(n)
                    }
                    Err(ReadError::NotLeader { leader }) => {
                        let hint = leader
                            .filter(|&l| l != NodeId::new(n as u64 + 1))
                            .map(|l| (l.get() - 1) as usize);
                        self.retry_later(client, token, hint, (5, 20));
                        Ok(())
                    }
                    Err(ReadError::NotReady) => {
                        self.retry_later(client, token, Some(n), (10, 30));
                        Ok(())
                    }
                    Err(ReadError::LeadershipLost) => {
                        self.retry_later(client, token, None, (5, 20));
                        Ok(())
                    }
                }
            }
        }
    }

    fn serve_ready_reads(&mut self, n: usize) {
        let applied = self.nodes[n].applied;
        let waiting = std::mem::take(&mut self.nodes[n].waiting_reads);
        let (ready, rest): (Vec<_>, Vec<_>) = waiting.into_iter().partition(|&(i, _)| i <= applied);
        self.nodes[n].waiting_reads = rest;
        for (_, rid) in ready {
            self.serve_read(n, rid);
        }
    }

    /// Serves a confirmed read from node `n`'s state machine as it is now.
    fn serve_read(&mut self, n: usize, rid: ReadId) {
        let Some((client, token, _)) = self.reads.remove(&rid) else {
            return;
        };
        if self.client_token(client) != Some(token) {
            return;
        }
        let Some(op) = self.clients[client].current.as_ref() else {
            return;
        };
        let key = key_of(&self.ops[op.op_no as usize]).to_string();
        let value = self.nodes[n].kv.get(&key).cloned();
        self.finish_ok(client, Some(KvOutput::Get(value)));
    }

    fn next_op_later(&mut self, client: usize) {
        let think = self.rng_client.random_range(10..=80);
        self.schedule(self.now + think, Event::ClientStart { client });
    }

    fn finish_ok(&mut self, client: usize, output: Option<KvOutput>) {
        let Some(op) = self.clients[client].current.take() else {
            return;
        };
        if let (Some(h), Some(out)) = (op.hist, output) {
            self.history.complete(h, out.clone(), self.now);
            if self.trace.verbose() {
                let input = &self.ops[op.op_no as usize];
                let s = format!("client {client} op {} {input:?} -> {out:?}", op.op_no);
                self.text(s);
            }
        }
        self.report.ops_ok += 1;
        self.next_op_later(client);
    }

    fn finish_failed(&mut self, client: usize) {
        let Some(op) = self.clients[client].current.take() else {
            return;
        };
        if let Some(h) = op.hist {
            self.history.fail(h);
        }
        self.report.ops_failed += 1;
        self.text(format!("client {client} op {} definitely failed", op.op_no));
        self.next_op_later(client);
    }

    /// The write may or may not take effect: it stays in the history without a return.
    fn finish_indeterminate(&mut self, client: usize) {
        let Some(op) = self.clients[client].current.take() else {
            return;
        };
        self.report.ops_indeterminate += 1;
        self.text(format!("client {client} op {} indeterminate", op.op_no));
        self.next_op_later(client);
    }

    fn client_timeout(&mut self, client: usize, token: u64) -> Result<(), Box<SimFailure>> {
        if self.client_token(client) != Some(token) {
            return Ok(());
        }
        let Some(op) = self.clients[client].current.as_ref() else {
            return Ok(());
        };
        if let Some(stable) = self.stable_at {
            if op.started >= stable {
                let input = &self.ops[op.op_no as usize];
                return Err(self.fail(
                    FailureKind::Liveness,
                    format!(
                        "client {client} op {} {input:?} invoked at {} ms, after the cluster was stable at {stable} ms, did not complete within {} ms",
                        op.op_no, op.started, self.cfg.op_timeout_ms
                    ),
                ));
            }
        }
        if op.kind == OpKind::Write && op.proposed {
            self.finish_indeterminate(client);
        } else {
            // Never proposed, or a read: it had no effect, so it leaves the history.
            self.finish_failed(client);
        }
        Ok(())
    }

    // ----- end of run --------------------------------------------------------------------

    fn final_checks(&mut self) -> Result<(), Box<SimFailure>> {
        // Convergence: every node is up, has committed and applied the same prefix, and holds
        // the same state.
        let max_commit = self.committed.len() as u64;
        // Nodes removed from the group stop receiving the log: only members must converge.
        let members = self
            .nodes
            .iter()
            .filter_map(|x| x.core.as_ref())
            .max_by_key(|c| (c.commit_index(), c.term()))
            .map(|c| c.membership().clone());
        let is_member = |id: NodeId| members.as_ref().is_none_or(|m| m.contains(id));
        for node in self.nodes.iter().filter(|x| is_member(x.id)) {
            let Some(core) = node.core.as_ref() else {
                return Err(self.fail(
                    FailureKind::Liveness,
                    format!("n{} is down at the end", node.id),
                ));
            };
            if core.commit_index() != max_commit || node.applied != max_commit {
                return Err(self.fail(
                    FailureKind::Liveness,
                    format!(
                        "n{} did not converge: commit {} applied {} while {max_commit} entries are committed",
                        node.id,
                        core.commit_index(),
                        node.applied
                    ),
                ));
            }
        }
        let converged: Vec<&Node> = self.nodes.iter().filter(|x| is_member(x.id)).collect();
        for pair in converged.windows(2) {
            if pair[0].kv != pair[1].kv {
                return Err(self.fail(
                    FailureKind::StateMachineSafety,
                    format!(
                        "n{} and n{} applied the same log but hold different states",
                        pair[0].id, pair[1].id
                    ),
                ));
            }
        }
        for c in 0..self.clients.len() {
            if let Some(op) = &self.clients[c].current {
                return Err(self.fail(
                    FailureKind::Liveness,
                    format!("client {c} op {} still pending at the end", op.op_no),
                ));
            }
        }
        for &(index, term, op_no) in &self.acked {
            let want = (
                term,
                payload_hash(&EntryPayload::Command(command_bytes(op_no))),
            );
            if self.committed.get((index - 1) as usize) != Some(&want) {
                return Err(self.fail(
                    FailureKind::LostWrite,
                    format!("acknowledged write op {op_no} at {index}/t{term} is not committed"),
                ));
            }
        }
        let ops = self.history.operations();
        self.report.ops_checked = ops.len() as u64;
        match check_kv(&ops, SearchBudget::states(LINEARIZABILITY_BUDGET)) {
            Verdict::Linearizable => Ok(()),
            Verdict::NotLinearizable(v) => Err(self.fail(
                FailureKind::Linearizability,
                format!("client history of {} operations is not linearizable: {v}", ops.len()),
            )),
            Verdict::Unknown => Err(self.fail(
                FailureKind::LinearizabilityUnknown,
                format!(
                    "linearizability search of {} operations exhausted its budget of {LINEARIZABILITY_BUDGET} states",
                    ops.len()
                ),
            )),
        }
    }
}
