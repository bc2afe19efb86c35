//! The README's tour, automated: `conclave dev` starts three real node processes; the leader is
//! killed with SIGKILL; a surviving node serves writes again under a new leader; the killed
//! node is restarted with `conclave node` and catches up; every acknowledged write is readable
//! from every node.
//!
//! One round by default. `CONCLAVE_FAILOVER_RUNS=10` repeats it and prints the unavailability
//! window (SIGKILL to the first acknowledged write) as min/median/max. That is a measurement,
//! reported, not asserted: timing targets are not checked by tests.

#![allow(clippy::unwrap_used)]

#[path = "common/ports.rs"]
mod ports;

use conclave::client::Client;
use conclave_core::ids::NodeId;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Stops a child on drop: SIGTERM (so `dev` stops its own children), then SIGKILL.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.0);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node(dir: &Path, id: u64) -> Guard {
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("logs").join(format!("n{id}.log")))
        .unwrap();
    Guard(
        Command::new(env!("CARGO_BIN_EXE_conclave"))
            .arg("node")
            .arg("--config")
            .arg(dir.join(format!("n{id}.toml")))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// The pid of `dev`'s child running node `id` (from `dev`'s banner).
fn dev_pid(banner: &str, id: u64) -> Option<i32> {
    banner.lines().find_map(|l| {
        let rest = l.trim().strip_prefix(&format!("node {id}  pid "))?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

async fn leader(clients: &[Client]) -> Option<NodeId> {
    for c in clients {
        if let Ok(s) = c.status().await {
            if s.leader_id.is_some() && s.role == "leader" {
                return Some(s.node_id);
            }
        }
    }
    None
}

/// Bad input against a real node: JSON 4xx, nothing applied, the node still serves.
async fn bad_input_is_refused_and_the_node_keeps_serving(endpoint: &str) {
    let http = awc::Client::default();
    let cases: [(awc::ClientRequest, &[u8], u16, &str); 4] = [
        (
            http.post(format!("{endpoint}/v1/kv/k/cas")),
            b"{not json",
            400,
            "invalid_json",
        ),
        (
            http.get(format!("{endpoint}/v1/kv/%FF")),
            b"",
            400,
            "invalid_key",
        ),
        (
            http.get(format!("{endpoint}/v1/kv/k?consistency=eventual")),
            b"",
            400,
            "invalid_consistency",
        ),
        (
            http.post(format!("{endpoint}/v1/kv/k/cas")),
            b"",
            400,
            "missing_body",
        ),
    ];
    for (req, body, status, code) in cases {
        let mut resp = req.send_body(body.to_vec()).await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{code}");
        let v: serde_json::Value = serde_json::from_slice(&resp.body().await.unwrap()).unwrap();
        assert_eq!(v["error"]["code"], code, "{v}");
    }
    let c = Client::new(endpoint).unwrap();
    assert_eq!(c.get(b"k", None).await.unwrap(), None);
    c.put(b"k", b"still serving".to_vec(), None).await.unwrap();
    assert_eq!(
        c.get(b"k", None).await.unwrap().as_deref(),
        Some(&b"still serving"[..])
    );
}

/// Waits until `client`'s node has applied `(key, value)` (stale reads: its own state).
async fn caught_up(client: &Client, (key, value): &(String, String)) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = client
            .get(key.as_bytes(), Some(conclave::config::ReadLevel::Stale))
            .await;
        if matches!(got, Ok(Some(ref x)) if x == value.as_bytes()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not catch up to {key}",
            client.endpoint()
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_dev_cluster_survives_the_loss_of_its_leader() {
    let runs: usize = std::env::var("CONCLAVE_FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let dir = tempfile::tempdir().unwrap();
    // Every port `dev` derives from the base (base+1..=base+3, base+101..=base+103) free and
    // below the ephemeral range, so the killed node's restart finds its ports again.
    let base = ports::free_base(103);
    let banner_path = dir.path().join("dev.out");
    let dev = Guard(
        Command::new(env!("CARGO_BIN_EXE_conclave"))
            .args(["dev", "--nodes", "3", "--base-port", &base.to_string()])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::fs::File::create(&banner_path).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut restarted: Vec<Guard> = Vec::new();
    let endpoints: Vec<String> = (1..=3)
        .map(|i| format!("http://127.0.0.1:{}", base + 100 + i))
        .collect();
    let windows = actix_web::rt::System::new().block_on(async {
        let clients: Vec<Client> = endpoints
            .iter()
            .map(|e| Client::with_timeout(e, Duration::from_secs(2)).unwrap())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut banner = String::new();
        while dev_pid(&banner, 3).is_none() || !banner.contains("leader: node") {
            assert!(Instant::now() < deadline, "dev printed no banner: {banner}");
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
            banner = std::fs::read_to_string(&banner_path).unwrap();
        }
        bad_input_is_refused_and_the_node_keeps_serving(&endpoints[0]).await;
        let mut acknowledged: Vec<(String, String)> = Vec::new();
        let mut windows = Vec::new();
        for run in 0..runs {
            let deadline = Instant::now() + Duration::from_secs(30);
            let old = loop {
                if let Some(l) = leader(&clients).await {
                    break l;
                }
                assert!(Instant::now() < deadline, "no leader before run {run}");
                actix_web::rt::time::sleep(Duration::from_millis(50)).await;
            };
            let via = &clients[if old == NodeId::new(1) { 1 } else { 0 }];
            for k in 0..20 {
                let (key, value) = (format!("r{run}-k{k}"), format!("v{k}"));
                via.put(key.as_bytes(), value.clone().into_bytes(), None)
                    .await
                    .unwrap();
                acknowledged.push((key, value));
            }
            // The leader is either one of dev's children or a node this test restarted.
            let restarted_pid = restarted.iter().find_map(|g| {
                let cmdline = std::fs::read(format!("/proc/{}/cmdline", g.0.id())).ok()?;
                String::from_utf8_lossy(&cmdline)
                    .contains(&format!("n{old}.toml"))
                    .then(|| i32::try_from(g.0.id()).unwrap())
            });
            let pid = restarted_pid
                .or_else(|| dev_pid(&banner, old.get()))
                .unwrap();
            let pid = rustix::process::Pid::from_raw(pid).unwrap();
            rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
            let killed_at = Instant::now();
            let key = format!("after-{run}");
            loop {
                if via.put(key.as_bytes(), b"ok".to_vec(), None).await.is_ok() {
                    break;
                }
                assert!(
                    killed_at.elapsed() < Duration::from_secs(30),
                    "no write succeeded within 30 s of killing leader {old}"
                );
                actix_web::rt::time::sleep(Duration::from_millis(5)).await;
            }
            windows.push(killed_at.elapsed());
            acknowledged.push((key, "ok".to_owned()));
            let new = leader(&clients).await;
            assert_ne!(new, Some(old), "the killed node cannot lead");

            // Restart the killed node and wait until it has applied everything.
            restarted.retain_mut(|g| !matches!(g.0.try_wait(), Ok(Some(_))));
            restarted.push(node(dir.path(), old.get()));
            let back = &clients[usize::try_from(old.get() - 1).unwrap()];
            caught_up(back, acknowledged.last().unwrap()).await;
        }
        // Every acknowledged write, from every node, with the right value (entries apply in
        // order, so a node that has the last one has applied all the others).
        for c in &clients {
            caught_up(c, acknowledged.last().unwrap()).await;
            for (k, v) in &acknowledged {
                let got = c
                    .get(k.as_bytes(), Some(conclave::config::ReadLevel::Stale))
                    .await
                    .unwrap();
                assert_eq!(
                    got.as_deref(),
                    Some(v.as_bytes()),
                    "{k} at {}",
                    c.endpoint()
                );
            }
        }
        windows
    });
    let mut ms: Vec<f64> = windows.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    let median = if n % 2 == 1 {
        ms[n / 2]
    } else {
        (ms[n / 2 - 1] + ms[n / 2]) / 2.0
    };
    println!(
        "unavailability after SIGKILL of the leader over {n} runs: min {:.0} ms, median {median:.0} ms, max {:.0} ms (all: {ms:.0?})",
        ms[0],
        ms[n - 1]
    );
    drop(restarted);
    drop(dev);
}
