//! Runs the deterministic simulator over many seeds of mixed faults on 3- and 5-node groups.
//!
//! By default 500 seeds (even seeds on 3 nodes, odd on 5), split over two threads. Long runs:
//! `CONCLAVE_SIM_SEEDS=100000 CONCLAVE_SIM_START=0 cargo test --release -p conclave-actors --test sim_seeds -- --nocapture`
//! (or the `sim` example's `--seeds`), which prints progress. A failure prints the seed, the
//! checker that fired, the end of the trace and a one-line replay command.

use conclave_sim::raft::{self as sim, FaultMix, FaultProfile, SimConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

#[test]
fn mixed_faults_over_many_seeds() {
    let count = env_u64("CONCLAVE_SIM_SEEDS", 500);
    let start = env_u64("CONCLAVE_SIM_START", 0);
    let every = (count / 10).max(1);
    let long = count > 500;
    let done = AtomicU64::new(0);
    let events = AtomicU64::new(0);
    let ops = AtomicU64::new(0);
    let taken = AtomicU64::new(0);
    let sent = AtomicU64::new(0);
    let installed = AtomicU64::new(0);
    let t0 = Instant::now();
    let failure = sim::run_seeds(
        start,
        count,
        2,
        |seed| SimConfig::new(seed, SimConfig::default_nodes(seed)),
        |_, result| {
            if let Ok(r) = result {
                events.fetch_add(r.steps, Ordering::Relaxed);
                ops.fetch_add(r.ops_invoked, Ordering::Relaxed);
                taken.fetch_add(r.snapshots_taken, Ordering::Relaxed);
                sent.fetch_add(r.snapshots_sent, Ordering::Relaxed);
                installed.fetch_add(r.snapshots_installed, Ordering::Relaxed);
            }
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if long && n % every == 0 {
                let secs = t0.elapsed().as_secs_f64();
                println!("{n}/{count} seeds, {:.1} seeds/s", n as f64 / secs);
            }
        },
    );
    if let Some(f) = failure {
        panic!("{f}");
    }
    let secs = t0.elapsed().as_secs_f64();
    let (taken, sent, installed) = (
        taken.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed),
        installed.load(Ordering::Relaxed),
    );
    println!(
        "{count} seeds from {start} passed in {secs:.1} s ({:.1} seeds/s, {} events, {} client ops; snapshots: {taken} taken, {sent} sent, {installed} installed)",
        count as f64 / secs,
        events.load(Ordering::Relaxed),
        ops.load(Ordering::Relaxed)
    );
    // The runs exercise compaction and installs, not only the log path.
    if count >= 100 {
        assert!(
            taken > 0 && sent > 0 && installed > 0,
            "no snapshot traffic: {taken} taken, {sent} sent, {installed} installed"
        );
    }
}

#[test]
fn a_seed_replays_identically() {
    // One seed, twice: every counter of the report must match (determinism is what makes a
    // printed seed worth anything).
    for seed in [7, 8] {
        let cfg = SimConfig::new(seed, SimConfig::default_nodes(seed));
        let a = sim::run(&cfg).unwrap_or_else(|f| panic!("{f}"));
        let b = sim::run(&cfg).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(a, b);
        assert!(a.ops_checked > 0 && a.committed > 0, "{a:?}");
    }
}

#[test]
fn profiles_other_than_mixed_pass() {
    // `CONCLAVE_SIM_PROFILE_SEEDS` raises the count of the crash and partition profiles.
    let n = env_u64("CONCLAVE_SIM_PROFILE_SEEDS", 20);
    for (profile, seeds) in [
        (FaultProfile::Crashes, n),
        (FaultProfile::Partitions, n),
        (FaultProfile::Calm, 4),
    ] {
        let failure = sim::run_seeds(
            0,
            seeds,
            2,
            |seed| {
                let mut cfg = SimConfig::new(seed, SimConfig::default_nodes(seed));
                cfg.profile = profile;
                cfg
            },
            |_, _| {},
        );
        if let Some(f) = failure {
            panic!("{f}");
        }
    }
}

fn membership_config(seed: u64) -> SimConfig {
    let mut cfg = SimConfig::new(seed, SimConfig::default_nodes(seed));
    cfg.profile = FaultProfile::Membership;
    cfg
}

/// Membership changes under mixed faults (single-server and joint, in bursts, leaders crashing
/// right after proposing, joining nodes started with an empty membership): every checker,
/// liveness included. Seeds 86 and 120 reproduced core bug 1 of `sim/src/raft/CORE_BUGS.md`
/// (fixed in the core). Asserts the runs exercised what they are meant to.
/// `CONCLAVE_SIM_MEMBERSHIP_SEEDS=10000` is the long run.
#[test]
fn membership_changes_under_faults() {
    let seeds = env_u64("CONCLAVE_SIM_MEMBERSHIP_SEEDS", 200);
    let totals = std::sync::Mutex::new([0u64; 5]);
    let t0 = std::time::Instant::now();
    if let Some(f) = sim::run_seeds(0, seeds, 2, membership_config, |_, r| {
        if let (Ok(r), Ok(mut t)) = (r, totals.lock()) {
            t[0] += r.changes_accepted;
            t[1] += r.joint_changes;
            t[2] += r.changes_in_progress;
            t[3] += r.joiners_added;
            t[4] += r.paced_waits;
        }
    }) {
        panic!("{f}");
    }
    let t = *totals.lock().unwrap();
    println!(
        "{seeds} membership seeds in {:.1?}: {} changes accepted ({} joint), {} refused as in \
         progress, {} joining nodes added, {} appends to paced learners waited for credit",
        t0.elapsed(),
        t[0],
        t[1],
        t[2],
        t[3],
        t[4]
    );
    assert!(t[1] > 0 && t[2] > 0 && t[3] > 0 && t[4] > 0, "{t:?}");
}

/// Snapshot-heavy runs: frequent crashes, a snapshot every 3–12 applied entries with at most
/// two entries kept after compaction, duplicated and delayed transfers (stale snapshots
/// arriving after newer ones, installs from old terms, crashes mid-install). Every checker,
/// the state-digest one included. `CONCLAVE_SIM_SNAPSHOT_SEEDS` raises the count.
#[test]
fn snapshots_under_crashes() {
    let count = env_u64("CONCLAVE_SIM_SNAPSHOT_SEEDS", 200);
    let installed = AtomicU64::new(0);
    let stale = AtomicU64::new(0);
    let old_term = AtomicU64::new(0);
    let mid_install = AtomicU64::new(0);
    let failure = sim::run_seeds(
        0,
        count,
        2,
        |seed| {
            let mut cfg = SimConfig::new(seed, SimConfig::default_nodes(seed));
            cfg.profile = FaultProfile::Crashes;
            let mut mix = FaultMix::draw(cfg.profile, seed);
            mix.snapshot_every = (3, 12);
            mix.keep_entries = seed % 3;
            mix.duplicate = mix.duplicate.max(0.05);
            mix.long_delay = mix.long_delay.max(0.05);
            cfg.mix = Some(mix);
            cfg
        },
        |_, result| {
            if let Ok(r) = result {
                installed.fetch_add(r.snapshots_installed, Ordering::Relaxed);
                stale.fetch_add(r.snapshots_stale, Ordering::Relaxed);
                old_term.fetch_add(r.snapshots_old_term, Ordering::Relaxed);
                mid_install.fetch_add(r.crashes_mid_install, Ordering::Relaxed);
            }
        },
    );
    if let Some(f) = failure {
        panic!("{f}");
    }
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (installed, stale, old_term, mid_install) = (
        load(&installed),
        load(&stale),
        load(&old_term),
        load(&mid_install),
    );
    println!(
        "{count} snapshot-heavy seeds passed: {installed} installs, {stale} stale snapshots \
         and {old_term} from an old term refused, {mid_install} crashes mid-install"
    );
    // The scenarios the setup exists for all happened.
    assert!(
        installed > 0 && stale > 0 && old_term > 0 && mid_install > 0,
        "{installed} installs, {stale} stale, {old_term} old-term, {mid_install} mid-install"
    );
}
