//! `conclave`: the node runtime — builder, configuration, storage engines, HTTP API, metrics
//! and the `conclave` command-line interface.

pub mod config;
pub mod node;
pub mod state_machine;
pub mod storage;
