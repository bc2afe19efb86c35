//! Configuration of one Raft group on one node, with validation.

use super::log::RestoreError;
use super::types::{GroupId, Millis, NodeId};

/// Tunables of one Raft group on one node. Every field has a sane default; [`RaftConfig::validate`]
/// refuses combinations that would be unsafe (e.g. a lease longer than the election timeout).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftConfig {
    /// This node's id (never 0).
    pub id: NodeId,
    /// The group this core runs.
    pub group: GroupId,
    /// Lower bound of the randomized election timeout (Raft §5.2). Default 150 ms.
    pub election_timeout_min_ms: Millis,
    /// Upper bound (exclusive) of the randomized election timeout. Default 300 ms.
    pub election_timeout_max_ms: Millis,
    /// How often a leader sends heartbeats. Default 50 ms.
    pub heartbeat_interval_ms: Millis,
    /// Run a pre-vote round before an election (thesis §9.6). Default on.
    pub pre_vote: bool,
    /// A leader steps down when it has not heard from a quorum within an election timeout,
    /// and followers ignore votes while they hear from a leader (thesis §6.2, §4.2.3).
    /// Default on; lease reads require it.
    pub check_quorum: bool,
    /// Most entries in one AppendEntries. Default 256.
    pub max_entries_per_append: usize,
    /// Most payload bytes in one AppendEntries (at least one entry is always sent). Default
    /// 512 KiB; keep it below the transport's `max_frame_size`.
    pub max_bytes_per_append: usize,
    /// Pipelining window: AppendEntries in flight to one follower before waiting for acks.
    /// Default 8.
    pub max_inflight_appends: usize,
    /// Length of a leader lease for lease reads (thesis §6.4.1), measured from the moment the
    /// heartbeat round that a quorum acknowledged was sent. Default 120 ms.
    pub lease_ms: Millis,
    /// The largest rate difference between two nodes' monotonic clocks, in percent, that
    /// lease reads tolerate. Default 5. `lease_ms` must satisfy
    /// `lease_ms <= election_timeout_min_ms * (100 - drift) / (100 + drift)`.
    pub max_clock_drift_percent: u64,
    /// Entries kept in memory before a snapshot's index when the log is compacted
    /// ([`Raft::snapshot_taken`](super::Raft::snapshot_taken)), so that slightly lagging
    /// followers still catch up with AppendEntries instead of a whole snapshot. Default 1,000.
    pub keep_entries: u64,
    /// How long a leader waits for a snapshot it asked its shell to send
    /// ([`Action::SendSnapshot`](super::Action::SendSnapshot)) to be answered before it
    /// retries. Default 60,000 ms; a shell that streams large snapshots reports failures
    /// itself ([`Raft::snapshot_send_failed`](super::Raft::snapshot_send_failed)), so this
    /// only covers a lost answer.
    pub snapshot_timeout_ms: Millis,
    /// A learner is promoted to voter only if its match index is within this many entries
    /// of the leader's last index (`ProposeError::NotCaughtUp` otherwise): a voter far behind
    /// would stall commitment while it catches up. Default 1,000.
    pub promote_max_lag: u64,
    /// Pace of the log to a learner more than `promote_max_lag` entries behind: it receives
    /// at most the bytes the leader appends (so it always gains on the log) plus this many
    /// bytes per second (payload + 24 bytes per entry). A learner joining under load
    /// otherwise gets the whole log tail behind its snapshot at once, and its disk writes and
    /// apply compete with the voters' (on one machine, or one disk). 0 = unpaced. Voters are
    /// never paced (a lagging voter holds up commitment). Default 0; the node sets it from
    /// `[raft] learner_catch_up_mb_s`.
    pub learner_catch_up_bytes_per_s: u64,
    /// Leave heartbeats to the host: the core never starts a heartbeat round from
    /// [`Raft::tick`](super::Raft::tick) and its timer ignores the heartbeat deadline; the
    /// host calls [`Raft::heartbeat`](super::Raft::heartbeat) on every leader it drives at
    /// one node-wide beat, so all groups' heartbeats to a peer leave in one frame
    /// ([`Host`](super::Host)). Default off (the core heartbeats on its own).
    pub host_heartbeats: bool,
    /// Bugs planted on purpose to prove that the simulator's checkers catch them.
    #[cfg(feature = "planted-bugs")]
    pub planted_bugs: PlantedBugs,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            id: NodeId::new(1),
            group: GroupId::FIRST,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            heartbeat_interval_ms: 50,
            pre_vote: true,
            check_quorum: true,
            max_entries_per_append: 256,
            max_bytes_per_append: 512 * 1024,
            max_inflight_appends: 8,
            lease_ms: 120,
            max_clock_drift_percent: 5,
            keep_entries: 1_000,
            snapshot_timeout_ms: 60_000,
            promote_max_lag: 1_000,
            learner_catch_up_bytes_per_s: 0,
            host_heartbeats: false,
            #[cfg(feature = "planted-bugs")]
            planted_bugs: PlantedBugs::default(),
        }
    }
}

/// Bugs that tests switch on to show the checkers catch them. Only exists with the
/// `planted-bugs` feature, which nothing but tests enables.
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    /// Grant votes without the up-to-date-log check of Raft §5.4.1.
    pub vote_without_log_check: bool,
    /// Commit an entry of a previous term by counting replicas (violates Raft §5.4.2).
    pub commit_previous_term_by_counting: bool,
    /// Serve lease reads even after the lease has expired.
    pub lease_read_after_expiry: bool,
    /// Acknowledge appended entries (and count the leader's own copy) before their persist
    /// completed.
    pub ack_before_persist: bool,
    /// Serve lease reads at once on a node that believes it leads, without a lease, even when
    /// check-quorum is off (so nothing makes an isolated leader step down): the stale-leader
    /// bug of d-engine issue #381, for the chaos harness of the runtime.
    pub lease_without_check_quorum: bool,
    /// Compaction drops everything committed, not only what the reported snapshot covers:
    /// committed entries the state machine has not applied yet are lost.
    pub compact_unapplied: bool,
    /// A follower installs a snapshot at or below its commit index (a stale one, e.g. a
    /// duplicate arriving after a newer install), moving its applied index backwards.
    pub install_stale_snapshot: bool,
    /// Read by the simulator's state machine, not by the core: its snapshots leave out one
    /// key (a snapshot missing part of the state, like a KV snapshot without its
    /// idempotency table).
    pub snapshot_missing_state: bool,
    /// While joint (Raft §6), the leader commits with a majority of the new voters alone,
    /// ignoring the outgoing ones.
    pub joint_commit_new_majority_only: bool,
    /// While joint, a candidate wins with a majority of the outgoing voters alone, ignoring
    /// the new ones.
    pub joint_elect_old_majority_only: bool,
    /// The leader accepts a membership change while the previous one is not committed yet
    /// (outside a joint configuration).
    pub second_change_before_commit: bool,
    /// Read by the multi-group [`Host`](super::Host), not by the core: a quiesced follower
    /// ignores the gossip report that its leader is down (`Host::peer_down`), so with its
    /// election timer off it never notices the leader died.
    pub quiesced_follower_ignores_peer_down: bool,
}

/// A configuration that cannot be run safely.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Node id 0 is reserved.
    #[error("node id must not be 0")]
    ZeroNodeId,
    /// The election timeout range is empty or too short compared to the heartbeat.
    #[error("election timeout range {min}..{max} ms is invalid: need heartbeat ({heartbeat} ms) < min < max")]
    ElectionTimeout {
        /// Lower bound.
        min: Millis,
        /// Upper bound.
        max: Millis,
        /// Heartbeat interval.
        heartbeat: Millis,
    },
    /// The lease is too long for the election timeout and the tolerated clock drift.
    #[error("lease_ms {lease} is too long: at most {limit} ms with election_timeout_min {min} ms and {drift}% clock drift")]
    LeaseTooLong {
        /// Configured lease.
        lease: Millis,
        /// Largest safe lease.
        limit: Millis,
        /// Election timeout lower bound.
        min: Millis,
        /// Tolerated drift, percent.
        drift: u64,
    },
    /// A size limit is zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// Drift of 100% or more makes leases meaningless.
    #[error("max_clock_drift_percent must be below 100")]
    Drift,
    /// The restored state is inconsistent (a gap in the log, terms going backwards): the
    /// storage handed back something it never was asked to write.
    #[error("invalid restore state: {0}")]
    InvalidRestore(#[source] RestoreError),
}

impl RaftConfig {
    /// The longest lease that stays safe with this election timeout and clock drift.
    pub fn max_safe_lease_ms(&self) -> Millis {
        let d = self.max_clock_drift_percent.min(99);
        self.election_timeout_min_ms * (100 - d) / (100 + d)
    }

    /// Checks that the configuration is safe to run.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == NodeId::NONE {
            return Err(ConfigError::ZeroNodeId);
        }
        if self.heartbeat_interval_ms == 0
            || self.election_timeout_min_ms <= self.heartbeat_interval_ms
            || self.election_timeout_max_ms <= self.election_timeout_min_ms
        {
            return Err(ConfigError::ElectionTimeout {
                min: self.election_timeout_min_ms,
                max: self.election_timeout_max_ms,
                heartbeat: self.heartbeat_interval_ms,
            });
        }
        if self.max_clock_drift_percent >= 100 {
            return Err(ConfigError::Drift);
        }
        if self.lease_ms > self.max_safe_lease_ms() {
            return Err(ConfigError::LeaseTooLong {
                lease: self.lease_ms,
                limit: self.max_safe_lease_ms(),
                min: self.election_timeout_min_ms,
                drift: self.max_clock_drift_percent,
            });
        }
        for (name, v) in [
            ("max_entries_per_append", self.max_entries_per_append),
            ("max_bytes_per_append", self.max_bytes_per_append),
            ("max_inflight_appends", self.max_inflight_appends),
            (
                "snapshot_timeout_ms",
                usize::try_from(self.snapshot_timeout_ms).unwrap_or(usize::MAX),
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(RaftConfig::default().validate(), Ok(()));
    }

    #[test]
    fn lease_longer_than_safe_bound_is_refused() {
        let cfg = RaftConfig {
            lease_ms: 140,
            ..RaftConfig::default()
        };
        // 150 * 95 / 105 = 135
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::LeaseTooLong { limit: 135, .. })
        ));
    }

    #[test]
    fn bad_timeouts_are_refused() {
        let cfg = RaftConfig {
            election_timeout_min_ms: 40,
            ..RaftConfig::default()
        };
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::ElectionTimeout { .. })
        ));
        let cfg = RaftConfig {
            id: NodeId::NONE,
            ..RaftConfig::default()
        };
        assert_eq!(cfg.validate(), Err(ConfigError::ZeroNodeId));
    }
}
