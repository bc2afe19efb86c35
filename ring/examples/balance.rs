//! Prints the balance table of docs/ring.md (issue 4, item 2):
//!
//! ```text
//! cargo run --release -p conclave-ring --example balance
//! ```
//!
//! For 3, 5, 10 and 50 nodes with 50, 150 and 500 virtual nodes, over 10 memberships
//! with different (pseudo-random) node ids, it reports max/mean per node of:
//! keys routed on the virtual-node ring (200,000 sampled keys), the exact hash-space share
//! on that ring, shard replicas and shard leaders under pure consistent hashing and under
//! the bounded-load refinement, and keys per node through the real path
//! (key → shard → leader, and key → shard → every replica) under bounded load. Each cell is "mean (worst)" over the 10.
//! A second table shows how many replica slots one addition or removal moves.

use std::collections::BTreeMap;

use conclave_ring::hash::mix64;
use conclave_ring::{NodeId, PlacementStrategy, Ring, RingConfig, RingError, DEFAULT_WEIGHT};

const DRAWS: u64 = 10;
const KEYS: u64 = 200_000;

/// max / mean of per-node counts, counting members that got nothing as zero.
fn max_over_mean(counts: &BTreeMap<NodeId, f64>, members: usize) -> f64 {
    let total: f64 = counts.values().sum();
    let max = counts.values().copied().fold(0.0, f64::max);
    if total == 0.0 {
        return 0.0;
    }
    max / (total / members as f64)
}

fn as_f64(m: BTreeMap<NodeId, usize>) -> BTreeMap<NodeId, f64> {
    m.into_iter().map(|(k, v)| (k, v as f64)).collect()
}

#[derive(Default)]
struct Stat {
    sum: f64,
    worst: f64,
    n: f64,
}

impl Stat {
    fn add(&mut self, x: f64) {
        self.sum += x;
        self.worst = self.worst.max(x);
        self.n += 1.0;
    }
    fn cell(&self) -> String {
        format!("{:.3} ({:.3})", self.sum / self.n, self.worst)
    }
}

fn main() -> Result<(), RingError> {
    println!(
        "| nodes | vnodes | keys on ring | ring share | replicas, consistent hash | replicas, bounded load | leaders, consistent hash | leaders, bounded load | keys led (key → shard → leader), bounded load | keys stored (all replicas), bounded load |"
    );
    println!("|---:|---:|---|---|---|---|---|---|---|---|");
    for nodes in [3u64, 5, 10, 50] {
        for vnodes in [50u32, 150, 500] {
            let mut stats: [Stat; 8] = Default::default();
            for draw in 0..DRAWS {
                let ids: Vec<NodeId> = (1..=nodes)
                    .map(|i| NodeId::new(mix64((draw << 32) | i)))
                    .collect();
                let members = ids.len();
                let build = |strategy| {
                    let cfg = RingConfig {
                        vnodes,
                        strategy,
                        ..RingConfig::default()
                    };
                    Ring::with_nodes(cfg, ids.iter().map(|&n| (n, DEFAULT_WEIGHT)))
                };
                let ch = build(PlacementStrategy::ConsistentHash)?;
                let bl = build(PlacementStrategy::BoundedLoad)?;

                let mut keys: BTreeMap<NodeId, f64> = BTreeMap::new();
                let mut via_shard: BTreeMap<NodeId, f64> = BTreeMap::new();
                let mut stored: BTreeMap<NodeId, f64> = BTreeMap::new();
                for k in 0..KEYS {
                    let key = format!("key-{draw}-{k}");
                    if let Some(owner) = ch.ring_owner(key.as_bytes()) {
                        *keys.entry(owner).or_default() += 1.0;
                    }
                    let replicas = bl.replicas_for_key(key.as_bytes());
                    if let Some(&leader) = replicas.first() {
                        *via_shard.entry(leader).or_default() += 1.0;
                    }
                    for &n in replicas {
                        *stored.entry(n).or_default() += 1.0;
                    }
                }
                stats[0].add(max_over_mean(&keys, members));
                stats[1].add(max_over_mean(&ch.ring_shares(), members));
                stats[2].add(max_over_mean(
                    &as_f64(ch.placement().replica_load()),
                    members,
                ));
                stats[3].add(max_over_mean(
                    &as_f64(bl.placement().replica_load()),
                    members,
                ));
                stats[4].add(max_over_mean(
                    &as_f64(ch.placement().leader_load()),
                    members,
                ));
                stats[5].add(max_over_mean(
                    &as_f64(bl.placement().leader_load()),
                    members,
                ));
                stats[6].add(max_over_mean(&via_shard, members));
                stats[7].add(max_over_mean(&stored, members));
            }
            let cells: Vec<String> = stats.iter().map(Stat::cell).collect();
            println!("| {nodes} | {vnodes} | {} |", cells.join(" | "));
        }
    }

    // Movement: replica slots moved by adding one node (and by removing one), relative to
    // the ideal `slots / (n + 1)` (resp. the removed node's own slots), 150 vnodes.
    println!();
    println!("| nodes before | add: moved / ideal, consistent hash | add: moved / ideal, bounded load | remove: moved / held, consistent hash | remove: moved / held, bounded load |");
    println!("|---:|---|---|---|---|");
    for nodes in [3u64, 5, 10, 50] {
        let mut stats: [Stat; 4] = Default::default();
        for draw in 0..DRAWS {
            let ids: Vec<NodeId> = (1..=nodes)
                .map(|i| NodeId::new(mix64((draw << 32) | i)))
                .collect();
            for (i, strategy) in [
                PlacementStrategy::ConsistentHash,
                PlacementStrategy::BoundedLoad,
            ]
            .into_iter()
            .enumerate()
            {
                let cfg = RingConfig {
                    strategy,
                    ..RingConfig::default()
                };
                let ring = Ring::with_nodes(cfg, ids.iter().map(|&n| (n, DEFAULT_WEIGHT)))?;
                let slots = (cfg.shards * u64::from(cfg.replication_factor)) as f64;
                let mut grown = ring.clone();
                let plan = grown.add_node(NodeId::new(mix64(u64::MAX - draw)), DEFAULT_WEIGHT)?;
                let after = grown.effective_replication() as f64 * cfg.shards as f64;
                let ideal = after.min(slots) / (nodes + 1) as f64;
                stats[i].add(plan.moved_replicas() as f64 / ideal);
                let mut shrunk = ring.clone();
                let victim = ids[(draw as usize) % ids.len()];
                let held = ring
                    .placement()
                    .replica_load()
                    .get(&victim)
                    .copied()
                    .unwrap_or(0);
                let plan = shrunk.remove_node(victim)?;
                if held > 0 {
                    stats[2 + i].add(plan.dropped_replicas() as f64 / held as f64);
                }
            }
        }
        let cells: Vec<String> = [&stats[0], &stats[1], &stats[2], &stats[3]]
            .iter()
            .map(|s| s.cell())
            .collect();
        println!("| {nodes} | {} |", cells.join(" | "));
    }
    Ok(())
}
