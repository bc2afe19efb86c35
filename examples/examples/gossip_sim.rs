//! The deterministic SWIM simulation from the command line (see `docs/gossip.md`).
//!
//! ```text
//! cargo run --release -p examples --example gossip_sim -- --members 1000 --loss 0.05
//! cargo run --release -p examples --example gossip_sim -- --members 100 --slow 5 \
//!     --slow-delay-ms 3000 --suspect-timeout-s 3 --dead-timeout-s 18 --no-lifeguard
//! ```
//!
//! Prints the run's report and its row of the markdown table.

use anyhow::{Context, Result};
use clap::Parser;
use conclave_sim::swim::{self as sim, markdown_table, SimConfig};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Simulate a SWIM cluster (seeded, deterministic) and report what it measured")]
struct Args {
    /// Cluster size (the joiner included).
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// Probability that a frame is lost (0.05 = 5%).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Length of the run in protocol periods.
    #[arg(long, default_value_t = 1000)]
    cycles: u64,
    /// Seed of the run.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Turn Lifeguard off (plain SWIM).
    #[arg(long)]
    no_lifeguard: bool,
    /// Members that handle every inbound frame late.
    #[arg(long, default_value_t = 0)]
    slow: usize,
    /// How late a slow member handles inbound frames, ms.
    #[arg(long, default_value_t = 0)]
    slow_delay_ms: u64,
    /// Override `suspect_timeout_s`.
    #[arg(long)]
    suspect_timeout_s: Option<u64>,
    /// Override `dead_timeout_s`.
    #[arg(long)]
    dead_timeout_s: Option<u64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut cfg = SimConfig::new(args.members, args.loss, args.cycles, args.seed);
    cfg.swim.lifeguard = !args.no_lifeguard;
    cfg.slow_members = args.slow;
    cfg.slow_delay_ms = args.slow_delay_ms;
    if let Some(s) = args.suspect_timeout_s {
        cfg.swim.suspect_timeout_s = s;
    }
    if let Some(s) = args.dead_timeout_s {
        cfg.swim.dead_timeout_s = s;
    }
    let started = Instant::now();
    let report = sim::run(&cfg).context("invalid simulation configuration")?;
    println!("{report:#?}");
    println!("simulated in {:.1?}\n", started.elapsed());
    print!("{}", markdown_table(&[(cfg, report)]));
    Ok(())
}
