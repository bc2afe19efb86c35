//! Batched delivery into an actor: many messages, one actix envelope, one wake-up.
//!
//! actix boxes every message in its own envelope (`Box<dyn EnvelopeProxy>`) and, when the
//! receiver lives on another arbiter, may wake that arbiter's thread for each of them. For
//! hot paths that carry many small messages to one actor (log entries to the log store,
//! applied entries to the state machine, frames from a connection) that per-message cost
//! dominates. A [`BatchSender`] instead pushes messages into a shared buffer and sends the
//! actor a single [`Batch`] notification when the buffer goes from empty to non-empty. The
//! actor's `Handler<Batch<M>>` drains every message queued so far with [`Batch::drain_each`]
//! (or [`Batch::drain_into`]); producers that push while that notification is in flight ride
//! along for free. A burst of N messages therefore costs N slot writes under an uncontended
//! lock plus one actix envelope and at most one cross-thread wake-up.
//!
//! The buffer is a list of fixed-size chunks (about 8 KiB of messages each). Producers fill
//! the tail chunk; a full chunk is retired with a pointer move and replaced by an empty one
//! from a small pool. The receiver takes every chunk at once (pointer swaps under the lock),
//! consumes them outside the lock and hands the emptied chunks back to the pool. Nothing is
//! ever reallocated or copied under the lock, however far the receiver falls behind, and in
//! the steady state no memory is allocated (so no fresh pages are faulted in) at all; while
//! the receiver is behind, the only thing that grows under the lock is the list of chunk
//! pointers (one entry per chunk of hundreds of messages). The lock is only ever held for a
//! few instructions, so a holder preempted by the scheduler,
//! which makes the other side park on the lock, is rare.
//!
//! Ordering: messages from one producer arrive in the order it sent them (they share one
//! buffer). Capacity: [`BatchSender::try_send`] refuses once `capacity` messages are waiting
//! (a bounded mailbox); [`BatchSender::do_send`] ignores the bound, like actix's `do_send`.
//!
//! ```
//! use actix::prelude::*;
//! use conclave_actors::mailbox::{batch_sender, Batch};
//!
//! struct Sum { total: u64, buf: Vec<u64> }
//! impl Actor for Sum { type Context = Context<Self>; }
//! impl Handler<Batch<u64>> for Sum {
//!     type Result = ();
//!     fn handle(&mut self, batch: Batch<u64>, _: &mut Context<Self>) {
//!         batch.drain_into(&mut self.buf);
//!         self.total += self.buf.drain(..).sum::<u64>();
//!     }
//! }
//!
//! System::new().block_on(async {
//!     let addr = Sum { total: 0, buf: Vec::new() }.start();
//!     let tx = batch_sender(addr.clone().recipient(), None);
//!     for i in 1..=100 {
//!         tx.do_send(i).unwrap();
//!     }
//! });
//! ```

use actix::{Message, Recipient};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How often (in queued messages) a sender whose notification is still pending checks that
/// the receiver is alive, so a stopped actor does not let an unbounded buffer grow forever.
const LIVENESS_CHECK_EVERY: usize = 1024;

/// Bytes of messages per chunk. Small enough to stay in cache and to come from the
/// allocator's ordinary bins (not `mmap`), large enough that the per-chunk work (a pointer
/// push under the lock, one pool pop) is amortised over hundreds of small messages.
const CHUNK_BYTES: usize = 8 * 1024;

/// Emptied chunks a mailbox keeps for reuse. Bounds what an idle mailbox holds after a
/// burst (`POOL_MAX * CHUNK_BYTES`, 128 KiB) while covering the producer's needs between
/// two drains in the steady state.
const POOL_MAX: usize = 16;

/// Rounds of taking one [`Batch`] handler call may do: messages sent while the receiver
/// consumes one round are taken in the next without another notification (no envelope, no
/// wake-up), and the bound keeps a producer that never stops from starving the actor's
/// other messages.
const DRAIN_ROUNDS: usize = 4;

/// Messages per chunk for messages of type `M`: `CHUNK_BYTES` worth, at least 16, at most
/// 4096.
const fn chunk_len<M>() -> usize {
    let size = std::mem::size_of::<M>();
    if size == 0 {
        return 4096;
    }
    let n = CHUNK_BYTES / size;
    if n < 16 {
        16
    } else if n > 4096 {
        4096
    } else {
        n
    }
}

/// Why a message was not queued.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchSendError<M> {
    /// `capacity` messages are already waiting; the message is handed back.
    #[error("mailbox full")]
    Full(M),
    /// The receiving actor has stopped; the message is handed back. Messages it had not
    /// drained yet are dropped, as actix drops a stopped actor's mailbox.
    #[error("receiver stopped")]
    Closed(M),
}

impl<M> BatchSendError<M> {
    /// The message that was not queued.
    pub fn into_inner(self) -> M {
        match self {
            BatchSendError::Full(m) | BatchSendError::Closed(m) => m,
        }
    }
}

/// The producers' side of the mailbox, guarded by one lock. Every operation under the lock
/// is a slot write or a pointer move: messages are never copied or reallocated under it, so
/// a holder preempted by the scheduler is rare and short.
struct Queue<M> {
    /// The chunk producers write into: `capacity() == chunk_len::<M>()` once allocated
    /// (capacity 0 before the first push after a drain found the pool empty).
    tail: Vec<M>,
    /// Filled chunks, oldest first.
    full: Vec<Vec<M>>,
    /// Empty chunks of `chunk_len::<M>()` slots, ready to become the next `tail`.
    pool: Vec<Vec<M>>,
    /// Messages in `full` and `tail`.
    len: usize,
    /// A [`Batch`] notification is on its way to the receiver and has not drained yet.
    scheduled: bool,
    /// The receiver was found stopped.
    closed: bool,
}

impl<M> Queue<M> {
    #[inline]
    fn push(&mut self, msg: M) {
        if self.tail.len() == self.tail.capacity() {
            self.next_chunk();
        }
        // Never reallocates: `tail` has a free slot.
        self.tail.push(msg);
        self.len += 1;
    }

    /// Retires the filled (or never allocated) tail and installs an empty chunk, from the
    /// pool when it has one.
    #[cold]
    fn next_chunk(&mut self) {
        let fresh = self
            .pool
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(chunk_len::<M>()));
        let filled = std::mem::replace(&mut self.tail, fresh);
        if !filled.is_empty() {
            self.full.push(filled);
        }
    }
}

/// A list of chunks, oldest first.
type Chunks<M> = Vec<Vec<M>>;

struct Shared<M> {
    queue: Mutex<Queue<M>>,
    /// `queue.len`, written under the lock and read without it: a full bounded mailbox
    /// refuses `try_send` with one atomic load, without touching the lock the receiver
    /// needs to drain it. A load that sees `>= capacity` saw a moment when the mailbox was
    /// full, so refusing is correct even if a drain follows immediately.
    len: AtomicUsize,
    /// `None`: unbounded.
    capacity: Option<usize>,
    /// The receiver's two chunk lists, kept between drains so that draining allocates
    /// nothing: an empty one swapped with `Queue::full` on every take, and one that carries
    /// the emptied chunks back to the pool. Only the receiver locks it.
    spare: Mutex<(Chunks<M>, Chunks<M>)>,
}

impl<M> Shared<M> {
    /// Under one lock: hands the previous round's emptied chunks (`done`) back to the pool
    /// (up to `POOL_MAX`; the caller frees the rest outside the lock), takes every waiting
    /// chunk (oldest first) in place of `spare` (an empty list), and decides who looks at
    /// the mailbox next. When nothing was waiting, or on the `last` round, the notification
    /// is re-armed (`scheduled = false`: the next send notifies the receiver); otherwise it
    /// stays pending because the receiver will take again after this round, so producers
    /// that send meanwhile pay for no notification.
    fn take(&self, done: &mut Vec<Vec<M>>, spare: Vec<Vec<M>>, last: bool) -> Vec<Vec<M>> {
        let mut q = self.queue.lock();
        while q.pool.len() < POOL_MAX {
            match done.pop() {
                Some(c) => {
                    debug_assert!(c.is_empty());
                    q.pool.push(c);
                }
                None => break,
            }
        }
        let mut chunks = std::mem::replace(&mut q.full, spare);
        if !q.tail.is_empty() {
            // With an empty pool the next push allocates a chunk (`Queue::next_chunk`).
            let fresh = q.pool.pop().unwrap_or_default();
            let tail = std::mem::replace(&mut q.tail, fresh);
            // A pointer move: `chunks` (the old `full`) keeps its capacity from drain to
            // drain, so this rarely allocates.
            chunks.push(tail);
        }
        q.len = 0;
        self.len.store(0, Ordering::Release);
        if chunks.is_empty() || last {
            // Later sends schedule a new notification.
            q.scheduled = false;
        }
        chunks
    }

    /// Takes and consumes rounds of chunks with `consume` (which must empty every chunk it
    /// is given), up to `DRAIN_ROUNDS` rounds or until a round finds nothing, recycling the
    /// emptied chunks. The lock is held only inside `take`, never while `consume` runs.
    fn drain_rounds(&self, mut consume: impl FnMut(&mut Vec<M>)) {
        /// If `consume` panics between rounds the notification may still be pending with
        /// nobody left to take: re-arm it so the next send notifies (as a single take did).
        struct RearmOnPanic<'a, M>(&'a Shared<M>);
        impl<M> Drop for RearmOnPanic<'_, M> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.queue.lock().scheduled = false;
                }
            }
        }
        let _rearm = RearmOnPanic(self);
        let mut lists = self.spare.lock();
        let (mut spare, mut done) = std::mem::take(&mut *lists);
        for round in 1..=DRAIN_ROUNDS {
            let mut chunks = self.take(&mut done, spare, round == DRAIN_ROUNDS);
            // Chunks beyond the pool's bound are freed here, outside the lock.
            done.clear();
            if chunks.is_empty() {
                spare = chunks;
                break;
            }
            for chunk in chunks.iter_mut() {
                consume(chunk);
                debug_assert!(chunk.is_empty());
            }
            spare = std::mem::replace(&mut done, chunks);
        }
        if !done.is_empty() {
            let mut q = self.queue.lock();
            while q.pool.len() < POOL_MAX {
                match done.pop() {
                    Some(c) => q.pool.push(c),
                    None => break,
                }
            }
        }
        done.clear();
        *lists = (spare, done);
    }
}

/// The notification an actor receives: "messages are waiting". Drain them with
/// [`Batch::drain_each`] or [`Batch::drain_into`]; one notification may carry any number of
/// messages, including none when an earlier notification already drained them.
pub struct Batch<M: Send + 'static> {
    shared: Arc<Shared<M>>,
}

impl<M: Send + 'static> Message for Batch<M> {
    type Result = ();
}

impl<M: Send + 'static> Batch<M> {
    /// Hands every waiting message, in send order, to `f`, straight out of the mailbox's
    /// chunks (no copy), and recycles the emptied chunks for the producers. The lock is held
    /// only to take the chunks and to return them, never while `f` runs. Messages sent while
    /// `f` runs are taken too, in further rounds (up to `DRAIN_ROUNDS`, so other messages to
    /// the actor are not starved by a producer that never stops), without a new
    /// notification; whatever arrives after the last round is announced by a new one.
    pub fn drain_each(&self, mut f: impl FnMut(M)) {
        self.shared.drain_rounds(|chunk| {
            for m in chunk.drain(..) {
                f(m);
            }
        });
    }

    /// Moves every waiting message, in send order, to the end of `out` (a copy per message;
    /// [`Batch::drain_each`] avoids it, and keeps no buffer as large as the burst). Takes
    /// rounds like [`Batch::drain_each`].
    pub fn drain_into(&self, out: &mut Vec<M>) {
        self.shared.drain_rounds(|chunk| out.append(chunk));
    }
}

/// The sending side of a batched mailbox; cheap to clone and usable from any thread.
pub struct BatchSender<M: Send + 'static> {
    shared: Arc<Shared<M>>,
    wake: Recipient<Batch<M>>,
}

impl<M: Send + 'static> Clone for BatchSender<M> {
    fn clone(&self) -> Self {
        BatchSender {
            shared: Arc::clone(&self.shared),
            wake: self.wake.clone(),
        }
    }
}

impl<M: Send + 'static> std::fmt::Debug for BatchSender<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchSender")
            .field("capacity", &self.shared.capacity)
            .field("len", &self.len())
            .finish()
    }
}

/// A batched mailbox delivering to `receiver` (an actor implementing `Handler<Batch<M>>`).
/// `capacity` bounds [`BatchSender::try_send`]; `None` means unbounded. Every clone of the
/// returned sender feeds the same buffer; create one sender per receiving actor.
pub fn batch_sender<M: Send + 'static>(
    receiver: Recipient<Batch<M>>,
    capacity: Option<usize>,
) -> BatchSender<M> {
    BatchSender {
        shared: Arc::new(Shared {
            queue: Mutex::new(Queue {
                tail: Vec::new(),
                full: Vec::new(),
                pool: Vec::new(),
                len: 0,
                scheduled: false,
                closed: false,
            }),
            len: AtomicUsize::new(0),
            capacity,
            spare: Mutex::new((Vec::new(), Vec::new())),
        }),
        wake: receiver,
    }
}

impl<M: Send + 'static> BatchSender<M> {
    /// Queues `msg` regardless of the capacity (like actix's `do_send`). Fails only when
    /// the receiver has stopped.
    #[inline]
    pub fn do_send(&self, msg: M) -> Result<(), BatchSendError<M>> {
        self.push(msg, false)
    }

    /// Queues `msg` unless `capacity` messages are already waiting.
    #[inline]
    pub fn try_send(&self, msg: M) -> Result<(), BatchSendError<M>> {
        // Fast refusal without the lock and without a call (see `Shared::len`): a full
        // mailbox under pressure answers this millions of times a second.
        if let Some(cap) = self.shared.capacity {
            if self.shared.len.load(Ordering::Acquire) >= cap {
                return Err(BatchSendError::Full(msg));
            }
        }
        self.push(msg, true)
    }

    /// Queues every message of `msgs` under one lock and at most one notification,
    /// regardless of the capacity. Fails (dropping the messages) when the receiver has stopped.
    pub fn do_send_all(&self, msgs: impl IntoIterator<Item = M>) -> Result<(), BatchSendError<()>> {
        let notify = {
            let mut q = self.shared.queue.lock();
            if q.closed {
                return Err(BatchSendError::Closed(()));
            }
            let before = q.len;
            for m in msgs {
                q.push(m);
            }
            self.shared.len.store(q.len, Ordering::Release);
            let notify = !q.scheduled && q.len > before;
            q.scheduled |= notify;
            notify
        };
        if notify {
            self.notify().map_err(|_| BatchSendError::Closed(()))?;
        }
        Ok(())
    }

    /// Messages waiting to be drained (the mailbox depth).
    pub fn len(&self) -> usize {
        self.shared.len.load(Ordering::Acquire)
    }

    /// Whether no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bound [`BatchSender::try_send`] enforces, if any.
    pub fn capacity(&self) -> Option<usize> {
        self.shared.capacity
    }

    #[inline]
    fn push(&self, msg: M, bounded: bool) -> Result<(), BatchSendError<M>> {
        let cap = if bounded { self.shared.capacity } else { None };
        let (notify, check_alive) = {
            let mut q = self.shared.queue.lock();
            if q.closed {
                return Err(BatchSendError::Closed(msg));
            }
            if cap.is_some_and(|cap| q.len >= cap) {
                return Err(BatchSendError::Full(msg));
            }
            q.push(msg);
            self.shared.len.store(q.len, Ordering::Release);
            let notify = !q.scheduled;
            q.scheduled = true;
            (notify, !notify && q.len % LIVENESS_CHECK_EVERY == 0)
        };
        if notify {
            // The message is queued: if the receiver is gone it is dropped with the rest,
            // and the caller learns that the mailbox is closed from the next send.
            let _ = self.notify();
        } else if check_alive && !self.wake.connected() {
            self.close();
        }
        Ok(())
    }

    /// Sends the receiver one [`Batch`] notification, or marks the mailbox closed when the
    /// receiver has stopped.
    fn notify(&self) -> Result<(), ()> {
        if !self.wake.connected() {
            self.close();
            return Err(());
        }
        self.wake.do_send(Batch {
            shared: Arc::clone(&self.shared),
        });
        Ok(())
    }

    fn close(&self) {
        // Drop the messages outside the lock: their destructors may be arbitrary.
        let (tail, full) = {
            let mut q = self.shared.queue.lock();
            q.closed = true;
            q.len = 0;
            self.shared.len.store(0, Ordering::Release);
            (std::mem::take(&mut q.tail), std::mem::take(&mut q.full))
        };
        drop(tail);
        drop(full);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use actix::prelude::*;
    use std::sync::mpsc;

    struct Collect {
        /// Drain with `drain_each` instead of `drain_into`.
        each: bool,
        buf: Vec<u64>,
        seen: Vec<u64>,
        batches: usize,
        done_at: usize,
        done: Option<mpsc::Sender<(Vec<u64>, usize)>>,
    }
    impl Actor for Collect {
        type Context = Context<Self>;
    }
    impl Handler<Batch<u64>> for Collect {
        type Result = ();
        fn handle(&mut self, b: Batch<u64>, _: &mut Context<Self>) {
            self.batches += 1;
            if self.each {
                let seen = &mut self.seen;
                b.drain_each(|m| seen.push(m));
            } else {
                b.drain_into(&mut self.buf);
                self.seen.append(&mut self.buf);
            }
            if self.seen.len() >= self.done_at {
                if let Some(tx) = self.done.take() {
                    let _ = tx.send((std::mem::take(&mut self.seen), self.batches));
                }
            }
        }
    }

    fn collector(done_at: usize, tx: mpsc::Sender<(Vec<u64>, usize)>) -> Collect {
        Collect {
            each: false,
            buf: Vec::new(),
            seen: Vec::new(),
            batches: 0,
            done_at,
            done: Some(tx),
        }
    }

    #[test]
    fn a_burst_arrives_in_order_in_one_batch() {
        let (tx, rx) = mpsc::channel();
        System::new().block_on(async move {
            let addr = collector(1000, tx).start();
            let s = batch_sender(addr.recipient(), None);
            for i in 0..1000 {
                s.do_send(i).unwrap();
            }
            // The whole burst was queued before the actor ran: one notification.
            assert_eq!(s.len(), 1000);
            actix::clock::sleep(std::time::Duration::from_millis(20)).await;
        });
        let (seen, batches) = rx.recv().unwrap();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        assert_eq!(batches, 1);
    }

    #[test]
    fn cross_thread_producers_keep_their_own_order() {
        let (tx, rx) = mpsc::channel();
        let sys = System::new();
        let arbiter = Arbiter::new();
        let (stx, srx) = mpsc::channel();
        arbiter.spawn(async move {
            let addr = collector(4000, tx).start();
            stx.send(batch_sender(addr.recipient(), None)).unwrap();
        });
        let sender = srx.recv().unwrap();
        let producers: Vec<_> = (0..4u64)
            .map(|p| {
                let s = sender.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        s.do_send(p * 1_000_000 + i).unwrap();
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        let (seen, _) = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert_eq!(seen.len(), 4000);
        for p in 0..4u64 {
            let mine: Vec<u64> = seen
                .iter()
                .copied()
                .filter(|v| v / 1_000_000 == p)
                .collect();
            assert_eq!(
                mine,
                (0..1000).map(|i| p * 1_000_000 + i).collect::<Vec<_>>()
            );
        }
        arbiter.stop();
        drop(sys);
    }

    #[test]
    fn try_send_refuses_beyond_capacity_and_hands_the_message_back() {
        let (tx, _rx) = mpsc::channel();
        System::new().block_on(async move {
            let addr = collector(usize::MAX, tx).start();
            let s = batch_sender(addr.recipient(), Some(3));
            for i in 0..3 {
                s.try_send(i).unwrap();
            }
            assert_eq!(s.try_send(9), Err(BatchSendError::Full(9)));
            // do_send ignores the bound.
            s.do_send(10).unwrap();
            assert_eq!(s.len(), 4);
            actix::clock::sleep(std::time::Duration::from_millis(20)).await;
            // Drained: room again.
            assert!(s.is_empty());
            s.try_send(11).unwrap();
        });
    }

    #[test]
    fn a_stopped_receiver_closes_the_mailbox() {
        struct Stopper;
        impl Actor for Stopper {
            type Context = Context<Self>;
        }
        impl Handler<Batch<u64>> for Stopper {
            type Result = ();
            fn handle(&mut self, b: Batch<u64>, ctx: &mut Context<Self>) {
                b.drain_into(&mut Vec::new());
                ctx.stop();
            }
        }
        System::new().block_on(async {
            let addr = Stopper.start();
            let s = batch_sender(addr.recipient(), None);
            s.do_send(1).unwrap();
            actix::clock::sleep(std::time::Duration::from_millis(20)).await;
            // The next send notices the receiver is gone.
            let _ = s.do_send(2);
            actix::clock::sleep(std::time::Duration::from_millis(20)).await;
            assert_eq!(s.do_send(3), Err(BatchSendError::Closed(3)));
            assert_eq!(s.do_send_all([4, 5]), Err(BatchSendError::Closed(())));
        });
    }

    /// Never drains on its own: the tests below drain by hand through `batch_of`.
    struct Idle;
    impl Actor for Idle {
        type Context = Context<Self>;
    }
    impl Handler<Batch<u64>> for Idle {
        type Result = ();
        fn handle(&mut self, _: Batch<u64>, _: &mut Context<Self>) {}
    }

    fn batch_of(s: &BatchSender<u64>) -> Batch<u64> {
        Batch {
            shared: Arc::clone(&s.shared),
        }
    }

    fn drain_all(s: &BatchSender<u64>) -> Vec<u64> {
        let mut out = Vec::new();
        batch_of(s).drain_each(|m| out.push(m));
        out
    }

    const CHUNK: usize = chunk_len::<u64>();

    #[test]
    fn chunk_length_is_bounded_for_any_message_size() {
        assert_eq!(chunk_len::<u64>(), CHUNK_BYTES / 8);
        assert_eq!(chunk_len::<()>(), 4096);
        assert_eq!(chunk_len::<u8>(), 4096);
        assert_eq!(chunk_len::<[u8; 4096]>(), 16);
    }

    #[test]
    fn messages_cross_chunk_boundaries_in_order() {
        System::new().block_on(async {
            let s = batch_sender(Idle.start().recipient(), None);
            let n = (3 * CHUNK + 5) as u64;
            for i in 0..n {
                s.do_send(i).unwrap();
                assert_eq!(s.len() as u64, i + 1);
            }
            {
                let q = s.shared.queue.lock();
                assert_eq!(q.full.len(), 3);
                assert!(q.full.iter().all(|c| c.len() == CHUNK));
                assert_eq!(q.tail.len(), 5);
            }
            assert_eq!(drain_all(&s), (0..n).collect::<Vec<_>>());
            assert!(s.is_empty());
            // A drain of an empty mailbox yields nothing and changes nothing.
            assert!(drain_all(&s).is_empty());
            // do_send_all across boundaries, then drain_into: same order.
            s.do_send_all(0..n).unwrap();
            assert_eq!(s.len() as u64, n);
            let mut out = vec![u64::MAX];
            batch_of(&s).drain_into(&mut out);
            assert_eq!(out[0], u64::MAX);
            assert_eq!(out[1..], (0..n).collect::<Vec<_>>()[..]);
        });
    }

    #[test]
    fn drained_chunks_are_recycled_and_the_pool_is_bounded() {
        System::new().block_on(async {
            let s = batch_sender(Idle.start().recipient(), None);
            // More chunks than the pool keeps.
            let n = (POOL_MAX + 4) * CHUNK;
            s.do_send_all(0..n as u64).unwrap();
            assert_eq!(drain_all(&s).len(), n);
            let pooled: Vec<*const u64> = {
                let q = s.shared.queue.lock();
                assert_eq!(q.pool.len(), POOL_MAX);
                assert!(q.pool.iter().all(|c| c.is_empty() && c.capacity() >= CHUNK));
                q.pool.iter().map(|c| c.as_ptr()).collect()
            };
            // The next chunks come from the pool: no allocation.
            s.do_send_all(0..(2 * CHUNK + 1) as u64).unwrap();
            {
                let q = s.shared.queue.lock();
                assert_eq!(q.pool.len(), POOL_MAX - 3);
                for c in q.full.iter().chain(std::iter::once(&q.tail)) {
                    assert!(pooled.contains(&c.as_ptr()));
                }
            }
            assert_eq!(
                drain_all(&s),
                (0..(2 * CHUNK + 1) as u64).collect::<Vec<_>>()
            );
            // The drain took the tail and installed a pooled chunk in its place.
            let q = s.shared.queue.lock();
            assert_eq!(q.pool.len(), POOL_MAX - 1);
            assert!(q.tail.is_empty() && pooled.contains(&q.tail.as_ptr()));
        });
    }

    #[test]
    fn partial_tail_drains_interleave_with_sends() {
        System::new().block_on(async {
            let s = batch_sender(Idle.start().recipient(), None);
            let mut got = Vec::new();
            let mut next = 0u64;
            // Drain after sizes that end inside, at and just past a chunk boundary.
            for burst in [1, 5, CHUNK - 6, CHUNK, 1, CHUNK + 1, 2 * CHUNK - 1] {
                for _ in 0..burst {
                    s.do_send(next).unwrap();
                    next += 1;
                }
                assert_eq!(s.len(), burst);
                got.extend(drain_all(&s));
                assert!(s.is_empty());
            }
            assert_eq!(got, (0..next).collect::<Vec<_>>());
        });
    }

    #[test]
    fn capacity_counts_messages_across_chunks() {
        System::new().block_on(async {
            let cap = CHUNK + 3;
            let s = batch_sender(Idle.start().recipient(), Some(cap));
            for i in 0..cap as u64 {
                s.try_send(i).unwrap();
            }
            assert_eq!(s.len(), cap);
            assert_eq!(s.try_send(7), Err(BatchSendError::Full(7)));
            // do_send ignores the bound, and try_send keeps refusing above it.
            s.do_send(8).unwrap();
            assert_eq!(s.len(), cap + 1);
            assert_eq!(s.try_send(9), Err(BatchSendError::Full(9)));
            assert_eq!(drain_all(&s).len(), cap + 1);
            // Room again, to exactly the bound.
            for i in 0..cap as u64 {
                s.try_send(i).unwrap();
            }
            assert_eq!(s.try_send(10), Err(BatchSendError::Full(10)));
        });
    }

    #[test]
    fn many_chunks_from_many_threads_arrive_with_per_producer_order() {
        let (tx, rx) = mpsc::channel();
        let sys = System::new();
        let arbiter = Arbiter::new();
        let (stx, srx) = mpsc::channel();
        let per = 5 * CHUNK as u64 + 17;
        arbiter.spawn(async move {
            let mut c = collector(4 * per as usize, tx);
            c.each = true;
            stx.send(batch_sender(c.start().recipient(), None)).unwrap();
        });
        let sender = srx.recv().unwrap();
        let producers: Vec<_> = (0..4u64)
            .map(|p| {
                let s = sender.clone();
                std::thread::spawn(move || {
                    for i in 0..per {
                        let m = p * 1_000_000 + i;
                        if i % 3 == 0 {
                            s.do_send_all([m]).unwrap();
                        } else {
                            s.do_send(m).unwrap();
                        }
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        let (seen, _) = rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap();
        assert_eq!(seen.len() as u64, 4 * per);
        for p in 0..4u64 {
            let mine: Vec<u64> = seen
                .iter()
                .copied()
                .filter(|v| v / 1_000_000 == p)
                .collect();
            assert_eq!(
                mine,
                (0..per).map(|i| p * 1_000_000 + i).collect::<Vec<_>>()
            );
        }
        arbiter.stop();
        drop(sys);
    }

    /// Counts the notifications it receives and drains nothing.
    struct CountNotes(Arc<AtomicUsize>);
    impl Actor for CountNotes {
        type Context = Context<Self>;
    }
    impl Handler<Batch<u64>> for CountNotes {
        type Result = ();
        fn handle(&mut self, _: Batch<u64>, _: &mut Context<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn messages_sent_while_draining_ride_along_for_a_bounded_number_of_rounds() {
        System::new().block_on(async {
            let notes = Arc::new(AtomicUsize::new(0));
            let s = batch_sender(CountNotes(Arc::clone(&notes)).start().recipient(), None);
            s.do_send(0).unwrap();
            // Every message handled sends the next one, as a producer racing the receiver
            // would: each round takes what the previous one produced.
            let mut out = Vec::new();
            batch_of(&s).drain_each(|m| {
                out.push(m);
                if m < 5 {
                    s.do_send(m + 1).unwrap();
                }
            });
            assert_eq!(out, (0..DRAIN_ROUNDS as u64).collect::<Vec<_>>());
            // The message sent during the last round was announced by a new notification.
            assert_eq!(s.len(), 1);
            assert!(s.shared.queue.lock().scheduled);
            out.clear();
            batch_of(&s).drain_each(|m| {
                out.push(m);
                if m < 5 {
                    s.do_send(m + 1).unwrap();
                }
            });
            assert_eq!(out, (DRAIN_ROUNDS as u64..=5).collect::<Vec<_>>());
            // Stopped on an empty round: re-armed, nothing pending.
            assert!(s.is_empty());
            assert!(!s.shared.queue.lock().scheduled);
            actix::clock::sleep(std::time::Duration::from_millis(20)).await;
            // One for the first send, one for the send after the first call's last round;
            // none for the sends the rounds picked up.
            assert_eq!(notes.load(Ordering::SeqCst), 2);
            // A later send notifies again.
            s.do_send(9).unwrap();
            actix::clock::sleep(std::time::Duration::from_millis(20)).await;
            assert_eq!(notes.load(Ordering::SeqCst), 3);
        });
    }

    #[test]
    fn a_panicking_consumer_leaves_the_notification_re_armed() {
        System::new().block_on(async {
            let s = batch_sender(Idle.start().recipient(), None);
            s.do_send_all(0..10).unwrap();
            let b = batch_of(&s);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                b.drain_each(|m| {
                    // Keep the rounds going, then fail mid-way.
                    s.do_send(100 + m).unwrap();
                    assert!(m < 5, "consumer failure");
                })
            }));
            assert!(r.is_err());
            // Whatever is still queued will be announced by the next send.
            assert!(!s.shared.queue.lock().scheduled);
            assert!(!s.is_empty());
            s.do_send(7).unwrap();
            assert!(s.shared.queue.lock().scheduled);
        });
    }
}
