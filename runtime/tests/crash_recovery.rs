//! Restart after kill -9 at random points in a write loop: no acknowledged write is lost and
//! none is replayed out of order ("duplicated" over a later write).
//!
//! Four writers each own ten keys and overwrite them with increasing sequence numbers, one
//! request at a time. After every kill and restart, each key must hold a value between the last
//! acknowledged write to it and the last one attempted (an unacknowledged write may or may not
//! have applied; an older value means an acknowledged write was lost, a stale replay, or a
//! duplicate applied over a later write).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Cluster;
use conclave::client::Client;
use conclave::config::ReadLevel;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

#[derive(Clone, Default)]
struct Book {
    writes_acked: u64,
    acked: BTreeMap<String, u64>,
    attempted: BTreeMap<String, u64>,
}

async fn writer(
    endpoint: String,
    w: u64,
    first_seq: u64,
    book: Rc<RefCell<Book>>,
    stop: Rc<RefCell<bool>>,
) {
    let client = Client::with_timeout(&endpoint, Duration::from_secs(2)).unwrap();
    let mut seq = first_seq;
    while !*stop.borrow() {
        let key = format!("w{w}-k{}", seq % 10);
        book.borrow_mut().attempted.insert(key.clone(), seq);
        if client
            .put(key.as_bytes(), seq.to_string().into_bytes(), None)
            .await
            .is_ok()
        {
            let mut b = book.borrow_mut();
            b.acked.insert(key, seq);
            b.writes_acked += 1;
        } else {
            // The node is down: stop writing until the next cycle.
            break;
        }
        seq += 1;
    }
}

async fn check(c: &Cluster, nodes: usize, book: &Book) {
    for i in 0..nodes {
        let client = c.client(i);
        for (key, &attempted) in &book.attempted {
            let acked = book.acked.get(key).copied();
            let got = client
                .get(key.as_bytes(), Some(ReadLevel::Stale))
                .await
                .unwrap();
            let got: Option<u64> = got.map(|v| String::from_utf8(v).unwrap().parse().unwrap());
            match (acked, got) {
                (Some(a), Some(g)) => assert!(
                    a <= g && g <= attempted,
                    "node {} key {key}: holds {g}, acknowledged {a}, last attempted {attempted}\n{}",
                    i + 1,
                    c.logs()
                ),
                (Some(a), None) => panic!("node {} lost key {key} (acknowledged {a})\n{}", i + 1, c.logs()),
                (None, _) => {}
            }
        }
    }
}

async fn crash_cycles(nodes: u64, cycles: u64, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), nodes);
    let book = Rc::new(RefCell::new(Book::default()));
    let mut rng = seed;
    for cycle in 0..cycles {
        let leader = c.leader(Duration::from_secs(15)).await;
        let endpoint = c.endpoint(leader);
        let stop = Rc::new(RefCell::new(false));
        let tasks: Vec<_> = (0..4)
            .map(|w| {
                actix::spawn(writer(
                    endpoint.clone(),
                    w,
                    (cycle + 1) * 1_000_000,
                    book.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        actix::clock::sleep(Duration::from_millis(100 + rng % 400)).await;
        // kill -9 every node at once: only what was fsynced survives anywhere.
        for i in 0..nodes as usize {
            c.kill9(i);
        }
        *stop.borrow_mut() = true;
        for t in tasks {
            t.await.unwrap();
        }
        for i in 0..nodes as usize {
            c.restart(i);
        }
        // A write committed in the new leader's term marks a point every node must reach: the
        // new leader's commit index right after its election can still be behind.
        let mut barrier = None;
        for _ in 0..300 {
            let leader = c.leader(Duration::from_secs(15)).await;
            if let Ok(ack) = c
                .client(leader)
                .put(format!("barrier-{cycle}").as_bytes(), b"x".to_vec(), None)
                .await
            {
                barrier = Some(ack.index);
                break;
            }
            actix::clock::sleep(Duration::from_millis(50)).await;
        }
        let barrier = barrier.expect("no write succeeded after the restart");
        for i in 0..nodes as usize {
            let mut caught_up = false;
            for _ in 0..400 {
                if c.client(i)
                    .status()
                    .await
                    .map(|s| s.applied_index >= barrier)
                    .unwrap_or(false)
                {
                    caught_up = true;
                    break;
                }
                actix::clock::sleep(Duration::from_millis(25)).await;
            }
            assert!(
                caught_up,
                "node {} never applied index {barrier}\n{}",
                i + 1,
                c.logs()
            );
        }
        let snapshot = book.borrow().clone();
        check(&c, nodes as usize, &snapshot).await;
        eprintln!(
            "cycle {cycle}: {} writes acknowledged so far; every key holds its last acknowledged value or a later attempt",
            book.borrow().writes_acked
        );
    }
    assert!(
        book.borrow().acked.len() >= 20,
        "too few writes were acknowledged to mean anything"
    );
}

#[actix::test]
async fn single_node_survives_kill_9_at_random_points() {
    crash_cycles(1, 5, 0x9e37_79b9_7f4a_7c15).await;
}

#[actix::test]
async fn three_nodes_killed_together_lose_no_acknowledged_write() {
    crash_cycles(3, 4, 0xdead_beef_cafe_f00d).await;
}
