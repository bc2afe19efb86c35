//! [`PeerLink`]: the sending half of one peer's bounded outbound queue, and the queue itself.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use metrics::Counter;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;

use crate::codec::{encode_frame_into, CodecError, LENGTH_PREFIX};
use crate::NodeId;

/// Why [`PeerLink::try_send`] did not queue a message; the message is handed back.
#[derive(thiserror::Error)]
pub enum TrySendError<M> {
    /// The queue holds `max_queue_size` messages: slow down (pause replication, answer 503).
    #[error("peer queue is full")]
    Full(M),
    /// The link is shut down (transport stopped or peer removed).
    #[error("peer link is closed")]
    Closed(M),
    /// The message cannot be framed (too large for `max_frame_size`, or not serialisable).
    #[error("message cannot be encoded: {1}")]
    Encode(M, CodecError),
}

/// Why [`PeerLink::send`] did not queue a message; the message is handed back.
#[derive(thiserror::Error)]
pub enum SendError<M> {
    /// The link is shut down (transport stopped or peer removed).
    #[error("peer link is closed")]
    Closed(M),
    /// The message cannot be framed (too large for `max_frame_size`, or not serialisable).
    #[error("message cannot be encoded: {1}")]
    Encode(M, CodecError),
}

// Manual Debug impls: the message type need not be Debug to report why it was refused.
impl<M> fmt::Debug for TrySendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Closed(_) => f.write_str("Closed(..)"),
            TrySendError::Encode(_, e) => write!(f, "Encode(.., {e:?})"),
        }
    }
}

impl<M> fmt::Debug for SendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed(_) => f.write_str("Closed(..)"),
            SendError::Encode(_, e) => write!(f, "Encode(.., {e:?})"),
        }
    }
}

impl<M> TrySendError<M> {
    /// The message that was not sent.
    pub fn into_inner(self) -> M {
        match self {
            TrySendError::Full(m) | TrySendError::Closed(m) | TrySendError::Encode(m, _) => m,
        }
    }
}

impl<M> SendError<M> {
    /// The message that was not sent.
    pub fn into_inner(self) -> M {
        match self {
            SendError::Closed(m) | SendError::Encode(m, _) => m,
        }
    }
}

struct LinkInfo {
    peer: NodeId,
    queue_full: Counter,
}

/// One peer's outbound queue: encoded frames back to back in one buffer. Senders encode straight
/// into it (no buffer per message); the writer swaps the whole buffer out in one step, so a
/// batch costs one lock and one wake-up however many messages it holds.
pub(crate) struct Queue {
    inner: Mutex<Inner>,
    /// Wakes the writer, only when it said it was waiting (not once per message).
    ready: Notify,
    /// Wakes senders waiting in `send` for room (or for the queue to close).
    space: Notify,
    max_frames: usize,
    /// Most encoded bytes the queue holds (finding 13: a frame count alone lets 5000 frames of
    /// up to `max_frame_size` each pin gigabytes). A message that would take the queue over
    /// this is refused as `Full`, except into an empty queue (so a frame up to
    /// `max_frame_size` always fits eventually).
    max_bytes: usize,
    max_frame_size: usize,
}

struct Inner {
    buf: BytesMut,
    frames: usize,
    /// The receiving side is gone: nothing will ever be sent.
    closed: bool,
    /// The writer found the queue empty and waits on `ready`.
    writer_waiting: bool,
    /// Live `PeerLink` clones; the receiver sees the end of the queue when it drops to 0.
    senders: usize,
}

/// The receiving end of a [`Queue`] (the transport's driver, or the in-memory network).
pub(crate) struct QueueReceiver {
    queue: Arc<Queue>,
}

impl QueueReceiver {
    /// Waits until frames are queued and moves all of them to the end of `out` (swapping
    /// buffers when `out` is empty, so its capacity is reused by the queue; copying otherwise).
    /// Returns how many frames were taken, or 0 once every sender is gone and nothing is left.
    /// Cancel-safe.
    pub(crate) async fn take(&mut self, out: &mut BytesMut) -> usize {
        loop {
            let notified = self.queue.ready.notified();
            {
                let mut q = self.queue.inner.lock();
                if q.frames > 0 {
                    if out.is_empty() {
                        std::mem::swap(out, &mut q.buf);
                    } else {
                        out.extend_from_slice(&q.buf);
                        q.buf.clear();
                    }
                    let n = std::mem::take(&mut q.frames);
                    drop(q);
                    // Senders waiting for room may have seen the queue full by frames or by
                    // bytes: wake them (cheap when nobody waits).
                    self.queue.space.notify_waiters();
                    return n;
                }
                if q.senders == 0 {
                    return 0;
                }
                q.writer_waiting = true;
            }
            notified.await;
        }
    }

    /// Waits for the next single frame (length prefix included), or `None` once every sender
    /// is gone and nothing is left. Used by the in-memory network, which handles each message
    /// on its own.
    pub(crate) async fn recv_frame(&mut self) -> Option<Bytes> {
        loop {
            let notified = self.queue.ready.notified();
            {
                let mut q = self.queue.inner.lock();
                if q.frames > 0 {
                    let mut prefix = [0u8; LENGTH_PREFIX];
                    prefix.copy_from_slice(&q.buf[..LENGTH_PREFIX]);
                    let len = LENGTH_PREFIX + u32::from_be_bytes(prefix) as usize;
                    let frame = q.buf.split_to(len).freeze();
                    let was_full = q.frames >= self.queue.max_frames
                        || q.buf.len() + len > self.queue.max_bytes;
                    q.frames -= 1;
                    drop(q);
                    if was_full {
                        self.queue.space.notify_waiters();
                    }
                    return Some(frame);
                }
                if q.senders == 0 {
                    return None;
                }
                q.writer_waiting = true;
            }
            notified.await;
        }
    }

    /// Frames waiting in the queue.
    pub(crate) fn len(&self) -> usize {
        self.queue.inner.lock().frames
    }

    /// Live `PeerLink` clones feeding this queue.
    pub(crate) fn sender_count(&self) -> usize {
        self.queue.inner.lock().senders
    }
}

impl Drop for QueueReceiver {
    fn drop(&mut self) {
        let mut q = self.queue.inner.lock();
        q.closed = true;
        q.buf = BytesMut::new();
        q.frames = 0;
        drop(q);
        self.queue.space.notify_waiters();
    }
}

/// The sending side of one remote node's bounded outbound queue. Cheap to clone; all clones feed
/// the same queue, drained by one writer (a TCP connection, or the in-memory network).
///
/// Messages are encoded into frames by the caller, straight into the queue's buffer, so the queue
/// holds at most `max_queue_size` frames and at most `max_queue_bytes` bytes (one frame of up to
/// `max_frame_size` is always admitted into an empty queue): that, plus the batch the writer is
/// writing (at most as much again), bounds the memory a stalled peer can pin.
pub struct PeerLink<M> {
    info: Arc<LinkInfo>,
    queue: Arc<Queue>,
    _msg: PhantomData<fn(M)>,
}

impl<M> Clone for PeerLink<M> {
    fn clone(&self) -> Self {
        self.queue.inner.lock().senders += 1;
        Self {
            info: Arc::clone(&self.info),
            queue: Arc::clone(&self.queue),
            _msg: PhantomData,
        }
    }
}

impl<M> Drop for PeerLink<M> {
    fn drop(&mut self) {
        let mut q = self.queue.inner.lock();
        q.senders -= 1;
        let last = q.senders == 0;
        drop(q);
        if last {
            // The receiver may be waiting: let it see the end of the queue.
            self.queue.ready.notify_one();
        }
    }
}

impl<M> fmt::Debug for PeerLink<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerLink")
            .field("peer", &self.info.peer)
            .field("queued", &self.queued())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Why `PeerLink::push` did not queue.
enum PushError {
    Full,
    Closed,
    Encode(CodecError),
}

impl<M: Serialize> PeerLink<M> {
    /// A link and the receiving end of its queue.
    pub(crate) fn channel(
        node: NodeId,
        peer: NodeId,
        max_queue_size: usize,
        max_queue_bytes: usize,
        max_frame_size: usize,
    ) -> (Self, QueueReceiver) {
        let queue = Arc::new(Queue {
            inner: Mutex::new(Inner {
                buf: BytesMut::new(),
                frames: 0,
                closed: false,
                writer_waiting: false,
                senders: 1,
            }),
            ready: Notify::new(),
            space: Notify::new(),
            max_frames: max_queue_size.max(1),
            max_bytes: max_queue_bytes.max(1),
            max_frame_size,
        });
        let info = Arc::new(LinkInfo {
            peer,
            queue_full: crate::metrics::queue_full(node, peer),
        });
        (
            Self {
                info,
                queue: Arc::clone(&queue),
                _msg: PhantomData,
            },
            QueueReceiver { queue },
        )
    }

    /// The remote node this link sends to.
    pub fn peer(&self) -> NodeId {
        self.info.peer
    }

    /// Encodes `msg` into the queue if there is room. The room check comes first, so a full
    /// queue costs no serialisation.
    fn push(&self, msg: &M) -> Result<(), PushError> {
        let mut q = self.queue.inner.lock();
        if q.closed {
            return Err(PushError::Closed);
        }
        if q.frames >= self.queue.max_frames || q.buf.len() >= self.queue.max_bytes {
            return Err(PushError::Full);
        }
        let before = q.buf.len();
        encode_frame_into(msg, self.queue.max_frame_size, &mut q.buf).map_err(PushError::Encode)?;
        if before > 0 && q.buf.len() > self.queue.max_bytes {
            // Over the byte bound: take it back out (the size is only known once encoded).
            q.buf.truncate(before);
            return Err(PushError::Full);
        }
        q.frames += 1;
        let wake = std::mem::take(&mut q.writer_waiting);
        drop(q);
        if wake {
            self.queue.ready.notify_one();
        }
        Ok(())
    }

    /// Queues `msg` if there is room, without waiting. On `Full` the caller decides: retry
    /// later, drop, or push back on its own client. A queued message is sent once the peer is
    /// reachable; queued messages are sent in order.
    pub fn try_send(&self, msg: M) -> Result<(), TrySendError<M>> {
        match self.push(&msg) {
            Ok(()) => Ok(()),
            Err(PushError::Full) => {
                self.info.queue_full.increment(1);
                Err(TrySendError::Full(msg))
            }
            Err(PushError::Closed) => Err(TrySendError::Closed(msg)),
            Err(PushError::Encode(e)) => Err(TrySendError::Encode(msg, e)),
        }
    }

    /// Queues `msg`, waiting for room if the queue is full.
    pub async fn send(&self, msg: M) -> Result<(), SendError<M>> {
        loop {
            // Fast path: no waiter registration while there is room.
            match self.push(&msg) {
                Ok(()) => return Ok(()),
                Err(PushError::Closed) => return Err(SendError::Closed(msg)),
                Err(PushError::Encode(e)) => return Err(SendError::Encode(msg, e)),
                Err(PushError::Full) => {}
            }
            // Registered before checking again, so a writer emptying the queue in between
            // wakes us.
            let notified = self.queue.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.push(&msg) {
                Ok(()) => return Ok(()),
                Err(PushError::Closed) => return Err(SendError::Closed(msg)),
                Err(PushError::Encode(e)) => return Err(SendError::Encode(msg, e)),
                Err(PushError::Full) => notified.await,
            }
        }
    }
}

impl<M> PeerLink<M> {
    /// Messages currently waiting in the queue (not counting the batch being written).
    pub fn queued(&self) -> usize {
        self.queue.inner.lock().frames
    }

    /// The queue's capacity (`max_queue_size`).
    pub fn max_queued(&self) -> usize {
        self.queue.max_frames
    }

    /// Bytes currently waiting in the queue (encoded frames, prefixes included).
    pub fn queued_bytes(&self) -> usize {
        self.queue.inner.lock().buf.len()
    }

    /// Whether the writer behind this link has stopped for good.
    pub fn is_closed(&self) -> bool {
        self.queue.inner.lock().closed
    }
}
