//! A state machine whose storage calls block (a gate the test holds closed) must not freeze
//! its node: the applier runs on its own arbiter, so the node still takes part in elections,
//! replicates and answers status, and the stall watchdog reports the stuck call (`/readyz`
//! reasons, `storage_stalled`) until the call returns.

#![allow(clippy::unwrap_used)]

mod common;

use conclave::node::{Node, NodeHandle};
use conclave::state_machine::{LogIndex, SnapshotStreamError, StateMachine, StateMachineError};
use conclave::storage::health::StorageCondition;
use conclave_core::ids::NodeId;
use parking_lot::{Condvar, Mutex};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Open: calls pass. Closed: every apply/skip waits until it opens.
#[derive(Default)]
struct Gate {
    closed: Mutex<bool>,
    changed: Condvar,
}

impl Gate {
    fn set_closed(&self, closed: bool) {
        *self.closed.lock() = closed;
        self.changed.notify_all();
    }

    fn pass(&self) {
        let mut closed = self.closed.lock();
        while *closed {
            self.changed.wait(&mut closed);
        }
    }
}

/// An in-memory map whose writes pass through a gate (a stand-in for a storage engine that
/// deadlocks inside a write).
#[derive(Clone)]
struct GatedMachine {
    map: BTreeMap<String, String>,
    applied: LogIndex,
    gate: Arc<Gate>,
}

impl StateMachine for GatedMachine {
    type Command = (String, String);
    type Output = ();
    type Query = String;
    type QueryOutput = Option<String>;

    fn apply(
        &mut self,
        index: LogIndex,
        (k, v): (String, String),
    ) -> Result<(), StateMachineError> {
        self.gate.pass();
        self.map.insert(k, v);
        self.applied = index;
        Ok(())
    }

    fn skip(&mut self, index: LogIndex) -> Result<(), StateMachineError> {
        self.gate.pass();
        self.applied = index;
        Ok(())
    }

    fn query(&self, key: &String) -> Option<String> {
        self.map.get(key).cloned()
    }

    fn snapshot_to(&self, out: &mut dyn std::io::Write) -> Result<LogIndex, StateMachineError> {
        serde_json::to_writer(out, &self.map).map_err(|e| {
            StateMachineError::SnapshotStream(SnapshotStreamError::Encoding(Box::new(e)))
        })?;
        Ok(self.applied)
    }

    fn restore_from(
        &mut self,
        index: LogIndex,
        input: &mut dyn std::io::Read,
    ) -> Result<(), StateMachineError> {
        self.map = serde_json::from_reader(input).map_err(|e| {
            StateMachineError::SnapshotStream(SnapshotStreamError::Encoding(Box::new(e)))
        })?;
        self.applied = index;
        Ok(())
    }
}

async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        actix::clock::sleep(Duration::from_millis(10)).await;
    }
}

fn leader(handles: &[NodeHandle<GatedMachine>]) -> Option<NodeId> {
    handles
        .iter()
        .find(|h| h.cluster_status().role == "leader")
        .map(|h| h.id())
}

#[actix::test]
async fn a_blocked_state_machine_does_not_freeze_its_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut configs = common::local_configs(3, dir.path());
    for c in &mut configs {
        c.storage.stall_timeout_ms = 200;
    }
    let gates: Vec<Arc<Gate>> = (0..3).map(|_| Arc::new(Gate::default())).collect();
    // Node 1's storage is stuck from the start: even its first apply (the leader's no-op)
    // never returns until the gate opens.
    gates[0].set_closed(true);
    let mut nodes: Vec<Node<GatedMachine>> = Vec::new();
    for (c, gate) in configs.into_iter().zip(&gates) {
        let machine = GatedMachine {
            map: BTreeMap::new(),
            applied: 0,
            gate: gate.clone(),
        };
        nodes.push(
            Node::builder()
                .config(c)
                .state_machine(machine)
                .start()
                .await
                .unwrap(),
        );
    }
    let handles: Vec<_> = nodes.iter().map(|n| n.handle()).collect();
    let stuck = &handles[0];

    // Elections still work, with the stuck node taking part.
    wait_until("a leader", Duration::from_secs(10), || {
        leader(&handles).is_some()
    })
    .await;
    if leader(&handles) == Some(NodeId::new(1)) {
        // Its Raft actor is responsive: it hands leadership over on request.
        stuck.transfer_leader(NodeId::new(2)).await.unwrap();
        wait_until(
            "leadership to move off node 1",
            Duration::from_secs(10),
            || leader(&handles).is_some_and(|l| l != NodeId::new(1)),
        )
        .await;
    }
    let leader_id = leader(&handles).unwrap();
    let lead = handles.iter().find(|h| h.id() == leader_id).unwrap();

    // Writes commit (node 1 still replicates: its commit index follows the leader's).
    for i in 0..20 {
        lead.write((format!("k{i}"), format!("v{i}")))
            .await
            .unwrap();
    }
    let target = lead.cluster_status().commit_index;
    wait_until(
        "node 1 to replicate the writes",
        Duration::from_secs(5),
        || stuck.cluster_status().commit_index >= target,
    )
    .await;
    let status = stuck.cluster_status();
    assert!(
        status.applied_index < target,
        "node 1 applied {} although its machine is blocked",
        status.applied_index
    );

    // The stall is reported within the timeout (plus the watchdog's tick), and shown by
    // readiness and status.
    wait_until("the stall to be reported", Duration::from_secs(2), || {
        matches!(
            stuck.readiness_now().storage,
            StorageCondition::Stalled { .. }
        )
    })
    .await;
    let ready = stuck.readiness_now();
    assert!(!ready.ready);
    assert_eq!(ready.storage.code(), Some("storage_stalled"));
    assert!(
        ready.reasons.iter().any(|r| r.contains("state_machine/0")),
        "{:?}",
        ready.reasons
    );
    match stuck.cluster_status().storage {
        StorageCondition::Stalled { component, for_ms } => {
            assert_eq!(component.to_string(), "state_machine/0");
            assert!(for_ms >= 200, "{for_ms}");
        }
        other => panic!("expected a stall in /v1/cluster, got {other:?}"),
    }
    // The healthy nodes are not affected.
    for h in &handles[1..] {
        assert_eq!(h.cluster_status().storage, StorageCondition::Healthy);
    }

    // Released: node 1 applies everything, and is ready again.
    gates[0].set_closed(false);
    wait_until(
        "node 1 to catch up and be ready",
        Duration::from_secs(10),
        || {
            let r = stuck.readiness_now();
            r.ready && stuck.cluster_status().applied_index >= target
        },
    )
    .await;
    assert_eq!(stuck.readiness_now().storage, StorageCondition::Healthy);
    let v = stuck
        .read("k19".to_owned(), conclave::config::ReadLevel::Stale)
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("v19"));

    for n in nodes {
        n.shutdown().await;
    }
}
