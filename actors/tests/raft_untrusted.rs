//! Issue 12, finding 3: a forged message must not move a Raft core's term. The core ignores
//! senders outside the configuration in force and terms above `MAX_TERM`.

use conclave_actors::raft::{
    Entry, EntryPayload, HardState, Membership, Message, MessageBody, Raft, RaftConfig,
    RestoreState, Role, MAX_TERM,
};

fn core(id: u64, voters: &[u64]) -> Raft {
    let cfg = RaftConfig {
        id,
        group: 0,
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

fn heartbeat(from: u64, to: u64, term: u64) -> Message {
    Message {
        group: 0,
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
    let mut r = core(1, &[1, 2, 3]);
    r.handle_message(10, heartbeat(777, 1, u64::MAX));
    assert_eq!(r.term(), 0, "a non-member moved the term");
    assert_eq!(r.leader(), None);
    // Even a member cannot push the term past MAX_TERM.
    r.handle_message(20, heartbeat(2, 1, u64::MAX));
    assert_eq!(r.term(), 0, "a term near overflow was adopted");
    r.handle_message(30, heartbeat(2, 1, MAX_TERM + 1));
    assert_eq!(r.term(), 0);
    // A member at a sane term is heard as before.
    r.handle_message(40, heartbeat(2, 1, 5));
    assert_eq!(r.term(), 5);
    assert_eq!(r.leader(), Some(2));
    assert_eq!(r.role(), Role::Follower);
}

#[test]
fn finding3_a_node_without_configuration_hears_any_authenticated_sender() {
    // Empty membership: a node that has not been given a configuration yet (e.g. one being
    // added) must be reachable by the leader that will replicate the configuration to it.
    let mut r = core(4, &[]);
    r.handle_message(10, heartbeat(1, 4, 3));
    assert_eq!(r.term(), 3);
    r.handle_message(20, heartbeat(1, 4, u64::MAX));
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
                payload: EntryPayload::Membership(Membership::with_voters([1, 2, 3])),
            },
            Entry {
                term: 1,
                index: 2,
                payload: EntryPayload::Membership(Membership::with_voters([1, 2])),
            },
        ],
        base_membership: Membership::with_voters([1, 2]),
        ..RestoreState::default()
    };
    let cfg = RaftConfig {
        id: 1,
        group: 0,
        ..RaftConfig::default()
    };
    let mut r = match Raft::new(cfg, restore, 7, 0) {
        Ok(r) => r,
        Err(e) => panic!("core: {e}"),
    };
    r.handle_message(10, heartbeat(777, 1, 4));
    assert_eq!(r.term(), 1);
    r.handle_message(20, heartbeat(3, 1, 4));
    assert_eq!(
        r.term(),
        4,
        "a member of an earlier configuration was not heard"
    );
}
