//! The Raft log store: every hosted group's log entries and hard state in one write-ahead log.
//!
//! One WAL per node, shared by all groups, is what makes group commit pay off with many groups:
//! the persist requests of every group that arrive while one `fdatasync` runs are written by
//! the next one. Each WAL record names its group and carries a hard state, an append (an
//! optional truncation point plus entries) or a compaction point, encoded with MessagePack.
//!
//! Recovery replays the records in order and rebuilds each group's hard state and log,
//! checking that every append is contiguous with what precedes it; a record that does not
//! decode or does not fit is corruption, reported with its LSN.
//!
//! **Compaction** (Raft §7): once a group's state up to an index is in a durable snapshot,
//! [`LogStore::compact`] records that point; the entries up to it are no longer needed. The
//! store tracks, per group, the oldest record it still needs (its latest hard state, its
//! compaction point, the first append that holds a live entry), and [`LogStore::purge`] deletes
//! every segment that no group needs any more — so the WAL's size follows the live log, not its
//! history.
//!
//! **Installed snapshots**: a persist request that names a snapshot (the Raft core installed
//! one received from the leader) is written as a `Snapshot` record first: that snapshot becomes
//! the group's base ([`RecoveredGroup::snapshot`]), its index a compaction point, and the
//! entries at or below it are dropped; entries after it stay unless the request's
//! `truncate_from` drops them.

use super::wal::{Lsn, Wal, WalError, WalOptions};
use conclave_core::raft::{
    Entry, GroupId, HardState, LogIndex, PersistRequest, SnapshotMeta, Term,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

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
    /// The group's log up to and including `index` (of term `term`) is covered by a durable
    /// snapshot: recovery drops those entries, and the log continues after `index`.
    Compact {
        group: GroupId,
        index: LogIndex,
        term: Term,
    },
    /// The group installed the snapshot `meta` received from its leader: it is the group's
    /// base (a restart restores the state machine from it), and entries at or below its index
    /// are obsolete. (Last variant: records are encoded with variant indexes.)
    Snapshot { group: GroupId, meta: SnapshotMeta },
}

/// Errors of the log store.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    /// The underlying write-ahead log failed or is corrupt.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// A record could not be encoded (a bug: every record type is encodable).
    #[error("cannot encode a log record: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// A record is intact (its checksum matched) but its content does not make sense.
    #[error("log record at LSN {lsn} is invalid: {fault}")]
    Invalid {
        /// The record's LSN.
        lsn: Lsn,
        /// What is wrong.
        #[source]
        fault: RecordFault,
    },
    /// A persist request would leave the group's log with a gap or entries out of order; it
    /// was refused before anything of it was written (the request is lost upstream: a bug).
    #[error("group {group}: refused to write {fault}")]
    NotContiguous {
        /// The group.
        group: GroupId,
        /// What was wrong.
        #[source]
        fault: AppendFault,
    },
    /// One entry is larger than a WAL record can hold, even alone.
    #[error(
        "group {group}: entry {index} of {size} bytes does not fit a WAL record ({limit} bytes)"
    )]
    EntryTooLarge {
        /// The group.
        group: GroupId,
        /// The entry's index.
        index: LogIndex,
        /// Its estimated encoded size.
        size: usize,
        /// The record limit.
        limit: usize,
    },
    /// An earlier write or sync failed; nothing more is written, because a later record after
    /// a failed one could leave a gap in the log. Restart the node once the cause is fixed.
    #[error("the write-ahead log stopped accepting writes after an error: {0}")]
    Failed(std::sync::Arc<LogStoreError>),
}

/// What is wrong with an intact WAL record's content ([`LogStoreError::Invalid`]).
#[derive(Debug, thiserror::Error)]
pub enum RecordFault {
    /// The payload is not a MessagePack log record.
    #[error("undecodable: {0}")]
    Undecodable(#[source] rmp_serde::decode::Error),
    /// An append that does not fit the log rebuilt so far.
    #[error(transparent)]
    Append(#[from] AppendFault),
}

/// How an append does not fit its group's log: refused before writing
/// ([`LogStoreError::NotContiguous`]) or found at recovery ([`RecordFault::Append`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AppendFault {
    /// Two consecutive entries whose indexes do not follow each other.
    #[error("entries out of order ({before} followed by {after})")]
    OutOfOrder {
        /// The first entry's index.
        before: LogIndex,
        /// The index that follows it in the append.
        after: LogIndex,
    },
    /// An append into the part of the log a snapshot covers.
    #[error("an append at index {first}, at or before the compaction point {compacted}")]
    AtOrBeforeCompaction {
        /// The append's first index.
        first: LogIndex,
        /// The compaction point.
        compacted: LogIndex,
    },
    /// An append that starts after the log's next index.
    #[error("an append at index {first} that leaves a gap after index {last}")]
    Gap {
        /// The append's first index.
        first: LogIndex,
        /// The log's last index.
        last: LogIndex,
    },
    /// An append that starts before the log's first index.
    #[error("an append at index {first} before the log's first index {log_first}")]
    BeforeFirst {
        /// The append's first index.
        first: LogIndex,
        /// The log's first index.
        log_first: LogIndex,
    },
}

/// The first pair of consecutive entries whose indexes do not follow each other.
fn out_of_order(entries: &[Entry]) -> Option<AppendFault> {
    entries
        .windows(2)
        .find(|w| w[1].index != w[0].index + 1)
        .map(|w| AppendFault::OutOfOrder {
            before: w[0].index,
            after: w[1].index,
        })
}

/// What recovery rebuilt for one group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveredGroup {
    /// The last persisted hard state.
    pub hard_state: HardState,
    /// The compaction point `(index, term)`: entries up to it are covered by a snapshot and
    /// are not in `entries`. `(0, 0)` for a group that never compacted.
    pub compacted: (LogIndex, Term),
    /// The persisted log after the compaction point, contiguous, in index order.
    pub entries: Vec<Entry>,
    /// The newest snapshot the group installed from a leader (a `PersistRequest` naming a
    /// snapshot), if any: the state machine must be restored from a snapshot at least this
    /// new. Snapshots the node takes itself are not recorded here (their files are the
    /// record; the log only learns their compaction point).
    pub snapshot: Option<SnapshotMeta>,
}

impl RecoveredGroup {
    /// Makes `meta` the group's installed base: a compaction point at its index, entries at
    /// or below it dropped (the recovery and the log-store actor's mirror both use this).
    pub fn install(&mut self, meta: &SnapshotMeta) {
        if self.snapshot.as_ref().is_none_or(|s| s.index < meta.index) {
            self.snapshot = Some(meta.clone());
        }
        if meta.index > self.compacted.0 {
            self.compacted = (meta.index, meta.term);
        }
        let covered = self.entries.partition_point(|e| e.index <= meta.index);
        self.entries.drain(..covered);
    }

    /// The lowest index a snapshot this group restores from must reach: its compaction point
    /// and its installed snapshot's index (0: the log starts at index 1, no snapshot needed).
    pub fn needs_snapshot_at(&self) -> LogIndex {
        self.compacted
            .0
            .max(self.snapshot.as_ref().map_or(0, |s| s.index))
    }
}

/// What the store knows of one group's durable log, to check writes and to tell which WAL
/// records the group still needs.
#[derive(Debug, Default)]
struct GroupLog {
    /// `(first, last)` index of the entries the log will hold once everything written is
    /// synced; `None` when it holds none.
    span: Option<(LogIndex, LogIndex)>,
    /// The compaction point.
    compacted: (LogIndex, Term),
    /// The latest hard state written (re-written at each compaction, so that an old record
    /// does not pin an old segment).
    hard_state: Option<HardState>,
    /// LSN of the record holding `hard_state`.
    hard_state_lsn: Option<Lsn>,
    /// LSN of the latest compaction record.
    compact_lsn: Option<Lsn>,
    /// The installed snapshot (base) and the LSN of the record naming it.
    installed: Option<(SnapshotMeta, Lsn)>,
    /// Append records that still hold live entries: `(lsn, first, last)`, in LSN order.
    records: VecDeque<(Lsn, LogIndex, LogIndex)>,
    /// Set once a request for this group was refused: nothing more is written for it.
    failed: Option<Arc<LogStoreError>>,
}

impl GroupLog {
    /// Entries at or above `from` are gone (an explicit truncation, or an append that
    /// overwrites a suffix).
    fn cut(&mut self, from: LogIndex) {
        self.span = match self.span {
            Some((first, last)) if from > first => Some((first, last.min(from - 1))),
            Some(_) => None,
            None => None,
        };
        // The records are in index order (each append cuts what lies at or above its first
        // index), so only a suffix is affected: walked from the back, an append past the end
        // (every write but an overwrite) looks at one record instead of all the group's live
        // records (a `retain` over them was ~2% of a 64-shard node's CPU).
        while let Some((_, first, last)) = self.records.back_mut() {
            if *last < from {
                break;
            }
            if *first >= from {
                self.records.pop_back();
            } else {
                *last = from - 1;
                break;
            }
        }
    }

    /// An append record at `lsn` holding `first..=last`.
    fn appended(&mut self, lsn: Lsn, first: LogIndex, last: LogIndex) {
        self.cut(first);
        self.span = Some(match self.span {
            Some((f, _)) => (f, last),
            None => (first, last),
        });
        self.records.push_back((lsn, first, last));
    }

    /// The log up to `index` is covered by a snapshot.
    fn compacted_to(&mut self, lsn: Lsn, index: LogIndex, term: Term) {
        self.compacted = (index, term);
        self.compact_lsn = Some(lsn);
        self.span = match self.span {
            Some((first, last)) if last > index => Some((first.max(index + 1), last)),
            _ => None,
        };
        while self
            .records
            .front()
            .is_some_and(|&(_, _, last)| last <= index)
        {
            self.records.pop_front();
        }
    }

    /// The snapshot `meta` was installed (record at `lsn`): a compaction point at its index.
    fn installed_at(&mut self, lsn: Lsn, meta: SnapshotMeta) {
        if meta.index > self.compacted.0 {
            self.compacted_to(lsn, meta.index, meta.term);
        }
        if self
            .installed
            .as_ref()
            .is_none_or(|(m, _)| m.index <= meta.index)
        {
            self.installed = Some((meta, lsn));
        }
    }

    /// The oldest record this group still needs, if any.
    fn oldest_needed(&self) -> Option<Lsn> {
        [
            self.hard_state_lsn,
            self.compact_lsn,
            self.installed.as_ref().map(|i| i.1),
            self.records.front().map(|r| r.0),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// A node's durable Raft logs.
///
/// Writes are all-or-stop: a request that cannot be written whole (an I/O error, a gap) is
/// never followed by a later one of the same log. A WAL error stops every group (they share
/// the file, whose tail is then unknown); a request that does not fit its group's log stops
/// that group only. Either way the error is returned again by every later call
/// ([`LogStoreError::Failed`]) until the node restarts and recovery reads what is durable.
pub struct LogStore {
    wal: Wal,
    scratch: Vec<u8>,
    groups: BTreeMap<GroupId, GroupLog>,
    /// The WAL failed: nothing more is written for any group.
    failed: Option<Arc<LogStoreError>>,
}

/// Room kept in each record for the record envelope (enum tag, group id, truncation point).
const RECORD_ENVELOPE_BYTES: usize = 64;

/// An upper bound of an entry's MessagePack size (array and enum headers, two u64s, the
/// payload with its length prefix), computed without encoding it.
fn entry_size_bound(e: &Entry) -> usize {
    use conclave_core::raft::EntryPayload;
    const FIXED: usize = 40;
    match &e.payload {
        EntryPayload::Noop => FIXED,
        EntryPayload::Command(bytes) => FIXED + bytes.len(),
        // Ids are u64s: at most 9 bytes each, plus the sets' headers and the config id; an
        // address pair (two IPv6 socket addresses as MessagePack arrays) stays below 128 bytes.
        EntryPayload::Membership(m) => {
            FIXED
                + 32
                + 9 * (m.voters.len() + m.learners.len() + m.outgoing.len())
                + 128 * m.addrs.len()
        }
    }
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
        let mut logs: BTreeMap<GroupId, GroupLog> = BTreeMap::new();
        for record in records {
            let lsn = record.lsn;
            let invalid = |fault: RecordFault| LogStoreError::Invalid { lsn, fault };
            let decoded: StoreRecord = rmp_serde::from_slice(&record.payload)
                .map_err(|e| invalid(RecordFault::Undecodable(e)))?;
            match decoded {
                StoreRecord::HardState { group, state } => {
                    groups.entry(group).or_default().hard_state = state;
                    let log = logs.entry(group).or_default();
                    log.hard_state = Some(state);
                    log.hard_state_lsn = Some(lsn);
                }
                StoreRecord::Append {
                    group,
                    truncate_from,
                    entries,
                } => {
                    let recovered = groups.entry(group).or_default();
                    let log = logs.entry(group).or_default();
                    if let Some(from) = truncate_from {
                        log.cut(from);
                    }
                    if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
                        if first.index <= recovered.compacted.0 {
                            return Err(invalid(
                                AppendFault::AtOrBeforeCompaction {
                                    first: first.index,
                                    compacted: recovered.compacted.0,
                                }
                                .into(),
                            ));
                        }
                        log.appended(lsn, first.index, last.index);
                    }
                    apply_append(&mut recovered.entries, truncate_from, entries)
                        .map_err(|f| invalid(f.into()))?;
                }
                StoreRecord::Compact { group, index, term } => {
                    let recovered = groups.entry(group).or_default();
                    recovered.compacted = (index, term);
                    let keep = recovered.entries.partition_point(|e| e.index <= index);
                    recovered.entries.drain(..keep);
                    logs.entry(group)
                        .or_default()
                        .compacted_to(lsn, index, term);
                }
                StoreRecord::Snapshot { group, meta } => {
                    groups.entry(group).or_default().install(&meta);
                    logs.entry(group).or_default().installed_at(lsn, meta);
                }
            }
        }
        Ok((
            LogStore {
                wal,
                scratch: Vec::new(),
                groups: logs,
                failed: None,
            },
            groups,
        ))
    }

    /// The error that stopped writes for `group`, if any.
    fn stopped(&self, group: GroupId) -> Option<LogStoreError> {
        self.failed
            .as_ref()
            .or_else(|| self.groups.get(&group).and_then(|g| g.failed.as_ref()))
            .map(|e| LogStoreError::Failed(e.clone()))
    }

    /// `Ok` while `group`'s log still accepts writes; otherwise the error that stopped it.
    pub fn writable(&self, group: GroupId) -> Result<(), LogStoreError> {
        self.stopped(group).map_or(Ok(()), Err)
    }

    /// Records an error: the WAL's stops every group, a request's stops its group.
    fn stop(&mut self, group: GroupId, e: LogStoreError) -> LogStoreError {
        let e = Arc::new(e);
        match &*e {
            LogStoreError::NotContiguous { .. } | LogStoreError::EntryTooLarge { .. } => {
                self.groups.entry(group).or_default().failed = Some(e.clone());
            }
            _ => self.failed = Some(e.clone()),
        }
        LogStoreError::Failed(e)
    }

    /// Buffers one group's persist request; durable after [`LogStore::sync`].
    ///
    /// The request is checked against the group's log before anything is written (appends
    /// must be contiguous, in order, after the compaction point), and its entries are split
    /// into as many records as the WAL's record limit needs (the first carries the truncation
    /// point). Recovery of a prefix of those records is a valid, shorter log: the request was
    /// not reported durable.
    pub fn write(&mut self, group: GroupId, req: &PersistRequest) -> Result<(), LogStoreError> {
        if let Some(e) = self.stopped(group) {
            return Err(e);
        }
        if let Err(e) = self.check(group, req) {
            return Err(self.stop(group, e));
        }
        if let Err(e) = self.write_records(group, req) {
            return Err(self.stop(group, e));
        }
        Ok(())
    }

    /// Why `req` does not fit the group's log, if it does not.
    fn check(&self, group: GroupId, req: &PersistRequest) -> Result<(), LogStoreError> {
        let refuse = |fault| LogStoreError::NotContiguous { group, fault };
        if let Some(fault) = out_of_order(&req.entries) {
            return Err(refuse(fault));
        }
        let Some(new_first) = req.entries.first().map(|e| e.index) else {
            return Ok(());
        };
        let log = self.groups.get(&group);
        let mut compacted = log.map_or(0, |g| g.compacted.0);
        let mut span = log.and_then(|g| g.span);
        // An installed snapshot is written first: it moves the compaction point and drops the
        // entries it covers.
        if let Some(meta) = &req.snapshot {
            if meta.index > compacted {
                compacted = meta.index;
                span = span.and_then(|(first, last)| {
                    (last > meta.index).then_some((first.max(meta.index + 1), last))
                });
            }
        }
        if new_first <= compacted {
            return Err(refuse(AppendFault::AtOrBeforeCompaction {
                first: new_first,
                compacted,
            }));
        }
        if let (Some(from), Some((first, last))) = (req.truncate_from, span) {
            span = (from > first).then_some((first, last.min(from - 1)));
        }
        match span {
            // An empty log (new group, or after a snapshot) may start anywhere after the
            // compaction point.
            None => Ok(()),
            Some((_, last)) if new_first > last + 1 => Err(refuse(AppendFault::Gap {
                first: new_first,
                last,
            })),
            Some((first, _)) if new_first < first => Err(refuse(AppendFault::BeforeFirst {
                first: new_first,
                log_first: first,
            })),
            // An append overwrites the suffix it starts in.
            Some(_) => Ok(()),
        }
    }

    fn write_records(&mut self, group: GroupId, req: &PersistRequest) -> Result<(), LogStoreError> {
        if let Some(meta) = &req.snapshot {
            self.write_installed(group, meta.clone())?;
        }
        if let Some(state) = req.hard_state {
            self.write_hard_state(group, state)?;
        }
        if let Some(from) = req.truncate_from {
            self.groups.entry(group).or_default().cut(from);
        }
        if req.truncate_from.is_none() && req.entries.is_empty() {
            return Ok(());
        }
        let limit = (self.wal.max_record_bytes() as usize).saturating_sub(RECORD_ENVELOPE_BYTES);
        let mut truncate_from = req.truncate_from;
        let mut rest = req.entries.as_slice();
        loop {
            // The longest prefix whose size bound fits one record.
            let mut size = 0;
            let mut take = 0;
            for e in rest {
                let s = entry_size_bound(e);
                if size + s > limit {
                    break;
                }
                size += s;
                take += 1;
            }
            if take == 0 && !rest.is_empty() {
                return Err(LogStoreError::EntryTooLarge {
                    group,
                    index: rest[0].index,
                    size: entry_size_bound(&rest[0]),
                    limit,
                });
            }
            let (chunk, tail) = rest.split_at(take);
            let lsn = self.append_borrowed(group, truncate_from.take(), chunk)?;
            if let (Some(first), Some(last)) = (chunk.first(), chunk.last()) {
                self.groups
                    .entry(group)
                    .or_default()
                    .appended(lsn, first.index, last.index);
            }
            rest = tail;
            if rest.is_empty() {
                return Ok(());
            }
        }
    }

    fn write_hard_state(&mut self, group: GroupId, state: HardState) -> Result<(), LogStoreError> {
        let lsn = self.append(&StoreRecord::HardState { group, state })?;
        let log = self.groups.entry(group).or_default();
        log.hard_state = Some(state);
        log.hard_state_lsn = Some(lsn);
        Ok(())
    }

    fn write_installed(&mut self, group: GroupId, meta: SnapshotMeta) -> Result<(), LogStoreError> {
        let lsn = self.append(&StoreRecord::Snapshot {
            group,
            meta: meta.clone(),
        })?;
        self.groups
            .entry(group)
            .or_default()
            .installed_at(lsn, meta);
        Ok(())
    }

    /// Records that `group`'s state up to `index` (of term `term`) is in a durable snapshot,
    /// so the entries up to it are no longer needed; durable after [`LogStore::sync`]. The
    /// caller must have made the snapshot durable first. A point at or below the current one
    /// changes nothing. The group's hard state is written again with it, so that the oldest
    /// record the group needs is recent and [`LogStore::purge`] can drop older segments.
    pub fn compact(
        &mut self,
        group: GroupId,
        index: LogIndex,
        term: Term,
    ) -> Result<(), LogStoreError> {
        if let Some(e) = self.stopped(group) {
            return Err(e);
        }
        let log = self.groups.entry(group).or_default();
        if index <= log.compacted.0 {
            return Ok(());
        }
        let hard_state = log.hard_state;
        let result = (|| {
            if let Some(state) = hard_state {
                self.write_hard_state(group, state)?;
            }
            self.append(&StoreRecord::Compact { group, index, term })
        })();
        match result {
            Ok(lsn) => {
                self.groups
                    .entry(group)
                    .or_default()
                    .compacted_to(lsn, index, term);
                Ok(())
            }
            Err(e) => Err(self.stop(group, e)),
        }
    }

    /// Deletes every WAL segment no group needs any more (see the module docs). Call it after
    /// [`LogStore::sync`]: only records that are durable make older ones obsolete. Returns how
    /// many segments were deleted.
    ///
    /// A group whose only records in the oldest segment are its small bookkeeping records (a
    /// hard state or compaction point written long ago by an idle group) would pin that
    /// segment and every later one; those records are written again instead, and the next
    /// purge after the next sync can delete the segment. Live entries of a group that never
    /// compacts still pin: they are live data.
    pub fn purge(&mut self) -> Result<usize, LogStoreError> {
        if let Some(e) = &self.failed {
            return Err(LogStoreError::Failed(e.clone()));
        }
        if let Some(boundary) = self.wal.second_segment_lsn() {
            let stale: Vec<GroupId> = self
                .groups
                .iter()
                .filter(|(_, g)| {
                    g.failed.is_none()
                        && g.oldest_needed().is_some_and(|lsn| lsn < boundary)
                        && g.records.front().is_none_or(|r| r.0 >= boundary)
                })
                .map(|(id, _)| *id)
                .collect();
            for group in stale {
                let g = &self.groups[&group];
                let (hard_state, compacted, compact_lsn) =
                    (g.hard_state, g.compacted, g.compact_lsn);
                let installed = g.installed.as_ref().map(|(m, _)| m.clone());
                let result = (|| {
                    if let Some(state) = hard_state {
                        self.write_hard_state(group, state)?;
                    }
                    if let Some(meta) = installed {
                        self.write_installed(group, meta)?;
                    }
                    if compact_lsn.is_some() {
                        let (index, term) = compacted;
                        let lsn = self.append(&StoreRecord::Compact { group, index, term })?;
                        self.groups.entry(group).or_default().compact_lsn = Some(lsn);
                    }
                    Ok(())
                })();
                if let Err(e) = result {
                    return Err(self.stop(group, e));
                }
            }
        }
        let needed = self
            .groups
            .values()
            .filter_map(GroupLog::oldest_needed)
            .min()
            .unwrap_or(self.wal.next_lsn());
        match self.wal.purge_before(needed.min(self.wal.synced_lsn())) {
            Ok(n) => Ok(n),
            Err(e) => {
                let e = Arc::new(LogStoreError::Wal(e));
                self.failed = Some(e.clone());
                Err(LogStoreError::Failed(e))
            }
        }
    }

    /// Number of WAL segment files (for metrics and tests).
    pub fn segment_count(&self) -> usize {
        self.wal.segment_count()
    }

    /// Makes every buffered write durable with one `fdatasync`. A failure stops the store.
    pub fn sync(&mut self) -> Result<(), LogStoreError> {
        if let Some(e) = &self.failed {
            return Err(LogStoreError::Failed(e.clone()));
        }
        if let Err(e) = self.wal.sync() {
            let e = Arc::new(LogStoreError::Wal(e));
            self.failed = Some(e.clone());
            return Err(LogStoreError::Failed(e));
        }
        Ok(())
    }

    fn append(&mut self, record: &StoreRecord) -> Result<Lsn, LogStoreError> {
        self.scratch.clear();
        rmp_serde::encode::write(&mut self.scratch, record)?;
        Ok(self.wal.append(&self.scratch)?)
    }

    fn append_borrowed(
        &mut self,
        group: GroupId,
        truncate_from: Option<LogIndex>,
        entries: &[Entry],
    ) -> Result<Lsn, LogStoreError> {
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
        )?;
        Ok(self.wal.append(&self.scratch)?)
    }
}

/// Applies one append to a recovered log, refusing gaps.
fn apply_append(
    log: &mut Vec<Entry>,
    truncate_from: Option<LogIndex>,
    entries: Vec<Entry>,
) -> Result<(), AppendFault> {
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
                return Err(AppendFault::BeforeFirst {
                    first: new_first,
                    log_first: first,
                });
            }
            log.truncate((new_first - first) as usize);
        }
        let expected = log.last().map(|e| e.index + 1);
        if let Some(expected) = expected {
            if new_first != expected {
                return Err(AppendFault::Gap {
                    first: new_first,
                    last: expected - 1,
                });
            }
        }
        if let Some(fault) = out_of_order(&entries) {
            return Err(fault);
        }
    }
    log.extend(entries);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_core::ids::NodeId;
    use conclave_core::raft::EntryPayload;

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
                vote: Some(NodeId::new(3)),
            };
            store
                .write(
                    GroupId::new(1),
                    &req(1, Some(hs), None, (1..=5).map(|i| entry(i, 1)).collect()),
                )
                .unwrap();
            store
                .write(
                    GroupId::new(7),
                    &req(1, None, None, (1..=2).map(|i| entry(i, 4)).collect()),
                )
                .unwrap();
            // Group 1: a new leader overwrites indexes 4.. with term 2 entries.
            store
                .write(
                    GroupId::new(1),
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
                .write(GroupId::new(7), &req(2, None, None, vec![entry(2, 5)]))
                .unwrap();
            store.sync().unwrap();
            store
                .write(
                    GroupId::new(1),
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
        let g1 = &groups[&GroupId::new(1)];
        assert_eq!(
            g1.hard_state,
            HardState {
                term: 2,
                vote: Some(NodeId::new(3))
            }
        );
        let terms: Vec<_> = g1.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(terms, vec![(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]);
        let g7: Vec<_> = groups[&GroupId::new(7)]
            .entries
            .iter()
            .map(|e| (e.index, e.term))
            .collect();
        assert_eq!(g7, vec![(1, 4), (2, 5)]);
        assert_eq!(groups[&GroupId::new(7)].hard_state, HardState::default());
    }

    #[test]
    fn a_gap_is_reported_as_invalid_with_its_lsn() {
        let dir = tempfile::tempdir().unwrap();
        {
            // `LogStore::write` refuses gaps, so plant one in the WAL directly (a disk that
            // lost a record, or an older version's bug).
            let (mut wal, _, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
            for index in [1, 3] {
                let record = StoreRecord::Append {
                    group: GroupId::new(1),
                    truncate_from: None,
                    entries: vec![entry(index, 1)],
                };
                wal.append(&rmp_serde::to_vec(&record).unwrap()).unwrap();
            }
            wal.sync().unwrap();
        }
        match LogStore::open(dir.path(), WalOptions::default()) {
            Err(LogStoreError::Invalid {
                lsn: 2,
                fault: RecordFault::Append(AppendFault::Gap { first: 3, last: 1 }),
            }) => {}
            other => panic!("expected a gap error, got {:?}", other.map(|(_, g)| g)),
        }
    }

    fn big_entry(index: LogIndex, bytes: usize) -> Entry {
        Entry {
            term: 1,
            index,
            payload: EntryPayload::Command(vec![index as u8; bytes]),
        }
    }

    fn small_records() -> WalOptions {
        WalOptions {
            max_record_bytes: 4096,
            ..WalOptions::default()
        }
    }

    /// Finding 1 of the hardening issue: a follower's persist batch of 14 MB exceeded the WAL
    /// record cap and failed. A request is now split into records that fit.
    #[test]
    fn finding1_a_persist_larger_than_one_record_is_split_and_recovered_whole() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut store, _) = LogStore::open(dir.path(), small_records()).unwrap();
            let entries: Vec<Entry> = (1..=20).map(|i| big_entry(i, 1000)).collect();
            store
                .write(GroupId::new(3), &req(1, None, Some(1), entries))
                .expect("a request larger than one record is split, not refused");
            store.sync().unwrap();
        }
        let (_, records, _) = Wal::open(dir.path(), small_records()).unwrap();
        assert!(
            records.len() >= 5,
            "20 KB in 4 KiB records: {}",
            records.len()
        );
        let (_, groups) = LogStore::open(dir.path(), small_records()).unwrap();
        let got: Vec<Entry> = groups[&GroupId::new(3)].entries.clone();
        let want: Vec<Entry> = (1..=20).map(|i| big_entry(i, 1000)).collect();
        assert_eq!(got, want);
    }

    /// Finding 1: after one persist failed, the next pipelined append was written, leaving a
    /// gap that made the node refuse to start. A refused request stops the group's log.
    #[test]
    fn finding1_after_a_refused_request_nothing_later_is_written() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut store, _) = LogStore::open(dir.path(), small_records()).unwrap();
            store
                .write(
                    GroupId::new(1),
                    &req(1, None, None, (1..=3).map(|i| entry(i, 1)).collect()),
                )
                .unwrap();
            store
                .write(GroupId::new(2), &req(1, None, None, vec![entry(1, 1)]))
                .unwrap();
            // One entry larger than a record, even alone.
            let err = store
                .write(
                    GroupId::new(1),
                    &req(2, None, None, vec![big_entry(4, 8000)]),
                )
                .unwrap_err();
            assert!(
                matches!(&err, LogStoreError::Failed(e) if matches!(**e, LogStoreError::EntryTooLarge { index: 4, .. })),
                "{err}"
            );
            // The next pipelined append of the same group is refused, not written.
            let later = store.write(GroupId::new(1), &req(3, None, None, vec![entry(5, 1)]));
            assert!(matches!(later, Err(LogStoreError::Failed(_))), "{later:?}");
            assert!(store.writable(GroupId::new(1)).is_err());
            // Other groups go on.
            store
                .write(GroupId::new(2), &req(2, None, None, vec![entry(2, 1)]))
                .unwrap();
            assert!(store.writable(GroupId::new(2)).is_ok());
            store.sync().unwrap();
        }
        let (_, groups) = LogStore::open(dir.path(), small_records())
            .expect("the log opens: nothing after the refused request was written");
        assert_eq!(groups[&GroupId::new(1)].entries.len(), 3);
        assert_eq!(groups[&GroupId::new(2)].entries.len(), 2);
    }

    /// Finding 1: contiguity is checked before writing, so a gap never reaches the disk.
    #[test]
    fn finding1_a_gap_is_refused_before_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut store, _) = LogStore::open(dir.path(), WalOptions::default()).unwrap();
            store
                .write(
                    GroupId::new(1),
                    &req(1, None, None, vec![entry(1, 1), entry(2, 1)]),
                )
                .unwrap();
            // A truncation then an overwrite inside the log is fine …
            store
                .write(
                    GroupId::new(1),
                    &req(2, None, Some(2), vec![entry(2, 2), entry(3, 2)]),
                )
                .unwrap();
            // … a gap is not, nor entries out of order.
            let gap = store.write(GroupId::new(1), &req(3, None, None, vec![entry(5, 2)]));
            match gap {
                Err(LogStoreError::Failed(e)) => {
                    assert!(e.to_string().contains("gap after index 3"), "{e}")
                }
                other => panic!("expected a refused gap, got {other:?}"),
            }
            let disorder = store.write(
                GroupId::new(9),
                &req(1, None, None, vec![entry(2, 1), entry(1, 1)]),
            );
            assert!(matches!(disorder, Err(LogStoreError::Failed(_))));
            store.sync().unwrap();
        }
        let (_, groups) = LogStore::open(dir.path(), WalOptions::default()).unwrap();
        let g1: Vec<_> = groups[&GroupId::new(1)]
            .entries
            .iter()
            .map(|e| (e.index, e.term))
            .collect();
        assert_eq!(g1, vec![(1, 1), (2, 2), (3, 2)]);
        assert!(!groups.contains_key(&GroupId::new(9)));
    }

    /// The spans rebuilt at open check appends made after a restart.
    #[test]
    fn contiguity_is_checked_against_the_recovered_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut store, _) = LogStore::open(dir.path(), WalOptions::default()).unwrap();
            store
                .write(
                    GroupId::new(1),
                    &req(1, None, None, (1..=4).map(|i| entry(i, 1)).collect()),
                )
                .unwrap();
            store.sync().unwrap();
        }
        let (mut store, _) = LogStore::open(dir.path(), WalOptions::default()).unwrap();
        assert!(store
            .write(GroupId::new(1), &req(1, None, None, vec![entry(6, 1)]))
            .is_err());
        let (mut store, _) = LogStore::open(dir.path(), WalOptions::default()).unwrap();
        store
            .write(GroupId::new(1), &req(1, None, None, vec![entry(5, 1)]))
            .unwrap();
        store
            .write(GroupId::new(1), &req(2, None, Some(1), vec![]))
            .unwrap();
        // Truncated to empty: the log may start again anywhere.
        store
            .write(GroupId::new(1), &req(3, None, None, vec![entry(7, 2)]))
            .unwrap();
    }

    fn dir_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    #[test]
    fn compaction_drops_entries_and_recovery_resumes_after_the_snapshot_point() {
        let dir = tempfile::tempdir().unwrap();
        let hs = HardState {
            term: 3,
            vote: Some(NodeId::new(2)),
        };
        {
            let (mut store, _) = LogStore::open(dir.path(), WalOptions::default()).unwrap();
            store
                .write(
                    GroupId::new(1),
                    &req(1, Some(hs), None, (1..=100).map(|i| entry(i, 3)).collect()),
                )
                .unwrap();
            store.compact(GroupId::new(1), 60, 3).unwrap();
            // An older point changes nothing.
            store.compact(GroupId::new(1), 40, 3).unwrap();
            store.sync().unwrap();
        }
        let (mut store, groups) = LogStore::open(dir.path(), WalOptions::default()).unwrap();
        let g = &groups[&GroupId::new(1)];
        assert_eq!(g.compacted, (60, 3));
        assert_eq!(g.hard_state, hs);
        assert_eq!(g.entries.first().map(|e| e.index), Some(61));
        assert_eq!(g.entries.last().map(|e| e.index), Some(100));
        // Appends go on after the log; nothing may be written at or before the point.
        store
            .write(GroupId::new(1), &req(2, None, None, vec![entry(101, 3)]))
            .unwrap();
        assert!(store
            .write(GroupId::new(1), &req(3, None, Some(55), vec![entry(55, 4)]))
            .is_err());
    }

    /// A follower that installs a snapshot beyond its log (Raft §7) discards the whole log.
    #[test]
    fn compaction_beyond_the_log_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut store, _) = LogStore::open(dir.path(), WalOptions::default()).unwrap();
            store
                .write(
                    GroupId::new(1),
                    &req(1, None, None, (1..=10).map(|i| entry(i, 1)).collect()),
                )
                .unwrap();
            store.compact(GroupId::new(1), 50, 3).unwrap();
            store
                .write(GroupId::new(1), &req(2, None, None, vec![entry(51, 3)]))
                .unwrap();
            store.sync().unwrap();
        }
        let (_, groups) = LogStore::open(dir.path(), WalOptions::default()).unwrap();
        assert_eq!(groups[&GroupId::new(1)].compacted, (50, 3));
        let idx: Vec<_> = groups[&GroupId::new(1)]
            .entries
            .iter()
            .map(|e| e.index)
            .collect();
        assert_eq!(idx, vec![51]);
    }

    fn meta(index: LogIndex, term: Term) -> SnapshotMeta {
        SnapshotMeta {
            index,
            term,
            membership: conclave_core::raft::Membership::with_voters([
                NodeId::new(1),
                NodeId::new(2),
                NodeId::new(3),
            ]),
        }
    }

    fn install_req(
        seq: u64,
        snapshot: SnapshotMeta,
        trunc: Option<LogIndex>,
        e: Vec<Entry>,
    ) -> PersistRequest {
        PersistRequest {
            snapshot: Some(snapshot),
            ..req(seq, None, trunc, e)
        }
    }

    /// Raft §7, a follower whose log holds the snapshot's last entry: the snapshot becomes the
    /// base, entries at or below it go, the ones after it stay; recovered after a restart.
    #[test]
    fn installed_snapshot_is_the_base_and_keeps_the_entries_after_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut store, _) = LogStore::open(dir.path(), WalOptions::default()).unwrap();
            store
                .write(
                    GroupId::new(1),
                    &req(1, None, None, (1..=10).map(|i| entry(i, 1)).collect()),
                )
                .unwrap();
            store
                .write(GroupId::new(1), &install_req(2, meta(5, 1), None, vec![]))
                .unwrap();
            store.sync().unwrap();
            // Nothing may be appended at or below the installed snapshot any more.
            let e = store
                .write(GroupId::new(1), &req(3, None, None, vec![entry(5, 2)]))
                .unwrap_err();
            assert!(e.to_string().contains("compaction point 5"), "{e}");
        }
        // The refused request stopped the group's log, not the file: what was synced is there.
        let (mut store, groups) = LogStore::open(dir.path(), WalOptions::default()).unwrap();
        let g = &groups[&GroupId::new(1)];
        assert_eq!(g.snapshot, Some(meta(5, 1)));
        assert_eq!(g.compacted, (5, 1));
        assert_eq!(g.needs_snapshot_at(), 5);
        let idx: Vec<_> = g.entries.iter().map(|e| e.index).collect();
        assert_eq!(idx, (6..=10).collect::<Vec<_>>());
        // Appends continue after the kept entries.
        store
            .write(GroupId::new(1), &req(4, None, None, vec![entry(11, 1)]))
            .unwrap();
        store.sync().unwrap();
        drop(store);
        let (_, groups) = LogStore::open(dir.path(), WalOptions::default()).unwrap();
        assert_eq!(
            groups[&GroupId::new(1)].entries.last().map(|e| e.index),
            Some(11)
        );
        assert_eq!(groups[&GroupId::new(1)].snapshot, Some(meta(5, 1)));
    }

    /// A follower whose log does not reach the snapshot (or conflicts with it) discards it:
    /// the install's request carries `truncate_from` and the first entries after the
    /// snapshot, written in one request without a gap error.
    #[test]
    fn installed_snapshot_beyond_the_log_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut store, _) = LogStore::open(dir.path(), WalOptions::default()).unwrap();
            store
                .write(
                    GroupId::new(1),
                    &req(1, None, None, (1..=10).map(|i| entry(i, 1)).collect()),
                )
                .unwrap();
            store
                .write(
                    GroupId::new(1),
                    &install_req(2, meta(40, 3), Some(41), vec![entry(41, 3), entry(42, 3)]),
                )
                .unwrap();
            store
                .write(
                    GroupId::new(1),
                    &install_req(3, meta(60, 3), Some(61), vec![]),
                )
                .unwrap();
            store.sync().unwrap();
            // A later, not synced install is lost.
            store
                .write(
                    GroupId::new(1),
                    &install_req(4, meta(80, 4), Some(81), vec![]),
                )
                .unwrap();
        }
        let (_, groups) = LogStore::open(dir.path(), WalOptions::default()).unwrap();
        let g = &groups[&GroupId::new(1)];
        assert_eq!(g.snapshot, Some(meta(60, 3)));
        assert_eq!(g.compacted, (60, 3));
        assert!(g.entries.is_empty(), "{:?}", g.entries);
        assert_eq!(g.needs_snapshot_at(), 60);
    }

    /// An installed snapshot's record is bookkeeping like a compaction point: a group that
    /// goes idle after installing does not pin old segments, and its base survives purges.
    #[test]
    fn installed_snapshot_survives_purges() {
        let dir = tempfile::tempdir().unwrap();
        let options = || WalOptions {
            segment_bytes: 16 * 1024,
            ..WalOptions::default()
        };
        {
            let (mut store, _) = LogStore::open(dir.path(), options()).unwrap();
            store
                .write(
                    GroupId::new(2),
                    &install_req(1, meta(500, 2), Some(501), vec![]),
                )
                .unwrap();
            store.sync().unwrap();
            // Another group writes a lot of history and compacts as it goes.
            for i in 1..=600u64 {
                store
                    .write(GroupId::new(1), &req(i, None, None, vec![entry(i, 1)]))
                    .unwrap();
                if i % 50 == 0 {
                    store.compact(GroupId::new(1), i - 10, 1).unwrap();
                }
                store.sync().unwrap();
                store.purge().unwrap();
            }
            assert!(
                store.segment_count() <= 4,
                "{} segments",
                store.segment_count()
            );
        }
        let (_, groups) = LogStore::open(dir.path(), options()).unwrap();
        assert_eq!(groups[&GroupId::new(2)].snapshot, Some(meta(500, 2)));
        assert_eq!(groups[&GroupId::new(2)].compacted, (500, 2));
        assert_eq!(groups[&GroupId::new(1)].compacted, (590, 1));
    }

    /// The WAL's size follows the live log, not its history: one busy group that compacts
    /// every 100 entries and one idle group whose only records were written at the start.
    #[test]
    fn purge_keeps_the_wal_bounded_by_live_data() {
        let dir = tempfile::tempdir().unwrap();
        let options = || WalOptions {
            segment_bytes: 16 * 1024,
            ..WalOptions::default()
        };
        let idle_hs = HardState {
            term: 7,
            vote: Some(NodeId::new(1)),
        };
        let mut max_segments = 0;
        let mut max_bytes = 0;
        {
            let (mut store, _) = LogStore::open(dir.path(), options()).unwrap();
            store
                .write(GroupId::new(2), &req(1, Some(idle_hs), None, vec![]))
                .unwrap();
            store.compact(GroupId::new(2), 5, 1).unwrap();
            for i in 1..=5_000u64 {
                let e = Entry {
                    term: 1,
                    index: i,
                    payload: EntryPayload::Command(vec![7; 100]),
                };
                store
                    .write(GroupId::new(1), &req(i, None, None, vec![e]))
                    .unwrap();
                if i % 10 == 0 {
                    store.sync().unwrap();
                }
                if i % 100 == 0 {
                    store.compact(GroupId::new(1), i - 10, 1).unwrap();
                    store.sync().unwrap();
                    store.purge().unwrap();
                    max_segments = max_segments.max(store.segment_count());
                    max_bytes = max_bytes.max(dir_bytes(dir.path()));
                }
            }
            store.sync().unwrap();
        }
        // ~600 KB written in all; live data is 10–110 entries and two small records.
        assert!(max_segments <= 4, "segments: {max_segments}");
        assert!(max_bytes <= 64 * 1024, "bytes: {max_bytes}");
        let (_, groups) = LogStore::open(dir.path(), options()).unwrap();
        assert_eq!(groups[&GroupId::new(1)].compacted, (4_990, 1));
        assert_eq!(groups[&GroupId::new(1)].entries.len(), 10);
        assert_eq!(groups[&GroupId::new(2)].hard_state, idle_hs);
        assert_eq!(groups[&GroupId::new(2)].compacted, (5, 1));
    }

    /// Live entries of a group that never compacts keep their segments; truncated ones do not.
    #[test]
    fn live_entries_pin_their_segments_and_truncated_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let options = || WalOptions {
            segment_bytes: 4 * 1024,
            ..WalOptions::default()
        };
        {
            let (mut store, _) = LogStore::open(dir.path(), options()).unwrap();
            // Group 2 holds live entries in the first segment and never compacts.
            store
                .write(
                    GroupId::new(2),
                    &req(1, None, None, (1..=3).map(|i| entry(i, 1)).collect()),
                )
                .unwrap();
            // Group 1: 1..=10, then a new leader overwrites 5.. — then compaction past both.
            store
                .write(
                    GroupId::new(1),
                    &req(1, None, None, (1..=10).map(|i| entry(i, 1)).collect()),
                )
                .unwrap();
            store
                .write(
                    GroupId::new(1),
                    &req(2, None, Some(5), (5..=7).map(|i| entry(i, 2)).collect()),
                )
                .unwrap();
            for i in 8..=400 {
                store
                    .write(GroupId::new(1), &req(i, None, None, vec![entry(i, 2)]))
                    .unwrap();
                store.sync().unwrap();
            }
            store.compact(GroupId::new(1), 390, 2).unwrap();
            store.sync().unwrap();
            store.purge().unwrap();
            assert!(
                store.segment_count() > 2,
                "group 2's entries pin the oldest segment"
            );
        }
        let (_, groups) = LogStore::open(dir.path(), options()).unwrap();
        assert_eq!(groups[&GroupId::new(2)].entries.len(), 3);
        assert_eq!(groups[&GroupId::new(1)].entries.len(), 10);

        // The same history where group 2 compacts too: everything old goes.
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = LogStore::open(dir.path(), options()).unwrap();
        store
            .write(
                GroupId::new(2),
                &req(1, None, None, (1..=3).map(|i| entry(i, 1)).collect()),
            )
            .unwrap();
        for i in 1..=400 {
            store
                .write(GroupId::new(1), &req(i, None, None, vec![entry(i, 2)]))
                .unwrap();
            store.sync().unwrap();
        }
        store.compact(GroupId::new(2), 3, 1).unwrap();
        store.compact(GroupId::new(1), 390, 2).unwrap();
        store.sync().unwrap();
        store.purge().unwrap();
        assert!(store.segment_count() <= 2, "{}", store.segment_count());
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
            Err(LogStoreError::Invalid {
                lsn: 1,
                fault: RecordFault::Undecodable(_)
            })
        ));
    }
}
