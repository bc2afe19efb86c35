//! The deterministic SWIM simulation (issue 6, item 2).
//!
//! `cargo test` runs the small configurations (10 and 100 members). The full table of
//! `docs/gossip.md` (10, 100 and 1,000 members at 0%, 1% and 5% loss over 1,000 cycles) is the
//! ignored test `table`, to be run in release mode:
//! `cargo test --release -p conclave-actors --test swim_sim -- --ignored --nocapture table`.

use conclave_actors::swim::sim::{self, markdown_table, SimConfig, SimReport};

fn run(cfg: &SimConfig) -> SimReport {
    sim::run(cfg).expect("valid simulation configuration")
}

fn list_env<T: std::str::FromStr>(name: &str, default: Vec<T>) -> Vec<T> {
    std::env::var(name)
        .ok()
        .map(|s| s.split(',').filter_map(|v| v.trim().parse().ok()).collect())
        .unwrap_or(default)
}

#[test]
#[ignore = "long: 1,000 members over 1,000 cycles; run in release mode"]
fn table() {
    let sizes: Vec<usize> = list_env("SWIM_SIM_SIZES", vec![10, 100, 1000]);
    let cycles: u64 = std::env::var("SWIM_SIM_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut rows = Vec::new();
    for &n in &sizes {
        for loss in list_env("SWIM_SIM_LOSS", vec![0.0, 0.01, 0.05]) {
            for lifeguard in list_env("SWIM_SIM_LIFEGUARD", vec![true, false]) {
                let mut cfg = SimConfig::new(n, loss, cycles, 42);
                cfg.swim.lifeguard = lifeguard;
                let started = std::time::Instant::now();
                let report = run(&cfg);
                eprintln!(
                    "n={n} loss={loss} lifeguard={lifeguard}: {:?} in {:?}",
                    report,
                    started.elapsed()
                );
                rows.push((cfg, report));
            }
        }
    }
    println!("{}", markdown_table(&rows));
}
