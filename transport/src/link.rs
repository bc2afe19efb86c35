//! [`PeerLink`]: the sending half of one peer's bounded outbound queue, and the queue itself.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use metrics::Counter;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::futures::Notified;
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
    ///
    /// Like any future, it does nothing until polled. It returns a small hand-written future
    /// ([`Sending`]) rather than an `async fn` state machine: the `async fn` kept tokio's
    /// `Notified` (its waiter registration) inline, so every call built and moved a 216-byte
    /// future even when the queue had room, two `memcpy` calls per message that showed as ~5 %
    /// of the CPU in the 64-byte benchmark (docs/transport.md, 2026-12-07 second pass). The
    /// registration now lives in a box made only when the queue is full.
    pub fn send(&self, msg: M) -> Sending<'_, M> {
        Sending {
            link: self,
            msg: Some(msg),
            waiting: None,
        }
    }
}

/// The future returned by [`PeerLink::send`]: resolves once `msg` is queued (or refused).
///
/// Dropping it before it resolves drops the message unsent. Polling it again after it resolved
/// panics, as polling a finished `async fn` future does.
#[must_use = "futures do nothing unless polled"]
pub struct Sending<'a, M> {
    link: &'a PeerLink<M>,
    /// The message, until it is queued or handed back.
    msg: Option<M>,
    /// Registered for a wake-up from the writer while the queue is full.
    waiting: Option<Pin<Box<Notified<'a>>>>,
}

// The message is never pinned (it is moved out by value), and the waiter registration is
// pinned in its own box, so the future itself can move freely whatever `M` is.
impl<M> Unpin for Sending<'_, M> {}

impl<M> fmt::Debug for Sending<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sending")
            .field("peer", &self.link.info.peer)
            .field("waiting", &self.waiting.is_some())
            .finish()
    }
}

impl<M: Serialize> Sending<'_, M> {
    /// One attempt to queue the message: `Some` when this send is over, `None` while the queue
    /// is full (the message stays here).
    fn attempt(&mut self) -> Option<Result<(), SendError<M>>> {
        // Polling a completed future is the caller's bug, not something a peer can cause; it
        // panics like a completed `async fn` future does.
        let msg = self
            .msg
            .as_ref()
            .expect("PeerLink::send future polled after it completed");
        let outcome = self.link.push(msg);
        if matches!(outcome, Err(PushError::Full)) {
            return None;
        }
        // Present: checked just above, and only taken here.
        let msg = self.msg.take()?;
        Some(match outcome {
            Ok(()) => Ok(()),
            Err(PushError::Encode(e)) => Err(SendError::Encode(msg, e)),
            Err(PushError::Closed | PushError::Full) => Err(SendError::Closed(msg)),
        })
    }
}

impl<M: Serialize> Future for Sending<'_, M> {
    type Output = Result<(), SendError<M>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            if let Some(waiting) = this.waiting.as_mut() {
                if waiting.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.waiting = None;
            }
            // Fast path: no waiter registration while there is room.
            if let Some(done) = this.attempt() {
                return Poll::Ready(done);
            }
            // Full: register before checking again, so a writer emptying the queue in between
            // wakes us; then wait (the loop polls the registration).
            let mut waiting = Box::pin(this.link.queue.space.notified());
            waiting.as_mut().enable();
            if let Some(done) = this.attempt() {
                return Poll::Ready(done);
            }
            this.waiting = Some(waiting);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    /// Counts wake-ups, so a test can tell that a pending send was woken.
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn link(max_frames: usize) -> (PeerLink<u64>, QueueReceiver) {
        PeerLink::channel(NodeId::new(1), NodeId::new(2), max_frames, 1 << 20, 64)
    }

    fn poll_once<F: Future + Unpin>(fut: &mut F, waker: &Waker) -> Poll<F::Output> {
        Pin::new(fut).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn send_with_room_completes_on_first_poll() {
        let (link, rx) = link(4);
        let mut fut = link.send(7);
        assert!(matches!(
            poll_once(&mut fut, Waker::noop()),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(rx.len(), 1);
    }

    #[test]
    fn send_is_lazy_until_polled() {
        let (link, rx) = link(4);
        let fut = link.send(7);
        assert_eq!(rx.len(), 0, "nothing is queued before the first poll");
        drop(fut);
        assert_eq!(rx.len(), 0, "a send dropped unpolled queues nothing");
    }

    #[tokio::test]
    async fn send_waits_while_full_and_is_woken_when_the_writer_drains() {
        let (link, mut rx) = link(1);
        link.try_send(1)
            .unwrap_or_else(|e| panic!("room for one: {e:?}"));
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let mut fut = link.send(2);
        assert!(poll_once(&mut fut, &waker).is_pending());
        assert!(poll_once(&mut fut, &waker).is_pending(), "still full");
        let mut out = BytesMut::new();
        assert_eq!(rx.take(&mut out).await, 1);
        assert!(
            counter.0.load(Ordering::SeqCst) >= 1,
            "the drain wakes the sender"
        );
        assert!(matches!(poll_once(&mut fut, &waker), Poll::Ready(Ok(()))));
        assert_eq!(rx.len(), 1);
    }

    #[test]
    fn a_waiting_send_gets_its_message_back_when_the_queue_closes() {
        let (link, rx) = link(1);
        link.try_send(1)
            .unwrap_or_else(|e| panic!("room for one: {e:?}"));
        let mut fut = link.send(2);
        assert!(poll_once(&mut fut, Waker::noop()).is_pending());
        drop(rx);
        match poll_once(&mut fut, Waker::noop()) {
            Poll::Ready(Err(SendError::Closed(m))) => assert_eq!(m, 2),
            other => panic!("expected Closed(2), got {other:?}"),
        }
    }

    #[test]
    fn an_unencodable_message_is_handed_back_by_send() {
        let (link, rx) =
            PeerLink::<Vec<u8>>::channel(NodeId::new(1), NodeId::new(2), 4, 1 << 20, 64);
        let mut fut = link.send(vec![0; 100]);
        match poll_once(&mut fut, Waker::noop()) {
            Poll::Ready(Err(SendError::Encode(m, CodecError::FrameTooLarge { .. }))) => {
                assert_eq!(m.len(), 100)
            }
            other => panic!("expected Encode, got {other:?}"),
        }
        assert_eq!(rx.len(), 0);
    }

    #[test]
    fn the_send_future_is_small() {
        // The point of the hand-written future: the message plus two pointers, not tokio's
        // waiter registration inline (the `async fn` was 216 bytes for a 48-byte message).
        let size = std::mem::size_of::<Sending<'static, [u64; 6]>>();
        assert!(size <= 48 + 3 * 8, "Sending is {size} bytes");
    }
}
