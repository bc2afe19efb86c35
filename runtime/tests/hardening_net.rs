//! Issue 12's network findings against whole nodes: a forged `Heartbeat` at term `u64::MAX`
//! (finding 3, in-process nodes over real loopback TCP) and a connection posing as node 2 to a
//! cluster of real `conclave node` processes with a cluster secret (finding 2).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::rogue::{heartbeat, rogue};
use common::Cluster;
use conclave::config::{ClusterSecretString, ReadLevel};
use conclave::node::{Node, NodeHandle};
use conclave::state_machine::{KvCommand, KvMachine, KvRequest};
use conclave_core::ids::NodeId;
use conclave_core::raft::MAX_TERM;
use conclave_transport::handshake::{self, Hello, Refusal};
use conclave_transport::{ClusterSecret, Endpoint, HandshakeError};
use std::time::{Duration, Instant};

async fn leader_of(handles: &[NodeHandle<KvMachine>]) -> NodeHandle<KvMachine> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        for h in handles {
            if h.cluster_status().role == "leader" {
                return h.clone();
            }
        }
        actix::clock::sleep(Duration::from_millis(20)).await;
    }
    panic!("no leader elected within 15 s");
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

async fn write_retrying(handles: &[NodeHandle<KvMachine>], req: KvRequest) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let leader = leader_of(handles).await;
        match leader.write(req.clone()).await {
            Ok(_) => return,
            Err(e) => {
                assert!(Instant::now() < deadline, "write failed for 15 s: {e}");
                actix::clock::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Finding 3: non-member 777 sends `Heartbeat { term: u64::MAX }` to every node, and (the
/// cluster has no secret, so the transport cannot tell) a connection claiming member 3 does the
/// same. No node's term moves near overflow, and the cluster keeps electing and committing.
#[actix::test]
async fn finding3_forged_max_term_heartbeat_does_not_stop_elections() {
    let dir = tempfile::tempdir().unwrap();
    let configs = common::local_configs(3, dir.path());
    let cluster_id = configs[0].cluster.id.clone();
    let addrs: Vec<_> = configs.iter().map(|c| (c.node.id, c.node.listen)).collect();
    let mut nodes = Vec::new();
    for c in configs {
        let sm = c.node.data_dir.join("sm");
        nodes.push(
            Node::builder()
                .config(c)
                .state_machine_with(move || KvMachine::open(&sm))
                .start()
                .await
                .unwrap(),
        );
    }
    let handles: Vec<_> = nodes.iter().map(Node::handle).collect();
    write_retrying(&handles, put("before", "1")).await;

    let stranger = rogue(NodeId::new(777), &cluster_id).await;
    let impostor = rogue(NodeId::new(3), &cluster_id).await;
    for _ in 0..20 {
        for &(id, addr) in &addrs {
            let _ = stranger
                .peer(id, addr)
                .try_send(heartbeat(NodeId::new(777), id, u64::MAX));
            if id != NodeId::new(3) {
                let _ = impostor
                    .peer(id, addr)
                    .try_send(heartbeat(NodeId::new(3), id, u64::MAX));
            }
        }
        actix::clock::sleep(Duration::from_millis(50)).await;
    }
    for h in &handles {
        let term = h.cluster_status().term;
        assert!(term < MAX_TERM, "node {} adopted term {term}", h.id());
    }
    // Elections and commits still work: move leadership, then write.
    drop(impostor);
    drop(stranger);
    let leader = leader_of(&handles).await;
    let target = handles.iter().find(|h| h.id() != leader.id()).unwrap().id();
    let _ = leader.transfer_leader(target).await;
    write_retrying(&handles, put("after", "2")).await;
    for h in &handles {
        assert!(h.cluster_status().term < MAX_TERM);
    }
    for n in nodes {
        n.shutdown().await;
    }
}

/// Finding 2, with real processes: a cluster with a cluster secret; a script posing as node 2
/// (without the secret, then with a wrong one) is refused by the leader, a non-member holding
/// the secret is admitted but changes nothing, and every write the leader acknowledges
/// meanwhile is held by the real node 2.
#[actix::test]
async fn finding2_impostor_of_node_2_is_refused_by_a_real_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "process-test-cluster-secret-0123456789";
    let mut c = Cluster::new_with(dir.path(), 3, |cfg| {
        cfg.cluster.secret = Some(ClusterSecretString(secret.to_owned()));
    });
    let leader = c.leader(Duration::from_secs(15)).await;
    let leader_id = c.configs[leader].node.id;
    let cluster_id = c.configs[leader].cluster.id.clone();
    let leader_addr = c.configs[leader].node.listen;
    // Pose as a follower of the leader (node 2, or node 1 if node 2 leads).
    let victim = NodeId::new(if leader_id == NodeId::new(2) { 1 } else { 2 });
    let victim_idx = c.configs.iter().position(|x| x.node.id == victim).unwrap();

    let mut acked = Vec::new();
    for round in 0..10 {
        // No secret.
        let mut s = tokio::net::TcpStream::connect(leader_addr).await.unwrap();
        let r = handshake::dial_status(
            &mut s,
            &Hello::new(victim, &cluster_id).fresh(false),
            leader_id,
            None,
        )
        .await;
        assert!(
            matches!(r, Err(HandshakeError::Refused(Refusal::RefusedByPeer(11)))),
            "impostor without the secret: {r:?}"
        );
        // A wrong secret.
        let mut s = tokio::net::TcpStream::connect(leader_addr).await.unwrap();
        let guess = ClusterSecret::new("guessing-the-secret-0123456789");
        let r = handshake::dial_status(
            &mut s,
            &Hello::new(victim, &cluster_id).fresh(true),
            leader_id,
            Some(&guess),
        )
        .await;
        assert!(
            matches!(r, Err(HandshakeError::Refused(Refusal::AuthFailed))),
            "impostor with a wrong secret: {r:?}"
        );
        // A non-member with the right secret.
        let mut s = tokio::net::TcpStream::connect(leader_addr).await.unwrap();
        let right = ClusterSecret::new(secret);
        let r = handshake::dial_status(
            &mut s,
            &Hello::new(NodeId::new(777), &cluster_id).fresh(true),
            leader_id,
            Some(&right),
        )
        .await;
        // It proves it holds the secret, but no membership names it: refused at the handshake
        // (`not_member`, code 10). A cluster admits a node once it is being added, or once a
        // member's log names it (issue 14: a node lagging behind a membership change must
        // hear a leader that change added — docs/security.md, finding 2).
        assert!(
            matches!(r, Err(HandshakeError::Refused(Refusal::RefusedByPeer(10)))),
            "non-member with the secret: {r:?}"
        );
        // Writes through the leader go on.
        let key = format!("k{round}");
        if c.client(leader)
            .put(key.as_bytes(), b"v".to_vec(), None)
            .await
            .is_ok()
        {
            acked.push(key);
        }
    }
    assert!(!acked.is_empty(), "no write was acknowledged\n{}", c.logs());
    // Every acknowledged write is on the real victim node (it, not an impostor, acknowledged).
    for key in &acked {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = c
                .client(victim_idx)
                .get(key.as_bytes(), Some(ReadLevel::Stale))
                .await;
            if matches!(&got, Ok(Some(v)) if v == b"v") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {victim} does not hold {key}: {got:?}\n{}",
                c.logs()
            );
            actix::clock::sleep(Duration::from_millis(20)).await;
        }
    }
    let logs = c.logs();
    assert!(
        logs.contains("secret_mismatch"),
        "refusal not logged\n{logs}"
    );
    c.kill9(0);
}
