//! The node's log-store actor: every group's persist requests go through one write-ahead log,
//! with group commit — the requests that queue up while one `fdatasync` runs are written by
//! the next, so many groups and many proposals share each sync.
//!
//! It runs on its own arbiter (thread) because `fdatasync` blocks. It also keeps each group's
//! durable state in memory so that a restarted group actor can rebuild its Raft core from
//! exactly what is durable without re-reading the disk.

use crate::config::PersistenceStrategy;
use crate::storage::group_list::{GroupList, GroupListError};
use crate::storage::health::{StorageComponent, StorageError, StorageHealth};
use crate::storage::log_store::{LogStore, LogStoreError, RecoveredGroup};
use crate::storage::member_mark::{MemberMarkError, MemberMarks};
use crate::storage::watchdog::StallClock;
use actix::prelude::*;
use conclave_core::raft::{Entry, GroupId, LogIndex, PersistRequest};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::oneshot;

/// The component name the log store reports to [`StorageHealth`] under.
pub const HEALTH_COMPONENT: StorageComponent = StorageComponent::RaftLog;

/// What a persist or recovery reports: the log store's error, shared by every request it
/// failed (a failed store fails every later request with the same first cause).
pub type PersistResult<T> = Result<T, Arc<LogStoreError>>;

/// Persist one group's request; the reply comes once it is durable (`disk_first`) or buffered
/// (`mem_first`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Persist {
    /// The group.
    pub group: GroupId,
    /// What to write.
    pub req: PersistRequest,
    /// Told the outcome.
    pub done: oneshot::Sender<PersistResult<u64>>,
}

/// A Raft worker's persist requests and compactions of one drain, for every group of the
/// worker at once (one message instead of a message, a reply channel and a waiting future per
/// group). Items are carried out in order; the persist requests are answered together, one
/// [`Persisted`] per WAL sync to each worker that has requests in it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PersistBatch {
    /// The worker (its index): the requests of one worker's batches that one sync makes
    /// durable are answered in one message.
    pub worker: usize,
    /// Where the answers go.
    pub reply: Recipient<Persisted>,
    /// What to write, in order.
    pub items: Vec<BatchItem>,
}

/// One item of a [`PersistBatch`].
pub enum BatchItem {
    /// A group's persist request. `tag` comes back with the answer (the worker's registration
    /// of the group's shell: an answer to a shell that restarted since is ignored).
    Persist {
        /// The group.
        group: GroupId,
        /// The sender's tag.
        tag: u64,
        /// What to write.
        req: PersistRequest,
    },
    /// A group's compaction, as [`Compact`] (a failure is logged and reported to the health
    /// record; the group's later persist requests fail).
    Compact {
        /// The group.
        group: GroupId,
        /// The snapshot's last included index.
        index: LogIndex,
        /// Its term.
        term: conclave_core::raft::Term,
    },
}

/// A persist request of a [`PersistBatch`] that is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PersistedRequest {
    /// The group.
    pub group: GroupId,
    /// The tag it was sent with.
    pub tag: u64,
    /// Its sequence number (`PersistRequest::seq`).
    pub seq: u64,
}

/// The answer to the persist requests of [`PersistBatch`]es: durable (`disk_first`: one WAL
/// sync made them all durable) or buffered (`mem_first`), or failed with the store's error.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Persisted {
    /// `Ok` if every request named is persisted; the store's error otherwise.
    pub result: PersistResult<()>,
    /// The requests, in the order they were written.
    pub requests: Vec<PersistedRequest>,
}

/// The requests of one worker waiting for the next sync.
struct WaitingBatch {
    reply: Recipient<Persisted>,
    requests: Vec<PersistedRequest>,
}

/// The durable state of one group (after syncing anything buffered).
#[derive(Message)]
#[rtype(result = "PersistResult<RecoveredGroup>")]
pub struct Recover {
    /// The group.
    pub group: GroupId,
}

/// Record that `group`'s state up to `index` (of term `term`) is in a durable snapshot: the
/// entries up to it leave the in-memory mirror, and WAL segments no group needs any more are
/// deleted after the next sync. The snapshot must be durable before this is sent.
#[derive(Message)]
#[rtype(result = "PersistResult<()>")]
pub struct Compact {
    /// The group.
    pub group: GroupId,
    /// The snapshot's last included index.
    pub index: LogIndex,
    /// Its term.
    pub term: conclave_core::raft::Term,
}

/// Mark durably that this node has been a member of `group` (`data_dir/member-of`, see
/// [`crate::storage::member_mark`]), so that a node removed later still reports `removed` once
/// its log is compacted. Handled here, in order with the group's compactions, on this actor's
/// own arbiter (the write syncs). The answer says whether the mark is durable.
#[derive(Message)]
#[rtype(result = "Result<(), Arc<MemberMarkError>>")]
pub struct MarkMember {
    /// The group.
    pub group: GroupId,
    /// The node's marks.
    pub marks: Arc<MemberMarks>,
}

/// Lists a group created at runtime with its bootstrap membership, or unlists a removed one,
/// in `data_dir/group-list` (blocking file I/O, done on this actor's arbiter like
/// [`MarkMember`], timed by the stall watchdog).
#[derive(Message)]
#[rtype(result = "Result<(), Arc<GroupListError>>")]
pub struct SaveGroupList {
    /// The group.
    pub group: GroupId,
    /// Its bootstrap membership, or `None` to unlist it.
    pub membership: Option<conclave_core::raft::Membership>,
    /// The node's list.
    pub list: Arc<GroupList>,
}

struct Flush;
impl Message for Flush {
    type Result = ();
}

/// The actor. See the module docs.
pub struct LogStoreActor {
    store: LogStore,
    mirror: BTreeMap<GroupId, RecoveredGroup>,
    strategy: PersistenceStrategy,
    flush_threshold: usize,
    flush_interval: std::time::Duration,
    waiting: Vec<(oneshot::Sender<PersistResult<u64>>, u64)>,
    /// The batched requests waiting for the next sync, by worker.
    waiting_batches: BTreeMap<usize, WaitingBatch>,
    buffered: usize,
    flush_scheduled: bool,
    /// A compaction was written since the last purge: purge after the next sync.
    purge_pending: bool,
    /// Where a failure is reported, for readiness and status.
    health: Arc<StorageHealth>,
    /// Times every write, sync and purge: one that does not return within the stall timeout
    /// is reported as a stall of `raft_log` (a disk that hangs is seen, not silent).
    clock: Option<Arc<StallClock>>,
    /// `[ring]` `sharded` and `shards`: which groups are shards' and whether their series
    /// carry a `shard` label or are not exported (`group_metrics`).
    sharding: (bool, u64),
    /// `conclave_log_store_entries` of each group, registered at its first request (looking
    /// the labelled series up for every persist request cost this thread an allocation of
    /// the labels and a registry search each time).
    entry_gauges: BTreeMap<GroupId, metrics::Gauge>,
}

impl LogStoreActor {
    /// Wraps an opened store and what its recovery found.
    pub fn new(
        store: LogStore,
        recovered: BTreeMap<GroupId, RecoveredGroup>,
        strategy: PersistenceStrategy,
        flush_threshold: usize,
        flush_interval_ms: u64,
        health: Arc<StorageHealth>,
    ) -> Self {
        LogStoreActor {
            store,
            mirror: recovered,
            strategy,
            flush_threshold,
            flush_interval: std::time::Duration::from_millis(flush_interval_ms),
            waiting: Vec::new(),
            waiting_batches: BTreeMap::new(),
            buffered: 0,
            flush_scheduled: false,
            purge_pending: false,
            health,
            clock: None,
            sharding: (false, 0),
            entry_gauges: BTreeMap::new(),
        }
    }

    /// Times the store's disk calls with `clock` (the node's stall watchdog).
    pub fn with_stall_clock(mut self, clock: Arc<StallClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Labels shard groups' series by `[ring]` `sharded` and `shards` (`group_metrics`).
    pub fn with_sharding(mut self, sharded: bool, shards: u64) -> Self {
        self.sharding = (sharded, shards);
        self
    }

    /// Runs a disk call of the store under the stall clock, if any.
    fn timed<T>(&mut self, f: impl FnOnce(&mut LogStore) -> T) -> T {
        match self.clock.clone() {
            Some(clock) => clock.time(|| f(&mut self.store)),
            None => f(&mut self.store),
        }
    }

    /// Reports a store error to the health record and returns it in its shareable form.
    fn fail(&self, e: LogStoreError) -> Arc<LogStoreError> {
        let e = match e {
            LogStoreError::Failed(first) => first,
            other => Arc::new(other),
        };
        // Idempotent: the health record keeps the first failure.
        self.health
            .failed(HEALTH_COMPONENT, StorageError::RaftLog(e.clone()));
        e
    }

    fn sync(&mut self) {
        let started = std::time::Instant::now();
        let result = self.timed(LogStore::sync).map_err(|e| self.fail(e));
        let took = started.elapsed();
        // The answers first: on a follower they are on a write's critical path (its
        // acknowledgement leaves once the worker has them), the bookkeeping below is not.
        for (tx, seq) in self.waiting.drain(..) {
            let _ = tx.send(result.clone().map(|_| seq));
        }
        for (_, batch) in std::mem::take(&mut self.waiting_batches) {
            // A worker that stopped lets its groups' shells restart: nothing to answer.
            batch.reply.do_send(Persisted {
                result: result.clone(),
                requests: batch.requests,
            });
        }
        // Every write waits for one of these: what other disk traffic (a snapshot image being
        // written back) does to the write path shows here first.
        metrics::histogram!("conclave_wal_sync_seconds").record(took.as_secs_f64());
        metrics::counter!("conclave_wal_syncs_total").increment(1);
        metrics::histogram!("conclave_wal_batch_requests").record(self.buffered as f64);
        self.buffered = 0;
        if result.is_ok() && self.purge_pending {
            self.purge_pending = false;
            match self.timed(LogStore::purge) {
                Ok(removed) => {
                    metrics::counter!("conclave_wal_segments_purged_total")
                        .increment(removed as u64);
                }
                Err(e) => {
                    let e = self.fail(e);
                    tracing::error!(error = %e, "purging write-ahead log segments failed");
                }
            }
            // Re-written bookkeeping records may let the next purge delete more.
            self.purge_pending = self.store.segment_count() > 1;
        }
        metrics::gauge!("conclave_wal_segments").set(self.store.segment_count() as f64);
    }

    /// Compacts `group`'s log and its mirror up to `index`; the segments it frees are purged
    /// after the next sync. A failure is recorded (`fail`) and returned.
    fn compact(
        &mut self,
        group: GroupId,
        index: LogIndex,
        term: conclave_core::raft::Term,
    ) -> PersistResult<()> {
        self.store
            .compact(group, index, term)
            .map_err(|e| self.fail(e))?;
        if let Some(g) = self.mirror.get_mut(&group) {
            compact_mirror(g, index, term);
            mirror_gauge(&mut self.entry_gauges, group, self.sharding, g);
        }
        self.purge_pending = true;
        self.buffered += 1;
        Ok(())
    }

    fn record(&mut self, group: GroupId, req: &PersistRequest) {
        let g = self.mirror.entry(group).or_default();
        mirror_request(g, req);
        mirror_gauge(&mut self.entry_gauges, group, self.sharding, g);
    }
}

/// Applies one persist request to a group's in-memory mirror of its durable log.
///
/// The mirror is contiguous and in index order, so cutting it at an index is a binary search
/// and a truncate, O(log n). (It was a `retain` over the whole mirrored log, O(n) on every
/// write: 4 % of a leader's CPU after 4,400 writes in a profile, and growing with the log.)
fn mirror_request(g: &mut RecoveredGroup, req: &PersistRequest) {
    // An installed snapshot is carried out first, as the store writes it.
    if let Some(meta) = &req.snapshot {
        g.install(meta);
    }
    if let Some(hs) = req.hard_state {
        g.hard_state = hs;
    }
    if let Some(from) = req.truncate_from {
        cut_from(&mut g.entries, from);
    }
    if let Some(first) = req.entries.first().map(|e| e.index) {
        cut_from(&mut g.entries, first);
        g.entries.extend(req.entries.iter().cloned());
    }
}

/// `conclave_log_store_entries{group}`: entries the log store keeps in memory for the group
/// (its mirror), which compaction bounds.
/// (A shard's group also carries `shard`; above the cap it exports none, `group_metrics`.)
fn mirror_gauge(
    gauges: &mut BTreeMap<GroupId, metrics::Gauge>,
    group: GroupId,
    (sharded, shards): (bool, u64),
    g: &RecoveredGroup,
) {
    gauges
        .entry(group)
        .or_insert_with(|| {
            super::group_metrics::GroupLabels::new(group, sharded, shards)
                .gauge("conclave_log_store_entries")
        })
        .set(g.entries.len() as f64);
}

/// Drops a group's mirrored entries up to a compaction point.
fn compact_mirror(g: &mut RecoveredGroup, index: LogIndex, term: conclave_core::raft::Term) {
    if index <= g.compacted.0 {
        return;
    }
    g.compacted = (index, term);
    let covered = g.entries.partition_point(|e| e.index <= index);
    g.entries.drain(..covered);
}

/// Drops every entry at or above `from` from a log sorted by index.
fn cut_from(entries: &mut Vec<Entry>, from: LogIndex) {
    // An append past the end (every write but a new leader's overwrite) cuts nothing: no
    // binary search over the whole mirror (a cache miss per probe on a long log; ~2% of a
    // 64-shard node's CPU, one search per group per persist request).
    if entries.last().is_none_or(|e| e.index < from) {
        return;
    }
    let keep = entries.partition_point(|e| e.index < from);
    entries.truncate(keep);
}

impl Actor for LogStoreActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(16 * 1024);
        if self.strategy == PersistenceStrategy::MemFirst {
            ctx.run_interval(self.flush_interval, |act, _| {
                if act.buffered > 0 {
                    act.sync();
                }
            });
        }
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        if self.buffered > 0 {
            self.sync();
        }
        Running::Stop
    }
}

impl Handler<Persist> for LogStoreActor {
    type Result = ();

    fn handle(&mut self, msg: Persist, ctx: &mut Context<Self>) {
        // A request the store refuses (a failed WAL, a gap) is never followed by a later one
        // of the same log: the store itself stays stopped (see `LogStore::write`).
        if let Err(e) = self.store.write(msg.group, &msg.req) {
            let e = self.fail(e);
            tracing::error!(group = %msg.group, error = %e, "write-ahead log append refused");
            let _ = msg.done.send(Err(e));
            return;
        }
        self.record(msg.group, &msg.req);
        self.buffered += 1;
        match self.strategy {
            PersistenceStrategy::DiskFirst => {
                self.waiting.push((msg.done, msg.req.seq));
                if !self.flush_scheduled {
                    // Mailbox messages are handled before notified ones, so every request
                    // already queued joins this batch: one fdatasync for all of them.
                    self.flush_scheduled = true;
                    ctx.notify(Flush);
                }
            }
            PersistenceStrategy::MemFirst => {
                // Weaker by design (documented): reported done once buffered; flushed by
                // size or interval.
                let _ = msg.done.send(Ok(msg.req.seq));
                if self.buffered >= self.flush_threshold {
                    self.sync();
                }
            }
        }
    }
}

impl Handler<PersistBatch> for LogStoreActor {
    type Result = ();

    fn handle(&mut self, msg: PersistBatch, ctx: &mut Context<Self>) {
        let PersistBatch {
            worker,
            reply,
            items,
        } = msg;
        let mut written = Vec::with_capacity(items.len());
        let mut refused: Option<(Arc<LogStoreError>, Vec<PersistedRequest>)> = None;
        let mut compacted = false;
        for item in items {
            match item {
                BatchItem::Persist { group, tag, req } => {
                    let request = PersistedRequest {
                        group,
                        tag,
                        seq: req.seq,
                    };
                    // As for `Persist`: a refused request is never followed by a later one of
                    // the same log (the store stays stopped for it).
                    if let Err(e) = self.store.write(group, &req) {
                        let e = self.fail(e);
                        tracing::error!(%group, error = %e, "write-ahead log append refused");
                        match refused.as_mut() {
                            // One answer for the batch's refusals (the first cause).
                            Some((_, requests)) => requests.push(request),
                            None => refused = Some((e, vec![request])),
                        }
                        continue;
                    }
                    self.record(group, &req);
                    self.buffered += 1;
                    written.push(request);
                }
                BatchItem::Compact { group, index, term } => match self.compact(group, index, term)
                {
                    Ok(()) => {
                        compacted = true;
                        tracing::debug!(%group, index, "log store compacted");
                    }
                    // Reported failed: the group's later persist requests fail and stop it.
                    Err(e) => {
                        tracing::error!(%group, index, error = %e, "log store compaction failed");
                    }
                },
            }
        }
        if let Some((e, requests)) = refused {
            reply.do_send(Persisted {
                result: Err(e),
                requests,
            });
        }
        match self.strategy {
            PersistenceStrategy::DiskFirst => {
                if !written.is_empty() {
                    self.waiting_batches
                        .entry(worker)
                        .and_modify(|w| w.reply = reply.clone())
                        .or_insert_with(|| WaitingBatch {
                            reply: reply.clone(),
                            requests: Vec::new(),
                        })
                        .requests
                        .append(&mut written);
                }
                if (!self.waiting_batches.is_empty() || compacted) && !self.flush_scheduled {
                    // As for `Persist`: the requests already queued join this sync.
                    self.flush_scheduled = true;
                    ctx.notify(Flush);
                }
            }
            PersistenceStrategy::MemFirst => {
                if !written.is_empty() {
                    reply.do_send(Persisted {
                        result: Ok(()),
                        requests: written,
                    });
                }
                if self.buffered >= self.flush_threshold {
                    self.sync();
                } else if compacted && !self.flush_scheduled {
                    self.flush_scheduled = true;
                    ctx.notify(Flush);
                }
            }
        }
    }
}

impl Handler<Compact> for LogStoreActor {
    type Result = PersistResult<()>;

    fn handle(&mut self, msg: Compact, ctx: &mut Context<Self>) -> Self::Result {
        self.compact(msg.group, msg.index, msg.term)?;
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.notify(Flush);
        }
        Ok(())
    }
}

impl Handler<MarkMember> for LogStoreActor {
    type Result = Result<(), Arc<MemberMarkError>>;

    fn handle(&mut self, msg: MarkMember, _: &mut Context<Self>) -> Self::Result {
        let marks = msg.marks;
        let result = match self.clock.clone() {
            Some(clock) => clock.time(|| marks.mark(msg.group)),
            None => marks.mark(msg.group),
        };
        result.map_err(|e| {
            tracing::error!(group = %msg.group, error = %e, "cannot mark this node as a member");
            Arc::new(e)
        })
    }
}

impl Handler<SaveGroupList> for LogStoreActor {
    type Result = Result<(), Arc<GroupListError>>;

    fn handle(&mut self, msg: SaveGroupList, _: &mut Context<Self>) -> Self::Result {
        let SaveGroupList {
            group,
            membership,
            list,
        } = msg;
        let result = match self.clock.clone() {
            Some(clock) => clock.time(|| list.set(group, membership)),
            None => list.set(group, membership),
        };
        result.map_err(|e| {
            tracing::error!(%group, error = %e, "cannot save the group list");
            Arc::new(e)
        })
    }
}

impl Handler<Flush> for LogStoreActor {
    type Result = ();

    fn handle(&mut self, _: Flush, _: &mut Context<Self>) {
        self.flush_scheduled = false;
        self.sync();
    }
}

impl Handler<Recover> for LogStoreActor {
    type Result = PersistResult<RecoveredGroup>;

    fn handle(&mut self, msg: Recover, _: &mut Context<Self>) -> Self::Result {
        // What a restarted core sees must be durable already.
        if self.buffered > 0 {
            self.sync();
        }
        // A stopped store's mirror may hold writes that never became durable: refuse, and
        // let the group stay down until the node restarts and recovers from disk.
        self.store.writable(msg.group).map_err(|e| self.fail(e))?;
        Ok(self.mirror.get(&msg.group).cloned().unwrap_or_default())
    }
}

/// Forwards the log store's answers to a batch to a test's channel (this module's tests and
/// the Raft worker's).
#[cfg(test)]
pub(super) struct PersistedForwarder(pub(super) tokio::sync::mpsc::UnboundedSender<Persisted>);

#[cfg(test)]
impl Actor for PersistedForwarder {
    type Context = Context<Self>;
}

#[cfg(test)]
impl Handler<Persisted> for PersistedForwarder {
    type Result = ();
    fn handle(&mut self, msg: Persisted, _: &mut Context<Self>) {
        let _ = self.0.send(msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_core::ids::NodeId;
    use conclave_core::raft::{EntryPayload, HardState};

    fn entries(term: u64, range: std::ops::RangeInclusive<LogIndex>) -> Vec<Entry> {
        range
            .map(|index| Entry {
                term,
                index,
                payload: EntryPayload::Noop,
            })
            .collect()
    }

    /// What the actor answers a restarted group's `Recover`.
    async fn recover(actor: &Addr<LogStoreActor>, group: u64) -> PersistResult<RecoveredGroup> {
        actor
            .send(Recover {
                group: GroupId::new(group),
            })
            .await
            .unwrap()
    }

    /// A `disk_first` log store actor over the WAL in `dir`.
    fn start_disk_first(
        dir: &std::path::Path,
        options: crate::storage::wal::WalOptions,
    ) -> Addr<LogStoreActor> {
        let (store, recovered) = LogStore::open(dir, options).unwrap();
        LogStoreActor::new(
            store,
            recovered,
            PersistenceStrategy::DiskFirst,
            1,
            1000,
            Arc::new(StorageHealth::new()),
        )
        .start()
    }

    fn req(truncate_from: Option<LogIndex>, entries: Vec<Entry>) -> PersistRequest {
        PersistRequest {
            seq: 0,
            hard_state: None,
            truncate_from,
            entries,
            snapshot: None,
        }
    }

    /// The definition the binary search must agree with: keep what lies below the cut.
    fn reference(g: &mut RecoveredGroup, r: &PersistRequest) {
        if let Some(from) = r.truncate_from {
            g.entries.retain(|e| e.index < from);
        }
        if let Some(first) = r.entries.first().map(|e| e.index) {
            g.entries.retain(|e| e.index < first);
            g.entries.extend(r.entries.iter().cloned());
        }
    }

    #[test]
    fn the_mirror_follows_appends_overwrites_and_truncations() {
        let script = [
            req(None, entries(1, 1..=10)),
            req(None, entries(1, 11..=11)),
            // A new leader overwrites a suffix.
            req(None, entries(2, 7..=9)),
            // Truncation alone, then an append right after it.
            req(Some(5), vec![]),
            req(None, entries(3, 5..=6)),
            // Truncation beyond the end, before the start, and truncate + append together.
            req(Some(100), vec![]),
            req(Some(4), entries(4, 4..=8)),
            req(Some(1), vec![]),
            req(None, entries(5, 1..=3)),
        ];
        let (mut fast, mut slow) = (RecoveredGroup::default(), RecoveredGroup::default());
        for r in &script {
            mirror_request(&mut fast, r);
            reference(&mut slow, r);
            assert_eq!(fast.entries, slow.entries, "after {r:?}");
        }
        assert_eq!(
            fast.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let hs = HardState {
            term: 9,
            ..HardState::default()
        };
        mirror_request(
            &mut fast,
            &PersistRequest {
                seq: 1,
                hard_state: Some(hs),
                truncate_from: None,
                entries: vec![],
                snapshot: None,
            },
        );
        assert_eq!(fast.hard_state, hs);
        assert_eq!(fast.entries.len(), 3);
    }

    /// The actor's compaction: the mirror a restarted group recovers from drops the covered
    /// entries, and old segments are purged after the sync.
    #[actix::test]
    async fn compaction_trims_the_mirror_and_purges_segments() {
        use crate::storage::wal::WalOptions;
        let dir = tempfile::tempdir().unwrap();
        let options = WalOptions {
            segment_bytes: 2048,
            ..WalOptions::default()
        };
        let actor = start_disk_first(dir.path(), options);
        for i in 1..=200u64 {
            let (tx, rx) = oneshot::channel();
            actor
                .send(Persist {
                    group: GroupId::new(4),
                    req: req(None, entries(1, i..=i)),
                    done: tx,
                })
                .await
                .unwrap();
            rx.await.unwrap().unwrap();
        }
        let files = || std::fs::read_dir(dir.path()).unwrap().count();
        let before = files();
        assert!(before > 3, "{before} segments");
        actor
            .send(Compact {
                group: GroupId::new(4),
                index: 190,
                term: 1,
            })
            .await
            .unwrap()
            .unwrap();
        let g = recover(&actor, 4).await.unwrap();
        assert_eq!(g.compacted, (190, 1));
        assert_eq!(g.entries.first().map(|e| e.index), Some(191));
        assert_eq!(g.entries.len(), 10);
        let after = files();
        assert!(after <= 2, "{before} segments before, {after} after");
    }

    /// The actor's mirror (what a restarted group recovers) agrees with a recovery from disk
    /// after an installed snapshot.
    #[actix::test]
    async fn an_installed_snapshot_in_the_mirror_matches_recovery() {
        use crate::storage::wal::WalOptions;
        use conclave_core::raft::{Membership, SnapshotMeta};
        let dir = tempfile::tempdir().unwrap();
        let actor = start_disk_first(dir.path(), WalOptions::default());
        let meta = SnapshotMeta {
            index: 8,
            term: 2,
            membership: Membership::with_voters([NodeId::new(1), NodeId::new(2)]),
        };
        for r in [
            req(None, entries(1, 1..=10)),
            PersistRequest {
                snapshot: Some(meta.clone()),
                ..req(Some(9), entries(2, 9..=9))
            },
        ] {
            let (tx, rx) = oneshot::channel();
            actor
                .send(Persist {
                    group: GroupId::new(1),
                    req: r,
                    done: tx,
                })
                .await
                .unwrap();
            rx.await.unwrap().unwrap();
        }
        let mirrored = recover(&actor, 1).await.unwrap();
        assert_eq!(mirrored.snapshot, Some(meta.clone()));
        assert_eq!(mirrored.compacted, (8, 2));
        assert_eq!(
            mirrored
                .entries
                .iter()
                .map(|e| (e.index, e.term))
                .collect::<Vec<_>>(),
            vec![(9, 2)]
        );
        actor.send(StopForTest).await.unwrap();
        let (_, from_disk) = LogStore::open(dir.path(), WalOptions::default()).unwrap();
        assert_eq!(from_disk[&GroupId::new(1)], mirrored);
    }

    fn persist(group: u64, tag: u64, seq: u64, entries: Vec<Entry>) -> BatchItem {
        BatchItem::Persist {
            group: GroupId::new(group),
            tag,
            req: PersistRequest {
                seq,
                ..req(None, entries)
            },
        }
    }

    /// A worker's batch: several groups' requests are written in order and answered together
    /// once synced (one answer naming each), a refused request is answered with the error on
    /// its own, a compaction in the batch applies after the requests before it, and what is
    /// answered is what a recovery from disk finds.
    #[actix::test]
    async fn a_batch_is_written_in_order_and_answered_per_sync() {
        use crate::storage::wal::WalOptions;
        let dir = tempfile::tempdir().unwrap();
        let actor = start_disk_first(dir.path(), WalOptions::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let reply = PersistedForwarder(tx).start().recipient();
        actor
            .send(PersistBatch {
                worker: 0,
                reply: reply.clone(),
                items: vec![
                    persist(1, 7, 1, entries(1, 1..=3)),
                    persist(2, 8, 1, entries(1, 1..=2)),
                    persist(1, 7, 2, entries(1, 4..=4)),
                    // Entries out of order: refused, and group 3 stays stopped.
                    persist(3, 9, 1, [entries(1, 1..=1), entries(1, 3..=3)].concat()),
                    BatchItem::Compact {
                        group: GroupId::new(1),
                        index: 2,
                        term: 1,
                    },
                    persist(2, 8, 2, entries(1, 3..=3)),
                ],
            })
            .await
            .unwrap();
        let refused = rx.recv().await.unwrap();
        assert!(refused.result.is_err());
        assert_eq!(
            refused.requests,
            vec![PersistedRequest {
                group: GroupId::new(3),
                tag: 9,
                seq: 1
            }]
        );
        let synced = rx.recv().await.unwrap();
        assert!(synced.result.is_ok());
        let named = |g: u64, tag: u64, seq: u64| PersistedRequest {
            group: GroupId::new(g),
            tag,
            seq,
        };
        assert_eq!(
            synced.requests,
            vec![
                named(1, 7, 1),
                named(2, 8, 1),
                named(1, 7, 2),
                named(2, 8, 2)
            ]
        );
        // Another worker's batch after it: its own answer.
        let (tx2, mut rx2) = tokio::sync::mpsc::unbounded_channel();
        actor
            .send(PersistBatch {
                worker: 1,
                reply: PersistedForwarder(tx2).start().recipient(),
                items: vec![persist(4, 1, 1, entries(2, 1..=1))],
            })
            .await
            .unwrap();
        let other = rx2.recv().await.unwrap();
        assert!(other.result.is_ok());
        assert_eq!(other.requests, vec![named(4, 1, 1)]);
        let group1 = recover(&actor, 1).await.unwrap();
        assert_eq!(group1.compacted, (2, 1));
        assert_eq!(
            group1.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert!(recover(&actor, 3).await.is_err());
        actor.send(StopForTest).await.unwrap();
        let (_, from_disk) = LogStore::open(dir.path(), WalOptions::default()).unwrap();
        assert_eq!(from_disk[&GroupId::new(1)], group1);
        assert_eq!(
            from_disk[&GroupId::new(2)]
                .entries
                .iter()
                .map(|e| e.index)
                .collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(!from_disk.contains_key(&GroupId::new(3)));
        assert_eq!(rx.try_recv().ok().map(|p| p.requests), None);
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct StopForTest;

    impl Handler<StopForTest> for LogStoreActor {
        type Result = ();
        fn handle(&mut self, _: StopForTest, ctx: &mut Context<Self>) {
            ctx.stop();
        }
    }
}
