//! Unit tests of the Raft core, in the style of raft-rs's paper tests (named after the section
//! of the Raft paper or thesis they check) and openraft's engine tests (feed inputs, assert the
//! exact actions). Multi-node tests use [`net::Net`], a tiny loss-free in-test network that
//! delivers every message and completes every persist; the fault-injecting simulator lives in
//! `crate::sim`.

mod net;

mod election;
mod host;
mod membership;
mod reads;
mod replication;
mod snapshot;

use super::*;
use std::collections::BTreeSet;

/// A default config for node `id` of group 7.
fn cfg(id: NodeId) -> RaftConfig {
    RaftConfig {
        id,
        group: GroupId::new(7),
        ..RaftConfig::default()
    }
}

/// A fresh voter set `voters` restore state.
fn fresh(voters: &[NodeId]) -> RestoreState {
    RestoreState {
        base_membership: Membership::with_voters(voters.iter().copied()),
        ..RestoreState::default()
    }
}

/// A restore state with the given hard state and entry terms (Noop payloads).
fn restored(voters: &[NodeId], term: Term, vote: Option<NodeId>, terms: &[Term]) -> RestoreState {
    RestoreState {
        hard_state: HardState { term, vote },
        entries: terms
            .iter()
            .enumerate()
            .map(|(i, &t)| Entry {
                term: t,
                index: i as u64 + 1,
                payload: EntryPayload::Command(vec![i as u8]),
            })
            .collect(),
        base_membership: Membership::with_voters(voters.iter().copied()),
        ..RestoreState::default()
    }
}

/// Drains a core's actions.
fn poll(r: &mut Raft) -> Vec<Action> {
    let mut out = Vec::new();
    r.poll_actions(&mut out);
    out
}

/// The messages among `actions`.
fn sends(actions: &[Action]) -> Vec<Message> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

/// A message of group 7.
fn msg(from: NodeId, to: NodeId, term: Term, body: MessageBody) -> Message {
    Message {
        group: GroupId::new(7),
        from,
        to,
        term,
        body,
    }
}

fn noop(term: Term, index: LogIndex) -> Entry {
    Entry {
        term,
        index,
        payload: EntryPayload::Noop,
    }
}

fn cmd(term: Term, index: LogIndex, data: &[u8]) -> Entry {
    Entry {
        term,
        index,
        payload: EntryPayload::Command(data.to_vec()),
    }
}

fn ids(v: &[NodeId]) -> BTreeSet<NodeId> {
    v.iter().copied().collect()
}

/// Drives `r` (restored in `restore`) to leadership of `voters` with the votes of the first
/// quorum of other voters, completing its persists; returns it with all actions drained and
/// the new leader's no-op appended (not yet persisted).
fn make_leader(c: RaftConfig, voters: &[NodeId], restore: RestoreState) -> Raft {
    let id = c.id;
    let mut r = Raft::new(c, restore, id.get(), 0).unwrap();
    poll(&mut r);
    r.tick(1000);
    poll(&mut r);
    let others: Vec<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
    let need = voters.len() / 2;
    if r.role() == Role::PreCandidate {
        let t = r.term() + 1;
        for &v in others.iter().take(need) {
            r.handle_message(
                1001,
                msg(
                    v,
                    id,
                    t,
                    MessageBody::RequestVoteResponse {
                        pre_vote: true,
                        granted: true,
                    },
                ),
            );
        }
    }
    assert_eq!(r.role(), Role::Candidate);
    let out = poll(&mut r);
    let seq = out
        .iter()
        .find_map(|a| match a {
            Action::Persist(p) => Some(p.seq),
            _ => None,
        })
        .unwrap();
    r.persisted(1002, seq);
    poll(&mut r);
    let t = r.term();
    for &v in others.iter().take(need) {
        r.handle_message(
            1003,
            msg(
                v,
                id,
                t,
                MessageBody::RequestVoteResponse {
                    pre_vote: false,
                    granted: true,
                },
            ),
        );
    }
    assert_eq!(r.role(), Role::Leader);
    r
}

/// A leader of `voters` at term 1 whose no-op (index 1) is durable, acknowledged by every
/// peer and committed; every action drained.
fn settled_leader(c: RaftConfig, voters: &[NodeId]) -> Raft {
    let id = c.id;
    let mut r = make_leader(c, voters, fresh(voters));
    let seq = persist_seq(&poll(&mut r));
    r.persisted(1004, seq);
    for &v in voters.iter().filter(|v| **v != id) {
        r.handle_message(1005, append_ok(v, id, 1, 1));
    }
    assert_eq!(r.commit_index(), 1);
    poll(&mut r);
    r
}

/// The seq of the (single) Persist among `actions`.
fn persist_seq(actions: &[Action]) -> u64 {
    let seqs: Vec<u64> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Persist(p) => Some(p.seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs.len(), 1, "{actions:?}");
    seqs[0]
}

fn append_ok(from: NodeId, to: NodeId, term: Term, index: LogIndex) -> Message {
    msg(
        from,
        to,
        term,
        MessageBody::AppendEntriesResponse {
            success: true,
            index,
            conflict_term: None,
            conflict_index: 0,
        },
    )
}

/// `actions` without the `SetTimer`s.
fn no_timers(actions: Vec<Action>) -> Vec<Action> {
    actions
        .into_iter()
        .filter(|a| !matches!(a, Action::SetTimer { .. }))
        .collect()
}

/// The core is plain data: it can move between threads (one actor per group).
#[test]
fn raft_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Raft>();
}
