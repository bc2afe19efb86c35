//! The conclave node: the supervised actor tree that hosts Raft groups on the transport,
//! durable storage and the user's state machine (DESIGN.md §3).
//!
//! ```text
//! Node
//! ├── Watchdog        (thread) times storage calls against the stall timeout
//! ├── LogStoreActor   (own arbiter)  one WAL for every group, group commit
//! ├── transport       one PeerLink per peer, inbound dispatcher task (Raft frames split by
//! │                   worker, gossip, snapshot chunks)
//! ├── Supervisor "gossip"   one-for-one
//! │   └── GossipActor       the SWIM core: membership, failure detection, metadata, RTT
//! ├── SnapshotSender        (own arbiter, paced tasks) snapshots to lagging followers
//! ├── SnapshotReceiver      (own arbiter) stages received snapshots
//! ├── Supervisor "raft-workers"   one-for-one
//! │   └── RaftWorker[i]     (own arbiter, i < [raft] workers) one `Host`: the cores of the
//! │                         groups g % workers == i, one timer, one frame per peer per drain
//! └── per group g (every hosted group)
//!     ├── Supervisor "group-g"  one-for-one; a GroupWatcher hears its events
//!     │   ├── ApplierActor      (arbiter pool) the user's state machine
//!     │   ├── SnapshotterActor  (arbiter pool) writes and finds the group's snapshot files
//!     │   └── GroupActor        the group's shell on its worker's arbiter (queues, waiters,
//!     │                         snapshot policy); borrows its core from the worker's host
//! ```
//!
//! Start a node with [`Node::builder`]. The node does not serve HTTP itself: whoever starts it
//! also starts `crate::http::serve` with its [`NodeHandle`] (the `conclave node` command does, in
//! `crate::cli`), so `http` and `node` do not import each other.

pub mod applier;
pub mod gossip;
pub mod group;
pub mod group_metrics;
pub mod idle_poll;
pub mod log_store_actor;
mod membership;
pub mod memory_trim;
pub use membership::REPLACE_CATCH_UP_WAIT;
pub mod peers;
mod registry;
pub use registry::{GroupGaveUp, GroupRegistryError};
mod balance;
/// The shard router's decisions (sans-IO, shared with the simulator).
pub use conclave_ring::router;
mod shards;
pub use shards::{ShardSetupError, MAX_METADATA_VOTERS, MAX_SERVING};
pub mod snapshotter;
pub mod transfer;
pub mod transfer_actor;
pub mod wire;
mod worker;

/// Names an arbiter's thread after its role (`ps -T`, `top -H`, `perf` and `/proc/PID/task`
/// show it), so an operator can tell the Raft workers, the log store and the appliers apart
/// instead of a row of `actix-rt|system`. Linux keeps at most 15 bytes; best effort: a name the
/// kernel refuses leaves actix's.
pub(crate) fn name_thread(arbiter: &actix::ArbiterHandle, name: String) {
    arbiter.spawn_fn(move || {
        let mut bytes = name.into_bytes();
        bytes.truncate(15);
        if let Ok(name) = std::ffi::CString::new(bytes) {
            if let Err(e) = rustix::thread::set_name(&name) {
                tracing::debug!(error = %e, "cannot name the thread");
            }
        }
    });
}

// The request interface lives in `crate::api` (the HTTP layer uses it without depending on
// the node); re-exported so `conclave::node::{NodeHandle, RequestError, ...}` stay one path.
pub use crate::api::*;
pub use gossip::GossipError;
pub use snapshotter::SnapshotError;

use crate::config::{Config, MemberConfig, ReadLevel};
use crate::state_machine::{
    KvCommand, KvMachine, KvOutput, KvQuery, KvRequest, StateMachine, StateMachineError,
};
use crate::storage::health::{StorageCondition, StorageHealth};
use crate::storage::log_store::{LogStore, LogStoreError};
use crate::storage::snapshot_store::SnapshotStoreError;
use crate::storage::wal::WalOptions;
use crate::storage::watchdog::Watchdog;
use actix::prelude::*;
use applier::ApplierActor;
use conclave_actors::supervisor::{
    Factory, RestartPolicy, Slot, StopSupervisor, Strategy, Supervisor, SupervisorBuilder,
};
use conclave_core::raft::{Frame, Membership, RaftConfig, ReadConsistency, Role};
use conclave_ring::{Ring, RingConfig, DEFAULT_WEIGHT};
use conclave_transport::{Endpoint, Transport, TransportConfig};
use group::{GroupActor, Propose, Read, TakeSnapshotNow};
use log_store_actor::LogStoreActor;
use peers::Peers;
use registry::GroupRegistry;
use snapshotter::SnapshotterActor;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use wire::WireMessage;

/// How long a client request may wait for its outcome.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Inbound batches buffered before the transport stops reading sockets. A batch is the messages
/// of one socket read (at most 64 KiB of frames, or one larger frame up to `max_frame_size`).
const INBOUND_BATCHES: usize = 1024;

/// Why a node could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// [`NodeBuilder::start`] was called without [`NodeBuilder::config`].
    #[error("configuration error: no configuration given")]
    NoConfig,
    /// [`NodeBuilder::start`] was called without a state machine.
    #[error("configuration error: no state machine given")]
    NoStateMachine,
    /// The configuration is unusable.
    #[error("configuration error: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// The Raft settings derived from the configuration are unusable.
    #[error("configuration error: raft: {0}")]
    Raft(#[from] conclave_core::raft::ConfigError),
    /// The ring cannot be built over the initial members.
    #[error("configuration error: ring: {0}")]
    Ring(#[from] conclave_ring::RingError),
    /// This node is not an initial member and does not join (`cluster.join = false`).
    #[error(
        "configuration error: node.id {id} is not one of cluster.initial_members (a node that \
         joins an existing cluster sets cluster.join = true: `conclave init --join`)"
    )]
    NotAnInitialMember {
        /// This node's id.
        id: NodeId,
    },
    /// `CONCLAVE_PLANTED_BUGS` names a bug the core does not have (test builds only); the
    /// field is the name as the variable gave it, echoed.
    #[error("configuration error: CONCLAVE_PLANTED_BUGS: unknown planted bug {0:?}")]
    UnknownPlantedBug(String),
    /// The Raft log could not be opened (corruption names the file and offset).
    #[error("cannot open the Raft log: {0}")]
    LogStore(#[from] LogStoreError),
    /// The state machine could not be opened.
    #[error("cannot open the state machine: {0}")]
    StateMachine(#[from] StateMachineError),
    /// A group's snapshot directory could not be opened.
    #[error("cannot open the snapshot files: {0}")]
    Snapshots(#[from] SnapshotStoreError),
    /// The transport could not start.
    #[error("transport error: {0}")]
    Transport(#[from] conclave_transport::TransportError),
    /// Gossip could not start (e.g. a corrupt persisted incarnation, named).
    #[error("gossip: {0}")]
    Gossip(#[from] gossip::GossipError),
    /// An I/O error (the data directory).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The durable marks of the groups this node was a member of (`data_dir/member-of`)
    /// cannot be read (a corrupt file is named).
    #[error("{0}")]
    MemberMarks(#[from] crate::storage::member_mark::MemberMarkError),
    /// The list of groups created on this node (`data_dir/group-list`) cannot be read (a
    /// corrupt file is named).
    #[error("{0}")]
    GroupList(#[from] crate::storage::group_list::GroupListError),

    /// The durable group list names groups besides group 0, but the node was built with one
    /// state machine (`NodeBuilder::state_machine_with`), which serves group 0 only.
    #[error(
        "this node hosts groups {groups:?} (data_dir/{file}) but its state machine serves group 0 only",
        file = crate::storage::group_list::FILE_NAME
    )]
    GroupsNeedMachines {
        /// The listed groups.
        groups: Vec<GroupId>,
    },

    /// The node stopped while a group was being started.
    #[error("the node stopped while group {group} was being started")]
    Stopped {
        /// The group.
        group: GroupId,
    },

    /// `[ring] sharded = true` and the node's shards could not be set up.
    #[error("shards: {0}")]
    Shards(#[from] ShardSetupError),
}

use applier::MachineFactory;
use conclave_core::ids::ShardId;

/// Builds a [`Node`].
pub struct NodeBuilder<M: StateMachine> {
    config: Option<Config>,
    /// The factory, and whether it opens a machine per group (false: one machine, which
    /// serves group 0 only).
    factory: Option<(MachineFactory<M>, bool)>,
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// How requests of the machine route by key (`NodeBuilder::sharding`).
    codec: Option<Arc<dyn shards::RouteCodec<M>>>,
}

impl Node<KvMachine> {
    /// A builder for a node of any state machine (`Node::<MyMachine>::builder()` or inferred
    /// from [`NodeBuilder::state_machine`]).
    pub fn builder<M: StateMachine>() -> NodeBuilder<M> {
        NodeBuilder {
            config: None,
            factory: None,
            prometheus: None,
            codec: None,
        }
    }
}

impl<M: StateMachine> NodeBuilder<M> {
    /// The node's configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// An in-memory state machine: every (re)start begins from a clone of `machine` and the
    /// node replays the log into it.
    pub fn state_machine(mut self, machine: M) -> Self
    where
        M: Clone + Send + Sync,
    {
        self.factory = Some((Arc::new(move |_| Ok(machine.clone())), true));
        self
    }

    /// A state machine opened by `factory` on every (re)start — e.g. one that reopens its
    /// own durable storage and reports its applied index. It is one machine: the node hosts
    /// group 0 only (creating another group is refused); give
    /// [`NodeBuilder::state_machine_for_groups`] to host more.
    pub fn state_machine_with(
        mut self,
        factory: impl Fn() -> Result<M, StateMachineError> + Send + Sync + 'static,
    ) -> Self {
        self.factory = Some((Arc::new(move |_| factory()), false));
        self
    }

    /// A state machine per group, opened by `factory(group)` on every (re)start of that
    /// group's applier: each group needs storage of its own (e.g. a directory per group).
    pub fn state_machine_for_groups(
        mut self,
        factory: impl Fn(GroupId) -> Result<M, StateMachineError> + Send + Sync + 'static,
    ) -> Self {
        self.factory = Some((Arc::new(factory), true));
        self
    }

    /// Lets the node route requests to shards by key (needed by `[ring] sharded = true`;
    /// harmless otherwise): the machine names each command's and query's key and encodes
    /// queries for other nodes ([`crate::state_machine::ShardedMachine`]).
    pub fn sharding(mut self) -> Self
    where
        M: crate::state_machine::ShardedMachine,
    {
        self.codec = Some(Arc::new(shards::Codec::<M>::new()));
        self
    }

    /// The handle of an installed Prometheus recorder, rendered by `GET /metrics`.
    pub fn metrics(mut self, handle: metrics_exporter_prometheus::PrometheusHandle) -> Self {
        self.prometheus = Some(handle);
        self
    }

    /// Starts the node's actors and transport on the current actix system.
    pub async fn start(self) -> Result<Node<M>, NodeError> {
        let config = self.config.ok_or(NodeError::NoConfig)?;
        let factory = self.factory.ok_or(NodeError::NoStateMachine)?;
        config.validate()?;
        start_node(config, factory, self.prometheus, self.codec).await
    }
}

/// A running node.
pub struct Node<M: StateMachine> {
    handle: NodeHandle<M>,
    transport: Arc<Transport<WireMessage>>,
    gossip_supervisor: Addr<Supervisor>,
    log_store: Addr<LogStoreActor>,
    log_arbiter: Arbiter,
    /// Where snapshot transfers read and stage their files (sender, receiver).
    transfer_arbiters: Vec<Arbiter>,
    /// Gives the allocator's free memory back to the OS (`memory_trim`); ends with the node.
    _trimmer: Option<memory_trim::MemoryTrimmer>,
    /// Keeps a core running while writes come (`idle_poll`); ends with the node.
    _idle_poller: Option<idle_poll::IdlePoller>,
}

impl<M: StateMachine> Node<M> {
    /// A cloneable handle for requests.
    pub fn handle(&self) -> NodeHandle<M> {
        self.handle.clone()
    }

    /// The transport's bound address.
    pub fn transport_addr(&self) -> std::net::SocketAddr {
        self.transport.local_addr()
    }

    /// Stops the node the way a crash looks to its peers (`kill -9`, power loss): the transport
    /// closes first, so every connection to it ends at once, and nothing is said to the
    /// cluster — no gossip `leave`, no leadership handed over; the members find out through
    /// their failure detectors, as they would after a crash. For benchmarks and tests that run
    /// several nodes in one process (a real crash there would take them all down). What was
    /// acknowledged is on disk (every write was synced before it was), so the node's data
    /// directory restarts as after a crash.
    pub async fn halt(self) {
        self.handle
            .inner
            .shutting_down
            .store(true, Ordering::SeqCst);
        self.transport.shutdown();
        self.handle.inner.peers.stop();
        self.handle.inner.registry.stop_all().await;
        let _ = self.gossip_supervisor.send(StopSupervisor).await;
        self.log_store.do_send(StopLogStore);
        actix::clock::sleep(Duration::from_millis(20)).await;
        self.log_arbiter.stop();
        self.handle.inner.registry.stop_workers().await;
        for a in &self.transfer_arbiters {
            a.stop();
        }
    }

    /// Stops the groups, flushes the log and closes the transport.
    pub async fn shutdown(self) {
        self.handle
            .inner
            .shutting_down
            .store(true, Ordering::SeqCst);
        // Tell the cluster first, while the transport is up: members mark this node `left`
        // instead of suspecting it.
        self.handle.leave_gossip().await;
        self.handle.inner.registry.stop_all().await;
        let _ = self.gossip_supervisor.send(StopSupervisor).await;
        self.handle.inner.peers.stop();
        // Let the log store finish what is queued, then stop it (it syncs on stopping).
        actix::clock::sleep(Duration::from_millis(20)).await;
        self.log_store.do_send(StopLogStore);
        actix::clock::sleep(Duration::from_millis(20)).await;
        self.log_arbiter.stop();
        // An applier stuck in its storage engine does not hold this up: stopping an arbiter
        // only asks its thread to end.
        self.handle.inner.registry.stop_workers().await;
        for a in &self.transfer_arbiters {
            a.stop();
        }
        self.transport.shutdown();
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct StopLogStore;

impl Handler<StopLogStore> for LogStoreActor {
    type Result = ();
    fn handle(&mut self, _: StopLogStore, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

struct Inner<M: StateMachine> {
    id: NodeId,
    config: Config,
    /// Links, allowlist, gossip's members and the member directory, following the replicated
    /// membership.
    peers: Arc<Peers>,
    /// The groups this node hosts (created and removed at runtime).
    registry: Arc<GroupRegistry<M>>,
    ring: Ring,
    /// The shard map and router (`[ring] sharded`; `None`: group 0 serves every key).
    shards: Option<shards::Sharding<M>>,
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    shutting_down: std::sync::atomic::AtomicBool,
    /// Gossip's shared view and the live gossip actor.
    gossip: gossip::GossipHandle,
    /// The node's storage health: every storage component reports into it.
    health: Arc<StorageHealth>,
    /// Times storage calls and reports stalls into `health` (its thread ends with the node).
    watchdog: Arc<Watchdog>,
}

/// A cloneable handle to a running node: proposes writes, serves reads, reports status.
pub struct NodeHandle<M: StateMachine> {
    inner: Arc<Inner<M>>,
}

impl<M: StateMachine> Clone for NodeHandle<M> {
    fn clone(&self) -> Self {
        NodeHandle {
            inner: self.inner.clone(),
        }
    }
}

/// The environment variable that switches on the consensus core's planted bugs in a node
/// process: a comma-separated list of `conclave_core::raft::PlantedBugs` field names (e.g.
/// `lease_without_check_quorum`). Read only by binaries built with the test-only
/// `planted-bugs` feature; the chaos harness uses it to show that it catches them.
#[cfg(feature = "planted-bugs")]
pub const PLANTED_BUGS_ENV: &str = "CONCLAVE_PLANTED_BUGS";

/// The planted bugs [`PLANTED_BUGS_ENV`] names; an unknown name is an error that names it.
#[cfg(feature = "planted-bugs")]
fn planted_bugs() -> Result<conclave_core::raft::PlantedBugs, NodeError> {
    let mut bugs = conclave_core::raft::PlantedBugs::default();
    let Ok(list) = std::env::var(PLANTED_BUGS_ENV) else {
        return Ok(bugs);
    };
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match name {
            // The router's own (not the core's): see `planted_router_bug`.
            SHARD_READ_ON_ANY_REPLICA => {}
            "vote_without_log_check" => bugs.vote_without_log_check = true,
            "commit_previous_term_by_counting" => bugs.commit_previous_term_by_counting = true,
            "lease_read_after_expiry" => bugs.lease_read_after_expiry = true,
            "ack_before_persist" => bugs.ack_before_persist = true,
            "lease_without_check_quorum" => bugs.lease_without_check_quorum = true,
            other => return Err(NodeError::UnknownPlantedBug(other.to_owned())),
        }
    }
    Ok(bugs)
}

/// The router's planted bug (`node::shards`): every read of a key is served as a stale read
/// by whichever replica of its shard gets it first, so a follower that is behind (or cut off
/// from its leader) answers linearizable and lease reads with old values.
#[cfg(feature = "planted-bugs")]
const SHARD_READ_ON_ANY_REPLICA: &str = "shard_read_on_any_replica";

/// Whether [`PLANTED_BUGS_ENV`] names the router's planted bug.
#[cfg(feature = "planted-bugs")]
fn planted_router_bug() -> bool {
    std::env::var(PLANTED_BUGS_ENV).is_ok_and(|list| {
        list.split(',')
            .map(str::trim)
            .any(|n| n == SHARD_READ_ON_ANY_REPLICA)
    })
}

fn raft_config(config: &Config, group: GroupId) -> RaftConfig {
    let r = &config.raft;
    RaftConfig {
        // Validated (with a clear error) by `start_node` before any group starts.
        #[cfg(feature = "planted-bugs")]
        planted_bugs: planted_bugs().unwrap_or_default(),
        id: config.node.id,
        group,
        election_timeout_min_ms: r.election_timeout_ms[0],
        election_timeout_max_ms: r.election_timeout_ms[1],
        heartbeat_interval_ms: r.heartbeat_interval_ms,
        pre_vote: r.pre_vote,
        check_quorum: r.check_quorum,
        max_entries_per_append: r.max_entries_per_append,
        // Keep appends well inside a transport frame.
        max_bytes_per_append: (config.node.max_frame_size / 2).max(1024),
        lease_ms: r.read.lease_ms,
        keep_entries: config.snapshot.keep_entries,
        promote_max_lag: r.promote_max_lag,
        learner_catch_up_bytes_per_s: r.learner_catch_up_mb_s.saturating_mul(1_000_000),
        ..RaftConfig::default()
    }
}

async fn start_node<M: StateMachine>(
    config: Config,
    factory: (MachineFactory<M>, bool),
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    codec: Option<Arc<dyn shards::RouteCodec<M>>>,
) -> Result<Node<M>, NodeError> {
    let id = config.node.id;
    #[cfg(feature = "planted-bugs")]
    {
        let bugs = planted_bugs()?;
        if bugs != conclave_core::raft::PlantedBugs::default() {
            tracing::warn!(node = %id, ?bugs, "PLANTED BUGS SWITCHED ON (test build)");
        }
        if planted_router_bug() {
            tracing::warn!(
                node = %id,
                bug = SHARD_READ_ON_ANY_REPLICA,
                "PLANTED ROUTER BUG SWITCHED ON (test build)"
            );
        }
    }
    let raft0 = raft_config(&config, GroupId::FIRST);
    raft0.validate()?;
    std::fs::create_dir_all(&config.node.data_dir)?;
    // The bootstrap membership: the initial members, or nobody on a node that joins an
    // existing cluster (it waits until the membership replicated to it names it).
    let members: BTreeMap<NodeId, MemberConfig> = config
        .bootstrap_members()
        .into_iter()
        .map(|m| (m.id, m))
        .collect();
    if !config.cluster.join && !members.contains_key(&id) {
        return Err(NodeError::NotAnInitialMember { id });
    }
    // It carries the initial members' addresses, so every membership entry derived from it
    // does too.
    let mut base_membership = Membership::with_voters(members.keys().copied());
    base_membership.addrs = members
        .values()
        .map(|m| {
            (
                m.id,
                conclave_core::raft::MemberAddr {
                    raft: m.addr,
                    http: m.http,
                },
            )
        })
        .collect();
    // Sharded, group 0 also holds the shard map (`shards::meta`): at most
    // `MAX_METADATA_VOTERS` of its members vote, the others replicate it as learners.
    if config.ring.sharded {
        shards::group0_voters_and_learners(&mut base_membership);
    }
    // The persisted gossip incarnation, like the log: a corrupt file refuses to start before
    // anything listens.
    let incarnation = gossip::start_incarnation(&config)?;
    // The groups this node was a member of (a removed node says so after compaction).
    let member_marks = Arc::new(crate::storage::member_mark::MemberMarks::open(
        &config.node.data_dir,
    )?);
    // One health record per node; the watchdog times every storage call against it.
    let health = Arc::new(StorageHealth::new());
    let watchdog = Arc::new(Watchdog::start(
        health.clone(),
        Duration::from_millis(config.storage.stall_timeout_ms),
    )?);

    // Storage first: a corrupt log refuses to start before anything listens.
    let wal_options = WalOptions {
        max_record_bytes: (config.node.max_frame_size as u32).saturating_mul(2),
        segment_bytes: config.storage.wal_segment_bytes,
    };
    let (store, recovered) = LogStore::open(&config.node.data_dir.join("wal"), wal_options)?;
    let log_arbiter = Arbiter::new();
    name_thread(&log_arbiter.handle(), "log-store".to_owned());
    let p = config.raft.persistence.clone();
    let log_health = health.clone();
    let log_clock = watchdog.clock(log_store_actor::HEALTH_COMPONENT);
    let (ring_sharded, ring_shards) = (config.ring.sharded, config.ring.shards);
    let log_store = LogStoreActor::start_in_arbiter(&log_arbiter.handle(), move |_| {
        LogStoreActor::new(
            store,
            recovered,
            p.strategy,
            p.flush_threshold,
            p.flush_interval_ms,
            log_health,
        )
        .with_stall_clock(log_clock)
        .with_sharding(ring_sharded, ring_shards)
    });

    // Transport.
    let mut tcfg = TransportConfig::new(id, config.cluster.id.clone(), config.node.listen);
    tcfg.max_frame_size = config.node.max_frame_size;
    tcfg.max_queue_size = config.node.max_queue_size;
    tcfg.read_timeout = Duration::from_secs(config.node.read_timeout_s);
    tcfg.keepalive_interval = (tcfg.read_timeout / 3).max(Duration::from_millis(100));
    tcfg.max_connections = config.node.max_connections;
    tcfg.max_queue_bytes = config.node.max_queue_bytes;
    tcfg.write_timeout = tcfg.read_timeout;
    // Only members of the cluster's configuration may connect (issue 12, finding 2; issue 14:
    // a node is admitted once it is being added), whether or not peers authenticate; the
    // allowlist then follows the replicated membership and the members' vouches (`peers`), so
    // a node that lags behind a membership change still hears a leader that change added. A
    // joining node admits any peer until a membership reaches it.
    tcfg.allowed_peers = peers::allowlist([&base_membership]);
    tcfg.secret = config
        .cluster
        .secret
        .as_ref()
        .map(|s| conclave_transport::ClusterSecret::new(s.0.as_bytes()));
    tcfg.backoff_cap = Duration::from_secs(1);
    if let Some(tls) = &config.tls {
        tcfg.tls = Some(conclave_transport::TlsConfig {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            ca: tls.ca.clone(),
            server_name: None,
        });
    }
    let (inbound_tx, mut inbound_rx) = conclave_transport::inbound::<WireMessage>(INBOUND_BATCHES);
    let (transport, _) = Transport::bind(tcfg, inbound_tx).await?;
    let transport = Arc::new(transport);

    // Gossip.
    let epoch = Instant::now();
    let endpoint: Arc<dyn Endpoint<WireMessage>> = transport.clone();
    let gossip_deps = gossip::prepare(&config, endpoint.clone(), epoch, incarnation);

    let (gossip, gossip_supervisor) = start_gossip(gossip_deps);
    let peers = Peers::new(
        MemberConfig {
            id,
            addr: config.node.listen,
            http: config.node.http,
        },
        members.clone(),
        transport.clone(),
        gossip.shared.clone(),
        gossip.actor.clone(),
    );

    // Snapshot transfers: each side on an arbiter of its own (they read and write files).
    let send_arbiter = Arbiter::new();
    let receive_arbiter = Arbiter::new();
    // Their work (reading an image and streaming it, receiving and writing one) is background
    // work: the Raft workers, the WAL's syncs and the other nodes sharing the machine go
    // first; a transfer slowed down is timed by its own deadlines, never by the group's. Nice
    // 10 rather than `SCHED_IDLE`: a saturated machine slows a transfer, never stops it.
    for (a, name) in [
        (&send_arbiter, "snap-send"),
        (&receive_arbiter, "snap-receive"),
    ] {
        a.spawn_fn(crate::storage::background_io::lower_thread_priority_unstarved);
        name_thread(&a.handle(), name.to_owned());
    }
    let snapshot_sender =
        transfer_actor::SnapshotSender::new(id, transfer_limits(&config), send_arbiter.handle());
    // Where a peer's transport listens, for snapshot chunks and acks: the member directory,
    // which follows the replicated membership (a node added at runtime is found there).
    let peer_addrs: transfer_actor::PeerAddrs = {
        let peers = peers.clone();
        Arc::new(move |peer| peers.member(peer).map(|m| m.addr))
    };
    let snapshot_receiver = {
        let addrs = peer_addrs.clone();
        let endpoint = endpoint.clone();
        transfer_actor::SnapshotReceiver::start_in_arbiter(&receive_arbiter.handle(), move |_| {
            transfer_actor::SnapshotReceiver::new(id, endpoint, addrs)
        })
    };
    let transfer_arbiters = vec![send_arbiter, receive_arbiter];

    // Groups: the cluster's first group (replicated on every initial member) and the groups
    // created on this node at runtime (`data_dir/group-list`).
    let group_list = Arc::new(crate::storage::group_list::GroupList::open(
        &config.node.data_dir,
    )?);
    // Keeps a core out of its halt while writes come (`[node] idle_poll_us`).
    let idle_poller =
        match idle_poll::IdlePoller::start(Duration::from_micros(config.node.idle_poll_us)) {
            Ok(p) => p,
            Err(e) => {
                // Only latency is lost: hand-offs then wait for halted cores to wake.
                tracing::warn!(error = %e, "cannot start the idle-poll thread");
                None
            }
        };
    // The Raft workers: every group's core is driven by worker `group % workers`, its shell
    // runs on that worker's arbiter; appliers and snapshotters on pools of the same size.
    let workers = Arc::new(worker::Workers::start(
        config.raft.workers,
        Arc::new(worker::WorkerDeps {
            id,
            heartbeat_interval_ms: config.raft.heartbeat_interval_ms,
            quiesce: config.raft.quiesce,
            peers: peers.clone(),
            gossip: gossip.shared.clone(),
            epoch,
            frame_bytes: (config.node.max_frame_size / 2).max(1024),
            cell_key: worker::next_cell_key(),
            idle_poll: idle_poller.as_ref().map(idle_poll::IdlePoller::handle),
        }),
        Arbiter::current(),
    ));
    let pool = |n: usize, role: &str| {
        (0..n.max(1))
            .map(|i| {
                let a = Arbiter::new();
                name_thread(&a.handle(), format!("{role}-{i}"));
                a
            })
            .collect::<Vec<_>>()
    };
    let (factory, any_group) = factory;
    let registry = Arc::new(GroupRegistry::new(
        registry::GroupSpawner {
            config: config.clone(),
            peers: peers.clone(),
            log_store: log_store.clone(),
            factory,
            any_group,
            watchdog: watchdog.clone(),
            member_marks: member_marks.clone(),
            transfer: registry::GroupTransferDeps {
                sender: snapshot_sender.clone(),
                receiver: snapshot_receiver.clone(),
                endpoint: endpoint.clone(),
                addrs: peer_addrs.clone(),
            },
            epoch,
            arbiter: Arbiter::current(),
            workers: workers.clone(),
            appliers: pool(config.raft.workers, "applier"),
            snapshotters: pool(config.raft.workers, "snapshotter"),
        },
        group_list,
    ));
    registry.start_listed(&base_membership)?;

    let ring_cfg = RingConfig {
        vnodes: config.ring.vnodes as u32,
        shards: config.ring.shards,
        replication_factor: config.ring.replication_factor as u32,
        ..RingConfig::default()
    };
    // The ring shows placement over the bootstrap members (this node alone on a joining node).
    let ring_nodes: Vec<NodeId> = if members.is_empty() {
        vec![id]
    } else {
        members.keys().copied().collect()
    };
    let ring = Ring::with_nodes(ring_cfg, ring_nodes.iter().map(|&n| (n, DEFAULT_WEIGHT)))?;

    // Shards: the stored map (else the bootstrap map, stored now) and this node's shard groups.
    let sharding = if config.ring.sharded {
        if !any_group {
            return Err(ShardSetupError::OneMachineOnly.into());
        }
        let codec = codec.ok_or(ShardSetupError::NotShardable)?;
        // A node that joins has no initial members to place shards on: it takes group 0's
        // committed map once it replicates group 0 (its stored copy after a restart).
        let map = if config.cluster.join {
            crate::storage::shard_map_file::load(&config.node.data_dir)
                .map_err(ShardSetupError::from)?
        } else {
            Some(shards::load_or_bootstrap(&config.node.data_dir, &ring)?)
        };
        match &map {
            Some(map) => {
                let mine = shards::my_groups(map, id, &base_membership.addrs)?;
                registry.start_groups(mine)?;
                tracing::info!(
                    node = %id,
                    version = map.version(),
                    shards = %map.shard_count(),
                    hosted = %map.shards_of(id).count(),
                    "shard map loaded"
                );
            }
            None => tracing::info!(
                node = %id,
                "joining a sharded cluster: the shard map comes from group 0"
            ),
        }
        Some(shards::Sharding {
            router: Arc::new(shards::ShardRouter::new(
                id,
                config.node.max_hops,
                config.node.data_dir.clone(),
                map,
                #[cfg(feature = "planted-bugs")]
                planted_router_bug(),
            )),
            codec,
        })
    } else {
        None
    };
    let dispatch_shards = sharding.as_ref().map(|s| s.router.clone());

    // Inbound dispatch by group id, through the registry (groups come and go at runtime).
    let dispatch = registry.clone();
    let gossip_slot = gossip.actor.clone();
    let inbound_sender = snapshot_sender.clone();
    let dispatch_peers = peers.clone();
    actix::spawn(async move {
        while let Some((from, msg)) = inbound_rx.recv().await {
            // Gossip and members notices are heard from members only; Raft messages and
            // snapshot chunks also from a peer a member vouches for (a leader this node's log
            // does not know yet). A connection opened before the peer was removed may still
            // deliver a few frames until it is closed: not heard.
            let heard = match &msg {
                WireMessage::Swim(_) | WireMessage::Members(_) => dispatch_peers.admits(from),
                // Client requests are forwarded by members only (a vouched-for peer that no
                // membership names yet is not one).
                WireMessage::Forward(_) | WireMessage::ForwardReply(_) => {
                    dispatch_peers.is_member(from)
                }
                _ => dispatch_peers.admits_raft(from),
            };
            if !heard {
                metrics::counter!("conclave_raft_messages_dropped_total", "reason" => "not_member")
                    .increment(1);
                continue;
            }
            match msg {
                WireMessage::Swim(m) => {
                    if m.from != from {
                        tracing::warn!(
                            %from,
                            claimed = %m.from,
                            "gossip frame with a forged sender dropped"
                        );
                        metrics::counter!("conclave_gossip_frames_dropped_total", "reason" => "forged_sender")
                            .increment(1);
                        continue;
                    }
                    // Best effort, never blocking the Raft traffic behind it: SWIM tolerates
                    // a lost frame like any lost datagram.
                    let reason = match gossip_slot.get() {
                        Some(addr) => match addr.try_send(gossip::SwimInbound(m)) {
                            Ok(()) => continue,
                            Err(_) => "mailbox_full",
                        },
                        None => "not_running",
                    };
                    metrics::counter!("conclave_gossip_frames_dropped_total", "reason" => reason)
                        .increment(1);
                }
                WireMessage::Raft(m) => {
                    // One message (a peer that sends them one by one): a frame of one.
                    let frame = Frame {
                        from: m.from,
                        to: id,
                        messages: vec![m],
                        ..Frame::default()
                    };
                    route_frame(&dispatch, from, frame).await;
                }
                WireMessage::RaftFrame(frame) => route_frame(&dispatch, from, frame).await,
                WireMessage::SnapshotChunk(chunk) => {
                    // Never waits: a chunk the receiver has no room for is dropped (its sender
                    // times out and asks where the receiver stands), so snapshot data never
                    // holds up the Raft messages behind it on this connection.
                    if snapshot_receiver
                        .try_send(transfer_actor::ChunkIn { from, chunk })
                        .is_err()
                    {
                        metrics::counter!("conclave_snapshot_chunks_dropped_total", "reason" => "receiver_busy")
                            .increment(1);
                    }
                }
                WireMessage::SnapshotAck(ack) => inbound_sender.on_ack(from, ack),
                WireMessage::Forward(req) => match &dispatch_shards {
                    Some(router) => router.on_request(from, req),
                    None => metrics::counter!("conclave_shard_forwards_refused_total", "reason" => "not_sharded")
                        .increment(1),
                },
                WireMessage::ForwardReply(reply) => {
                    if let Some(router) = &dispatch_shards {
                        router.on_reply(from, reply);
                    }
                }
                WireMessage::Members(notice) => {
                    if let Err(e) = dispatch_peers.vouch(from, notice) {
                        tracing::warn!(error = %e, "members notice dropped");
                        metrics::counter!("conclave_raft_messages_dropped_total", "reason" => "bad_notice")
                            .increment(1);
                    }
                }
            }
        }
    });
    spawn_introductions(&peers);

    let handle = NodeHandle {
        inner: Arc::new(Inner {
            id,
            config,
            peers,
            registry,
            ring,
            shards: sharding,
            prometheus,
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            gossip,
            health,
            watchdog,
        }),
    };
    spawn_metrics_upkeep(&handle);
    balance::spawn(&handle);
    handle.serve_forwarded_requests();
    handle.spawn_map_watch();
    Ok(Node {
        handle,
        transport,
        gossip_supervisor,
        log_store,
        log_arbiter,
        transfer_arbiters,
        _idle_poller: idle_poller,
        _trimmer: match memory_trim::MemoryTrimmer::start(memory_trim::TRIM_EVERY) {
            Ok(t) => Some(t),
            Err(e) => {
                // The node works without it; its RSS then stays at its high-water mark.
                tracing::warn!(error = %e, "cannot start the memory-trim thread");
                None
            }
        },
    })
}

/// Sends this node's members notice to every member every [`peers::INTRODUCE_INTERVAL`] until
/// the node stops (see `peers`: how a lagging member admits a member added after its log ends).
fn spawn_introductions(peers: &Arc<Peers>) {
    let peers = Arc::downgrade(peers);
    actix::spawn(async move {
        let mut every = actix::clock::interval(peers::INTRODUCE_INTERVAL);
        loop {
            every.tick().await;
            let Some(peers) = peers.upgrade() else {
                return;
            };
            if !peers.introduce() {
                return;
            }
        }
    });
}

/// Hands a peer's frame to the workers of its groups: the frame's sender must be the
/// authenticated peer (`from`), items with a term near overflow or for a group not hosted here
/// are dropped (and counted), and a frame for groups of several workers is split, one part per
/// worker. A full worker mailbox pushes back on the socket.
async fn route_frame<M: StateMachine>(registry: &GroupRegistry<M>, from: NodeId, frame: Frame) {
    if frame.from != from {
        // The handshake authenticated `from`; a frame claiming another sender is forged or
        // buggy.
        tracing::warn!(
            %from,
            claimed = %frame.from,
            "raft frame with a forged sender dropped"
        );
        metrics::counter!("conclave_raft_messages_dropped_total", "reason" => "forged_sender")
            .increment(1);
        return;
    }
    let workers = registry.workers();
    let n = workers.len();
    let mut parts: Vec<Frame> = (0..n)
        .map(|_| Frame {
            from: frame.from,
            to: frame.to,
            ..Frame::default()
        })
        .collect();
    fn dropped(reason: &'static str) {
        metrics::counter!("conclave_raft_messages_dropped_total", "reason" => reason).increment(1);
    }
    let term_ok = |term: u64| {
        // The core refuses it too; counted here (issue 12, finding 3).
        let ok = term <= conclave_core::raft::MAX_TERM;
        if !ok {
            tracing::warn!(%from, term, "raft message with a term near overflow dropped");
            dropped("term_overflow");
        }
        ok
    };
    let hosted = |group: GroupId| {
        let ok = registry.contains(group);
        if !ok {
            dropped("unknown_group");
        }
        ok
    };
    for m in frame.messages {
        if m.from != from {
            tracing::warn!(
                %from,
                claimed = %m.from,
                "raft message with a forged sender dropped"
            );
            dropped("forged_sender");
            continue;
        }
        if term_ok(m.term) && hosted(m.group) {
            parts[workers.index(m.group)].messages.push(m);
        }
    }
    for hb in frame.heartbeats {
        if term_ok(hb.term) && hosted(hb.group) {
            parts[workers.index(hb.group)].heartbeats.push(hb);
        }
    }
    for r in frame.responses {
        if term_ok(r.term) && hosted(r.group) {
            parts[workers.index(r.group)].responses.push(r);
        }
    }
    for g in frame.wake {
        if hosted(g) {
            parts[workers.index(g)].wake.push(g);
        }
    }
    for (index, part) in parts.into_iter().enumerate() {
        if part.is_empty() {
            continue;
        }
        let Some(addr) = workers.worker(index) else {
            // Restarting: Raft retransmits.
            dropped("worker_restarting");
            continue;
        };
        if let Err(SendError::Full(msg)) = addr.try_send(worker::InboundFrame(part)) {
            // Push back on the socket: wait for room instead of buffering.
            let _ = addr.send(msg).await;
        }
    }
}

/// How often the Prometheus recorder's histogram samples are folded into its summaries.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Folds the recorder's pending histogram samples into its summaries every
/// [`METRICS_UPKEEP`], for as long as the node lives.
///
/// Why: the recorder queues every histogram sample (one per HTTP request, one per WAL batch)
/// until it is rendered; `install_recorder` starts no upkeep task, so a node nobody scrapes
/// grew by ~25 bytes per write without bound (found by `tests/bounded.rs`: +9 MB RSS over
/// 360,000 writes on a node whose live data is 1 MB).
fn spawn_metrics_upkeep<M: StateMachine>(handle: &NodeHandle<M>) {
    if handle.inner.prometheus.is_none() {
        return;
    }
    let inner = Arc::downgrade(&handle.inner);
    actix::spawn(async move {
        let mut every = actix::clock::interval(METRICS_UPKEEP);
        loop {
            every.tick().await;
            let Some(inner) = inner.upgrade() else {
                return;
            };
            if let Some(p) = &inner.prometheus {
                p.run_upkeep();
            }
        }
    });
}

/// Starts the gossip actor under its own one-for-one supervisor.
fn start_gossip(deps: Arc<gossip::GossipDeps>) -> (gossip::GossipHandle, Addr<Supervisor>) {
    let slot: Slot<gossip::GossipActor> = Slot::new();
    let handle = gossip::GossipHandle {
        shared: deps.shared.clone(),
        actor: slot.clone(),
    };
    let f: Factory = Box::new(
        move |guard| match gossip::GossipActor::new(deps.clone(), guard) {
            Ok(actor) => {
                let addr = actor.start();
                slot.set(addr.clone());
                Box::new(move || addr.do_send(StopActor))
            }
            Err(e) => {
                // The guard was dropped with the error: the supervisor retries with backoff.
                tracing::error!(error = %e, "cannot start gossip");
                Box::new(|| {})
            }
        },
    );
    let supervisor = SupervisorBuilder::new("gossip")
        .policy(RestartPolicy {
            strategy: Strategy::OneForOne,
            ..RestartPolicy::default()
        })
        .child("gossip", f)
        .start();
    (handle, supervisor)
}

/// The sender's limits from `[snapshot]`.
fn transfer_limits(config: &Config) -> transfer_actor::SendLimits {
    let s = &config.snapshot;
    transfer_actor::SendLimits {
        chunk_bytes: s.chunk_bytes,
        bytes_per_s: s.max_send_rate_mb_s.saturating_mul(1_000_000),
        max_concurrent: s.max_concurrent_sends,
        // A chunk lost with its connection is noticed after this; the transport itself takes
        // up to `read_timeout_s` to notice a dead connection.
        ack_timeout: (Duration::from_secs(config.node.read_timeout_s) / 3)
            .max(Duration::from_secs(1)),
    }
}

/// Stops any of the node's actors (sent by supervisors on shutdown and one-for-all restarts).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopActor;

impl<M: StateMachine> Handler<StopActor> for ApplierActor<M> {
    type Result = ();
    fn handle(&mut self, _: StopActor, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<StopActor> for SnapshotterActor {
    type Result = ();
    fn handle(&mut self, _: StopActor, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl<M: StateMachine> Handler<StopActor> for GroupActor<M> {
    type Result = ();
    fn handle(&mut self, _: StopActor, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

fn to_consistency(level: ReadLevel) -> ReadConsistency {
    match level {
        ReadLevel::Linearizable => ReadConsistency::Linearizable,
        ReadLevel::Lease => ReadConsistency::Lease,
        ReadLevel::Stale => ReadConsistency::Stale,
    }
}

fn role_str(role: Option<Role>) -> String {
    match role {
        Some(Role::Leader) => "leader",
        Some(Role::Candidate) | Some(Role::PreCandidate) => "candidate",
        Some(Role::Learner) => "learner",
        Some(Role::Follower) | None => "follower",
    }
    .to_owned()
}

async fn await_reply<T>(rx: oneshot::Receiver<Result<T, RequestError>>) -> Result<T, RequestError> {
    match actix::clock::timeout(REQUEST_TIMEOUT, rx).await {
        Ok(Ok(result)) => result,
        // The actor holding the reply went away (restarting): the outcome is unknown.
        Ok(Err(_)) => Err(RequestError::Timeout),
        Err(_) => Err(RequestError::Timeout),
    }
}

impl<M: StateMachine> NodeHandle<M> {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The node's configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Creates Raft group `group` on this node with `voters` (this node among them) and starts
    /// it; it is listed durably, so the node hosts it again after a restart. Call it on every
    /// voter with the same voters: the group elects a leader once a majority hosts it. Needs a
    /// state machine per group ([`NodeBuilder::state_machine`] or
    /// [`NodeBuilder::state_machine_for_groups`]).
    pub async fn create_group(
        &self,
        group: GroupId,
        voters: impl IntoIterator<Item = NodeId>,
    ) -> Result<(), GroupRegistryError> {
        if self.inner.shutting_down.load(Ordering::Relaxed) {
            return Err(GroupRegistryError::ShuttingDown);
        }
        self.refuse_shard_group(group)?;
        self.inner
            .registry
            .create(group, voters.into_iter().collect())
            .await
    }

    /// Stops hosting group `group` (not group 0) and unlists it. Its log records and snapshot
    /// files stay on disk: creating the group again resumes from them.
    pub async fn remove_group(&self, group: GroupId) -> Result<(), GroupRegistryError> {
        self.refuse_shard_group(group)?;
        self.inner.registry.remove(group).await
    }

    /// Shard groups come and go with the shard map, never through `create_group` or
    /// `remove_group`.
    fn refuse_shard_group(&self, group: GroupId) -> Result<(), GroupRegistryError> {
        match &self.inner.shards {
            // Without a map yet (joined): every group a map of `[ring] shards` would use.
            Some(s)
                if s.router.map().map_or(
                    conclave_ring::shard_of_group(group, self.inner.config.ring.shards).is_some(),
                    |m| m.is_shard_group(group),
                ) =>
            {
                Err(GroupRegistryError::ShardGroup(group))
            }
            _ => Ok(()),
        }
    }

    /// The groups this node hosts, in id order.
    pub fn groups(&self) -> Vec<GroupId> {
        self.inner
            .registry
            .entries()
            .into_iter()
            .map(|(g, _)| g)
            .collect()
    }

    fn group(&self, group: GroupId) -> Result<Arc<registry::GroupEntry<M>>, RequestError> {
        self.inner
            .registry
            .get(group)
            .ok_or(RequestError::NoLeader { group })
    }

    /// Proposes `command` to group 0 and waits until it is committed and applied here.
    pub async fn write(&self, command: M::Command) -> Result<WriteResult<M::Output>, RequestError> {
        self.write_to(GroupId::FIRST, command).await
    }

    /// Proposes `command` to `group` and waits until it is committed and applied here.
    pub async fn write_to(
        &self,
        group: GroupId,
        command: M::Command,
    ) -> Result<WriteResult<M::Output>, RequestError> {
        self.admit()?;
        let bytes = rmp_serde::to_vec(&command)
            .map_err(|e| RequestError::from(InternalError::failed(e)))?;
        self.ask_group(group, |reply| Propose::<M> {
            command: bytes,
            reply,
        })
        .await
    }

    /// Refuses a request this node cannot serve before it starts: shutting down, or storage
    /// that failed or stalled (a stalled applier would leave the request hanging; a failed
    /// store cannot make a write durable). The refusal is a 503: nothing was applied.
    fn admit(&self) -> Result<(), RequestError> {
        if self.inner.shutting_down.load(Ordering::Relaxed) {
            return Err(RequestError::ShuttingDown);
        }
        match self.inner.health.condition() {
            StorageCondition::Healthy => Ok(()),
            StorageCondition::Failed { component, error } => {
                Err(RequestError::StorageFailed { component, error })
            }
            StorageCondition::Stalled { component, for_ms } => {
                Err(RequestError::StorageStalled { component, for_ms })
            }
        }
    }

    /// Runs `query` on group 0 at the given consistency.
    pub async fn read(
        &self,
        query: M::Query,
        consistency: ReadLevel,
    ) -> Result<M::QueryOutput, RequestError> {
        self.read_from(GroupId::FIRST, query, consistency).await
    }

    /// Runs `query` on `group` at the given consistency.
    pub async fn read_from(
        &self,
        group: GroupId,
        query: M::Query,
        consistency: ReadLevel,
    ) -> Result<M::QueryOutput, RequestError> {
        self.admit()?;
        self.ask_group(group, |reply| Read::<M> {
            query,
            consistency: to_consistency(consistency),
            reply,
        })
        .await
    }

    /// [`NodeHandle::ask_group`] to group 0 (the cluster's membership and configuration).
    async fn ask<T, Req>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, RequestError>>) -> Req,
    ) -> Result<T, RequestError>
    where
        Req: actix::Message + Send + 'static,
        Req::Result: Send,
        GroupActor<M>: Handler<Req>,
        <GroupActor<M> as Actor>::Context: actix::dev::ToEnvelope<GroupActor<M>, Req>,
    {
        self.ask_group(GroupId::FIRST, make).await
    }

    /// Sends `group`'s actor a request carrying a reply channel and waits (bounded) for the
    /// answer. A full mailbox is `Overloaded` (503), never a wait.
    async fn ask_group<T, Req>(
        &self,
        group: GroupId,
        make: impl FnOnce(oneshot::Sender<Result<T, RequestError>>) -> Req,
    ) -> Result<T, RequestError>
    where
        Req: actix::Message + Send + 'static,
        Req::Result: Send,
        GroupActor<M>: Handler<Req>,
        <GroupActor<M> as Actor>::Context: actix::dev::ToEnvelope<GroupActor<M>, Req>,
    {
        let addr = self
            .group(group)?
            .actor
            .get()
            .ok_or(RequestError::NoLeader { group })?;
        let (reply, rx) = oneshot::channel();
        match addr.try_send(make(reply)) {
            Ok(()) => await_reply(rx).await,
            Err(SendError::Full(_)) => {
                metrics::counter!("conclave_mailbox_rejected_total", "actor" => "raft")
                    .increment(1);
                Err(RequestError::Overloaded)
            }
            Err(SendError::Closed(_)) => Err(RequestError::NoLeader { group }),
        }
    }

    /// Asks group 0's leader (this node) to hand leadership to `to`.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), RequestError> {
        let group = self.group(GroupId::FIRST)?;
        let addr = group.actor.get().ok_or(RequestError::NoLeader {
            group: GroupId::FIRST,
        })?;
        let (reply, rx) = oneshot::channel();
        addr.try_send(group::TransferLeader { to, reply })
            .map_err(|_| RequestError::Overloaded)?;
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(RequestError::Timeout),
        }
    }

    /// Takes a snapshot of `group`'s state machine on this node now (or answers the latest
    /// one when nothing was applied since), compacting the log behind it.
    pub async fn take_snapshot(&self, group: GroupId) -> Result<SnapshotInfo, SnapshotError> {
        let addr = self
            .inner
            .registry
            .actor(group)
            .ok_or(SnapshotError::NotRunning { group })?;
        let (reply, rx) = oneshot::channel();
        addr.try_send(TakeSnapshotNow { reply })
            .map_err(|_| SnapshotError::NotRunning { group })?;
        rx.await.map_err(|_| SnapshotError::Stopped {
            group,
            actor: "group actor",
        })?
    }

    /// The cluster as this node sees it.
    pub fn cluster_status(&self) -> ClusterStatus {
        let groups: Vec<GroupStatus> = self
            .inner
            .registry
            .entries()
            .iter()
            .map(|(id, g)| {
                let s = g.shared.snapshot.read().clone();
                GroupStatus {
                    id: *id,
                    role: role_str(s.role),
                    leader_id: s.leader,
                    term: s.term,
                    commit_index: s.commit_index,
                    applied_index: g.shared.applied.load(Ordering::Relaxed),
                    snapshot_index: g
                        .shared
                        .last_snapshot
                        .read()
                        .as_ref()
                        .map_or(0, |s| s.index),
                    voters: s.membership.voters.iter().copied().collect(),
                    learners: s.membership.learners.iter().copied().collect(),
                    replicas: s
                        .progress
                        .iter()
                        .filter(|(peer, _)| *peer != self.inner.id)
                        .map(|&(peer, matched)| ReplicaStatus {
                            id: peer,
                            match_index: matched,
                            lag: s.last_index.saturating_sub(matched),
                            learner: s.membership.learners.contains(&peer),
                        })
                        .collect(),
                    membership: s.membership_state,
                }
            })
            .collect();
        // The node-wide fields are group 0's (the cluster's membership group).
        let g0 = groups.iter().find(|g| g.id == GroupId::FIRST).cloned();
        ClusterStatus {
            node_id: self.inner.id,
            role: g0
                .as_ref()
                .map(|g| g.role.clone())
                .unwrap_or_else(|| "follower".into()),
            term: g0.as_ref().map(|g| g.term).unwrap_or(0),
            leader_id: g0.as_ref().and_then(|g| g.leader_id),
            commit_index: g0.as_ref().map(|g| g.commit_index).unwrap_or(0),
            applied_index: g0.as_ref().map(|g| g.applied_index).unwrap_or(0),
            members: self.member_states(),
            membership: g0.as_ref().map(|g| g.membership).unwrap_or_default(),
            groups,
            storage: self.inner.health.condition(),
        }
    }

    /// The node's storage health record, shared by every storage component (the state
    /// machine's applier, and the Raft log store once it reports into it).
    pub fn storage_health(&self) -> Arc<StorageHealth> {
        self.inner.health.clone()
    }

    /// The node's stall watchdog: hands out clocks that time storage calls of one component.
    pub fn storage_watchdog(&self) -> Arc<Watchdog> {
        self.inner.watchdog.clone()
    }

    /// Member states from gossip (SWIM): every member this node's failure detector knows,
    /// then configured members it has forgotten (reported `dead`).
    fn member_states(&self) -> Vec<MemberStatus> {
        gossip::member_statuses(
            &self.inner.gossip.shared.members(),
            &self.inner.peers.directory(),
        )
    }

    /// Whether every group knows a leader and has applied close to its commit index, and the
    /// node's storage is healthy (no call stalled past the timeout, no failed write).
    pub fn readiness_now(&self) -> Readiness {
        let mut reasons = Vec::new();
        let storage = self.inner.health.condition();
        match &storage {
            StorageCondition::Healthy => {}
            StorageCondition::Stalled { component, for_ms } => reasons.push(format!(
                "storage: a call of {component} has not returned for {for_ms} ms"
            )),
            StorageCondition::Failed { component, error } => {
                reasons.push(format!("storage: {component} failed: {error}"))
            }
        }
        let mut code = None;
        for (id, g) in &self.inner.registry.entries() {
            let s = g.shared.snapshot.read();
            match s.membership_state {
                MembershipState::Member => {}
                MembershipState::NotAMember => {
                    reasons.push(format!(
                        "group {id}: this node is not a member yet (waiting to be added)"
                    ));
                    code.get_or_insert(MembershipState::NotAMember.as_str().to_owned());
                }
                MembershipState::Removed => {
                    reasons.push(format!(
                        "group {id}: this node was removed from the membership"
                    ));
                    code.get_or_insert(MembershipState::Removed.as_str().to_owned());
                }
            }
            if s.leader.is_none() {
                reasons.push(format!("group {id}: no known leader"));
            }
            let applied = g.shared.applied.load(Ordering::Relaxed);
            if s.commit_index.saturating_sub(applied) > 1000 {
                reasons.push(format!(
                    "group {id}: applied index {applied} is far behind commit index {}",
                    s.commit_index
                ));
            }
        }
        // A sharded node that joined serves no key until group 0 gave it the shard map.
        if self.inner.shards.is_some() && self.shard_map().is_none() {
            reasons.push("shards: no shard map yet (it comes from group 0)".to_owned());
        }
        Readiness {
            ready: reasons.is_empty(),
            reasons,
            storage,
            code,
        }
    }

    /// The leader of group 0 as this node knows it.
    pub fn leader(&self) -> Option<LeaderHint> {
        let g = self.inner.registry.get(GroupId::FIRST)?;
        let leader = g.shared.snapshot.read().leader?;
        let m = self.inner.peers.member(leader)?;
        Some(LeaderHint {
            id: m.id,
            http: m.http,
        })
    }

    #[cfg(any(test, feature = "fault-injection"))]
    /// Proposes a membership change of group 0 on this node, which must lead it (tests;
    /// operators use the HTTP routes). Returns the index the change was appended at.
    pub async fn inject_membership_change(
        &self,
        change: conclave_core::raft::MembershipChange,
    ) -> Result<u64, conclave_core::raft::ProposeError> {
        let not_leader = conclave_core::raft::ProposeError::NotLeader { leader: None };
        let Some(addr) = self.inner.registry.actor(GroupId::FIRST) else {
            return Err(not_leader);
        };
        let (reply, rx) = oneshot::channel();
        addr.send(group::InjectMembershipChange { change, reply })
            .await
            .map_err(|_| not_leader.clone())?;
        rx.await.unwrap_or(Err(not_leader))
    }

    #[cfg(any(test, feature = "fault-injection"))]
    /// Panics the applier of group 0 (fault injection).
    pub fn inject_applier_panic(&self) -> bool {
        self.inner
            .registry
            .get(GroupId::FIRST)
            .and_then(|g| g.applier.get())
            .map(|a| a.try_send(applier::InjectPanic).is_ok())
            .unwrap_or(false)
    }

    #[cfg(any(test, feature = "fault-injection"))]
    /// Panics the Raft worker that drives `group` (fault injection): the worker restarts with
    /// an empty host and its groups restart from storage.
    pub fn inject_worker_panic(&self, group: GroupId) -> bool {
        let workers = self.inner.registry.workers();
        workers
            .worker(workers.index(group))
            .map(|a| a.try_send(worker::InjectPanic).is_ok())
            .unwrap_or(false)
    }
}

impl KvService for NodeHandle<KvMachine> {
    fn node_id(&self) -> NodeId {
        self.inner.id
    }

    fn max_value_bytes(&self) -> usize {
        // A value travels inside one AppendEntries, which must fit a transport frame.
        (self.inner.config.node.max_frame_size / 2).saturating_sub(1024)
    }

    async fn write(
        &self,
        command: KvCommand,
        idempotency_key: Option<String>,
    ) -> Result<WriteResult<KvOutput>, RequestError> {
        // Sharded: to the key's shard, from any node; else group 0.
        self.write_routed(KvRequest {
            id: idempotency_key,
            op: command,
        })
        .await
    }

    async fn read(
        &self,
        key: Vec<u8>,
        consistency: Consistency,
    ) -> Result<Option<Vec<u8>>, RequestError> {
        self.read_routed(KvQuery::Get(key), consistency)
            .await?
            .map_err(|e| RequestError::from(InternalError::failed(e)))
    }

    fn default_consistency(&self) -> Consistency {
        self.inner.config.raft.read.default
    }

    async fn status(&self) -> ClusterStatus {
        self.cluster_status()
    }

    async fn members(&self) -> GossipMembers {
        self.gossip_members()
    }

    async fn readiness(&self) -> Readiness {
        self.readiness_now()
    }

    fn storage(&self) -> StorageCondition {
        self.inner.health.condition()
    }

    fn leader_hint(&self) -> Option<LeaderHint> {
        self.leader()
    }

    fn route(&self, key: &[u8]) -> KeyRoute {
        self.key_route(key)
    }

    async fn shards(&self) -> ShardsStatus {
        self.shards_status()
    }

    async fn transfer_leader(&self, to: NodeId) -> Result<(), RequestError> {
        NodeHandle::transfer_leader(self, to).await
    }

    async fn prefer_shard_leader(
        &self,
        shard: ShardId,
        node: NodeId,
        expected_version: Option<u64>,
    ) -> Result<ShardMapChange, RequestError> {
        NodeHandle::prefer_shard_leader(self, shard, node, expected_version).await
    }

    async fn take_snapshot(&self, group: GroupId) -> Result<SnapshotInfo, RequestError> {
        self.admit()?;
        NodeHandle::take_snapshot(self, group)
            .await
            .map_err(|e| match e {
                SnapshotError::Busy { group } => RequestError::SnapshotInProgress { group },
                SnapshotError::NotRunning { group } => RequestError::NoLeader { group },
                other => InternalError::failed(other).into(),
            })
    }

    fn has_group(&self, group: GroupId) -> bool {
        self.inner.registry.contains(group)
    }

    async fn change_config(
        &self,
        change: ConfigChange,
        expected_config_id: Option<u64>,
    ) -> Result<ChangeOutcome, RequestError> {
        NodeHandle::change_config(self, change, expected_config_id).await
    }

    async fn cluster_config(&self) -> Result<ClusterConfig, RequestError> {
        NodeHandle::cluster_config(self).await
    }

    fn is_member(&self, id: NodeId) -> bool {
        self.inner.peers.is_member(id)
    }

    async fn drain(&self, drained: bool) -> Result<DrainOutcome, RequestError> {
        NodeHandle::drain(self, drained).await
    }

    fn member_http(&self, id: NodeId) -> Option<std::net::SocketAddr> {
        self.inner.peers.member(id).map(|m| m.http)
    }

    fn render_metrics(&self) -> String {
        self.update_shard_metrics();
        self.inner
            .prometheus
            .as_ref()
            .map(|p| p.render())
            .unwrap_or_default()
    }
}
