//! The runtime side of snapshot transfers ([`super::transfer`] has the protocol): the node's
//! [`SnapshotSender`], which streams snapshots to followers as paced tasks on an arbiter of its
//! own, and the node's [`SnapshotReceiver`] actor, which stages incoming chunks on another.
//! Both do blocking file I/O, so neither runs on the arbiter that carries Raft, gossip and the
//! transport's dispatch.
//!
//! Chunks share the peer's one connection with Raft traffic. Each transfer has at most one
//! chunk on the wire (the next is read only once the previous one is acknowledged) and all
//! transfers together are paced to `[snapshot] max_send_rate_mb_s`, so a heartbeat or append
//! queued behind snapshot data waits for at most one chunk per transfer
//! (`max_concurrent_sends` × `chunk_bytes`), never for the snapshot.

use super::transfer::{
    AckStatus, ChunkOutcome, ChunkRefusal, GroupView, ReceiveError, Receptions, SendState,
    SendStep, SnapshotAck, SnapshotChunk,
};
use super::wire::WireMessage;
use crate::storage::snapshot_store::{SnapshotStore, SnapshotStoreError, StoredSnapshot};
use actix::prelude::*;
use conclave_core::raft::{GroupId, NodeId, SnapshotMeta, Term};
use conclave_transport::{Endpoint, PeerLink};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Where a peer's transport listens (the node's member directory).
pub type PeerAddrs = Arc<dyn Fn(NodeId) -> Option<SocketAddr> + Send + Sync>;

/// Acks a transfer may hold unread (acks beyond are dropped: the transfer re-probes).
const ACK_QUEUE: usize = 16;
/// Consecutive unanswered chunks or probes after which a transfer gives up.
const MAX_SILENT_ROUNDS: u32 = 6;

/// The sender's limits (from `[snapshot]`).
#[derive(Clone, Debug)]
pub struct SendLimits {
    /// Bytes per chunk.
    pub chunk_bytes: usize,
    /// Bytes per second, all transfers together (0: unpaced).
    pub bytes_per_s: u64,
    /// Transfers at once.
    pub max_concurrent: usize,
    /// How long a chunk's acknowledgement may take before the transfer probes again (a lost
    /// connection loses the chunks being written on it).
    pub ack_timeout: Duration,
}

/// Why a transfer did not deliver its snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// `max_concurrent_sends` transfers are running.
    #[error("{0} snapshot transfers are already running")]
    Busy(usize),
    /// The snapshot is not (or no longer) in the store.
    #[error("snapshot {index}-{term} is not in the store")]
    NotFound {
        /// Its index.
        index: u64,
        /// Its term.
        term: Term,
    },
    /// Reading the snapshot store failed.
    #[error("snapshot transfer")]
    Store(#[from] SnapshotStoreError),
    /// Reading the image failed.
    #[error("snapshot transfer: read {path}")]
    Read {
        /// The image.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The receiver refused the snapshot.
    #[error("the receiver refused the snapshot")]
    Refused(#[source] ChunkRefusal),
    /// No answer for several rounds of `ack_timeout`.
    #[error("the receiver did not answer")]
    Silent,
    /// The transport stopped.
    #[error("the transport link is closed")]
    LinkClosed,
}

/// How a transfer ended, reported to the group that asked for it.
pub type SendOutcome = Result<(), SendError>;

/// A request to stream a snapshot to a follower.
pub struct SendRequest {
    /// The group.
    pub group: GroupId,
    /// The follower.
    pub to: NodeId,
    /// The leader's term.
    pub term: Term,
    /// The snapshot.
    pub meta: SnapshotMeta,
    /// The group's snapshot directory.
    pub dir: PathBuf,
    /// The link to the follower.
    pub link: PeerLink<WireMessage>,
    /// Told how the transfer ended (not called for a transfer replaced by a newer request).
    pub done: Box<dyn FnOnce(SendOutcome) + Send>,
}

struct Active {
    id: u64,
    key: (u64, Term, Term),
    acks: mpsc::Sender<SnapshotAck>,
}

struct SenderInner {
    node: NodeId,
    limits: SendLimits,
    arbiter: ArbiterHandle,
    active: Mutex<HashMap<(GroupId, NodeId), Active>>,
    next_id: Mutex<u64>,
    /// When the pacer lets the next byte out.
    pace: Mutex<Instant>,
}

/// The node's snapshot sender. See the module docs.
#[derive(Clone)]
pub struct SnapshotSender {
    inner: Arc<SenderInner>,
}

impl SnapshotSender {
    /// A sender whose transfers run on `arbiter` (one of its own: they read files).
    pub fn new(node: NodeId, limits: SendLimits, arbiter: ArbiterHandle) -> SnapshotSender {
        SnapshotSender {
            inner: Arc::new(SenderInner {
                node,
                limits,
                arbiter,
                active: Mutex::new(HashMap::new()),
                next_id: Mutex::new(0),
                pace: Mutex::new(Instant::now()),
            }),
        }
    }

    /// Starts streaming `req.meta` to `req.to`. A transfer of the same snapshot in the same term
    /// to the same peer already running is kept (it goes on from where it is); one of another
    /// snapshot or term is replaced. Refused when `max_concurrent_sends` transfers run.
    pub fn start(&self, req: SendRequest) -> Result<(), SendError> {
        let key = (req.meta.index, req.meta.term, req.term);
        let (id, rx) = {
            let mut active = self.inner.active.lock();
            if let Some(a) = active.get(&(req.group, req.to)) {
                if a.key == key && !a.acks.is_closed() {
                    return Ok(());
                }
            } else if active.len() >= self.inner.limits.max_concurrent {
                return Err(SendError::Busy(active.len()));
            }
            let mut next = self.inner.next_id.lock();
            *next += 1;
            let id = *next;
            let (tx, rx) = mpsc::channel(ACK_QUEUE);
            // Replacing the entry drops the old transfer's ack sender: it ends quietly.
            active.insert((req.group, req.to), Active { id, key, acks: tx });
            (id, rx)
        };
        let inner = self.inner.clone();
        self.inner.arbiter.spawn(async move {
            let (group, to) = (req.group, req.to);
            let done = req.done;
            let result = transfer(
                &inner, req.group, req.to, req.term, req.meta, req.dir, req.link, rx,
            )
            .await;
            let mine = {
                let mut active = inner.active.lock();
                match active.get(&(group, to)) {
                    Some(a) if a.id == id => {
                        active.remove(&(group, to));
                        true
                    }
                    _ => false,
                }
            };
            match result {
                Some(outcome) => done(outcome),
                None if mine => done(Err(SendError::LinkClosed)),
                None => {}
            }
        });
        Ok(())
    }

    /// An acknowledgement from `from` (the transport's authenticated peer).
    pub fn on_ack(&self, from: NodeId, ack: SnapshotAck) {
        if ack.from != from {
            tracing::warn!(
                %from,
                claimed = %ack.from,
                "snapshot ack with a forged sender dropped"
            );
            return;
        }
        let active = self.inner.active.lock();
        if let Some(a) = active.get(&(ack.group, from)) {
            // Full: the transfer is behind on acks; it re-probes if it misses the one it needs.
            let _ = a.acks.try_send(ack);
        }
    }

    /// Transfers running.
    pub fn running(&self) -> usize {
        self.inner.active.lock().len()
    }
}

async fn pace(inner: &SenderInner, bytes: usize) {
    if inner.limits.bytes_per_s == 0 || bytes == 0 {
        return;
    }
    let wait = {
        let mut next = inner.pace.lock();
        let now = Instant::now();
        let start = (*next).max(now);
        *next = start + Duration::from_secs_f64(bytes as f64 / inner.limits.bytes_per_s as f64);
        start - now
    };
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

/// One transfer. `None`: replaced by a newer request (nobody to tell).
#[allow(clippy::too_many_arguments)]
async fn transfer(
    inner: &SenderInner,
    group: GroupId,
    to: NodeId,
    term: Term,
    meta: SnapshotMeta,
    dir: PathBuf,
    link: PeerLink<WireMessage>,
    mut acks: mpsc::Receiver<SnapshotAck>,
) -> Option<SendOutcome> {
    let store = SnapshotStore::existing(&dir);
    let stored: StoredSnapshot = match store.list() {
        Ok((found, _)) => match found
            .into_iter()
            .find(|s| (s.meta.index, s.meta.term) == (meta.index, meta.term))
        {
            Some(s) => s,
            None => {
                return Some(Err(SendError::NotFound {
                    index: meta.index,
                    term: meta.term,
                }))
            }
        },
        Err(e) => return Some(Err(e.into())),
    };
    // Opened once: a snapshot pruned meanwhile stays readable through this handle.
    let mut file = match std::fs::File::open(&stored.path) {
        Ok(f) => f,
        Err(source) => {
            return Some(Err(SendError::Read {
                path: stored.path.clone(),
                source,
            }))
        }
    };
    let mut state = SendState::new(
        group,
        inner.node,
        to,
        term,
        &stored,
        inner.limits.chunk_bytes,
    );
    tracing::info!(
        %group,
        peer = %to,
        index = meta.index,
        bytes = stored.len,
        "snapshot transfer starts"
    );
    let started = Instant::now();
    let mut msg = state.probe();
    let mut silent = 0u32;
    let group_label = group.to_string();
    let peer_label = to.to_string();
    loop {
        let bytes = msg.data.len();
        pace(inner, bytes).await;
        let offset = msg.offset;
        if link.send(WireMessage::SnapshotChunk(msg)).await.is_err() {
            return Some(Err(SendError::LinkClosed));
        }
        if bytes > 0 {
            metrics::counter!("conclave_snapshot_send_bytes_total", "group" => group_label.clone(), "peer" => peer_label.clone())
                .increment(bytes as u64);
            tracing::debug!(
                %group,
                peer = %to,
                index = meta.index,
                offset,
                bytes,
                "snapshot chunk sent"
            );
        }
        // Wait for the answer to this chunk (other acks are late duplicates).
        let deadline = tokio::time::Instant::now() + inner.limits.ack_timeout;
        let step = loop {
            match tokio::time::timeout_at(deadline, acks.recv()).await {
                Ok(Some(ack)) => match state.on_ack(&ack) {
                    SendStep::Ignored => continue,
                    step => break Some((step, ack)),
                },
                Ok(None) => return None,
                Err(_) => break None,
            }
        };
        let Some((step, ack)) = step else {
            silent += 1;
            tracing::warn!(
                %group,
                peer = %to,
                index = meta.index,
                offset = state.next_offset(),
                silent,
                "no answer to a snapshot chunk; asking where the receiver stands"
            );
            if silent >= MAX_SILENT_ROUNDS {
                return Some(Err(SendError::Silent));
            }
            msg = state.probe();
            continue;
        };
        silent = 0;
        match step {
            SendStep::Continue => {
                if let AckStatus::Refused(r) = &ack.status {
                    tracing::warn!(%group, peer = %to, index = meta.index, offset = ack.next_offset, reason = %r, "snapshot chunk refused; sending from the receiver's offset");
                }
                msg = match state.read_chunk(&mut file) {
                    Ok(m) => m,
                    Err(source) => {
                        return Some(Err(SendError::Read {
                            path: stored.path.clone(),
                            source,
                        }))
                    }
                };
            }
            SendStep::Done => {
                metrics::counter!("conclave_snapshot_sent_total", "group" => group_label.clone(), "peer" => peer_label.clone())
                    .increment(1);
                tracing::info!(
                    %group,
                    peer = %to,
                    index = meta.index,
                    bytes = stored.len,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "snapshot transfer complete"
                );
                return Some(Ok(()));
            }
            SendStep::Failed(r) => {
                tracing::warn!(%group, peer = %to, index = meta.index, reason = %r, "snapshot transfer refused");
                return Some(Err(SendError::Refused(r)));
            }
            SendStep::Ignored => unreachable!("ignored acks are skipped above"),
        }
    }
}

/// A complete, verified snapshot this node received; the group installs it through its core.
#[derive(Clone, Debug, Message)]
#[rtype(result = "()")]
pub struct SnapshotReceived {
    /// The leader that sent it.
    pub from: NodeId,
    /// The leader's term.
    pub term: Term,
    /// The snapshot.
    pub meta: SnapshotMeta,
}

/// What a group gives the receiver.
pub struct ReceiverGroup {
    /// The group's snapshot directory (receptions are staged in it).
    pub dir: PathBuf,
    /// The group's published state: term, leader, commit index, membership.
    pub view: Box<dyn Fn() -> GroupView + Send>,
    /// Tells the group a snapshot is staged.
    pub received: Box<dyn Fn(SnapshotReceived) + Send>,
}

/// Registers a group with the receiver.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RegisterGroup(pub GroupId, pub ReceiverGroup);

/// Forgets a group the node stopped hosting (a reception in progress is dropped; its sender
/// times out).
#[derive(Message)]
#[rtype(result = "()")]
pub struct UnregisterGroup(pub GroupId);

/// A chunk from the transport's authenticated peer `from`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ChunkIn {
    /// The peer.
    pub from: NodeId,
    /// The chunk.
    pub chunk: SnapshotChunk,
}

/// Move the staged image of `meta` into the group's snapshot store (the core's persist of the
/// install is being carried out).
#[derive(Message)]
#[rtype(result = "Result<StoredSnapshot, ReceiveError>")]
pub struct Adopt {
    /// The group.
    pub group: GroupId,
    /// The snapshot.
    pub meta: SnapshotMeta,
}

struct GroupRx {
    reg: ReceiverGroup,
    /// Opened on first use (an unreadable directory is reported then, per chunk).
    receptions: Option<Receptions>,
}

/// The node's snapshot receiver. See the module docs.
pub struct SnapshotReceiver {
    node: NodeId,
    endpoint: Arc<dyn Endpoint<WireMessage>>,
    addrs: PeerAddrs,
    groups: HashMap<GroupId, GroupRx>,
    links: HashMap<NodeId, PeerLink<WireMessage>>,
}

impl SnapshotReceiver {
    /// A receiver answering over `endpoint`, finding peers' addresses with `addrs`.
    pub fn new(
        node: NodeId,
        endpoint: Arc<dyn Endpoint<WireMessage>>,
        addrs: PeerAddrs,
    ) -> SnapshotReceiver {
        SnapshotReceiver {
            node,
            endpoint,
            addrs,
            groups: HashMap::new(),
            links: HashMap::new(),
        }
    }

    fn answer(&mut self, to: NodeId, ack: SnapshotAck) {
        let link = match self.links.get(&to) {
            Some(l) => l.clone(),
            None => match (self.addrs)(to) {
                Some(addr) => {
                    let l = self.endpoint.peer(to, addr);
                    self.links.insert(to, l.clone());
                    l
                }
                // A leader no membership of this node names yet (added after its log ends):
                // answered over the connection it opened (not cached: once the membership
                // names it, its address is used).
                None => match self.endpoint.connected_link(to) {
                    Some(l) => l,
                    None => return,
                },
            },
        };
        // Best effort: a lost ack makes the sender probe again.
        let _ = link.try_send(WireMessage::SnapshotAck(ack));
    }

    fn receptions(&mut self, group: GroupId) -> Result<&mut GroupRx, ChunkRefusal> {
        let node = self.node;
        let g = self
            .groups
            .get_mut(&group)
            .ok_or(ChunkRefusal::UnknownGroup)?;
        if g.receptions.is_none() {
            match Receptions::open(node, group, &g.reg.dir) {
                Ok(r) => g.receptions = Some(r),
                Err(e) => {
                    tracing::error!(%group, error = %e, "cannot open the snapshot receptions");
                    return Err(ChunkRefusal::Storage);
                }
            }
        }
        Ok(g)
    }
}

impl Actor for SnapshotReceiver {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Small: chunks beyond it are dropped by the dispatcher and the sender re-sends them.
        ctx.set_mailbox_capacity(8);
    }
}

impl Handler<RegisterGroup> for SnapshotReceiver {
    type Result = ();

    fn handle(&mut self, msg: RegisterGroup, _: &mut Context<Self>) {
        self.groups.insert(
            msg.0,
            GroupRx {
                reg: msg.1,
                receptions: None,
            },
        );
    }
}

impl Handler<UnregisterGroup> for SnapshotReceiver {
    type Result = ();

    fn handle(&mut self, msg: UnregisterGroup, _: &mut Context<Self>) {
        self.groups.remove(&msg.0);
    }
}

impl Handler<ChunkIn> for SnapshotReceiver {
    type Result = ();

    fn handle(&mut self, msg: ChunkIn, _: &mut Context<Self>) {
        let chunk = msg.chunk;
        let node = self.node;
        let outcome = match self.receptions(chunk.group) {
            Ok(g) => {
                let view = (g.reg.view)();
                let Some(rx) = g.receptions.as_mut() else {
                    return;
                };
                let outcome = rx.on_chunk(msg.from, &view, &chunk, Instant::now());
                if let ChunkOutcome::Staged {
                    from, term, meta, ..
                } = &outcome
                {
                    (g.reg.received)(SnapshotReceived {
                        from: *from,
                        term: *term,
                        meta: meta.clone(),
                    });
                }
                outcome
            }
            Err(refusal) => ChunkOutcome::Ack(SnapshotAck {
                group: chunk.group,
                from: node,
                term: chunk.term,
                index: chunk.meta.index,
                snapshot_term: chunk.meta.term,
                next_offset: 0,
                status: AckStatus::Refused(refusal),
            }),
        };
        let ack = outcome.ack().clone();
        if let AckStatus::Refused(r) = &ack.status {
            tracing::info!(group = %chunk.group, peer = %msg.from, index = chunk.meta.index, offset = chunk.offset, reason = %r, "snapshot chunk refused");
            metrics::counter!("conclave_snapshot_chunks_refused_total", "group" => chunk.group.to_string(), "reason" => r.label())
                .increment(1);
        }
        self.answer(msg.from, ack);
    }
}

impl Handler<Adopt> for SnapshotReceiver {
    type Result = Result<StoredSnapshot, ReceiveError>;

    fn handle(&mut self, msg: Adopt, _: &mut Context<Self>) -> Self::Result {
        let not_staged = ReceiveError::NotStaged {
            index: msg.meta.index,
            term: msg.meta.term,
        };
        let Ok(g) = self.receptions(msg.group) else {
            return Err(not_staged);
        };
        let dir = g.reg.dir.clone();
        let Some(rx) = g.receptions.as_mut() else {
            return Err(not_staged);
        };
        let store = SnapshotStore::existing(&dir);
        rx.adopt(&msg.meta, &store)
    }
}
