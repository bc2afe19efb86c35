//! A sans-IO Raft core: one deterministic state machine per Raft group (Ongaro & Ousterhout,
//! "In Search of an Understandable Consensus Algorithm", and Ongaro's thesis for pre-vote,
//! check-quorum, leader transfer, reads and single-server membership changes; the paper's §6
//! for joint consensus).
//!
//! The core reads no clock, opens no socket and spawns nothing. Its caller feeds it inputs —
//! [`Raft::handle_message`], [`Raft::tick`], [`Raft::persisted`] and commands such as
//! [`Raft::propose`] — and drains [`Action`]s with [`Raft::poll_actions`]. See
//! `docs/consensus.md` for the persistence contract and the read paths.

mod config;
mod core;
mod host;
mod log;
mod progress;
mod types;

#[cfg(test)]
mod tests;

pub use self::core::{PeerProgress, Raft, Status, MAX_TERM};

#[cfg(feature = "planted-bugs")]
pub use config::PlantedBugs;
pub use config::{ConfigError, RaftConfig};
pub use host::{
    CoalescedHeartbeat, CoalescedResponse, Frame, Host, HostAction, HostConfig, HostError,
    HostStats,
};
pub use log::RestoreError;
pub use types::*;
