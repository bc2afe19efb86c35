//! Snapshot transfer between real `conclave node` processes (issue 13, point 7): a follower
//! that missed compacted entries catches up by snapshot; a wiped follower is rebuilt from one;
//! a transfer whose sender is killed resumes at the next leader; a chunk corrupted in flight is
//! refused and sent again. Nothing acknowledged is lost in any of them.
//!
//! Sizes are small by default; `CONCLAVE_TRANSFER_MB` sets the state size of the resume test
//! (e.g. 1024 for the 1 GiB version), which also prints the transfer rate and the time the
//! follower took to catch up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{free_addr, Cluster};
use conclave::client::Client;
use conclave::config::{Config, ReadLevel};
use conclave_core::ids::{GroupId, NodeId};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Small snapshots, taken often, streamed in small chunks.
fn small_snapshots(c: &mut Config) {
    c.snapshot.threshold_entries = 300;
    c.snapshot.keep_entries = 50;
    c.snapshot.chunk_bytes = 64 * 1024;
}

/// Sum of a metric's samples (every label set) in node `i`'s `/metrics`.
async fn metric(c: &Cluster, i: usize, name: &str) -> f64 {
    metric_with(c, i, name, "").await
}

/// Waits (polling, at most `within`) until node `i`'s metric `name` reaches `at_least`; returns
/// the last value read. For a counter that a background step (a snapshot being written when the
/// writes that triggered it were already acknowledged) moves a little after the load.
async fn wait_metric(c: &Cluster, i: usize, name: &str, at_least: f64, within: Duration) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let v = metric(c, i, name).await;
        if v >= at_least || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sum of a metric's samples whose labels contain `label` in node `i`'s `/metrics`.
async fn metric_with(c: &Cluster, i: usize, name: &str, label: &str) -> f64 {
    let Ok(mut resp) = awc::Client::default()
        .get(format!("{}/metrics", c.endpoint(i)))
        .send()
        .await
    else {
        return 0.0;
    };
    let body = resp.body().limit(16 << 20).await.unwrap_or_default();
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && l.contains(label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Writes `n` keys `{prefix}-{k}` of `size` bytes through node `via`, 8 at a time; returns the
/// acknowledged ones.
async fn write_keys(
    c: &Cluster,
    via: usize,
    prefix: &str,
    n: usize,
    size: usize,
) -> Vec<(String, Vec<u8>)> {
    let endpoint = c.endpoint(via);
    let mut acked = Vec::new();
    for batch in (0..n).collect::<Vec<_>>().chunks(8) {
        let mut tasks = Vec::new();
        for &k in batch {
            let endpoint = endpoint.clone();
            let key = format!("{prefix}-{k}");
            let mut value = format!("{key}:").into_bytes();
            value.resize(size.max(value.len()), b'a' + (k % 26) as u8);
            tasks.push(actix::spawn(async move {
                let client = Client::with_timeout(&endpoint, Duration::from_secs(10)).unwrap();
                let ok = client
                    .put(key.as_bytes(), value.clone(), None)
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
    acked
}

/// Waits until node `i` has applied the leader's commit index.
async fn caught_up(c: &Cluster, i: usize, leader: usize, timeout: Duration) {
    let target = c.client(leader).status().await.unwrap().commit_index;
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = c.client(i).status().await {
            if s.applied_index >= target {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {} did not catch up to {target} within {timeout:?}\n{}",
            i + 1,
            c.logs()
        );
        actix::clock::sleep(Duration::from_millis(50)).await;
    }
}

/// Every acknowledged write, with its value, in node `i`'s local state.
async fn holds(c: &Cluster, i: usize, acked: &[(String, Vec<u8>)]) {
    let client = Client::with_timeout(&c.endpoint(i), Duration::from_secs(10)).unwrap();
    for (k, v) in acked {
        let got = client
            .get(k.as_bytes(), Some(ReadLevel::Stale))
            .await
            .unwrap();
        assert!(
            got.as_deref() == Some(v.as_slice()),
            "node {} key {k}: {:?} bytes",
            i + 1,
            got.map(|g| g.len())
        );
    }
}

fn snapshot_dir(c: &Cluster, i: usize) -> PathBuf {
    c.configs[i].node.data_dir.join("snapshots").join("0")
}

/// Bytes of partial receptions in node `i`'s snapshot directory.
fn partial_bytes(c: &Cluster, i: usize) -> u64 {
    std::fs::read_dir(snapshot_dir(c, i))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[actix::test]
async fn a_follower_behind_two_compactions_and_a_wiped_one_catch_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new_with(dir.path(), 3, small_snapshots);
    let leader = c.leader(Duration::from_secs(15)).await;
    let f = (leader + 1) % 3;

    // A follower killed while the others write past two compactions (threshold 300).
    c.kill9(f);
    let mut acked = write_keys(&c, leader, "a", 800, 512).await;
    assert!(
        acked.len() >= 790,
        "{} acknowledged\n{}",
        acked.len(),
        c.logs()
    );
    // The second snapshot may still be being written when the last write is acknowledged.
    let taken = wait_metric(
        &c,
        leader,
        "conclave_snapshot_taken_total",
        2.0,
        Duration::from_secs(10),
    )
    .await;
    assert!(
        taken >= 2.0,
        "the leader took {taken} snapshots, fewer than two\n{}",
        c.logs()
    );
    let started = Instant::now();
    c.restart(f);
    caught_up(&c, f, leader, Duration::from_secs(30)).await;
    eprintln!(
        "follower behind two compactions caught up in {:?}",
        started.elapsed()
    );
    assert!(
        metric(&c, f, "conclave_snapshot_installed_total").await >= 1.0,
        "{}",
        c.logs()
    );
    assert!(metric(&c, leader, "conclave_snapshot_sent_total").await >= 1.0);
    holds(&c, f, &acked).await;

    // Then its data directory is wiped: it is rebuilt from a snapshot.
    c.kill9(f);
    acked.extend(write_keys(&c, leader, "b", 700, 512).await);
    std::fs::remove_dir_all(&c.configs[f].node.data_dir).unwrap();
    c.restart(f);
    caught_up(&c, f, leader, Duration::from_secs(30)).await;
    assert!(
        metric(&c, f, "conclave_snapshot_installed_total").await >= 1.0,
        "{}",
        c.logs()
    );
    holds(&c, f, &acked).await;
    // And the cluster still takes writes with it.
    let more = write_keys(&c, f, "c", 50, 64).await;
    assert_eq!(more.len(), 50);
    caught_up(&c, f, leader, Duration::from_secs(10)).await;
    holds(&c, f, &more).await;
}

/// `POST /v1/cluster/snapshot` on node `i`; the snapshot's index.
async fn take_snapshot(c: &Cluster, i: usize) -> u64 {
    let client = Client::with_timeout(&c.endpoint(i), Duration::from_secs(120)).unwrap();
    client.take_snapshot(GroupId::FIRST).await.unwrap().index
}

#[actix::test]
async fn a_transfer_whose_sender_is_killed_resumes_at_the_next_leader() {
    let mb: usize = std::env::var("CONCLAVE_TRANSFER_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let value = 16 * 1024;
    let keys = (mb << 20) / value;
    let dir = tempfile::tempdir().unwrap();
    // Snapshots only when asked; paced to a few seconds per transfer at the default size.
    let rate = (mb as u64 / 4).max(1);
    let mut c = Cluster::new_with(dir.path(), 3, |cfg| {
        cfg.snapshot.threshold_entries = 0;
        cfg.snapshot.threshold_log_bytes = 0;
        cfg.snapshot.keep_entries = 10;
        cfg.snapshot.chunk_bytes = 64 * 1024;
        cfg.snapshot.max_send_rate_mb_s = rate;
    });
    let leader = c.leader(Duration::from_secs(15)).await;
    let f = (leader + 1) % 3;
    let g = (leader + 2) % 3;
    c.kill9(f);
    let acked = write_keys(&c, leader, "k", keys, value).await;
    assert!(
        acked.len() * 100 >= keys * 99,
        "{} of {keys}\n{}",
        acked.len(),
        c.logs()
    );
    caught_up(&c, g, leader, Duration::from_secs(60)).await;
    // The same state, snapshotted at the same index on both nodes that may lead: the same image.
    let at = take_snapshot(&c, leader).await;
    assert_eq!(
        take_snapshot(&c, g).await,
        at,
        "snapshots at different indexes"
    );

    c.restart(f);
    // Kill the sender once part of the image has arrived.
    let deadline = Instant::now() + Duration::from_secs(60);
    while partial_bytes(&c, f) < (mb as u64) << 18 {
        assert!(
            Instant::now() < deadline,
            "no transfer started\n{}",
            c.logs()
        );
        actix::clock::sleep(Duration::from_millis(20)).await;
    }
    let received_before = partial_bytes(&c, f);
    c.kill9(leader);
    let started = Instant::now();
    let new_leader = c.leader(Duration::from_secs(15)).await;
    assert_eq!(new_leader, g);
    caught_up(&c, f, g, Duration::from_secs(120 + mb as u64)).await;
    let elapsed = started.elapsed();
    assert!(
        metric(&c, f, "conclave_snapshot_resumed_total").await >= 1.0,
        "the transfer did not resume\n{}",
        c.logs()
    );
    assert!(metric(&c, f, "conclave_snapshot_installed_total").await >= 1.0);
    // The new leader sent only what was missing (plus chunks re-sent), not the whole image.
    let sent = metric(&c, g, "conclave_snapshot_send_bytes_total").await;
    let image = std::fs::read_dir(snapshot_dir(&c, g))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        .map(|e| e.metadata().unwrap().len())
        .max()
        .unwrap();
    eprintln!(
        "image {image} B; {received_before} B received before the kill; the next leader sent \
         {sent} B; caught up {elapsed:?} after the kill ({:.1} MB/s paced at {rate} MB/s)",
        sent / 1e6 / elapsed.as_secs_f64()
    );
    assert!(
        sent + received_before as f64 <= image as f64 + 4.0 * 65536.0,
        "sent {sent} B after {received_before} B had arrived, image {image} B"
    );
    holds(&c, f, &acked).await;
    c.restart(leader);
}

/// A TCP proxy that, once armed, flips one byte in the middle of the next large read (after
/// the writes stop, only snapshot chunks come in reads that large).
struct FlipProxy {
    addr: SocketAddr,
}

impl FlipProxy {
    fn start(target: SocketAddr, armed: Arc<AtomicBool>, flipped: Arc<AtomicU64>) -> FlipProxy {
        let addr = free_addr();
        let listener = std::net::TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let (a, f) = (armed.clone(), flipped.clone());
        actix::spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                actix::spawn(pump(ri, wo, a.clone(), f.clone()));
                actix::spawn(pump(ro, wi, a.clone(), f.clone()));
            }
        });
        FlipProxy { addr }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    armed: Arc<AtomicBool>,
    flipped: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if n >= 16 * 1024 && armed.swap(false, Ordering::SeqCst) {
            buf[n / 2] ^= 0x5a;
            flipped.fetch_add(1, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

#[actix::test]
async fn a_chunk_corrupted_in_flight_is_refused_and_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    // Every node reaches every other through a proxy that can corrupt a byte.
    let mut configs = common::local_configs(3, &dir.path().join("data"));
    let real: Vec<SocketAddr> = configs.iter().map(|c| c.node.listen).collect();
    // One flip in all: armed once the writes are done, so the first large read after that is
    // a snapshot chunk on its way to the restarted follower.
    let armed = Arc::new(AtomicBool::new(false));
    let flipped = Arc::new(AtomicU64::new(0));
    let proxies: Vec<FlipProxy> = real
        .iter()
        .map(|&a| FlipProxy::start(a, armed.clone(), flipped.clone()))
        .collect();
    for cfg in &mut configs {
        small_snapshots(cfg);
        // Slow enough for the test to see the transfer start.
        cfg.snapshot.max_send_rate_mb_s = 1;
        for m in &mut cfg.cluster.initial_members {
            if m.id != cfg.node.id {
                m.addr = proxies[(m.id.get() - 1) as usize].addr;
            }
        }
    }
    let mut c = Cluster::from_configs(dir.path(), configs);
    let leader = c.leader(Duration::from_secs(15)).await;
    let f = (leader + 1) % 3;
    let g = (leader + 2) % 3;
    c.kill9(f);
    let acked = write_keys(&c, leader, "x", 800, 1024).await;
    assert!(
        acked.len() >= 790,
        "{} acknowledged\n{}",
        acked.len(),
        c.logs()
    );
    caught_up(&c, g, leader, Duration::from_secs(30)).await;
    c.restart(f);
    // Armed once the transfer has begun: before it, the leader's link flushes the messages it
    // queued for the follower while it was down (old appends), and those must stay intact.
    let deadline = Instant::now() + Duration::from_secs(30);
    while partial_bytes(&c, f) == 0 {
        assert!(
            Instant::now() < deadline,
            "no transfer started\n{}",
            c.logs()
        );
        actix::clock::sleep(Duration::from_millis(2)).await;
    }
    armed.store(true, Ordering::SeqCst);
    caught_up(&c, f, leader, Duration::from_secs(30)).await;
    assert_eq!(
        flipped.load(Ordering::SeqCst),
        1,
        "the proxy corrupted nothing"
    );
    assert!(
        metric_with(
            &c,
            f,
            "conclave_snapshot_chunks_refused_total",
            "reason=\"bad_checksum\""
        )
        .await
            >= 1.0,
        "the corrupted chunk was not refused\n{}",
        c.logs()
    );
    assert!(metric(&c, f, "conclave_snapshot_installed_total").await >= 1.0);
    holds(&c, f, &acked).await;
}

/// Node `i`'s current term.
async fn term(c: &Cluster, i: usize) -> u64 {
    c.client(i).status_json().await.unwrap()["groups"][0]["term"]
        .as_u64()
        .unwrap()
}

#[actix::test]
async fn an_empty_node_catches_up_from_a_snapshot_without_a_leader_change() {
    let mb: usize = std::env::var("CONCLAVE_CATCHUP_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let value = 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    // The default chunk size and pacing (1 MiB, 100 MB/s); snapshots only when asked.
    let mut c = Cluster::new_with(dir.path(), 3, |cfg| {
        cfg.snapshot.threshold_entries = 0;
        cfg.snapshot.threshold_log_bytes = 0;
        cfg.snapshot.keep_entries = 10;
    });
    let leader = c.leader(Duration::from_secs(15)).await;
    let f = (leader + 1) % 3;
    c.kill9(f);
    let written = Instant::now();
    let acked = write_keys(&c, leader, "e", (mb << 20) / value, value).await;
    let write_s = written.elapsed().as_secs_f64();
    take_snapshot(&c, leader).await;
    let term_before = term(&c, leader).await;
    // An empty node: its data directory is gone.
    std::fs::remove_dir_all(&c.configs[f].node.data_dir).unwrap();
    let started = Instant::now();
    c.restart(f);
    caught_up(&c, f, leader, Duration::from_secs(60 + mb as u64)).await;
    let elapsed = started.elapsed();
    assert_eq!(
        term(&c, leader).await,
        term_before,
        "the leader changed while the snapshot streamed\n{}",
        c.logs()
    );
    assert_eq!(c.leader(Duration::from_secs(1)).await, leader);
    let sent = metric(&c, leader, "conclave_snapshot_send_bytes_total").await;
    eprintln!(
        "{mb} MiB of state ({} writes in {write_s:.1} s); an empty node caught up in \
         {elapsed:?}: {sent} B of snapshot, {:.1} MB/s including start-up, restore and the \
         log after the snapshot",
        acked.len(),
        sent / 1e6 / elapsed.as_secs_f64()
    );
    for line in c.logs().lines().filter(|l| {
        l.contains("snapshot transfer complete")
            || l.contains("snapshot received and staged")
            || l.contains("state machine restored")
    }) {
        eprintln!("{line}");
    }
    assert!(metric(&c, f, "conclave_snapshot_installed_total").await >= 1.0);
    holds(&c, f, &acked).await;
}

#[actix::test]
async fn hostile_snapshot_chunks_are_refused_by_a_real_node_and_change_nothing() {
    use common::rogue::rogue;
    use conclave::node::transfer::{checksum, SnapshotChunk};
    use conclave::node::wire::WireMessage;
    use conclave_core::raft::{Membership, SnapshotMeta};
    use conclave_transport::Endpoint;

    let dir = tempfile::tempdir().unwrap();
    // No cluster secret: the allowlist is the only transport check, so an impostor of a member
    // gets through to the snapshot receiver (with a secret it would not even connect).
    let mut c = Cluster::new_with(dir.path(), 3, |cfg| {
        small_snapshots(cfg);
        cfg.cluster.secret = None;
    });
    let first = c.leader(Duration::from_secs(15)).await;
    let acked = write_keys(&c, first, "h", 100, 256).await;
    // The first leader goes (so the term is at least 2) and the impostor takes its id.
    c.kill9(first);
    let leader = c.leader(Duration::from_secs(15)).await;
    let t = (0..3).find(|&i| i != first && i != leader).unwrap();
    let k = first;
    caught_up(&c, t, leader, Duration::from_secs(10)).await;
    let before = c.client(t).status().await.unwrap();
    assert!(before.term >= 2);
    let files = || {
        std::fs::read_dir(snapshot_dir(&c, t))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let files_before = files();

    // The impostor claims the killed member's id.
    let impostor_id = c.configs[k].node.id;
    let target = (c.configs[t].node.id, c.configs[t].node.listen);
    let impostor = rogue(impostor_id, &c.configs[0].cluster.id).await;
    let link = impostor.peer(target.0, target.1);
    let chunk = |term: u64, index: u64, total: u64, offset: u64| {
        let data = vec![7u8; 1000];
        SnapshotChunk {
            group: GroupId::FIRST,
            from: impostor_id,
            term,
            meta: SnapshotMeta {
                index,
                term: 1,
                membership: Membership::with_voters([
                    NodeId::new(1),
                    NodeId::new(2),
                    NodeId::new(3),
                ]),
            },
            total,
            digest: 1,
            offset,
            checksum: checksum(&data),
            data,
        }
    };
    let far = before.commit_index + 1_000;
    let cases = [
        ("not_leader", chunk(before.term, far, 10_000, 0)),
        ("stale_term", chunk(before.term - 1, far, 10_000, 0)),
        ("total_too_large", chunk(before.term, far, u64::MAX, 0)),
        ("past_total", chunk(before.term, far, 10_000, 9_500)),
        // Even from a newer term, a snapshot at or below the commit index changes nothing.
        ("stale", chunk(before.term + 1, 1, 10_000, 0)),
    ];
    for (_, ch) in &cases {
        link.send(WireMessage::SnapshotChunk(ch.clone()))
            .await
            .unwrap();
    }
    let mut other_group = chunk(before.term, far, 10_000, 0);
    other_group.group = GroupId::new(9);
    link.send(WireMessage::SnapshotChunk(other_group))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    for reason in cases.iter().map(|(r, _)| *r).chain(["unknown_group"]) {
        let label = format!("reason=\"{reason}\"");
        while metric_with(&c, t, "conclave_snapshot_chunks_refused_total", &label).await < 1.0 {
            assert!(
                Instant::now() < deadline,
                "no {reason} refusal\n{}",
                c.logs()
            );
            actix::clock::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(files(), files_before, "the receiver's directory changed");
    let after = c.client(t).status().await.unwrap();
    assert_eq!(
        after.term, before.term,
        "a refused chunk's newer term was adopted"
    );
    assert_eq!(
        metric(&c, t, "conclave_snapshot_installed_total").await,
        0.0
    );
    holds(&c, t, &acked).await;
}

#[actix::test]
async fn a_transfer_whose_receiver_restarts_resumes_from_its_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new_with(dir.path(), 3, |cfg| {
        cfg.snapshot.threshold_entries = 0;
        cfg.snapshot.threshold_log_bytes = 0;
        cfg.snapshot.keep_entries = 10;
        cfg.snapshot.chunk_bytes = 64 * 1024;
        cfg.snapshot.max_send_rate_mb_s = 1;
    });
    let leader = c.leader(Duration::from_secs(15)).await;
    let f = (leader + 1) % 3;
    // The follower has applied the leader's first entry (its stores exist and hold a commit)
    // before it is killed: this test is about resuming a transfer. (In one loaded CI run a
    // follower killed 10 ms after the election never opened its state store again — `state
    // store error` on every restart; the applier now logs the error's sources to find out why.)
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = c.client(f).status().await {
            if s.applied_index >= 1 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "follower never applied\n{}",
            c.logs()
        );
        actix::clock::sleep(Duration::from_millis(20)).await;
    }
    c.kill9(f);
    let acked = write_keys(&c, leader, "r", 256, 16 * 1024).await;
    assert_eq!(acked.len(), 256, "{}", c.logs());
    take_snapshot(&c, leader).await;
    c.restart(f);
    let deadline = Instant::now() + Duration::from_secs(60);
    while partial_bytes(&c, f) < 1 << 20 {
        assert!(
            Instant::now() < deadline,
            "no transfer started\n{}",
            c.logs()
        );
        actix::clock::sleep(Duration::from_millis(20)).await;
    }
    // The receiver dies mid-transfer and comes back: it finds its partial file.
    c.kill9(f);
    let kept = partial_bytes(&c, f);
    c.restart(f);
    caught_up(&c, f, leader, Duration::from_secs(60)).await;
    assert!(
        metric(&c, f, "conclave_snapshot_resumed_total").await >= 1.0,
        "the transfer did not resume\n{}",
        c.logs()
    );
    let sent = metric(&c, leader, "conclave_snapshot_send_bytes_total").await;
    let image = std::fs::read_dir(snapshot_dir(&c, leader))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        .map(|e| e.metadata().unwrap().len())
        .max()
        .unwrap();
    eprintln!(
        "image {image} B, {kept} B kept by the receiver across its restart, {sent} B sent in all"
    );
    // Everything once, plus at most a few chunks lost with the killed process.
    assert!(
        sent <= image as f64 + 4.0 * 65536.0,
        "sent {sent} B for a {image} B image"
    );
    holds(&c, f, &acked).await;
}
