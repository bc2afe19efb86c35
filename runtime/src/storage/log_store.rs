//! The Raft log store: every hosted group's log entries and hard state in one write-ahead log.
//!
//! One WAL per node, shared by all groups, is what makes group commit pay off with many groups:
//! the persist requests of every group that arrive while one `fdatasync` runs are written by
//! the next one. Each WAL record names its group and carries either a hard state or an append
//! (an optional truncation point plus entries), encoded with MessagePack.
//!
//! Recovery replays the records in order and rebuilds each group's hard state and log,
//! checking that every append is contiguous with what precedes it; a record that does not
//! decode or does not fit is corruption, reported with its LSN.

use super::wal::{Lsn, Wal, WalError, WalOptions};
use conclave_actors::raft::{Entry, GroupId, HardState, LogIndex, PersistRequest};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// One record of the log store, as written in a WAL payload.
#[derive(Debug, Serialize, Deserialize)]
enum StoreRecord {
    /// A group's new hard state.
    HardState { group: GroupId, state: HardState },
    /// Remove a group's entries at or above `truncate_from`, then append `entries`.
    Append {
        group: GroupId,
        truncate_from: Option<LogIndex>,
        entries: Vec<Entry>,
    },
}

/// Errors of the log store.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    /// The underlying write-ahead log failed or is corrupt.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// A record could not be encoded (a bug: every record type is encodable).
    #[error("cannot encode a log record: {0}")]
    Encode(String),
    /// A record is intact (its checksum matched) but its content does not make sense.
    #[error("log record at LSN {lsn} is invalid: {reason}")]
    Invalid {
        /// The record's LSN.
        lsn: Lsn,
        /// What is wrong.
        reason: String,
    },
}

/// What recovery rebuilt for one group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveredGroup {
    /// The last persisted hard state.
    pub hard_state: HardState,
    /// The persisted log, contiguous, in index order.
    pub entries: Vec<Entry>,
}

/// A node's durable Raft logs.
pub struct LogStore {
    wal: Wal,
    scratch: Vec<u8>,
}

impl LogStore {
    /// Opens the store in `dir` and rebuilds every group's durable state.
    pub fn open(
        dir: &Path,
        options: WalOptions,
    ) -> Result<(LogStore, BTreeMap<GroupId, RecoveredGroup>), LogStoreError> {
        let (wal, records, recovery) = Wal::open(dir, options)?;
        if recovery.truncated_bytes > 0 {
            tracing::warn!(
                dir = %dir.display(),
                bytes = recovery.truncated_bytes,
                "truncated a torn tail of the write-ahead log"
            );
        }
        let mut groups: BTreeMap<GroupId, RecoveredGroup> = BTreeMap::new();
        for record in records {
            let lsn = record.lsn;
            let invalid = |reason: String| LogStoreError::Invalid { lsn, reason };
            let decoded: StoreRecord = rmp_serde::from_slice(&record.payload)
                .map_err(|e| invalid(format!("undecodable: {e}")))?;
            match decoded {
                StoreRecord::HardState { group, state } => {
                    groups.entry(group).or_default().hard_state = state;
                }
                StoreRecord::Append {
                    group,
                    truncate_from,
                    entries,
                } => {
                    let log = &mut groups.entry(group).or_default().entries;
                    apply_append(log, truncate_from, entries).map_err(invalid)?;
                }
            }
        }
        Ok((
            LogStore {
                wal,
                scratch: Vec::new(),
            },
            groups,
        ))
    }

    /// Buffers one group's persist request; durable after [`LogStore::sync`].
    pub fn write(&mut self, group: GroupId, req: &PersistRequest) -> Result<(), LogStoreError> {
        if let Some(state) = req.hard_state {
            self.append(&StoreRecord::HardState { group, state })?;
        }
        if req.truncate_from.is_some() || !req.entries.is_empty() {
            // Entries are cloned into the record only for encoding; a borrowed twin of the
            // record type avoids that copy.
            self.append_borrowed(group, req.truncate_from, &req.entries)?;
        }
        Ok(())
    }

    fn append(&mut self, record: &StoreRecord) -> Result<(), LogStoreError> {
        self.scratch.clear();
        rmp_serde::encode::write(&mut self.scratch, record)
            .map_err(|e| LogStoreError::Encode(e.to_string()))?;
        self.wal.append(&self.scratch)?;
        Ok(())
    }

    fn append_borrowed(
        &mut self,
        group: GroupId,
        truncate_from: Option<LogIndex>,
        entries: &[Entry],
    ) -> Result<(), LogStoreError> {
        /// Serialises exactly like `StoreRecord::Append` without owning the entries.
        #[derive(Serialize)]
        enum Borrowed<'a> {
            #[allow(dead_code)]
            HardState,
            Append {
                group: GroupId,
                truncate_from: Option<LogIndex>,
                entries: &'a [Entry],
            },
        }
        self.scratch.clear();
        rmp_serde::encode::write(
            &mut self.scratch,
            &Borrowed::Append {
                group,
                truncate_from,
                entries,
            },
        )
        .map_err(|e| LogStoreError::Encode(e.to_string()))?;
        self.wal.append(&self.scratch)?;
        Ok(())
    }

    /// Makes every buffered write durable with one `fdatasync`.
    pub fn sync(&mut self) -> Result<(), LogStoreError> {
        Ok(self.wal.sync()?)
    }
}

/// Applies one append to a recovered log, refusing gaps.
fn apply_append(
    log: &mut Vec<Entry>,
    truncate_from: Option<LogIndex>,
    entries: Vec<Entry>,
) -> Result<(), String> {
    let first_index = |log: &Vec<Entry>| log.first().map(|e| e.index);
    if let Some(from) = truncate_from {
        if let Some(first) = first_index(log) {
            let keep = from.saturating_sub(first) as usize;
            log.truncate(keep.min(log.len()));
        }
    }
    if let Some(new_first) = entries.first().map(|e| e.index) {
        // An append may also overwrite a suffix implicitly.
        if let Some(first) = first_index(log) {
            if new_first < first {
                return Err(format!(
                    "append at index {new_first} precedes the log's first index {first}"
                ));
            }
            log.truncate((new_first - first) as usize);
        }
        let expected = log.last().map(|e| e.index + 1);
        if let Some(expected) = expected {
            if new_first != expected {
                return Err(format!(
                    "append at index {new_first} leaves a gap after index {}",
                    expected - 1
                ));
            }
        }
        if entries.windows(2).any(|w| w[1].index != w[0].index + 1) {
            return Err("entries of one append are not contiguous".to_owned());
        }
    }
    log.extend(entries);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_actors::raft::EntryPayload;

    fn entry(index: LogIndex, term: u64) -> Entry {
        Entry {
            term,
            index,
            payload: EntryPayload::Command(format!("cmd-{index}-{term}").into_bytes()),
        }
    }

    fn req(
        seq: u64,
        hs: Option<HardState>,
        trunc: Option<LogIndex>,
        e: Vec<Entry>,
    ) -> PersistRequest {
        PersistRequest {
            seq,
            hard_state: hs,
            truncate_from: trunc,
            entries: e,
            snapshot: None,
        }
    }

    #[test]
    fn groups_are_recovered_independently_with_truncations() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut store, groups) = LogStore::open(dir.path(), WalOptions::default()).unwrap();
            assert!(groups.is_empty());
            let hs = HardState {
                term: 2,
                vote: Some(3),
            };
            store
                .write(
                    1,
                    &req(1, Some(hs), None, (1..=5).map(|i| entry(i, 1)).collect()),
                )
                .unwrap();
            store
                .write(
                    7,
                    &req(1, None, None, (1..=2).map(|i| entry(i, 4)).collect()),
                )
                .unwrap();
            // Group 1: a new leader overwrites indexes 4.. with term 2 entries.
            store
                .write(
                    1,
                    &req(
                        2,
                        None,
                        Some(4),
                        vec![entry(4, 2), entry(5, 2), entry(6, 2)],
                    ),
                )
                .unwrap();
            store.sync().unwrap();
            // Implicit overwrite of a suffix by an append.
            store
                .write(7, &req(2, None, None, vec![entry(2, 5)]))
                .unwrap();
            store.sync().unwrap();
            store
                .write(
                    1,
                    &req(
                        3,
                        Some(HardState {
                            term: 9,
                            vote: None,
                        }),
                        None,
                        vec![],
                    ),
                )
                .unwrap();
            // Not synced: lost in the "crash".
        }
        let (_, groups) = LogStore::open(dir.path(), WalOptions::default()).unwrap();
        let g1 = &groups[&1];
        assert_eq!(
            g1.hard_state,
            HardState {
                term: 2,
                vote: Some(3)
            }
        );
        let terms: Vec<_> = g1.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(terms, vec![(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]);
        let g7: Vec<_> = groups[&7]
            .entries
            .iter()
            .map(|e| (e.index, e.term))
            .collect();
        assert_eq!(g7, vec![(1, 4), (2, 5)]);
        assert_eq!(groups[&7].hard_state, HardState::default());
    }

    #[test]
    fn a_gap_is_reported_as_invalid_with_its_lsn() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut store, _) = LogStore::open(dir.path(), WalOptions::default()).unwrap();
            store
                .write(1, &req(1, None, None, vec![entry(1, 1)]))
                .unwrap();
            store
                .write(1, &req(2, None, None, vec![entry(3, 1)]))
                .unwrap();
            store.sync().unwrap();
        }
        match LogStore::open(dir.path(), WalOptions::default()) {
            Err(LogStoreError::Invalid { lsn: 2, reason }) => assert!(reason.contains("gap")),
            other => panic!("expected a gap error, got {:?}", other.map(|(_, g)| g)),
        }
    }

    #[test]
    fn undecodable_payload_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut wal, _, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
            wal.append(b"\xc1 not messagepack").unwrap();
            wal.sync().unwrap();
        }
        assert!(matches!(
            LogStore::open(dir.path(), WalOptions::default()),
            Err(LogStoreError::Invalid { lsn: 1, .. })
        ));
    }
}
