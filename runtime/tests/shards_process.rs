//! Sharded `conclave node` processes on loopback (`[ring] sharded`, 64 shards, replication
//! factor 3): once the leaders are spread, kill -9 of a node that leads several shards, and the
//! time until every one of its shards has a new leader, as the survivors' `GET /v1/shards`
//! show it (polled). That every shard gets one is asserted; the times are printed, not
//! asserted (docs/performance.md, "Shard failover").
//!
//! `CONCLAVE_SHARD_FAILOVER_RUNS=N` repeats the kill/measure/restart cycle N times (default 1,
//! the killed node rotating) and prints the median and worst; `CONCLAVE_SHARD_FAILOVER_NODES`
//! sets the cluster size (default 3); `CONCLAVE_SHARD_FAILOVER_QUIESCE=false` keeps idle groups
//! ticking (`raft.quiesce = false`); `CONCLAVE_NODE_BIN` runs another build of `conclave`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Cluster;
use conclave::api::ShardsStatus;
use conclave::client::Client;
use conclave_core::ids::NodeId;
use conclave_core::ids::ShardId;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

async fn shards_of(c: &Cluster, i: usize, timeout: Duration) -> Option<ShardsStatus> {
    let client = Client::with_timeout(&c.endpoint(i), timeout).ok()?;
    client.shards().await.ok()
}

/// Waits until every shard has a leader that the node itself reports, and the leaders per node
/// are spread (max/min ≤ 1.5); returns each node's id → the shards it leads with their terms.
async fn spread(c: &Cluster) -> BTreeMap<NodeId, Vec<(ShardId, u64)>> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut led: BTreeMap<NodeId, Vec<(ShardId, u64)>> = BTreeMap::new();
        let mut all = true;
        for i in c.alive() {
            match shards_of(c, i, Duration::from_secs(2)).await {
                Some(s) => {
                    let mine = s
                        .shards
                        .iter()
                        .filter(|sh| sh.leader == Some(s.node_id))
                        .map(|sh| (sh.shard, sh.term))
                        .collect();
                    led.insert(s.node_id, mine);
                }
                None => all = false,
            }
        }
        let counts: Vec<usize> = led.values().map(Vec::len).collect();
        let total: usize = counts.iter().sum();
        let (max, min) = (
            counts.iter().copied().max().unwrap_or(0),
            counts.iter().copied().min().unwrap_or(0),
        );
        if all && total == 64 && min > 0 && max * 2 <= min * 3 {
            // Quiet too: the same leaders in the same terms a second later (no transfer or
            // election under way that the kill would race).
            actix::clock::sleep(Duration::from_secs(1)).await;
            let mut again: BTreeMap<NodeId, Vec<(ShardId, u64)>> = BTreeMap::new();
            for i in c.alive() {
                if let Some(s) = shards_of(c, i, Duration::from_secs(2)).await {
                    let mine = s
                        .shards
                        .iter()
                        .filter(|sh| sh.leader == Some(s.node_id))
                        .map(|sh| (sh.shard, sh.term))
                        .collect();
                    again.insert(s.node_id, mine);
                }
            }
            if again == led {
                return led;
            }
        }
        assert!(
            Instant::now() < deadline,
            "leaders not spread after 90 s: {counts:?}\n{}",
            c.logs()
        );
        actix::clock::sleep(Duration::from_millis(200)).await;
    }
}

/// Kills node `victim` (leading `led`: shard → term) and returns, per shard, the time until a
/// survivor reported another leader in a later term.
async fn kill_and_time(c: &mut Cluster, victim: usize, led: &[(ShardId, u64)]) -> Vec<Duration> {
    let victim_id = c.configs[victim].node.id;
    c.kill9(victim);
    let killed_at = Instant::now();
    let mut moved: BTreeMap<ShardId, Duration> = BTreeMap::new();
    let deadline = killed_at + Duration::from_secs(30);
    while moved.len() < led.len() {
        for i in c.alive() {
            let Some(s) = shards_of(c, i, Duration::from_millis(300)).await else {
                continue;
            };
            let at = killed_at.elapsed();
            for &(shard, term) in led {
                let Some(now) = s.shards.get(shard.get() as usize) else {
                    continue;
                };
                let elsewhere = now.leader.is_some_and(|l| l != victim_id) && now.term > term;
                if elsewhere && !moved.contains_key(&shard) {
                    if at < Duration::from_millis(50) {
                        eprintln!(
                            "shard {shard}: node {} sees leader {:?} term {} {at:?} after the kill (node {victim_id} led it in term {term})",
                            s.node_id, now.leader, now.term
                        );
                    }
                    moved.insert(shard, at);
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "after 30 s, {} of node {victim_id}'s {} shards have a new leader\n{}",
            moved.len(),
            led.len(),
            c.logs()
        );
        actix::clock::sleep(Duration::from_millis(5)).await;
    }
    moved.into_values().collect()
}

/// Of the shards node `victim` says it leads, those every survivor hosting them also sees it
/// lead, each with the highest term a survivor knows: what a later leader must be newer than
/// (a shard whose leadership is moving as the node is killed is left out).
async fn survivors_view(
    c: &Cluster,
    victim: NodeId,
    led: &[(ShardId, u64)],
) -> Vec<(ShardId, u64)> {
    let mut views = Vec::new();
    for i in c.alive() {
        if c.configs[i].node.id != victim {
            if let Some(s) = shards_of(c, i, Duration::from_secs(2)).await {
                views.push(s);
            }
        }
    }
    led.iter()
        .filter_map(|&(shard, term)| {
            let mut top = term;
            for v in &views {
                let sh = v.shards.get(shard.get() as usize)?;
                if sh.hosted {
                    if sh.leader != Some(victim) {
                        return None;
                    }
                    top = top.max(sh.term);
                }
            }
            Some((shard, top))
        })
        .collect()
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[actix::test]
async fn killing_a_node_moves_the_leadership_of_its_shards() {
    let nodes = env_or("CONCLAVE_SHARD_FAILOVER_NODES", 3) as u64;
    let runs = env_or("CONCLAVE_SHARD_FAILOVER_RUNS", 1).max(1);
    let quiesce = std::env::var("CONCLAVE_SHARD_FAILOVER_QUIESCE").map_or(true, |v| v != "false");
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new_with(dir.path(), nodes, |cfg| {
        cfg.raft.quiesce = quiesce;
        cfg.ring.sharded = true;
        cfg.ring.shards = 64;
        cfg.ring.replication_factor = 3;
    });
    let mut all_shards: Vec<Duration> = Vec::new();
    let mut per_kill: Vec<Duration> = Vec::new();
    for run in 0..runs {
        let led = spread(&c).await;
        let victim = run % nodes as usize;
        let victim_id = c.configs[victim].node.id;
        let counts: Vec<usize> = led.values().map(Vec::len).collect();
        let mine = survivors_view(&c, victim_id, &led[&victim_id]).await;
        let mut times = kill_and_time(&mut c, victim, &mine).await;
        let worst = *times.iter().max().unwrap();
        let med = median(&mut times);
        println!(
            "run {run}: kill -9 of node {victim_id} leading {} shards (leaders per node {counts:?}, {} agreed by the survivors): \
             every one led elsewhere after {worst:?} (median shard {med:?}); load average {}",
            led[&victim_id].len(),
            mine.len(),
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        );
        per_kill.push(worst);
        all_shards.extend(times);
        c.restart(victim);
    }
    let worst_kill = *per_kill.iter().max().unwrap();
    let worst_shard = *all_shards.iter().max().unwrap();
    println!(
        "{runs} kills, {nodes} nodes, quiesce {quiesce}: time until all of the killed node's shards had a new leader: \
         median {:?}, worst {worst_kill:?}; per shard ({}): median {:?}, worst {worst_shard:?}",
        median(&mut per_kill),
        all_shards.len(),
        median(&mut all_shards),
    );
}
