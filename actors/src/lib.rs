//! `conclave-actors`: the sans-IO protocol cores of conclave (Raft, later SWIM and the shard
//! router), the deterministic simulator that checks them, and the actix actors that host them.
//!
//! Protocol cores read no clock, open no socket and spawn nothing: they take inputs
//! (messages, timer ticks, commands, persistence completions) and emit typed actions that the
//! caller carries out. See `docs/consensus.md`.

pub mod linearizability;
pub mod mailbox;
pub mod raft;
pub mod sim;
pub mod supervisor;
pub mod swim;
