//! One connection per pair of nodes, over real loopback TCP: simultaneous dials settle on one
//! connection, it carries both directions, a node that only receives can answer over it, either
//! side can be killed and restarted, and a reader stalled on a full sink never blocks writes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use conclave_core::ids::NodeId;
use conclave_transport::metrics as names;
use conclave_transport::{Endpoint, Transport, TrySendError};

/// Binds on the address of a transport just dropped (its listener closes asynchronously).
async fn rebind(cfg: conclave_transport::TransportConfig, cap: usize) -> (Transport<Msg>, Rx) {
    for _ in 0..200 {
        let (tx, rx) = conclave_transport::inbound(cap);
        if let Ok((t, _)) = Transport::bind(cfg.clone(), tx).await {
            return (t, rx);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("address still in use after 2 s");
}

/// Connections opened by `node` towards `peer`, either side.
fn opened(node: NodeId, peer: NodeId) -> u64 {
    metrics().get(
        names::CONNECTIONS_TOTAL,
        &[("node", &node.to_string()), ("peer", &peer.to_string())],
    )
}

/// Sends `n` messages each way at once and checks both streams arrive complete and in order.
async fn exchange(
    (a, to_b, a_rx): (&Transport<Msg>, &conclave_transport::PeerLink<Msg>, &mut Rx),
    (b, to_a, b_rx): (&Transport<Msg>, &conclave_transport::PeerLink<Msg>, &mut Rx),
    first: u64,
    n: u64,
) {
    for i in first..first + n {
        to_b.send(Msg::new(i, 20)).await.unwrap();
        to_a.send(Msg::new(i, 30)).await.unwrap();
    }
    for i in first..first + n {
        assert_eq!(recv(b_rx).await, (a.node_id(), Msg::new(i, 20)));
        assert_eq!(recv(a_rx).await, (b.node_id(), Msg::new(i, 30)));
    }
}

/// Both nodes create their link to each other at the same moment, many times over: every pair
/// ends with exactly one connection (counted on both sides), carrying both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_end_with_exactly_one_connection() {
    let rec = metrics();
    for round in 0..15u64 {
        let (ida, idb) = (NodeId::new(1000 + 2 * round), NodeId::new(1001 + 2 * round));
        let (a, a_addr, mut a_rx) = start(config(ida, "t"), 256).await;
        let (b, b_addr, mut b_rx) = start(config(idb, "t"), 256).await;
        // Both links at once: both drivers dial immediately.
        let (to_b, to_a) = std::thread::scope(|s| {
            let ta = s.spawn(|| a.peer(idb, b_addr));
            let tb = s.spawn(|| b.peer(ida, a_addr));
            (ta.join().unwrap(), tb.join().unwrap())
        });
        exchange((&a, &to_b, &mut a_rx), (&b, &to_a, &mut b_rx), 0, 100).await;
        eventually("both sides settled", || {
            a.is_connected(idb)
                && b.is_connected(ida)
                && a.connection_count() == 1
                && b.connection_count() == 1
        })
        .await;
        // Exactly one connection was ever adopted on each side: the loser of a simultaneous
        // dial is refused in the handshake, before any message is written on it.
        assert_eq!(
            opened(ida, idb),
            1,
            "round {round}: node {ida} opened more than one"
        );
        assert_eq!(
            opened(idb, ida),
            1,
            "round {round}: node {idb} opened more than one"
        );
        // One side dialled it, the other accepted it.
        let dialed = |n: NodeId, p: NodeId| {
            rec.get(
                names::CONNECTIONS_TOTAL,
                &[
                    ("node", &n.to_string()),
                    ("peer", &p.to_string()),
                    ("side", "dialed"),
                ],
            )
        };
        assert_eq!(dialed(ida, idb) + dialed(idb, ida), 1);
        // Nothing was lost on a losing connection.
        assert_eq!(
            rec.get(names::FRAMES_LOST_TOTAL, &[("node", &ida.to_string())]),
            0
        );
        assert_eq!(
            rec.get(names::FRAMES_LOST_TOTAL, &[("node", &idb.to_string())]),
            0
        );
        exchange((&a, &to_b, &mut a_rx), (&b, &to_a, &mut b_rx), 100, 100).await;
        assert_eq!((a.connection_count(), b.connection_count()), (1, 1));
    }
    // How often the race actually happened (both dials reached the handshake): informative.
    let conflicts = rec.get(names::DIAL_CONFLICTS_TOTAL, &[("resolution", "ours_wins")]);
    println!("simultaneous dials settled in the handshake: {conflicts} of 15 rounds");
}

/// A node that never asked for a link still receives, and once it asks for one it answers over
/// the connection the other side dialled — even if the address it was given is unreachable
/// (as when the address comes from gossip and is stale).
#[tokio::test]
async fn a_receiver_answers_over_the_connection_it_accepted() {
    metrics(); // installed before the transports register their counters
    let (a, _a_addr, mut a_rx) = start(config(NodeId::new(1101), "t"), 64).await;
    let (b, b_addr, mut b_rx) = start(config(NodeId::new(1102), "t"), 64).await;
    let to_b = a.peer(NodeId::new(1102), b_addr);
    for i in 0..10 {
        to_b.send(Msg::new(i, 8)).await.unwrap();
    }
    for i in 0..10 {
        assert_eq!(recv(&mut b_rx).await, (NodeId::new(1101), Msg::new(i, 8)));
    }
    assert_eq!((a.connection_count(), b.connection_count()), (1, 1));
    assert!(b.is_connected(NodeId::new(1101)));
    // B learns of A only now, with an address nothing listens on.
    let nowhere = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let to_a = b.peer(NodeId::new(1101), nowhere);
    for i in 0..10 {
        to_a.send(Msg::new(i, 9)).await.unwrap();
    }
    for i in 0..10 {
        assert_eq!(recv(&mut a_rx).await, (NodeId::new(1102), Msg::new(i, 9)));
    }
    assert_eq!((a.connection_count(), b.connection_count()), (1, 1));
    assert_eq!(opened(NodeId::new(1102), NodeId::new(1101)), 1);
    assert_eq!(
        metrics().get(
            names::CONNECTIONS_TOTAL,
            &[("node", "1102"), ("side", "dialed")]
        ),
        0,
        "the receiver dialled although a connection existed"
    );
}

/// Kill and restart each side in turn (same address): the survivor and the new process find
/// each other again, traffic resumes both ways, and each side ends with one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn either_side_restarting_reconnects_and_traffic_resumes_both_ways() {
    let cfg_a = config(NodeId::new(1201), "t");
    let cfg_b = config(NodeId::new(1202), "t");
    let (a, a_addr, mut a_rx) = start(cfg_a.clone(), 256).await;
    let (b, b_addr, mut b_rx) = start(cfg_b.clone(), 256).await;
    let mut cfg_a = cfg_a;
    cfg_a.listen = a_addr;
    let mut cfg_b = cfg_b;
    cfg_b.listen = b_addr;
    let to_b = a.peer(NodeId::new(1202), b_addr);
    let to_a = b.peer(NodeId::new(1201), a_addr);
    exchange((&a, &to_b, &mut a_rx), (&b, &to_a, &mut b_rx), 0, 50).await;

    // Kill B (the higher id), restart it.
    drop(to_a);
    drop(b);
    drop(b_rx);
    let (b, mut b_rx) = rebind(cfg_b.clone(), 256).await;
    let to_a = b.peer(NodeId::new(1201), a_addr);
    settle_and_exchange(&a, &to_b, &mut a_rx, &b, &to_a, &mut b_rx).await;

    // Kill A (the lower id), restart it.
    drop(to_b);
    drop(a);
    drop(a_rx);
    let (a, mut a_rx) = rebind(cfg_a, 256).await;
    let to_b = a.peer(NodeId::new(1202), b_addr);
    settle_and_exchange(&a, &to_b, &mut a_rx, &b, &to_a, &mut b_rx).await;

    // A restarted node that never asks for a link is reached by the survivor.
    drop(to_b);
    drop(a);
    drop(a_rx);
    let mut cfg = config(NodeId::new(1201), "t");
    cfg.listen = a_addr;
    let (a, mut a_rx) = rebind(cfg, 256).await;
    let mut seq = 10_000;
    loop {
        // Messages queued while the survivor still holds the dead connection may be lost
        // (at most once across a reconnect): keep sending until one arrives.
        to_a.send(Msg::new(seq, 1)).await.unwrap();
        if let Ok(Some((from, _))) =
            tokio::time::timeout(Duration::from_millis(100), a_rx.recv()).await
        {
            assert_eq!(from, NodeId::new(1202));
            break;
        }
        seq += 1;
        assert!(seq < 10_100, "the restarted receiver was never reached");
    }
    eventually("one connection each", || {
        a.connection_count() == 1 && b.connection_count() == 1
    })
    .await;
}

/// After a restart: wait until messages get through both ways (the first ones may be lost
/// with the dead connection), then check a clean exchange and one connection on each side.
async fn settle_and_exchange(
    a: &Transport<Msg>,
    to_b: &conclave_transport::PeerLink<Msg>,
    a_rx: &mut Rx,
    b: &Transport<Msg>,
    to_a: &conclave_transport::PeerLink<Msg>,
    b_rx: &mut Rx,
) {
    for (link, rx, from) in [
        (to_b, &mut *b_rx, a.node_id()),
        (to_a, &mut *a_rx, b.node_id()),
    ] {
        let mut seq = 1_000_000;
        loop {
            link.send(Msg::new(seq, 1)).await.unwrap();
            if let Ok(Some((src, _))) =
                tokio::time::timeout(Duration::from_millis(100), rx.recv()).await
            {
                assert_eq!(src, from);
                break;
            }
            seq += 1;
            assert!(seq < 1_000_100, "no message got through after a restart");
        }
        // Drain any stragglers of the probe.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while rx.try_recv().is_ok() {}
    }
    eventually("one connection each", || {
        a.connection_count() == 1 && b.connection_count() == 1
    })
    .await;
    exchange((a, to_b, a_rx), (b, to_a, b_rx), 0, 100).await;
    assert_eq!((a.connection_count(), b.connection_count()), (1, 1));
}

/// Both nodes stop consuming and keep sending to each other over their one connection: both
/// readers stall on full sinks, yet no write path waits on a read (they run in separate tasks),
/// so when the consumers resume everything accepted arrives, in order, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_stalled_do_not_deadlock_and_deliver_everything_after_resume() {
    let mut cfg_a = config(NodeId::new(1301), "t");
    cfg_a.max_queue_size = 100;
    let mut cfg_b = config(NodeId::new(1302), "t");
    cfg_b.max_queue_size = 100;
    let (a, a_addr, mut a_rx) = start(cfg_a, 4).await;
    let (b, b_addr, mut b_rx) = start(cfg_b, 4).await;
    let to_b = a.peer(NodeId::new(1302), b_addr);
    let to_a = b.peer(NodeId::new(1301), a_addr);
    // Fill both directions until both queues stay full.
    let mut sent = [0u64; 2];
    let mut full_rounds = 0;
    while full_rounds < 30 {
        let mut both_full = true;
        for (k, link) in [&to_b, &to_a].into_iter().enumerate() {
            match link.try_send(Msg::new(sent[k], 4096)) {
                Ok(()) => {
                    sent[k] += 1;
                    both_full = false;
                }
                Err(TrySendError::Full(_)) => {}
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        if both_full {
            full_rounds += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        } else {
            full_rounds = 0;
        }
        assert!(sent[0] < 20_000 && sent[1] < 20_000, "no backpressure");
    }
    assert_eq!((to_b.queued(), to_a.queued()), (100, 100));
    // Resume both consumers: everything accepted arrives in order, once.
    let (na, nb) = (sent[1], sent[0]);
    let ra = tokio::spawn(async move {
        for i in 0..na {
            let (from, m) = recv(&mut a_rx).await;
            assert_eq!((from, m.seq), (NodeId::new(1302), i));
        }
        a_rx
    });
    let rb = tokio::spawn(async move {
        for i in 0..nb {
            let (from, m) = recv(&mut b_rx).await;
            assert_eq!((from, m.seq), (NodeId::new(1301), i));
        }
        b_rx
    });
    let mut a_rx = ra.await.unwrap();
    let mut b_rx = rb.await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        a_rx.try_recv().is_err() && b_rx.try_recv().is_err(),
        "duplicates"
    );
    assert_eq!((a.connection_count(), b.connection_count()), (1, 1));
}

/// A peer whose process ends (its transport dropped: every socket closes, as with `kill -9`)
/// is reported to `connection_losses` subscribers, once; the dying side reports nothing of
/// its own shutdown, failed redials are not reported, and neither is the reconnection once
/// the peer is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_is_reported_lost_once() {
    let (a, a_addr, mut a_rx) = start(config(NodeId::new(1401), "t"), 256).await;
    let (b, b_addr, mut b_rx) = start(config(NodeId::new(1402), "t"), 256).await;
    let mut cfg_b = config(NodeId::new(1402), "t");
    cfg_b.listen = b_addr;
    let to_b = a.peer(NodeId::new(1402), b_addr);
    let to_a = b.peer(NodeId::new(1401), a_addr);
    exchange((&a, &to_b, &mut a_rx), (&b, &to_a, &mut b_rx), 0, 20).await;
    let mut a_losses = a.connection_losses();
    let mut b_losses = b.connection_losses();

    drop(to_a);
    drop(b);
    drop(b_rx);
    let lost = tokio::time::timeout(Duration::from_secs(10), a_losses.recv())
        .await
        .expect("the loss is reported")
        .expect("the transport is alive");
    assert_eq!(
        lost,
        conclave_transport::ConnectionLost {
            peer: NodeId::new(1402)
        }
    );
    // The dead side's channel closes without a report of its own.
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(10), b_losses.recv()).await,
        Ok(Err(tokio::sync::broadcast::error::RecvError::Closed))
    ));
    // A keeps redialling the dead address: failed dials are no lost connections.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(a_losses.try_recv().is_err(), "reported more than once");

    let (b, mut b_rx) = rebind(cfg_b, 256).await;
    let to_a = b.peer(NodeId::new(1401), a_addr);
    settle_and_exchange(&a, &to_b, &mut a_rx, &b, &to_a, &mut b_rx).await;
    assert!(a_losses.try_recv().is_err(), "a reconnection is no loss");
}
