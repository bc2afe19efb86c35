//! Golden data: keys with their expected hash, shard and replicas for fixed memberships,
//! checked in as `tests/golden.json`. Any change to the hash functions or to the
//! from-scratch placement shows up here: that is a compatibility break for running
//! clusters (keys would move), so the file must only be regenerated deliberately:
//!
//! ```text
//! cargo test -p conclave-ring --test golden -- --ignored regenerate_golden_file
//! ```

#![allow(clippy::unwrap_used)]

use conclave_ring::hash::{key_hash, node_position, shard_position};
use conclave_ring::{NodeEntry, NodeId, PlacementStrategy, Ring, RingConfig, ShardId};
use serde::{Deserialize, Serialize};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden.json");

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Golden {
    /// Ring position of each node's first virtual node.
    node_positions: Vec<(NodeId, u64)>,
    /// Ring position each shard is looked up at.
    shard_positions: Vec<(ShardId, u64)>,
    cases: Vec<Case>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Case {
    config: RingConfig,
    nodes: Vec<NodeEntry>,
    keys: Vec<KeyRoute>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct KeyRoute {
    key: String,
    hash: u64,
    shard: ShardId,
    replicas: Vec<NodeId>,
}

fn keys() -> Vec<String> {
    let mut keys: Vec<String> = ["", "a", "user:42", "orders/2024/0001", "ключ", "🔑"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    keys.extend((0..120).map(|i| format!("key-{i}")));
    keys
}

fn memberships() -> Vec<(RingConfig, Vec<NodeEntry>)> {
    let entry = |id, weight| NodeEntry { id, weight };
    let five: Vec<NodeEntry> = (1..=5).map(NodeId::new).map(|n| entry(n, 100)).collect();
    let weighted = vec![
        entry(NodeId::new(10), 100),
        entry(NodeId::new(20), 100),
        entry(NodeId::new(30), 200),
        entry(NodeId::new(40), 50),
        entry(NodeId::new(0xdead_beef_cafe), 100),
        entry(NodeId::new(u64::MAX), 100),
    ];
    let ch = RingConfig {
        strategy: PlacementStrategy::ConsistentHash,
        ..RingConfig::default()
    };
    let small = RingConfig {
        vnodes: 50,
        shards: 16,
        replication_factor: 5,
        strategy: PlacementStrategy::BoundedLoad,
    };
    vec![
        (RingConfig::default(), five.clone()),
        (ch, five),
        (RingConfig::default(), weighted.clone()),
        (ch, weighted.clone()),
        (small, weighted),
    ]
}

fn compute() -> Golden {
    let cases = memberships()
        .into_iter()
        .map(|(config, nodes)| {
            let ring = Ring::with_nodes(config, nodes.iter().map(|n| (n.id, n.weight))).unwrap();
            let keys = keys()
                .into_iter()
                .map(|key| {
                    let route = ring.route(key.as_bytes());
                    KeyRoute {
                        hash: key_hash(key.as_bytes()),
                        shard: route.shard,
                        replicas: route.replicas,
                        key,
                    }
                })
                .collect();
            Case {
                config,
                nodes,
                keys,
            }
        })
        .collect();
    Golden {
        node_positions: [0, 1, 2, 3, 1000, u64::MAX]
            .iter()
            .map(|&n| (NodeId::new(n), node_position(NodeId::new(n))))
            .collect(),
        shard_positions: (0..8)
            .map(ShardId::new)
            .map(|s| (s, shard_position(s)))
            .collect(),
        cases,
    }
}

#[test]
fn routes_match_the_golden_file() {
    let text = std::fs::read_to_string(PATH).unwrap();
    let expected: Golden = serde_json::from_str(&text).unwrap();
    let actual = compute();
    assert_eq!(actual.node_positions, expected.node_positions);
    assert_eq!(actual.shard_positions, expected.shard_positions);
    assert_eq!(actual.cases.len(), expected.cases.len());
    for (a, e) in actual.cases.iter().zip(&expected.cases) {
        assert_eq!(a.config, e.config);
        assert_eq!(a.nodes, e.nodes);
        for (ka, ke) in a.keys.iter().zip(&e.keys) {
            assert_eq!(ka, ke, "config {:?}", a.config);
        }
        assert_eq!(a.keys.len(), e.keys.len());
    }
}

/// Rewrites `tests/golden.json` from the current code. Ignored: run it only when a
/// routing change is intended (and say so in the changelog).
#[test]
#[ignore = "writes tests/golden.json; run only for an intended routing change"]
fn regenerate_golden_file() {
    // One key per line keeps the file small and its diffs readable.
    let golden = compute();
    let compact = |v: &dyn erased::Json| v.json();
    let mut out = String::from("{\n");
    out += &format!("\"node_positions\": {},\n", compact(&golden.node_positions));
    out += &format!(
        "\"shard_positions\": {},\n",
        compact(&golden.shard_positions)
    );
    out += "\"cases\": [\n";
    for (i, case) in golden.cases.iter().enumerate() {
        out += &format!(
            "{{\"config\": {}, \"nodes\": {}, \"keys\": [\n",
            compact(&case.config),
            compact(&case.nodes)
        );
        let lines: Vec<String> = case.keys.iter().map(|k| compact(k)).collect();
        out += &lines.join(",\n");
        out += if i + 1 == golden.cases.len() {
            "\n]}\n"
        } else {
            "\n]},\n"
        };
    }
    out += "]}\n";
    // The hand-built text must parse back to the same data.
    assert_eq!(serde_json::from_str::<Golden>(&out).unwrap(), golden);
    std::fs::write(PATH, out).unwrap();
}

/// `serde_json::to_string` behind a trait object, for the formatter above.
mod erased {
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap()
        }
    }
}
