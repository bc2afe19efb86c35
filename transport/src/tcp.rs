//! The TCP (optionally TLS) transport: a listener that reads, and one writer per peer link.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::{timeout, Instant};
use tracing::{debug, info, warn};

use crate::codec::{decode_body, encode_keepalive, Frame, FrameDecoder};
use crate::config::{ConfigError, TransportConfig};
use crate::handshake::{self, HandshakeError, Hello, Refusal};
use crate::link::PeerLink;
use crate::metrics::{self as m, FlowCounters};
use crate::tls::{TlsContext, TlsError};
use crate::{Endpoint, Inbound, NodeId};

/// How many queued frames a writer takes per `recv_many` before topping up with `try_recv`.
const RECV_BATCH: usize = 512;
/// Read buffer growth step for inbound connections.
const READ_CHUNK: usize = 64 * 1024;

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

/// Anything a connection can run over: a TCP stream or a TLS stream on top of one.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
type BoxStream = Box<dyn Stream>;

struct Shared<M> {
    cfg: TransportConfig,
    hello: Hello,
    tls: Option<TlsContext>,
    inbound: Inbound<M>,
    peers: Mutex<HashMap<NodeId, (SocketAddr, PeerLink<M>)>>,
    shutdown: watch::Sender<bool>,
    connections: Arc<Semaphore>,
    /// The runtime `bind` ran on: writers are spawned there, so `peer()` may be called from any
    /// thread (an actix arbiter runs its own runtime; writers should not be tied to it).
    runtime: tokio::runtime::Handle,
}

/// The TCP/TLS transport of one node. Dropping it (or calling [`Transport::shutdown`]) stops
/// the listener, every reader and every writer.
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
            runtime: tokio::runtime::Handle::current(),
            cfg,
            tls,
            inbound,
            peers: Mutex::new(HashMap::new()),
            shutdown,
        });
        info!(node = shared.cfg.node_id, %local_addr, tls = shared.tls.is_some(), "transport listening");
        tokio::spawn(accept_loop(Arc::clone(&shared), listener));
        Ok((Self { shared, local_addr }, local_addr))
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the listener, every connection and every writer. Links return `Closed` afterwards.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        self.shared.peers.lock().clear();
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
        let mut peers = self.shared.peers.lock();
        if let Some((known, link)) = peers.get(&node) {
            if *known == addr && !link.is_closed() {
                return link.clone();
            }
        }
        let cfg = &self.shared.cfg;
        let (link, rx) =
            PeerLink::channel(cfg.node_id, node, cfg.max_queue_size, cfg.max_frame_size);
        peers.insert(node, (addr, link.clone()));
        self.shared
            .runtime
            .spawn(writer_loop(Arc::clone(&self.shared), node, addr, rx));
        link
    }

    fn remove_peer(&self, node: NodeId) {
        self.shared.peers.lock().remove(&node);
    }
}

// ---------------------------------------------------------------------------------------------
// Inbound side

async fn accept_loop<M>(shared: Arc<Shared<M>>, listener: TcpListener)
where
    M: DeserializeOwned + Send + 'static,
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
                warn!(node = shared.cfg.node_id, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&shared.connections).try_acquire_owned() else {
            warn!(node = shared.cfg.node_id, %remote, max = shared.cfg.max_connections,
                "refusing connection: max_connections reached");
            m::handshake_refused(shared.cfg.node_id, None, "too_many_connections");
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let _permit = permit;
            serve_inbound(shared, stream, remote).await;
        });
    }
}

async fn serve_inbound<M>(shared: Arc<Shared<M>>, stream: TcpStream, remote: SocketAddr)
where
    M: DeserializeOwned + Send + 'static,
{
    let node = shared.cfg.node_id;
    let _ = stream.set_nodelay(true);
    let mut stop = shared.shutdown.subscribe();
    let opened = tokio::select! {
        _ = stop.wait_for(|s| *s) => return,
        r = timeout(shared.cfg.handshake_timeout, open_inbound(&shared, stream)) => r,
    };
    let (io, hello) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            warn!(node, %remote, reason = e.label(), error = %e, "inbound handshake refused");
            m::handshake_refused(node, None, e.label());
            return;
        }
        Err(_) => {
            warn!(node, %remote, reason = "timeout", "inbound handshake refused: peer said nothing in time");
            m::handshake_refused(node, None, Refusal::Timeout.label());
            return;
        }
    };
    let peer = hello.node_id;
    debug!(node, peer, %remote, "inbound connection established");
    match read_loop(&shared, io, peer, &mut stop).await {
        Ok(()) => debug!(node, peer, %remote, "inbound connection closed"),
        Err(why) => warn!(node, peer, %remote, "closing inbound connection: {why}"),
    }
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

async fn open_inbound<M>(
    shared: &Shared<M>,
    stream: TcpStream,
) -> Result<(BoxStream, Hello), OpenError> {
    let mut io: BoxStream = match &shared.tls {
        Some(tls) => Box::new(tls.acceptor.accept(stream).await.map_err(OpenError::Tls)?),
        None => Box::new(stream),
    };
    let hello = handshake::accept(&mut io, &shared.hello)
        .await
        .map_err(OpenError::Handshake)?;
    Ok((io, hello))
}

/// Reads frames until EOF, error or shutdown. Decodes each body right after it is cut (the body
/// is split off the read buffer without copying) and hands the message to the inbound sink;
/// while the sink is full this task awaits it and does not read, so the socket's receive window
/// closes and the sender's writes stall: backpressure, with at most one read buffer held here.
async fn read_loop<M>(
    shared: &Shared<M>,
    mut io: BoxStream,
    peer: NodeId,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), String>
where
    M: DeserializeOwned,
{
    let node = shared.cfg.node_id;
    let decoder = FrameDecoder::new(shared.cfg.max_frame_size);
    let counters = FlowCounters::new(node, peer, "in");
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        loop {
            let frame = match decoder.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    m::decode_error(node, Some(peer), e.reason());
                    return Err(e.to_string());
                }
            };
            counters.frames.increment(1);
            let Frame::Message(body) = frame else {
                continue;
            };
            let msg: M = match decode_body(&body) {
                Ok(msg) => msg,
                Err(e) => {
                    m::decode_error(node, Some(peer), e.reason());
                    return Err(e.to_string());
                }
            };
            match shared.inbound.try_send((peer, msg)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(item)) => {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return Ok(()),
                        r = shared.inbound.send(item) => if r.is_err() {
                            return Err("inbound sink closed".into());
                        },
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err("inbound sink closed".into())
                }
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let read = tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            r = timeout(shared.cfg.read_timeout, io.read_buf(&mut buf)) => r,
        };
        match read {
            Ok(Ok(0)) if buf.is_empty() => return Ok(()),
            Ok(Ok(0)) => {
                m::decode_error(node, Some(peer), "truncated");
                return Err(format!(
                    "connection closed mid-frame ({} bytes of a partial frame)",
                    buf.len()
                ));
            }
            Ok(Ok(n)) => counters.bytes.increment(n as u64),
            Ok(Err(e)) => return Err(format!("read error: {e}")),
            Err(_) => {
                m::read_timeout(node, peer);
                return Err(format!(
                    "read timeout: nothing received for {:?}",
                    shared.cfg.read_timeout
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Outbound side

/// Why a connected writer stopped.
enum WriterExit {
    /// The transport is shutting down or every link clone is gone: stop for good.
    Done,
    /// The connection broke: reconnect.
    Broken(String),
}

/// Owns the connection to one peer: dials (with backoff), then drains the queue in batches.
async fn writer_loop<M>(
    shared: Arc<Shared<M>>,
    peer: NodeId,
    addr: SocketAddr,
    mut rx: mpsc::Receiver<Bytes>,
) {
    let node = shared.cfg.node_id;
    let mut stop = shared.shutdown.subscribe();
    let counters = FlowCounters::new(node, peer, "out");
    let mut failures: u32 = 0;
    let mut first_attempt = true;
    loop {
        if *stop.borrow() || rx.is_closed() {
            return;
        }
        if !first_attempt {
            m::reconnect(node, peer);
        }
        first_attempt = false;
        let dialled = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            d = dial(&shared, peer, addr) => d,
        };
        match dialled {
            Ok(io) => {
                info!(node, peer, %addr, "connected to peer");
                failures = 0;
                match write_loop(&shared, io, &mut rx, &counters, peer, &mut stop).await {
                    WriterExit::Done => return,
                    WriterExit::Broken(why) => {
                        warn!(node, peer, %addr, "connection to peer lost: {why}");
                    }
                }
            }
            Err(DialError::Refused(e)) => {
                warn!(node, peer, %addr, reason = e.label(), "handshake with peer refused: {e}");
                m::handshake_refused(node, Some(peer), e.label());
            }
            Err(DialError::Other(why)) => {
                debug!(node, peer, %addr, "cannot reach peer: {why}");
            }
        }
        let delay = backoff(&shared.cfg, failures);
        failures = failures.saturating_add(1);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Full jitter: a uniform draw in `[0, min(cap, base * 2^failures)]`, so that peers that lost
/// the same node do not retry in lockstep.
fn backoff(cfg: &TransportConfig, failures: u32) -> Duration {
    let factor = 1u32.checked_shl(failures.min(20)).unwrap_or(u32::MAX);
    let bound = cfg.backoff_base.saturating_mul(factor).min(cfg.backoff_cap);
    let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

enum DialError {
    Refused(HandshakeError),
    Other(String),
}

async fn dial<M>(
    shared: &Shared<M>,
    peer: NodeId,
    addr: SocketAddr,
) -> Result<BoxStream, DialError> {
    let cfg = &shared.cfg;
    let stream = match timeout(cfg.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(DialError::Other(format!("connect: {e}"))),
        Err(_) => return Err(DialError::Other("connect timed out".into())),
    };
    let _ = stream.set_nodelay(true);
    let opened = timeout(cfg.handshake_timeout, async {
        let mut io: BoxStream = match &shared.tls {
            Some(tls) => Box::new(
                tls.connector
                    .connect(tls.server_name_for(addr), stream)
                    .await
                    .map_err(|e| DialError::Other(format!("tls handshake: {e}")))?,
            ),
            None => Box::new(stream),
        };
        match handshake::dial(&mut io, &shared.hello, peer).await {
            Ok(_) => Ok(io),
            Err(e @ HandshakeError::Refused(_)) => Err(DialError::Refused(e)),
            Err(HandshakeError::Io(e)) => Err(DialError::Other(format!("handshake: {e}"))),
        }
    })
    .await;
    match opened {
        Ok(r) => r,
        Err(_) => Err(DialError::Refused(HandshakeError::Refused(
            Refusal::Timeout,
        ))),
    }
}

/// Drains the queue into the connection. Each round takes everything queued (up to
/// `max_batch_bytes`) into one buffer and issues one write for it: under load many frames share
/// a syscall, and an idle link costs nothing. Sends a keep-alive when idle, and watches the read
/// side so that a peer that closed is noticed without waiting for a write to fail.
async fn write_loop<M>(
    shared: &Shared<M>,
    io: BoxStream,
    rx: &mut mpsc::Receiver<Bytes>,
    counters: &FlowCounters,
    peer: NodeId,
    stop: &mut watch::Receiver<bool>,
) -> WriterExit {
    let node = shared.cfg.node_id;
    let max_batch = shared.cfg.max_batch_bytes;
    let keepalive = shared.cfg.keepalive_interval;
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut batch: Vec<Bytes> = Vec::with_capacity(RECV_BATCH);
    let mut out = Batch::new(max_batch);
    let mut probe = [0u8; 64];
    let mut idle_deadline = Instant::now() + keepalive;
    loop {
        let mut frames = 0u64;
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return WriterExit::Done,
            // Checked before the queue: frames taken now would be written into a closed socket.
            r = rd.read(&mut probe) => {
                return WriterExit::Broken(match r {
                    Ok(0) => "peer closed the connection".into(),
                    Ok(_) => "peer sent unexpected data on an outbound connection".into(),
                    Err(e) => format!("read error: {e}"),
                });
            }
            n = rx.recv_many(&mut batch, RECV_BATCH) => {
                if n == 0 {
                    return WriterExit::Done;
                }
                for frame in batch.drain(..) {
                    out.push(frame);
                    frames += 1;
                }
                // Top up with whatever else is already queued, without waiting.
                while out.len() < max_batch {
                    match rx.try_recv() {
                        Ok(frame) => {
                            out.push(frame);
                            frames += 1;
                        }
                        Err(_) => break,
                    }
                }
            }
            _ = tokio::time::sleep_until(idle_deadline) => {
                out.push_keepalive();
            }
        }
        let bytes = out.len() as u64;
        let written = tokio::select! {
            _ = stop.wait_for(|s| *s) => return WriterExit::Done,
            r = out.write_to(&mut wr) => r,
        };
        if let Err(e) = written {
            if frames > 0 {
                m::frames_lost(node, peer, frames);
            }
            return WriterExit::Broken(format!("write error ({frames} frames lost): {e}"));
        }
        counters.frames.increment(frames);
        counters.bytes.increment(bytes);
        idle_deadline = Instant::now() + keepalive;
    }
}

/// Frames at least this large are written from their own buffer (vectored I/O) instead of
/// being copied into the batch buffer.
const ZERO_COPY_FRAME: usize = 2048;
/// Most buffers handed to one `write_vectored` call (Linux's IOV_MAX is 1024).
const MAX_IOVECS: usize = 64;

/// One write batch: small frames are copied into a shared buffer (one segment), large frames are
/// kept as their own segments; everything goes out in as few vectored writes as the kernel takes.
struct Batch {
    small: BytesMut,
    segments: Vec<Bytes>,
    len: usize,
}

impl Batch {
    fn new(max_batch: usize) -> Self {
        Self {
            small: BytesMut::with_capacity(max_batch.min(1 << 20)),
            segments: Vec::new(),
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, frame: Bytes) {
        self.len += frame.len();
        if frame.len() < ZERO_COPY_FRAME {
            self.small.extend_from_slice(&frame);
        } else {
            self.seal_small();
            self.segments.push(frame);
        }
    }

    fn push_keepalive(&mut self) {
        self.len += crate::codec::LENGTH_PREFIX;
        encode_keepalive(&mut self.small);
    }

    /// Ends the current run of small frames as a segment, keeping order with large frames.
    fn seal_small(&mut self) {
        if !self.small.is_empty() {
            self.segments.push(self.small.split().freeze());
        }
    }

    /// Writes every segment, in order, handling short writes; leaves the batch empty.
    async fn write_to<W: AsyncWrite + Unpin>(&mut self, wr: &mut W) -> std::io::Result<()> {
        self.seal_small();
        let mut first = 0;
        while first < self.segments.len() {
            let slices: Vec<std::io::IoSlice<'_>> = self.segments[first..]
                .iter()
                .take(MAX_IOVECS)
                .map(|b| std::io::IoSlice::new(b))
                .collect();
            let mut n = wr.write_vectored(&slices).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            while n > 0 && first < self.segments.len() {
                let seg = &mut self.segments[first];
                if n >= seg.len() {
                    n -= seg.len();
                    first += 1;
                } else {
                    bytes::Buf::advance(seg, n);
                    n = 0;
                }
            }
        }
        self.segments.clear();
        self.len = 0;
        wr.flush().await
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
    async fn batches_keep_frame_order_across_short_writes_and_segment_kinds() {
        let frames: Vec<Bytes> = [10usize, 3000, 20, 30, 5000, 4096, 1]
            .iter()
            .enumerate()
            .map(|(i, n)| Bytes::from(vec![i as u8; *n]))
            .collect();
        let mut batch = Batch::new(1 << 20);
        let mut expected = Vec::new();
        for f in &frames {
            batch.push(f.clone());
            expected.extend_from_slice(f);
        }
        batch.push_keepalive();
        expected.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(batch.len(), expected.len());
        let mut out = Trickle(Vec::new());
        batch.write_to(&mut out).await.unwrap();
        assert_eq!(out.0, expected);
        assert_eq!(batch.len(), 0);
        // The batch is reusable.
        batch.push(frames[0].clone());
        let mut out = Trickle(Vec::new());
        batch.write_to(&mut out).await.unwrap();
        assert_eq!(out.0, frames[0].to_vec());
    }

    #[test]
    fn backoff_is_bounded_by_the_cap_and_grows() {
        let mut cfg = TransportConfig::new(1, "c", "127.0.0.1:0".parse().unwrap());
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
