//! Groups created and removed at runtime (issue 15, the group registry): three nodes in one
//! process over loopback create a second Raft group, elect its leader, write to it apart from
//! group 0, host it again after a restart (the durable group list), and stop hosting it.

#![allow(clippy::unwrap_used)]

mod common;

use conclave::config::{Config, ReadLevel};
use conclave::node::{GroupRegistryError, Node, NodeHandle, RequestError};
use conclave::state_machine::{KvCommand, KvMachine, KvQuery, KvRequest};
use conclave_core::ids::{GroupId, NodeId};
use std::time::{Duration, Instant};

/// GroupId 5, usable in patterns.
const GROUP_5: GroupId = GroupId::new(5);
/// GroupId 6, usable in patterns.
const GROUP_6: GroupId = GroupId::new(6);
/// NodeId 99, usable in patterns.
const NODE_99: NodeId = NodeId::new(99);

/// A node whose every group has a machine of its own under the node's data directory.
async fn start(c: Config) -> Node<KvMachine> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dir = c.node.data_dir.clone();
        match Node::builder()
            .config(c.clone())
            .state_machine_for_groups(move |g| KvMachine::open(&dir.join(format!("sm-{g}"))))
            .start()
            .await
        {
            Ok(n) => return n,
            // A restart on the ports of a node just shut down: retried while they are released.
            Err(e) => {
                assert!(Instant::now() < deadline, "start: {e}");
                actix::clock::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The node that leads `group`, waiting up to 10 s.
async fn leader_of(handles: &[NodeHandle<KvMachine>], group: GroupId) -> NodeHandle<KvMachine> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for h in handles {
            let status = h.cluster_status();
            if status
                .groups
                .iter()
                .any(|g| g.id == group && g.role == "leader")
            {
                return h.clone();
            }
        }
        actix::clock::sleep(Duration::from_millis(20)).await;
    }
    panic!("group {group}: no leader within 10 s");
}

fn put(k: &str, v: &str) -> KvRequest {
    KvRequest {
        id: None,
        op: KvCommand::Put {
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
        },
    }
}

async fn get(
    h: &NodeHandle<KvMachine>,
    group: GroupId,
    k: &str,
    level: ReadLevel,
) -> Option<Vec<u8>> {
    h.read_from(group, KvQuery::Get(k.as_bytes().to_vec()), level)
        .await
        .unwrap()
        .unwrap()
}

#[actix::test]
async fn groups_are_created_written_restarted_and_removed_at_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let configs = common::local_configs(3, dir.path());
    let mut nodes = Vec::new();
    for c in &configs {
        nodes.push(Some(start(c.clone()).await));
    }
    let handles: Vec<_> = nodes.iter().flatten().map(|n| n.handle()).collect();
    let ids: Vec<NodeId> = handles.iter().map(|h| h.id()).collect();
    leader_of(&handles, GroupId::FIRST).await;

    // Created on every voter with the same voters; elects its own leader.
    for h in &handles {
        h.create_group(GroupId::new(5), ids.clone()).await.unwrap();
        assert_eq!(h.groups(), vec![GroupId::FIRST, GroupId::new(5)]);
    }
    assert!(matches!(
        handles[0].create_group(GroupId::new(5), ids.clone()).await,
        Err(GroupRegistryError::Exists(GROUP_5))
    ));
    assert!(matches!(
        handles[0]
            .create_group(GroupId::new(6), [ids[1], ids[2]])
            .await,
        Err(GroupRegistryError::NotAVoter { group: GROUP_6, .. })
    ));
    assert!(matches!(
        handles[0]
            .create_group(GroupId::new(6), [ids[0], NodeId::new(99)])
            .await,
        Err(GroupRegistryError::UnknownVoter {
            group: GROUP_6,
            voter: NODE_99
        })
    ));
    assert!(matches!(
        handles[0].remove_group(GroupId::FIRST).await,
        Err(GroupRegistryError::FirstGroup)
    ));

    // Its writes reach its own machines only.
    let leader5 = leader_of(&handles, GroupId::new(5)).await;
    leader5
        .write_to(GroupId::new(5), put("k", "five"))
        .await
        .unwrap();
    assert_eq!(
        get(&leader5, GroupId::new(5), "k", ReadLevel::Linearizable).await,
        Some(b"five".to_vec())
    );
    let leader0 = leader_of(&handles, GroupId::FIRST).await;
    assert_eq!(
        get(&leader0, GroupId::FIRST, "k", ReadLevel::Linearizable).await,
        None
    );

    // A restarted node hosts the group again (durable list) and catches up on it.
    let i = handles.iter().position(|h| h.id() != leader5.id()).unwrap();
    nodes[i].take().unwrap().shutdown().await;
    let again = start(configs[i].clone()).await;
    let h = again.handle();
    assert_eq!(h.groups(), vec![GroupId::FIRST, GroupId::new(5)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    // Until its group actor has recovered the group it answers `NoLeader`.
    while !matches!(
        h.read_from(GroupId::new(5), KvQuery::Get(b"k".to_vec()), ReadLevel::Stale).await,
        Ok(Ok(Some(v))) if v == b"five"
    ) {
        assert!(
            Instant::now() < deadline,
            "the restarted node never applied group 5's write"
        );
        actix::clock::sleep(Duration::from_millis(20)).await;
    }
    nodes[i] = Some(again);
    let handles: Vec<_> = nodes.iter().flatten().map(|n| n.handle()).collect();

    // Removed everywhere: unlisted, not served; group 0 carries on.
    for h in &handles {
        h.remove_group(GroupId::new(5)).await.unwrap();
        assert_eq!(h.groups(), vec![GroupId::FIRST]);
        assert!(!h
            .cluster_status()
            .groups
            .iter()
            .any(|g| g.id == GroupId::new(5)));
        assert!(matches!(
            h.write_to(GroupId::new(5), put("k", "gone")).await,
            Err(RequestError::NoLeader { group: GROUP_5 })
        ));
    }
    assert!(matches!(
        handles[0].remove_group(GroupId::new(5)).await,
        Err(GroupRegistryError::NotHosted(GROUP_5))
    ));
    let leader0 = leader_of(&handles, GroupId::FIRST).await;
    leader0.write(put("z", "0")).await.unwrap();

    // And stays removed across a restart.
    let i = 0;
    nodes[i].take().unwrap().shutdown().await;
    let again = start(configs[i].clone()).await;
    assert_eq!(again.handle().groups(), vec![GroupId::FIRST]);
    again.shutdown().await;
    for n in nodes.into_iter().flatten() {
        n.shutdown().await;
    }
}
