//! Configuration of the SWIM core (the `[gossip]` section of DESIGN §9 plus `[cluster]`'s seeds),
//! with validation that names the offending key.

use super::types::Millis;

/// Tunables of the SWIM core. Defaults are seed 000's.
///
/// Suspicion timing: with Lifeguard on, a suspicion lasts `dead_timeout_s` when nobody else
/// confirms it and shrinks towards `suspect_timeout_s` as independent confirmations arrive
/// (Lifeguard §IV-B, with α·min = `dead_timeout_s`). With Lifeguard off it lasts exactly
/// `suspect_timeout_s`, as in plain SWIM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwimConfig {
    /// Length of a protocol period (SWIM §3.1 "T'"). Default 1000 ms.
    pub cycle_interval_ms: Millis,
    /// How long a direct ping waits before ping-reqs are sent. Default 300 ms; must be shorter
    /// than the cycle so the indirect probes get the rest of the period.
    pub probe_timeout_ms: Millis,
    /// Members asked to probe indirectly when a direct ping times out (SWIM's `k`). Default 3.
    pub indirect_probes: usize,
    /// Suspicion timeout once fully confirmed (and the only one with Lifeguard off). Default 10 s.
    pub suspect_timeout_s: u64,
    /// Suspicion timeout of an unconfirmed suspicion with Lifeguard on: the latest a live
    /// cluster declares a silent member dead. Default 30 s.
    pub dead_timeout_s: u64,
    /// How long a dead or departed member is remembered (and reported) before it is
    /// forgotten. Default 300 s.
    pub prune_timeout_s: u64,
    /// Clusters with at most this many other active members probe every one of them directly
    /// each cycle; larger ones probe `probes_per_cycle` members chosen round-robin from a
    /// shuffled list (SWIM §4.3). Default 10.
    pub hybrid_threshold: usize,
    /// Members probed per cycle above the hybrid threshold. Default 1 (classic SWIM).
    pub probes_per_cycle: usize,
    /// Most rumors piggybacked on one frame. Default 5.
    pub rumor_limit_per_frame: usize,
    /// Each rumor is sent `ceil(retransmit_multiplier * log2(n + 1))` times, n being the
    /// number of active members (SWIM §4.1's λ·log n). Default 3.
    pub retransmit_multiplier: u32,
    /// Transport addresses of the seeds a new node joins through.
    pub seeds: Vec<String>,
    /// How often joins are retried until a seed answers, and how often a node that lost
    /// contact with everyone re-announces itself. Default 1000 ms.
    pub seed_retry_ms: Millis,
    /// Lifeguard (local health multiplier, nacks, dynamic suspicion timeout, buddy system).
    /// Default on.
    pub lifeguard: bool,
    /// Highest local health multiplier score (Lifeguard's S). Probe timeout and period are
    /// scaled by `score + 1`. Default 8.
    pub max_local_health: u32,
    /// Most members in one `JoinAck` frame; larger views are sent as several frames. Default 128.
    pub join_ack_chunk: usize,
    /// Most metadata entries accepted from a member. Default 64.
    pub max_metadata_entries: usize,
    /// Most metadata bytes (keys plus values) accepted from a member. Default 4096.
    pub max_metadata_bytes: usize,
    /// Longest transport or HTTP address accepted. Default 256.
    pub max_address_len: usize,
    /// Most members the table holds (this node excluded); a rumor about a new member beyond
    /// it is refused and counted, so no peer can grow the table without bound. Default 1024.
    pub max_members: usize,
}

impl Default for SwimConfig {
    fn default() -> Self {
        SwimConfig {
            cycle_interval_ms: 1000,
            probe_timeout_ms: 300,
            indirect_probes: 3,
            suspect_timeout_s: 10,
            dead_timeout_s: 30,
            prune_timeout_s: 300,
            hybrid_threshold: 10,
            probes_per_cycle: 1,
            rumor_limit_per_frame: 5,
            retransmit_multiplier: 3,
            seeds: Vec::new(),
            seed_retry_ms: 1000,
            lifeguard: true,
            max_local_health: 8,
            join_ack_chunk: 128,
            max_metadata_entries: 64,
            max_metadata_bytes: 4096,
            max_address_len: 256,
            max_members: 1024,
        }
    }
}

/// A configuration value [`SwimConfig::validate`] refuses; the message names the key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A value that must be positive is zero.
    #[error("gossip.{key} must be greater than 0")]
    Zero {
        /// The key.
        key: &'static str,
    },
    /// Two values are in the wrong order.
    #[error("gossip.{key} ({value}) must be {relation} {other_key} ({other})")]
    Order {
        /// The key whose value is wrong.
        key: &'static str,
        /// Its value.
        value: u64,
        /// "less than", "at least", ...
        relation: &'static str,
        /// The key it is compared to.
        other_key: &'static str,
        /// That key's value.
        other: u64,
    },
    /// A seed address is empty or too long; the field is the address as configured,
    /// echoed.
    #[error("cluster.seeds contains an invalid address {0:?}")]
    BadSeed(String),
}

impl SwimConfig {
    /// Checks every value and their relations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive: [(&'static str, u64); 10] = [
            ("cycle_interval_ms", self.cycle_interval_ms),
            ("probe_timeout_ms", self.probe_timeout_ms),
            ("suspect_timeout_s", self.suspect_timeout_s),
            ("dead_timeout_s", self.dead_timeout_s),
            ("prune_timeout_s", self.prune_timeout_s),
            ("probes_per_cycle", self.probes_per_cycle as u64),
            ("rumor_limit_per_frame", self.rumor_limit_per_frame as u64),
            (
                "retransmit_multiplier",
                u64::from(self.retransmit_multiplier),
            ),
            ("seed_retry_ms", self.seed_retry_ms),
            ("join_ack_chunk", self.join_ack_chunk as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Zero { key });
            }
        }
        if self.max_address_len == 0 {
            return Err(ConfigError::Zero {
                key: "max_address_len",
            });
        }
        if self.max_members == 0 {
            return Err(ConfigError::Zero { key: "max_members" });
        }
        if self.probe_timeout_ms >= self.cycle_interval_ms {
            return Err(ConfigError::Order {
                key: "probe_timeout_ms",
                value: self.probe_timeout_ms,
                relation: "less than",
                other_key: "cycle_interval_ms",
                other: self.cycle_interval_ms,
            });
        }
        if self.dead_timeout_s < self.suspect_timeout_s {
            return Err(ConfigError::Order {
                key: "dead_timeout_s",
                value: self.dead_timeout_s,
                relation: "at least",
                other_key: "suspect_timeout_s",
                other: self.suspect_timeout_s,
            });
        }
        if self.prune_timeout_s < self.dead_timeout_s {
            return Err(ConfigError::Order {
                key: "prune_timeout_s",
                value: self.prune_timeout_s,
                relation: "at least",
                other_key: "dead_timeout_s",
                other: self.dead_timeout_s,
            });
        }
        // A suspicion must last at least a few periods, or a member that lost one frame could
        // be declared dead before the suspicion rumor even reaches it to be refuted.
        if self.suspect_timeout_s.saturating_mul(1000) < self.cycle_interval_ms.saturating_mul(2) {
            return Err(ConfigError::Order {
                key: "suspect_timeout_s",
                value: self.suspect_timeout_s.saturating_mul(1000),
                relation: "at least twice (in ms)",
                other_key: "cycle_interval_ms",
                other: self.cycle_interval_ms,
            });
        }
        for seed in &self.seeds {
            if seed.is_empty() || seed.len() > self.max_address_len {
                return Err(ConfigError::BadSeed(seed.clone()));
            }
        }
        Ok(())
    }

    pub(crate) fn suspect_timeout_ms(&self) -> Millis {
        self.suspect_timeout_s.saturating_mul(1000)
    }

    pub(crate) fn dead_timeout_ms(&self) -> Millis {
        self.dead_timeout_s.saturating_mul(1000)
    }

    pub(crate) fn prune_timeout_ms(&self) -> Millis {
        self.prune_timeout_s.saturating_mul(1000)
    }
}
