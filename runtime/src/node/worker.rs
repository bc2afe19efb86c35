//! The Raft workers (issue 15): a small, fixed set of actors, one per arbiter (`[raft]
//! workers`), each driving the sans-IO cores of many groups through one
//! [`conclave_core::raft::Host`] — one timer structure per worker, one node-wide heartbeat
//! beat, coalesced heartbeats and quiescence, and at most one [`Frame`] per peer per drain.
//!
//! Group `g` lives on worker `g % workers` (a fixed partition, like Dragonboat's step
//! workers: no rebalancing state, and a restarted worker rebuilds exactly its own groups).
//! Next to its worker, on the same arbiter thread, each group keeps a *shell*
//! ([`super::group::GroupActor`]): its queues, waiters, snapshot pipeline and membership
//! tracking. A shell has no core and no timer of its own: it borrows its group's core from the
//! worker's host ([`WorkerCell`], shared by the actors of one thread) for each command, and
//! receives the actions the worker's drains produce for its group ([`FromWorker`]). Shells
//! are actors only so that each keeps its own mailbox and futures; they cost no thread.
//!
//! The worker handles what its mailbox holds (frames from the router, gossip reports, the
//! transport's lost connections, drain requests from its shells), then drains the host once: every peer's messages leave as one
//! [`WireMessage::RaftFrame`] over the peer's link (`try_send`: a full link drops the frame
//! and counts it, Raft retransmits), every group's other actions go to its shell (a polled
//! group without actions is published by the worker, [`Publish`]: no message). It arms one
//! timer, at [`Host::next_deadline`](conclave_core::raft::Host::next_deadline).
//!
//! **Persistence.** The shells put their persist requests (and compactions) into the cell's
//! outbox; the outbox goes to the log store as one [`PersistBatch`] once the shells a drain
//! woke have run — sent by the last of them, before it hands committed entries to its applier
//! ([`WorkerCell::shell_ran`]), or else by the worker's [`FlushPersists`] — and the log store
//! answers with one [`Persisted`] per WAL sync
//! naming every request of this worker it made durable. The worker hands each core its
//! `persisted` itself (a request of a shell instance that has since restarted is ignored) and
//! drains: no message, reply channel or waiting future per group. A shell that stops drops
//! what it left in the outbox, so its restarted instance recovers from a log store that
//! receives nothing more of the old one.
//!
//! **Supervision.** Workers run under the node's `raft-workers` supervisor (one-for-one). A
//! worker that panics loses its host (the cores may be half-updated); the restarted worker
//! starts an empty host and has every shell of its arbiter restart, and each restarted shell
//! rebuilds its core from the log store (as any restarted group does).

use super::gossip::GossipShared;
use super::idle_poll::IdlePoll;
use super::log_store_actor::{BatchItem, LogStoreActor, PersistBatch, Persisted};
use super::peers::Peers;
use super::wire::WireMessage;
use super::StopActor;
use crate::storage::log_store::LogStoreError;
use actix::prelude::*;
use conclave_actors::supervisor::{
    ChildGuard, Factory, RestartPolicy, Slot, StopSupervisor, Strategy, Supervisor,
    SupervisorBuilder,
};
use conclave_core::raft::{
    Action, EntryPayload, Frame, GroupId, Host, HostAction, HostConfig, LogIndex, Message,
    MessageBody, Millis, NodeId, PersistRequest, Raft, Term,
};
use conclave_core::swim::Event;
use conclave_transport::TrySendError;
use std::cell::{Cell, Ref, RefCell, RefMut};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;

thread_local! {
    /// The worker cells of this thread, by node ([`WorkerDeps::cell_key`]): one on each
    /// worker's arbiter, set by its first worker. A thread can carry worker 0 of several
    /// nodes (each node's worker 0 runs on the arbiter it was started on, and tests start many
    /// nodes on one thread), so the cells are told apart by node.
    static CELL: RefCell<BTreeMap<u64, Rc<WorkerCell>>> = const { RefCell::new(BTreeMap::new()) };
}

/// Source of [`WorkerDeps::cell_key`]: unique per node started in this process.
static NEXT_CELL_KEY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A fresh key for a node's worker cells ([`WorkerDeps::cell_key`]).
pub(super) fn next_cell_key() -> u64 {
    NEXT_CELL_KEY.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// What a worker tells one of its shells.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) enum FromWorker {
    /// The actions a drain produced for the shell's group (none only when the shell asked to
    /// see every poll, [`Publish::every_poll`]; otherwise the worker publishes the group's
    /// state itself).
    Actions(Vec<Action>),
    /// The worker restarted with an empty host: the shell stops, and its supervisor starts it
    /// again from storage.
    Restart,
    /// Persist request `seq` of the group failed (`None`: the log store is gone): the shell
    /// stops (its supervisor restarts it; a failed store refuses its recovery).
    PersistFailed {
        /// The request.
        seq: u64,
        /// The store's error.
        error: Option<Arc<LogStoreError>>,
    },
}

/// What a drain publishes itself for a polled group that has no actions for its shell (no
/// message to the shell: a poll that only sent messages, e.g. a follower's acknowledgement
/// after its persist, or only moved a leader's progress, changes nothing but what is
/// published).
pub(super) trait Publish {
    /// Publishes the core's state (the group's shared snapshot and gauges).
    fn publish(&self, core: &Raft);
    /// Whether the shell must see every poll, with or without actions (it waits on the core's
    /// state, e.g. for a membership change to commit).
    fn every_poll(&self) -> bool;
}

/// A registered shell.
struct Shell {
    /// Its registration (a restarted shell registers again before the old instance's state
    /// is dropped).
    instance: u64,
    /// Its mailbox.
    recipient: Recipient<FromWorker>,
    /// Its publisher.
    publish: Rc<dyn Publish>,
}

/// Most items waiting in a worker's outbox for the log store: past it, shells keep their
/// persist requests in their own queues (which refuse proposals when long).
const OUTBOX_LIMIT: usize = 16 * 1024;

/// The persist requests and compactions the shells of one worker hand the log store, sent as
/// one [`PersistBatch`] per flush (a message, a reply channel and a waiting future per group
/// per drain were most of a 64-shard node's hand-off cost).
#[derive(Default)]
struct Outbox {
    /// In order, each with its shell's registration.
    items: Vec<(u64, BatchItem)>,
    /// The node's log store (every shell of a node has the same).
    log_store: Option<Addr<LogStoreActor>>,
}

fn item_group(item: &BatchItem) -> GroupId {
    match item {
        BatchItem::Persist { group, .. } | BatchItem::Compact { group, .. } => *group,
    }
}

/// The state a worker shares with the shells of its arbiter (one thread: `Rc`, `RefCell`).
pub(super) struct WorkerCell {
    host: RefCell<Host>,
    /// The shells by group.
    shells: RefCell<BTreeMap<GroupId, Shell>>,
    next_instance: Cell<u64>,
    drain_scheduled: Cell<bool>,
    /// What the shells hand the log store, flushed by the worker.
    outbox: RefCell<Outbox>,
    flush_scheduled: Cell<bool>,
    /// Shells handed actions by the last drain that have not carried them out yet: the last
    /// one to do so sends the outbox itself ([`WorkerCell::shell_ran`]).
    awaiting_shells: Cell<usize>,
    /// The worker's index (its [`PersistBatch`]es name it).
    worker_index: Cell<usize>,
    /// Where the log store answers this worker's batches (the worker, once started).
    persisted_to: RefCell<Option<Recipient<Persisted>>>,
    worker: RefCell<Option<Addr<RaftWorker>>>,
    /// Worker instances started on this thread so far.
    worker_starts: Cell<u64>,
    /// Told of every batch sent to the log store: a write is under way (`idle_poll`).
    idle_poll: Option<IdlePoll>,
}

impl WorkerCell {
    /// The node's cell on the current thread, created empty if there is none yet. Called on a
    /// worker's arbiter before anything else of the node runs there, so the shells started on
    /// it find it.
    pub(super) fn install(deps: &WorkerDeps) -> Rc<WorkerCell> {
        let now = deps.epoch.elapsed().as_millis() as Millis;
        CELL.with(|c| {
            c.borrow_mut()
                .entry(deps.cell_key)
                .or_insert_with(|| {
                    Rc::new(WorkerCell::new(
                        Host::new(host_config(deps), now),
                        deps.idle_poll.clone(),
                    ))
                })
                .clone()
        })
    }

    /// An empty cell around `host`: no shells, nothing queued, worker 0 until a worker starts.
    fn new(host: Host, idle_poll: Option<IdlePoll>) -> WorkerCell {
        WorkerCell {
            host: RefCell::new(host),
            shells: RefCell::new(BTreeMap::new()),
            next_instance: Cell::new(0),
            drain_scheduled: Cell::new(false),
            outbox: RefCell::new(Outbox::default()),
            flush_scheduled: Cell::new(false),
            awaiting_shells: Cell::new(0),
            worker_index: Cell::new(0),
            persisted_to: RefCell::new(None),
            worker: RefCell::new(None),
            worker_starts: Cell::new(0),
            idle_poll,
        }
    }

    /// The cell of the node `key` ([`WorkerDeps::cell_key`]) on the current thread; `None` off
    /// that node's workers' arbiters.
    pub(super) fn current(key: u64) -> Option<Rc<WorkerCell>> {
        CELL.with(|c| c.borrow().get(&key).cloned())
    }

    /// Drops the node `key`'s cell of the current thread (the node stopped; its worker 0 ran
    /// on a thread that outlives it).
    fn uninstall(key: u64) {
        // Taken out first, dropped after the borrow: a cell's drop drops actor addresses.
        let cell = CELL.with(|c| c.borrow_mut().remove(&key));
        drop(cell);
    }

    /// Registers `group`'s shell; returns its instance number (for [`WorkerCell::unregister`]).
    pub(super) fn register(
        &self,
        group: GroupId,
        recipient: Recipient<FromWorker>,
        publish: Rc<dyn Publish>,
    ) -> u64 {
        let instance = self.next_instance.get() + 1;
        self.next_instance.set(instance);
        self.shells.borrow_mut().insert(
            group,
            Shell {
                instance,
                recipient,
                publish,
            },
        );
        instance
    }

    /// Forgets `group`'s shell `instance` and stops hosting its core, unless a newer instance
    /// registered since. What the instance left in the outbox is dropped: a restarted shell
    /// recovers from the log store, which must not receive the old instance's requests after
    /// that (as the old instance's own queue, unsent, died with it).
    pub(super) fn unregister(&self, group: GroupId, instance: u64) {
        if let Ok(mut outbox) = self.outbox.try_borrow_mut() {
            outbox
                .items
                .retain(|(tag, item)| *tag != instance || item_group(item) != group);
        }
        let Ok(mut shells) = self.shells.try_borrow_mut() else {
            return;
        };
        if shells.get(&group).is_some_and(|s| s.instance == instance) {
            shells.remove(&group);
            if let Ok(mut host) = self.host.try_borrow_mut() {
                host.remove_group(group);
            }
        }
    }

    /// Starts hosting `core` (replacing a core a previous shell instance left).
    pub(super) fn add(&self, core: Raft) -> Result<(), conclave_core::raft::HostError> {
        let mut host = self.host.borrow_mut();
        host.remove_group(core.group());
        host.add_group(core)
    }

    /// Lends `group`'s core for a command (a quiesced group wakes, and is polled at the next
    /// drain); `None` if not hosted. The borrow must end before the shell calls anything that
    /// borrows the host again.
    pub(super) fn core_mut(&self, now: Millis, group: GroupId) -> Option<RefMut<'_, Raft>> {
        RefMut::filter_map(self.host.borrow_mut(), |h| h.group_mut(now, group)).ok()
    }

    /// Lends `group`'s core for reading (no wake-up); `None` if not hosted.
    pub(super) fn core(&self, group: GroupId) -> Option<Ref<'_, Raft>> {
        Ref::filter_map(self.host.borrow(), |h| h.raft(group)).ok()
    }

    /// Whether the outbox takes another persist request (shells keep theirs queued while it
    /// does not: the log store's mailbox is full).
    pub(super) fn persist_room(&self) -> bool {
        self.outbox.borrow().items.len() < OUTBOX_LIMIT
    }

    /// Hands `group`'s persist request to the log store (with the worker's next flush), from
    /// the shell registered as `instance`.
    pub(super) fn persist(
        &self,
        log_store: &Addr<LogStoreActor>,
        group: GroupId,
        instance: u64,
        req: PersistRequest,
    ) {
        {
            let mut outbox = self.outbox.borrow_mut();
            outbox.log_store.get_or_insert_with(|| log_store.clone());
            outbox.items.push((
                instance,
                BatchItem::Persist {
                    group,
                    tag: instance,
                    req,
                },
            ));
        }
        self.request_flush();
    }

    /// Has the log store compact `group`'s log up to `index` (in order with the group's
    /// persist requests).
    pub(super) fn compact(
        &self,
        log_store: &Addr<LogStoreActor>,
        group: GroupId,
        instance: u64,
        index: LogIndex,
        term: Term,
    ) {
        {
            let mut outbox = self.outbox.borrow_mut();
            outbox.log_store.get_or_insert_with(|| log_store.clone());
            outbox
                .items
                .push((instance, BatchItem::Compact { group, index, term }));
        }
        self.request_flush();
    }

    /// A shell has carried out the persist requests of the actions the last drain handed it.
    /// The last of those shells sends the outbox to the log store at once, before any shell
    /// hands committed entries to its applier: on a follower the log store's `fdatasync` is
    /// on a write's critical path and the apply is not, and this saves the trip through the
    /// worker's mailbox. The batch stays one per drain (the earlier shells only add to it).
    /// Anything this cannot send (a full or stopped log store) is left to the worker's
    /// [`FlushPersists`], which [`WorkerCell::request_flush`] has already asked for.
    pub(super) fn shell_ran(&self) {
        // Only the shell that completes the count sends: one batch per drain. A shell that
        // runs when none is counted (a later drain reset the count) leaves its requests to the
        // worker's flush.
        let awaiting = self.awaiting_shells.get();
        if awaiting == 0 {
            return;
        }
        self.awaiting_shells.set(awaiting - 1);
        if awaiting > 1 {
            return;
        }
        let Some(reply) = self.persisted_to.borrow().clone() else {
            return;
        };
        if let Err((tags, SendError::Full(batch) | SendError::Closed(batch))) =
            self.send_outbox(reply)
        {
            // The worker's flush retries or fails the shells.
            self.keep_outbox(tags, batch.items);
            self.request_flush();
        }
    }

    /// Sends the outbox to the log store as one [`PersistBatch`] answered to `reply` (nothing
    /// to send is `Ok`). A refused batch comes back with its items' shell tags, in order.
    fn send_outbox(
        &self,
        reply: Recipient<Persisted>,
    ) -> Result<(), (Vec<u64>, SendError<PersistBatch>)> {
        let (log_store, items) = {
            let mut outbox = self.outbox.borrow_mut();
            if outbox.items.is_empty() {
                return Ok(());
            }
            let Some(log_store) = outbox.log_store.clone() else {
                return Ok(());
            };
            (log_store, std::mem::take(&mut outbox.items))
        };
        let (tags, items): (Vec<u64>, Vec<BatchItem>) = items.into_iter().unzip();
        // Counted only for the idle poller (`None`: it is off).
        let entries = self.idle_poll.as_ref().map(|_| {
            items
                .iter()
                .map(|i| match i {
                    BatchItem::Persist { req, .. } => req.entries.len(),
                    _ => 0,
                })
                .sum::<usize>()
        });
        let batch = PersistBatch {
            worker: self.worker_index.get(),
            reply,
            items,
        };
        let sent = log_store.try_send(batch).map_err(|e| (tags, e));
        // After the send: marking may wake the poller, which is not on this write's path.
        if let (Some(poll), Some(entries)) = (&self.idle_poll, entries) {
            poll.mark(entries);
        }
        sent
    }

    /// Puts a refused batch's items back into the outbox, in order (the shells share this
    /// thread: nothing was added meanwhile).
    fn keep_outbox(&self, tags: Vec<u64>, items: Vec<BatchItem>) {
        self.outbox.borrow_mut().items = tags.into_iter().zip(items).collect();
    }

    /// Asks the worker to send the outbox once the messages already queued are handled (the
    /// shells polled by one drain fill it before the worker runs again).
    fn request_flush(&self) {
        if self.flush_scheduled.get() {
            return;
        }
        if let Some(worker) = self.worker.borrow().as_ref() {
            self.flush_scheduled.set(true);
            worker.do_send(FlushPersists);
        }
    }

    /// Asks the worker to drain its host once the messages already queued are handled.
    pub(super) fn request_drain(&self) {
        if self.drain_scheduled.get() {
            return;
        }
        if let Some(worker) = self.worker.borrow().as_ref() {
            self.drain_scheduled.set(true);
            worker.do_send(Drain);
        }
    }
}

/// What every worker needs.
pub(super) struct WorkerDeps {
    /// This node.
    pub(super) id: NodeId,
    /// The beat: `[raft] heartbeat_interval_ms`.
    pub(super) heartbeat_interval_ms: Millis,
    /// Whether idle groups quiesce (`[raft] quiesce`).
    pub(super) quiesce: bool,
    /// Links to peers.
    pub(super) peers: Arc<Peers>,
    /// Gossip's events (peer down / up).
    pub(super) gossip: Arc<GossipShared>,
    /// The node's monotonic epoch (the cores' clock).
    pub(super) epoch: Instant,
    /// Most approximate bytes of entries in one frame: half the transport's frame limit, like
    /// a core's `max_bytes_per_append`.
    pub(super) frame_bytes: usize,
    /// Tells this node's worker cells from other nodes' on a shared thread
    /// ([`next_cell_key`]).
    pub(super) cell_key: u64,
    /// The node's idle poller, marked when entries go to the log store (`None`: off).
    pub(super) idle_poll: Option<IdlePoll>,
}

/// The node's Raft workers: their arbiters (each group's shell runs on its worker's), the live
/// instances and their supervisor.
pub(super) struct Workers {
    /// Where each worker runs: worker 0 on the node's own arbiter, the others on `owned`.
    arbiters: Vec<ArbiterHandle>,
    /// The arbiters started for workers 1.. (the node's arbiter is not the workers' to stop).
    owned: Vec<Arbiter>,
    cell_key: u64,
    slots: Vec<Slot<RaftWorker>>,
    supervisor: Addr<Supervisor>,
}

impl Workers {
    /// Starts `count` workers (at least one) under a one-for-one supervisor: worker 0 on
    /// `home`, the node's arbiter, which also runs the transport's reader and writer tasks and
    /// the inbound dispatch; every other worker on an arbiter of its own.
    ///
    /// Why worker 0 shares the transport's thread: a write's critical path crosses the
    /// transport four times (the leader sends, a follower receives, the follower acknowledges,
    /// the leader receives), and between a worker and the transport on another thread each
    /// crossing is a wake-up of a thread that then waits for a core — on a busy machine the
    /// larger part of a one-client write's latency. On one thread they are task wakes. Group 0
    /// (the only group of an unsharded node, and the shard map's group) lives on worker 0.
    pub(super) fn start(count: usize, deps: Arc<WorkerDeps>, home: ArbiterHandle) -> Workers {
        let count = count.max(1);
        let mut arbiters = Vec::with_capacity(count);
        let mut owned = Vec::with_capacity(count.saturating_sub(1));
        let mut slots = Vec::with_capacity(count);
        let mut builder = SupervisorBuilder::new("raft-workers").policy(RestartPolicy {
            strategy: Strategy::OneForOne,
            ..RestartPolicy::default()
        });
        for index in 0..count {
            let arbiter = if index == 0 {
                home.clone()
            } else {
                let a = Arbiter::new();
                let handle = a.handle();
                super::name_thread(&handle, format!("raft-worker-{index}"));
                owned.push(a);
                handle
            };
            {
                // First on the thread: the shells started there find the cell.
                let deps = deps.clone();
                arbiter.spawn_fn(move || {
                    WorkerCell::install(&deps);
                });
            }
            let slot: Slot<RaftWorker> = Slot::new();
            let handle = arbiter.clone();
            let deps = deps.clone();
            let f: Factory = {
                let slot = slot.clone();
                Box::new(move |guard| {
                    let deps = deps.clone();
                    let addr = RaftWorker::start_in_arbiter(&handle, move |_| {
                        RaftWorker::new(index, deps, guard)
                    });
                    slot.set(addr.clone());
                    Box::new(move || addr.do_send(StopActor))
                })
            };
            builder = builder.child(format!("worker-{index}"), f);
            arbiters.push(arbiter);
            slots.push(slot);
        }
        Workers {
            cell_key: deps.cell_key,
            arbiters,
            owned,
            slots,
            supervisor: builder.start(),
        }
    }

    /// Which worker drives `group`.
    pub(super) fn index(&self, group: GroupId) -> usize {
        (group.get() % self.slots.len() as u64) as usize
    }

    /// Number of workers.
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The arbiter of `group`'s worker (where the group's shell runs).
    pub(super) fn arbiter(&self, group: GroupId) -> ArbiterHandle {
        self.arbiters[self.index(group)].clone()
    }

    /// The live worker `index`.
    pub(super) fn worker(&self, index: usize) -> Option<Addr<RaftWorker>> {
        self.slots.get(index).and_then(Slot::get)
    }

    /// Stops the workers (after every group stopped).
    pub(super) async fn stop(&self) {
        let _ = self.supervisor.send(StopSupervisor).await;
    }

    /// The key of this node's worker cells, for the shells ([`WorkerCell::current`]).
    pub(super) fn cell_key(&self) -> u64 {
        self.cell_key
    }

    /// Ends the threads of workers 1.. (after [`Workers::stop`]); worker 0's is the node's,
    /// which outlives the node: only the node's cell is dropped there.
    pub(super) fn stop_arbiters(&self) {
        let key = self.cell_key;
        if let Some(home) = self.arbiters.first() {
            home.spawn_fn(move || WorkerCell::uninstall(key));
        }
        for a in &self.owned {
            a.stop();
        }
    }
}

/// A frame from a peer for groups of this worker (admitted and split by the router).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct InboundFrame(pub Frame);

#[derive(Message)]
#[rtype(result = "()")]
struct Drain;

#[derive(Message)]
#[rtype(result = "()")]
struct FlushPersists;

#[derive(Message)]
#[rtype(result = "()")]
struct Gossip(Event);

/// The transport lost its connection to this node.
#[derive(Message)]
#[rtype(result = "()")]
struct ConnectionLost(NodeId);

/// Makes the worker panic, to test supervision (tests and the chaos harness only).
#[cfg(any(test, feature = "fault-injection"))]
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct InjectPanic;

/// The worker actor. See the module docs.
pub(super) struct RaftWorker {
    index: usize,
    deps: Arc<WorkerDeps>,
    cell: Rc<WorkerCell>,
    /// The armed timer and its deadline.
    timer: Option<(Millis, SpawnHandle)>,
    out: Vec<HostAction>,
    /// `conclave_raft_frames_sent_total`, registered once (it is counted for every frame).
    frames_sent: metrics::Counter,
    _guard: ChildGuard,
}

impl RaftWorker {
    /// Worker `index`; must be built on its own arbiter (it owns that thread's cell). A
    /// restarted worker replaces the host and has every shell restart.
    pub(super) fn new(index: usize, deps: Arc<WorkerDeps>, guard: ChildGuard) -> Self {
        let now = deps.epoch.elapsed().as_millis() as Millis;
        let cell = WorkerCell::install(&deps);
        let starts = cell.worker_starts.get();
        cell.worker_starts.set(starts + 1);
        cell.drain_scheduled.set(false);
        cell.flush_scheduled.set(false);
        if starts > 0 {
            // The previous instance panicked: its host may be half-updated.
            *cell.host.borrow_mut() = Host::new(host_config(&deps), now);
            let shells: Vec<Recipient<FromWorker>> = cell
                .shells
                .borrow()
                .values()
                .map(|s| s.recipient.clone())
                .collect();
            tracing::warn!(
                worker = index,
                groups = shells.len(),
                "raft worker restarted; its groups restart from storage"
            );
            for shell in shells {
                shell.do_send(FromWorker::Restart);
            }
        }
        RaftWorker {
            index,
            deps,
            cell,
            timer: None,
            out: Vec::new(),
            frames_sent: metrics::counter!("conclave_raft_frames_sent_total"),
            _guard: guard,
        }
    }

    fn now(&self) -> Millis {
        self.deps.epoch.elapsed().as_millis() as Millis
    }

    fn drain(&mut self, ctx: &mut Context<Self>) {
        self.cell.drain_scheduled.set(false);
        let mut out = std::mem::take(&mut self.out);
        let (polled, next) = {
            let mut host = self.cell.host.borrow_mut();
            host.drain(&mut out);
            (host.polled().to_vec(), host.next_deadline())
        };
        let mut actions: BTreeMap<GroupId, Vec<Action>> =
            polled.into_iter().map(|g| (g, Vec::new())).collect();
        for a in out.drain(..) {
            match a {
                HostAction::Send(frame) => self.send(frame),
                HostAction::Group { group, action } => {
                    actions.entry(group).or_default().push(action)
                }
            }
        }
        self.out = out;
        let mut awaiting = 0;
        {
            let shells = self.cell.shells.borrow();
            let host = self.cell.host.borrow();
            for (group, actions) in actions {
                let Some(shell) = shells.get(&group) else {
                    continue;
                };
                if actions.is_empty() && !shell.publish.every_poll() {
                    // Polled for a change only the published state shows.
                    if let Some(core) = host.raft(group) {
                        shell.publish.publish(core);
                    }
                    continue;
                }
                // Unbounded: persists and applies must not be lost (the shell's own queues
                // bound the backlog and refuse proposals past it).
                shell.recipient.do_send(FromWorker::Actions(actions));
                awaiting += 1;
            }
        }
        self.cell.awaiting_shells.set(awaiting);
        self.arm(next, ctx);
    }

    /// Sends the outbox to the log store as one batch. A full mailbox keeps it for a retry
    /// 1 ms later; a stopped log store fails every shell that had a request in it.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        self.cell.flush_scheduled.set(false);
        match self.cell.send_outbox(ctx.address().recipient()) {
            Ok(()) => {}
            Err((tags, SendError::Full(batch))) => {
                self.cell.keep_outbox(tags, batch.items);
                self.cell.flush_scheduled.set(true);
                ctx.run_later(Duration::from_millis(1), |act, ctx| act.flush(ctx));
            }
            Err((tags, SendError::Closed(batch))) => {
                let shells = self.cell.shells.borrow();
                for (tag, item) in tags.into_iter().zip(batch.items) {
                    if let BatchItem::Persist { group, req, .. } = item {
                        if let Some(shell) = shells.get(&group).filter(|s| s.instance == tag) {
                            shell.recipient.do_send(FromWorker::PersistFailed {
                                seq: req.seq,
                                error: None,
                            });
                        }
                    }
                }
            }
        }
    }

    /// One timer for every group of the worker.
    fn arm(&mut self, next: Option<Millis>, ctx: &mut Context<Self>) {
        if self.timer.as_ref().map(|(at, _)| *at) == next {
            return;
        }
        if let Some((_, h)) = self.timer.take() {
            ctx.cancel_future(h);
        }
        let Some(at) = next else {
            return;
        };
        let delay = Duration::from_millis(at.saturating_sub(self.now()));
        let handle = ctx.run_later(delay, |act, ctx| {
            act.timer = None;
            let now = act.now();
            act.cell.host.borrow_mut().tick(now);
            act.drain(ctx);
        });
        self.timer = Some((at, handle));
    }

    /// Sends a drain's frame to its peer, split when its entries would not fit a transport
    /// frame (each group's messages stay in order).
    fn send(&self, frame: Frame) {
        let to = frame.to;
        let Some(link) = self.deps.peers.link(to) else {
            // Unknown or removed peer, or the node stops: Raft retransmits.
            return;
        };
        for frame in split(frame, self.deps.frame_bytes) {
            self.frames_sent.increment(1);
            match link.try_send(WireMessage::RaftFrame(frame)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    metrics::counter!("conclave_raft_messages_dropped_total",
                        "peer" => to.to_string(), "reason" => "queue_full")
                    .increment(1);
                }
                Err(TrySendError::Closed(_)) => {
                    tracing::debug!(worker = self.index, peer = %to, "link closed; frame dropped");
                }
                Err(TrySendError::Encode(_, e)) => {
                    tracing::error!(worker = self.index, peer = %to, error = %e, "raft frame cannot be framed; dropped");
                }
            }
        }
    }
}

fn host_config(deps: &WorkerDeps) -> HostConfig {
    HostConfig {
        id: deps.id,
        heartbeat_interval_ms: deps.heartbeat_interval_ms,
        quiesce: deps.quiesce,
    }
}

/// About how many bytes `m` takes on the wire.
fn approx_bytes(m: &Message) -> usize {
    match &m.body {
        MessageBody::AppendEntries { entries, .. } => {
            64 + entries
                .iter()
                .map(|e| match &e.payload {
                    EntryPayload::Command(c) => 32 + c.len(),
                    EntryPayload::Noop => 32,
                    EntryPayload::Membership(m) => 64 + 64 * m.all().count(),
                })
                .sum::<usize>()
        }
        _ => 64,
    }
}

/// Splits `frame` so each part's messages stay within `limit` approximate bytes (a message
/// larger than that goes alone); heartbeats, answers and wake-ups ride in the first part.
fn split(mut frame: Frame, limit: usize) -> Vec<Frame> {
    let total: usize = frame.messages.iter().map(approx_bytes).sum();
    if total <= limit {
        return vec![frame];
    }
    let messages = std::mem::take(&mut frame.messages);
    let (from, to) = (frame.from, frame.to);
    let mut parts = vec![frame];
    let mut bytes = 0;
    for m in messages {
        let b = approx_bytes(&m);
        let last = parts.len() - 1;
        if bytes + b > limit && !parts[last].messages.is_empty() {
            parts.push(Frame {
                from,
                to,
                ..Frame::default()
            });
            bytes = 0;
        }
        bytes += b;
        let last = parts.len() - 1;
        parts[last].messages.push(m);
    }
    parts
}

impl Actor for RaftWorker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(8192);
        *self.cell.worker.borrow_mut() = Some(ctx.address());
        *self.cell.persisted_to.borrow_mut() = Some(ctx.address().recipient());
        self.cell.worker_index.set(self.index);
        // What the shells queued while no worker ran (a restart).
        self.flush(ctx);
        // Gossip's failure detector wakes quiesced followers of a dead leader.
        let mut events = self.deps.gossip.subscribe();
        let addr = ctx.address();
        ctx.spawn(
            async move {
                loop {
                    match events.recv().await {
                        Ok(e) => addr.do_send(Gossip(e)),
                        // A lost report: the next one (or an election timeout, for groups
                        // still ticking) catches up.
                        Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => break,
                    }
                }
            }
            .into_actor(self),
        );
        // So does the transport, sooner: a crashed peer's connection closes at once, while
        // gossip suspects it only after a failed probe round.
        let mut losses = self.deps.peers.connection_losses();
        let addr = ctx.address();
        ctx.spawn(
            async move {
                loop {
                    match losses.recv().await {
                        Ok(l) => addr.do_send(ConnectionLost(l.peer)),
                        // Missed reports: gossip still reports a peer that stays away.
                        Err(RecvError::Lagged(_)) => continue,
                        Err(RecvError::Closed) => break,
                    }
                }
            }
            .into_actor(self),
        );
        self.drain(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Ok(mut w) = self.cell.worker.try_borrow_mut() {
            *w = None;
        }
    }
}

impl Handler<InboundFrame> for RaftWorker {
    type Result = ();

    fn handle(&mut self, msg: InboundFrame, _: &mut Context<Self>) {
        let now = self.now();
        self.cell.host.borrow_mut().handle_frame(now, msg.0);
        self.cell.request_drain();
    }
}

impl Handler<FlushPersists> for RaftWorker {
    type Result = ();

    fn handle(&mut self, _: FlushPersists, ctx: &mut Context<Self>) {
        self.flush(ctx);
    }
}

impl Handler<Persisted> for RaftWorker {
    type Result = ();

    /// The log store's answer for this worker's requests one WAL sync made durable: each
    /// group's core learns it here, on the worker (no message to its shell); the drain that
    /// follows hands out what that released.
    fn handle(&mut self, msg: Persisted, _: &mut Context<Self>) {
        let now = self.now();
        let shells = self.cell.shells.borrow();
        // Only the shell instance that sent a request may learn its answer: a restarted one
        // recovered its core from the log store and numbers its requests afresh.
        let current = |group: GroupId, tag: u64| shells.get(&group).filter(|s| s.instance == tag);
        match msg.result {
            Ok(()) => {
                let mut host = self.cell.host.borrow_mut();
                for r in msg.requests {
                    if current(r.group, r.tag).is_some() {
                        if let Some(core) = host.group_mut(now, r.group) {
                            core.persisted(now, r.seq);
                        }
                    }
                }
            }
            Err(e) => {
                for r in msg.requests {
                    if let Some(shell) = current(r.group, r.tag) {
                        shell.recipient.do_send(FromWorker::PersistFailed {
                            seq: r.seq,
                            error: Some(e.clone()),
                        });
                    }
                }
            }
        }
        drop(shells);
        self.cell.request_drain();
    }
}

impl Handler<Drain> for RaftWorker {
    type Result = ();

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) {
        self.drain(ctx);
    }
}

impl Handler<Gossip> for RaftWorker {
    type Result = ();

    fn handle(&mut self, msg: Gossip, _: &mut Context<Self>) {
        let now = self.now();
        let mut host = self.cell.host.borrow_mut();
        match msg.0 {
            Event::Suspect(m) | Event::Dead(m) | Event::Left(m) => host.peer_down(now, m.id),
            Event::Alive(m) | Event::Joined(m) => host.peer_up(now, m.id),
            _ => return,
        }
        drop(host);
        self.cell.request_drain();
    }
}

impl Handler<ConnectionLost> for RaftWorker {
    type Result = ();

    fn handle(&mut self, msg: ConnectionLost, _: &mut Context<Self>) {
        let now = self.now();
        self.cell.host.borrow_mut().peer_unreachable(now, msg.0);
        self.cell.request_drain();
    }
}

impl Handler<StopActor> for RaftWorker {
    type Result = ();

    fn handle(&mut self, _: StopActor, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

#[cfg(any(test, feature = "fault-injection"))]
impl Handler<InjectPanic> for RaftWorker {
    type Result = ();

    fn handle(&mut self, _: InjectPanic, _: &mut Context<Self>) {
        panic!("injected panic in a raft worker (fault injection)");
    }
}

#[cfg(test)]
mod tests {
    use super::super::log_store_actor::PersistedForwarder;
    use super::*;
    use crate::config::PersistenceStrategy;
    use crate::storage::health::StorageHealth;
    use crate::storage::log_store::LogStore;
    use crate::storage::wal::WalOptions;
    use conclave_core::raft::{CoalescedHeartbeat, Entry};

    fn one_entry(group: u64) -> PersistRequest {
        PersistRequest {
            seq: group,
            hard_state: None,
            truncate_from: None,
            entries: vec![Entry {
                index: 1,
                term: 1,
                payload: EntryPayload::Noop,
            }],
            snapshot: None,
        }
    }

    #[actix::test]
    async fn the_last_shell_a_drain_woke_sends_the_drains_batch_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (store, recovered) = LogStore::open(dir.path(), WalOptions::default()).unwrap();
        let log_store = LogStoreActor::new(
            store,
            recovered,
            PersistenceStrategy::DiskFirst,
            1,
            1000,
            Arc::new(StorageHealth::new()),
        )
        .start();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let poller = super::super::idle_poll::IdlePoller::start(Duration::from_secs(60))
            .unwrap()
            .unwrap();
        let cell = WorkerCell::new(
            Host::new(
                HostConfig {
                    id: NodeId::new(1),
                    heartbeat_interval_ms: 100,
                    quiesce: false,
                },
                0,
            ),
            Some(poller.handle()),
        );
        cell.worker_index.set(3);
        *cell.persisted_to.borrow_mut() = Some(PersistedForwarder(tx).start().recipient());
        // A drain handed actions to two shells: the first one's request waits for the second.
        cell.awaiting_shells.set(2);
        cell.persist(&log_store, GroupId::new(1), 7, one_entry(1));
        cell.shell_ran();
        assert_eq!(cell.outbox.borrow().items.len(), 1);
        assert!(!poller.handle().spinning_allowed());
        cell.persist(&log_store, GroupId::new(2), 8, one_entry(2));
        cell.shell_ran();
        assert!(cell.outbox.borrow().items.is_empty());
        // A batch of two entries is light: the idle poller was marked.
        assert!(poller.handle().spinning_allowed());
        // One batch: one sync answers both, in order, with their shells' tags.
        let answer = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the second shell sends the batch")
            .unwrap();
        assert!(answer.result.is_ok());
        let named: Vec<(GroupId, u64, u64)> = answer
            .requests
            .iter()
            .map(|r| (r.group, r.tag, r.seq))
            .collect();
        assert_eq!(
            named,
            vec![(GroupId::new(1), 7, 1), (GroupId::new(2), 8, 2)]
        );
        // A shell that runs when no drain is waiting for it sends nothing on its own: its
        // request goes with the worker's flush.
        cell.persist(&log_store, GroupId::new(1), 7, one_entry(1));
        cell.shell_ran();
        assert_eq!(cell.outbox.borrow().items.len(), 1);
        assert!(rx.try_recv().is_err());
    }

    fn append(group: GroupId, bytes: usize) -> Message {
        Message {
            group,
            from: NodeId::new(1),
            to: NodeId::new(2),
            term: 1,
            body: MessageBody::AppendEntries {
                prev_log_index: 0,
                prev_log_term: 0,
                entries: vec![Entry {
                    index: 1,
                    term: 1,
                    payload: EntryPayload::Command(vec![0; bytes]),
                }],
                leader_commit: 0,
            },
        }
    }

    #[test]
    fn a_small_frame_is_sent_whole() {
        let frame = Frame {
            from: NodeId::new(1),
            to: NodeId::new(2),
            messages: vec![append(GroupId::new(1), 100), append(GroupId::new(2), 100)],
            ..Frame::default()
        };
        assert_eq!(split(frame.clone(), 10_000), vec![frame]);
    }

    #[test]
    fn a_large_frame_is_split_in_order_with_heartbeats_in_the_first_part() {
        let hb = CoalescedHeartbeat {
            group: GroupId::new(9),
            term: 1,
            commit: 0,
            read_ctx: 1,
            quiesce: false,
        };
        let messages: Vec<Message> = (0..10).map(GroupId::new).map(|g| append(g, 400)).collect();
        let frame = Frame {
            from: NodeId::new(1),
            to: NodeId::new(2),
            messages: messages.clone(),
            heartbeats: vec![hb],
            ..Frame::default()
        };
        let parts = split(frame, 1_000);
        // 400 + 32 + 64 = 496 bytes each: two per part.
        assert_eq!(parts.len(), 5);
        assert_eq!(parts[0].heartbeats, vec![hb]);
        assert!(parts[1..].iter().all(|p| p.heartbeats.is_empty()));
        assert!(parts
            .iter()
            .all(|p| p.from == NodeId::new(1) && p.to == NodeId::new(2)));
        let rejoined: Vec<Message> = parts.into_iter().flat_map(|p| p.messages).collect();
        assert_eq!(rejoined, messages);
        // A message above the limit goes alone.
        let big = Frame {
            from: NodeId::new(1),
            to: NodeId::new(2),
            messages: vec![
                append(GroupId::new(1), 10),
                append(GroupId::new(2), 5_000),
                append(GroupId::new(3), 10),
            ],
            ..Frame::default()
        };
        let parts = split(big, 1_000);
        assert_eq!(
            parts.iter().map(|p| p.messages.len()).collect::<Vec<_>>(),
            vec![1, 1, 1]
        );
    }
}
