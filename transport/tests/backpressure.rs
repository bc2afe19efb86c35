//! Backpressure end to end over loopback TCP: a consumer that stops reading fills the sender's
//! queue; `try_send` then returns `Full` with the message and nothing more is accepted (memory
//! stays bounded); once the consumer resumes, every accepted message arrives in order, once.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use conclave_core::ids::NodeId;
use conclave_transport::metrics as names;
use conclave_transport::{Endpoint, TrySendError};

const QUEUE: usize = 200;
const SIZE: usize = 4096;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_fills_the_queue_and_everything_arrives_after_resume() {
    let rec = metrics();
    let mut cfg = config(NodeId::new(301), "t");
    cfg.max_queue_size = QUEUE;
    let (a, _, _a_rx) = start(cfg, 8).await;
    // The consumer: an inbound channel of 4 that nobody reads for now.
    let (_b, b_addr, mut b_rx) = start(config(NodeId::new(302), "t"), 4).await;
    let link = a.peer(NodeId::new(302), b_addr);

    // Push until the queue stays full: socket buffers fill first, then the queue.
    let mut accepted: u64 = 0;
    let mut full_since: Option<tokio::time::Instant> = None;
    loop {
        match link.try_send(Msg::new(accepted, SIZE)) {
            Ok(()) => {
                accepted += 1;
                full_since = None;
            }
            Err(TrySendError::Full(m)) => {
                // The refused message comes back intact, so the caller can keep it.
                assert_eq!(m, Msg::new(accepted, SIZE));
                let since = *full_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() > Duration::from_millis(300) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
        // Kernel buffers on loopback hold a few MiB; anything far beyond means no backpressure.
        assert!(
            accepted < 20_000,
            "sender never saw Full: no backpressure (accepted {accepted})"
        );
    }
    assert_eq!(link.queued(), QUEUE, "the queue is exactly full");
    assert!(rec.get(names::QUEUE_FULL_TOTAL, &[("node", "301"), ("peer", "302")]) >= 1);

    // Stalled: for a while, nothing more is accepted and nothing is lost.
    for _ in 0..20 {
        assert!(matches!(
            link.try_send(Msg::new(accepted, SIZE)),
            Err(TrySendError::Full(_))
        ));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The awaitable send waits rather than failing.
    let waiting = tokio::time::timeout(
        Duration::from_millis(100),
        link.send(Msg::new(accepted, SIZE)),
    )
    .await;
    assert!(
        waiting.is_err(),
        "send() should wait while the queue is full"
    );
    let in_transit = accepted as usize - QUEUE;
    println!("accepted {accepted}: {QUEUE} queued, {in_transit} in socket buffers / the reader");

    // Resume: one message in flight from the blocking send above plus everything accepted.
    let sender = {
        let link = link.clone();
        tokio::spawn(async move { link.send(Msg::new(accepted, SIZE)).await })
    };
    for i in 0..=accepted {
        let (from, m) = recv(&mut b_rx).await;
        assert_eq!(from, NodeId::new(301));
        assert_eq!(m.seq, i, "out of order or lost");
        assert_eq!(m.payload.len(), SIZE);
    }
    sender.await.unwrap().unwrap();
    // Exactly once: nothing after the last one.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(b_rx.try_recv().is_err(), "a message was delivered twice");
    assert_eq!(link.queued(), 0);
}
