//! The in-memory network: same interface as TCP, seeded faults.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use conclave_core::ids::NodeId;
use conclave_transport::{Endpoint, Faults, MemNetwork, TrySendError};

const ANY: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

fn node(
    net: &MemNetwork<Msg>,
    id: NodeId,
    cap: usize,
) -> (conclave_transport::MemEndpoint<Msg>, Rx) {
    let (tx, rx) = conclave_transport::inbound(cap);
    (net.endpoint(id, tx), rx)
}

/// Written against the trait: runs unchanged over TCP and in memory.
async fn ping<E: Endpoint<Msg>>(from: &E, to: NodeId, addr: SocketAddr, rx: &mut Rx, n: u64) {
    let link = from.peer(to, addr);
    for i in 0..n {
        link.send(Msg::new(i, 8)).await.unwrap();
    }
    for i in 0..n {
        assert_eq!(recv(rx).await, (from.node_id(), Msg::new(i, 8)));
    }
}

#[tokio::test]
async fn same_interface_over_memory_and_tcp() {
    let net = MemNetwork::new(1);
    let (a, _a_rx) = node(&net, NodeId::new(1), 16);
    let (_b, mut b_rx) = node(&net, NodeId::new(2), 16);
    ping(&a, NodeId::new(2), ANY, &mut b_rx, 100).await;

    let (ta, _, _ta_rx) = start(config(NodeId::new(501), "t"), 16).await;
    let (_tb, tb_addr, mut tb_rx) = start(config(NodeId::new(502), "t"), 16).await;
    ping(&ta, NodeId::new(502), tb_addr, &mut tb_rx, 100).await;
}

#[tokio::test]
async fn drop_all_and_drop_some() {
    let net = MemNetwork::new(7);
    let (a, _a_rx) = node(&net, NodeId::new(1), 1024);
    let (_b, mut b_rx) = node(&net, NodeId::new(2), 1024);
    let link = a.peer(NodeId::new(2), ANY);
    net.set_faults(Faults {
        drop: 1.0,
        ..Faults::default()
    });
    for i in 0..100 {
        link.send(Msg::new(i, 1)).await.unwrap();
    }
    eventually("all dropped", || net.stats().dropped == 100).await;
    assert!(b_rx.try_recv().is_err());

    net.set_faults(Faults {
        drop: 0.3,
        ..Faults::default()
    });
    for i in 0..1000 {
        link.send(Msg::new(i, 1)).await.unwrap();
    }
    eventually("all decided", || {
        let s = net.stats();
        s.dropped + s.delivered == 1100
    })
    .await;
    let delivered = net.stats().delivered;
    assert!(
        (600..=800).contains(&delivered),
        "delivered {delivered} of 1000 at 30% drop"
    );
    // What survives is still in order.
    let mut last = None;
    while let Ok((_, m)) = b_rx.try_recv() {
        assert!(last.is_none_or(|l| l < m.seq));
        last = Some(m.seq);
    }
}

#[tokio::test]
async fn the_same_seed_drops_the_same_messages() {
    async fn survivors(seed: u64) -> Vec<u64> {
        let net = MemNetwork::new(seed);
        net.set_faults(Faults {
            drop: 0.5,
            ..Faults::default()
        });
        let (a, _a_rx) = node(&net, NodeId::new(1), 512);
        let (_b, mut b_rx) = node(&net, NodeId::new(2), 512);
        let link = a.peer(NodeId::new(2), ANY);
        for i in 0..200 {
            link.send(Msg::new(i, 1)).await.unwrap();
        }
        eventually("decided", || {
            let s = net.stats();
            s.dropped + s.delivered == 200
        })
        .await;
        let mut out = vec![];
        while let Ok((_, m)) = b_rx.try_recv() {
            out.push(m.seq);
        }
        out
    }
    let first = survivors(42).await;
    assert_eq!(first, survivors(42).await);
    assert_ne!(first, survivors(43).await);
}

#[tokio::test]
async fn duplicate_delivers_twice() {
    let net = MemNetwork::new(3);
    net.set_faults(Faults {
        duplicate: 1.0,
        ..Faults::default()
    });
    let (a, _a_rx) = node(&net, NodeId::new(1), 64);
    let (_b, mut b_rx) = node(&net, NodeId::new(2), 64);
    let link = a.peer(NodeId::new(2), ANY);
    for i in 0..10 {
        link.send(Msg::new(i, 4)).await.unwrap();
    }
    for i in 0..10 {
        assert_eq!(recv(&mut b_rx).await.1, Msg::new(i, 4));
        assert_eq!(recv(&mut b_rx).await.1, Msg::new(i, 4));
    }
    assert_eq!(net.stats().duplicated, 10);
}

#[tokio::test]
async fn delay_holds_messages_back() {
    let net = MemNetwork::new(5);
    net.set_faults(Faults {
        delay: Some((Duration::from_millis(50), Duration::from_millis(80))),
        ..Faults::default()
    });
    let (a, _a_rx) = node(&net, NodeId::new(1), 64);
    let (_b, mut b_rx) = node(&net, NodeId::new(2), 64);
    let link = a.peer(NodeId::new(2), ANY);
    let start = tokio::time::Instant::now();
    for i in 0..20 {
        link.send(Msg::new(i, 4)).await.unwrap();
    }
    let mut seen = vec![];
    for _ in 0..20 {
        seen.push(recv(&mut b_rx).await.1.seq);
    }
    assert!(start.elapsed() >= Duration::from_millis(50));
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..20).collect::<Vec<_>>(),
        "every delayed message arrives once"
    );
}

#[tokio::test]
async fn partition_cuts_both_ways_until_healed_and_crash_is_unreachable() {
    let net = MemNetwork::new(9);
    let (a, mut a_rx) = node(&net, NodeId::new(1), 64);
    let (b, mut b_rx) = node(&net, NodeId::new(2), 64);
    let (c, mut c_rx) = node(&net, NodeId::new(3), 64);
    net.partition(&[NodeId::new(1)], &[NodeId::new(2), NodeId::new(3)]);
    a.peer(NodeId::new(2), ANY)
        .send(Msg::new(1, 1))
        .await
        .unwrap();
    b.peer(NodeId::new(1), ANY)
        .send(Msg::new(2, 1))
        .await
        .unwrap();
    // Inside the majority side traffic flows.
    b.peer(NodeId::new(3), ANY)
        .send(Msg::new(3, 1))
        .await
        .unwrap();
    assert_eq!(recv(&mut c_rx).await, (NodeId::new(2), Msg::new(3, 1)));
    eventually("partitioned", || net.stats().partitioned == 2).await;
    assert!(a_rx.try_recv().is_err() && b_rx.try_recv().is_err());

    net.heal();
    a.peer(NodeId::new(2), ANY)
        .send(Msg::new(4, 1))
        .await
        .unwrap();
    assert_eq!(recv(&mut b_rx).await, (NodeId::new(1), Msg::new(4, 1)));

    // One-way block.
    net.block(NodeId::new(3), NodeId::new(1));
    c.peer(NodeId::new(1), ANY)
        .send(Msg::new(5, 1))
        .await
        .unwrap();
    a.peer(NodeId::new(3), ANY)
        .send(Msg::new(6, 1))
        .await
        .unwrap();
    assert_eq!(recv(&mut c_rx).await, (NodeId::new(1), Msg::new(6, 1)));
    eventually("blocked", || net.stats().partitioned == 3).await;
    assert!(a_rx.try_recv().is_err());

    net.crash(NodeId::new(2));
    a.peer(NodeId::new(2), ANY)
        .send(Msg::new(7, 1))
        .await
        .unwrap();
    eventually("unreachable", || net.stats().unreachable == 1).await;
}

#[tokio::test]
async fn backpressure_in_memory_then_in_order_delivery() {
    let net = MemNetwork::new(11);
    let (tx, mut b_rx) = conclave_transport::inbound(2);
    let _b = net.endpoint_with(NodeId::new(2), tx, 10, 1024);
    let (atx, _a_rx) = conclave_transport::inbound(2);
    let a = net.endpoint_with(NodeId::new(1), atx, 10, 1024);
    let link = a.peer(NodeId::new(2), ANY);
    let mut accepted = 0u64;
    let mut fulls = 0;
    while fulls < 50 {
        match link.try_send(Msg::new(accepted, 8)) {
            Ok(()) => accepted += 1,
            Err(TrySendError::Full(m)) => {
                assert_eq!(m.seq, accepted);
                fulls += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
        assert!(accepted <= 13, "queue 10 + sink 2 + 1 in the delivery task");
    }
    assert_eq!(accepted, 13);
    for i in 0..accepted {
        assert_eq!(recv(&mut b_rx).await.1.seq, i);
    }
    // Oversized messages are refused at the sender here too.
    assert!(matches!(
        link.try_send(Msg::new(0, 2000)),
        Err(TrySendError::Encode(..))
    ));
}
