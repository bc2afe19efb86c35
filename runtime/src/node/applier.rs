//! The applier actor: applies committed entries to the user's state machine, answers the
//! writes that were waiting for them, and serves reads once the state machine has caught up
//! with the index the read path asked for.
//!
//! It runs on an arbiter of its own (one per group), never on the arbiter that carries Raft,
//! gossip and the transport's dispatch: a storage call that blocks — sled 0.34 can deadlock
//! inside `apply_batch` (docs/storage.md) — then blocks only this actor. Every call into the
//! machine (open, apply, skip, query) is timed by the node's stall watchdog, which reports a
//! call running past `[storage] stall_timeout_ms` to the node's `StorageHealth`.
//!
//! It is restarted by its group's supervisor if it panics or stops; the new instance reopens
//! the state machine from its factory (on this same arbiter, in `started`) and the group actor
//! re-sends every committed entry after the machine's durable applied index. A machine that
//! reports a storage error while applying marks the node's storage `failed` (sticky until the
//! process restarts) before the applier stops.

use super::snapshotter::{ProgressReader, SnapshotError, SnapshotSource};
use crate::api::{InternalError, RequestError, SharedError, WriteResult};
use crate::state_machine::{LogIndex, StateMachine, StateMachineError};
use crate::storage::background_io::PacedReader;
use crate::storage::health::StorageHealth;
use crate::storage::snapshot_store::{SnapshotStore, StoredSnapshot};
use crate::storage::watchdog::StallClock;
use actix::prelude::*;
use conclave_actors::supervisor::ChildGuard;
use conclave_core::ids::GroupId;
use conclave_core::raft::{Entry, EntryPayload, Term};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Opens a group's state machine on every (re)start of its applier (called with the group).
pub type MachineFactory<M> =
    Arc<dyn Fn(conclave_core::raft::GroupId) -> Result<M, StateMachineError> + Send + Sync>;

/// Where a write's outcome goes.
pub type WriteReply<M> =
    oneshot::Sender<Result<WriteResult<<M as StateMachine>::Output>, RequestError>>;
/// Where a read's outcome goes.
pub type ReadReply<M> = oneshot::Sender<Result<<M as StateMachine>::QueryOutput, RequestError>>;

/// A batch of committed entries, with the writes waiting for some of them.
pub struct ApplyBatch<M: StateMachine> {
    /// Committed entries, in order.
    pub entries: Vec<Entry>,
    /// `(index, term, reply)` of writes proposed at those indexes.
    pub waiters: Vec<(LogIndex, Term, WriteReply<M>)>,
}

impl<M: StateMachine> Message for ApplyBatch<M> {
    type Result = ();
}

/// Serve `query` once the machine has applied `index`.
pub struct ReadAt<M: StateMachine> {
    /// The index the read path requires (0: now).
    pub index: LogIndex,
    /// The query.
    pub query: M::Query,
    /// Where the answer goes.
    pub reply: ReadReply<M>,
}

impl<M: StateMachine> Message for ReadAt<M> {
    type Result = ();
}

/// The machine's applied index.
pub struct AppliedIndex;

impl Message for AppliedIndex {
    type Result = LogIndex;
}

/// Hand over the machine's state for a snapshot, at its applied index, between two runs of
/// entries (so as of the last `end_batch`): the machine is synced first (its storage durable
/// up to that index, so the log may later drop the entries the snapshot covers), then it gives
/// an isolated view ([`SnapshotSource::View`], written elsewhere while it applies on), or,
/// without views, writes its image here into `store`'s pending file
/// ([`SnapshotSource::Written`]).
#[derive(Message)]
#[rtype(result = "Result<SnapshotSource, SnapshotError>")]
pub struct TakeSnapshot {
    /// The group's snapshot files (for a machine without views).
    pub store: Arc<SnapshotStore>,
}

/// Replace the machine's whole state with the snapshot `snapshot` (read through a verifying
/// reader: a damaged image is refused and changes nothing); the applied index becomes the
/// snapshot's. Used at group start when the machine is behind the group's base snapshot, and
/// for a snapshot installed from the leader. Refused if it would move the applied index
/// backwards. Answers the new applied index.
#[derive(Message)]
#[rtype(result = "Result<LogIndex, SnapshotError>")]
pub struct RestoreFrom {
    /// The group's snapshot files.
    pub store: Arc<SnapshotStore>,
    /// The snapshot (from the store).
    pub snapshot: StoredSnapshot,
    /// Most bytes per second of the image the machine reads (0: unpaced): an image received
    /// from the leader is restored in the background (`[snapshot] install_rate_mb_s`).
    pub pace_bytes_per_s: u64,
}

/// Makes the actor panic, to test supervision (tests and the chaos harness only).
#[cfg(any(test, feature = "fault-injection"))]
#[derive(Message)]
#[rtype(result = "()")]
pub struct InjectPanic;

/// Reads waiting for the machine to reach an index.
type PendingReads<M> = BTreeMap<LogIndex, Vec<(<M as StateMachine>::Query, ReadReply<M>)>>;

/// What an applier needs from its node, shared by every instance of a group's applier.
pub struct ApplierDeps<M: StateMachine> {
    /// The group.
    pub group: GroupId,
    /// Opens the machine.
    pub factory: MachineFactory<M>,
    /// Shared with the group actor for status pages and metrics.
    pub applied_gauge: Arc<AtomicU64>,
    /// Times every call into the machine.
    pub clock: Arc<StallClock>,
    /// Where a storage failure is reported.
    pub health: Arc<StorageHealth>,
    /// The labels of the group's metrics.
    pub labels: super::group_metrics::GroupLabels,
}

/// The actor. See the module docs.
pub struct ApplierActor<M: StateMachine> {
    deps: Arc<ApplierDeps<M>>,
    /// `None` until `started` has opened it (on the applier's own arbiter).
    machine: Option<M>,
    applied: LogIndex,
    reads: PendingReads<M>,
    _guard: ChildGuard,
}

impl<M: StateMachine> ApplierActor<M> {
    /// An applier that opens its machine from `deps.factory` once started.
    pub fn new(deps: Arc<ApplierDeps<M>>, guard: ChildGuard) -> Self {
        ApplierActor {
            deps,
            machine: None,
            applied: 0,
            reads: BTreeMap::new(),
            _guard: guard,
        }
    }

    /// Answers `query` from the machine (timed).
    fn query(&self, query: &M::Query) -> Result<M::QueryOutput, RequestError> {
        match &self.machine {
            Some(m) => Ok(self.deps.clock.time(|| m.query(query))),
            None => Err(InternalError::MachineNotOpen.into()),
        }
    }

    fn serve_reads(&mut self) {
        while let Some(entry) = self.reads.first_entry() {
            if *entry.key() > self.applied {
                break;
            }
            for (query, reply) in entry.remove() {
                let _ = reply.send(self.query(&query));
            }
        }
    }
}

impl<M: StateMachine> Actor for ApplierActor<M> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1024);
        // Runs on the applier's arbiter, before any message is handled: the group actor's
        // `AppliedIndex` waits for the open to finish.
        let deps = self.deps.clone();
        match deps.clock.time(|| (deps.factory)(deps.group)) {
            Ok(machine) => {
                self.applied = machine.applied_index();
                self.machine = Some(machine);
                deps.applied_gauge.store(self.applied, Ordering::Relaxed);
            }
            Err(e) => {
                // Stopping drops the guard: the supervisor retries with backoff, and reports
                // the node's storage failed if it gives up.
                tracing::error!(group = %deps.group, error = %crate::storage::health::error_chain(&e), "cannot open the state machine");
                ctx.stop();
            }
        }
    }
}

impl<M: StateMachine> Handler<ApplyBatch<M>> for ApplierActor<M> {
    type Result = ();

    fn handle(&mut self, batch: ApplyBatch<M>, ctx: &mut Context<Self>) {
        let Some(machine) = self.machine.as_mut() else {
            return;
        };
        let started = std::time::Instant::now();
        let clock = self.deps.clock.clone();
        let mut waiters: BTreeMap<LogIndex, (Term, WriteReply<M>)> = batch
            .waiters
            .into_iter()
            .map(|(i, t, r)| (i, (t, r)))
            .collect();
        // Writers are answered once the run is written (`end_batch`), not entry by entry.
        type Answer<M> = (
            WriteReply<M>,
            Result<WriteResult<<M as StateMachine>::Output>, RequestError>,
        );
        let mut answers: Vec<Answer<M>> = Vec::new();
        let mut failure = None;
        let mut gap = None;
        for entry in batch.entries {
            // Entries re-sent after a restart may already be applied.
            if entry.index <= self.applied {
                continue;
            }
            if entry.index != self.applied + 1 {
                // Applying past a gap would silently diverge from the other replicas (the
                // group restores the machine from a snapshot when its log no longer reaches
                // back to it). Stop; the restarted applier is resynced.
                tracing::error!(
                    group = %self.deps.group,
                    index = entry.index,
                    applied = self.applied,
                    "entry handed to the machine after a gap; restarting the applier"
                );
                gap = Some(entry.index);
                break;
            }
            let waiter = waiters.remove(&entry.index);
            let result = match &entry.payload {
                EntryPayload::Command(bytes) => match rmp_serde::from_slice::<M::Command>(bytes) {
                    Ok(command) => clock.time(|| machine.apply(entry.index, command)).map(Some),
                    Err(e) => {
                        // Every replica fails to decode the same bytes the same way, so
                        // skipping keeps them identical.
                        tracing::error!(index = entry.index, error = %e, "undecodable command skipped");
                        clock.time(|| machine.skip(entry.index)).map(|_| None)
                    }
                },
                EntryPayload::Noop | EntryPayload::Membership(_) => {
                    clock.time(|| machine.skip(entry.index)).map(|_| None)
                }
            };
            match result {
                Ok(output) => {
                    self.applied = entry.index;
                    if let Some((term, reply)) = waiter {
                        let answer = match output {
                            Some(output) if term == entry.term => Ok(WriteResult {
                                index: entry.index,
                                term,
                                output,
                            }),
                            _ => Err(RequestError::Dropped),
                        };
                        answers.push((reply, answer));
                    }
                }
                Err(e) => {
                    tracing::error!(index = entry.index, error = %e, "state machine failed to apply; restarting the applier");
                    let e = Arc::new(e);
                    if let Some((_, reply)) = waiter {
                        answers.push((reply, Err(machine_failed(&e))));
                    }
                    failure = Some(e);
                    break;
                }
            }
        }
        if failure.is_none() {
            let ended = clock.time(|| machine.end_batch());
            self.deps
                .labels
                .histogram("conclave_apply_batch_seconds")
                .record(started.elapsed().as_secs_f64());
            if let Err(e) = ended {
                tracing::error!(applied = self.applied, error = %e, "state machine failed to write a run of entries; restarting the applier");
                let e = Arc::new(e);
                // What was computed is not written: the outcome is unknown to the clients.
                for (_, answer) in &mut answers {
                    *answer = Err(machine_failed(&e));
                }
                failure = Some(e);
            }
        }
        // A storage error is reported before the writers hear of it: a client that got its
        // 500 and asks `/readyz` right away must find the node failed (answering first left a
        // window, on another thread, in which the node still looked healthy).
        if let Some(e) = &failure {
            if matches!(
                **e,
                StateMachineError::Storage(_) | StateMachineError::Store(_)
            ) {
                self.deps.health.failed(
                    self.deps.clock.component(),
                    crate::storage::health::StorageError::StateMachine(e.clone()),
                );
            }
        }
        for (reply, answer) in answers {
            let _ = reply.send(answer);
        }
        if failure.is_some() {
            // The replica must not go on with a state that missed an entry: stop, and let the
            // supervisor restart it from durable state. The node is not healthy until it is
            // restarted (a restart may not fix a full disk).
            ctx.stop();
            return;
        }
        if gap.is_some() {
            // The writers of the entries not applied learn nothing here: their outcome is
            // unknown (504), as for any applier restart.
            ctx.stop();
            return;
        }
        self.deps
            .applied_gauge
            .store(self.applied, Ordering::Relaxed);
        self.deps
            .labels
            .gauge("conclave_raft_applied_index")
            .set(self.applied as f64);
        self.serve_reads();
    }
}

impl<M: StateMachine> Handler<ReadAt<M>> for ApplierActor<M> {
    type Result = ();

    fn handle(&mut self, read: ReadAt<M>, _: &mut Context<Self>) {
        if read.index <= self.applied {
            let _ = read.reply.send(self.query(&read.query));
        } else {
            self.reads
                .entry(read.index)
                .or_default()
                .push((read.query, read.reply));
        }
    }
}

impl<M: StateMachine> Handler<AppliedIndex> for ApplierActor<M> {
    type Result = LogIndex;

    fn handle(&mut self, _: AppliedIndex, _: &mut Context<Self>) -> LogIndex {
        self.applied
    }
}

impl<M: StateMachine> Handler<TakeSnapshot> for ApplierActor<M> {
    type Result = Result<SnapshotSource, SnapshotError>;

    fn handle(&mut self, msg: TakeSnapshot, _: &mut Context<Self>) -> Self::Result {
        let group = self.deps.group;
        let clock = self.deps.clock.clone();
        let machine = self
            .machine
            .as_mut()
            .ok_or(SnapshotError::NotRunning { group })?;
        let started = std::time::Instant::now();
        clock.time(|| machine.sync())?;
        let synced = started.elapsed();
        self.deps
            .labels
            .histogram("conclave_snapshot_sync_seconds")
            .record(synced.as_secs_f64());
        if let Some(view) = clock.time(|| machine.snapshot_view())? {
            tracing::info!(
                %group,
                sync_ms = synced.as_millis() as u64,
                view_ms = (started.elapsed() - synced).as_millis() as u64,
                "state machine synced for a snapshot; its view is handed over"
            );
            return Ok(SnapshotSource::View(view));
        }
        // No isolated view: the image is written here, and nothing is applied meanwhile.
        let _call = clock.begin();
        let mut out = super::snapshotter::ProgressWriter::new(msg.store.create_pending()?, &clock);
        let index = machine.snapshot_to(&mut out)?;
        Ok(SnapshotSource::Written {
            index,
            writer: Box::new(out.into_inner()),
        })
    }
}

impl<M: StateMachine> Handler<RestoreFrom> for ApplierActor<M> {
    type Result = Result<LogIndex, SnapshotError>;

    fn handle(&mut self, msg: RestoreFrom, _: &mut Context<Self>) -> Self::Result {
        let group = self.deps.group;
        let index = msg.snapshot.meta.index;
        let clock = self.deps.clock.clone();
        let machine = self
            .machine
            .as_mut()
            .ok_or(SnapshotError::NotRunning { group })?;
        if index < self.applied {
            return Err(SnapshotError::Backwards {
                index,
                applied: self.applied,
            });
        }
        let reader = msg.store.reader(&msg.snapshot)?;
        {
            let _call = clock.begin();
            // Up to 1 MiB of catch-up: the pace holds from the first read.
            let paced = PacedReader::new(reader, msg.pace_bytes_per_s, 1 << 20);
            let mut input = ProgressReader::new(paced, &clock);
            let restored = machine.restore_from(index, &mut input);
            if let Err(e) = restored {
                // The verifying reader's typed reason (length, digest) beats the machine's
                // "truncated"/"I/O" view of it.
                if let Some(typed) = input.into_inner().into_inner().take_error() {
                    return Err(typed.into());
                }
                return Err(e.into());
            }
            // The restored state is the machine's durable base from now on.
            machine.sync()?;
        }
        tracing::info!(
            %group,
            index,
            term = msg.snapshot.meta.term,
            bytes = msg.snapshot.len,
            "state machine restored from a snapshot"
        );
        self.applied = index;
        self.deps.applied_gauge.store(index, Ordering::Relaxed);
        self.deps
            .labels
            .gauge("conclave_raft_applied_index")
            .set(index as f64);
        self.serve_reads();
        Ok(index)
    }
}

#[cfg(any(test, feature = "fault-injection"))]
impl<M: StateMachine> Handler<InjectPanic> for ApplierActor<M> {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, _: &mut Context<Self>) {
        panic!("injected panic in the applier (fault injection)");
    }
}

/// The answer to the requests a state-machine failure cut short: 500, the failure as source
/// (one failure, shared by every waiter of the batch).
fn machine_failed(e: &Arc<StateMachineError>) -> RequestError {
    RequestError::Internal(InternalError::Failed(SharedError(e.clone())))
}
