//! The event trace: a bounded ring of compact records, formatted only when a failure is
//! reported (or, in verbose mode, as they happen), so tracing costs little per event.

use conclave_core::raft::{Message, MessageBody, NodeId, Role, Term};
use std::collections::VecDeque;
use std::fmt;

/// A compact summary of a message body.
#[derive(Clone, Copy, Debug)]
pub(crate) enum MsgKind {
    Vote {
        pre: bool,
        last_index: u64,
        last_term: u64,
        transfer: bool,
    },
    VoteResp {
        pre: bool,
        granted: bool,
    },
    Append {
        prev: u64,
        prev_term: u64,
        n: usize,
        commit: u64,
    },
    AppendResp {
        success: bool,
        index: u64,
        conflict: Option<(Option<Term>, u64)>,
    },
    Heartbeat {
        commit: u64,
        ctx: u64,
    },
    HeartbeatResp {
        ctx: u64,
    },
    TimeoutNow,
    InstallResp {
        installed: bool,
        index: u64,
    },
    /// A whole snapshot transfer (the simulator delivers it as one event).
    Snapshot {
        index: u64,
        term: Term,
    },
}

impl MsgKind {
    pub(crate) fn of(msg: &Message) -> Self {
        match &msg.body {
            MessageBody::RequestVote {
                pre_vote,
                last_log_index,
                last_log_term,
                leadership_transfer,
            } => MsgKind::Vote {
                pre: *pre_vote,
                last_index: *last_log_index,
                last_term: *last_log_term,
                transfer: *leadership_transfer,
            },
            MessageBody::RequestVoteResponse { pre_vote, granted } => MsgKind::VoteResp {
                pre: *pre_vote,
                granted: *granted,
            },
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => MsgKind::Append {
                prev: *prev_log_index,
                prev_term: *prev_log_term,
                n: entries.len(),
                commit: *leader_commit,
            },
            MessageBody::AppendEntriesResponse {
                success,
                index,
                conflict_term,
                conflict_index,
            } => MsgKind::AppendResp {
                success: *success,
                index: *index,
                conflict: (!*success).then_some((*conflict_term, *conflict_index)),
            },
            MessageBody::Heartbeat { commit, read_ctx } => MsgKind::Heartbeat {
                commit: *commit,
                ctx: *read_ctx,
            },
            MessageBody::HeartbeatResponse { read_ctx } => {
                MsgKind::HeartbeatResp { ctx: *read_ctx }
            }
            MessageBody::TimeoutNow => MsgKind::TimeoutNow,
            MessageBody::InstallSnapshotResponse { installed, index } => MsgKind::InstallResp {
                installed: *installed,
                index: *index,
            },
        }
    }
}

impl fmt::Display for MsgKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MsgKind::Vote {
                pre,
                last_index,
                last_term,
                transfer,
            } => write!(
                f,
                "{}Vote(last={last_index}/t{last_term}{})",
                if pre { "Pre" } else { "" },
                if transfer { ", transfer" } else { "" }
            ),
            MsgKind::VoteResp { pre, granted } => write!(
                f,
                "{}VoteResp({})",
                if pre { "Pre" } else { "" },
                if granted { "granted" } else { "rejected" }
            ),
            MsgKind::Append {
                prev,
                prev_term,
                n,
                commit,
            } => write!(
                f,
                "Append(prev={prev}/t{prev_term}, n={n}, commit={commit})"
            ),
            MsgKind::AppendResp {
                success,
                index,
                conflict,
            } => match conflict {
                Some((term, at)) if !success => {
                    write!(f, "AppendResp(reject {index}, conflict {term:?}@{at})")
                }
                _ => write!(f, "AppendResp(ok {index})"),
            },
            MsgKind::Heartbeat { commit, ctx } => {
                write!(f, "Heartbeat(commit={commit}, ctx={ctx})")
            }
            MsgKind::HeartbeatResp { ctx } => write!(f, "HeartbeatResp(ctx={ctx})"),
            MsgKind::TimeoutNow => write!(f, "TimeoutNow"),
            MsgKind::InstallResp { installed, index } => write!(
                f,
                "InstallResp({} {index})",
                if installed { "installed" } else { "refused" }
            ),
            MsgKind::Snapshot { index, term } => write!(f, "Snapshot({index}/t{term})"),
        }
    }
}

/// Why the network did not deliver a message.
#[derive(Clone, Copy, Debug)]
pub(crate) enum DropWhy {
    Random,
    Partition,
    Crashed,
}

/// One traced event.
#[derive(Clone, Debug)]
pub(crate) enum Note {
    Deliver {
        from: NodeId,
        to: NodeId,
        term: Term,
        kind: MsgKind,
    },
    Dropped {
        from: NodeId,
        to: NodeId,
        term: Term,
        kind: MsgKind,
        why: DropWhy,
    },
    Timer(NodeId),
    Persisted {
        node: NodeId,
        seq: u64,
        last: u64,
    },
    Role {
        node: NodeId,
        role: Role,
        term: Term,
        leader: Option<NodeId>,
    },
    Commit {
        node: NodeId,
        index: u64,
    },
    /// Rare events (faults, client outcomes, phase changes), formatted eagerly.
    Text(String),
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::Deliver {
                from,
                to,
                term,
                kind,
            } => write!(f, "n{from}->n{to} t{term} {kind}"),
            Note::Dropped {
                from,
                to,
                term,
                kind,
                why,
            } => write!(f, "n{from}->n{to} t{term} {kind} DROPPED ({why:?})"),
            Note::Timer(n) => write!(f, "n{n} tick"),
            Note::Persisted { node, seq, last } => {
                write!(f, "n{node} persisted seq {seq} (durable last index {last})")
            }
            Note::Role {
                node,
                role,
                term,
                leader,
            } => write!(f, "n{node} is {role:?} in t{term} (leader {leader:?})"),
            Note::Commit { node, index } => write!(f, "n{node} commit -> {index}"),
            Note::Text(s) => f.write_str(s),
        }
    }
}

/// The bounded trace.
pub(crate) struct Trace {
    ring: VecDeque<(u64, u64, Note)>,
    cap: usize,
    verbose: bool,
}

impl Trace {
    pub(crate) fn new(cap: usize, verbose: bool) -> Self {
        Trace {
            ring: VecDeque::with_capacity(cap.min(4096)),
            cap,
            verbose,
        }
    }

    pub(crate) fn push(&mut self, step: u64, time: u64, note: Note) {
        if self.verbose {
            println!("[{step:>7} {time:>6}ms] {note}");
        }
        if self.cap == 0 {
            return;
        }
        if self.ring.len() == self.cap {
            self.ring.pop_front();
        }
        self.ring.push_back((step, time, note));
    }

    pub(crate) fn verbose(&self) -> bool {
        self.verbose
    }

    pub(crate) fn tail(&self) -> Vec<String> {
        self.ring
            .iter()
            .map(|(step, time, note)| format!("[{step:>7} {time:>6}ms] {note}"))
            .collect()
    }
}
