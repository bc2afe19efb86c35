//! The Raft core alone (issue 2, item 3): committed entries per second for a 3-node group driven
//! in-process with no I/O, at batch sizes 1, 64 and 1024.
//!
//! ```text
//! cargo bench -p benches --bench raft -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! One measured iteration proposes `batch` commands (16-byte payloads) on the leader, then
//! drives the group until the leader has committed and applied them: each `Send` is delivered
//! at once, each `Persist` is reported complete at once, each `Apply` is consumed. The clock
//! does not move, so no timer fires; followers apply a batch when the next one's AppendEntries
//! brings the commit index, so their apply work is in the measurement too, one batch late.
//! Throughput is entries committed per second. The group is rebuilt, outside the measured time, every `REBUILD_AFTER` entries so the
//! in-memory logs (the core keeps them until a snapshot compacts them) stay small.

// `criterion_group!` generates an undocumented public function.
#![allow(missing_docs)]

use std::collections::{BTreeSet, VecDeque};
use std::hint::black_box;
use std::time::{Duration, Instant};

use conclave_core::ids::NodeId;
use conclave_core::raft::{
    Action, LogIndex, Membership, Message, Millis, Raft, RaftConfig, RestoreState, Role,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const NODES: u64 = 3;
const PAYLOAD: usize = 16;
const REBUILD_AFTER: LogIndex = 200_000;

/// A 3-node group wired together in memory.
struct Group {
    nodes: Vec<Raft>,
    now: Millis,
    network: VecDeque<Message>,
    actions: Vec<Action>,
    applied: Vec<LogIndex>,
}

impl Group {
    /// Builds the group and elects node 1.
    fn elected() -> Group {
        let voters: BTreeSet<NodeId> = (1..=NODES).map(NodeId::new).collect();
        let nodes = (1..=NODES)
            .map(NodeId::new)
            .map(|id| {
                let config = RaftConfig {
                    id,
                    ..RaftConfig::default()
                };
                let restore = RestoreState {
                    base_membership: Membership {
                        voters: voters.clone(),
                        ..Membership::default()
                    },
                    ..RestoreState::default()
                };
                match Raft::new(config, restore, id.get(), 0) {
                    Ok(raft) => raft,
                    Err(e) => panic!("bench group: {e}"),
                }
            })
            .collect();
        let mut group = Group {
            nodes,
            now: 0,
            network: VecDeque::new(),
            actions: Vec::new(),
            applied: vec![0; NODES as usize],
        };
        // Only node 1 sees time pass, so only it times out and campaigns (pre-vote, then vote).
        group.drive();
        group.now = 10_000;
        group.nodes[0].tick(group.now);
        group.drive();
        assert_eq!(
            group.nodes[0].role(),
            Role::Leader,
            "node 1 was not elected"
        );
        // The leader's no-op of its term is committed.
        assert_eq!(group.applied[0], group.nodes[0].last_index());
        group
    }

    /// Carries out every action and delivers every message until the group is quiet.
    fn drive(&mut self) {
        loop {
            let mut busy = false;
            for i in 0..self.nodes.len() {
                self.nodes[i].poll_actions(&mut self.actions);
                busy |= !self.actions.is_empty();
                for action in self.actions.drain(..) {
                    match action {
                        Action::Send(msg) => self.network.push_back(msg),
                        Action::Persist(request) => self.nodes[i].persisted(self.now, request.seq),
                        Action::Apply(entries) => {
                            if let Some(last) = entries.last() {
                                self.applied[i] = last.index;
                            }
                        }
                        // The bench never snapshots: no compaction, so no snapshot transfers.
                        Action::SetTimer { .. }
                        | Action::ReadReady { .. }
                        | Action::ReadFailed { .. }
                        | Action::RoleChanged { .. }
                        | Action::SendSnapshot { .. }
                        | Action::RestoreSnapshot(_)
                        | Action::Compacted { .. } => {}
                    }
                }
            }
            while let Some(msg) = self.network.pop_front() {
                busy = true;
                let to = (msg.to.get() - 1) as usize;
                self.nodes[to].handle_message(self.now, msg);
            }
            if !busy {
                return;
            }
        }
    }

    /// Proposes `batch` commands on the leader and drives the group until the leader has
    /// committed and applied them. Followers learn that commit index with the next
    /// AppendEntries (the next batch: no heartbeat fires on a frozen clock), so they apply one
    /// batch behind, inside the next measured iteration.
    fn commit_batch(&mut self, batch: usize) {
        let mut last = 0;
        for i in 0..batch {
            let mut command = vec![0u8; PAYLOAD];
            command[..8].copy_from_slice(&(i as u64).to_le_bytes());
            match self.nodes[0].propose(self.now, command) {
                Ok(proposal) => last = proposal.index,
                Err(e) => panic!("bench propose: {e}"),
            }
        }
        let before = self.applied[0];
        self.drive();
        assert_eq!(self.applied[0], last, "the leader did not commit the batch");
        assert!(
            self.applied[1..].iter().all(|&a| a >= before),
            "followers fell behind: {:?}, leader had applied {before}",
            self.applied
        );
    }
}

fn committed_entries(c: &mut Criterion) {
    let mut g = c.benchmark_group("raft/commit");
    for batch in [1usize, 64, 1024] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("3-node/batch-{batch}"), |b| {
            b.iter_custom(|iters| {
                let mut group = Group::elected();
                let mut measured = Duration::ZERO;
                for _ in 0..iters {
                    if group.nodes[0].last_index() >= REBUILD_AFTER {
                        group = Group::elected();
                    }
                    let start = Instant::now();
                    group.commit_batch(black_box(batch));
                    measured += start.elapsed();
                }
                measured
            });
        });
    }
    g.finish();
}

criterion_group!(benches, committed_entries);
criterion_main!(benches);
