//! The `conclave node` processes of a chaos run, each reaching its peers through the proxies.

use super::proxy::Net;
use conclave::api::ShardsStatus;
use conclave::config::{Config, MemberConfig};
use conclave::node::ClusterStatus;
use rustix::process::{kill_process, Pid, Signal};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable the node reads its planted bugs from (test builds only).
pub const PLANTED_BUGS_ENV: &str = "CONCLAVE_PLANTED_BUGS";

/// How the nodes are configured.
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// `raft.check_quorum` (default true); the planted lease bug needs it off.
    pub check_quorum_off: bool,
    /// Planted bugs to switch on in every node (`CONCLAVE_PLANTED_BUGS`), empty for none.
    pub planted_bugs: String,
    /// `[ring] sharded = true` with these shards and replication factor; `None`: one group
    /// (group 0) on every node, the default.
    pub sharding: Option<Sharding>,
}

/// A sharded cluster's shape (`[ring]`, docs/sharding.md).
#[derive(Clone, Copy, Debug)]
pub struct Sharding {
    pub shards: u64,
    pub replication_factor: usize,
}

/// One node process.
pub struct Proc {
    /// Node id (index + 1).
    pub id: NodeId,
    /// Its real HTTP address (clients talk to it directly).
    pub http: SocketAddr,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// The cluster's processes.
pub struct Procs {
    pub dir: PathBuf,
    pub nodes: Vec<Proc>,
    planted_bugs: String,
    /// The cluster's sharding, if any.
    pub sharding: Option<Sharding>,
    /// Unexpected exits seen so far: `(node id, exit status)`.
    pub crashes: Vec<(NodeId, String)>,
    /// Processes started (first starts and restarts).
    pub starts: u64,
    /// Status clients by (node index, timeout in ms).
    status_clients: std::cell::RefCell<
        std::collections::HashMap<(usize, u64), std::rc::Rc<conclave::client::Client>>,
    >,
}

#[path = "../common/ports.rs"]
mod ports;
use conclave_core::ids::NodeId;
use ports::free_addr;

/// Real addresses and proxies for `n` nodes, and their configuration files in `dir`.
pub fn prepare(dir: &Path, n: usize, options: &NodeOptions) -> (Net, Procs) {
    std::fs::create_dir_all(dir).unwrap();
    let real: Vec<(SocketAddr, SocketAddr)> = (0..n).map(|_| (free_addr(), free_addr())).collect();
    let net = Net::start(&real);
    let mut nodes = Vec::new();
    for (i, own) in real.iter().enumerate() {
        let id = NodeId::new(i as u64 + 1);
        // Node i sees every peer j at the proxies of the ordered pair (i, j).
        let members: Vec<MemberConfig> = (0..n)
            .map(|j| {
                if j == i {
                    MemberConfig {
                        id,
                        addr: own.0,
                        http: own.1,
                    }
                } else {
                    MemberConfig {
                        id: NodeId::new(j as u64 + 1),
                        addr: net.transport_addr(i, j),
                        http: net.http_addr(i, j),
                    }
                }
            })
            .collect();
        let mut config = Config::local_cluster(&members, &dir.join("data"))
            .into_iter()
            .nth(i)
            .unwrap();
        // A cluster id of its own: a node of another test on this machine that reaches one of
        // these ports by accident is refused at the handshake, not taken for a peer.
        config.cluster.id = format!(
            "chaos-{}",
            dir.file_name()
                .map_or("run".into(), |n| n.to_string_lossy())
        );
        if options.check_quorum_off {
            config.raft.check_quorum = false;
        }
        if let Some(sh) = options.sharding {
            config.ring.sharded = true;
            config.ring.shards = sh.shards;
            config.ring.replication_factor = sh.replication_factor;
        }
        config.validate().unwrap();
        let config_path = dir.join(format!("n{id}.toml"));
        std::fs::write(&config_path, config.to_toml().unwrap()).unwrap();
        nodes.push(Proc {
            id,
            http: own.1,
            config_path,
            log_path: dir.join(format!("n{id}.log")),
            child: None,
            paused: false,
        });
    }
    let procs = Procs {
        dir: dir.to_owned(),
        nodes,
        planted_bugs: options.planted_bugs.clone(),
        sharding: options.sharding,
        crashes: Vec::new(),
        starts: 0,
        status_clients: Default::default(),
    };
    (net, procs)
}

impl Procs {
    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Starts node `i` (no-op if it runs).
    pub fn start(&mut self, i: usize) {
        let planted = self.planted_bugs.clone();
        let node = &mut self.nodes[i];
        if node.child.is_some() {
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_conclave"));
        cmd.arg("node")
            .arg("--config")
            .arg(&node.config_path)
            .env("RUST_LOG", "info")
            .env_remove(PLANTED_BUGS_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if !planted.is_empty() {
            cmd.env(PLANTED_BUGS_ENV, &planted);
        }
        node.child = Some(cmd.spawn().expect("spawn conclave node"));
        node.paused = false;
        self.starts += 1;
    }

    pub fn start_all(&mut self) {
        for i in 0..self.len() {
            self.start(i);
        }
    }

    /// Whether node `i` runs (possibly paused).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Whether node `i` is stopped by SIGSTOP.
    pub fn is_paused(&self, i: usize) -> bool {
        self.nodes[i].paused
    }

    fn signal(&self, i: usize, signal: Signal) -> bool {
        match &self.nodes[i].child {
            Some(c) => kill_process(Pid::from_child(c), signal).is_ok(),
            None => false,
        }
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.nodes[i].paused = false;
    }

    /// SIGSTOP.
    pub fn pause(&mut self, i: usize) -> bool {
        let ok = self.signal(i, Signal::STOP);
        if ok {
            self.nodes[i].paused = true;
        }
        ok
    }

    /// SIGCONT.
    pub fn resume(&mut self, i: usize) {
        if self.nodes[i].paused {
            self.signal(i, Signal::CONT);
            self.nodes[i].paused = false;
        }
    }

    /// SIGTERM and wait (up to `patience`, then SIGKILL) for a clean exit. Returns whether the
    /// node exited by itself with status 0.
    pub async fn terminate(&mut self, i: usize, patience: Duration) -> bool {
        self.resume(i);
        if !self.signal(i, Signal::TERM) {
            return false;
        }
        let deadline = Instant::now() + patience;
        loop {
            let Some(child) = self.nodes[i].child.as_mut() else {
                return false;
            };
            if let Ok(Some(status)) = child.try_wait() {
                self.nodes[i].child = None;
                return status.success();
            }
            if Instant::now() > deadline {
                self.kill9(i);
                return false;
            }
            actix::clock::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Finds processes that exited without the harness asking: each is recorded as a crash and
    /// restarted (so the run goes on; the verdict fails).
    pub fn reap_crashes(&mut self) {
        for i in 0..self.len() {
            let exited = match self.nodes[i].child.as_mut() {
                Some(c) => c.try_wait().ok().flatten(),
                None => None,
            };
            if let Some(status) = exited {
                let id = self.nodes[i].id;
                eprintln!("chaos: node {id} exited unexpectedly: {status}");
                self.crashes.push((id, status.to_string()));
                self.nodes[i].child = None;
                self.nodes[i].paused = false;
                self.start(i);
            }
        }
    }

    /// A client of node `i`'s HTTP API (direct, not through a proxy).
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://{}", self.nodes[i].http)
    }

    /// `GET /v1/cluster` of node `i`, if it answers within `timeout`.
    pub async fn status(&self, i: usize, timeout: Duration) -> Option<ClusterStatus> {
        if !self.is_running(i) || self.is_paused(i) {
            return None;
        }
        // One keep-alive client per node and timeout: a new connection per poll would leave
        // thousands of sockets in TIME-WAIT over a long run, crowding the ephemeral ports other
        // tests on the machine bind.
        let key = (i, timeout.as_millis() as u64);
        let client = self
            .status_clients
            .borrow_mut()
            .entry(key)
            .or_insert_with(|| {
                std::rc::Rc::new(
                    conclave::client::Client::with_timeout(&self.endpoint(i), timeout).unwrap(),
                )
            })
            .clone();
        client.status().await.ok()
    }

    /// The node that claims leadership in the highest term, among the running ones.
    pub async fn leader(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for i in 0..self.len() {
            if let Some(s) = self.status(i, Duration::from_secs(1)).await {
                if s.role == "leader" && best.is_none_or(|(t, _)| s.term > t) {
                    best = Some((s.term, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// `GET /v1/shards` of node `i`, if it answers within `timeout`.
    pub async fn shards(&self, i: usize, timeout: Duration) -> Option<ShardsStatus> {
        if !self.is_running(i) || self.is_paused(i) {
            return None;
        }
        let key = (i, timeout.as_millis() as u64);
        let client = self
            .status_clients
            .borrow_mut()
            .entry(key)
            .or_insert_with(|| {
                std::rc::Rc::new(
                    conclave::client::Client::with_timeout(&self.endpoint(i), timeout).unwrap(),
                )
            })
            .clone();
        client.shards().await.ok()
    }

    /// The node a leader-targeting fault hits: group 0's leader, or on a sharded cluster the
    /// node that leads the most shards (as each node's own replicas see it), so that the fault
    /// moves as many shard leaderships as it can.
    pub async fn target_leader(&self) -> Option<usize> {
        if self.sharding.is_none() {
            return self.leader().await;
        }
        let mut best: Option<(usize, usize)> = None;
        for i in 0..self.len() {
            if let Some(s) = self.shards(i, Duration::from_secs(1)).await {
                let led = s
                    .shards
                    .iter()
                    .filter(|sh| sh.hosted && sh.leader == Some(s.node_id))
                    .count();
                if led > 0 && best.is_none_or(|(n, _)| led > n) {
                    best = Some((led, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// Waits up to `timeout` for a leader.
    pub async fn wait_leader(&self, timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(l) = self.leader().await {
                return Some(l);
            }
            actix::clock::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Lines of the node logs that report a panic.
    pub fn panics(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(&n.log_path).unwrap_or_default();
            for line in text.lines().filter(|l| l.contains("panicked")) {
                out.push(format!("n{}: {line}", n.id));
            }
        }
        out
    }

    /// Every node's log, for failure reports.
    pub fn log_paths(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(|n| n.log_path.clone()).collect()
    }

    /// Stops everything (SIGKILL: the run is over).
    pub fn kill_all(&mut self) {
        for i in 0..self.len() {
            self.kill9(i);
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.kill_all();
    }
}
