//! Three real `conclave node` processes on loopback: 1,000 writes through random nodes,
//! kill -9 of the leader, a new leader serving writes, the killed node restarted and caught up,
//! and every acknowledged write readable with the right value from every node.
//!
//! The unavailability window (kill → first successful write) is printed. Set
//! `CONCLAVE_FAILOVER_RUNS=10` to repeat the kill/measure cycle and print min/median/max.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Cluster;
use conclave::client::Client;
use conclave::config::ReadLevel;
use std::time::{Duration, Instant};

/// Writes through node `i` (which forwards to the leader).
async fn put(c: &Cluster, i: usize, key: &str, value: &str) -> bool {
    c.client(i)
        .put(key.as_bytes(), value.as_bytes().to_vec(), None)
        .await
        .is_ok()
}

/// Kills the leader and returns (killed index, time until a write succeeded again).
async fn kill_leader_and_measure(c: &mut Cluster, n: usize) -> (usize, Duration) {
    let leader = c.leader(Duration::from_secs(10)).await;
    c.kill9(leader);
    let killed_at = Instant::now();
    let mut attempt = 0u64;
    loop {
        let alive = c.alive();
        let i = alive[(attempt as usize) % alive.len()];
        attempt += 1;
        let client = Client::with_timeout(&c.endpoint(i), Duration::from_millis(300)).unwrap();
        if client
            .put(
                format!("probe-{n}-{attempt}").as_bytes(),
                b"x".to_vec(),
                None,
            )
            .await
            .is_ok()
        {
            return (leader, killed_at.elapsed());
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(15),
            "no write succeeded within 15 s of killing the leader\n{}",
            c.logs()
        );
        actix::clock::sleep(Duration::from_millis(5)).await;
    }
}

#[actix::test]
async fn kill_the_leader_of_three_processes_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), 3);
    let first = c.leader(Duration::from_secs(15)).await;
    // Every node knows the leader before the writes start: a follower asked in the instant
    // after the election, before the leader's first append reached it, answers 503 no_leader
    // (seen once in CI: 41 of the first writes refused, 959 acknowledged, within 1 s of the
    // election). The writes below are about losing nothing, not about that instant.
    let leader_id = c.client(first).status().await.unwrap().node_id;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for i in c.alive() {
        loop {
            let knows =
                matches!(c.client(i).status().await, Ok(s) if s.leader_id == Some(leader_id));
            if knows {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {i} did not learn the leader within 10 s\n{}",
                c.logs()
            );
            actix::clock::sleep(Duration::from_millis(10)).await;
        }
    }

    // 1,000 writes through random nodes, 8 concurrent clients.
    let endpoints: Vec<String> = (0..3).map(|i| c.endpoint(i)).collect();
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for chunk in 0..125 {
        let mut tasks = Vec::new();
        for j in 0..8 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let endpoint = endpoints[(seed % 3) as usize].clone();
            let key = format!("key-{}", chunk * 8 + j);
            let value = format!("value-{}-{seed}", chunk * 8 + j);
            tasks.push(actix::spawn(async move {
                let client = Client::with_timeout(&endpoint, Duration::from_secs(5)).unwrap();
                let ok = client
                    .put(key.as_bytes(), value.as_bytes().to_vec(), None)
                    .await
                    .is_ok();
                (ok, key, value)
            }));
        }
        for t in tasks {
            let (ok, k, v) = t.await.unwrap();
            if ok {
                acked.push((k, v));
            }
        }
    }
    assert!(
        acked.len() >= 990,
        "only {} of 1,000 writes were acknowledged\n{}",
        acked.len(),
        c.logs()
    );

    // Kill -9 the leader; a new one must serve writes.
    let (killed, window) = kill_leader_and_measure(&mut c, 0).await;
    eprintln!("unavailability after kill -9 of the leader: {window:?}");
    let mut windows = vec![window];
    for (k, v) in [("after-kill", "yes")] {
        let survivor = c.alive()[0];
        assert!(put(&c, survivor, k, v).await, "{}", c.logs());
        acked.push((k.to_owned(), v.to_owned()));
    }

    // Restart it: it must catch up with everything.
    c.restart(killed);
    let target = c
        .client(c.leader(Duration::from_secs(10)).await)
        .status()
        .await
        .unwrap()
        .commit_index;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = c.client(killed).status().await {
            if s.applied_index >= target {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "restarted node did not catch up\n{}",
            c.logs()
        );
        actix::clock::sleep(Duration::from_millis(50)).await;
    }

    // Every acknowledged write, with its value, on every node (local reads).
    for i in 0..3 {
        let client = c.client(i);
        for (k, v) in &acked {
            let got = client
                .get(k.as_bytes(), Some(ReadLevel::Stale))
                .await
                .unwrap();
            assert_eq!(got.as_deref(), Some(v.as_bytes()), "node {} key {k}", i + 1);
        }
    }
    // And through the leader, linearizably, from any node (forwarded).
    for (k, v) in acked.iter().take(50) {
        let got = c
            .client(killed)
            .get(k.as_bytes(), Some(ReadLevel::Linearizable))
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some(v.as_bytes()));
    }

    // Optional repetitions for the report.
    let runs: usize = std::env::var("CONCLAVE_FAILOVER_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    for n in 1..runs {
        // Let the restarted node settle so that any node may be the next leader.
        actix::clock::sleep(Duration::from_millis(500)).await;
        let (killed, window) = kill_leader_and_measure(&mut c, n).await;
        eprintln!("run {n}: unavailability {window:?}");
        windows.push(window);
        c.restart(killed);
        actix::clock::sleep(Duration::from_millis(1500)).await;
    }
    if runs > 1 {
        windows.sort();
        eprintln!(
            "failover over {} runs: min {:?} median {:?} max {:?}",
            windows.len(),
            windows[0],
            windows[windows.len() / 2],
            windows[windows.len() - 1]
        );
    }
}
