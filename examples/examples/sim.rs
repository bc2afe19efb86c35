//! The deterministic Raft simulator from the command line.
//!
//! ```text
//! cargo run --release -p examples --example sim -- --seeds 100000            # long mode
//! cargo run --release -p examples --example sim -- --seed 1234 --nodes 5 --verbose   # replay
//! ```
//!
//! Long mode runs seeds `--start .. --start + --seeds` on `--threads` threads, prints a progress
//! line every `--every` seeds, and stops at the first failure with the seed and a one-line
//! replay command (exit code 1). Replay mode runs one seed; `--verbose` prints every event.

use anyhow::{bail, Context, Result};
use clap::Parser;
use conclave_sim::raft::{self as sim, FaultProfile, SimConfig, SimReport};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Run the deterministic Raft simulator over many seeds, or replay one")]
struct Args {
    /// Replay exactly this seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Long mode: run this many seeds.
    #[arg(long)]
    seeds: Option<u64>,
    /// First seed of long mode.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Group size; by default 3 for even seeds and 5 for odd ones (as in the test suite).
    #[arg(long)]
    nodes: Option<usize>,
    /// Fault profile: mixed, crashes, partitions, membership or calm.
    #[arg(long, default_value = "mixed")]
    profile: String,
    /// Simulated length of the fault phase, ms.
    #[arg(long)]
    fault_ms: Option<u64>,
    /// Print every event of the run (replay mode).
    #[arg(long)]
    verbose: bool,
    /// Threads for long mode (default: available parallelism).
    #[arg(long)]
    threads: Option<usize>,
    /// Progress line every this many seeds.
    #[arg(long, default_value_t = 1000)]
    every: u64,
}

fn config(args: &Args, profile: FaultProfile, seed: u64) -> SimConfig {
    let mut cfg = SimConfig::new(seed, args.nodes.unwrap_or(SimConfig::default_nodes(seed)));
    cfg.profile = profile;
    if let Some(ms) = args.fault_ms {
        cfg.fault_ms = ms;
    }
    cfg
}

fn summary(r: &SimReport) -> String {
    format!(
        "seed {}: ok — {} events, {} ms simulated, {} ops ({} ok, {} indeterminate, {} failed, {} checked), \
         {} leaders (max term {}), {} crashes, {} partitions, {} messages, {} entries committed",
        r.seed,
        r.steps,
        r.sim_ms,
        r.ops_invoked,
        r.ops_ok,
        r.ops_indeterminate,
        r.ops_failed,
        r.ops_checked,
        r.leaders,
        r.max_term,
        r.crashes,
        r.partitions,
        r.messages,
        r.committed
    )
}

fn main() -> Result<()> {
    let args = Args::parse();
    let profile = FaultProfile::parse(&args.profile).with_context(|| {
        format!(
            "unknown profile {:?} (mixed, crashes, partitions, membership, calm)",
            args.profile
        )
    })?;
    if let Some(n) = args.nodes {
        if n == 0 || n > 9 {
            bail!("--nodes must be between 1 and 9");
        }
    }
    if let Some(seed) = args.seed {
        let mut cfg = config(&args, profile, seed);
        cfg.verbose = args.verbose;
        let started = Instant::now();
        return match sim::run(&cfg) {
            Ok(report) => {
                println!("{} [{:.2?}]", summary(&report), started.elapsed());
                Ok(())
            }
            Err(failure) => {
                eprintln!("{failure}");
                std::process::exit(1);
            }
        };
    }
    let count = args.seeds.unwrap_or(1000);
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let started = Instant::now();
    let done = AtomicU64::new(0);
    let stats = Mutex::new((0u64, 0u64)); // (events, ops)
    println!(
        "running seeds {}..{} ({profile:?} faults) on {threads} threads",
        args.start,
        args.start + count
    );
    let failure = sim::run_seeds(
        args.start,
        count,
        threads,
        |seed| config(&args, profile, seed),
        |_seed, result| {
            if let (Ok(r), Ok(mut s)) = (result, stats.lock()) {
                s.0 += r.steps;
                s.1 += r.ops_invoked;
            }
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            if n % args.every.max(1) == 0 {
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "{n}/{count} seeds ok, {:.1} seeds/s, {:.0} s elapsed",
                    n as f64 / secs,
                    secs
                );
            }
        },
    );
    let secs = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    let (events, ops) = stats.lock().map(|s| *s).unwrap_or((0, 0));
    match failure {
        None => {
            println!(
                "all {count} seeds passed in {secs:.1} s ({:.1} seeds/s, {events} events, {ops} client ops)",
                n as f64 / secs
            );
            Ok(())
        }
        Some(f) => {
            eprintln!("{f}");
            eprintln!("FAILED at seed {} after {n} seeds ({secs:.1} s)", f.seed);
            std::process::exit(1);
        }
    }
}
