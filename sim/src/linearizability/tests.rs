//! Hand-written histories with their exact verdicts, and randomized cross-checks of the search
//! against a brute-force oracle and of the per-key decomposition against the whole-store model.

use super::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type Op = Operation<KvInput, KvOutput>;

fn op(client: u64, call: u64, ret: u64, input: KvInput, output: KvOutput) -> Op {
    Operation {
        client,
        call,
        ret: Some(ret),
        input,
        output: Some(output),
    }
}

fn put(client: u64, call: u64, ret: u64, key: &str, value: &str) -> Op {
    let input = KvInput::Put {
        key: key.into(),
        value: value.into(),
    };
    op(client, call, ret, input, KvOutput::Put)
}

fn get(client: u64, call: u64, ret: u64, key: &str, value: Option<&str>) -> Op {
    let input = KvInput::Get { key: key.into() };
    op(
        client,
        call,
        ret,
        input,
        KvOutput::Get(value.map(String::from)),
    )
}

#[allow(clippy::too_many_arguments)]
fn cas(
    client: u64,
    call: u64,
    ret: u64,
    key: &str,
    expected: Option<&str>,
    new: Option<&str>,
    ok: bool,
) -> Op {
    let input = KvInput::Cas {
        key: key.into(),
        expected: expected.map(String::from),
        new: new.map(String::from),
    };
    op(client, call, ret, input, KvOutput::Cas { ok })
}

fn del(client: u64, call: u64, ret: u64, key: &str, existed: bool) -> Op {
    let input = KvInput::Delete { key: key.into() };
    op(client, call, ret, input, KvOutput::Delete { existed })
}

/// The same operation, but it never returned.
fn never(mut op: Op) -> Op {
    op.ret = None;
    op.output = None;
    op
}

fn kv(history: &[Op]) -> Verdict {
    check_kv(history, SearchBudget::default())
}

/// Asserts the history is not linearizable because of `culprit`, and that the whole-store
/// model agrees.
fn assert_rejected(history: &[Op], key: &str, culprit: usize) -> Violation {
    let verdict = kv(history);
    let Verdict::NotLinearizable(violation) = verdict else {
        panic!("expected a violation, got {verdict:?}");
    };
    assert_eq!(violation.kind, ViolationKind::NoLinearization);
    assert_eq!(violation.key.as_deref(), Some(key));
    assert_eq!(violation.culprit, culprit, "{violation}");
    assert!(violation.ops.contains(&culprit));
    assert!(matches!(
        check(&KvModel, history, SearchBudget::default()),
        Verdict::NotLinearizable(_)
    ));
    violation
}

fn assert_accepted(history: &[Op]) {
    assert_eq!(kv(history), Verdict::Linearizable);
    assert_eq!(
        check(&KvModel, history, SearchBudget::default()),
        Verdict::Linearizable
    );
}

// ---- Linearizable histories ----

#[test]
fn empty_history_is_linearizable() {
    assert_accepted(&[]);
}

#[test]
fn sequential_history_is_linearizable() {
    assert_accepted(&[
        put(1, 0, 1, "x", "a"),
        get(1, 2, 3, "x", Some("a")),
        cas(1, 4, 5, "x", Some("a"), Some("b"), true),
        get(1, 6, 7, "x", Some("b")),
        del(1, 8, 9, "x", true),
        get(1, 10, 11, "x", None),
    ]);
}

#[test]
fn overlapping_writes_may_take_effect_in_either_order() {
    let writes = [put(1, 0, 10, "x", "a"), put(2, 5, 15, "x", "b")];
    for seen in ["a", "b"] {
        let mut history = writes.to_vec();
        history.push(get(3, 20, 30, "x", Some(seen)));
        history.push(get(3, 31, 40, "x", Some(seen)));
        assert_accepted(&history);
    }
}

#[test]
fn read_concurrent_with_write_may_see_either_value() {
    for seen in ["a", "b"] {
        assert_accepted(&[
            put(1, 0, 10, "x", "a"),
            put(1, 20, 40, "x", "b"),
            get(2, 25, 35, "x", Some(seen)),
        ]);
    }
    // Even the initial absence, before a concurrent first write.
    assert_accepted(&[put(1, 0, 10, "x", "a"), get(2, 5, 8, "x", None)]);
}

#[test]
fn read_returning_when_a_write_is_called_counts_as_concurrent() {
    // Equal timestamps are concurrent (calls sort before returns).
    assert_accepted(&[put(1, 0, 10, "x", "a"), get(2, 10, 20, "x", None)]);
}

#[test]
fn never_returned_write_may_be_seen_or_not() {
    for seen in [Some("a"), Some("b")] {
        assert_accepted(&[
            put(1, 0, 10, "x", "a"),
            never(put(2, 20, 0, "x", "b")),
            get(3, 30, 40, "x", seen),
            get(3, 50, 60, "x", seen),
        ]);
    }
    // Seen late: it may take effect long after its call.
    assert_accepted(&[
        put(1, 0, 10, "x", "a"),
        never(put(2, 20, 0, "x", "b")),
        get(3, 30, 40, "x", Some("a")),
        get(3, 500, 600, "x", Some("b")),
    ]);
}

#[test]
fn history_of_only_pending_operations_is_linearizable() {
    assert_accepted(&[
        never(put(1, 0, 0, "x", "a")),
        never(get(2, 5, 0, "x", None)),
        never(cas(3, 6, 0, "y", None, Some("c"), false)),
    ]);
}

#[test]
fn cas_success_and_failure_sequences() {
    assert_accepted(&[
        put(1, 0, 1, "x", "a"),
        cas(1, 2, 3, "x", Some("a"), Some("b"), true),
        cas(2, 4, 5, "x", Some("a"), Some("c"), false),
        get(1, 6, 7, "x", Some("b")),
        cas(2, 8, 9, "x", None, Some("x"), false),
        // A CAS with `new: None` deletes on a match.
        cas(1, 10, 11, "x", Some("b"), None, true),
        get(2, 12, 13, "x", None),
        cas(1, 14, 15, "x", None, Some("z"), true),
        get(2, 16, 17, "x", Some("z")),
    ]);
    // Two concurrent CAS from the same value: exactly one may win.
    assert_accepted(&[
        put(1, 0, 1, "x", "0"),
        cas(1, 10, 20, "x", Some("0"), Some("1"), true),
        cas(2, 12, 22, "x", Some("0"), Some("2"), false),
        get(3, 30, 31, "x", Some("1")),
    ]);
}

#[test]
fn delete_reports_whether_the_key_existed() {
    assert_accepted(&[
        del(1, 0, 1, "x", false),
        put(1, 2, 3, "x", "a"),
        del(2, 4, 5, "x", true),
        get(1, 6, 7, "x", None),
        del(2, 8, 9, "x", false),
    ]);
}

#[test]
fn keys_are_independent() {
    assert_accepted(&[
        put(1, 0, 10, "x", "a"),
        put(2, 0, 10, "y", "b"),
        get(3, 11, 12, "y", Some("b")),
        get(3, 13, 14, "x", Some("a")),
    ]);
}

// ---- Non-linearizable histories ----

#[test]
fn stale_read_after_completed_write_is_rejected() {
    let violation = assert_rejected(
        &[
            put(1, 0, 10, "x", "a"),
            put(1, 20, 30, "x", "b"),
            get(2, 40, 50, "x", Some("a")),
        ],
        "x",
        2,
    );
    assert_eq!(violation.longest_prefix, vec![0, 1]);
    // "b" is written once and never read: check_kv shows such values as one token.
    assert_eq!(violation.state_after_prefix, "Some(\"<never read>\")");
}

#[test]
fn read_of_a_value_never_written_is_rejected() {
    assert_rejected(
        &[
            put(1, 0, 10, "x", "a"),
            get(2, 5, 15, "x", Some("zzz")),
            get(2, 20, 30, "x", Some("a")),
        ],
        "x",
        1,
    );
}

#[test]
fn reads_seeing_values_in_an_impossible_order_are_rejected() {
    // "b" is seen, then the older "a" again although nothing wrote it back.
    assert_rejected(
        &[
            put(1, 0, 10, "x", "a"),
            put(1, 20, 100, "x", "b"),
            get(2, 30, 40, "x", Some("b")),
            get(3, 50, 60, "x", Some("a")),
        ],
        "x",
        3,
    );
}

#[test]
fn lost_cas_update_is_rejected() {
    // Both CAS from "0" claim success: one of them must have seen the other's write.
    assert_rejected(
        &[
            put(1, 0, 10, "x", "0"),
            cas(1, 20, 30, "x", Some("0"), Some("1"), true),
            cas(2, 25, 35, "x", Some("0"), Some("2"), true),
        ],
        "x",
        2,
    );
}

#[test]
fn never_returned_write_seen_then_unseen_is_rejected() {
    assert_rejected(
        &[
            put(1, 0, 10, "x", "a"),
            never(put(2, 20, 0, "x", "b")),
            get(3, 30, 40, "x", Some("b")),
            get(3, 50, 60, "x", Some("a")),
        ],
        "x",
        3,
    );
}

#[test]
fn read_before_a_write_is_called_cannot_see_it() {
    assert_rejected(
        &[
            get(1, 0, 10, "x", Some("a")),
            never(put(2, 20, 0, "x", "a")),
        ],
        "x",
        0,
    );
}

#[test]
fn delete_of_an_absent_key_cannot_report_it_existed() {
    assert_rejected(&[del(1, 0, 1, "x", true)], "x", 0);
}

#[test]
fn violation_names_its_key_and_global_indices() {
    let history = [
        put(1, 0, 10, "y", "1"),
        put(1, 0, 10, "x", "a"),
        get(2, 11, 12, "y", Some("1")),
        put(1, 20, 30, "x", "b"),
        get(2, 40, 50, "x", Some("a")),
    ];
    let violation = assert_rejected(&history, "x", 4);
    assert_eq!(violation.longest_prefix, vec![1, 3]);
    let shown = violation.to_string();
    assert!(shown.contains("key \"x\""), "{shown}");
    assert!(shown.contains("#4 client 2 [40, 50]"), "{shown}");
    assert!(shown.contains("cannot be linearized"), "{shown}");
    assert!(!shown.contains("#2 "), "{shown}");
}

#[test]
fn malformed_histories_are_reported_as_such() {
    let cases = [
        put(1, 10, 5, "x", "a"),
        Operation {
            output: None,
            ..put(1, 0, 5, "x", "a")
        },
        Operation {
            ret: None,
            ..put(1, 0, 5, "x", "a")
        },
    ];
    for bad in cases {
        let history = [put(1, 0, 1, "x", "z"), bad];
        let Verdict::NotLinearizable(violation) = kv(&history) else {
            panic!("malformed history accepted");
        };
        assert_eq!(violation.kind, ViolationKind::Malformed);
        assert_eq!(violation.culprit, 1);
        assert!(violation.to_string().contains("malformed"));
    }
}

#[test]
fn exhausted_budget_is_unknown_never_linearizable() {
    let history = [
        put(1, 0, 10, "x", "a"),
        put(2, 5, 15, "x", "b"),
        get(3, 20, 30, "x", Some("b")),
    ];
    assert_eq!(
        check_kv(&history, SearchBudget::states(0)),
        Verdict::Unknown
    );
    assert_eq!(
        check_kv(&history, SearchBudget::states(1)),
        Verdict::Unknown
    );
    assert_eq!(
        check(&RegisterModel, &history, SearchBudget::states(2)),
        Verdict::Unknown
    );
    assert_eq!(
        check_kv(&history, SearchBudget::states(3)),
        Verdict::Linearizable
    );
    // A violation on another key is still reported when one key's budget runs out first.
    let mut mixed = history.to_vec();
    mixed.push(get(4, 0, 1, "y", Some("ghost")));
    let mut wide: Vec<Op> = (0..12u64)
        .map(|i| put(i, 0, 100, "a", &i.to_string()))
        .collect();
    wide.push(get(20, 200, 201, "a", Some("never")));
    mixed.extend(wide);
    match check_kv(&mixed, SearchBudget::states(50)) {
        Verdict::NotLinearizable(violation) => assert_eq!(violation.key.as_deref(), Some("y")),
        other => panic!("expected the violation on y, got {other:?}"),
    }
    assert!(matches!(
        check_kv(&mixed, SearchBudget::unlimited()),
        Verdict::NotLinearizable(_)
    ));
}

// ---- History recorder ----

#[test]
fn history_records_completions_failures_and_pending_operations() {
    let mut history: History<KvInput, KvOutput> = History::new();
    let w = history.invoke(
        1,
        KvInput::Put {
            key: "x".into(),
            value: "a".into(),
        },
        0,
    );
    let refused = history.invoke(
        2,
        KvInput::Put {
            key: "x".into(),
            value: "never".into(),
        },
        1,
    );
    let r = history.invoke(3, KvInput::Get { key: "x".into() }, 2);
    let lost = history.invoke(
        4,
        KvInput::Put {
            key: "x".into(),
            value: "b".into(),
        },
        3,
    );
    assert!(history.complete(w, KvOutput::Put, 5));
    assert!(!history.complete(w, KvOutput::Put, 6), "second completion");
    assert!(history.fail(refused));
    assert!(!history.fail(refused));
    assert!(!history.fail(w), "a completed operation cannot be failed");
    assert!(history.complete(r, KvOutput::Get(Some("a".into())), 7));
    assert!(!history.complete(refused, KvOutput::Put, 8));
    assert_eq!(history.len(), 3);
    assert_eq!(history.pending(), 1);

    let ops = history.operations();
    assert_eq!(ops.len(), 3);
    assert_eq!((ops[0].client, ops[0].call, ops[0].ret), (1, 0, Some(5)));
    assert_eq!(ops[1].output, Some(KvOutput::Get(Some("a".into()))));
    assert_eq!(
        (ops[2].client, ops[2].ret, &ops[2].output),
        (4, None, &None)
    );
    let _ = lost;
    assert_eq!(kv(&ops), Verdict::Linearizable);
}

// ---- Randomized cross-checks ----

/// `Ok` if linearizable, else the culprit; panics on `Unknown` (the budgets here are unlimited).
fn culprit(verdict: &Verdict) -> Result<(), usize> {
    match verdict {
        Verdict::Linearizable => Ok(()),
        Verdict::NotLinearizable(violation) => Err(violation.culprit),
        Verdict::Unknown => panic!("unlimited search gave up"),
    }
}

/// `default` rounds, or `CONCLAVE_LIN_ROUNDS` of them (long mode).
fn rounds(default: usize) -> usize {
    std::env::var("CONCLAVE_LIN_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A brute-force oracle, independent of the search: tries every order that respects real time,
/// with every subset of the pending operations, without memoisation.
fn brute_force<M: Model>(model: &M, ops: &[Operation<M::Input, M::Output>]) -> bool {
    fn go<M: Model>(
        model: &M,
        ops: &[Operation<M::Input, M::Output>],
        done: &mut Vec<bool>,
        state: &M::State,
    ) -> bool {
        if ops
            .iter()
            .zip(done.iter())
            .all(|(op, d)| *d || op.ret.is_none())
        {
            return true;
        }
        for i in 0..ops.len() {
            if done[i] {
                continue;
            }
            // `i` may go next only if no unplaced operation returned strictly before its call.
            let blocked =
                (0..ops.len()).any(|j| !done[j] && ops[j].ret.is_some_and(|ret| ret < ops[i].call));
            if blocked {
                continue;
            }
            let next: Vec<M::State> = match &ops[i].output {
                Some(output) => model
                    .step(state, &ops[i].input, output)
                    .into_iter()
                    .collect(),
                None => model.step_unobserved(state, &ops[i].input),
            };
            for next in next {
                done[i] = true;
                let ok = go(model, ops, done, &next);
                done[i] = false;
                if ok {
                    return true;
                }
            }
        }
        false
    }
    go(model, ops, &mut vec![false; ops.len()], &model.init())
}

/// A small random history: half the time from a real sequential execution whose
/// linearization points lie inside the intervals (mostly linearizable), otherwise with random
/// outputs (mostly not).
/// With `unique`, every write writes a value of its own (as real workloads do), so that
/// `check_kv`'s canonicalisation of values never read comes into play.
fn random_history(rng: &mut ChaCha8Rng, max_ops: usize, keys: &[&str], unique: bool) -> Vec<Op> {
    let values = ["a", "b", "c"];
    let pending_probability = if unique { 0.3 } else { 0.15 };
    let real = rng.random_bool(0.5);
    let count = rng.random_range(1..=max_ops);
    let mut ops: Vec<(Op, u64)> = Vec::new();
    for i in 0..count {
        let key = keys[rng.random_range(0..keys.len())].to_string();
        let value = || {
            if unique {
                format!("u{i}")
            } else {
                values[i % values.len()].to_string()
            }
        };
        let input = match rng.random_range(0..4) {
            0 => KvInput::Put {
                key,
                value: value(),
            },
            1 => KvInput::Get { key },
            2 => KvInput::Cas {
                key,
                expected: if rng.random_bool(0.3) {
                    None
                } else if unique {
                    Some(format!("u{}", rng.random_range(0..max_ops)))
                } else {
                    Some(values[rng.random_range(0..3)].to_string())
                },
                new: if rng.random_bool(0.2) {
                    None
                } else {
                    Some(value())
                },
            },
            _ => KvInput::Delete { key },
        };
        let call = rng.random_range(0..20);
        let ret = call + rng.random_range(0..10);
        let point = rng.random_range(call..=ret);
        let op = Operation {
            client: i as u64,
            call,
            ret: Some(ret),
            input,
            output: Some(KvOutput::Put),
        };
        ops.push((op, point));
    }
    // Outputs from executing at the linearization points.
    let mut order: Vec<usize> = (0..ops.len()).collect();
    order.sort_by_key(|&i| (ops[i].1, i));
    let mut state = KvModel.init();
    for i in order {
        let input = ops[i].0.input.clone();
        let key = input.key().to_string();
        let (next, output) = {
            let current = state.get(&key).cloned();
            let next = RegisterModel.step_unobserved(&current, &input).remove(0);
            let output = match &input {
                KvInput::Put { .. } => KvOutput::Put,
                KvInput::Get { .. } => KvOutput::Get(current.clone()),
                KvInput::Cas { expected, .. } => KvOutput::Cas {
                    ok: current == *expected,
                },
                KvInput::Delete { .. } => KvOutput::Delete {
                    existed: current.is_some(),
                },
            };
            (next, output)
        };
        let pending = rng.random_bool(pending_probability);
        let takes_effect = !pending || rng.random_bool(0.5);
        if takes_effect {
            match next {
                Some(value) => state.insert(key, value),
                None => state.remove(&key),
            };
        }
        let op = &mut ops[i].0;
        op.output = Some(output);
        if !real {
            // Scramble the observed output.
            op.output = Some(match &op.input {
                KvInput::Put { .. } => KvOutput::Put,
                KvInput::Get { .. } => KvOutput::Get(if rng.random_bool(0.25) {
                    None
                } else if unique {
                    Some(format!("u{}", rng.random_range(0..max_ops)))
                } else {
                    Some(values[rng.random_range(0..3)].to_string())
                }),
                KvInput::Cas { .. } => KvOutput::Cas {
                    ok: rng.random_bool(0.5),
                },
                KvInput::Delete { .. } => KvOutput::Delete {
                    existed: rng.random_bool(0.5),
                },
            });
        }
        if pending {
            op.ret = None;
            op.output = None;
        }
    }
    ops.into_iter().map(|(op, _)| op).collect()
}

#[test]
fn search_agrees_with_brute_force_on_random_small_histories() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (mut accepted, mut rejected) = (0, 0);
    for round in 0..rounds(3000) {
        let history = random_history(&mut rng, 7, &["x"], round % 2 == 0);
        let expected = brute_force(&RegisterModel, &history);
        let verdict = check(&RegisterModel, &history, SearchBudget::unlimited());
        assert_eq!(
            verdict.is_linearizable(),
            expected,
            "round {round}: {history:#?}\n{verdict:?}"
        );
        // Exploring by rounds reaches the same verdict and culprit (the prefix may differ).
        let by_rounds = super::search::check_by_rounds(&RegisterModel, &history);
        assert_eq!(
            culprit(&by_rounds),
            culprit(&verdict),
            "round {round}: {history:#?}"
        );
        if expected {
            accepted += 1;
        } else {
            rejected += 1;
            let violation = verdict.violation().expect("a violation");
            // The culprit returned: pending operations never block the search.
            assert!(history[violation.culprit].ret.is_some());
        }
    }
    // Both outcomes must be well represented, or the comparison proves little.
    assert!(accepted > 600 && rejected > 600, "{accepted} / {rejected}");
}

#[test]
fn per_key_decomposition_agrees_with_the_whole_store_model() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (mut accepted, mut rejected) = (0, 0);
    for round in 0..rounds(2000) {
        let history = random_history(&mut rng, 8, &["x", "y", "z"], round % 2 == 0);
        let whole = check(&KvModel, &history, SearchBudget::unlimited());
        let split = check_kv(&history, SearchBudget::unlimited());
        assert_eq!(
            whole.is_linearizable(),
            split.is_linearizable(),
            "round {round}: {history:#?}"
        );
        assert_ne!(split, Verdict::Unknown);
        if split.is_linearizable() {
            accepted += 1;
        } else {
            rejected += 1;
        }
    }
    assert!(accepted > 400 && rejected > 400, "{accepted} / {rejected}");
}

#[test]
fn check_kv_agrees_with_brute_force_with_unique_values_and_lost_writes() {
    // check_kv rewrites values never read and treats identical lost operations as
    // interchangeable; the oracle does neither.
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let (mut accepted, mut rejected) = (0, 0);
    for round in 0..rounds(3000) {
        let history = random_history(&mut rng, 7, &["x"], true);
        let expected = brute_force(&KvModel, &history);
        let verdict = check_kv(&history, SearchBudget::unlimited());
        assert_eq!(
            verdict.is_linearizable(),
            expected,
            "round {round}: {history:#?}\n{verdict:?}"
        );
        let by_rounds = super::kv::check_kv_by_rounds(&history);
        assert_eq!(
            culprit(&by_rounds),
            culprit(&verdict),
            "round {round}: {history:#?}"
        );
        if expected {
            accepted += 1;
        } else {
            rejected += 1;
        }
    }
    assert!(accepted > 600 && rejected > 600, "{accepted} / {rejected}");
}
