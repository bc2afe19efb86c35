//! `conclave bench mailbox` and `conclave bench cluster`: benchmarks with a progress bar
//! (stderr, only on a terminal and without `--json`), a results table and `--json`.
//! `docs/performance.md` explains the paths, the baselines and the numbers.

pub mod cluster;
pub mod mailbox;
pub mod report;

use super::dev::{spawn_nodes, wait_for_leader};
use super::{write_cluster, ConsistencyArg, EXIT_OK};
use crate::config::ReadLevel;
use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mailbox::{MailboxOptions, MailboxPath};
use report::{fmt_rate, fmt_us, median, rate, ratio, table};
use serde::Serialize;
use std::io::IsTerminal;
use std::time::Duration;

/// `conclave bench …`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Actor message paths (plain actix and conclave's batched mailbox) against tokio and
    /// crossbeam channels measured in the same run.
    Mailbox(MailboxArgs),
    /// A load generator against a running cluster (or one it starts with --spawn).
    Cluster(ClusterArgs),
}

/// `conclave bench mailbox`.
#[derive(Debug, Args)]
pub struct MailboxArgs {
    /// Messages per path and round.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: u64,
    /// Producers (tasks on the same thread, or threads for the cross-thread paths).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub producers: u64,
    /// Capacity of the bounded mailboxes (request-reply and try-send-full paths).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub capacity: u64,
    /// Extra payload bytes per message (0: one u64 only).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
    pub payload: u64,
    /// Rounds per path; the median round is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub rounds: u64,
    /// Only these paths (comma separated names; baselines of the chosen paths are added).
    #[arg(long, value_delimiter = ',')]
    pub paths: Vec<String>,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// `conclave bench cluster`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// HTTP endpoints (`http://host:port`, comma separated); ignored with --spawn.
    #[arg(long, value_delimiter = ',', default_value = crate::client::DEFAULT_ENDPOINT)]
    pub endpoints: Vec<String>,
    /// Start a local durable cluster of N nodes in a temporary directory, run, stop it.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub spawn: Option<u16>,
    /// With --spawn: serve keys from this many shard groups (`[ring] sharded`, replication
    /// factor 3; the run starts once every shard has a leader and the leaders are spread);
    /// 0: not sharded, group 0 serves every key.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=65_536))]
    pub shards: u64,
    /// Send every request to the group's leader (`leader`) or spread clients over all
    /// endpoints (`all`; followers forward to the leader).
    #[arg(long, value_enum, default_value = "leader")]
    pub target: TargetArg,
    /// Concurrent clients (connections, one request in flight each).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub clients: u64,
    /// How long to run, seconds (default 10 unless --ops is given).
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Stop after this many operations.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub ops: Option<u64>,
    /// Keys are drawn uniformly from 0..KEYSPACE.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keyspace: u64,
    /// Key size in bytes (decimal digits).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=20))]
    pub key_size: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(0..=16_777_216))]
    pub value_size: u64,
    /// Fraction of reads, 0 to 1 (0: writes only).
    #[arg(long, default_value_t = 0.0)]
    pub read_fraction: f64,
    /// Read consistency.
    #[arg(long, value_enum, default_value = "linearizable")]
    pub consistency: ConsistencyArg,
    /// Per-request timeout, milliseconds.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// Worker threads of the generator.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub threads: u64,
    /// Seed of the key and operation choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Where the clients send their requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetArg {
    /// The leader of group 0.
    Leader,
    /// Every endpoint, round robin over clients.
    All,
}

/// Runs a bench subcommand.
pub fn run(cmd: BenchCommand) -> anyhow::Result<u8> {
    match cmd {
        BenchCommand::Mailbox(a) => run_mailbox(&a),
        BenchCommand::Cluster(a) => run_cluster(&a),
    }
}

fn progress(len: u64, json: bool, template: &str) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// The mailbox options and paths an argument set asks for.
pub fn mailbox_plan(a: &MailboxArgs) -> anyhow::Result<(MailboxOptions, Vec<MailboxPath>)> {
    let o = MailboxOptions {
        messages: a.messages,
        producers: usize::try_from(a.producers)?,
        capacity: usize::try_from(a.capacity)?,
        payload: usize::try_from(a.payload)?,
        rounds: usize::try_from(a.rounds)?,
    };
    anyhow::ensure!(
        o.per_producer() > 0,
        "--messages ({}) must be at least --producers ({})",
        o.messages,
        o.producers
    );
    let paths = if a.paths.is_empty() {
        MailboxPath::ALL.to_vec()
    } else {
        let mut chosen = Vec::new();
        for name in &a.paths {
            let p = MailboxPath::ALL
                .into_iter()
                .find(|p| p.name() == name.trim())
                .with_context(|| {
                    format!(
                        "unknown path {name:?}; known: {}",
                        MailboxPath::ALL.map(MailboxPath::name).join(", ")
                    )
                })?;
            chosen.push(p);
            chosen.extend(p.baseline());
        }
        // Keep the canonical order, once each.
        MailboxPath::ALL
            .into_iter()
            .filter(|p| chosen.contains(p))
            .collect()
    };
    Ok((o, paths))
}

/// One row of the mailbox report.
#[derive(Clone, Debug, Serialize)]
pub struct MailboxRow {
    /// The path's name.
    pub path: &'static str,
    /// actix, conclave or baseline.
    pub kind: mailbox::PathKind,
    /// Messages per round.
    pub messages: u64,
    /// Median messages per second.
    pub rate: f64,
    /// Each round's rate.
    pub rounds: Vec<f64>,
    /// The baseline's name.
    pub baseline: Option<&'static str>,
    /// `rate / baseline rate`.
    pub ratio: Option<f64>,
}

/// Median rates per path and the ratios against each path's baseline.
pub fn mailbox_rows(results: &[(MailboxPath, Vec<f64>)], messages: u64) -> Vec<MailboxRow> {
    let rate_of = |p: MailboxPath| {
        results
            .iter()
            .find(|(q, _)| *q == p)
            .and_then(|(_, r)| median(r))
    };
    results
        .iter()
        .map(|(p, rounds)| {
            let r = median(rounds).unwrap_or(0.0);
            let baseline = p.baseline();
            MailboxRow {
                path: p.name(),
                kind: p.kind(),
                messages,
                rate: r,
                rounds: rounds.clone(),
                baseline: baseline.map(MailboxPath::name),
                ratio: baseline.and_then(rate_of).and_then(|b| ratio(r, b)),
            }
        })
        .collect()
}

fn run_mailbox(a: &MailboxArgs) -> anyhow::Result<u8> {
    let (o, paths) = mailbox_plan(a)?;
    let bar = progress(
        (paths.len() * o.rounds) as u64,
        a.json,
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
    );
    // Rounds are interleaved (round 1 of every path, then round 2, …) so that a burst of
    // load from elsewhere on the machine hits paths and baselines alike.
    let mut results: Vec<(MailboxPath, Vec<f64>)> = paths
        .iter()
        .map(|p| (*p, Vec::with_capacity(o.rounds)))
        .collect();
    for round in 0..o.rounds {
        for (p, rates) in &mut results {
            bar.set_message(format!("{} round {}", p.name(), round + 1));
            let d = p.run(&o).with_context(|| format!("path {}", p.name()))?;
            rates.push(rate(o.total(), d));
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let rows = mailbox_rows(&results, o.total());
    if a.json {
        #[derive(Serialize)]
        struct Out<'a> {
            command: &'static str,
            options: &'a MailboxOptions,
            rows: &'a [MailboxRow],
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&Out {
                command: "mailbox",
                options: &o,
                rows: &rows,
            })?
        );
        return Ok(EXIT_OK);
    }
    println!(
        "conclave bench mailbox: {} messages/round ({} producer(s), capacity {}, payload {} B), median of {} round(s)\n",
        o.total(),
        o.producers,
        o.capacity,
        o.payload,
        o.rounds
    );
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.path.to_owned(),
                fmt_rate(r.rate),
                r.baseline.unwrap_or("-").to_owned(),
                r.ratio
                    .map_or_else(|| "-".to_owned(), |x| format!("{x:.2}x")),
            ]
        })
        .collect();
    print!("{}", table(&["path", "msgs/s", "baseline", "ratio"], &body));
    Ok(EXIT_OK)
}

/// Turns `http://host:port` (or `host:port`) into `host:port`.
pub fn authority(endpoint: &str) -> anyhow::Result<String> {
    let e = endpoint.trim().trim_end_matches('/');
    let a = e.strip_prefix("http://").unwrap_or(e);
    anyhow::ensure!(
        !a.is_empty() && !a.contains('/') && !e.starts_with("https://") && a.contains(':'),
        "invalid endpoint {endpoint:?}: expected http://HOST:PORT"
    );
    Ok(a.to_owned())
}

/// Checks the cluster arguments and turns them into options (targets still to resolve).
pub fn cluster_options(a: &ClusterArgs) -> anyhow::Result<cluster::ClusterOptions> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&a.read_fraction),
        "--read-fraction must be between 0 and 1"
    );
    let duration = match (a.duration_s, a.ops) {
        (Some(d), _) => {
            anyhow::ensure!(
                d.is_finite() && d > 0.0 && d <= 86_400.0,
                "--duration-s must be above 0 and at most 86400"
            );
            Some(Duration::from_secs_f64(d))
        }
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let targets = a
        .endpoints
        .iter()
        .map(|e| authority(e))
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!targets.is_empty(), "no endpoint given");
    Ok(cluster::ClusterOptions {
        targets,
        clients: usize::try_from(a.clients)?,
        duration,
        ops: a.ops,
        keyspace: a.keyspace,
        key_size: usize::try_from(a.key_size)?,
        value_size: usize::try_from(a.value_size)?,
        read_fraction: a.read_fraction,
        consistency: ReadLevel::from(a.consistency),
        timeout: Duration::from_millis(a.timeout_ms),
        seed: a.seed,
        threads: usize::try_from(a.threads)?,
    })
}

/// A base port P such that P+1..=P+n and P+101..=P+100+n are free on loopback now.
fn free_base_port(n: u16) -> anyhow::Result<u16> {
    let pid = u16::try_from(std::process::id() % 100).unwrap_or(0);
    for step in 0..200u16 {
        let base = 20_000 + ((pid + step) % 200) * 200;
        let free = (1..=n)
            .flat_map(|i| [base + i, base + 100 + i])
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return Ok(base);
        }
    }
    anyhow::bail!("no free loopback ports for a {n}-node cluster")
}

fn run_cluster(a: &ClusterArgs) -> anyhow::Result<u8> {
    let mut o = cluster_options(a)?;
    // A spawned cluster lives in a temporary directory removed afterwards.
    let mut spawned = None;
    if let Some(n) = a.spawn {
        let dir = std::env::temp_dir().join(format!(
            "conclave-bench-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        ));
        let base = free_base_port(n)?;
        let mut configs = write_cluster(n, &dir, base, false)?;
        if a.shards > 0 {
            for (path, c) in &mut configs {
                c.ring.sharded = true;
                c.ring.shards = a.shards;
                c.ring.replication_factor = 3;
                let body = c.to_toml().context("cannot serialise the config")?;
                std::fs::write(&*path, body)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
        let mut children = spawn_nodes(&configs, &dir.join("logs"))?;
        let http: Vec<String> = configs
            .iter()
            .map(|(_, c)| format!("http://{}", c.node.http))
            .collect();
        let waited = actix_web::rt::System::new().block_on(async {
            wait_for_leader(&mut children, Duration::from_secs(30)).await?;
            if a.shards > 0 {
                let spread = wait_for_shards(&http, Duration::from_secs(60)).await?;
                if !a.json {
                    eprintln!("{} shards led, leaders per node {spread:?}", a.shards);
                }
            }
            Ok::<(), anyhow::Error>(())
        });
        if let Err(e) = waited {
            children.shutdown();
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        if !a.json {
            eprintln!("started a {n}-node durable cluster in {}", dir.display());
        }
        o.targets = configs
            .iter()
            .map(|(_, c)| c.node.http.to_string())
            .collect();
        spawned = Some((children, dir));
    }
    let outcome = drive_cluster(a, o);
    if let Some((mut children, dir)) = spawned {
        children.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }
    let (o, r) = outcome?;
    print_cluster(a, &o, &r)?;
    Ok(EXIT_OK)
}

/// Waits until every shard of a spawned sharded cluster has a leader that reports itself and
/// the leaders per node are spread (max/min ≤ 1.5, what the leader balancer reaches); answers
/// the leaders per node. Past `timeout` with leaders for every shard, the run goes ahead
/// (reported); without, it fails.
async fn wait_for_shards(endpoints: &[String], timeout: Duration) -> anyhow::Result<Vec<usize>> {
    let clients: Vec<crate::client::Client> = endpoints
        .iter()
        .map(|e| crate::client::Client::with_timeout(e, Duration::from_secs(2)))
        .collect::<Result<_, _>>()?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut led = Vec::new();
        let mut shards = None;
        for c in &clients {
            if let Ok(s) = c.shards().await {
                shards = Some(s.shards.len());
                led.push(
                    s.shards
                        .iter()
                        .filter(|sh| sh.leader == Some(s.node_id))
                        .count(),
                );
            }
        }
        let every = led.len() == clients.len() && Some(led.iter().sum::<usize>()) == shards;
        let (max, min) = (
            led.iter().copied().max().unwrap_or(0),
            led.iter().copied().min().unwrap_or(0),
        );
        if every && min > 0 && max * 2 <= min * 3 {
            return Ok(led);
        }
        // Fewer shards than nodes can never spread: every shard led is enough.
        if every && shards.is_some_and(|s| s < clients.len()) {
            return Ok(led);
        }
        if std::time::Instant::now() >= deadline {
            if every {
                eprintln!("leaders not spread after {timeout:?}: {led:?}; running anyway");
                return Ok(led);
            }
            anyhow::bail!("shards without a leader after {timeout:?}: leaders per node {led:?}");
        }
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
}

fn drive_cluster(
    a: &ClusterArgs,
    mut o: cluster::ClusterOptions,
) -> anyhow::Result<(cluster::ClusterOptions, cluster::ClusterReport)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.threads)
        .enable_all()
        .build()?;
    rt.block_on(async {
        if a.target == TargetArg::Leader {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let leader = loop {
                let mut found = None;
                for t in &o.targets {
                    if let Ok(Some(l)) = cluster::find_leader(t).await {
                        found = Some(l);
                        break;
                    }
                }
                if let Some(l) = found {
                    break l;
                }
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "no endpoint of {:?} knows a leader",
                    o.targets
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            o.targets = vec![leader];
        }
        let len = o
            .ops
            .unwrap_or_else(|| o.duration.map_or(0, |d| d.as_millis() as u64));
        let by_ops = o.ops.is_some();
        let bar = progress(
            len,
            a.json,
            "{spinner} [{elapsed_precise}] {bar:30} {percent}% {msg}",
        );
        let b = bar.clone();
        let r = cluster::run(o.clone(), move |live, elapsed| {
            use std::sync::atomic::Ordering;
            let ok = live.ok.load(Ordering::Relaxed);
            b.set_position(if by_ops {
                ok
            } else {
                elapsed.as_millis() as u64
            });
            b.set_message(format!(
                "{} ops, {} ops/s, {} errors",
                ok,
                fmt_rate(rate(ok, elapsed)),
                live.errors.load(Ordering::Relaxed)
            ));
        })
        .await;
        bar.finish_and_clear();
        Ok((o, r?))
    })
}

fn print_cluster(
    a: &ClusterArgs,
    o: &cluster::ClusterOptions,
    r: &cluster::ClusterReport,
) -> anyhow::Result<()> {
    if a.json {
        #[derive(Serialize)]
        struct Out<'a> {
            command: &'static str,
            options: &'a cluster::ClusterOptions,
            report: &'a cluster::ClusterReport,
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&Out {
                command: "cluster",
                options: o,
                report: r,
            })?
        );
        return Ok(());
    }
    println!(
        "conclave bench cluster: {} clients against {}, {:.1} s, key {} B, value {} B, reads {:.0}% ({})\n",
        o.clients,
        o.targets.join(","),
        r.elapsed_s,
        o.key_size,
        o.value_size,
        o.read_fraction * 100.0,
        cluster::level_name(o.consistency)
    );
    let row = |name: &str, op: &cluster::OpReport| {
        let l = &op.latency;
        vec![
            name.to_owned(),
            op.ok.to_string(),
            fmt_rate(op.per_s),
            fmt_us(l.p50_us),
            fmt_us(l.p90_us),
            fmt_us(l.p99_us),
            fmt_us(l.p999_us),
            fmt_us(l.max_us),
        ]
    };
    let mut rows = Vec::new();
    if r.writes.ok > 0 || o.read_fraction < 1.0 {
        rows.push(row("write", &r.writes));
    }
    if r.reads.ok > 0 || o.read_fraction > 0.0 {
        rows.push(row("read", &r.reads));
    }
    print!(
        "{}",
        table(
            &["op", "ok", "ops/s", "p50", "p90", "p99", "p99.9", "max"],
            &rows
        )
    );
    let secs: Vec<String> = r.per_second.iter().map(u64::to_string).collect();
    println!("\nops per second: {}", secs.join(" "));
    if r.not_found > 0 {
        println!(
            "reads of keys never written (404, counted as ok): {}",
            r.not_found
        );
    }
    if r.errors_total == 0 {
        println!("errors: none");
    } else {
        let kinds: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("errors: {} ({})", r.errors_total, kinds.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<BenchCommand, clap::Error> {
        let mut v = vec!["conclave", "bench"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).map(|c| match c.command {
            Command::Bench(b) => b,
            other => panic!("parsed as {other:?}"),
        })
    }

    #[test]
    fn mailbox_defaults_and_path_selection() {
        let BenchCommand::Mailbox(a) = parse(&["mailbox"]).unwrap() else {
            panic!("not mailbox")
        };
        let (o, paths) = mailbox_plan(&a).unwrap();
        assert_eq!(
            (o.messages, o.producers, o.capacity, o.payload, o.rounds),
            (1_000_000, 1, 16, 0, 3)
        );
        assert_eq!(paths.len(), MailboxPath::ALL.len());
        let BenchCommand::Mailbox(a) = parse(&["mailbox", "--paths", "conclave-cross"]).unwrap()
        else {
            panic!("not mailbox")
        };
        let (_, paths) = mailbox_plan(&a).unwrap();
        assert_eq!(
            paths,
            vec![MailboxPath::TokioCross, MailboxPath::ConclaveCross]
        );
        let BenchCommand::Mailbox(a) = parse(&["mailbox", "--paths", "nope"]).unwrap() else {
            panic!("not mailbox")
        };
        assert!(mailbox_plan(&a).is_err());
        let BenchCommand::Mailbox(a) =
            parse(&["mailbox", "--messages", "2", "--producers", "3"]).unwrap()
        else {
            panic!("not mailbox")
        };
        assert!(mailbox_plan(&a).is_err());
        assert!(parse(&["mailbox", "--producers", "0"]).is_err());
        assert!(parse(&["mailbox", "--messages", "0"]).is_err());
    }

    #[test]
    fn cluster_arguments_are_validated() {
        let BenchCommand::Cluster(a) = parse(&["cluster"]).unwrap() else {
            panic!("not cluster")
        };
        let o = cluster_options(&a).unwrap();
        assert_eq!(o.targets, vec!["127.0.0.1:7101".to_owned()]);
        assert_eq!(o.duration, Some(Duration::from_secs(10)));
        assert_eq!((o.key_size, o.value_size, o.clients), (8, 256, 64));
        let BenchCommand::Cluster(a) =
            parse(&["cluster", "--ops", "100", "--endpoints", "http://a:1,b:2"]).unwrap()
        else {
            panic!("not cluster")
        };
        let o = cluster_options(&a).unwrap();
        assert_eq!(o.duration, None);
        assert_eq!(o.targets, vec!["a:1".to_owned(), "b:2".to_owned()]);
        for bad in [
            vec!["cluster", "--read-fraction", "1.5"],
            vec!["cluster", "--duration-s", "0"],
            vec!["cluster", "--endpoints", "https://a:1"],
            vec!["cluster", "--endpoints", "http://a:1/x"],
        ] {
            let BenchCommand::Cluster(a) = parse(&bad).unwrap() else {
                panic!("not cluster")
            };
            assert!(cluster_options(&a).is_err(), "{bad:?}");
        }
        assert!(parse(&["cluster", "--clients", "0"]).is_err());
        assert!(parse(&["cluster", "--spawn", "0"]).is_err());
    }

    #[test]
    fn ratios_use_each_paths_baseline_median() {
        let results = vec![
            (MailboxPath::TokioCross, vec![100.0, 300.0, 200.0]),
            (MailboxPath::ConclaveCross, vec![500.0, 400.0, 100.0]),
        ];
        let rows = mailbox_rows(&results, 10);
        assert_eq!(rows[0].ratio, None);
        assert_eq!(rows[0].rate, 200.0);
        assert_eq!(rows[1].rate, 400.0);
        assert_eq!(rows[1].ratio, Some(2.0));
        assert_eq!(rows[1].baseline, Some("tokio-cross"));
    }
}
