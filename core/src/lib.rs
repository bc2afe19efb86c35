//! `conclave-core`: the sans-IO protocol cores of conclave — Raft ([`raft`]) and SWIM
//! ([`swim`]).
//!
//! Protocol cores read no clock, open no socket and spawn nothing: they take inputs
//! (messages, timer ticks, commands, persistence completions) and emit typed actions that the
//! caller carries out. This crate depends on no async runtime (no actix, no tokio): the node's
//! actors (crate `conclave`) and the deterministic simulator (crate `conclave-sim`) both host
//! the same cores. See `docs/consensus.md` and `docs/gossip.md`.

pub mod ids;
pub mod raft;
pub mod swim;
