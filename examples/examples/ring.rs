//! Builds a ring, routes keys, adds a node and prints what moves (issue 4, item 4).
//!
//! ```text
//! cargo run -p examples --example ring
//! ```

use conclave::api::NodeId;
use conclave_ring::{Ring, RingConfig, DEFAULT_WEIGHT};

fn main() -> anyhow::Result<()> {
    let config = RingConfig::default();
    let mut ring = Ring::with_nodes(
        config,
        (1..=5).map(NodeId::new).map(|n| (n, DEFAULT_WEIGHT)),
    )?;
    println!(
        "ring: {} nodes, {} shards, replication factor {}, {} virtual nodes per node, {:?}",
        ring.len(),
        config.shards,
        config.replication_factor,
        config.vnodes,
        config.strategy
    );

    let keys = [
        "user:1",
        "user:2",
        "user:42",
        "order:2024-0001",
        "cart:alice",
        "cart:bob",
    ];
    println!("\nrouting (replicas: preferred leader first)");
    for key in keys {
        let route = ring.route(key.as_bytes());
        println!(
            "  {key:<16} -> shard {:>2}  replicas {:?}",
            route.shard, route.replicas
        );
    }

    println!(
        "\nreplica slots per node: {:?}",
        ring.placement().replica_load()
    );
    println!(
        "preferred leaders per node: {:?}",
        ring.placement().leader_load()
    );

    println!("\nadding node 6");
    let plan = ring.add_node(NodeId::new(6), DEFAULT_WEIGHT)?;
    for change in &plan.changes {
        let leader = if change.leader_changed() {
            format!(
                "  (leader {:?} -> {:?})",
                change.old_leader(),
                change.new_leader()
            )
        } else {
            String::new()
        };
        println!(
            "  shard {:>2}: {:?} -> {:?}  +{:?} -{:?}{leader}",
            change.shard, change.before, change.after, change.added, change.removed
        );
    }
    let slots = config.shards as usize * config.replication_factor as usize;
    println!(
        "moved {} of {} replica slots ({:.1}%; ideal 1/6 = 16.7%), {} shards touched, {} leader changes",
        plan.moved_replicas(),
        slots,
        100.0 * plan.moved_replicas() as f64 / slots as f64,
        plan.shards_with_moves(),
        plan.leader_changes()
    );
    println!(
        "replica slots per node now: {:?}",
        ring.placement().replica_load()
    );
    println!(
        "preferred leaders per node now: {:?}",
        ring.placement().leader_load()
    );

    println!("\nrouting after the change");
    for key in keys {
        let route = ring.route(key.as_bytes());
        println!(
            "  {key:<16} -> shard {:>2}  replicas {:?}",
            route.shard, route.replicas
        );
    }

    Ok(())
}
