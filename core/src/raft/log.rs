//! The in-memory Raft log: a contiguous `Vec` of entries after the compaction point, addressed
//! by log index through an offset (no per-entry allocation, no cloning of the whole log).

use super::types::{Entry, LogIndex, Term};

/// What is inconsistent in a restored log ([`super::ConfigError::InvalidRestore`]): the
/// storage handed back something it was never asked to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The entries after the snapshot point are not contiguous.
    #[error("restored entry at position {position} has index {index}, expected {expected}")]
    Gap {
        /// Its position among the entries after the snapshot point.
        position: usize,
        /// Its index.
        index: LogIndex,
        /// The index that position must hold.
        expected: LogIndex,
    },
    /// A term below its predecessor's (Raft §5.3: terms never decrease along a log).
    #[error("restored entry {index} has term {term} below its predecessor's {previous}")]
    TermBackwards {
        /// The entry's index.
        index: LogIndex,
        /// Its term.
        term: Term,
        /// The term before it (the snapshot's for the first entry).
        previous: Term,
    },
}

/// The log of one group on one node, persisted or not. Index `snapshot_index + 1` is at
/// position 0 of `entries`.
#[derive(Debug, Clone)]
pub(crate) struct RaftLog {
    snapshot_index: LogIndex,
    snapshot_term: Term,
    entries: Vec<Entry>,
}

impl RaftLog {
    /// Builds a log from restored entries, checking they are contiguous and follow the
    /// snapshot point (a disk that returns anything else is corrupt, and the core refuses it).
    ///
    /// Entries at or below the snapshot point are dropped first: a log store purges covered
    /// entries lazily (whole segments), so it may hand back some of them.
    pub(crate) fn restore(
        snapshot: (LogIndex, Term),
        mut entries: Vec<Entry>,
    ) -> Result<Self, RestoreError> {
        let (snapshot_index, snapshot_term) = snapshot;
        let covered = entries.partition_point(|e| e.index <= snapshot_index);
        entries.drain(..covered);
        let mut prev_term = snapshot_term;
        for (pos, e) in entries.iter().enumerate() {
            let expected = snapshot_index + 1 + pos as u64;
            if e.index != expected {
                return Err(RestoreError::Gap {
                    position: pos,
                    index: e.index,
                    expected,
                });
            }
            // Raft §5.3: terms never decrease along a log.
            if e.term < prev_term {
                return Err(RestoreError::TermBackwards {
                    index: e.index,
                    term: e.term,
                    previous: prev_term,
                });
            }
            prev_term = e.term;
        }
        Ok(RaftLog {
            snapshot_index,
            snapshot_term,
            entries,
        })
    }

    /// The first index held in memory.
    pub(crate) fn first_index(&self) -> LogIndex {
        self.snapshot_index + 1
    }

    /// Index of the compaction point (0 without a snapshot).
    pub(crate) fn snapshot_index(&self) -> LogIndex {
        self.snapshot_index
    }

    /// The last index (the snapshot point when the in-memory log is empty).
    pub(crate) fn last_index(&self) -> LogIndex {
        self.snapshot_index + self.entries.len() as u64
    }

    /// The term of the last entry.
    pub(crate) fn last_term(&self) -> Term {
        self.entries.last().map_or(self.snapshot_term, |e| e.term)
    }

    /// The term at `index`: known for the snapshot point and every held entry, `None` for
    /// compacted or absent indexes. Index 0 has term 0.
    pub(crate) fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        self.entry(index).map(|e| e.term)
    }

    /// The entry at `index`, if held.
    pub(crate) fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.snapshot_index {
            return None;
        }
        self.entries.get((index - self.snapshot_index - 1) as usize)
    }

    /// Every held entry.
    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Held entries with indexes in `from..=to` (clamped to what is held).
    pub(crate) fn range(&self, from: LogIndex, to: LogIndex) -> &[Entry] {
        let from = from.max(self.first_index());
        let to = to.min(self.last_index());
        if from > to {
            return &[];
        }
        let start = (from - self.snapshot_index - 1) as usize;
        let end = (to - self.snapshot_index) as usize;
        &self.entries[start..end]
    }

    /// Appends one entry; the caller guarantees `entry.index == last_index() + 1`.
    pub(crate) fn push(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.last_index() + 1);
        self.entries.push(entry);
    }

    /// Removes every entry at or above `index` (never the snapshot).
    pub(crate) fn truncate_from(&mut self, index: LogIndex) {
        let keep = index.saturating_sub(self.snapshot_index + 1) as usize;
        self.entries.truncate(keep);
    }

    /// Drops every entry at or below `index` (which must be held, or be the compaction point)
    /// and makes `index` the new compaction point, its term remembered.
    pub(crate) fn compact_to(&mut self, index: LogIndex) {
        if index <= self.snapshot_index {
            return;
        }
        let Some(term) = self.term_at(index) else {
            return;
        };
        let drop = (index - self.snapshot_index) as usize;
        self.entries.drain(..drop.min(self.entries.len()));
        self.snapshot_index = index;
        self.snapshot_term = term;
    }

    /// Discards the whole log: it now starts right after `(index, term)` (a snapshot install
    /// whose last entry the log does not hold, Raft §7).
    pub(crate) fn reset(&mut self, index: LogIndex, term: Term) {
        self.entries.clear();
        self.snapshot_index = index;
        self.snapshot_term = term;
    }

    /// Conflict hint for a rejected AppendEntries whose `prev_log_index` is `index` (held):
    /// the first index of the run of entries sharing `index`'s term (thesis §5.3), so the
    /// leader can skip the whole term in one round trip.
    pub(crate) fn first_index_of_term_run(&self, index: LogIndex) -> LogIndex {
        let Some(term) = self.term_at(index) else {
            return index;
        };
        let mut i = index;
        while i > self.first_index() && self.term_at(i - 1) == Some(term) {
            i -= 1;
        }
        i
    }

    /// The last index holding an entry of `term`, if any (leader side of fast backtracking).
    /// Terms are non-decreasing along the log, so the backwards scan stops at the first
    /// smaller term.
    pub(crate) fn last_index_of_term(&self, term: Term) -> Option<LogIndex> {
        for e in self.entries.iter().rev() {
            if e.term == term {
                return Some(e.index);
            }
            if e.term < term {
                return None;
            }
        }
        (self.snapshot_term == term && self.snapshot_index > 0).then_some(self.snapshot_index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::EntryPayload;

    fn log_of(terms: &[Term]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(i, &term)| Entry {
                term,
                index: i as u64 + 1,
                payload: EntryPayload::Noop,
            })
            .collect();
        RaftLog::restore((0, 0), entries).unwrap()
    }

    #[test]
    fn restore_rejects_gaps_and_decreasing_terms() {
        let e = |index, term| Entry {
            term,
            index,
            payload: EntryPayload::Noop,
        };
        assert!(RaftLog::restore((0, 0), vec![e(1, 1), e(3, 1)]).is_err());
        assert!(RaftLog::restore((0, 0), vec![e(1, 2), e(2, 1)]).is_err());
        assert!(RaftLog::restore((4, 2), vec![e(5, 1)]).is_err());
        assert!(RaftLog::restore((4, 2), vec![e(5, 2), e(6, 3)]).is_ok());
        // Entries the snapshot covers (a lazily purged log store) are dropped, whatever their
        // terms; a gap after the snapshot is still refused.
        let log = RaftLog::restore((4, 2), vec![e(3, 1), e(4, 1), e(5, 2)]).unwrap();
        assert_eq!((log.first_index(), log.last_index()), (5, 5));
        assert_eq!(log.term_at(4), Some(2));
        assert!(RaftLog::restore((4, 2), vec![e(3, 1), e(6, 2)]).is_err());
    }

    #[test]
    fn compaction_and_reset() {
        let mut log = log_of(&[1, 1, 2, 3, 3]);
        log.compact_to(3);
        assert_eq!((log.first_index(), log.last_index()), (4, 5));
        assert_eq!(log.term_at(3), Some(2));
        assert_eq!(log.term_at(2), None);
        assert_eq!(log.range(1, 5).len(), 2);
        // Compacting backwards or past the end changes nothing.
        log.compact_to(2);
        log.compact_to(9);
        assert_eq!((log.snapshot_index(), log.last_index()), (3, 5));
        log.compact_to(5);
        assert!(log.entries().is_empty());
        assert_eq!((log.last_index(), log.last_term()), (5, 3));
        log.reset(9, 4);
        assert_eq!(
            (log.first_index(), log.last_index(), log.last_term()),
            (10, 9, 4)
        );
    }

    #[test]
    fn indexing_range_and_truncation() {
        let mut log = log_of(&[1, 1, 2, 3, 3]);
        assert_eq!(log.last_index(), 5);
        assert_eq!(log.last_term(), 3);
        assert_eq!(log.term_at(0), Some(0));
        assert_eq!(log.term_at(3), Some(2));
        assert_eq!(log.term_at(6), None);
        assert_eq!(log.range(2, 4).len(), 3);
        assert_eq!(log.range(4, 99).len(), 2);
        assert!(log.range(6, 9).is_empty());
        log.truncate_from(4);
        assert_eq!(log.last_index(), 3);
        assert_eq!(log.last_term(), 2);
    }

    #[test]
    fn term_run_hints() {
        let log = log_of(&[1, 1, 2, 2, 2, 4]);
        assert_eq!(log.first_index_of_term_run(5), 3);
        assert_eq!(log.first_index_of_term_run(2), 1);
        assert_eq!(log.last_index_of_term(2), Some(5));
        assert_eq!(log.last_index_of_term(3), None);
        assert_eq!(log.last_index_of_term(4), Some(6));
    }
}
