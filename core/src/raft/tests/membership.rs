//! Membership as log entries: single-server changes (thesis §4.1), learners, removal of the
//! leader (thesis §4.2.2).

use super::net::Net;
use super::*;

fn change(net: &mut Net, leader: NodeId, c: MembershipChange) -> Proposal {
    let now = net.now;
    let p = net.node(leader).change_membership(now, c).unwrap();
    net.drain();
    p
}

/// A learner receives the log but never counts toward a quorum; promoted, it votes and counts.
#[test]
fn thesis_4_1_add_learner_then_promote() {
    let mut net = Net::new(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    net.campaign(NodeId::new(1));
    net.add(
        NodeId::new(4),
        fresh(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
    );
    assert_eq!(net.node(NodeId::new(4)).role(), Role::Learner);
    let p = change(
        &mut net,
        NodeId::new(1),
        MembershipChange::AddLearner {
            id: NodeId::new(4),
            addr: None,
        },
    );
    assert_eq!(net.node(NodeId::new(1)).commit_index(), p.index);
    assert_eq!(
        net.node(NodeId::new(4)).membership().learners,
        ids(&[NodeId::new(4)])
    );
    assert_eq!(net.node(NodeId::new(4)).role(), Role::Learner);
    let l = net.node(NodeId::new(1)).entries().to_vec();
    assert_eq!(net.node(NodeId::new(4)).entries(), l.as_slice());
    let status = net.node(NodeId::new(1)).status();
    assert!(status
        .progress
        .iter()
        .any(|p| p.id == NodeId::new(4) && p.learner));

    // A learner's ack does not help commit: with 2 and 3 cut off nothing commits.
    net.isolate(NodeId::new(2));
    net.isolate(NodeId::new(3));
    let w = net.propose(NodeId::new(1), b"x");
    assert!(net.node(NodeId::new(1)).commit_index() < w.index);
    assert_eq!(net.node(NodeId::new(4)).last_index(), w.index);
    net.heal();
    net.advance(100);
    assert!(net.node(NodeId::new(1)).commit_index() >= w.index);

    // Promote: node 4 becomes a voter as soon as it appends the entry.
    change(
        &mut net,
        NodeId::new(1),
        MembershipChange::Promote(NodeId::new(4)),
    );
    assert_eq!(net.node(NodeId::new(4)).role(), Role::Follower);
    assert_eq!(
        net.node(NodeId::new(1)).membership().voters,
        ids(&[
            NodeId::new(1),
            NodeId::new(2),
            NodeId::new(3),
            NodeId::new(4)
        ])
    );
    // Now a quorum is 3 of 4: leader + 4 alone cannot commit.
    net.isolate(NodeId::new(2));
    net.isolate(NodeId::new(3));
    let w = net.propose(NodeId::new(1), b"y");
    net.advance(10);
    assert!(net.node(NodeId::new(1)).commit_index() < w.index);
}

/// Removing a follower; removing the leader makes it step down once the change commits, and
/// the others elect a new leader.
#[test]
fn thesis_4_2_2_remove_follower_and_leader() {
    let mut net = Net::new(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    net.campaign(NodeId::new(1));
    change(
        &mut net,
        NodeId::new(1),
        MembershipChange::Remove(NodeId::new(3)),
    );
    assert_eq!(
        net.node(NodeId::new(1)).membership().voters,
        ids(&[NodeId::new(1), NodeId::new(2)])
    );
    // Until the removal commits in its own view, node 3 may still campaign (an uncommitted
    // removal must not deadlock the group); the leader keeps heartbeating it for an election
    // timeout after the commit, so it learns the commit, then forgets it.
    net.advance(400);
    assert!(net
        .node(NodeId::new(1))
        .status()
        .progress
        .iter()
        .all(|p| p.id != NodeId::new(3)));
    // Node 3 learned it is no longer a voter: it becomes a learner and never campaigns.
    assert_eq!(net.node(NodeId::new(3)).role(), Role::Learner);
    assert!(net.node(NodeId::new(3)).status().removed);
    let p = change(
        &mut net,
        NodeId::new(1),
        MembershipChange::Remove(NodeId::new(1)),
    );
    assert!(net.node(NodeId::new(1)).commit_index() >= p.index);
    assert_ne!(net.node(NodeId::new(1)).role(), Role::Leader);
    net.advance(1000);
    assert_eq!(net.leaders(), vec![NodeId::new(2)]);
    assert_eq!(
        net.node(NodeId::new(2)).membership().voters,
        ids(&[NodeId::new(2)])
    );
}

/// Invalid changes and one change at a time.
#[test]
fn membership_change_validation() {
    let mut r = settled_leader(
        cfg(NodeId::new(1)),
        &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
    );
    let bad = |r: &mut Raft, c| {
        matches!(
            r.change_membership(2000, c),
            Err(ProposeError::InvalidMembershipChange(_))
        )
    };
    assert!(bad(
        &mut r,
        MembershipChange::AddLearner {
            id: NodeId::new(2),
            addr: None
        }
    ));
    assert!(bad(&mut r, MembershipChange::Promote(NodeId::new(2))));
    assert!(bad(&mut r, MembershipChange::Remove(NodeId::new(9))));
    let p = r
        .change_membership(
            2000,
            MembershipChange::AddLearner {
                id: NodeId::new(4),
                addr: None,
            },
        )
        .unwrap();
    assert_eq!(p, Proposal { index: 2, term: 1 });
    // Effective on append.
    assert_eq!(r.membership().learners, ids(&[NodeId::new(4)]));
    assert_eq!(
        r.change_membership(2000, MembershipChange::Promote(NodeId::new(4))),
        Err(ProposeError::ChangeInProgress)
    );
    // The new learner gets a probe with the change itself.
    let out = sends(&poll(&mut r));
    assert!(out.iter().any(|m| m.to == NodeId::new(4)
        && matches!(&m.body, MessageBody::AppendEntries { entries, .. }
            if entries.iter().any(|e| e.index == 2))));
    let mut single = Raft::new(cfg(NodeId::new(1)), fresh(&[NodeId::new(1)]), 1, 0).unwrap();
    poll(&mut single);
    single.tick(300);
    for _ in 0..2 {
        let seq = persist_seq(&poll(&mut single));
        single.persisted(300, seq);
    }
    assert_eq!((single.role(), single.commit_index()), (Role::Leader, 1));
    assert!(bad(&mut single, MembershipChange::Remove(NodeId::new(1))));
    // Not the leader.
    let mut f = Raft::new(
        cfg(NodeId::new(2)),
        fresh(&[NodeId::new(1), NodeId::new(2)]),
        1,
        0,
    )
    .unwrap();
    assert_eq!(
        f.change_membership(
            0,
            MembershipChange::AddLearner {
                id: NodeId::new(5),
                addr: None
            }
        ),
        Err(ProposeError::NotLeader { leader: None })
    );
}

/// Learners never campaign, and their votes never count toward a quorum. A learner still
/// answers vote requests on the log and term checks alone (thesis §4.1: requests are processed
/// without consulting the recipient's configuration), because it may have been promoted in an
/// entry it has not received yet — refusing cost the simulator's membership seeds 86 and 120
/// their liveness (sim/src/raft/CORE_BUGS.md, bug 1).
#[test]
fn learner_never_campaigns_and_its_vote_never_counts() {
    let mut r = Raft::new(
        cfg(NodeId::new(4)),
        fresh(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
        1,
        0,
    )
    .unwrap();
    poll(&mut r);
    for t in [300, 600, 900, 5000] {
        r.tick(t);
    }
    assert_eq!((r.role(), r.term()), (Role::Learner, 0));
    assert!(sends(&poll(&mut r)).is_empty());
    r.handle_message(
        6000,
        msg(
            NodeId::new(1),
            NodeId::new(4),
            1,
            MessageBody::RequestVote {
                pre_vote: false,
                last_log_index: 9,
                last_log_term: 9,
                leadership_transfer: false,
            },
        ),
    );
    // The grant waits for the new term and vote to be durable (persistence contract).
    let mut out = poll(&mut r);
    r.persisted(6000, u64::MAX);
    out.extend(poll(&mut r));
    assert!(
        sends(&out).iter().any(|m| matches!(
            m.body,
            MessageBody::RequestVoteResponse { granted: true, .. }
        )),
        "{out:?}"
    );
    assert_eq!(r.role(), Role::Learner);

    // A candidate of voters {1, 2, 3} does not win on the votes of non-voters 4 and 5.
    let mut c = Raft::new(
        cfg(NodeId::new(1)),
        fresh(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
        1,
        0,
    )
    .unwrap();
    poll(&mut c);
    for t in [300, 600, 900] {
        c.tick(t);
        poll(&mut c);
        c.persisted(t, u64::MAX);
        poll(&mut c);
    }
    let (term, role) = (c.term(), c.role());
    assert!(
        matches!(role, Role::PreCandidate | Role::Candidate),
        "{role:?}"
    );
    for from in [NodeId::new(4), NodeId::new(5)] {
        for pre_vote in [true, false] {
            c.handle_message(
                1000,
                msg(
                    from,
                    NodeId::new(1),
                    if pre_vote { term + 1 } else { term },
                    MessageBody::RequestVoteResponse {
                        pre_vote,
                        granted: true,
                    },
                ),
            );
        }
    }
    poll(&mut c);
    c.persisted(1000, u64::MAX);
    poll(&mut c);
    // Neither promoted from pre-candidate nor elected: the non-voters' grants were ignored.
    assert_eq!((c.role(), c.term()), (role, term));
}

/// Followers take a membership entry into force on append, and roll it back if the entry is
/// truncated.
#[test]
fn follower_membership_follows_the_log_including_rollback() {
    let mut f = Raft::new(
        cfg(NodeId::new(2)),
        restored(
            &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
            1,
            None,
            &[1],
        ),
        1,
        0,
    )
    .unwrap();
    let m = Membership::with_voters([NodeId::new(1), NodeId::new(3)]);
    f.handle_message(
        1000,
        msg(
            NodeId::new(1),
            NodeId::new(2),
            1,
            MessageBody::AppendEntries {
                prev_log_index: 1,
                prev_log_term: 1,
                entries: vec![Entry {
                    term: 1,
                    index: 2,
                    payload: EntryPayload::Membership(m.clone()),
                }],
                leader_commit: 1,
            },
        ),
    );
    assert_eq!(f.membership(), &m);
    // Removed by an entry it does not know committed: it may still campaign (otherwise a node
    // holding the most up-to-date log could deadlock the voters of the older configuration).
    assert_eq!(f.role(), Role::Follower, "removal not known committed");
    assert!(f.status().removed);
    f.handle_message(
        1001,
        msg(
            NodeId::new(3),
            NodeId::new(2),
            2,
            MessageBody::AppendEntries {
                prev_log_index: 1,
                prev_log_term: 1,
                entries: vec![cmd(2, 2, b"z")],
                leader_commit: 1,
            },
        ),
    );
    assert_eq!(
        f.membership(),
        &Membership::with_voters([NodeId::new(1), NodeId::new(2), NodeId::new(3)])
    );
    assert_eq!(f.role(), Role::Follower);
}

// ----------------------------------------------------------------------------------------
// Issue 14: addresses, joint consensus (Raft §6), the change-safety rules, joining and
// removed nodes.
// ----------------------------------------------------------------------------------------

fn addr(id: NodeId) -> MemberAddr {
    MemberAddr {
        raft: ([127, 0, 0, 1], 7000 + id.get() as u16).into(),
        http: ([127, 0, 0, 1], 8000 + id.get() as u16).into(),
    }
}

fn add_learner(id: NodeId) -> MembershipChange {
    MembershipChange::AddLearner {
        id,
        addr: Some(addr(id)),
    }
}

/// A group of voters 1..=3 led by 1, with `learners` started as joining cores (empty
/// membership) and added as caught-up learners with their addresses.
fn group_with_learners(learners: &[NodeId]) -> Net {
    group_with_learners_tweaked(learners, |_| {})
}

/// Like [`group_with_learners`] with a config tweak on the voters.
fn group_with_learners_tweaked(learners: &[NodeId], tweak: impl Fn(&mut RaftConfig)) -> Net {
    let mut net = Net::with(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)], tweak);
    net.campaign(NodeId::new(1));
    for &id in learners {
        net.add(id, RestoreState::default());
        change(&mut net, NodeId::new(1), add_learner(id));
    }
    net
}

/// The membership entries of a node's log, in order.
fn membership_log(r: &Raft) -> Vec<Membership> {
    r.entries()
        .iter()
        .filter_map(|e| match &e.payload {
            EntryPayload::Membership(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

/// `replace`: a learner takes a voter's place through C_old,new then C_new; the addresses
/// travel with the membership and the replaced node learns it was removed.
#[test]
fn raft_6_replace_goes_through_joint_and_carries_addresses() {
    let mut net = group_with_learners(&[NodeId::new(4)]);
    // The joining core adopted the membership (with its own address) from the log.
    assert_eq!(
        net.node(NodeId::new(4))
            .membership()
            .addrs
            .get(&NodeId::new(4)),
        Some(&addr(NodeId::new(4)))
    );
    assert_eq!(net.node(NodeId::new(4)).role(), Role::Learner);
    assert!(!net.node(NodeId::new(4)).status().removed);
    let p = change(
        &mut net,
        NodeId::new(1),
        MembershipChange::Replace {
            add: NodeId::new(4),
            remove: NodeId::new(3),
        },
    );
    // Followers learn the commit index with the next heartbeat.
    net.advance(60);
    let want = Membership {
        voters: ids(&[NodeId::new(1), NodeId::new(2), NodeId::new(4)]),
        addrs: [(NodeId::new(4), addr(NodeId::new(4)))].into(),
        config_id: p.index + 1,
        ..Membership::default()
    };
    for id in [
        NodeId::new(1),
        NodeId::new(2),
        NodeId::new(3),
        NodeId::new(4),
    ] {
        let r = net.node(id);
        assert_eq!(r.membership(), &want, "n{id}");
        let log = membership_log(r);
        let joint = &log[log.len() - 2];
        assert_eq!(
            (&joint.voters, &joint.outgoing, joint.config_id),
            (
                &ids(&[NodeId::new(1), NodeId::new(2), NodeId::new(4)]),
                &ids(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
                p.index
            ),
            "n{id}: C_old,new precedes C_new"
        );
        assert_eq!(r.config_id(), p.index + 1);
        // The removed node stops hearing from the leader once C_new commits, so it may not
        // learn that commit.
        if id != NodeId::new(3) {
            assert!(r.commit_index() > p.index, "n{id}: C_new committed");
            assert!(!r.change_pending());
        }
    }
    assert_eq!(net.node(NodeId::new(4)).role(), Role::Follower);
    assert_eq!(net.node(NodeId::new(3)).role(), Role::Learner);
    assert!(
        net.node(NodeId::new(3)).status().removed,
        "n3 knows it was removed"
    );
    assert!(!net.node(NodeId::new(4)).status().removed);
    // The new configuration works: 1 and 4 commit without 2.
    net.isolate(NodeId::new(2));
    let w = net.propose(NodeId::new(1), b"after");
    assert!(net.node(NodeId::new(1)).commit_index() >= w.index);
}

/// Raft §6: an entry appended in C_old,new commits only with a majority of both halves.
#[test]
fn raft_6_joint_commit_needs_both_majorities() {
    let mut net = group_with_learners(&[NodeId::new(4), NodeId::new(5)]);
    net.isolate(NodeId::new(4));
    net.isolate(NodeId::new(5));
    // C_old = {1,2,3}, C_new = {1,4,5}: the old majority alone holds the joint entry.
    let now = net.now;
    let change_to = MembershipChange::Change {
        promote: ids(&[NodeId::new(4), NodeId::new(5)]),
        remove: ids(&[NodeId::new(2), NodeId::new(3)]),
    };
    let p = net
        .node(NodeId::new(1))
        .change_membership(now, change_to)
        .unwrap();
    net.drain();
    assert!(net.node(NodeId::new(1)).membership().is_joint());
    assert_eq!(net.node(NodeId::new(2)).last_index(), p.index);
    assert!(
        net.node(NodeId::new(1)).commit_index() < p.index,
        "old majority alone"
    );
    // Once 4 and 5 are reachable again the joint entry commits, and the leader appends C_new
    // by itself, which commits in turn.
    net.heal();
    net.advance(200);
    let r = net.node(NodeId::new(1));
    assert_eq!(r.role(), Role::Leader);
    assert!(r.commit_index() > p.index);
    assert_eq!(
        r.config_id(),
        p.index + 1,
        "C_new appended once joint committed"
    );
    assert!(!r.membership().is_joint());
    assert!(!r.change_pending(), "C_new committed");
    assert_eq!(
        r.membership().voters,
        ids(&[NodeId::new(1), NodeId::new(4), NodeId::new(5)])
    );
}

/// With C_new's majority only, the joint entry does not commit; the planted bug commits it.
#[cfg(feature = "planted-bugs")]
#[test]
fn raft_6_joint_entry_not_committed_by_the_new_majority_alone() {
    for bug in [false, true] {
        let mut net = group_with_learners_tweaked(&[NodeId::new(4), NodeId::new(5)], |c| {
            c.planted_bugs.joint_commit_new_majority_only = bug;
        });
        // C_new = {1,4,5}; 2 and 3 (C_old but 1) never get the joint entry.
        net.isolate(NodeId::new(2));
        net.isolate(NodeId::new(3));
        let now = net.now;
        let c = MembershipChange::Change {
            promote: ids(&[NodeId::new(4), NodeId::new(5)]),
            remove: ids(&[NodeId::new(2), NodeId::new(3)]),
        };
        let p = net.node(NodeId::new(1)).change_membership(now, c).unwrap();
        net.drain();
        assert!(net.node(NodeId::new(4)).last_index() >= p.index);
        assert_eq!(
            net.node(NodeId::new(1)).commit_index() >= p.index,
            bug,
            "bug {bug}: committed with only C_new's majority"
        );
    }
}

/// A core whose log holds C_old,new = (new {1,4,5}, old {1,2,3}) after a no-op, as node `id`.
fn joint_restore() -> RestoreState {
    let joint = Membership {
        voters: ids(&[NodeId::new(1), NodeId::new(4), NodeId::new(5)]),
        outgoing: ids(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
        config_id: 2,
        ..Membership::default()
    };
    RestoreState {
        hard_state: HardState {
            term: 1,
            vote: None,
        },
        entries: vec![
            noop(1, 1),
            Entry {
                term: 1,
                index: 2,
                payload: EntryPayload::Membership(joint),
            },
        ],
        applied: 0,
        base_membership: Membership::with_voters([NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
        snapshot: None,
    }
}

/// Raft §6: a candidate in C_old,new needs a majority of both halves; the planted bug wins
/// with the old majority alone.
#[cfg(feature = "planted-bugs")]
#[test]
fn raft_6_joint_election_needs_both_majorities() {
    for bug in [false, true] {
        let mut c = cfg(NodeId::new(2));
        c.planted_bugs.joint_elect_old_majority_only = bug;
        let mut r = Raft::new(c, joint_restore(), 2, 0).unwrap();
        assert_eq!(r.role(), Role::Follower, "an outgoing voter votes");
        poll(&mut r);
        r.tick(1000);
        let sent = sends(&poll(&mut r));
        let asked: BTreeSet<NodeId> = sent.iter().map(|m| m.to).collect();
        assert_eq!(
            asked,
            ids(&[
                NodeId::new(1),
                NodeId::new(3),
                NodeId::new(4),
                NodeId::new(5)
            ]),
            "both halves are asked"
        );
        let grant = |r: &mut Raft, from: NodeId, pre_vote: bool, t: Term| {
            r.handle_message(
                1001,
                msg(
                    from,
                    NodeId::new(2),
                    t,
                    MessageBody::RequestVoteResponse {
                        pre_vote,
                        granted: true,
                    },
                ),
            );
        };
        // Pre-vote: 2 and 3 are a majority of C_old but not of C_new.
        grant(&mut r, NodeId::new(3), true, 2);
        if bug {
            assert_eq!(r.role(), Role::Candidate);
        } else {
            assert_eq!(r.role(), Role::PreCandidate);
            grant(&mut r, NodeId::new(4), true, 2);
            grant(&mut r, NodeId::new(5), true, 2);
            assert_eq!(r.role(), Role::Candidate);
        }
        let seq = persist_seq(&poll(&mut r));
        r.persisted(1002, seq);
        poll(&mut r);
        grant(&mut r, NodeId::new(3), false, 2);
        assert_eq!(
            r.role() == Role::Leader,
            bug,
            "bug {bug}: old majority alone"
        );
        if !bug {
            grant(&mut r, NodeId::new(4), false, 2);
            assert_eq!(r.role(), Role::Candidate, "C_new needs 2 of {{1,4,5}}");
            grant(&mut r, NodeId::new(5), false, 2);
            assert_eq!(r.role(), Role::Leader);
        }
    }
}

/// Raft §6: the leader crashed after C_old,new was appended; a leader elected in the joint
/// phase commits it with its first entry and then appends C_new itself.
#[test]
fn raft_6_leader_elected_during_joint_phase_finishes_the_transition() {
    let restores = [1, 2, 3, 4, 5]
        .iter()
        .map(|&id| (NodeId::new(id), joint_restore()))
        .collect();
    let mut net = Net::restored(restores, |_| {});
    // Node 1 (the old leader) is down.
    net.isolate(NodeId::new(1));
    net.campaign(NodeId::new(4));
    assert_eq!(net.leaders(), vec![NodeId::new(4)]);
    // Followers learn the commit index with the next heartbeat.
    net.advance(60);
    for id in [
        NodeId::new(2),
        NodeId::new(3),
        NodeId::new(4),
        NodeId::new(5),
    ] {
        let r = net.node(id);
        assert!(!r.membership().is_joint(), "n{id}");
        assert_eq!(
            r.membership().voters,
            ids(&[NodeId::new(1), NodeId::new(4), NodeId::new(5)])
        );
        if r.membership().contains(id) {
            assert!(!r.change_pending(), "n{id}: C_new committed");
        }
    }
    // The leader's log: noop, C_old,new, its noop, C_new.
    let kinds: Vec<bool> = net
        .node(NodeId::new(4))
        .entries()
        .iter()
        .map(|e| matches!(e.payload, EntryPayload::Membership(_)))
        .collect();
    assert_eq!(kinds, vec![false, true, false, true]);
    assert!(net.node(NodeId::new(2)).status().removed);
}

/// A leader that replaces itself leads through both phases without counting itself in
/// C_new, and steps down once C_new commits (thesis §4.2.2); the new voters elect a leader.
#[test]
fn raft_6_leader_replaced_steps_down_after_c_new_commits() {
    let mut net = group_with_learners(&[NodeId::new(4)]);
    let p = change(
        &mut net,
        NodeId::new(1),
        MembershipChange::Replace {
            add: NodeId::new(4),
            remove: NodeId::new(1),
        },
    );
    assert!(net.node(NodeId::new(1)).commit_index() > p.index);
    assert_ne!(net.node(NodeId::new(1)).role(), Role::Leader);
    assert!(net.node(NodeId::new(1)).status().removed);
    net.advance(1000);
    let leaders = net.leaders();
    assert_eq!(leaders.len(), 1);
    assert!(
        [NodeId::new(2), NodeId::new(3), NodeId::new(4)].contains(&leaders[0]),
        "{leaders:?}"
    );
}

/// The change-safety rules and their typed errors.
#[test]
fn change_rules_and_typed_errors() {
    // Before the leader committed an entry of its term: LeaderNotReady.
    let mut r = make_leader(
        cfg(NodeId::new(1)),
        &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
        fresh(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
    );
    assert_eq!(
        r.change_membership(1004, add_learner(NodeId::new(4))),
        Err(ProposeError::LeaderNotReady)
    );
    let mut r = settled_leader(
        cfg(NodeId::new(1)),
        &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
    );
    let inv = |e: InvalidChange| Err(ProposeError::InvalidMembershipChange(e));
    assert_eq!(
        r.change_membership(2000, add_learner(NodeId::NONE)),
        inv(InvalidChange::ZeroId)
    );
    assert_eq!(
        r.change_membership(2000, add_learner(NodeId::new(2))),
        inv(InvalidChange::AlreadyMember(NodeId::new(2)))
    );
    assert_eq!(
        r.change_membership(2000, MembershipChange::Promote(NodeId::new(2))),
        inv(InvalidChange::NotALearner(NodeId::new(2)))
    );
    assert_eq!(
        r.change_membership(2000, MembershipChange::Remove(NodeId::new(9))),
        inv(InvalidChange::NotAMember(NodeId::new(9)))
    );
    assert_eq!(
        r.change_membership(
            2000,
            MembershipChange::Change {
                promote: BTreeSet::new(),
                remove: BTreeSet::new()
            }
        ),
        inv(InvalidChange::Empty)
    );
    assert_eq!(
        r.change_membership(
            2000,
            MembershipChange::Change {
                promote: BTreeSet::new(),
                remove: ids(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)])
            }
        ),
        inv(InvalidChange::NoVoters)
    );
    // A stale expected config id.
    assert_eq!(r.config_id(), 0);
    assert_eq!(
        r.change_membership_if(2000, add_learner(NodeId::new(4)), Some(7)),
        Err(ProposeError::ConfigChanged {
            expected: 7,
            current: 0
        })
    );
    let p = r
        .change_membership_if(2000, add_learner(NodeId::new(4)), Some(0))
        .unwrap();
    assert_eq!((r.config_id(), r.change_pending()), (p.index, true));
    assert_eq!(r.status().config_id, p.index);
    assert!(r.status().change_pending);
    // One change at a time.
    assert_eq!(
        r.change_membership(2000, MembershipChange::Remove(NodeId::new(3))),
        Err(ProposeError::ChangeInProgress)
    );
    let seq = persist_seq(&poll(&mut r));
    r.persisted(2001, seq);
    r.handle_message(2002, append_ok(NodeId::new(2), NodeId::new(1), 1, p.index));
    assert!(!r.change_pending());
    // Learner 4 has nothing: promoting it is refused while it lags more than the bound.
    assert_eq!(
        r.change_membership(2003, MembershipChange::Promote(NodeId::new(4))),
        Err(ProposeError::NotCaughtUp {
            id: NodeId::new(4),
            lag: p.index
        })
    );
    assert_eq!(
        r.change_membership(
            2003,
            MembershipChange::Replace {
                add: NodeId::new(4),
                remove: NodeId::new(3)
            }
        ),
        Err(ProposeError::NotCaughtUp {
            id: NodeId::new(4),
            lag: p.index
        })
    );
    assert_eq!(
        r.change_membership(
            2003,
            MembershipChange::Change {
                promote: ids(&[NodeId::new(4)]),
                remove: ids(&[NodeId::new(4)]),
            }
        ),
        inv(InvalidChange::Conflict(NodeId::new(4)))
    );
}

/// `promote_max_lag`: a learner within the bound is promotable.
#[test]
fn promotion_allowed_within_promote_max_lag() {
    let mut c = cfg(NodeId::new(1));
    c.promote_max_lag = 2;
    let mut r = settled_leader(c, &[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    let p = r
        .change_membership(2000, add_learner(NodeId::new(4)))
        .unwrap();
    let seq = persist_seq(&poll(&mut r));
    r.persisted(2001, seq);
    r.handle_message(2002, append_ok(NodeId::new(2), NodeId::new(1), 1, p.index));
    for i in 0..2 {
        r.propose(2003, vec![i]).unwrap();
    }
    // Last index p.index + 2; learner 4 matched nothing: lag p.index + 2 > 2.
    assert!(matches!(
        r.change_membership(2004, MembershipChange::Promote(NodeId::new(4))),
        Err(ProposeError::NotCaughtUp { .. })
    ));
    r.handle_message(2005, append_ok(NodeId::new(4), NodeId::new(1), 1, p.index));
    assert_eq!(
        r.change_membership(2006, MembershipChange::Promote(NodeId::new(4)))
            .map(|p| p.index),
        Ok(p.index + 3)
    );
}

/// The planted bug `second_change_before_commit` lets a second change in before the first
/// committed; without it the second is refused.
#[cfg(feature = "planted-bugs")]
#[test]
fn planted_second_change_before_commit() {
    for bug in [false, true] {
        let mut c = cfg(NodeId::new(1));
        c.planted_bugs.second_change_before_commit = bug;
        let mut r = settled_leader(c, &[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
        r.change_membership(2000, MembershipChange::Remove(NodeId::new(3)))
            .unwrap();
        let second = r.change_membership(2000, MembershipChange::Remove(NodeId::new(2)));
        assert_eq!(second.is_ok(), bug, "{second:?}");
    }
}

/// A joining core (empty membership) never campaigns, refuses votes and pre-votes, follows a
/// leader's appends and adopts the membership from the log; or from a snapshot.
#[test]
fn joining_core_waits_refuses_votes_and_adopts_membership() {
    let mut r = Raft::new(cfg(NodeId::new(4)), RestoreState::default(), 4, 0).unwrap();
    assert!(r.joining());
    poll(&mut r);
    for t in [300, 600, 900, 5000] {
        r.tick(t);
    }
    assert_eq!((r.role(), r.term()), (Role::Learner, 0));
    assert!(sends(&poll(&mut r)).is_empty(), "never campaigns");
    for pre_vote in [true, false] {
        r.handle_message(
            6000,
            msg(
                NodeId::new(1),
                NodeId::new(4),
                1,
                MessageBody::RequestVote {
                    pre_vote,
                    last_log_index: 9,
                    last_log_term: 9,
                    leadership_transfer: true,
                },
            ),
        );
        let mut out = poll(&mut r);
        r.persisted(6000, u64::MAX);
        out.extend(poll(&mut r));
        let answers: Vec<_> = sends(&out)
            .into_iter()
            .filter(|m| matches!(m.body, MessageBody::RequestVoteResponse { .. }))
            .collect();
        assert_eq!(answers.len(), 1, "{out:?}");
        assert!(matches!(
            answers[0].body,
            MessageBody::RequestVoteResponse { granted: false, .. }
        ));
    }
    assert_eq!(r.term(), 1, "adopted the term, voted for no one");
    // Appends from a leader are followed; the membership comes from the log.
    let m = Membership {
        voters: ids(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
        learners: ids(&[NodeId::new(4)]),
        addrs: [(NodeId::new(4), addr(NodeId::new(4)))].into(),
        config_id: 1,
        ..Membership::default()
    };
    r.handle_message(
        6100,
        msg(
            NodeId::new(1),
            NodeId::new(4),
            1,
            MessageBody::AppendEntries {
                prev_log_index: 0,
                prev_log_term: 0,
                entries: vec![Entry {
                    term: 1,
                    index: 1,
                    payload: EntryPayload::Membership(m.clone()),
                }],
                leader_commit: 1,
            },
        ),
    );
    assert_eq!(r.membership(), &m);
    assert!(!r.joining());
    assert_eq!(r.leader(), Some(NodeId::new(1)));
    // From now on the member rule applies: a sender no configuration names is ignored.
    r.handle_message(
        6200,
        msg(NodeId::new(9), NodeId::new(4), 5, MessageBody::TimeoutNow),
    );
    assert_eq!(r.term(), 1);

    // A joining core catches up by snapshot just as well.
    let mut j = Raft::new(cfg(NodeId::new(5)), RestoreState::default(), 5, 0).unwrap();
    poll(&mut j);
    let meta = SnapshotMeta {
        index: 40,
        term: 2,
        membership: Membership {
            voters: ids(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
            learners: ids(&[NodeId::new(5)]),
            config_id: 30,
            ..Membership::default()
        },
    };
    j.install_snapshot(7000, NodeId::new(1), 2, meta.clone());
    let seq = persist_seq(&poll(&mut j));
    j.persisted(7001, seq);
    let out = poll(&mut j);
    assert!(
        out.contains(&Action::RestoreSnapshot(meta.clone())),
        "{out:?}"
    );
    assert_eq!(j.membership(), &meta.membership);
    assert_eq!(j.config_id(), 30);
    assert_eq!(j.role(), Role::Learner);
}

/// A removed node that missed its removal and comes back cannot disrupt the group: its
/// pre-votes are denied by voters that hear from the leader; once it learns of its removal
/// it reports `removed` and never campaigns again.
#[test]
fn removed_node_cannot_disrupt_and_reports_removed() {
    let mut net = Net::new(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    net.campaign(NodeId::new(1));
    net.isolate(NodeId::new(3));
    change(
        &mut net,
        NodeId::new(1),
        MembershipChange::Remove(NodeId::new(3)),
    );
    let term = net.node(NodeId::new(1)).term();
    // Node 3 times out again and again while cut off, then comes back.
    net.advance(2000);
    assert_eq!(
        net.node(NodeId::new(3)).term(),
        term,
        "pre-vote keeps its term"
    );
    assert!(
        !net.node(NodeId::new(3)).status().removed,
        "it does not know yet"
    );
    net.heal();
    net.advance(2000);
    assert_eq!(net.leaders(), vec![NodeId::new(1)]);
    assert_eq!(
        net.node(NodeId::new(1)).term(),
        term,
        "no election happened"
    );
    // Until compaction the leader's log still names 3 (in the configuration before its
    // removal): it still sends it the log, so 3 learns of its removal... but only while it
    // is a tracked peer. Either way it never campaigns once it knows.
    let r = net.node(NodeId::new(3));
    if r.membership().voters == ids(&[NodeId::new(1), NodeId::new(2)]) {
        assert!(r.status().removed);
        assert_eq!(r.role(), Role::Learner);
    }
}

/// Membership as written before addresses, joint configurations and config ids existed (a
/// MessagePack array of two sets) still decodes, in a log entry and in a snapshot's meta.
#[test]
fn membership_without_new_fields_still_decodes() {
    #[derive(serde::Serialize)]
    struct OldMembership {
        voters: BTreeSet<NodeId>,
        learners: BTreeSet<NodeId>,
    }
    #[derive(serde::Serialize)]
    struct OldMeta {
        index: LogIndex,
        term: Term,
        membership: OldMembership,
    }
    #[derive(serde::Serialize)]
    enum OldPayload {
        #[allow(dead_code)]
        Noop,
        #[allow(dead_code)]
        Command(Vec<u8>),
        Membership(OldMembership),
    }
    #[derive(serde::Serialize)]
    struct OldEntry {
        term: Term,
        index: LogIndex,
        payload: OldPayload,
    }
    let old = || OldMembership {
        voters: ids(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
        learners: ids(&[NodeId::new(4)]),
    };
    let want = Membership {
        voters: ids(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
        learners: ids(&[NodeId::new(4)]),
        ..Membership::default()
    };
    let bytes = rmp_serde::to_vec(&old()).unwrap();
    let m: Membership = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(m, want);
    let bytes = rmp_serde::to_vec(&OldMeta {
        index: 5,
        term: 2,
        membership: old(),
    })
    .unwrap();
    let meta: SnapshotMeta = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(meta.membership, want);
    let bytes = rmp_serde::to_vec(&OldEntry {
        term: 1,
        index: 3,
        payload: OldPayload::Membership(old()),
    })
    .unwrap();
    let e: Entry = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(e.payload, EntryPayload::Membership(want.clone()));
    // And the new fields round-trip.
    let full = Membership {
        outgoing: ids(&[NodeId::new(1), NodeId::new(2), NodeId::new(5)]),
        addrs: [(NodeId::new(4), addr(NodeId::new(4)))].into(),
        config_id: 9,
        ..want
    };
    let back: Membership = rmp_serde::from_slice(&rmp_serde::to_vec(&full).unwrap()).unwrap();
    assert_eq!(back, full);
}

/// A node removed by an entry it does not know committed still campaigns: here leader 2 of
/// {1, 2} removes itself, the entry never reaches 1 and 2 loses leadership. 2 holds the most
/// up-to-date log, so 1 (whose configuration {1, 2} needs 2's vote) can never win; if 2 did
/// not campaign either the group would be stuck forever (the simulator's membership profile,
/// seed 1260, with a C_new instead of a single-server removal). 2 wins in its configuration
/// {1}, commits its removal with 1, and steps down; 1 then leads alone.
#[test]
fn node_removed_by_an_uncommitted_entry_still_campaigns() {
    let mut net = Net::new(&[NodeId::new(1), NodeId::new(2)]);
    net.campaign(NodeId::new(2));
    assert_eq!(net.leaders(), vec![NodeId::new(2)]);
    net.advance(10);
    net.cut_one_way(NodeId::new(2), NodeId::new(1));
    let now = net.now;
    let p = net
        .node(NodeId::new(2))
        .change_membership(now, MembershipChange::Remove(NodeId::new(2)))
        .unwrap();
    net.advance(400);
    assert_ne!(
        net.node(NodeId::new(2)).role(),
        Role::Leader,
        "check-quorum stepped it down"
    );
    assert_eq!(
        net.node(NodeId::new(2)).role(),
        Role::Follower,
        "may campaign"
    );
    assert!(net.node(NodeId::new(1)).last_index() < p.index);
    net.heal();
    net.advance(3000);
    assert_eq!(net.leaders(), vec![NodeId::new(1)]);
    assert_eq!(
        net.node(NodeId::new(1)).membership().voters,
        ids(&[NodeId::new(1)])
    );
    assert!(net.node(NodeId::new(1)).commit_index() >= p.index);
    assert_eq!(net.node(NodeId::new(2)).role(), Role::Learner);
    assert!(net.node(NodeId::new(2)).status().removed);
}

/// Raft §6: while joint, a ReadIndex round is confirmed only by a majority of both halves, and
/// check-quorum keeps the leader only while both halves answer.
#[test]
fn raft_6_joint_reads_and_check_quorum_need_both_majorities() {
    let mut net = group_with_learners(&[NodeId::new(4), NodeId::new(5)]);
    net.advance(60);
    // C_old = {1, 2, 3} loses its majority; C_new = {1, 4, 5} keeps one.
    net.isolate(NodeId::new(2));
    net.isolate(NodeId::new(3));
    let now = net.now;
    let c = MembershipChange::Change {
        promote: ids(&[NodeId::new(4), NodeId::new(5)]),
        remove: ids(&[NodeId::new(2), NodeId::new(3)]),
    };
    net.node(NodeId::new(1)).change_membership(now, c).unwrap();
    net.drain();
    assert!(net.node(NodeId::new(1)).membership().is_joint());
    net.reads.clear();
    let now = net.now;
    net.node(NodeId::new(1))
        .read(now, 77, ReadConsistency::Linearizable)
        .unwrap();
    net.drain();
    net.advance(20);
    // 4 and 5 acknowledged (C_new's majority), 2 and 3 cannot: not confirmed.
    assert!(
        !net.reads
            .iter()
            .any(|(_, a)| matches!(a, Action::ReadReady { id: 77, .. })),
        "{:?}",
        net.reads
    );
    // C_old's majority is unreachable for a whole check-quorum interval: the leader steps
    // down, failing the read.
    net.advance(400);
    assert_ne!(net.node(NodeId::new(1)).role(), Role::Leader);
    assert!(net.reads.iter().any(|(_, a)| matches!(
        a,
        Action::ReadFailed {
            id: 77,
            error: ReadError::LeadershipLost
        }
    )));
}

/// Payload bytes (as the append limits count them: command + 24) of the AppendEntries
/// delivered to `to` among the recorded messages from `from_msg` on.
fn append_bytes_to(net: &Net, to: NodeId, from_msg: usize) -> usize {
    net.log[from_msg..]
        .iter()
        .filter(|m| m.to == to)
        .map(|m| match &m.body {
            MessageBody::AppendEntries { entries, .. } => entries
                .iter()
                .map(|e| match &e.payload {
                    EntryPayload::Command(c) => c.len() + 24,
                    _ => 24,
                })
                .sum(),
            _ => 0,
        })
        .sum()
}

/// Voters 1..=3 led by 1, learner 4 cut off while `backlog` entries of 1,000 bytes are
/// committed, then reconnected; pacing at `rate` bytes/s beyond the log's growth.
fn learner_behind(rate: u64, backlog: usize) -> Net {
    let mut net = group_with_learners_tweaked(&[NodeId::new(4)], |c| {
        c.learner_catch_up_bytes_per_s = rate;
        c.promote_max_lag = 20;
        c.max_bytes_per_append = 8 * 1024;
    });
    net.isolate(NodeId::new(4));
    for _ in 0..backlog {
        net.propose(NodeId::new(1), &[7; 1000]);
    }
    net.heal();
    net.record = true;
    net
}

fn lag_of(net: &mut Net, learner: NodeId) -> u64 {
    let last = net.node(NodeId::new(1)).last_index();
    last - net.node(learner).last_index()
}

/// A learner far behind gets the log at the configured pace, not as one burst, and once it is
/// within `promote_max_lag` it gets new entries at once again.
#[test]
fn far_behind_learner_is_paced_then_caught_up() {
    let rate = 100_000;
    let mut net = learner_behind(rate, 400);
    // The appends lost while it was cut off are noticed after an election timeout.
    net.advance(300);
    let start = net.log.len();
    net.advance(1_000);
    let sent = append_bytes_to(&net, NodeId::new(4), start);
    // One second: the clock's 100,000 bytes and at most one append past the credit (an
    // append goes while the credit is not negative). Heartbeats add nothing (no new entries).
    let slack = 8 * 1024;
    assert!(
        sent <= rate as usize + slack && sent + slack >= rate as usize,
        "{sent} bytes sent in 1 s at a pace of {rate} bytes/s"
    );
    assert!(lag_of(&mut net, NodeId::new(4)) > 20, "not caught up yet");
    // 409,600 bytes in all: caught up a little after 4 s.
    net.advance(3_200);
    assert_eq!(lag_of(&mut net, NodeId::new(4)), 0, "caught up at the pace");
    // Caught up: a new entry reaches it without waiting for credit.
    let before = net.node(NodeId::new(4)).last_index();
    net.propose(NodeId::new(1), &[8; 1000]);
    assert_eq!(net.node(NodeId::new(4)).last_index(), before + 1);
}

/// Unpaced (rate 0, the core's default) the same learner gets the whole backlog at once.
#[test]
fn unpaced_learner_catches_up_at_once() {
    let mut net = learner_behind(0, 400);
    // Lost appends are noticed after an election timeout; then one burst.
    net.advance(300);
    assert_eq!(lag_of(&mut net, NodeId::new(4)), 0);
}

/// The pace is on top of the log's growth: a learner paced at 20,000 bytes/s still catches up
/// while the leader appends 100,000 bytes/s (5x the pace) the whole time.
#[test]
fn paced_learner_gains_on_a_log_growing_faster_than_the_pace() {
    let mut net = learner_behind(20_000, 200);
    let initial_lag = lag_of(&mut net, NodeId::new(4));
    let mut caught_up_at = None;
    for step in 0..2_000 {
        net.propose(NodeId::new(1), &[9; 1000]);
        net.advance(10);
        if caught_up_at.is_none() && lag_of(&mut net, NodeId::new(4)) <= 20 {
            caught_up_at = Some(step * 10);
        }
    }
    // 200 entries (~205 KB) of backlog at 20,000 bytes/s: about 10 s.
    let at = caught_up_at.expect("the learner never caught up");
    assert!(
        (8_000..=13_000).contains(&at),
        "caught up after {at} ms (initial lag {initial_lag})"
    );
    assert!(lag_of(&mut net, NodeId::new(4)) <= 20);
}

/// Voters are never paced, even when the pace is set: a voter that missed the same backlog
/// gets it at once (commitment may depend on it).
#[test]
fn voters_are_never_paced() {
    let mut net = group_with_learners_tweaked(&[], |c| {
        c.learner_catch_up_bytes_per_s = 1_000;
        c.promote_max_lag = 20;
        c.max_bytes_per_append = 8 * 1024;
    });
    net.isolate(NodeId::new(3));
    for _ in 0..400 {
        net.propose(NodeId::new(1), &[7; 1000]);
    }
    net.heal();
    // Lost appends are noticed after an election timeout; then one burst.
    net.advance(300);
    assert_eq!(lag_of(&mut net, NodeId::new(3)), 0);
}
