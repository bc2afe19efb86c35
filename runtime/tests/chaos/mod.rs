//! The chaos harness: real `conclave node` processes on loopback behind fault-injecting
//! proxies, a seeded nemesis, concurrent clients, and at the end a linearizability verdict
//! (the consensus core's checker) plus checks that no acknowledged write was lost, no node
//! diverged and no process crashed. See docs/testing.md.

#![allow(dead_code)]

pub mod client;
pub mod cluster;
pub mod nemesis;
pub mod proxy;

use client::{Kind, Outcome, Recorder, Workload};
use cluster::{NodeOptions, Procs};
use conclave::client::Client;
use conclave::config::ReadLevel;
use conclave_ring::{NodeId, ShardId};
use conclave_sim::linearizability::{check_kv, KvInput, KvOutput, SearchBudget, Verdict};
use nemesis::NemesisOptions;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// One run's parameters.
#[derive(Clone, Debug)]
pub struct Options {
    /// Names the run's directory.
    pub name: String,
    pub nodes: usize,
    pub seed: u64,
    /// How long faults are injected (clients run as long).
    pub duration: Duration,
    pub clients: usize,
    pub node: NodeOptions,
    pub nemesis: NemesisOptions,
    /// Only read at this level (`None`: linearizable and lease).
    pub read_level: Option<&'static str>,
    /// Client think time upper bound.
    pub think: Duration,
    /// How long a client waits for an answer before it gives up (indeterminate).
    pub client_timeout: Duration,
    /// Register keys the clients share at a time (they rotate every 20 s).
    pub keys_per_period: usize,
}

impl Options {
    /// The defaults of a run: `CONCLAVE_CHAOS_SECS`, `CONCLAVE_CHAOS_NODES` and
    /// `CONCLAVE_CHAOS_SEED` override the given duration, node count and seed.
    pub fn from_env(name: &str, secs: u64, nodes: usize, seed: u64) -> Options {
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        let nodes = env("CONCLAVE_CHAOS_NODES").map_or(nodes, |n| n as usize);
        Options {
            name: name.to_owned(),
            nodes,
            seed: env("CONCLAVE_CHAOS_SEED").unwrap_or(seed),
            duration: Duration::from_secs(env("CONCLAVE_CHAOS_SECS").unwrap_or(secs)),
            clients: 2 * nodes,
            node: NodeOptions::default(),
            nemesis: NemesisOptions::default(),
            read_level: None,
            think: Duration::from_millis(20),
            client_timeout: Duration::from_secs(5),
            keys_per_period: 5,
        }
    }
}

/// What a run found.
pub struct Report {
    pub verdict: Verdict,
    /// Everything other than the linearizability verdict that failed.
    pub problems: Vec<String>,
    pub summary: String,
    pub dir: PathBuf,
    pub history_path: PathBuf,
    pub ops: u64,
    pub faults: u64,
    /// The violation's culprit is a read.
    pub culprit_is_read: bool,
    /// The violation's culprit read a value written by a write the node had refused as
    /// certainly not applied (a 503 that lied).
    pub culprit_read_refused_write: bool,
}

impl Report {
    /// Linearizable, and no other check failed.
    pub fn passed(&self) -> bool {
        self.verdict.is_linearizable() && self.problems.is_empty()
    }
}

/// Where runs keep their files: `target/tmp/chaos/…`.
pub fn run_dir(name: &str, nodes: usize, seed: u64) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("chaos")
        .join(format!("{name}-n{nodes}-seed{seed}-{stamp}"))
}

/// Runs one chaos test inside the current actix system.
pub async fn run(options: Options) -> Report {
    let wall = Instant::now();
    let dir = run_dir(&options.name, options.nodes, options.seed);
    let (net, mut procs) = cluster::prepare(&dir, options.nodes, &options.node);
    procs.start_all();
    let mut problems = Vec::new();
    if procs.wait_leader(Duration::from_secs(60)).await.is_none() {
        problems.push("no leader elected within 60 s of starting".to_owned());
    }
    if options.node.sharding.is_some() && !wait_shard_leaders(&procs, Duration::from_secs(60)).await
    {
        problems.push("not every shard had a leader within 60 s of starting".to_owned());
    }
    eprintln!(
        "chaos: {} nodes up in {}, seed {}, {} s of faults, {} clients",
        options.nodes,
        dir.display(),
        options.seed,
        options.duration.as_secs(),
        options.clients
    );

    let rec = Rc::new(RefCell::new(Recorder::new()));
    let stop = Rc::new(Cell::new(false));
    let workload = Workload {
        endpoints: (0..options.nodes).map(|i| procs.endpoint(i)).collect(),
        keys_per_period: options.keys_per_period,
        key_period: Duration::from_secs(20),
        timeout: options.client_timeout,
        think: options.think,
        read_level: options.read_level,
    };
    let mut handles = Vec::new();
    for c in 0..options.clients as u64 {
        handles.push(actix::spawn(client::run_client(
            c + 1,
            options.seed,
            workload.clone(),
            rec.clone(),
            stop.clone(),
        )));
    }
    let start = Instant::now();
    let deadline = start + options.duration;
    // Progress for long runs.
    let progress = {
        let rec = rec.clone();
        let stop = stop.clone();
        actix::spawn(async move {
            let mut last = Instant::now();
            while !stop.get() {
                actix::clock::sleep(Duration::from_secs(1)).await;
                if last.elapsed() >= Duration::from_secs(60) {
                    last = Instant::now();
                    eprintln!(
                        "chaos: {:6.0} s, {} operations",
                        start.elapsed().as_secs_f64(),
                        rec.borrow().total()
                    );
                }
            }
        })
    };
    let faults = nemesis::run(
        options.seed,
        &options.nemesis,
        &mut procs,
        &net,
        start,
        deadline,
    )
    .await;
    // Let the clients see the healed cluster for a moment, then stop them.
    actix::clock::sleep(Duration::from_secs(2)).await;
    stop.set(true);
    for h in handles {
        let _ = h.await;
    }
    let _ = progress.await;
    let run_secs = start.elapsed().as_secs_f64();

    // Settle: every node up, healed, one leader, everyone applied the same index.
    net.heal();
    let settled = settle_any(&mut procs).await;
    let mut final_checks = String::new();
    match &settled {
        Ok(Settled::One(index)) => {
            let _ = writeln!(final_checks, "  settled: every node applied index {index}");
        }
        Ok(Settled::Shards(indexes)) => {
            let _ = writeln!(
                final_checks,
                "  settled: every replica of each of {} shards applied its shard's last index \
                 (total {} entries)",
                indexes.len(),
                indexes.values().sum::<u64>()
            );
        }
        Err(e) => problems.push(format!("cluster did not settle: {e}")),
    }

    // Final linearizable reads of every register key join the history: the state the
    // cluster ends in must be explained by it.
    let keys: Vec<String> = rec.borrow().keys.iter().cloned().collect();
    let mut final_values: BTreeMap<String, Option<String>> = BTreeMap::new();
    if settled.is_ok() {
        let api = client::Api::new(Duration::from_secs(5));
        for key in &keys {
            for attempt in 0..20 {
                // Sharded: any node serves any key (it forwards to the shard's leader).
                let target = if procs.sharding.is_some() {
                    Some(attempt % procs.len())
                } else {
                    procs.leader().await
                };
                let Some(l) = target else {
                    actix::clock::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let op = rec
                    .borrow_mut()
                    .invoke(0, KvInput::Get { key: key.clone() });
                let r = api.get(&procs.endpoint(l), key, "linearizable").await;
                let got = if let Ok(KvOutput::Get(v)) = &r {
                    Some(v.clone())
                } else {
                    None
                };
                rec.borrow_mut().finish(op, Kind::GetLinearizable, r);
                if let Some(v) = got {
                    final_values.insert(key.clone(), v);
                    break;
                }
                actix::clock::sleep(Duration::from_millis(100)).await;
            }
            if !final_values.contains_key(key) {
                problems.push(format!("final linearizable read of {key} never succeeded"));
            }
        }
    }

    // Every node, at the same applied index, holds the same data; acknowledged writes are
    // present everywhere; writes refused as certainly-not-applied are nowhere.
    // The comparison is only meaningful at one applied index: if an election on a loaded
    // machine appends a leader's no-op meanwhile, settle again and compare again.
    if settled.is_ok() {
        let unique = {
            let r = rec.borrow();
            UniqueWrites {
                acked: r.unique_acked.clone(),
                unknown: r.unique_unknown.clone(),
                failed: r.unique_failed.clone(),
            }
        };
        for attempt in 1..=5 {
            let (report, mut found, moved) = match settle_any(&mut procs).await {
                Ok(Settled::One(index)) => {
                    compare_nodes(&procs, &unique, &final_values, index).await
                }
                Ok(Settled::Shards(indexes)) => {
                    compare_replicas(&procs, &unique, &final_values, &indexes).await
                }
                Err(e) => {
                    problems.push(format!("cluster did not settle again: {e}"));
                    break;
                }
            };
            if moved && attempt < 5 {
                eprintln!("chaos: applied index moved during comparison {attempt}; again");
                continue;
            }
            final_checks.push_str(&report);
            problems.append(&mut found);
            break;
        }
    }

    procs.reap_crashes();
    for (id, status) in &procs.crashes {
        problems.push(format!("node {id} crashed: {status}"));
    }
    let panics = procs.panics();
    for p in panics.iter().take(10) {
        problems.push(format!("panic in a node log: {p}"));
    }
    let _ = writeln!(
        final_checks,
        "  processes: {} started, {} unexpected exits, {} panics in logs",
        procs.starts,
        procs.crashes.len(),
        panics.len()
    );

    // The verdict.
    let operations = rec.borrow().history.operations();
    let check_started = Instant::now();
    let verdict = check_kv(&operations, SearchBudget::default());
    let check_secs = check_started.elapsed().as_secs_f64();

    // Save the history (kept whatever the outcome) and the summary.
    let history_path = dir.join("history.json");
    let saved = serde_json::json!({
        "seed": options.seed,
        "nodes": options.nodes,
        "operations": operations,
        "faults": faults.events,
        "refused_writes": rec.borrow().refused_writes,
        "verdict": format!("{verdict:?}"),
    });
    if let Err(e) = std::fs::write(&history_path, saved.to_string()) {
        problems.push(format!("cannot save the history: {e}"));
    }

    let r = rec.borrow();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "chaos run `{}`: {} nodes, seed {}, {:.0} s of faults and clients ({} clients), {:.0} s wall",
        options.name,
        options.nodes,
        options.seed,
        run_secs,
        options.clients,
        wall.elapsed().as_secs_f64()
    );
    let by = |o: Outcome| -> u64 {
        r.counts
            .iter()
            .filter(|((_, oo), _)| *oo == o)
            .map(|(_, c)| c)
            .sum()
    };
    let _ = writeln!(
        s,
        "operations: {} (ok {}, failed {}, indeterminate {})",
        r.total(),
        by(Outcome::Ok),
        by(Outcome::Fail),
        by(Outcome::Indeterminate)
    );
    for kind in [
        Kind::Put,
        Kind::Cas,
        Kind::GetLinearizable,
        Kind::GetLease,
        Kind::UniquePut,
    ] {
        let c = |o| r.counts.get(&(kind, o)).copied().unwrap_or(0);
        let _ = writeln!(
            s,
            "  {:<17} ok {:>7}  failed {:>6}  indeterminate {:>5}",
            kind.name(),
            c(Outcome::Ok),
            c(Outcome::Fail),
            c(Outcome::Indeterminate)
        );
    }
    let mut reasons: Vec<(&String, &u64)> = r.reasons.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1));
    let reasons: Vec<String> = reasons
        .iter()
        .take(8)
        .map(|(k, v)| format!("{k} ×{v}"))
        .collect();
    let _ = writeln!(s, "  failure reasons: {}", reasons.join("; "));
    let _ = writeln!(
        s,
        "faults injected: {} ({} bytes dropped by the proxies)",
        faults.total(),
        net.dropped_bytes()
    );
    for (kind, count) in &faults.counts {
        let _ = writeln!(s, "  {kind:<28} {count}");
    }
    let _ = writeln!(s, "checks:");
    s.push_str(&final_checks);
    let _ = writeln!(
        s,
        "  linearizability: {} operations over {} keys checked in {:.2} s: {}",
        operations.len(),
        keys.len() + r.unique_acked.len() + r.unique_unknown.len(),
        check_secs,
        match &verdict {
            Verdict::Linearizable => "linearizable".to_owned(),
            Verdict::Unknown => "UNKNOWN (search budget exhausted)".to_owned(),
            Verdict::NotLinearizable(v) => format!("NOT LINEARIZABLE\n{v}"),
        }
    );
    // If the culprit read a value whose write was refused as certainly not applied, say so.
    let mut culprit_is_read = false;
    let mut culprit_read_refused_write = false;
    if let Some(v) = verdict.violation() {
        culprit_is_read = matches!(
            operations.get(v.culprit).map(|o| &o.input),
            Some(KvInput::Get { .. })
        );
        if let Some(KvOutput::Get(Some(value))) =
            operations.get(v.culprit).and_then(|o| o.output.as_ref())
        {
            for (client, input, reason) in &r.refused_writes {
                let wrote = match input {
                    KvInput::Put { value: w, .. } => Some(w),
                    KvInput::Cas { new: Some(w), .. } => Some(w),
                    _ => None,
                };
                if wrote == Some(value) {
                    culprit_read_refused_write = true;
                    let _ = writeln!(
                        s,
                        "  note: the culprit read {value:?}, written by client {client}'s {input:?}, \
                         which was refused as certainly not applied: {reason}"
                    );
                }
            }
        }
    }
    for p in &problems {
        let _ = writeln!(s, "  PROBLEM: {p}");
    }
    let passed = verdict.is_linearizable() && problems.is_empty();
    let _ = writeln!(s, "verdict: {}", if passed { "PASS" } else { "FAIL" });
    let _ = writeln!(s, "history: {}", history_path.display());
    if !passed {
        let _ = writeln!(s, "node logs: {}/n*.log", dir.display());
    }
    let _ = std::fs::write(dir.join("summary.txt"), &s);
    let ops = r.total();
    drop(r);
    procs.kill_all();
    if passed {
        // Keep the history, summary and logs; the data directories are large and useless.
        let _ = std::fs::remove_dir_all(dir.join("data"));
    }
    Report {
        verdict,
        problems,
        summary: s,
        dir,
        history_path,
        ops,
        faults: faults.total(),
        culprit_is_read,
        culprit_read_refused_write,
    }
}

/// Brings every node back, waits for a leader, commits a barrier write and waits until every
/// node has applied the same index. Returns that index.
pub async fn settle(procs: &mut Procs) -> Result<u64, String> {
    for i in 0..procs.len() {
        procs.resume(i);
        procs.start(i);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = String::from("no leader");
    let mut barrier = 0u64;
    while Instant::now() < deadline {
        procs.reap_crashes();
        let Some(l) = procs.leader().await else {
            actix::clock::sleep(Duration::from_millis(200)).await;
            continue;
        };
        barrier += 1;
        let client = Client::with_timeout(&procs.endpoint(l), Duration::from_secs(5)).unwrap();
        let ack = match client
            .put(b"chaos-barrier", format!("b{barrier}").into_bytes(), None)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                last = format!("barrier write failed: {e}");
                actix::clock::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            let mut applied = Vec::new();
            for i in 0..procs.len() {
                // A node still applying (or not answering) has not settled.
                match procs.status(i, Duration::from_secs(2)).await {
                    Some(s) if s.applied_index == s.commit_index => applied.push(s.applied_index),
                    _ => applied.push(0),
                }
            }
            if applied.iter().all(|&a| a >= ack.index && a == applied[0]) {
                return Ok(applied[0]);
            }
            last = format!("applied indexes {applied:?}, barrier at {}", ack.index);
            actix::clock::sleep(Duration::from_millis(200)).await;
        }
    }
    Err(last)
}

/// Where the cluster settled: one applied index for every node (one group), or per shard
/// the index every replica of the shard applied.
pub enum Settled {
    One(u64),
    Shards(BTreeMap<ShardId, u64>),
}

/// [`settle`], or [`settle_shards`] on a sharded cluster.
pub async fn settle_any(procs: &mut Procs) -> Result<Settled, String> {
    match procs.sharding {
        None => settle(procs).await.map(Settled::One),
        Some(sh) => settle_shards(procs, sh.shards).await.map(Settled::Shards),
    }
}

/// Waits until every node sees a leader for every shard it hosts.
async fn wait_shard_leaders(procs: &Procs, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let mut all = true;
        for i in 0..procs.len() {
            match procs.shards(i, Duration::from_secs(2)).await {
                Some(s) if s.shards.iter().all(|sh| !sh.hosted || sh.leader.is_some()) => {}
                _ => all = false,
            }
        }
        if all {
            return true;
        }
        actix::clock::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A key of each shard (found by the ring's stable hash, as the nodes route it).
fn barrier_keys(shards: u64) -> BTreeMap<ShardId, String> {
    let mut keys = BTreeMap::new();
    let mut n = 0u64;
    while (keys.len() as u64) < shards {
        let key = format!("chaos-barrier-{n}");
        keys.entry(conclave_ring::hash::shard_for_key(key.as_bytes(), shards))
            .or_insert(key);
        n += 1;
    }
    keys
}

/// A sharded cluster's [`settle`]: brings every node back, commits a barrier write in every
/// shard (through any node: it is routed to the shard's leader) and waits until every replica
/// of each shard has applied the same index, at least the barrier's. Returns shard → index.
pub async fn settle_shards(
    procs: &mut Procs,
    shards: u64,
) -> Result<BTreeMap<ShardId, u64>, String> {
    for i in 0..procs.len() {
        procs.resume(i);
        procs.start(i);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let keys = barrier_keys(shards);
    let mut round = 0u64;
    let mut last = String::from("no barrier yet");
    while Instant::now() < deadline {
        round += 1;
        procs.reap_crashes();
        // The barrier of every shard, each through the next node in turn.
        let mut barrier: BTreeMap<ShardId, u64> = BTreeMap::new();
        for (k, (shard, key)) in keys.iter().enumerate() {
            let node = (k + round as usize) % procs.len();
            let client =
                Client::with_timeout(&procs.endpoint(node), Duration::from_secs(5)).unwrap();
            match client
                .put(key.as_bytes(), format!("b{round}").into_bytes(), None)
                .await
            {
                Ok(ack) => {
                    barrier.insert(*shard, ack.index);
                }
                Err(e) => {
                    last = format!(
                        "barrier write of shard {shard} through n{} failed: {e}",
                        node + 1
                    );
                    break;
                }
            }
        }
        if barrier.len() < keys.len() {
            actix::clock::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            match shard_indexes(procs).await {
                Ok(applied) => {
                    let behind: Vec<String> = barrier
                        .iter()
                        .filter(|(s, b)| applied.get(s).is_none_or(|a| a < b))
                        .map(|(s, b)| format!("shard {s} at {:?} < {b}", applied.get(s)))
                        .collect();
                    if behind.is_empty() && applied.len() == keys.len() {
                        return Ok(applied);
                    }
                    last = format!("behind the barrier: {}", behind.join(", "));
                }
                Err(e) => last = e,
            }
            actix::clock::sleep(Duration::from_millis(200)).await;
        }
    }
    Err(last)
}

/// Per shard, the index every one of its replicas has applied (and committed: none still
/// applying), or why there is none yet.
async fn shard_indexes(procs: &Procs) -> Result<BTreeMap<ShardId, u64>, String> {
    let mut seen: BTreeMap<ShardId, Vec<(NodeId, u64, u64)>> = BTreeMap::new();
    let mut replicas: BTreeMap<ShardId, Vec<NodeId>> = BTreeMap::new();
    for i in 0..procs.len() {
        let Some(s) = procs.shards(i, Duration::from_secs(2)).await else {
            return Err(format!("n{} does not answer GET /v1/shards", i + 1));
        };
        for sh in s.shards {
            replicas
                .entry(sh.shard)
                .or_insert_with(|| sh.replicas.clone());
            if sh.hosted {
                seen.entry(sh.shard)
                    .or_default()
                    .push((s.node_id, sh.commit, sh.applied));
            }
        }
    }
    let mut out = BTreeMap::new();
    for (shard, reps) in &replicas {
        let got = seen.get(shard).map(Vec::as_slice).unwrap_or_default();
        if got.len() != reps.len() {
            return Err(format!(
                "shard {shard}: {} of its replicas {reps:?} report it",
                got.len()
            ));
        }
        let (_, _, first) = got[0];
        if got.iter().any(|&(_, c, a)| a != c || a != first) {
            return Err(format!(
                "shard {shard}: replicas at (node, commit, applied) {got:?}"
            ));
        }
        out.insert(*shard, first);
    }
    Ok(out)
}

/// The sharded cluster's [`compare_nodes`]: reads every key on every replica of its shard
/// (stale reads: each replica's own applied state; a node serves a stale read from its own
/// replica) and checks that the replicas agree, that every acknowledged write is present on
/// every replica, and that no write refused as certainly not applied is anywhere; then that
/// no shard applied anything meanwhile (`indexes`).
async fn compare_replicas(
    procs: &Procs,
    rec: &UniqueWrites,
    final_values: &BTreeMap<String, Option<String>>,
    indexes: &BTreeMap<ShardId, u64>,
) -> (String, Vec<String>, bool) {
    let mut problems = Vec::new();
    let mut moved = false;
    let Some(shards) = procs.sharding.map(|s| s.shards) else {
        return (String::new(), vec!["not sharded".to_owned()], false);
    };
    // Each node's id, and each shard's replicas, from the nodes themselves.
    let mut index_of: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut replicas: BTreeMap<ShardId, Vec<NodeId>> = BTreeMap::new();
    for i in 0..procs.len() {
        if let Some(s) = procs.shards(i, Duration::from_secs(2)).await {
            index_of.insert(s.node_id, i);
            for sh in s.shards {
                replicas.entry(sh.shard).or_insert(sh.replicas);
            }
        }
    }
    let mut keys: Vec<String> = final_values.keys().cloned().collect();
    keys.extend(rec.acked.keys().cloned());
    keys.extend(rec.unknown.keys().cloned());
    keys.extend(rec.failed.keys().cloned());
    // Per node, the keys it replicates.
    let mut per_node: Vec<Vec<String>> = vec![Vec::new(); procs.len()];
    let mut key_replicas: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for key in &keys {
        let shard = conclave_ring::hash::shard_for_key(key.as_bytes(), shards);
        let nodes: Vec<usize> = replicas
            .get(&shard)
            .map(|r| r.iter().filter_map(|n| index_of.get(n).copied()).collect())
            .unwrap_or_default();
        if nodes.is_empty() {
            problems.push(format!("{key}: no replica of shard {shard} known"));
        }
        for &i in &nodes {
            per_node[i].push(key.clone());
        }
        key_replicas.insert(key.clone(), nodes);
    }
    let mut tasks = Vec::new();
    for (i, keys) in per_node.into_iter().enumerate() {
        let endpoint = procs.endpoint(i);
        tasks.push(actix::spawn(async move {
            let client = Client::with_timeout(&endpoint, Duration::from_secs(10)).unwrap();
            let mut values: BTreeMap<String, Result<Option<String>, String>> = BTreeMap::new();
            for k in keys {
                let v = client
                    .get(k.as_bytes(), Some(ReadLevel::Stale))
                    .await
                    .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                    .map_err(|e| e.to_string());
                values.insert(k, v);
            }
            values
        }));
    }
    let mut read: Vec<BTreeMap<String, Result<Option<String>, String>>> = Vec::new();
    for t in tasks {
        read.push(t.await.unwrap_or_default());
    }
    match shard_indexes(procs).await {
        Ok(now) if &now == indexes => {}
        Ok(now) => {
            moved = true;
            for (shard, was) in indexes {
                if now.get(shard) != Some(was) {
                    problems.push(format!(
                        "shard {shard}: applied index moved from {was} to {:?} during the comparison",
                        now.get(shard)
                    ));
                }
            }
        }
        Err(e) => {
            moved = true;
            problems.push(format!("after the comparison: {e}"));
        }
    }
    let mut diverged = 0;
    let mut lost = 0;
    let mut resurrected = 0;
    let mut copies = 0;
    for key in &keys {
        let nodes = &key_replicas[key];
        let mut values: Vec<(usize, &Option<String>)> = Vec::new();
        let mut failed = false;
        for &i in nodes {
            match read[i].get(key) {
                Some(Ok(v)) => values.push((i, v)),
                Some(Err(e)) => {
                    problems.push(format!("stale read of {key} on n{} failed: {e}", i + 1));
                    failed = true;
                }
                None => {
                    problems.push(format!("{key} was not read on n{}", i + 1));
                    failed = true;
                }
            }
        }
        if failed || values.is_empty() {
            continue;
        }
        copies += values.len();
        if values.iter().any(|(_, v)| *v != values[0].1) {
            diverged += 1;
            if diverged <= 10 {
                problems.push(format!("replicas diverge on {key}: {values:?}"));
            }
        }
        if let Some(expected) = rec.acked.get(key) {
            for (i, v) in &values {
                if v.as_deref() != Some(expected.as_str()) {
                    lost += 1;
                    if lost <= 10 {
                        problems.push(format!(
                            "acknowledged write {key}={expected} missing on replica n{}: {v:?}",
                            i + 1
                        ));
                    }
                }
            }
        }
        if rec.failed.contains_key(key) && values.iter().any(|(_, v)| v.is_some()) {
            resurrected += 1;
            if resurrected <= 10 {
                problems.push(format!(
                    "write {key} was refused as certainly not applied (503 or refused \
                     connection) yet is present: {values:?}"
                ));
            }
        }
        if let Some(v) = final_values.get(key) {
            if values[0].1 != v {
                problems.push(format!(
                    "{key}: final linearizable read gave {v:?}, the replicas hold {:?}",
                    values[0].1
                ));
            }
        }
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  divergence: {} keys compared on every replica of their shard ({copies} copies, \
         {} shards): {diverged} differ",
        keys.len(),
        indexes.len()
    );
    let _ = writeln!(
        s,
        "  acknowledged unique writes: {} present on every replica ({lost} missing copies); \
         {} refused ones absent ({resurrected} present); {} indeterminate",
        rec.acked.len(),
        rec.failed.len(),
        rec.unknown.len()
    );
    (s, problems, moved)
}

/// The unique-key writes by outcome: key → value.
struct UniqueWrites {
    acked: BTreeMap<String, String>,
    unknown: BTreeMap<String, String>,
    failed: BTreeMap<String, String>,
}

/// Reads every key on every node (stale reads: each node's own applied state).
async fn compare_nodes(
    procs: &Procs,
    rec: &UniqueWrites,
    final_values: &BTreeMap<String, Option<String>>,
    index: u64,
) -> (String, Vec<String>, bool) {
    let mut problems = Vec::new();
    let mut moved = false;
    let mut keys: Vec<String> = final_values.keys().cloned().collect();
    keys.extend(rec.acked.keys().cloned());
    keys.extend(rec.unknown.keys().cloned());
    keys.extend(rec.failed.keys().cloned());
    let keys = Rc::new(keys);
    let mut tasks = Vec::new();
    for i in 0..procs.len() {
        let endpoint = procs.endpoint(i);
        let keys = keys.clone();
        tasks.push(actix::spawn(async move {
            let client = Client::with_timeout(&endpoint, Duration::from_secs(10)).unwrap();
            let mut values: Vec<Result<Option<String>, String>> = Vec::new();
            for k in keys.iter() {
                let v = client
                    .get(k.as_bytes(), Some(ReadLevel::Stale))
                    .await
                    .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                    .map_err(|e| e.to_string());
                values.push(v);
            }
            values
        }));
    }
    let mut per_node = Vec::new();
    for t in tasks {
        per_node.push(t.await.unwrap_or_default());
    }
    // Nothing may have been applied meanwhile: the comparison is at one applied index.
    for i in 0..procs.len() {
        match procs.status(i, Duration::from_secs(2)).await {
            Some(s) if s.applied_index == index => {}
            Some(s) => {
                moved = true;
                problems.push(format!(
                    "n{} applied index moved from {index} to {} during the comparison",
                    i + 1,
                    s.applied_index
                ))
            }
            None => problems.push(format!("n{} stopped answering", i + 1)),
        }
    }
    let mut diverged = 0;
    let mut lost = 0;
    let mut resurrected = 0;
    for (ki, key) in keys.iter().enumerate() {
        let values: Vec<&Result<Option<String>, String>> =
            per_node.iter().map(|vals| &vals[ki]).collect();
        if let Some(Err(e)) = values.iter().find(|v| v.is_err()) {
            problems.push(format!("stale read of {key} failed: {e}"));
            continue;
        }
        let values: Vec<&Option<String>> = values.iter().filter_map(|v| v.as_ref().ok()).collect();
        if values.iter().any(|v| *v != values[0]) {
            diverged += 1;
            if diverged <= 10 {
                problems.push(format!("nodes diverge on {key}: {values:?}"));
            }
        }
        if let Some(expected) = rec.acked.get(key) {
            for (i, v) in values.iter().enumerate() {
                if v.as_deref() != Some(expected.as_str()) {
                    lost += 1;
                    if lost <= 10 {
                        problems.push(format!(
                            "acknowledged write {key}={expected} missing on n{}: {v:?}",
                            i + 1
                        ));
                    }
                }
            }
        }
        if rec.failed.contains_key(key) && values.iter().any(|v| v.is_some()) {
            resurrected += 1;
            if resurrected <= 10 {
                problems.push(format!(
                    "write {key} was refused as certainly not applied (503 or refused \
                     connection) yet is present: {values:?}"
                ));
            }
        }
        if let Some(v) = final_values.get(key) {
            if values[0] != v {
                problems.push(format!(
                    "{key}: final linearizable read gave {v:?}, the nodes hold {:?}",
                    values[0]
                ));
            }
        }
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  divergence: {} keys compared on {} nodes at applied index {index}: {diverged} differ",
        keys.len(),
        procs.len()
    );
    let _ = writeln!(
        s,
        "  acknowledged unique writes: {} present on every node ({lost} missing copies); \
         {} refused ones absent ({resurrected} present); {} indeterminate",
        rec.acked.len(),
        rec.failed.len(),
        rec.unknown.len()
    );
    (s, problems, moved)
}
