//! A simulated node's storage: the durable log (with a snapshot base and lazy purging, like a
//! segmented WAL), the durable snapshot of its state machine, and the shadow of the core's
//! in-memory log that the log-matching checker reads.

use conclave_core::raft::{Entry, HardState, LogIndex, SnapshotMeta, Term};
use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

/// A snapshot of the simulated key-value state machine: its meta and the whole map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SimSnapshot {
    /// Index, term and membership of the last entry it covers.
    pub(crate) meta: SnapshotMeta,
    /// The state machine's data at `meta.index`.
    pub(crate) kv: BTreeMap<String, String>,
}

/// The digest of a state machine's data: replicas at the same applied index must agree on it.
pub(crate) fn digest(kv: &BTreeMap<String, String>) -> u64 {
    // `DefaultHasher::new()` has fixed keys: identical across runs and processes.
    let mut h = DefaultHasher::new();
    kv.hash(&mut h);
    h.finish()
}

/// What a node has durably stored: only what was reported persisted (or, for snapshots,
/// written) survives a crash.
#[derive(Default)]
pub(crate) struct Durable {
    pub(crate) hard_state: HardState,
    /// Index of `log[0]`. Entries before it were purged; entries at or below the snapshot's
    /// index may linger (purging is lazy, as with WAL segments).
    pub(crate) first: LogIndex,
    /// Contiguous entries from `first`.
    pub(crate) log: Vec<Entry>,
    /// The snapshot a restart restores from: the newest one taken locally, or the newest
    /// install whose persist completed.
    pub(crate) snapshot: Option<SimSnapshot>,
}

impl Durable {
    pub(crate) fn new() -> Self {
        Durable {
            first: 1,
            ..Durable::default()
        }
    }

    /// The index the next appended entry must have.
    pub(crate) fn next_index(&self) -> LogIndex {
        self.first + self.log.len() as u64
    }

    /// The snapshot's index, 0 without one.
    pub(crate) fn snapshot_index(&self) -> LogIndex {
        self.snapshot.as_ref().map_or(0, |s| s.meta.index)
    }

    /// The durable term at `index`: from the log, or the snapshot's for its own index.
    pub(crate) fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index >= self.first {
            if let Some(e) = self.log.get((index - self.first) as usize) {
                return Some(e.term);
            }
        }
        self.snapshot
            .as_ref()
            .filter(|s| s.meta.index == index)
            .map(|s| s.meta.term)
    }

    /// Whether the entry at `index` is durable here, as log entry of `term` or covered by the
    /// snapshot (which only ever holds committed entries).
    pub(crate) fn holds(&self, index: LogIndex, term: Term) -> bool {
        index <= self.snapshot_index() || self.term_at(index) == Some(term)
    }

    /// Removes every entry at or above `from`.
    pub(crate) fn truncate_from(&mut self, from: LogIndex) {
        let keep = from.saturating_sub(self.first) as usize;
        self.log.truncate(keep);
    }

    /// Purges entries below `before` (never past the log's end: `first` stays contiguous).
    pub(crate) fn purge_before(&mut self, before: LogIndex) {
        if before <= self.first {
            return;
        }
        let n = ((before - self.first) as usize).min(self.log.len());
        self.log.drain(..n);
        self.first += n as u64;
    }

    /// An install became durable: the log continues right after the snapshot. Entries it
    /// covers are dropped; if the log does not reach the snapshot it restarts after it.
    pub(crate) fn install(&mut self, snapshot: SimSnapshot) {
        let index = snapshot.meta.index;
        if self.next_index() <= index + 1 || index + 1 < self.first {
            self.log.clear();
            self.first = index + 1;
        } else {
            self.purge_before(index + 1);
        }
        self.snapshot = Some(snapshot);
    }

    /// The entries a restart hands the core (from wherever the purge stopped).
    pub(crate) fn entries(&self) -> Vec<Entry> {
        self.log.clone()
    }
}

/// The terms of a core's in-memory log, rebuilt from its `Persist` actions: the log-matching
/// checker sees every entry as it is appended, and `check_shadow` compares it with the core.
#[derive(Clone, Debug, Default)]
pub(crate) struct Shadow {
    /// The index before `terms[0]` and its term (a snapshot point, or 0).
    pub(crate) base: (LogIndex, Term),
    pub(crate) terms: Vec<Term>,
}

impl Shadow {
    /// The shadow of what a restart restores: the durable log after the snapshot.
    pub(crate) fn of(durable: &Durable) -> Self {
        let base = durable
            .snapshot
            .as_ref()
            .map_or((0, 0), |s| (s.meta.index, s.meta.term));
        let terms = durable
            .log
            .iter()
            .filter(|e| e.index > base.0)
            .map(|e| e.term)
            .collect();
        Shadow { base, terms }
    }

    pub(crate) fn last(&self) -> LogIndex {
        self.base.0 + self.terms.len() as u64
    }

    pub(crate) fn last_term(&self) -> Option<Term> {
        self.terms.last().copied().or(Some(self.base.1))
    }

    pub(crate) fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.base.0 {
            return Some(self.base.1);
        }
        if index < self.base.0 {
            return None;
        }
        self.terms.get((index - self.base.0 - 1) as usize).copied()
    }

    pub(crate) fn truncate_from(&mut self, from: LogIndex) {
        let keep = from.saturating_sub(self.base.0 + 1) as usize;
        self.terms.truncate(keep);
    }

    pub(crate) fn push(&mut self, term: Term) {
        self.terms.push(term);
    }

    /// Raft §7 as the core does it: keep what follows the snapshot if the log holds its last
    /// entry, else start over after it.
    pub(crate) fn install(&mut self, meta: &SnapshotMeta) {
        if meta.index >= self.base.0 && self.term_at(meta.index) == Some(meta.term) {
            let drop = (meta.index - self.base.0) as usize;
            self.terms.drain(..drop.min(self.terms.len()));
        } else {
            self.terms.clear();
        }
        self.base = (meta.index, meta.term);
    }
}
