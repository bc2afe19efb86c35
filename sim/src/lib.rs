//! `conclave-sim`: test tooling for conclave's protocol cores — the deterministic simulators
//! of a Raft group ([`raft`]) and of a SWIM cluster ([`swim`]), and the linearizability checker
//! ([`linearizability`]) that the Raft simulator and the node's chaos harness run on recorded
//! client histories.
//!
//! Used by tests, examples and benches (as a dev-dependency or from the examples crate); the
//! node binary does not link it.

pub mod linearizability;
pub mod raft;
pub mod swim;
