//! The `conclave` command line (DESIGN.md §6): `init`, `node`, `dev`, `kv`, `status`,
//! `snapshot`, `member`, `ring route` and `bench`. The binary's `main` only calls [`main`].

pub mod bench;
mod dev;
mod init;
mod kv;
mod member;
mod node;

pub use init::{
    cluster_configs, node_dns_name, write_cluster, write_cluster_with, write_join, JoinSpec,
    SecureFiles,
};

use crate::client::{Client, ClientError, ClientOptions, DEFAULT_ENDPOINT};
use crate::config::{Config, ReadLevel};
use clap::{Args, Parser, Subcommand, ValueEnum};
use conclave_core::ids::{GroupId, NodeId, ShardId};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status of a successful command.
pub const EXIT_OK: u8 = 0;
/// Exit status of a failed command (a refused request, an unreachable node, a missing key).
pub const EXIT_FAILURE: u8 = 1;
/// Exit status for a configuration file that does not load (and clap's usage errors).
pub const EXIT_BAD_CONFIG: u8 = 2;

/// `conclave`: run and talk to a conclave cluster.
#[derive(Debug, Parser)]
#[command(name = "conclave", version, about, propagate_version = true)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write DIR/n1.toml … nN.toml for a local cluster (node i: transport P+i, HTTP P+100+i).
    Init(InitArgs),
    /// Run one node in the foreground; SIGTERM/SIGINT shut it down cleanly.
    Node(NodeArgs),
    /// Init (or reuse) a local cluster, start every node as a child process, wait for a
    /// leader and print the endpoints; Ctrl-C stops them all.
    Dev(DevArgs),
    /// Read and write keys through a node's HTTP API.
    Kv(KvArgs),
    /// Show the cluster as a node sees it: members, roles, terms, commit/applied, lag.
    Status(StatusArgs),
    /// Take a snapshot of a group's state machine on the node now (compacting its log).
    Snapshot(SnapshotArgs),
    /// Membership (admin): add a learner, promote, remove, replace a node, list the
    /// configuration.
    Member(member::MemberArgs),
    /// Ring inspection.
    #[command(subcommand)]
    Ring(RingCommand),
    /// Benchmarks: actor mailboxes against tokio/crossbeam, or load against a cluster.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// `conclave init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Number of nodes (1 to 99).
    #[arg(
        long,
        value_parser = clap::value_parser!(u16).range(1..=99),
        required_unless_present = "join",
        conflicts_with = "join"
    )]
    pub nodes: Option<u16>,
    /// Directory for the config files (created if missing); data goes to DIR/data/n{i}.
    #[arg(long)]
    pub dir: PathBuf,
    /// Base port P: node i listens on P+i (transport) and P+100+i (HTTP).
    #[arg(long, default_value_t = 7000)]
    pub base_port: u16,
    /// Overwrite existing config files.
    #[arg(long)]
    pub force: bool,
    /// Also write a CA, per-node certificates, a random cluster id and admin and client tokens
    /// (DIR/certs, DIR/tokens), and configs that use them: mutual TLS between nodes, HTTPS
    /// and bearer tokens on the API.
    #[arg(long, conflicts_with = "join")]
    pub secure: bool,
    /// Write the config of one node that joins an existing cluster (DIR/n{ID}.toml): it
    /// starts with no membership and waits until a member adds it (`conclave member add`).
    #[arg(long, requires_all = ["id", "listen", "http", "seeds"])]
    pub join: bool,
    /// `--join`: the new node's id (never used by a member before).
    #[arg(long, requires = "join")]
    pub id: Option<NodeId>,
    /// `--join`: its transport address.
    #[arg(long, requires = "join")]
    pub listen: Option<std::net::SocketAddr>,
    /// `--join`: its HTTP address.
    #[arg(long, requires = "join")]
    pub http: Option<std::net::SocketAddr>,
    /// `--join`: transport addresses of existing members, comma-separated.
    #[arg(long, requires = "join", value_delimiter = ',')]
    pub seeds: Vec<std::net::SocketAddr>,
    /// `--join`: an existing member's config file; the cluster id and secret, the TLS CA, the
    /// API tokens and the cluster-wide settings are taken from it.
    #[arg(long, requires = "join")]
    pub from: Option<PathBuf>,
    /// `--join` without `--from`: a file holding the cluster secret (never on the command
    /// line, where other users can read it).
    #[arg(long, requires = "join", conflicts_with = "from")]
    pub secret_file: Option<PathBuf>,
    /// `--join` without `--from`: the cluster id (default `conclave`).
    #[arg(long, requires = "join", conflicts_with = "from")]
    pub cluster_id: Option<String>,
    /// `--join --from` a cluster with TLS: the cluster CA's private key (certs/ca.key of
    /// `init --secure`), to issue this node's certificate (DIR/certs/n{ID}.crt/.key).
    #[arg(long, requires = "from")]
    pub ca_key: Option<PathBuf>,
}

/// `conclave node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The node's TOML configuration file.
    #[arg(long)]
    pub config: PathBuf,
}

/// `conclave dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Number of nodes (1 to 99).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=99))]
    pub nodes: u16,
    /// Directory for configs, data and logs; existing configs there are reused.
    #[arg(long, default_value = "conclave-dev")]
    pub dir: PathBuf,
    /// Base port P, as for `init`.
    #[arg(long, default_value_t = 7000)]
    pub base_port: u16,
    /// How long to wait for a leader, in seconds.
    #[arg(long, default_value_t = 30)]
    pub leader_timeout_s: u64,
    /// Make (or reuse) a secure cluster, as `init --secure`: TLS everywhere and tokens.
    #[arg(long)]
    pub secure: bool,
}

/// The node to talk to, and how.
#[derive(Debug, Args)]
pub struct EndpointArg {
    /// A node's HTTP endpoint (http:// or https://); followers forward to the leader.
    #[arg(long, global = true, env = "CONCLAVE_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// Bearer token (a client token for keys, an admin token for cluster changes).
    #[arg(long, global = true, env = "CONCLAVE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The cluster CA's certificate, to verify an https:// endpoint.
    #[arg(long, global = true, env = "CONCLAVE_CA")]
    pub ca: Option<PathBuf>,
}

impl EndpointArg {
    /// A client of the endpoint with the token and CA.
    pub fn client(&self) -> Result<Client, ClientError> {
        Client::with_options(
            &self.endpoint,
            &ClientOptions {
                token: self.token.clone(),
                ca: self.ca.clone(),
                ..ClientOptions::default()
            },
        )
    }
}

/// `conclave kv`.
#[derive(Debug, Args)]
pub struct KvArgs {
    /// The node to talk to.
    #[command(flatten)]
    pub endpoint: EndpointArg,
    /// The operation.
    #[command(subcommand)]
    pub op: KvOp,
}

/// Read consistency as the CLI spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    /// A quorum round confirms leadership.
    Linearizable,
    /// The leader's lease.
    Lease,
    /// Whatever the node has applied.
    Stale,
}

impl From<ConsistencyArg> for ReadLevel {
    fn from(c: ConsistencyArg) -> ReadLevel {
        match c {
            ConsistencyArg::Linearizable => ReadLevel::Linearizable,
            ConsistencyArg::Lease => ReadLevel::Lease,
            ConsistencyArg::Stale => ReadLevel::Stale,
        }
    }
}

/// `conclave kv …`.
#[derive(Debug, Subcommand)]
pub enum KvOp {
    /// Set KEY to VALUE.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Makes a retried write apply once.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Print KEY's value (exit 1 when absent).
    Get {
        /// The key.
        key: String,
        /// Read consistency (default: the node's `raft.read.default`).
        #[arg(long, value_enum)]
        consistency: Option<ConsistencyArg>,
    },
    /// Delete KEY.
    Del {
        /// The key.
        key: String,
        /// Makes a retried write apply once.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Compare-and-set: set KEY to --value (or delete it with --delete) if it holds
    /// --expected (or is absent with --absent). Exit 1 when the comparison fails.
    Cas(CasArgs),
}

/// `conclave kv cas`.
#[derive(Debug, Args)]
pub struct CasArgs {
    /// The key.
    pub key: String,
    /// The value KEY must hold.
    #[arg(long, conflicts_with = "absent", required_unless_present = "absent")]
    pub expected: Option<String>,
    /// KEY must be absent.
    #[arg(long)]
    pub absent: bool,
    /// The value to store.
    #[arg(long, conflicts_with = "delete", required_unless_present = "delete")]
    pub value: Option<String>,
    /// Delete KEY instead of storing a value.
    #[arg(long)]
    pub delete: bool,
    /// Makes a retried write apply once.
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

/// `conclave status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The node to ask.
    #[command(flatten)]
    pub endpoint: EndpointArg,
    /// Print the raw JSON of `GET /v1/cluster`.
    #[arg(long)]
    pub json: bool,
}

/// `conclave snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The group.
    #[arg(long, default_value_t = GroupId::FIRST)]
    pub group: GroupId,
    /// The node that takes it (each node snapshots its own state; nothing is forwarded).
    #[command(flatten)]
    pub endpoint: EndpointArg,
}

/// `conclave ring …`.
#[derive(Debug, Subcommand)]
pub enum RingCommand {
    /// Which shard, replicas and leader KEY maps to.
    Route {
        /// The key.
        key: String,
        /// The node to ask.
        #[command(flatten)]
        endpoint: EndpointArg,
    },
    /// Make NODE the preferred leader of SHARD (first among its replicas) through group 0 on
    /// a sharded cluster; moves no leadership by itself.
    Prefer {
        /// The shard.
        shard: ShardId,
        /// The replica to prefer.
        node: NodeId,
        /// Refuse (409 shard_map_changed) unless the committed map is at this version.
        #[arg(long)]
        expect_version: Option<u64>,
        /// The node to ask (any node: it forwards to group 0's leader).
        #[command(flatten)]
        endpoint: EndpointArg,
    },
}

/// Sets up logging: `RUST_LOG`, else `LOG_LEVEL`, else `info`, to stderr.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| {
            std::env::var("LOG_LEVEL")
                .ok()
                .filter(|s| !s.trim().is_empty())
        })
        .unwrap_or_else(|| "info".to_owned());
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("warning: ignoring log filter {spec:?} ({e}); using info");
        EnvFilter::new("info")
    });
    // No colour codes when stderr is a file (`conclave dev` sends node logs to files).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // A second initialisation (tests calling main twice) is harmless: keep the first.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Parses the command line, runs the command and returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(ClientError::Api { status, .. }) = e.downcast_ref::<ClientError>() {
                match status {
                    401 => eprintln!("hint: pass --token TOKEN or set CONCLAVE_TOKEN"),
                    403 => eprintln!("hint: this needs an admin token"),
                    _ => {}
                }
            }
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// How to use a secure cluster's CA and tokens (printed by `init --secure` and `dev --secure`).
pub(crate) fn print_secure_usage(files: &SecureFiles, first: Option<&Config>) {
    let endpoint = first.map_or_else(
        || "https://127.0.0.1:7101".to_owned(),
        |c| format!("https://{}", c.node.http),
    );
    println!("\nSecure cluster: TLS between nodes and on the API, bearer tokens required.");
    println!("  CA certificate: {}", files.ca_cert.display());
    println!(
        "  CA key:         {} (keep it offline; it signs new nodes)",
        files.ca_key.display()
    );
    println!(
        "  admin token:    {} (every route)",
        files.admin_token.display()
    );
    println!(
        "  client token:   {} (keys and status only)",
        files.client_token.display()
    );
    println!("Use them with:");
    println!("  export CONCLAVE_ENDPOINT={endpoint}");
    println!("  export CONCLAVE_CA={}", files.ca_cert.display());
    println!(
        "  export CONCLAVE_TOKEN=$(cat {})",
        files.client_token.display()
    );
    println!("  conclave kv put greeting hello");
    println!(
        "  curl --cacert {} -H \"Authorization: Bearer $CONCLAVE_TOKEN\" {endpoint}/v1/kv/greeting",
        files.ca_cert.display()
    );
}

/// Runs a parsed command; `Ok` carries the exit code.
pub fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Init(args) if args.join => {
            let (Some(id), Some(listen), Some(http)) = (args.id, args.listen, args.http) else {
                anyhow::bail!("--join needs --id, --listen and --http");
            };
            let (path, config) = write_join(&JoinSpec {
                id,
                dir: args.dir.clone(),
                listen,
                http,
                seeds: args.seeds.clone(),
                from: args.from.clone(),
                secret_file: args.secret_file.clone(),
                cluster_id: args.cluster_id.clone(),
                ca_key: args.ca_key.clone(),
                force: args.force,
            })?;
            println!(
                "wrote {} (node {id}: transport {listen}, http {http}; joins through {})",
                path.display(),
                config
                    .cluster
                    .seeds
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            println!("start it with: conclave node --config {}", path.display());
            println!(
                "then add it from the cluster: conclave member add {id} --addr {listen} --http {http}"
            );
            Ok(EXIT_OK)
        }
        Command::Init(args) => {
            let Some(nodes) = args.nodes else {
                anyhow::bail!("--nodes is required (or --join)");
            };
            let (written, secure) =
                write_cluster_with(nodes, &args.dir, args.base_port, args.force, args.secure)?;
            for (path, config) in &written {
                println!(
                    "wrote {} (node {}: transport {}, http {})",
                    path.display(),
                    config.node.id,
                    config.node.listen,
                    config.node.http
                );
            }
            println!(
                "start each node with: conclave node --config {}",
                args.dir.join("n1.toml").display()
            );
            if let Some(files) = &secure {
                print_secure_usage(files, written.first().map(|(_, c)| c));
            }
            Ok(EXIT_OK)
        }
        Command::Node(args) => run_node(&args),
        Command::Dev(args) => dev::run(&args),
        Command::Kv(args) => kv::run_kv(args),
        Command::Status(args) => kv::run_status(&args),
        Command::Snapshot(args) => kv::run_snapshot(&args),
        Command::Member(args) => member::run(args),
        Command::Ring(RingCommand::Route { key, endpoint }) => kv::run_route(&key, &endpoint),
        Command::Ring(RingCommand::Prefer {
            shard,
            node,
            expect_version,
            endpoint,
        }) => kv::run_prefer(shard, node, expect_version, &endpoint),
        Command::Bench(cmd) => bench::run(cmd),
    }
}

fn run_node(args: &NodeArgs) -> anyhow::Result<u8> {
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(EXIT_BAD_CONFIG);
        }
    };
    tracing::info!(
        node = %config.node.id,
        config = %args.config.display(),
        "starting node"
    );
    match conclave_node_run(config) {
        Ok(()) => Ok(0),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(EXIT_FAILURE)
        }
    }
}

fn conclave_node_run(config: Config) -> Result<(), node::RunError> {
    node::run_blocking(config)
}
