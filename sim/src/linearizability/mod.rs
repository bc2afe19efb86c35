//! A linearizability checker for concurrent histories (Herlihy & Wing, "Linearizability: a
//! correctness condition for concurrent objects", 1990).
//!
//! A history is a set of [`Operation`]s, each with the time it was called and the time it
//! returned (or `None` if it never did). It is *linearizable* if every operation can be given a
//! single instant inside its interval such that executing the operations one at a time in that
//! order, against a sequential specification (a [`Model`]), produces exactly the outputs that
//! were observed.
//!
//! The search is Wing & Gong's algorithm ("Testing and verifying concurrent objects", 1993)
//! with Lowe's memoisation of visited configurations ("Testing for linearizability", 2017), as
//! in porcupine and knossos' `linear` checker: a doubly linked list of call and return events in
//! time order, a depth-first search that linearizes one operation whose call precedes the first
//! pending return, a cache of (set of linearized operations, model state) pairs already
//! explored, and backtracking. Key-value histories are split per key first
//! (P-compositionality: a history is linearizable iff each key's sub-history is), see
//! [`check_kv`].
//!
//! Operations that never returned (a client crashed or timed out) may have taken effect at any
//! point after their call, or never: their return is treated as +infinity and their output as
//! unconstrained, and the search succeeds once every operation that *did* return is
//! linearized.
//!
//! Reductions keep the search small, each sound (tests compare them against a brute-force
//! oracle): a configuration that linearized a superset of another's pending operations, with
//! the same completed ones and state, is dominated and skipped; an operation the model declares
//! read-only ([`Model::is_read_only`]) is linearized as soon as its output fits, without trying
//! alternatives; and [`check_kv`] replaces values that are written once and never read by one
//! token, treats identical lost operations as interchangeable, and takes a lost operation only
//! where it enables another one. The search runs depth first (fastest to *find* a
//! linearization) within a tenth of the budget, then, if that was not enough, in rounds by the
//! number of lost operations taken, which never explores a configuration twice.
//!
//! Cost, measured by `actors/tests/linearizability.rs` (test profile, shared 2-core machine):
//! 5,000 operations over 5 keys from 8-10 clients with 1-3% never returning check in 10-100 ms,
//! accepted or rejected; so do 2,000 operations on one hot key from 8 clients. The hard case is
//! one hot key with many clients *and* many lost operations, rejected: every configuration
//! before the violation must be explored. One key, 5,000 operations, 10 clients, 103 lost:
//! accepted in 0.5 s, rejected in about 10 s (160,000 configurations); 2,000 operations from 16
//! clients with 44 lost: 0.4 s and 5 s (340,000). [`SearchBudget`] turns a search that would
//! take longer into [`Verdict::Unknown`].
//!
//! Times are compared with calls before returns at equal timestamps: an operation that returns
//! at `t` and one that is called at `t` are treated as concurrent. With coarse clocks (simulated
//! milliseconds) this errs on the side of accepting, never of reporting a false violation.

mod history;
mod kv;
mod search;

#[cfg(test)]
mod tests;

pub use history::{History, OpId};
pub use kv::{check_kv, KvInput, KvModel, KvOutput, RegisterModel};
pub use search::check;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::hash::Hash;

/// A sequential specification: what a single copy of the object does, one operation at a time.
pub trait Model {
    /// The object's state. Hashed and compared to memoise visited configurations.
    type State: Clone + Eq + Hash + fmt::Debug;
    /// An operation's input (which operation, with its arguments).
    type Input: Clone + fmt::Debug;
    /// An operation's observed output.
    type Output: Clone + fmt::Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// `Some(next)` if applying `input` in `state` may return `output`, leading to `next`;
    /// `None` if `output` is impossible in `state`.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: &Self::Output,
    ) -> Option<Self::State>;

    /// Every state that applying `input` in `state` may lead to, whatever its output. Used for
    /// operations that never returned, whose output was never observed. Returning an empty
    /// vector means the operation cannot take effect in `state`.
    fn step_unobserved(&self, state: &Self::State, input: &Self::Input) -> Vec<Self::State>;

    /// Whether an operation with this input and observed output leaves the state unchanged in
    /// *every* state where that output is possible (a read, a failed compare-and-set). The
    /// search then linearizes such an operation as soon as its output fits and tries nothing
    /// else at that point: moving it earlier in any linearization changes no other step, so
    /// nothing is lost, and the subsets of concurrent reads are not enumerated. Returning
    /// `true` for an operation that can change the state makes the checker unsound; the
    /// default, `false`, is always safe.
    fn is_read_only(&self, input: &Self::Input, output: &Self::Output) -> bool {
        let _ = (input, output);
        false
    }
}

/// One operation of a concurrent history. Times are any monotonic `u64` (simulated ms, or ns).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation<I, O> {
    /// Who issued it. Informational only: the checker relies on the times, so a client that
    /// issues overlapping operations is allowed.
    pub client: u64,
    /// When it was called.
    pub call: u64,
    /// When it returned. `None`: the operation never returned (crash, timeout): it may have
    /// taken effect at any point after `call`, or never. `output` is then `None` too.
    pub ret: Option<u64>,
    /// What was asked.
    pub input: I,
    /// What was answered; `None` exactly when `ret` is `None`.
    pub output: Option<O>,
}

/// Bounds the work of a check, so that a pathological history yields [`Verdict::Unknown`]
/// instead of running for hours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchBudget {
    /// The maximum number of distinct configurations (set of linearized operations, model state)
    /// the search may visit; for [`check_kv`], per key. Each costs about one model step and one
    /// cache entry of about `operations / 8 + 64` bytes.
    pub max_states: u64,
}

impl SearchBudget {
    /// A budget of `max_states` visited configurations.
    pub fn states(max_states: u64) -> Self {
        SearchBudget { max_states }
    }

    /// No bound: the search runs to completion, however long that takes.
    pub fn unlimited() -> Self {
        SearchBudget {
            max_states: u64::MAX,
        }
    }
}

impl Default for SearchBudget {
    /// Two million configurations. A linearizable history needs about one per operation plus
    /// the backtracking its concurrency causes; the default stops only searches that have gone
    /// exponential, after a few seconds and at most a few hundred megabytes of cache for a
    /// thousand operations per key.
    fn default() -> Self {
        SearchBudget {
            max_states: 2_000_000,
        }
    }
}

/// The outcome of a check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// No linearization exists (or the history is malformed); the violation says where.
    NotLinearizable(Violation),
    /// The search budget was exhausted before a verdict was reached. Never to be read as
    /// "linearizable".
    Unknown,
}

impl Verdict {
    /// Whether this is [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }

    /// The violation, if this is [`Verdict::NotLinearizable`].
    pub fn violation(&self) -> Option<&Violation> {
        match self {
            Verdict::NotLinearizable(v) => Some(v),
            _ => None,
        }
    }
}

/// Why a [`Violation`] was reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ViolationKind {
    /// The history is well formed, but no linearization of it exists.
    NoLinearization,
    /// The history itself is inconsistent (an operation returns before it is called, or has a
    /// return time without an output or the reverse): a bug in whatever recorded it.
    Malformed,
}

/// Where and why a history is not linearizable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Whether the history has no linearization or is malformed.
    pub kind: ViolationKind,
    /// The key whose sub-history is not linearizable ([`check_kv`] only).
    pub key: Option<String>,
    /// The operation (index into the checked history) whose return no linearization could
    /// reach: the history up to that return is the smallest prefix that cannot be linearized.
    /// For a malformed history, the offending operation.
    pub culprit: usize,
    /// The longest order of operations (indices into the checked history) the search found
    /// valid before getting stuck, in linearization order.
    pub longest_prefix: Vec<usize>,
    /// The model state after `longest_prefix`, as `Debug` text. ([`check_kv`] shows every value
    /// written once and never read as the same token, `"<never read>"`.)
    pub state_after_prefix: String,
    /// The operations involved (indices, by call time): the culprit, the operations concurrent
    /// with it, and the last few operations of `longest_prefix`.
    pub ops: Vec<usize>,
    /// One human-readable sentence.
    pub explanation: String,
    /// One line per operation of `ops`: index, client, `[call, return]`, input and output.
    pub details: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "not linearizable (key {key:?}): ")?,
            None => write!(f, "not linearizable: ")?,
        }
        writeln!(f, "{}", self.explanation)?;
        if self.kind == ViolationKind::NoLinearization {
            // The tail of the prefix is what explains the state the culprit contradicts.
            const SHOWN: usize = 12;
            let skip = self.longest_prefix.len().saturating_sub(SHOWN);
            let tail: Vec<String> = self.longest_prefix[skip..]
                .iter()
                .map(|i| format!("#{i}"))
                .collect();
            writeln!(
                f,
                "  longest linearizable prefix: {} operations{} {}, leaving state {}",
                self.longest_prefix.len(),
                if skip > 0 { ", ending" } else { ":" },
                if tail.is_empty() {
                    "(none)".to_string()
                } else {
                    tail.join(" ")
                },
                self.state_after_prefix
            )?;
        }
        writeln!(f, "  operations involved:")?;
        for line in &self.details {
            writeln!(f, "    {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Violation {}
