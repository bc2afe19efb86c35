//! A deterministic simulator for the Raft core: one `u64` seed reproduces a whole run.
//!
//! The simulator hosts 3 or 5 [`Raft`](conclave_core::raft::Raft) cores of one group in a single thread
//! and drives them from a discrete-event queue (message deliveries, timers, persistence
//! completions, client operations, faults). It injects message drops, duplicates, reordering and
//! delays, symmetric and one-way partitions, crashes that lose every write not yet reported
//! durable, slow disks, leader transfers and clock skew within the bound the lease tolerates.
//!
//! After every event it checks the safety properties of Raft figure 3 (election safety, log
//! matching, leader completeness, state machine safety) plus commit index monotonicity and
//! "nothing is committed before a quorum has it durably". At the end of a run it checks the
//! recorded client history for linearizability ([`crate::linearizability::check_kv`]) and, after
//! a fault-free liveness phase, that a leader emerged, every request completed and every node
//! converged.
//!
//! Entry points: [`run`] (one seed) and [`run_seeds`] (many seeds on several threads). A
//! [`SimFailure`] prints the seed, the checker that fired, the tail of the event trace and a
//! one-line command that replays it.

mod clock;
mod multi;
mod store;
mod trace;
mod world;

pub use clock::NodeClock;
pub use multi::{
    run_multi, MultiConfig, MultiFaults, MultiReport, MultiWorld, RouterBugs, ShardSim,
};

use conclave_core::raft::{Millis, RaftConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Which faults a run injects. The per-seed mix (rates, which fault types are on) is drawn
/// from the seed within the limits of the profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultProfile {
    /// A different random mix of every fault type per seed (the default).
    Mixed,
    /// Frequent crashes (biased toward the leader), quick restarts, slow disks and drops:
    /// stresses the persistence contract and elections over divergent logs.
    Crashes,
    /// Partitions that isolate the leader, with maximal tolerated clock skew: stresses
    /// check-quorum, leases and stale leaders.
    Partitions,
    /// The mixed faults plus membership changes proposed on the leader throughout the fault
    /// phase: single-server ones (add a learner, promote it, remove a voter) and joint ones
    /// (Raft §6: replace a voter by a learner, or promote and remove several at once), in
    /// bursts (a change before the previous one committed must be refused), with the leader
    /// sometimes crashing right after proposing; some seeds start one or two nodes as
    /// joining cores (empty membership) that must be added to take part.
    Membership,
    /// No faults at all (random delays only): a baseline.
    Calm,
}

impl FaultProfile {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FaultProfile::Mixed => "mixed",
            FaultProfile::Crashes => "crashes",
            FaultProfile::Partitions => "partitions",
            FaultProfile::Membership => "membership",
            FaultProfile::Calm => "calm",
        }
    }

    /// Parses a name produced by [`FaultProfile::name`].
    pub fn parse(name: &str) -> Option<Self> {
        [
            FaultProfile::Mixed,
            FaultProfile::Crashes,
            FaultProfile::Partitions,
            FaultProfile::Membership,
            FaultProfile::Calm,
        ]
        .into_iter()
        .find(|p| p.name() == name)
    }
}

/// Relative weights of the client operations (any scale; all zero means only puts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Unconditional writes.
    pub put: u32,
    /// Compare-and-set (expecting a recent value or absence; sometimes deleting on match).
    pub cas: u32,
    /// Deletes.
    pub delete: u32,
    /// ReadIndex reads (checked for linearizability).
    pub get_linearizable: u32,
    /// Lease reads (checked for linearizability).
    pub get_lease: u32,
    /// Stale reads from any node (exercised, not checked).
    pub get_stale: u32,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            put: 25,
            cas: 20,
            delete: 5,
            get_linearizable: 25,
            get_lease: 20,
            get_stale: 5,
        }
    }
}

/// Everything that defines a run. Two runs with equal configs produce identical traces.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed of every random choice of the run.
    pub seed: u64,
    /// Number of voters in the group (3 or 5 are the tested sizes; 1..=9 work).
    pub nodes: usize,
    /// Which faults to inject.
    pub profile: FaultProfile,
    /// Use exactly this fault mix instead of drawing one from `profile` and the seed.
    pub mix: Option<FaultMix>,
    /// Simulated length of the fault phase, ms.
    pub fault_ms: Millis,
    /// Simulated length of the fault-free liveness phase that follows, ms.
    pub liveness_ms: Millis,
    /// How long after the liveness phase starts a leader with a committed entry of its term
    /// must exist, ms.
    pub leader_bound_ms: Millis,
    /// A client gives up on an operation after this long (the operation is then recorded as
    /// indeterminate). In the liveness phase such a timeout is a failure.
    pub op_timeout_ms: Millis,
    /// Number of concurrent clients (each runs one operation at a time).
    pub clients: usize,
    /// Number of keys the workload touches.
    pub keys: usize,
    /// The mix of client operations.
    pub workload: Workload,
    /// Percentage of operations a client sends to a random node instead of the leader it
    /// believes in (clients behind a load balancer); the rest follow leader hints.
    pub random_target_percent: u32,
    /// The template of every node's core config (`id` is set per node, `group` is 0). Planted
    /// bugs are switched on here.
    pub raft: RaftConfig,
    /// Print every event of the run to stdout as it happens.
    pub verbose: bool,
    /// How many trace lines a [`SimFailure`] keeps.
    pub trace_tail: usize,
}

impl SimConfig {
    /// The standard configuration for `seed` on `nodes` nodes: mixed faults for 10 s, then 5 s
    /// of liveness, three clients over four keys.
    pub fn new(seed: u64, nodes: usize) -> Self {
        SimConfig {
            seed,
            nodes,
            profile: FaultProfile::Mixed,
            mix: None,
            fault_ms: 10_000,
            liveness_ms: 5_000,
            leader_bound_ms: 3_000,
            op_timeout_ms: 1_500,
            clients: 3,
            keys: 4,
            random_target_percent: 30,
            workload: Workload::default(),
            raft: RaftConfig {
                // Snapshot transfers take tens of milliseconds here, not minutes.
                snapshot_timeout_ms: 1_000,
                ..RaftConfig::default()
            },
            verbose: false,
            trace_tail: 60,
        }
    }

    /// The node count the standard test suites use for `seed`: 3 for even seeds, 5 for odd.
    pub fn default_nodes(seed: u64) -> usize {
        if seed % 2 == 0 {
            3
        } else {
            5
        }
    }

    /// The command line that replays this run with the `sim` example.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!(
            "cargo run --release -p examples --example sim -- --seed {} --nodes {}",
            self.seed, self.nodes
        );
        if self.profile != FaultProfile::Mixed {
            cmd.push_str(&format!(" --profile {}", self.profile.name()));
        }
        cmd.push_str(" --verbose");
        cmd
    }

    fn planted_bugs_note(&self) -> Option<String> {
        #[cfg(feature = "planted-bugs")]
        {
            if self.raft.planted_bugs != conclave_core::raft::PlantedBugs::default() {
                return Some(format!("{:?}", self.raft.planted_bugs));
            }
        }
        None
    }
}

/// The fault rates and switches of one run, drawn from the seed within its [`FaultProfile`].
#[derive(Clone, Debug, PartialEq)]
pub struct FaultMix {
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Probability that a message takes 50–400 ms instead of 1–15 ms (reordering).
    pub long_delay: f64,
    /// Probability that a persist takes 10–60 ms instead of 0–3 ms.
    pub slow_disk: f64,
    /// Whether partitions are injected.
    pub partitions: bool,
    /// Whether partitions may be one-way (a set of blocked directed links).
    pub one_way: bool,
    /// Whether nodes crash (losing unpersisted writes) and restart.
    pub crashes: bool,
    /// Whether clocks drift (rate error up to 90% of `max_clock_drift_percent`).
    pub clock_skew: bool,
    /// Whether leader transfers are requested.
    pub transfers: bool,
    /// Whether membership changes are proposed (single-server, thesis §4.1, and joint,
    /// Raft §6).
    pub membership: bool,
    /// How many of the highest-id nodes start as joining cores (empty membership): they are
    /// not voters of the bootstrap configuration and learn it from the log once added.
    pub joiners: usize,
    /// Probability that the leader crashes 1–30 ms after it proposed a membership change
    /// (often in the middle of a joint phase).
    pub change_leader_crash: f64,
    /// Probability that a crash or a partition targets the current leader.
    pub leader_bias: f64,
    /// Probability that a newly elected leader crashes `leader_life_ms` after its election, before it
    /// has replicated much: the short-lived leaders of Raft figure 8.
    pub new_leader_crash: f64,
    /// Range of how long after its election such a leader crashes, ms.
    pub leader_life_ms: (Millis, Millis),
    /// Range of the gap between two fault events, ms.
    pub gap_ms: (Millis, Millis),
    /// Range of how long a crashed node stays down, ms.
    pub down_ms: (Millis, Millis),
    /// Range of how long a partition lasts, ms.
    pub partition_ms: (Millis, Millis),
    /// Range of applied entries between two snapshots of a node (drawn per snapshot);
    /// `(0, 0)`: no snapshots.
    pub snapshot_every: (u64, u64),
    /// The cores' `keep_entries` (entries kept before a snapshot's index when compacting).
    pub keep_entries: u64,
    /// Learner catch-up pacing: the cores' `learner_catch_up_bytes_per_s` and the
    /// `promote_max_lag` beyond which a learner is paced; `(0, _)`: unpaced (the core's
    /// default `promote_max_lag` then).
    pub catch_up_pace: (u64, u64),
}

impl FaultMix {
    /// Draws the mix of `profile` for `seed`.
    pub fn draw(profile: FaultProfile, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, 0xFA17));
        // With probability `on`, a rate drawn from `lo..hi`; otherwise 0.
        fn pct(rng: &mut ChaCha8Rng, on: f64, lo: f64, hi: f64) -> f64 {
            if rng.random_bool(on) {
                rng.random_range(lo..hi)
            } else {
                0.0
            }
        }
        let rng = &mut rng;
        let quiet = FaultMix {
            drop: 0.0,
            duplicate: 0.0,
            long_delay: 0.0,
            slow_disk: 0.0,
            partitions: false,
            one_way: false,
            crashes: false,
            clock_skew: false,
            transfers: false,
            membership: false,
            joiners: 0,
            change_leader_crash: 0.0,
            leader_bias: 0.0,
            new_leader_crash: 0.0,
            leader_life_ms: (1, 60),
            gap_ms: (200, 1_000),
            down_ms: (50, 1_500),
            partition_ms: (200, 2_500),
            snapshot_every: (0, 0),
            keep_entries: 0,
            catch_up_pace: (0, 0),
        };
        // Snapshots are not faults: every profile takes them, at a rate drawn from a stream
        // of its own (so the fault draws of a seed are what they were before snapshots).
        let mut snap = ChaCha8Rng::seed_from_u64(derive_seed(seed, 0x5A95));
        let quiet = if snap.random_bool(0.85) {
            let lo = snap.random_range(3..=30);
            FaultMix {
                snapshot_every: (lo, lo + snap.random_range(0..=40)),
                keep_entries: if snap.random_bool(0.5) {
                    0
                } else {
                    snap.random_range(1..=20)
                },
                ..quiet
            }
        } else {
            quiet
        };
        match profile {
            FaultProfile::Calm => quiet,
            FaultProfile::Membership => {
                // A stream of its own: the mixed draws of a seed stay what they were.
                let mut m = ChaCha8Rng::seed_from_u64(derive_seed(seed, 0x3E3B));
                let joiners = if m.random_bool(0.5) {
                    m.random_range(1..=2)
                } else {
                    0
                };
                // Pacing draws from a stream of its own too (the membership draws of a seed
                // stay what they were): half the runs pace learners more than 2..20 entries
                // behind at 20..200 kB/s beyond the log's growth (entries are tens of bytes:
                // a burst of hundreds spreads over some milliseconds, not over the run).
                let mut pace = ChaCha8Rng::seed_from_u64(derive_seed(seed, 0xCA7C));
                let catch_up_pace = if pace.random_bool(0.5) {
                    (
                        pace.random_range(20_000..=200_000),
                        pace.random_range(2..=20),
                    )
                } else {
                    (0, 0)
                };
                FaultMix {
                    membership: true,
                    joiners,
                    catch_up_pace,
                    change_leader_crash: pct(&mut m, 0.5, 0.05, 0.3),
                    ..FaultMix::draw(FaultProfile::Mixed, seed)
                }
            }
            FaultProfile::Mixed => {
                let drop = pct(rng, 0.5, 0.005, 0.10);
                let duplicate = pct(rng, 0.4, 0.005, 0.05);
                let long_delay = pct(rng, 0.4, 0.01, 0.05);
                let slow_disk = pct(rng, 0.4, 0.05, 0.30);
                let leader_bias = pct(rng, 1.0, 0.2, 0.8);
                let partitions = rng.random_bool(0.6);
                let one_way = partitions && rng.random_bool(0.4);
                let crashes = rng.random_bool(0.6);
                let new_leader_crash = if crashes {
                    pct(rng, 0.3, 0.05, 0.3)
                } else {
                    0.0
                };
                let clock_skew = rng.random_bool(0.5);
                let transfers = rng.random_bool(0.3);
                FaultMix {
                    drop,
                    duplicate,
                    long_delay,
                    slow_disk,
                    partitions,
                    one_way,
                    crashes,
                    clock_skew,
                    transfers,
                    leader_bias,
                    new_leader_crash,
                    ..quiet
                }
            }
            FaultProfile::Crashes => FaultMix {
                drop: pct(rng, 0.7, 0.01, 0.10),
                duplicate: pct(rng, 0.3, 0.005, 0.03),
                long_delay: pct(rng, 0.5, 0.01, 0.05),
                slow_disk: pct(rng, 1.0, 0.2, 0.6),
                partitions: rng.random_bool(0.5),
                crashes: true,
                clock_skew: rng.random_bool(0.5),
                leader_bias: 0.7,
                new_leader_crash: pct(rng, 0.6, 0.1, 0.4),
                gap_ms: (50, 500),
                down_ms: (20, 600),
                partition_ms: (100, 1_000),
                ..quiet
            },
            FaultProfile::Partitions => FaultMix {
                drop: pct(rng, 0.3, 0.005, 0.03),
                long_delay: pct(rng, 0.3, 0.01, 0.03),
                partitions: true,
                one_way: rng.random_bool(0.3),
                clock_skew: true,
                leader_bias: 0.9,
                gap_ms: (100, 800),
                partition_ms: (300, 2_000),
                ..quiet
            },
        }
    }
}

impl fmt::Display for FaultMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "drop {:.1}% dup {:.1}% long-delay {:.1}% slow-disk {:.0}%",
            self.drop * 100.0,
            self.duplicate * 100.0,
            self.long_delay * 100.0,
            self.slow_disk * 100.0
        )?;
        for (on, name) in [
            (self.partitions, "partitions"),
            (self.one_way, "one-way"),
            (self.crashes, "crashes"),
            (self.clock_skew, "skew"),
            (self.transfers, "transfers"),
            (self.membership, "membership"),
            (self.change_leader_crash > 0.0, "change-crash"),
            (self.new_leader_crash > 0.0, "leader-crash"),
        ] {
            if on {
                write!(f, " +{name}")?;
            }
        }
        if self.joiners > 0 {
            write!(f, " +{} joining", self.joiners)?;
        }
        if self.catch_up_pace.0 > 0 {
            write!(
                f,
                " +learners paced at {} B/s beyond lag {}",
                self.catch_up_pace.0, self.catch_up_pace.1
            )?;
        }
        if self.snapshot_every.1 > 0 {
            write!(
                f,
                " +snapshots every {}..{} (keep {})",
                self.snapshot_every.0, self.snapshot_every.1, self.keep_entries
            )?;
        }
        Ok(())
    }
}

/// Which checker fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// Two leaders in one term (Raft §5.2, figure 3 "Election Safety").
    ElectionSafety,
    /// Two entries with the same index and term but different contents or predecessors
    /// (Raft §5.3, "Log Matching").
    LogMatching,
    /// A leader was elected without an entry already known committed (Raft §5.4,
    /// "Leader Completeness").
    LeaderCompleteness,
    /// Two nodes committed or applied different entries at one index (Raft §5.4.3,
    /// "State Machine Safety").
    StateMachineSafety,
    /// A node's commit index went backwards within one lifetime.
    CommitRegressed,
    /// A node committed an entry that a quorum of voters did not durably store.
    CommitNotDurable,
    /// The client history is not linearizable.
    Linearizability,
    /// The linearizability search ran out of budget (treated as a failure, never as a pass).
    LinearizabilityUnknown,
    /// A write acknowledged to a client is missing from the committed log.
    LostWrite,
    /// No leader, a stuck request, or nodes that did not converge after the faults stopped.
    Liveness,
    /// The core broke its API contract (an action out of order, a bad config, ...).
    Contract,
    /// A node's applied index went backwards within one lifetime (a stale snapshot
    /// restored over newer state).
    AppliedRegressed,
    /// Two replicas at the same applied index hold different states.
    StateDigest,
    /// Log entries were compacted that no durable snapshot covers, or that were not applied.
    Compaction,
    /// A leader was elected without a quorum of votes of its configuration (while joint, a
    /// majority of C_new and one of C_old, Raft §6).
    ElectionQuorum,
    /// A leader appended a membership change on top of an uncommitted one, or a step the
    /// protocol does not allow (more than one voter without a joint configuration, a joint
    /// configuration not built on the one in force, leaving a joint one for another C_new).
    MembershipChange,
}

impl FailureKind {
    /// A short human name.
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::ElectionSafety => "election safety",
            FailureKind::LogMatching => "log matching",
            FailureKind::LeaderCompleteness => "leader completeness",
            FailureKind::StateMachineSafety => "state machine safety",
            FailureKind::CommitRegressed => "commit index regressed",
            FailureKind::CommitNotDurable => "commit not durable on a quorum",
            FailureKind::Linearizability => "linearizability",
            FailureKind::LinearizabilityUnknown => "linearizability check inconclusive",
            FailureKind::LostWrite => "lost acknowledged write",
            FailureKind::Liveness => "liveness",
            FailureKind::Contract => "core API contract",
            FailureKind::AppliedRegressed => "applied index regressed",
            FailureKind::StateDigest => "state digest differs at the same applied index",
            FailureKind::Compaction => "compaction past the durable snapshot",
            FailureKind::ElectionQuorum => "leader elected without a quorum",
            FailureKind::MembershipChange => "unsafe membership change",
        }
    }
}

/// A failed run: which checker fired, where, and how to replay it.
#[derive(Clone, Debug)]
pub struct SimFailure {
    /// The run's seed.
    pub seed: u64,
    /// The run's node count.
    pub nodes: usize,
    /// The run's fault profile.
    pub profile: FaultProfile,
    /// Which checker fired.
    pub kind: FailureKind,
    /// Index of the event being processed when it fired.
    pub step: u64,
    /// Simulated global time, ms.
    pub time: Millis,
    /// What the checker saw.
    pub message: String,
    /// The last events before the failure, oldest first.
    pub trace_tail: Vec<String>,
    /// The fault mix of the run.
    pub mix: String,
    /// The planted bugs switched on, if any (their runs cannot be replayed by the example).
    pub planted_bugs: Option<String>,
    /// A one-line command that replays the run.
    pub replay: String,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "simulation failed: seed {} ({} nodes, profile {}) at step {}, t={} ms",
            self.seed,
            self.nodes,
            self.profile.name(),
            self.step,
            self.time
        )?;
        writeln!(f, "checker: {}", self.kind.name())?;
        writeln!(f, "{}", self.message)?;
        writeln!(f, "faults: {}", self.mix)?;
        if let Some(bugs) = &self.planted_bugs {
            writeln!(
                f,
                "planted bugs: {bugs} (replay from the planted_bugs test)"
            )?;
        }
        writeln!(f, "last {} events:", self.trace_tail.len())?;
        for line in &self.trace_tail {
            writeln!(f, "  {line}")?;
        }
        write!(f, "replay: {}", self.replay)
    }
}

impl std::error::Error for SimFailure {}

/// What a successful run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimReport {
    /// The run's seed.
    pub seed: u64,
    /// Events processed.
    pub steps: u64,
    /// Simulated time, ms.
    pub sim_ms: Millis,
    /// Client operations invoked (including stale reads, which are not checked).
    pub ops_invoked: u64,
    /// Operations that returned a result.
    pub ops_ok: u64,
    /// Writes whose outcome stayed unknown (node crash or client timeout).
    pub ops_indeterminate: u64,
    /// Operations that definitely did not take effect (refused, or their entry was lost).
    pub ops_failed: u64,
    /// Operations in the linearizability-checked history.
    pub ops_checked: u64,
    /// The highest term reached.
    pub max_term: u64,
    /// Leaders elected (distinct terms with a leader).
    pub leaders: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Partitions injected.
    pub partitions: u64,
    /// Messages sent by the cores.
    pub messages: u64,
    /// Highest committed index.
    pub committed: u64,
    /// Snapshots written and reported to a core.
    pub snapshots_taken: u64,
    /// Snapshot transfers started by leaders.
    pub snapshots_sent: u64,
    /// Snapshot installs that became durable.
    pub snapshots_installed: u64,
    /// Snapshots that reached a node whose commit index was already at or past them.
    pub snapshots_stale: u64,
    /// Snapshots that reached a node in a newer term than the one they were sent in.
    pub snapshots_old_term: u64,
    /// Crashes while an install's persist was in flight.
    pub crashes_mid_install: u64,
    /// Membership changes the leader accepted.
    pub changes_accepted: u64,
    /// Accepted changes that entered a joint configuration (Raft §6).
    pub joint_changes: u64,
    /// Changes refused because another one was in flight (`ChangeInProgress`).
    pub changes_in_progress: u64,
    /// Joining nodes (started with an empty membership) added as learners.
    pub joiners_added: u64,
    /// Appends to a learner far behind that waited for pacing credit (`FaultMix::catch_up_pace`),
    /// summed over every core of the run (crashed incarnations included).
    pub paced_waits: u64,
}

/// Runs one seed to completion.
pub fn run(config: &SimConfig) -> Result<SimReport, Box<SimFailure>> {
    world::World::new(config.clone())?.run()
}

/// Derives an independent sub-seed (SplitMix64 finaliser): each random stream of a run (network,
/// faults, clients, disks, each core) gets its own, so adding a draw to one stream does not
/// shift the others.
pub fn derive_seed(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs seeds `start..start + count` on `threads` threads, calling `progress` after each seed
/// with the seed and its result. Stops launching new seeds at the first failure and returns the
/// failure with the lowest seed among those run, if any.
pub fn run_seeds<C, P>(
    start: u64,
    count: u64,
    threads: usize,
    make_config: C,
    progress: P,
) -> Option<SimFailure>
where
    C: Fn(u64) -> SimConfig + Sync,
    P: Fn(u64, &Result<SimReport, Box<SimFailure>>) + Sync,
{
    for_seeds(
        start,
        count,
        threads,
        |seed| run(&make_config(seed)),
        progress,
    )
}

/// Runs multi-group seeds `0..count` on `threads` threads like [`run_seeds`]: every report in
/// seed order, or the failure with the lowest seed among those run.
pub fn run_multi_seeds<C>(
    count: u64,
    threads: usize,
    make_config: C,
) -> Result<Vec<MultiReport>, Box<SimFailure>>
where
    C: Fn(u64) -> MultiConfig + Sync,
{
    let reports = std::sync::Mutex::new(Vec::new());
    let failure = for_seeds(
        0,
        count,
        threads,
        |seed| run_multi(&make_config(seed)),
        |_, result| {
            if let (Ok(r), Ok(mut all)) = (result, reports.lock()) {
                all.push(r.clone());
            }
        },
    );
    if let Some(f) = failure {
        return Err(Box::new(f));
    }
    let mut reports = reports.into_inner().unwrap_or_default();
    reports.sort_by_key(|r| r.seed);
    Ok(reports)
}

/// The seed loop of [`run_seeds`] and [`run_multi_seeds`], over any run function.
fn for_seeds<R, F, P>(
    start: u64,
    count: u64,
    threads: usize,
    run: F,
    progress: P,
) -> Option<SimFailure>
where
    F: Fn(u64) -> Result<R, Box<SimFailure>> + Sync,
    P: Fn(u64, &Result<R, Box<SimFailure>>) + Sync,
{
    let next = AtomicU64::new(start);
    let stop = AtomicBool::new(false);
    let end = start.saturating_add(count);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    break;
                }
                let result = run(seed);
                progress(seed, &result);
                if let Err(failure) = result {
                    stop.store(true, Ordering::Relaxed);
                    if let Ok(mut all) = failures.lock() {
                        all.push(*failure);
                    }
                }
            });
        }
    });
    failures
        .into_inner()
        .ok()
        .and_then(|all| all.into_iter().min_by_key(|f| f.seed))
}
