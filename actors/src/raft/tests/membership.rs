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
    let mut net = Net::new(&[1, 2, 3]);
    net.campaign(1);
    net.add(4, fresh(&[1, 2, 3]));
    assert_eq!(net.node(4).role(), Role::Learner);
    let p = change(&mut net, 1, MembershipChange::AddLearner(4));
    assert_eq!(net.node(1).commit_index(), p.index);
    assert_eq!(net.node(4).membership().learners, ids(&[4]));
    assert_eq!(net.node(4).role(), Role::Learner);
    let l = net.node(1).entries().to_vec();
    assert_eq!(net.node(4).entries(), l.as_slice());
    let status = net.node(1).status();
    assert!(status.progress.iter().any(|p| p.id == 4 && p.learner));

    // A learner's ack does not help commit: with 2 and 3 cut off nothing commits.
    net.isolate(2);
    net.isolate(3);
    let w = net.propose(1, b"x");
    assert!(net.node(1).commit_index() < w.index);
    assert_eq!(net.node(4).last_index(), w.index);
    net.heal();
    net.advance(100);
    assert!(net.node(1).commit_index() >= w.index);

    // Promote: node 4 becomes a voter as soon as it appends the entry.
    change(&mut net, 1, MembershipChange::Promote(4));
    assert_eq!(net.node(4).role(), Role::Follower);
    assert_eq!(net.node(1).membership().voters, ids(&[1, 2, 3, 4]));
    // Now a quorum is 3 of 4: leader + 4 alone cannot commit.
    net.isolate(2);
    net.isolate(3);
    let w = net.propose(1, b"y");
    net.advance(10);
    assert!(net.node(1).commit_index() < w.index);
}

/// Removing a follower; removing the leader makes it step down once the change commits, and
/// the others elect a new leader.
#[test]
fn thesis_4_2_2_remove_follower_and_leader() {
    let mut net = Net::new(&[1, 2, 3]);
    net.campaign(1);
    change(&mut net, 1, MembershipChange::Remove(3));
    assert_eq!(net.node(1).membership().voters, ids(&[1, 2]));
    assert!(net.node(1).status().progress.iter().all(|p| p.id != 3));
    // Node 3 learned it is no longer a voter: it becomes a learner and never campaigns.
    assert_eq!(net.node(3).role(), Role::Learner);
    let p = change(&mut net, 1, MembershipChange::Remove(1));
    assert!(net.node(1).commit_index() >= p.index);
    assert_ne!(net.node(1).role(), Role::Leader);
    net.advance(1000);
    assert_eq!(net.leaders(), vec![2]);
    assert_eq!(net.node(2).membership().voters, ids(&[2]));
}

/// Invalid changes and one change at a time.
#[test]
fn membership_change_validation() {
    let mut r = settled_leader(cfg(1), &[1, 2, 3]);
    let bad = |r: &mut Raft, c| {
        matches!(
            r.change_membership(2000, c),
            Err(ProposeError::InvalidMembershipChange(_))
        )
    };
    assert!(bad(&mut r, MembershipChange::AddLearner(2)));
    assert!(bad(&mut r, MembershipChange::Promote(2)));
    assert!(bad(&mut r, MembershipChange::Remove(9)));
    let p = r
        .change_membership(2000, MembershipChange::AddLearner(4))
        .unwrap();
    assert_eq!(p, Proposal { index: 2, term: 1 });
    // Effective on append.
    assert_eq!(r.membership().learners, ids(&[4]));
    assert_eq!(
        r.change_membership(2000, MembershipChange::Promote(4)),
        Err(ProposeError::MembershipChangePending)
    );
    // The new learner gets a probe with the change itself.
    let out = sends(&poll(&mut r));
    assert!(out.iter().any(|m| m.to == 4
        && matches!(&m.body, MessageBody::AppendEntries { entries, .. }
            if entries.iter().any(|e| e.index == 2))));
    let mut single = Raft::new(cfg(1), fresh(&[1]), 1, 0).unwrap();
    poll(&mut single);
    single.tick(300);
    for _ in 0..2 {
        let seq = persist_seq(&poll(&mut single));
        single.persisted(300, seq);
    }
    assert_eq!((single.role(), single.commit_index()), (Role::Leader, 1));
    assert!(bad(&mut single, MembershipChange::Remove(1)));
    // Not the leader.
    let mut f = Raft::new(cfg(2), fresh(&[1, 2]), 1, 0).unwrap();
    assert_eq!(
        f.change_membership(0, MembershipChange::AddLearner(5)),
        Err(ProposeError::NotLeader { leader: None })
    );
}

/// Learners never campaign, and their votes never count toward a quorum. A learner still
/// answers vote requests on the log and term checks alone (thesis §4.1: requests are processed
/// without consulting the recipient's configuration), because it may have been promoted in an
/// entry it has not received yet — refusing cost the simulator's membership seeds 86 and 120
/// their liveness (actors/src/sim/CORE_BUGS.md, bug 1).
#[test]
fn learner_never_campaigns_and_its_vote_never_counts() {
    let mut r = Raft::new(cfg(4), fresh(&[1, 2, 3]), 1, 0).unwrap();
    poll(&mut r);
    for t in [300, 600, 900, 5000] {
        r.tick(t);
    }
    assert_eq!((r.role(), r.term()), (Role::Learner, 0));
    assert!(sends(&poll(&mut r)).is_empty());
    r.handle_message(
        6000,
        msg(
            1,
            4,
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
    let mut c = Raft::new(cfg(1), fresh(&[1, 2, 3]), 1, 0).unwrap();
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
    for from in [4, 5] {
        for pre_vote in [true, false] {
            c.handle_message(
                1000,
                msg(
                    from,
                    1,
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
    let mut f = Raft::new(cfg(2), restored(&[1, 2, 3], 1, None, &[1]), 1, 0).unwrap();
    let m = Membership::with_voters([1, 3]);
    f.handle_message(
        1000,
        msg(
            1,
            2,
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
    assert_eq!(f.role(), Role::Learner, "removed from the voters");
    f.handle_message(
        1001,
        msg(
            3,
            2,
            2,
            MessageBody::AppendEntries {
                prev_log_index: 1,
                prev_log_term: 1,
                entries: vec![cmd(2, 2, b"z")],
                leader_commit: 1,
            },
        ),
    );
    assert_eq!(f.membership(), &Membership::with_voters([1, 2, 3]));
    assert_eq!(f.role(), Role::Follower);
}
