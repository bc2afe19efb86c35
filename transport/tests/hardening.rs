//! Issue 12's network findings at the transport level: impersonation (2), slot exhaustion by
//! strangers (5), a peer that never reads and byte-unbounded queues (13). Finding 15 (the
//! certificate names the node id) is in `tls.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use conclave_core::ids::NodeId;
use conclave_transport::handshake::{self, Hello, Refusal};
use conclave_transport::metrics as names;
use conclave_transport::{ClusterSecret, Endpoint, HandshakeError, TrySendError};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "0123456789abcdef-test-secret";

fn members(ids: &[u64]) -> Option<BTreeSet<NodeId>> {
    Some(ids.iter().copied().map(NodeId::new).collect())
}

/// Finding 2: with a cluster secret and an allowlist, a socket claiming to be a live member
/// (without the secret, or with a wrong one) or a non-member is refused before it is told
/// anything about the pair's connection, and the real member's connection keeps carrying the
/// traffic both ways.
#[tokio::test]
async fn finding2_impersonated_member_cannot_take_over_a_connection() {
    let rec = metrics();
    let mut cfg_a = config(NodeId::new(501), "t");
    cfg_a.secret = Some(ClusterSecret::new(SECRET));
    cfg_a.allowed_peers = members(&[501, 502]);
    let mut cfg_b = config(NodeId::new(502), "t");
    cfg_b.secret = Some(ClusterSecret::new(SECRET));
    cfg_b.allowed_peers = members(&[501, 502]);
    let (a, a_addr, mut a_rx) = start(cfg_a, 64).await;
    let (b, b_addr, mut b_rx) = start(cfg_b, 64).await;
    a.peer(NodeId::new(502), b_addr)
        .send(Msg::new(1, 1))
        .await
        .unwrap();
    assert_eq!(recv(&mut b_rx).await, (NodeId::new(501), Msg::new(1, 1)));
    let to_a = b.peer(NodeId::new(501), a_addr);

    // Posing as 501 without the secret: refused at the hello.
    let mut s = TcpStream::connect(b_addr).await.unwrap();
    let err = handshake::dial_status(
        &mut s,
        &Hello::new(NodeId::new(501), "t").fresh(false),
        NodeId::new(502),
        None,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, HandshakeError::Refused(Refusal::RefusedByPeer(11))),
        "{err}"
    );
    // Posing as 501 with a guessed secret: the acceptor's proof does not verify, and the
    // acceptor never gets a valid proof; it refuses.
    let mut s = TcpStream::connect(b_addr).await.unwrap();
    let guess = ClusterSecret::new("a guessed secret, but wrong");
    let err = handshake::dial_status(
        &mut s,
        &Hello::new(NodeId::new(501), "t").fresh(true),
        NodeId::new(502),
        Some(&guess),
    )
    .await
    .unwrap_err();
    assert_eq!(err.label(), "auth_failed");
    // A non-member id: refused, even with the right secret.
    let mut s = TcpStream::connect(b_addr).await.unwrap();
    let secret = ClusterSecret::new(SECRET);
    let err = handshake::dial_status(
        &mut s,
        &Hello::new(NodeId::new(777), "t").fresh(true),
        NodeId::new(502),
        Some(&secret),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, HandshakeError::Refused(Refusal::RefusedByPeer(10))),
        "{err}"
    );
    eventually("refusals counted", || {
        let r = |reason| {
            rec.get(
                names::HANDSHAKE_REFUSED_TOTAL,
                &[("node", "502"), ("reason", reason)],
            )
        };
        r("secret_mismatch") >= 1 && r("not_member") >= 1
    })
    .await;

    // The real 501 still gets what B sends to 501, over the original connection.
    to_a.send(Msg::new(2, 1)).await.unwrap();
    assert_eq!(recv(&mut a_rx).await, (NodeId::new(502), Msg::new(2, 1)));
    a.peer(NodeId::new(502), b_addr)
        .send(Msg::new(3, 1))
        .await
        .unwrap();
    assert_eq!(recv(&mut b_rx).await, (NodeId::new(501), Msg::new(3, 1)));
    assert_eq!(
        rec.get(
            names::DIAL_CONFLICTS_TOTAL,
            &[("node", "502"), ("resolution", "replaced_stale")]
        ),
        0,
        "an impostor replaced the member's connection"
    );
    assert_eq!(
        rec.get(names::CONNECTIONS_TOTAL, &[("node", "502")]),
        1,
        "B adopted a second connection"
    );
}

/// Finding 2, allowlist alone (no secret): a non-member id is refused and never delivers.
#[tokio::test]
async fn finding2_non_member_ids_are_refused_by_the_allowlist() {
    let rec = metrics();
    let mut cfg_b = config(NodeId::new(532), "t");
    cfg_b.allowed_peers = members(&[531, 532]);
    let (b, b_addr, mut b_rx) = start(cfg_b, 8).await;
    let (stranger, _, _s_rx) = start(config(NodeId::new(533), "t"), 8).await;
    stranger
        .peer(NodeId::new(532), b_addr)
        .try_send(Msg::new(0, 1))
        .unwrap();
    eventually("not_member counted", || {
        rec.get(
            names::HANDSHAKE_REFUSED_TOTAL,
            &[("node", "532"), ("reason", "not_member")],
        ) >= 1
    })
    .await;
    assert!(b_rx.try_recv().is_err());
    // Admitting it at runtime (a node being added) lets it in.
    b.allow_peer(NodeId::new(533));
    eventually("admitted after allow_peer", || b_rx.try_recv().is_ok()).await;
}

/// Issue 14: a node that admits any authenticated peer (no allowlist: a member that may lag
/// behind a membership change) still refuses the ids it was told are removed, and only those.
#[tokio::test]
async fn denied_ids_are_refused_even_without_an_allowlist() {
    let rec = metrics();
    let mut cfg_b = config(NodeId::new(542), "t");
    cfg_b.secret = Some(ClusterSecret::new(SECRET));
    let (b, b_addr, mut b_rx) = start(cfg_b, 8).await;
    b.set_denied_peers(BTreeSet::from([NodeId::new(543)]));
    let mut cfg_r = config(NodeId::new(543), "t");
    cfg_r.secret = Some(ClusterSecret::new(SECRET));
    let (removed, _, _r_rx) = start(cfg_r, 8).await;
    removed
        .peer(NodeId::new(542), b_addr)
        .try_send(Msg::new(0, 1))
        .unwrap();
    eventually("the removed id refused as not_member", || {
        rec.get(
            names::HANDSHAKE_REFUSED_TOTAL,
            &[("node", "542"), ("reason", "not_member")],
        ) >= 1
    })
    .await;
    assert!(b_rx.try_recv().is_err());
    // Another authenticated id, named by no allowlist, gets in.
    let mut cfg_o = config(NodeId::new(544), "t");
    cfg_o.secret = Some(ClusterSecret::new(SECRET));
    let (other, _, _o_rx) = start(cfg_o, 8).await;
    other
        .peer(NodeId::new(542), b_addr)
        .send(Msg::new(1, 1))
        .await
        .unwrap();
    assert_eq!(recv(&mut b_rx).await, (NodeId::new(544), Msg::new(1, 1)));
    // Taken off the denied set (re-added), the removed id gets in too.
    b.set_denied_peers(BTreeSet::new());
    let to_b = removed.peer(NodeId::new(542), b_addr);
    eventually("admitted once no longer denied", || {
        let _ = to_b.try_send(Msg::new(2, 1));
        matches!(b_rx.try_recv(), Ok((from, _)) if from == NodeId::new(543))
    })
    .await;
}

/// Finding 5: 64 strangers completing the handshake, plus idle sockets that never say
/// anything, do not keep a member out: strangers are refused at the hello, idle sockets hold
/// only a slot of the small pre-auth budget, for `handshake_timeout`.
#[tokio::test]
async fn finding5_idle_connections_do_not_hold_the_members_slots() {
    let rec = metrics();
    let mut cfg_b = config(NodeId::new(512), "t");
    cfg_b.allowed_peers = members(&[511, 512]);
    cfg_b.max_connections = 64;
    cfg_b.max_pending_handshakes = 8;
    cfg_b.handshake_timeout = Duration::from_millis(500);
    let (_b, b_addr, mut b_rx) = start(cfg_b, 8).await;
    let mut held = Vec::new();
    for i in 0..64 {
        let mut s = TcpStream::connect(b_addr).await.unwrap();
        let r = handshake::dial(
            &mut s,
            &Hello::new(NodeId::new(1000 + i), "t").fresh(false),
            NodeId::new(512),
            None,
        )
        .await;
        assert!(r.is_err(), "stranger {} completed the handshake", 1000 + i);
        held.push(s);
    }
    for _ in 0..16 {
        held.push(TcpStream::connect(b_addr).await.unwrap());
    }
    // The member gets in (at the latest once the idle sockets' handshake time is up).
    let (a, _, _a_rx) = start(config(NodeId::new(511), "t"), 8).await;
    a.peer(NodeId::new(512), b_addr)
        .send(Msg::new(9, 1))
        .await
        .unwrap();
    assert_eq!(recv(&mut b_rx).await, (NodeId::new(511), Msg::new(9, 1)));
    assert!(
        rec.get(
            names::HANDSHAKE_REFUSED_TOTAL,
            &[("node", "512"), ("reason", "not_member")]
        ) >= 64
    );
    assert_eq!(
        rec.get(
            names::HANDSHAKE_REFUSED_TOTAL,
            &[("node", "512"), ("reason", "too_many_connections")]
        ),
        0
    );
}

/// Finding 13: a peer that completes the handshake and then never reads. The writer's write
/// times out, the connection is closed and counted, and the driver reconnects.
#[tokio::test]
async fn finding13_a_peer_that_never_reads_does_not_stall_the_writer() {
    let rec = metrics();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_addr = listener.local_addr().unwrap();
    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut keep = Vec::new();
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let ours = Hello::new(NodeId::new(522), "t").fresh(false);
            if handshake::accept(&mut s, &ours, None).await.is_ok() {
                let _ = accepted_tx.send(());
                keep.push(s); // never read from it
            }
        }
    });
    let mut cfg = config(NodeId::new(521), "t");
    cfg.write_timeout = Duration::from_millis(300);
    cfg.read_timeout = Duration::from_secs(60);
    cfg.keepalive_interval = Duration::from_secs(20);
    let (a, _, _a_rx) = start(cfg, 8).await;
    let link = a.peer(NodeId::new(522), fake_addr);
    let big = Msg::new(1, 60 * 1024);
    tokio::time::timeout(Duration::from_secs(5), accepted_rx.recv())
        .await
        .unwrap()
        .unwrap();
    // Keep the queue full until the write times out and the driver reconnects.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut reconnected = false;
    while tokio::time::Instant::now() < deadline {
        match link.try_send(big.clone()) {
            Ok(()) | Err(TrySendError::Full(_)) => {}
            Err(e) => panic!("{e:?}"),
        }
        if accepted_rx.try_recv().is_ok() {
            reconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        reconnected,
        "the writer stayed stuck on a peer that never reads"
    );
    assert!(
        rec.get(
            names::WRITE_TIMEOUTS_TOTAL,
            &[("node", "521"), ("peer", "522")]
        ) >= 1
    );
}

/// Finding 13: the outbound queue is bounded in bytes, not only in frames.
#[tokio::test]
async fn finding13_outbound_queue_is_bounded_in_bytes() {
    let mut cfg = config(NodeId::new(541), "t");
    cfg.max_queue_size = 5000;
    cfg.max_frame_size = 16 * 1024;
    cfg.max_queue_bytes = 64 * 1024;
    let (a, _, _a_rx) = start(cfg, 8).await;
    // Nobody listens there: everything stays queued.
    let nowhere = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = nowhere.local_addr().unwrap();
    drop(nowhere);
    let link = a.peer(NodeId::new(542), addr);
    let mut queued = 0;
    for i in 0..5000 {
        match link.try_send(Msg::new(i, 1000)) {
            Ok(()) => queued += 1,
            Err(TrySendError::Full(_)) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(
        queued > 0 && queued < 70,
        "{queued} messages of ~1 KB queued under a 64 KiB bound"
    );
    assert!(link.queued_bytes() <= 64 * 1024);
    // A frame larger than what is left still fits once the queue is empty: never starved.
    let mut s = TcpStream::connect(a.local_addr()).await.unwrap();
    let mut buf = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_millis(10), s.read(&mut buf)).await;
}
