//! Property tests of the ring's placement guarantees (issue 4, item 1).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use conclave_ring::{NodeId, PlacementStrategy, Ring, RingConfig, DEFAULT_WEIGHT};
use proptest::prelude::*;

fn strategy() -> impl Strategy<Value = PlacementStrategy> {
    prop_oneof![
        Just(PlacementStrategy::ConsistentHash),
        Just(PlacementStrategy::BoundedLoad)
    ]
}

fn config() -> impl Strategy<Value = RingConfig> {
    (1u32..=200, 1u64..=128, 1u32..=5, strategy()).prop_map(
        |(vnodes, shards, replication_factor, strategy)| RingConfig {
            vnodes,
            shards,
            replication_factor,
            strategy,
        },
    )
}

/// 1..=12 distinct node ids drawn from the whole u64 range, with weights.
fn members(weighted: bool) -> impl Strategy<Value = Vec<(NodeId, u32)>> {
    let weight = if weighted {
        (25u32..=400).boxed()
    } else {
        Just(DEFAULT_WEIGHT).boxed()
    };
    prop::collection::btree_map(any::<u64>().prop_map(NodeId::new), weight, 1..=12)
        .prop_map(|m| m.into_iter().collect())
}

#[derive(Clone, Debug)]
enum Op {
    Add(NodeId, u32),
    /// Index into the current members (modulo their count).
    Remove(usize),
    Reweight(usize, u32),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            (any::<u64>(), 25u32..=400).prop_map(|(n, w)| Op::Add(NodeId::new(n), w)),
            any::<usize>().prop_map(Op::Remove),
            (any::<usize>(), 25u32..=400).prop_map(|(i, w)| Op::Reweight(i, w)),
        ],
        0..8,
    )
}

fn apply(ring: &mut Ring, op: &Op) {
    let ids: Vec<NodeId> = ring.nodes().map(|(n, _)| n).collect();
    match *op {
        Op::Add(n, w) if ring.weight(n).is_none() => {
            ring.add_node(n, w).unwrap();
        }
        Op::Remove(i) if !ids.is_empty() => {
            ring.remove_node(ids[i % ids.len()]).unwrap();
        }
        Op::Reweight(i, w) if !ids.is_empty() => {
            ring.set_weight(ids[i % ids.len()], w).unwrap();
        }
        _ => {}
    }
}

fn assert_valid(ring: &Ring) -> Result<(), TestCaseError> {
    let members: BTreeSet<NodeId> = ring.nodes().map(|(n, _)| n).collect();
    let want = (ring.config().replication_factor as usize).min(members.len());
    prop_assert_eq!(ring.placement().shard_count() as u64, ring.config().shards);
    for (shard, replicas) in ring.placement().iter() {
        let set: BTreeSet<NodeId> = replicas.iter().copied().collect();
        prop_assert_eq!(set.len(), replicas.len(), "shard {} repeats a node", shard);
        prop_assert_eq!(replicas.len(), want, "shard {} has the wrong count", shard);
        prop_assert!(set.is_subset(&members), "shard {} has a non-member", shard);
    }
    Ok(())
}

/// Each node's slot share when nobody is capped at one slot per shard.
fn uncapped_targets(ring: &Ring) -> Option<Vec<(NodeId, f64)>> {
    let shards = ring.config().shards as f64;
    let total = shards * ring.effective_replication() as f64;
    let weights: u64 = ring.nodes().map(|(_, w)| u64::from(w)).sum();
    let t: Vec<(NodeId, f64)> = ring
        .nodes()
        .map(|(n, w)| (n, total * f64::from(w) / weights as f64))
        .collect();
    t.iter().all(|&(_, x)| x <= shards).then_some(t)
}

fn check_caps(ring: &Ring, slack: f64, op: Option<&Op>) -> Result<(), TestCaseError> {
    let Some(targets) = uncapped_targets(ring) else {
        return Ok(());
    };
    let load = ring.placement().replica_load();
    for (n, t) in targets {
        let l = load.get(&n).copied().unwrap_or(0) as f64;
        prop_assert!(
            l <= (t - 1e-9).ceil() + slack,
            "node {} holds {} slots, share {:.3} (after {:?})",
            n,
            l,
            t,
            op
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Replicas are distinct members, `min(rf, nodes)` of them, after building and after
    /// any sequence of additions, removals and reweights.
    #[test]
    fn replicas_are_distinct_and_complete(cfg in config(), nodes in members(true), ops in ops()) {
        let mut ring = Ring::with_nodes(cfg, nodes).unwrap();
        assert_valid(&ring)?;
        for op in &ops {
            apply(&mut ring, op);
            assert_valid(&ring)?;
        }
        let route = ring.route(b"some key");
        prop_assert_eq!(route.replicas.as_slice(), ring.replicas(route.shard).unwrap());
        prop_assert_eq!(ring.replicas_for_key(b"some key"), route.replicas.as_slice());
    }

    /// A key's first replica changes on an addition only if the new node takes it, and on
    /// a removal only if it was the removed node.
    #[test]
    fn first_replica_stable_under_unrelated_changes(
        cfg in config(),
        nodes in members(true),
        new in any::<u64>().prop_map(NodeId::new),
        victim in any::<usize>(),
        keys in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 1..64),
    ) {
        let mut ring = Ring::with_nodes(cfg, nodes).unwrap();
        prop_assume!(ring.weight(new).is_none());
        let before: Vec<NodeId> = keys.iter().map(|k| ring.replicas_for_key(k)[0]).collect();
        ring.add_node(new, DEFAULT_WEIGHT).unwrap();
        for (k, old) in keys.iter().zip(&before) {
            let now = ring.replicas_for_key(k)[0];
            prop_assert!(now == *old || now == new, "key {:?}: {} -> {}", k, old, now);
        }
        let ids: Vec<NodeId> = ring.nodes().map(|(n, _)| n).collect();
        let gone = ids[victim % ids.len()];
        let before: Vec<NodeId> = keys.iter().map(|k| ring.replicas_for_key(k)[0]).collect();
        ring.remove_node(gone).unwrap();
        for (k, old) in keys.iter().zip(&before) {
            if *old != gone {
                prop_assert_eq!(ring.replicas_for_key(k)[0], *old);
            }
        }
    }

    /// Removing a node changes only the shards it held: it leaves, at most one node joins
    /// (exactly one while enough nodes remain), and no other shard changes at all.
    #[test]
    fn removal_moves_only_the_removed_nodes_shards(
        cfg in config(),
        nodes in members(true),
        ops in ops(),
        victim in any::<usize>(),
    ) {
        let mut ring = Ring::with_nodes(cfg, nodes).unwrap();
        for op in &ops {
            apply(&mut ring, op);
        }
        prop_assume!(!ring.is_empty());
        let ids: Vec<NodeId> = ring.nodes().map(|(n, _)| n).collect();
        let gone = ids[victim % ids.len()];
        let before = ring.placement().clone();
        let refill = ring.len() > cfg.replication_factor as usize;
        let diff = ring.remove_node(gone).unwrap();
        for change in &diff.changes {
            prop_assert!(change.before.contains(&gone), "shard {} changed without {}", change.shard, gone);
            prop_assert_eq!(&change.removed, &vec![gone]);
            prop_assert_eq!(change.added.len(), usize::from(refill));
        }
        let held = before.iter().filter(|(_, r)| r.contains(&gone)).count();
        prop_assert_eq!(diff.shards_with_moves(), held);
    }

    /// Adding a node (all weights equal) moves replica slots only onto the new node, and
    /// no more than 1.25 × the ideal `slots / (nodes + 1)`, up to the one-slot
    /// granularity (when the ideal is below 4 slots, `ceil(ideal)`).
    #[test]
    fn addition_moves_at_most_a_fair_share(
        (vnodes, shards, rf) in (10u32..=200, 1u64..=256, 1u32..=5),
        nodes in members(false),
        new in any::<u64>().prop_map(NodeId::new),
    ) {
        let cfg = RingConfig { vnodes, shards, replication_factor: rf, strategy: PlacementStrategy::BoundedLoad };
        let mut ring = Ring::with_nodes(cfg, nodes).unwrap();
        prop_assume!(ring.weight(new).is_none());
        let diff = ring.add_node(new, DEFAULT_WEIGHT).unwrap();
        let n = ring.len() as f64;
        let ideal = shards as f64 * ring.effective_replication() as f64 / n;
        let bound = (1.25 * ideal).floor().max(ideal.ceil());
        let moved = diff.moved_replicas() as f64;
        prop_assert!(moved <= bound, "moved {} slots, ideal {:.2}, bound {}", moved, ideal, bound);
        for change in &diff.changes {
            prop_assert_eq!(&change.added, &vec![new]);
            prop_assert!(change.removed.len() <= 1);
        }
        // And it does take its share: nobody is left above ceil(ideal).
        let max = ring.placement().replica_load().values().copied().max().unwrap_or(0) as f64;
        prop_assert!(max <= ideal.ceil(), "max load {} > ceil({:.2})", max, ideal);
    }

    /// Pure consistent hashing also only moves slots onto an added node.
    #[test]
    fn consistent_hash_addition_only_adds_the_new_node(
        (vnodes, shards, rf) in (10u32..=200, 1u64..=128, 1u32..=5),
        nodes in members(true),
        new in any::<u64>().prop_map(NodeId::new),
    ) {
        let cfg = RingConfig { vnodes, shards, replication_factor: rf, strategy: PlacementStrategy::ConsistentHash };
        let mut ring = Ring::with_nodes(cfg, nodes).unwrap();
        prop_assume!(ring.weight(new).is_none());
        let diff = ring.add_node(new, DEFAULT_WEIGHT).unwrap();
        for change in &diff.changes {
            prop_assert_eq!(&change.added, &vec![new]);
            prop_assert!(change.removed.len() <= 1);
        }
    }

    /// Bounded-load placements keep every node within ceil of its weighted share, after
    /// building and after additions and reweights (removals only repair, but never push a
    /// node above its ceiling either).
    #[test]
    fn bounded_load_respects_weighted_caps(
        (vnodes, shards, rf) in (10u32..=200, 1u64..=256, 1u32..=5),
        nodes in members(true),
        ops in ops(),
    ) {
        let cfg = RingConfig { vnodes, shards, replication_factor: rf, strategy: PlacementStrategy::BoundedLoad };
        let mut ring = Ring::with_nodes(cfg, nodes).unwrap();
        for op in std::iter::once(None).chain(ops.iter().map(Some)) {
            if let Some(op) = op {
                apply(&mut ring, op);
            }
            // A removal only repairs the shards the node held, which cannot always respect
            // weighted caps (e.g. a heavy node whose share becomes every shard can only
            // gain shards the removed node held); `rebalance` restores them below.
            if !matches!(op, Some(Op::Remove(_))) {
                check_caps(&ring, 0.0, op)?;
            }
        }
        ring.rebalance();
        check_caps(&ring, 0.0, None)?;
    }

    /// With equal weights, repairing removals keeps every node within one slot of its
    /// ceiling (the repair is a matching that only re-points shards the removed nodes
    /// held), and `rebalance` then restores the ceilings exactly.
    #[test]
    fn removals_stay_near_caps_with_equal_weights(
        (vnodes, shards, rf) in (10u32..=200, 1u64..=256, 1u32..=5),
        nodes in members(false),
        victims in prop::collection::vec(any::<usize>(), 1..6),
    ) {
        let cfg = RingConfig { vnodes, shards, replication_factor: rf, strategy: PlacementStrategy::BoundedLoad };
        let mut ring = Ring::with_nodes(cfg, nodes).unwrap();
        for v in &victims {
            let ids: Vec<NodeId> = ring.nodes().map(|(n, _)| n).collect();
            if ids.len() <= 1 {
                break;
            }
            ring.remove_node(ids[v % ids.len()]).unwrap();
            check_caps(&ring, 1.0, None)?;
        }
        ring.rebalance();
        check_caps(&ring, 0.0, None)?;
    }

    /// Building from scratch depends on the member set, not on the order it is given in;
    /// and serialisation round-trips.
    #[test]
    fn build_is_order_independent_and_serialisable(cfg in config(), nodes in members(true)) {
        let a = Ring::with_nodes(cfg, nodes.clone()).unwrap();
        let b = Ring::with_nodes(cfg, nodes.into_iter().rev()).unwrap();
        prop_assert_eq!(&a, &b);
        let json = serde_json::to_string(&a).unwrap();
        let back: Ring = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&back, &a);
        prop_assert_eq!(back.route(b"k"), a.route(b"k"));
    }
}
