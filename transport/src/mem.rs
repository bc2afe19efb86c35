//! An in-memory network with the same [`Endpoint`] / [`PeerLink`] interface as the TCP
//! transport, for tests that want faults without sockets.
//!
//! Messages still go through the codec (encoded by [`PeerLink`], decoded on delivery), so a
//! message type that does not round-trip through MessagePack fails here as it would on TCP, and
//! duplication needs no `Clone` on the message. Each link has one delivery task that applies,
//! in order: partition (drop), random drop, random duplicate, random delay. Randomness comes
//! from a ChaCha RNG seeded from the network seed and the `(from, to)` pair, so a given link
//! makes the same fault decisions for the same sequence of messages on every run (the
//! interleaving across links still depends on the tokio scheduler).
//!
//! Delivery into the destination's [`Inbound`] sink awaits when that sink is full, so
//! backpressure works as over TCP: the link's queue fills and `try_send` returns `Full`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Semaphore;
use tracing::warn;

use crate::codec::{decode_body_shared, FrameDecoder, DEFAULT_MAX_FRAME_SIZE};
use crate::link::PeerLink;
use crate::metrics::{self as m, FlowCounters};
use crate::{Endpoint, Inbound, NodeId};

/// Probabilistic faults applied to every message of the network.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Probability in `[0, 1]` that a message is dropped.
    pub drop: f64,
    /// Probability in `[0, 1]` that a (not dropped) message is delivered twice.
    pub duplicate: f64,
    /// Each delivery is delayed by a uniform draw in this range (`None`: no delay). Delayed
    /// messages may overtake each other, as reordered packets would.
    pub delay: Option<(Duration, Duration)>,
}

/// Counts of what the network did, for tests to check that faults really happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemStats {
    /// Messages handed to a destination's inbound sink (duplicates included).
    pub delivered: u64,
    /// Messages dropped by the `drop` probability.
    pub dropped: u64,
    /// Extra copies delivered by the `duplicate` probability.
    pub duplicated: u64,
    /// Messages dropped because the pair was partitioned.
    pub partitioned: u64,
    /// Messages dropped because the destination is not registered (crashed / never started).
    pub unreachable: u64,
}

#[derive(Default)]
struct Counts {
    delivered: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    partitioned: AtomicU64,
    unreachable: AtomicU64,
}

struct Net<M> {
    seed: u64,
    nodes: Mutex<HashMap<NodeId, Inbound<M>>>,
    faults: Mutex<Faults>,
    /// Directed pairs `(from, to)` whose messages are dropped.
    blocked: Mutex<HashSet<(NodeId, NodeId)>>,
    counts: Counts,
    /// The runtime the network was created on, if any: delivery tasks run there, so links can
    /// be created from any thread.
    runtime: Option<tokio::runtime::Handle>,
}

/// A simulated network shared by any number of [`MemEndpoint`]s. Cheap to clone.
pub struct MemNetwork<M> {
    net: Arc<Net<M>>,
}

impl<M> Clone for MemNetwork<M> {
    fn clone(&self) -> Self {
        Self {
            net: Arc::clone(&self.net),
        }
    }
}

impl<M> MemNetwork<M>
where
    M: Serialize + DeserializeOwned + Send + 'static,
{
    /// A fault-free network whose fault decisions derive from `seed`. Create it inside a tokio
    /// runtime (delivery tasks run there); otherwise `peer()` must be called inside one.
    pub fn new(seed: u64) -> Self {
        Self {
            net: Arc::new(Net {
                seed,
                nodes: Mutex::new(HashMap::new()),
                faults: Mutex::new(Faults::default()),
                blocked: Mutex::new(HashSet::new()),
                counts: Counts::default(),
                runtime: tokio::runtime::Handle::try_current().ok(),
            }),
        }
    }

    /// Registers `node`, delivering what it receives to `inbound`, with the default 5000-message
    /// queues and 64 KiB frames. Replaces an earlier registration of the same id (a restart).
    pub fn endpoint(&self, node: NodeId, inbound: Inbound<M>) -> MemEndpoint<M> {
        self.endpoint_with(node, inbound, 5000, DEFAULT_MAX_FRAME_SIZE)
    }

    /// Like [`MemNetwork::endpoint`] with explicit queue capacity and frame limit.
    pub fn endpoint_with(
        &self,
        node: NodeId,
        inbound: Inbound<M>,
        max_queue_size: usize,
        max_frame_size: usize,
    ) -> MemEndpoint<M> {
        self.net.nodes.lock().insert(node, inbound);
        MemEndpoint {
            net: Arc::clone(&self.net),
            node,
            max_queue_size,
            max_frame_size,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// Unregisters `node`: messages to it are dropped as unreachable (a crash).
    pub fn crash(&self, node: NodeId) {
        self.net.nodes.lock().remove(&node);
    }

    /// Sets the probabilistic faults for every link from now on.
    pub fn set_faults(&self, faults: Faults) {
        *self.net.faults.lock() = faults;
    }

    /// Cuts every link between a node of `a` and a node of `b`, both directions.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        let mut blocked = self.net.blocked.lock();
        for &x in a {
            for &y in b {
                blocked.insert((x, y));
                blocked.insert((y, x));
            }
        }
    }

    /// Cuts only the direction `from -> to`.
    pub fn block(&self, from: NodeId, to: NodeId) {
        self.net.blocked.lock().insert((from, to));
    }

    /// Restores every cut link.
    pub fn heal(&self) {
        self.net.blocked.lock().clear();
    }

    /// What the network has done so far.
    pub fn stats(&self) -> MemStats {
        let c = &self.net.counts;
        MemStats {
            delivered: c.delivered.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            duplicated: c.duplicated.load(Ordering::Relaxed),
            partitioned: c.partitioned.load(Ordering::Relaxed),
            unreachable: c.unreachable.load(Ordering::Relaxed),
        }
    }
}

/// One node's attachment to a [`MemNetwork`].
pub struct MemEndpoint<M> {
    net: Arc<Net<M>>,
    node: NodeId,
    max_queue_size: usize,
    max_frame_size: usize,
    peers: Mutex<HashMap<NodeId, PeerLink<M>>>,
}

impl<M> Endpoint<M> for MemEndpoint<M>
where
    M: Serialize + DeserializeOwned + Send + 'static,
{
    fn node_id(&self) -> NodeId {
        self.node
    }

    fn peer(&self, node: NodeId, _addr: SocketAddr) -> PeerLink<M> {
        let mut peers = self.peers.lock();
        if let Some(link) = peers.get(&node) {
            if !link.is_closed() {
                return link.clone();
            }
        }
        // Bounded by frames only here: the in-memory network is for tests, whose queues are
        // sized in messages.
        let (link, rx) = PeerLink::channel(
            self.node,
            node,
            self.max_queue_size,
            usize::MAX,
            self.max_frame_size,
        );
        peers.insert(node, link.clone());
        let seed = self.net.seed
            ^ self.node.get().rotate_left(32)
            ^ node.get().wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let task = deliver_loop(
            Arc::clone(&self.net),
            self.node,
            node,
            rx,
            ChaCha8Rng::seed_from_u64(seed),
            FrameDecoder::new(self.max_frame_size),
            Arc::new(Semaphore::new(self.max_queue_size.max(1))),
        );
        match &self.net.runtime {
            Some(rt) => drop(rt.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
        link
    }

    fn remove_peer(&self, node: NodeId) {
        self.peers.lock().remove(&node);
    }
}

async fn deliver_loop<M>(
    net: Arc<Net<M>>,
    from: NodeId,
    to: NodeId,
    mut rx: crate::link::QueueReceiver,
    mut rng: ChaCha8Rng,
    decoder: FrameDecoder,
    in_flight: Arc<Semaphore>,
) where
    M: DeserializeOwned + Send + 'static,
{
    let out = FlowCounters::new(from, to, "out");
    let inc = FlowCounters::new(to, from, "in");
    while let Some(frame) = rx.recv_frame().await {
        out.frames.increment(1);
        out.bytes.increment(frame.len() as u64);
        if net.blocked.lock().contains(&(from, to)) {
            net.counts.partitioned.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let faults = net.faults.lock().clone();
        if faults.drop > 0.0 && rng.random_bool(faults.drop.clamp(0.0, 1.0)) {
            net.counts.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let copies = if faults.duplicate > 0.0 && rng.random_bool(faults.duplicate.clamp(0.0, 1.0))
        {
            net.counts.duplicated.fetch_add(1, Ordering::Relaxed);
            2
        } else {
            1
        };
        let delay = faults.delay.map(|(lo, hi)| {
            if hi > lo {
                rng.random_range(lo..=hi)
            } else {
                lo
            }
        });
        for _ in 0..copies {
            // Decode through the real frame decoder: same limits and errors as TCP.
            let mut buf = bytes::BytesMut::from(&frame[..]);
            let msg: M = match decoder.decode(&mut buf) {
                Ok(Some(crate::Frame::Message(body))) => match decode_body_shared(&body) {
                    Ok(msg) => msg,
                    Err(e) => {
                        warn!(%from, %to, "in-memory delivery: {e}");
                        m::decode_error(to, Some(from), e.reason());
                        continue;
                    }
                },
                Ok(_) => continue,
                Err(e) => {
                    warn!(%from, %to, "in-memory delivery: {e}");
                    m::decode_error(to, Some(from), e.reason());
                    continue;
                }
            };
            let Some(sink) = net.nodes.lock().get(&to).cloned() else {
                net.counts.unreachable.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            match delay {
                None => {
                    if sink.send_one(from, msg).await.is_ok() {
                        net.counts.delivered.fetch_add(1, Ordering::Relaxed);
                        inc.frames.increment(1);
                        inc.bytes.increment(frame.len() as u64);
                    } else {
                        net.counts.unreachable.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(d) => {
                    // Bound the messages sleeping in flight: once max_queue_size are delayed,
                    // this link stops taking from its queue, so its senders see Full.
                    let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
                        return;
                    };
                    let net = Arc::clone(&net);
                    let inc = inc.clone();
                    let len = frame.len() as u64;
                    tokio::spawn(async move {
                        let _permit = permit;
                        tokio::time::sleep(d).await;
                        if sink.send_one(from, msg).await.is_ok() {
                            net.counts.delivered.fetch_add(1, Ordering::Relaxed);
                            inc.frames.increment(1);
                            inc.bytes.increment(len);
                        } else {
                            net.counts.unreachable.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            }
        }
    }
}
