//! A transport outside a cluster's control, for tests that play an attacker.

use conclave::node::wire::WireMessage;
use conclave_core::ids::{GroupId, NodeId};
use conclave_core::raft::{Message, MessageBody};
use conclave_transport::{Transport, TransportConfig};
use std::time::Duration;

/// A transport claiming node id `id` in cluster `cluster`; whatever the cluster sends it is
/// drained.
pub async fn rogue(id: NodeId, cluster: &str) -> Transport<WireMessage> {
    let mut cfg = TransportConfig::new(id, cluster, "127.0.0.1:0".parse().unwrap());
    cfg.backoff_base = Duration::from_millis(10);
    cfg.backoff_cap = Duration::from_millis(100);
    let (tx, mut rx) = conclave_transport::inbound(1024);
    actix::spawn(async move { while rx.recv().await.is_some() {} });
    Transport::bind(cfg, tx).await.unwrap().0
}

/// A Raft `Heartbeat` of group 0 from `from` to `to` at `term`.
pub fn heartbeat(from: NodeId, to: NodeId, term: u64) -> WireMessage {
    WireMessage::Raft(Message {
        group: GroupId::FIRST,
        from,
        to,
        term,
        body: MessageBody::Heartbeat {
            commit: 0,
            read_ctx: 0,
        },
    })
}
