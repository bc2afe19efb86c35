//! Leader election: timeouts, pre-vote, vote rules, check-quorum (Raft §5.2, §5.4.1; thesis
//! §4.2.3, §6.2, §9.6).

use super::net::Net;
use super::*;

/// Removes the `SetTimer` actions, checking each lies in `range`.
fn strip_timers(actions: Vec<Action>, range: std::ops::Range<Millis>) -> Vec<Action> {
    actions
        .into_iter()
        .filter(|a| match a {
            Action::SetTimer { at } => {
                assert!(range.contains(at), "timer {at} outside {range:?}");
                false
            }
            _ => true,
        })
        .collect()
}

fn vote_req(from: NodeId, to: NodeId, term: Term, pre: bool, lli: LogIndex, llt: Term) -> Message {
    msg(
        from,
        to,
        term,
        MessageBody::RequestVote {
            pre_vote: pre,
            last_log_index: lli,
            last_log_term: llt,
            leadership_transfer: false,
        },
    )
}

fn vote_resp(from: NodeId, to: NodeId, term: Term, pre: bool, granted: bool) -> Message {
    msg(
        from,
        to,
        term,
        MessageBody::RequestVoteResponse {
            pre_vote: pre,
            granted,
        },
    )
}

#[test]
fn new_core_starts_as_follower_and_sets_a_randomized_timer() {
    let mut r = Raft::new(
        cfg(NodeId::new(1)),
        fresh(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
        9,
        1000,
    )
    .unwrap();
    assert_eq!(r.role(), Role::Follower);
    assert_eq!(r.term(), 0);
    assert_eq!(strip_timers(poll(&mut r), 1150..1300), vec![]);
    // A node that is not a voter starts as a learner.
    let r = Raft::new(
        cfg(NodeId::new(4)),
        fresh(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
        9,
        0,
    )
    .unwrap();
    assert_eq!(r.role(), Role::Learner);
    // A bad config or a corrupt restore is refused.
    assert!(Raft::new(cfg(NodeId::NONE), fresh(&[NodeId::new(1)]), 9, 0).is_err());
    let mut bad = restored(&[NodeId::new(1)], 1, None, &[1, 1]);
    bad.entries[1].index = 5;
    let err = Raft::new(cfg(NodeId::new(1)), bad, 9, 0).err();
    assert!(
        matches!(
            err,
            Some(ConfigError::InvalidRestore(RestoreError::Gap {
                position: 1,
                index: 5,
                expected: 2
            }))
        ),
        "{err:?}"
    );
}

#[test]
fn election_timeouts_are_randomized_per_seed() {
    let timer = |seed| {
        let mut r = Raft::new(
            cfg(NodeId::new(1)),
            fresh(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
            seed,
            0,
        )
        .unwrap();
        match poll(&mut r).as_slice() {
            [Action::SetTimer { at }] => *at,
            other => panic!("unexpected {other:?}"),
        }
    };
    let timers: BTreeSet<Millis> = (0..20).map(timer).collect();
    assert!(
        timers.len() > 5,
        "timeouts should differ across seeds: {timers:?}"
    );
    assert!(timers.iter().all(|t| (150..300).contains(t)));
    assert_eq!(timer(42), timer(42), "same seed, same timeout");
}

/// Raft §5.2 with a single voter: it elects itself once its vote is durable, and commits its
/// no-op once that is durable.
#[test]
fn raft_5_2_single_node_elects_itself_after_persisting_its_vote() {
    let mut r = Raft::new(cfg(NodeId::new(1)), fresh(&[NodeId::new(1)]), 1, 0).unwrap();
    poll(&mut r);
    r.tick(300);
    assert_eq!(
        strip_timers(poll(&mut r), 450..600),
        vec![
            Action::RoleChanged {
                role: Role::Candidate,
                term: 1,
                leader: None
            },
            Action::Persist(PersistRequest {
                seq: 1,
                hard_state: Some(HardState {
                    term: 1,
                    vote: Some(NodeId::new(1))
                }),
                truncate_from: None,
                entries: vec![],
                snapshot: None,
            }),
        ]
    );
    // Not leader before the vote for itself is durable.
    assert_eq!(r.role(), Role::Candidate);
    r.persisted(301, 1);
    assert_eq!(
        poll(&mut r),
        vec![
            Action::RoleChanged {
                role: Role::Leader,
                term: 1,
                leader: Some(NodeId::new(1))
            },
            Action::Persist(PersistRequest {
                seq: 2,
                hard_state: None,
                truncate_from: None,
                entries: vec![noop(1, 1)],
                snapshot: None,
            }),
            Action::SetTimer { at: 351 },
        ]
    );
    // The leader counts its own no-op only once it is durable.
    assert_eq!(r.commit_index(), 0);
    r.persisted(302, 2);
    assert_eq!(r.commit_index(), 1);
    assert_eq!(poll(&mut r), vec![Action::Apply(vec![noop(1, 1)])]);
}

/// Two pre-candidates with equally up-to-date logs (two followers of a dead leader whose
/// timers fired together): the one ranked higher in the group keeps its pre-vote from the
/// other and gets the other's, so they do not both campaign and split the vote. A follower
/// grants both, and a pre-candidate grants a requester with a better log whatever the ranks.
#[test]
fn of_two_equal_pre_candidates_only_the_higher_ranked_gets_both_pre_votes() {
    let grants = |r: &mut Raft| -> Vec<bool> {
        sends(&poll(r))
            .iter()
            .filter_map(|m| match m.body {
                MessageBody::RequestVoteResponse {
                    pre_vote: true,
                    granted,
                } => Some(granted),
                _ => None,
            })
            .collect()
    };
    let pre_candidate = |id| {
        let mut r = Raft::new(
            cfg(id),
            fresh(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
            id.get(),
            0,
        )
        .unwrap();
        poll(&mut r);
        r.tick(300);
        poll(&mut r);
        assert_eq!(r.role(), Role::PreCandidate);
        r
    };
    let mut a = pre_candidate(NodeId::new(1));
    let mut b = pre_candidate(NodeId::new(2));
    a.handle_message(301, vote_req(NodeId::new(2), NodeId::new(1), 1, true, 0, 0));
    b.handle_message(301, vote_req(NodeId::new(1), NodeId::new(2), 1, true, 0, 0));
    let (ga, gb) = (grants(&mut a), grants(&mut b));
    assert_eq!((ga.len(), gb.len()), (1, 1));
    assert_ne!(ga[0], gb[0], "exactly one of the two grants the other");
    let mut f = Raft::new(
        cfg(NodeId::new(3)),
        fresh(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
        3,
        0,
    )
    .unwrap();
    poll(&mut f);
    f.handle_message(301, vote_req(NodeId::new(1), NodeId::new(3), 1, true, 0, 0));
    f.handle_message(302, vote_req(NodeId::new(2), NodeId::new(3), 1, true, 0, 0));
    assert_eq!(grants(&mut f), vec![true, true]);
    // The one that refused grants the other once the other's log is better.
    let (refuser, other) = if ga[0] {
        (&mut b, NodeId::new(1))
    } else {
        (&mut a, NodeId::new(2))
    };
    refuser.handle_message(303, vote_req(other, refuser.id(), 2, true, 1, 1));
    assert_eq!(grants(refuser), vec![true]);
    // The tie-break holds only one heartbeat interval (50 ms) into the refuser's own round
    // (it started at 300): still at 349, no longer at 350, when it is evidently not winning
    // (sim/src/raft/CORE_BUGS.md, bug 4: a pre-candidate that cannot win refused every
    // lower-ranked node forever).
    refuser.handle_message(349, vote_req(other, refuser.id(), 1, true, 0, 0));
    assert_eq!(grants(refuser), vec![false]);
    refuser.handle_message(350, vote_req(other, refuser.id(), 1, true, 0, 0));
    assert_eq!(grants(refuser), vec![true]);
}

/// Thesis §9.6: the pre-vote round asks for term + 1 without changing the node's term; a
/// quorum of pre-votes starts the real election (Raft §5.2), whose requests wait for the new
/// term and vote to be durable.
#[test]
fn thesis_9_6_prevote_then_election_exact_actions() {
    let mut r = Raft::new(
        cfg(NodeId::new(1)),
        fresh(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
        1,
        0,
    )
    .unwrap();
    poll(&mut r);
    r.tick(300);
    let pre = |to| vote_req(NodeId::new(1), to, 1, true, 0, 0);
    assert_eq!(
        strip_timers(poll(&mut r), 450..600),
        vec![
            Action::Send(pre(NodeId::new(2))),
            Action::Send(pre(NodeId::new(3))),
            Action::RoleChanged {
                role: Role::PreCandidate,
                term: 0,
                leader: None
            },
        ]
    );
    assert_eq!(r.term(), 0, "a pre-vote does not change the term");

    r.handle_message(
        310,
        vote_resp(NodeId::new(2), NodeId::new(1), 1, true, true),
    );
    assert_eq!(r.role(), Role::Candidate);
    assert_eq!(r.term(), 1);
    assert_eq!(
        strip_timers(poll(&mut r), 460..610),
        vec![
            Action::RoleChanged {
                role: Role::Candidate,
                term: 1,
                leader: None
            },
            Action::Persist(PersistRequest {
                seq: 1,
                hard_state: Some(HardState {
                    term: 1,
                    vote: Some(NodeId::new(1))
                }),
                truncate_from: None,
                entries: vec![],
                snapshot: None,
            }),
        ]
    );
    // The persistence contract: the vote requests go out once term and vote are durable.
    r.persisted(311, 1);
    let req = |to| vote_req(NodeId::new(1), to, 1, false, 0, 0);
    assert_eq!(
        poll(&mut r),
        vec![
            Action::Send(req(NodeId::new(2))),
            Action::Send(req(NodeId::new(3)))
        ]
    );

    r.handle_message(
        320,
        vote_resp(NodeId::new(3), NodeId::new(1), 1, false, true),
    );
    assert_eq!(
        poll(&mut r),
        vec![
            Action::RoleChanged {
                role: Role::Leader,
                term: 1,
                leader: Some(NodeId::new(1))
            },
            Action::Send(msg(
                NodeId::new(1),
                NodeId::new(2),
                1,
                MessageBody::AppendEntries {
                    prev_log_index: 0,
                    prev_log_term: 0,
                    entries: vec![noop(1, 1)],
                    leader_commit: 0
                }
            )),
            Action::Send(msg(
                NodeId::new(1),
                NodeId::new(3),
                1,
                MessageBody::AppendEntries {
                    prev_log_index: 0,
                    prev_log_term: 0,
                    entries: vec![noop(1, 1)],
                    leader_commit: 0
                }
            )),
            Action::Persist(PersistRequest {
                seq: 2,
                hard_state: None,
                truncate_from: None,
                entries: vec![noop(1, 1)],
                snapshot: None,
            }),
            Action::SetTimer { at: 370 },
        ]
    );
}

/// Raft §5.4.1: a vote is denied to a candidate whose log is less up to date, granted to one
/// whose log is at least as up to date, and the grant waits until the vote is durable.
#[test]
fn raft_5_4_1_vote_requires_up_to_date_log_and_is_sent_after_persist() {
    let mut r = Raft::new(
        cfg(NodeId::new(2)),
        restored(
            &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
            2,
            None,
            &[1, 1, 2],
        ),
        1,
        0,
    )
    .unwrap();
    poll(&mut r);
    // Candidate 1's last entry has an older term, though its log is longer.
    r.handle_message(
        1000,
        vote_req(NodeId::new(1), NodeId::new(2), 3, false, 5, 1),
    );
    assert_eq!(r.term(), 3);
    assert_eq!(
        strip_timers(poll(&mut r), 1150..1300),
        vec![
            Action::RoleChanged {
                role: Role::Follower,
                term: 3,
                leader: None
            },
            Action::Persist(PersistRequest {
                seq: 1,
                hard_state: Some(HardState {
                    term: 3,
                    vote: None
                }),
                truncate_from: None,
                entries: vec![],
                snapshot: None,
            }),
        ]
    );
    r.persisted(1001, 1);
    assert_eq!(
        poll(&mut r),
        vec![Action::Send(vote_resp(
            NodeId::new(2),
            NodeId::new(1),
            3,
            false,
            false
        ))]
    );
    // Same last term, shorter log: denied.
    r.handle_message(
        1002,
        vote_req(NodeId::new(3), NodeId::new(2), 3, false, 2, 2),
    );
    assert_eq!(
        poll(&mut r),
        vec![Action::Send(vote_resp(
            NodeId::new(2),
            NodeId::new(3),
            3,
            false,
            false
        ))]
    );
    // Same last term and index: granted, once durable.
    r.handle_message(
        1003,
        vote_req(NodeId::new(3), NodeId::new(2), 3, false, 3, 2),
    );
    let a = strip_timers(poll(&mut r), 1153..1303);
    assert_eq!(
        a,
        vec![Action::Persist(PersistRequest {
            seq: 2,
            hard_state: Some(HardState {
                term: 3,
                vote: Some(NodeId::new(3))
            }),
            truncate_from: None,
            entries: vec![],
            snapshot: None,
        })]
    );
    r.persisted(1004, 2);
    assert_eq!(
        poll(&mut r),
        vec![Action::Send(vote_resp(
            NodeId::new(2),
            NodeId::new(3),
            3,
            false,
            true
        ))]
    );
    // Raft §5.2: one vote per term, even to a better candidate...
    r.handle_message(
        1005,
        vote_req(NodeId::new(1), NodeId::new(2), 3, false, 9, 3),
    );
    assert_eq!(
        poll(&mut r),
        vec![Action::Send(vote_resp(
            NodeId::new(2),
            NodeId::new(1),
            3,
            false,
            false
        ))]
    );
    // ...but a repeated request from the same candidate is granted again.
    r.handle_message(
        1006,
        vote_req(NodeId::new(3), NodeId::new(2), 3, false, 3, 2),
    );
    assert_eq!(
        strip_timers(poll(&mut r), 1156..1306),
        vec![Action::Send(vote_resp(
            NodeId::new(2),
            NodeId::new(3),
            3,
            false,
            true
        ))]
    );
}

/// Thesis §9.6: a pre-vote is answered in the requested term without changing ours, and it
/// follows the same log rule.
#[test]
fn thesis_9_6_prevote_changes_no_state() {
    let mut r = Raft::new(
        cfg(NodeId::new(2)),
        restored(
            &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
            2,
            Some(NodeId::new(2)),
            &[1, 2],
        ),
        1,
        0,
    )
    .unwrap();
    poll(&mut r);
    r.handle_message(
        1000,
        vote_req(NodeId::new(1), NodeId::new(2), 3, true, 2, 2),
    );
    assert_eq!(
        poll(&mut r),
        vec![Action::Send(vote_resp(
            NodeId::new(2),
            NodeId::new(1),
            3,
            true,
            true
        ))]
    );
    assert_eq!((r.term(), r.role()), (2, Role::Follower));
    r.handle_message(
        1001,
        vote_req(NodeId::new(1), NodeId::new(2), 3, true, 1, 1),
    );
    assert_eq!(
        poll(&mut r),
        vec![Action::Send(vote_resp(
            NodeId::new(2),
            NodeId::new(1),
            2,
            true,
            false
        ))]
    );
    // A pre-vote for a term that is not ahead of ours is denied.
    r.handle_message(
        1002,
        vote_req(NodeId::new(1), NodeId::new(2), 2, true, 9, 9),
    );
    assert_eq!(
        poll(&mut r),
        vec![Action::Send(vote_resp(
            NodeId::new(2),
            NodeId::new(1),
            2,
            true,
            false
        ))]
    );
}

/// Thesis §4.2.3 (check-quorum): a node that heard from its leader less than an election
/// timeout ago ignores (pre-)vote requests, unless they follow a leader transfer.
#[test]
fn thesis_4_2_3_votes_ignored_while_leader_is_alive() {
    let mut r = Raft::new(
        cfg(NodeId::new(2)),
        restored(
            &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
            1,
            Some(NodeId::new(1)),
            &[1],
        ),
        1,
        0,
    )
    .unwrap();
    poll(&mut r);
    r.handle_message(
        1000,
        msg(
            NodeId::new(1),
            NodeId::new(2),
            1,
            MessageBody::Heartbeat {
                commit: 1,
                read_ctx: 4,
            },
        ),
    );
    assert_eq!(
        strip_timers(poll(&mut r), 1150..1300),
        vec![
            Action::Send(msg(
                NodeId::new(2),
                NodeId::new(1),
                1,
                MessageBody::HeartbeatResponse { read_ctx: 4 }
            )),
            Action::RoleChanged {
                role: Role::Follower,
                term: 1,
                leader: Some(NodeId::new(1))
            },
            Action::Apply(vec![cmd(1, 1, &[0])]),
        ]
    );
    r.handle_message(
        1100,
        vote_req(NodeId::new(3), NodeId::new(2), 2, false, 5, 1),
    );
    r.handle_message(
        1100,
        vote_req(NodeId::new(3), NodeId::new(2), 2, true, 5, 1),
    );
    // The vote is ignored outright; the pre-vote is denied in our (unchanged) term.
    assert_eq!(
        poll(&mut r),
        vec![Action::Send(vote_resp(
            NodeId::new(2),
            NodeId::new(3),
            1,
            true,
            false
        ))]
    );
    assert_eq!(r.term(), 1);
    // After an election timeout without the leader, the vote is considered.
    r.handle_message(
        1151,
        vote_req(NodeId::new(3), NodeId::new(2), 2, false, 5, 1),
    );
    assert_eq!(r.term(), 2);
    // A leadership-transfer election bypasses the lease.
    let mut r = Raft::new(
        cfg(NodeId::new(2)),
        restored(
            &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
            1,
            Some(NodeId::new(1)),
            &[1],
        ),
        1,
        0,
    )
    .unwrap();
    r.handle_message(
        1000,
        msg(
            NodeId::new(1),
            NodeId::new(2),
            1,
            MessageBody::Heartbeat {
                commit: 1,
                read_ctx: 4,
            },
        ),
    );
    poll(&mut r);
    r.handle_message(
        1010,
        msg(
            NodeId::new(3),
            NodeId::new(2),
            2,
            MessageBody::RequestVote {
                pre_vote: false,
                last_log_index: 1,
                last_log_term: 1,
                leadership_transfer: true,
            },
        ),
    );
    assert_eq!(r.term(), 2);
    poll(&mut r);
    r.persisted(1011, 1);
    let out = poll(&mut r);
    assert!(
        out.contains(&Action::Send(vote_resp(
            NodeId::new(2),
            NodeId::new(3),
            2,
            false,
            true
        ))),
        "{out:?}"
    );
}

/// A restarted node honours the lease of a leader it may have acknowledged before crashing: it
/// ignores votes for an election timeout after starting.
#[test]
fn restarted_node_ignores_votes_for_an_election_timeout() {
    let mut r = Raft::new(
        cfg(NodeId::new(2)),
        restored(
            &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
            1,
            Some(NodeId::new(1)),
            &[1],
        ),
        1,
        5000,
    )
    .unwrap();
    poll(&mut r);
    r.handle_message(
        5100,
        vote_req(NodeId::new(3), NodeId::new(2), 2, false, 5, 1),
    );
    assert_eq!(poll(&mut r), vec![]);
    r.handle_message(
        5150,
        vote_req(NodeId::new(3), NodeId::new(2), 2, false, 5, 1),
    );
    assert_eq!(r.term(), 2);
}

/// Raft §5.2: when a candidate neither wins nor loses, it times out and starts a new election
/// in the next term, after a new randomized timeout; a quorum of denials ends the candidacy.
#[test]
fn raft_5_2_split_vote_and_rejection() {
    let c = RaftConfig {
        pre_vote: false,
        ..cfg(NodeId::new(1))
    };
    let mut r = Raft::new(
        c.clone(),
        fresh(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
        1,
        0,
    )
    .unwrap();
    poll(&mut r);
    r.tick(300);
    poll(&mut r);
    r.persisted(300, 1);
    poll(&mut r);
    // Node 2 voted for someone else in term 1; node 3 never answers.
    r.handle_message(
        310,
        vote_resp(NodeId::new(2), NodeId::new(1), 1, false, false),
    );
    assert_eq!(r.role(), Role::Candidate);
    r.tick(600);
    assert_eq!((r.role(), r.term()), (Role::Candidate, 2));
    poll(&mut r);
    r.persisted(600, 2);
    let out = poll(&mut r);
    assert!(
        out.contains(&Action::Send(vote_req(
            NodeId::new(1),
            NodeId::new(2),
            2,
            false,
            0,
            0
        ))),
        "{out:?}"
    );
    // A quorum of denials sends it back to follower in the same term.
    r.handle_message(
        610,
        vote_resp(NodeId::new(2), NodeId::new(1), 2, false, false),
    );
    r.handle_message(
        611,
        vote_resp(NodeId::new(3), NodeId::new(1), 2, false, false),
    );
    assert_eq!((r.role(), r.term()), (Role::Follower, 2));
}

/// Raft §5.1: a stale-term leader is answered with the current term and steps down on it.
#[test]
fn raft_5_1_stale_leader_learns_the_new_term() {
    let mut r = Raft::new(
        cfg(NodeId::new(2)),
        restored(
            &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
            5,
            None,
            &[1],
        ),
        1,
        0,
    )
    .unwrap();
    poll(&mut r);
    r.handle_message(
        1000,
        msg(
            NodeId::new(1),
            NodeId::new(2),
            3,
            MessageBody::AppendEntries {
                prev_log_index: 1,
                prev_log_term: 1,
                entries: vec![],
                leader_commit: 1,
            },
        ),
    );
    assert_eq!(
        poll(&mut r),
        vec![Action::Send(msg(
            NodeId::new(2),
            NodeId::new(1),
            5,
            MessageBody::AppendEntriesResponse {
                success: false,
                index: 0,
                conflict_term: None,
                conflict_index: 0
            }
        ))]
    );
    assert_eq!(r.leader(), None);
}

#[test]
fn three_nodes_elect_exactly_one_leader_and_replicate() {
    let mut net = Net::new(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    net.advance(1000);
    let leaders = net.leaders();
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    let l = leaders[0];
    let term = net.node(l).term();
    for id in [NodeId::new(1), NodeId::new(2), NodeId::new(3)] {
        assert_eq!(net.node(id).term(), term);
        assert_eq!(net.node(id).leader(), Some(l));
    }
    let p = net.propose(l, b"x");
    net.advance(100);
    for id in [NodeId::new(1), NodeId::new(2), NodeId::new(3)] {
        assert_eq!(net.node(id).commit_index(), p.index);
        assert_eq!(net.applied[&id].last().map(|e| e.term), Some(p.term));
    }
}

/// Thesis §6.2: a leader that cannot hear from a quorum steps down within an election timeout
/// or two, failing its pending reads.
#[test]
fn thesis_6_2_check_quorum_leader_steps_down() {
    let mut net = Net::new(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    net.campaign(NodeId::new(1));
    assert_eq!(net.leaders(), vec![NodeId::new(1)]);
    net.isolate(NodeId::new(1));
    net.advance(400);
    assert_eq!(net.node(NodeId::new(1)).role(), Role::Follower);
    assert_eq!(
        net.node(NodeId::new(1)).term(),
        1,
        "stepping down does not change the term"
    );
    // Without check-quorum, it would have stayed leader.
    let mut net = Net::with(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)], |c| {
        c.check_quorum = false;
    });
    net.campaign(NodeId::new(1));
    net.isolate(NodeId::new(1));
    net.advance(400);
    assert_eq!(net.node(NodeId::new(1)).role(), Role::Leader);
}

/// Seed 000's requirement: a node cut off from the group times out again and again, but with
/// pre-vote it never raises its term, so reconnecting does not depose the healthy leader.
#[test]
fn rejoin_after_partition_does_not_depose_leader() {
    let mut net = Net::new(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    net.campaign(NodeId::new(1));
    assert_eq!(net.leaders(), vec![NodeId::new(1)]);
    let term = net.node(NodeId::new(1)).term();
    net.isolate(NodeId::new(3));
    net.advance(3000);
    assert_eq!(
        net.node(NodeId::new(3)).term(),
        term,
        "pre-vote keeps the isolated node's term"
    );
    assert_eq!(net.node(NodeId::new(3)).role(), Role::PreCandidate);
    let p = net.propose(NodeId::new(1), b"during");
    net.heal();
    net.advance(1000);
    assert_eq!(net.leaders(), vec![NodeId::new(1)]);
    assert_eq!(
        net.node(NodeId::new(1)).term(),
        term,
        "no new election on restored connectivity"
    );
    assert_eq!(net.node(NodeId::new(3)).leader(), Some(NodeId::new(1)));
    assert_eq!(
        net.node(NodeId::new(3)).commit_index(),
        net.node(NodeId::new(1)).commit_index()
    );
    assert!(net.node(NodeId::new(3)).commit_index() >= p.index);

    // Without pre-vote the isolated node's term grows, and rejoining disrupts the leader:
    // this is what pre-vote prevents.
    let mut net = Net::with(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)], |c| {
        c.pre_vote = false
    });
    net.campaign(NodeId::new(1));
    net.isolate(NodeId::new(3));
    net.advance(3000);
    assert!(net.node(NodeId::new(3)).term() > term);
}

/// One-way partition: the leader hears nobody but can still send; check-quorum makes it step
/// down, and a node that keeps hearing the leader does not vote the others' candidate in
/// until it stops hearing it.
#[test]
fn one_way_partition_leader_deaf_steps_down_and_a_new_leader_emerges() {
    let mut net = Net::new(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    net.campaign(NodeId::new(1));
    net.cut_one_way(NodeId::new(2), NodeId::new(1));
    net.cut_one_way(NodeId::new(3), NodeId::new(1));
    net.advance(2000);
    let leaders = net.leaders();
    assert_eq!(leaders.len(), 1, "{leaders:?}");
    assert_ne!(leaders[0], NodeId::new(1));
}

#[cfg(feature = "planted-bugs")]
#[test]
fn planted_bug_vote_without_log_check_grants_to_a_stale_candidate() {
    let mut c = cfg(NodeId::new(2));
    c.planted_bugs.vote_without_log_check = true;
    let mut r = Raft::new(
        c,
        restored(
            &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
            2,
            None,
            &[1, 1, 2],
        ),
        1,
        0,
    )
    .unwrap();
    poll(&mut r);
    r.handle_message(
        1000,
        vote_req(NodeId::new(1), NodeId::new(2), 3, false, 1, 1),
    );
    let seq = persist_seq(&poll(&mut r));
    r.persisted(1001, seq);
    assert_eq!(
        poll(&mut r),
        vec![Action::Send(vote_resp(
            NodeId::new(2),
            NodeId::new(1),
            3,
            false,
            true
        ))]
    );
}

/// Drain (issue 14, `conclave member drain`): a drained leader hands leadership to the most
/// caught-up other voter (thesis §3.10); a drained node never campaigns and ignores TimeoutNow,
/// yet still votes, replicates and counts in quorums; undoing it makes it electable again. A
/// sole voter cannot be drained.
#[test]
fn a_drained_node_hands_off_leadership_and_never_campaigns() {
    let mut net = Net::new(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    net.campaign(NodeId::new(1));
    net.propose(NodeId::new(1), b"a");
    // Node 3 falls behind: the hand-off goes to 2, the most caught-up voter.
    net.isolate(NodeId::new(3));
    net.propose(NodeId::new(1), b"b");
    net.heal();
    let now = net.now;
    assert_eq!(
        net.node(NodeId::new(1)).set_drained(now, true),
        Ok(Some(NodeId::new(2)))
    );
    net.drain();
    net.advance(100);
    assert_eq!(net.leaders(), vec![NodeId::new(2)]);
    assert!(net.node(NodeId::new(1)).drained());
    assert_eq!(net.node(NodeId::new(1)).role(), Role::Follower);

    // Node 1 still replicates and counts in the quorum: with 3 cut off, writes commit.
    net.isolate(NodeId::new(3));
    let p = net.propose(NodeId::new(2), b"c");
    assert!(
        net.node(NodeId::new(2)).commit_index() >= p.index,
        "committed with node 1"
    );
    net.advance(100);
    assert!(net.node(NodeId::new(1)).commit_index() >= p.index);
    net.heal();
    net.advance(100);

    // The leader goes away: 1 never campaigns, but votes, so 3 wins.
    net.isolate(NodeId::new(2));
    let term = net.node(NodeId::new(1)).term();
    net.advance(3000);
    assert_eq!(
        net.leaders(),
        vec![NodeId::new(3)],
        "only node 3 may take over"
    );
    assert_eq!(net.node(NodeId::new(1)).leader(), Some(NodeId::new(3)));
    assert_eq!(
        net.node(NodeId::new(1)).term(),
        net.node(NodeId::new(3)).term()
    );
    assert!(net.node(NodeId::new(3)).term() > term);

    // A transfer to the drained node is ignored (it does not campaign on TimeoutNow).
    net.heal();
    net.advance(100);
    let now = net.now;
    net.node(NodeId::new(3))
        .transfer_leader(now, NodeId::new(1))
        .unwrap();
    net.drain();
    net.advance(400);
    assert_eq!(net.leaders(), vec![NodeId::new(3)]);

    // Undone: node 1 may lead again.
    let now = net.now;
    assert_eq!(net.node(NodeId::new(1)).set_drained(now, false), Ok(None));
    net.node(NodeId::new(3))
        .transfer_leader(now, NodeId::new(1))
        .unwrap();
    net.drain();
    net.advance(100);
    assert_eq!(net.leaders(), vec![NodeId::new(1)]);

    // A sole voter that leads cannot be drained: nobody could take over.
    let mut solo = Net::new(&[NodeId::new(1)]);
    solo.campaign(NodeId::new(1));
    let now = solo.now;
    assert_eq!(
        solo.node(NodeId::new(1)).set_drained(now, true),
        Err(DrainError::NoOtherVoter)
    );
    assert!(!solo.node(NodeId::new(1)).drained());
}
