//! The HTTP layer's own cost per request (issue 15 point 3: "HTTP routing without per-request
//! regex"): the node's real server (`conclave::http::server_with`: routing, the auth and
//! metrics middleware, body reading with the admission budget, the JSON answer) in front of a
//! service that answers at once, so what is measured is the HTTP layer and nothing behind it.
//!
//! One actix-web worker thread; `CONCLAVE_HTTP_CONNECTIONS` client connections (default 8),
//! each a plain blocking socket with one request in flight (keep-alive, like wrk); the metrics
//! go to the Prometheus recorder the node installs. For each operation (`PUT /v1/kv/{key}` of
//! 256 bytes, `GET /v1/kv/{key}?consistency=linearizable`, `POST /v1/kv/{key}/cas`,
//! `GET /v1/cluster`) over `CONCLAVE_HTTP_SECS` seconds (default 5) it prints requests/s and,
//! the figure that does not depend on how busy the machine is, the worker thread's CPU time per
//! request (`/proc/self/task/<tid>/schedstat`: user and kernel time, so the socket calls count
//! too), with the load average.
//!
//! Not a criterion suite (it measures a server thread, not a closure):
//! `cargo bench -p benches --bench http`.

#![allow(missing_docs)]

use conclave::api::{
    ClusterStatus, Consistency, GossipMembers, LeaderHint, NodeId, Readiness, RequestError,
    WriteResult,
};
use conclave::http::{server_with, HttpOptions};
use conclave::state_machine::{KvCommand, KvOutput};
use conclave_core::ids::{GroupId, ShardId};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const VALUE_BYTES: usize = 256;

/// Answers every request at once: a write is applied at the next index, a read finds a
/// 256-byte value.
#[derive(Clone)]
struct Instant0 {
    index: Arc<AtomicU64>,
}

impl conclave::api::KvService for Instant0 {
    fn node_id(&self) -> NodeId {
        NodeId::new(1)
    }

    fn max_value_bytes(&self) -> usize {
        1 << 20
    }

    async fn write(
        &self,
        command: KvCommand,
        _idempotency_key: Option<String>,
    ) -> Result<WriteResult<KvOutput>, RequestError> {
        let output = match command {
            KvCommand::Put { .. } => KvOutput::Put,
            KvCommand::Delete { .. } => KvOutput::Delete { existed: true },
            KvCommand::Cas { .. } | KvCommand::SetMetadata { .. } => KvOutput::Cas {
                ok: true,
                current: None,
            },
        };
        Ok(WriteResult {
            index: self.index.fetch_add(1, Ordering::Relaxed) + 1,
            term: 1,
            output,
        })
    }

    async fn read(
        &self,
        _key: Vec<u8>,
        _consistency: Consistency,
    ) -> Result<Option<Vec<u8>>, RequestError> {
        Ok(Some(vec![b'v'; VALUE_BYTES]))
    }

    fn default_consistency(&self) -> Consistency {
        Consistency::Linearizable
    }

    async fn status(&self) -> ClusterStatus {
        ClusterStatus {
            node_id: NodeId::new(1),
            role: "leader".to_owned(),
            term: 1,
            leader_id: Some(NodeId::new(1)),
            commit_index: self.index.load(Ordering::Relaxed),
            applied_index: self.index.load(Ordering::Relaxed),
            members: Vec::new(),
            groups: Vec::new(),
            storage: Default::default(),
            membership: Default::default(),
        }
    }

    async fn members(&self) -> GossipMembers {
        GossipMembers {
            node_id: NodeId::new(1),
            incarnation: 0,
            local_health: 0,
            joined: true,
            counts: Default::default(),
            stats: Default::default(),
            members: Vec::new(),
        }
    }

    async fn readiness(&self) -> Readiness {
        Readiness {
            ready: true,
            reasons: Vec::new(),
            storage: Default::default(),
            code: None,
        }
    }

    fn leader_hint(&self) -> Option<LeaderHint> {
        None
    }

    fn route(&self, _key: &[u8]) -> conclave::api::KeyRoute {
        conclave::api::KeyRoute {
            shard: ShardId::new(0),
            group: GroupId::FIRST,
            replicas: vec![NodeId::new(1)],
            leader: Some(NodeId::new(1)),
            map_version: 0,
        }
    }

    fn render_metrics(&self) -> String {
        String::new()
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
    {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(prefix) {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

/// CPU time of the given threads in ns (the first field of `schedstat`).
fn cpu_ns(tids: &[String]) -> u64 {
    tids.iter()
        .map(|tid| {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// One request's bytes for operation `op` on key number `n`.
fn request(op: &str, n: u64) -> Vec<u8> {
    let key = format!("{:08}", n % 10_000);
    match op {
        "put" => {
            let mut r = format!(
                "PUT /v1/kv/{key} HTTP/1.1\r\nHost: bench\r\nContent-Length: {VALUE_BYTES}\r\n\r\n"
            )
            .into_bytes();
            r.extend(std::iter::repeat_n(b'v', VALUE_BYTES));
            r
        }
        "get" => {
            format!("GET /v1/kv/{key}?consistency=linearizable HTTP/1.1\r\nHost: bench\r\n\r\n")
                .into_bytes()
        }
        "cas" => {
            let body = r#"{"expected":null,"value":"v"}"#;
            format!(
                "POST /v1/kv/{key}/cas HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        }
        "cluster" => b"GET /v1/cluster HTTP/1.1\r\nHost: bench\r\n\r\n".to_vec(),
        other => panic!("unknown operation {other}"),
    }
}

/// Reads one response (head and `Content-Length` body); returns its status.
fn read_response(reader: &mut BufReader<TcpStream>, line: &mut String) -> u16 {
    line.clear();
    reader.read_line(line).expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let mut length = 0usize;
    loop {
        line.clear();
        reader.read_line(line).expect("header line");
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().expect("content-length");
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).expect("body");
    status
}

/// Closed loop on one connection until `stop`; returns the requests answered with 2xx.
fn client(addr: SocketAddr, op: &'static str, seed: u64, stop: Arc<AtomicBool>) -> u64 {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut done = 0;
    let mut n = seed;
    while !stop.load(Ordering::Relaxed) {
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        writer.write_all(&request(op, n >> 33)).expect("write");
        let status = read_response(&mut reader, &mut line);
        assert!((200..300).contains(&status), "{op}: HTTP {status}");
        done += 1;
    }
    done
}

fn main() {
    let secs: u64 = std::env::var("CONCLAVE_HTTP_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let connections: u64 = std::env::var("CONCLAVE_HTTP_CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let system = actix::System::new();
        system.block_on(async move {
            let _ = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder();
            let service = Instant0 {
                index: Arc::new(AtomicU64::new(0)),
            };
            let options = HttpOptions {
                workers: 1,
                ..HttpOptions::default()
            };
            let server = server_with(service, listener, options).expect("server");
            server.await.expect("server ran");
        });
    });
    // Warm up (and wait for the worker thread to exist).
    let stop = Arc::new(AtomicBool::new(false));
    {
        let s = Arc::clone(&stop);
        let warm = std::thread::spawn(move || client(addr, "put", 7, s));
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        warm.join().expect("warm-up client");
    }
    // Inside an actix system, actix-server runs its worker on an arbiter
    // (`actix-rt|system:0|arbiter:N`, truncated to 15 bytes in `comm`); the system itself runs
    // on the unnamed thread spawned above.
    let workers = threads_named("actix-rt|system");
    assert_eq!(workers.len(), 1, "expected one actix-server worker arbiter");
    println!(
        "http layer: 1 worker, {connections} connections, {secs} s per operation, value {VALUE_BYTES} B"
    );
    println!(
        "{:<8} {:>12} {:>22}   load average",
        "op", "requests/s", "worker CPU µs/request"
    );
    for op in ["put", "get", "cas", "cluster"] {
        let load = loadavg();
        let stop = Arc::new(AtomicBool::new(false));
        let cpu0 = cpu_ns(&workers);
        let start = Instant::now();
        let clients: Vec<_> = (0..connections)
            .map(|i| {
                let s = Arc::clone(&stop);
                std::thread::spawn(move || client(addr, op, i * 7919 + 1, s))
            })
            .collect();
        std::thread::sleep(Duration::from_secs(secs));
        stop.store(true, Ordering::Relaxed);
        let total: u64 = clients.into_iter().map(|c| c.join().expect("client")).sum();
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = cpu_ns(&workers) - cpu0;
        println!(
            "{op:<8} {:>12.0} {:>22.2}   {load}",
            total as f64 / elapsed,
            cpu as f64 / 1000.0 / total.max(1) as f64
        );
    }
}
