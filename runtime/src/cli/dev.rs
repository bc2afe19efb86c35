//! `conclave dev`: a local cluster of child processes, for trying conclave out.

use super::{print_secure_usage, write_cluster_with, DevArgs, SecureFiles, EXIT_OK};
use crate::client::{Client, ClientOptions};
use crate::config::Config;
use anyhow::{bail, Context};
use conclave_core::ids::NodeId;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long children get between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

struct Node {
    id: NodeId,
    config_path: PathBuf,
    log_path: PathBuf,
    http: String,
    /// How `dev` itself talks to the node (CA and admin token of a secure cluster).
    client: ClientOptions,
    child: Child,
    /// Set once its exit has been reported, so it is reported once.
    exited: bool,
}

/// The running children. Dropping it kills whatever is still running, so an error or a panic
/// in `dev` never leaves orphan nodes behind.
pub(super) struct Children(Vec<Node>);

impl Drop for Children {
    fn drop(&mut self) {
        for n in &mut self.0 {
            if let Ok(None) = n.child.try_wait() {
                let _ = n.child.kill();
                let _ = n.child.wait();
            }
        }
    }
}

impl Children {
    /// SIGTERM to every child still running, then SIGKILL to those still running after
    /// [`GRACE`].
    pub(super) fn shutdown(&mut self) {
        for n in &mut self.0 {
            if let Ok(None) = n.child.try_wait() {
                let pid = rustix::process::Pid::from_child(&n.child);
                if rustix::process::kill_process(pid, rustix::process::Signal::TERM).is_err() {
                    let _ = n.child.kill();
                }
            }
        }
        let deadline = Instant::now() + GRACE;
        for n in &mut self.0 {
            loop {
                match n.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        eprintln!("node {} did not stop within {GRACE:?}; killing it", n.id);
                        let _ = n.child.kill();
                        let _ = n.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }

    /// Reports children that exited since the last call.
    fn report_exits(&mut self) {
        for n in &mut self.0 {
            if n.exited {
                continue;
            }
            if let Ok(Some(status)) = n.child.try_wait() {
                n.exited = true;
                eprintln!(
                    "node {} exited ({status}); log: {}\n  restart it with: {} node --config {}",
                    n.id,
                    n.log_path.display(),
                    exe_name(),
                    n.config_path.display()
                );
            }
        }
    }
}

fn exe_name() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "conclave".to_owned())
}

/// The last lines of a log, for error messages.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The cluster's configs: those already in `dir` when all are there, else new ones.
fn configs(args: &DevArgs) -> anyhow::Result<Vec<(PathBuf, Config)>> {
    let paths: Vec<PathBuf> = (1..=args.nodes)
        .map(|i| args.dir.join(format!("n{i}.toml")))
        .collect();
    if paths.iter().all(|p| p.exists()) {
        println!("reusing the configs in {}", args.dir.display());
        let configs: Vec<(PathBuf, Config)> = paths
            .into_iter()
            .map(|p| {
                let c = Config::load(&p)?;
                Ok::<_, anyhow::Error>((p, c))
            })
            .collect::<Result<_, _>>()?;
        let secure = configs
            .iter()
            .all(|(_, c)| c.http.tokens.is_some() && c.http.tls.is_some());
        if args.secure && !secure {
            bail!(
                "--secure: the existing configs in {} are not secure; remove the directory or \
                 pass another --dir",
                args.dir.display()
            );
        }
        return Ok(configs);
    }
    let (written, _) =
        write_cluster_with(args.nodes, &args.dir, args.base_port, false, args.secure)
            .context("cannot initialise the dev cluster (remove the directory or pass --dir)")?;
    println!(
        "wrote {} node configs to {}",
        written.len(),
        args.dir.display()
    );
    Ok(written)
}

/// The endpoint and client options `dev` uses for a node: HTTPS with the configured CA and
/// the first admin token when the config has them.
fn client_of(config: &Config) -> anyhow::Result<(String, ClientOptions)> {
    let mut options = ClientOptions::default();
    let scheme = match &config.http.tls {
        Some(t) => {
            options.ca =
                t.ca.clone()
                    .or_else(|| config.tls.as_ref().map(|tr| tr.ca.clone()));
            "https"
        }
        None => "http",
    };
    if let Some(tokens) = &config.http.tokens {
        options.token = match (&tokens.admin_file, tokens.admin.first()) {
            (_, Some(t)) => Some(t.clone()),
            (Some(path), None) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the admin token {}", path.display()))?
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
            (None, None) => None,
        };
    }
    Ok((format!("{scheme}://{}", config.node.http), options))
}

/// Starts `conclave node --config …` (this executable) for every config, logging to
/// `log_dir/n{id}.log`. The returned children are killed when dropped.
pub(super) fn spawn_nodes(
    configs: &[(PathBuf, Config)],
    log_dir: &Path,
) -> anyhow::Result<Children> {
    std::fs::create_dir_all(log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    let exe = std::env::current_exe().context("cannot find the conclave executable")?;
    let mut children = Children(Vec::with_capacity(configs.len()));
    for (path, config) in configs {
        let log_path = log_dir.join(format!("n{}.log", config.node.id));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let log_err = log.try_clone()?;
        let child = Command::new(&exe)
            .arg("node")
            .arg("--config")
            .arg(path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("cannot start node {}", config.node.id))?;
        let (http, client) = client_of(config)?;
        children.0.push(Node {
            id: config.node.id,
            config_path: path.clone(),
            log_path,
            http,
            client,
            child,
            exited: false,
        });
    }
    Ok(children)
}

pub(super) fn run(args: &DevArgs) -> anyhow::Result<u8> {
    let configs = configs(args)?;
    let log_dir = args.dir.join("logs");
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    let mut children = spawn_nodes(&configs, &log_dir)?;
    let timeout = Duration::from_secs(args.leader_timeout_s);
    let outcome = actix_web::rt::System::new().block_on(async {
        let leader = wait_for_leader(&mut children, timeout).await?;
        print_banner(&children, &configs, leader, &args.dir);
        wait_for_stop(&mut children).await
    });
    println!("stopping {} nodes…", children.0.len());
    children.shutdown();
    outcome?;
    Ok(EXIT_OK)
}

/// Polls every node's `/v1/cluster` until one knows a leader. Fails when a node exits or the
/// timeout passes, quoting the node's log.
pub(super) async fn wait_for_leader(
    children: &mut Children,
    timeout: Duration,
) -> anyhow::Result<(NodeId, u64)> {
    let clients: Vec<Client> = children
        .0
        .iter()
        .map(|n| {
            Client::with_options(
                &n.http,
                &ClientOptions {
                    timeout: Duration::from_millis(500),
                    ..n.client.clone()
                },
            )
        })
        .collect::<Result<_, _>>()?;
    let deadline = Instant::now() + timeout;
    loop {
        for n in &mut children.0 {
            if let Ok(Some(status)) = n.child.try_wait() {
                bail!(
                    "node {} exited ({status}) before a leader was elected; last lines of {}:\n{}",
                    n.id,
                    n.log_path.display(),
                    tail(&n.log_path, 20)
                );
            }
        }
        for c in &clients {
            if let Ok(s) = c.status().await {
                if let Some(leader) = s.leader_id {
                    return Ok((leader, s.term));
                }
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "no leader was elected within {timeout:?}; see the logs in {}",
                children
                    .0
                    .first()
                    .and_then(|n| n.log_path.parent())
                    .map_or_else(String::new, |p| p.display().to_string())
            );
        }
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_banner(
    children: &Children,
    configs: &[(PathBuf, Config)],
    leader: (NodeId, u64),
    dir: &Path,
) {
    println!(
        "\nconclave dev: {} nodes running (configs, data and logs in {})",
        children.0.len(),
        dir.display()
    );
    for (n, (_, c)) in children.0.iter().zip(configs) {
        println!(
            "  node {}  pid {:<7} http {}  transport {}  log {}",
            n.id,
            n.child.id(),
            n.http,
            c.node.listen,
            n.log_path.display()
        );
    }
    println!("leader: node {} (term {})", leader.0, leader.1);
    if configs
        .first()
        .is_some_and(|(_, c)| c.http.tokens.is_some())
    {
        let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        print_secure_usage(&SecureFiles::in_dir(&abs), configs.first().map(|(_, c)| c));
        println!("\nPress Ctrl-C to stop every node.");
        return;
    }
    let first = children
        .0
        .first()
        .map_or("http://127.0.0.1:7101", |n| n.http.as_str());
    let second = children.0.get(1).map_or(first, |n| n.http.as_str());
    println!("\nTry:");
    println!("  curl -X PUT --data-binary hello {first}/v1/kv/greeting");
    println!("  curl {second}/v1/kv/greeting");
    println!("  conclave kv get greeting --endpoint {second}");
    println!("  conclave status --endpoint {first}");
    println!("(from the source tree, `conclave` is `cargo run --release --`)");
    println!("\nPress Ctrl-C to stop every node.");
}

/// Waits for Ctrl-C or SIGTERM, reporting children that exit meanwhile (a killed leader is
/// part of the tour, so an exit does not end `dev`).
async fn wait_for_stop(children: &mut Children) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
            () = actix_web::rt::time::sleep(Duration::from_millis(500)) => children.report_exits(),
        }
    }
}
