//! Ring lookups and placement changes (issue 4, item 3).
//!
//! ```text
//! cargo bench -p benches --bench ring -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Lookups are measured over a batch of 1,024 pre-built keys (16–24 bytes, like
//! `user:<id>` keys) so the throughput reported is keys per second; the goal is at least
//! 20 million key → shard lookups per second on one core. Placement changes are measured
//! on a 50-node ring (64 shards, 3 replicas, 150 virtual nodes).

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]

use std::hint::black_box;

use conclave_core::ids::NodeId;
use conclave_ring::{diff, PlacementStrategy, Ring, RingConfig, DEFAULT_WEIGHT};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const BATCH: usize = 1024;

fn keys() -> Vec<Vec<u8>> {
    (0..BATCH)
        .map(|i| format!("user:{:016}", i.wrapping_mul(0x9e37_79b9)).into_bytes())
        .collect()
}

fn ring(nodes: u64, strategy: PlacementStrategy) -> Ring {
    let cfg = RingConfig {
        strategy,
        ..RingConfig::default()
    };
    match Ring::with_nodes(
        cfg,
        (1..=nodes).map(NodeId::new).map(|n| (n, DEFAULT_WEIGHT)),
    ) {
        Ok(ring) => ring,
        Err(e) => panic!("bench ring: {e}"),
    }
}

fn lookups(c: &mut Criterion) {
    let keys = keys();
    let ring = ring(10, PlacementStrategy::BoundedLoad);
    let mut g = c.benchmark_group("ring/lookup");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("key_to_shard", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for k in &keys {
                acc = acc.wrapping_add(ring.shard_for_key(black_box(k)).get());
            }
            acc
        })
    });
    g.bench_function("key_to_shard_to_replicas", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for k in &keys {
                let replicas = ring.replicas_for_key(black_box(k));
                acc = acc.wrapping_add(replicas[0].get());
            }
            acc
        })
    });
    g.bench_function("route_owned", |b| {
        b.iter(|| {
            let mut acc = 0u64;
            for k in &keys {
                acc = acc.wrapping_add(ring.route(black_box(k)).shard.get());
            }
            acc
        })
    });
    g.finish();
}

fn placement_changes(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring/placement_50_nodes");
    for (name, strategy) in [
        ("bounded_load", PlacementStrategy::BoundedLoad),
        ("consistent_hash", PlacementStrategy::ConsistentHash),
    ] {
        let base = ring(50, strategy);
        let mut grown = base.clone();
        if let Err(e) = grown.add_node(NodeId::new(51), DEFAULT_WEIGHT) {
            panic!("{e}");
        }
        g.bench_function(format!("diff_only/{name}"), |b| {
            b.iter(|| diff(black_box(base.placement()), black_box(grown.placement())))
        });
        g.bench_function(format!("add_node_and_diff/{name}"), |b| {
            b.iter_batched(
                || base.clone(),
                |mut r| r.add_node(NodeId::new(51), DEFAULT_WEIGHT),
                BatchSize::SmallInput,
            )
        });
        g.bench_function(format!("remove_node_and_diff/{name}"), |b| {
            b.iter_batched(
                || base.clone(),
                |mut r| r.remove_node(NodeId::new(25)),
                BatchSize::SmallInput,
            )
        });
    }
    g.bench_function("build_from_scratch/bounded_load", |b| {
        b.iter(|| ring(50, PlacementStrategy::BoundedLoad))
    });
    g.finish();
}

criterion_group!(benches, lookups, placement_changes);
criterion_main!(benches);
