//! The key-value model every conclave state machine test uses, and its per-key check.

use super::search::{search, Outcome, PendingHints};
use super::{Model, Operation, SearchBudget, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// A key-value operation's input.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvInput {
    /// Sets `key` to `value`.
    Put {
        /// The key.
        key: String,
        /// The value written.
        value: String,
    },
    /// Reads `key`.
    Get {
        /// The key.
        key: String,
    },
    /// If `key`'s value is `expected` (`None`: absent), sets it to `new` (`None`: deletes it).
    Cas {
        /// The key.
        key: String,
        /// The value the key must have for the swap to happen; `None` means absent.
        expected: Option<String>,
        /// The value written on a match; `None` deletes the key.
        new: Option<String>,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: String,
    },
}

impl KvInput {
    /// The key the operation is about.
    pub fn key(&self) -> &str {
        match self {
            KvInput::Put { key, .. }
            | KvInput::Get { key }
            | KvInput::Cas { key, .. }
            | KvInput::Delete { key } => key,
        }
    }
}

/// A key-value operation's output.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvOutput {
    /// The put was applied.
    Put,
    /// The value read (`None`: absent).
    Get(Option<String>),
    /// Whether the compare-and-set matched (and so wrote).
    Cas {
        /// `true` if the key had the expected value.
        ok: bool,
    },
    /// Whether the key existed before the delete.
    Delete {
        /// `true` if the key was present.
        existed: bool,
    },
}

/// Applies `input` to one key's value: the next value and the output. The single definition
/// of the key-value semantics, shared by both models.
fn apply(value: &Option<String>, input: &KvInput) -> (Option<String>, KvOutput) {
    match input {
        KvInput::Put { value: new, .. } => (Some(new.clone()), KvOutput::Put),
        KvInput::Get { .. } => (value.clone(), KvOutput::Get(value.clone())),
        KvInput::Cas { expected, new, .. } => {
            if value == expected {
                (new.clone(), KvOutput::Cas { ok: true })
            } else {
                (value.clone(), KvOutput::Cas { ok: false })
            }
        }
        KvInput::Delete { .. } => (
            None,
            KvOutput::Delete {
                existed: value.is_some(),
            },
        ),
    }
}

/// One key of the key-value store: a register holding `Option<String>` (`None`: absent). The
/// key named in each input is ignored: [`check_kv`] feeds it one key's sub-history.
#[derive(Clone, Copy, Debug, Default)]
pub struct RegisterModel;

impl Model for RegisterModel {
    type State = Option<String>;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> Self::State {
        None
    }

    fn step(&self, state: &Self::State, input: &KvInput, output: &KvOutput) -> Option<Self::State> {
        let (next, expected) = apply(state, input);
        (expected == *output).then_some(next)
    }

    fn step_unobserved(&self, state: &Self::State, input: &KvInput) -> Vec<Self::State> {
        vec![apply(state, input).0]
    }

    fn is_read_only(&self, input: &KvInput, output: &KvOutput) -> bool {
        read_only(input, output)
    }
}

/// The whole key-value store as one object (state: every present key and its value). Checking
/// with it gives the same verdicts as [`check_kv`] but without the per-key decomposition, so the
/// search is exponentially slower on concurrent histories: it exists to cross-check
/// [`check_kv`] and for histories too small to matter.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvModel;

impl Model for KvModel {
    type State = BTreeMap<String, String>;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> Self::State {
        BTreeMap::new()
    }

    fn step(&self, state: &Self::State, input: &KvInput, output: &KvOutput) -> Option<Self::State> {
        let key = input.key();
        let (next, expected) = apply(&state.get(key).cloned(), input);
        (expected == *output).then(|| with_value(state, key, next))
    }

    fn step_unobserved(&self, state: &Self::State, input: &KvInput) -> Vec<Self::State> {
        let key = input.key();
        let (next, _) = apply(&state.get(key).cloned(), input);
        vec![with_value(state, key, next)]
    }

    fn is_read_only(&self, input: &KvInput, output: &KvOutput) -> bool {
        read_only(input, output)
    }
}

/// Reads, failed compare-and-sets, swaps of a value for itself and deletes of an absent key
/// change nothing in any state where their output is possible.
fn read_only(input: &KvInput, output: &KvOutput) -> bool {
    match (input, output) {
        (KvInput::Get { .. }, _) => true,
        (KvInput::Cas { .. }, KvOutput::Cas { ok: false }) => true,
        (KvInput::Cas { expected, new, .. }, KvOutput::Cas { ok: true }) => expected == new,
        (KvInput::Delete { .. }, KvOutput::Delete { existed: false }) => true,
        _ => false,
    }
}

fn with_value(
    state: &BTreeMap<String, String>,
    key: &str,
    value: Option<String>,
) -> BTreeMap<String, String> {
    let mut next = state.clone();
    match value {
        Some(value) => next.insert(key.to_string(), value),
        None => next.remove(key),
    };
    next
}

/// Checks a key-value history by per-key decomposition (P-compositionality, Herlihy & Wing
/// §3.3: a history is linearizable iff every object's sub-history is): each key's operations
/// are checked on their own with [`RegisterModel`], which keeps the search's concurrency (and so
/// its cost) to that of one key. The budget applies to each key separately. A violation names its key
/// and uses indices into `history`. Reads that never returned are dropped first: with an
/// unconstrained output and no effect, they cannot matter.
pub fn check_kv(history: &[Operation<KvInput, KvOutput>], budget: SearchBudget) -> Verdict {
    check_kv_with(history, budget, false)
}

/// [`check_kv`], exploring by rounds only (see `PendingHints::rounds_only`).
#[cfg(test)]
pub(super) fn check_kv_by_rounds(history: &[Operation<KvInput, KvOutput>]) -> Verdict {
    check_kv_with(history, SearchBudget::unlimited(), true)
}

fn check_kv_with(
    history: &[Operation<KvInput, KvOutput>],
    budget: SearchBudget,
    rounds_only: bool,
) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        let unobserved_read =
            matches!(op.input, KvInput::Get { .. }) && op.ret.is_none() && op.output.is_none();
        if !unobserved_read {
            by_key.entry(op.input.key()).or_default().push(i);
        }
    }
    let mut unknown = false;
    for (key, indices) in by_key {
        let sub: Vec<Operation<KvInput, KvOutput>> =
            indices.iter().map(|&i| history[i].clone()).collect();
        let (canonical, classes) = canonicalize(&sub);
        let mut spent = 0;
        match search(
            &RegisterModel,
            &canonical,
            // `lazy` is sound for this register. Take a linearization whose first step is a
            // pending operation p (state s -> u, u != s) that enables nothing, and look at the
            // step q after it. q valid in u but not in s would be enabled, so q is valid in
            // both, and s != u leaves: a failed CAS (state unchanged in both: swap q ahead of
            // p), a put or a delete that existed in both (it overwrites p: drop p), or a
            // pending put or delete (overwrites p: drop p); a pending CAS changing u but not s
            // would be enabled. Each rewrite keeps every completed operation and the real-time
            // order (p has no return event), and either shortens the linearization or makes it
            // start with a completed operation, so by induction one exists that the lazy
            // search follows.
            PendingHints {
                class: Some(&classes),
                lazy: true,
                rounds_only,
            },
            budget.max_states,
            &mut spent,
        ) {
            Outcome::Linearizable => {}
            // Keep going: another key may still yield a definite violation.
            Outcome::Unknown => unknown = true,
            // Reported with the values as recorded, not as canonicalised.
            Outcome::Stuck(stuck) => {
                return Verdict::NotLinearizable(stuck.into_violation(
                    &sub,
                    Some(key.to_string()),
                    |local| indices[local],
                ))
            }
        }
    }
    if unknown {
        Verdict::Unknown
    } else {
        Verdict::Linearizable
    }
}

/// Rewrites one key's sub-history into an equivalent one that is cheaper to search, and
/// classes its pending operations into interchangeable ones.
///
/// A value written once and mentioned nowhere else (never read, never expected by a
/// compare-and-set, never written again) is indistinguishable, by every operation of the
/// history, from any other such value: each operation behaves the same in a state holding one
/// or the other. All of them are replaced by one token that appears nowhere in the history, so
/// that states differing only in such a value become equal (and memoised as one), and pending
/// writes of such values become identical. Pending operations with identical inputs are then
/// interchangeable: this is what keeps many lost writes of a hot key from making the search
/// exponential.
fn canonicalize(
    sub: &[Operation<KvInput, KvOutput>],
) -> (Vec<Operation<KvInput, KvOutput>>, Vec<usize>) {
    let mut mentions: HashMap<&str, usize> = HashMap::new();
    for op in sub {
        let values: [Option<&String>; 2] = match &op.input {
            KvInput::Put { value, .. } => [Some(value), None],
            KvInput::Cas { expected, new, .. } => [expected.as_ref(), new.as_ref()],
            KvInput::Get { .. } | KvInput::Delete { .. } => [None, None],
        };
        let read = match &op.output {
            Some(KvOutput::Get(Some(value))) => Some(value),
            _ => None,
        };
        for value in values.into_iter().chain([read]).flatten() {
            *mentions.entry(value.as_str()).or_default() += 1;
        }
    }
    let mut token = String::from("<never read>");
    while mentions.contains_key(token.as_str()) {
        token.push('\'');
    }
    let unread = |value: &String| mentions.get(value.as_str()) == Some(&1);

    let canonical: Vec<Operation<KvInput, KvOutput>> = sub
        .iter()
        .map(|op| {
            let mut op = op.clone();
            match &mut op.input {
                KvInput::Put { value, .. } if unread(value) => value.clone_from(&token),
                KvInput::Cas {
                    new: Some(value), ..
                } if unread(value) => value.clone_from(&token),
                _ => {}
            }
            op
        })
        .collect();

    let mut first_of: HashMap<&KvInput, usize> = HashMap::new();
    let classes = canonical
        .iter()
        .enumerate()
        .map(|(i, op)| {
            if op.ret.is_some() {
                i
            } else {
                *first_of.entry(&op.input).or_insert(i)
            }
        })
        .collect();
    (canonical, classes)
}
