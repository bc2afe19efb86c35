//! Shard placements (shard → ordered replica set) and the diff between two of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{NodeId, RingError, ShardId};

/// Which nodes hold each shard, in order: the first replica is the preferred leader.
///
/// Index `i` of [`Placement::shards`] is shard `i`. Serialises as
/// `{"shards": [[1, 2, 3], [2, 3, 1], …]}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    shards: Vec<Vec<NodeId>>,
}

impl Placement {
    /// A placement of `shards` shards, all without replicas.
    pub(crate) fn empty(shards: usize) -> Self {
        Self {
            shards: vec![Vec::new(); shards],
        }
    }

    /// Builds a placement from explicit replica lists (index = shard id). No check is made
    /// here; [`crate::Ring`] validates placements it deserialises.
    pub fn from_shards(shards: Vec<Vec<NodeId>>) -> Self {
        Self { shards }
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The ordered replicas of `shard`, or `None` if the shard does not exist.
    #[inline]
    pub fn replicas(&self, shard: ShardId) -> Option<&[NodeId]> {
        usize::try_from(shard.get())
            .ok()
            .and_then(|i| self.shards.get(i))
            .map(Vec::as_slice)
    }

    /// The preferred leader (first replica) of `shard`, if the shard exists and has one.
    pub fn leader(&self, shard: ShardId) -> Option<NodeId> {
        self.replicas(shard).and_then(|r| r.first().copied())
    }

    /// Iterates over `(shard, replicas)` in shard order.
    pub fn iter(&self) -> impl Iterator<Item = (ShardId, &[NodeId])> + '_ {
        self.shards
            .iter()
            .enumerate()
            .map(|(i, r)| (ShardId::new(i as u64), r.as_slice()))
    }

    /// Replica slots held by each node that appears in the placement.
    pub fn replica_load(&self) -> BTreeMap<NodeId, usize> {
        let mut load = BTreeMap::new();
        for replicas in &self.shards {
            for &n in replicas {
                *load.entry(n).or_insert(0) += 1;
            }
        }
        load
    }

    /// Number of shards each node is the preferred leader of.
    pub fn leader_load(&self) -> BTreeMap<NodeId, usize> {
        let mut load = BTreeMap::new();
        for n in self.shards.iter().filter_map(|r| r.first()) {
            *load.entry(*n).or_insert(0) += 1;
        }
        load
    }

    /// The changes that turn `self` into `to`; see [`diff`].
    pub fn diff(&self, to: &Placement) -> Result<PlacementDiff, RingError> {
        diff(self, to)
    }

    pub(crate) fn shards_mut(&mut self) -> &mut Vec<Vec<NodeId>> {
        &mut self.shards
    }

    pub(crate) fn shards(&self) -> &[Vec<NodeId>] {
        &self.shards
    }
}

/// How one shard's replica set changes between two placements.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardChange {
    /// The shard (served by Raft group `shard + 1`).
    pub shard: ShardId,
    /// Replicas before, in order.
    pub before: Vec<NodeId>,
    /// Replicas after, in order.
    pub after: Vec<NodeId>,
    /// Nodes that must join the group (in `after`, not in `before`), in `after` order.
    pub added: Vec<NodeId>,
    /// Nodes that must leave the group (in `before`, not in `after`), in `before` order.
    pub removed: Vec<NodeId>,
}

impl ShardChange {
    /// The preferred leader before the change.
    pub fn old_leader(&self) -> Option<NodeId> {
        self.before.first().copied()
    }

    /// The preferred leader after the change.
    pub fn new_leader(&self) -> Option<NodeId> {
        self.after.first().copied()
    }

    /// Whether the preferred leader changes.
    pub fn leader_changed(&self) -> bool {
        self.old_leader() != self.new_leader()
    }
}

/// The plan that turns one placement into another: for every shard whose replica list
/// changed (membership or order), who joins and who leaves. The shard router executes it
/// as Raft membership changes (add learner, promote, remove; transfer leadership when
/// the preferred leader changed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementDiff {
    /// Changed shards, in shard order. Unchanged shards are absent.
    pub changes: Vec<ShardChange>,
}

impl PlacementDiff {
    /// True when no shard changes.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Total replica slots that move (sum of `added` over all shards): the amount of
    /// data to copy.
    pub fn moved_replicas(&self) -> usize {
        self.changes.iter().map(|c| c.added.len()).sum()
    }

    /// Total replica slots dropped (sum of `removed`).
    pub fn dropped_replicas(&self) -> usize {
        self.changes.iter().map(|c| c.removed.len()).sum()
    }

    /// Shards whose replica *set* changes (not only their order).
    pub fn shards_with_moves(&self) -> usize {
        self.changes
            .iter()
            .filter(|c| !c.added.is_empty() || !c.removed.is_empty())
            .count()
    }

    /// Shards whose preferred leader changes.
    pub fn leader_changes(&self) -> usize {
        self.changes.iter().filter(|c| c.leader_changed()).count()
    }
}

/// Computes the diff from placement `from` to placement `to`.
///
/// Fails with [`RingError::ShardCountMismatch`] if they have different shard counts
/// (a change of shard count is a split, not a placement change).
pub fn diff(from: &Placement, to: &Placement) -> Result<PlacementDiff, RingError> {
    if from.shards.len() != to.shards.len() {
        return Err(RingError::ShardCountMismatch {
            left: from.shards.len(),
            right: to.shards.len(),
        });
    }
    let changes = from
        .shards
        .iter()
        .zip(&to.shards)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| ShardChange {
            shard: ShardId::new(i as u64),
            before: a.clone(),
            after: b.clone(),
            // Replica lists are at most a handful long: linear `contains` beats hashing.
            added: b.iter().filter(|n| !a.contains(n)).copied().collect(),
            removed: a.iter().filter(|n| !b.contains(n)).copied().collect(),
        })
        .collect();
    Ok(PlacementDiff { changes })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn diff_reports_added_removed_and_leader() {
        let a = Placement::from_shards(vec![
            vec![NodeId::new(1), NodeId::new(2), NodeId::new(3)],
            vec![NodeId::new(2), NodeId::new(3), NodeId::new(1)],
            vec![NodeId::new(3), NodeId::new(1), NodeId::new(2)],
        ]);
        let b = Placement::from_shards(vec![
            vec![NodeId::new(1), NodeId::new(2), NodeId::new(3)],
            vec![NodeId::new(4), NodeId::new(3), NodeId::new(1)],
            vec![NodeId::new(1), NodeId::new(3), NodeId::new(2)],
        ]);
        let d = diff(&a, &b).unwrap();
        assert_eq!(d.changes.len(), 2);
        assert_eq!(d.changes[0].shard, ShardId::new(1));
        assert_eq!(d.changes[0].added, vec![NodeId::new(4)]);
        assert_eq!(d.changes[0].removed, vec![NodeId::new(2)]);
        assert!(d.changes[0].leader_changed());
        assert_eq!(d.changes[1].shard, ShardId::new(2));
        assert!(d.changes[1].added.is_empty());
        assert!(d.changes[1].leader_changed());
        assert_eq!(d.moved_replicas(), 1);
        assert_eq!(d.dropped_replicas(), 1);
        assert_eq!(d.shards_with_moves(), 1);
        assert_eq!(d.leader_changes(), 2);
        assert!(diff(&a, &a).unwrap().is_empty());
    }

    #[test]
    fn diff_rejects_different_shard_counts() {
        let a = Placement::empty(2);
        let b = Placement::empty(3);
        assert!(matches!(
            diff(&a, &b),
            Err(RingError::ShardCountMismatch { left: 2, right: 3 })
        ));
    }

    #[test]
    fn loads_count_slots_and_leaders() {
        let p = Placement::from_shards(vec![
            vec![NodeId::new(1), NodeId::new(2)],
            vec![NodeId::new(2), NodeId::new(3)],
            vec![NodeId::new(2), NodeId::new(1)],
        ]);
        assert_eq!(
            p.replica_load(),
            BTreeMap::from([
                (NodeId::new(1), 2),
                (NodeId::new(2), 3),
                (NodeId::new(3), 1)
            ])
        );
        assert_eq!(
            p.leader_load(),
            BTreeMap::from([(NodeId::new(1), 1), (NodeId::new(2), 2)])
        );
        assert_eq!(p.leader(ShardId::new(1)), Some(NodeId::new(2)));
        assert_eq!(p.replicas(ShardId::new(3)), None);
    }
}
