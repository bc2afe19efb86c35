//! The node's group registry: which Raft groups this node hosts, created and removed at
//! runtime.
//!
//! Group 0, the cluster's first group, is hosted from the start and never removed. Any other
//! group is created with [`super::NodeHandle::create_group`] (on every node that is to be one of
//! its voters, with the same voters) and removed with [`super::NodeHandle::remove_group`]. The
//! created groups and the membership each started from are durable in `data_dir/group-list`
//! ([`GroupList`]), so a restarted node hosts the same groups. The inbound dispatcher and the
//! node's handle find a group's actors here on every use: nothing is frozen at start.
//!
//! Each group is one supervised actor subtree: its shell (`GroupActor`) on the arbiter of the
//! Raft worker that drives its core (`group % [raft] workers`), its applier and snapshotter on
//! arbiters of the node's pools (the same partition). The supervisor is started on the node's
//! arbiter (where the node was started), whichever thread asks for it.

use super::applier::{self, ApplierActor, MachineFactory};
use super::group::{self, GroupActor, GroupDeps, GroupShared, SnapshotPolicy};
use super::group_metrics::GroupLabels;
use super::log_store_actor::{LogStoreActor, SaveGroupList};
use super::peers::Peers;
use super::snapshotter::{self, SnapshotterActor};
use super::worker::Workers;
use super::{transfer, transfer_actor, wire::WireMessage, GroupId, NodeError, NodeId, StopActor};
use crate::config::Config;
use crate::state_machine::StateMachine;
use crate::storage::background_io::WritePacing;
use crate::storage::group_list::{GroupList, GroupListError};
use crate::storage::health::{StorageComponent, StorageError, StorageHealth};
use crate::storage::member_mark::MemberMarks;
use crate::storage::snapshot_store::{SnapshotStore, SnapshotStoreError};
use crate::storage::watchdog::Watchdog;
use actix::prelude::*;
use conclave_actors::supervisor::{
    Exit, Factory, RestartPolicy, Slot, StopSupervisor, Strategy, SupervisionEvent,
    SupervisionEventMsg, Supervisor, SupervisorBuilder,
};
use conclave_core::raft::{MemberAddr, Membership};
use conclave_transport::Endpoint;
use parking_lot::RwLock;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Why a group could not be created or removed.
#[derive(Debug, thiserror::Error)]
pub enum GroupRegistryError {
    /// The group is hosted already.
    #[error("group {0} is already hosted on this node")]
    Exists(GroupId),
    /// The group is not hosted here.
    #[error("group {0} is not hosted on this node")]
    NotHosted(GroupId),
    /// Group 0 is the cluster's first group: it carries the cluster's membership.
    #[error("group 0, the cluster's first group, cannot be removed")]
    FirstGroup,
    /// The group is a shard's group: the shard map decides where it is hosted.
    #[error("group {0} is a shard's group: it is hosted where the shard map places it")]
    ShardGroup(GroupId),
    /// The node's state machine opens one machine only.
    #[error("the node's state machine was given with `state_machine_with`, which opens one machine: it serves group 0 only (give `state_machine` or `state_machine_for_groups` to host more groups)")]
    OneMachineOnly,
    /// This node is not among the voters it was asked to create the group with.
    #[error("group {group}: this node ({node}) must be one of its voters")]
    NotAVoter {
        /// The group.
        group: GroupId,
        /// This node.
        node: NodeId,
    },
    /// A voter whose addresses this node does not know (it is not a member of any group
    /// hosted here).
    #[error("group {group}: voter {voter} has no known address (it is a member of no group this node hosts)")]
    UnknownVoter {
        /// The group.
        group: GroupId,
        /// The voter.
        voter: NodeId,
    },
    /// The durable group list could not be written.
    #[error(transparent)]
    List(Arc<GroupListError>),
    /// The log store (which writes the group list) is not running.
    #[error("the log store is not running")]
    LogStoreGone,
    /// The group's snapshot directory could not be opened.
    #[error("cannot open group {group}'s snapshot files: {source}")]
    Snapshots {
        /// The group.
        group: GroupId,
        /// Why.
        #[source]
        source: SnapshotStoreError,
    },
    /// The node is shutting down (its arbiter no longer runs).
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// One hosted group: its actors and shared status.
pub(super) struct GroupEntry<M: StateMachine> {
    pub(super) actor: Slot<GroupActor<M>>,
    pub(super) shared: Arc<GroupShared>,
    // Reached only by fault injection (tests, chaos harness).
    #[cfg_attr(not(any(test, feature = "fault-injection")), allow(dead_code))]
    pub(super) applier: Slot<ApplierActor<M>>,
    supervisor: Addr<Supervisor>,
}

/// The node's snapshot sender and receiver, for every group.
#[derive(Clone)]
pub(super) struct GroupTransferDeps {
    pub(super) sender: transfer_actor::SnapshotSender,
    pub(super) receiver: Addr<transfer_actor::SnapshotReceiver>,
    pub(super) endpoint: Arc<dyn Endpoint<WireMessage>>,
    pub(super) addrs: transfer_actor::PeerAddrs,
}

/// Everything a group's subtree is built from, shared by every group of the node.
pub(super) struct GroupSpawner<M: StateMachine> {
    pub(super) config: Config,
    pub(super) peers: Arc<Peers>,
    pub(super) log_store: Addr<LogStoreActor>,
    pub(super) factory: MachineFactory<M>,
    /// The factory opens a machine per group (false: one machine, group 0 only).
    pub(super) any_group: bool,
    pub(super) watchdog: Arc<Watchdog>,
    pub(super) member_marks: Arc<MemberMarks>,
    pub(super) transfer: GroupTransferDeps,
    /// The node's monotonic epoch (the cores' clock).
    pub(super) epoch: Instant,
    /// Where group supervisors run: the arbiter the node was started on.
    pub(super) arbiter: ArbiterHandle,
    /// The Raft workers (a group's shell runs on its worker's arbiter).
    pub(super) workers: Arc<Workers>,
    /// Where appliers run: group `g` on `appliers[g % len]`.
    pub(super) appliers: Vec<Arbiter>,
    /// Where snapshotters run: group `g` on `snapshotters[g % len]`.
    pub(super) snapshotters: Vec<Arbiter>,
}

/// The groups this node hosts. See the module docs.
pub(super) struct GroupRegistry<M: StateMachine> {
    groups: RwLock<BTreeMap<GroupId, Arc<GroupEntry<M>>>>,
    /// One create or remove at a time (each writes the durable list, then starts or stops).
    changing: tokio::sync::Mutex<()>,
    spawner: GroupSpawner<M>,
    list: Arc<GroupList>,
}

impl<M: StateMachine> GroupRegistry<M> {
    /// An empty registry; [`GroupRegistry::start_listed`] starts the groups of a (re)started
    /// node.
    pub(super) fn new(spawner: GroupSpawner<M>, list: Arc<GroupList>) -> Self {
        GroupRegistry {
            groups: RwLock::new(BTreeMap::new()),
            changing: tokio::sync::Mutex::new(()),
            spawner,
            list,
        }
    }

    /// Starts group 0 with `base` and every group of the durable list with the membership it
    /// was created with. Runs on the node's arbiter, while the node starts.
    pub(super) fn start_listed(&self, base: &Membership) -> Result<(), NodeError> {
        let listed = self.list.groups();
        if !listed.is_empty() && !self.spawner.any_group {
            return Err(NodeError::GroupsNeedMachines {
                groups: listed.keys().copied().collect(),
            });
        }
        let mut all = vec![(GroupId::FIRST, base.clone())];
        all.extend(listed.into_iter().filter(|(g, _)| *g != GroupId::FIRST));
        for (group, membership) in all {
            let entry = self.spawner.spawn(group, &membership, false)?;
            self.groups.write().insert(group, Arc::new(entry));
        }
        Ok(())
    }

    /// Starts the shard groups the shard map places on this node, each with its bootstrap
    /// membership (not listed in `data_dir/group-list`: the stored map is their record). Runs
    /// on the node's arbiter, while the node starts, after [`GroupRegistry::start_listed`].
    pub(super) fn start_groups(&self, groups: Vec<(GroupId, Membership)>) -> Result<(), NodeError> {
        for (group, membership) in groups {
            if self.contains(group) {
                return Err(super::ShardSetupError::GroupListed { group }.into());
            }
            let entry = self.spawner.spawn(group, &membership, false)?;
            self.groups.write().insert(group, Arc::new(entry));
        }
        Ok(())
    }

    /// The group's entry, if hosted.
    pub(super) fn get(&self, group: GroupId) -> Option<Arc<GroupEntry<M>>> {
        self.groups.read().get(&group).cloned()
    }

    /// Whether the group is hosted.
    pub(super) fn contains(&self, group: GroupId) -> bool {
        self.groups.read().contains_key(&group)
    }

    /// The live group actor of `group` (the inbound dispatcher's route).
    pub(super) fn actor(&self, group: GroupId) -> Option<Addr<GroupActor<M>>> {
        self.groups.read().get(&group).and_then(|g| g.actor.get())
    }

    /// Every hosted group, in id order.
    pub(super) fn entries(&self) -> Vec<(GroupId, Arc<GroupEntry<M>>)> {
        self.groups
            .read()
            .iter()
            .map(|(g, e)| (*g, e.clone()))
            .collect()
    }

    /// Creates `group` with `voters` (this node among them): lists it durably, then starts its
    /// subtree on the node's arbiter. Every voter must be created with the same voters; the
    /// group elects a leader once a majority of them host it.
    pub(super) async fn create(
        self: &Arc<Self>,
        group: GroupId,
        voters: BTreeSet<NodeId>,
    ) -> Result<(), GroupRegistryError> {
        let _one = self.changing.lock().await;
        if self.contains(group) {
            return Err(GroupRegistryError::Exists(group));
        }
        if !self.spawner.any_group {
            return Err(GroupRegistryError::OneMachineOnly);
        }
        let me = self.spawner.config.node.id;
        if !voters.contains(&me) {
            return Err(GroupRegistryError::NotAVoter { group, node: me });
        }
        let mut membership = Membership::with_voters(voters.iter().copied());
        for &voter in &voters {
            let m = self
                .spawner
                .peers
                .member(voter)
                .ok_or(GroupRegistryError::UnknownVoter { group, voter })?;
            membership.addrs.insert(
                voter,
                MemberAddr {
                    raft: m.addr,
                    http: m.http,
                },
            );
        }
        self.save(group, Some(membership.clone())).await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let this = self.clone();
        let drained = self
            .get(GroupId::FIRST)
            .is_some_and(|g| g.shared.drained.load(Ordering::Relaxed));
        let started = self.spawner.arbiter.spawn(async move {
            let entry = this.spawner.spawn(group, &membership, drained);
            let _ = tx.send(entry.map(|e| {
                this.groups.write().insert(group, Arc::new(e));
            }));
        });
        let outcome = if started {
            rx.await.unwrap_or(Err(NodeError::Stopped { group }))
        } else {
            Err(NodeError::Stopped { group })
        };
        match outcome {
            Ok(()) => {
                tracing::info!(node = %me, %group, ?voters, "group created");
                Ok(())
            }
            Err(e) => {
                // Not started: not listed either (best effort; a stale entry is started at the
                // next restart, which is what a retried create would do).
                let _ = self.save(group, None).await;
                Err(match e {
                    NodeError::Snapshots(source) => GroupRegistryError::Snapshots { group, source },
                    _ => GroupRegistryError::ShuttingDown,
                })
            }
        }
    }

    /// Stops hosting `group`: unlists it durably, then stops its subtree and forgets its peers.
    /// Its log records and snapshot files stay on disk; creating the same group again resumes
    /// from them.
    pub(super) async fn remove(&self, group: GroupId) -> Result<(), GroupRegistryError> {
        if group == GroupId::FIRST {
            return Err(GroupRegistryError::FirstGroup);
        }
        let _one = self.changing.lock().await;
        if !self.contains(group) {
            return Err(GroupRegistryError::NotHosted(group));
        }
        self.save(group, None).await?;
        let Some(entry) = self.groups.write().remove(&group) else {
            return Err(GroupRegistryError::NotHosted(group));
        };
        self.stop_entry(group, &entry).await;
        tracing::info!(node = %self.spawner.config.node.id, %group, "group removed");
        Ok(())
    }

    /// Stops every group's subtree (the node shuts down; the list is kept).
    pub(super) async fn stop_all(&self) {
        for (_, entry) in self.entries() {
            let _ = entry.supervisor.send(StopSupervisor).await;
        }
    }

    /// The Raft workers.
    pub(super) fn workers(&self) -> &Arc<Workers> {
        &self.spawner.workers
    }

    /// Stops the workers and the pools' arbiters (after [`GroupRegistry::stop_all`]). An
    /// applier stuck in its storage engine does not hold this up: stopping an arbiter only
    /// asks its thread to end.
    pub(super) async fn stop_workers(&self) {
        self.spawner.workers.stop().await;
        self.spawner.workers.stop_arbiters();
        for a in self
            .spawner
            .appliers
            .iter()
            .chain(&self.spawner.snapshotters)
        {
            a.stop();
        }
    }

    async fn stop_entry(&self, group: GroupId, entry: &GroupEntry<M>) {
        let _ = entry.supervisor.send(StopSupervisor).await;
        self.spawner.peers.forget(group);
        self.spawner
            .transfer
            .receiver
            .do_send(transfer_actor::UnregisterGroup(group));
    }

    async fn save(
        &self,
        group: GroupId,
        membership: Option<Membership>,
    ) -> Result<(), GroupRegistryError> {
        self.spawner
            .log_store
            .send(SaveGroupList {
                group,
                membership,
                list: self.list.clone(),
            })
            .await
            .map_err(|_| GroupRegistryError::LogStoreGone)?
            .map_err(GroupRegistryError::List)
    }
}

/// A group whose supervisor spent its restart budget: its log or state machine cannot be
/// brought back by restarts, so the node reports its storage failed (finding 10 of issue 12:
/// such a node used to look healthy).
#[derive(Debug, thiserror::Error)]
#[error(
    "the supervisor of group {group} gave up after repeated restarts (last exit: {}); restart \
     the node once the cause (disk full, I/O errors, a corrupt store) is fixed",
    match last_exit {
        Some(exit) => exit as &dyn std::fmt::Display,
        None => &"none",
    }
)]
pub struct GroupGaveUp {
    /// The group.
    pub group: GroupId,
    /// The child whose exit spent the budget, and how it exited (`None`: no child had
    /// exited before the supervisor gave up).
    pub last_exit: Option<ChildExit>,
}

/// A supervised child's exit, as its supervisor reported it; shown as `applier panicked`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildExit {
    /// The child's name in its supervisor (`applier`, `group`, …).
    pub child: String,
    /// How it exited.
    pub exit: Exit,
}

impl std::fmt::Display for ChildExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match self.exit {
            Exit::Panicked => "panicked",
            Exit::Stopped => "stopped",
        };
        write!(f, "{} {how}", self.child)
    }
}

/// Watches a group's supervisor: when it gives up, the node's storage is reported failed.
struct GroupWatcher {
    group: GroupId,
    health: Arc<StorageHealth>,
    last_exit: Option<ChildExit>,
}

impl Actor for GroupWatcher {
    type Context = Context<Self>;
}

impl Handler<SupervisionEventMsg> for GroupWatcher {
    type Result = ();

    fn handle(&mut self, msg: SupervisionEventMsg, _: &mut Context<Self>) {
        match msg.0 {
            SupervisionEvent::Exited { child, exit } => {
                self.last_exit = Some(ChildExit { child, exit });
            }
            SupervisionEvent::Escalated { .. } => {
                let e = GroupGaveUp {
                    group: self.group,
                    last_exit: self.last_exit.clone(),
                };
                self.health.failed(
                    StorageComponent::Group(self.group),
                    StorageError::GroupGaveUp(Arc::new(e)),
                );
            }
            SupervisionEvent::Restarting { .. } => {}
        }
    }
}

impl<M: StateMachine> GroupSpawner<M> {
    /// Starts `group`'s subtree (on the current arbiter) with `base` as its bootstrap
    /// membership: the peer set follows it until the group's core reports the one in its log.
    /// `drained`: the node is drained (`conclave member drain`), so the new core is too.
    fn spawn(
        &self,
        group: GroupId,
        base: &Membership,
        drained: bool,
    ) -> Result<GroupEntry<M>, NodeError> {
        let config = &self.config;
        // The group's snapshot files; opening removes what a crash left half written.
        let snapshots = Arc::new(
            SnapshotStore::open(
                &config
                    .node
                    .data_dir
                    .join("snapshots")
                    .join(group.to_string()),
            )?
            .with_pacing(WritePacing::from_rate_mb_s(config.snapshot.write_rate_mb_s)),
        );
        self.peers.follow(group, base);
        let pick =
            |pool: &[Arbiter]| pool[(group.get() % pool.len().max(1) as u64) as usize].handle();
        let applier_arbiter = pick(&self.appliers);
        let snapshot_arbiter = pick(&self.snapshotters);
        let shared = Arc::new(GroupShared::default());
        // A group created on a drained node is drained too.
        shared.drained.store(drained, Ordering::Relaxed);
        let applier_slot: Slot<ApplierActor<M>> = Slot::new();
        let snapshotter_slot: Slot<SnapshotterActor> = Slot::new();
        let actor_slot: Slot<GroupActor<M>> = Slot::new();
        let transfer = self.transfer.clone();
        let snapshot_dir = snapshots.dir().to_owned();
        {
            let shared = shared.clone();
            let slot = actor_slot.clone();
            transfer.receiver.do_send(transfer_actor::RegisterGroup(
                group,
                transfer_actor::ReceiverGroup {
                    dir: snapshot_dir.clone(),
                    view: Box::new(move || {
                        let s = shared.snapshot.read();
                        transfer::GroupView {
                            term: s.term,
                            leader: s.leader,
                            commit: s.commit_index,
                            membership: s.membership.clone(),
                        }
                    }),
                    received: Box::new(move |msg| {
                        if let Some(addr) = slot.get() {
                            addr.do_send(msg);
                        }
                    }),
                },
            ));
        }
        let labels = GroupLabels::new(group, config.ring.sharded, config.ring.shards);
        let deps = Arc::new(GroupDeps {
            worker_cell: self.workers.cell_key(),
            labels: labels.clone(),
            group,
            raft: super::raft_config(config, group),
            base_membership: base.clone(),
            log_store: self.log_store.clone(),
            applier: applier_slot.clone(),
            peers: self.peers.clone(),
            shared: shared.clone(),
            epoch: self.epoch,
            transfer: group::GroupTransfer {
                sender: transfer.sender,
                receiver: transfer.receiver,
                dir: snapshot_dir,
                endpoint: transfer.endpoint,
                addrs: transfer.addrs,
            },
            snapshotter: snapshotter_slot.clone(),
            snapshots: snapshots.clone(),
            snapshot_policy: SnapshotPolicy {
                threshold_entries: config.snapshot_threshold_entries(),
                threshold_log_bytes: config.snapshot.threshold_log_bytes,
                jitter_pct: config.snapshot.threshold_jitter_pct,
                log_image_pct: config.snapshot.log_image_pct,
            },
            install_bytes_per_s: config.snapshot.install_rate_mb_s.saturating_mul(1_000_000),
            health: self.watchdog.health().clone(),
            member_marks: self.member_marks.clone(),
        });

        let watcher = GroupWatcher {
            group,
            health: self.watchdog.health().clone(),
            last_exit: None,
        }
        .start();
        let mut builder = SupervisorBuilder::new(format!("group-{group}"))
            .policy(RestartPolicy {
                strategy: Strategy::OneForOne,
                ..RestartPolicy::default()
            })
            .events(watcher.recipient());
        {
            let slot = applier_slot.clone();
            let deps = Arc::new(applier::ApplierDeps {
                labels,
                group,
                factory: self.factory.clone(),
                applied_gauge: shared.applied.clone(),
                clock: self.watchdog.clock(StorageComponent::StateMachine(group)),
                health: self.watchdog.health().clone(),
            });
            let arbiter = applier_arbiter;
            let f: Factory = Box::new(move |guard| {
                // The machine is opened in the actor's `started`, on its own arbiter: a slow
                // or stuck open blocks nothing else.
                let deps = deps.clone();
                let addr = ApplierActor::start_in_arbiter(&arbiter, move |_| {
                    ApplierActor::new(deps, guard)
                });
                slot.set(addr.clone());
                Box::new(move || addr.do_send(StopActor))
            });
            builder = builder.child("applier", f);
        }
        {
            let slot = snapshotter_slot.clone();
            let deps = Arc::new(snapshotter::SnapshotterDeps {
                group,
                store: snapshots,
                clock: self
                    .watchdog
                    .background_clock(StorageComponent::Snapshots(group)),
            });
            let arbiter = snapshot_arbiter;
            let f: Factory = Box::new(move |guard| {
                let deps = deps.clone();
                let addr = SnapshotterActor::start_in_arbiter(&arbiter, move |_| {
                    SnapshotterActor::new(deps, guard)
                });
                slot.set(addr.clone());
                Box::new(move || addr.do_send(StopActor))
            });
            builder = builder.child("snapshotter", f);
        }
        {
            let slot = actor_slot.clone();
            let deps = deps.clone();
            let arbiter = self.workers.arbiter(group);
            let f: Factory = Box::new(move |guard| {
                let deps = deps.clone();
                let addr =
                    GroupActor::start_in_arbiter(&arbiter, move |_| GroupActor::new(deps, guard));
                slot.set(addr.clone());
                Box::new(move || addr.do_send(StopActor))
            });
            builder = builder.child("raft", f);
        }
        // Frames leave through the Raft workers over the peer set's links (`peers`).
        let supervisor = builder.start();
        Ok(GroupEntry {
            actor: actor_slot,
            shared,
            applier: applier_slot,
            supervisor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gave-up message names the last exit from typed values (it was a `{:?}` string).
    #[test]
    fn gave_up_names_the_last_exit() {
        let with = GroupGaveUp {
            group: GroupId::new(3),
            last_exit: Some(ChildExit {
                child: "applier".to_owned(),
                exit: Exit::Panicked,
            }),
        };
        assert!(
            with.to_string().starts_with(
                "the supervisor of group 3 gave up after repeated restarts (last exit: applier \
                 panicked); restart the node"
            ),
            "{with}"
        );
        let without = GroupGaveUp {
            group: GroupId::new(3),
            last_exit: None,
        };
        assert!(
            without.to_string().contains("(last exit: none)"),
            "{without}"
        );
    }
}
