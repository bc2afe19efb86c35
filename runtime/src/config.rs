//! Node configuration: one TOML file per node (DESIGN.md §9).
//!
//! Every key has a default, so an empty file is a valid single-node configuration. Unknown keys
//! and bad values are errors that name the key (`raft.election_timeout_ms: …`), because a typo
//! silently ignored in a distributed system's configuration is a production incident waiting to
//! happen.

use conclave_core::ids::NodeId;
use conclave_core::swim::{ConfigError as SwimConfigError, SwimConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A node's whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[node]`: identity, addresses and limits.
    pub node: NodeSection,
    /// `[cluster]`: who the cluster is made of and how to join it.
    pub cluster: ClusterSection,
    /// `[raft]`: consensus timing and batching.
    pub raft: RaftSection,
    /// `[gossip]`: SWIM membership and failure detection.
    pub gossip: GossipSection,
    /// `[ring]`: sharding.
    pub ring: RingSection,
    /// `[latency]`: the peer round-trip latency monitor (seed 000).
    pub latency: LatencySection,
    /// `[tls]`: mutual TLS between nodes (all three paths, or none).
    pub tls: Option<TlsSection>,
    /// `[storage]`: the state store's engine and the storage stall watchdog.
    pub storage: StorageSection,
    /// `[http]`: the HTTP API's TLS, bearer tokens and request budgets.
    pub http: HttpSection,
    /// `[snapshot]`: when snapshots are taken, how much log is kept after one, and how they
    /// are streamed to lagging followers.
    pub snapshot: SnapshotSection,
}

/// `[node]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// This node's id, unique in the cluster, never 0. Default 1.
    pub id: NodeId,
    /// Where the WAL, the state machine and snapshots live. Default `data`.
    pub data_dir: PathBuf,
    /// Transport (node-to-node) listen address. Default `127.0.0.1:7001`.
    pub listen: SocketAddr,
    /// HTTP API listen address. Default `127.0.0.1:7101`.
    pub http: SocketAddr,
    /// Most inbound transport connections accepted at once. Default 64.
    pub max_connections: usize,
    /// Most peers this node keeps links to. Default 64.
    pub max_peers: usize,
    /// Most times a request is forwarded between nodes before it is refused. Default 10.
    pub max_hops: u32,
    /// Outbound queue bound per peer, in messages. Default 5000.
    pub max_queue_size: usize,
    /// Largest transport frame, in bytes. Default 4 MiB (seed 000 uses 64 KiB for small
    /// control messages; Raft appends batch many entries, so conclave defaults larger).
    pub max_frame_size: usize,
    /// A peer silent for this long is considered gone and its connection closed; a write to a
    /// peer that accepts no bytes for this long closes the connection too. Default 10.
    pub read_timeout_s: u64,
    /// Outbound queue bound per peer, in bytes (encoded frames). At least `max_frame_size` + 4.
    /// Default 64 MiB.
    pub max_queue_bytes: usize,
    /// Lets a node whose `listen` or `http` address is not loopback start without transport
    /// TLS, HTTPS and bearer tokens (it logs a warning). Default false: such a node refuses to
    /// start (see [`Config::validate`]).
    pub allow_insecure: bool,
    /// For how long after the last write (µs) an idle-priority thread keeps a core running
    /// rather than halted, so the next write's thread hand-offs do not wait for a core to wake
    /// (`crate::node::idle_poll`). It takes only CPU time nothing else wants, but shows as up
    /// to one busy core per node while writes keep coming. 0 turns it off; at most
    /// [`MAX_IDLE_POLL_US`]. Default 1000.
    pub idle_poll_us: u64,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            id: NodeId::new(1),
            data_dir: PathBuf::from("data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7001)),
            http: SocketAddr::from(([127, 0, 0, 1], 7101)),
            max_connections: 64,
            max_peers: 64,
            max_hops: 10,
            max_queue_size: 5000,
            max_frame_size: 4 * 1024 * 1024,
            read_timeout_s: 10,
            max_queue_bytes: 64 << 20,
            allow_insecure: false,
            idle_poll_us: crate::node::idle_poll::DEFAULT_WINDOW_US,
        }
    }
}

/// One member of the initial cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// The member's node id.
    pub id: NodeId,
    /// Its transport address.
    pub addr: SocketAddr,
    /// Its HTTP address.
    pub http: SocketAddr,
}

/// `[cluster]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// The cluster's name; peers with another id are refused at the handshake. Default
    /// `conclave`.
    pub id: String,
    /// The voters a new cluster starts with (all nodes start as followers and elect a leader).
    /// Empty means a single-node cluster of this node.
    pub initial_members: Vec<MemberConfig>,
    /// Transport addresses of seed nodes to join through (gossip). Each must be the address
    /// of one of `initial_members` (the transport authenticates a peer by its node id, so a
    /// seed is dialled as that member). Empty (the default): every other initial member is a
    /// seed. On a joining node (`join = true`) they are the addresses of existing members:
    /// a seed is dialled once the replicated membership names the node listening there.
    pub seeds: Vec<SocketAddr>,
    /// This node joins an existing cluster instead of starting one: it starts with no Raft
    /// membership (no votes, no elections, `/readyz` 503 `not_a_member`) and waits until a
    /// member adds it, then follows the membership replicated to it. `initial_members` must
    /// be empty. Default false. `conclave init --join` writes it.
    pub join: bool,
    /// How often joins are retried until a seed answers, and how often a node that lost
    /// contact with everyone re-announces itself to its seeds and last known members.
    /// Default 2000 (seed 000).
    pub seed_retry_ms: u64,
    /// A secret shared by every node of the cluster (at least 16 bytes): peers prove they
    /// know it in the transport handshake (HMAC-SHA256 challenge-response; it never crosses
    /// the wire). Unset (the default): peers are authenticated by TLS certificates only, or,
    /// without TLS, not at all beyond the member allowlist. `conclave init` writes a random one.
    pub secret: Option<ClusterSecretString>,
}

/// `[cluster] secret`: a string whose `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClusterSecretString(pub String);

impl std::fmt::Debug for ClusterSecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            id: "conclave".to_owned(),
            initial_members: Vec::new(),
            seeds: Vec::new(),
            join: false,
            seed_retry_ms: 2000,
            secret: None,
        }
    }
}

/// The most `raft.workers` accepted.
pub const MAX_RAFT_WORKERS: usize = 1024;

/// `raft.workers` by default: one per core.
pub fn default_raft_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(MAX_RAFT_WORKERS)
}

/// The largest `raft.promote_max_lag` accepted.
pub const MAX_PROMOTE_MAX_LAG: u64 = 100_000_000;

/// The largest `node.idle_poll_us` accepted (1 s): the poller hides the wake-ups between the
/// hand-offs of one write; spinning seconds after a write would only burn a core.
pub const MAX_IDLE_POLL_US: u64 = 1_000_000;

/// The largest `raft.learner_catch_up_mb_s` accepted (a pace above it is no pace).
pub const MAX_LEARNER_CATCH_UP_MB_S: u64 = 100_000;

/// `[raft]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftSection {
    /// Randomized election timeout range `[min, max]` in ms. Default `[150, 300]`.
    pub election_timeout_ms: [u64; 2],
    /// Leader heartbeat interval in ms. Default 50.
    pub heartbeat_interval_ms: u64,
    /// Pre-vote before elections (a rejoining node does not depose a healthy leader).
    /// Default true.
    pub pre_vote: bool,
    /// Leaders step down without a quorum; required for lease reads. Default true.
    pub check_quorum: bool,
    /// Most entries per AppendEntries. Default 256.
    pub max_entries_per_append: usize,
    /// A learner is promoted to voter only while its match index is within this many entries
    /// of the leader's last index (otherwise 409 `not_caught_up`; `conclave member add --wait`
    /// waits for it). Default 1,000; 1 to 100,000,000. Larger lets a far-behind learner vote,
    /// and a quorum that needs it waits until it catches up.
    pub promote_max_lag: u64,
    /// Pace of the log to a learner more than `promote_max_lag` entries behind, in MB/s
    /// (10^6 bytes of entries) on top of the rate the log grows at: the tail of the log that
    /// a new member needs after its snapshot (all the writes made while the snapshot was
    /// streamed) reaches it at this surplus instead of as one burst whose disk writes and
    /// apply take the voters' disk and CPU. The learner always gains on the log, whatever the
    /// write rate. Voters are never paced. Default 20; 0: unpaced; at most
    /// [`MAX_LEARNER_CATCH_UP_MB_S`].
    pub learner_catch_up_mb_s: u64,
    /// Raft workers: each drives the cores of the groups `g` with `g % workers` equal to its
    /// index, on an arbiter (thread) of its own, with one timer and one frame per peer per
    /// drain. Default: the machine's cores (`available_parallelism`); 1 to
    /// [`MAX_RAFT_WORKERS`].
    pub workers: usize,
    /// Idle groups quiesce: no ticks and no heartbeats until a proposal, a message or gossip's
    /// report of a failed peer wakes them. Default true.
    pub quiesce: bool,
    /// Older name of `[snapshot] threshold_entries` (DESIGN.md §9 lists both). Unset by
    /// default; when set it is used as `threshold_entries`, and setting both to different
    /// values is an error. Read through [`Config::snapshot_threshold_entries`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_threshold: Option<u64>,
    /// `[raft.read]`.
    pub read: ReadSection,
    /// `[raft.persistence]`.
    pub persistence: PersistenceSection,
}

impl Default for RaftSection {
    fn default() -> Self {
        RaftSection {
            election_timeout_ms: [150, 300],
            heartbeat_interval_ms: 50,
            pre_vote: true,
            check_quorum: true,
            max_entries_per_append: 256,
            promote_max_lag: 1_000,
            learner_catch_up_mb_s: 20,
            workers: default_raft_workers(),
            quiesce: true,
            snapshot_threshold: None,
            read: ReadSection::default(),
            persistence: PersistenceSection::default(),
        }
    }
}

/// Read consistency levels a client may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadLevel {
    /// ReadIndex: a quorum round confirms leadership (batched).
    Linearizable,
    /// Leader lease: no round while the lease holds; safe within the clock-drift bound.
    Lease,
    /// Whatever this node has applied.
    Stale,
}

/// `[raft.read]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReadSection {
    /// The consistency of reads that do not ask for one. Default `linearizable`.
    pub default: ReadLevel,
    /// Leader lease length in ms; must be shorter than the election timeout's lower bound
    /// (minus the clock-drift margin). Default 120.
    pub lease_ms: u64,
}

impl Default for ReadSection {
    fn default() -> Self {
        ReadSection {
            default: ReadLevel::Linearizable,
            lease_ms: 120,
        }
    }
}

/// When a write counts as durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersistenceStrategy {
    /// Acknowledged means fsynced on a quorum (default).
    DiskFirst,
    /// Entries are flushed in batches (`flush_threshold` entries or `flush_interval_ms`):
    /// faster, but a simultaneous crash of a quorum can lose acknowledged writes.
    MemFirst,
}

/// `[raft.persistence]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PersistenceSection {
    /// `disk_first` (default) or `mem_first`.
    pub strategy: PersistenceStrategy,
    /// `mem_first`: flush after this many buffered entries. Default 100.
    pub flush_threshold: usize,
    /// `mem_first`: flush at least this often. Default 20.
    pub flush_interval_ms: u64,
}

impl Default for PersistenceSection {
    fn default() -> Self {
        PersistenceSection {
            strategy: PersistenceStrategy::DiskFirst,
            flush_threshold: 100,
            flush_interval_ms: 20,
        }
    }
}

/// `[gossip]` (seed 000's knobs and defaults).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GossipSection {
    /// How often a member probes. Default 1000.
    pub cycle_interval_ms: u64,
    /// Unanswered for this long: suspect. Default 10.
    pub suspect_timeout_s: u64,
    /// Suspect for this long: dead. Default 30.
    pub dead_timeout_s: u64,
    /// Dead for this long: forgotten. Default 300.
    pub prune_timeout_s: u64,
    /// Clusters up to this size probe every member directly each cycle. Default 10.
    pub hybrid_threshold: usize,
    /// Most membership rumors piggybacked on one frame. Default 5.
    pub rumor_limit_per_frame: usize,
    /// How long a direct ping waits for its ack before indirect probes are sent; must be
    /// shorter than `cycle_interval_ms`. Default 300.
    pub probe_timeout_ms: u64,
    /// Members asked to probe indirectly when a direct ping times out (SWIM's k). Default 3.
    pub indirect_probes: usize,
    /// Lifeguard's refinements (local health multiplier, nacks, suspicion timeout that shrinks
    /// with independent confirmations, buddy system). Default true.
    pub lifeguard: bool,
}

impl Default for GossipSection {
    fn default() -> Self {
        GossipSection {
            cycle_interval_ms: 1000,
            suspect_timeout_s: 10,
            dead_timeout_s: 30,
            prune_timeout_s: 300,
            hybrid_threshold: 10,
            rumor_limit_per_frame: 5,
            probe_timeout_ms: 300,
            indirect_probes: 3,
            lifeguard: true,
        }
    }
}

/// `[latency]`: per-peer round-trip times measured by gossip's direct probes (seed 000's
/// latency monitor).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LatencySection {
    /// Whether round trips are recorded. Default true.
    pub enabled: bool,
    /// At most one sample per peer is kept per interval, in seconds. Default 5.
    pub interval_s: u64,
    /// Samples kept per peer (the oldest is dropped). Default 10.
    pub history_size: usize,
}

impl Default for LatencySection {
    fn default() -> Self {
        LatencySection {
            enabled: true,
            interval_s: 5,
            history_size: 10,
        }
    }
}

/// `[ring]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RingSection {
    /// Virtual nodes per node (weight 1). Default 150.
    pub vnodes: usize,
    /// Fixed number of shards keys are pre-split into. Default 64.
    pub shards: u64,
    /// Replicas per shard. Default 3.
    pub replication_factor: usize,
    /// Serve keys from one Raft group per shard, placed by the ring (docs/sharding.md).
    /// Default false: every key is served by group 0, replicated on every member. Set on every
    /// initial member alike before the cluster first starts; the map they agree on is
    /// committed through group 0 (a copy in `data_dir/shard-map`). A node that joins takes
    /// the committed map from group 0 and hosts no shard.
    pub sharded: bool,
    /// How often a sharded node looks at its replica of group 0 for a newer committed shard
    /// map, in milliseconds (a local read; a node also takes a newer map from a peer's
    /// `StaleMap` answer at once). Default 500.
    pub map_watch_ms: u64,
}

impl Default for RingSection {
    fn default() -> Self {
        RingSection {
            vnodes: 150,
            shards: 64,
            replication_factor: 3,
            sharded: false,
            map_watch_ms: 500,
        }
    }
}

/// The embedded engine that holds the key-value machine's state (docs/storage.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageEngine {
    /// redb: ACID, copy-on-write B-tree, one file.
    Redb,
    /// sled 0.34.
    Sled,
}

/// `[storage]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSection {
    /// The state store's engine: `redb` (default) or `sled`. sled 0.34 can stall for good
    /// under sustained overwrites (docs/storage.md).
    pub engine: StorageEngine,
    /// A storage call running longer than this is reported as a stall (`/readyz` 503
    /// `storage_stalled`, `conclave_storage_stalls_total`). Default 5000.
    pub stall_timeout_ms: u64,
    /// Size at which the Raft log's WAL starts a new segment file; compaction deletes whole
    /// segments no group needs, so smaller segments return disk sooner. At least 65536.
    /// Default 67108864 (64 MiB).
    pub wal_segment_bytes: u64,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            engine: StorageEngine::Redb,
            stall_timeout_ms: 5000,
            wal_segment_bytes: 64 << 20,
        }
    }
}

/// `[snapshot]` (docs/node.md "Snapshots"): thresholds, the log kept after a snapshot, and
/// the limits of streaming one to a follower.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotSection {
    /// Applied entries since the last snapshot after which a group takes one. 0: never by
    /// count. Default 10000.
    pub threshold_entries: u64,
    /// Bytes of applied entries since the last snapshot after which a group takes one. 0:
    /// never by size. Default 67108864 (64 MiB).
    pub threshold_log_bytes: u64,
    /// Entries kept in the log below a snapshot's index, so that a slightly lagging follower
    /// still catches up from the log instead of by a whole snapshot. Default 1000.
    pub keep_entries: u64,
    /// Bytes per chunk when a snapshot is streamed to a follower; a chunk and its framing must
    /// fit in one transport frame (`node.max_frame_size`). Default 1048576 (1 MiB).
    pub chunk_bytes: usize,
    /// Most megabytes per second (10^6 bytes) this node sends in snapshot chunks, all
    /// transfers together. At least 1. Default 100.
    pub max_send_rate_mb_s: u64,
    /// Most snapshots this node streams at once. At least 1. Default 2.
    pub max_concurrent_sends: usize,
    /// Most megabytes per second (10^6 bytes) at which a snapshot image is written to disk,
    /// written back to the device step by step as it goes, so that the image never piles up
    /// as dirty pages in front of the WAL's `fdatasync` (docs/node.md "Snapshots"). 0: as
    /// fast as the state machine produces it (still written back step by step). Default 50.
    pub write_rate_mb_s: u64,
    /// Each group draws its next snapshot thresholds up to this many percent above
    /// `threshold_entries` and `threshold_log_bytes`, afresh after every snapshot, so that
    /// replicas that reach a threshold together (they apply the same log) do not all write
    /// their images at the same moment. 0 to 100. Default 20.
    pub threshold_jitter_pct: u64,
    /// A snapshot is not started, whatever the thresholds say, before the bytes of entries
    /// applied since the last one reach this many percent of that snapshot's image: every
    /// snapshot rewrites the whole state, so with a large state and the count thresholds
    /// alone a node would write images back to back (1 GiB of state and 10,000 entries of
    /// 1 KiB: an image every few seconds, each taking 20 s at `write_rate_mb_s`). With 25, the
    /// images written are at most 4x the log written, and the log kept stays within a quarter
    /// of the state (plus what arrives while a snapshot is taken): bounded by live data. 0
    /// turns this floor off. 0 to 10,000. Default 25.
    pub log_image_pct: u64,
    /// Most megabytes per second (10^6 bytes) of a snapshot received from the leader that a
    /// *learner* restores into its state machine (read from the image; the state store may
    /// write more: redb writes about twice a 64 KiB value). A learner catches up in the
    /// background while the cluster serves writes on the same machines and disks; unpaced,
    /// its import of 1 GiB wrote ~250 MB/s and halved the cluster's writes meanwhile
    /// (docs/performance.md). A voter's restore is not paced (until it has restored, its
    /// group has a replica fewer), nor are restores at start or after an applier restart
    /// (the group waits for them). 0: unpaced. Default 50.
    pub install_rate_mb_s: u64,
}

impl Default for SnapshotSection {
    fn default() -> Self {
        SnapshotSection {
            threshold_entries: 10_000,
            threshold_log_bytes: 64 << 20,
            keep_entries: 1_000,
            chunk_bytes: 1 << 20,
            max_send_rate_mb_s: 100,
            max_concurrent_sends: 2,
            write_rate_mb_s: 50,
            threshold_jitter_pct: 20,
            log_image_pct: 25,
            install_rate_mb_s: 50,
        }
    }
}

/// Room kept in a transport frame around a snapshot chunk's bytes (message header, ids,
/// offsets, checksum).
pub const SNAPSHOT_CHUNK_FRAME_OVERHEAD: usize = 4096;

/// The largest `[snapshot] log_image_pct` accepted (a log 100 times the state is no longer
/// "bounded by live data" in any useful sense).
pub const MAX_LOG_IMAGE_PCT: u64 = 10_000;

/// The smallest `[snapshot] chunk_bytes` accepted.
pub const MIN_SNAPSHOT_CHUNK_BYTES: usize = 4096;

/// `[tls]`: PEM files for mutual TLS between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// This node's certificate chain.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
    /// The CA that signs every node's certificate.
    pub ca: PathBuf,
}

/// `[http]`: TLS, bearer tokens and request budgets of the HTTP API (docs/security.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// `[http.tls]`: serve HTTPS. Default: none (plain HTTP).
    pub tls: Option<HttpTlsSection>,
    /// `[http.tokens]`: require bearer tokens. Default: none (no authentication).
    pub tokens: Option<TokensSection>,
    /// Whether `/healthz` and `/readyz` answer without a token when tokens are configured
    /// (load balancers and orchestrators probe without secrets; the answers reveal only the
    /// node id and readiness). Default true.
    pub public_health: bool,
    /// Whether `/metrics` answers without a token when tokens are configured. Default false
    /// (metrics describe the cluster's members and traffic; Prometheus can send a bearer
    /// token).
    pub public_metrics: bool,
    /// Admission budget: the most request-body bytes this node holds at once for requests
    /// being read, proposed or forwarded; a request that would exceed it is refused with 503
    /// `overloaded` and `Retry-After`. Must hold at least one largest value. Default 64 MiB.
    pub max_inflight_bytes: usize,
    /// A request body must arrive completely within this many ms of the handler starting to
    /// read it, else 408 `request_timeout` and the connection is closed. Default 10000.
    pub body_timeout_ms: u64,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            tls: None,
            tokens: None,
            public_health: true,
            public_metrics: false,
            max_inflight_bytes: 64 * 1024 * 1024,
            body_timeout_ms: 10_000,
        }
    }
}

/// `[http.tls]`: PEM files of the HTTPS listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTlsSection {
    /// This node's certificate chain (PEM); its subject alternative names must cover the
    /// addresses clients and other nodes use (`conclave init --secure` puts `localhost`, the
    /// node's IP and `node-{id}.conclave` in it).
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
    /// The CA that signs the other nodes' HTTPS certificates, trusted when a request is
    /// forwarded to the leader. Default: `[tls] ca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

/// `[http.tokens]`: bearer tokens of the two roles. A token is given inline or in a file
/// (one token per line; several lines allow rotation). `client` tokens may use the KV and
/// `/v1/sm` routes and read cluster status; `admin` tokens may use every route.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokensSection {
    /// Inline admin tokens.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub admin: Vec<String>,
    /// A file of admin tokens (should be readable by the node's user only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_file: Option<PathBuf>,
    /// Inline client tokens.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub client: Vec<String>,
    /// A file of client tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_file: Option<PathBuf>,
}

/// The shortest bearer token accepted (`conclave init --secure` writes 64 hex characters).
pub const MIN_TOKEN_LEN: usize = 16;

/// Why a bearer token is refused ([`check_token`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Shorter than [`MIN_TOKEN_LEN`].
    #[error("a token must be at least {MIN_TOKEN_LEN} characters long, got {len}")]
    TooShort {
        /// The token's length in bytes.
        len: usize,
    },
    /// A space, a control character or a non-ASCII byte.
    #[error("a token must be visible ASCII characters without spaces")]
    NotVisibleAscii,
}

/// Checks one token's shape: at least [`MIN_TOKEN_LEN`] visible ASCII characters (what an
/// `Authorization: Bearer` header can carry), no spaces.
pub fn check_token(token: &str) -> Result<(), TokenError> {
    if token.len() < MIN_TOKEN_LEN {
        return Err(TokenError::TooShort { len: token.len() });
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::NotVisibleAscii);
    }
    Ok(())
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown key or a value of the wrong type. The message
    /// names the key and the line.
    #[error("config file {path}: {}", source.to_string().trim_end())]
    Parse {
        /// The file (or `<string>`).
        path: PathBuf,
        /// The parser's error, naming the key and the line.
        source: toml::de::Error,
    },
    /// The node listens off loopback without the protection that needs, and
    /// `node.allow_insecure` is not set.
    #[error(
        "{} {} not a loopback address, so the node refuses to start without {}; \
         create them with `conclave init --secure`, or set `allow_insecure = true` under [node] \
         to run unprotected",
        join_and(exposed),
        if exposed.len() == 1 { "is" } else { "are" },
        join_and(missing)
    )]
    Insecure {
        /// The addresses off loopback ([`Config::exposed_addresses`]).
        exposed: Vec<Exposed>,
        /// The sections missing, e.g. `[tls] (transport TLS)`.
        missing: Vec<&'static str>,
    },
    /// A value is well-typed but not acceptable.
    #[error("config key `{key}`: {problem}")]
    Invalid {
        /// The dotted key, e.g. `raft.election_timeout_ms`.
        key: &'static str,
        /// What is wrong and what would be right.
        #[source]
        problem: Problem,
    },
}

/// What is wrong with one configuration value ([`ConfigError::Invalid`]); the message says
/// what would be right.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// A count or duration of 0 where at least 1 is needed.
    #[error("must be at least 1")]
    Zero,
    /// The reserved node id 0.
    #[error("must not be 0")]
    ReservedZero,
    /// Empty text where some is needed.
    #[error("must not be empty")]
    Empty,
    /// Below a fixed minimum.
    #[error("must be at least {min}{unit}")]
    BelowMin {
        /// The smallest accepted value.
        min: u64,
        /// The unit, with its leading space (` bytes`), or empty.
        unit: &'static str,
    },
    /// Below a fixed minimum (the value given is echoed).
    #[error("must be at least {min}, got {got}")]
    BelowMinGot {
        /// The smallest accepted value.
        min: u64,
        /// The value given.
        got: u64,
    },
    /// Outside a fixed range.
    #[error("must be between {min} and {max}{what}, got {got}")]
    OutOfRange {
        /// The smallest accepted value.
        min: u64,
        /// The largest accepted value.
        max: u64,
        /// What the numbers count, with its leading space (` entries`,
        /// ` (percent of the last image)`), or empty.
        what: &'static str,
        /// The value given.
        got: u64,
    },
    /// Below another key's value.
    #[error("must be at least {0}")]
    BelowKey(&'static str),
    /// `node.http` equals `node.listen`.
    #[error("must differ from node.listen ({0})")]
    SameAsListen(SocketAddr),
    /// Two initial members share an id.
    #[error("duplicate member id {0}")]
    DuplicateMember(NodeId),
    /// An initial member has the reserved id 0.
    #[error("member id 0 is reserved")]
    ReservedMemberId,
    /// `node.max_queue_bytes` cannot hold one frame of `node.max_frame_size`.
    #[error("must hold at least one largest frame (node.max_frame_size + 4 = {needed})")]
    QueueBelowFrame {
        /// `node.max_frame_size + 4`.
        needed: usize,
    },
    /// `raft.election_timeout_ms` is not `[min, max]` with `min < max`.
    #[error("expected [min, max] with min < max, got [{min}, {max}]")]
    ElectionRange {
        /// The first element given.
        min: u64,
        /// The second element given.
        max: u64,
    },
    /// An interval that must be shorter than the election timeout's minimum.
    #[error("must be between 1 and the election timeout's minimum ({election_min} ms), got {got}")]
    NotBelowElection {
        /// `raft.election_timeout_ms[0]`.
        election_min: u64,
        /// The value given.
        got: u64,
    },
    /// `raft.read.default = "lease"` without `raft.check_quorum`.
    #[error("lease reads need raft.check_quorum = true")]
    LeaseWithoutCheckQuorum,
    /// Both the older `raft.snapshot_threshold` and `snapshot.threshold_entries` are set,
    /// to different values.
    #[error(
        "is the older name of snapshot.threshold_entries; both are set, to {old} and {new} — \
         keep only [snapshot] threshold_entries"
    )]
    TwoSnapshotThresholds {
        /// `raft.snapshot_threshold`.
        old: u64,
        /// `snapshot.threshold_entries`.
        new: u64,
    },
    /// `snapshot.chunk_bytes` does not fit in one transport frame, or is too small.
    #[error(
        "must be between {min} and node.max_frame_size − {overhead} ({max}) so that a chunk \
         fits in one transport frame, got {got}"
    )]
    ChunkSize {
        /// The smallest accepted chunk.
        min: usize,
        /// The frame overhead subtracted from `node.max_frame_size`.
        overhead: usize,
        /// The largest chunk that fits.
        max: usize,
        /// The value given.
        got: usize,
    },
    /// `http.max_inflight_bytes` cannot hold one largest value.
    #[error(
        "must hold at least one largest value ({largest} bytes, half of node.max_frame_size), \
         got {got}"
    )]
    InflightBelowValue {
        /// The largest value a request can carry.
        largest: usize,
        /// The value given.
        got: usize,
    },
    /// HTTPS without a CA to verify the other nodes when forwarding.
    #[error(
        "needed to verify the other nodes' HTTPS certificates when a request is forwarded to \
         the leader (or set [tls] ca)"
    )]
    HttpsWithoutCa,
    /// `[http.tokens]` without an admin token.
    #[error("[http.tokens] needs at least one admin token (admin or admin_file)")]
    NoAdminToken,
    /// A token given in the file has the wrong shape.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A token file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    TokenFileUnreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A token file holds no token.
    #[error("{} holds no token", path.display())]
    TokenFileEmpty {
        /// The file.
        path: PathBuf,
    },
    /// A token in a token file has the wrong shape.
    #[error("{}: {source}", path.display())]
    TokenFileBadToken {
        /// The file.
        path: PathBuf,
        /// What is wrong with the token (the token itself is not echoed: it is a secret).
        source: TokenError,
    },
    /// `cluster.initial_members` on a node that joins an existing cluster.
    #[error(
        "must be empty on a joining node (cluster.join = true): it takes its membership from \
         the cluster that adds it"
    )]
    MembersOnJoin,
    /// A seed that is no initial member's address.
    #[error(
        "{0} is not the address of any of cluster.initial_members (a seed is dialled as that \
         member)"
    )]
    SeedNotAMember(SocketAddr),
    /// What the SWIM core's own check refuses (its key is mapped to the `gossip.` one).
    #[error(transparent)]
    Gossip(SwimConfigError),
}

fn invalid(key: &'static str, problem: Problem) -> ConfigError {
    ConfigError::Invalid { key, problem }
}

/// `got` within `min..=max`, else [`Problem::OutOfRange`] for `key` (`what`: what the numbers
/// count, with its leading space, or empty).
fn in_range(
    key: &'static str,
    got: u64,
    min: u64,
    max: u64,
    what: &'static str,
) -> Result<(), ConfigError> {
    if (min..=max).contains(&got) {
        Ok(())
    } else {
        Err(invalid(
            key,
            Problem::OutOfRange {
                min,
                max,
                what,
                got,
            },
        ))
    }
}

impl Config {
    /// Reads, parses and validates a node's TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_named(&text, path)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Self::parse_named(text, Path::new("<string>"))
    }

    fn parse_named(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Serialises to TOML (what `conclave init` writes).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(self)
    }

    /// One configuration per member of a new cluster whose members are `members`: node `m`
    /// listens on `m.addr` and `m.http`, keeps its data in `data_root/n{m.id}`, and starts with
    /// every member as a voter. Everything else is default. What `conclave init`, the examples
    /// and the tests start from.
    pub fn local_cluster(members: &[MemberConfig], data_root: &Path) -> Vec<Config> {
        members
            .iter()
            .map(|m| {
                let mut c = Config::default();
                c.node.id = m.id;
                c.node.listen = m.addr;
                c.node.http = m.http;
                c.node.data_dir = data_root.join(format!("n{}", m.id));
                c.cluster.initial_members = members.to_vec();
                c
            })
            .collect()
    }

    /// The members of the initial cluster, defaulting to this node alone.
    pub fn initial_members(&self) -> Vec<MemberConfig> {
        if self.cluster.initial_members.is_empty() {
            vec![MemberConfig {
                id: self.node.id,
                addr: self.node.listen,
                http: self.node.http,
            }]
        } else {
            self.cluster.initial_members.clone()
        }
    }

    /// The membership this node starts its groups with when their logs hold none: the initial
    /// members, or nobody for a node that joins an existing cluster (`cluster.join`).
    pub fn bootstrap_members(&self) -> Vec<MemberConfig> {
        if self.cluster.join {
            Vec::new()
        } else {
            self.initial_members()
        }
    }

    /// Checks values that are well-typed but unacceptable; every error names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = &self.node;
        if n.id == NodeId::NONE {
            return Err(invalid("node.id", Problem::ReservedZero));
        }
        if n.listen == n.http {
            return Err(invalid("node.http", Problem::SameAsListen(n.listen)));
        }
        for (key, v) in [
            ("node.max_connections", n.max_connections),
            ("node.max_peers", n.max_peers),
            ("node.max_queue_size", n.max_queue_size),
            (
                "raft.max_entries_per_append",
                self.raft.max_entries_per_append,
            ),
            ("gossip.hybrid_threshold", self.gossip.hybrid_threshold),
            (
                "gossip.rumor_limit_per_frame",
                self.gossip.rumor_limit_per_frame,
            ),
            ("ring.vnodes", self.ring.vnodes),
            ("ring.replication_factor", self.ring.replication_factor),
        ] {
            if v == 0 {
                return Err(invalid(key, Problem::Zero));
            }
        }
        if n.max_hops == 0 {
            return Err(invalid("node.max_hops", Problem::Zero));
        }
        if self.ring.map_watch_ms == 0 {
            return Err(invalid("ring.map_watch_ms", Problem::Zero));
        }
        in_range(
            "raft.promote_max_lag",
            self.raft.promote_max_lag,
            1,
            MAX_PROMOTE_MAX_LAG,
            " entries",
        )?;
        in_range(
            "node.idle_poll_us",
            n.idle_poll_us,
            0,
            MAX_IDLE_POLL_US,
            " µs (0: off)",
        )?;
        in_range(
            "raft.learner_catch_up_mb_s",
            self.raft.learner_catch_up_mb_s,
            0,
            MAX_LEARNER_CATCH_UP_MB_S,
            " MB/s (0: unpaced)",
        )?;
        in_range(
            "raft.workers",
            self.raft.workers as u64,
            1,
            MAX_RAFT_WORKERS as u64,
            "",
        )?;
        if n.max_frame_size < 1024 {
            return Err(invalid(
                "node.max_frame_size",
                Problem::BelowMin {
                    min: 1024,
                    unit: " bytes",
                },
            ));
        }
        if n.read_timeout_s == 0 {
            return Err(invalid("node.read_timeout_s", Problem::Zero));
        }
        if self.cluster.id.is_empty() {
            return Err(invalid("cluster.id", Problem::Empty));
        }
        let members = &self.cluster.initial_members;
        if !members.is_empty() {
            let mut ids = BTreeSet::new();
            for m in members {
                if !ids.insert(m.id) {
                    return Err(invalid(
                        "cluster.initial_members",
                        Problem::DuplicateMember(m.id),
                    ));
                }
            }
            if ids.contains(&NodeId::NONE) {
                return Err(invalid(
                    "cluster.initial_members",
                    Problem::ReservedMemberId,
                ));
            }
        }
        if self.cluster.seed_retry_ms == 0 {
            return Err(invalid("cluster.seed_retry_ms", Problem::Zero));
        }
        if let Some(secret) = &self.cluster.secret {
            if secret.0.len() < 16 {
                return Err(invalid(
                    "cluster.secret",
                    Problem::BelowMin {
                        min: 16,
                        unit: " bytes",
                    },
                ));
            }
        }
        if n.max_queue_bytes < n.max_frame_size.saturating_add(4) {
            return Err(invalid(
                "node.max_queue_bytes",
                Problem::QueueBelowFrame {
                    needed: n.max_frame_size.saturating_add(4),
                },
            ));
        }
        let r = &self.raft;
        let [min, max] = r.election_timeout_ms;
        if min >= max {
            return Err(invalid(
                "raft.election_timeout_ms",
                Problem::ElectionRange { min, max },
            ));
        }
        if r.heartbeat_interval_ms == 0 || r.heartbeat_interval_ms >= min {
            return Err(invalid(
                "raft.heartbeat_interval_ms",
                Problem::NotBelowElection {
                    election_min: min,
                    got: r.heartbeat_interval_ms,
                },
            ));
        }
        if r.read.lease_ms == 0 || r.read.lease_ms >= min {
            return Err(invalid(
                "raft.read.lease_ms",
                Problem::NotBelowElection {
                    election_min: min,
                    got: r.read.lease_ms,
                },
            ));
        }
        if r.read.default == ReadLevel::Lease && !r.check_quorum {
            return Err(invalid(
                "raft.read.default",
                Problem::LeaseWithoutCheckQuorum,
            ));
        }
        self.validate_snapshot()?;
        if r.persistence.flush_threshold == 0 {
            return Err(invalid("raft.persistence.flush_threshold", Problem::Zero));
        }
        if r.persistence.flush_interval_ms == 0 {
            return Err(invalid("raft.persistence.flush_interval_ms", Problem::Zero));
        }
        let g = &self.gossip;
        if g.cycle_interval_ms == 0 {
            return Err(invalid("gossip.cycle_interval_ms", Problem::Zero));
        }
        if g.suspect_timeout_s == 0 {
            return Err(invalid("gossip.suspect_timeout_s", Problem::Zero));
        }
        if g.dead_timeout_s < g.suspect_timeout_s {
            return Err(invalid(
                "gossip.dead_timeout_s",
                Problem::BelowKey("gossip.suspect_timeout_s"),
            ));
        }
        if g.prune_timeout_s < g.dead_timeout_s {
            return Err(invalid(
                "gossip.prune_timeout_s",
                Problem::BelowKey("gossip.dead_timeout_s"),
            ));
        }
        if self.ring.shards == 0 {
            return Err(invalid("ring.shards", Problem::Zero));
        }
        if self.latency.history_size == 0 {
            return Err(invalid("latency.history_size", Problem::Zero));
        }
        if self.latency.interval_s == 0 {
            return Err(invalid("latency.interval_s", Problem::Zero));
        }
        in_range(
            "storage.stall_timeout_ms",
            self.storage.stall_timeout_ms,
            10,
            3_600_000,
            " (one hour)",
        )?;
        if self.storage.wal_segment_bytes < 65_536 {
            return Err(invalid(
                "storage.wal_segment_bytes",
                Problem::BelowMinGot {
                    min: 65_536,
                    got: self.storage.wal_segment_bytes,
                },
            ));
        }
        self.validate_http()?;
        self.check_exposure()?;
        if self.cluster.join && !self.cluster.initial_members.is_empty() {
            return Err(invalid("cluster.initial_members", Problem::MembersOnJoin));
        }
        let initial = self.initial_members();
        for seed in self.cluster.seeds.iter().filter(|_| !self.cluster.join) {
            if !initial.iter().any(|m| m.addr == *seed) {
                return Err(invalid("cluster.seeds", Problem::SeedNotAMember(*seed)));
            }
        }
        // Everything the SWIM core checks (probe timeout below the cycle, suspicion at least
        // two cycles, ...), named by the `gossip.` key it reports.
        if let Err(e) = self.swim_config().validate() {
            return Err(invalid(gossip_key(&e), Problem::Gossip(e)));
        }
        Ok(())
    }

    /// The applied entries after which a snapshot is taken: `[snapshot] threshold_entries`,
    /// or the older `[raft] snapshot_threshold` when only that is set. 0: never by count.
    pub fn snapshot_threshold_entries(&self) -> u64 {
        self.raft
            .snapshot_threshold
            .unwrap_or(self.snapshot.threshold_entries)
    }

    fn validate_snapshot(&self) -> Result<(), ConfigError> {
        let s = &self.snapshot;
        if let Some(old) = self.raft.snapshot_threshold {
            let default = SnapshotSection::default().threshold_entries;
            if s.threshold_entries != default && s.threshold_entries != old {
                return Err(invalid(
                    "raft.snapshot_threshold",
                    Problem::TwoSnapshotThresholds {
                        old,
                        new: s.threshold_entries,
                    },
                ));
            }
        }
        let largest_chunk = self
            .node
            .max_frame_size
            .saturating_sub(SNAPSHOT_CHUNK_FRAME_OVERHEAD);
        if s.chunk_bytes < MIN_SNAPSHOT_CHUNK_BYTES || s.chunk_bytes > largest_chunk {
            return Err(invalid(
                "snapshot.chunk_bytes",
                Problem::ChunkSize {
                    min: MIN_SNAPSHOT_CHUNK_BYTES,
                    overhead: SNAPSHOT_CHUNK_FRAME_OVERHEAD,
                    max: largest_chunk,
                    got: s.chunk_bytes,
                },
            ));
        }
        if s.max_send_rate_mb_s == 0 {
            return Err(invalid(
                "snapshot.max_send_rate_mb_s",
                Problem::BelowMin {
                    min: 1,
                    unit: " (MB per second)",
                },
            ));
        }
        if s.max_concurrent_sends == 0 {
            return Err(invalid("snapshot.max_concurrent_sends", Problem::Zero));
        }
        in_range(
            "snapshot.log_image_pct",
            s.log_image_pct,
            0,
            MAX_LOG_IMAGE_PCT,
            " (percent of the last image)",
        )?;
        in_range(
            "snapshot.threshold_jitter_pct",
            s.threshold_jitter_pct,
            0,
            100,
            " (percent above the thresholds)",
        )?;
        Ok(())
    }

    fn validate_http(&self) -> Result<(), ConfigError> {
        let h = &self.http;
        if h.body_timeout_ms == 0 {
            return Err(invalid("http.body_timeout_ms", Problem::Zero));
        }
        let largest_value = (self.node.max_frame_size / 2).saturating_sub(1024);
        if h.max_inflight_bytes < largest_value {
            return Err(invalid(
                "http.max_inflight_bytes",
                Problem::InflightBelowValue {
                    largest: largest_value,
                    got: h.max_inflight_bytes,
                },
            ));
        }
        if let Some(tls) = &h.tls {
            if tls.ca.is_none() && self.tls.is_none() {
                return Err(invalid("http.tls.ca", Problem::HttpsWithoutCa));
            }
        }
        if let Some(t) = &h.tokens {
            if t.admin.is_empty() && t.admin_file.is_none() {
                return Err(invalid("http.tokens.admin", Problem::NoAdminToken));
            }
            for (key, list) in [
                ("http.tokens.admin", &t.admin),
                ("http.tokens.client", &t.client),
            ] {
                for token in list {
                    check_token(token).map_err(|e| invalid(key, e.into()))?;
                }
            }
        }
        Ok(())
    }

    /// The addresses of this node that are not loopback (shown as `node.listen 0.0.0.0:7001`)
    /// — the ones an attacker on the network can reach. Empty: loopback only.
    pub fn exposed_addresses(&self) -> Vec<Exposed> {
        let n = &self.node;
        [("node.listen", n.listen), ("node.http", n.http)]
            .into_iter()
            .filter(|(_, addr)| !addr.ip().is_loopback())
            .map(|(key, addr)| Exposed { key, addr })
            .collect()
    }

    /// Secure by default: a node reachable off loopback needs transport TLS, HTTPS and
    /// tokens unless `node.allow_insecure` says otherwise.
    fn check_exposure(&self) -> Result<(), ConfigError> {
        let exposed = self.exposed_addresses();
        if exposed.is_empty() || self.node.allow_insecure {
            return Ok(());
        }
        let mut missing = Vec::new();
        if self.tls.is_none() {
            missing.push("[tls] (transport TLS)");
        }
        if self.http.tls.is_none() {
            missing.push("[http.tls] (HTTPS)");
        }
        if self.http.tokens.is_none() {
            missing.push("[http.tokens] (bearer tokens)");
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(ConfigError::Insecure { exposed, missing })
    }

    /// The SWIM core's configuration: the `[gossip]` section, `cluster.seeds` (every other
    /// initial member when empty) and `cluster.seed_retry_ms`; other knobs at the core's
    /// defaults.
    pub fn swim_config(&self) -> SwimConfig {
        let g = &self.gossip;
        let seeds: Vec<SocketAddr> = if self.cluster.seeds.is_empty() {
            self.bootstrap_members()
                .iter()
                .filter(|m| m.id != self.node.id)
                .map(|m| m.addr)
                .collect()
        } else {
            self.cluster.seeds.clone()
        };
        SwimConfig {
            cycle_interval_ms: g.cycle_interval_ms,
            probe_timeout_ms: g.probe_timeout_ms,
            indirect_probes: g.indirect_probes,
            suspect_timeout_s: g.suspect_timeout_s,
            dead_timeout_s: g.dead_timeout_s,
            prune_timeout_s: g.prune_timeout_s,
            hybrid_threshold: g.hybrid_threshold,
            rumor_limit_per_frame: g.rumor_limit_per_frame,
            seeds: seeds.iter().map(SocketAddr::to_string).collect(),
            seed_retry_ms: self.cluster.seed_retry_ms,
            lifeguard: g.lifeguard,
            ..SwimConfig::default()
        }
    }
}

/// One of the node's addresses that is not loopback; shown as `node.http 0.0.0.0:7101`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exposed {
    /// The configuration key: `node.listen` or `node.http`.
    pub key: &'static str,
    /// The address.
    pub addr: SocketAddr,
}

impl std::fmt::Display for Exposed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.key, self.addr)
    }
}

/// `a`, `a and b`, `a, b and c`.
fn join_and<T: std::fmt::Display>(items: &[T]) -> String {
    let text: Vec<String> = items.iter().map(T::to_string).collect();
    match text.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// The dotted key of a SWIM configuration error.
fn gossip_key(e: &SwimConfigError) -> &'static str {
    let key = match e {
        SwimConfigError::Zero { key } | SwimConfigError::Order { key, .. } => *key,
        SwimConfigError::BadSeed(_) => return "cluster.seeds",
    };
    match key {
        "cycle_interval_ms" => "gossip.cycle_interval_ms",
        "probe_timeout_ms" => "gossip.probe_timeout_ms",
        "indirect_probes" => "gossip.indirect_probes",
        "suspect_timeout_s" => "gossip.suspect_timeout_s",
        "dead_timeout_s" => "gossip.dead_timeout_s",
        "prune_timeout_s" => "gossip.prune_timeout_s",
        "hybrid_threshold" => "gossip.hybrid_threshold",
        "rumor_limit_per_frame" => "gossip.rumor_limit_per_frame",
        "seed_retry_ms" => "cluster.seed_retry_ms",
        _ => "gossip",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.raft.election_timeout_ms, [150, 300]);
        assert_eq!(c.gossip.rumor_limit_per_frame, 5);
        assert_eq!(c.ring.vnodes, 150);
        assert_eq!(c.initial_members().len(), 1);
    }

    #[test]
    fn full_file_round_trips() {
        let text = r#"
[node]
id = 2
data_dir = "/var/lib/conclave/n2"
listen = "127.0.0.1:7002"
http = "127.0.0.1:7102"

[cluster]
id = "prod"
initial_members = [
  { id = 1, addr = "127.0.0.1:7001", http = "127.0.0.1:7101" },
  { id = 2, addr = "127.0.0.1:7002", http = "127.0.0.1:7102" },
]

[raft]
election_timeout_ms = [1000, 2000]
heartbeat_interval_ms = 100

[raft.read]
default = "lease"
lease_ms = 500

[raft.persistence]
strategy = "mem_first"

[tls]
cert = "n2.crt"
key = "n2.key"
ca = "ca.crt"
"#;
        let c = Config::parse(text).unwrap();
        assert_eq!(c.node.id, NodeId::new(2));
        assert_eq!(c.raft.read.default, ReadLevel::Lease);
        assert_eq!(c.raft.persistence.strategy, PersistenceStrategy::MemFirst);
        assert_eq!(c.cluster.initial_members.len(), 2);
        assert!(c.tls.is_some());
        let again = Config::parse(&c.to_toml().unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err("[raft]\nelection_timeout = 5\n");
        assert!(e.contains("election_timeout"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
        let e = err("[nodes]\nid = 1\n");
        assert!(e.contains("nodes"), "{e}");
        let e = err("[raft.read]\nlease = 5\n");
        assert!(e.contains("lease"), "{e}");
    }

    #[test]
    fn wrongly_typed_values_are_named() {
        let e = err("[node]\nid = \"one\"\n");
        assert!(e.contains("id"), "{e}");
        let e = err("[node]\nlisten = \"not an address\"\n");
        assert!(e.contains("listen"), "{e}");
        let e = err("[raft.persistence]\nstrategy = \"sometimes\"\n");
        assert!(e.contains("strategy") || e.contains("sometimes"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("[node]\nid = 0\n", "node.id"),
            ("[cluster]\nsecret = \"short\"\n", "cluster.secret"),
            ("[node]\nmax_queue_bytes = 1000\n", "node.max_queue_bytes"),
            ("[raft]\nelection_timeout_ms = [300, 150]\n", "raft.election_timeout_ms"),
            ("[raft]\nheartbeat_interval_ms = 200\n", "raft.heartbeat_interval_ms"),
            ("[raft.read]\nlease_ms = 150\n", "raft.read.lease_ms"),
            ("[raft]\npromote_max_lag = 0\n", "raft.promote_max_lag"),
            ("[node]\nidle_poll_us = 1000001\n", "node.idle_poll_us"),
            (
                "[raft]\npromote_max_lag = 100000001\n",
                "raft.promote_max_lag",
            ),
            (
                "[raft]\nlearner_catch_up_mb_s = 100001\n",
                "raft.learner_catch_up_mb_s",
            ),
            (
                "[raft]\ncheck_quorum = false\n[raft.read]\ndefault = \"lease\"\n",
                "raft.read.default",
            ),
            ("[gossip]\ndead_timeout_s = 5\n", "gossip.dead_timeout_s"),
            (
                "[gossip]\ncycle_interval_ms = 200\n",
                "gossip.probe_timeout_ms",
            ),
            (
                "[gossip]\ncycle_interval_ms = 800\nprobe_timeout_ms = 100\nsuspect_timeout_s = 1\ndead_timeout_s = 1\n",
                "gossip.suspect_timeout_s",
            ),
            ("[latency]\nhistory_size = 0\n", "latency.history_size"),
            ("[latency]\ninterval_s = 0\n", "latency.interval_s"),
            ("[cluster]\nseeds = [\"127.0.0.1:9\"]\n", "cluster.seeds"),
            ("[ring]\nshards = 0\n", "ring.shards"),
            ("[ring]\nmap_watch_ms = 0\n", "ring.map_watch_ms"),
            ("[node]\nmax_queue_size = 0\n", "node.max_queue_size"),
            ("[storage]\nstall_timeout_ms = 0\n", "storage.stall_timeout_ms"),
            ("[storage]\nengine = \"rocks\"\n", "engine"),
            (
                "[cluster]\ninitial_members = [{ id = 1, addr = \"127.0.0.1:1\", http = \"127.0.0.1:2\" }, { id = 1, addr = \"127.0.0.1:3\", http = \"127.0.0.1:4\" }]\n",
                "cluster.initial_members",
            ),
        ];
        for (text, key) in cases {
            let e = err(text);
            assert!(e.contains(key), "{text:?} gave {e}");
        }
    }

    /// The validation messages are built from typed values ([`Problem`]); these are the
    /// sentences a user reads.
    #[test]
    fn invalid_values_give_whole_sentences() {
        let cases = [
            (
                "[node]\nhttp = \"127.0.0.1:7001\"\nlisten = \"127.0.0.1:7001\"\n",
                "config key `node.http`: must differ from node.listen (127.0.0.1:7001)",
            ),
            (
                "[cluster]\ninitial_members = [{ id = 1, addr = \"127.0.0.1:1\", http = \"127.0.0.1:2\" }, { id = 1, addr = \"127.0.0.1:3\", http = \"127.0.0.1:4\" }]\n",
                "config key `cluster.initial_members`: duplicate member id 1",
            ),
            (
                "[raft]\nworkers = 0\n",
                "config key `raft.workers`: must be between 1 and 1024, got 0",
            ),
            (
                "[raft]\nelection_timeout_ms = [300, 300]\n",
                "config key `raft.election_timeout_ms`: expected [min, max] with min < max, got \
                 [300, 300]",
            ),
            (
                "[raft]\nlearner_catch_up_mb_s = 100001\n",
                "config key `raft.learner_catch_up_mb_s`: must be between 0 and 100000 MB/s \
                 (0: unpaced), got 100001",
            ),
            (
                "[storage]\nwal_segment_bytes = 10\n",
                "config key `storage.wal_segment_bytes`: must be at least 65536, got 10",
            ),
            (
                "[node]\nmax_frame_size = 10\n",
                "config key `node.max_frame_size`: must be at least 1024 bytes",
            ),
            (
                "[http.tokens]\nadmin = [\"short\"]\n",
                "config key `http.tokens.admin`: a token must be at least 16 characters long, \
                 got 5",
            ),
            (
                "[http.tokens]\nadmin = [\"0123456789 abcdef\"]\n",
                "config key `http.tokens.admin`: a token must be visible ASCII characters \
                 without spaces",
            ),
            (
                "[gossip]\nsuspect_timeout_s = 5\ndead_timeout_s = 4\n",
                "config key `gossip.dead_timeout_s`: must be at least gossip.suspect_timeout_s",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(err(text), want, "{text:?}");
        }
    }

    #[test]
    fn gossip_keys_have_seed_000_defaults_and_reach_the_swim_core() {
        let c = Config::default();
        let g = &c.gossip;
        assert_eq!(
            (
                g.cycle_interval_ms,
                g.suspect_timeout_s,
                g.dead_timeout_s,
                g.prune_timeout_s,
                g.hybrid_threshold,
                g.rumor_limit_per_frame
            ),
            (1000, 10, 30, 300, 10, 5)
        );
        assert_eq!(c.cluster.seed_retry_ms, 2000);
        assert_eq!(
            (
                c.latency.enabled,
                c.latency.interval_s,
                c.latency.history_size
            ),
            (true, 5, 10)
        );
        let text = r#"
[node]
id = 2
listen = "127.0.0.1:7002"
http = "127.0.0.1:7102"
[cluster]
initial_members = [
  { id = 1, addr = "127.0.0.1:7001", http = "127.0.0.1:7101" },
  { id = 2, addr = "127.0.0.1:7002", http = "127.0.0.1:7102" },
  { id = 3, addr = "127.0.0.1:7003", http = "127.0.0.1:7103" },
]
seed_retry_ms = 500
[gossip]
cycle_interval_ms = 200
probe_timeout_ms = 80
suspect_timeout_s = 1
dead_timeout_s = 2
prune_timeout_s = 60
lifeguard = false
"#;
        let c = Config::parse(text).unwrap();
        let s = c.swim_config();
        assert_eq!(s.cycle_interval_ms, 200);
        assert_eq!(s.probe_timeout_ms, 80);
        assert_eq!((s.suspect_timeout_s, s.dead_timeout_s), (1, 2));
        assert_eq!(s.seed_retry_ms, 500);
        assert!(!s.lifeguard);
        // No seeds given: every other initial member is one.
        assert_eq!(s.seeds, vec!["127.0.0.1:7001", "127.0.0.1:7003"]);
        let with_seed = format!("{text}\n").replace(
            "seed_retry_ms = 500",
            "seed_retry_ms = 500\nseeds = [\"127.0.0.1:7003\"]",
        );
        let c = Config::parse(&with_seed).unwrap();
        assert_eq!(c.swim_config().seeds, vec!["127.0.0.1:7003"]);
    }

    #[test]
    fn acceptance3_off_loopback_needs_tls_and_tokens() {
        // Loopback stays zero-config.
        assert!(Config::parse("").is_ok());
        // Listening on every interface without protection: refused, naming what is missing.
        let e = err("[node]\nhttp = \"0.0.0.0:7101\"\n");
        assert!(
            e.contains("node.http 0.0.0.0:7101 is not a loopback address"),
            "{e}"
        );
        assert!(
            e.contains("[tls] (transport TLS), [http.tls] (HTTPS) and [http.tokens]"),
            "{e}"
        );
        assert!(e.contains("allow_insecure"), "{e}");
        let e = err("[node]\nlisten = \"10.0.0.1:7001\"\nhttp = \"10.0.0.1:7101\"\n");
        assert!(
            e.contains("node.listen 10.0.0.1:7001 and node.http 10.0.0.1:7101 are"),
            "{e}"
        );
        // Only what is missing is named.
        let partial = "[node]\nlisten = \"0.0.0.0:7001\"\n[tls]\ncert = \"a\"\nkey = \"b\"\nca = \"c\"\n[http.tokens]\nadmin_file = \"t\"\n";
        let e = err(partial);
        assert!(e.contains("without [http.tls] (HTTPS);"), "{e}");
        // All three present: accepted.
        let full = format!("{partial}[http.tls]\ncert = \"a\"\nkey = \"b\"\n");
        assert!(Config::parse(&full).is_ok());
        // The explicit opt-out.
        let c = Config::parse("[node]\nhttp = \"0.0.0.0:7101\"\nallow_insecure = true\n").unwrap();
        assert!(c.node.allow_insecure);
        let exposed: Vec<String> = c
            .exposed_addresses()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(exposed, vec!["node.http 0.0.0.0:7101"]);
    }

    #[test]
    fn http_keys_are_validated_and_named() {
        let c = Config::default();
        assert!(c.http.public_health && !c.http.public_metrics);
        assert_eq!(c.http.max_inflight_bytes, 64 * 1024 * 1024);
        assert_eq!(c.http.body_timeout_ms, 10_000);
        let cases = [
            ("[http]\nbody_timeout_ms = 0\n", "http.body_timeout_ms"),
            ("[http]\nmax_inflight_bytes = 1000\n", "http.max_inflight_bytes"),
            ("[http.tls]\ncert = \"a\"\nkey = \"b\"\n", "http.tls.ca"),
            ("[http.tokens]\nclient = [\"0123456789abcdef\"]\n", "http.tokens.admin"),
            ("[http.tokens]\nadmin = [\"short\"]\n", "http.tokens.admin"),
            (
                "[http.tokens]\nadmin = [\"0123456789abcdef\"]\nclient = [\"with space 0123456789\"]\n",
                "http.tokens.client",
            ),
            ("[http]\ntoken = \"x\"\n", "token"),
        ];
        for (text, key) in cases {
            let e = err(text);
            assert!(e.contains(key), "{text:?} gave {e}");
        }
        let text = "[http]\npublic_metrics = true\n[http.tls]\ncert = \"a\"\nkey = \"b\"\nca = \"c\"\n[http.tokens]\nadmin_file = \"admin.token\"\nclient = [\"0123456789abcdef\"]\n";
        let c = Config::parse(text).unwrap();
        assert_eq!(Config::parse(&c.to_toml().unwrap()).unwrap(), c);
    }

    #[test]
    fn snapshot_section_defaults_validation_and_old_name() {
        let c = Config::default();
        let s = &c.snapshot;
        assert_eq!(
            (
                s.threshold_entries,
                s.threshold_log_bytes,
                s.keep_entries,
                s.chunk_bytes,
                s.max_send_rate_mb_s,
                s.max_concurrent_sends,
                s.write_rate_mb_s,
                s.threshold_jitter_pct,
                s.log_image_pct
            ),
            (10_000, 64 << 20, 1_000, 1 << 20, 100, 2, 50, 20, 25)
        );
        // An unpaced image writer and no jitter are allowed.
        let c =
            Config::parse("[snapshot]\nwrite_rate_mb_s = 0\nthreshold_jitter_pct = 0\n").unwrap();
        assert_eq!(
            (c.snapshot.write_rate_mb_s, c.snapshot.threshold_jitter_pct),
            (0, 0)
        );
        assert_eq!(c.snapshot_threshold_entries(), 10_000);
        // 0 thresholds mean "never automatically" and are accepted.
        let c =
            Config::parse("[snapshot]\nthreshold_entries = 0\nthreshold_log_bytes = 0\n").unwrap();
        assert_eq!(c.snapshot_threshold_entries(), 0);
        // The older [raft] name still works alone, and agrees with the new one.
        let c = Config::parse("[raft]\nsnapshot_threshold = 50\n").unwrap();
        assert_eq!(c.snapshot_threshold_entries(), 50);
        let c =
            Config::parse("[raft]\nsnapshot_threshold = 50\n[snapshot]\nthreshold_entries = 50\n")
                .unwrap();
        assert_eq!(c.snapshot_threshold_entries(), 50);
        let cases = [
            (
                "[raft]\nsnapshot_threshold = 50\n[snapshot]\nthreshold_entries = 60\n",
                "raft.snapshot_threshold",
            ),
            ("[snapshot]\nchunk_bytes = 100\n", "snapshot.chunk_bytes"),
            (
                "[node]\nmax_frame_size = 65536\n[snapshot]\nchunk_bytes = 65536\n",
                "snapshot.chunk_bytes",
            ),
            (
                "[snapshot]\nmax_send_rate_mb_s = 0\n",
                "snapshot.max_send_rate_mb_s",
            ),
            (
                "[snapshot]\nmax_concurrent_sends = 0\n",
                "snapshot.max_concurrent_sends",
            ),
            (
                "[snapshot]\nthreshold_jitter_pct = 101\n",
                "snapshot.threshold_jitter_pct",
            ),
            (
                "[snapshot]\nlog_image_pct = 10001\n",
                "snapshot.log_image_pct",
            ),
            ("[snapshot]\nthreshold = 5\n", "threshold"),
            (
                "[storage]\nwal_segment_bytes = 1000\n",
                "storage.wal_segment_bytes",
            ),
        ];
        for (text, key) in cases {
            let e = err(text);
            assert!(e.contains(key), "{text:?} gave {e}");
        }
        let text = "[snapshot]\nthreshold_entries = 5\nkeep_entries = 2\nchunk_bytes = 8192\n";
        let c = Config::parse(text).unwrap();
        assert_eq!(Config::parse(&c.to_toml().unwrap()).unwrap(), c);
    }

    #[test]
    fn missing_file_names_the_path() {
        let e = Config::load(Path::new("/nonexistent/n1.toml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/n1.toml"));
    }

    #[test]
    fn a_joining_node_has_no_bootstrap_members_and_seeds_of_its_own() {
        let c =
            Config::parse("[node]\nid = 4\n[cluster]\njoin = true\nseeds = [\"127.0.0.1:7009\"]\n")
                .unwrap();
        assert!(c.bootstrap_members().is_empty());
        // Its seeds are not initial members (it has none), and gossip joins through them.
        assert_eq!(c.swim_config().seeds, vec!["127.0.0.1:7009".to_owned()]);
        // Without `join`, a seed must be an initial member's address.
        let e =
            Config::parse("[node]\nid = 4\n[cluster]\nseeds = [\"127.0.0.1:7009\"]\n").unwrap_err();
        assert!(e.to_string().contains("cluster.seeds"), "{e}");
        // A joining node with initial members is a contradiction.
        let e = Config::parse(
            "[node]\nid = 4\n[cluster]\njoin = true\n[[cluster.initial_members]]\nid = 1\naddr = \"127.0.0.1:7001\"\nhttp = \"127.0.0.1:7101\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("cluster.initial_members"), "{e}");
    }
}
