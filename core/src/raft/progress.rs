//! The leader's view of one follower or learner: how far its log matches, what to send next,
//! and the window of AppendEntries in flight (pipelining).

use super::types::{LogIndex, Millis, NodeId};
use std::collections::VecDeque;

/// How the leader replicates to a peer (the etcd/raft-rs state machine, simplified).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReplicationState {
    /// The leader does not know where the peer's log matches: one AppendEntries at a time,
    /// each waiting for its answer (or a heartbeat response) before the next probe.
    Probe,
    /// The peer's log is known to match up to `match_index`: appends are sent optimistically,
    /// advancing `next_index` at once, up to `max_inflight_appends` un-acknowledged.
    Replicate,
    /// The peer needs entries the leader compacted: its shell streams a snapshot (Raft §7)
    /// and no append is sent until the install is answered, reported failed, or times out.
    Snapshot,
}

/// Replication progress of one peer, kept by the leader only.
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// Highest index known to be durably replicated on the peer and matching the leader.
    pub(crate) match_index: LogIndex,
    /// Next index to send.
    pub(crate) next_index: LogIndex,
    /// Probe or replicate.
    pub(crate) state: ReplicationState,
    /// In probe state: a probe is outstanding, wait for its answer.
    pub(crate) probe_sent: bool,
    /// In replicate state: the last index of each append in flight, oldest first.
    pub(crate) inflight: VecDeque<LogIndex>,
    /// Heard from this peer since the last check-quorum round (thesis §6.2).
    pub(crate) recent_active: bool,
    /// The peer only learns the log (never counted toward a quorum).
    pub(crate) learner: bool,
    /// When the leader last received an AppendEntries response from this peer; used to detect
    /// appends lost in replicate state.
    pub(crate) last_append_response: Millis,
    /// In snapshot state: the index of the snapshot being sent, and when to give up on it.
    pub(crate) snapshot: Option<(LogIndex, Millis)>,
    /// After the peer installed a snapshot: until this time (the transfer's deadline) the
    /// leader does not compact past the peer's match index, so the peer follows the install
    /// with the log's tail instead of needing another snapshot.
    pub(crate) hold_until: Option<Millis>,
    /// Catch-up pacing of a far-behind learner (`RaftConfig::learner_catch_up_bytes_per_s`).
    pub(crate) pace: Pace,
}

/// A byte budget for the appends to one learner: refilled with every byte the leader appends
/// to its log plus the configured catch-up rate, spent by every append sent while pacing.
/// Refilled lazily (when an append is considered), so an idle leader keeps no timer for it
/// unless an append waits for credit.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pace {
    /// Whether the peer is being paced now (a learner more than `promote_max_lag` behind).
    pub(crate) active: bool,
    /// Bytes that may still be sent; an append goes while it is not negative and may take it
    /// below zero by at most one append's size, repaid by later refills.
    pub(crate) credit: i64,
    /// When `credit` was last refilled.
    pub(crate) refilled_at: Millis,
    /// The leader's appended-bytes counter at that refill.
    pub(crate) appended_seen: u64,
}

impl Pace {
    /// Adds what the clock and the leader's appends earned since the last refill, keeping at
    /// most `cap` bytes of credit (a learner that could not spend its credit, e.g. with a
    /// full in-flight window, does not get a burst later).
    pub(crate) fn refill(&mut self, now: Millis, appended: u64, rate_per_s: u64, cap: u64) {
        let elapsed = now.saturating_sub(self.refilled_at);
        let earned = rate_per_s
            .saturating_mul(elapsed)
            .checked_div(1000)
            .unwrap_or(0)
            .saturating_add(appended.saturating_sub(self.appended_seen));
        let earned = i64::try_from(earned).unwrap_or(i64::MAX);
        let cap = i64::try_from(cap).unwrap_or(i64::MAX);
        self.credit = self.credit.saturating_add(earned).min(cap);
        self.refilled_at = now;
        self.appended_seen = appended;
    }

    /// Starts pacing afresh with no credit: one append may go at once (an append goes while
    /// the credit is not negative), the next ones when the clock and the log's growth have
    /// paid for it.
    pub(crate) fn reset(&mut self, now: Millis, appended: u64) {
        self.active = true;
        self.credit = 0;
        self.refilled_at = now;
        self.appended_seen = appended;
    }

    /// Milliseconds until the credit is back at zero at `rate_per_s` (clock alone), at
    /// least 1.
    pub(crate) fn wait_ms(&self, rate_per_s: u64) -> Millis {
        if self.credit >= 0 || rate_per_s == 0 {
            return 1;
        }
        let owed = self.credit.unsigned_abs();
        owed.saturating_mul(1000).div_ceil(rate_per_s).max(1)
    }
}

impl Progress {
    /// A fresh progress, probing from `next_index`.
    pub(crate) fn new(next_index: LogIndex, learner: bool, now: Millis) -> Self {
        Progress {
            match_index: 0,
            next_index: next_index.max(1),
            state: ReplicationState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            recent_active: false,
            learner,
            last_append_response: now,
            snapshot: None,
            hold_until: None,
            pace: Pace::default(),
        }
    }

    /// Pauses appends while the shell streams the snapshot at `index` to the peer; the
    /// transfer is abandoned (back to probing) at `deadline`.
    pub(crate) fn become_snapshot(&mut self, index: LogIndex, deadline: Millis) {
        self.state = ReplicationState::Snapshot;
        self.snapshot = Some((index, deadline));
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// Falls back to probing from just after `match_index` (or from `next`, when a rejection
    /// hint says so), forgetting the in-flight window.
    pub(crate) fn become_probe(&mut self, next: LogIndex) {
        self.state = ReplicationState::Probe;
        self.next_index = next.max(self.match_index + 1);
        self.probe_sent = false;
        self.inflight.clear();
        self.snapshot = None;
    }

    /// Records a successful append up to `index`. Returns whether `match_index` advanced.
    pub(crate) fn on_success(&mut self, index: LogIndex) -> bool {
        let advanced = index > self.match_index;
        if advanced {
            self.match_index = index;
        }
        match self.state {
            ReplicationState::Probe => {
                // The log matches up to `index`: switch to optimistic pipelining.
                if advanced || index + 1 >= self.next_index {
                    self.state = ReplicationState::Replicate;
                    self.next_index = self.match_index + 1;
                    self.inflight.clear();
                }
                self.probe_sent = false;
            }
            ReplicationState::Snapshot => {
                // The install's answer (or a late append answer) that reaches the snapshot's
                // index: appends resume right after the match. A late answer below it changes
                // only the match; the transfer goes on.
                if self.snapshot.is_none_or(|(s, _)| self.match_index >= s) {
                    self.hold_until = self.snapshot.map(|(_, deadline)| deadline);
                    self.state = ReplicationState::Replicate;
                    self.next_index = self.match_index + 1;
                    self.inflight.clear();
                    self.snapshot = None;
                }
            }
            ReplicationState::Replicate => {
                self.next_index = self.next_index.max(self.match_index + 1);
                while self.inflight.front().is_some_and(|&last| last <= index) {
                    self.inflight.pop_front();
                }
            }
        }
        advanced
    }

    /// Whether another AppendEntries may be sent now.
    pub(crate) fn can_send(&self, window: usize) -> bool {
        match self.state {
            ReplicationState::Probe => !self.probe_sent,
            ReplicationState::Replicate => self.inflight.len() < window,
            ReplicationState::Snapshot => false,
        }
    }

    /// The public, read-only view of this progress.
    pub(crate) fn view(&self, id: NodeId) -> super::PeerProgress {
        super::PeerProgress {
            id,
            match_index: self.match_index,
            next_index: self.next_index,
            learner: self.learner,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_then_replicate_then_window() {
        let mut p = Progress::new(5, false, 0);
        assert!(p.can_send(2));
        p.probe_sent = true;
        assert!(!p.can_send(2));
        assert!(p.on_success(4));
        assert_eq!(p.state, ReplicationState::Replicate);
        assert_eq!(p.next_index, 5);
        p.inflight.push_back(6);
        p.inflight.push_back(8);
        p.next_index = 9;
        assert!(!p.can_send(2));
        p.on_success(6);
        assert_eq!(p.inflight.len(), 1);
        assert!(p.can_send(2));
        // A stale success changes nothing.
        assert!(!p.on_success(5));
        assert_eq!(p.match_index, 6);
        p.become_probe(3);
        assert_eq!(p.next_index, 7, "never probe below match + 1");
        assert!(p.inflight.is_empty());
    }
}
