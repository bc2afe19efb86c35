//! The key-value model every conclave state machine test uses, and its per-key check.

use super::search::{search, Outcome};
use super::{Model, Operation, SearchBudget, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
        let mut spent = 0;
        match search(&RegisterModel, &sub, budget.max_states, &mut spent) {
            Outcome::Linearizable => {}
            // Keep going: another key may still yield a definite violation.
            Outcome::Unknown => unknown = true,
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
