//! The conclave node: the supervised actor tree that hosts Raft groups on the transport,
//! durable storage and the user's state machine (DESIGN.md §3).

pub mod handle;

pub use handle::*;
