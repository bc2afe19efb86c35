//! The fault schedule: seeded, one fault at a time, each held for a while and then healed.
//!
//! The kinds are drawn in rounds, each round a seeded permutation of every enabled kind, so a
//! short run sees each kind at least once.

use super::cluster::Procs;
use super::proxy::Net;
use conclave_core::ids::NodeId;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// kill -9 a node (the leader half the time), restart it after the hold.
    Kill9,
    /// SIGSTOP a node (the leader half the time) for longer than the election timeout.
    Pause,
    /// Split into a majority and a minority.
    PartitionMajority,
    /// Cut the leader off from every peer, both ways.
    IsolateLeader,
    /// Two halves that reach each other only through one bridge node.
    Bridge,
    /// One-way cuts: the leader cannot send to anyone, or one node cannot reach another.
    OneWay,
    /// Delay every link.
    Latency,
    /// Ask the leader to hand leadership to another node.
    LeaderTransfer,
    /// SIGTERM and restart every node in turn.
    RollingRestart,
}

impl Fault {
    pub const ALL: [Fault; 9] = [
        Fault::Kill9,
        Fault::Pause,
        Fault::PartitionMajority,
        Fault::IsolateLeader,
        Fault::Bridge,
        Fault::OneWay,
        Fault::Latency,
        Fault::LeaderTransfer,
        Fault::RollingRestart,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill9 => "kill -9 + restart",
            Fault::Pause => "SIGSTOP/SIGCONT",
            Fault::PartitionMajority => "partition majority/minority",
            Fault::IsolateLeader => "isolate leader",
            Fault::Bridge => "partition bridge",
            Fault::OneWay => "one-way partition",
            Fault::Latency => "latency",
            Fault::LeaderTransfer => "leader transfer",
            Fault::RollingRestart => "rolling restart",
        }
    }
}

/// What the nemesis does and how often.
#[derive(Clone, Debug)]
pub struct NemesisOptions {
    pub kinds: Vec<Fault>,
    /// Quiet time between faults, ms range.
    pub quiet_ms: (u64, u64),
    /// How long a fault is held, ms range.
    pub hold_ms: (u64, u64),
}

impl Default for NemesisOptions {
    fn default() -> Self {
        NemesisOptions {
            kinds: Fault::ALL.to_vec(),
            quiet_ms: (1000, 3000),
            hold_ms: (2000, 6000),
        }
    }
}

/// What was injected.
#[derive(Default, Debug)]
pub struct FaultLog {
    /// Fault kind → times injected.
    pub counts: BTreeMap<&'static str, u64>,
    /// One line per fault, with its time since the run started.
    pub events: Vec<String>,
}

impl FaultLog {
    fn record(&mut self, start: Instant, fault: Fault, detail: String) {
        *self.counts.entry(fault.name()).or_default() += 1;
        let line = format!(
            "{:8.2}s {}: {detail}",
            start.elapsed().as_secs_f64(),
            fault.name()
        );
        eprintln!("chaos nemesis {line}");
        self.events.push(line);
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

async fn sleep_ms(ms: u64) {
    actix::clock::sleep(Duration::from_millis(ms)).await;
}

/// Sleeps `ms`, reaping crashed processes on the way.
async fn hold(procs: &mut Procs, ms: u64) {
    let until = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < until {
        procs.reap_crashes();
        let left = until.saturating_duration_since(Instant::now());
        actix::clock::sleep(left.min(Duration::from_millis(200))).await;
    }
}

/// The leader if one is known, else a random node.
async fn leader_or_random(procs: &Procs, rng: &mut ChaCha8Rng) -> (usize, bool) {
    match procs.target_leader().await {
        Some(l) => (l, true),
        None => (rng.random_range(0..procs.len()), false),
    }
}

/// The node a kill or a pause hits: the leader half of the time (so failover is exercised
/// often), any node otherwise; with its label for the fault log ("n2 (leader)").
async fn victim(procs: &Procs, rng: &mut ChaCha8Rng) -> (usize, String) {
    let (i, leader) = if rng.random_bool(0.5) {
        leader_or_random(procs, rng).await
    } else {
        (rng.random_range(0..procs.len()), false)
    };
    let label = if leader { " (leader)" } else { "" };
    (i, format!("n{}{label}", i + 1))
}

/// Injects faults until `deadline`, then heals everything it did.
pub async fn run(
    seed: u64,
    options: &NemesisOptions,
    procs: &mut Procs,
    net: &Net,
    start: Instant,
    deadline: Instant,
) -> FaultLog {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x4E4E_4E4E);
    let mut log = FaultLog::default();
    let n = procs.len();
    let mut queue: Vec<Fault> = Vec::new();
    loop {
        let quiet = rng.random_range(options.quiet_ms.0..=options.quiet_ms.1);
        hold(procs, quiet).await;
        if Instant::now() >= deadline || options.kinds.is_empty() {
            break;
        }
        if queue.is_empty() {
            queue = options.kinds.clone();
            queue.shuffle(&mut rng);
        }
        let fault = queue.pop().unwrap_or(Fault::Latency);
        let ms = rng.random_range(options.hold_ms.0..=options.hold_ms.1);
        let ms = ms.min(
            deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as u64
                + 500,
        );
        match fault {
            Fault::Kill9 => {
                let (i, who) = victim(procs, &mut rng).await;
                procs.kill9(i);
                log.record(start, fault, format!("{who} for {ms} ms"));
                hold(procs, ms).await;
                procs.start(i);
            }
            Fault::Pause => {
                let (i, who) = victim(procs, &mut rng).await;
                // Longer than the election timeout (300 ms at most by default).
                let ms = ms.clamp(1000, 4000);
                if procs.pause(i) {
                    log.record(start, fault, format!("{who} for {ms} ms"));
                    hold(procs, ms).await;
                }
                procs.resume(i);
            }
            Fault::PartitionMajority => {
                let mut order: Vec<usize> = (0..n).collect();
                order.shuffle(&mut rng);
                let minority = order.split_off(n / 2 + 1);
                net.partition(&[order.clone(), minority.clone()]);
                log.record(
                    start,
                    fault,
                    format!("{} | {} for {ms} ms", names(&order), names(&minority)),
                );
                hold(procs, ms).await;
                net.heal();
            }
            Fault::IsolateLeader => {
                let (i, leader) = leader_or_random(procs, &mut rng).await;
                net.isolate(i);
                log.record(
                    start,
                    fault,
                    format!(
                        "n{}{} for {ms} ms",
                        i + 1,
                        if leader { "" } else { " (no leader known)" }
                    ),
                );
                hold(procs, ms).await;
                net.heal();
            }
            Fault::Bridge => {
                let mut order: Vec<usize> = (0..n).collect();
                order.shuffle(&mut rng);
                let bridge = order.pop().unwrap_or(0);
                let half = order.split_off(order.len() / 2);
                net.partition(&[order.clone(), half.clone()]);
                log.record(
                    start,
                    fault,
                    format!(
                        "{} | {} bridged by n{} for {ms} ms",
                        names(&order),
                        names(&half),
                        bridge + 1
                    ),
                );
                hold(procs, ms).await;
                net.heal();
            }
            Fault::OneWay => {
                let detail = if rng.random_bool(0.5) {
                    let (l, _) = leader_or_random(procs, &mut rng).await;
                    for j in (0..n).filter(|&j| j != l) {
                        net.cut(l, j);
                    }
                    format!("n{} cannot send to anyone", l + 1)
                } else {
                    let a = rng.random_range(0..n);
                    let b = (a + rng.random_range(1..n)) % n;
                    net.cut(a, b);
                    format!("n{} cannot reach n{}", a + 1, b + 1)
                };
                log.record(start, fault, format!("{detail} for {ms} ms"));
                hold(procs, ms).await;
                net.heal();
            }
            Fault::Latency => {
                let delay = rng.random_range(20..=200);
                net.latency_all(Duration::from_millis(delay));
                log.record(
                    start,
                    fault,
                    format!("{delay} ms on every link for {ms} ms"),
                );
                hold(procs, ms).await;
                net.heal();
            }
            Fault::LeaderTransfer => {
                let Some(l) = procs.leader().await else {
                    log.record(start, fault, "skipped: no leader known".to_owned());
                    continue;
                };
                let to = (l + rng.random_range(1..n)) % n;
                let client = conclave::client::Client::with_timeout(
                    &procs.endpoint(l),
                    Duration::from_secs(3),
                )
                .unwrap();
                let result = client.transfer_leader(NodeId::new(to as u64 + 1)).await;
                log.record(
                    start,
                    fault,
                    format!(
                        "n{} -> n{}: {}",
                        l + 1,
                        to + 1,
                        match result {
                            Ok(()) => "started".to_owned(),
                            Err(e) => format!("refused ({e})"),
                        }
                    ),
                );
            }
            Fault::RollingRestart => {
                let mut clean = 0;
                for i in 0..n {
                    if procs.terminate(i, Duration::from_secs(10)).await {
                        clean += 1;
                    } else {
                        let id = NodeId::new(i as u64 + 1);
                        eprintln!("chaos: node {id} did not exit cleanly on SIGTERM");
                        procs
                            .crashes
                            .push((id, "did not exit cleanly within 10 s of SIGTERM".to_owned()));
                    }
                    procs.start(i);
                    // Let it rejoin before the next one goes down.
                    let up = Instant::now() + Duration::from_secs(20);
                    while Instant::now() < up
                        && procs.status(i, Duration::from_secs(1)).await.is_none()
                    {
                        sleep_ms(100).await;
                    }
                    let _ = procs.wait_leader(Duration::from_secs(10)).await;
                    procs.reap_crashes();
                }
                log.record(
                    start,
                    fault,
                    format!("{n} nodes restarted in turn, {clean} exited cleanly on SIGTERM"),
                );
            }
        }
    }
    net.heal();
    for i in 0..n {
        procs.resume(i);
        procs.start(i);
    }
    log
}

fn names(nodes: &[usize]) -> String {
    let mut v: Vec<String> = nodes.iter().map(|i| format!("n{}", i + 1)).collect();
    v.sort();
    v.join(",")
}
