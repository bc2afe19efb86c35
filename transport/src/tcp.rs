//! The TCP (optionally TLS) transport: one connection per pair of nodes, carrying both directions.
//!
//! Per remote node there is a [`Slot`] in the shared map (one mutex): the address to dial (if
//! known), the cached [`PeerLink`], and the connection state ([`ConnState`]: idle, dialling, or
//! connected with a connection id). Every decision about which connection a pair uses is taken
//! under that mutex, by the dialling side when its handshake answer arrives and by the accepting
//! side when it answers a hello, so the two sides always agree (rules in `docs/transport.md`).
//!
//! Tasks per peer: one *driver* (owns the outbound queue and the write half of the current
//! connection, dials with backoff, writes coalesced batches and keep-alives) and one *reader*
//! per connection (owns the read half, cuts and decodes frames, feeds the inbound sink). Reads
//! and writes of one connection never wait on each other: a reader stalled on a full inbound
//! sink does not stop the driver from writing, so two nodes that both stop reading cannot
//! deadlock their writes.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch, Notify, Semaphore};
use tokio::time::{timeout, Instant};
use tracing::{debug, info, warn};

use crate::auth::cert_names_node;
use crate::codec::{decode_body, encode_keepalive, CodecError, FrameDecoder, LENGTH_PREFIX};
use crate::config::{ConfigError, TransportConfig};
use crate::handshake::{self, HandshakeError, Hello, Refusal, Status};
use crate::inbound::{InboundBatch, Refused};
use crate::link::{PeerLink, QueueReceiver};
use crate::metrics::{self as m, FlowCounters};
use crate::shared_bytes;
use crate::tls::{TlsContext, TlsError};
use crate::{Endpoint, Inbound, NodeId};

/// Read buffer growth step for connections.
const READ_CHUNK: usize = 64 * 1024;

/// Reports of lost connections a subscriber may fall behind by before it misses some
/// ([`Transport::connection_losses`]).
const LOSS_EVENTS: usize = 1024;

/// The connection between this node and `peer` ended while in use ([`Transport::connection_losses`]):
/// the peer closed it (its process exited — a crash closes its sockets at once — or it
/// dropped the connection), the socket failed, or nothing arrived within `read_timeout`. The
/// pair has no connection until a dial succeeds again (normally within one reconnect
/// backoff if the peer is alive). Not reported: connections replaced by another one, closed
/// because the peer left the cluster ([`Transport::disconnect_peer`]) or by this transport's
/// shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLost {
    /// The peer.
    pub peer: NodeId,
}

/// Errors of starting a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Anything a TLS connection can run over.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

type BoxRead = Box<dyn AsyncRead + Unpin + Send>;
type BoxWrite = Box<dyn AsyncWrite + Unpin + Send>;

/// A connection before it is split: plain TCP (split into owned halves, no lock between
/// them) or TLS (split through tokio's lock, as one TLS session serves both directions).
enum Io {
    Plain(TcpStream),
    Tls(Box<dyn Stream>),
}

impl Io {
    fn split(self) -> (BoxRead, BoxWrite) {
        match self {
            Io::Plain(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Io::Tls(s) => {
                let (r, w) = tokio::io::split(s);
                (Box::new(r), Box::new(w))
            }
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Which connection, if any, carries the traffic with one peer. Changed only under the
/// `peers` mutex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// No connection and no dial in flight.
    Idle,
    /// The driver is dialling (attempt id).
    Dialing(u64),
    /// This connection (id) is the pair's connection.
    Connected(u64),
}

/// What a peer's driver is told.
enum Cmd {
    /// A handshaken connection (accepted, or won by an `Alive` exchange) to use from now on;
    /// replaces any current one.
    Attach(Conn),
    /// The reader of connection `id` stopped (EOF, error, timeout).
    Closed(u64),
    /// The queue of a newly created link.
    Link(QueueReceiver),
    /// The address or the link changed: reconsider dialling (now) or exiting.
    Wake,
    /// The peer left the cluster: close the current connection and abandon a dial in progress
    /// (the slot's address and link are already forgotten, so nothing redials it).
    Disconnect,
}

/// One peer's entry in the shared map.
struct Slot<M> {
    /// Where to dial; `None` for a peer known only from its own connection to us.
    addr: Option<SocketAddr>,
    /// The cached link handed out by `peer()`; `None` until asked for, or after `remove_peer`.
    link: Option<PeerLink<M>>,
    state: ConnState,
    cmds: mpsc::UnboundedSender<Cmd>,
}

/// Counts live connections (handshaken, not yet closed): shared by the reader and the driver's
/// write half, decremented when both are gone.
struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    fn new(live: &Arc<AtomicUsize>) -> Arc<Self> {
        live.fetch_add(1, Ordering::Relaxed);
        Arc::new(Self(Arc::clone(live)))
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The write side of a connection, held by the peer's driver.
struct Conn {
    id: u64,
    writer: BoxWrite,
    /// Tells this connection's reader to stop (stored permit: works even if it is not waiting).
    stop_reader: Arc<Notify>,
    _live: Arc<LiveGuard>,
}

impl Conn {
    /// Closes the connection: the write half now, the read half when its reader sees the signal.
    fn close(self) {
        self.stop_reader.notify_one();
    }
}

struct Shared<M> {
    cfg: TransportConfig,
    hello: Hello,
    tls: Option<TlsContext>,
    inbound: Inbound<M>,
    peers: Mutex<HashMap<NodeId, Slot<M>>>,
    shutdown: watch::Sender<bool>,
    /// Bounds the authenticated connections accepted (not those we dial), as `max_connections`.
    connections: Arc<Semaphore>,
    /// Bounds the sockets accepted but not yet authenticated, as `max_pending_handshakes`.
    pending: Arc<Semaphore>,
    /// Node ids admitted by the handshake (`None`: any).
    allowed: parking_lot::RwLock<Option<BTreeSet<NodeId>>>,
    /// Node ids refused by the handshake even when the allowlist admits any (removed members).
    denied: parking_lot::RwLock<BTreeSet<NodeId>>,
    /// The runtime `bind` ran on: tasks are spawned there, so `peer()` may be called from any
    /// thread (an actix arbiter runs its own runtime; drivers should not be tied to it).
    runtime: tokio::runtime::Handle,
    /// Source of connection and dial-attempt ids.
    next_id: AtomicU64,
    /// Live connections, for [`Transport::connection_count`].
    live: Arc<AtomicUsize>,
    /// Lost connections, for [`Transport::connection_losses`].
    losses: broadcast::Sender<ConnectionLost>,
}

impl<M> Shared<M>
where
    M: Serialize + DeserializeOwned + Send + 'static,
{
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The slot of `peer`, created (with its driver) if absent. Called with the map locked.
    fn slot<'a>(
        self: &Arc<Self>,
        peers: &'a mut HashMap<NodeId, Slot<M>>,
        peer: NodeId,
    ) -> &'a mut Slot<M> {
        peers.entry(peer).or_insert_with(|| {
            let (cmds, cmd_rx) = mpsc::unbounded_channel();
            self.runtime.spawn(driver(Arc::clone(self), peer, cmd_rx));
            Slot {
                addr: None,
                link: None,
                state: ConnState::Idle,
                cmds,
            }
        })
    }

    /// The slot's cached link, or a new one whose queue goes to the slot's driver. Called
    /// with the map locked.
    fn cached_link(&self, slot: &mut Slot<M>, node: NodeId) -> PeerLink<M> {
        match &slot.link {
            Some(link) if !link.is_closed() => link.clone(),
            _ => {
                let cfg = &self.cfg;
                let (link, rx) = PeerLink::channel(
                    cfg.node_id,
                    node,
                    cfg.max_queue_size,
                    cfg.max_queue_bytes,
                    cfg.max_frame_size,
                );
                slot.link = Some(link.clone());
                let _ = slot.cmds.send(Cmd::Link(rx));
                link
            }
        }
    }

    /// Connection `id` is gone: if it was the pair's connection, the pair has none now, and the
    /// driver is told so it may redial. Returns whether it was.
    fn mark_idle(&self, peer: NodeId, id: u64) -> bool {
        let mut peers = self.peers.lock();
        if let Some(slot) = peers.get_mut(&peer) {
            if slot.state == ConnState::Connected(id) {
                slot.state = ConnState::Idle;
                let _ = slot.cmds.send(Cmd::Wake);
                return true;
            }
        }
        false
    }

    /// Connection `id`, in use, broke: [`Shared::mark_idle`], and if it was the pair's
    /// connection the loss is reported to [`Transport::connection_losses`] subscribers.
    fn lost(&self, peer: NodeId, id: u64) {
        // A transport being dropped closes its own connections: that is no peer's loss (the
        // flag is set before any of them closes, so no report of our own shutdown slips out).
        if self.mark_idle(peer, id) && !*self.shutdown.borrow() {
            // No subscriber is fine: nobody needs to know.
            let _ = self.losses.send(ConnectionLost { peer });
        }
    }

    /// A dial attempt ended without a connection: back to idle unless something else happened.
    fn end_dial(&self, peer: NodeId, attempt: u64) {
        let mut peers = self.peers.lock();
        if let Some(slot) = peers.get_mut(&peer) {
            if slot.state == ConnState::Dialing(attempt) {
                slot.state = ConnState::Idle;
            }
        }
    }
}

/// The TCP/TLS transport of one node. Dropping it (or calling [`Transport::shutdown`]) stops
/// the listener, every reader and every driver.
pub struct Transport<M> {
    shared: Arc<Shared<M>>,
    local_addr: SocketAddr,
}

impl<M> Drop for Transport<M> {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
    }
}

impl<M> Transport<M>
where
    M: Serialize + DeserializeOwned + Send + 'static,
{
    /// Validates `cfg`, loads TLS material, binds the listener and starts accepting. Received
    /// messages go to `inbound`. Returns the transport and the address actually bound (useful
    /// with port 0). Every task of the transport runs on the runtime this is awaited on (it
    /// must be a tokio runtime); [`Endpoint::peer`] may then be called from any thread.
    pub async fn bind(
        cfg: TransportConfig,
        inbound: Inbound<M>,
    ) -> Result<(Self, SocketAddr), TransportError> {
        cfg.validate()?;
        let tls = cfg.tls.as_ref().map(TlsContext::load).transpose()?;
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| TransportError::Bind {
                    addr: cfg.listen,
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| TransportError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            hello: Hello::new(cfg.node_id, &cfg.cluster_id),
            connections: Arc::new(Semaphore::new(cfg.max_connections)),
            pending: Arc::new(Semaphore::new(cfg.max_pending_handshakes)),
            allowed: parking_lot::RwLock::new(cfg.allowed_peers.clone()),
            denied: parking_lot::RwLock::new(BTreeSet::new()),
            runtime: tokio::runtime::Handle::current(),
            cfg,
            tls,
            inbound,
            peers: Mutex::new(HashMap::new()),
            shutdown,
            next_id: AtomicU64::new(1),
            live: Arc::new(AtomicUsize::new(0)),
            losses: broadcast::channel(LOSS_EVENTS).0,
        });
        info!(node = %shared.cfg.node_id, %local_addr, tls = shared.tls.is_some(), "transport listening");
        tokio::spawn(accept_loop(Arc::clone(&shared), listener));
        Ok((Self { shared, local_addr }, local_addr))
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the listener, every connection and every driver. Links return `Closed` afterwards.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        self.shared.peers.lock().clear();
    }

    /// Connections of this node that completed a handshake and are not closed yet, in both
    /// directions (dialled and accepted). With every peer settled this is one per connected
    /// peer; for a moment after a connection is replaced or broken the old one may still count.
    pub fn connection_count(&self) -> usize {
        self.shared.live.load(Ordering::Relaxed)
    }

    /// Replaces the set of node ids the handshake admits (`None`: any id). The node calls this
    /// when its cluster configuration changes, e.g. to admit a node being added. Connections
    /// already established are kept.
    pub fn set_allowed_peers(&self, allowed: Option<BTreeSet<NodeId>>) {
        *self.shared.allowed.write() = allowed;
    }

    /// Replaces the set of node ids the handshake refuses whatever the allowlist says (refused
    /// as `not_member`). A node that admits any authenticated peer (no allowlist) uses it for
    /// the members it saw removed. Connections already established are kept (see
    /// [`Transport::disconnect_peer`]).
    pub fn set_denied_peers(&self, denied: BTreeSet<NodeId>) {
        *self.shared.denied.write() = denied;
    }

    /// Adds `node` to the allowlist (no effect without one).
    pub fn allow_peer(&self, node: NodeId) {
        if let Some(set) = self.shared.allowed.write().as_mut() {
            set.insert(node);
        }
    }

    /// Forgets `node` and closes the connection to it, in either direction, now (a node
    /// removed from the cluster: [`Endpoint::remove_peer`] keeps a live connection until every
    /// link is dropped). Frames still queued for it are dropped. Take it off the allowlist
    /// first ([`Transport::set_allowed_peers`]), or it may connect again at once.
    pub fn disconnect_peer(&self, node: NodeId) {
        let mut peers = self.shared.peers.lock();
        if let Some(slot) = peers.get_mut(&node) {
            slot.link = None;
            slot.addr = None;
            let _ = slot.cmds.send(Cmd::Disconnect);
        }
    }

    /// A link to `node` over the connection it opened to us, without an address to dial: for
    /// answering a peer this node knows no address for yet (a node that is not a member yet
    /// answers the leader that adds it). `None` unless a connection to `node` is established.
    /// If the connection breaks the link waits (it does not dial) until [`Endpoint::peer`]
    /// gives it an address or the peer connects again.
    pub fn connected_link(&self, node: NodeId) -> Option<PeerLink<M>> {
        let mut peers = self.shared.peers.lock();
        if *self.shared.shutdown.borrow() {
            return None;
        }
        let slot = peers.get_mut(&node)?;
        if !matches!(slot.state, ConnState::Connected(_)) {
            return None;
        }
        Some(self.shared.cached_link(slot, node))
    }

    /// Reports every connection lost from now on ([`ConnectionLost`]): a peer whose process
    /// dies is known within a round trip, long before a failure detector suspects it (the Raft
    /// workers wake the quiesced groups it led). A report is a hint, not a verdict: the peer
    /// may be alive and reconnect at once. A subscriber that falls more than 1,024 reports
    /// behind misses the oldest (`RecvError::Lagged`).
    pub fn connection_losses(&self) -> broadcast::Receiver<ConnectionLost> {
        self.shared.losses.subscribe()
    }

    /// Whether a connection to `peer` is currently established (in either direction).
    pub fn is_connected(&self, peer: NodeId) -> bool {
        self.shared
            .peers
            .lock()
            .get(&peer)
            .is_some_and(|s| matches!(s.state, ConnState::Connected(_)))
    }
}

impl<M> Endpoint<M> for Transport<M>
where
    M: Serialize + DeserializeOwned + Send + 'static,
{
    fn node_id(&self) -> NodeId {
        self.shared.cfg.node_id
    }

    fn peer(&self, node: NodeId, addr: SocketAddr) -> PeerLink<M> {
        let cfg = &self.shared.cfg;
        let mut peers = self.shared.peers.lock();
        if *self.shared.shutdown.borrow() {
            // Stopped: a link whose queue is already closed.
            let (link, _) = PeerLink::channel(
                cfg.node_id,
                node,
                cfg.max_queue_size,
                cfg.max_queue_bytes,
                cfg.max_frame_size,
            );
            return link;
        }
        let slot = self.shared.slot(&mut peers, node);
        let moved = slot.addr != Some(addr);
        slot.addr = Some(addr);
        let link = self.shared.cached_link(slot, node);
        if moved {
            let _ = slot.cmds.send(Cmd::Wake);
        }
        link
    }

    fn remove_peer(&self, node: NodeId) {
        let mut peers = self.shared.peers.lock();
        if let Some(slot) = peers.get_mut(&node) {
            slot.link = None;
            slot.addr = None;
            let _ = slot.cmds.send(Cmd::Wake);
        }
    }

    fn connected_link(&self, node: NodeId) -> Option<PeerLink<M>> {
        Transport::connected_link(self, node)
    }
}

// ---------------------------------------------------------------------------------------------
// Accepting

async fn accept_loop<M>(shared: Arc<Shared<M>>, listener: TcpListener)
where
    M: Serialize + DeserializeOwned + Send + 'static,
{
    let mut stop = shared.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            a = listener.accept() => a,
        };
        let (stream, remote) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Usually EMFILE: back off briefly rather than spin.
                warn!(node = %shared.cfg.node_id, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Before authentication a socket holds only a slot of the small pre-auth budget, for
        // at most `handshake_timeout`: strangers cannot hold the members' connection slots.
        let Ok(permit) = Arc::clone(&shared.pending).try_acquire_owned() else {
            warn!(node = %shared.cfg.node_id, %remote, max = shared.cfg.max_pending_handshakes,
                "refusing connection: max_pending_handshakes reached");
            m::handshake_refused(shared.cfg.node_id, None, "too_many_handshakes");
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            serve_inbound(shared, stream, remote, permit).await;
        });
    }
}

/// What the acceptor answers to a valid hello, decided under the `peers` mutex.
enum Decision {
    /// Use this connection (its id); the slot is already `Connected(id)`.
    Accept(u64, mpsc::UnboundedSender<Cmd>),
    /// We are dialling the peer too and have the lower id: our connection wins.
    Simultaneous,
    /// We hold a connection to the peer: ask the dialer whether it is stale.
    Alive,
}

async fn serve_inbound<M>(
    shared: Arc<Shared<M>>,
    stream: TcpStream,
    remote: SocketAddr,
    pending: tokio::sync::OwnedSemaphorePermit,
) where
    M: Serialize + DeserializeOwned + Send + 'static,
{
    let node = shared.cfg.node_id;
    let _ = stream.set_nodelay(true);
    let mut stop = shared.shutdown.subscribe();
    let deadline = Instant::now() + shared.cfg.handshake_timeout;
    let opened = tokio::select! {
        _ = stop.wait_for(|s| *s) => return,
        r = tokio::time::timeout_at(deadline, open_inbound(&shared, stream)) => r,
    };
    let (mut io, hello) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            warn!(%node, %remote, reason = e.label(), error = %e, "inbound handshake refused");
            m::handshake_refused(node, None, e.label());
            return;
        }
        Err(_) => {
            warn!(%node, %remote, reason = "timeout", "inbound handshake refused: peer said nothing in time");
            m::handshake_refused(node, None, Refusal::Timeout.label());
            return;
        }
    };
    let peer = hello.node_id;
    // Authenticated: the pre-auth slot is released and a connection slot taken (members only,
    // one connection per pair, so this bound is only reached if max_connections < members).
    drop(pending);
    let Ok(_slot) = Arc::clone(&shared.connections).try_acquire_owned() else {
        warn!(%node, %peer, %remote, max = shared.cfg.max_connections,
            "refusing connection: max_connections reached");
        m::handshake_refused(node, Some(peer), "too_many_connections");
        return;
    };
    let decision = {
        let mut peers = shared.peers.lock();
        if *shared.shutdown.borrow() {
            return;
        }
        let slot = shared.slot(&mut peers, peer);
        match slot.state {
            ConnState::Idle => {
                let id = shared.next_id();
                slot.state = ConnState::Connected(id);
                Decision::Accept(id, slot.cmds.clone())
            }
            ConnState::Dialing(_) if node < peer => Decision::Simultaneous,
            ConnState::Dialing(_) => {
                // The peer has the lower id: its connection wins; ours will be answered with
                // `Simultaneous` or `Alive` and closed by our driver.
                let id = shared.next_id();
                slot.state = ConnState::Connected(id);
                Decision::Accept(id, slot.cmds.clone())
            }
            ConnState::Connected(_) => Decision::Alive,
        }
    };
    let finished = tokio::time::timeout_at(deadline, async {
        match decision {
            Decision::Accept(id, cmds) => {
                match handshake::accept_reply(&mut io, Status::Accepted).await {
                    Ok(()) => Some((id, cmds)),
                    Err(e) => {
                        debug!(%node, %peer, %remote, "accepted connection failed before use: {e}");
                        shared.mark_idle(peer, id);
                        None
                    }
                }
            }
            Decision::Simultaneous => {
                debug!(%node, %peer, %remote, "simultaneous dial: keeping our own connection");
                m::dial_conflict(node, peer, "ours_wins");
                let _ = handshake::accept_reply(&mut io, Status::Simultaneous).await;
                None
            }
            Decision::Alive => {
                handshake::accept_reply(&mut io, Status::Alive)
                    .await
                    .ok()?;
                let replace = handshake::read_alive_answer(&mut io).await.ok()?;
                if !replace {
                    debug!(%node, %peer, %remote, "peer already uses our connection: closing its new one");
                    m::dial_conflict(node, peer, "kept_existing");
                    return None;
                }
                // The peer holds no connection to us: the one we hold is stale (the peer
                // restarted or dropped it). This one replaces it.
                info!(%node, %peer, %remote, "peer reconnected: replacing our stale connection");
                m::dial_conflict(node, peer, "replaced_stale");
                let mut peers = shared.peers.lock();
                if *shared.shutdown.borrow() {
                    return None;
                }
                let slot = shared.slot(&mut peers, peer);
                let id = shared.next_id();
                slot.state = ConnState::Connected(id);
                Some((id, slot.cmds.clone()))
            }
        }
    })
    .await;
    let Ok(Some((id, cmds))) = finished else {
        return;
    };
    m::connection_opened(node, peer, "accepted");
    debug!(%node, %peer, %remote, %id, "connection accepted");
    let live = LiveGuard::new(&shared.live);
    let (rd, wr) = io.split();
    let stop_reader = Arc::new(Notify::new());
    let conn = Conn {
        id,
        writer: wr,
        stop_reader: Arc::clone(&stop_reader),
        _live: Arc::clone(&live),
    };
    if cmds.send(Cmd::Attach(conn)).is_err() {
        return; // the driver is gone: shutting down
    }
    run_reader(&shared, rd, peer, id, &stop_reader, &cmds).await;
    drop(live);
}

#[derive(Debug)]
enum OpenError {
    Tls(std::io::Error),
    Handshake(HandshakeError),
}

impl OpenError {
    fn label(&self) -> &'static str {
        match self {
            OpenError::Tls(_) => "tls",
            OpenError::Handshake(h) => h.label(),
        }
    }
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Tls(e) => write!(f, "tls handshake failed: {e}"),
            OpenError::Handshake(e) => write!(f, "{e}"),
        }
    }
}

async fn open_inbound<M>(shared: &Shared<M>, stream: TcpStream) -> Result<(Io, Hello), OpenError> {
    // With TLS, the client certificate (already chained to the CA by rustls) must name the id
    // the peer claims in its hello.
    let (mut io, cert) = match &shared.tls {
        Some(tls) => {
            let tls_stream = tls.acceptor.accept(stream).await.map_err(OpenError::Tls)?;
            let cert = tls_stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .cloned();
            (Io::Tls(Box::new(tls_stream)), Some(cert))
        }
        None => (Io::Plain(stream), None),
    };
    let secret = shared.cfg.secret.as_ref();
    let ours = shared.hello.fresh(secret.is_some());
    let admit = |theirs: &Hello| {
        let id = theirs.node_id;
        if shared.denied.read().contains(&id) {
            return Err(Refusal::NotMember(id));
        }
        if let Some(allowed) = shared.allowed.read().as_ref() {
            if !allowed.contains(&id) {
                return Err(Refusal::NotMember(id));
            }
        }
        match &cert {
            Some(Some(cert)) if cert_names_node(cert, id) => Ok(()),
            Some(_) => Err(Refusal::CertificateMismatch(id)),
            None => Ok(()),
        }
    };
    let hello = handshake::accept_hello(&mut io, &ours, secret, admit)
        .await
        .map_err(OpenError::Handshake)?;
    Ok((io, hello))
}

// ---------------------------------------------------------------------------------------------
// Reading

/// Runs the read loop of connection `id` and reports its end to the driver.
async fn run_reader<M>(
    shared: &Shared<M>,
    rd: BoxRead,
    peer: NodeId,
    id: u64,
    stop_reader: &Notify,
    cmds: &mpsc::UnboundedSender<Cmd>,
) where
    M: DeserializeOwned,
{
    let node = shared.cfg.node_id;
    let mut stop = shared.shutdown.subscribe();
    let r = tokio::select! {
        r = read_loop(shared, rd, peer, &mut stop) => r,
        _ = stop_reader.notified() => Ok(()),
    };
    match r {
        Ok(()) => debug!(%node, %peer, %id, "connection closed"),
        Err(why) => warn!(%node, %peer, %id, "closing connection: {why}"),
    }
    let _ = cmds.send(Cmd::Closed(id));
}

/// Why a connection's read loop ended before EOF or shutdown (logged; the connection is
/// closed and the pair redials).
#[derive(Debug, thiserror::Error)]
enum ReadError {
    /// The node's inbound sink is gone (the node is shutting down).
    #[error("inbound sink closed")]
    SinkClosed,
    /// A frame could not be cut or decoded (the peer is counted in the decode-error metric).
    #[error(transparent)]
    Frame(CodecError),
    /// The peer closed the connection inside a frame.
    #[error("connection closed mid-frame ({0} bytes of a partial frame)")]
    Truncated(usize),
    /// The socket failed.
    #[error("read error: {0}")]
    Io(#[source] std::io::Error),
    /// Nothing arrived within `read_timeout` (not even a keep-alive).
    #[error("read timeout: nothing received for {0:?}")]
    Timeout(Duration),
}

/// Reads frames until EOF, error or shutdown. Frames are cut and decoded straight from the
/// read buffer (no per-frame buffer); the messages of one read go to the inbound sink as one
/// batch (one channel operation and wake-up per read, not per message); while the sink is
/// full this task awaits it and does not read, so the socket's receive window closes and the
/// sender's writes stall: backpressure, with at most one read buffer held here. Writes on the
/// same connection run in the driver and are not held up by this.
async fn read_loop<M>(
    shared: &Shared<M>,
    mut io: BoxRead,
    peer: NodeId,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), ReadError>
where
    M: DeserializeOwned,
{
    let node = shared.cfg.node_id;
    let decoder = FrameDecoder::new(shared.cfg.max_frame_size);
    let counters = FlowCounters::new(node, peer, "in");
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        // Cut: the complete frames at the front of the buffer (the prefixes only; a prefix over
        // the limit stops here, before its body is ever buffered). Counting the messages here
        // sizes the batch's vector exactly: never grown (and moved) while decoding, and never
        // larger than this read needs (sizing it like the previous batch gave the one message
        // read after a burst a vector for thousands).
        let mut end = 0;
        let mut messages = 0usize;
        let cut = loop {
            match decoder.complete_frame(&buf[end..]) {
                Ok(Some(len)) => {
                    end += LENGTH_PREFIX + len;
                    messages += usize::from(len > 0);
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        // The complete frames become one shared, immutable chunk: bodies are decoded from it in
        // place, and `shared_bytes` fields of the messages are views into it (no allocation or
        // copy per payload). The partial frame after it stays in `buf`.
        let chunk = buf.split_to(end).freeze();
        let mut frames = 0u64;
        let mut msgs = shared.inbound.batch_vec(messages);
        let decoded = {
            let _source = shared_bytes::register(&chunk);
            let mut off = 0;
            loop {
                let Some(prefix) = chunk.get(off..off + LENGTH_PREFIX) else {
                    break Ok(());
                };
                let mut p = [0u8; LENGTH_PREFIX];
                p.copy_from_slice(prefix);
                let len = u32::from_be_bytes(p) as usize;
                let body = &chunk[off + LENGTH_PREFIX..off + LENGTH_PREFIX + len];
                off += LENGTH_PREFIX + len;
                frames += 1;
                if len == 0 {
                    continue; // keep-alive
                }
                match decode_body(body) {
                    Ok(msg) => msgs.push(msg),
                    Err(e) => break Err(e),
                }
            }
        };
        let result = decoded.and(cut);
        // Every message of this read in one hand-over (frames before a bad one included: they
        // were well-formed and authenticated).
        if !msgs.is_empty() {
            let batch = InboundBatch { from: peer, msgs };
            match shared.inbound.try_send(batch) {
                Ok(()) => {}
                Err(Refused::Full(batch)) => {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return Ok(()),
                        r = shared.inbound.send(batch) => if r.is_err() {
                            return Err(ReadError::SinkClosed);
                        },
                    }
                }
                Err(Refused::Closed) => return Err(ReadError::SinkClosed),
            }
        }
        counters.frames.increment(frames);
        if let Err(e) = result {
            m::decode_error(node, Some(peer), e.reason());
            return Err(ReadError::Frame(e));
        }
        drop(chunk);
        // Room for at least the rest of a partial frame (bounded by max_frame_size, checked by
        // the decoder) and a useful read.
        let want = match decoder.complete_frame(&buf) {
            Ok(None) => decoder.missing(&buf),
            _ => 0,
        };
        if buf.capacity() - buf.len() < want.max(READ_CHUNK / 4) {
            buf.reserve(want.max(READ_CHUNK));
        }
        let read = tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            r = timeout(shared.cfg.read_timeout, io.read_buf(&mut buf)) => r,
        };
        match read {
            Ok(Ok(0)) if buf.is_empty() => return Ok(()),
            Ok(Ok(0)) => {
                m::decode_error(node, Some(peer), "truncated");
                return Err(ReadError::Truncated(buf.len()));
            }
            Ok(Ok(n)) => counters.bytes.increment(n as u64),
            Ok(Err(e)) => return Err(ReadError::Io(e)),
            Err(_) => {
                m::read_timeout(node, peer);
                return Err(ReadError::Timeout(shared.cfg.read_timeout));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dialling and writing

/// How a dial attempt ended, when it did not fail.
enum Dialled {
    /// This connection (id) is the pair's connection now.
    Connected(u64, Io),
    /// The peer is dialling us too and has the lower id: its connection is coming.
    PeerWins,
    /// A connection exists already (we accepted the peer's meanwhile).
    KeptExisting,
}

#[derive(Debug, thiserror::Error)]
enum DialError {
    /// The peer (or its certificate) refused us: logged as a warning and counted.
    #[error(transparent)]
    Refused(HandshakeError),
    /// The TCP connect failed.
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The TCP connect did not complete within `connect_timeout`.
    #[error("connect timed out")]
    ConnectTimeout,
    /// No TLS server name can be made for the peer.
    #[error(transparent)]
    ServerName(TlsError),
    /// The TLS handshake failed (other than by a certificate naming another node).
    #[error("tls handshake: {0}")]
    Tls(#[source] std::io::Error),
    /// The socket failed during the hello exchange.
    #[error("handshake: {0}")]
    Handshake(#[source] std::io::Error),
}

type DialFuture = Pin<Box<dyn Future<Output = Result<Dialled, DialError>> + Send>>;

/// One dial attempt: TCP (+ TLS) connect, the hello exchange, and the decision of which
/// connection the pair uses, taken under the `peers` mutex when the acceptor's answer arrives.
async fn dial<M>(
    shared: Arc<Shared<M>>,
    peer: NodeId,
    addr: SocketAddr,
    attempt: u64,
) -> Result<Dialled, DialError>
where
    M: Serialize + DeserializeOwned + Send + 'static,
{
    let cfg = &shared.cfg;
    let stream = match timeout(cfg.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(DialError::Connect(e)),
        Err(_) => return Err(DialError::ConnectTimeout),
    };
    let _ = stream.set_nodelay(true);
    let opened = timeout(cfg.handshake_timeout, async {
        let mut io = match &shared.tls {
            Some(tls) => {
                let name = tls.server_name_for(peer).map_err(DialError::ServerName)?;
                let tls_stream = tls.connector.connect(name, stream).await.map_err(|e| {
                    if names_another_node(&e) {
                        DialError::Refused(HandshakeError::Refused(Refusal::CertificateMismatch(
                            peer,
                        )))
                    } else {
                        DialError::Tls(e)
                    }
                })?;
                // The acceptor's certificate must name the node we dialled.
                let named = tls_stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .is_some_and(|c| cert_names_node(c, peer));
                if !named {
                    return Err(DialError::Refused(HandshakeError::Refused(
                        Refusal::CertificateMismatch(peer),
                    )));
                }
                Io::Tls(Box::new(tls_stream))
            }
            None => Io::Plain(stream),
        };
        let secret = shared.cfg.secret.as_ref();
        let ours = shared.hello.fresh(secret.is_some());
        let status = match handshake::dial_status(&mut io, &ours, peer, secret).await {
            Ok((_, status)) => status,
            Err(e @ HandshakeError::Refused(_)) => return Err(DialError::Refused(e)),
            Err(HandshakeError::Io(e)) => return Err(DialError::Handshake(e)),
        };
        let (adopted, replace) = {
            let mut peers = shared.peers.lock();
            let Some(slot) = peers.get_mut(&peer) else {
                return Ok(Dialled::KeptExisting); // shut down meanwhile
            };
            match status {
                Status::Accepted if slot.state == ConnState::Dialing(attempt) => {
                    let id = shared.next_id();
                    slot.state = ConnState::Connected(id);
                    (Some(id), None)
                }
                // Cannot happen with a peer following the protocol (it accepted us, so it was
                // not dialling us while we could accept it); keep what we have.
                Status::Accepted => (None, None),
                Status::Simultaneous => {
                    if slot.state == ConnState::Dialing(attempt) {
                        slot.state = ConnState::Idle;
                    }
                    return Ok(Dialled::PeerWins);
                }
                Status::Alive => {
                    let replace = !matches!(slot.state, ConnState::Connected(_));
                    if replace {
                        let id = shared.next_id();
                        slot.state = ConnState::Connected(id);
                        (Some(id), Some(true))
                    } else {
                        (None, Some(false))
                    }
                }
            }
        };
        if let Some(replace) = replace {
            if let Err(e) = handshake::answer_alive(&mut io, replace).await {
                if let Some(id) = adopted {
                    shared.mark_idle(peer, id);
                }
                return Err(DialError::Handshake(e));
            }
        }
        Ok(match adopted {
            Some(id) => Dialled::Connected(id, io),
            None => Dialled::KeptExisting,
        })
    })
    .await;
    match opened {
        Ok(r) => r,
        Err(_) => Err(DialError::Refused(HandshakeError::Refused(
            Refusal::Timeout,
        ))),
    }
}

/// Whether a failed TLS dial failed because the peer's certificate is not valid for the name
/// we checked (`node-{id}.conclave` of the node dialled): counted as `certificate_mismatch`.
fn names_another_node(e: &std::io::Error) -> bool {
    use rustls::CertificateError as C;
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|inner| {
            matches!(
                inner,
                rustls::Error::InvalidCertificate(
                    C::NotValidForName | C::NotValidForNameContext { .. }
                )
            )
        })
}

/// Full jitter: a uniform draw in `[0, min(cap, base * 2^failures)]`, so that peers that lost
/// the same node do not retry in lockstep.
fn backoff(cfg: &TransportConfig, failures: u32) -> Duration {
    let factor = 1u32.checked_shl(failures.min(20)).unwrap_or(u32::MAX);
    let bound = cfg.backoff_base.saturating_mul(factor).min(cfg.backoff_cap);
    let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

/// Awaits `f` if there is one, else never completes (a disabled `select!` branch still builds
/// its future).
async fn maybe<F: Future + Unpin>(f: Option<&mut F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// The per-peer task: owns the outbound queue and the write half of the pair's connection.
/// Dials (with backoff) when it has a link with an address and the pair has no connection;
/// takes over connections the acceptor adopts; drains the queue in coalesced batches; sends
/// keep-alives; exits when the transport stops, or when the peer is forgotten (no link, no
/// connection).
async fn driver<M>(shared: Arc<Shared<M>>, peer: NodeId, mut cmds: mpsc::UnboundedReceiver<Cmd>)
where
    M: Serialize + DeserializeOwned + Send + 'static,
{
    let node = shared.cfg.node_id;
    let keepalive = shared.cfg.keepalive_interval;
    let max_batch = shared.cfg.max_batch_bytes;
    let mut stop = shared.shutdown.subscribe();
    let counters = FlowCounters::new(node, peer, "out");
    let mut rx: Option<QueueReceiver> = None;
    let mut conn: Option<Conn> = None;
    let mut dialing: Option<DialFuture> = None;
    let mut out = Batch::new(max_batch, shared.cfg.write_timeout);
    let mut retry_at = Instant::now();
    let mut failures: u32 = 0;
    let mut attempts: u64 = 0;
    let mut idle_deadline = Instant::now() + keepalive;
    let mut dial_attempt = 0;
    let mut linger = false;
    loop {
        if *stop.borrow() {
            return;
        }
        if std::mem::take(&mut linger) {
            tokio::task::yield_now().await;
            if let Some(r) = rx.as_mut() {
                if r.len() > 0 {
                    out.frames += r.take(&mut out.buf).await as u64;
                }
            }
        }
        // Without a connection: dial if we may, or leave if the peer is forgotten.
        let mut may_dial = false;
        if conn.is_none() && dialing.is_none() {
            let mut peers = shared.peers.lock();
            let Some(slot) = peers.get_mut(&peer) else {
                return; // shut down
            };
            let senders = rx.as_ref().map_or(0, QueueReceiver::sender_count);
            if slot.link.is_none() && senders == 0 && slot.state == ConnState::Idle {
                peers.remove(&peer);
                return;
            }
            if let (Some(addr), Some(_), ConnState::Idle) = (slot.addr, &slot.link, slot.state) {
                may_dial = true;
                if retry_at <= Instant::now() {
                    let attempt = shared.next_id();
                    slot.state = ConnState::Dialing(attempt);
                    drop(peers);
                    if attempts > 0 {
                        m::reconnect(node, peer);
                    }
                    attempts += 1;
                    dialing = Some(Box::pin(dial(Arc::clone(&shared), peer, addr, attempt)));
                    dial_attempt = attempt;
                    may_dial = false;
                }
            }
        }
        let connected = conn.is_some();
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            cmd = cmds.recv() => match cmd {
                None => return,
                Some(Cmd::Attach(new)) => {
                    if let Some(old) = conn.take() {
                        lose(&mut out, node, peer);
                        old.close();
                    }
                    debug!(%node, %peer, id = %new.id, "using accepted connection");
                    conn = Some(new);
                    failures = 0;
                    idle_deadline = Instant::now() + keepalive;
                }
                Some(Cmd::Closed(id)) => {
                    if conn.as_ref().is_some_and(|c| c.id == id) {
                        if let Some(c) = conn.take() {
                            c.close();
                        }
                        lose(&mut out, node, peer);
                        shared.lost(peer, id);
                        retry_at = Instant::now() + backoff(&shared.cfg, failures);
                        failures = failures.saturating_add(1);
                    }
                }
                Some(Cmd::Link(r)) => {
                    rx = Some(r);
                    retry_at = Instant::now();
                }
                Some(Cmd::Wake) => {
                    if conn.is_none() {
                        retry_at = retry_at.min(Instant::now() + backoff(&shared.cfg, 0));
                    }
                }
                Some(Cmd::Disconnect) => {
                    if dialing.take().is_some() {
                        shared.end_dial(peer, dial_attempt);
                    }
                    if let Some(c) = conn.take() {
                        let id = c.id;
                        c.close();
                        info!(%node, %peer, %id, "closed the connection to a peer that left the cluster");
                        shared.mark_idle(peer, id);
                    }
                    lose(&mut out, node, peer);
                    // Whatever is still queued was meant for a node that is no longer a peer.
                    rx = None;
                }
            },
            r = maybe(dialing.as_mut()) => {
                dialing = None;
                match r {
                    Ok(Dialled::Connected(id, io)) => {
                        info!(%node, %peer, %id, "connected to peer");
                        m::connection_opened(node, peer, "dialed");
                        failures = 0;
                        conn = Some(start_reader(&shared, peer, id, io));
                        idle_deadline = Instant::now() + keepalive;
                    }
                    Ok(Dialled::PeerWins) => {
                        debug!(%node, %peer, "simultaneous dial: the peer's connection wins");
                        m::dial_conflict(node, peer, "peer_wins");
                        // Its connection normally arrives within a round trip; if it does not
                        // (its dial failed), dial again after a backoff.
                        retry_at = Instant::now() + backoff(&shared.cfg, failures);
                        failures = failures.saturating_add(1);
                    }
                    Ok(Dialled::KeptExisting) => {}
                    Err(e) => {
                        let addr = shared.peers.lock().get(&peer).and_then(|s| s.addr);
                        match e {
                            DialError::Refused(e) => {
                                warn!(%node, %peer, ?addr, reason = e.label(), "handshake with peer refused: {e}");
                                m::handshake_refused(node, Some(peer), e.label());
                            }
                            why => {
                                debug!(%node, %peer, ?addr, "cannot reach peer: {why}");
                            }
                        }
                        retry_at = Instant::now() + backoff(&shared.cfg, failures);
                        failures = failures.saturating_add(1);
                    }
                }
                // An attempt that did not move the pair's state elsewhere leaves it idle.
                shared.end_dial(peer, dial_attempt);
            }
            _ = tokio::time::sleep_until(retry_at), if may_dial => {}
            _ = tokio::time::sleep_until(idle_deadline), if connected && out.is_empty() => {
                out.push_keepalive();
            }
            step = pump(rx.as_mut(), conn.as_mut(), &mut out), if connected => match step {
                Step::Took(0) => rx = None,
                Step::Took(n) => {
                    out.frames += n as u64;
                    // A stream is being queued (more than one frame since the last write): let
                    // the senders run once more before writing, so that this write carries more
                    // frames. One scheduler turn, no timer: an idle link (one message) is
                    // written at once.
                    linger = n > 1 && out.buf.len() < max_batch / 2;
                }
                Step::Wrote(Ok((frames, bytes))) => {
                    counters.frames.increment(frames);
                    counters.bytes.increment(bytes);
                    idle_deadline = Instant::now() + keepalive;
                }
                Step::Wrote(Err(e)) => {
                    let timed_out = e.kind() == std::io::ErrorKind::TimedOut;
                    if timed_out {
                        m::write_timeout(node, peer);
                    }
                    if let Some(c) = conn.take() {
                        let id = c.id;
                        c.close();
                        if timed_out {
                            warn!(%node, %peer, %id, "closing connection to peer: {e}");
                        } else {
                            warn!(%node, %peer, %id, "connection to peer lost: write error: {e}");
                        }
                        shared.lost(peer, id);
                    }
                    lose(&mut out, node, peer);
                    retry_at = Instant::now() + backoff(&shared.cfg, failures);
                    failures = failures.saturating_add(1);
                }
            },
        }
    }
}

/// What one step of a connected driver did.
enum Step {
    /// Took this many frames off the queue (0: the queue ended, every link is gone).
    Took(usize),
    /// Wrote the batch (frames, bytes), or failed.
    Wrote(std::io::Result<(u64, u64)>),
}

/// With a batch in hand, writes it; otherwise waits for the queue and takes everything in it
/// (or waits forever without a queue or a connection). Cancel-safe: taking is atomic, and write
/// progress is kept in the batch, so a write interrupted by another `select!` branch resumes
/// where it stopped.
async fn pump(rx: Option<&mut QueueReceiver>, conn: Option<&mut Conn>, out: &mut Batch) -> Step {
    match (conn, rx) {
        (Some(c), _) if !out.is_empty() => Step::Wrote(out.write_to(&mut c.writer).await),
        (Some(_), Some(rx)) => Step::Took(rx.take(&mut out.buf).await),
        _ => std::future::pending().await,
    }
}

/// Frames taken off the queue but not (completely) written when a connection goes away are
/// lost: counted, never re-sent (they may have reached the peer; at most once).
fn lose(out: &mut Batch, node: NodeId, peer: NodeId) {
    let frames = out.discard();
    if frames > 0 {
        m::frames_lost(node, peer, frames);
    }
}

/// Splits a freshly dialled connection, starts its reader and returns its write side.
fn start_reader<M>(shared: &Arc<Shared<M>>, peer: NodeId, id: u64, io: Io) -> Conn
where
    M: Serialize + DeserializeOwned + Send + 'static,
{
    let live = LiveGuard::new(&shared.live);
    let (rd, wr) = io.split();
    let stop_reader = Arc::new(Notify::new());
    let cmds = shared.peers.lock().get(&peer).map(|s| s.cmds.clone());
    let reader_stop = Arc::clone(&stop_reader);
    let reader_live = Arc::clone(&live);
    let shared2 = Arc::clone(shared);
    tokio::spawn(async move {
        let _live = reader_live;
        if let Some(cmds) = cmds {
            run_reader(&shared2, rd, peer, id, &reader_stop, &cmds).await;
        }
    });
    Conn {
        id,
        writer: wr,
        stop_reader,
        _live: live,
    }
}
/// A write buffer that grew beyond this (a burst of large frames) is dropped after the write
/// rather than kept for the life of the connection.
const SHRINK_ABOVE: usize = 4 << 20;

/// One write batch: every frame the queue held when the driver took it, back to back in one
/// buffer (swapped out of the queue, not copied), plus keep-alives. Written in chunks of at most
/// `max_batch_bytes` per call. Write progress lives here, so an interrupted
/// [`Batch::write_to`] resumes where it stopped.
struct Batch {
    buf: BytesMut,
    /// Bytes of `buf` already written.
    pos: usize,
    frames: u64,
    max_write: usize,
    /// A write call (or the flush) that makes no progress for this long fails with `TimedOut`:
    /// a peer that never reads cannot stall the driver (finding 13).
    write_timeout: Duration,
}

impl Batch {
    fn new(max_batch: usize, write_timeout: Duration) -> Self {
        Self {
            buf: BytesMut::new(),
            pos: 0,
            frames: 0,
            max_write: max_batch.max(1),
            write_timeout,
        }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn push_keepalive(&mut self) {
        encode_keepalive(&mut self.buf);
    }

    /// Drops everything; returns how many frames were dropped.
    fn discard(&mut self) -> u64 {
        let frames = self.frames;
        self.buf.clear();
        self.pos = 0;
        self.frames = 0;
        frames
    }

    /// Writes the whole buffer, handling short writes; leaves the batch empty and returns the
    /// frames and bytes written.
    async fn write_to<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        wr: &mut W,
    ) -> std::io::Result<(u64, u64)> {
        let stalled = |what: &str| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "write timeout: the peer accepted no bytes for {:?} ({what})",
                    self.write_timeout
                ),
            )
        };
        while self.pos < self.buf.len() {
            let end = self.buf.len().min(self.pos + self.max_write);
            let n = timeout(self.write_timeout, wr.write(&self.buf[self.pos..end]))
                .await
                .map_err(|_| stalled("write"))??;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.pos += n;
        }
        timeout(self.write_timeout, wr.flush())
            .await
            .map_err(|_| stalled("flush"))??;
        let done = (self.frames, self.buf.len() as u64);
        self.buf.clear();
        self.pos = 0;
        self.frames = 0;
        if self.buf.capacity() > SHRINK_ABOVE {
            self.buf = BytesMut::new();
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts at most 5 bytes per write call, to exercise short writes.
    struct Trickle(Vec<u8>);

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = buf.len().min(5);
            self.0.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn batches_survive_short_writes_and_are_reusable() {
        let mut batch = Batch::new(7, Duration::from_secs(5));
        let mut expected = Vec::new();
        for (i, n) in [10usize, 3000, 20, 1].iter().enumerate() {
            let frame = vec![i as u8; *n];
            batch.buf.extend_from_slice(&frame);
            batch.frames += 1;
            expected.extend_from_slice(&frame);
        }
        batch.push_keepalive();
        expected.extend_from_slice(&[0, 0, 0, 0]);
        let mut out = Trickle(Vec::new());
        let (n, bytes) = batch.write_to(&mut out).await.unwrap();
        assert_eq!(out.0, expected);
        assert_eq!((n, bytes), (4, expected.len() as u64));
        assert!(batch.is_empty());
        // The batch is reusable.
        batch.buf.extend_from_slice(b"abc");
        batch.frames = 1;
        let mut out = Trickle(Vec::new());
        batch.write_to(&mut out).await.unwrap();
        assert_eq!(out.0, b"abc".to_vec());
        // Discarding reports the frames dropped.
        batch.buf.extend_from_slice(b"xyz");
        batch.frames = 2;
        assert_eq!(batch.discard(), 2);
        assert!(batch.is_empty());
    }

    #[test]
    fn backoff_is_bounded_by_the_cap_and_grows() {
        let mut cfg = TransportConfig::new(NodeId::new(1), "c", "127.0.0.1:0".parse().unwrap());
        cfg.backoff_base = Duration::from_millis(10);
        cfg.backoff_cap = Duration::from_millis(500);
        for failures in 0..40 {
            let bound = Duration::from_millis(10)
                .saturating_mul(1u32 << failures.min(20))
                .min(cfg.backoff_cap);
            for _ in 0..20 {
                assert!(backoff(&cfg, failures) <= bound);
            }
        }
        // Full jitter spreads draws over the whole range: over 200 draws at the cap, some fall
        // in the lower and some in the upper half.
        let draws: Vec<_> = (0..200).map(|_| backoff(&cfg, 30)).collect();
        assert!(draws.iter().any(|d| *d < Duration::from_millis(250)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(250)));
    }
}
