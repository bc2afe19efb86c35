//! Durable storage of a node: the write-ahead log for Raft logs and hard states, and the
//! storage health record every storage component reports into. See DESIGN.md §4.

pub mod health;
pub mod log_store;
pub mod wal;
pub mod watchdog;
