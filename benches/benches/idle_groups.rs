//! Idle groups: what hosting many Raft groups costs a node when nothing is written (issue 15,
//! point 2). Three nodes in this one process over loopback TCP, every group on every node
//! (group 0 plus groups created at runtime with `NodeHandle::create_group`). For each group
//! count it waits until every group has a leader, lets the cluster settle, then measures over a
//! window:
//!
//! - CPU: this process's user + system time over the window, divided by the three nodes, as a
//!   percentage of one core (`/proc/self/stat`);
//! - frames per second from node 1 to node 2 (`conclave_transport_frames_total`, direction
//!   `out`), and the bytes;
//! - the first write to the highest-numbered group after the window (its leader's
//!   `write_to`), end to end;
//! - then node 1 stops and the time until every group it led has a leader on the two other
//!   nodes is measured. `CONCLAVE_IDLE_FAILOVER=crash` (the default) stops it as a crash looks
//!   to its peers (`Node::halt`: its connections close, it says nothing, gossip's failure
//!   detector has to find out); `leave` shuts it down gracefully (gossip reports it `left` at
//!   once).
//!
//! Not a criterion suite (a 60 s window per point): run it with
//! `cargo bench -p benches --bench idle_groups`; `CONCLAVE_IDLE_GROUPS` (default `1,10,100`)
//! and `CONCLAVE_IDLE_SECS` (default 60) choose the points. Results go to stdout, one line per
//! group count, with the load average. `CONCLAVE_IDLE_STORE=redb` gives every group a redb
//! state store in the temp dir instead of a temporary sled one (default `sled`): sled runs
//! background threads per instance, which at 1,000 groups × 3 nodes dominate the process's
//! CPU and memory and hide what the Raft side costs. `CONCLAVE_IDLE_POLL_US` sets every node's
//! `[node] idle_poll_us`; the line reports the time the idle pollers spun in the window (per
//! node, % of one core, included in the CPU figure) and the WAL syncs per second.

#![allow(missing_docs)]

use conclave::config::{Config, MemberConfig};
use conclave::node::{Node, NodeHandle};
use conclave::state_machine::{KvCommand, KvMachine, KvRequest};
use conclave::storage::redb_store::RedbStore;
use conclave_core::ids::{GroupId, NodeId};
use std::time::{Duration, Instant};

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// User + system CPU time of this process, in clock ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the state.
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

fn clock_ticks_per_second() -> u64 {
    // Linux on every architecture this runs on.
    100
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The sum of the values of every series of the counter `name` whose labels include each of
/// `labels` (e.g. `node="1"`), over all three nodes.
fn counter_sum(
    prom: &metrics_exporter_prometheus::PrometheusHandle,
    name: &str,
    labels: &[&str],
) -> f64 {
    prom.render()
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// `conclave_transport_frames_total` and `_bytes_total` from node 1 to node 2.
fn frames_1_to_2(prom: &metrics_exporter_prometheus::PrometheusHandle) -> (f64, f64) {
    let one_to_two = ["node=\"1\"", "peer=\"2\"", "direction=\"out\""];
    (
        counter_sum(prom, "conclave_transport_frames_total", &one_to_two),
        counter_sum(prom, "conclave_transport_bytes_total", &one_to_two),
    )
}

fn leaders(handles: &[NodeHandle<KvMachine>], groups: u64) -> Vec<Option<NodeId>> {
    let mut out = vec![None; groups as usize];
    for h in handles {
        for g in h.cluster_status().groups {
            if g.role == "leader" && g.id.get() < groups {
                out[g.id.get() as usize] = Some(h.id());
            }
        }
    }
    out
}

async fn point(groups: u64, secs: u64, prom: &metrics_exporter_prometheus::PrometheusHandle) {
    let dir = tempfile::tempdir().expect("temp dir");
    let members: Vec<MemberConfig> = (1..=3)
        .map(|id| MemberConfig {
            id: NodeId::new(id),
            addr: free_addr(),
            http: free_addr(),
        })
        .collect();
    let mut configs: Vec<Config> = Config::local_cluster(&members, dir.path());
    // `[node] idle_poll_us` for every node (default: the config's).
    if let Some(us) = std::env::var("CONCLAVE_IDLE_POLL_US")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        for c in &mut configs {
            c.node.idle_poll_us = us;
        }
    }
    let mut nodes = Vec::new();
    let redb = std::env::var("CONCLAVE_IDLE_STORE").is_ok_and(|s| s == "redb");
    for c in configs {
        let stores = c.node.data_dir.join("bench-stores");
        let node = Node::builder()
            .config(c)
            .state_machine_for_groups(move |group| {
                if redb {
                    std::fs::create_dir_all(&stores).expect("store dir");
                    let path = stores.join(format!("{group}.redb"));
                    KvMachine::with_store(Box::new(RedbStore::open(&path)?))
                } else {
                    KvMachine::temporary()
                }
            })
            .start()
            .await
            .expect("node starts");
        nodes.push(node);
    }
    let handles: Vec<_> = nodes.iter().map(|n| n.handle()).collect();
    let started = Instant::now();
    for g in (1..groups).map(GroupId::new) {
        for h in &handles {
            h.create_group(g, [1, 2, 3].map(NodeId::new))
                .await
                .expect("create group");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let l = leaders(&handles, groups);
        if l.iter().all(Option::is_some) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {groups} groups without a leader after 120 s",
            l.iter().filter(|l| l.is_none()).count()
        );
        actix::clock::sleep(Duration::from_millis(100)).await;
    }
    let elected = started.elapsed();
    // Let elections' and creations' traffic drain.
    actix::clock::sleep(Duration::from_secs(5)).await;
    let (f0, b0) = frames_1_to_2(prom);
    let spun0 = counter_sum(prom, "conclave_idle_poll_microseconds_total", &[]);
    let syncs0 = counter_sum(prom, "conclave_wal_syncs_total", &[]);
    let c0 = cpu_ticks();
    let t0 = Instant::now();
    actix::clock::sleep(Duration::from_secs(secs)).await;
    let window = t0.elapsed().as_secs_f64();
    let cpu = (cpu_ticks() - c0) as f64 / clock_ticks_per_second() as f64;
    let (f1, b1) = frames_1_to_2(prom);
    let spun = counter_sum(prom, "conclave_idle_poll_microseconds_total", &[]) - spun0;
    let syncs = counter_sum(prom, "conclave_wal_syncs_total", &[]) - syncs0;
    let load = loadavg();
    // The first write to an idle group.
    let last = groups - 1;
    let leader = leaders(&handles, groups)[last as usize].expect("leader");
    let h = handles
        .iter()
        .find(|h| h.id() == leader)
        .expect("leader handle");
    let t = Instant::now();
    h.write_to(
        GroupId::new(last),
        KvRequest {
            id: None,
            op: KvCommand::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            },
        },
    )
    .await
    .expect("first write");
    let first_write = t.elapsed();
    println!(
        "groups={groups:>5} elected_in={:>6.1}s cpu_per_node={:>6.2}% of one core \
         frames_1to2={:>8.1}/s bytes_1to2={:>10.0}/s first_write={:>7.2}ms window={window:.0}s \
         idle_poll={:.2}% wal_syncs={:.1}/s loadavg={load}",
        elected.as_secs_f64(),
        100.0 * cpu / window / 3.0,
        (f1 - f0) / window,
        (b1 - b0) / window,
        first_write.as_secs_f64() * 1000.0,
        // Spun time per node as a share of one core (SCHED_IDLE: time nothing else wanted).
        100.0 * spun / 1e6 / window / 3.0,
        syncs / window,
    );
    // Node 1 crashes (or leaves: a graceful shutdown, which gossip reports `left` at once,
    // unlike a crash, which gossip detects only through its failure detector): how long until
    // every group it led, quiesced or not, has a leader among the two others.
    let crash = std::env::var("CONCLAVE_IDLE_FAILOVER").map_or(true, |s| s != "leave");
    let led: Vec<u64> = leaders(&handles, groups)
        .iter()
        .enumerate()
        .filter(|(_, l)| **l == Some(NodeId::new(1)))
        .map(|(g, _)| g as u64)
        .collect();
    let mut nodes = nodes.into_iter();
    let first = nodes.next().expect("node 1");
    let rest: Vec<Node<KvMachine>> = nodes.collect();
    let others: Vec<_> = rest.iter().map(|n| n.handle()).collect();
    let t = Instant::now();
    if crash {
        first.halt().await;
    } else {
        first.shutdown().await;
    }
    // Where the time goes: when the survivors' gossip first reports node 1 not alive, when
    // the first of its groups campaigns (pre-candidate or candidate on a survivor), and when
    // each of its groups has a new leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut suspected: Option<Duration> = None;
    let mut campaign: Option<Duration> = None;
    let mut elected: Vec<Option<Duration>> = vec![None; led.len()];
    let failover = loop {
        let now = t.elapsed();
        let statuses: Vec<_> = others.iter().map(|h| h.cluster_status()).collect();
        if suspected.is_none()
            && statuses.iter().any(|s| {
                s.members
                    .iter()
                    .any(|m| m.id == NodeId::new(1) && m.state != "alive")
            })
        {
            suspected = Some(now);
        }
        let mut leader = vec![false; groups as usize];
        for s in &statuses {
            for g in &s.groups {
                if g.id.get() >= groups {
                    continue;
                }
                if g.role == "leader" {
                    leader[g.id.get() as usize] = true;
                } else if g.role == "candidate" && campaign.is_none() {
                    campaign = Some(now);
                }
            }
        }
        for (i, g) in led.iter().enumerate() {
            if elected[i].is_none() && leader[*g as usize] {
                elected[i] = Some(now);
            }
        }
        if elected.iter().all(Option::is_some) {
            break Some(t.elapsed());
        }
        if Instant::now() > deadline {
            break None;
        }
        actix::clock::sleep(Duration::from_millis(5)).await;
    };
    let ms = |d: Option<Duration>| {
        d.map_or("-".to_owned(), |d| {
            format!("{:.0}", d.as_secs_f64() * 1000.0)
        })
    };
    let mut times: Vec<Duration> = elected.iter().flatten().copied().collect();
    times.sort();
    let pct = |p: f64| {
        times
            .get(((times.len() as f64 - 1.0) * p).round() as usize)
            .copied()
    };
    println!(
        "groups={groups:>5} node 1 {} leading {} groups: all re-elected in {} \
         (gossip suspects it at {} ms, first campaign at {} ms, new leaders at \
         first/median/last {}/{}/{} ms) loadavg={}",
        if crash { "crashed" } else { "left" },
        led.len(),
        failover.map_or("more than 30 s".to_owned(), |d| format!(
            "{:.0} ms",
            d.as_secs_f64() * 1000.0
        )),
        ms(suspected),
        ms(campaign),
        ms(pct(0.0)),
        ms(pct(0.5)),
        ms(pct(1.0)),
        loadavg(),
    );
    for n in rest {
        n.shutdown().await;
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from the command line.
    let points: Vec<u64> = std::env::var("CONCLAVE_IDLE_GROUPS")
        .unwrap_or_else(|_| "1,10,100".to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|n| *n >= 1)
        .collect();
    let secs: u64 = std::env::var("CONCLAVE_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let prom = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("metrics recorder");
    let system = actix::System::new();
    system.block_on(async move {
        for groups in points {
            point(groups, secs, &prom).await;
        }
    });
}
