//! Batched delivery into an actor: many messages, one actix envelope, one wake-up.
//!
//! actix boxes every message in its own envelope (`Box<dyn EnvelopeProxy>`) and, when the
//! receiver lives on another arbiter, may wake that arbiter's thread for each of them. For
//! hot paths that carry many small messages to one actor (log entries to the log store,
//! applied entries to the state machine, frames from a connection) that per-message cost
//! dominates. A [`BatchSender`] instead pushes messages into a shared buffer (a mutex-guarded
//! `Vec`, no allocation per message) and sends the actor a single [`Batch`] notification
//! when the buffer goes from empty to non-empty. The actor's `Handler<Batch<M>>` drains every
//! message queued so far with [`Batch::drain_into`]; producers that push while that
//! notification is in flight ride along for free. A burst of N messages therefore costs N
//! `Vec` pushes under an uncontended lock plus one actix envelope and at most one cross-thread
//! wake-up.
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

struct Queue<M> {
    items: Vec<M>,
    /// A [`Batch`] notification is on its way to the receiver and has not drained yet.
    scheduled: bool,
    /// The receiver was found stopped.
    closed: bool,
}

struct Shared<M> {
    queue: Mutex<Queue<M>>,
    /// `queue.items.len()`, written under the lock and read without it: a full bounded
    /// mailbox refuses `try_send` with one atomic load, without touching the lock the
    /// receiver needs to drain it. A load that sees `>= capacity` saw a moment when the
    /// mailbox was full, so refusing is correct even if a drain follows immediately.
    len: AtomicUsize,
    /// `None`: unbounded.
    capacity: Option<usize>,
}

/// The notification an actor receives: "messages are waiting". Drain them with
/// [`Batch::drain_into`]; one notification may carry any number of messages, including
/// none when an earlier notification already drained them.
pub struct Batch<M: Send + 'static> {
    shared: Arc<Shared<M>>,
}

impl<M: Send + 'static> Message for Batch<M> {
    type Result = ();
}

impl<M: Send + 'static> Batch<M> {
    /// Moves every waiting message, in send order, to the end of `out`. When `out` is empty
    /// this swaps buffers instead of copying, so a handler that keeps one `Vec` and clears it
    /// after use allocates nothing in the steady state.
    pub fn drain_into(&self, out: &mut Vec<M>) {
        let mut q = self.shared.queue.lock();
        if out.is_empty() {
            std::mem::swap(&mut q.items, out);
        } else {
            out.append(&mut q.items);
        }
        self.shared.len.store(0, Ordering::Release);
        // Later sends schedule a new notification.
        q.scheduled = false;
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
                items: Vec::new(),
                scheduled: false,
                closed: false,
            }),
            len: AtomicUsize::new(0),
            capacity,
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
            let before = q.items.len();
            q.items.extend(msgs);
            self.shared.len.store(q.items.len(), Ordering::Release);
            let notify = !q.scheduled && q.items.len() > before;
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

    fn push(&self, msg: M, bounded: bool) -> Result<(), BatchSendError<M>> {
        let cap = if bounded { self.shared.capacity } else { None };
        let (notify, check_alive) = {
            let mut q = self.shared.queue.lock();
            if q.closed {
                return Err(BatchSendError::Closed(msg));
            }
            if cap.is_some_and(|cap| q.items.len() >= cap) {
                return Err(BatchSendError::Full(msg));
            }
            q.items.push(msg);
            self.shared.len.store(q.items.len(), Ordering::Release);
            let notify = !q.scheduled;
            q.scheduled = true;
            (notify, !notify && q.items.len() % LIVENESS_CHECK_EVERY == 0)
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
        let mut q = self.shared.queue.lock();
        q.closed = true;
        q.items.clear();
        self.shared.len.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use actix::prelude::*;
    use std::sync::mpsc;

    struct Collect {
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
            b.drain_into(&mut self.buf);
            self.seen.append(&mut self.buf);
            if self.seen.len() >= self.done_at {
                if let Some(tx) = self.done.take() {
                    let _ = tx.send((std::mem::take(&mut self.seen), self.batches));
                }
            }
        }
    }

    fn collector(done_at: usize, tx: mpsc::Sender<(Vec<u64>, usize)>) -> Collect {
        Collect {
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
}
