//! The stable hash functions the ring is built on.
//!
//! Two hashes are involved, and both are specified here bit for bit because every node
//! of a cluster (and every release of conclave) must route a key to the same shard and a
//! shard to the same replicas:
//!
//! * **key → shard**: `shard = (xxh3_64(key) × shards) >> 64` (128-bit product). XXH3-64
//!   with the default secret and seed 0 is a frozen specification (stable since xxHash
//!   0.8.0) implemented by the `xxhash-rust` crate. The multiply-shift reduction
//!   (Lemire's "fastrange") is cheaper than `%` and makes shard `i` own the contiguous
//!   hash range `[i·2^64/shards, (i+1)·2^64/shards)`: doubling the shard count splits
//!   every shard `i` exactly into shards `2i` and `2i+1`, which is what a future shard
//!   split needs.
//! * **positions on the node ring** (used by the `consistent_hash_ring` crate for virtual
//!   nodes and shard lookups): [`StableHasher`]. The crate defaults to FNV-1a fed through
//!   Rust's `Hash` trait, which writes integers in *native* byte order (so positions
//!   differ between little- and big-endian machines) and whose byte stream for `std`
//!   types is not promised to stay the same across Rust releases. We therefore hand the
//!   crate our own `BuildHasher`, and only ever hash our own key types ([`NodeKey`],
//!   [`ShardKey`], and the crate's `u64` re-hash chain), each of which feeds the hasher
//!   through `write_u64` alone. That pins the whole function to [`mix64`] below.

use std::hash::{BuildHasher, Hash, Hasher};

use xxhash_rust::xxh3::xxh3_64;

use crate::{NodeId, ShardId};

/// Seed of the ring-position hash: the ASCII bytes of "conclave" read as a big-endian
/// integer. Changing it moves every virtual node, so it is part of the stable contract.
pub const RING_SEED: u64 = 0x636f_6e63_6c61_7665;

/// Domain tag written before a shard id, so that shard `n` and node `n` never hash to
/// the same ring position (node ids and shard ids are both small integers in practice,
/// and without the tag shard `n` would always land exactly on node `n`'s first vnode).
pub const SHARD_TAG: u64 = 0x7368_6172_6421_2121; // "shard!!!"

/// The stable 64-bit hash of a key's bytes: XXH3-64, seed 0.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// Maps a 64-bit key hash onto `shards` equal, contiguous ranges of the hash space.
///
/// Returns `0` when `shards` is `0` (a ring never has zero shards; [`crate::RingConfig`]
/// rejects it).
#[inline]
pub fn shard_for_hash(hash: u64, shards: u64) -> ShardId {
    // The high half of the 128-bit product is < shards for every hash.
    ShardId::new(((u128::from(hash) * u128::from(shards)) >> 64) as u64)
}

/// The shard a key belongs to among `shards` shards: `shard_for_hash(key_hash(key))`.
#[inline]
pub fn shard_for_key(key: &[u8], shards: u64) -> ShardId {
    shard_for_hash(key_hash(key), shards)
}

/// The 64-bit finaliser of MurmurHash3 (`fmix64`): a bijection with full avalanche, used
/// to turn structured inputs (small ids, previous positions) into uniform ring positions.
#[inline]
pub const fn mix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The ring-position hasher handed to `consistent_hash_ring`.
///
/// State starts at [`RING_SEED`]; `write_u64(v)` sets `state = mix64(state ^ v)`;
/// `finish()` returns the state. Narrower integers are widened to `u64` first (so
/// `usize` is hashed the same on 32- and 64-bit machines), and a byte slice is absorbed
/// as `write_u64(xxh3_64(bytes))`. The types this crate hashes only use `write_u64`:
/// a node is `mix64(SEED ^ id)`, a shard is `mix64(mix64(SEED ^ SHARD_TAG) ^ id)`, and
/// the crate's re-hash of a position `p` is `mix64(SEED ^ p)`.
#[derive(Clone, Copy, Debug)]
pub struct StableHasher {
    state: u64,
}

impl Default for StableHasher {
    fn default() -> Self {
        Self { state: RING_SEED }
    }
}

impl Hasher for StableHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.state
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.write_u64(xxh3_64(bytes));
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.state = mix64(self.state ^ i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

/// `BuildHasher` producing [`StableHasher`]s; the hasher type parameter of the inner
/// `consistent_hash_ring::Ring`.
#[derive(Clone, Copy, Debug, Default)]
pub struct StableBuildHasher;

impl BuildHasher for StableBuildHasher {
    type Hasher = StableHasher;

    #[inline]
    fn build_hasher(&self) -> StableHasher {
        StableHasher::default()
    }
}

/// A node as stored on the inner ring; hashes as `write_u64(id)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeKey(pub NodeId);

impl Hash for NodeKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.get());
    }
}

/// A shard as looked up on the inner ring; hashes as `write_u64(SHARD_TAG)`,
/// `write_u64(id)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardKey(pub ShardId);

impl Hash for ShardKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(SHARD_TAG);
        state.write_u64(self.0.get());
    }
}

/// A key hash looked up directly on the node ring (bypassing shards); used to measure
/// the balance of the ring itself. Hashes as `write_u64(hash)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashKey(pub u64);

impl Hash for HashKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
    }
}

/// The ring position of a node's first virtual node (later ones are `mix64(SEED ^ prev)`).
pub fn node_position(node: NodeId) -> u64 {
    StableBuildHasher.hash_one(NodeKey(node))
}

/// The ring position a shard is looked up at (its first replica is the owner of the
/// first virtual node at or after this position).
pub fn shard_position(shard: ShardId) -> u64 {
    StableBuildHasher.hash_one(ShardKey(shard))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn shard_for_hash_covers_contiguous_ranges() {
        assert_eq!(shard_for_hash(0, 64), ShardId::new(0));
        assert_eq!(shard_for_hash(u64::MAX, 64), ShardId::new(63));
        assert_eq!(shard_for_hash(1 << 58, 64), ShardId::new(1));
        assert_eq!(shard_for_hash((1 << 58) - 1, 64), ShardId::new(0));
        assert_eq!(shard_for_hash(u64::MAX, 1), ShardId::new(0));
    }

    #[test]
    fn doubling_shards_splits_each_shard_in_two() {
        for i in 0..10_000u64 {
            let h = key_hash(&i.to_le_bytes());
            assert_eq!(
                shard_for_hash(h, 128).get() / 2,
                shard_for_hash(h, 64).get()
            );
        }
    }

    #[test]
    fn hasher_matches_its_specification() {
        assert_eq!(node_position(NodeId::new(7)), mix64(RING_SEED ^ 7));
        assert_eq!(
            shard_position(ShardId::new(7)),
            mix64(mix64(RING_SEED ^ SHARD_TAG) ^ 7)
        );
        assert_ne!(
            node_position(NodeId::new(7)),
            shard_position(ShardId::new(7))
        );
        let mut h = StableHasher::default();
        h.write_u32(9);
        let mut g = StableHasher::default();
        g.write_usize(9);
        assert_eq!(h.finish(), g.finish());
    }

    #[test]
    fn pinned_values() {
        // XXH3-64 of the empty input, from the xxHash reference test vectors.
        assert_eq!(key_hash(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0xb456_bcfc_34c2_cb2c);
    }
}
