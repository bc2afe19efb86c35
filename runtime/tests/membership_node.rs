//! Issue 14, the node side: a node started with `cluster.join` (what `conclave init --join`
//! writes) waits outside the membership, is added by the leader, catches up from the log and
//! serves what it replicated; peers follow the membership at runtime (links, the
//! transport's allowlist, gossip); a removed node is refused at the handshake and a removed
//! leader reports `removed`. In-process nodes over real loopback TCP with a cluster secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::free_addr;
use conclave::config::{ClusterSecretString, Config, ReadLevel};
use conclave::node::{MembershipState, Node, NodeHandle};
use conclave::state_machine::{KvCommand, KvMachine, KvQuery, KvRequest};
use conclave_core::ids::{GroupId, NodeId};
use conclave_core::raft::{MemberAddr, MembershipChange};
use conclave_transport::handshake::{self, Hello, Refusal};
use conclave_transport::{ClusterSecret, HandshakeError};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const SECRET: &str = "membership-node-test-secret-0123456789";

async fn wait_for<T>(what: &str, secs: u64, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        actix::clock::sleep(Duration::from_millis(20)).await;
    }
}

async fn leader_of(handles: &[NodeHandle<KvMachine>]) -> NodeHandle<KvMachine> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(h) = handles.iter().find(|h| h.cluster_status().role == "leader") {
            return h.clone();
        }
        assert!(Instant::now() < deadline, "no leader within 15 s");
        actix::clock::sleep(Duration::from_millis(20)).await;
    }
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

async fn write(handles: &[NodeHandle<KvMachine>], k: &str, v: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let leader = leader_of(handles).await;
        match leader.write(put(k, v)).await {
            Ok(_) => return,
            Err(e) => {
                assert!(Instant::now() < deadline, "write {k} failed for 15 s: {e}");
                actix::clock::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn stale_get(h: &NodeHandle<KvMachine>, k: &str) -> Option<Vec<u8>> {
    h.read(KvQuery::Get(k.as_bytes().to_vec()), ReadLevel::Stale)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
}

/// Proposes `change` on the current leader, retrying while leadership moves.
async fn change(handles: &[NodeHandle<KvMachine>], change: MembershipChange) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let leader = leader_of(handles).await;
        match leader.inject_membership_change(change.clone()).await {
            Ok(index) => return index,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "{change:?} refused for 15 s: {e}"
                );
                actix::clock::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Dials `addr` (node `node`) claiming to be `claim`, with the cluster secret: the handshake's
/// outcome.
async fn handshake_as(
    claim: NodeId,
    node: NodeId,
    addr: SocketAddr,
    cluster: &str,
) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let secret = ClusterSecret::new(SECRET);
    match handshake::dial_status(
        &mut s,
        &Hello::new(claim, cluster).fresh(true),
        node,
        Some(&secret),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{e:?}")),
    }
}

fn is_not_member(r: &Result<(), String>) -> bool {
    // The acceptor's `not_member` refusal code.
    r.as_ref()
        .err()
        .is_some_and(|e| e == &format!("{:?}", HandshakeError::Refused(Refusal::RefusedByPeer(10))))
}

async fn start(c: Config) -> Node<KvMachine> {
    let sm = c.node.data_dir.join("sm");
    Node::builder()
        .config(c)
        .state_machine_with(move || KvMachine::open(&sm))
        .start()
        .await
        .unwrap()
}

/// Starts a node again on the ports of one just shut down: retried while its listener is
/// still being released.
async fn restart(c: Config) -> Node<KvMachine> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sm = c.node.data_dir.join("sm");
        match Node::builder()
            .config(c.clone())
            .state_machine_with(move || KvMachine::open(&sm))
            .start()
            .await
        {
            Ok(n) => return n,
            Err(e) => {
                assert!(Instant::now() < deadline, "restart: {e}");
                actix::clock::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Starts a node with its HTTP API.
async fn start_with_http(c: Config) -> (Node<KvMachine>, actix_web::dev::ServerHandle) {
    let node = start(c.clone()).await;
    let server = conclave::http::server(node.handle(), &c).unwrap();
    let handle = server.handle();
    actix::spawn(server);
    (node, handle)
}

#[actix::test]
async fn a_joining_node_is_added_catches_up_and_a_removed_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut configs = common::local_configs(3, &dir.path().join("data"));
    for c in &mut configs {
        c.cluster.secret = Some(ClusterSecretString(SECRET.to_owned()));
        c.gossip.cycle_interval_ms = 200;
        c.gossip.probe_timeout_ms = 100;
    }
    let cluster_id = configs[0].cluster.id.clone();
    // Node 4 as `conclave init --join` writes it: no initial members, a seed, the secret.
    let mut c4 = Config::default();
    c4.node.id = NodeId::new(4);
    c4.node.listen = free_addr();
    c4.node.http = free_addr();
    c4.node.data_dir = dir.path().join("data").join("n4");
    c4.cluster.id.clone_from(&cluster_id);
    c4.cluster.secret = Some(ClusterSecretString(SECRET.to_owned()));
    c4.cluster.join = true;
    c4.cluster.seeds = vec![configs[0].node.listen];
    c4.gossip = configs[0].gossip.clone();
    c4.validate().unwrap();
    let addr4 = c4.node.listen;
    let c4_http = c4.node.http;
    let addrs: Vec<(NodeId, SocketAddr)> =
        configs.iter().map(|c| (c.node.id, c.node.listen)).collect();

    let mut nodes = Vec::new();
    for c in configs.clone() {
        nodes.push(start(c).await);
    }
    let handles: Vec<NodeHandle<KvMachine>> = nodes.iter().map(Node::handle).collect();
    for i in 0..50 {
        write(&handles, &format!("before{i}"), "1").await;
    }

    // Node 4 starts outside the membership: not ready, `not_a_member`. Although it holds the
    // cluster secret, the cluster refuses its connection (`not_member`) until it is being
    // added (issue 14 point 1), hears nothing it says and moves no term (checked below and
    // after the addition).
    let n4 = start(c4).await;
    let h4 = n4.handle();
    let r = wait_for("node 4 to report not_a_member", 10, || {
        let r = h4.readiness_now();
        (r.code.as_deref() == Some("not_a_member")).then_some(r)
    })
    .await;
    assert!(!r.ready, "{r:?}");
    assert_eq!(h4.cluster_status().membership, MembershipState::NotAMember);
    for &(id, addr) in &addrs {
        let r = handshake_as(NodeId::new(4), id, addr, &cluster_id).await;
        assert!(
            is_not_member(&r),
            "node {id} admitted a node with the secret before it was added: {r:?}"
        );
    }
    let terms: Vec<u64> = handles.iter().map(|h| h.cluster_status().term).collect();
    actix::clock::sleep(Duration::from_millis(500)).await;
    for h in &handles {
        assert!(
            !h.cluster_status()
                .members
                .iter()
                .any(|m| m.id == NodeId::new(4)),
            "node {} lists node 4 in gossip before it was added",
            h.id()
        );
    }
    assert_eq!(
        handles
            .iter()
            .map(|h| h.cluster_status().term)
            .collect::<Vec<_>>(),
        terms,
        "a node outside the membership moved a term"
    );
    assert_eq!(
        h4.cluster_status().term,
        0,
        "a node outside the membership campaigned"
    );

    // Added as a learner: the leader dials it, it catches up from the log and serves it.
    let http4 = c4_http;
    change(
        &handles,
        MembershipChange::AddLearner {
            id: NodeId::new(4),
            addr: Some(MemberAddr {
                raft: addr4,
                http: http4,
            }),
        },
    )
    .await;
    wait_for(
        "node 4 to hold the data written before it joined",
        20,
        || {
            let s = h4.cluster_status();
            (s.membership == MembershipState::Member && s.applied_index >= 50).then_some(())
        },
    )
    .await;
    for i in [0, 25, 49] {
        assert_eq!(
            stale_get(&h4, &format!("before{i}")).await.as_deref(),
            Some(&b"1"[..]),
            "node 4 lacks before{i}"
        );
    }
    let r = wait_for("node 4 to be ready", 10, || {
        let r = h4.readiness_now();
        r.ready.then_some(r)
    })
    .await;
    assert_eq!(r.code, None);
    // Every member now admits node 4 and gossip knows it alive, on every node.
    for &(id, addr) in &addrs {
        let r = handshake_as(NodeId::new(4), id, addr, &cluster_id).await;
        assert!(!is_not_member(&r), "node {id} still refuses node 4: {r:?}");
    }
    let all: Vec<NodeHandle<KvMachine>> = handles.iter().cloned().chain([h4.clone()]).collect();
    for h in &all {
        wait_for("gossip to show node 4 alive", 15, || {
            h.cluster_status()
                .members
                .iter()
                .any(|m| m.id == NodeId::new(4) && m.state == "alive")
                .then_some(())
        })
        .await;
    }
    // Writes after the addition reach node 4 as well.
    write(&handles, "after-add", "2").await;
    wait_for("node 4 to apply a write made after it joined", 10, || {
        let s = h4.cluster_status();
        (s.applied_index > 50).then_some(())
    })
    .await;

    // Promote it, then remove node 3 (a follower if possible).
    change(&handles, MembershipChange::Promote(NodeId::new(4))).await;
    let leader = leader_of(&handles).await;
    let removed = [3u64, 2, 1]
        .into_iter()
        .map(NodeId::new)
        .find(|id| *id != leader.id())
        .unwrap();
    change(&handles, MembershipChange::Remove(removed)).await;
    let remaining: Vec<NodeHandle<KvMachine>> =
        all.iter().filter(|h| h.id() != removed).cloned().collect();
    // Every remaining member refuses it at the handshake and gossip marks it `left`.
    for h in &remaining {
        let addr = if h.id() == NodeId::new(4) {
            addr4
        } else {
            addrs.iter().find(|(id, _)| *id == h.id()).unwrap().1
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = handshake_as(removed, h.id(), addr, &cluster_id).await;
            if is_not_member(&r) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} still admits removed node {removed}: {r:?}",
                h.id()
            );
            actix::clock::sleep(Duration::from_millis(50)).await;
        }
        wait_for("gossip to mark the removed node left", 10, || {
            h.cluster_status()
                .members
                .iter()
                .any(|m| m.id == removed && m.state == "left")
                .then_some(())
        })
        .await;
    }
    // The removed node itself reports it: the leader replicates the change to it until it
    // commits, and its core then sees a membership without it.
    let gone = all.iter().find(|h| h.id() == removed).unwrap().clone();
    let r = wait_for("the removed node to report removed", 10, || {
        let r = gone.readiness_now();
        (r.code.as_deref() == Some("removed")).then_some(r)
    })
    .await;
    assert!(!r.ready, "{r:?}");
    assert_eq!(gone.cluster_status().membership, MembershipState::Removed);
    // The cluster of the remaining three goes on, and node 4 (a voter now) holds the writes.
    for i in 0..20 {
        write(&remaining, &format!("after-remove{i}"), "3").await;
    }
    // Polled: the leader may have changed since `leader` was read (an election under load),
    // so its commit index is no bound to wait for.
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0..20 {
        let key = format!("after-remove{i}");
        while stale_get(&h4, &key).await.as_deref() != Some(&b"3"[..]) {
            assert!(
                Instant::now() < deadline,
                "node 4 does not hold {key} (acknowledged)"
            );
            actix::clock::sleep(Duration::from_millis(50)).await;
        }
    }
    // The removed node, still running, cannot disturb the others: their term stays put while
    // they keep committing.
    let term = leader_of(&remaining).await.cluster_status().term;
    actix::clock::sleep(Duration::from_millis(1500)).await;
    write(&remaining, "still-going", "4").await;
    let now = leader_of(&remaining).await.cluster_status().term;
    assert_eq!(now, term, "the removed node made the cluster change terms");

    for n in nodes {
        n.shutdown().await;
    }
    n4.shutdown().await;
}

/// A leader that removes itself steps down once the change commits, and reports `removed` in
/// its status and its readiness (`/readyz` 503 `removed`).
#[actix::test]
async fn a_leader_that_removes_itself_reports_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut configs = common::local_configs(3, &dir.path().join("data"));
    for c in &mut configs {
        c.cluster.secret = Some(ClusterSecretString(SECRET.to_owned()));
    }
    let mut nodes = Vec::new();
    for c in configs {
        nodes.push(start(c).await);
    }
    let handles: Vec<NodeHandle<KvMachine>> = nodes.iter().map(Node::handle).collect();
    write(&handles, "k", "v").await;
    let leader = leader_of(&handles).await;
    let gone = leader.id();
    change(&handles, MembershipChange::Remove(gone)).await;
    let r = wait_for("the removed leader to report removed", 15, || {
        let r = leader.readiness_now();
        (r.code.as_deref() == Some("removed")).then_some(r)
    })
    .await;
    assert!(!r.ready);
    assert_eq!(leader.cluster_status().membership, MembershipState::Removed);
    // It steps down once the change commits (thesis §4.2.2), and stays removed.
    let s = wait_for("the removed leader to step down", 15, || {
        let s = leader.cluster_status();
        (s.role != "leader").then_some(s)
    })
    .await;
    assert_eq!(s.membership, MembershipState::Removed);
    // The two others elect a leader among themselves and go on.
    let rest: Vec<NodeHandle<KvMachine>> =
        handles.iter().filter(|h| h.id() != gone).cloned().collect();
    write(&rest, "after", "1").await;
    for n in nodes {
        n.shutdown().await;
    }
}

/// Issue 14: a removed node still reports `removed` after its log was compacted behind a
/// snapshot taken after the removal, and after a restart (the log that named it is gone; the
/// node's `member-of` mark remembers it was a member). Without the mark it read as
/// `not_a_member`, i.e. as a node waiting to be added.
#[actix::test]
async fn a_removed_node_reports_removed_after_compaction_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut configs = common::local_configs(3, &dir.path().join("data"));
    for c in &mut configs {
        c.cluster.secret = Some(ClusterSecretString(SECRET.to_owned()));
        c.snapshot.keep_entries = 0;
    }
    let mut nodes = Vec::new();
    for c in configs.clone() {
        nodes.push(Some(start(c).await));
    }
    let handles: Vec<NodeHandle<KvMachine>> =
        nodes.iter().map(|n| n.as_ref().unwrap().handle()).collect();
    for i in 0..20 {
        write(&handles, &format!("k{i}"), "v").await;
    }
    // The leader removes itself: it commits and applies the removal, so its own snapshot is
    // taken after it and names a membership without it.
    let leader = leader_of(&handles).await;
    let gone = leader.id();
    let index = change(&handles, MembershipChange::Remove(gone)).await;
    wait_for("the removed leader to apply its removal", 15, || {
        let s = leader.cluster_status();
        (s.membership == MembershipState::Removed && s.applied_index >= index).then_some(())
    })
    .await;
    let snap = leader.take_snapshot(GroupId::FIRST).await.unwrap();
    assert!(
        snap.index >= index,
        "snapshot {snap:?} before the removal at {index}"
    );
    assert_eq!(leader.cluster_status().membership, MembershipState::Removed);

    // Restarted from that snapshot and the compacted log.
    let i = handles.iter().position(|h| h.id() == gone).unwrap();
    nodes[i].take().unwrap().shutdown().await;
    let again = restart(configs[i].clone()).await;
    let h = again.handle();
    let r = wait_for("the restarted removed node to report removed", 15, || {
        let r = h.readiness_now();
        r.code.is_some().then_some(r)
    })
    .await;
    assert_eq!(r.code.as_deref(), Some("removed"), "{r:?}");
    assert_eq!(h.cluster_status().membership, MembershipState::Removed);
    again.shutdown().await;
    for n in nodes.into_iter().flatten() {
        n.shutdown().await;
    }
}

/// `conclave member drain` on in-process nodes over HTTP: a drain sent to a follower is
/// forwarded to the node it names; the drained leader hands leadership to another voter,
/// shows `drained` in the configuration and in every node's gossip view, takes no
/// leadership (a transfer to it does not happen, and when the leader goes it does not take
/// over although it votes), and may lead again once undrained.
#[actix::test]
async fn a_drained_leader_hands_off_and_takes_no_leadership_until_undone() {
    let dir = tempfile::tempdir().unwrap();
    let mut configs = common::local_configs(3, &dir.path().join("data"));
    for c in &mut configs {
        c.cluster.secret = Some(ClusterSecretString(SECRET.to_owned()));
        c.gossip.cycle_interval_ms = 200;
        c.gossip.probe_timeout_ms = 100;
    }
    let endpoints: Vec<(NodeId, String)> = configs
        .iter()
        .map(|c| (c.node.id, format!("http://{}", c.node.http)))
        .collect();
    let endpoint = |id: NodeId| endpoints.iter().find(|(i, _)| *i == id).unwrap().1.clone();
    let mut nodes = Vec::new();
    let mut servers = Vec::new();
    for c in configs {
        let (n, s) = start_with_http(c).await;
        nodes.push(Some(n));
        servers.push(s);
    }
    let handles: Vec<NodeHandle<KvMachine>> =
        nodes.iter().map(|n| n.as_ref().unwrap().handle()).collect();
    write(&handles, "k", "v").await;
    let drained = leader_of(&handles).await.id();
    let follower = handles.iter().find(|h| h.id() != drained).unwrap().id();

    // Through a follower: forwarded to the drained node, which answers.
    let client = conclave::client::Client::new(&endpoint(follower)).unwrap();
    let out = client.drain(drained, false).await.unwrap();
    assert_eq!(out.id, drained);
    assert!(out.drained);
    let to = out.groups[0].hand_off_to.expect("the leader hands off");
    assert_ne!(to, drained);
    let new_leader = wait_for("leadership to move off the drained node", 10, || {
        let l = handles
            .iter()
            .find(|h| h.cluster_status().role == "leader")?;
        (l.id() != drained).then(|| l.clone())
    })
    .await;
    // Shown drained: in the configuration (on the leader, from gossip) and in `/v1/cluster`.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(c) = client.cluster_config().await {
            if c.voters.iter().any(|m| m.id == drained && m.drained) {
                assert!(
                    !c.voters.iter().any(|m| m.id != drained && m.drained),
                    "{c:?}"
                );
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the configuration does not show the drain"
        );
        actix::clock::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(new_leader.id(), drained);
    for h in &handles {
        wait_for("gossip to show the drain", 15, || {
            h.cluster_status()
                .members
                .iter()
                .any(|m| m.id == drained && m.drained)
                .then_some(())
        })
        .await;
    }
    // Writes go on (the drained node still replicates).
    write(&handles, "after-drain", "1").await;

    // A transfer to it does not happen.
    client.transfer_leader(drained).await.unwrap();
    actix::clock::sleep(Duration::from_millis(1000)).await;
    assert_ne!(leader_of(&handles).await.id(), drained);

    // The leader goes: the third node takes over with the drained node's vote; the drained
    // node never leads.
    let leader_now = leader_of(&handles).await.id();
    let i = handles.iter().position(|h| h.id() == leader_now).unwrap();
    nodes[i].take().unwrap().shutdown().await;
    let rest: Vec<NodeHandle<KvMachine>> = handles
        .iter()
        .filter(|h| h.id() != leader_now)
        .cloned()
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let third = loop {
        assert!(
            rest.iter()
                .find(|h| h.id() == drained)
                .is_some_and(|h| h.cluster_status().role != "leader"),
            "the drained node took leadership"
        );
        if let Some(l) = rest.iter().find(|h| h.cluster_status().role == "leader") {
            break l.id();
        }
        assert!(Instant::now() < deadline, "no leader among the other two");
        actix::clock::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(third, drained);
    write(&rest, "after-failover", "2").await;

    // Undone: it may lead again.
    let c = conclave::client::Client::new(&endpoint(drained)).unwrap();
    let out = c.drain(drained, true).await.unwrap();
    assert!(!out.drained);
    c.transfer_leader(drained).await.unwrap();
    wait_for("the undrained node to take leadership", 10, || {
        rest.iter()
            .find(|h| h.id() == drained)
            .is_some_and(|h| h.cluster_status().role == "leader")
            .then_some(())
    })
    .await;
    for s in servers {
        s.stop(false).await;
    }
    for n in nodes.into_iter().flatten() {
        n.shutdown().await;
    }
}
