//! Issue 12, finding 3: a forged message must not move a Raft core's term. The core ignores
//! senders that no configuration it knows names (except as a leader of its own term, or of a
//! newer one for a non-voter: issue 14) and terms above `MAX_TERM`.

use conclave_core::ids::{GroupId, NodeId};
use conclave_core::raft::{
    Entry, EntryPayload, HardState, Membership, Message, MessageBody, Raft, RaftConfig,
    RestoreState, Role, MAX_TERM,
};

fn core(id: NodeId, voters: &[NodeId]) -> Raft {
    let cfg = RaftConfig {
        id,
        group: GroupId::FIRST,
        ..RaftConfig::default()
    };
    let restore = RestoreState {
        base_membership: Membership::with_voters(voters.iter().copied()),
        ..RestoreState::default()
    };
    match Raft::new(cfg, restore, 7, 0) {
        Ok(r) => r,
        Err(e) => panic!("core: {e}"),
    }
}

fn heartbeat(from: NodeId, to: NodeId, term: u64) -> Message {
    Message {
        group: GroupId::FIRST,
        from,
        to,
        term,
        body: MessageBody::Heartbeat {
            commit: 0,
            read_ctx: 0,
        },
    }
}

#[test]
fn finding3_forged_max_term_from_a_non_member_is_ignored() {
    let mut r = core(
        NodeId::new(1),
        &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
    );
    r.handle_message(10, heartbeat(NodeId::new(777), NodeId::new(1), u64::MAX));
    assert_eq!(r.term(), 0, "a non-member moved the term");
    assert_eq!(r.leader(), None);
    // Even a member cannot push the term past MAX_TERM.
    r.handle_message(20, heartbeat(NodeId::new(2), NodeId::new(1), u64::MAX));
    assert_eq!(r.term(), 0, "a term near overflow was adopted");
    r.handle_message(30, heartbeat(NodeId::new(2), NodeId::new(1), MAX_TERM + 1));
    assert_eq!(r.term(), 0);
    // A member at a sane term is heard as before.
    r.handle_message(40, heartbeat(NodeId::new(2), NodeId::new(1), 5));
    assert_eq!(r.term(), 5);
    assert_eq!(r.leader(), Some(NodeId::new(2)));
    assert_eq!(r.role(), Role::Follower);
}

#[test]
fn finding3_a_node_without_configuration_hears_any_authenticated_sender() {
    // Empty membership: a node that has not been given a configuration yet (e.g. one being
    // added) must be reachable by the leader that will replicate the configuration to it.
    let mut r = core(NodeId::new(4), &[]);
    r.handle_message(10, heartbeat(NodeId::new(1), NodeId::new(4), 3));
    assert_eq!(r.term(), 3);
    r.handle_message(20, heartbeat(NodeId::new(1), NodeId::new(4), u64::MAX));
    assert_eq!(r.term(), 3, "a term near overflow was adopted");
}

#[test]
fn finding3_a_member_of_an_earlier_configuration_in_the_log_is_still_heard() {
    // Bootstrap {1, 2}; the log then adds 3 and removes it again. Node 3 may come back in a
    // configuration this node has not received yet, so it is still heard; 777 never is.
    let restore = RestoreState {
        hard_state: HardState {
            term: 1,
            vote: None,
        },
        entries: vec![
            Entry {
                term: 1,
                index: 1,
                payload: EntryPayload::Membership(Membership::with_voters([
                    NodeId::new(1),
                    NodeId::new(2),
                    NodeId::new(3),
                ])),
            },
            Entry {
                term: 1,
                index: 2,
                payload: EntryPayload::Membership(Membership::with_voters([
                    NodeId::new(1),
                    NodeId::new(2),
                ])),
            },
        ],
        base_membership: Membership::with_voters([NodeId::new(1), NodeId::new(2)]),
        ..RestoreState::default()
    };
    let cfg = RaftConfig {
        id: NodeId::new(1),
        group: GroupId::FIRST,
        ..RaftConfig::default()
    };
    let mut r = match Raft::new(cfg, restore, 7, 0) {
        Ok(r) => r,
        Err(e) => panic!("core: {e}"),
    };
    r.handle_message(10, heartbeat(NodeId::new(777), NodeId::new(1), 4));
    assert_eq!(r.term(), 1);
    r.handle_message(20, heartbeat(NodeId::new(3), NodeId::new(1), 4));
    assert_eq!(
        r.term(),
        4,
        "a member of an earlier configuration was not heard"
    );
}

/// Issue 14: a node whose log ends before a membership change cannot know a member that change
/// added; if that member leads, the node must still follow it, or it never catches up (the
/// simulator's membership profile stalled at seed 109 before this rule). An unknown sender is
/// heard only as a leader (Heartbeat/AppendEntries), by a voter only in the voter's own term
/// (so it never moves a voter's term), by a learner also in a newer term (a learner never
/// campaigns and hears only from the leader). Vote requests from it are never heard.
#[test]
fn a_lagging_node_follows_a_leader_added_after_its_log_ends() {
    // Voter 1 of {1, 2, 3} in term 0: a heartbeat of unknown 9 in term 4 is ignored...
    let mut r = core(
        NodeId::new(1),
        &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
    );
    r.handle_message(10, heartbeat(NodeId::new(9), NodeId::new(1), 4));
    assert_eq!((r.term(), r.leader()), (0, None));
    // ...and so is its vote request, in any term.
    let vote = |term| Message {
        group: GroupId::FIRST,
        from: NodeId::new(9),
        to: NodeId::new(1),
        term,
        body: MessageBody::RequestVote {
            pre_vote: false,
            last_log_index: 100,
            last_log_term: 100,
            leadership_transfer: true,
        },
    };
    r.handle_message(20, vote(4));
    assert_eq!(r.term(), 0);
    // Once the voter learned term 4 from a member (here: member 2 refusing its pre-vote, as
    // a member that follows the new leader does), the unknown leader of that term is followed.
    r.handle_message(
        30,
        Message {
            group: GroupId::FIRST,
            from: NodeId::new(2),
            to: NodeId::new(1),
            term: 4,
            body: MessageBody::RequestVoteResponse {
                pre_vote: true,
                granted: false,
            },
        },
    );
    assert_eq!((r.term(), r.leader()), (4, None));
    r.handle_message(40, heartbeat(NodeId::new(9), NodeId::new(1), 4));
    assert_eq!((r.term(), r.leader()), (4, Some(NodeId::new(9))));
    r.handle_message(50, vote(4));
    assert_eq!(r.term(), 4);
    // A second unknown sender claiming to lead the same term is not followed (a term has one
    // leader; the transport admits any authenticated peer, issue 14).
    r.handle_message(60, heartbeat(NodeId::new(8), NodeId::new(1), 4));
    assert_eq!((r.term(), r.leader()), (4, Some(NodeId::new(9))));
    // Nor one claiming a term whose leader is a known member.
    let mut k = core(
        NodeId::new(1),
        &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
    );
    k.handle_message(10, heartbeat(NodeId::new(2), NodeId::new(1), 5));
    k.handle_message(20, heartbeat(NodeId::new(9), NodeId::new(1), 5));
    assert_eq!((k.term(), k.leader()), (5, Some(NodeId::new(2))));

    // A learner (4, outside the voters {1, 2, 3}) adopts the newer term of an unknown leader.
    let mut l = core(
        NodeId::new(4),
        &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
    );
    assert_eq!(l.role(), Role::Learner);
    l.handle_message(10, heartbeat(NodeId::new(9), NodeId::new(4), 6));
    assert_eq!((l.term(), l.leader()), (6, Some(NodeId::new(9))));
}
