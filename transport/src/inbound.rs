//! The inbound sink: where a transport delivers what it receives.
//!
//! A connection's reader decodes every complete frame of one socket read and hands them over as
//! **one batch** ([`InboundBatch`]): one channel operation and at most one wake-up of the
//! receiving task per read, instead of one per message. For small messages the per-message
//! channel operation was the largest cost the transport could remove (docs/transport.md,
//! "Throughput"); the receiver then takes the messages out of the batch with no synchronisation.
//!
//! The channel is bounded in **batches**. A batch holds the messages of one read: at most the
//! read buffer's worth of frames (64 KiB, or one frame of up to `max_frame_size`), so memory
//! held in the sink stays bounded by `capacity × (64 KiB + max_frame_size)` of frames. When it
//! is full the reader waits and stops reading the socket: TCP flow control pushes back on the
//! sender, as before.
//!
//! [`InboundReceiver::recv`] yields one `(from, message)` at a time (it keeps the rest of the
//! current batch locally); [`InboundReceiver::recv_batch`] yields whole batches for consumers
//! that dispatch in bulk. The vector of a batch that `recv` emptied goes back to the sink and a
//! reader fills it again (a few, bounded in size), instead of a fresh allocation per read that
//! the consumer's thread frees.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::mpsc;

pub use tokio::sync::mpsc::error::TryRecvError;

use crate::NodeId;

/// The messages of one socket read (or one in-memory delivery), all from the same peer, in the
/// order they were sent.
#[derive(Debug)]
pub struct InboundBatch<M> {
    /// The authenticated sender.
    pub from: NodeId,
    /// The messages, oldest first. Never empty when delivered by a transport.
    pub msgs: Vec<M>,
}

/// The sending half of the inbound sink, given to [`crate::Transport::bind`] or
/// [`crate::MemNetwork::endpoint`]. Cheap to clone.
pub struct Inbound<M> {
    tx: mpsc::Sender<InboundBatch<M>>,
    spare: Arc<Spares<M>>,
}

impl<M> Clone for Inbound<M> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            spare: Arc::clone(&self.spare),
        }
    }
}

/// Most emptied batch vectors kept for reuse per sink.
const SPARES: usize = 2;

/// Largest emptied batch vector kept for reuse, in bytes of capacity: a burst of many small
/// messages does not leave a huge vector behind.
const SPARE_MAX_BYTES: usize = 256 * 1024;

/// Emptied batch vectors handed back by [`InboundReceiver::recv`] for the readers to fill again.
///
/// Why: a reader allocated a fresh vector per read and the consumer (another thread) freed it,
/// so for 64-byte messages every batch was a ~100 KiB cross-thread allocation that the
/// allocator kept taking fresh pages for (page faults and zeroing in the profile).
struct Spares<M> {
    vecs: Mutex<Vec<Vec<M>>>,
}

/// The receiving half of the inbound sink.
pub struct InboundReceiver<M> {
    rx: mpsc::Receiver<InboundBatch<M>>,
    /// What is left of the batch being taken apart by [`InboundReceiver::recv`].
    from: NodeId,
    rest: VecDeque<M>,
    spare: Arc<Spares<M>>,
}

/// A bounded inbound sink holding at most `batches` undelivered batches (at least 1).
pub fn inbound<M>(batches: usize) -> (Inbound<M>, InboundReceiver<M>) {
    let (tx, rx) = mpsc::channel(batches.max(1));
    let spare = Arc::new(Spares {
        vecs: Mutex::new(Vec::with_capacity(SPARES)),
    });
    (
        Inbound {
            tx,
            spare: Arc::clone(&spare),
        },
        InboundReceiver {
            rx,
            from: NodeId::NONE,
            rest: VecDeque::new(),
            spare,
        },
    )
}

/// Why a batch could not be handed over without waiting.
#[derive(Debug)]
pub(crate) enum Refused<M> {
    /// The sink holds `capacity` batches; the batch is given back.
    Full(InboundBatch<M>),
    /// The receiver is gone.
    Closed,
}

impl<M> Inbound<M> {
    /// An empty vector for a batch of `n` messages: an emptied one handed back by the receiver
    /// when one is large enough, a new one of exactly `n` otherwise.
    pub(crate) fn batch_vec(&self, n: usize) -> Vec<M> {
        let mut spares = self.spare.vecs.lock();
        match spares.last() {
            Some(v) if v.capacity() >= n => spares.pop().unwrap_or_default(),
            _ => {
                drop(spares);
                Vec::with_capacity(n)
            }
        }
    }

    /// Hands over `batch` if there is room now.
    pub(crate) fn try_send(&self, batch: InboundBatch<M>) -> Result<(), Refused<M>> {
        match self.tx.try_send(batch) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(b)) => Err(Refused::Full(b)),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Refused::Closed),
        }
    }

    /// Hands over `batch`, waiting for room. `Err` when the receiver is gone.
    pub(crate) async fn send(&self, batch: InboundBatch<M>) -> Result<(), ()> {
        self.tx.send(batch).await.map_err(|_| ())
    }

    /// Delivers one message, waiting for room: for tests and tools that feed a sink by hand.
    /// `Err` gives the message back when the receiver is gone.
    pub async fn send_one(&self, from: NodeId, msg: M) -> Result<(), M> {
        self.tx
            .send(InboundBatch {
                from,
                msgs: vec![msg],
            })
            .await
            .map_err(|e| {
                e.0.msgs
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| unreachable!())
            })
    }
}

impl<M> InboundReceiver<M> {
    /// The next message and its sender, waiting for one; `None` once every sender is gone and
    /// everything was received. Cancel-safe (nothing is lost if the future is dropped).
    pub async fn recv(&mut self) -> Option<(NodeId, M)> {
        loop {
            if let Some(m) = self.rest.pop_front() {
                return Some((self.from, m));
            }
            let batch = self.rx.recv().await?;
            self.take(batch);
        }
    }

    /// The next message if one is ready now.
    pub fn try_recv(&mut self) -> Result<(NodeId, M), TryRecvError> {
        loop {
            if let Some(m) = self.rest.pop_front() {
                return Ok((self.from, m));
            }
            let batch = self.rx.try_recv()?;
            self.take(batch);
        }
    }

    /// The next batch, waiting for one (first what [`InboundReceiver::recv`] left of the
    /// current batch); `None` once every sender is gone and everything was received.
    pub async fn recv_batch(&mut self) -> Option<InboundBatch<M>> {
        if !self.rest.is_empty() {
            // Reuses the deque's allocation (the messages move to its front at most once).
            let rest = std::mem::take(&mut self.rest);
            return Some(InboundBatch {
                from: self.from,
                msgs: Vec::from(rest),
            });
        }
        self.rx.recv().await
    }

    fn take(&mut self, batch: InboundBatch<M>) {
        // Only called once `rest` is empty: nothing is dropped. Its allocation goes back to
        // the readers (converting an empty deque to a vector moves nothing).
        self.from = batch.from;
        let done = Vec::from(std::mem::replace(
            &mut self.rest,
            VecDeque::from(batch.msgs),
        ));
        let bytes = done
            .capacity()
            .saturating_mul(std::mem::size_of::<M>().max(1));
        if done.capacity() > 0 && bytes <= SPARE_MAX_BYTES {
            let mut spares = self.spare.vecs.lock();
            if spares.len() < SPARES {
                spares.push(done);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_come_out_one_at_a_time_in_order() {
        let (tx, mut rx) = inbound::<u32>(2);
        tx.try_send(InboundBatch {
            from: NodeId::new(7),
            msgs: vec![1, 2, 3],
        })
        .unwrap_or_else(|_| panic!("room for one batch"));
        tx.send_one(NodeId::new(9), 4)
            .await
            .unwrap_or_else(|_| panic!("open"));
        assert_eq!(rx.recv().await, Some((NodeId::new(7), 1)));
        let rest = rx
            .recv_batch()
            .await
            .unwrap_or_else(|| panic!("rest of batch"));
        assert_eq!((rest.from, rest.msgs), (NodeId::new(7), vec![2, 3]));
        assert_eq!(rx.try_recv().ok(), Some((NodeId::new(9), 4)));
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        drop(tx);
        assert_eq!(rx.recv().await, None);
    }

    /// Receives `n` messages one at a time.
    async fn recv_n(rx: &mut InboundReceiver<u32>, n: usize) {
        for _ in 0..n {
            assert!(rx.recv().await.is_some());
        }
    }

    fn batch(msgs: Vec<u32>) -> InboundBatch<u32> {
        InboundBatch {
            from: NodeId::new(1),
            msgs,
        }
    }

    #[tokio::test]
    async fn emptied_batch_vectors_go_back_to_the_readers() {
        let (tx, mut rx) = inbound::<u32>(4);
        let mut v = Vec::with_capacity(100);
        v.extend([1, 2, 3]);
        let ptr = v.as_ptr();
        assert!(tx.try_send(batch(v)).is_ok());
        assert!(tx.try_send(batch(vec![4])).is_ok());
        // Taking the first batch apart, then moving on to the second, frees the first vector.
        recv_n(&mut rx, 4).await;
        let reused = tx.batch_vec(50);
        assert!(reused.is_empty());
        assert_eq!(reused.as_ptr(), ptr, "the emptied vector itself");
        assert!(reused.capacity() >= 100);
        // A spare too small for the batch is left alone: a new vector of the exact size.
        assert!(tx.try_send(batch(vec![5])).is_ok());
        assert!(tx.try_send(batch(vec![6])).is_ok());
        recv_n(&mut rx, 2).await;
        assert_eq!(tx.batch_vec(10).capacity(), 10);
        assert!(tx.batch_vec(1).capacity() >= 1);
    }

    #[tokio::test]
    async fn spares_are_few_and_small() {
        let (tx, mut rx) = inbound::<u32>(16);
        // A vector over the size bound is freed, not kept.
        let huge = SPARE_MAX_BYTES / std::mem::size_of::<u32>() + 1;
        let mut v = Vec::with_capacity(huge);
        v.push(1);
        assert!(tx.try_send(batch(v)).is_ok());
        assert!(tx.try_send(batch(vec![2])).is_ok());
        recv_n(&mut rx, 2).await;
        assert!(tx.spare.vecs.lock().iter().all(|v| v.capacity() < huge));
        // However many batches go through, at most SPARES vectors wait for reuse.
        for i in 0..10 {
            assert!(tx.try_send(batch(vec![i])).is_ok());
        }
        recv_n(&mut rx, 10).await;
        assert!(tx.spare.vecs.lock().len() <= SPARES);
    }

    #[tokio::test]
    async fn recv_batch_after_recv_keeps_the_order() {
        let (tx, mut rx) = inbound::<u32>(4);
        assert!(tx.try_send(batch(vec![1, 2, 3, 4])).is_ok());
        assert!(tx.try_send(batch(vec![5])).is_ok());
        recv_n(&mut rx, 1).await;
        let rest = rx.recv_batch().await.unwrap_or_else(|| panic!("rest"));
        assert_eq!(rest.msgs, vec![2, 3, 4]);
        assert_eq!(rx.recv().await, Some((NodeId::new(1), 5)));
    }

    #[tokio::test]
    async fn capacity_counts_batches_and_a_full_sink_gives_the_batch_back() {
        let (tx, mut rx) = inbound::<u32>(1);
        assert!(tx
            .try_send(InboundBatch {
                from: NodeId::new(1),
                msgs: vec![1; 100],
            })
            .is_ok());
        match tx.try_send(InboundBatch {
            from: NodeId::new(1),
            msgs: vec![2],
        }) {
            Err(Refused::Full(b)) => assert_eq!(b.msgs, vec![2]),
            other => panic!("expected Full, got {other:?}"),
        }
        assert_eq!(rx.recv().await, Some((NodeId::new(1), 1)));
        // The batch is out of the channel once its first message is taken: room again.
        assert!(tx
            .try_send(InboundBatch {
                from: NodeId::new(1),
                msgs: vec![2],
            })
            .is_ok());
        drop(rx);
        assert!(matches!(
            tx.try_send(InboundBatch {
                from: NodeId::new(1),
                msgs: vec![3],
            }),
            Err(Refused::Closed)
        ));
        assert_eq!(tx.send_one(NodeId::new(1), 5).await, Err(5));
    }
}
