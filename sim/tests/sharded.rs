//! The sharded multi-group simulator (issue 16 point 5): shards placed by the ring at
//! replication factor 3 (each group hosted only on its replicas), clients sending every
//! request to a random node, and the shard router's decisions (`conclave_ring::router`, the
//! runtime's own) forwarding it over the simulated network under drops, delays, partitions,
//! crashes, clock skew and false suspicions; every per-group checker, and the client history
//! checked per key with `linearizability::check_kv`. Planted router bugs are caught.
//!
//! `CONCLAVE_SHARDED_SEEDS=N` (default 8) and `CONCLAVE_SHARDED_SHARDS=S` (default 8) widen
//! the seed test; `replay` runs one seed named by `CONCLAVE_SHARDED_SEED` / `_NODES` /
//! `_SHARDS` (and `CONCLAVE_SHARDED_BUG=<RouterBugs field>`; `CONCLAVE_SHARDED_VERBOSE=1`
//! prints the trace).

use conclave_core::ids::NodeId;
use conclave_sim::raft::{
    run_multi, run_multi_seeds, FailureKind, MultiConfig, MultiReport, RouterBugs,
};
use std::time::Instant;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn nodes_for(seed: u64) -> usize {
    if seed % 2 == 0 {
        5
    } else {
        4
    }
}

/// Runs seeds `0..count` on two threads; panics with the first failure.
fn run_seeds(count: u64, shards: u64) -> Vec<MultiReport> {
    run_multi_seeds(count, 2, |seed| {
        MultiConfig::sharded(seed, nodes_for(seed), shards)
    })
    .unwrap_or_else(|f| panic!("{f}"))
}

#[test]
fn shards_routed_from_any_node_under_faults() {
    let count = env("CONCLAVE_SHARDED_SEEDS", 8);
    let shards = env("CONCLAVE_SHARDED_SHARDS", 8);
    let started = Instant::now();
    let reports = run_seeds(count, shards);
    let sum = |f: fn(&MultiReport) -> u64| reports.iter().map(f).sum::<u64>();
    println!(
        "{count} seeds, {shards} shards at RF 3 on 4-5 nodes, {:.1} s: client ops ok {} / \
         failed {} / indeterminate {}, {} served where the client sent them, {} forwards \
         ({} refused and tried elsewhere, {} timed out), {} ops over {} keys checked, \
         {} crashes, {} partitions, {} elections",
        started.elapsed().as_secs_f64(),
        sum(|r| r.client_ok),
        sum(|r| r.client_failed),
        sum(|r| r.client_unknown),
        sum(|r| r.served_locally),
        sum(|r| r.forwards),
        sum(|r| r.forwards_refused),
        sum(|r| r.forwards_timed_out),
        sum(|r| r.ops_checked),
        sum(|r| r.keys_checked),
        sum(|r| r.crashes),
        sum(|r| r.partitions),
        sum(|r| r.elections),
    );
    // The runs are not vacuous: requests were forwarded, refused and retried elsewhere,
    // and the histories checked hold answered operations on several keys.
    assert!(sum(|r| r.forwards) > 0 && sum(|r| r.forwards_refused) > 0);
    assert!(reports
        .iter()
        .all(|r| r.client_ok > 50 && r.keys_checked >= 8));
    assert!(sum(|r| r.crashes) > count && sum(|r| r.partitions) > 0);
}

#[test]
fn each_group_lives_on_its_replicas_only() {
    let mut w = conclave_sim::raft::MultiWorld::new(MultiConfig::sharded(1, 5, 8));
    w.run_until(3_000)
        .expect("a calm start passes every checker");
    for g in 1..=8 {
        let group = conclave_core::ids::GroupId::new(g);
        let hosts: Vec<NodeId> = (1..=5)
            .map(NodeId::new)
            .filter(|n| w.hosts_group(*n, group))
            .collect();
        assert_eq!(hosts.len(), 3, "group {g}: {hosts:?}");
        let leader = w.leader_of(group).expect("every shard elects a leader");
        assert!(
            hosts.contains(&leader),
            "group {g} led by n{leader}, not a replica"
        );
    }
    assert!(!w.hosts_group(NodeId::new(1), conclave_core::ids::GroupId::new(0)));
}

#[test]
fn same_seed_same_run() {
    let a = run_multi(&MultiConfig::sharded(3, 4, 8)).expect("seed 3 passes");
    let b = run_multi(&MultiConfig::sharded(3, 4, 8)).expect("seed 3 passes");
    assert_eq!(a, b);
}

#[test]
fn replay() {
    let seed = env("CONCLAVE_SHARDED_SEED", 3);
    let nodes = env("CONCLAVE_SHARDED_NODES", nodes_for(seed) as u64) as usize;
    let shards = env("CONCLAVE_SHARDED_SHARDS", 8);
    let mut cfg = MultiConfig::sharded(seed, nodes, shards);
    cfg.verbose = std::env::var("CONCLAVE_SHARDED_VERBOSE").is_ok();
    if let Ok(name) = std::env::var("CONCLAVE_SHARDED_BUG") {
        let bugs = RouterBugs::named(&name).expect("CONCLAVE_SHARDED_BUG names a RouterBugs field");
        if let Some(s) = cfg.sharding.as_mut() {
            s.bugs = bugs;
        }
    }
    match run_multi(&cfg) {
        Ok(r) => println!("{r:?}"),
        Err(f) => panic!("{f}"),
    }
}

/// Each planted router bug is caught by the client history's linearizability check within a
/// bounded number of seeds, and the same seeds pass without it.
#[test]
fn planted_router_bugs_are_caught() {
    for (name, max) in [("read_on_any_replica", 10), ("retry_after_no_answer", 40)] {
        let bugs = RouterBugs::named(name).expect("a known bug");
        let caught = (0..max).find_map(|seed| {
            let mut cfg = MultiConfig::sharded(seed, nodes_for(seed), 8);
            if let Some(s) = cfg.sharding.as_mut() {
                s.bugs = bugs;
            }
            run_multi(&cfg).err().map(|f| (seed, f))
        });
        let Some((seed, f)) = caught else {
            panic!("{name}: not caught in {max} seeds");
        };
        println!(
            "{name}: caught at seed {seed} by {}: {}",
            f.kind.name(),
            f.message
        );
        assert_eq!(f.kind, FailureKind::Linearizability, "{name}: {f}");
        if let Err(f) = run_multi(&MultiConfig::sharded(seed, nodes_for(seed), 8)) {
            panic!("{name}: seed {seed} fails without the bug too: {f}");
        }
    }
}
