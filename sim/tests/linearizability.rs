//! The linearizability checker on large generated histories: a simulated linearizable key-value
//! register run (clients with random overlapping intervals, linearization points chosen inside
//! the intervals, some operations never returning) must be accepted, and copies with one read
//! mutated to an impossible value must be rejected with that read as the culprit.
//!
//! `CONCLAVE_LIN_SEEDS=N` checks N seeds instead of 3 (long mode); elapsed times are printed
//! (`cargo test -p conclave-actors --test linearizability -- --nocapture`).

use conclave_sim::linearizability::{
    check_kv, KvInput, KvOutput, Operation, SearchBudget, Verdict, ViolationKind,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::time::Instant;

type Op = Operation<KvInput, KvOutput>;

struct Shape {
    ops: usize,
    keys: usize,
    clients: usize,
    /// Probability that an operation never returns (its client then crashes and is replaced).
    pending: f64,
}

const DEFAULT_SHAPE: Shape = Shape {
    ops: 5000,
    keys: 5,
    clients: 8,
    pending: 0.01,
};

/// A linearizable history from a simulated run: each client issues one operation at a time
/// with a random duration; every operation gets a linearization point inside its interval (or,
/// for one that never returns, after its call or never) and its output comes from executing
/// the operations in that order against a sequential store. Written values are unique.
fn generate(seed: u64, shape: &Shape) -> Vec<Op> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let keys: Vec<String> = (0..shape.keys).map(|k| format!("k{k}")).collect();
    // Per client slot: (client id, time it is free again).
    let mut slots: Vec<(u64, u64)> = (0..shape.clients as u64).map(|c| (c, 0)).collect();
    let mut next_client = shape.clients as u64;
    let mut written: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    // (operation, linearization point; None: never takes effect).
    let mut ops: Vec<(Op, Option<u64>)> = Vec::with_capacity(shape.ops);
    for i in 0..shape.ops {
        // The slot that is free first issues the next operation.
        let slot = (0..slots.len())
            .min_by_key(|&s| (slots[s].1, s))
            .expect("at least one client");
        let (client, free) = slots[slot];
        let call = free + rng.random_range(0..5);
        let duration = rng.random_range(1..40);
        let ret = call + duration;
        let key = &keys[rng.random_range(0..keys.len())];
        let fresh = format!("v{i}");
        let history = written.entry(key).or_default();
        let input = match rng.random_range(0..10) {
            0..4 => KvInput::Get { key: key.clone() },
            4..7 => {
                history.push(fresh.clone());
                KvInput::Put {
                    key: key.clone(),
                    value: fresh,
                }
            }
            7..9 => {
                let expected = if history.is_empty() || rng.random_bool(0.1) {
                    None
                } else {
                    let recent = history.len().saturating_sub(3);
                    Some(history[rng.random_range(recent..history.len())].clone())
                };
                let new = if rng.random_bool(0.1) {
                    None
                } else {
                    history.push(fresh.clone());
                    Some(fresh)
                };
                KvInput::Cas {
                    key: key.clone(),
                    expected,
                    new,
                }
            }
            _ => KvInput::Delete { key: key.clone() },
        };
        let never_returns = rng.random_bool(shape.pending);
        let point = if !never_returns || rng.random_bool(0.5) {
            Some(rng.random_range(call..=ret))
        } else {
            None
        };
        let op = Operation {
            client,
            call,
            ret: (!never_returns).then_some(ret),
            input,
            output: None,
        };
        ops.push((op, point));
        slots[slot] = if never_returns {
            // The client crashed: a new one takes its place a little later.
            next_client += 1;
            (next_client, ret + rng.random_range(0..50))
        } else {
            (client, ret)
        };
    }

    // Execute at the linearization points (ties in index order: both intervals contain the
    // point, so either order is valid).
    let mut order: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].1.is_some()).collect();
    order.sort_by_key(|&i| (ops[i].1, i));
    let mut store: BTreeMap<String, String> = BTreeMap::new();
    for i in order {
        let (op, _) = &mut ops[i];
        let key = op.input.key().to_string();
        let current = store.get(&key).cloned();
        let (next, output) = match &op.input {
            KvInput::Put { value, .. } => (Some(value.clone()), KvOutput::Put),
            KvInput::Get { .. } => (current.clone(), KvOutput::Get(current.clone())),
            KvInput::Cas { expected, new, .. } => {
                let ok = current == *expected;
                (
                    if ok { new.clone() } else { current.clone() },
                    KvOutput::Cas { ok },
                )
            }
            KvInput::Delete { .. } => (
                None,
                KvOutput::Delete {
                    existed: current.is_some(),
                },
            ),
        };
        match next {
            Some(value) => store.insert(key, value),
            None => store.remove(&key),
        };
        if op.ret.is_some() {
            op.output = Some(output);
        }
    }
    ops.into_iter().map(|(op, _)| op).collect()
}

fn timed_check(history: &[Op]) -> (Verdict, f64) {
    let start = Instant::now();
    let verdict = check_kv(history, SearchBudget::default());
    (verdict, start.elapsed().as_secs_f64())
}

fn completed_get(op: &Op) -> bool {
    matches!(op.input, KvInput::Get { .. }) && op.ret.is_some()
}

/// Changes the output of a completed read near the middle to a value never written.
fn mutate_never_written(history: &mut [Op]) -> usize {
    let target = (history.len() / 2..history.len())
        .find(|&i| completed_get(&history[i]))
        .expect("a completed read");
    history[target].output = Some(KvOutput::Get(Some("never-written".into())));
    target
}

/// Changes the output of a completed read near the middle to a stale value: one written by a
/// put that was followed, strictly in real time, by another completed put before the read was
/// called. Values are unique, so nothing can have written it back.
fn mutate_stale(history: &mut [Op]) -> usize {
    let is_put = |op: &Op, key: &str| {
        matches!(&op.input, KvInput::Put { key: k, .. } if k == key) && op.ret.is_some()
    };
    for target in (history.len() / 2..history.len()).filter(|&i| completed_get(&history[i])) {
        let key = history[target].input.key().to_string();
        let call = history[target].call;
        let Some(later) = (0..target)
            .filter(|&j| is_put(&history[j], &key) && history[j].ret < Some(call))
            .max_by_key(|&j| history[j].ret)
        else {
            continue;
        };
        let Some(earlier) = (0..later).rev().find(|&j| {
            is_put(&history[j], &key) && history[j].ret.is_some_and(|ret| ret < history[later].call)
        }) else {
            continue;
        };
        let KvInput::Put { value, .. } = &history[earlier].input else {
            continue;
        };
        history[target].output = Some(KvOutput::Get(Some(value.clone())));
        return target;
    }
    panic!("no stale-read candidate in the history");
}

fn assert_rejected_at(history: &[Op], target: usize, what: &str, seed: u64) {
    let (verdict, secs) = timed_check(history);
    eprintln!("seed {seed}: {what} mutation at op #{target} checked in {secs:.3}s");
    let Verdict::NotLinearizable(violation) = verdict else {
        panic!("seed {seed}: {what} read accepted: {verdict:?}");
    };
    assert_eq!(violation.kind, ViolationKind::NoLinearization);
    assert_eq!(violation.culprit, target, "seed {seed}: {violation}");
    assert_eq!(
        violation.key.as_deref(),
        Some(history[target].input.key()),
        "seed {seed}"
    );
}

fn seeds() -> u64 {
    std::env::var("CONCLAVE_LIN_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

#[test]
fn generated_linearizable_histories_are_accepted_and_mutations_rejected() {
    for seed in 0..seeds() {
        let history = generate(seed, &DEFAULT_SHAPE);
        let pending = history.iter().filter(|op| op.ret.is_none()).count();
        assert!(pending > 0, "the generator must produce pending operations");
        let (verdict, secs) = timed_check(&history);
        eprintln!(
            "seed {seed}: {} ops, {pending} never returned, accepted in {secs:.3}s",
            history.len()
        );
        assert_eq!(verdict, Verdict::Linearizable, "seed {seed}");

        let mut never = history.clone();
        let target = mutate_never_written(&mut never);
        assert_rejected_at(&never, target, "never-written", seed);

        let mut stale = history.clone();
        let target = mutate_stale(&mut stale);
        assert_rejected_at(&stale, target, "stale", seed);
    }
}

#[test]
fn more_concurrency_and_more_lost_operations() {
    // Ten clients and 3% of operations never returning: the search's hardest realistic case.
    let shape = Shape {
        ops: 3000,
        keys: 5,
        clients: 10,
        pending: 0.03,
    };
    let history = generate(1000, &shape);
    let (verdict, secs) = timed_check(&history);
    eprintln!(
        "{} ops, 10 clients, {} never returned: {verdict:?} in {secs:.3}s",
        history.len(),
        history.iter().filter(|op| op.ret.is_none()).count()
    );
    assert_eq!(verdict, Verdict::Linearizable);
    let mut stale = history.clone();
    let target = mutate_stale(&mut stale);
    assert_rejected_at(&stale, target, "stale", 1000);
}

#[test]
fn one_hot_key() {
    // Every operation on one key: the per-key decomposition does not help, the search sees all
    // eight clients' concurrency at once.
    let shape = Shape {
        ops: 2000,
        keys: 1,
        clients: 8,
        pending: 0.005,
    };
    let history = generate(7, &shape);
    let (verdict, secs) = timed_check(&history);
    eprintln!(
        "hot key: {} ops, 8 clients, {} never returned: {verdict:?} in {secs:.3}s",
        history.len(),
        history.iter().filter(|op| op.ret.is_none()).count()
    );
    assert_eq!(verdict, Verdict::Linearizable);
    let mut never = history.clone();
    let target = mutate_never_written(&mut never);
    assert_rejected_at(&never, target, "never-written (hot key)", 7);
    let mut stale = history.clone();
    let target = mutate_stale(&mut stale);
    assert_rejected_at(&stale, target, "stale (hot key)", 7);
}

#[test]
fn hard_hot_key_with_many_lost_operations() {
    // Long mode only (about 30 s): one key, 5,000 operations, 10 clients, 2% lost.
    if std::env::var("CONCLAVE_LIN_HARD").is_err() {
        eprintln!("skipped: set CONCLAVE_LIN_HARD=1 to run");
        return;
    }
    let shape = Shape {
        ops: 5000,
        keys: 1,
        clients: 10,
        pending: 0.02,
    };
    let history = generate(7, &shape);
    let (verdict, secs) = timed_check(&history);
    eprintln!("hard hot key: accepted in {secs:.3}s");
    assert_eq!(verdict, Verdict::Linearizable);
    let mut stale = history.clone();
    let target = mutate_stale(&mut stale);
    assert_rejected_at(&stale, target, "stale (hard hot key)", 7);
}
