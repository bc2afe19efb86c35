//! Metrics by shard (issue 16 point 4, docs/node.md "Metrics per group and shard"): a
//! sharded node labels its shard groups' series with `shard` as well as `group` while
//! `[ring] shards` is at most `MAX_LABELLED_SHARDS`, and exports the shard aggregates
//! (`conclave_shard_groups{role}`, `conclave_shard_proposals_total`, …) always; above the cap
//! its shard groups export no series of their own. The Prometheus recorder is the process's
//! global one, so this binary holds one test, which runs a node under the cap and then one
//! above it.

#![allow(clippy::unwrap_used)]

mod common;

use conclave::api::KvService;
use conclave::config::Config;
use conclave::node::group_metrics::MAX_LABELLED_SHARDS;
use conclave::node::{Node, NodeHandle};
use conclave::state_machine::{KvCommand, KvMachine, KvRequest};
use std::time::{Duration, Instant};

/// One sharded node alone: with one member every shard has one replica, so it hosts and
/// leads them all.
async fn start(dir: &std::path::Path, shards: u64) -> Node<KvMachine> {
    let mut c: Config = common::local_configs(1, dir).pop().unwrap();
    c.ring.sharded = true;
    c.ring.shards = shards;
    let data = c.node.data_dir.clone();
    let handle = metrics_handle();
    Node::builder()
        .config(c)
        .state_machine_for_groups(move |g| KvMachine::open(&data.join(format!("sm-{g}"))))
        .sharding()
        .metrics(handle)
        .start()
        .await
        .unwrap()
}

fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .unwrap()
        })
        .clone()
}

/// Waits until the node leads every shard, then writes `keys` keys.
async fn led_and_written(h: &NodeHandle<KvMachine>, shards: usize, keys: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while h
        .shards_status()
        .shards
        .iter()
        .filter(|s| s.leader == Some(h.id()))
        .count()
        < shards
    {
        assert!(Instant::now() < deadline, "shards without a leader");
        actix::clock::sleep(Duration::from_millis(50)).await;
    }
    for k in 0..keys {
        let req = KvRequest {
            id: None,
            op: KvCommand::Put {
                key: format!("k{k}").into_bytes(),
                value: b"v".to_vec(),
            },
        };
        h.write_routed(req).await.unwrap();
    }
}

/// The samples of `name` in a Prometheus text page: each line's labels and value.
fn samples<'a>(page: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    page.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let (labels, value) = r.split_once('}')?;
                    (labels, value)
                }
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

/// The value of `name` with exactly these labels (in any order).
fn value(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(page, name).into_iter().find_map(|(l, v)| {
        let mut have: Vec<&str> = if l.is_empty() {
            Vec::new()
        } else {
            l.split(',').collect()
        };
        let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        have.sort_unstable();
        want.sort_unstable();
        (have == want).then_some(v)
    })
}

#[actix::test]
async fn shard_groups_are_labelled_by_shard_up_to_the_cap_and_aggregated_always() {
    // Under the cap: 6 shards.
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), 6).await;
    let h = node.handle();
    led_and_written(&h, 6, 30).await;
    let page = h.render_metrics();
    for shard in 0..6u64 {
        let group = (shard + 1).to_string();
        let s = shard.to_string();
        let labels = [("group", group.as_str()), ("shard", s.as_str())];
        let commit = value(&page, "conclave_raft_commit_index", &labels);
        assert!(
            commit.is_some_and(|c| c >= 1.0),
            "shard {shard}: commit index {commit:?}\n{page}"
        );
        assert_eq!(
            value(&page, "conclave_raft_role", &labels),
            Some(2.0),
            "leader"
        );
        assert!(value(&page, "conclave_raft_applied_index", &labels).is_some());
        assert!(value(&page, "conclave_raft_leader_elections_total", &labels).is_some());
    }
    // Group 0 serves no shard: its series carry `group` only.
    assert!(value(&page, "conclave_raft_role", &[("group", "0")]).is_some());
    // The proposals, per shard and in total.
    let per_shard: f64 = samples(&page, "conclave_raft_proposals_total")
        .iter()
        .filter(|(l, _)| l.contains("shard="))
        .map(|(_, v)| v)
        .sum();
    assert!(per_shard >= 30.0, "{per_shard}");
    let total = value(&page, "conclave_shard_proposals_total", &[]).unwrap();
    assert_eq!(total, per_shard);
    // The aggregates.
    assert_eq!(
        value(&page, "conclave_shard_groups", &[("role", "leader")]),
        Some(6.0)
    );
    assert_eq!(
        value(&page, "conclave_shard_groups", &[("role", "follower")]),
        Some(0.0)
    );
    assert!(value(&page, "conclave_shard_apply_lag_max", &[]).is_some());
    assert!(value(&page, "conclave_shard_replication_lag_max", &[]).is_some());
    assert!(value(&page, "conclave_shard_leader_elections_total", &[]).unwrap() >= 6.0);
    node.shutdown().await;

    // Above the cap: no series of a shard group's own (groups 7 and up are new here; groups
    // 1-6 keep the first node's series in this process's recorder), the aggregates count
    // every shard.
    let shards = MAX_LABELLED_SHARDS + 1;
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), shards).await;
    let h = node.handle();
    led_and_written(&h, shards as usize, 30).await;
    let page = h.render_metrics();
    for line in page.lines().filter(|l| l.starts_with("conclave_")) {
        for g in 7..=shards {
            assert!(
                !line.contains(&format!("group=\"{g}\"")),
                "a shard group above the cap exports its own series: {line}"
            );
        }
    }
    assert_eq!(
        value(&page, "conclave_shard_groups", &[("role", "leader")]),
        Some(shards as f64)
    );
    assert!(value(&page, "conclave_shard_proposals_total", &[]).unwrap() >= total + 30.0);
    assert!(value(&page, "conclave_raft_role", &[("group", "0")]).is_some());
    node.shutdown().await;
}
