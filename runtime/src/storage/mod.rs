//! Durable storage of a node: the write-ahead log for Raft logs and hard states (and, in later
//! work, the sled-backed state machine store and snapshots). See DESIGN.md §4.

pub mod log_store;
pub mod wal;
