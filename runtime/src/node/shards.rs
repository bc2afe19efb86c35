//! Shards on a node (`[ring] sharded`, docs/sharding.md): the shard map this node holds, the
//! shard groups it hosts, and the router that serves any key from any node.
//!
//! **Where the map lives.** At a cluster's first start every initial member computes the same
//! bootstrap map (version 1) from the same `[ring]` settings and initial members: the ring's
//! bounded-load placement, shard `s` on group `s + 1` (`conclave_ring::ShardMap`). Each node
//! stores its copy durably in `data_dir/shard-map` before hosting anything. The map the
//! cluster agrees on is committed through group 0 and every node adopts the committed version
//! ([`meta`]: the record in group 0's machine, changes with an expected version, restarts).
//! Nodes check that they agree on every forwarded request: it carries the sender's map
//! version and digest, and a node with the same version and another digest refuses it
//! (`shard_map_conflict`: two nodes were started with different `[ring]` settings). Group 0
//! keeps the cluster's membership too, and serves no keys on a sharded node.
//!
//! **Hosting.** A node hosts group 0 and the groups of the shards the map places on it, each
//! bootstrapped with its replicas as voters (`GroupRegistry::start_groups`); they are not
//! written to `data_dir/group-list` (the map is their durable record).
//!
//! **Routing.** Key → shard (the ring's stable hash) → group → leader, decided by
//! [`super::router::next_step`]: served here when this node hosts the group and leads it (any
//! replica for a stale read), else forwarded as a [`WireMessage::Forward`] over the
//! node-to-node connection to the believed leader, trying other replicas when told to, at most
//! `node.max_hops` hops. The map's leader hints are the leader cache: updated from answers and
//! from this node's own replicas. A forwarded request names its map version: an older one is
//! answered with the newer map (the sender adopts it if [`super::router::may_adopt`] and
//! retries), a newer one with `MapBehind` (the sender tries another replica). Forwarded
//! requests are heard from members only, at most [`MAX_SERVING`] at once (more: `Overloaded`).

mod meta;
pub(super) use meta::group0_voters_and_learners;
pub use meta::MAX_METADATA_VOTERS;

use super::router::{self, ForwardFailure, GroupView, MapCheck, Step, RELAY_ATTEMPTS};
use super::wire::{ForwardOp, ForwardReply, ForwardRequest, WireMessage};
use super::{GroupId, NodeHandle, NodeId, Read, RequestError, WriteResult};
use crate::api::{InternalError, KeyRoute, ShardStatus, ShardsStatus};
use crate::config::ReadLevel;
use crate::state_machine::{RouteCodecError, ShardedMachine, StateMachine};
use crate::storage::shard_map_file::{self, ShardMapFileError};
use conclave_core::ids::ShardId;
use conclave_core::raft::Membership;
use conclave_ring::{ShardEntry, ShardMap, ShardMapError};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{oneshot, Semaphore};

/// Most forwarded requests this node serves at once; more are answered `Overloaded`.
pub const MAX_SERVING: usize = 4096;
/// How long a forwarding node waits for the answer: the serving node's own request timeout
/// and a margin for the two hops.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(12);

/// Why a node's shards could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ShardSetupError {
    /// The stored map could not be read or the bootstrap map stored.
    #[error(transparent)]
    File(#[from] ShardMapFileError),
    /// The ring's placement does not make a valid map.
    #[error("the bootstrap shard map is invalid: {0}")]
    Map(#[from] ShardMapError),
    /// The ring could not be built over the initial members.
    #[error("the ring cannot be built: {0}")]
    Ring(#[from] conclave_ring::RingError),
    /// The node's state machine was given without [`super::NodeBuilder::sharding`].
    #[error("[ring] sharded = true needs a state machine that routes by key (NodeBuilder::sharding with a ShardedMachine)")]
    NotShardable,
    /// The node's state machine opens one machine only.
    #[error("[ring] sharded = true needs a state machine per group (state_machine or state_machine_for_groups)")]
    OneMachineOnly,
    /// The stored map names a replica whose address this node does not know.
    #[error(
        "shard {shard}: replica {node} is not an initial member (data_dir/shard-map names it)"
    )]
    UnknownReplica {
        /// The shard.
        shard: ShardId,
        /// The replica.
        node: NodeId,
    },
    /// A shard's group is also listed in `data_dir/group-list` (created at runtime).
    #[error("group {group} is both a shard's group and a group created at runtime (data_dir/group-list); remove it first")]
    GroupListed {
        /// The group.
        group: GroupId,
    },
}

/// The node's shard map: the stored one, else the bootstrap map of `[ring]` over the initial
/// `members`, stored before it is used. A stored map that differs from the one the
/// configuration gives is kept (it is what the cluster agreed on) and logged.
pub(super) fn load_or_bootstrap(
    data_dir: &Path,
    ring: &conclave_ring::Ring,
) -> Result<ShardMap, ShardSetupError> {
    let derived = ShardMap::bootstrap(ring.placement())?;
    match shard_map_file::load(data_dir)? {
        Some(stored) => {
            if !stored.same_content(&derived) {
                tracing::warn!(
                    version = stored.version(),
                    shards = stored.shard_count(),
                    "data_dir/shard-map differs from the map [ring] gives over the initial members; the stored map is kept"
                );
            }
            Ok(stored)
        }
        None => {
            shard_map_file::store(data_dir, &derived)?;
            Ok(derived)
        }
    }
}

/// The bootstrap memberships of `me`'s shard groups: each shard's replicas as voters, with the
/// addresses of `addrs`.
pub(super) fn my_groups(
    map: &ShardMap,
    me: NodeId,
    addrs: &std::collections::BTreeMap<NodeId, conclave_core::raft::MemberAddr>,
) -> Result<Vec<(GroupId, Membership)>, ShardSetupError> {
    map.shards_of(me)
        .map(|e| {
            let mut m = Membership::with_voters(e.replicas.iter().copied());
            for &r in &e.replicas {
                let a = addrs.get(&r).ok_or(ShardSetupError::UnknownReplica {
                    shard: e.shard,
                    node: r,
                })?;
                m.addrs.insert(r, *a);
            }
            Ok((e.group, m))
        })
        .collect()
}

/// The machine-specific half of routing, as an object (the node is generic over its machine;
/// only a [`ShardedMachine`] can be sharded).
pub(super) trait RouteCodec<M: StateMachine>: Send + Sync {
    fn command_key<'a>(&self, command: &'a M::Command) -> &'a [u8];
    fn query_key<'a>(&self, query: &'a M::Query) -> &'a [u8];
    fn encode_query(&self, query: &M::Query) -> Result<Vec<u8>, RouteCodecError>;
    fn decode_query(&self, bytes: &[u8]) -> Result<M::Query, RouteCodecError>;
    fn encode_output(&self, output: &M::QueryOutput) -> Result<Vec<u8>, RouteCodecError>;
    fn decode_output(&self, bytes: &[u8]) -> Result<M::QueryOutput, RouteCodecError>;
    // Group 0's metadata record (the committed shard map, `meta`).
    fn metadata_command(&self, expected: Option<Vec<u8>>, new: Vec<u8>) -> M::Command;
    fn metadata_set(&self, output: &M::Output) -> bool;
    fn metadata_query(&self) -> M::Query;
    fn metadata_of(
        &self,
        output: M::QueryOutput,
    ) -> Result<Option<Vec<u8>>, crate::state_machine::StateMachineError>;
}

/// [`RouteCodec`] of a [`ShardedMachine`].
pub(super) struct Codec<M>(PhantomData<fn() -> M>);

impl<M> Codec<M> {
    pub(super) fn new() -> Self {
        Codec(PhantomData)
    }
}

impl<M: ShardedMachine> RouteCodec<M> for Codec<M> {
    fn command_key<'a>(&self, command: &'a M::Command) -> &'a [u8] {
        M::command_key(command)
    }
    fn query_key<'a>(&self, query: &'a M::Query) -> &'a [u8] {
        M::query_key(query)
    }
    fn encode_query(&self, query: &M::Query) -> Result<Vec<u8>, RouteCodecError> {
        M::encode_query(query)
    }
    fn decode_query(&self, bytes: &[u8]) -> Result<M::Query, RouteCodecError> {
        M::decode_query(bytes)
    }
    fn encode_output(&self, output: &M::QueryOutput) -> Result<Vec<u8>, RouteCodecError> {
        M::encode_query_output(output)
    }
    fn decode_output(&self, bytes: &[u8]) -> Result<M::QueryOutput, RouteCodecError> {
        M::decode_query_output(bytes)
    }
    fn metadata_command(&self, expected: Option<Vec<u8>>, new: Vec<u8>) -> M::Command {
        M::metadata_command(expected, new)
    }
    fn metadata_set(&self, output: &M::Output) -> bool {
        M::metadata_set(output)
    }
    fn metadata_query(&self) -> M::Query {
        M::metadata_query()
    }
    fn metadata_of(
        &self,
        output: M::QueryOutput,
    ) -> Result<Option<Vec<u8>>, crate::state_machine::StateMachineError> {
        M::metadata_of(output)
    }
}

/// A forwarded request's answer on its way back.
type ReplyTx = oneshot::Sender<Result<serde_bytes::ByteBuf, ForwardFailure>>;

/// Serves forwarded requests (set once the node's handle exists).
type Server = Box<dyn Fn(NodeId, ForwardRequest) + Send + Sync>;

/// The node's shard map, leader cache and forwarding state. See the module docs.
pub(super) struct ShardRouter {
    max_hops: u32,
    data_dir: PathBuf,
    /// The map and its digest (computed once per map); `None` on a node that joined and has
    /// not yet replicated group 0's committed map.
    map: RwLock<Option<(ShardMap, u64)>>,
    /// Requests this node forwarded, by id (unique to this incarnation of the node): the peer
    /// asked and where its answer goes.
    pending: Mutex<HashMap<u64, (NodeId, ReplyTx)>>,
    next_id: AtomicU64,
    /// Bounds the forwarded requests served at once.
    serving: Arc<Semaphore>,
    server: OnceLock<Server>,
    /// Maps adopted from group 0's applied state, and from peers' `StaleMap` answers.
    adopted_group0: AtomicU64,
    adopted_peers: AtomicU64,
    /// The planted bug `shard_read_on_any_replica` (test builds only, the chaos harness's
    /// proof that it catches a router that reads from a non-leader replica).
    #[cfg(feature = "planted-bugs")]
    planted_read_on_any_replica: bool,
}

impl ShardRouter {
    pub(super) fn new(
        me: NodeId,
        max_hops: u32,
        data_dir: PathBuf,
        map: Option<ShardMap>,
        #[cfg(feature = "planted-bugs")] planted_read_on_any_replica: bool,
    ) -> Self {
        let _ = me;
        ShardRouter {
            max_hops: max_hops.max(1),
            data_dir,
            map: RwLock::new(map.map(|m| {
                let digest = m.digest();
                (m, digest)
            })),
            pending: Mutex::new(HashMap::new()),
            // Not 1: a peer answers a request of this node's previous incarnation (killed and
            // restarted while the peer served it) over the reconnected link, and a restarted
            // counter would hand that answer to the new request that reused its id — another
            // key's value, or another write's acknowledgement. A random start makes the id
            // ranges of two incarnations overlap with negligible probability.
            next_id: AtomicU64::new(rand::random::<u64>() >> 1),
            serving: Arc::new(Semaphore::new(MAX_SERVING)),
            server: OnceLock::new(),
            adopted_group0: AtomicU64::new(0),
            adopted_peers: AtomicU64::new(0),
            #[cfg(feature = "planted-bugs")]
            planted_read_on_any_replica,
        }
    }

    /// A copy of the map (`None` until a node that joined has one).
    pub(super) fn map(&self) -> Option<ShardMap> {
        self.map.read().as_ref().map(|(m, _)| m.clone())
    }

    /// The entry of `key`'s shard, with the map's version and digest.
    fn route(&self, key: &[u8]) -> Option<(ShardEntry, u64, u64)> {
        let guard = self.map.read();
        let (map, digest) = guard.as_ref()?;
        Some((map.route(key).clone(), map.version(), *digest))
    }

    /// Records `leader` as the leader of `shard` (the leader cache).
    fn hint(&self, shard: ShardId, leader: NodeId) {
        let known = self.map.read().as_ref().is_some_and(|(m, _)| {
            m.entry(shard)
                .is_some_and(|e| e.leader_hint == Some(leader))
        });
        if !known {
            if let Some((m, _)) = self.map.write().as_mut() {
                m.set_leader_hint(shard, leader);
            }
        }
    }

    /// Adopts `offered` if it may replace this node's map (newer, valid, same shard count,
    /// known replicas, the same replica sets: moving replicas is not built, so no map that
    /// would start or stop a group is taken); stores it off the caller's thread. Returns
    /// whether it was adopted.
    fn adopt(&self, offered: ShardMap, known: impl Fn(NodeId) -> bool) -> bool {
        let mut guard = self.map.write();
        // A node without a map forwards nothing, so it never gets a peer's map.
        let Some((current, _)) = guard.as_ref() else {
            return false;
        };
        if !router::may_adopt(current, &offered, known) || !current.same_replica_sets(&offered) {
            return false;
        }
        self.adopted_peers.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("conclave_shard_map_adopted_total", "source" => "peer").increment(1);
        let digest = offered.digest();
        tracing::info!(
            from = current.version(),
            to = offered.version(),
            "adopting a newer shard map from a peer"
        );
        *guard = Some((offered.clone(), digest));
        drop(guard);
        let dir = self.data_dir.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = shard_map_file::store(&dir, &offered) {
                tracing::error!(error = %e, "cannot store the adopted shard map");
            }
        });
        true
    }

    /// Sets who serves forwarded requests (once, after the node's handle exists).
    pub(super) fn set_server(&self, server: Server) {
        let _ = self.server.set(server);
    }

    /// A forwarded request from member `from` (the dispatcher checked membership).
    pub(super) fn on_request(&self, from: NodeId, req: ForwardRequest) {
        match self.server.get() {
            Some(serve) => serve(from, req),
            None => {
                metrics::counter!("conclave_shard_forwards_refused_total", "reason" => "starting")
                    .increment(1)
            }
        }
    }

    /// An answer from `from`: delivered to the request waiting for it, if `from` is the peer
    /// it was sent to (anything else is dropped and counted).
    pub(super) fn on_reply(&self, from: NodeId, reply: ForwardReply) {
        let mut pending = self.pending.lock();
        match pending.get(&reply.id) {
            Some((peer, _)) if *peer == from => {
                if let Some((_, tx)) = pending.remove(&reply.id) {
                    let _ = tx.send(reply.outcome);
                }
            }
            _ => metrics::counter!("conclave_shard_forwards_refused_total", "reason" => "unexpected_reply")
                .increment(1),
        }
    }
}

/// Removes a forwarded request's entry when its waiter goes away (answered, timed out or
/// dropped by its caller).
struct PendingGuard<'a> {
    router: &'a ShardRouter,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.router.pending.lock().remove(&self.id);
    }
}

/// Why a forward did not produce an answer.
enum Unanswered {
    /// The serving node answered with a failure.
    Failed(ForwardFailure),
    /// The request never left (no link, queue full): safe to try elsewhere.
    NotSent,
    /// It left and no answer came in time: the outcome is unknown.
    NoAnswer,
}

/// What a routed request produced.
enum Outcome<M: StateMachine> {
    Written(WriteResult<M::Output>),
    Read(M::QueryOutput),
    /// The serving node's encoded answer.
    Remote(Vec<u8>),
}

/// The node's sharding: the router and the machine's codec.
pub(super) struct Sharding<M: StateMachine> {
    pub(super) router: Arc<ShardRouter>,
    pub(super) codec: Arc<dyn RouteCodec<M>>,
}

fn failure_of(e: RequestError) -> ForwardFailure {
    match e {
        RequestError::NotLeader { leader } => ForwardFailure::NotLeader {
            leader: leader.map(|h| h.id),
        },
        RequestError::NoLeader { .. } => ForwardFailure::NoLeader,
        RequestError::Overloaded => ForwardFailure::Overloaded,
        RequestError::Timeout => ForwardFailure::Timeout,
        RequestError::Dropped => ForwardFailure::Dropped,
        RequestError::ShuttingDown
        | RequestError::StorageFailed { .. }
        | RequestError::StorageStalled { .. } => ForwardFailure::Unavailable,
        RequestError::TooLarge { size, limit } => ForwardFailure::TooLarge {
            size: size as u64,
            limit: limit as u64,
        },
        RequestError::HopLimit => ForwardFailure::HopLimit,
        RequestError::ShardMapConflict { version } => ForwardFailure::MapMismatch { version },
        _ => ForwardFailure::Internal,
    }
}

/// The error a client gets for a failure that ended the routing.
fn request_error_of(f: ForwardFailure, group: GroupId) -> RequestError {
    match f {
        ForwardFailure::NotLeader { .. }
        | ForwardFailure::NoLeader
        | ForwardFailure::NotHosted
        | ForwardFailure::StaleMap { .. }
        | ForwardFailure::MapBehind { .. } => RequestError::NoLeader { group },
        ForwardFailure::Unavailable => RequestError::NoLeader { group },
        ForwardFailure::MapMismatch { version } => RequestError::ShardMapConflict { version },
        ForwardFailure::HopLimit => RequestError::HopLimit,
        ForwardFailure::Overloaded => RequestError::Overloaded,
        ForwardFailure::Timeout => RequestError::Timeout,
        ForwardFailure::Dropped => RequestError::Dropped,
        ForwardFailure::TooLarge { size, limit } => RequestError::TooLarge {
            size: usize::try_from(size).unwrap_or(usize::MAX),
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        },
        f @ (ForwardFailure::WrongGroup { .. }
        | ForwardFailure::Undecodable
        | ForwardFailure::Internal) => InternalError::failed(f).into(),
    }
}

fn internal(e: impl std::error::Error + Send + Sync + 'static) -> RequestError {
    InternalError::failed(e).into()
}

impl<M: StateMachine> NodeHandle<M> {
    fn sharding(&self) -> Option<&Sharding<M>> {
        self.inner.shards.as_ref()
    }

    /// Writes `command` to the shard its key routes to, from any node: served here when this
    /// node leads the shard's group, else forwarded to its leader. On a node that is not
    /// sharded, the same as [`NodeHandle::write`] (group 0).
    pub async fn write_routed(
        &self,
        command: M::Command,
    ) -> Result<WriteResult<M::Output>, RequestError> {
        let Some(s) = self.sharding() else {
            return self.write(command).await;
        };
        self.admit()?;
        let key = s.codec.command_key(&command).to_vec();
        let bytes = rmp_serde::to_vec(&command).map_err(internal)?;
        match self
            .route_request(&key, true, 0, None, &ForwardOp::Write(bytes))
            .await?
        {
            Outcome::Written(w) => Ok(w),
            Outcome::Remote(b) => rmp_serde::from_slice(&b).map_err(internal),
            Outcome::Read(_) => Err(internal(ForwardFailure::Internal)),
        }
    }

    /// Runs `query` on the shard its key routes to, from any node (a stale read on any
    /// replica, the others on the leader). On a node that is not sharded, the same as
    /// [`NodeHandle::read`] (group 0).
    pub async fn read_routed(
        &self,
        query: M::Query,
        consistency: ReadLevel,
    ) -> Result<M::QueryOutput, RequestError> {
        let Some(s) = self.sharding() else {
            return self.read(query, consistency).await;
        };
        self.admit()?;
        let key = s.codec.query_key(&query).to_vec();
        let bytes = s.codec.encode_query(&query).map_err(internal)?;
        #[cfg(feature = "planted-bugs")]
        let consistency = if s.router.planted_read_on_any_replica {
            ReadLevel::Stale
        } else {
            consistency
        };
        let op = ForwardOp::Read {
            query: bytes,
            consistency,
        };
        let needs_leader = consistency != ReadLevel::Stale;
        match self.route_request(&key, needs_leader, 0, None, &op).await? {
            Outcome::Read(o) => Ok(o),
            Outcome::Remote(b) => s.codec.decode_output(&b).map_err(internal),
            Outcome::Written(_) => Err(internal(ForwardFailure::Internal)),
        }
    }

    /// Routes one request (see the module docs): `hops` is how many times it was forwarded
    /// to reach this node (0: from a client here), `from` the node that forwarded it.
    async fn route_request(
        &self,
        key: &[u8],
        needs_leader: bool,
        hops: u32,
        from: Option<NodeId>,
        op: &ForwardOp,
    ) -> Result<Outcome<M>, RequestError> {
        let Some(s) = self.sharding() else {
            return Err(internal(ForwardFailure::NotHosted));
        };
        let router = &s.router;
        let me = self.inner.id;
        let attempts = if hops == 0 {
            router.max_hops as usize
        } else {
            RELAY_ATTEMPTS
        };
        // The node that forwarded the request here is no candidate: it served it or forwarded
        // it because it does not lead the shard. Sending it back (its leader hint naming this
        // node while this node's names it, as during an election) bounced the request between
        // the two until the hop limit (503 `hop_limit`).
        let mut tried: Vec<NodeId> = from.into_iter().collect();
        let mut last_group = GroupId::FIRST;
        for _ in 0..attempts {
            // A node that joined serves keys once group 0 gave it the committed map.
            let Some((entry, version, digest)) = router.route(key) else {
                return Err(RequestError::NoLeader {
                    group: GroupId::FIRST,
                });
            };
            last_group = entry.group;
            let local = self.inner.registry.get(entry.group);
            let local_leader = local.as_ref().and_then(|g| g.shared.snapshot.read().leader);
            let view = GroupView {
                me,
                replicas: &entry.replicas,
                hosted: local.is_some(),
                local_leader,
                cached_leader: entry.leader_hint,
                needs_leader,
            };
            match router::next_step(&view, &tried) {
                Step::Local => match self.serve_here(entry.group, op).await {
                    Ok(out) => return Ok(out),
                    Err(RequestError::NotLeader { leader }) => {
                        tried.push(me);
                        if let Some(l) = leader {
                            router.hint(entry.shard, l.id);
                        }
                    }
                    Err(RequestError::NoLeader { .. }) => tried.push(me),
                    Err(e) => return Err(e),
                },
                Step::Forward(to) => {
                    let next = hops.saturating_add(1);
                    if next > router.max_hops {
                        return Err(RequestError::HopLimit);
                    }
                    let req = ForwardRequest {
                        id: router.next_id.fetch_add(1, Ordering::Relaxed),
                        map_version: version,
                        map_digest: digest,
                        hops: next,
                        key: key.to_vec(),
                        op: op.clone(),
                    };
                    match self.forward(router, to, req).await {
                        Ok(bytes) => {
                            router.hint(entry.shard, to);
                            return Ok(Outcome::Remote(bytes));
                        }
                        Err(Unanswered::NotSent) => tried.push(to),
                        Err(Unanswered::NoAnswer) => return Err(RequestError::Timeout),
                        Err(Unanswered::Failed(ForwardFailure::StaleMap { map })) => {
                            let peers = &self.inner.peers;
                            if !router.adopt(*map, |n| n == me || peers.member(n).is_some()) {
                                tried.push(to);
                            }
                        }
                        Err(Unanswered::Failed(ForwardFailure::NotLeader { leader })) => {
                            tried.push(to);
                            if let Some(l) = leader {
                                router.hint(entry.shard, l);
                            }
                        }
                        Err(Unanswered::Failed(f)) if f.try_elsewhere() => tried.push(to),
                        Err(Unanswered::Failed(f)) => return Err(request_error_of(f, entry.group)),
                    }
                }
                Step::Exhausted => break,
            }
        }
        Err(RequestError::NoLeader { group: last_group })
    }

    /// Serves `op` on this node's replica of `group`.
    async fn serve_here(&self, group: GroupId, op: &ForwardOp) -> Result<Outcome<M>, RequestError> {
        match op {
            ForwardOp::Write(bytes) => {
                let command = bytes.clone();
                self.ask_group(group, |reply| super::Propose::<M> { command, reply })
                    .await
                    .map(Outcome::Written)
            }
            ForwardOp::Read { query, consistency } => {
                let Some(s) = self.sharding() else {
                    return Err(internal(ForwardFailure::NotHosted));
                };
                let query = s.codec.decode_query(query).map_err(internal)?;
                self.ask_group(group, |reply| Read::<M> {
                    query,
                    consistency: super::to_consistency(*consistency),
                    reply,
                })
                .await
                .map(Outcome::Read)
            }
        }
    }

    /// Sends `req` to `to` and waits for its answer.
    async fn forward(
        &self,
        router: &ShardRouter,
        to: NodeId,
        req: ForwardRequest,
    ) -> Result<Vec<u8>, Unanswered> {
        if self.inner.gossip.shared.is_down(to) {
            return Err(Unanswered::NotSent);
        }
        let Some(link) = self.inner.peers.link(to) else {
            return Err(Unanswered::NotSent);
        };
        let id = req.id;
        let (tx, rx) = oneshot::channel();
        router.pending.lock().insert(id, (to, tx));
        let _guard = PendingGuard { router, id };
        if link.try_send(WireMessage::Forward(req)).is_err() {
            metrics::counter!("conclave_shard_forwards_refused_total", "reason" => "queue_full")
                .increment(1);
            return Err(Unanswered::NotSent);
        }
        metrics::counter!("conclave_shard_forwards_total").increment(1);
        match actix::clock::timeout(FORWARD_TIMEOUT, rx).await {
            Ok(Ok(Ok(bytes))) => Ok(bytes.into_vec()),
            Ok(Ok(Err(f))) => Err(Unanswered::Failed(f)),
            Ok(Err(_)) | Err(_) => Err(Unanswered::NoAnswer),
        }
    }

    /// Serves a request member `from` forwarded: checks its map version, hop count and key,
    /// then routes it like a client's request (at most [`RELAY_ATTEMPTS`] candidates).
    async fn serve_forward(
        &self,
        from: NodeId,
        req: ForwardRequest,
    ) -> Result<Vec<u8>, ForwardFailure> {
        let s = self.sharding().ok_or(ForwardFailure::NotHosted)?;
        // The map is cloned only for a sender that needs it (`StaleMap`): cloning it for every
        // forwarded request was the largest allocation of a 64-shard node's forwarding path.
        let (check, digest, version) = {
            let g = s.router.map.read();
            match g.as_ref() {
                Some((m, d)) => {
                    let check = router::check_map(m, req.map_version, req.map_digest);
                    if let MapCheck::SenderStale = check {
                        return Err(ForwardFailure::StaleMap {
                            map: Box::new(m.clone()),
                        });
                    }
                    (check, *d, m.version())
                }
                // No map yet (joined, group 0 not replicated here yet): behind any sender.
                None => return Err(ForwardFailure::MapBehind { version: 0 }),
            }
        };
        match check {
            MapCheck::Same | MapCheck::SenderStale => {}
            MapCheck::ReceiverStale => return Err(ForwardFailure::MapBehind { version }),
            MapCheck::Mismatch => {
                tracing::warn!(
                    version = req.map_version,
                    theirs = req.map_digest,
                    ours = digest,
                    "a peer holds another shard map under the same version"
                );
                return Err(ForwardFailure::MapMismatch {
                    version: req.map_version,
                });
            }
        }
        if req.hops == 0 || req.hops > s.router.max_hops {
            return Err(ForwardFailure::HopLimit);
        }
        // The key must be the request's own: a write for one key routed as another's would
        // land in the wrong shard.
        let needs_leader = match &req.op {
            ForwardOp::Write(bytes) => {
                let command: M::Command =
                    rmp_serde::from_slice(bytes).map_err(|_| ForwardFailure::Undecodable)?;
                if s.codec.command_key(&command) != req.key.as_slice() {
                    return Err(ForwardFailure::Undecodable);
                }
                true
            }
            ForwardOp::Read { query, consistency } => {
                let q = s
                    .codec
                    .decode_query(query)
                    .map_err(|_| ForwardFailure::Undecodable)?;
                if s.codec.query_key(&q) != req.key.as_slice() {
                    return Err(ForwardFailure::Undecodable);
                }
                *consistency != ReadLevel::Stale
            }
        };
        if self.admit().is_err() {
            return Err(ForwardFailure::Unavailable);
        }
        match self
            .route_request(&req.key, needs_leader, req.hops, Some(from), &req.op)
            .await
        {
            Ok(Outcome::Written(w)) => rmp_serde::to_vec(&w).map_err(|_| ForwardFailure::Internal),
            Ok(Outcome::Read(o)) => s
                .codec
                .encode_output(&o)
                .map_err(|_| ForwardFailure::Internal),
            Ok(Outcome::Remote(b)) => Ok(b),
            Err(e) => Err(failure_of(e)),
        }
    }

    /// Installs this node as the server of forwarded requests (called once the handle
    /// exists; holds the node weakly).
    pub(super) fn serve_forwarded_requests(&self) {
        let Some(s) = self.sharding() else {
            return;
        };
        let inner = Arc::downgrade(&self.inner);
        let serving = s.router.serving.clone();
        s.router.set_server(Box::new(move |from, req| {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let handle = NodeHandle { inner };
            let id = req.id;
            let Ok(permit) = serving.clone().try_acquire_owned() else {
                reply_to(&handle, from, id, Err(ForwardFailure::Overloaded));
                return;
            };
            actix::spawn(async move {
                let outcome = handle.serve_forward(from, req).await;
                drop(permit);
                reply_to(&handle, from, id, outcome);
            });
        }));
    }

    /// What a node's shards look like from here (`GET /v1/shards`).
    pub fn shards_status(&self) -> ShardsStatus {
        let Some(s) = self.sharding() else {
            return ShardsStatus {
                node_id: self.inner.id,
                sharded: false,
                map_version: 0,
                shards: Vec::new(),
                map_adoptions: Default::default(),
            };
        };
        let map = s.router.map();
        let map_version = map.as_ref().map_or(0, ShardMap::version);
        let entries = map.map(|m| m.entries().to_vec()).unwrap_or_default();
        let map_adoptions = crate::api::MapAdoptions {
            group0: s.router.adopted_group0.load(Ordering::Relaxed),
            peers: s.router.adopted_peers.load(Ordering::Relaxed),
        };
        ShardsStatus {
            node_id: self.inner.id,
            sharded: true,
            map_version,
            shards: entries
                .iter()
                .map(|e| {
                    let mut st = ShardStatus {
                        shard: e.shard,
                        group: e.group,
                        replicas: e.replicas.clone(),
                        leader: e.leader_hint,
                        hosted: false,
                        term: 0,
                        commit: 0,
                        applied: 0,
                        lag: 0,
                    };
                    if let Some(g) = self.inner.registry.get(e.group) {
                        let snap = g.shared.snapshot.read();
                        let applied = g.shared.applied.load(Ordering::Relaxed);
                        st.hosted = true;
                        // Its own replica's view only: `null` while the group elects.
                        st.leader = snap.leader;
                        st.term = snap.term;
                        st.commit = snap.commit_index;
                        st.applied = applied;
                        st.lag = snap.commit_index.saturating_sub(applied);
                    }
                    st
                })
                .collect(),
            map_adoptions,
        }
    }

    /// Sets the shard aggregates over the shard groups this node hosts (called when
    /// `/metrics` is rendered, so they are as fresh as the scrape): how many are in each role,
    /// the most and the total committed-but-not-applied entries, and on the shards it leads
    /// the most entries a follower is behind (docs/node.md, "Metrics per group and shard").
    pub(super) fn update_shard_metrics(&self) {
        let Some(map) = self.sharding().and_then(|s| s.router.map()) else {
            return;
        };
        let mut roles = [0u64; 4];
        let (mut lag_max, mut lag_sum, mut behind_max) = (0u64, 0u64, 0u64);
        for e in map.entries() {
            let Some(g) = self.inner.registry.get(e.group) else {
                continue;
            };
            let snap = g.shared.snapshot.read();
            let applied = g.shared.applied.load(Ordering::Relaxed);
            let slot = match snap.role {
                Some(conclave_core::raft::Role::Leader) => 0,
                Some(conclave_core::raft::Role::Follower) => 1,
                Some(
                    conclave_core::raft::Role::PreCandidate | conclave_core::raft::Role::Candidate,
                ) => 2,
                _ => 3,
            };
            roles[slot] += 1;
            let lag = snap.commit_index.saturating_sub(applied);
            lag_max = lag_max.max(lag);
            lag_sum += lag;
            if slot == 0 {
                for (peer, matched) in &snap.progress {
                    if *peer != self.inner.id {
                        behind_max = behind_max.max(snap.last_index.saturating_sub(*matched));
                    }
                }
            }
        }
        for (role, n) in ["leader", "follower", "candidate", "other"]
            .iter()
            .zip(roles)
        {
            metrics::gauge!("conclave_shard_groups", "role" => *role).set(n as f64);
        }
        metrics::gauge!("conclave_shard_apply_lag_max").set(lag_max as f64);
        metrics::gauge!("conclave_shard_apply_lag_sum").set(lag_sum as f64);
        metrics::gauge!("conclave_shard_replication_lag_max").set(behind_max as f64);
    }

    /// Where `key` goes (`GET /v1/ring/route/{key}`): its shard and group from the live map,
    /// the replicas, the leader (this node's replica's view, else the leader cache). On a node
    /// that is not sharded: the ring's shard and replicas, served by group 0.
    pub fn key_route(&self, key: &[u8]) -> KeyRoute {
        let Some(s) = self.sharding() else {
            let route = self.inner.ring.route(key);
            let leader = self
                .inner
                .registry
                .get(GroupId::FIRST)
                .and_then(|g| g.shared.snapshot.read().leader);
            return KeyRoute {
                shard: route.shard,
                group: GroupId::FIRST,
                replicas: route.replicas,
                leader,
                map_version: 0,
            };
        };
        let Some((entry, version, _)) = s.router.route(key) else {
            // Joined, no map yet: the ring's shard, no group.
            let route = self.inner.ring.route(key);
            return KeyRoute {
                shard: route.shard,
                group: conclave_ring::group_of_shard(route.shard),
                replicas: Vec::new(),
                leader: None,
                map_version: 0,
            };
        };
        let leader = self
            .inner
            .registry
            .get(entry.group)
            .and_then(|g| g.shared.snapshot.read().leader)
            .or(entry.leader_hint);
        KeyRoute {
            shard: entry.shard,
            group: entry.group,
            replicas: entry.replicas,
            leader,
            map_version: version,
        }
    }

    /// The shard map this node holds (`None` when not sharded, or joined and still waiting
    /// for group 0's committed map).
    pub fn shard_map(&self) -> Option<ShardMap> {
        self.sharding().and_then(|s| s.router.map())
    }
}

/// Sends a forwarded request's answer back to `to` (best effort: a full queue drops it and
/// the forwarding node times out, reporting the outcome unknown).
fn reply_to<M: StateMachine>(
    handle: &NodeHandle<M>,
    to: NodeId,
    id: u64,
    outcome: Result<Vec<u8>, ForwardFailure>,
) {
    let msg = WireMessage::ForwardReply(ForwardReply {
        id,
        outcome: outcome.map(serde_bytes::ByteBuf::from),
    });
    let sent = handle
        .inner
        .peers
        .link(to)
        .is_some_and(|link| link.try_send(msg).is_ok());
    if !sent {
        metrics::counter!("conclave_shard_forwards_refused_total", "reason" => "reply_not_sent")
            .increment(1);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn router(dir: &Path) -> ShardRouter {
        ShardRouter::new(
            NodeId::new(1),
            10,
            dir.to_owned(),
            None,
            #[cfg(feature = "planted-bugs")]
            false,
        )
    }

    /// A node forwards a request to peer 2, is killed and restarts; its first forwarded request
    /// of the new incarnation goes to peer 2 too. Peer 2's answer to the old request, arriving
    /// over the reconnected link, must not be taken for the new request's (with ids counted
    /// from 1 in every incarnation it was: the new request got the old one's answer).
    #[test]
    fn an_answer_to_an_earlier_incarnation_is_not_taken_for_a_new_request() {
        let dir = tempfile::tempdir().unwrap();
        let before = router(dir.path());
        let old_id = before.next_id.fetch_add(1, Ordering::Relaxed);
        drop(before);
        let after = router(dir.path());
        let new_id = after.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = oneshot::channel();
        after.pending.lock().insert(new_id, (NodeId::new(2), tx));
        after.on_reply(
            NodeId::new(2),
            ForwardReply {
                id: old_id,
                outcome: Ok(serde_bytes::ByteBuf::from(
                    b"the old request's answer".to_vec(),
                )),
            },
        );
        assert!(
            rx.try_recv().is_err(),
            "the new request (id {new_id}) took the answer to the old one (id {old_id})"
        );
        // Its own answer still reaches it.
        after.on_reply(
            NodeId::new(2),
            ForwardReply {
                id: new_id,
                outcome: Ok(serde_bytes::ByteBuf::from(b"its own".to_vec())),
            },
        );
        assert_eq!(
            rx.try_recv().unwrap().unwrap().into_vec(),
            b"its own".to_vec()
        );
    }
}
