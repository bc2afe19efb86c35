//! The node's peers follow the replicated membership (issue 14).
//!
//! Each group actor hands [`Peers::follow`] the membership its Raft core has in force — the
//! latest appended, committed or not, as Raft requires (thesis §4.1) — whenever it changes.
//! From the membership of every group the node derives, and keeps in step:
//!
//! - **links**: a member is dialled when it appears, at the address the membership carries
//!   (one cached transport link per peer, whatever the number of groups); the Raft workers
//!   send every group's frames to a peer through it ([`Peers::link`]);
//! - **the transport's admission**: the members of every group (a node is accepted once a
//!   membership naming it was appended: "being added"), plus the members that a member vouches
//!   for, minus the members this node saw removed (their connections are closed and they are
//!   refused at the handshake, `not_member`). Vouching exists for a node that lags behind a
//!   membership change: it cannot know a member that change added, and if that member now
//!   leads it must still hear it. Every node sends each member, whenever its memberships change
//!   and every [`INTRODUCE_INTERVAL`], a [`MembersNotice`] naming the members its own logs
//!   know; a notice is heard from members only (the sender must be in this node's own
//!   memberships), so a stranger — even one holding the cluster secret — is admitted nowhere
//!   until some member's log names it. What a vouched-for peer may do is decided by the Raft
//!   core (a sender no configuration names is heard as a leader only — see
//!   `conclave_core::raft::Raft::handle_message`), and gossip ignores it. A node whose groups
//!   have no membership yet (one that joins, `cluster.join`) admits any peer (that
//!   authenticates, when the cluster has a secret or TLS): it cannot tell members apart yet,
//!   and the leader adding it must reach it;
//! - **gossip's member book**: the same members, at the same addresses; a removed member is
//!   marked `left`;
//! - **the member directory**: ids to addresses for leader hints, forwarding and status.
//!
//! A peer this node knows no address for (the leader that adds a joining node) is answered
//! over the connection it opened ([`Transport::connected_link`]).

use super::gossip::{GossipActor, GossipShared, MemberBook, MembersChanged};
use super::wire::{MembersNotice, WireMessage};
use crate::api::MembershipState;
use crate::config::MemberConfig;
use conclave_actors::supervisor::Slot;
use conclave_core::raft::{GroupId, Membership, NodeId};
use conclave_transport::{Endpoint, PeerLink, Transport};
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How often a node re-sends its [`MembersNotice`] to every member (besides at once when its
/// memberships change): a member that was down when a node was added learns of it within this
/// long after it comes back.
pub const INTRODUCE_INTERVAL: Duration = Duration::from_secs(2);

/// The most members one notice may name; a longer one is refused whole (a bound on what a
/// member can make this node remember).
pub const MAX_NOTICE_MEMBERS: usize = 4096;

/// Tracks, for one group, whether this node is a member, was never one, or was removed: from
/// the memberships its core reports and how far they are committed. Sans-IO.
#[derive(Clone, Debug)]
pub struct MembershipTracker {
    me: NodeId,
    /// A committed membership (or the bootstrap one) named this node.
    was_member: bool,
    /// The latest membership known committed.
    committed: Membership,
    /// Memberships appended and not known committed yet, by index, oldest first.
    pending: Vec<(u64, Membership)>,
    /// The membership in force (the latest appended).
    in_force: Membership,
}

impl MembershipTracker {
    /// A tracker for node `me` restored from its log: `base` is the bootstrap membership,
    /// `log` the membership entries of its log by index (oldest first) and `commit` its commit
    /// index (everything at or below it is committed).
    pub fn new(me: NodeId, base: &Membership, log: &[(u64, Membership)], commit: u64) -> Self {
        let mut t = MembershipTracker {
            me,
            was_member: base.contains(me),
            committed: base.clone(),
            pending: Vec::new(),
            in_force: base.clone(),
        };
        for (index, m) in log {
            t.appended(*index, m.clone());
        }
        t.committed_to(commit);
        t
    }

    /// The membership entry at `index` is the one in force now: appended, or the latest left
    /// after a truncation (entries at or after `index` known before are gone; index 0 is the
    /// bootstrap membership).
    pub fn appended(&mut self, index: u64, m: Membership) {
        self.pending.retain(|(i, _)| *i < index);
        self.in_force = m.clone();
        self.pending.push((index, m));
    }

    /// Entries up to `commit` are committed. Returns whether that settled a pending
    /// membership.
    pub fn committed_to(&mut self, commit: u64) -> bool {
        let upto = self.pending.partition_point(|(i, _)| *i <= commit);
        for (_, m) in self.pending.drain(..upto) {
            self.was_member |= m.contains(self.me);
            self.committed = m;
        }
        upto > 0
    }

    /// The nodes this node must still reach: the members of the membership in force, of the
    /// one committed and of every one appended since (with their addresses). A node being
    /// removed stays until its removal commits — the leader replicates the change to it, so it
    /// learns it was removed — and a node being added is there from the append on.
    pub fn span(&self) -> Membership {
        let mut span = self.in_force.clone();
        for m in std::iter::once(&self.committed).chain(self.pending.iter().map(|(_, m)| m)) {
            for id in m.all() {
                if !span.contains(id) {
                    span.learners.insert(id);
                }
                if let Some(a) = m.addrs.get(&id) {
                    span.addrs.entry(id).or_insert(*a);
                }
            }
        }
        span
    }

    /// Whether a committed membership (or the bootstrap one) named this node.
    pub fn was_member(&self) -> bool {
        self.was_member
    }

    /// This node was a member earlier than anything its log still holds (its durable mark,
    /// `data_dir/member-of`): a snapshot may have compacted away the entries that named it.
    pub fn was_a_member(&mut self) {
        self.was_member = true;
    }

    /// The membership in force.
    pub fn in_force(&self) -> &Membership {
        &self.in_force
    }

    /// Where this node stands.
    pub fn state(&self) -> MembershipState {
        if self.in_force.contains(self.me) || self.committed.contains(self.me) {
            // A removal appended but not committed may still be undone.
            MembershipState::Member
        } else if self.was_member {
            MembershipState::Removed
        } else {
            MembershipState::NotAMember
        }
    }
}

/// What changes for one group's links when its members go from `current` to `wanted` (each
/// with the address to dial, if known).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerPlan {
    /// New members: dialled at the address when there is one.
    pub start: Vec<(NodeId, Option<SocketAddr>)>,
    /// Members whose address became known or changed: the link dials the new one.
    pub readdress: Vec<(NodeId, SocketAddr)>,
    /// Members that left: no longer dialled for this group.
    pub stop: Vec<NodeId>,
}

impl PeerPlan {
    /// The plan from `current` to `wanted` (this node is never in either).
    pub fn between(
        current: &BTreeMap<NodeId, Option<SocketAddr>>,
        wanted: &BTreeMap<NodeId, Option<SocketAddr>>,
    ) -> PeerPlan {
        let mut plan = PeerPlan::default();
        for (&id, &addr) in wanted {
            match current.get(&id) {
                None => plan.start.push((id, addr)),
                Some(old) => {
                    if let Some(a) = addr {
                        if *old != Some(a) {
                            plan.readdress.push((id, a));
                        }
                    }
                }
            }
        }
        plan.stop = current
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        plan
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.start.is_empty() && self.readdress.is_empty() && self.stop.is_empty()
    }
}

/// The transport allowlist for the given memberships of this node's groups: every member of
/// any of them, or `None` (any authenticated peer) while none names anybody — a node that
/// joins has no membership until the leader adding it replicates one.
pub fn allowlist<'a>(
    memberships: impl IntoIterator<Item = &'a Membership>,
) -> Option<BTreeSet<NodeId>> {
    let all: BTreeSet<NodeId> = memberships.into_iter().flat_map(|m| m.all()).collect();
    if all.is_empty() {
        None
    } else {
        Some(all)
    }
}

/// Who the transport admits: `None` (anyone) while this node's own memberships name nobody
/// (`members` is `None`); else the members, and whoever a member vouches for, except the
/// nodes seen removed. Vouchers that are no longer members count for nothing.
pub fn admitted(
    members: &Option<BTreeSet<NodeId>>,
    vouched: &BTreeMap<NodeId, BTreeSet<NodeId>>,
    removed: &BTreeSet<NodeId>,
) -> Option<BTreeSet<NodeId>> {
    let members = members.as_ref()?;
    let mut all = members.clone();
    for (voucher, ids) in vouched {
        if members.contains(voucher) {
            all.extend(ids.iter().filter(|id| !removed.contains(id)));
        }
    }
    Some(all)
}

/// The members a notice from `from` vouches for (`me` left out), or why it is refused whole:
/// it names more than [`MAX_NOTICE_MEMBERS`], or `from` is no member of this node's groups
/// (`members`; `None` before this node has a membership, when nobody's word counts) or is this
/// node itself. Checked before anything is changed, so a refused notice changes nothing.
fn heard_notice(
    me: NodeId,
    members: Option<&BTreeSet<NodeId>>,
    from: NodeId,
    notice: MembersNotice,
) -> Result<BTreeSet<NodeId>, NoticeError> {
    if notice.members.len() > MAX_NOTICE_MEMBERS {
        return Err(NoticeError::TooLarge {
            from,
            count: notice.members.len(),
        });
    }
    if from == me || !members.is_some_and(|a| a.contains(&from)) {
        return Err(NoticeError::NotAMember { from });
    }
    Ok(notice.members.into_iter().filter(|id| *id != me).collect())
}

/// A [`MembersNotice`] that cannot be heard.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoticeError {
    /// The sender is no member of this node's groups: its word counts for nothing.
    #[error("members notice from node {from}, which no membership of this node names")]
    NotAMember {
        /// The sender.
        from: NodeId,
    },
    /// The notice names more members than [`MAX_NOTICE_MEMBERS`].
    #[error(
        "members notice from node {from} names {count} members (at most {MAX_NOTICE_MEMBERS})"
    )]
    TooLarge {
        /// The sender.
        from: NodeId,
        /// How many it named.
        count: usize,
    },
}

#[derive(Default)]
struct GroupPeers {
    membership: Membership,
    /// The group's other members and the address each is dialled at (`None`: not known; it
    /// is answered over its own connection).
    links: BTreeMap<NodeId, Option<SocketAddr>>,
}

#[derive(Default)]
struct State {
    groups: BTreeMap<GroupId, GroupPeers>,
    /// Nodes that were members of some group and no longer are (gossip marks them `left`).
    removed: BTreeSet<NodeId>,
    /// The members each member vouches for (its last [`MembersNotice`]).
    vouched: BTreeMap<NodeId, BTreeSet<NodeId>>,
    /// The member book last handed to gossip.
    book: MemberBook,
    stopped: bool,
}

/// The node's peers, shared by its group actors and its handle. See the module docs.
pub struct Peers {
    me: MemberConfig,
    transport: Arc<Transport<WireMessage>>,
    gossip: Arc<GossipShared>,
    gossip_actor: Slot<GossipActor>,
    /// Addresses known from the configuration (the initial members), used for members whose
    /// membership carries none.
    configured: BTreeMap<NodeId, MemberConfig>,
    directory: RwLock<BTreeMap<NodeId, MemberConfig>>,
    /// The members of every group, for the inbound dispatcher (`None`: no membership yet, so
    /// anyone the transport admitted).
    allowed: RwLock<Option<BTreeSet<NodeId>>>,
    /// The members this node saw removed (refused by the transport).
    removed: RwLock<BTreeSet<NodeId>>,
    /// Who the transport admits ([`admitted`]): the members and whoever a member vouches for.
    admitted: RwLock<Option<BTreeSet<NodeId>>>,
    state: Mutex<State>,
}

impl Peers {
    /// The peer set of node `me`, following nobody yet: call [`Peers::follow`] for every group
    /// before it starts. `configured` are the initial members' addresses.
    pub(super) fn new(
        me: MemberConfig,
        configured: BTreeMap<NodeId, MemberConfig>,
        transport: Arc<Transport<WireMessage>>,
        gossip: Arc<GossipShared>,
        gossip_actor: Slot<GossipActor>,
    ) -> Arc<Peers> {
        let mut directory = BTreeMap::new();
        directory.insert(me.id, me.clone());
        Arc::new(Peers {
            me,
            transport,
            gossip,
            gossip_actor,
            configured,
            directory: RwLock::new(directory),
            allowed: RwLock::new(None),
            removed: RwLock::new(BTreeSet::new()),
            admitted: RwLock::new(None),
            state: Mutex::new(State::default()),
        })
    }

    /// The transport's reports of lost connections (see
    /// [`Transport::connection_losses`]): the Raft workers wake the quiesced groups whose
    /// leader was on the other end.
    pub fn connection_losses(
        &self,
    ) -> tokio::sync::broadcast::Receiver<conclave_transport::ConnectionLost> {
        self.transport.connection_losses()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.me.id
    }

    /// A member's addresses, if this node knows them.
    pub fn member(&self, id: NodeId) -> Option<MemberConfig> {
        self.directory.read().get(&id).cloned()
    }

    /// Every member of every group with known addresses, this node included.
    pub fn directory(&self) -> BTreeMap<NodeId, MemberConfig> {
        self.directory.read().clone()
    }

    /// Whether `id` is a member of any group (this node always is, for its own requests).
    pub fn is_member(&self, id: NodeId) -> bool {
        id == self.me.id
            || self
                .state
                .lock()
                .groups
                .values()
                .any(|g| g.membership.contains(id))
    }

    /// Whether gossip frames from `from` are heard: a member of some group (anyone before
    /// this node has a membership), applied again to what a connection established before a
    /// removal may still deliver.
    pub fn admits(&self, from: NodeId) -> bool {
        self.allowed
            .read()
            .as_ref()
            .is_none_or(|a| a.contains(&from))
    }

    /// Whether Raft messages and snapshot chunks from `from` reach the groups: a member, or a
    /// peer a member vouches for (a leader added after this node's log ends; the core decides
    /// what it may do). See the module docs.
    pub fn admits_raft(&self, from: NodeId) -> bool {
        self.admits(from)
            || self
                .admitted
                .read()
                .as_ref()
                .is_none_or(|a| a.contains(&from))
    }

    /// Member `from` says its logs name `notice.members`: they are admitted too (see the module
    /// docs). Refused whole from a non-member or when it names too many.
    pub fn vouch(&self, from: NodeId, notice: MembersNotice) -> Result<(), NoticeError> {
        let ids = heard_notice(self.me.id, self.allowed.read().as_ref(), from, notice)?;
        let mut state = self.state.lock();
        if state.stopped || state.vouched.get(&from) == Some(&ids) {
            return Ok(());
        }
        let added: Vec<NodeId> = ids
            .iter()
            .filter(|id| !self.admits_raft(**id))
            .copied()
            .collect();
        if !added.is_empty() {
            tracing::info!(
                node = %self.me.id,
                voucher = %from,
                admitted = ?added,
                "admitting members another member's log names"
            );
        }
        state.vouched.insert(from, ids);
        self.sync_node_wide(&mut state, &BTreeMap::new());
        Ok(())
    }

    /// The notice this node sends its members: every member its own memberships name (being
    /// added included), or `None` before it has a membership.
    fn notice(&self) -> Option<MembersNotice> {
        let allowed = self.allowed.read();
        let members = allowed.as_ref()?;
        Some(MembersNotice {
            members: members.iter().copied().collect(),
        })
    }

    /// Sends the [`MembersNotice`] to every member with a known address (best effort: a full
    /// queue drops it until the next one). False once the node stopped.
    pub fn introduce(&self) -> bool {
        if self.state.lock().stopped {
            return false;
        }
        let Some(notice) = self.notice() else {
            return true;
        };
        let targets: Vec<(NodeId, SocketAddr)> = self
            .directory
            .read()
            .values()
            .filter(|c| c.id != self.me.id && notice.members.contains(&c.id))
            .map(|c| (c.id, c.addr))
            .collect();
        for (id, addr) in targets {
            let _ = self
                .transport
                .peer(id, addr)
                .try_send(WireMessage::Members(notice.clone()));
        }
        true
    }

    /// The addresses the membership carries for its members; for a member it carries none
    /// for (a bootstrap membership built without them), the configured ones, then the ones
    /// known before; `None` if there is none.
    fn addresses(&self, m: &Membership) -> BTreeMap<NodeId, Option<MemberConfig>> {
        let directory = self.directory.read();
        m.all()
            .map(|id| {
                let known = if id == self.me.id {
                    Some(self.me.clone())
                } else if let Some(a) = m.addrs.get(&id) {
                    Some(MemberConfig {
                        id,
                        addr: a.raft,
                        http: a.http,
                    })
                } else {
                    self.configured
                        .get(&id)
                        .or_else(|| directory.get(&id))
                        .cloned()
                };
                (id, known)
            })
            .collect()
    }

    /// Group `group`'s membership in force is now `m`: dial its new members, and
    /// bring the allowlist, gossip and the directory in line with every group's membership.
    /// Idempotent; called by the group actor whenever its core's membership changes (and once
    /// before the group starts).
    pub fn follow(&self, group: GroupId, m: &Membership) {
        let addrs = self.addresses(m);
        let mut state = self.state.lock();
        if state.stopped {
            return;
        }
        let g = state.groups.entry(group).or_default();
        let wanted: BTreeMap<NodeId, Option<SocketAddr>> = addrs
            .iter()
            .filter(|(id, _)| **id != self.me.id)
            .map(|(id, c)| (*id, c.as_ref().map(|c| c.addr)))
            .collect();
        let plan = PeerPlan::between(&g.links, &wanted);
        let before: BTreeSet<NodeId> = g.membership.all().collect();
        g.membership = m.clone();
        // An address that becomes unknown keeps the one the link has (as the plan does).
        let mut links = wanted;
        for (id, addr) in links.iter_mut() {
            if addr.is_none() {
                *addr = g.links.get(id).copied().flatten();
            }
        }
        g.links = links;
        // A new member, or one at a new address, is dialled now, so that the connection is up
        // by the time the Raft workers send it a frame (`Peers::link`); the transport keeps one
        // cached link per peer whatever the number of groups.
        for (id, addr) in plan
            .readdress
            .iter()
            .copied()
            .chain(plan.start.iter().filter_map(|&(id, a)| a.map(|a| (id, a))))
        {
            let _ = self.transport.peer(id, addr);
        }
        for &(id, addr) in &plan.start {
            if addr.is_none() {
                tracing::warn!(
                    node = %self.me.id,
                    %group,
                    peer = %id,
                    "member with no known address: it is answered once it connects"
                );
            }
        }
        if !plan.is_empty() || before != m.all().collect::<BTreeSet<_>>() {
            tracing::info!(
                node = %self.me.id,
                %group,
                voters = ?m.voters,
                learners = ?m.learners,
                started = ?plan.start.iter().map(|(id, _)| id).collect::<Vec<_>>(),
                stopped = ?plan.stop,
                "peers follow the membership"
            );
        }
        // Ids that were members and no longer are anywhere.
        let now_members: BTreeSet<NodeId> = state
            .groups
            .values()
            .flat_map(|g| g.membership.all())
            .collect();
        for id in before {
            if !now_members.contains(&id) && id != self.me.id {
                state.removed.insert(id);
            }
        }
        state.removed.retain(|id| !now_members.contains(id));
        let members_changed = self.sync_node_wide(&mut state, &addrs);
        drop(state);
        if members_changed {
            // The members hear of a node being added now, not at the next interval.
            self.introduce();
        }
    }

    /// The allowlist, the directory and gossip's book from every group's membership (and the
    /// members' vouches). True if the set of members changed.
    fn sync_node_wide(
        &self,
        state: &mut State,
        addrs: &BTreeMap<NodeId, Option<MemberConfig>>,
    ) -> bool {
        let allowed = allowlist(state.groups.values().map(|g| &g.membership));
        // Only members vouch.
        if let Some(members) = &allowed {
            state.vouched.retain(|voucher, _| members.contains(voucher));
        }
        let admitted = admitted(&allowed, &state.vouched, &state.removed);
        let previously = self.admitted.read().clone();
        let members_changed = *self.allowed.read() != allowed;
        let removed_before = self.removed.read().clone();
        if admitted != previously || members_changed || state.removed != removed_before {
            // Refused first, then the allowlist: a removed node is never admitted in between.
            self.transport.set_denied_peers(state.removed.clone());
            self.transport.set_allowed_peers(admitted.clone());
            *self.removed.write() = state.removed.clone();
            *self.allowed.write() = allowed.clone();
            *self.admitted.write() = admitted.clone();
            // Connections of nodes no longer admitted are closed now (a removed node is then
            // refused at the handshake if it dials again).
            if let Some(prev) = &previously {
                for id in prev {
                    if *id != self.me.id && !admitted.as_ref().is_none_or(|a| a.contains(id)) {
                        self.transport.disconnect_peer(*id);
                    }
                }
            }
        }
        {
            let mut directory = self.directory.write();
            for (id, c) in addrs.iter() {
                if let Some(c) = c {
                    directory.insert(*id, c.clone());
                }
            }
            let keep: BTreeSet<NodeId> = state
                .groups
                .values()
                .flat_map(|g| g.membership.all())
                .chain([self.me.id])
                .collect();
            directory.retain(|id, _| keep.contains(id));
            metrics::gauge!("conclave_cluster_nodes_total").set(directory.len() as f64);
        }
        let book = MemberBook {
            members: self
                .directory
                .read()
                .iter()
                .filter(|(id, _)| **id != self.me.id)
                .map(|(id, c)| (*id, c.clone()))
                .collect(),
            removed: state.removed.clone(),
        };
        if book != state.book {
            state.book = book.clone();
            self.gossip.set_book(book);
            if let Some(actor) = self.gossip_actor.get() {
                // A restarted actor reads the book itself; a full mailbox only delays this
                // until the next membership change, so it is retried then.
                let _ = actor.try_send(MembersChanged);
            }
        }
        members_changed
    }

    /// The link the Raft workers send `peer`'s frames over: dialled at the address the
    /// directory holds for a member, or, for a peer no membership names yet, its own
    /// connection to this node (a node that joins answers the leader adding it before any
    /// membership names that leader). `None` for this node,
    /// an unknown peer without a connection, or once the node stops.
    pub fn link(&self, peer: NodeId) -> Option<PeerLink<WireMessage>> {
        if peer == self.me.id || self.state.lock().stopped {
            return None;
        }
        if let Some(m) = self.member(peer) {
            return Some(self.transport.peer(peer, m.addr));
        }
        if !self.admits_raft(peer) {
            return None;
        }
        self.transport.connected_link(peer)
    }

    /// The node stopped hosting `group`: the allowlist, directory
    /// and gossip's book follow the remaining groups. Its members are not marked removed: a
    /// node that stops hosting a group says nothing about the cluster's membership.
    pub(super) fn forget(&self, group: GroupId) {
        let mut state = self.state.lock();
        if state.stopped {
            return;
        }
        if state.groups.remove(&group).is_none() {
            return;
        }
        tracing::info!(node = %self.me.id, %group, "peers no longer follow the group");
        self.sync_node_wide(&mut state, &BTreeMap::new());
    }

    /// The node is shutting down: no more links, notices or changes.
    pub(super) fn stop(&self) {
        self.state.lock().stopped = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(voters: &[NodeId], learners: &[NodeId]) -> Membership {
        let mut m = Membership::with_voters(voters.iter().copied());
        m.learners = learners.iter().copied().collect();
        m
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn plan_starts_new_members_stops_removed_ones_and_redials_moved_ones() {
        let current = BTreeMap::from([
            (NodeId::new(2), Some(addr(2))),
            (NodeId::new(3), Some(addr(3))),
            (NodeId::new(5), None),
        ]);
        let wanted = BTreeMap::from([
            (NodeId::new(2), Some(addr(2))),
            (NodeId::new(4), Some(addr(4))),
            (NodeId::new(5), Some(addr(55))),
            (NodeId::new(6), None),
        ]);
        let plan = PeerPlan::between(&current, &wanted);
        assert_eq!(
            plan.start,
            vec![(NodeId::new(4), Some(addr(4))), (NodeId::new(6), None)]
        );
        assert_eq!(plan.readdress, vec![(NodeId::new(5), addr(55))]);
        assert_eq!(plan.stop, vec![NodeId::new(3)]);
        assert!(PeerPlan::between(&wanted, &wanted).is_empty());
        // An address that becomes unknown keeps the one the link has.
        let plan = PeerPlan::between(&wanted, &BTreeMap::from([(NodeId::new(2), None)]));
        assert!(plan.readdress.is_empty() && plan.start.is_empty());
        assert_eq!(
            plan.stop,
            vec![NodeId::new(4), NodeId::new(5), NodeId::new(6)]
        );
    }

    #[test]
    fn allowlist_is_every_groups_members_or_anyone_before_a_membership() {
        assert_eq!(allowlist([&m(&[], &[])]), None);
        assert_eq!(allowlist(std::iter::empty()), None);
        assert_eq!(
            allowlist([
                &m(
                    &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
                    &[NodeId::new(4)]
                ),
                &m(&[NodeId::new(3), NodeId::new(5)], &[])
            ]),
            Some(BTreeSet::from([
                NodeId::new(1),
                NodeId::new(2),
                NodeId::new(3),
                NodeId::new(4),
                NodeId::new(5)
            ]))
        );
        // A node being added (a learner in the appended membership) is admitted; one removed
        // is not.
        assert_eq!(
            allowlist([&m(&[NodeId::new(1), NodeId::new(2)], &[NodeId::new(4)])]),
            Some(BTreeSet::from([
                NodeId::new(1),
                NodeId::new(2),
                NodeId::new(4)
            ]))
        );
    }

    #[test]
    fn notices_from_non_members_or_naming_too_many_are_refused_whole() {
        let members = BTreeSet::from([NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
        let notice = |ids: Vec<NodeId>| MembersNotice { members: ids };
        // A member's notice: what it names, this node (1) left out.
        assert_eq!(
            heard_notice(
                NodeId::new(1),
                Some(&members),
                NodeId::new(2),
                notice(vec![
                    NodeId::new(1),
                    NodeId::new(2),
                    NodeId::new(3),
                    NodeId::new(4)
                ])
            ),
            Ok(BTreeSet::from([
                NodeId::new(2),
                NodeId::new(3),
                NodeId::new(4)
            ]))
        );
        // A stranger, this node itself, and anyone before this node has a membership.
        for (from, m) in [(777, Some(&members)), (1, Some(&members)), (2, None)] {
            let from = NodeId::new(from);
            assert_eq!(
                heard_notice(NodeId::new(1), m, from, notice(vec![NodeId::new(4)])),
                Err(NoticeError::NotAMember { from })
            );
        }
        // Too many names, even from a member; the limit itself is heard.
        let many: Vec<NodeId> = (0..=MAX_NOTICE_MEMBERS as u64).map(NodeId::new).collect();
        assert_eq!(
            heard_notice(
                NodeId::new(1),
                Some(&members),
                NodeId::new(2),
                notice(many.clone())
            ),
            Err(NoticeError::TooLarge {
                from: NodeId::new(2),
                count: MAX_NOTICE_MEMBERS + 1
            })
        );
        assert!(heard_notice(
            NodeId::new(1),
            Some(&members),
            NodeId::new(2),
            notice(many[1..].to_vec())
        )
        .is_ok());
    }

    #[test]
    fn members_vouch_for_members_their_logs_name_and_nobody_else_does() {
        let members = Some(BTreeSet::from([
            NodeId::new(1),
            NodeId::new(2),
            NodeId::new(3),
        ]));
        let none = BTreeMap::new();
        let removed = BTreeSet::from([NodeId::new(9)]);
        // Nobody vouches: the members only.
        assert_eq!(admitted(&members, &none, &removed), members);
        // Member 2's log names node 4 (added after this node's log ends): admitted; the
        // removed node 9 is not, whoever names it.
        let vouched = BTreeMap::from([(
            NodeId::new(2),
            BTreeSet::from([
                NodeId::new(1),
                NodeId::new(2),
                NodeId::new(3),
                NodeId::new(4),
                NodeId::new(9),
            ]),
        )]);
        assert_eq!(
            admitted(&members, &vouched, &removed),
            Some(BTreeSet::from([
                NodeId::new(1),
                NodeId::new(2),
                NodeId::new(3),
                NodeId::new(4)
            ]))
        );
        // A voucher that is no member counts for nothing (a stranger cannot bring a friend).
        let vouched = BTreeMap::from([(
            NodeId::new(7),
            BTreeSet::from([NodeId::new(7), NodeId::new(8)]),
        )]);
        assert_eq!(admitted(&members, &vouched, &removed), members);
        // A joining node (no membership yet) admits anyone, vouched or not.
        assert_eq!(admitted(&None, &vouched, &removed), None);
    }

    #[test]
    fn a_joining_node_is_not_a_member_until_a_membership_names_it() {
        let mut t = MembershipTracker::new(NodeId::new(4), &Membership::default(), &[], 0);
        assert_eq!(t.state(), MembershipState::NotAMember);
        // The leader's log reaches it: first memberships without it.
        t.appended(1, m(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)], &[]));
        t.committed_to(1);
        assert_eq!(t.state(), MembershipState::NotAMember);
        t.appended(
            7,
            m(
                &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
                &[NodeId::new(4)],
            ),
        );
        assert_eq!(t.state(), MembershipState::Member);
        t.committed_to(7);
        assert_eq!(t.state(), MembershipState::Member);
        // A restart rebuilds the same answer from the log.
        let again = MembershipTracker::new(
            NodeId::new(4),
            &Membership::default(),
            &[
                (1, m(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)], &[])),
                (
                    7,
                    m(
                        &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
                        &[NodeId::new(4)],
                    ),
                ),
            ],
            7,
        );
        assert_eq!(again.state(), MembershipState::Member);
    }

    #[test]
    fn a_node_is_removed_only_once_its_removal_commits() {
        let base = m(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)], &[]);
        let mut t = MembershipTracker::new(NodeId::new(3), &base, &[], 0);
        assert_eq!(t.state(), MembershipState::Member);
        t.appended(10, m(&[NodeId::new(1), NodeId::new(2)], &[]));
        // Appended, not committed: a new leader may still truncate it (the log then ends
        // with the bootstrap membership again).
        assert_eq!(t.state(), MembershipState::Member);
        t.appended(0, base.clone());
        assert_eq!(t.in_force(), &base);
        t.committed_to(10);
        assert_eq!(t.state(), MembershipState::Member);
        // Appended again (by the next leader, at another index), and committed.
        t.appended(12, m(&[NodeId::new(1), NodeId::new(2)], &[]));
        t.committed_to(11);
        assert_eq!(t.state(), MembershipState::Member);
        t.committed_to(12);
        assert_eq!(t.state(), MembershipState::Removed);
        // Restarted from its log: still removed (nothing else has to be persisted).
        let again = MembershipTracker::new(
            NodeId::new(3),
            &base,
            &[(12, m(&[NodeId::new(1), NodeId::new(2)], &[]))],
            12,
        );
        assert_eq!(again.state(), MembershipState::Removed);
        // Added back later: a member again.
        t.appended(20, m(&[NodeId::new(1), NodeId::new(2)], &[NodeId::new(3)]));
        assert_eq!(t.state(), MembershipState::Member);
    }

    #[test]
    fn a_truncated_membership_entry_is_replaced_by_the_one_appended_at_its_index() {
        let base = m(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)], &[]);
        let mut t = MembershipTracker::new(NodeId::new(2), &base, &[], 0);
        t.appended(5, m(&[NodeId::new(1), NodeId::new(3)], &[]));
        // A new leader overwrote index 5 with another change; 5 commits with that one.
        t.appended(
            5,
            m(
                &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
                &[NodeId::new(4)],
            ),
        );
        t.committed_to(5);
        assert_eq!(t.state(), MembershipState::Member);
        assert_eq!(
            t.in_force(),
            &m(
                &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
                &[NodeId::new(4)]
            )
        );
    }

    #[test]
    fn a_removed_node_whose_log_was_compacted_is_removed_only_with_its_mark() {
        // Restarted from a snapshot taken after its removal: neither the snapshot's membership
        // nor the log left after it names this node.
        let after = m(&[NodeId::new(1), NodeId::new(2)], &[]);
        let log = [(40, m(&[NodeId::new(1), NodeId::new(2)], &[NodeId::new(4)]))];
        let t = MembershipTracker::new(NodeId::new(3), &after, &log, 40);
        assert_eq!(
            t.state(),
            MembershipState::NotAMember,
            "the log alone forgets"
        );
        let mut t = MembershipTracker::new(NodeId::new(3), &after, &log, 40);
        t.was_a_member();
        assert_eq!(t.state(), MembershipState::Removed);
        // Added back later: a member again.
        t.appended(
            50,
            m(
                &[NodeId::new(1), NodeId::new(2)],
                &[NodeId::new(3), NodeId::new(4)],
            ),
        );
        assert_eq!(t.state(), MembershipState::Member);
    }

    #[test]
    fn a_node_being_removed_stays_reachable_until_its_removal_commits() {
        let base = m(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)], &[]);
        let mut t = MembershipTracker::new(NodeId::new(1), &base, &[], 0);
        t.appended(10, m(&[NodeId::new(1), NodeId::new(2)], &[]));
        let span = t.span();
        assert_eq!(
            span.all().collect::<BTreeSet<_>>(),
            BTreeSet::from([NodeId::new(1), NodeId::new(2), NodeId::new(3)])
        );
        assert_eq!(t.in_force(), &m(&[NodeId::new(1), NodeId::new(2)], &[]));
        assert!(!t.committed_to(9));
        assert!(t.committed_to(10));
        assert_eq!(
            t.span().all().collect::<BTreeSet<_>>(),
            BTreeSet::from([NodeId::new(1), NodeId::new(2)])
        );
        // A node being added is in the span from the append on.
        t.appended(12, m(&[NodeId::new(1), NodeId::new(2)], &[NodeId::new(5)]));
        assert!(t.span().contains(NodeId::new(5)));
    }

    #[test]
    fn a_joining_node_whose_addition_was_truncated_is_still_not_a_member() {
        let mut t = MembershipTracker::new(NodeId::new(4), &Membership::default(), &[], 0);
        t.appended(1, m(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)], &[]));
        t.committed_to(1);
        t.appended(
            5,
            m(
                &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
                &[NodeId::new(4)],
            ),
        );
        assert_eq!(t.state(), MembershipState::Member);
        // The entry adding it is overwritten: the latest membership is index 1's again.
        t.appended(1, m(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)], &[]));
        t.committed_to(6);
        assert_eq!(t.state(), MembershipState::NotAMember);
        // Added, then removed, both committed, then restarted: removed.
        let again = MembershipTracker::new(
            NodeId::new(4),
            &Membership::default(),
            &[
                (1, m(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)], &[])),
                (
                    5,
                    m(
                        &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
                        &[NodeId::new(4)],
                    ),
                ),
                (9, m(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)], &[])),
            ],
            9,
        );
        assert_eq!(again.state(), MembershipState::Removed);
    }
}
