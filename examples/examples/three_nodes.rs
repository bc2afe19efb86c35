//! A three-node cluster of the built-in key-value machine in one process, each node serving the
//! HTTP API, with an optional leader failover.
//!
//! ```text
//! cargo run -p examples --example three_nodes                      # runs until Ctrl-C; curl it
//! cargo run -p examples --example three_nodes -- --demo-failover   # stops the leader, shows a new one
//! cargo run -p examples --example three_nodes -- --base-port 7500
//! ```
//!
//! Node `i` listens for peers on `127.0.0.1:{base+i}` and for HTTP on `127.0.0.1:{base+100+i}`
//! (the same layout as `conclave init`; default base 7400). Data lives in a temporary directory
//! that is removed on exit.

use anyhow::{bail, Context, Result};
use clap::Parser;
use conclave::api::NodeId;
use conclave::config::{Config, MemberConfig, ReadLevel};
use conclave::node::{Node, NodeHandle};
use conclave::state_machine::{KvCommand, KvMachine, KvOutput, KvQuery, KvRequest};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser, Debug)]
#[command(about = "Run a three-node conclave key-value cluster in one process")]
struct Args {
    /// Node i uses port BASE+i for the transport and BASE+100+i for HTTP.
    #[arg(long, default_value_t = 7400)]
    base_port: u16,
    /// Stop the leader after the demo writes, show a new leader taking over, then exit.
    #[arg(long)]
    demo_failover: bool,
}

/// A running node and its HTTP server.
struct Running {
    node: Node<KvMachine>,
    http: actix_web::dev::ServerHandle,
    config: Config,
}

impl Running {
    async fn stop(self) {
        self.http.stop(true).await;
        self.node.shutdown().await;
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    actix::System::new().block_on(run(args, dir.path()))
}

async fn run(args: Args, dir: &Path) -> Result<()> {
    let mut running = Vec::new();
    for config in local_cluster(3, args.base_port, dir)? {
        // The built-in machine keeps its data in sled and reports its applied index, so a
        // restart replays only the log entries after it.
        let sm_dir = config.node.data_dir.join("sm");
        let node = Node::builder()
            .config(config.clone())
            .state_machine_with(move || KvMachine::open(&sm_dir))
            .start()
            .await
            .with_context(|| format!("starting node {}", config.node.id))?;
        let server = conclave::http::server(node.handle(), &config)
            .with_context(|| format!("binding HTTP on {}", config.node.http))?;
        let http = server.handle();
        actix::spawn(server);
        running.push(Running { node, http, config });
    }
    for r in &running {
        println!(
            "node {}: transport {}  http http://{}",
            r.config.node.id, r.config.node.listen, r.config.node.http
        );
    }
    let handles: Vec<_> = running.iter().map(|r| r.node.handle()).collect();
    let leader = wait_for_leader(&handles, None).await?;
    let status = leader.cluster_status();
    println!("leader: node {} (term {})", leader.id(), status.term);

    for (key, value) in [
        ("greeting", "hello"),
        ("color", "blue"),
        ("shape", "circle"),
    ] {
        let r = write(&handles, put(key, value)).await?;
        println!("put {key}={value} -> index {} term {}", r.0, r.1);
    }
    let r = write(
        &handles,
        KvRequest {
            id: None,
            op: KvCommand::Delete {
                key: b"shape".to_vec(),
            },
        },
    )
    .await?;
    println!("delete shape -> index {}, {:?}", r.0, r.2);
    for key in ["greeting", "color", "shape"] {
        println!(
            "get {key} (linearizable, node {}) -> {}",
            leader.id(),
            show(get(&leader, key, ReadLevel::Linearizable).await?)
        );
    }
    // Through HTTP on a follower: it forwards the read to the leader.
    let follower = running
        .iter()
        .find(|r| r.config.node.id != leader.id())
        .context("a three-node cluster has a follower")?;
    let (status_line, body) = http_get(follower.config.node.http, "/v1/kv/greeting").await?;
    println!(
        "GET http://{}/v1/kv/greeting -> {status_line}: {body}",
        follower.config.node.http
    );

    if !args.demo_failover {
        let h = running[0].config.node.http;
        println!("\ntry:");
        println!("  curl -X PUT --data-binary world http://{h}/v1/kv/greeting");
        println!("  curl http://{h}/v1/kv/greeting");
        println!("  curl http://{h}/v1/cluster");
        println!("Ctrl-C stops the cluster.");
        tokio::signal::ctrl_c().await?;
        println!("stopping");
        for r in running {
            r.stop().await;
        }
        return Ok(());
    }

    // Failover: stop the leader; the two others elect a new one among themselves.
    let old = leader.id();
    let old_term = status.term;
    let index = running
        .iter()
        .position(|r| r.config.node.id == old)
        .context("the leader is one of the running nodes")?;
    let stopped = running.remove(index);
    let stopped_at = Instant::now();
    stopped.stop().await;
    println!("\nstopped the leader, node {old}");
    let handles: Vec<_> = running.iter().map(|r| r.node.handle()).collect();
    let leader = wait_for_leader(&handles, Some(old)).await?;
    println!(
        "new leader: node {} (term {}, was {old_term}), elected {} ms after the stop began",
        leader.id(),
        leader.cluster_status().term,
        stopped_at.elapsed().as_millis()
    );
    for key in ["greeting", "color", "shape"] {
        println!(
            "get {key} (linearizable, node {}) -> {}",
            leader.id(),
            show(get(&leader, key, ReadLevel::Linearizable).await?)
        );
    }
    // Two of three nodes are a quorum: writes still commit.
    let r = write(&handles, put("after-failover", "still writable")).await?;
    println!("put after-failover -> index {} term {}", r.0, r.1);
    let other = running
        .iter()
        .find(|r| r.config.node.id != leader.id())
        .context("two nodes remain")?;
    let (status_line, body) = http_get(other.config.node.http, "/v1/kv/after-failover").await?;
    println!(
        "GET http://{}/v1/kv/after-failover -> {status_line}: {body}",
        other.config.node.http
    );
    for r in running {
        r.stop().await;
    }
    println!("done");
    Ok(())
}

fn put(key: &str, value: &str) -> KvRequest {
    KvRequest {
        id: None,
        op: KvCommand::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        },
    }
}

fn show(value: Option<Vec<u8>>) -> String {
    match value {
        Some(v) => format!("{:?}", String::from_utf8_lossy(&v)),
        None => "(absent)".to_owned(),
    }
}

async fn get(h: &NodeHandle<KvMachine>, key: &str, level: ReadLevel) -> Result<Option<Vec<u8>>> {
    // The outer error is the request's (no leader, timeout), the inner one the machine's storage.
    Ok(h.read(KvQuery::Get(key.as_bytes().to_vec()), level)
        .await??)
}

/// Sends `request` to the current leader, retrying while an election is in progress; returns
/// (index, term, output). Timeouts are not retried: the write may still apply.
async fn write(
    handles: &[NodeHandle<KvMachine>],
    request: KvRequest,
) -> Result<(u64, u64, KvOutput)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leader = wait_for_leader(handles, None).await?;
        match leader.write(request.clone()).await {
            Ok(r) => return Ok((r.index, r.term, r.output)),
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                actix::clock::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e).context("write failed"),
        }
    }
}

/// The node that considers itself leader, other than `not` (a stopped node).
async fn wait_for_leader(
    handles: &[NodeHandle<KvMachine>],
    not: Option<NodeId>,
) -> Result<NodeHandle<KvMachine>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let found = handles
            .iter()
            .find(|h| Some(h.id()) != not && h.cluster_status().role == "leader");
        if let Some(h) = found {
            return Ok(h.clone());
        }
        actix::clock::sleep(Duration::from_millis(20)).await;
    }
    bail!("no leader elected within 10 s")
}

/// A minimal HTTP/1.1 GET, to show the API without pulling in a client library (use curl).
async fn http_get(addr: SocketAddr, path: &str) -> Result<(String, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("").to_owned();
    // A follower streams the leader's answer back, so its body comes chunked.
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

/// Decodes a chunked HTTP/1.1 body: `{hex size}\r\n{data}\r\n` … `0\r\n\r\n`.
fn dechunk(mut rest: &str) -> Result<String> {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").context("truncated chunk header")?;
        let size = usize::from_str_radix(size.trim(), 16).context("bad chunk size")?;
        if size == 0 {
            return Ok(body);
        }
        let chunk = after.get(..size).context("truncated chunk")?;
        body.push_str(chunk);
        rest = after
            .get(size..)
            .and_then(|r| r.strip_prefix("\r\n"))
            .context("chunk without its CRLF")?;
    }
}

/// Node i: transport `base+i`, HTTP `base+100+i`, data under `dir/n{i}`.
fn local_cluster(n: u16, base: u16, dir: &Path) -> Result<Vec<Config>> {
    let port = |offset: u16| {
        base.checked_add(offset)
            .with_context(|| format!("--base-port {base} leaves no room for {n} nodes"))
    };
    let members = (1..=n)
        .map(|i| {
            Ok(MemberConfig {
                id: NodeId::new(u64::from(i)),
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port(i)?)),
                http: SocketAddr::from((Ipv4Addr::LOCALHOST, port(100 + i)?)),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Config::local_cluster(&members, dir))
}
