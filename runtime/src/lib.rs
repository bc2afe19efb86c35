//! `conclave`: the node runtime — builder, configuration, storage engines, HTTP API, metrics
//! and the `conclave` command-line interface.

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod http;
pub mod node;
pub mod state_machine;
pub mod storage;
