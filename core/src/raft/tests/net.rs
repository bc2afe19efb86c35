//! A tiny, loss-free, instantaneous network for multi-node unit tests: it delivers every
//! `Send` (unless the link is cut), completes every `Persist` at once (unless the node's disk is
//! held), and ticks nodes when their timer is due. Not a fault injector: that is `crate::sim`.

use super::super::*;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub(crate) struct Net {
    pub(crate) nodes: BTreeMap<NodeId, Raft>,
    pub(crate) now: Millis,
    timers: BTreeMap<NodeId, Millis>,
    /// Directed links that drop everything.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Nodes whose persists are not completed (their requests pile up here).
    held: BTreeMap<NodeId, Vec<u64>>,
    pub(crate) applied: BTreeMap<NodeId, Vec<Entry>>,
    pub(crate) reads: Vec<(NodeId, Action)>,
    pub(crate) delivered: usize,
    /// Every message delivered, for tests that count round trips.
    pub(crate) log: Vec<Message>,
    pub(crate) record: bool,
    /// Snapshot transfers asked for (sender, receiver, term, meta), not yet delivered.
    pub(crate) snapshots: Vec<(NodeId, NodeId, Term, SnapshotMeta)>,
    /// `RestoreSnapshot` and `Compacted` actions, per node, in order.
    pub(crate) snapshot_actions: Vec<(NodeId, Action)>,
}

impl Net {
    /// A group of `voters`, all fresh, with default configs.
    pub(crate) fn new(voters: &[NodeId]) -> Net {
        Self::with(voters, |_| {})
    }

    /// Like [`Net::new`] with a config tweak applied to every node.
    pub(crate) fn with(voters: &[NodeId], tweak: impl Fn(&mut RaftConfig)) -> Net {
        let restores = voters
            .iter()
            .map(|&id| (id, super::fresh(voters)))
            .collect();
        Self::restored(restores, tweak)
    }

    /// Nodes restored from the given states.
    pub(crate) fn restored(
        restores: Vec<(NodeId, RestoreState)>,
        tweak: impl Fn(&mut RaftConfig),
    ) -> Net {
        let mut net = Net {
            nodes: BTreeMap::new(),
            now: 0,
            timers: BTreeMap::new(),
            cut: BTreeSet::new(),
            held: BTreeMap::new(),
            applied: BTreeMap::new(),
            reads: Vec::new(),
            delivered: 0,
            log: Vec::new(),
            record: false,
            snapshots: Vec::new(),
            snapshot_actions: Vec::new(),
        };
        for (id, restore) in restores {
            let mut c = super::cfg(id);
            tweak(&mut c);
            let r = Raft::new(c, restore, id.get() * 7919, 0).unwrap();
            net.nodes.insert(id, r);
        }
        net.drain();
        net
    }

    /// Adds a node (e.g. a future learner) restored from `restore`.
    pub(crate) fn add(&mut self, id: NodeId, restore: RestoreState) {
        let r = Raft::new(super::cfg(id), restore, id.get() * 7919, self.now).unwrap();
        self.nodes.insert(id, r);
        self.drain();
    }

    pub(crate) fn node(&mut self, id: NodeId) -> &mut Raft {
        self.nodes.get_mut(&id).unwrap()
    }

    /// Cuts both directions between `a` and every node of `others`.
    pub(crate) fn isolate(&mut self, a: NodeId) {
        let all: Vec<NodeId> = self.nodes.keys().copied().collect();
        for b in all {
            if b != a {
                self.cut.insert((a, b));
                self.cut.insert((b, a));
            }
        }
    }

    pub(crate) fn cut_one_way(&mut self, from: NodeId, to: NodeId) {
        self.cut.insert((from, to));
    }

    pub(crate) fn heal(&mut self) {
        self.cut.clear();
    }

    pub(crate) fn hold_disk(&mut self, id: NodeId) {
        self.held.entry(id).or_default();
    }

    pub(crate) fn release_disk(&mut self, id: NodeId) {
        if let Some(seqs) = self.held.remove(&id) {
            if let Some(&last) = seqs.last() {
                let now = self.now;
                self.node(id).persisted(now, last);
            }
        }
        self.drain();
    }

    /// Completes every requested snapshot transfer: the receiver's shell now holds the
    /// snapshot and hands its meta to the core.
    pub(crate) fn deliver_snapshots(&mut self) {
        for (from, to, term, meta) in std::mem::take(&mut self.snapshots) {
            let now = self.now;
            self.node(to).install_snapshot(now, from, term, meta);
        }
        self.drain();
    }

    /// Polls every node and carries out actions until nothing is left to do.
    pub(crate) fn drain(&mut self) {
        let mut queue: VecDeque<Message> = VecDeque::new();
        loop {
            let mut progressed = false;
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                let mut out = Vec::new();
                self.node(id).poll_actions(&mut out);
                for a in out {
                    progressed = true;
                    match a {
                        Action::Send(m) => {
                            if !self.cut.contains(&(m.from, m.to)) && self.nodes.contains_key(&m.to)
                            {
                                queue.push_back(m);
                            }
                        }
                        Action::Persist(p) => {
                            if let Some(h) = self.held.get_mut(&id) {
                                h.push(p.seq);
                            } else {
                                let now = self.now;
                                self.node(id).persisted(now, p.seq);
                            }
                        }
                        Action::Apply(es) => self.applied.entry(id).or_default().extend(es),
                        Action::SetTimer { at } => {
                            self.timers.insert(id, at);
                        }
                        a @ (Action::ReadReady { .. } | Action::ReadFailed { .. }) => {
                            self.reads.push((id, a))
                        }
                        Action::RoleChanged { .. } => {}
                        Action::SendSnapshot { to, term, meta } => {
                            if !self.cut.contains(&(id, to)) && self.nodes.contains_key(&to) {
                                self.snapshots.push((id, to, term, meta));
                            } else {
                                let now = self.now;
                                self.node(id).snapshot_send_failed(now, to);
                            }
                        }
                        a @ (Action::RestoreSnapshot(_) | Action::Compacted { .. }) => {
                            self.snapshot_actions.push((id, a))
                        }
                    }
                }
            }
            while let Some(m) = queue.pop_front() {
                progressed = true;
                self.delivered += 1;
                if self.record {
                    self.log.push(m.clone());
                }
                let now = self.now;
                let to = m.to;
                self.node(to).handle_message(now, m);
            }
            if !progressed {
                break;
            }
        }
    }

    /// Advances time by `ms`, one millisecond at a time, ticking nodes whose timer is due.
    pub(crate) fn advance(&mut self, ms: Millis) {
        for _ in 0..ms {
            self.now += 1;
            let due: Vec<NodeId> = self
                .timers
                .iter()
                .filter(|(_, &at)| at <= self.now)
                .map(|(&id, _)| id)
                .collect();
            for id in due {
                let now = self.now;
                self.node(id).tick(now);
            }
            self.drain();
        }
    }

    /// Jumps time forward by an election timeout (300 ms) ticking only `id`, so that it alone
    /// campaigns, then settles. Other nodes' timers are not ticked during the jump.
    pub(crate) fn campaign(&mut self, id: NodeId) {
        self.now += 300;
        let now = self.now;
        self.node(id).tick(now);
        self.drain();
    }

    pub(crate) fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|r| r.role() == Role::Leader)
            .map(|r| r.id())
            .collect()
    }

    /// Proposes on `leader` and settles.
    pub(crate) fn propose(&mut self, leader: NodeId, data: &[u8]) -> Proposal {
        let now = self.now;
        let p = self.node(leader).propose(now, data.to_vec()).unwrap();
        self.drain();
        p
    }
}
