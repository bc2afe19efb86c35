//! Issue 12's findings 3 and 8 against real `conclave node` processes (findings 1 and 10 are in
//! `storage_process.rs`, finding 2 in `hardening_net.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::rogue::{heartbeat, rogue};
use common::Cluster;
use conclave::client::ClientError;
use conclave::config::ReadLevel;
use conclave_core::ids::NodeId;
use conclave_core::raft::MAX_TERM;
use conclave_transport::Endpoint;
use std::time::{Duration, Instant};

/// Writes `key` through any node until one acknowledges it.
async fn put_retrying(c: &Cluster, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    loop {
        let alive = c.alive();
        let node = alive[i % alive.len()];
        i += 1;
        match c
            .client(node)
            .put(key.as_bytes(), value.as_bytes().to_vec(), None)
            .await
        {
            Ok(_) => return,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no node acknowledged {key} within 30 s: {e}\n{}",
                    c.logs()
                );
                actix::clock::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Finding 3 on real processes: a single `Heartbeat` at term `u64::MAX` from non-member 777
/// moved every node to that term, persisted, and no election could succeed even after every
/// node restarted. Here 777 and (the cluster has no secret, so the transport cannot tell it
/// from the real one) a connection claiming member 3 send such heartbeats to every node for a
/// second; no node adopts the term, and after a kill -9 and restart of every node the cluster
/// elects a leader and commits.
#[actix::test]
async fn finding3_forged_max_term_heartbeats_do_not_stop_a_real_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new_with(dir.path(), 3, |cfg| cfg.cluster.secret = None);
    c.leader(Duration::from_secs(15)).await;
    put_retrying(&c, "before", "1").await;

    let cluster_id = c.configs[0].cluster.id.clone();
    let addrs: Vec<_> = c
        .configs
        .iter()
        .map(|cfg| (cfg.node.id, cfg.node.listen))
        .collect();
    let stranger = rogue(NodeId::new(777), &cluster_id).await;
    let impostor = rogue(NodeId::new(3), &cluster_id).await;
    for _ in 0..20 {
        for &(id, addr) in &addrs {
            let _ = stranger
                .peer(id, addr)
                .try_send(heartbeat(NodeId::new(777), id, u64::MAX));
            if id != NodeId::new(3) {
                let _ = impostor
                    .peer(id, addr)
                    .try_send(heartbeat(NodeId::new(3), id, u64::MAX));
            }
        }
        actix::clock::sleep(Duration::from_millis(50)).await;
    }
    drop(impostor);
    drop(stranger);
    for i in 0..3 {
        let term = c.client(i).status().await.unwrap().term;
        assert!(term < MAX_TERM, "node {} adopted term {term}", i + 1);
    }

    // What was persisted must not poison a restart either.
    for i in 0..3 {
        c.kill9(i);
    }
    for i in 0..3 {
        c.restart(i);
    }
    c.leader(Duration::from_secs(30)).await;
    put_retrying(&c, "after", "2").await;
    for i in 0..3 {
        let s = c.client(i).status().await.unwrap();
        assert!(s.term < MAX_TERM, "node {} term {}", i + 1, s.term);
    }
    let got = c
        .client(0)
        .get(b"before", Some(ReadLevel::Linearizable))
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(&b"1"[..]));
    let logs = c.logs();
    assert!(
        logs.contains("not_member"),
        "the non-member's connection was not refused\n{logs}"
    );
}

fn expect_reused<T: std::fmt::Debug>(what: &str, r: Result<T, ClientError>) {
    match r {
        Err(ClientError::Api { status, code, .. }) => {
            assert_eq!(status, 422, "{what}");
            assert_eq!(code, "idempotency_key_reused", "{what}");
        }
        other => panic!("{what}: expected 422 idempotency_key_reused, got {other:?}"),
    }
}

/// Finding 8 on real processes: `PUT alpha` with `Idempotency-Key: abc`, then `PUT beta` with
/// the same key answered 200 although beta was never written, and DELETE or CAS reusing the key
/// answered 500. A reused key with another request is refused with 422 through any node
/// (followers forward); the real retry is still answered; nothing else changes.
#[actix::test]
async fn finding8_a_reused_idempotency_key_is_refused_by_a_real_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::new(dir.path(), 3);
    let leader = c.leader(Duration::from_secs(15)).await;
    let follower = (leader + 1) % 3;

    c.client(leader)
        .put(b"alpha", b"1".to_vec(), Some("abc"))
        .await
        .expect("the first request with the key");
    for node in [leader, follower] {
        let client = c.client(node);
        expect_reused(
            "PUT beta with alpha's key",
            client.put(b"beta", b"2".to_vec(), Some("abc")).await,
        );
        expect_reused(
            "DELETE alpha with the key of its PUT",
            client.delete(b"alpha", Some("abc")).await,
        );
        expect_reused(
            "CAS alpha with the key of its PUT",
            client
                .cas(b"alpha", Some("1"), Some("3"), Some("abc"))
                .await,
        );
    }
    // The real retry is answered as the first time, and applies nothing new.
    c.client(follower)
        .put(b"alpha", b"1".to_vec(), Some("abc"))
        .await
        .expect("the retry of the first request");
    for i in 0..3 {
        let client = c.client(i);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let alpha = client.get(b"alpha", Some(ReadLevel::Stale)).await.unwrap();
            if alpha.as_deref() == Some(&b"1"[..]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {}: alpha = {alpha:?}",
                i + 1
            );
            actix::clock::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            client
                .get(b"beta", Some(ReadLevel::Linearizable))
                .await
                .unwrap(),
            None,
            "beta was written"
        );
    }
}
