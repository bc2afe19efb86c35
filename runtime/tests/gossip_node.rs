//! Gossip on in-process nodes over real loopback TCP: application metadata and events reach
//! the other nodes, bad input from a peer (forged sender, forged "you are dead", a rumor about
//! an incarnation never had, garbage metadata) leaves the node's own view correct, a panicking
//! gossip actor is restarted with a higher incarnation, and a corrupt persisted incarnation
//! refuses to start with an error naming the file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use conclave::config::Config;
use conclave::node::wire::WireMessage;
use conclave::node::{GossipMembers, Node, NodeError};
use conclave::state_machine::KvMachine;
use conclave_core::ids::NodeId;
use conclave_core::swim::{Body, Event, MemberState, Message, Metadata, Update};
use conclave_transport::{Endpoint, Transport, TransportConfig};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn configs(n: u64, dir: &std::path::Path) -> Vec<Config> {
    let mut configs = common::local_configs(n, dir);
    for c in &mut configs {
        c.gossip.cycle_interval_ms = 200;
        c.gossip.probe_timeout_ms = 80;
        c.gossip.suspect_timeout_s = 1;
        c.gossip.dead_timeout_s = 2;
        c.cluster.seed_retry_ms = 200;
    }
    configs
}

async fn start(config: Config) -> Result<Node<KvMachine>, NodeError> {
    let sm = config.node.data_dir.join("sm");
    Node::builder()
        .config(config)
        .state_machine_with(move || KvMachine::open(&sm))
        .start()
        .await
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what} not within {timeout:?}");
        actix::clock::sleep(Duration::from_millis(20)).await;
    }
}

fn state(m: &GossipMembers, id: NodeId) -> Option<(String, u64)> {
    m.members
        .iter()
        .find(|x| x.id == id)
        .map(|x| (x.state.clone(), x.incarnation))
}

#[actix::test]
async fn metadata_and_events_reach_other_nodes_and_garbage_metadata_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for c in configs(3, dir.path()) {
        nodes.push(start(c).await.unwrap());
    }
    let h1 = nodes[0].handle();
    let h2 = nodes[1].handle();
    let mut events = h2.subscribe_gossip();
    let mut shards = BTreeMap::new();
    shards.insert("shards".to_owned(), "0,7,9".to_owned());
    shards.insert("load".to_owned(), "0.25".to_owned());
    h1.set_app_metadata(shards.clone()).await.unwrap();
    // Node 2 hears it: as an event and in its view.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = actix::clock::timeout(left, events.recv())
            .await
            .expect("no metadata event within 5 s")
            .unwrap();
        if let Event::MetadataChanged(m) | Event::Joined(m) | Event::Alive(m) = &event {
            if m.id == NodeId::new(1) && m.metadata.entries == shards {
                break;
            }
        }
    }
    let view = h2.gossip_members();
    let m1 = view
        .members
        .iter()
        .find(|m| m.id == NodeId::new(1))
        .unwrap();
    assert_eq!(m1.metadata, shards);
    assert_eq!(m1.metadata_version, 1);
    assert_eq!(m1.addr, nodes[0].transport_addr().to_string());
    // Garbage is refused and nothing changes, here or there.
    let mut garbage = BTreeMap::new();
    garbage.insert(String::new(), "empty key".to_owned());
    assert!(h1.set_app_metadata(garbage).await.is_err());
    let too_big: BTreeMap<String, String> =
        (0..100).map(|i| (format!("k{i}"), "v".into())).collect();
    let e = h1.set_app_metadata(too_big).await.unwrap_err().to_string();
    assert!(e.contains("entries"), "{e}");
    let own = h1.gossip_members();
    assert_eq!(own.members[0].metadata, shards);
    assert_eq!(own.members[0].metadata_version, 1);
    actix::clock::sleep(Duration::from_millis(500)).await;
    let m1 = h2
        .gossip_members()
        .members
        .into_iter()
        .find(|m| m.id == NodeId::new(1))
        .unwrap();
    assert_eq!((m1.metadata, m1.metadata_version), (shards, 1));
    for n in nodes {
        n.shutdown().await;
    }
}

/// A raw transport endpoint posing as member `id` at its configured address `addr` (the
/// cluster has no secret, so the transport cannot tell it from the real one), to send frames a
/// well-behaved node never would.
async fn intruder(
    cluster: &str,
    id: NodeId,
    addr: SocketAddr,
) -> (Transport<WireMessage>, SocketAddr) {
    let (tx, mut rx) = conclave_transport::inbound(1024);
    let cfg = TransportConfig::new(id, cluster.to_owned(), addr);
    let (t, addr) = Transport::bind(cfg, tx).await.unwrap();
    // Drain whatever the node answers.
    actix::spawn(async move { while rx.recv().await.is_some() {} });
    (t, addr)
}

fn frame(from: NodeId, from_addr: SocketAddr, updates: Vec<Update>) -> WireMessage {
    WireMessage::Swim(Message {
        from,
        from_addr: from_addr.to_string(),
        from_incarnation: 0,
        to: NodeId::new(1),
        body: Body::Gossip,
        updates,
    })
}

fn rumor(id: NodeId, addr: SocketAddr, incarnation: u64, state: MemberState, by: NodeId) -> Update {
    Update {
        id,
        addr: addr.to_string(),
        http: "127.0.0.1:1".into(),
        incarnation,
        state,
        metadata: Metadata::default(),
        by,
    }
}

#[actix::test]
async fn bad_input_from_a_peer_leaves_the_node_view_correct() {
    let dir = tempfile::tempdir().unwrap();
    // Three configured members; the third is played by the intruder (the transport admits
    // configured members only, so a node outside the configuration is refused outright).
    let mut cfgs = configs(3, dir.path());
    let cluster = cfgs[0].cluster.id.clone();
    let addr1 = cfgs[0].node.listen;
    let addr2 = cfgs[1].node.listen;
    let addr3 = cfgs[2].node.listen;
    cfgs.truncate(2);
    let mut nodes = Vec::new();
    for c in cfgs {
        nodes.push(start(c).await.unwrap());
    }
    let h1 = nodes[0].handle();
    wait_for("node 1 sees node 2 alive", Duration::from_secs(5), || {
        state(&h1.gossip_members(), NodeId::new(2)).is_some_and(|(s, _)| s == "alive")
    })
    .await;
    let (evil, evil_addr) = intruder(&cluster, NodeId::new(3), addr3).await;
    let link = evil.peer(NodeId::new(1), addr1);
    let inc0 = h1.gossip_members().incarnation;

    // 1. A frame claiming to come from node 2 over node 3's connection: dropped before the
    //    core sees it (the transport names the sender 3).
    link.send(frame(
        NodeId::new(2),
        addr2,
        vec![rumor(
            NodeId::new(1),
            addr1,
            inc0,
            MemberState::Dead,
            NodeId::new(2),
        )],
    ))
    .await
    .unwrap();
    actix::clock::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h1.gossip_members().incarnation,
        inc0,
        "forged sender reached the core"
    );

    // 2. A forged "you are dead" at the current incarnation: refuted, own view alive.
    link.send(frame(
        NodeId::new(3),
        evil_addr,
        vec![rumor(
            NodeId::new(1),
            addr1,
            inc0,
            MemberState::Dead,
            NodeId::new(3),
        )],
    ))
    .await
    .unwrap();
    wait_for("refutation", Duration::from_secs(3), || {
        h1.gossip_members().incarnation == inc0 + 1
    })
    .await;
    let view = h1.gossip_members();
    assert_eq!(view.members[0].id, NodeId::new(1));
    assert_eq!(view.members[0].state, "alive");
    // Node 2 learns the refutation and keeps node 1 alive at the new incarnation.
    let h2 = nodes[1].handle();
    wait_for(
        "node 2 hears the refutation",
        Duration::from_secs(3),
        || state(&h2.gossip_members(), NodeId::new(1)) == Some(("alive".into(), inc0 + 1)),
    )
    .await;

    // 3. A rumor about an incarnation node 1 never had (suspect at 50): not adopted, outbid.
    link.send(frame(
        NodeId::new(3),
        evil_addr,
        vec![rumor(
            NodeId::new(1),
            addr1,
            50,
            MemberState::Suspect,
            NodeId::new(3),
        )],
    ))
    .await
    .unwrap();
    wait_for("outbid", Duration::from_secs(3), || {
        h1.gossip_members().incarnation == 51
    })
    .await;
    assert_eq!(h1.gossip_members().members[0].state, "alive");

    // 4. Garbage metadata about node 2 (an empty key, too many bytes): rejected and counted,
    //    node 2's record untouched.
    let rejected = h1.gossip_members().stats.rejected_updates;
    let before = state(&h1.gossip_members(), NodeId::new(2)).unwrap();
    let mut empty_key = rumor(
        NodeId::new(2),
        addr2,
        before.1 + 5,
        MemberState::Alive,
        NodeId::new(2),
    );
    empty_key.metadata.entries.insert(String::new(), "x".into());
    let mut huge = rumor(
        NodeId::new(2),
        addr2,
        before.1 + 5,
        MemberState::Alive,
        NodeId::new(2),
    );
    huge.metadata
        .entries
        .insert("blob".into(), "x".repeat(5000));
    link.send(frame(NodeId::new(3), evil_addr, vec![empty_key, huge]))
        .await
        .unwrap();
    wait_for("garbage counted", Duration::from_secs(3), || {
        h1.gossip_members().stats.rejected_updates >= rejected + 2
    })
    .await;
    let m2 = h1
        .gossip_members()
        .members
        .into_iter()
        .find(|m| m.id == NodeId::new(2))
        .unwrap();
    assert!(m2.metadata.is_empty());
    assert!(m2.incarnation < before.1 + 5, "garbage rumor adopted");
    // The node's incarnation was persisted at its latest value.
    let persisted =
        std::fs::read_to_string(dir.path().join("n1").join("gossip.incarnation")).unwrap();
    assert_eq!(persisted, "51\n");
    evil.shutdown();
    for n in nodes {
        n.shutdown().await;
    }
}

#[actix::test]
async fn a_panicking_gossip_actor_restarts_with_a_higher_incarnation() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for c in configs(2, dir.path()) {
        nodes.push(start(c).await.unwrap());
    }
    let (h1, h2) = (nodes[0].handle(), nodes[1].handle());
    wait_for("node 2 sees node 1", Duration::from_secs(5), || {
        state(&h2.gossip_members(), NodeId::new(1)).is_some_and(|(s, _)| s == "alive")
    })
    .await;
    let inc = h1.gossip_members().incarnation;
    assert!(h1.inject_gossip_panic().await);
    wait_for(
        "restarted instance announced",
        Duration::from_secs(5),
        || state(&h2.gossip_members(), NodeId::new(1)) == Some(("alive".into(), inc + 1)),
    )
    .await;
    assert_eq!(h1.gossip_members().incarnation, inc + 1);
    for n in nodes {
        n.shutdown().await;
    }
}

#[actix::test]
async fn a_corrupt_persisted_incarnation_refuses_to_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = configs(1, dir.path()).remove(0);
    std::fs::create_dir_all(&cfg.node.data_dir).unwrap();
    let path = cfg.node.data_dir.join("gossip.incarnation");
    std::fs::write(&path, "not a number\n").unwrap();
    let e = match start(cfg.clone()).await {
        Ok(_) => panic!("started with a corrupt incarnation file"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("gossip.incarnation") && e.contains("corrupt"),
        "{e}"
    );
    // Repaired, the node starts one above the stored value.
    std::fs::write(&path, "41\n").unwrap();
    let node = start(cfg).await.unwrap();
    assert_eq!(node.handle().gossip_members().incarnation, 42);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "42\n");
    node.shutdown().await;
}
