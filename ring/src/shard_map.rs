//! The shard map: which Raft group serves each shard, on which replicas, and a version that
//! grows with every change of that assignment.
//!
//! A [`ShardMap`] is built once, at bootstrap, from the ring's bounded-load [`Placement`] over
//! the initial members ([`ShardMap::bootstrap`]): version 1. Shard `s` is served by Raft group
//! [`group_of_shard`]`(s)` = `s + 1` (group 0 is the cluster's first group, which carries the
//! membership; it is never a shard). The map's *content* — shard count, groups, replica lists —
//! is what every node must agree on: [`ShardMap::digest`] is a stable hash of it and of the
//! version, so two nodes can tell "same version, different map" (a node started with another
//! `[ring]` configuration) from "older version".
//!
//! Leader hints ([`ShardEntry::leader_hint`]) are advisory: a node updates them from what it
//! learns (its own groups' elections, peers' answers) without changing the version or the
//! digest. At bootstrap each shard's hint is its first replica, the ring's preferred leader.
//!
//! Pure: no I/O. Deserialised maps are checked with [`ShardMap::validate`] before use.

use serde::{Deserialize, Serialize};

use crate::hash::{key_hash, shard_for_key};
use crate::{NodeId, Placement, ShardId, MAX_REPLICATION_FACTOR, MAX_SHARDS};

/// A Raft group's id (the workspace's one definition, in `conclave-core`).
pub use conclave_core::ids::GroupId;

/// The Raft group that serves shard `shard`: `shard + 1` (group 0 is the cluster's first
/// group, never a shard's).
#[inline]
pub const fn group_of_shard(shard: ShardId) -> GroupId {
    GroupId::new(shard.get().saturating_add(1))
}

/// The shard a group serves among `shards` shards, if it is a shard's group.
#[inline]
pub fn shard_of_group(group: GroupId, shards: u64) -> Option<ShardId> {
    let g = group.get();
    (g >= 1 && g <= shards).then(|| ShardId::new(g - 1))
}

/// One shard's entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// The shard.
    pub shard: ShardId,
    /// The Raft group that serves it ([`group_of_shard`]).
    pub group: GroupId,
    /// Its replicas (the group's voters), preferred leader first.
    pub replicas: Vec<NodeId>,
    /// The leader last known to the node holding this copy (advisory; not part of the
    /// version or digest).
    #[serde(default)]
    pub leader_hint: Option<NodeId>,
}

/// Why a shard map is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShardMapError {
    /// A map has at least one shard.
    #[error("the shard map has no shards")]
    NoShards,
    /// More shards than [`MAX_SHARDS`].
    #[error("the shard map has {count} shards (at most {MAX_SHARDS})")]
    TooManyShards {
        /// How many it has.
        count: usize,
    },
    /// Version 0 is never a map's version (bootstrap is 1).
    #[error("shard map version 0 is not a valid version")]
    ZeroVersion,
    /// An entry is not what its position says.
    #[error("shard map entry {index}: {problem}")]
    BadEntry {
        /// The entry's position (the shard it must describe).
        index: usize,
        /// What is wrong with it.
        problem: EntryProblem,
    },
}

/// What is wrong with one entry of a shard map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryProblem {
    /// Entry `i` must describe shard `i`.
    #[error("describes shard {0}")]
    WrongShard(ShardId),
    /// Shard `s` must be served by group `s + 1`.
    #[error("names group {0}, not its shard's group")]
    WrongGroup(GroupId),
    /// A shard needs at least one replica.
    #[error("has no replicas")]
    NoReplicas,
    /// More replicas than [`MAX_REPLICATION_FACTOR`].
    #[error("has {0} replicas (at most {MAX_REPLICATION_FACTOR})")]
    TooManyReplicas(usize),
    /// A replica named twice, or node id 0.
    #[error("names replica {0} twice or names node 0")]
    BadReplica(NodeId),
    /// The leader hint is not one of the replicas.
    #[error("has leader hint {0}, which is not one of its replicas")]
    HintNotAReplica(NodeId),
}

/// Why a change of the shard map was refused ([`ShardMap::with_preferred_leader`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShardMapChangeError {
    /// The map has no such shard.
    #[error("there is no shard {shard} (the map has {count})")]
    NoSuchShard {
        /// The shard named.
        shard: ShardId,
        /// How many shards the map has.
        count: u64,
    },
    /// The node is not one of the shard's replicas (moving replicas is not built).
    #[error("node {node} is not a replica of shard {shard}")]
    NotAReplica {
        /// The shard.
        shard: ShardId,
        /// The node named.
        node: NodeId,
    },
    /// The version cannot grow further.
    #[error("the shard map's version cannot grow past {0}")]
    VersionExhausted(u64),
}

/// Shard → group, replicas, leader hint; with a version. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    version: u64,
    shards: Vec<ShardEntry>,
}

impl ShardMap {
    /// The bootstrap map (version 1) of a placement: shard `s` on group `s + 1` with the
    /// placement's replicas, each shard's leader hint its first (preferred) replica.
    pub fn bootstrap(placement: &Placement) -> Result<Self, ShardMapError> {
        let map = ShardMap {
            version: 1,
            shards: placement
                .iter()
                .map(|(shard, replicas)| ShardEntry {
                    shard,
                    group: group_of_shard(shard),
                    replicas: replicas.to_vec(),
                    leader_hint: replicas.first().copied(),
                })
                .collect(),
        };
        map.validate()?;
        Ok(map)
    }

    /// Checks a map (after deserialising one): at least one shard, version at least 1,
    /// entry `i` describes shard `i` on group `i + 1`, one to [`MAX_REPLICATION_FACTOR`]
    /// distinct non-zero replicas, a leader hint among them.
    pub fn validate(&self) -> Result<(), ShardMapError> {
        if self.shards.is_empty() {
            return Err(ShardMapError::NoShards);
        }
        if self.shards.len() as u64 > MAX_SHARDS {
            return Err(ShardMapError::TooManyShards {
                count: self.shards.len(),
            });
        }
        if self.version == 0 {
            return Err(ShardMapError::ZeroVersion);
        }
        for (index, e) in self.shards.iter().enumerate() {
            let bad = |problem| ShardMapError::BadEntry { index, problem };
            if e.shard != ShardId::new(index as u64) {
                return Err(bad(EntryProblem::WrongShard(e.shard)));
            }
            if e.group != group_of_shard(e.shard) {
                return Err(bad(EntryProblem::WrongGroup(e.group)));
            }
            if e.replicas.is_empty() {
                return Err(bad(EntryProblem::NoReplicas));
            }
            if e.replicas.len() > MAX_REPLICATION_FACTOR as usize {
                return Err(bad(EntryProblem::TooManyReplicas(e.replicas.len())));
            }
            for (i, &r) in e.replicas.iter().enumerate() {
                if r == NodeId::NONE || e.replicas[..i].contains(&r) {
                    return Err(bad(EntryProblem::BadReplica(r)));
                }
            }
            if let Some(h) = e.leader_hint {
                if !e.replicas.contains(&h) {
                    return Err(bad(EntryProblem::HintNotAReplica(h)));
                }
            }
        }
        Ok(())
    }

    /// The map's version: 1 at bootstrap, one more with every change of a shard's group or
    /// replicas.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// How many shards.
    pub fn shard_count(&self) -> u64 {
        self.shards.len() as u64
    }

    /// Every shard, in shard order.
    pub fn entries(&self) -> &[ShardEntry] {
        &self.shards
    }

    /// Shard `shard`'s entry.
    pub fn entry(&self, shard: ShardId) -> Option<&ShardEntry> {
        usize::try_from(shard.get())
            .ok()
            .and_then(|i| self.shards.get(i))
    }

    /// The shard of `key` (the ring's stable hash, [`crate::hash::shard_for_key`]).
    pub fn shard_for_key(&self, key: &[u8]) -> ShardId {
        shard_for_key(key, self.shard_count())
    }

    /// The entry of `key`'s shard.
    pub fn route(&self, key: &[u8]) -> &ShardEntry {
        // A validated map has at least one shard and `shard_for_key` is below the count.
        let i = self.shard_for_key(key).get() as usize;
        &self.shards[i.min(self.shards.len().saturating_sub(1))]
    }

    /// The entry of the shard `group` serves, if it is a shard's group.
    pub fn entry_of_group(&self, group: GroupId) -> Option<&ShardEntry> {
        shard_of_group(group, self.shard_count()).and_then(|s| self.entry(s))
    }

    /// Whether `group` is one of the map's shard groups.
    pub fn is_shard_group(&self, group: GroupId) -> bool {
        shard_of_group(group, self.shard_count()).is_some()
    }

    /// The shards `node` is a replica of, in shard order.
    pub fn shards_of(&self, node: NodeId) -> impl Iterator<Item = &ShardEntry> + '_ {
        self.shards
            .iter()
            .filter(move |e| e.replicas.contains(&node))
    }

    /// Records `leader` as `shard`'s leader hint (a replica only; anything else is ignored).
    /// Changes neither the version nor the digest. Returns whether the hint changed.
    pub fn set_leader_hint(&mut self, shard: ShardId, leader: NodeId) -> bool {
        let Some(e) = usize::try_from(shard.get())
            .ok()
            .and_then(|i| self.shards.get_mut(i))
        else {
            return false;
        };
        if !e.replicas.contains(&leader) || e.leader_hint == Some(leader) {
            return false;
        }
        e.leader_hint = Some(leader);
        true
    }

    /// A stable 64-bit hash of the version, the groups and the replica lists (not the leader
    /// hints): XXH3-64 of their little-endian encoding. Equal maps have equal digests on every
    /// machine and release; two nodes with the same version and different digests disagree on
    /// the map.
    pub fn digest(&self) -> u64 {
        let mut bytes = Vec::with_capacity(16 + self.shards.len() * 40);
        bytes.extend_from_slice(&self.version.to_le_bytes());
        bytes.extend_from_slice(&self.shard_count().to_le_bytes());
        for e in &self.shards {
            bytes.extend_from_slice(&e.group.get().to_le_bytes());
            bytes.extend_from_slice(&(e.replicas.len() as u64).to_le_bytes());
            for r in &e.replicas {
                bytes.extend_from_slice(&r.get().to_le_bytes());
            }
        }
        key_hash(&bytes)
    }

    /// The map with `node` as `shard`'s preferred leader (its first replica; the others keep
    /// their order) and the version one higher. The same replicas: nothing moves, no group
    /// starts or stops. `Ok(None)` when `node` is already the preferred leader (nothing to
    /// change). Leader hints are kept.
    pub fn with_preferred_leader(
        &self,
        shard: ShardId,
        node: NodeId,
    ) -> Result<Option<ShardMap>, ShardMapChangeError> {
        let entry = self.entry(shard).ok_or(ShardMapChangeError::NoSuchShard {
            shard,
            count: self.shard_count(),
        })?;
        let at = entry
            .replicas
            .iter()
            .position(|&r| r == node)
            .ok_or(ShardMapChangeError::NotAReplica { shard, node })?;
        if at == 0 {
            return Ok(None);
        }
        let version = self
            .version
            .checked_add(1)
            .ok_or(ShardMapChangeError::VersionExhausted(self.version))?;
        let mut next = self.clone();
        next.version = version;
        // `entry` exists, so index `shard` does too.
        if let Some(e) = usize::try_from(shard.get())
            .ok()
            .and_then(|i| next.shards.get_mut(i))
        {
            let preferred = e.replicas.remove(at);
            e.replicas.insert(0, preferred);
        }
        Ok(Some(next))
    }

    /// The map without leader hints: what is replicated (hints churn with every election and
    /// are each node's own knowledge, not the cluster's agreement).
    pub fn without_leader_hints(&self) -> ShardMap {
        let mut m = self.clone();
        for e in &mut m.shards {
            e.leader_hint = None;
        }
        m
    }

    /// Keeps `from`'s leader hints for the shards where they still name a replica (a node
    /// adopting a committed map, which carries none, keeps what it knows of the leaders).
    pub fn keep_leader_hints(&mut self, from: &ShardMap) {
        for (e, old) in self.shards.iter_mut().zip(&from.shards) {
            if e.leader_hint.is_none() {
                e.leader_hint = old.leader_hint.filter(|h| e.replicas.contains(h));
            }
        }
    }

    /// Whether every shard has the same replica *set* in both maps (order aside): adopting
    /// one for the other starts and stops no group on any node.
    pub fn same_replica_sets(&self, other: &ShardMap) -> bool {
        self.shards.len() == other.shards.len()
            && self.shards.iter().zip(&other.shards).all(|(a, b)| {
                a.replicas.len() == b.replicas.len()
                    && a.replicas.iter().all(|r| b.replicas.contains(r))
            })
    }

    /// Whether `self` and `other` have the same version and content (hints aside).
    pub fn same_content(&self, other: &ShardMap) -> bool {
        self.version == other.version
            && self.shards.len() == other.shards.len()
            && self
                .shards
                .iter()
                .zip(&other.shards)
                .all(|(a, b)| a.group == b.group && a.replicas == b.replicas)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{Ring, RingConfig, DEFAULT_WEIGHT};

    fn ring(nodes: u64, shards: u64) -> Ring {
        let config = RingConfig {
            shards,
            ..RingConfig::default()
        };
        Ring::with_nodes(
            config,
            (1..=nodes).map(NodeId::new).map(|n| (n, DEFAULT_WEIGHT)),
        )
        .unwrap()
    }

    #[test]
    fn bootstrap_follows_the_placement_on_groups_one_up() {
        let r = ring(3, 16);
        let map = ShardMap::bootstrap(r.placement()).unwrap();
        assert_eq!(map.version(), 1);
        assert_eq!(map.shard_count(), 16);
        for (shard, replicas) in r.placement().iter() {
            let e = map.entry(shard).unwrap();
            assert_eq!(e.group, GroupId::new(shard.get() + 1));
            assert_eq!(e.replicas, replicas);
            assert_eq!(e.leader_hint, replicas.first().copied());
            assert_eq!(map.entry_of_group(GroupId::new(shard.get() + 1)), Some(e));
        }
        assert!(!map.is_shard_group(GroupId::FIRST));
        assert!(!map.is_shard_group(GroupId::new(17)));
        // Three nodes, RF 3: every node holds every shard.
        assert_eq!(map.shards_of(NodeId::new(2)).count(), 16);
    }

    #[test]
    fn keys_route_with_the_rings_stable_hash() {
        let r = ring(5, 64);
        let map = ShardMap::bootstrap(r.placement()).unwrap();
        for i in 0..1000 {
            let key = format!("key-{i}");
            let route = r.route(key.as_bytes());
            let e = map.route(key.as_bytes());
            assert_eq!(e.shard, route.shard);
            assert_eq!(e.replicas, route.replicas);
        }
        // Five nodes, RF 3: each node holds some shards, not all.
        let held: usize = (1..=5)
            .map(NodeId::new)
            .map(|n| map.shards_of(n).count())
            .sum();
        assert_eq!(held, 64 * 3);
        assert!((1..=5)
            .map(NodeId::new)
            .all(|n| map.shards_of(n).count() < 64));
    }

    #[test]
    fn the_same_placement_gives_the_same_digest_and_hints_do_not_count() {
        let a = ShardMap::bootstrap(ring(3, 8).placement()).unwrap();
        let mut b = ShardMap::bootstrap(ring(3, 8).placement()).unwrap();
        assert_eq!(a.digest(), b.digest());
        let other = b.entry(ShardId::new(0)).unwrap().replicas[1];
        assert!(b.set_leader_hint(ShardId::new(0), other));
        assert!(!b.set_leader_hint(ShardId::new(0), other));
        assert!(
            !b.set_leader_hint(ShardId::new(0), NodeId::new(99)),
            "not a replica"
        );
        assert!(!b.set_leader_hint(ShardId::new(99), other), "no such shard");
        assert_eq!(a.digest(), b.digest());
        assert!(a.same_content(&b));
        let c = ShardMap::bootstrap(ring(4, 8).placement()).unwrap();
        assert_ne!(a.digest(), c.digest());
        assert!(!a.same_content(&c));
    }

    #[test]
    fn validate_names_what_is_wrong() {
        let good = ShardMap::bootstrap(ring(3, 4).placement()).unwrap();
        let mut m = good.clone();
        m.version = 0;
        assert_eq!(m.validate(), Err(ShardMapError::ZeroVersion));
        let mut m = good.clone();
        m.shards.clear();
        assert_eq!(m.validate(), Err(ShardMapError::NoShards));
        let bad = |f: &dyn Fn(&mut ShardEntry)| {
            let mut m = good.clone();
            f(&mut m.shards[2]);
            m.validate()
        };
        let at = |problem| Err(ShardMapError::BadEntry { index: 2, problem });
        assert_eq!(
            bad(&|e| e.shard = ShardId::new(3)),
            at(EntryProblem::WrongShard(ShardId::new(3)))
        );
        assert_eq!(
            bad(&|e| e.group = GroupId::FIRST),
            at(EntryProblem::WrongGroup(GroupId::FIRST))
        );
        assert_eq!(bad(&|e| e.replicas.clear()), at(EntryProblem::NoReplicas));
        assert_eq!(
            bad(&|e| e.replicas = vec![NodeId::new(1), NodeId::new(2), NodeId::new(1)]),
            at(EntryProblem::BadReplica(NodeId::new(1)))
        );
        assert_eq!(
            bad(&|e| e.replicas = vec![NodeId::NONE]),
            at(EntryProblem::BadReplica(NodeId::NONE))
        );
        assert_eq!(
            bad(&|e| e.replicas = (1..=256).map(NodeId::new).collect()),
            at(EntryProblem::TooManyReplicas(256))
        );
        assert_eq!(
            bad(&|e| e.leader_hint = Some(NodeId::new(9))),
            at(EntryProblem::HintNotAReplica(NodeId::new(9)))
        );
        assert_eq!(good.validate(), Ok(()));
    }

    #[test]
    fn a_map_survives_serde() {
        let map = ShardMap::bootstrap(ring(3, 8).placement()).unwrap();
        let json = serde_json::to_string(&map).unwrap();
        let back: ShardMap = serde_json::from_str(&json).unwrap();
        assert_eq!(back, map);
        assert_eq!(back.validate(), Ok(()));
    }

    #[test]
    fn a_preferred_leader_change_reorders_one_shard_and_bumps_the_version() {
        let mut map = ShardMap::bootstrap(ring(3, 8).placement()).unwrap();
        let before = map.entry(ShardId::new(2)).unwrap().replicas.clone();
        assert_eq!(
            map.with_preferred_leader(ShardId::new(2), before[0]),
            Ok(None)
        );
        let second = before[1];
        map.set_leader_hint(
            ShardId::new(5),
            map.entry(ShardId::new(5)).unwrap().replicas[1],
        );
        let next = map
            .with_preferred_leader(ShardId::new(2), second)
            .unwrap()
            .unwrap();
        assert_eq!(next.version(), 2);
        assert_eq!(next.entry(ShardId::new(2)).unwrap().replicas[0], second);
        assert_eq!(
            next.entry(ShardId::new(2)).unwrap().replicas.len(),
            before.len()
        );
        assert!(next.same_replica_sets(&map));
        assert_ne!(next.digest(), map.digest());
        assert_eq!(next.validate(), Ok(()));
        for s in (0..8).map(ShardId::new).filter(|&s| s != ShardId::new(2)) {
            assert_eq!(next.entry(s), map.entry(s), "shard {s} unchanged");
        }
        assert_eq!(
            map.with_preferred_leader(ShardId::new(8), NodeId::new(1)),
            Err(ShardMapChangeError::NoSuchShard {
                shard: ShardId::new(8),
                count: 8
            })
        );
        assert_eq!(
            map.with_preferred_leader(ShardId::new(2), NodeId::new(99)),
            Err(ShardMapChangeError::NotAReplica {
                shard: ShardId::new(2),
                node: NodeId::new(99)
            })
        );
        // Hints are not replicated, and an adopting node keeps its own.
        let bare = next.without_leader_hints();
        assert!(bare.entries().iter().all(|e| e.leader_hint.is_none()));
        assert_eq!(bare.digest(), next.digest());
        let mut adopted = bare.clone();
        adopted.keep_leader_hints(&map);
        assert_eq!(
            adopted.entry(ShardId::new(5)).unwrap().leader_hint,
            map.entry(ShardId::new(5)).unwrap().leader_hint
        );
        let five = ShardMap::bootstrap(ring(5, 8).placement()).unwrap();
        assert!(!five.same_replica_sets(&map));
    }

    #[test]
    fn groups_and_shards_convert() {
        assert_eq!(group_of_shard(ShardId::new(0)), GroupId::new(1));
        assert_eq!(shard_of_group(GroupId::new(1), 4), Some(ShardId::new(0)));
        assert_eq!(shard_of_group(GroupId::new(4), 4), Some(ShardId::new(3)));
        assert_eq!(shard_of_group(GroupId::FIRST, 4), None);
        assert_eq!(shard_of_group(GroupId::new(5), 4), None);
    }
}
