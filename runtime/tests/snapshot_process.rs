//! Snapshots and log compaction on real `conclave node` processes (issue 13, points 3, 4, 8).
//!
//! Three nodes with a small snapshot threshold and small WAL segments take snapshots as writes
//! go on: WAL segments are purged, the Raft core's in-memory log and the log store's mirror
//! stay bounded, and `POST /v1/cluster/snapshot` takes one on request. Then every node is
//! killed with SIGKILL and restarted (one with its state machine deleted): every key holds
//! its last acknowledged value on every node, and each node started from its snapshot.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Cluster;
use conclave::client::{Client, ClientError};
use conclave::config::ReadLevel;
use conclave_core::ids::GroupId;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const KEYS: u64 = 100;
const THRESHOLD: u64 = 300;
const KEEP: u64 = 50;

async fn metrics(c: &Cluster, i: usize) -> String {
    let body = awc::Client::default()
        .get(format!("{}/metrics", c.endpoint(i)))
        .send()
        .await
        .unwrap()
        .body()
        .limit(8 << 20)
        .await
        .unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

/// The value of the first sample of `name` (with any labels) in a Prometheus text page.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Writes `count` puts of 1 KiB over `KEYS` keys through `client` (retrying refusals),
/// recording the last acknowledged value of each key.
async fn write(client: &Client, from: u64, count: u64, acked: &mut BTreeMap<String, Vec<u8>>) {
    for seq in from..from + count {
        let key = format!("k{}", seq % KEYS);
        let mut value = format!("{seq}:").into_bytes();
        value.resize(1024, b'x');
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match client.put(key.as_bytes(), value.clone(), None).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(Instant::now() < deadline, "write {seq} kept failing: {e}");
                    actix::clock::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        acked.insert(key, value);
    }
}

/// Waits until `f` holds on node `i`'s metrics page.
async fn wait_metrics(c: &Cluster, i: usize, what: &str, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = metrics(c, i).await;
        if f(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "node {}: {what} never held; metrics:\n{m}\nlogs:\n{}",
            i + 1,
            c.logs()
        );
        actix::clock::sleep(Duration::from_millis(100)).await;
    }
}

/// Every node holds every acknowledged value (a stale read at each node, once it applied
/// the leader's commit index).
async fn check_data(c: &Cluster, acked: &BTreeMap<String, Vec<u8>>, commit: u64) {
    for i in 0..c.configs.len() {
        let client = c.client(i);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = client.status().await;
            if s.as_ref().is_ok_and(|s| s.applied_index >= commit) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not catch up to {commit}: {s:?}",
                i + 1
            );
            actix::clock::sleep(Duration::from_millis(50)).await;
        }
        for (key, value) in acked {
            let got = client
                .get(key.as_bytes(), Some(ReadLevel::Stale))
                .await
                .unwrap();
            assert_eq!(
                got.as_deref(),
                Some(value.as_slice()),
                "node {} key {key}",
                i + 1
            );
        }
    }
}

#[actix::test]
async fn snapshots_compact_the_log_and_nodes_restart_from_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new_with(dir.path(), 3, |cfg| {
        cfg.snapshot.threshold_entries = THRESHOLD;
        cfg.snapshot.threshold_log_bytes = 0;
        cfg.snapshot.keep_entries = KEEP;
        cfg.storage.wal_segment_bytes = 64 * 1024;
    });
    let leader = c.leader(Duration::from_secs(15)).await;
    let client = c.client(leader);
    let mut acked = BTreeMap::new();
    // Well past two snapshots on every node.
    let total = 8 * THRESHOLD;
    write(&client, 0, total, &mut acked).await;

    // The in-memory logs hold what came after the last snapshot plus the kept entries, not
    // the history; the WAL keeps a few 64 KiB segments of the ~2.6 MB written.
    let bound = (THRESHOLD + KEEP + 64) as f64;
    for i in 0..3 {
        let m = wait_metrics(&c, i, "two snapshots, a purge and bounded logs", |m| {
            metric(m, "conclave_snapshot_taken_total").unwrap_or(0.0) >= 2.0
                && metric(m, "conclave_wal_segments_purged_total").unwrap_or(0.0) >= 1.0
                && metric(m, "conclave_raft_log_entries").is_some_and(|n| n <= bound)
                && metric(m, "conclave_log_store_entries").is_some_and(|n| n <= bound)
                && metric(m, "conclave_wal_segments").is_some_and(|n| n <= 12.0)
        })
        .await;
        assert!(metric(&m, "conclave_snapshot_bytes").unwrap() > 100.0 * 1024.0);
        assert!(m.contains("conclave_snapshot_duration_seconds"), "{m}");
        // Retention: the newest snapshot and the one before it. A third file exists for a
        // moment while a snapshot that was still being taken (a follower applying the tail)
        // is renamed into place and the oldest not yet removed.
        let count = || {
            std::fs::read_dir(c.configs[i].node.data_dir.join("snapshots/0"))
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(".snap")
                })
                .count()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut snaps = count();
        while !(1..=2).contains(&snaps) && Instant::now() < deadline {
            actix::clock::sleep(Duration::from_millis(50)).await;
            snaps = count();
        }
        assert!(
            (1..=2).contains(&snaps),
            "node {}: {snaps} snapshot files",
            i + 1
        );
    }

    // On request: a snapshot now, on this node; a second right after has nothing new.
    write(&client, total, 10, &mut acked).await;
    let follower = (leader + 1) % 3;
    // The follower applies the last writes after the leader acknowledged them: wait, or the
    // second request below finds something new to snapshot.
    let commit = c.client(leader).status().await.unwrap().commit_index;
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.client(follower).status().await.unwrap().applied_index < commit {
        assert!(
            Instant::now() < deadline,
            "the follower does not apply {commit}"
        );
        actix::clock::sleep(Duration::from_millis(20)).await;
    }
    let taken = c
        .client(follower)
        .take_snapshot(GroupId::FIRST)
        .await
        .unwrap();
    let status = c.client(follower).status().await.unwrap();
    assert!(taken.index > 0 && taken.bytes > 0, "{taken:?}");
    assert_eq!(status.groups[0].snapshot_index, taken.index);
    let again = c
        .client(follower)
        .take_snapshot(GroupId::FIRST)
        .await
        .unwrap();
    assert!(!again.taken, "{again:?}");
    assert_eq!(again.index, taken.index);
    match c.client(follower).take_snapshot(GroupId::new(7)).await {
        Err(ClientError::Api { status, .. }) => assert_eq!(status, 404),
        other => panic!("a snapshot of an unknown group: {other:?}"),
    }

    let commit = c.client(leader).status().await.unwrap().commit_index;
    check_data(&c, &acked, commit).await;

    // kill -9 every node; node 3 also loses its state machine, which must come back from
    // its snapshot (and the log after it), not from a replay of a log that is gone.
    let snapshot_before: Vec<u64> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(c.client(i).status().await.unwrap().groups[0].snapshot_index);
        }
        v
    };
    for i in 0..3 {
        c.kill9(i);
    }
    std::fs::remove_file(c.configs[2].node.data_dir.join("sm.redb")).unwrap();
    for i in 0..3 {
        c.restart(i);
    }
    let leader = c.leader(Duration::from_secs(20)).await;
    let mut more = BTreeMap::new();
    write(&c.client(leader), total + 10, 20, &mut more).await;
    acked.extend(more);
    let commit = c.client(leader).status().await.unwrap().commit_index;
    check_data(&c, &acked, commit).await;
    for (i, before) in snapshot_before.iter().copied().enumerate() {
        let s = c.client(i).status().await.unwrap();
        assert!(
            s.groups[0].snapshot_index >= before && before > 0,
            "node {}: snapshot index {} after restart, {before} before",
            i + 1,
            s.groups[0].snapshot_index,
        );
        // The restarted core holds the log after the snapshot, not the whole history.
        let m = metrics(&c, i).await;
        let core = metric(&m, "conclave_raft_log_entries").unwrap();
        assert!(
            core <= (THRESHOLD + KEEP + 64) as f64,
            "node {}: {core} entries",
            i + 1
        );
    }
    let log3 = std::fs::read_to_string(dir.path().join("n3.log")).unwrap();
    assert!(
        log3.contains("state machine restored from a snapshot"),
        "node 3 did not restore its wiped machine from the snapshot:\n{log3}"
    );

    // A compacted log whose snapshots are gone cannot be rebuilt: a clear storage failure
    // naming the snapshots, not a panic or a silently empty replica.
    c.kill9(1);
    let snaps = c.configs[1].node.data_dir.join("snapshots/0");
    for e in std::fs::read_dir(&snaps).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    c.restart(1);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = c.client(1).status().await {
            if let conclave::storage::health::StorageCondition::Failed { component, error } =
                &s.storage
            {
                assert_eq!(component.to_string(), "snapshots/0");
                assert!(
                    error.to_string().contains("compacted up to index"),
                    "{error}"
                );
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node 2 never reported the missing snapshot:\n{}",
            c.logs()
        );
        actix::clock::sleep(Duration::from_millis(100)).await;
    }
    assert!(c.children[1]
        .as_mut()
        .unwrap()
        .try_wait()
        .unwrap()
        .is_none());
}

/// A crash after the snapshot file is durable but before the core and the log store compact:
/// the restarted node starts from that snapshot (its log still holds the entries it covers,
/// which the core ignores), keeps every acknowledged write, and compacts at the next snapshot.
#[actix::test]
async fn a_crash_between_the_snapshot_file_and_the_compaction_is_safe() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new_with(dir.path(), 1, |cfg| {
        cfg.snapshot.threshold_entries = THRESHOLD;
        cfg.snapshot.threshold_log_bytes = 0;
        cfg.snapshot.keep_entries = KEEP;
    });
    c.kill9(0);
    let crashing = c.spawn_with_env(0, &[("CONCLAVE_CRASH_AFTER_SNAPSHOT_FILE", "1")]);
    c.children[0] = Some(crashing);
    c.leader(Duration::from_secs(15)).await;
    let client = c.client(0);
    let mut acked = BTreeMap::new();
    let mut seq = 0;
    // The write that failed when the process died may or may not have committed: made
    // definite after the restart (below) before the data is compared.
    let in_doubt;
    // Write until the process aborts at its first snapshot.
    loop {
        let key = format!("k{}", seq % KEYS);
        let mut value = format!("{seq}:").into_bytes();
        value.resize(1024, b'x');
        match client.put(key.as_bytes(), value.clone(), None).await {
            Ok(_) => {
                acked.insert(key, value);
            }
            Err(_) => {
                let exited = c.children[0].as_mut().unwrap().try_wait().unwrap();
                if exited.is_some() {
                    in_doubt = (key, value);
                    break;
                }
                actix::clock::sleep(Duration::from_millis(20)).await;
                continue;
            }
        }
        seq += 1;
        assert!(
            seq < 20 * THRESHOLD,
            "the node never crashed:\n{}",
            c.logs()
        );
    }
    let log = std::fs::read_to_string(dir.path().join("n1.log")).unwrap();
    assert!(log.contains("fault injection: crashing"), "{log}");
    c.children[0] = None;
    // The snapshot file is there; the WAL was not compacted.
    let snaps: Vec<String> = std::fs::read_dir(c.configs[0].node.data_dir.join("snapshots/0"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".snap"))
        .collect();
    assert_eq!(snaps.len(), 1, "{snaps:?}");

    c.restart(0);
    c.leader(Duration::from_secs(15)).await;
    let s = c.client(0).status().await.unwrap();
    let file_index: u64 = snaps[0]
        .trim_start_matches("snap-")
        .split('-')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(file_index > 0);
    assert_eq!(s.groups[0].snapshot_index, file_index, "{s:?}");
    let (key, value) = in_doubt;
    c.client(0)
        .put(key.as_bytes(), value.clone(), None)
        .await
        .unwrap();
    acked.insert(key, value);
    let commit = c.client(0).status().await.unwrap().commit_index;
    check_data(&c, &acked, commit).await;
    // Snapshots and compaction go on from there.
    write(&c.client(0), seq + 1, 2 * THRESHOLD, &mut acked).await;
    wait_metrics(&c, 0, "a snapshot after the restart", |m| {
        metric(m, "conclave_snapshot_taken_total").unwrap_or(0.0) >= 1.0
            && metric(m, "conclave_raft_log_entries")
                .is_some_and(|n| n <= (THRESHOLD + KEEP + 64) as f64)
    })
    .await;
    let commit = c.client(0).status().await.unwrap().commit_index;
    check_data(&c, &acked, commit).await;
}
