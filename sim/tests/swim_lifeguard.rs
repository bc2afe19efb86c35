//! Lifeguard's effect (issue 6, item 2): slow members — alive, but handling every inbound frame
//! 3 s late, like the CPU-starved members of Lifeguard §V — make plain SWIM declare healthy
//! members dead over and over; the same seeded runs with Lifeguard on declare (almost) none.
//!
//! Timeouts are scaled down (suspect 3 s, dead 18 s: Lifeguard's β = 6) so a slow member's delay
//! exceeds the plain suspicion timeout, which is what makes SWIM misjudge.

use conclave_sim::swim::{self as sim, SimConfig, SimReport};

fn scenario(lifeguard: bool, seed: u64) -> SimReport {
    let mut cfg = SimConfig::new(100, 0.01, 150, seed);
    cfg.join_at_cycle = None;
    cfg.crash_at_cycle = None;
    cfg.slow_members = 5;
    cfg.slow_delay_ms = 3_000;
    cfg.swim.suspect_timeout_s = 3;
    cfg.swim.dead_timeout_s = 18;
    cfg.swim.lifeguard = lifeguard;
    sim::run(&cfg).expect("valid configuration")
}

#[test]
fn lifeguard_prevents_the_false_dead_verdicts_that_slow_members_cause() {
    for seed in [1, 2] {
        let off = scenario(false, seed);
        let on = scenario(true, seed);
        eprintln!("seed {seed}\n off: {off:?}\n on:  {on:?}");
        assert!(
            off.false_dead >= 1_000,
            "plain SWIM should misjudge healthy members: {off:?}"
        );
        // Lifeguard's paper reports a cut of more than 50x; demand that, at least.
        assert!(
            off.false_dead >= 50 * on.false_dead.max(1),
            "Lifeguard on: {} false dead verdicts vs {} off",
            on.false_dead,
            off.false_dead
        );
    }
}

/// The Lifeguard table of `docs/gossip.md`:
/// `cargo test --release -p conclave-actors --test swim_lifeguard -- --ignored --nocapture`.
#[test]
#[ignore = "prints the Lifeguard on/off table; run in release mode"]
fn lifeguard_table() {
    println!("| seed | Lifeguard | false dead (healthy) | dead verdicts on slow members | false suspect (healthy) | refutations | rumors/member/cycle |");
    println!("|---:|:---:|---:|---:|---:|---:|---:|");
    for seed in 1..=5 {
        for lifeguard in [false, true] {
            let r = scenario(lifeguard, seed);
            println!(
                "| {seed} | {} | {} | {} | {} | {} | {:.1} |",
                if lifeguard { "on" } else { "off" },
                r.false_dead,
                r.false_dead_slow,
                r.false_suspect,
                r.refutations,
                r.rumors as f64 / (100.0 * 150.0)
            );
        }
    }
}
