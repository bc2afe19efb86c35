//! The TCP transport over real loopback sockets: delivery, bad input, timeouts, reconnects,
//! isolation of a dead peer.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::*;
use conclave_core::ids::NodeId;
use conclave_transport::handshake::{self, Hello};
use conclave_transport::metrics as names;
use conclave_transport::{CodecError, Endpoint, TrySendError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens a raw socket to `addr` and completes a valid handshake as node `me`.
async fn raw_peer(
    addr: std::net::SocketAddr,
    me: NodeId,
    them: NodeId,
    cluster: &str,
) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    handshake::dial(&mut s, &Hello::new(me, cluster).fresh(false), them, None)
        .await
        .unwrap();
    s
}

/// Waits until the remote side closes `s` (EOF or reset), failing after 5 s.
async fn assert_closed_by_peer(s: &mut TcpStream) {
    let mut buf = [0u8; 256];
    let r = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(r.is_ok(), "connection was not closed by the transport");
}

/// Binds on the address of a transport just dropped: its listener closes asynchronously (the
/// accept task sees the shutdown signal and returns), so retry briefly.
async fn rebind(
    cfg: conclave_transport::TransportConfig,
    cap: usize,
) -> (conclave_transport::Transport<Msg>, Rx) {
    for _ in 0..200 {
        let (tx, rx) = conclave_transport::inbound(cap);
        if let Ok((t, _)) = conclave_transport::Transport::bind(cfg.clone(), tx).await {
            return (t, rx);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("address still in use after 2 s");
}

/// Sends `n` messages from `from` to `to` and checks they all arrive in order.
async fn assert_flow(
    from: &conclave_transport::Transport<Msg>,
    to: (NodeId, std::net::SocketAddr),
    rx: &mut Rx,
    n: u64,
) {
    let link = from.peer(to.0, to.1);
    for i in 0..n {
        link.send(Msg::new(i, 16)).await.unwrap();
    }
    for i in 0..n {
        let (src, m) = recv(rx).await;
        assert_eq!(src, from.node_id());
        assert_eq!(m.seq, i);
    }
}

#[tokio::test]
async fn messages_flow_both_ways_in_order_and_are_counted() {
    let rec = metrics();
    let (a, a_addr, mut a_rx) = start(config(NodeId::new(101), "t"), 64).await;
    let (b, b_addr, mut b_rx) = start(config(NodeId::new(102), "t"), 64).await;
    let to_b = a.peer(NodeId::new(102), b_addr);
    let to_a = b.peer(NodeId::new(101), a_addr);
    for i in 0..1000 {
        to_b.send(Msg::new(i, 100)).await.unwrap();
        to_a.send(Msg::new(i, 10)).await.unwrap();
    }
    for i in 0..1000 {
        assert_eq!(recv(&mut b_rx).await, (NodeId::new(101), Msg::new(i, 100)));
        assert_eq!(recv(&mut a_rx).await, (NodeId::new(102), Msg::new(i, 10)));
    }
    // The same link is handed out again: one queue per peer.
    assert_eq!(a.peer(NodeId::new(102), b_addr).peer(), NodeId::new(102));
    let out = [("node", "101"), ("peer", "102"), ("direction", "out")];
    let inn = [("node", "102"), ("peer", "101"), ("direction", "in")];
    assert_eq!(rec.get(names::FRAMES_TOTAL, &out), 1000);
    eventually("inbound counters", || {
        rec.get(names::FRAMES_TOTAL, &inn) >= 1000
    })
    .await;
    assert!(rec.get(names::BYTES_TOTAL, &out) > 100 * 1000);
    assert_eq!(
        rec.get(names::BYTES_TOTAL, &out),
        rec.get(names::BYTES_TOTAL, &inn)
    );
}

#[tokio::test]
async fn oversized_message_is_refused_at_the_sender_with_the_message() {
    let (a, _, _) = start(config(NodeId::new(111), "t"), 8).await;
    let (_b, b_addr, _b_rx) = start(config(NodeId::new(112), "t"), 8).await;
    let link = a.peer(NodeId::new(112), b_addr);
    let big = Msg::new(1, 70 * 1024);
    match link.try_send(big.clone()) {
        Err(TrySendError::Encode(m, CodecError::FrameTooLarge { max, .. })) => {
            assert_eq!(m, big);
            assert_eq!(max, 64 * 1024);
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_cluster_is_refused_counted_and_never_delivered() {
    let rec = metrics();
    let (a, _, _a_rx) = start(config(NodeId::new(121), "t"), 8).await;
    let (stranger, _, _s_rx) = start(config(NodeId::new(123), "other-cluster"), 8).await;
    let (_b, b_addr, mut b_rx) = start(config(NodeId::new(122), "t"), 8).await;
    let bad = stranger.peer(NodeId::new(122), b_addr);
    bad.try_send(Msg::new(0, 1)).unwrap();
    let labels = [("node", "122"), ("reason", "wrong_cluster")];
    eventually("refusal counted on the acceptor", || {
        rec.get(names::HANDSHAKE_REFUSED_TOTAL, &labels) >= 1
    })
    .await;
    eventually("refusal counted on the dialer", || {
        rec.get(
            names::HANDSHAKE_REFUSED_TOTAL,
            &[
                ("node", "123"),
                ("peer", "122"),
                ("reason", "refused_by_peer"),
            ],
        ) >= 1
    })
    .await;
    // A good peer still gets through, and only its messages reach the handler.
    assert_flow(&a, (NodeId::new(122), b_addr), &mut b_rx, 5).await;
    assert!(
        b_rx.try_recv().is_err(),
        "the stranger's message was delivered"
    );
}

#[tokio::test]
async fn unsupported_version_is_refused() {
    let rec = metrics();
    let (_b, b_addr, mut b_rx) = start(config(NodeId::new(132), "t"), 8).await;
    let mut s = TcpStream::connect(b_addr).await.unwrap();
    let future = Hello {
        version: handshake::PROTOCOL_VERSION + 1,
        ..Hello::new(NodeId::new(131), "t")
    };
    s.write_all(&future.encode()).await.unwrap();
    assert_closed_by_peer(&mut s).await;
    assert!(
        rec.get(
            names::HANDSHAKE_REFUSED_TOTAL,
            &[("node", "132"), ("reason", "unsupported_version")]
        ) >= 1
    );
    assert!(b_rx.try_recv().is_err());
}

#[tokio::test]
async fn garbage_bytes_close_only_that_connection() {
    let rec = metrics();
    let (a, _, _a_rx) = start(config(NodeId::new(141), "t"), 8).await;
    let (_b, b_addr, mut b_rx) = start(config(NodeId::new(142), "t"), 8).await;
    assert_flow(&a, (NodeId::new(142), b_addr), &mut b_rx, 3).await;
    let mut s = TcpStream::connect(b_addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_closed_by_peer(&mut s).await;
    assert!(
        rec.get(
            names::HANDSHAKE_REFUSED_TOTAL,
            &[("node", "142"), ("reason", "bad_magic")]
        ) >= 1
    );
    // The established peer is unaffected: same link, no reconnect.
    let link = a.peer(NodeId::new(142), b_addr);
    link.send(Msg::new(99, 1)).await.unwrap();
    assert_eq!(recv(&mut b_rx).await.1.seq, 99);
    assert_eq!(
        rec.get(names::RECONNECTS_TOTAL, &[("node", "141"), ("peer", "142")]),
        0
    );
}

/// Each bad frame after a valid handshake closes that connection with its own reason.
#[tokio::test]
async fn bad_frames_after_handshake_close_the_connection_with_a_reason() {
    let rec = metrics();
    let (a, _, _a_rx) = start(config(NodeId::new(151), "t"), 8).await;
    let (_b, b_addr, mut b_rx) = start(config(NodeId::new(152), "t"), 8).await;

    let mut oversized = BytesMut::new();
    oversized.put_u32(64 * 1024 + 1);
    oversized.put_slice(&[0u8; 16]);

    let mut undecodable = BytesMut::new();
    undecodable.put_u32(3);
    undecodable.put_slice(&[0xc1, 0xc1, 0xc1]);

    let mut wrong_type = BytesMut::new(); // valid MessagePack, not a Msg
    wrong_type.put_u32(1);
    wrong_type.put_u8(0x2a);

    let mut trailing = BytesMut::new();
    let frame = conclave_transport::codec::encode_frame(&Msg::new(1, 1), 1024).unwrap();
    trailing.put_u32((frame.len() - 4 + 1) as u32);
    trailing.put_slice(&frame[4..]);
    trailing.put_u8(0);

    let mut truncated = BytesMut::new();
    truncated.put_u32(100);
    truncated.put_slice(&[0x92; 10]);

    let cases: [(&str, &[u8], bool); 5] = [
        ("frame_too_large", &oversized, false),
        ("undecodable_body", &undecodable, false),
        ("undecodable_body", &wrong_type, false),
        ("trailing_bytes", &trailing, false),
        ("truncated", &truncated, true),
    ];
    for (i, (reason, bytes, half_close)) in cases.into_iter().enumerate() {
        let labels = [("node", "152"), ("peer", "159"), ("reason", reason)];
        let before = rec.get(names::DECODE_ERRORS_TOTAL, &labels);
        let mut s = raw_peer(b_addr, NodeId::new(159), NodeId::new(152), "t").await;
        s.write_all(bytes).await.unwrap();
        if half_close {
            s.shutdown().await.unwrap();
        }
        assert_closed_by_peer(&mut s).await;
        eventually(&format!("case {i} counted as {reason}"), || {
            rec.get(names::DECODE_ERRORS_TOTAL, &labels) > before
        })
        .await;
    }
    assert!(b_rx.try_recv().is_err(), "a bad frame reached the handler");
    // Other peers are unaffected.
    assert_flow(&a, (NodeId::new(152), b_addr), &mut b_rx, 3).await;
}

#[tokio::test]
async fn a_connection_that_says_nothing_is_closed_after_the_handshake_timeout() {
    let rec = metrics();
    let mut cfg = config(NodeId::new(162), "t");
    cfg.handshake_timeout = Duration::from_millis(200);
    let (_b, b_addr, _b_rx) = start(cfg, 8).await;
    let mut s = TcpStream::connect(b_addr).await.unwrap();
    assert_closed_by_peer(&mut s).await;
    assert!(
        rec.get(
            names::HANDSHAKE_REFUSED_TOTAL,
            &[("node", "162"), ("reason", "timeout")]
        ) >= 1
    );
}

#[tokio::test]
async fn a_silent_peer_is_dropped_but_keepalives_keep_an_idle_link_up() {
    let rec = metrics();
    let mut cfg_b = config(NodeId::new(172), "t");
    cfg_b.read_timeout = Duration::from_millis(300);
    cfg_b.keepalive_interval = Duration::from_millis(50);
    let (_b, b_addr, mut b_rx) = start(cfg_b, 8).await;

    // A handshaken peer that then says nothing is cut after read_timeout.
    let mut s = raw_peer(b_addr, NodeId::new(179), NodeId::new(172), "t").await;
    assert_closed_by_peer(&mut s).await;
    assert_eq!(
        rec.get(
            names::READ_TIMEOUTS_TOTAL,
            &[("node", "172"), ("peer", "179")]
        ),
        1
    );

    // A real transport idling for 3x the peer's read timeout stays connected via keep-alives.
    let mut cfg_a = config(NodeId::new(171), "t");
    cfg_a.keepalive_interval = Duration::from_millis(50);
    let (a, _, _a_rx) = start(cfg_a, 8).await;
    let link = a.peer(NodeId::new(172), b_addr);
    link.send(Msg::new(1, 1)).await.unwrap();
    assert_eq!(recv(&mut b_rx).await.1.seq, 1);
    tokio::time::sleep(Duration::from_millis(900)).await;
    link.send(Msg::new(2, 1)).await.unwrap();
    assert_eq!(recv(&mut b_rx).await.1.seq, 2);
    assert_eq!(
        rec.get(
            names::READ_TIMEOUTS_TOTAL,
            &[("node", "172"), ("peer", "171")]
        ),
        0
    );
    assert_eq!(
        rec.get(names::RECONNECTS_TOTAL, &[("node", "171"), ("peer", "172")]),
        0
    );
}

#[tokio::test]
async fn a_restarted_peer_is_reconnected_and_queued_messages_are_delivered() {
    let rec = metrics();
    let (a, _, _a_rx) = start(config(NodeId::new(181), "t"), 8).await;
    let (b, b_addr, mut b_rx) = start(config(NodeId::new(182), "t"), 64).await;
    assert_flow(&a, (NodeId::new(182), b_addr), &mut b_rx, 3).await;
    drop(b);
    drop(b_rx);
    // Let the writer notice the close before queueing, so nothing is written into a dead socket.
    let link = a.peer(NodeId::new(182), b_addr);
    eventually("reconnect attempts", || {
        rec.get(names::RECONNECTS_TOTAL, &[("node", "181"), ("peer", "182")]) >= 2
    })
    .await;
    for i in 0..50 {
        link.try_send(Msg::new(i, 8)).unwrap();
    }
    let mut cfg = config(NodeId::new(182), "t");
    cfg.listen = b_addr;
    let (_b2, mut b2_rx) = rebind(cfg, 64).await;
    for i in 0..50 {
        assert_eq!(recv(&mut b2_rx).await, (NodeId::new(181), Msg::new(i, 8)));
    }
}

#[tokio::test]
async fn a_dead_peer_fills_only_its_own_queue() {
    let rec = metrics();
    let mut cfg = config(NodeId::new(191), "t");
    cfg.max_queue_size = 100;
    let (a, _, _a_rx) = start(cfg, 8).await;
    let (_b, b_addr, mut b_rx) = start(config(NodeId::new(192), "t"), 256).await;
    // A port with nothing listening.
    let dead_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dead = a.peer(NodeId::new(193), dead_addr);
    let mut accepted = 0;
    let full = loop {
        match dead.try_send(Msg::new(accepted, 8)) {
            Ok(()) => accepted += 1,
            Err(TrySendError::Full(m)) => break m,
            Err(e) => panic!("unexpected {e:?}"),
        }
        assert!(accepted <= 100);
    };
    assert_eq!(accepted, 100);
    assert_eq!(full, Msg::new(100, 8));
    assert_eq!(dead.queued(), 100);
    assert!(rec.get(names::QUEUE_FULL_TOTAL, &[("node", "191"), ("peer", "193")]) >= 1);
    // Traffic to the live peer is unaffected.
    assert_flow(&a, (NodeId::new(192), b_addr), &mut b_rx, 200).await;
}

#[tokio::test]
async fn shutdown_closes_links() {
    let (a, _, _a_rx) = start(config(NodeId::new(201), "t"), 8).await;
    let (_b, b_addr, _b_rx) = start(config(NodeId::new(202), "t"), 8).await;
    let link = a.peer(NodeId::new(202), b_addr);
    a.shutdown();
    eventually("link closed", || link.is_closed()).await;
    assert!(matches!(
        link.try_send(Msg::new(0, 0)),
        Err(TrySendError::Closed(_))
    ));
}

#[tokio::test]
async fn links_can_be_created_and_used_from_a_plain_thread() {
    let (a, _, _a_rx) = start(config(NodeId::new(211), "t"), 8).await;
    let (_b, b_addr, mut b_rx) = start(config(NodeId::new(212), "t"), 8).await;
    let a = std::sync::Arc::new(a);
    let a2 = std::sync::Arc::clone(&a);
    std::thread::spawn(move || {
        let link = a2.peer(NodeId::new(212), b_addr);
        link.try_send(Msg::new(5, 5)).unwrap();
    })
    .join()
    .unwrap();
    assert_eq!(recv(&mut b_rx).await, (NodeId::new(211), Msg::new(5, 5)));
}

#[tokio::test]
async fn connections_beyond_max_connections_are_refused() {
    let rec = metrics();
    let mut cfg = config(NodeId::new(222), "t");
    cfg.max_connections = 1;
    let (_b, b_addr, mut b_rx) = start(cfg, 8).await;
    let (a, _, _a_rx) = start(config(NodeId::new(221), "t"), 8).await;
    a.peer(NodeId::new(222), b_addr)
        .send(Msg::new(1, 1))
        .await
        .unwrap();
    assert_eq!(recv(&mut b_rx).await.1.seq, 1);
    // A second authenticated peer finds the only connection slot taken.
    let mut extra = TcpStream::connect(b_addr).await.unwrap();
    let r = handshake::dial(
        &mut extra,
        &Hello::new(NodeId::new(223), "t").fresh(false),
        NodeId::new(222),
        None,
    )
    .await;
    assert!(
        r.is_err(),
        "a connection beyond max_connections was accepted"
    );
    assert!(
        rec.get(
            names::HANDSHAKE_REFUSED_TOTAL,
            &[("node", "222"), ("reason", "too_many_connections")]
        ) >= 1
    );
}

/// A peer restarted in the middle of a stream: what arrives is in order with no duplicates
/// (delivery is at most once across a reconnect), and the stream resumes on the new process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_under_load_keeps_order_without_duplicates() {
    let (a, _, _a_rx) = start(config(NodeId::new(231), "t"), 8).await;
    let (b, b_addr, mut b_rx) = start(config(NodeId::new(232), "t"), 10_000).await;
    let link = a.peer(NodeId::new(232), b_addr);
    let sender = {
        let link = link.clone();
        tokio::spawn(async move {
            for i in 0..4000u64 {
                link.send(Msg::new(i, 32)).await.unwrap();
                if i % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
    };
    // Take the first part of the stream, then kill B mid-stream.
    let mut seen = vec![];
    while seen.len() < 500 {
        seen.push(recv(&mut b_rx).await.1.seq);
    }
    drop(b);
    while let Ok((_, m)) = b_rx.try_recv() {
        seen.push(m.seq);
    }
    drop(b_rx);
    let mut cfg = config(NodeId::new(232), "t");
    cfg.listen = b_addr;
    let (_b2, mut b2_rx) = rebind(cfg, 10_000).await;
    sender.await.unwrap();
    // The last message always arrives: it was queued after the writer reconnected or waits
    // in the queue for it.
    loop {
        let seq = recv(&mut b2_rx).await.1.seq;
        seen.push(seq);
        if seq == 3999 {
            break;
        }
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "out of order or duplicated"
    );
    assert!(seen.len() > 1000, "only {} of 4000 arrived", seen.len());
}

/// A message whose payload is a `shared_bytes` field.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct SharedMsg {
    seq: u64,
    #[serde(with = "conclave_transport::shared_bytes")]
    payload: bytes::Bytes,
}

/// `shared_bytes` payloads (of at least `SHARE_MIN` bytes) of the messages of one read are
/// views into one buffer, back to back at exactly the distance of one frame (copies would be
/// separate allocations), and hold the bytes that were sent; a bad frame after them still
/// closes the connection.
#[tokio::test]
async fn shared_bytes_payloads_are_views_into_the_read_buffer() {
    let rec = metrics();
    let (tx, mut rx) = conclave_transport::inbound::<SharedMsg>(8);
    let (_b, b_addr) = conclave_transport::Transport::bind(config(NodeId::new(172), "t"), tx)
        .await
        .unwrap();
    let mut s = raw_peer(b_addr, NodeId::new(179), NodeId::new(172), "t").await;
    let mut wire = BytesMut::new();
    let n = 100u64;
    for seq in 0..n {
        let m = SharedMsg {
            seq: (1 << 40) | seq,
            payload: bytes::Bytes::from(vec![(seq % 251) as u8; 600]),
        };
        conclave_transport::codec::encode_frame_into(&m, 4096, &mut wire).unwrap();
    }
    let frame_len = wire.len() / n as usize;
    s.write_all(&wire).await.unwrap();
    let mut got = 0u64;
    let mut adjacent_pairs = 0;
    while got < n {
        let batch = tokio::time::timeout(Duration::from_secs(10), rx.recv_batch())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(batch.from, NodeId::new(179));
        for (i, m) in batch.msgs.iter().enumerate() {
            assert_eq!(m.seq, (1 << 40) | (got + i as u64));
            assert_eq!(&m.payload[..], &[((got + i as u64) % 251) as u8; 600][..]);
        }
        for w in batch.msgs.windows(2) {
            let gap = (w[1].payload.as_ptr() as usize).wrapping_sub(w[0].payload.as_ptr() as usize);
            assert_eq!(
                gap, frame_len,
                "payloads are not views into one read buffer"
            );
            adjacent_pairs += 1;
        }
        got += batch.msgs.len() as u64;
    }
    assert!(
        adjacent_pairs > 0,
        "every message came in a read of its own"
    );
    // Bad input is still refused after the change of decoding path.
    let labels = [
        ("node", "172"),
        ("peer", "179"),
        ("reason", "undecodable_body"),
    ];
    let before = rec.get(names::DECODE_ERRORS_TOTAL, &labels);
    s.write_all(&[0, 0, 0, 2, 0xc1, 0xc1]).await.unwrap();
    assert_closed_by_peer(&mut s).await;
    eventually("undecodable body counted", || {
        rec.get(names::DECODE_ERRORS_TOTAL, &labels) > before
    })
    .await;
}
