//! [`PeerLink`]: the sending half of one peer's bounded outbound queue.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use metrics::Counter;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::codec::{encode_frame_into, CodecError};
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
    max_frame_size: usize,
    queue_full: Counter,
    /// Size of the last frame encoded on this link: the next buffer starts that big, so a
    /// stream of similar messages is encoded without growing (and copying) the buffer.
    size_hint: AtomicUsize,
}

/// The sending side of one remote node's bounded outbound queue. Cheap to clone; all clones feed
/// the same queue, drained by one writer (a TCP connection, or the in-memory network).
///
/// Messages are encoded into frames by the caller, so the queue holds at most `max_queue_size`
/// frames of at most `max_frame_size` bytes each: that, plus one write batch, bounds the memory a
/// stalled peer can pin.
pub struct PeerLink<M> {
    info: Arc<LinkInfo>,
    tx: mpsc::Sender<Bytes>,
    _msg: PhantomData<fn(M)>,
}

impl<M> Clone for PeerLink<M> {
    fn clone(&self) -> Self {
        Self {
            info: Arc::clone(&self.info),
            tx: self.tx.clone(),
            _msg: PhantomData,
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

impl<M: Serialize> PeerLink<M> {
    /// A link and the receiving end of its queue.
    pub(crate) fn channel(
        node: NodeId,
        peer: NodeId,
        max_queue_size: usize,
        max_frame_size: usize,
    ) -> (Self, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(max_queue_size.max(1));
        let info = Arc::new(LinkInfo {
            peer,
            max_frame_size,
            queue_full: crate::metrics::queue_full(node, peer),
            size_hint: AtomicUsize::new(64),
        });
        (
            Self {
                info,
                tx,
                _msg: PhantomData,
            },
            rx,
        )
    }

    /// The remote node this link sends to.
    pub fn peer(&self) -> NodeId {
        self.info.peer
    }

    /// Queues `msg` if there is room, without waiting. On `Full` the caller decides: retry
    /// later, drop, or push back on its own client. A queued message is sent once the peer is
    /// reachable; queued messages are sent in order.
    pub fn try_send(&self, msg: M) -> Result<(), TrySendError<M>> {
        // Reserve first so that a full queue costs no serialisation.
        let permit = match self.tx.try_reserve() {
            Ok(p) => p,
            Err(mpsc::error::TrySendError::Full(())) => {
                self.info.queue_full.increment(1);
                return Err(TrySendError::Full(msg));
            }
            Err(mpsc::error::TrySendError::Closed(())) => return Err(TrySendError::Closed(msg)),
        };
        match self.encode(&msg) {
            Ok(frame) => {
                permit.send(frame);
                Ok(())
            }
            Err(e) => Err(TrySendError::Encode(msg, e)),
        }
    }

    /// Queues `msg`, waiting for room if the queue is full.
    pub async fn send(&self, msg: M) -> Result<(), SendError<M>> {
        // The fast path skips the semaphore's acquire future when there is room.
        let permit = match self.tx.try_reserve() {
            Ok(p) => p,
            Err(mpsc::error::TrySendError::Closed(())) => return Err(SendError::Closed(msg)),
            Err(mpsc::error::TrySendError::Full(())) => match self.tx.reserve().await {
                Ok(p) => p,
                Err(_) => return Err(SendError::Closed(msg)),
            },
        };
        match self.encode(&msg) {
            Ok(frame) => {
                permit.send(frame);
                Ok(())
            }
            Err(e) => Err(SendError::Encode(msg, e)),
        }
    }

    fn encode(&self, msg: &M) -> Result<Bytes, CodecError> {
        let hint = self.info.size_hint.load(Ordering::Relaxed);
        let mut buf = BytesMut::with_capacity(hint.max(64).min(self.info.max_frame_size + 4));
        encode_frame_into(msg, self.info.max_frame_size, &mut buf)?;
        self.info.size_hint.store(buf.len(), Ordering::Relaxed);
        Ok(buf.freeze())
    }
}

impl<M> PeerLink<M> {
    /// Messages currently waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The queue's capacity (`max_queue_size`).
    pub fn max_queued(&self) -> usize {
        self.tx.max_capacity()
    }

    /// Whether the writer behind this link has stopped for good.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}
