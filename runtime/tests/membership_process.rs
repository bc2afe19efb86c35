//! Membership changes on real `conclave node` processes, driven by the `conclave member` CLI
//! (issue 14 point 5):
//!
//! - seed 001: three nodes take writes; nodes 4 and 5 start empty (`conclave init --join`), are
//!   added as learners, catch up and are promoted; two original nodes, one of them the leader,
//!   are killed with SIGKILL and writes still succeed; the dead are removed and the cluster of
//!   the survivor, 4 and 5 holds every acknowledged write.
//! - replace under load: a live voter is swapped for a new node while clients write; no write is
//!   refused except with a retryable 503, and every acknowledged write survives.
//!
//! `CONCLAVE_SEED001_WRITES` sets the number of writes before the new nodes join (default 500;
//! the full scenario is 10,000).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Cluster;
use conclave::client::{Client, ClientError};
use conclave::config::ReadLevel;
use conclave_core::ids::NodeId;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

async fn conclave(args: Vec<String>) -> Output {
    common::run_cli(env!("CARGO_BIN_EXE_conclave").to_owned(), args).await
}

fn text(o: &Output) -> String {
    common::output_text(o)
}

/// A node started empty with `conclave init --join`, as a child process.
struct Joiner {
    id: u64,
    listen: SocketAddr,
    http: SocketAddr,
    config: PathBuf,
    child: Option<Child>,
}

impl Joiner {
    /// Writes the node's config with `conclave init --join` (seeds: the cluster's transport
    /// addresses) and starts it.
    async fn start(dir: &Path, id: u64, seeds: &[SocketAddr]) -> Joiner {
        let jdir = dir.join(format!("join{id}"));
        let listen = common::free_addr();
        let http = common::free_addr();
        let seeds: Vec<String> = seeds.iter().map(SocketAddr::to_string).collect();
        let out = conclave(vec![
            "init".into(),
            "--join".into(),
            "--id".into(),
            id.to_string(),
            "--dir".into(),
            jdir.display().to_string(),
            "--listen".into(),
            listen.to_string(),
            "--http".into(),
            http.to_string(),
            "--seeds".into(),
            seeds.join(","),
            // The cluster's shared settings (cluster id, secret, timing) from a member.
            "--from".into(),
            dir.join("n1.toml").display().to_string(),
        ])
        .await;
        assert!(out.status.success(), "init --join: {}", text(&out));
        let config = std::fs::read_dir(&jdir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "toml"))
            .unwrap_or_else(|| panic!("init --join wrote no .toml in {}", jdir.display()));
        let mut j = Joiner {
            id,
            listen,
            http,
            config,
            child: None,
        };
        j.spawn(dir);
        j
    }

    fn spawn(&mut self, dir: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("n{}.log", self.id)))
            .unwrap();
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_conclave"))
                .arg("node")
                .arg("--config")
                .arg(&self.config)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn joining node"),
        );
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.http)
    }
}

impl Drop for Joiner {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `conclave member …` against `endpoint`; panics with the output unless it succeeds.
async fn member(endpoint: &str, args: &[String]) -> String {
    let mut all = vec!["member".to_owned()];
    all.extend(args.iter().cloned());
    all.extend(["--endpoint".to_owned(), endpoint.to_owned()]);
    let out = conclave(all.clone()).await;
    assert!(out.status.success(), "conclave {all:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `key -> value` through `endpoints` (round robin), retrying only retryable 503s and
/// unreachable nodes (a killed node). Any other error fails the test.
async fn write(endpoints: &[String], key: &str, value: &str, deadline: Instant) {
    let mut attempt = 0usize;
    loop {
        let ep = &endpoints[attempt % endpoints.len()];
        attempt += 1;
        let c = Client::with_timeout(ep, Duration::from_secs(5)).unwrap();
        match c.put(key.as_bytes(), value.as_bytes().to_vec(), None).await {
            Ok(_) => return,
            Err(ClientError::Api { status: 503, .. }) | Err(ClientError::Unreachable { .. })
                if Instant::now() < deadline =>
            {
                actix::clock::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("write {key} through {ep}: {e}"),
        }
    }
}

/// Waits until the node at `endpoint` has applied every write in `acked` (stale reads: its own
/// state), then checks each value.
async fn holds_every_write(endpoint: &str, acked: &BTreeMap<String, String>) {
    let c = Client::with_timeout(endpoint, Duration::from_secs(5)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (k, v) in acked {
        loop {
            let got = c.get(k.as_bytes(), Some(ReadLevel::Stale)).await;
            match got {
                Ok(Some(got)) => {
                    assert_eq!(got, v.as_bytes(), "{endpoint} key {k}");
                    break;
                }
                _ if Instant::now() < deadline => {
                    actix::clock::sleep(Duration::from_millis(50)).await
                }
                other => panic!("{endpoint} key {k}: {other:?}"),
            }
        }
    }
}

async fn voters(endpoint: &str) -> Vec<NodeId> {
    let c = Client::with_timeout(endpoint, Duration::from_secs(5)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match c.cluster_config().await {
            Ok(cfg) if !cfg.change_pending => {
                return cfg.voters.iter().map(|m| m.id).collect();
            }
            _ if Instant::now() < deadline => actix::clock::sleep(Duration::from_millis(50)).await,
            other => panic!("config from {endpoint}: {other:?}"),
        }
    }
}

fn writes_before_join() -> usize {
    std::env::var("CONCLAVE_SEED001_WRITES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500)
}

/// Writes `n` keys `prefix{i}` with `clients` concurrent writers through `endpoints`.
async fn load(
    endpoints: &[String],
    prefix: &str,
    n: usize,
    clients: usize,
    acked: &Rc<RefCell<BTreeMap<String, String>>>,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut tasks = Vec::new();
    for w in 0..clients {
        let endpoints = endpoints.to_vec();
        let prefix = prefix.to_owned();
        let acked = acked.clone();
        tasks.push(actix_web::rt::spawn(async move {
            let mut i = w;
            while i < n {
                let (k, v) = (format!("{prefix}{i}"), format!("v{i}"));
                write(&endpoints, &k, &v, deadline).await;
                acked.borrow_mut().insert(k, v);
                i += clients;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[actix_web::test]
async fn seed_001_grow_to_five_lose_two_shrink_to_three() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path(), 3);
    let leader = c.leader(Duration::from_secs(20)).await;
    let originals: Vec<String> = (0..3).map(|i| c.endpoint(i)).collect();
    let acked = Rc::new(RefCell::new(BTreeMap::new()));

    let n = writes_before_join();
    let t = Instant::now();
    load(&originals, "pre", n, 16, &acked).await;
    eprintln!("{n} writes in {:?}", t.elapsed());

    // Nodes 4 and 5 start empty and join through the seeds; added and promoted through a
    // follower (the CLI's requests are forwarded to the leader).
    let seeds: Vec<SocketAddr> = c.configs.iter().map(|cfg| cfg.node.listen).collect();
    let follower = (leader + 1) % 3;
    let mut joiners = Vec::new();
    for id in [4, 5] {
        joiners.push(Joiner::start(dir.path(), id, &seeds).await);
    }
    for j in &joiners {
        let t = Instant::now();
        member(
            &c.endpoint(follower),
            &[
                "add".into(),
                j.id.to_string(),
                "--addr".into(),
                j.listen.to_string(),
                "--http".into(),
                j.http.to_string(),
                "--wait".into(),
                "--timeout-s".into(),
                "120".into(),
            ],
        )
        .await;
        eprintln!("node {} added and caught up in {:?}", j.id, t.elapsed());
        member(&c.endpoint(follower), &["promote".into(), j.id.to_string()]).await;
    }
    assert_eq!(
        voters(&c.endpoint(leader)).await,
        vec![
            NodeId::new(1),
            NodeId::new(2),
            NodeId::new(3),
            NodeId::new(4),
            NodeId::new(5)
        ]
    );
    let listed = member(&c.endpoint(follower), &["list".into()]).await;
    assert!(listed.contains("   5  voter"), "{listed}");

    // Kill -9 the leader and one other original node: 3 of 5 voters remain, writes go on.
    let other = (leader + 2) % 3;
    let survivor = 3 - leader - other;
    let dead: Vec<NodeId> = [leader, other]
        .iter()
        .map(|&i| c.configs[i].node.id)
        .collect();
    c.kill9(leader);
    c.kill9(other);
    let live: Vec<String> = std::iter::once(c.endpoint(survivor))
        .chain(joiners.iter().map(Joiner::endpoint))
        .collect();
    load(&live, "after-kill", 200, 8, &acked).await;

    // Remove the dead: a cluster of 3 voters again.
    for id in &dead {
        member(&live[0], &["remove".into(), id.to_string()]).await;
    }
    let survivor_id = c.configs[survivor].node.id;
    let mut expected = vec![survivor_id, NodeId::new(4), NodeId::new(5)];
    expected.sort_unstable();
    assert_eq!(voters(&live[1]).await, expected);
    load(&live, "after-remove", 100, 8, &acked).await;

    // Every acknowledged write, on each of the three.
    let acked = acked.borrow().clone();
    assert_eq!(acked.len(), n + 300);
    for ep in &live {
        holds_every_write(ep, &acked).await;
    }
}

#[actix_web::test]
async fn replace_a_live_voter_under_write_load() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::new(dir.path(), 3);
    let leader = c.leader(Duration::from_secs(20)).await;
    let endpoints: Vec<String> = (0..3).map(|i| c.endpoint(i)).collect();
    let acked = Rc::new(RefCell::new(BTreeMap::new()));
    load(&endpoints, "pre", 300, 8, &acked).await;

    let seeds: Vec<SocketAddr> = c.configs.iter().map(|cfg| cfg.node.listen).collect();
    let j = Joiner::start(dir.path(), 4, &seeds).await;
    // The voter to replace: a follower, so the writers' endpoints other than it stay valid.
    let old = (leader + 1) % 3;
    let old_id = c.configs[old].node.id;
    let writers: Vec<String> = (0..3)
        .filter(|&i| i != old)
        .map(|i| c.endpoint(i))
        .collect();

    // Writers run during the whole replace; `write` fails the test on anything but a 503.
    let stop = Rc::new(RefCell::new(false));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (writers, acked, stop) = (writers.clone(), acked.clone(), stop.clone());
        tasks.push(actix_web::rt::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(180);
            let mut i = 0;
            while !*stop.borrow() {
                let (k, v) = (format!("load{w}-{i}"), format!("v{i}"));
                write(&writers, &k, &v, deadline).await;
                acked.borrow_mut().insert(k, v);
                i += 1;
            }
        }));
    }
    let t = Instant::now();
    let out = member(
        &c.endpoint(leader),
        &[
            "replace".into(),
            old_id.to_string(),
            "--id".into(),
            "4".into(),
            "--addr".into(),
            j.listen.to_string(),
            "--http".into(),
            j.http.to_string(),
            "--timeout-s".into(),
            "120".into(),
        ],
    )
    .await;
    eprintln!("replace took {:?}: {out}", t.elapsed());
    // Keep writing a little after the swap.
    actix::clock::sleep(Duration::from_millis(500)).await;
    *stop.borrow_mut() = true;
    for t in tasks {
        t.await.unwrap();
    }
    let mut expected: Vec<NodeId> = (0..3)
        .filter(|&i| i != old)
        .map(|i| c.configs[i].node.id)
        .chain([NodeId::new(4)])
        .collect();
    expected.sort_unstable();
    assert_eq!(voters(&c.endpoint(leader)).await, expected);
    let acked = acked.borrow().clone();
    eprintln!("{} acknowledged writes", acked.len());
    for ep in writers.iter().chain([&j.endpoint()]) {
        holds_every_write(ep, &acked).await;
    }
}

/// The status of the node at `endpoint`, retried while it is unreachable (restarting).
async fn status_of(endpoint: &str) -> Option<conclave::node::ClusterStatus> {
    Client::with_timeout(endpoint, Duration::from_secs(3))
        .unwrap()
        .status()
        .await
        .ok()
}

/// Issue 14: a member that was down while a node was added, promoted and made leader (and an
/// old member it knows was removed) accepts that leader when it comes back and catches up from
/// it — here through a snapshot, since the new leader compacted its log past where the lagging
/// node's ends. Real processes with a cluster secret. Before, the lagging node refused the new
/// leader's connection (no membership it had named it) and never caught up.
#[actix_web::test]
async fn a_lagging_member_catches_up_from_a_leader_added_after_its_log_ends() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new_with(dir.path(), 3, |cfg| {
        cfg.cluster.secret = Some(conclave::config::ClusterSecretString(
            "lagging-member-test-secret-0123456789".to_owned(),
        ));
        cfg.snapshot.threshold_entries = 200;
        cfg.snapshot.keep_entries = 20;
    });
    let leader = c.leader(Duration::from_secs(20)).await;
    let endpoints: Vec<String> = (0..3).map(|i| c.endpoint(i)).collect();
    let acked = Rc::new(RefCell::new(BTreeMap::new()));
    load(&endpoints, "pre", 100, 4, &acked).await;

    // The lagging node: a follower, stopped (SIGKILL) before anything below happens.
    let lagger = (leader + 1) % 3;
    let other = 3 - leader - lagger;
    let lagger_id = c.configs[lagger].node.id;
    let old_leader_id = c.configs[leader].node.id;
    let lagger_last = status_of(&endpoints[lagger]).await.unwrap().commit_index;
    c.kill9(lagger);

    // Node 4 joins, catches up, is promoted and made leader; the old leader is removed.
    let seeds: Vec<SocketAddr> = c.configs.iter().map(|cfg| cfg.node.listen).collect();
    let j = Joiner::start(dir.path(), 4, &seeds).await;
    let via = endpoints[other].clone();
    member(
        &via,
        &[
            "add".into(),
            "4".into(),
            "--addr".into(),
            j.listen.to_string(),
            "--http".into(),
            j.http.to_string(),
            "--wait".into(),
            "--timeout-s".into(),
            "120".into(),
        ],
    )
    .await;
    member(&via, &["promote".into(), "4".into()]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = Client::with_timeout(&via, Duration::from_secs(3))
            .unwrap()
            .transfer_leader(NodeId::new(4))
            .await;
        actix::clock::sleep(Duration::from_millis(300)).await;
        if status_of(&j.endpoint())
            .await
            .is_some_and(|s| s.role == "leader")
        {
            break;
        }
        assert!(Instant::now() < deadline, "node 4 did not take leadership");
    }
    member(&j.endpoint(), &["remove".into(), old_leader_id.to_string()]).await;
    // The removed node is retired (its process stopped): nothing it queued for the lagging
    // node while it led can reach it later.
    c.kill9(leader);
    let mut expected = vec![c.configs[other].node.id, lagger_id, NodeId::new(4)];
    expected.sort_unstable();
    assert_eq!(voters(&j.endpoint()).await, expected);
    // Enough writes that node 4 snapshots and compacts past the lagging node's last entry.
    let live = vec![j.endpoint(), endpoints[other].clone()];
    load(&live, "post", 600, 8, &acked).await;
    // The snapshot is taken in the background once the threshold is crossed: wait for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let target = loop {
        let target = status_of(&j.endpoint()).await.unwrap();
        assert_eq!(target.role, "leader");
        let first = target.groups[0].snapshot_index;
        if first > lagger_last {
            break target;
        }
        assert!(
            Instant::now() < deadline,
            "node 4's snapshot {first} is not past the lagging node's log end {lagger_last}"
        );
        actix::clock::sleep(Duration::from_millis(100)).await;
    };

    // The lagging node comes back: it knows neither node 4 nor that node {old_leader_id} left.
    let t = Instant::now();
    c.restart(lagger);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = status_of(&endpoints[lagger]).await {
            if s.commit_index >= target.commit_index && s.leader_id == Some(NodeId::new(4)) {
                eprintln!(
                    "node {lagger_id} caught up to {} (leader's {}) in {:?}, snapshot index {}",
                    s.commit_index,
                    target.commit_index,
                    t.elapsed(),
                    s.groups[0].snapshot_index
                );
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {lagger_id} did not catch up from node 4; logs:\n{}",
            c.logs()
        );
        actix::clock::sleep(Duration::from_millis(100)).await;
    }
    // Through a snapshot from node 4 (its log no longer holds what the lagging node lacks).
    let log = std::fs::read_to_string(dir.path().join(format!("n{lagger_id}.log"))).unwrap();
    assert!(
        log.contains("installing a snapshot received from the leader"),
        "node {lagger_id} caught up without a snapshot:\n{log}"
    );
    let acked = acked.borrow().clone();
    assert_eq!(acked.len(), 700);
    holds_every_write(&endpoints[lagger], &acked).await;
    // And it is a member like any other: the leader sees it caught up.
    let cfg = Client::with_timeout(&j.endpoint(), Duration::from_secs(3))
        .unwrap()
        .cluster_config()
        .await
        .unwrap();
    let me = cfg.voters.iter().find(|m| m.id == lagger_id).unwrap();
    assert!(me.lag.is_some_and(|l| l < 100), "{me:?}");
}

/// Runs `conclave` with the given arguments and `CONCLAVE_TOKEN` = `token`.
async fn conclave_with_token(args: Vec<String>, token: String) -> Output {
    actix_web::rt::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_conclave"))
            .args(&args)
            .env_remove("CONCLAVE_ENDPOINT")
            .env_remove("CONCLAVE_CA")
            .env("CONCLAVE_TOKEN", token)
            .output()
            .expect("run conclave")
    })
    .await
    .unwrap()
}

/// Issue 14 point 5: `conclave member add/promote/drain/remove/list` on a cluster made by
/// `conclave init --secure` (mutual TLS between nodes, HTTPS, admin and client tokens), with a
/// joining node whose certificate `init --join --ca-key` issued. The client token is refused
/// with 403 for every change and may read the configuration.
#[actix_web::test]
async fn secure_cluster_membership_with_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let base = common::ports::free_base(110);
    let out = conclave(vec![
        "init".into(),
        "--nodes".into(),
        "3".into(),
        "--dir".into(),
        d.clone(),
        "--base-port".into(),
        base.to_string(),
        "--secure".into(),
    ])
    .await;
    assert!(out.status.success(), "init --secure: {}", text(&out));
    let ca = dir
        .path()
        .join("certs")
        .join("ca.crt")
        .display()
        .to_string();
    let read_token = |name: &str| {
        std::fs::read_to_string(dir.path().join("tokens").join(format!("{name}.token")))
            .unwrap()
            .trim()
            .to_owned()
    };
    let (admin, client_token) = (read_token("admin"), read_token("client"));
    let mut children = Vec::new();
    for i in 1..=3 {
        let mut j = Joiner {
            id: i,
            listen: format!("127.0.0.1:{}", base + i as u16).parse().unwrap(),
            http: format!("127.0.0.1:{}", base + 100 + i as u16)
                .parse()
                .unwrap(),
            config: dir.path().join(format!("n{i}.toml")),
            child: None,
        };
        j.spawn(dir.path());
        children.push(j);
    }
    let endpoint = |i: u16| format!("https://127.0.0.1:{}", base + 100 + i);
    let secure = |token: &str| conclave::client::ClientOptions {
        timeout: Duration::from_secs(3),
        token: Some(token.to_owned()),
        ca: Some(dir.path().join("certs").join("ca.crt")),
    };
    let member_as = |token: String, args: Vec<String>, ep: String| {
        let mut all = vec!["member".to_owned()];
        all.extend(args);
        all.extend(["--endpoint".into(), ep, "--ca".into(), ca.clone()]);
        conclave_with_token(all, token)
    };
    // A leader over mutual TLS.
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        let mut found = None;
        for i in 1..=3u16 {
            let c = Client::with_options(&endpoint(i), &secure(&admin)).unwrap();
            if let Ok(s) = c.status().await {
                found = found.or(s.leader_id);
            }
        }
        if let Some(l) = found {
            break l;
        }
        assert!(Instant::now() < deadline, "no leader over TLS");
        actix::clock::sleep(Duration::from_millis(200)).await;
    };
    let follower = (1..=3u16).find(|i| u64::from(*i) != leader.get()).unwrap();
    let via = endpoint(follower);
    let c = Client::with_options(&via, &secure(&admin)).unwrap();
    for i in 0..50 {
        c.put(format!("k{i}").as_bytes(), b"v".to_vec(), None)
            .await
            .unwrap();
    }

    // Node 4: config and certificate from `init --join --from n1.toml --ca-key`.
    let jdir = dir.path().join("join4");
    let (listen4, http4) = (common::free_addr(), common::free_addr());
    let out = conclave(vec![
        "init".into(),
        "--join".into(),
        "--id".into(),
        "4".into(),
        "--dir".into(),
        jdir.display().to_string(),
        "--listen".into(),
        listen4.to_string(),
        "--http".into(),
        http4.to_string(),
        "--seeds".into(),
        format!("127.0.0.1:{}", base + 1),
        "--from".into(),
        dir.path().join("n1.toml").display().to_string(),
        "--ca-key".into(),
        dir.path()
            .join("certs")
            .join("ca.key")
            .display()
            .to_string(),
    ])
    .await;
    assert!(out.status.success(), "init --join: {}", text(&out));
    let config4 = std::fs::read_dir(&jdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "toml"))
        .unwrap();
    let mut j = Joiner {
        id: 4,
        listen: listen4,
        http: http4,
        config: config4,
        child: None,
    };
    j.spawn(dir.path());

    let add = vec![
        "add".to_owned(),
        "4".into(),
        "--addr".into(),
        listen4.to_string(),
        "--http".into(),
        http4.to_string(),
        "--wait".into(),
        "--timeout-s".into(),
        "120".into(),
    ];
    // The client token changes nothing: 403 for add, promote, drain and remove.
    for args in [
        add.clone(),
        vec!["promote".into(), "4".into()],
        vec!["drain".into(), leader.to_string()],
        vec!["remove".into(), follower.to_string()],
    ] {
        let out = member_as(client_token.clone(), args.clone(), via.clone()).await;
        assert!(
            !out.status.success(),
            "{args:?} with the client token: {}",
            text(&out)
        );
        let said = text(&out);
        assert!(
            said.contains("403") && said.contains("forbidden"),
            "{args:?}: {said}"
        );
    }
    // The client token may read the configuration; it still has three voters.
    let out = member_as(client_token.clone(), vec!["list".into()], via.clone()).await;
    assert!(
        out.status.success(),
        "list with the client token: {}",
        text(&out)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("learner"));

    // The admin token: add (waits until caught up over TLS), promote, list.
    let out = member_as(admin.clone(), add, via.clone()).await;
    assert!(out.status.success(), "add: {}", text(&out));
    let out = member_as(
        admin.clone(),
        vec!["promote".into(), "4".into()],
        via.clone(),
    )
    .await;
    assert!(out.status.success(), "promote: {}", text(&out));
    let out = member_as(admin.clone(), vec!["list".into()], via.clone()).await;
    assert!(out.status.success(), "list: {}", text(&out));
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(listed.contains("   4  voter"), "{listed}");
    // Node 4 serves what it replicated over TLS.
    let c4 = Client::with_options(&format!("https://{http4}"), &secure(&client_token)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(v)) = c4.get(b"k49", Some(ReadLevel::Stale)).await {
            assert_eq!(v, b"v");
            break;
        }
        assert!(Instant::now() < deadline, "node 4 does not serve k49");
        actix::clock::sleep(Duration::from_millis(100)).await;
    }

    // Drain the leader (admin): leadership moves off it.
    let out = member_as(
        admin.clone(),
        vec!["drain".into(), leader.to_string()],
        via.clone(),
    )
    .await;
    assert!(out.status.success(), "drain: {}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = c.status().await {
            if s.leader_id.is_some_and(|l| l != leader) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "leadership stayed on the drained node"
        );
        actix::clock::sleep(Duration::from_millis(100)).await;
    }

    // Remove the drained node: three voters again, 4 among them, writes go on. The new
    // leader refuses changes (503 `leader_not_ready`, retryable) until it has committed an
    // entry of its term: retried as an operator would.
    let deadline = Instant::now() + Duration::from_secs(20);
    let out = loop {
        let out = member_as(
            admin.clone(),
            vec!["remove".into(), leader.to_string()],
            via.clone(),
        )
        .await;
        if out.status.success()
            || !text(&out).contains("leader_not_ready")
            || Instant::now() >= deadline
        {
            break out;
        }
        actix::clock::sleep(Duration::from_millis(200)).await;
    };
    assert!(out.status.success(), "remove: {}", text(&out));
    let out = member_as(
        admin.clone(),
        vec!["list".into(), "--json".into()],
        via.clone(),
    )
    .await;
    assert!(out.status.success(), "list --json: {}", text(&out));
    let cfg: conclave::node::ClusterConfig = serde_json::from_slice(&out.stdout).unwrap();
    let mut ids: Vec<NodeId> = cfg.voters.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    let mut expected: Vec<NodeId> = (1..=3)
        .map(NodeId::new)
        .filter(|i| *i != leader)
        .chain([NodeId::new(4)])
        .collect();
    expected.sort_unstable();
    assert_eq!(ids, expected);
    c.put(b"after-remove", b"1".to_vec(), None).await.unwrap();
    drop(children);
}
