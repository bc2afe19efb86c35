//! Sharded mode of the multi-group world (issue 16 point 5): the groups are the shards of a
//! ring placement, each hosted only on its replicas, and clients reach any key from any node
//! through the shard router's forwarding — the runtime's decision functions
//! (`conclave_ring::router`: [`next_step`], [`check_map`], [`ForwardFailure`] and its
//! `try_elsewhere`), carried out here over the simulated network instead of TCP.
//!
//! **Placement.** `conclave_ring::Ring::with_nodes` over the run's nodes (equal weights) with
//! [`ShardSim::replication_factor`], its bounded-load placement made a shard map
//! (`ShardMap::bootstrap`, version 1): shard `s` is group `s + 1`, bootstrapped with its
//! replicas as voters on its replicas only.
//!
//! **Clients** issue one operation at a time (then 0–20 ms of think time) to a random node:
//! put (40 %), linearizable or lease get (35 %), compare-and-set expecting the last value the
//! client saw (25 %), over a few keys (so that operations contend). A node that is down
//! refuses the connection (certainly not applied). Every invocation and answer is recorded
//! with the global simulated time; a client that has no answer after
//! [`ShardSim::client_timeout_ms`] gives up and leaves the operation indeterminate.
//!
//! **Routing**, as `conclave::node::shards` does it: the node a client reached routes the
//! request with up to `max_hops` attempts; each attempt asks [`next_step`] (this node's
//! replica's view of the leader when it hosts the shard, else its leader cache — the shard
//! map's leader hints, as in the runtime — else the replicas in placement order). `Local`:
//! proposed (or read) on this node's core; a refusal (not the leader, no leader yet) tries
//! the next candidate. `Forward(to)`: unless gossip reports `to` down, a request message
//! carrying the map version and digest and the hop count goes to `to` over the simulated
//! network (dropped, delayed, cut by partitions, lost with a crashed node; never duplicated,
//! as TCP does not), and the sender waits for the answer up to
//! [`ShardSim::forward_timeout_ms`]. The receiver checks the map ([`check_map`]) and the hop
//! count, then routes it the same way with [`RELAY_ATTEMPTS`] attempts and the sender
//! counted as tried (never sent back). An answer is the result, or a [`ForwardFailure`]:
//! refusals for which `try_elsewhere` holds (nothing was proposed) move on to the next
//! candidate; anything else ends the request; no answer in time ends it as a timeout
//! (indeterminate: the request may have been proposed). A write's result is known when the
//! serving node applies its entry (the entry's output), or `Dropped` when another term's
//! entry is applied at its index (it can never commit).
//!
//! **Checks**, on top of every per-group checker of the multi-group world: after the final
//! linearizable read of every key (through the router from random nodes, during the
//! convergence phase), the whole client history with `linearizability::check_kv` (per key);
//! `Unknown` is a failure.
//!
//! **Planted bugs** ([`RouterBugs`]) prove that these checks catch a broken router.

use super::{Event, MultiConfig, MultiWorld};
use crate::linearizability::{check_kv, History, KvInput, KvOutput, OpId, SearchBudget, Verdict};
use crate::raft::{derive_seed, FailureKind, SimFailure};
use conclave_core::raft::{
    Entry, EntryPayload, GroupId, LogIndex, Millis, NodeId, ProposeError, ReadConsistency,
    ReadError, ReadId, Term,
};
use conclave_ring::router::{
    check_map, next_step, ForwardFailure, GroupView, MapCheck, Step, RELAY_ATTEMPTS,
};
use conclave_ring::{Ring, RingConfig, ShardMap, DEFAULT_WEIGHT};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// The linearizability search budget per key.
const LINEARIZABILITY_BUDGET: u64 = 5_000_000;

/// Switches that break the simulated router on purpose, to prove the checkers catch it.
/// Off by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterBugs {
    /// A forwarded request that got no answer in time is tried on the next candidate, as if
    /// it had been refused — though it may have been proposed (the chaos harness's bug 1: a
    /// lost answer reported as "certainly not applied"). A request may then apply twice, or
    /// apply although the client was told it certainly did not.
    pub retry_after_no_answer: bool,
    /// Every read is served as a stale read by the first replica that gets it (the node the
    /// client reached when it hosts the shard, else the one it forwards to), without a read
    /// index or a lease (the runtime's planted `shard_read_on_any_replica`).
    pub read_on_any_replica: bool,
}

impl RouterBugs {
    /// The bug named `name` (the field's name), for tests that take it from the environment.
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "retry_after_no_answer" => Some(RouterBugs {
                retry_after_no_answer: true,
                ..RouterBugs::default()
            }),
            "read_on_any_replica" => Some(RouterBugs {
                read_on_any_replica: true,
                ..RouterBugs::default()
            }),
            _ => None,
        }
    }
}

/// The sharded mode's settings ([`MultiConfig::sharding`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardSim {
    /// Replicas per shard (the ring's `replication_factor`).
    pub replication_factor: u32,
    /// Concurrent clients.
    pub clients: usize,
    /// Keys the clients use.
    pub keys: usize,
    /// Attempts of the node a client reached (the runtime's `node.max_hops`).
    pub max_hops: u32,
    /// How long a node waits for a forwarded request's answer, ms.
    pub forward_timeout_ms: Millis,
    /// How long a client waits for an answer, ms.
    pub client_timeout_ms: Millis,
    /// Planted bugs (none by default).
    pub bugs: RouterBugs,
}

impl ShardSim {
    /// The standard settings: replication factor 3, `2 × nodes` clients, 8–15 keys (per
    /// seed), 10 hops, a 600 ms forward timeout and a 1.5 s client timeout.
    pub fn new(seed: u64, nodes: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, 0x5A4D));
        ShardSim {
            replication_factor: 3,
            clients: 2 * nodes,
            keys: rng.random_range(8..=15),
            max_hops: 10,
            forward_timeout_ms: 600,
            client_timeout_ms: 1_500,
            bugs: RouterBugs::default(),
        }
    }
}

/// A router message between two nodes.
#[derive(Clone, Debug)]
pub(crate) enum ForwardMsg {
    /// A request forwarded by `from` (the runtime's `ForwardRequest`).
    Request {
        id: u64,
        from: usize,
        map_version: u64,
        map_digest: u64,
        hops: u32,
        op: Op,
    },
    /// Its answer.
    Answer {
        id: u64,
        outcome: Result<KvOutput, ForwardFailure>,
    },
}

/// A client operation as the router carries it.
#[derive(Clone, Debug)]
pub(crate) struct Op {
    input: KvInput,
    /// Reads only: linearizable (ReadIndex) or lease.
    consistency: ReadConsistency,
}

impl Op {
    fn key(&self) -> &str {
        self.input.key()
    }

    fn is_read(&self) -> bool {
        matches!(self.input, KvInput::Get { .. })
    }
}

/// Who waits for a route's outcome.
#[derive(Clone, Copy, Debug)]
enum Origin {
    /// Client `client`'s operation number `seq`, recorded as `op` (`client` at or beyond the
    /// client count: a final read).
    Client { client: usize, seq: u64, op: OpId },
    /// A request node `from` forwarded with id `id`.
    Relay { from: usize, id: u64 },
}

/// What a route waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    Nothing,
    /// Its proposal or read on this node's core.
    Local,
    /// The answer of node `to` to forward `id`.
    Forward {
        to: NodeId,
        id: u64,
    },
}

/// One request being routed by one node (the runtime's `route_request`).
#[derive(Clone, Debug)]
struct Route {
    node: usize,
    op: Op,
    origin: Origin,
    hops: u32,
    tried: Vec<NodeId>,
    attempts_left: usize,
    waiting: Waiting,
}

/// One node's router: volatile, lost with the node.
#[derive(Clone, Debug)]
struct NodeRouter {
    /// The node's shard map; its leader hints are the leader cache.
    map: ShardMap,
    /// Each hosted group's key-value state, rebuilt by the applies after a restart.
    kv: BTreeMap<GroupId, BTreeMap<String, String>>,
    /// Proposals made for routes: (group, index) → (term, route).
    proposals: BTreeMap<(GroupId, LogIndex), (Term, u64)>,
    /// Reads asked of the cores for routes: read id → (group, route).
    reads: BTreeMap<ReadId, (GroupId, u64)>,
    /// Reads confirmed at an index not yet applied here: (group, index, route).
    ready: Vec<(GroupId, LogIndex, u64)>,
    /// Forwards sent and not yet answered: id → route.
    forwards: BTreeMap<u64, u64>,
}

#[derive(Clone, Debug, Default)]
struct Client {
    seq: u64,
    busy: bool,
    /// The last value this client read or wrote per key (what its CAS expects).
    last_seen: BTreeMap<String, Option<String>>,
}

/// Sharded mode's state.
pub(crate) struct Sharded {
    cfg: ShardSim,
    map: ShardMap,
    nodes: Vec<NodeRouter>,
    routes: BTreeMap<u64, Route>,
    next_route: u64,
    next_forward: u64,
    clients: Vec<Client>,
    keys: Vec<String>,
    history: History<KvInput, KvOutput>,
    next_value: u64,
    rng: ChaCha8Rng,
}

impl Sharded {
    /// The placement (group → replicas, preferred leader first) and the mode's state.
    pub(super) fn new(
        cfg: &MultiConfig,
        s: &ShardSim,
    ) -> (BTreeMap<GroupId, Vec<NodeId>>, Sharded) {
        let ring = Ring::with_nodes(
            RingConfig {
                shards: cfg.groups,
                replication_factor: s.replication_factor,
                ..RingConfig::default()
            },
            (1..=cfg.nodes as u64).map(|n| (NodeId::new(n), DEFAULT_WEIGHT)),
        );
        // The settings are the test's own: an invalid one is a bug in the test.
        let map = ring
            .ok()
            .and_then(|r| ShardMap::bootstrap(r.placement()).ok())
            .expect("the sharded run's ring settings are valid");
        let replicas = map
            .entries()
            .iter()
            .map(|e| (e.group, e.replicas.clone()))
            .collect();
        let router = NodeRouter {
            map: map.clone(),
            kv: BTreeMap::new(),
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            ready: Vec::new(),
            forwards: BTreeMap::new(),
        };
        let state = Sharded {
            cfg: s.clone(),
            nodes: vec![router; cfg.nodes],
            map,
            routes: BTreeMap::new(),
            next_route: 1,
            next_forward: 1,
            clients: vec![Client::default(); s.clients],
            keys: (0..s.keys).map(|k| format!("k{k}")).collect(),
            history: History::new(),
            next_value: 1,
            rng: ChaCha8Rng::seed_from_u64(derive_seed(cfg.seed, 0x5A4E)),
        };
        (replicas, state)
    }
}

/// A write as an entry's command (`kv\0` tags the router's commands among the workload's
/// 8-byte values); `None` for a read.
fn encode(input: &KvInput) -> Option<Vec<u8>> {
    let text = match input {
        KvInput::Put { key, value } => format!("kv\0put\0{key}\0{value}"),
        KvInput::Cas { key, expected, new } => format!(
            "kv\0cas\0{key}\0{}\0{}",
            expected.as_deref().unwrap_or("\u{1}"),
            new.as_deref().unwrap_or("\u{1}")
        ),
        KvInput::Delete { key } => format!("kv\0del\0{key}"),
        KvInput::Get { .. } => return None,
    };
    Some(text.into_bytes())
}

fn decode(payload: &EntryPayload) -> Option<KvInput> {
    let EntryPayload::Command(bytes) = payload else {
        return None;
    };
    let text = std::str::from_utf8(bytes).ok()?;
    let mut parts = text.split('\0');
    if parts.next()? != "kv" {
        return None;
    }
    let absent = |v: &str| (v != "\u{1}").then(|| v.to_string());
    match (parts.next()?, parts.next()?, parts.next(), parts.next()) {
        ("put", key, Some(value), None) => Some(KvInput::Put {
            key: key.into(),
            value: value.into(),
        }),
        ("cas", key, Some(expected), Some(new)) => Some(KvInput::Cas {
            key: key.into(),
            expected: absent(expected),
            new: absent(new),
        }),
        ("del", key, None, None) => Some(KvInput::Delete { key: key.into() }),
        _ => None,
    }
}

/// Whether a client may count a failed operation as certainly not applied.
fn certainly_not_applied(f: &ForwardFailure) -> bool {
    !matches!(f, ForwardFailure::Timeout | ForwardFailure::Internal)
}

impl MultiWorld {
    /// Node `n` lost its volatile state (crash, boot): its routes end unanswered.
    pub(super) fn router_lost(&mut self, n: usize) {
        let Some(s) = self.sharded.as_deref_mut() else {
            return;
        };
        let fresh = NodeRouter {
            map: s.map.clone(),
            kv: BTreeMap::new(),
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            ready: Vec::new(),
            forwards: BTreeMap::new(),
        };
        s.nodes[n] = fresh;
        // A client whose operation was on this node hears nothing: its timeout ends it.
        s.routes.retain(|_, r| r.node != n);
    }

    pub(super) fn start_clients(&mut self) {
        let Some(s) = self.sharded.as_deref_mut() else {
            return;
        };
        let starts: Vec<(usize, u64)> = (0..s.clients.len())
            .map(|c| (c, s.rng.random_range(1..=20)))
            .collect();
        for (client, at) in starts {
            self.schedule(self.now + at, Event::Client { client });
        }
    }

    /// Client `client` issues its next operation (during the fault phase).
    pub(super) fn client_op(&mut self, client: usize) -> Result<(), Box<SimFailure>> {
        if !self.workload_on {
            return Ok(());
        }
        let nodes = self.nodes.len();
        let now = self.now;
        let Some(s) = self.sharded.as_deref_mut() else {
            return Ok(());
        };
        let key = s.keys[s.rng.random_range(0..s.keys.len())].clone();
        let roll = s.rng.random_range(0..100);
        let c = &mut s.clients[client];
        c.seq += 1;
        let seq = c.seq;
        let expected = c.last_seen.get(&key).cloned().flatten();
        let value = format!("c{client}.{}", s.next_value);
        let input = if roll < 40 {
            s.next_value += 1;
            KvInput::Put { key, value }
        } else if roll < 75 {
            KvInput::Get { key }
        } else {
            s.next_value += 1;
            KvInput::Cas {
                key,
                expected,
                new: Some(value),
            }
        };
        let consistency = if s.rng.random_bool(0.5) {
            ReadConsistency::Lease
        } else {
            ReadConsistency::Linearizable
        };
        let n = s.rng.random_range(0..nodes);
        let recorded = s.history.invoke(client as u64, input.clone(), now);
        s.clients[client].busy = true;
        let timeout = s.cfg.client_timeout_ms;
        self.schedule(now + timeout, Event::ClientTimeout { client, seq });
        if self.nodes[n].host.is_none() {
            // Connection refused: certainly not applied.
            self.client_done(client, seq, recorded, Err(ForwardFailure::Unavailable));
            return Ok(());
        }
        let origin = Origin::Client {
            client,
            seq,
            op: recorded,
        };
        let op = Op { input, consistency };
        self.route_start(n, op, origin, 0, None)
    }

    /// Client `client` stops waiting for operation `seq`: it stays in the history without an
    /// answer (a write may still apply at any later time; such a read constrains nothing).
    pub(super) fn client_timeout(&mut self, client: usize, seq: u64) {
        let Some(s) = self.sharded.as_deref_mut() else {
            return;
        };
        let Some(c) = s.clients.get(client) else {
            return;
        };
        if c.seq != seq || !c.busy {
            return;
        }
        s.clients[client].busy = false;
        self.report.client_unknown += 1;
        self.next_client_op(client);
    }

    fn next_client_op(&mut self, client: usize) {
        let Some(s) = self.sharded.as_deref_mut() else {
            return;
        };
        let think = s.rng.random_range(0..=20);
        self.schedule(self.now + think, Event::Client { client });
    }

    /// An operation of client `client` ended with `outcome` (at the node it reached).
    fn client_done(
        &mut self,
        client: usize,
        seq: u64,
        op: OpId,
        outcome: Result<KvOutput, ForwardFailure>,
    ) {
        let now = self.now;
        let Some(s) = self.sharded.as_deref_mut() else {
            return;
        };
        let final_read = client >= s.clients.len();
        if !final_read {
            let c = &s.clients[client];
            if c.seq != seq || !c.busy {
                // It gave up already: the operation stays as it was recorded.
                return;
            }
        }
        match outcome {
            Ok(out) => {
                s.history.complete(op, out, now);
                self.report.client_ok += 1;
            }
            Err(f) if certainly_not_applied(&f) => {
                s.history.fail(op);
                self.report.client_failed += 1;
            }
            Err(_) => self.report.client_unknown += 1,
        }
        if !final_read {
            s.clients[client].busy = false;
            self.next_client_op(client);
        }
    }

    /// The final linearizable read of every key, each from a random live node.
    pub(super) fn final_reads(&mut self) -> Result<(), Box<SimFailure>> {
        let now = self.now;
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|n| self.nodes[*n].host.is_some())
            .collect();
        let Some(s) = self.sharded.as_deref_mut() else {
            return Ok(());
        };
        if live.is_empty() {
            return Ok(());
        }
        let mut starts = Vec::new();
        let base = s.clients.len();
        for (i, key) in s.keys.clone().into_iter().enumerate() {
            let input = KvInput::Get { key };
            let op = s.history.invoke((base + i) as u64, input.clone(), now);
            let n = live[s.rng.random_range(0..live.len())];
            starts.push((n, i, op, input));
        }
        for (n, i, op, input) in starts {
            let origin = Origin::Client {
                client: base + i,
                seq: 0,
                op,
            };
            let op = Op {
                input,
                consistency: ReadConsistency::Linearizable,
            };
            self.route_start(n, op, origin, 0, None)?;
        }
        Ok(())
    }

    fn route_start(
        &mut self,
        n: usize,
        op: Op,
        origin: Origin,
        hops: u32,
        from: Option<NodeId>,
    ) -> Result<(), Box<SimFailure>> {
        let Some(s) = self.sharded.as_deref_mut() else {
            return Ok(());
        };
        let attempts = if hops == 0 {
            s.cfg.max_hops as usize
        } else {
            RELAY_ATTEMPTS
        };
        let id = s.next_route;
        s.next_route += 1;
        s.routes.insert(
            id,
            Route {
                node: n,
                op,
                origin,
                hops,
                tried: from.into_iter().collect(),
                attempts_left: attempts,
                waiting: Waiting::Nothing,
            },
        );
        self.route_continue(id)?;
        self.drive(n)
    }

    /// Tries the route's next candidates until it waits for something or ends (the loop of
    /// the runtime's `route_request`).
    fn route_continue(&mut self, rid: u64) -> Result<(), Box<SimFailure>> {
        loop {
            let Some(s) = self.sharded.as_deref_mut() else {
                return Ok(());
            };
            let Some(r) = s.routes.get_mut(&rid) else {
                return Ok(());
            };
            r.waiting = Waiting::Nothing;
            if r.attempts_left == 0 {
                self.route_end(rid, Err(ForwardFailure::NoLeader));
                return Ok(());
            }
            r.attempts_left -= 1;
            let n = r.node;
            let bugs = s.cfg.bugs;
            let stale = bugs.read_on_any_replica && r.op.is_read();
            let me = self.nodes[n].id;
            let router = &s.nodes[n];
            let entry = router.map.route(r.op.key().as_bytes());
            let group = entry.group;
            let local = self.nodes[n].host.as_ref().and_then(|h| h.raft(group));
            let view = GroupView {
                me,
                replicas: &entry.replicas,
                hosted: local.is_some(),
                local_leader: local.and_then(|l| l.leader()),
                cached_leader: entry.leader_hint,
                needs_leader: !stale,
            };
            let step = next_step(&view, &r.tried);
            match step {
                Step::Local => match self.serve_here(n, rid, group, stale) {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(f) => return Err(f),
                },
                Step::Forward(to) => {
                    let (hops, max_hops) = (r.hops, s.cfg.max_hops);
                    let next = hops.saturating_add(1);
                    if next > max_hops {
                        self.route_end(rid, Err(ForwardFailure::HopLimit));
                        return Ok(());
                    }
                    let t = (to.get() - 1) as usize;
                    if self.nodes[n].view_down.contains(&to) {
                        // The runtime's "not sent": gossip holds it down.
                        if let Some(r) = self
                            .sharded
                            .as_deref_mut()
                            .and_then(|s| s.routes.get_mut(&rid))
                        {
                            r.tried.push(to);
                        }
                        continue;
                    }
                    let Some(s) = self.sharded.as_deref_mut() else {
                        return Ok(());
                    };
                    let id = s.next_forward;
                    s.next_forward += 1;
                    s.nodes[n].forwards.insert(id, rid);
                    let timeout = s.cfg.forward_timeout_ms;
                    let (map_version, map_digest) = (s.map.version(), s.map.digest());
                    let Some(r) = s.routes.get_mut(&rid) else {
                        return Ok(());
                    };
                    r.waiting = Waiting::Forward { to, id };
                    let msg = ForwardMsg::Request {
                        id,
                        from: n,
                        map_version,
                        map_digest,
                        hops: next,
                        op: r.op.clone(),
                    };
                    self.report.forwards += 1;
                    self.send_forward(n, t, msg);
                    self.schedule(self.now + timeout, Event::ForwardTimeout { node: n, id });
                    return Ok(());
                }
                Step::Exhausted => {
                    self.route_end(rid, Err(ForwardFailure::NoLeader));
                    return Ok(());
                }
            }
        }
    }

    /// Serves route `rid` on node `n`'s replica of `group`: `Ok(true)` when it now waits for
    /// the core (or ended), `Ok(false)` when the core refused it before proposing (the route
    /// moves on, this node counted as tried).
    fn serve_here(
        &mut self,
        n: usize,
        rid: u64,
        group: GroupId,
        stale: bool,
    ) -> Result<bool, Box<SimFailure>> {
        let now = self.local(n);
        let me = self.nodes[n].id;
        let Some(s) = self.sharded.as_deref_mut() else {
            return Ok(true);
        };
        let Some(r) = s.routes.get(&rid) else {
            return Ok(true);
        };
        let input = r.op.input.clone();
        let consistency = r.op.consistency;
        let refused = match &input {
            KvInput::Get { key } if stale => {
                let v = s.nodes[n]
                    .kv
                    .get(&group)
                    .and_then(|kv| kv.get(key))
                    .cloned();
                self.route_end(rid, Ok(KvOutput::Get(v)));
                return Ok(true);
            }
            KvInput::Get { .. } => {
                let id = self.next_read;
                self.next_read += 1;
                let res = self.nodes[n]
                    .host
                    .as_mut()
                    .and_then(|h| h.with_group(now, group, |r| r.read(now, id, consistency)));
                match res {
                    Some(Ok(())) => {
                        if let Some(s) = self.sharded.as_deref_mut() {
                            s.nodes[n].reads.insert(id, (group, rid));
                        }
                        None
                    }
                    Some(Err(ReadError::NotLeader { leader })) => Some(leader),
                    Some(Err(_)) | None => Some(None),
                }
            }
            KvInput::Put { .. } | KvInput::Cas { .. } | KvInput::Delete { .. } => {
                let bytes = encode(&input).unwrap_or_default();
                let res = self.nodes[n]
                    .host
                    .as_mut()
                    .and_then(|h| h.with_group(now, group, |r| r.propose(now, bytes)));
                match res {
                    Some(Ok(p)) => {
                        self.report.writes += 1;
                        self.pending.insert((group, p.index), p.term);
                        if let Some(s) = self.sharded.as_deref_mut() {
                            s.nodes[n].proposals.insert((group, p.index), (p.term, rid));
                        }
                        None
                    }
                    Some(Err(ProposeError::NotLeader { leader })) => Some(leader),
                    Some(Err(_)) | None => Some(None),
                }
            }
        };
        let Some(s) = self.sharded.as_deref_mut() else {
            return Ok(true);
        };
        match refused {
            None => {
                if let Some(r) = s.routes.get_mut(&rid) {
                    r.waiting = Waiting::Local;
                }
                Ok(true)
            }
            Some(leader) => {
                if let Some(r) = s.routes.get_mut(&rid) {
                    r.tried.push(me);
                }
                if let Some(l) = leader {
                    hint(&mut s.nodes[n].map, group, l);
                }
                Ok(false)
            }
        }
    }

    /// Route `rid` ends with `outcome`: the client is told, or the forwarding node answered.
    fn route_end(&mut self, rid: u64, outcome: Result<KvOutput, ForwardFailure>) {
        let Some(s) = self.sharded.as_deref_mut() else {
            return;
        };
        let Some(r) = s.routes.remove(&rid) else {
            return;
        };
        match r.origin {
            Origin::Client { client, seq, op } => {
                if r.hops == 0 && matches!(r.waiting, Waiting::Local) && outcome.is_ok() {
                    self.report.served_locally += 1;
                }
                if let (Ok(out), Some(s)) = (&outcome, self.sharded.as_deref_mut()) {
                    // A CAS of this client expects the value it last saw.
                    let seen = match (out, &r.op.input) {
                        (KvOutput::Get(v), _) => Some(v.clone()),
                        (KvOutput::Put, KvInput::Put { value, .. }) => Some(Some(value.clone())),
                        (KvOutput::Cas { ok: true }, KvInput::Cas { new, .. }) => Some(new.clone()),
                        _ => None,
                    };
                    if let (Some(seen), Some(c)) = (seen, s.clients.get_mut(client)) {
                        c.last_seen.insert(r.op.key().to_string(), seen);
                    }
                }
                self.client_done(client, seq, op, outcome);
            }
            Origin::Relay { from, id } => {
                let msg = ForwardMsg::Answer { id, outcome };
                self.send_forward(r.node, from, msg);
            }
        }
    }

    /// Sends a router message over the simulated network: lost to a partition, a crashed
    /// receiver or a drop; delayed like a frame; never duplicated (a TCP connection).
    fn send_forward(&mut self, from: usize, to: usize, msg: ForwardMsg) {
        let (a, b) = (self.nodes[from].id, self.nodes[to].id);
        if self.blocked.contains_key(&(a, b)) {
            return;
        }
        if self.faults_on
            && self.cfg.faults.drop > 0.0
            && self.rng_net.random_bool(self.cfg.faults.drop)
        {
            return;
        }
        let d = self.delay();
        self.schedule(self.now + d, Event::Forward { to, msg });
    }

    pub(super) fn forward_arrives(
        &mut self,
        to: usize,
        msg: ForwardMsg,
    ) -> Result<(), Box<SimFailure>> {
        if self.nodes[to].host.is_none() {
            return Ok(());
        }
        match msg {
            ForwardMsg::Request {
                id,
                from,
                map_version,
                map_digest,
                hops,
                op,
            } => {
                if self
                    .blocked
                    .contains_key(&(self.nodes[from].id, self.nodes[to].id))
                {
                    return Ok(());
                }
                let Some(s) = self.sharded.as_deref_mut() else {
                    return Ok(());
                };
                let refusal = match check_map(&s.nodes[to].map, map_version, map_digest) {
                    MapCheck::Same if hops == 0 || hops > s.cfg.max_hops => {
                        Some(ForwardFailure::HopLimit)
                    }
                    MapCheck::Same => None,
                    MapCheck::SenderStale => Some(ForwardFailure::StaleMap {
                        map: Box::new(s.nodes[to].map.clone()),
                    }),
                    MapCheck::ReceiverStale => Some(ForwardFailure::MapBehind {
                        version: s.nodes[to].map.version(),
                    }),
                    MapCheck::Mismatch => Some(ForwardFailure::MapMismatch {
                        version: map_version,
                    }),
                };
                if let Some(f) = refusal {
                    self.send_forward(
                        to,
                        from,
                        ForwardMsg::Answer {
                            id,
                            outcome: Err(f),
                        },
                    );
                    return Ok(());
                }
                let sender = self.nodes[from].id;
                self.route_start(to, op, Origin::Relay { from, id }, hops, Some(sender))
            }
            ForwardMsg::Answer { id, outcome } => {
                let Some(s) = self.sharded.as_deref_mut() else {
                    return Ok(());
                };
                let Some(rid) = s.nodes[to].forwards.remove(&id) else {
                    return Ok(());
                };
                let Some(r) = s.routes.get_mut(&rid) else {
                    return Ok(());
                };
                let Waiting::Forward { to: peer, .. } = r.waiting else {
                    return Ok(());
                };
                let group = s.nodes[to].map.route(r.op.key().as_bytes()).group;
                match outcome {
                    Ok(out) => {
                        hint(&mut s.nodes[to].map, group, peer);
                        self.route_end(rid, Ok(out));
                    }
                    Err(ForwardFailure::NotLeader { leader }) => {
                        r.tried.push(peer);
                        if let Some(l) = leader {
                            hint(&mut s.nodes[to].map, group, l);
                        }
                        self.report.forwards_refused += 1;
                        self.route_continue(rid)?;
                    }
                    // The map never changes in these runs: a stale-map answer cannot come; if
                    // it did, the peer is tried no more (the runtime adopts or does the same).
                    Err(f) if f.try_elsewhere() || matches!(f, ForwardFailure::StaleMap { .. }) => {
                        r.tried.push(peer);
                        self.report.forwards_refused += 1;
                        self.route_continue(rid)?;
                    }
                    Err(f) => self.route_end(rid, Err(f)),
                }
                self.drive(to)
            }
        }
    }

    /// Node `node`'s forward `id` got no answer in time.
    pub(super) fn forward_timeout(&mut self, node: usize, id: u64) -> Result<(), Box<SimFailure>> {
        let Some(s) = self.sharded.as_deref_mut() else {
            return Ok(());
        };
        let Some(rid) = s.nodes[node].forwards.remove(&id) else {
            return Ok(());
        };
        self.report.forwards_timed_out += 1;
        let Some(s) = self.sharded.as_deref_mut() else {
            return Ok(());
        };
        let retry = s.cfg.bugs.retry_after_no_answer;
        let Some(r) = s.routes.get_mut(&rid) else {
            return Ok(());
        };
        let Waiting::Forward { to, .. } = r.waiting else {
            return Ok(());
        };
        if retry {
            // PLANTED BUG: the request may have been proposed there.
            r.tried.push(to);
            self.route_continue(rid)?;
            return self.drive(node);
        }
        self.route_end(rid, Err(ForwardFailure::Timeout));
        Ok(())
    }

    /// Node `n` applied entry `e` of group `g`: the key-value machine, and the routes waiting
    /// for it.
    pub(super) fn router_applied(&mut self, n: usize, g: GroupId, e: &Entry) {
        let Some(s) = self.sharded.as_deref_mut() else {
            return;
        };
        let output = decode(&e.payload).map(|input| {
            let kv = s.nodes[n].kv.entry(g).or_default();
            let key = input.key().to_string();
            let current = kv.get(&key).cloned();
            let (next, out) = match input {
                KvInput::Put { value, .. } => (Some(value), KvOutput::Put),
                KvInput::Cas { expected, new, .. } if current == expected => {
                    (new, KvOutput::Cas { ok: true })
                }
                KvInput::Cas { .. } => (current, KvOutput::Cas { ok: false }),
                KvInput::Delete { .. } => (
                    None,
                    KvOutput::Delete {
                        existed: current.is_some(),
                    },
                ),
                // `decode` yields writes only.
                KvInput::Get { .. } => (current.clone(), KvOutput::Get(current)),
            };
            match next {
                Some(v) => kv.insert(key, v),
                None => kv.remove(&key),
            };
            out
        });
        let mut done: Vec<(u64, Result<KvOutput, ForwardFailure>)> = Vec::new();
        if let Some((term, rid)) = s.nodes[n].proposals.remove(&(g, e.index)) {
            match output {
                Some(out) if term == e.term => done.push((rid, Ok(out))),
                // Another term's entry at its index: the proposal can never commit.
                _ => done.push((rid, Err(ForwardFailure::Dropped))),
            }
        }
        let ready = std::mem::take(&mut s.nodes[n].ready);
        for (rg, index, rid) in ready {
            if rg == g && index <= e.index {
                done.push((rid, Ok(read_value(s, n, rid, g))));
            } else {
                s.nodes[n].ready.push((rg, index, rid));
            }
        }
        for (rid, outcome) in done {
            // Ending a route only schedules (an answer, a client's next operation): nothing
            // re-enters the host being drained.
            self.route_end(rid, outcome);
        }
    }

    /// Node `n`'s core confirmed read `id` of group `g` at `index`.
    pub(super) fn router_read_ready(&mut self, n: usize, g: GroupId, id: ReadId, index: LogIndex) {
        let applied = self.nodes[n].shadow.get(&g).map_or(0, |s| s.applied);
        let Some(s) = self.sharded.as_deref_mut() else {
            return;
        };
        let Some((rg, rid)) = s.nodes[n].reads.remove(&id) else {
            return;
        };
        if applied >= index {
            let out = read_value(s, n, rid, rg);
            self.route_end(rid, Ok(out));
        } else {
            s.nodes[n].ready.push((rg, index, rid));
        }
    }

    /// Node `n`'s core refused read `id` after accepting it (leadership lost).
    pub(super) fn router_read_failed(&mut self, n: usize, id: ReadId) {
        let Some(s) = self.sharded.as_deref_mut() else {
            return;
        };
        if let Some((_, rid)) = s.nodes[n].reads.remove(&id) {
            self.route_end(rid, Err(ForwardFailure::NoLeader));
        }
    }

    /// The client history, per key, with `check_kv`.
    pub(super) fn check_client_history(&mut self) -> Result<(), Box<SimFailure>> {
        let Some(s) = self.sharded.as_deref() else {
            return Ok(());
        };
        let ops = s.history.operations();
        let keys: std::collections::BTreeSet<&str> = ops.iter().map(|o| o.input.key()).collect();
        self.report.ops_checked = ops.len() as u64;
        self.report.keys_checked = keys.len() as u64;
        match check_kv(&ops, SearchBudget::states(LINEARIZABILITY_BUDGET)) {
            Verdict::Linearizable => Ok(()),
            Verdict::NotLinearizable(v) => Err(self.fail(
                FailureKind::Linearizability,
                format!(
                    "client history of {} operations over {} keys is not linearizable: {v}",
                    ops.len(),
                    keys.len()
                ),
            )),
            Verdict::Unknown => Err(self.fail(
                FailureKind::LinearizabilityUnknown,
                format!(
                    "linearizability search of {} operations exhausted its budget of \
                     {LINEARIZABILITY_BUDGET} states per key",
                    ops.len()
                ),
            )),
        }
    }
}

/// The value route `rid`'s key has in node `n`'s replica of `g`.
fn read_value(s: &Sharded, n: usize, rid: u64, g: GroupId) -> KvOutput {
    let key = s.routes.get(&rid).map(|r| r.op.key().to_string());
    KvOutput::Get(key.and_then(|k| s.nodes[n].kv.get(&g)?.get(&k).cloned()))
}

/// Records `leader` as the leader hint of `group`'s shard in a node's map (its leader cache).
fn hint(map: &mut ShardMap, group: GroupId, leader: NodeId) {
    if let Some(shard) = map.entry_of_group(group).map(|e| e.shard) {
        map.set_leader_hint(shard, leader);
    }
}
