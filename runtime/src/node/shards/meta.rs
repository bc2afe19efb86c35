//! Group 0 as the shard map's metadata group (`[ring] sharded`, docs/sharding.md).
//!
//! **The record.** The committed shard map is one record in group 0's state machine, set by
//! [`ShardedMachine::metadata_command`](crate::state_machine::ShardedMachine::metadata_command)
//! (a compare-and-set on a record no user command reaches; the key-value machine keeps it
//! beside, never among, its keys) and read by `metadata_query`. So it is replicated like any
//! entry of group 0, kept in its machine's durable state and in its snapshots, and a node
//! that was down or is new gets it from group 0's log or snapshot. On a sharded node group 0
//! serves no keys, so the group holds the membership and this record only. The record is the
//! map without leader hints: hints change with every election and are each node's own
//! knowledge, not something the cluster must agree on (`ShardMap::without_leader_hints`).
//!
//! **Bootstrap.** Every initial member computes the same bootstrap map (version 1) from the
//! same `[ring]` settings and hosts its shards from it at once (group 0 has no leader yet).
//! Group 0's leader then commits it: a compare-and-set from "no record", so of two leaders in
//! turn only the first one's lands. A node whose map differs from the committed one under the
//! same version (started with other `[ring]` settings) logs it; its forwarded requests are
//! refused with `shard_map_conflict` as before.
//!
//! **Adoption.** Every node looks at its own replica of group 0 every `[ring] map_watch_ms`
//! (default 500; a local read of its applied state, no message) and adopts a newer committed map, keeping its own
//! leader hints; a node also adopts a newer map from a peer's `StaleMap` answer (`shards`).
//! Only maps with the same replica sets are adopted (moving replicas is not built). A
//! restarted node starts from `data_dir/shard-map` (its last adopted map, or the bootstrap
//! map when the file is gone) and adopts group 0's committed map at its first look.
//!
//! **A node that joins** (`cluster.join`) has no initial members to place shards on: it
//! starts without a map (requests answered retryably, forwards `MapBehind`) and takes the
//! committed map at its first look after group 0 reached it (added as a learner). It hosts no
//! shard — a committed map that places one on it is not adopted (moving replicas is not
//! built) — and serves every key by forwarding.
//!
//! **Changes.** A change is a proposal to group 0 on its leader: it reads the committed map
//! linearizably, checks the caller's `expected_version`, builds the next map (version + 1)
//! and commits it with a compare-and-set on the record it read, so a change by someone else
//! in between is refused (`shard_map_changed`), never overwritten. The one change built:
//! a shard's preferred leader ([`NodeHandle::prefer_shard_leader`], `POST
//! /v1/shards/preferred-leader`).
//!
//! **Voters.** Group 0 is bootstrapped with every initial member; with more than
//! [`MAX_METADATA_VOTERS`] on a sharded cluster, the lowest ids vote and the others are
//! learners ([`group0_voters_and_learners`]): they replicate group 0's log (the membership
//! and the map) without making its quorum larger.

use super::{internal, ShardRouter};
use crate::api::{RequestError, ShardMapChange};
use crate::config::ReadLevel;
use crate::node::{NodeHandle, NodeId};
use crate::state_machine::StateMachine;
use crate::storage::shard_map_file;
use conclave_core::ids::GroupId;
use conclave_core::ids::ShardId;
use conclave_core::raft::Membership;
use conclave_ring::{ShardMap, ShardMapError};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Most voters of group 0 on a sharded cluster; further initial members are its learners.
pub const MAX_METADATA_VOTERS: usize = 5;
/// The record's format.
const RECORD_FORMAT: u32 = 1;

/// What group 0's metadata record holds.
#[derive(Debug, Serialize, Deserialize)]
struct MapRecord {
    format: u32,
    map: ShardMap,
}

/// Why group 0's record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MapRecordError {
    /// The record does not decode.
    #[error("group 0's shard map record does not decode")]
    Decode(#[source] rmp_serde::decode::Error),
    /// The record was written by a build with another format.
    #[error("group 0's shard map record has format {0}; this build reads format {RECORD_FORMAT}")]
    Format(u32),
    /// The record holds a map that is not valid.
    #[error("group 0's shard map record holds an invalid map")]
    Invalid(#[source] ShardMapError),
    /// The map could not be encoded.
    #[error("cannot encode the shard map record")]
    Encode(#[source] rmp_serde::encode::Error),
}

/// The record of `map`: its content and version, no leader hints.
fn encode(map: &ShardMap) -> Result<Vec<u8>, MapRecordError> {
    rmp_serde::to_vec(&MapRecord {
        format: RECORD_FORMAT,
        map: map.without_leader_hints(),
    })
    .map_err(MapRecordError::Encode)
}

/// The map of a record, validated.
fn decode(bytes: &[u8]) -> Result<ShardMap, MapRecordError> {
    let record: MapRecord = rmp_serde::from_slice(bytes).map_err(MapRecordError::Decode)?;
    if record.format != RECORD_FORMAT {
        return Err(MapRecordError::Format(record.format));
    }
    record.map.validate().map_err(MapRecordError::Invalid)?;
    Ok(record.map)
}

/// Group 0's bootstrap membership on a sharded cluster: the [`MAX_METADATA_VOTERS`] lowest
/// ids vote, further members are learners (every initial member computes the same split).
pub(crate) fn group0_voters_and_learners(membership: &mut Membership) {
    let extra: Vec<NodeId> = membership
        .voters
        .iter()
        .copied()
        .skip(MAX_METADATA_VOTERS)
        .collect();
    for id in extra {
        membership.voters.remove(&id);
        membership.learners.insert(id);
    }
}

impl ShardRouter {
    /// Adopts `committed`, group 0's map, if it is newer than this node's and moves no
    /// replica; keeps this node's leader hints (the record has none) and stores it off the
    /// caller's thread. Returns whether it was adopted.
    fn adopt_committed(&self, mut committed: ShardMap, me: NodeId) -> bool {
        let mut guard = self.map.write();
        let from = match guard.as_ref() {
            Some((current, _)) => {
                if committed.version() <= current.version() {
                    return false;
                }
                if !current.same_replica_sets(&committed) {
                    tracing::error!(
                        ours = current.version(),
                        committed = committed.version(),
                        "group 0's shard map moves replicas, which this build cannot do; keeping ours"
                    );
                    metrics::counter!("conclave_shard_map_refused_total", "reason" => "moves_replicas")
                        .increment(1);
                    return false;
                }
                committed.keep_leader_hints(current);
                current.version()
            }
            // A node that joined: it hosts no shard (placement covers the initial members);
            // a map that places one on it would need groups started, which is not built.
            None => {
                if committed.shards_of(me).next().is_some() {
                    tracing::error!(
                        committed = committed.version(),
                        "group 0's shard map places shards on this joined node, which this build cannot host"
                    );
                    metrics::counter!("conclave_shard_map_refused_total", "reason" => "moves_replicas")
                        .increment(1);
                    return false;
                }
                0
            }
        };
        tracing::info!(
            from,
            to = committed.version(),
            "adopting group 0's committed shard map"
        );
        let digest = committed.digest();
        *guard = Some((committed.clone(), digest));
        drop(guard);
        self.adopted_group0.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("conclave_shard_map_adopted_total", "source" => "group0").increment(1);
        let dir = self.data_dir.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = shard_map_file::store(&dir, &committed) {
                tracing::error!(error = %e, "cannot store the adopted shard map");
            }
        });
        true
    }
}

/// A shard's entry in `map`, as a change's answer.
fn change_of(map: &ShardMap, shard: ShardId, changed: bool) -> ShardMapChange {
    let replicas = map
        .entry(shard)
        .map(|e| e.replicas.clone())
        .unwrap_or_default();
    ShardMapChange {
        shard,
        group: conclave_ring::group_of_shard(shard),
        replicas,
        map_version: map.version(),
        changed,
    }
}

impl<M: StateMachine> NodeHandle<M> {
    /// Group 0's committed shard map (`None` before the bootstrap map is committed): as this
    /// node's replica applied it (`Stale`), or as group 0's leader knows it (`Linearizable`,
    /// `Lease`: on the leader only, `NotLeader` elsewhere). Not sharded: `NotSharded`.
    pub async fn committed_shard_map(
        &self,
        consistency: ReadLevel,
    ) -> Result<Option<ShardMap>, RequestError> {
        Ok(self.map_record(consistency).await?.map(|(_, m)| m))
    }

    /// Group 0's record and its map.
    async fn map_record(
        &self,
        consistency: ReadLevel,
    ) -> Result<Option<(Vec<u8>, ShardMap)>, RequestError> {
        let s = self.sharding().ok_or(RequestError::NotSharded)?;
        let output = self.read(s.codec.metadata_query(), consistency).await?;
        let Some(bytes) = s.codec.metadata_of(output).map_err(internal)? else {
            return Ok(None);
        };
        let map = decode(&bytes).map_err(internal)?;
        Ok(Some((bytes, map)))
    }

    /// Proposes `next` as group 0's record if it holds `expected` (`None`: no record). Whether
    /// it was set.
    async fn commit_map(
        &self,
        expected: Option<Vec<u8>>,
        next: &ShardMap,
    ) -> Result<bool, RequestError> {
        let s = self.sharding().ok_or(RequestError::NotSharded)?;
        let record = encode(next).map_err(internal)?;
        let written = self
            .write(s.codec.metadata_command(expected, record))
            .await?;
        Ok(s.codec.metadata_set(&written.output))
    }

    /// Makes `node` the preferred leader of `shard` (its first replica; the replicas stay the
    /// same) by committing the next map (version + 1) through group 0, on group 0's leader
    /// (`NotLeader` elsewhere). Refused with `ShardMapChanged` when the committed map is not
    /// at `expected_version` (or another change commits first), `InvalidShardChange` for a
    /// shard or node that does not fit, `LeaderNotReady` while the bootstrap map is not
    /// committed yet. This node adopts the new map at once; the others at their next look at
    /// group 0, or from a `StaleMap` answer. A node that already is the preferred leader
    /// changes nothing (`changed: false`).
    pub async fn prefer_shard_leader(
        &self,
        shard: ShardId,
        node: NodeId,
        expected_version: Option<u64>,
    ) -> Result<ShardMapChange, RequestError> {
        let s = self.sharding().ok_or(RequestError::NotSharded)?;
        self.admit()?;
        // Linearizable on group 0's leader: the latest committed map.
        let Some((bytes, current)) = self.map_record(ReadLevel::Linearizable).await? else {
            return Err(RequestError::LeaderNotReady);
        };
        if let Some(expected) = expected_version {
            if expected != current.version() {
                return Err(RequestError::ShardMapChanged {
                    expected,
                    current: current.version(),
                });
            }
        }
        let Some(next) = current.with_preferred_leader(shard, node)? else {
            return Ok(change_of(&current, shard, false));
        };
        if !self.commit_map(Some(bytes), &next).await? {
            // Another change committed between the read and this proposal.
            let now = self
                .map_record(ReadLevel::Stale)
                .await?
                .map_or(current.version(), |(_, m)| m.version());
            return Err(RequestError::ShardMapChanged {
                expected: current.version(),
                current: now,
            });
        }
        s.router.adopt_committed(next.clone(), self.inner.id);
        tracing::info!(
            %shard,
            %node,
            version = next.version(),
            "shard map: preferred leader changed"
        );
        Ok(change_of(&next, shard, true))
    }

    /// Looks at this node's replica of group 0 every `[ring] map_watch_ms` for as long as the
    /// node lives (see the module docs).
    pub(in crate::node) fn spawn_map_watch(&self) {
        if self.sharding().is_none() {
            return;
        }
        let period = Duration::from_millis(self.inner.config.ring.map_watch_ms.max(1));
        let inner = Arc::downgrade(&self.inner);
        actix::spawn(async move {
            let mut every = actix::clock::interval(period);
            let mut conflict_logged = false;
            loop {
                every.tick().await;
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                let handle = NodeHandle { inner };
                if handle.inner.shutting_down.load(Ordering::Relaxed) {
                    return;
                }
                handle.look_at_group0(&mut conflict_logged).await;
            }
        });
    }

    /// One look: adopt a newer committed map; on group 0's leader, commit this node's map
    /// when nothing is committed yet.
    async fn look_at_group0(&self, conflict_logged: &mut bool) {
        let Some(s) = self.sharding() else {
            return;
        };
        match self.map_record(ReadLevel::Stale).await {
            Ok(Some((_, committed))) => {
                let Some(mine) = s.router.map() else {
                    s.router.adopt_committed(committed, self.inner.id);
                    return;
                };
                if committed.version() > mine.version() {
                    s.router.adopt_committed(committed, self.inner.id);
                } else if committed.version() == mine.version()
                    && committed.digest() != mine.digest()
                    && !*conflict_logged
                {
                    *conflict_logged = true;
                    metrics::counter!("conclave_shard_map_refused_total", "reason" => "conflict")
                        .increment(1);
                    tracing::error!(
                        version = mine.version(),
                        "this node's shard map differs from the one committed in group 0 under the same version (different [ring] settings?)"
                    );
                }
            }
            Ok(None) => {
                let leads = self
                    .inner
                    .registry
                    .get(GroupId::FIRST)
                    .is_some_and(|g| g.shared.snapshot.read().leader == Some(self.inner.id));
                if !leads {
                    return;
                }
                // From "no record": if another leader committed first, this changes nothing
                // and the next look compares.
                let Some(mine) = s.router.map() else {
                    return;
                };
                match self.commit_map(None, &mine).await {
                    Ok(true) => tracing::info!(
                        version = mine.version(),
                        "shard map committed through group 0"
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::debug!(error = %e, "cannot commit the shard map yet"),
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read group 0's shard map"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use conclave_ring::{Ring, RingConfig, DEFAULT_WEIGHT};

    fn map() -> ShardMap {
        let config = RingConfig {
            shards: 8,
            ..RingConfig::default()
        };
        let ring = Ring::with_nodes(
            config,
            (1..=3).map(NodeId::new).map(|n| (n, DEFAULT_WEIGHT)),
        )
        .unwrap();
        ShardMap::bootstrap(ring.placement()).unwrap()
    }

    #[test]
    fn the_record_carries_the_map_without_hints_and_refuses_what_is_not_one() {
        let m = map();
        let bytes = encode(&m).unwrap();
        let back = decode(&bytes).unwrap();
        assert!(back.same_content(&m));
        assert!(back.entries().iter().all(|e| e.leader_hint.is_none()));
        // The same map gives the same bytes (the compare-and-set compares them).
        assert_eq!(encode(&back).unwrap(), bytes);
        assert!(matches!(
            decode(b"\xc1 not a record"),
            Err(MapRecordError::Decode(_))
        ));
        let future = rmp_serde::to_vec(&MapRecord {
            format: RECORD_FORMAT + 1,
            map: m.clone(),
        })
        .unwrap();
        assert!(
            matches!(decode(&future), Err(MapRecordError::Format(f)) if f == RECORD_FORMAT + 1)
        );
    }

    #[test]
    fn group0_has_at_most_five_voters_the_lowest_ids() {
        let mut small = Membership::with_voters([NodeId::new(3), NodeId::new(1), NodeId::new(2)]);
        group0_voters_and_learners(&mut small);
        assert_eq!(small.voters.len(), 3);
        assert!(small.learners.is_empty());
        let mut big = Membership::with_voters((1..=7).map(NodeId::new));
        group0_voters_and_learners(&mut big);
        assert_eq!(
            big.voters.iter().copied().collect::<Vec<_>>(),
            [
                NodeId::new(1),
                NodeId::new(2),
                NodeId::new(3),
                NodeId::new(4),
                NodeId::new(5)
            ]
        );
        assert_eq!(
            big.learners.iter().copied().collect::<Vec<_>>(),
            [NodeId::new(6), NodeId::new(7)]
        );
        assert!((1..=7).map(NodeId::new).all(|n| big.contains(n)));
    }
}
