//! The applier actor: applies committed entries to the user's state machine, answers the
//! writes that were waiting for them, and serves reads once the state machine has caught up
//! with the index the read path asked for.
//!
//! It is restarted by its group's supervisor if it panics; the new instance reopens the state
//! machine from its factory and the group actor re-sends every committed entry after the
//! machine's durable applied index.

use super::handle::{RequestError, WriteResult};
use crate::state_machine::{LogIndex, StateMachine};
use actix::prelude::*;
use conclave_actors::raft::{Entry, EntryPayload, Term};
use conclave_actors::supervisor::ChildGuard;
use std::collections::BTreeMap;
use tokio::sync::oneshot;

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

/// Makes the actor panic, to test supervision (tests and the chaos harness only).
#[cfg(any(test, feature = "fault-injection"))]
#[derive(Message)]
#[rtype(result = "()")]
pub struct InjectPanic;

/// Reads waiting for the machine to reach an index.
type PendingReads<M> = BTreeMap<LogIndex, Vec<(<M as StateMachine>::Query, ReadReply<M>)>>;

/// The actor. See the module docs.
pub struct ApplierActor<M: StateMachine> {
    group: u64,
    machine: M,
    applied: LogIndex,
    reads: PendingReads<M>,
    /// Shared with the group actor for status pages and metrics.
    applied_gauge: std::sync::Arc<std::sync::atomic::AtomicU64>,
    _guard: ChildGuard,
}

impl<M: StateMachine> ApplierActor<M> {
    /// An applier over `machine`.
    pub fn new(
        group: u64,
        machine: M,
        applied_gauge: std::sync::Arc<std::sync::atomic::AtomicU64>,
        guard: ChildGuard,
    ) -> Self {
        let applied = machine.applied_index();
        applied_gauge.store(applied, std::sync::atomic::Ordering::Relaxed);
        ApplierActor {
            group,
            machine,
            applied,
            reads: BTreeMap::new(),
            applied_gauge,
            _guard: guard,
        }
    }

    fn serve_reads(&mut self) {
        while let Some(entry) = self.reads.first_entry() {
            if *entry.key() > self.applied {
                break;
            }
            for (query, reply) in entry.remove() {
                let _ = reply.send(Ok(self.machine.query(&query)));
            }
        }
    }
}

impl<M: StateMachine> Actor for ApplierActor<M> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1024);
    }
}

impl<M: StateMachine> Handler<ApplyBatch<M>> for ApplierActor<M> {
    type Result = ();

    fn handle(&mut self, batch: ApplyBatch<M>, ctx: &mut Context<Self>) {
        let mut waiters: BTreeMap<LogIndex, (Term, WriteReply<M>)> = batch
            .waiters
            .into_iter()
            .map(|(i, t, r)| (i, (t, r)))
            .collect();
        for entry in batch.entries {
            // Entries re-sent after a restart may already be applied.
            if entry.index <= self.applied {
                continue;
            }
            let waiter = waiters.remove(&entry.index);
            let result = match &entry.payload {
                EntryPayload::Command(bytes) => match rmp_serde::from_slice::<M::Command>(bytes) {
                    Ok(command) => self.machine.apply(entry.index, command).map(Some),
                    Err(e) => {
                        // Every replica fails to decode the same bytes the same way, so
                        // skipping keeps them identical.
                        tracing::error!(index = entry.index, error = %e, "undecodable command skipped");
                        self.machine.skip(entry.index).map(|_| None)
                    }
                },
                EntryPayload::Noop | EntryPayload::Membership(_) => {
                    self.machine.skip(entry.index).map(|_| None)
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
                        let _ = reply.send(answer);
                    }
                }
                Err(e) => {
                    // The replica must not go on with a state that missed an entry: stop, and
                    // let the supervisor restart it from durable state.
                    tracing::error!(index = entry.index, error = %e, "state machine failed to apply; restarting the applier");
                    if let Some((_, reply)) = waiter {
                        let _ = reply.send(Err(RequestError::Internal(e.to_string())));
                    }
                    ctx.stop();
                    return;
                }
            }
        }
        self.applied_gauge
            .store(self.applied, std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!("conclave_raft_applied_index", "group" => self.group.to_string())
            .set(self.applied as f64);
        self.serve_reads();
    }
}

impl<M: StateMachine> Handler<ReadAt<M>> for ApplierActor<M> {
    type Result = ();

    fn handle(&mut self, read: ReadAt<M>, _: &mut Context<Self>) {
        if read.index <= self.applied {
            let _ = read.reply.send(Ok(self.machine.query(&read.query)));
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

#[cfg(any(test, feature = "fault-injection"))]
impl<M: StateMachine> Handler<InjectPanic> for ApplierActor<M> {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, _: &mut Context<Self>) {
        panic!("injected panic in the applier (fault injection)");
    }
}
