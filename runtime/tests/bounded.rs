//! Memory and disk bounded by live data, not by history (issue 13 point 4).
//!
//! Three `conclave node` processes; 16 clients overwrite 1,000 keys with 1 KiB values until
//! `CONCLAVE_BOUNDED_WRITES` writes were acknowledged. When 10% of them are in, each node's RSS
//! and data directory size are sampled; from then on the data directories are sampled every 500
//! ms, and at the end RSS again. Each node's RSS must grow less than 25% between the first
//! sample and the end (or by less than 8 MiB in the short run, 32 MiB in the issue's: see
//! [`SHORT_RUN_RSS_SLACK_KIB`], [`LONG_RUN_RSS_SLACK_KIB`]), and its data directory must stay
//! under its size at the first sample plus a bound (64 MiB with the default thresholds, as the
//! issue asks; 16 MiB for the short run, whose thresholds and WAL segments are scaled down so
//! that keeping history would exceed it several times over). At 5% of the writes and at the end
//! every node takes a snapshot, is killed with SIGKILL and restarted: the restarted nodes must
//! hold the same 1,000 values, and the RSS after the second recovery (twenty times the history)
//! must be within 25% (in the issue's run, or 48 MiB: [`RESTART_RSS_SLACK_KIB`]) of the RSS
//! after the first (a recovery that replays history would not be); both recovery times are
//! printed.
//!
//! ```text
//! cargo test -p conclave --test bounded -- --nocapture                  # short: 40,000 writes
//! cargo build --release -p conclave
//! CONCLAVE_BOUNDED_WRITES=400000 CONCLAVE_NODE_BIN=target/release/conclave \
//!     cargo test -p conclave --test bounded -- --nocapture               # the issue's run
//! ```
//!
//! Runs of 100,000 writes or more use the default `[snapshot]` and WAL settings; shorter runs
//! scale them down (`threshold_entries` 2,000, `keep_entries` 500, 1 MiB WAL segments).
//! `CONCLAVE_BOUNDED_THRESHOLD=0` (no automatic snapshots) shows the checks failing: without
//! compaction the short run's data directories grow past the bound.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::env_u64;

use common::{dir_bytes, Cluster};
use conclave::client::Client;
use conclave::config::ReadLevel;
use conclave_core::ids::GroupId;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEYS: u64 = 1_000;
const VALUE: usize = 1024;
const CLIENTS: u64 = 16;
/// Largest RSS growth allowed between the first sample and the end (or after a restart).
const RSS_GROWTH: f64 = 1.25;
/// In the short run, growth within this many KiB passes whatever the ratio. Its first sample is
/// a ~30 MB process, whose RSS moves by several MiB with the allocator's retained memory
/// (returned every 30 s by the memory trimmer, so by chance of timing), e.g. 27,408 → 34,304
/// KiB (1.25x) in one loaded CI run. A node that kept its history would still fail by far: with
/// `CONCLAVE_BOUNDED_THRESHOLD=0` the short run's RSS grows 4x (~80 MiB). The issue's run
/// (400,000 writes) gets [`LONG_RUN_RSS_SLACK_KIB`].
const SHORT_RUN_RSS_SLACK_KIB: u64 = 8 * 1024;
/// In the issue's run (400,000 writes at 16 clients), growth within this many KiB passes
/// whatever the ratio. Under that load a node's RSS moves with the allocator's retained memory
/// by tens of MiB from one sample to the next: one run of the same binary sampled node 2 at
/// 104, 113, 130, 118, 130, 123, 118, 132 and finally 126 MB, failing 1.25x against a first
/// sample of 96 MB (7 December); two more runs ended at 99-111 and 96-117 MB. Keeping the
/// history would add ~400 MB (400,000 values of 1 KiB) and still fail by far.
const LONG_RUN_RSS_SLACK_KIB: u64 = 32 * 1024;
/// The RSS right after a recovery passes the comparison with the early recovery's when it is
/// within this many KiB of it, whatever the ratio. One recovery's RSS moves by tens of MiB
/// between runs of the same binary (after ~20,000 writes: 63.8 to 100.5 MB per node in four
/// 400,000-write runs on 2026-12-07, main `4d542d9` included, whose run failed at 1.47x: 63,768
/// → 93,708 KiB), by chance of what the allocator still holds. A recovery that replayed the
/// history would hold hundreds of MiB more (400,000 writes of 1 KiB). Runs of 100,000 writes
/// or more only: the short run's history (40 MB) is within it, so that run gets no slack here.
const RESTART_RSS_SLACK_KIB: u64 = 48 * 1024;

/// A live node's RSS in KiB.
fn rss(pid: u32) -> u64 {
    common::rss_kib(pid).expect("the node is running")
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A value that names its key and the write that produced it, so replicas can be compared.
fn value(key: u64, n: u64) -> Vec<u8> {
    let mut v = format!("{key}:{n}:").into_bytes();
    v.resize(VALUE, b'x');
    v
}

async fn load(
    endpoint: String,
    total: u64,
    acked: Arc<AtomicU64>,
    paused: Arc<AtomicBool>,
    worker: u64,
) -> u64 {
    let client = Client::with_timeout(&endpoint, Duration::from_secs(10)).unwrap();
    let mut failures = 0u64;
    let mut n = worker;
    while acked.load(Ordering::Relaxed) < total {
        if paused.load(Ordering::Relaxed) {
            actix::clock::sleep(Duration::from_millis(20)).await;
            continue;
        }
        n += CLIENTS;
        // A small hot key space: every worker walks all keys, offset from the others.
        let key = n % KEYS;
        match client
            .put(format!("k{key:04}").as_bytes(), value(key, n), None)
            .await
        {
            Ok(_) => {
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                failures += 1;
                assert!(
                    failures < 1_000,
                    "worker {worker}: too many failed writes ({e})"
                );
                actix::clock::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    failures
}

/// Snapshots every node, kills it with SIGKILL and restarts it; returns how long until a
/// leader serves every key and every node holds the same values, and each node's RSS then.
async fn restart_all(cluster: &mut Cluster) -> (Duration, Vec<u64>) {
    let leader = cluster.leader(Duration::from_secs(30)).await;
    let expected = read_all(&cluster.client(leader), ReadLevel::Linearizable).await;
    assert_eq!(expected.len() as u64, KEYS);
    for i in 0..3 {
        assert!(
            read_all_applied(cluster, i, &expected).await,
            "node {} does not hold the leader's values",
            i + 1
        );
    }
    // Each node snapshots now, so both restarts find the same retained log (`keep_entries`)
    // whatever point of the snapshot cycle the load stopped at: what differs is the history.
    for i in 0..3 {
        let taken = cluster
            .client(i)
            .take_snapshot(GroupId::FIRST)
            .await
            .unwrap();
        assert!(taken.index > 0, "node {}: {taken:?}", i + 1);
    }
    for i in 0..3 {
        cluster.kill9(i);
    }
    let start = Instant::now();
    for i in 0..3 {
        cluster.restart(i);
    }
    let leader = cluster.leader(Duration::from_secs(60)).await;
    let after = read_all(&cluster.client(leader), ReadLevel::Linearizable).await;
    assert_eq!(
        after, expected,
        "acknowledged values lost over kill -9 + restart"
    );
    for i in 0..3 {
        assert!(
            read_all_applied(cluster, i, &expected).await,
            "node {} lost values over the restart",
            i + 1
        );
    }
    let took = start.elapsed();
    let rss = cluster
        .children
        .iter()
        .map(|c| rss(c.as_ref().unwrap().id()))
        .collect();
    (took, rss)
}

#[actix::test]
async fn memory_and_disk_stay_bounded_under_overwrites() {
    let total = env_u64("CONCLAVE_BOUNDED_WRITES", 40_000);
    let full = total >= 100_000;
    let disk_allowance: u64 = if full { 64 << 20 } else { 16 << 20 };
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new_with(tmp.path(), 3, |c| {
        if !full {
            c.snapshot.threshold_entries = env_u64("CONCLAVE_BOUNDED_THRESHOLD", 2_000);
            c.snapshot.keep_entries = 500;
            c.storage.wal_segment_bytes = 1 << 20;
        }
    });
    let leader = cluster.leader(Duration::from_secs(30)).await;
    // Followers forward writes, so the load goes on through this node after restarts.
    let endpoint = cluster.endpoint(leader);
    let dirs: Vec<_> = cluster
        .configs
        .iter()
        .map(|c| c.node.data_dir.clone())
        .collect();
    let pids = |cluster: &Cluster| -> Vec<u32> {
        cluster
            .children
            .iter()
            .map(|c| c.as_ref().unwrap().id())
            .collect()
    };

    let acked = Arc::new(AtomicU64::new(0));
    let paused = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|w| {
            actix::spawn(load(
                endpoint.clone(),
                total,
                acked.clone(),
                paused.clone(),
                w,
            ))
        })
        .collect();

    // A restart at 5% of the writes, to compare with one after twenty times the history.
    let start = Instant::now();
    while acked.load(Ordering::Relaxed) < total / 20 {
        actix::clock::sleep(Duration::from_millis(50)).await;
    }
    paused.store(true, Ordering::Relaxed);
    let early = acked.load(Ordering::Relaxed);
    let (first_restart, first_restart_rss) = restart_all(&mut cluster).await;
    eprintln!(
        "restart of all three after {early} writes: every value back on every node in {:.1}s; rss KiB {first_restart_rss:?}",
        first_restart.as_secs_f64()
    );
    paused.store(false, Ordering::Relaxed);

    // First sample at 10% of the writes, under load.
    while acked.load(Ordering::Relaxed) < total / 10 {
        actix::clock::sleep(Duration::from_millis(50)).await;
    }
    let first_rss: Vec<u64> = pids(&cluster).iter().map(|&p| rss(p)).collect();
    let first_dir: Vec<u64> = dirs.iter().map(|d| dir_bytes(d)).collect();
    eprintln!(
        "first sample after {} writes ({:.1}s): rss KiB {first_rss:?}, data dirs MiB {:?}",
        acked.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
        first_dir.iter().map(|&b| mib(b)).collect::<Vec<_>>()
    );

    let mut max_dir = first_dir.clone();
    let mut next_report = total / 5;
    while acked.load(Ordering::Relaxed) < total {
        actix::clock::sleep(Duration::from_millis(500)).await;
        for (i, d) in dirs.iter().enumerate() {
            max_dir[i] = max_dir[i].max(dir_bytes(d));
        }
        let done = acked.load(Ordering::Relaxed);
        if done >= next_report && done < total {
            next_report += total / 10;
            let rss: Vec<u64> = pids(&cluster).iter().map(|&p| rss(p)).collect();
            eprintln!(
                "after {done} writes: rss KiB {rss:?}, max data dirs MiB so far {:?}",
                max_dir.iter().map(|&b| mib(b)).collect::<Vec<_>>()
            );
        }
    }
    let mut failures = 0;
    for w in workers {
        failures += w.await.unwrap();
    }
    let elapsed = start.elapsed();
    // Let the followers apply the tail before the last memory sample.
    actix::clock::sleep(Duration::from_secs(2)).await;
    let end_rss: Vec<u64> = pids(&cluster).iter().map(|&p| rss(p)).collect();
    let end_dir: Vec<u64> = dirs.iter().map(|d| dir_bytes(d)).collect();
    eprintln!(
        "{} writes in {:.1}s ({failures} retried): rss KiB {end_rss:?}, data dirs MiB now {:?}, max {:?}",
        acked.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        end_dir.iter().map(|&b| mib(b)).collect::<Vec<_>>(),
        max_dir.iter().map(|&b| mib(b)).collect::<Vec<_>>()
    );
    let slack = if total < 100_000 {
        SHORT_RUN_RSS_SLACK_KIB
    } else {
        LONG_RUN_RSS_SLACK_KIB
    };
    for i in 0..3 {
        let growth = end_rss[i] as f64 / first_rss[i] as f64;
        assert!(
            growth < RSS_GROWTH || end_rss[i] < first_rss[i] + slack,
            "node {}: RSS grew {growth:.2}x ({} → {} KiB) between {} and {total} writes; logs in {}",
            i + 1,
            first_rss[i],
            end_rss[i],
            total / 10,
            cluster.dir.display()
        );
        assert!(
            max_dir[i] < first_dir[i] + disk_allowance,
            "node {}: data dir reached {:.1} MiB, more than {:.1} MiB at the first sample + {:.0} MiB",
            i + 1,
            mib(max_dir[i]),
            mib(first_dir[i]),
            mib(disk_allowance)
        );
    }

    // The same restart after twenty times the history: same memory (recovery reads what the
    // snapshot and the retained log hold, not the history).
    let (last_restart, last_restart_rss) = restart_all(&mut cluster).await;
    eprintln!(
        "restart of all three after {total} writes: every value back on every node in {:.1}s ({:.2}x the one after {early}); rss KiB {last_restart_rss:?}",
        last_restart.as_secs_f64(),
        last_restart.as_secs_f64() / first_restart.as_secs_f64()
    );
    let restart_slack = if total >= 100_000 {
        RESTART_RSS_SLACK_KIB
    } else {
        0
    };
    for i in 0..3 {
        let growth = last_restart_rss[i] as f64 / first_restart_rss[i] as f64;
        assert!(
            growth < RSS_GROWTH || last_restart_rss[i] < first_restart_rss[i] + restart_slack,
            "node {}: RSS after recovery from {total} writes is {growth:.2}x the one after {early} ({} → {} KiB)",
            i + 1,
            first_restart_rss[i],
            last_restart_rss[i]
        );
    }
}

/// Every key's value, read at `level` from one node.
async fn read_all(client: &Client, level: ReadLevel) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::with_capacity(KEYS as usize);
    for key in 0..KEYS {
        let k = format!("k{key:04}");
        let mut tries = 0;
        let v = loop {
            match client.get(k.as_bytes(), Some(level)).await {
                Ok(v) => break v,
                Err(e) => {
                    tries += 1;
                    assert!(tries < 100, "reading {k}: {e}");
                    actix::clock::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        out.push(v);
    }
    out
}

/// Whether node `i` serves `expected` from its own state (stale reads) within 30 s.
async fn read_all_applied(cluster: &Cluster, i: usize, expected: &[Option<Vec<u8>>]) -> bool {
    let client = cluster.client(i);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = true;
        for (key, want) in expected.iter().enumerate() {
            let k = format!("k{key:04}");
            match client.get(k.as_bytes(), Some(ReadLevel::Stale)).await {
                Ok(v) if &v == want => {}
                _ => {
                    all = false;
                    break;
                }
            }
        }
        if all {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        actix::clock::sleep(Duration::from_millis(200)).await;
    }
}
