//! A recorder that builds a history as a test or harness runs.

use super::Operation;
use serde::{Deserialize, Serialize};

/// Identifies an operation recorded by [`History::invoke`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OpId(u64);

/// A recorder for tests and harnesses: [`invoke`](History::invoke) returns an id, then the
/// operation is [`complete`](History::complete)d, [`fail`](History::fail)ed, or left pending.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct History<I, O> {
    /// Every invoked operation, by `OpId`; `None` once failed (ids stay stable).
    slots: Vec<Option<Operation<I, O>>>,
}

impl<I, O> Default for History<I, O> {
    fn default() -> Self {
        History { slots: Vec::new() }
    }
}

impl<I, O> History<I, O> {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `client` called an operation with `input` at time `at`.
    pub fn invoke(&mut self, client: u64, input: I, at: u64) -> OpId {
        let id = OpId(self.slots.len() as u64);
        self.slots.push(Some(Operation {
            client,
            call: at,
            ret: None,
            input,
            output: None,
        }));
        id
    }

    /// Records that `op` returned `output` at time `at`. Returns `false` (and changes nothing)
    /// if `op` is unknown, failed or already completed: a response delivered twice (a
    /// duplicated network message) keeps its first completion.
    pub fn complete(&mut self, op: OpId, output: O, at: u64) -> bool {
        match self.slot_mut(op) {
            Some(operation) if operation.ret.is_none() => {
                operation.ret = Some(at);
                operation.output = Some(output);
                true
            }
            _ => false,
        }
    }

    /// Records that `op` definitely did not take effect (e.g. a write refused before it was
    /// proposed): it is removed from the history. Returns `false` (and changes nothing) if
    /// `op` is unknown, already failed, or already completed — a completed operation did
    /// return an output, so it stays.
    pub fn fail(&mut self, op: OpId) -> bool {
        let Some(slot) = usize::try_from(op.0)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
        else {
            return false;
        };
        match slot {
            Some(operation) if operation.ret.is_none() => {
                *slot = None;
                true
            }
            _ => false,
        }
    }

    /// The number of operations in the history (failed ones excluded, pending ones included).
    pub fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// Whether the history has no operation.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of operations invoked and neither completed nor failed.
    pub fn pending(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter(|op| op.ret.is_none())
            .count()
    }

    /// The operations in invocation order, failed ones removed; pending ones have `ret: None`
    /// and `output: None`. Indices in a [`Violation`](super::Violation) refer to this vector.
    pub fn operations(&self) -> Vec<Operation<I, O>>
    where
        I: Clone,
        O: Clone,
    {
        self.slots.iter().flatten().cloned().collect()
    }

    fn slot_mut(&mut self, op: OpId) -> Option<&mut Operation<I, O>> {
        usize::try_from(op.0)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
            .and_then(Option::as_mut)
    }
}
