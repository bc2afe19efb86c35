//! The gossip actor: hosts the node's sans-IO SWIM core ([`conclave_core::swim::Swim`]) on the
//! transport and publishes who is alive, suspect, dead or gone, where they listen, what they
//! publish and how far away they are (docs/gossip.md, "The gossip actor").
//!
//! - **Frames** travel as [`WireMessage::Swim`] on the same transport links as Raft. Links are
//!   opened on demand with [`Endpoint::peer`]; links only gossip uses (not a Raft peer's) are
//!   released with [`Endpoint::remove_peer`] once idle for `node.read_timeout_s`, when their
//!   member is forgotten, and — least recently used first — when the node holds more than
//!   `node.max_peers` links. Gossip is best effort: a full link queue or a full mailbox drops
//!   the frame (counted), which the protocol tolerates like any lost datagram.
//! - **Timers**: the core's [`Action::SetTimer`]s go into one min-heap per actor, with a single
//!   actix timer armed for the earliest deadline — not one task per timer. The core ignores
//!   stale timers, so nothing is ever cancelled.
//! - **Incarnation** is persisted in `data_dir/gossip.incarnation` (written to a temporary file,
//!   fsynced, renamed, directory fsynced) before any frame announces it; a restart starts one
//!   above it, so it rejoins with a higher incarnation at once. A corrupt file refuses to start
//!   with an error naming it.
//! - **Publishes** after every change: the member list (read by `GET /v1/cluster`,
//!   `GET /v1/cluster/members` and `conclave status`), the `conclave_gossip_members{state}`
//!   gauge, [`Event`]s to subscribers (a `tokio` broadcast channel) and per-peer round-trip
//!   history (the latency monitor, `[latency]`).
//! - **Leave**: on shutdown the node asks the actor to leave; the `Left` frames are flushed
//!   (bounded wait) before the transport closes.
//!
//! The actor is supervised; a restarted instance rebuilds its core from the configuration, the
//! persisted incarnation (plus one) and the application metadata last set.

use super::wire::WireMessage;
use super::{NodeHandle, StopActor};
use crate::api::{GossipCounters, GossipMember, GossipMembers, RttStats};
use crate::config::{Config, LatencySection};
use crate::state_machine::StateMachine;
use actix::prelude::*;
use conclave_actors::supervisor::ChildGuard;
use conclave_core::swim::{
    Action, Event, Identity, Incarnation, Member, MemberState, Message, Metadata, MetadataError,
    Millis, NodeId, Swim, SwimConfig, SwimError, SwimStats, Timer, MAX_INCARNATION,
};
use conclave_transport::{Endpoint, PeerLink, TrySendError};
use parking_lot::{Mutex, RwLock};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, oneshot};

/// The file in the data directory that holds the node's last incarnation.
pub const INCARNATION_FILE: &str = "gossip.incarnation";
/// Events buffered per subscriber; a slower subscriber gets `RecvError::Lagged`.
pub const EVENT_CAPACITY: usize = 1024;
/// The gossip actor's mailbox bound (inbound frames beyond it are dropped and counted).
const MAILBOX_CAPACITY: usize = 4096;
/// Most undialable addresses remembered (to log each once).
const MAX_WARNED: usize = 1024;
/// Longest wait for a gossip actor to be running (at start, or restarting after a failure).
const ACTOR_WAIT: Duration = Duration::from_secs(2);
/// Longest wait for the `Left` frames to leave the link queues on shutdown.
const LEAVE_FLUSH: Duration = Duration::from_millis(500);

/// What can go wrong in gossip, at the node's boundary.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    /// The persisted incarnation cannot be read or written (names the file).
    #[error("gossip incarnation file {path}: {problem}")]
    IncarnationFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        problem: IncarnationProblem,
    },
    /// Application metadata refused (too many entries, too large, empty key, node left).
    #[error("invalid gossip metadata: {0}")]
    Metadata(#[from] MetadataError),
    /// The gossip actor is restarting or stopped.
    #[error("gossip is not running (restarting or stopped)")]
    NotRunning,
    /// The node's identity or gossip configuration is unusable.
    #[error("gossip cannot start: {0}")]
    Swim(#[from] SwimError),
}

// ---------------------------------------------------------------------------------------------
// The persisted incarnation

/// What is wrong with the persisted incarnation file ([`GossipError::IncarnationFile`]).
#[derive(Debug, thiserror::Error)]
pub enum IncarnationProblem {
    /// A file system call failed.
    #[error("cannot {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not text.
    #[error("corrupt: not UTF-8 text")]
    NotUtf8,
    /// The file does not end its one line with a newline (a torn write).
    #[error("corrupt: expected one number and a newline")]
    NoNewline,
    /// The line is not a number; the field is the line as found (the file's text, echoed).
    #[error("corrupt: expected a number, found {0:?}")]
    NotANumber(String),
    /// The number is above [`MAX_INCARNATION`].
    #[error("corrupt: incarnation {0} is above the maximum {MAX_INCARNATION}")]
    TooLarge(Incarnation),
}

fn file_error(path: &Path, problem: IncarnationProblem) -> GossipError {
    GossipError::IncarnationFile {
        path: path.to_owned(),
        problem,
    }
}

/// Reads the persisted incarnation: `None` if the file does not exist (a new node). The file
/// holds one decimal number and a newline; anything else (a torn or edited file, a value above
/// [`MAX_INCARNATION`]) is an error naming the file, never a silent reset to 0.
pub fn load_incarnation(path: &Path) -> Result<Option<Incarnation>, GossipError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(file_error(
                path,
                IncarnationProblem::Io { op: "read", source },
            ))
        }
    };
    let text =
        std::str::from_utf8(&bytes).map_err(|_| file_error(path, IncarnationProblem::NotUtf8))?;
    let line = text
        .strip_suffix('\n')
        .ok_or_else(|| file_error(path, IncarnationProblem::NoNewline))?;
    let n: Incarnation = line
        .parse()
        .map_err(|_| file_error(path, IncarnationProblem::NotANumber(line.to_owned())))?;
    if n > MAX_INCARNATION {
        return Err(file_error(path, IncarnationProblem::TooLarge(n)));
    }
    Ok(Some(n))
}

/// Writes the incarnation atomically: a temporary file, fsynced, renamed over the old one, then
/// the directory fsynced so the rename itself survives a crash.
pub fn store_incarnation(path: &Path, incarnation: Incarnation) -> Result<(), GossipError> {
    let tmp = path.with_extension("incarnation.tmp");
    let io = |op: &'static str, source: std::io::Error| {
        file_error(path, IncarnationProblem::Io { op, source })
    };
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("create the temporary file", e))?;
        f.write_all(format!("{incarnation}\n").as_bytes())
            .map_err(|e| io("write", e))?;
        f.sync_all().map_err(|e| io("fsync", e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| io("rename the temporary file", e))?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("fsync the directory", e))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// What the node publishes

impl RttStats {
    fn from_samples(samples: &VecDeque<u64>) -> Option<RttStats> {
        let last = *samples.back()?;
        let min = samples.iter().copied().min()?;
        let max = samples.iter().copied().max()?;
        let avg = samples.iter().sum::<u64>() as f64 / samples.len() as f64;
        Some(RttStats {
            samples_ms: samples.iter().copied().collect(),
            last_ms: last,
            min_ms: min,
            avg_ms: avg,
            max_ms: max,
        })
    }
}

impl From<SwimStats> for GossipCounters {
    fn from(s: SwimStats) -> Self {
        GossipCounters {
            rejected_updates: s.rejected_updates,
            rejected_messages: s.rejected_messages,
            refutations: s.refutations,
            suspicions_started: s.suspicions_started,
            deaths_declared: s.deaths_declared,
        }
    }
}

/// The last published view of the core.
#[derive(Clone, Debug, Default)]
struct View {
    members: Vec<Member>,
    incarnation: Incarnation,
    local_health: u32,
    joined: bool,
    stats: SwimStats,
}

/// Per-peer round-trip history.
#[derive(Debug, Default)]
struct PeerLatency {
    samples: VecDeque<u64>,
    last_sample: Option<Instant>,
}

/// The gossip metadata key a drained node publishes (value `"true"`; absent otherwise), so
/// every node's `/v1/cluster` and the leader's `/v1/cluster/config` show who is drained
/// (`conclave member drain`). Reserved: [`NodeHandle::set_app_metadata`] keeps it as the node
/// set it.
pub const DRAINED_KEY: &str = "conclave.drained";

/// The gossip metadata key a sharded node publishes the number of shards it leads under (a
/// decimal number), read by every node's leader balancer (`balance.rs`). Reserved like
/// [`DRAINED_KEY`].
pub const LEADERS_KEY: &str = "conclave.shard_leaders";

/// The metadata keys the node sets itself: [`NodeHandle::set_app_metadata`] keeps them as the
/// node set them.
const RESERVED_KEYS: [&str; 2] = [DRAINED_KEY, LEADERS_KEY];

/// State shared by the gossip actor's successive instances and the node's handle.
pub struct GossipShared {
    view: RwLock<View>,
    latency: Mutex<HashMap<NodeId, PeerLatency>>,
    events: broadcast::Sender<Event>,
    /// The application metadata last set, republished by a restarted actor.
    app: Mutex<BTreeMap<String, String>>,
    /// The incarnation last persisted.
    incarnation: AtomicU64,
    /// Whether an actor instance was started already (a restart bumps the incarnation).
    started: AtomicBool,
    /// The members the replicated membership names, once the node has published them (a
    /// restarted actor starts from it); `None` until then: the configured initial members.
    book: Mutex<Option<MemberBook>>,
}

/// Who gossip hears, knows and dials, from the replicated membership (every group's members):
/// written by the node's peer set when the membership changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberBook {
    /// Every other member with its addresses: the allowlist, dialled at these addresses.
    pub members: BTreeMap<NodeId, crate::config::MemberConfig>,
    /// Nodes removed from the membership: marked `left` (no longer heard or dialled).
    pub removed: BTreeSet<NodeId>,
}

impl GossipShared {
    /// Gossip's events from now on (the Raft workers wake quiesced groups on them).
    pub(super) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Shared state for a node whose core starts at `incarnation`, published as `initial`
    /// until the actor publishes its own view.
    fn new(initial: Vec<Member>, incarnation: Incarnation) -> Arc<GossipShared> {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Arc::new(GossipShared {
            view: RwLock::new(View {
                members: initial,
                incarnation,
                ..View::default()
            }),
            latency: Mutex::new(HashMap::new()),
            events,
            app: Mutex::new(BTreeMap::new()),
            incarnation: AtomicU64::new(incarnation),
            started: AtomicBool::new(false),
            book: Mutex::new(None),
        })
    }

    /// Records the members the replicated membership names; the caller then tells the live
    /// actor with [`MembersChanged`].
    pub(super) fn set_book(&self, book: MemberBook) {
        *self.book.lock() = Some(book);
    }

    /// The members as last published, this node first.
    pub(super) fn members(&self) -> Vec<Member> {
        self.view.read().members.clone()
    }

    /// Whether gossip holds `id` dead or gone (`left`): the shard router does not forward a
    /// request to it (it would wait for an answer that cannot come). Unknown members are not.
    pub(super) fn is_down(&self, id: NodeId) -> bool {
        self.view
            .read()
            .members
            .iter()
            .any(|m| m.id == id && matches!(m.state, MemberState::Dead | MemberState::Left))
    }

    fn snapshot(&self, node_id: NodeId) -> GossipMembers {
        let view = self.view.read().clone();
        let latency = self.latency.lock();
        let mut counts: BTreeMap<String, usize> = [
            MemberState::Alive,
            MemberState::Suspect,
            MemberState::Dead,
            MemberState::Left,
        ]
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
        for m in &view.members {
            *counts.entry(m.state.as_str().to_owned()).or_default() += 1;
        }
        let members = view
            .members
            .iter()
            .map(|m| GossipMember {
                id: m.id,
                state: m.state.as_str().to_owned(),
                incarnation: m.incarnation,
                addr: m.addr.clone(),
                http: m.http.clone(),
                metadata: m.metadata.entries.clone(),
                metadata_version: m.metadata.version,
                rtt: latency
                    .get(&m.id)
                    .and_then(|l| RttStats::from_samples(&l.samples)),
            })
            .collect();
        GossipMembers {
            node_id,
            incarnation: view.incarnation,
            local_health: view.local_health,
            joined: view.joined,
            counts,
            stats: view.stats.into(),
            members,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The actor

/// A SWIM frame from a peer (the transport authenticated its sender).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SwimInbound(pub Message);

/// Publish new application metadata.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetMetadata {
    /// The change.
    pub update: MetadataUpdate,
    /// Told whether the core accepted it.
    pub reply: oneshot::Sender<Result<(), MetadataError>>,
}

/// A change of this node's metadata, applied by the actor to the map last set (so that two
/// changes made at once both land).
pub enum MetadataUpdate {
    /// The application's map replaces everything but the [`RESERVED_KEYS`], which stay.
    App(BTreeMap<String, String>),
    /// One key the node sets itself, set or removed.
    Own(&'static str, Option<String>),
}

/// Leave the cluster gracefully; answered once the `Left` frames are flushed (bounded wait).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave;

/// Makes the actor panic, to test supervision (tests and the chaos harness only).
#[cfg(any(test, feature = "fault-injection"))]
#[derive(Message)]
#[rtype(result = "()")]
pub struct InjectPanic;

/// The member book in [`GossipShared`] changed: re-read it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MembersChanged;

/// Everything a gossip actor needs, shared by its successive instances.
pub struct GossipDeps {
    /// This node: id, transport and HTTP addresses.
    pub identity: Identity,
    /// The core's configuration.
    pub swim: SwimConfig,
    /// Members known from the configuration (the Raft initial members), preloaded alive.
    pub preload: Vec<Member>,
    /// The transport.
    pub endpoint: Arc<dyn Endpoint<WireMessage>>,
    /// Peers whose links Raft uses, at their configured addresses: gossip reaches them over
    /// the very same link (one per peer) and never releases it. Until the node publishes a
    /// [`MemberBook`]; then the book's members.
    pub raft_peers: BTreeMap<NodeId, SocketAddr>,
    /// Where the incarnation is persisted.
    pub incarnation_file: PathBuf,
    /// `node.max_peers`.
    pub max_peers: usize,
    /// Gossip-only links idle this long are released.
    pub idle_link: Duration,
    /// `[latency]`.
    pub latency: LatencySection,
    /// Shared state.
    pub shared: Arc<GossipShared>,
    /// The node's monotonic epoch: the core's `now` is milliseconds since it.
    pub epoch: Instant,
}

struct Link {
    addr: SocketAddr,
    link: PeerLink<WireMessage>,
    used: Instant,
}

/// The actor. See the module docs.
pub struct GossipActor {
    deps: Arc<GossipDeps>,
    core: Swim,
    actions: Vec<Action>,
    /// Pending timers, earliest first; `seq` keeps equal deadlines in arrival order.
    timers: BinaryHeap<Reverse<(Millis, u64, Timer)>>,
    timer_seq: u64,
    /// The one armed actix timer and the deadline it was armed for.
    wake: Option<(Millis, SpawnHandle)>,
    links: HashMap<NodeId, Link>,
    /// The configured members (preloaded and Raft peers; later the replicated membership's)
    /// and the address each is dialled at: the only nodes this actor hears, knows and dials
    /// (issue 12, finding 6). Raft uses the same links, so they are never released.
    configured: HashMap<NodeId, SocketAddr>,
    /// Node ids of the configured members' transport addresses, to dial seeds the core
    /// addresses by address only.
    known_addrs: HashMap<String, NodeId>,
    /// Peers whose links Raft uses too: never released (`deps.raft_peers`, then the members
    /// of the replicated membership).
    raft_peers: BTreeSet<NodeId>,
    /// Addresses already reported as undialable (logged once each).
    warned: HashSet<String>,
    persisted: Incarnation,
    _guard: ChildGuard,
}

fn drop_frame(reason: &'static str) {
    metrics::counter!("conclave_gossip_frames_dropped_total", "reason" => reason).increment(1);
}

impl GossipActor {
    /// A gossip actor. The first instance starts at the incarnation the node loaded; every
    /// restart moves one above the last persisted value (and persists it) so the cluster takes
    /// the new instance's word over the old one's.
    pub fn new(deps: Arc<GossipDeps>, guard: ChildGuard) -> Result<GossipActor, GossipError> {
        let shared = &deps.shared;
        let mut incarnation = shared.incarnation.load(Ordering::SeqCst);
        if shared.started.swap(true, Ordering::SeqCst) {
            incarnation = (incarnation + 1).min(MAX_INCARNATION);
            store_incarnation(&deps.incarnation_file, incarnation)?;
            shared.incarnation.store(incarnation, Ordering::SeqCst);
        }
        let seed = deps.identity.id.get()
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        let mut core = Swim::new(deps.swim.clone(), deps.identity.clone(), seed)?
            .with_incarnation(incarnation);
        core.preload(deps.preload.iter().cloned());
        // Only the configured members (issue 12, finding 6): frames from anyone else and rumors
        // about anyone else are refused, so the table holds the cluster and nothing more.
        let mut configured: HashMap<NodeId, SocketAddr> = deps
            .preload
            .iter()
            .filter_map(|m| Some((m.id, m.addr.parse().ok()?)))
            .collect();
        // A Raft peer's configured address wins: it is the address of Raft's own link.
        configured.extend(deps.raft_peers.iter().map(|(id, addr)| (*id, *addr)));
        core.set_allowed_members(Some(
            configured
                .keys()
                .copied()
                .chain([deps.identity.id])
                .collect(),
        ));
        let app = shared.app.lock().clone();
        if !app.is_empty() {
            // Set before: the same limits applied then.
            core.set_metadata(0, app)?;
        }
        let known_addrs = configured
            .iter()
            .map(|(id, a)| (a.to_string(), *id))
            .collect();
        let raft_peers = deps.raft_peers.keys().copied().collect();
        let mut actor = GossipActor {
            deps,
            core,
            actions: Vec::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            wake: None,
            links: HashMap::new(),
            raft_peers,
            configured,
            known_addrs,
            warned: HashSet::new(),
            persisted: incarnation,
            _guard: guard,
        };
        // A restarted actor follows the membership the node published before.
        let book = actor.deps.shared.book.lock().clone();
        if let Some(book) = book {
            actor.apply_book(0, &book);
        }
        Ok(actor)
    }

    /// Follows the replicated membership: its members are the only ones heard, known and
    /// dialled (at the addresses it carries); a new member is added alive (probing checks it
    /// at once), and a removed one is marked `left` locally — every member applies the same
    /// membership, so no rumor is needed, and rumors about it are refused from now on.
    fn apply_book(&mut self, now: Millis, book: &MemberBook) {
        let me = self.deps.identity.id;
        let configured: HashMap<NodeId, SocketAddr> = book
            .members
            .values()
            .filter(|m| m.id != me)
            .map(|m| (m.id, m.addr))
            .collect();
        // Links to members no longer configured (or now at another address) are dropped:
        // the transport forgets removed peers itself.
        self.links
            .retain(|id, l| configured.get(id).is_some_and(|a| *a == l.addr));
        self.core
            .set_allowed_members(Some(configured.keys().copied().chain([me]).collect()));
        self.core.preload(
            book.members
                .values()
                .filter(|m| m.id != me)
                .map(|m| Member {
                    id: m.id,
                    addr: m.addr.to_string(),
                    http: m.http.to_string(),
                    incarnation: 0,
                    state: MemberState::Alive,
                    metadata: Metadata::default(),
                }),
        );
        for &id in &book.removed {
            if !configured.contains_key(&id) {
                self.core.mark_left(now, id);
            }
        }
        self.known_addrs = configured
            .iter()
            .map(|(id, a)| (a.to_string(), *id))
            .collect();
        self.raft_peers = configured.keys().copied().collect();
        self.configured = configured;
    }

    fn now(&self) -> Millis {
        self.deps.epoch.elapsed().as_millis() as Millis
    }

    /// Carries out what the core asked for, then re-arms the timer.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        let mut actions = std::mem::take(&mut self.actions);
        self.core.poll_actions(&mut actions);
        // Persist a raised incarnation before any frame announces it: a restart must start
        // above every incarnation the cluster may have heard.
        let incarnation = self.core.incarnation();
        if incarnation > self.persisted {
            if let Err(e) = store_incarnation(&self.deps.incarnation_file, incarnation) {
                tracing::error!(error = %e, "cannot persist the gossip incarnation; stopping gossip");
                ctx.stop();
                return;
            }
            self.persisted = incarnation;
            self.deps
                .shared
                .incarnation
                .store(incarnation, Ordering::SeqCst);
        }
        let mut changed = false;
        for action in actions.drain(..) {
            match action {
                Action::Send { to, addr, msg } => self.send(to, &addr, msg),
                Action::SetTimer { at, timer } => {
                    self.timer_seq += 1;
                    self.timers.push(Reverse((at, self.timer_seq, timer)));
                }
                Action::Notify(event) => {
                    changed = true;
                    self.on_event(&event);
                    // No subscriber is not an error.
                    let _ = self.deps.shared.events.send(event);
                }
                Action::RoundTrip { peer, rtt_ms } => self.record_rtt(peer, rtt_ms),
            }
        }
        self.actions = actions;
        if changed {
            self.publish();
        }
        self.arm(ctx);
    }

    fn on_event(&mut self, event: &Event) {
        let me = self.deps.identity.id;
        match event {
            Event::Joined(m) => {
                tracing::info!(node = %me, member = %m.id, incarnation = m.incarnation, addr = %m.addr, "gossip: member joined")
            }
            Event::Alive(m) => tracing::info!(
                node = %me,
                member = %m.id,
                incarnation = m.incarnation,
                "gossip: member refuted its suspicion"
            ),
            Event::Suspect(m) => tracing::warn!(
                node = %me,
                member = %m.id,
                incarnation = m.incarnation,
                "gossip: member suspect"
            ),
            Event::Dead(m) => tracing::warn!(
                node = %me,
                member = %m.id,
                incarnation = m.incarnation,
                "gossip: member dead"
            ),
            Event::Left(m) => tracing::info!(
                node = %me,
                member = %m.id,
                incarnation = m.incarnation,
                "gossip: member left"
            ),
            Event::MetadataChanged(m) => tracing::debug!(
                node = %me,
                member = %m.id,
                version = m.metadata.version,
                "gossip: metadata changed"
            ),
            Event::Removed(id) => {
                tracing::info!(node = %me, member = %id, "gossip: member forgotten (pruned)");
                self.deps.shared.latency.lock().remove(id);
                if !self.raft_peers.contains(id) && self.links.remove(id).is_some() {
                    self.deps.endpoint.remove_peer(*id);
                }
            }
            Event::Refuted { incarnation } => tracing::warn!(
                node = %me,
                incarnation,
                "gossip: refuted a rumor about this node"
            ),
            Event::JoinedCluster => {
                tracing::info!(node = %me, "gossip: joined the cluster through a seed")
            }
        }
    }

    /// Arms the actix timer for the earliest pending deadline, if not armed for it already.
    fn arm(&mut self, ctx: &mut Context<Self>) {
        let Some(Reverse((at, _, _))) = self.timers.peek() else {
            return;
        };
        let at = *at;
        if let Some((armed, handle)) = &self.wake {
            if *armed <= at {
                return;
            }
            ctx.cancel_future(*handle);
        }
        let delay = Duration::from_millis(at.saturating_sub(self.now()));
        let handle = ctx.run_later(delay, |act, ctx| {
            act.wake = None;
            act.fire(ctx);
        });
        self.wake = Some((at, handle));
    }

    /// Hands every due timer to the core.
    fn fire(&mut self, ctx: &mut Context<Self>) {
        let now = self.now();
        while let Some(Reverse((at, _, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            if let Some(Reverse((_, _, timer))) = self.timers.pop() {
                self.core.handle_timer(now, timer);
            }
        }
        self.drain(ctx);
    }

    fn send(&mut self, to: NodeId, addr: &str, msg: Message) {
        if addr.parse::<SocketAddr>().is_err() {
            // The core accepts any non-empty address string; the transport needs host:port.
            if self.warned.insert(addr.to_owned()) {
                tracing::warn!(
                    node = %self.deps.identity.id,
                    member = %to,
                    addr,
                    "gossip: cannot dial an address that is not ip:port"
                );
            }
            drop_frame("bad_address");
            return;
        }
        let to = if to != NodeId::NONE {
            to
        } else {
            // A join to a seed known by address only: the transport authenticates peers by
            // node id, so the seed must be a configured member (config validation says so).
            match self.known_addrs.get(addr) {
                Some(id) => *id,
                None => {
                    if self.warn_once(addr) {
                        tracing::warn!(
                            node = %self.deps.identity.id,
                            addr,
                            "gossip: no node id known for this address; cannot dial it"
                        );
                    }
                    drop_frame("unknown_address");
                    return;
                }
            }
        };
        if to == self.deps.identity.id {
            return;
        }
        // Only configured members are dialled, at their configured address (issue 12, finding
        // 6): an address learnt from gossip is never dialled, so no peer can make this node
        // connect where it chooses. (It is also the address of Raft's own link: asking the
        // transport for another one would replace it.)
        let Some(sock) = self.configured.get(&to).copied() else {
            drop_frame("not_member");
            return;
        };
        let link = self.link(to, sock);
        match link.try_send(WireMessage::Swim(msg)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => drop_frame("queue_full"),
            Err(TrySendError::Closed(_)) => {
                self.links.remove(&to);
                drop_frame("link_closed");
            }
            Err(TrySendError::Encode(_, e)) => {
                tracing::error!(node = %self.deps.identity.id, peer = %to, error = %e, "gossip frame cannot be framed; dropped");
                drop_frame("encode");
            }
        }
    }

    /// Whether `addr` should be logged: once per address, and not at all past
    /// [`MAX_WARNED`] addresses (peers choose them; the set must stay bounded).
    fn warn_once(&mut self, addr: &str) -> bool {
        self.warned.len() < MAX_WARNED && self.warned.insert(addr.to_owned())
    }

    /// The link to `to` at `addr`, opened on demand.
    fn link(&mut self, to: NodeId, addr: SocketAddr) -> PeerLink<WireMessage> {
        let now = Instant::now();
        if let Some(l) = self.links.get_mut(&to) {
            if l.addr == addr && !l.link.is_closed() {
                l.used = now;
                return l.link.clone();
            }
        }
        let link = self.deps.endpoint.peer(to, addr);
        self.links.insert(
            to,
            Link {
                addr,
                link: link.clone(),
                used: now,
            },
        );
        link
    }

    /// Releases gossip-only links idle for `idle_link`, then the least recently used ones
    /// (idle for at least two protocol periods) while the node holds more than `max_peers`
    /// links.
    fn trim_links(&mut self) {
        let raft = &self.raft_peers;
        let now = Instant::now();
        let raft = |id: &NodeId| raft.contains(id);
        let mut release: Vec<NodeId> = self
            .links
            .iter()
            .filter(|(id, l)| !raft(id) && now.duration_since(l.used) >= self.deps.idle_link)
            .map(|(id, _)| *id)
            .collect();
        let held = self.raft_peers.len() + self.links.keys().filter(|id| !raft(id)).count();
        let mut excess = held
            .saturating_sub(self.deps.max_peers)
            .saturating_sub(release.len());
        if excess > 0 {
            // Links used within two protocol periods (stretched by Lifeguard's local health,
            // like the probes) are in use: releasing them would only reopen them.
            let period = self
                .deps
                .swim
                .cycle_interval_ms
                .saturating_mul(u64::from(self.core.local_health()) + 1);
            let cycle = Duration::from_millis(period.saturating_mul(2));
            let mut idle: Vec<(Instant, NodeId)> = self
                .links
                .iter()
                .filter(|(id, l)| {
                    !raft(id) && !release.contains(id) && now.duration_since(l.used) >= cycle
                })
                .map(|(id, l)| (l.used, *id))
                .collect();
            idle.sort_unstable();
            for (_, id) in idle {
                if excess == 0 {
                    break;
                }
                release.push(id);
                excess -= 1;
            }
        }
        for id in release {
            self.links.remove(&id);
            self.deps.endpoint.remove_peer(id);
        }
        metrics::gauge!("conclave_gossip_links").set(self.links.len() as f64);
    }

    fn record_rtt(&mut self, peer: NodeId, rtt_ms: Millis) {
        let cfg = &self.deps.latency;
        if !cfg.enabled {
            return;
        }
        let interval = Duration::from_secs(cfg.interval_s);
        let mut latency = self.deps.shared.latency.lock();
        let entry = latency.entry(peer).or_default();
        if entry.last_sample.is_some_and(|t| t.elapsed() < interval) {
            return;
        }
        entry.last_sample = Some(Instant::now());
        entry.samples.push_back(rtt_ms);
        while entry.samples.len() > cfg.history_size {
            entry.samples.pop_front();
        }
    }

    /// Publishes the view, the member gauge and the counters.
    fn publish(&mut self) {
        let core = &self.core;
        let me_alive = usize::from(!core.has_left());
        let alive = core.count(MemberState::Alive) + me_alive;
        let left = core.count(MemberState::Left) + (1 - me_alive);
        for (state, n) in [
            ("alive", alive),
            ("suspect", core.count(MemberState::Suspect)),
            ("dead", core.count(MemberState::Dead)),
            ("left", left),
        ] {
            metrics::gauge!("conclave_gossip_members", "state" => state).set(n as f64);
        }
        metrics::gauge!("conclave_gossip_incarnation").set(core.incarnation() as f64);
        metrics::gauge!("conclave_gossip_local_health").set(f64::from(core.local_health()));
        *self.deps.shared.view.write() = View {
            members: core.members(),
            incarnation: core.incarnation(),
            local_health: core.local_health(),
            joined: core.is_joined(),
            stats: core.stats(),
        };
    }
}

impl Actor for GossipActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        let now = self.now();
        self.core.start(now);
        tracing::info!(
            node = %self.deps.identity.id,
            incarnation = self.core.incarnation(),
            seeds = ?self.deps.swim.seeds,
            "gossip started"
        );
        self.drain(ctx);
        self.publish();
        // Housekeeping once per cycle: release idle links, refresh the published view (local
        // health and counters change without events).
        let period = Duration::from_millis(self.deps.swim.cycle_interval_ms.max(100));
        ctx.run_interval(period, |act, _| {
            act.trim_links();
            act.publish();
        });
    }
}

impl Handler<SwimInbound> for GossipActor {
    type Result = ();

    fn handle(&mut self, msg: SwimInbound, ctx: &mut Context<Self>) {
        let now = self.now();
        self.core.handle_message(now, msg.0);
        self.drain(ctx);
    }
}

impl Handler<SetMetadata> for GossipActor {
    type Result = ();

    fn handle(&mut self, msg: SetMetadata, ctx: &mut Context<Self>) {
        let now = self.now();
        let mut entries = self.deps.shared.app.lock().clone();
        match msg.update {
            MetadataUpdate::App(mut app) => {
                for key in RESERVED_KEYS {
                    app.remove(key);
                    if let Some(v) = entries.remove(key) {
                        app.insert(key.to_owned(), v);
                    }
                }
                entries = app;
            }
            MetadataUpdate::Own(key, Some(v)) => {
                entries.insert(key.to_owned(), v);
            }
            MetadataUpdate::Own(key, None) => {
                entries.remove(key);
            }
        }
        let result = self.core.set_metadata(now, entries.clone());
        if result.is_ok() {
            *self.deps.shared.app.lock() = entries;
            // Our own record changed: publish even though the core emits no event for it.
            self.publish();
        }
        let _ = msg.reply.send(result);
        self.drain(ctx);
    }
}

impl Handler<Leave> for GossipActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Leave, ctx: &mut Context<Self>) -> Self::Result {
        let now = self.now();
        self.core.leave(now);
        self.drain(ctx);
        self.publish();
        tracing::info!(node = %self.deps.identity.id, "gossip: left the cluster");
        let links: Vec<PeerLink<WireMessage>> =
            self.links.values().map(|l| l.link.clone()).collect();
        Box::pin(async move {
            let deadline = Instant::now() + LEAVE_FLUSH;
            while Instant::now() < deadline
                && links.iter().any(|l| !l.is_closed() && l.queued() > 0)
            {
                actix::clock::sleep(Duration::from_millis(5)).await;
            }
            // The writer took the frames; give it a moment to write them.
            actix::clock::sleep(Duration::from_millis(20)).await;
        })
    }
}

impl Handler<MembersChanged> for GossipActor {
    type Result = ();

    fn handle(&mut self, _: MembersChanged, ctx: &mut Context<Self>) {
        let book = self.deps.shared.book.lock().clone();
        if let Some(book) = book {
            let now = self.now();
            self.apply_book(now, &book);
            self.drain(ctx);
            self.publish();
        }
    }
}

impl Handler<StopActor> for GossipActor {
    type Result = ();

    fn handle(&mut self, _: StopActor, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

#[cfg(any(test, feature = "fault-injection"))]
impl Handler<InjectPanic> for GossipActor {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, _: &mut Context<Self>) {
        panic!("injected panic in the gossip actor (fault injection)");
    }
}

// ---------------------------------------------------------------------------------------------
// Node wiring

/// What the node keeps of gossip: the shared state and where the live actor is.
pub(super) struct GossipHandle {
    pub(super) shared: Arc<GossipShared>,
    pub(super) actor: conclave_actors::supervisor::Slot<GossipActor>,
}

/// Loads the persisted incarnation and stores the one this run starts at (one above it; 0 for
/// a new node). A corrupt file is an error naming it. Called before anything listens.
pub(super) fn start_incarnation(config: &Config) -> Result<Incarnation, GossipError> {
    let path = config.node.data_dir.join(INCARNATION_FILE);
    // A restart starts above every incarnation its previous life may have announced.
    let incarnation = match load_incarnation(&path)? {
        Some(n) => (n + 1).min(MAX_INCARNATION),
        None => 0,
    };
    store_incarnation(&path, incarnation)?;
    Ok(incarnation)
}

/// Builds the gossip actor's dependencies for a node starting at `incarnation` (from
/// [`start_incarnation`]). The actor itself is started by the node's gossip supervisor.
pub(super) fn prepare(
    config: &Config,
    endpoint: Arc<dyn Endpoint<WireMessage>>,
    epoch: Instant,
    incarnation: Incarnation,
) -> Arc<GossipDeps> {
    let path = config.node.data_dir.join(INCARNATION_FILE);
    let id = config.node.id;
    let identity = Identity {
        id,
        addr: config.node.listen.to_string(),
        http: config.node.http.to_string(),
    };
    // A node joining an existing cluster knows no member until the membership reaches it.
    let initial = config.bootstrap_members();
    let preload: Vec<Member> = initial
        .iter()
        .filter(|m| m.id != id)
        .map(|m| Member {
            id: m.id,
            addr: m.addr.to_string(),
            http: m.http.to_string(),
            incarnation: 0,
            state: MemberState::Alive,
            metadata: Metadata::default(),
        })
        .collect();
    let mut published = vec![Member {
        id,
        addr: identity.addr.clone(),
        http: identity.http.clone(),
        incarnation,
        state: MemberState::Alive,
        metadata: Metadata {
            incarnation,
            ..Metadata::default()
        },
    }];
    published.extend(preload.iter().cloned());
    Arc::new(GossipDeps {
        swim: config.swim_config(),
        raft_peers: initial
            .iter()
            .filter(|m| m.id != id)
            .map(|m| (m.id, m.addr))
            .collect(),
        identity,
        preload,
        endpoint,
        incarnation_file: path,
        max_peers: config.node.max_peers,
        idle_link: Duration::from_secs(config.node.read_timeout_s),
        latency: config.latency.clone(),
        shared: GossipShared::new(published, incarnation),
        epoch,
    })
}

impl<M: StateMachine> NodeHandle<M> {
    /// This node's gossip view: every member with its state, incarnation, addresses, metadata
    /// and round-trip history (`GET /v1/cluster/members`).
    pub fn gossip_members(&self) -> GossipMembers {
        self.inner.gossip.shared.snapshot(self.inner.id)
    }

    /// Membership events (joined, alive, suspect, dead, left, metadata changed, removed,
    /// refuted) from now on. A subscriber more than [`EVENT_CAPACITY`] events behind gets
    /// `RecvError::Lagged` and should re-read [`NodeHandle::gossip_members`].
    pub fn subscribe_gossip(&self) -> broadcast::Receiver<Event> {
        self.inner.gossip.shared.events.subscribe()
    }

    /// Publishes this node's application metadata (e.g. the shard router's load and hosted
    /// shards) to the cluster, replacing the previous map. Refused (and nothing changes) when
    /// it breaks the limits: 64 entries, 4096 bytes, no empty key. The node's own keys
    /// [`DRAINED_KEY`] and [`LEADERS_KEY`] are kept as the node set them (whatever `entries`
    /// says about them).
    pub async fn set_app_metadata(
        &self,
        entries: BTreeMap<String, String>,
    ) -> Result<(), GossipError> {
        self.publish_metadata(MetadataUpdate::App(entries)).await
    }

    /// Publishes whether this node is drained ([`DRAINED_KEY`]), keeping the rest of its
    /// metadata.
    pub(super) async fn publish_drained(&self, drained: bool) -> Result<(), GossipError> {
        let value = drained.then(|| "true".to_owned());
        self.publish_metadata(MetadataUpdate::Own(DRAINED_KEY, value))
            .await
    }

    /// Publishes how many shards this node leads ([`LEADERS_KEY`]), keeping the rest of its
    /// metadata.
    pub(super) async fn publish_leaders(&self, leaders: u64) -> Result<(), GossipError> {
        self.publish_metadata(MetadataUpdate::Own(LEADERS_KEY, Some(leaders.to_string())))
            .await
    }

    async fn publish_metadata(&self, update: MetadataUpdate) -> Result<(), GossipError> {
        let addr = self.gossip_actor().await.ok_or(GossipError::NotRunning)?;
        let (reply, rx) = oneshot::channel();
        addr.try_send(SetMetadata { update, reply })
            .map_err(|_| GossipError::NotRunning)?;
        match rx.await {
            Ok(result) => result.map_err(GossipError::from),
            Err(_) => Err(GossipError::NotRunning),
        }
    }

    /// Leaves the cluster gracefully (the node's shutdown calls it): members mark this node
    /// `left` instead of suspecting it.
    pub(super) async fn leave_gossip(&self) {
        if let Some(addr) = self.gossip_actor().await {
            let _ = actix::clock::timeout(Duration::from_secs(2), addr.send(Leave)).await;
        }
    }

    /// The live gossip actor, waiting up to [`ACTOR_WAIT`] for one: it starts just after the
    /// node does, and a restart after a failure takes a backoff.
    async fn gossip_actor(&self) -> Option<Addr<GossipActor>> {
        let deadline = Instant::now() + ACTOR_WAIT;
        loop {
            if let Some(addr) = self.inner.gossip.actor.get() {
                return Some(addr);
            }
            if Instant::now() >= deadline {
                return None;
            }
            actix::clock::sleep(Duration::from_millis(5)).await;
        }
    }

    #[cfg(any(test, feature = "fault-injection"))]
    /// Panics the gossip actor (fault injection); false if none is running.
    pub async fn inject_gossip_panic(&self) -> bool {
        match self.gossip_actor().await {
            Some(a) => a.try_send(InjectPanic).is_ok(),
            None => false,
        }
    }
}

/// Member states for `GET /v1/cluster` from the gossip view: each member gossip knows (with
/// addresses that parse), then configured members it has forgotten (pruned after being dead
/// or gone for `prune_timeout_s`), reported `dead`.
pub(super) fn member_statuses(
    members: &[Member],
    configured: &BTreeMap<NodeId, crate::config::MemberConfig>,
) -> Vec<super::MemberStatus> {
    let mut out: Vec<super::MemberStatus> = members
        .iter()
        .filter_map(|m| {
            Some(super::MemberStatus {
                id: m.id,
                addr: m.addr.parse().ok()?,
                http: m.http.parse().ok()?,
                state: m.state.as_str().to_owned(),
                drained: m
                    .metadata
                    .entries
                    .get(DRAINED_KEY)
                    .is_some_and(|v| v == "true"),
            })
        })
        .collect();
    for c in configured.values() {
        if !members.iter().any(|m| m.id == c.id) {
            out.push(super::MemberStatus {
                id: c.id,
                addr: c.addr,
                http: c.http,
                state: MemberState::Dead.as_str().to_owned(),
                drained: false,
            });
        }
    }
    out.sort_by_key(|m| m.id);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_transport::{MemEndpoint, MemNetwork};
    use std::collections::BTreeSet;

    /// An in-memory endpoint that records which links are held (opened and not removed).
    struct Recorder {
        inner: MemEndpoint<WireMessage>,
        held: Mutex<BTreeSet<NodeId>>,
        removed: Mutex<Vec<NodeId>>,
    }

    impl Endpoint<WireMessage> for Recorder {
        fn node_id(&self) -> NodeId {
            self.inner.node_id()
        }
        fn peer(&self, node: NodeId, addr: SocketAddr) -> PeerLink<WireMessage> {
            self.held.lock().insert(node);
            self.inner.peer(node, addr)
        }
        fn remove_peer(&self, node: NodeId) {
            self.held.lock().remove(&node);
            self.removed.lock().push(node);
            self.inner.remove_peer(node);
        }
    }

    async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !check() {
            assert!(Instant::now() < deadline, "{what} not within 15 s");
            actix::clock::sleep(Duration::from_millis(20)).await;
        }
    }

    fn test_deps(
        id: NodeId,
        know: &[NodeId],
        raft: &[NodeId],
        endpoint: Arc<dyn Endpoint<WireMessage>>,
        dir: &Path,
    ) -> Arc<GossipDeps> {
        let addr = |id: NodeId| SocketAddr::from(([127, 0, 0, 1], 9000 + id.get() as u16));
        let preload: Vec<Member> = know
            .iter()
            .map(|&id| Member {
                id,
                addr: addr(id).to_string(),
                http: "127.0.0.1:1".into(),
                incarnation: 0,
                state: MemberState::Alive,
                metadata: Metadata::default(),
            })
            .collect();
        Arc::new(GossipDeps {
            shared: GossipShared::new(Vec::new(), 0),
            identity: Identity {
                id,
                addr: addr(id).to_string(),
                http: "127.0.0.1:2".into(),
            },
            swim: SwimConfig {
                cycle_interval_ms: 100,
                probe_timeout_ms: 40,
                suspect_timeout_s: 1,
                dead_timeout_s: 1,
                prune_timeout_s: 600,
                ..SwimConfig::default()
            },
            preload,
            endpoint,
            raft_peers: raft.iter().map(|&p| (p, addr(p))).collect(),
            incarnation_file: dir.join(format!("{id}.incarnation")),
            max_peers: 3,
            idle_link: Duration::from_secs(4),
            latency: LatencySection::default(),
            epoch: Instant::now(),
        })
    }

    #[actix::test]
    async fn links_are_opened_on_demand_and_gossip_only_ones_released_over_max_peers_or_idle() {
        let dir = tempfile::tempdir().unwrap();
        let net = MemNetwork::new(1);
        let (tx1, rx1) = conclave_transport::inbound(1024);
        let (tx2, rx2) = conclave_transport::inbound(1024);
        let recorder = Arc::new(Recorder {
            inner: net.endpoint(NodeId::new(1), tx1),
            held: Mutex::new(BTreeSet::new()),
            removed: Mutex::new(Vec::new()),
        });
        // Node 1 knows 2..=6 with max_peers 3; node 2 (its Raft peer) runs and answers, 3..=6
        // never do (nothing is attached for them), so they are suspected, then declared dead.
        let deps1 = test_deps(
            NodeId::new(1),
            &[
                NodeId::new(2),
                NodeId::new(3),
                NodeId::new(4),
                NodeId::new(5),
                NodeId::new(6),
            ],
            &[NodeId::new(2)],
            recorder.clone(),
            dir.path(),
        );
        let deps2 = test_deps(
            NodeId::new(2),
            &[NodeId::new(1)],
            &[NodeId::new(1)],
            Arc::new(net.endpoint(NodeId::new(2), tx2)),
            dir.path(),
        );
        let (g1, s1) = super::super::start_gossip(deps1);
        let (g2, s2) = super::super::start_gossip(deps2);
        for (mut rx, slot) in [(rx1, g1.actor.clone()), (rx2, g2.actor.clone())] {
            actix::spawn(async move {
                while let Some((_, WireMessage::Swim(m))) = rx.recv().await {
                    if let Some(a) = slot.get() {
                        let _ = a.try_send(SwimInbound(m));
                    }
                }
            });
        }
        let held = || recorder.held.lock().clone();
        // Opened on demand: the first cycle probes every member.
        wait_until("links to all five members", || held().len() == 5).await;
        wait_until("3..=6 dead", || {
            g1.shared.snapshot(NodeId::new(1)).counts["dead"] == 4
        })
        .await;
        // Nothing is sent to dead members: over max_peers, the least recently used gossip-only
        // links go first, down to max_peers; the Raft peer's link stays.
        wait_until("down to max_peers", || held().len() == 3).await;
        assert!(
            held().contains(&NodeId::new(2)),
            "the Raft peer's link was released"
        );
        // Idle for idle_link: the remaining gossip-only links go too.
        wait_until("only the Raft peer's link", || {
            held() == BTreeSet::from([NodeId::new(2)])
        })
        .await;
        let mut removed = recorder.removed.lock().clone();
        removed.sort_unstable();
        assert_eq!(
            removed,
            vec![
                NodeId::new(3),
                NodeId::new(4),
                NodeId::new(5),
                NodeId::new(6)
            ]
        );
        let view = g1.shared.snapshot(NodeId::new(1));
        assert_eq!(
            (view.counts["alive"], view.counts["dead"]),
            (2, 4),
            "{view:?}"
        );
        s1.do_send(conclave_actors::supervisor::StopSupervisor);
        s2.do_send(conclave_actors::supervisor::StopSupervisor);
    }

    #[test]
    fn incarnation_file_round_trips_and_corruption_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(INCARNATION_FILE);
        assert_eq!(load_incarnation(&path).unwrap(), None);
        store_incarnation(&path, 7).unwrap();
        assert_eq!(load_incarnation(&path).unwrap(), Some(7));
        store_incarnation(&path, 8).unwrap();
        assert_eq!(load_incarnation(&path).unwrap(), Some(8));
        for bad in [
            &b"12"[..],
            b"twelve\n",
            b"-1\n",
            b"\xff\xfe\n",
            b"",
            b"1 2\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            let e = load_incarnation(&path).unwrap_err().to_string();
            assert!(e.contains(INCARNATION_FILE) && e.contains("corrupt"), "{e}");
        }
        std::fs::write(&path, format!("{}\n", MAX_INCARNATION + 1)).unwrap();
        assert!(load_incarnation(&path).is_err());
    }

    #[test]
    fn rtt_stats_summarise_the_history() {
        let samples: VecDeque<u64> = [3, 1, 5].into_iter().collect();
        let s = RttStats::from_samples(&samples).unwrap();
        assert_eq!((s.last_ms, s.min_ms, s.max_ms), (5, 1, 5));
        assert!((s.avg_ms - 3.0).abs() < 1e-9);
        assert_eq!(s.samples_ms, vec![3, 1, 5]);
        assert!(RttStats::from_samples(&VecDeque::new()).is_none());
    }
}
