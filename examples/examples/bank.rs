//! A replicated bank: your own state machine on a three-node conclave cluster in one process.
//!
//! ```text
//! cargo run -p examples --example bank
//! ```
//!
//! Accounts hold balances; transfers that would overdraw an account are refused. Every replica
//! applies the same committed commands in the same order, so every replica refuses the same
//! transfers and ends with the same balances — which the example checks by reading each node.

use anyhow::{bail, Context, Result};
use conclave::api::NodeId;
use conclave::config::{Config, MemberConfig, ReadLevel};
use conclave::node::{Node, NodeHandle, WriteResult};
use conclave::state_machine::{LogIndex, SnapshotStreamError, StateMachine, StateMachineError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

// ---- The state machine: this is all the user code conclave needs. ----

/// The replicated state: balances by account name. A `BTreeMap`, not a `HashMap`, so that the
/// snapshot bytes are the same on every replica.
#[derive(Clone, Debug, Default)]
struct Bank {
    accounts: BTreeMap<String, u64>,
    /// The index of the last entry applied (what a snapshot of this state is "at").
    applied: LogIndex,
}

/// A write, replicated through the Raft log.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum BankCommand {
    Open {
        account: String,
        deposit: u64,
    },
    Deposit {
        account: String,
        amount: u64,
    },
    Transfer {
        from: String,
        to: String,
        amount: u64,
    },
}

/// Why a command was refused. Refusals are ordinary outputs, not errors: they are decided by
/// the replicated state, so every replica reaches the same verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// `Open` of an account that already exists.
    AccountExists(String),
    /// The command names an account that was never opened.
    UnknownAccount(String),
    /// The transfer would overdraw the source account.
    InsufficientFunds {
        /// The source account's balance.
        balance: u64,
        /// The amount asked for.
        wanted: u64,
    },
    /// The credit would overflow a `u64` balance.
    BalanceOverflow,
}

/// What applying a command returns to the client: the touched account's new balance.
pub type BankOutput = Result<u64, Refusal>;

impl Bank {
    fn balance(&self, account: &str) -> Result<u64, Refusal> {
        self.accounts
            .get(account)
            .copied()
            .ok_or_else(|| Refusal::UnknownAccount(account.to_owned()))
    }

    fn execute(&mut self, command: BankCommand) -> BankOutput {
        match command {
            BankCommand::Open { account, deposit } => {
                if self.accounts.contains_key(&account) {
                    return Err(Refusal::AccountExists(account));
                }
                self.accounts.insert(account, deposit);
                Ok(deposit)
            }
            BankCommand::Deposit { account, amount } => {
                let balance = self
                    .balance(&account)?
                    .checked_add(amount)
                    .ok_or(Refusal::BalanceOverflow)?;
                self.accounts.insert(account, balance);
                Ok(balance)
            }
            BankCommand::Transfer { from, to, amount } => {
                // Validate everything before changing anything: a refused transfer leaves no trace.
                let from_balance = self.balance(&from)?;
                let to_balance = self.balance(&to)?;
                let Some(left) = from_balance.checked_sub(amount) else {
                    return Err(Refusal::InsufficientFunds {
                        balance: from_balance,
                        wanted: amount,
                    });
                };
                if from == to {
                    return Ok(from_balance);
                }
                let credited = to_balance
                    .checked_add(amount)
                    .ok_or(Refusal::BalanceOverflow)?;
                self.accounts.insert(from, left);
                self.accounts.insert(to, credited);
                Ok(left)
            }
        }
    }
}

impl StateMachine for Bank {
    type Command = BankCommand;
    type Output = BankOutput;
    type Query = String; // an account name
    type QueryOutput = Option<u64>;

    fn apply(
        &mut self,
        index: LogIndex,
        command: BankCommand,
    ) -> Result<BankOutput, StateMachineError> {
        self.applied = index;
        Ok(self.execute(command))
    }

    fn skip(&mut self, index: LogIndex) -> Result<(), StateMachineError> {
        self.applied = index;
        Ok(())
    }

    fn query(&self, account: &String) -> Option<u64> {
        self.accounts.get(account).copied()
    }

    /// The image is `(applied index, balances)` as JSON, written straight to `out` (serde
    /// streams the map; nothing is collected first).
    fn snapshot_to(&self, out: &mut dyn Write) -> Result<LogIndex, StateMachineError> {
        serde_json::to_writer(out, &(self.applied, &self.accounts)).map_err(encoding)?;
        Ok(self.applied)
    }

    /// Parses the whole image before touching the state, so a bad one changes nothing.
    fn restore_from(
        &mut self,
        index: LogIndex,
        input: &mut dyn Read,
    ) -> Result<(), StateMachineError> {
        let (at, accounts): (LogIndex, BTreeMap<String, u64>) =
            serde_json::from_reader(input).map_err(encoding)?;
        if at != index {
            return Err(SnapshotStreamError::Index {
                expected: index,
                found: at,
            }
            .into());
        }
        self.accounts = accounts;
        self.applied = index;
        Ok(())
    }
}

fn encoding(e: serde_json::Error) -> StateMachineError {
    SnapshotStreamError::Encoding(Box::new(e)).into()
}

// ---- Running it: three nodes in this process, talking over loopback TCP. ----

/// Each account's balance as one node reads it (`None`: no such account).
pub type Balances = Vec<(String, Option<u64>)>;

/// What the run observed, for the smoke test (`examples/tests/examples_run.rs`).
#[derive(Debug)]
pub struct BankRun {
    /// The outcome of each command, in the order they were sent.
    pub outcomes: Vec<BankOutput>,
    /// `(node id, balance of every account)` as each node's own replica reports it.
    pub replicas: Vec<(NodeId, Balances)>,
}

const ACCOUNTS: [&str; 3] = ["alice", "bob", "carol"];

/// Starts a three-node bank cluster under `dir`, runs a few commands, reads every replica and
/// shuts the cluster down.
pub async fn run(dir: &Path) -> Result<BankRun> {
    let configs = local_cluster(3, dir)?;
    let mut nodes = Vec::new();
    for config in configs {
        // An in-memory machine: on a restart the node replays its log into a fresh clone.
        nodes.push(
            Node::builder()
                .config(config)
                .state_machine(Bank::default())
                .start()
                .await?,
        );
    }
    let handles: Vec<NodeHandle<Bank>> = nodes.iter().map(Node::handle).collect();
    let leader = wait_for_leader(&handles).await?;
    println!("3 nodes up, node {} leads", leader.id());

    let transfer = |from: &str, to: &str, amount| BankCommand::Transfer {
        from: from.into(),
        to: to.into(),
        amount,
    };
    let commands = [
        BankCommand::Open {
            account: "alice".into(),
            deposit: 100,
        },
        BankCommand::Open {
            account: "bob".into(),
            deposit: 50,
        },
        transfer("alice", "bob", 30),
        transfer("bob", "alice", 500),  // refused: bob has 80
        transfer("alice", "carol", 10), // refused: no such account
        BankCommand::Deposit {
            account: "bob".into(),
            amount: 20,
        },
    ];
    let mut outcomes = Vec::new();
    let mut last_index = 0;
    for command in commands {
        let shown = format!("{command:?}");
        let r = write(&handles, command).await?;
        println!("  #{:<2} {shown:<55} -> {:?}", r.index, r.output);
        last_index = r.index;
        outcomes.push(r.output);
    }

    // Every replica applied the same log, so every replica holds the same balances. Stale reads
    // are served from the node's own state; wait until each node applied the last command.
    let mut replicas = Vec::new();
    for h in &handles {
        wait_until_applied(h, last_index).await?;
        let mut balances = Vec::new();
        for account in ACCOUNTS {
            balances.push((
                account.to_owned(),
                h.read(account.to_owned(), ReadLevel::Stale).await?,
            ));
        }
        println!("  node {} sees {balances:?}", h.id());
        replicas.push((h.id(), balances));
    }
    let alice = leader
        .read("alice".to_owned(), ReadLevel::Linearizable)
        .await?;
    println!("linearizable read of alice on the leader: {alice:?}");

    for node in nodes {
        node.shutdown().await;
    }
    Ok(BankRun { outcomes, replicas })
}

/// Sends `command` to the current leader, retrying while an election is in progress. A write
/// that timed out is not retried: it may still apply, and a transfer must not apply twice.
async fn write(
    handles: &[NodeHandle<Bank>],
    command: BankCommand,
) -> Result<WriteResult<BankOutput>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leader = wait_for_leader(handles).await?;
        match leader.write(command.clone()).await {
            Ok(r) => return Ok(r),
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                actix::clock::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e).context("write failed"),
        }
    }
}

async fn wait_for_leader(handles: &[NodeHandle<Bank>]) -> Result<NodeHandle<Bank>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(h) = handles.iter().find(|h| h.cluster_status().role == "leader") {
            return Ok(h.clone());
        }
        actix::clock::sleep(Duration::from_millis(20)).await;
    }
    bail!("no leader elected within 10 s")
}

async fn wait_until_applied(h: &NodeHandle<Bank>, index: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.cluster_status().applied_index < index {
        if Instant::now() > deadline {
            bail!("node {} did not apply index {index} within 10 s", h.id());
        }
        actix::clock::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Configurations of an `n`-node cluster on free loopback ports, data under `dir`. A port is
/// found by binding port 0 and releasing it, so another process could grab it before the node
/// does: fine for an example; a deployment fixes ports in its config files (`conclave init`).
fn local_cluster(n: u64, dir: &Path) -> Result<Vec<Config>> {
    let free = || -> Result<SocketAddr> { Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?) };
    let members = (1..=n)
        .map(|id| {
            Ok(MemberConfig {
                id: NodeId::new(id),
                addr: free()?,
                http: free()?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Config::local_cluster(&members, dir))
}

#[allow(dead_code)] // the smoke test includes this file as a module and calls `run` instead
fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    actix::System::new().block_on(run(dir.path()))?;
    Ok(())
}
