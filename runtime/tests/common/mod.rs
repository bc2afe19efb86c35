//! Real `conclave node` processes on loopback, for integration tests.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use conclave::client::Client;
use conclave::config::{Config, MemberConfig};
use conclave_core::ids::NodeId;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod ports;
pub mod rogue;
pub use ports::free_addr;

/// Configurations of an `n`-node loopback cluster with data under `data_root` (ports from
/// [`free_addr`]).
pub fn local_configs(n: u64, data_root: &Path) -> Vec<Config> {
    let members: Vec<MemberConfig> = (1..=n)
        .map(|id| MemberConfig {
            id: NodeId::new(id),
            addr: free_addr(),
            http: free_addr(),
        })
        .collect();
    Config::local_cluster(&members, data_root)
}

pub struct Cluster {
    pub dir: PathBuf,
    pub configs: Vec<Config>,
    pub children: Vec<Option<Child>>,
}

impl Cluster {
    pub fn new(dir: &Path, n: u64) -> Cluster {
        Self::new_with(dir, n, |_| {})
    }

    /// Like [`Cluster::new`], with `tweak` applied to every node's configuration first.
    pub fn new_with(dir: &Path, n: u64, tweak: impl Fn(&mut Config)) -> Cluster {
        let mut configs = local_configs(n, &dir.join("data"));
        configs.iter_mut().for_each(&tweak);
        Self::from_configs(dir, configs)
    }

    /// Starts one node per configuration (ids 1..=n, in order), writing them under `dir`.
    pub fn from_configs(dir: &Path, configs: Vec<Config>) -> Cluster {
        let n = configs.len();
        for c in &configs {
            let path = dir.join(format!("n{}.toml", c.node.id));
            std::fs::write(&path, c.to_toml().unwrap()).unwrap();
        }
        let mut cluster = Cluster {
            dir: dir.to_owned(),
            configs,
            children: Vec::new(),
        };
        for i in 0..n {
            let child = cluster.spawn(i);
            cluster.children.push(Some(child));
        }
        cluster
    }

    pub fn spawn(&self, i: usize) -> Child {
        self.spawn_with_env(i, &[])
    }

    /// Like [`Cluster::spawn`], with extra environment variables (fault injection).
    pub fn spawn_with_env(&self, i: usize, env: &[(&str, &str)]) -> Child {
        let id = self.configs[i].node.id;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("n{id}.log")))
            .unwrap();
        Command::new(node_bin())
            .arg("node")
            .arg("--config")
            .arg(self.dir.join(format!("n{id}.toml")))
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn conclave node")
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("http://{}", self.configs[i].node.http)
    }

    pub fn client(&self, i: usize) -> Client {
        Client::with_timeout(&self.endpoint(i), Duration::from_secs(3)).unwrap()
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            c.kill().unwrap(); // SIGKILL
            c.wait().unwrap();
        }
    }

    pub fn restart(&mut self, i: usize) {
        let child = self.spawn(i);
        self.children[i] = Some(child);
    }

    pub fn alive(&self) -> Vec<usize> {
        (0..self.configs.len())
            .filter(|&i| self.children[i].is_some())
            .collect()
    }

    /// The index of the node that reports itself leader, once one does.
    pub async fn leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            for i in self.alive() {
                if let Ok(s) = self.client(i).status().await {
                    if s.role == "leader" {
                        return i;
                    }
                }
            }
            actix::clock::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "no leader within {timeout:?}; logs in {}",
            self.dir.display()
        );
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for c in &self.configs {
            let p = self.dir.join(format!("n{}.log", c.node.id));
            out.push_str(&format!("--- {}\n", p.display()));
            out.push_str(&std::fs::read_to_string(p).unwrap_or_default());
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A process's resident set size in KiB (`/proc/PID/status`), `None` once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Bytes of every file under `path` (0 if it does not exist).
pub fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The `conclave` binary the process tests run: `CONCLAVE_NODE_BIN` runs another build (e.g. a
/// release binary for long runs), else the one cargo built for this test.
pub fn node_bin() -> String {
    std::env::var("CONCLAVE_NODE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_conclave").to_owned())
}

/// Runs `bin args…` off the async runtime (tasks on it keep running meanwhile).
pub async fn run_cli(bin: String, args: Vec<String>) -> Output {
    actix_web::rt::task::spawn_blocking(move || {
        Command::new(bin)
            .args(&args)
            .output()
            .expect("run conclave")
    })
    .await
    .unwrap()
}

/// A CLI run's status, stdout and stderr, for assertion messages.
pub fn output_text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `name` as a number, or `default` when unset; panics naming the variable when it is not one.
pub fn env_u64(name: &str, default: u64) -> u64 {
    env_opt_u64(name).unwrap_or(default)
}

/// `name` as a number, or `None` when unset; panics naming the variable when it is not one.
pub fn env_opt_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
    })
}

/// Size of the values the large-state tests preload.
pub const BIG: usize = 64 * 1024;

/// Preloaded value `i` (key `big{i:07}`): [`BIG`] bytes, not all one byte, so that no layer can
/// make it small.
pub fn big_value(i: u64) -> Vec<u8> {
    let mut v = format!("big{i}:").into_bytes();
    v.extend((0..BIG - v.len()).map(|j| (j as u64 ^ i) as u8));
    v
}

/// Writes keys `big0000000 … big{count-1}` with [`big_value`] through `endpoint`, 8 clients at
/// once, retrying each write for up to 5 s.
pub async fn preload_big(endpoint: &str, count: u64) {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let loaders: Vec<_> = (0..8)
        .map(|_| {
            let endpoint = endpoint.to_owned();
            let next = next.clone();
            actix::spawn(async move {
                let client = Client::with_timeout(&endpoint, Duration::from_secs(30)).unwrap();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let key = format!("big{i:07}");
                    let mut tries = 0;
                    while let Err(e) = client.put(key.as_bytes(), big_value(i), None).await {
                        tries += 1;
                        assert!(tries < 50, "preloading {key}: {e}");
                        actix::clock::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
        })
        .collect();
    for l in loaders {
        l.await.unwrap();
    }
}
