//! The ring: membership, the virtual-node hash ring, and the shard placement.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use consistent_hash_ring::{Ring as HashRing, RingBuilder};
use serde::{Deserialize, Serialize};

use crate::hash::{self, HashKey, NodeKey, ShardKey, StableBuildHasher};
use crate::placement::{diff, Placement, PlacementDiff};
use crate::{NodeId, PlacementFault, RingError, ShardId};

/// The weight of a standard node. A node of weight `w` gets `vnodes × w / 100` virtual
/// nodes (rounded up, at least one) and a share of replica slots proportional to `w`.
pub const DEFAULT_WEIGHT: u32 = 100;

/// Upper bound on [`RingConfig::shards`]. Placements are dense vectors indexed by shard,
/// and the ring keeps each shard's full preference list (`shards × nodes` ids), so memory
/// grows with both.
pub const MAX_SHARDS: u64 = 1 << 16;

/// Upper bound on [`RingConfig::vnodes`].
pub const MAX_VNODES: u32 = 100_000;

/// Upper bound on [`RingConfig::replication_factor`].
pub const MAX_REPLICATION_FACTOR: u32 = 255;

/// Upper bound on the virtual nodes of one node after weighting.
pub const MAX_VNODES_PER_NODE: u64 = 10_000_000;

/// How shards are assigned to nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementStrategy {
    /// Pure consistent hashing: a shard's replicas are the first `replication_factor`
    /// distinct nodes of its preference list (the `consistent_hash_ring` candidate order).
    /// A function of membership alone, but with few shards per node the number of
    /// replicas per node is uneven (see docs/ring.md).
    ConsistentHash,
    /// Consistent hashing refined by bounded loads (the default): each node holds at most
    /// `ceil(target)` replica slots, where `target` is its weighted share; shards go to the
    /// most preferred node that still has room. Membership changes are applied
    /// incrementally to the current placement, so they move only what they must.
    #[default]
    BoundedLoad,
}

/// Ring parameters (the `[ring]` section of the node configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RingConfig {
    /// Virtual nodes per node of weight [`DEFAULT_WEIGHT`] (default 150).
    pub vnodes: u32,
    /// Fixed number of shards keys are pre-sharded into (default 64). Shard ids are
    /// `0..shards`; shard `s` is served by Raft group `s + 1` ([`crate::group_of_shard`]).
    pub shards: u64,
    /// Replicas per shard (default 3); shards get every node when there are fewer.
    pub replication_factor: u32,
    /// How shards are assigned to nodes (default [`PlacementStrategy::BoundedLoad`]).
    pub strategy: PlacementStrategy,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            vnodes: 150,
            shards: 64,
            replication_factor: 3,
            strategy: PlacementStrategy::BoundedLoad,
        }
    }
}

impl RingConfig {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<(), RingError> {
        let bad = |field, max| Err(RingError::InvalidConfig { field, max });
        if self.vnodes == 0 || self.vnodes > MAX_VNODES {
            return bad("vnodes", u64::from(MAX_VNODES));
        }
        if self.shards == 0 || self.shards > MAX_SHARDS {
            return bad("shards", MAX_SHARDS);
        }
        if self.replication_factor == 0 || self.replication_factor > MAX_REPLICATION_FACTOR {
            return bad("replication_factor", u64::from(MAX_REPLICATION_FACTOR));
        }
        Ok(())
    }
}

/// Where a key goes: its shard and that shard's ordered replicas (first = preferred
/// leader). The body of `GET /v1/ring/route/{key}` minus the live leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The key's shard (served by Raft group `shard + 1`).
    pub shard: ShardId,
    /// The shard's replicas, preferred leader first.
    pub replicas: Vec<NodeId>,
}

/// A member and its weight, as serialised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Node id.
    pub id: NodeId,
    /// Relative weight ([`DEFAULT_WEIGHT`] = standard).
    pub weight: u32,
}

/// Serialised form of a [`Ring`]: the inner hash ring and preference lists are derived
/// data, rebuilt (and the placement validated against them) on deserialisation.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RingState {
    config: RingConfig,
    nodes: Vec<NodeEntry>,
    placement: Placement,
}

/// Which slot moves [`Ring::rebalance_towards`] may make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Any donor above its floor to any receiver below its ceiling, fixing both excesses
    /// and deficits.
    Full,
    /// Only onto this node (an addition: nothing else moves).
    OnlyReceiver(NodeId),
    /// Only away from nodes above their ceiling.
    CapsOnly,
}

/// A node's share of replica slots: `target = num / den`, `lo = floor`, `hi = ceil`.
#[derive(Clone, Copy, Debug)]
struct Bound {
    num: u128,
    den: u128,
    target: f64,
    lo: usize,
    hi: usize,
}

impl Bound {
    fn new(num: u128, den: u128) -> Self {
        let lo = num / den;
        let hi = num.div_ceil(den);
        Self {
            num,
            den,
            target: num as f64 / den as f64,
            lo: lo as usize,
            hi: hi as usize,
        }
    }

    /// `ceil(target × part / whole)`: the cumulative cap after `part` of `whole` ranks.
    fn cap_after(&self, part: usize, whole: usize) -> usize {
        (self.num * part as u128).div_ceil(self.den * whole as u128) as usize
    }
}

/// Keys → shards → ordered replica sets, over a virtual-node consistent hash ring.
///
/// See the crate documentation for the model and guarantees. Lookups
/// ([`Ring::shard_for_key`], [`Ring::replicas`], [`Ring::route`]) are read-only and
/// cheap; membership changes ([`Ring::add_node`], [`Ring::remove_node`],
/// [`Ring::set_weight`]) update the placement and return the [`PlacementDiff`] to carry
/// out.
#[derive(Clone)]
pub struct Ring {
    config: RingConfig,
    nodes: BTreeMap<NodeId, u32>,
    inner: HashRing<NodeKey, StableBuildHasher>,
    /// Per shard, every node in the order the inner ring prefers it for that shard.
    prefs: Vec<Vec<NodeId>>,
    placement: Placement,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("config", &self.config)
            .field("nodes", &self.nodes)
            .field("placement", &self.placement)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Ring {
    fn eq(&self, other: &Self) -> bool {
        // Everything else is derived from these three.
        self.config == other.config
            && self.nodes == other.nodes
            && self.placement == other.placement
    }
}

impl Eq for Ring {}

impl Serialize for Ring {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        RingState {
            config: self.config,
            nodes: self
                .nodes
                .iter()
                .map(|(&id, &weight)| NodeEntry { id, weight })
                .collect(),
            placement: self.placement.clone(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Ring {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let state = RingState::deserialize(deserializer)?;
        Ring::from_state(state).map_err(serde::de::Error::custom)
    }
}

impl Ring {
    /// An empty ring (no nodes; every shard has no replicas).
    pub fn new(config: RingConfig) -> Result<Self, RingError> {
        config.validate()?;
        let shards = config.shards as usize;
        Ok(Self {
            config,
            nodes: BTreeMap::new(),
            inner: RingBuilder::new(StableBuildHasher)
                .vnodes(config.vnodes as usize)
                .build(),
            prefs: vec![Vec::new(); shards],
            placement: Placement::empty(shards),
        })
    }

    /// A ring with the given `(node, weight)` members, placed from scratch.
    ///
    /// The result depends only on the set of members, not on their order; it is what the
    /// golden-data test pins. (Adding the same nodes one at a time with
    /// [`Ring::add_node`] gives a placement that is as balanced but may differ, because
    /// incremental changes move as little as possible.)
    pub fn with_nodes(
        config: RingConfig,
        nodes: impl IntoIterator<Item = (NodeId, u32)>,
    ) -> Result<Self, RingError> {
        let mut ring = Self::new(config)?;
        let mut nodes: Vec<(NodeId, u32)> = nodes.into_iter().collect();
        nodes.sort_unstable_by_key(|&(id, _)| id);
        for &(id, weight) in &nodes {
            let vnodes = ring.vnodes_for(id, weight)?;
            if ring.nodes.insert(id, weight).is_some() {
                return Err(RingError::NodeExists(id));
            }
            ring.inner.insert_weight(NodeKey(id), vnodes);
        }
        ring.refresh_prefs();
        match config.strategy {
            PlacementStrategy::ConsistentHash => ring.place_by_preference(),
            PlacementStrategy::BoundedLoad => ring.build_bounded(),
        }
        Ok(ring)
    }

    fn from_state(state: RingState) -> Result<Self, RingError> {
        let mut ring =
            Self::with_nodes(state.config, state.nodes.iter().map(|n| (n.id, n.weight)))?;
        ring.validate_placement(&state.placement)?;
        ring.placement = state.placement;
        Ok(ring)
    }

    /// The configuration.
    pub fn config(&self) -> &RingConfig {
        &self.config
    }

    /// Number of member nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when the ring has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Members and their weights, by id.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, u32)> + '_ {
        self.nodes.iter().map(|(&id, &w)| (id, w))
    }

    /// A member's weight, or `None` if it is not a member.
    pub fn weight(&self, node: NodeId) -> Option<u32> {
        self.nodes.get(&node).copied()
    }

    /// Replicas per shard actually achievable: `min(replication_factor, nodes)`.
    pub fn effective_replication(&self) -> usize {
        (self.config.replication_factor as usize).min(self.nodes.len())
    }

    /// The shard of `key`: `(xxh3_64(key) × shards) >> 64`; see [`crate::hash`].
    #[inline]
    pub fn shard_for_key(&self, key: &[u8]) -> ShardId {
        hash::shard_for_key(key, self.config.shards)
    }

    /// The ordered replicas of `shard` (first = preferred leader); empty while the ring
    /// has no nodes.
    #[inline]
    pub fn replicas(&self, shard: ShardId) -> Result<&[NodeId], RingError> {
        self.placement
            .replicas(shard)
            .ok_or(RingError::UnknownShard {
                shard,
                shards: self.config.shards,
            })
    }

    /// The replicas of the shard `key` belongs to, without allocating.
    #[inline]
    pub fn replicas_for_key(&self, key: &[u8]) -> &[NodeId] {
        // The shard is < shards by construction of `shard_for_hash`, so the lookup hits.
        self.placement
            .replicas(self.shard_for_key(key))
            .unwrap_or(&[])
    }

    /// The shard and replicas of `key`.
    pub fn route(&self, key: &[u8]) -> Route {
        let shard = self.shard_for_key(key);
        Route {
            shard,
            replicas: self
                .placement
                .replicas(shard)
                .map(<[NodeId]>::to_vec)
                .unwrap_or_default(),
        }
    }

    /// The current placement (shard → replicas).
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Every member in the order the hash ring prefers it for `shard` (the candidate order
    /// of `consistent_hash_ring`): the first `replication_factor` are the pure
    /// consistent-hashing replicas.
    pub fn preference(&self, shard: ShardId) -> Option<&[NodeId]> {
        usize::try_from(shard.get())
            .ok()
            .and_then(|i| self.prefs.get(i))
            .map(Vec::as_slice)
    }

    /// The node owning `key`'s hash on the virtual-node ring itself, bypassing shards.
    /// Data is not routed this way; it measures the ring's own balance.
    pub fn ring_owner(&self, key: &[u8]) -> Option<NodeId> {
        self.inner
            .try_get(HashKey(hash::key_hash(key)))
            .map(|n| n.0)
    }

    /// Each node's exact fraction of the 64-bit hash space on the virtual-node ring.
    pub fn ring_shares(&self) -> BTreeMap<NodeId, f64> {
        let mut shares = BTreeMap::new();
        for r in self.inner.resident_ranges() {
            let len = u128::from(*r.keys().end() - *r.keys().start()) + 1;
            *shares.entry(r.node().0).or_insert(0.0) += len as f64 / 2f64.powi(64);
        }
        shares
    }

    /// Adds `node` with `weight` and returns the placement changes.
    ///
    /// Under [`PlacementStrategy::BoundedLoad`] the new node takes replica slots (at most
    /// `ceil` of its share) from the most loaded nodes, choosing the shards that prefer it
    /// most. Nothing else moves, unless an old node is left above its new ceiling with no
    /// shard the new node could take from it (possible with uneven weights, or after
    /// removals' repairs); then the fewest extra moves that bring it under are made.
    pub fn add_node(&mut self, node: NodeId, weight: u32) -> Result<PlacementDiff, RingError> {
        if self.nodes.contains_key(&node) {
            return Err(RingError::NodeExists(node));
        }
        let vnodes = self.vnodes_for(node, weight)?;
        let before = self.placement.clone();
        self.nodes.insert(node, weight);
        self.inner.insert_weight(NodeKey(node), vnodes);
        self.refresh_prefs();
        match self.config.strategy {
            PlacementStrategy::ConsistentHash => self.place_by_preference(),
            PlacementStrategy::BoundedLoad => {
                self.fill();
                self.rebalance_towards(Mode::OnlyReceiver(node));
                // Weighted shares (or an earlier removal's repair) can leave an old node a
                // slot above its new ceiling that the new node cannot take; fix only those.
                self.rebalance_towards(Mode::CapsOnly);
            }
        }
        diff(&before, &self.placement)
    }

    /// Removes `node` and returns the placement changes.
    ///
    /// Only shards that had `node` change: it leaves their list (the replicas after it
    /// move up one rank, so a removed preferred leader is succeeded by the next replica)
    /// and, if enough nodes remain, one replacement joins at the end.
    pub fn remove_node(&mut self, node: NodeId) -> Result<PlacementDiff, RingError> {
        if self.nodes.remove(&node).is_none() {
            return Err(RingError::UnknownNode(node));
        }
        let before = self.placement.clone();
        self.inner.remove(&NodeKey(node));
        self.refresh_prefs();
        match self.config.strategy {
            PlacementStrategy::ConsistentHash => self.place_by_preference(),
            PlacementStrategy::BoundedLoad => {
                for replicas in self.placement.shards_mut() {
                    replicas.retain(|&n| n != node);
                }
                self.fill();
            }
        }
        diff(&before, &self.placement)
    }

    /// Changes `node`'s weight and returns the placement changes (slots move from nodes
    /// above their new share to nodes below it).
    pub fn set_weight(&mut self, node: NodeId, weight: u32) -> Result<PlacementDiff, RingError> {
        let old = self.weight(node).ok_or(RingError::UnknownNode(node))?;
        let vnodes = self.vnodes_for(node, weight)?;
        if old == weight {
            return Ok(PlacementDiff::default());
        }
        let before = self.placement.clone();
        self.nodes.insert(node, weight);
        self.inner.insert_weight(NodeKey(node), vnodes);
        self.refresh_prefs();
        match self.config.strategy {
            PlacementStrategy::ConsistentHash => self.place_by_preference(),
            PlacementStrategy::BoundedLoad => self.rebalance_towards(Mode::Full),
        }
        diff(&before, &self.placement)
    }

    /// Brings every node within `[floor, ceil]` of its share where possible and returns
    /// the changes. Removals only repair (they never move shards the removed node did
    /// not hold), which can leave some nodes below their share; an operator may call this
    /// afterwards. A no-op under [`PlacementStrategy::ConsistentHash`].
    pub fn rebalance(&mut self) -> PlacementDiff {
        let before = self.placement.clone();
        if self.config.strategy == PlacementStrategy::BoundedLoad {
            self.rebalance_towards(Mode::Full);
            self.balance_leaders();
        }
        // Same shard count on both sides by construction.
        diff(&before, &self.placement).unwrap_or_default()
    }

    fn vnodes_for(&self, node: NodeId, weight: u32) -> Result<usize, RingError> {
        if weight == 0 {
            return Err(RingError::InvalidWeight {
                node,
                weight,
                reason: "must be positive (remove the node instead)",
            });
        }
        let v = (u64::from(self.config.vnodes) * u64::from(weight)).div_ceil(100);
        if v > MAX_VNODES_PER_NODE {
            return Err(RingError::InvalidWeight {
                node,
                weight,
                reason: "too many virtual nodes after weighting",
            });
        }
        Ok(v.max(1) as usize)
    }

    fn refresh_prefs(&mut self) {
        let inner = &self.inner;
        for (shard, prefs) in self.prefs.iter_mut().enumerate() {
            prefs.clear();
            prefs.extend(
                inner
                    .replicas(ShardKey(ShardId::new(shard as u64)))
                    .map(|n| n.0),
            );
        }
    }

    fn place_by_preference(&mut self) {
        let r = self.effective_replication();
        for (replicas, prefs) in self.placement.shards_mut().iter_mut().zip(&self.prefs) {
            replicas.clear();
            replicas.extend_from_slice(&prefs[..r.min(prefs.len())]);
        }
    }

    /// Each member's share of the `shards × min(rf, n)` replica slots, proportional to
    /// weight, water-filled so that nobody's share exceeds `shards` (a node can hold at
    /// most one replica of each shard).
    fn bounds(&self) -> BTreeMap<NodeId, Bound> {
        let shards = u128::from(self.config.shards);
        let mut remaining = shards * self.effective_replication() as u128;
        let mut active: BTreeMap<NodeId, u128> = self
            .nodes
            .iter()
            .map(|(&id, &w)| (id, u128::from(w)))
            .collect();
        let mut out = BTreeMap::new();
        loop {
            let total: u128 = active.values().sum();
            let full: Vec<NodeId> = active
                .iter()
                .filter(|&(_, &w)| remaining * w > shards * total)
                .map(|(&id, _)| id)
                .collect();
            if full.is_empty() {
                for (&id, &w) in &active {
                    out.insert(id, Bound::new(remaining * w, total.max(1)));
                }
                return out;
            }
            for id in full {
                active.remove(&id);
                remaining -= shards;
                out.insert(id, Bound::new(shards, 1));
            }
        }
    }

    fn loads(&self) -> BTreeMap<NodeId, usize> {
        let mut loads: BTreeMap<NodeId, usize> = self.nodes.keys().map(|&n| (n, 0)).collect();
        for (n, l) in self.placement.replica_load() {
            if let Some(slot) = loads.get_mut(&n) {
                *slot = l;
            }
        }
        loads
    }

    /// The eligible node (not yet in the shard) for `shard`: the most preferred one whose
    /// load is below `cap`, else the least loaded relative to its target.
    fn pick(
        prefs: &[NodeId],
        current: &[NodeId],
        loads: &BTreeMap<NodeId, usize>,
        bounds: &BTreeMap<NodeId, Bound>,
        cap: impl Fn(&Bound) -> usize,
    ) -> Option<NodeId> {
        let load = |n: &NodeId| loads.get(n).copied().unwrap_or(0);
        let eligible = || prefs.iter().filter(|n| !current.contains(n));
        eligible()
            .find(|n| bounds.get(n).is_some_and(|b| load(n) < cap(b)))
            .or_else(|| {
                // Every eligible node is at its cap (rare: the greedy order painted itself
                // into a corner). Overflow onto the least loaded; `rebalance_towards`
                // repairs it afterwards if it can.
                eligible().min_by(|a, b| {
                    let over = |n: &NodeId| {
                        load(n) as f64 - bounds.get(n).map_or(0.0, |b: &Bound| b.target)
                    };
                    over(a).total_cmp(&over(b))
                })
            })
            .copied()
    }

    /// From-scratch bounded-load placement: rank by rank (all preferred leaders first, so
    /// leaders are balanced too), shard by shard, each slot goes to the most preferred node
    /// still under its cumulative cap for that rank.
    fn build_bounded(&mut self) {
        let r = self.effective_replication();
        let bounds = self.bounds();
        let mut loads: BTreeMap<NodeId, usize> = self.nodes.keys().map(|&n| (n, 0)).collect();
        let mut shards = vec![Vec::with_capacity(r); self.prefs.len()];
        for rank in 0..r {
            for (replicas, prefs) in shards.iter_mut().zip(&self.prefs) {
                let cap = |b: &Bound| b.cap_after(rank + 1, r);
                if let Some(n) = Self::pick(prefs, replicas, &loads, &bounds, cap) {
                    replicas.push(n);
                    *loads.entry(n).or_insert(0) += 1;
                }
            }
        }
        *self.placement.shards_mut() = shards;
        self.rebalance_towards(Mode::Full);
        self.balance_leaders();
    }

    /// Tops up shards with fewer than `min(rf, n)` replicas (after a removal, or after an
    /// addition while the ring is smaller than the replication factor).
    ///
    /// Shards missing exactly one replica (the removal case) are first matched to nodes
    /// with room by [`capacitated_matching`], trying nodes in each shard's preference
    /// order. A plain greedy pass can strand a shard whose only nodes with room already
    /// hold it, where re-pointing another shard under repair would have made room. Only
    /// shards under repair are ever re-pointed, so no other shard moves. Whatever cannot
    /// be matched within the caps falls back to [`Ring::pick`].
    fn fill(&mut self) {
        let r = self.effective_replication();
        let bounds = self.bounds();
        let mut loads = self.loads();
        let needy: Vec<usize> = self
            .placement
            .shards()
            .iter()
            .enumerate()
            .filter(|(_, replicas)| replicas.len() + 1 == r)
            .map(|(i, _)| i)
            .collect();
        if !needy.is_empty() {
            let mut room: BTreeMap<NodeId, usize> = bounds
                .iter()
                .map(|(&n, b)| (n, b.hi.saturating_sub(loads.get(&n).copied().unwrap_or(0))))
                .collect();
            let candidates: Vec<Vec<NodeId>> = needy
                .iter()
                .map(|&s| {
                    let current = &self.placement.shards()[s];
                    self.prefs[s]
                        .iter()
                        .filter(|n| !current.contains(n))
                        .copied()
                        .collect()
                })
                .collect();
            let assigned = capacitated_matching(&candidates, &mut room);
            for (&shard, node) in needy.iter().zip(assigned) {
                if let Some(n) = node {
                    self.placement.shards_mut()[shard].push(n);
                    *loads.entry(n).or_insert(0) += 1;
                }
            }
        }
        let prefs = &self.prefs;
        for (replicas, prefs) in self.placement.shards_mut().iter_mut().zip(prefs) {
            while replicas.len() < r {
                match Self::pick(prefs, replicas, &loads, &bounds, |b| b.hi) {
                    Some(n) => {
                        replicas.push(n);
                        *loads.entry(n).or_insert(0) += 1;
                    }
                    None => break,
                }
            }
        }
    }

    /// `ceil(shards × weight / total weight)` per node: how many shards it should lead.
    fn leader_caps(&self) -> BTreeMap<NodeId, usize> {
        let shards = u128::from(self.config.shards);
        let total: u128 = self
            .nodes
            .values()
            .map(|&w| u128::from(w))
            .sum::<u128>()
            .max(1);
        self.nodes
            .iter()
            .map(|(&n, &w)| (n, (shards * u128::from(w)).div_ceil(total) as usize))
            .collect()
    }

    /// Reorders replicas (moving no data) so that every node is preferred leader of at
    /// most `ceil(shards × weight / total weight)` shards where possible, keeping each
    /// shard's current leader whenever the caps allow. Run after a from-scratch build and
    /// by [`Ring::rebalance`]; additions and removals leave leaders alone so that a
    /// shard's first replica only changes when the change concerns it.
    fn balance_leaders(&mut self) {
        let mut room = self.leader_caps();
        // Candidates in current order: the current leader first, then the next replicas.
        let candidates: Vec<Vec<NodeId>> = self.placement.shards().to_vec();
        let leaders = capacitated_matching(&candidates, &mut room);
        for (replicas, leader) in self.placement.shards_mut().iter_mut().zip(leaders) {
            if let Some(pos) = leader.and_then(|l| replicas.iter().position(|&n| n == l)) {
                // Rotate the chosen leader to the front; the others keep their order.
                replicas[..=pos].rotate_right(1);
            }
        }
    }

    /// Moves single replica slots from a donor to a receiver until no node is above its
    /// `ceil(target)` and no (eligible) receiver is below its `floor(target)`, or no move
    /// helps. [`Mode`] restricts which moves are allowed.
    ///
    /// Terminates: a move happens only if the donor is above `hi` (its excess drops by one
    /// and the receiver, below its `hi`, does not exceed it) or the receiver is below `lo`
    /// (its deficit drops by one and the donor, above its `lo`, does not fall below it),
    /// so the total excess plus deficit strictly decreases.
    fn rebalance_towards(&mut self, mode: Mode) {
        let only = match mode {
            Mode::OnlyReceiver(n) => Some(n),
            Mode::Full | Mode::CapsOnly => None,
        };
        let fix_deficits = mode != Mode::CapsOnly;
        let bounds = self.bounds();
        let mut loads = self.loads();
        // A receiver that already leads its share of shards prefers slots that do not make
        // it the preferred leader (the new node would otherwise inherit every leadership
        // of the slots it takes).
        let leader_caps = self.leader_caps();
        let mut leaders = self.placement.leader_load();
        let saturated = |n: NodeId, leaders: &BTreeMap<NodeId, usize>| {
            leaders.get(&n).copied().unwrap_or(0) >= leader_caps.get(&n).copied().unwrap_or(0)
        };
        loop {
            let over = |n: &NodeId, loads: &BTreeMap<NodeId, usize>| {
                loads.get(n).copied().unwrap_or(0) as f64 - bounds.get(n).map_or(0.0, |b| b.target)
            };
            let load =
                |n: &NodeId, loads: &BTreeMap<NodeId, usize>| loads.get(n).copied().unwrap_or(0);
            let mut donors: Vec<NodeId> = bounds
                .iter()
                .filter(|(n, b)| load(n, &loads) > b.lo)
                .map(|(&n, _)| n)
                .collect();
            donors.sort_by(|a, b| over(b, &loads).total_cmp(&over(a, &loads)).then(a.cmp(b)));
            let mut receivers: Vec<NodeId> = bounds
                .iter()
                .filter(|(n, b)| only.is_none_or(|o| o == **n) && load(n, &loads) < b.hi)
                .map(|(&n, _)| n)
                .collect();
            receivers.sort_by(|a, b| over(a, &loads).total_cmp(&over(b, &loads)).then(a.cmp(b)));

            // Each move is a list of (shard, from, to) replacements; a direct move has one,
            // a two-hop move (donor -> middle -> receiver) two.
            let mut chosen: Option<Vec<(usize, NodeId, NodeId)>> = None;
            let pairs = || {
                donors
                    .iter()
                    .flat_map(|d| receivers.iter().map(move |r| (*d, *r)))
                    .filter(|(d, r)| {
                        let (Some(bd), Some(br)) = (bounds.get(d), bounds.get(r)) else {
                            return false;
                        };
                        let deficit = fix_deficits && load(r, &loads) < br.lo;
                        d != r && (load(d, &loads) > bd.hi || deficit)
                    })
            };
            for (d, r) in pairs() {
                if let Some(shard) = self.best_shard_for(r, d, saturated(r, &leaders)) {
                    chosen = Some(vec![(shard, d, r)]);
                    break;
                }
            }
            if chosen.is_none() && only.is_none() {
                // No shard of the donor lacks the receiver: route the slot through a
                // third node, which gains one shard and gives up another (its load is
                // unchanged, so the termination argument still holds).
                'two_hop: for (d, r) in pairs() {
                    for &m in bounds.keys() {
                        if m == d || m == r {
                            continue;
                        }
                        let (Some(s1), Some(s2)) = (
                            self.best_shard_for(m, d, saturated(m, &leaders)),
                            self.best_shard_for(r, m, saturated(r, &leaders)),
                        ) else {
                            continue;
                        };
                        // s1 lacks m and s2 holds m, so they are different shards.
                        chosen = Some(vec![(s1, d, m), (s2, m, r)]);
                        break 'two_hop;
                    }
                }
            }
            let Some(steps) = chosen else {
                return;
            };
            for (shard, from, to) in steps {
                let replicas = &mut self.placement.shards_mut()[shard];
                if replicas.first() == Some(&from) {
                    *leaders.entry(from).or_insert(1) -= 1;
                    *leaders.entry(to).or_insert(0) += 1;
                }
                if let Some(slot) = replicas.iter_mut().find(|n| **n == from) {
                    *slot = to;
                }
                *loads.entry(from).or_insert(1) -= 1;
                *loads.entry(to).or_insert(0) += 1;
            }
        }
    }

    /// Among shards that `donor` holds and `receiver` does not, the one whose preference
    /// list ranks `receiver` highest (ties: lowest shard id). With `avoid_lead`, shards
    /// where `donor` is the preferred leader (so `receiver` would become it) come last.
    fn best_shard_for(&self, receiver: NodeId, donor: NodeId, avoid_lead: bool) -> Option<usize> {
        self.placement
            .shards()
            .iter()
            .zip(&self.prefs)
            .enumerate()
            .filter(|(_, (replicas, _))| replicas.contains(&donor) && !replicas.contains(&receiver))
            .map(|(i, (replicas, prefs))| {
                let rank = prefs
                    .iter()
                    .position(|&n| n == receiver)
                    .unwrap_or(usize::MAX);
                let leads = avoid_lead && replicas.first() == Some(&donor);
                (leads, rank, i)
            })
            .min()
            .map(|(_, _, i)| i)
    }

    fn validate_placement(&self, placement: &Placement) -> Result<(), RingError> {
        if placement.shard_count() as u64 != self.config.shards {
            return Err(RingError::ShardCountMismatch {
                left: placement.shard_count(),
                right: self.config.shards as usize,
            });
        }
        let r = self.effective_replication();
        for (shard, replicas) in placement.iter() {
            let bad = |fault| Err(RingError::InvalidPlacement { shard, fault });
            if replicas.len() != r {
                return bad(PlacementFault::ReplicaCount {
                    got: replicas.len(),
                    expected: r,
                });
            }
            for (i, n) in replicas.iter().enumerate() {
                if !self.nodes.contains_key(n) {
                    return bad(PlacementFault::NotAMember(*n));
                }
                if replicas[..i].contains(n) {
                    return bad(PlacementFault::Duplicate(*n));
                }
            }
        }
        Ok(())
    }
}

/// Capacitated bipartite matching by augmenting paths (Kuhn's algorithm generalised to
/// node capacities): request `i` takes one unit of `room` from one node of
/// `candidates[i]`, tried in the given order, re-pointing earlier requests when that frees
/// a unit. Returns each request's node, or `None` for requests that no assignment within
/// `room` can serve. `room` is left with the unused units.
fn capacitated_matching(
    candidates: &[Vec<NodeId>],
    room: &mut BTreeMap<NodeId, usize>,
) -> Vec<Option<NodeId>> {
    let mut assigned = vec![None; candidates.len()];
    let mut holders: BTreeMap<NodeId, Vec<usize>> = BTreeMap::new();
    for i in 0..candidates.len() {
        let mut visited = BTreeSet::new();
        augment(
            i,
            candidates,
            &mut assigned,
            &mut holders,
            room,
            &mut visited,
        );
    }
    assigned
}

/// One augmenting-path search of [`capacitated_matching`] for request `i`. Each node is
/// visited at most once per search, so a search costs O(requests + edges).
fn augment(
    i: usize,
    candidates: &[Vec<NodeId>],
    assigned: &mut [Option<NodeId>],
    holders: &mut BTreeMap<NodeId, Vec<usize>>,
    room: &mut BTreeMap<NodeId, usize>,
    visited: &mut BTreeSet<NodeId>,
) -> bool {
    for &n in &candidates[i] {
        if !visited.insert(n) {
            continue;
        }
        if let Some(free) = room.get_mut(&n).filter(|f| **f > 0) {
            *free -= 1;
            assigned[i] = Some(n);
            holders.entry(n).or_default().push(i);
            return true;
        }
        // `n` is full: free one of its units by moving a request it serves elsewhere.
        let served = holders.get(&n).cloned().unwrap_or_default();
        for j in served {
            if augment(j, candidates, assigned, holders, room, visited) {
                // `j` now holds a unit elsewhere; `i` takes over its unit of `n`.
                if let Some(list) = holders.get_mut(&n) {
                    if let Some(slot) = list.iter_mut().find(|x| **x == j) {
                        *slot = i;
                    }
                }
                assigned[i] = Some(n);
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn five() -> Ring {
        Ring::with_nodes(
            RingConfig::default(),
            (1..=5).map(NodeId::new).map(|n| (n, DEFAULT_WEIGHT)),
        )
        .unwrap()
    }

    #[test]
    fn config_ranges_are_enforced() {
        for cfg in [
            RingConfig {
                vnodes: 0,
                ..RingConfig::default()
            },
            RingConfig {
                shards: 0,
                ..RingConfig::default()
            },
            RingConfig {
                shards: MAX_SHARDS + 1,
                ..RingConfig::default()
            },
            RingConfig {
                replication_factor: 0,
                ..RingConfig::default()
            },
        ] {
            assert!(
                matches!(Ring::new(cfg), Err(RingError::InvalidConfig { .. })),
                "{cfg:?}"
            );
        }
        let err = Ring::new(RingConfig {
            replication_factor: 0,
            ..RingConfig::default()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid ring config: `replication_factor` must be in 1..=255"
        );
    }

    #[test]
    fn membership_errors() {
        let mut ring = five();
        assert_eq!(
            ring.add_node(NodeId::new(3), DEFAULT_WEIGHT),
            Err(RingError::NodeExists(NodeId::new(3)))
        );
        assert_eq!(
            ring.remove_node(NodeId::new(9)),
            Err(RingError::UnknownNode(NodeId::new(9)))
        );
        assert_eq!(
            ring.set_weight(NodeId::new(9), 100),
            Err(RingError::UnknownNode(NodeId::new(9)))
        );
        assert!(matches!(
            ring.add_node(NodeId::new(9), 0),
            Err(RingError::InvalidWeight { node, .. }) if node == NodeId::new(9)
        ));
        assert!(matches!(
            ring.set_weight(NodeId::new(1), 0),
            Err(RingError::InvalidWeight { node, .. }) if node == NodeId::new(1)
        ));
        assert!(matches!(
            ring.replicas(ShardId::new(64)),
            Err(RingError::UnknownShard { shard, shards: 64 }) if shard == ShardId::new(64)
        ));
        assert!(matches!(
            Ring::with_nodes(RingConfig::default(), [(NodeId::new(1), 100), (NodeId::new(1), 100)]),
            Err(RingError::NodeExists(n)) if n == NodeId::new(1)
        ));
        // A failed call leaves the ring untouched.
        assert_eq!(ring, five());
        assert!(ring
            .set_weight(NodeId::new(1), DEFAULT_WEIGHT)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn empty_and_small_rings() {
        let mut ring = Ring::new(RingConfig::default()).unwrap();
        assert!(ring.is_empty());
        assert!(ring.route(b"k").replicas.is_empty());
        assert_eq!(ring.ring_owner(b"k"), None);
        let d = ring.add_node(NodeId::new(7), DEFAULT_WEIGHT).unwrap();
        assert_eq!(d.changes.len(), 64);
        assert_eq!(ring.route(b"k").replicas, vec![NodeId::new(7)]);
        ring.add_node(NodeId::new(8), DEFAULT_WEIGHT).unwrap();
        assert_eq!(ring.effective_replication(), 2);
        assert!(ring.placement().iter().all(|(_, r)| r.len() == 2));
        let d = ring.remove_node(NodeId::new(7)).unwrap();
        assert_eq!(d.dropped_replicas(), 64);
        assert!(ring.placement().iter().all(|(_, r)| r == [NodeId::new(8)]));
        ring.remove_node(NodeId::new(8)).unwrap();
        assert!(ring.placement().iter().all(|(_, r)| r.is_empty()));
    }

    #[test]
    fn bounded_load_is_even_and_weights_count() {
        let ring = five();
        let load = ring.placement().replica_load();
        // 64 shards x 3 replicas over 5 nodes: 38.4 each.
        assert!(load.values().all(|&l| l == 38 || l == 39), "{load:?}");
        let leaders = ring.placement().leader_load();
        assert!(leaders.values().all(|&l| l == 12 || l == 13), "{leaders:?}");

        let weighted = Ring::with_nodes(
            RingConfig::default(),
            [
                (NodeId::new(1), 100),
                (NodeId::new(2), 100),
                (NodeId::new(3), 200),
            ],
        )
        .unwrap();
        // rf 3 with 3 nodes: everyone holds every shard whatever the weights.
        assert!(weighted
            .placement()
            .replica_load()
            .values()
            .all(|&l| l == 64));
        let weighted = Ring::with_nodes(
            RingConfig::default(),
            [
                (NodeId::new(1), 100),
                (NodeId::new(2), 100),
                (NodeId::new(3), 100),
                (NodeId::new(4), 200),
            ],
        )
        .unwrap();
        let load = weighted.placement().replica_load();
        assert_eq!(
            load[&NodeId::new(4)],
            64,
            "share 76.8 is capped at one replica per shard"
        );
        assert!(
            load[&NodeId::new(1)] >= 42 && load[&NodeId::new(1)] <= 43,
            "{load:?}"
        );
    }

    #[test]
    fn leaders_are_balanced_after_build_and_rebalance() {
        for n in [4u64, 10, 50] {
            let mut ring = Ring::with_nodes(
                RingConfig::default(),
                (1..=n).map(NodeId::new).map(|i| (i, DEFAULT_WEIGHT)),
            )
            .unwrap();
            let cap = 64usize.div_ceil(n as usize);
            let max = |r: &Ring| r.placement().leader_load().values().copied().max().unwrap();
            assert!(
                max(&ring) <= cap,
                "{n} nodes: {:?}",
                ring.placement().leader_load()
            );
            ring.add_node(NodeId::new(1000), DEFAULT_WEIGHT).unwrap();
            let led = ring
                .placement()
                .leader_load()
                .get(&NodeId::new(1000))
                .copied()
                .unwrap_or(0);
            assert!(
                led <= 64usize.div_ceil(n as usize + 1),
                "{n} nodes: new node leads {led}"
            );
            ring.remove_node(NodeId::new(2)).unwrap();
            ring.rebalance();
            assert!(
                max(&ring) <= 64usize.div_ceil(n as usize),
                "{n} nodes after changes"
            );
        }
    }

    #[test]
    fn ring_shares_sum_to_one_and_follow_weights() {
        let ring = Ring::with_nodes(
            RingConfig::default(),
            [(NodeId::new(1), 100), (NodeId::new(2), 300)],
        )
        .unwrap();
        let shares = ring.ring_shares();
        let total: f64 = shares.values().sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert!(shares[&NodeId::new(2)] > 0.6, "{shares:?}");
        assert!(ring.preference(ShardId::new(0)).unwrap().len() == 2);
    }

    #[test]
    fn deserialising_rejects_inconsistent_placements() {
        let ring = five();
        let mut value = serde_json::to_value(&ring).unwrap();
        value["placement"]["shards"][3] = serde_json::json!([1, 1, 2]);
        let err = serde_json::from_value::<Ring>(value.clone()).unwrap_err();
        assert!(
            err.to_string()
                .contains("invalid placement for shard 3: node 1 appears twice"),
            "{err}"
        );
        value["placement"]["shards"][3] = serde_json::json!([1, 2, 99]);
        let err = serde_json::from_value::<Ring>(value.clone()).unwrap_err();
        assert!(err.to_string().contains("node 99 is not a member"), "{err}");
        value["placement"]["shards"][3] = serde_json::json!([1, 2]);
        let err = serde_json::from_value::<Ring>(value).unwrap_err();
        assert!(err.to_string().contains("2 replicas, expected 3"), "{err}");
    }

    #[test]
    fn rebalance_after_removals_restores_even_loads() {
        let mut ring = Ring::with_nodes(
            RingConfig::default(),
            (1..=10).map(NodeId::new).map(|n| (n, DEFAULT_WEIGHT)),
        )
        .unwrap();
        ring.remove_node(NodeId::new(3)).unwrap();
        ring.remove_node(NodeId::new(7)).unwrap();
        ring.rebalance();
        let load = ring.placement().replica_load();
        // 192 slots over 8 nodes.
        assert!(load.values().all(|&l| l == 24), "{load:?}");
        assert!(ring.rebalance().is_empty());
    }
}
