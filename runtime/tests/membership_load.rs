//! Adding a member to a loaded cluster (issue 14 point 7): the time from `conclave member add
//! 4 … --wait` until node 4 is promotable, and the write throughput while it catches up
//! against the throughput before, in the same run (ratios and seconds are printed, never
//! asserted: the machine is shared and noisy).
//!
//! Three `conclave node` processes with the default configuration (automatic snapshots,
//! `max_send_rate_mb_s` 100, `chunk_bytes` 1 MiB, `install_rate_mb_s` 50; the first and last
//! can be set with `CONCLAVE_MEMBERSHIP_LOAD_SEND_MB_S` and `CONCLAVE_MEMBERSHIP_LOAD_INSTALL_MB_S`,
//! the log's pace to the learner, `[raft] learner_catch_up_mb_s` (20), with
//! `CONCLAVE_MEMBERSHIP_LOAD_CATCH_UP_MB_S`,
//! node 4 takes them from node 1's config). The state is preloaded with
//! `CONCLAVE_MEMBERSHIP_LOAD_MB` MiB of 64 KiB values (default 32; the issue's figure is 1024,
//! with a release build: `CONCLAVE_NODE_BIN=target/release/conclave`); a short warm-up and a
//! snapshot taken on the leader make sure its log no longer starts at index 1, so the new node
//! catches up through a streamed snapshot and then the log's tail, as it would on a cluster
//! that has run for a while. Node 4 starts empty from a `conclave init --join` config. 16
//! clients overwrite 4,096 keys of 1 KiB throughout (as fast as the cluster answers, or at an
//! offered rate over all of them with `CONCLAVE_MEMBERSHIP_LOAD_RATE` writes/s): a baseline of
//! `CONCLAVE_MEMBERSHIP_LOAD_S` seconds (default 3), then the real CLI's `conclave member add
//! 4 --addr … --http … --wait` (timed), then `conclave member promote 4` (retried while it is
//! refused with 409 `not_caught_up`), then another period as long as the baseline. A monitor
//! samples the leader's transfer metrics and node 4's status every 100 ms to time the
//! catch-up's phases: the transfer starting, the snapshot streamed, installed (node 4's state
//! machine restored), and the learner caught up.
//!
//! Asserted (whatever the machine's speed): the promotion succeeds and node 4 is a voter; no
//! write is refused except with a retryable 503; node 4, once it has applied the leader's
//! commit index, holds the last acknowledged value of every key the clients wrote and a sample
//! of the preloaded values, and so does the leader.
//!
//! ```text
//! cargo build --release -p conclave
//! CONCLAVE_MEMBERSHIP_LOAD_MB=1024 CONCLAVE_MEMBERSHIP_LOAD_S=20 \
//!   CONCLAVE_NODE_BIN=target/release/conclave \
//!   cargo test --release -p conclave --test membership_load -- --nocapture
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{big_value, env_opt_u64, env_u64, BIG};

use common::Cluster;
use conclave::client::{Client, ClientError};
use conclave::config::ReadLevel;
use conclave_core::ids::GroupId;
use conclave_core::ids::NodeId;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

const SMALL: usize = 1024;
const CLIENTS: u64 = 16;
/// Keys each client overwrites in turn.
const KEYS_PER_CLIENT: u64 = 256;
const NEW_ID: NodeId = NodeId::new(4);

/// The `conclave` binary: `CONCLAVE_NODE_BIN` (a release build for the 1 GiB run) or the one
/// cargo built for this test.
fn bin() -> String {
    common::node_bin()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

/// CPU time (user + system) process `pid` has used so far, in seconds (`None` once it is gone).
fn cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and
    // 13th, in clock ticks (100 per second on Linux).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// CPU seconds of every process of the run: the three voters, node 4 and this test (the
/// clients), in that order.
fn cpu_sample(pids: &[u32]) -> Vec<f64> {
    pids.iter().map(|p| cpu_s(*p).unwrap_or(0.0)).collect()
}

/// Bytes process `pid` has caused to be written to the device so far (`write_bytes` of
/// `/proc/{pid}/io`: WAL, state store, snapshot images), 0 once it is gone.
fn written(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

fn io_sample(pids: &[u32]) -> Vec<f64> {
    pids.iter().map(|p| written(*p)).collect()
}

/// Each process's device writes between two samples, in MB/s, e.g. `n1 12.3 n2 …`.
fn write_rates(names: &[String], a: &[f64], b: &[f64], secs: f64) -> String {
    names
        .iter()
        .zip(a.iter().zip(b))
        .map(|(n, (x, y))| format!("{n} {:.1}", (y - x) / secs.max(1e-3) / 1e6))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Each process's share of one core between two samples, e.g. `n1 42% n2 …`.
fn cpu_shares(names: &[String], a: &[f64], b: &[f64], secs: f64) -> String {
    names
        .iter()
        .zip(a.iter().zip(b))
        .map(|(n, (x, y))| format!("{n} {:.0}%", (y - x) / secs.max(1e-3) * 100.0))
        .collect::<Vec<_>>()
        .join(" ")
}

fn small_value(worker: u64, n: u64) -> Vec<u8> {
    let mut v = format!("{worker}:{n}:").into_bytes();
    v.resize(SMALL, b'a' + (n % 26) as u8);
    v
}

fn small_key(worker: u64, slot: u64) -> String {
    format!("w{worker:02}-{slot:03}")
}

async fn conclave(args: Vec<String>) -> Output {
    common::run_cli(bin(), args).await
}

fn text(o: &Output) -> String {
    common::output_text(o)
}

/// Node 4, started empty from a `conclave init --join` config.
struct Joiner {
    listen: SocketAddr,
    http: SocketAddr,
    child: Child,
}

impl Joiner {
    async fn start(dir: &Path, seeds: &[SocketAddr]) -> Joiner {
        let jdir = dir.join(format!("join{NEW_ID}"));
        let listen = common::free_addr();
        let http = common::free_addr();
        let seeds: Vec<String> = seeds.iter().map(SocketAddr::to_string).collect();
        let out = conclave(vec![
            "init".into(),
            "--join".into(),
            "--id".into(),
            NEW_ID.to_string(),
            "--dir".into(),
            jdir.display().to_string(),
            "--listen".into(),
            listen.to_string(),
            "--http".into(),
            http.to_string(),
            "--seeds".into(),
            seeds.join(","),
            "--from".into(),
            dir.join("n1.toml").display().to_string(),
        ])
        .await;
        assert!(out.status.success(), "init --join: {}", text(&out));
        let config: PathBuf = std::fs::read_dir(&jdir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "toml"))
            .unwrap_or_else(|| panic!("init --join wrote no .toml in {}", jdir.display()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("n{NEW_ID}.log")))
            .unwrap();
        let child = Command::new(bin())
            .arg("node")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the joining node");
        Joiner {
            listen,
            http,
            child,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.http)
    }
}

impl Drop for Joiner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of a metric's samples whose labels contain `label` at `endpoint`'s `/metrics`
/// (`None` when the node does not answer).
async fn metric(endpoint: &str, name: &str, label: &str) -> Option<f64> {
    let mut resp = awc::Client::default()
        .get(format!("{endpoint}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let body = resp.body().limit(16 << 20).await.ok()?;
    Some(
        String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                    && l.contains(label)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// Every voter's WAL sync totals (seconds, count), for the mean `fdatasync` time per phase.
async fn wal_syncs(endpoints: &[String]) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for ep in endpoints {
        let sum = metric(ep, "conclave_wal_sync_seconds_sum", "").await;
        let count = metric(ep, "conclave_wal_sync_seconds_count", "").await;
        out.push((sum.unwrap_or(0.0), count.unwrap_or(0.0)));
    }
    out
}

/// Mean sync time per voter between two [`wal_syncs`] samples, e.g. `1.2 ms (830 syncs)`.
fn sync_means(a: &[(f64, f64)], b: &[(f64, f64)]) -> String {
    a.iter()
        .zip(b)
        .map(|((s0, c0), (s1, c1))| {
            let n = c1 - c0;
            format!("{:.2} ms ({n:.0})", (s1 - s0) / n.max(1.0) * 1000.0)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the writers share: every acknowledged write's time, each key's last acknowledged
/// counter, and how many 503s they retried.
#[derive(Clone, Default)]
struct Writes {
    acks: Vec<Instant>,
    /// Each acknowledged write's latency, in the order of `acks` (with a fixed offered rate,
    /// measured from the moment the write was due, so a stall counts for every write it held
    /// back).
    latencies: Vec<Duration>,
    last: Vec<Vec<Option<u64>>>,
    retried_503: u64,
}

/// One client: overwrites its keys in turn through the leader (another original node after a
/// 503), retrying only retryable 503s. Anything else fails the test.
///
/// With `interval` (an offered rate), the client's n-th write is due at `start + n * interval`
/// and waits for that moment; a client that falls behind sends at once (one write in flight
/// per client, as without it).
async fn writer(
    endpoints: Vec<String>,
    worker: u64,
    writes: Rc<RefCell<Writes>>,
    stop: Rc<RefCell<bool>>,
    interval: Option<Duration>,
) {
    let clients: Vec<Client> = endpoints
        .iter()
        .map(|e| Client::with_timeout(e, Duration::from_secs(30)).unwrap())
        .collect();
    let mut at = 0usize;
    let mut n = 0u64;
    let start = Instant::now();
    while !*stop.borrow() {
        let due = match interval {
            Some(iv) => {
                let due = start + iv * u32::try_from(n).unwrap_or(u32::MAX);
                let now = Instant::now();
                if due > now {
                    actix::clock::sleep(due - now).await;
                }
                due
            }
            None => Instant::now(),
        };
        let slot = n % KEYS_PER_CLIENT;
        let key = small_key(worker, slot);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match clients[at]
                .put(key.as_bytes(), small_value(worker, n), None)
                .await
            {
                Ok(_) => break,
                Err(ClientError::Api { status: 503, .. }) if Instant::now() < deadline => {
                    writes.borrow_mut().retried_503 += 1;
                    at = (at + 1) % clients.len();
                    actix::clock::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!(
                    "worker {worker}: write {key} through {}: {e}",
                    endpoints[at]
                ),
            }
        }
        let mut w = writes.borrow_mut();
        let acked = Instant::now();
        w.acks.push(acked);
        w.latencies.push(acked - due);
        w.last[worker as usize][slot as usize] = Some(n);
        n += 1;
    }
}

/// When each phase of the catch-up was first seen (from the start of `member add`).
#[derive(Clone, Debug, Default)]
struct Phases {
    learner_added: Option<Duration>,
    stream_started: Option<Duration>,
    streamed: Option<Duration>,
    installed: Option<Duration>,
    caught_up: Option<Duration>,
    /// Snapshots the leader finished sending to node 4 (more than one: it fell behind the
    /// compaction point again while the first was streamed and installed).
    snapshots_sent: f64,
    bytes_sent: f64,
    max_lag: u64,
}

/// Samples the catch-up every 100 ms until `stop`.
async fn monitor(
    leader: String,
    new: String,
    started: Instant,
    phases: Rc<RefCell<Phases>>,
    stop: Rc<RefCell<bool>>,
) {
    let peer = format!("peer=\"{NEW_ID}\"");
    let lc = Client::with_timeout(&leader, Duration::from_secs(5)).unwrap();
    let nc = Client::with_timeout(&new, Duration::from_secs(5)).unwrap();
    while !*stop.borrow() {
        let t = started.elapsed();
        let bytes = metric(&leader, "conclave_snapshot_send_bytes_total", &peer).await;
        let sent = metric(&leader, "conclave_snapshot_sent_total", &peer).await;
        let installed = metric(&new, "conclave_snapshot_installed_total", "").await;
        let config = lc.cluster_config().await.ok();
        let applied = nc.status().await.ok().map(|s| s.applied_index);
        {
            let mut p = phases.borrow_mut();
            if let Some(b) = bytes {
                p.bytes_sent = p.bytes_sent.max(b);
                if b > 0.0 && p.stream_started.is_none() {
                    p.stream_started = Some(t);
                }
            }
            if let Some(s) = sent {
                p.snapshots_sent = p.snapshots_sent.max(s);
                if s >= 1.0 && p.streamed.is_none() {
                    p.streamed = Some(t);
                }
            }
            if p.installed.is_none()
                && (installed.is_some_and(|i| i >= 1.0) && applied.is_some_and(|a| a > 0))
            {
                p.installed = Some(t);
            }
            if let Some(c) = config {
                if let Some(l) = c.learners.iter().find(|m| m.id == NEW_ID) {
                    p.learner_added.get_or_insert(t);
                    p.max_lag = p.max_lag.max(l.lag.unwrap_or(0));
                    if l.caught_up == Some(true) && p.caught_up.is_none() {
                        p.caught_up = Some(t);
                    }
                } else if c.voters.iter().any(|m| m.id == NEW_ID) && p.caught_up.is_none() {
                    p.caught_up = Some(t);
                }
            }
        }
        actix::clock::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes acknowledged per second in `[from, to)`.
fn rate(acks: &[Instant], from: Instant, to: Instant) -> f64 {
    let n = acks.iter().filter(|&&t| t >= from && t < to).count();
    n as f64 / (to - from).as_secs_f64().max(1e-3)
}

/// p50 and p99 latency, in ms, of the writes acknowledged in `[from, to)`.
fn latency_ms(w: &Writes, from: Instant, to: Instant) -> String {
    let mut l: Vec<Duration> = w
        .acks
        .iter()
        .zip(&w.latencies)
        .filter(|(&t, _)| t >= from && t < to)
        .map(|(_, &d)| d)
        .collect();
    if l.is_empty() {
        return "-".to_owned();
    }
    l.sort_unstable();
    let at = |q: f64| l[((l.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    format!("p50 {:.1} / p99 {:.1} ms", at(0.5), at(0.99))
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
}

/// Waits until the node at `endpoint` has applied `index`.
async fn applied(endpoint: &str, index: u64, timeout: Duration) {
    let c = Client::with_timeout(endpoint, Duration::from_secs(5)).unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = c.status().await {
            if s.applied_index >= index {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{endpoint} did not apply {index} within {timeout:?}"
        );
        actix::clock::sleep(Duration::from_millis(50)).await;
    }
}

/// Every key's last acknowledged value (and a sample of the preload) at `endpoint`.
async fn holds(endpoint: &str, level: ReadLevel, last: &[Vec<Option<u64>>], big_keys: u64) {
    let mut tasks = Vec::new();
    for (worker, slots) in last.iter().enumerate() {
        let endpoint = endpoint.to_owned();
        let slots = slots.clone();
        tasks.push(actix::spawn(async move {
            let c = Client::with_timeout(&endpoint, Duration::from_secs(10)).unwrap();
            for (slot, n) in slots.iter().enumerate() {
                let Some(n) = n else { continue };
                let key = small_key(worker as u64, slot as u64);
                let got = c.get(key.as_bytes(), Some(level)).await.unwrap();
                assert_eq!(
                    got.as_deref(),
                    Some(small_value(worker as u64, *n).as_slice()),
                    "{endpoint} ({level:?}): key {key} lost its last acknowledged write ({n})"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let c = Client::with_timeout(endpoint, Duration::from_secs(30)).unwrap();
    for i in (0..big_keys).step_by((big_keys as usize / 64).max(1)) {
        let key = format!("big{i:07}");
        let got = c.get(key.as_bytes(), Some(level)).await.unwrap();
        assert!(
            got.as_deref() == Some(big_value(i).as_slice()),
            "{endpoint} ({level:?}): preloaded {key}: {:?} bytes",
            got.map(|g| g.len())
        );
    }
}

#[actix_web::test]
async fn add_a_member_to_a_loaded_cluster_under_write_load() {
    let mb = env_u64("CONCLAVE_MEMBERSHIP_LOAD_MB", 32);
    let period = Duration::from_secs(env_u64("CONCLAVE_MEMBERSHIP_LOAD_S", 3));
    let timeout_s = env_u64("CONCLAVE_MEMBERSHIP_LOAD_TIMEOUT_S", 600);
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var("CONCLAVE_MEMBERSHIP_LOAD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| tmp.path().to_owned());
    eprintln!("load average at start: {}", loadavg());
    // `CONCLAVE_MEMBERSHIP_LOAD_SEND_MB_S` overrides the voters' `[snapshot] max_send_rate_mb_s`,
    // `CONCLAVE_MEMBERSHIP_LOAD_INSTALL_MB_S` `[snapshot] install_rate_mb_s` and
    // `CONCLAVE_MEMBERSHIP_LOAD_CATCH_UP_MB_S` `[raft] learner_catch_up_mb_s` (the defaults when
    // unset), to compare settings in the same way; node 4's config is made `--from` node 1's,
    // so it gets them too.
    let send_rate = env_opt_u64("CONCLAVE_MEMBERSHIP_LOAD_SEND_MB_S");
    let install_rate = env_opt_u64("CONCLAVE_MEMBERSHIP_LOAD_INSTALL_MB_S");
    let catch_up_rate = env_opt_u64("CONCLAVE_MEMBERSHIP_LOAD_CATCH_UP_MB_S");
    let cluster = Cluster::new_with(&dir, 3, |c| {
        if let Some(r) = send_rate {
            c.snapshot.max_send_rate_mb_s = r;
        }
        if let Some(r) = install_rate {
            c.snapshot.install_rate_mb_s = r;
        }
        if let Some(r) = catch_up_rate {
            c.raft.learner_catch_up_mb_s = r;
        }
    });
    eprintln!(
        "snapshot send rate limit: {} MB/s, install rate: {} MB/s, learner catch-up: {} MB/s",
        cluster.configs[0].snapshot.max_send_rate_mb_s,
        cluster.configs[0].snapshot.install_rate_mb_s,
        cluster.configs[0].raft.learner_catch_up_mb_s
    );
    let leader = cluster.leader(Duration::from_secs(30)).await;
    let leader_ep = cluster.endpoint(leader);
    let endpoints: Vec<String> = (0..3).map(|i| cluster.endpoint((leader + i) % 3)).collect();

    // Preload.
    let big_keys = mb * 1024 * 1024 / BIG as u64;
    let preload = Instant::now();
    common::preload_big(&leader_ep, big_keys).await;
    eprintln!(
        "preloaded {big_keys} values of 64 KiB ({mb} MiB) in {:.1}s",
        preload.elapsed().as_secs_f64()
    );

    // The writers start; after a warm-up past `keep_entries` (1,000) a snapshot on the leader
    // compacts its log, so node 4 cannot catch up from index 1.
    let writes = Rc::new(RefCell::new(Writes {
        last: vec![vec![None; KEYS_PER_CLIENT as usize]; CLIENTS as usize],
        ..Writes::default()
    }));
    let stop = Rc::new(RefCell::new(false));
    // `CONCLAVE_MEMBERSHIP_LOAD_RATE`: an offered rate (writes/s over all clients) instead of
    // writing as fast as the cluster answers. As fast as possible measures the machine's
    // capacity, which on one machine a fourth node must share (see docs/performance.md); an
    // offered rate below it shows what a cluster with headroom sees during a catch-up.
    let offered = env_opt_u64("CONCLAVE_MEMBERSHIP_LOAD_RATE").filter(|&r| r > 0);
    let interval = offered.map(|r| Duration::from_secs_f64(CLIENTS as f64 / r as f64));
    if let Some(r) = offered {
        eprintln!("offered load: {r} writes/s over {CLIENTS} clients");
    }
    let writers: Vec<_> = (0..CLIENTS)
        .map(|w| {
            actix_web::rt::spawn(writer(
                endpoints.clone(),
                w,
                writes.clone(),
                stop.clone(),
                interval,
            ))
        })
        .collect();
    let lc = cluster.client(leader);
    let warm_from = lc.status().await.unwrap().commit_index;
    while lc.status().await.unwrap().commit_index < warm_from + 1_500 {
        actix::clock::sleep(Duration::from_millis(100)).await;
    }
    let snap = Client::with_timeout(&leader_ep, Duration::from_secs(600))
        .unwrap()
        .take_snapshot(GroupId::FIRST)
        .await;
    match snap {
        Ok(info) => eprintln!(
            "leader's snapshot at index {} ({:.1} MiB) in {} ms",
            info.index,
            info.bytes as f64 / (1024.0 * 1024.0),
            info.duration_ms
        ),
        // An automatic snapshot was running: it compacts as well.
        Err(ClientError::Api { status: 409, .. }) => eprintln!("leader was taking a snapshot"),
        Err(e) => panic!("snapshot on the leader: {e}"),
    }

    // Node 4 starts empty and waits to be added.
    let seeds: Vec<SocketAddr> = cluster.configs.iter().map(|c| c.node.listen).collect();
    let joiner = Joiner::start(&dir, &seeds).await;

    // Where the CPU goes in each phase (the voters, node 4, the clients in this process).
    let mut pids: Vec<u32> = cluster
        .children
        .iter()
        .map(|c| c.as_ref().map_or(0, Child::id))
        .collect();
    pids.push(joiner.child.id());
    pids.push(std::process::id());
    let mut names: Vec<String> = cluster
        .configs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let role = if i == leader { " (leader)" } else { "" };
            format!("n{}{role}", c.node.id)
        })
        .collect();
    names.push(format!("n{NEW_ID}"));
    names.push("clients".into());

    // Baseline.
    let base_start = Instant::now();
    let cpu_base = cpu_sample(&pids);
    let io_base = io_sample(&pids);
    let voter_eps: Vec<String> = (0..3).map(|i| cluster.endpoint(i)).collect();
    let sync_base = wal_syncs(&voter_eps).await;
    actix::clock::sleep(period).await;
    let base_end = Instant::now();
    let cpu_add = cpu_sample(&pids);
    let io_add = io_sample(&pids);
    let sync_add = wal_syncs(&voter_eps).await;
    eprintln!("load average before member add: {}", loadavg());

    // `member add --wait`, timed, with the monitor sampling the phases.
    let phases = Rc::new(RefCell::new(Phases::default()));
    let mon_stop = Rc::new(RefCell::new(false));
    let add_start = Instant::now();
    let mon = actix_web::rt::spawn(monitor(
        leader_ep.clone(),
        joiner.endpoint(),
        add_start,
        phases.clone(),
        mon_stop.clone(),
    ));
    let add = conclave(vec![
        "member".into(),
        "add".into(),
        NEW_ID.to_string(),
        "--addr".into(),
        joiner.listen.to_string(),
        "--http".into(),
        joiner.http.to_string(),
        "--wait".into(),
        "--timeout-s".into(),
        timeout_s.to_string(),
        "--endpoint".into(),
        leader_ep.clone(),
    ])
    .await;
    let add_done = add_start.elapsed();
    assert!(
        add.status.success(),
        "member add --wait: {}\n{}",
        text(&add),
        cluster.logs()
    );
    eprint!(
        "member add --wait: {}",
        String::from_utf8_lossy(&add.stdout)
    );

    // Promote; refused with 409 not_caught_up while the lag is above promote_max_lag.
    let mut refused = 0;
    let promote_deadline = Instant::now() + Duration::from_secs(timeout_s);
    loop {
        let out = conclave(vec![
            "member".into(),
            "promote".into(),
            NEW_ID.to_string(),
            "--endpoint".into(),
            leader_ep.clone(),
        ])
        .await;
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not_caught_up") && Instant::now() < promote_deadline,
            "member promote: {}",
            text(&out)
        );
        refused += 1;
        actix::clock::sleep(Duration::from_millis(200)).await;
    }
    let promoted = add_start.elapsed();
    let promote_at = Instant::now();
    let cpu_promoted = cpu_sample(&pids);
    let io_promoted = io_sample(&pids);
    let sync_promoted = wal_syncs(&voter_eps).await;
    *mon_stop.borrow_mut() = true;
    mon.await.unwrap();

    // After: as long as the baseline.
    actix::clock::sleep(period).await;
    let after_end = Instant::now();
    let cpu_end = cpu_sample(&pids);
    let io_end = io_sample(&pids);
    let sync_end = wal_syncs(&voter_eps).await;
    *stop.borrow_mut() = true;
    for w in writers {
        w.await.unwrap();
    }
    eprintln!("load average at the end: {}", loadavg());

    let config = lc.cluster_config().await.unwrap();
    let voters: Vec<NodeId> = config.voters.iter().map(|m| m.id).collect();
    assert_eq!(
        voters,
        vec![NodeId::new(1), NodeId::new(2), NodeId::new(3), NEW_ID],
        "{config:?}"
    );

    let w = writes.borrow().clone();
    let p = phases.borrow().clone();
    // Chunks node 4 dropped or refused (each one is sent again), and what the leader resumed.
    let joiner_ep = joiner.endpoint();
    let dropped = metric(&joiner_ep, "conclave_snapshot_chunks_dropped_total", "").await;
    let chunks_refused = metric(&joiner_ep, "conclave_snapshot_chunks_refused_total", "").await;
    let resumed = metric(&leader_ep, "conclave_snapshot_resumed_total", "").await;
    let sent_bytes = metric(&leader_ep, "conclave_snapshot_send_bytes_total", "").await;
    eprintln!(
        "snapshot chunks at node {NEW_ID}: dropped {dropped:?}, refused {chunks_refused:?}; leader: \
         resumed {resumed:?}, bytes sent {sent_bytes:?}"
    );
    let catch_end = add_start + promoted;
    let base = rate(&w.acks, base_start, base_end);
    let during = rate(&w.acks, add_start, catch_end);
    let after = rate(&w.acks, promote_at, after_end);
    eprintln!(
        "phases from `member add`: learner added {}, transfer started {}, snapshot streamed {} \
         ({:.1} MB in {} snapshot(s) to node {NEW_ID}), installed {}, caught up {}, \
         `member add --wait` exited {:.1} s, promoted {:.1} s (promote refused {refused}x); \
         largest lag seen {}",
        secs(p.learner_added),
        secs(p.stream_started),
        secs(p.streamed),
        p.bytes_sent / 1e6,
        p.snapshots_sent,
        secs(p.installed),
        secs(p.caught_up),
        add_done.as_secs_f64(),
        promoted.as_secs_f64(),
        p.max_lag
    );
    if let (Some(a), Some(b)) = (p.stream_started, p.streamed) {
        let s = (b - a).as_secs_f64();
        eprintln!(
            "streamed at {:.1} MB/s ({:.1} MB in {s:.1} s, as sampled)",
            p.bytes_sent / 1e6 / s.max(1e-3),
            p.bytes_sent / 1e6
        );
    }
    eprintln!(
        "writes/s: before {base:.0} ({:.1} s), during the catch-up {during:.0} ({:.1} s), \
         after {after:.0}; 503s retried: {}",
        (base_end - base_start).as_secs_f64(),
        promoted.as_secs_f64(),
        w.retried_503
    );
    // Throughput per 2 s window from the baseline on, for the record.
    let mut series = Vec::new();
    let mut t = base_start;
    while t < after_end {
        let e = (t + Duration::from_secs(2)).min(after_end);
        series.push(format!("{:.0}", rate(&w.acks, t, e)));
        t = e;
    }
    eprintln!("writes/s per 2 s window: {}", series.join(" "));
    eprintln!(
        "write latency: before {}; during the catch-up {}; after {}",
        latency_ms(&w, base_start, base_end),
        latency_ms(&w, add_start, catch_end),
        latency_ms(&w, promote_at, after_end)
    );
    eprintln!(
        "WAL sync mean per voter (n1, n2, n3; syncs): before: {}; during the catch-up: {}; \
         after: {}",
        sync_means(&sync_base, &sync_add),
        sync_means(&sync_add, &sync_promoted),
        sync_means(&sync_promoted, &sync_end)
    );
    eprintln!(
        "CPU, share of one core: before: {}; during the catch-up: {}; after: {}",
        cpu_shares(
            &names,
            &cpu_base,
            &cpu_add,
            (base_end - base_start).as_secs_f64()
        ),
        cpu_shares(&names, &cpu_add, &cpu_promoted, promoted.as_secs_f64()),
        cpu_shares(
            &names,
            &cpu_promoted,
            &cpu_end,
            (after_end - promote_at).as_secs_f64()
        )
    );
    eprintln!(
        "device writes, MB/s: before: {}; during the catch-up: {}; after: {}",
        write_rates(
            &names,
            &io_base,
            &io_add,
            (base_end - base_start).as_secs_f64()
        ),
        write_rates(&names, &io_add, &io_promoted, promoted.as_secs_f64()),
        write_rates(
            &names,
            &io_promoted,
            &io_end,
            (after_end - promote_at).as_secs_f64()
        )
    );
    eprintln!(
        "{mb} MiB: `member add --wait` → promotable {:.1} s (target ≤ 60 s); write throughput \
         during the catch-up / before: {:.2} (target ≥ 0.80); after / before: {:.2} (the \
         fourth replica's own cost); during / after: {:.2}",
        promoted.as_secs_f64(),
        during / base.max(1e-9),
        after / base.max(1e-9),
        during / after.max(1e-9)
    );

    // Node 4 holds the data once it has applied the leader's commit index.
    let commit = lc.status().await.unwrap().commit_index;
    applied(&joiner.endpoint(), commit, Duration::from_secs(120)).await;
    let last = w.last.clone();
    holds(&joiner.endpoint(), ReadLevel::Stale, &last, big_keys).await;
    holds(&leader_ep, ReadLevel::Linearizable, &last, big_keys).await;
}
