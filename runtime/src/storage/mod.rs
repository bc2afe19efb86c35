//! Durable storage of a node: the write-ahead log for Raft logs and hard states, the state
//! store the key-value machine keeps its data in (redb or sled, docs/storage.md), the stall
//! watchdog, and the storage health record every storage component reports into. See
//! DESIGN.md §4.

pub mod background_io;
pub mod group_list;
pub mod health;
pub mod log_store;
pub mod member_mark;
pub mod redb_store;
pub mod shard_map_file;
pub mod shared_store;
pub mod sled_store;
pub mod snapshot_store;
pub mod state_store;
pub mod wal;
pub mod watchdog;
