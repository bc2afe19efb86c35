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
//! that dispatch in bulk.

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
}

impl<M> Clone for Inbound<M> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

/// The receiving half of the inbound sink.
pub struct InboundReceiver<M> {
    rx: mpsc::Receiver<InboundBatch<M>>,
    /// What is left of the batch being taken apart by [`InboundReceiver::recv`].
    from: NodeId,
    rest: std::vec::IntoIter<M>,
}

/// A bounded inbound sink holding at most `batches` undelivered batches (at least 1).
pub fn inbound<M>(batches: usize) -> (Inbound<M>, InboundReceiver<M>) {
    let (tx, rx) = mpsc::channel(batches.max(1));
    (
        Inbound { tx },
        InboundReceiver {
            rx,
            from: NodeId::NONE,
            rest: Vec::new().into_iter(),
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
            if let Some(m) = self.rest.next() {
                return Some((self.from, m));
            }
            let batch = self.rx.recv().await?;
            self.take(batch);
        }
    }

    /// The next message if one is ready now.
    pub fn try_recv(&mut self) -> Result<(NodeId, M), TryRecvError> {
        loop {
            if let Some(m) = self.rest.next() {
                return Ok((self.from, m));
            }
            let batch = self.rx.try_recv()?;
            self.take(batch);
        }
    }

    /// The next batch, waiting for one (first what [`InboundReceiver::recv`] left of the
    /// current batch); `None` once every sender is gone and everything was received.
    pub async fn recv_batch(&mut self) -> Option<InboundBatch<M>> {
        if !self.rest.as_slice().is_empty() {
            // Collecting a `vec::IntoIter` reuses its allocation: no copy of the messages.
            let rest = std::mem::replace(&mut self.rest, Vec::new().into_iter());
            return Some(InboundBatch {
                from: self.from,
                msgs: rest.collect(),
            });
        }
        self.rx.recv().await
    }

    fn take(&mut self, batch: InboundBatch<M>) {
        // Only called once `rest` is exhausted: nothing is dropped.
        self.from = batch.from;
        self.rest = batch.msgs.into_iter();
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
