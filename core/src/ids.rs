//! The identifiers every layer of conclave shares, defined once here: the Raft core and the
//! SWIM core use them, and `conclave-ring`, `conclave-transport` and the node re-export them,
//! so a node id is the same type from the wire to the HTTP API.
//!
//! Each is a newtype over `u64`, so a group id cannot be passed where a node id is expected.
//! They are `#[serde(transparent)]`: every encoding (the MessagePack wire format, the HTTP
//! JSON, the TOML config, the files on disk) is exactly the one of the bare `u64` they
//! replaced, byte for byte (the tests below encode both and compare). `Debug` and `Display`
//! print the bare number too, so logs and error messages read as before.
//!
//! There is deliberately no `From<u64>` (nor `Into<u64>`): with one, `.into()` would turn any
//! integer, including another kind of id's `.get()`, into an id without anyone writing the
//! type's name, which is the mix-up these types exist to stop. Build one with `NodeId::new(1)`
//! and read it with `.get()`; a shard's group is `GroupId::from(shard)`, the one conversion
//! between kinds that the design means (a shard is replicated by the group of the same id).

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(u64);

        impl $name {
            /// The id whose number is `id`.
            pub const fn new(id: u64) -> Self {
                Self(id)
            }

            /// This id's number (what the wire, the files and the HTTP API carry).
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        /// Parses the bare decimal number, as the command line and file names spell an id.
        impl std::str::FromStr for $name {
            type Err = std::num::ParseIntError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map(Self)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

id_type! {
    /// A node's identity, unique within a cluster. `0` is never a valid node id.
    NodeId
}

id_type! {
    /// A Raft group's identity. Group `0` is the cluster's first group.
    GroupId
}

id_type! {
    /// A shard's identity: an index into the shard map, `0..shards`. The Raft group that
    /// replicates shard `s` is group `s + 1` (`conclave_ring::group_of_shard`).
    ShardId
}

impl NodeId {
    /// No node: `0`, which is never a node's id, stands for an unknown sender, a seed whose id
    /// is not known yet, or no leader, where the wire or a file carries a bare id.
    pub const NONE: NodeId = NodeId(0);
}

impl GroupId {
    /// The cluster's first group, group `0`: the one every node hosts.
    pub const FIRST: GroupId = GroupId(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct WithIds {
        node: NodeId,
        group: GroupId,
        shard: ShardId,
        voters: Vec<NodeId>,
    }

    /// The same record as it was before the newtypes: bare integers.
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct WithU64s {
        node: u64,
        group: u64,
        shard: u64,
        voters: Vec<u64>,
    }

    fn both() -> (WithIds, WithU64s) {
        let ids = WithIds {
            node: NodeId::new(3),
            group: GroupId::new(1 << 40),
            shard: ShardId::new(70_000),
            voters: vec![NodeId::new(1), NodeId::new(2), NodeId::new(300)],
        };
        let raw = WithU64s {
            node: 3,
            group: 1 << 40,
            shard: 70_000,
            voters: vec![1, 2, 300],
        };
        (ids, raw)
    }

    #[test]
    fn msgpack_encoding_is_the_bare_integers() {
        let (ids, raw) = both();
        let a = rmp_serde::to_vec(&ids).expect("encode ids");
        let b = rmp_serde::to_vec(&raw).expect("encode u64s");
        assert_eq!(a, b);
        let named_a = rmp_serde::to_vec_named(&ids).expect("encode ids");
        let named_b = rmp_serde::to_vec_named(&raw).expect("encode u64s");
        assert_eq!(named_a, named_b);
        let back: WithIds = rmp_serde::from_slice(&b).expect("decode as ids");
        assert_eq!(back, ids);
    }

    #[test]
    fn json_encoding_is_the_bare_integers_also_as_map_keys() {
        let (ids, raw) = both();
        let a = serde_json::to_string(&ids).expect("encode ids");
        let b = serde_json::to_string(&raw).expect("encode u64s");
        assert_eq!(a, b);
        let back: WithIds = serde_json::from_str(&b).expect("decode as ids");
        assert_eq!(back, ids);

        let keyed: std::collections::BTreeMap<NodeId, GroupId> =
            [(NodeId::new(2), GroupId::new(5))].into_iter().collect();
        let raw_keyed: std::collections::BTreeMap<u64, u64> = [(2, 5)].into_iter().collect();
        let a = serde_json::to_string(&keyed).expect("encode");
        assert_eq!(a, serde_json::to_string(&raw_keyed).expect("encode"));
        assert_eq!(a, r#"{"2":5}"#);
        let back: std::collections::BTreeMap<NodeId, GroupId> =
            serde_json::from_str(&a).expect("decode");
        assert_eq!(back, keyed);
    }

    #[test]
    fn toml_encoding_is_the_bare_integers() {
        let (ids, raw) = both();
        let a = toml::to_string(&ids).expect("encode ids");
        let b = toml::to_string(&raw).expect("encode u64s");
        assert_eq!(a, b);
        let back: WithIds = toml::from_str(&b).expect("decode as ids");
        assert_eq!(back, ids);
    }

    #[test]
    fn debug_and_display_print_the_number() {
        let id = NodeId::new(42);
        assert_eq!(
            format!("{id} {id:?} {:?}", vec![GroupId::new(1)]),
            "42 42 [1]"
        );
        assert_eq!(ShardId::new(9).get(), 9);
    }
}
