//! Log replication, commitment and the persistence contract (Raft §5.3, §5.4.2, figure 8;
//! thesis §5.3 fast backtracking, §10.2.1 pipelining).

use super::net::Net;
use super::*;

fn append(
    from: NodeId,
    to: NodeId,
    term: Term,
    prev: (LogIndex, Term),
    entries: Vec<Entry>,
    commit: LogIndex,
) -> Message {
    msg(
        from,
        to,
        term,
        MessageBody::AppendEntries {
            prev_log_index: prev.0,
            prev_log_term: prev.1,
            entries,
            leader_commit: commit,
        },
    )
}

fn append_reject(
    from: NodeId,
    to: NodeId,
    term: Term,
    index: LogIndex,
    hint: (Option<Term>, LogIndex),
) -> Message {
    msg(
        from,
        to,
        term,
        MessageBody::AppendEntriesResponse {
            success: false,
            index,
            conflict_term: hint.0,
            conflict_index: hint.1,
        },
    )
}

/// Proposals made between two polls go out as one Persist and one AppendEntries per follower.
#[test]
fn proposals_between_polls_are_batched() {
    let mut r = settled_leader(
        cfg(NodeId::new(1)),
        &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
    );
    let p1 = r.propose(2000, b"a".to_vec()).unwrap();
    let p2 = r.propose(2000, b"b".to_vec()).unwrap();
    let p3 = r.propose(2000, b"c".to_vec()).unwrap();
    assert_eq!(
        (p1, p3),
        (
            Proposal { index: 2, term: 1 },
            Proposal { index: 4, term: 1 }
        )
    );
    assert_eq!(p2.index, 3);
    let batch = vec![cmd(1, 2, b"a"), cmd(1, 3, b"b"), cmd(1, 4, b"c")];
    assert_eq!(
        poll(&mut r),
        vec![
            Action::Send(append(
                NodeId::new(1),
                NodeId::new(2),
                1,
                (1, 1),
                batch.clone(),
                1
            )),
            Action::Send(append(
                NodeId::new(1),
                NodeId::new(3),
                1,
                (1, 1),
                batch.clone(),
                1
            )),
            Action::Persist(PersistRequest {
                seq: 3,
                hard_state: None,
                truncate_from: None,
                entries: batch,
                snapshot: None,
            }),
        ]
    );
    // Followers may not propose.
    let mut f = Raft::new(
        cfg(NodeId::new(2)),
        fresh(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]),
        1,
        0,
    )
    .unwrap();
    assert_eq!(
        f.propose(0, vec![]),
        Err(ProposeError::NotLeader { leader: None })
    );
}

/// Pipelining: up to `max_inflight_appends` appends per follower are in flight; an ack opens
/// the window again. Appends are split by `max_entries_per_append`.
#[test]
fn pipelining_respects_window_and_size_limits() {
    let c = RaftConfig {
        max_inflight_appends: 2,
        max_entries_per_append: 2,
        ..cfg(NodeId::new(1))
    };
    let mut r = settled_leader(c, &[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    for i in 0..7u8 {
        r.propose(2000, vec![i]).unwrap();
    }
    let out = poll(&mut r);
    let to2: Vec<(LogIndex, usize)> = sends(&out)
        .into_iter()
        .filter(|m| m.to == NodeId::new(2))
        .map(|m| match m.body {
            MessageBody::AppendEntries {
                prev_log_index,
                entries,
                ..
            } => (prev_log_index, entries.len()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        to2,
        vec![(1, 2), (3, 2)],
        "two appends of two entries in flight"
    );
    r.handle_message(2001, append_ok(NodeId::new(2), NodeId::new(1), 1, 3));
    let out = poll(&mut r);
    let to2: Vec<Message> = sends(&out)
        .into_iter()
        .filter(|m| m.to == NodeId::new(2))
        .collect();
    assert_eq!(
        to2,
        vec![append(
            NodeId::new(1),
            NodeId::new(2),
            1,
            (5, 1),
            vec![cmd(1, 6, &[4]), cmd(1, 7, &[5])],
            1
        )]
    );
    // The byte limit cuts a batch too, but at least one entry always goes.
    let c = RaftConfig {
        max_bytes_per_append: 10,
        ..cfg(NodeId::new(1))
    };
    let mut r = settled_leader(c, &[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    r.propose(2000, vec![0; 100]).unwrap();
    r.propose(2000, vec![0; 100]).unwrap();
    let out = poll(&mut r);
    let sizes: Vec<usize> = sends(&out)
        .into_iter()
        .filter(|m| m.to == NodeId::new(2))
        .map(|m| match m.body {
            MessageBody::AppendEntries { entries, .. } => entries.len(),
            _ => 0,
        })
        .collect();
    assert_eq!(sizes, vec![1, 1]);
}

/// The persistence contract on a follower: the AppendEntries success waits for the persist of
/// the appended entries.
#[test]
fn follower_acknowledges_append_only_after_persist() {
    let mut f = Raft::new(
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
    poll(&mut f);
    f.handle_message(
        1000,
        append(
            NodeId::new(1),
            NodeId::new(2),
            1,
            (1, 1),
            vec![cmd(1, 2, b"x")],
            1,
        ),
    );
    let out = poll(&mut f);
    assert!(sends(&out).is_empty(), "no ack before persist: {out:?}");
    assert!(out.contains(&Action::Persist(PersistRequest {
        seq: 1,
        hard_state: None,
        truncate_from: None,
        entries: vec![cmd(1, 2, b"x")],
        snapshot: None,
    })));
    // Commit 1 was known and durable, so it is applied; entry 2 is not committed.
    assert!(out.contains(&Action::Apply(vec![cmd(1, 1, &[0])])));
    f.persisted(1001, 1);
    assert_eq!(
        poll(&mut f),
        vec![Action::Send(append_ok(
            NodeId::new(2),
            NodeId::new(1),
            1,
            2
        ))]
    );
}

/// The leader counts its own log toward a quorum only as far as it is durable.
#[test]
fn leader_counts_its_own_entries_only_once_persisted() {
    let mut r = settled_leader(
        cfg(NodeId::new(1)),
        &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
    );
    r.propose(2000, b"a".to_vec()).unwrap();
    let seq = persist_seq(&poll(&mut r));
    r.handle_message(2001, append_ok(NodeId::new(2), NodeId::new(1), 1, 2));
    assert_eq!(
        r.commit_index(),
        1,
        "one follower + an undurable leader is no quorum"
    );
    r.persisted(2002, seq);
    assert_eq!(r.commit_index(), 2);
    assert_eq!(poll(&mut r), vec![Action::Apply(vec![cmd(1, 2, b"a")])]);
    // Two followers are a quorum even while the leader's own write is pending.
    r.propose(2003, b"b".to_vec()).unwrap();
    poll(&mut r);
    r.handle_message(2004, append_ok(NodeId::new(2), NodeId::new(1), 1, 3));
    r.handle_message(2004, append_ok(NodeId::new(3), NodeId::new(1), 1, 3));
    assert_eq!(r.commit_index(), 3);
    // But the leader applies only what is durable locally.
    assert_eq!(poll(&mut r), vec![]);
}

/// Raft §5.3: a follower rejects an append whose previous entry does not match, with the
/// conflict hints of thesis §5.3; and it drops a conflicting suffix, telling the persistence
/// layer to truncate.
#[test]
fn raft_5_3_consistency_check_hints_and_truncation() {
    let mut f = Raft::new(
        cfg(NodeId::new(2)),
        restored(
            &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
            3,
            None,
            &[1, 1, 2, 2, 2],
        ),
        1,
        0,
    )
    .unwrap();
    poll(&mut f);
    // Log too short.
    f.handle_message(
        1000,
        append(NodeId::new(1), NodeId::new(2), 3, (7, 3), vec![], 0),
    );
    assert_eq!(
        no_timers(poll(&mut f)),
        vec![
            Action::Send(append_reject(
                NodeId::new(2),
                NodeId::new(1),
                3,
                7,
                (None, 6)
            )),
            Action::RoleChanged {
                role: Role::Follower,
                term: 3,
                leader: Some(NodeId::new(1))
            },
        ]
    );
    // Term mismatch at 4: hint is the first index of the follower's term-2 run.
    f.handle_message(
        1001,
        append(NodeId::new(1), NodeId::new(2), 3, (4, 3), vec![], 0),
    );
    assert_eq!(
        no_timers(poll(&mut f)),
        vec![Action::Send(append_reject(
            NodeId::new(2),
            NodeId::new(1),
            3,
            4,
            (Some(2), 3)
        ))]
    );
    // Matching at 2: entries 3.. conflict and are replaced.
    f.handle_message(
        1002,
        append(
            NodeId::new(1),
            NodeId::new(2),
            3,
            (2, 1),
            vec![cmd(3, 3, b"n"), cmd(3, 4, b"m")],
            2,
        ),
    );
    assert_eq!(f.last_index(), 4);
    assert_eq!(f.entry_term(3), Some(3));
    let out = no_timers(poll(&mut f));
    assert_eq!(
        out,
        vec![
            Action::Persist(PersistRequest {
                seq: 1,
                hard_state: None,
                truncate_from: Some(3),
                entries: vec![cmd(3, 3, b"n"), cmd(3, 4, b"m")],
                snapshot: None,
            }),
            Action::Apply(vec![cmd(1, 1, &[0]), cmd(1, 2, &[1])]),
        ]
    );
    f.persisted(1003, 1);
    assert_eq!(
        poll(&mut f),
        vec![Action::Send(append_ok(
            NodeId::new(2),
            NodeId::new(1),
            3,
            4
        ))]
    );
    // A duplicate of an old append changes nothing and is acknowledged at once.
    f.handle_message(
        1004,
        append(
            NodeId::new(1),
            NodeId::new(2),
            3,
            (2, 1),
            vec![cmd(3, 3, b"n")],
            2,
        ),
    );
    assert_eq!(
        no_timers(poll(&mut f)),
        vec![Action::Send(append_ok(
            NodeId::new(2),
            NodeId::new(1),
            3,
            3
        ))]
    );
    assert_eq!(
        f.last_index(),
        4,
        "an old append never truncates matching entries"
    );
}

/// A truncation voids a withheld acknowledgement of the entries it removed.
#[test]
fn truncation_drops_withheld_acks_of_removed_entries() {
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
    f.handle_message(
        1000,
        append(
            NodeId::new(1),
            NodeId::new(2),
            2,
            (1, 1),
            vec![cmd(2, 2, b"old")],
            1,
        ),
    );
    // Before the persist is even issued, a newer leader replaces entry 2.
    f.handle_message(
        1001,
        append(
            NodeId::new(3),
            NodeId::new(2),
            3,
            (1, 1),
            vec![cmd(3, 2, b"new")],
            1,
        ),
    );
    let out = poll(&mut f);
    assert!(out.contains(&Action::Persist(PersistRequest {
        seq: 1,
        hard_state: Some(HardState {
            term: 3,
            vote: None
        }),
        truncate_from: None,
        entries: vec![cmd(3, 2, b"new")],
        snapshot: None,
    })));
    f.persisted(1002, 1);
    assert_eq!(
        poll(&mut f),
        vec![Action::Send(append_ok(
            NodeId::new(2),
            NodeId::new(3),
            3,
            2
        ))]
    );
}

/// Thesis §5.3 fast backtracking: a follower with a long divergent suffix is repaired in two
/// rejections instead of one per entry.
#[test]
fn thesis_5_3_fast_backtracking_skips_whole_terms() {
    let leader_log = [1, 1, 3, 3, 3, 3, 3, 3, 3, 3];
    let follower_log = [1, 1, 2, 2, 2, 2, 2, 2];
    let mut net = Net::restored(
        vec![
            (
                NodeId::new(1),
                restored(
                    &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
                    3,
                    None,
                    &leader_log,
                ),
            ),
            (
                NodeId::new(2),
                restored(
                    &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
                    3,
                    None,
                    &follower_log,
                ),
            ),
            (
                NodeId::new(3),
                restored(
                    &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
                    3,
                    None,
                    &leader_log,
                ),
            ),
        ],
        |_| {},
    );
    net.record = true;
    net.campaign(NodeId::new(1));
    assert_eq!(net.leaders(), vec![NodeId::new(1)]);
    let rejections = net
        .log
        .iter()
        .filter(|m| {
            m.to == NodeId::new(1)
                && m.from == NodeId::new(2)
                && matches!(
                    m.body,
                    MessageBody::AppendEntriesResponse { success: false, .. }
                )
        })
        .count();
    assert_eq!(rejections, 2);
    let l = net.node(NodeId::new(1)).entries().to_vec();
    assert_eq!(net.node(NodeId::new(2)).entries(), l.as_slice());
}

/// A leader ignores stale rejections (for appends it already superseded).
#[test]
fn stale_rejection_is_ignored() {
    let mut r = settled_leader(
        cfg(NodeId::new(1)),
        &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
    );
    r.propose(2000, b"a".to_vec()).unwrap();
    poll(&mut r);
    r.handle_message(2001, append_ok(NodeId::new(2), NodeId::new(1), 1, 2));
    // A late rejection of the very first probe (prev 0) must not move next_index back.
    r.handle_message(
        2002,
        append_reject(NodeId::new(2), NodeId::new(1), 1, 0, (None, 1)),
    );
    let p = r.status().progress;
    assert_eq!(
        p[0],
        PeerProgress {
            id: NodeId::new(2),
            match_index: 2,
            next_index: 3,
            learner: false
        }
    );
    assert_eq!(sends(&poll(&mut r)), vec![]);
}

/// Raft §5.4.2 and figure 8: a leader never commits an entry of an earlier term by counting
/// replicas, only through an entry of its own term.
#[test]
fn raft_5_4_2_figure_8_previous_term_entry_not_committed_by_counting() {
    // Figure 8 (c): S1 leads term 4 with [1, 2]; it has replicated index 2 (term 2) to S2 and S3
    // — a majority of five — while S5 holds [1, 3] and could still win an election.
    let voters = [1, 2, 3, 4, 5].map(NodeId::new);
    let mut s1 = make_leader(
        cfg(NodeId::new(1)),
        &voters,
        restored(&voters, 3, None, &[1, 2]),
    );
    assert_eq!(s1.term(), 4);
    let seq = persist_seq(&poll(&mut s1));
    s1.persisted(1004, seq);
    s1.handle_message(1005, append_ok(NodeId::new(2), NodeId::new(1), 4, 2));
    s1.handle_message(1005, append_ok(NodeId::new(3), NodeId::new(1), 4, 2));
    assert_eq!(
        s1.commit_index(),
        0,
        "index 2 (term 2) is on a majority but not committable"
    );
    // Once the term-4 no-op is on a majority, it and everything before it commit.
    s1.handle_message(1006, append_ok(NodeId::new(2), NodeId::new(1), 4, 3));
    assert_eq!(s1.commit_index(), 0);
    s1.handle_message(1006, append_ok(NodeId::new(3), NodeId::new(1), 4, 3));
    assert_eq!(s1.commit_index(), 3);
}

#[cfg(feature = "planted-bugs")]
#[test]
fn planted_bug_commit_previous_term_by_counting_breaks_figure_8() {
    let voters = [1, 2, 3, 4, 5].map(NodeId::new);
    let mut c = cfg(NodeId::new(1));
    c.planted_bugs.commit_previous_term_by_counting = true;
    let mut s1 = make_leader(c, &voters, restored(&voters, 3, None, &[1, 2]));
    let seq = persist_seq(&poll(&mut s1));
    s1.persisted(1004, seq);
    s1.handle_message(1005, append_ok(NodeId::new(2), NodeId::new(1), 4, 2));
    s1.handle_message(1005, append_ok(NodeId::new(3), NodeId::new(1), 4, 2));
    assert_eq!(s1.commit_index(), 2, "the planted bug commits by counting");
}

#[cfg(feature = "planted-bugs")]
#[test]
fn planted_bug_ack_before_persist_acks_and_counts_early() {
    let mut c = cfg(NodeId::new(2));
    c.planted_bugs.ack_before_persist = true;
    let mut f = Raft::new(
        c,
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
    poll(&mut f);
    f.handle_message(
        1000,
        append(
            NodeId::new(1),
            NodeId::new(2),
            1,
            (1, 1),
            vec![cmd(1, 2, b"x")],
            1,
        ),
    );
    assert!(sends(&poll(&mut f)).contains(&append_ok(NodeId::new(2), NodeId::new(1), 1, 2)));
    let mut c = cfg(NodeId::new(1));
    c.planted_bugs.ack_before_persist = true;
    let mut r = settled_leader(c, &[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    r.propose(2000, b"a".to_vec()).unwrap();
    poll(&mut r);
    r.handle_message(2001, append_ok(NodeId::new(2), NodeId::new(1), 1, 2));
    assert_eq!(r.commit_index(), 2, "counted its own undurable entry");
}

/// Heartbeats carry `min(leader commit, follower match)`, so a follower never commits an entry
/// it may not hold; the follower adopts it.
#[test]
fn heartbeat_commit_is_capped_at_match() {
    let mut r = settled_leader(
        cfg(NodeId::new(1)),
        &[NodeId::new(1), NodeId::new(2), NodeId::new(3)],
    );
    r.propose(2000, b"a".to_vec()).unwrap();
    let seq = persist_seq(&poll(&mut r));
    r.persisted(2001, seq);
    r.handle_message(2001, append_ok(NodeId::new(3), NodeId::new(1), 1, 2));
    assert_eq!(r.commit_index(), 2);
    poll(&mut r);
    r.tick(2100);
    let hb: Vec<Message> = sends(&poll(&mut r));
    assert_eq!(
        hb,
        vec![
            msg(
                NodeId::new(1),
                NodeId::new(2),
                1,
                MessageBody::Heartbeat {
                    commit: 1,
                    read_ctx: 1
                }
            ),
            msg(
                NodeId::new(1),
                NodeId::new(3),
                1,
                MessageBody::Heartbeat {
                    commit: 2,
                    read_ctx: 1
                }
            ),
        ]
    );
}

/// Replication recovers from lost appends: the follower's later rejection or a heartbeat
/// response sends the leader back to probing.
#[test]
fn lost_appends_are_resent() {
    let mut net = Net::new(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    net.campaign(NodeId::new(1));
    net.cut_one_way(NodeId::new(1), NodeId::new(3));
    for i in 0..5u8 {
        net.propose(NodeId::new(1), &[i]);
    }
    net.heal();
    net.advance(300);
    let l = net.node(NodeId::new(1)).entries().to_vec();
    assert_eq!(net.node(NodeId::new(3)).entries(), l.as_slice());
    assert_eq!(
        net.node(NodeId::new(3)).commit_index(),
        net.node(NodeId::new(1)).commit_index()
    );
}

/// The persistence contract end to end: a follower whose disk has not confirmed the write
/// does not help commit it, and does once it has.
#[test]
fn undurable_follower_copy_does_not_count() {
    let mut net = Net::new(&[NodeId::new(1), NodeId::new(2), NodeId::new(3)]);
    net.campaign(NodeId::new(1));
    net.hold_disk(NodeId::new(2));
    net.isolate(NodeId::new(3));
    let p = net.propose(NodeId::new(1), b"x");
    net.advance(50);
    assert_eq!(
        net.node(NodeId::new(2)).last_index(),
        p.index,
        "in memory on node 2"
    );
    assert!(net.node(NodeId::new(1)).commit_index() < p.index);
    net.release_disk(NodeId::new(2));
    assert!(net.node(NodeId::new(1)).commit_index() >= p.index);
}
