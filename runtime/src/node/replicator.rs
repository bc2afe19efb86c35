//! The replicator actor: one per peer of a group, the outbound stage of that group's messages
//! to that peer. It hands messages to the peer's transport link without blocking; when the
//! link's bounded queue is full the message is dropped and counted — Raft retransmits
//! (heartbeats and probes re-send what was lost), and the leader's in-flight window bounds
//! how much is outstanding — so a slow peer never stalls the group.

use super::wire::WireMessage;
use actix::prelude::*;
use conclave_actors::supervisor::ChildGuard;
use conclave_core::raft::{self, NodeId};
use conclave_transport::{PeerLink, TrySendError};

/// A Raft message for this replicator's peer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Outbound(pub raft::Message);

/// Makes the actor panic, to test supervision (tests and the chaos harness only).
#[cfg(any(test, feature = "fault-injection"))]
#[derive(Message)]
#[rtype(result = "()")]
pub struct InjectPanic;

/// The actor. See the module docs.
pub struct ReplicatorActor {
    node: NodeId,
    peer: NodeId,
    link: PeerLink<WireMessage>,
    _guard: ChildGuard,
}

impl ReplicatorActor {
    /// A replicator sending to `peer` over `link`.
    pub fn new(node: NodeId, peer: NodeId, link: PeerLink<WireMessage>, guard: ChildGuard) -> Self {
        ReplicatorActor {
            node,
            peer,
            link,
            _guard: guard,
        }
    }
}

impl Actor for ReplicatorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
    }
}

impl Handler<Outbound> for ReplicatorActor {
    type Result = ();

    fn handle(&mut self, msg: Outbound, _: &mut Context<Self>) {
        let group = msg.0.group;
        match self.link.try_send(WireMessage::Raft(msg.0)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                metrics::counter!("conclave_raft_messages_dropped_total",
                    "group" => group.to_string(), "peer" => self.peer.to_string(), "reason" => "queue_full")
                .increment(1);
            }
            Err(TrySendError::Closed(_)) => {
                tracing::debug!(
                    node = self.node,
                    peer = self.peer,
                    "link closed; message dropped"
                );
            }
            Err(TrySendError::Encode(_, e)) => {
                // Too large for max_frame_size: the core's max_bytes_per_append is kept below
                // it, so this is a configuration problem worth shouting about.
                tracing::error!(node = self.node, peer = self.peer, error = %e, "raft message cannot be framed; dropped");
            }
        }
    }
}

#[cfg(any(test, feature = "fault-injection"))]
impl Handler<InjectPanic> for ReplicatorActor {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, _: &mut Context<Self>) {
        panic!("injected panic in a replicator (fault injection)");
    }
}
