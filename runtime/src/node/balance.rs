//! The leader balancer's shell on a sharded node (`[ring] sharded`, docs/sharding.md,
//! "Leaders are spread"): every [`TICK`] it publishes how many shards this node leads
//! ([`super::gossip::LEADERS_KEY`] in its gossip metadata), builds what this node knows —
//! every alive, undrained replica node's published count, the shards this node leads and how
//! far behind their other replicas are — and starts the leader transfers
//! [`conclave_ring::leader_balance::LeaderBalancer`] decides, through each group's ordinary
//! leader-transfer path (Raft thesis §3.10: the target is brought up to date, then told to
//! campaign).
//!
//! Every node decides for the shards it leads only (the decision logic's module docs argue
//! why: only the leader can start a transfer and only it knows whether the target is caught
//! up), and all compute the same plan from the same gossiped counts. Nothing here blocks: the
//! task reads the groups' published snapshots and sends each transfer to its group's actor
//! without waiting.

use super::gossip::{DRAINED_KEY, LEADERS_KEY};
use super::{group, NodeHandle, NodeId};
use crate::state_machine::StateMachine;
use conclave_core::ids::GroupId;
use conclave_core::raft::Role;
use conclave_core::swim::MemberState;
use conclave_ring::leader_balance::{
    BalanceConfig, BalanceView, LeaderBalancer, LedShard, Replica,
};
use conclave_ring::ShardMap;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How often the balancer looks.
pub const TICK: Duration = Duration::from_millis(250);
/// Most entries a transfer's target may be behind the leader: more is a replica catching up
/// (a new leader would first have to bring itself up to date before serving).
const MAX_LAG: u64 = 1024;

/// The balancer's settings from the node's configuration: the counts must stand still for
/// three gossip cycles (a change reaches every node of a small cluster in one or two), and a
/// transfer not done within four maximal election timeouts is given up (the Raft core
/// abandons its own after one).
fn balance_config(config: &crate::config::Config) -> BalanceConfig {
    let cycle = config.gossip.cycle_interval_ms.max(1);
    let election = config.raft.election_timeout_ms[1].max(1);
    BalanceConfig {
        settle_ms: 3 * cycle,
        transfer_timeout_ms: 4 * election,
        max_lag: MAX_LAG,
        ..BalanceConfig::default()
    }
}

/// Starts the balancer of a sharded node (nothing on an unsharded one); it ends with the node.
pub(super) fn spawn<M: StateMachine>(handle: &NodeHandle<M>) {
    if handle.inner.shards.is_none() {
        return;
    }
    let me = handle.inner.id;
    let config = balance_config(&handle.inner.config);
    let inner = Arc::downgrade(&handle.inner);
    actix::spawn(async move {
        let mut balancer = LeaderBalancer::new(me, config);
        let start = Instant::now();
        let mut published: Option<u64> = None;
        let mut every = actix::clock::interval(TICK);
        loop {
            every.tick().await;
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let handle = NodeHandle { inner };
            if handle
                .inner
                .shutting_down
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                return;
            }
            let Some(map) = handle.shard_map() else {
                return;
            };
            let led = handle.led_shards(&map);
            let count = led.len() as u64;
            if published != Some(count) {
                match handle.publish_leaders(count).await {
                    Ok(()) => published = Some(count),
                    Err(e) => tracing::debug!(error = %e, "cannot publish the shards led"),
                }
            }
            metrics::gauge!("conclave_shard_leaders").set(count as f64);
            let view = BalanceView {
                counts: handle.leader_counts(&map),
                led,
            };
            let now = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
            let before = balancer.stats();
            for t in balancer.tick(now, &view) {
                let group = conclave_ring::group_of_shard(t.shard);
                tracing::info!(
                    shard = %t.shard,
                    %group,
                    to = %t.to,
                    "balancing leaders: transfer"
                );
                handle.start_transfer(group, t.to);
            }
            let after = balancer.stats();
            for (outcome, n) in [
                ("started", after.started - before.started),
                ("completed", after.completed - before.completed),
                ("abandoned", after.abandoned - before.abandoned),
            ] {
                if n > 0 {
                    metrics::counter!("conclave_shard_leader_transfers_total", "outcome" => outcome)
                        .increment(n);
                }
            }
        }
    });
}

impl<M: StateMachine> NodeHandle<M> {
    /// The shards this node's replicas lead, with their other replicas' lag as the leader
    /// tracks it.
    fn led_shards(&self, map: &ShardMap) -> Vec<LedShard> {
        let me = self.inner.id;
        map.entries()
            .iter()
            .filter_map(|e| {
                let g = self.inner.registry.get(e.group)?;
                let snap = g.shared.snapshot.read();
                if snap.role != Some(Role::Leader) || snap.leader != Some(me) {
                    return None;
                }
                let matched: BTreeMap<NodeId, u64> = snap.progress.iter().copied().collect();
                Some(LedShard {
                    shard: e.shard,
                    replicas: e
                        .replicas
                        .iter()
                        .filter(|&&r| r != me)
                        .map(|&r| Replica {
                            node: r,
                            lag: matched.get(&r).map(|&m| snap.last_index.saturating_sub(m)),
                        })
                        .collect(),
                })
            })
            .collect()
    }

    /// The published leader counts of the nodes that may lead shards: replicas of some shard
    /// that gossip holds alive and that are not drained.
    fn leader_counts(&self, map: &ShardMap) -> BTreeMap<NodeId, Option<u64>> {
        let replicas: BTreeSet<NodeId> = map
            .entries()
            .iter()
            .flat_map(|e| e.replicas.iter().copied())
            .collect();
        self.inner
            .gossip
            .shared
            .members()
            .into_iter()
            .filter(|m| {
                m.state == MemberState::Alive
                    && replicas.contains(&m.id)
                    && m.metadata.entries.get(DRAINED_KEY).map(String::as_str) != Some("true")
            })
            .map(|m| {
                let count = m
                    .metadata
                    .entries
                    .get(LEADERS_KEY)
                    .and_then(|v| v.parse::<u64>().ok());
                (m.id, count)
            })
            .collect()
    }

    /// Asks `group`'s replica here to hand its leadership to `to`, without waiting: the
    /// balancer sees the outcome in the group's leader (a refusal — no longer the leader, a
    /// full mailbox — is logged and the transfer is given up in time).
    fn start_transfer(&self, group: GroupId, to: NodeId) {
        let Some(addr) = self.inner.registry.actor(group) else {
            return;
        };
        let (reply, rx) = oneshot::channel();
        if addr.try_send(group::TransferLeader { to, reply }).is_err() {
            tracing::debug!(%group, %to, "balancing leaders: the group's mailbox refused");
            return;
        }
        actix::spawn(async move {
            if let Ok(Err(e)) = rx.await {
                tracing::debug!(%group, %to, error = %e, "balancing leaders: transfer refused");
            }
        });
    }
}
