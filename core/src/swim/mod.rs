//! A sans-IO SWIM core: membership and failure detection for the whole cluster (who is alive,
//! suspect, dead or gone, where they listen and what they host), with Lifeguard's refinements.
//!
//! The core reads no clock, opens no socket and spawns nothing. Its host (the gossip actor on
//! the transport, or the deterministic simulator `conclave_sim::swim`) feeds it
//! [`Swim::handle_message`], [`Swim::handle_timer`] and commands ([`Swim::start`], [`Swim::set_metadata`],
//! [`Swim::leave`]), each with `now` in milliseconds on a monotonic clock, and drains typed
//! [`Action`]s with [`Swim::poll_actions`]: frames to send, timers to set (typed [`Timer`]
//! values handed back when they fire; stale ones are ignored, so nothing needs cancelling),
//! membership [`Event`]s to publish and probe round-trip times. See `docs/gossip.md`.

mod config;
mod core;
mod types;

pub use self::config::{ConfigError, SwimConfig};
pub use self::core::{Swim, SwimError, MAX_INCARNATION, MAX_RUMOR_INCARNATION};
pub use self::types::*;
