//! Snapshots and log compaction (Raft §7, thesis ch. 5): compaction on the caller's word, the
//! leader asking its shell to stream a snapshot to a follower it compacted past, and the
//! follower's install (stale and old-term snapshots refused, the §7 rule for the log that
//! follows, acknowledgement only after the install is durable).

use super::net::Net;
use super::*;

fn meta(index: LogIndex, term: Term, voters: &[NodeId]) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term,
        membership: Membership::with_voters(voters.iter().copied()),
    }
}

fn install_resp(from: NodeId, to: NodeId, term: Term, installed: bool, index: LogIndex) -> Message {
    msg(
        from,
        to,
        term,
        MessageBody::InstallSnapshotResponse { installed, index },
    )
}

/// A settled leader of {1, 2, 3} (term 1) that committed and applied `n` commands after its
/// no-op (acknowledged by 2; the appends to 3 are lost), with `keep_entries` as given; every
/// action drained.
fn leader_with_applied(n: u64, keep_entries: u64) -> Raft {
    let c = RaftConfig {
        keep_entries,
        ..cfg(NodeId::new(1))
    };
    let mut r = settled_leader(c, &[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    for i in 0..n {
        r.propose(2000, vec![i as u8]).unwrap();
    }
    let seq = persist_seq(&poll(&mut r));
    r.persisted(2001, seq);
    r.handle_message(2002, append_ok(NodeId::new(2), NodeId::new(1), 1, n + 1));
    poll(&mut r);
    assert_eq!((r.commit_index(), r.applied_index()), (n + 1, n + 1));
    r
}

/// Raft §7: the caller's snapshot at an applied index compacts the log, keeping
/// `keep_entries` before it, and the shell learns the new first index to purge its WAL.
/// Snapshots beyond the applied index, older than the current one, or whose term or
/// membership is not the log's are refused and change nothing.
#[test]
fn raft_7_compaction_keeps_entries_and_refuses_bad_snapshots() {
    let mut r = leader_with_applied(5, 2);
    assert_eq!(
        r.snapshot_meta(7),
        Err(SnapshotError::NotApplied {
            index: 7,
            applied: 6
        })
    );
    let m = r.snapshot_meta(5).unwrap();
    assert_eq!(
        m,
        meta(5, 1, &[NodeId::new(1), NodeId::new(2), NodeId::new(3)])
    );
    let wrong = SnapshotMeta {
        term: 2,
        ..m.clone()
    };
    assert!(matches!(
        r.snapshot_taken(3000, wrong),
        Err(SnapshotError::Mismatch { .. })
    ));
    assert!(matches!(
        r.snapshot_taken(
            3000,
            meta(7, 1, &[NodeId::new(1), NodeId::new(2), NodeId::new(3)])
        ),
        Err(SnapshotError::NotApplied { .. })
    ));
    assert_eq!(r.first_index(), 1, "refusals change nothing");
    r.snapshot_taken(3000, m.clone()).unwrap();
    assert_eq!(
        no_timers(poll(&mut r)),
        vec![Action::Compacted { first_index: 4 }]
    );
    assert_eq!((r.first_index(), r.last_index()), (4, 6));
    assert_eq!(r.snapshot(), &m);
    assert_eq!(
        r.entry_term(3),
        Some(1),
        "the compaction point's term is kept"
    );
    assert_eq!(
        r.snapshot_taken(3001, m),
        Err(SnapshotError::Stale {
            index: 5,
            current: 5
        })
    );
    // The log still serves proposals and replication after compaction.
    let p = r.propose(3002, b"z".to_vec()).unwrap();
    assert_eq!(p, Proposal { index: 7, term: 1 });
}

/// Raft §7, leader side: a follower whose next index is at or below the compaction point gets
/// the snapshot (`SendSnapshot`), appends to it pause while the transfer runs, and its
/// acknowledgement resumes replication right after the snapshot.
#[test]
fn raft_7_leader_sends_snapshot_and_pauses_appends() {
    let mut r = leader_with_applied(5, 0);
    r.snapshot_taken(3000, r.snapshot_meta(6).unwrap()).unwrap();
    assert_eq!(
        no_timers(poll(&mut r)),
        vec![Action::Compacted { first_index: 7 }]
    );
    // 3 answers heartbeats but not the appends: they were lost, so the leader probes it,
    // below its compaction point.
    r.handle_message(
        3001,
        msg(
            NodeId::new(3),
            NodeId::new(1),
            1,
            MessageBody::HeartbeatResponse { read_ctx: 0 },
        ),
    );
    let m = meta(6, 1, &[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    assert_eq!(
        no_timers(poll(&mut r)),
        vec![Action::SendSnapshot {
            to: NodeId::new(3),
            term: 1,
            meta: m.clone()
        }]
    );
    // New entries go to 2 only while the snapshot is on its way to 3.
    r.propose(3002, b"n".to_vec()).unwrap();
    let out = poll(&mut r);
    let to: Vec<NodeId> = sends(&out).iter().map(|m| m.to).collect();
    assert_eq!(to, vec![NodeId::new(2)]);
    // Installed: appends resume after the snapshot's index.
    r.handle_message(
        3003,
        install_resp(NodeId::new(3), NodeId::new(1), 1, true, 6),
    );
    let out = sends(&poll(&mut r));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].to, NodeId::new(3));
    assert!(matches!(
        &out[0].body,
        MessageBody::AppendEntries {
            prev_log_index: 6,
            prev_log_term: 1,
            entries,
            ..
        } if entries.len() == 1
    ));
    let p = r
        .status()
        .progress
        .into_iter()
        .find(|p| p.id == NodeId::new(3))
        .unwrap();
    assert_eq!((p.match_index, p.next_index), (6, 8));
}

/// A follower that lost its log after acknowledging entries (its data directory wiped) is
/// caught up again: its probe rejection says its log ends below its match index, so the
/// leader forgets that match and, its log compacted past the follower's end, streams the
/// snapshot. Before, the leader kept probing just above the old match forever (seen on real
/// processes: `snapshot_transfer`'s wiped follower, once compaction waited for it).
#[test]
fn a_follower_that_lost_its_log_gets_a_snapshot_again() {
    let mut r = leader_with_applied(5, 0);
    r.snapshot_taken(3000, r.snapshot_meta(6).unwrap()).unwrap();
    poll(&mut r);
    // 2 acknowledged up to 6 (leader_with_applied); a new entry 7 goes to it.
    r.propose(3001, b"n".to_vec()).unwrap();
    let seq = persist_seq(&poll(&mut r));
    r.persisted(3002, seq);
    poll(&mut r);
    // 2 comes back wiped: it rejects the append after 6, its log ending at 0. In the
    // pipelined state that rejection is indistinguishable from a reordered old one (ignored);
    // the window then stalls and a heartbeat answer makes the leader probe it.
    let reject = |index| {
        msg(
            NodeId::new(2),
            NodeId::new(1),
            1,
            MessageBody::AppendEntriesResponse {
                success: false,
                index,
                conflict_term: None,
                conflict_index: 1,
            },
        )
    };
    r.handle_message(3003, reject(6));
    assert!(sends(&poll(&mut r)).is_empty());
    r.handle_message(
        3200,
        msg(
            NodeId::new(2),
            NodeId::new(1),
            1,
            MessageBody::HeartbeatResponse { read_ctx: 0 },
        ),
    );
    let probe = sends(&poll(&mut r));
    assert!(
        probe.iter().any(|m| m.to == NodeId::new(2)
            && matches!(
                m.body,
                MessageBody::AppendEntries {
                    prev_log_index: 6,
                    ..
                }
            )),
        "{probe:?}"
    );
    r.handle_message(3201, reject(6));
    assert_eq!(
        no_timers(poll(&mut r)),
        vec![Action::SendSnapshot {
            to: NodeId::new(2),
            term: 1,
            meta: meta(6, 1, &[NodeId::new(1), NodeId::new(2), NodeId::new(3)])
        }]
    );
    let p = r
        .status()
        .progress
        .into_iter()
        .find(|p| p.id == NodeId::new(2))
        .unwrap();
    assert_eq!(p.match_index, 0);
    // The commit index stays where the majority put it.
    assert_eq!(r.commit_index(), 6);
}

/// A leader that takes a newer snapshot while an older one streams to a peer does not compact
/// past the one being streamed: once the peer installs it, it continues from the log instead
/// of needing yet another snapshot (under steady writes, a large snapshot is overtaken by newer
/// ones before it is installed, and the peer would never catch up), and until it has that tail
/// compaction stops at its match index. Once it holds everything, compaction goes as far as
/// `keep_entries` allows again.
#[test]
fn compaction_waits_for_a_snapshot_being_streamed() {
    let mut r = leader_with_applied(5, 0);
    r.snapshot_taken(3000, r.snapshot_meta(6).unwrap()).unwrap();
    poll(&mut r);
    r.handle_message(
        3001,
        msg(
            NodeId::new(3),
            NodeId::new(1),
            1,
            MessageBody::HeartbeatResponse { read_ctx: 0 },
        ),
    );
    assert!(poll(&mut r).contains(&Action::SendSnapshot {
        to: NodeId::new(3),
        term: 1,
        meta: meta(6, 1, &[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
    }));
    // Two more entries, committed by 2 and applied, then a newer snapshot.
    r.propose(3002, b"a".to_vec()).unwrap();
    r.propose(3002, b"b".to_vec()).unwrap();
    let seq = persist_seq(&poll(&mut r));
    r.persisted(3003, seq);
    r.handle_message(3004, append_ok(NodeId::new(2), NodeId::new(1), 1, 8));
    poll(&mut r);
    assert_eq!(r.applied_index(), 8);
    r.snapshot_taken(3005, r.snapshot_meta(8).unwrap()).unwrap();
    assert!(
        !poll(&mut r)
            .iter()
            .any(|a| matches!(a, Action::Compacted { .. })),
        "nothing compacted past the snapshot at 6 being streamed to 3"
    );
    assert_eq!(r.first_index(), 7);
    assert_eq!(
        r.snapshot().index,
        8,
        "the newer snapshot is the one sent next"
    );
    // 3 installed the snapshot at 6: it gets the entries after it from the log.
    r.handle_message(
        3006,
        install_resp(NodeId::new(3), NodeId::new(1), 1, true, 6),
    );
    let out = sends(&poll(&mut r));
    assert!(
        out.iter().any(|m| m.to == NodeId::new(3)
            && matches!(
                &m.body,
                MessageBody::AppendEntries {
                    prev_log_index: 6,
                    entries,
                    ..
                } if entries.len() == 2
            )),
        "{out:?}"
    );
    // Until 3 has the tail, a newer snapshot does not compact what it still needs.
    r.propose(3007, b"c".to_vec()).unwrap();
    let seq = persist_seq(&poll(&mut r));
    r.persisted(3008, seq);
    r.handle_message(3009, append_ok(NodeId::new(2), NodeId::new(1), 1, 9));
    poll(&mut r);
    r.snapshot_taken(3010, r.snapshot_meta(9).unwrap()).unwrap();
    assert!(
        !poll(&mut r)
            .iter()
            .any(|a| matches!(a, Action::Compacted { .. })),
        "nothing compacted past 3's match index while it follows its install with the log"
    );
    assert_eq!(r.first_index(), 7);
    // Once 3 holds everything, the next snapshot compacts as usual.
    r.handle_message(3011, append_ok(NodeId::new(3), NodeId::new(1), 1, 9));
    r.propose(3012, b"d".to_vec()).unwrap();
    let seq = persist_seq(&poll(&mut r));
    r.persisted(3013, seq);
    r.handle_message(3014, append_ok(NodeId::new(2), NodeId::new(1), 1, 10));
    r.handle_message(3014, append_ok(NodeId::new(3), NodeId::new(1), 1, 10));
    poll(&mut r);
    r.snapshot_taken(3015, r.snapshot_meta(10).unwrap())
        .unwrap();
    assert!(poll(&mut r).contains(&Action::Compacted { first_index: 11 }));
}

/// A transfer the shell reports failed is retried once the peer answers a heartbeat; one
/// that is never answered is retried after `snapshot_timeout_ms`.
#[test]
fn snapshot_transfer_failure_and_timeout_are_retried() {
    let mut r = leader_with_applied(3, 0);
    r.snapshot_taken(3000, r.snapshot_meta(4).unwrap()).unwrap();
    poll(&mut r);
    // 3 answers heartbeats but not the appends: they were lost, so the leader probes it,
    // below its compaction point.
    r.handle_message(
        3001,
        msg(
            NodeId::new(3),
            NodeId::new(1),
            1,
            MessageBody::HeartbeatResponse { read_ctx: 0 },
        ),
    );
    let send = Action::SendSnapshot {
        to: NodeId::new(3),
        term: 1,
        meta: meta(4, 1, &[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
    };
    assert_eq!(no_timers(poll(&mut r)), vec![send.clone()]);
    r.snapshot_send_failed(3002, NodeId::new(3));
    assert_eq!(
        no_timers(poll(&mut r)),
        vec![],
        "no retry before 3 is heard"
    );
    r.handle_message(
        3003,
        msg(
            NodeId::new(3),
            NodeId::new(1),
            1,
            MessageBody::HeartbeatResponse { read_ctx: 0 },
        ),
    );
    assert_eq!(no_timers(poll(&mut r)), vec![send.clone()]);
    // No answer at all: the leader gives up waiting after the timeout and asks again.
    let timeout = r.config().snapshot_timeout_ms;
    r.tick(3003 + timeout - 1);
    assert!(!poll(&mut r).contains(&send));
    r.tick(3003 + timeout);
    assert!(poll(&mut r).contains(&send));
}

/// Raft §7, receiver side, log not holding the snapshot's last entry: the whole log is
/// discarded, the persist names the snapshot (and truncates what follows), and only once it
/// completes is the state machine restored and the install acknowledged.
#[test]
fn raft_7_install_discards_a_log_without_the_last_entry() {
    let mut f = Raft::new(
        cfg(NodeId::new(2)),
        restored(
            &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
            1,
            None,
            &[1, 1, 1],
        ),
        1,
        0,
    )
    .unwrap();
    poll(&mut f);
    let m = meta(5, 2, &[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    f.install_snapshot(1000, NodeId::new(1), 2, m.clone());
    assert_eq!(
        no_timers(poll(&mut f)),
        vec![
            Action::RoleChanged {
                role: Role::Follower,
                term: 2,
                leader: Some(NodeId::new(1))
            },
            Action::Persist(PersistRequest {
                seq: 1,
                hard_state: Some(HardState {
                    term: 2,
                    vote: None
                }),
                truncate_from: Some(6),
                entries: vec![],
                snapshot: Some(m.clone()),
            }),
        ]
    );
    assert_eq!(
        (f.first_index(), f.last_index(), f.commit_index()),
        (6, 5, 5)
    );
    assert_eq!(f.applied_index(), 0, "nothing restored before the persist");
    f.persisted(1001, 1);
    assert_eq!(
        no_timers(poll(&mut f)),
        vec![
            Action::RestoreSnapshot(m.clone()),
            Action::Send(install_resp(NodeId::new(2), NodeId::new(1), 2, true, 5)),
        ]
    );
    assert_eq!(f.applied_index(), 5);
    assert_eq!(f.snapshot(), &m);
    // The log continues after the snapshot.
    f.handle_message(
        1002,
        msg(
            NodeId::new(1),
            NodeId::new(2),
            2,
            MessageBody::AppendEntries {
                prev_log_index: 5,
                prev_log_term: 2,
                entries: vec![cmd(2, 6, b"x")],
                leader_commit: 6,
            },
        ),
    );
    let out = poll(&mut f);
    assert!(out.contains(&Action::Persist(PersistRequest {
        seq: 2,
        hard_state: None,
        truncate_from: None,
        entries: vec![cmd(2, 6, b"x")],
        snapshot: None,
    })));
    f.persisted(1003, 2);
    let out = poll(&mut f);
    assert!(
        out.contains(&Action::Apply(vec![cmd(2, 6, b"x")])),
        "{out:?}"
    );
}

/// Raft §7: "If existing log entry has same index and term as snapshot's last included entry,
/// retain log entries following it."
#[test]
fn raft_7_install_keeps_the_entries_that_follow_a_matching_last_entry() {
    let mut f = Raft::new(
        cfg(NodeId::new(2)),
        restored(
            &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
            2,
            None,
            &[1, 1, 2, 2],
        ),
        1,
        0,
    )
    .unwrap();
    poll(&mut f);
    let m = meta(3, 2, &[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    f.install_snapshot(1000, NodeId::new(1), 2, m.clone());
    assert_eq!(
        no_timers(poll(&mut f)),
        vec![
            Action::RoleChanged {
                role: Role::Follower,
                term: 2,
                leader: Some(NodeId::new(1))
            },
            Action::Persist(PersistRequest {
                seq: 1,
                hard_state: None,
                truncate_from: None,
                entries: vec![],
                snapshot: Some(m.clone()),
            }),
        ]
    );
    assert_eq!((f.first_index(), f.last_index()), (4, 4));
    assert_eq!(f.entries(), &[cmd(2, 4, &[3])]);
    f.persisted(1001, 1);
    assert_eq!(
        no_timers(poll(&mut f)),
        vec![
            Action::RestoreSnapshot(m),
            Action::Send(install_resp(NodeId::new(2), NodeId::new(1), 2, true, 3)),
        ]
    );
}

/// Applied and commit indexes never move backwards: a snapshot at or below the commit index
/// (a duplicate, or one overtaken by appends) is refused with the commit index as a probe
/// hint; a snapshot sent in an older term is answered with the current term.
#[test]
fn stale_and_old_term_snapshots_are_refused() {
    /// Node 3, as a pattern.
    const N3: NodeId = NodeId::new(3);
    let mut f = Raft::new(
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
    poll(&mut f);
    let m = meta(5, 2, &[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    f.install_snapshot(1000, NodeId::new(1), 2, m.clone());
    poll(&mut f);
    f.persisted(1001, 1);
    poll(&mut f);
    assert_eq!((f.commit_index(), f.applied_index()), (5, 5));
    // The same snapshot again, and an older one: refused at once, nothing persisted.
    for old in [
        m.clone(),
        meta(4, 2, &[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
    ] {
        f.install_snapshot(1002, NodeId::new(1), 2, old);
        assert_eq!(
            no_timers(poll(&mut f)),
            vec![Action::Send(install_resp(
                NodeId::new(2),
                NodeId::new(1),
                2,
                false,
                5
            ))]
        );
    }
    // From a leader of term 1 while we are in term 2.
    f.install_snapshot(
        1003,
        NodeId::new(3),
        1,
        meta(9, 1, &[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
    );
    assert_eq!(
        no_timers(poll(&mut f)),
        vec![Action::Send(install_resp(
            NodeId::new(2),
            NodeId::new(3),
            2,
            false,
            5
        ))]
    );
    assert_eq!((f.commit_index(), f.applied_index(), f.term()), (5, 5, 2));
    // A leader that hears the refusal probes from after the follower's commit index.
    let mut r = leader_with_applied(6, 0);
    r.snapshot_taken(3000, r.snapshot_meta(7).unwrap()).unwrap();
    poll(&mut r);
    // 3 answers heartbeats but not the appends: they were lost, so the leader probes it,
    // below its compaction point.
    r.handle_message(
        3001,
        msg(
            NodeId::new(3),
            NodeId::new(1),
            1,
            MessageBody::HeartbeatResponse { read_ctx: 0 },
        ),
    );
    assert!(matches!(
        no_timers(poll(&mut r)).as_slice(),
        [Action::SendSnapshot { to: N3, .. }]
    ));
    r.handle_message(
        3002,
        install_resp(NodeId::new(3), NodeId::new(1), 1, false, 7),
    );
    let out = sends(&poll(&mut r));
    assert!(matches!(
        out.as_slice(),
        [Message {
            to: N3,
            body: MessageBody::AppendEntries {
                prev_log_index: 7,
                ..
            },
            ..
        }]
    ));
}

/// A restart resumes from snapshot + log: entries the snapshot covers (left by a lazily
/// purged store) are ignored, membership comes from the snapshot, and commit = applied =
/// the snapshot's index.
#[test]
fn restart_resumes_from_snapshot_and_log() {
    let restore = RestoreState {
        hard_state: HardState {
            term: 3,
            vote: None,
        },
        entries: vec![noop(1, 3), noop(2, 4), cmd(3, 5, b"a"), cmd(3, 6, b"b")],
        applied: 0,
        base_membership: Membership::with_voters([NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
        snapshot: Some(meta(4, 2, &[NodeId::new(2), NodeId::new(3)])),
    };
    let f = Raft::new(cfg(NodeId::new(2)), restore.clone(), 1, 0).unwrap();
    assert_eq!(
        (
            f.first_index(),
            f.last_index(),
            f.commit_index(),
            f.applied_index()
        ),
        (5, 6, 4, 4)
    );
    assert_eq!(
        f.membership(),
        &Membership::with_voters([NodeId::new(2), NodeId::new(3)])
    );
    // A gap after the snapshot is corruption.
    let gap = RestoreState {
        entries: vec![cmd(3, 6, b"b")],
        ..restore
    };
    assert!(matches!(
        Raft::new(cfg(NodeId::new(2)), gap, 1, 0),
        Err(ConfigError::InvalidRestore(_))
    ));
}

/// End to end on the loss-free network: a follower cut off while the others write and
/// compact catches up through a snapshot and then the log, and ends with the same log.
#[test]
fn lagging_follower_catches_up_by_snapshot() {
    let mut net = Net::with(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)], |c| {
        c.keep_entries = 1
    });
    net.campaign(NodeId::new(1));
    net.isolate(NodeId::new(3));
    for i in 0..8u8 {
        let now = net.now;
        net.node(NodeId::new(1)).propose(now, vec![i]).unwrap();
        net.drain();
    }
    for id in [NodeId::new(1), NodeId::new(2)] {
        let applied = net.node(id).applied_index();
        let m = net.node(id).snapshot_meta(applied).unwrap();
        let now = net.now;
        net.node(id).snapshot_taken(now, m).unwrap();
    }
    net.drain();
    assert!(net.node(NodeId::new(1)).first_index() > 2);
    net.heal();
    net.advance(200);
    assert_eq!(net.snapshots.len(), 1, "{:?}", net.snapshots);
    net.deliver_snapshots();
    let now = net.now;
    net.node(NodeId::new(1))
        .propose(now, b"after".to_vec())
        .unwrap();
    net.drain();
    net.advance(200);
    let (l, f) = (
        net.node(NodeId::new(1)).status(),
        net.node(NodeId::new(3)).status(),
    );
    assert_eq!(
        (f.commit_index, f.last_index),
        (l.commit_index, l.last_index)
    );
    assert!(net
        .snapshot_actions
        .iter()
        .any(|(id, a)| *id == NodeId::new(3) && matches!(a, Action::RestoreSnapshot(_))));
    // Node 3 applied nothing below the snapshot from the log, then everything after it.
    let snap = net.node(NodeId::new(3)).snapshot().index;
    let applied: Vec<LogIndex> = net.applied[&NodeId::new(3)]
        .iter()
        .map(|e| e.index)
        .collect();
    let after: Vec<LogIndex> = applied.iter().copied().filter(|&i| i > snap).collect();
    assert_eq!(after, ((snap + 1)..=l.commit_index).collect::<Vec<_>>());
}

/// A snapshot carries the membership in force at its index (thesis §5.1: the configuration
/// entries it replaces are gone), and compaction past a membership entry keeps that
/// membership in force.
#[test]
fn snapshot_meta_carries_the_membership_at_its_index() {
    let mut r = leader_with_applied(2, 0);
    // Index 4: add learner 4, committed by 1 and 2.
    r.change_membership(
        3000,
        MembershipChange::AddLearner {
            id: NodeId::new(4),
            addr: None,
        },
    )
    .unwrap();
    let seq = persist_seq(&poll(&mut r));
    r.persisted(3001, seq);
    r.handle_message(3002, append_ok(NodeId::new(2), NodeId::new(1), 1, 4));
    poll(&mut r);
    assert_eq!(r.applied_index(), 4);
    let before = r.snapshot_meta(3).unwrap();
    assert_eq!(
        before.membership,
        Membership::with_voters([NodeId::new(1), NodeId::new(2), NodeId::new(3)])
    );
    let after = r.snapshot_meta(4).unwrap();
    let with_learner = Membership {
        voters: ids(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
        learners: ids(&[NodeId::new(4)]),
        config_id: 4,
        ..Membership::default()
    };
    assert_eq!(after.membership, with_learner);
    r.snapshot_taken(3003, after).unwrap();
    assert_eq!(
        no_timers(poll(&mut r))
            .into_iter()
            .filter(|a| matches!(a, Action::Compacted { .. }))
            .collect::<Vec<_>>(),
        vec![Action::Compacted { first_index: 5 }]
    );
    assert_eq!(r.membership(), &with_learner);
    // The next change still validates against it.
    assert!(matches!(
        r.change_membership(
            3004,
            MembershipChange::AddLearner {
                id: NodeId::new(4),
                addr: None
            }
        ),
        Err(ProposeError::InvalidMembershipChange(_))
    ));
}

/// A newer snapshot arriving while an install is still persisting supersedes it: each install
/// is acknowledged once its own persist is durable, but the state machine is restored only
/// from the newest, once that one is durable (nothing is applied in between).
#[test]
fn a_newer_install_supersedes_one_still_persisting() {
    let mut f = Raft::new(
        cfg(NodeId::new(2)),
        restored(
            &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
            2,
            None,
            &[1],
        ),
        1,
        0,
    )
    .unwrap();
    poll(&mut f);
    let (m1, m2) = (
        meta(5, 2, &[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
        meta(9, 2, &[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
    );
    f.install_snapshot(1000, NodeId::new(1), 2, m1.clone());
    let s1 = persist_seq(&poll(&mut f));
    f.install_snapshot(1001, NodeId::new(1), 2, m2.clone());
    let out = no_timers(poll(&mut f));
    assert_eq!(
        out,
        vec![Action::Persist(PersistRequest {
            seq: s1 + 1,
            hard_state: None,
            truncate_from: Some(10),
            entries: vec![],
            snapshot: Some(m2.clone()),
        })]
    );
    f.persisted(1002, s1);
    assert_eq!(
        no_timers(poll(&mut f)),
        vec![Action::Send(install_resp(
            NodeId::new(2),
            NodeId::new(1),
            2,
            true,
            5
        ))]
    );
    assert_eq!(f.applied_index(), 0);
    f.persisted(1003, s1 + 1);
    assert_eq!(
        no_timers(poll(&mut f)),
        vec![
            Action::RestoreSnapshot(m2),
            Action::Send(install_resp(NodeId::new(2), NodeId::new(1), 2, true, 9)),
        ]
    );
    assert_eq!((f.applied_index(), f.commit_index()), (9, 9));
}

#[cfg(feature = "planted-bugs")]
#[test]
fn planted_bug_compact_unapplied_compacts_past_the_snapshot() {
    let mut c = cfg(NodeId::new(2));
    c.keep_entries = 0;
    c.planted_bugs.compact_unapplied = true;
    let mut f = Raft::new(
        c,
        restored(
            &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
            1,
            None,
            &[1, 1, 1, 1],
        ),
        1,
        0,
    )
    .unwrap();
    poll(&mut f);
    // Commit 2 is applied; then the leader says 4 is committed, not yet applied (the persist
    // of nothing new completes at once, but the snapshot is taken at 2).
    f.handle_message(
        1000,
        msg(
            NodeId::new(1),
            NodeId::new(2),
            1,
            MessageBody::Heartbeat {
                commit: 2,
                read_ctx: 1,
            },
        ),
    );
    poll(&mut f);
    let m = f.snapshot_meta(2).unwrap();
    f.handle_message(
        1001,
        msg(
            NodeId::new(1),
            NodeId::new(2),
            1,
            MessageBody::Heartbeat {
                commit: 4,
                read_ctx: 2,
            },
        ),
    );
    f.snapshot_taken(1002, m).unwrap();
    assert!(
        no_timers(poll(&mut f)).contains(&Action::Compacted { first_index: 5 }),
        "the planted bug compacts up to the commit index, past the snapshot at 2"
    );
}

#[cfg(feature = "planted-bugs")]
#[test]
fn planted_bug_install_stale_snapshot_moves_applied_back() {
    let mut c = cfg(NodeId::new(2));
    c.planted_bugs.install_stale_snapshot = true;
    let mut f = Raft::new(
        c,
        restored(
            &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
            2,
            None,
            &[1, 2, 2],
        ),
        1,
        0,
    )
    .unwrap();
    poll(&mut f);
    f.handle_message(
        1000,
        msg(
            NodeId::new(1),
            NodeId::new(2),
            2,
            MessageBody::Heartbeat {
                commit: 3,
                read_ctx: 1,
            },
        ),
    );
    poll(&mut f);
    assert_eq!(f.applied_index(), 3);
    f.install_snapshot(
        1001,
        NodeId::new(1),
        2,
        meta(2, 2, &[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
    );
    let seq = persist_seq(&poll(&mut f));
    f.persisted(1002, seq);
    // The state machine goes back to 2 and entry 3 is handed out a second time.
    assert_eq!(
        no_timers(poll(&mut f)),
        vec![
            Action::RestoreSnapshot(meta(
                2,
                2,
                &[NodeId::new(1), NodeId::new(2), NodeId::new(3)]
            )),
            Action::Send(install_resp(NodeId::new(2), NodeId::new(1), 2, true, 2)),
            Action::Apply(vec![cmd(2, 3, &[2])]),
        ],
        "the planted bug moved the applied index back"
    );
}
