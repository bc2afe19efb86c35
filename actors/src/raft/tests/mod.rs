//! Unit tests of the Raft core, in the style of raft-rs's paper tests (named after the section
//! of the Raft paper or thesis they check) and openraft's engine tests (feed inputs, assert the
//! exact actions). Multi-node tests use [`net::Net`], a tiny loss-free in-test network that
//! delivers every message and completes every persist; the fault-injecting simulator lives in
//! `crate::sim`.

mod net;

mod election;

use super::*;
use std::collections::BTreeSet;

/// A default config for node `id` of group 7.
fn cfg(id: NodeId) -> RaftConfig {
    RaftConfig {
        id,
        group: 7,
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
        group: 7,
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
