//! Reads (thesis §6.4 ReadIndex, §6.4.1 leases) and leader transfer (thesis §3.10).

use super::net::Net;
use super::*;

fn hb(to: NodeId, commit: LogIndex, ctx: u64) -> Action {
    Action::Send(msg(
        NodeId::new(1),
        to,
        1,
        MessageBody::Heartbeat {
            commit,
            read_ctx: ctx,
        },
    ))
}

fn hb_resp(from: NodeId, ctx: u64) -> Message {
    msg(
        from,
        NodeId::new(1),
        1,
        MessageBody::HeartbeatResponse { read_ctx: ctx },
    )
}

/// Thesis §6.4 step 1: no ReadIndex before the leader committed an entry of its term; only
/// the leader serves linearizable reads; stale reads are served anywhere at once.
#[test]
fn thesis_6_4_read_preconditions() {
    let mut r = make_leader(
        cfg(NodeId::new(1)),
        &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
        fresh(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
    );
    assert_eq!(
        r.read(1004, 1, ReadConsistency::Linearizable),
        Err(ReadError::NotReady)
    );
    assert_eq!(
        r.read(1004, 2, ReadConsistency::Lease),
        Err(ReadError::NotReady)
    );
    let mut f = Raft::new(
        cfg(NodeId::new(2)),
        fresh(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
        1,
        0,
    )
    .unwrap();
    f.handle_message(
        10,
        msg(
            NodeId::new(1),
            NodeId::new(2),
            1,
            MessageBody::Heartbeat {
                commit: 0,
                read_ctx: 1,
            },
        ),
    );
    poll(&mut f);
    assert_eq!(
        f.read(11, 3, ReadConsistency::Linearizable),
        Err(ReadError::NotLeader {
            leader: Some(NodeId::new(1))
        })
    );
    assert_eq!(f.read(11, 4, ReadConsistency::Stale), Ok(()));
    assert_eq!(poll(&mut f), vec![Action::ReadReady { id: 4, index: 0 }]);
}

/// Thesis §6.4: reads registered between two polls share one heartbeat round, and are ready
/// at the commit index once a quorum acknowledged a round started after they registered.
#[test]
fn thesis_6_4_read_index_is_batched_and_needs_a_later_round() {
    let mut r = settled_leader(
        cfg(NodeId::new(1)),
        &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
    );
    r.read(2000, 10, ReadConsistency::Linearizable).unwrap();
    r.read(2000, 11, ReadConsistency::Linearizable).unwrap();
    assert_eq!(
        no_timers(poll(&mut r)),
        vec![hb(NodeId::new(2), 1, 1), hb(NodeId::new(3), 1, 1)]
    );
    // The leader's own ack plus one follower is a quorum.
    r.handle_message(2001, hb_resp(NodeId::new(3), 1));
    assert_eq!(
        poll(&mut r),
        vec![
            Action::ReadReady { id: 10, index: 1 },
            Action::ReadReady { id: 11, index: 1 }
        ]
    );
    // A new read needs a new round: a late ack of the old round does not confirm it.
    r.read(2002, 12, ReadConsistency::Linearizable).unwrap();
    assert_eq!(
        no_timers(poll(&mut r)),
        vec![hb(NodeId::new(2), 1, 2), hb(NodeId::new(3), 1, 2)]
    );
    r.handle_message(2003, hb_resp(NodeId::new(2), 1));
    assert_eq!(poll(&mut r), vec![]);
    // Acks from the same node twice do not make a quorum of one... but the leader plus node 2
    // does.
    r.handle_message(2004, hb_resp(NodeId::new(2), 2));
    assert_eq!(poll(&mut r), vec![Action::ReadReady { id: 12, index: 1 }]);
}

/// Pending reads fail when the leader steps down.
#[test]
fn pending_reads_fail_on_step_down() {
    let mut r = settled_leader(
        cfg(NodeId::new(1)),
        &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
    );
    r.read(2000, 10, ReadConsistency::Linearizable).unwrap();
    poll(&mut r);
    r.handle_message(
        2001,
        msg(
            NodeId::new(2),
            NodeId::new(1),
            5,
            MessageBody::HeartbeatResponse { read_ctx: 1 },
        ),
    );
    let out = poll(&mut r);
    assert!(out.contains(&Action::ReadFailed {
        id: 10,
        error: ReadError::LeadershipLost
    }));
    assert_eq!((r.role(), r.term()), (Role::Follower, 5));
}

/// Thesis §6.4.1: a quorum-acknowledged round sent at `t` gives a lease until `t + lease_ms`;
/// lease reads inside it are ready at once, after it they fall back to a ReadIndex round.
#[test]
fn thesis_6_4_1_lease_read_valid_then_expired() {
    let mut r = settled_leader(
        cfg(NodeId::new(1)),
        &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
    );
    // No lease yet: falls back to a round.
    r.read(2000, 1, ReadConsistency::Lease).unwrap();
    assert_eq!(
        no_timers(poll(&mut r)),
        vec![hb(NodeId::new(2), 1, 1), hb(NodeId::new(3), 1, 1)]
    );
    r.handle_message(2005, hb_resp(NodeId::new(2), 1));
    assert_eq!(poll(&mut r), vec![Action::ReadReady { id: 1, index: 1 }]);
    // Lease until 2000 + 120.
    r.read(2119, 2, ReadConsistency::Lease).unwrap();
    assert_eq!(poll(&mut r), vec![Action::ReadReady { id: 2, index: 1 }]);
    r.read(2120, 3, ReadConsistency::Lease).unwrap();
    assert_eq!(
        no_timers(poll(&mut r)),
        vec![hb(NodeId::new(2), 1, 2), hb(NodeId::new(3), 1, 2)]
    );
}

#[cfg(feature = "planted-bugs")]
#[test]
fn planted_bug_lease_read_after_expiry_serves_at_once() {
    let mut c = cfg(NodeId::new(1));
    c.planted_bugs.lease_read_after_expiry = true;
    let mut r = settled_leader(c, &[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    r.read(2000, 1, ReadConsistency::Lease).unwrap();
    poll(&mut r);
    r.handle_message(2005, hb_resp(NodeId::new(2), 1));
    poll(&mut r);
    r.read(9000, 2, ReadConsistency::Lease).unwrap();
    assert_eq!(poll(&mut r), vec![Action::ReadReady { id: 2, index: 1 }]);
}

#[cfg(feature = "planted-bugs")]
#[test]
fn planted_bug_lease_without_check_quorum_serves_at_once() {
    let mut c = RaftConfig {
        check_quorum: false,
        ..cfg(NodeId::new(1))
    };
    c.planted_bugs.lease_without_check_quorum = true;
    let mut r = settled_leader(c, &[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    // No round ever acknowledged, no check-quorum: served at once all the same.
    r.read(9000, 1, ReadConsistency::Lease).unwrap();
    assert_eq!(poll(&mut r), vec![Action::ReadReady { id: 1, index: 1 }]);
}

/// Leases need check-quorum: without it, a lease read is a ReadIndex read.
#[test]
fn lease_read_without_check_quorum_is_read_index() {
    let c = RaftConfig {
        check_quorum: false,
        ..cfg(NodeId::new(1))
    };
    let mut r = settled_leader(c, &[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    r.read(2000, 1, ReadConsistency::Lease).unwrap();
    poll(&mut r);
    r.handle_message(2005, hb_resp(NodeId::new(2), 1));
    assert_eq!(poll(&mut r), vec![Action::ReadReady { id: 1, index: 1 }]);
    r.read(2010, 2, ReadConsistency::Lease).unwrap();
    assert_eq!(
        no_timers(poll(&mut r)),
        vec![hb(NodeId::new(2), 1, 2), hb(NodeId::new(3), 1, 2)]
    );
}

/// Reads over the in-test network: a linearizable read returns the index of the last
/// committed write.
#[test]
fn read_index_over_the_network() {
    let mut net = Net::new(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    net.campaign(NodeId::new(1));
    let p = net.propose(NodeId::new(1), b"w");
    let now = net.now;
    net.node(NodeId::new(1))
        .read(now, 7, ReadConsistency::Linearizable)
        .unwrap();
    net.drain();
    assert_eq!(
        net.reads,
        vec![(
            NodeId::new(1),
            Action::ReadReady {
                id: 7,
                index: p.index
            }
        )]
    );
}

/// Thesis §3.10: the leader brings the target up to date, then sends TimeoutNow; proposals are
/// refused meanwhile; the target campaigns at once without pre-vote; the transfer is abandoned
/// after an election timeout. Starting a transfer gives up the lease.
#[test]
fn thesis_3_10_leader_transfer_exact_actions() {
    let mut r = settled_leader(
        cfg(NodeId::new(1)),
        &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
    );
    assert_eq!(
        r.transfer_leader(2000, NodeId::new(4)),
        Err(TransferError::NotAVoter(NodeId::new(4)))
    );
    // Node 3 lags behind by one entry.
    r.propose(2000, b"a".to_vec()).unwrap();
    poll(&mut r);
    r.handle_message(2001, append_ok(NodeId::new(2), NodeId::new(1), 1, 2));
    // Acquire a lease, then transfer to node 3.
    r.read(2002, 1, ReadConsistency::Lease).unwrap();
    poll(&mut r);
    r.handle_message(2003, hb_resp(NodeId::new(2), 1));
    poll(&mut r);
    r.transfer_leader(2004, NodeId::new(3)).unwrap();
    assert_eq!(
        r.propose(2004, vec![]),
        Err(ProposeError::TransferInProgress)
    );
    assert!(
        sends(&poll(&mut r)).is_empty(),
        "node 3 is not up to date yet"
    );
    // Lease given up: a lease read needs a round now.
    r.read(2005, 2, ReadConsistency::Lease).unwrap();
    let out = sends(&poll(&mut r));
    assert_eq!(out.len(), 2, "{out:?}");
    r.handle_message(2006, append_ok(NodeId::new(3), NodeId::new(1), 1, 2));
    assert_eq!(
        poll(&mut r),
        vec![Action::Send(msg(
            NodeId::new(1),
            NodeId::new(3),
            1,
            MessageBody::TimeoutNow
        ))]
    );
    // Abandoned after an election timeout (min): proposals accepted again.
    r.tick(2004 + 150);
    assert!(r.propose(2154, b"b".to_vec()).is_ok());

    // The target campaigns at once, in a new term, without pre-vote.
    let mut t = Raft::new(
        cfg(NodeId::new(3)),
        restored(
            &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
            1,
            Some(NodeId::new(1)),
            &[1],
        ),
        3,
        0,
    )
    .unwrap();
    t.handle_message(
        10,
        msg(
            NodeId::new(1),
            NodeId::new(3),
            1,
            MessageBody::Heartbeat {
                commit: 1,
                read_ctx: 1,
            },
        ),
    );
    poll(&mut t);
    t.handle_message(
        11,
        msg(NodeId::new(1), NodeId::new(3), 1, MessageBody::TimeoutNow),
    );
    assert_eq!((t.role(), t.term()), (Role::Candidate, 2));
    let seq = persist_seq(&poll(&mut t));
    t.persisted(12, seq);
    let req = |to| {
        Action::Send(msg(
            NodeId::new(3),
            to,
            2,
            MessageBody::RequestVote {
                pre_vote: false,
                last_log_index: 1,
                last_log_term: 1,
                leadership_transfer: true,
            },
        ))
    };
    assert_eq!(poll(&mut t), vec![req(NodeId::new(1)), req(NodeId::new(2))]);
}

#[test]
fn leader_transfer_over_the_network() {
    let mut net = Net::new(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    net.campaign(NodeId::new(1));
    net.propose(NodeId::new(1), b"a");
    let now = net.now;
    net.node(NodeId::new(1))
        .transfer_leader(now, NodeId::new(3))
        .unwrap();
    net.drain();
    assert_eq!(net.leaders(), vec![NodeId::new(3)]);
    assert_eq!(net.node(NodeId::new(3)).term(), 2);
    let now = net.now;
    assert_eq!(
        net.node(NodeId::new(2))
            .transfer_leader(now, NodeId::new(1)),
        Err(TransferError::NotLeader {
            leader: Some(NodeId::new(3))
        })
    );
}
